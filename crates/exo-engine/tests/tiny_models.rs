//! The `qwen2` architecture (q/k/v biases, rope on the two halves of each head), Llama 3's `rope_freqs` (per-pair
//! rope frequency divisors), `qwen3` (q/k norms), `gemma2` (soft caps, alternating sliding windows) and `gemma3`
//! (q/k norms, five windowed layers to a global one, two rope bases), the mixtures of experts of Mixtral (8 experts,
//! 2 per token) and `qwen3moe` (16, 4 per token), `phi3` (fused tensors, long-context rope factors) and `gpt-oss`
//! (sinks, YaRN, biased experts, clamped SwiGLU) against llama.cpp, on tiny random-weight models that
//! `scripts/make-tiny-models.py` writes afresh (needs Python 3 with `gguf` and `numpy`). llama.cpp's greedy tokens
//! and log-probabilities on them are in `tests/data/tiny_models_llama_cpp.json` (`scripts/gen_tiny_model_fixture.py`),
//! with the sha256 of the files they were computed on. The engine is teacher-forced with llama.cpp's tokens, whole and
//! split into 2 shards, and judged as in `golden.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use exo_engine::config::Experts;
use exo_engine::{Architecture, Backend, Device, Gguf, KvType, ModelConfig, Shard, ShardChain};
use serde_json::Value;

/// What to do when the models cannot be made (`scripts/test.sh` does it).
const INSTALL: &str = "install Python 3, then run `python3 -m pip install gguf==0.19.0 numpy`";

/// A folder of freshly made tiny models, removed when dropped.
struct TinyModels {
    dir: PathBuf,
}

impl TinyModels {
    /// Runs `scripts/make-tiny-models.py` (with the test model as the tokenizer donor) into a new folder.
    fn make(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("exo-tiny-models-{}-{tag}", std::process::id()));
        let models = Self { dir };
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/make-tiny-models.py");
        let output = Command::new("python3")
            .arg(script)
            .arg(&models.dir)
            .arg("--donor")
            .arg(common::model_path())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run python3 ({e}), which makes the tiny models with {script}: {INSTALL}")
            });
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("ModuleNotFoundError") {
            panic!("{script} needs the Python packages gguf and numpy: {INSTALL}\n{stderr}");
        }
        assert!(output.status.success(), "{script} failed ({}):\n{stderr}", output.status);
        models
    }

    /// The model `file`, after checking that it is byte for byte the one llama.cpp's reference data was computed on.
    fn checked(&self, file: &str, reference: &Value) -> PathBuf {
        let path = self.dir.join(file);
        let expected = reference["sha256"].as_str().expect("the reference data has the model's sha256");
        let found = sha256(&path);
        assert_eq!(
            found, expected,
            "{file} made by scripts/make-tiny-models.py is not the file llama.cpp's reference data was computed on \
             (the script, or the numpy or gguf package, writes different bytes: the reference data lists the versions \
             it was made with; regenerate it with scripts/gen_tiny_model_fixture.py)"
        );
        path
    }
}

impl Drop for TinyModels {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sha256(path: &Path) -> String {
    let output = Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run sha256sum (coreutils) on {}: {e}", path.display()));
    assert!(
        output.status.success(),
        "sha256sum {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("sha256sum prints ASCII");
    text.split_whitespace().next().expect("sha256sum prints the digest first").to_string()
}

fn reference(file: &str) -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny_models_llama_cpp.json");
    let data: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("reference data is in the repository"))
            .expect("reference data is JSON");
    data["models"]
        .as_array()
        .expect("a list of models")
        .iter()
        .find(|m| m["file"] == file)
        .unwrap_or_else(|| panic!("no reference data for {file}"))
        .clone()
}

