//! Ollama's API at its own paths (`docs/api.md` of Ollama): `/api/chat` and `/api/generate` (NDJSON streams, or
//! one object with `stream: false`), `/api/tags`, `/api/ps`, `/api/show`, `/api/pull` and `/api/version`, so that Ollama's
//! clients, Open WebUI's Ollama connection and the editors that speak Ollama can use a node.
//!
//! A thin translation: a request's fields become the OpenAI request the rest of the server checks
//! ([`crate::validation`]), the job runs on the same queue and generation path as `/v1/chat/completions`, and its
//! events come back in Ollama's shapes. Errors are Ollama's `{"error": "..."}` with the same statuses. `format`
//! (`"json"` or a schema) becomes `response_format`. `tools` on `/api/chat` are OpenAI's function tools (offered
//! as `tool_choice: "auto"`, the only choice Ollama has), constrained as on chat completions; history's
//! `tool_calls` (arguments as objects) and `tool` messages go to the model, and the calls it makes come back in
//! `message.tool_calls`, each whole, with its arguments as an object, as Ollama sends them.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use exo_engine::reasoning::Split;
use exo_engine::tool_calls::{ToolCallParser, ToolEvent, ToolFormat};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::ApiError;
use crate::inference::{Event, Inference, Output, Prompt, Started};
use crate::validation::{self, Options};

/// The version `/api/version` reports: that of the Ollama API whose shapes this module follows (clients check it
/// against the least they need).
pub const OLLAMA_API_VERSION: &str = "0.9.0";

/// An error in Ollama's shape, with the status the OpenAI routes would give it.
pub fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(json!({"error": e.to_string()}))).into_response()
}

/// Ollama's options and top-level fields, under the names the OpenAI routes check them by.
const OPTION_NAMES: [(&str, &str); 11] = [
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("top_k", "top_k"),
    ("min_p", "min_p"),
    ("seed", "seed"),
    ("num_predict", "n_predict"),
    ("stop", "stop"),
    ("repeat_penalty", "repeat_penalty"),
    ("repeat_last_n", "repeat_last_n"),
    ("presence_penalty", "presence_penalty"),
    ("frequency_penalty", "frequency_penalty"),
];

/// Which of Ollama's two generation endpoints a request came to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Generate,
}

