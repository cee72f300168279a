//! Tool calls in a model's own words: how the tools reach the prompt, the grammar that makes a call parse, and the
//! parser that reads calls back out of the output as it streams.
//!
//! The format is Hermes's (Qwen 2.5 and 3, Hermes 2 and 3, and the many fine-tunes that copy them): the assistant
//! writes `<tool_call>`, a JSON object `{"name": ..., "arguments": {...}}` and `</tool_call>`, once per call.
//! A template that writes `<tool_call>` itself is given the tools and the history's calls and results as
//! transformers gives them; any other template gets the tools listed in a system message that asks for that format,
//! the history's calls written out as the model would have written them and the results as user turns.
//!
//! [`grammar`] constrains the output: with [`ToolChoice::Auto`] text may come first and is free until
//! `<tool_call>` appears (a lazy grammar: prose costs little), and from there only a call to a listed tool whose
//! arguments match its parameters' schema may follow; with `Required` or a named tool the output is calls from
//! the first token. [`ToolCallParser`] turns the output into text and calls, holding back text that may be the
//! start of `<tool_call>` until it knows, and streaming a call's arguments as they come.
//!
//! Owns the format; knows nothing of the API's field names or of ids.

use serde_json::{json, Value};

use crate::chat_template::{ChatMessage, ChatPrompt, ChatTemplate};
use crate::constraint::{Grammar, JSON_WHITESPACE};
use crate::error::Result;

/// What opens a call.
pub const OPEN: &str = "<tool_call>";
/// What closes it.
pub const CLOSE: &str = "</tool_call>";

/// A tool the model may call: a function with a JSON schema for its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// The arguments' JSON schema (`{"type": "object"}` when the tool gave none).
    pub parameters: Value,
}

impl Tool {
    /// The tool as templates and the API list it: `{"type": "function", "function": {...}}`.
    pub fn to_json(&self) -> Value {
        let mut function = json!({"name": self.name});
        if let Some(d) = &self.description {
            function["description"] = json!(d);
        }
        function["parameters"] = self.parameters.clone();
        json!({"type": "function", "function": function})
    }
}

/// Whether and which tools the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// Text, calls, or both, as the model decides.
    Auto,
    /// At least one call, of any listed tool.
    Required,
    /// A call of this tool.
    Named(String),
}

/// What a request offers the model: its tools, the choice, and whether it may call several at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
    pub parallel: bool,
}

/// Whether `template` presents tools and calls in this format itself.
pub fn template_takes_tools(template: &ChatTemplate) -> bool {
    template.mentions(OPEN) && template.mentions("tools")
}

/// The prompt for `messages` with `tools` offered, through the template where it takes tools, otherwise through a
/// system message and the history written out (see the module's documentation).
pub fn prompt(template: &ChatTemplate, messages: &[ChatMessage], tools: &Tools) -> Result<ChatPrompt> {
    if template_takes_tools(template) {
        let list = Value::Array(tools.tools.iter().map(Tool::to_json).collect());
        return template.prompt_with_tools(messages, Some(&list));
    }
    let mut written = written_out(messages);
    let listing = system_text(&tools.tools);
    match written.first_mut() {
        Some(first) if first.role == "system" => first.content = format!("{}\n\n{listing}", first.content),
        _ => written.insert(0, ChatMessage::new("system", listing)),
    }
    template.prompt(&written)
}

/// The system message that offers `tools` to a model whose template does not.
fn system_text(tools: &[Tool]) -> String {
    let mut text = String::from(
        "# Tools\n\nYou can call these functions, each described by a JSON schema of its arguments:\n<tools>\n",
    );
    for t in tools {
        text.push_str(&t.to_json().to_string());
        text.push('\n');
    }
    text.push_str(
        "</tools>\n\nTo call one, answer with its name and arguments as a JSON object inside <tool_call></tool_call> \
         tags, one call per pair of tags:\n<tool_call>\n{\"name\": \"function name\", \"arguments\": {\"argument\": \
         \"value\"}}\n</tool_call>",
    );
    text
}

