//! `ShardChain`: consecutive shards of one model run in one process, each with its own KV cache.
//!
//! This is how a whole model runs on one machine (a chain of one shard), and how tests check that splitting a
//! model into shards changes nothing: hidden states pass from shard to shard exactly as they would over a ring.

use candle_core::Device;

use crate::error::{EngineError, Result};
use crate::gguf::Gguf;
use crate::kv_cache::KvType;
use crate::shard::{Backend, ModelShard, Shard, ShardInput, ShardOutput};
use crate::stage::{StageCache, StageShards};

/// Most positions one forward pass takes; longer prompts are split.
pub const PREFILL_CHUNK: usize = 512;

/// Cuts a prompt of `len` positions into the fewest batches of at most `max` positions, as even as possible
/// (sizes differ by at most one), as position ranges.
///
/// With at least two positions per batch, where a prompt is cut does not change its logits by a single bit (every
/// batch of two or more takes the same products and the same attention, position by position). A batch of one
/// position takes the decode path (matrix-vector products, per-position attention), whose sums run in another
/// order; even batches leave a single position only for a prompt of one.
pub fn prefill_batches(len: usize, max: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let n = len.div_ceil(max.max(1));
    let (base, extra) = (len.checked_div(n).unwrap_or(0), len.checked_rem(n).unwrap_or(0));
    (0..n).map(move |i| {
        let start = i * base + i.min(extra);
        start..start + base + usize::from(i < extra)
    })
}

/// A whole model run for one sequence: consecutive shards ([`StageShards`]) from layer 0 to the last, and their
/// caches.
pub struct ShardChain {
    shards: StageShards,
    cache: StageCache,
}

impl ShardChain {
    /// Loads `ranges` (which must cover the model's layers in order, without gaps) with f16 caches of `max_len`.
    pub fn load(gguf: &Gguf, ranges: &[Shard], max_len: usize, device: &Device) -> Result<Self> {
        Self::load_with(gguf, ranges, max_len, device, KvType::default(), Backend::Auto)
    }

    /// [`ShardChain::load`] with a chosen KV cache type and backend.
    pub fn load_with(
        gguf: &Gguf,
        ranges: &[Shard],
        max_len: usize,
        device: &Device,
        kv_type: KvType,
        backend: Backend,
    ) -> Result<Self> {
        if ranges.first().is_none_or(|r| !r.is_first()) {
            return Err(EngineError::InvalidShard("the shards do not start at the model's first layer".into()));
        }
        if ranges.last().is_none_or(|r| !r.is_last()) {
            return Err(EngineError::InvalidShard("the shards do not reach the model's last layer".into()));
        }
        let parts: Vec<(Shard, &Device)> = ranges.iter().map(|&r| (r, device)).collect();
        let shards = StageShards::load(gguf, &parts, backend)?;
        let cache = shards.new_cache(max_len, kv_type);
        Ok(Self { shards, cache })
    }

    /// The whole model as one shard.
    pub fn load_whole(gguf: &Gguf, max_len: usize, device: &Device) -> Result<Self> {
        let layers = crate::config::ModelConfig::from_gguf(gguf)?.n_layers;
        Self::load(gguf, &[Shard::whole(layers)?], max_len, device)
    }

    /// The whole model as one shard, with a chosen KV cache type and backend.
    pub fn load_whole_with(
        gguf: &Gguf,
        max_len: usize,
        device: &Device,
        kv_type: KvType,
        backend: Backend,
    ) -> Result<Self> {
        let layers = crate::config::ModelConfig::from_gguf(gguf)?.n_layers;
        Self::load_with(gguf, &[Shard::whole(layers)?], max_len, device, kv_type, backend)
    }

    pub fn shards(&self) -> &[ModelShard] {
        self.shards.parts()
    }

    /// Positions held in the caches (the position of the next token).
    pub fn position(&self) -> usize {
        self.cache.len()
    }

    /// The most positions the caches can hold.
    pub fn max_len(&self) -> usize {
        self.cache.max_len()
    }

    /// Runs `tokens` through every shard and returns the logits of the last one. Long prompts go through in
    /// even batches of at most [`PREFILL_CHUNK`] positions ([`prefill_batches`]), so the scratch memory of a
    /// forward pass stays bounded.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(EngineError::InvalidShard("a forward pass needs at least one position".into()));
        }
        self.cache.check_room(tokens.len())?;
        let mut logits = Vec::new();
        for batch in prefill_batches(tokens.len(), PREFILL_CHUNK) {
            logits = match self.shards.forward(ShardInput::Tokens(&tokens[batch]), &mut self.cache)? {
                ShardOutput::Logits(l) => l,
                ShardOutput::Hidden(_) => {
                    return Err(EngineError::InvalidShard("the last shard returned hidden states, not logits".into()))
                }
            };
        }
        Ok(logits)
    }

    /// Bytes allocated for keys and values now, over all shards.
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// Forgets the sequence.
    pub fn reset(&mut self) {
        self.cache.reset();
    }

    /// Forgets the sequence and frees the caches' memory (a server does this between requests).
    pub fn release(&mut self) {
        self.cache.release();
    }

    /// Rewinds every cache to position `p`.
    pub fn truncate(&mut self, p: usize) -> Result<()> {
        self.cache.truncate(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefill_batches_are_even_and_cover_the_prompt() {
        let sizes = |len, max| prefill_batches(len, max).map(|r| r.len()).collect::<Vec<_>>();
        assert_eq!(sizes(513, 512), [257, 256]);
        assert_eq!(sizes(1024, 512), [512, 512]);
        assert_eq!(sizes(100, 32), [25, 25, 25, 25]);
        assert_eq!(sizes(1, 512), [1]);
        assert!(sizes(0, 512).is_empty());
        for (len, max) in [(8000, 512), (7, 3), (33, 32)] {
            let batches: Vec<_> = prefill_batches(len, max).collect();
            assert_eq!(batches.first().map(|r| r.start), Some(0));
            assert!(batches.windows(2).all(|w| w[0].end == w[1].start));
            assert_eq!(batches.last().map(|r| r.end), Some(len));
            assert!(batches.iter().all(|r| r.len() <= max && r.len() >= 2));
        }
    }
}
