//! Tool calls on `/v1/chat/completions` on a real node (SmolLM2, whose template knows no tools, so the tools reach
//! it through a system message): `required` and a named function constrain the answer to calls of listed tools
//! whose arguments match their schemas, parsed into `message.tool_calls` with `finish_reason: "tool_calls"`;
//! streamed, each call comes as a first fragment with its id and name and then argument fragments; history with
//! calls and tool results reaches the model; `auto` leaves a model that calls nothing its text; bad tools are a 400
//! naming the field. Copies of the model with Llama 3.x's, Mistral's and gpt-oss's templates show those formats end to end:
//! the node constrains, parses and renders calls in the format the template speaks.

mod harness;

use harness::*;
use serde_json::{json, Value};

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time", "description": "Get the local time in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                "required": ["city"], "additionalProperties": false}}}
    ])
}

fn request(choice: Value, stream: bool) -> Value {
    json!({"model": model_name(), "temperature": 0, "max_tokens": 100, "stream": stream,
        "tools": tools(), "tool_choice": choice,
        "messages": [{"role": "user", "content": "What is the weather like in Paris today?"}]})
}

/// Checks a call's name and its arguments (JSON text) against the tool's schema by hand.
fn assert_valid_call(name: &str, arguments: &str) {
    let args: Value =
        serde_json::from_str(arguments).unwrap_or_else(|e| panic!("arguments not JSON ({e}): {arguments}"));
    let o = args.as_object().unwrap_or_else(|| panic!("arguments not an object: {arguments}"));
    let city = o.get("city").and_then(Value::as_str).unwrap_or_else(|| panic!("no city: {arguments}"));
    assert!(city.chars().count() <= 30, "{arguments}");
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    match name {
        "get_weather" => {
            assert_eq!(keys, ["city", "unit"], "{arguments}");
            assert!(["celsius", "fahrenheit"].contains(&o["unit"].as_str().unwrap_or("")), "{arguments}");
        }
        "get_time" => assert_eq!(keys, ["city"], "{arguments}"),
        other => panic!("a call to {other}, which is not a listed tool"),
    }
}

/// The calls of a non-streamed answer as (id, name, arguments), after checking the answer's shape.
fn calls(r: &Value) -> Vec<(String, String, String)> {
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{r}");
    assert!(choice["message"]["content"].is_null(), "{r}");
    let calls = choice["message"]["tool_calls"].as_array().unwrap_or_else(|| panic!("no tool_calls: {r}"));
    assert!(!calls.is_empty(), "{r}");
    calls
        .iter()
        .map(|c| {
            assert_eq!(c["type"], "function", "{r}");
            let id = c["id"].as_str().unwrap_or_default().to_string();
            assert!(id.starts_with("call_") && id.len() > 5, "{r}");
            let name = c["function"]["name"].as_str().unwrap_or_default().to_string();
            let arguments = c["function"]["arguments"].as_str().unwrap_or_else(|| panic!("arguments not text: {r}"));
            assert_valid_call(&name, arguments);
            (id, name, arguments.to_string())
        })
        .collect()
}

