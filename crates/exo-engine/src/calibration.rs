//! Calibration: how fast this machine runs the engine's own CPU kernels at a given thread count, measured in a
//! few hundred milliseconds. Two figures: the bytes per second a quantized (Q8_0) matrix-vector product streams
//! through the engine's kernels and thread pool (what a decode step of a layer costs), and the bytes per second
//! plain reads reach (the memory-bandwidth ceiling). Owns the measuring only; where figures are kept and how the
//! cluster uses them is not its business.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cpu::pool::{share, ThreadPool};
use crate::kernels::{Kernels, WeightType};

/// A machine's measured speed; zero means not measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Speed {
    /// Weight bytes per second a Q8_0 matrix-vector product streams.
    pub matvec_bytes_per_s: u64,
    /// Bytes per second the threads read from memory.
    pub memory_bytes_per_s: u64,
}

/// Columns of the test matrix (a 4096-wide hidden state, like a 7B model's).
const COLS: usize = 4096;
/// Rows of the test matrix: 8192 rows of Q8_0 are 34 MiB, more than most last-level caches hold.
const ROWS: usize = 8192;
/// Each figure is measured for about this long, at least [`MIN_REPS`] times; the best repetition counts.
const BUDGET: Duration = Duration::from_millis(120);
const MIN_REPS: usize = 3;
/// Rows per thread share, as the forward pass splits them.
const ROW_ALIGN: usize = 16;

/// Measures this machine's speed with `threads` threads (about a quarter of a second, and 34 MiB).
pub fn measure(threads: usize) -> Speed {
    let kernels = Kernels::best();
    let ty = WeightType::Q8_0;
    let row_bytes = ty.row_bytes(COLS);
    let weights = test_matrix(ty, ROWS);
    let x: Vec<f32> = (0..COLS).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let mut act = vec![0u8; ty.act_type().row_bytes(COLS)];
    kernels.quantize_row(ty.act_type(), &x, &mut act);
    let pool = ThreadPool::new(threads);
    let outs: Vec<Mutex<Vec<f32>>> = (0..pool.threads()).map(|_| Mutex::new(vec![0f32; ROWS])).collect();
    let matvec = best_rate(weights.len(), || {
        pool.run(&|i, n| {
            let rows = share(ROWS, ROW_ALIGN, i, n);
            let Ok(mut out) = outs[i].lock() else { return };
            let w = &weights[rows.start * row_bytes..rows.end * row_bytes];
            kernels.gemv(ty, COLS, w, &act, &mut out[..rows.len()]);
            std::hint::black_box(&out[..rows.len()]);
        })
    });
    let memory = best_rate(weights.len(), || {
        pool.run(&|i, n| {
            let part = share(weights.len() / 8, 64, i, n);
            let sum = weights[part.start * 8..part.end * 8].chunks_exact(8).fold(0u64, |acc, c| {
                acc.wrapping_add(u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            });
            std::hint::black_box(sum);
        })
    });
    Speed { matvec_bytes_per_s: matvec, memory_bytes_per_s: memory }
}

/// The Q8_0 matrix-vector rate on `device` (a GPU) in weight bytes per second: the same matrix as [`measure`]'s,
/// through candle's quantized product as a shard on that device runs it, each run waited for. On the CPU device it
/// measures candle's CPU path (what the tests can run), not the engine's own kernels.
pub fn measure_device(device: &candle_core::Device) -> crate::error::Result<u64> {
    use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul};
    use candle_core::Module;

    let weights = test_matrix(WeightType::Q8_0, ROWS);
    let matrix = QMatMul::from_qtensor(qtensor_from_ggml(GgmlDType::Q8_0, &weights, vec![ROWS, COLS], device)?)?;
    let x: Vec<f32> = (0..COLS).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let x = candle_core::Tensor::from_vec(x, (1, COLS), device)?;
    let step = || -> crate::error::Result<()> {
        std::hint::black_box(matrix.forward(&x)?);
        Ok(device.synchronize()?)
    };
    step()?; // an error (out of memory, no kernel) is said once, not timed
    let failed = std::cell::Cell::new(None);
    let rate = best_rate(weights.len(), || {
        if let Err(e) = step() {
            failed.set(Some(e));
        }
    });
    match failed.into_inner() {
        Some(e) => Err(e),
        None => Ok(rate),
    }
}

/// Bytes per second of the fastest of the runs of `step` (each over `bytes`) made within [`BUDGET`].
fn best_rate(bytes: usize, step: impl Fn()) -> u64 {
    step(); // warm-up: pages touched, workers awake
    let started = Instant::now();
    let mut best = Duration::MAX;
    let mut reps = 0;
    while reps < MIN_REPS || started.elapsed() < BUDGET {
        let t = Instant::now();
        step();
        best = best.min(t.elapsed());
        reps += 1;
    }
    (bytes as f64 / best.as_secs_f64().max(1e-9)) as u64
}

/// `rows` rows of `ty` (Q8_0) with a small scale and varied quants, so the kernel does its ordinary work.
fn test_matrix(ty: WeightType, rows: usize) -> Vec<u8> {
    let block = ty.block_bytes();
    let mut w = vec![0u8; ty.row_bytes(COLS) * rows];
    let mut state: u32 = 0x9e37_79b9;
    for b in w.chunks_exact_mut(block) {
        // f16 0.01 as the block's scale, then 32 signed quants.
        b[..2].copy_from_slice(&0x211eu16.to_le_bytes());
        for q in &mut b[2..] {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *q = (state >> 24) as u8;
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_measurement_is_quick_and_gives_plausible_figures() {
        let t = Instant::now();
        let s = measure(1);
        let took = t.elapsed();
        // Debug builds run the kernels much slower than release; the bound is for the release binary's start.
        assert!(took < Duration::from_secs(if cfg!(debug_assertions) { 30 } else { 2 }), "{took:?}");
        // Between 1 MB/s and 10 TB/s: a figure outside is a broken measurement, not a machine.
        for v in [s.matvec_bytes_per_s, s.memory_bytes_per_s] {
            assert!((1_000_000..10_000_000_000_000).contains(&v), "{s:?}");
        }
    }

    #[test]
    fn a_device_is_measured_through_candles_product() {
        // The CPU device stands in for a GPU here: the same code runs on either.
        let rate = measure_device(&candle_core::Device::Cpu).unwrap();
        assert!((1_000_000..10_000_000_000_000).contains(&rate), "{rate}");
    }
}
