//! Choosing the next token from the logits of the last position.
//!
//! [`Sampler`] applies llama.cpp's default chain in llama.cpp's order — repetition/frequency/presence penalties,
//! top-k, top-p, min-p, temperature — and draws from what is left with a seeded RNG, so a fixed seed reproduces a
//! generation. It runs once per generated token over the whole vocabulary, so it keeps its scratch space between
//! calls and does not allocate after the first one. It knows nothing of text, stop strings or the end of
//! generation: the caller decides which ids to ban (e.g. EOS while a minimum length is not reached).

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{EngineError, Result};

/// How the next token is chosen. Every filter has a value that turns it off.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Divides the logits before the draw; 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities add up to at least this; 1.0 = off; in [0, 1] (0 keeps only
    /// the most likely token, as in llama.cpp).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 = off; in [0, 1].
    pub min_p: f32,
    /// Divides positive and multiplies negative logits of recently seen tokens; 1.0 = off; > 0.
    pub repeat_penalty: f32,
    /// How many of the most recent tokens the penalties look at; 0 = penalties off.
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of every token seen in the window; 0 = off.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit for each time it occurs in the window; 0 = off.
    pub frequency_penalty: f32,
    /// Seed of the random draw; `None` = a random seed.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    /// llama.cpp's defaults.
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Always the most likely token, with every filter and penalty off.
    pub fn greedy() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, ..Self::default() }
    }

    /// Checks every value against its valid range; the error names the parameter, the range and the value.
    pub fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(EngineError::InvalidSampling(msg));
        // Written as negated comparisons so that NaN, which fails every comparison, is rejected too.
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return invalid(format!("temperature must be a finite number >= 0 (0 = greedy), got {}", self.temperature));
        }
        if !(self.top_p >= 0.0 && self.top_p <= 1.0) {
            return invalid(format!(
                "top_p must be in [0, 1] (1 = off, 0 = the most likely token only), got {}",
                self.top_p
            ));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return invalid(format!("min_p must be in [0, 1] (0 = off), got {}", self.min_p));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return invalid(format!(
                "repeat_penalty must be a finite number > 0 (1 = off), got {}",
                self.repeat_penalty
            ));
        }
        if !self.presence_penalty.is_finite() {
            return invalid(format!(
                "presence_penalty must be a finite number (0 = off), got {}",
                self.presence_penalty
            ));
        }
        if !self.frequency_penalty.is_finite() {
            return invalid(format!(
                "frequency_penalty must be a finite number (0 = off), got {}",
                self.frequency_penalty
            ));
        }
        Ok(())
    }

    fn has_penalties(&self) -> bool {
        self.repeat_last_n > 0
            && (self.repeat_penalty != 1.0 || self.presence_penalty != 0.0 || self.frequency_penalty != 0.0)
    }
}

/// How many of the best candidates top-p sorts first; it sorts four times more each time that is not enough.
const TOP_P_FIRST_HEAD: usize = 256;

/// Chooses tokens with one request's [`SamplingParams`]; owns that request's RNG.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    seed: u64,
    rng: StdRng,
    /// (token id, logit) of the tokens still in the running; reused so the per-token path does not allocate.
    candidates: Vec<(u32, f32)>,
    /// Occurrences of each token in the penalty window; reused for the same reason.
    counts: HashMap<u32, u32>,
}

impl Sampler {
    /// Validates `params` and seeds the RNG with `params.seed`, or with a random seed when it is `None`.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let seed = params.seed.unwrap_or_else(rand::random);
        Ok(Self { params, seed, rng: StdRng::seed_from_u64(seed), candidates: Vec::new(), counts: HashMap::new() })
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The seed in use: `params.seed`, or the random one chosen for it; reusing it reproduces the generation.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Picks the next token. `logits` is the full vocabulary (it may be modified in place: penalties, masking).
    /// `history` = tokens so far (prompt + generated); penalties use its last `repeat_last_n`. `banned` = ids to
    /// mask to -inf before choosing (used to ignore EOS). If nothing is left to choose from (every logit is -inf
    /// or NaN), the lowest id that is not banned is returned.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32], banned: &[u32]) -> u32 {
        if self.params.has_penalties() {
            self.apply_penalties(logits, history);
        }
        for &id in banned {
            if let Some(logit) = logits.get_mut(id as usize) {
                *logit = f32::NEG_INFINITY;
            }
        }