#[test]
fn required_and_named_choices_give_calls_to_listed_tools_with_valid_arguments() {
    let node = Node::start();
    // Without tools the model answers this in prose: the constraint is what makes it a call.
    let mut plain = request(json!("auto"), false);
    plain.as_object_mut().unwrap().remove("tools");
    plain.as_object_mut().unwrap().remove("tool_choice");
    let (status, r) = node.post("/v1/chat/completions", &plain);
    assert_eq!(status, 200, "{r}");
    assert!(r["choices"][0]["message"]["tool_calls"].is_null(), "{r}");

    let (status, r) = node.post("/v1/chat/completions", &request(json!("required"), false));
    assert_eq!(status, 200, "{r}");
    let required = calls(&r);
    let ids: std::collections::HashSet<&str> = required.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(ids.len(), required.len(), "ids must differ: {r}");

    // A named function: exactly one call, to it.
    let named = json!({"type": "function", "function": {"name": "get_time"}});
    let (status, r) = node.post("/v1/chat/completions", &request(named, false));
    assert_eq!(status, 200, "{r}");
    let one = calls(&r);
    assert_eq!(one.len(), 1, "{r}");
    assert_eq!(one[0].1, "get_time", "{r}");

    // parallel_tool_calls: false allows one call only.
    let mut single = request(json!("required"), false);
    single["parallel_tool_calls"] = json!(false);
    let (status, r) = node.post("/v1/chat/completions", &single);
    assert_eq!(status, 200, "{r}");
    assert_eq!(calls(&r).len(), 1, "{r}");

    // Sampled, the calls still parse.
    for seed in 1..=3 {
        let mut body = request(json!("required"), false);
        body["temperature"] = json!(1.0);
        body["seed"] = json!(seed);
        let (status, r) = node.post("/v1/chat/completions", &body);
        assert_eq!(status, 200, "{r}");
        calls(&r);
    }

    // Streamed: per call a first fragment with index, id, type and name, then argument fragments that add up to
    // what the whole answer holds.
    let (status, text) = node.request("POST", "/v1/chat/completions", &request(json!("required"), true).to_string());
    assert_eq!(status, 200, "{text}");
    let chunks: Vec<Value> = sse_data(&text)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect();
    let mut streamed: Vec<(String, String, String)> = Vec::new();
    for c in &chunks {
        let delta = &c["choices"][0]["delta"];
        assert!(delta["content"].as_str().is_none_or(str::is_empty), "text in a call-only answer: {c}");
        for f in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = f["index"].as_u64().unwrap_or_else(|| panic!("no index: {c}")) as usize;
            if index == streamed.len() {
                assert_eq!(f["type"], "function", "{c}");
                let id = f["id"].as_str().unwrap_or_else(|| panic!("first fragment without id: {c}"));
                let name = f["function"]["name"].as_str().unwrap_or_else(|| panic!("first fragment without name: {c}"));
                streamed.push((id.to_string(), name.to_string(), String::new()));
            } else {
                assert!(index + 1 == streamed.len(), "fragment of call {index} out of order: {c}");
                assert!(f.get("id").is_none() && f["function"].get("name").is_none(), "{c}");
            }
            streamed[index].2.push_str(f["function"]["arguments"].as_str().unwrap_or_default());
        }
    }
    let finish: Vec<&Value> =
        chunks.iter().map(|c| &c["choices"][0]["finish_reason"]).filter(|f| !f.is_null()).collect();
    assert_eq!(finish, [&json!("tool_calls")], "{text}");
    let names_args = |c: &[(String, String, String)]| c.iter().map(|c| (c.1.clone(), c.2.clone())).collect::<Vec<_>>();
    assert_eq!(names_args(&streamed), names_args(&required), "{text}");
}

