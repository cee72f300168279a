//! `Shard` (a contiguous range of a model's layers) and `ModelShard` (those layers loaded, with a forward pass).
//!
//! The first shard turns token ids into hidden states through the token embeddings; every shard runs its
//! transformer blocks; the last shard applies the final norm and output head and returns the logits of the
//! last position. A model run on one machine is the shard `0..=L-1`; a ring is a chain of shards whose hidden
//! states are passed from one to the next.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::config::{ModelConfig, RopeStyle};
use crate::error::{EngineError, Result};
use crate::gguf::Gguf;
use crate::kv_cache::KvCache;
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
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "layers {}-{} of {}", self.start, self.end, self.total)
    }
}

/// What a shard's forward pass consumes.
#[derive(Debug)]
pub enum ShardInput<'a> {
    /// Token ids, for the first shard.
    Tokens(&'a [u32]),
    /// Hidden states (seq, hidden) from the previous shard.
    Hidden(Tensor),
}

/// What a shard's forward pass produces.
#[derive(Debug)]
pub enum ShardOutput {
    /// Hidden states (seq, hidden) for the next shard.
    Hidden(Tensor),
    /// Logits over the vocabulary for the last input position (last shard only).
    Logits(Vec<f32>),
}

struct Attention {
    q: QMatMul,
    k: QMatMul,
    v: QMatMul,
    q_bias: Option<Tensor>,
    k_bias: Option<Tensor>,
    v_bias: Option<Tensor>,
    o: QMatMul,
}

struct Block {
    attn_norm: Tensor,
    attn: Attention,
    ffn_norm: Tensor,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
}

/// One shard's weights, ready to run. Immutable: each sequence brings its own [`KvCache`].
pub struct ModelShard {
    shard: Shard,
    config: ModelConfig,
    embeddings: Option<Arc<QTensor>>,
    blocks: Vec<Block>,
    output_norm: Option<Tensor>,
    output: Option<QMatMul>,
    /// Rotation frequency of each pair of a head's dimensions (already divided by any rope scaling).
    inv_freq: Vec<f32>,
    device: Device,
    bytes_loaded: u64,
}

impl ModelShard {
    /// Loads the tensors of `shard` from `gguf`: its blocks, plus the token embeddings on the first shard and the
    /// final norm and output head on the last (a tied head reuses the token embeddings).
    pub fn load(gguf: &Gguf, shard: Shard, device: &Device) -> Result<Self> {
        let config = ModelConfig::from_gguf(gguf)?;
        if shard.total != config.n_layers {
            return Err(EngineError::InvalidShard(format!(
                "{shard} does not fit {} which has {} layers",
                gguf.path.display(),
                config.n_layers
            )));
        }
        let mut reader = TensorReader::new(gguf, device);
        let (h, vocab) = (config.hidden_size, config.vocab_size);

        let embeddings = if shard.is_first() || (shard.is_last() && !reader.has("output.weight")) {
            Some(Arc::new(reader.quantized("token_embd.weight", &[vocab, h])?))
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(shard.n_layers());
        for layer in shard.start..=shard.end {
            blocks.push(load_block(&mut reader, &config, layer)?);
        }
        let (output_norm, output) = if shard.is_last() {
            let norm = reader.dense("output_norm.weight", &[h])?;
            let head = if reader.has("output.weight") {
                QMatMul::from_qtensor(reader.quantized("output.weight", &[vocab, h])?)?
            } else {
                let tied = embeddings.clone().expect("embeddings are loaded on a last shard with a tied head");
                QMatMul::from_arc(tied)?
            };
            (Some(norm), Some(head))
        } else {
            (None, None)
        };
        // The embeddings were needed on this shard only for the tied head.
        let embeddings = if shard.is_first() { embeddings } else { None };

        let half = config.head_dim / 2;
        let mut inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let f = (config.rope_theta as f64).powf(-2.0 * i as f64 / config.head_dim as f64);
                (f / config.rope_linear_factor as f64) as f32
            })
            .collect();
        // Llama 3.x stores its frequency-dependent rope scaling as per-pair divisors.
        if let Some(factors) = reader.dense_if_present("rope_freqs.weight", &[half])? {
            for (f, d) in inv_freq.iter_mut().zip(factors.to_vec1::<f32>()?) {
                *f /= d;
            }
        }

