//! `CpuModel`: one shard's weights held as the file stores them, and its forward pass on the CPU kernels.
//!
//! Per layer the work is: RMS norm, the q/k/v products (one parallel step), rotary embeddings, keys and values
//! written into the cache, attention over the cache (one parallel step: over heads for one position, over
//! (KV head, block of positions) pairs as two f32 matrix products for several), the output product, RMS norm, the
//! gate and up products with SwiGLU (one parallel step), and the down product. Each product quantizes its input
//! once; the pool splits the weight rows between threads.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::{Activation, ModelConfig};
use crate::cpu::ops;
use crate::cpu::pool::{self, share, ThreadPool};
use crate::error::{EngineError, Result};
use crate::gguf::TensorType;
use crate::kernels::{ActType, Kernels, WeightType};
use crate::kv_cache::{HostBuf, HostLayer, KvCache};
use crate::shard::{RopeFreqs, Shard};
use crate::weights::TensorReader;

/// Rows of a product are split between threads in multiples of this.
const ROW_ALIGN: usize = 8;
/// Rows per tile when several positions go through a product at once.
const GEMM_TILE_ROWS: usize = 64;

/// The weight types the CPU kernels handle.
pub(crate) fn weight_type(kind: TensorType) -> Option<WeightType> {
    Some(match kind {
        TensorType::F32 => WeightType::F32,
        TensorType::F16 => WeightType::F16,
        TensorType::Bf16 => WeightType::Bf16,
        TensorType::Q4_0 => WeightType::Q4_0,
        TensorType::Q4_1 => WeightType::Q4_1,
        TensorType::Q5_0 => WeightType::Q5_0,
        TensorType::Q5_1 => WeightType::Q5_1,
        TensorType::Q8_0 => WeightType::Q8_0,
        TensorType::Q2K => WeightType::Q2K,
        TensorType::Q3K => WeightType::Q3K,
        TensorType::Q4K => WeightType::Q4K,
        TensorType::Q5K => WeightType::Q5K,
        TensorType::Q6K => WeightType::Q6K,
        TensorType::Iq4Nl => WeightType::Iq4Nl,
        TensorType::Iq4Xs => WeightType::Iq4Xs,
        TensorType::Mxfp4 => WeightType::Mxfp4,
    })
}

/// A weight matrix of `rows` rows of `cols` values, in the file's own block layout.
struct Matrix {
    ty: WeightType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: Vec<u8>,
}

impl Matrix {
    fn load(reader: &mut TensorReader<'_>, name: &str, rows: usize, cols: usize) -> Result<Self> {
        let (kind, data) = reader.raw(name, &[rows, cols])?;
        let ty = weight_type(kind).ok_or_else(|| {
            EngineError::InvalidShard(format!("tensor {name} is {}, which the CPU kernels do not handle", kind.name()))
        })?;
        if !cols.is_multiple_of(ty.block_len()) || data.len() != rows * ty.row_bytes(cols) {
            return Err(EngineError::InvalidShard(format!(
                "tensor {name}: {} bytes do not hold {rows} rows of {cols} {} values",
                data.len(),
                kind.name()
            )));
        }
        Ok(Self { ty, rows, cols, row_bytes: ty.row_bytes(cols), data })
    }

    fn rows(&self, r: std::ops::Range<usize>) -> &[u8] {
        &self.data[r.start * self.row_bytes..r.end * self.row_bytes]
    }
}

