//! `KvCache`: the attention keys and values of one sequence, for exactly the layers of one shard.
//!
//! Keys and values are written in place into buffers that grow by doubling (up to the model's context), so a
//! decode step writes only the new token's entries. They are stored in f16 by default (`KvType::F16`, as
//! llama.cpp does), halving the cache; `KvType::F32` keeps full precision. The CPU backend keeps them in plain
//! host buffers, one row of `n_kv_heads * head_dim` values per position; the candle backend (GPUs, and the CPU
//! when asked for) keeps device tensors. The cache tracks the sequence position;
//! `truncate` rewinds it (the entries past the new end are simply overwritten later), `reset` empties it.
//! Sizes come from a model file's metadata, so they are multiplied with checked arithmetic: a cache too large to
//! count is an error, not a wrapped size.

use std::str::FromStr;

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};

/// Initial room, in positions, before the first doubling.
const INITIAL_CAPACITY: usize = 256;

/// How keys and values are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvType {
    #[default]
    F16,
    F32,
}

impl KvType {
    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::F32 => "f32",
        }
    }

    /// Bytes per stored value.
    pub fn size(self) -> usize {
        match self {
            KvType::F16 => 2,
            KvType::F32 => 4,
        }
    }

    fn dtype(self) -> DType {
        match self {
            KvType::F16 => DType::F16,
            KvType::F32 => DType::F32,
        }
    }
}

impl FromStr for KvType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(KvType::F16),
            "f32" => Ok(KvType::F32),
            _ => Err(format!("unknown KV cache type '{s}' (expected f16 or f32)")),
        }
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Host storage of one layer's keys or values: `[position][n_kv_heads * head_dim]`.
#[derive(Debug)]
pub(crate) enum HostBuf {
    /// IEEE half-precision bits.
    F16(Vec<u16>),
    F32(Vec<f32>),
}

impl HostBuf {
    fn new(kv_type: KvType) -> Self {
        match kv_type {
            KvType::F16 => HostBuf::F16(Vec::new()),
            KvType::F32 => HostBuf::F32(Vec::new()),
        }
    }

    /// Makes room for `len` values, growing capacity by doubling (never beyond `limit` values).
    fn ensure(&mut self, len: usize, limit: usize) {
        fn grow<T: Copy + Default>(v: &mut Vec<T>, len: usize, limit: usize) {
            if len > v.capacity() {
                let target = len.max((v.capacity() * 2).min(limit));
                v.reserve_exact(target - v.len());
            }
            if len > v.len() {
                v.resize(len, T::default());
            }
        }
        match self {
            HostBuf::F16(v) => grow(v, len, limit),
            HostBuf::F32(v) => grow(v, len, limit),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            HostBuf::F16(v) => v.capacity() * 2,
            HostBuf::F32(v) => v.capacity() * 4,
        }
    }
}

/// One layer's keys and values in host memory.
#[derive(Debug)]
pub(crate) struct HostLayer {
    pub keys: HostBuf,
    pub values: HostBuf,
}

#[derive(Debug)]
struct LayerBuffers {
    /// (n_kv_heads, capacity, head_dim)
    keys: Tensor,
    values: Tensor,
}

#[derive(Debug)]
enum Store {
    Host(Vec<HostLayer>),
    Tensors { layers: Vec<Option<LayerBuffers>>, capacity: usize, device: Device },
}

#[derive(Debug)]
pub struct KvCache {
    store: Store,
    kv_type: KvType,
    n_kv_heads: usize,
    head_dim: usize,
    max_len: usize,
    len: usize,
}

impl KvCache {
    /// An empty cache of device tensors (the candle backend) for `n_layers` layers that can hold up to `max_len`
    /// positions.
    pub fn new(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        max_len: usize,
        kv_type: KvType,
        device: &Device,
    ) -> Self {
        let layers = (0..n_layers).map(|_| None).collect();
        Self {
            store: Store::Tensors { layers, capacity: 0, device: device.clone() },
            kv_type,
            n_kv_heads,
            head_dim,
            max_len,
            len: 0,
        }
    }

