//! JSON Web Tokens for browsers, where no long-lived API key can live: HS256 with a shared secret,
//! ES256 and RS256 with keys from a JWKS given inline in the configuration.
//!
//! The key decides the algorithm, never the token: an HS256 token is checked only against the
//! HMAC secret, an ES256/RS256 one only against a JWKS key of that type (and that `alg`, when the
//! key says), so `alg: none` and HS/RS confusion cannot verify. `exp` is required; `nbf`, `iss`
//! and `aud` are checked with a small clock-skew allowance.

use crate::core::config::{JwtVerifier, KeyKind, PublicKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

/// Why a token was refused; for logs only (clients get one generic 401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtError(pub &'static str);

/// The verified identity a token carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub subject: String,
    /// The models the token names, if it names any.
    pub models: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<Value>,
    #[serde(default)]
    crit: Option<Value>,
}

/// Whether a bearer credential is shaped like a JWT (three base64url parts, a JSON header).
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}

impl JwtVerifier {
    /// Verifies `token` at `now_s` (Unix seconds) and returns its identity.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, JwtError> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError("not three parts"));
        };
        let decode = |part: &str, what: &'static str| URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtError(what));
        let header: Header = serde_json::from_slice(&decode(header_b64, "header is not base64url")?)
            .map_err(|_| JwtError("bad header"))?;
        if header.crit.is_some() {
            return Err(JwtError("crit is not supported"));
        }
        self.check_type(header.typ.as_ref())?;
        let signature = decode(signature_b64, "signature is not base64url")?;
        let signed = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        self.check_signature(&header, signed, &signature)?;
        let claims: Value = serde_json::from_slice(&decode(payload_b64, "payload is not base64url")?)
            .map_err(|_| JwtError("bad payload"))?;
        self.check_claims(&claims, now_s)
    }

    fn check_signature(&self, header: &Header, signed: &[u8], signature: &[u8]) -> Result<(), JwtError> {
        match header.alg.as_str() {
            "HS256" => {
                let secret = self.hs256.as_ref().ok_or(JwtError("HS256 is not accepted"))?;
                let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose()).map_err(|_| JwtError("bad HMAC key"))?;
                mac.update(signed);
                mac.verify_slice(signature).map_err(|_| JwtError("bad signature"))
            }
            "ES256" | "RS256" => {
                let key = self.key_for(&header.alg, header.kid.as_deref())?;
                match &key.kind {
                    KeyKind::Es256(key) => {
                        use p256::ecdsa::signature::Verifier;
                        let signature =
                            p256::ecdsa::Signature::from_slice(signature).map_err(|_| JwtError("bad signature"))?;
                        if signature.normalize_s().is_some() {
                            return Err(JwtError("high-S signature"));
                        }
                        key.verify(signed, &signature).map_err(|_| JwtError("bad signature"))
                    }
                    KeyKind::Rs256(key) => {
                        use rsa::signature::Verifier;
                        let verifier = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key.clone());
                        let signature =
                            rsa::pkcs1v15::Signature::try_from(signature).map_err(|_| JwtError("bad signature"))?;
                        verifier.verify(signed, &signature).map_err(|_| JwtError("bad signature"))
                    }
                }
            }
            _ => Err(JwtError("algorithm not accepted")),
        }
    }

    fn check_type(&self, typ: Option<&Value>) -> Result<(), JwtError> {
        let typ = match typ {
            None => None,
            Some(Value::String(t)) => {
                let t = t.trim();
                Some(t.get(..12).filter(|p| p.eq_ignore_ascii_case("application/")).map_or(t, |_| &t[12..]))
            }
            Some(_) => return Err(JwtError("typ is not a string")),
        };
        let accepted = match (&self.accepted_types, typ) {
            (None, None) => true,
            (None, Some(t)) => t.eq_ignore_ascii_case("JWT") || t.eq_ignore_ascii_case("at+jwt"),
            (Some(_), None) => false,
            (Some(list), Some(t)) => list.iter().any(|a| {
                let a = a.trim();
                let a = a.get(..12).filter(|p| p.eq_ignore_ascii_case("application/")).map_or(a, |_| &a[12..]);
                a.eq_ignore_ascii_case(t)
            }),
        };
        if accepted {
            Ok(())
        } else {
            Err(JwtError("typ not accepted"))
        }
    }

    /// The key of the token's `kid` (or the only key of its type), which must be of the type the
    /// token's `alg` names.
    fn key_for(&self, alg: &str, kid: Option<&str>) -> Result<&PublicKey, JwtError> {
        let of_alg = |k: &&PublicKey| k.kind.alg() == alg;
        let key = match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)).ok_or(JwtError("unknown kid"))?,
            None => {
                let mut candidates = self.keys.iter().filter(of_alg);
                match (candidates.next(), candidates.next()) {
                    (Some(key), None) => key,
                    _ => return Err(JwtError("no kid and no single key for the algorithm")),
                }
            }
        };
        if of_alg(&key) {
            Ok(key)
        } else {
            Err(JwtError("key type does not match the algorithm"))
        }
    }

    fn check_claims(&self, claims: &Value, now_s: u64) -> Result<Claims, JwtError> {
        // NumericDate claims: a number when present (a string `nbf` must not be skipped).
        let number = |name: &'static str| -> Result<Option<u64>, JwtError> {
            match claims.get(name) {
                None => Ok(None),
                Some(Value::Number(n)) => Ok(n.as_f64().map(|n| n.max(0.0) as u64)),
                Some(_) => Err(JwtError("a time claim is not a number")),
            }
        };
        let exp = number("exp")?.ok_or(JwtError("no exp"))?;
        number("iat")?;
        if now_s >= exp.saturating_add(self.leeway_s) {
            return Err(JwtError("expired"));
        }
        if number("nbf")?.is_some_and(|nbf| now_s.saturating_add(self.leeway_s) < nbf) {
            return Err(JwtError("not yet valid"));
        }
        if let Some(issuer) = &self.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
                return Err(JwtError("wrong issuer"));
            }
        }
        if let Some(audience) = &self.audience {
            let matches = match claims.get("aud") {
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
                _ => false,
            };
            if !matches {
                return Err(JwtError("wrong audience"));
            }
        }
        let subject = match claims.get("sub").and_then(Value::as_str) {
            Some(sub) if !sub.is_empty() && sub.len() <= 256 => sub.to_string(),
            _ => return Err(JwtError("no sub")),
        };
        let models = match claims.get(&self.models_claim) {
            None | Some(Value::Null) => None,
            Some(Value::Array(models)) => Some(models.iter().filter_map(Value::as_str).map(str::to_owned).collect()),
            Some(Value::String(models)) => Some(models.split_whitespace().map(str::to_owned).collect()),
            Some(_) => return Err(JwtError("models claim is neither a list nor a string")),
        };
        Ok(Claims { subject, models })
    }
}
