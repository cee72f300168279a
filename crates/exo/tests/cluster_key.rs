//! Clusters with a key, as processes on 127.0.0.1: keyed nodes join and answer as one node does; a node with
//! another key, one with none and a raw TCP client are refused in the handshake and never listed; a recording
//! relay between two keyed nodes sees none of the prompt, the answer or the model's name, which it sees between
//! two open nodes; `exo cluster-key` makes, keeps and refuses keys.

mod harness;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::*;
use serde_json::json;

fn new_key() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_exo")).arg("cluster-key").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(key.len(), 64, "{key}");
    assert!(key.chars().all(|c| c.is_ascii_hexdigit()), "{key}");
    key
}

/// A node with a memory limit, joined to `peers` (host:port), with `key` if given.
fn node(name: &str, home: &Home, memory: &str, peers: &[String], key: Option<&str>) -> Node {
    let peers = peers.join(",");
    let mut args = vec!["--node-id", name, "--memory-limit", memory, "--threads", "1"];
    if !peers.is_empty() {
        args.extend(["--peers", &peers]);
    }
    if let Some(key) = key {
        args.extend(["--cluster-key", key]);
    }
    Node::start_with(home, &args)
}

fn node_ids(n: &Node) -> Vec<String> {
    let t = n.get("/v1/topology");
    let mut ids: Vec<String> =
        t["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

/// Polls `node`'s log until a line contains `text` (at most 30 s).
fn wait_logged(node: &Node, text: &str) {
    let start = Instant::now();
    while !node.logged(text) {
        assert!(start.elapsed() < Duration::from_secs(30), "{} never logged {text:?}: {:?}", node.id, node.log);
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn keyed_nodes_join_and_answer_as_one_and_nodes_without_the_key_are_refused() {
    let key = new_key();
    let homes = [Home::new("key-a"), Home::new("key-b"), Home::new("key-c"), Home::new("key-d")];
    let a = node("a", &homes[0], "1G", &[], Some(&key));
    let alone = answer(&a, &chat_body(16, false));
    assert!(!a.logged("the cluster is open"), "{:?}", a.log);
    let b = node("b", &homes[1], "2G", std::slice::from_ref(&a.peer), Some(&key));
    a.wait_for_nodes(2);
    b.wait_for_nodes(2);
    assert_eq!(answer(&a, &chat_body(16, false)), alone);
    assert_eq!(stages(&a.get("/v1/topology")).len(), 2);

    // Another key, no key, and a raw TCP client that speaks HTTP/2's preface and a gRPC-looking frame.
    let c = node("c", &homes[2], "4G", std::slice::from_ref(&a.peer), Some(&new_key()));
    let d = node("d", &homes[3], "4G", std::slice::from_ref(&a.peer), None);
    assert!(d.logged("the cluster is open"), "{:?}", d.log);
    let mut raw = TcpStream::connect(&a.peer).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00");
    let mut got = Vec::new();
    let _ = raw.read_to_end(&mut got);
    assert!(got.is_empty() || got[0] == 0x15, "a raw client got bytes that are not a TLS alert: {got:?}");

    wait_logged(&a, "refused a peer connection from 127.0.0.1");
    // c and d retry every second: a logs the refusal once for the address, not once per try (3 s of retries).
    let refusals = || a.log.lock().unwrap().iter().filter(|l| l.contains("refused a peer connection")).count();
    let seen = Instant::now();
    while seen.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(refusals(), 1, "{:?}", a.log);
    assert_eq!(node_ids(&a), ["a", "b"]);
    assert_eq!(node_ids(&b), ["a", "b"]);
    assert_eq!(node_ids(&c), ["c"]);
    assert_eq!(node_ids(&d), ["d"]);
    // The keyed pair still answers as one node does, whoever else knocks.
    assert_eq!(answer(&b, &chat_body(16, false)), alone);
}

/// A TCP relay from a port of its own to `target`, keeping every byte it passes in both directions.
struct Relay {
    address: String,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Relay {
    fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        std::thread::spawn(move || {
            for inbound in listener.incoming().map_while(Result::ok) {
                let Ok(outbound) = TcpStream::connect(&target) else { continue };
                for (mut from, mut to) in
                    [(inbound.try_clone().unwrap(), outbound.try_clone().unwrap()), (outbound, inbound)]
                {
                    let recorded = recorded.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 << 10];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            recorded.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { address, seen }
    }

    fn contains(&self, needle: &[u8]) -> bool {
        self.seen.lock().unwrap().windows(needle.len()).any(|w| w == needle)
    }
}

/// Protobuf's varint encoding of `v`.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// What a relay between the two nodes of a ring sees of one request: node b reaches node a (stage 0) only through
/// the relay, so the prompt's tokens and every generated token but the last cross it on their way to stage 0.
/// Returns (model name seen, prompt tokens seen, generated tokens seen, of how many).
fn through_relay(name: &str, key: Option<&str>) -> (bool, bool, usize, usize) {
    let homes = [Home::new(&format!("{name}-a")), Home::new(&format!("{name}-b"))];
    let a = node("a", &homes[0], "2G", &[], key);
    let relay = Relay::start(a.peer.clone());
    let b = node("b", &homes[1], "1G", std::slice::from_ref(&relay.address), key);
    a.wait_for_nodes(2);
    b.wait_for_nodes(2);
    let prompt = "The secret password of the relay test is swordfish, and the capital of France is";
    let body = json!({"model": model_name(), "prompt": prompt, "temperature": 0, "max_tokens": 12});
    let (status, r) = b.post("/v1/completions", &body);
    assert_eq!(status, 200, "{r}");
    let t = b.get("/v1/topology");
    assert_eq!(stages(&t)[0].0, "a", "{t}");
    let text = r["choices"][0]["text"].as_str().unwrap().to_string();

    let gguf = exo_engine::Gguf::open(common::model_path()).unwrap();
    let tokenizer = exo_engine::tokenizer::Tokenizer::from_gguf(&gguf).unwrap();
    let mut packed = Vec::new();
    for id in tokenizer.encode(prompt, true, false).unwrap() {
        varint(id as u64, &mut packed);
    }
    // Each generated token goes to stage 0 alone: tokens (field 4, packed), then seq = 1 and sample = true.
    let generated = tokenizer.encode(&text, false, false).unwrap();
    let forwarded = &generated[..generated.len().saturating_sub(1)];
    let seen = forwarded
        .iter()
        .filter(|&&id| {
            let mut token = Vec::new();
            varint(id as u64, &mut token);
            let mut message = vec![0x22, token.len() as u8];
            message.extend_from_slice(&token);
            message.extend_from_slice(&[0x30, 0x01, 0x38, 0x01]);
            relay.contains(&message)
        })
        .count();
    if key.is_some() {
        // TLS from the first byte: a handshake record.
        assert_eq!(relay.seen.lock().unwrap().first(), Some(&0x16));
    }
    (relay.contains(model_name().as_bytes()), relay.contains(&packed), seen, forwarded.len())
}

#[test]
fn a_relay_between_keyed_nodes_sees_no_prompt_answer_or_model_and_between_open_nodes_it_does() {
    let (model, prompt, answer, of) = through_relay("relay-open", None);
    assert!(model && prompt, "an open pair's relay saw model {model}, prompt {prompt}");
    assert!(of > 0 && answer == of, "an open pair's relay saw {answer} of {of} generated tokens");

    let key = new_key();
    let (model, prompt, answer, of) = through_relay("relay-keyed", Some(&key));
    assert!(
        !model && !prompt && answer == 0,
        "a keyed pair's relay saw model {model}, prompt {prompt}, {answer} of {of} tokens"
    );
}

#[test]
fn cluster_keys_are_made_kept_and_checked() {
    let home = Home::new("key-cli");
    let exo = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_exo"));
        c.env("EXO_HOME", &home.0).env_remove("EXO_CLUSTER_KEY");
        c
    };
    let out = exo().args(["cluster-key", "--write"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let kept = std::fs::read_to_string(home.0.join("cluster_key")).unwrap();
    assert_eq!(kept.trim(), printed.trim());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(home.0.join("cluster_key")).unwrap().permissions().mode() & 0o777, 0o600);
    let again = exo().args(["cluster-key", "--write"]).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a cluster key"), "{again:?}");
    // Two keys in a row differ.
    assert_ne!(new_key(), new_key());

    // A node finds the kept key (it does not say its cluster is open); a malformed key stops a node at once.
    let keyed = Node::start_with(&home, &[]);
    assert!(!keyed.logged("the cluster is open"), "{:?}", keyed.log);
    drop(keyed);
    let out = exo().args(["--cluster-key", "not-a-key", "--discovery", "none", "--api-port", "0"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: --cluster-key: a cluster key is 64 hex digits"), "{stderr}");
    assert!(!stderr.contains("not-a-key"), "the error echoes the key: {stderr}");
}
