//! The engine against llama.cpp's reference data (`tests/data/smollm2-135m-instruct-q4_1.json`, see its README in
//! `../shared/golden/`): tokenizer and chat template exact, teacher-forced log-probabilities close, free-running
//! greedy text identical up to the first near tie. The model runs whole and split into 2 and 3 shards.

mod common;

use exo_engine::chat_template::{ChatMessage, ChatTemplate};
use exo_engine::tokenizer::Tokenizer;
use exo_engine::{Backend, Device, Gguf, KvType, Shard, ShardChain};

/// The model whole and split into 2 and 3 shards on the CPU kernels with the default f16 KV cache, whole with an
/// f32 cache, and whole on candle's backend: each a chain ready to run, with a label for messages.
fn chains(gguf: &Gguf) -> Vec<(String, ShardChain)> {
    let total = exo_engine::ModelConfig::from_gguf(gguf).unwrap().n_layers;
    let s = |a, b| Shard::new(a, b, total).unwrap();
    let whole = vec![s(0, total - 1)];
    let configs = [
        (whole.clone(), KvType::F16, Backend::Cpu),
        (vec![s(0, total / 2 - 1), s(total / 2, total - 1)], KvType::F16, Backend::Cpu),
        (vec![s(0, 9), s(10, 19), s(20, total - 1)], KvType::F16, Backend::Cpu),
        (whole.clone(), KvType::F32, Backend::Cpu),
        (whole, KvType::F16, Backend::Candle),
    ];
    configs
        .into_iter()
        .map(|(ranges, kv, backend)| {
            let chain = ShardChain::load_with(gguf, &ranges, 512, &Device::Cpu, kv, backend).unwrap();
            (format!("{} shard(s), {kv} KV cache, {backend:?} backend", ranges.len()), chain)
        })
        .collect()
}

#[test]
fn tokenizer_matches_llama_cpp() {
    let gguf = Gguf::open(common::model_path()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
    let golden = common::golden();
    let cases = golden["tokenize"].as_array().unwrap();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tokenizer.encode(text, false, true).unwrap(), common::ids(&case["ids"]), "tokenizing {text:?}");
    }
    assert_eq!(cases.len(), 18);
}

#[test]
fn chat_template_matches_llama_cpp() {
    let gguf = Gguf::open(common::model_path()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
    let template = ChatTemplate::from_gguf(&gguf, &tokenizer).unwrap();
    assert!(!template.is_default());
    let golden = common::golden();
    for case in golden["chat_template"].as_array().unwrap() {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let add = case["add_generation_prompt"].as_bool().unwrap();
        assert_eq!(template.render(&messages, add).unwrap(), case["prompt"].as_str().unwrap());
    }
}

#[test]
fn teacher_forced_logprobs_match_llama_cpp_whole_and_split() {
    let gguf = Gguf::open(common::model_path()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
    let golden = common::golden();
    for (label, mut chain) in chains(&gguf) {
        let cases = golden["greedy"].as_array().unwrap();
        // llama.cpp masked end-of-generation tokens (ignore_eos) when it chose its tokens.
        let diffs = common::teacher_forced(&mut chain, cases, tokenizer.eog_ids());
        common::assert_logprobs_close(&label, &diffs, 5 * 48);
    }
}

#[test]
fn free_running_greedy_matches_llama_cpp_until_a_near_tie() {
    let gguf = Gguf::open(common::model_path()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
    let golden = common::golden();
    for (label, mut chain) in chains(&gguf) {
        common::free_running(&label, &mut chain, &tokenizer, golden["greedy"].as_array().unwrap());
    }
}
