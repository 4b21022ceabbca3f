//! JWT auth beside API keys: HS256, ES256 and RS256 (inline JWKS), claims, and no confusion.

use crate::support::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use edge_gateway::core::http::Request;
use edge_gateway::core::Config;
use hmac::Mac;
use serde_json::{json, Value};

const HS_SECRET: &str = "an-hs256-shared-secret-of-32-bytes-or-more";
/// 2027-01-15: after the fixtures' `nbf`, before their `exp` (2100), after `rs256_expired`.
const NOW_MS: u64 = 1_800_000_000_000;
const COMPLETION: &str = r#"{"id":"c1","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

fn tokens() -> Value {
    serde_json::from_str(include_str!("../../fixtures/jwt/tokens.json")).unwrap()
}

fn token(name: &str) -> String {
    tokens()[name].as_str().unwrap().to_string()
}

fn jwt_config(extra: Value) -> Config {
    let mut jwt = json!({
        "issuer": "https://auth.example.com",
        "audience": "edge-gateway",
        "hs256_secret": "JWT_SECRET",
        "jwks": serde_json::from_str::<Value>(include_str!("../../fixtures/jwt/jwks.json")).unwrap(),
        "requests_per_minute": 2,
    });
    for (k, v) in extra.as_object().unwrap() {
        jwt[k] = v.clone();
    }
    let mut vars = vars();
    vars.insert("GATEWAY_JWT".into(), jwt.to_string());
    vars.insert("JWT_SECRET".into(), HS_SECRET.into());
    Config::from_lookup(&vars as &dyn edge_gateway::core::Lookup).unwrap()
}

