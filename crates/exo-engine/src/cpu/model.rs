//! `CpuModel`: one shard's weights held as the file stores them, and its forward pass on the CPU kernels.
//!
//! Per layer the work is: RMS norm, the q/k/v products (one parallel step), rotary embeddings, keys and values
//! written into the cache, attention over the cache (one parallel step: over heads for one position, over
//! (KV head, block of positions) pairs as two f32 matrix products for several), the output product, RMS norm, the
//! gate and up products with SwiGLU (one parallel step), and the down product. Each product quantizes its input
//! once; the pool splits the weight rows between threads.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::{Activation, Experts, ModelConfig};
use crate::cpu::ops;
use crate::cpu::pool::{self, share, ThreadPool};
use crate::error::{EngineError, Result};
use crate::gguf::TensorType;
use crate::kernels::{ActType, Kernels, WeightType};
use crate::kv_cache::{HostBuf, HostLayer, KvCache};
use crate::moe::Routing;
use crate::shard::{RopeFreqs, Shard};
use crate::weights::TensorReader;

/// Rows of a product are split between threads in multiples of this.
const ROW_ALIGN: usize = 8;
/// Rows per tile when several positions go through a product at once.
const GEMM_TILE_ROWS: usize = 64;

/// The CPU kernels' layout of each weight type the engine reads (all of them).
pub(crate) fn weight_type(kind: TensorType) -> WeightType {
    match kind {
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
    }
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
        Self::checked(name, kind, data, rows, cols)
    }

    /// The `count` matrices of a 3-D tensor (ggml dims `[cols, rows, count]`, such as a layer's experts) held
    /// as one matrix of `count * rows` rows; [`Matrix::part`] is one of them.
    fn load_stacked(reader: &mut TensorReader<'_>, name: &str, count: usize, rows: usize, cols: usize) -> Result<Self> {
        let (kind, data) = reader.raw_experts(name, count, rows, cols)?;
        Self::checked(name, kind, data, count * rows, cols)
    }

    /// A matrix stored as consecutive row blocks of the sizes `parts` (Phi-3's fused q/k/v and gate/up tensors),
    /// as one matrix per block.
    fn load_split(reader: &mut TensorReader<'_>, name: &str, parts: &[usize], cols: usize) -> Result<Vec<Self>> {
        let (kind, data) = reader.raw(name, &[parts.iter().sum(), cols])?;
        let whole = Self::checked(name, kind, data, parts.iter().sum(), cols)?;
        let mut first = 0;
        Ok(parts
            .iter()
            .map(|&rows| {
                let part = whole.data[first * whole.row_bytes..(first + rows) * whole.row_bytes].to_vec();
                first += rows;
                Self { data: part, rows, ..whole.shape() }
            })
            .collect())
    }

    /// This matrix's type and width, holding no rows.
    fn shape(&self) -> Self {
        Self { ty: self.ty, rows: 0, cols: self.cols, row_bytes: self.row_bytes, data: Vec::new() }
    }

    fn checked(name: &str, kind: TensorType, data: Vec<u8>, rows: usize, cols: usize) -> Result<Self> {
        let ty = weight_type(kind);
        if !cols.is_multiple_of(ty.block_len()) || data.len() != rows * ty.row_bytes(cols) {
            return Err(EngineError::InvalidShard(format!(
                "tensor {name}: {} bytes do not hold {rows} rows of {cols} {} values",
                data.len(),
                kind.name()
            )));
        }
        Ok(Self { ty, rows, cols, row_bytes: ty.row_bytes(cols), data })
    }

    fn view(&self) -> MatRef<'_> {
        MatRef { ty: self.ty, rows: self.rows, cols: self.cols, row_bytes: self.row_bytes, data: &self.data }
    }

    /// Matrix `i` of a stack of matrices of `rows` rows each.
    fn part(&self, i: usize, rows: usize) -> MatRef<'_> {
        let data = &self.data[i * rows * self.row_bytes..(i + 1) * rows * self.row_bytes];
        MatRef { ty: self.ty, rows, cols: self.cols, row_bytes: self.row_bytes, data }
    }
}

