//! Text ↔ token ids, built from the vocabulary a GGUF file carries in its `tokenizer.ggml.*` metadata alone.
//!
//! Owns: reading the vocabulary, token types, special ids and the end-of-generation set; encoding text (special
//! tokens split out first, then byte-level BPE for `gpt2` vocabularies or SentencePiece merging for `llama` ones);
//! turning ids back into bytes and text, whole or streamed. Does not own chat templates, stop strings or sampling.
//!
//! Every rule here follows llama.cpp (`src/llama-vocab.cpp`, `src/unicode.cpp`), so a prompt gives the same ids
//! as `llama_tokenize` and ids give the same text as `llama_detokenize`; the tests check this against llama.cpp's
//! own output (`tests/data/llama_cpp_fixture.json`, `smollm2-135m-instruct-q4_1.json`). For `gpt2` vocabularies
//! the `tokenizers` crate does the BPE merging and runs the pre-tokenizer regexes llama.cpp uses for the file's
//! `tokenizer.ggml.pre`. The special-token split and SentencePiece merging are written here because llama.cpp's
//! rules differ from Hugging Face's; the regex splitting and byte-level spelling because they are a few lines and
//! twice as fast without `tokenizers`' offset tracking.

mod pre_tokenizers;
mod special_texts;
mod spm;
mod stream;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::Range;

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::utils::SysRegex;
use tokenizers::Model;

use crate::error::{EngineError, Result};
use crate::gguf::{Gguf, Value};
#[cfg(test)]
use pre_tokenizers::PRE_TOKENIZERS;
use pre_tokenizers::{pre_tokenizer_rules, PreTokenizerRules};
use special_texts::*;
use spm::{spm_algorithm, spm_encode};
pub use stream::TextStream;

/// A tokenizer for one model: vocabulary, special tokens and the encoding rules its metadata names.
pub struct Tokenizer {
    tokens: Vec<String>,
    attrs: Vec<Attr>,
    /// Every token's output bytes with special tokens rendered, back to back; token `id`'s end at `piece_ends[id]`.
    piece_bytes: Vec<u8>,
    piece_ends: Vec<usize>,
    /// Control, user-defined and unknown tokens, longest text first: the order llama.cpp splits them out of text.
    specials: Vec<u32>,
    algorithm: Algorithm,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    /// Also decides whether decoding drops the first token's leading space.
    add_space_prefix: bool,
    clean_spaces: bool,
    /// Sorted.
    eog: Vec<u32>,
}

enum Algorithm {
    /// `regexes` are the pre-tokenizer's, compiled (fancy-regex, through `tokenizers`).
    Bpe { model: Box<BPE>, regexes: Vec<SysRegex> },
    /// `byte_ids[b]` is the token for byte `b` when a piece is not in the vocabulary.
    Spm { ids: Vocab, scores: Vec<f32>, byte_ids: Vec<Option<u32>> },
}

/// llama.cpp's token attributes, a bit set derived from the GGUF token type.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Attr(u8);

impl Attr {
    const UNDEFINED: Attr = Attr(0);
    const NORMAL: Attr = Attr(1);
    const UNKNOWN: Attr = Attr(2);
    const CONTROL: Attr = Attr(4);
    const USER_DEFINED: Attr = Attr(8);
    const UNUSED: Attr = Attr(16);
    const BYTE: Attr = Attr(32);

    /// From `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    fn from_gguf_type(kind: i64) -> Attr {
        match kind {
            1 => Attr::NORMAL,
            2 => Attr::UNKNOWN,
            3 => Attr::CONTROL,
            4 => Attr::USER_DEFINED,
            5 => Attr::UNUSED,
            6 => Attr::BYTE,
            _ => Attr::UNDEFINED,
        }
    }

    fn any(self, other: Attr) -> bool {
        self.0 & other.0 != 0
    }
}

impl std::ops::BitOr for Attr {
    type Output = Attr;
    fn bitor(self, other: Attr) -> Attr {
        Attr(self.0 | other.0)
    }
}

