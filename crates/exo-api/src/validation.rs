//! Request validation: the bodies of `/v1/chat/completions` and `/v1/completions` become checked requests, or an
//! [`ApiError`] that names the field and says what was expected.
//!
//! Every parameter is checked here and nowhere else. Fields this server does not use (`user`, `metadata`, …) are
//! ignored, as OpenAI-compatible servers do; `null` counts as absent. `response_format` constrains the answer to
//! JSON (a schema's features are checked when the job compiles it); `tools`, `tool_choice` and
//! `parallel_tool_calls` say which calls the model may make (the tools' schemas are checked when the job
//! compiles them). Sampling defaults are llama.cpp's
//! (`llama-server`): temperature 0.8, top_k 40, top_p 0.95, min_p 0.05. llama-server's own names (`n_predict`,
//! `repeat_penalty`, `repeat_last_n`, `n_probs`) and its conventions (-1 for "no limit" or "a random seed") are
//! taken as llama.cpp's front-ends send them.

use exo_engine::chat_template::{ChatMessage, ToolCall};
use exo_engine::generation::GenerationParams;
use exo_engine::sampler::SamplingParams;
use exo_engine::tool_calls::{Tool, ToolChoice, Tools};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Most stop strings a request may give.
pub const MAX_STOP_STRINGS: usize = 16;
/// Most alternatives per token `top_logprobs` may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// What both endpoints take besides the prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub model: String,
    /// Most tokens to generate; `None`: until the context is full.
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stream: bool,
    /// Send a usage chunk before `[DONE]` (`stream_options.include_usage`).
    pub include_usage: bool,
    /// Log-probabilities: `None` for none, `Some(k)` for the chosen token's and the `k` most likely.
    pub logprobs: Option<usize>,
    /// Where a thinking model's reasoning goes; always `None` for `/v1/completions`, whose raw text is never split.
    pub reasoning_format: ReasoningFormat,
    /// The JSON schema the whole answer must match (`response_format`); `{"type": "object"}` for any object.
    pub schema: Option<Value>,
    /// The tools the model may call (chat only; none when `tool_choice` is `"none"`).
    pub tools: Option<Tools>,
}

/// Where a thinking model's `<think>` reasoning goes (llama-server's `reasoning_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReasoningFormat {
    /// In `content` with the answer, tags and all (`"none"`).
    None,
    /// In `reasoning_content`, apart from the answer in `content` (`"deepseek"`, or `"auto"`, the default).
    #[default]
    Deepseek,
}

impl Options {
    /// The engine's generation parameters, with the token budget the caller worked out from the context.
    pub fn generation_params(&self, max_tokens: usize) -> GenerationParams {
        GenerationParams {
            max_tokens,
            sampling: self.sampling.clone(),
            stop: self.stop.clone(),
            ignore_eos: false,
            preserved: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub options: Options,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub prompt: String,
    pub options: Options,
}

/// Parses and checks a `/v1/chat/completions` body.
pub fn chat_request(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let object = json_object(body)?;
    let fields = Fields(&object);
    let messages = match fields.get("messages") {
        None => return Err(ApiError::field("messages", "messages is required")),
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ApiError::field("messages", "messages must hold at least one message"))
        }
        Some(Value::Array(items)) => items.iter().enumerate().map(|(i, m)| message(i, m)).collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::field("messages", "messages must be an array of messages")),
    };
    let logprobs = match fields.bool("logprobs")? {
        Some(true) => Some(fields.uint("top_logprobs", 0, MAX_TOP_LOGPROBS as u64)?.unwrap_or(0) as usize),
        _ if fields.get("top_logprobs").is_some() => {
            return Err(ApiError::field("top_logprobs", "top_logprobs needs logprobs set to true"))
        }
        // llama-server's n_probs: the chosen token's log-probability and the n most likely.
        _ => fields.uint("n_probs", 0, MAX_TOP_LOGPROBS as u64)?.map(|n| n as usize),
    };
    let reasoning_format = match fields.get("reasoning_format") {
        None => ReasoningFormat::default(),
        Some(Value::String(f)) if f == "none" => ReasoningFormat::None,
        Some(Value::String(f)) if f == "deepseek" || f == "auto" => ReasoningFormat::Deepseek,
        Some(v) => {
            return Err(ApiError::field(
                "reasoning_format",
                format!("reasoning_format must be one of \"none\", \"deepseek\", \"auto\", got {v}"),
            ))
        }
    };
    let tools = tools(&fields)?;
    let schema = response_format(fields.get("response_format"))?;
    if tools.is_some() && schema.is_some() {
        return Err(ApiError::field(
            "response_format",
            "response_format cannot be combined with tools on this server yet; give one or the other",
        ));
    }
    Ok(ChatRequest { messages, options: Options { reasoning_format, schema, tools, ..options(&fields, logprobs)? } })
}

