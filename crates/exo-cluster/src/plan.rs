//! `Plan`: which node holds which layers of a model. The ring is the nodes in order of memory (descending, then
//! node id) that a split in proportion to memory gives a layer; how many layers each holds is placement.rs's
//! choice (fewest predicted milliseconds per token within each node's memory; the memory split when speeds are
//! equal or unknown). The same nodes, memory and speeds always give the same plan, and its id is a hash of its
//! content, so a message can name the plan it belongs to and a stage can reject one from another plan.

use std::time::Duration;

use crate::error::{ClusterError, Result};
use crate::placement::{self, PartCost, Placement, StageCost};

/// Most devices one stage of a plan runs on.
pub const MAX_PARTS: usize = 16;

/// A node's part of a plan: layers `start..=end`, run on its devices in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub node_id: String,
    /// host:port of the node's peer server.
    pub address: String,
    pub start: usize,
    pub end: usize,
    /// The layers each of its devices holds, in order, together `start..=end`: one part on a CPU node; on a node
    /// with GPUs one per GPU that holds any, then the CPU for what they cannot.
    pub parts: Vec<Part>,
}

impl Stage {
    pub fn n_layers(&self) -> usize {
        self.end + 1 - self.start
    }
}

/// Layers `start..=end` of a stage, on one device of its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// `cpu`, `cuda:0`, `metal`: the name the node gave the device.
    pub device: String,
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub id: u64,
    pub model: String,
    pub n_layers: usize,
    /// In ring order: stage 0 holds layer 0, the last stage the last layer.
    pub stages: Vec<Stage>,
}

/// A device of a node a plan may use: its name, the memory it offers for layers, its speed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slot {
    pub device: String,
    pub usable: u64,
    /// Weight bytes per second its matrix-vector product streams (0: not measured).
    pub speed: u64,
}

/// A node a plan may use, with the memory it offers and its speed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub address: String,
    pub usable: u64,
    /// Weight bytes per second its matrix-vector product streams (0: not measured).
    pub speed: u64,
    /// Round trip of this node's link to it (zero for itself; `None`: not measured yet).
    pub rtt: Option<Duration>,
    /// Throughput of this node's link to it, bytes per second (`u64::MAX` for itself; `None`: not measured yet).
    pub link_bytes_per_s: Option<u64>,
    /// Its devices in the order they run layers (GPUs, then a CPU that takes what they cannot). Empty: the CPU
    /// alone, with the node's memory and speed.
    pub devices: Vec<Slot>,
}

impl Candidate {
    /// Its devices as placement uses them: each offers at most what the node offers less what the devices before
    /// it offer, so the node's memory bounds them all; a CPU after GPUs only holds what they cannot (`offload`).
    fn slots(&self) -> Vec<(Slot, bool)> {
        if self.devices.is_empty() {
            let cpu = Slot { device: "cpu".into(), usable: self.usable, speed: self.speed };
            return vec![(cpu, false)];
        }
        let mut left = self.usable;
        let has_gpu = self.devices.iter().any(|d| d.device != "cpu");
        self.devices
            .iter()
            .take(MAX_PARTS)
            .map(|d| {
                let usable = d.usable.min(left);
                left -= usable;
                (Slot { usable, ..d.clone() }, has_gpu && d.device == "cpu")
            })
            .collect()
    }
}

/// A node of a plan's ring as placement works on it.
struct Member<'a> {
    node: &'a Candidate,
    /// Layers the memory-only split gives it.
    memory_layers: usize,
    /// Its devices in order, whether each only holds what the others cannot (the CPU beside GPUs), and the most
    /// layers each holds.
    slots: Vec<Slot>,
    offload: Vec<bool>,
    bounds: Vec<usize>,
    /// Each device's planned speed and time per layer.
    speeds: Vec<u64>,
    ns: Vec<u64>,
}

