//! A model's hyper-parameters, read from the GGUF file's own metadata (`{arch}.*` keys).
//!
//! This is the one place that knows which architectures the engine runs and what each one's metadata means. The
//! metadata is untrusted (the file may come from anyone): every size is bounded, and the memory they imply (the
//! KV cache of the whole context) is computed with checked arithmetic, so an absurd file is an error here rather
//! than an overflow or a huge allocation later.

use crate::error::{EngineError, Result};
use crate::gguf::{Gguf, Value};
use crate::kv_cache::KvType;

/// Layers (`block_count`): the largest models have about 130.
const MAX_LAYERS: usize = 1 << 12;
/// Positions (`context_length`): the longest contexts are about 10 million.
const MAX_CONTEXT: usize = 1 << 24;
/// Widths (`embedding_length`, `feed_forward_length`, `key_length`) and head counts: real ones are below 2^17.
const MAX_WIDTH: usize = 1 << 20;
/// Tokens in a vocabulary: real ones are below 2^18.
const MAX_VOCAB: usize = 1 << 24;
/// Experts per layer: the most in a released model is 384.
const MAX_EXPERTS: usize = 1 << 12;

/// The transformer families the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3.x, Mistral, SmolLM, TinyLlama: rope on interleaved pairs (the GGUF converter permutes q/k).
    Llama,
    /// Qwen 2/2.5 and DeepSeek-R1-Distill-Qwen: biases on q/k/v, rope on the two halves of each head (NeoX).
    Qwen2,
    /// Qwen 3 (dense): per-head q/k RMS norms before rope, no biases, NeoX rope.
    Qwen3,
    /// Qwen 3 mixture of experts (30B-A3B, 235B-A22B): Qwen 3's attention, a routed feed-forward layer of
    /// `expert_count` experts of which `expert_used_count` run per token.
    Qwen3Moe,
    /// Gemma 2: embeddings scaled by √hidden, RMS norms after attention and after the feed-forward layer, GELU-gated
    /// feed-forward, attention and final logits soft-capped (`tanh(x / cap) * cap`), sliding-window attention on
    /// every other layer, NeoX rope.
    Gemma2,
    /// Gemma 3: embeddings scaled by √hidden, per-head q/k RMS norms, RMS norms after attention and after the
    /// feed-forward layer, GELU-gated feed-forward, five sliding-window layers (with their own rope base) to each
    /// global one, NeoX rope.
    Gemma3,
    /// Phi-3 and Phi-4: fused q/k/v and gate/up tensors, NeoX rope, Phi-3's long-context rope factors
    /// (`rope_factors_long`/`_short`) with their attention factor.
    Phi3,
    /// gpt-oss: a mixture of experts with biases and a clamped SwiGLU, q/k/v/o biases, per-head attention sinks,
    /// sliding-window attention on every other layer, YaRN rope.
    GptOss,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Qwen3Moe => "qwen3moe",
            Architecture::Gemma2 => "gemma2",
            Architecture::Gemma3 => "gemma3",
            Architecture::Phi3 => "phi3",
            Architecture::GptOss => "gpt-oss",
        }
    }

    /// The architecture with this `general.architecture` name, if the engine runs it.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Architecture::Llama,
            Architecture::Qwen2,
            Architecture::Qwen3,
            Architecture::Qwen3Moe,
            Architecture::Gemma2,
            Architecture::Gemma3,
            Architecture::Phi3,
            Architecture::GptOss,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }
}

/// The feed-forward layer's gate: `act(gate) * up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (SwiGLU): llama, qwen.
    Silu,
    /// GELU in its tanh approximation (GeGLU): Gemma.
    GeluTanh,
    /// gpt-oss's SwiGLU: `g = min(gate, 7)`, `u = clamp(up, -7, 7)`, `g * sigmoid(1.702 g) * (u + 1)`.
    SwigluOai,
}

/// A mixture-of-experts feed-forward layer (Mixtral, Qwen 3 MoE): a router scores every expert for each token,
/// the `used` best run, and their outputs are summed weighted by the softmax of the router's scores renormalized
/// over the chosen ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Experts {
    /// Experts per layer (`expert_count`).
    pub count: usize,
    /// Experts run per token (`expert_used_count`).
    pub used: usize,
    /// Width of each expert's feed-forward layer.
    pub ffn_size: usize,
}

/// Sliding-window attention: which layers see only the last `size` positions, and their rotary base.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlidingWindow {
    /// Positions a local layer's query sees, itself included.
    pub size: usize,
    /// Every `period`-th layer (the last of each period) attends globally; the others are local.
    pub period: usize,
    /// Rope base of the local layers, unscaled; `None`: they rotate as the global layers do.
    pub rope_theta: Option<f32>,
}