#[test]
fn history_with_calls_and_results_reaches_the_model_and_auto_keeps_text() {
    let node = Node::start();
    // auto: this model calls nothing here, so the answer is its text, not a call, and ends with stop.
    let (status, r) = node.post("/v1/chat/completions", &request(json!("auto"), false));
    assert_eq!(status, 200, "{r}");
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "stop", "{r}");
    assert!(choice["message"]["tool_calls"].is_null(), "{r}");
    let text = choice["message"]["content"].as_str().unwrap_or_default();
    assert!(!text.is_empty() && !text.contains("<tool_call>"), "{r}");
    // "none" offers no tools: the answer is the one without tools.
    let (status, none) = node.post("/v1/chat/completions", &request(json!("none"), false));
    assert_eq!(status, 200, "{none}");
    let mut plain = request(json!("none"), false);
    plain.as_object_mut().unwrap().remove("tools");
    let (_, plain) = node.post("/v1/chat/completions", &plain);
    assert_eq!(none["choices"][0]["message"], plain["choices"][0]["message"]);
    assert_eq!(none["usage"]["prompt_tokens"], plain["usage"]["prompt_tokens"]);

    // The assistant's call and the tool's result (ids and arguments as the SDKs send them) go into the prompt:
    // the model sees the result and answers from it.
    let history = json!([
        {"role": "user", "content": "What is the weather like in Paris today?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 31, \"sky\": \"sunny\"}"}
    ]);
    let body = json!({"model": model_name(), "temperature": 0, "max_tokens": 60, "tools": tools(),
        "messages": history});
    let (status, r) = node.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{r}");
    let answer = r["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    assert!(answer.contains("31"), "the tool's result does not reach the model: {r}");
    let first_turn = request(json!("auto"), false);
    let (_, first) = node.post("/v1/chat/completions", &first_turn);
    let (longer, shorter) = (r["usage"]["prompt_tokens"].as_u64(), first["usage"]["prompt_tokens"].as_u64());
    assert!(longer > shorter, "{longer:?} <= {shorter:?}");
}

#[test]
fn bad_tools_are_refused_naming_the_field() {
    let node = Node::start();
    let refused = |edit: &dyn Fn(&mut Value), param: &str, says: &str| {
        let mut body = request(json!("auto"), false);
        edit(&mut body);
        let (status, r) = node.post("/v1/chat/completions", &body);
        assert_eq!(status, 400, "{r}");
        assert_eq!(r["error"]["param"], param, "{r}");
        let message = r["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{says:?} not in {message:?}");
    };
    refused(&|b| b["tools"] = json!({"name": "x"}), "tools", "array");
    refused(&|b| b["tools"][0]["type"] = json!("code_interpreter"), "tools[0].type", "only function tools");
    refused(&|b| b["tools"][1]["function"]["name"] = json!("get time"), "tools[1].function.name", "get time");
    refused(&|b| b["tools"][1]["function"]["name"] = json!("get_weather"), "tools", "two tools");
    refused(&|b| b["tools"][0]["function"]["parameters"] = json!("none"), "tools[0].function.parameters", "schema");
    refused(
        &|b| b["tool_choice"] = json!({"type": "function", "function": {"name": "send_mail"}}),
        "tool_choice",
        "send_mail",
    );
    refused(&|b| b["tool_choice"] = json!("always"), "tool_choice", "always");
    refused(
        &|b| {
            b["tools"] = json!([]);
            b["tool_choice"] = json!("required");
        },
        "tool_choice",
        "empty",
    );
    refused(&|b| b["response_format"] = json!({"type": "json_object"}), "response_format", "tools");
    refused(&|b| b["parallel_tool_calls"] = json!("yes"), "parallel_tool_calls", "boolean");
    // A schema the constraint cannot satisfy is named (one it cannot express is read leniently: the engine's
    // unit tests).
    refused(
        &|b| {
            b["tools"] = json!([{"type": "function", "function": {"name": "count", "parameters": {"type": "object",
                "properties": {"n": {"type": "integer", "minimum": 5, "maximum": 2}}, "required": ["n"]}}}])
        },
        "tools",
        "minimum",
    );
    // History the server cannot read.
    refused(
        &|b| b["messages"] = json!([{"role": "assistant", "tool_calls": {"id": "x"}}]),
        "messages[0].tool_calls",
        "array",
    );
}

/// A system message under which SmolLM2 opens calls by itself (found by trying: greedy, it answers "What time is
/// it in Tokyo?" with a sentence and then calls get_time), so `auto` and Ollama (which has only `auto`) can be
/// seen calling.
const EXPERT: &str = "You are an expert in composing functions. You are given a question and a set of possible \
    functions. Based on the question, you will need to make one or more function/tool calls to achieve the purpose.";

fn tokyo() -> Value {
    json!([{"role": "system", "content": EXPERT}, {"role": "user", "content": "What time is it in Tokyo?"}])
}

