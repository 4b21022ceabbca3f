//! Configuration: one validated struct; every error names its variable; secrets never defaulted.

use edge_gateway::core::config::{Config, Cors, Lookup, ModelAccess};

type Vars = std::collections::HashMap<String, String>;
/// One edit to the typical deployment's variables.
type Edit = Box<dyn FnOnce(&mut Vars)>;

fn build(edit: impl FnOnce(&mut Vars)) -> Result<Config, String> {
    let mut vars = crate::support::vars();
    edit(&mut vars);
    Config::from_lookup(&vars as &dyn Lookup).map_err(|e| e.0)
}

#[test]
fn parses_a_typical_deployment() {
    let config = build(|_| {}).unwrap();
    assert_eq!(config.backends.len(), 2);
    assert_eq!(config.backends[0].base_url, "http://10.0.0.1:8000", "trailing slash removed");
    assert_eq!(config.backends[0].api_key.as_ref().unwrap().expose(), "backend-secret-a");
    assert_eq!(config.backends[0].health_path, "/health");
    assert_eq!(config.backends[1].health_path, "/v1/models");
    assert!(config.backends[1].api_key.is_none());
    assert_eq!(config.api_keys[0].models, ModelAccess::All);
    assert_eq!(config.api_keys[0].budgets.requests_per_minute, Some(3));
    assert_eq!(config.api_keys[2].budgets.tokens_per_minute, Some(1000));
    assert_eq!(config.api_keys[2].budgets.max_in_flight, Some(1));
    assert!(config.anonymous.is_none(), "no anonymous tier unless configured");
    assert_eq!(config.timeouts.total_ms, 600_000);
    assert!(config.redis.is_none(), "Redis is optional in the core; the Spin build requires it");
    assert_eq!(config.caps.max_tokens, 512);
    assert_eq!(config.caps.max_body_bytes, 1 << 20, "default");
    assert_eq!(config.cors, Cors::Origins(vec!["https://app.example.com".into()]));
    assert_eq!(config.served_models(), vec!["llama", "qwen"]);
}

