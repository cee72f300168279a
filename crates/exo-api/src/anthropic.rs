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
//! (`{"type": "error", "error": {"type", "message"}}`). Tools (`tools`,
//! `tool_use` and `tool_result` blocks) and images are refused with a 400 naming them until they are supported.

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

/// The text of a `content` (or `system`): a string, or blocks of which only text is supported.
fn text_of(value: &Value, param: &str) -> Result<String, ApiError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut text = String::new();
            for (i, block) in blocks.iter().enumerate() {
                let here = format!("{param}[{i}]");
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let t = block.get("text").and_then(Value::as_str);
                        let t = t.ok_or_else(|| ApiError::field(&here, format!("{here}.text must be a string")))?;
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(t);
                    }
                    // Earlier turns' reasoning is not shown to the model again (the templates drop it too).
                    Some("thinking" | "redacted_thinking") => {}
                    Some(other) => {
                        return Err(ApiError::field(
                            &here,
                            format!("{here} is a '{other}' block; only text blocks are supported by this server yet"),
                        ))
                    }
                    None => return Err(ApiError::field(&here, format!("{here} needs a type"))),
                }
            }
            Ok(text)
        }
        _ => Err(ApiError::field(param, format!("{param} must be a string or an array of content blocks"))),
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
    if present("tools").is_some_and(|t| t.as_array().is_none_or(|a| !a.is_empty())) {
        return Err(ApiError::field("tools", "tools are not supported by this server yet; leave them out"));
    }
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
                let role = match m.get("role").and_then(Value::as_str) {
                    Some(r @ ("user" | "assistant")) => r,
                    _ => {
                        return Err(ApiError::field(
                            &format!("{here}.role"),
                            format!("{here}.role must be \"user\" or \"assistant\""),
                        ))
                    }
                };
                let content = m.get("content").unwrap_or(&Value::Null);
                messages.push(json!({"role": role, "content": text_of(content, &format!("{here}.content"))?}));
            }
        }
        _ => return Err(ApiError::field("messages", "messages must be an array of messages")),
    }
    let mut openai = Map::new();
    openai.insert("messages".into(), Value::Array(messages));
    for (theirs, ours) in [
        ("model", "model"),
        ("max_tokens", "max_tokens"),
        ("stop_sequences", "stop"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("stream", "stream"),
    ] {
        if let Some(v) = present(theirs) {
            openai.insert(ours.into(), v.clone());
        }
    }
    let show_thinking = present("thinking").and_then(|t| t.get("type")).and_then(Value::as_str) != Some("disabled");
    let request = validation::chat_request(Value::Object(openai).to_string().as_bytes())?;
    Ok((Prompt::Chat(request.messages), request.options, show_thinking))
}

/// A message id.
fn message_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    format!("msg_{nanos:x}{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Anthropic's `stop_reason` for how generation ended.
fn stop_reason(finish: FinishReason, stop_sequence: &Option<String>) -> &'static str {
    match (finish, stop_sequence) {
        (FinishReason::Length, _) => "max_tokens",
        (FinishReason::Stop, Some(_)) => "stop_sequence",
        (FinishReason::Stop, None) => "end_turn",
    }
}

/// The blocks being streamed: which is open, and how many were opened.
#[derive(Default)]
struct Blocks {
    open: Option<&'static str>,
    count: usize,
}

