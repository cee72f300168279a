//! A node as its clients see it: a real `exo` process on 127.0.0.1 with a port the OS assigns, spoken to over
//! HTTP/1.1: greedy answers equal `exo run`'s, streams add up to the same answer, errors have OpenAI's shape and
//! status, a full queue is refused, a client hanging up mid-stream stops its generation and frees its cache,
//! concurrent streams are both right, shutdown ends streams with an error event, and the node describes itself in
//! `/v1/topology` and serves the web chat.

mod harness;

use std::io::{BufReader, Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::*;
use serde_json::{json, Value};

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
    // Greedy text equals llama.cpp's up to its first near tie, where rounding may pick either token.
    let untied =
        case["steps"].as_array().unwrap().iter().take_while(|s| s["gap"].as_f64().unwrap() >= common::TIE_GAP).count();
    assert!(untied >= 3, "the reference case has an early near tie");
    let lp = &r["choices"][0]["logprobs"];
    let tokens: Vec<&str> = lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let text = r["choices"][0]["text"].as_str().unwrap();
    assert_eq!(text, tokens.concat());
    assert!(case["text"].as_str().unwrap().starts_with(&tokens[..untied].concat()), "{text:?}");
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
    // A prompt longer than the context (8192 tokens) alone.
    let long = json!({"model": model_name(), "messages": [{"role": "user", "content": "word ".repeat(9000)}]});
    let (s, b) = node.request("POST", "/v1/chat/completions", &long.to_string());
    check(s, &b, 400, "8192");
    assert!(b.contains("\"param\":\"messages\""), "{b}");

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
    // The catalog is listed with what the cluster needs to plan, and nothing of it is on this machine.
    let catalog = listed["data"].as_array().unwrap().iter().find(|m| m["id"] == "llama-3.1-70b").cloned();
    let catalog = catalog.unwrap_or_else(|| panic!("no llama-3.1-70b in {b}"));
    assert_eq!((catalog["exo"]["layers"].as_u64(), catalog["exo"]["source"].as_str()), (Some(80), Some("catalog")));
    assert_eq!((catalog["exo"]["cached_bytes"].as_u64(), catalog["exo"]["complete"].as_bool()), (Some(0), Some(false)));
    let (s, b) = node.request("GET", "/v1/models/llama-3.1-70b:q8_0", "");
    assert_eq!(s, 200, "{b}");
    let (s, b) = node.request("GET", "/v1/models/llama-3.1-70b:q1", "");
    check(s, &b, 400, "has no q1 file");
    let (s, b) = node.request("GET", "/v1/downloads", "");
    assert_eq!((s, serde_json::from_str::<Value>(&b).ok()), (200, Some(json!({"object": "list", "data": []}))), "{b}");
    let (s, b) = node.request("GET", "/v1/models/no-such-model", "");
    check(s, &b, 404, "no-such-model");
    assert_eq!(node.request("GET", "/healthcheck", "").0, 200);
    let (s, b) = node.request("GET", "/v2/nothing", "");
    check(s, &b, 404, "no endpoint GET /v2/nothing");
}

/// A request that runs for thousands of tokens: sampling at a high temperature over the whole vocabulary makes an
/// end-of-generation token very unlikely.
#[test]
fn a_client_hanging_up_mid_stream_stops_its_generation_and_frees_its_cache() {
    let node = Node::start();
    let mut reader = BufReader::new(node.send("/v1/chat/completions", &long_chat()));
    read_content_chunks(&mut reader, 3);
    let during = node.me();
    assert_eq!(during["inference"]["busy"], true, "{during}");
    assert!(during["inference"]["kv_cache_bytes"].as_u64().unwrap() > 0, "{during}");
    let before = during["inference"]["tokens_generated"].as_u64().unwrap();
    // Hanging up with unread data resets the connection.
    drop(reader);
    let after = node.wait_for("the cancelled request to end", |me| me["inference"]["busy"] == false);
    let last = &after["inference"]["last_request"];
    assert_eq!(last["outcome"], "cancelled", "{after}");
    assert!(last["completion_tokens"].as_u64().unwrap() < 4000, "{after}");
    // The worker checks for the hang-up before every token: it may finish the token in progress when the
    // connection resets, and the topology request above takes a moment, but no more.
    let extra = after["inference"]["tokens_generated"].as_u64().unwrap() - before;
    assert!(extra <= 3, "{extra} tokens generated after the client hung up: {after}");
    assert_eq!(after["inference"]["kv_cache_bytes"], 0, "{after}");
    // The next request is served, in full.
    let (status, r) = node.post("/v1/chat/completions", &chat_body(5, false));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["usage"]["completion_tokens"], 5);
    assert_eq!(node.me()["inference"]["kv_cache_bytes"], 0);
}