/// An Ollama request as the OpenAI request the validation reads, and whether it wants the reasoning apart
/// (`think`, default on) or none of it (`think: false`).
fn translate(body: &[u8], endpoint: Endpoint) -> Result<(Prompt, Options, bool), ApiError> {
    let object: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Err(ApiError::MalformedJson("the body must be a JSON object".into())),
        Err(e) => return Err(ApiError::MalformedJson(e.to_string())),
    };
    if endpoint == Endpoint::Generate && object.get("tools").is_some_and(|v| !v.is_null() && v != &json!([])) {
        return Err(ApiError::field("tools", "tools are for /api/chat; /api/generate takes none"));
    }
    for unsupported in ["images", "suffix", "context", "template"] {
        if object.get(unsupported).is_some_and(|v| !v.is_null() && v != &json!([]) && v != &json!("")) {
            return Err(ApiError::field(
                unsupported,
                format!("{unsupported} is not supported by this server yet; leave it out"),
            ));
        }
    }
    let mut openai = Map::new();
    openai.insert("model".into(), object.get("model").cloned().unwrap_or(Value::Null));
    // Structured output: "json" for any JSON object, or a JSON schema.
    match object.get("format") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if f.is_empty() => {}
        Some(Value::String(f)) if f == "json" => {
            openai.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(schema @ Value::Object(_)) => {
            openai.insert("response_format".into(), json!({"type": "json_schema", "json_schema": {"schema": schema}}));
        }
        Some(f) => return Err(ApiError::field("format", format!("format must be \"json\" or a JSON schema, got {f}"))),
    }
    // Ollama streams unless told not to.
    openai.insert("stream".into(), Value::Bool(object.get("stream").and_then(Value::as_bool).unwrap_or(true)));
    match object.get("options") {
        None | Some(Value::Null) => {}
        Some(Value::Object(options)) => {
            // The others (`num_ctx`: the node's context is its --ctx-size; threads, GPU layers, batch sizes,
            // mirostat: Ollama's runner) are accepted, as Ollama accepts options a model does not use.
            for (name, value) in options {
                if let Some((_, ours)) = OPTION_NAMES.iter().find(|(ollama, _)| ollama == name) {
                    openai.insert((*ours).into(), value.clone());
                }
            }
        }
        Some(_) => return Err(ApiError::field("options", "options must be an object")),
    }
    let think = match object.get("think") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        // Levels ("low", "medium", "high", for gpt-oss) are accepted as thinking on.
        Some(Value::String(_)) => true,
        Some(_) => return Err(ApiError::field("think", "think must be a boolean or \"low\", \"medium\", \"high\"")),
    };
    let prompt_text = |name: &str| -> Result<String, ApiError> {
        match object.get(name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(ApiError::field(name, format!("{name} must be a string"))),
        }
    };
    match endpoint {
        Endpoint::Chat => {
            let messages = match object.get("messages") {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|m| match m {
                        // Ollama's messages carry `thinking`, `images` and `tool_name` besides role, content
                        // and `tool_calls`, whose arguments are objects (the validation takes those too).
                        Value::Object(m) => {
                            let mut kept = Map::new();
                            for field in ["role", "content", "tool_calls"] {
                                if let Some(v) = m.get(field) {
                                    kept.insert(field.into(), v.clone());
                                }
                            }
                            Value::Object(kept)
                        }
                        other => other.clone(),
                    })
                    .collect(),
                other => other.cloned().unwrap_or(Value::Null),
            };
            openai.insert("messages".into(), messages);
            if let Some(tools) = object.get("tools").filter(|t| !t.is_null()) {
                openai.insert("tools".into(), tools.clone());
            }
            let request = validation::chat_request(Value::Object(openai).to_string().as_bytes())?;
            Ok((Prompt::Chat(request.messages), request.options, think))
        }
        Endpoint::Generate => {
            let prompt = prompt_text("prompt")?;
            let system = prompt_text("system")?;
            let raw = object.get("raw").and_then(Value::as_bool).unwrap_or(false);
            openai.insert("messages".into(), json!([{"role": "user", "content": prompt}]));
            let request = validation::chat_request(Value::Object(openai).to_string().as_bytes())?;
            let prompt = if raw {
                if prompt.is_empty() {
                    return Err(ApiError::field("prompt", "prompt must not be empty"));
                }
                Prompt::Text(prompt)
            } else {
                let mut messages = request.messages;
                if !system.is_empty() {
                    messages.insert(0, exo_engine::chat_template::ChatMessage::new("system", system));
                }
                Prompt::Chat(messages)
            };
            Ok((prompt, request.options, think))
        }
    }
}

/// The time as Ollama writes it (RFC 3339, UTC).
fn now() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, nanos) = (d.as_secs() as i64, d.subsec_nanos());
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// With tools offered, the calls read out of a chat's content. Ollama sends a call whole, its arguments as an
/// object, so a call goes out once its arguments parse: the grammar makes them JSON, and an object parses only once
/// it is closed.
struct Calls {
    parser: ToolCallParser,
    /// Each call's name, its arguments so far, and whether it has gone out.
    calls: Vec<(String, String, bool)>,
}

impl Calls {
    fn new(format: ToolFormat) -> Self {
        Self { parser: ToolCallParser::new(format), calls: Vec::new() }
    }

    /// Reads `piece`'s content (`end`: the output's last piece): the text that is not calls stays in the piece,
    /// and the calls completed come back.
    fn read(&mut self, piece: &mut Split, end: bool) -> Vec<Value> {
        let mut events = self.parser.push(&std::mem::take(&mut piece.content));
        if end {
            events.extend(self.parser.finish());
        }
        for e in events {
            match e {
                ToolEvent::Text(text) => piece.content.push_str(&text),
                ToolEvent::Call { name, .. } => self.calls.push((name, String::new(), false)),
                ToolEvent::Arguments { index, json } => {
                    if let Some(call) = self.calls.get_mut(index) {
                        call.1.push_str(&json);
                    }
                }
            }
        }
        let mut done = Vec::new();
        for (name, arguments, sent) in &mut self.calls {
            if *sent {
                continue;
            }
            match serde_json::from_str::<Value>(arguments) {
                Ok(arguments @ Value::Object(_)) => {
                    *sent = true;
                    done.push(json!({"function": {"name": name, "arguments": arguments}}));
                }
                // Cut off (by num_predict) before its arguments were whole: what there is stays text.
                _ if end => {
                    *sent = true;
                    let name = Value::String(name.clone());
                    piece.content.push_str(&format!("<tool_call>\n{{\"name\": {name}, \"arguments\": {arguments}"));
                }
                _ => {}
            }
        }
        done
    }
}

