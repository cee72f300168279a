//! OpenAI's Responses API (`POST /v1/responses`), stateless: a thin translation over the same queue and generation
//! path as `/v1/chat/completions`.
//!
//! A request becomes the chat request the rest of the server checks ([`crate::validation`]): `instructions` as the
//! system message, `input` as a string or items (messages with text parts, `function_call` and
//! `function_call_output`; earlier `reasoning` items are dropped, as templates drop old reasoning), flat function
//! `tools`, `tool_choice`, `parallel_tool_calls`, `max_output_tokens`, `temperature`, `top_p`, and `text.format`
//! (`text`, `json_object`, `json_schema`) as `response_format`. This server keeps no state, so
//! `previous_response_id`, `store: true`, `conversation` and `background: true` are a 400 that says so.
//!
//! The answer is a `response` whose `output` holds a `reasoning` item (a model that thinks), a `message` with its
//! `output_text`, and a `function_call` item per call; streamed, the same output as the API's events in order
//! (`response.created`, `response.in_progress`, `response.output_item.added`, `response.content_part.added`,
//! `response.output_text.delta`, `response.function_call_arguments.delta`, ... `.done`, then `response.completed`
//! or `response.incomplete` with usage), each with its `sequence_number`. The whole answer is the stream's output
//! put together by the same code ([`Items`]). Errors are OpenAI's shape, as on chat completions.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
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
use crate::validation;

/// A new id: `prefix`, `_` and 24 random hex digits.
fn new_id(prefix: &str) -> String {
    format!("{prefix}_{:024x}", rand::random::<u128>() >> 32)
}

/// The text of a message's `content`: a string, or parts of text (`input_text`, `output_text`, `text`) joined a line
/// apart.
fn text_of(content: &Value, param: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (i, part) in parts.iter().enumerate() {
                let here = format!("{param}[{i}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => {
                        let t = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                            ApiError::field(&format!("{here}.text"), format!("{here}.text must be a string"))
                        })?;
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(t);
                    }
                    Some("refusal") => {}
                    Some(other) => {
                        return Err(ApiError::field(
                            &here,
                            format!("{here} is an '{other}' part; this server takes text parts only"),
                        ))
                    }
                    None => return Err(ApiError::field(&here, format!("{here} needs a type"))),
                }
            }
            Ok(text)
        }
        _ => Err(ApiError::field(param, format!("{param} must be a string or an array of content parts"))),
    }
}

/// `input` as chat messages: a string is one user message; items are messages, the assistant's function calls
/// (consecutive calls in one assistant turn, after its text) and their outputs as `tool` messages.
fn messages_of(input: &Value) -> Result<Vec<Value>, ApiError> {
    let items = match input {
        Value::String(s) => return Ok(vec![json!({"role": "user", "content": s})]),
        Value::Array(items) if !items.is_empty() => items,
        Value::Array(_) => return Err(ApiError::field("input", "input must hold at least one item")),
        _ => return Err(ApiError::field("input", "input must be a string or an array of items")),
    };
    let mut messages: Vec<Value> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let here = format!("input[{i}]");
        let string = |field: &str| {
            item.get(field)
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::field(&format!("{here}.{field}"), format!("{here}.{field} must be a string")))
        };
        let kind = item.get("type").and_then(Value::as_str).unwrap_or("message");
        match kind {
            "message" => {
                let role = match item.get("role").and_then(Value::as_str) {
                    Some(r @ ("user" | "assistant" | "system" | "developer")) => r,
                    _ => {
                        return Err(ApiError::field(
                            &format!("{here}.role"),
                            format!("{here}.role must be \"user\", \"assistant\", \"system\" or \"developer\""),
                        ))
                    }
                };
                let content = text_of(item.get("content").unwrap_or(&Value::Null), &format!("{here}.content"))?;
                messages.push(json!({"role": role, "content": content}));
            }
            "function_call" => {
                let call = json!({"id": string("call_id")?, "type": "function",
                    "function": {"name": string("name")?, "arguments": string("arguments")?}});
                // Calls after an assistant's text (or after other calls) belong to that turn.
                match messages.last_mut() {
                    Some(last) if last["role"] == "assistant" => match last["tool_calls"].as_array_mut() {
                        Some(calls) => calls.push(call),
                        None => last["tool_calls"] = json!([call]),
                    },
                    _ => messages.push(json!({"role": "assistant", "content": "", "tool_calls": [call]})),
                }
            }
            "function_call_output" => {
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(parts @ Value::Array(_)) => text_of(parts, &format!("{here}.output"))?,
                    _ => {
                        return Err(ApiError::field(
                            &format!("{here}.output"),
                            format!("{here}.output must be a string"),
                        ))
                    }
                };
                messages.push(json!({"role": "tool", "tool_call_id": string("call_id")?, "content": output}));
            }
            // Earlier reasoning is not shown to the model again.
            "reasoning" => {}
            other => {
                return Err(ApiError::field(
                    &format!("{here}.type"),
                    format!(
                        "{here} is a '{other}' item; this server takes message, function_call and function_call_output items"
                    ),
                ))
            }
        }
    }
    Ok(messages)
}

