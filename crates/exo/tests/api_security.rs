//! A node against hostile HTTP: a real `exo` process on 127.0.0.1 spoken to with the headers an attacker (or a web
//! page in the user's browser) would send. An API key is required on every API route but the health check and the
//! web chat's files; cross-origin requests are refused before their body is read unless `--cors-origin` lists the
//! origin; an open API beyond loopback is warned about; model names from a request are never local paths; and an
//! absurd split-model reference is refused without taking the node down.

mod harness;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

use harness::*;
use serde_json::{json, Value};

const KEY: &str = "s3cret-key_0123";

/// A response: status, headers (names lower-cased), body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends `method path` with `headers` (besides Host, Content-Length and Connection) and `body`.
fn send(node: &Node, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut s = node.connect();
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str("Host: localhost\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    write!(s, "{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_string() };
    Reply { status, headers, body }
}

const JSON: (&str, &str) = ("Content-Type", "application/json");
const BEARER: (&str, &str) = ("Authorization", "Bearer s3cret-key_0123");

fn keyed_node(name: &str) -> Node {
    Node::start_with(&Home::new(name), &["--api-key", KEY])
}

/// How many requests the node's worker has taken, read with `auth`.
fn requests_run(node: &Node, auth: &[(&str, &str)]) -> u64 {
    let r = send(node, "GET", "/v1/topology", auth, "");
    assert_eq!(r.status, 200, "{}", r.body);
    let t = r.json();
    let me = t["nodes"].as_array().unwrap().iter().find(|n| n["id"] == t["self"]).unwrap().clone();
    me["inference"]["requests"].as_u64().unwrap()
}

#[test]
fn a_keyed_node_refuses_every_api_route_without_its_key_with_openais_401() {
    let node = keyed_node("no-key");
    let chat = chat_body(2, false).to_string();
    let routes = [
        ("GET", "/v1/models".to_string(), ""),
        ("GET", format!("/v1/models/{}", model_name()), ""),
        ("GET", "/v1/downloads".to_string(), ""),
        ("GET", "/v1/topology".to_string(), ""),
        ("POST", "/v1/chat/completions".to_string(), chat.as_str()),
        ("POST", "/v1/completions".to_string(), r#"{"model": "x", "prompt": "hi"}"#),
        ("GET", "/v2/nothing".to_string(), ""),
    ];
    let wrong_bearer = ("Authorization", "Bearer s3cret-key_0124");
    let wrong_x = ("x-api-key", "s3cret-key_012");
    let basic = ("Authorization", "Basic czNjcmV0LWtleV8wMTIz");
    for (method, path, body) in &routes {
        for auth in [&[JSON][..], &[JSON, wrong_bearer], &[JSON, wrong_x], &[JSON, basic]] {
            let r = send(&node, method, path, auth, body);
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}: {}", r.body);
            let e = &r.json()["error"];
            assert_eq!(e["code"], "invalid_api_key", "{}", r.body);
            assert_eq!(e["type"], "invalid_request_error", "{}", r.body);
            assert_eq!(e["param"], Value::Null, "{}", r.body);
            let given = auth.len() > 1;
            let expected = if given { "not this node's" } else { "needs an API key" };
            assert!(e["message"].as_str().unwrap().contains(expected), "{auth:?}: {}", r.body);
            assert!(r.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")), "{:?}", r.headers);
        }
    }
    // Nothing ran.
    assert_eq!(requests_run(&node, &[BEARER]), 0);
}

#[test]
fn a_keyed_node_takes_its_key_as_bearer_or_x_api_key() {
    // The key from the environment, as EXO_API_KEY.
    let node = Node::start_env(&Home::new("key-ok"), &[], &[("EXO_API_KEY", KEY.to_string())]);
    let x_api_key = ("x-api-key", KEY);
    for auth in [BEARER, ("Authorization", "bearer s3cret-key_0123"), x_api_key] {
        let r = send(&node, "GET", "/v1/models", &[auth], "");
        assert_eq!(r.status, 200, "{auth:?}: {}", r.body);
        assert!(r.json()["data"].as_array().unwrap().iter().any(|m| m["id"] == model_name()), "{}", r.body);
    }
    for auth in [BEARER, x_api_key] {
        let r = send(&node, "POST", "/v1/chat/completions", &[JSON, auth], &chat_body(2, false).to_string());
        assert_eq!(r.status, 200, "{auth:?}: {}", r.body);
        assert_eq!(r.json()["usage"]["completion_tokens"], 2);
    }
    assert_eq!(send(&node, "GET", "/v1/topology", &[x_api_key], "").status, 200);
    assert_eq!(send(&node, "GET", "/v1/downloads", &[BEARER], "").status, 200);
}

#[test]
fn a_keyed_node_keeps_the_health_check_and_the_web_chat_open() {
    let node = keyed_node("key-open");
    for (path, marker) in [("/healthcheck", "ok"), ("/", "/app.js"), ("/app.js", "/v1/topology"), ("/style.css", "{")] {
        let r = send(&node, "GET", path, &[], "");
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(r.body.contains(marker), "{path}: {}", r.body);
    }
}

#[test]
fn a_cross_origin_request_is_refused_before_its_body_is_read() {
    let node = Node::start_with(&Home::new("cors-refused"), &[]);
    let evil = ("Origin", "http://evil.example");
    // A "simple" request: text/plain, so a browser sends it without asking first.
    let text = ("Content-Type", "text/plain;charset=UTF-8");
    let chat = chat_body(2, false).to_string();
    for (method, path, headers, body) in [
        ("POST", "/v1/chat/completions", vec![evil, text], chat.as_str()),
        ("POST", "/v1/completions", vec![evil, text], r#"{"model": "x", "prompt": "hi"}"#),
        // Refused, not parsed: malformed JSON is a 403 too, not a 400.
        ("POST", "/v1/chat/completions", vec![evil, JSON], "{not json"),
        ("GET", "/v1/models", vec![evil], ""),
        ("GET", "/v1/topology", vec![("Origin", "null")], ""),
        // Another port of the same host is another origin.
        ("POST", "/v1/chat/completions", vec![("Origin", "http://localhost:3000"), text], chat.as_str()),
        ("OPTIONS", "/v1/chat/completions", vec![evil, ("Access-Control-Request-Method", "POST")], ""),
    ] {
        let r = send(&node, method, path, &headers, body);
        assert_eq!(r.status, 403, "{method} {path} {headers:?}: {}", r.body);
        let e = &r.json()["error"];
        assert_eq!(
            (e["code"].as_str(), e["type"].as_str()),
            (Some("origin_not_allowed"), Some("invalid_request_error"))
        );
        assert!(r.header("access-control-allow-origin").is_none(), "{:?}", r.headers);
    }
    // Nothing ran; the node's own page (same origin) is served.
    assert_eq!(requests_run(&node, &[]), 0);
    let host = format!("127.0.0.1:{}", node.port);
    let origin = format!("http://{host}");
    let r = send(&node, "POST", "/v1/chat/completions", &[("Host", &host), ("Origin", &origin), JSON], &chat);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(requests_run(&node, &[]), 1);
}

#[test]
fn a_listed_origin_is_served_with_cors_headers() {
    let home = Home::new("cors-listed");
    let node = Node::start_with(&home, &["--cors-origin", "http://a.example,http://evil.example", "--api-key", KEY]);
    let evil = ("Origin", "http://evil.example");
    // The preflight needs no key: browsers send none with it.
    let asks = [
        evil,
        ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "authorization,content-type"),
        ("Access-Control-Request-Private-Network", "true"),
    ];
    let r = send(&node, "OPTIONS", "/v1/chat/completions", &asks, "");
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), Some("http://evil.example"));
    assert!(r.header("access-control-allow-methods").is_some_and(|m| m.contains("POST")), "{:?}", r.headers);
    assert_eq!(r.header("access-control-allow-headers"), Some("authorization,content-type"));
    assert_eq!(r.header("access-control-allow-private-network"), Some("true"));

    let chat = chat_body(2, false).to_string();
    let r = send(&node, "POST", "/v1/chat/completions", &[evil, JSON, BEARER], &chat);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), Some("http://evil.example"));
    assert_eq!(r.json()["usage"]["completion_tokens"], 2);
    // A refusal is readable by the listed page, so it can ask for the key.
    let r = send(&node, "GET", "/v1/models", &[("Origin", "http://a.example")], "");
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), Some("http://a.example"));
    // Any origin not listed is still refused.
    let r = send(&node, "POST", "/v1/chat/completions", &[("Origin", "http://b.example"), JSON, BEARER], &chat);
    assert_eq!(r.status, 403, "{}", r.body);
}

