//! AVX2 + FMA + F16C kernels (x86_64). The `unsafe fn`s carry `#[target_feature]`; the safe wrappers are only
//! reachable through [`KERNELS`], which [`super::Kernels::supported`] hands out only when [`detected`] holds.
//!
//! Inner loops are `#[inline(always)]` const-generic tiles (R weight rows x T tokens) inlined into the
//! target-feature drivers, so they get AVX2 code generation without `-C target-cpu`.

use super::{
    q8_32_at, scalar, Isa, Kernels, WeightType, IQ4NL_VALUES, MXFP4_VALUES, Q8K_BSUMS, Q8K_BYTES, Q8_32_BYTES,
};
use core::arch::x86_64::*;
use scalar::E8M0_HALF;

/// Whether this CPU runs these kernels.
pub(super) fn detected() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

pub(super) static KERNELS: Kernels = Kernels {
    isa: Isa::Avx2,
    quantize_q8_32,
    quantize_q8k,
    gemv,
    gemm,
    dequantize_row: scalar::dequantize_row,
    f32_to_f16,
    f16_to_f32,
    dot_f16,
    dot_f32,
    axpy_f16,
    axpy_f32,
};

// ---- safe wrappers (sound because KERNELS is only handed out when `detected()`) ----

fn quantize_q8_32(x: &[f32], out: &mut [u8]) {
    // SAFETY: AVX2/FMA/F16C were detected; only whole blocks inside both slices are touched.
    unsafe { quant_q8_32(x, out) }
}

fn quantize_q8k(x: &[f32], out: &mut [u8]) {
    // SAFETY: as above.
    unsafe { quant_q8k(x, out) }
}

fn gemv(ty: WeightType, cols: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
    // The tiles read `cols` worth of blocks from each row/activation pointer; the public wrapper checked
    // that `w` holds `out.len()` rows and `act` one activation row.
    let nb = cols / ty.block_len();
    // SAFETY: features detected; bounds as described above.
    unsafe {
        match ty {
            WeightType::F32 => gemv_f32(cols, w, act, out),
            WeightType::F16 => gemv_f16(cols, w, act, out),
            WeightType::Bf16 => gemv_bf16(cols, w, act, out),
            WeightType::Q4_0 => gemv_q4_0(nb, w, act, out),
            WeightType::Q4_1 => gemv_q4_1(nb, w, act, out),
            WeightType::Q5_0 => gemv_q5_0(nb, w, act, out),
            WeightType::Q5_1 => gemv_q5_1(nb, w, act, out),
            WeightType::Q8_0 => gemv_q8_0(nb, w, act, out),
            WeightType::Q2K => gemv_q2k(nb, w, act, out),
            WeightType::Q3K => gemv_q3k(nb, w, act, out),
            WeightType::Q4K => gemv_q4k(nb, w, act, out),
            WeightType::Q5K => gemv_q5k(nb, w, act, out),
            WeightType::Q6K => gemv_q6k(nb, w, act, out),
            WeightType::Iq4Nl => gemv_iq4nl(nb, w, act, out),
            WeightType::Iq4Xs => gemv_iq4xs(nb, w, act, out),
            WeightType::Mxfp4 => gemv_mxfp4(nb, w, act, out),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn gemm(ty: WeightType, cols: usize, w: &[u8], n_rows: usize, acts: &[u8], n_tok: usize, o: &mut [f32], os: usize) {
    let nb = cols / ty.block_len();
    // SAFETY: features detected; the public wrapper checked every slice against n_rows, n_tok and out_stride.
    unsafe {
        match ty {
            WeightType::F32 => gemm_f32(cols, w, n_rows, acts, n_tok, o, os),
            WeightType::F16 => gemm_f16(cols, w, n_rows, acts, n_tok, o, os),
            WeightType::Bf16 => gemm_bf16(cols, w, n_rows, acts, n_tok, o, os),
            WeightType::Q4_0 => gemm_q4_0(nb, w, n_rows, acts, n_tok, o, os),
            WeightType::Q4_1 => gemm_q4_1(nb, w, n_rows, acts, n_tok, o, os),
            WeightType::Q5_0 => gemm_q5_0(nb, w, n_rows, acts, n_tok, o, os),
            WeightType::Q5_1 => gemm_q5_1(nb, w, n_rows, acts, n_tok, o, os),
            WeightType::Q8_0 => gemm_q8_0(nb, w, n_rows, acts, n_tok, o, os),
            WeightType::Q2K => gemm_q2k(nb, w, n_rows, acts, n_tok, o, os),
            WeightType::Q3K => gemm_q3k(nb, w, n_rows, acts, n_tok, o, os),
            WeightType::Q4K => gemm_q4k(nb, w, n_rows, acts, n_tok, o, os),
            WeightType::Q5K => gemm_q5k(nb, w, n_rows, acts, n_tok, o, os),
            WeightType::Q6K => gemm_q6k(nb, w, n_rows, acts, n_tok, o, os),
            WeightType::Iq4Nl => gemm_iq4nl(nb, w, n_rows, acts, n_tok, o, os),
            WeightType::Iq4Xs => gemm_iq4xs(nb, w, n_rows, acts, n_tok, o, os),
            WeightType::Mxfp4 => gemm_mxfp4(nb, w, n_rows, acts, n_tok, o, os),
        }
    }
}

fn f32_to_f16(x: &[f32], out: &mut [u16]) {
    // SAFETY: features detected; lengths equal (checked by the public wrapper).
    unsafe { f32_to_f16_avx(x, out) }
}

fn f16_to_f32(x: &[u16], out: &mut [f32]) {
    // SAFETY: as above.
    unsafe { f16_to_f32_avx(x, out) }
}

fn dot_f16(a: &[u16], b: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { dot_f16_avx(a, b) }
}

fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { dot_f32_avx(a, b) }
}

fn axpy_f16(y: &mut [f32], alpha: f32, x: &[u16]) {
    // SAFETY: as above.
    unsafe { axpy_f16_avx(y, alpha, x) }
}

fn axpy_f32(y: &mut [f32], alpha: f32, x: &[f32]) {
    // SAFETY: as above.
    unsafe { axpy_f32_avx(y, alpha, x) }
}

// ---- small helpers ----

#[inline(always)]
unsafe fn ld_f16(p: *const u8) -> f32 {
    let h = (p as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

/// Software prefetch of weight bytes a fixed distance ahead (the hardware prefetcher alone leaves the
/// multi-row streams latency-bound). Prefetches never fault, so running past the slice end is harmless.
#[inline(always)]
unsafe fn prefetch(p: *const u8) {
    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PF_DIST) as *const i8);
}

const PF_DIST: usize = 4096;

#[inline(always)]
unsafe fn ld_f32(p: *const u8) -> f32 {
    (p as *const f32).read_unaligned()
}

#[inline(always)]
unsafe fn ldu(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

#[inline(always)]
unsafe fn ldu128(p: *const u8) -> __m128i {
    _mm_loadu_si128(p as *const __m128i)
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

// ---- activation quantization ----

/// Eight values times `iscale`, rounded half to even, as i32.
#[inline(always)]
unsafe fn q8(x: *const f32, iscale: __m256) -> __m256i {
    let v = _mm256_mul_ps(_mm256_loadu_ps(x), iscale);
    _mm256_cvttps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v))
}

/// `max|x|` over `n` values, and the multiplier `127 / max|x|` (0 for an all-zero block, giving q = 0).
#[inline(always)]
unsafe fn scale_of(x: *const f32, n: usize) -> (f32, __m256) {
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for i in (0..n).step_by(8) {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x.add(i))));
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    (amax, _mm256_set1_ps(if amax == 0.0 { 0.0 } else { 127.0 / amax }))
}

