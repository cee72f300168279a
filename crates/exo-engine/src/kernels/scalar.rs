//! Plain reference kernels: written for clarity, used as the truth by the tests and as the fallback everywhere.
//! Dot products follow the same integer formulation as the SIMD kernels.

use super::{q8_32_at, WeightType, IQ4NL_VALUES, MXFP4_VALUES, Q8K_BSUMS, Q8K_BYTES, Q8_32_BYTES};

/// IEEE half (bits) to f32, exact.
pub(super) fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if man == 0 => sign,
        // Subnormal: man * 2^-24, exact in f32.
        0 => sign | (man as f32 * (1.0 / 16_777_216.0)).to_bits(),
        31 => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// f32 to IEEE half (bits), round to nearest even; NaN stays NaN (quieted, top payload bits kept).
pub(super) fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return if man == 0 { sign | 0x7c00 } else { sign | 0x7e00 | (man >> 13) as u16 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        // Subnormal half: mantissa (with the implicit bit) shifted right, rounded to nearest even.
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let (r, rem, half) = (m >> shift, m & ((1 << shift) - 1), 1 << (shift - 1));
        let r = if rem > half || (rem == half && r & 1 == 1) { r + 1 } else { r };
        return sign | r as u16;
    }
    let r = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    // A carry out of the mantissa correctly bumps the exponent (up to infinity).
    let r = if rem > 0x1000 || (rem == 0x1000 && r & 1 == 1) { r + 1 } else { r };
    sign | r as u16
}