/// Flat function `tools` (`{"type": "function", "name", "description", "parameters", "strict"}`) as chat
/// completions' tools; a `namespace`'s function tools (Codex CLI groups its sub-agent tools so) are offered by
/// their own names. Built-in tools (web search, file search, computer use, ...) run on OpenAI's side: this node
/// has none to run, so the model is not offered them (Codex CLI sends `web_search` with every request, and a
/// refusal would stop it), as a server without them would answer.
fn tools_of(tools: &Value) -> Result<Value, ApiError> {
    let Some(items) = tools.as_array() else {
        return Err(ApiError::field("tools", "tools must be an array of function tools"));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, t) in items.iter().enumerate() {
        let here = format!("tools[{i}]");
        match t.get("type").and_then(Value::as_str) {
            Some("function") => out.push(function_tool(t)),
            Some("namespace") => {
                let Some(inner) = t.get("tools").and_then(Value::as_array) else {
                    return Err(ApiError::field(&format!("{here}.tools"), format!("{here}.tools must be an array")));
                };
                for (j, f) in inner.iter().enumerate() {
                    if f.get("type").and_then(Value::as_str) != Some("function") {
                        return Err(ApiError::field(
                            &format!("{here}.tools[{j}].type"),
                            format!("{here}.tools[{j}] must be a function tool"),
                        ));
                    }
                    out.push(function_tool(f));
                }
            }
            Some(_) => {}
            None => {
                return Err(ApiError::field(&format!("{here}.type"), format!("{here} needs \"type\": \"function\"")))
            }
        }
    }
    Ok(Value::Array(out))
}

/// A Responses function tool as a chat completions tool.
fn function_tool(t: &Value) -> Value {
    let mut function = Map::new();
    for field in ["name", "description", "parameters"] {
        if let Some(v) = t.get(field).filter(|v| !v.is_null()) {
            function.insert(field.into(), v.clone());
        }
    }
    json!({"type": "function", "function": function})
}

