//! Shared by the integration tests (the engine's, and the command line's through `#[path]`): where the test model
//! and llama.cpp's reference data are, and how the engine is compared with that data.
#![allow(dead_code)]

use std::path::PathBuf;

use exo_engine::sampler::{argmax, log_softmax};
use exo_engine::ShardChain;
use serde_json::Value;

/// A teacher-forced step is checked for its top token only when llama.cpp's own top-2 gap is at least this.
pub const TIE_GAP: f64 = 0.3;
/// How far the log-probability of llama.cpp's token may be from llama.cpp's own, on average and at any step
/// (see `../shared/golden/README.md`: two correct engines differ by about 0.035 on average).
pub const MEAN_LOGPROB_TOLERANCE: f64 = 0.05;
pub const MAX_LOGPROB_TOLERANCE: f64 = 0.5;

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

/// Gemma 3 270M Q4_K_M, put in the cache by `scripts/fetch-models.sh` (or named by `EXO_TEST_GEMMA`).
pub fn gemma_path() -> PathBuf {
    let path = match std::env::var_os("EXO_TEST_GEMMA") {
        Some(p) => PathBuf::from(p),
        None => model_path().with_file_name("gemma-3-270m-q4_k_m.gguf"),
    };
    assert!(path.exists(), "test model {} is missing: run scripts/fetch-models.sh", path.display());
    path
}

/// llama.cpp's reference data for Gemma 3 270M.
pub fn golden_gemma() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../exo-engine/tests/data/gemma-3-270m-q4_k_m.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("golden data is in the repository"))
        .expect("golden data is JSON")
}

/// llama.cpp's reference data for the test model. (The path works from both crates that include this module.)
pub fn golden() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../exo-engine/tests/data/smollm2-135m-instruct-q4_1.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("golden data is in the repository"))
        .expect("golden data is JSON")
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("array of ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// Feeds each reference case's `prompt_ids` and then llama.cpp's own `ids` through `chain`, whatever the engine
/// would pick. At every step whose `gap` is at least [`TIE_GAP`], the engine's top token (with `masked` ids
/// excluded, as llama.cpp excluded them) must be llama.cpp's. Returns, per step, the absolute difference between
/// the log-probabilities the two engines give llama.cpp's token.
pub fn teacher_forced(chain: &mut ShardChain, cases: &[Value], masked: &[u32]) -> Vec<f64> {
    let mut diffs = Vec::new();
    for case in cases {
        chain.reset();
        let expected_ids = ids(&case["ids"]);
        let steps = case["steps"].as_array().expect("steps");
        assert_eq!(expected_ids.len(), steps.len());
        let mut logits = chain.forward(&ids(&case["prompt_ids"])).unwrap();
        for (i, (&expected, step)) in expected_ids.iter().zip(steps).enumerate() {
            let logprobs = log_softmax(&logits);
            let gap = step["gap"].as_f64().expect("gap");
            if gap >= TIE_GAP {
                for &id in masked {
                    logits[id as usize] = f32::NEG_INFINITY;
                }
                assert_eq!(argmax(&logits), expected, "prompt {} step {i} (gap {gap})", case["prompt"]);
            }
            let theirs = step["top"]
                .as_array()
                .expect("top")
                .iter()
                .find(|t| t[0].as_u64() == Some(expected as u64))
                .map(|t| t[1].as_f64().expect("log-probability"))
                .expect("llama.cpp's chosen token is among its top five");
            diffs.push((logprobs[expected as usize] as f64 - theirs).abs());
            logits = chain.forward(&[expected]).unwrap();
        }
    }
    diffs
}

/// Greedy generation (end-of-generation tokens masked, as llama.cpp's `ignore_eos`) from each case's prompt must
/// give llama.cpp's `prefix_texts` exactly until the first step where it differs; that step must be a near tie
/// (`gap` below [`TIE_GAP`]) and its text one of `alt_texts`; and at least `untied_steps` steps must match.
pub fn free_running(
    label: &str,
    chain: &mut ShardChain,
    tokenizer: &exo_engine::tokenizer::Tokenizer,
    cases: &[Value],
) {
    for case in cases {
        chain.reset();
        let prefix_texts: Vec<&str> =
            case["prefix_texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        let steps = case["steps"].as_array().unwrap();
        let mut generated = Vec::new();
        let mut logits = chain.forward(&ids(&case["prompt_ids"])).unwrap();
        let mut matched = 0;
        for (i, step) in steps.iter().enumerate() {
            for &eog in tokenizer.eog_ids() {
                logits[eog as usize] = f32::NEG_INFINITY;
            }
            let next = argmax(&logits);
            generated.push(next);
            let text = tokenizer.decode(&generated, false);
            if text != prefix_texts[i] {
                let gap = step["gap"].as_f64().unwrap();
                let alts: Vec<&str> = step["alt_texts"]
                    .as_array()
                    .map(|a| a.iter().map(|t| t.as_str().unwrap()).collect())
                    .unwrap_or_default();
                assert!(gap < TIE_GAP, "{label}, prompt {:?}: step {i} differs at gap {gap}: {text:?}", case["prompt"]);
                assert!(
                    alts.contains(&text.as_str()),
                    "{label}, prompt {:?}: step {i}: {text:?} not in {alts:?}",
                    case["prompt"]
                );
                break;
            }
            matched += 1;
            logits = chain.forward(&[next]).unwrap();
        }
        eprintln!(
            "{label}, prompt {:?}: {matched} of {} steps match (untied_steps {})",
            case["prompt"].as_str().unwrap_or(""),
            steps.len(),
            case["untied_steps"]
        );
        assert!(matched as u64 >= case["untied_steps"].as_u64().unwrap());
    }
}

/// Prints the mean and largest log-probability differences under `label` and checks them against the tolerances.
pub fn assert_logprobs_close(label: &str, diffs: &[f64], expected_steps: usize) {
    let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
    let max = diffs.iter().cloned().fold(0.0, f64::max);
    eprintln!("{label}: {} steps, mean |Δlogprob| {mean:.4}, max {max:.4}", diffs.len());
    assert_eq!(diffs.len(), expected_steps);
    assert!(mean <= MEAN_LOGPROB_TOLERANCE, "{label}: mean log-probability difference {mean}");
    assert!(max <= MAX_LOGPROB_TOLERANCE, "{label}: largest log-probability difference {max}");
}
