//! What exo's fuzz targets share: the test model's tokenizer and chat template, read once; a model store in a
//! temporary folder holding one file whole in its cache and one partial download, as a node's would; and a reader
//! that takes numbers off the front of an input.
//!
//! The test model is SmolLM2-135M-Instruct (`scripts/fetch-models.sh` puts it in the model cache); `EXO_FUZZ_MODEL`
//! names another GGUF file. Only its header is read.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use exo_engine::chat_template::ChatTemplate;
use exo_engine::gguf::Value;
use exo_engine::tokenizer::Tokenizer;
use exo_engine::Gguf;
use exo_models::partial::PartialFile;
use exo_models::{FileKey, HfCache, HubConfig, ModelStore, RemoteFile, StoreConfig};

/// The GGUF file whose vocabulary and chat template the targets use.
pub fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("EXO_FUZZ_MODEL") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("EXO_MODELS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/exo/models"));
    cache.join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The test model's header.
pub fn model() -> &'static Gguf {
    static MODEL: OnceLock<Gguf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = model_path();
        Gguf::open(&path)
            .unwrap_or_else(|e| panic!("{e}: run scripts/fetch-models.sh, or name a GGUF file with EXO_FUZZ_MODEL"))
    })
}

/// The test model's tokenizer.
pub fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(test_model_tokenizer)
}

fn test_model_tokenizer() -> Tokenizer {
    Tokenizer::from_gguf(model()).unwrap_or_else(|e| panic!("the test model's tokenizer: {e}"))
}

/// One vocabulary the tokenizer target encodes with.
pub struct Vocabulary {
    pub name: String,
    pub tokenizer: Tokenizer,
    /// Whether decoding what it encodes gives the text back byte for byte: true of byte-level BPE whose
    /// pre-tokenizer does not tidy spaces before punctuation (`clean_spaces` false in the engine's
    /// `pre_tokenizers.rs`), for text of bytes that have tokens.
    pub lossless: bool,
    /// Which bytes have a token of their own. A byte without one is dropped when encoded, as llama.cpp drops it
    /// (SmolLM2's vocabulary has none for 0x13, for instance).
    pub byte_has_token: [bool; 256],
}

impl Vocabulary {
    fn new(name: &str, tokenizer: Tokenizer, lossless: bool) -> Self {
        let texts: std::collections::HashSet<&str> =
            (0..tokenizer.vocab_size() as u32).filter_map(|id| tokenizer.token_text(id)).collect();
        let mut byte_has_token = [false; 256];
        for (byte, c) in byte_level_chars().into_iter().enumerate() {
            byte_has_token[byte] = texts.contains(c.encode_utf8(&mut [0; 4]) as &str);
        }
        Self { name: name.to_string(), tokenizer, lossless, byte_has_token }
    }

    /// Whether every byte of `text` has a token.
    pub fn can_encode(&self, text: &str) -> bool {
        text.bytes().all(|b| self.byte_has_token[b as usize])
    }
}

/// The character byte-level BPE writes each byte as (GPT-2's `bytes_to_unicode`).
fn byte_level_chars() -> [char; 256] {
    let mut chars = ['\0'; 256];
    let mut next = 256u32;
    for byte in 0..256u32 {
        let printable = (0x21..=0x7e).contains(&byte) || (0xa1..=0xac).contains(&byte) || (0xae..=0xff).contains(&byte);
        let code = if printable {
            byte
        } else {
            next += 1;
            next - 1
        };
        chars[byte as usize] = char::from_u32(code).expect("byte-level characters are below U+0200");
    }
    chars
}

/// The `tokenizer.ggml.pre` value of each of the engine's pre-tokenizer rule sets, with whether it tidies spaces
/// (a copy of `pre_tokenizers.rs`'s table, which is private; a rule set missing here is simply not fuzzed).
const PRE_TOKENIZERS: [(&str, bool); 16] = [
    ("default", true),
    ("llama-bpe", true),
    ("dbrx", true),
    ("tekken", false),
    ("gpt-2", true),
    ("trillion", false),
    ("starcoder", true),
    ("falcon", true),
    ("qwen2", false),
    ("stablelm2", true),
    ("qwen35", false),
    ("seed-coder", false),
    ("gpt-4o", false),
    ("deepseek-coder", false),
    ("deepseek-v3", false),
    // SmolLM2's own comes first in `tokenizers()`; this entry is skipped there.
    ("smollm", false),
];

/// The test model's tokenizer first, then its vocabulary under every other pre-tokenizer rule set, then the
/// engine's SentencePiece test vocabulary (`crates/exo-engine/tests/data/spm_fixture.json`).
pub fn tokenizers() -> &'static [Vocabulary] {
    static ALL: OnceLock<Vec<Vocabulary>> = OnceLock::new();
    ALL.get_or_init(|| {
        let gguf = model();
        let mut all = vec![Vocabulary::new("smollm (the test model's)", test_model_tokenizer(), true)];
        for (pre, cleans_spaces) in PRE_TOKENIZERS.iter().filter(|(pre, _)| *pre != "smollm") {
            let mut meta = gguf.metadata.clone();
            meta.insert("tokenizer.ggml.pre".into(), Value::String(pre.to_string()));
            // Some rule sets ask for a BOS token; SmolLM2 names one, so every set builds.
            match Tokenizer::from_metadata(&meta) {
                Ok(tokenizer) => all.push(Vocabulary::new(pre, tokenizer, !cleans_spaces)),
                Err(e) => panic!("SmolLM2's vocabulary with tokenizer.ggml.pre {pre}: {e}"),
            }
        }
        all.push(Vocabulary::new("sentencepiece fixture", spm_fixture(), false));
        all
    })
}