/// The pieces of one streamed object: the text, and the reasoning apart when the model thinks.
fn piece(endpoint: Endpoint, model: &str, split: &Split, think: bool) -> Value {
    let mut v = json!({"model": model, "created_at": now(), "done": false});
    match endpoint {
        Endpoint::Chat => {
            let mut message = json!({"role": "assistant", "content": split.content});
            if think && !split.reasoning.is_empty() {
                message["thinking"] = json!(split.reasoning);
            }
            v["message"] = message;
        }
        Endpoint::Generate => {
            v["response"] = json!(split.content);
            if think && !split.reasoning.is_empty() {
                v["thinking"] = json!(split.reasoning);
            }
        }
    }
    v
}

/// A chat object (`piece` or `done`) with `calls` in its message.
fn with_calls(mut v: Value, calls: Vec<Value>) -> Value {
    v["message"]["tool_calls"] = Value::Array(calls);
    v
}

/// The last object: why it ended and Ollama's counts and durations (nanoseconds).
#[allow(clippy::too_many_arguments)]
fn done(
    endpoint: Endpoint,
    model: &str,
    whole: Option<&Split>,
    finish: &str,
    prompt_tokens: usize,
    completion_tokens: usize,
    started: Instant,
    seconds: f64,
    think: bool,
) -> Value {
    let empty = Split::default();
    let mut v = piece(endpoint, model, whole.unwrap_or(&empty), think);
    let total = started.elapsed().as_nanos() as u64;
    let eval = (seconds * 1e9) as u64;
    let fields = json!({
        "done": true, "done_reason": finish, "total_duration": total, "load_duration": 0,
        "prompt_eval_count": prompt_tokens, "prompt_eval_duration": total.saturating_sub(eval),
        "eval_count": completion_tokens, "eval_duration": eval,
    });
    if let (Value::Object(v), Value::Object(f)) = (&mut v, fields) {
        v.extend(f);
    }
    v
}

/// The response to an Ollama chat or generate request.
async fn generate_response(inference: Inference, body: Bytes, endpoint: Endpoint) -> Response {
    let started = Instant::now();
    let (prompt, options, think) = match translate(&body, endpoint) {
        Ok(t) => t,
        Err(e) => return error_response(&e),
    };
    let Started { events: mut rx, reasoning, tools, .. } = match inference.begin(prompt, options.clone()).await {
        Ok(started) => started,
        Err(e) => return error_response(&e),
    };
    let mut split = Output::new(reasoning);
    let model = options.model.clone();
    let mut calls = tools.map(Calls::new);
    if options.stream {
        let (lines, out) = mpsc::channel::<Result<String, std::convert::Infallible>>(64);
        tokio::spawn(async move {
            let send = |v: Value| {
                let lines = lines.clone();
                async move { lines.send(Ok(format!("{v}\n"))).await.is_ok() }
            };
            loop {
                let event = tokio::select! {
                    event = rx.recv() => event,
                    _ = lines.closed() => return,
                };
                match event {
                    Some(Event::Text { text, .. }) => {
                        let mut p = split.push(&text);
                        let made = calls.as_mut().map(|c| c.read(&mut p, false)).unwrap_or_default();
                        if !(p.content.is_empty() && (p.reasoning.is_empty() || !think))
                            && !send(piece(endpoint, &model, &p, think)).await
                        {
                            return;
                        }
                        if !made.is_empty()
                            && !send(with_calls(piece(endpoint, &model, &Split::default(), think), made)).await
                        {
                            return;
                        }
                    }
                    Some(Event::Done { finish, prompt_tokens, completion_tokens, seconds, .. }) => {
                        let mut rest = split.finish();
                        let made = calls.as_mut().map(|c| c.read(&mut rest, true)).unwrap_or_default();
                        if !rest.is_empty() && !send(piece(endpoint, &model, &rest, think)).await {
                            return;
                        }
                        if !made.is_empty()
                            && !send(with_calls(piece(endpoint, &model, &Split::default(), think), made)).await
                        {
                            return;
                        }
                        let last = done(
                            endpoint,
                            &model,
                            None,
                            finish.as_str(),
                            prompt_tokens,
                            completion_tokens,
                            started,
                            seconds,
                            think,
                        );
                        let _ = send(last).await;
                        return;
                    }
                    // Ollama ends a failed stream with an error object.
                    Some(Event::Failed(e)) => {
                        let _ = send(json!({"error": e.to_string()})).await;
                        return;
                    }
                    Some(Event::Started { .. }) => {}
                    None => return,
                }
            }
        });
        let body = Body::from_stream(ReceiverStream::new(out));
        return ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response();
    }
    let mut whole = Split::default();
    let mut made = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Text { text, .. } => {
                let mut p = split.push(&text);
                made.extend(calls.as_mut().map(|c| c.read(&mut p, false)).unwrap_or_default());
                whole.reasoning.push_str(&p.reasoning);
                whole.content.push_str(&p.content);
            }
            Event::Done { finish, prompt_tokens, completion_tokens, seconds, .. } => {
                let mut rest = split.finish();
                made.extend(calls.as_mut().map(|c| c.read(&mut rest, true)).unwrap_or_default());
                whole.reasoning.push_str(&rest.reasoning);
                whole.content.push_str(&rest.content);
                let last = done(
                    endpoint,
                    &model,
                    Some(&whole),
                    finish.as_str(),
                    prompt_tokens,
                    completion_tokens,
                    started,
                    seconds,
                    think,
                );
                return Json(if made.is_empty() { last } else { with_calls(last, made) }).into_response();
            }
            Event::Failed(e) => return error_response(&e),
            Event::Started { .. } => {}
        }
    }
    error_response(&ApiError::Internal("the inference thread stopped".into()))
}

