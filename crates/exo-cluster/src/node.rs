//! What a node knows about its own machine: CPU architecture and features, its measured speed (given to it, see
//! [`exo_engine::calibration`]), the addresses it is reachable at, and its description as peers see it.

use std::net::IpAddr;

use exo_engine::calibration::Speed;
use exo_engine::kernels::Kernels;

use crate::memory::Memory;
use crate::proto;

/// The parts of a node's description that do not change while it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    pub id: String,
    /// Addresses peers and clients can reach it at.
    pub addresses: Vec<String>,
    pub api_port: u16,
    /// Port of the peer server.
    pub peer_port: u16,
    /// CPU threads for tensor work.
    pub threads: usize,
    pub memory_limit: Option<u64>,
    /// This machine's measured speed at `threads` threads (zeros: not measured).
    pub speed: Speed,
    /// The devices it computes on (`--devices`): the CPU, or GPUs.
    pub devices: Vec<exo_engine::DeviceInfo>,
}

impl NodeInfo {
    /// The description peers get: this, with the machine's memory now, the layers held, and known peers.
    /// `held_bytes` is the host memory the loaded layers hold.
    pub fn describe(&self, held: &[proto::LoadedShard], held_bytes: u64, peers: Vec<String>) -> proto::NodeDescription {
        let memory = Memory::now(self.memory_limit);
        let devices = self.device_offers(&memory, held_bytes);
        let offered = devices.iter().fold(0u64, |sum, d| sum.saturating_add(d.usable));
        let usable = self.memory_limit.map_or(offered, |l| l.min(offered));
        let (arch, features, kernels) = cpu();
        proto::NodeDescription {
            id: self.id.clone(),
            addresses: self.addresses.clone(),
            api_port: self.api_port as u32,
            peer_port: self.peer_port as u32,
            memory_total: memory.total,
            memory_available: memory.available,
            memory_limit: self.memory_limit,
            memory_usable: usable,
            threads: self.threads as u32,
            arch,
            features,
            kernels,
            shards: held.to_vec(),
            peers,
            // The host's counters, filled in by the transport.
            progress: 0,
            begins: 0,
            matvec_bytes_per_s: self.speed.matvec_bytes_per_s,
            memory_bytes_per_s: self.speed.memory_bytes_per_s,
            devices,
            version: crate::topology::VERSION.into(),
            protocol: crate::topology::PROTOCOL,
        }
    }

    /// Its devices with what each offers for layers and its speed. Memory the loaded layers hold is offered too:
    /// a new plan replaces them. A GPU offers what was free on it when the node started (loaded layers came out of
    /// it) less a reserve for the CUDA context and scratch buffers; the CPU (and a GPU that reports no memory of its
    /// own, Metal's, which shares the machine's) the machine's available memory.
    fn device_offers(&self, memory: &Memory, held_bytes: u64) -> Vec<proto::Device> {
        let host = memory.available.saturating_add(held_bytes);
        let cpu = [exo_engine::DeviceInfo::cpu()];
        let devices = if self.devices.is_empty() { &cpu[..] } else { &self.devices[..] };
        devices
            .iter()
            .map(|d| {
                let (usable, speed) = match (d.is_cpu(), d.memory_total) {
                    (true, _) => (host, self.speed.matvec_bytes_per_s),
                    (false, 0) => (host, d.matvec_bytes_per_s),
                    (false, _) => (d.memory_free.saturating_sub(GPU_RESERVE), d.matvec_bytes_per_s),
                };
                proto::Device {
                    name: d.name.clone(),
                    description: d.description.clone(),
                    memory_total: d.memory_total,
                    memory_free: d.memory_free,
                    compute_capability: d.compute_capability.clone().unwrap_or_default(),
                    usable,
                    matvec_bytes_per_s: speed,
                }
            })
            .collect()
    }
}

/// Device memory a GPU keeps beyond the plan's figures (its CUDA context, cuBLAS's workspace, scratch tensors).
const GPU_RESERVE: u64 = 512 << 20;

