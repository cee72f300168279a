//! `exo bench MODEL`: prompt-processing and decode speed of the engine, measured the way llama.cpp's
//! `llama-bench` does (pp: one batch of N prompt tokens from an empty cache; tg: N tokens one at a time from an
//! empty cache), so `scripts/bench.sh` can put the two side by side.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use exo_engine::kernels::Kernels;
use exo_engine::{Backend, Gguf, KvType, ShardChain};

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
    /// What the model computes on: auto (the first GPU found, else the CPU), cpu, cuda:N or metal.
    #[arg(long, env = "EXO_DEVICES", default_value = "auto")]
    pub devices: exo_engine::DeviceSelection,
    /// How the KV cache stores keys and values: f16 or f32.
    #[arg(long, default_value = "f16")]
    pub kv_type: KvType,
    /// Which implementation runs the model: auto (our CPU kernels when they handle every weight type), cpu, or
    /// candle (candle's own kernels, for comparison).
    #[arg(long, default_value = "auto")]
    pub backend: Backend,
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
    let max_len = args.prompt_tokens.max(args.gen_tokens) + 1;
    let found = crate::first_device(&args.devices, "bench")?;
    let mut chain = ShardChain::load_whole_with(&gguf, max_len, &found.device, args.kv_type, args.backend)?;
    let backend = chain.shards()[0].backend();
    let kernels =
        if backend == "cpu" { format!("{:?}", Kernels::best().isa()).to_lowercase() } else { "candle".into() };
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
    let tensor_bytes: u64 = chain.shards().iter().map(|s| s.bytes_loaded()).sum();
    let kv_bytes = chain.cache_bytes() as u64;
    let peak_rss = peak_rss_bytes();
    if args.json {
        println!(
            "{{\"model\":{:?},\"threads\":{threads},\"device\":{:?},\"backend\":\"{backend}\",\"kernels\":\"{kernels}\",\"kv_type\":\"{}\",\"pp_tokens\":{},\"tg_tokens\":{},\"pp_tps\":{pp:.2},\"tg_tps\":{tg:.2},\"tensor_bytes\":{tensor_bytes},\"kv_bytes\":{kv_bytes},\"peak_rss_bytes\":{}}}",
            args.model.display().to_string(),
            found.info.name,
            args.kv_type,
            args.prompt_tokens,
            args.gen_tokens,
            peak_rss.map_or("null".to_string(), |b| b.to_string()),
        );
    } else {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        println!(
            "{}: {}, threads {threads}, {kernels} kernels, pp{} {pp:.1} tokens/s, tg{} {tg:.1} tokens/s",
            args.model.display(),
            found.info,
            args.prompt_tokens,
            args.gen_tokens
        );
        println!(
            "memory: tensors {:.1} MiB + KV cache ({}) {:.1} MiB; peak resident {}",
            mib(tensor_bytes),
            args.kv_type,
            mib(kv_bytes),
            peak_rss.map_or("unknown".to_string(), |b| format!("{:.1} MiB", mib(b)))
        );
    }
    Ok(())
}

/// The process's peak resident set size (`VmHWM` in `/proc/self/status`), where the system reports it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
