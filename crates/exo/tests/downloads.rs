//! Models by reference, fetched from a stand-in Hugging Face hub that the test starts: two nodes that each fetch
//! only their half of the layers from their own hub, a node with nothing cached and no hub that gets its layers
//! from a peer, and `exo download`, `exo models` and `exo run` with `hf:` references and their errors.

mod harness;
#[path = "../../exo-models/tests/support/stand_in_hub.rs"]
mod stand_in_hub;

use std::process::Command;
use std::sync::{Arc, OnceLock};

use harness::*;
use serde_json::Value;
use stand_in_hub::{sha256_hex, StandInHub, COMMIT};

const REPO: &str = "exo-test/SmolLM2-135M-Instruct-GGUF";
const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn reference() -> String {
    format!("hf:{REPO}/{FILE}")
}

fn model_bytes() -> Arc<Vec<u8>> {
    static BYTES: OnceLock<Arc<Vec<u8>>> = OnceLock::new();
    BYTES.get_or_init(|| Arc::new(std::fs::read(common::model_path()).unwrap())).clone()
}

/// The greedy answer of one node with the whole file from its models folder.
fn whole_file_answer() -> String {
    static ANSWER: OnceLock<String> = OnceLock::new();
    ANSWER
        .get_or_init(|| {
            let home = Home::new("dl-whole");
            let node = Node::start_with(&home, &["--threads", "1"]);
            answer(&node, &chat_body(16, false))
        })
        .clone()
}

fn chat_with(model: &str) -> Value {
    let mut body = chat_body(16, false);
    body["model"] = model.into();
    body
}

fn hub_env(hub: &StandInHub) -> Vec<(&'static str, String)> {
    vec![("HF_ENDPOINT", hub.endpoint())]
}

#[test]
fn two_nodes_each_fetch_only_their_half_from_their_own_hub() {
    let expected = whole_file_answer();
    let size = model_bytes().len() as u64;
    let (hub_a, hub_b) = (StandInHub::start(), StandInHub::start());
    hub_a.add(REPO, FILE, model_bytes());
    hub_b.add(REPO, FILE, model_bytes());
    let (home_a, home_b) = (Home::new("dl-half-a"), Home::new("dl-half-b"));
    let args = ["--threads", "1", "--memory-limit", "2G"];
    let a = Node::start_env(&home_a, &[&args[..], &["--node-id", "a"]].concat(), &hub_env(&hub_a));
    let peer = [&args[..], &["--node-id", "b", "--peers", &a.peer]].concat();
    let b = Node::start_env(&home_b, &peer, &hub_env(&hub_b));
    a.wait_for_nodes(2);
    b.wait_for_nodes(2);

    assert_eq!(answer(&a, &chat_with(&reference())), expected);
    let t = a.get("/v1/topology");
    assert_eq!(stages(&t), [("a".to_string(), 0, 14), ("b".to_string(), 15, 29)], "{t}");
    let (sent_a, sent_b) = (hub_a.bytes_sent(), hub_b.bytes_sent());
    eprintln!(
        "file {size} bytes; hub of node a sent {sent_a} ({:.1}%), hub of node b sent {sent_b} ({:.1}%)",
        100.0 * sent_a as f64 / size as f64,
        100.0 * sent_b as f64 / size as f64
    );
    for (node, sent) in [("a", sent_a), ("b", sent_b)] {
        assert!(sent > 0 && sent < size * 3 / 4, "node {node}'s hub sent {sent} of {size} bytes");
    }
    // Each node says what it fetched, and /v1/downloads counts the same bytes its hub sent.
    for (node, sent) in [(&a, sent_a), (&b, sent_b)] {
        let downloads = node.get("/v1/downloads");
        let list = downloads["data"].as_array().unwrap();
        assert!(list.iter().all(|d| d["state"] == "done"), "{downloads}");
        let from_hub: u64 = list.iter().map(|d| d["from_hub_bytes"].as_u64().unwrap()).sum();
        assert_eq!(from_hub, sent, "{downloads}");
        assert!(node.logged(&format!("node {}: fetched", node.id)), "{:?}", node.log.lock().unwrap());
    }
    // The model is listed with part of it here; asking again fetches nothing.
    let listed = a.get(&format!("/v1/models/{}", reference().replace('/', "%2F")));
    assert_eq!(listed["id"], reference().as_str());
    assert_eq!(answer(&b, &chat_with(&reference())), expected);
    assert_eq!((hub_a.bytes_sent(), hub_b.bytes_sent()), (sent_a, sent_b));
}

/// Puts the model in `home`'s Hugging Face cache the way huggingface_hub lays it out (the blob a link to the test
/// model, so nothing is copied).
fn seed_hf_cache(home: &Home) {
    let repo = home.0.join("hf/hub").join(format!("models--{}", REPO.replace('/', "--")));
    let sha = sha256_hex(&model_bytes());
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots").join(COMMIT)).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::os::unix::fs::symlink(common::model_path(), repo.join("blobs").join(&sha)).unwrap();
    std::os::unix::fs::symlink(format!("../../blobs/{sha}"), repo.join("snapshots").join(COMMIT).join(FILE)).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
}

