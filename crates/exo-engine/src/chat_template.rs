//! Rendering chat messages into a prompt with the model's own Jinja chat template.
//!
//! Templates are written for Hugging Face `transformers`, which renders them with Python's Jinja2, so this module
//! sets up minijinja to behave the same way: `trim_blocks` and `lstrip_blocks` on, a single trailing newline of
//! the template dropped, loop controls, Python string and dict methods (`.strip()`, `.split()`, `.items()`…),
//! the globals `raise_exception` and `strftime_now`, a `tojson` that writes what Python's `json.dumps` writes, and
//! `True`/`False`/`None` printed the Python way. The template is compiled once, when the [`ChatTemplate`] is built.
//! The caller tokenizes the rendered text; the tokenizer is consulted only for the BOS and EOS texts. Tools reach
//! the template as `tools` (OpenAI's list) and messages carry `tool_calls` and `tool_call_id` as transformers passes
//! them; documents are not supported: templates see them as `none`, as with `transformers` when none are given.
//!
//! A template comes from the model file, so it is untrusted code: one render may spend at most [`RENDER_FUEL`] of
//! minijinja's fuel (about one unit per instruction, and one per 64 bytes of data it makes), and write at most
//! [`MAX_PROMPT_BYTES`]; a template that loops or grows without end gets an error, not a hung or exhausted node.

use std::fmt::Write as _;
use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Enumerator, Kwargs, Object, Serde, ValueKind};
use minijinja::{context, Environment, ErrorKind, Value};

use crate::error::{EngineError, Result};
use crate::gguf::Gguf;
use crate::tokenizer::Tokenizer;

/// The GGUF metadata key holding the template.
const GGUF_KEY: &str = "tokenizer.chat_template";
/// The name the template is registered under; minijinja quotes it in error locations ("in chat_template:12").
const TEMPLATE_NAME: &str = "chat_template";
/// ChatML, for models whose file carries no template: the format of Qwen, SmolLM and many fine-tunes.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] \
                      + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' \
                      }}{% endif %}";
/// Deeper nesting than this in `tojson` is an error rather than a stack overflow.
const MAX_JSON_DEPTH: usize = 128;
/// The work one render may do, in minijinja's fuel: about one per instruction, one per 64 bytes of data made.
/// Real templates spend a few hundred per message (the longest conversations, tools included, well under a
/// million); this takes a fraction of a second to spend, and bounds what a render allocates to about 640 MB.
pub const RENDER_FUEL: u64 = 10_000_000;
/// The longest prompt a render may write: 16 MiB is millions of tokens, more than any context holds.
pub const MAX_PROMPT_BYTES: usize = 16 << 20;

/// What the functions and filters called from a template return.
type JinjaResult<T> = std::result::Result<T, minijinja::Error>;

/// One message of a conversation, as the OpenAI API and the templates see it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// The tools an assistant turn called.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a `tool` message: the call whose result it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message of plain text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into(), ..Self::default() }
    }
}

/// A call of a tool by the assistant, as templates see it (`tool_call.function.name`, `.arguments`: an object).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: serde_json::Value,
}

/// A conversation rendered for the assistant's next turn: the prompt, and the byte ranges in it that are the
/// messages' own words (to be tokenized as text: [`Tokenizer::encode_chat_with_text`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPrompt {
    pub text: String,
    pub message_text: Vec<std::ops::Range<usize>>,
}

impl ChatPrompt {
    /// The prompt's token ids.
    pub fn encode(&self, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
        tokenizer.encode_chat_with_text(&self.text, &self.message_text)
    }
}

/// `messages` with the system messages' text put before the first user message's (a blank line apart), for
/// templates without a system role; `None` when there is no system message or no user message to carry it.
fn merge_system(messages: &[ChatMessage]) -> Option<Vec<ChatMessage>> {
    let system: Vec<&str> = messages.iter().filter(|m| m.role == "system").map(|m| m.content.as_str()).collect();
    let first_user = messages.iter().position(|m| m.role == "user")?;
    if system.is_empty() {
        return None;
    }
    let mut merged: Vec<ChatMessage> = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        match m.role.as_str() {
            "system" => {}
            _ if i == first_user => {
                merged.push(ChatMessage { content: format!("{}\n\n{}", system.join("\n\n"), m.content), ..m.clone() })
            }
            _ => merged.push(m.clone()),
        }
    }
    Some(merged)
}

/// What stands in for message `i`'s text while the template is rendered to find where that text lands: private-use
/// characters no message holds (messages holding them are not located this way).
fn stand_in(i: usize) -> String {
    format!("\u{F8FF}exo-message-{i}\u{F8FE}")
}

/// A compiled chat template together with the special-token texts it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    is_default: bool,
}