/// `POST /api/chat`.
pub async fn chat(State(inference): State<Inference>, request: Request) -> Response {
    match crate::server::read_body(request).await {
        Ok(body) => generate_response(inference, body, Endpoint::Chat).await,
        Err(e) => error_response(&e),
    }
}

/// `POST /api/generate`.
pub async fn generate(State(inference): State<Inference>, request: Request) -> Response {
    match crate::server::read_body(request).await {
        Ok(body) => generate_response(inference, body, Endpoint::Generate).await,
        Err(e) => error_response(&e),
    }
}

/// `GET /api/version`.
pub async fn version() -> Json<Value> {
    Json(json!({"version": OLLAMA_API_VERSION}))
}

/// A model as `/api/tags` and `/api/ps` list it.
fn tag(l: &exo_models::Listing) -> Value {
    // A model in the models folder is listed without reading its header: its family may be unknown.
    let family = l.architecture.clone().unwrap_or_default();
    let families: Vec<&String> = l.architecture.iter().collect();
    json!({
        "name": l.id, "model": l.id, "modified_at": "1970-01-01T00:00:00Z", "size": l.size.unwrap_or(l.cached_bytes),
        "digest": "",
        "details": {"format": "gguf", "family": family, "families": families,
            "parameter_size": "", "quantization_level": ""},
    })
}

/// `GET /api/tags`: the models whole on this node (a catalog model not yet downloaded is not listed, as Ollama
/// lists only pulled models).
pub async fn tags(State(inference): State<Inference>) -> Response {
    let store = inference.store().clone();
    match tokio::task::spawn_blocking(move || store.list()).await {
        Ok(list) => {
            let models: Vec<Value> = list.iter().filter(|l| l.complete).map(tag).collect();
            Json(json!({"models": models})).into_response()
        }
        Err(e) => error_response(&ApiError::Internal(e.to_string())),
    }
}

