//! The `exo` command: parses the command line, sets up logging and threads, and runs the chosen subcommand; with
//! no subcommand it starts a node.

mod bench;
mod cluster_key;
mod models;
mod node;
mod run;
mod score;
mod speed;
mod topology;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "exo", version, about = "Pool the machines you own into one LLM inference cluster")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    node: node::NodeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate text from a prompt with a GGUF model on this machine.
    Run(run::RunArgs),
    /// Measure prompt-processing and decode speed (like llama.cpp's llama-bench).
    Bench(bench::BenchArgs),
    /// Write a text's teacher-forced log-probabilities under a model (to compare devices and backends).
    Score(score::ScoreArgs),
    /// Print a running node's view of the cluster: nodes, memory, layers, links and plans.
    Topology(topology::TopologyArgs),
    /// Download a model ahead of time (whole, or only what some layers need) into the Hugging Face cache.
    Download(models::DownloadArgs),
    /// List the models this node can name: the catalog, the models folder and the Hugging Face cache.
    Models(models::ModelsArgs),
    /// Print a new random cluster key (`--write` also keeps it in EXO_HOME, where nodes find it).
    ClusterKey(cluster_key::ClusterKeyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Some(Command::Run(args)) => run::run(args),
        Some(Command::Bench(args)) => bench::bench(args),
        Some(Command::Score(args)) => score::score(args),
        Some(Command::Topology(args)) => topology::topology(args),
        Some(Command::Download(args)) => models::download(args),
        Some(Command::Models(args)) => models::models(args),
        Some(Command::ClusterKey(args)) => cluster_key::cluster_key(args),
        None => node::node(cli.node),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The devices `--devices` names, or an error naming what is missing; with more than one GPU, says that only the
/// first computes (each GPU as a stage of its own is not built yet).
fn find_devices(selection: &exo_engine::DeviceSelection) -> anyhow::Result<Vec<exo_engine::FoundDevice>> {
    exo_engine::devices::find(selection).map_err(|e| anyhow::anyhow!("--devices {selection}: {e}"))
}

/// The device a one-process command (`run`, `bench`, `score`) computes on: the first of `selection`'s, with a
/// warning when there are more (`exo node` uses every one).
fn first_device(selection: &exo_engine::DeviceSelection, command: &str) -> anyhow::Result<exo_engine::FoundDevice> {
    let mut found = find_devices(selection)?;
    if found.len() > 1 {
        tracing::warn!(
            "{} GPUs found; `exo {command}` computes on the first one ({}); `exo node` uses them all",
            found.len(),
            found[0].info
        );
    }
    Ok(found.swap_remove(0))
}

/// Sets the number of CPU threads for tensor work and returns it. Must run before any tensor operation: the
/// engine's pool starts on first use, and rayon (candle's backend) reads `RAYON_NUM_THREADS` when it starts.
fn set_threads(threads: Option<usize>) -> anyhow::Result<usize> {
    let n = match threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    };
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    exo_engine::cpu::set_threads(n);
    Ok(n)
}