/// A Responses request as the chat request the validation reads, and the request's fields a response repeats.
fn translate(body: &[u8]) -> Result<(Prompt, validation::Options, Map<String, Value>), ApiError> {
    let object: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Err(ApiError::MalformedJson("the body must be a JSON object".into())),
        Err(e) => return Err(ApiError::MalformedJson(e.to_string())),
    };
    let present = |name: &str| object.get(name).filter(|v| !v.is_null());
    const STATELESS: &str = "this server keeps no state: send the whole conversation in input";
    if present("previous_response_id").is_some() {
        return Err(ApiError::field(
            "previous_response_id",
            format!("previous_response_id cannot be used: {STATELESS}"),
        ));
    }
    if present("conversation").is_some() {
        return Err(ApiError::field("conversation", format!("conversation cannot be used: {STATELESS}")));
    }
    if present("store") == Some(&Value::Bool(true)) {
        return Err(ApiError::field(
            "store",
            format!("store: true cannot be honoured: {STATELESS}; send store: false"),
        ));
    }
    if present("background") == Some(&Value::Bool(true)) {
        return Err(ApiError::field("background", format!("background: true cannot be honoured: {STATELESS}")));
    }
    if present("top_logprobs").is_some_and(|k| k != &json!(0)) {
        return Err(ApiError::field(
            "top_logprobs",
            "log-probabilities are not reported on /v1/responses yet; /v1/chat/completions reports them",
        ));
    }
    let mut messages = Vec::new();
    match present("instructions") {
        None => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(_) => return Err(ApiError::field("instructions", "instructions must be a string")),
    }
    match present("input") {
        Some(input) => messages.extend(messages_of(input)?),
        None => return Err(ApiError::field("input", "input is required")),
    }
    let mut openai = Map::new();
    openai.insert("messages".into(), Value::Array(messages));
    let names = [
        ("model", "model"),
        ("max_output_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stream", "stream"),
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("seed", "seed"),
    ];
    validation::copy_fields(&object, &mut openai, &names);
    if let Some(t) = present("tools") {
        openai.insert("tools".into(), tools_of(t)?);
    }
    match present("tool_choice") {
        None => {}
        Some(c @ Value::String(_)) => {
            openai.insert("tool_choice".into(), c.clone());
        }
        Some(c) => match (c.get("type").and_then(Value::as_str), c.get("name").and_then(Value::as_str)) {
            (Some("function"), Some(name)) => {
                openai.insert("tool_choice".into(), json!({"type": "function", "function": {"name": name}}));
            }
            _ => {
                return Err(ApiError::field(
                    "tool_choice",
                    format!(
                        "tool_choice must be \"none\", \"auto\", \"required\" or {{\"type\": \"function\", \"name\": ...}}, got {c}"
                    ),
                ))
            }
        },
    }
    if let Some(format) = present("text").and_then(|t| t.get("format")).filter(|f| !f.is_null()) {
        let response_format = match format.get("type").and_then(Value::as_str) {
            // The Responses API puts the schema's fields in the format itself.
            Some("json_schema") => json!({"type": "json_schema", "json_schema": {
                "name": format.get("name").cloned().unwrap_or(json!("response")),
                "schema": format.get("schema").cloned().unwrap_or(Value::Null),
                "strict": format.get("strict").cloned().unwrap_or(Value::Bool(false))}}),
            _ => format.clone(),
        };
        openai.insert("response_format".into(), response_format);
    }
    let request = validation::chat_request(Value::Object(openai).to_string().as_bytes()).map_err(in_responses_terms)?;
    // A response repeats what it was asked with, defaults filled in.
    let mut echo = Map::new();
    for (field, default) in [
        ("instructions", Value::Null),
        ("max_output_tokens", Value::Null),
        ("temperature", json!(request.options.sampling.temperature)),
        ("top_p", json!(request.options.sampling.top_p)),
        ("tools", json!([])),
        ("tool_choice", json!("auto")),
        ("parallel_tool_calls", json!(true)),
        ("text", json!({"format": {"type": "text"}})),
        ("metadata", json!({})),
    ] {
        echo.insert(field.into(), present(field).cloned().unwrap_or(default));
    }
    Ok((Prompt::Chat(request.messages), request.options, echo))
}

/// An error the chat validation (or the worker, compiling a grammar) found, in the names of the Responses API's
/// fields.
fn in_responses_terms(e: ApiError) -> ApiError {
    match e {
        ApiError::InvalidField { param, message } => {
            let rename = |s: &str| {
                s.replace("response_format", "text.format")
                    .replace("max_tokens", "max_output_tokens")
                    .replace(".function.", ".")
            };
            ApiError::InvalidField { param: rename(&param), message: rename(&message) }
        }
        other => other,
    }
}

/// The output items of an answer as it streams, and the events that tell them: one item for the reasoning, one
/// message for the text, one function call per call, in the order the model writes them. The items so far are the
/// response's `output`, so the whole answer is what the stream built.
struct Items {
    /// The output so far.
    output: Vec<Value>,
    /// Which kind of item is open (`reasoning`, `message`, `function_call`), at the end of `output`.
    open: Option<&'static str>,
    calls: Option<ToolCallParser>,
}

