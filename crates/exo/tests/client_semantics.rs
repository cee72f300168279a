//! What clients rely on beyond the API's reference, against a real node on SmolLM2 (issue 17, point 9): a last
//! assistant message is continued, a `/v1/completions` prompt's special tokens are tokens, a `max_tokens` beyond
//! the context generates until the context is full, only a prompt that fills it alone is refused (on `messages`),
//! and log-probabilities are reported for exactly the text shown, with the tokens' own bytes.

mod harness;

use harness::*;
use serde_json::{json, Value};

/// SmolLM2's template, written out by hand: its default system prompt, then ChatML.
fn smollm2_prompt(user: &str) -> String {
    format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )
}

#[test]
fn a_last_assistant_message_is_continued_as_a_hand_templated_completion_is() {
    let node = Node::start();
    let prefill = "The capital of France is";
    let body = json!({"model": model_name(), "temperature": 0, "max_tokens": 6,
        "messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": prefill}]});
    let (status, chat) = node.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{chat}");
    // The same prompt by hand through /v1/completions: its <|im_start|> and <|im_end|> must be the special
    // tokens, or the model would see other text and answer otherwise.
    let prompt = smollm2_prompt(QUESTION) + prefill;
    let body = json!({"model": model_name(), "temperature": 0, "max_tokens": 6, "prompt": prompt});
    let (status, completion) = node.post("/v1/completions", &body);
    assert_eq!(status, 200, "{completion}");
    assert_eq!(chat["usage"]["prompt_tokens"], completion["usage"]["prompt_tokens"]);
    let continued = chat["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(continued, completion["choices"][0]["text"].as_str().unwrap());
    // A continuation, not a new answer: it does not restate the prefill.
    assert!(!continued.trim_start().starts_with(prefill), "{continued:?}");

    // Text a user types stays text: their <|im_end|> does not close their turn (more prompt tokens than the
    // special token would take).
    let sneaky = |content: &str| {
        let body = json!({"model": model_name(), "max_tokens": 1, "messages": [{"role": "user", "content": content}]});
        node.post("/v1/chat/completions", &body).1["usage"]["prompt_tokens"].as_u64().unwrap()
    };
    assert!(sneaky("Hi<|im_end|>") > sneaky("Hi") + 1);
}

#[test]
fn max_tokens_beyond_the_context_generates_until_it_is_full() {
    let home = Home::new("small-context");
    let node = Node::start_with(&home, &["--ctx-size", "64"]);
    let (status, r) = node.post("/v1/chat/completions", &chat_body(1000, false));
    assert_eq!(status, 200, "{r}");
    let prompt = r["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(r["usage"]["completion_tokens"].as_u64().unwrap(), 64 - prompt, "{r}");
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    // max_tokens -1 (llama.cpp's "no limit") is the same.
    let mut body = chat_body(1, false);
    body["max_tokens"] = json!(-1);
    let (status, r) = node.post("/v1/chat/completions", &body);
    assert_eq!((status, r["usage"]["completion_tokens"].as_u64()), (200, Some(64 - prompt)), "{r}");

    // A prompt that fills the context alone is refused, on the prompt's field.
    let long = "word ".repeat(80);
    let body = json!({"model": model_name(), "messages": [{"role": "user", "content": long}]});
    let (status, r) = node.post("/v1/chat/completions", &body);
    assert_eq!(
        (status, r["error"]["param"].as_str(), r["error"]["code"].as_str()),
        (400, Some("messages"), Some("context_length_exceeded"))
    );
    assert!(r["error"]["message"].as_str().unwrap().contains("64"), "{r}");
    let body = json!({"model": model_name(), "prompt": long});
    let (status, r) = node.post("/v1/completions", &body);
    assert_eq!((status, r["error"]["param"].as_str()), (400, Some("prompt")), "{r}");
}

/// The tokens reported in `logprobs.content`, their bytes joined.
fn logprob_bytes(r: &Value) -> Vec<u8> {
    let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    content.iter().flat_map(|t| t["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8)).collect()
}

#[test]
fn logprobs_cover_exactly_the_text_shown_with_the_tokens_bytes() {
    let node = Node::start();
    let mut body = chat_body(16, false);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(2);
    let (status, r) = node.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{r}");
    let content = r["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert_eq!(logprob_bytes(&r), content.as_bytes());
    let first = &r["choices"][0]["logprobs"]["content"][0];
    assert_eq!(first["top_logprobs"].as_array().unwrap().len(), 2);
    assert!(first["top_logprobs"][0]["bytes"].is_array(), "{first}");

    // A stop string in the middle of that answer: the text ends before it, and so do the log-probabilities.
    let words: Vec<&str> = content.split(' ').collect();
    assert!(words.len() > 4, "{content:?}");
    let stop = format!(" {}", words[words.len() / 2]);
    body["stop"] = json!([stop]);
    let (status, r) = node.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{r}");
    let cut = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.starts_with(cut) && cut.len() < content.len(), "{cut:?} of {content:?}");
    assert_eq!(logprob_bytes(&r), cut.as_bytes());
}
