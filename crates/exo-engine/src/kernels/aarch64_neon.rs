//! NEON kernels (aarch64, where NEON is baseline), in two variants that differ only in the 16-lane int8 dot
//! product of the quantized tiles ([`IntDot`]):
//! - [`KERNELS`] ([`Isa::Neon`]): plain NEON widening multiplies (`smull`/`sadalp`), runs on every aarch64 CPU;
//! - [`KERNELS_DOT`] ([`Isa::NeonDot`]): the Armv8.2 dot-product instruction `sdot` (feature "dotprod",
//!   detected at run time by [`dotprod_detected`]); its quantized drivers are
//!   `#[target_feature(enable = "neon,dotprod")]`. Quantization, F32/F16/BF16 weights and the f16 helpers are
//!   shared.
//!
//! `sdot` and the f16 conversions (`fcvtl`/`fcvtn`) go through inline assembly: `vdotq_s32` and Rust's f16
//! NEON types are not stable. The assembler only accepts `sdot` inside functions compiled with "dotprod", so
//! inlining it anywhere else fails the build rather than the CPU.
//!
//! Inner loops are `#[inline(always)]` const-generic tiles (1 weight row x T tokens, generic over the
//! [`IntDot`]); gemv uses T = 1, gemm T = 4.

use super::{
    q8_32_at, scalar, Isa, Kernels, WeightType, IQ4NL_VALUES, MXFP4_VALUES, Q8K_BSUMS, Q8K_BYTES, Q8_32_BYTES,
};
use core::arch::aarch64::*;
use core::arch::asm;

pub(super) static KERNELS: Kernels = Kernels {
    isa: Isa::Neon,
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

/// As [`KERNELS`], with `sdot` in the quantized gemv/gemm. Only for CPUs where [`dotprod_detected`] holds.
pub(super) static KERNELS_DOT: Kernels = Kernels {
    isa: Isa::NeonDot,
    quantize_q8_32,
    quantize_q8k,
    gemv: gemv_dot,
    gemm: gemm_dot,
    dequantize_row: scalar::dequantize_row,
    f32_to_f16,
    f16_to_f32,
    dot_f16,
    dot_f32,
    axpy_f16,
    axpy_f32,
};

/// Whether this CPU has the Armv8.2 dot-product instructions (`sdot`), which [`KERNELS_DOT`] needs.
pub(super) fn dotprod_detected() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

// ---- safe wrappers (NEON is part of the aarch64 baseline; lengths checked by the public wrapper) ----

fn quantize_q8_32(x: &[f32], out: &mut [u8]) {
    // SAFETY: only whole blocks inside both slices are touched.
    unsafe { quant_rows::<false>(x, out) }
}

fn quantize_q8k(x: &[f32], out: &mut [u8]) {
    // SAFETY: as above.
    unsafe { quant_rows::<true>(x, out) }
}

fn gemv(ty: WeightType, cols: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
    // SAFETY: the public wrapper checked that `w` holds `out.len()` rows and `act` one activation row.
    unsafe { widen::gemv(ty, cols, w, act, out) }
}

#[allow(clippy::too_many_arguments)]
fn gemm(ty: WeightType, cols: usize, w: &[u8], n_rows: usize, acts: &[u8], n_tok: usize, o: &mut [f32], os: usize) {
    // SAFETY: the public wrapper checked every slice against n_rows, n_tok and out_stride.
    unsafe { widen::gemm(ty, cols, w, n_rows, acts, n_tok, o, os) }
}

fn gemv_dot(ty: WeightType, cols: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
    // SAFETY: as `gemv`; and `KERNELS_DOT`, the only way here, is handed out only where dotprod is detected.
    unsafe { sdot::gemv(ty, cols, w, act, out) }
}

#[allow(clippy::too_many_arguments)]
fn gemm_dot(ty: WeightType, cols: usize, w: &[u8], n_rows: usize, acts: &[u8], n_tok: usize, o: &mut [f32], os: usize) {
    // SAFETY: as `gemm`; and `KERNELS_DOT`, the only way here, is handed out only where dotprod is detected.
    unsafe { sdot::gemm(ty, cols, w, n_rows, acts, n_tok, o, os) }
}

fn f32_to_f16(x: &[f32], out: &mut [u16]) {
    // SAFETY: equal lengths (checked by the public wrapper).
    unsafe { f32_to_f16_neon(x, out) }
}

fn f16_to_f32(x: &[u16], out: &mut [f32]) {
    // SAFETY: as above.
    unsafe { f16_to_f32_neon(x, out) }
}

fn dot_f16(a: &[u16], b: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { tile_flt::<F16W, 1>(a.as_ptr() as *const u8, [b.as_ptr() as *const u8], a.len())[0] }
}

fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { tile_flt::<F32W, 1>(a.as_ptr() as *const u8, [b.as_ptr() as *const u8], a.len())[0] }
}

fn axpy_f16(y: &mut [f32], alpha: f32, x: &[u16]) {
    // SAFETY: as above.
    unsafe { axpy_neon::<F16W>(y, alpha, x.as_ptr() as *const u8) }
}

fn axpy_f32(y: &mut [f32], alpha: f32, x: &[f32]) {
    // SAFETY: as above.
    unsafe { axpy_neon::<F32W>(y, alpha, x.as_ptr() as *const u8) }
}