/// Copies the fields of another API's request into the chat request it becomes, each `(theirs, ours)` under our
/// name, leaving out those absent or null.
pub(crate) fn copy_fields(from: &Map<String, Value>, to: &mut Map<String, Value>, names: &[(&str, &str)]) {
    for (theirs, ours) in names {
        if let Some(v) = from.get(*theirs).filter(|v| !v.is_null()) {
            to.insert((*ours).into(), v.clone());
        }
    }
}

/// The tools a chat offers (`tools`, `tool_choice`, `parallel_tool_calls`); none when there are none or
/// `tool_choice` is `"none"`.
fn tools(fields: &Fields<'_>) -> Result<Option<Tools>, ApiError> {
    let parallel = fields.bool("parallel_tool_calls")?.unwrap_or(true);
    let list = match fields.get("tools") {
        None => Vec::new(),
        Some(Value::Array(items)) => items.iter().enumerate().map(|(i, t)| tool(i, t)).collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::field("tools", "tools must be an array of function tools")),
    };
    let choice = match fields.get("tool_choice") {
        None => ToolChoice::Auto,
        Some(Value::String(c)) if c == "none" => return Ok(None),
        Some(Value::String(c)) if c == "auto" => ToolChoice::Auto,
        Some(Value::String(c)) if c == "required" => ToolChoice::Required,
        Some(Value::Object(o)) => match o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
            Some(name) if list.iter().any(|t: &Tool| t.name == name) => ToolChoice::Named(name.to_string()),
            Some(name) => {
                return Err(ApiError::field("tool_choice", format!("tool_choice names '{name}', which is not in tools")))
            }
            None => {
                return Err(ApiError::field(
                    "tool_choice",
                    "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                ))
            }
        },
        Some(c) => {
            return Err(ApiError::field(
                "tool_choice",
                format!("tool_choice must be \"none\", \"auto\", \"required\" or a named function, got {c}"),
            ))
        }
    };
    if list.is_empty() {
        return match choice {
            ToolChoice::Auto => Ok(None),
            _ => Err(ApiError::field("tool_choice", "tool_choice asks for a tool call, but tools is empty")),
        };
    }
    let mut names: Vec<&str> = list.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(ApiError::field("tools", format!("two tools are named '{}'", w[0])));
    }
    Ok(Some(Tools { tools: list, choice, parallel }))
}

/// `tools[i]`: `{"type": "function", "function": {"name", "description"?, "parameters"?, "strict"?}}`.
fn tool(i: usize, t: &Value) -> Result<Tool, ApiError> {
    let param = format!("tools[{i}]");
    let bad = |field: &str, m: String| Err(ApiError::field(&format!("{param}{field}"), m));
    match t.get("type").and_then(Value::as_str) {
        Some("function") => {}
        Some(other) => return bad(".type", format!("{param} is a '{other}' tool; only function tools are supported")),
        None => return bad(".type", format!("{param} needs \"type\": \"function\"")),
    }
    let Some(f) = t.get("function").and_then(Value::as_object) else {
        return bad(".function", format!("{param}.function must be an object with the function's name"));
    };
    let name = match f.get("name") {
        Some(Value::String(n))
            if !n.is_empty()
                && n.len() <= 64
                && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
        {
            n.clone()
        }
        Some(Value::String(n)) => {
            return bad(
                ".function.name",
                format!("{param}.function.name '{n}' must be 1 to 64 of a-z, A-Z, 0-9, _ and -"),
            )
        }
        _ => return bad(".function.name", format!("{param}.function.name must be a string")),
    };
    let description = match f.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => Some(d.clone()),
        Some(_) => return bad(".function.description", format!("{param}.function.description must be a string")),
    };
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            return bad(".function.parameters", format!("{param}.function.parameters must be a JSON schema object"))
        }
    };
    Ok(Tool { name, description, parameters })
}