    /// An empty cache in host memory (the CPU backend).
    pub(crate) fn new_host(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        max_len: usize,
        kv_type: KvType,
    ) -> Self {
        let layers =
            (0..n_layers).map(|_| HostLayer { keys: HostBuf::new(kv_type), values: HostBuf::new(kv_type) }).collect();
        Self { store: Store::Host(layers), kv_type, n_kv_heads, head_dim, max_len, len: 0 }
    }

    /// Number of positions the cache holds: the position of the next token.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn n_layers(&self) -> usize {
        match &self.store {
            Store::Host(layers) => layers.len(),
            Store::Tensors { layers, .. } => layers.len(),
        }
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    pub(crate) fn is_host(&self) -> bool {
        matches!(self.store, Store::Host(_))
    }

    /// Bytes allocated for keys and values now.
    pub fn bytes(&self) -> usize {
        match &self.store {
            Store::Host(layers) => layers.iter().map(|l| l.keys.bytes() + l.values.bytes()).sum(),
            Store::Tensors { layers, capacity, .. } => {
                [layers.iter().flatten().count(), 2, self.n_kv_heads, *capacity, self.head_dim, self.kv_type.size()]
                    .iter()
                    .fold(1usize, |acc, &n| acc.saturating_mul(n))
            }
        }
    }