// ---- helpers ----

/// Four halves to f32 (`fcvtl`).
#[inline(always)]
unsafe fn cvt_f16x4(h: uint16x4_t) -> float32x4_t {
    let r: float32x4_t;
    asm!("fcvtl {0:v}.4s, {1:v}.4h", out(vreg) r, in(vreg) h, options(pure, nomem, nostack));
    r
}

/// Four f32 to halves, round to nearest even (`fcvtn`, default FPCR rounding).
#[inline(always)]
unsafe fn cvt_to_f16x4(x: float32x4_t) -> uint16x4_t {
    let r: uint16x4_t;
    asm!("fcvtn {0:v}.4h, {1:v}.4s", out(vreg) r, in(vreg) x, options(pure, nomem, nostack));
    r
}

#[inline(always)]
unsafe fn ld_f16(p: *const u8) -> f32 {
    scalar::f16_to_f32((p as *const u16).read_unaligned())
}

#[inline(always)]
unsafe fn ld_f32(p: *const u8) -> f32 {
    (p as *const f32).read_unaligned()
}

#[inline(always)]
unsafe fn ld_s8(p: *const u8) -> int8x16_t {
    vld1q_s8(p as *const i8)
}

/// The int8 dot product of the quantized tiles: `dot(acc, a, b)` adds Σ a*b over 16 lanes to `acc`, spread
/// over its 4 i32 lanes in a way of the implementation's choosing (callers only use the sum of the lanes, or
/// scale all lanes alike). `a` holds weights, `b` activations (within ±127).
trait IntDot {
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t;
}

/// Plain NEON: `smull`/`smull2`, an i16 add, `sadalp`. Each product is within ±16256 (`b` within ±127), so
/// two of them add in i16 without overflow.
struct Widen;

impl IntDot for Widen {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        vpadalq_s16(acc, vaddq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)), vmull_high_s8(a, b)))
    }
}

/// Armv8.2 `sdot`: lane i gets a[4i..4i+4]·b[4i..4i+4]. Only callable from "dotprod" functions (see the module
/// docs).
struct Sdot;

impl IntDot for Sdot {
    #[inline(always)]
    unsafe fn dot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        asm!("sdot {0:v}.4s, {1:v}.16b, {2:v}.16b", inout(vreg) acc, in(vreg) a, in(vreg) b,
             options(pure, nomem, nostack));
        acc
    }
}

// ---- activation quantization ----

/// Eight values times `iscale`, rounded half to even (`frintn`), as i8, and their sums as i32 lanes.
#[inline(always)]
unsafe fn quant8(x: *const f32, iscale: float32x4_t) -> (int8x8_t, int32x4_t) {
    let q0 = vcvtq_s32_f32(vrndnq_f32(vmulq_f32(vld1q_f32(x), iscale)));
    let q1 = vcvtq_s32_f32(vrndnq_f32(vmulq_f32(vld1q_f32(x.add(4)), iscale)));
    (vmovn_s16(vcombine_s16(vmovn_s32(q0), vmovn_s32(q1))), vaddq_s32(q0, q1))
}

/// Quantizes whole blocks (32 values for the pair-interleaved Q8_32, 256 for Q8K).
unsafe fn quant_rows<const K: bool>(x: &[f32], out: &mut [u8]) {
    let (blen, bbytes) = if K { (256, Q8K_BYTES) } else { (32, Q8_32_BYTES) };
    let nb = (x.len() / blen).min(out.len() / bbytes);
    let op = out.as_mut_ptr();
    for b in 0..nb {
        let xp = x.as_ptr().add(b * blen);
        let mut m = vdupq_n_f32(0.0);
        for i in (0..blen).step_by(4) {
            m = vmaxq_f32(m, vabsq_f32(vld1q_f32(xp.add(i))));
        }
        let amax = vmaxvq_f32(m);
        let dv = vdupq_n_f32(if amax == 0.0 { 0.0 } else { 127.0 / amax });
        let d = if K { scalar::q8k_scale(amax) } else { scalar::q8_32_scale(amax) };
        let mut sum = vdupq_n_s32(0);
        let mut q = [0i8; 256];
        for i in (0..blen).step_by(8) {
            let (q8, s) = quant8(xp.add(i), dv);
            vst1_s8(q.as_mut_ptr().add(i), q8);
            sum = vaddq_s32(sum, s);
        }
        if K {
            let ob = op.add(b * Q8K_BYTES);
            (ob as *mut f32).write_unaligned(d);
            core::ptr::copy_nonoverlapping(q.as_ptr() as *const u8, ob.add(4), 256);
            for j in 0..16 {
                let s = vaddlvq_s8(vld1q_s8(q.as_ptr().add(16 * j)));
                (ob.add(Q8K_BSUMS + 2 * j) as *mut i16).write_unaligned(s);
            }
        } else {
            let (od, os, lo, hi) = q8_32_at(nb, b);
            (op.add(od) as *mut f32).write_unaligned(d);
            (op.add(os) as *mut f32).write_unaligned(d * vaddvq_s32(sum) as f32);
            core::ptr::copy_nonoverlapping(q.as_ptr() as *const u8, op.add(lo), 16);
            core::ptr::copy_nonoverlapping(q.as_ptr().add(16) as *const u8, op.add(hi), 16);
        }
    }
}

