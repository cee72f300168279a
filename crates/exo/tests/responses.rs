//! OpenAI's Responses API on a real node (SmolLM2): the same answer as chat completions gives, whole and streamed
//! as the API's events in order; function tools and calls with their outputs; `text.format`; and the state this
//! server does not keep refused by name.

mod harness;

use harness::*;
use serde_json::{json, Value};

fn events(sse: &str) -> Vec<(String, Value)> {
    // Each event comes as `event: NAME` and `data: {... "type": NAME ...}`.
    sse_data(sse)
        .iter()
        .map(|d| {
            let v: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"));
            (v["type"].as_str().unwrap_or_default().to_string(), v)
        })
        .collect()
}

fn output_text(r: &Value) -> String {
    r["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["text"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_response_is_the_chat_answer_whole_and_streamed() {
    let node = Node::start();
    let (status, chat) = node.post("/v1/chat/completions", &chat_body(12, false));
    assert_eq!(status, 200, "{chat}");
    let expected = chat["choices"][0]["message"]["content"].as_str().unwrap().to_string();

    let body = json!({"model": model_name(), "input": QUESTION, "max_output_tokens": 12, "temperature": 0});
    let (status, r) = node.post("/v1/responses", &body);
    assert_eq!(status, 200, "{r}");
    assert_eq!((r["object"].as_str(), r["status"].as_str()), (Some("response"), Some("incomplete")), "{r}");
    assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(output_text(&r), expected);
    assert_eq!(r["usage"]["input_tokens"], chat["usage"]["prompt_tokens"]);
    assert_eq!(r["usage"]["output_tokens"], 12);
    assert!(r["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(r["max_output_tokens"], 12);

    // The same as items with instructions-free messages.
    let items = json!({"model": model_name(), "max_output_tokens": 12, "temperature": 0,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}]});
    let (_, r2) = node.post("/v1/responses", &items);
    assert_eq!(output_text(&r2), expected);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (status, sse) = node.request("POST", "/v1/responses", &streamed.to_string());
    assert_eq!(status, 200, "{sse}");
    let events = events(&sse);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let deltas: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, e)| e["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deltas, expected);
    let order = [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ];
    let mut firsts: Vec<&str> = Vec::new();
    for n in &names {
        if !firsts.contains(n) {
            firsts.push(n);
        }
    }
    assert_eq!(firsts, order, "{names:?}");
    let sequence: Vec<u64> = events.iter().map(|(_, e)| e["sequence_number"].as_u64().unwrap()).collect();
    assert_eq!(sequence, (0..events.len() as u64).collect::<Vec<_>>());
    let last = &events.last().unwrap().1["response"];
    assert_eq!(output_text(last), expected);
    assert_eq!(last["usage"]["output_tokens"], 12);
}

#[test]
fn function_tools_calls_outputs_and_text_format() {
    let node = Node::start();
    let tools = json!([{"type": "function", "name": "get_time", "description": "Get the local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"], "additionalProperties": false}, "strict": true}]);
    let body = json!({"model": model_name(), "temperature": 0, "max_output_tokens": 80, "tools": tools,
        "tool_choice": "required", "input": "What time is it in Tokyo?"});
    let (status, r) = node.post("/v1/responses", &body);
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["status"], "completed", "{r}");
    let calls: Vec<&Value> = r["output"].as_array().unwrap().iter().filter(|i| i["type"] == "function_call").collect();
    assert!(!calls.is_empty(), "{r}");
    for c in &calls {
        assert_eq!(c["name"], "get_time", "{r}");
        assert!(c["call_id"].as_str().unwrap().starts_with("call_"), "{r}");
        let args: Value = serde_json::from_str(c["arguments"].as_str().unwrap()).unwrap();
        assert!(args["city"].as_str().is_some_and(|c| c.chars().count() <= 30) && args.as_object().unwrap().len() == 1);
    }

    // Streamed: the call's item, then argument deltas adding up to the same arguments.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (_, sse) = node.request("POST", "/v1/responses", &streamed.to_string());
    let events = events(&sse);
    let added = events
        .iter()
        .find(|(n, e)| n == "response.output_item.added" && e["item"]["type"] == "function_call")
        .unwrap_or_else(|| panic!("no call item: {sse}"));
    assert_eq!(added.1["item"]["name"], "get_time");
    let args: String = events
        .iter()
        .filter(|(n, e)| n == "response.function_call_arguments.delta" && e["output_index"] == added.1["output_index"])
        .map(|(_, e)| e["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(args, calls[0]["arguments"].as_str().unwrap());

    // The call and its output go back as items: the model answers from the output.
    let call = calls[0];
    let follow = json!({"model": model_name(), "temperature": 0, "max_output_tokens": 40, "tools": tools,
        "input": [{"role": "user", "content": "What time is it in Tokyo?"},
            {"type": "function_call", "call_id": call["call_id"], "name": "get_time", "arguments": call["arguments"]},
            {"type": "function_call_output", "call_id": call["call_id"], "output": "It is 23:47 in Tokyo."}]});
    let (status, r) = node.post("/v1/responses", &follow);
    assert_eq!(status, 200, "{r}");
    assert!(output_text(&r).contains("23:47"), "{r}");

    // text.format: a schema constrains the answer.
    let schema = json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"], "additionalProperties": false});
    let body = json!({"model": model_name(), "temperature": 0, "max_output_tokens": 40, "input": QUESTION,
        "text": {"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": true}}});
    let (status, r) = node.post("/v1/responses", &body);
    assert_eq!(status, 200, "{r}");
    let v: Value = serde_json::from_str(&output_text(&r)).unwrap_or_else(|e| panic!("{e}: {r}"));
    assert!(v["city"].as_str().is_some_and(|c| c.chars().count() <= 20) && v.as_object().unwrap().len() == 1, "{r}");
}

#[test]
fn state_and_bad_input_are_refused_in_openais_shape() {
    let node = Node::start();
    let refused = |body: Value, param: &str, says: &str| {
        let (status, r) = node.post("/v1/responses", &body);
        assert_eq!(status, 400, "{r}");
        assert_eq!(r["error"]["param"], param, "{r}");
        assert!(r["error"]["message"].as_str().is_some_and(|m| m.contains(says)), "{says:?}: {r}");
    };
    let m = model_name();
    refused(json!({"model": m, "input": "a", "previous_response_id": "resp_1"}), "previous_response_id", "no state");
    refused(json!({"model": m, "input": "a", "store": true}), "store", "no state");
    refused(json!({"model": m}), "input", "required");
    refused(
        json!({"model": m, "input": [{"type": "image_generation_call"}]}),
        "input[0].type",
        "image_generation_call",
    );
    refused(
        json!({"model": m, "input": "a", "tools": [{"type": "namespace", "name": "n", "tools": [{"type": "web_search"}]}]}),
        "tools[0].tools[0].type",
        "function tool",
    );
    refused(
        json!({"model": m, "input": "a", "text": {"format": {"type": "json_schema", "schema": {"type": "string", "format": "no-such-format"}}}}),
        "text.format",
        "no-such-format",
    );
    let (status, r) = node.post("/v1/responses", &json!({"model": "no-such-model", "input": "a"}));
    assert_eq!(status, 404, "{r}");
    assert_eq!(r["error"]["type"], "not_found_error", "{r}");
}
