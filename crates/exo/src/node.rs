//! `exo` with no subcommand: a node serving the OpenAI-compatible API for the models in its models folder.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use exo_api::{Inference, ModelStore};
use exo_engine::KvType;

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Address the API listens on.
    #[arg(long, env = "EXO_API_HOST", default_value = "0.0.0.0")]
    pub api_host: String,
    /// Port of the API (0: any free port).
    #[arg(long, env = "EXO_API_PORT", default_value_t = 52415)]
    pub api_port: u16,
    /// Folder of GGUF files the node serves by name (default: ~/.cache/exo/models).
    #[arg(long, env = "EXO_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// A model to load at start (a name in the models folder, or a path); otherwise models load on first use.
    #[arg(long, env = "EXO_MODEL")]
    pub model: Option<String>,
    /// CPU threads (default: all cores).
    #[arg(short, long, env = "EXO_THREADS")]
    pub threads: Option<usize>,
    /// How the KV cache stores keys and values: f16 or f32.
    #[arg(long, env = "EXO_KV_TYPE", default_value = "f16")]
    pub kv_type: KvType,
    /// Requests that may wait for the model before new ones are refused (503).
    #[arg(long, env = "EXO_QUEUE", default_value_t = 16)]
    pub queue: usize,
}

pub fn node(args: NodeArgs) -> Result<()> {
    crate::set_threads(args.threads)?;
    let models_dir = match args.models_dir {
        Some(d) => d,
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set; give --models-dir")?;
            PathBuf::from(home).join(".cache/exo/models")
        }
    };
    if args.queue == 0 {
        anyhow::bail!("--queue must be at least 1");
    }
    let store = ModelStore::new(&models_dir);
    if let Some(m) = &args.model {
        store.resolve(m).map_err(|e| anyhow::anyhow!("--model: {e}"))?;
    }
    let inference = Inference::start(store, args.queue, args.kv_type, args.model.clone());

    // Two runtime threads are plenty for HTTP: tensor work runs on the inference thread and the engine's pool.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.api_host.as_str(), args.api_port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.api_host, args.api_port))?;
        let addr = listener.local_addr()?;
        eprintln!("exo node: OpenAI API on http://{addr}/v1 (models from {})", models_dir.display());
        axum::serve(listener, exo_api::router(inference)).with_graceful_shutdown(shutdown()).await?;
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