impl Blocks {
    /// The events that put `text` into a block of `kind` (`thinking` or `text`): closing the other kind, opening
    /// this one, then the delta.
    fn add(&mut self, kind: &'static str, text: &str, out: &mut Vec<(&'static str, Value)>) {
        if text.is_empty() {
            return;
        }
        if self.open != Some(kind) {
            self.close(out);
            let block = match kind {
                "thinking" => json!({"type": "thinking", "thinking": "", "signature": ""}),
                _ => json!({"type": "text", "text": ""}),
            };
            out.push((
                "content_block_start",
                json!({"type": "content_block_start", "index": self.count, "content_block": block}),
            ));
            self.open = Some(kind);
            self.count += 1;
        }
        let delta = match kind {
            "thinking" => json!({"type": "thinking_delta", "thinking": text}),
            _ => json!({"type": "text_delta", "text": text}),
        };
        out.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": self.count - 1, "delta": delta}),
        ));
    }

    fn close(&mut self, out: &mut Vec<(&'static str, Value)>) {
        if self.open.take().is_some() {
            out.push(("content_block_stop", json!({"type": "content_block_stop", "index": self.count - 1})));
        }
    }

    /// The events for a split piece of output.
    fn split(&mut self, piece: &Split, show_thinking: bool, out: &mut Vec<(&'static str, Value)>) {
        if show_thinking {
            self.add("thinking", &piece.reasoning, out);
        }
        self.add("text", &piece.content, out);
    }
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
    let Started { events: mut rx, reasoning, prompt_tokens } = match inference.begin(prompt, options.clone()).await {
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
            let mut blocks = Blocks::default();
            loop {
                let event = tokio::select! {
                    event = rx.recv() => event,
                    _ = sse.closed() => return,
                };
                let mut events = Vec::new();
                match event {
                    Some(Event::Text { text, .. }) => blocks.split(&split.push(&text), show_thinking, &mut events),
                    Some(Event::Done { finish, stop_sequence, completion_tokens, .. }) => {
                        blocks.split(&split.finish(), show_thinking, &mut events);
                        if blocks.count == 0 {
                            // A message has at least one block, if empty.
                            events.push((
                                "content_block_start",
                                json!({"type": "content_block_start", "index": 0,
                                "content_block": {"type": "text", "text": ""}}),
                            ));
                            events.push(("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
                        }
                        blocks.close(&mut events);
                        events.push(("message_delta", json!({"type": "message_delta",
                            "delta": {"stop_reason": stop_reason(finish, &stop_sequence), "stop_sequence": stop_sequence},
                            "usage": {"output_tokens": completion_tokens}})));
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
    let mut whole = Split::default();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Text { text, .. } => {
                let p = split.push(&text);
                whole.reasoning.push_str(&p.reasoning);
                whole.content.push_str(&p.content);
            }
            Event::Done { finish, stop_sequence, completion_tokens, .. } => {
                let p = split.finish();
                whole.reasoning.push_str(&p.reasoning);
                whole.content.push_str(&p.content);
                let mut content = Vec::new();
                if show_thinking && !whole.reasoning.is_empty() {
                    content.push(json!({"type": "thinking", "thinking": whole.reasoning, "signature": ""}));
                }
                content.push(json!({"type": "text", "text": whole.content}));
                return Json(json!({"id": id, "type": "message", "role": "assistant", "model": model,
                    "content": content, "stop_reason": stop_reason(finish, &stop_sequence), "stop_sequence": stop_sequence,
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

    #[test]
    fn a_messages_request_becomes_the_chat_it_stands_for() {
        let (prompt, o, show) = translate(
            br#"{"model": "m", "max_tokens": 9, "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
                "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
                             {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm"}, {"type": "text", "text": "Hello"}]},
                             {"role": "user", "content": "Bye"}],
                "stop_sequences": ["\n\n"], "temperature": 0.5, "top_k": 5, "metadata": {"user_id": "u"}, "stream": true}"#,
        )
        .unwrap();
        let Prompt::Chat(m) = prompt else { panic!("a chat") };
        let pairs: Vec<(&str, &str)> = m.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect();
        assert_eq!(pairs, [("system", "Be brief."), ("user", "Hi\nthere"), ("assistant", "Hello"), ("user", "Bye")]);
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
        refuse(&format!(r#"{{{m}, "max_tokens": 5, "tools": [{{"name": "f"}}]}}"#), "tools");
        refuse(
            r#"{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}"#,
            "messages[0].content[0]",
        );
        refuse(
            r#"{"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "a"}]}"#,
            "messages[0].role",
        );
        refuse(r#"{"model": "m", "max_tokens": 5, "messages": []}"#, "messages");
        refuse(&format!(r#"{{{m}, "max_tokens": 5, "temperature": 3}}"#), "temperature");
        let e = ApiError::QueueFull(4);
        assert_eq!(error_body(&e)["error"]["type"], "overloaded_error");
        assert_eq!(error_body(&ApiError::ModelNotFound("x".into()))["type"], "error");
    }

    #[test]
    fn streamed_blocks_open_and_close_in_order() {
        let mut b = Blocks::default();
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
        let mut b = Blocks::default();
        let mut out = Vec::new();
        b.split(&Split { reasoning: "hm".into(), content: "Hi".into() }, false, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1["content_block"]["type"], "text");
    }
}