#[test]
fn auto_gives_the_text_then_the_calls_the_model_opens() {
    let node = Node::start();
    let body = |stream: bool| {
        json!({"model": model_name(), "temperature": 0, "max_tokens": 150, "stream": stream, "tools": tools(),
            "messages": tokyo()})
    };
    let (status, r) = node.post("/v1/chat/completions", &body(false));
    assert_eq!(status, 200, "{r}");
    let message = &r["choices"][0]["message"];
    let text = message["content"].as_str().unwrap_or_else(|| panic!("no text: {r}"));
    assert!(!text.trim().is_empty() && !text.contains("<tool_call"), "{r}");
    assert_eq!(r["choices"][0]["finish_reason"], "tool_calls", "{r}");
    let whole: Vec<(String, String)> = message["tool_calls"]
        .as_array()
        .unwrap_or_else(|| panic!("no calls: {r}"))
        .iter()
        .map(|c| {
            let (name, args) = (c["function"]["name"].as_str().unwrap(), c["function"]["arguments"].as_str().unwrap());
            assert_valid_call(name, args);
            (name.to_string(), args.to_string())
        })
        .collect();
    assert!(!whole.is_empty());

    // Streamed: the same text (nothing of the call's opening in it) and the same calls.
    let (status, sse) = node.request("POST", "/v1/chat/completions", &body(true).to_string());
    assert_eq!(status, 200, "{sse}");
    let (mut streamed_text, mut streamed_calls) = (String::new(), Vec::<(String, String)>::new());
    for d in sse_data(&sse).iter().filter(|d| *d != "[DONE]") {
        let c: Value = serde_json::from_str(d).unwrap();
        let delta = &c["choices"][0]["delta"];
        streamed_text.push_str(delta["content"].as_str().unwrap_or_default());
        for f in delta["tool_calls"].as_array().into_iter().flatten() {
            if let Some(name) = f["function"]["name"].as_str() {
                streamed_calls.push((name.to_string(), String::new()));
            }
            if let Some(last) = streamed_calls.last_mut() {
                last.1.push_str(f["function"]["arguments"].as_str().unwrap_or_default());
            }
        }
    }
    assert_eq!(streamed_text, text);
    assert_eq!(streamed_calls, whole);
}

