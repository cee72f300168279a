//! The HTTP server: routes, OpenAI's response and chunk shapes, and server-sent events.
//!
//! Handlers read the body themselves (so that malformed JSON and oversized bodies get OpenAI-shaped 400 and 413
//! responses, not axum's defaults), validate it ([`crate::validation`]), queue a job ([`crate::inference`]) and
//! wait for its first event: a failure there (unknown model, prompt too long) becomes the response's status; after
//! it, output streams as SSE chunks or is collected into one JSON response. A chat with a model that thinks gets its
//! `<think>` reasoning in `reasoning_content`, apart from the answer in `content` (llama-server's and DeepSeek's
//! shape; `reasoning_format: "none"` keeps it all in `content`). The web chat's files are compiled
//! into the binary and served at `/`. Every request passes [`crate::access`] first: the API key and cross-origin
//! checks, for every route but the public ones ([`is_public`]).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use exo_engine::generation::FinishReason;
use exo_engine::reasoning::{ReasoningSplitter, Split};
use exo_engine::tool_calls::{ToolCallParser, ToolEvent, ToolFormat};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::access::{self, Access, Guard};
use crate::error::ApiError;
use crate::inference::{Event, Inference, Job, Prompt};
use crate::logprobs::TokenLogprob;
use crate::topology;
use crate::validation::{self, Options, ReasoningFormat};
use crate::{anthropic, ollama, responses};

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 4 << 20;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(self.body())).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"exo\""));
        }
        response
    }
}

/// What every handler can reach.
#[derive(Clone)]
struct AppState {
    inference: Inference,
}

impl axum::extract::FromRef<AppState> for Inference {
    fn from_ref(state: &AppState) -> Inference {
        state.inference.clone()
    }
}

/// The web chat: a page, its script and its style sheet.
const WEB_FILES: [(&str, &str, &str); 3] = [
    ("/", "text/html; charset=utf-8", include_str!("../web/index.html")),
    ("/app.js", "text/javascript; charset=utf-8", include_str!("../web/app.js")),
    ("/style.css", "text/css; charset=utf-8", include_str!("../web/style.css")),
];

/// Paths anyone may GET without the API key: the health check, and the web chat's files (so that the page can load
/// and ask for the key).
pub fn is_public(path: &str) -> bool {
    path == "/healthcheck" || WEB_FILES.iter().any(|(p, ..)| *p == path)
}

/// The API's routes (and the web chat's) over `inference`, behind `access`'s checks.
pub fn router(inference: Inference, access: Access) -> Router {
    let mut router = Router::new()
        .route("/healthcheck", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/downloads", get(downloads))
        .route("/v1/topology", get(topology_document))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        // OpenAI's Responses API, stateless.
        .route("/v1/responses", post(responses::responses))
        // Anthropic's Messages API.
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        // Ollama's API at its own paths.
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/tags", get(ollama::tags))
        .route("/api/ps", get(ollama::ps))
        .route("/api/show", post(ollama::show))
        .route("/api/pull", post(ollama::pull))
        .route("/api/version", get(ollama::version));
    for (path, content_type, text) in WEB_FILES {
        router = router.route(path, get(move || async move { ([(header::CONTENT_TYPE, content_type)], text) }));
    }
    router
        .fallback(|method: Method, uri: Uri| async move { ApiError::UnknownEndpoint(format!("{method} {uri}")) })
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(Guard { access, public: is_public }, access::guard))
        .with_state(AppState { inference })
}

/// A model as `/v1/models` lists it: OpenAI's fields, and what exo knows of it (`exo`: where it comes from, its
/// size and layers, and how much of it this node has).
fn model_entry(id: &str, listing: Option<&exo_models::Listing>) -> Value {
    let mut entry = json!({"id": id, "object": "model", "created": 0, "owned_by": "exo"});
    if let Some(l) = listing {
        entry["exo"] = serde_json::to_value(l).unwrap_or(Value::Null);
    }
    entry
}

async fn models(State(state): State<AppState>) -> Response {
    // Listing reads the caches' folders: blocking.
    let store = state.inference.store().clone();
    match tokio::task::spawn_blocking(move || store.list()).await {
        Ok(list) => {
            let data: Vec<Value> = list.iter().map(|l| model_entry(&l.id, Some(l))).collect();
            Json(json!({"object": "list", "data": data})).into_response()
        }
        Err(e) => ApiError::Internal(e.to_string()).into_response(),
    }
}