/// 32 values quantized with multiplier `dv`: the int8 bytes in order, and the sum of q as i32 lanes.
#[inline(always)]
unsafe fn quant32(x: *const f32, dv: __m256) -> (__m256i, __m256i) {
    let (q0, q1, q2, q3) = (q8(x, dv), q8(x.add(8), dv), q8(x.add(16), dv), q8(x.add(24), dv));
    let sum = _mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3));
    let p = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
    (_mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)), sum)
}

#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s4 = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b01_00_11_10>(s4));
    _mm_cvtsi128_si32(_mm_add_epi32(s4, _mm_shuffle_epi32::<0b10_11_00_01>(s4)))
}

/// Quantizes whole blocks of 32 into the pair-interleaved `Q8_32` layout.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quant_q8_32(x: &[f32], out: &mut [u8]) {
    let nb = (x.len() / 32).min(out.len() / Q8_32_BYTES);
    let op = out.as_mut_ptr();
    for b in 0..nb {
        let xp = x.as_ptr().add(32 * b);
        let (amax, dv) = scale_of(xp, 32);
        let d = scalar::q8_32_scale(amax);
        let (q, sum) = quant32(xp, dv);
        let (od, os, lo, hi) = q8_32_at(nb, b);
        (op.add(od) as *mut f32).write_unaligned(d);
        (op.add(os) as *mut f32).write_unaligned(d * hsum_i32(sum) as f32);
        _mm_storeu_si128(op.add(lo) as *mut __m128i, _mm256_castsi256_si128(q));
        _mm_storeu_si128(op.add(hi) as *mut __m128i, _mm256_extracti128_si256::<1>(q));
    }
}

/// Quantizes whole blocks of 256 into `Q8K`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quant_q8k(x: &[f32], out: &mut [u8]) {
    let ones = _mm256_set1_epi8(1);
    for (xb, ob) in x.chunks_exact(256).zip(out.chunks_exact_mut(Q8K_BYTES)) {
        let (xp, op) = (xb.as_ptr(), ob.as_mut_ptr());
        let (amax, dv) = scale_of(xp, 256);
        (op as *mut f32).write_unaligned(scalar::q8k_scale(amax));
        for i in 0..8 {
            let (q, _) = quant32(xp.add(32 * i), dv);
            _mm256_storeu_si256(op.add(4 + 32 * i) as *mut __m256i, q);
            // Sums of each 16: pairwise i16 sums, then the two halves of each 128-bit lane.
            let p = _mm256_maddubs_epi16(ones, q);
            let p = _mm256_add_epi16(p, _mm256_srli_si256::<8>(p));
            let p = _mm256_add_epi16(p, _mm256_srli_si256::<4>(p));
            let p = _mm256_add_epi16(p, _mm256_srli_si256::<2>(p));
            let (s0, s1) = (_mm256_extract_epi16::<0>(p) as i16, _mm256_extract_epi16::<8>(p) as i16);
            (op.add(Q8K_BSUMS + 4 * i) as *mut i16).write_unaligned(s0);
            (op.add(Q8K_BSUMS + 4 * i + 2) as *mut i16).write_unaligned(s1);
        }
    }
}

// ---- drivers: gemv row by row (or over pairs of rows), gemm over 1 row x 4 token tiles ----

/// Defines `$gemv(nb, w, act, out)` and `$gemm(nb, w, n_rows, acts, n_tok, out, stride)` from a tile
/// `$tile::<R, T>(rows, acts, nb) -> [[f32; T]; R]` over blocks of `$wb` weight and `$ab` activation bytes.
/// `$pairs`: gemv takes two rows at a time. For the quantized types one row at a time streams faster from
/// memory (a single sequential stream for the prefetchers; decode is memory-bound), for the float types two
/// rows give the FMA chains the parallelism they need.
macro_rules! drivers {
    ($gemv:ident, $gemm:ident, $tile:ident, $wb:expr, $ab:expr, $pairs:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $gemv(nb: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
            let (rb, wp, a, n) = (nb * $wb, w.as_ptr(), [act.as_ptr()], out.len());
            if !$pairs {
                for (r, o) in out.iter_mut().enumerate() {
                    *o = $tile::<1, 1>([wp.add(r * rb)], a, nb)[0][0];
                }
                return;
            }
            let mut pairs = out.chunks_exact_mut(2);
            for (i, o) in (&mut pairs).enumerate() {
                let r = $tile::<2, 1>([wp.add(2 * i * rb), wp.add((2 * i + 1) * rb)], a, nb);
                o[0] = r[0][0];
                o[1] = r[1][0];
            }
            if let Some(o) = pairs.into_remainder().first_mut() {
                *o = $tile::<1, 1>([wp.add((n - 1) * rb)], a, nb)[0][0];
            }
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $gemm(nb: usize, w: &[u8], n_rows: usize, acts: &[u8], n_tok: usize, out: &mut [f32], os: usize) {
            let (rb, ab) = (nb * $wb, nb * $ab);
            let (wp, ap, op) = (w.as_ptr(), acts.as_ptr(), out.as_mut_ptr());
            // Blocks of rows (~64 KB of weights, kept in L2) swept by each group of 4 tokens (kept in L1).
            let rows_blk = ((64 << 10) / rb.max(1)).max(1);
            let mut r0 = 0;
            while r0 < n_rows {
                let r1 = (r0 + rows_blk).min(n_rows);
                let mut t = 0;
                while t + 4 <= n_tok {
                    let a = [ap.add(t * ab), ap.add((t + 1) * ab), ap.add((t + 2) * ab), ap.add((t + 3) * ab)];
                    for r in r0..r1 {
                        let v = $tile::<1, 4>([wp.add(r * rb)], a, nb);
                        for (k, &x) in v[0].iter().enumerate() {
                            *op.add((t + k) * os + r) = x;
                        }
                    }
                    t += 4;
                }
                for r in r0..r1 {
                    let row = [wp.add(r * rb)];
                    match n_tok - t {
                        3 => {
                            let v =
                                $tile::<1, 3>(row, [ap.add(t * ab), ap.add((t + 1) * ab), ap.add((t + 2) * ab)], nb);
                            for (k, &x) in v[0].iter().enumerate() {
                                *op.add((t + k) * os + r) = x;
                            }
                        }
                        2 => {
                            let v = $tile::<1, 2>(row, [ap.add(t * ab), ap.add((t + 1) * ab)], nb);
                            for (k, &x) in v[0].iter().enumerate() {
                                *op.add((t + k) * os + r) = x;
                            }
                        }
                        1 => *op.add(t * os + r) = $tile::<1, 1>(row, [ap.add(t * ab)], nb)[0][0],
                        _ => {}
                    }
                }
                r0 = r1;
            }
        }
    };
}

// ---- Q4_0 / Q4_1 / Q5_0 / Q5_1: unsigned 4- or 5-bit quants x int8, offsets through the activation sums ----

/// `[x0 x4 | x1 x4]` from the first two lanes of `v`.
#[inline(always)]
unsafe fn lanes2(v: __m128) -> __m256 {
    _mm256_permutevar8x32_ps(_mm256_castps128_ps256(v), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1))
}