impl<'a> Member<'a> {
    fn new(node: &'a Candidate, memory_layers: usize, n_layers: usize, needs: u64) -> Self {
        let (slots, offload): (Vec<Slot>, Vec<bool>) = node.slots().into_iter().unzip();
        let bounds = slots.iter().map(|s| placement::max_layers(n_layers, needs, s.usable)).collect();
        Self { node, memory_layers, slots, offload, bounds, speeds: Vec::new(), ns: Vec::new() }
    }

    /// The most layers its devices hold together.
    fn cap(&self, n_layers: usize) -> usize {
        self.bounds.iter().sum::<usize>().min(n_layers)
    }

    fn usable(&self) -> Vec<u64> {
        self.slots.iter().map(|s| s.usable).collect()
    }
}

impl Plan {
    /// Splits `n_layers` layers of `model`, which needs `needs` bytes in all (weights, KV cache, buffers), over
    /// `nodes`. Nodes that would get no layer are left out.
    pub fn new(model: &str, n_layers: usize, needs: u64, nodes: &[Candidate]) -> Result<Plan> {
        Self::placed(model, n_layers, needs, nodes).map(|(plan, _)| plan)
    }

    /// [`Plan::new`], with how its layers were placed. The ring is the nodes the memory split gives a layer, in
    /// ring order; each holds at least one layer and at most what its devices' memory holds, and the counts
    /// minimize the predicted compute per token (ties: the counts closest to the memory split), each node's layers
    /// split over its devices the same way ([`placement::device_split`]). See docs/placement.md.
    pub fn placed(model: &str, n_layers: usize, needs: u64, nodes: &[Candidate]) -> Result<(Plan, Placement)> {
        let mut ring: Vec<&Candidate> = nodes.iter().filter(|c| c.usable > 0).collect();
        ring.sort_by(|a, b| b.usable.cmp(&a.usable).then_with(|| a.id.cmp(&b.id)));
        let total: u128 = ring.iter().map(|c| c.usable as u128).sum();
        let too_large = || ClusterError::ModelTooLarge {
            model: model.to_string(),
            needed_mib: needs >> 20,
            available_mib: (total >> 20) as u64,
            nodes: nodes.len(),
        };
        if n_layers == 0 || ring.is_empty() || needs as u128 > total {
            return Err(too_large());
        }
        let usable: Vec<u64> = ring.iter().map(|c| c.usable).collect();
        let by_memory = placement::memory_split(n_layers, &usable);
        // The ring: nodes the memory split gives a layer and whose memory holds one.
        let mut members: Vec<Member> = ring
            .iter()
            .zip(&by_memory)
            .map(|(c, &m)| Member::new(c, m, n_layers, needs))
            .filter(|m| m.memory_layers > 0 && m.cap(n_layers) > 0)
            .collect();
        let caps: Vec<usize> = members.iter().map(|m| m.cap(n_layers)).collect();
        let target: Vec<usize> = members.iter().map(|m| m.memory_layers).collect();
        // Every device's speed, grouped over the whole ring. Unmeasured devices count as the slowest measured
        // one; with none measured every device is equal and the split is the memory split.
        let measured: Vec<u64> = members.iter().flat_map(|m| m.slots.iter().map(|s| s.speed)).collect();
        let slowest = measured.iter().copied().filter(|&s| s > 0).min().unwrap_or(0);
        let planned =
            placement::speed_groups(&measured.iter().map(|&s| if s > 0 { s } else { slowest }).collect::<Vec<_>>());
        let layer_bytes = needs.div_ceil(n_layers as u64);
        let mut planned = planned.into_iter();
        for m in &mut members {
            m.speeds = m.slots.iter().map(|_| planned.next().unwrap_or(0)).collect();
            m.ns = m.speeds.iter().map(|&s| placement::ns_per_layer(layer_bytes, s)).collect();
        }
        // A count of layers costs what its node's devices take filled fastest first.
        let time = |j: usize, n: usize| -> u128 {
            placement::fastest_fill_ns(n, &members[j].bounds, &members[j].ns).unwrap_or(u128::MAX / 4)
        };
        let layers = placement::split_by(n_layers, &caps, &time, &target).ok_or_else(too_large)?;
        let mut stages = Vec::new();
        let mut costs = Vec::new();
        let mut next = 0;
        for (j, (m, &n)) in members.iter().zip(&layers).enumerate() {
            let split = placement::device_split(n, &m.bounds, &m.usable(), &m.ns, &m.offload).ok_or_else(too_large)?;
            let mut parts = Vec::new();
            let mut part_costs = Vec::new();
            let mut at = next;
            for (i, slot) in m.slots.iter().enumerate() {
                if split[i] > 0 {
                    parts.push(Part { device: slot.device.clone(), start: at, end: at + split[i] - 1 });
                    at += split[i];
                }
                part_costs.push(PartCost {
                    device: slot.device.clone(),
                    layers: split[i],
                    max_layers: m.bounds[i],
                    measured_bytes_per_s: slot.speed,
                    speed_bytes_per_s: m.speeds[i],
                    ns_per_layer: m.ns[i],
                });
            }
            let c = m.node;
            stages.push(Stage {
                node_id: c.id.clone(),
                address: c.address.clone(),
                start: next,
                end: next + n - 1,
                parts,
            });
            let after = members[(j + 1) % members.len()].node;
            costs.push(StageCost {
                node_id: c.id.clone(),
                layers: n,
                max_layers: caps[j],
                memory_layers: m.memory_layers,
                parts: part_costs,
                hop_ns: if members.len() == 1 { Some(0) } else { placement::hop_ns(c.rtt, after.rtt) },
                link_bytes_per_s: if members.len() == 1 {
                    Some(u64::MAX)
                } else {
                    placement::link_rate(c.link_bytes_per_s, after.link_bytes_per_s)
                },
            });
            next += n;
        }
        let id = fingerprint(model, n_layers, &stages);
        let placement = Placement { model: model.to_string(), plan_id: id, layer_bytes, hop_bytes: 0, stages: costs };
        Ok((Plan { id, model: model.to_string(), n_layers, stages }, placement))
    }

