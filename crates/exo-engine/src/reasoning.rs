//! A thinking model's reasoning apart from its answer.
//!
//! Models that think before answering (Qwen 3, DeepSeek-R1 distills, QwQ) write `<think> … </think>` and then the
//! answer. [`ReasoningSplitter`] takes the generated text as it streams and hands back the reasoning and the answer
//! separately, without the tags. It follows llama-server (`common/chat-parser.cpp`, `try_parse_reasoning`):
//! reasoning is recognized only at the start of the output (a `<think>` later in the answer is the answer's text);
//! when the prompt itself ended with an open `<think>` ("thinking forced open", as DeepSeek-R1 distills' and Qwen 3's
//! templates do) the output starts inside the reasoning; the reasoning is stripped of surrounding whitespace, and so
//! is the start of the answer after `</think>`; reasoning that never closes is all reasoning.
//!
//! gpt-oss writes OpenAI's "harmony" format instead: a turn is a run of messages, each
//! `<|channel|>NAME<|message|>TEXT<|end|>`, the later ones after `<|start|>assistant`. Its reasoning is the
//! `analysis` channel's text, its answer the `final` channel's (and `commentary`'s, its preambles); the markers
//! are left out (llama.cpp renders them as text, so they reach us in the output). A message with a recipient
//! (`to=functions.NAME` in its header: a tool call) is the tool-call parser's to read: it goes to the answer from
//! the recipient on, as `to=functions.NAME …<|message|>ARGUMENTS` (see `tool_calls`).
//!
//! Owns the tags and the splitting; knows nothing of the API's fields or of which requests want the split.

use crate::chat_template::ChatTemplate;
use crate::tokenizer::Tokenizer;

/// The tag that opens the reasoning.
pub const OPEN_TAG: &str = "<think>";
/// The tag that closes it.
pub const CLOSE_TAG: &str = "</think>";

/// Harmony's markers (gpt-oss): a message's channel, its text, its end, and the next message's start.
pub const CHANNEL: &str = "<|channel|>";
pub const MESSAGE: &str = "<|message|>";
pub const END: &str = "<|end|>";
pub const START: &str = "<|start|>";
/// Harmony's marker before a message's content type (`<|constrain|>json`, in tool calls).
pub const CONSTRAIN: &str = "<|constrain|>";
/// Where a harmony header names the message's recipient (`to=functions.get_weather`): a tool call.
pub const RECIPIENT: &str = "to=";
/// The harmony channel whose messages are reasoning.
const ANALYSIS: &str = "analysis";

/// Whether a model thinks: its chat template or its vocabulary has the `<think>` tag, or it speaks harmony (its
/// vocabulary has `<|channel|>`, as gpt-oss's does).
pub fn model_thinks(template: &ChatTemplate, tokenizer: &Tokenizer) -> bool {
    template.mentions(OPEN_TAG)
        || (0..tokenizer.vocab_size() as u32)
            .any(|id| matches!(tokenizer.token_text(id), Some(t) if t == OPEN_TAG || t == CHANNEL))
}

/// Where a thinking model's output starts, and in which syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThinkStart {
    /// Outside the reasoning: the output may open one with `<think>`.
    Closed,
    /// Inside the reasoning: the prompt ended with an open `<think>`.
    Open,
    /// Harmony (gpt-oss): the prompt ended with `<|start|>assistant`, so the output is channel messages.
    Harmony,
}

impl ThinkStart {
    /// From the rendered prompt: `Harmony` when it ends with `<|start|>assistant`, `Open` when it ends with
    /// `<think>` (and whitespace).
    pub fn after_prompt(prompt: &str) -> Self {
        let end = prompt.trim_end();
        if end.ends_with(&format!("{START}assistant")) {
            ThinkStart::Harmony
        } else if end.ends_with(OPEN_TAG) {
            ThinkStart::Open
        } else {
            ThinkStart::Closed
        }
    }
}

/// The reasoning and the answer text that one piece of output (or the end of it) gave.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Split {
    pub reasoning: String,
    pub content: String,
}