/// YaRN rope scaling (rope scaling type "yarn"): per pair of dimensions, a blend of the frequency divided by
/// `factor` (slow pairs) and the original one (fast pairs), ramping between the pairs that turn `beta_fast` and
/// `beta_slow` times over the original context; queries and keys grow by `1 + 0.1 ln factor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Yarn {
    pub factor: f32,
    pub original_context: usize,
    pub beta_fast: f32,
    pub beta_slow: f32,
}

impl Yarn {
    /// The frequencies `base` (one per pair, from the fastest) of a head of `head_dim` dimensions at rope base
    /// `theta`, scaled as ggml does.
    pub fn scale(&self, base: &mut [f32], theta: f32, head_dim: usize) {
        let n = head_dim as f32;
        let corr = |rotations: f32| {
            n * (self.original_context as f32 / (rotations * 2.0 * std::f32::consts::PI)).ln() / (2.0 * theta.ln())
        };
        let low = corr(self.beta_fast).floor().max(0.0);
        let high = corr(self.beta_slow).ceil().min(n - 1.0);
        for (i, f) in base.iter_mut().enumerate() {
            let y = (i as f32 - low) / (high - low).max(0.001);
            let mix = 1.0 - y.clamp(0.0, 1.0);
            *f *= (1.0 - mix) / self.factor + mix;
        }
    }

