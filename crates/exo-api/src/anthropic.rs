//! Anthropic's Messages API (`POST /v1/messages`), for clients that speak it: a thin translation over the same
//! queue and generation path as `/v1/chat/completions`.
//!
//! A request's fields become the OpenAI request the rest of the server checks ([`crate::validation`]): `system`
//! (a string or text blocks) as the system message, text blocks joined a line apart, `stop_sequences`,
//! `max_tokens` (required, as Anthropic requires it), `temperature`, `top_p`, `top_k`; `metadata` and blocks'
//! `cache_control` are accepted and ignored. The answer comes back as Anthropic's message (`content` blocks, a
//! `thinking` block first for a model that thinks, `stop_reason` `end_turn` / `max_tokens` / `stop_sequence`,
//! `usage`), or streamed as its events (`message_start`, `ping`, `content_block_start`, `content_block_delta`
//! with `text_delta` or `thinking_delta`, `content_block_stop`, `message_delta` with usage, `message_stop`, and
//! `error`); `POST /v1/messages/count_tokens` gives the prompt's length. Errors have Anthropic's shape
//! (`{"type": "error", "error": {"type", "message"}}`).
//!
//! Tools: `tools` (custom tools: `name`, `description`, `input_schema`) and `tool_choice` (`auto`, `any`, `tool`,
//! `none`, `disable_parallel_tool_use`) become OpenAI's `tools`, `tool_choice` and `parallel_tool_calls`, so the
//! calls are constrained as on chat completions; history's `tool_use` blocks become the assistant's calls and
//! `tool_result` blocks `tool` messages. The calls the model makes come back as `tool_use` blocks (streamed: a
//! `content_block_start` with the id and name, then `input_json_delta`s) with `stop_reason: "tool_use"`. Images
//! and server tools are refused with a 400 naming them.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use exo_engine::generation::FinishReason;
use exo_engine::reasoning::Split;
use exo_engine::tool_calls::{ToolCallParser, ToolEvent, ToolFormat};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::ApiError;
use crate::inference::{Event, Inference, Output, Prompt, Started};
use crate::validation::{self, Options};

/// Anthropic's error type for a status.
fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        503 => "overloaded_error",
        _ => "api_error",
    }
}

/// An error's body in Anthropic's shape.
fn error_body(e: &ApiError) -> Value {
    json!({"type": "error", "error": {"type": error_type(e.status()), "message": e.to_string()}})
}

/// An error response in Anthropic's shape, with the status the OpenAI routes give it.
pub fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(error_body(e))).into_response()
}

