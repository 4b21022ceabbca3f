//! Any bearer credential: token verification never panics, and accepts nothing but the tokens
//! really signed with the fixture keys (the fuzzer cannot forge a signature, so any other
//! acceptance — a mutated payload, a non-canonical encoding, a swapped algorithm — is a bug).
#![no_main]

use edge_gateway::core::config::parse::parse_jwk;
use edge_gateway::core::config::JwtVerifier;
use edge_gateway::core::config::secret::Secret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let jwks: serde_json::Value = serde_json::from_str(include_str!("../../tests/fixtures/jwt/jwks.json")).unwrap();
    let keys =
        jwks["keys"].as_array().unwrap().iter().map(|k| parse_jwk(k).unwrap()).collect();
    let verifier = JwtVerifier {
        hs256: Some(Secret::new(b"fuzzing-secret-that-is-32-bytes-long!!".to_vec())),
        keys,
        issuer: Some("https://auth.example.com".into()),
        audience: Some("edge-gateway".into()),
        leeway_s: 60,
        models_claim: "models".into(),
        accepted_types: None,
    };
    if verifier.verify(token, 1_800_000_000).is_ok() {
        let tokens: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/jwt/tokens.json")).unwrap();
        let signed = [tokens["rs256_valid"].as_str().unwrap(), tokens["es256_valid"].as_str().unwrap()];
        assert!(signed.contains(&token), "accepted a token no one signed: {token}");
    }
});