impl ChatTemplate {
    /// The model's `tokenizer.chat_template`, or ChatML when the file has none; the texts of the model's BOS and EOS
    /// tokens are passed to the template as `bos_token` and `eos_token`.
    pub fn from_gguf(gguf: &Gguf, tokenizer: &Tokenizer) -> Result<Self> {
        let text = |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or_default();
        let (bos_token, eos_token) = (text(tokenizer.bos_id()), text(tokenizer.eos_id()));
        let source = match gguf.get(GGUF_KEY) {
            None => None,
            Some(value) => Some(value.as_str().ok_or_else(|| EngineError::Metadata {
                path: gguf.path.display().to_string(),
                key: GGUF_KEY.to_string(),
                found: gguf.describe(GGUF_KEY),
                expected: "a string".to_string(),
            })?),
        };
        Self::new(source, bos_token, eos_token)
    }

    /// Compiles `source` (ChatML when `None` or blank); a syntax error is reported here, not at the first render.
    pub fn new(source: Option<&str>, bos_token: &str, eos_token: &str) -> Result<Self> {
        let (source, is_default) = match source {
            Some(s) if !s.trim().is_empty() => (s, false),
            _ => (CHATML, true),
        };
        let env = hf_environment(source.to_string())?;
        Ok(Self { env, bos_token: bos_token.to_string(), eos_token: eos_token.to_string(), is_default })
    }

    /// True when the ChatML fallback is used because the model has no template of its own.
    pub fn is_default(&self) -> bool {
        self.is_default
    }

    /// Whether the template's source (ChatML's when the model has none) contains `text`.
    pub fn mentions(&self, text: &str) -> bool {
        self.env
            .get_template(TEMPLATE_NAME)
            .expect("the template was added when the ChatTemplate was built")
            .source()
            .contains(text)
    }

    /// The prompt for `messages`; with `add_generation_prompt` it ends with the header of the assistant's turn.
    /// A template that rejects the conversation (e.g. roles that do not alternate) gives an error carrying its
    /// message.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_tools(messages, add_generation_prompt, &Value::from(()))
    }

    /// As [`ChatTemplate::render`], with `tools` (`none`, or a list of `{"type": "function", "function": {...}}`).
    fn render_tools(&self, messages: &[ChatMessage], add_generation_prompt: bool, tools: &Value) -> Result<String> {
        self.render_context(self.context(messages, add_generation_prompt, tools.clone()))
    }

    /// The prompt for the assistant's next turn after `messages`, as llama-server builds it:
    /// - a last message from the assistant is continued, not closed and answered anew (a "prefill": the rest is
    ///   rendered with the generation prompt and that message's text follows it);
    /// - a template that refuses a system message (as Gemma 2's does) gets it merged into the first user message,
    ///   a blank line before the user's text;
    /// - where each message's text lands in the prompt is found (rendering it once more with stand-ins in place of
    ///   the texts), so that it can be tokenized as text. A template that changes the text it is given (trims it,
    ///   cuts reasoning out of it) renders differently with stand-ins; those messages' text is then searched for
    ///   in order instead.
    pub fn prompt(&self, messages: &[ChatMessage]) -> Result<ChatPrompt> {
        self.prompt_with_tools(messages, None)
    }

    /// As [`ChatTemplate::prompt`], the template given `tools` (OpenAI's `tools` list, each
    /// `{"type": "function", "function": {"name", "description", "parameters"}}`) to present as it presents them.
    pub fn prompt_with_tools(&self, messages: &[ChatMessage], tools: Option<&serde_json::Value>) -> Result<ChatPrompt> {
        let tools = tools.map_or_else(|| Value::from(()), |t| Value::from(Serde(t.clone())));
        let (history, prefill) = match messages.split_last() {
            Some((last, rest)) if last.role == "assistant" && !rest.is_empty() => (rest, Some(last.content.as_str())),
            _ => (messages, None),
        };
        let mut history = std::borrow::Cow::Borrowed(history);
        let mut text = match self.render_tools(&history, true, &tools) {
            Ok(text) => text,
            Err(first) => match merge_system(&history) {
                Some(merged) => match self.render_tools(&merged, true, &tools) {
                    Ok(text) => {
                        history = std::borrow::Cow::Owned(merged);
                        text
                    }
                    Err(_) => return Err(first),
                },
                None => return Err(first),
            },
        };
        let mut message_text = self.locate(&history, &text, &tools);
        if let Some(prefill) = prefill {
            message_text.push(text.len()..text.len() + prefill.len());
            text.push_str(prefill);
        }
        Ok(ChatPrompt { text, message_text })
    }

    /// Where each message's text lies in `rendered` (see [`ChatTemplate::prompt`]).
    fn locate(&self, messages: &[ChatMessage], rendered: &str, tools: &Value) -> Vec<std::ops::Range<usize>> {
        let usable = |m: &ChatMessage| !m.content.is_empty() && !m.content.contains(['\u{F8FF}', '\u{F8FE}']);
        let stand_ins: Vec<ChatMessage> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| ChatMessage { content: if usable(m) { stand_in(i) } else { m.content.clone() }, ..m.clone() })
            .collect();
        if let Ok(template) = self.render_tools(&stand_ins, true, tools) {
            // Put each text where its stand-in is; if that gives back the real prompt, those are the places.
            let mut rebuilt = String::with_capacity(rendered.len());
            let mut ranges = Vec::new();
            let mut rest = template.as_str();
            for (i, m) in messages.iter().enumerate().filter(|(_, m)| usable(m)) {
                let mark = stand_in(i);
                let Some(at) = rest.find(&mark) else { continue };
                rebuilt.push_str(&rest[..at]);
                ranges.push(rebuilt.len()..rebuilt.len() + m.content.len());
                rebuilt.push_str(&m.content);
                rest = &rest[at + mark.len()..];
            }
            rebuilt.push_str(rest);
            if rebuilt == rendered {
                return ranges;
            }
        }
        // The template changed the texts: search for each (or its trimmed self) after the previous one.
        let mut ranges = Vec::new();
        let mut from = 0;
        for m in messages.iter().filter(|m| usable(m)) {
            for needle in [m.content.as_str(), m.content.trim()] {
                if let Some(at) = rendered[from..].find(needle).filter(|_| !needle.is_empty()) {
                    ranges.push(from + at..from + at + needle.len());
                    from += at + needle.len();
                    break;
                }
            }
        }
        ranges
    }

    /// The variables transformers gives a template. `tools` and `documents` are always defined (`None` when
    /// absent), as there, because templates test `is defined` on them.
    fn context(&self, messages: &[ChatMessage], add_generation_prompt: bool, tools: Value) -> Value {
        context! {
            messages => Value::from_iter(messages.iter().map(|m| Value::from_object(TemplateMessage(m.clone())))),
            add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            tools,
            documents => (),
        }
    }

    fn render_context(&self, ctx: Value) -> Result<String> {
        let template =
            self.env.get_template(TEMPLATE_NAME).expect("the template was added when the ChatTemplate was built");
        let mut out = CappedOutput { bytes: Vec::new(), over: false };
        match template.render_captured_to(ctx, &mut out) {
            Ok(_) => {}
            Err(_) if out.over => {
                return Err(EngineError::ChatTemplate(format!(
                    "the template wrote more than {} MiB, more than any prompt; it was stopped",
                    MAX_PROMPT_BYTES >> 20
                )))
            }
            Err(e) if e.kind() == ErrorKind::OutOfFuel => {
                return Err(EngineError::ChatTemplate(format!(
                    "the template did more work than any prompt needs ({RENDER_FUEL} steps) and was stopped: it \
                     may loop without end"
                )))
            }
            Err(e) => return Err(EngineError::ChatTemplate(format!("rendering failed: {e}"))),
        }
        // minijinja writes only whole `str`s.
        String::from_utf8(out.bytes)
            .map_err(|_| EngineError::ChatTemplate("rendering failed: the output is not valid UTF-8".into()))
    }
}

