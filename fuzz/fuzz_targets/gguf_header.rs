//! A GGUF header from arbitrary bytes, as the model store parses one from a downloaded prefix: the first 8 bytes
//! say how large the file claims to be (their top two bits: the bytes at hand, a few more, or anything) and
//! whether to read it as a model (bit 61), the rest is the file's start. A header read as a model gives its
//! tokenizer and, when the bytes are the whole file, is opened whole (hyper-parameters, memory needed, chat
//! template, tensor bytes). Only SentencePiece tokenizers are built from the header: a byte-level BPE one compiles
//! its pre-tokenizer's regular expressions, about 0.2 s instrumented where the rest takes a millisecond, and so
//! would have the fuzzer spend its time in the regex compiler; its chat template gets the test model's tokenizer.
//!
//! Checked besides panics: a header that parses lies within its claimed size, and a prefix of it parses the same
//! or runs short (the store grows the prefix until it parses; any other error would be final).
#![no_main]

use std::path::Path;

use exo_engine::chat_template::{ChatMessage, ChatTemplate};
use exo_engine::gguf::{split_part_names, GgufError, GgufHeader, Value};
use exo_engine::tokenizer::Tokenizer;
use exo_engine::{Gguf, KvType, ModelConfig};
use exo_fuzz::Input;
use libfuzzer_sys::fuzz_target;

/// The largest tensor read whole from a file that opened.
const MAX_TENSOR_READ: u64 = 1 << 20;

fuzz_target!(init: { exo_fuzz::tokenizer(); exo_fuzz::store(); }, |data: &[u8]| {
    let mut input = Input(data);
    let claim = input.u64();
    let bytes = input.rest();
    let at_hand = bytes.len() as u64;
    let size = match claim >> 62 {
        0 => at_hand,
        1 => at_hand + (claim & 0xffff_ffff),
        _ => claim & (u64::MAX >> 3),
    };
    let as_model = claim & 1 << 61 != 0;
    let name = Path::new("fuzz.gguf");
    let parsed = GgufHeader::parse(bytes, size, name);
    let prefix = &bytes[..bytes.len() / 2];
    let from_prefix = GgufHeader::parse(prefix, size, name);
    match (&parsed, &from_prefix) {
        (Ok(h), Ok(p)) => assert!(
            (h.data_start, h.tensors.len(), h.metadata.len()) == (p.data_start, p.tensors.len(), p.metadata.len()),
            "a header parses differently from a prefix"
        ),
        (Ok(_), Err(e)) => assert!(e.is_short_read(), "a prefix of a header that parses fails otherwise: {e}"),
        (Err(e), Ok(_)) => panic!("a prefix parses, the longer bytes do not: {e}"),
        (Err(_), Err(_)) => {}
    }
    let header = match parsed {
        Ok(h) => h,
        Err(e) => {
            let _ = (e.to_string(), e.is_short_read(), matches!(e, GgufError::Truncated { .. }));
            return;
        }
    };
    assert!(header.data_start <= size, "tensor data starts at {} in a file of {size}", header.data_start);
    for t in header.tensors.values() {
        let end = t.offset.checked_add(t.size);
        assert!(end.is_some_and(|e| e <= size), "tensor {} ends past the file's {size} bytes", t.name);
        let _ = (t.elements(), t.kind.name(), t.kind.block_layout());
    }
    let count = header.split_count();
    let _ = header.split_index();
    let first = format!("fuzz-00001-of-{count:05}.gguf");
    if let Some(names) = split_part_names(&first, count) {
        assert_eq!(names.len(), count);
    }
    if !as_model {
        return;
    }
    let sentencepiece = header.metadata.get("tokenizer.ggml.model").and_then(Value::as_str) == Some("llama");
    let built = if sentencepiece {
        match Tokenizer::from_metadata(&header.metadata) {
            Ok(t) => Some(t),
            Err(_) => return,
        }
    } else {
        None
    };
    if let Some(t) = &built {
        if let Ok(ids) = t.encode("Hello, world! <|im_start|>", true, true) {
            let _ = t.decode(&ids, true);
        }
    }
    if at_hand == size {
        open_whole(bytes, count, built.as_ref().unwrap_or_else(|| exo_fuzz::tokenizer()));
    }
});

/// The bytes as a file on disk, opened as a model: what a node reads before it plans and loads layers.
fn open_whole(bytes: &[u8], count: usize, tokenizer: &Tokenizer) {
    let dir = exo_fuzz::store().root.join("gguf");
    let _ = std::fs::create_dir_all(&dir);
    // Named like a split model's first part, so that a split count leads to its other parts.
    let path = dir.join(format!("fuzz-00001-of-{count:05}.gguf"));
    if std::fs::write(&path, bytes).is_err() {
        return;
    }
    let opened = Gguf::open(&path);
    let _ = std::fs::remove_file(&path);
    let Ok(gguf) = opened else { return };
    for t in gguf.tensors.values().filter(|t| t.size <= MAX_TENSOR_READ) {
        if let Ok(data) = gguf.read_tensor(t) {
            assert_eq!(data.len() as u64, t.size, "tensor {} read whole", t.name);
        }
    }
    if let Ok(config) = ModelConfig::from_gguf(&gguf) {
        let _ = exo_cluster::memory::model_needs(&gguf, 4096.min(config.context_length), KvType::F16);
    }
    if let Ok(template) = ChatTemplate::from_gguf(&gguf, tokenizer) {
        let messages = [ChatMessage::new("user", "Hi")];
        let _ = template.render(&messages, true);
    }
}