/// The text of a `system` or a `tool_result`'s content: a string, or text blocks.
fn text_of(value: &Value, param: &str) -> Result<String, ApiError> {
    let turn = turn("user", value, param, false)?;
    Ok(turn
        .into_iter()
        .next()
        .and_then(|m| m.get("content").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default())
}

/// A message of `role` with `content` (a string or blocks) as OpenAI messages: a user's `tool_result` blocks as
/// `tool` messages (first, as the results answer the previous turn's calls), then its text; an assistant's text
/// with its `tool_use` blocks as calls. Text blocks join a line apart. `blocks_of_tools`: whether tool blocks may
/// be here (not in `system` or inside a result).
fn turn(role: &str, content: &Value, param: &str, blocks_of_tools: bool) -> Result<Vec<Value>, ApiError> {
    let blocks = match content {
        Value::String(s) => return Ok(vec![json!({"role": role, "content": s})]),
        Value::Array(blocks) => blocks,
        _ => return Err(ApiError::field(param, format!("{param} must be a string or an array of content blocks"))),
    };
    let mut text = String::new();
    let (mut calls, mut results) = (Vec::new(), Vec::new());
    for (i, block) in blocks.iter().enumerate() {
        let here = format!("{param}[{i}]");
        let string = |field: &str| {
            block
                .get(field)
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::field(&format!("{here}.{field}"), format!("{here}.{field} must be a string")))
        };
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(string("text")?);
            }
            // Earlier turns' reasoning is not shown to the model again (the templates drop it too).
            Some("thinking" | "redacted_thinking") => {}
            Some("tool_use") if blocks_of_tools && role == "assistant" => {
                let input = block.get("input").filter(|i| i.is_object()).ok_or_else(|| {
                    ApiError::field(&format!("{here}.input"), format!("{here}.input must be an object"))
                })?;
                calls.push(json!({"id": string("id")?, "type": "function",
                    "function": {"name": string("name")?, "arguments": input.to_string()}}));
            }
            Some("tool_result") if blocks_of_tools && role == "user" => {
                let id = string("tool_use_id")?;
                let mut result = match block.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(c) => text_of(c, &format!("{here}.content"))?,
                };
                if block.get("is_error") == Some(&Value::Bool(true)) {
                    result = format!("Error: {result}");
                }
                results.push(json!({"role": "tool", "tool_call_id": id, "content": result}));
            }
            Some(kind @ ("tool_use" | "tool_result")) => {
                let belongs = if kind == "tool_use" { "an assistant's" } else { "a user's" };
                return Err(ApiError::field(&here, format!("{here}: a {kind} block belongs in {belongs} content")));
            }
            Some(other) => {
                return Err(ApiError::field(
                    &here,
                    format!("{here} is a '{other}' block; this server supports text, tool_use and tool_result blocks"),
                ))
            }
            None => return Err(ApiError::field(&here, format!("{here} needs a type"))),
        }
    }
    let mut out = results;
    if role == "assistant" {
        let mut m = json!({"role": role, "content": text});
        if !calls.is_empty() {
            m["tool_calls"] = Value::Array(calls);
        }
        out.push(m);
    } else if !text.is_empty() || out.is_empty() {
        out.push(json!({"role": role, "content": text}));
    }
    Ok(out)
}

/// `tools` as OpenAI's function tools. Only custom tools (a name and an `input_schema`) are served; Anthropic's
/// server tools (web search, code execution, ...) are not.
fn tools(tools: &Value) -> Result<Value, ApiError> {
    let Some(items) = tools.as_array() else {
        return Err(ApiError::field("tools", "tools must be an array of tools"));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, t) in items.iter().enumerate() {
        let here = format!("tools[{i}]");
        match t.get("type").and_then(Value::as_str) {
            None | Some("custom") => {}
            Some(other) => {
                return Err(ApiError::field(
                    &format!("{here}.type"),
                    format!("{here} is a '{other}' tool; this server runs no tools itself, only custom tools with an input_schema"),
                ))
            }
        }
        let Some(name) = t.get("name").and_then(Value::as_str) else {
            return Err(ApiError::field(&format!("{here}.name"), format!("{here}.name must be a string")));
        };
        let Some(schema) = t.get("input_schema").filter(|s| s.is_object()) else {
            return Err(ApiError::field(
                &format!("{here}.input_schema"),
                format!("{here}.input_schema must be the JSON schema of the tool's input"),
            ));
        };
        let mut function = json!({"name": name, "parameters": schema});
        if let Some(d) = t.get("description").filter(|d| !d.is_null()) {
            function["description"] = d.clone();
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::Array(out))
}

/// `tool_choice` as OpenAI's `tool_choice` and, when parallel use is disabled, `parallel_tool_calls: false`.
fn tool_choice(choice: &Value) -> Result<(Value, bool), ApiError> {
    let parallel = choice.get("disable_parallel_tool_use") != Some(&Value::Bool(true));
    let openai = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match choice.get("name").and_then(Value::as_str) {
            Some(name) => json!({"type": "function", "function": {"name": name}}),
            None => return Err(ApiError::field("tool_choice.name", "tool_choice of type tool needs the tool's name")),
        },
        _ => {
            return Err(ApiError::field(
                "tool_choice",
                format!("tool_choice must be {{\"type\": \"auto\" | \"any\" | \"tool\" | \"none\"}}, got {choice}"),
            ))
        }
    };
    Ok((openai, parallel))
}

