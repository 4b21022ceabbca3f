//! Every chat validation rule, table-driven: each bad input is a 400 naming its `param`.

use super::{backend, limits};
use edge_gateway::core::config::RequestCaps;
use edge_gateway::core::validate::{validate_chat, Injection, Validated, MEDIA_PART_TOKENS};
use serde_json::{json, Value};

/// What a backend that declares no context length is sent.
fn sent(chat: &Validated) -> Value {
    serde_json::from_slice(&chat.upstream_body(&backend(None), limits().max_tokens)).unwrap()
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
        (
            "content part without type",
            with("messages", user(json!([{"text": "x"}]))),
            Some("messages[0].content[0].type"),
        ),
        (
            "text part without text",
            with("messages", user(json!([{"type": "text"}]))),
            Some("messages[0].content[0].text"),
        ),
        (
            "too many messages",
            with("messages", Value::Array(vec![json!({"role":"user","content":"a"}); 5])),
            Some("messages"),
        ),
        ("content over cap", with("messages", user(json!("x".repeat(101)))), Some("messages")),
        (
            "content parts over cap",
            with(
                "messages",
                user(json!([{"type":"text","text":"x".repeat(60)},{"type":"text","text":"y".repeat(60)}])),
            ),
            Some("messages"),
        ),
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
        (
            "stream_options without stream",
            with("stream_options", json!({"include_usage": true})),
            Some("stream_options"),
        ),
        (
            "include_usage not a boolean",
            with("stream_options", json!({"include_usage": "y"})),
            Some("stream_options.include_usage"),
        ),
        // Fields that set the length themselves would escape the cap and the estimate.
        ("llama.cpp n_predict", with("n_predict", json!(-1)), Some("n_predict")),
        ("TGI max_new_tokens", with("max_new_tokens", json!(10)), Some("max_new_tokens")),
        ("Ollama num_predict", with("num_predict", json!(10)), Some("num_predict")),
        ("best_of over cap", with("best_of", json!(3)), Some("best_of")),
        (
            "best_of below n",
            {
                let mut v = valid();
                v["n"] = json!(2);
                v["best_of"] = json!(1);
                serde_json::to_vec(&v).unwrap()
            },
            Some("best_of"),
        ),
        (
            "min_tokens over max_tokens",
            {
                let mut v = valid();
                v["max_tokens"] = json!(10);
                v["min_tokens"] = json!(11);
                serde_json::to_vec(&v).unwrap()
            },
            Some("min_tokens"),
        ),
        ("min_tokens over the cap", with("min_tokens", json!(513)), Some("min_tokens")),
        ("ignore_eos not a boolean", with("ignore_eos", json!("yes")), Some("ignore_eos")),
        ("use_beam_search not a boolean", with("use_beam_search", json!(1)), Some("use_beam_search")),
        // Every tokenized text counts toward the content cap, not only `content` strings.
        (
            "refusal part over cap",
            with("messages", user(json!([{"type":"refusal","refusal":"r".repeat(101)}]))),
            Some("messages"),
        ),
        (
            "input_text part over cap",
            with("messages", user(json!([{"type":"input_text","text":"t".repeat(101)}]))),
            Some("messages"),
        ),
        (
            "name over cap",
            with("messages", json!([{"role":"user","content":"x","name":"n".repeat(100)}])),
            Some("messages"),
        ),
        (
            "tool call arguments over cap",
            with(
                "messages",
                json!([{"role":"assistant","content":null,"tool_calls":[{"id":"1","type":"function","function":{"name":"f","arguments":"a".repeat(101)}}]}]),
            ),
            Some("messages"),
        ),
        (
            "tools over cap",
            with("tools", json!([{"type":"function","function":{"name":"f","description":"d".repeat(100)}}])),
            Some("tools"),
        ),
        (
            "response_format over cap",
            with("response_format", json!({"type":"json_schema","json_schema":{"name":"s".repeat(100)}})),
            Some("response_format"),
        ),
        (
            "unknown part type over cap",
            with("messages", user(json!([{"type":"novel","payload":"p".repeat(101)}]))),
            Some("messages"),
        ),
        // Media is inline unless remote media is allowed: vLLM would fetch the URL itself.
        (
            "remote image url",
            with("messages", user(json!([{"type":"image_url","image_url":{"url":"http://169.254.169.254/latest"}}]))),
            Some("messages[0].content[0].image_url.url"),
        ),
        (
            "remote audio url",
            with("messages", user(json!([{"type":"audio_url","audio_url":{"url":"https://example.com/a.wav"}}]))),
            Some("messages[0].content[0].audio_url.url"),
        ),
        (
            "file url",
            with("messages", user(json!([{"type":"image_url","image_url":{"url":"file:///etc/passwd"}}]))),
            Some("messages[0].content[0].image_url.url"),
        ),
        (
            "responses-style image url",
            with("messages", user(json!([{"type":"input_image","image_url":"https://example.com/i.png"}]))),
            Some("messages[0].content[0].image_url"),
        ),
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
        with(
            "messages",
            json!([{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:,"}}]}]),
        ),
        with("messages", json!([{"role": "user", "content": "x".repeat(100)}])),
        with(
            "messages",
            json!([{"role":"system","content":"a"},{"role":"developer","content":"b"},{"role":"tool","content":"c","tool_call_id":"1"},{"role":"user","content":"d"}]),
        ),
    ];
    for body in cases {
        validate_chat(&body, &limits()).unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(&body)));
    }
}

