//! A node as its clients see it: a real `exo` process on 127.0.0.1 with a port the OS assigns, spoken to over
//! HTTP/1.1: greedy answers equal `exo run`'s, streams add up to the same answer, errors have OpenAI's shape and
//! status, and a client hanging up mid-stream does not stop the node.

#[path = "../../exo-engine/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

const QUESTION: &str = "What is the capital of France?";

/// A running node, killed when dropped.
struct Node {
    child: Child,
    port: u16,
}

impl Node {
    fn start() -> Self {
        let model = common::model_path();
        let dir = model.parent().unwrap().to_str().unwrap().to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_exo"))
            .args(["--api-host", "127.0.0.1", "--api-port", "0", "--models-dir", &dir, "--threads", "2"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("exo starts");
        // Ready when it says where it listens.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let port = loop {
            let line = lines.next().expect("the node exits before listening").unwrap();
            if let Some(rest) = line.split("http://127.0.0.1:").nth(1) {
                break rest.split('/').next().unwrap().parse().unwrap();
            }
        };
        // Keep draining stderr so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Node { child, port }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s
    }

    /// Sends a request and returns the status and the body.
    fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = self.connect();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        // Streams come chunked: keep only the chunks' contents.
        let body =
            if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.into() };
        (status, body)
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = self.request("POST", path, &body.to_string());
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

fn model_name() -> String {
    common::model_path().file_stem().unwrap().to_str().unwrap().to_string()
}

fn chat_body(max_tokens: usize, stream: bool) -> Value {
    json!({"model": model_name(), "messages": [{"role": "user", "content": QUESTION}], "temperature": 0,
        "max_tokens": max_tokens, "stream": stream})
}

/// The `data:` payloads of an SSE body.
fn sse_data(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
}

#[test]
fn greedy_chat_equals_exo_run_and_streams_add_up_to_it() {
    let node = Node::start();
    let (status, r) = node.post("/v1/chat/completions", &chat_body(12, false));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "chat.completion");
    let content = r["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert_eq!(r["usage"]["completion_tokens"], 12);
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    let prompt_tokens = r["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(r["usage"]["total_tokens"], prompt_tokens + 12);

    let model = common::model_path();
    let run = Command::new(env!("CARGO_BIN_EXE_exo"))
        .args(["run", model.to_str().unwrap(), "--prompt", QUESTION, "--temperature", "0", "-n", "12"])
        .output()
        .unwrap();
    assert!(run.status.success());
    assert_eq!(content, String::from_utf8_lossy(&run.stdout).trim_end_matches('\n'));

    let mut body = chat_body(12, true);
    body["stream_options"] = json!({"include_usage": true});
    let (status, text) = node.request("POST", "/v1/chat/completions", &body.to_string());
    assert_eq!(status, 200);
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    let streamed: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
    assert_eq!(streamed, content);
    let n = chunks.len();
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[n - 1]["choices"], json!([]));
    assert_eq!(chunks[n - 1]["usage"]["completion_tokens"], 12);
}

#[test]
fn completions_continue_the_text_as_llama_cpp_does() {
    let node = Node::start();
    let case = &common::golden()["greedy"][0];
    let body =
        json!({"model": model_name(), "prompt": case["prompt"], "temperature": 0, "max_tokens": 6, "logprobs": 2});
    let (status, r) = node.post("/v1/completions", &body);
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "text_completion");
    let text = r["choices"][0]["text"].as_str().unwrap();
    assert!(!text.is_empty() && case["text"].as_str().unwrap().starts_with(text), "{text:?}");
    let lp = &r["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 6);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    assert!(lp["token_logprobs"].as_array().unwrap().iter().all(|l| l.as_f64().unwrap() <= 0.0));
}

#[test]
fn errors_have_openais_shape_and_status() {
    let node = Node::start();
    let check = |status: u16, body: &str, expected_status: u16, expected: &str| {
        let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
        assert_eq!(status, expected_status, "{body}");
        let e = &v["error"];
        assert!(e["message"].as_str().unwrap().contains(expected), "{body}");
        assert!(e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some(), "{body}");
    };
    let (s, b) = node.request("POST", "/v1/chat/completions", "{not json");
    check(s, &b, 400, "not valid JSON");
    let mut body = chat_body(4, false);
    body["model"] = json!("no-such-model");
    let (s, b) = node.request("POST", "/v1/chat/completions", &body.to_string());
    check(s, &b, 404, "no-such-model");
    let mut body = chat_body(4, false);
    body["n"] = json!(2);
    let (s, b) = node.request("POST", "/v1/chat/completions", &body.to_string());
    check(s, &b, 400, "n must be 1");
    let mut body = chat_body(4, false);
    body["temperature"] = json!("hot");
    let (s, b) = node.request("POST", "/v1/chat/completions", &body.to_string());
    check(s, &b, 400, "temperature");
    let (s, b) = node.request("POST", "/v1/chat/completions", &chat_body(100_000, false).to_string());
    check(s, &b, 400, "100000");
    assert!(b.contains("8192"), "{b}");

    // An oversized body is refused from its declared length.
    let mut stream = node.connect();
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000000\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("\"error\""), "{response}");

    let (s, b) = node.request("GET", "/v1/models", "");
    assert_eq!(s, 200);
    let listed: Value = serde_json::from_str(&b).unwrap();
    assert!(listed["data"].as_array().unwrap().iter().any(|m| m["id"] == model_name()), "{b}");
    assert_eq!(node.request("GET", &format!("/v1/models/{}", model_name()), "").0, 200);
    let (s, b) = node.request("GET", "/v1/models/no-such-model", "");
    check(s, &b, 404, "no-such-model");
    assert_eq!(node.request("GET", "/healthcheck", "").0, 200);
    let (s, b) = node.request("GET", "/v2/nothing", "");
    check(s, &b, 404, "no endpoint GET /v2/nothing");
}

#[test]
fn a_client_hanging_up_mid_stream_leaves_the_node_serving() {
    let node = Node::start();
    let body = chat_body(400, true).to_string();
    let mut s = node.connect();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .unwrap();
    // Read until two content chunks have arrived, then hang up.
    let mut reader = BufReader::new(s);
    let mut seen = 0;
    let mut line = String::new();
    while seen < 3 {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended early");
        seen += usize::from(line.contains("data: "));
    }
    drop(reader);
    // The next request is served, in full.
    let (status, r) = node.post("/v1/chat/completions", &chat_body(5, false));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["usage"]["completion_tokens"], 5);
}
