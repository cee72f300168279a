//! Tool calls in a model's own words: how the tools reach the prompt, the grammar that makes a call parse, and the
//! parser that reads calls back out of the output as it streams.
//!
//! Each family writes calls its own way ([`ToolFormat`], found from the chat template and the vocabulary):
//! - Hermes's (Qwen 2.5 and 3, Hermes 2 and 3, and the many fine-tunes that copy them): `<tool_call>`, a JSON
//!   object `{"name": ..., "arguments": {...}}` and `</tool_call>`, once per call;
//! - Llama 3.1 and later: the whole answer is one JSON object `{"name": ..., "parameters": {...}}`;
//! - Mistral's older models (7B v0.3, Nemo, Small 3 and 3.1): the `[TOOL_CALLS]` token and a JSON array of
//!   `{"name": ..., "arguments": {...}, "id": "<9 letters and digits>"}`;
//! - Mistral's newer ones (Small 3.2, Magistral, Devstral): `[TOOL_CALLS]name[ARGS]{...}` per call;
//! - gpt-oss (OpenAI's harmony): a message of its own per call, to a recipient on the commentary channel,
//!   `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}`, ended by `<|call|>` (which ends
//!   the turn: one call per turn). The reasoning splitter hands such a message on from its recipient.
//!
//! A template that writes its family's calls itself is given the tools and the history's calls and results as
//! transformers gives them (for Llama, a turn of several calls becomes consecutive turns of one, which is all its
//! template renders, and so for gpt-oss; for Mistral, ids become the 9 characters its templates require). Any
//! other template gets the
//! tools listed in a system message that asks for Hermes's format, the history's calls written out as the model
//! would have written them and the results as user turns.
//!
//! [`grammar`] constrains the output: with [`ToolChoice::Auto`] text may come first and is free until the
//! family's opening appears (a lazy grammar: prose costs little; for Llama, an answer that starts with `{` is a
//! call), and from there only a call to a listed tool whose arguments match its parameters' schema may follow;
//! with `Required` or a named tool the output is calls from the first token (for gpt-oss, whose turn is a run of
//! messages, the grammar is the turn's: notes on the analysis and commentary channels, then the final answer or
//! a call; with a call required, one analysis message at most before it). [`ToolCallParser`] turns the output
//! into text and calls, holding back text that may be the start of a call until it knows, and streaming a call's
//! arguments as they come. Mistral's markers are control tokens, which output text leaves out: a request with
//! tools renders them ([`ToolFormat::preserved`]).
//!
//! Owns the formats; knows nothing of the API's field names or of ids.

use std::borrow::Cow;

use serde_json::{json, Value};

use crate::chat_template::{ChatMessage, ChatPrompt, ChatTemplate};
use crate::constraint::{Grammar, JSON_WHITESPACE};
use crate::error::Result;
use crate::reasoning::{CHANNEL, CONSTRAIN, END, MESSAGE, RECIPIENT, START};
use crate::tokenizer::Tokenizer;

/// What opens a Hermes call.
pub const OPEN: &str = "<tool_call>";
/// What closes it.
pub const CLOSE: &str = "</tool_call>";
/// Mistral's token before its calls.
pub const MISTRAL_CALLS: &str = "[TOOL_CALLS]";
/// Mistral's token between a call's name and its arguments (its newer models).
pub const MISTRAL_ARGS: &str = "[ARGS]";
/// What opens a gpt-oss call in the text the reasoning splitter hands on: the recipient, in the functions
/// namespace (the tools a request offers).
pub const HARMONY_CALL: &str = "to=functions.";

/// How a model family writes tool calls (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` per call.
    Hermes,
    /// One `{"name": ..., "parameters": {...}}` as the whole answer.
    Llama,
    /// `[TOOL_CALLS]` (token `open`) and a JSON array of `{"name", "arguments", "id"}`.
    MistralList { open: u32 },
    /// `[TOOL_CALLS]` (token `open`), the name, `[ARGS]` (token `args`) and the arguments, per call.
    MistralArgs { open: u32, args: u32 },
    /// gpt-oss's harmony messages; the call a message `to=functions.NAME`. The markers' token ids, for the
    /// grammar.
    Harmony(HarmonyTokens),
}

/// The harmony markers' token ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HarmonyTokens {
    pub start: u32,
    pub channel: u32,
    pub message: u32,
    pub end: u32,
    pub constrain: u32,
}

impl HarmonyTokens {
    /// The markers in `tokenizer`'s vocabulary, when all are there.
    fn find(tokenizer: &Tokenizer) -> Option<Self> {
        Some(Self {
            start: tokenizer.special_id(START)?,
            channel: tokenizer.special_id(CHANNEL)?,
            message: tokenizer.special_id(MESSAGE)?,
            end: tokenizer.special_id(END)?,
            constrain: tokenizer.special_id(CONSTRAIN)?,
        })
    }
}

impl ToolFormat {
    /// The format `template` writes calls in; Hermes's for a template that writes none (the system message asks
    /// for it). Mistral's and harmony need their markers in the vocabulary.
    pub fn detect(template: &ChatTemplate, tokenizer: &Tokenizer) -> Self {
        if template.mentions(CHANNEL) && template.mentions(RECIPIENT) {
            if let Some(tokens) = HarmonyTokens::find(tokenizer) {
                return ToolFormat::Harmony(tokens);
            }
        }
        if template.mentions(MISTRAL_CALLS) {
            if let Some(open) = tokenizer.special_id(MISTRAL_CALLS) {
                return match tokenizer.special_id(MISTRAL_ARGS).filter(|_| template.mentions(MISTRAL_ARGS)) {
                    Some(args) => ToolFormat::MistralArgs { open, args },
                    None => ToolFormat::MistralList { open },
                };
            }
        }
        if !template.mentions(OPEN)
            && template.mentions("<|start_header_id|>")
            && template.mentions("\"parameters\"")
            && template.mentions("tools")
        {
            return ToolFormat::Llama;
        }
        ToolFormat::Hermes
    }

    /// The control tokens the output must show as text for the parser to see the calls.
    pub fn preserved(self) -> Vec<u32> {
        match self {
            // Harmony's markers are shown as text anyway (the tokenizer's always-rendered tokens).
            ToolFormat::Hermes | ToolFormat::Llama | ToolFormat::Harmony(_) => Vec::new(),
            ToolFormat::MistralList { open } => vec![open],
            ToolFormat::MistralArgs { open, args } => vec![open, args],
        }
    }

