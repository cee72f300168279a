//! Ollama's API on a real node (SmolLM2): `/api/chat` and `/api/generate` answer as `/v1/chat/completions` and
//! `/v1/completions` do on the same request (one generation path), streamed as NDJSON or whole; `/api/tags`,
//! `/api/ps`, `/api/show` and `/api/version` describe the node; what cannot be honoured is refused in Ollama's
//! error shape.

mod harness;

use harness::*;
use serde_json::{json, Value};

/// The objects of an NDJSON body.
fn ndjson(body: &str) -> Vec<Value> {
    body.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn chat_and_generate_answer_as_the_openai_routes_do() {
    let node = Node::start();
    let (status, openai) = node.post("/v1/chat/completions", &chat_body(12, false));
    assert_eq!(status, 200, "{openai}");
    let expected = openai["choices"][0]["message"]["content"].as_str().unwrap();

    let messages = json!([{"role": "user", "content": QUESTION}]);
    let body = json!({"model": model_name(), "messages": messages, "stream": false,
        "options": {"temperature": 0, "num_predict": 12}});
    let (status, r) = node.post("/api/chat", &body);
    assert_eq!(status, 200, "{r}");
    assert_eq!((r["message"]["role"].as_str(), r["message"]["content"].as_str()), (Some("assistant"), Some(expected)));
    assert_eq!(
        (r["done"].as_bool(), r["done_reason"].as_str(), r["eval_count"].as_u64()),
        (Some(true), Some("length"), Some(12))
    );
    assert_eq!(r["prompt_eval_count"], openai["usage"]["prompt_tokens"]);
    assert!(r["created_at"].as_str().unwrap().ends_with('Z') && r["total_duration"].as_u64().unwrap() > 0, "{r}");

    // Streamed (Ollama's default): NDJSON objects whose contents add up to the same answer, the last one done.
    let mut streamed = body.clone();
    streamed.as_object_mut().unwrap().remove("stream");
    let (status, text) = node.request("POST", "/api/chat", &streamed.to_string());
    assert_eq!(status, 200, "{text}");
    let objects = ndjson(&text);
    let (last, parts) = objects.split_last().unwrap();
    assert!(parts.iter().all(|o| o["done"] == false) && last["done"] == true, "{text}");
    let joined: String = objects.iter().filter_map(|o| o["message"]["content"].as_str()).collect();
    assert_eq!(joined, expected);
    assert_eq!(last["eval_count"], 12);

    // Generate templates its prompt as the user's message; raw, it is the prompt as it is, as /v1/completions.
    let body = json!({"model": model_name(), "prompt": QUESTION, "stream": false,
        "options": {"temperature": 0, "num_predict": 12}});
    let (status, r) = node.post("/api/generate", &body);
    assert_eq!((status, r["response"].as_str()), (200, Some(expected)), "{r}");
    let (_, completion) = node.post(
        "/v1/completions",
        &json!({"model": model_name(), "prompt": "The capital of France is", "temperature": 0, "max_tokens": 6}),
    );
    let body = json!({"model": model_name(), "prompt": "The capital of France is", "raw": true, "stream": false,
        "options": {"temperature": 0, "num_predict": 6}});
    let (status, r) = node.post("/api/generate", &body);
    assert_eq!((status, &r["response"]), (200, &completion["choices"][0]["text"]), "{r}");

    // The model the cluster placed is running.
    let (status, ps) = node.request("GET", "/api/ps", "");
    assert_eq!(status, 200);
    let ps: Value = serde_json::from_str(&ps).unwrap();
    assert!(ps["models"].as_array().unwrap().iter().any(|m| m["name"] == model_name()), "{ps}");
}

#[test]
fn the_node_describes_itself_and_refuses_in_ollamas_shape() {
    let node = Node::start();
    let get = |path: &str| {
        let (status, body) = node.request("GET", path, "");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    assert!(get("/api/version")["version"].as_str().unwrap().starts_with("0."));
    let tags = get("/api/tags");
    let listed = tags["models"].as_array().unwrap();
    assert!(listed.iter().any(|m| m["name"] == model_name() && m["details"]["format"] == "gguf"), "{tags}");
    // Catalog models not on this node are not "pulled".
    assert!(!listed.iter().any(|m| m["name"] == "llama-3.1-70b"), "{tags}");
    assert_eq!(node.request("HEAD", "/api/tags", "").0, 200);

    let (status, show) = node.post("/api/show", &json!({"model": model_name()}));
    assert_eq!(status, 200, "{show}");
    assert_eq!(show["capabilities"], json!(["completion", "tools"]));
    assert_eq!(
        (show["model_info"]["general.architecture"].as_str(), show["model_info"]["llama.block_count"].as_u64()),
        (Some("llama"), Some(30))
    );
    assert!(show["template"].as_str().unwrap().contains("<|im_start|>"), "{show}");

    let refused = |path: &str, body: Value, status: u16, expected: &str| {
        let (s, r) = node.post(path, &body);
        assert_eq!(s, status, "{r}");
        assert!(r["error"].as_str().unwrap_or_else(|| panic!("not Ollama's shape: {r}")).contains(expected), "{r}");
    };
    let messages = json!([{"role": "user", "content": "Hi"}]);
    refused("/api/chat", json!({"model": model_name(), "messages": messages, "format": "yaml"}), 400, "format must be");
    refused(
        "/api/chat",
        json!({"model": "no-such-model", "messages": messages, "stream": false}),
        404,
        "no-such-model",
    );
    refused("/api/chat", json!({"model": model_name(), "messages": messages, "options": {"top_p": 2}}), 400, "top_p");
    refused("/api/show", json!({"model": "no-such-model"}), 404, "no-such-model");
    refused("/api/show", json!({}), 400, "model");
    let (s, r) = node.request("POST", "/api/generate", "{not json");
    assert_eq!(s, 400, "{r}");
    assert!(serde_json::from_str::<Value>(&r).unwrap()["error"].is_string(), "{r}");
}