/// Signs `claims` with HS256 and `secret`.
fn hs256(claims: Value, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{header}.{payload}").as_bytes());
    format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

fn claims(sub: &str) -> Value {
    json!({"iss": "https://auth.example.com", "aud": ["edge-gateway", "other"], "sub": sub, "exp": NOW_MS / 1000 + 600})
}

fn chat(token: &str, model: &str) -> Request {
    post_chat(token, &format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#))
}

fn status(config: &Config, request: Request) -> (u16, String) {
    let (gw, upstream, runtime) = gateway();
    runtime.clock.now.set(NOW_MS);
    upstream.push(Script::json(200, COMPLETION));
    let (status, _, _) = text(run(gw.handle(Ok(config), request)));
    let log = runtime.logs.borrow().last().cloned().unwrap_or_default();
    (status, log)
}

#[test]
fn accepts_rs256_and_es256_tokens_from_the_jwks_and_logs_the_subject() {
    let config = jwt_config(json!({}));
    for name in ["rs256_valid", "es256_valid"] {
        let (code, log) = status(&config, chat(&token(name), "llama"));
        assert_eq!(code, 200, "{name}");
        assert!(log.contains(r#""key_id":"jwt:user-42""#), "{log}");
        assert!(!log.contains(&token(name)), "the token is never logged");
    }
}

#[test]
fn accepts_hs256_with_the_shared_secret() {
    let config = jwt_config(json!({}));
    assert_eq!(status(&config, chat(&hs256(claims("browser-7"), HS_SECRET), "llama")).0, 200);
    assert_eq!(
        status(&config, chat(&hs256(claims("browser-7"), "a-different-secret-also-32-bytes-long!!"), "llama")).0,
        401
    );
}

#[test]
fn refuses_every_forged_or_mismatched_token_with_401() {
    let config = jwt_config(json!({}));
    for name in [
        "rs256_wrong_audience",
        "rs256_expired",
        "es256_wrong_issuer",
        "rs256_tampered",
        "alg_none",
        "es256_signed_as_rs256_kid",
        "hs256_with_rsa_modulus_as_secret",
    ] {
        let (gw, _, runtime) = gateway();
        runtime.clock.now.set(NOW_MS);
        let (code, _, body) = text(run(gw.handle(Ok(&config), chat(&token(name), "llama"))));
        assert_eq!(code, 401, "{name}");
        assert_eq!(error_of(&body)["code"], "invalid_api_key", "{name}");
    }
}

#[test]
fn hs256_is_refused_when_only_a_jwks_is_configured() {
    let config = jwt_config(json!({"hs256_secret": null}));
    assert_eq!(status(&config, chat(&hs256(claims("x"), HS_SECRET), "llama")).0, 401);
    assert_eq!(status(&config, chat(&token("rs256_valid"), "llama")).0, 200);
}

#[test]
fn checks_exp_and_nbf_with_the_clock_skew_allowance() {
    let config = jwt_config(json!({"leeway_s": 30}));
    let now = NOW_MS / 1000;
    let with = |exp: u64, nbf: u64| {
        let mut c = claims("skew");
        c["exp"] = json!(exp);
        c["nbf"] = json!(nbf);
        status(&config, chat(&hs256(c, HS_SECRET), "llama")).0
    };
    assert_eq!(with(now - 10, now - 100), 200, "expired 10 s ago: within the 30 s allowance");
    assert_eq!(with(now - 31, now - 100), 401, "expired past the allowance");
    assert_eq!(with(now + 600, now + 20), 200, "valid in 20 s: within the allowance");
    assert_eq!(with(now + 600, now + 60), 401, "not yet valid");
    let mut no_exp = claims("no-exp");
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(status(&config, chat(&hs256(no_exp, HS_SECRET), "llama")).0, 401, "exp is required");
}

#[test]
fn the_models_claim_narrows_what_the_token_may_use() {
    let config = jwt_config(json!({}));
    // The fixture tokens say `"models": ["llama"]`.
    assert_eq!(status(&config, chat(&token("rs256_valid"), "qwen")).0, 404);
    let mut wide = claims("wide");
    wide["models"] = json!("llama qwen");
    assert_eq!(status(&config, chat(&hs256(wide, HS_SECRET), "qwen")).0, 200);
    let narrow_config = jwt_config(json!({"models": ["llama"]}));
    let mut greedy = claims("greedy");
    greedy["models"] = json!(["qwen"]);
    assert_eq!(
        status(&narrow_config, chat(&hs256(greedy, HS_SECRET), "qwen")).0,
        404,
        "a claim never widens the configuration"
    );
}

#[test]
fn each_subject_has_its_own_budget_and_api_keys_still_work() {
    let config = jwt_config(json!({}));
    let (gw, upstream, runtime) = gateway();
    runtime.clock.now.set(NOW_MS);
    let alice = hs256(claims("alice"), HS_SECRET);
    for expected in [200, 200, 429] {
        upstream.push(Script::json(200, COMPLETION));
        assert_eq!(text(run(gw.handle(Ok(&config), chat(&alice, "llama")))).0, expected);
    }
    upstream.push(Script::json(200, COMPLETION));
    assert_eq!(text(run(gw.handle(Ok(&config), chat(&hs256(claims("bob"), HS_SECRET), "llama")))).0, 200);
    upstream.push(Script::json(200, COMPLETION));
    assert_eq!(text(run(gw.handle(Ok(&config), chat(KEY, "llama")))).0, 200);
}

#[test]
fn configuration_errors_name_the_variable() {
    let mut vars = vars();
    for (jwt, expected) in [
        (json!({"audience": "a"}), "needs an hs256_secret or jwks keys"),
        (json!({"hs256_secret": "JWT_SECRET"}), "GATEWAY_JWT.audience is required"),
        (json!({"audience": "a", "hs256_secret": "MISSING"}), "MISSING (the hs256_secret of GATEWAY_JWT) is not set"),
        (json!({"audience": "a", "jwks": {"keys": [{"kty": "oct", "k": "x"}]}}), "GATEWAY_JWT.jwks.keys[0]"),
        (
            json!({"audience": "a", "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}}),
            "not a P-256 point",
        ),
    ] {
        vars.insert("GATEWAY_JWT".into(), jwt.to_string());
        vars.insert("JWT_SECRET".into(), HS_SECRET.into());
        let err = Config::from_lookup(&vars as &dyn edge_gateway::core::Lookup).unwrap_err();
        assert!(err.0.contains(expected), "{err:?}");
    }
    vars.insert("GATEWAY_JWT".into(), json!({"audience": "a", "hs256_secret": "JWT_SECRET"}).to_string());
    vars.insert("JWT_SECRET".into(), "short".into());
    assert!(Config::from_lookup(&vars as &dyn edge_gateway::core::Lookup).unwrap_err().0.contains("at least 32 bytes"));
}

/// Signs `claims` with HS256 under a header of our choosing.
fn hs256_with_header(header: Value, claims: Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(header.to_string());
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HS_SECRET.as_bytes()).unwrap();
    mac.update(format!("{header}.{payload}").as_bytes());
    format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

#[test]
fn time_claims_must_be_numbers_when_present() {
    let config = jwt_config(json!({}));
    let now = NOW_MS / 1000;
    for (claim, value) in [
        ("nbf", json!((now + 3600).to_string())),
        ("nbf", json!(null)),
        ("iat", json!("yesterday")),
        ("exp", json!((now + 600).to_string())),
    ] {
        let mut c = claims("times");
        c[claim] = value.clone();
        assert_eq!(status(&config, chat(&hs256(c, HS_SECRET), "llama")).0, 401, "{claim}: {value}");
    }
    let mut c = claims("times");
    c["iat"] = json!(now - 5);
    c["nbf"] = json!(now - 5);
    assert_eq!(status(&config, chat(&hs256(c, HS_SECRET), "llama")).0, 200);
}

#[test]
fn refuses_critical_extensions_and_types_that_are_not_access_tokens() {
    let config = jwt_config(json!({}));
    let sign = |header: Value| hs256_with_header(header, claims("typed"));
    assert_eq!(status(&config, chat(&sign(json!({"alg": "HS256", "crit": ["exp"]})), "llama")).0, 401, "crit");
    for typ in [json!(null), json!("JWT"), json!("at+jwt"), json!("application/at+JWT")] {
        let mut header = json!({"alg": "HS256"});
        if !typ.is_null() {
            header["typ"] = typ.clone();
        }
        assert_eq!(status(&config, chat(&sign(header), "llama")).0, 200, "default accepts {typ}");
    }
    for typ in ["id+jwt", "logout+jwt", "dpop+jwt"] {
        assert_eq!(status(&config, chat(&sign(json!({"alg": "HS256", "typ": typ})), "llama")).0, 401, "{typ}");
    }
    // An operator whose identity provider marks access tokens (RFC 9068) refuses everything else,
    // such as an ID token of the same issuer and audience.
    let strict = jwt_config(json!({"typ": ["at+jwt"]}));
    assert_eq!(status(&strict, chat(&sign(json!({"alg": "HS256", "typ": "at+jwt"})), "llama")).0, 200);
    assert_eq!(status(&strict, chat(&sign(json!({"alg": "HS256", "typ": "JWT"})), "llama")).0, 401);
    assert_eq!(status(&strict, chat(&sign(json!({"alg": "HS256"})), "llama")).0, 401);
}

#[test]
fn refuses_the_high_s_twin_of_a_valid_es256_signature() {
    use p256::ecdsa::Signature;
    let config = jwt_config(json!({}));
    let valid = token("es256_valid");
    let (signed, signature) = valid.rsplit_once('.').unwrap();
    let signature = Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).unwrap()).unwrap();
    let (r, s) = signature.split_scalars();
    let twin = Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
    assert!(twin.normalize_s().is_some(), "the twin is high-S");
    let malleated = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(twin.to_bytes()));
    assert_eq!(status(&config, chat(&valid, "llama")).0, 200);
    assert_eq!(status(&config, chat(&malleated, "llama")).0, 401);
}