/// The engine's SentencePiece test vocabulary, built as its unit tests build it.
fn spm_fixture() -> Tokenizer {
    let text = include_str!("../../crates/exo-engine/tests/data/spm_fixture.json");
    let f: serde_json::Value = serde_json::from_str(text).expect("the fixture is JSON");
    let list = |key: &str| f[key].as_array().cloned().expect("the fixture has its arrays");
    let id = |key: &str| Value::U32(f[key].as_u64().expect("the fixture has its ids") as u32);
    let pieces = list("pieces").into_iter().map(|p| Value::String(p.as_str().unwrap_or_default().into())).collect();
    let scores = list("scores").into_iter().map(|s| Value::F32(s.as_f64().unwrap_or_default() as f32)).collect();
    let types = list("types").into_iter().map(|t| Value::I32(t.as_i64().unwrap_or(1) as i32)).collect();
    let meta: BTreeMap<String, Value> = [
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", Value::Array(pieces)),
        ("tokenizer.ggml.scores", Value::Array(scores)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.bos_token_id", id("bos_id")),
        ("tokenizer.ggml.eos_token_id", id("eos_id")),
        ("tokenizer.ggml.unknown_token_id", id("unk_id")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Tokenizer::from_metadata(&meta).expect("the SentencePiece fixture builds")
}

/// The test model's chat template, with its tokenizer's BOS and EOS texts.
pub fn chat_template() -> &'static ChatTemplate {
    static TEMPLATE: OnceLock<ChatTemplate> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        ChatTemplate::from_gguf(model(), tokenizer()).unwrap_or_else(|e| panic!("the test model's template: {e}"))
    })
}

/// A node's model store, in a folder of its own under the temporary folder.
pub struct Store {
    pub store: ModelStore,
    pub root: PathBuf,
    /// A file the cache holds whole.
    pub cached: FileKey,
    /// A file of which a partial download holds the first half.
    pub partial: FileKey,
    /// Bytes of either file.
    pub size: u64,
}

/// A 40-hex commit and a 64-hex sha256 ETag, as the hub gives them.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
pub const ETAG: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The store every input of a run shares: `models/local.gguf` in its models folder, `exo-fuzz/cached` whole in
/// its cache, `exo-fuzz/partial` half downloaded; offline.
pub fn store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("exo-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
            panic!("making the fuzz store in {}: {what}: {e}", root.display())
        };
        let content: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        let models = root.join("models");
        std::fs::create_dir_all(&models).unwrap_or_else(|e| fail("models folder", &e));
        std::fs::write(models.join("local.gguf"), &content).unwrap_or_else(|e| fail("models/local.gguf", &e));

        let cache = HfCache::new(root.join("hub"));
        let cached = FileKey::new("exo-fuzz/cached", "main", "model.gguf");
        let download = root.join("download.gguf");
        std::fs::write(&download, &content).unwrap_or_else(|e| fail("a file to cache", &e));
        cache.insert(&cached, COMMIT, ETAG, &download).unwrap_or_else(|e| fail("caching a file", &e));

        let downloads = root.join("downloads");
        let partial = FileKey::new("exo-fuzz/partial", "main", "model.gguf");
        let path = downloads.join("models--exo-fuzz--partial").join("main").join("model.gguf");
        std::fs::create_dir_all(path.parent().expect("the path has a folder"))
            .unwrap_or_else(|e| fail("downloads", &e));
        let info = RemoteFile { size: content.len() as u64, etag: Some(ETAG.into()), commit: Some(COMMIT.into()) };
        let half = content.len() / 2;
        let file = PartialFile::open_or_create(&path, &info).unwrap_or_else(|e| fail("a partial download", &e));
        file.write_at(0, &content[..half]).unwrap_or_else(|e| fail("a partial download", &e));
        file.mark(0, half as u64).unwrap_or_else(|e| fail("a partial download", &e));

        let hub = HubConfig { offline: true, token: None, ..HubConfig::from_vars(|_| None) };
        let config = StoreConfig { models_dir: Some(models), cache, downloads_dir: downloads, hub };
        let store = ModelStore::new(config).unwrap_or_else(|e| fail("the store", &e));
        Store { store, root, cached, partial, size: content.len() as u64 }
    })
}

/// Whether `path`, relative, names something inside the folder it is joined to: only plain names, no `..`, no
/// root, no `.`.
pub fn stays_inside(path: &Path) -> bool {
    path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Takes numbers off the front of a fuzz input; past its end every number is 0.
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    pub fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }

    /// What is left.
    pub fn rest(self) -> &'a [u8] {
        self.0
    }
}