    /// What queries and keys are multiplied by.
    pub fn magnitude(&self) -> f32 {
        1.0 + 0.1 * self.factor.ln()
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
    /// The token embeddings are multiplied by this (Gemma: √hidden); 1.0 otherwise.
    pub embedding_scale: f32,
    /// Attention scores are `q·k` times this: 1/√head_dim.
    pub attention_scale: f32,
    pub activation: Activation,
    /// Per-head RMS norms of queries and keys before rope (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// RMS norms of the attention and feed-forward outputs before each is added to the residual stream
    /// (`post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    /// Which layers attend over a sliding window, if any.
    pub sliding_window: Option<SlidingWindow>,
    /// Attention scores (after scaling) become `tanh(s / cap) * cap` (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// The logits become `tanh(l / cap) * cap` (Gemma 2).
    pub final_softcap: Option<f32>,
    /// The feed-forward layers are mixtures of experts (their width is `experts.ffn_size`, not `ffn_size`).
    pub experts: Option<Experts>,
    /// YaRN rope scaling of the global layers (and, where `sliding_window.rope_theta` is `None`, the local ones).
    pub yarn: Option<Yarn>,
    /// Per-head attention sinks (`attn_sinks`): a learned logit each head's softmax includes and discards.
    pub attn_sinks: bool,
    /// Context length the model was trained at before its context was extended (`rope.scaling.
    /// original_context_length`): a sequence whose KV cache holds more positions rotates by the long-context
    /// factors (`rope_factors_long`), as llama.cpp does.
    pub rope_original_context: usize,
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
        let architecture = Architecture::from_name(arch_name)
            .ok_or_else(|| EngineError::UnsupportedArchitecture(arch_name.to_string()))?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let bounded = |k: &str, max: usize| -> Result<usize> {
            let k = key(k);
            gguf.get(&k)
                .and_then(Value::as_u64)
                .and_then(|v| usize::try_from(v).ok())
                .filter(|&v| v > 0 && v <= max)
                .ok_or_else(|| meta_err(&k, &format!("a positive integer of at most {max}")))
        };
        let uint = |k: &str| bounded(k, MAX_WIDTH);
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

        let n_layers = bounded("block_count", MAX_LAYERS)?;
        let hidden_size = uint("embedding_length")?;
        // Qwen 3 MoE files need not give a dense width: only their experts' is used.
        let ffn_size = match (architecture, gguf.get(&key("feed_forward_length"))) {
            (Architecture::Qwen3Moe | Architecture::GptOss, None) => 0,
            _ => uint("feed_forward_length")?,
        };
        // Mixtral is a `llama` file with `expert_count`; its experts are `feed_forward_length` wide. Qwen 3 MoE
        // gives its experts' width apart.
        let expert_count = gguf.get(&key("expert_count")).and_then(Value::as_u64).unwrap_or(0);
        let moe_family = matches!(architecture, Architecture::Qwen3Moe | Architecture::GptOss);
        let experts = if expert_count > 0 || moe_family {
            let count = bounded("expert_count", MAX_EXPERTS)?;
            let used = bounded("expert_used_count", MAX_EXPERTS)?;
            if used > count {
                return Err(meta_err(&key("expert_used_count"), &format!("at most the expert count {count}")));
            }
            let ffn_size = match architecture {
                Architecture::Qwen3Moe | Architecture::GptOss => uint("expert_feed_forward_length")?,
                _ => uint("feed_forward_length")?,
            };
            if !matches!(architecture, Architecture::Llama | Architecture::Qwen3Moe | Architecture::GptOss) {
                return Err(EngineError::UnsupportedArchitecture(format!(
                    "{arch_name} with {count} experts (mixture of experts)"
                )));
            }
            Some(Experts { count, used, ffn_size })
        } else {
            None
        };
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
        let context_length = bounded("context_length", MAX_CONTEXT)?;
        let rope_original_context = match gguf.get(&key("rope.scaling.original_context_length")) {
            None => context_length,
            Some(_) => bounded("rope.scaling.original_context_length", MAX_CONTEXT)?,
        };
        let (rope_linear_factor, yarn) = match gguf.get(&key("rope.scaling.type")).map(|v| v.as_str()) {
            None | Some(Some("none")) => (1.0, None),
            Some(Some("linear")) => (float("rope.scaling.factor", Some(1.0))?, None),
            Some(Some("yarn")) => {
                let factor = float("rope.scaling.factor", Some(1.0))?;
                let yarn = Yarn {
                    factor,
                    original_context: rope_original_context,
                    beta_fast: float("rope.scaling.yarn_beta_fast", Some(32.0))?,
                    beta_slow: float("rope.scaling.yarn_beta_slow", Some(1.0))?,
                };
                (1.0, (factor > 1.0).then_some(yarn))
            }
            Some(other) => {
                return Err(meta_err(
                    &key("rope.scaling.type"),
                    &format!(
                        "\"none\", \"linear\" or \"yarn\" (this engine does not implement {})",
                        other.unwrap_or("a non-string value")
                    ),
                ))
            }
        };
        // Rotating q and k scaled by this (llama.cpp's rope attention factor) scales every score by its square.
        let rope_attn_factor = float("rope.scaling.attn_factor", Some(1.0))? * yarn.map_or(1.0, |y| y.magnitude());
        let vocab_size = match gguf.get("tokenizer.ggml.tokens").and_then(Value::as_array) {
            Some(tokens) if !tokens.is_empty() && tokens.len() <= MAX_VOCAB => tokens.len(),
            Some(tokens) if !tokens.is_empty() => {
                return Err(meta_err("tokenizer.ggml.tokens", &format!("at most {MAX_VOCAB} tokens")))
            }
            _ => bounded("vocab_size", MAX_VOCAB)?,
        };
        let rope_style = match architecture {
            Architecture::Llama => RopeStyle::Interleaved,
            Architecture::Qwen2
            | Architecture::Qwen3
            | Architecture::Qwen3Moe
            | Architecture::Gemma2
            | Architecture::Gemma3
            | Architecture::Phi3
            | Architecture::GptOss => RopeStyle::Halves,
        };
        let gemma = matches!(architecture, Architecture::Gemma2 | Architecture::Gemma3);
        let gemma2 = architecture == Architecture::Gemma2;
        // As llama.cpp reads them: Gemma 3 has five sliding-window layers to each global one, the local layers at
        // rope base 10,000, when the file gives a window; Gemma 2 every other layer, 4096 positions unless the file
        // says otherwise, one rope base for all.
        let window_size = |default: Option<usize>| -> Result<Option<usize>> {
            match gguf.get(&key("attention.sliding_window")) {
                Some(_) => bounded("attention.sliding_window", MAX_CONTEXT).map(Some),
                None => Ok(default),
            }
        };
        let sliding_window = match architecture {
            Architecture::Gemma3 => {
                window_size(None)?.map(|size| SlidingWindow { size, period: 6, rope_theta: Some(10_000.0) })
            }
            Architecture::Gemma2 => {
                window_size(Some(4096))?.map(|size| SlidingWindow { size, period: 2, rope_theta: None })
            }
            // gpt-oss: even layers local, over 128 positions, rotating as the global ones do (YaRN included).
            Architecture::GptOss => {
                window_size(Some(128))?.map(|size| SlidingWindow { size, period: 2, rope_theta: None })
            }
            _ => None,
        };
        let softcap = |k: &str, default: f32| -> Result<Option<f32>> {
            Ok(if gemma2 { Some(float(k, Some(default))?) } else { None })
        };
        let attn_softcap = softcap("attn_logit_softcapping", 50.0)?;
        let final_softcap = softcap("final_logit_softcapping", 30.0)?;
        let config = Self {
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
            embedding_scale: if gemma { (hidden_size as f32).sqrt() } else { 1.0 },
            // Gemma 2 and 3 27B scale by the hidden size per head rather than the head size (llama.cpp, after
            // Google's reference); they are the ones with 46 and 62 layers.
            attention_scale: rope_attn_factor
                * rope_attn_factor
                * if (architecture == Architecture::Gemma3 && n_layers == 62) || (gemma2 && n_layers == 46) {
                    1.0 / ((hidden_size / n_heads) as f32).sqrt()
                } else {
                    1.0 / (head_dim as f32).sqrt()
                },
            activation: match architecture {
                Architecture::Gemma2 | Architecture::Gemma3 => Activation::GeluTanh,
                Architecture::GptOss => Activation::SwigluOai,
                _ => Activation::Silu,
            },
            qk_norm: matches!(architecture, Architecture::Gemma3 | Architecture::Qwen3 | Architecture::Qwen3Moe),
            post_norms: gemma,
            sliding_window,
            attn_softcap,
            final_softcap,
            experts,
            yarn,
            attn_sinks: architecture == Architecture::GptOss,
            rope_original_context,
        };
        // The widths of the products and the KV cache of the whole context must be sizes this machine can count.
        let fits = config.n_heads.checked_mul(head_dim).is_some()
            && config.hidden_size.checked_mul(config.vocab_size).is_some()
            && config.hidden_size.checked_mul(config.ffn_size).is_some()
            && experts
                .is_none_or(|e| e.count.checked_mul(e.ffn_size).and_then(|n| n.checked_mul(hidden_size)).is_some())
            && config.kv_cache_bytes(n_layers, context_length, KvType::F32).is_some();
        if !fits {
            return Err(EngineError::TooLarge(format!(
                "{path}: {n_layers} layers of {n_heads} heads ({n_kv_heads} for keys and values) of {head_dim} \
                 values over {context_length} positions, {hidden_size} wide with {ffn_size}-wide feed-forward \
                 layers, are sizes beyond 64 bits"
            )));
        }
        Ok(config)
    }