#[test]
fn an_offline_node_with_nothing_cached_gets_its_layers_from_a_peer() {
    let expected = whole_file_answer();
    let (home_a, home_b) = (Home::new("dl-peer-a"), Home::new("dl-peer-b"));
    std::fs::create_dir_all(&home_a.0).unwrap();
    seed_hf_cache(&home_a);
    let offline = [("HF_HUB_OFFLINE", "1".to_string())];
    let args = ["--threads", "1", "--memory-limit", "2G"];
    let a = Node::start_env(&home_a, &[&args[..], &["--node-id", "a"]].concat(), &offline);
    let peer = [&args[..], &["--node-id", "b", "--peers", &a.peer]].concat();
    let b = Node::start_env(&home_b, &peer, &offline);
    a.wait_for_nodes(2);
    b.wait_for_nodes(2);

    // Asked of b, which has nothing: the header and then its layers come from a.
    assert_eq!(answer(&b, &chat_with(&reference())), expected);
    let downloads = b.get("/v1/downloads");
    let list = downloads["data"].as_array().unwrap();
    let from = |k: &str| list.iter().map(|d| d[k].as_u64().unwrap()).sum::<u64>();
    eprintln!("node b fetched {} bytes from its peer, {} from a hub", from("from_peers_bytes"), from("from_hub_bytes"));
    assert_eq!(from("from_hub_bytes"), 0, "{downloads}");
    assert!(from("from_peers_bytes") > 10 << 20, "{downloads}");
    // What node a holds came from its cache: it downloaded nothing.
    assert_eq!(a.get("/v1/downloads")["data"].as_array().unwrap().len(), 0);

    // Offline with no peer that has it: a clear error, and the node goes on.
    let home_c = Home::new("dl-peer-c");
    let c = Node::start_env(&home_c, &["--threads", "1", "--memory-limit", "1G"], &offline);
    let (status, r) = c.post("/v1/chat/completions", &chat_with(&reference()));
    assert_eq!(status, 503, "{r}");
    assert_eq!(r["error"]["code"], "model_unavailable", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("offline"), "{r}");
    // A catalog model larger than the cluster by its listed size is refused before anything is asked of anyone.
    let (status, r) = c.post("/v1/chat/completions", &chat_with("llama-3.1-8b"));
    assert_eq!((status, r["error"]["code"].as_str()), (503, Some("insufficient_memory")), "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("does not fit"), "{r}");
    let (status, r) = c.post("/v1/chat/completions", &chat_with("no-such-model"));
    assert_eq!((status, r["error"]["code"].as_str()), (404, Some("model_not_found")), "{r}");
}

fn exo(home: &Home, hub: &StandInHub, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_exo"))
        .args(args)
        .env("EXO_HOME", &home.0)
        .env("HF_HOME", home.0.join("hf"))
        .env("HF_ENDPOINT", hub.endpoint())
        .env("EXO_MODELS_DIR", home.0.join("models"))
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN")
        .output()
        .expect("exo runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

#[test]
fn exo_download_models_and_run_take_references() {
    let hub = StandInHub::start();
    hub.add(REPO, FILE, model_bytes());
    let size = model_bytes().len() as u64;
    let home = Home::new("dl-cli");

    // Only some layers.
    let out = exo(&home, &hub, &["download", &reference(), "--layers", "0-3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let partial = text(&out.stdout).trim().to_string();
    assert!(partial.contains("downloads") && partial.ends_with(FILE), "{partial}");
    let first = hub.bytes_sent();
    assert!(first < size / 2, "{first} of {size}");
    let listed = text(&exo(&home, &hub, &["models", "--cached"]).stdout);
    assert!(listed.contains(&reference()) || listed.contains(REPO), "{listed}");

    // The rest, then the whole file in the cache; its sha256 checked.
    let out = exo(&home, &hub, &["download", &reference()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let whole = text(&out.stdout).trim().to_string();
    assert!(whole.contains("/hf/hub/models--exo-test--SmolLM2-135M-Instruct-GGUF/snapshots/"), "{whole}");
    assert_eq!(hub.bytes_sent(), size, "every byte fetched once");
    assert_eq!(std::fs::read(&whole).unwrap(), *model_bytes());

    // `exo run` with the reference: from the cache, nothing fetched.
    let run = |model: &str| {
        let out = exo(&home, &hub, &["run", model, "-p", QUESTION, "--temperature", "0", "-n", "8", "-t", "1"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let by_path = run(common::model_path().to_str().unwrap());
    assert!(!by_path.is_empty());
    assert_eq!(run(&reference()), by_path);
    assert_eq!(hub.bytes_sent(), size);

    // The catalog is listed.
    let listed = text(&exo(&home, &hub, &["models"]).stdout);
    for name in ["llama-3.1-70b", "qwen-2.5-72b", "deepseek-r1-distill-llama-70b", "smollm2-135m"] {
        assert!(listed.contains(name), "{listed}");
    }

    // A reader that has gone (`exo models | head -1` once head exits) ends the listing quietly.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_exo"))
        .arg("models")
        .env("EXO_HOME", &home.0)
        .env("HF_HOME", home.0.join("hf"))
        .stdout(writer)
        .output()
        .unwrap();
    assert!(out.status.success() && !text(&out.stderr).contains("panicked"), "{}", text(&out.stderr));

    // Errors: one line, non-zero exit.
    for (args, says) in [
        (vec!["download", "hf:exo-test/none/m.gguf"], "the repository exo-test/none was not found"),
        (vec!["download", "hf:exo-test/SmolLM2-135M-Instruct-GGUF/other.gguf"], "the file other.gguf"),
        (vec!["download", "no-such-model"], "unknown model 'no-such-model'"),
        (vec!["download", "llama-3.1-8b:q1"], "has no q1 file"),
        (vec!["download", &reference(), "--layers", "7-2"], "--layers"),
        (vec!["download", &reference(), "--layers", "0-99"], "--layers"),
        (vec!["download", "hf:exo-test/none/m.gguf", "--offline"], "offline"),
    ] {
        let out = exo(&home, &hub, &args);
        let err = text(&out.stderr);
        assert!(!out.status.success() && err.contains("error:") && err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn ollamas_pull_downloads_the_whole_model_with_its_progress() {
    let size = model_bytes().len() as u64;
    let hub = StandInHub::start();
    hub.add(REPO, FILE, model_bytes());
    let home = Home::new("dl-pull");
    let node = Node::start_env(&home, &["--threads", "1"], &hub_env(&hub));
    let (status, lines) = node.request("POST", "/api/pull", &serde_json::json!({"model": reference()}).to_string());
    assert_eq!(status, 200, "{lines}");
    let objects: Vec<Value> =
        lines.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert_eq!(objects.first().map(|o| &o["status"]), Some(&Value::from("pulling manifest")), "{lines}");
    assert_eq!(objects.last().map(|o| &o["status"]), Some(&Value::from("success")), "{lines}");
    // Per digest (each fetch: the header, then the whole file), completed only grows, up to its total.
    let mut by_digest: std::collections::BTreeMap<String, Vec<(u64, u64)>> = Default::default();
    for o in &objects {
        if let (Some(d), Some(c), Some(t)) = (o["digest"].as_str(), o["completed"].as_u64(), o["total"].as_u64()) {
            by_digest.entry(d.to_string()).or_default().push((c, t));
        }
    }
    assert!(!by_digest.is_empty(), "{lines}");
    for (digest, progress) in &by_digest {
        assert!(progress.windows(2).all(|w| w[0].0 <= w[1].0), "{digest} went back: {progress:?}");
        assert!(progress.last().is_some_and(|(c, t)| c == t), "{digest} unfinished: {progress:?}");
    }
    // Each fetch counts what was missing when it began: together, the whole file.
    let fetched: u64 = by_digest.values().filter_map(|p| p.last()).map(|(_, t)| t).sum();
    assert_eq!(fetched, size, "{lines}");
    assert!(objects.iter().any(|o| o["status"].as_str().is_some_and(|s| s.contains("whole file"))), "{lines}");
    assert!(hub.bytes_sent() >= size);

    // Whole now: a second pull is a success at once, fetching nothing, and the model answers.
    let sent = hub.bytes_sent();
    let (status, r) = node.post("/api/pull", &serde_json::json!({"model": reference(), "stream": false}));
    assert_eq!((status, r["status"].as_str()), (200, Some("success")), "{r}");
    assert_eq!(hub.bytes_sent(), sent);
    assert_eq!(answer(&node, &chat_with(&reference())), whole_file_answer());

    // A file the hub does not have (503 model_unavailable, as chat completions answer for it), and no model at
    // all: Ollama's error shape.
    let (status, r) =
        node.post("/api/pull", &serde_json::json!({"model": format!("hf:{REPO}/missing.gguf"), "stream": false}));
    assert_eq!(status, 503, "{r}");
    assert!(r["error"].as_str().is_some_and(|e| e.contains("missing.gguf")), "{r}");
    let (status, lines) =
        node.request("POST", "/api/pull", &serde_json::json!({"model": format!("hf:{REPO}/missing.gguf")}).to_string());
    assert_eq!(status, 200, "{lines}");
    let last: Value = serde_json::from_str(lines.lines().last().unwrap_or_default()).unwrap_or_default();
    assert!(last["error"].as_str().is_some_and(|e| e.contains("missing.gguf")), "{lines}");
    let (status, r) = node.post("/api/pull", &serde_json::json!({}));
    assert_eq!(status, 400, "{r}");
    assert!(r["error"].is_string(), "{r}");
}