#[test]
fn bad_cors_origins_and_empty_keys_stop_the_node_at_start() {
    let home = Home::new("bad-flags");
    for args in
        [&["--cors-origin", "evil.example"][..], &["--cors-origin", "http://a.example/path"], &["--api-key", ""]]
    {
        let mut child = Command::new(env!("CARGO_BIN_EXE_exo"))
            .args(args)
            .args(["--api-host", "127.0.0.1", "--api-port", "0", "--listen-port", "0", "--discovery", "none"])
            .env("EXO_HOME", &home.0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > std::time::Duration::from_secs(20) {
                let _ = child.kill();
                panic!("{args:?}: the node started");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(!status.success() && err.contains(args[0]), "{args:?}: {err}");
    }
}

/// The stderr lines of a node started with `args` up to the line saying where it listens.
fn start_up_lines(home: &Home, args: &[&str]) -> Vec<String> {
    let dir = common::model_path().parent().unwrap().to_str().unwrap().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_exo"))
        .args(["--api-port", "0", "--listen-port", "0", "--discovery", "none", "--threads", "1", "--models-dir", &dir])
        .args(args)
        .env("EXO_HOME", &home.0)
        .env("HF_HOME", home.0.join("hf"))
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env_remove("RUST_LOG")
        .env_remove("EXO_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok) {
        let done = line.contains("OpenAI API on");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(lines.last().is_some_and(|l| l.contains("OpenAI API on")), "the node did not start: {lines:?}");
    lines
}

#[test]
fn an_open_api_beyond_loopback_is_warned_about_once_at_start() {
    let home = Home::new("warn");
    let warned = |lines: &[String]| lines.iter().filter(|l| l.contains("open to the network")).count();
    // The default address, 0.0.0.0, is every interface.
    let open = start_up_lines(&home, &[]);
    assert_eq!(warned(&open), 1, "{open:?}");
    let line = open.iter().find(|l| l.contains("open to the network")).unwrap();
    assert!(line.contains("WARN") && line.contains("--api-key"), "{line}");
    assert_eq!(warned(&start_up_lines(&home, &["--api-key", KEY])), 0);
    assert_eq!(warned(&start_up_lines(&home, &["--api-host", "127.0.0.1"])), 0);
}

/// The 404 body for `model`, with the model's name taken out, so that two bodies can be compared.
fn unknown_model_body(node: &Node, model: &str) -> String {
    let mut body = chat_body(2, false);
    body["model"] = json!(model);
    let r = send(node, "POST", "/v1/chat/completions", &[JSON], &body.to_string());
    assert_eq!(r.status, 404, "{model}: {}", r.body);
    assert_eq!(r.json()["error"]["code"], "model_not_found", "{}", r.body);
    r.body.replace(model, "MODEL")
}

#[test]
fn local_paths_named_in_a_request_are_unknown_models() {
    let node = Node::start_with(&Home::new("paths"), &[]);
    // What a leak of the file's start would look like: its bytes as text, or as hex.
    let passwd = std::fs::read("/etc/passwd").unwrap_or_default();
    let start: Vec<u8> = passwd.iter().copied().take(4).collect();
    let leaks =
        [String::from_utf8_lossy(&start).into_owned(), format!("{start:02x?}"), format!("{start:?}"), "GGUF".into()];
    let missing = unknown_model_body(&node, "/no/such/dir/passwd");
    let model_file = common::model_path();
    for model in ["/etc/passwd", "../../etc/passwd", "/etc", "/etc/hostname", model_file.to_str().unwrap()] {
        let body = unknown_model_body(&node, model);
        assert_eq!(body, missing, "{model}: the answer differs from a path that does not exist's");
        for leak in &leaks {
            assert!(start.is_empty() || !body.contains(leak.as_str()), "{model}: {body} holds {leak}");
        }
    }
    // A path in /v1/models/{id} is no more a file than in a request body.
    for id in ["%2Fetc%2Fpasswd", "..%2F..%2Fetc%2Fpasswd", "%2Fno%2Fsuch%2Ffile.gguf"] {
        let r = send(&node, "GET", &format!("/v1/models/{id}"), &[], "");
        assert_eq!(r.status, 404, "{id}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "model_not_found", "{}", r.body);
    }
    // The models folder still answers by name.
    assert_eq!(send(&node, "POST", "/v1/chat/completions", &[JSON], &chat_body(2, false).to_string()).status, 200);
}

#[test]
fn the_operators_model_path_stays_usable_from_the_api() {
    let model = common::model_path();
    let path = model.to_str().unwrap();
    let node = Node::start_with(&Home::new("operator-path"), &["--model", path]);
    let mut body = chat_body(2, false);
    body["model"] = json!(path);
    let r = send(&node, "POST", "/v1/chat/completions", &[JSON], &body.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn an_absurd_split_part_count_is_refused_and_the_node_serves_on() {
    let node = Node::start_with(&Home::new("split"), &["--offline"]);
    for model in ["hf:o/r/m-00001-of-99999999999.gguf", "hf:o/r/m-00001-of-4294967295.gguf"] {
        let mut body = chat_body(2, false);
        body["model"] = json!(model);
        let r = send(&node, "POST", "/v1/chat/completions", &[JSON], &body.to_string());
        assert!((400..500).contains(&r.status), "{model}: {} {}", r.status, r.body);
        assert!(r.json()["error"]["message"].is_string(), "{}", r.body);
    }
    assert_eq!(send(&node, "GET", "/healthcheck", &[], "").status, 200);
    let r = send(&node, "POST", "/v1/chat/completions", &[JSON], &chat_body(2, false).to_string());
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn exo_topology_reads_a_keyed_node_with_its_key_and_says_when_one_is_needed() {
    let node = keyed_node("key-topology");
    let api = format!("127.0.0.1:{}", node.port);
    let topology = |key: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_exo"));
        c.args(["topology", "--api", &api]).env_remove("EXO_API_KEY");
        if let Some(k) = key {
            c.args(["--api-key", k]);
        }
        c.output().unwrap()
    };
    let out = topology(Some(KEY));
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&node.id), "{out:?}");
    for (key, says) in [(None, "needs an API key"), (Some("wrong"), "refused the API key")] {
        let out = topology(key);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says) && stderr.contains("--api-key"), "{stderr}");
    }
}
