//! `CandleModel`: a shard's forward pass on candle tensors.
//!
//! This is the backend for GPUs (candle's CUDA and Metal features); on the CPU it runs when asked for (tests
//! compare it with the CPU kernels' backend). Weights stay in candle's quantized tensors; keys and values go to a [`KvCache`] of device tensors.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::config::{Activation, Experts, ModelConfig, RopeStyle};
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::moe::Routing;
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
    o_bias: Option<Tensor>,
    /// Per-head attention sink logits (gpt-oss), (heads).
    sinks: Option<Vec<f32>>,
}

struct Block {
    /// Its layer in the whole model.
    layer: usize,
    attn_norm: Tensor,
    attn: Attention,
    /// Norms of the attention and feed-forward outputs before the residual adds (Gemma).
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    ffn: FeedForward,
    post_ffn_norm: Option<Tensor>,
}

/// One gated feed-forward layer: `down(act(gate x + gate_bias) * (up x + up_bias)) + down_bias`.
struct Mlp {
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
    /// gpt-oss's experts' biases: gate, up, down.
    biases: Option<[Tensor; 3]>,
}

enum FeedForward {
    Dense(Mlp),
    /// A mixture of experts: the router scores them, each position runs its chosen ones ([`Routing`]).
    Experts {
        experts: Experts,
        router: QMatMul,
        router_bias: Option<Tensor>,
        mlps: Vec<Mlp>,
    },
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
        let global = self.rope_tables(self.inv_freq.global_for(cache.max_len()), pos, seq)?;
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
            let mut h = match &block.ffn {
                FeedForward::Dense(mlp) => self.mlp(mlp, &h)?,
                FeedForward::Experts { experts, router, router_bias, mlps } => {
                    self.experts(*experts, router, router_bias.as_ref(), mlps, &h)?
                }
            };
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

    fn mlp(&self, mlp: &Mlp, x: &Tensor) -> Result<Tensor> {
        let (mut gate, mut up) = (mlp.gate.forward(x)?, mlp.up.forward(x)?);
        if let Some([g, u, _]) = &mlp.biases {
            (gate, up) = (gate.broadcast_add(g)?, up.broadcast_add(u)?);
        }
        let gated = match self.config.activation {
            Activation::Silu => (candle_nn::ops::silu(&gate)? * up)?,
            Activation::GeluTanh => (gate.gelu()? * up)?,
            Activation::SwigluOai => {
                const ALPHA: f64 = 1.702;
                const LIMIT: f64 = 7.0;
                let g = gate.clamp(f64::NEG_INFINITY, LIMIT)?;
                let glu = (&g * candle_nn::ops::sigmoid(&(&g * ALPHA)?)?)?;
                (glu * (up.clamp(-LIMIT, LIMIT)? + 1.0)?)?
            }
        };
        let y = mlp.down.forward(&gated)?;
        Ok(match &mlp.biases {
            Some([_, _, d]) => y.broadcast_add(d)?,
            None => y,
        })
    }