fn rd_f16(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// bfloat16 (the top half of an f32) to f32, exact.
fn rd_bf16(b: &[u8], at: usize) -> f32 {
    f32::from_bits((u16::from_le_bytes([b[at], b[at + 1]]) as u32) << 16)
}

fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn rd_f32(b: &[u8], at: usize) -> f32 {
    f32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn rd_i16(b: &[u8], at: usize) -> i16 {
    i16::from_ne_bytes([b[at], b[at + 1]])
}

/// `q = round(x * 127 / max|x|)` (half to even) into `qs`; returns `max|x|` and `Σq`. ggml's rounding, shared by
/// all variants.
fn quant_block(x: &[f32], qs: &mut [u8]) -> (f32, i32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let iscale = if amax == 0.0 { 0.0 } else { 127.0 / amax };
    let mut sum = 0;
    for (q, &v) in qs.iter_mut().zip(x) {
        let v = (v * iscale).round_ties_even() as i32;
        sum += v;
        *q = v as i8 as u8;
    }
    (amax, sum)
}

/// A `Q8_32` block's scale for `max|x|`: `max|x| / 127` rounded to f16, as ggml stores it in `block_q8_0`.
pub(super) fn q8_32_scale(amax: f32) -> f32 {
    f16_to_f32(f32_to_f16(amax / 127.0))
}

/// A `Q8K` block's scale for `max|x|`: `1 / (127 / max|x|)` in f32, as ggml's `quantize_row_q8_K` has it.
pub(super) fn q8k_scale(amax: f32) -> f32 {
    if amax == 0.0 {
        0.0
    } else {
        1.0 / (127.0 / amax)
    }
}

/// Quantizes whole blocks of 32 to `Q8_32` (pair-interleaved layout, see [`q8_32_at`]).
pub(super) fn quantize_q8_32(x: &[f32], out: &mut [u8]) {
    let nb = (x.len() / 32).min(out.len() / Q8_32_BYTES);
    for (b, xb) in x.chunks_exact(32).enumerate().take(nb) {
        let mut q = [0u8; 32];
        let (amax, sum) = quant_block(xb, &mut q);
        let d = q8_32_scale(amax);
        let (od, os, lo, hi) = q8_32_at(nb, b);
        out[od..od + 4].copy_from_slice(&d.to_ne_bytes());
        out[os..os + 4].copy_from_slice(&(d * sum as f32).to_ne_bytes());
        out[lo..lo + 16].copy_from_slice(&q[..16]);
        out[hi..hi + 16].copy_from_slice(&q[16..]);
    }
}

/// Block `b` of a `Q8_32` row of `nb` blocks: `(d, s, qs)`.
pub(super) fn q8_32_block(a: &[u8], nb: usize, b: usize) -> (f32, f32, [i8; 32]) {
    let (od, os, lo, hi) = q8_32_at(nb, b);
    let mut q = [0i8; 32];
    for j in 0..16 {
        q[j] = a[lo + j] as i8;
        q[16 + j] = a[hi + j] as i8;
    }
    (rd_f32(a, od), rd_f32(a, os), q)
}

/// Quantizes whole blocks of 256 to `Q8K`.
pub(super) fn quantize_q8k(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(256).zip(out.chunks_exact_mut(Q8K_BYTES)) {
        let (amax, _) = quant_block(xb, &mut ob[4..260]);
        ob[0..4].copy_from_slice(&q8k_scale(amax).to_ne_bytes());
        for j in 0..16 {
            let s: i16 = ob[4 + 16 * j..4 + 16 * j + 16].iter().map(|&q| q as i8 as i16).sum();
            ob[Q8K_BSUMS + 2 * j..Q8K_BSUMS + 2 * j + 2].copy_from_slice(&s.to_ne_bytes());
        }
    }
}

/// The 8 six-bit scales and 8 six-bit mins of a Q4_K block (`get_scale_min_k4` packing).
pub(super) fn q4k_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0x0f) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

/// The 32 unsigned quants of a Q4_0/Q4_1 block (0..16: a nibble) or a Q5_0/Q5_1 block (0..32: a nibble and bit
/// `j` of the little-endian `qh` word). Element `j < 16` is the low nibble of byte `j`, element `16 + j` its high
/// nibble.
pub(super) fn q32_quants(ty: WeightType, b: &[u8]) -> [i32; 32] {
    let (qh, qs) = match ty {
        WeightType::Q4_0 => (0, &b[2..18]),
        WeightType::Q4_1 => (0, &b[4..20]),
        WeightType::Q5_0 => (rd_u32(b, 2), &b[6..22]),
        _ => (rd_u32(b, 4), &b[8..24]),
    };
    let mut q = [0i32; 32];
    for j in 0..16 {
        q[j] = (qs[j] & 0x0f) as i32 | (((qh >> j) & 1) << 4) as i32;
        q[j + 16] = (qs[j] >> 4) as i32 | (((qh >> (j + 16)) & 1) << 4) as i32;
    }
    q
}

/// The 2-bit quant (0..4) of element `i` of a Q2_K block (value = d * (scales[i / 16] & 15) * q - dmin *
/// (scales[i / 16] >> 4)): each 128-half has 32 bytes of quants, its four 32-element quarters in bits 0-1, 2-3,
/// 4-5 and 6-7 of the same bytes.
pub(super) fn q2k_quant(b: &[u8], i: usize) -> i32 {
    let (half, quarter) = (i / 128, i % 128 / 32);
    ((b[16 + 32 * half + i % 32] >> (2 * quarter)) & 3) as i32
}

/// The 16 signed 6-bit scales of a Q3_K block (stored with a +32 bias): the low four bits of scale `s < 8` in the
/// low nibble of byte `s`, of scale `s >= 8` in the high nibble of byte `s - 8`; the top two bits of scale `s` in
/// bits `2 * (s / 4)` of byte `8 + s % 4`.
pub(super) fn q3k_scales(s: &[u8]) -> [i8; 16] {
    let mut sc = [0i8; 16];
    for (j, v) in sc.iter_mut().enumerate() {
        let lo = if j < 8 { s[j] & 0x0f } else { s[j - 8] >> 4 };
        let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *v = (lo | (hi << 4)) as i8 - 32;
    }
    sc
}

/// The 3-bit unsigned quant (0..8) of element `i` of a Q3_K block (value = d * scale[i / 16] * (q - 4)): the
/// low two bits packed as in Q2_K, the third bit in bit `i / 32` of hmask byte `i % 32`.
pub(super) fn q3k_quant(b: &[u8], i: usize) -> i32 {
    let (half, quarter) = (i / 128, i % 128 / 32);
    let lo = (b[32 + 32 * half + i % 32] >> (2 * quarter)) & 3;
    let hi = (b[i % 32] >> (i / 32)) & 1;
    (lo | (hi << 2)) as i32
}

/// The 5-bit unsigned quant (0..32) of element `i` of a Q5_K block (value = d * sc[i / 32] * q - dmin *
/// mn[i / 32], scales as Q4_K): the low nibbles as Q4_K's, the fifth bit in bit `i / 32` of qh byte `i % 32`.
pub(super) fn q5k_quant(b: &[u8], i: usize) -> i32 {
    let (c, l) = (i / 64, i % 32);
    let q = b[48 + 32 * c + l];
    let lo = if i % 64 < 32 { q & 0x0f } else { q >> 4 };
    let hi = (b[16 + l] >> (i / 32)) & 1;
    (lo | (hi << 4)) as i32
}

/// The 6-bit unsigned quant (0..64) of element `i` of a Q6_K block (value = d * scale[i / 16] * (q - 32)).
pub(super) fn q6k_quant(b: &[u8], i: usize) -> i32 {
    let (half, l) = (i / 128, i % 128);
    let (ql, qh) = (&b[64 * half..64 * half + 64], &b[128 + 32 * half..128 + 32 * half + 32]);
    let quarter = l / 32; // which 2-bit field of qh, and low/high nibble of ql
    let lo = if quarter < 2 { ql[l] & 0x0f } else { ql[l - 64] >> 4 };
    let hi = (qh[l % 32] >> (2 * quarter)) & 3;
    (lo | (hi << 4)) as i32
}

/// ggml's `GGML_E8M0_TO_FP32_HALF`: half the E8M0 scale `2^(e - 127)`, i.e. `2^(e - 128)`, exact for every `e`
/// (`e < 2` gives the subnormals 2^-128 and 2^-127).
#[inline]
pub(super) fn e8m0_half(e: u8) -> f32 {
    f32::from_bits(e8m0_half_bits(e))
}

const fn e8m0_half_bits(e: u8) -> u32 {
    if e < 2 {
        0x0020_0000 << e
    } else {
        ((e as u32) - 1) << 23
    }
}

/// [`e8m0_half`] of every exponent, for the SIMD kernels (a load instead of a branch per block).
pub(super) static E8M0_HALF: [f32; 256] = {
    let mut t = [0f32; 256];
    let mut e = 0;
    while e < 256 {
        t[e] = f32::from_bits(e8m0_half_bits(e as u8));
        e += 1;
    }
    t
};

/// The 32 nibbles of 16 quant bytes in element order: element `j < 16` is the low nibble of byte `j`, element
/// `16 + j` its high nibble (IQ4_NL, MXFP4, and each 32-value sub-block of IQ4_XS).
pub(super) fn nibbles(qs: &[u8]) -> [usize; 32] {
    let mut q = [0usize; 32];
    for j in 0..16 {
        q[j] = (qs[j] & 0x0f) as usize;
        q[j + 16] = (qs[j] >> 4) as usize;
    }
    q
}

/// The eight signed sub-block scales `ls - 32` of an IQ4_XS block: the low four bits of `ls` of sub-block `s` in
/// nibble `s % 2` of `scales_l[s / 2]`, the top two bits in bits `2s..2s+2` of the little-endian `scales_h`.
pub(super) fn iq4xs_scales(b: &[u8]) -> [i32; 8] {
    let h = u16::from_le_bytes([b[2], b[3]]) as u32;
    let mut sc = [0i32; 8];
    for (s, v) in sc.iter_mut().enumerate() {
        let lo = (b[4 + s / 2] >> (4 * (s % 2))) as u32 & 0x0f;
        *v = (lo | (((h >> (2 * s)) & 3) << 4)) as i32 - 32;
    }
    sc
}

/// Dequantizes one block of `ty` into `out` (`ty.block_len()` values).
fn dequant_block(ty: WeightType, b: &[u8], out: &mut [f32]) {
    match ty {
        WeightType::F32 => out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        WeightType::F16 => out[0] = rd_f16(b, 0),
        WeightType::Bf16 => out[0] = rd_bf16(b, 0),
        WeightType::Q4_0 | WeightType::Q5_0 => {
            let (d, zero) = (rd_f16(b, 0), if ty == WeightType::Q4_0 { 8 } else { 16 });
            for (o, q) in out.iter_mut().zip(q32_quants(ty, b)) {
                *o = d * (q - zero) as f32;
            }
        }
        WeightType::Q4_1 | WeightType::Q5_1 => {
            let (d, m) = (rd_f16(b, 0), rd_f16(b, 2));
            for (o, q) in out.iter_mut().zip(q32_quants(ty, b)) {
                *o = d * q as f32 + m;
            }
        }
        WeightType::Q8_0 => {
            let d = rd_f16(b, 0);
            for j in 0..32 {
                out[j] = d * (b[2 + j] as i8) as f32;
            }
        }
        WeightType::Q4K => {
            let (d, dmin) = (rd_f16(b, 0), rd_f16(b, 2));
            let (sc, mn) = q4k_scales_mins(&b[4..16]);
            for c in 0..4 {
                let qs = &b[16 + 32 * c..16 + 32 * c + 32];
                for l in 0..32 {
                    out[64 * c + l] = d * sc[2 * c] as f32 * (qs[l] & 0x0f) as f32 - dmin * mn[2 * c] as f32;
                    out[64 * c + 32 + l] = d * sc[2 * c + 1] as f32 * (qs[l] >> 4) as f32 - dmin * mn[2 * c + 1] as f32;
                }
            }
        }
        WeightType::Q2K => {
            let (d, dmin) = (rd_f16(b, 80), rd_f16(b, 82));
            for (i, o) in out.iter_mut().enumerate().take(256) {
                let s = b[i / 16];
                *o = d * (s & 0x0f) as f32 * q2k_quant(b, i) as f32 - dmin * (s >> 4) as f32;
            }
        }
        WeightType::Q3K => {
            let d = rd_f16(b, 108);
            let sc = q3k_scales(&b[96..108]);
            for (i, o) in out.iter_mut().enumerate().take(256) {
                *o = d * sc[i / 16] as f32 * (q3k_quant(b, i) - 4) as f32;
            }
        }
        WeightType::Q5K => {
            let (d, dmin) = (rd_f16(b, 0), rd_f16(b, 2));
            let (sc, mn) = q4k_scales_mins(&b[4..16]);
            for (i, o) in out.iter_mut().enumerate().take(256) {
                *o = d * sc[i / 32] as f32 * q5k_quant(b, i) as f32 - dmin * mn[i / 32] as f32;
            }
        }
        WeightType::Q6K => {
            let d = rd_f16(b, 208);
            for (i, o) in out.iter_mut().enumerate().take(256) {
                *o = d * (b[192 + i / 16] as i8) as f32 * (q6k_quant(b, i) - 32) as f32;
            }
        }
        WeightType::Iq4Nl => {
            let d = rd_f16(b, 0);
            for (o, q) in out.iter_mut().zip(nibbles(&b[2..18])) {
                *o = d * IQ4NL_VALUES[q] as f32;
            }
        }
        WeightType::Mxfp4 => {
            let d = e8m0_half(b[0]);
            for (o, q) in out.iter_mut().zip(nibbles(&b[1..17])) {
                *o = d * MXFP4_VALUES[q] as f32;
            }
        }
        WeightType::Iq4Xs => {
            let d = rd_f16(b, 0);
            for (s, ls) in iq4xs_scales(b).into_iter().enumerate() {
                let dl = d * ls as f32;
                for (o, q) in out[32 * s..32 * s + 32].iter_mut().zip(nibbles(&b[8 + 16 * s..24 + 16 * s])) {
                    *o = dl * IQ4NL_VALUES[q] as f32;
                }
            }
        }
    }
}

/// Dequantizes a row of whole blocks.
pub(super) fn dequantize_row(ty: WeightType, w: &[u8], out: &mut [f32]) {
    for (b, o) in w.chunks_exact(ty.block_bytes()).zip(out.chunks_exact_mut(ty.block_len())) {
        dequant_block(ty, b, o);
    }
}

/// Dot product of one weight row with one activation row (both whole blocks).
pub(super) fn dot_row(ty: WeightType, w: &[u8], a: &[u8]) -> f32 {
    match ty {
        WeightType::F32 => w.chunks_exact(4).zip(a.chunks_exact(4)).map(|(w, a)| rd_f32(w, 0) * rd_f32(a, 0)).sum(),
        WeightType::F16 => w.chunks_exact(2).zip(a.chunks_exact(4)).map(|(w, a)| rd_f16(w, 0) * rd_f32(a, 0)).sum(),
        WeightType::Bf16 => w.chunks_exact(2).zip(a.chunks_exact(4)).map(|(w, a)| rd_bf16(w, 0) * rd_f32(a, 0)).sum(),
        WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q5_0 | WeightType::Q5_1 | WeightType::Q8_0 => {
            let nb = (w.len() / ty.block_bytes()).min(a.len() / Q8_32_BYTES);
            let mut acc = 0f32;
            for (b, wb) in w.chunks_exact(ty.block_bytes()).enumerate().take(nb) {
                let (da, sa, aq) = q8_32_block(a, nb, b);
                let dw = rd_f16(wb, 0);
                let qa = |j: usize| aq[j] as i32;
                acc += match ty {
                    WeightType::Q8_0 => dw * da * (0..32).map(|j| (wb[2 + j] as i8 as i32) * qa(j)).sum::<i32>() as f32,
                    _ => {
                        // Unsigned quants q: value = d*q + offset, the offset -8d (Q4_0), -16d (Q5_0) or m (Q4_1,
                        // Q5_1); Σ offset * a is offset * s.
                        let s: i32 = q32_quants(ty, wb).iter().enumerate().map(|(j, &q)| q * qa(j)).sum();
                        let offset = match ty {
                            WeightType::Q4_0 => -8.0 * dw,
                            WeightType::Q5_0 => -16.0 * dw,
                            _ => rd_f16(wb, 2),
                        };
                        dw * da * s as f32 + offset * sa
                    }
                };
            }
            acc
        }
        WeightType::Iq4Nl | WeightType::Mxfp4 => {
            // Signed table values: no offset, so the activation sums s are not needed.
            let nb = (w.len() / ty.block_bytes()).min(a.len() / Q8_32_BYTES);
            let mut acc = 0f32;
            for (b, wb) in w.chunks_exact(ty.block_bytes()).enumerate().take(nb) {
                let (da, _, aq) = q8_32_block(a, nb, b);
                let (dw, table, qs) = match ty {
                    WeightType::Iq4Nl => (rd_f16(wb, 0), &IQ4NL_VALUES, &wb[2..18]),
                    _ => (e8m0_half(wb[0]), &MXFP4_VALUES, &wb[1..17]),
                };
                let s: i32 = nibbles(qs).iter().zip(aq).map(|(&q, a)| table[q] as i32 * a as i32).sum();
                acc += dw * da * s as f32;
            }
            acc
        }
        WeightType::Iq4Xs => {
            let mut acc = 0f32;
            for (wb, ab) in w.chunks_exact(136).zip(a.chunks_exact(Q8K_BYTES)) {
                let mut sum = 0i32;
                for (s, ls) in iq4xs_scales(wb).into_iter().enumerate() {
                    let q = nibbles(&wb[8 + 16 * s..24 + 16 * s]);
                    let p: i32 = (0..32).map(|j| IQ4NL_VALUES[q[j]] as i32 * (ab[4 + 32 * s + j] as i8 as i32)).sum();
                    sum += ls * p;
                }
                acc += rd_f32(ab, 0) * rd_f16(wb, 0) * sum as f32;
            }
            acc
        }
        WeightType::Q4K => {
            let mut acc = 0f32;
            for (wb, ab) in w.chunks_exact(144).zip(a.chunks_exact(Q8K_BYTES)) {
                let (sc, mn) = q4k_scales_mins(&wb[4..16]);
                let aq = |j: usize| ab[4 + j] as i8 as i32;
                let (mut sum, mut msum) = (0i32, 0i32);
                for c in 0..4 {
                    let qs = &wb[16 + 32 * c..16 + 32 * c + 32];
                    let lo: i32 = (0..32).map(|l| (qs[l] & 0x0f) as i32 * aq(64 * c + l)).sum();
                    let hi: i32 = (0..32).map(|l| (qs[l] >> 4) as i32 * aq(64 * c + 32 + l)).sum();
                    sum += sc[2 * c] as i32 * lo + sc[2 * c + 1] as i32 * hi;
                }
                for (j, &m) in mn.iter().enumerate() {
                    let bs = rd_i16(ab, Q8K_BSUMS + 4 * j) as i32 + rd_i16(ab, Q8K_BSUMS + 4 * j + 2) as i32;
                    msum += m as i32 * bs;
                }
                let da = rd_f32(ab, 0);
                acc += da * (rd_f16(wb, 0) * sum as f32 - rd_f16(wb, 2) * msum as f32);
            }
            acc
        }
        WeightType::Q2K => {
            let mut acc = 0f32;
            for (wb, ab) in w.chunks_exact(84).zip(a.chunks_exact(Q8K_BYTES)) {
                let (mut sum, mut msum) = (0i32, 0i32);
                for j in 0..16 {
                    let s: i32 = (16 * j..16 * j + 16).map(|i| q2k_quant(wb, i) * (ab[4 + i] as i8 as i32)).sum();
                    sum += (wb[j] & 0x0f) as i32 * s;
                    msum += (wb[j] >> 4) as i32 * rd_i16(ab, Q8K_BSUMS + 2 * j) as i32;
                }
                acc += rd_f32(ab, 0) * (rd_f16(wb, 80) * sum as f32 - rd_f16(wb, 82) * msum as f32);
            }
            acc
        }
        WeightType::Q3K => {
            let mut acc = 0f32;
            for (wb, ab) in w.chunks_exact(110).zip(a.chunks_exact(Q8K_BYTES)) {
                let sc = q3k_scales(&wb[96..108]);
                let mut sum = 0i32;
                for (j, &scale) in sc.iter().enumerate() {
                    let s: i32 = (16 * j..16 * j + 16).map(|i| q3k_quant(wb, i) * (ab[4 + i] as i8 as i32)).sum();
                    let bsum = rd_i16(ab, Q8K_BSUMS + 2 * j) as i32;
                    sum += scale as i32 * (s - 4 * bsum);
                }
                acc += rd_f32(ab, 0) * rd_f16(wb, 108) * sum as f32;
            }
            acc
        }
        WeightType::Q5K => {
            let mut acc = 0f32;
            for (wb, ab) in w.chunks_exact(176).zip(a.chunks_exact(Q8K_BYTES)) {
                let (sc, mn) = q4k_scales_mins(&wb[4..16]);
                let (mut sum, mut msum) = (0i32, 0i32);
                for g in 0..8 {
                    let s: i32 = (32 * g..32 * g + 32).map(|i| q5k_quant(wb, i) * (ab[4 + i] as i8 as i32)).sum();
                    let bs = rd_i16(ab, Q8K_BSUMS + 4 * g) as i32 + rd_i16(ab, Q8K_BSUMS + 4 * g + 2) as i32;
                    sum += sc[g] as i32 * s;
                    msum += mn[g] as i32 * bs;
                }
                acc += rd_f32(ab, 0) * (rd_f16(wb, 0) * sum as f32 - rd_f16(wb, 2) * msum as f32);
            }
            acc
        }
        WeightType::Q6K => {
            let mut acc = 0f32;
            for (wb, ab) in w.chunks_exact(210).zip(a.chunks_exact(Q8K_BYTES)) {
                let mut sum = 0i32;
                for j in 0..16 {
                    let s: i32 = (16 * j..16 * j + 16).map(|i| q6k_quant(wb, i) * (ab[4 + i] as i8 as i32)).sum();
                    let bsum = rd_i16(ab, Q8K_BSUMS + 2 * j) as i32;
                    sum += (wb[192 + j] as i8 as i32) * (s - 32 * bsum);
                }
                acc += rd_f32(ab, 0) * rd_f16(wb, 208) * sum as f32;
            }
            acc
        }
    }
}

pub(super) fn gemv(ty: WeightType, cols: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
    let rb = ty.row_bytes(cols);
    let a = &act[..ty.act_type().row_bytes(cols)];
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot_row(ty, &w[r * rb..(r + 1) * rb], a);
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(
    ty: WeightType,
    cols: usize,
    w: &[u8],
    n_rows: usize,
    acts: &[u8],
    n_tok: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    let ab = ty.act_type().row_bytes(cols);
    for t in 0..n_tok {
        gemv(ty, cols, w, &acts[t * ab..(t + 1) * ab], &mut out[t * out_stride..t * out_stride + n_rows]);
    }
}

pub(super) fn f32_to_f16_slice(x: &[f32], out: &mut [u16]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = f32_to_f16(v);
    }
}

pub(super) fn f16_to_f32_slice(x: &[u16], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = f16_to_f32(v);
    }
}

pub(super) fn dot_f16(a: &[u16], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(&a, &b)| f16_to_f32(a) * b).sum()
}

pub(super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(&a, &b)| a * b).sum()
}

pub(super) fn axpy_f16(y: &mut [f32], alpha: f32, x: &[u16]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += alpha * f16_to_f32(x);
    }
}

pub(super) fn axpy_f32(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}