/// Two floats (8 bytes) into the low half of a register.
#[inline(always)]
unsafe fn ld_2f32(p: *const u8) -> __m128 {
    _mm_castpd_ps(_mm_load_sd(p as *const f64))
}

/// Eight bytes `k`, as one 64-bit lane.
const fn bytes8(k: i64) -> i64 {
    k * 0x0101_0101_0101_0101
}

/// `0x10` in each byte whose bit is set: byte `k` of each 128-bit lane tests bit `k % 8` of byte `ctrl[k]` of
/// the same lane of `v` (the fifth bit of 5-bit quants).
#[inline(always)]
unsafe fn bit5(v: __m256i, ctrl: __m256i) -> __m256i {
    let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let x = _mm256_and_si256(_mm256_shuffle_epi8(v, ctrl), bits);
    _mm256_and_si256(_mm256_cmpeq_epi8(x, bits), _mm256_set1_epi8(0x10))
}

/// `set` in each byte of `v` that has the bit `m` set, 0 in the others.
#[inline(always)]
unsafe fn bit_at(v: __m256i, m: u8, set: i8) -> __m256i {
    let m = _mm256_set1_epi8(m as i8);
    _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, m), m), _mm256_set1_epi8(set))
}

/// Q4_0 (value = d*(q-8)), Q4_1 (`Q1`, value = d*q + m), Q5_0 (`Q5`, d*(q-16)) or Q5_1 (`Q1` and `Q5`) against
/// Q8_32; a 5-bit quant is a nibble and bit j of the block's 32-bit `qh` word.
/// Two blocks at a time: one register holds the low nibbles of both, another the high nibbles, matching the
/// pair-interleaved activations; lane 0 sums block 2p, lane 1 block 2p + 1.
#[inline(always)]
unsafe fn tile_q45<const Q1: bool, const Q5: bool, const R: usize, const T: usize>(
    w: [*const u8; R],
    a: [*const u8; T],
    nb: usize,
) -> [[f32; T]; R] {
    // Layouts: { d, [m], [qh: u32], qs: [u8; 16] }.
    let qhoff = if Q1 { 4 } else { 2 };
    let qoff = qhoff + if Q5 { 4 } else { 0 };
    let bb = qoff + 16;
    let zero = if Q5 { -16.0 } else { -8.0 };
    let mask = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    // Bytes of qh that hold the fifth bits of elements 0..16 (one block per lane) and of elements 16..32.
    let h_lo = _mm256_setr_epi64x(bytes8(0), bytes8(1), bytes8(0), bytes8(1));
    let h_hi = _mm256_setr_epi64x(bytes8(2), bytes8(3), bytes8(2), bytes8(3));
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut off = [[_mm_setzero_ps(); T]; R];
    for p in 0..nb / 2 {
        for r in 0..R {
            let wb = w[r].add(2 * p * bb);
            prefetch(wb);
            // [d0, d1] and the offsets [m0, m1] (m = -8d or -16d without a min field).
            let (dw, m) = if Q1 {
                let h0 = (wb as *const u32).read_unaligned() as u64;
                let h1 = (wb.add(bb) as *const u32).read_unaligned() as u64;
                let v = _mm_cvtph_ps(_mm_cvtsi64_si128((h0 | (h1 << 32)) as i64));
                (_mm_shuffle_ps::<0b10_00_10_00>(v, v), _mm_shuffle_ps::<0b11_01_11_01>(v, v))
            } else {
                let h0 = (wb as *const u16).read_unaligned() as u32;
                let h1 = (wb.add(bb) as *const u16).read_unaligned() as u32;
                let v = _mm_cvtph_ps(_mm_cvtsi32_si128((h0 | (h1 << 16)) as i32));
                (v, _mm_mul_ps(v, _mm_set1_ps(zero)))
            };
            let q =
                _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(ldu128(wb.add(qoff))), ldu128(wb.add(bb + qoff)));
            let mut lo = _mm256_and_si256(q, mask);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask);
            if Q5 {
                let qh0 = (wb.add(qhoff) as *const i32).read_unaligned();
                let qh1 = (wb.add(bb + qhoff) as *const i32).read_unaligned();
                let qh = _mm256_set_m128i(_mm_set1_epi32(qh1), _mm_set1_epi32(qh0));
                lo = _mm256_or_si256(lo, bit5(qh, h_lo));
                hi = _mm256_or_si256(hi, bit5(qh, h_hi));
            }
            for t in 0..T {
                let ab = a[t].add(2 * p * Q8_32_BYTES);
                // Each maddubs pair is within 2 * 31 * 127, so two of them add in i16.
                let s16 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(lo, ldu(ab.add(16))),
                    _mm256_maddubs_epi16(hi, ldu(ab.add(48))),
                );
                let sc = lanes2(_mm_mul_ps(dw, ld_2f32(ab)));
                acc[r][t] = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(_mm256_madd_epi16(s16, ones)), acc[r][t]);
                off[r][t] = _mm_fmadd_ps(m, ld_2f32(ab.add(8)), off[r][t]);
            }
        }
    }
    let mut res = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            let o = off[r][t];
            res[r][t] = hsum(acc[r][t]) + _mm_cvtss_f32(_mm_add_ss(o, _mm_movehdup_ps(o)));
        }
    }
    if nb % 2 == 1 {
        // The odd last block: plain activation layout { d, s, qs }.
        let b = nb - 1;
        for r in 0..R {
            let wb = w[r].add(b * bb);
            let dw = ld_f16(wb);
            let m = if Q1 { ld_f16(wb.add(2)) } else { zero * dw };
            let q = ldu128(wb.add(qoff));
            let mut qv = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(q), q), mask);
            if Q5 {
                let qh = _mm256_set1_epi32((wb.add(qhoff) as *const i32).read_unaligned());
                qv = _mm256_or_si256(qv, bit5(qh, _mm256_setr_epi64x(bytes8(0), bytes8(1), bytes8(2), bytes8(3))));
            }
            for t in 0..T {
                let ab = a[t].add(b * Q8_32_BYTES);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(qv, ldu(ab.add(8))), ones);
                res[r][t] += dw * ld_f32(ab) * hsum(_mm256_cvtepi32_ps(p)) + m * ld_f32(ab.add(4));
            }
        }
    }
    res
}