/// An error the OpenAI validation found in a translated tool, in the names of Anthropic's fields.
fn in_anthropic_terms(e: ApiError) -> ApiError {
    match e {
        ApiError::InvalidField { param, message } if param.starts_with("tools") => {
            let rename =
                |s: &str| s.replace(".function.parameters", ".input_schema").replace(".function.name", ".name");
            ApiError::InvalidField { param: rename(&param), message: rename(&message) }
        }
        ApiError::InvalidField { param, message } if param == "tool_choice" => {
            ApiError::InvalidField { param, message: message.replace("tool_choice names", "tool_choice's name is") }
        }
        other => other,
    }
}

/// A Messages request as the OpenAI request the validation reads, and whether reasoning is shown (`thinking`
/// not `disabled`).
fn translate(body: &[u8]) -> Result<(Prompt, Options, bool), ApiError> {
    let object: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Err(ApiError::MalformedJson("the body must be a JSON object".into())),
        Err(e) => return Err(ApiError::MalformedJson(e.to_string())),
    };
    let present = |name: &str| object.get(name).filter(|v| !v.is_null());
    if present("max_tokens").is_none() {
        return Err(ApiError::field("max_tokens", "max_tokens is required"));
    }
    let mut messages = Vec::new();
    if let Some(system) = present("system") {
        messages.push(json!({"role": "system", "content": text_of(system, "system")?}));
    }
    match present("messages") {
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ApiError::field("messages", "messages must hold at least one message"))
        }
        Some(Value::Array(items)) => {
            for (i, m) in items.iter().enumerate() {
                let here = format!("messages[{i}]");
                let content = m.get("content").unwrap_or(&Value::Null);
                match m.get("role").and_then(Value::as_str) {
                    Some(role @ ("user" | "assistant")) => {
                        messages.extend(turn(role, content, &format!("{here}.content"), true)?)
                    }
                    // Claude Code puts system text between the turns too (its agents and skills); it stays in
                    // its place, as a system message (a template that takes a system message only first gets
                    // every system text merged into the first user message).
                    Some("system") => messages
                        .push(json!({"role": "system", "content": text_of(content, &format!("{here}.content"))?})),
                    _ => {
                        return Err(ApiError::field(
                            &format!("{here}.role"),
                            format!("{here}.role must be \"user\", \"assistant\" or \"system\""),
                        ))
                    }
                }
            }
        }
        _ => return Err(ApiError::field("messages", "messages must be an array of messages")),
    }
    let mut openai = Map::new();
    openai.insert("messages".into(), Value::Array(messages));
    if let Some(t) = present("tools") {
        openai.insert("tools".into(), tools(t)?);
    }
    if let Some(choice) = present("tool_choice") {
        let (choice, parallel) = tool_choice(choice)?;
        openai.insert("tool_choice".into(), choice);
        openai.insert("parallel_tool_calls".into(), Value::Bool(parallel));
    }
    // A list, in Anthropic's API (chat completions also takes one string).
    if let Some(stops) = present("stop_sequences") {
        if !stops.as_array().is_some_and(|s| s.iter().all(Value::is_string)) {
            return Err(ApiError::field("stop_sequences", "stop_sequences must be an array of strings"));
        }
    }
    let names = [
        ("model", "model"),
        ("max_tokens", "max_tokens"),
        ("stop_sequences", "stop"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("stream", "stream"),
    ];
    validation::copy_fields(&object, &mut openai, &names);
    let show_thinking = present("thinking").and_then(|t| t.get("type")).and_then(Value::as_str) != Some("disabled");
    let request = validation::chat_request(Value::Object(openai).to_string().as_bytes()).map_err(in_anthropic_terms)?;
    Ok((Prompt::Chat(request.messages), request.options, show_thinking))
}

