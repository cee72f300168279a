//! Log-probabilities as a response reports them: each generated token's, with its raw bytes and the most likely
//! alternatives, reported with the text that token produced and never for text that is not shown (the
//! end-of-generation token, a stop string cut off the end), as llama-server reports them.

use std::collections::VecDeque;

use exo_cluster::proto::TokenEvent;
use exo_engine::tokenizer::Tokenizer;

/// The log-probability of a generated token, with the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's text (invalid UTF-8 replaced).
    pub token: String,
    /// The token's own bytes, which may be part of a character.
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// The alternatives: text, bytes, log-probability.
    pub top: Vec<(String, Vec<u8>, f32)>,
}

impl TokenLogprob {
    /// A token's log-probability and alternatives, as the last stage reported them.
    pub fn of(tokenizer: &Tokenizer, event: &TokenEvent) -> Self {
        let bytes = |id: u32| tokenizer.token_bytes(id, true).to_vec();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let own = bytes(event.token);
        TokenLogprob {
            token: text(&own),
            bytes: own,
            logprob: event.logprob.unwrap_or(f32::NEG_INFINITY),
            top: event
                .top
                .iter()
                .map(|t| {
                    let b = bytes(t.token);
                    (text(&b), b, t.logprob)
                })
                .collect(),
        }
    }
}

/// Tokens' log-probabilities waiting for their text: one is handed out once the text shown so far covers its
/// token's text. Text held back (it may start a stop string) holds back its tokens' log-probabilities, and what
/// is still waiting when a stop string ends the output is dropped with the text it cut.
#[derive(Debug, Default)]
pub struct ShownLogprobs {
    /// Each waiting token's log-probability and the bytes of text it adds.
    waiting: VecDeque<(TokenLogprob, usize)>,
    /// Text shown and not yet matched to a waiting token, in bytes.
    shown: usize,
}

impl ShownLogprobs {
    /// A generated token that adds `text_bytes` bytes of text (0 for one that adds none, such as a control token).
    pub fn push(&mut self, logprob: TokenLogprob, text_bytes: usize) {
        self.waiting.push_back((logprob, text_bytes));
    }

    /// `text` was shown: the log-probabilities of the tokens it covers.
    pub fn shown(&mut self, text: &str) -> Vec<TokenLogprob> {
        self.shown += text.len();
        let mut out = Vec::new();
        while let Some(&(_, bytes)) = self.waiting.front() {
            if bytes > self.shown {
                break;
            }
            self.shown -= bytes;
            out.extend(self.waiting.pop_front().map(|(l, _)| l));
        }
        out
    }

    /// The output ended. With `all_shown` (it ran out of tokens or ended at an end-of-generation token, so all
    /// the text was shown, however its bytes came out), every waiting log-probability; after a stop string, none.
    pub fn finish(&mut self, all_shown: bool) -> Vec<TokenLogprob> {
        self.shown = 0;
        let waiting = std::mem::take(&mut self.waiting);
        if all_shown {
            waiting.into_iter().map(|(l, _)| l).collect()
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lp(token: &str) -> TokenLogprob {
        TokenLogprob { token: token.into(), bytes: token.as_bytes().to_vec(), logprob: -1.0, top: Vec::new() }
    }

    fn tokens(v: &[TokenLogprob]) -> Vec<&str> {
        v.iter().map(|l| l.token.as_str()).collect()
    }

    #[test]
    fn a_tokens_logprob_comes_with_its_text_and_never_for_a_cut_stop_string() {
        let mut s = ShownLogprobs::default();
        s.push(lp("Hel"), 3);
        assert_eq!(tokens(&s.shown("Hel")), ["Hel"]);
        // " EN" may start the stop string " END": its text is held back, and so is its log-probability.
        s.push(lp(" EN"), 3);
        assert!(s.shown("").is_empty());
        // It was not: both come out with the text.
        s.push(lp("X"), 1);
        assert_eq!(tokens(&s.shown(" ENX")), [" EN", "X"]);
        // This time it was: the stop string's tokens report nothing.
        s.push(lp(" EN"), 3);
        s.push(lp("D"), 1);
        assert!(s.shown("").is_empty());
        assert!(s.finish(false).is_empty());
    }

    #[test]
    fn tokens_without_text_and_the_end_of_output() {
        let mut s = ShownLogprobs::default();
        // A control token adds no text; it is reported in order.
        s.push(lp("a"), 1);
        s.push(lp("<|x|>"), 0);
        assert_eq!(tokens(&s.shown("a")), ["a", "<|x|>"]);
        // A SentencePiece first token's leading space is not shown: its text is one byte short, so it waits, and
        // comes out at the end when all the text was shown.
        s.push(lp(" Hi"), 3);
        assert!(s.shown("Hi").is_empty());
        assert_eq!(tokens(&s.finish(true)), [" Hi"]);
    }
}