    /// The stage `node_id` holds, if any.
    pub fn stage_of(&self, node_id: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.node_id == node_id)
    }

    /// A plan rebuilt from its parts (received from a peer); its id is checked against its content.
    pub fn from_parts(id: u64, model: String, n_layers: usize, stages: Vec<Stage>) -> Result<Plan> {
        let mut next = 0;
        for s in &stages {
            if s.start != next || s.end < s.start {
                return Err(ClusterError::Rejected(format!("plan {id:x}: stages do not cover the layers in order")));
            }
            let mut at = s.start;
            for p in &s.parts {
                if p.start != at || p.end < p.start || p.device.is_empty() || p.device.len() > 128 {
                    return Err(ClusterError::Rejected(format!(
                        "plan {id:x}: the devices of node {} do not cover its layers in order",
                        s.node_id
                    )));
                }
                at = p.end + 1;
            }
            if at != s.end + 1 || s.parts.len() > MAX_PARTS {
                return Err(ClusterError::Rejected(format!(
                    "plan {id:x}: the devices of node {} do not cover its layers in order",
                    s.node_id
                )));
            }
            next = s.end + 1;
        }
        if next != n_layers || fingerprint(&model, n_layers, &stages) != id {
            return Err(ClusterError::Rejected(format!("plan {id:x} does not match its content")));
        }
        Ok(Plan { id, model, n_layers, stages })
    }
}