/// The render's output, refusing to grow past [`MAX_PROMPT_BYTES`].
struct CappedOutput {
    bytes: Vec<u8>,
    over: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_PROMPT_BYTES {
            self.over = true;
            return Err(std::io::Error::other("the prompt is too long"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A message as templates see it: a map whose keys keep the order `role`, `content` like the Python dicts
/// transformers passes (minijinja's own maps are sorted), so `message | tojson` comes out the same.
#[derive(Debug)]
struct TemplateMessage(ChatMessage);

impl Object for TemplateMessage {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let m = &self.0;
        match key.as_str()? {
            "role" => Some(Value::from(m.role.as_str())),
            "content" => Some(Value::from(m.content.as_str())),
            // OpenAI's shape, which templates read: `tool_call.function.name`, `.function.arguments`.
            "tool_calls" if !m.tool_calls.is_empty() => Some(Value::from_iter(m.tool_calls.iter().map(|c| {
                Value::from(Serde(serde_json::json!({
                    "id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}
                })))
            }))),
            "tool_call_id" => m.tool_call_id.as_deref().map(Value::from),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match (self.0.tool_calls.is_empty(), self.0.tool_call_id.is_some()) {
            (true, false) => Enumerator::Str(&["role", "content"]),
            (false, false) => Enumerator::Str(&["role", "content", "tool_calls"]),
            (true, true) => Enumerator::Str(&["role", "content", "tool_call_id"]),
            (false, true) => Enumerator::Str(&["role", "content", "tool_calls", "tool_call_id"]),
        }
    }
}

/// An environment configured like transformers' (`ImmutableSandboxedEnvironment(trim_blocks=True,
/// lstrip_blocks=True)` plus its globals and filters), holding the compiled template.
fn hf_environment(source: String) -> Result<Environment<'static>> {
    let mut env = Environment::new();
    env.set_fuel(Some(RENDER_FUEL));
    // Jinja2's default keep_trailing_newline=False is also minijinja's; set explicitly because it changes output.
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(false)
        .build()
        .expect("the default delimiters are valid");
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(python_formatter);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.add_template_owned(TEMPLATE_NAME, source)
        .map_err(|e| EngineError::ChatTemplate(format!("the template does not compile: {e}")))?;
    Ok(env)
}

/// Prints booleans and none as Python's `str()` does (`True`, `None`); everything else as minijinja does.
fn python_formatter(out: &mut minijinja::Output, state: &mut minijinja::State, value: &Value) -> JinjaResult<()> {
    let python = match value.kind() {
        ValueKind::Bool if value.is_true() => "True",
        ValueKind::Bool => "False",
        ValueKind::None => "None",
        _ => return minijinja::escape_formatter(out, state, value),
    };
    out.write_str(python).map_err(|_| minijinja::Error::new(ErrorKind::WriteFailure, "cannot write output"))
}

/// `raise_exception(message)`: templates call it to refuse a conversation they cannot format.
fn raise_exception(message: String) -> JinjaResult<Value> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: the local time formatted with a C `strftime` format, as Python's
/// `datetime.now().strftime(format)`.
fn strftime_now(format: &str) -> JinjaResult<String> {
    let mut out = String::new();
    // chrono reports an unknown `%` directive as a formatting error (and `to_string()` would panic on it).
    write!(out, "{}", chrono::Local::now().format(format)).map_err(|_| {
        minijinja::Error::new(ErrorKind::InvalidOperation, format!("strftime_now: invalid format {format:?}"))
    })?;
    Ok(out)
}

/// `tojson` as transformers overrides it: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, i.e. no HTML escaping and Python's separators (`", "` and `": "`).
fn tojson(value: &Value, kwargs: Kwargs) -> JinjaResult<Value> {
    let invalid = |msg: &str| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {msg}"));
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_str(), v.as_i64()) {
            (Some(s), _) => Some(s.to_string()),
            (None, Some(n)) => Some(" ".repeat(usize::try_from(n).unwrap_or(0))),
            _ => return Err(invalid("indent must be a number or a string")),
        },
    };
    let (item_separator, key_separator) = match kwargs.get::<Option<Vec<String>>>("separators")? {
        None => (if indent.is_some() { "," } else { ", " }.to_string(), ": ".to_string()),
        Some(pair) => match <[String; 2]>::try_from(pair) {
            Ok([item, key]) => (item, key),
            Err(_) => return Err(invalid("separators must be a pair of strings")),
        },
    };
    let options = JsonOptions {
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        indent,
        item_separator,
        key_separator,
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, value, &options, 0)?;
    Ok(Value::from(out))
}

/// The options of Python's `json.dumps` that templates use.
struct JsonOptions {
    ensure_ascii: bool,
    sort_keys: bool,
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
}

impl JsonOptions {
    /// `json.dumps` with no options.
    fn plain() -> Self {
        Self {
            ensure_ascii: false,
            sort_keys: false,
            indent: None,
            item_separator: ", ".to_string(),
            key_separator: ": ".to_string(),
        }
    }
}

/// Writes `value` as Python's `json.dumps` would. Map keys come in the map's own order: `role`, `content` for
/// messages, but sorted for maps built by minijinja (from template literals or serde), which do not keep
/// insertion order as Python dicts do.
fn write_json(out: &mut String, value: &Value, options: &JsonOptions, depth: usize) -> JinjaResult<()> {
    if depth > MAX_JSON_DEPTH {
        return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: value is nested too deeply"));
    }
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_json_number(out, value),
        ValueKind::String | ValueKind::Plain => write_json_string(out, &value.to_string(), options.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable | ValueKind::Bytes => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_json_container(out, ('[', ']'), items.len(), options, depth, |out, i| {
                write_json(out, &items[i], options, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((json_key(&key)?, item));
            }
            if options.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_json_container(out, ('{', '}'), entries.len(), options, depth, |out, i| {
                write_json_string(out, &entries[i].0, options.ensure_ascii);
                out.push_str(&options.key_separator);
                write_json(out, &entries[i].1, options, depth + 1)
            })?;
        }
        ValueKind::Invalid => {
            return Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: invalid value {value}")))
        }
        // A kind added to minijinja later: its string form is the best JSON we can give.
        _ => write_json_string(out, &value.to_string(), options.ensure_ascii),
    }
    Ok(())
}

/// Writes `open`, the `len` items (each by `write_item`) with separators and indentation, and `close`.
fn write_json_container(
    out: &mut String,
    (open, close): (char, char),
    len: usize,
    options: &JsonOptions,
    depth: usize,
    mut write_item: impl FnMut(&mut String, usize) -> JinjaResult<()>,
) -> JinjaResult<()> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(indent) = &options.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
    };
    for i in 0..len {
        if i > 0 {
            out.push_str(&options.item_separator);
        }
        newline(out, depth + 1);
        write_item(out, i)?;
    }
    newline(out, depth);
    out.push(close);
    Ok(())
}