impl Tokenizer {
    /// Builds the tokenizer the GGUF file's `tokenizer.ggml.*` metadata describes.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        Self::from_metadata(&gguf.metadata).map_err(|e| match e {
            EngineError::Tokenizer(msg) => EngineError::Tokenizer(format!("{}: {msg}", gguf.path.display())),
            other => other,
        })
    }

    /// Builds a tokenizer from GGUF metadata already in memory (the `tokenizer.ggml.*` keys; others are ignored).
    pub fn from_metadata(meta: &BTreeMap<String, Value>) -> Result<Self> {
        let meta = Metadata(meta);
        let model = meta
            .string("tokenizer.ggml.model")?
            .ok_or_else(|| tokenizer_error("tokenizer.ggml.model is missing: this GGUF file carries no vocabulary"))?;
        let is_spm = match model {
            "llama" => true,
            "gpt2" => false,
            other => {
                return Err(tokenizer_error(format!(
                    "tokenizer.ggml.model '{other}' is not supported (supported: llama (SentencePiece), gpt2 (byte-level BPE))"
                )))
            }
        };

        let (tokens, ids_by_text) = read_tokens(&meta)?;
        let n = tokens.len();
        let mut attrs = match meta.array("tokenizer.ggml.token_type")? {
            None => vec![Attr::NORMAL; n],
            Some(types) if types.len() < n => {
                return Err(tokenizer_error(format!(
                    "tokenizer.ggml.token_type has {} entries for {n} tokens",
                    types.len()
                )))
            }
            Some(types) => types.iter().take(n).map(|t| Attr::from_gguf_type(t.as_i64().unwrap_or(-1))).collect(),
        };

        // llama.cpp's defaults per vocabulary kind, then what the metadata overrides.
        let pre_rules = if is_spm { None } else { Some(pre_tokenizer_rules(meta.string("tokenizer.ggml.pre")?)?) };
        let in_vocab = |id: u32| (id as usize) < n;
        let mut ids = SpecialIds {
            bos: Some(if is_spm { 1 } else { 11 }).filter(|&id| in_vocab(id)),
            eos: Some(if is_spm { 2 } else { 11 }).filter(|&id| in_vocab(id)),
            unk: Some(0).filter(|&id| is_spm && in_vocab(id)),
            ..SpecialIds::default()
        };
        ids.read(&meta, n)?;
        let mut add_bos = pre_rules.is_none_or(|r| r.add_bos);
        let mut add_eos = false;
        let mut add_space_prefix = is_spm;
        if let Some(v) = meta.bool("tokenizer.ggml.add_space_prefix")? {
            add_space_prefix = v;
        }
        if let Some(v) = meta.bool("tokenizer.ggml.add_bos_token")? {
            add_bos = v;
        }
        if let Some(v) = meta.bool("tokenizer.ggml.add_eos_token")? {
            add_eos = v;
        }
        if add_bos && ids.bos.is_none() {
            return Err(tokenizer_error(
                "tokenizer.ggml.add_bos_token is true, but tokenizer.ggml.bos_token_id is not set",
            ));
        }
        if add_eos && ids.eos.is_none() {
            return Err(tokenizer_error(
                "tokenizer.ggml.add_eos_token is true, but tokenizer.ggml.eos_token_id is not set",
            ));
        }

        let eog = detect_by_text(&tokens, &mut attrs, &mut ids);
        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&id| attrs[id as usize].any(Attr::CONTROL | Attr::USER_DEFINED | Attr::UNKNOWN))
            .collect();
        specials.sort_by_key(|&id| std::cmp::Reverse(tokens[id as usize].len()));

        let algorithm = match pre_rules {
            None => spm_algorithm(ids_by_text, &meta, ids.unk)?,
            Some(rules) => bpe_algorithm(ids_by_text, &meta, rules)?,
        };
        let mut tokenizer = Tokenizer {
            tokens,
            attrs,
            piece_bytes: Vec::new(),
            piece_ends: Vec::new(),
            specials,
            algorithm,
            bos: ids.bos,
            eos: ids.eos,
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces: pre_rules.is_some_and(|r| r.clean_spaces),
            eog,
        };
        tokenizer.build_pieces();
        Ok(tokenizer)
    }

    /// The ids of a prompt rendered by a chat template: control tokens parsed, BOS first when the model's metadata
    /// asks for it, but never twice when the template already wrote it (Llama 3 and Mistral templates do). No EOS.
    pub fn encode_chat(&self, rendered: &str) -> Result<Vec<u32>> {
        self.encode_chat_with_text(rendered, &[])
    }

    /// [`Tokenizer::encode_chat`], where the byte ranges `text` of `rendered` (the messages' own words) are text:
    /// a control token's spelling inside them stays text (as with `parse_special` off), so that a user who types
    /// `<|im_end|>` cannot close their turn. The rest is tokenized exactly as `encode_chat` does.
    pub fn encode_chat_with_text(&self, rendered: &str, text: &[Range<usize>]) -> Result<Vec<u32>> {
        let mut ids = self.encode_fragments(rendered, false, true, text)?;
        if let (true, Some(bos)) = (self.add_bos, self.bos) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// The ids of `text`. `add_special` adds BOS/EOS as the model's metadata asks; `parse_special` turns control
    /// tokens written in the text (like `<|im_start|>`) into their ids. User-defined tokens are always split out.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        self.encode_fragments(text, add_special, parse_special, &[])
    }

    /// [`Tokenizer::encode`], with control tokens not parsed inside the byte ranges `plain`.
    fn encode_fragments(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
        plain: &[Range<usize>],
    ) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let fragments = self.split_specials(text, parse_special, plain);
        // SentencePiece text gets a leading space at the start and after every special token (llama.cpp's rule).
        let mut after_special = true;
        let mut buffer = String::new();
        for fragment in fragments {
            match fragment {
                Fragment::Token(id) => {
                    out.push(id);
                    after_special = true;
                }
                Fragment::Text(piece) => {
                    match &self.algorithm {
                        Algorithm::Bpe { model, regexes } => bpe_encode(model, regexes, piece, &mut buffer, &mut out)?,
                        Algorithm::Spm { ids, scores, byte_ids } => {
                            buffer.clear();
                            if self.add_space_prefix && after_special {
                                buffer.push('\u{2581}');
                            }
                            for c in piece.chars() {
                                buffer.push(if c == ' ' { '\u{2581}' } else { c });
                            }
                            spm_encode(ids, scores, byte_ids, &buffer, &mut out);
                        }
                    }
                    after_special = false;
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        Ok(out)
    }

    /// The bytes token `id` adds to output text: nothing for control and unknown tokens unless `special`, the byte
    /// itself for `<0xXX>` byte tokens, and nothing for ids outside the vocabulary.
    pub fn token_bytes(&self, id: u32, special: bool) -> &[u8] {
        let i = id as usize;
        match self.attrs.get(i) {
            None => &[],
            Some(attr) if !special && attr.any(Attr::CONTROL | Attr::UNKNOWN) => &[],
            Some(_) => {
                let start = if i == 0 { 0 } else { self.piece_ends[i - 1] };
                &self.piece_bytes[start..self.piece_ends[i]]
            }
        }
    }

    /// The text of `ids`, as llama.cpp's `llama_detokenize` gives it: invalid UTF-8 becomes U+FFFD, SentencePiece
    /// vocabularies drop the first token's leading space, and some BPE vocabularies tidy spaces before punctuation.
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        let mut strip_space = self.add_space_prefix;
        for &id in ids.iter().filter(|&&id| (id as usize) < self.tokens.len()) {
            let piece = self.token_bytes(id, special);
            bytes.extend_from_slice(match piece {
                [b' ', rest @ ..] if strip_space => rest,
                _ => piece,
            });
            strip_space = false;
        }
        if self.clean_spaces {
            clean_up_spaces(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Every id that ends generation: EOS, end-of-turn, end-of-message and the tokens llama.cpp knows by text.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// Whether `id` is a control, unknown or unused token: one that is never text.
    pub fn is_special(&self, id: u32) -> bool {
        self.attrs.get(id as usize).is_some_and(|a| a.any(Attr::CONTROL | Attr::UNKNOWN | Attr::UNUSED))
    }

    /// The id of the control or user-defined token whose text is `text` (`[TOOL_CALLS]`), if there is one.
    pub fn special_id(&self, text: &str) -> Option<u32> {
        self.specials.iter().copied().find(|&id| self.tokens[id as usize] == text)
    }

    /// The token's string as stored in the vocabulary (byte-level or `▁`-escaped, not decoded).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Whether `encode(.., add_special = true, ..)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Fills the per-token output bytes, rendering special tokens (llama.cpp's token-to-piece cache).
    fn build_pieces(&mut self) {
        let mut byte_of = [None; 0x144];
        for (byte, &c) in BYTE_CHARS.iter().enumerate() {
            byte_of[c as usize] = Some(byte as u8);
        }
        let mut bytes = Vec::with_capacity(self.tokens.iter().map(String::len).sum());
        let mut ends = Vec::with_capacity(self.tokens.len());
        let is_spm = matches!(self.algorithm, Algorithm::Spm { .. });
        for (text, &attr) in self.tokens.iter().zip(&self.attrs) {
            if attr.any(Attr::CONTROL | Attr::UNKNOWN | Attr::USER_DEFINED) {
                bytes.extend_from_slice(text.as_bytes());
            } else if attr.any(Attr::NORMAL) {
                if is_spm {
                    bytes.extend_from_slice(text.replace('\u{2581}', " ").as_bytes());
                } else {
                    for c in text.chars() {
                        match byte_of.get(c as usize).copied().flatten() {
                            Some(b) => bytes.push(b),
                            // Not a byte-level character: keep it as it is (llama.cpp writes an [UNK_BYTE_..] marker).
                            None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                        }
                    }
                }
            } else if attr.any(Attr::BYTE) {
                bytes.extend(parse_byte_token(text));
            }
            ends.push(bytes.len());
        }
        self.piece_bytes = bytes;
        self.piece_ends = ends;
    }

    /// Splits special tokens out of `text` the way llama.cpp does: longest token text first, each token taking its
    /// leftmost non-overlapping occurrences in the text that earlier tokens left. Control and unknown tokens are
    /// split out only with `parse_special`, and never where they overlap a range of `plain`.
    fn split_specials<'t>(&self, text: &'t str, parse_special: bool, plain: &[Range<usize>]) -> Vec<Fragment<'t>> {
        let mut fragments = Vec::new();
        if text.is_empty() {
            return fragments;
        }
        fragments.push(Fragment::Text(text));
        let pairs = BytePairs::of(text);
        let mut next = Vec::new();
        for &id in &self.specials {
            let control = self.attrs[id as usize].any(Attr::CONTROL | Attr::UNKNOWN);
            if !parse_special && control {
                continue;
            }
            // Where this token's text may not be taken as the token.
            let guarded = if control { plain } else { &[] };
            let special = self.tokens[id as usize].as_str();
            if !pairs.may_contain(special) || !text.contains(special) {
                continue;
            }
            next.clear();
            for &fragment in &fragments {
                let Fragment::Text(piece) = fragment else {
                    next.push(fragment);
                    continue;
                };
                let mut rest = 0;
                // The piece's offset in `text` (it is a slice of it).
                let base = piece.as_ptr() as usize - text.as_ptr() as usize;
                for (at, _) in piece.match_indices(special) {
                    let span = base + at..base + at + special.len();
                    if guarded.iter().any(|r| r.start < span.end && span.start < r.end) {
                        continue;
                    }
                    if at > rest {
                        next.push(Fragment::Text(&piece[rest..at]));
                    }
                    next.push(Fragment::Token(id));
                    rest = at + special.len();
                }
                if rest < piece.len() {
                    next.push(Fragment::Text(&piece[rest..]));
                }
            }
            std::mem::swap(&mut fragments, &mut next);
        }
        fragments
    }
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.algorithm {
            Algorithm::Bpe { .. } => "gpt2",
            Algorithm::Spm { .. } => "llama",
        };
        f.debug_struct("Tokenizer")
            .field("model", &kind)
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eog", &self.eog)
            .finish_non_exhaustive()
    }
}

