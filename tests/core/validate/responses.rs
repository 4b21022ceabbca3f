//! `/v1/responses`: input items and instructions counted, `max_output_tokens` capped and injected,
//! and the fields that need a backend's stored state recognised.

use super::{backend, body_with, limits, param_of};
use edge_gateway::core::validate::{validate_responses, MEDIA_PART_TOKENS};
use serde_json::{json, Value};

fn body(extra: Value) -> Vec<u8> {
    body_with(json!({"model": "llama", "input": "hello"}), extra)
}

#[test]
fn rejects_each_bad_input_with_400_naming_param() {
    let message = |content: Value| json!([{"role": "user", "content": content}]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("no input", br#"{"model":"llama"}"#.to_vec(), "input"),
        ("input a number", body(json!({"input": 3})), "input"),
        ("item not an object", body(json!({"input": ["hi"]})), "input[0]"),
        ("item without type or role", body(json!({"input": [{"content": "x"}]})), "input[0].type"),
        (
            "message with a bad role",
            body(json!({"input": [{"type": "message", "role": "wizard", "content": "x"}]})),
            "input[0].role",
        ),
        ("too many items", body(json!({"input": vec![json!({"role": "user", "content": "a"}); 5]})), "input"),
        ("part without type", body(json!({"input": message(json!([{"text": "x"}]))})), "input[0].content[0].type"),
        (
            "text part without text",
            body(json!({"input": message(json!([{"type": "input_text"}]))})),
            "input[0].content[0].text",
        ),
        (
            "remote image",
            body(json!({"input": message(json!([{"type": "input_image", "image_url": "http://10.0.0.1/x.png"}]))})),
            "input[0].content[0].image_url",
        ),
        ("over the content cap", body(json!({"input": "x".repeat(101)})), "input"),
        (
            "instructions over the content cap",
            body(json!({"input": "x".repeat(60), "instructions": "y".repeat(41)})),
            "instructions",
        ),
        ("instructions not a string", body(json!({"instructions": 1})), "instructions"),
        (
            "tools over the content cap",
            body(json!({"tools": [{"type": "function", "name": "f", "description": "d".repeat(100)}]})),
            "tools",
        ),
        (
            "tool output over the content cap",
            body(json!({"input": [{"type": "function_call_output", "call_id": "c", "output": "o".repeat(101)}]})),
            "input",
        ),
        ("max_output_tokens zero", body(json!({"max_output_tokens": 0})), "max_output_tokens"),
        ("max_output_tokens over the cap", body(json!({"max_output_tokens": 513})), "max_output_tokens"),
        ("temperature", body(json!({"temperature": 3})), "temperature"),
        ("stream not a boolean", body(json!({"stream": "yes"})), "stream"),
        ("background not a boolean", body(json!({"background": "yes"})), "background"),
        ("previous_response_id not a string", body(json!({"previous_response_id": 4})), "previous_response_id"),
        ("kv_transfer_params", body(json!({"kv_transfer_params": {}})), "kv_transfer_params"),
    ];
    for (name, bytes, param) in cases {
        assert_eq!(param_of(validate_responses(&bytes, &limits()), name).as_deref(), Some(param), "{name}");
    }
}

#[test]
fn counts_every_text_bearing_field_and_media_parts() {
    let input = json!([
        {"role": "user", "content": [{"type": "input_text", "text": "abcd"}, {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "result"},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "why"}]},
    ]);
    let call =
        validate_responses(&body(json!({"input": input, "instructions": "be brief", "tools": []})), &limits()).unwrap();
    // Parts: 1 separator byte each + "abcd"; the call: c1 f {} ; the output: c1 result; the
    // reasoning: summary_text why; instructions; tools as JSON `[]`.
    assert_eq!(call.text_bytes, 2 + 4 + (2 + 1 + 2) + (2 + 6) + (12 + 3) + 8 + 2);
    assert_eq!(call.media_parts, 1);
    assert!(call.prompt_estimate() >= MEDIA_PART_TOKENS);
    assert_eq!(call.messages, 5, "four items and the instructions");
}

#[test]
fn caps_and_injects_max_output_tokens() {
    let call = validate_responses(&body(json!({})), &limits()).unwrap();
    let sent: Value = serde_json::from_slice(&call.upstream_body(&backend(None), 512)).unwrap();
    assert_eq!(sent["max_output_tokens"], 512);
    assert!(sent.get("max_tokens").is_none() && sent.get("stream_options").is_none(), "{sent}");
    let call = validate_responses(&body(json!({"max_output_tokens": 40, "stream": true})), &limits()).unwrap();
    assert_eq!(call.token_estimate([&backend(None)], 512), call.prompt_estimate() + 40);
    let sent: Value = serde_json::from_slice(&call.upstream_body(&backend(None), 512)).unwrap();
    assert_eq!(sent["max_output_tokens"], 40);
    assert!(sent.get("stream_options").is_none(), "usage always comes in response.completed");
}

#[test]
fn recognises_the_fields_that_need_stored_state() {
    let stateful = |extra: Value| validate_responses(&body(extra), &limits()).unwrap().stateful;
    assert_eq!(stateful(json!({})), None);
    assert_eq!(stateful(json!({"store": true, "background": false, "previous_response_id": null})), None);
    assert_eq!(stateful(json!({"previous_response_id": "resp_1"})), Some("previous_response_id"));
    assert_eq!(stateful(json!({"background": true})), Some("background"));
    assert_eq!(stateful(json!({"conversation": "conv_1"})), Some("conversation"));
    assert_eq!(stateful(json!({"input": [{"type": "item_reference", "id": "msg_1"}]})), Some("input"));
    let continued = br#"{"model":"llama","previous_response_id":"resp_1"}"#;
    assert!(validate_responses(continued, &limits()).is_ok(), "input may be left to the stored conversation");
}