impl Split {
    pub fn is_empty(&self) -> bool {
        self.reasoning.is_empty() && self.content.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace yet: a `<think>` may open the reasoning here.
    Start,
    /// In the reasoning; `started` once some of it has been given out (whitespace before that is dropped).
    Reasoning { started: bool },
    /// Just after `</think>`: whitespace is dropped until the answer starts.
    AfterReasoning,
    /// In the answer: text passes through.
    Content,
}

/// Where the splitter is in harmony output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Harmony {
    /// Before a message's text: in `<|start|>assistant<|channel|>NAME`, up to `<|message|>`.
    Header,
    /// In a message's text, up to `<|end|>`: reasoning or answer, by its channel.
    Message { reasoning: bool },
    /// The output is not harmony after all (it did not open with a header): text passes through.
    Plain,
}

/// Splits a thinking model's streamed output into reasoning and answer; tags may arrive split across pieces.
#[derive(Debug, Clone)]
pub struct ReasoningSplitter {
    state: State,
    /// Harmony output (gpt-oss) is split by its channels instead of by tags.
    harmony: Option<Harmony>,
    /// Text not given out yet: what may still turn out to be a tag, and whitespace that may turn out to be the
    /// reasoning's end.
    held: String,
}

impl ReasoningSplitter {
    pub fn new(start: ThinkStart) -> Self {
        let (state, harmony) = match start {
            ThinkStart::Closed => (State::Start, None),
            ThinkStart::Open => (State::Reasoning { started: false }, None),
            ThinkStart::Harmony => (State::Start, Some(Harmony::Header)),
        };
        Self { state, harmony, held: String::new() }
    }

    /// Takes the next piece of output; returns what of it (and of what was held before) is now known.
    pub fn push(&mut self, piece: &str) -> Split {
        self.held.push_str(piece);
        if self.harmony.is_some() {
            return self.push_harmony();
        }
        let mut out = Split::default();
        loop {
            match self.state {
                State::Start => {
                    let text = self.held.trim_start();
                    if let Some(rest) = text.strip_prefix(OPEN_TAG) {
                        self.held = rest.to_string();
                        self.state = State::Reasoning { started: false };
                    } else if OPEN_TAG.starts_with(text) {
                        // Whitespace, or the start of a `<think>`: wait for more.
                        return out;
                    } else {
                        self.state = State::Content;
                    }
                }
                State::Reasoning { started } => {
                    if let Some(end) = self.held.find(CLOSE_TAG) {
                        let reasoning = self.held[..end].trim_end();
                        out.reasoning.push_str(if started { reasoning } else { reasoning.trim_start() });
                        self.held.drain(..end + CLOSE_TAG.len());
                        self.state = State::AfterReasoning;
                        continue;
                    }
                    let known = hold_from(&self.held);
                    let text = &self.held[..known];
                    let text = if started { text } else { text.trim_start() };
                    out.reasoning.push_str(text);
                    self.state = State::Reasoning { started: started || !text.is_empty() };
                    self.held.drain(..known);
                    return out;
                }
                State::AfterReasoning => {
                    let answer = self.held.trim_start();
                    if answer.is_empty() {
                        self.held.clear();
                        return out;
                    }
                    self.held = answer.to_string();
                    self.state = State::Content;
                }
                State::Content => {
                    out.content.push_str(&self.held);
                    self.held.clear();
                    return out;
                }
            }
        }
    }

