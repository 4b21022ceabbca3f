//! `/v1/completions`: prompts as text or token ids, OpenAI's default length, every prompt's choices.

use super::{backend, body_with, limits, param_of};
use edge_gateway::core::validate::{validate_completions, Injection};
use serde_json::{json, Value};

fn body(extra: Value) -> Vec<u8> {
    body_with(json!({"model": "llama", "prompt": "Once upon"}), extra)
}

#[test]
fn rejects_each_bad_input_with_400_naming_param() {
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("no prompt", br#"{"model":"llama"}"#.to_vec(), Some("prompt")),
        ("prompt a number", body(json!({"prompt": 7})), Some("prompt")),
        ("empty prompt list", body(json!({"prompt": []})), Some("prompt")),
        ("mixed prompt list", body(json!({"prompt": ["a", 1]})), Some("prompt[1]")),
        ("negative token id", body(json!({"prompt": [1, -2]})), Some("prompt")),
        ("fractional token id", body(json!({"prompt": [1, 2.5]})), Some("prompt")),
        ("empty token list", body(json!({"prompt": [[]]})), Some("prompt[0]")),
        ("too many prompts", body(json!({"prompt": ["a", "b", "c", "d", "e"]})), Some("prompt")),
        ("prompt over the content cap", body(json!({"prompt": "x".repeat(101)})), Some("prompt")),
        ("token ids over the content cap", body(json!({"prompt": vec![1; 26]})), Some("prompt")),
        ("suffix not a string", body(json!({"suffix": 3})), Some("suffix")),
        (
            "suffix over the content cap",
            body(json!({"prompt": "x".repeat(60), "suffix": "y".repeat(41)})),
            Some("suffix"),
        ),
        ("echo not a boolean", body(json!({"echo": "yes"})), Some("echo")),
        ("logprobs too many", body(json!({"logprobs": 21})), Some("logprobs")),
        ("logprobs negative", body(json!({"logprobs": -1})), Some("logprobs")),
        ("max_tokens zero without echo", body(json!({"max_tokens": 0})), Some("max_tokens")),
        ("max_tokens over the cap", body(json!({"max_tokens": 513})), Some("max_tokens")),
        ("best_of below n", body(json!({"n": 2, "best_of": 1})), Some("best_of")),
        ("n over the cap", body(json!({"n": 3})), Some("n")),
        ("stream not a boolean", body(json!({"stream": 1})), Some("stream")),
        (
            "stream_options without stream",
            body(json!({"stream_options": {"include_usage": true}})),
            Some("stream_options"),
        ),
        ("prompt_embeds", body(json!({"prompt_embeds": "AAAA"})), Some("prompt_embeds")),
        ("n_predict", body(json!({"n_predict": -1})), Some("n_predict")),
    ];
    for (name, bytes, param) in cases {
        assert_eq!(param_of(validate_completions(&bytes, &limits()), name).as_deref(), param, "{name}");
    }
}

#[test]
fn accepts_every_prompt_shape() {
    for prompt in [json!("hi"), json!(["a", "b"]), json!([1, 2, 3]), json!([[1, 2], [3]]), json!(["a", [4, 5]])] {
        validate_completions(&body(json!({"prompt": prompt.clone()})), &limits())
            .unwrap_or_else(|e| panic!("{prompt}: {e}"));
    }
}

#[test]
fn without_max_tokens_a_completion_is_sixteen_tokens_as_openai_defines_it() {
    let call = validate_completions(&body(json!({})), &limits()).unwrap();
    assert_eq!(call.injection(&backend(None), 512), Injection::MaxTokens(16));
    let sent: Value = serde_json::from_slice(&call.upstream_body(&backend(None), 512)).unwrap();
    assert_eq!(sent["max_tokens"], 16, "sent explicitly: llama.cpp's own default is unlimited");
    assert_eq!(call.injection(&backend(None), 8), Injection::MaxTokens(8), "the cap still bounds it");
}

#[test]
fn estimates_every_choice_of_every_prompt_and_token_ids_exactly() {
    let call =
        validate_completions(&body(json!({"prompt": [[1, 2, 3], "abcdefgh"], "n": 2, "max_tokens": 10})), &limits())
            .unwrap();
    assert_eq!(call.choices, 4, "n per prompt");
    assert_eq!(call.prompt_estimate(), 3 + 2, "three ids, eight bytes");
    assert_eq!(call.token_estimate([&backend(None)], 512), 5 + 4 * 10);
}

#[test]
fn max_tokens_zero_is_refused_even_with_echo() {
    // llama-cpp-python reads max_tokens <= 0 as "up to the context": it would escape the cap.
    for max_tokens in [0, -1] {
        let body = body(json!({"echo": true, "max_tokens": max_tokens, "logprobs": 1}));
        assert_eq!(param_of(validate_completions(&body, &limits()), "echo").as_deref(), Some("max_tokens"));
    }
}

#[test]
fn asks_for_the_usage_chunk_on_streams() {
    let call = validate_completions(&body(json!({"stream": true})), &limits()).unwrap();
    assert!(!call.client_wants_usage);
    let sent: Value = serde_json::from_slice(&call.upstream_body(&backend(None), 512)).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
}