/// The adjacent byte pairs a text contains: a quick test that rules out most special tokens before searching for
/// them, which matters for vocabularies with thousands (`<unused123>`, ...).
struct BytePairs(Vec<u64>);

impl BytePairs {
    fn of(text: &str) -> Self {
        let mut bits = vec![0u64; 1 << 10];
        for pair in text.as_bytes().windows(2) {
            let k = usize::from(pair[0]) << 8 | usize::from(pair[1]);
            bits[k >> 6] |= 1 << (k & 63);
        }
        BytePairs(bits)
    }

    fn may_contain(&self, needle: &str) -> bool {
        needle.as_bytes().windows(2).all(|pair| {
            let k = usize::from(pair[0]) << 8 | usize::from(pair[1]);
            self.0[k >> 6] & (1 << (k & 63)) != 0
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

/// The special ids llama.cpp reads from metadata or finds by text.
#[derive(Default)]
struct SpecialIds {
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    fim_pre: Option<u32>,
    fim_suf: Option<u32>,
    fim_mid: Option<u32>,
    fim_pad: Option<u32>,
    fim_rep: Option<u32>,
    fim_sep: Option<u32>,
}

impl SpecialIds {
    /// Overrides defaults with the ids the metadata sets; an id outside the vocabulary (or negative, as some
    /// converters write for "none") keeps the default.
    fn read(&mut self, meta: &Metadata, n_tokens: usize) -> Result<()> {
        type Slot = fn(&mut SpecialIds) -> &mut Option<u32>;
        let keys: [(&str, Slot); 14] = [
            ("bos_token_id", |s| &mut s.bos),
            ("eos_token_id", |s| &mut s.eos),
            ("eot_token_id", |s| &mut s.eot),
            ("eom_token_id", |s| &mut s.eom),
            ("unknown_token_id", |s| &mut s.unk),
            ("fim_pre_token_id", |s| &mut s.fim_pre),
            ("fim_suf_token_id", |s| &mut s.fim_suf),
            ("fim_mid_token_id", |s| &mut s.fim_mid),
            ("fim_pad_token_id", |s| &mut s.fim_pad),
            ("fim_rep_token_id", |s| &mut s.fim_rep),
            ("fim_sep_token_id", |s| &mut s.fim_sep),
            // Older files' names for the fill-in-the-middle ids; llama.cpp reads them last.
            ("prefix_token_id", |s| &mut s.fim_pre),
            ("suffix_token_id", |s| &mut s.fim_suf),
            ("middle_token_id", |s| &mut s.fim_mid),
        ];
        for (name, slot) in keys {
            let key = format!("tokenizer.ggml.{name}");
            let Some(value) = meta.0.get(&key) else { continue };
            match (value.as_u64(), value.as_i64()) {
                (Some(id), _) if id < n_tokens as u64 => *slot(self) = Some(id as u32),
                (Some(_), _) | (None, Some(_)) => {}
                (None, None) => return Err(tokenizer_error(format!("{key} is not a token id: {value:?}"))),
            }
        }
        Ok(())
    }
}

/// llama.cpp's detection of special tokens by their text, which also marks them as control tokens (a few
/// converters store them as normal). Returns the sorted end-of-generation ids.
fn detect_by_text(tokens: &[String], attrs: &mut [Attr], ids: &mut SpecialIds) -> Vec<u32> {
    let known: HashSet<&str> = [
        EOT_TEXTS,
        EOM_TEXTS,
        FIM_PRE_TEXTS,
        FIM_SUF_TEXTS,
        FIM_MID_TEXTS,
        FIM_PAD_TEXTS,
        FIM_REP_TEXTS,
        FIM_SEP_TEXTS,
        EOG_TEXTS,
        ALWAYS_RENDERED_TEXTS,
    ]
    .concat()
    .into_iter()
    .collect();
    let found: Vec<(usize, &str)> =
        tokens.iter().map(String::as_str).enumerate().filter(|(_, text)| known.contains(text)).collect();

    // llama.cpp takes the first match in hash-map order; here it is the lowest id.
    for &(id, text) in &found {
        let candidates = [
            (&mut ids.eot, EOT_TEXTS),
            (&mut ids.eom, EOM_TEXTS),
            (&mut ids.fim_pre, FIM_PRE_TEXTS),
            (&mut ids.fim_suf, FIM_SUF_TEXTS),
            (&mut ids.fim_mid, FIM_MID_TEXTS),
            (&mut ids.fim_pad, FIM_PAD_TEXTS),
            (&mut ids.fim_rep, FIM_REP_TEXTS),
            (&mut ids.fim_sep, FIM_SEP_TEXTS),
        ];
        for (slot, texts) in candidates {
            if slot.is_none() && texts.contains(&text) {
                *slot = Some(id as u32);
                attrs[id] = attrs[id] | Attr::CONTROL;
            }
        }
    }

    let mut eog: Vec<u32> = [ids.fim_pad, ids.fim_rep, ids.fim_sep].into_iter().flatten().collect();
    for &(id, text) in &found {
        if EOG_TEXTS.contains(&text) {
            eog.push(id as u32);
            attrs[id] = attrs[id] | Attr::CONTROL;
        }
        if ALWAYS_RENDERED_TEXTS.contains(&text) {
            attrs[id] = Attr::USER_DEFINED;
        }
    }
    eog.extend([ids.eos, ids.eot, ids.eom].into_iter().flatten());
    eog.sort_unstable();
    eog.dedup();

    let text_of = |id: u32| tokens[id as usize].as_str();
    let has = |eog: &[u32], text: &str| eog.iter().any(|&id| text_of(id) == text);
    // gpt-oss (and solar-open) end a message with <|end|> but continue the turn; their turn ends elsewhere.
    let has_call = has(&eog, "<|call|>") || has(&eog, "<|calls|>");
    if has_call && (has(&eog, "<|return|>") || has(&eog, "<|flush|>")) {
        if let Some(pos) = eog.iter().position(|&id| text_of(id) == "<|end|>") {
            attrs[eog.remove(pos) as usize] = Attr::USER_DEFINED;
        }
    }
    // Gemma 4 uses </s> inside tool responses.
    if has(&eog, "<|tool_response>") {
        if let Some(pos) = eog.iter().position(|&id| text_of(id) == "</s>") {
            attrs[eog.remove(pos) as usize] = Attr::NORMAL;
        }
    }
    eog
}

/// The vocabulary, and each token's id by its text.
fn read_tokens(meta: &Metadata) -> Result<(Vec<String>, Vocab)> {
    let values = meta
        .array("tokenizer.ggml.tokens")?
        .ok_or_else(|| tokenizer_error("tokenizer.ggml.tokens is missing: this GGUF file carries no vocabulary"))?;
    if values.is_empty() || values.len() > u32::MAX as usize {
        return Err(tokenizer_error(format!("tokenizer.ggml.tokens has {} entries", values.len())));
    }
    let mut ids = Vocab::with_capacity(values.len());
    let mut tokens = Vec::with_capacity(values.len());
    for (id, value) in values.iter().enumerate() {
        let text =
            value.as_str().ok_or_else(|| tokenizer_error(format!("tokenizer.ggml.tokens[{id}] is not a string")))?;
        // llama.cpp's placeholder, so that every token has text to search for.
        let text = if text.is_empty() { format!("[EMPTY_{id}]") } else { text.to_string() };
        if let Some(first) = ids.insert(text.clone(), id as u32) {
            return Err(tokenizer_error(format!(
                "duplicate token in tokenizer.ggml.tokens: '{text}' has ids {first} and {id}"
            )));
        }
        tokens.push(text);
    }
    Ok((tokens, ids))
}

fn bpe_algorithm(vocab: Vocab, meta: &Metadata, rules: &PreTokenizerRules) -> Result<Algorithm> {
    let merges = meta
        .array("tokenizer.ggml.merges")?
        .ok_or_else(|| tokenizer_error("tokenizer.ggml.merges is missing: a gpt2 vocabulary needs its BPE merges"))?;
    // Merges whose parts or result are not tokens could never produce a token; the BPE model rejects them, so they
    // are dropped (order, and so priority, of the others is kept). A repeated pair keeps its first rank.
    let mut pairs = Vec::with_capacity(merges.len());
    let mut seen = HashSet::with_capacity(merges.len());
    let mut joined = String::new();
    for (i, merge) in merges.iter().enumerate() {
        let merge =
            merge.as_str().ok_or_else(|| tokenizer_error(format!("tokenizer.ggml.merges[{i}] is not a string")))?;
        // llama.cpp splits at the first space after the first byte, so a merge may start with a space.
        let Some(split) = merge.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
            continue;
        };
        let (left, right) = (&merge[..split], &merge[split + 1..]);
        joined.clear();
        joined.push_str(left);
        joined.push_str(right);
        let (Some(&a), Some(&b)) = (vocab.get(left), vocab.get(right)) else { continue };
        if vocab.contains_key(joined.as_str()) && seen.insert((a, b)) {
            pairs.push((left.to_string(), right.to_string()));
        }
    }
    let model = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .ignore_merges(rules.ignore_merges)
        .build()
        .map_err(|e| tokenizer_error(format!("cannot build the BPE model from tokenizer.ggml.merges: {e}")))?;

    let regexes = rules
        .regexes
        .iter()
        .map(|regex| {
            SysRegex::new(regex)
                .map_err(|e| tokenizer_error(format!("pre-tokenizer regex {regex:?} does not compile: {e}")))
        })
        .collect::<Result<_>>()?;
    Ok(Algorithm::Bpe { model: Box::new(model), regexes })
}

/// Byte-level BPE of one fragment, as llama.cpp does it: split it with each pre-tokenizer regex in turn (text
/// between matches stays a piece), spell each piece's bytes in GPT-2's byte alphabet, and merge each piece.
fn bpe_encode(model: &BPE, regexes: &[SysRegex], text: &str, word: &mut String, out: &mut Vec<u32>) -> Result<()> {
    let mut pieces = vec![text];
    let mut next = Vec::new();
    for regex in regexes {
        next.clear();
        for &piece in &pieces {
            let mut end = 0;
            for (start, stop) in regex.find_iter(piece) {
                if start > end {
                    next.push(&piece[end..start]);
                }
                if stop > start {
                    next.push(&piece[start..stop]);
                }
                end = stop;
            }
            if end < piece.len() {
                next.push(&piece[end..]);
            }
        }
        std::mem::swap(&mut pieces, &mut next);
    }
    for piece in pieces {
        word.clear();
        word.extend(piece.bytes().map(|b| BYTE_CHARS[b as usize]));
        let tokens = model.tokenize(word).map_err(|e| tokenizer_error(format!("BPE encoding failed: {e}")))?;
        out.extend(tokens.iter().map(|t| t.id));
    }
    Ok(())
}

/// GPT-2's byte-level alphabet, which byte-level BPE tokens are written in: printable bytes stand for themselves,
/// the others, in order, for U+0100 onwards.
const BYTE_CHARS: [char; 256] = {
    let mut table = ['\0'; 256];
    let mut shifted = 0;
    let mut byte = 0;
    while byte < 256 {
        let printable = matches!(byte, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            byte
        } else {
            shifted += 1;
            255 + shifted
        };
        table[byte as usize] = match char::from_u32(code) {
            Some(c) => c,
            None => panic!("codes up to 0x143 are characters"),
        };
        byte += 1;
    }
    table
};

/// The byte of a `<0xXX>` token.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

/// llama.cpp's `clean_spaces` passes over decoded bytes: drop the space before `? ! . ,`, turn ` ' ` into `'`,
/// and drop the space before `'s`, `'m`, `'re`, `'ve`.
fn clean_up_spaces(text: &mut Vec<u8>) {
    let mut out = Vec::with_capacity(text.len());
    for (i, &c) in text.iter().enumerate() {
        if i > 0 && text[i - 1] == b' ' && matches!(c, b'?' | b'!' | b'.' | b',') {
            out.pop();
        }
        out.push(c);
    }
    std::mem::swap(text, &mut out);

    out.clear();
    let mut i = 0;
    // llama.cpp blanks the skipped space in place, so the character after it does not see a space before it.
    let mut prev_blanked = false;
    while i < text.len() {
        let c = text[i];
        let prev_is_space = i > 0 && text[i - 1] == b' ' && !prev_blanked;
        prev_blanked = false;
        if c == b'\'' && prev_is_space && text.get(i + 1) == Some(&b' ') {
            out.pop();
            out.push(c);
            i += 2;
            prev_blanked = true;
            continue;
        }
        out.push(c);
        i += 1;
    }
    std::mem::swap(text, &mut out);

    out.clear();
    for (i, &c) in text.iter().enumerate() {
        if i > 0 && text[i - 1] == b' ' && c == b'\'' {
            let contraction =
                matches!((text.get(i + 1), text.get(i + 2)), (Some(b's' | b'm'), _) | (Some(b'r' | b'v'), Some(b'e')));
            if contraction {
                out.pop();
            }
        }
        out.push(c);
    }
    std::mem::swap(text, &mut out);
}

/// Typed access to the `tokenizer.ggml.*` keys, with errors that name the key.
struct Metadata<'a>(&'a BTreeMap<String, Value>);

impl Metadata<'_> {
    fn string(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", Value::as_str)
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a bool", Value::as_bool)
    }

    fn array(&self, key: &str) -> Result<Option<&[Value]>> {
        self.typed(key, "an array", Value::as_array)
    }

    fn typed<'v, T>(&'v self, key: &str, expected: &str, get: impl Fn(&'v Value) -> Option<T>) -> Result<Option<T>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(v) => get(v)
                .map(Some)
                .ok_or_else(|| tokenizer_error(format!("metadata {key} has the wrong type (expected {expected})"))),
        }
    }
}

