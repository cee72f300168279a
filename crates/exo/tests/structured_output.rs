//! Structured output on a real node (SmolLM2): `response_format` (`json_object`, `json_schema`) and Ollama's
//! `format` constrain the whole answer, so that even a 135M model's answer parses and matches the schema, on one
//! node and when the sampling stage is another node; what the constraint cannot express is a 400 naming it.

mod harness;

use harness::*;
use serde_json::{json, Value};

/// A schema with the features people use: properties of several types, bounds, an enum, `required`,
/// `additionalProperties: false`.
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "city": {"type": "string", "enum": ["Paris", "London", "Rome"]},
            "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 2}
        },
        "required": ["name", "age", "city", "hobbies"],
        "additionalProperties": false
    })
}

fn person_request(stream: bool) -> Value {
    json!({"model": model_name(), "temperature": 0, "max_tokens": 120, "stream": stream,
        "messages": [{"role": "user", "content": "Describe a person who lives in France as JSON."}],
        "response_format": {"type": "json_schema",
            "json_schema": {"name": "person", "strict": true, "schema": person_schema()}}})
}

/// Checks `answer` against `person_schema` by hand, field by field.
fn assert_person(answer: &str) {
    let v: Value = serde_json::from_str(answer).unwrap_or_else(|e| panic!("not JSON ({e}): {answer:?}"));
    let o = v.as_object().unwrap_or_else(|| panic!("not an object: {answer}"));
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["age", "city", "hobbies", "name"], "{answer}");
    assert!(o["name"].as_str().is_some_and(|n| n.chars().count() <= 20), "{answer}");
    assert!(o["age"].as_u64().is_some_and(|a| a <= 120) && o["age"].is_u64(), "{answer}");
    assert!(["Paris", "London", "Rome"].contains(&o["city"].as_str().unwrap_or("")), "{answer}");
    let hobbies = o["hobbies"].as_array().unwrap_or_else(|| panic!("hobbies not an array: {answer}"));
    assert!(hobbies.len() <= 2 && hobbies.iter().all(|h| h.as_str().is_some_and(|h| h.chars().count() <= 16)));
}

fn content(r: &Value) -> &str {
    r["choices"][0]["message"]["content"].as_str().unwrap_or_else(|| panic!("no content: {r}"))
}

#[test]
fn a_json_schema_constrains_the_whole_answer_streamed_or_not() {
    let node = Node::start();
    // Unconstrained, the model answers in prose: the constraint is what makes the answer JSON.
    let mut prose = person_request(false);
    prose.as_object_mut().unwrap().remove("response_format");
    let (status, r) = node.post("/v1/chat/completions", &prose);
    assert_eq!(status, 200, "{r}");
    assert!(serde_json::from_str::<Value>(content(&r)).is_err(), "the model wrote JSON unasked: {r}");

    let (status, r) = node.post("/v1/chat/completions", &person_request(false));
    assert_eq!(status, 200, "{r}");
    assert_person(content(&r));
    assert_eq!(r["choices"][0]["finish_reason"], "stop", "{r}");
    let whole = content(&r).to_string();

    // Streamed, the fragments add up to the same answer.
    let (status, text) = node.request("POST", "/v1/chat/completions", &person_request(true).to_string());
    assert_eq!(status, 200, "{text}");
    let joined: String = sse_data(&text)
        .iter()
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(joined, whole);

    // Sampled (temperature 1, several seeds), every answer still matches.
    for seed in 1..=3 {
        let mut body = person_request(false);
        body["temperature"] = json!(1.0);
        body["seed"] = json!(seed);
        let (status, r) = node.post("/v1/chat/completions", &body);
        assert_eq!(status, 200, "{r}");
        assert_person(content(&r));
    }
}