#[inline(always)]
unsafe fn tile_q4_0<const R: usize, const T: usize>(w: [*const u8; R], a: [*const u8; T], nb: usize) -> [[f32; T]; R] {
    tile_q45::<false, false, R, T>(w, a, nb)
}

#[inline(always)]
unsafe fn tile_q4_1<const R: usize, const T: usize>(w: [*const u8; R], a: [*const u8; T], nb: usize) -> [[f32; T]; R] {
    tile_q45::<true, false, R, T>(w, a, nb)
}

#[inline(always)]
unsafe fn tile_q5_0<const R: usize, const T: usize>(w: [*const u8; R], a: [*const u8; T], nb: usize) -> [[f32; T]; R] {
    tile_q45::<false, true, R, T>(w, a, nb)
}

#[inline(always)]
unsafe fn tile_q5_1<const R: usize, const T: usize>(w: [*const u8; R], a: [*const u8; T], nb: usize) -> [[f32; T]; R] {
    tile_q45::<true, true, R, T>(w, a, nb)
}

drivers!(gemv_q4_0, gemm_q4_0, tile_q4_0, 18, Q8_32_BYTES, false);
drivers!(gemv_q4_1, gemm_q4_1, tile_q4_1, 20, Q8_32_BYTES, false);
drivers!(gemv_q5_0, gemm_q5_0, tile_q5_0, 22, Q8_32_BYTES, false);
drivers!(gemv_q5_1, gemm_q5_1, tile_q5_1, 24, Q8_32_BYTES, false);

// ---- Q8_0 ----

/// int8 x int8 pair sums as i32: |w| as unsigned (128 for -128 is fine), the sign moved onto the activation.
#[inline(always)]
unsafe fn dot_i8(aw: __m256i, w: __m256i, a: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(a, w)), _mm256_set1_epi16(1))
}

/// Q8_0 against Q8_32, two blocks at a time: the weights are regrouped by halves to match the activations.
#[inline(always)]
unsafe fn tile_q8_0<const R: usize, const T: usize>(w: [*const u8; R], a: [*const u8; T], nb: usize) -> [[f32; T]; R] {
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for p in 0..nb / 2 {
        for r in 0..R {
            let wb = w[r].add(2 * p * 34);
            prefetch(wb);
            let h0 = (wb as *const u16).read_unaligned() as u32;
            let h1 = (wb.add(34) as *const u16).read_unaligned() as u32;
            let dw = _mm_cvtph_ps(_mm_cvtsi32_si128((h0 | (h1 << 16)) as i32));
            let (w0, w1) = (ldu(wb.add(2)), ldu(wb.add(36)));
            let lo = _mm256_permute2x128_si256::<0x20>(w0, w1);
            let hi = _mm256_permute2x128_si256::<0x31>(w0, w1);
            let (alo, ahi) = (_mm256_abs_epi8(lo), _mm256_abs_epi8(hi));
            for t in 0..T {
                let ab = a[t].add(2 * p * Q8_32_BYTES);
                let s = _mm256_add_epi32(dot_i8(alo, lo, ldu(ab.add(16))), dot_i8(ahi, hi, ldu(ab.add(48))));
                let sc = lanes2(_mm_mul_ps(dw, ld_2f32(ab)));
                acc[r][t] = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(s), acc[r][t]);
            }
        }
    }
    let mut res = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            res[r][t] = hsum(acc[r][t]);
        }
    }
    if nb % 2 == 1 {
        let b = nb - 1;
        for r in 0..R {
            let wb = w[r].add(b * 34);
            let q = ldu(wb.add(2));
            for t in 0..T {
                let ab = a[t].add(b * Q8_32_BYTES);
                let p = dot_i8(_mm256_abs_epi8(q), q, ldu(ab.add(8)));
                res[r][t] += ld_f16(wb) * ld_f32(ab) * hsum(_mm256_cvtepi32_ps(p));
            }
        }
    }
    res
}

drivers!(gemv_q8_0, gemm_q8_0, tile_q8_0, 34, Q8_32_BYTES, false);

// ---- Q4_K / Q5_K ----

/// Shuffle control broadcasting 16-bit word `j` (0..8) of each 128-bit lane.
#[inline(always)]
unsafe fn word_bcast(j: i8) -> __m256i {
    let lo = 2 * j;
    _mm256_set1_epi16(((lo as i16 + 1) << 8) | lo as i16)
}

/// Q4_K, or Q5_K (`Q5`: the same header, then `qh: [u8; 32]` holding the fifth bit of element i in bit i / 32
/// of byte i % 32, then the nibbles) against Q8K.
#[inline(always)]
unsafe fn tile_q45k<const Q5: bool, const R: usize, const T: usize>(
    w: [*const u8; R],
    a: [*const u8; T],
    nb: usize,
) -> [[f32; T]; R] {
    let (bb, qoff) = if Q5 { (176, 48) } else { (144, 16) };
    let mask = _mm256_set1_epi8(0x0f);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for b in 0..nb {
        for r in 0..R {
            let wb = w[r].add(b * bb);
            prefetch(wb);
            prefetch(wb.wrapping_add(64));
            prefetch(wb.wrapping_add(128));
            let (d, dmin) = (ld_f16(wb), ld_f16(wb.add(2)));
            // Unpack the 6-bit scales and mins (get_scale_min_k4 packing) with 32-bit word operations.
            let s0 = (wb.add(4) as *const u32).read_unaligned();
            let s1 = (wb.add(8) as *const u32).read_unaligned();
            let s2 = (wb.add(12) as *const u32).read_unaligned();
            let sc03 = s0 & 0x3f3f_3f3f;
            let sc47 = (s2 & 0x0f0f_0f0f) | (((s0 >> 6) & 0x0303_0303) << 4);
            let mn03 = s1 & 0x3f3f_3f3f;
            let mn47 = ((s2 >> 4) & 0x0f0f_0f0f) | (((s1 >> 6) & 0x0303_0303) << 4);
            let scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_setr_epi32(sc03 as i32, sc47 as i32, 0, 0)));
            let mins = _mm_cvtepu8_epi16(_mm_setr_epi32(mn03 as i32, mn47 as i32, 0, 0));
            let mut sumi = [_mm256_setzero_si256(); T];
            let qh = if Q5 { ldu(wb.add(16)) } else { _mm256_setzero_si256() };
            for c in 0..4 {
                let v = ldu(wb.add(qoff + 32 * c));
                let mut lo = _mm256_and_si256(v, mask);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                if Q5 {
                    lo = _mm256_or_si256(lo, bit_at(qh, 1 << (2 * c), 0x10));
                    hi = _mm256_or_si256(hi, bit_at(qh, 2 << (2 * c), 0x10));
                }
                let sc_lo = _mm256_shuffle_epi8(scales, word_bcast(2 * c as i8));
                let sc_hi = _mm256_shuffle_epi8(scales, word_bcast(2 * c as i8 + 1));
                for t in 0..T {
                    let ap = a[t].add(b * Q8K_BYTES + 4 + 64 * c);
                    let pl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, ldu(ap)), sc_lo);
                    let ph = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, ldu(ap.add(32))), sc_hi);
                    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(pl, ph));
                }
            }
            for t in 0..T {
                let ab = a[t].add(b * Q8K_BYTES);
                let da = ld_f32(ab);
                // Sums of 32 activations per sub-block, dotted with the mins.
                let bs = ab.add(Q8K_BSUMS);
                let bs32 = _mm_hadd_epi16(ldu128(bs), ldu128(bs.add(16)));
                let pm = _mm256_set_m128i(_mm_setzero_si128(), _mm_madd_epi16(mins, bs32));
                let x = _mm256_fmadd_ps(_mm256_set1_ps(d * da), _mm256_cvtepi32_ps(sumi[t]), acc[r][t]);
                acc[r][t] = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * da), _mm256_cvtepi32_ps(pm), x);
            }
        }
    }
    let mut res = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            res[r][t] = hsum(acc[r][t]);
        }
    }
    res
}