/// A map key as Python's json.dumps turns it into a string.
fn json_key(key: &Value) -> JinjaResult<String> {
    match key.kind() {
        ValueKind::String => Ok(key.to_string()),
        ValueKind::Number | ValueKind::Bool | ValueKind::None => {
            let mut s = String::new();
            write_json(&mut s, key, &JsonOptions::plain(), 0)?;
            Ok(s)
        }
        other => Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: a {other} cannot be a key"))),
    }
}

/// Integers as digits; floats as Python's `repr`: shortest round-trip digits, positional from 1e-4 up to 1e16,
/// scientific (`1e+16`, `1.5e-05`) outside, and `NaN`/`Infinity` for the values JSON lacks.
fn write_json_number(out: &mut String, value: &Value) {
    if value.is_integer() {
        let _ = write!(out, "{value}");
        return;
    }
    let f = f64::try_from(value.clone()).unwrap_or(f64::NAN);
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        let scientific = format!("{f:e}");
        let (mantissa, exponent) = scientific.split_once('e').expect("`{:e}` output has an exponent");
        let exponent: i32 = exponent.parse().expect("`{:e}` output has an integer exponent");
        if f == 0.0 || (-4..16).contains(&exponent) {
            let positional = f.to_string();
            out.push_str(&positional);
            if !positional.contains('.') {
                out.push_str(".0");
            }
        } else {
            let sign = if exponent < 0 { '-' } else { '+' };
            let _ = write!(out, "{mantissa}e{sign}{:02}", exponent.abs());
        }
    }
}

