//! Placement: how many of a model's layers each node of a ring holds, so that the predicted time per token is
//! smallest within every node's memory, and the figures that explain the choice. `Plan` (plan.rs) turns the
//! counts into layer ranges; docs/placement.md states the objective and the algorithm.
//!
//! Everything the split depends on is integer and comes from what every node says of itself (memory, speed), so
//! every node computes the same split from the same descriptions. Round-trip times are each node's own
//! measurement of its own links: they enter the predicted time shown, never the split.

use std::time::Duration;

/// One device of a stage, and why it holds what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartCost {
    /// `cpu`, `cuda:0`, `metal`.
    pub device: String,
    pub layers: usize,
    /// Most layers its memory holds.
    pub max_layers: usize,
    /// What it said it streams through a matrix-vector product, bytes per second (0: not measured).
    pub measured_bytes_per_s: u64,
    /// The speed the solver used: its group's fastest ([`speed_groups`]; 0: no device of the ring measured).
    pub speed_bytes_per_s: u64,
    /// Predicted time of one layer for one token.
    pub ns_per_layer: u64,
}

impl PartCost {
    /// Predicted compute of its layers for one token.
    pub fn compute_ns(&self) -> u64 {
        self.ns_per_layer.saturating_mul(self.layers as u64)
    }
}

/// One stage (node) of a placement, and why it holds what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageCost {
    pub node_id: String,
    pub layers: usize,
    /// Most layers its memory holds (all its devices together).
    pub max_layers: usize,
    /// Layers the memory-only split gives it.
    pub memory_layers: usize,
    /// Its devices in the order they run its layers (GPUs, then the CPU that holds what they cannot); a device
    /// holding none of this plan's layers is listed with 0.
    pub parts: Vec<PartCost>,
    /// Predicted latency of the hop to the next stage (the last stage's to the first): half a round trip; `None`:
    /// no round trip known.
    pub hop_ns: Option<u64>,
    /// Throughput of that hop, bytes per second (`u64::MAX`: within this node; `None`: not measured yet).
    pub link_bytes_per_s: Option<u64>,
}

impl StageCost {
    /// Predicted time of the hop to the next stage for `bytes`: its latency, plus the bytes at the link's
    /// throughput once measured; `None` if the latency is not known.
    pub fn hop_time_ns(&self, bytes: u64) -> Option<u64> {
        let transfer = match self.link_bytes_per_s {
            Some(rate) if rate > 0 && rate < u64::MAX => {
                (bytes as u128 * 1_000_000_000 / rate as u128).min(u64::MAX as u128) as u64
            }
            _ => 0,
        };
        Some(self.hop_ns?.saturating_add(transfer))
    }

    /// Predicted compute of its layers for one token, over its devices.
    pub fn compute_ns(&self) -> u64 {
        self.parts.iter().map(PartCost::compute_ns).fold(0, u64::saturating_add)
    }
}

/// How a plan's layers were placed: bytes per layer, and each stage's bounds, speed and predicted times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub model: String,
    pub plan_id: u64,
    /// Bytes of one layer as the cost model counts them (what the model needs over its layer count).
    pub layer_bytes: u64,
    /// Bytes one token's hop carries (its hidden state); 0: not known, and the hops count their latency alone.
    pub hop_bytes: u64,
    pub stages: Vec<StageCost>,
}

impl Placement {
    /// Predicted compute per token: each device's layers times its time per layer.
    pub fn compute_ns(&self) -> u64 {
        self.stages.iter().map(StageCost::compute_ns).fold(0, u64::saturating_add)
    }

    /// Predicted time of the ring's hops per token (latency and the hidden state's transfer); `None` if a link's
    /// round trip is unknown.
    pub fn hops_ns(&self) -> Option<u64> {
        self.stages.iter().map(|s| s.hop_time_ns(self.hop_bytes)).sum()
    }

    /// Whether the split used measured speeds (otherwise it is the memory-only split).
    pub fn speed_aware(&self) -> bool {
        self.stages.iter().flat_map(|s| &s.parts).any(|p| p.speed_bytes_per_s > 0)
    }

    /// One line for the log: each stage's layers, bound and speed, and the predicted time per token.
    pub fn summary(&self) -> String {
        let ms = |ns: u64| ns as f64 / 1e6;
        let speed = |p: &PartCost| {
            if p.speed_bytes_per_s > 0 {
                format!("{:.1} GB/s", p.speed_bytes_per_s as f64 / 1e9)
            } else {
                "speed not measured".into()
            }
        };
        let stages: Vec<String> = self
            .stages
            .iter()
            .map(|s| match s.parts.as_slice() {
                [p] if p.device == "cpu" => {
                    format!("{} {} layers (memory holds {}, {})", s.node_id, s.layers, s.max_layers, speed(p))
                }
                parts => {
                    let parts: Vec<String> = parts
                        .iter()
                        .map(|p| format!("{} {} (holds {}, {})", p.device, p.layers, p.max_layers, speed(p)))
                        .collect();
                    format!("{} {} layers: {}", s.node_id, s.layers, parts.join(", "))
                }
            })
            .collect();
        let predicted = match (self.speed_aware(), self.hops_ns()) {
            (false, _) => "split by memory (no speeds measured)".to_string(),
            (true, Some(h)) => format!(
                "predicted {:.2} ms per token ({:.2} compute, {:.2} hops)",
                ms(self.compute_ns() + h),
                ms(self.compute_ns()),
                ms(h)
            ),
            (true, None) => {
                format!("predicted {:.2} ms per token of compute (hops not yet measured)", ms(self.compute_ns()))
            }
        };
        format!("plan {:016x} for {}: {}; {predicted}", self.plan_id, self.model, stages.join(", "))
    }
}

