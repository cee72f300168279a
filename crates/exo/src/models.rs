//! `exo download` and `exo models`, and the model store every command builds from the same flags: which models a
//! name can mean, where files go, and a progress bar while they download.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use exo_engine::Shard;
use exo_models::{ModelStore, Need, StoreConfig};

/// Where models come from; shared by the node, `run`, `download` and `models`.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Folder of GGUF files served by file name (default: ~/.cache/exo/models).
    #[arg(long, env = "EXO_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Never contact the Hugging Face hub: use the cache (and, for a node, its peers) only. HF_HUB_OFFLINE=1
    /// does the same.
    #[arg(long)]
    pub offline: bool,
}

/// `$VAR`, else `~/{default}`.
pub fn home_dir(var: &str, default: &str) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(var).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").with_context(|| format!("HOME is not set; set {var}"))?;
    Ok(PathBuf::from(home).join(default))
}

impl StoreArgs {
    pub fn models_dir(&self) -> Result<PathBuf> {
        match &self.models_dir {
            Some(d) => Ok(d.clone()),
            None => home_dir("EXO_MODELS_DIR", ".cache/exo/models"),
        }
    }

    pub fn store(&self) -> Result<ModelStore> {
        let mut config = StoreConfig::from_env(Some(self.models_dir()?), &home_dir("EXO_HOME", ".exo")?);
        config.hub.offline |= self.offline;
        Ok(ModelStore::new(config)?)
    }
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// A catalog name (`llama-3.2-1b`, `llama-3.1-70b:q8_0`; see `exo models`) or hf:owner/repo/file.gguf[@revision].
    pub model: String,
    /// Only what these layers need (e.g. `0-15`, 0-based and inclusive): their tensors, plus the embeddings on the
    /// first layer and the output head on the last. Default: the whole file.
    #[arg(long)]
    pub layers: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Only the models with something on this machine.
    #[arg(long)]
    pub cached: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Runs `fetch` on a runtime of its own, drawing a progress bar from the store's downloads while it runs.
pub fn fetch_with_progress(store: &ModelStore, model: &str, need: Need) -> Result<exo_models::LocalModel> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let downloads = store.downloads().clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let painter = {
        let done = done.clone();
        std::thread::spawn(move || {
            let style = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            let mut bars: std::collections::HashMap<u64, indicatif::ProgressBar> = Default::default();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::Acquire);
                for d in downloads.list() {
                    let bar = bars.entry(d.id).or_insert_with(|| {
                        let bar = indicatif::ProgressBar::new(d.total_bytes).with_style(style.clone());
                        bar.set_message(format!("{} ({})", d.file, d.what));
                        bar
                    });
                    bar.set_position(d.done_bytes);
                    if d.state != exo_models::progress::DownloadState::Running && !bar.is_finished() {
                        bar.finish();
                    }
                }
                if finished {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let result = runtime.block_on(store.fetch(model, need, &[]));
    done.store(true, std::sync::atomic::Ordering::Release);
    let _ = painter.join();
    Ok(result?)
}

/// Parses `a-b` into layers a..=b; the model's layer count comes later.
fn parse_layers(text: &str) -> Result<(usize, usize)> {
    let parsed = text.split_once('-').and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
    match parsed {
        Some((a, b)) if a <= b => Ok((a, b)),
        _ => bail!("--layers: '{text}' is not a range like 0-15 (first and last layer, 0-based)"),
    }
}

pub fn download(args: DownloadArgs) -> Result<()> {
    let store = args.store.store()?;
    let layers = args.layers.as_deref().map(parse_layers).transpose()?;
    let local = match layers {
        None => fetch_with_progress(&store, &args.model, Need::Whole)?,
        Some((a, b)) => {
            let header = fetch_with_progress(&store, &args.model, Need::Header)?;
            let gguf = exo_engine::Gguf::open(&header.path)?;
            let total = exo_engine::ModelConfig::from_gguf(&gguf)?.n_layers;
            let shard = Shard::new(a, b, total).map_err(|e| anyhow::anyhow!("--layers: {e}"))?;
            let local = fetch_with_progress(&store, &args.model, Need::Layers(shard))?;
            exo_models::LocalModel { from_hub: local.from_hub + header.from_hub, ..local }
        }
    };
    eprintln!("{} bytes fetched from the hub", local.from_hub);
    println!("{}", local.path.display());
    Ok(())
}

fn mib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

pub fn models(args: ModelsArgs) -> Result<()> {
    use std::fmt::Write as _;
    let store = args.store.store()?;
    let mut table = String::new();
    let _ = writeln!(table, "{:<36} {:>9} {:>6} {:<8} {:<12} SOURCE", "NAME", "SIZE", "LAYERS", "ARCH", "HERE");
    for l in store.list() {
        if args.cached && l.cached_bytes == 0 {
            continue;
        }
        let here = match (l.complete, l.cached_bytes, l.size) {
            (true, _, _) => "yes".to_string(),
            (false, 0, _) => "-".to_string(),
            (false, n, Some(size)) if size > 0 => format!("{:.0}% ({})", 100.0 * n as f64 / size as f64, mib(n)),
            (false, n, _) => mib(n),
        };
        let source = match (&l.repo, &l.file) {
            (Some(repo), Some(file)) => format!("{repo}/{file}"),
            (None, Some(file)) => file.clone(),
            _ => String::new(),
        };
        let _ = writeln!(
            table,
            "{:<36} {:>9} {:>6} {:<8} {:<12} {}",
            l.id,
            l.size.map(mib).unwrap_or_default(),
            l.layers.map(|n| n.to_string()).unwrap_or_default(),
            l.architecture.as_deref().unwrap_or(""),
            here,
            source
        );
    }
    // A reader that stops early (`exo models | head`) is not an error.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), table.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
