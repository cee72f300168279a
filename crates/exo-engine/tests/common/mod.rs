//! Shared by the engine's integration tests: where the test model and the golden data are.
#![allow(dead_code)]

use std::path::PathBuf;

/// SmolLM2-135M-Instruct Q4_1, put in the cache by `scripts/fetch-models.sh` (or named by `EXO_TEST_MODEL`).
pub fn model_path() -> PathBuf {
    let path = match std::env::var_os("EXO_TEST_MODEL") {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = std::env::var_os("EXO_MODELS_CACHE").map(PathBuf::from).unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/exo/models")
            });
            cache.join("SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    assert!(path.exists(), "test model {} is missing: run scripts/fetch-models.sh", path.display());
    path
}

pub fn golden() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/smollm2-135m-instruct-q4_1.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("golden data is in the repository"))
        .expect("golden data is JSON")
}