    /// A mixture-of-experts layer: the router's logits come to the host to be routed; each chosen expert runs
    /// once over the rows of the positions that chose it, and its weighted outputs are added back to them.
    fn experts(
        &self,
        experts: Experts,
        router: &QMatMul,
        router_bias: Option<&Tensor>,
        mlps: &[Mlp],
        x: &Tensor,
    ) -> Result<Tensor> {
        let mut logits = router.forward(x)?;
        if let Some(b) = router_bias {
            logits = logits.broadcast_add(b)?;
        }
        let logits = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut routing = Routing::default();
        routing.route(&logits, experts.count, experts.used);
        let mut out = x.zeros_like()?;
        for &(e, first, n) in &routing.groups {
            let slots = &routing.slots[first..first + n];
            let rows = Tensor::from_iter(slots.iter().map(|&(t, _)| t as u32), &self.device)?;
            let weights = Tensor::from_iter(slots.iter().map(|&(_, w)| w), &self.device)?.reshape((n, 1))?;
            let y = self.mlp(&mlps[e], &x.index_select(&rows, 0)?)?;
            out = out.index_add(&rows, &y.broadcast_mul(&weights)?, 0)?;
        }
        Ok(out)
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
        let probs = match &attn.sinks {
            None => candle_nn::ops::softmax_last_dim(&scores)?,
            // Each row's softmax takes its head's sink as one more logit, then drops it. Row g * seq + s of a KV
            // head's scores is query head kv_head * group + g.
            Some(sinks) => {
                let (kv_heads, rows, total) = scores.dims3()?;
                let column: Vec<f32> =
                    (0..kv_heads * rows).map(|i| sinks[(i / rows) * group + (i % rows) / seq]).collect();
                let column = Tensor::from_vec(column, (kv_heads, rows, 1), &self.device)?;
                let probs = candle_nn::ops::softmax_last_dim(&Tensor::cat(&[&scores, &column], 2)?)?;
                probs.narrow(2, 0, total)?.contiguous()?
            }
        };
        let out = probs.matmul(&values)?;
        let out = out.reshape((c.n_heads, seq, c.head_dim))?.transpose(0, 1)?.reshape((seq, c.n_heads * c.head_dim))?;
        let out = attn.o.forward(&out)?;
        Ok(match &attn.o_bias {
            Some(b) => out.broadcast_add(b)?,
            None => out,
        })
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
    // Phi-3 fuses q, k and v into one tensor, and the gate and up matrices into `ffn_up` (gate rows first).
    let split = |reader: &mut TensorReader<'_>, t: &str, parts: &[usize]| -> Result<Vec<QMatMul>> {
        let parts = reader.quantized_split(&name(t), parts, h)?;
        Ok(parts.into_iter().map(QMatMul::from_qtensor).collect::<candle_core::Result<Vec<_>>>()?)
    };
    let fused_qkv = reader.has(&name("attn_qkv.weight")).then(|| split(reader, "attn_qkv.weight", &[q_dim, kv, kv]));
    let fused_gate_up = (!reader.has(&name("ffn_gate.weight")) && c.experts.is_none())
        .then(|| split(reader, "ffn_up.weight", &[c.ffn_size, c.ffn_size]));
    let mut matrix = |t: &str, rows: usize, cols: usize| -> Result<QMatMul> {
        Ok(QMatMul::from_qtensor(reader.quantized(&name(t), &[rows, cols])?)?)
    };
    let (q, k, v) = match fused_qkv.transpose()? {
        Some(mut qkv) if qkv.len() == 3 => {
            let (v, k, q) = (qkv.remove(2), qkv.remove(1), qkv.remove(0));
            (q, k, v)
        }
        _ => (matrix("attn_q.weight", q_dim, h)?, matrix("attn_k.weight", kv, h)?, matrix("attn_v.weight", kv, h)?),
    };
    let o = matrix("attn_output.weight", h, q_dim)?;
    let ffn = match c.experts {
        None => {
            let (gate, up) = match fused_gate_up.transpose()? {
                Some(mut gate_up) if gate_up.len() == 2 => {
                    let up = gate_up.remove(1);
                    (gate_up.remove(0), up)
                }
                _ => (matrix("ffn_gate.weight", c.ffn_size, h)?, matrix("ffn_up.weight", c.ffn_size, h)?),
            };
            FeedForward::Dense(Mlp { gate, up, down: matrix("ffn_down.weight", h, c.ffn_size)?, biases: None })
        }
        Some(e) => {
            let router = matrix("ffn_gate_inp.weight", e.count, h)?;
            // gpt-oss: biases on the router and on each expert's products, (experts, width) each.
            let biases = match reader.has(&name("ffn_gate_inp.bias")) {
                false => None,
                true => {
                    let mut rows = |t: &str, width: usize| -> Result<Vec<Tensor>> {
                        let all = reader.dense(&name(t), &[e.count, width])?;
                        (0..e.count).map(|i| Ok(all.get(i)?)).collect()
                    };
                    let (g, u, d) = (
                        rows("ffn_gate_exps.bias", e.ffn_size)?,
                        rows("ffn_up_exps.bias", e.ffn_size)?,
                        rows("ffn_down_exps.bias", h)?,
                    );
                    Some((reader.dense(&name("ffn_gate_inp.bias"), &[e.count])?, g, u, d))
                }
            };
            let mut stack = |t: &str, rows: usize, cols: usize| -> Result<Vec<QMatMul>> {
                let parts = reader.quantized_stack(&name(t), e.count, rows, cols)?;
                Ok(parts.into_iter().map(QMatMul::from_qtensor).collect::<candle_core::Result<Vec<_>>>()?)
            };
            let gate = stack("ffn_gate_exps.weight", e.ffn_size, h)?;
            let up = stack("ffn_up_exps.weight", e.ffn_size, h)?;
            let down = stack("ffn_down_exps.weight", h, e.ffn_size)?;
            let (router_bias, mut expert_biases) = match biases {
                Some((r, g, u, d)) => {
                    let each = g.into_iter().zip(u).zip(d).map(|((g, u), d)| Some([g, u, d]));
                    (Some(r), each.collect::<Vec<_>>())
                }
                None => (None, vec![None; e.count]),
            };
            let mlps = gate
                .into_iter()
                .zip(up)
                .zip(down)
                .zip(expert_biases.drain(..))
                .map(|(((gate, up), down), biases)| Mlp { gate, up, down, biases })
                .collect();
            FeedForward::Experts { experts: e, router, router_bias, mlps }
        }
    };
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
            o_bias: reader.dense_if_present(&name("attn_output.bias"), &[h])?,
            sinks: match c.attn_sinks {
                true => Some(reader.dense(&name("attn_sinks.weight"), &[c.n_heads])?.to_vec1::<f32>()?),
                false => None,
            },
            q_norm,
            k_norm,
            o,
        },
        ffn_norm: reader.dense(&name(c.ffn_norm_tensor()), &[h])?,
        ffn,
    })
}