type Events = Vec<(&'static str, Value)>;

impl Items {
    fn new(tools: Option<ToolFormat>) -> Self {
        Self { output: Vec::new(), open: None, calls: tools.map(ToolCallParser::new) }
    }

    fn index(&self) -> usize {
        self.output.len().saturating_sub(1)
    }

    fn item_id(&self) -> Value {
        self.output.last().map(|i| i["id"].clone()).unwrap_or(Value::Null)
    }

    /// Opens an item of `kind` (closing the open one).
    fn start(&mut self, kind: &'static str, item: Value, out: &mut Events) {
        self.close(out);
        self.output.push(item.clone());
        out.push(("response.output_item.added", json!({"output_index": self.index(), "item": item})));
        self.open = Some(kind);
        match kind {
            "message" => {
                let part = json!({"type": "output_text", "text": "", "annotations": []});
                out.push((
                    "response.content_part.added",
                    json!({"item_id": self.item_id(),
                    "output_index": self.index(), "content_index": 0, "part": part}),
                ));
            }
            "reasoning" => {
                let part = json!({"type": "reasoning_text", "text": ""});
                out.push((
                    "response.content_part.added",
                    json!({"item_id": self.item_id(),
                    "output_index": self.index(), "content_index": 0, "part": part}),
                ));
            }
            _ => {}
        }
    }

    /// Closes the open item: its `.done` events with the whole text or arguments.
    fn close(&mut self, out: &mut Events) {
        let Some(kind) = self.open.take() else { return };
        let (index, id) = (self.index(), self.item_id());
        let Some(item) = self.output.last_mut() else { return };
        item["status"] = json!("completed");
        match kind {
            "message" | "reasoning" => {
                let part = item["content"][0].clone();
                let done = if kind == "message" { "response.output_text.done" } else { "response.reasoning_text.done" };
                out.push((
                    done,
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": part["text"]}),
                ));
                out.push((
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index,
                    "content_index": 0, "part": part}),
                ));
            }
            _ => out.push((
                "response.function_call_arguments.done",
                json!({"item_id": id, "output_index": index,
                "arguments": item["arguments"]}),
            )),
        }
        out.push(("response.output_item.done", json!({"output_index": index, "item": item.clone()})));
    }

    /// Text for the message (or, `reasoning`, the reasoning item), opening one when another item is open.
    fn text(&mut self, kind: &'static str, text: &str, out: &mut Events) {
        if text.is_empty() {
            return;
        }
        if self.open != Some(kind) {
            let item = match kind {
                "reasoning" => json!({"type": "reasoning", "id": new_id("rs"), "summary": [],
                    "content": [{"type": "reasoning_text", "text": ""}], "status": "in_progress"}),
                _ => json!({"type": "message", "id": new_id("msg"), "role": "assistant", "status": "in_progress",
                    "content": [{"type": "output_text", "text": "", "annotations": []}]}),
            };
            self.start(kind, item, out);
        }
        let (index, id) = (self.index(), self.item_id());
        if let Some(item) = self.output.last_mut() {
            let so_far = item["content"][0]["text"].as_str().unwrap_or_default().to_string();
            item["content"][0]["text"] = Value::String(so_far + text);
        }
        let event = if kind == "message" { "response.output_text.delta" } else { "response.reasoning_text.delta" };
        out.push((event, json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text})));
    }

    fn tool_events(&mut self, events: Vec<ToolEvent>, out: &mut Events) {
        for e in events {
            match e {
                ToolEvent::Text(text) => self.text("message", &text, out),
                ToolEvent::Call { name, .. } => {
                    let item = json!({"type": "function_call", "id": new_id("fc"), "call_id": new_id("call"),
                        "name": name, "arguments": "", "status": "in_progress"});
                    self.start("function_call", item, out);
                }
                ToolEvent::Arguments { json, .. } => {
                    let (index, id) = (self.index(), self.item_id());
                    if let Some(item) = self.output.last_mut() {
                        let so_far = item["arguments"].as_str().unwrap_or_default().to_string();
                        item["arguments"] = Value::String(so_far + &json);
                    }
                    out.push((
                        "response.function_call_arguments.delta",
                        json!({"item_id": id,
                        "output_index": index, "delta": json}),
                    ));
                }
            }
        }
    }

    /// The events for a split piece of output.
    fn split(&mut self, piece: &Split, out: &mut Events) {
        self.text("reasoning", &piece.reasoning, out);
        match self.calls.as_mut() {
            Some(parser) => {
                let events = parser.push(&piece.content);
                self.tool_events(events, out);
            }
            None => self.text("message", &piece.content, out),
        }
    }

    /// The events for the end of the output: its last piece, what the parser held back, the last item closed.
    fn finish(&mut self, last: &Split, out: &mut Events) {
        self.split(last, out);
        if let Some(events) = self.calls.as_mut().map(ToolCallParser::finish) {
            self.tool_events(events, out);
        }
        self.close(out);
    }
}