#[test]
fn injects_max_tokens_cap_when_absent() {
    let chat = validate_chat(&serde_json::to_vec(&valid()).unwrap(), &limits()).unwrap();
    assert_eq!(sent(&chat)["max_tokens"], 512);
    assert_eq!(chat.max_tokens, None, "the client set none");
}

#[test]
fn keeps_client_max_tokens_within_cap() {
    let chat = validate_chat(&with("max_tokens", json!(100)), &limits()).unwrap();
    assert_eq!(sent(&chat)["max_tokens"], 100);
    assert!(sent(&chat).get("max_completion_tokens").is_none());
    let chat = validate_chat(&with("max_completion_tokens", json!(50)), &limits()).unwrap();
    assert!(sent(&chat).get("max_tokens").is_none(), "no second budget is added");
    assert_eq!(chat.max_tokens, Some(50));
}

#[test]
fn passes_unknown_fields_through_untouched() {
    let mut v = valid();
    v["guided_json"] = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    v["repetition_penalty"] = json!(1.1);
    v["mock"] = json!({"chunks": 3});
    let chat = validate_chat(&serde_json::to_vec(&v).unwrap(), &limits()).unwrap();
    let sent = sent(&chat);
    assert_eq!(sent["guided_json"], v["guided_json"]);
    assert_eq!(sent["repetition_penalty"], json!(1.1));
    assert_eq!(sent["mock"], json!({"chunks": 3}));
    assert_eq!(sent["messages"], v["messages"]);
}

#[test]
fn asks_backend_for_usage_on_streams_and_remembers_whether_client_did() {
    let chat = validate_chat(&with("stream", json!(true)), &limits()).unwrap();
    assert_eq!(sent(&chat)["stream_options"]["include_usage"], true);
    assert!(chat.stream && !chat.client_wants_usage);

    let mut v = valid();
    v["stream"] = json!(true);
    v["stream_options"] = json!({"include_usage": true, "continuous_usage_stats": false});
    let chat = validate_chat(&serde_json::to_vec(&v).unwrap(), &limits()).unwrap();
    assert!(chat.client_wants_usage);
    assert_eq!(sent(&chat)["stream_options"]["continuous_usage_stats"], false, "other options kept");
}

#[test]
fn non_stream_requests_get_no_stream_options_added() {
    let chat = validate_chat(&serde_json::to_vec(&valid()).unwrap(), &limits()).unwrap();
    assert!(sent(&chat).get("stream_options").is_none());
    assert!(!chat.stream);
}

#[test]
fn counts_content_bytes_for_estimates() {
    let body = with(
        "messages",
        json!([{"role":"system","content":"abc"},{"role":"user","content":[{"type":"text","text":"de"}]}]),
    );
    // "abc" + "de", and one byte for the one content part (templates join parts with a separator).
    assert_eq!(validate_chat(&body, &limits()).unwrap().text_bytes, 6);
}

#[test]
fn estimates_on_the_larger_of_max_tokens_and_max_completion_tokens() {
    // vLLM and SGLang honour max_completion_tokens when both are sent: `max_tokens: 1` must not
    // make a 500-token generation cost one token.
    let mut v = valid();
    v["max_tokens"] = json!(1);
    v["max_completion_tokens"] = json!(500);
    let chat = validate_chat(&serde_json::to_vec(&v).unwrap(), &limits()).unwrap();
    assert_eq!(chat.max_tokens, Some(500));
    assert_eq!(chat.token_estimate([&backend(None)], 512), chat.prompt_estimate() + 500);
}

#[test]
fn estimates_every_sequence_best_of_and_beam_search_generate() {
    let mut v = valid();
    v["n"] = json!(1);
    v["best_of"] = json!(2);
    v["max_tokens"] = json!(100);
    let chat = validate_chat(&serde_json::to_vec(&v).unwrap(), &limits()).unwrap();
    assert_eq!(chat.choices, 2);
    assert_eq!(chat.token_estimate([&backend(None)], 512), chat.prompt_estimate() + 200);
}

