//! SentencePiece vocabularies (`tokenizer.ggml.model = llama`) as llama.cpp encodes them: spaces become `▁`,
//! then the adjacent pair with the highest score whose concatenation is a token is merged until none is left;
//! pieces that are not tokens fall back to `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use tokenizers::models::bpe::Vocab;

use super::{tokenizer_error, Algorithm, Metadata};
use crate::error::Result;

pub(super) fn spm_algorithm(ids: Vocab, meta: &Metadata, unk: Option<u32>) -> Result<Algorithm> {
    let n = ids.len();
    let scores = match meta.array("tokenizer.ggml.scores")? {
        None => vec![0.0; n],
        Some(values) if values.len() < n => {
            return Err(tokenizer_error(format!("tokenizer.ggml.scores has {} entries for {n} tokens", values.len())))
        }
        // -0.0 + 0.0 is 0.0: scores compare as llama.cpp's floats do, where -0.0 == 0.0.
        Some(values) => values
            .iter()
            .take(n)
            .map(|v| v.as_f64().map_or(f32::NEG_INFINITY, |s| s as f32 + 0.0))
            .map(|s| if s.is_nan() { f32::NEG_INFINITY } else { s })
            .collect(),
    };
    let mut byte_ids = vec![None; 256];
    for (byte, slot) in byte_ids.iter_mut().enumerate() {
        let single = char::from_u32(byte as u32).filter(|c| c.is_ascii()).map(String::from);
        *slot = ids.get(&format!("<0x{byte:02X}>")).or_else(|| single.and_then(|s| ids.get(&s))).copied().or(unk);
    }
    Ok(Algorithm::Spm { ids, scores, byte_ids })
}

/// One candidate merge of two adjacent symbols, ordered so the heap yields the best score, then the leftmost.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

/// llama.cpp's SentencePiece encoding of an already `▁`-escaped fragment: start from single characters, keep
/// merging the adjacent pair whose concatenation is the highest-scoring token, then spell leftovers as bytes.
pub(super) fn spm_encode(ids: &Vocab, scores: &[f32], byte_ids: &[Option<u32>], text: &str, out: &mut Vec<u32>) {
    /// A run of text; `len == 0` once merged into its left neighbour.
    struct Symbol {
        start: usize,
        len: usize,
        prev: Option<usize>,
        next: Option<usize>,
    }
    let mut symbols: Vec<Symbol> = text
        .char_indices()
        .enumerate()
        .map(|(i, (start, c))| Symbol { start, len: c.len_utf8(), prev: i.checked_sub(1), next: Some(i + 1) })
        .collect();
    let Some(last) = symbols.last_mut() else {
        return;
    };
    last.next = None;

    let mut queue = BinaryHeap::new();
    let try_add = |symbols: &[Symbol], queue: &mut BinaryHeap<Bigram>, left: Option<usize>, right: Option<usize>| {
        let (Some(left), Some(right)) = (left, right) else {
            return;
        };
        let (start, end) = (symbols[left].start, symbols[right].start + symbols[right].len);
        if let Some(&id) = ids.get(&text[start..end]) {
            queue.push(Bigram { score: scores[id as usize], left, right, len: end - start });
        }
    };
    for i in 1..symbols.len() {
        try_add(&symbols, &mut queue, Some(i - 1), Some(i));
    }
    while let Some(bigram) = queue.pop() {
        let (left, right) = (&symbols[bigram.left], &symbols[bigram.right]);
        // Stale: one side has since been merged into something else.
        if left.len == 0 || right.len == 0 || left.len + right.len != bigram.len {
            continue;
        }
        let (right_len, right_next) = (right.len, right.next);
        symbols[bigram.left].len += right_len;
        symbols[bigram.left].next = right_next;
        symbols[bigram.right].len = 0;
        if let Some(next) = right_next {
            symbols[next].prev = Some(bigram.left);
        }
        try_add(&symbols, &mut queue, symbols[bigram.left].prev, Some(bigram.left));
        try_add(&symbols, &mut queue, Some(bigram.left), right_next);
    }

    let mut at = Some(0);
    while let Some(i) = at {
        let piece = &text[symbols[i].start..symbols[i].start + symbols[i].len];
        match ids.get(piece) {
            Some(&id) => out.push(id),
            None => out.extend(piece.bytes().filter_map(|b| byte_ids[b as usize])),
        }
        at = symbols[i].next;
    }
}
