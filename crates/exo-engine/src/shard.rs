//! `Shard` (a contiguous range of a model's layers) and `ModelShard` (those layers loaded, with a forward pass).
//!
//! The first shard turns token ids into hidden states through the token embeddings; every shard runs its
//! transformer blocks; the last shard applies the final norm and output head and returns the logits of the
//! last position. A model run on one machine is the shard `0..=L-1`; a ring is a chain of shards whose hidden
//! states are passed from one to the next.
//!
//! A shard runs on one of two backends: our CPU kernels ([`crate::cpu`]), the default on a CPU (they handle every
//! weight type the engine reads), or candle ([`crate::candle_backend`]) for GPUs.

use candle_core::{DType, Device, Tensor};

use crate::candle_backend::CandleModel;
use crate::config::ModelConfig;
use crate::cpu::model::{CpuInput, CpuOutput};
use crate::cpu::CpuModel;
use crate::error::{EngineError, Result};
use crate::gguf::Gguf;
use crate::kv_cache::{KvCache, KvType};
use crate::weights::TensorReader;

/// Layers `start..=end` (0-based, inclusive) of a model with `total` layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    pub start: usize,
    pub end: usize,
    pub total: usize,
}

impl Shard {
    pub fn new(start: usize, end: usize, total: usize) -> Result<Self> {
        if start > end || end >= total {
            return Err(EngineError::InvalidShard(format!(
                "layers {start}-{end} are not a range of a model with {total} layers"
            )));
        }
        Ok(Self { start, end, total })
    }

    /// All layers of a model.
    pub fn whole(total: usize) -> Result<Self> {
        Self::new(0, total.saturating_sub(1), total)
    }

    pub fn is_first(&self) -> bool {
        self.start == 0
    }

    pub fn is_last(&self) -> bool {
        self.end + 1 == self.total
    }

    pub fn n_layers(&self) -> usize {
        self.end - self.start + 1
    }

    /// Whether a shard of these layers reads the tensor `name` of a model whose output head is `tied` to the token
    /// embeddings (no `output.weight`): its own blocks' tensors, the embeddings on the first shard, the final norm
    /// and head on the last, and tensors that belong to no block (such as `rope_freqs.weight`) everywhere. This is
    /// what a node downloads for its layers.
    pub fn needs_tensor(&self, name: &str, tied: bool) -> bool {
        if let Some(rest) = name.strip_prefix("blk.") {
            let layer = rest.split('.').next().and_then(|n| n.parse::<usize>().ok());
            return layer.is_some_and(|l| (self.start..=self.end).contains(&l));
        }
        match name {
            "token_embd.weight" => self.is_first() || (self.is_last() && tied),
            "output.weight" | "output_norm.weight" => self.is_last(),
            _ => true,
        }
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "layers {}-{} of {}", self.start, self.end, self.total)
    }
}

/// The rotation frequency of each pair of a head's dimensions: for global layers, and for sliding-window layers
/// (the same where a model has no such layers).
#[derive(Debug, Clone)]
pub(crate) struct RopeFreqs {
    pub global: Vec<f32>,
    pub local: Vec<f32>,
    /// The global layers' frequencies for sequences longer than the model's original context (Phi-3's
    /// `rope_factors_long`), and that context.
    pub long: Option<(Vec<f32>, usize)>,
}

impl RopeFreqs {
    /// The global layers' frequencies for a sequence whose KV cache holds up to `max_len` positions.
    pub fn global_for(&self, max_len: usize) -> &[f32] {
        match &self.long {
            Some((long, original)) if max_len > *original => long,
            _ => &self.global,
        }
    }
}

/// What a shard's forward pass consumes.
#[derive(Debug)]
pub enum ShardInput<'a> {
    /// Token ids, for the first shard.
    Tokens(&'a [u32]),
    /// Hidden states (seq, hidden) from the previous shard.
    Hidden(Tensor),
    /// Hidden states (seq, hidden) as little-endian f32 bytes, the way they travel between nodes: the CPU backend
    /// reads them straight into its residual stream, with no tensor in between.
    HiddenBytes(&'a [u8]),
}

/// What a shard's forward pass produces.
#[derive(Debug)]
pub enum ShardOutput {
    /// Hidden states (seq, hidden) for the next shard.
    Hidden(Tensor),
    /// Logits over the vocabulary for the last input position (last shard only).
    Logits(Vec<f32>),
}

/// Which implementation runs a shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// The CPU kernels when the device is the CPU; candle otherwise.
    #[default]
    Auto,
    /// The CPU kernels, or an error if they cannot run this model.
    Cpu,
    /// candle's tensors, on any device.
    Candle,
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Backend::Auto),
            "cpu" => Ok(Backend::Cpu),
            "candle" => Ok(Backend::Candle),
            _ => Err(format!("unknown backend '{s}' (expected auto, cpu or candle)")),
        }
    }
}

enum Engine {
    Cpu(Box<CpuModel>),
    Candle(Box<CandleModel>),
}

/// One shard's weights, ready to run. Immutable: each sequence brings its own [`KvCache`].
pub struct ModelShard {
    shard: Shard,
    config: ModelConfig,
    engine: Engine,
    device: Device,
    bytes_loaded: u64,
}

