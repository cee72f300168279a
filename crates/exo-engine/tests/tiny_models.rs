//! The `qwen2` architecture (q/k/v biases, rope on the two halves of each head), Llama 3's `rope_freqs` (per-pair
//! rope frequency divisors), `qwen3` (q/k norms), `gemma2` (soft caps, alternating sliding windows) and `gemma3`
//! (q/k norms, five windowed layers to a global one, two rope bases), the mixtures of experts of Mixtral (8 experts,
//! 2 per token) and `qwen3moe` (16, 4 per token), `phi3` (fused tensors, long-context rope factors) and `gpt-oss`
//! (sinks, YaRN, biased experts, clamped SwiGLU), and the weight types IQ4_NL, IQ4_XS, MXFP4, Q2_K, Q3_K and Q5_K
//! (one `llama` layer each) against llama.cpp, and Mixtral's old layout of one tensor per expert against the merged
//! file, on tiny random-weight models that
//! `scripts/make-tiny-models.py` writes afresh (needs Python 3 with `gguf` and `numpy`). llama.cpp's greedy tokens
//! and log-probabilities on them are in `tests/data/tiny_models_llama_cpp.json` (`scripts/gen_tiny_model_fixture.py`),
//! with the sha256 of the files they were computed on. The engine is teacher-forced with llama.cpp's tokens, whole and
//! split into 2 shards, and judged as in `golden.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use exo_engine::config::Experts;
use exo_engine::gguf::TensorType;
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
    let (mean, max) = (common::MEAN_LOGPROB_TOLERANCE, common::MAX_LOGPROB_TOLERANCE);
    let tolerance = Tolerance { mean, max, candle: None };
    check_against_llama_cpp_within(path, reference, tolerance)
}

/// What [`check_against_llama_cpp_within`] allows: the mean and largest |Δ log-probability|; and for candle's
/// backend either the same, with llama.cpp's token wherever it is not a near tie (`None`; ours must, always), or
/// a mean and largest of its own, with its log-probabilities compared but not its tokens.
struct Tolerance {
    mean: f64,
    max: f64,
    candle: Option<(f64, f64)>,
}

/// Per step of each case, |Δ| between our and llama.cpp's log-probability of llama.cpp's token, teacher-forced, with
/// no check of the token (as [`common::teacher_forced`] otherwise).
fn logprob_diffs(chain: &mut ShardChain, cases: &[Value]) -> Vec<f64> {
    let mut diffs = Vec::new();
    for case in cases {
        chain.reset();
        let mut logits = chain.forward(&common::ids(&case["prompt_ids"])).unwrap();
        for (&id, step) in common::ids(&case["ids"]).iter().zip(case["steps"].as_array().unwrap()) {
            let top = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let log_sum = top + logits.iter().map(|&l| (l as f64 - top).exp()).sum::<f64>().ln();
            let theirs = step["top"].as_array().unwrap().iter().find(|t| t[0].as_u64() == Some(id as u64));
            let theirs = theirs.and_then(|t| t[1].as_f64()).expect("llama.cpp's token is among its top five");
            diffs.push((logits[id as usize] as f64 - log_sum - theirs).abs());
            logits = chain.forward(&[id]).unwrap();
        }
    }
    diffs
}

