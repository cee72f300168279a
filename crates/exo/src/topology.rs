//! `exo topology`: asks a node's API for `/v1/topology` and prints the cluster as a table: every node, its
//! memory, what it computes on (GPUs, or CPU threads), the layers it holds and the link to it, then the current plan
//! per model; with `--explain`, why each stage of a plan holds its layers (memory bound, speed, predicted
//! milliseconds per token).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;

#[derive(Debug, Args)]
pub struct TopologyArgs {
    /// The node's API, host:port.
    #[arg(long, env = "EXO_API", default_value = "127.0.0.1:52415")]
    pub api: String,
    /// The node's API key, if it has one (`--api-key` on the node).
    #[arg(long, env = "EXO_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Also show why each stage of a plan holds its layers: what its memory holds, its speed, and the plan's
    /// predicted milliseconds per token.
    #[arg(long)]
    pub explain: bool,
}

pub fn topology(args: TopologyArgs) -> Result<()> {
    let doc = fetch(&args.api, args.api_key.as_deref())?;
    print!("{}", render(&doc)?);
    if args.explain {
        print!("{}", explain(&doc));
    }
    Ok(())
}

/// GET /v1/topology over HTTP/1.1.
fn fetch(api: &str, key: Option<&str>) -> Result<Value> {
    let addr = api
        .to_socket_addrs()
        .with_context(|| format!("--api: '{api}' is not host:port"))?
        .next()
        .with_context(|| format!("--api: '{api}' resolves to no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot reach a node at {api}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    write!(s, "GET /v1/topology HTTP/1.1\r\nHost: {api}\r\n{auth}Connection: close\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response).with_context(|| format!("reading the answer of {api}"))?;
    let (head, body) = response.split_once("\r\n\r\n").context("the node's answer is not HTTP")?;
    if head.starts_with("HTTP/1.1 401") {
        bail!(
            "{api} {} (give the node's key with --api-key or EXO_API_KEY)",
            if key.is_some() { "refused the API key" } else { "needs an API key" }
        );
    }
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{api} answered {}", head.lines().next().unwrap_or(""));
    }
    serde_json::from_str(body).with_context(|| format!("{api} did not answer with a topology"))
}

fn render(doc: &Value) -> Result<String> {
    let nodes = doc["nodes"].as_array().context("the topology lists no nodes")?;
    let gib = |v: &Value| v.as_u64().map_or("-".to_string(), |b| format!("{:.1}", b as f64 / (1u64 << 30) as f64));
    let mut rows =
        vec![["node", "address", "memory GiB (usable/total)", "computes on", "layers", "link"].map(String::from)];
    for n in nodes {
        let me = n["id"] == doc["self"];
        let layers = match &n["model"] {
            Value::Null => "-".to_string(),
            m => format!(
                "{}-{} of {} ({})",
                m["layers"]["start"],
                m["layers"]["end"],
                m["n_layers"],
                m["id"].as_str().unwrap_or("?")
            ),
        };
        let throughput = match n["link"]["bytes_per_s"].as_u64() {
            Some(b) => format!(", {:.2} GB/s", b as f64 / 1e9),
            None => String::new(),
        };
        let link = match n["link"]["rtt_ms"].as_f64() {
            Some(ms) => format!("{ms:.2} ms{throughput}"),
            None if me => "this node".to_string(),
            None => "-".to_string(),
        };
        let address = match n["link"]["address"].as_str() {
            Some(a) => a.to_string(),
            None => format!("{}:{}", n["addresses"][0].as_str().unwrap_or("?"), n["listen_port"]),
        };
        rows.push([
            n["id"].as_str().unwrap_or("?").to_string(),
            address,
            format!("{}/{}", gib(&n["memory"]["usable_bytes"]), gib(&n["memory"]["total_bytes"])),
            computes_on(n),
            layers,
            link,
        ]);
    }
    let mut out = table(&rows);
    for p in doc["plans"].as_array().into_iter().flatten() {
        let stages: Vec<String> = p["stages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let stage = format!("{} {}-{}", s["node_id"].as_str().unwrap_or("?"), s["start"], s["end"]);
                let devices: Vec<String> = s["devices"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| format!("{} {}-{}", d["device"].as_str().unwrap_or("?"), d["start"], d["end"]))
                    .collect();
                match devices.as_slice() {
                    [] => stage,
                    [only] if only.starts_with("cpu ") => stage,
                    _ => format!("{stage} ({})", devices.join(", ")),
                }
            })
            .collect();
        out.push_str(&format!(
            "plan {} for {}: {}\n",
            p["id"].as_str().unwrap_or("?"),
            p["model"].as_str().unwrap_or("?"),
            stages.join(", ")
        ));
    }
    Ok(out)
}

