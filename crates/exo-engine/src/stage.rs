//! `StageShards`: the consecutive shards one process runs as one stage of a ring, each on its own device (the
//! layers on a machine's first GPU, then its second, then those its CPU holds), and `StageCache`, one sequence's
//! KV caches for them. Hidden states pass from part to part in memory (one copy across when the devices differ),
//! never over the network.

use candle_core::Device;

use crate::error::{EngineError, Result};
use crate::gguf::Gguf;
use crate::kv_cache::{KvCache, KvType};
use crate::shard::{Backend, ModelShard, Shard, ShardInput, ShardOutput};

/// Consecutive shards of one model, in order, each on its device. Immutable: each sequence brings a
/// [`StageCache`].
pub struct StageShards {
    parts: Vec<ModelShard>,
    range: Shard,
}

impl StageShards {
    /// Loads `parts` (which must cover the layers `parts[0].start..=parts[last].end` in order, without gaps), each
    /// on its device.
    pub fn load(gguf: &Gguf, parts: &[(Shard, &Device)], backend: Backend) -> Result<Self> {
        let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
            return Err(EngineError::InvalidShard("a stage needs at least one shard".into()));
        };
        let mut next = first.0.start;
        for (r, _) in parts {
            if r.start != next || r.total != first.0.total {
                return Err(EngineError::InvalidShard(format!("shard {r} does not start at layer {next}")));
            }
            next = r.end + 1;
        }
        let range = Shard::new(first.0.start, last.0.end, first.0.total)?;
        let parts = parts.iter().map(|&(r, d)| ModelShard::load_with(gguf, r, d, backend)).collect::<Result<_>>()?;
        Ok(Self { parts, range })
    }

    /// The layers of all parts together.
    pub fn shard(&self) -> Shard {
        self.range
    }

    pub fn parts(&self) -> &[ModelShard] {
        &self.parts
    }

    pub fn config(&self) -> &crate::config::ModelConfig {
        self.parts[0].config()
    }

    /// Bytes of tensor data all parts read from the file.
    pub fn bytes_loaded(&self) -> u64 {
        self.parts.iter().map(ModelShard::bytes_loaded).sum()
    }

    /// Empty KV caches for every part's layers, each where its part computes, holding up to `max_len` positions.
    pub fn new_cache(&self, max_len: usize, kv_type: KvType) -> StageCache {
        StageCache { parts: self.parts.iter().map(|p| p.new_cache(max_len, kv_type)).collect() }
    }

    /// Runs `input` through every part at the cache's position: the hidden states of the last part, or its logits
    /// if it holds the model's last layer.
    pub fn forward(&self, input: ShardInput<'_>, cache: &mut StageCache) -> Result<ShardOutput> {
        if cache.parts.len() != self.parts.len() {
            return Err(EngineError::InvalidShard(format!(
                "a cache of {} parts for a stage of {}",
                cache.parts.len(),
                self.parts.len()
            )));
        }
        let (first, rest) = self.parts.split_first().expect("a stage has at least one part");
        let mut out = first.forward(input, &mut cache.parts[0])?;
        for (part, c) in rest.iter().zip(&mut cache.parts[1..]) {
            out = match out {
                ShardOutput::Hidden(h) => part.forward(ShardInput::Hidden(h), c)?,
                ShardOutput::Logits(_) => {
                    return Err(EngineError::InvalidShard("a part before the last returned logits".into()))
                }
            };
        }
        Ok(out)
    }
}

/// One sequence's KV caches, one per part of a [`StageShards`]; every part holds the same positions.
pub struct StageCache {
    parts: Vec<KvCache>,
}

impl StageCache {
    /// Positions held (the position of the next token).
    pub fn len(&self) -> usize {
        self.parts[0].len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most positions it can hold.
    pub fn max_len(&self) -> usize {
        self.parts[0].max_len()
    }

    /// Whether `n` more positions fit.
    pub fn check_room(&self, n: usize) -> Result<()> {
        self.parts[0].check_room(n)
    }

    /// Bytes allocated for keys and values now, over all parts.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(KvCache::bytes).sum()
    }

    /// Forgets the sequence.
    pub fn reset(&mut self) {
        self.parts.iter_mut().for_each(KvCache::reset);
    }

    /// Forgets the sequence and frees the memory.
    pub fn release(&mut self) {
        self.parts.iter_mut().for_each(KvCache::release);
    }

    /// Rewinds every part to position `p`.
    pub fn truncate(&mut self, p: usize) -> Result<()> {
        self.parts.iter_mut().try_for_each(|c| c.truncate(p))
    }
}