        Ok(Self {
            shard,
            config,
            embeddings,
            blocks,
            output_norm,
            output,
            inv_freq,
            device: device.clone(),
            bytes_loaded: reader.bytes_read(),
        })
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

    /// Bytes of tensor data this shard read from the file.
    pub fn bytes_loaded(&self) -> u64 {
        self.bytes_loaded
    }

    /// An empty KV cache for this shard's layers, holding up to `max_len` positions (at most the context).
    pub fn new_cache(&self, max_len: usize) -> KvCache {
        let c = &self.config;
        KvCache::new(self.blocks.len(), c.n_kv_heads, c.head_dim, max_len.min(c.context_length), &self.device)
    }

    /// Runs the shard on `input` at the cache's current position, appending to the cache.
    pub fn forward(&self, input: ShardInput<'_>, cache: &mut KvCache) -> Result<ShardOutput> {
        if cache.n_layers() != self.blocks.len() {
            return Err(EngineError::InvalidShard(format!(
                "the KV cache has {} layers, the shard {}",
                cache.n_layers(),
                self.blocks.len()
            )));
        }
        let mut x = match input {
            ShardInput::Tokens(ids) => {
                let embeddings = self.embeddings.as_ref().ok_or_else(|| {
                    EngineError::InvalidShard(format!("{} does not hold layer 0: it takes hidden states", self.shard))
                })?;
                if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.config.vocab_size) {
                    return Err(EngineError::InvalidShard(format!(
                        "token id {bad} is outside the vocabulary of {} tokens",
                        self.config.vocab_size
                    )));
                }
                let ids = Tensor::new(ids, &self.device)?;
                embeddings.embedding(&ids)?
            }
            ShardInput::Hidden(hidden) => {
                if self.shard.is_first() {
                    return Err(EngineError::InvalidShard(format!("{} takes token ids", self.shard)));
                }
                if hidden.dims().len() != 2 || hidden.dim(1)? != self.config.hidden_size {
                    return Err(EngineError::InvalidShard(format!(
                        "hidden states of shape {:?}, expected (positions, {})",
                        hidden.dims(),
                        self.config.hidden_size
                    )));
                }
                hidden.to_dtype(DType::F32)?
            }
        };
        let seq = x.dim(0)?;
        if seq == 0 {
            return Err(EngineError::InvalidShard("a forward pass needs at least one position".into()));
        }
        let pos = cache.len();
        let (cos, sin) = self.rope_tables(pos, seq)?;
        let mask = if seq > 1 { Some(self.causal_mask(pos, seq)?) } else { None };

