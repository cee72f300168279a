//! `exo run` as a user runs it: a real process, its stdout, stderr and exit status. Bad input must give one clear
//! line on stderr and a non-zero exit, never a panic or a hang.

// The engine's test helpers: where the test model and llama.cpp's reference data are.
#[path = "../../exo-engine/tests/common/mod.rs"]
mod common;

use common::model_path;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A file for one test (most are damaged copies of the model), removed when the test ends, pass or fail.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("exo-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir.join(name))
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `exo` with `args` (and `stdin`), killing it if it takes longer than a minute.
fn exo(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_exo"))
        .args(args)
        .env("RUST_LOG", "off")
        // A node measuring its speed would print a line and keep a file in EXO_HOME.
        .env("EXO_CALIBRATE", "false")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exo starts");
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    drop(pipe);
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("exo {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Asserts a failed run with exactly one line on stderr that contains `expected`.
fn assert_clear_error(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit status {:?}, stderr {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line expected on stderr, got: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(expected), "expected {expected:?} in: {stderr}");
}

fn run_model(model: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["run", model.to_str().unwrap(), "--prompt", "Hello", "-n", "4"];
    args.extend_from_slice(extra);
    exo(&args, None)
}

/// Replaces the value bytes right after metadata key `key` (and its 4-byte type) in a copy of the model.
fn patch_metadata(bytes: &mut [u8], key: &str, value: &[u8]) {
    let at = bytes.windows(key.len()).position(|w| w == key.as_bytes()).expect("key in file") + key.len() + 4;
    bytes[at..at + value.len()].copy_from_slice(value);
}

#[test]
fn chat_run_streams_text_and_reports_speed() {
    let model = model_path();
    let out = exo(
        &[
            "run",
            model.to_str().unwrap(),
            "--prompt",
            "What is the capital of France?",
            "--temperature",
            "0",
            "-n",
            "12",
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
    assert!(stderr.contains("prompt:") && stderr.contains("tokens/s"), "{stderr}");
}

#[test]
fn prompt_from_stdin_and_raw_mode() {
    let model = model_path();
    let out = exo(
        &["run", model.to_str().unwrap(), "--raw", "--temperature", "0", "-n", "5", "--ignore-eos"],
        Some("The capital of France is"),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.len() > 10 && golden_continuation().starts_with(stdout.trim_end()), "{stdout}");
}

/// llama.cpp's greedy continuation of "The capital of France is" (reference data of the engine's golden tests).
fn golden_continuation() -> String {
    let golden = common::golden();
    let case = &golden["greedy"][0];
    assert_eq!(case["prompt"], "The capital of France is");
    case["text"].as_str().unwrap().to_string()
}

#[test]
fn stop_string_split_across_tokens_is_not_printed() {
    let model = model_path();
    // "is.\n\nTh" spans the tokens " Paris", ".", the newlines and "The": llama.cpp's first five tokens, before its
    // first near tie (after which greedy text may take either branch).
    let stop = "is.\n\nTh";
    let text = golden_continuation();
    let expected = &text[..text.find(stop).expect("the reference text contains the stop string")];
    let out = exo(
        &["run", model.to_str().unwrap(), "--raw", "--temperature", "0", "-n", "40", "--ignore-eos", "--stop", stop],
        Some("The capital of France is"),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).strip_suffix('\n').unwrap(), expected);
    assert!(String::from_utf8_lossy(&out.stderr).contains("finish: stop"));
}

#[test]
fn same_seed_same_text() {
    let model = model_path();
    let args = [
        "run",
        model.to_str().unwrap(),
        "--prompt",
        "Tell me a story",
        "--temperature",
        "1.0",
        "--seed",
        "42",
        "-n",
        "24",
    ];
    let a = exo(&args, None);
    let b = exo(&args, None);
    assert!(a.status.success());
    assert!(!String::from_utf8_lossy(&a.stdout).trim().is_empty());
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn missing_file() {
    assert_clear_error(&run_model(Path::new("/nonexistent/model.gguf"), &[]), "cannot open model file");
}

#[test]
fn not_a_gguf_file() {
    let path = Scratch::new("text.gguf");
    std::fs::write(&path, "this is a text file, not a model\n").unwrap();
    assert_clear_error(&run_model(&path, &[]), "is not a GGUF file");
}

#[test]
fn truncated_file() {
    let path = Scratch::new("truncated.gguf");
    let bytes = std::fs::read(model_path()).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_clear_error(&run_model(&path, &[]), "is truncated");
}

#[test]
fn garbage_metadata() {
    let path = Scratch::new("garbage.gguf");
    let mut bytes = std::fs::read(model_path()).unwrap();
    // The first metadata key's length (right after magic, version and the two counts) becomes absurd.
    bytes[24..32].copy_from_slice(&0x7fff_ffff_ffff_0000u64.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    assert_clear_error(&run_model(&path, &[]), "more than the file can hold");
}

#[test]
fn unsupported_architecture() {
    let path = Scratch::new("mamba.gguf");
    let mut bytes = std::fs::read(model_path()).unwrap();
    // general.architecture is a string: after the type come its 8-byte length and then "llama".
    let key = "general.architecture";
    let at = bytes.windows(key.len()).position(|w| w == key.as_bytes()).unwrap() + key.len() + 4 + 8;
    bytes[at..at + 5].copy_from_slice(b"mamba");
    std::fs::write(&path, &bytes).unwrap();
    assert_clear_error(&run_model(&path, &[]), "unsupported model architecture 'mamba'");
}

#[test]
fn unsupported_quantization_type() {
    let path = Scratch::new("iq.gguf");
    let mut bytes = std::fs::read(model_path()).unwrap();
    // The tensor table entry of token_embd.weight: name, n_dims (u32), 2 dims (u64), type (u32), offset (u64).
    let name = b"token_embd.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 4 + 16;
    bytes[at..at + 4].copy_from_slice(&16u32.to_le_bytes()); // IQ2_XXS
    std::fs::write(&path, &bytes).unwrap();
    assert_clear_error(&run_model(&path, &[]), "IQ2_XXS");
}

#[test]
fn prompt_longer_than_context() {
    let path = Scratch::new("short-context.gguf");
    let mut bytes = std::fs::read(model_path()).unwrap();
    patch_metadata(&mut bytes, "llama.context_length", &16u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let long_prompt = "one two three four five six seven eight nine ten ".repeat(4);
    let out = exo(&["run", path.to_str().unwrap(), "--raw", "--prompt", &long_prompt], None);
    assert_clear_error(&out, "context holds 16");
}

#[test]
fn invalid_sampling_values() {
    let model = model_path();
    assert_clear_error(&run_model(&model, &["--temperature", "-1"]), "temperature");
    assert_clear_error(&run_model(&model, &["--top-p", "-0.5"]), "top_p");
    assert_clear_error(&run_model(&model, &["--top-p", "1.5"]), "top_p");
    assert_clear_error(&run_model(&model, &["--top-k", "-3"]), "--top-k");
    assert_clear_error(&run_model(&model, &["--threads", "0"]), "--threads");
}

#[test]
fn kv_type_and_backend_values_are_checked() {
    let model = model_path();
    let out = run_model(&model, &["--kv-type", "q8_0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected f16 or f32"));
    let out = exo(&["bench", model.to_str().unwrap(), "--backend", "gpu"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected auto, cpu or candle"));
    let out = exo(&["bench", model.to_str().unwrap(), "--devices", "gpu"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown device 'gpu' (expected auto, cpu, metal"));
    assert_clear_error(&run_model(&model, &["--devices", "cuda:0,cuda:7"]), "--devices cuda:0,cuda:7: no ");
}

#[test]
fn a_q5_1_file_runs_on_the_cpu_kernels_and_on_candle_when_asked() {
    let path = Scratch::new("q5_1-embeddings.gguf");
    let mut bytes = std::fs::read(model_path()).unwrap();
    // token_embd.weight becomes Q5_1 (smaller than its Q8_0, so the file stays valid; the values are noise).
    let name = b"token_embd.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 4 + 16;
    bytes[at..at + 4].copy_from_slice(&7u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let bench = |extra: &[&str]| {
        let mut args = vec!["bench", path.to_str().unwrap(), "-p", "4", "-n", "2", "-r", "1", "--json"];
        args.extend_from_slice(extra);
        let out = exo(&args, None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    // Every weight type the engine reads has CPU kernels: the default backend is the engine's own.
    assert_eq!(bench(&[])["backend"], "cpu");
    assert_eq!(bench(&["--backend", "candle"])["backend"], "candle");
}

#[test]
fn bench_reports_speed_and_memory() {
    let model = model_path();
    let out = exo(&["bench", model.to_str().unwrap(), "-p", "8", "-n", "4", "-r", "1", "--json", "-t", "2"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["backend"].as_str(), r["kv_type"].as_str(), r["threads"].as_u64(), r["device"].as_str()),
        (Some("cpu"), Some("f16"), Some(2), Some("cpu"))
    );
    assert!(r["pp_tps"].as_f64().unwrap() > 0.0 && r["tg_tps"].as_f64().unwrap() > 0.0);
    // The whole file's tensor data, and a cache of max(8, 4) + 1 positions x 30 layers x 3 KV heads x 64 x 2
    // (keys and values) in f16.
    assert_eq!(r["tensor_bytes"], 96_576_768);
    assert_eq!(r["kv_bytes"], 9 * 30 * 3 * 64 * 2 * 2);
    let rss = r["peak_rss_bytes"].as_u64().unwrap();
    assert!(rss > 96_576_768 && (rss as f64) < 1.1 * (96_576_768.0 + 207_360.0) + 100.0 * 1048576.0, "peak RSS {rss}");
}

#[test]
fn node_settings_are_checked_before_it_listens() {
    let model = model_path();
    let dir = model.parent().unwrap().to_str().unwrap();
    let node = |extra: &[&str]| {
        let mut args = vec!["--api-host", "127.0.0.1", "--api-port", "0", "--models-dir", dir];
        args.extend(["--listen-port", "0", "--discovery", "none"]);
        if !extra.contains(&"--node-id") {
            args.extend(["--node-id", "t1"]);
        }
        args.extend_from_slice(extra);
        exo(&args, None)
    };
    assert_clear_error(&node(&["--node-id", "no spaces"]), "not a node ID");
    // A device this machine does not have: one line naming it, before the node listens.
    let missing = node(&["--devices", "cuda:7"]);
    assert_clear_error(&missing, "--devices cuda:7: no ");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("no CUDA device found (") || stderr.contains("no device cuda:7: this machine has"));
    assert_clear_error(&exo(&["--api-port", "5000", "--listen-port", "5000"], None), "must differ");
    assert_clear_error(&node(&["--model", "no-such-model"]), "--model: the model 'no-such-model' does not exist");
    // A model that does not fit under the limit is refused at start, with what it needs and what there is.
    let out = node(&["--model", model.to_str().unwrap(), "--memory-limit", "64M"]);
    assert_clear_error(&out, "does not fit in memory");
    assert!(String::from_utf8_lossy(&out.stderr).contains("the cluster (1 node) has 64 MiB available"));
    for bad in ["12X", "-1G", "lots"] {
        let out = node(&[&format!("--memory-limit={bad}")]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("'{bad}'")), "{out:?}");
    }
}

#[test]
fn score_writes_teacher_forced_log_probabilities_that_two_backends_agree_on() {
    let model = model_path();
    let text = "The quick brown fox jumps over the lazy dog.";
    let score = |backend: &str| {
        let out_file = Scratch::new(&format!("score-{backend}.f32"));
        let args =
            ["score", model.to_str().unwrap(), "-p", text, "-o", out_file.to_str().unwrap(), "--backend", backend];
        let out = exo(&args, None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let bytes = std::fs::read(&out_file).unwrap();
        let values: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        (report, values)
    };
    let (ours, a) = score("cpu");
    let (candle, b) = score("candle");
    let (positions, vocab) = (ours["positions"].as_u64().unwrap() as usize, ours["vocab"].as_u64().unwrap() as usize);
    assert_eq!((ours["backend"].as_str(), candle["backend"].as_str()), (Some("cpu"), Some("candle")));
    assert!(positions >= 8 && vocab == 49152, "{ours}");
    assert_eq!((a.len(), b.len()), (positions * vocab, positions * vocab));
    // Each row is a distribution: its probabilities sum to 1.
    for row in a.chunks(vocab) {
        let total: f64 = row.iter().map(|&l| (l as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-3, "row sums to {total}");
    }
    // The two backends compute the same model: the log-probability of each next token agrees closely.
    let tokens: Vec<usize> = ours["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as usize).collect();
    let mean: f64 =
        (0..positions).map(|p| (a[p * vocab + tokens[p + 1]] - b[p * vocab + tokens[p + 1]]).abs() as f64).sum::<f64>()
            / positions as f64;
    assert!(mean < 0.2, "mean |Δ| of next-token log-probabilities {mean}");
    let one = Scratch::new("score-one.f32");
    assert_clear_error(
        &exo(&["score", model.to_str().unwrap(), "-p", "", "-o", one.to_str().unwrap()], None),
        "scoring needs at least 2",
    );
}
