//! `exo bench MODEL`: prompt-processing and decode speed of the engine, measured the way llama.cpp's
//! `llama-bench` does (pp: one batch of N prompt tokens from an empty cache; tg: N tokens one at a time from an
//! empty cache), so `scripts/bench.sh` can put the two side by side.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use exo_engine::{Device, Gguf, ShardChain};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Path to a GGUF model file.
    pub model: PathBuf,
    /// Prompt tokens processed in one batch.
    #[arg(short = 'p', long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens generated one at a time.
    #[arg(short = 'n', long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Repetitions of each test (after one warm-up run).
    #[arg(short, long, default_value_t = 3)]
    pub repetitions: usize,
    /// CPU threads (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    pub json: bool,
}

pub fn bench(args: BenchArgs) -> Result<()> {
    if args.prompt_tokens == 0 || args.gen_tokens == 0 || args.repetitions == 0 {
        bail!("--prompt-tokens, --gen-tokens and --repetitions must be at least 1");
    }
    let threads = crate::set_threads(args.threads)?;
    let gguf = Gguf::open(&args.model)?;
    let mut chain = ShardChain::load_whole(&gguf, args.prompt_tokens.max(args.gen_tokens) + 1, &Device::Cpu)?;
    let vocab = chain.shards()[0].config().vocab_size as u32;
    // Token ids spread over the vocabulary; speed does not depend on which tokens they are.
    let prompt: Vec<u32> = (0..args.prompt_tokens as u32).map(|i| (i * 7919 + 13) % vocab).collect();

    let mut pp = Vec::new();
    let mut tg = Vec::new();
    for rep in 0..=args.repetitions {
        chain.reset();
        let start = Instant::now();
        chain.forward(&prompt)?;
        let pp_rate = args.prompt_tokens as f64 / start.elapsed().as_secs_f64();

        chain.reset();
        let start = Instant::now();
        let mut token = prompt[0];
        for _ in 0..args.gen_tokens {
            let logits = chain.forward(&[token])?;
            token = exo_engine::sampler::argmax(&logits);
        }
        let tg_rate = args.gen_tokens as f64 / start.elapsed().as_secs_f64();
        if rep > 0 {
            pp.push(pp_rate);
            tg.push(tg_rate);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (pp, tg) = (mean(&pp), mean(&tg));
    if args.json {
        println!(
            "{{\"model\":{:?},\"threads\":{threads},\"pp_tokens\":{},\"tg_tokens\":{},\"pp_tps\":{pp:.2},\"tg_tps\":{tg:.2}}}",
            args.model.display().to_string(),
            args.prompt_tokens,
            args.gen_tokens
        );
    } else {
        println!(
            "{}: threads {threads}, pp{} {pp:.1} tokens/s, tg{} {tg:.1} tokens/s",
            args.model.display(),
            args.prompt_tokens,
            args.gen_tokens
        );
    }
    Ok(())
}