impl ModelShard {
    /// Loads the tensors of `shard` from `gguf`: its blocks, plus the token embeddings on the first shard and the
    /// final norm and output head on the last (a tied head reuses the token embeddings).
    pub fn load(gguf: &Gguf, shard: Shard, device: &Device) -> Result<Self> {
        Self::load_with(gguf, shard, device, Backend::Auto)
    }

    /// [`ModelShard::load`] on a chosen backend.
    pub fn load_with(gguf: &Gguf, shard: Shard, device: &Device, backend: Backend) -> Result<Self> {
        let config = ModelConfig::from_gguf(gguf)?;
        if shard.total != config.n_layers {
            return Err(EngineError::InvalidShard(format!(
                "{shard} does not fit {} which has {} layers",
                gguf.path.display(),
                config.n_layers
            )));
        }
        let mut reader = TensorReader::new(gguf, device);
        let half = config.head_dim / 2;
        let freqs = |theta: f32, factor: f32| -> Vec<f32> {
            (0..half)
                .map(|i| {
                    let f = (theta as f64).powf(-2.0 * i as f64 / config.head_dim as f64);
                    (f / factor as f64) as f32
                })
                .collect()
        };
        let mut base = freqs(config.rope_theta, config.rope_linear_factor);
        if let Some(yarn) = config.yarn {
            yarn.scale(&mut base, config.rope_theta, config.head_dim);
        }
        // Llama 3.x stores its frequency-dependent rope scaling as per-pair divisors, Phi-3 two sets of them: for
        // sequences within its original context and for longer ones.
        let mut divided = |name: &str| -> Result<Option<Vec<f32>>> {
            Ok(match reader.dense_if_present(name, &[half])? {
                Some(factors) => Some(base.iter().zip(factors.to_vec1::<f32>()?).map(|(f, d)| f / d).collect()),
                None => None,
            })
        };
        let global = match divided("rope_freqs.weight")? {
            Some(f) => f,
            None => divided("rope_factors_short.weight")?.unwrap_or_else(|| base.clone()),
        };
        let long = divided("rope_factors_long.weight")?.map(|f| (f, config.rope_original_context));
        // Sliding-window layers rotate at their own base, unscaled, where the model gives one.
        let local = match config.sliding_window.and_then(|w| w.rope_theta) {
            Some(theta) => freqs(theta, 1.0),
            None => global.clone(),
        };
        let inv_freq = RopeFreqs { global, local, long };

        // The CPU kernels handle every weight type the engine reads.
        let use_cpu = match backend {
            Backend::Candle => false,
            Backend::Auto => device.is_cpu(),
            Backend::Cpu if !device.is_cpu() => {
                return Err(EngineError::InvalidShard("the CPU backend runs on the CPU device only".into()))
            }
            Backend::Cpu => true,
        };
        let engine = if use_cpu {
            Engine::Cpu(Box::new(CpuModel::load(&mut reader, &config, shard, inv_freq)?))
        } else {
            let model = CandleModel::load(&mut reader, &config, shard, inv_freq, device)
                .map_err(|e| out_of_memory(e, device, &format!("loading {shard}")))?;
            Engine::Candle(Box::new(model))
        };
        Ok(Self { shard, config, engine, device: device.clone(), bytes_loaded: reader.bytes_read() })
    }

    pub fn shard(&self) -> Shard {
        self.shard
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The backend running this shard: `cpu` or `candle`.
    pub fn backend(&self) -> &'static str {
        match self.engine {
            Engine::Cpu(_) => "cpu",
            Engine::Candle(_) => "candle",
        }
    }

    /// Bytes of tensor data this shard read from the file.
    pub fn bytes_loaded(&self) -> u64 {
        self.bytes_loaded
    }

    /// An empty KV cache for this shard's layers, holding up to `max_len` positions (at most the context).
    pub fn new_cache(&self, max_len: usize, kv_type: KvType) -> KvCache {
        let c = &self.config;
        let (n, max_len) = (self.shard.n_layers(), max_len.min(c.context_length));
        match self.engine {
            Engine::Cpu(_) => KvCache::new_host(n, c.n_kv_heads, c.head_dim, max_len, kv_type),
            Engine::Candle(_) => KvCache::new(n, c.n_kv_heads, c.head_dim, max_len, kv_type, &self.device),
        }
    }