    /// Forgets every position; buffers are kept for reuse.
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Forgets every position and frees the buffers; the next use allocates them again.
    pub fn release(&mut self) {
        self.len = 0;
        match &mut self.store {
            Store::Host(layers) => {
                for l in layers.iter_mut() {
                    *l = HostLayer { keys: HostBuf::new(self.kv_type), values: HostBuf::new(self.kv_type) };
                }
            }
            Store::Tensors { layers, capacity, .. } => {
                layers.iter_mut().for_each(|l| *l = None);
                *capacity = 0;
            }
        }
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
    pub(crate) fn check_room(&self, n: usize) -> Result<()> {
        let needed = self.len.saturating_add(n);
        if needed > self.max_len {
            return Err(EngineError::ContextOverflow { needed, context: self.max_len });
        }
        Ok(())
    }

    /// Values in `positions` positions of one layer's keys (or values), if that can be counted.
    fn values_for(&self, positions: usize) -> Result<usize> {
        self.n_kv_heads.checked_mul(self.head_dim).and_then(|row| row.checked_mul(positions)).ok_or_else(|| {
            EngineError::TooLarge(format!(
                "a KV cache of {positions} positions of {} heads of {} values",
                self.n_kv_heads, self.head_dim
            ))
        })
    }

    /// The host buffers of every layer, each grown to hold `len() + seq` positions (the CPU backend writes the
    /// new positions, then reads all of them). Call [`KvCache::advance`] once all layers are written.
    pub(crate) fn host_layers(&mut self, seq: usize) -> Result<&mut [HostLayer]> {
        self.check_room(seq)?;
        let (needed, limit) = (self.values_for(self.len + seq)?, self.values_for(self.max_len)?);
        let initial = self.values_for(INITIAL_CAPACITY.min(self.max_len))?;
        match &mut self.store {
            Store::Host(layers) => {
                for l in layers.iter_mut() {
                    for buf in [&mut l.keys, &mut l.values] {
                        buf.ensure(needed.max(initial), limit);
                    }
                }
                Ok(layers)
            }
            Store::Tensors { .. } => {
                Err(EngineError::InvalidShard("this KV cache holds device tensors, not host buffers".into()))
            }
        }
    }

    /// Writes a layer's keys and values for the `seq` positions starting at `len()` and returns views of all
    /// keys and values up to and including them, each (n_kv_heads, len() + seq, head_dim), in f32.
    /// `keys`/`values` are (n_kv_heads, seq, head_dim). Call [`KvCache::advance`] once all layers are written.
    pub fn append(&mut self, layer: usize, keys: &Tensor, values: &Tensor) -> Result<(Tensor, Tensor)> {
        let seq = keys.dim(1)?;
        self.check_room(seq)?;
        let end = self.len + seq;
        let (n_kv_heads, head_dim, kv_type, len, max_len) =
            (self.n_kv_heads, self.head_dim, self.kv_type, self.len, self.max_len);
        let Store::Tensors { layers, capacity, device } = &mut self.store else {
            return Err(EngineError::InvalidShard("this KV cache holds host buffers, not device tensors".into()));
        };
        if layer >= layers.len() {
            return Err(EngineError::InvalidShard(format!("layer {layer} is not in this KV cache")));
        }
        if end > *capacity {
            let mut new_capacity = (*capacity).max(INITIAL_CAPACITY.min(max_len));
            while new_capacity < end {
                new_capacity = new_capacity.saturating_mul(2).min(max_len);
            }
            let too_large = || {
                EngineError::TooLarge(format!(
                    "a KV cache of {new_capacity} positions of {n_kv_heads} heads of {head_dim} values"
                ))
            };
            n_kv_heads
                .checked_mul(new_capacity)
                .and_then(|n| n.checked_mul(head_dim))
                .and_then(|n| n.checked_mul(kv_type.size()))
                .ok_or_else(too_large)?;
            let shape = (n_kv_heads, new_capacity, head_dim);
            for buffers in layers.iter_mut().flatten() {
                let keys = Tensor::zeros(shape, kv_type.dtype(), device)?;
                let values = Tensor::zeros(shape, kv_type.dtype(), device)?;
                if len > 0 {
                    keys.slice_set(&buffers.keys.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
                    values.slice_set(&buffers.values.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
                }
                *buffers = LayerBuffers { keys, values };
            }
            *capacity = new_capacity;
        }
        let buffers = match &mut layers[layer] {
            Some(b) => b,
            slot => {
                let shape = (n_kv_heads, *capacity, head_dim);
                slot.insert(LayerBuffers {
                    keys: Tensor::zeros(shape, kv_type.dtype(), device)?,
                    values: Tensor::zeros(shape, kv_type.dtype(), device)?,
                })
            }
        };
        buffers.keys.slice_set(&keys.to_dtype(kv_type.dtype())?.contiguous()?, 1, len)?;
        buffers.values.slice_set(&values.to_dtype(kv_type.dtype())?.contiguous()?, 1, len)?;
        let view = |t: &Tensor| -> Result<Tensor> { Ok(t.narrow(1, 0, end)?.to_dtype(DType::F32)?) };
        Ok((view(&buffers.keys)?, view(&buffers.values)?))
    }

    /// Moves the position forward by `seq` after every layer has been appended.
    pub fn advance(&mut self, seq: usize) {
        self.len += seq;
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
        let mut cache = KvCache::new(2, 2, 4, 1000, KvType::F32, &Device::Cpu);
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
        let mut cache = KvCache::new(1, 1, 2, 4, KvType::F32, &Device::Cpu);
        let five = entries(1, 5, 2, 0.0);
        let e = cache.append(0, &five, &five).unwrap_err();
        assert!(matches!(e, EngineError::ContextOverflow { needed: 5, context: 4 }), "{e}");
        let four = entries(1, 4, 2, 0.0);
        cache.append(0, &four, &four).unwrap();
    }

    #[test]
    fn unknown_layer_is_an_error() {
        let mut cache = KvCache::new(1, 1, 2, 4, KvType::F32, &Device::Cpu);
        let one = entries(1, 1, 2, 0.0);
        assert!(cache.append(3, &one, &one).is_err());
        // A tensor cache has no host buffers.
        assert!(cache.host_layers(1).is_err());
    }
    #[test]
    fn f16_tensors_round_trip_and_report_their_size() {
        let mut cache = KvCache::new(1, 2, 4, 1000, KvType::F16, &Device::Cpu);
        let first = entries(2, 3, 4, 0.5);
        let (k, v) = cache.append(0, &first, &first).unwrap();
        assert_eq!(k.dtype(), DType::F32);
        // Halves of small integers are exact in f16.
        assert_eq!(v.to_vec3::<f32>().unwrap(), first.to_vec3::<f32>().unwrap());
        assert_eq!(cache.bytes(), 2 * 2 * 256 * 4 * 2);
    }

    #[test]
    fn host_buffers_grow_by_doubling_and_keep_their_entries() {
        let mut cache = KvCache::new_host(2, 1, 2, 1000, KvType::F16);
        let layers = cache.host_layers(3).unwrap();
        let HostBuf::F16(keys) = &mut layers[1].keys else { panic!("f16 cache holds f32") };
        assert_eq!(keys.len(), 256 * 2);
        keys[5] = 7;
        cache.advance(3);
        let layers = cache.host_layers(300).unwrap();
        let HostBuf::F16(keys) = &layers[1].keys else { panic!("f16 cache holds f32") };
        assert_eq!((keys.len(), keys[5]), (303 * 2, 7));
        assert_eq!(keys.capacity(), 512 * 2);
        assert_eq!(cache.bytes(), 2 * 2 * 512 * 2 * 2);
        cache.advance(300);
        let e = cache.host_layers(700).unwrap_err();
        assert!(matches!(e, EngineError::ContextOverflow { needed: 1003, context: 1000 }), "{e}");
        // Growth stops at the context.
        let layers = cache.host_layers(697).unwrap();
        let HostBuf::F16(keys) = &layers[0].keys else { panic!("f16 cache holds f32") };
        assert_eq!(keys.capacity(), 1000 * 2);
        // A host cache is not a tensor cache.
        let one = entries(1, 1, 2, 0.0);
        assert!(cache.append(0, &one, &one).is_err());

        // Released, it holds nothing and allocates again from the start.
        cache.release();
        assert_eq!((cache.len(), cache.bytes()), (0, 0));
        cache.host_layers(1).unwrap();
        assert_eq!(cache.bytes(), 2 * 2 * 256 * 2 * 2);
    }

    #[test]
    fn released_tensor_caches_free_their_buffers() {
        let mut cache = KvCache::new(1, 2, 4, 1000, KvType::F16, &Device::Cpu);
        let first = entries(2, 3, 4, 0.5);
        cache.append(0, &first, &first).unwrap();
        cache.advance(3);
        assert!(cache.bytes() > 0);
        cache.release();
        assert_eq!((cache.len(), cache.bytes()), (0, 0));
        let (k, _) = cache.append(0, &first, &first).unwrap();
        assert_eq!(k.dims(), &[2, 3, 4]);
    }

    #[test]
    fn sizes_that_overflow_are_errors() {
        let mut host = KvCache::new_host(1, 1 << 40, 1 << 40, 1 << 40, KvType::F16);
        let e = host.host_layers(1).unwrap_err();
        assert!(matches!(e, EngineError::TooLarge(_)), "{e}");
        let mut tensors = KvCache::new(1, 1 << 40, 1 << 40, 1 << 40, KvType::F16, &Device::Cpu);
        let one = entries(1, 1, 2, 0.0);
        let e = tensors.append(0, &one, &one).unwrap_err();
        assert!(matches!(e, EngineError::TooLarge(_)), "{e}");
        assert_eq!(tensors.bytes(), 0);
        let e = KvCache::new_host(1, 1, 1, 4, KvType::F16).host_layers(usize::MAX).unwrap_err();
        assert!(matches!(e, EngineError::ContextOverflow { needed: usize::MAX, context: 4 }), "{e}");
    }

    #[test]
    fn kv_types_parse() {
        assert_eq!("F16".parse::<KvType>().unwrap(), KvType::F16);
        assert_eq!("f32".parse::<KvType>().unwrap(), KvType::F32);
        assert!("q8_0".parse::<KvType>().unwrap_err().contains("expected f16 or f32"));
    }
}