/// FNV-1a over the plan's content.
fn fingerprint(model: &str, n_layers: usize, stages: &[Stage]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    eat(model.as_bytes());
    eat(&(n_layers as u64).to_le_bytes());
    for s in stages {
        eat(s.node_id.as_bytes());
        eat(s.address.as_bytes());
        eat(&(s.start as u64).to_le_bytes());
        eat(&(s.end as u64).to_le_bytes());
        for p in &s.parts {
            eat(p.device.as_bytes());
            eat(&(p.start as u64).to_le_bytes());
            eat(&(p.end as u64).to_le_bytes());
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(memory: &[(&str, u64)]) -> Vec<Candidate> {
        memory
            .iter()
            .map(|(id, m)| Candidate {
                id: id.to_string(),
                address: format!("{id}:1"),
                usable: m << 30,
                ..Default::default()
            })
            .collect()
    }

    fn ranges(p: &Plan) -> Vec<(&str, usize, usize)> {
        p.stages.iter().map(|s| (s.node_id.as_str(), s.start, s.end)).collect()
    }

    #[test]
    fn layers_split_in_proportion_to_memory_in_ring_order() {
        let p = Plan::new("m", 30, 1 << 30, &nodes(&[("a", 1), ("b", 2), ("c", 3)])).unwrap();
        assert_eq!(ranges(&p), vec![("c", 0, 14), ("b", 15, 24), ("a", 25, 29)]);
        // The order nodes are given in does not matter.
        let q = Plan::new("m", 30, 1 << 30, &nodes(&[("c", 3), ("a", 1), ("b", 2)])).unwrap();
        assert_eq!(p, q);
        assert_eq!(p.stage_of("b"), Some(1));
        assert_eq!(p.stage_of("z"), None);
    }

    #[test]
    fn leftover_layers_go_to_the_largest_remainders_then_ring_order() {
        // Equal memory: 10 = 3 + 3 + 3, and the one left goes to the first in ring order (lowest id).
        let p = Plan::new("m", 10, 1 << 20, &nodes(&[("b", 4), ("a", 4), ("c", 4)])).unwrap();
        assert_eq!(ranges(&p), vec![("a", 0, 3), ("b", 4, 6), ("c", 7, 9)]);
        // 7 layers over 5:2 → quotas 5.0 and 2.0.
        let p = Plan::new("m", 7, 1 << 20, &nodes(&[("x", 5), ("y", 2)])).unwrap();
        assert_eq!(ranges(&p), vec![("x", 0, 4), ("y", 5, 6)]);
        // 5 layers over 6:3:1 → 3, 1.5, 0.5: the remainders tie, ring order breaks the tie.
        let p = Plan::new("m", 5, 1 << 20, &nodes(&[("p", 6), ("q", 3), ("r", 1)])).unwrap();
        assert_eq!(ranges(&p), vec![("p", 0, 2), ("q", 3, 4)]);
    }

    #[test]
    fn a_node_with_no_memory_or_no_layer_is_left_out() {
        let mut n = nodes(&[("a", 100), ("b", 1)]);
        n.push(Candidate { id: "z".into(), address: "z:1".into(), ..Default::default() });
        let p = Plan::new("m", 4, 1 << 20, &n).unwrap();
        assert_eq!(ranges(&p), vec![("a", 0, 3)]);
    }

    #[test]
    fn a_model_larger_than_the_cluster_is_refused_with_both_figures() {
        let e = Plan::new("big", 80, 40 << 30, &nodes(&[("a", 16), ("b", 8)])).unwrap_err();
        assert_eq!(
            e,
            ClusterError::ModelTooLarge {
                model: "big".into(),
                needed_mib: 40 << 10,
                available_mib: 24 << 10,
                nodes: 2
            }
        );
        let message = e.to_string();
        assert!(
            message.contains("40960 MiB") && message.contains("24576 MiB") && message.contains("2 nodes"),
            "{message}"
        );
        assert!(Plan::new("m", 10, 1, &[]).is_err());
    }

    #[test]
    fn plan_ids_follow_content_and_are_checked() {
        let n = nodes(&[("a", 1), ("b", 2)]);
        let p = Plan::new("m", 30, 1 << 20, &n).unwrap();
        assert_eq!(Plan::new("m", 30, 1 << 20, &n).unwrap().id, p.id);
        assert_ne!(Plan::new("other", 30, 1 << 20, &n).unwrap().id, p.id);
        assert_eq!(Plan::from_parts(p.id, "m".into(), 30, p.stages.clone()).unwrap(), p);
        assert!(Plan::from_parts(p.id ^ 1, "m".into(), 30, p.stages.clone()).is_err());
        let mut gap = p.stages.clone();
        gap[1].start += 1;
        assert!(Plan::from_parts(p.id, "m".into(), 30, gap).is_err());
    }
}
