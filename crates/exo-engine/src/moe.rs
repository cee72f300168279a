//! `Routing`: which experts of a mixture-of-experts layer each token goes to, and with what weight.
//!
//! Both backends route the same way, as llama.cpp does for Mixtral and Qwen 3 MoE: the router's logits over the
//! experts go through a softmax, the `used` most probable experts are chosen, and their probabilities are divided
//! by their sum (at least 2^-14, as llama.cpp clamps it). The tokens are then grouped by expert, so that each
//! chosen expert runs once over all the positions that chose it.

/// One forward pass's assignment of positions to experts. The buffers are kept from pass to pass.
#[derive(Debug, Default)]
pub(crate) struct Routing {
    /// Per expert that at least one position chose, in expert order: `(expert, first slot, slots)`.
    pub groups: Vec<(usize, usize, usize)>,
    /// Per slot, grouped by expert: the position and its weight.
    pub slots: Vec<(usize, f32)>,
    /// Each position's chosen experts and their weights, before grouping.
    chosen: Vec<(usize, f32)>,
    probs: Vec<f32>,
    counts: Vec<usize>,
}

/// The smallest sum of chosen probabilities llama.cpp divides by (the smallest normal f16).
const MIN_WEIGHT_SUM: f32 = 6.103_515_6e-5;

impl Routing {
    /// Routes `logits.len() / count` positions, each with `count` router logits, to their `used` best experts.
    pub fn route(&mut self, logits: &[f32], count: usize, used: usize) {
        let seq = logits.len() / count;
        self.chosen.clear();
        self.probs.resize(count, 0.0);
        for row in logits.chunks_exact(count) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for (p, &l) in self.probs.iter_mut().zip(row) {
                *p = (l - max).exp();
                sum += *p;
            }
            let start = self.chosen.len();
            // The `used` largest probabilities, by insertion (used is at most a few dozen); earlier experts
            // win ties.
            for (e, &p) in self.probs.iter().enumerate() {
                let p = p / sum;
                let mine = &self.chosen[start..];
                let at = mine.iter().position(|&(_, q)| p > q).unwrap_or(mine.len());
                if at < used {
                    if mine.len() == used {
                        self.chosen.pop();
                    }
                    self.chosen.insert(start + at, (e, p));
                }
            }
            let total: f32 = self.chosen[start..].iter().map(|&(_, p)| p).sum();
            let total = total.max(MIN_WEIGHT_SUM);
            self.chosen[start..].iter_mut().for_each(|(_, p)| *p /= total);
        }

        // Group the slots by expert (a counting sort, positions ascending within each expert).
        self.counts.clear();
        self.counts.resize(count, 0);
        for &(e, _) in &self.chosen {
            self.counts[e] += 1;
        }
        self.groups.clear();
        let mut next = 0;
        for (e, n) in self.counts.iter_mut().enumerate() {
            if *n > 0 {
                self.groups.push((e, next, *n));
            }
            // From here on, `counts[e]` is where expert e's next slot goes.
            let first = next;
            next += *n;
            *n = first;
        }
        self.slots.clear();
        self.slots.resize(self.chosen.len(), (0, 0.0));
        for (i, &(e, w)) in self.chosen.iter().enumerate() {
            self.slots[self.counts[e]] = (i / used.max(1), w);
            self.counts[e] += 1;
        }
        debug_assert_eq!(self.chosen.len(), seq * used.min(count));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_go_to_their_best_experts_with_renormalized_weights() {
        let mut r = Routing::default();
        // Two positions over four experts, two chosen each.
        let logits = [0.0, 2.0, 1.0, -1.0, 3.0, 0.0, 0.0, 3.5];
        r.route(&logits, 4, 2);
        // Position 0 chooses experts 1 and 2, position 1 experts 3 and 0.
        assert_eq!(r.groups, vec![(0, 0, 1), (1, 1, 1), (2, 2, 1), (3, 3, 1)]);
        let w = |a: f32, b: f32| 1.0 / (1.0 + (b - a).exp());
        let expect = [(1, w(3.0, 3.5)), (0, w(2.0, 1.0)), (0, w(1.0, 2.0)), (1, w(3.5, 3.0))];
        for (got, want) in r.slots.iter().zip(expect) {
            assert_eq!(got.0, want.0);
            assert!((got.1 - want.1).abs() < 1e-6, "{got:?} against {want:?}");
        }
        // The same expert chosen by both positions runs once over both.
        r.route(&[5.0, 0.0, 4.0, 6.0, 0.0, 1.0], 3, 1);
        assert_eq!(r.groups, vec![(0, 0, 2)]);
        assert_eq!(r.slots, vec![(0, 1.0), (1, 1.0)]);
    }
}
