//! The catalog: short model names (`llama-3.1-70b`) mapped to a Hugging Face repository and one GGUF file per
//! quantization, with what the cluster needs to plan before downloading (architecture, layers, size). The data is
//! `catalog.json`, compiled in.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct CatalogFile {
    /// Path of the file in the repository; for a split model, its first part.
    pub file: String,
    /// How many files the model is split in (1: not split).
    #[serde(default = "one")]
    pub parts: usize,
    /// Bytes, all parts together, as the hub lists them (rounded).
    pub size: u64,
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Deserialize)]
pub struct CatalogEntry {
    pub name: String,
    pub repo: String,
    /// `general.architecture` of its files: one the engine runs.
    pub architecture: String,
    pub layers: usize,
    pub description: String,
    /// The quantization a bare name picks, where it is not the catalog's (gpt-oss comes in MXFP4 only).
    #[serde(default)]
    pub default: Option<String>,
    /// Quantization name (`Q4_K_M`) to file.
    pub files: BTreeMap<String, CatalogFile>,
}

#[derive(Debug, Deserialize)]
struct CatalogData {
    default_quantization: String,
    models: Vec<CatalogEntry>,
}

fn data() -> &'static CatalogData {
    static DATA: OnceLock<CatalogData> = OnceLock::new();
    DATA.get_or_init(|| {
        // The file is part of the source; the test below parses it, so this cannot fail in a built binary.
        serde_json::from_str(include_str!("catalog.json")).unwrap_or_else(|e| panic!("catalog.json: {e}"))
    })
}

/// Every catalog entry, in the file's order.
pub fn entries() -> &'static [CatalogEntry] {
    &data().models
}

/// The quantization a bare name picks.
pub fn default_quantization() -> &'static str {
    &data().default_quantization
}

/// The entry named `name` (case-insensitive).
pub fn lookup(name: &str) -> Option<&'static CatalogEntry> {
    entries().iter().find(|e| e.name.eq_ignore_ascii_case(name))
}

impl CatalogEntry {
    /// The file for `quant` (case-insensitive, `q4_k_m` or `Q4_K_M`).
    pub fn file(&self, quant: &str) -> Option<(&str, &CatalogFile)> {
        self.files.iter().find(|(q, _)| q.eq_ignore_ascii_case(quant)).map(|(q, f)| (q.as_str(), f))
    }

    /// The quantization a bare name picks: the entry's own, or the catalog's.
    pub fn default_quantization(&self) -> &str {
        self.default.as_deref().unwrap_or(default_quantization())
    }

    pub fn quantizations(&self) -> Vec<&str> {
        self.files.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_parses_and_is_consistent() {
        let all = entries();
        assert!(all.len() >= 20, "{} entries", all.len());
        let mut names = std::collections::HashSet::new();
        for e in all {
            assert!(names.insert(e.name.clone()), "{} twice", e.name);
            assert_eq!(e.name, e.name.to_ascii_lowercase());
            assert!(e.repo.split('/').count() == 2, "{}", e.repo);
            // Only architectures the engine runs.
            assert!(exo_engine::Architecture::from_name(&e.architecture).is_some(), "{}: {}", e.name, e.architecture);
            assert!(e.layers > 0);
            let (_, f) = e.file(e.default_quantization()).unwrap_or_else(|| panic!("{} has no default file", e.name));
            assert!(f.file.ends_with(".gguf") && f.size > 0);
            for f in e.files.values() {
                if f.parts > 1 {
                    let name = f.file.rsplit('/').next().unwrap_or_default();
                    assert!(exo_engine::gguf::split_part_names(name, f.parts).is_some(), "{}", f.file);
                }
            }
        }
        for name in [
            "smollm2-135m",
            "llama-3.2-1b",
            "llama-3.1-70b",
            "llama-3.3-70b",
            "mistral-7b",
            "qwen-2.5-72b",
            "qwen-3-8b",
            "qwen-3-30b-a3b",
            "qwen-3-235b-a22b",
            "gemma-2-9b",
            "gemma-3-27b",
            "mistral-small-24b",
            "phi-4",
            "gpt-oss-20b",
        ] {
            assert!(lookup(name).is_some(), "{name}");
        }
        assert_eq!(lookup("LLAMA-3.1-70B").map(|e| e.layers), Some(80));
        assert!(lookup("llama-3.1-70b").unwrap().file("q8_0").is_some());
        // gpt-oss is published in MXFP4 only: a bare name picks that.
        let oss = lookup("gpt-oss-120b").unwrap();
        assert_eq!((oss.default_quantization(), oss.file("mxfp4").map(|(_, f)| f.parts)), ("MXFP4", Some(3)));
        assert_eq!(lookup("qwen-3-8b").unwrap().default_quantization(), "Q4_K_M");
    }
}