// ---- drivers: gemv row by row, gemm over 1 row x 4 token tiles ----

/// Defines `$gemv(nb, w, act, out)` and `$gemm(nb, w, n_rows, acts, n_tok, out, stride)` from a tile
/// `$tile::<$g.., T>(row, acts, nb) -> [f32; T]` over blocks of `$wb` weight and `$ab` activation bytes; both
/// carry the attributes `$attr`.
macro_rules! drivers {
    ($(#[$attr:meta])* $gemv:ident, $gemm:ident, $tile:ident[$($g:ty),*], $wb:expr, $ab:expr) => {
        $(#[$attr])*
        unsafe fn $gemv(nb: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
            let rb = nb * $wb;
            for (r, o) in out.iter_mut().enumerate() {
                *o = $tile::<$($g,)* 1>(w.as_ptr().add(r * rb), [act.as_ptr()], nb)[0];
            }
        }

        $(#[$attr])*
        #[allow(clippy::too_many_arguments)]
        unsafe fn $gemm(nb: usize, w: &[u8], n_rows: usize, acts: &[u8], n_tok: usize, out: &mut [f32], os: usize) {
            let (rb, ab) = (nb * $wb, nb * $ab);
            let (wp, ap, op) = (w.as_ptr(), acts.as_ptr(), out.as_mut_ptr());
            for r in 0..n_rows {
                let row = wp.add(r * rb);
                let mut t = 0;
                while t + 4 <= n_tok {
                    let v = $tile::<$($g,)* 4>(
                        row,
                        [ap.add(t * ab), ap.add((t + 1) * ab), ap.add((t + 2) * ab), ap.add((t + 3) * ab)],
                        nb,
                    );
                    for (k, &x) in v.iter().enumerate() {
                        *op.add((t + k) * os + r) = x;
                    }
                    t += 4;
                }
                while t < n_tok {
                    *op.add(t * os + r) = $tile::<$($g,)* 1>(row, [ap.add(t * ab)], nb)[0];
                    t += 1;
                }
            }
        }
    };
}

// ---- Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 against Q8_32 ----

/// `0x10` in byte k of 16 where bit k of the low 16 bits of `h` is set (the fifth bit of 5-bit quants).
#[inline(always)]
unsafe fn bit5x16(h: u32) -> uint8x16_t {
    let v = vcombine_u8(vdup_n_u8(h as u8), vdup_n_u8((h >> 8) as u8));
    let bits = vreinterpretq_u8_u64(vdupq_n_u64(0x8040_2010_0804_0201));
    vandq_u8(vtstq_u8(v, bits), vdupq_n_u8(0x10))
}

/// Q4_0 (value = d*(q-8)), Q4_1 (`Q1`, value = d*q + m), Q5_0 (`Q5`, d*(q-16)) or Q5_1 (`Q1` and `Q5`); a 5-bit
/// quant is a nibble and bit j of the block's 32-bit `qh` word.
#[inline(always)]
unsafe fn tile_q45<D: IntDot, const Q1: bool, const Q5: bool, const T: usize>(
    w: *const u8,
    a: [*const u8; T],
    nb: usize,
) -> [f32; T] {
    // Layouts: { d, [m], [qh: u32], qs: [u8; 16] }.
    let qhoff = if Q1 { 4 } else { 2 };
    let qoff = qhoff + if Q5 { 4 } else { 0 };
    let bb = qoff + 16;
    let zero = if Q5 { -16.0 } else { -8.0 };
    let mask = vdupq_n_u8(0x0f);
    let mut acc = [vdupq_n_f32(0.0); T];
    let mut off = [0f32; T];
    for b in 0..nb {
        let wb = w.add(b * bb);
        let dw = ld_f16(wb);
        let m = if Q1 { ld_f16(wb.add(2)) } else { zero * dw };
        let q = vld1q_u8(wb.add(qoff));
        let (mut lo, mut hi) = (vandq_u8(q, mask), vshrq_n_u8::<4>(q));
        if Q5 {
            let qh = (wb.add(qhoff) as *const u32).read_unaligned();
            lo = vorrq_u8(lo, bit5x16(qh));
            hi = vorrq_u8(hi, bit5x16(qh >> 16));
        }
        let (lo, hi) = (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi));
        let (od, os, ol, oh) = q8_32_at(nb, b);
        for t in 0..T {
            let s = D::dot(D::dot(vdupq_n_s32(0), lo, ld_s8(a[t].add(ol))), hi, ld_s8(a[t].add(oh)));
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(s), dw * ld_f32(a[t].add(od)));
            off[t] += m * ld_f32(a[t].add(os));
        }
    }
    let mut res = [0f32; T];
    for t in 0..T {
        res[t] = vaddvq_f32(acc[t]) + off[t];
    }
    res
}

#[inline(always)]
unsafe fn tile_q4_0<D: IntDot, const T: usize>(w: *const u8, a: [*const u8; T], nb: usize) -> [f32; T] {
    tile_q45::<D, false, false, T>(w, a, nb)
}

#[inline(always)]
unsafe fn tile_q4_1<D: IntDot, const T: usize>(w: *const u8, a: [*const u8; T], nb: usize) -> [f32; T] {
    tile_q45::<D, true, false, T>(w, a, nb)
}

#[inline(always)]
unsafe fn tile_q5_0<D: IntDot, const T: usize>(w: *const u8, a: [*const u8; T], nb: usize) -> [f32; T] {
    tile_q45::<D, false, true, T>(w, a, nb)
}

#[inline(always)]
unsafe fn tile_q5_1<D: IntDot, const T: usize>(w: *const u8, a: [*const u8; T], nb: usize) -> [f32; T] {
    tile_q45::<D, true, true, T>(w, a, nb)
}

#[inline(always)]
unsafe fn tile_q8_0<D: IntDot, const T: usize>(w: *const u8, a: [*const u8; T], nb: usize) -> [f32; T] {
    let mut acc = [vdupq_n_f32(0.0); T];
    for b in 0..nb {
        let wb = w.add(b * 34);
        let dw = ld_f16(wb);
        let (lo, hi) = (ld_s8(wb.add(2)), ld_s8(wb.add(18)));
        let (od, _, ol, oh) = q8_32_at(nb, b);
        for t in 0..T {
            let s = D::dot(D::dot(vdupq_n_s32(0), lo, ld_s8(a[t].add(ol))), hi, ld_s8(a[t].add(oh)));
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(s), dw * ld_f32(a[t].add(od)));
        }
    }
    acc.map(|v| vaddvq_f32(v))
}