struct Layer {
    /// The sliding window its attention sees, if it is a local layer.
    window: Option<usize>,
    attn_norm: Vec<f32>,
    /// Per-head RMS norms of queries and keys (Gemma 3).
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    /// Norms of the attention and feed-forward outputs before the residual adds (Gemma).
    post_attn_norm: Option<Vec<f32>>,
    post_ffn_norm: Option<Vec<f32>>,
    q: Matrix,
    k: Matrix,
    v: Matrix,
    q_bias: Option<Vec<f32>>,
    k_bias: Option<Vec<f32>>,
    v_bias: Option<Vec<f32>>,
    o: Matrix,
    ffn_norm: Vec<f32>,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

/// Buffers reused from step to step; they grow only when a batch has more positions than any before it.
#[derive(Default)]
struct Scratch {
    /// The residual stream, (positions, hidden).
    x: Vec<f32>,
    /// Normed input of the current product, (positions, hidden).
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    /// Output of the attention output and down products, (positions, hidden).
    out: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// The product input quantized for each activation type.
    acts: [Vec<u8>; 3],
    /// cos and sin of each position's rotation angles, (positions, head_dim / 2): for global layers, then for
    /// sliding-window ones.
    cos: Vec<f32>,
    sin: Vec<f32>,
    cos_local: Vec<f32>,
    sin_local: Vec<f32>,
    /// Keys or values of the new positions converted for the cache.
    half: Vec<u16>,
}

/// Per-thread buffers.
#[derive(Default)]
struct ThreadScratch {
    scores: Vec<f32>,
    tile: Vec<f32>,
    /// Prefill attention: a block's scaled queries, its keys in f32 and its values transposed.
    queries: Vec<f32>,
    keys: Vec<f32>,
    values_t: Vec<f32>,
}

/// Grows `v` to at least `n` elements and returns the first `n`.
fn fit<T: Copy + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::default());
    }
    &mut v[..n]
}

fn act_index(a: ActType) -> usize {
    match a {
        ActType::F32 => 0,
        ActType::Q8_32 => 1,
        ActType::Q8K => 2,
    }
}

/// An output buffer that the threads of one parallel step write in disjoint parts.
#[derive(Clone, Copy)]
struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: threads write disjoint ranges (see `slice`), and the buffer outlives the parallel step.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn new(buf: &mut [f32]) -> Self {
        Self { ptr: buf.as_mut_ptr(), len: buf.len() }
    }

    /// # Safety
    /// No two live slices from the same `SharedOut` may overlap.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, start: usize, len: usize) -> &mut [f32] {
        assert!(start + len <= self.len, "output range {start}+{len} outside a buffer of {}", self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(start), len)
    }
}

/// One product of a parallel step: `out[t * m.rows + r] = m.row(r) · input[t]`.
struct Product<'a> {
    m: &'a Matrix,
    out: SharedOut,
}

pub(crate) struct CpuModel {
    config: ModelConfig,
    kernels: &'static Kernels,
    embeddings: Option<Arc<Matrix>>,
    layers: Vec<Layer>,
    output_norm: Option<Vec<f32>>,
    output: Option<Arc<Matrix>>,
    inv_freq: RopeFreqs,
    scratch: Mutex<Scratch>,
    threads: Vec<Mutex<ThreadScratch>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CpuModel {
    /// Why the CPU kernels cannot run `shard` of this file (a weight type they do not handle), or `None`.
    pub(crate) fn unsupported(reader: &TensorReader<'_>, shard: Shard) -> Option<String> {
        let mut names: Vec<String> = Vec::new();
        for layer in shard.start..=shard.end {
            for t in ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"] {
                names.push(format!("blk.{layer}.{t}.weight"));
            }
        }
        if shard.is_first() || (shard.is_last() && !reader.has("output.weight")) {
            names.push("token_embd.weight".into());
        }
        if shard.is_last() && reader.has("output.weight") {
            names.push("output.weight".into());
        }
        for name in names {
            match reader.kind(&name) {
                Some(kind) if weight_type(kind).is_none() => return Some(format!("{name} is {}", kind.name())),
                _ => {}
            }
        }
        None
    }