/// Teacher-forces llama.cpp's tokens through `path`, whole and split into 2 shards, and checks the agreement.
fn check_against_llama_cpp(path: &Path, reference: &Value) {
    let gguf = Gguf::open(path).unwrap();
    let total = ModelConfig::from_gguf(&gguf).unwrap().n_layers;
    let s = |a, b| Shard::new(a, b, total).unwrap();
    let n_steps: usize =
        reference["greedy"].as_array().unwrap().iter().map(|c| c["ids"].as_array().unwrap().len()).sum();
    let whole = vec![s(0, total - 1)];
    let half = vec![s(0, total / 2 - 1), s(total / 2, total - 1)];
    for (ranges, kv, backend) in [
        (whole.clone(), KvType::F16, Backend::Auto),
        (half, KvType::F16, Backend::Auto),
        (whole, KvType::F32, Backend::Candle),
    ] {
        let mut chain = ShardChain::load_with(&gguf, &ranges, 512, &Device::Cpu, kv, backend).unwrap();
        // The tokens llama.cpp never chose (end-of-generation tokens, and tokens that are not UTF-8 on their own).
        let masked = common::ids(&reference["masked_ids"]);
        let diffs = common::teacher_forced(&mut chain, reference["greedy"].as_array().unwrap(), &masked);
        let label = format!(
            "{}, {} shard(s), {kv} KV cache, {} backend",
            reference["file"].as_str().unwrap(),
            ranges.len(),
            chain.shards()[0].backend()
        );
        common::assert_logprobs_close(&label, &diffs, n_steps);
    }
}

#[test]
fn tiny_qwen2_matches_llama_cpp_whole_and_split() {
    let models = TinyModels::make("qwen2");
    let reference = reference("tiny-qwen2.gguf");
    let path = models.checked("tiny-qwen2.gguf", &reference);
    let gguf = Gguf::open(&path).unwrap();
    assert_eq!(ModelConfig::from_gguf(&gguf).unwrap().architecture, Architecture::Qwen2);
    assert!(gguf.tensors.contains_key("blk.0.attn_k.bias") && gguf.tensors.contains_key("output.weight"));
    check_against_llama_cpp(&path, &reference);
}

#[test]
fn tiny_llama3_with_rope_freqs_matches_llama_cpp_whole_and_split() {
    let models = TinyModels::make("llama3");
    let reference = reference("tiny-llama3.gguf");
    let path = models.checked("tiny-llama3.gguf", &reference);
    let gguf = Gguf::open(&path).unwrap();
    assert_eq!(ModelConfig::from_gguf(&gguf).unwrap().architecture, Architecture::Llama);
    assert!(gguf.tensors.contains_key("rope_freqs.weight") && !gguf.tensors.contains_key("output.weight"));
    check_against_llama_cpp(&path, &reference);
}

#[test]
fn tiny_qwen3_with_qk_norms_matches_llama_cpp_whole_and_split() {
    let models = TinyModels::make("qwen3");
    let reference = reference("tiny-qwen3.gguf");
    let path = models.checked("tiny-qwen3.gguf", &reference);
    let gguf = Gguf::open(&path).unwrap();
    let config = ModelConfig::from_gguf(&gguf).unwrap();
    assert_eq!((config.architecture, config.qk_norm), (Architecture::Qwen3, true));
    assert!(gguf.tensors.contains_key("blk.0.attn_q_norm.weight") && !gguf.tensors.contains_key("blk.0.attn_q.bias"));
    check_against_llama_cpp(&path, &reference);
}

#[test]
fn tiny_gemma3_with_a_sliding_window_matches_llama_cpp_whole_and_split() {
    let models = TinyModels::make("gemma3");
    let reference = reference("tiny-gemma3.gguf");
    let path = models.checked("tiny-gemma3.gguf", &reference);
    let gguf = Gguf::open(&path).unwrap();
    let config = ModelConfig::from_gguf(&gguf).unwrap();
    assert_eq!(config.architecture, Architecture::Gemma3);
    // Layers 0-4 see the last 4 positions; layer 5 sees them all. Every prompt is longer than the window.
    assert_eq!(
        (0..6).map(|l| config.window(l)).collect::<Vec<_>>(),
        [Some(4), Some(4), Some(4), Some(4), Some(4), None]
    );
    let shortest =
        reference["greedy"].as_array().unwrap().iter().map(|c| c["prompt_ids"].as_array().unwrap().len()).min();
    assert!(shortest.unwrap() > 4, "{shortest:?}");
    check_against_llama_cpp(&path, &reference);
}

