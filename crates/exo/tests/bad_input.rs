//! Bad input on every endpoint, case by case: each is refused with the status its API uses and in its API's own
//! error shape (OpenAI's `{"error": {"message", "type", "param", "code"}}`, Anthropic's `{"type": "error",
//! "error": {"type", "message"}}`, Ollama's `{"error": "..."}`), with a message that names what is wrong, and the
//! node goes on serving. One node serves every case; the cases are listed in one table so that a missing one
//! shows.

mod harness;

use harness::*;
use serde_json::{json, Value};

/// Whose error shape an endpoint answers in.
#[derive(Clone, Copy, Debug)]
enum Dialect {
    OpenAi,
    Anthropic,
    Ollama,
}

/// Why the answer `body` (status `status`) is not the refusal expected, if it is not.
fn mismatch(dialect: Dialect, status: u16, body: &str, want_status: u16, says: &str) -> Option<String> {
    let Ok(v) = serde_json::from_str::<Value>(body) else { return Some(format!("not JSON: {body}")) };
    if status != want_status {
        return Some(format!("status {status}, not {want_status}: {body}"));
    }
    let message = match dialect {
        Dialect::OpenAi => {
            let e = &v["error"];
            if !(e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some()) {
                return Some(format!("not OpenAI's shape: {body}"));
            }
            e["message"].as_str()
        }
        Dialect::Anthropic => {
            let kind = v["error"]["type"].as_str().unwrap_or_default();
            let expected = match want_status {
                400 => "invalid_request_error",
                401 => "authentication_error",
                404 => "not_found_error",
                413 => "request_too_large",
                503 => "overloaded_error",
                _ => "api_error",
            };
            if v["type"] != "error" || kind != expected {
                return Some(format!("not Anthropic's shape with type {expected}: {body}"));
            }
            v["error"]["message"].as_str()
        }
        Dialect::Ollama => v["error"].as_str(),
    };
    match message {
        Some(m) if m.contains(says) => None,
        Some(_) => Some(format!("the message does not say {says:?}: {body}")),
        None => Some(format!("no message: {body}")),
    }
}