/// Rows of a [`Matrix`], borrowed: all of it, or one matrix of a stack.
#[derive(Clone, Copy)]
struct MatRef<'a> {
    ty: WeightType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: &'a [u8],
}

impl MatRef<'_> {
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
    o_bias: Option<Vec<f32>>,
    /// Per-head attention sink logits (gpt-oss).
    sinks: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    ffn: Ffn,
}

/// A layer's feed-forward weights.
enum Ffn {
    /// `down(act(gate x) * up x)`.
    Dense { gate: Matrix, up: Matrix, down: Matrix },
    /// A mixture of experts: the router's `count` rows score the experts; `gate` and `up` stack `count` matrices
    /// of `ffn_size` rows, `down` `count` matrices of `hidden` rows.
    Experts { experts: Experts, router: Matrix, gate: Matrix, up: Matrix, down: Matrix, biases: Option<ExpertBiases> },
}

/// gpt-oss's biases of the router and of each expert's products.
struct ExpertBiases {
    /// (experts).
    router: Vec<f32>,
    /// (experts, expert width).
    gate: Vec<f32>,
    up: Vec<f32>,
    /// (experts, hidden).
    down: Vec<f32>,
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
    /// Mixture-of-experts layers: the router's logits (positions, experts), the positions grouped by expert, the
    /// quantized inputs gathered in that order for each activation type, and the experts' outputs in that order.
    router_logits: Vec<f32>,
    routing: Routing,
    gathered: [Vec<u8>; 3],
    expert_out: Vec<f32>,
    /// The experts' products of a parallel step: empty between steps, kept for its allocation ([`recycle`]).
    products: Vec<Product<'static>>,
}

/// `v`'s allocation, emptied, for elements of another lifetime: collecting an emptied `Vec` through a map keeps
/// its buffer when the element types have one layout, as here (the same type but for lifetimes), so no step
/// allocates once the buffer has grown.
fn recycle<'b>(mut v: Vec<Product<'_>>) -> Vec<Product<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!("the vector was emptied")).collect()
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

/// One product of a parallel step: `out[t * m.rows + r] = m.row(r) · input[t]` for the `seq` quantized rows of
/// `input`.
struct Product<'a> {
    m: MatRef<'a>,
    input: &'a [u8],
    seq: usize,
    out: SharedOut,
}

impl<'a> Product<'a> {
    /// `m` against the first `seq` rows of `acts` quantized for it (by [`CpuModel::quantize`]).
    fn new(m: MatRef<'a>, acts: &'a [Vec<u8>; 3], seq: usize, out: SharedOut) -> Self {
        let a = m.ty.act_type();
        Self { m, input: &acts[act_index(a)][..seq * a.row_bytes(m.cols)], seq, out }
    }
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
                    k.dequantize_row(emb.ty, emb.view().rows(id as usize..id as usize + 1), row);
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
            (self.inv_freq.global_for(cache.max_len()), &mut s.cos, &mut s.sin),
            (&self.inv_freq.local[..], &mut s.cos_local, &mut s.sin_local),
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
            let outs = [
                SharedOut::new(fit(&mut s.q, seq * q_dim)),
                SharedOut::new(fit(&mut s.k, seq * kv_dim)),
                SharedOut::new(fit(&mut s.v, seq * kv_dim)),
            ];
            self.quantize(&mut s.acts, &s.xn[..seq * h], h, &[layer.q.ty, layer.k.ty, layer.v.ty]);
            let [q_out, k_out, v_out] = outs;
            let products = [
                Product::new(layer.q.view(), &s.acts, seq, q_out),
                Product::new(layer.k.view(), &s.acts, seq, k_out),
                Product::new(layer.v.view(), &s.acts, seq, v_out),
            ];
            self.run_products(pool, &products, None);
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
            let heads = Heads { window: layer.window, sinks: layer.sinks.as_deref() };
            self.attention(pool, kv, pos, seq, heads, &s.q, fit(&mut s.attn, seq * q_dim));

