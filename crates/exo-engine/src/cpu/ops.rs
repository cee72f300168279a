//! The CPU backend's small per-position operations: RMS norm, rotary embeddings, softmax, SwiGLU.
//!
//! Each works in place or into a caller's buffer, on one position's vector at a time; none allocates. They are a
//! few percent of a decode step (the matrix products in `kernels` are the rest), so they stay plain loops.

use crate::config::RopeStyle;

/// `out = x / rms(x) * weight`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mean_square = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (mean_square + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// Rotates each head of `x` (heads of `head_dim` values, one after another) by the angles whose cosines and
/// sines are `cos`/`sin` (`head_dim / 2` each).
pub fn rope(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32], style: RopeStyle) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        match style {
            // Adjacent pairs (x[2i], x[2i+1]): llama's GGUF layout (ggml's normal rope).
            RopeStyle::Interleaved => {
                for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                    let (a, b) = (pair[0], pair[1]);
                    pair[0] = a * cos[i] - b * sin[i];
                    pair[1] = a * sin[i] + b * cos[i];
                }
            }
            // Pairs (x[i], x[i + half]): qwen2 (ggml's NeoX rope).
            RopeStyle::Halves => {
                let (lo, hi) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (lo[i], hi[i]);
                    lo[i] = a * cos[i] - b * sin[i];
                    hi[i] = a * sin[i] + b * cos[i];
                }
            }
        }
    }
}

/// Softmax in place. Written in lanes of [`LANES`] so that the compiler vectorizes the maximum, the
/// exponentials ([`exp`]) and the sum: prefill attention runs it over every (query, key) pair.
pub fn softmax(x: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        lanes.iter_mut().zip(c).for_each(|(m, &v)| *m = if v > *m { v } else { *m });
    }
    let max = chunks.remainder().iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sums = [0.0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (s, v) in sums.iter_mut().zip(c) {
            *v = exp(*v - max);
            *s += *v;
        }
    }
    let mut sum = sums.iter().sum::<f32>();
    for v in chunks.into_remainder() {
        *v = exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Values per group in the vectorizable loops.
const LANES: usize = 8;

/// `e^x` to within a few units in the last place for `x` in [-87, 88]; 0 below (where e^x is subnormal or
/// less, and -inf), e^88 above. Branch-free so that loops over it vectorize: `x = n ln 2 + r` with
/// `|r| <= ln 2 / 2`, a degree-6 Taylor polynomial for `e^r`, and `2^n` added to the exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // 1.5 * 2^23: adding it rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let tiny = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    let y = x * std::f32::consts::LOG2_E + ROUND;
    let n = y - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let k = (y.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let e = f32::from_bits((p.to_bits() as i32).wrapping_add(k << 23) as u32);
    if tiny {
        0.0
    } else {
        e
    }
}

/// `gate = silu(gate) * up`, SwiGLU's combination of the two feed-forward projections.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_scales_to_unit_rms() {
        let x = [3.0, -4.0, 0.0, 5.0];
        let mut out = [0.0; 4];
        rms_norm(&x, &[1.0, 2.0, 1.0, 1.0], 0.0, &mut out);
        let rms = (50.0f32 / 4.0).sqrt();
        assert!((out[0] - 3.0 / rms).abs() < 1e-6);
        assert!((out[1] + 8.0 / rms).abs() < 1e-6);
    }

    #[test]
    fn rope_styles_rotate_different_pairs() {
        let angle = 0.3f32;
        let (c, s) = ([1.0, angle.cos()], [0.0, angle.sin()]);
        let mut x = [1.0, 2.0, 3.0, 4.0];
        rope(&mut x, 4, &c, &s, RopeStyle::Interleaved);
        // Pair 0 (x0, x1) by angle 0, pair 1 (x2, x3) by `angle`.
        assert_eq!(&x[..2], &[1.0, 2.0]);
        assert!((x[2] - (3.0 * c[1] - 4.0 * s[1])).abs() < 1e-6);
        assert!((x[3] - (3.0 * s[1] + 4.0 * c[1])).abs() < 1e-6);

        let mut x = [1.0, 2.0, 3.0, 4.0];
        rope(&mut x, 4, &c, &s, RopeStyle::Halves);
        // Pair 0 (x0, x2) by angle 0, pair 1 (x1, x3) by `angle`.
        assert_eq!((x[0], x[2]), (1.0, 3.0));
        assert!((x[1] - (2.0 * c[1] - 4.0 * s[1])).abs() < 1e-6);
        assert!((x[3] - (2.0 * s[1] + 4.0 * c[1])).abs() < 1e-6);
    }

    #[test]
    fn exp_matches_the_standard_library() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let (ours, std) = (f64::from(exp(x)), f64::from(x).exp());
            worst = worst.max((ours - std).abs() / std);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!((exp(-1000.0), exp(f32::NEG_INFINITY)), (0.0, 0.0));
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_values() {
        let mut x = [1000.0, 1001.0, f32::NEG_INFINITY];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((x[1] / x[0] - 1f32.exp()).abs() < 1e-4);
        assert_eq!(x[2], 0.0);
    }

    #[test]
    fn swiglu_is_silu_times_up() {
        let mut g = [0.0, 2.0, -3.0];
        swiglu(&mut g, &[5.0, 0.5, 2.0]);
        assert_eq!(g[0], 0.0);
        assert!((g[1] - 2.0 / (1.0 + (-2.0f32).exp()) * 0.5).abs() < 1e-6);
        assert!((g[2] - -3.0 / (1.0 + 3.0f32.exp()) * 2.0).abs() < 1e-6);
    }
}