fn tokenizer_error(msg: impl Into<String>) -> EngineError {
    EngineError::Tokenizer(msg.into())
}

/// A tokenizer over a tiny byte-level vocabulary (the 256 byte tokens, "hello", "Ġworld", `<|im_end|>` as EOS…),
/// for other modules' unit tests.
#[cfg(test)]
pub(crate) fn tiny_test_tokenizer() -> Tokenizer {
    tests::tiny_bpe("gpt-2")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::OnceLock;

    fn strings(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
    }

    fn ints(items: &[i32]) -> Value {
        Value::Array(items.iter().map(|&i| Value::I32(i)).collect())
    }

    fn metadata(entries: Vec<(&str, Value)>) -> BTreeMap<String, Value> {
        entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    const MERGES: &[&str] = &["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"];
    /// Tokens after the 256 byte tokens, with their GGUF types.
    const EXTRA: &[(&str, i32)] = &[
        ("he", 1),
        ("ll", 1),
        ("hell", 1),
        ("hello", 1),
        ("Ġw", 1),
        ("or", 1),
        ("Ġwor", 1),
        ("ld", 1),
        ("Ġworld", 1),
        ("xyz", 1),
        ("<|im_start|>", 3),
        ("<|im_end|>", 3),
        ("<|endoftext|>", 1),
        ("<tool>", 4),
        ("ab", 4),
        ("abc", 4),
        ("<|fim_pad|>", 1),
    ];

    fn tiny_bpe_metadata(pre: Option<&str>) -> BTreeMap<String, Value> {
        let bytes: Vec<String> = BYTE_CHARS.iter().map(char::to_string).collect();
        let mut tokens: Vec<&str> = bytes.iter().map(String::as_str).collect();
        tokens.extend(EXTRA.iter().map(|(t, _)| *t));
        let mut types = vec![1; 256];
        types.extend(EXTRA.iter().map(|(_, k)| *k));
        let mut entries = vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            ("tokenizer.ggml.token_type", ints(&types)),
            ("tokenizer.ggml.merges", strings(MERGES)),
            ("tokenizer.ggml.bos_token_id", Value::U32(id_of("<|endoftext|>"))),
            ("tokenizer.ggml.eos_token_id", Value::U32(id_of("<|im_end|>"))),
        ];
        if let Some(pre) = pre {
            entries.push(("tokenizer.ggml.pre", Value::String(pre.into())));
        }
        metadata(entries)
    }

    fn id_of(text: &str) -> u32 {
        let extra = EXTRA.iter().position(|(t, _)| *t == text).expect("token is in EXTRA");
        256 + extra as u32
    }

    pub(super) fn tiny_bpe(pre: &str) -> Tokenizer {
        Tokenizer::from_metadata(&tiny_bpe_metadata(Some(pre))).expect("tiny vocabulary builds")
    }

    /// Ids of the byte tokens spelling `text` (the tiny vocabulary starts with the 256 byte tokens in order).
    fn bytes_of(text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }

    #[test]
    fn bpe_merges_by_rank_and_falls_back_to_bytes() {
        let t = tiny_bpe("gpt-2");
        assert_eq!(t.encode("hello world", false, false).unwrap(), vec![id_of("hello"), id_of("Ġworld")]);
        let mut expected = vec![id_of("he")];
        expected.extend(bytes_of("é"));
        assert_eq!(t.encode("heé", false, false).unwrap(), expected);
    }

    #[test]
    fn ignore_merges_takes_a_word_in_the_vocabulary_whole() {
        assert_eq!(tiny_bpe("gpt-2").encode("xyz", false, false).unwrap(), bytes_of("xyz"));
        assert_eq!(tiny_bpe("llama-bpe").encode("xyz", false, false).unwrap(), vec![id_of("xyz")]);
    }

    #[test]
    fn control_tokens_are_split_out_only_with_parse_special() {
        let t = tiny_bpe("gpt-2");
        let text = "<|im_start|>hello<|im_end|>";
        let parsed = t.encode(text, false, true).unwrap();
        assert_eq!(parsed, vec![id_of("<|im_start|>"), id_of("hello"), id_of("<|im_end|>")]);
        let literal = t.encode(text, false, false).unwrap();
        assert!(!literal.contains(&id_of("<|im_start|>")));
        assert_eq!(t.decode(&literal, false), text);
    }

    #[test]
    fn user_defined_tokens_are_always_split_out_longest_first() {
        let t = tiny_bpe("gpt-2");
        let mut expected = bytes_of("x");
        expected.extend([id_of("abc"), id_of("<tool>"), id_of("ab")]);
        assert_eq!(t.encode("xabc<tool>ab", false, false).unwrap(), expected);
    }

    #[test]
    fn eog_texts_become_control_and_end_generation() {
        let t = tiny_bpe("gpt-2");
        let endoftext = id_of("<|endoftext|>");
        assert_eq!(t.eog_ids(), &[id_of("<|im_end|>"), endoftext, id_of("<|fim_pad|>")]);
        assert!(t.is_eog(endoftext) && !t.is_eog(id_of("hello")));
        assert!(t.token_bytes(endoftext, false).is_empty());
        assert_eq!(t.token_bytes(endoftext, true), b"<|endoftext|>");
        assert!(!t.encode("<|endoftext|>", false, false).unwrap().contains(&endoftext));
    }

    #[test]
    fn gpt_oss_end_is_not_eog_when_return_and_call_exist() {
        let tokens = ["a", "<|return|>", "<|call|>", "<|end|>"];
        let meta = metadata(vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            ("tokenizer.ggml.merges", strings(&[])),
            ("tokenizer.ggml.eos_token_id", Value::U32(1)),
        ]);
        let t = Tokenizer::from_metadata(&meta).unwrap();
        assert_eq!(t.eog_ids(), &[1, 2]);
        assert_eq!(t.token_bytes(3, false), b"<|end|>");
    }

    #[test]
    fn decode_hides_control_tokens_unless_special_and_skips_bad_ids() {
        let t = tiny_bpe("smollm");
        let ids = [id_of("<|im_start|>"), id_of("hello"), u32::MAX, id_of("Ġworld"), 100_000];
        assert_eq!(t.decode(&ids, false), "hello world");
        assert_eq!(t.decode(&ids, true), "<|im_start|>hello world");
        assert!(t.token_bytes(u32::MAX, true).is_empty());
        assert_eq!(t.token_text(id_of("Ġworld")), Some("Ġworld"));
        assert_eq!(t.token_text(u32::MAX), None);
    }

    #[test]
    fn clean_spaces_follows_llama_cpp() {
        let clean = |s: &str| {
            let mut bytes = s.as_bytes().to_vec();
            clean_up_spaces(&mut bytes);
            String::from_utf8(bytes).unwrap()
        };
        assert_eq!(clean("Hello , world . Yes ? No !"), "Hello, world. Yes? No!");
        assert_eq!(clean("it 's I 'm we 're you 've"), "it's I'm we're you've");
        assert_eq!(clean("don 't they 'd we 'll"), "don 't they 'd we 'll");
        assert_eq!(clean("a ' b"), "a'b");
        assert_eq!(clean("a ' ' b"), "a'' b");
        // Only vocabularies whose pre-tokenizer asks for it are cleaned.
        let tokens = ["Ġ,", "a"];
        let meta = |pre: &str| {
            metadata(vec![
                ("tokenizer.ggml.model", Value::String("gpt2".into())),
                ("tokenizer.ggml.pre", Value::String(pre.into())),
                ("tokenizer.ggml.tokens", strings(&tokens)),
                ("tokenizer.ggml.merges", strings(&[])),
            ])
        };
        assert_eq!(Tokenizer::from_metadata(&meta("gpt-2")).unwrap().decode(&[1, 0], false), "a,");
        assert_eq!(Tokenizer::from_metadata(&meta("qwen2")).unwrap().decode(&[1, 0], false), "a ,");
    }

    #[test]
    fn add_bos_follows_pre_tokenizer_then_metadata() {
        assert!(!tiny_bpe("gpt-2").add_bos());
        let t = tiny_bpe("llama-bpe");
        assert!(t.add_bos());
        assert_eq!(t.encode("hello", true, false).unwrap(), vec![id_of("<|endoftext|>"), id_of("hello")]);
        let mut meta = tiny_bpe_metadata(Some("llama-bpe"));
        meta.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
        meta.insert("tokenizer.ggml.add_eos_token".into(), Value::Bool(true));
        let t = Tokenizer::from_metadata(&meta).unwrap();
        assert_eq!(t.encode("hello", true, false).unwrap(), vec![id_of("hello"), id_of("<|im_end|>")]);
        assert_eq!(t.encode("", true, false).unwrap(), vec![id_of("<|im_end|>")]);
        assert!(t.encode("", false, true).unwrap().is_empty());
    }

    /// The messages' own text in a rendered chat stays text: a control token spelled there is not the token (a
    /// user cannot close their turn), while the template's own control tokens around it are; nothing else changes.
    #[test]
    fn control_tokens_inside_message_text_stay_text() {
        let t = tiny_bpe("gpt-2");
        let rendered = "<|im_start|>hello<|im_end|><|im_end|>";
        let (start, end) = (id_of("<|im_start|>"), id_of("<|im_end|>"));
        // "hello<|im_end|>" is the message: its <|im_end|> is bytes; the template's closing one is the token.
        let message = 12..27;
        assert_eq!(&rendered[message.clone()], "hello<|im_end|>");
        let ids = t.encode_chat_with_text(rendered, std::slice::from_ref(&message)).unwrap();
        let mut expected = vec![start];
        expected.extend(t.encode("hello<|im_end|>", false, false).unwrap());
        expected.push(end);
        assert_eq!(ids, expected);
        assert!(ids[1..ids.len() - 1].iter().all(|&id| id != end));
        // Without ranges, exactly encode_chat.
        assert_eq!(t.encode_chat_with_text(rendered, &[]).unwrap(), t.encode_chat(rendered).unwrap());
        assert_eq!(t.encode_chat(rendered).unwrap(), vec![start, id_of("hello"), end, end]);
    }

    #[test]
    fn chat_prompts_get_exactly_one_bos() {
        let mut meta = tiny_bpe_metadata(Some("llama-bpe"));
        let bos = id_of("<|im_start|>");
        meta.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(bos));
        let with_bos = Tokenizer::from_metadata(&meta).unwrap();
        assert!(with_bos.add_bos());
        assert_eq!(with_bos.encode_chat("hello").unwrap(), vec![bos, id_of("hello")]);
        assert_eq!(with_bos.encode_chat("<|im_start|>hello").unwrap(), vec![bos, id_of("hello")]);
        let without = tiny_bpe("gpt-2");
        assert!(!without.add_bos());
        assert_eq!(without.encode_chat("<|im_start|>hello").unwrap(), vec![bos, id_of("hello")]);
        assert_eq!(without.encode_chat("hello").unwrap(), vec![id_of("hello")]);
    }

    #[test]
    fn add_bos_without_a_bos_token_is_an_error() {
        let meta = metadata(vec![
            ("tokenizer.ggml.model", Value::String("llama".into())),
            ("tokenizer.ggml.tokens", strings(&["<unk>"])),
        ]);
        let err = Tokenizer::from_metadata(&meta).unwrap_err().to_string();
        assert!(err.contains("add_bos_token is true, but tokenizer.ggml.bos_token_id is not set"), "{err}");
    }

    #[test]
    fn unsupported_pre_tokenizer_is_named_with_the_supported_ones() {
        let err = Tokenizer::from_metadata(&tiny_bpe_metadata(Some("foo"))).unwrap_err().to_string();
        assert!(err.contains("tokenizer.ggml.pre 'foo' is not supported (supported: default, llama-bpe"), "{err}");
    }

    #[test]
    fn missing_pre_tokenizer_uses_the_default_rules() {
        let t = Tokenizer::from_metadata(&tiny_bpe_metadata(None)).unwrap();
        assert_eq!(t.encode("hello world", false, false).unwrap(), vec![id_of("hello"), id_of("Ġworld")]);
    }

    #[test]
    fn every_pre_tokenizer_regex_compiles() {
        for (names, _) in PRE_TOKENIZERS {
            for name in *names {
                let t = Tokenizer::from_metadata(&tiny_bpe_metadata(Some(name)));
                let t = t.unwrap_or_else(|e| panic!("{name}: {e}"));
                let text = "Hello wörld 12345 it's  ok\n\n日本 🚀 <tool>";
                let ids = t.encode(text, false, false).unwrap();
                assert_eq!(t.decode(&ids, false), text, "{name}");
            }
        }
    }

    #[test]
    fn special_ids_outside_the_vocabulary_keep_llama_cpp_defaults() {
        let mut meta = tiny_bpe_metadata(Some("gpt-2"));
        meta.insert("tokenizer.ggml.bos_token_id".into(), Value::I32(-1));
        meta.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(1 << 20));
        let t = Tokenizer::from_metadata(&meta).unwrap();
        // llama.cpp's default for gpt2 vocabularies is id 11 for both.
        assert_eq!((t.bos_id(), t.eos_id()), (Some(11), Some(11)));
        assert!(t.is_eog(11));
    }

    #[test]
    fn wrong_metadata_types_are_named() {
        let mut meta = tiny_bpe_metadata(Some("gpt-2"));
        meta.insert("tokenizer.ggml.add_bos_token".into(), Value::String("yes".into()));
        let err = Tokenizer::from_metadata(&meta).unwrap_err().to_string();
        assert!(err.contains("tokenizer.ggml.add_bos_token has the wrong type (expected a bool)"), "{err}");
        let err = Tokenizer::from_metadata(&metadata(vec![])).unwrap_err().to_string();
        assert!(err.contains("tokenizer.ggml.model is missing"), "{err}");
    }

    #[test]
    fn stream_holds_partial_characters_and_replaces_invalid_bytes() {
        let t = tiny_bpe("gpt-2");
        let rocket = bytes_of("🚀");
        let mut stream = TextStream::new(&t);
        assert_eq!(stream.push(id_of("hello")), "hello");
        for &id in &rocket[..3] {
            assert_eq!(stream.push(id), "");
        }
        assert_eq!(stream.push(rocket[3]), "🚀");
        // A lone continuation byte can never start a character; a truncated one waits until finish.
        assert_eq!(stream.push(bytes_of("\u{80}")[1]), "\u{FFFD}");
        assert_eq!(stream.push(rocket[0]), "");
        assert_eq!(stream.push(id_of("hello")), "\u{FFFD}hello");
        assert_eq!(stream.push(rocket[0]), "");
        assert_eq!(stream.finish(), "\u{FFFD}");
        assert_eq!(stream.finish(), "");
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let texts = [
            "",
            " ",
            "\0\u{1}\u{7f}",
            "\u{10FFFF}\u{FFFD}\u{E000}",
            "\u{301}\u{301}e\u{301}",
            "<|im_st",
            "<|im_start|><|im_start|>",
            "\r\n\r\n \t ",
            "'s's'S'LL",
            &"a".repeat(5000),
            &" ".repeat(3000),
            &"🚀".repeat(500),
        ];
        for t in [tiny_bpe("llama-bpe"), tiny_bpe("smollm"), spm_fixture_tokenizer()] {
            for text in texts {
                for (add, parse) in [(false, false), (true, false), (false, true), (true, true)] {
                    let ids = t.encode(text, add, parse).unwrap();
                    let _ = t.decode(&ids, true);
                }
            }
            let _ = t.decode(&[0, 1, 2, u32::MAX, 7, 100_000], false);
        }
    }

    // --- SentencePiece, against the sentencepiece library (scripts/gen_spm_fixture.py) ---

    fn fixture(name: &str) -> serde_json::Value {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn spm_fixture_metadata() -> BTreeMap<String, Value> {
        let f = fixture("spm_fixture.json");
        let pieces: Vec<&str> = f["pieces"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        let scores = f["scores"].as_array().unwrap().iter().map(|s| Value::F32(s.as_f64().unwrap() as f32));
        let types: Vec<i32> = f["types"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap() as i32).collect();
        metadata(vec![
            ("tokenizer.ggml.model", Value::String("llama".into())),
            ("tokenizer.ggml.tokens", strings(&pieces)),
            ("tokenizer.ggml.scores", Value::Array(scores.collect())),
            ("tokenizer.ggml.token_type", ints(&types)),
            ("tokenizer.ggml.bos_token_id", Value::U32(f["bos_id"].as_u64().unwrap() as u32)),
            ("tokenizer.ggml.eos_token_id", Value::U32(f["eos_id"].as_u64().unwrap() as u32)),
            ("tokenizer.ggml.unknown_token_id", Value::U32(f["unk_id"].as_u64().unwrap() as u32)),
        ])
    }

    fn spm_fixture_tokenizer() -> Tokenizer {
        Tokenizer::from_metadata(&spm_fixture_metadata()).expect("fixture vocabulary builds")
    }

    fn spm_cases() -> Vec<(String, Vec<u32>)> {
        let f = fixture("spm_fixture.json");
        let cases = f["cases"].as_array().unwrap().iter().map(|c| {
            let ids = c["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
            (c["text"].as_str().unwrap().to_string(), ids)
        });
        cases.collect()
    }

    #[test]
    fn spm_matches_sentencepiece() {
        let t = spm_fixture_tokenizer();
        let cases = spm_cases();
        assert!(cases.len() > 20);
        for (text, expected) in &cases {
            assert_eq!(&t.encode(text, false, false).unwrap(), expected, "{text:?}");
            assert_eq!(&t.encode(text, false, true).unwrap(), expected, "{text:?}");
        }
    }

    #[test]
    fn spm_decode_round_trips() {
        let t = spm_fixture_tokenizer();
        for (text, ids) in spm_cases() {
            assert_eq!(t.decode(&ids, false), text);
        }
    }

    #[test]
    fn spm_add_special_prepends_bos() {
        let t = spm_fixture_tokenizer();
        assert!(t.add_bos());
        assert_eq!((t.bos_id(), t.eos_id()), (Some(1), Some(2)));
        let mut expected = vec![1];
        expected.extend(t.encode("Hello world", false, false).unwrap());
        assert_eq!(t.encode("Hello world", true, false).unwrap(), expected);
        assert_eq!(t.encode("", true, false).unwrap(), vec![1]);
        assert_eq!(t.eog_ids(), &[2]);
    }

    #[test]
    fn spm_text_after_a_special_token_gets_a_space_prefix() {
        let t = spm_fixture_tokenizer();
        let mut expected = vec![1];
        expected.extend(t.encode("Hello", false, false).unwrap());
        assert_eq!(t.encode("<s>Hello", false, true).unwrap(), expected);
        // The space is dropped again by decoding only at the very start.
        assert_eq!(t.decode(&expected, true), "<s> Hello");
    }

    #[test]
    fn spm_without_space_prefix_keeps_text_as_is() {
        let mut meta = spm_fixture_metadata();
        meta.insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false));
        let t = Tokenizer::from_metadata(&meta).unwrap();
        let ids = t.encode("Hello world", false, false).unwrap();
        assert!(!t.token_text(ids[0]).unwrap().starts_with('\u{2581}'));
        assert_eq!(t.decode(&ids, false), "Hello world");
        assert_eq!(t.decode(&t.encode(" Hello", false, false).unwrap(), false), " Hello");
    }

    /// llama.cpp's own SentencePiece rules (BOS, special tokens in the text and the space after them, decoding
    /// with and without specials), on the same vocabulary, from tests/data/llama_cpp_fixture.json.
    #[test]
    fn spm_matches_llama_cpp() {
        let t = spm_fixture_tokenizer();
        let golden = fixture("llama_cpp_fixture.json");
        let cases = golden["spm"]["cases"].as_array().unwrap();
        assert!(cases.len() >= 8);
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let ids: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
            assert_eq!(t.encode(text, true, true).unwrap(), ids, "{text:?}");
            assert_eq!(t.decode(&ids, true), case["decoded_special"].as_str().unwrap(), "{text:?}");
            assert_eq!(t.decode(&ids, false), case["decoded"].as_str().unwrap(), "{text:?}");
        }
    }

    // --- SmolLM2, against llama.cpp (tests/data/smollm2-135m-instruct-q4_1.json) ---

    fn smollm_gguf() -> &'static Gguf {
        static GGUF: OnceLock<Gguf> = OnceLock::new();
        GGUF.get_or_init(|| {
            let path = std::env::var_os("EXO_TEST_MODEL").map(PathBuf::from).unwrap_or_else(|| {
                let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
                home.join(".cache/exo/models/SmolLM2-135M-Instruct.Q4_1.gguf")
            });
            assert!(path.exists(), "test model {} is missing: run scripts/fetch-models.sh", path.display());
            Gguf::open(&path).unwrap_or_else(|e| panic!("{e}"))
        })
    }

    fn smollm() -> &'static Tokenizer {
        static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
        TOKENIZER.get_or_init(|| Tokenizer::from_gguf(smollm_gguf()).unwrap_or_else(|e| panic!("{e}")))
    }

    fn smollm_cases() -> Vec<(String, Vec<u32>)> {
        let golden = fixture("smollm2-135m-instruct-q4_1.json");
        let cases = golden["tokenize"].as_array().expect("golden file has a tokenize list").iter().map(|c| {
            let ids = c["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
            (c["text"].as_str().unwrap().to_string(), ids)
        });
        cases.collect()
    }

    #[test]
    fn smollm_matches_llama_cpp() {
        let t = smollm();
        let cases = smollm_cases();
        assert!(!cases.is_empty());
        for (text, expected) in &cases {
            assert_eq!(&t.encode(text, false, true).unwrap(), expected, "{text:?}");
        }
    }

    #[test]
    fn smollm_decode_round_trips() {
        let t = smollm();
        for (text, ids) in smollm_cases() {
            assert_eq!(t.decode(&ids, true), text);
        }
    }

    #[test]
    fn smollm_stream_never_splits_characters() {
        let t = smollm();
        for (text, ids) in smollm_cases() {
            let mut stream = TextStream::new(t);
            let mut streamed = String::new();
            for &id in &ids {
                let piece = stream.push(id);
                assert!(!piece.contains('\u{FFFD}'), "{text:?}: partial character in {piece:?}");
                streamed.push_str(&piece);
            }
            streamed.push_str(&stream.finish());
            assert_eq!(streamed, t.decode(&ids, false), "{text:?}");
            if !text.contains("<|") {
                assert_eq!(streamed, text);
            }
        }
    }

    /// The vocabulary scripts/gen_llama_cpp_fixture.py makes from its texts: the byte tokens, then by length
    /// every substring of 2..=6 bytes (spelled byte-level) in order of first appearance, each merged from its
    /// prefix and last byte, then three control tokens.
    fn substring_vocabulary(texts: &[&str]) -> BTreeMap<String, Value> {
        let spelled: Vec<Vec<char>> =
            texts.iter().map(|t| t.bytes().map(|b| BYTE_CHARS[b as usize]).collect()).collect();
        let mut tokens: Vec<String> = BYTE_CHARS.iter().map(char::to_string).collect();
        let mut seen: HashSet<String> = tokens.iter().cloned().collect();
        let mut merges = Vec::new();
        for len in 2..=6 {
            for word in &spelled {
                for piece in word.windows(len) {
                    let text: String = piece.iter().collect();
                    if seen.insert(text.clone()) {
                        let (prefix, last) = piece.split_at(len - 1);
                        merges.push(format!("{} {}", prefix.iter().collect::<String>(), last[0]));
                        tokens.push(text);
                    }
                }
            }
        }
        let mut types = vec![1; tokens.len()];
        for special in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
            tokens.push(special.to_string());
            types.push(3);
        }
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let merges: Vec<&str> = merges.iter().map(String::as_str).collect();
        metadata(vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            ("tokenizer.ggml.token_type", ints(&types)),
            ("tokenizer.ggml.merges", strings(&merges)),
        ])
    }

    /// Every pre-tokenizer against llama.cpp itself (tests/data/llama_cpp_fixture.json, made by
    /// scripts/gen_llama_cpp_fixture.py): ids for tricky texts, and the text they decode back to.
    #[test]
    fn pre_tokenizers_match_llama_cpp() {
        let golden = &fixture("llama_cpp_fixture.json")["bpe"];
        let texts: Vec<&str> = golden["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        let vocabulary = substring_vocabulary(&texts);
        let pres = golden["pre"].as_object().unwrap();
        assert_eq!(pres.len(), 16);
        for (pre, expected) in pres {
            let mut meta = vocabulary.clone();
            meta.insert("tokenizer.ggml.pre".into(), Value::String(pre.clone()));
            let t = Tokenizer::from_metadata(&meta).unwrap_or_else(|e| panic!("{pre}: {e}"));
            for (i, text) in texts.iter().enumerate() {
                let ids: Vec<u32> =
                    expected["ids"][i].as_array().unwrap().iter().map(|id| id.as_u64().unwrap() as u32).collect();
                assert_eq!(t.encode(text, false, true).unwrap(), ids, "{pre}: {text:?}");
                assert_eq!(t.decode(&ids, true), expected["decoded"][i].as_str().unwrap(), "{pre}: {text:?}");
            }
        }
    }

    #[test]
    fn smollm_special_tokens() {
        let t = smollm();
        assert_eq!(t.vocab_size(), 49152);
        assert_eq!((t.bos_id(), t.eos_id(), t.add_bos()), (Some(1), Some(2), false));
        assert_eq!(t.token_text(1), Some("<|im_start|>"));
        // <|endoftext|>, <|im_end|>, and <reponame>, which llama.cpp takes as the fill-in-the-middle repo token.
        assert_eq!(t.eog_ids(), &[0, 2, 4]);
        assert_eq!(t.token_text(4), Some("<reponame>"));
    }
}
