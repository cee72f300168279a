//! Every variant in `Kernels::supported()` against the scalar reference, and the scalar decoding against gguf-py.

use super::*;

/// splitmix64: small deterministic generator.
struct Rng(u64);

impl Rng {
    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn f32(&mut self) -> f32 {
        (self.u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.f32()
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u64() as u8).collect()
    }
}

const ALL: [WeightType; 16] = [
    WeightType::F32,
    WeightType::F16,
    WeightType::Bf16,
    WeightType::Q4_0,
    WeightType::Q4_1,
    WeightType::Q5_0,
    WeightType::Q5_1,
    WeightType::Q8_0,
    WeightType::Q2K,
    WeightType::Q3K,
    WeightType::Q4K,
    WeightType::Q5K,
    WeightType::Q6K,
    WeightType::Iq4Nl,
    WeightType::Iq4Xs,
    WeightType::Mxfp4,
];

fn put_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&scalar::f32_to_f16(v).to_le_bytes());
}

/// Random weight rows: random quant bytes, realistic f16 scales (1e-3..1e-1), random signed Q4_1/Q5_1 mins.
fn random_weights(rng: &mut Rng, ty: WeightType, rows: usize, cols: usize) -> Vec<u8> {
    let n = rows * ty.row_bytes(cols);
    match ty {
        WeightType::F32 => (0..n / 4).flat_map(|_| rng.range(-1.0, 1.0).to_le_bytes()).collect(),
        WeightType::F16 => (0..n / 2).flat_map(|_| scalar::f32_to_f16(rng.range(-1.0, 1.0)).to_le_bytes()).collect(),
        // bfloat16 is the top half of an f32.
        WeightType::Bf16 => {
            (0..n / 2).flat_map(|_| ((rng.range(-1.0, 1.0).to_bits() >> 16) as u16).to_le_bytes()).collect()
        }
        _ => {
            let mut w = rng.bytes(n);
            let scale = |rng: &mut Rng| 10f32.powf(rng.range(-3.0, -1.0));
            for b in w.chunks_exact_mut(ty.block_bytes()) {
                match ty {
                    WeightType::Q4_1 | WeightType::Q5_1 => {
                        put_f16(b, 0, scale(rng));
                        let half_range = if ty == WeightType::Q4_1 { 8.0 } else { 16.0 };
                        let m = rng.range(-1.0, 1.0) * scale(rng) * half_range;
                        put_f16(b, 2, m);
                    }
                    WeightType::Q4K | WeightType::Q5K => {
                        put_f16(b, 0, scale(rng));
                        put_f16(b, 2, scale(rng));
                    }
                    WeightType::Q2K => {
                        put_f16(b, 80, scale(rng));
                        put_f16(b, 82, scale(rng));
                    }
                    WeightType::Q3K => put_f16(b, 108, scale(rng)),
                    WeightType::Q6K => put_f16(b, 208, scale(rng)),
                    // E8M0 exponents of 2^-10..2^-3 (the scale is 2^(e - 128)).
                    WeightType::Mxfp4 => b[0] = 118 + (rng.u64() % 8) as u8,
                    _ => put_f16(b, 0, scale(rng)),
                }
            }
            w
        }
    }
}

/// Random activations with an occasional outlier and, for longer rows, one all-zero stretch.
fn random_acts(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n).map(|_| rng.range(-1.0, 1.0) * if rng.f32() < 0.02 { 20.0 } else { 1.0 }).collect();
    if n >= 512 {
        x[256..288].iter_mut().for_each(|v| *v = 0.0);
    }
    x
}

/// The activation row as the kernels see it, dequantized (f64).
fn dequant_act(act: ActType, q: &[u8], n: usize) -> Vec<f64> {
    let f = |b: &[u8], at: usize| f32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as f64;
    match act {
        ActType::F32 => (0..n).map(|i| f(q, 4 * i)).collect(),
        ActType::Q8_32 => {
            let nb = n / 32;
            (0..nb)
                .flat_map(|b| {
                    let (d, s, qs) = scalar::q8_32_block(q, nb, b);
                    let sum: i32 = qs.iter().map(|&v| v as i32).sum();
                    assert_eq!(s, d * sum as f32, "Q8_32 s field");
                    qs.map(|v| d as f64 * v as f64)
                })
                .collect()
        }
        ActType::Q8K => {
            q.chunks_exact(Q8K_BYTES).flat_map(|b| (0..256).map(move |j| f(b, 0) * b[4 + j] as i8 as f64)).collect()
        }
    }
}