    /// Whether a model may make several calls in one turn in this format (Llama's template renders one; a
    /// harmony call ends the turn).
    fn parallel(self) -> bool {
        !matches!(self, ToolFormat::Llama | ToolFormat::Harmony(_))
    }
}

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

impl Tools {
    /// The tools the model may call: the named one only, when one is named.
    fn offered(&self) -> Vec<&Tool> {
        match &self.choice {
            ToolChoice::Named(name) => self.tools.iter().filter(|t| &t.name == name).collect(),
            _ => self.tools.iter().collect(),
        }
    }

    /// Whether a turn may hold more than one call.
    fn many(&self, format: ToolFormat) -> bool {
        self.parallel && format.parallel() && !matches!(self.choice, ToolChoice::Named(_))
    }
}

/// Whether `template` presents tools and calls in Hermes's format itself.
pub fn template_takes_tools(template: &ChatTemplate) -> bool {
    template.mentions(OPEN) && template.mentions("tools")
}

/// The prompt for `messages` with `tools` offered, through the template where it takes tools, otherwise through a
/// system message and the history written out (see the module's documentation).
pub fn prompt(
    format: ToolFormat,
    template: &ChatTemplate,
    messages: &[ChatMessage],
    tools: &Tools,
) -> Result<ChatPrompt> {
    let list = Value::Array(tools.tools.iter().map(Tool::to_json).collect());
    match format {
        ToolFormat::Hermes if template_takes_tools(template) => template.prompt_with_tools(messages, Some(&list)),
        ToolFormat::Hermes => {
            let mut written = written_out(messages);
            let listing = system_text(&tools.tools);
            match written.first_mut() {
                Some(first) if first.role == "system" => first.content = format!("{}\n\n{listing}", first.content),
                _ => written.insert(0, ChatMessage::new("system", listing)),
            }
            template.prompt(&written)
        }
        ToolFormat::Llama => template.prompt_with_tools(&one_call_per_turn(messages), Some(&list)),
        ToolFormat::Harmony(_) => {
            // gpt-oss's template writes each tool's description and fails on one without.
            let described = tools.tools.iter().map(|t| {
                let mut tool = t.to_json();
                if t.description.is_none() {
                    tool["function"]["description"] = json!("");
                }
                tool
            });
            template.prompt_with_tools(&one_call_per_turn(messages), Some(&Value::Array(described.collect())))
        }
        ToolFormat::MistralList { .. } | ToolFormat::MistralArgs { .. } => {
            template.prompt_with_tools(&mistral_ids(messages), Some(&list))
        }
    }
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

/// `messages` with each assistant turn of several calls made consecutive turns of one call, each followed by its
/// result (Llama's templates render one call per turn and refuse more; gpt-oss's renders the first only).
fn one_call_per_turn(messages: &[ChatMessage]) -> Cow<'_, [ChatMessage]> {
    if messages.iter().all(|m| m.tool_calls.len() <= 1) {
        return Cow::Borrowed(messages);
    }
    let mut out = Vec::with_capacity(messages.len() * 2);
    let mut i = 0;
    while i < messages.len() {
        let m = &messages[i];
        i += 1;
        if m.tool_calls.len() <= 1 {
            out.push(m.clone());
            continue;
        }
        // The results that follow the turn, each placed after its call (by id, else in order); any left over
        // come after the last.
        let mut results: Vec<Option<&ChatMessage>> = Vec::new();
        while i < messages.len() && messages[i].role == "tool" {
            results.push(Some(&messages[i]));
            i += 1;
        }
        for (n, call) in m.tool_calls.iter().enumerate() {
            let content = if n == 0 { m.content.clone() } else { String::new() };
            out.push(ChatMessage { tool_calls: vec![call.clone()], ..ChatMessage::new("assistant", content) });
            let by_id = results.iter().position(|r| r.is_some_and(|r| r.tool_call_id.as_deref() == Some(&call.id)));
            let by_order = || results.iter().position(Option::is_some);
            if let Some(r) = by_id.or_else(by_order).and_then(|at| results[at].take()) {
                out.push(r.clone());
            }
        }
        out.extend(results.into_iter().flatten().cloned());
    }
    Cow::Owned(out)
}

/// `messages` with every call id and result id as Mistral's templates require: 9 letters and digits (an id that
/// is not is replaced by one derived from it, the same for a call and its result).
fn mistral_ids(messages: &[ChatMessage]) -> Vec<ChatMessage> {
    let mut out = messages.to_vec();
    for m in &mut out {
        for call in &mut m.tool_calls {
            call.id = nine_characters(&call.id);
        }
        if let Some(id) = m.tool_call_id.as_mut() {
            *id = nine_characters(id);
        }
    }
    out
}

/// `id` if it is 9 letters and digits, otherwise 9 of them derived from it (FNV-1a, in base 62).
fn nine_characters(id: &str) -> String {
    if id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return id.to_string();
    }
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (0..9)
        .map(|_| {
            let c = DIGITS[(hash % 62) as usize] as char;
            hash /= 62;
            c
        })
        .collect()
}

/// How the constraint reads a tool's `parameters`: whitespace bounded as in structured output, and leniently:
/// a keyword it cannot express (`propertyNames`, `oneOf` taken as `anyOf`, `minProperties` over optional
/// properties) loosens the call's constraint instead of failing the request. Agents send dozens of tools whose
/// schemas come from their own code (Claude Code's use `propertyNames`), and the client checks the arguments it
/// runs; a `response_format` schema is the caller's contract and stays strict (a 400 naming the keyword).
fn schema_options() -> Value {
    json!({ "whitespace_pattern": JSON_WHITESPACE, "lenient": true })
}

/// `tool`'s arguments schema as the grammar reads it (with [`schema_options`]), for formats that write the
/// arguments alone after the name.
fn arguments_schema(tool: &Tool) -> Value {
    let mut schema = tool.parameters.clone();
    if let Some(object) = schema.as_object_mut() {
        object.insert("x-guidance".into(), schema_options());
    }
    schema
}

