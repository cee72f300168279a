//! `CandleModel`: a shard's forward pass on candle tensors.
//!
//! This is the backend for GPUs (candle's CUDA and Metal features) and for weight types the CPU kernels do not
//! handle. Weights stay in candle's quantized tensors; keys and values go to a [`KvCache`] of device tensors.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::config::{ModelConfig, RopeStyle};
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::shard::{Shard, ShardOutput};
use crate::weights::TensorReader;

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

pub(crate) struct CandleModel {
    config: ModelConfig,
    embeddings: Option<Arc<QTensor>>,
    blocks: Vec<Block>,
    output_norm: Option<Tensor>,
    output: Option<QMatMul>,
    /// Rotation frequency of each pair of a head's dimensions.
    inv_freq: Vec<f32>,
    device: Device,
}

impl CandleModel {
    pub(crate) fn load(
        reader: &mut TensorReader<'_>,
        config: &ModelConfig,
        shard: Shard,
        inv_freq: Vec<f32>,
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
        match &self.embeddings {
            Some(e) => Ok(Some(e.embedding(&Tensor::new(ids, &self.device)?)?)),
            None => Ok(None),
        }
    }

    /// Runs hidden states `x` (seq, hidden) at the cache's current position, appending to the cache.
    pub(crate) fn forward(&self, mut x: Tensor, cache: &mut KvCache) -> Result<ShardOutput> {
        let seq = x.dim(0)?;
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
