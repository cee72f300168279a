//! A node as tests drive it: a real `exo` process on 127.0.0.1 with ports the OS assigns, its stderr collected,
//! spoken to over plain HTTP/1.1, and the request bodies and stream parsing the tests share.

#![allow(dead_code)]

#[path = "../../../exo-engine/tests/common/mod.rs"]
pub mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const QUESTION: &str = "What is the capital of France?";

/// A running node, killed when dropped.
pub struct Node {
    pub child: Child,
    /// The API's port.
    pub port: u16,
    pub id: String,
    /// host:port of its peer server.
    pub peer: String,
    /// Its stderr so far, line by line.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// A folder for one test's node (its `EXO_HOME`), removed at the end.
pub struct Home(pub PathBuf);

impl Home {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("exo-api-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Home(dir)
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Node {
    pub fn start() -> Self {
        Self::start_with(&Home::new("default"), &[])
    }

    /// A node with `EXO_HOME` in `home` and `extra` arguments.
    pub fn start_with(home: &Home, extra: &[&str]) -> Self {
        Self::start_env(home, extra, &[])
    }

    /// As `start_with`, with environment variables. Unless `env` says otherwise, a node's Hugging Face cache is
    /// `home/hf` and its hub an address nothing listens on: no test touches the machine's cache or the internet.
    pub fn start_env(home: &Home, extra: &[&str], env: &[(&str, String)]) -> Self {
        Self::start_in(common::model_path().parent().unwrap(), home, extra, env)
    }

    /// As `start_env`, serving the models in `models_dir` instead of the test model's folder.
    pub fn start_in(models_dir: &Path, home: &Home, extra: &[&str], env: &[(&str, String)]) -> Self {
        let dir = models_dir.to_str().unwrap().to_string();
        let mut args = vec!["--api-host", "127.0.0.1", "--api-port", "0", "--models-dir", &dir, "--discovery", "none"];
        // Defaults the test may override.
        for (flag, value) in [("--threads", "2"), ("--listen-port", "0")] {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        args.extend_from_slice(extra);
        let mut command = Command::new(env!("CARGO_BIN_EXE_exo"));
        command
            .args(&args)
            .env("RUST_LOG", "warn")
            .env("EXO_HOME", &home.0)
            // No speed figures: the tests check the memory split, which measured speeds (noisy on a shared
            // machine) could move; a test may set EXO_CALIBRATE itself.
            .env("EXO_CALIBRATE", "false")
            .env("HF_HOME", home.0.join("hf"))
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_TOKEN");
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("exo starts");
        // Ready when it says where it listens: "exo node ID: OpenAI API on http://127.0.0.1:PORT/v1, web chat on
        // ..., peers on HOST:PORT (models from ...)".
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (id, port, peer) = loop {
            let line = lines.next().expect("the node exits before listening").unwrap();
            log.lock().unwrap().push(line.clone());
            if let Some(rest) = line.split("http://127.0.0.1:").nth(1) {
                let id = line.trim_start_matches("exo node ").split(':').next().unwrap().to_string();
                let peer = line.split("peers on ").nth(1).unwrap().split(' ').next().unwrap().to_string();
                break (id, rest.split('/').next().unwrap().parse().unwrap(), peer);
            }
        };
        // Keep draining stderr so the node never blocks on a full pipe.
        let collected = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        Node { child, port, id, peer, log }
    }

    /// Whether a line of its stderr so far contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }

    /// Polls `/v1/topology` until it lists `n` nodes.
    pub fn wait_for_nodes(&self, n: usize) -> Value {
        let start = Instant::now();
        loop {
            let t = self.get("/v1/topology");
            if t["nodes"].as_array().map_or(0, Vec::len) == n {
                return t;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "waited a minute for {n} nodes: {t}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn get(&self, path: &str) -> Value {
        let (status, body) = self.request("GET", path, "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// This node's entry in `/v1/topology`.
    pub fn me(&self) -> Value {
        let t = self.get("/v1/topology");
        assert_eq!(t["self"], self.id.as_str());
        t["nodes"].as_array().unwrap().iter().find(|n| n["id"] == self.id.as_str()).unwrap().clone()
    }

    /// Polls `/v1/topology` until `ready` holds for this node's entry (at most a minute) and returns the entry.
    pub fn wait_for(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let me = self.me();
            if ready(&me) {
                return me;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "waited a minute for {what}: {me}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends a request on a new connection without reading the response.
    pub fn send(&self, path: &str, body: &Value) -> TcpStream {
        let body = body.to_string();
        let mut s = self.connect();
        write!(s, "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        s
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
        s
    }

    /// Sends a request and returns the status and the body.
    pub fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = self.connect();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        // Streams come chunked: keep only the chunks' contents.
        let body =
            if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.into() };
        (status, body)
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = self.request("POST", path, &body.to_string());
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// A non-streamed chat answer's text; the node's log comes with a failure.
pub fn answer(node: &Node, body: &Value) -> String {
    let (status, r) = node.post("/v1/chat/completions", body);
    assert_eq!(status, 200, "{r}; node {}'s log: {:?}", node.id, node.log.lock().unwrap());
    r["choices"][0]["message"]["content"].as_str().unwrap().to_string()
}

/// The stages of the first plan of a topology, as (node, start, end).
pub fn stages(topology: &Value) -> Vec<(String, u64, u64)> {
    topology["plans"][0]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["node_id"].as_str().unwrap().to_string(), s["start"].as_u64().unwrap(), s["end"].as_u64().unwrap()))
        .collect()
}

pub fn model_name() -> String {
    common::model_path().file_stem().unwrap().to_str().unwrap().to_string()
}

pub fn chat_body(max_tokens: usize, stream: bool) -> Value {
    json!({"model": model_name(), "messages": [{"role": "user", "content": QUESTION}], "temperature": 0,
        "max_tokens": max_tokens, "stream": stream})
}

/// The `data:` payloads of an SSE body.
pub fn sse_data(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
}

pub fn long_chat() -> Value {
    json!({"model": model_name(), "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "temperature": 2.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": 7, "max_tokens": 4000, "stream": true})
}

/// Reads SSE lines from `reader` until `n` content chunks have arrived.
pub fn read_content_chunks(reader: &mut impl BufRead, n: usize) {
    let (mut seen, mut line) = (0, String::new());
    while seen < n {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended early");
        seen +=
            usize::from(line.starts_with("data: ") && line.contains("\"content\":\"") && !line.contains("\"role\""));
    }
}

/// Fills the queue of a node started with `--queue 1`: one long request streaming, one waiting. Dropping the two
/// streams hangs both up.
pub fn fill_queue(node: &Node) -> (BufReader<TcpStream>, TcpStream) {
    let mut running = BufReader::new(node.send("/v1/chat/completions", &long_chat()));
    read_content_chunks(&mut running, 1);
    let waiting = node.send("/v1/chat/completions", &long_chat());
    node.wait_for("a request in the queue", |me| me["inference"]["queued"] == 1);
    (running, waiting)
}