/// `messages` for a template that knows no tools: an assistant's calls written after its text as the model writes
/// them, and tool results as user turns (consecutive results in one), each inside `<tool_response>` tags.
fn written_out(messages: &[ChatMessage]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len());
    let mut last_was_result = false;
    for m in messages {
        if m.role == "tool" {
            let response = format!("<tool_response>\n{}\n</tool_response>", m.content);
            match out.last_mut() {
                Some(previous) if last_was_result => {
                    previous.content.push('\n');
                    previous.content.push_str(&response);
                }
                _ => out.push(ChatMessage::new("user", response)),
            }
            last_was_result = true;
            continue;
        }
        last_was_result = false;
        let mut content = m.content.clone();
        for call in &m.tool_calls {
            if !content.is_empty() {
                content.push('\n');
            }
            let body = json!({"name": call.name, "arguments": call.arguments});
            content.push_str(&format!("{OPEN}\n{body}\n{CLOSE}"));
        }
        out.push(ChatMessage::new(m.role.clone(), content));
    }
    out
}

/// The grammar the output must follow when `tools` are offered (see the module's documentation). Its schemas are
/// the tools' own, so one the constraint cannot express fails when the grammar is compiled.
pub fn grammar(tools: &Tools) -> Grammar {
    let offered: Vec<&Tool> = match &tools.choice {
        ToolChoice::Named(name) => tools.tools.iter().filter(|t| &t.name == name).collect(),
        _ => tools.tools.iter().collect(),
    };
    let variants: Vec<Value> = offered
        .iter()
        .map(|t| {
            json!({
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                "required": ["name", "arguments"],
                "additionalProperties": false
            })
        })
        .collect();
    let mut schema = match <[Value; 1]>::try_from(variants) {
        Ok([one]) => one,
        Err(all) => json!({"anyOf": all}),
    };
    schema["x-guidance"] = json!({ "whitespace_pattern": JSON_WHITESPACE });
    // A named function is one call to it; otherwise as many as parallel calls allow.
    let more = match tools.choice {
        ToolChoice::Named(_) => String::new(),
        _ if tools.parallel => format!("(NL* {} call)*", lark_string(OPEN)),
        _ => String::new(),
    };
    let start = match tools.choice {
        ToolChoice::Auto => format!("start: TEXT | opening call {more}"),
        ToolChoice::Required | ToolChoice::Named(_) => format!("start: {} call {more}", lark_string(OPEN)),
    };
    Grammar::lark(format!(
        "{start}\n\
         TEXT: /(?s:.+)/ & ~/(?s:.*{open}.*)/\n\
         opening[lazy]: /(?s:.*){open}/\n\
         call: NL? %json {schema} NL? {close}\n\
         NL: /\\n/\n",
        open = regex_literal(OPEN),
        close = lark_string(CLOSE),
    ))
}

/// `text` as a Lark string literal.
fn lark_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// `text` as a regex that matches it literally.
fn regex_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What the output holds, piece by piece, as [`ToolCallParser`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolEvent {
    /// Text for the answer's content.
    Text(String),
    /// Call `index` (from 0) begins: the tool's name.
    Call { index: usize, name: String },
    /// More of call `index`'s arguments (JSON text; all of one call's fragments make its arguments' JSON).
    Arguments { index: usize, json: String },
}

/// Where the parser is in the output.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// In text; `pending` may be the start of `<tool_call>`.
    Text,
    /// After `<tool_call>`, before the arguments: `pending` is the call so far.
    Header,
    /// Inside the arguments' value.
    Arguments(ValueScan),
    /// After the arguments, until `</tool_call>`.
    Tail,
    /// A call not in the usual shape (keys in another order): kept whole until `</tool_call>`.
    Whole,
    /// After a call: whitespace is dropped; a new call or text may follow.
    Between,
}

/// Reads text and calls out of a model's output as it streams. Feed it every piece of text with
/// [`ToolCallParser::push`], then call [`ToolCallParser::finish`].
#[derive(Debug, Clone)]
pub struct ToolCallParser {
    state: State,
    pending: String,
    calls: usize,
}

impl Default for ToolCallParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ToolCallParser {
    pub fn new() -> Self {
        Self { state: State::Text, pending: String::new(), calls: 0 }
    }

    /// Calls begun so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// The next piece of output: what of it is now known.
    pub fn push(&mut self, text: &str) -> Vec<ToolEvent> {
        self.pending.push_str(text);
        let mut events = Vec::new();
        while self.step(&mut events) {}
        events
    }

