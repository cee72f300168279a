//! Turning a GGUF file's tensors into candle tensors, one named tensor at a time, counting the bytes read.
//!
//! Only the tensors asked for are read (by offset), so a shard never touches another shard's layers.
//!
//! candle has no IQ4_NL, IQ4_XS or MXFP4: such a tensor is dequantized with the CPU kernels' reference decoder and
//! handed to candle as Q8_0 (rows of a multiple of 32 values) or F16, and the conversions are logged once per
//! reader, when it is dropped.

use std::collections::BTreeMap;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{EngineError, Result};
use crate::gguf::{Gguf, TensorInfo, TensorType};
use crate::kernels::{Kernels, WeightType};

/// candle's type for a tensor type, or `None` for the types candle cannot hold (see [`converted_type`]).
fn candle_dtype(kind: TensorType) -> Option<GgmlDType> {
    Some(match kind {
        TensorType::F32 => GgmlDType::F32,
        TensorType::F16 => GgmlDType::F16,
        TensorType::Bf16 => GgmlDType::BF16,
        TensorType::Q4_0 => GgmlDType::Q4_0,
        TensorType::Q4_1 => GgmlDType::Q4_1,
        TensorType::Q5_0 => GgmlDType::Q5_0,
        TensorType::Q5_1 => GgmlDType::Q5_1,
        TensorType::Q8_0 => GgmlDType::Q8_0,
        TensorType::Q2K => GgmlDType::Q2K,
        TensorType::Q3K => GgmlDType::Q3K,
        TensorType::Q4K => GgmlDType::Q4K,
        TensorType::Q5K => GgmlDType::Q5K,
        TensorType::Q6K => GgmlDType::Q6K,
        TensorType::Iq4Nl | TensorType::Iq4Xs | TensorType::Mxfp4 => return None,
    })
}

/// The CPU kernels' layout of a type that candle does not have, which is decoded with them on load.
fn converted_type(kind: TensorType) -> Option<WeightType> {
    match kind {
        TensorType::Iq4Nl => Some(WeightType::Iq4Nl),
        TensorType::Iq4Xs => Some(WeightType::Iq4Xs),
        TensorType::Mxfp4 => Some(WeightType::Mxfp4),
        _ => None,
    }
}

/// The values of `bytes`, rows of `row_len` values of type `ty`, as f32 (the scalar reference decoder).
fn dequantize(ty: WeightType, bytes: &[u8], row_len: usize, name: &str) -> Result<Vec<f32>> {
    let row_bytes = ty.row_bytes(row_len);
    if row_len == 0 || !row_len.is_multiple_of(ty.block_len()) || !bytes.len().is_multiple_of(row_bytes) {
        return Err(EngineError::InvalidShard(format!(
            "tensor {name}: {} bytes are not whole rows of {row_len} values of {ty:?}",
            bytes.len()
        )));
    }
    let mut out = vec![0f32; bytes.len() / row_bytes * row_len];
    let kernels = Kernels::scalar();
    for (w, o) in bytes.chunks_exact(row_bytes).zip(out.chunks_exact_mut(row_len)) {
        kernels.dequantize_row(ty, w, o);
    }
    Ok(out)
}

/// Reads named tensors of one GGUF file onto a device.
pub struct TensorReader<'a> {
    gguf: &'a Gguf,
    device: Device,
    bytes_read: u64,
    /// Tensors converted for candle, counted by (stored type, candle type).
    converted: BTreeMap<(&'static str, &'static str), usize>,
}

impl<'a> TensorReader<'a> {
    pub fn new(gguf: &'a Gguf, device: &Device) -> Self {
        Self { gguf, device: device.clone(), bytes_read: 0, converted: BTreeMap::new() }
    }