fn lengths(ty: WeightType) -> Vec<usize> {
    match ty.block_len() {
        1 => vec![1, 7, 8, 16, 33, 100, 256],
        32 => vec![32, 64, 96, 256, 288],
        b => vec![b, 2 * b, 3 * b, 8 * b],
    }
}

/// Reference dot in f64 and its tolerance (1e-4 of the sum of |terms|, plus a tiny absolute floor).
fn reference(w: &[f32], a: &[f64]) -> (f64, f64) {
    let (mut s, mut abs) = (0f64, 0f64);
    for (&w, &a) in w.iter().zip(a) {
        s += w as f64 * a;
        abs += (w as f64 * a).abs();
    }
    (s, 1e-4 * abs + 1e-7)
}

#[test]
fn gemv_and_gemm_match_reference() {
    let mut rng = Rng(1);
    for k in Kernels::supported() {
        for ty in ALL {
            for cols in lengths(ty) {
                let act_ty = ty.act_type();
                let rows = 6;
                let w = random_weights(&mut rng, ty, rows, cols);
                let rb = ty.row_bytes(cols);
                let wd: Vec<Vec<f32>> = (0..rows)
                    .map(|r| {
                        let mut o = vec![0f32; cols];
                        SCALAR.dequantize_row(ty, &w[r * rb..(r + 1) * rb], &mut o);
                        o
                    })
                    .collect();
                let n_tok = 7;
                let ab = act_ty.row_bytes(cols);
                let mut acts = vec![0u8; ab * n_tok];
                for t in 0..n_tok {
                    let x = random_acts(&mut rng, cols);
                    SCALAR.quantize_row(act_ty, &x, &mut acts[t * ab..(t + 1) * ab]);
                }
                let ad: Vec<Vec<f64>> =
                    (0..n_tok).map(|t| dequant_act(act_ty, &acts[t * ab..(t + 1) * ab], cols)).collect();
                let check = |got: f32, r: usize, t: usize, what: &str| {
                    let (want, tol) = reference(&wd[r], &ad[t]);
                    assert!(
                        (got as f64 - want).abs() <= tol,
                        "{:?} {ty:?} cols={cols} {what} row {r} tok {t}: got {got}, want {want} (tol {tol})",
                        k.isa()
                    );
                };
                // gemv, odd and even row counts.
                for n in [rows - 1, rows] {
                    let mut out = vec![f32::NAN; n];
                    k.gemv(ty, cols, &w[..n * rb], &acts[..ab], &mut out);
                    for (r, &o) in out.iter().enumerate() {
                        check(o, r, 0, "gemv");
                    }
                }
                // gemm, every token count up to 7, odd and even rows, out_stride > n_rows.
                for n_tok in 1..=7 {
                    for n_rows in [rows - 1, rows] {
                        let stride = n_rows + 3;
                        let mut out = vec![-777.0f32; (n_tok - 1) * stride + n_rows + 2];
                        k.gemm(ty, cols, &w[..n_rows * rb], n_rows, &acts[..n_tok * ab], n_tok, &mut out, stride);
                        for (i, &o) in out.iter().enumerate() {
                            let (t, r) = (i / stride, i % stride);
                            if t < n_tok && r < n_rows {
                                check(o, r, t, "gemm");
                            } else {
                                assert_eq!(o, -777.0, "{:?} {ty:?} gemm wrote outside the tile at {i}", k.isa());
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Larger rows, so that gemm's row blocking (~64 KB of weights) splits the rows: gemm must agree with gemv,
/// and both with scalar.
#[test]
fn gemm_row_blocks_match_gemv() {
    let mut rng = Rng(6);
    let (cols, rows, n_tok) = (4096, 37, 9);
    for ty in ALL {
        let w = random_weights(&mut rng, ty, rows, cols);
        let ab = ty.act_type().row_bytes(cols);
        let mut acts = vec![0u8; ab * n_tok];
        for t in 0..n_tok {
            SCALAR.quantize_row(ty.act_type(), &random_acts(&mut rng, cols), &mut acts[t * ab..(t + 1) * ab]);
        }
        let mut want = vec![0f32; rows * n_tok];
        for t in 0..n_tok {
            SCALAR.gemv(ty, cols, &w, &acts[t * ab..(t + 1) * ab], &mut want[t * rows..(t + 1) * rows]);
        }
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for k in Kernels::supported() {
            let mut got = vec![0f32; rows * n_tok];
            k.gemm(ty, cols, &w, rows, &acts, n_tok, &mut got, rows);
            let mut one = vec![0f32; rows];
            for t in 0..n_tok {
                k.gemv(ty, cols, &w, &acts[t * ab..(t + 1) * ab], &mut one);
                for r in 0..rows {
                    let (g, v, x) = (got[t * rows + r], one[r], want[t * rows + r]);
                    assert!((g - x).abs() <= 1e-4 * scale, "{:?} {ty:?} gemm r={r} t={t}: {g} vs {x}", k.isa());
                    assert!((v - x).abs() <= 1e-4 * scale, "{:?} {ty:?} gemv r={r} t={t}: {v} vs {x}", k.isa());
                }
            }
        }
    }
}

#[test]
fn quantize_matches_scalar() {
    let mut rng = Rng(2);
    for k in Kernels::supported() {
        for act in [ActType::F32, ActType::Q8_32, ActType::Q8K] {
            let ns: &[usize] = if act == ActType::Q8K { &[256, 512, 2048] } else { &[32, 96, 256, 544, 2048] };
            for &n in ns {
                let mut x = random_acts(&mut rng, n);
                // Exact ties: block 0 has 127 / max|x| = 2, so these x * 2 land on .5 values.
                x[0] = 63.5;
                x[1] = 1.25;
                x[2] = -0.25;
                x[3] = -2.25;
                // Block 1's 1000 / 127 = 7.87402 is 7.875 in f16.
                if n > 32 {
                    x[32] = 1000.0;
                }
                let mut a = vec![0u8; act.row_bytes(n)];
                let mut b = vec![1u8; act.row_bytes(n)];
                SCALAR.quantize_row(act, &x, &mut a);
                k.quantize_row(act, &x, &mut b);
                assert_eq!(a, b, "{:?} {act:?} n={n}", k.isa());
                if act == ActType::Q8K {
                    // ggml's Q8_K scale: 1 / (127 / max|x|) in f32, max|x| = 1000 here; 63.5 * 0.127 = 8.06.
                    assert_eq!(f32::from_ne_bytes(a[..4].try_into().unwrap()), 1.0 / (127.0 / 1000f32));
                    assert_eq!((a[4] as i8, a[4 + 32] as i8), (8, 127));
                }
                if act == ActType::Q8_32 {
                    // Ties rounded half to even, as ggml does: 2.5 -> 2, -0.5 -> 0, -4.5 -> -4.
                    let (d, s, q) = scalar::q8_32_block(&a, n / 32, 0);
                    assert_eq!((d, &q[..4]), (0.5, &[127i8, 2, 0, -4][..]));
                    assert_eq!(s, d * q.iter().map(|&q| q as i32).sum::<i32>() as f32);
                    // The scale is rounded to f16 (ggml's block_q8_0), the quants made with the exact one.
                    if n > 32 {
                        let (d, _, q) = scalar::q8_32_block(&a, n / 32, 1);
                        assert_eq!((d, q[0]), (7.875, 127));
                    }
                    if n >= 512 {
                        // The all-zero block 8 gives d = 0, s = 0 and q = 0.
                        assert_eq!(scalar::q8_32_block(&a, n / 32, 8), (0.0, 0.0, [0; 32]));
                    }
                }
            }
        }
    }
}

#[test]
fn dequantize_matches_scalar() {
    let mut rng = Rng(3);
    for k in Kernels::supported() {
        for ty in ALL {
            let cols = 8 * ty.block_len().max(32);
            let w = random_weights(&mut rng, ty, 1, cols);
            let (mut a, mut b) = (vec![0f32; cols], vec![1f32; cols]);
            SCALAR.dequantize_row(ty, &w, &mut a);
            k.dequantize_row(ty, &w, &mut b);
            assert_eq!(a, b, "{:?} {ty:?}", k.isa());
        }
    }
}

/// Scalar decoding against gguf-py's `gguf.quants.dequantize` (fixture written by `testdata/gen_gguf_py_blocks.py`).
#[test]
fn scalar_dequantize_matches_gguf_py() {
    let data: &[u8] = include_bytes!("testdata/gguf_py_blocks.bin");
    // The type ids of the fixture, in the generator's order.
    let types = [
        WeightType::Q4_0,
        WeightType::Q4_1,
        WeightType::Q8_0,
        WeightType::Q4K,
        WeightType::Q6K,
        WeightType::Q5_0,
        WeightType::Q5_1,
        WeightType::Q2K,
        WeightType::Q3K,
        WeightType::Q5K,
        WeightType::Bf16,
        WeightType::Iq4Nl,
        WeightType::Iq4Xs,
        WeightType::Mxfp4,
    ];
    let rd = |at: usize| u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
    let (mut at, mut seen) = (0, 0);
    while at < data.len() {
        let (ty, nb) = (types[rd(at)], rd(at + 4));
        at += 8;
        let raw = &data[at..at + nb * ty.block_bytes()];
        at += raw.len();
        let n = nb * ty.block_len();
        let want: Vec<f32> = (0..n).map(|i| f32::from_bits(rd(at + 4 * i) as u32)).collect();
        at += 4 * n;
        let mut got = vec![0f32; n];
        SCALAR.dequantize_row(ty, raw, &mut got);
        let max_diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let max_abs = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!("gguf-py {ty:?}: max diff {max_diff}");
        assert!(max_diff <= 1e-6 * max_abs, "{ty:?}: max diff {max_diff} (max |value| {max_abs})");
        seen += 1;
    }
    assert_eq!(seen, types.len());
}

/// ggml's `GGML_E8M0_TO_FP32_HALF`: 2^(e - 128), with the two subnormal cases.
#[test]
fn e8m0_half_scale_is_ggml() {
    let cases = [(0u8, -128), (1, -127), (2, -126), (127, -1), (128, 0), (130, 2), (254, 126), (255, 127)];
    for (e, p) in cases {
        assert_eq!(scalar::e8m0_half(e), 2f64.powi(p) as f32, "e = {e}");
    }
    for e in 0..=255u8 {
        assert_eq!(scalar::E8M0_HALF[e as usize], 2f64.powi(e as i32 - 128) as f32, "table at e = {e}");
    }
    // One hand-made MXFP4 block: e = 129 (scale 2), nibbles 7 (12) and 15 (-12) in byte 0, 5 (6) in byte 15.
    let mut b = [0u8; 17];
    b[0] = 129;
    b[1] = 0xf7;
    b[16] = 0x05;
    let mut out = [1f32; 32];
    SCALAR.dequantize_row(WeightType::Mxfp4, &b, &mut out);
    assert_eq!((out[0], out[16], out[15], out[31], out[1]), (24.0, -24.0, 12.0, 0.0, 0.0));
}

#[test]
fn f16_conversions() {
    // Every half round-trips exactly through f32 (NaNs stay NaN).
    for h in 0..=u16::MAX {
        let f = scalar::f16_to_f32(h);
        let back = scalar::f32_to_f16(f);
        if f.is_nan() {
            assert!(scalar::f16_to_f32(back).is_nan());
        } else {
            assert_eq!(back, h, "{h:#x}");
        }
    }
    // Rounding: halfway cases go to even, subnormals, overflow, specials.
    let cases: [(f32, u16); 12] = [
        (0.0, 0),
        (-0.0, 0x8000),
        (1.0 + 1.0 / 2048.0, 0x3c00),
        (1.0 + 3.0 / 2048.0, 0x3c02),
        (65504.0, 0x7bff),
        (65520.0, 0x7c00),
        (f32::INFINITY, 0x7c00),
        (f32::NEG_INFINITY, 0xfc00),
        (5.960_464_5e-8, 0x0001),
        (2.980_232_2e-8, 0x0000),
        (2.980_233e-8, 0x0001),
        (6.097_555e-5, 0x03ff),
    ];
    for (x, h) in cases {
        assert_eq!(scalar::f32_to_f16(x), h, "{x:e}");
    }
    // Every variant against scalar: random bit patterns (all exponents) and random moderate values, odd lengths.
    let mut rng = Rng(4);
    for k in Kernels::supported() {
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 33, 1000] {
            let mut x: Vec<f32> = (0..n)
                .map(|i| if i % 2 == 0 { f32::from_bits(rng.u64() as u32) } else { rng.range(-70000.0, 70000.0) })
                .collect();
            for (i, s) in [0.0, -0.0, 1e-6, -3e-8, f32::INFINITY, f32::MIN_POSITIVE, 65519.0].iter().enumerate() {
                if i < n {
                    x[i] = *s;
                }
            }
            let (mut a, mut b) = (vec![0u16; n], vec![1u16; n]);
            SCALAR.f32_to_f16(&x, &mut a);
            k.f32_to_f16(&x, &mut b);
            for i in 0..n {
                let nan = |h: u16| h & 0x7c00 == 0x7c00 && h & 0x3ff != 0;
                assert!(
                    a[i] == b[i] || (nan(a[i]) && nan(b[i])),
                    "{:?} {:e}: {:#x} vs {:#x}",
                    k.isa(),
                    x[i],
                    a[i],
                    b[i]
                );
            }
            let h: Vec<u16> = (0..n).map(|_| rng.u64() as u16).collect();
            let (mut fa, mut fb) = (vec![0f32; n], vec![1f32; n]);
            SCALAR.f16_to_f32(&h, &mut fa);
            k.f16_to_f32(&h, &mut fb);
            for i in 0..n {
                assert!(
                    fa[i].to_bits() == fb[i].to_bits() || (fa[i].is_nan() && fb[i].is_nan()),
                    "{:?} {:#x}",
                    k.isa(),
                    h[i]
                );
            }
        }
    }
}

#[test]
fn f16_and_f32_vector_helpers() {
    let mut rng = Rng(5);
    for k in Kernels::supported() {
        for n in [0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 100, 1001] {
            let a: Vec<f32> = (0..n).map(|_| rng.range(-2.0, 2.0)).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.range(-2.0, 2.0)).collect();
            let mut h = vec![0u16; n];
            SCALAR.f32_to_f16(&a, &mut h);
            let ah: Vec<f32> = h.iter().map(|&v| scalar::f16_to_f32(v)).collect();
            let abs: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum::<f64>() + 1e-6;
            let exact = |x: &[f32]| x.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>();
            let d32 = k.dot_f32(&a, &b) as f64;
            assert!((d32 - exact(&a)).abs() <= 1e-5 * abs, "{:?} dot_f32 n={n}", k.isa());
            let d16 = k.dot_f16(&h, &b) as f64;
            assert!((d16 - exact(&ah)).abs() <= 1e-5 * abs, "{:?} dot_f16 n={n}", k.isa());
            let alpha = rng.range(-1.5, 1.5);
            let (mut y1, mut y2) = (b.clone(), b.clone());
            k.axpy_f32(&mut y1, alpha, &a);
            k.axpy_f16(&mut y2, alpha, &h);
            for i in 0..n {
                let w1 = b[i] as f64 + alpha as f64 * a[i] as f64;
                let w2 = b[i] as f64 + alpha as f64 * ah[i] as f64;
                assert!((y1[i] as f64 - w1).abs() <= 1e-6 * (1.0 + w1.abs()), "{:?} axpy_f32 n={n} i={i}", k.isa());
                assert!((y2[i] as f64 - w2).abs() <= 1e-6 * (1.0 + w2.abs()), "{:?} axpy_f16 n={n} i={i}", k.isa());
            }
        }
        // Specials through the vector paths: inf propagates, subnormal halves count.
        let h = [0x7c00u16, 0x0001, 0, 0x8000, 0x3c00, 0x0001, 0x0001, 0x0001, 0x0001];
        let b = [0.0f32, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        assert!(k.dot_f16(&h[1..], &b[1..]) == 5.0 * 5.960_464_5e-8, "{:?}", k.isa());
        assert!(k.dot_f16(&h, &[1.0; 9]).is_infinite());
    }
}

#[test]
fn best_is_supported_and_sizes_are_ggml() {
    let best = Kernels::best();
    let isas: Vec<Isa> = Kernels::supported().iter().map(|k| k.isa()).collect();
    eprintln!("variants tested: {isas:?}, best: {:?}", best.isa());
    assert_eq!(isas.last(), Some(&best.isa()));
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
        assert_eq!(best.isa(), Isa::Avx2);
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        assert_eq!(isas, [Isa::Scalar, Isa::Neon, Isa::NeonDot]);
    } else {
        assert_eq!(isas, [Isa::Scalar, Isa::Neon]);
    }
    let bytes: Vec<usize> = ALL.iter().map(|t| t.block_bytes()).collect();
    assert_eq!(bytes, [4, 2, 2, 18, 20, 22, 24, 34, 84, 110, 144, 176, 210, 18, 136, 17]);
    assert_eq!(WeightType::Iq4Xs.row_bytes(512), 2 * 136);
    assert_eq!((WeightType::Iq4Nl.act_type(), WeightType::Mxfp4.act_type()), (ActType::Q8_32, ActType::Q8_32));
    assert_eq!(WeightType::Iq4Xs.act_type(), ActType::Q8K);
    assert_eq!(WeightType::Q4K.row_bytes(4096), 16 * 144);
    assert_eq!(ActType::Q8K.row_bytes(512), 2 * Q8K_BYTES);
    assert_eq!(ActType::Q8_32.row_bytes(64), 80);
}

/// Not a check: GB/s of weight bytes streamed by one-thread gemv over a 4096 x 4096 matrix, per type and variant,
/// and each variant's ratio to scalar. Run with
/// `cargo test -p exo-engine --lib kernels::tests::gemv_throughput -- --ignored --nocapture`
/// (the dev profile builds this crate at opt-level 3). The matrix (8-32 MB) may sit in a large L3 cache.
#[test]
#[ignore]
fn gemv_throughput() {
    let (rows, cols) = (4096, 4096);
    let mut rng = Rng(8);
    let variants = Kernels::supported();
    let mut head = format!("{:<6} {:>9}", "type", "MB");
    for k in &variants {
        head += &format!(" {:>12}", format!("{:?} GB/s", k.isa()));
    }
    for k in &variants[1..] {
        head += &format!(" {:>14}", format!("{:?}/Scalar", k.isa()));
    }
    println!("{head}");
    for ty in ALL {
        let w = random_weights(&mut rng, ty, rows, cols);
        let mut act = vec![0u8; ty.act_type().row_bytes(cols)];
        SCALAR.quantize_row(ty.act_type(), &random_acts(&mut rng, cols), &mut act);
        let mut out = vec![0f32; rows];
        let speeds: Vec<f64> = variants
            .iter()
            .map(|k| {
                // The best of several runs, at least 0.3 s of them in all.
                let (start, mut best) = (std::time::Instant::now(), f64::INFINITY);
                while start.elapsed().as_secs_f64() < 0.3 || best.is_infinite() {
                    let t = std::time::Instant::now();
                    k.gemv(ty, cols, &w, &act, &mut out);
                    std::hint::black_box(&mut out);
                    best = best.min(t.elapsed().as_secs_f64());
                }
                w.len() as f64 / best / 1e9
            })
            .collect();
        let mut line = format!("{:<6} {:>9.1}", format!("{ty:?}"), w.len() as f64 / 1e6);
        for s in &speeds {
            line += &format!(" {s:>12.2}");
        }
        for s in &speeds[1..] {
            line += &format!(" {:>14.1}", s / speeds[0]);
        }
        println!("{line}");
    }
}