#[test]
fn anthropic_tool_use_streamed_or_not_and_a_tool_result_round_trip() {
    let node = Node::start();
    let anthropic_tools = json!([
        {"name": "get_weather", "description": "Get the current weather in a city",
            "input_schema": tools()[0]["function"]["parameters"].clone()},
        {"name": "get_time", "description": "Get the local time in a city",
            "input_schema": tools()[1]["function"]["parameters"].clone()}
    ]);
    let body = |stream: bool| {
        json!({"model": model_name(), "max_tokens": 100, "temperature": 0, "stream": stream,
            "tools": anthropic_tools, "tool_choice": {"type": "any"},
            "messages": [{"role": "user", "content": "What is the weather like in Paris today?"}]})
    };
    let (status, r) = node.post("/v1/messages", &body(false));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["stop_reason"], "tool_use", "{r}");
    let uses: Vec<&Value> = r["content"].as_array().unwrap().iter().filter(|b| b["type"] == "tool_use").collect();
    assert!(!uses.is_empty(), "{r}");
    for u in &uses {
        assert!(u["id"].as_str().is_some_and(|id| id.starts_with("toolu_")), "{r}");
        assert!(u["input"].is_object(), "{r}");
        assert_valid_call(u["name"].as_str().unwrap(), &u["input"].to_string());
    }

    // Streamed: a tool_use block start with id and name, then input_json_delta fragments that parse to the input.
    let (status, sse) = node.request("POST", "/v1/messages", &body(true).to_string());
    assert_eq!(status, 200, "{sse}");
    let events: Vec<Value> = sse_data(&sse).iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let mut inputs: Vec<(String, String)> = Vec::new();
    for e in &events {
        if e["type"] == "content_block_start" && e["content_block"]["type"] == "tool_use" {
            assert!(e["content_block"]["id"].as_str().is_some_and(|id| id.starts_with("toolu_")), "{e}");
            inputs.push((e["content_block"]["name"].as_str().unwrap().to_string(), String::new()));
        }
        if e["delta"]["type"] == "input_json_delta" {
            inputs
                .last_mut()
                .expect("a delta inside a tool_use block")
                .1
                .push_str(e["delta"]["partial_json"].as_str().unwrap());
        }
    }
    let streamed: Vec<(String, Value)> = inputs
        .iter()
        .map(|(n, i)| (n.clone(), serde_json::from_str(i).unwrap_or_else(|e| panic!("{e}: {i}"))))
        .collect();
    let whole: Vec<(String, Value)> =
        uses.iter().map(|u| (u["name"].as_str().unwrap().to_string(), u["input"].clone())).collect();
    assert_eq!(streamed, whole);
    let delta = events.iter().find(|e| e["type"] == "message_delta").expect("a message_delta");
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");

    // The answer's own blocks go back as history with a tool_result: the model answers from the result.
    let result_for = uses[0]["id"].clone();
    let round_trip = json!({"model": model_name(), "max_tokens": 60, "temperature": 0, "tools": anthropic_tools,
        "messages": [
            {"role": "user", "content": "What is the weather like in Paris today?"},
            {"role": "assistant", "content": [uses[0]]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": result_for,
                "content": "{\"temperature\": 31, \"sky\": \"sunny\"}"}]}]});
    let (status, r) = node.post("/v1/messages", &round_trip);
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["stop_reason"], "end_turn", "{r}");
    assert!(r["content"][0]["text"].as_str().is_some_and(|t| t.contains("31")), "{r}");

    // Refusals in Anthropic's shape, in Anthropic's names.
    let mut bad = body(false);
    bad["tools"][1]["name"] = json!("get time");
    let (status, r) = node.post("/v1/messages", &bad);
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["error"]["type"], "invalid_request_error", "{r}");
    assert!(r["error"]["message"].as_str().is_some_and(|m| m.contains("tools[1].name")), "{r}");
}