    /// The end of the output: what was held back. A call cut off before its arguments began is text; one cut off
    /// inside its arguments has had them as far as they went.
    pub fn finish(&mut self) -> Vec<ToolEvent> {
        let mut events = Vec::new();
        let rest = std::mem::take(&mut self.pending);
        match self.state {
            State::Text if !rest.is_empty() => events.push(ToolEvent::Text(rest)),
            State::Header | State::Whole => events.push(ToolEvent::Text(format!("{OPEN}{rest}"))),
            // Whitespace after the last call is dropped; the start of a call that never came is text.
            State::Between if !rest.trim().is_empty() => events.push(ToolEvent::Text(rest)),
            _ => {}
        }
        self.state = State::Text;
        events
    }

    /// Makes what progress `pending` allows; false when it needs more text.
    fn step(&mut self, events: &mut Vec<ToolEvent>) -> bool {
        match &mut self.state {
            State::Text => {
                if let Some(at) = self.pending.find(OPEN) {
                    if at > 0 {
                        events.push(ToolEvent::Text(self.pending[..at].to_string()));
                    }
                    self.pending.drain(..at + OPEN.len());
                    self.state = State::Header;
                    return true;
                }
                // Keep back what may be the start of `<tool_call>`.
                let keep = partial_suffix(&self.pending, OPEN);
                let sure = self.pending.len() - keep;
                if sure > 0 {
                    events.push(ToolEvent::Text(self.pending[..sure].to_string()));
                    self.pending.drain(..sure);
                }
                false
            }
            State::Header => match header(&self.pending) {
                Header::NeedMore => false,
                Header::Other => {
                    self.state = State::Whole;
                    true
                }
                Header::Found { name, value_at } => {
                    events.push(ToolEvent::Call { index: self.calls, name });
                    self.calls += 1;
                    self.pending.drain(..value_at);
                    self.state = State::Arguments(ValueScan::default());
                    true
                }
            },
            State::Arguments(scan) => {
                let end = scan.feed(&self.pending);
                let index = self.calls - 1;
                let taken = end.unwrap_or(self.pending.len());
                if taken > 0 {
                    events.push(ToolEvent::Arguments { index, json: self.pending[..taken].to_string() });
                    self.pending.drain(..taken);
                }
                if end.is_some() {
                    self.state = State::Tail;
                    return true;
                }
                false
            }
            State::Tail => match self.pending.find(CLOSE) {
                Some(at) => {
                    self.pending.drain(..at + CLOSE.len());
                    self.state = State::Between;
                    true
                }
                None => false,
            },
            State::Whole => {
                let Some(at) = self.pending.find(CLOSE) else { return false };
                let body: String = self.pending.drain(..at + CLOSE.len()).take(at).collect();
                match whole_call(&body) {
                    Some((name, arguments)) => {
                        events.push(ToolEvent::Call { index: self.calls, name });
                        events.push(ToolEvent::Arguments { index: self.calls, json: arguments });
                        self.calls += 1;
                    }
                    // Not a call after all: nothing is lost.
                    None => events.push(ToolEvent::Text(format!("{OPEN}{body}{CLOSE}"))),
                }
                self.state = State::Between;
                true
            }
            State::Between => {
                let trimmed = self.pending.trim_start();
                if trimmed.starts_with(OPEN) {
                    let dropped = self.pending.len() - trimmed.len() + OPEN.len();
                    self.pending.drain(..dropped);
                    self.state = State::Header;
                    return true;
                }
                if OPEN.starts_with(trimmed) {
                    // Whitespace, or what may be the next call's start.
                    return false;
                }
                self.state = State::Text;
                true
            }
        }
    }
}

/// How long a suffix of `text` is a proper prefix of `tag`.
fn partial_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

/// What the start of a call says so far.
#[derive(Debug, PartialEq, Eq)]
enum Header {
    /// It may still become `{"name": "...", "arguments":`.
    NeedMore,
    /// It is that: the name, and where the arguments' value begins.
    Found { name: String, value_at: usize },
    /// It is something else.
    Other,
}