#[test]
fn tiny_gemma2_with_soft_caps_and_alternating_windows_matches_llama_cpp_whole_and_split() {
    let models = TinyModels::make("gemma2");
    let reference = reference("tiny-gemma2.gguf");
    let path = models.checked("tiny-gemma2.gguf", &reference);
    let gguf = Gguf::open(&path).unwrap();
    let config = ModelConfig::from_gguf(&gguf).unwrap();
    assert_eq!(config.architecture, Architecture::Gemma2);
    assert_eq!((config.attn_softcap, config.final_softcap), (Some(2.0), Some(8.0)));
    assert_eq!((0..4).map(|l| config.window(l)).collect::<Vec<_>>(), [Some(4), None, Some(4), None]);
    check_against_llama_cpp(&path, &reference);
}

#[test]
fn tiny_mixtral_with_8_experts_top_2_matches_llama_cpp_whole_and_split() {
    let models = TinyModels::make("mixtral");
    let reference = reference("tiny-mixtral.gguf");
    let path = models.checked("tiny-mixtral.gguf", &reference);
    let gguf = Gguf::open(&path).unwrap();
    let config = ModelConfig::from_gguf(&gguf).unwrap();
    assert_eq!(config.architecture, Architecture::Llama);
    assert_eq!(config.experts, Some(Experts { count: 8, used: 2, ffn_size: 64 }));
    assert!(
        gguf.tensors.contains_key("blk.1.ffn_down_exps.weight") && !gguf.tensors.contains_key("blk.1.ffn_down.weight")
    );
    check_against_llama_cpp(&path, &reference);
}

#[test]
fn tiny_qwen3moe_with_16_experts_top_4_matches_llama_cpp_whole_and_split() {
    let models = TinyModels::make("qwen3moe");
    let reference = reference("tiny-qwen3moe.gguf");
    let path = models.checked("tiny-qwen3moe.gguf", &reference);
    let gguf = Gguf::open(&path).unwrap();
    let config = ModelConfig::from_gguf(&gguf).unwrap();
    assert_eq!((config.architecture, config.qk_norm), (Architecture::Qwen3Moe, true));
    assert_eq!(config.experts, Some(Experts { count: 16, used: 4, ffn_size: 32 }));
    check_against_llama_cpp(&path, &reference);
}

#[test]
fn tiny_phi3_with_fused_tensors_and_long_rope_factors_matches_llama_cpp_whole_and_split() {
    let models = TinyModels::make("phi3");
    let reference = reference("tiny-phi3.gguf");
    let path = models.checked("tiny-phi3.gguf", &reference);
    let gguf = Gguf::open(&path).unwrap();
    let config = ModelConfig::from_gguf(&gguf).unwrap();
    assert_eq!((config.architecture, config.rope_original_context), (Architecture::Phi3, 64));
    // The rope attention factor 1.2 scales every score by its square.
    assert!((config.attention_scale - 1.44 / 32f32.sqrt()).abs() < 1e-6, "{}", config.attention_scale);
    assert!(gguf.tensors.contains_key("blk.0.attn_qkv.weight") && !gguf.tensors.contains_key("blk.0.ffn_gate.weight"));
    check_against_llama_cpp(&path, &reference);
}

#[test]
fn tiny_gpt_oss_with_sinks_yarn_and_biased_experts_matches_llama_cpp_whole_and_split() {
    let models = TinyModels::make("gpt-oss");
    let reference = reference("tiny-gpt-oss.gguf");
    let path = models.checked("tiny-gpt-oss.gguf", &reference);
    let gguf = Gguf::open(&path).unwrap();
    let config = ModelConfig::from_gguf(&gguf).unwrap();
    assert_eq!((config.architecture, config.attn_sinks), (Architecture::GptOss, true));
    assert_eq!(config.experts, Some(Experts { count: 16, used: 4, ffn_size: 32 }));
    assert_eq!(config.yarn.map(|y| (y.factor, y.original_context)), Some((4.0, 64)));
    // Even layers see the last 4 positions.
    assert_eq!((0..4).map(|l| config.window(l)).collect::<Vec<_>>(), [Some(4), None, Some(4), None]);
    assert!(
        gguf.tensors.contains_key("blk.3.ffn_down_exps.bias") && gguf.tensors.contains_key("blk.0.attn_sinks.weight")
    );
    check_against_llama_cpp(&path, &reference);
}
