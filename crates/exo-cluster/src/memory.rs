//! Memory: how much the machine has, how much of it a node may use (`--memory-limit`), how much a model needs
//! before it is loaded, and the sizes users write (`512M`, `8GiB`).

use exo_engine::{EngineError, Gguf, KvType, ModelConfig};

/// The machine's memory and the node's share of it, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub total: u64,
    /// What the operating system could give without swapping.
    pub available: u64,
    /// `--memory-limit`, if given.
    pub limit: Option<u64>,
}

impl Memory {
    /// The machine's memory now, with the node's limit.
    pub fn now(limit: Option<u64>) -> Self {
        let mut system = sysinfo::System::new();
        system.refresh_memory();
        Self { total: system.total_memory(), available: system.available_memory(), limit }
    }

    /// What the node may use: what is available, capped by its limit.
    pub fn usable(&self) -> u64 {
        self.limit.map_or(self.available, |l| l.min(self.available))
    }
}

/// Bytes a model needs loaded with a KV cache of `context` positions of `kv_type`: tensor data and full cache,
/// plus a tenth for buffers and allocator slack and 100 MiB for the process (the bound the engine's benchmarks
/// check peak memory against).
pub fn model_needs(gguf: &Gguf, context: usize, kv_type: KvType) -> Result<u64, EngineError> {
    let c = ModelConfig::from_gguf(gguf)?;
    // Saturating: a file's metadata may claim any sizes, and an absurd claim must read as "too large", not wrap
    // into a small number that passes.
    let tensors = gguf.tensors.values().fold(0u64, |acc, t| acc.saturating_add(t.size));
    let context = context.min(c.context_length) as u64;
    let kv = [c.n_layers as u64, 2, c.n_kv_heads as u64, c.head_dim as u64, context, kv_type.size() as u64]
        .into_iter()
        .fold(1u64, u64::saturating_mul);
    let loaded = tensors.saturating_add(kv);
    Ok(loaded.saturating_add(loaded / 10).saturating_add(100 << 20))
}

/// Parses a size: a number of bytes, or a number with a unit K, M, G or T (binary multiples; `KB`, `KiB`, `k`
/// mean the same), e.g. `512M`, `1.5G`, `8GiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("'{text}' is not a size (e.g. 512M, 8G, 1073741824)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(format!("'{text}': unknown unit '{other}' (use K, M, G or T)")),
    };
    let bytes = value * (1u64 << shift) as f64;
    if !(1.0..1.8e19).contains(&bytes) {
        return Err(format!("'{text}' is not a usable size"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("8gb"), Ok(8 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size(" 2 T "), Ok(2 << 40));
        for bad in ["", "G", "12X", "-1G", "0", "1.2.3M"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains(&format!("'{bad}'")), "{bad}: {e}");
        }
    }

    #[test]
    fn the_limit_caps_what_is_available() {
        let m = Memory { total: 16 << 30, available: 10 << 30, limit: Some(4 << 30) };
        assert_eq!(m.usable(), 4 << 30);
        assert_eq!(Memory { limit: Some(12 << 30), ..m }.usable(), 10 << 30);
        assert_eq!(Memory { limit: None, ..m }.usable(), 10 << 30);
        let now = Memory::now(None);
        assert!(now.total > 0 && now.available <= now.total, "{now:?}");
    }
}
