//! `/v1/embeddings`: inputs as text or token ids within the item and content caps; no generation.

use super::{backend, body_with, limits, param_of};
use edge_gateway::core::validate::validate_embeddings;
use serde_json::{json, Value};

fn body(extra: Value) -> Vec<u8> {
    body_with(json!({"model": "llama", "input": "embed me"}), extra)
}

#[test]
fn rejects_each_bad_input_with_400_naming_param() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("no input", br#"{"model":"llama"}"#.to_vec(), "input"),
        ("no model", br#"{"input":"x"}"#.to_vec(), "model"),
        ("empty string", body(json!({"input": ""})), "input"),
        ("empty list", body(json!({"input": []})), "input"),
        ("empty string in a list", body(json!({"input": ["a", ""]})), "input[1]"),
        ("input an object", body(json!({"input": {"text": "x"}})), "input"),
        ("mixed list", body(json!({"input": ["a", true]})), "input[1]"),
        ("negative token id", body(json!({"input": [3, -1]})), "input"),
        ("empty token list", body(json!({"input": [[1], []]})), "input[1]"),
        ("too many inputs", body(json!({"input": ["a", "b", "c", "d", "e"]})), "input"),
        ("over the content cap", body(json!({"input": ["x".repeat(60), "y".repeat(41)]})), "input"),
        ("token ids over the content cap", body(json!({"input": [vec![1; 13], vec![2; 13]]})), "input"),
        ("unknown encoding_format", body(json!({"encoding_format": "bytes"})), "encoding_format"),
        ("dimensions zero", body(json!({"dimensions": 0})), "dimensions"),
        ("dimensions a string", body(json!({"dimensions": "8"})), "dimensions"),
        ("user not a string", body(json!({"user": 5})), "user"),
        ("stream", body(json!({"stream": true})), "stream"),
        ("chat-style messages", body(json!({"messages": [{"role": "user", "content": "x"}]})), "messages"),
        ("priority", body(json!({"priority": -10})), "priority"),
    ];
    for (name, bytes, param) in cases {
        assert_eq!(param_of(validate_embeddings(&bytes, &limits()), name).as_deref(), Some(param), "{name}");
    }
}

#[test]
fn accepts_every_input_shape_and_options() {
    for input in [json!("hi"), json!(["a", "b"]), json!([1, 2, 3]), json!([[1, 2], [3]])] {
        validate_embeddings(&body(json!({"input": input.clone()})), &limits())
            .unwrap_or_else(|e| panic!("{input}: {e}"));
    }
    let options = json!({"encoding_format": "base64", "dimensions": 256, "user": "u-1"});
    validate_embeddings(&body(options), &limits()).unwrap();
}

#[test]
fn costs_its_input_and_nothing_more_and_is_sent_untouched() {
    let call = validate_embeddings(&body(json!({"input": ["abcdefgh", "abcd"]})), &limits()).unwrap();
    assert_eq!(call.prompt_estimate(), 2 + 1);
    assert_eq!(call.token_estimate([&backend(None)], 512), 3, "an embedding generates nothing");
    let sent: Value = serde_json::from_slice(&call.upstream_body(&backend(Some(64)), 512)).unwrap();
    assert_eq!(sent, json!({"model": "llama", "input": ["abcdefgh", "abcd"]}), "no max_tokens, no stream_options");
    assert!(!call.stream);
}