// ---- Q2_K / Q3_K / Q4_K / Q5_K / Q6_K against Q8K ----

/// Q4_K, or Q5_K (`Q5`: the same header, then `qh: [u8; 32]` holding the fifth bit of element i in bit i / 32
/// of byte i % 32, then the nibbles).
#[inline(always)]
unsafe fn tile_q45k<D: IntDot, const Q5: bool, const T: usize>(w: *const u8, a: [*const u8; T], nb: usize) -> [f32; T] {
    let (bb, qoff) = if Q5 { (176, 48) } else { (144, 16) };
    let mask = vdupq_n_u8(0x0f);
    let x10 = vdupq_n_u8(0x10);
    let mut acc = [vdupq_n_f32(0.0); T];
    let mut accm = [0f32; T];
    for b in 0..nb {
        let wb = w.add(b * bb);
        let (d, dmin) = (ld_f16(wb), ld_f16(wb.add(2)));
        let (sc, mn) = scalar::q4k_scales_mins(core::slice::from_raw_parts(wb.add(4), 12));
        let mins = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(mn.as_ptr())));
        let (qh0, qh1) = if Q5 { (vld1q_u8(wb.add(16)), vld1q_u8(wb.add(32))) } else { (vdupq_n_u8(0), vdupq_n_u8(0)) };
        let mut sumi = [vdupq_n_s32(0); T];
        for c in 0..4 {
            let q = wb.add(qoff + 32 * c);
            let (v0, v1) = (vld1q_u8(q), vld1q_u8(q.add(16)));
            let (mut lo0, mut lo1) = (vandq_u8(v0, mask), vandq_u8(v1, mask));
            let (mut hi0, mut hi1) = (vshrq_n_u8::<4>(v0), vshrq_n_u8::<4>(v1));
            if Q5 {
                let (bl, bh) = (vdupq_n_u8(1 << (2 * c)), vdupq_n_u8(2 << (2 * c)));
                lo0 = vorrq_u8(lo0, vandq_u8(vtstq_u8(qh0, bl), x10));
                lo1 = vorrq_u8(lo1, vandq_u8(vtstq_u8(qh1, bl), x10));
                hi0 = vorrq_u8(hi0, vandq_u8(vtstq_u8(qh0, bh), x10));
                hi1 = vorrq_u8(hi1, vandq_u8(vtstq_u8(qh1, bh), x10));
            }
            let (lo0, lo1) = (vreinterpretq_s8_u8(lo0), vreinterpretq_s8_u8(lo1));
            let (hi0, hi1) = (vreinterpretq_s8_u8(hi0), vreinterpretq_s8_u8(hi1));
            for t in 0..T {
                let ap = a[t].add(b * Q8K_BYTES + 4 + 64 * c);
                let l = D::dot(D::dot(vdupq_n_s32(0), lo0, ld_s8(ap)), lo1, ld_s8(ap.add(16)));
                let h = D::dot(D::dot(vdupq_n_s32(0), hi0, ld_s8(ap.add(32))), hi1, ld_s8(ap.add(48)));
                sumi[t] = vmlaq_n_s32(vmlaq_n_s32(sumi[t], l, sc[2 * c] as i32), h, sc[2 * c + 1] as i32);
            }
        }
        for t in 0..T {
            let ab = a[t].add(b * Q8K_BYTES);
            let bs = ab.add(Q8K_BSUMS) as *const i16;
            // Sums of 32 activations per sub-block, dotted with the mins.
            let bs32 = vpaddq_s16(vld1q_s16(bs), vld1q_s16(bs.add(8)));
            let pm = vaddq_s32(vmull_s16(vget_low_s16(mins), vget_low_s16(bs32)), vmull_high_s16(mins, bs32));
            let da = ld_f32(ab);
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(sumi[t]), d * da);
            accm[t] += dmin * da * vaddvq_s32(pm) as f32;
        }
    }
    let mut res = [0f32; T];
    for t in 0..T {
        res[t] = vaddvq_f32(acc[t]) - accm[t];
    }
    res
}

