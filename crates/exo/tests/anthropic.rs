//! Anthropic's Messages API on a real node (SmolLM2): `/v1/messages` answers as `/v1/chat/completions` does on the
//! same request (one generation path), whole or streamed as Anthropic's events, with its stop reasons, usage,
//! token count and error shape.

mod harness;

use harness::*;
use serde_json::{json, Value};

fn messages_body(max_tokens: usize) -> Value {
    json!({"model": model_name(), "max_tokens": max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]})
}

/// The (event, data) pairs of an SSE body.
fn events(body: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut name = String::new();
    for line in body.lines() {
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            out.push((std::mem::take(&mut name), serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"))));
        }
    }
    out
}

#[test]
fn messages_answer_as_chat_completions_do_whole_and_streamed() {
    let node = Node::start();
    let (status, openai) = node.post("/v1/chat/completions", &chat_body(12, false));
    assert_eq!(status, 200, "{openai}");
    let expected = openai["choices"][0]["message"]["content"].as_str().unwrap();

    let (status, r) = node.post("/v1/messages", &messages_body(12));
    assert_eq!(status, 200, "{r}");
    assert_eq!((r["type"].as_str(), r["role"].as_str()), (Some("message"), Some("assistant")));
    assert!(r["id"].as_str().unwrap().starts_with("msg_"), "{r}");
    assert_eq!(r["content"], json!([{"type": "text", "text": expected}]));
    assert_eq!((r["stop_reason"].as_str(), &r["stop_sequence"]), (Some("max_tokens"), &Value::Null));
    assert_eq!(r["usage"], json!({"input_tokens": openai["usage"]["prompt_tokens"], "output_tokens": 12}));
    // count_tokens gives the same prompt length without generating (no max_tokens needed).
    let mut count = messages_body(1);
    count.as_object_mut().unwrap().remove("max_tokens");
    let (status, c) = node.post("/v1/messages/count_tokens", &count);
    assert_eq!((status, &c), (200, &json!({"input_tokens": openai["usage"]["prompt_tokens"]})), "{c}");

    let mut body = messages_body(12);
    body["stream"] = json!(true);
    let (status, text) = node.request("POST", "/v1/messages", &body.to_string());
    assert_eq!(status, 200, "{text}");
    let events = events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..3], ["message_start", "ping", "content_block_start"], "{text}");
    assert_eq!(names[names.len() - 3..], ["content_block_stop", "message_delta", "message_stop"], "{text}");
    assert!(events.iter().all(|(n, d)| d["type"] == n.as_str()), "{text}");
    let streamed: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, expected);
    let delta = &events[events.len() - 2].1;
    assert_eq!(
        (delta["delta"]["stop_reason"].as_str(), delta["usage"]["output_tokens"].as_u64()),
        (Some("max_tokens"), Some(12))
    );
    assert_eq!(events[0].1["message"]["usage"]["input_tokens"], openai["usage"]["prompt_tokens"]);

    // A stop sequence in the middle of that answer ends it there, and says which.
    let words: Vec<&str> = expected.split(' ').collect();
    assert!(words.len() >= 2, "{expected:?}");
    let stop = format!(" {}", words[words.len() / 2]);
    let mut body = messages_body(12);
    body["stop_sequences"] = json!([stop]);
    body["system"] = json!("You are a helpful AI assistant named SmolLM, trained by Hugging Face");
    let (status, r) = node.post("/v1/messages", &body);
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (r["stop_reason"].as_str(), r["stop_sequence"].as_str()),
        (Some("stop_sequence"), Some(stop.as_str())),
        "{r}"
    );
    // SmolLM2's own default system prompt, given as `system`: the same prompt, so the answer's start.
    assert!(expected.starts_with(r["content"][0]["text"].as_str().unwrap()), "{r}");
}

#[test]
fn errors_have_anthropics_shape() {
    let node = Node::start();
    let refused = |body: Value, status: u16, kind: &str, expected: &str| {
        let (s, r) = node.post("/v1/messages", &body);
        assert_eq!((s, r["type"].as_str(), r["error"]["type"].as_str()), (status, Some("error"), Some(kind)), "{r}");
        assert!(r["error"]["message"].as_str().unwrap().contains(expected), "{r}");
    };
    let mut no_max = messages_body(1);
    no_max.as_object_mut().unwrap().remove("max_tokens");
    refused(no_max, 400, "invalid_request_error", "max_tokens");
    let mut unknown = messages_body(4);
    unknown["model"] = json!("no-such-model");
    refused(unknown, 404, "not_found_error", "no-such-model");
    let mut tools = messages_body(4);
    tools["tools"] = json!([{"type": "bash_20250124", "name": "bash"}]);
    refused(tools, 400, "invalid_request_error", "tools[0]");
    let mut image = messages_body(4);
    image["messages"] = json!([{"role": "user", "content": [{"type": "image", "source": {}}]}]);
    refused(image, 400, "invalid_request_error", "image");
    let (s, r) = node.request("POST", "/v1/messages", "{oops");
    assert_eq!(s, 400, "{r}");
    assert_eq!(serde_json::from_str::<Value>(&r).unwrap()["error"]["type"], "invalid_request_error");
}