#[test]
fn counts_every_tokenized_text_and_a_fixed_cost_per_media_part() {
    let body = json!({"model": "llama", "messages": [
        {"role": "user", "name": "ann", "content": [
            {"type": "text", "text": "abcd"},
            {"type": "refusal", "refusal": "ef"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "fn", "arguments": "{}"}}]}],
        "tools": [{"type": "function"}]});
    let chat = validate_chat(&serde_json::to_vec(&body).unwrap(), &limits()).unwrap();
    let tools_json = r#"[{"type":"function"}]"#.len();
    // "ann" + "abcd" + "ef" + ("c" + "function" + "fn" + "{}") + the tools as JSON, and a byte per
    // content part (three).
    assert_eq!(chat.text_bytes, 3 + 4 + 2 + (1 + 8 + 2 + 2) + tools_json + 3);
    assert_eq!(chat.media_parts, 1);
    assert_eq!(chat.prompt_estimate(), (chat.text_bytes as u64).div_ceil(4) + MEDIA_PART_TOKENS);
}

#[test]
fn legacy_function_fields_and_tool_choice_count_toward_the_prompt_and_the_content_cap() {
    let base = validate_chat(&serde_json::to_vec(&valid()).unwrap(), &limits()).unwrap().text_bytes;
    for (field, value) in [
        ("functions", json!([{"name": "lookup", "description": "d", "parameters": {"type": "object"}}])),
        ("tool_choice", json!({"type": "function", "function": {"name": "lookup"}})),
        ("function_call", json!({"name": "lookup"})),
    ] {
        let chat = validate_chat(&with(field, value.clone()), &limits()).unwrap();
        assert_eq!(chat.text_bytes, base + value.to_string().len(), "{field} is counted as its JSON");
        // Over the content cap (100 bytes here) it is refused, naming the field.
        let big = json!({"name": "x".repeat(200)});
        let refused = validate_chat(&with(field, big), &limits()).unwrap_err();
        assert_eq!(refused.status(), 400, "{field}");
        assert_eq!(refused.param(), Some(field), "{field}");
    }
}

#[test]
fn every_kind_of_media_part_costs_the_fixed_media_estimate() {
    for part in [
        json!({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}),
        json!({"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64,AAAA"}}),
        json!({"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}),
        json!({"type": "file", "file": {"file_data": "data:application/pdf;base64,AAAA"}}),
    ] {
        let body =
            with("messages", json!([{"role": "user", "content": [{"type": "text", "text": "hi"}, part.clone()]}]));
        let chat = validate_chat(&body, &limits()).unwrap_or_else(|e| panic!("{part}: {e:?}"));
        assert_eq!(chat.media_parts, 1, "{part}");
        assert!(chat.prompt_estimate() >= MEDIA_PART_TOKENS, "{part}");
    }
}

#[test]
fn allows_remote_media_only_when_the_operator_does() {
    let body = with(
        "messages",
        json!([{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://example.com/cat.png"}}]}]),
    );
    assert!(validate_chat(&body, &limits()).is_err());
    let open = RequestCaps { allow_remote_media: true, ..limits() };
    validate_chat(&body, &open).unwrap();
    let file = with(
        "messages",
        json!([{"role":"user","content":[{"type":"image_url","image_url":{"url":"file:///etc/passwd"}}]}]),
    );
    assert!(validate_chat(&file, &open).is_err(), "file: is never allowed");
}

#[test]
fn injects_within_a_declared_context_length() {
    let chat = validate_chat(&serde_json::to_vec(&valid()).unwrap(), &limits()).unwrap();
    // "hello": 5 bytes, 1 message: at most 5 + 16 + 32 = 53 prompt tokens.
    assert_eq!(chat.prompt_bound(), 53);
    assert_eq!(chat.injection(&backend(None), 512), Injection::MaxTokens(512), "no context declared: the cap");
    assert_eq!(chat.injection(&backend(Some(4096)), 512), Injection::MaxTokens(512), "room for the cap");
    assert_eq!(chat.injection(&backend(Some(300)), 512), Injection::MaxTokens(300 - 53), "only what fits");
    assert_eq!(chat.injection(&backend(Some(40)), 512), Injection::Nothing { at_most: 40 }, "the prompt may fill it");
    let sent: Value = serde_json::from_slice(&chat.upstream_body(&backend(Some(40)), 512)).unwrap();
    assert!(sent.get("max_tokens").is_none(), "nothing is injected that the backend could refuse");
    assert_eq!(chat.token_estimate([&backend(Some(40))], 512), chat.prompt_estimate() + 40, "bounded by the context");
    assert_eq!(
        chat.token_estimate([&backend(Some(300)), &backend(None)], 512),
        chat.prompt_estimate() + 512,
        "the largest of the model's backends"
    );
}
