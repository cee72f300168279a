//! `TextStream`: generated ids to text, one token at a time, never splitting a UTF-8 character.

use super::Tokenizer;

/// Turns generated ids into text one at a time, never splitting a UTF-8 character across two pieces: bytes of an
/// unfinished character wait for the next token; bytes that can never form one come out as U+FFFD.
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    pending: Vec<u8>,
    /// Control tokens shown as their text all the same (llama.cpp's "preserved tokens": tool-call markers).
    preserved: Vec<u32>,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self::preserving(tokenizer, Vec::new())
    }

    /// A stream that shows the control tokens `preserved` as their text.
    pub fn preserving(tokenizer: &'a Tokenizer, preserved: Vec<u32>) -> Self {
        TextStream { tokenizer, pending: Vec::new(), preserved }
    }

    /// Adds one token (control tokens contribute nothing, unless preserved) and returns the text it completes,
    /// possibly empty.
    pub fn push(&mut self, id: u32) -> String {
        self.pending.extend_from_slice(self.tokenizer.token_bytes(id, self.preserved.contains(&id)));
        let mut out = String::new();
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(text) => {
                    out.push_str(text);
                    start = self.pending.len();
                }
                Err(e) => {
                    let valid_end = start + e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..valid_end]));
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start = valid_end + bad;
                        }
                        // An unfinished character at the end: keep it for the next token.
                        None => {
                            start = valid_end;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Whatever is still held, with an unfinished character as U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}
