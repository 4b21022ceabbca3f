//! Any set of variables: building the configuration never panics, and every error names a
//! variable.
#![no_main]

use edge_gateway::core::config::{Config, Lookup};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // NAME=value records separated by NUL.
    let vars: HashMap<String, String> = text
        .split('\0')
        .filter_map(|record| record.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match Config::from_lookup(&vars as &dyn Lookup) {
        Ok(config) => assert!(!config.backends.is_empty()),
        Err(e) => assert!(e.0.contains("GATEWAY_") || e.0.contains("api_key_secret"), "{}", e.0),
    }
});