            let out = SharedOut::new(fit(&mut s.out, seq * h));
            self.quantize(&mut s.acts, &s.attn[..seq * q_dim], q_dim, &[layer.o.ty]);
            self.run_products(pool, &[Product::new(layer.o.view(), &s.acts, seq, out)], None);
            if let Some(b) = &layer.o_bias {
                for row in s.out[..seq * h].chunks_exact_mut(h) {
                    row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
                }
            }
            if let Some(w) = &layer.post_attn_norm {
                self.norm_in_place(&mut s.out[..seq * h], w);
            }
            s.x[..seq * h].iter_mut().zip(&s.out[..seq * h]).for_each(|(x, o)| *x += o);

            // Feed-forward.
            self.norm(&s.x[..seq * h], &layer.ffn_norm, fit(&mut s.xn, seq * h));
            match &layer.ffn {
                Ffn::Dense { gate, up, down } => self.dense_ffn(pool, s, seq, [gate, up, down]),
                Ffn::Experts { experts, router, gate, up, down, biases } => {
                    self.expert_ffn(pool, s, seq, *experts, router, [gate, up, down], biases.as_ref())
                }
            }
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
                self.quantize(&mut s.acts, &s.xn[..h], h, &[head.ty]);
                self.run_products(pool, &[Product::new(head.view(), &s.acts, 1, SharedOut::new(&mut logits))], None);
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