/// Reads `{"name": "<name>", "arguments": ` (whitespace allowed between the parts) at the start of `text`.
fn header(text: &str) -> Header {
    let mut at = 0;
    let skip_ws = |at: &mut usize| {
        while text[*at..].starts_with([' ', '\n', '\r', '\t']) {
            *at += 1;
        }
    };
    // Each literal in turn: all of it, or the end of the text inside it.
    let literal = |at: &mut usize, lit: &str| -> Option<Header> {
        skip_ws(at);
        let rest = &text[*at..];
        if rest.starts_with(lit) {
            *at += lit.len();
            None
        } else if lit.starts_with(rest) {
            Some(Header::NeedMore)
        } else {
            Some(Header::Other)
        }
    };
    for lit in ["{", "\"name\"", ":"] {
        if let Some(h) = literal(&mut at, lit) {
            return h;
        }
    }
    skip_ws(&mut at);
    let rest = &text[at..];
    if rest.is_empty() {
        return Header::NeedMore;
    }
    if !rest.starts_with('"') {
        return Header::Other;
    }
    let Some(len) = string_len(rest) else { return Header::NeedMore };
    let Ok(name) = serde_json::from_str::<String>(&rest[..len]) else { return Header::Other };
    at += len;
    for lit in [",", "\"arguments\"", ":"] {
        if let Some(h) = literal(&mut at, lit) {
            return h;
        }
    }
    skip_ws(&mut at);
    if at == text.len() {
        return Header::NeedMore;
    }
    Header::Found { name, value_at: at }
}

/// The length of the JSON string literal at the start of `text` (quotes included), if it is complete.
fn string_len(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// A call's name and arguments (as JSON text) from its whole body, whatever the keys' order; `arguments` may be
/// an object or a string holding one, and `parameters` is taken for it (Llama's word).
fn whole_call(body: &str) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        Some(Value::String(s)) => s.clone(),
        Some(a) => a.to_string(),
        None => "{}".to_string(),
    };
    Some((name, arguments))
}

/// Follows one JSON value through the text as it streams, to find where it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ValueScan {
    depth: usize,
    in_string: bool,
    escaped: bool,
    started: bool,
    /// A number, `true`, `false` or `null` at the top level.
    scalar: bool,
}

impl ValueScan {
    /// Reads `text` (the continuation of what it read before); the length of it that completes the value, if it
    /// does.
    fn feed(&mut self, text: &str) -> Option<usize> {
        for (i, c) in text.char_indices() {
            let end = i + c.len_utf8();
            if self.in_string {
                match c {
                    _ if self.escaped => self.escaped = false,
                    '\\' => self.escaped = true,
                    '"' => {
                        self.in_string = false;
                        if self.depth == 0 {
                            return Some(end);
                        }
                    }
                    _ => {}
                }
                continue;
            }
            if self.scalar {
                if matches!(c, ',' | '}' | ']' | ' ' | '\n' | '\r' | '\t') {
                    return Some(i);
                }
                continue;
            }
            match c {
                '{' | '[' => {
                    self.depth += 1;
                    self.started = true;
                }
                '}' | ']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Some(end);
                    }
                }
                '"' => {
                    self.in_string = true;
                    self.started = true;
                }
                ' ' | '\n' | '\r' | '\t' => {}
                _ if !self.started => {
                    self.scalar = true;
                    self.started = true;
                }
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat_template::ToolCall;
    use crate::constraint::tests::smollm;
    use crate::constraint::Vocabulary;
    use crate::tokenizer::Tokenizer;

    fn weather() -> Tool {
        Tool {
            name: "get_weather".into(),
            description: Some("The weather in a city.".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}),
        }
    }

    fn time() -> Tool {
        Tool { name: "get_time".into(), description: None, parameters: json!({"type": "object", "properties": {}}) }
    }

    fn tools(choice: ToolChoice, parallel: bool) -> Tools {
        Tools { tools: vec![weather(), time()], choice, parallel }
    }

    /// Everything `pieces` give, one push each, then the finish.
    fn parse(pieces: &[&str]) -> Vec<ToolEvent> {
        let mut p = ToolCallParser::new();
        let mut events: Vec<ToolEvent> = pieces.iter().flat_map(|t| p.push(t)).collect();
        events.extend(p.finish());
        events
    }

    /// Events with consecutive texts and consecutive arguments of one call joined.
    fn joined(events: Vec<ToolEvent>) -> Vec<ToolEvent> {
        let mut out: Vec<ToolEvent> = Vec::new();
        for e in events {
            match (out.last_mut(), e) {
                (Some(ToolEvent::Text(a)), ToolEvent::Text(b)) => a.push_str(&b),
                (Some(ToolEvent::Arguments { index: i, json: a }), ToolEvent::Arguments { index: j, json: b })
                    if *i == j =>
                {
                    a.push_str(&b)
                }
                (_, e) => out.push(e),
            }
        }
        out
    }

    fn text(s: &str) -> ToolEvent {
        ToolEvent::Text(s.into())
    }

    fn call(index: usize, name: &str) -> ToolEvent {
        ToolEvent::Call { index, name: name.into() }
    }