#[inline(always)]
unsafe fn tile_q4k<D: IntDot, const T: usize>(w: *const u8, a: [*const u8; T], nb: usize) -> [f32; T] {
    tile_q45k::<D, false, T>(w, a, nb)
}

#[inline(always)]
unsafe fn tile_q5k<D: IntDot, const T: usize>(w: *const u8, a: [*const u8; T], nb: usize) -> [f32; T] {
    tile_q45k::<D, true, T>(w, a, nb)
}

/// Σ c[j] * bsums[j] over the 16 sums of 16 of a Q8K block at `ab` (`c` widened from 16 i8), spread over 4 lanes.
#[inline(always)]
unsafe fn dot_bsums(c: int8x16_t, ab: *const u8) -> int32x4_t {
    let bs = ab.add(Q8K_BSUMS) as *const i16;
    let (b0, b1) = (vld1q_s16(bs), vld1q_s16(bs.add(8)));
    let (c0, c1) = (vmovl_s8(vget_low_s8(c)), vmovl_high_s8(c));
    vaddq_s32(
        vaddq_s32(vmull_s16(vget_low_s16(c0), vget_low_s16(b0)), vmull_high_s16(c0, b0)),
        vaddq_s32(vmull_s16(vget_low_s16(c1), vget_low_s16(b1)), vmull_high_s16(c1, b1)),
    )
}

/// Q2_K (value = d * (s & 15) * q - dmin * (s >> 4), one scale byte s per 16) or Q3_K (`Q3`, value =
/// d * scale * (q - 4) with a signed 6-bit scale per 16, the third bit of q in `hmask`).
#[inline(always)]
unsafe fn tile_q23k<D: IntDot, const Q3: bool, const T: usize>(w: *const u8, a: [*const u8; T], nb: usize) -> [f32; T] {
    let (bb, qoff) = if Q3 { (110, 32) } else { (84, 16) };
    let m2 = vdupq_n_u8(0x03);
    let x4 = vdupq_n_u8(0x04);
    let mut acc = [vdupq_n_f32(0.0); T];
    let mut accm = [0f32; T];
    for b in 0..nb {
        let wb = w.add(b * bb);
        // One scale per 16 elements; for Q2_K the mins too.
        let (sc, mins, d, dmin) = if Q3 {
            let sc = scalar::q3k_scales(core::slice::from_raw_parts(wb.add(96), 12));
            (sc, vdupq_n_s8(0), ld_f16(wb.add(108)), 0.0)
        } else {
            let s = vld1q_u8(wb);
            let mut sc = [0i8; 16];
            vst1q_s8(sc.as_mut_ptr(), vreinterpretq_s8_u8(vandq_u8(s, vdupq_n_u8(0x0f))));
            (sc, vreinterpretq_s8_u8(vshrq_n_u8::<4>(s)), ld_f16(wb.add(80)), ld_f16(wb.add(82)))
        };
        let mut sumi = [vdupq_n_s32(0); T];
        for h in 0..2 {
            for l16 in 0..2 {
                // Quarter k covers elements 128h + 32k + 16*l16 .. +16 (bits 2k..2k+2 of the quant bytes), scale
                // index 8h + 2k + l16.
                let q = vld1q_u8(wb.add(qoff + 32 * h + 16 * l16));
                let mut qk = [
                    vandq_u8(q, m2),
                    vandq_u8(vshrq_n_u8::<2>(q), m2),
                    vandq_u8(vshrq_n_u8::<4>(q), m2),
                    vshrq_n_u8::<6>(q),
                ];
                if Q3 {
                    let hm = vld1q_u8(wb.add(16 * l16));
                    for (k, v) in qk.iter_mut().enumerate() {
                        *v = vorrq_u8(*v, vandq_u8(vtstq_u8(hm, vdupq_n_u8(1 << (4 * h + k))), x4));
                    }
                }
                for (k, &q) in qk.iter().enumerate() {
                    let s = sc[8 * h + 2 * k + l16] as i32;
                    for t in 0..T {
                        let ap = a[t].add(b * Q8K_BYTES + 4 + 128 * h + 32 * k + 16 * l16);
                        let p = D::dot(vdupq_n_s32(0), vreinterpretq_s8_u8(q), ld_s8(ap));
                        sumi[t] = vmlaq_n_s32(sumi[t], p, s);
                    }
                }
            }
        }
        let scv = vld1q_s8(sc.as_ptr());
        for t in 0..T {
            let ab = a[t].add(b * Q8K_BYTES);
            let da = ld_f32(ab);
            if Q3 {
                // The -4 offset: 4 * Σ scale_j * bsum_j.
                let s = vsubq_s32(sumi[t], vshlq_n_s32::<2>(dot_bsums(scv, ab)));
                acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(s), d * da);
            } else {
                acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(sumi[t]), d * da);
                accm[t] += dmin * da * vaddvq_s32(dot_bsums(mins, ab)) as f32;
            }
        }
    }
    let mut res = [0f32; T];
    for t in 0..T {
        res[t] = vaddvq_f32(acc[t]) - accm[t];
    }
    res
}