#[test]
fn a_full_queue_is_refused_and_the_node_keeps_serving() {
    let node = Node::start_with(&Home::new("queue"), &["--queue", "1"]);
    let (running, waiting) = fill_queue(&node);
    let (status, r) = node.post("/v1/chat/completions", &chat_body(4, false));
    assert_eq!(status, 503, "{r}");
    assert_eq!(r["error"]["code"], "server_busy");
    assert!(r["error"]["message"].as_str().unwrap().contains("queue of 1 waiting request"), "{r}");
    drop((running, waiting));
    node.wait_for("the queue to empty", |me| me["inference"]["busy"] == false && me["inference"]["queued"] == 0);
    let (status, r) = node.post("/v1/chat/completions", &chat_body(4, false));
    assert_eq!(status, 200, "{r}");
}

#[test]
fn two_concurrent_streams_are_both_right() {
    let node = Node::start();
    let (status, r) = node.post("/v1/chat/completions", &chat_body(16, false));
    assert_eq!(status, 200, "{r}");
    let expected = r["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let body = chat_body(16, true).to_string();
    let streams: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let (status, text) = node.request("POST", "/v1/chat/completions", &body);
                    assert_eq!(status, 200, "{text}");
                    let data = sse_data(&text);
                    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
                    data[..data.len() - 1]
                        .iter()
                        .map(|d| serde_json::from_str::<Value>(d).unwrap())
                        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
                        .collect::<String>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(streams, vec![expected.clone(), expected]);
    assert_eq!(node.me()["inference"]["requests"], 3);
}

#[cfg(unix)]
#[test]
fn shutdown_ends_streams_with_an_error_event_and_refuses_queued_requests() {
    let mut node = Node::start();
    let mut streaming = BufReader::new(node.send("/v1/chat/completions", &long_chat()));
    read_content_chunks(&mut streaming, 2);
    let mut queued = node.send("/v1/chat/completions", &chat_body(4, false));
    node.wait_for("a request in the queue", |me| me["inference"]["queued"] == 1);
    let killed = Command::new("kill").args(["-TERM", &node.child.id().to_string()]).status().unwrap();
    assert!(killed.success());

    // The stream ends with an error event, not [DONE].
    let mut rest = String::new();
    streaming.read_to_string(&mut rest).unwrap();
    let last = sse_data(&dechunk_tail(&rest)).pop().unwrap_or_default();
    let event: Value = serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {rest}"));
    assert_eq!(event["error"]["code"], "shutting_down", "{rest}");
    // The queued request gets a 503.
    let mut response = String::new();
    queued.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.contains("shutting down"), "{response}");

    let start = Instant::now();
    let status = loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "the node did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

/// The SSE lines of a chunked body read from the middle: chunk-size lines are dropped.
fn dechunk_tail(body: &str) -> String {
    body.lines().filter(|l| l.starts_with("data: ") || l.is_empty()).collect::<Vec<_>>().join("\n")
}

#[test]
fn a_model_too_large_for_the_memory_limit_is_refused_with_503() {
    let node = Node::start_with(&Home::new("memory"), &["--memory-limit", "100M"]);
    let (status, r) = node.post("/v1/chat/completions", &chat_body(4, false));
    assert_eq!(status, 503, "{r}");
    assert_eq!(r["error"]["code"], "insufficient_memory");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(message.contains(&model_name()) && message.contains("(1 node) has 100 MiB available"), "{message}");
    assert_eq!(node.me()["model"], Value::Null);
}

#[test]
fn the_node_describes_itself_and_serves_the_web_chat() {
    let home = Home::new("topology");
    let node = Node::start_with(&home, &["--listen-port", "40123"]);
    let me = node.me();
    assert_eq!(me["id"].as_str().unwrap().len(), 32, "{me}");
    assert_eq!((me["api_port"].as_u64(), me["listen_port"].as_u64()), (Some(node.port as u64), Some(40123)));
    assert_eq!(me["addresses"], json!(["127.0.0.1"]));
    assert_eq!(me["threads"], 2);
    assert!(me["memory"]["total_bytes"].as_u64().unwrap() >= me["memory"]["available_bytes"].as_u64().unwrap());
    assert_eq!(me["model"], Value::Null);
    assert!(me["cpu"]["kernels"].is_string() && me["cpu"]["features"].is_array(), "{me}");
    let (status, _) = node.post("/v1/chat/completions", &chat_body(2, false));
    assert_eq!(status, 200);
    let model = &node.me()["model"];
    assert_eq!(model["id"], model_name());
    assert_eq!(
        (&model["layers"]["start"], &model["layers"]["end"], &model["n_layers"]),
        (&json!(0), &json!(29), &json!(30))
    );

    // The ID is kept: the same home gives the same node; --node-id overrides it.
    let id = node.id.clone();
    drop(node);
    assert_eq!(Node::start_with(&home, &[]).id, id);
    let named = Node::start_with(&home, &["--node-id", "kitchen-pc"]);
    assert_eq!(named.me()["id"], "kitchen-pc");

    for (path, content_type, marker) in
        [("/", "text/html", "/app.js"), ("/app.js", "text/javascript", "/v1/topology"), ("/style.css", "text/css", "{")]
    {
        let mut s = named.connect();
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
        assert!(response.to_ascii_lowercase().contains(&format!("content-type: {content_type}")), "{path}");
        assert!(response.contains(marker), "{path}");
    }
}