/// The `response` object: `status` `in_progress`, `completed` or `incomplete`, with what the request asked for
/// (`echo`).
fn response_object(
    id: &str,
    created: u64,
    model: &str,
    echo: &Map<String, Value>,
    output: &[Value],
    ended: Option<(FinishReason, usize, usize)>,
) -> Value {
    let (status, incomplete, usage) = match ended {
        None => ("in_progress", Value::Null, Value::Null),
        Some((finish, prompt, completion)) => {
            let usage = json!({"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + completion});
            match finish {
                FinishReason::Length => ("incomplete", json!({"reason": "max_output_tokens"}), usage),
                FinishReason::Stop => ("completed", Value::Null, usage),
            }
        }
    };
    let mut response = json!({"id": id, "object": "response", "created_at": created, "status": status,
        "model": model, "output": output, "error": null, "incomplete_details": incomplete, "usage": usage,
        "store": false, "background": false});
    if let Value::Object(r) = &mut response {
        r.extend(echo.clone());
    }
    response
}

/// `POST /v1/responses`.
pub async fn responses(State(inference): State<Inference>, request: Request) -> Response {
    let body = match crate::server::read_body(request).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let (prompt, options, echo) = match translate(&body) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let Started { events: mut rx, reasoning, prompt_tokens, tools } =
        match inference.begin(prompt, options.clone()).await {
            Ok(started) => started,
            Err(e) => return in_responses_terms(e).into_response(),
        };
    let mut split = Output::new(reasoning);
    let id = new_id("resp");
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let model = options.model.clone();
    let mut items = Items::new(tools);
    let start = response_object(&id, created, &model, &echo, &[], None);
    // The response once generation has ended.
    let ended = move |items: &Items, finish: FinishReason, completion_tokens: usize| {
        response_object(&id, created, &model, &echo, &items.output, Some((finish, prompt_tokens, completion_tokens)))
    };
    if options.stream {
        let (sse, out) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
        tokio::spawn(async move {
            let mut sequence = 0u64;
            let mut send_all = async |events: Events| {
                for (name, mut v) in events {
                    v["type"] = json!(name);
                    v["sequence_number"] = json!(sequence);
                    sequence += 1;
                    if sse.send(Ok(SseEvent::default().event(name).data(v.to_string()))).await.is_err() {
                        return false;
                    }
                }
                true
            };
            let opening = vec![
                ("response.created", json!({"response": start})),
                ("response.in_progress", json!({"response": start})),
            ];
            if !send_all(opening).await {
                return;
            }
            loop {
                let event = tokio::select! {
                    event = rx.recv() => event,
                    _ = sse.closed() => return,
                };
                let mut events = Vec::new();
                match event {
                    Some(Event::Text { text, .. }) => items.split(&split.push(&text), &mut events),
                    Some(Event::Done { finish, completion_tokens, .. }) => {
                        items.finish(&split.finish(), &mut events);
                        let whole = ended(&items, finish, completion_tokens);
                        let name =
                            if finish == FinishReason::Length { "response.incomplete" } else { "response.completed" };
                        events.push((name, json!({"response": whole})));
                        send_all(events).await;
                        return;
                    }
                    Some(Event::Failed(e)) => {
                        let error = e.body()["error"].clone();
                        let failed =
                            json!({"code": error["code"], "message": error["message"], "param": error["param"]});
                        send_all(vec![("error", failed)]).await;
                        return;
                    }
                    Some(Event::Started { .. }) => {}
                    None => return,
                }
                if !send_all(events).await {
                    return;
                }
            }
        });
        return Sse::new(ReceiverStream::new(out)).into_response();
    }
    let mut events = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Text { text, .. } => items.split(&split.push(&text), &mut events),
            Event::Done { finish, completion_tokens, .. } => {
                items.finish(&split.finish(), &mut events);
                let whole = ended(&items, finish, completion_tokens);
                return Json(whole).into_response();
            }
            Event::Failed(e) => return e.into_response(),
            Event::Started { .. } => {}
        }
    }
    ApiError::Internal("the inference thread stopped".into()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use exo_engine::tool_calls::ToolChoice;

    #[test]
    fn input_items_instructions_and_tools_become_the_chat_they_stand_for() {
        let (prompt, o, _) = translate(
            br#"{"model": "m", "instructions": "Be brief.", "max_output_tokens": 30, "store": false,
                "tools": [{"type": "function", "name": "get_time", "description": "Time", "parameters": {"type": "object"}, "strict": true}],
                "tool_choice": {"type": "function", "name": "get_time"}, "parallel_tool_calls": false,
                "input": [{"role": "user", "content": [{"type": "input_text", "text": "Time in"}, {"type": "input_text", "text": "Rome?"}]},
                    {"type": "reasoning", "id": "rs_1", "summary": []},
                    {"type": "function_call", "call_id": "call_1", "name": "get_time", "arguments": "{\"city\": \"Rome\"}"},
                    {"type": "function_call_output", "call_id": "call_1", "output": "10:00"},
                    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "It is 10:00."}]},
                    {"role": "developer", "content": "Answer in French."}]}"#,
        )
        .unwrap();
        let Prompt::Chat(m) = prompt else { panic!("a chat") };
        let turns: Vec<(&str, &str, usize)> =
            m.iter().map(|m| (m.role.as_str(), m.content.as_str(), m.tool_calls.len())).collect();
        assert_eq!(
            turns,
            [
                ("system", "Be brief.", 0),
                ("user", "Time in\nRome?", 0),
                ("assistant", "", 1),
                ("tool", "10:00", 0),
                ("assistant", "It is 10:00.", 0),
                ("system", "Answer in French.", 0),
            ]
        );
        assert_eq!(m[2].tool_calls[0].arguments, json!({"city": "Rome"}));
        assert_eq!(m[3].tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(o.max_tokens, Some(30));
        let tools = o.tools.expect("tools");
        assert_eq!((tools.choice, tools.parallel), (ToolChoice::Named("get_time".into()), false));
        let (prompt, o, _) = translate(
            br#"{"model": "m", "input": "Hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": true}}}"#,
        )
        .unwrap();
        assert!(matches!(prompt, Prompt::Chat(ref m) if m.len() == 1 && m[0].content == "Hi"));
        assert_eq!(o.schema, Some(json!({"type": "object"})));
    }

    /// Codex CLI's tools: function tools, a namespace of function tools, and OpenAI's hosted web search, which
    /// this node cannot run and so does not offer.
    #[test]
    fn namespaces_are_offered_by_their_tools_and_hosted_tools_are_not_offered() {
        let (_, o, _) = translate(
            br#"{"model": "m", "input": "a", "tools": [
                {"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
                {"type": "namespace", "name": "agents", "description": "Sub-agents.", "tools": [
                    {"type": "function", "name": "close_agent", "description": "Close one.", "parameters": {"type": "object"}}]},
                {"type": "web_search", "external_web_access": false}]}"#,
        )
        .unwrap();
        let names: Vec<&str> = o.tools.as_ref().unwrap().tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["exec_command", "close_agent"]);
    }

    #[test]
    fn state_and_what_cannot_be_honoured_are_refused_by_name() {
        let refuse = |body: &str, param: &str, says: &str| {
            let e = translate(body.as_bytes()).err().unwrap_or_else(|| panic!("{body} accepted"));
            assert_eq!((e.status(), e.param()), (400, Some(param)), "{e}");
            assert!(e.to_string().contains(says), "{says:?} not in {e}");
        };
        refuse(r#"{"model": "m", "input": "a", "previous_response_id": "resp_1"}"#, "previous_response_id", "no state");
        refuse(r#"{"model": "m", "input": "a", "store": true}"#, "store", "no state");
        refuse(r#"{"model": "m", "input": "a", "background": true}"#, "background", "no state");
        refuse(r#"{"model": "m"}"#, "input", "required");
        refuse(r#"{"model": "m", "input": []}"#, "input", "at least one");
        refuse(r#"{"model": "m", "input": [{"type": "web_search_call"}]}"#, "input[0].type", "web_search_call");
        refuse(
            r#"{"model": "m", "input": [{"role": "user", "content": [{"type": "input_image"}]}]}"#,
            "input[0].content[0]",
            "text parts",
        );
        refuse(
            r#"{"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}"#,
            "input[0].call_id",
            "string",
        );
        refuse(r#"{"model": "m", "input": "a", "tools": [{"name": "f"}]}"#, "tools[0].type", "function");
        refuse(
            r#"{"model": "m", "input": "a", "tools": [{"type": "namespace", "name": "n", "tools": [{"type": "mcp"}]}]}"#,
            "tools[0].tools[0].type",
            "function tool",
        );
        refuse(
            r#"{"model": "m", "input": "a", "tools": [{"type": "function", "name": "a b"}]}"#,
            "tools[0].name",
            "a b",
        );
        refuse(r#"{"model": "m", "input": "a", "tool_choice": {"type": "file_search"}}"#, "tool_choice", "tool_choice");
        refuse(r#"{"model": "m", "input": "a", "text": {"format": {"type": "xml"}}}"#, "text.format", "json_schema");
        refuse(r#"{"model": "m", "input": "a", "top_logprobs": 2}"#, "top_logprobs", "chat/completions");
        assert!(translate(br#"{"model": "m", "input": "a", "top_logprobs": 0}"#).is_ok());
        refuse(
            r#"{"model": "m", "input": "a", "max_output_tokens": "many"}"#,
            "max_output_tokens",
            "max_output_tokens",
        );
    }

    #[test]
    fn output_items_stream_in_order_and_make_the_whole_answer() {
        let mut items = Items::new(Some(ToolFormat::Hermes));
        let mut out = Vec::new();
        let piece = |reasoning: &str, content: &str| Split { reasoning: reasoning.into(), content: content.into() };
        items.split(&piece("Hm.", ""), &mut out);
        items.split(&piece("", "Checking.\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"city\""), &mut out);
        items.finish(&piece("", ": \"Rome\"}}\n</tool_call>"), &mut out);
        let names: Vec<&str> = out.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            &names[..3],
            ["response.output_item.added", "response.content_part.added", "response.reasoning_text.delta"]
        );
        assert_eq!(names.last(), Some(&"response.output_item.done"));
        assert!(names.contains(&"response.function_call_arguments.delta"));
        assert!(names.contains(&"response.function_call_arguments.done"));
        // Every delta names the item it adds to, at its index.
        for (name, e) in &out {
            if name.ends_with(".delta") {
                let i = e["output_index"].as_u64().unwrap() as usize;
                assert_eq!(e["item_id"], items.output[i]["id"], "{name}");
            }
        }
        let kinds: Vec<&str> = items.output.iter().map(|i| i["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["reasoning", "message", "function_call"]);
        assert_eq!(items.output[0]["content"][0]["text"], "Hm.");
        assert_eq!(items.output[1]["content"][0]["text"].as_str().map(str::trim_end), Some("Checking."));
        let call = &items.output[2];
        assert_eq!(call["name"], "get_time");
        assert_eq!(
            serde_json::from_str::<Value>(call["arguments"].as_str().unwrap()).unwrap(),
            json!({"city": "Rome"})
        );
        assert!(
            call["call_id"].as_str().unwrap().starts_with("call_") && call["id"].as_str().unwrap().starts_with("fc_")
        );
        assert!(items.output.iter().all(|i| i["status"] == "completed"));
        let echo = Map::from_iter([("tool_choice".to_string(), json!("required"))]);
        let whole = response_object("resp_1", 0, "m", &echo, &items.output, Some((FinishReason::Length, 5, 7)));
        assert_eq!(whole["tool_choice"], "required");
        assert_eq!(
            (whole["status"].as_str(), whole["incomplete_details"]["reason"].as_str()),
            (Some("incomplete"), Some("max_output_tokens"))
        );
        assert_eq!(whole["usage"]["total_tokens"], 12);
    }
}
