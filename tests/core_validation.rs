//! Every chat validation rule, table-driven: each bad input is a 400 naming its `param`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use edge_gateway::core::config::RequestLimits;
use edge_gateway::core::validate::validate_chat;
use serde_json::{json, Value};

fn limits() -> RequestLimits {
    RequestLimits { max_body_bytes: 1 << 20, max_messages: 4, max_content_bytes: 100, max_tokens: 512, max_n: 2 }
}

fn valid() -> Value {
    json!({"model": "llama", "messages": [{"role": "user", "content": "hello"}]})
}

fn with(field: &str, value: Value) -> Vec<u8> {
    let mut v = valid();
    v[field] = value;
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn rejects_each_bad_input_with_400_naming_param() {
    let user = |c: Value| json!([{"role": "user", "content": c}]);
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("malformed json", b"{\"model\": ".to_vec(), None),
        ("not an object", b"[1,2]".to_vec(), None),
        ("missing model", br#"{"messages":[{"role":"user","content":"x"}]}"#.to_vec(), Some("model")),
        ("model not a string", with("model", json!(7)), Some("model")),
        ("missing messages", br#"{"model":"llama"}"#.to_vec(), Some("messages")),
        ("empty messages", with("messages", json!([])), Some("messages")),
        ("messages not an array", with("messages", json!("hi")), Some("messages")),
        ("message not an object", with("messages", json!(["hi"])), Some("messages[0]")),
        ("unknown role", with("messages", json!([{"role": "wizard", "content": "x"}])), Some("messages[0].role")),
        ("missing role", with("messages", json!([{"content": "x"}])), Some("messages[0].role")),
        ("content a number", with("messages", user(json!(5))), Some("messages[0].content")),
        ("content an object", with("messages", user(json!({"text": "x"}))), Some("messages[0].content")),
        ("content part not an object", with("messages", user(json!(["x"]))), Some("messages[0].content[0]")),
        ("content part without type", with("messages", user(json!([{"text": "x"}]))), Some("messages[0].content[0].type")),
        ("text part without text", with("messages", user(json!([{"type": "text"}]))), Some("messages[0].content[0].text")),
        ("too many messages", with("messages", Value::Array(vec![json!({"role":"user","content":"a"}); 5])), Some("messages")),
        ("content over cap", with("messages", user(json!("x".repeat(101)))), Some("messages")),
        ("content parts over cap", with("messages", user(json!([{"type":"text","text":"x".repeat(60)},{"type":"text","text":"y".repeat(60)}]))), Some("messages")),
        ("max_tokens over cap", with("max_tokens", json!(513)), Some("max_tokens")),
        ("max_tokens zero", with("max_tokens", json!(0)), Some("max_tokens")),
        ("max_tokens negative", with("max_tokens", json!(-1)), Some("max_tokens")),
        ("max_tokens fractional", with("max_tokens", json!(1.5)), Some("max_tokens")),
        ("max_tokens a string", with("max_tokens", json!("10")), Some("max_tokens")),
        ("max_completion_tokens over cap", with("max_completion_tokens", json!(10_000)), Some("max_completion_tokens")),
        ("temperature above 2", with("temperature", json!(2.5)), Some("temperature")),
        ("temperature negative", with("temperature", json!(-0.1)), Some("temperature")),
        ("temperature a string", with("temperature", json!("hot")), Some("temperature")),
        ("top_p zero", with("top_p", json!(0)), Some("top_p")),
        ("top_p above 1", with("top_p", json!(1.01)), Some("top_p")),
        ("n over cap", with("n", json!(3)), Some("n")),
        ("n zero", with("n", json!(0)), Some("n")),
        ("stream a string", with("stream", json!("yes")), Some("stream")),
        ("stream_options not an object", with("stream_options", json!(true)), Some("stream_options")),
        ("stream_options without stream", with("stream_options", json!({"include_usage": true})), Some("stream_options")),
        ("include_usage not a boolean", with("stream_options", json!({"include_usage": "y"})), Some("stream_options.include_usage")),
    ];
    for (name, body, param) in cases {
        let err = validate_chat(&body, &limits()).expect_err(name);
        assert_eq!(err.status(), 400, "{name}");
        assert_eq!(err.error_type(), "invalid_request_error", "{name}");
        assert_eq!(err.param(), param, "{name}: {}", err.message());
        assert!(!err.message().is_empty(), "{name}");
    }
}

#[test]
fn accepts_boundary_values() {
    let cases = vec![
        with("temperature", json!(0)),
        with("temperature", json!(2)),
        with("top_p", json!(1)),
        with("top_p", json!(0.0001)),
        with("n", json!(2)),
        with("max_tokens", json!(512)),
        with("max_completion_tokens", json!(1)),
        with("stream", json!(null)),
        with("temperature", json!(null)),
        with("messages", json!([{"role": "assistant", "content": null, "tool_calls": []}])),
        with("messages", json!([{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:,"}}]}])),
        with("messages", json!([{"role": "user", "content": "x".repeat(100)}])),
        with("messages", json!([{"role":"system","content":"a"},{"role":"developer","content":"b"},{"role":"tool","content":"c","tool_call_id":"1"},{"role":"user","content":"d"}])),
    ];
    for body in cases {
        validate_chat(&body, &limits()).unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(&body)));
    }
}

#[test]
fn injects_max_tokens_cap_when_absent() {
    let chat = validate_chat(&serde_json::to_vec(&valid()).unwrap(), &limits()).unwrap();
    let sent: Value = serde_json::from_slice(&chat.upstream_body).unwrap();
    assert_eq!(sent["max_tokens"], 512);
    assert_eq!(chat.max_tokens, 512);
}

#[test]
fn keeps_client_max_tokens_within_cap() {
    let chat = validate_chat(&with("max_tokens", json!(100)), &limits()).unwrap();
    let sent: Value = serde_json::from_slice(&chat.upstream_body).unwrap();
    assert_eq!(sent["max_tokens"], 100);
    assert!(sent.get("max_completion_tokens").is_none());
    let chat = validate_chat(&with("max_completion_tokens", json!(50)), &limits()).unwrap();
    let sent: Value = serde_json::from_slice(&chat.upstream_body).unwrap();
    assert!(sent.get("max_tokens").is_none(), "no second budget is added");
    assert_eq!(chat.max_tokens, 50);
}

#[test]
fn passes_unknown_fields_through_untouched() {
    let mut v = valid();
    v["guided_json"] = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    v["repetition_penalty"] = json!(1.1);
    v["mock"] = json!({"chunks": 3});
    let chat = validate_chat(&serde_json::to_vec(&v).unwrap(), &limits()).unwrap();
    let sent: Value = serde_json::from_slice(&chat.upstream_body).unwrap();
    assert_eq!(sent["guided_json"], v["guided_json"]);
    assert_eq!(sent["repetition_penalty"], json!(1.1));
    assert_eq!(sent["mock"], json!({"chunks": 3}));
    assert_eq!(sent["messages"], v["messages"]);
}

#[test]
fn asks_backend_for_usage_on_streams_and_remembers_whether_client_did() {
    let chat = validate_chat(&with("stream", json!(true)), &limits()).unwrap();
    let sent: Value = serde_json::from_slice(&chat.upstream_body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert!(chat.stream && !chat.client_wants_usage);

    let mut v = valid();
    v["stream"] = json!(true);
    v["stream_options"] = json!({"include_usage": true, "continuous_usage_stats": false});
    let chat = validate_chat(&serde_json::to_vec(&v).unwrap(), &limits()).unwrap();
    let sent: Value = serde_json::from_slice(&chat.upstream_body).unwrap();
    assert!(chat.client_wants_usage);
    assert_eq!(sent["stream_options"]["continuous_usage_stats"], false, "other options kept");
}

#[test]
fn non_stream_requests_get_no_stream_options_added() {
    let chat = validate_chat(&serde_json::to_vec(&valid()).unwrap(), &limits()).unwrap();
    let sent: Value = serde_json::from_slice(&chat.upstream_body).unwrap();
    assert!(sent.get("stream_options").is_none());
    assert!(!chat.stream);
}

#[test]
fn counts_content_bytes_for_estimates() {
    let body = with("messages", json!([{"role":"system","content":"abc"},{"role":"user","content":[{"type":"text","text":"de"}]}]));
    assert_eq!(validate_chat(&body, &limits()).unwrap().content_bytes, 5);
}