/// A message id.
fn message_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    format!("msg_{nanos:x}{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Anthropic's `stop_reason` for how generation ended, and whether it called tools.
fn stop_reason(finish: FinishReason, stop_sequence: &Option<String>, called: bool) -> &'static str {
    match (finish, stop_sequence) {
        (FinishReason::Length, _) => "max_tokens",
        (FinishReason::Stop, Some(_)) => "stop_sequence",
        (FinishReason::Stop, None) if called => "tool_use",
        (FinishReason::Stop, None) => "end_turn",
    }
}

/// A new `tool_use` block's id: `toolu_` and 24 random hex digits, as Anthropic's look.
fn tool_use_id() -> String {
    format!("toolu_{:024x}", rand::random::<u128>() >> 32)
}

/// The answer's content blocks as events: which block is open, how many were opened, and, with tools offered,
/// the text read for calls. A whole (not streamed) answer is the same events folded ([`content_of`]).
#[derive(Default)]
struct Blocks {
    open: Option<&'static str>,
    count: usize,
    calls: Option<ToolCallParser>,
    called: bool,
}

impl Blocks {
    /// Blocks for an answer; `tools`: with tools offered, how the model writes the calls the text may hold.
    fn new(tools: Option<ToolFormat>) -> Self {
        Self { calls: tools.map(ToolCallParser::new), ..Self::default() }
    }