/// Layers per node in proportion to `usable` (largest remainder; leftover layers to the largest fractional parts,
/// ties in the given order): the split when speeds are unknown or equal. `usable` must not all be zero.
pub fn memory_split(n_layers: usize, usable: &[u64]) -> Vec<usize> {
    let total: u128 = usable.iter().map(|&u| u as u128).sum::<u128>().max(1);
    let quota = |u: u64| n_layers as u128 * u as u128;
    let mut layers: Vec<usize> = usable.iter().map(|&u| (quota(u) / total) as usize).collect();
    let mut by_remainder: Vec<usize> = (0..usable.len()).collect();
    by_remainder.sort_by(|&a, &b| (quota(usable[b]) % total).cmp(&(quota(usable[a]) % total)).then(a.cmp(&b)));
    let left = n_layers - layers.iter().sum::<usize>();
    for &i in by_remainder.iter().take(left) {
        layers[i] += 1;
    }
    layers
}

/// Most layers of a model needing `needs` bytes for `n_layers` layers that `usable` bytes hold.
pub fn max_layers(n_layers: usize, needs: u64, usable: u64) -> usize {
    let fit = usable as u128 * n_layers as u128 / (needs as u128).max(1);
    fit.min(n_layers as u128) as usize
}

/// The speeds the solver plans with: from the fastest down, each speed within 1/8 of the fastest of its group
/// counts as that one; the first speed further below starts the next group. Like machines measure a few per cent
/// apart, and since the optimum fills the faster node first, taking such noise at its word would swing the split
/// from the memory split to all-on-one. Integer and in a fixed order (ties by position), so deterministic.
pub fn speed_groups(bytes_per_s: &[u64]) -> Vec<u64> {
    let mut order: Vec<usize> = (0..bytes_per_s.len()).collect();
    order.sort_by(|&a, &b| bytes_per_s[b].cmp(&bytes_per_s[a]).then(a.cmp(&b)));
    let mut planned = vec![0; bytes_per_s.len()];
    let mut leader = 0u64;
    for i in order {
        let s = bytes_per_s[i];
        if (s as u128) * 8 < (leader as u128) * 7 || leader == 0 {
            leader = s;
        }
        planned[i] = leader;
    }
    planned
}

/// Nanoseconds one layer of `layer_bytes` takes at `bytes_per_s` (0: unknown, taken as 0).
pub fn ns_per_layer(layer_bytes: u64, bytes_per_s: u64) -> u64 {
    if bytes_per_s == 0 {
        return 0;
    }
    (layer_bytes as u128 * 1_000_000_000).div_ceil(bytes_per_s as u128).min(u64::MAX as u128) as u64
}

/// One-way time of the hop between two nodes this node reaches in `a` and `b` (itself in zero): half the longer
/// round trip. Only this node's own links are measured, so a hop between two peers is estimated through it.
pub fn hop_ns(a: Option<Duration>, b: Option<Duration>) -> Option<u64> {
    Some((a?.max(b?).as_nanos() / 2).min(u64::MAX as u128) as u64)
}

/// Throughput of the hop between two nodes this node reaches at `a` and `b` bytes per second (itself at
/// `u64::MAX`): the slower, as with [`hop_ns`]; `None` if one is not measured.
pub fn link_rate(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    Some(a?.min(b?))
}

/// A split's cost: predicted compute per token in nanoseconds, then the distance to the memory split as the
/// tie-break; compared as a pair, first element first.
type Cost = (u128, u64);

/// The [`Cost`] of a split with `target` the memory split.
#[cfg(test)]
fn cost(layers: &[usize], ns_per_layer: &[u64], target: &[usize]) -> Cost {
    let time = layers.iter().zip(ns_per_layer).map(|(&n, &t)| n as u128 * t as u128).sum();
    let distance = layers.iter().zip(target).map(|(&n, &m)| n.abs_diff(m) as u64).sum();
    (time, distance)
}

/// The split of `n_layers` over stages in order (each holds 1 to `caps[i]` layers) with the smallest predicted
/// compute per token `Σ layers[i] × ns_per_layer[i]`, and among those the closest to `target` (sum of absolute
/// differences); `None` if no split fits. See [`split_by`].
pub fn split(n_layers: usize, caps: &[usize], ns_per_layer: &[u64], target: &[usize]) -> Option<Vec<usize>> {
    split_by(n_layers, caps, &|j, n| n as u128 * ns_per_layer[j] as u128, target)
}

