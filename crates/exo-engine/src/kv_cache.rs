//! `KvCache`: the attention keys and values of one sequence, for exactly the layers of one shard.
//!
//! Keys and values are written in place into buffers that grow by doubling (up to the model's context), so a
//! decode step copies only the new token's entries. The cache tracks the sequence position; `truncate` rewinds
//! it (the entries past the new end are simply overwritten later), `reset` empties it.

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};

/// Initial room, in positions, before the first doubling.
const INITIAL_CAPACITY: usize = 256;

#[derive(Debug)]
struct LayerBuffers {
    /// (n_kv_heads, capacity, head_dim)
    keys: Tensor,
    values: Tensor,
}

#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<LayerBuffers>>,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    max_len: usize,
    len: usize,
    device: Device,
}

impl KvCache {
    /// An empty cache for `n_layers` layers that can hold up to `max_len` positions.
    pub fn new(n_layers: usize, n_kv_heads: usize, head_dim: usize, max_len: usize, device: &Device) -> Self {
        Self {
            layers: (0..n_layers).map(|_| None).collect(),
            n_kv_heads,
            head_dim,
            capacity: 0,
            max_len,
            len: 0,
            device: device.clone(),
        }
    }

    /// Number of positions the cache holds: the position of the next token.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Forgets every position; buffers are kept for reuse.
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Rewinds to position `p`: positions `p..` are forgotten. Rewinding forward is an error.
    pub fn truncate(&mut self, p: usize) -> Result<()> {
        if p > self.len {
            return Err(EngineError::InvalidShard(format!(
                "cannot truncate the KV cache to position {p}: it holds only {} positions",
                self.len
            )));
        }
        self.len = p;
        Ok(())
    }

    /// Checks that `n` more positions fit in the context.
    fn check_room(&self, n: usize) -> Result<()> {
        if self.len + n > self.max_len {
            return Err(EngineError::ContextOverflow { needed: self.len + n, context: self.max_len });
        }
        Ok(())
    }

    /// Writes a layer's keys and values for the `seq` positions starting at `len()` and returns views of all
    /// keys and values up to and including them, each (n_kv_heads, len() + seq, head_dim).
    /// `keys`/`values` are (n_kv_heads, seq, head_dim). Call [`KvCache::advance`] once all layers are written.
    pub fn append(&mut self, layer: usize, keys: &Tensor, values: &Tensor) -> Result<(Tensor, Tensor)> {
        let seq = keys.dim(1)?;
        let end = self.len + seq;
        self.check_room(seq)?;
        if end > self.capacity {
            self.grow(end)?;
        }
        let slot = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| EngineError::InvalidShard(format!("layer {layer} is not in this KV cache")))?;
        let buffers = match slot {
            Some(b) => b,
            None => {
                let shape = (self.n_kv_heads, self.capacity, self.head_dim);
                slot.insert(LayerBuffers {
                    keys: Tensor::zeros(shape, DType::F32, &self.device)?,
                    values: Tensor::zeros(shape, DType::F32, &self.device)?,
                })
            }
        };
        buffers.keys.slice_set(&keys.contiguous()?, 1, self.len)?;
        buffers.values.slice_set(&values.contiguous()?, 1, self.len)?;
        Ok((buffers.keys.narrow(1, 0, end)?, buffers.values.narrow(1, 0, end)?))
    }

    /// Moves the position forward by `seq` after every layer has been appended.
    pub fn advance(&mut self, seq: usize) {
        self.len += seq;
    }

    fn grow(&mut self, needed: usize) -> Result<()> {
        let mut capacity = self.capacity.max(INITIAL_CAPACITY.min(self.max_len));
        while capacity < needed {
            capacity = (capacity * 2).min(self.max_len);
        }
        let shape = (self.n_kv_heads, capacity, self.head_dim);
        for buffers in self.layers.iter_mut().flatten() {
            let keys = Tensor::zeros(shape, DType::F32, &self.device)?;
            let values = Tensor::zeros(shape, DType::F32, &self.device)?;
            if self.len > 0 {
                keys.slice_set(&buffers.keys.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                values.slice_set(&buffers.values.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
            }
            *buffers = LayerBuffers { keys, values };
        }
        self.capacity = capacity;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n_kv: usize, seq: usize, hd: usize, start: f32) -> Tensor {
        let data: Vec<f32> = (0..n_kv * seq * hd).map(|i| start + i as f32).collect();
        Tensor::from_vec(data, (n_kv, seq, hd), &Device::Cpu).unwrap()
    }

    #[test]
    fn append_grow_truncate_reset() {
        let mut cache = KvCache::new(2, 2, 4, 1000, &Device::Cpu);
        let first = entries(2, 300, 4, 0.0);
        let (k, _) = cache.append(0, &first, &first).unwrap();
        cache.append(1, &first, &first).unwrap();
        cache.advance(300);
        assert_eq!(k.dims(), &[2, 300, 4]);
        assert_eq!(cache.len(), 300);

        let next = entries(2, 1, 4, -1.0);
        let (k, v) = cache.append(0, &next, &next).unwrap();
        assert_eq!(k.dims(), &[2, 301, 4]);
        // Old entries survived the growth from 256 to 512 positions.
        let k = k.to_vec3::<f32>().unwrap();
        assert_eq!(k[1][299][3], first.to_vec3::<f32>().unwrap()[1][299][3]);
        assert_eq!(v.to_vec3::<f32>().unwrap()[1][300][0], 3.0);
        cache.advance(1);

        cache.truncate(10).unwrap();
        assert_eq!(cache.len(), 10);
        let (k, _) = cache.append(0, &next, &next).unwrap();
        assert_eq!(k.dims(), &[2, 11, 4]);
        assert_eq!(k.to_vec3::<f32>().unwrap()[0][10][0], -1.0);
        assert!(cache.truncate(50).is_err());

        cache.reset();
        assert!(cache.is_empty());
    }

    #[test]
    fn context_overflow_is_an_error() {
        let mut cache = KvCache::new(1, 1, 2, 4, &Device::Cpu);
        let five = entries(1, 5, 2, 0.0);
        let e = cache.append(0, &five, &five).unwrap_err();
        assert!(matches!(e, EngineError::ContextOverflow { needed: 5, context: 4 }), "{e}");
        let four = entries(1, 4, 2, 0.0);
        cache.append(0, &four, &four).unwrap();
    }

    #[test]
    fn unknown_layer_is_an_error() {
        let mut cache = KvCache::new(1, 1, 2, 4, &Device::Cpu);
        let one = entries(1, 1, 2, 0.0);
        assert!(cache.append(3, &one, &one).is_err());
    }
}
