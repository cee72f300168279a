//! `exo score`: teacher-forced log-probabilities of a text under a model, on a chosen device and backend. Each
//! token of the text goes through the model in turn (the decode path, as generation runs it), and the
//! log-softmax of the logits after it is written out, so that two devices or backends can be compared position by
//! position (`scripts/gpu-check.sh` compares CUDA with the CPU this way).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use exo_engine::tokenizer::Tokenizer;
use exo_engine::{Backend, Gguf, KvType, ShardChain};

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Path to a GGUF file.
    pub model: PathBuf,
    /// The text to score (tokenized as is, with the model's start token).
    #[arg(short, long)]
    pub prompt: String,
    /// Where to write the log-probabilities: one row per token after the first, a value per vocabulary entry,
    /// f32 little-endian.
    #[arg(short, long)]
    pub out: PathBuf,
    /// What the model computes on: auto, cpu, cuda:N or metal.
    #[arg(long, default_value = "auto")]
    pub devices: exo_engine::DeviceSelection,
    /// Which implementation runs the model: auto, cpu or candle.
    #[arg(long, default_value = "auto")]
    pub backend: Backend,
    /// How the KV cache stores keys and values: f16 or f32.
    #[arg(long, default_value = "f32")]
    pub kv_type: KvType,
    /// CPU threads (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
}

pub fn score(args: ScoreArgs) -> Result<()> {
    crate::set_threads(args.threads)?;
    let gguf = Gguf::open(&args.model)?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    let tokens = tokenizer.encode(&args.prompt, true, false)?;
    if tokens.len() < 2 {
        bail!("the prompt is {} token(s): scoring needs at least 2", tokens.len());
    }
    let found = crate::first_device(&args.devices, "score")?;
    let mut chain = ShardChain::load_whole_with(&gguf, tokens.len(), &found.device, args.kv_type, args.backend)?;
    let file = std::fs::File::create(&args.out).with_context(|| format!("cannot write {}", args.out.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut vocab = 0;
    for &token in &tokens[..tokens.len() - 1] {
        let logits = chain.forward(&[token])?;
        vocab = logits.len();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let log_sum = logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32 + max;
        for l in logits {
            out.write_all(&(l - log_sum).to_le_bytes())?;
        }
    }
    out.flush()?;
    println!(
        "{{\"positions\":{},\"vocab\":{vocab},\"device\":{:?},\"backend\":{:?},\"tokens\":{:?}}}",
        tokens.len() - 1,
        found.info.name,
        chain.shards()[0].backend(),
        tokens
    );
    Ok(())
}
