//! `/v1/topology`: every node of the cluster (this one first) with its identity, addresses, ports, memory, CPU,
//! measured speed, the devices it computes on, the layers it holds and the link to it; this node's work in
//! progress; and the current plan per model with why each stage holds its layers (memory bound, speed, predicted
//! milliseconds per token).

use exo_cluster::{NodeView, Placement, Plan};
use serde_json::{json, Value};

use crate::inference::Status;

/// The topology document.
pub fn topology(nodes: &[NodeView], plans: &[(Plan, Placement)], status: &Status, kv_cache_bytes: u64) -> Value {
    let me = nodes.iter().find(|n| n.is_self).map(|n| n.description.id.clone()).unwrap_or_default();
    let entries: Vec<Value> = nodes
        .iter()
        .map(|n| {
            let d = &n.description;
            let model = d.shards.first().map(|s| {
                json!({"id": s.model, "layers": {"start": s.start, "end": s.end}, "n_layers": s.n_layers,
                    "bytes": s.bytes})
            });
            let mut entry = json!({
                "id": d.id,
                "addresses": d.addresses,
                "api_port": d.api_port,
                "listen_port": d.peer_port,
                "memory": {"total_bytes": d.memory_total, "available_bytes": d.memory_available,
                    "limit_bytes": d.memory_limit, "usable_bytes": d.memory_usable},
                "threads": d.threads,
                "cpu": {"arch": d.arch, "features": d.features, "kernels": d.kernels},
                "speed": {"matvec_bytes_per_s": d.matvec_bytes_per_s, "memory_bytes_per_s": d.memory_bytes_per_s},
                "devices": d.devices.iter().map(|v| {
                    // The layers of the loaded model this device holds.
                    let layers = d.shards.first().and_then(|s| s.parts.iter().find(|p| p.device == v.name))
                        .map(|p| json!({"start": p.start, "end": p.end}));
                    json!({"name": v.name, "description": v.description,
                    "memory_total_bytes": v.memory_total, "memory_free_bytes": v.memory_free,
                    "usable_bytes": v.usable, "matvec_bytes_per_s": v.matvec_bytes_per_s,
                    "compute_capability": (!v.compute_capability.is_empty()).then_some(&v.compute_capability),
                    "layers": layers})
                }).collect::<Vec<_>>(),
                "model": model,
                "link": if n.is_self { Value::Null } else {
                    json!({"address": n.address, "rtt_ms": n.rtt.map(|r| r.as_secs_f64() * 1e3),
                        "bytes_per_s": n.link_bytes_per_s})
                },
            });
            if n.is_self {
                let last = status
                    .last
                    .map(|(outcome, tokens)| json!({"outcome": outcome.as_str(), "completion_tokens": tokens}));
                entry["inference"] = json!({"busy": status.busy, "queued": status.queued, "requests": status.requests,
                    "tokens_generated": status.tokens_generated, "kv_cache_bytes": kv_cache_bytes,
                    "last_request": last});
            }
            entry
        })
        .collect();
    let plans: Vec<Value> = plans
        .iter()
        .map(|(p, placement)| {
            json!({"id": format!("{:016x}", p.id), "model": p.model, "n_layers": p.n_layers,
                "stages": p.stages.iter().map(|s| json!({"node_id": s.node_id, "start": s.start, "end": s.end,
                    "devices": s.parts.iter().map(|d| json!({"device": d.device, "start": d.start, "end": d.end}))
                        .collect::<Vec<_>>()}))
                    .collect::<Vec<_>>(),
                "placement": explain(placement)})
        })
        .collect();
    json!({"self": me, "nodes": entries, "plans": plans})
}

/// Why each stage holds its layers: its memory bound, the memory split's share, its speed and predicted times.
fn explain(p: &Placement) -> Value {
    let ms = |ns: u64| ns as f64 / 1e6;
    let stages: Vec<Value> = p
        .stages
        .iter()
        .map(|s| {
            let devices: Vec<Value> = s
                .parts
                .iter()
                .map(|d| {
                    json!({"device": d.device, "layers": d.layers, "max_layers": d.max_layers,
                        "measured_bytes_per_s": d.measured_bytes_per_s, "planned_bytes_per_s": d.speed_bytes_per_s,
                        "ms_per_layer": ms(d.ns_per_layer), "compute_ms": ms(d.compute_ns())})
                })
                .collect();
            json!({"node_id": s.node_id, "layers": s.layers, "max_layers": s.max_layers,
                "memory_split_layers": s.memory_layers, "compute_ms": ms(s.compute_ns()),
                "hop_ms": s.hop_time_ns(p.hop_bytes).map(ms),
                "link_bytes_per_s": s.link_bytes_per_s.filter(|&r| r < u64::MAX), "devices": devices})
        })
        .collect();
    let hops = p.hops_ns();
    json!({"by": if p.speed_aware() { "speed" } else { "memory" }, "layer_bytes": p.layer_bytes,
        "compute_ms_per_token": ms(p.compute_ns()), "hops_ms_per_token": hops.map(ms),
        "predicted_ms_per_token": hops.map(|h| ms(p.compute_ns().saturating_add(h))), "stages": stages})
}