        if self.params.temperature == 0.0 {
            return match argmax_finite(logits) {
                Some(id) => id,
                None => first_allowed(logits.len(), banned),
            };
        }

        self.candidates.clear();
        self.candidates
            .extend(logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(id, &logit)| (id as u32, logit)));
        if self.candidates.is_empty() {
            return first_allowed(logits.len(), banned);
        }
        self.keep_top_k();
        self.keep_top_p_and_min_p();
        self.draw()
    }

    /// llama.cpp's penalties: a seen token's logit is divided (if positive) or multiplied (if not) by
    /// `repeat_penalty`, then lowered by `count * frequency_penalty + presence_penalty`.
    fn apply_penalties(&mut self, logits: &mut [f32], history: &[u32]) {
        let window = &history[history.len().saturating_sub(self.params.repeat_last_n)..];
        self.counts.clear();
        for &id in window {
            *self.counts.entry(id).or_insert(0) += 1;
        }
        for (&id, &count) in &self.counts {
            let Some(logit) = logits.get_mut(id as usize) else { continue };
            if *logit <= 0.0 {
                *logit *= self.params.repeat_penalty;
            } else {
                *logit /= self.params.repeat_penalty;
            }
            *logit -= count as f32 * self.params.frequency_penalty + self.params.presence_penalty;
        }
    }

    /// Keeps the `top_k` highest logits, in no particular order: nothing after this needs the whole list sorted.
    fn keep_top_k(&mut self) {
        let k = self.params.top_k;
        if k == 0 || k >= self.candidates.len() {
            return;
        }
        // Partial selection: O(vocab) rather than a sort's O(vocab log vocab).
        self.candidates.select_nth_unstable_by(k - 1, by_logit_descending);
        self.candidates.truncate(k);
    }

    /// top-p then min-p, with llama.cpp's semantics: top-p keeps the shortest most-likely prefix whose
    /// probability (over the candidates left by top-k) reaches `top_p`; min-p keeps tokens whose logit is at least
    /// `max_logit + ln(min_p)`. Both keep a prefix of the sorted candidates, so doing min-p's cheap unsorted
    /// filter first gives the same set, provided top-p's probabilities are still normalized over every candidate.
    fn keep_top_p_and_min_p(&mut self) {
        let (top_p, min_p) = (self.params.top_p, self.params.min_p);
        if top_p >= 1.0 && min_p <= 0.0 {
            return;
        }
        let max_logit = self.candidates.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        let normalizer: f64 = self.candidates.iter().map(|c| f64::from((c.1 - max_logit).exp())).sum();

        if min_p > 0.0 {
            let min_logit = max_logit + min_p.ln();
            self.candidates.retain(|c| c.1 >= min_logit);
        }
        if top_p < 1.0 {
            let probability = |logit: f32| f64::from((logit - max_logit).exp()) / normalizer;
            // Sort only the head that top-p can need: grow a partially selected head of the best candidates until
            // its mass reaches top_p. A peaked distribution needs a few hundred tokens, not the whole vocabulary.
            let len = self.candidates.len();
            let (mut selected, mut head) = (0, TOP_P_FIRST_HEAD.min(len));
            loop {
                if head < len {
                    self.candidates[selected..].select_nth_unstable_by(head - selected - 1, by_logit_descending);
                }
                let mass: f64 = self.candidates[..head].iter().map(|c| probability(c.1)).sum();
                if mass >= f64::from(top_p) || head == len {
                    break;
                }
                (selected, head) = (head, (head * 4).min(len));
            }
            self.candidates[..head].sort_unstable_by(by_logit_descending);
            let mut cumulative = 0.0f64;
            let mut keep = head;
            for (i, c) in self.candidates[..head].iter().enumerate() {
                cumulative += probability(c.1);
                if cumulative >= f64::from(top_p) {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep);
        }
    }

    /// Draws one candidate from the softmax of `logit / temperature`.
    fn draw(&mut self) -> u32 {
        let temperature = self.params.temperature;
        let max_logit = self.candidates.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        // The logits are not needed after this, so each becomes its unnormalized probability in place.
        let mut total = 0.0f64;
        for c in &mut self.candidates {
            c.1 = ((c.1 - max_logit) / temperature).exp();
            total += f64::from(c.1);
        }
        let mut target = self.rng.random::<f64>() * total;
        for &(id, weight) in &self.candidates {
            target -= f64::from(weight);
            if target < 0.0 {
                return id;
            }
        }
        // Rounding can leave a sliver of `target` after the last candidate; it belongs to the last one.
        self.candidates.last().expect("draw is only called with candidates left").0
    }
}

