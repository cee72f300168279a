//! One request's token-by-token decoding state: sampling, end-of-generation tokens, stop strings, the token
//! limit, and streaming text. It sits between whatever produces logits (a [`ShardChain`] here, a ring of nodes in
//! the cluster) and whatever shows the text.

use std::time::{Duration, Instant};

use crate::chain::ShardChain;
use crate::error::{EngineError, Result};
use crate::sampler::{Sampler, SamplingParams};
use crate::stop::{StopMatcher, StopOutcome};
use crate::tokenizer::{TextStream, Tokenizer};

/// What a request asks of generation, beyond its prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Text that ends generation when produced; it is never emitted.
    pub stop: Vec<String>,
    /// Keep generating past end-of-generation tokens (they are masked out instead).
    pub ignore_eos: bool,
    /// Control tokens the text shows all the same (a tool-call format's markers, [`crate::tool_calls::ToolFormat::preserved`]).
    pub preserved: Vec<u32>,
}

/// Why generation ended, in OpenAI's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// The token limit or the end of the context.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// The outcome of one decoding step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The chosen token: feed it to the model for the next step (unless `finished`).
    pub token: u32,
    /// Text that is now safe to show.
    pub text: String,
    pub finished: Option<FinishReason>,
}

pub struct Generation<'a> {
    tokenizer: &'a Tokenizer,
    sampler: Sampler,
    text: TextStream<'a>,
    stop: StopMatcher,
    history: Vec<u32>,
    banned: Vec<u32>,
    ignore_eos: bool,
    max_tokens: usize,
    generated: usize,
    finished: Option<FinishReason>,
}

impl<'a> Generation<'a> {
    pub fn new(tokenizer: &'a Tokenizer, prompt: &[u32], params: &GenerationParams) -> Result<Self> {
        if params.max_tokens == 0 {
            return Err(EngineError::InvalidSampling("max tokens must be at least 1".into()));
        }
        let banned = if params.ignore_eos { tokenizer.eog_ids().to_vec() } else { Vec::new() };
        let mut history = Vec::with_capacity(prompt.len() + params.max_tokens.min(1 << 16));
        history.extend_from_slice(prompt);
        Ok(Self {
            tokenizer,
            sampler: Sampler::new(params.sampling.clone())?,
            text: TextStream::preserving(tokenizer, params.preserved.clone()),
            stop: StopMatcher::new(params.stop.clone()),
            history,
            banned,
            ignore_eos: params.ignore_eos,
            max_tokens: params.max_tokens,
            generated: 0,
            finished: None,
        })
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    pub fn finished(&self) -> Option<FinishReason> {
        self.finished
    }

    /// The stop string that ended generation, if one did.
    pub fn stop_string(&self) -> Option<&str> {
        self.stop.matched()
    }

    /// Prompt and generated tokens.
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// Chooses the next token from the model's logits for the last position.
    pub fn step(&mut self, logits: &mut [f32]) -> Step {
        let token = self.sampler.sample(logits, &self.history, &self.banned);
        self.accept(token)
    }

    /// Takes a token chosen elsewhere (by the node holding the last layers, with the same sampling parameters):
    /// the same bookkeeping as [`Generation::step`] without sampling.
    pub fn accept(&mut self, token: u32) -> Step {
        self.history.push(token);
        self.generated += 1;
        let mut text = String::new();
        if !self.ignore_eos && self.tokenizer.is_eog(token) {
            self.finished = Some(FinishReason::Stop);
        } else {
            let piece = self.text.push(token);
            match self.stop.push(&piece) {
                StopOutcome::Continue(t) => text = t,
                StopOutcome::Stopped(t) => {
                    text = t;
                    self.finished = Some(FinishReason::Stop);
                    return Step { token, text, finished: self.finished };
                }
            }
            if self.generated >= self.max_tokens {
                self.finished = Some(FinishReason::Length);
            }
        }
        if self.finished.is_some() {
            text.push_str(&self.flush());
        }
        Step { token, text, finished: self.finished }
    }

    /// Ends generation early (the context is full): returns the text still held back.
    pub fn end(&mut self, reason: FinishReason) -> String {
        self.finished = Some(reason);
        self.flush()
    }

    fn flush(&mut self) -> String {
        let tail = self.text.finish();
        match self.stop.push(&tail) {
            StopOutcome::Stopped(t) => t,
            StopOutcome::Continue(mut t) => {
                t.push_str(&self.stop.finish());
                t
            }
        }
    }
}

/// Timings and counts of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationReport {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_time: Duration,
    pub generation_time: Duration,
    pub finish_reason: FinishReason,
}

impl GenerationReport {
    pub fn prompt_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }

    /// Tokens per second after the first (which came out of prompt processing).
    pub fn generation_tokens_per_second(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.generation_time.as_secs_f64().max(1e-9)
    }
}

