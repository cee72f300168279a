//! A model's hyper-parameters, read from the GGUF file's own metadata (`{arch}.*` keys).
//!
//! This is the one place that knows which architectures the engine runs and what each one's metadata means.

use crate::error::{EngineError, Result};
use crate::gguf::{Gguf, Value};

/// The transformer families the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3.x, Mistral, SmolLM, TinyLlama: rope on interleaved pairs (the GGUF converter permutes q/k).
    Llama,
    /// Qwen 2/2.5 and DeepSeek-R1-Distill-Qwen: biases on q/k/v, rope on the two halves of each head (NeoX).
    Qwen2,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }

    /// The architecture with this `general.architecture` name, if the engine runs it.
    pub fn from_name(name: &str) -> Option<Self> {
        [Architecture::Llama, Architecture::Qwen2].into_iter().find(|a| a.name() == name)
    }
}

/// How rotary position embeddings are laid out in a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1) rotate together (ggml's "normal" mode).
    Interleaved,
    /// Pairs (i, i + d/2) rotate together (ggml's NeoX mode).
    Halves,
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub n_layers: usize,
    pub hidden_size: usize,
    pub ffn_size: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    /// Positions are divided by this (rope scaling type "linear"); 1.0 otherwise.
    pub rope_linear_factor: f32,
    pub context_length: usize,
    pub vocab_size: usize,
}

impl ModelConfig {
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let path = gguf.path.display().to_string();
        let meta_err = |key: &str, expected: &str| EngineError::Metadata {
            path: path.clone(),
            key: key.to_string(),
            found: gguf.describe(key),
            expected: expected.to_string(),
        };
        let arch_name = gguf
            .get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| meta_err("general.architecture", "a string such as \"llama\""))?;
        let architecture = match arch_name {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => return Err(EngineError::UnsupportedArchitecture(other.to_string())),
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let uint = |k: &str| -> Result<usize> {
            let k = key(k);
            gguf.get(&k)
                .and_then(Value::as_u64)
                .and_then(|v| usize::try_from(v).ok())
                .filter(|&v| v > 0)
                .ok_or_else(|| meta_err(&k, "a positive integer"))
        };
        let float = |k: &str, default: Option<f32>| -> Result<f32> {
            let k = key(k);
            match gguf.get(&k) {
                None => default.ok_or_else(|| meta_err(&k, "a number")),
                Some(v) => v
                    .as_f64()
                    .map(|v| v as f32)
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .ok_or_else(|| meta_err(&k, "a positive number")),
            }
        };

        let n_layers = uint("block_count")?;
        let hidden_size = uint("embedding_length")?;
        let ffn_size = uint("feed_forward_length")?;
        let n_heads = uint("attention.head_count")?;
        let n_kv_heads = match gguf.get(&key("attention.head_count_kv")) {
            None => n_heads,
            Some(_) => uint("attention.head_count_kv")?,
        };
        if hidden_size % n_heads != 0 || n_heads % n_kv_heads != 0 {
            return Err(meta_err(
                &key("attention.head_count_kv"),
                &format!("a divisor of the head count {n_heads}, which must divide the hidden size {hidden_size}"),
            ));
        }
        let head_dim = match gguf.get(&key("attention.key_length")) {
            None => hidden_size / n_heads,
            Some(_) => uint("attention.key_length")?,
        };
        if head_dim % 2 != 0 {
            return Err(meta_err(&key("attention.key_length"), "an even head size"));
        }
        if let Some(rope_dims) = gguf.get(&key("rope.dimension_count")) {
            if rope_dims.as_u64() != Some(head_dim as u64) {
                return Err(meta_err(
                    &key("rope.dimension_count"),
                    &format!("the head size {head_dim} (partial rotary embeddings are not supported)"),
                ));
            }
        }
        let rms_eps = float("attention.layer_norm_rms_epsilon", Some(1e-5))?;
        let rope_theta = float("rope.freq_base", Some(10_000.0))?;
        let rope_linear_factor = match gguf.get(&key("rope.scaling.type")).map(|v| v.as_str()) {
            None | Some(Some("none")) => 1.0,
            Some(Some("linear")) => float("rope.scaling.factor", Some(1.0))?,
            Some(other) => {
                return Err(meta_err(
                    &key("rope.scaling.type"),
                    &format!(
                        "\"none\" or \"linear\" (this engine does not implement {})",
                        other.unwrap_or("a non-string value")
                    ),
                ))
            }
        };
        let context_length = uint("context_length")?;
        let vocab_size = match gguf.get("tokenizer.ggml.tokens").and_then(Value::as_array) {
            Some(tokens) if !tokens.is_empty() => tokens.len(),
            _ => uint("vocab_size")?,
        };
        let rope_style = match architecture {
            Architecture::Llama => RopeStyle::Interleaved,
            Architecture::Qwen2 => RopeStyle::Halves,
        };
        Ok(Self {
            architecture,
            n_layers,
            hidden_size,
            ffn_size,
            n_heads,
            n_kv_heads,
            head_dim,
            rms_eps,
            rope_theta,
            rope_style,
            rope_linear_factor,
            context_length,
            vocab_size,
        })
    }
}