/// The JSON schema of one call to any of `offered`: an object with the tool's name, its arguments under
/// `arguments_key`, and (Mistral's list) an `id`, in that order.
fn call_schema(offered: &[&Tool], arguments_key: &str, with_id: bool) -> Value {
    let variants: Vec<Value> = offered
        .iter()
        .map(|t| {
            let mut properties = serde_json::Map::new();
            properties.insert("name".into(), json!({"const": t.name}));
            properties.insert(arguments_key.into(), t.parameters.clone());
            let mut required = vec![json!("name"), json!(arguments_key)];
            if with_id {
                properties.insert("id".into(), json!({"type": "string", "pattern": "^[a-zA-Z0-9]{9}$"}));
                required.push(json!("id"));
            }
            json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
        })
        .collect();
    let mut schema = match <[Value; 1]>::try_from(variants) {
        Ok([one]) => one,
        Err(all) => json!({"anyOf": all}),
    };
    schema["x-guidance"] = schema_options();
    schema
}

/// The grammar the output must follow when `tools` are offered in `format` (see the module's documentation). Its
/// schemas are the tools' own, read leniently ([`schema_options`]); one the constraint cannot satisfy fails when
/// the grammar is compiled.
pub fn grammar(format: ToolFormat, tools: &Tools) -> Grammar {
    let offered = tools.offered();
    let many = tools.many(format);
    let auto = tools.choice == ToolChoice::Auto;
    let source = match format {
        ToolFormat::Hermes => {
            let schema = call_schema(&offered, "arguments", false);
            let more = if many { format!(" (NL* {} call)*", lark_string(OPEN)) } else { String::new() };
            let start =
                if auto { format!("TEXT | opening call{more}") } else { format!("{} call{more}", lark_string(OPEN)) };
            format!(
                "start: {start}\n\
                 TEXT: /(?s:.+)/ & ~/(?s:.*{open}.*)/\n\
                 opening[lazy]: /(?s:.*){open}/\n\
                 call: NL? %json {schema} NL? {close}\n\
                 NL: /\\n/\n",
                open = regex_literal(OPEN),
                close = lark_string(CLOSE),
            )
        }
        ToolFormat::Llama => {
            let schema = call_schema(&offered, "parameters", false);
            let start = if auto { "TEXT | call" } else { "call" };
            // Text may not start as a call does: an answer that starts with `{` is a call.
            format!(
                "start: {start}\n\
                 TEXT: /(?s:.+)/ & ~/(?s:[ \\t\\r\\n]*\\{{.*)/\n\
                 call: %json {schema}\n"
            )
        }
        ToolFormat::MistralList { open } => {
            let schema = call_schema(&offered, "arguments", true);
            let start = if auto { "TEXT | TEXT? calls" } else { "calls" };
            format!(
                "start: {start}\n\
                 calls: <[{open}]> \" \"? \"[\" {list} \"]\"\n\
                 TEXT: /(?s:.+)/\n\
                 call: %json {schema}\n\
                 SEP: /, ?/\n",
                list = if many { "call (SEP call)*" } else { "call" },
            )
        }
        ToolFormat::MistralArgs { open, args } => {
            let start = if auto { "TEXT | TEXT? calls" } else { "calls" };
            let calls = if many { "call+" } else { "call" };
            let mut source = format!("start: {start}\ncalls: {calls}\nTEXT: /(?s:.+)/\n");
            let names: Vec<String> = (0..offered.len()).map(|i| format!("tool_{i}")).collect();
            source.push_str(&format!("call: <[{open}]> ({})\n", names.join(" | ")));
            for (name, tool) in names.iter().zip(&offered) {
                let schema = arguments_schema(tool);
                source.push_str(&format!("{name}: {} <[{args}]> %json {schema}\n", lark_string(&tool.name)));
            }
            source
        }
        ToolFormat::Harmony(m) => {
            // After `<|start|>assistant`: notes (reasoning, preambles), each ending where the next message starts,
            // then the final answer or a call (whose end is `<|call|>`, an end of generation).
            let start = if auto { "note* (final | call)" } else { "analysis? call" };
            let names: Vec<String> = (0..offered.len()).map(|i| format!("tool_{i}")).collect();
            let mut source = format!(
                "start: {start}\n\
                 note: <[{channel}]> (\"analysis\" | \"commentary\") <[{message}]> BODY <[{end}]> <[{begin}]> \"assistant\"\n\
                 analysis: <[{channel}]> \"analysis\" <[{message}]> BODY <[{end}]> <[{begin}]> \"assistant\"\n\
                 final: <[{channel}]> \"final\" <[{message}]> BODY\n\
                 call: <[{channel}]> \"commentary {HARMONY_CALL}\" ({})\n\
                 BODY: /(?s:.*)/\n",
                names.join(" | "),
                channel = m.channel,
                message = m.message,
                end = m.end,
                begin = m.start,
            );
            for (name, tool) in names.iter().zip(&offered) {
                let schema = arguments_schema(tool);
                source.push_str(&format!(
                    "{name}: {} <[{}]> \"json\" <[{}]> %json {schema}\n",
                    lark_string(&format!("{} ", tool.name)),
                    m.constrain,
                    m.message
                ));
            }
            source
        }
    };
    Grammar::lark(source)
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
    /// In text; `pending` may be the start of the format's opening.
    Text,
    /// At the start of a Llama answer: whitespace so far; `{` makes it a call, anything else text.
    Start,
    /// Text to the end (a Llama answer that did not start with a call, or went on after one).
    Plain,
    /// After Mistral's `[TOOL_CALLS]`, before its list's `[`.
    List,
    /// Where a call's JSON object begins: `pending` is the call so far.
    Header,
    /// A Mistral call's name, until `[ARGS]`.
    Name,
    /// Inside the arguments' value.
    Arguments(ValueScan),
    /// After the arguments, until `</tool_call>` (Hermes) or the end of the call's object (`scan`).
    Tail(Option<ValueScan>),
    /// A call not in the usual shape (keys in another order): kept whole until it ends (`</tool_call>`, or the
    /// end of its object: `scan` has read `pending[..scanned]`).
    Whole { scan: ValueScan, scanned: usize },
    /// After a call in Mistral's list: `,` and the next, or `]`.
    ListNext,
    /// After a call: whitespace is dropped; a new call or text may follow.
    Between,
}

/// Reads text and calls out of a model's output as it streams. Feed it every piece of text with
/// [`ToolCallParser::push`], then call [`ToolCallParser::finish`].
#[derive(Debug, Clone)]
pub struct ToolCallParser {
    format: ToolFormat,
    state: State,
    pending: String,
    /// The opening of the call being read (its tag, Mistral's markers), until the call is known: text again if
    /// the output ends before.
    opened: String,
    calls: usize,
}

