//! Deterministic embedding vectors and their wire encodings.
//!
//! An input item's vector is derived from the SHA-256 of its JSON text (`"some text"` for a
//! string, `[1,2,3]` for token ids), so the same item gets the same vector in any request,
//! at any position: SHA-256 over that text followed by a little-endian `u32` block counter
//! (0, 1, …) gives 8 components per block, each a little-endian `u32` mapped to
//! `u / 2^31 - 1` in [-1, 1). Like vLLM (`normalize` defaults to true) the vector is
//! L2-normalised; `dimensions` keeps its first components and normalises again, as
//! vLLM's matryoshka truncation does.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The normalised vector of an item, `dims` components long.
pub(crate) fn embedding(identity: &str, dims: usize) -> Vec<f32> {
    let mut raw = Vec::with_capacity(dims);
    let mut block: u32 = 0;
    while raw.len() < dims {
        let digest = Sha256::new().chain_update(identity.as_bytes()).chain_update(block.to_le_bytes()).finalize();
        for word in digest.chunks_exact(4) {
            if raw.len() == dims {
                break;
            }
            let bits = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            raw.push(f64::from(bits) / f64::from(1u32 << 31) - 1.0);
        }
        block = block.wrapping_add(1);
    }
    normalised(&raw)
}

/// The unit vector along `raw`, in float32 as vLLM answers.
fn normalised(raw: &[f64]) -> Vec<f32> {
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    raw.iter().map(|x| (x * scale) as f32).collect()
}

/// `encoding_format: "base64"`: the float32 values' little-endian bytes in standard
/// base64, what OpenAI and vLLM (`embed_dtype` float32 on a little-endian host) send.
pub(crate) fn base64_f32(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    STANDARD.encode(bytes)
}
