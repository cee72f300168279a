//! CPU matrix kernels of the engine: GGUF/ggml weight rows (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K,
//! Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4, read byte-for-byte as they lie in the file) dotted with
//! activations.
//!
//! As in ggml, an activation row is quantized once per matrix product to 8 bits ([`ActType`]), then integer SIMD
//! dot products run over every weight row ([`Kernels::gemv`] for one token, [`Kernels::gemm`] for a batch of
//! tokens). This module also owns the f16 helpers used by the KV cache and attention.
//!
//! Variants: [`Isa::Scalar`] (the reference, available everywhere), [`Isa::Avx2`] (x86_64 with AVX2+FMA+F16C,
//! detected at run time), [`Isa::Neon`] (aarch64) and [`Isa::NeonDot`] (aarch64 with the Armv8.2 dot-product
//! instructions, detected at run time). All kernels are single-threaded; callers split rows across threads
//! (`gemv` and `gemm` take any contiguous range of weight rows).
//!
//! Activation formats are private to the process:
//! - `Q8_32`: per 32 values `d: f32, s: f32 = d * Σq, qs: [i8; 32]` (40 bytes). Blocks go in pairs of 80 bytes
//!   `{ d0, d1, s0, s1, qs0[..16], qs1[..16], qs0[16..], qs1[16..] }` so that one 256-bit register holds the same
//!   half of two blocks (as Q4 nibbles unpack); an odd last block is stored plainly `{ d, s, qs }`.
//! - `Q8K`: per 256 values `{ d: f32, qs: [i8; 256], bsums: [i16; 16] }` (292 bytes, bsums = sums of each 16),
//! - `F32`: the native-endian f32 values.
//!
//! Quantization is ggml's, value for value (so that a product equals llama.cpp's up to the order of its sums):
//! `q = round(x * (127 / max|x|))`, half to even, and `d = max|x| / 127` rounded to f16 for `Q8_32` (ggml's
//! `block_q8_0`), `d = 1 / (127 / max|x|)` for `Q8K`; `d = 0, q = 0` for a zero block.

#[cfg(target_arch = "aarch64")]
mod aarch64_neon;
mod scalar;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86_avx2;

use std::sync::OnceLock;

/// Bytes of one `Q8_32` activation block (32 values).
const Q8_32_BYTES: usize = 40;
/// Bytes of one `Q8K` activation block (256 values).
const Q8K_BYTES: usize = 292;
/// Offset of `bsums` inside a `Q8K` block.
const Q8K_BSUMS: usize = 260;

/// Byte offsets of block `b` of a `Q8_32` row of `nb` blocks: `(d, s, qs[..16], qs[16..])`.
#[inline(always)]
fn q8_32_at(nb: usize, b: usize) -> (usize, usize, usize, usize) {
    let base = b / 2 * 2 * Q8_32_BYTES;
    if b.is_multiple_of(2) && b + 1 == nb {
        (base, base + 4, base + 8, base + 24)
    } else {
        let k = b % 2;
        (base + 4 * k, base + 8 + 4 * k, base + 16 + 16 * k, base + 48 + 16 * k)
    }
}

/// GGUF/ggml weight layouts, byte-identical to the file.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightType {
    F32,
    F16,
    Bf16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    /// `{ d: f16, qs: [u8; 16] }` per 32: value = d * IQ4NL_VALUES[nibble].
    Iq4Nl,
    /// `{ d: f16, scales_h: u16, scales_l: [u8; 4], qs: [u8; 128] }` per 256: eight sub-blocks of 32 (laid out as
    /// IQ4_NL's quants) with 6-bit scales ls, value = d * (ls - 32) * IQ4NL_VALUES[nibble].
    Iq4Xs,
    /// `{ e: u8, qs: [u8; 16] }` per 32: value = 2^(e - 128) * MXFP4_VALUES[nibble] (E8M0 scale, E2M1 codes doubled).
    Mxfp4,
}