#[test]
fn ollama_chat_calls_tools_with_arguments_as_objects() {
    let node = Node::start();
    let body = |stream: bool| {
        json!({"model": model_name(), "stream": stream, "tools": tools(), "messages": tokyo(),
            "options": {"temperature": 0, "num_predict": 150}})
    };
    let (status, r) = node.post("/api/chat", &body(false));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["done_reason"], "stop", "{r}");
    let calls = r["message"]["tool_calls"].as_array().unwrap_or_else(|| panic!("no calls: {r}")).clone();
    for c in &calls {
        assert!(c["function"]["arguments"].is_object(), "{r}");
        assert_valid_call(c["function"]["name"].as_str().unwrap(), &c["function"]["arguments"].to_string());
    }
    assert!(!r["message"]["content"].as_str().unwrap_or_default().contains("<tool_call"), "{r}");

    // Streamed, each call comes whole in a line of its own, and the same calls come.
    let (status, lines) = node.request("POST", "/api/chat", &body(true).to_string());
    assert_eq!(status, 200, "{lines}");
    let streamed: Vec<Value> = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .flat_map(|l| l["message"]["tool_calls"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(streamed, calls);

    // History with the calls (arguments as objects) and a tool message reaches the model.
    let mut history = tokyo().as_array().unwrap().clone();
    history.push(json!({"role": "assistant", "content": "", "tool_calls": [calls[0]]}));
    history.push(json!({"role": "tool", "content": "It is 23:47 in Tokyo.", "tool_name": "get_time"}));
    let (status, r) = node.post(
        "/api/chat",
        &json!({"model": model_name(), "stream": false, "tools": tools(), "messages": history,
            "options": {"temperature": 0, "num_predict": 60}}),
    );
    assert_eq!(status, 200, "{r}");
    let (_, first) = node.post("/api/chat", &body(false));
    assert!(r["prompt_eval_count"].as_u64() > first["prompt_eval_count"].as_u64(), "{r}");

    // Ollama clients look for the capability before they send tools.
    let (status, shown) = node.post("/api/show", &json!({"model": model_name()}));
    assert_eq!(status, 200, "{shown}");
    assert!(shown["capabilities"].as_array().unwrap().contains(&json!("tools")), "{shown}");
    let (status, r) = node.post("/api/generate", &json!({"model": model_name(), "prompt": "a", "tools": tools()}));
    assert_eq!(status, 400, "{r}");
    assert!(r["error"].as_str().is_some_and(|e| e.contains("/api/chat")), "{r}");
}

/// A GGUF string as the file stores it: a u64 length, then the bytes.
fn gguf_string(text: &str) -> Vec<u8> {
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

/// Replaces the first stored string `old` after `from` with `new`; returns how much longer the file got.
fn replace_string(bytes: &mut Vec<u8>, from: usize, old: &str, new: &str) -> isize {
    let old = gguf_string(old);
    let at = from + bytes[from..].windows(old.len()).position(|w| w == old).expect("the string is in the file");
    bytes.splice(at..at + old.len(), gguf_string(new));
    new.len() as isize - (old.len() as isize - 8)
}

/// Writes the test model into `dir` as `name`.gguf with chat template `template` and the control tokens
/// `renamed` (old text, new text) renamed. The tensor data moves by a multiple of the file's alignment (32 bytes:
/// the template is padded with a Jinja comment), so their offsets still hold.
fn write_variant(dir: &std::path::Path, name: &str, template: &str, renamed: &[(&str, &str)]) {
    let mut bytes = std::fs::read(common::model_path()).unwrap();
    let tokens = bytes.windows(21).position(|w| w == b"tokenizer.ggml.tokens").expect("the model has a vocabulary");
    let mut grown: isize = renamed.iter().map(|(old, new)| replace_string(&mut bytes, tokens, old, new)).sum();
    let key = b"tokenizer.chat_template";
    let at = bytes.windows(key.len()).position(|w| w == key).expect("the model has a chat template") + key.len() + 4;
    let old_len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as isize;
    grown += template.len() as isize - old_len;
    let pad = (4 + grown).rem_euclid(32);
    let padded = format!("{template}{{#{}#}}", " ".repeat(if pad == 0 { 0 } else { 32 - pad as usize }));
    bytes.splice(at..at + 8 + old_len as usize, gguf_string(&padded));
    assert_eq!((bytes.len() as isize - std::fs::metadata(common::model_path()).unwrap().len() as isize) % 32, 0);
    std::fs::write(dir.join(format!("{name}.gguf")), bytes).unwrap();
}

/// A template in Mistral's newer style (`[TOOL_CALLS]name[ARGS]{...}` per call), of our own.
const MISTRAL_ARGS_TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}\
    {% if tools and loop.last %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}[INST]{{ m.content }}[/INST]\
    {% elif m.tool_calls %}{% for c in m.tool_calls %}[TOOL_CALLS]{{ c.function.name }}[ARGS]{{ c.function.arguments | tojson }}{% endfor %}{{ eos_token }}\
    {% elif m.role == 'tool' %}[TOOL_RESULTS]{{ m.content }}[/TOOL_RESULTS]{% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}";

/// Llama's, Mistral's and gpt-oss's formats on a real node: copies of the test model with Llama 3.2's template,
/// Mistral Nemo's (and two unused control tokens renamed to Mistral's `[TOOL_CALLS]` and `[ARGS]`), a template in
/// Mistral's newer style, and gpt-oss's (seven unused control tokens renamed to harmony's markers). The model knows none of these formats; the constraint makes its answers calls in each, which the
/// node reads back into `tool_calls`.
#[test]
fn llama_mistral_and_gpt_oss_formats_give_calls_the_node_reads_back() {
    let dir = std::env::temp_dir().join(format!("exo-tool-formats-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let renamed = [("<jupyter_code>", "[TOOL_CALLS]"), ("<gh_stars>", "[ARGS]")];
    write_variant(&dir, "llama-tools", include_str!("../../exo-engine/tests/data/templates/llama-3.2.jinja"), &[]);
    write_variant(
        &dir,
        "mistral-tools",
        include_str!("../../exo-engine/tests/data/templates/mistral-nemo.jinja"),
        &renamed,
    );
    write_variant(&dir, "mistral-args-tools", MISTRAL_ARGS_TEMPLATE, &renamed);
    let harmony: Vec<(&str, &str)> = ["<reponame>", "<file_sep>", "<filename>", "<gh_stars>", "<issue_start>"]
        .into_iter()
        .zip(["<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|constrain|>"])
        .chain([("<issue_comment>", "<|call|>"), ("<issue_closed>", "<|return|>")])
        .collect();
    write_variant(&dir, "gpt-oss-tools", include_str!("../../exo-engine/tests/data/templates/gpt-oss.jinja"), &harmony);
    let node = Node::start_in(&dir, &Home::new("tool-formats"), &[], &[]);
    for model in ["llama-tools", "mistral-tools", "mistral-args-tools", "gpt-oss-tools"] {
        let ask = |choice: Value, stream: bool| {
            let mut r = request(choice, stream);
            r["model"] = json!(model);
            // One call each: this small model, offered a list, goes on listing calls to the token limit (the
            // engine's tests read lists of calls in each format).
            r["parallel_tool_calls"] = json!(false);
            r
        };
        let (status, r) = node.post("/v1/chat/completions", &ask(json!("required"), false));
        assert_eq!(status, 200, "{model}: {r}");
        let got = calls(&r);
        // The markers never reach the content.
        assert_eq!(got.len(), 1, "{model}: {r}");
        let (status, r) = node
            .post("/v1/chat/completions", &ask(json!({"type": "function", "function": {"name": "get_time"}}), false));
        assert_eq!(status, 200, "{model}: {r}");
        assert!(calls(&r).iter().all(|(_, name, _)| name == "get_time"), "{model}: {r}");
        // Streamed: the same calls, as fragments.
        let (status, body) = node.request("POST", "/v1/chat/completions", &ask(json!("required"), true).to_string());
        assert_eq!(status, 200, "{model}: {body}");
        let mut streamed: Vec<(String, String)> = Vec::new();
        for data in sse_data(&body).iter().filter(|d| *d != "[DONE]") {
            let chunk: Value = serde_json::from_str(data).unwrap();
            let delta = &chunk["choices"][0]["delta"];
            assert!(delta["content"].as_str().unwrap_or_default().is_empty(), "{model}: text in {body}");
            for c in delta["tool_calls"].as_array().into_iter().flatten() {
                match c["function"]["name"].as_str() {
                    Some(name) => streamed.push((name.to_string(), String::new())),
                    None => streamed.last_mut().unwrap().1.push_str(c["function"]["arguments"].as_str().unwrap()),
                }
            }
        }
        assert_eq!(streamed, got.iter().map(|(_, n, a)| (n.clone(), a.clone())).collect::<Vec<_>>(), "{model}");
        // A history with the calls (ids as this node makes them, which Nemo's template alone refuses) and their
        // results renders.
        let (id, name, arguments) = &got[0];
        let mut follow = ask(json!("auto"), false);
        follow["max_tokens"] = json!(8);
        follow["messages"] = json!([
            {"role": "user", "content": "What is the weather like in Paris today?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function",
                "function": {"name": name, "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": id, "content": "18 C and sunny"}
        ]);
        let (status, r) = node.post("/v1/chat/completions", &follow);
        assert_eq!(status, 200, "{model}: {r}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