    /// The name of a block's norm before the feed-forward layer: gpt-oss calls it `post_attention_norm`.
    pub fn ffn_norm_tensor(&self) -> &'static str {
        match self.architecture {
            Architecture::GptOss => "post_attention_norm.weight",
            _ => "ffn_norm.weight",
        }
    }

    /// The sliding window `layer` attends over, or `None` if it attends to every position before it.
    pub fn window(&self, layer: usize) -> Option<usize> {
        let w = self.sliding_window?;
        (layer % w.period != w.period - 1).then_some(w.size)
    }

    /// Values in one position's keys (or values) of one layer: `n_kv_heads * head_dim`.
    pub fn kv_width(&self) -> Option<usize> {
        self.n_kv_heads.checked_mul(self.head_dim)
    }

    /// Bytes of a KV cache holding `positions` positions of `layers` layers, keys and values, stored as
    /// `kv_type`; `None` when the count overflows (a model [`ModelConfig::from_gguf`] accepted fits for its
    /// whole context).
    pub fn kv_cache_bytes(&self, layers: usize, positions: usize, kv_type: KvType) -> Option<u64> {
        let per_position = u64::try_from(self.kv_width()?).ok()?.checked_mul(2 * kv_type.size() as u64)?;
        per_position.checked_mul(u64::try_from(layers).ok()?)?.checked_mul(u64::try_from(positions).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A llama's metadata with `changes` applied.
    fn config_with(changes: &[(&str, Value)]) -> Result<ModelConfig> {
        let mut metadata: std::collections::BTreeMap<String, Value> = [
            ("general.architecture", Value::String("llama".into())),
            ("llama.block_count", Value::U32(16)),
            ("llama.embedding_length", Value::U32(2048)),
            ("llama.feed_forward_length", Value::U32(8192)),
            ("llama.attention.head_count", Value::U32(32)),
            ("llama.attention.head_count_kv", Value::U32(8)),
            ("llama.context_length", Value::U32(131072)),
            ("llama.vocab_size", Value::U32(128256)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in changes {
            metadata.insert(k.to_string(), v.clone());
        }
        ModelConfig::from_gguf(&Gguf::with_metadata(metadata))
    }

    #[test]
    fn a_real_shape_gives_its_kv_cache_size() {
        let c = config_with(&[]).unwrap();
        assert_eq!((c.head_dim, c.kv_width()), (64, Some(512)));
        // 16 layers of 512 keys and 512 values of 2 bytes over 131072 positions: 4 GiB.
        assert_eq!(c.kv_cache_bytes(16, 131072, KvType::F16), Some(4 << 30));
        assert_eq!(c.kv_cache_bytes(usize::MAX, usize::MAX, KvType::F32), None);
    }

    #[test]
    fn mixtures_of_experts_read_their_expert_counts_and_widths() {
        let c =
            config_with(&[("llama.expert_count", Value::U32(8)), ("llama.expert_used_count", Value::U32(2))]).unwrap();
        assert_eq!(c.experts, Some(Experts { count: 8, used: 2, ffn_size: 8192 }));
        assert_eq!(config_with(&[("llama.expert_count", Value::U32(0))]).unwrap().experts, None);
        // Qwen 3 MoE: the experts' own width, and no dense width needed.
        let qwen = |extra: &[(&str, Value)]| {
            let mut changes = vec![
                ("general.architecture", Value::String("qwen3moe".into())),
                ("qwen3moe.block_count", Value::U32(48)),
                ("qwen3moe.embedding_length", Value::U32(2048)),
                ("qwen3moe.attention.head_count", Value::U32(32)),
                ("qwen3moe.attention.head_count_kv", Value::U32(4)),
                ("qwen3moe.attention.key_length", Value::U32(128)),
                ("qwen3moe.context_length", Value::U32(40960)),
                ("qwen3moe.vocab_size", Value::U32(151936)),
                ("qwen3moe.expert_count", Value::U32(128)),
                ("qwen3moe.expert_used_count", Value::U32(8)),
            ];
            changes.extend(extra.iter().cloned());
            config_with(&changes)
        };
        let c = qwen(&[("qwen3moe.expert_feed_forward_length", Value::U32(768))]).unwrap();
        assert_eq!((c.architecture, c.qk_norm), (Architecture::Qwen3Moe, true));
        assert_eq!(c.experts, Some(Experts { count: 128, used: 8, ffn_size: 768 }));
        let e = qwen(&[]).unwrap_err();
        assert!(e.to_string().contains("qwen3moe.expert_feed_forward_length"), "{e}");
        let e = qwen(&[
            ("qwen3moe.expert_feed_forward_length", Value::U32(768)),
            ("qwen3moe.expert_used_count", Value::U32(129)),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("at most the expert count 128"), "{e}");
        // Experts in a family whose routed layer is not implemented are refused by name.
        let e = config_with(&[("llama.expert_count", Value::U32(8))]).unwrap_err();
        assert!(e.to_string().contains("llama.expert_used_count"), "{e}");
        let e = config_with(&[
            ("general.architecture", Value::String("gemma2".into())),
            ("gemma2.block_count", Value::U32(2)),
            ("gemma2.embedding_length", Value::U32(256)),
            ("gemma2.feed_forward_length", Value::U32(512)),
            ("gemma2.attention.head_count", Value::U32(4)),
            ("gemma2.context_length", Value::U32(512)),
            ("gemma2.vocab_size", Value::U32(1000)),
            ("gemma2.expert_count", Value::U32(8)),
            ("gemma2.expert_used_count", Value::U32(2)),
        ])
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            EngineError::UnsupportedArchitecture("gemma2 with 8 experts (mixture of experts)".into()).to_string()
        );
    }

    #[test]
    fn absurd_sizes_are_errors_not_overflows() {
        for (key, value) in [
            ("llama.context_length", Value::U64(1 << 62)),
            ("llama.block_count", Value::U64(u64::MAX)),
            ("llama.embedding_length", Value::U64(1 << 40)),
            ("llama.attention.key_length", Value::U64(1 << 40)),
            ("llama.vocab_size", Value::U64(1 << 40)),
        ] {
            let e = config_with(&[(key, value)]).unwrap_err();
            assert!(e.to_string().contains(key) && e.to_string().contains("at most"), "{key}: {e}");
        }
        // Each size within its bound, their product beyond 64 bits.
        let e = config_with(&[
            ("llama.block_count", Value::U32(4096)),
            ("llama.embedding_length", Value::U32(1 << 20)),
            ("llama.attention.head_count", Value::U32(1 << 20)),
            ("llama.attention.head_count_kv", Value::U32(1 << 20)),
            ("llama.attention.key_length", Value::U32(1 << 20)),
            ("llama.context_length", Value::U32(1 << 24)),
        ])
        .unwrap_err();
        assert!(matches!(e, EngineError::TooLarge(_)), "{e}");
    }
}