async fn model(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let store = state.inference.store().clone();
    let found = tokio::task::spawn_blocking(move || {
        // As in a request's body, a path here is no model (unless it is the operator's --model).
        store.resolve_untrusted(&id).map(|_| {
            let listing = store.list().into_iter().find(|l| l.id == id);
            model_entry(&id, listing.as_ref())
        })
    })
    .await;
    match found {
        Ok(Ok(entry)) => Json(entry).into_response(),
        Ok(Err(e)) => ApiError::from(exo_cluster::ClusterError::from(e)).into_response(),
        Err(e) => ApiError::Internal(e.to_string()).into_response(),
    }
}

/// `GET /v1/downloads`: this node's downloads, running and recent, with their byte counts.
async fn downloads(State(state): State<AppState>) -> Json<Value> {
    let list = state.inference.store().downloads().list();
    Json(json!({"object": "list", "data": serde_json::to_value(list).unwrap_or(Value::Null)}))
}

async fn topology_document(State(state): State<AppState>) -> Json<Value> {
    let status = state.inference.status();
    // Reading the machine's memory is a blocking system call.
    let doc = tokio::task::spawn_blocking(move || {
        let cluster = state.inference.cluster();
        topology::topology(&cluster.nodes(), &cluster.placed_plans(), &status, cluster.kv_cache_bytes())
    })
    .await;
    Json(doc.unwrap_or_else(|e| ApiError::Internal(e.to_string()).body()))
}

pub(crate) async fn read_body(request: Request) -> Result<Bytes, ApiError> {
    // A body declared too large is refused before any of it is read.
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return Err(ApiError::BodyTooLarge(BODY_LIMIT));
    }
    axum::body::to_bytes(request.into_body(), BODY_LIMIT).await.map_err(|e| {
        // A body without a declared length that grows past the limit.
        let mut source: Option<&dyn std::error::Error> = Some(&e);
        while let Some(s) = source {
            if s.to_string().contains("length limit") {
                return ApiError::BodyTooLarge(BODY_LIMIT);
            }
            source = s.source();
        }
        ApiError::MalformedJson(format!("the request body could not be read: {e}"))
    })
}

async fn chat(State(AppState { inference, .. }): State<AppState>, request: Request) -> Response {
    let request = match read_body(request).await.and_then(|b| validation::chat_request(&b)) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    respond(inference, Prompt::Chat(request.messages), request.options, Kind::Chat).await
}

async fn completions(State(AppState { inference, .. }): State<AppState>, request: Request) -> Response {
    let request = match read_body(request).await.and_then(|b| validation::completion_request(&b)) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    respond(inference, Prompt::Text(request.prompt), request.options, Kind::Text).await
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Text,
}

