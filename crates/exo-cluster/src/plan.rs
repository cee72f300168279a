//! `Plan`: which node holds which layers of a model. The ring is the nodes in order of memory (descending, then
//! node id) that a split in proportion to memory gives a layer; how many layers each holds is placement.rs's
//! choice (fewest predicted milliseconds per token within each node's memory; the memory split when speeds are
//! equal or unknown). The same nodes, memory and speeds always give the same plan, and its id is a hash of its
//! content, so a message can name the plan it belongs to and a stage can reject one from another plan.

use std::time::Duration;

use crate::error::{ClusterError, Result};
use crate::placement::{self, Placement, StageCost};

/// A node's part of a plan: layers `start..=end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub node_id: String,
    /// host:port of the node's peer server.
    pub address: String,
    pub start: usize,
    pub end: usize,
}

impl Stage {
    pub fn n_layers(&self) -> usize {
        self.end + 1 - self.start
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub id: u64,
    pub model: String,
    pub n_layers: usize,
    /// In ring order: stage 0 holds layer 0, the last stage the last layer.
    pub stages: Vec<Stage>,
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
}

impl Plan {
    /// Splits `n_layers` layers of `model`, which needs `needs` bytes in all (weights, KV cache, buffers), over
    /// `nodes`. Nodes that would get no layer are left out.
    pub fn new(model: &str, n_layers: usize, needs: u64, nodes: &[Candidate]) -> Result<Plan> {
        Self::placed(model, n_layers, needs, nodes).map(|(plan, _)| plan)
    }

    /// [`Plan::new`], with how its layers were placed. The ring is the nodes the memory split gives a layer, in
    /// ring order; each holds at least one layer and at most what its memory holds, and the counts minimize the
    /// predicted compute per token (ties: the counts closest to the memory split). See docs/placement.md.
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
        let members: Vec<(usize, &Candidate)> = ring
            .iter()
            .zip(&by_memory)
            .filter(|(c, &m)| m > 0 && placement::max_layers(n_layers, needs, c.usable) > 0)
            .map(|(c, &m)| (m, *c))
            .collect();
        let caps: Vec<usize> = members.iter().map(|(_, c)| placement::max_layers(n_layers, needs, c.usable)).collect();
        let target: Vec<usize> = members.iter().map(|(m, _)| *m).collect();
        // Unmeasured nodes count as the slowest measured one; with none measured every node is equal and the
        // split is the memory split.
        let slowest = members.iter().map(|(_, c)| c.speed).filter(|&s| s > 0).min().unwrap_or(0);
        let measured: Vec<u64> = members.iter().map(|(_, c)| if c.speed > 0 { c.speed } else { slowest }).collect();
        let speeds = placement::speed_groups(&measured);
        let layer_bytes = needs.div_ceil(n_layers as u64);
        let ns: Vec<u64> = speeds.iter().map(|&s| placement::ns_per_layer(layer_bytes, s)).collect();
        let layers = placement::split(n_layers, &caps, &ns, &target).ok_or_else(too_large)?;
        let mut stages = Vec::new();
        let mut costs = Vec::new();
        let mut next = 0;
        for (j, ((m, c), n)) in members.iter().zip(&layers).enumerate() {
            stages.push(Stage { node_id: c.id.clone(), address: c.address.clone(), start: next, end: next + n - 1 });
            let after = members[(j + 1) % members.len()].1;
            costs.push(StageCost {
                node_id: c.id.clone(),
                layers: *n,
                max_layers: caps[j],
                memory_layers: *m,
                measured_bytes_per_s: c.speed,
                speed_bytes_per_s: speeds[j],
                ns_per_layer: ns[j],
                hop_ns: if members.len() == 1 { Some(0) } else { placement::hop_ns(c.rtt, after.rtt) },
            });
            next += n;
        }
        let id = fingerprint(model, n_layers, &stages);
        let placement = Placement { model: model.to_string(), plan_id: id, layer_bytes, stages: costs };
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