#[test]
fn every_error_names_its_variable() {
    let cases: Vec<(&str, Edit)> = vec![
        (
            "GATEWAY_BACKENDS is not set",
            Box::new(|v| {
                v.remove("GATEWAY_BACKENDS");
            }),
        ),
        (
            "GATEWAY_API_KEYS is not set",
            Box::new(|v| {
                v.remove("GATEWAY_API_KEYS");
            }),
        ),
        (
            "GATEWAY_BACKENDS is not a valid JSON",
            Box::new(|v| {
                v.insert("GATEWAY_BACKENDS".into(), "[{".into());
            }),
        ),
        (
            "GATEWAY_BACKENDS must list",
            Box::new(|v| {
                v.insert("GATEWAY_BACKENDS".into(), "[]".into());
            }),
        ),
        (
            "GATEWAY_BACKENDS is not a valid JSON",
            Box::new(|v| {
                v.insert(
                    "GATEWAY_BACKENDS".into(),
                    r#"[{"name":"a","url":"http://x","models":["m"],"typo":1}]"#.into(),
                );
            }),
        ),
        (
            "GATEWAY_BACKENDS[0].url",
            Box::new(|v| {
                v.insert("GATEWAY_BACKENDS".into(), r#"[{"name":"a","url":"ftp://x","models":["m"]}]"#.into());
            }),
        ),
        (
            "GATEWAY_BACKENDS[0].url",
            Box::new(|v| {
                v.insert(
                    "GATEWAY_BACKENDS".into(),
                    r#"[{"name":"a","url":"https://user:pw@x","models":["m"]}]"#.into(),
                );
            }),
        ),
        (
            "GATEWAY_BACKENDS[0].models",
            Box::new(|v| {
                v.insert("GATEWAY_BACKENDS".into(), r#"[{"name":"a","url":"http://x","models":[]}]"#.into());
            }),
        ),
        (
            "GATEWAY_BACKENDS[1].name `a` is used twice",
            Box::new(|v| {
                v.insert(
                    "GATEWAY_BACKENDS".into(),
                    r#"[{"name":"a","url":"http://x","models":["m"]},{"name":"a","url":"http://y","models":["m"]}]"#
                        .into(),
                );
            }),
        ),
        (
            "GPU_A_KEY (the api_key_secret of GATEWAY_BACKENDS[0]) is not set",
            Box::new(|v| {
                v.remove("GPU_A_KEY");
            }),
        ),
        (
            "GATEWAY_API_KEYS[0].sha256",
            Box::new(|v| {
                v.insert("GATEWAY_API_KEYS".into(), r#"[{"id":"a","sha256":"abc","models":["*"]}]"#.into());
            }),
        ),
        (
            "GATEWAY_API_KEYS[0].models names `nope`",
            Box::new(|v| {
                v.insert(
                    "GATEWAY_API_KEYS".into(),
                    format!(r#"[{{"id":"a","sha256":"{}","models":["nope"]}}]"#, "0".repeat(64)),
                );
            }),
        ),
        (
            "GATEWAY_API_KEYS[0].requests_per_minute",
            Box::new(|v| {
                v.insert(
                    "GATEWAY_API_KEYS".into(),
                    format!(r#"[{{"id":"a","sha256":"{}","models":["*"],"requests_per_minute":0}}]"#, "0".repeat(64)),
                );
            }),
        ),
        (
            "GATEWAY_MAX_TOKENS must be an integer",
            Box::new(|v| {
                v.insert("GATEWAY_MAX_TOKENS".into(), "lots".into());
            }),
        ),
        (
            "GATEWAY_MAX_BODY_BYTES must be an integer",
            Box::new(|v| {
                v.insert("GATEWAY_MAX_BODY_BYTES".into(), "0".into());
            }),
        ),
        (
            "GATEWAY_ANONYMOUS.requests_per_minute is required",
            Box::new(|v| {
                v.insert("GATEWAY_ANONYMOUS".into(), r#"{"models":["qwen"]}"#.into());
            }),
        ),
        (
            "GATEWAY_ANONYMOUS describes callers without a key",
            Box::new(|v| {
                v.insert("GATEWAY_ANONYMOUS".into(), r#"{"id":"x","models":["qwen"],"requests_per_minute":1}"#.into());
            }),
        ),
        (
            "GATEWAY_ANONYMOUS.models names `nope`",
            Box::new(|v| {
                v.insert("GATEWAY_ANONYMOUS".into(), r#"{"models":["nope"],"requests_per_minute":1}"#.into());
            }),
        ),
        (
            "GATEWAY_API_KEYS[0].max_in_flight must be at least 1",
            Box::new(|v| {
                v.insert(
                    "GATEWAY_API_KEYS".into(),
                    format!(r#"[{{"id":"a","sha256":"{}","models":["*"],"max_in_flight":0}}]"#, "0".repeat(64)),
                );
            }),
        ),
        (
            "GATEWAY_FIRST_BYTE_TIMEOUT_MS must not be longer than GATEWAY_TOTAL_TIMEOUT_MS",
            Box::new(|v| {
                v.insert("GATEWAY_TOTAL_TIMEOUT_MS".into(), "1000".into());
            }),
        ),
        (
            "GATEWAY_REDIS_URL must be a redis://",
            Box::new(|v| {
                v.insert("GATEWAY_REDIS_URL".into(), "localhost:6379".into());
            }),
        ),
        (
            "GATEWAY_LIMITS_FAIL_OPEN must be true or false",
            Box::new(|v| {
                v.insert("GATEWAY_LIMITS_FAIL_OPEN".into(), "maybe".into());
            }),
        ),
        (
            "GATEWAY_CORS_ORIGINS",
            Box::new(|v| {
                v.insert("GATEWAY_CORS_ORIGINS".into(), "app.example.com".into());
            }),
        ),
    ];
    for (expected, edit) in cases {
        let err = build(edit).expect_err(expected);
        assert!(err.starts_with(expected.split(' ').next().unwrap()), "{err}");
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    }
}

#[test]
fn never_prints_a_secret() {
    let config = build(|_| {}).unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("backend-secret-a"), "{debug}");
}

#[test]
fn star_origin_allows_any() {
    assert_eq!(
        build(|v| {
            v.insert("GATEWAY_CORS_ORIGINS".into(), "*".into());
        })
        .unwrap()
        .cors,
        Cors::AnyOrigin
    );
    assert_eq!(
        build(|v| {
            v.remove("GATEWAY_CORS_ORIGINS");
        })
        .unwrap()
        .cors,
        Cors::Disabled
    );
}