/// Runs `prompt` through `chain` from an empty cache and generates until a finish condition, passing each piece
/// of text to `emit` as soon as it is safe to show.
pub fn generate(
    chain: &mut ShardChain,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    params: &GenerationParams,
    mut emit: impl FnMut(&str),
) -> Result<GenerationReport> {
    if prompt.is_empty() {
        return Err(EngineError::Tokenizer("the prompt is empty: there is nothing to continue".into()));
    }
    if prompt.len() >= chain.max_len() {
        return Err(EngineError::PromptTooLong { prompt: prompt.len(), context: chain.max_len() });
    }
    let mut generation = Generation::new(tokenizer, prompt, params)?;
    chain.reset();
    let start = Instant::now();
    let mut logits = chain.forward(prompt)?;
    let prompt_time = start.elapsed();
    let start = Instant::now();
    let finish_reason = loop {
        let step = generation.step(&mut logits);
        emit(&step.text);
        if let Some(reason) = step.finished {
            break reason;
        }
        if chain.position() >= chain.max_len() {
            emit(&generation.end(FinishReason::Length));
            break FinishReason::Length;
        }
        logits = chain.forward(&[step.token])?;
    };
    Ok(GenerationReport {
        prompt_tokens: prompt.len(),
        generated_tokens: generation.generated(),
        prompt_time,
        generation_time: start.elapsed(),
        finish_reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::tiny_test_tokenizer;

    fn params(max_tokens: usize, stop: &[&str], ignore_eos: bool) -> GenerationParams {
        GenerationParams {
            max_tokens,
            sampling: SamplingParams::greedy(),
            stop: stop.iter().map(|s| s.to_string()).collect(),
            ignore_eos,
            preserved: Vec::new(),
        }
    }

    /// Logits that make greedy sampling pick `first`, with `second` as the runner-up.
    fn logits_for(t: &Tokenizer, first: u32, second: u32) -> Vec<f32> {
        let mut logits = vec![0.0; t.vocab_size()];
        logits[first as usize] = 10.0;
        logits[second as usize] = 5.0;
        logits
    }

    fn id(t: &Tokenizer, text: &str) -> u32 {
        let ids = t.encode(text, false, true).unwrap();
        assert_eq!(ids.len(), 1, "{text} is one token");
        ids[0]
    }

    #[test]
    fn end_of_generation_token_stops_without_text() {
        let t = tiny_test_tokenizer();
        let eos = t.eos_id().unwrap();
        let hello = id(&t, "hello");
        let mut g = Generation::new(&t, &[hello], &params(10, &[], false)).unwrap();
        let step = g.step(&mut logits_for(&t, hello, eos));
        assert_eq!((step.text.as_str(), step.finished), ("hello", None));
        let step = g.step(&mut logits_for(&t, eos, hello));
        assert_eq!((step.token, step.text.as_str(), step.finished), (eos, "", Some(FinishReason::Stop)));
        assert_eq!(g.history(), &[hello, hello, eos]);
    }

    #[test]
    fn ignore_eos_takes_the_next_best_token() {
        let t = tiny_test_tokenizer();
        let (eos, hello) = (t.eos_id().unwrap(), id(&t, "hello"));
        let mut g = Generation::new(&t, &[hello], &params(10, &[], true)).unwrap();
        let step = g.step(&mut logits_for(&t, eos, hello));
        assert_eq!((step.token, step.finished), (hello, None));
    }

    #[test]
    fn token_limit_finishes_with_length() {
        let t = tiny_test_tokenizer();
        let hello = id(&t, "hello");
        let mut g = Generation::new(&t, &[hello], &params(2, &[], false)).unwrap();
        assert_eq!(g.step(&mut logits_for(&t, hello, 0)).finished, None);
        let step = g.step(&mut logits_for(&t, hello, 0));
        assert_eq!((step.text.as_str(), step.finished), ("hello", Some(FinishReason::Length)));
        assert_eq!(g.generated(), 2);
    }

    #[test]
    fn stop_string_across_tokens_is_cut() {
        let t = tiny_test_tokenizer();
        let (hello, world) = (id(&t, "hello"), id(&t, " world"));
        let mut g = Generation::new(&t, &[hello], &params(10, &["o wor"], false)).unwrap();
        // "hello" may end a stop string's start ("o"), so its last letter is held back.
        let step = g.step(&mut logits_for(&t, hello, world));
        assert_eq!((step.text.as_str(), step.finished), ("hell", None));
        let step = g.step(&mut logits_for(&t, world, hello));
        assert_eq!((step.text.as_str(), step.finished), ("", Some(FinishReason::Stop)));
    }

    #[test]
    fn ending_early_releases_held_text() {
        let t = tiny_test_tokenizer();
        let hello = id(&t, "hello");
        let mut g = Generation::new(&t, &[hello], &params(10, &["o wor"], false)).unwrap();
        assert_eq!(g.step(&mut logits_for(&t, hello, 0)).text, "hell");
        assert_eq!(g.end(FinishReason::Length), "o");
        assert_eq!(g.finished(), Some(FinishReason::Length));
    }

    #[test]
    fn bad_parameters_are_refused() {
        let t = tiny_test_tokenizer();
        assert!(matches!(Generation::new(&t, &[1], &params(0, &[], false)), Err(EngineError::InvalidSampling(_))));
        let mut p = params(5, &[], false);
        p.sampling.top_p = -0.5;
        assert!(matches!(Generation::new(&t, &[1], &p), Err(EngineError::InvalidSampling(_))));
    }
}