/// The CPU's architecture, the features the engine's kernels care about, and the kernels in use.
pub fn cpu() -> (String, Vec<String>, String) {
    #[allow(unused_mut)]
    let mut features: Vec<String> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let detected = [
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("f16c", std::arch::is_x86_feature_detected!("f16c")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            ("avx512vnni", std::arch::is_x86_feature_detected!("avx512vnni")),
        ];
        features.extend(detected.iter().filter(|(_, on)| *on).map(|(name, _)| name.to_string()));
    }
    #[cfg(target_arch = "aarch64")]
    {
        let detected = [
            ("neon", std::arch::is_aarch64_feature_detected!("neon")),
            ("dotprod", std::arch::is_aarch64_feature_detected!("dotprod")),
            ("fp16", std::arch::is_aarch64_feature_detected!("fp16")),
        ];
        features.extend(detected.iter().filter(|(_, on)| *on).map(|(name, _)| name.to_string()));
    }
    let kernels = format!("{:?}", Kernels::best().isa()).to_lowercase();
    (std::env::consts::ARCH.to_string(), features, kernels)
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
    fn the_description_caps_memory_by_the_limit_and_counts_held_layers() {
        let info = NodeInfo {
            id: "n".into(),
            addresses: vec!["127.0.0.1".into()],
            api_port: 1,
            peer_port: 2,
            threads: 2,
            memory_limit: Some(1 << 20),
            speed: Speed { matvec_bytes_per_s: 5 << 30, memory_bytes_per_s: 9 << 30 },
            devices: vec![],
        };
        let d = info.describe(&[], 0, vec!["10.0.0.2:52416".into()]);
        assert_eq!((d.memory_usable, d.memory_limit), (1 << 20, Some(1 << 20)));
        assert!(d.memory_total >= d.memory_available && d.memory_available > 0);
        assert_eq!(d.peers, vec!["10.0.0.2:52416"]);
        assert_eq!((d.matvec_bytes_per_s, d.memory_bytes_per_s), (5 << 30, 9 << 30));
        let unlimited = NodeInfo { memory_limit: None, ..info };
        let d = unlimited.describe(&[], 5 << 30, vec![]);
        assert!(d.memory_usable >= d.memory_available + (5 << 30) - (64 << 20), "{d:?}");
    }

    #[test]
    fn a_node_on_gpus_offers_their_free_memory_less_a_reserve_and_lists_them() {
        let gpu = |i: usize, free_gib: u64| exo_engine::DeviceInfo {
            name: format!("cuda:{i}"),
            description: "NVIDIA GeForce RTX 3090".into(),
            memory_total: 24 << 30,
            memory_free: free_gib << 30,
            compute_capability: Some("8.6".into()),
            matvec_bytes_per_s: 700_000_000_000,
        };
        let info = NodeInfo {
            id: "n".into(),
            addresses: vec![],
            api_port: 1,
            peer_port: 2,
            threads: 2,
            memory_limit: None,
            devices: vec![gpu(0, 23), gpu(1, 20)],
            speed: Speed { matvec_bytes_per_s: 20_000_000_000, memory_bytes_per_s: 30_000_000_000 },
        };
        let d = info.describe(&[], 7 << 30, vec![]);
        assert_eq!(d.memory_usable, (43 << 30) - 2 * GPU_RESERVE);
        assert_eq!(d.devices.len(), 2);
        assert_eq!((d.devices[1].name.as_str(), d.devices[1].compute_capability.as_str()), ("cuda:1", "8.6"));
        assert_eq!((d.devices[1].usable, d.devices[1].matvec_bytes_per_s), ((20 << 30) - GPU_RESERVE, 700_000_000_000));
        // With the CPU after them (--cpu-layers auto) the machine's memory is offered too, at the CPU's speed.
        let offload = NodeInfo { devices: vec![gpu(0, 23), exo_engine::DeviceInfo::cpu()], ..info.clone() };
        let d = offload.describe(&[], 7 << 30, vec![]);
        assert_eq!((d.devices[1].name.as_str(), d.devices[1].matvec_bytes_per_s), ("cpu", 20_000_000_000));
        assert!(d.devices[1].usable >= d.memory_available + (7 << 30) - (64 << 20), "{d:?}");
        assert_eq!(d.memory_usable, d.devices[0].usable + d.devices[1].usable);
        let limited = NodeInfo { memory_limit: Some(8 << 30), ..info.clone() };
        assert_eq!(limited.describe(&[], 0, vec![]).memory_usable, 8 << 30);
        // A GPU that reports no memory of its own (Metal shares the machine's) offers the machine's.
        let shared = exo_engine::DeviceInfo { name: "metal".into(), memory_total: 0, memory_free: 0, ..gpu(0, 0) };
        let d = NodeInfo { devices: vec![shared], ..info }.describe(&[], 0, vec![]);
        assert!(d.memory_usable > 0 && d.memory_usable >= d.memory_available, "{d:?}");
    }
}