#[inline(always)]
unsafe fn tile_q4k<const R: usize, const T: usize>(w: [*const u8; R], a: [*const u8; T], nb: usize) -> [[f32; T]; R] {
    tile_q45k::<false, R, T>(w, a, nb)
}

#[inline(always)]
unsafe fn tile_q5k<const R: usize, const T: usize>(w: [*const u8; R], a: [*const u8; T], nb: usize) -> [[f32; T]; R] {
    tile_q45k::<true, R, T>(w, a, nb)
}

drivers!(gemv_q4k, gemm_q4k, tile_q4k, 144, Q8K_BYTES, false);
drivers!(gemv_q5k, gemm_q5k, tile_q5k, 176, Q8K_BYTES, false);

// ---- Q2_K / Q3_K: 2-bit fields of 32-byte quarters, a scale per 16 ----

/// Shuffle control: word `2k` in the lower lane, word `2k + 1` in the upper lane, each broadcast.
#[inline(always)]
unsafe fn pair_bcast(k: i16) -> __m256i {
    let (lo, hi) = (4 * k, 4 * k + 2);
    _mm256_setr_m128i(_mm_set1_epi16(((lo + 1) << 8) | lo), _mm_set1_epi16(((hi + 1) << 8) | hi))
}

/// The `n`-th 2-bit field (0..4) of every byte of `v`.
#[inline(always)]
unsafe fn crumbs(v: __m256i, n: usize) -> __m256i {
    _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(2 * n as i32)), _mm256_set1_epi8(3))
}

/// Q2_K (value = d * (s & 15) * q - dmin * (s >> 4), one scale byte s per 16) or Q3_K (`Q3`, value =
/// d * scale * (q - 4) with a signed 6-bit scale per 16, the third bit of q in `hmask`) against Q8K.
/// Each 128-half has 32 quant bytes; its quarter k (32 elements) is bits 2k..2k+2 of them, the lower lane
/// taking scale 8h + 2k, the upper lane 8h + 2k + 1.
#[inline(always)]
unsafe fn tile_q23k<const Q3: bool, const R: usize, const T: usize>(
    w: [*const u8; R],
    a: [*const u8; T],
    nb: usize,
) -> [[f32; T]; R] {
    let (bb, qoff) = if Q3 { (110, 32) } else { (84, 16) };
    let ctrls = [pair_bcast(0), pair_bcast(1), pair_bcast(2), pair_bcast(3)];
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for b in 0..nb {
        for r in 0..R {
            let wb = w[r].add(b * bb);
            prefetch(wb);
            prefetch(wb.wrapping_add(64));
            // The 16 scales (as i8) and, for Q2_K, the 16 mins (as i16); d and dmin.
            let (sc8, mins, d, dmin) = if Q3 {
                let s0 = (wb.add(96) as *const u32).read_unaligned();
                let s1 = (wb.add(100) as *const u32).read_unaligned();
                let s2 = (wb.add(104) as *const u32).read_unaligned();
                let (m4, m2) = (0x0f0f_0f0f, 0x0303_0303);
                let sc03 = (s0 & m4) | ((s2 & m2) << 4);
                let sc47 = (s1 & m4) | (((s2 >> 2) & m2) << 4);
                let sc8b = ((s0 >> 4) & m4) | (((s2 >> 4) & m2) << 4);
                let sccf = ((s1 >> 4) & m4) | (((s2 >> 6) & m2) << 4);
                let v = _mm_setr_epi32(sc03 as i32, sc47 as i32, sc8b as i32, sccf as i32);
                (_mm_sub_epi8(v, _mm_set1_epi8(32)), _mm256_setzero_si256(), ld_f16(wb.add(108)), 0.0)
            } else {
                let s = ldu128(wb);
                let m4 = _mm_set1_epi8(0x0f);
                let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(s), m4));
                (_mm_and_si128(s, m4), mins, ld_f16(wb.add(80)), ld_f16(wb.add(82)))
            };
            let hm = if Q3 { ldu(wb) } else { _mm256_setzero_si256() };
            let mut sumi = [_mm256_setzero_si256(); T];
            for h in 0..2 {
                let sch = if h == 0 { sc8 } else { _mm_srli_si128::<8>(sc8) };
                let scb = _mm256_broadcastsi128_si256(if Q3 { _mm_cvtepi8_epi16(sch) } else { _mm_cvtepu8_epi16(sch) });
                let q = ldu(wb.add(qoff + 32 * h));
                for (k, &ctrl) in ctrls.iter().enumerate() {
                    let mut qk = crumbs(q, k);
                    if Q3 {
                        qk = _mm256_or_si256(qk, bit_at(hm, 1 << (4 * h + k), 4));
                    }
                    let sc = _mm256_shuffle_epi8(scb, ctrl);
                    for t in 0..T {
                        let ap = a[t].add(b * Q8K_BYTES + 4 + 128 * h + 32 * k);
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(qk, ldu(ap)), sc);
                        sumi[t] = _mm256_add_epi32(sumi[t], p);
                    }
                }
            }
            for t in 0..T {
                let ab = a[t].add(b * Q8K_BYTES);
                let da = ld_f32(ab);
                let bsums = ldu(ab.add(Q8K_BSUMS));
                if Q3 {
                    // The -4 offset: 4 * Σ scale_j * bsum_j.
                    let off = _mm256_slli_epi32::<2>(_mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), bsums));
                    let s = _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[t], off));
                    acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(d * da), s, acc[r][t]);
                } else {
                    let pm = _mm256_madd_epi16(mins, bsums);
                    let x = _mm256_fmadd_ps(_mm256_set1_ps(d * da), _mm256_cvtepi32_ps(sumi[t]), acc[r][t]);
                    acc[r][t] = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * da), _mm256_cvtepi32_ps(pm), x);
                }
            }
        }
    }
    let mut res = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            res[r][t] = hsum(acc[r][t]);
        }
    }
    res
}