    /// Opens a block (closing the open one).
    fn start(&mut self, kind: &'static str, block: Value, out: &mut Vec<(&'static str, Value)>) {
        self.close(out);
        out.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": self.count, "content_block": block}),
        ));
        self.open = Some(kind);
        self.count += 1;
    }

    fn delta(&self, delta: Value, out: &mut Vec<(&'static str, Value)>) {
        out.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": self.count - 1, "delta": delta}),
        ));
    }

    /// The events that put `text` into a block of `kind` (`thinking` or `text`), opening one when another is open.
    fn add(&mut self, kind: &'static str, text: &str, out: &mut Vec<(&'static str, Value)>) {
        if text.is_empty() {
            return;
        }
        if self.open != Some(kind) {
            let block = match kind {
                "thinking" => json!({"type": "thinking", "thinking": "", "signature": ""}),
                _ => json!({"type": "text", "text": ""}),
            };
            self.start(kind, block, out);
        }
        let delta = match kind {
            "thinking" => json!({"type": "thinking_delta", "thinking": text}),
            _ => json!({"type": "text_delta", "text": text}),
        };
        self.delta(delta, out);
    }

    fn close(&mut self, out: &mut Vec<(&'static str, Value)>) {
        if self.open.take().is_some() {
            out.push(("content_block_stop", json!({"type": "content_block_stop", "index": self.count - 1})));
        }
    }

    /// The events for what the tool-call parser read.
    fn tool_events(&mut self, events: Vec<ToolEvent>, out: &mut Vec<(&'static str, Value)>) {
        for e in events {
            match e {
                ToolEvent::Text(text) => self.add("text", &text, out),
                ToolEvent::Call { name, .. } => {
                    self.called = true;
                    let block = json!({"type": "tool_use", "id": tool_use_id(), "name": name, "input": {}});
                    self.start("tool_use", block, out);
                }
                ToolEvent::Arguments { json, .. } => {
                    self.delta(json!({"type": "input_json_delta", "partial_json": json}), out)
                }
            }
        }
    }

    /// The events for a split piece of output.
    fn split(&mut self, piece: &Split, show_thinking: bool, out: &mut Vec<(&'static str, Value)>) {
        if show_thinking {
            self.add("thinking", &piece.reasoning, out);
        }
        match self.calls.as_mut() {
            Some(parser) => {
                let events = parser.push(&piece.content);
                self.tool_events(events, out);
            }
            None => self.add("text", &piece.content, out),
        }
    }

    /// The events for the end of the output (its last piece, then what the parser held back), closing the last
    /// block; a message has at least one block, if empty.
    fn finish(&mut self, last: &Split, show_thinking: bool, out: &mut Vec<(&'static str, Value)>) {
        self.split(last, show_thinking, out);
        if let Some(events) = self.calls.as_mut().map(ToolCallParser::finish) {
            self.tool_events(events, out);
        }
        if self.count == 0 {
            self.start("text", json!({"type": "text", "text": ""}), out);
        }
        self.close(out);
    }
}

/// The content blocks a whole answer's events put together: texts and thinking joined, each tool use's input
/// parsed from its fragments (`{}` for a call cut off by `max_tokens` before its input was whole).
fn content_of(events: &[(&'static str, Value)]) -> Vec<Value> {
    let mut blocks: Vec<Value> = Vec::new();
    let mut inputs: Vec<String> = Vec::new();
    for (name, e) in events {
        match *name {
            "content_block_start" => {
                blocks.push(e["content_block"].clone());
                inputs.push(String::new());
            }
            "content_block_delta" => {
                let (Some(block), Some(input)) = (blocks.last_mut(), inputs.last_mut()) else { continue };
                let delta = &e["delta"];
                let append = |block: &mut Value, field: &str| {
                    let text = format!(
                        "{}{}",
                        block[field].as_str().unwrap_or_default(),
                        delta[field].as_str().unwrap_or_default()
                    );
                    block[field] = Value::String(text);
                };
                match delta["type"].as_str() {
                    Some("text_delta") => append(block, "text"),
                    Some("thinking_delta") => append(block, "thinking"),
                    Some("input_json_delta") => input.push_str(delta["partial_json"].as_str().unwrap_or_default()),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    for (block, input) in blocks.iter_mut().zip(inputs) {
        if block["type"] == "tool_use" {
            block["input"] = serde_json::from_str::<Value>(&input).ok().filter(Value::is_object).unwrap_or(json!({}));
        }
    }
    blocks
}

/// `POST /v1/messages`.
pub async fn messages(State(inference): State<Inference>, request: Request) -> Response {
    let body = match crate::server::read_body(request).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let (prompt, options, show_thinking) = match translate(&body) {
        Ok(t) => t,
        Err(e) => return error_response(&e),
    };
    let Started { events: mut rx, reasoning, prompt_tokens, tools } =
        match inference.begin(prompt, options.clone()).await {
            Ok(started) => started,
            Err(e) => return error_response(&e),
        };
    let mut split = Output::new(reasoning);
    let id = message_id();
    let model = options.model.clone();
    if options.stream {
        let (sse, out) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
        tokio::spawn(async move {
            let send = |name: &'static str, v: Value| {
                let sse = sse.clone();
                async move { sse.send(Ok(SseEvent::default().event(name).data(v.to_string()))).await.is_ok() }
            };
            let start = json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
                "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": prompt_tokens, "output_tokens": 0}}});
            if !send("message_start", start).await || !send("ping", json!({"type": "ping"})).await {
                return;
            }
            let mut blocks = Blocks::new(tools);
            loop {
                let event = tokio::select! {
                    event = rx.recv() => event,
                    _ = sse.closed() => return,
                };
                let mut events = Vec::new();
                match event {
                    Some(Event::Text { text, .. }) => blocks.split(&split.push(&text), show_thinking, &mut events),
                    Some(Event::Done { finish, stop_sequence, completion_tokens, .. }) => {
                        blocks.finish(&split.finish(), show_thinking, &mut events);
                        let reason = stop_reason(finish, &stop_sequence, blocks.called);
                        events.push((
                            "message_delta",
                            json!({"type": "message_delta",
                            "delta": {"stop_reason": reason, "stop_sequence": stop_sequence},
                            "usage": {"output_tokens": completion_tokens}}),
                        ));
                        events.push(("message_stop", json!({"type": "message_stop"})));
                        for (name, v) in events {
                            if !send(name, v).await {
                                return;
                            }
                        }
                        return;
                    }
                    Some(Event::Failed(e)) => {
                        let mut body = error_body(&e);
                        body["type"] = json!("error");
                        let _ = send("error", body).await;
                        return;
                    }
                    Some(Event::Started { .. }) => {}
                    None => return,
                }
                for (name, v) in events {
                    if !send(name, v).await {
                        return;
                    }
                }
            }
        });
        return Sse::new(ReceiverStream::new(out)).into_response();
    }
    // The whole answer is its stream's events put together.
    let mut blocks = Blocks::new(tools);
    let mut events = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Text { text, .. } => blocks.split(&split.push(&text), show_thinking, &mut events),
            Event::Done { finish, stop_sequence, completion_tokens, .. } => {
                blocks.finish(&split.finish(), show_thinking, &mut events);
                let mut content = content_of(&events);
                if !content.iter().any(|b| b["type"] == "text" || b["type"] == "tool_use") {
                    content.push(json!({"type": "text", "text": ""}));
                }
                let reason = stop_reason(finish, &stop_sequence, blocks.called);
                return Json(json!({"id": id, "type": "message", "role": "assistant", "model": model,
                    "content": content, "stop_reason": reason, "stop_sequence": stop_sequence,
                    "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens}}))
                .into_response();
            }
            Event::Failed(e) => return error_response(&e),
            Event::Started { .. } => {}
        }
    }
    error_response(&ApiError::Internal("the inference thread stopped".into()))
}

/// `POST /v1/messages/count_tokens`: the length of the prompt a Messages request makes, with the model's template
/// and tokenizer (`max_tokens` is not needed here).
pub async fn count_tokens(State(inference): State<Inference>, request: Request) -> Response {
    let body = match crate::server::read_body(request).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let body = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut o)) => {
            o.entry("max_tokens").or_insert(json!(1));
            o.remove("stream");
            Value::Object(o).to_string()
        }
        Ok(_) => return error_response(&ApiError::MalformedJson("the body must be a JSON object".into())),
        Err(e) => return error_response(&ApiError::MalformedJson(e.to_string())),
    };
    let (prompt, options) = match translate(body.as_bytes()) {
        Ok((Prompt::Chat(messages), options, _)) => (Prompt::Count(messages), options),
        Ok(_) => return error_response(&ApiError::Internal("a Messages request is a chat".into())),
        Err(e) => return error_response(&e),
    };
    match inference.begin(prompt, options).await {
        Ok(started) => Json(json!({"input_tokens": started.prompt_tokens})).into_response(),
        Err(e) => error_response(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use exo_engine::tool_calls::ToolChoice;

    #[test]
    fn a_messages_request_becomes_the_chat_it_stands_for() {
        let (prompt, o, show) = translate(
            br#"{"model": "m", "max_tokens": 9, "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
                "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
                             {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm"}, {"type": "text", "text": "Hello"}]},
                             {"role": "user", "content": "Bye"},
                             {"role": "system", "content": [{"type": "text", "text": "Agents: none."}]}],
                "stop_sequences": ["\n\n"], "temperature": 0.5, "top_k": 5, "metadata": {"user_id": "u"}, "stream": true}"#,
        )
        .unwrap();
        let Prompt::Chat(m) = prompt else { panic!("a chat") };
        let pairs: Vec<(&str, &str)> = m.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("system", "Be brief."),
                ("user", "Hi\nthere"),
                ("assistant", "Hello"),
                ("user", "Bye"),
                ("system", "Agents: none.")
            ]
        );
        assert_eq!(
            (o.max_tokens, o.stream, o.stop.clone(), o.sampling.top_k),
            (Some(9), true, vec!["\n\n".to_string()], 5)
        );
        assert!(show);
        let (_, _, show) = translate(
            br#"{"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "a"}],
            "thinking": {"type": "disabled"}}"#,
        )
        .unwrap();
        assert!(!show);
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_in_anthropics_shape() {
        let refuse = |body: &str, param: &str| {
            let e = translate(body.as_bytes()).err().unwrap_or_else(|| panic!("{body} accepted"));
            assert_eq!((e.status(), e.param()), (400, Some(param)), "{e}");
            assert_eq!(error_body(&e)["error"]["type"], "invalid_request_error");
        };
        let m = r#""model": "m", "messages": [{"role": "user", "content": "a"}]"#;
        refuse(&format!("{{{m}}}"), "max_tokens");
        refuse(&format!(r#"{{{m}, "max_tokens": 5, "tools": [{{"name": "f"}}]}}"#), "tools[0].input_schema");
        refuse(&format!(r#"{{{m}, "max_tokens": 5, "tools": {{"name": "f"}}}}"#), "tools");
        let schema = r#""input_schema": {"type": "object"}"#;
        refuse(
            &format!(r#"{{{m}, "max_tokens": 5, "tools": [{{"type": "web_search_20250305", "name": "web_search"}}]}}"#),
            "tools[0].type",
        );
        refuse(&format!(r#"{{{m}, "max_tokens": 5, "tools": [{{"name": "a b", {schema}}}]}}"#), "tools[0].name");
        refuse(
            &format!(
                r#"{{{m}, "max_tokens": 5, "tools": [{{"name": "f", {schema}}}], "tool_choice": {{"type": "tool"}}}}"#
            ),
            "tool_choice.name",
        );
        refuse(
            &format!(
                r#"{{{m}, "max_tokens": 5, "tools": [{{"name": "f", {schema}}}], "tool_choice": {{"type": "tool", "name": "g"}}}}"#
            ),
            "tool_choice",
        );
        refuse(&format!(r#"{{{m}, "max_tokens": 5, "tool_choice": {{"type": "sometimes"}}}}"#), "tool_choice");
        refuse(
            r#"{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}"#,
            "messages[0].content[0]",
        );
        refuse(
            r#"{"model": "m", "max_tokens": 5, "messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "x"}]}]}"#,
            "messages[0].content[0].input",
        );
        refuse(
            r#"{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]}"#,
            "messages[0].content[0].tool_use_id",
        );
        refuse(
            r#"{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}"#,
            "messages[0].content[0]",
        );
        refuse(
            r#"{"model": "m", "max_tokens": 5, "messages": [{"role": "tool", "content": "a"}]}"#,
            "messages[0].role",
        );
        refuse(
            r#"{"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}"#,
            "messages[0].content[0]",
        );
        refuse(r#"{"model": "m", "max_tokens": 5, "messages": []}"#, "messages");
        refuse(&format!(r#"{{{m}, "max_tokens": 5, "temperature": 3}}"#), "temperature");
        let e = ApiError::QueueFull(4);
        assert_eq!(error_body(&e)["error"]["type"], "overloaded_error");
        assert_eq!(error_body(&ApiError::ModelNotFound("x".into()))["type"], "error");
    }

    #[test]
    fn tools_tool_uses_and_tool_results_become_the_chat_they_stand_for() {
        let (prompt, o, _) = translate(
            br#"{"model": "m", "max_tokens": 50,
                "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                          {"type": "custom", "name": "get_time", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "tool", "name": "get_time", "disable_parallel_tool_use": true},
                "messages": [{"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "31 C"}]},
                        {"type": "text", "text": "And in Rome?"}]},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2", "content": "no data", "is_error": true}]}]}"#,
        )
        .unwrap();
        let Prompt::Chat(m) = prompt else { panic!("a chat") };
        let turns: Vec<(&str, &str, usize, Option<&str>)> = m
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str(), m.tool_calls.len(), m.tool_call_id.as_deref()))
            .collect();
        assert_eq!(
            turns,
            [
                ("user", "Weather in Paris?", 0, None),
                ("assistant", "Let me look.", 1, None),
                ("tool", "31 C", 0, Some("toolu_1")),
                ("user", "And in Rome?", 0, None),
                ("assistant", "", 1, None),
                ("tool", "Error: no data", 0, Some("toolu_2")),
            ]
        );
        assert_eq!((m[1].tool_calls[0].id.as_str(), m[1].tool_calls[0].name.as_str()), ("toolu_1", "get_weather"));
        assert_eq!(m[1].tool_calls[0].arguments, json!({"city": "Paris"}));
        let tools = o.tools.expect("tools offered");
        assert_eq!(tools.choice, ToolChoice::Named("get_time".into()));
        assert!(!tools.parallel);
        assert_eq!(tools.tools[0].description.as_deref(), Some("Weather"));
        assert_eq!(tools.tools[1].parameters, json!({"type": "object"}));
        for (choice, want) in [("auto", Some(ToolChoice::Auto)), ("any", Some(ToolChoice::Required)), ("none", None)] {
            let body = format!(
                r#"{{"model": "m", "max_tokens": 5, "messages": [{{"role": "user", "content": "a"}}],
                "tools": [{{"name": "f", "input_schema": {{"type": "object"}}}}], "tool_choice": {{"type": "{choice}"}}}}"#
            );
            let (_, o, _) = translate(body.as_bytes()).unwrap();
            assert_eq!(o.tools.map(|t| t.choice), want, "{choice}");
        }
    }

    #[test]
    fn calls_in_the_output_become_tool_use_blocks_streamed_or_whole() {
        let mut b = Blocks::new(Some(ToolFormat::Hermes));
        let mut out = Vec::new();
        let piece = |content: &str| Split { reasoning: String::new(), content: content.into() };
        for p in [
            "Checking.",
            "\n<tool",
            "_call>\n{\"name\": \"get_time\", \"arguments\": {\"city\"",
            ": \"Rome\"}}\n</tool_call>",
        ] {
            b.split(&piece(p), false, &mut out);
        }
        b.finish(&piece(""), false, &mut out);
        assert!(b.called);
        let names: Vec<&str> = out.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.first(), Some(&"content_block_start"));
        assert_eq!(names.last(), Some(&"content_block_stop"));
        let starts: Vec<&Value> =
            out.iter().filter(|(n, _)| *n == "content_block_start").map(|(_, e)| &e["content_block"]).collect();
        assert_eq!(starts[0]["type"], "text");
        assert_eq!((&starts[1]["type"], &starts[1]["name"]), (&json!("tool_use"), &json!("get_time")));
        assert!(starts[1]["id"].as_str().is_some_and(|id| id.starts_with("toolu_")));
        assert!(out.iter().any(|(_, e)| e["delta"]["type"] == "input_json_delta"));
        let content = content_of(&out);
        assert_eq!(content.len(), 2, "{content:?}");
        assert_eq!(content[0]["text"].as_str().map(str::trim_end), Some("Checking."));
        assert_eq!(content[1]["input"], json!({"city": "Rome"}));
        assert_eq!(stop_reason(FinishReason::Stop, &None, b.called), "tool_use");
        assert_eq!(stop_reason(FinishReason::Length, &None, b.called), "max_tokens");
    }

    #[test]
    fn streamed_blocks_open_and_close_in_order() {
        let mut b = Blocks::new(None);
        let mut out = Vec::new();
        b.split(&Split { reasoning: "hm".into(), content: String::new() }, true, &mut out);
        b.split(&Split { reasoning: " ok".into(), content: "Hi".into() }, true, &mut out);
        b.close(&mut out);
        let names: Vec<&str> = out.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop"
            ]
        );
        assert_eq!(out[4].1["index"], 1);
        assert_eq!(out[5].1["delta"], json!({"type": "text_delta", "text": "Hi"}));
        // Reasoning not shown: only the text block.
        let mut b = Blocks::new(None);
        let mut out = Vec::new();
        b.split(&Split { reasoning: "hm".into(), content: "Hi".into() }, false, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1["content_block"]["type"], "text");
    }
}