    /// Bytes of tensor data read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    pub fn has(&self, name: &str) -> bool {
        self.gguf.tensors.contains_key(name)
    }

    /// The stored type of a tensor, if the file has it.
    pub fn kind(&self, name: &str) -> Option<TensorType> {
        self.gguf.tensors.get(name).map(|t| t.kind)
    }

    /// The tensor's bytes exactly as stored, with its type, after checking its dims (candle order, row length
    /// last) against `expected`.
    pub fn raw(&mut self, name: &str, expected: &[usize]) -> Result<(TensorType, Vec<u8>)> {
        let info = self.checked(name, expected)?;
        let bytes = self.gguf.read_tensor(info)?;
        self.bytes_read += info.size;
        Ok((info.kind, bytes))
    }

    fn checked(&self, name: &str, expected: &[usize]) -> Result<&'a TensorInfo> {
        let info = self.gguf.tensors.get(name).ok_or_else(|| EngineError::MissingTensor {
            path: self.gguf.path.display().to_string(),
            name: name.to_string(),
        })?;
        // ggml lists the row length first; candle lists it last.
        let dims: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        if dims != expected {
            return Err(EngineError::TensorShape {
                path: self.gguf.path.display().to_string(),
                name: name.to_string(),
                found: info.dims.iter().rev().copied().collect(),
                expected: expected.iter().map(|&d| d as u64).collect(),
            });
        }
        Ok(info)
    }

    /// The tensor as stored (quantized or not), with `expected` dims in candle order (row length last). A type
    /// candle does not have (IQ4_NL, IQ4_XS, MXFP4) comes as Q8_0 when its rows are a multiple of 32 values long,
    /// else as F16.
    pub fn quantized(&mut self, name: &str, expected: &[usize]) -> Result<QTensor> {
        let (kind, bytes) = self.raw(name, expected)?;
        self.candle_tensor(name, kind, &bytes, expected)
    }

    /// `bytes` of a tensor of type `kind` as a candle tensor of `dims`, converted if candle lacks the type.
    fn candle_tensor(&mut self, name: &str, kind: TensorType, bytes: &[u8], dims: &[usize]) -> Result<QTensor> {
        let Some(ty) = converted_type(kind) else {
            let dtype = candle_dtype(kind).ok_or_else(|| {
                EngineError::InvalidShard(format!("tensor {name} is {}, which candle does not hold", kind.name()))
            })?;
            return Ok(qtensor_from_ggml(dtype, bytes, dims.to_vec(), &self.device)?);
        };
        let row_len = dims.last().copied().unwrap_or(1);
        let values = Tensor::from_vec(dequantize(ty, bytes, row_len, name)?, dims, &Device::Cpu)?;
        // Every row of these types is whole blocks of 32 or 256 values, so F16 is only a safety net.
        let (dtype, to) = if row_len.is_multiple_of(32) { (GgmlDType::Q8_0, "Q8_0") } else { (GgmlDType::F16, "F16") };
        let q = QTensor::quantize_onto(&values, dtype, &self.device)?;
        *self.converted.entry((kind.name(), to)).or_default() += 1;
        Ok(q)
    }

    /// The `count` matrices of a 3-D tensor (ggml dims `[cols, rows, count]`, such as a layer's experts), each
    /// as its own tensor of `[rows, cols]`.
    pub fn quantized_stack(&mut self, name: &str, count: usize, rows: usize, cols: usize) -> Result<Vec<QTensor>> {
        let (kind, bytes) = self.raw_experts(name, count, rows, cols)?;
        let each = bytes.len() / count.max(1);
        bytes.chunks_exact(each).map(|b| self.candle_tensor(name, kind, b, &[rows, cols])).collect()
    }

    /// A layer's `count` expert matrices of `[rows, cols]` as the bytes of one 3-D tensor `name`
    /// (`blk.N.ffn_gate_exps.weight`), matrix after matrix. Files written before llama.cpp merged the experts
    /// (early 2024, most Mixtral files on the hub) hold one tensor per expert instead (`blk.N.ffn_gate.E.weight`):
    /// those are read in order and joined, and must all be of one type.
    pub fn raw_experts(&mut self, name: &str, count: usize, rows: usize, cols: usize) -> Result<(TensorType, Vec<u8>)> {
        let split = |e: usize| name.strip_suffix("_exps.weight").map(|base| format!("{base}.{e}.weight"));
        let first = split(0);
        if self.has(name) || !first.as_deref().is_some_and(|f| self.has(f)) {
            return self.raw(name, &[count, rows, cols]);
        }
        let mut joined: Option<(TensorType, Vec<u8>)> = None;
        for e in 0..count {
            let part = split(e).unwrap_or_default();
            if !self.has(&part) {
                return Err(EngineError::InvalidShard(format!(
                    "{}: the file holds its experts one tensor each, but has no {part} ({count} experts expected)",
                    self.gguf.path.display()
                )));
            }
            let (kind, bytes) = self.raw(&part, &[rows, cols])?;
            match &mut joined {
                None => joined = Some((kind, Vec::with_capacity(bytes.len() * count))),
                Some((first, _)) if *first != kind => {
                    return Err(EngineError::InvalidShard(format!(
                        "{}: {part} is {}, but the layer's first expert is {}: one layer's experts must share a type",
                        self.gguf.path.display(),
                        kind.name(),
                        first.name()
                    )));
                }
                Some(_) => {}
            }
            if let Some((_, all)) = &mut joined {
                all.extend_from_slice(&bytes);
            }
        }
        joined.ok_or_else(|| EngineError::InvalidShard(format!("{name}: a layer of experts needs at least one")))
    }

    /// A matrix stored as consecutive row blocks of the sizes `parts` (Phi-3's fused q/k/v and gate/up tensors),
    /// as one tensor per block.
    pub fn quantized_split(&mut self, name: &str, parts: &[usize], cols: usize) -> Result<Vec<QTensor>> {
        let rows: usize = parts.iter().sum();
        let (kind, bytes) = self.raw(name, &[rows, cols])?;
        let row_bytes = bytes.len() / rows.max(1);
        let mut first = 0;
        parts
            .iter()
            .map(|&n| {
                let b = &bytes[first * row_bytes..(first + n) * row_bytes];
                first += n;
                self.candle_tensor(name, kind, b, &[n, cols])
            })
            .collect()
    }

    /// The tensor converted to f32 (norm weights, biases, rope factors).
    pub fn dense(&mut self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let kind = self.checked(name, expected)?.kind;
        match converted_type(kind) {
            // Straight to f32, without the detour through Q8_0.
            Some(ty) => {
                let (_, bytes) = self.raw(name, expected)?;
                let row_len = expected.last().copied().unwrap_or(1);
                Ok(Tensor::from_vec(dequantize(ty, &bytes, row_len, name)?, expected, &self.device)?)
            }
            None => Ok(self.quantized(name, expected)?.dequantize(&self.device)?),
        }
    }

    /// Like [`TensorReader::dense`], or `None` when the file has no such tensor.
    pub fn dense_if_present(&mut self, name: &str, expected: &[usize]) -> Result<Option<Tensor>> {
        if self.has(name) {
            self.dense(name, expected).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl Drop for TensorReader<'_> {
    fn drop(&mut self) {
        if !self.converted.is_empty() {
            let what: Vec<String> =
                self.converted.iter().map(|((from, to), n)| format!("{n} {from} tensor(s) to {to}")).collect();
            tracing::info!(
                "{}: candle has no IQ4_NL, IQ4_XS or MXFP4; converted at load: {}",
                self.gguf.path.display(),
                what.join(", ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [TensorType; 16] = [
        TensorType::F32,
        TensorType::F16,
        TensorType::Bf16,
        TensorType::Q4_0,
        TensorType::Q4_1,
        TensorType::Q5_0,
        TensorType::Q5_1,
        TensorType::Q8_0,
        TensorType::Q2K,
        TensorType::Q3K,
        TensorType::Q4K,
        TensorType::Q5K,
        TensorType::Q6K,
        TensorType::Iq4Nl,
        TensorType::Iq4Xs,
        TensorType::Mxfp4,
    ];

    /// The GGUF reader sizes tensors with its own block table; candle must agree, or a tensor would be cut short;
    /// the types candle lacks agree with the CPU kernels, which decode them.
    #[test]
    fn block_layouts_agree_with_candle_or_the_kernels() {
        for kind in ALL {
            let layout = match (candle_dtype(kind), converted_type(kind)) {
                (Some(d), None) => (d.block_size() as u64, d.type_size() as u64),
                (None, Some(ty)) => (ty.block_len() as u64, ty.block_bytes() as u64),
                other => panic!("{}: {other:?}", kind.name()),
            };
            assert_eq!(kind.block_layout(), layout, "{}", kind.name());
        }
    }

    /// Every type candle holds loads from raw bytes into a tensor of the right shape (two rows of one block each).
    #[test]
    fn every_candle_type_loads_from_raw_bytes() {
        for kind in ALL {
            let Some(dtype) = candle_dtype(kind) else { continue };
            let (block, bytes) = kind.block_layout();
            // All-zero blocks are valid in every format (zero scales) and dequantize to zeros.
            let raw = vec![0u8; 2 * bytes as usize * (256 / block as usize)];
            let t = qtensor_from_ggml(dtype, &raw, vec![2, 256], &Device::Cpu).unwrap();
            let dense = t.dequantize(&Device::Cpu).unwrap();
            assert_eq!(dense.dims(), &[2, 256], "{}", kind.name());
            let values = dense.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(values.iter().all(|&v| v == 0.0), "{}", kind.name());
        }
    }

    /// A GGUF file (version 3) holding one tensor `t` of ggml type `id` with ggml dims `dims` and data `data`.
    fn write_one_tensor(path: &std::path::Path, id: u32, dims: &[u64], data: &[u8]) {
        write_tensors(path, &[("t", id, dims, data)]);
    }

    /// A GGUF file (version 3) holding the tensors `(name, ggml type, ggml dims, data)`, in order.
    fn write_tensors(path: &std::path::Path, tensors: &[(&str, u32, &[u64], &[u8])]) {
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend(0u64.to_le_bytes());
        let mut offset = 0u64;
        for (name, id, dims, data) in tensors {
            out.extend((name.len() as u64).to_le_bytes());
            out.extend(name.as_bytes());
            out.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(id.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset += (data.len() as u64).next_multiple_of(32);
        }
        for (_, _, _, data) in tensors {
            while !out.len().is_multiple_of(32) {
                out.push(0);
            }
            out.extend(*data);
        }
        std::fs::write(path, out).unwrap();
    }

    /// A layer's experts stored one tensor each (the old Mixtral layout) read as the one 3-D tensor they stand
    /// for; a missing expert or one of another type is a clear error.
    #[test]
    fn experts_stored_one_tensor_each_are_joined_in_order() {
        let dir = std::env::temp_dir().join(format!("exo-weights-split-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (rows, cols) = (2usize, 32usize);
        let q8 = blocks(TensorType::Q8_0, rows, cols);
        let experts: Vec<Vec<u8>> = (0..3u8).map(|e| q8.iter().map(|b| b.wrapping_add(e)).collect()).collect();
        let dims = [cols as u64, rows as u64];
        let names: Vec<String> = (0..3).map(|e| format!("blk.0.ffn_up.{e}.weight")).collect();
        let file = |name: &str, parts: &[(usize, u32)]| {
            let path = dir.join(name);
            let tensors: Vec<(&str, u32, &[u64], &[u8])> =
                parts.iter().map(|&(e, id)| (names[e].as_str(), id, &dims[..], &experts[e][..])).collect();
            write_tensors(&path, &tensors);
            Gguf::open(&path).unwrap()
        };
        let whole = file("whole.gguf", &[(0, 8), (1, 8), (2, 8)]);
        let mut reader = TensorReader::new(&whole, &Device::Cpu);
        let (kind, bytes) = reader.raw_experts("blk.0.ffn_up_exps.weight", 3, rows, cols).unwrap();
        assert_eq!((kind, bytes), (TensorType::Q8_0, experts.concat()));
        assert_eq!(reader.quantized_stack("blk.0.ffn_up_exps.weight", 3, rows, cols).unwrap().len(), 3);

        let gap = file("gap.gguf", &[(0, 8), (2, 8)]);
        let err = TensorReader::new(&gap, &Device::Cpu).raw_experts("blk.0.ffn_up_exps.weight", 3, rows, cols);
        let err = err.unwrap_err().to_string();
        assert!(err.contains("has no blk.0.ffn_up.1.weight") && err.contains("3 experts"), "{err}");

        // Expert 1 in Q4_0 between two Q8_0 ones.
        let q4 = blocks(TensorType::Q4_0, rows, cols);
        let path = dir.join("mixed.gguf");
        write_tensors(
            &path,
            &[(&names[0], 8, &dims, &experts[0]), (&names[1], 2, &dims, &q4), (&names[2], 8, &dims, &experts[2])],
        );
        let mixed = Gguf::open(&path).unwrap();
        let err = TensorReader::new(&mixed, &Device::Cpu).raw_experts("blk.0.ffn_up_exps.weight", 3, rows, cols);
        let err = err.unwrap_err().to_string();
        assert!(err.contains("blk.0.ffn_up.1.weight is Q4_0") && err.contains("share a type"), "{err}");

        // Neither layout: the merged tensor is what is missing.
        let path = dir.join("none.gguf");
        write_tensors(&path, &[("blk.0.attn_q.weight", 8, &dims, &experts[0])]);
        let none = Gguf::open(&path).unwrap();
        let err = TensorReader::new(&none, &Device::Cpu).raw_experts("blk.0.ffn_up_exps.weight", 3, rows, cols);
        assert!(err.unwrap_err().to_string().contains("blk.0.ffn_up_exps.weight"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Blocks of `kind` with random quants and small valid scales, `rows` rows of `cols`.
    fn blocks(kind: TensorType, rows: usize, cols: usize) -> Vec<u8> {
        let (block, bytes) = kind.block_layout();
        let n = rows * cols / block as usize;
        let mut state = 0x1234_5678u32;
        let mut raw: Vec<u8> = (0..n * bytes as usize)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            })
            .collect();
        for b in raw.chunks_exact_mut(bytes as usize) {
            match kind {
                TensorType::Mxfp4 => b[0] = 120 + b[1] % 4,
                // f16 0.0039 + a little: a positive normal scale.
                _ => {
                    let d = 0x1c00u16 | b[2] as u16;
                    b[..2].copy_from_slice(&d.to_le_bytes());
                }
            }
        }
        raw
    }

    /// IQ4_NL, IQ4_XS and MXFP4 reach candle as Q8_0 with the values of the kernels' decoding (within Q8_0's
    /// rounding), and as f32 exactly; the conversions are counted for the log line.
    #[test]
    fn types_candle_lacks_are_converted_at_load() {
        let dir = std::env::temp_dir().join(format!("exo-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (id, kind) in [(20u32, TensorType::Iq4Nl), (23, TensorType::Iq4Xs), (39, TensorType::Mxfp4)] {
            let (rows, cols) = (3, 512);
            let raw = blocks(kind, rows, cols);
            let path = dir.join(format!("{}.gguf", kind.name()));
            write_one_tensor(&path, id, &[cols as u64, rows as u64], &raw);
            let gguf = Gguf::open(&path).unwrap();
            let ty = converted_type(kind).unwrap();
            let mut want = vec![0f32; rows * cols];
            for (w, o) in raw.chunks_exact(ty.row_bytes(cols)).zip(want.chunks_exact_mut(cols)) {
                Kernels::scalar().dequantize_row(ty, w, o);
            }
            let mut reader = TensorReader::new(&gguf, &Device::Cpu);
            let q = reader.quantized("t", &[rows, cols]).unwrap();
            assert_eq!((q.dtype(), q.shape().dims()), (GgmlDType::Q8_0, &[rows, cols][..]), "{}", kind.name());
            let got = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (g, w) in got.chunks_exact(32).zip(want.chunks_exact(32)) {
                // Q8_0 rounds to the nearest of 255 levels spanning its block: within half a step, plus its f16 d.
                let step = w.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                for (a, b) in g.iter().zip(w) {
                    assert!((a - b).abs() <= 0.6 * step + 1e-6, "{}: {a} vs {b}", kind.name());
                }
            }
            let dense = reader.dense("t", &[rows, cols]).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(dense, want, "{}", kind.name());
            assert!(want.iter().any(|&v| v != 0.0), "{}", kind.name());
            assert_eq!(reader.converted.iter().collect::<Vec<_>>(), [(&(kind.name(), "Q8_0"), &1)]);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
