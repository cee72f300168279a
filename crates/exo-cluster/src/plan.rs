//! `Plan`: which node holds which layers of a model. Layers are split in proportion to the memory each node
//! offers, by the largest-remainder method, over the nodes in ring order (memory descending, then node id). The
//! same nodes and memory always give the same plan, and its id is a hash of its content, so a message can name
//! the plan it belongs to and a stage can reject one from another plan.

use crate::error::{ClusterError, Result};

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

/// A node a plan may use, with the memory it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub address: String,
    pub usable: u64,
}

impl Plan {
    /// Splits `n_layers` layers of `model`, which needs `needs` bytes in all (weights, KV cache, buffers), over
    /// `nodes`. Nodes that would get no layer are left out.
    pub fn new(model: &str, n_layers: usize, needs: u64, nodes: &[Candidate]) -> Result<Plan> {
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
        // Largest remainder: each node gets the whole part of its quota, and the layers left over go to the
        // largest fractional parts (ties in ring order).
        let quota = |c: &Candidate| n_layers as u128 * c.usable as u128;
        let mut layers: Vec<usize> = ring.iter().map(|c| (quota(c) / total) as usize).collect();
        let mut by_remainder: Vec<usize> = (0..ring.len()).collect();
        by_remainder.sort_by(|&a, &b| (quota(ring[b]) % total).cmp(&(quota(ring[a]) % total)).then(a.cmp(&b)));
        let left = n_layers - layers.iter().sum::<usize>();
        for &i in by_remainder.iter().take(left) {
            layers[i] += 1;
        }
        let mut stages = Vec::new();
        let mut next = 0;
        for (c, n) in ring.iter().zip(layers) {
            if n == 0 {
                continue;
            }
            // Rounding may give a node one layer more than its share: it must still fit.
            if needs as u128 * n as u128 > c.usable as u128 * n_layers as u128 {
                return Err(too_large());
            }
            stages.push(Stage { node_id: c.id.clone(), address: c.address.clone(), start: next, end: next + n - 1 });
            next += n;
        }
        let id = fingerprint(model, n_layers, &stages);
        Ok(Plan { id, model: model.to_string(), n_layers, stages })
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
            .map(|(id, m)| Candidate { id: id.to_string(), address: format!("{id}:1"), usable: m << 30 })
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
        n.push(Candidate { id: "z".into(), address: "z:1".into(), usable: 0 });
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
