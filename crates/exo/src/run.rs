//! `exo run MODEL`: load a GGUF model on this machine and stream a completion of one prompt to stdout.

use std::io::{IsTerminal, Read, Write};

use anyhow::{bail, Context, Result};
use clap::Args;
use exo_engine::chat_template::{ChatMessage, ChatTemplate};
use exo_engine::generation::{generate, GenerationParams};
use exo_engine::sampler::SamplingParams;
use exo_engine::tokenizer::Tokenizer;
use exo_engine::{Backend, Gguf, KvType, ShardChain};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The model: a catalog name (`llama-3.2-1b`, see `exo models`), hf:owner/repo/file.gguf[@revision], a name
    /// in the models folder, or a path to a GGUF file. One from the hub is downloaded whole first, once.
    pub model: String,
    /// The prompt; read from stdin when absent.
    #[arg(short, long)]
    pub prompt: Option<String>,
    /// Tokenize the prompt as it is instead of sending it through the chat template as a user message.
    #[arg(long)]
    pub raw: bool,
    /// Most tokens to generate.
    #[arg(short = 'n', long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 always picks the most likely token.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0: off).
    #[arg(long, default_value_t = 40, allow_negative_numbers = true)]
    pub top_k: i64,
    /// Keep the most likely tokens whose probabilities add up to P, in [0, 1] (0: the most likely token only).
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0: off).
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub min_p: f32,
    /// Penalize the last 64 tokens by this factor (1: off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repeat_penalty: f32,
    /// Random seed; the same seed gives the same text.
    #[arg(long)]
    pub seed: Option<u64>,
    /// CPU threads (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// What the model computes on: auto (the first GPU found, else the CPU), cpu, cuda:N or metal.
    #[arg(long, env = "EXO_DEVICES", default_value = "auto")]
    pub devices: exo_engine::DeviceSelection,
    /// Keep generating past end-of-generation tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Stop when this text is generated (may be given several times); it is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// How the KV cache stores keys and values: f16 (half the memory) or f32.
    #[arg(long, default_value = "f16")]
    pub kv_type: KvType,
    #[command(flatten)]
    pub store: crate::models::StoreArgs,
}

impl RunArgs {
    fn generation_params(&self) -> Result<GenerationParams> {
        if self.top_k < 0 {
            bail!("--top-k must be 0 (off) or a positive number of tokens, not {}", self.top_k);
        }
        if self.max_tokens == 0 {
            bail!("--max-tokens must be at least 1");
        }
        let sampling = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k as usize,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            ..SamplingParams::default()
        };
        sampling.validate()?;
        Ok(GenerationParams {
            max_tokens: self.max_tokens,
            sampling,
            stop: self.stop.clone(),
            ignore_eos: self.ignore_eos,
            preserved: Vec::new(),
        })
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    // Check everything the user typed before the slow parts.
    let params = args.generation_params()?;
    crate::set_threads(args.threads)?;
    let prompt = match &args.prompt {
        Some(p) => p.clone(),
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("reading the prompt from stdin (end with Ctrl-D)");
            }
            let mut p = String::new();
            std::io::stdin().read_to_string(&mut p).context("cannot read the prompt from stdin")?;
            p
        }
    };
    if prompt.is_empty() {
        bail!("the prompt is empty: give --prompt TEXT or write it to stdin");
    }

    let store = args.store.store()?;
    let path = match store.resolve(&args.model)? {
        exo_models::ModelRef::Path(path) => path,
        exo_models::ModelRef::Hub { .. } => {
            crate::models::fetch_with_progress(&store, &args.model, exo_models::Need::Whole)?.path
        }
    };
    let gguf = Gguf::open(&path)?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    let prompt_ids = if args.raw {
        tokenizer.encode(&prompt, true, false)?
    } else {
        let template = ChatTemplate::from_gguf(&gguf, &tokenizer)?;
        template.prompt(&[ChatMessage::new("user", prompt)])?.encode(&tokenizer)?
    };
    let device = crate::first_device(&args.devices, "run")?.device;
    let mut chain = ShardChain::load_whole_with(&gguf, usize::MAX, &device, args.kv_type, Backend::Auto)?;

    let mut stdout = std::io::stdout().lock();
    let mut write_error = None;
    let report = generate(&mut chain, &tokenizer, &prompt_ids, &params, |text| {
        if write_error.is_none() && !text.is_empty() {
            if let Err(e) = stdout.write_all(text.as_bytes()).and_then(|_| stdout.flush()) {
                write_error = Some(e);
            }
        }
    })?;
    if let Some(e) = write_error {
        // A closed pipe (`exo run … | head`) is not worth an error message.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e).context("cannot write to stdout");
        }
    }
    let _ = writeln!(stdout);
    eprintln!(
        "prompt: {} tokens, {:.1} tokens/s | generation: {} tokens, {:.1} tokens/s | finish: {}",
        report.prompt_tokens,
        report.prompt_tokens_per_second(),
        report.generated_tokens,
        report.generation_tokens_per_second(),
        report.finish_reason.as_str()
    );
    Ok(())
}