fn response_id(kind: Kind) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let prefix = match kind {
        Kind::Chat => "chatcmpl",
        Kind::Text => "cmpl",
    };
    format!("{prefix}-{nanos:x}{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

async fn respond(inference: Inference, prompt: Prompt, options: Options, kind: Kind) -> Response {
    let (tx, rx) = mpsc::unbounded_channel();
    if let Err(e) = inference.submit(Job { prompt, options: options.clone(), events: tx }) {
        return e.into_response();
    }
    answer(rx, &options, kind).await
}

/// The response to a job, from its events: a failure before output as the response's status, then SSE chunks or
/// one JSON body.
async fn answer(mut rx: mpsc::UnboundedReceiver<Event>, options: &Options, kind: Kind) -> Response {
    let stream = options.stream;
    let include_usage = options.include_usage;
    let logprobs = options.logprobs;
    let model = options.model.clone();
    // The first event says whether the request can be served at all.
    let (reasoning, tools) = match rx.recv().await {
        Some(Event::Started { reasoning, tools, .. }) => (reasoning, tools),
        Some(Event::Failed(e)) => return e.into_response(),
        _ => return ApiError::Internal("the inference thread stopped".into()).into_response(),
    };
    // Only chats with a thinking model have reasoning to split off, and only unless the request asked for none.
    let mut split =
        reasoning.filter(|_| options.reasoning_format == ReasoningFormat::Deepseek).map(ReasoningSplitter::new);
    // With tools offered, the answer's content is read for calls.
    let mut calls = tools.map(CallReader::new);
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let shape = Shape { id: response_id(kind), created, model, kind };
    if stream {
        let (sse_tx, sse_rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
        tokio::spawn(async move {
            let send = |v: Value| {
                let tx = sse_tx.clone();
                async move { tx.send(Ok(SseEvent::default().data(v.to_string()))).await.is_ok() }
            };
            if matches!(kind, Kind::Chat)
                && !send(shape.chunk(json!({"role": "assistant", "content": ""}), None, None)).await
            {
                return;
            }
            loop {
                // The client going away drops the response body; stop waiting for tokens then, so the worker
                // sees the closed channel before its next token.
                let event = tokio::select! {
                    event = rx.recv() => event,
                    _ = sse_tx.closed() => return,
                };
                let Some(event) = event else { return };
                let ok = match event {
                    Event::Text { text, logprobs } => {
                        let mut lp = (!logprobs.is_empty()).then(|| shape.logprobs(&logprobs, 0));
                        let unsplit = split.is_none() && calls.is_none();
                        let piece = match split.as_mut() {
                            Some(s) => s.push(&text),
                            None => Split { reasoning: String::new(), content: text },
                        };
                        let deltas = match calls.as_mut() {
                            Some(c) => c.deltas(&piece),
                            None if unsplit || !piece.is_empty() => vec![split_delta(&piece)],
                            None => Vec::new(),
                        };
                        if deltas.is_empty() {
                            // Held back (it may be the start of a tag or a call): a token to report comes alone.
                            match lp.take() {
                                Some(lp) => send(shape.chunk(json!({"content": ""}), Some(lp), None)).await,
                                None => true,
                            }
                        } else {
                            let mut ok = true;
                            for delta in deltas {
                                ok = ok && send(shape.chunk(delta, lp.take(), None)).await;
                            }
                            ok
                        }
                    }
                    Event::Done { finish, prompt_tokens, completion_tokens, .. } => {
                        let rest = split.as_mut().map(ReasoningSplitter::finish).unwrap_or_default();
                        let deltas = match calls.as_mut() {
                            Some(c) => {
                                let mut d = c.deltas(&rest);
                                d.extend(c.finish());
                                d
                            }
                            None if !rest.is_empty() => vec![split_delta(&rest)],
                            None => Vec::new(),
                        };
                        for delta in deltas {
                            let _ = send(shape.chunk(delta, None, None)).await;
                        }
                        let finish = finish_reason(finish, calls.as_ref());
                        let _ = send(shape.chunk(json!({}), None, Some(finish))).await;
                        if include_usage {
                            let mut u = shape.envelope();
                            u["choices"] = json!([]);
                            u["usage"] = usage(prompt_tokens, completion_tokens);
                            let _ = send(u).await;
                        }
                        let _ = sse_tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
                        return;
                    }
                    Event::Failed(e) => {
                        let _ = send(e.body()).await;
                        return;
                    }
                    Event::Started { .. } => true,
                };
                if !ok {
                    // The client went away: dropping `rx` tells the worker to stop.
                    return;
                }
            }
        });
        return Sse::new(ReceiverStream::new(sse_rx)).into_response();
    }

    let (mut text, mut reasoning_text) = (String::new(), String::new());
    let mut tokens: Vec<TokenLogprob> = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Text { text: t, logprobs } => {
                match split.as_mut().map(|s| s.push(&t)) {
                    None => text.push_str(&t),
                    Some(piece) => {
                        reasoning_text.push_str(&piece.reasoning);
                        text.push_str(&piece.content);
                    }
                }
                tokens.extend(logprobs);
            }
            Event::Done { finish, prompt_tokens, completion_tokens, .. } => {
                if let Some(rest) = split.as_mut().map(ReasoningSplitter::finish) {
                    reasoning_text.push_str(&rest.reasoning);
                    text.push_str(&rest.content);
                }
                if let Some(c) = calls.as_mut() {
                    text = c.read_all(&text);
                }
                let finish = finish_reason(finish, calls.as_ref());
                let lp = logprobs.map(|_| shape.logprobs(&tokens, 0));
                let mut body = shape.envelope();
                body["object"] = json!(match kind {
                    Kind::Chat => "chat.completion",
                    Kind::Text => "text_completion",
                });
                body["choices"] = json!([match kind {
                    Kind::Chat => {
                        let mut message = json!({"role": "assistant", "content": text});
                        // As llama-server: the field is there when there was reasoning.
                        if !reasoning_text.is_empty() {
                            message["reasoning_content"] = json!(reasoning_text);
                        }
                        if let Some(c) = calls.as_ref().filter(|c| !c.calls.is_empty()) {
                            message["tool_calls"] = c.message_calls();
                            // OpenAI's shape: a turn that only calls tools has no content.
                            if text.trim().is_empty() {
                                message["content"] = Value::Null;
                            }
                        }
                        json!({"index": 0, "message": message, "logprobs": lp, "finish_reason": finish})
                    }
                    Kind::Text => json!({"index": 0, "text": text, "logprobs": lp, "finish_reason": finish}),
                }]);
                body["usage"] = usage(prompt_tokens, completion_tokens);
                return Json(body).into_response();
            }
            Event::Failed(e) => return e.into_response(),
            Event::Started { .. } => {}
        }
    }
    ApiError::Internal("the inference thread stopped".into()).into_response()
}