/// The split of `n_layers` over stages in order (each holds 1 to `caps[i]` layers) with the smallest predicted
/// compute per token `Σ time(i, layers[i])`, and among those the closest to `target` (sum of absolute
/// differences); `None` if no split fits. Exact, by dynamic programming over (stages placed, layers placed):
/// O(stages × layers²), integer arithmetic only, ties to the first found in a fixed order, so deterministic.
pub fn split_by(
    n_layers: usize,
    caps: &[usize],
    time: &dyn Fn(usize, usize) -> u128,
    target: &[usize],
) -> Option<Vec<usize>> {
    if caps.is_empty() || caps.len() > n_layers {
        return None;
    }
    least_cost(n_layers, caps, 1, time, target)
}

/// The counts of `n` over stages in order, each `min` to `caps[j]`, with the least `(Σ time(j, counts[j]),
/// Σ |counts[j] − target[j]|)`, compared as a pair, ties to the first found: the dynamic program over (stages
/// placed, layers placed) that [`split_by`] and [`device_split`] share. `None` if no counts fit.
fn least_cost(
    n: usize,
    caps: &[usize],
    min: usize,
    time: &dyn Fn(usize, usize) -> u128,
    target: &[usize],
) -> Option<Vec<usize>> {
    let k = caps.len();
    // best[j][s]: the least cost of stages 0..j holding s layers, and the count stage j-1 holds in it.
    let mut best: Vec<Vec<Option<(Cost, usize)>>> = vec![vec![None; n + 1]; k + 1];
    best[0][0] = Some(((0, 0), 0));
    for j in 0..k {
        for s in 0..=n {
            let Some(((t, distance), _)) = best[j][s] else { continue };
            for m in min..=caps[j].min(n - s) {
                let c = (t + time(j, m), distance + m.abs_diff(target[j]) as u64);
                let slot = &mut best[j + 1][s + m];
                if slot.is_none_or(|(old, _)| c < old) {
                    *slot = Some((c, m));
                }
            }
        }
    }
    let mut counts = vec![0; k];
    let mut s = n;
    for j in (0..k).rev() {
        let (_, m) = best[j + 1][s]?;
        counts[j] = m;
        s -= m;
    }
    Some(counts)
}

/// The least compute of `n` layers over devices each holding 0 to `caps[i]` at `ns_per_layer[i]`: the fastest
/// filled first (exact, since the cost is linear); `None` if they cannot hold `n`. What [`device_split`]'s optimum
/// costs, in O(devices) per count, so that a plan can weigh every count a node may hold.
pub fn fastest_fill_ns(n: usize, caps: &[usize], ns_per_layer: &[u64]) -> Option<u128> {
    let mut order: Vec<usize> = (0..caps.len()).collect();
    order.sort_by_key(|&i| ns_per_layer[i]);
    let (mut left, mut time) = (n, 0u128);
    for i in order {
        let m = caps[i].min(left);
        time += m as u128 * ns_per_layer[i] as u128;
        left -= m;
    }
    (left == 0).then_some(time)
}