/// `messages[i].tool_calls`: the calls an assistant turn made, each
/// `{"id", "type": "function", "function": {"name", "arguments": "<JSON text>"}}`.
fn tool_calls(param: &str, calls: Option<&Value>) -> Result<Vec<ToolCall>, ApiError> {
    let items = match calls {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ApiError::field(&format!("{param}.tool_calls"), format!("{param}.tool_calls must be an array")))
        }
    };
    let mut calls = Vec::with_capacity(items.len());
    for (j, c) in items.iter().enumerate() {
        let p = format!("{param}.tool_calls[{j}]");
        let function = c.get("function");
        let name = function.and_then(|f| f.get("name")).and_then(Value::as_str);
        let Some(name) = name else {
            return Err(ApiError::field(&p, format!("{p}.function.name must be a string")));
        };
        // The arguments come as JSON text; templates want the object. Text that is not JSON stays text.
        let arguments = match function.and_then(|f| f.get("arguments")) {
            None | Some(Value::Null) => serde_json::json!({}),
            Some(Value::String(text)) => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone())),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => return Err(ApiError::field(&p, format!("{p}.function.arguments must be a JSON string"))),
        };
        let id = c.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        calls.push(ToolCall { id, name: name.to_string(), arguments });
    }
    Ok(calls)
}

/// The schema `response_format` asks the answer to match: none for `text`, any object for `json_object`, the
/// given schema (strict or not: it is always followed) for `json_schema`.
fn response_format(format: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let bad = |m: String| Err(ApiError::field("response_format", m));
    let Some(format) = format else { return Ok(None) };
    let Some(object) = format.as_object() else {
        return bad(format!("response_format must be an object with a type, got {format}"));
    };
    match object.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(serde_json::json!({"type": "object"}))),
        Some("json_schema") => match object.get("json_schema") {
            Some(Value::Object(spec)) => match spec.get("schema") {
                None | Some(Value::Null) => Ok(Some(serde_json::json!({}))),
                Some(s @ Value::Object(_)) => Ok(Some(s.clone())),
                Some(s) => bad(format!("response_format.json_schema.schema must be a JSON schema object, got {s}")),
            },
            _ => bad("response_format json_schema needs a json_schema object holding the schema".into()),
        },
        _ => bad(format!(
            "response_format.type must be \"text\", \"json_object\" or \"json_schema\", got {}",
            object.get("type").unwrap_or(&Value::Null)
        )),
    }
}

/// Parses and checks a `/v1/completions` body.
pub fn completion_request(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    let object = json_object(body)?;
    let fields = Fields(&object);
    let prompt = match fields.get("prompt") {
        None => return Err(ApiError::field("prompt", "prompt is required")),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => match items.as_slice() {
            [Value::String(s)] => s.clone(),
            _ => return Err(ApiError::field("prompt", "prompt must be a string or an array of exactly one string")),
        },
        Some(_) => return Err(ApiError::field("prompt", "prompt must be a string")),
    };
    if prompt.is_empty() {
        return Err(ApiError::field("prompt", "prompt must not be empty"));
    }
    // The legacy completions API gives the number of alternatives in `logprobs` itself (at most 5); llama-server's
    // n_probs is taken too.
    let logprobs = match fields.uint("logprobs", 0, 5)? {
        Some(k) => Some(k as usize),
        None => fields.uint("n_probs", 0, MAX_TOP_LOGPROBS as u64)?.map(|n| n as usize),
    };
    let options = Options { reasoning_format: ReasoningFormat::None, ..options(&fields, logprobs)? };
    Ok(CompletionRequest { prompt, options })
}

fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::MalformedJson("the body must be a JSON object".into())),
        Err(e) => Err(ApiError::MalformedJson(e.to_string())),
    }
}

fn message(i: usize, m: &Value) -> Result<ChatMessage, ApiError> {
    let param = format!("messages[{i}]");
    let Value::Object(m) = m else {
        return Err(ApiError::field(&param, format!("{param} must be an object with role and content")));
    };
    let role = match m.get("role") {
        Some(Value::String(r)) if ["system", "developer", "user", "assistant", "tool"].contains(&r.as_str()) => r,
        Some(Value::String(r)) => {
            return Err(ApiError::field(
                &format!("{param}.role"),
                format!("{param}.role '{r}' is not one of system, developer, user, assistant, tool"),
            ))
        }
        _ => return Err(ApiError::field(&format!("{param}.role"), format!("{param}.role must be a string"))),
    };
    let content = match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        // An assistant turn that only called tools has no content.
        None | Some(Value::Null) if role == "assistant" => String::new(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let part_param = format!("{param}.content[{j}]");
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => {
                        // Parts are joined a line apart, as llama-server and Ollama join them.
                        if j > 0 {
                            text.push('\n');
                        }
                        text.push_str(t)
                    }
                    (Some("text"), None) => {
                        return Err(ApiError::field(&part_param, format!("{part_param} needs a string text")))
                    }
                    (Some(other), _) => {
                        return Err(ApiError::field(
                            &part_param,
                            format!("{part_param} is a '{other}' part; only text parts are supported"),
                        ))
                    }
                    (None, _) => return Err(ApiError::field(&part_param, format!("{part_param} needs a type"))),
                }
            }
            text
        }
        _ => {
            return Err(ApiError::field(
                &format!("{param}.content"),
                format!("{param}.content must be a string or an array of text parts"),
            ))
        }
    };
    let tool_calls = if role == "assistant" { tool_calls(&param, m.get("tool_calls"))? } else { Vec::new() };
    let tool_call_id = match m.get("tool_call_id") {
        Some(Value::String(id)) if role == "tool" => Some(id.clone()),
        _ => None,
    };
    // OpenAI's newer name for the system role; templates know only `system`.
    let role = if role == "developer" { "system".to_string() } else { role.clone() };
    Ok(ChatMessage { role, content, tool_calls, tool_call_id })
}