/// Per plan: a row per stage (layers, what its memory holds, the memory split's share, speed, predicted times),
/// then the plan's predicted time per token.
fn explain(doc: &Value) -> String {
    let mut out = String::new();
    for p in doc["plans"].as_array().into_iter().flatten() {
        let x = &p["placement"];
        let ms = |v: &Value| v.as_f64().map_or("-".to_string(), |v| format!("{v:.3}"));
        let gbs = |v: &Value| match v.as_u64() {
            Some(0) | None => "not measured".to_string(),
            Some(b) => format!("{:.1} GB/s", b as f64 / 1e9),
        };
        out.push_str(&format!(
            "\nplan {} for {}: split by {}, {} MiB per layer\n",
            p["id"].as_str().unwrap_or("?"),
            p["model"].as_str().unwrap_or("?"),
            x["by"].as_str().unwrap_or("?"),
            x["layer_bytes"].as_u64().map_or("-".to_string(), |b| format!("{:.1}", b as f64 / (1u64 << 20) as f64)),
        ));
        let mut rows = vec![[
            "stage",
            "node",
            "device",
            "layers",
            "memory holds",
            "by memory",
            "speed",
            "ms/layer",
            "compute ms",
            "hop ms",
        ]
        .map(String::from)];
        for (i, s) in x["stages"].as_array().into_iter().flatten().enumerate() {
            // A row per device of the stage; the node's own figures (its memory split's share, its hop) on the first.
            for (k, d) in s["devices"].as_array().into_iter().flatten().enumerate() {
                let first = |v: String| if k == 0 { v } else { String::new() };
                rows.push([
                    first(i.to_string()),
                    first(s["node_id"].as_str().unwrap_or("?").to_string()),
                    d["device"].as_str().unwrap_or("?").to_string(),
                    d["layers"].to_string(),
                    d["max_layers"].to_string(),
                    first(s["memory_split_layers"].to_string()),
                    gbs(&d["measured_bytes_per_s"]),
                    ms(&d["ms_per_layer"]),
                    ms(&d["compute_ms"]),
                    first(ms(&s["hop_ms"])),
                ]);
            }
        }
        out.push_str(&table(&rows));
        out.push_str(&format!(
            "predicted {} ms per token: {} compute + {} hops\n",
            ms(&x["predicted_ms_per_token"]),
            ms(&x["compute_ms_per_token"]),
            ms(&x["hops_ms_per_token"])
        ));
    }
    out
}