#[inline(always)]
unsafe fn tile_q2k<D: IntDot, const T: usize>(w: *const u8, a: [*const u8; T], nb: usize) -> [f32; T] {
    tile_q23k::<D, false, T>(w, a, nb)
}

#[inline(always)]
unsafe fn tile_q3k<D: IntDot, const T: usize>(w: *const u8, a: [*const u8; T], nb: usize) -> [f32; T] {
    tile_q23k::<D, true, T>(w, a, nb)
}

#[inline(always)]
unsafe fn tile_q6k<D: IntDot, const T: usize>(w: *const u8, a: [*const u8; T], nb: usize) -> [f32; T] {
    let m4 = vdupq_n_u8(0x0f);
    let m2 = vdupq_n_u8(0x03);
    let mut acc = [vdupq_n_f32(0.0); T];
    for b in 0..nb {
        let wb = w.add(b * 210);
        let d = ld_f16(wb.add(208));
        let sc = core::slice::from_raw_parts(wb.add(192) as *const i8, 16);
        let mut sumi = [vdupq_n_s32(0); T];
        for h in 0..2 {
            for l16 in 0..2 {
                let qla = vld1q_u8(wb.add(64 * h + 16 * l16));
                let qlb = vld1q_u8(wb.add(64 * h + 32 + 16 * l16));
                let qh = vld1q_u8(wb.add(128 + 32 * h + 16 * l16));
                // Quarter k covers elements 128h + 32k + 16*l16 .. +16, scale index 8h + 2k + l16.
                let q = [
                    vorrq_u8(vandq_u8(qla, m4), vshlq_n_u8::<4>(vandq_u8(qh, m2))),
                    vorrq_u8(vandq_u8(qlb, m4), vshlq_n_u8::<2>(vandq_u8(qh, vdupq_n_u8(0x0c)))),
                    vorrq_u8(vshrq_n_u8::<4>(qla), vandq_u8(qh, vdupq_n_u8(0x30))),
                    vorrq_u8(vshrq_n_u8::<4>(qlb), vshrq_n_u8::<2>(vandq_u8(qh, vdupq_n_u8(0xc0)))),
                ];
                for (k, &qk) in q.iter().enumerate() {
                    let s = sc[8 * h + 2 * k + l16] as i32;
                    for t in 0..T {
                        let ap = a[t].add(b * Q8K_BYTES + 4 + 128 * h + 32 * k + 16 * l16);
                        let p = D::dot(vdupq_n_s32(0), vreinterpretq_s8_u8(qk), ld_s8(ap));
                        sumi[t] = vmlaq_n_s32(sumi[t], p, s);
                    }
                }
            }
        }
        let scv = vld1q_s8(sc.as_ptr());
        for t in 0..T {
            let ab = a[t].add(b * Q8K_BYTES);
            // The -32 offset: 32 * Σ scale_j * bsum_j.
            let s = vsubq_s32(sumi[t], vshlq_n_s32::<5>(dot_bsums(scv, ab)));
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(s), d * ld_f32(ab));
        }
    }
    acc.map(|v| vaddvq_f32(v))
}

// ---- IQ4_NL / MXFP4 / IQ4_XS: 4-bit indices into a 16-entry signed table (`vqtbl1q_s8`) ----

/// The table values of the 32 nibbles of 16 quant bytes at `q`: elements 0..16 (low nibbles) and 16..32 (high).
#[inline(always)]
unsafe fn lookup32(table: int8x16_t, q: *const u8) -> (int8x16_t, int8x16_t) {
    let v = vld1q_u8(q);
    (vqtbl1q_s8(table, vandq_u8(v, vdupq_n_u8(0x0f))), vqtbl1q_s8(table, vshrq_n_u8::<4>(v)))
}

/// IQ4_NL (`{ d: f16, qs }`, 18 bytes) or MXFP4 (`MX`: `{ e: u8, qs }`, 17 bytes, scale 2^(e - 128)) against
/// Q8_32. Every table value is within ±127, as [`IntDot`] needs.
#[inline(always)]
unsafe fn tile_nl<D: IntDot, const MX: bool, const T: usize>(w: *const u8, a: [*const u8; T], nb: usize) -> [f32; T] {
    let (bb, qoff) = if MX { (17, 1) } else { (18, 2) };
    let table = vld1q_s8(if MX { MXFP4_VALUES.as_ptr() } else { IQ4NL_VALUES.as_ptr() });
    let mut acc = [vdupq_n_f32(0.0); T];
    for b in 0..nb {
        let wb = w.add(b * bb);
        let dw = if MX { scalar::E8M0_HALF[*wb as usize] } else { ld_f16(wb) };
        let (lo, hi) = lookup32(table, wb.add(qoff));
        let (od, _, ol, oh) = q8_32_at(nb, b);
        for t in 0..T {
            let s = D::dot(D::dot(vdupq_n_s32(0), lo, ld_s8(a[t].add(ol))), hi, ld_s8(a[t].add(oh)));
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(s), dw * ld_f32(a[t].add(od)));
        }
    }
    acc.map(|v| vaddvq_f32(v))
}

