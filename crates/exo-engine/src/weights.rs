//! Turning a GGUF file's tensors into candle tensors, one named tensor at a time, counting the bytes read.
//!
//! Only the tensors asked for are read (by offset), so a shard never touches another shard's layers.

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{EngineError, Result};
use crate::gguf::{Gguf, TensorInfo, TensorType};

fn candle_dtype(kind: TensorType) -> GgmlDType {
    match kind {
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
    }
}

/// Reads named tensors of one GGUF file onto a device.
pub struct TensorReader<'a> {
    gguf: &'a Gguf,
    device: Device,
    bytes_read: u64,
}

impl<'a> TensorReader<'a> {
    pub fn new(gguf: &'a Gguf, device: &Device) -> Self {
        Self { gguf, device: device.clone(), bytes_read: 0 }
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

    /// The tensor as stored (quantized or not), with `expected` dims in candle order (row length last).
    pub fn quantized(&mut self, name: &str, expected: &[usize]) -> Result<QTensor> {
        let (kind, bytes) = self.raw(name, expected)?;
        Ok(qtensor_from_ggml(candle_dtype(kind), &bytes, expected.to_vec(), &self.device)?)
    }

    /// The `count` matrices of a 3-D tensor (ggml dims `[cols, rows, count]`, such as a layer's experts), each
    /// as its own tensor of `[rows, cols]`.
    pub fn quantized_stack(&mut self, name: &str, count: usize, rows: usize, cols: usize) -> Result<Vec<QTensor>> {
        let (kind, bytes) = self.raw(name, &[count, rows, cols])?;
        let each = bytes.len() / count.max(1);
        bytes
            .chunks_exact(each)
            .map(|b| Ok(qtensor_from_ggml(candle_dtype(kind), b, vec![rows, cols], &self.device)?))
            .collect()
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
                Ok(qtensor_from_ggml(candle_dtype(kind), b, vec![n, cols], &self.device)?)
            })
            .collect()
    }

    /// The tensor converted to f32 (norm weights, biases, rope factors).
    pub fn dense(&mut self, name: &str, expected: &[usize]) -> Result<Tensor> {
        Ok(self.quantized(name, expected)?.dequantize(&self.device)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [TensorType; 13] = [
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
    ];

    /// The GGUF reader sizes tensors with its own block table; candle must agree, or a tensor would be cut short.
    #[test]
    fn block_layouts_agree_with_candle() {
        for kind in ALL {
            let d = candle_dtype(kind);
            assert_eq!(kind.block_layout(), (d.block_size() as u64, d.type_size() as u64), "{}", kind.name());
        }
    }

    /// Every type loads from raw bytes into a tensor of the right shape (two rows of one block each).
    #[test]
    fn every_type_loads_from_raw_bytes() {
        for kind in ALL {
            let (block, bytes) = kind.block_layout();
            // All-zero blocks are valid in every format (zero scales) and dequantize to zeros.
            let raw = vec![0u8; 2 * bytes as usize * (256 / block as usize)];
            let t = qtensor_from_ggml(candle_dtype(kind), &raw, vec![2, 256], &Device::Cpu).unwrap();
            let dense = t.dequantize(&Device::Cpu).unwrap();
            assert_eq!(dense.dims(), &[2, 256], "{}", kind.name());
            let values = dense.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(values.iter().all(|&v| v == 0.0), "{}", kind.name());
        }
    }
}