/// `POST /api/pull`: downloads a model whole onto this node (from its peers first, then the hub), as `exo
/// download` does, streaming Ollama's progress objects (`{"status", "digest", "total", "completed"}`) each quarter
/// second, then `{"status": "success"}`; with `stream: false`, the last object alone. A model already whole here is
/// a success at once. An error before the first object is a status and `{"error"}`; one after it, an `{"error"}`
/// line.
pub async fn pull(State(inference): State<Inference>, request: Request) -> Response {
    let body = match crate::server::read_body(request).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let (model, stream) = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => match v.get("model").or_else(|| v.get("name")).and_then(Value::as_str) {
            Some(n) if !n.is_empty() => (n.to_string(), v.get("stream").and_then(Value::as_bool).unwrap_or(true)),
            _ => return error_response(&ApiError::field("model", "model is required")),
        },
        Err(e) => return error_response(&ApiError::MalformedJson(e.to_string())),
    };
    // A name that is no model is refused before anything is streamed.
    if let Err(e) = inference.store().resolve_untrusted(&model) {
        return error_response(&ApiError::from(exo_cluster::ClusterError::from(e)));
    }
    let downloads = inference.store().downloads().clone();
    let before = downloads.list().iter().map(|d| d.id).max().unwrap_or(0);
    let cluster = inference.cluster().clone();
    let name = model.clone();
    let mut fetch = tokio::task::spawn_blocking(move || cluster.fetch(&name, exo_models::Need::Whole));
    if !stream {
        return match fetch.await {
            Ok(Ok(_)) => Json(json!({"status": "success"})).into_response(),
            Ok(Err(e)) => error_response(&ApiError::from(e)),
            Err(e) => error_response(&ApiError::Internal(e.to_string())),
        };
    }
    let (lines, out) = mpsc::channel::<Result<String, std::convert::Infallible>>(16);
    tokio::spawn(async move {
        let send = |v: Value| {
            let lines = lines.clone();
            async move { lines.send(Ok(format!("{v}\n"))).await.is_ok() }
        };
        // This pull's downloads (one per file of the model), as Ollama reports its layers.
        let report = || {
            let list = downloads.list();
            list.iter()
                .filter(|d| d.id > before && d.model == model)
                .map(|d| {
                    // Each fetch (the header first, then the rest) is a layer of its own to Ollama's clients.
                    json!({"status": format!("pulling {} ({})", d.file, d.what), "digest": format!("{}#{}", d.file, d.id),
                        "total": d.total_bytes, "completed": d.done_bytes})
                })
                .collect::<Vec<_>>()
        };
        if !send(json!({"status": "pulling manifest"})).await {
            return;
        }
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        let result = loop {
            tokio::select! {
                done = &mut fetch => break done,
                _ = tick.tick() => {
                    for line in report() {
                        if !send(line).await {
                            return;
                        }
                    }
                }
                _ = lines.closed() => return,
            }
        };
        for line in report() {
            if !send(line).await {
                return;
            }
        }
        let last = match result {
            Ok(Ok(_)) => {
                if !send(json!({"status": "verifying sha256 digest"})).await {
                    return;
                }
                json!({"status": "success"})
            }
            Ok(Err(e)) => json!({"error": ApiError::from(e).to_string()}),
            Err(e) => json!({"error": ApiError::Internal(e.to_string()).to_string()}),
        };
        let _ = send(last).await;
    });
    let body = Body::from_stream(ReceiverStream::new(out));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

/// `GET /api/ps`: the models the cluster has placed (loaded on its nodes).
pub async fn ps(State(inference): State<Inference>) -> Response {
    let store = inference.store().clone();
    let placed: Vec<String> = inference.cluster().placed_plans().into_iter().map(|(p, _)| p.model).collect();
    match tokio::task::spawn_blocking(move || store.list()).await {
        Ok(list) => {
            let models: Vec<Value> = placed
                .iter()
                .map(|id| match list.iter().find(|l| &l.id == id) {
                    Some(l) => tag(l),
                    None => json!({"name": id, "model": id, "size": 0, "digest": "", "details": {"format": "gguf"}}),
                })
                .map(|mut v| {
                    v["expires_at"] = json!("2100-01-01T00:00:00Z");
                    v["size_vram"] = json!(0);
                    v
                })
                .collect();
            Json(json!({"models": models})).into_response()
        }
        Err(e) => error_response(&ApiError::Internal(e.to_string())),
    }
}