/// ggml's `kvalues_iq4nl`: the 16 non-linear levels of IQ4_NL and IQ4_XS.
pub(crate) const IQ4NL_VALUES: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];
/// ggml's `kvalues_mxfp4`: the FP4 E2M1 values, doubled (so that they are integers; the scale is halved).
pub(crate) const MXFP4_VALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

impl WeightType {
    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            WeightType::F32 | WeightType::F16 | WeightType::Bf16 => 1,
            WeightType::Q4_0
            | WeightType::Q4_1
            | WeightType::Q5_0
            | WeightType::Q5_1
            | WeightType::Q8_0
            | WeightType::Iq4Nl
            | WeightType::Mxfp4 => 32,
            WeightType::Q2K
            | WeightType::Q3K
            | WeightType::Q4K
            | WeightType::Q5K
            | WeightType::Q6K
            | WeightType::Iq4Xs => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightType::F32 => 4,
            WeightType::F16 | WeightType::Bf16 => 2,
            WeightType::Q4_0 => 18,
            WeightType::Q4_1 => 20,
            WeightType::Q5_0 => 22,
            WeightType::Q5_1 => 24,
            WeightType::Q8_0 => 34,
            WeightType::Q2K => 84,
            WeightType::Q3K => 110,
            WeightType::Q4K => 144,
            WeightType::Q5K => 176,
            WeightType::Q6K => 210,
            WeightType::Iq4Nl => 18,
            WeightType::Iq4Xs => 136,
            WeightType::Mxfp4 => 17,
        }
    }

    /// Bytes of one row of `cols` elements (`cols` must be a multiple of [`Self::block_len`]).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_len() * self.block_bytes()
    }

    /// The activation format this weight type is dotted with: follows its block size (plain f32 for the float
    /// types, 32-value blocks for the 32-value formats, super-blocks for the 256-value ones).
    pub fn act_type(self) -> ActType {
        match self.block_len() {
            1 => ActType::F32,
            32 => ActType::Q8_32,
            _ => ActType::Q8K,
        }
    }
}

/// In-process activation formats (see the module docs).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActType {
    F32,
    Q8_32,
    Q8K,
}

impl ActType {
    /// Elements per block.
    fn block_len(self) -> usize {
        match self {
            ActType::F32 => 1,
            ActType::Q8_32 => 32,
            ActType::Q8K => 256,
        }
    }

    /// Bytes of one quantized row of `cols` values (`cols` a multiple of the block length).
    pub fn row_bytes(self, cols: usize) -> usize {
        match self {
            ActType::F32 => cols * 4,
            ActType::Q8_32 => cols / 32 * Q8_32_BYTES,
            ActType::Q8K => cols / 256 * Q8K_BYTES,
        }
    }
}

/// Instruction set a [`Kernels`] variant is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    /// aarch64 baseline NEON.
    Neon,
    /// aarch64 NEON with the Armv8.2 dot-product instructions (`sdot`, feature "dotprod").
    NeonDot,
}

/// Signature of the quantization kernels (one activation row, whole blocks).
type QuantizeFn = fn(&[f32], &mut [u8]);
/// `(ty, cols, w, n_rows, acts, n_tok, out, out_stride)`, lengths already checked.
type GemmFn = fn(WeightType, usize, &[u8], usize, &[u8], usize, &mut [f32], usize);

/// A set of kernels for one [`Isa`]; get one with [`Kernels::best`] or [`Kernels::supported`].
pub struct Kernels {
    isa: Isa,
    quantize_q8_32: QuantizeFn,
    quantize_q8k: QuantizeFn,
    gemv: fn(WeightType, usize, &[u8], &[u8], &mut [f32]),
    gemm: GemmFn,
    dequantize_row: fn(WeightType, &[u8], &mut [f32]),
    f32_to_f16: fn(&[f32], &mut [u16]),
    f16_to_f32: fn(&[u16], &mut [f32]),
    dot_f16: fn(&[u16], &[f32]) -> f32,
    dot_f32: fn(&[f32], &[f32]) -> f32,
    axpy_f16: fn(&mut [f32], f32, &[u16]),
    axpy_f32: fn(&mut [f32], f32, &[f32]),
}