    /// Quantizes `x` (rows of `cols` values) once for each activation type that matrices of `types` take.
    fn quantize(&self, acts: &mut [Vec<u8>; 3], x: &[f32], cols: usize, types: &[WeightType]) {
        let mut done = [false; 3];
        for ty in types {
            let a = ty.act_type();
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

    /// Runs `products` in one parallel step: each thread takes the same share of every product's rows and then
    /// calls `after` with each product's index and that share.
    fn run_products(
        &self,
        pool: &ThreadPool,
        products: &[Product<'_>],
        after: Option<&(dyn Fn(usize, std::ops::Range<usize>) + Sync)>,
    ) {
        let k = self.kernels;
        pool.run(&|i, n| {
            let mut mine = None;
            for p in products {
                let (m, seq) = (&p.m, p.seq);
                let rows = share(m.rows, ROW_ALIGN, i, n);
                if rows.is_empty() {
                    continue;
                }
                if seq == 1 {
                    // SAFETY: each thread's row share is disjoint.
                    let out = unsafe { p.out.slice(rows.start, rows.len()) };
                    k.gemv(m.ty, m.cols, m.rows(rows.clone()), p.input, out);
                } else {
                    let mut ts = lock(mine.get_or_insert_with(|| &self.threads[i.min(self.threads.len() - 1)]));
                    for start in rows.clone().step_by(GEMM_TILE_ROWS) {
                        let end = (start + GEMM_TILE_ROWS).min(rows.end);
                        let tile = fit(&mut ts.tile, seq * (end - start));
                        k.gemm(m.ty, m.cols, m.rows(start..end), end - start, p.input, seq, tile, end - start);
                        for t in 0..seq {
                            // SAFETY: rows start..end of position t belong to this thread alone.
                            let out = unsafe { p.out.slice(t * m.rows + start, end - start) };
                            out.copy_from_slice(&tile[t * (end - start)..(t + 1) * (end - start)]);
                        }
                    }
                }
            }
            if let Some(after) = after {
                for (index, p) in products.iter().enumerate() {
                    after(index, share(p.m.rows, ROW_ALIGN, i, n));
                }
            }
        });
    }

    /// The feed-forward layer of `s.xn` into `s.out`: the gate and up products with the activation (one
    /// parallel step), then the down product.
    fn dense_ffn(&self, pool: &ThreadPool, s: &mut Scratch, seq: usize, [gate, up, down]: [&Matrix; 3]) {
        let (h, ffn) = (self.config.hidden_size, gate.rows);
        let (gate_out, up_out) =
            (SharedOut::new(fit(&mut s.gate, seq * ffn)), SharedOut::new(fit(&mut s.up, seq * ffn)));
        self.quantize(&mut s.acts, &s.xn[..seq * h], h, &[gate.ty, up.ty]);
        let products =
            [Product::new(gate.view(), &s.acts, seq, gate_out), Product::new(up.view(), &s.acts, seq, up_out)];
        // Each thread combines the gate and up rows it computed.
        let activation = self.config.activation;
        let combine = |index: usize, rows: std::ops::Range<usize>| {
            if index != 0 {
                return;
            }
            for t in 0..seq {
                // SAFETY: `rows` is this thread's share, disjoint from every other thread's.
                let (g, u) = unsafe {
                    (gate_out.slice(t * ffn + rows.start, rows.len()), up_out.slice(t * ffn + rows.start, rows.len()))
                };
                activate(activation, g, u);
            }
        };
        self.run_products(pool, &products, Some(&combine));

        let out = SharedOut::new(fit(&mut s.out, seq * h));
        self.quantize(&mut s.acts, &s.gate[..seq * ffn], ffn, &[down.ty]);
        self.run_products(pool, &[Product::new(down.view(), &s.acts, seq, out)], None);
    }

    /// A mixture-of-experts layer of `s.xn` into `s.out`. The router's product gives each position's experts
    /// ([`Routing`]); each chosen expert then runs once over the positions that chose it, all experts' gate and up
    /// products in one parallel step and all their down products in another, and each position sums its
    /// experts' outputs by weight. Only the chosen experts' rows are read.
    #[allow(clippy::too_many_arguments)]
    fn expert_ffn(
        &self,
        pool: &ThreadPool,
        s: &mut Scratch,
        seq: usize,
        experts: Experts,
        router: &Matrix,
        [gate, up, down]: [&Matrix; 3],
        biases: Option<&ExpertBiases>,
    ) {
        let (h, ffn) = (self.config.hidden_size, experts.ffn_size);
        let logits = SharedOut::new(fit(&mut s.router_logits, seq * experts.count));
        self.quantize(&mut s.acts, &s.xn[..seq * h], h, &[router.ty, gate.ty, up.ty]);
        self.run_products(pool, &[Product::new(router.view(), &s.acts, seq, logits)], None);
        if let Some(b) = biases {
            for row in s.router_logits[..seq * experts.count].chunks_exact_mut(experts.count) {
                row.iter_mut().zip(&b.router).for_each(|(l, b)| *l += b);
            }
        }
        s.routing.route(&s.router_logits[..seq * experts.count], experts.count, experts.used);
        let Scratch { routing, acts, gathered, gate: gate_buf, up: up_buf, expert_out, out, products: spare, .. } = s;
        let slots = routing.slots.len();

        // Each slot's input row, in slot order, for each activation type the gate and up products take.
        for ty in [gate.ty, up.ty] {
            let (a, i) = (ty.act_type(), act_index(ty.act_type()));
            let rb = a.row_bytes(h);
            let dst = fit(&mut gathered[i], slots * rb);
            for (row, &(t, _)) in dst.chunks_exact_mut(rb).zip(&routing.slots) {
                row.copy_from_slice(&acts[i][t * rb..(t + 1) * rb]);
            }
        }
        let (gate_out, up_out) = (SharedOut::new(fit(gate_buf, slots * ffn)), SharedOut::new(fit(up_buf, slots * ffn)));
        let expert_input = |m: MatRef<'_>, first: usize, n: usize| {
            let rb = m.ty.act_type().row_bytes(m.cols);
            &gathered[act_index(m.ty.act_type())][first * rb..(first + n) * rb]
        };
        let mut products = recycle(std::mem::take(spare));
        for &(e, first, n) in &routing.groups {
            for (m, out) in [(gate.part(e, ffn), gate_out), (up.part(e, ffn), up_out)] {
                // SAFETY: only the pointer is taken here; the parallel step writes each expert's rows once.
                let out = SharedOut::new(unsafe { out.slice(first * ffn, n * ffn) });
                products.push(Product { m, input: expert_input(m, first, n), seq: n, out });
            }
        }
        let activation = self.config.activation;
        let groups = &routing.groups;
        let combine = |index: usize, rows: std::ops::Range<usize>| {
            if !index.is_multiple_of(2) {
                return;
            }
            let (e, first, n) = groups[index / 2];
            for slot in first..first + n {
                // SAFETY: `rows` is this thread's share of this expert's rows, disjoint from every other thread's.
                let (g, u) = unsafe {
                    (
                        gate_out.slice(slot * ffn + rows.start, rows.len()),
                        up_out.slice(slot * ffn + rows.start, rows.len()),
                    )
                };
                if let Some(b) = biases {
                    let at = e * ffn + rows.start..e * ffn + rows.end;
                    g.iter_mut().zip(&b.gate[at.clone()]).for_each(|(g, b)| *g += b);
                    u.iter_mut().zip(&b.up[at]).for_each(|(u, b)| *u += b);
                }
                activate(activation, g, u);
            }
        };
        self.run_products(pool, &products, Some(&combine));
        let spared: Vec<Product<'static>> = recycle(products);

        // The down products read the combined rows of each slot.
        self.quantize(gathered, &gate_buf[..slots * ffn], ffn, &[down.ty]);
        let down_out = SharedOut::new(fit(expert_out, slots * h));
        let mut products = recycle(spared);
        for &(e, first, n) in &routing.groups {
            let m = down.part(e, h);
            let rb = m.ty.act_type().row_bytes(ffn);
            let input = &gathered[act_index(m.ty.act_type())][first * rb..(first + n) * rb];
            // SAFETY: as above.
            let out = SharedOut::new(unsafe { down_out.slice(first * h, n * h) });
            products.push(Product { m, input, seq: n, out });
        }
        self.run_products(pool, &products, None);
        *spare = recycle(products);

        let out = fit(out, seq * h);
        out.fill(0.0);
        for &(e, first, n) in &routing.groups {
            let bias = biases.map(|b| &b.down[e * h..(e + 1) * h]);
            for (&(t, w), y) in routing.slots[first..first + n].iter().zip(expert_out[first * h..].chunks_exact(h)) {
                let o = &mut out[t * h..(t + 1) * h];
                match bias {
                    Some(b) => o.iter_mut().zip(y).zip(b).for_each(|((o, y), b)| *o += w * (y + b)),
                    None => o.iter_mut().zip(y).for_each(|(o, y)| *o += w * y),
                }
            }
        }
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
        heads: Heads<'_>,
        q: &[f32],
        out: &mut [f32],
    ) {
        if seq > 1 {
            return self.attention_blocked(pool, kv, pos, seq, heads, q, out);
        }
        let Heads { window, sinks } = heads;
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
                match sinks {
                    Some(s) => ops::softmax_with_sink(scores, s[head]),
                    None => ops::softmax(scores),
                }
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

/// What a layer's attention heads see beyond the causal mask: a sliding window, and per-head sink logits.
#[derive(Clone, Copy)]
struct Heads<'a> {
    window: Option<usize>,
    sinks: Option<&'a [f32]>,
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
        heads: Heads<'_>,
        q: &[f32],
        out: &mut [f32],
    ) {
        let Heads { window, sinks } = heads;
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
                    match sinks {
                        Some(s) => ops::softmax_with_sink(&mut row[first..visible], s[kv_head * group + r % group]),
                        None => ops::softmax(&mut row[first..visible]),
                    }
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

/// `act(gate) * up` into `gate`.
fn activate(activation: Activation, gate: &mut [f32], up: &[f32]) {
    match activation {
        Activation::Silu => ops::swiglu(gate, up),
        Activation::GeluTanh => ops::geglu(gate, up),
        Activation::SwigluOai => ops::swiglu_oai(gate, up),
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
    // Phi-3 fuses q, k and v into one tensor, and the gate and up matrices into `ffn_up` (gate rows first).
    let (q, k, v) = if reader.has(&name("attn_qkv.weight")) {
        let [q, k, v]: [Matrix; 3] = Matrix::load_split(reader, &name("attn_qkv.weight"), &[q_dim, kv, kv], h)?
            .try_into()
            .map_err(|_| EngineError::InvalidShard("a fused q/k/v tensor splits in three".into()))?;
        (q, k, v)
    } else {
        (
            Matrix::load(reader, &name("attn_q.weight"), q_dim, h)?,
            Matrix::load(reader, &name("attn_k.weight"), kv, h)?,
            Matrix::load(reader, &name("attn_v.weight"), kv, h)?,
        )
    };
    Ok(Layer {
        window: c.window(layer),
        q_norm,
        k_norm,
        post_attn_norm,
        post_ffn_norm,
        attn_norm: dense(reader, "attn_norm.weight", h)?,
        q,
        k,
        v,
        q_bias: bias(reader, "attn_q.bias", q_dim)?,
        k_bias: bias(reader, "attn_k.bias", kv)?,
        v_bias: bias(reader, "attn_v.bias", kv)?,
        o: Matrix::load(reader, &name("attn_output.weight"), h, q_dim)?,
        o_bias: bias(reader, "attn_output.bias", h)?,
        sinks: match c.attn_sinks {
            true => Some(dense(reader, "attn_sinks.weight", c.n_heads)?),
            false => None,
        },
        ffn_norm: dense(reader, c.ffn_norm_tensor(), h)?,
        ffn: match c.experts {
            None => {
                let (gate, up) = if reader.has(&name("ffn_gate.weight")) {
                    (
                        Matrix::load(reader, &name("ffn_gate.weight"), c.ffn_size, h)?,
                        Matrix::load(reader, &name("ffn_up.weight"), c.ffn_size, h)?,
                    )
                } else {
                    let [gate, up]: [Matrix; 2] =
                        Matrix::load_split(reader, &name("ffn_up.weight"), &[c.ffn_size, c.ffn_size], h)?
                            .try_into()
                            .map_err(|_| EngineError::InvalidShard("a fused gate/up tensor splits in two".into()))?;
                    (gate, up)
                };
                Ffn::Dense { gate, up, down: Matrix::load(reader, &name("ffn_down.weight"), h, c.ffn_size)? }
            }
            Some(e) => Ffn::Experts {
                experts: e,
                router: Matrix::load(reader, &name("ffn_gate_inp.weight"), e.count, h)?,
                gate: Matrix::load_stacked(reader, &name("ffn_gate_exps.weight"), e.count, e.ffn_size, h)?,
                up: Matrix::load_stacked(reader, &name("ffn_up_exps.weight"), e.count, e.ffn_size, h)?,
                down: Matrix::load_stacked(reader, &name("ffn_down_exps.weight"), e.count, h, e.ffn_size)?,
                biases: match reader.has(&name("ffn_gate_inp.bias")) {
                    false => None,
                    true => {
                        let mut stack = |t: &str, rows: usize| -> Result<Vec<f32>> {
                            Ok(reader.dense(&name(t), &[e.count, rows])?.flatten_all()?.to_vec1::<f32>()?)
                        };
                        Some(ExpertBiases {
                            gate: stack("ffn_gate_exps.bias", e.ffn_size)?,
                            up: stack("ffn_up_exps.bias", e.ffn_size)?,
                            down: stack("ffn_down_exps.bias", h)?,
                            router: dense(reader, "ffn_gate_inp.bias", e.count)?,
                        })
                    }
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The experts' product lists reuse one buffer from step to step: the per-token loop does not allocate.
    #[test]
    fn recycled_product_lists_keep_their_buffer() {
        let data = vec![0u8; 64];
        let m = MatRef { ty: WeightType::F32, rows: 4, cols: 4, row_bytes: 16, data: &data };
        let mut out = vec![0f32; 4];
        let mut v: Vec<Product<'_>> = recycle(Vec::<Product<'static>>::with_capacity(8));
        let (ptr, cap) = (v.as_ptr() as usize, v.capacity());
        v.push(Product { m, input: &data[..16], seq: 1, out: SharedOut::new(&mut out) });
        let spare: Vec<Product<'static>> = recycle(v);
        assert_eq!((spare.as_ptr() as usize, spare.capacity(), spare.len()), (ptr, cap, 0));
        assert!(cap >= 8);
    }
}