fn options(fields: &Fields<'_>, logprobs: Option<usize>) -> Result<Options, ApiError> {
    let model = match fields.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(Value::String(_)) | None => return Err(ApiError::field("model", "model is required")),
        Some(_) => return Err(ApiError::field("model", "model must be a string")),
    };
    if let Some(n) = fields.uint("n", 1, u64::MAX)? {
        if n != 1 {
            return Err(ApiError::field("n", format!("n must be 1 (one choice per request), got {n}")));
        }
    }
    // max_completion_tokens replaces max_tokens in OpenAI's current API; llama-server calls it n_predict. Any is
    // accepted, the first given of these three counting; -1 means no limit but the context.
    let mut max_tokens = None;
    for name in ["max_completion_tokens", "max_tokens", "n_predict"] {
        if let Some(n) = fields.count_or_unlimited(name)? {
            max_tokens = n.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
            break;
        }
    }

    let defaults = SamplingParams::default();
    let sampling = SamplingParams {
        temperature: fields.number("temperature", 0.0, 2.0, true)?.unwrap_or(defaults.temperature),
        // top_p 0 keeps only the most likely token; top_k 0 or -1 is off (llama.cpp's front-ends send -1).
        top_p: fields.number("top_p", 0.0, 1.0, true)?.unwrap_or(defaults.top_p),
        top_k: fields
            .count_or_unlimited("top_k")?
            .map_or(defaults.top_k, |k| k.map_or(0, |k| k.min(u32::MAX as u64) as usize)),
        min_p: fields.number("min_p", 0.0, 1.0, true)?.unwrap_or(defaults.min_p),
        presence_penalty: fields.number("presence_penalty", -2.0, 2.0, true)?.unwrap_or(defaults.presence_penalty),
        frequency_penalty: fields.number("frequency_penalty", -2.0, 2.0, true)?.unwrap_or(defaults.frequency_penalty),
        repeat_penalty: match fields.number("repetition_penalty", 0.0, 10.0, false)? {
            Some(p) => p,
            // llama-server's name for it.
            None => fields.number("repeat_penalty", 0.0, 10.0, false)?.unwrap_or(defaults.repeat_penalty),
        },
        // How far back the penalties look; -1 is the whole context, as in llama.cpp.
        repeat_last_n: fields
            .count_or_unlimited("repeat_last_n")?
            .map_or(defaults.repeat_last_n, |n| n.map_or(u32::MAX as usize, |n| n.min(u32::MAX as u64) as usize)),
        seed: fields.seed()?,
    };

    let stop = match fields.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            let mut stop = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => stop.push(s.clone()),
                    _ => return Err(ApiError::field("stop", "stop must be a string or an array of strings")),
                }
            }
            stop
        }
        Some(_) => return Err(ApiError::field("stop", "stop must be a string or an array of strings")),
    };
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ApiError::field("stop", format!("at most {MAX_STOP_STRINGS} stop strings, got {}", stop.len())));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::field("stop", "stop strings must not be empty"));
    }

    let stream = fields.bool("stream")?.unwrap_or(false);
    let include_usage = match fields.get("stream_options") {
        None => false,
        Some(_) if !stream => {
            return Err(ApiError::field("stream_options", "stream_options is only allowed when stream is true"))
        }
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::field(
                    "stream_options.include_usage",
                    "stream_options.include_usage must be a boolean",
                ))
            }
        },
        Some(_) => return Err(ApiError::field("stream_options", "stream_options must be an object")),
    };
    let reasoning_format = ReasoningFormat::default();
    Ok(Options {
        model,
        max_tokens,
        sampling,
        stop,
        stream,
        include_usage,
        logprobs,
        reasoning_format,
        schema: None,
        tools: None,
    })
}