/// Descending by logit; ties go to the lower id, so every filter (and greedy) breaks ties the same way.
fn by_logit_descending(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The index of the largest non-NaN logit above -inf (the first one on ties), if any.
fn argmax_finite(logits: &[f32]) -> Option<u32> {
    let (mut best, mut best_logit) = (None, f32::NEG_INFINITY);
    for (i, &logit) in logits.iter().enumerate() {
        // `>` is false for NaN and keeps the first of equal logits.
        if logit > best_logit {
            (best, best_logit) = (Some(i as u32), logit);
        }
    }
    best
}

/// Fallback when every logit is masked: the lowest id not explicitly banned.
fn first_allowed(vocab_size: usize, banned: &[u32]) -> u32 {
    (0..vocab_size as u32).find(|id| !banned.contains(id)).unwrap_or(0)
}

/// Natural-log softmax helper used by tests and logprobs: log-probabilities of the raw logits.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return vec![f32::NEG_INFINITY; logits.len()];
    }
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_sum = max + sum.ln() as f32;
    logits.iter().map(|&l| l - log_sum).collect()
}

/// The index of the largest logit; the lowest index on ties; NaN never wins; 0 for an empty slice.
pub fn argmax(logits: &[f32]) -> u32 {
    argmax_finite(logits).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(params: SamplingParams) -> Sampler {
        Sampler::new(params).expect("test parameters are valid")
    }

    /// Plain sampling at `temperature` with every filter off.
    fn unfiltered(temperature: f32, seed: u64) -> SamplingParams {
        SamplingParams { temperature, top_k: 0, top_p: 1.0, min_p: 0.0, seed: Some(seed), ..SamplingParams::default() }
    }

    /// Deterministic pseudo-random logits in [-5, 5).
    fn noisy_logits(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-5.0f32..5.0)).collect()
    }

    fn draw_counts(s: &mut Sampler, logits: &[f32], draws: usize) -> Vec<usize> {
        let mut counts = vec![0; logits.len()];
        for _ in 0..draws {
            let id = s.sample(&mut logits.to_vec(), &[], &[]);
            counts[id as usize] += 1;
        }
        counts
    }

    #[test]
    fn defaults_match_llama_cpp() {
        let p = SamplingParams::default();
        assert_eq!((p.temperature, p.top_k, p.top_p, p.min_p), (0.8, 40, 0.95, 0.05));
        assert_eq!((p.repeat_penalty, p.repeat_last_n, p.presence_penalty, p.frequency_penalty), (1.0, 64, 0.0, 0.0));
        assert_eq!(p.seed, None);
        assert!(p.validate().is_ok());
        assert!(SamplingParams::greedy().validate().is_ok());
    }

    #[test]
    fn greedy_picks_the_argmax() {
        let mut s = sampler(SamplingParams::greedy());
        assert_eq!(s.sample(&mut [0.1, 2.5, -1.0, 2.4], &[], &[]), 1);
        let logits = noisy_logits(1000, 7);
        assert_eq!(s.sample(&mut logits.clone(), &[], &[]), argmax(&logits));
    }

    #[test]
    fn argmax_breaks_ties_toward_the_lowest_id_and_ignores_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, f32::NAN]), 1);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn banned_ids_are_never_chosen() {
        let logits = [5.0, 4.9, 0.0, 4.8];
        let mut greedy = sampler(SamplingParams::greedy());
        assert_eq!(greedy.sample(&mut logits.clone(), &[], &[0]), 1);

        let mut s = sampler(unfiltered(1.0, 3));
        for _ in 0..2000 {
            let id = s.sample(&mut logits.clone(), &[], &[0, 3]);
            assert!(id == 1 || id == 2, "drew banned id {id}");
        }
    }

    #[test]
    fn when_everything_is_banned_the_first_unbanned_id_is_returned() {
        let mut s = sampler(unfiltered(1.0, 3));
        let mut logits = [f32::NEG_INFINITY, 1.0, 2.0];
        assert_eq!(s.sample(&mut logits, &[], &[1, 2]), 0);
    }

    #[test]
    fn same_seed_gives_the_same_sequence() {
        let logits = noisy_logits(5000, 1);
        let run = |seed| {
            let mut s = sampler(SamplingParams { seed: Some(seed), ..SamplingParams::default() });
            (0..200).map(|_| s.sample(&mut logits.clone(), &[], &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn seed_reports_the_seed_in_use() {
        assert_eq!(sampler(unfiltered(1.0, 99)).seed(), 99);
        let random = sampler(SamplingParams::default());
        let again = sampler(SamplingParams { seed: Some(random.seed()), ..SamplingParams::default() });
        let logits = noisy_logits(100, 2);
        let (mut a, mut b) = (random, again);
        for _ in 0..50 {
            assert_eq!(a.sample(&mut logits.clone(), &[], &[]), b.sample(&mut logits.clone(), &[], &[]));
        }
    }

    #[test]
    fn top_k_one_equals_greedy() {
        let mut s = sampler(SamplingParams { top_k: 1, temperature: 1.5, seed: Some(5), ..SamplingParams::default() });
        for seed in 0..50 {
            let logits = noisy_logits(3000, seed);
            assert_eq!(s.sample(&mut logits.clone(), &[], &[]), argmax(&logits));
        }
    }

    #[test]
    fn top_k_keeps_only_the_k_most_likely() {
        let logits = [0.0, 1.0, 0.9, 0.8, 0.7, 0.1, 0.2];
        let mut s = sampler(SamplingParams { top_k: 3, ..unfiltered(1.0, 11) });
        let counts = draw_counts(&mut s, &logits, 3000);
        assert!(counts[1] > 0 && counts[2] > 0 && counts[3] > 0);
        assert_eq!(counts[0] + counts[4] + counts[5] + counts[6], 0, "{counts:?}");
    }

    #[test]
    fn tiny_top_p_equals_greedy() {
        let mut s = sampler(SamplingParams { top_p: 1e-6, ..unfiltered(2.0, 8) });
        for seed in 0..50 {
            let logits = noisy_logits(3000, seed);
            assert_eq!(s.sample(&mut logits.clone(), &[], &[]), argmax(&logits));
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_prefix_reaching_p() {
        // Probabilities 0.5, 0.3, 0.15, 0.05: the first two reach 0.8 >= 0.7, so only they remain, in ratio 5:3.
        let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let mut s = sampler(SamplingParams { top_p: 0.7, ..unfiltered(1.0, 12) });
        let counts = draw_counts(&mut s, &logits, 8000);
        assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
        let share = counts[0] as f64 / 8000.0;
        assert!((share - 0.625).abs() < 0.02, "token 0 share {share}");
    }

    /// llama.cpp's top-p then min-p, done the plain way: sort everything, cut by cumulative probability, then by
    /// logit.
    fn reference_top_p_then_min_p(logits: &[f32], top_p: f32, min_p: f32) -> Vec<u32> {
        let mut sorted: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        sorted.sort_by(by_logit_descending);
        let max = sorted[0].1;
        let z: f64 = sorted.iter().map(|c| f64::from((c.1 - max).exp())).sum();
        let mut cumulative = 0.0;
        let mut keep = sorted.len();
        for (i, c) in sorted.iter().enumerate() {
            cumulative += f64::from((c.1 - max).exp()) / z;
            if cumulative >= f64::from(top_p) {
                keep = i + 1;
                break;
            }
        }
        sorted.truncate(keep);
        sorted.retain(|c| c.1 >= max + min_p.ln());
        let mut ids: Vec<u32> = sorted.iter().map(|c| c.0).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn top_p_and_min_p_keep_the_same_tokens_as_a_full_sort() {
        // Flat logits make top-p need thousands of tokens, so the partially sorted head has to grow several times.
        for (top_p, min_p) in [(0.9, 0.0), (0.3, 0.0), (0.95, 0.5), (0.99, 0.05), (1e-6, 0.0)] {
            let logits: Vec<f32> = noisy_logits(5000, 17).iter().map(|l| l / 5.0).collect();
            let mut s = sampler(SamplingParams { top_p, min_p, ..unfiltered(1.0, 1) });
            s.candidates = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
            s.keep_top_p_and_min_p();
            let mut kept: Vec<u32> = s.candidates.iter().map(|c| c.0).collect();
            kept.sort_unstable();
            assert_eq!(kept, reference_top_p_then_min_p(&logits, top_p, min_p), "top_p {top_p}, min_p {min_p}");
        }
    }

    #[test]
    fn min_p_removes_the_tail() {
        // Three head tokens, then 50 tail tokens at 1/e^2 ~ 0.135 of the top probability: below min_p = 0.2, yet
        // together more likely than the head, so they would dominate the draws if they were not removed.
        let mut logits = vec![2.0, 1.9, 1.8];
        logits.extend(std::iter::repeat_n(0.0, 50));
        let mut s = sampler(SamplingParams { min_p: 0.2, ..unfiltered(1.0, 13) });
        let counts = draw_counts(&mut s, &logits, 2000);
        assert!(counts[..3].iter().all(|&c| c > 0), "{counts:?}");
        assert_eq!(counts[3..].iter().sum::<usize>(), 0, "{counts:?}");

        let mut without = sampler(unfiltered(1.0, 13));
        let counts = draw_counts(&mut without, &logits, 2000);
        assert!(counts[3..].iter().sum::<usize>() > 1000, "the tail should matter without min_p: {counts:?}");
    }

    #[test]
    fn temperature_one_matches_the_softmax() {
        let logits = [1.0, 2.0, 0.5, -1.0, 1.5];
        let expected: Vec<f64> = log_softmax(&logits).iter().map(|&l| f64::from(l).exp()).collect();
        let draws = 40_000;
        let mut s = sampler(unfiltered(1.0, 21));
        let counts = draw_counts(&mut s, &logits, draws);
        for (id, (&c, &p)) in counts.iter().zip(&expected).enumerate() {
            let share = c as f64 / draws as f64;
            assert!((share - p).abs() < 0.01, "token {id}: drawn {share:.4}, softmax {p:.4}");
        }
    }

    #[test]
    fn lower_temperature_sharpens_the_distribution() {
        let logits = [1.0, 2.0, 0.5];
        let scaled: Vec<f32> = logits.iter().map(|l| l / 0.5).collect();
        let expected: Vec<f64> = log_softmax(&scaled).iter().map(|&l| f64::from(l).exp()).collect();
        let draws = 40_000;
        let mut s = sampler(unfiltered(0.5, 22));
        let counts = draw_counts(&mut s, &logits, draws);
        for (id, (&c, &p)) in counts.iter().zip(&expected).enumerate() {
            let share = c as f64 / draws as f64;
            assert!((share - p).abs() < 0.01, "token {id}: drawn {share:.4}, softmax {p:.4}");
        }
    }

    #[test]
    fn repeat_penalty_divides_positive_and_multiplies_negative_logits() {
        let mut s = sampler(SamplingParams { repeat_penalty: 2.0, ..SamplingParams::greedy() });
        let mut logits = [3.0, -1.0, 0.5, 4.0];
        // Token 3 is seen twice: the repeat penalty does not depend on the count.
        s.sample(&mut logits, &[0, 1, 3, 3], &[]);
        assert_eq!(logits, [1.5, -2.0, 0.5, 2.0]);
    }

    #[test]
    fn frequency_and_presence_penalties_subtract_count_times_frequency_plus_presence() {
        let mut s =
            sampler(SamplingParams { frequency_penalty: 0.5, presence_penalty: 0.25, ..SamplingParams::greedy() });
        let mut logits = [3.0, -1.0, 0.5, 4.0];
        s.sample(&mut logits, &[1, 3, 3, 3], &[]);
        assert_eq!(logits, [3.0, -1.0 - 0.5 - 0.25, 0.5, 4.0 - 1.5 - 0.25]);
    }

    #[test]
    fn penalties_combine_repeat_first_then_frequency_and_presence() {
        let params = SamplingParams {
            repeat_penalty: 2.0,
            frequency_penalty: 1.0,
            presence_penalty: 0.5,
            ..SamplingParams::greedy()
        };
        let mut s = sampler(params);
        let mut logits = [3.0, -1.0];
        s.sample(&mut logits, &[0, 1, 1], &[]);
        assert_eq!(logits, [3.0 / 2.0 - 1.0 - 0.5, -2.0 - 2.0 - 0.5]);
    }

    #[test]
    fn penalties_only_look_at_the_last_repeat_last_n_tokens() {
        let mut s = sampler(SamplingParams { repeat_penalty: 2.0, repeat_last_n: 2, ..SamplingParams::greedy() });
        let mut logits = [2.0, 2.0, 2.0, 2.0];
        s.sample(&mut logits, &[0, 1, 2, 3], &[]);
        assert_eq!(logits, [2.0, 2.0, 1.0, 1.0]);

        let mut off = sampler(SamplingParams { repeat_penalty: 2.0, repeat_last_n: 0, ..SamplingParams::greedy() });
        let mut logits = [2.0, 2.0];
        off.sample(&mut logits, &[0, 1], &[]);
        assert_eq!(logits, [2.0, 2.0]);
    }

    #[test]
    fn penalties_can_change_the_greedy_choice() {
        let mut s = sampler(SamplingParams { repeat_penalty: 1.5, ..SamplingParams::greedy() });
        assert_eq!(s.sample(&mut [2.0, 1.5], &[0], &[]), 1);
    }

    #[test]
    fn history_ids_outside_the_vocabulary_are_ignored() {
        let mut s = sampler(SamplingParams { repeat_penalty: 2.0, ..SamplingParams::greedy() });
        let mut logits = [1.0, 2.0];
        assert_eq!(s.sample(&mut logits, &[7, 1_000_000], &[9]), 1);
        assert_eq!(logits, [1.0, 2.0]);
    }

    /// top_p 0 (what some clients send for "deterministic") keeps only the most likely token, as in llama.cpp.
    #[test]
    fn top_p_zero_keeps_only_the_most_likely_token() {
        for seed in 0..20 {
            let params = SamplingParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 0.0,
                min_p: 0.0,
                seed: Some(seed),
                ..Default::default()
            };
            let mut s = sampler(params);
            let mut logits = vec![1.0, 3.0, 2.9, 0.5];
            assert_eq!(s.sample(&mut logits, &[], &[]), 1, "seed {seed}");
        }
    }

    #[test]
    fn validate_rejects_each_bad_value_naming_the_parameter() {
        let ok = SamplingParams::default();
        let cases = [
            (SamplingParams { temperature: -0.1, ..ok.clone() }, "temperature"),
            (SamplingParams { temperature: f32::NAN, ..ok.clone() }, "temperature"),
            (SamplingParams { temperature: f32::INFINITY, ..ok.clone() }, "temperature"),
            (SamplingParams { top_p: -0.01, ..ok.clone() }, "top_p"),
            (SamplingParams { top_p: 1.01, ..ok.clone() }, "top_p"),
            (SamplingParams { top_p: f32::NAN, ..ok.clone() }, "top_p"),
            (SamplingParams { min_p: -0.01, ..ok.clone() }, "min_p"),
            (SamplingParams { min_p: 1.5, ..ok.clone() }, "min_p"),
            (SamplingParams { min_p: f32::NAN, ..ok.clone() }, "min_p"),
            (SamplingParams { repeat_penalty: 0.0, ..ok.clone() }, "repeat_penalty"),
            (SamplingParams { repeat_penalty: -1.0, ..ok.clone() }, "repeat_penalty"),
            (SamplingParams { repeat_penalty: f32::NAN, ..ok.clone() }, "repeat_penalty"),
            (SamplingParams { presence_penalty: f32::INFINITY, ..ok.clone() }, "presence_penalty"),
            (SamplingParams { frequency_penalty: f32::NAN, ..ok.clone() }, "frequency_penalty"),
        ];
        for (params, name) in cases {
            let err = params.validate().expect_err(name).to_string();
            assert!(err.contains(name), "{err:?} should name {name}");
            assert!(Sampler::new(params).is_err(), "Sampler::new must validate {name}");
        }
    }

    #[test]
    fn validate_accepts_the_edges_of_each_range() {
        let ok =
            SamplingParams { temperature: 0.0, top_p: 1.0, min_p: 1.0, repeat_penalty: 0.01, ..Default::default() };
        assert!(ok.validate().is_ok());
        let ok = SamplingParams { min_p: 0.0, presence_penalty: -2.0, frequency_penalty: 2.0, ..Default::default() };
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn log_softmax_gives_normalized_log_probabilities() {
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let total: f32 = lp.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!((lp[2] - lp[1] - 1.0).abs() < 1e-6);
        assert!((lp[0] - (1.0f32 - (1.0f32.exp() + 2.0f32.exp() + 3.0f32.exp()).ln())).abs() < 1e-6);
        assert_eq!(log_softmax(&[f32::NEG_INFINITY, 0.0]), vec![f32::NEG_INFINITY, 0.0]);
    }
}