#[test]
fn json_object_gives_an_object_and_ollama_format_gives_json_or_the_schema() {
    let node = Node::start();
    let body = json!({"model": model_name(), "temperature": 0, "max_tokens": 80,
        "messages": [{"role": "user", "content": QUESTION}], "response_format": {"type": "json_object"}});
    let (status, r) = node.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{r}");
    let answer = content(&r);
    if r["choices"][0]["finish_reason"] == "stop" {
        let v: Value = serde_json::from_str(answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"));
        assert!(v.is_object(), "{answer}");
    } else {
        // Cut by max_tokens: what there is must still be the start of an object.
        assert!(answer.trim_start().starts_with('{'), "{answer}");
    }

    let messages = json!([{"role": "user", "content": "Describe a person who lives in France as JSON."}]);
    let body = json!({"model": model_name(), "messages": messages, "stream": false, "format": person_schema(),
        "options": {"temperature": 0, "num_predict": 120}});
    let (status, r) = node.post("/api/chat", &body);
    assert_eq!(status, 200, "{r}");
    assert_person(r["message"]["content"].as_str().unwrap());
    assert_eq!(r["done_reason"], "stop", "{r}");

    let body = json!({"model": model_name(), "prompt": QUESTION, "stream": false, "format": "json",
        "options": {"temperature": 0, "num_predict": 80}});
    let (status, r) = node.post("/api/generate", &body);
    assert_eq!(status, 200, "{r}");
    let response = r["response"].as_str().unwrap();
    assert!(response.trim_start().starts_with('{'), "{r}");
}

#[test]
fn the_grammar_travels_to_a_sampling_stage_on_another_node() {
    let homes = [Home::new("so-a"), Home::new("so-b")];
    // The origin has the most memory, so it runs the first layers and b (1G) runs the last and samples.
    let a = Node::start_with(&homes[0], &["--node-id", "a", "--memory-limit", "3G", "--threads", "1"]);
    let b =
        Node::start_with(&homes[1], &["--node-id", "b", "--memory-limit", "1G", "--threads", "1", "--peers", &a.peer]);
    for n in [&a, &b] {
        n.wait_for_nodes(2);
    }
    let (status, r) = a.post("/v1/chat/completions", &person_request(false));
    assert_eq!(status, 200, "{r}");
    let t = a.get("/v1/topology");
    let last = stages(&t).last().cloned().unwrap_or_default();
    assert_eq!(last.0, "b", "b should sample: {t}");
    assert_person(content(&r));
    // The same answer as one node gives (greedy, same model).
    let alone = Node::start();
    let (_, one) = alone.post("/v1/chat/completions", &person_request(false));
    assert_eq!(content(&r), content(&one));
}

#[test]
fn what_the_constraint_cannot_express_or_do_is_refused() {
    let node = Node::start();
    let refused = |body: &Value, param: &str, says: &str| {
        let (status, r) = node.post("/v1/chat/completions", body);
        assert_eq!(status, 400, "{r}");
        assert_eq!(r["error"]["param"], param, "{r}");
        let message = r["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{says:?} not in {message:?}");
    };
    let with_format = |schema: Value| {
        json!({"model": model_name(), "messages": [{"role": "user", "content": QUESTION}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})
    };
    // A format llguidance does not know, and a schema nothing can match: both named, neither ignored.
    refused(&with_format(json!({"type": "string", "format": "no-such-format"})), "response_format", "no-such-format");
    refused(&with_format(json!({"type": "integer", "minimum": 5, "maximum": 1})), "response_format", "nsatisfiable");
    refused(
        &with_format(json!({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}})),
        "response_format",
        "nowhere",
    );
    refused(
        &json!({"model": model_name(), "messages": [{"role": "user", "content": QUESTION}],
            "response_format": {"type": "xml"}}),
        "response_format",
        "json_schema",
    );

    // Ollama's shape for the same refusal.
    let body = json!({"model": model_name(), "prompt": QUESTION, "stream": false,
        "format": {"type": "string", "format": "no-such-format"}});
    let (status, r) = node.post("/api/generate", &body);
    assert_eq!(status, 400, "{r}");
    assert!(r["error"].as_str().is_some_and(|e| e.contains("no-such-format")), "{r}");
}
