//! The tokenizer on arbitrary bytes: encoded as text (lossy UTF-8, as a prompt that reached the engine would be),
//! with and without BOS/EOS and special-token parsing, and read as token ids (in the vocabulary, just past it and
//! anywhere) to decode, whole and streamed. The first byte picks the vocabulary: the test model's, the same under
//! each of the engine's pre-tokenizer rule sets, or a SentencePiece one; the second the flags.
//!
//! Checked besides panics: encoding gives ids of the vocabulary, and byte-level BPE that does not tidy spaces
//! decodes what it encoded to the same text (when every byte of it has a token).
#![no_main]

use exo_engine::tokenizer::TextStream;
use exo_fuzz::{tokenizers, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: { tokenizers(); }, |data: &[u8]| {
    let all = tokenizers();
    let mut input = Input(data);
    let v = &all[input.u8() as usize % all.len()];
    let flags = input.u8();
    let (add_special, parse_special, decode_special) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
    let bytes = input.rest();
    let t = &v.tokenizer;
    let vocab = t.vocab_size();

    let text = String::from_utf8_lossy(bytes);
    if let Ok(ids) = t.encode(&text, add_special, parse_special) {
        assert!(ids.iter().all(|&id| (id as usize) < vocab), "{}: an id outside the vocabulary of {vocab}", v.name);
        let back = t.decode(&ids, decode_special);
        if v.lossless && !add_special && !parse_special && v.can_encode(&text) {
            assert_eq!(back, text, "{}: decoding what was encoded gives other text", v.name);
        }
    }
    if let Ok(ids) = t.encode_chat(&text) {
        assert!(ids.iter().all(|&id| (id as usize) < vocab), "{}: an id outside the vocabulary of {vocab}", v.name);
    }

    // Token ids: mostly in the vocabulary or just past it; with the top bit set, any id.
    let ids: Vec<u32> = bytes
        .chunks(4)
        .map(|c| {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            let id = u32::from_le_bytes(b);
            if id >> 31 == 1 {
                id
            } else {
                id % (vocab as u32 + 16)
            }
        })
        .collect();
    let _ = t.decode(&ids, decode_special);
    let mut stream = TextStream::new(t);
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(&stream.push(id));
        let _ = (t.token_bytes(id, decode_special), t.token_text(id), t.is_eog(id));
    }
    streamed.push_str(&stream.finish());
    let _ = (t.bos_id(), t.eos_id(), t.eog_ids(), t.add_bos());
});
