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

/// `x = x / rms(x) * weight`, in place.
pub fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let mean_square = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (mean_square + eps).sqrt();
    for (v, w) in x.iter_mut().zip(weight) {
        *v *= scale * w;
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

/// Softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Softmax in place as if `sink` were one more logit, which takes its share of the mass and is then dropped
/// (gpt-oss's attention sinks).
pub fn softmax_with_sink(x: &mut [f32], sink: f32) {
    let max = x.iter().copied().fold(sink, f32::max);
    let mut sum = (sink - max).exp();
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// gpt-oss's clamped SwiGLU: `g = min(gate, 7)`, `u = clamp(up, -7, 7)`, `gate = g * sigmoid(1.702 g) * (u + 1)`.
pub fn swiglu_oai(gate: &mut [f32], up: &[f32]) {
    const ALPHA: f32 = 1.702;
    const LIMIT: f32 = 7.0;
    for (g, u) in gate.iter_mut().zip(up) {
        let x = g.min(LIMIT);
        *g = x / (1.0 + (-ALPHA * x).exp()) * (u.clamp(-LIMIT, LIMIT) + 1.0);
    }
}

/// `gate = silu(gate) * up`, SwiGLU's combination of the two feed-forward projections.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// `x = tanh(x / cap) * cap`, Gemma 2's soft cap on attention scores and logits.
pub fn softcap(x: &mut [f32], cap: f32) {
    let inv = 1.0 / cap;
    for v in x.iter_mut() {
        *v = (*v * inv).tanh() * cap;
    }
}

/// `gate = gelu(gate) * up` (GELU in its tanh approximation, as ggml computes it), GeGLU's combination.
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for (g, u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh()) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_takes_its_share_of_the_softmax() {
        let mut x = [1.0f32, 2.0];
        softmax_with_sink(&mut x, 3.0);
        let sum = 1f32.exp() + 2f32.exp() + 3f32.exp();
        assert!((x[0] - 1f32.exp() / sum).abs() < 1e-6 && (x[1] - 2f32.exp() / sum).abs() < 1e-6, "{x:?}");
    }

    #[test]
    fn the_clamped_swiglu_clamps_both_inputs() {
        let mut g = [1.0f32, 10.0, -2.0];
        swiglu_oai(&mut g, &[0.5, 20.0, -9.0]);
        let glu = |x: f32| x / (1.0 + (-1.702 * x).exp());
        let expect = [glu(1.0) * 1.5, glu(7.0) * 8.0, glu(-2.0) * -6.0];
        for (a, b) in g.iter().zip(expect) {
            assert!((a - b).abs() < 1e-5, "{g:?} against {expect:?}");
        }
    }

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

    #[test]
    fn geglu_is_tanh_gelu_times_up_and_in_place_norm_matches() {
        let mut g = [0.0, 1.0, -2.0];
        geglu(&mut g, &[5.0, 2.0, 1.0]);
        // gelu_tanh(1) = 0.841192, gelu_tanh(-2) = -0.0454023 (PyTorch's approximate="tanh").
        assert_eq!(g[0], 0.0);
        assert!((g[1] - 0.841_192 * 2.0).abs() < 1e-5, "{g:?}");
        assert!((g[2] + 0.045_402_3).abs() < 1e-6, "{g:?}");
        let (x, w) = ([3.0, -4.0, 0.0, 5.0], [1.0, 2.0, 1.0, 0.5]);
        let mut out = [0.0; 4];
        rms_norm(&x, &w, 1e-6, &mut out);
        let mut y = x;
        rms_norm_in_place(&mut y, &w, 1e-6);
        assert_eq!(y, out);
    }
}
