//! `CandleModel`: a shard's forward pass on candle tensors.
//!
//! This is the backend for GPUs (candle's CUDA and Metal features) and for weight types the CPU kernels do not
//! handle. Weights stay in candle's quantized tensors; keys and values go to a [`KvCache`] of device tensors.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::config::{Activation, ModelConfig, RopeStyle};
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::shard::{RopeFreqs, Shard, ShardOutput};
use crate::weights::TensorReader;

struct Attention {
    q: QMatMul,
    k: QMatMul,
    v: QMatMul,
    q_bias: Option<Tensor>,
    k_bias: Option<Tensor>,
    v_bias: Option<Tensor>,
    /// Per-head RMS norms of queries and keys (Gemma 3).
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    o: QMatMul,
}

struct Block {
    /// Its layer in the whole model.
    layer: usize,
    attn_norm: Tensor,
    attn: Attention,
    /// Norms of the attention and feed-forward outputs before the residual adds (Gemma).
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
    post_ffn_norm: Option<Tensor>,
}

pub(crate) struct CandleModel {
    config: ModelConfig,
    embeddings: Option<Arc<QTensor>>,
    blocks: Vec<Block>,
    output_norm: Option<Tensor>,
    output: Option<QMatMul>,
    /// Rotation frequency of each pair of a head's dimensions.
    inv_freq: RopeFreqs,
    device: Device,
}