    /// [`ReasoningSplitter::push`] for harmony: messages' texts by channel, the markers dropped.
    fn push_harmony(&mut self) -> Split {
        let mut out = Split::default();
        loop {
            match self.harmony {
                Some(Harmony::Header) => {
                    let Some(at) = self.held.find(MESSAGE) else {
                        // A header is markers, a channel name and perhaps a recipient (after the role, which the
                        // prompt wrote): anything else means this is not harmony.
                        let header = self.held.trim_start();
                        let looks_like_one =
                            [START, CHANNEL, RECIPIENT].iter().any(|m| header.starts_with(m) || m.starts_with(header));
                        if !looks_like_one {
                            self.harmony = Some(Harmony::Plain);
                            continue;
                        }
                        return out;
                    };
                    let header = &self.held[..at];
                    if let Some(to) = header.find(RECIPIENT) {
                        // A tool call: its recipient and arguments go to the answer, for the call parser.
                        out.content.push_str(&header[to..]);
                        out.content.push_str(MESSAGE);
                        self.harmony = Some(Harmony::Message { reasoning: false });
                        self.held.drain(..at + MESSAGE.len());
                        continue;
                    }
                    let channel = header
                        .rsplit_once(CHANNEL)
                        .map(|(_, c)| c.split(|c: char| c.is_whitespace() || c == '<').next().unwrap_or(""));
                    self.harmony = Some(Harmony::Message { reasoning: channel == Some(ANALYSIS) });
                    self.held.drain(..at + MESSAGE.len());
                }
                Some(Harmony::Message { reasoning }) => {
                    let into = if reasoning { &mut out.reasoning } else { &mut out.content };
                    // A message ends at `<|end|>`, or (should the model leave that out) where the next begins.
                    let end = [END, START, CHANNEL].iter().filter_map(|m| self.held.find(m).map(|at| (at, *m))).min();
                    if let Some((at, marker)) = end {
                        into.push_str(&self.held[..at]);
                        let skip = if marker == END { at + END.len() } else { at };
                        self.held.drain(..skip);
                        self.harmony = Some(Harmony::Header);
                        continue;
                    }
                    let known = harmony_hold_from(&self.held);
                    into.push_str(&self.held[..known]);
                    self.held.drain(..known);
                    return out;
                }
                Some(Harmony::Plain) | None => {
                    out.content.push_str(&self.held);
                    self.held.clear();
                    return out;
                }
            }
        }
    }

    /// The end of the output: what was held back is given out (a partial tag as the text it is; whitespace at the
    /// reasoning's end dropped).
    pub fn finish(&mut self) -> Split {
        let held = std::mem::take(&mut self.held);
        let mut out = Split::default();
        match self.harmony {
            // A header cut short says nothing.
            Some(Harmony::Header) => return out,
            Some(Harmony::Message { reasoning: true }) => {
                out.reasoning = held;
                return out;
            }
            Some(Harmony::Message { reasoning: false } | Harmony::Plain) => {
                out.content = held;
                return out;
            }
            None => {}
        }
        match self.state {
            State::Start | State::Content => out.content = held,
            State::Reasoning { started } => {
                let text = held.trim_end();
                out.reasoning = (if started { text } else { text.trim_start() }).to_string();
            }
            State::AfterReasoning => {}
        }
        out
    }
}

/// Where the text that must be held back starts in `text` (in the reasoning): a tail that may be the start of
/// `</think>`, and the whitespace before it, which is dropped if the tag follows.
fn hold_from(text: &str) -> usize {
    let partial = (1..CLOSE_TAG.len())
        .rev()
        .filter(|&n| n <= text.len())
        .map(|n| text.len() - n)
        .find(|&at| text.is_char_boundary(at) && CLOSE_TAG.starts_with(&text[at..]))
        .unwrap_or(text.len());
    text[..partial].trim_end().len()
}