/// Rows as left-aligned columns two spaces apart.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The node's devices: each GPU (name, what it is, memory total and free, compute capability) and, after GPUs, the
/// CPU that holds what they cannot; a CPU node's threads and kernels. With the layers each device holds.
fn computes_on(n: &Value) -> String {
    let devices: Vec<&Value> = n["devices"].as_array().into_iter().flatten().collect();
    let has_gpu = devices.iter().any(|d| d["name"] != "cpu");
    let cpu = format!("{} threads, {}", n["threads"], n["cpu"]["kernels"].as_str().unwrap_or("?"));
    let described: Vec<String> = devices
        .iter()
        .map(|d| {
            let layers = match &d["layers"] {
                Value::Null => String::new(),
                l if has_gpu => format!(": layers {}-{}", l["start"], l["end"]),
                _ => String::new(),
            };
            if d["name"] == "cpu" {
                return format!("{}{cpu}{layers}", if has_gpu { "cpu " } else { "" });
            }
            let gib = |v: &Value| v.as_u64().unwrap_or(0) as f64 / (1u64 << 30) as f64;
            let cc = d["compute_capability"].as_str().map(|c| format!(", {c}")).unwrap_or_default();
            format!(
                "{} {} ({:.0} GiB, {:.1} free{cc}){layers}",
                d["name"].as_str().unwrap_or("?"),
                d["description"].as_str().unwrap_or(""),
                gib(&d["memory_total_bytes"]),
                gib(&d["memory_free_bytes"])
            )
        })
        .collect();
    if described.is_empty() {
        cpu
    } else {
        described.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_has_a_row_per_node_and_a_line_per_plan() {
        let doc = json!({"self": "a", "nodes": [
            {"id": "a", "addresses": ["10.0.0.1"], "listen_port": 52416, "threads": 4, "cpu": {"kernels": "avx2"},
             "memory": {"usable_bytes": 1u64 << 30, "total_bytes": 2u64 << 30}, "link": null,
             "model": {"id": "m", "layers": {"start": 0, "end": 14}, "n_layers": 30}},
            {"id": "b", "addresses": ["10.0.0.2"], "listen_port": 52416, "threads": 2, "cpu": {"kernels": "neon"},
             "devices": [{"name": "cuda:0", "description": "NVIDIA GeForce RTX 3090", "memory_total_bytes": 24u64 << 30,
                          "memory_free_bytes": 23u64 << 30, "compute_capability": "8.6", "layers": {"start": 15, "end": 25}},
                         {"name": "cpu", "layers": {"start": 26, "end": 29}}],
             "memory": {"usable_bytes": 1u64 << 30, "total_bytes": 1u64 << 30}, "link": {"address": "10.0.0.2:52416", "rtt_ms": 0.4, "bytes_per_s": 1_250_000_000u64},
             "model": null}],
            "plans": [{"id": "00ff", "model": "m", "stages": [
                {"node_id": "a", "start": 0, "end": 14, "devices": [{"device": "cpu", "start": 0, "end": 14}]},
                {"node_id": "b", "start": 15, "end": 29,
                 "devices": [{"device": "cuda:0", "start": 15, "end": 25}, {"device": "cpu", "start": 26, "end": 29}]}]}]});
        let table = render(&doc).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[1].starts_with("a ")
                && lines[1].contains("0-14 of 30 (m)")
                && lines[1].contains("this node")
                && lines[1].contains("4 threads, avx2"),
            "{table}"
        );
        assert!(
            lines[2].contains("10.0.0.2:52416")
                && lines[2].contains("0.40 ms, 1.25 GB/s")
                && lines[2].contains("1.0/1.0")
                && lines[2].contains("cuda:0 NVIDIA GeForce RTX 3090 (24 GiB, 23.0 free, 8.6): layers 15-25")
                && lines[2].contains("; cpu 2 threads, neon: layers 26-29"),
            "{table}"
        );
        assert_eq!(lines[3], "plan 00ff for m: a 0-14, b 15-29 (cuda:0 15-25, cpu 26-29)");
        assert!(render(&json!({})).is_err());
    }

    #[test]
    fn the_explanation_shows_each_stages_bound_speed_and_the_predicted_time() {
        let doc = json!({"plans": [{"id": "00ff", "model": "m", "placement": {"by": "speed", "layer_bytes": 1u64 << 20,
            "compute_ms_per_token": 3.0, "hops_ms_per_token": 0.5, "predicted_ms_per_token": 3.5, "stages": [
            {"node_id": "a", "layers": 20, "max_layers": 20, "memory_split_layers": 15, "compute_ms": 2.0, "hop_ms": 0.25,
             "devices": [{"device": "cuda:0", "layers": 12, "max_layers": 12, "measured_bytes_per_s": 800_000_000_000u64,
                          "ms_per_layer": 0.01, "compute_ms": 0.12},
                         {"device": "cpu", "layers": 8, "max_layers": 40, "measured_bytes_per_s": 8_000_000_000u64,
                          "ms_per_layer": 0.1, "compute_ms": 0.8}]},
            {"node_id": "b", "layers": 10, "max_layers": 30, "memory_split_layers": 15, "compute_ms": 1.0, "hop_ms": null,
             "devices": [{"device": "cpu", "layers": 10, "max_layers": 30, "measured_bytes_per_s": 0,
                          "ms_per_layer": 0.1, "compute_ms": 1.0}]}]}}]});
        let text = explain(&doc);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "plan 00ff for m: split by speed, 1.0 MiB per layer", "{text}");
        assert!(lines[3].starts_with("0      a     cuda:0  12      12            15         800.0 GB/s"), "{text}");
        assert!(lines[4].starts_with("             cpu     8       40                       8.0 GB/s"), "{text}");
        assert!(lines[5].contains("not measured") && lines[5].trim_end().ends_with('-'), "{text}");
        assert_eq!(lines[6], "predicted 3.500 ms per token: 3.000 compute + 0.500 hops", "{text}");
    }
}