impl ToolCallParser {
    pub fn new(format: ToolFormat) -> Self {
        let state = if format == ToolFormat::Llama { State::Start } else { State::Text };
        Self { format, state, pending: String::new(), opened: String::new(), calls: 0 }
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
        let opened = std::mem::take(&mut self.opened);
        match self.state {
            State::Text | State::Plain | State::Start if !rest.is_empty() => events.push(ToolEvent::Text(rest)),
            State::List | State::Header | State::Name | State::Whole { .. } => {
                events.push(ToolEvent::Text(format!("{opened}{rest}")))
            }
            // Whitespace after the last call is dropped; the start of a call that never came is text.
            State::Between if !rest.trim().is_empty() => events.push(ToolEvent::Text(rest)),
            _ => {}
        }
        self.state = State::Text;
        events
    }

    /// What opens a call in text (Hermes's tag, Mistral's marker, harmony's recipient); none for Llama.
    fn opening(&self) -> &'static str {
        match self.format {
            ToolFormat::Hermes => OPEN,
            ToolFormat::Llama => "",
            ToolFormat::MistralList { .. } | ToolFormat::MistralArgs { .. } => MISTRAL_CALLS,
            ToolFormat::Harmony(_) => HARMONY_CALL,
        }
    }

    /// The state after the opening.
    fn after_opening(&self) -> State {
        match self.format {
            ToolFormat::MistralList { .. } => State::List,
            ToolFormat::MistralArgs { .. } | ToolFormat::Harmony(_) => State::Name,
            ToolFormat::Hermes | ToolFormat::Llama => State::Header,
        }
    }

    /// Takes `n` bytes of `pending` as part of the opening.
    fn open(&mut self, n: usize) {
        self.opened.extend(self.pending.drain(..n));
    }

    /// Call `name` begins.
    fn begin_call(&mut self, name: String, events: &mut Vec<ToolEvent>) {
        events.push(ToolEvent::Call { index: self.calls, name });
        self.calls += 1;
        self.opened.clear();
    }

    /// Makes what progress `pending` allows; false when it needs more text.
    fn step(&mut self, events: &mut Vec<ToolEvent>) -> bool {
        let opening = self.opening();
        match &mut self.state {
            State::Text => {
                if let Some(at) = self.pending.find(opening).filter(|_| !opening.is_empty()) {
                    if at > 0 {
                        events.push(ToolEvent::Text(self.pending.drain(..at).collect()));
                    }
                    self.open(opening.len());
                    self.state = self.after_opening();
                    return true;
                }
                // Keep back what may be the start of the opening.
                let keep = partial_suffix(&self.pending, opening);
                let sure = self.pending.len() - keep;
                if sure > 0 {
                    events.push(ToolEvent::Text(self.pending.drain(..sure).collect()));
                }
                false
            }
            State::Start => {
                let trimmed = self.pending.trim_start();
                if trimmed.is_empty() {
                    return false;
                }
                self.state = if trimmed.starts_with('{') {
                    let ws = self.pending.len() - trimmed.len();
                    self.open(ws);
                    State::Header
                } else {
                    State::Plain
                };
                true
            }
            State::Plain => {
                if !self.pending.is_empty() {
                    events.push(ToolEvent::Text(std::mem::take(&mut self.pending)));
                }
                false
            }
            State::List => {
                let trimmed = self.pending.trim_start();
                if trimmed.is_empty() {
                    return false;
                }
                if !trimmed.starts_with('[') {
                    // Not a list after all: the marker and what follows are text.
                    events.push(ToolEvent::Text(std::mem::take(&mut self.opened)));
                    self.state = State::Text;
                    return true;
                }
                let n = self.pending.len() - trimmed.len() + 1;
                self.open(n);
                self.state = State::Header;
                true
            }
            State::Header => match header(&self.pending) {
                Header::NeedMore => false,
                Header::Other => {
                    self.state = State::Whole { scan: ValueScan::default(), scanned: 0 };
                    true
                }
                Header::Found { name, value_at } => {
                    self.begin_call(name, events);
                    self.pending.drain(..value_at);
                    self.state = State::Arguments(ValueScan::default());
                    true
                }
            },
            State::Name => {
                // Mistral: the name, then `[ARGS]`; harmony: the name, perhaps the channel and the content type,
                // then `<|message|>`.
                let marker = if matches!(self.format, ToolFormat::Harmony(_)) { MESSAGE } else { MISTRAL_ARGS };
                let Some(at) = self.pending.find(marker) else { return false };
                let name = self.pending[..at].trim_start();
                let name = name.split(|c: char| c.is_whitespace() || c == '<').next().unwrap_or_default().to_string();
                self.pending.drain(..at + marker.len());
                self.begin_call(name, events);
                self.state = State::Arguments(ValueScan::default());
                true
            }
            State::Arguments(scan) => {
                let end = scan.feed(&self.pending);
                let index = self.calls - 1;
                let taken = end.unwrap_or(self.pending.len());
                if taken > 0 {
                    events.push(ToolEvent::Arguments { index, json: self.pending.drain(..taken).collect() });
                }
                if end.is_some() {
                    self.state = match self.format {
                        ToolFormat::Hermes => State::Tail(None),
                        ToolFormat::MistralArgs { .. } | ToolFormat::Harmony(_) => State::Between,
                        // The rest of the call's object (Mistral's id), one level in.
                        ToolFormat::Llama | ToolFormat::MistralList { .. } => {
                            State::Tail(Some(ValueScan { depth: 1, started: true, ..ValueScan::default() }))
                        }
                    };
                    return true;
                }
                false
            }
            State::Tail(None) => match self.pending.find(CLOSE) {
                Some(at) => {
                    self.pending.drain(..at + CLOSE.len());
                    self.state = State::Between;
                    true
                }
                None => false,
            },
            State::Tail(Some(scan)) => match scan.feed(&self.pending) {
                Some(end) => {
                    self.pending.drain(..end);
                    self.state = self.after_call();
                    true
                }
                None => {
                    self.pending.clear();
                    false
                }
            },
            State::Whole { scan, scanned } => {
                let end = match self.format {
                    ToolFormat::Hermes => self.pending.find(CLOSE).map(|at| (at, at + CLOSE.len())),
                    _ => {
                        let found = scan.feed(&self.pending[*scanned..]).map(|n| *scanned + n);
                        *scanned = self.pending.len();
                        found.map(|at| (at, at))
                    }
                };
                let Some((body_end, end)) = end else { return false };
                let whole: String = self.pending.drain(..end).collect();
                match whole_call(&whole[..body_end]) {
                    Some((name, arguments)) => {
                        let index = self.calls;
                        self.begin_call(name, events);
                        events.push(ToolEvent::Arguments { index, json: arguments });
                    }
                    // Not a call after all: nothing is lost.
                    None => events.push(ToolEvent::Text(format!("{}{whole}", std::mem::take(&mut self.opened)))),
                }
                self.state = self.after_call();
                true
            }
            State::ListNext => {
                let trimmed = self.pending.trim_start();
                let Some(c) = trimmed.chars().next() else { return false };
                let n = self.pending.len() - trimmed.len() + 1;
                self.pending.drain(..n);
                self.state = match c {
                    ',' => State::Header,
                    ']' => State::Between,
                    // Neither: the list is over all the same; what follows is text.
                    _ => {
                        events.push(ToolEvent::Text(c.to_string()));
                        State::Text
                    }
                };
                true
            }
            State::Between => {
                let trimmed = self.pending.trim_start();
                if self.format == ToolFormat::Llama {
                    // One call per answer: what follows it is text.
                    if trimmed.is_empty() {
                        return false;
                    }
                    self.state = State::Plain;
                    return true;
                }
                if trimmed.starts_with(opening) {
                    let dropped = self.pending.len() - trimmed.len();
                    self.pending.drain(..dropped);
                    self.open(opening.len());
                    self.state = self.after_opening();
                    return true;
                }
                if opening.starts_with(trimmed) {
                    // Whitespace, or what may be the next call's start.
                    return false;
                }
                self.state = State::Text;
                true
            }
        }
    }

    /// The state after a call's object ends.
    fn after_call(&self) -> State {
        match self.format {
            ToolFormat::MistralList { .. } => State::ListNext,
            _ => State::Between,
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
    /// It may still become `{"name": "...", "arguments":` (or `"parameters":`).
    NeedMore,
    /// It is that: the name, and where the arguments' value begins.
    Found { name: String, value_at: usize },
    /// It is something else.
    Other,
}

/// Reads `{"name": "<name>", "arguments": ` (or `"parameters": `; whitespace allowed between the parts) at the
/// start of `text`.
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
    if let Some(h) = literal(&mut at, ",") {
        return h;
    }
    // Hermes and Mistral say `arguments`, Llama `parameters`.
    skip_ws(&mut at);
    let rest = &text[at..];
    let keys = ["\"arguments\"", "\"parameters\""];
    match keys.iter().find(|k| rest.starts_with(**k)) {
        Some(k) => at += k.len(),
        None if keys.iter().any(|k| k.starts_with(rest)) => return Header::NeedMore,
        None => return Header::Other,
    }
    if let Some(h) = literal(&mut at, ":") {
        return h;
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

    /// Everything `pieces` give, one push each, then the finish (Hermes's format).
    fn parse(pieces: &[&str]) -> Vec<ToolEvent> {
        parse_as(ToolFormat::Hermes, pieces)
    }

    fn parse_as(format: ToolFormat, pieces: &[&str]) -> Vec<ToolEvent> {
        let mut p = ToolCallParser::new(format);
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
        let mut p = ToolCallParser::new(ToolFormat::Hermes);
        assert_eq!(p.push("Hi <tool"), vec![text("Hi ")]);
        assert_eq!(p.push("box> there"), vec![text("<toolbox> there")]);
        assert_eq!(p.push(" <"), vec![text(" ")]);
        assert_eq!(p.finish(), vec![text("<")]);
        assert_eq!(p.calls(), 0);
        // The arguments stream as they come, before the call closes.
        let mut p = ToolCallParser::new(ToolFormat::Hermes);
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
        let p = prompt(ToolFormat::Hermes, &t, &messages, &tools(ToolChoice::Auto, true)).unwrap();
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
        let p = prompt(
            ToolFormat::Hermes,
            &t,
            &messages,
            &Tools { tools: vec![time()], choice: ToolChoice::Auto, parallel: false },
        )
        .unwrap();
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
        for id in t.encode(text, false, true).unwrap() {
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
        let auto = grammar(ToolFormat::Hermes, &tools(ToolChoice::Auto, false));
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
        assert!(accepts(&v, &t, &grammar(ToolFormat::Hermes, &tools(ToolChoice::Auto, true)), &two));
        // Required: no text; named: that tool only.
        let required = grammar(ToolFormat::Hermes, &tools(ToolChoice::Required, false));
        assert!(accepts(&v, &t, &required, good) && !accepts(&v, &t, &required, "Paris is sunny."));
        let named = grammar(ToolFormat::Hermes, &tools(ToolChoice::Named("get_time".into()), false));
        assert!(!accepts(&v, &t, &named, good));
        assert!(accepts(&v, &t, &named, "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>"));
        // A keyword the constraint cannot express (Claude Code's tools use propertyNames) loosens the call's
        // constraint, which still holds the rest of the schema; one it cannot satisfy is an error naming it.
        let odd = |parameters: Value| Tools {
            tools: vec![Tool { name: "odd".into(), description: None, parameters }],
            choice: ToolChoice::Required,
            parallel: false,
        };
        let loose = grammar(
            ToolFormat::Hermes,
            &odd(json!({"type": "object", "properties": {"env": {"type": "object",
                "propertyNames": {"pattern": "^[A-Z_]+$"}, "additionalProperties": {"type": "string"}},
                "when": {"type": "string", "format": "no-such-format"}}, "required": ["env"]})),
        );
        let call = |args: &str| format!("<tool_call>\n{{\"name\": \"odd\", \"arguments\": {args}}}\n</tool_call>");
        assert!(accepts(&v, &t, &loose, &call(r#"{"env": {"HOME": "/root"}, "when": "now"}"#)));
        assert!(!accepts(&v, &t, &loose, &call(r#"{"env": {"HOME": 1}}"#)), "the values' type still holds");
        assert!(!accepts(&v, &t, &loose, &call(r#"{"when": "now"}"#)), "required still holds");
        let err = v.constrain(&grammar(
            ToolFormat::Hermes,
            &odd(json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 5, "maximum": 2}},
                "required": ["n"]})),
        ));
        let Err(e) = err else { panic!("an unsatisfiable schema compiles") };
        assert!(e.to_string().contains("minimum"), "{e}");
    }

    /// Every split of `output` into two pieces, and one character at a time, parses as it does whole.
    fn parses_the_same_in_any_split(format: ToolFormat, output: &str, expected: &[ToolEvent]) {
        assert_eq!(joined(parse_as(format, &[output])), expected, "whole");
        let chars: Vec<String> = output.chars().map(String::from).collect();
        assert_eq!(joined(parse_as(format, &chars.iter().map(String::as_str).collect::<Vec<_>>())), expected);
        for cut in (1..output.len()).filter(|&i| output.is_char_boundary(i)) {
            assert_eq!(joined(parse_as(format, &[&output[..cut], &output[cut..]])), expected, "cut at {cut}");
        }
    }

    const LLAMA_3_2: &str = include_str!("../tests/data/templates/llama-3.2.jinja");
    const MISTRAL_NEMO: &str = include_str!("../tests/data/templates/mistral-nemo.jinja");
    /// A template in Mistral's newer style (the calls as `[TOOL_CALLS]name[ARGS]{...}`), of our own.
    const MISTRAL_ARGS_TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}\
        {% if tools and loop.last %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}[INST]{{ m.content }}[/INST]\
        {% elif m.tool_calls %}{% for c in m.tool_calls %}[TOOL_CALLS]{{ c.function.name }}[ARGS]{{ c.function.arguments | tojson }}{% endfor %}{{ eos_token }}\
        {% elif m.role == 'tool' %}[TOOL_RESULTS]{{ m.content }}[/TOOL_RESULTS]{% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}";
    const LLAMA: ToolFormat = ToolFormat::Llama;

    /// The test model's tokenizer with two of its unused control tokens renamed to Mistral's markers.
    fn mistral_tokenizer() -> (Tokenizer, u32, u32) {
        let path = std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/exo/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let path = std::env::var_os("EXO_TEST_MODEL").map(std::path::PathBuf::from).unwrap_or(path);
        let mut meta = crate::Gguf::open(&path).unwrap().metadata;
        let Some(crate::gguf::Value::Array(tokens)) = meta.get_mut("tokenizer.ggml.tokens") else { panic!() };
        let (open, args) = (13, 7); // <jupyter_code> and <gh_stars>, control tokens the model never writes
        tokens[open as usize] = crate::gguf::Value::String(MISTRAL_CALLS.into());
        tokens[args as usize] = crate::gguf::Value::String(MISTRAL_ARGS.into());
        (Tokenizer::from_metadata(&meta).unwrap(), open, args)
    }

    #[test]
    fn each_family_is_found_from_its_template_and_vocabulary() {
        let smollm = smollm();
        let (mistral, open, args) = mistral_tokenizer();
        let template = |source: &str| ChatTemplate::new(Some(source), "<s>", "</s>").unwrap();
        assert_eq!(ToolFormat::detect(&template(LLAMA_3_2), &smollm), LLAMA);
        assert_eq!(ToolFormat::detect(&template(MISTRAL_NEMO), &mistral), ToolFormat::MistralList { open });
        assert_eq!(
            ToolFormat::detect(&template(MISTRAL_ARGS_TEMPLATE), &mistral),
            ToolFormat::MistralArgs { open, args }
        );
        // Mistral's template over a vocabulary without its markers, and ChatML: Hermes's, through a system message.
        assert_eq!(ToolFormat::detect(&template(MISTRAL_NEMO), &smollm), ToolFormat::Hermes);
        assert_eq!(ToolFormat::detect(&ChatTemplate::new(None, "<s>", "</s>").unwrap(), &smollm), ToolFormat::Hermes);
        assert_eq!(ToolFormat::MistralArgs { open, args }.preserved(), vec![open, args]);
        assert!(LLAMA.preserved().is_empty());
    }

    #[test]
    fn llama_calls_are_the_whole_answer_or_none_of_it() {
        parses_the_same_in_any_split(
            LLAMA,
            " {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris {}\"}}",
            &[call(0, "get_weather"), args(0, "{\"city\": \"Paris {}\"}")],
        );
        // Text that does not start with `{` is text throughout, braces and all.
        parses_the_same_in_any_split(LLAMA, "Use {\"name\": \"x\"}.", &[text("Use {\"name\": \"x\"}.")]);
        // Another shape (the type first): read whole; not a call: its text back.
        assert_eq!(
            joined(parse_as(LLAMA, &["{\"type\": \"function\", \"name\": \"f\", \"parameters\": {\"a\": 1}}"])),
            vec![call(0, "f"), args(0, "{\"a\":1}")]
        );
        assert_eq!(joined(parse_as(LLAMA, &["{\"a\": [1, 2]} and so"])), vec![text("{\"a\": [1, 2]} and so")]);
        // Cut in the header: text; text after a call: text.
        assert_eq!(joined(parse_as(LLAMA, &["{\"name\": \"get"])), vec![text("{\"name\": \"get")]);
        assert_eq!(
            joined(parse_as(LLAMA, &["{\"name\": \"f\", \"parameters\": {}} Done."])),
            vec![call(0, "f"), args(0, "{}"), text(" Done.")]
        );
    }

    #[test]
    fn mistral_calls_come_apart_from_text_in_either_of_its_formats() {
        let (_, open, args_id) = mistral_tokenizer();
        let list = ToolFormat::MistralList { open };
        parses_the_same_in_any_split(
            list,
            "Checking.[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}, \"id\": \"abc123XYZ\"}, \
             {\"name\": \"get_time\", \"arguments\": {}, \"id\": \"a1b2c3d4e\"}]",
            &[
                text("Checking."),
                call(0, "get_weather"),
                args(0, "{\"city\": \"Paris\"}"),
                call(1, "get_time"),
                args(1, "{}"),
            ],
        );
        // The id first: read whole. No list after the marker, or a list cut short: text, the marker with it.
        assert_eq!(
            joined(parse_as(list, &["[TOOL_CALLS][{\"id\": \"abc123XYZ\", \"name\": \"f\", \"arguments\": {}}]"])),
            vec![call(0, "f"), args(0, "{}")]
        );
        assert_eq!(joined(parse_as(list, &["[TOOL_CALLS] none"])), vec![text("[TOOL_CALLS] none")]);
        assert_eq!(joined(parse_as(list, &["[TOOL_CALLS][{\"na"])), vec![text("[TOOL_CALLS][{\"na")]);
        let named = ToolFormat::MistralArgs { open, args: args_id };
        parses_the_same_in_any_split(
            named,
            "Sure.[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]get_time[ARGS]{}",
            &[
                text("Sure."),
                call(0, "get_weather"),
                args(0, "{\"city\": \"Paris\"}"),
                call(1, "get_time"),
                args(1, "{}"),
            ],
        );
        assert_eq!(joined(parse_as(named, &["[TOOL_CALLS]get_wea"])), vec![text("[TOOL_CALLS]get_wea")]);
    }

    /// A conversation in which the assistant called two tools at once and got both results.
    fn two_calls_answered() -> Vec<ChatMessage> {
        let weather = ToolCall { id: "call_1".into(), name: "get_weather".into(), arguments: json!({"city": "Paris"}) };
        let time = ToolCall { id: "call_2".into(), name: "get_time".into(), arguments: json!({}) };
        vec![
            ChatMessage::new("user", "Weather and time in Paris?"),
            ChatMessage { tool_calls: vec![weather, time], ..ChatMessage::new("assistant", "") },
            ChatMessage { tool_call_id: Some("call_2".into()), ..ChatMessage::new("tool", "noon") },
            ChatMessage { tool_call_id: Some("call_1".into()), ..ChatMessage::new("tool", "18 C") },
        ]
    }

    #[test]
    fn llama_gets_one_call_per_turn_each_followed_by_its_result() {
        let t = ChatTemplate::new(Some(LLAMA_3_2), "<|begin_of_text|>", "<|eot_id|>").unwrap();
        let p = prompt(LLAMA, &t, &two_calls_answered(), &tools(ToolChoice::Auto, true)).unwrap();
        let turn = |s: &str| format!("<|start_header_id|>{s}<|eot_id|>");
        let expected = [
            turn("assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}"),
            // A string is iterable to Jinja, so the template writes the result as JSON (as transformers does).
            turn("ipython<|end_header_id|>\n\n\"18 C\""),
            turn("assistant<|end_header_id|>\n\n{\"name\": \"get_time\", \"parameters\": {}}"),
            turn("ipython<|end_header_id|>\n\n\"noon\""),
        ]
        .concat();
        assert!(p.text.contains(&expected), "{}", p.text);
        assert!(
            p.text.contains("\"name\": \"get_weather\",\n        \"description\""),
            "the tools are listed: {}",
            p.text
        );
        assert!(p.text.ends_with("<|start_header_id|>assistant<|end_header_id|>\n\n"));
    }

    #[test]
    fn mistral_gets_ids_of_nine_characters_the_same_for_a_call_and_its_result() {
        let (mistral, open, _) = mistral_tokenizer();
        let t = ChatTemplate::new(Some(MISTRAL_NEMO), "<s>", "</s>").unwrap();
        let format = ToolFormat::detect(&t, &mistral);
        assert_eq!(format, ToolFormat::MistralList { open });
        // Unchanged, the template refuses these ids ("call_1" is not 9 characters).
        assert!(t.prompt_with_tools(&two_calls_answered(), None).is_err());
        let p = prompt(format, &t, &two_calls_answered(), &tools(ToolChoice::Auto, true)).unwrap();
        let (one, two) = (nine_characters("call_1"), nine_characters("call_2"));
        assert!(one.len() == 9 && one.bytes().all(|b| b.is_ascii_alphanumeric()) && one != two);
        assert_eq!(nine_characters("abc123XYZ"), "abc123XYZ");
        let expected = format!(
            "[TOOL_CALLS][{{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"Paris\"}}, \"id\": \"{one}\"}}, \
             {{\"name\": \"get_time\", \"arguments\": {{}}, \"id\": \"{two}\"}}]</s>\
             [TOOL_RESULTS]{{\"content\": noon, \"call_id\": \"{two}\"}}[/TOOL_RESULTS]\
             [TOOL_RESULTS]{{\"content\": 18 C, \"call_id\": \"{one}\"}}[/TOOL_RESULTS]"
        );
        assert!(p.text.contains(&expected), "{}", p.text);
        assert!(p.text.contains("[AVAILABLE_TOOLS][{\"type\": \"function\", \"function\": {\"name\": \"get_weather\""));
    }

    #[test]
    fn each_familys_grammar_lets_only_its_own_calls_to_listed_tools_through() {
        let smollm = smollm();
        let v = Vocabulary::new(&smollm).unwrap();
        let call = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}";
        let auto = grammar(LLAMA, &tools(ToolChoice::Auto, true));
        assert!(accepts(&v, &smollm, &auto, call));
        assert!(accepts(&v, &smollm, &auto, "Paris is sunny."));
        for bad in [
            "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
            "{\"name\": \"get_weather\", \"parameters\": {}}",
            "{\"answer\": 1}",
            &format!("{call}\n{call}"),
        ] {
            assert!(!accepts(&v, &smollm, &auto, bad), "Llama accepted {bad}");
        }
        assert!(!accepts(&v, &smollm, &grammar(LLAMA, &tools(ToolChoice::Required, true)), "Paris is sunny."));

        let (mistral, open, args_id) = mistral_tokenizer();
        let v = Vocabulary::new(&mistral).unwrap();
        let list = ToolFormat::MistralList { open };
        let weather = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}, \"id\": \"abc123XYZ\"}";
        let time = "{\"name\": \"get_time\", \"arguments\": {}, \"id\": \"a1b2c3d4e\"}";
        let auto = grammar(list, &tools(ToolChoice::Auto, true));
        assert!(accepts(&v, &mistral, &auto, &format!("[TOOL_CALLS][{weather}]")));
        assert!(accepts(&v, &mistral, &auto, &format!("Let me see.[TOOL_CALLS] [{weather}, {time}]")));
        assert!(accepts(&v, &mistral, &auto, "Paris is sunny."));
        for bad in [
            format!("[TOOL_CALLS][{}]", weather.replace("abc123XYZ", "abc")),
            "[TOOL_CALLS][{\"name\": \"get_time\", \"arguments\": {}}]".to_string(),
        ] {
            assert!(!accepts(&v, &mistral, &auto, &bad), "Mistral accepted {bad}");
        }
        let single = grammar(list, &tools(ToolChoice::Required, false));
        assert!(!accepts(&v, &mistral, &single, &format!("[TOOL_CALLS][{weather}, {time}]")));
        assert!(!accepts(&v, &mistral, &single, "Paris is sunny."));
        // The marker spelled in text tokens is not the marker.
        let spelled = mistral.encode("[TOOL_CALLS]", false, false).unwrap();
        assert!(spelled.len() > 1 && !spelled.contains(&open));
        let mut c = v.constrain(&single).unwrap();
        assert!(!c.allowed().unwrap().is_allowed(spelled[0]) && c.allowed().unwrap().is_allowed(open));

        let named = ToolFormat::MistralArgs { open, args: args_id };
        let auto = grammar(named, &tools(ToolChoice::Auto, true));
        let two = "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]get_time[ARGS]{}";
        assert!(accepts(&v, &mistral, &auto, two));
        assert!(accepts(&v, &mistral, &auto, "Paris is sunny."));
        assert!(!accepts(&v, &mistral, &auto, "[TOOL_CALLS]get_wether[ARGS]{}"));
        assert!(!accepts(&v, &mistral, &auto, "[TOOL_CALLS]get_weather[ARGS]{\"town\": \"Paris\"}"));
        let only_time = grammar(named, &tools(ToolChoice::Named("get_time".into()), true));
        assert!(accepts(&v, &mistral, &only_time, "[TOOL_CALLS]get_time[ARGS]{}"));
        assert!(!accepts(&v, &mistral, &only_time, two));
    }

    const GPT_OSS: &str = include_str!("../tests/data/templates/gpt-oss.jinja");

    /// The test model's tokenizer with seven of its unused control tokens renamed to harmony's markers.
    fn harmony_tokenizer() -> (Tokenizer, HarmonyTokens) {
        let path = std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/exo/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let path = std::env::var_os("EXO_TEST_MODEL").map(std::path::PathBuf::from).unwrap_or(path);
        let mut meta = crate::Gguf::open(&path).unwrap().metadata;
        let Some(crate::gguf::Value::Array(tokens)) = meta.get_mut("tokenizer.ggml.tokens") else { panic!() };
        // <reponame> to <issue_closed>: control tokens the model never writes.
        for (id, marker) in (4..).zip([START, CHANNEL, MESSAGE, END, CONSTRAIN, "<|call|>", "<|return|>"]) {
            tokens[id] = crate::gguf::Value::String(marker.into());
        }
        let markers = HarmonyTokens { start: 4, channel: 5, message: 6, end: 7, constrain: 8 };
        (Tokenizer::from_metadata(&meta).unwrap(), markers)
    }

    #[test]
    fn gpt_oss_calls_are_found_read_and_rendered_one_per_turn() {
        let (harmony, markers) = harmony_tokenizer();
        let t = ChatTemplate::new(Some(GPT_OSS), "<|startoftext|>", "<|return|>").unwrap();
        let format = ToolFormat::detect(&t, &harmony);
        assert_eq!(format, ToolFormat::Harmony(markers));
        // Over a vocabulary without the markers, the template's calls cannot be constrained: Hermes's.
        assert_eq!(ToolFormat::detect(&t, &smollm()), ToolFormat::Hermes);
        assert!(format.preserved().is_empty() && !format.parallel());
        // What the reasoning splitter hands on, in either header order, however it is cut.
        parses_the_same_in_any_split(
            format,
            "to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}",
            &[call(0, "get_weather"), args(0, "{\"city\": \"Paris\"}")],
        );
        assert_eq!(
            joined(parse_as(format, &["to=functions.get_time<|channel|>commentary json<|message|>{}"])),
            vec![call(0, "get_time"), args(0, "{}")]
        );
        // Answer text is text; a call cut off in its header is text.
        assert_eq!(joined(parse_as(format, &["Sunny, 18 C."])), vec![text("Sunny, 18 C.")]);
        assert_eq!(joined(parse_as(format, &["to=functions.get_wea"])), vec![text("to=functions.get_wea")]);
        // History: two calls of one turn become two turns, each with its result.
        let p = prompt(format, &t, &two_calls_answered(), &tools(ToolChoice::Auto, true)).unwrap();
        let expected = "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>\
                        {\"city\": \"Paris\"}<|call|>\
                        <|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>\"18 C\"<|end|>\
                        <|start|>assistant to=functions.get_time<|channel|>commentary json<|message|>{}<|call|>\
                        <|start|>functions.get_time to=assistant<|channel|>commentary<|message|>\"noon\"<|end|>";
        assert!(p.text.contains(expected), "{}", p.text);
        assert!(p.text.contains("type get_weather = (_: {"), "the tools are listed: {}", p.text);
        assert!(p.text.ends_with("<|start|>assistant"));
    }

    #[test]
    fn the_gpt_oss_grammar_is_the_turn_with_calls_to_listed_tools_only() {
        let (harmony, markers) = harmony_tokenizer();
        let v = Vocabulary::new(&harmony).unwrap();
        let format = ToolFormat::Harmony(markers);
        let think = "<|channel|>analysis<|message|>The user wants the weather.<|end|><|start|>assistant";
        let call = "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}";
        let answer = "<|channel|>final<|message|>It is sunny.";
        let auto = grammar(format, &tools(ToolChoice::Auto, true));
        for good in [
            call.to_string(),
            format!("{think}{call}"),
            format!("{think}{answer}"),
            format!("{think}<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant{call}"),
        ] {
            assert!(accepts(&v, &harmony, &auto, &good), "auto refused {good}");
        }
        for bad in [
            "It is sunny.".to_string(),
            call.replace("get_weather", "get_wether"),
            call.replace("city", "town"),
            format!("{call}{call}"),
        ] {
            assert!(!accepts(&v, &harmony, &auto, &bad), "auto accepted {bad}");
        }
        let required = grammar(format, &tools(ToolChoice::Required, true));
        assert!(accepts(&v, &harmony, &required, &format!("{think}{call}")));
        assert!(accepts(&v, &harmony, &required, call));
        assert!(!accepts(&v, &harmony, &required, &format!("{think}{answer}")));
        assert!(!accepts(&v, &harmony, &required, &format!("{think}{think}{call}")));
        let named = grammar(format, &tools(ToolChoice::Named("get_time".into()), true));
        assert!(!accepts(&v, &harmony, &named, call));
        let time = "<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>{}";
        assert!(accepts(&v, &harmony, &named, time));
        // The turn opens with the channel marker (a token shown as its text, as llama.cpp shows it, so the same
        // text spelled in other tokens reads the same).
        let mut c = v.constrain(&required).unwrap();
        assert!(c.allowed().unwrap().is_allowed(markers.channel));
    }
}