/// `POST /api/show`: a model on this node, from its file's header: its template, architecture and context, and
/// its capabilities (`completion`, `tools`; `thinking` for a model that thinks).
pub async fn show(State(inference): State<Inference>, request: Request) -> Response {
    let body = match crate::server::read_body(request).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let name = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => match v.get("model").or_else(|| v.get("name")).and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => return error_response(&ApiError::field("model", "model is required")),
        },
        Err(e) => return error_response(&ApiError::MalformedJson(e.to_string())),
    };
    let store = inference.store().clone();
    let shown = tokio::task::spawn_blocking(move || -> Result<Value, ApiError> {
        let path = match store.resolve_untrusted(&name) {
            Ok(exo_models::ModelRef::Path(path)) => path,
            // A catalog or hub model not downloaded yet: Ollama's `show` knows only pulled models.
            Ok(_) => return Err(ApiError::ModelNotFound(name)),
            Err(e) => return Err(ApiError::from(exo_cluster::ClusterError::from(e))),
        };
        let read = || -> Result<Value, exo_engine::EngineError> {
            let gguf = exo_engine::Gguf::open(&path)?;
            let config = exo_engine::ModelConfig::from_gguf(&gguf)?;
            let tokenizer = exo_engine::tokenizer::Tokenizer::from_gguf(&gguf)?;
            let template = gguf.get("tokenizer.chat_template").and_then(|v| v.as_str()).unwrap_or_default().to_string();
            let chat = exo_engine::chat_template::ChatTemplate::from_gguf(&gguf, &tokenizer)?;
            // Every model takes tools: through its template where it has them, otherwise a system message.
            let mut capabilities = vec!["completion", "tools"];
            if exo_engine::reasoning::model_thinks(&chat, &tokenizer) {
                capabilities.push("thinking");
            }
            let arch = gguf.get("general.architecture").and_then(|v| v.as_str()).unwrap_or_default().to_string();
            Ok(json!({
                "modelfile": "", "parameters": "", "template": template,
                "details": {"format": "gguf", "family": arch, "families": [arch], "parameter_size": "",
                    "quantization_level": ""},
                "model_info": {
                    "general.architecture": arch,
                    format!("{arch}.context_length"): config.context_length,
                    format!("{arch}.block_count"): config.n_layers,
                    format!("{arch}.embedding_length"): config.hidden_size,
                },
                "capabilities": capabilities,
            }))
        };
        read().map_err(|e| ApiError::Internal(format!("cannot read {name}: {e}")))
    })
    .await;
    match shown {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => error_response(&e),
        Err(e) => error_response(&ApiError::Internal(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_of(body: &str) -> Result<(Prompt, Options, bool), ApiError> {
        translate(body.as_bytes(), Endpoint::Chat)
    }

    #[test]
    fn options_map_to_the_openai_names_and_ollama_streams_by_default() {
        let (prompt, o, think) = chat_of(
            r#"{"model": "m", "messages": [{"role": "user", "content": "Hi", "images": null}],
                "options": {"temperature": 0, "num_predict": 7, "top_k": 3, "seed": 5, "stop": ["x"], "num_ctx": 4096,
                "repeat_penalty": 1.1, "num_thread": 8}, "keep_alive": "5m"}"#,
        )
        .unwrap();
        assert!(matches!(prompt, Prompt::Chat(ref m) if m.len() == 1 && m[0].content == "Hi"));
        assert_eq!((o.stream, o.max_tokens, o.sampling.temperature, o.sampling.top_k), (true, Some(7), 0.0, 3));
        assert_eq!((o.sampling.seed, o.stop.clone(), o.sampling.repeat_penalty), (Some(5), vec!["x".to_string()], 1.1));
        assert!(think);
        let body = r#"{"model": "m", "messages": [{"role": "user", "content": "a"}], "stream": false, "think": false}"#;
        let (_, o, think) = chat_of(body).unwrap();
        assert!(!o.stream && !think);
        let e = chat_of(r#"{"model": "m", "messages": []}"#).err().unwrap();
        assert_eq!(e.param(), Some("messages"));
    }

    #[test]
    fn format_asks_for_json_or_a_schema() {
        let m = r#""model": "m", "messages": [{"role": "user", "content": "a"}]"#;
        let (_, o, _) = chat_of(&format!(r#"{{{m}, "format": "json"}}"#)).unwrap();
        assert_eq!(o.schema, Some(json!({"type": "object"})));
        let (_, o, _) = chat_of(&format!(r#"{{{m}, "format": {{"type": "array"}}}}"#)).unwrap();
        assert_eq!(o.schema, Some(json!({"type": "array"})));
        let (_, o, _) = chat_of(&format!(r#"{{{m}, "format": ""}}"#)).unwrap();
        assert_eq!(o.schema, None);
    }

    #[test]
    fn generate_takes_a_prompt_a_system_text_and_raw_mode() {
        let (prompt, ..) =
            translate(br#"{"model": "m", "prompt": "Why?", "system": "Be brief."}"#, Endpoint::Generate).unwrap();
        let Prompt::Chat(messages) = prompt else { panic!("a templated prompt") };
        assert_eq!((messages[0].role.as_str(), messages[1].content.as_str()), ("system", "Why?"));
        let (prompt, ..) =
            translate(br#"{"model": "m", "prompt": "<|im_start|>x", "raw": true}"#, Endpoint::Generate).unwrap();
        assert!(matches!(prompt, Prompt::Text(ref t) if t == "<|im_start|>x"));
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let refuse = |body: &str, param: &str| {
            let e = translate(body.as_bytes(), Endpoint::Chat).err().unwrap_or_else(|| panic!("{body} accepted"));
            assert_eq!((e.status(), e.param()), (400, Some(param)), "{e}");
        };
        let m = r#""model": "m", "messages": [{"role": "user", "content": "a"}]"#;
        refuse(&format!(r#"{{{m}, "format": "yaml"}}"#), "format");
        refuse(&format!(r#"{{{m}, "tools": [{{"type": "function"}}]}}"#), "tools[0].function");
        let e = translate(br#"{"model": "m", "prompt": "a", "tools": [{"type": "function"}]}"#, Endpoint::Generate);
        assert_eq!(e.err().and_then(|e| e.param().map(str::to_string)).as_deref(), Some("tools"));
        refuse(&format!(r#"{{{m}, "options": 3}}"#), "options");
        refuse(&format!(r#"{{{m}, "options": {{"temperature": "hot"}}}}"#), "temperature");
        refuse(&format!(r#"{{{m}, "think": 3}}"#), "think");
        refuse(r#"{"messages": [{"role": "user", "content": "a"}]}"#, "model");
        assert!(matches!(translate(b"{", Endpoint::Chat), Err(ApiError::MalformedJson(_))));
        // Ollama's shape: one error string, the same status.
        let r = error_response(&ApiError::field("format", "format is not supported"));
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn tools_and_their_history_reach_the_chat_and_calls_go_out_whole() {
        let (prompt, o, _) = translate(
            br#"{"model": "m", "tools": [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}],
                "messages": [{"role": "user", "content": "Time in Rome?"},
                    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_time", "arguments": {"city": "Rome"}}}]},
                    {"role": "tool", "content": "10:00", "tool_name": "get_time"}]}"#,
            Endpoint::Chat,
        )
        .unwrap();
        let Prompt::Chat(m) = prompt else { panic!("a chat") };
        assert_eq!(m[1].tool_calls[0].name, "get_time");
        assert_eq!(m[1].tool_calls[0].arguments, json!({"city": "Rome"}));
        assert_eq!((m[2].role.as_str(), m[2].content.as_str()), ("tool", "10:00"));
        assert_eq!(o.tools.map(|t| t.tools[0].name.clone()).as_deref(), Some("get_time"));

        let mut calls = Calls::new(ToolFormat::Hermes);
        let mut made = Vec::new();
        let mut text = String::new();
        let pieces =
            ["Sure.\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"city\": ", "\"Rome\"}", "}\n</tool_call>"];
        for (i, p) in pieces.iter().enumerate() {
            let mut piece = Split { reasoning: String::new(), content: p.to_string() };
            let now = calls.read(&mut piece, false);
            // The call goes out whole, with the piece that closes its arguments, and not before.
            assert_eq!(now.len(), usize::from(i == 1), "piece {i}");
            made.extend(now);
            text.push_str(&piece.content);
        }
        assert_eq!(made, [json!({"function": {"name": "get_time", "arguments": {"city": "Rome"}}})]);
        assert_eq!(text.trim_end(), "Sure.");
        // Cut off inside its arguments: nothing is lost, the call's text stays content.
        let mut calls = Calls::new(ToolFormat::Hermes);
        let mut piece = Split {
            reasoning: String::new(),
            content: "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"ci".into(),
        };
        assert!(calls.read(&mut piece, true).is_empty());
        assert!(piece.content.contains("get_time") && piece.content.contains("{\"ci"), "{}", piece.content);
    }

    #[test]
    fn times_are_rfc_3339() {
        let t = now();
        assert_eq!((t.len(), &t[4..5], &t[10..11], &t[t.len() - 1..]), (30, "-", "T", "Z"), "{t}");
        assert!(t.as_str() >= "2026-01-01", "{t}");
    }
}