    fn args(index: usize, json: &str) -> ToolEvent {
        ToolEvent::Arguments { index, json: json.into() }
    }

    #[test]
    fn calls_come_apart_from_text_in_any_split_of_the_output() {
        let output = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris \\\"}\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
        let expected = vec![
            text("Let me check.\n"),
            call(0, "get_weather"),
            args(0, "{\"city\": \"Paris \\\"}\"}"),
            call(1, "get_time"),
            args(1, "{}"),
        ];
        assert_eq!(joined(parse(&[output])), expected);
        // Byte by byte (at character boundaries) and in every two-piece split: the same.
        let chars: Vec<String> = output.chars().map(String::from).collect();
        assert_eq!(joined(parse(&chars.iter().map(String::as_str).collect::<Vec<_>>())), expected);
        for cut in (1..output.len()).filter(|&i| output.is_char_boundary(i)) {
            assert_eq!(joined(parse(&[&output[..cut], &output[cut..]])), expected, "cut at {cut}");
        }
    }

    #[test]
    fn text_that_may_open_a_call_is_held_back_until_it_is_known() {
        let mut p = ToolCallParser::new();
        assert_eq!(p.push("Hi <tool"), vec![text("Hi ")]);
        assert_eq!(p.push("box> there"), vec![text("<toolbox> there")]);
        assert_eq!(p.push(" <"), vec![text(" ")]);
        assert_eq!(p.finish(), vec![text("<")]);
        assert_eq!(p.calls(), 0);
        // The arguments stream as they come, before the call closes.
        let mut p = ToolCallParser::new();
        assert_eq!(p.push("<tool_call>{\"name\": \"get_time\", \"argu"), vec![]);
        assert_eq!(p.push("ments\": {\"a\": [1, "), vec![call(0, "get_time"), args(0, "{\"a\": [1, ")]);
        assert_eq!(p.push("2]}}\n</tool_call>"), vec![args(0, "2]}")]);
        assert_eq!(p.calls(), 1);
    }

    #[test]
    fn calls_in_another_shape_or_cut_short_lose_nothing() {
        // Keys the other way round, and arguments as a string: read whole at the close.
        let out = parse(&["<tool_call>{\"arguments\": \"{\\\"x\\\": 1}\", \"name\": \"f\"}</tool_call>"]);
        assert_eq!(joined(out), vec![call(0, "f"), args(0, "{\"x\": 1}")]);
        // Not a call at all: its text comes back as it was.
        assert_eq!(
            joined(parse(&["a <tool_call>not json</tool_call> b"])),
            vec![text("a <tool_call>not json</tool_call> b")]
        );
        // Cut inside the header: text. Cut inside the arguments: the call with what came.
        assert_eq!(joined(parse(&["<tool_call>{\"name\": \"ge"])), vec![text("<tool_call>{\"name\": \"ge")]);
        assert_eq!(
            joined(parse(&["<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": \"ab"])),
            vec![call(0, "f"), args(0, "{\"x\": \"ab")]
        );
    }

    #[test]
    fn a_template_without_tools_gets_them_in_a_system_message_and_the_history_written_out() {
        let t = ChatTemplate::new(None, "<s>", "</s>").unwrap(); // ChatML, which knows no tools
        assert!(!template_takes_tools(&t));
        let call = ToolCall { id: "call_1".into(), name: "get_weather".into(), arguments: json!({"city": "Paris"}) };
        let messages = vec![
            ChatMessage::new("user", "Weather in Paris?"),
            ChatMessage { tool_calls: vec![call], ..ChatMessage::new("assistant", "") },
            ChatMessage { tool_call_id: Some("call_1".into()), ..ChatMessage::new("tool", "18 C") },
        ];
        let p = prompt(&t, &messages, &tools(ToolChoice::Auto, true)).unwrap();
        let expected_call = "<|im_start|>assistant\n<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}\n</tool_call><|im_end|>\n";
        assert!(p.text.starts_with("<|im_start|>system\n# Tools\n"), "{}", p.text);
        assert!(p.text.contains("{\"type\":\"function\",\"function\":{\"name\":\"get_weather\""), "{}", p.text);
        assert!(p.text.contains(expected_call), "{}", p.text);
        assert!(
            p.text.ends_with(
                "<|im_start|>user\n<tool_response>\n18 C\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
            ),
            "{}",
            p.text
        );
    }

