//! Gemma 3 (`gemma3`: embeddings scaled by √hidden, per-head q/k norms, post-attention and post-FFN norms, GeGLU,
//! five sliding-window layers to each global one) against llama.cpp's reference data for Gemma 3 270M Q4_K_M
//! (`tests/data/gemma-3-270m-q4_k_m.json`, see `../shared/golden/README.md`): tokenizer exact, teacher-forced
//! log-probabilities close, free-running greedy text identical up to the first near tie, on both backends, whole
//! and split.

mod common;

use exo_engine::tokenizer::Tokenizer;
use exo_engine::{Backend, Device, Gguf, KvType, Shard, ShardChain};

fn chains(gguf: &Gguf, backends: &[Backend]) -> Vec<(String, ShardChain)> {
    let total = exo_engine::ModelConfig::from_gguf(gguf).unwrap().n_layers;
    let s = |a, b| Shard::new(a, b, total).unwrap();
    let mut out = Vec::new();
    for &backend in backends {
        // Whole, and split inside a block of local layers and at a global one (layer 5 is the first global).
        for ranges in [vec![s(0, total - 1)], vec![s(0, 3), s(4, 5), s(6, total - 1)]] {
            let chain = ShardChain::load_with(gguf, &ranges, 1024, &Device::Cpu, KvType::F16, backend).unwrap();
            out.push((format!("{} shard(s), {backend:?} backend", ranges.len()), chain));
        }
    }
    out
}

#[test]
fn gemma3_tokenizer_matches_llama_cpp() {
    let gguf = Gguf::open(common::gemma_path()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
    let golden = common::golden_gemma();
    let cases = golden["tokenize"].as_array().unwrap();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tokenizer.encode(text, false, true).unwrap(), common::ids(&case["ids"]), "tokenizing {text:?}");
    }
    assert!(cases.len() >= 10, "{}", cases.len());
}

#[test]
fn gemma3_teacher_forced_logprobs_match_llama_cpp() {
    let gguf = Gguf::open(common::gemma_path()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
    let golden = common::golden_gemma();
    let cases = golden["greedy"].as_array().unwrap();
    for (label, mut chain) in chains(&gguf, &[Backend::Cpu]) {
        let diffs = common::teacher_forced(&mut chain, cases, tokenizer.eog_ids());
        common::assert_logprobs_close(&format!("gemma3 {label}"), &diffs, cases.len() * 48);
    }
    // candle's backend (what a GPU runs) on its CPU device is far slower here: the first prompt, whole.
    let mut chain = ShardChain::load_whole_with(&gguf, 1024, &Device::Cpu, KvType::F16, Backend::Candle).unwrap();
    let diffs = common::teacher_forced(&mut chain, &cases[..1], tokenizer.eog_ids());
    common::assert_logprobs_close("gemma3 whole, Candle backend", &diffs, 48);
}

#[test]
fn gemma3_free_running_greedy_matches_llama_cpp_until_a_near_tie() {
    let gguf = Gguf::open(common::gemma_path()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
    let golden = common::golden_gemma();
    for (label, mut chain) in chains(&gguf, &[Backend::Cpu]) {
        common::free_running(&format!("gemma3 {label}"), &mut chain, &tokenizer, golden["greedy"].as_array().unwrap());
    }
}