/// A JSON string literal with Python's escapes; with `ensure_ascii`, non-ASCII as `\uXXXX` (surrogate pairs
/// above U+FFFF).
fn write_json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// meta-llama/Llama-3.2-1B-Instruct's template, verbatim.
    const LLAMA_3_2: &str = include_str!("../tests/data/templates/llama-3.2.jinja");

    /// Qwen/Qwen2.5-7B-Instruct's template, verbatim.
    const QWEN_2_5: &str = r##"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"##;

    /// mistralai/Mixtral-8x7B-Instruct-v0.1's template, verbatim.
    const MISTRAL: &str = r##"{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"##;

    /// An OpenAI-style tool whose keys are already in sorted order at every level, so Python's insertion order
    /// and minijinja's sorted maps agree and the expected JSON is what transformers would print.
    fn weather_tool() -> serde_json::Value {
        serde_json::json!({
            "function": {
                "description": "Get the weather",
                "name": "get_weather",
                "parameters": {"properties": {"city": {"type": "string"}}, "required": ["city"], "type": "object"}
            },
            "type": "function"
        })
    }

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage::new(role, content)
    }

    fn template(source: &str) -> ChatTemplate {
        ChatTemplate::new(Some(source), "<s>", "</s>").expect("test template compiles")
    }

    fn render_with_tools(t: &ChatTemplate, messages: &[ChatMessage], tools: serde_json::Value) -> Result<String> {
        t.render_context(t.context(messages, true, Value::from(Serde(tools))))
    }

    /// Renders, checking the date the template asked for against the clock before and after, so a render that
    /// straddles midnight still passes. `expected` has `{date}` where the date goes.
    fn assert_renders_with_today(render: impl Fn() -> String, expected: &str) {
        let today = || chrono::Local::now().format("%d %b %Y").to_string();
        let before = today();
        let rendered = render();
        let after = today();
        assert!(
            rendered == expected.replace("{date}", &before) || rendered == expected.replace("{date}", &after),
            "rendered:\n{rendered:?}\nexpected (date {before}):\n{:?}",
            expected.replace("{date}", &before)
        );
    }

    #[test]
    fn chatml_is_used_when_there_is_no_template() {
        let t = ChatTemplate::new(None, "<s>", "</s>").unwrap();
        assert!(t.is_default());
        let messages = [msg("system", "Be kind."), msg("user", "Hi")];
        assert_eq!(
            t.render(&messages, true).unwrap(),
            "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            t.render(&messages, false).unwrap(),
            "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
        assert!(ChatTemplate::new(Some("  \n"), "", "").unwrap().is_default());
        assert!(!template("{{ messages }}").is_default());
    }

    #[test]
    fn llama3_renders_bos_trimmed_system_and_todays_date() {
        let t = ChatTemplate::new(Some(LLAMA_3_2), "<|begin_of_text|>", "<|eot_id|>").unwrap();
        let messages = [msg("system", "You are terse.  "), msg("user", " Hi there \n")];
        assert_renders_with_today(
            || t.render(&messages, true).unwrap(),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
             Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n\
             You are terse.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n",
        );
    }

    #[test]
    fn llama3_without_system_message_has_an_empty_system_block() {
        let t = ChatTemplate::new(Some(LLAMA_3_2), "<|begin_of_text|>", "<|eot_id|>").unwrap();
        let messages = [msg("user", "Hi"), msg("assistant", "Hello!"), msg("user", "Bye")];
        assert_renders_with_today(
            || t.render(&messages, false).unwrap(),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
             Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>",
        );
    }

    #[test]
    fn llama3_tools_go_into_the_first_user_message_as_indented_json() {
        let t = ChatTemplate::new(Some(LLAMA_3_2), "<|begin_of_text|>", "<|eot_id|>").unwrap();
        let messages = [msg("user", "Weather in Paris?")];
        let tool_json = r#"{
    "function": {
        "description": "Get the weather",
        "name": "get_weather",
        "parameters": {
            "properties": {
                "city": {
                    "type": "string"
                }
            },
            "required": [
                "city"
            ],
            "type": "object"
        }
    },
    "type": "function"
}"#;
        let expected = format!(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
             Environment: ipython\nCutting Knowledge Date: December 2023\nToday Date: {{date}}\n\n<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\n\
             Given the following functions, please respond with a JSON for a function call \
             with its proper arguments that best answers the given prompt.\n\n\
             Respond in the format {{\"name\": function name, \"parameters\": dictionary of argument name and its \
             value}}.Do not use variables.\n\n{tool_json}\n\nWeather in Paris?<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_renders_with_today(
            || render_with_tools(&t, &messages, serde_json::json!([weather_tool()])).unwrap(),
            &expected,
        );
    }

    #[test]
    fn llama3_raise_exception_surfaces_its_message() {
        let t = ChatTemplate::new(Some(LLAMA_3_2), "<|begin_of_text|>", "<|eot_id|>").unwrap();
        let err = render_with_tools(&t, &[msg("system", "S")], serde_json::json!([weather_tool()])).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, EngineError::ChatTemplate(_)), "{err:?}");
        assert!(
            text.contains("Cannot put tools in the first user message when there's no first user message!"),
            "{text}"
        );
    }

    /// gpt-oss's own template (harmony): a system message with the date and reasoning effort, the request's system
    /// prompt as the developer's instructions, and the turn handed to the assistant, whose output then starts with
    /// a channel header (so the reasoning splitter reads it as harmony). An earlier answer renders on the final
    /// channel.
    #[test]
    fn gpt_oss_harmony_template_hands_the_turn_to_the_assistant() {
        const GPT_OSS: &str = include_str!("../tests/data/templates/gpt-oss.jinja");
        let t = ChatTemplate::new(Some(GPT_OSS), "<|startoftext|>", "<|return|>").unwrap();
        let messages = [msg("system", "Be brief."), msg("user", "Hi"), msg("assistant", "Hello!"), msg("user", "2+2?")];
        let out = t.render(&messages, true).unwrap();
        let date = strftime_now("%Y-%m-%d").unwrap();
        let expected = format!(
            "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n\
             Knowledge cutoff: 2024-06\nCurrent date: {date}\n\nReasoning: medium\n\n\
             # Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>\
             <|start|>developer<|message|># Instructions\n\nBe brief.\n\n<|end|>\
             <|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>final<|message|>Hello!<|end|>\
             <|start|>user<|message|>2+2?<|end|><|start|>assistant"
        );
        assert_eq!(out, expected);
        assert_eq!(crate::reasoning::ThinkStart::after_prompt(&out), crate::reasoning::ThinkStart::Harmony);
    }

    /// Where each message's text lands: exactly, for a template that writes it as given.
    #[test]
    fn a_prompt_knows_where_each_messages_text_is() {
        let t = ChatTemplate::new(None, "<s>", "</s>").unwrap();
        let messages = [msg("system", "Be brief."), msg("user", "Hi <|im_end|> there")];
        let p = t.prompt(&messages).unwrap();
        assert_eq!(p.text, t.render(&messages, true).unwrap());
        let spans: Vec<&str> = p.message_text.iter().map(|r| &p.text[r.clone()]).collect();
        assert_eq!(spans, ["Be brief.", "Hi <|im_end|> there"]);
    }

    /// A last assistant message is continued: the rest with the generation prompt, then its text.
    #[test]
    fn a_last_assistant_message_is_a_prefill() {
        let t = ChatTemplate::new(None, "<s>", "</s>").unwrap();
        let p = t.prompt(&[msg("user", "Name a color."), msg("assistant", "The color is")]).unwrap();
        assert_eq!(p.text, "<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\nThe color is");
        assert_eq!(&p.text[p.message_text[1].clone()], "The color is");
        // An earlier assistant message is history as usual.
        let p = t.prompt(&[msg("user", "a"), msg("assistant", "b"), msg("user", "c")]).unwrap();
        assert!(p.text.ends_with("<|im_start|>user\nc<|im_end|>\n<|im_start|>assistant\n"), "{}", p.text);
    }

    /// A template without a system role (as Gemma 2's) gets the system text merged into the first user message;
    /// this one trims the texts it is given, so their places are found by searching.
    #[test]
    fn a_system_message_is_merged_where_the_template_has_no_system_role() {
        const NO_SYSTEM: &str = "{% for m in messages %}{% if m.role == 'system' %}\
            {{ raise_exception('System role not supported') }}{% endif %}\
            <start_of_turn>{{ m.role }}\n{{ m.content | trim }}<end_of_turn>\n{% endfor %}\
            {% if add_generation_prompt %}<start_of_turn>model\n{% endif %}";
        let t = ChatTemplate::new(Some(NO_SYSTEM), "<bos>", "<eos>").unwrap();
        let p = t.prompt(&[msg("system", "Be brief."), msg("user", " Hi ")]).unwrap();
        assert_eq!(p.text, "<start_of_turn>user\nBe brief.\n\n Hi<end_of_turn>\n<start_of_turn>model\n");
        assert_eq!(p.message_text.iter().map(|r| &p.text[r.clone()]).collect::<Vec<_>>(), ["Be brief.\n\n Hi"]);
        // Without a system message the template's own error stands.
        let alternating = "{{ raise_exception('roles must alternate') }}";
        let t = ChatTemplate::new(Some(alternating), "<bos>", "<eos>").unwrap();
        let err = t.prompt(&[msg("system", "S"), msg("user", "u")]).unwrap_err().to_string();
        assert!(err.contains("roles must alternate"), "{err}");
    }

    #[test]
    fn qwen25_adds_its_default_system_prompt() {
        let t = template(QWEN_2_5);
        assert_eq!(
            t.render(&[msg("user", "Hi")], true).unwrap(),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn qwen25_groups_consecutive_tool_results_using_loop_index0() {
        let t = template(QWEN_2_5);
        let messages = [
            msg("system", "Be brief."),
            msg("user", "Q"),
            msg("assistant", "A"),
            msg("tool", "r1"),
            msg("tool", "r2"),
            msg("user", "Next"),
        ];
        assert_eq!(
            t.render(&messages, true).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n\
             <|im_start|>assistant\nA<|im_end|>\n\
             <|im_start|>user\n<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n</tool_response><|im_end|>\n\
             <|im_start|>user\nNext<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn qwen25_tools_branch_lists_tools_as_python_json() {
        let t = template(QWEN_2_5);
        let rendered = render_with_tools(&t, &[msg("user", "Weather?")], serde_json::json!([weather_tool()])).unwrap();
        assert_eq!(
            rendered,
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\n\
             You may call one or more functions to assist with the user query.\n\n\
             You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n\
             {\"function\": {\"description\": \"Get the weather\", \"name\": \"get_weather\", \"parameters\": \
             {\"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"], \"type\": \"object\"}}, \
             \"type\": \"function\"}\n</tools>\n\n\
             For each function call, return a json object with function name and arguments within \
             <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": \
             <args-json-object>}\n</tool_call><|im_end|>\n\
             <|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn mistral_folds_the_system_message_into_the_first_instruction() {
        let t = template(MISTRAL);
        let messages = [msg("system", "S"), msg("user", "U1"), msg("assistant", "A1"), msg("user", "U2")];
        assert_eq!(t.render(&messages, true).unwrap(), "<s> [INST] S\n\nU1 [/INST] A1</s> [INST] U2 [/INST]");
    }

    #[test]
    fn mistral_rejects_roles_that_do_not_alternate_with_its_message() {
        let t = template(MISTRAL);
        let err = t.render(&[msg("user", "one"), msg("user", "two")], true).unwrap_err().to_string();
        assert!(
            err.contains(
                "After the optional system message, conversation roles must alternate user/assistant/user/assistant/..."
            ),
            "{err}"
        );
        let err = t.render(&[msg("user", "one"), msg("tool", "x")], true).unwrap_err().to_string();
        assert!(err.contains("Only user and assistant roles are supported"), "{err}");
    }

    #[test]
    fn python_string_methods_namespace_and_loop_controls_work() {
        let t = template(
            r#"{%- set ns = namespace(turns=0) %}
{%- for message in messages %}
    {%- if message.role == 'system' %}
        {%- continue %}
    {%- endif %}
    {%- if message.content.startswith('/stop') %}
        {%- break %}
    {%- endif %}
    {%- set ns.turns = ns.turns + 1 %}
    {{- message.role.title() + ': ' + message.content.strip() + ' (' + message.content.split() | length | string + ' words)\n' }}
{%- endfor %}
{{- ns.turns }} {{ ns.turns > 1 }} {{ none }}"#,
        );
        let messages = [
            msg("system", "ignored"),
            msg("user", "  hello there  "),
            msg("assistant", "general kenobi"),
            msg("user", "/stop now"),
            msg("user", "never reached"),
        ];
        assert_eq!(
            t.render(&messages, false).unwrap(),
            "User: hello there (2 words)\nAssistant: general kenobi (2 words)\n2 True None"
        );
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        // Python keeps a dict's keys in the order they were written: `{"b": 1, "a": 2}` stays so.
        let t = template(
            r#"{{ messages | tojson }}|{{ {"a": "é\"\n", "b": [1, 2.5, true, none]} | tojson }}|{{ {"x": {"y": []}} | tojson(indent=2) }}|{{ "é" | tojson(ensure_ascii=true) }}|{{ "<a&b>" | tojson }}|{{ [1.0, 1e20, 0.00001, 123.456, -0.5] | tojson }}|{{ {"b": 1, "a": 2} | tojson(separators=[",", ":"]) }}"#,
        );
        assert_eq!(
            t.render(&[msg("user", "Hi")], false).unwrap(),
            r#"[{"role": "user", "content": "Hi"}]|{"a": "é\"\n", "b": [1, 2.5, true, null]}|{
  "x": {
    "y": []
  }
}|"\u00e9"|"<a&b>"|[1.0, 1e+20, 1e-05, 123.456, -0.5]|{"b":1,"a":2}"#
        );
    }

    #[test]
    fn strftime_now_formats_the_local_time_and_rejects_bad_formats() {
        let year = chrono::Local::now().format("%Y").to_string();
        assert_eq!(template("{{ strftime_now('%Y') }}").render(&[], false).unwrap(), year);
        let err = template("{{ strftime_now('%Y %Q') }}").render(&[], false).unwrap_err().to_string();
        assert!(err.contains("strftime_now"), "{err}");
    }

    #[test]
    fn whitespace_control_matches_jinja2_as_transformers_configures_it() {
        // lstrip_blocks removes the indentation before a block tag, trim_blocks the newline after it.
        assert_eq!(template("  {% if true %}a{% endif %}\nb").render(&[], false).unwrap(), "ab");
        assert_eq!(template("{% if true %}\n    x\n{% endif %}\n").render(&[], false).unwrap(), "    x\n");
        // A variable tag is not a block: the newline after it stays.
        assert_eq!(template("{{ 'a' }}\nb").render(&[], false).unwrap(), "a\nb");
        // keep_trailing_newline=False drops exactly one trailing newline of the template.
        assert_eq!(template("x\n").render(&[], false).unwrap(), "x");
        assert_eq!(template("x\n\n").render(&[], false).unwrap(), "x\n");
    }

    #[test]
    fn special_tokens_and_add_generation_prompt_are_visible_to_the_template() {
        let t = template("{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ tools }}|{{ documents }}");
        assert_eq!(t.render(&[], true).unwrap(), "<s>|</s>|True|None|None");
    }

    #[test]
    fn chat_template_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ChatTemplate>();
    }

    #[test]
    fn syntax_errors_are_reported_when_the_template_is_built() {
        let err = ChatTemplate::new(Some("{% for m in messages %}{{ m.content }}"), "", "").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, EngineError::ChatTemplate(_)), "{err:?}");
        assert!(text.contains("does not compile") && text.contains("syntax error"), "{text}");
    }

    #[test]
    fn template_runtime_errors_become_errors_not_panics() {
        let t = template("{{ messages[0].content.no_such_method() }}");
        assert!(matches!(t.render(&[msg("user", "x")], false), Err(EngineError::ChatTemplate(_))));
        let t = template("{{ messages[5].content.strip() }}");
        assert!(t.render(&[], false).is_err());
    }

    #[test]
    fn a_template_that_loops_without_end_is_stopped() {
        // Ten billion iterations: without a bound on its work, the render would run for hours.
        let t = template("{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}");
        let started = std::time::Instant::now();
        let e = t.render(&[msg("user", "hi")], true).unwrap_err();
        assert!(matches!(e, EngineError::ChatTemplate(_)), "{e}");
        assert!(e.to_string().contains("more work than any prompt needs"), "{e}");
        eprintln!("stopped after {:?}", started.elapsed());
        // A single range too long for minijinja is refused by minijinja itself.
        assert!(template("{% for i in range(100000000) %}x{% endfor %}").render(&[], false).is_err());
    }

    #[test]
    fn a_template_that_writes_more_than_any_prompt_is_stopped() {
        // 64 MiB of output in 64 writes of 1 MiB: cheap in fuel, stopped by the length of the output.
        let t = template("{% for i in range(64) %}{{ 'x' * 1048576 }}{% endfor %}");
        let e = t.render(&[], false).unwrap_err();
        assert!(matches!(e, EngineError::ChatTemplate(_)), "{e}");
        assert!(e.to_string().contains("more than 16 MiB"), "{e}");
        // Under the cap it renders.
        let t = template("{% for i in range(4) %}{{ 'x' * 1048576 }}{% endfor %}");
        assert_eq!(t.render(&[], false).unwrap().len(), 4 << 20);
    }

    #[test]
    fn a_long_conversation_renders_within_the_fuel() {
        let t = template(LLAMA_3_2);
        let messages: Vec<ChatMessage> =
            (0..2000).map(|i| msg(if i % 2 == 0 { "user" } else { "assistant" }, &"word ".repeat(200))).collect();
        let prompt = t.render(&messages, true).unwrap();
        assert!(prompt.len() > 2000 * 1000, "{}", prompt.len());
    }
}