impl CandleModel {
    pub(crate) fn load(
        reader: &mut TensorReader<'_>,
        config: &ModelConfig,
        shard: Shard,
        inv_freq: RopeFreqs,
        device: &Device,
    ) -> Result<Self> {
        let (h, vocab) = (config.hidden_size, config.vocab_size);
        let tied = !reader.has("output.weight");
        let embeddings = if shard.is_first() || (shard.is_last() && tied) {
            Some(Arc::new(reader.quantized("token_embd.weight", &[vocab, h])?))
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(shard.n_layers());
        for layer in shard.start..=shard.end {
            blocks.push(load_block(reader, config, layer)?);
        }
        let (output_norm, output) = match (shard.is_last(), &embeddings) {
            (false, _) => (None, None),
            (true, Some(tied_head)) if tied => {
                (Some(reader.dense("output_norm.weight", &[h])?), Some(QMatMul::from_arc(tied_head.clone())?))
            }
            (true, _) => {
                let norm = reader.dense("output_norm.weight", &[h])?;
                (Some(norm), Some(QMatMul::from_qtensor(reader.quantized("output.weight", &[vocab, h])?)?))
            }
        };
        // The embeddings were needed on this shard only for the tied head.
        let embeddings = if shard.is_first() { embeddings } else { None };
        Ok(Self { config: config.clone(), embeddings, blocks, output_norm, output, inv_freq, device: device.clone() })
    }

    /// Token ids (already checked against the vocabulary) as hidden states.
    pub(crate) fn embed(&self, ids: &[u32]) -> Result<Option<Tensor>> {
        let Some(e) = &self.embeddings else { return Ok(None) };
        let x = e.embedding(&Tensor::new(ids, &self.device)?)?;
        Ok(Some(if self.config.embedding_scale == 1.0 { x } else { (x * self.config.embedding_scale as f64)? }))
    }

    /// Runs hidden states `x` (seq, hidden) at the cache's current position, appending to the cache.
    pub(crate) fn forward(&self, mut x: Tensor, cache: &mut KvCache) -> Result<ShardOutput> {
        let c = &self.config;
        let seq = x.dim(0)?;
        let pos = cache.len();
        let global = self.rope_tables(&self.inv_freq.global, pos, seq)?;
        let local = match c.sliding_window {
            Some(_) => Some(self.rope_tables(&self.inv_freq.local, pos, seq)?),
            None => None,
        };
        // The causal mask of global layers, and the windowed one of local layers (only once the window is full).
        let mask = if seq > 1 { Some(self.mask(pos, seq, None)?) } else { None };
        let window = c.sliding_window.map(|w| w.size);
        let local_mask = match window {
            Some(w) if pos + seq > w => Some(self.mask(pos, seq, Some(w))?),
            _ => mask.clone(),
        };
        let norm = |x: &Tensor, w: &Tensor| candle_nn::ops::rms_norm(x, w, c.rms_eps);

        for (i, block) in self.blocks.iter().enumerate() {
            let residual = &x;
            let h = norm(&x, &block.attn_norm)?;
            let ((cos, sin), mask) = match (c.window(block.layer), &local) {
                (Some(_), Some(tables)) => (tables, local_mask.as_ref()),
                _ => (&global, mask.as_ref()),
            };
            let mut h = self.attention(&block.attn, &h, i, cache, cos, sin, mask)?;
            if let Some(w) = &block.post_attn_norm {
                h = norm(&h, w)?;
            }
            let x1 = (residual + h)?;
            let h = norm(&x1, &block.ffn_norm)?;
            let gate = block.gate.forward(&h)?;
            let gate = match c.activation {
                Activation::Silu => candle_nn::ops::silu(&gate)?,
                Activation::GeluTanh => gate.gelu()?,
            };
            let mut h = block.down.forward(&(gate * block.up.forward(&h)?)?)?;
            if let Some(w) = &block.post_ffn_norm {
                h = norm(&h, w)?;
            }
            x = (x1 + h)?;
        }
        cache.advance(seq);

        match (&self.output_norm, &self.output) {
            (Some(norm), Some(head)) => {
                let last = x.narrow(0, seq - 1, 1)?;
                let last = candle_nn::ops::rms_norm(&last, norm, self.config.rms_eps)?;
                let mut logits = head.forward(&last)?.squeeze(0)?.to_dtype(DType::F32)?;
                if let Some(cap) = self.config.final_softcap {
                    logits = ((logits / cap as f64)?.tanh()? * cap as f64)?;
                }
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
        let project = |w: &QMatMul, bias: &Option<Tensor>, norm: &Option<Tensor>, heads: usize| -> Result<Tensor> {
            let mut y = w.forward(x)?;
            if let Some(b) = bias {
                y = y.broadcast_add(b)?;
            }
            // (seq, heads*hd) -> (seq, heads, hd), each head normed on its own, -> (heads, seq, hd)
            let mut y = y.reshape((seq, heads, c.head_dim))?;
            if let Some(n) = norm {
                y = candle_nn::ops::rms_norm(&y.contiguous()?, n, c.rms_eps)?;
            }
            Ok(y.transpose(0, 1)?.contiguous()?)
        };
        let q = self.rotate(&project(&attn.q, &attn.q_bias, &attn.q_norm, c.n_heads)?, cos, sin)?;
        let k = self.rotate(&project(&attn.k, &attn.k_bias, &attn.k_norm, c.n_kv_heads)?, cos, sin)?;
        let v = project(&attn.v, &attn.v_bias, &None, c.n_kv_heads)?;
        let (keys, values) = cache.append(layer, &k, &v)?;

        // Grouped-query attention without copying the cache: query heads that share a KV head are adjacent, so
        // (heads, seq, hd) regroups as (kv_heads, group*seq, hd) against (kv_heads, positions, hd).
        let group = c.n_heads / c.n_kv_heads;
        let q = q.reshape((c.n_kv_heads, group * seq, c.head_dim))?;
        let mut scores = (q.matmul(&keys.t()?)? * c.attention_scale as f64)?;
        if let Some(cap) = c.attn_softcap {
            scores = ((scores / cap as f64)?.tanh()? * cap as f64)?;
        }
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

    /// cos and sin of every rotation angle at frequencies `inv_freq` for positions `pos..pos+seq`, each
    /// (seq, hd/2).
    fn rope_tables(&self, inv_freq: &[f32], pos: usize, seq: usize) -> Result<(Tensor, Tensor)> {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for p in pos..pos + seq {
            for &f in inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok((Tensor::from_vec(cos, (seq, half), &self.device)?, Tensor::from_vec(sin, (seq, half), &self.device)?))
    }

    /// Additive mask (group*seq, pos+seq): row r is query position p = pos + r % seq, which sees keys up to
    /// itself, and within a sliding `window` only the last `window` of them (those j with p - j < window).
    fn mask(&self, pos: usize, seq: usize, window: Option<usize>) -> Result<Tensor> {
        let group = self.config.n_heads / self.config.n_kv_heads;
        let total = pos + seq;
        let mut mask = Vec::with_capacity(group * seq * total);
        for r in 0..group * seq {
            let p = pos + r % seq;
            let first = window.map_or(0, |w| (p + 1).saturating_sub(w));
            mask.extend((0..total).map(|j| if (first..=p).contains(&j) { 0.0f32 } else { f32::NEG_INFINITY }));
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
    let hd = c.head_dim;
    let (q_norm, k_norm) = if c.qk_norm {
        (
            Some(reader.dense(&name("attn_q_norm.weight"), &[hd])?),
            Some(reader.dense(&name("attn_k_norm.weight"), &[hd])?),
        )
    } else {
        (None, None)
    };
    let (post_attn_norm, post_ffn_norm) = if c.post_norms {
        (
            Some(reader.dense(&name("post_attention_norm.weight"), &[h])?),
            Some(reader.dense(&name("post_ffw_norm.weight"), &[h])?),
        )
    } else {
        (None, None)
    };
    Ok(Block {
        layer,
        attn_norm: reader.dense(&name("attn_norm.weight"), &[h])?,
        post_attn_norm,
        post_ffn_norm,
        attn: Attention {
            q,
            k,
            v,
            q_bias: reader.dense_if_present(&name("attn_q.bias"), &[q_dim])?,
            k_bias: reader.dense_if_present(&name("attn_k.bias"), &[kv])?,
            v_bias: reader.dense_if_present(&name("attn_v.bias"), &[kv])?,
            q_norm,
            k_norm,
            o,
        },
        ffn_norm: reader.dense(&name("ffn_norm.weight"), &[h])?,
        gate,
        up,
        down,
    })
}