/// `finish_reason`: `tool_calls` for an answer that ended by itself after calling tools.
fn finish_reason(finish: FinishReason, calls: Option<&CallReader>) -> &'static str {
    match calls {
        Some(c) if !c.calls.is_empty() && finish == FinishReason::Stop => "tool_calls",
        _ => finish.as_str(),
    }
}

/// The tool calls read out of a chat's content, and the deltas that stream them: per call a first fragment with
/// `index`, `id`, `type` and the name, then fragments of its arguments.
struct CallReader {
    parser: ToolCallParser,
    /// Each call's id, name and arguments so far.
    calls: Vec<(String, String, String)>,
}

impl CallReader {
    fn new(format: ToolFormat) -> Self {
        Self { parser: ToolCallParser::new(format), calls: Vec::new() }
    }

    /// The deltas for the next piece of output: its reasoning as it is, its content read for calls.
    fn deltas(&mut self, piece: &Split) -> Vec<Value> {
        let mut deltas = Vec::new();
        if !piece.reasoning.is_empty() {
            deltas.push(json!({"reasoning_content": piece.reasoning}));
        }
        let events = self.parser.push(&piece.content);
        deltas.extend(events.into_iter().map(|e| self.delta(e)));
        deltas
    }

    /// The deltas for what the parser held back at the end.
    fn finish(&mut self) -> Vec<Value> {
        let events = self.parser.finish();
        events.into_iter().map(|e| self.delta(e)).collect()
    }

    fn delta(&mut self, event: ToolEvent) -> Value {
        match event {
            ToolEvent::Text(text) => json!({"content": text}),
            ToolEvent::Call { index, name } => {
                let id = call_id();
                self.calls.push((id.clone(), name.clone(), String::new()));
                json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                    "function": {"name": name, "arguments": ""}}]})
            }
            ToolEvent::Arguments { index, json } => {
                if let Some(call) = self.calls.get_mut(index) {
                    call.2.push_str(&json);
                }
                json!({"tool_calls": [{"index": index, "function": {"arguments": json}}]})
            }
        }
    }

    /// All of an answer's content at once: the text that is not calls.
    fn read_all(&mut self, content: &str) -> String {
        let mut events = self.parser.push(content);
        events.extend(self.parser.finish());
        let mut text = String::new();
        for e in events {
            if let ToolEvent::Text(t) = &e {
                text.push_str(t);
            }
            self.delta(e);
        }
        text
    }

    /// The calls as a message's `tool_calls`.
    fn message_calls(&self) -> Value {
        Value::Array(
            self.calls
                .iter()
                .map(|(id, name, arguments)| {
                    json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
                })
                .collect(),
        )
    }
}

/// A new tool call's id: `call_` and 24 random hex digits, as OpenAI's look.
fn call_id() -> String {
    format!("call_{:024x}", rand::random::<u128>() >> 32)
}

