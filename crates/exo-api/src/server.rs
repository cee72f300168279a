//! The HTTP server: routes, OpenAI's response and chunk shapes, and server-sent events.
//!
//! Handlers read the body themselves (so that malformed JSON and oversized bodies get OpenAI-shaped 400 and 413
//! responses, not axum's defaults), validate it ([`crate::validation`]), queue a job ([`crate::inference`]) and
//! wait for its first event: a failure there (unknown model, prompt too long) becomes the response's status; after
//! it, output streams as SSE chunks or is collected into one JSON response. The web chat's files are compiled
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
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::access::{self, Access, Guard};
use crate::error::ApiError;
use crate::inference::{Event, Inference, Job, Prompt, TokenLogprob};
use crate::topology;
use crate::validation::{self, Options};

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
        .route("/v1/completions", post(completions));
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

async fn read_body(request: Request) -> Result<Bytes, ApiError> {
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
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stream = options.stream;
    let include_usage = options.include_usage;
    let logprobs = options.logprobs;
    let model = options.model.clone();
    if let Err(e) = inference.submit(Job { prompt, options, events: tx }) {
        return e.into_response();
    }
    // The first event says whether the request can be served at all.
    match rx.recv().await {
        Some(Event::Started { .. }) => {}
        Some(Event::Failed(e)) => return e.into_response(),
        _ => return ApiError::Internal("the inference thread stopped".into()).into_response(),
    }
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
                    Event::Text { text, logprob } => {
                        let lp = logprob.map(|l| shape.logprobs(std::slice::from_ref(&l), 0));
                        send(shape.chunk(json!({"content": text}), lp, None)).await
                    }
                    Event::Done { finish, prompt_tokens, completion_tokens, .. } => {
                        let _ = send(shape.chunk(json!({}), None, Some(finish.as_str()))).await;
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

    let mut text = String::new();
    let mut tokens: Vec<TokenLogprob> = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Text { text: t, logprob } => {
                text.push_str(&t);
                tokens.extend(logprob);
            }
            Event::Done { finish, prompt_tokens, completion_tokens, .. } => {
                let lp = logprobs.map(|_| shape.logprobs(&tokens, 0));
                let mut body = shape.envelope();
                body["object"] = json!(match kind {
                    Kind::Chat => "chat.completion",
                    Kind::Text => "text_completion",
                });
                body["choices"] = json!([match kind {
                    Kind::Chat => json!({"index": 0, "message": {"role": "assistant", "content": text},
                        "logprobs": lp, "finish_reason": finish.as_str()}),
                    Kind::Text => json!({"index": 0, "text": text, "logprobs": lp, "finish_reason": finish.as_str()}),
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
                "token": t.token, "logprob": t.logprob, "bytes": t.token.as_bytes(),
                "top_logprobs": t.top.iter().map(|(s, l)| json!({"token": s, "logprob": l, "bytes": s.as_bytes()})).collect::<Vec<_>>(),
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
                    "top_logprobs": tokens.iter().map(|t| t.top.iter().map(|(s, l)| (s.clone(), json!(l))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
                    "text_offset": offsets,
                })
            }
        }
    }
}