#[inline(always)]
unsafe fn tile_iq4nl<D: IntDot, const T: usize>(w: *const u8, a: [*const u8; T], nb: usize) -> [f32; T] {
    tile_nl::<D, false, T>(w, a, nb)
}

#[inline(always)]
unsafe fn tile_mxfp4<D: IntDot, const T: usize>(w: *const u8, a: [*const u8; T], nb: usize) -> [f32; T] {
    tile_nl::<D, true, T>(w, a, nb)
}

/// IQ4_XS against Q8K: eight sub-blocks of 32, each laid out as an IQ4_NL block's quants, with a 6-bit scale.
#[inline(always)]
unsafe fn tile_iq4xs<D: IntDot, const T: usize>(w: *const u8, a: [*const u8; T], nb: usize) -> [f32; T] {
    let table = vld1q_s8(IQ4NL_VALUES.as_ptr());
    let mut acc = [vdupq_n_f32(0.0); T];
    for b in 0..nb {
        let wb = w.add(b * 136);
        let sc = scalar::iq4xs_scales(core::slice::from_raw_parts(wb, 8));
        let mut sumi = [vdupq_n_s32(0); T];
        for (s, &ls) in sc.iter().enumerate() {
            let (lo, hi) = lookup32(table, wb.add(8 + 16 * s));
            for t in 0..T {
                let ap = a[t].add(b * Q8K_BYTES + 4 + 32 * s);
                let p = D::dot(D::dot(vdupq_n_s32(0), lo, ld_s8(ap)), hi, ld_s8(ap.add(16)));
                sumi[t] = vmlaq_n_s32(sumi[t], p, ls);
            }
        }
        let d = ld_f16(wb);
        for t in 0..T {
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(sumi[t]), d * ld_f32(a[t].add(b * Q8K_BYTES)));
        }
    }
    acc.map(|v| vaddvq_f32(v))
}

// ---- quantized drivers and gemv/gemm dispatch, once per integer dot ----

