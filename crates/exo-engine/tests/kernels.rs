//! The CPU kernels against candle, an independent implementation of the same GGUF block formats: every kernel
//! variant this machine runs must decode random blocks of every weight type exactly as candle does, and its
//! matrix-vector and matrix-matrix products must agree with a plain f64 product of candle's decoded weights
//! (within what quantizing the activations to 8 bits costs).

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
use candle_core::Device;
use exo_engine::kernels::{Kernels, WeightType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TYPES: [(WeightType, GgmlDType); 13] = [
    (WeightType::F32, GgmlDType::F32),
    (WeightType::F16, GgmlDType::F16),
    (WeightType::Bf16, GgmlDType::BF16),
    (WeightType::Q4_0, GgmlDType::Q4_0),
    (WeightType::Q4_1, GgmlDType::Q4_1),
    (WeightType::Q5_0, GgmlDType::Q5_0),
    (WeightType::Q5_1, GgmlDType::Q5_1),
    (WeightType::Q8_0, GgmlDType::Q8_0),
    (WeightType::Q2K, GgmlDType::Q2K),
    (WeightType::Q3K, GgmlDType::Q3K),
    (WeightType::Q4K, GgmlDType::Q4K),
    (WeightType::Q5K, GgmlDType::Q5K),
    (WeightType::Q6K, GgmlDType::Q6K),
];

/// A random positive f16 between about 2^-10 and 2^-4 (a realistic block scale), as bits.
fn scale(rng: &mut StdRng) -> [u8; 2] {
    let bits: u16 = (rng.random_range(5u16..=11) << 10) | rng.random_range(0u16..1024);
    bits.to_le_bytes()
}

/// `rows` rows of `cols` random values of type `ty`, as the file would store them.
fn random_rows(ty: WeightType, rows: usize, cols: usize, rng: &mut StdRng) -> Vec<u8> {
    let mut data = vec![0u8; rows * ty.row_bytes(cols)];
    match ty {
        WeightType::F32 => {
            for v in data.chunks_exact_mut(4) {
                v.copy_from_slice(&rng.random_range(-1.0f32..1.0).to_le_bytes());
            }
        }
        WeightType::F16 => {
            for v in data.chunks_exact_mut(2) {
                let mut s = scale(rng);
                s[1] |= if rng.random_bool(0.5) { 0x80 } else { 0 };
                v.copy_from_slice(&s);
            }
        }
        WeightType::Bf16 => {
            // bfloat16: the top half of an f32.
            for v in data.chunks_exact_mut(2) {
                v.copy_from_slice(&((rng.random_range(-1.0f32..1.0).to_bits() >> 16) as u16).to_le_bytes());
            }
        }
        _ => {
            rng.fill(&mut data[..]);
            for block in data.chunks_exact_mut(ty.block_bytes()) {
                // The f16 scale fields, wherever the format keeps them.
                let fields: &[usize] = match ty {
                    WeightType::Q4_0 | WeightType::Q5_0 | WeightType::Q8_0 => &[0],
                    WeightType::Q4_1 | WeightType::Q5_1 | WeightType::Q4K | WeightType::Q5K => &[0, 2],
                    WeightType::Q2K => &[80, 82],
                    WeightType::Q3K => &[108],
                    WeightType::Q6K => &[208],
                    _ => unreachable!(),
                };
                for &at in fields {
                    block[at..at + 2].copy_from_slice(&scale(rng));
                }
            }
        }
    }
    data
}

fn candle_rows(ty: GgmlDType, data: &[u8], rows: usize, cols: usize) -> Vec<f32> {
    let t = qtensor_from_ggml(ty, data, vec![rows, cols], &Device::Cpu).unwrap();
    t.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn every_variant_decodes_blocks_as_candle_does() {
    let mut rng = StdRng::seed_from_u64(7);
    for kernels in Kernels::supported() {
        for (ty, dtype) in TYPES {
            let (rows, cols) = (3, 512);
            let data = random_rows(ty, rows, cols, &mut rng);
            let expected = candle_rows(dtype, &data, rows, cols);
            let mut row = vec![0f32; cols];
            for r in 0..rows {
                kernels.dequantize_row(ty, &data[r * ty.row_bytes(cols)..(r + 1) * ty.row_bytes(cols)], &mut row);
                for (c, (a, b)) in row.iter().zip(&expected[r * cols..(r + 1) * cols]).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-6 * b.abs().max(1e-3),
                        "{:?} {ty:?}: row {r} col {c}: {a} vs candle's {b}",
                        kernels.isa()
                    );
                }
            }
        }
    }
}

#[test]
fn every_variant_multiplies_as_a_plain_product_of_candles_weights() {
    let mut rng = StdRng::seed_from_u64(11);
    for kernels in Kernels::supported() {
        for (ty, dtype) in TYPES {
            let (rows, cols, n_tok) = (13, 768, 5);
            let data = random_rows(ty, rows, cols, &mut rng);
            let w = candle_rows(dtype, &data, rows, cols);
            let x: Vec<f32> = (0..n_tok * cols).map(|_| rng.random_range(-2.0f32..2.0)).collect();

            let act = ty.act_type();
            let rb = act.row_bytes(cols);
            let mut acts = vec![0u8; n_tok * rb];
            for (row, out) in x.chunks_exact(cols).zip(acts.chunks_exact_mut(rb)) {
                kernels.quantize_row(act, row, out);
            }
            let mut gemm = vec![f32::NAN; n_tok * (rows + 2)];
            kernels.gemm(ty, cols, &data, rows, &acts, n_tok, &mut gemm, rows + 2);
            for t in 0..n_tok {
                let mut gemv = vec![f32::NAN; rows];
                kernels.gemv(ty, cols, &data, &acts[t * rb..(t + 1) * rb], &mut gemv);
                for r in 0..rows {
                    let terms = (0..cols).map(|c| w[r * cols + c] as f64 * x[t * cols + c] as f64);
                    let (exact, magnitude) = terms.fold((0.0, 0.0), |(s, m), v| (s + v, m + v.abs()));
                    // 8-bit activations: each term is off by at most half a quantization step (1/254 of the
                    // block's largest value); the sum of |terms| bounds the total.
                    let tolerance =
                        if act == exo_engine::kernels::ActType::F32 { 1e-5 } else { 1.0 / 100.0 } * magnitude;
                    for (what, got) in [("gemv", gemv[r]), ("gemm", gemm[t * (rows + 2) + r])] {
                        assert!(
                            (got as f64 - exact).abs() <= tolerance,
                            "{:?} {ty:?} {what}: token {t} row {r}: {got} vs {exact} (tolerance {tolerance})",
                            kernels.isa()
                        );
                    }
                }
            }
        }
    }
}