#[test]
fn every_endpoint_refuses_bad_input_in_its_own_shape() {
    use Dialect::*;
    let node = Node::start();
    let m = model_name();
    let long = "word ".repeat(9000);
    let user = json!([{"role": "user", "content": "Hi"}]);
    // (endpoint, dialect, body, status, what the message says)
    let cases: Vec<(&str, Dialect, String, u16, &str)> = vec![
        // OpenAI chat completions.
        ("/v1/chat/completions", OpenAi, "{not json".into(), 400, "JSON"),
        ("/v1/chat/completions", OpenAi, json!({"model": m}).to_string(), 400, "messages"),
        ("/v1/chat/completions", OpenAi, json!({"model": m, "messages": "Hi"}).to_string(), 400, "messages"),
        ("/v1/chat/completions", OpenAi, json!({"model": m, "messages": []}).to_string(), 400, "messages"),
        (
            "/v1/chat/completions",
            OpenAi,
            json!({"model": m, "messages": [{"role": "wizard", "content": "Hi"}]}).to_string(),
            400,
            "wizard",
        ),
        (
            "/v1/chat/completions",
            OpenAi,
            json!({"model": "no-such-model", "messages": user}).to_string(),
            404,
            "no-such-model",
        ),
        (
            "/v1/chat/completions",
            OpenAi,
            json!({"model": m, "messages": user, "temperature": "hot"}).to_string(),
            400,
            "temperature",
        ),
        (
            "/v1/chat/completions",
            OpenAi,
            json!({"model": m, "messages": user, "max_tokens": -5}).to_string(),
            400,
            "max_tokens",
        ),
        ("/v1/chat/completions", OpenAi, json!({"model": m, "messages": user, "stop": 7}).to_string(), 400, "stop"),
        (
            "/v1/chat/completions",
            OpenAi,
            json!({"model": m, "messages": user, "top_logprobs": 3}).to_string(),
            400,
            "logprobs",
        ),
        (
            "/v1/chat/completions",
            OpenAi,
            json!({"model": m, "messages": [{"role": "user", "content": long}]}).to_string(),
            400,
            "8192",
        ),
        // OpenAI completions.
        ("/v1/completions", OpenAi, "[1, 2".into(), 400, "JSON"),
        ("/v1/completions", OpenAi, json!({"model": m}).to_string(), 400, "prompt"),
        ("/v1/completions", OpenAi, json!({"model": m, "prompt": {"text": "a"}}).to_string(), 400, "prompt"),
        ("/v1/completions", OpenAi, json!({"model": m, "prompt": "a", "top_p": 3}).to_string(), 400, "top_p"),
        ("/v1/completions", OpenAi, json!({"model": m, "prompt": long}).to_string(), 400, "8192"),
        // OpenAI Responses.
        ("/v1/responses", OpenAi, "{not json".into(), 400, "JSON"),
        ("/v1/responses", OpenAi, json!({"model": m, "input": 5}).to_string(), 400, "input"),
        (
            "/v1/responses",
            OpenAi,
            json!({"model": m, "input": "a", "temperature": "hot"}).to_string(),
            400,
            "temperature",
        ),
        (
            "/v1/responses",
            OpenAi,
            json!({"model": m, "input": "a", "max_output_tokens": 0}).to_string(),
            400,
            "max_output_tokens",
        ),
        ("/v1/responses", OpenAi, json!({"model": m, "input": long}).to_string(), 400, "8192"),
        ("/v1/responses", OpenAi, json!({"model": "no-such-model", "input": "a"}).to_string(), 404, "no-such-model"),
        // Anthropic Messages.
        ("/v1/messages", Anthropic, "{not json".into(), 400, "JSON"),
        ("/v1/messages", Anthropic, json!({"model": m, "max_tokens": 4}).to_string(), 400, "messages"),
        (
            "/v1/messages",
            Anthropic,
            json!({"model": m, "max_tokens": 4, "messages": "Hi"}).to_string(),
            400,
            "messages",
        ),
        (
            "/v1/messages",
            Anthropic,
            json!({"model": m, "max_tokens": 4, "messages": [{"role": "tool", "content": "Hi"}]}).to_string(),
            400,
            "role",
        ),
        (
            "/v1/messages",
            Anthropic,
            json!({"model": m, "max_tokens": 4, "messages": user, "temperature": "hot"}).to_string(),
            400,
            "temperature",
        ),
        (
            "/v1/messages",
            Anthropic,
            json!({"model": m, "max_tokens": 4, "messages": user, "stop_sequences": "END"}).to_string(),
            400,
            "stop_sequences",
        ),
        (
            "/v1/messages",
            Anthropic,
            json!({"model": m, "max_tokens": 4, "messages": [{"role": "user", "content": long}]}).to_string(),
            400,
            "8192",
        ),
        ("/v1/messages/count_tokens", Anthropic, "{not json".into(), 400, "JSON"),
        ("/v1/messages/count_tokens", Anthropic, json!({"model": m}).to_string(), 400, "messages"),
        (
            "/v1/messages/count_tokens",
            Anthropic,
            json!({"model": "no-such-model", "messages": user}).to_string(),
            404,
            "no-such-model",
        ),
        // Ollama.
        ("/api/chat", Ollama, "{not json".into(), 400, "JSON"),
        ("/api/chat", Ollama, json!({"messages": user}).to_string(), 400, "model"),
        ("/api/chat", Ollama, json!({"model": m, "messages": "Hi"}).to_string(), 400, "messages"),
        (
            "/api/chat",
            Ollama,
            json!({"model": m, "messages": user, "options": {"temperature": "hot"}}).to_string(),
            400,
            "temperature",
        ),
        ("/api/chat", Ollama, json!({"model": m, "messages": user, "format": 3}).to_string(), 400, "format"),
        ("/api/chat", Ollama, json!({"model": m, "messages": user, "options": "fast"}).to_string(), 400, "options"),
        (
            "/api/chat",
            Ollama,
            json!({"model": m, "messages": [{"role": "user", "content": long}], "stream": false}).to_string(),
            400,
            "8192",
        ),
        ("/api/generate", Ollama, json!({"prompt": "a"}).to_string(), 400, "model"),
        ("/api/generate", Ollama, json!({"model": m, "prompt": 5}).to_string(), 400, "prompt"),
        ("/api/generate", Ollama, json!({"model": "no-such-model", "prompt": "a"}).to_string(), 404, "no-such-model"),
        ("/api/show", Ollama, "{not json".into(), 400, "JSON"),
        ("/api/pull", Ollama, json!({}).to_string(), 400, "model"),
    ];
    let mut wrong = Vec::new();
    for (path, dialect, body, status, says) in &cases {
        let (s, b) = node.request("POST", path, body);
        if let Some(why) = mismatch(*dialect, s, &b, *status, says) {
            let shown: String = body.chars().take(120).collect();
            wrong.push(format!("POST {path} {shown}: {why}"));
        }
    }
    assert!(wrong.is_empty(), "{} of {} cases wrong:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
    // The node still answers.
    let (s, r) = node.post("/v1/chat/completions", &chat_body(2, false));
    assert_eq!(s, 200, "{r}");
}

/// A full queue: every endpoint refuses with 503 in its own shape, and serves again once the queue empties.
#[test]
fn every_endpoint_refuses_when_the_queue_is_full() {
    use Dialect::*;
    let node = Node::start_with(&Home::new("queue-dialects"), &["--queue", "1"]);
    let (running, waiting) = fill_queue(&node);
    let m = model_name();
    let user = json!([{"role": "user", "content": "Hi"}]);
    let cases = [
        ("/v1/chat/completions", OpenAi, json!({"model": m, "messages": user, "max_tokens": 4})),
        ("/v1/completions", OpenAi, json!({"model": m, "prompt": "Hi", "max_tokens": 4})),
        ("/v1/responses", OpenAi, json!({"model": m, "input": "Hi", "max_output_tokens": 4})),
        ("/v1/messages", Anthropic, json!({"model": m, "max_tokens": 4, "messages": user})),
        ("/api/chat", Ollama, json!({"model": m, "messages": user, "stream": false, "options": {"num_predict": 4}})),
        ("/api/generate", Ollama, json!({"model": m, "prompt": "Hi", "stream": false, "options": {"num_predict": 4}})),
    ];
    let mut wrong = Vec::new();
    for (path, dialect, body) in &cases {
        let (s, b) = node.request("POST", path, &body.to_string());
        if let Some(why) = mismatch(*dialect, s, &b, 503, "queue of 1 waiting request") {
            wrong.push(format!("POST {path}: {why}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    drop((running, waiting));
    node.wait_for("the queue to empty", |me| me["inference"]["busy"] == false && me["inference"]["queued"] == 0);
    for (path, _, body) in &cases {
        let (s, b) = node.request("POST", path, &body.to_string());
        assert_eq!(s, 200, "POST {path}: {b}");
    }
}
