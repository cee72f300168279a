//! Request bodies of `/v1/chat/completions` and `/v1/completions` from arbitrary bytes, validated as the server
//! validates them, and what the node does next with a valid one short of running the model: the model name
//! resolved by the store, the messages rendered with the test model's chat template, the prompt tokenized, and
//! generation set up with the request's sampling and stop strings, then fed the prompt's own tokens.
//!
//! Checked besides panics: a refused body is a 4xx error (the client's fault, not a 500), and a valid one's
//! parameters are ones the engine accepts; stop strings never reach the output.
#![no_main]

use exo_api::validation::{chat_request, completion_request, Options};
use exo_api::ApiError;
use exo_engine::generation::Generation;
use exo_fuzz::{chat_template, store, tokenizer};
use libfuzzer_sys::fuzz_target;

/// Tokens of the prompt fed back as if generated.
const FED_BACK: usize = 64;

fuzz_target!(init: { chat_template(); store(); }, |body: &[u8]| {
    match chat_request(body) {
        Ok(r) => {
            // As the node builds it: prefill, merged system text, the messages' text kept as text.
            if let Ok(chat) = chat_template().prompt(&r.messages) {
                for range in &chat.message_text {
                    assert!(range.end <= chat.text.len() && chat.text.is_char_boundary(range.start));
                }
                if let Ok(prompt) = chat.encode(tokenizer()) {
                    generate(&r.options, &prompt);
                }
            }
        }
        Err(e) => refused(&e),
    }
    match completion_request(body) {
        Ok(r) => {
            if let Ok(prompt) = tokenizer().encode(&r.prompt, true, true) {
                generate(&r.options, &prompt);
            }
        }
        Err(e) => refused(&e),
    }
});

fn refused(e: &ApiError) {
    assert!((400..500).contains(&e.status()), "a body is refused with {}: {e}", e.status());
    let _ = (e.body().to_string(), e.kind(), e.code(), e.param());
}

/// What the inference worker does with a valid request before the ring runs it.
fn generate(o: &Options, prompt: &[u32]) {
    let _ = store().store.resolve(&o.model);
    let max_tokens = o.max_tokens.unwrap_or(FED_BACK);
    let params = o.generation_params(max_tokens);
    let mut generation = match Generation::new(tokenizer(), prompt, &params) {
        Ok(g) => g,
        Err(e) => panic!("a valid request's parameters are refused by the engine: {e} ({o:?})"),
    };
    let mut text = String::new();
    for &token in prompt.iter().take(FED_BACK) {
        let step = generation.accept(token);
        text.push_str(&step.text);
        if step.finished.is_some() {
            break;
        }
    }
    if generation.finished().is_none() {
        text.push_str(&generation.end(exo_engine::generation::FinishReason::Length));
    }
    for stop in &o.stop {
        assert!(!text.contains(stop.as_str()), "stop string {stop:?} in the output {text:?}");
    }
}