/// A chunk's delta for output split into reasoning and answer: the fields that have text (`content: ""` when
/// neither has, as a chunk that only carries a token's log-probability).
fn split_delta(piece: &Split) -> Value {
    let mut delta = json!({});
    if !piece.reasoning.is_empty() {
        delta["reasoning_content"] = json!(piece.reasoning);
    }
    if !piece.content.is_empty() || piece.reasoning.is_empty() {
        delta["content"] = json!(piece.content);
    }
    delta
}

/// What every response and chunk of one request shares.
struct Shape {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
}

impl Shape {
    fn envelope(&self) -> Value {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Text => "text_completion",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model})
    }

    fn chunk(&self, delta: Value, logprobs: Option<Value>, finish: Option<&str>) -> Value {
        let mut v = self.envelope();
        let choice = match self.kind {
            Kind::Chat => json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}),
            Kind::Text => json!({"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")),
                "logprobs": logprobs, "finish_reason": finish}),
        };
        v["choices"] = json!([choice]);
        v
    }

    /// Log-probabilities of `tokens` in the endpoint's format; `offset` is the text offset of the first.
    fn logprobs(&self, tokens: &[TokenLogprob], offset: usize) -> Value {
        match self.kind {
            Kind::Chat => json!({"content": tokens.iter().map(|t| json!({
                "token": t.token, "logprob": t.logprob, "bytes": t.bytes,
                "top_logprobs": t.top.iter().map(|(s, b, l)| json!({"token": s, "logprob": l, "bytes": b})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>()}),
            Kind::Text => {
                let mut offsets = Vec::with_capacity(tokens.len());
                let mut at = offset;
                for t in tokens {
                    offsets.push(at);
                    at += t.token.len();
                }
                json!({
                    "tokens": tokens.iter().map(|t| &t.token).collect::<Vec<_>>(),
                    "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                    "top_logprobs": tokens.iter().map(|t| t.top.iter().map(|(s, _, l)| (s.clone(), json!(l))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
                    "text_offset": offsets,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use exo_engine::generation::FinishReason;
    use exo_engine::reasoning::ThinkStart;

    use super::*;

    /// The events a worker sends for a job whose output is `pieces`, one token each (with its log-probability).
    fn events(reasoning: Option<ThinkStart>, pieces: &[&str]) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(Event::Started { model: "m".into(), prompt_tokens: 5, reasoning, tools: None }).unwrap();
        for piece in pieces {
            let logprob = TokenLogprob {
                token: piece.to_string(),
                bytes: piece.as_bytes().to_vec(),
                logprob: -0.5,
                top: Vec::new(),
            };
            tx.send(Event::Text { text: piece.to_string(), logprobs: vec![logprob] }).unwrap();
        }
        let done = Event::Done {
            finish: FinishReason::Stop,
            stop_sequence: None,
            prompt_tokens: 5,
            completion_tokens: pieces.len(),
            seconds: 0.1,
        };
        tx.send(done).unwrap();
        rx
    }

    /// The response to a chat request with `fields` (besides model and messages) whose output is `pieces`.
    async fn reply(fields: &str, reasoning: Option<ThinkStart>, pieces: &[&str]) -> String {
        let body = format!(
            r#"{{"model": "m", "messages": [{{"role": "user", "content": "Hi"}}], "logprobs": true {fields}}}"#
        );
        let options = validation::chat_request(body.as_bytes()).unwrap().options;
        let response = answer(events(reasoning, pieces), &options, Kind::Chat).await;
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// The chunks of an SSE body, `[DONE]` left out.
    fn chunks(body: &str) -> Vec<Value> {
        let data: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        assert_eq!(data.last(), Some(&"[DONE]"), "{body}");
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect()
    }

    /// The concatenated `delta.{field}` of chunks.
    fn streamed(chunks: &[Value], field: &str) -> String {
        chunks.iter().filter_map(|c| c["choices"][0]["delta"][field].as_str()).collect()
    }

    const THOUGHT: [&str; 8] = ["Let", " me", " see.", "</th", "ink>", "\n\n", "Paris", "."];

    #[tokio::test]
    async fn a_chat_answer_carries_the_reasoning_apart_with_every_tokens_logprob() {
        let r: Value = serde_json::from_str(&reply("", Some(ThinkStart::Open), &THOUGHT).await).unwrap();
        let message = &r["choices"][0]["message"];
        assert_eq!(
            (message["reasoning_content"].as_str(), message["content"].as_str()),
            (Some("Let me see."), Some("Paris."))
        );
        assert_eq!(r["choices"][0]["logprobs"]["content"].as_array().unwrap().len(), THOUGHT.len());
        assert_eq!(r["usage"]["completion_tokens"], THOUGHT.len());
    }

    #[tokio::test]
    async fn a_streamed_chat_sends_reasoning_chunks_then_content_chunks() {
        let chunks = chunks(&reply(r#", "stream": true"#, Some(ThinkStart::Open), &THOUGHT).await);
        assert_eq!(streamed(&chunks, "reasoning_content"), "Let me see.");
        assert_eq!(streamed(&chunks, "content"), "Paris.");
        let last_reasoning = chunks.iter().rposition(|c| c["choices"][0]["delta"]["reasoning_content"].is_string());
        let first_answer =
            chunks.iter().position(|c| c["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(last_reasoning < first_answer, "{chunks:?}");
        let logprobs: usize =
            chunks.iter().filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array()).map(Vec::len).sum();
        assert_eq!(logprobs, THOUGHT.len());
    }

    #[tokio::test]
    async fn reasoning_format_none_leaves_the_tags_in_the_content() {
        let r: Value =
            serde_json::from_str(&reply(r#", "reasoning_format": "none""#, Some(ThinkStart::Open), &THOUGHT).await)
                .unwrap();
        let message = &r["choices"][0]["message"];
        assert_eq!(message["content"], "Let me see.</think>\n\nParis.");
        assert!(message.get("reasoning_content").is_none(), "{message}");
        let chunks =
            chunks(&reply(r#", "stream": true, "reasoning_format": "none""#, Some(ThinkStart::Open), &THOUGHT).await);
        assert_eq!(streamed(&chunks, "content"), "Let me see.</think>\n\nParis.");
        assert_eq!(streamed(&chunks, "reasoning_content"), "");
    }

    #[tokio::test]
    async fn a_model_that_does_not_think_keeps_its_text_as_it_is() {
        let pieces = ["<think>", "x", "</think>", " y"];
        let r: Value = serde_json::from_str(&reply("", None, &pieces).await).unwrap();
        let message = &r["choices"][0]["message"];
        assert_eq!(message["content"], "<think>x</think> y");
        assert!(message.get("reasoning_content").is_none(), "{message}");
    }

    /// gpt-oss's harmony output: the analysis channel becomes reasoning_content, the final channel the content,
    /// streamed or not; the markers reach neither.
    #[tokio::test]
    async fn a_harmony_answer_splits_by_channel() {
        let pieces = [
            "<|channel|>",
            "analysis",
            "<|message|>",
            "Capital",
            " of France.",
            "<|end|>",
            "<|start|>",
            "assistant",
            "<|channel|>",
            "final",
            "<|message|>",
            "Paris",
            ".",
        ];
        let r: Value = serde_json::from_str(&reply("", Some(ThinkStart::Harmony), &pieces).await).unwrap();
        let message = &r["choices"][0]["message"];
        assert_eq!(
            (message["reasoning_content"].as_str(), message["content"].as_str()),
            (Some("Capital of France."), Some("Paris."))
        );
        let chunks = chunks(&reply(r#", "stream": true"#, Some(ThinkStart::Harmony), &pieces).await);
        assert_eq!(streamed(&chunks, "reasoning_content"), "Capital of France.");
        assert_eq!(streamed(&chunks, "content"), "Paris.");
    }

    #[tokio::test]
    async fn reasoning_cut_off_before_its_end_is_all_reasoning() {
        let pieces = ["<think>", "\nStill", " going", " </thi"];
        let r: Value = serde_json::from_str(&reply("", Some(ThinkStart::Closed), &pieces).await).unwrap();
        let message = &r["choices"][0]["message"];
        assert_eq!(
            (message["reasoning_content"].as_str(), message["content"].as_str()),
            (Some("Still going </thi"), Some(""))
        );
        let chunks = chunks(&reply(r#", "stream": true"#, Some(ThinkStart::Closed), &pieces).await);
        assert_eq!(streamed(&chunks, "reasoning_content"), "Still going </thi");
        assert_eq!(streamed(&chunks, "content"), "");
    }
}