/// As [`check_against_llama_cpp`], within `tolerance`.
fn check_against_llama_cpp_within(path: &Path, reference: &Value, tolerance: Tolerance) {
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
        let cases = reference["greedy"].as_array().unwrap();
        let (diffs, (allowed_mean, allowed_max)) = match tolerance.candle {
            Some(own) if backend == Backend::Candle => (logprob_diffs(&mut chain, cases), own),
            _ => (common::teacher_forced(&mut chain, cases, &masked), (tolerance.mean, tolerance.max)),
        };
        let label = format!(
            "{}, {} shard(s), {kv} KV cache, {} backend",
            reference["file"].as_str().unwrap(),
            ranges.len(),
            chain.shards()[0].backend()
        );
        let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
        let max = diffs.iter().cloned().fold(0.0, f64::max);
        eprintln!("{label}: {} steps, mean |Δlogprob| {mean:.4}, max {max:.4}", diffs.len());
        assert_eq!(diffs.len(), n_steps);
        assert!(mean <= allowed_mean, "{label}: mean log-probability difference {mean} (allowed {allowed_mean})");
        assert!(max <= allowed_max, "{label}: largest log-probability difference {max} (allowed {allowed_max})");
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

/// Mixtral files from before llama.cpp merged the experts (one tensor per expert, `blk.N.ffn_gate.E.weight`: most
/// Mixtral files on the hub) run as the merged file of the same values does, bit for bit, on both backends and in
/// shards. llama.cpp no longer reads that layout, so the merged file (checked against llama.cpp above) is the
/// reference.
#[test]
fn tiny_mixtral_in_the_old_layout_of_one_tensor_per_expert_runs_as_the_merged_file() {
    let models = TinyModels::make("mixtral-split");
    let reference = reference("tiny-mixtral.gguf");
    let merged = Gguf::open(models.checked("tiny-mixtral.gguf", &reference)).unwrap();
    let split = Gguf::open(models.dir.join("tiny-mixtral-split.gguf")).unwrap();
    assert!(
        split.tensors.contains_key("blk.1.ffn_down.7.weight")
            && !split.tensors.contains_key("blk.1.ffn_down_exps.weight")
    );
    assert_eq!(ModelConfig::from_gguf(&split).unwrap().experts, Some(Experts { count: 8, used: 2, ffn_size: 64 }));
    let s = |a, b| Shard::new(a, b, 2).unwrap();
    for (ranges, backend) in
        [(vec![s(0, 1)], Backend::Auto), (vec![s(0, 0), s(1, 1)], Backend::Auto), (vec![s(0, 1)], Backend::Candle)]
    {
        let load = |g: &Gguf| ShardChain::load_with(g, &ranges, 512, &Device::Cpu, KvType::F16, backend).unwrap();
        let (mut a, mut b) = (load(&merged), load(&split));
        for case in reference["greedy"].as_array().unwrap() {
            a.reset();
            b.reset();
            let prompt = common::ids(&case["prompt_ids"]);
            assert_eq!(
                a.forward(&prompt).unwrap(),
                b.forward(&prompt).unwrap(),
                "{backend:?}, {} shard(s)",
                ranges.len()
            );
            for &id in &common::ids(&case["ids"]) {
                assert_eq!(
                    a.forward(&[id]).unwrap(),
                    b.forward(&[id]).unwrap(),
                    "{backend:?}, {} shard(s)",
                    ranges.len()
                );
            }
        }
    }
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

#[test]
fn tiny_quants_iq4_mxfp4_and_k_quant_layers_match_llama_cpp_whole_and_split() {
    let models = TinyModels::make("quants");
    let reference = reference("tiny-quants.gguf");
    let path = models.checked("tiny-quants.gguf", &reference);
    let gguf = Gguf::open(&path).unwrap();
    let config = ModelConfig::from_gguf(&gguf).unwrap();
    assert_eq!((config.architecture, config.hidden_size, config.n_layers), (Architecture::Llama, 256, 6));
    // Layer i's seven matrices are all of the i-th type; the CPU backend runs them on its own kernels and candle
    // gets the first three converted to Q8_0.
    let kinds =
        [TensorType::Iq4Nl, TensorType::Iq4Xs, TensorType::Mxfp4, TensorType::Q2K, TensorType::Q3K, TensorType::Q5K];
    for (layer, &kind) in kinds.iter().enumerate() {
        for t in ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"] {
            let name = format!("blk.{layer}.{t}.weight");
            assert_eq!(gguf.tensors[&name].kind, kind, "{name}");
        }
    }
    // Quantized matrices round every activation to 8 bits (llama.cpp and our kernels alike), which makes these
    // tiny random models discontinuous: any perturbation of about 1e-3, such as f16 rounding in attention, flips
    // some roundings by a whole step. llama.cpp itself moves by 0.09 on average on this model when only its
    // attention path changes (`spread` in the reference data: flash attention off, teacher-forced; 0.073 with
    // every layer Q8_0 and 0.13 with every layer Q5_K, against 0.011 with F32 layers), so no tolerance below that can
    // hold for anyone but llama.cpp's own flash-attention path. Ours must stay within 1.5 times llama.cpp's spread
    // from llama.cpp; a wrong layout or scale moves the log-probabilities by whole units. candle's backend gets
    // IQ4_NL, IQ4_XS and MXFP4 re-quantized to Q8_0, not llama.cpp's weights, and rounds its activations its own
    // way: its tokens may differ from llama.cpp's beyond near ties, so only its log-probabilities are compared,
    // within 2.5 times the spread.
    let spread = |k: &str| reference["spread"][k].as_f64().expect("the reference data has llama.cpp's spread");
    assert_eq!(reference["spread"]["llama_server_args"], "-fa off");
    let (mean, max) = (spread("mean"), spread("max"));
    let tolerance = Tolerance { mean: 1.5 * mean, max: 1.5 * max, candle: Some((2.5 * mean, 2.5 * max)) };
    check_against_llama_cpp_within(&path, &reference, tolerance);
}