    #[test]
    fn a_template_that_takes_tools_renders_them_and_the_calls_itself() {
        // A Hermes-style template of our own: tools in the system turn, calls and results in its own tags.
        let source = "{%- if tools %}<|im_start|>system\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}<tool_call> format<|im_end|>\n{% endif %}\
            {%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}\
            {%- for c in m.tool_calls | default([]) %}<tool_call>{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}</tool_call>{% endfor %}\
            {%- if m.tool_call_id is defined %} ({{ m.tool_call_id }}){% endif %}<|im_end|>\n{% endfor %}<|im_start|>assistant\n";
        let t = ChatTemplate::new(Some(source), "", "").unwrap();
        assert!(template_takes_tools(&t));
        let call = ToolCall { id: "c1".into(), name: "get_time".into(), arguments: json!({}) };
        let messages = vec![
            ChatMessage::new("user", "Time?"),
            ChatMessage { tool_calls: vec![call], ..ChatMessage::new("assistant", "") },
            ChatMessage { tool_call_id: Some("c1".into()), ..ChatMessage::new("tool", "noon") },
        ];
        let p =
            prompt(&t, &messages, &Tools { tools: vec![time()], choice: ToolChoice::Auto, parallel: false }).unwrap();
        assert_eq!(
            p.text,
            "<|im_start|>system\n{\"type\": \"function\", \"function\": {\"name\": \"get_time\", \"parameters\": {\"type\": \"object\", \"properties\": {}}}}\n<tool_call> format<|im_end|>\n\
             <|im_start|>user\nTime?<|im_end|>\n<|im_start|>assistant\n<tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call><|im_end|>\n\
             <|im_start|>tool\nnoon (c1)<|im_end|>\n<|im_start|>assistant"
        );
    }

    /// Whether the constraint accepts `text`, token by token as the tokenizer splits it, and then the end.
    fn accepts(v: &Vocabulary, t: &Tokenizer, grammar: &Grammar, text: &str) -> bool {
        let mut c = v.constrain(grammar).unwrap();
        for id in t.encode(text, false, false).unwrap() {
            let allowed = c.allowed().map(|m| m.is_allowed(id)).unwrap_or(false);
            if !allowed || c.accept(id).is_err() {
                return false;
            }
        }
        c.allowed().is_ok_and(|m| m.is_allowed(t.eos_id().unwrap()))
    }

    #[test]
    fn the_grammar_lets_only_calls_to_listed_tools_with_valid_arguments_through() {
        let t = smollm();
        let v = Vocabulary::new(&t).unwrap();
        let good = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>";
        let auto = grammar(&tools(ToolChoice::Auto, false));
        assert!(accepts(&v, &t, &auto, good));
        assert!(accepts(&v, &t, &auto, "Paris is sunny today."), "auto: text alone");
        assert!(accepts(&v, &t, &auto, &format!("Checking.\n{good}")), "auto: text, then a call");
        for bad in [
            "<tool_call>\n{\"name\": \"get_wether\", \"arguments\": {}}\n</tool_call>",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"unit\": \"celsius\"}}\n</tool_call>",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"kelvin\"}}\n</tool_call>",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call> and more",
        ] {
            assert!(!accepts(&v, &t, &auto, bad), "auto accepted {bad}");
        }
        // One call unless parallel calls are allowed.
        let two = format!("{good}\n<tool_call>\n{{\"name\": \"get_time\", \"arguments\": {{}}}}\n</tool_call>");
        assert!(!accepts(&v, &t, &auto, &two));
        assert!(accepts(&v, &t, &grammar(&tools(ToolChoice::Auto, true)), &two));
        // Required: no text; named: that tool only.
        let required = grammar(&tools(ToolChoice::Required, false));
        assert!(accepts(&v, &t, &required, good) && !accepts(&v, &t, &required, "Paris is sunny."));
        let named = grammar(&tools(ToolChoice::Named("get_time".into()), false));
        assert!(!accepts(&v, &t, &named, good));
        assert!(accepts(&v, &t, &named, "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>"));
        // A tool whose schema the constraint cannot express: an error naming it when compiled.
        let odd = Tool {
            name: "odd".into(),
            description: None,
            parameters: json!({"type": "string", "format": "no-such-format"}),
        };
        let err = v.constrain(&grammar(&Tools { tools: vec![odd], choice: ToolChoice::Auto, parallel: false }));
        assert!(err.is_err_and(|e| e.to_string().contains("no-such-format")));
    }
}
