//! Several nodes on 127.0.0.1 (static peers, ports the OS assigns) running one model as a ring of layer shards:
//! the memory-weighted split, answers equal to one node's, concurrent requests through the ring, a late joiner,
//! a long prompt, and nodes that die or freeze mid-request.

mod harness;

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::*;
use serde_json::{json, Value};

/// A node with a memory limit, joined to `peers`.
fn node(name: &str, home: &Home, memory: &str, peers: &[&Node]) -> Node {
    let peers = peers.iter().map(|p| p.peer.clone()).collect::<Vec<_>>().join(",");
    let mut args = vec!["--node-id", name, "--memory-limit", memory, "--threads", "1"];
    if !peers.is_empty() {
        args.extend(["--peers", &peers]);
    }
    Node::start_with(home, &args)
}

/// The text of a streamed chat answer, or the error event that ended it.
fn streamed(text: &str) -> Result<String, Value> {
    let mut out = String::new();
    for d in sse_data(text) {
        if d == "[DONE]" {
            return Ok(out);
        }
        let chunk: Value = serde_json::from_str(&d).unwrap();
        if chunk.get("error").is_some() {
            return Err(chunk);
        }
        out.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    panic!("the stream ended without [DONE] or an error: {text}")
}

#[test]
fn three_nodes_split_layers_by_memory_and_answer_as_one_node_does() {
    let homes = [Home::new("c3-a"), Home::new("c3-b"), Home::new("c3-c")];
    let a = node("a", &homes[0], "1G", &[]);
    let alone = answer(&a, &chat_body(16, false));
    let b = node("b", &homes[1], "2G", &[&a]);
    let c = node("c", &homes[2], "3G", &[&a]);
    // c learns of b (and b of c) from a.
    for n in [&a, &b, &c] {
        n.wait_for_nodes(3);
    }
    assert_eq!(answer(&a, &chat_body(16, false)), alone);
    let t = a.get("/v1/topology");
    let expected = vec![("c".to_string(), 0, 14), ("b".to_string(), 15, 24), ("a".to_string(), 25, 29)];
    assert_eq!(stages(&t), expected, "{t}");
    for (n, (id, start, end)) in [&c, &b, &a].iter().zip(&expected) {
        let line = format!("node {id}: layers {start}-{end} of 30 (");
        n.wait_for("the layers to be reported", |me| me["model"]["layers"]["start"] == *start);
        assert!(n.logged(&line), "{id} did not log {line:?}: {:?}", n.log.lock().unwrap());
    }

    // Two requests through the ring at once, from two origins, both right.
    let body = chat_body(16, true).to_string();
    let answers: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = [&a, &c]
            .into_iter()
            .map(|n| {
                let body = &body;
                s.spawn(move || {
                    let (status, text) = n.request("POST", "/v1/chat/completions", body);
                    assert_eq!(status, 200, "{text}");
                    streamed(&text).unwrap_or_else(|e| panic!("{e}"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(answers, vec![alone.clone(), alone]);

    // `exo topology` prints the same cluster as a table.
    let out = Command::new(env!("CARGO_BIN_EXE_exo"))
        .args(["topology", "--api", &format!("127.0.0.1:{}", a.port)])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(table.lines().count(), 5, "{table}");
    assert!(table.lines().any(|l| l.starts_with("c ") && l.contains("0-14 of 30")), "{table}");
    assert!(table.lines().last().unwrap().ends_with(": c 0-14, b 15-24, a 25-29"), "{table}");
    let out = Command::new(env!("CARGO_BIN_EXE_exo")).args(["topology", "--api", "127.0.0.1:1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: cannot reach a node at 127.0.0.1:1"), "{out:?}");
}

#[test]
fn a_late_node_joins_the_next_plan_and_a_long_prompt_goes_around_the_ring() {
    let homes = [Home::new("late-a"), Home::new("late-b")];
    let late = |name: &str, home: &Home, peers: &[&Node]| {
        let peers = peers.iter().map(|p| p.peer.clone()).collect::<Vec<_>>().join(",");
        let mut args = vec!["--node-id", name, "--memory-limit", "2G", "--threads", "1"];
        if !peers.is_empty() {
            args.extend(["--peers", &peers]);
        }
        Node::start_with(home, &args)
    };
    let a = late("a", &homes[0], &[]);
    let alone = answer(&a, &chat_body(16, false));
    assert_eq!(stages(&a.get("/v1/topology")), vec![("a".to_string(), 0, 29)]);

    let b = late("b", &homes[1], &[&a]);
    a.wait_for_nodes(2);
    assert_eq!(answer(&a, &chat_body(16, false)), alone);
    assert_eq!(stages(&a.get("/v1/topology")), vec![("a".to_string(), 0, 14), ("b".to_string(), 15, 29)]);
    assert!(b.logged("node b: layers 15-29 of 30"));

    // An 8,000-token prompt: stage 0 prefills it in chunks of 512 positions and passes each on while it works on
    // the next. It repeats one sentence and stops three words into it, so a model that attends over the whole
    // prompt continues the sentence.
    let sentence = "The quick brown fox jumps over the lazy dog while the cat sleeps. ";
    let prompt = format!("{}The quick brown", sentence.repeat(8000 / 15));
    let body = json!({"model": model_name(), "prompt": prompt, "temperature": 0, "max_tokens": 4});
    let started = Instant::now();
    let (status, ring) = a.post("/v1/completions", &body);
    assert_eq!(status, 200, "{ring}");
    let prompt_tokens = ring["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!((7900..8100).contains(&prompt_tokens), "{prompt_tokens}");
    assert_eq!(ring["usage"]["completion_tokens"], 4);
    let text = ring["choices"][0]["text"].as_str().unwrap();
    eprintln!("{prompt_tokens} prompt tokens through 2 nodes in {:.1} s: {text:?}", started.elapsed().as_secs_f64());
    assert!(text.starts_with(" fox jumps over"), "{ring}");
    // Memory stays bounded: the weights, a KV cache of the context, and scratch for one chunk of 512 positions.
    for node in [&a, &b] {
        let peak = peak_resident_mib(node);
        eprintln!("node {}: peak resident {peak} MiB", node.id);
        assert!(peak < 400, "node {}: peak resident {peak} MiB", node.id);
    }
}

/// The most memory the node's process has had resident, in MiB (Linux's VmHWM).
fn peak_resident_mib(node: &Node) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

/// Starts a long stream at `origin`, waits for some text, does `harm`, and returns how long the stream took to
/// end after it and how it ended.
fn harm_mid_stream(origin: &Node, harm: impl FnOnce()) -> (Duration, Result<String, Value>) {
    let mut reader = BufReader::new(origin.send("/v1/chat/completions", &long_chat()));
    read_content_chunks(&mut reader, 4);
    harm();
    let start = Instant::now();
    // The connection stays open after the response: read events until the one that ends the stream.
    let mut events = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the connection closed mid-stream: {events}");
        if line.starts_with("data: ") {
            events.push_str(&line);
            events.push('\n');
            if line.contains("[DONE]") || line.contains("\"error\"") {
                break;
            }
        }
    }
    (start.elapsed(), streamed(&events))
}

fn signal(node: &Node, signal: &str) {
    assert!(Command::new("kill").args([signal, &node.child.id().to_string()]).status().unwrap().success());
}

#[cfg(unix)]
#[test]
fn a_node_that_freezes_or_dies_mid_request_ends_it_with_an_error_and_the_rest_serve_on() {
    let homes = [Home::new("fail-a"), Home::new("fail-b"), Home::new("fail-c")];
    let a = node("a", &homes[0], "1G", &[]);
    let b = node("b", &homes[1], "1G", &[&a]);
    let mut c = node("c", &homes[2], "1G", &[&a]);
    for n in [&a, &b, &c] {
        n.wait_for_nodes(3);
    }
    let alone = {
        let (status, r) = a.post("/v1/chat/completions", &chat_body(8, false));
        assert_eq!(status, 200, "{r}");
        r["choices"][0]["message"]["content"].clone()
    };

    // Frozen: it stops answering heartbeats.
    let (took, ended) = harm_mid_stream(&a, || signal(&c, "-STOP"));
    let error = ended.expect_err("the stream went on without a frozen node");
    assert_eq!(error["error"]["code"], "node_failed", "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("node c"), "{error}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // The next request is planned over the survivors.
    let (status, r) = a.post("/v1/chat/completions", &chat_body(8, false));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"][0]["message"]["content"], alone);
    let t = a.get("/v1/topology");
    assert_eq!(stages(&t).iter().map(|s| s.0.as_str()).collect::<Vec<_>>(), ["a", "b"], "{t}");

    // Dead: its connections close.
    let (took, ended) = harm_mid_stream(&a, || signal(&b, "-KILL"));
    let error = ended.expect_err("the stream went on without a dead node");
    assert_eq!(error["error"]["code"], "node_failed", "{error}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let (status, r) = a.post("/v1/chat/completions", &chat_body(8, false));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"][0]["message"]["content"], alone);
    signal(&c, "-CONT");
    let _ = c.child.kill();
}