        for (i, block) in self.blocks.iter().enumerate() {
            let residual = &x;
            let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, self.config.rms_eps)?;
            let h = self.attention(&block.attn, &h, i, cache, &cos, &sin, mask.as_ref())?;
            let x1 = (residual + h)?;
            let h = candle_nn::ops::rms_norm(&x1, &block.ffn_norm, self.config.rms_eps)?;
            let gate = candle_nn::ops::silu(&block.gate.forward(&h)?)?;
            let h = block.down.forward(&(gate * block.up.forward(&h)?)?)?;
            x = (x1 + h)?;
        }
        cache.advance(seq);

        match (&self.output_norm, &self.output) {
            (Some(norm), Some(head)) => {
                let last = x.narrow(0, seq - 1, 1)?;
                let last = candle_nn::ops::rms_norm(&last, norm, self.config.rms_eps)?;
                let logits = head.forward(&last)?.squeeze(0)?.to_dtype(DType::F32)?;
                Ok(ShardOutput::Logits(logits.to_vec1()?))
            }
            _ => Ok(ShardOutput::Hidden(x)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        attn: &Attention,
        x: &Tensor,
        layer: usize,
        cache: &mut KvCache,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let seq = x.dim(0)?;
        let project = |w: &QMatMul, bias: &Option<Tensor>, heads: usize| -> Result<Tensor> {
            let mut y = w.forward(x)?;
            if let Some(b) = bias {
                y = y.broadcast_add(b)?;
            }
            // (seq, heads*hd) -> (heads, seq, hd)
            Ok(y.reshape((seq, heads, c.head_dim))?.transpose(0, 1)?.contiguous()?)
        };
        let q = self.rotate(&project(&attn.q, &attn.q_bias, c.n_heads)?, cos, sin)?;
        let k = self.rotate(&project(&attn.k, &attn.k_bias, c.n_kv_heads)?, cos, sin)?;
        let v = project(&attn.v, &attn.v_bias, c.n_kv_heads)?;
        let (keys, values) = cache.append(layer, &k, &v)?;

        // Grouped-query attention without copying the cache: query heads that share a KV head are adjacent, so
        // (heads, seq, hd) regroups as (kv_heads, group*seq, hd) against (kv_heads, positions, hd).
        let group = c.n_heads / c.n_kv_heads;
        let q = q.reshape((c.n_kv_heads, group * seq, c.head_dim))?;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let scores = (q.matmul(&keys.t()?)? * scale)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&values)?;
        let out = out.reshape((c.n_heads, seq, c.head_dim))?.transpose(0, 1)?.reshape((seq, c.n_heads * c.head_dim))?;
        Ok(attn.o.forward(&out)?)
    }

    /// Applies rotary embeddings to (heads, seq, hd).
    fn rotate(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let x = x.unsqueeze(0)?;
        let y = match self.config.rope_style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, cos, sin)?,
            RopeStyle::Halves => candle_nn::rotary_emb::rope(&x, cos, sin)?,
        };
        Ok(y.squeeze(0)?)
    }

    /// cos and sin of every rotation angle for positions `pos..pos+seq`, each (seq, hd/2).
    fn rope_tables(&self, pos: usize, seq: usize) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for p in pos..pos + seq {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok((Tensor::from_vec(cos, (seq, half), &self.device)?, Tensor::from_vec(sin, (seq, half), &self.device)?))
    }

    /// Additive mask (group*seq, pos+seq): row r is query position pos + r % seq, which sees keys up to itself.
    fn causal_mask(&self, pos: usize, seq: usize) -> Result<Tensor> {
        let group = self.config.n_heads / self.config.n_kv_heads;
        let total = pos + seq;
        let mut mask = Vec::with_capacity(group * seq * total);
        for r in 0..group * seq {
            let visible = pos + r % seq;
            mask.extend((0..total).map(|j| if j <= visible { 0.0f32 } else { f32::NEG_INFINITY }));
        }
        Ok(Tensor::from_vec(mask, (group * seq, total), &self.device)?)
    }
}

fn load_block(reader: &mut TensorReader<'_>, c: &ModelConfig, layer: usize) -> Result<Block> {
    let name = |t: &str| format!("blk.{layer}.{t}");
    let (h, kv) = (c.hidden_size, c.n_kv_heads * c.head_dim);
    let q_dim = c.n_heads * c.head_dim;
    let mut matrix = |t: &str, rows: usize, cols: usize| -> Result<QMatMul> {
        Ok(QMatMul::from_qtensor(reader.quantized(&name(t), &[rows, cols])?)?)
    };
    let q = matrix("attn_q.weight", q_dim, h)?;
    let k = matrix("attn_k.weight", kv, h)?;
    let v = matrix("attn_v.weight", kv, h)?;
    let o = matrix("attn_output.weight", h, q_dim)?;
    let gate = matrix("ffn_gate.weight", c.ffn_size, h)?;
    let up = matrix("ffn_up.weight", c.ffn_size, h)?;
    let down = matrix("ffn_down.weight", h, c.ffn_size)?;
    Ok(Block {
        attn_norm: reader.dense(&name("attn_norm.weight"), &[h])?,
        attn: Attention {
            q,
            k,
            v,
            q_bias: reader.dense_if_present(&name("attn_q.bias"), &[q_dim])?,
            k_bias: reader.dense_if_present(&name("attn_k.bias"), &[kv])?,
            v_bias: reader.dense_if_present(&name("attn_v.bias"), &[kv])?,
            o,
        },
        ffn_norm: reader.dense(&name("ffn_norm.weight"), &[h])?,
        gate,
        up,
        down,
    })
}