#[cfg(test)]
mod tests {
    use super::*;
    use exo_cluster::proto::{Device, LoadedShard, NodeDescription, StagePart};
    use exo_cluster::{Candidate, Plan};
    use std::time::Duration;

    #[test]
    fn the_document_lists_every_node_and_the_plans() {
        let node = |id: &str, is_self: bool| NodeView {
            description: NodeDescription {
                id: id.into(),
                memory_total: 8 << 30,
                memory_usable: 4 << 30,
                shards: vec![LoadedShard {
                    model: "m".into(),
                    start: 0,
                    end: 14,
                    n_layers: 30,
                    bytes: 1,
                    parts: vec![
                        StagePart { device: "cuda:0".into(), start: 0, end: 9 },
                        StagePart { device: "cpu".into(), start: 10, end: 14 },
                    ],
                }],
                devices: vec![
                    Device {
                        name: "cuda:0".into(),
                        description: "NVIDIA H200".into(),
                        memory_total: 140 << 30,
                        memory_free: 139 << 30,
                        compute_capability: "9.0".into(),
                        usable: 138 << 30,
                        matvec_bytes_per_s: 3_000_000_000_000,
                    },
                    Device { name: "cpu".into(), usable: 4 << 30, ..Default::default() },
                ],
                ..Default::default()
            },
            address: format!("{id}:52416"),
            rtt: (!is_self).then(|| std::time::Duration::from_micros(250)),
            link_bytes_per_s: (!is_self).then_some(1_000_000_000),
            is_self,
        };
        let status = Status { busy: true, queued: 2, requests: 5, tokens_generated: 40, last: None };
        let nodes = [
            Candidate {
                id: "a".into(),
                address: "a:1".into(),
                usable: 1 << 30,
                speed: 4_000_000_000,
                rtt: Some(Duration::ZERO),
                link_bytes_per_s: Some(u64::MAX),
                devices: vec![],
            },
            Candidate {
                id: "b".into(),
                address: "b:1".into(),
                usable: 1 << 30,
                speed: 1_000_000_000,
                rtt: Some(Duration::from_millis(2)),
                link_bytes_per_s: Some(1_000_000_000),
                devices: vec![],
            },
        ];
        let mut placed = Plan::placed("m", 30, 600 << 20, &nodes).unwrap();
        placed.1.hop_bytes = 4 * 576;
        let t = topology(&[node("a", true), node("b", false)], &[placed], &status, 1024);
        assert_eq!(t["self"], "a");
        assert_eq!(t["nodes"][0]["inference"]["kv_cache_bytes"], 1024);
        assert_eq!(t["nodes"][0]["link"], Value::Null);
        assert_eq!(t["nodes"][1]["link"]["rtt_ms"], 0.25);
        assert!(t["nodes"][1].get("inference").is_none());
        assert_eq!(t["nodes"][1]["model"]["layers"]["end"], 14);
        // Each device with what it is, its memory and speed, and the layers it holds.
        let gpu = &t["nodes"][0]["devices"][0];
        assert_eq!(
            (&gpu["name"], &gpu["compute_capability"], &gpu["memory_free_bytes"], &gpu["layers"]),
            (&json!("cuda:0"), &json!("9.0"), &json!(139u64 << 30), &json!({"start": 0, "end": 9}))
        );
        assert_eq!(gpu["matvec_bytes_per_s"], 3_000_000_000_000u64);
        let cpu = &t["nodes"][0]["devices"][1];
        assert_eq!((&cpu["compute_capability"], &cpu["layers"]), (&Value::Null, &json!({"start": 10, "end": 14})));
        // a is four times as fast and its memory holds every layer: it takes all but b's one.
        assert_eq!(
            t["plans"][0]["stages"][0],
            json!({"node_id": "a", "start": 0, "end": 28, "devices": [{"device": "cpu", "start": 0, "end": 28}]})
        );
        let p = &t["plans"][0]["placement"];
        assert_eq!(p["by"], "speed");
        assert_eq!(p["stages"][0]["max_layers"], 30);
        assert_eq!(p["stages"][0]["devices"][0]["measured_bytes_per_s"], 4_000_000_000u64);
        assert_eq!(p["stages"][0]["memory_split_layers"], 15);
        assert_eq!(p["stages"][1]["layers"], 1);
        // Two hops of 1 ms latency and 2,304 bytes at 1 GB/s.
        assert_eq!(p["hops_ms_per_token"], 2.004608);
        assert_eq!(p["stages"][0]["link_bytes_per_s"], 1_000_000_000u64);
        assert_eq!(t["nodes"][1]["link"]["bytes_per_s"], 1_000_000_000u64);
        let predicted = p["predicted_ms_per_token"].as_f64().unwrap();
        let compute = p["compute_ms_per_token"].as_f64().unwrap();
        assert!((predicted - compute - 2.004608).abs() < 1e-9 && compute > 0.0, "{p}");
    }
}