/// Typed access to a request's fields, with OpenAI-style messages for wrong types and ranges.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    /// The field, or `None` when absent or null.
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::field(name, format!("{name} must be a boolean"))),
        }
    }

    /// A whole number in `min..=max`.
    fn uint(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ if max == u64::MAX => Err(ApiError::field(name, format!("{name} must be an integer >= {min}, got {v}"))),
            _ => Err(ApiError::field(name, format!("{name} must be an integer from {min} to {max}, got {v}"))),
        }
    }

    /// A number in `[min, max]`, or `(min, max]` when `min_inclusive` is false.
    fn number(&self, name: &str, min: f64, max: f64, min_inclusive: bool) -> Result<Option<f32>, ApiError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        let ok = |x: f64| (x > min || (min_inclusive && x == min)) && x <= max;
        // Checked as the f32 the engine gets: 1e-46 is above 0 as f64 but 0 as f32.
        match v.as_f64() {
            Some(x) if ok(x) && ok(x as f32 as f64) => Ok(Some(x as f32)),
            _ => {
                let open = if min_inclusive { "[" } else { "(" };
                Err(ApiError::field(name, format!("{name} must be a number in {open}{min}, {max}], got {v}")))
            }
        }
    }

    /// A whole number `>= 0`, or -1 for "no limit" (`Some(None)`), as llama.cpp's parameters have it.
    fn count_or_unlimited(&self, name: &str) -> Result<Option<Option<u64>>, ApiError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        // A token budget of 0 would generate nothing.
        let min = if name.starts_with("max") || name == "n_predict" { 1 } else { 0 };
        match (v.as_u64(), v.as_i64()) {
            (Some(n), _) if n >= min => Ok(Some(Some(n))),
            (None, Some(-1)) => Ok(Some(None)),
            _ => Err(ApiError::field(name, format!("{name} must be an integer >= {min} (or -1: no limit), got {v}"))),
        }
    }

    /// Any integer; -1 (what llama.cpp's front-ends send) is a random seed, as in llama.cpp; other negative seeds
    /// are taken bit for bit.
    fn seed(&self) -> Result<Option<u64>, ApiError> {
        match self.get("seed") {
            None => Ok(None),
            Some(v) => match (v.as_u64(), v.as_i64()) {
                (Some(n), _) => Ok(Some(n)),
                (None, Some(-1)) => Ok(None),
                (None, Some(n)) => Ok(Some(n as u64)),
                _ => Err(ApiError::field("seed", format!("seed must be an integer, got {v}"))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<ChatRequest, ApiError> {
        chat_request(body.as_bytes())
    }

    /// Asserts a 400 about `param` whose message contains `expected`.
    fn rejects(result: Result<impl std::fmt::Debug, ApiError>, param: &str, expected: &str) {
        let e = result.expect_err("the request must be refused");
        assert_eq!(e.status(), 400, "{e}");
        assert_eq!(e.param(), Some(param), "{e}");
        assert!(e.to_string().contains(expected), "expected {expected:?} in {e}");
    }

    #[test]
    fn a_full_chat_request_is_read() {
        let r = chat(
            r#"{"model": "smollm2", "messages": [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}],
                "max_completion_tokens": 20, "max_tokens": 99, "temperature": 0, "top_p": 0.5, "top_k": 7, "min_p": 0.1,
                "seed": -1, "stop": ["\n\n", "END"], "presence_penalty": 0.5, "frequency_penalty": -0.5,
                "repetition_penalty": 1.1, "logprobs": true, "top_logprobs": 3, "n": 1, "stream": true,
                "stream_options": {"include_usage": true}, "user": "ignored"}"#,
        )
        .unwrap();
        assert_eq!(r.messages[1], ChatMessage::new("user", "Hi \nthere"));
        let o = &r.options;
        assert_eq!(
            (o.model.as_str(), o.max_tokens, o.stream, o.include_usage, o.logprobs),
            ("smollm2", Some(20), true, true, Some(3))
        );
        assert_eq!(o.stop, vec!["\n\n".to_string(), "END".into()]);
        let s = &o.sampling;
        // seed -1 is a random seed, as in llama.cpp.
        assert_eq!((s.temperature, s.top_p, s.top_k, s.min_p, s.seed), (0.0, 0.5, 7, 0.1, None));
        assert_eq!((s.presence_penalty, s.frequency_penalty, s.repeat_penalty), (0.5, -0.5, 1.1));
        s.validate().unwrap();
        assert_eq!(o.generation_params(5).max_tokens, 5);
    }

    /// What llama.cpp's front-ends and clients send (point 9 of issue 17): llama-server's own names, -1 for "no
    /// limit", `top_p` 0, the `developer` role; other negative seeds are still seeds.
    #[test]
    fn llama_server_names_and_conventions_are_taken() {
        let r = chat(
            r#"{"model": "m", "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "x"}],
                "n_predict": -1, "top_k": -1, "top_p": 0, "repeat_penalty": 1.2, "repeat_last_n": -1, "n_probs": 3,
                "seed": -2}"#,
        )
        .unwrap();
        assert_eq!(r.messages[0].role, "system");
        let (o, s) = (&r.options, &r.options.sampling);
        assert_eq!((o.max_tokens, o.logprobs), (None, Some(3)));
        assert_eq!((s.top_k, s.top_p, s.repeat_penalty, s.repeat_last_n), (0, 0.0, 1.2, u32::MAX as usize));
        assert_eq!(s.seed, Some(u64::MAX - 1));
        s.validate().unwrap();
        let with = |extra: &str| {
            chat(&format!(r#"{{"model": "m", "messages": [{{"role": "user", "content": "x"}}], {extra}}}"#)).unwrap()
        };
        assert_eq!(with(r#""max_tokens": -1, "n_predict": 5"#).options.max_tokens, None);
        assert_eq!(with(r#""n_predict": 5"#).options.max_tokens, Some(5));
        assert_eq!(with(r#""repeat_last_n": 0, "repetition_penalty": 1.3"#).options.sampling.repeat_last_n, 0);
        assert_eq!(with(r#""repetition_penalty": 1.3, "repeat_penalty": 2"#).options.sampling.repeat_penalty, 1.3);
        let r = completion_request(br#"{"model": "m", "prompt": "a", "n_probs": 2, "n_predict": 4}"#).unwrap();
        assert_eq!((r.options.logprobs, r.options.max_tokens), (Some(2), Some(4)));
    }

    #[test]
    fn defaults_are_llama_servers() {
        let r = chat(r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": null}"#).unwrap();
        let o = r.options;
        assert_eq!((o.max_tokens, o.stream, o.include_usage, o.logprobs), (None, false, false, None));
        assert_eq!(o.reasoning_format, ReasoningFormat::Deepseek);
        assert_eq!(o.sampling, SamplingParams::default());
        assert!(o.stop.is_empty());
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for body in ["", "{", "[1, 2]", "\"text\"", "{\"model\": }"] {
            let e = chat(body).unwrap_err();
            assert!(matches!(e, ApiError::MalformedJson(_)), "{body:?}: {e:?}");
            assert_eq!(e.status(), 400);
        }
    }

    #[test]
    fn chat_fields_are_checked() {
        let msg = r#""messages": [{"role": "user", "content": "x"}]"#;
        let with = |extra: &str| chat(&format!(r#"{{"model": "m", {msg}, {extra}}}"#));
        rejects(chat(r#"{"messages": [{"role": "user", "content": "x"}]}"#), "model", "model is required");
        rejects(chat(&format!(r#"{{"model": 3, {msg}}}"#)), "model", "must be a string");
        rejects(chat(r#"{"model": "m"}"#), "messages", "messages is required");
        rejects(chat(r#"{"model": "m", "messages": []}"#), "messages", "at least one");
        rejects(chat(r#"{"model": "m", "messages": "hi"}"#), "messages", "array");
        rejects(chat(r#"{"model": "m", "messages": [3]}"#), "messages[0]", "object");
        rejects(
            chat(r#"{"model": "m", "messages": [{"role": "king", "content": "x"}]}"#),
            "messages[0].role",
            "'king'",
        );
        rejects(chat(r#"{"model": "m", "messages": [{"content": "x"}]}"#), "messages[0].role", "must be a string");
        rejects(chat(r#"{"model": "m", "messages": [{"role": "user"}]}"#), "messages[0].content", "string or an array");
        rejects(
            chat(
                r#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}"#,
            ),
            "messages[0].content[0]",
            "only text parts",
        );
        rejects(with(r#""temperature": 2.5"#), "temperature", "[0, 2]");
        rejects(with(r#""temperature": "hot""#), "temperature", "number");
        rejects(with(r#""top_p": -0.1"#), "top_p", "[0, 1]");
        rejects(with(r#""top_k": -2"#), "top_k", "integer");
        rejects(with(r#""min_p": 1.5"#), "min_p", "[0, 1]");
        rejects(with(r#""presence_penalty": 3"#), "presence_penalty", "[-2, 2]");
        rejects(with(r#""frequency_penalty": -3"#), "frequency_penalty", "[-2, 2]");
        rejects(with(r#""repetition_penalty": 0"#), "repetition_penalty", "(0, 10]");
        // Above 0, but 0 as the f32 the sampler takes (found by the api_request fuzz target).
        rejects(with(r#""repetition_penalty": 1e-46"#), "repetition_penalty", "(0, 10]");
        rejects(with(r#""repeat_penalty": 0"#), "repeat_penalty", "(0, 10]");
        rejects(with(r#""repeat_last_n": -5"#), "repeat_last_n", "or -1");
        rejects(with(r#""n_predict": 0"#), "n_predict", ">= 1");
        rejects(with(r#""n_probs": 21"#), "n_probs", "from 0 to 20");
        rejects(with(r#""seed": 1.5"#), "seed", "integer");
        rejects(with(r#""max_tokens": 0"#), "max_tokens", ">= 1");
        rejects(with(r#""max_tokens": -2"#), "max_tokens", "or -1");
        rejects(with(r#""max_completion_tokens": "ten""#), "max_completion_tokens", ">= 1");
        rejects(with(r#""n": 2"#), "n", "n must be 1");
        rejects(with(r#""stop": 5"#), "stop", "string or an array");
        rejects(with(r#""stop": ["a", 5]"#), "stop", "string or an array");
        rejects(with(r#""stop": [""]"#), "stop", "must not be empty");
        let many: Vec<String> = (0..=MAX_STOP_STRINGS).map(|i| format!("\"s{i}\"")).collect();
        rejects(with(&format!(r#""stop": [{}]"#, many.join(","))), "stop", "at most 16");
        rejects(with(r#""stream": "yes""#), "stream", "boolean");
        rejects(with(r#""stream_options": {"include_usage": true}"#), "stream_options", "only allowed when stream");
        rejects(with(r#""stream": true, "stream_options": 1"#), "stream_options", "object");
        rejects(
            with(r#""stream": true, "stream_options": {"include_usage": 1}"#),
            "stream_options.include_usage",
            "boolean",
        );
        rejects(with(r#""logprobs": 1"#), "logprobs", "boolean");
        rejects(with(r#""top_logprobs": 2"#), "top_logprobs", "needs logprobs");
        rejects(with(r#""logprobs": true, "top_logprobs": 21"#), "top_logprobs", "from 0 to 20");
        rejects(with(r#""reasoning_format": "html""#), "reasoning_format", "one of \"none\", \"deepseek\"");
        rejects(with(r#""reasoning_format": false"#), "reasoning_format", "got false");
    }

    #[test]
    fn reasoning_format_is_read_for_chat_and_never_splits_completions() {
        let with = |format: &str| {
            chat(&format!(
                r#"{{"model": "m", "messages": [{{"role": "user", "content": "x"}}], "reasoning_format": {format}}}"#
            ))
            .unwrap()
            .options
            .reasoning_format
        };
        assert_eq!(with(r#""none""#), ReasoningFormat::None);
        assert_eq!(with(r#""deepseek""#), ReasoningFormat::Deepseek);
        assert_eq!(with(r#""auto""#), ReasoningFormat::Deepseek);
        assert_eq!(with("null"), ReasoningFormat::Deepseek);
        let r = completion_request(br#"{"model": "m", "prompt": "a", "reasoning_format": "deepseek"}"#).unwrap();
        assert_eq!(r.options.reasoning_format, ReasoningFormat::None);
    }

    #[test]
    fn completion_requests_take_a_prompt_and_integer_logprobs() {
        let r =
            completion_request(br#"{"model": "m", "prompt": ["Once upon"], "logprobs": 2, "max_tokens": 8}"#).unwrap();
        assert_eq!((r.prompt.as_str(), r.options.logprobs, r.options.max_tokens), ("Once upon", Some(2), Some(8)));
        rejects(completion_request(br#"{"model": "m"}"#), "prompt", "required");
        rejects(completion_request(br#"{"model": "m", "prompt": ""}"#), "prompt", "empty");
        rejects(completion_request(br#"{"model": "m", "prompt": ["a", "b"]}"#), "prompt", "exactly one string");
        rejects(completion_request(br#"{"model": "m", "prompt": [1, 2]}"#), "prompt", "exactly one string");
        rejects(completion_request(br#"{"model": "m", "prompt": 7}"#), "prompt", "must be a string");
        rejects(completion_request(br#"{"model": "m", "prompt": "a", "logprobs": 6}"#), "logprobs", "from 0 to 5");
    }

    #[test]
    fn response_format_becomes_the_schema_the_answer_must_match() {
        let m = r#""model": "m", "messages": [{"role": "user", "content": "a"}]"#;
        let schema_of = |rf: &str| chat(&format!(r#"{{{m}, "response_format": {rf}}}"#)).map(|r| r.options.schema);
        assert_eq!(schema_of(r#"{"type": "text"}"#).unwrap(), None);
        assert_eq!(schema_of("null").unwrap(), None);
        assert_eq!(schema_of(r#"{"type": "json_object"}"#).unwrap(), Some(serde_json::json!({"type": "object"})));
        let strict =
            r#"{"type": "json_schema", "json_schema": {"name": "n", "strict": true, "schema": {"type": "array"}}}"#;
        assert_eq!(schema_of(strict).unwrap(), Some(serde_json::json!({"type": "array"})));
        rejects(schema_of(r#"{"type": "yaml"}"#), "response_format", "must be \"text\"");
        rejects(schema_of(r#""json""#), "response_format", "must be an object");
        rejects(schema_of(r#"{"type": "json_schema"}"#), "response_format", "needs a json_schema object");
        rejects(
            schema_of(r#"{"type": "json_schema", "json_schema": {"schema": 3}}"#),
            "response_format",
            "must be a JSON schema object",
        );
    }

    #[test]
    fn tools_tool_choice_and_parallel_calls_are_read_and_checked() {
        let m = r#""model": "m", "messages": [{"role": "user", "content": "a"}]"#;
        let f = r#"{"type": "function", "function": {"name": "get_weather", "description": "d",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}"#;
        let g = r#"{"type": "function", "function": {"name": "g"}}"#;
        let tools_of = |extra: &str| chat(&format!(r#"{{{m}, "tools": [{f}, {g}]{extra}}}"#)).map(|r| r.options.tools);
        let t = tools_of("").unwrap().unwrap();
        assert_eq!((t.choice.clone(), t.parallel, t.tools.len()), (ToolChoice::Auto, true, 2));
        assert_eq!(t.tools[0].description.as_deref(), Some("d"));
        assert_eq!(t.tools[1].parameters, serde_json::json!({"type": "object", "properties": {}}));
        let t = tools_of(r#", "tool_choice": "required", "parallel_tool_calls": false"#).unwrap().unwrap();
        assert_eq!((t.choice, t.parallel), (ToolChoice::Required, false));
        let named = r#", "tool_choice": {"type": "function", "function": {"name": "g"}}"#;
        assert_eq!(tools_of(named).unwrap().unwrap().choice, ToolChoice::Named("g".into()));
        // "none": no tools reach the model at all.
        assert_eq!(tools_of(r#", "tool_choice": "none""#).unwrap(), None);
        assert_eq!(chat(&format!(r#"{{{m}, "tools": []}}"#)).unwrap().options.tools, None);

        rejects(tools_of(r#", "tool_choice": {"type": "function", "function": {"name": "h"}}"#), "tool_choice", "'h'");
        rejects(tools_of(r#", "tool_choice": "sometimes""#), "tool_choice", "must be");
        rejects(chat(&format!(r#"{{{m}, "tools": [], "tool_choice": "required"}}"#)), "tool_choice", "empty");
        rejects(chat(&format!(r#"{{{m}, "tools": [{g}, {g}]}}"#)), "tools", "two tools are named 'g'");
        rejects(chat(&format!(r#"{{{m}, "tools": {{}}}}"#)), "tools", "array");
        rejects(chat(&format!(r#"{{{m}, "tools": [{{"type": "web_search"}}]}}"#)), "tools[0].type", "only function");
        let bad_name = r#"{"type": "function", "function": {"name": "no spaces"}}"#;
        rejects(chat(&format!(r#"{{{m}, "tools": [{bad_name}]}}"#)), "tools[0].function.name", "a-z");
        let bad_params = r#"{"type": "function", "function": {"name": "f", "parameters": "x"}}"#;
        rejects(chat(&format!(r#"{{{m}, "tools": [{bad_params}]}}"#)), "tools[0].function.parameters", "schema");
        let both = format!(r#"{{{m}, "tools": [{g}], "response_format": {{"type": "json_object"}}}}"#);
        rejects(chat(&both), "response_format", "cannot be combined");
    }

    #[test]
    fn history_carries_the_assistants_calls_and_the_tool_results() {
        let body = r#"{"model": "m", "messages": [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}]}"#;
        let r = chat(body).unwrap();
        let call = ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: serde_json::json!({"city": "Paris"}),
        };
        assert_eq!(r.messages[1], ChatMessage { tool_calls: vec![call], ..ChatMessage::new("assistant", "") });
        assert_eq!(
            r.messages[2],
            ChatMessage { tool_call_id: Some("call_1".into()), ..ChatMessage::new("tool", "18 C") }
        );
        let no_name = r#"{"model": "m", "messages": [{"role": "user", "content": "a"},
            {"role": "assistant", "tool_calls": [{"id": "c", "function": {}}]}]}"#;
        rejects(chat(no_name), "messages[1].tool_calls[0]", "name");
    }
}