/// Where the text to hold back starts in a harmony message's `text`: a tail that may be the start of a marker.
fn harmony_hold_from(text: &str) -> usize {
    let longest = [END, START, CHANNEL].iter().map(|m| m.len()).max().unwrap_or(0);
    (1..longest)
        .rev()
        .filter(|&n| n <= text.len())
        .map(|n| text.len() - n)
        .find(|&at| text.is_char_boundary(at) && [END, START, CHANNEL].iter().any(|m| m.starts_with(&text[at..])))
        .unwrap_or(text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All of `pieces` through a splitter that starts at `start`, and its end: (reasoning, content).
    fn split(start: ThinkStart, pieces: &[&str]) -> (String, String) {
        let mut s = ReasoningSplitter::new(start);
        let mut all = Split::default();
        for piece in pieces {
            let out = s.push(piece);
            all.reasoning.push_str(&out.reasoning);
            all.content.push_str(&out.content);
        }
        let end = s.finish();
        all.reasoning.push_str(&end.reasoning);
        all.content.push_str(&end.content);
        (all.reasoning, all.content)
    }

    fn pair(reasoning: &str, content: &str) -> (String, String) {
        (reasoning.to_string(), content.to_string())
    }

    #[test]
    fn reasoning_and_answer_come_apart_without_the_tags() {
        let got = split(ThinkStart::Closed, &["<think>\nLet me think.\n</think>\n\nParis."]);
        assert_eq!(got, pair("Let me think.", "Paris."));
    }

    #[test]
    fn tags_split_across_pieces_are_recognized() {
        let pieces = ["<th", "ink>", "Hmm", ", Fr", "ance.", "</", "thi", "nk", ">", "\n", "\n", "Paris", "."];
        assert_eq!(split(ThinkStart::Closed, &pieces), pair("Hmm, France.", "Paris."));
        // Every cut of one text gives the same split.
        let text = "<think>\n2 + 2 < 5, so </thin is not it.\n</think>\n\n4 <think> stays.";
        for cut in 0..=text.len() {
            let got = split(ThinkStart::Closed, &[&text[..cut], &text[cut..]]);
            assert_eq!(got, pair("2 + 2 < 5, so </thin is not it.", "4 <think> stays."), "cut at {cut}");
        }
    }

    #[test]
    fn held_text_is_given_out_once_it_cannot_be_a_tag() {
        let mut s = ReasoningSplitter::new(ThinkStart::Open);
        assert_eq!(s.push("a </t").reasoning, "a");
        assert_eq!(s.push("able>").reasoning, " </table>");
        let mut s = ReasoningSplitter::new(ThinkStart::Closed);
        assert!(s.push("<thi").is_empty());
        assert_eq!(s.push("s"), Split { reasoning: String::new(), content: "<this".into() });
    }

    #[test]
    fn a_prompt_ending_in_an_open_think_starts_in_the_reasoning() {
        assert_eq!(ThinkStart::after_prompt("<|im_start|>assistant\n<think>\n"), ThinkStart::Open);
        assert_eq!(ThinkStart::after_prompt("<|im_start|>assistant\n"), ThinkStart::Closed);
        // Qwen 3 with thinking turned off writes an empty reasoning into the prompt.
        assert_eq!(ThinkStart::after_prompt("assistant\n<think>\n\n</think>\n\n"), ThinkStart::Closed);
        let got = split(ThinkStart::Open, &["Okay, the user", " asks.", "\n</think>", "\n\n", "Hello", "!"]);
        assert_eq!(got, pair("Okay, the user asks.", "Hello!"));
    }

    #[test]
    fn output_without_tags_is_all_answer() {
        assert_eq!(split(ThinkStart::Closed, &["Paris", " is", " the capital."]), pair("", "Paris is the capital."));
        assert_eq!(split(ThinkStart::Closed, &["  <b>bold</b>"]), pair("", "  <b>bold</b>"));
        // A partial tag still held at the end is text.
        assert_eq!(split(ThinkStart::Closed, &["<thi"]), pair("", "<thi"));
    }

    #[test]
    fn an_unterminated_think_is_all_reasoning() {
        assert_eq!(
            split(ThinkStart::Closed, &["<think>", "Still thinking", " about it </thi"]),
            pair("Still thinking about it </thi", "")
        );
        assert_eq!(split(ThinkStart::Open, &["\nStill", " thinking \n"]), pair("Still thinking", ""));
    }

    /// gpt-oss's output as llama.cpp renders it: the analysis channel is the reasoning, the final channel the
    /// answer, the markers gone, however the text is cut into pieces.
    #[test]
    fn harmony_channels_split_into_reasoning_and_answer() {
        let text = "<|channel|>analysis<|message|>User asks 2+2. <b>Easy</b>.<|end|>\
                    <|start|>assistant<|channel|>final<|message|>2 + 2 = 4, <|not a marker.";
        let want = pair("User asks 2+2. <b>Easy</b>.", "2 + 2 = 4, <|not a marker.");
        for cut in 0..=text.len() {
            if text.is_char_boundary(cut) {
                assert_eq!(split(ThinkStart::Harmony, &[&text[..cut], &text[cut..]]), want, "cut at {cut}");
            }
        }
        // Token by token, as the markers come (each is one token).
        let pieces = ["<|channel|>", "analysis", "<|message|>", "Think", "ing", "<|end|>", "<|start|>", "assistant"];
        let rest = ["<|channel|>", "final", "<|message|>", "Hi", "!"];
        assert_eq!(split(ThinkStart::Harmony, &[&pieces[..], &rest[..]].concat()), pair("Thinking", "Hi!"));
        // A preamble on the commentary channel is answer text.
        let preamble = "<|channel|>commentary<|message|>Checking the weather.<|end|>";
        assert_eq!(split(ThinkStart::Harmony, &[preamble]), pair("", "Checking the weather."));
        // A tool call (a header naming a recipient, on the channel or on the role) reaches the answer from the
        // recipient on, for the tool-call parser.
        let call = "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant\
                    <|channel|>commentary to=functions.get <|constrain|>json<|message|>{\"a\":1}";
        for cut in (0..=call.len()).filter(|&c| call.is_char_boundary(c)) {
            assert_eq!(
                split(ThinkStart::Harmony, &[&call[..cut], &call[cut..]]),
                pair("Need weather.", "to=functions.get <|constrain|>json<|message|>{\"a\":1}"),
                "cut at {cut}"
            );
        }
        let on_role = " to=functions.get<|channel|>commentary json<|message|>{}";
        assert_eq!(
            split(ThinkStart::Harmony, &[on_role]),
            pair("", "to=functions.get<|channel|>commentary json<|message|>{}")
        );
    }

    #[test]
    fn harmony_output_cut_short_or_not_harmony_at_all() {
        // Stopped (max_tokens) inside the reasoning: all of it is reasoning.
        assert_eq!(split(ThinkStart::Harmony, &["<|channel|>analysis<|message|>Still <|"]), pair("Still <|", ""));
        // Stopped inside a header: nothing to show.
        assert_eq!(
            split(ThinkStart::Harmony, &["<|channel|>analysis<|message|>A.<|end|><|start|>assis"]),
            pair("A.", "")
        );
        // Output that opens with text, not a header, is all answer.
        assert_eq!(split(ThinkStart::Harmony, &["Hello", " <|channel|> there"]), pair("", "Hello <|channel|> there"));
        assert_eq!(
            ThinkStart::after_prompt("<|start|>user<|message|>Hi<|end|><|start|>assistant"),
            ThinkStart::Harmony
        );
    }

    #[test]
    fn an_empty_reasoning_gives_only_the_answer() {
        assert_eq!(split(ThinkStart::Closed, &["<think>\n\n</think>\n\n", "Hi."]), pair("", "Hi."));
    }

    /// A vocabulary of `tokens`, the last two user-defined (as `<think>` and `</think>` are in Qwen 3's).
    fn vocabulary(tokens: &[&str]) -> Tokenizer {
        use crate::gguf::Value;
        let strings = |items: &[&str]| Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect());
        let types = (0..tokens.len()).map(|i| Value::I32(if i + 2 >= tokens.len() { 4 } else { 1 })).collect();
        let meta = [
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.tokens", strings(tokens)),
            ("tokenizer.ggml.token_type", Value::Array(types)),
            ("tokenizer.ggml.merges", strings(&[])),
        ];
        Tokenizer::from_metadata(&meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            .expect("vocabulary builds")
    }

    #[test]
    fn a_model_thinks_when_its_template_or_vocabulary_has_the_tag() {
        let plain_vocabulary = vocabulary(&["a", "b", "<tool>", "</tool>"]);
        let thinking_vocabulary = vocabulary(&["a", "b", "<think>", "</think>"]);
        let chatml = ChatTemplate::new(None, "<s>", "</s>").unwrap();
        let thinking_template =
            ChatTemplate::new(Some("{{ '<|im_start|>assistant\\n<think>\\n' }}"), "<s>", "</s>").unwrap();
        assert!(!model_thinks(&chatml, &plain_vocabulary));
        assert!(model_thinks(&chatml, &thinking_vocabulary));
        assert!(model_thinks(&thinking_template, &plain_vocabulary));
    }
}