    /// Runs the shard on `input` at the cache's current position, appending to the cache.
    pub fn forward(&self, input: ShardInput<'_>, cache: &mut KvCache) -> Result<ShardOutput> {
        if cache.n_layers() != self.shard.n_layers() {
            return Err(EngineError::InvalidShard(format!(
                "the KV cache has {} layers, the shard {}",
                cache.n_layers(),
                self.shard.n_layers()
            )));
        }
        let h = self.config.hidden_size;
        let seq = match &input {
            ShardInput::Tokens(ids) => {
                if !self.shard.is_first() {
                    return Err(EngineError::InvalidShard(format!(
                        "{} does not hold layer 0: it takes hidden states",
                        self.shard
                    )));
                }
                if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.config.vocab_size) {
                    return Err(EngineError::InvalidShard(format!(
                        "token id {bad} is outside the vocabulary of {} tokens",
                        self.config.vocab_size
                    )));
                }
                ids.len()
            }
            ShardInput::Hidden(hidden) => {
                if self.shard.is_first() {
                    return Err(EngineError::InvalidShard(format!("{} takes token ids", self.shard)));
                }
                if hidden.dims().len() != 2 || hidden.dim(1)? != h {
                    return Err(EngineError::InvalidShard(format!(
                        "hidden states of shape {:?}, expected (positions, {h})",
                        hidden.dims()
                    )));
                }
                hidden.dim(0)?
            }
            ShardInput::HiddenBytes(bytes) => {
                if self.shard.is_first() {
                    return Err(EngineError::InvalidShard(format!("{} takes token ids", self.shard)));
                }
                if !bytes.len().is_multiple_of(4 * h) {
                    return Err(EngineError::InvalidShard(format!(
                        "{} bytes of hidden states are not whole positions of {h} f32 values",
                        bytes.len()
                    )));
                }
                bytes.len() / (4 * h)
            }
        };
        if seq == 0 {
            return Err(EngineError::InvalidShard("a forward pass needs at least one position".into()));
        }
        match &self.engine {
            Engine::Cpu(model) => {
                if !cache.is_host() {
                    return Err(EngineError::InvalidShard("this KV cache was made for another backend".into()));
                }
                let out = match input {
                    ShardInput::Tokens(ids) => model.forward(CpuInput::Tokens(ids), cache)?,
                    ShardInput::Hidden(hidden) => {
                        with_f32_values(&hidden, |x| model.forward(CpuInput::Hidden(x), cache))??
                    }
                    ShardInput::HiddenBytes(bytes) => model.forward(CpuInput::HiddenBytes(bytes), cache)?,
                };
                Ok(match out {
                    CpuOutput::Logits(l) => ShardOutput::Logits(l),
                    CpuOutput::Hidden(x) => ShardOutput::Hidden(Tensor::from_vec(x, (seq, h), &Device::Cpu)?),
                })
            }
            Engine::Candle(model) => {
                if cache.is_host() {
                    return Err(EngineError::InvalidShard("this KV cache was made for another backend".into()));
                }
                let x = match input {
                    ShardInput::Tokens(ids) => model.embed(ids)?.ok_or_else(|| {
                        EngineError::InvalidShard(format!("{} does not hold the token embeddings", self.shard))
                    })?,
                    // From a shard on another device (a chain over a GPU and the CPU): one copy across.
                    ShardInput::Hidden(hidden) => hidden.to_device(&self.device)?.to_dtype(DType::F32)?,
                    ShardInput::HiddenBytes(bytes) => {
                        let values = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                        Tensor::from_iter(values, &self.device)?.reshape((seq, h))?
                    }
                };
                model.forward(x, cache).map_err(|e| out_of_memory(e, &self.device, &format!("on {seq} positions")))
            }
        }
    }
}

/// A device that ran out of memory says so, with what it was doing and what it has free, instead of the driver's
/// code alone; other errors pass through.
fn out_of_memory(e: EngineError, device: &Device, doing: &str) -> EngineError {
    let name = match device.location() {
        candle_core::DeviceLocation::Cpu => return e,
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    };
    match describe_out_of_memory(&e.to_string(), &name, doing, crate::devices::free_memory(device)) {
        Some(message) => EngineError::DeviceMemory(message),
        None => e,
    }
}

/// The message for a device error `text` that is the driver running out of memory; None for any other.
fn describe_out_of_memory(text: &str, device: &str, doing: &str, free: Option<u64>) -> Option<String> {
    if !(text.contains("OUT_OF_MEMORY") || text.contains("out of memory")) {
        return None;
    }
    let free = free.map(|b| format!(", {} MiB free now", b >> 20)).unwrap_or_default();
    Some(format!("{device} ran out of memory {doing}{free} ({text})"))
}

/// Calls `f` with the values of `t` as f32: borrowed from its storage when it is a contiguous f32 tensor in host
/// memory (what the CPU backend and the network produce), copied otherwise.
fn with_f32_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    if t.dtype() == DType::F32 {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            return Ok(f(&cpu.as_slice::<f32>()?[start..end]));
        }
    }
    Ok(f(&t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_out_of_memory_is_named_with_what_it_has_and_other_errors_are_not() {
        let text = "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")";
        assert_eq!(
            describe_out_of_memory(text, "cuda:1", "on 4096 positions", Some(300 << 20)).unwrap(),
            format!("cuda:1 ran out of memory on 4096 positions, 300 MiB free now ({text})")
        );
        assert_eq!(describe_out_of_memory("shape mismatch", "cuda:0", "x", None), None);
        // The CPU's errors are never taken for a device's.
        let e = EngineError::Tensor(candle_core::Error::Msg(text.into()));
        assert!(matches!(out_of_memory(e, &Device::Cpu, "x"), EngineError::Tensor(_)));
    }
}