#[inline(always)]
unsafe fn tile_q2k<const R: usize, const T: usize>(w: [*const u8; R], a: [*const u8; T], nb: usize) -> [[f32; T]; R] {
    tile_q23k::<false, R, T>(w, a, nb)
}

#[inline(always)]
unsafe fn tile_q3k<const R: usize, const T: usize>(w: [*const u8; R], a: [*const u8; T], nb: usize) -> [[f32; T]; R] {
    tile_q23k::<true, R, T>(w, a, nb)
}

drivers!(gemv_q2k, gemm_q2k, tile_q2k, 84, Q8K_BYTES, false);
drivers!(gemv_q3k, gemm_q3k, tile_q3k, 110, Q8K_BYTES, false);

// ---- Q6_K ----

#[inline(always)]
unsafe fn tile_q6k<const R: usize, const T: usize>(w: [*const u8; R], a: [*const u8; T], nb: usize) -> [[f32; T]; R] {
    let m4 = _mm256_set1_epi8(0x0f);
    let m2 = _mm256_set1_epi8(0x03);
    // Per 32 quants (a quarter k of a 128-half): the lower lane takes scale 2k, the upper lane scale 2k + 1.
    let ctrls = [pair_bcast(0), pair_bcast(1), pair_bcast(2), pair_bcast(3)];
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for b in 0..nb {
        for r in 0..R {
            let wb = w[r].add(b * 210);
            prefetch(wb);
            prefetch(wb.wrapping_add(64));
            prefetch(wb.wrapping_add(128));
            prefetch(wb.wrapping_add(192));
            let d = ld_f16(wb.add(208));
            let sc8 = ldu128(wb.add(192));
            let sc16 = _mm256_cvtepi8_epi16(sc8);
            let mut sumi = [_mm256_setzero_si256(); T];
            for h in 0..2 {
                let scb =
                    _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(if h == 0 { sc8 } else { _mm_srli_si128::<8>(sc8) }));
                let ql0 = ldu(wb.add(64 * h));
                let ql1 = ldu(wb.add(64 * h + 32));
                let qh = ldu(wb.add(128 + 32 * h));
                for (k, &ctrl) in ctrls.iter().enumerate() {
                    let q = match k {
                        0 => {
                            _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16::<4>(_mm256_and_si256(qh, m2)))
                        }
                        1 => _mm256_or_si256(
                            _mm256_and_si256(ql1, m4),
                            _mm256_slli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0x0c))),
                        ),
                        2 => _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                            _mm256_and_si256(qh, _mm256_set1_epi8(0x30)),
                        ),
                        _ => _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                            _mm256_srli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0xc0u8 as i8))),
                        ),
                    };
                    let sc = _mm256_shuffle_epi8(scb, ctrl);
                    for t in 0..T {
                        let ap = a[t].add(b * Q8K_BYTES + 4 + 128 * h + 32 * k);
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, ldu(ap)), sc);
                        sumi[t] = _mm256_add_epi32(sumi[t], p);
                    }
                }
            }
            for t in 0..T {
                let ab = a[t].add(b * Q8K_BYTES);
                // The -32 offset: 32 * Σ scale_j * bsum_j.
                let off = _mm256_slli_epi32::<5>(_mm256_madd_epi16(sc16, ldu(ab.add(Q8K_BSUMS))));
                let s = _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[t], off));
                acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(d * ld_f32(ab)), s, acc[r][t]);
            }
        }
    }
    let mut res = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            res[r][t] = hsum(acc[r][t]);
        }
    }
    res
}

drivers!(gemv_q6k, gemm_q6k, tile_q6k, 210, Q8K_BYTES, false);

// ---- IQ4_NL / MXFP4 / IQ4_XS: 4-bit indices into a 16-entry signed table ----

/// A 16-entry i8 table in both 128-bit lanes, for `_mm256_shuffle_epi8` lookups by nibble.
#[inline(always)]
unsafe fn table16(t: &[i8; 16]) -> __m256i {
    _mm256_broadcastsi128_si256(_mm_loadu_si128(t.as_ptr() as *const __m128i))
}

/// IQ4_NL (`{ d: f16, qs: [u8; 16] }`, value = d * IQ4NL_VALUES[nibble]) against Q8_32. Two blocks at a time as
/// in [`tile_q45`]: the low nibbles of both blocks in one register, the high nibbles in another, looked up in the
/// table; the products are signed x signed as in Q8_0 (every table value is within ±127, so `maddubs` does not
/// saturate).
#[inline(always)]
unsafe fn tile_iq4nl<const R: usize, const T: usize>(w: [*const u8; R], a: [*const u8; T], nb: usize) -> [[f32; T]; R] {
    let table = table16(&IQ4NL_VALUES);
    let mask = _mm256_set1_epi8(0x0f);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for p in 0..nb / 2 {
        for r in 0..R {
            let wb = w[r].add(2 * p * 18);
            prefetch(wb);
            let h0 = (wb as *const u16).read_unaligned() as u32;
            let h1 = (wb.add(18) as *const u16).read_unaligned() as u32;
            let dw = _mm_cvtph_ps(_mm_cvtsi32_si128((h0 | (h1 << 16)) as i32));
            let q = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(ldu128(wb.add(2))), ldu128(wb.add(20)));
            let lo = _mm256_shuffle_epi8(table, _mm256_and_si256(q, mask));
            let hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask));
            let (alo, ahi) = (_mm256_abs_epi8(lo), _mm256_abs_epi8(hi));
            for t in 0..T {
                let ab = a[t].add(2 * p * Q8_32_BYTES);
                let s = _mm256_add_epi32(dot_i8(alo, lo, ldu(ab.add(16))), dot_i8(ahi, hi, ldu(ab.add(48))));
                let sc = lanes2(_mm_mul_ps(dw, ld_2f32(ab)));
                acc[r][t] = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(s), acc[r][t]);
            }
        }
    }
    let mut res = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            res[r][t] = hsum(acc[r][t]);
        }
    }
    if nb % 2 == 1 {
        // The odd last block: plain activation layout { d, s, qs }.
        let b = nb - 1;
        for r in 0..R {
            let wb = w[r].add(b * 18);
            let q = ldu128(wb.add(2));
            let v = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(q), q), mask));
            let av = _mm256_abs_epi8(v);
            for t in 0..T {
                let ab = a[t].add(b * Q8_32_BYTES);
                let p = dot_i8(av, v, ldu(ab.add(8)));
                res[r][t] += ld_f16(wb) * ld_f32(ab) * hsum(_mm256_cvtepi32_ps(p));
            }
        }
    }
    res
}