/// Defines module `$m` with the quantized drivers over the integer dot `$D` (each carrying `$attr`) and its
/// `gemv`/`gemm` dispatch over every weight type (F32/F16/BF16 go to the shared float drivers).
macro_rules! int_variant {
    ($m:ident, $D:ty $(, #[$attr:meta])*) => {
        mod $m {
            use super::*;

            drivers!($(#[$attr])* gemv_q4_0, gemm_q4_0, tile_q4_0[$D], 18, Q8_32_BYTES);
            drivers!($(#[$attr])* gemv_q4_1, gemm_q4_1, tile_q4_1[$D], 20, Q8_32_BYTES);
            drivers!($(#[$attr])* gemv_q5_0, gemm_q5_0, tile_q5_0[$D], 22, Q8_32_BYTES);
            drivers!($(#[$attr])* gemv_q5_1, gemm_q5_1, tile_q5_1[$D], 24, Q8_32_BYTES);
            drivers!($(#[$attr])* gemv_q8_0, gemm_q8_0, tile_q8_0[$D], 34, Q8_32_BYTES);
            drivers!($(#[$attr])* gemv_q2k, gemm_q2k, tile_q2k[$D], 84, Q8K_BYTES);
            drivers!($(#[$attr])* gemv_q3k, gemm_q3k, tile_q3k[$D], 110, Q8K_BYTES);
            drivers!($(#[$attr])* gemv_q4k, gemm_q4k, tile_q4k[$D], 144, Q8K_BYTES);
            drivers!($(#[$attr])* gemv_q5k, gemm_q5k, tile_q5k[$D], 176, Q8K_BYTES);
            drivers!($(#[$attr])* gemv_q6k, gemm_q6k, tile_q6k[$D], 210, Q8K_BYTES);
            drivers!($(#[$attr])* gemv_iq4nl, gemm_iq4nl, tile_iq4nl[$D], 18, Q8_32_BYTES);
            drivers!($(#[$attr])* gemv_iq4xs, gemm_iq4xs, tile_iq4xs[$D], 136, Q8K_BYTES);
            drivers!($(#[$attr])* gemv_mxfp4, gemm_mxfp4, tile_mxfp4[$D], 17, Q8_32_BYTES);

            /// # Safety
            /// `w` holds `out.len()` rows and `act` one activation row; the CPU has the target features of this
            /// variant's drivers.
            pub(super) unsafe fn gemv(ty: WeightType, cols: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
                let nb = cols / ty.block_len();
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

            /// # Safety
            /// The slices hold `n_rows` weight rows, `n_tok` activation rows and the `n_tok` x `n_rows` output tile
            /// at stride `os`; the CPU has the target features of this variant's drivers.
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn gemm(
                ty: WeightType,
                cols: usize,
                w: &[u8],
                n_rows: usize,
                acts: &[u8],
                n_tok: usize,
                o: &mut [f32],
                os: usize,
            ) {
                let nb = cols / ty.block_len();
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
    };
}

int_variant!(widen, Widen);
int_variant!(sdot, Sdot, #[target_feature(enable = "neon,dotprod")]);

// ---- F32 / F16 / BF16 weights ----

/// A float weight format: 4 values (or one) from element `i` of a row at `p`, as f32.
trait FloatW {
    unsafe fn ld4(p: *const u8, i: usize) -> float32x4_t;
    unsafe fn ld1(p: *const u8, i: usize) -> f32;
}

struct F32W;
struct F16W;
/// bfloat16: the top half of an f32.
struct Bf16W;

impl FloatW for F32W {
    #[inline(always)]
    unsafe fn ld4(p: *const u8, i: usize) -> float32x4_t {
        vld1q_f32((p as *const f32).add(i))
    }
    #[inline(always)]
    unsafe fn ld1(p: *const u8, i: usize) -> f32 {
        ld_f32(p.add(4 * i))
    }
}

impl FloatW for F16W {
    #[inline(always)]
    unsafe fn ld4(p: *const u8, i: usize) -> float32x4_t {
        cvt_f16x4(vld1_u16((p as *const u16).add(i)))
    }
    #[inline(always)]
    unsafe fn ld1(p: *const u8, i: usize) -> f32 {
        ld_f16(p.add(2 * i))
    }
}

impl FloatW for Bf16W {
    #[inline(always)]
    unsafe fn ld4(p: *const u8, i: usize) -> float32x4_t {
        vreinterpretq_f32_u32(vshlq_n_u32::<16>(vmovl_u16(vld1_u16((p as *const u16).add(i)))))
    }
    #[inline(always)]
    unsafe fn ld1(p: *const u8, i: usize) -> f32 {
        f32::from_bits(((p as *const u16).add(i).read_unaligned() as u32) << 16)
    }
}

/// Float weights of format `W` against f32 activations; `n` columns.
#[inline(always)]
unsafe fn tile_flt<W: FloatW, const T: usize>(w: *const u8, a: [*const u8; T], n: usize) -> [f32; T] {
    let mut acc0 = [vdupq_n_f32(0.0); T];
    let mut acc1 = [vdupq_n_f32(0.0); T];
    let mut i = 0;
    while i + 8 <= n {
        let (w0, w1) = (W::ld4(w, i), W::ld4(w, i + 4));
        for t in 0..T {
            let ap = a[t] as *const f32;
            acc0[t] = vfmaq_f32(acc0[t], w0, vld1q_f32(ap.add(i)));
            acc1[t] = vfmaq_f32(acc1[t], w1, vld1q_f32(ap.add(i + 4)));
        }
        i += 8;
    }
    let mut res = [0f32; T];
    for t in 0..T {
        let mut s = vaddvq_f32(vaddq_f32(acc0[t], acc1[t]));
        for j in i..n {
            s += W::ld1(w, j) * ld_f32(a[t].add(4 * j));
        }
        res[t] = s;
    }
    res
}

#[inline(always)]
unsafe fn tile_f16<const T: usize>(w: *const u8, a: [*const u8; T], n: usize) -> [f32; T] {
    tile_flt::<F16W, T>(w, a, n)
}

#[inline(always)]
unsafe fn tile_bf16<const T: usize>(w: *const u8, a: [*const u8; T], n: usize) -> [f32; T] {
    tile_flt::<Bf16W, T>(w, a, n)
}

#[inline(always)]
unsafe fn tile_f32<const T: usize>(w: *const u8, a: [*const u8; T], n: usize) -> [f32; T] {
    tile_flt::<F32W, T>(w, a, n)
}

drivers!(gemv_f16, gemm_f16, tile_f16[], 2, 4);
drivers!(gemv_bf16, gemm_bf16, tile_bf16[], 2, 4);
drivers!(gemv_f32, gemm_f32, tile_f32[], 4, 4);

// ---- f16 helpers ----

unsafe fn f32_to_f16_neon(x: &[f32], out: &mut [u16]) {
    let mut xs = x.chunks_exact(4);
    let mut os = out.chunks_exact_mut(4);
    for (xc, oc) in (&mut xs).zip(&mut os) {
        vst1_u16(oc.as_mut_ptr(), cvt_to_f16x4(vld1q_f32(xc.as_ptr())));
    }
    scalar::f32_to_f16_slice(xs.remainder(), os.into_remainder());
}

unsafe fn f16_to_f32_neon(x: &[u16], out: &mut [f32]) {
    let mut xs = x.chunks_exact(4);
    let mut os = out.chunks_exact_mut(4);
    for (xc, oc) in (&mut xs).zip(&mut os) {
        vst1q_f32(oc.as_mut_ptr(), cvt_f16x4(vld1_u16(xc.as_ptr())));
    }
    scalar::f16_to_f32_slice(xs.remainder(), os.into_remainder());
}

/// `y += alpha * x` with `x` of float format `W` at `x`, `y.len()` values.
unsafe fn axpy_neon<W: FloatW>(y: &mut [f32], alpha: f32, x: *const u8) {
    let n = y.len();
    let yp = y.as_mut_ptr();
    let mut i = 0;
    while i + 4 <= n {
        vst1q_f32(yp.add(i), vfmaq_n_f32(vld1q_f32(yp.add(i)), W::ld4(x, i), alpha));
        i += 4;
    }
    for j in i..n {
        *yp.add(j) += alpha * W::ld1(x, j);
    }
}
