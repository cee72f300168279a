//! A thinking model as its clients see it, over HTTP/1.1 to a real `exo` process: a chat's reasoning comes in
//! `reasoning_content` (streamed as `delta.reasoning_content`), apart from `content`; `reasoning_format: "none"`
//! leaves it in `content`; an unknown format is a 400; raw completions and models that do not think are untouched.
//!
//! The test model (SmolLM2) does not think, so the node also serves a copy of it whose chat template ends the prompt
//! with an open `<think>`, as DeepSeek-R1 distills' templates do: all it writes is then reasoning (it never writes
//! `</think>`), and the words are the plain model's.

mod harness;

use std::path::Path;

use harness::*;
use serde_json::{json, Value};

/// The name of the test model's copy with a thinking template.
const THINKING: &str = "SmolLM2-thinking";
/// ChatML, with the assistant's turn opened inside a `<think>`.
const THINKING_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + \
    message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ \
    '<|im_start|>assistant\\n<think>\\n' }}{% endif %}";

/// Writes the test model into `dir` twice: as it is, and as THINKING with THINKING_TEMPLATE. The template is
/// swapped in place (padded with a Jinja comment to the old one's length), so the rest of the file stays as it is.
fn write_models(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let model = common::model_path();
    std::os::unix::fs::symlink(&model, dir.join(model.file_name().unwrap())).unwrap();
    let mut bytes = std::fs::read(&model).unwrap();
    // A GGUF string value: the key, its type (8, string), a u64 length, the bytes.
    let key = b"tokenizer.chat_template";
    let at = bytes.windows(key.len()).position(|w| w == key).expect("the test model has a chat template") + key.len();
    assert_eq!(bytes[at..at + 4], 8u32.to_le_bytes(), "the template is a string");
    let len = u64::from_le_bytes(bytes[at + 4..at + 12].try_into().unwrap()) as usize;
    let pad = len.checked_sub(THINKING_TEMPLATE.len() + 4).expect("the thinking template is shorter than the old one");
    let template = format!("{THINKING_TEMPLATE}{{#{}#}}", " ".repeat(pad));
    bytes[at + 12..at + 12 + len].copy_from_slice(template.as_bytes());
    std::fs::write(dir.join(format!("{THINKING}.gguf")), bytes).unwrap();
}

fn chat(model: &str, extra: Value) -> Value {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0,
        "max_tokens": 8, "logprobs": true});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

#[test]
fn a_thinking_models_reasoning_comes_apart_from_its_answer() {
    let home = Home::new("reasoning");
    let dir = home.0.join("models");
    write_models(&dir);
    let node = Node::start_in(&dir, &home, &[], &[]);

    // Split, as llama-server does by default: it is all reasoning, each token still with its log-probability.
    let (status, r) = node.post("/v1/chat/completions", &chat(THINKING, json!({})));
    assert_eq!(status, 200, "{r}");
    let message = &r["choices"][0]["message"];
    let reasoning = message["reasoning_content"].as_str().unwrap_or_else(|| panic!("no reasoning_content: {r}"));
    assert!(!reasoning.is_empty() && reasoning == reasoning.trim(), "{r}");
    assert_eq!(message["content"], "", "{r}");
    let tokens = r["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(tokens > 0, "{r}");
    // Every token but an end-of-generation one (which is not in the text) has its log-probability.
    let shown = tokens - u64::from(r["choices"][0]["finish_reason"] == "stop");
    assert_eq!(r["choices"][0]["logprobs"]["content"].as_array().unwrap().len() as u64, shown, "{r}");

    // None: the same words, left in the content.
    let (status, raw) = node.post("/v1/chat/completions", &chat(THINKING, json!({"reasoning_format": "none"})));
    assert_eq!(status, 200, "{raw}");
    let raw_message = &raw["choices"][0]["message"];
    assert_eq!(raw_message["content"].as_str().map(str::trim), Some(reasoning), "{raw}");
    assert!(raw_message.get("reasoning_content").is_none(), "{raw}");
    assert_eq!(raw["usage"]["completion_tokens"], tokens);

    // Streamed: reasoning_content deltas that add up to the same reasoning, no content.
    let (status, text) =
        node.request("POST", "/v1/chat/completions", &chat(THINKING, json!({"stream": true})).to_string());
    assert_eq!(status, 200, "{text}");
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let streamed = |field: &str| -> String {
        chunks.iter().filter_map(|c| c["choices"][0]["delta"][field].as_str()).collect::<Vec<_>>().concat()
    };
    assert_eq!(streamed("reasoning_content"), reasoning, "{text}");
    assert_eq!(streamed("content"), "", "{text}");

    // Ollama's chat puts it in message.thinking; with think: false it is left out.
    let body = json!({"model": THINKING, "messages": [{"role": "user", "content": QUESTION}], "stream": false,
        "options": {"temperature": 0, "num_predict": 8}});
    let (status, o) = node.post("/api/chat", &body);
    assert_eq!(status, 200, "{o}");
    assert_eq!(
        (o["message"]["thinking"].as_str(), o["message"]["content"].as_str()),
        (Some(reasoning), Some("")),
        "{o}"
    );
    let mut no_think = body.clone();
    no_think["think"] = json!(false);
    let (status, o) = node.post("/api/chat", &no_think);
    assert_eq!(status, 200, "{o}");
    assert!(o["message"].get("thinking").is_none() && o["message"]["content"] == "", "{o}");

    // Anthropic's messages: a thinking block first (streamed as thinking_delta), then the (empty) text block.
    let body = json!({"model": THINKING, "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": QUESTION}]});
    let (status, a) = node.post("/v1/messages", &body);
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["content"][0]["type"], "thinking", "{a}");
    assert_eq!(
        (a["content"][0]["thinking"].as_str(), a["content"][1]["text"].as_str()),
        (Some(reasoning), Some("")),
        "{a}"
    );
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (status, text) = node.request("POST", "/v1/messages", &streamed.to_string());
    assert_eq!(status, 200, "{text}");
    let thinking: String = sse_data(&text)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|d| d["delta"]["type"] == "thinking_delta")
        .map(|d| d["delta"]["thinking"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(thinking, reasoning, "{text}");

    // An unknown format is refused in OpenAI's shape.
    let (status, e) = node.post("/v1/chat/completions", &chat(THINKING, json!({"reasoning_format": "html"})));
    assert_eq!(status, 400, "{e}");
    assert_eq!(
        (e["error"]["param"].as_str(), e["error"]["type"].as_str()),
        (Some("reasoning_format"), Some("invalid_request_error"))
    );

    // Raw completions are not split; a model that does not think answers in content alone.
    let (status, c) = node.post(
        "/v1/completions",
        &json!({"model": THINKING, "prompt": "<think>\nThe capital of France", "max_tokens": 4, "temperature": 0}),
    );
    assert_eq!(status, 200, "{c}");
    assert!(c["choices"][0]["text"].is_string() && c["choices"][0].get("reasoning_content").is_none(), "{c}");
    let (status, plain) = node.post("/v1/chat/completions", &chat(&model_name(), json!({})));
    assert_eq!(status, 200, "{plain}");
    assert!(!plain["choices"][0]["message"]["content"].as_str().unwrap().is_empty(), "{plain}");
    assert!(plain["choices"][0]["message"].get("reasoning_content").is_none(), "{plain}");
}