/// MXFP4's table plus 12: unsigned (0..=24), so that the codes go straight into `maddubs` as Q4_0's nibbles do,
/// the 12 coming back through the activation sums.
const MXFP4_PLUS_12: [i8; 16] = {
    let mut t = [0i8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = MXFP4_VALUES[i] + 12;
        i += 1;
    }
    t
};

/// MXFP4 (`{ e: u8, qs: [u8; 16] }`, value = 2^(e - 128) * MXFP4_VALUES[nibble]) against Q8_32, as [`tile_q45`]
/// with the nibbles looked up in [`MXFP4_PLUS_12`] and the offset -12 * scale. Each `maddubs` pair is within
/// 2 * 24 * 127, so the low- and high-nibble products add in i16.
#[inline(always)]
unsafe fn tile_mxfp4<const R: usize, const T: usize>(w: [*const u8; R], a: [*const u8; T], nb: usize) -> [[f32; T]; R] {
    let table = table16(&MXFP4_PLUS_12);
    let mask = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut off = [[_mm_setzero_ps(); T]; R];
    for p in 0..nb / 2 {
        for r in 0..R {
            let wb = w[r].add(2 * p * 17);
            prefetch(wb);
            let dw = _mm_setr_ps(E8M0_HALF[*wb as usize], E8M0_HALF[*wb.add(17) as usize], 0.0, 0.0);
            let m = _mm_mul_ps(dw, _mm_set1_ps(-12.0));
            let q = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(ldu128(wb.add(1))), ldu128(wb.add(18)));
            let lo = _mm256_shuffle_epi8(table, _mm256_and_si256(q, mask));
            let hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask));
            for t in 0..T {
                let ab = a[t].add(2 * p * Q8_32_BYTES);
                let s16 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(lo, ldu(ab.add(16))),
                    _mm256_maddubs_epi16(hi, ldu(ab.add(48))),
                );
                let sc = lanes2(_mm_mul_ps(dw, ld_2f32(ab)));
                acc[r][t] = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(_mm256_madd_epi16(s16, ones)), acc[r][t]);
                off[r][t] = _mm_fmadd_ps(m, ld_2f32(ab.add(8)), off[r][t]);
            }
        }
    }
    let mut res = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            let o = off[r][t];
            res[r][t] = hsum(acc[r][t]) + _mm_cvtss_f32(_mm_add_ss(o, _mm_movehdup_ps(o)));
        }
    }
    if nb % 2 == 1 {
        let b = nb - 1;
        for r in 0..R {
            let wb = w[r].add(b * 17);
            let dw = E8M0_HALF[*wb as usize];
            let q = ldu128(wb.add(1));
            let v = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(q), q), mask));
            for t in 0..T {
                let ab = a[t].add(b * Q8_32_BYTES);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(v, ldu(ab.add(8))), ones);
                res[r][t] += dw * ld_f32(ab) * hsum(_mm256_cvtepi32_ps(p)) - 12.0 * dw * ld_f32(ab.add(4));
            }
        }
    }
    res
}

drivers!(gemv_iq4nl, gemm_iq4nl, tile_iq4nl, 18, Q8_32_BYTES, false);
drivers!(gemv_mxfp4, gemm_mxfp4, tile_mxfp4, 17, Q8_32_BYTES, false);

/// The eight 6-bit IQ4_XS scales `ls` as the bytes of a u64 (sub-block s in byte s), from `scales_h` (2 bits each)
/// and `scales_l` (4 bits each), by spreading the bit fields apart with shifts and masks.
#[inline(always)]
fn iq4xs_scales_x8(scales_h: u16, scales_l: u32) -> u64 {
    let mut lo = scales_l as u64;
    lo = (lo | (lo << 16)) & 0x0000_ffff_0000_ffff;
    lo = (lo | (lo << 8)) & 0x00ff_00ff_00ff_00ff;
    lo = (lo | (lo << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    let mut hi = scales_h as u64;
    hi = (hi | (hi << 24)) & 0x0000_00ff_0000_00ff;
    hi = (hi | (hi << 12)) & 0x000f_000f_000f_000f;
    hi = (hi | (hi << 6)) & 0x0303_0303_0303_0303;
    lo | (hi << 4)
}

/// IQ4_XS against Q8K. Each 32 quant bytes hold two sub-blocks (16 bytes each: elements j and 16 + j in the low
/// and high nibble of byte j): after the lookup the low nibbles give elements 0..16 of both sub-blocks (one per
/// lane), the high nibbles elements 16..32, and the activations are loaded to match (two 128-bit halves each).
/// The sub-block scales (ls - 32) multiply in `madd`, lane 0 by the first sub-block's, lane 1 by the second's:
/// each i32 lane then sums within 2 * 2 * 127 * 127 * 32 per pair, 4 pairs well inside i32.
#[inline(always)]
unsafe fn tile_iq4xs<const R: usize, const T: usize>(w: [*const u8; R], a: [*const u8; T], nb: usize) -> [[f32; T]; R] {
    let table = table16(&IQ4NL_VALUES);
    let mask = _mm256_set1_epi8(0x0f);
    let ctrls = [pair_bcast(0), pair_bcast(1), pair_bcast(2), pair_bcast(3)];
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for b in 0..nb {
        for r in 0..R {
            let wb = w[r].add(b * 136);
            prefetch(wb);
            prefetch(wb.wrapping_add(64));
            let sc =
                iq4xs_scales_x8((wb.add(2) as *const u16).read_unaligned(), (wb.add(4) as *const u32).read_unaligned());
            let sc = _mm_sub_epi16(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)), _mm_set1_epi16(32));
            let sc = _mm256_broadcastsi128_si256(sc);
            let mut sumi = [_mm256_setzero_si256(); T];
            for (k, &ctrl) in ctrls.iter().enumerate() {
                let q = ldu(wb.add(8 + 32 * k));
                let lo = _mm256_shuffle_epi8(table, _mm256_and_si256(q, mask));
                let hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask));
                let (alo, ahi) = (_mm256_abs_epi8(lo), _mm256_abs_epi8(hi));
                let s2 = _mm256_shuffle_epi8(sc, ctrl);
                for t in 0..T {
                    let ap = a[t].add(b * Q8K_BYTES + 4 + 64 * k);
                    let a_lo = _mm256_loadu2_m128i(ap.add(32) as *const __m128i, ap as *const __m128i);
                    let a_hi = _mm256_loadu2_m128i(ap.add(48) as *const __m128i, ap.add(16) as *const __m128i);
                    let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(alo, _mm256_sign_epi8(a_lo, lo)), s2);
                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(ahi, _mm256_sign_epi8(a_hi, hi)), s2);
                    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p0, p1));
                }
            }
            let d = ld_f16(wb);
            for t in 0..T {
                let da = ld_f32(a[t].add(b * Q8K_BYTES));
                acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(d * da), _mm256_cvtepi32_ps(sumi[t]), acc[r][t]);
            }
        }
    }
    let mut res = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            res[r][t] = hsum(acc[r][t]);
        }
    }
    res
}