    pub(crate) fn load(
        reader: &mut TensorReader<'_>,
        config: &ModelConfig,
        shard: Shard,
        inv_freq: RopeFreqs,
    ) -> Result<Self> {
        let (h, vocab) = (config.hidden_size, config.vocab_size);
        let tied = !reader.has("output.weight");
        let embeddings = if shard.is_first() || (shard.is_last() && tied) {
            Some(Arc::new(Matrix::load(reader, "token_embd.weight", vocab, h)?))
        } else {
            None
        };
        let layers = (shard.start..=shard.end).map(|l| load_layer(reader, config, l)).collect::<Result<Vec<_>>>()?;
        let (output_norm, output) = if shard.is_last() {
            let norm = reader.dense("output_norm.weight", &[h])?.to_vec1::<f32>()?;
            let head = match &embeddings {
                Some(e) if tied => e.clone(),
                _ => Arc::new(Matrix::load(reader, "output.weight", vocab, h)?),
            };
            (Some(norm), Some(head))
        } else {
            (None, None)
        };
        let embeddings = if shard.is_first() { embeddings } else { None };
        let threads = (0..pool::global().threads()).map(|_| Mutex::default()).collect();
        Ok(Self {
            config: config.clone(),
            kernels: Kernels::best(),
            embeddings,
            layers,
            output_norm,
            output,
            inv_freq,
            scratch: Mutex::default(),
            threads,
        })
    }

