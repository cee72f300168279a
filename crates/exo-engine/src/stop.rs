//! Stop strings across token boundaries.
//!
//! Generated text arrives one token's text at a time, and a stop string may be split over several tokens
//! ("<|e" + "nd|>"). [`StopMatcher`] holds back just the text that could still grow into a stop string and
//! releases it as soon as it cannot, so a client never sees any part of a stop string. It works on text only;
//! stopping on token ids (EOS) and on length belongs to the generation loop.

/// Streaming stop-string matcher: text arrives in pieces (one token's text at a time); text that may be the start
/// of a stop string is held back until it's known not to be; a stop string is never emitted, even when split
/// across tokens.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released. Between calls it is always a proper prefix of some stop string
    /// (or empty), so it stays shorter than the longest stop string.
    pending: String,
    stopped: bool,
    /// The stop string that ended generation (its index in `stops`).
    matched: Option<usize>,
}

/// What the caller may do after a piece of text arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text that is safe to emit now (possibly empty while a possible stop string is held back).
    Continue(String),
    /// A stop string was found: the text before it, which is the last text to emit; generation must end.
    Stopped(String),
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored, and with no stop strings every piece passes straight
    /// through.
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        Self { stops, pending: String::new(), stopped: false, matched: None }
    }

    /// Feeds the next piece of generated text. After [`StopOutcome::Stopped`] has been returned, every later call
    /// returns `Stopped` with empty text.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome::Stopped(String::new());
        }
        if self.stops.is_empty() {
            return StopOutcome::Continue(text.to_string());
        }
        self.pending.push_str(text);

        // The earliest match wins. A stop that is complete ends generation now, even if a longer stop starting
        // earlier might still complete with more text: generation cannot wait to find out.
        let first_match = self
            .stops
            .iter()
            .enumerate()
            .filter_map(|(i, stop)| self.pending.find(stop.as_str()).map(|at| (at, i)))
            .min();
        if let Some((at, i)) = first_match {
            self.pending.truncate(at);
            self.stopped = true;
            self.matched = Some(i);
            return StopOutcome::Stopped(std::mem::take(&mut self.pending));
        }

        let hold_from = self.start_of_possible_stop();
        let rest = self.pending.split_off(hold_from);
        StopOutcome::Continue(std::mem::replace(&mut self.pending, rest))
    }

    /// The stop string that ended generation, if one did (the earliest in the text; of two at one place, the one
    /// listed first).
    pub fn matched(&self) -> Option<&str> {
        self.matched.map(|i| self.stops[i].as_str())
    }

    /// Releases the held-back text when generation ends for another reason (EOS, length, cancellation).
    /// Returns nothing once a stop string was found.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// The byte offset of the earliest suffix of `pending` that is a proper prefix of a stop string, or
    /// `pending.len()` when there is none. Only char boundaries are considered, so the text released before it
    /// is always whole characters.
    fn start_of_possible_stop(&self) -> usize {
        let longest_stop = self.stops.iter().map(String::len).max().unwrap_or(0);
        // A suffix as long as a stop string would have matched in full above, so shorter ones are enough.
        let earliest = self.pending.len().saturating_sub(longest_stop.saturating_sub(1));
        (earliest..self.pending.len())
            .filter(|&i| self.pending.is_char_boundary(i))
            .find(|&i| {
                let suffix = &self.pending[i..];
                self.stops.iter().any(|stop| stop.starts_with(suffix))
            })
            .unwrap_or(self.pending.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_string_that_ended_generation_is_known() {
        let mut m = matcher(&["END", "EN"]);
        assert_eq!(m.matched(), None);
        assert_eq!(m.push("a E"), cont("a "));
        assert_eq!(m.push("ND"), stopped(""));
        // Both match at one place: the one listed first.
        assert_eq!(m.matched(), Some("END"));
        let mut m = matcher(&["x", "bc"]);
        assert_eq!(m.push("abcx"), stopped("a"));
        assert_eq!(m.matched(), Some("bc"));
    }

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(stops.iter().map(|s| s.to_string()).collect())
    }

    fn cont(s: &str) -> StopOutcome {
        StopOutcome::Continue(s.to_string())
    }

    fn stopped(s: &str) -> StopOutcome {
        StopOutcome::Stopped(s.to_string())
    }

    #[test]
    fn stop_string_inside_one_piece_ends_generation_with_the_text_before_it() {
        let mut m = matcher(&["###"]);
        assert_eq!(m.push("Hello"), cont("Hello"));
        assert_eq!(m.push(" world### and more"), stopped(" world"));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn stop_string_split_across_three_pieces_is_never_emitted() {
        let mut m = matcher(&["<|end|>"]);
        assert_eq!(m.push("answer <"), cont("answer "));
        assert_eq!(m.push("|en"), cont(""));
        assert_eq!(m.push("d|> trailing"), stopped(""));
    }

    #[test]
    fn held_back_prefix_is_released_when_it_turns_out_not_to_be_a_stop() {
        let mut m = matcher(&["<|end|>"]);
        assert_eq!(m.push("a <|e"), cont("a "));
        assert_eq!(m.push("xtra"), cont("<|extra"));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn held_back_text_can_restart_a_possible_stop_inside_itself() {
        // "<<" is not a prefix of "<|end|>", but its second "<" is, so exactly that one stays held.
        let mut m = matcher(&["<|end|>"]);
        assert_eq!(m.push("<"), cont(""));
        assert_eq!(m.push("<"), cont("<"));
        assert_eq!(m.push("|end|>"), stopped(""));
    }

    #[test]
    fn finish_releases_text_held_back_at_the_end_of_generation() {
        let mut m = matcher(&["STOP"]);
        assert_eq!(m.push("last words ST"), cont("last words "));
        assert_eq!(m.finish(), "ST");
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn multibyte_stop_string_split_between_characters_is_matched() {
        let mut m = matcher(&["終わり"]);
        assert_eq!(m.push("今日は終"), cont("今日は"));
        assert_eq!(m.push("わ"), cont(""));
        assert_eq!(m.push("り。"), stopped(""));
    }

    #[test]
    fn multibyte_text_is_held_and_released_as_whole_characters() {
        let mut m = matcher(&["éa"]);
        assert_eq!(m.push("café"), cont("caf"));
        assert_eq!(m.push("b"), cont("éb"));
        let mut m = matcher(&["🙂!"]);
        assert_eq!(m.push("ok 🙂"), cont("ok "));
        assert_eq!(m.finish(), "🙂");
    }

    #[test]
    fn overlapping_stops_earliest_match_wins() {
        let mut m = matcher(&["bcd", "abc"]);
        assert_eq!(m.push("xabcd"), stopped("x"));

        // A longer stop that starts first wins over a shorter one inside it.
        let mut m = matcher(&["ace", "world peace"]);
        assert_eq!(m.push("hello world pe"), cont("hello "));
        assert_eq!(m.push("ace"), stopped(""));
    }

    #[test]
    fn a_complete_stop_ends_generation_even_while_an_earlier_longer_one_is_still_possible() {
        // Generation cannot wait to see whether "abcdef" would have completed: "cd" is already complete.
        let mut m = matcher(&["abcdef", "cd"]);
        assert_eq!(m.push("ab"), cont(""));
        assert_eq!(m.push("cd"), stopped("ab"));
    }

    #[test]
    fn overlapping_stops_split_across_pieces_keep_the_longest_possible_prefix_held() {
        // "ab" could start "abX" and its "b" could start "bY": hold both until one is decided.
        let mut m = matcher(&["abX", "bY"]);
        assert_eq!(m.push("zab"), cont("z"));
        assert_eq!(m.push("Y"), stopped("a"));
    }

    #[test]
    fn no_stops_pass_text_through_with_nothing_held() {
        let mut m = matcher(&[]);
        assert_eq!(m.push("<|end|>"), cont("<|end|>"));
        assert_eq!(m.push("é"), cont("é"));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn empty_stop_strings_are_ignored() {
        let mut m = matcher(&["", "END"]);
        assert_eq!(m.push("text"), cont("text"));
        assert_eq!(m.push(" END"), stopped(" "));
    }

    #[test]
    fn pushes_after_a_stop_return_stopped_with_no_text() {
        let mut m = matcher(&["."]);
        assert_eq!(m.push("One. Two"), stopped("One"));
        assert_eq!(m.push("Three"), stopped(""));
        assert_eq!(m.finish(), "");
    }
}