static SCALAR: Kernels = Kernels {
    isa: Isa::Scalar,
    quantize_q8_32: scalar::quantize_q8_32,
    quantize_q8k: scalar::quantize_q8k,
    gemv: scalar::gemv,
    gemm: scalar::gemm,
    dequantize_row: scalar::dequantize_row,
    f32_to_f16: scalar::f32_to_f16_slice,
    f16_to_f32: scalar::f16_to_f32_slice,
    dot_f16: scalar::dot_f16,
    dot_f32: scalar::dot_f32,
    axpy_f16: scalar::axpy_f16,
    axpy_f32: scalar::axpy_f32,
};

impl Kernels {
    /// The fastest variant this CPU runs (detected once).
    pub fn best() -> &'static Kernels {
        static BEST: OnceLock<&'static Kernels> = OnceLock::new();
        BEST.get_or_init(|| Self::supported().pop().unwrap_or(&SCALAR))
    }

    /// The plain reference variant (every CPU runs it).
    pub fn scalar() -> &'static Kernels {
        &SCALAR
    }

    /// Every variant this CPU can run, scalar first, fastest last.
    pub fn supported() -> Vec<&'static Kernels> {
        #[allow(unused_mut)]
        let mut v = vec![&SCALAR];
        #[cfg(target_arch = "x86_64")]
        if x86_avx2::detected() {
            v.push(&x86_avx2::KERNELS);
        }
        #[cfg(target_arch = "aarch64")]
        {
            v.push(&aarch64_neon::KERNELS);
            if aarch64_neon::dotprod_detected() {
                v.push(&aarch64_neon::KERNELS_DOT);
            }
        }
        v
    }

    /// The instruction set of this variant.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Quantizes one activation row `x` (a multiple of the block length) into `out`
    /// (`act.row_bytes(x.len())` bytes). For [`ActType::F32`] the values are copied.
    pub fn quantize_row(&self, act: ActType, x: &[f32], out: &mut [u8]) {
        let n = x.len() / act.block_len() * act.block_len();
        debug_assert_eq!(n, x.len(), "row length is not a multiple of the block length");
        debug_assert!(out.len() >= act.row_bytes(n));
        // Release builds never go out of bounds: only whole blocks that fit in both slices are written.
        let n = n.min(out.len() / act.row_bytes(act.block_len()) * act.block_len());
        let (x, out) = (&x[..n], &mut out[..act.row_bytes(n)]);
        match act {
            ActType::F32 => {
                for (o, v) in out.chunks_exact_mut(4).zip(x) {
                    o.copy_from_slice(&v.to_ne_bytes());
                }
            }
            ActType::Q8_32 => (self.quantize_q8_32)(x, out),
            ActType::Q8K => (self.quantize_q8k)(x, out),
        }
    }

    /// `out[r] = dot(weight row r, activation)` for `r in 0..out.len()`; `w` holds `out.len()` rows of
    /// `ty.row_bytes(cols)` bytes; `act` is one row quantized to `ty.act_type()`.
    pub fn gemv(&self, ty: WeightType, cols: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
        let cols = cols / ty.block_len() * ty.block_len();
        let rb = ty.row_bytes(cols);
        debug_assert!(w.len() >= rb * out.len(), "weights too short");
        debug_assert!(act.len() >= ty.act_type().row_bytes(cols), "activation too short");
        if act.len() < ty.act_type().row_bytes(cols) {
            return;
        }
        let rows = w.len().checked_div(rb).map_or(out.len(), |n| n.min(out.len()));
        (self.gemv)(ty, cols, w, act, &mut out[..rows]);
    }

    /// `n_tok` activation rows (each `ty.act_type().row_bytes(cols)` bytes, consecutive in `acts`) against
    /// `n_rows` weight rows: `out[t * out_stride + r]` for `t < n_tok`, `r < n_rows`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        ty: WeightType,
        cols: usize,
        w: &[u8],
        n_rows: usize,
        acts: &[u8],
        n_tok: usize,
        out: &mut [f32],
        out_stride: usize,
    ) {
        let cols = cols / ty.block_len() * ty.block_len();
        let (rb, ab) = (ty.row_bytes(cols), ty.act_type().row_bytes(cols));
        debug_assert!(w.len() >= rb * n_rows, "weights too short");
        debug_assert!(acts.len() >= ab * n_tok, "activations too short");
        debug_assert!(n_tok == 0 || (out_stride >= n_rows && out.len() >= (n_tok - 1) * out_stride + n_rows));
        // Clamp to what the slices hold so that release builds stay in bounds.
        let n_rows = w.len().checked_div(rb).map_or(n_rows, |n| n.min(n_rows));
        let n_rows = n_rows.min(out_stride).min(out.len());
        let mut n_tok = acts.len().checked_div(ab).map_or(n_tok, |n| n.min(n_tok));
        while n_tok > 0 && (n_tok - 1) * out_stride + n_rows > out.len() {
            n_tok -= 1;
        }
        if n_rows == 0 || n_tok == 0 {
            return;
        }
        (self.gemm)(ty, cols, w, n_rows, acts, n_tok, out, out_stride);
    }

    /// Dequantizes one weight row (whole blocks) into `out` (`out.len()` values).
    pub fn dequantize_row(&self, ty: WeightType, w_row: &[u8], out: &mut [f32]) {
        let n = out.len() / ty.block_len() * ty.block_len();
        debug_assert_eq!(n, out.len());
        debug_assert!(w_row.len() >= ty.row_bytes(n));
        let n = n.min(w_row.len() / ty.block_bytes() * ty.block_len());
        (self.dequantize_row)(ty, &w_row[..ty.row_bytes(n)], &mut out[..n]);
    }

    /// IEEE half conversion, round to nearest even (`out.len() == x.len()`).
    pub fn f32_to_f16(&self, x: &[f32], out: &mut [u16]) {
        debug_assert_eq!(x.len(), out.len());
        let n = x.len().min(out.len());
        (self.f32_to_f16)(&x[..n], &mut out[..n]);
    }

    /// IEEE half to f32 (`out.len() == x.len()`).
    pub fn f16_to_f32(&self, x: &[u16], out: &mut [f32]) {
        debug_assert_eq!(x.len(), out.len());
        let n = x.len().min(out.len());
        (self.f16_to_f32)(&x[..n], &mut out[..n]);
    }

    /// `Σ a[i] * b[i]` with `a` in f16.
    pub fn dot_f16(&self, a: &[u16], b: &[f32]) -> f32 {
        debug_assert_eq!(a.len(), b.len());
        let n = a.len().min(b.len());
        (self.dot_f16)(&a[..n], &b[..n])
    }

    /// `Σ a[i] * b[i]`.
    pub fn dot_f32(&self, a: &[f32], b: &[f32]) -> f32 {
        debug_assert_eq!(a.len(), b.len());
        let n = a.len().min(b.len());
        (self.dot_f32)(&a[..n], &b[..n])
    }

    /// `y += alpha * x` with `x` in f16.
    pub fn axpy_f16(&self, y: &mut [f32], alpha: f32, x: &[u16]) {
        debug_assert_eq!(y.len(), x.len());
        let n = y.len().min(x.len());
        (self.axpy_f16)(&mut y[..n], alpha, &x[..n]);
    }

    /// `y += alpha * x`.
    pub fn axpy_f32(&self, y: &mut [f32], alpha: f32, x: &[f32]) {
        debug_assert_eq!(y.len(), x.len());
        let n = y.len().min(x.len());
        (self.axpy_f32)(&mut y[..n], alpha, &x[..n]);
    }
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels").field("isa", &self.isa).finish()
    }
}