/// How a stage of `n` layers splits them over its devices (in the order they run: GPUs, then the CPU), each
/// holding 0 to `caps[i]`: the least `Σ layers[i] × ns_per_layer[i]`, and among those the closest to the fill
/// order, where the devices that are not `offload` share the layers in proportion to their `usable` memory and the
/// `offload` devices (the CPU beside GPUs) hold only what those cannot. With no speeds measured that is the
/// fill order itself, llama.cpp's partial offload; with speeds, a faster device fills first. `None` if the
/// devices cannot hold `n`. Exact and deterministic, as [`split_by`].
pub fn device_split(
    n: usize,
    caps: &[usize],
    usable: &[u64],
    ns_per_layer: &[u64],
    offload: &[bool],
) -> Option<Vec<usize>> {
    let k = caps.len();
    if caps.iter().sum::<usize>() < n || k == 0 {
        return None;
    }
    // The fill order: first devices' share by their memory, the rest over the offload devices the same way.
    let share = |of: usize, pick: bool| {
        let chosen: Vec<usize> = (0..k).filter(|&i| offload[i] == pick && caps[i] > 0).collect();
        let bounds: Vec<u64> = chosen.iter().map(|&i| usable[i].max(1)).collect();
        let cap: usize = chosen.iter().map(|&i| caps[i]).sum();
        let take = of.min(cap);
        let split = if take == 0 { vec![0; chosen.len()] } else { memory_split(take, &bounds) };
        (chosen.into_iter().zip(split).collect::<Vec<_>>(), take)
    };
    let mut target = vec![0; k];
    let (first, taken) = share(n, false);
    let (rest, _) = share(n - taken, true);
    for (i, t) in first.into_iter().chain(rest) {
        target[i] = t;
    }
    least_cost(n, caps, 0, &|j, m| m as u128 * ns_per_layer[j] as u128, &target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ClusterError;
    use crate::plan::{Candidate, Plan, Slot};

    /// Every split by enumeration: the optimum's cost, or `None` if none fits.
    fn brute_force(n_layers: usize, caps: &[usize], t: &[u64], target: &[usize]) -> Option<Cost> {
        fn go(j: usize, left: usize, caps: &[usize], layers: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
            if j == caps.len() {
                if left == 0 {
                    out.push(layers.clone());
                }
                return;
            }
            for n in 1..=caps[j].min(left) {
                layers.push(n);
                go(j + 1, left - n, caps, layers, out);
                layers.pop();
            }
        }
        let mut all = Vec::new();
        go(0, n_layers, caps, &mut Vec::new(), &mut all);
        all.iter().map(|l| cost(l, t, target)).min()
    }

    #[test]
    fn the_split_is_the_brute_force_optimum_on_small_cases() {
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % m
        };
        for _ in 0..400 {
            let k = 1 + next(4) as usize;
            let n_layers = k + next(10) as usize;
            let caps: Vec<usize> = (0..k).map(|_| 1 + next(n_layers as u64) as usize).collect();
            let t: Vec<u64> = (0..k).map(|_| [0, 1_000, 2_000, 3_000, 7_000][next(5) as usize]).collect();
            let usable: Vec<u64> = (0..k).map(|_| 1 + next(8)).collect();
            let target = memory_split(n_layers, &usable);
            let got = split(n_layers, &caps, &t, &target);
            let want = brute_force(n_layers, &caps, &t, &target);
            assert_eq!(got.as_ref().map(|l| cost(l, &t, &target)), want, "{n_layers} layers, caps {caps:?}, t {t:?}");
            if let Some(l) = got {
                assert_eq!(l.iter().sum::<usize>(), n_layers);
                assert!(l.iter().zip(&caps).all(|(&n, &c)| (1..=c).contains(&n)), "{l:?} {caps:?}");
            }
        }
    }

    #[test]
    fn equal_speeds_give_the_memory_split() {
        let target = memory_split(30, &[3, 2, 1]);
        assert_eq!(target, [15, 10, 5]);
        assert_eq!(split(30, &[30, 30, 30], &[500, 500, 500], &target), Some(target.clone()));
        assert_eq!(split(30, &[30, 30, 30], &[0, 0, 0], &target), Some(target));
    }

    #[test]
    fn a_faster_stage_takes_what_its_memory_holds() {
        // Stage 1 is twice as fast: it takes its 20, the slow stage the rest.
        assert_eq!(split(30, &[30, 20], &[2_000, 1_000], &[15, 15]), Some(vec![10, 20]));
        // Its memory holds all but one: every stage keeps at least one layer.
        assert_eq!(split(30, &[30, 30], &[2_000, 1_000], &[15, 15]), Some(vec![1, 29]));
        // Nothing fits: too few layers for the stages, or too little memory.
        assert_eq!(split(2, &[5, 5, 5], &[1, 1, 1], &[1, 1, 0]), None);
        assert_eq!(split(30, &[10, 10], &[1, 1], &[15, 15]), None);
    }

    /// A node of a table: id, usable GiB, matrix-vector GB/s (0: not measured), round trip in µs.
    fn node(id: &str, gib: u64, gb_per_s: u64, rtt_us: u64) -> Candidate {
        Candidate {
            id: id.into(),
            address: format!("{id}:1"),
            usable: gib << 30,
            speed: gb_per_s * 1_000_000_000,
            rtt: Some(Duration::from_micros(rtt_us)),
            link_bytes_per_s: None,
            devices: vec![],
        }
    }

    /// Plans `n_layers` layers needing `needs_gib` over `nodes`, checks the plan's predicted compute against every
    /// split of the same ring, and returns the layers per node.
    fn placed(n_layers: usize, needs_gib: u64, nodes: &[Candidate]) -> Vec<(String, usize)> {
        let (plan, p) = Plan::placed("m", n_layers, needs_gib << 30, nodes).unwrap();
        assert_eq!(plan.stages.len(), p.stages.len());
        let caps: Vec<usize> = p.stages.iter().map(|s| s.max_layers).collect();
        assert!(p.stages.iter().all(|s| s.parts.len() == 1), "{p:?}");
        let t: Vec<u64> = p.stages.iter().map(|s| s.parts[0].ns_per_layer).collect();
        let target: Vec<usize> = p.stages.iter().map(|s| s.memory_layers).collect();
        let layers: Vec<usize> = plan.stages.iter().map(|s| s.n_layers()).collect();
        assert_eq!(Some(cost(&layers, &t, &target)), brute_force(n_layers, &caps, &t, &target), "{p:?}");
        assert_eq!(p.compute_ns() as u128, cost(&layers, &t, &target).0);
        plan.stages.iter().map(|s| (s.node_id.clone(), s.n_layers())).collect()
    }

    fn counts(v: &[(&str, usize)]) -> Vec<(String, usize)> {
        v.iter().map(|(id, n)| (id.to_string(), *n)).collect()
    }

    #[test]
    fn two_equal_nodes_split_evenly() {
        let nodes = [node("a", 16, 20, 0), node("b", 16, 20, 300)];
        assert_eq!(placed(12, 4, &nodes), counts(&[("a", 6), ("b", 6)]));
        // The same without speeds: the memory split, as before speeds existed.
        let unmeasured: Vec<Candidate> = nodes.iter().map(|c| Candidate { speed: 0, ..c.clone() }).collect();
        assert_eq!(placed(12, 4, &unmeasured), counts(&[("a", 6), ("b", 6)]));
        // Calibration noise (a few per cent) does not move a layer.
        let noisy = [node("a", 16, 20, 0), Candidate { speed: 20_700_000_000, ..node("b", 16, 20, 300) }];
        assert_eq!(placed(12, 4, &noisy), counts(&[("a", 6), ("b", 6)]));
    }

    #[test]
    fn a_24_and_a_12_gb_node_of_one_speed_split_two_to_one() {
        let nodes = [node("small", 12, 30, 200), node("big", 24, 30, 0)];
        assert_eq!(placed(12, 18, &nodes), counts(&[("big", 8), ("small", 4)]));
    }

    #[test]
    fn a_fast_small_node_beside_a_slow_large_one_fills_its_memory() {
        // fast: 8 GiB at 40 GB/s; slow: 32 GiB at 10 GB/s; 12 layers of 1 GiB each (12 GiB in all).
        let nodes = [node("fast", 8, 40, 0), node("slow", 32, 10, 400)];
        // Memory alone gives slow 10 and fast 2; speed gives fast all its memory holds (8).
        let (_, p) = Plan::placed("m", 12, 12 << 30, &nodes).unwrap();
        assert_eq!(p.stages.iter().map(|s| s.memory_layers).collect::<Vec<_>>(), [10, 2]);
        assert_eq!(placed(12, 12, &nodes), counts(&[("slow", 4), ("fast", 8)]));
        let t = |i: usize| p.stages[i].parts[0].ns_per_layer as f64;
        assert!((t(0) / t(1) - 4.0).abs() < 1e-6, "{p:?}");
        assert_eq!(p.hops_ns(), Some(400_000));
        // An unmeasured node counts as the slowest measured one: here the only measured one, so both are equal
        // and memory decides.
        let half = [node("fast", 8, 40, 0), Candidate { speed: 0, ..node("slow", 32, 10, 400) }];
        assert_eq!(placed(12, 12, &half), counts(&[("slow", 10), ("fast", 2)]));
    }

    #[test]
    fn a_hop_carries_the_hidden_state_at_the_links_measured_throughput() {
        // This node (a) and a peer 400 µs away over a 1 GB/s link; one token's hop carries 16 KiB.
        let nodes = [
            Candidate { link_bytes_per_s: Some(u64::MAX), ..node("a", 8, 40, 0) },
            Candidate { link_bytes_per_s: Some(1_000_000_000), ..node("b", 32, 10, 400) },
        ];
        let (_, mut p) = Plan::placed("m", 12, 12 << 30, &nodes).unwrap();
        assert_eq!(p.hops_ns(), Some(400_000), "without the hop's size, latency alone");
        p.hop_bytes = 16 << 10;
        // Each hop: 200 µs of latency and 16,384 ns of transfer at the slower link's 1 GB/s.
        assert_eq!(p.stages.iter().map(|s| s.link_bytes_per_s).collect::<Vec<_>>(), [Some(1_000_000_000); 2]);
        assert_eq!(p.hops_ns(), Some(2 * (200_000 + 16_384)));
        // A link not yet measured counts its latency alone.
        let unmeasured = [nodes[0].clone(), Candidate { link_bytes_per_s: None, ..nodes[1].clone() }];
        let (_, mut q) = Plan::placed("m", 12, 12 << 30, &unmeasured).unwrap();
        q.hop_bytes = 16 << 10;
        assert_eq!((q.stages[0].link_bytes_per_s, q.hops_ns()), (None, Some(400_000)));
        assert_eq!(link_rate(Some(u64::MAX), Some(5)), Some(5));
    }

    #[test]
    fn three_nodes_of_three_speeds_match_the_brute_force() {
        let nodes = [node("a", 6, 10, 0), node("b", 4, 25, 100), node("c", 5, 15, 250)];
        let got = placed(10, 12, &nodes);
        assert_eq!(got.iter().map(|(_, n)| n).sum::<usize>(), 10);
        // b, the fastest, takes what its memory holds (4 GiB of 1.2 GiB layers: 3).
        assert_eq!(got.iter().find(|(id, _)| id == "b").map(|(_, n)| *n), Some(3));
    }

    #[test]
    fn a_model_too_large_for_every_node_is_refused_with_both_figures() {
        let nodes = [node("a", 8, 40, 0), node("b", 4, 10, 100)];
        let e = Plan::placed("big", 32, 20 << 30, &nodes).unwrap_err();
        assert_eq!(
            e,
            ClusterError::ModelTooLarge {
                model: "big".into(),
                needed_mib: 20 << 10,
                available_mib: 12 << 10,
                nodes: 2
            }
        );
    }

    #[test]
    fn speeds_within_a_group_are_equal_and_times_are_integers() {
        // Within an eighth of the group's fastest: equal. The group is led by its fastest, so a chain of small
        // steps does not drift: 100, 90, 88 are one group, 80 starts another.
        assert_eq!(speed_groups(&[90, 100, 80, 88]), [100, 100, 80, 100]);
        assert_eq!(speed_groups(&[10_000_000_000, 10_400_000_000]), [10_400_000_000; 2]);
        assert_eq!(speed_groups(&[0, 0]), [0, 0]);
        assert_eq!(speed_groups(&[]), Vec::<u64>::new());
        assert_eq!(ns_per_layer(1 << 20, 1 << 30), 976_563);
        assert_eq!(ns_per_layer(1 << 20, 0), 0);
        assert_eq!(ns_per_layer(u64::MAX, 1), u64::MAX);
        assert_eq!(max_layers(30, 3 << 30, 1 << 30), 10);
        assert_eq!(max_layers(30, 1, u64::MAX), 30);
        let ms = |v: u64| Some(Duration::from_millis(v));
        assert_eq!(hop_ns(ms(0), ms(4)), Some(2_000_000));
        assert_eq!(hop_ns(ms(0), None), None);
    }

    /// A node of a table with devices: id, (device, usable GiB, GB/s) in the order they run, round trip in µs.
    fn machine(id: &str, devices: &[(&str, u64, u64)], rtt_us: u64) -> Candidate {
        Candidate {
            id: id.into(),
            address: format!("{id}:1"),
            usable: devices.iter().map(|d| d.1 << 30).sum(),
            speed: 0,
            rtt: Some(Duration::from_micros(rtt_us)),
            link_bytes_per_s: None,
            devices: devices
                .iter()
                .map(|&(device, gib, gb_per_s)| Slot {
                    device: device.into(),
                    usable: gib << 30,
                    speed: gb_per_s * 1_000_000_000,
                })
                .collect(),
        }
    }

    /// The least (compute, distance to the memory split) of every assignment of `n_layers` layers to every device
    /// of the ring in order, each node holding 1 to its bound and each device 0 to its own.
    fn brute_force_devices(n_layers: usize, p: &Placement) -> Option<Cost> {
        let devices: Vec<(usize, &PartCost)> =
            p.stages.iter().enumerate().flat_map(|(j, s)| s.parts.iter().map(move |d| (j, d))).collect();
        fn go(
            i: usize,
            left: usize,
            devices: &[(usize, &PartCost)],
            per_node: &mut Vec<usize>,
            time: u128,
            p: &Placement,
            best: &mut Option<Cost>,
        ) {
            if i == devices.len() {
                let fits = per_node.iter().zip(&p.stages).all(|(&n, s)| (1..=s.max_layers).contains(&n));
                if left == 0 && fits {
                    let distance =
                        per_node.iter().zip(&p.stages).map(|(&n, s)| n.abs_diff(s.memory_layers) as u64).sum();
                    if best.is_none_or(|b| (time, distance) < b) {
                        *best = Some((time, distance));
                    }
                }
                return;
            }
            let (j, d) = devices[i];
            for m in 0..=d.max_layers.min(left) {
                per_node[j] += m;
                go(i + 1, left - m, devices, per_node, time + m as u128 * d.ns_per_layer as u128, p, best);
                per_node[j] -= m;
            }
        }
        let mut best = None;
        go(0, n_layers, &devices, &mut vec![0; p.stages.len()], 0, p, &mut best);
        best
    }

    /// Plans over machines with devices, checks the plan against every assignment to the ring's devices and that its
    /// parts match the placement, and returns each node's parts as (device, layers).
    fn placed_on_devices(n_layers: usize, needs_gib: u64, nodes: &[Candidate]) -> Vec<(String, Vec<(String, usize)>)> {
        let (plan, p) = Plan::placed("m", n_layers, needs_gib << 30, nodes).unwrap();
        let time: u128 = p.stages.iter().map(|s| s.compute_ns() as u128).sum();
        let distance: u64 = p.stages.iter().map(|s| s.layers.abs_diff(s.memory_layers) as u64).sum();
        assert_eq!(Some((time, distance)), brute_force_devices(n_layers, &p), "{p:?}");
        for (stage, cost) in plan.stages.iter().zip(&p.stages) {
            let held: Vec<(&str, usize)> =
                cost.parts.iter().filter(|d| d.layers > 0).map(|d| (d.device.as_str(), d.layers)).collect();
            let parts: Vec<(&str, usize)> =
                stage.parts.iter().map(|d| (d.device.as_str(), d.end + 1 - d.start)).collect();
            assert_eq!(held, parts);
            assert_eq!((stage.parts[0].start, stage.parts.last().unwrap().end), (stage.start, stage.end));
        }
        assert_eq!(Plan::from_parts(plan.id, "m".into(), n_layers, plan.stages.clone()).unwrap(), plan);
        plan.stages
            .iter()
            .map(|s| (s.node_id.clone(), s.parts.iter().map(|d| (d.device.clone(), d.end + 1 - d.start)).collect()))
            .collect()
    }

    fn parts(v: &[(&str, &[(&str, usize)])]) -> Vec<(String, Vec<(String, usize)>)> {
        v.iter().map(|(id, ds)| (id.to_string(), ds.iter().map(|(d, n)| (d.to_string(), *n)).collect())).collect()
    }

    #[test]
    fn two_equal_gpus_of_one_machine_are_two_stages_of_even_halves() {
        let two = [machine("box", &[("cuda:0", 23, 900), ("cuda:1", 23, 900)], 0)];
        assert_eq!(placed_on_devices(32, 40, &two), parts(&[("box", &[("cuda:0", 16), ("cuda:1", 16)])]));
        let unmeasured = [machine("box", &[("cuda:0", 23, 0), ("cuda:1", 23, 0)], 0)];
        assert_eq!(placed_on_devices(32, 40, &unmeasured), parts(&[("box", &[("cuda:0", 16), ("cuda:1", 16)])]));
        // Two machines of one GPU each: the same halves, one per node.
        let apart = [machine("a", &[("cuda:0", 23, 900)], 0), machine("b", &[("cuda:0", 23, 900)], 300)];
        assert_eq!(placed_on_devices(32, 40, &apart), parts(&[("a", &[("cuda:0", 16)]), ("b", &[("cuda:0", 16)])]));
    }

    #[test]
    fn a_24_and_a_12_gb_gpu_of_one_speed_split_two_to_one() {
        let node = [machine("box", &[("cuda:0", 24, 900), ("cuda:1", 12, 900)], 0)];
        assert_eq!(placed_on_devices(30, 30, &node), parts(&[("box", &[("cuda:0", 20), ("cuda:1", 10)])]));
        // Room to spare does not change the proportion.
        assert_eq!(placed_on_devices(30, 9, &node), parts(&[("box", &[("cuda:0", 20), ("cuda:1", 10)])]));
    }

    #[test]
    fn a_fast_small_gpu_beside_a_slow_large_cpu_fills_its_memory_first() {
        // In one machine: the GPU holds 16 of 32 layers of a 16 GiB model, the CPU the other 16.
        let node = [machine("box", &[("cuda:0", 8, 900), ("cpu", 64, 40)], 0)];
        assert_eq!(placed_on_devices(32, 16, &node), parts(&[("box", &[("cuda:0", 16), ("cpu", 16)])]));
        // A model the GPU holds runs on it alone: the CPU is left out of the stage.
        assert_eq!(placed_on_devices(32, 4, &node), parts(&[("box", &[("cuda:0", 32)])]));
        // As two machines, a GPU node beside a CPU-only one: the GPU node takes what its memory holds.
        let two = [machine("gpu", &[("cuda:0", 8, 900)], 0), node_with_cpu("cpu", 64, 40, 300)];
        let got = placed_on_devices(32, 16, &two);
        assert_eq!(got, parts(&[("cpu", &[("cpu", 16)]), ("gpu", &[("cuda:0", 16)])]));
        // By memory alone the CPU node would take 28 of them.
        let (_, p) = Plan::placed("m", 32, 16 << 30, &two).unwrap();
        assert_eq!(p.stages.iter().map(|s| s.memory_layers).collect::<Vec<_>>(), [28, 4]);
    }

    fn node_with_cpu(id: &str, gib: u64, gb_per_s: u64, rtt_us: u64) -> Candidate {
        machine(id, &[("cpu", gib, gb_per_s)], rtt_us)
    }

    #[test]
    fn one_gpu_with_cpu_offload_puts_on_the_cpu_only_what_the_gpu_cannot_hold() {
        // 80 layers of a 40 GiB model: the 24 GiB GPU holds 48, the CPU the other 32 (llama.cpp's -ngl 48).
        let measured = [machine("box", &[("cuda:0", 24, 900), ("cpu", 64, 40)], 0)];
        assert_eq!(placed_on_devices(80, 40, &measured), parts(&[("box", &[("cuda:0", 48), ("cpu", 32)])]));
        // With no speed measured it is the same: the GPU first, the CPU for the rest, not a split by memory.
        let unmeasured = [machine("box", &[("cuda:0", 24, 0), ("cpu", 64, 0)], 0)];
        assert_eq!(placed_on_devices(80, 40, &unmeasured), parts(&[("box", &[("cuda:0", 48), ("cpu", 32)])]));
        // Without offload (--cpu-layers none) the GPU alone cannot hold it.
        let none = [machine("box", &[("cuda:0", 24, 900)], 0)];
        let e = Plan::placed("m", 80, 40 << 30, &none).unwrap_err();
        assert!(matches!(e, ClusterError::ModelTooLarge { needed_mib: 40960, available_mib: 24576, .. }), "{e:?}");
    }

    #[test]
    fn a_model_too_large_for_every_device_is_refused_with_both_figures() {
        let nodes =
            [machine("a", &[("cuda:0", 24, 900), ("cuda:1", 24, 900)], 0), machine("b", &[("cuda:0", 12, 600)], 200)];
        let e = Plan::placed("big", 80, 70 << 30, &nodes).unwrap_err();
        assert_eq!(
            e,
            ClusterError::ModelTooLarge {
                model: "big".into(),
                needed_mib: 70 << 10,
                available_mib: 60 << 10,
                nodes: 2
            }
        );
    }

    #[test]
    fn device_plans_are_the_brute_force_optimum_on_small_cases() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % m
        };
        let mut planned = 0;
        for _ in 0..150 {
            let nodes: Vec<Candidate> = (0..1 + next(3))
                .map(|i| {
                    let gpus = next(3) as usize;
                    let mut devices: Vec<(String, u64, u64)> = (0..gpus)
                        .map(|g| (format!("cuda:{g}"), 1 + next(6), [0, 300, 600, 900][next(4) as usize]))
                        .collect();
                    if gpus == 0 || next(2) == 0 {
                        devices.push(("cpu".into(), 1 + next(12), [0, 20, 40][next(3) as usize]));
                    }
                    let d: Vec<(&str, u64, u64)> = devices.iter().map(|(n, g, s)| (n.as_str(), *g, *s)).collect();
                    machine(&format!("n{i}"), &d, 100 * i)
                })
                .collect();
            let n_layers = 3 + next(8) as usize;
            let needs = 1 + next(20);
            if Plan::placed("m", n_layers, needs << 30, &nodes).is_ok() {
                placed_on_devices(n_layers, needs, &nodes);
                planned += 1;
            }
        }
        assert!(planned >= 60, "only {planned} of the cases could be planned");
    }

    #[test]
    fn a_device_split_fills_by_speed_then_in_order() {
        // No speeds: the GPUs share by their bounds, the offload CPU takes the rest.
        let offload = [false, false, true];
        assert_eq!(device_split(10, &[6, 3, 20], &[6, 3, 20], &[0, 0, 0], &offload), Some(vec![6, 3, 1]));
        assert_eq!(device_split(6, &[6, 3, 20], &[6, 3, 20], &[0, 0, 0], &offload), Some(vec![4, 2, 0]));
        // Bounds that both exceed the layers: memory still sets the proportion.
        assert_eq!(device_split(6, &[9, 9], &[20, 10], &[0, 0], &[false; 2]), Some(vec![4, 2]));
        // A faster device fills first, whatever the order.
        assert_eq!(device_split(6, &[6, 6], &[1, 1], &[2, 1], &[false; 2]), Some(vec![0, 6]));
        // Too many layers for the devices, or no devices.
        assert_eq!(device_split(30, &[6, 3, 20], &[6, 3, 20], &[0, 0, 0], &offload), None);
        assert_eq!(device_split(1, &[], &[], &[], &[]), None);
        assert_eq!(device_split(0, &[2], &[2], &[5], &[false]), Some(vec![0]));
        assert_eq!(fastest_fill_ns(30, &[6, 3, 20], &[1, 1, 1]), None);
        assert_eq!(fastest_fill_ns(8, &[6, 6], &[2, 1]), Some(6 + 2 * 2));
    }

    #[test]
    fn the_fastest_fill_costs_what_the_device_split_costs() {
        let mut state: u64 = 0x1234_5678_9abc_def1;
        let mut next = |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % m
        };
        for _ in 0..300 {
            let k = 1 + next(4) as usize;
            let caps: Vec<usize> = (0..k).map(|_| next(8) as usize).collect();
            let usable: Vec<u64> = (0..k).map(|_| 1 + next(8)).collect();
            let ns: Vec<u64> = (0..k).map(|_| [0, 10, 25, 70][next(4) as usize]).collect();
            let offload: Vec<bool> = (0..k).map(|_| next(3) == 0).collect();
            for n in 0..=caps.iter().sum::<usize>() + 1 {
                let split = device_split(n, &caps, &usable, &ns, &offload);
                let time = split.as_ref().map(|l| l.iter().zip(&ns).map(|(&m, &t)| m as u128 * t as u128).sum());
                assert_eq!(time, fastest_fill_ns(n, &caps, &ns), "{n} over {caps:?} at {ns:?}");
                if let Some(l) = split {
                    assert!(l.iter().zip(&caps).all(|(m, c)| m <= c) && l.iter().sum::<usize>() == n);
                }
            }
        }
    }
}