drivers!(gemv_iq4xs, gemm_iq4xs, tile_iq4xs, 136, Q8K_BYTES, false);

// ---- F32 / F16 / BF16 weights against f32 activations ----

/// A float weight format: 8 values (or one) from element `i` of a row at `p`, as f32.
trait FloatW {
    const BYTES: usize;
    unsafe fn ld8(p: *const u8, i: usize) -> __m256;
    unsafe fn ld1(p: *const u8, i: usize) -> f32;
}

struct F32W;
struct F16W;
/// bfloat16: the top half of an f32.
struct Bf16W;

impl FloatW for F32W {
    const BYTES: usize = 4;
    #[inline(always)]
    unsafe fn ld8(p: *const u8, i: usize) -> __m256 {
        _mm256_loadu_ps((p as *const f32).add(i))
    }
    #[inline(always)]
    unsafe fn ld1(p: *const u8, i: usize) -> f32 {
        ld_f32(p.add(4 * i))
    }
}

impl FloatW for F16W {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn ld8(p: *const u8, i: usize) -> __m256 {
        _mm256_cvtph_ps(ldu128(p.add(2 * i)))
    }
    #[inline(always)]
    unsafe fn ld1(p: *const u8, i: usize) -> f32 {
        ld_f16(p.add(2 * i))
    }
}

impl FloatW for Bf16W {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn ld8(p: *const u8, i: usize) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(ldu128(p.add(2 * i)))))
    }
    #[inline(always)]
    unsafe fn ld1(p: *const u8, i: usize) -> f32 {
        f32::from_bits(((p.add(2 * i) as *const u16).read_unaligned() as u32) << 16)
    }
}

/// Float weights of format `W` against f32 activations; `n` columns.
#[inline(always)]
unsafe fn tile_flt<W: FloatW, const R: usize, const T: usize>(
    w: [*const u8; R],
    a: [*const u8; T],
    n: usize,
) -> [[f32; T]; R] {
    let mut acc0 = [[_mm256_setzero_ps(); T]; R];
    let mut acc1 = [[_mm256_setzero_ps(); T]; R];
    let mut i = 0;
    while i + 16 <= n {
        for r in 0..R {
            prefetch(w[r].wrapping_add(i * W::BYTES));
            let (w0, w1) = (W::ld8(w[r], i), W::ld8(w[r], i + 8));
            for t in 0..T {
                let ap = a[t] as *const f32;
                acc0[r][t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(ap.add(i)), acc0[r][t]);
                acc1[r][t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(ap.add(i + 8)), acc1[r][t]);
            }
        }
        i += 16;
    }
    if i + 8 <= n {
        for r in 0..R {
            let w0 = W::ld8(w[r], i);
            for t in 0..T {
                acc0[r][t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps((a[t] as *const f32).add(i)), acc0[r][t]);
            }
        }
        i += 8;
    }
    let mut res = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            let mut s = hsum(_mm256_add_ps(acc0[r][t], acc1[r][t]));
            for j in i..n {
                s += W::ld1(w[r], j) * ld_f32(a[t].add(4 * j));
            }
            res[r][t] = s;
        }
    }
    res
}

#[inline(always)]
unsafe fn tile_f16<const R: usize, const T: usize>(w: [*const u8; R], a: [*const u8; T], n: usize) -> [[f32; T]; R] {
    tile_flt::<F16W, R, T>(w, a, n)
}

#[inline(always)]
unsafe fn tile_bf16<const R: usize, const T: usize>(w: [*const u8; R], a: [*const u8; T], n: usize) -> [[f32; T]; R] {
    tile_flt::<Bf16W, R, T>(w, a, n)
}

#[inline(always)]
unsafe fn tile_f32<const R: usize, const T: usize>(w: [*const u8; R], a: [*const u8; T], n: usize) -> [[f32; T]; R] {
    tile_flt::<F32W, R, T>(w, a, n)
}

// "Blocks" of one element: nb == cols.
drivers!(gemv_f16, gemm_f16, tile_f16, 2, 4, true);
drivers!(gemv_bf16, gemm_bf16, tile_bf16, 2, 4, true);
drivers!(gemv_f32, gemm_f32, tile_f32, 4, 4, true);

// ---- f16 helpers ----

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_to_f16_avx(x: &[f32], out: &mut [u16]) {
    let mut xs = x.chunks_exact(8);
    let mut os = out.chunks_exact_mut(8);
    for (xc, oc) in (&mut xs).zip(&mut os) {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(xc.as_ptr()));
        _mm_storeu_si128(oc.as_mut_ptr() as *mut __m128i, h);
    }
    scalar::f32_to_f16_slice(xs.remainder(), os.into_remainder());
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_to_f32_avx(x: &[u16], out: &mut [f32]) {
    let mut xs = x.chunks_exact(8);
    let mut os = out.chunks_exact_mut(8);
    for (xc, oc) in (&mut xs).zip(&mut os) {
        _mm256_storeu_ps(oc.as_mut_ptr(), _mm256_cvtph_ps(ldu128(xc.as_ptr() as *const u8)));
    }
    scalar::f16_to_f32_slice(xs.remainder(), os.into_remainder());
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_avx(a: &[u16], b: &[f32]) -> f32 {
    tile_flt::<F16W, 1, 1>([a.as_ptr() as *const u8], [b.as_ptr() as *const u8], a.len())[0][0]
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32_avx(a: &[f32], b: &[f32]) -> f32 {
    tile_flt::<F32W, 1, 1>([a.as_ptr() as *const u8], [b.as_ptr() as *const u8], a.len())[0][0]
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_f16_avx(y: &mut [f32], alpha: f32, x: &[u16]) {
    let av = _mm256_set1_ps(alpha);
    let mut ys = y.chunks_exact_mut(8);
    let mut xs = x.chunks_exact(8);
    for (yc, xc) in (&mut ys).zip(&mut xs) {
        let xv = _mm256_cvtph_ps(ldu128(xc.as_ptr() as *const u8));
        _mm256_storeu_ps(yc.as_mut_ptr(), _mm256_fmadd_ps(av, xv, _mm256_loadu_ps(yc.as_ptr())));
    }
    scalar::axpy_f16(ys.into_remainder(), alpha, xs.remainder());
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_f32_avx(y: &mut [f32], alpha: f32, x: &[f32]) {
    let av = _mm256_set1_ps(alpha);
    let mut ys = y.chunks_exact_mut(8);
    let mut xs = x.chunks_exact(8);
    for (yc, xc) in (&mut ys).zip(&mut xs) {
        _mm256_storeu_ps(
            yc.as_mut_ptr(),
            _mm256_fmadd_ps(av, _mm256_loadu_ps(xc.as_ptr()), _mm256_loadu_ps(yc.as_ptr())),
        );
    }
    scalar::axpy_f32(ys.into_remainder(), alpha, xs.remainder());
}