    /// Runs `seq` positions (token ids, or hidden states of `seq * hidden` values) at the cache's position and
    /// returns the logits of the last position (last shard) or the hidden states (any other).
    pub(crate) fn forward(&self, input: CpuInput<'_>, cache: &mut KvCache) -> Result<CpuOutput> {
        let c = &self.config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (q_dim, kv_dim) = (c.n_heads * hd, c.n_kv_heads * hd);
        let pool = pool::global();
        let k = self.kernels;
        let seq = match input {
            CpuInput::Tokens(ids) => ids.len(),
            CpuInput::Hidden(x) => x.len() / h,
            CpuInput::HiddenBytes(b) => b.len() / (4 * h),
        };
        let pos = cache.len();
        let mut guard = lock(&self.scratch);
        let s = &mut *guard;

        // The residual stream.
        let x = fit(&mut s.x, seq * h);
        match input {
            CpuInput::Tokens(ids) => {
                let emb = self
                    .embeddings
                    .as_ref()
                    .ok_or_else(|| EngineError::InvalidShard("this shard does not hold the token embeddings".into()))?;
                for (row, &id) in x.chunks_exact_mut(h).zip(ids) {
                    k.dequantize_row(emb.ty, emb.rows(id as usize..id as usize + 1), row);
                    if c.embedding_scale != 1.0 {
                        row.iter_mut().for_each(|v| *v *= c.embedding_scale);
                    }
                }
            }
            CpuInput::Hidden(hidden) => x.copy_from_slice(hidden),
            CpuInput::HiddenBytes(bytes) => {
                for (v, b) in x.iter_mut().zip(bytes.chunks_exact(4)) {
                    *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }

        // Rotation angles of the new positions, shared by every global layer, and by every local one.
        let half = hd / 2;
        let tables = [
            (&self.inv_freq.global, &mut s.cos, &mut s.sin),
            (&self.inv_freq.local, &mut s.cos_local, &mut s.sin_local),
        ];
        for (freqs, cos, sin) in tables.into_iter().take(if c.sliding_window.is_some() { 2 } else { 1 }) {
            let (cos, sin) = (fit(cos, seq * half), fit(sin, seq * half));
            for t in 0..seq {
                for (i, f) in freqs.iter().enumerate() {
                    let (sn, cs) = ((pos + t) as f32 * f).sin_cos();
                    cos[t * half + i] = cs;
                    sin[t * half + i] = sn;
                }
            }
        }

        let kv_layers = cache.host_layers(seq)?;
        for (layer, kv) in self.layers.iter().zip(kv_layers.iter_mut()) {
            // Attention.
            self.norm(&s.x[..seq * h], &layer.attn_norm, fit(&mut s.xn, seq * h));
            let (q, kk, v) = (fit(&mut s.q, seq * q_dim), fit(&mut s.k, seq * kv_dim), fit(&mut s.v, seq * kv_dim));
            let products = [
                Product { m: &layer.q, out: SharedOut::new(q) },
                Product { m: &layer.k, out: SharedOut::new(kk) },
                Product { m: &layer.v, out: SharedOut::new(v) },
            ];
            self.quantize(&mut s.acts, &s.xn[..seq * h], h, &products);
            self.run_products(pool, &products, &s.acts, seq, None);
            for (buf, bias) in [(&mut s.q, &layer.q_bias), (&mut s.k, &layer.k_bias), (&mut s.v, &layer.v_bias)] {
                if let Some(b) = bias {
                    for row in buf.chunks_exact_mut(b.len()).take(seq) {
                        row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
                    }
                }
            }
            for (buf, norm, width) in [(&mut s.q, &layer.q_norm, q_dim), (&mut s.k, &layer.k_norm, kv_dim)] {
                if let Some(w) = norm {
                    for head in buf[..seq * width].chunks_exact_mut(hd) {
                        ops::rms_norm_in_place(head, w, c.rms_eps);
                    }
                }
            }
            let (cos, sin) = if layer.window.is_some() { (&s.cos_local, &s.sin_local) } else { (&s.cos, &s.sin) };
            for t in 0..seq {
                let (cs, sn) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
                ops::rope(&mut s.q[t * q_dim..(t + 1) * q_dim], hd, cs, sn, c.rope_style);
                ops::rope(&mut s.k[t * kv_dim..(t + 1) * kv_dim], hd, cs, sn, c.rope_style);
            }
            self.store_kv(kv, pos, seq, kv_dim, &s.k, &s.v, &mut s.half);
            self.attention(pool, kv, pos, seq, layer.window, &s.q, fit(&mut s.attn, seq * q_dim));

            let out = fit(&mut s.out, seq * h);
            let products = [Product { m: &layer.o, out: SharedOut::new(out) }];
            self.quantize(&mut s.acts, &s.attn[..seq * q_dim], q_dim, &products);
            self.run_products(pool, &products, &s.acts, seq, None);
            if let Some(w) = &layer.post_attn_norm {
                self.norm_in_place(&mut s.out[..seq * h], w);
            }
            s.x[..seq * h].iter_mut().zip(&s.out[..seq * h]).for_each(|(x, o)| *x += o);

            // Feed-forward.
            self.norm(&s.x[..seq * h], &layer.ffn_norm, fit(&mut s.xn, seq * h));
            let ffn = c.ffn_size;
            let (gate, up) = (fit(&mut s.gate, seq * ffn), fit(&mut s.up, seq * ffn));
            let (gate_out, up_out) = (SharedOut::new(gate), SharedOut::new(up));
            let products = [Product { m: &layer.gate, out: gate_out }, Product { m: &layer.up, out: up_out }];
            self.quantize(&mut s.acts, &s.xn[..seq * h], h, &products);
            // Each thread combines the gate and up rows it computed.
            let activation = c.activation;
            let swiglu = |rows: std::ops::Range<usize>| {
                for t in 0..seq {
                    // SAFETY: `rows` is this thread's share, disjoint from every other thread's.
                    let (g, u) = unsafe {
                        (
                            gate_out.slice(t * ffn + rows.start, rows.len()),
                            up_out.slice(t * ffn + rows.start, rows.len()),
                        )
                    };
                    match activation {
                        Activation::Silu => ops::swiglu(g, u),
                        Activation::GeluTanh => ops::geglu(g, u),
                    }
                }
            };
            self.run_products(pool, &products, &s.acts, seq, Some(&swiglu));

            let out = fit(&mut s.out, seq * h);
            let products = [Product { m: &layer.down, out: SharedOut::new(out) }];
            self.quantize(&mut s.acts, &s.gate[..seq * ffn], ffn, &products);
            self.run_products(pool, &products, &s.acts, seq, None);
            if let Some(w) = &layer.post_ffn_norm {
                self.norm_in_place(&mut s.out[..seq * h], w);
            }
            s.x[..seq * h].iter_mut().zip(&s.out[..seq * h]).for_each(|(x, o)| *x += o);
        }
        cache.advance(seq);

        match (&self.output_norm, &self.output) {
            (Some(norm), Some(head)) => {
                let last = &s.x[(seq - 1) * h..seq * h];
                ops::rms_norm(last, norm, c.rms_eps, fit(&mut s.xn, h));
                let mut logits = vec![0.0f32; head.rows];
                let products = [Product { m: head, out: SharedOut::new(&mut logits) }];
                self.quantize(&mut s.acts, &s.xn[..h], h, &products);
                self.run_products(pool, &products, &s.acts, 1, None);
                if let Some(cap) = c.final_softcap {
                    ops::softcap(&mut logits, cap);
                }
                Ok(CpuOutput::Logits(logits))
            }
            _ => Ok(CpuOutput::Hidden(s.x[..seq * h].to_vec())),
        }
    }

    fn norm(&self, x: &[f32], weight: &[f32], out: &mut [f32]) {
        let h = weight.len();
        for (row, o) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
            ops::rms_norm(row, weight, self.config.rms_eps, o);
        }
    }

    fn norm_in_place(&self, x: &mut [f32], weight: &[f32]) {
        for row in x.chunks_exact_mut(weight.len()) {
            ops::rms_norm_in_place(row, weight, self.config.rms_eps);
        }
    }

    /// Quantizes `x` (rows of `cols` values) once for each activation type the products need.
    fn quantize(&self, acts: &mut [Vec<u8>; 3], x: &[f32], cols: usize, products: &[Product<'_>]) {
        let mut done = [false; 3];
        for p in products {
            let a = p.m.ty.act_type();
            let i = act_index(a);
            if done[i] {
                continue;
            }
            done[i] = true;
            let rb = a.row_bytes(cols);
            let buf = fit(&mut acts[i], rb * (x.len() / cols));
            for (row, out) in x.chunks_exact(cols).zip(buf.chunks_exact_mut(rb)) {
                self.kernels.quantize_row(a, row, out);
            }
        }
    }

    /// Runs `products` over `seq` quantized input rows in one parallel step; each thread takes the same share of
    /// every product's rows and then calls `after` with that share.
    fn run_products(
        &self,
        pool: &ThreadPool,
        products: &[Product<'_>],
        acts: &[Vec<u8>; 3],
        seq: usize,
        after: Option<&(dyn Fn(std::ops::Range<usize>) + Sync)>,
    ) {
        let k = self.kernels;
        pool.run(&|i, n| {
            let mut mine = None;
            for p in products {
                let m = p.m;
                let rows = share(m.rows, ROW_ALIGN, i, n);
                if rows.is_empty() {
                    continue;
                }
                let act = &acts[act_index(m.ty.act_type())];
                if seq == 1 {
                    // SAFETY: each thread's row share is disjoint.
                    let out = unsafe { p.out.slice(rows.start, rows.len()) };
                    k.gemv(m.ty, m.cols, m.rows(rows.clone()), &act[..m.ty.act_type().row_bytes(m.cols)], out);
                } else {
                    let mut ts = lock(mine.get_or_insert_with(|| &self.threads[i.min(self.threads.len() - 1)]));
                    let rb = m.ty.act_type().row_bytes(m.cols);
                    for start in rows.clone().step_by(GEMM_TILE_ROWS) {
                        let end = (start + GEMM_TILE_ROWS).min(rows.end);
                        let tile = fit(&mut ts.tile, seq * (end - start));
                        k.gemm(m.ty, m.cols, m.rows(start..end), end - start, &act[..seq * rb], seq, tile, end - start);
                        for t in 0..seq {
                            // SAFETY: rows start..end of position t belong to this thread alone.
                            let out = unsafe { p.out.slice(t * m.rows + start, end - start) };
                            out.copy_from_slice(&tile[t * (end - start)..(t + 1) * (end - start)]);
                        }
                    }
                }
            }
            if let Some(after) = after {
                if let Some(p) = products.first() {
                    after(share(p.m.rows, ROW_ALIGN, i, n));
                }
            }
        });
    }

    /// Writes the new positions' keys and values into the cache.
    #[allow(clippy::too_many_arguments)]
    fn store_kv(
        &self,
        kv: &mut HostLayer,
        pos: usize,
        seq: usize,
        kv_dim: usize,
        k: &[f32],
        v: &[f32],
        half: &mut Vec<u16>,
    ) {
        let range = pos * kv_dim..(pos + seq) * kv_dim;
        for (buf, src) in [(&mut kv.keys, &k[..seq * kv_dim]), (&mut kv.values, &v[..seq * kv_dim])] {
            match buf {
                HostBuf::F32(dst) => dst[range.clone()].copy_from_slice(src),
                HostBuf::F16(dst) => {
                    let tmp = fit(half, src.len());
                    self.kernels.f32_to_f16(src, tmp);
                    dst[range.clone()].copy_from_slice(tmp);
                }
            }
        }
    }

    /// Causal attention of the `seq` new positions over the cache (which already holds them), one parallel step
    /// over (position, head) pairs; query heads share key/value heads in groups (GQA). With a sliding `window`,
    /// position p sees only the keys j with p - j < window.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        pool: &ThreadPool,
        kv: &HostLayer,
        pos: usize,
        seq: usize,
        window: Option<usize>,
        q: &[f32],
        out: &mut [f32],
    ) {
        if seq > 1 {
            return self.attention_blocked(pool, kv, pos, seq, window, q, out);
        }
        let c = &self.config;
        let (hd, n_heads) = (c.head_dim, c.n_heads);
        let (q_dim, kv_dim, group) = (n_heads * hd, c.n_kv_heads * hd, n_heads / c.n_kv_heads);
        let scale = c.attention_scale;
        let k = self.kernels;
        let out = SharedOut::new(out);
        pool.run(&|i, n| {
            let mut ts = lock(&self.threads[i.min(self.threads.len() - 1)]);
            for item in share(seq * n_heads, 1, i, n) {
                let (t, head) = (item / n_heads, item % n_heads);
                let visible = pos + t + 1;
                let first = window.map_or(0, |w| visible.saturating_sub(w));
                let kv_off = (head / group) * hd;
                let query = &q[t * q_dim + head * hd..t * q_dim + (head + 1) * hd];
                let scores = fit(&mut ts.scores, visible - first);
                for (j, s) in (first..).zip(scores.iter_mut()) {
                    let at = j * kv_dim + kv_off;
                    *s = scale
                        * match &kv.keys {
                            HostBuf::F16(keys) => k.dot_f16(&keys[at..at + hd], query),
                            HostBuf::F32(keys) => k.dot_f32(&keys[at..at + hd], query),
                        };
                }
                if let Some(cap) = c.attn_softcap {
                    ops::softcap(scores, cap);
                }
                ops::softmax(scores);
                // SAFETY: each (position, head) pair is one thread's alone.
                let o = unsafe { out.slice(t * q_dim + head * hd, hd) };
                o.fill(0.0);
                for (j, &p) in (first..).zip(scores.iter()) {
                    let at = j * kv_dim + kv_off;
                    match &kv.values {
                        HostBuf::F16(values) => k.axpy_f16(o, p, &values[at..at + hd]),
                        HostBuf::F32(values) => k.axpy_f32(o, p, &values[at..at + hd]),
                    }
                }
            }
        });
    }
}

/// Query positions per work item of prefill attention.
const QUERY_BLOCK: usize = 32;
/// Key rows transposed together into the value columns of prefill attention.
const TRANSPOSE_ROWS: usize = 16;
/// Prefill attention pads the keys a block sees to a multiple of this (with zero weights and zero values), so
/// that every product runs whole 16-wide steps: a query's result is then bit for bit the same whatever block and
/// whatever batch it came in, and a prompt gives the same logits however it is cut into batches (a ring cuts it
/// finer than one node does).
const KEY_PAD: usize = 16;

/// The bytes of `x`, as the F32 weight and activation formats of the kernels read them.
fn f32_bytes(x: &[f32]) -> &[u8] {
    // SAFETY: any f32 is 4 initialized bytes, and u8 has no alignment requirement.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast(), std::mem::size_of_val(x)) }
}

impl CpuModel {
    /// Attention for several positions (prefill), as two matrix products per work item on the kernels' f32 GEMM.
    ///
    /// A work item is one KV head and a block of query positions: the block's queries of every head sharing that
    /// KV head (scaled) form one matrix `Q`; the visible keys, converted to f32, form `K`, and the values,
    /// converted and transposed, `Vᵀ`. Then `S = Q Kᵀ`, a softmax over each row's visible prefix, and `O = S V`.
    /// Each key and value is read once per item, for `QUERY_BLOCK × group` queries. Items go to threads
    /// round-robin, so that the short early blocks of a causal prefill are spread over every thread.
    #[allow(clippy::too_many_arguments)]
    fn attention_blocked(
        &self,
        pool: &ThreadPool,
        kv: &HostLayer,
        pos: usize,
        seq: usize,
        window: Option<usize>,
        q: &[f32],
        out: &mut [f32],
    ) {
        let c = &self.config;
        let (hd, n_heads) = (c.head_dim, c.n_heads);
        let (q_dim, kv_dim, group) = (n_heads * hd, c.n_kv_heads * hd, n_heads / c.n_kv_heads);
        let scale = c.attention_scale;
        let k = self.kernels;
        let blocks = seq.div_ceil(QUERY_BLOCK);
        let out = SharedOut::new(out);
        let read_row = |buf: &HostBuf, at: usize, row: &mut [f32]| match buf {
            HostBuf::F16(v) => k.f16_to_f32(&v[at..at + hd], row),
            HostBuf::F32(v) => row.copy_from_slice(&v[at..at + hd]),
        };
        pool.run(&|i, n| {
            let mut ts = lock(&self.threads[i.min(self.threads.len() - 1)]);
            let ThreadScratch { scores, tile, keys, values_t, queries, .. } = &mut *ts;
            for item in (i..c.n_kv_heads * blocks).step_by(n.max(1)) {
                let (block, kv_head) = (item / c.n_kv_heads, item % c.n_kv_heads);
                let (t0, t1) = (block * QUERY_BLOCK, ((block + 1) * QUERY_BLOCK).min(seq));
                // Row (t - t0) * group + g of the item's matrices is query position t of head kv_head * group + g.
                let rows = (t1 - t0) * group;
                // Position t sees keys 0..=pos + t; the block's last query sees the most. The scores and values
                // are `padded` wide, zero beyond `width`.
                let width = pos + t1;
                let padded = width.next_multiple_of(KEY_PAD);
                let kv_off = kv_head * hd;

                let qm = fit(queries, rows * hd);
                for (t, dst) in (t0..t1).zip(qm.chunks_exact_mut(group * hd)) {
                    let src = &q[t * q_dim + kv_head * group * hd..][..group * hd];
                    dst.iter_mut().zip(src).for_each(|(d, s)| *d = s * scale);
                }
                let km = fit(keys, width * hd);
                for (j, row) in km.chunks_exact_mut(hd).enumerate() {
                    read_row(&kv.keys, j * kv_dim + kv_off, row);
                }
                // Vᵀ, (hd, padded): rows of values are read TRANSPOSE_ROWS at a time and written out as columns.
                let vt = fit(values_t, hd * padded);
                let buf = fit(tile, TRANSPOSE_ROWS * hd);
                for j0 in (0..width).step_by(TRANSPOSE_ROWS) {
                    let jn = TRANSPOSE_ROWS.min(width - j0);
                    for (j, row) in buf.chunks_exact_mut(hd).take(jn).enumerate() {
                        read_row(&kv.values, (j0 + j) * kv_dim + kv_off, row);
                    }
                    for (d, col) in vt.chunks_exact_mut(padded).enumerate() {
                        for (j, x) in col[j0..j0 + jn].iter_mut().enumerate() {
                            *x = buf[j * hd + d];
                        }
                    }
                }
                for col in vt.chunks_exact_mut(padded) {
                    col[width..].fill(0.0);
                }

                let sm = fit(scores, rows * padded);
                k.gemm(WeightType::F32, hd, f32_bytes(km), width, f32_bytes(qm), rows, sm, padded);
                for (r, row) in sm.chunks_exact_mut(padded).enumerate() {
                    let visible = pos + t0 + r / group + 1;
                    let first = window.map_or(0, |w| visible.saturating_sub(w));
                    if let Some(cap) = c.attn_softcap {
                        ops::softcap(&mut row[first..visible], cap);
                    }
                    ops::softmax(&mut row[first..visible]);
                    row[..first].fill(0.0);
                    row[visible..].fill(0.0);
                }
                // O = S V, then each position's `group` rows (the group's heads, one after another) to the output.
                let om = fit(tile, rows * hd);
                k.gemm(WeightType::F32, padded, f32_bytes(vt), hd, f32_bytes(sm), rows, om, hd);
                for (t, o) in (t0..t1).zip(om.chunks_exact(group * hd)) {
                    // SAFETY: each (position, head) pair belongs to one work item.
                    unsafe { out.slice(t * q_dim + kv_head * group * hd, group * hd) }.copy_from_slice(o);
                }
            }
        });
    }
}

/// What the CPU forward pass consumes: token ids, or hidden states of `positions * hidden` values (as f32, or as
/// little-endian f32 bytes).
pub(crate) enum CpuInput<'a> {
    Tokens(&'a [u32]),
    Hidden(&'a [f32]),
    HiddenBytes(&'a [u8]),
}

pub(crate) enum CpuOutput {
    Hidden(Vec<f32>),
    Logits(Vec<f32>),
}

fn load_layer(reader: &mut TensorReader<'_>, c: &ModelConfig, layer: usize) -> Result<Layer> {
    let name = |t: &str| format!("blk.{layer}.{t}");
    let (h, kv, q_dim) = (c.hidden_size, c.n_kv_heads * c.head_dim, c.n_heads * c.head_dim);
    let dense = |reader: &mut TensorReader<'_>, t: &str, n: usize| -> Result<Vec<f32>> {
        Ok(reader.dense(&name(t), &[n])?.to_vec1::<f32>()?)
    };
    let bias = |reader: &mut TensorReader<'_>, t: &str, n: usize| -> Result<Option<Vec<f32>>> {
        Ok(match reader.dense_if_present(&name(t), &[n])? {
            Some(t) => Some(t.to_vec1::<f32>()?),
            None => None,
        })
    };
    let hd = c.head_dim;
    let (q_norm, k_norm) = match c.qk_norm {
        true => (Some(dense(reader, "attn_q_norm.weight", hd)?), Some(dense(reader, "attn_k_norm.weight", hd)?)),
        false => (None, None),
    };
    let (post_attn_norm, post_ffn_norm) = match c.post_norms {
        true => {
            (Some(dense(reader, "post_attention_norm.weight", h)?), Some(dense(reader, "post_ffw_norm.weight", h)?))
        }
        false => (None, None),
    };
    Ok(Layer {
        window: c.window(layer),
        q_norm,
        k_norm,
        post_attn_norm,
        post_ffn_norm,
        attn_norm: dense(reader, "attn_norm.weight", h)?,
        q: Matrix::load(reader, &name("attn_q.weight"), q_dim, h)?,
        k: Matrix::load(reader, &name("attn_k.weight"), kv, h)?,
        v: Matrix::load(reader, &name("attn_v.weight"), kv, h)?,
        q_bias: bias(reader, "attn_q.bias", q_dim)?,
        k_bias: bias(reader, "attn_k.bias", kv)?,
        v_bias: bias(reader, "attn_v.bias", kv)?,
        o: Matrix::load(reader, &name("attn_output.weight"), h, q_dim)?,
        ffn_norm: dense(reader, "ffn_norm.weight", h)?,
        gate: Matrix::load(reader, &name("ffn_gate.weight"), c.ffn_size, h)?,
        up: Matrix::load(reader, &name("ffn_up.weight"), c.ffn_size, h)?,
        down: Matrix::load(reader, &name("ffn_down.weight"), h, c.ffn_size)?,
    })
}
