//! `/v1/topology`: what a node says about itself (identity, addresses, ports, memory, CPU) and what it runs now
//! (model, layer range, work in progress). A single node is the whole cluster for now.

use std::net::IpAddr;

use exo_engine::kernels::Kernels;
use serde_json::{json, Value};

use crate::inference::Status;
use crate::memory::Memory;

/// The parts of a node's description that do not change while it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    pub id: String,
    /// Addresses peers and clients can reach it at.
    pub addresses: Vec<String>,
    pub api_port: u16,
    /// Port for other nodes.
    pub listen_port: u16,
    /// CPU threads for tensor work.
    pub threads: usize,
}

/// The topology document: every node (this one) with its memory, CPU and model.
pub fn topology(node: &NodeInfo, status: &Status) -> Value {
    let memory = Memory::now(status.memory_limit);
    let model = status.model.as_ref().map(|m| {
        json!({"id": m.id, "layers": {"start": m.layers.0, "end": m.layers.1}, "n_layers": m.n_layers,
            "bytes": m.bytes, "context": m.context, "backend": m.backend})
    });
    let last = status.last.map(|(outcome, tokens)| json!({"outcome": outcome.as_str(), "completion_tokens": tokens}));
    let entry = json!({
        "id": node.id,
        "addresses": node.addresses,
        "api_port": node.api_port,
        "listen_port": node.listen_port,
        "memory": {"total_bytes": memory.total, "available_bytes": memory.available,
            "limit_bytes": memory.limit, "usable_bytes": memory.usable()},
        "threads": node.threads,
        "cpu": cpu(),
        "model": model,
        "inference": {"busy": status.busy, "queued": status.queued, "requests": status.requests,
            "tokens_generated": status.tokens_generated, "kv_cache_bytes": status.kv_cache_bytes, "last_request": last},
    });
    json!({"self": node.id, "nodes": [entry]})
}

/// The CPU's architecture, the features the engine's kernels care about, and the kernels in use.
pub fn cpu() -> Value {
    #[allow(unused_mut)]
    let mut features: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let detected = [
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("f16c", std::arch::is_x86_feature_detected!("f16c")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            ("avx512vnni", std::arch::is_x86_feature_detected!("avx512vnni")),
        ];
        features.extend(detected.iter().filter(|(_, on)| *on).map(|(name, _)| *name));
    }
    #[cfg(target_arch = "aarch64")]
    {
        let detected = [
            ("neon", std::arch::is_aarch64_feature_detected!("neon")),
            ("dotprod", std::arch::is_aarch64_feature_detected!("dotprod")),
            ("fp16", std::arch::is_aarch64_feature_detected!("fp16")),
        ];
        features.extend(detected.iter().filter(|(_, on)| *on).map(|(name, _)| *name));
    }
    let kernels = format!("{:?}", Kernels::best().isa()).to_lowercase();
    json!({"arch": std::env::consts::ARCH, "features": features, "kernels": kernels})
}

/// The addresses a server bound to `host` is reachable at: `host` itself, or for an unspecified address
/// (`0.0.0.0`, `::`) those of the machine's interfaces of that family, loopback last.
pub fn local_addresses(host: IpAddr) -> Vec<String> {
    if !host.is_unspecified() {
        return vec![host.to_string()];
    }
    let networks = sysinfo::Networks::new_with_refreshed_list();
    let mut addresses: Vec<IpAddr> = networks
        .values()
        .flat_map(|n| n.ip_networks().iter().map(|ip| ip.addr))
        .filter(|a| a.is_ipv4() == host.is_ipv4())
        .filter(|a| !matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .collect();
    addresses.sort_by_key(|a| (a.is_loopback(), *a));
    addresses.dedup();
    if addresses.is_empty() {
        addresses.push(if host.is_ipv4() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
        });
    }
    addresses.iter().map(IpAddr::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_address_is_the_only_one_and_unspecified_lists_interfaces() {
        assert_eq!(local_addresses("127.0.0.1".parse().unwrap()), vec!["127.0.0.1"]);
        let all = local_addresses("0.0.0.0".parse().unwrap());
        assert!(all.iter().any(|a| a == "127.0.0.1"), "{all:?}");
        assert!(all.iter().all(|a| a.parse::<std::net::Ipv4Addr>().is_ok()), "{all:?}");
    }

    #[test]
    fn the_document_describes_the_node_and_its_work() {
        let node = NodeInfo {
            id: "n1".into(),
            addresses: vec!["127.0.0.1".into()],
            api_port: 52415,
            listen_port: 52416,
            threads: 2,
        };
        let status = Status {
            model: None,
            busy: true,
            queued: 2,
            requests: 5,
            tokens_generated: 40,
            kv_cache_bytes: 1024,
            last: None,
            memory_limit: Some(1 << 30),
        };
        let t = topology(&node, &status);
        assert_eq!(t["self"], "n1");
        let n = &t["nodes"][0];
        assert_eq!(
            (n["id"].as_str(), n["api_port"].as_u64(), n["listen_port"].as_u64()),
            (Some("n1"), Some(52415), Some(52416))
        );
        assert_eq!(n["memory"]["limit_bytes"], 1 << 30);
        assert!(n["memory"]["usable_bytes"].as_u64().unwrap() <= 1 << 30);
        assert_eq!(n["model"], Value::Null);
        assert_eq!(n["inference"]["queued"], 2);
        assert_eq!(n["cpu"]["arch"], std::env::consts::ARCH);
    }
}
