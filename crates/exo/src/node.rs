//! `exo` with no subcommand: a node. It joins the cluster (peer server, heartbeats, discovery) and serves the
//! OpenAI-compatible API and the web chat for the models in its models folder, running requests over the
//! cluster. Owns the node's settings (flags and `EXO_*` variables), its persistent identity under `EXO_HOME`, and
//! a clean shutdown on SIGINT/SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use exo_api::{Inference, InferenceConfig};
use exo_cluster::{Cluster, ClusterConfig, Discovery};
use exo_engine::KvType;

/// How long open connections may take to close after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Address the API listens on.
    #[arg(long, env = "EXO_API_HOST", default_value = "0.0.0.0")]
    pub api_host: IpAddr,
    /// Port of the API and web chat (0: any free port).
    #[arg(long, env = "EXO_API_PORT", default_value_t = 52415)]
    pub api_port: u16,
    /// Port other nodes reach this one at (0: any free port).
    #[arg(long, env = "EXO_LISTEN_PORT", default_value_t = 52416)]
    pub listen_port: u16,
    /// Peers to join besides those mDNS finds, as host:port of their peer port, comma-separated.
    #[arg(long, env = "EXO_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// How to find peers on the LAN: mdns or none.
    #[arg(long, env = "EXO_DISCOVERY", default_value = "mdns")]
    pub discovery: Discovery,
    /// The cluster's key (64 hex digits, from `exo cluster-key`; default: the one kept in EXO_HOME, if any).
    /// With a key, only nodes holding the same key join, over mutually authenticated TLS 1.3.
    #[arg(long, env = "EXO_CLUSTER_KEY", hide_env_values = true)]
    pub cluster_key: Option<String>,
    /// This node's ID (default: one generated once and kept in EXO_HOME, by default ~/.exo).
    #[arg(long, env = "EXO_NODE_ID")]
    pub node_id: Option<String>,
    #[command(flatten)]
    pub store: crate::models::StoreArgs,
    /// A model to load at start (a catalog name, hf:owner/repo/file.gguf, a name in the models folder, or a
    /// path); otherwise models load on first use.
    #[arg(long, env = "EXO_MODEL")]
    pub model: Option<String>,
    /// CPU threads (default: all cores).
    #[arg(short, long, env = "EXO_THREADS")]
    pub threads: Option<usize>,
    /// What the layers compute on: auto (every GPU found, else the CPU), cpu, cuda:0[,cuda:1...] or metal.
    #[arg(long, env = "EXO_DEVICES", default_value = "auto")]
    pub devices: exo_engine::DeviceSelection,
    /// Whether the CPU holds the layers of this node's stage that its GPUs cannot (llama.cpp's partial offload):
    /// auto (yes, with the machine's memory, after the GPUs) or none (the GPUs' memory bounds the node).
    #[arg(long, env = "EXO_CPU_LAYERS", default_value = "auto")]
    pub cpu_layers: CpuLayers,
    /// Most memory the node offers for layers, their KV cache and buffers, e.g. 8G or 512M (default: what the
    /// machine has available). No node is given more layers than this holds; a model that does not fit in the
    /// cluster is refused with 503.
    #[arg(long, env = "EXO_MEMORY_LIMIT", value_parser = exo_cluster::memory::parse_size)]
    pub memory_limit: Option<u64>,
    /// Measure this machine's speed at --threads (once per CPU and thread count, kept in EXO_HOME/speed.json) and
    /// advertise it, so plans give faster nodes more layers; false: advertise none, and plans split by memory.
    #[arg(long, env = "EXO_CALIBRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub calibrate: bool,
    /// Most tokens of a sequence, prompt and answer (0: the model's full context).
    #[arg(short = 'c', long, env = "EXO_CTX_SIZE", default_value_t = 8192)]
    pub ctx_size: usize,
    /// How the KV cache stores keys and values: f16 or f32.
    #[arg(long, env = "EXO_KV_TYPE", default_value = "f16")]
    pub kv_type: KvType,
    /// Requests that may wait for the model before new ones are refused (503).
    #[arg(long, env = "EXO_QUEUE", default_value_t = 16)]
    pub queue: usize,
    /// Require this key on every API request (Authorization: Bearer KEY, or x-api-key: KEY); the health check and
    /// the web chat's page stay open, and the page asks for the key.
    #[arg(long, env = "EXO_API_KEY", value_parser = exo_api::access::parse_api_key, hide_env_values = true)]
    pub api_key: Option<String>,
    /// A web origin (scheme://host[:port]) whose pages may call the API, besides the node's own; repeatable or
    /// comma-separated. Requests from any other origin are refused (403).
    #[arg(long, env = "EXO_CORS_ORIGIN", value_delimiter = ',', value_parser = exo_api::access::parse_origin)]
    pub cors_origin: Vec<String>,
}

pub fn node(args: NodeArgs) -> Result<()> {
    let threads = crate::set_threads(args.threads)?;
    let home_dir = crate::models::home_dir;
    let models_dir = args.store.models_dir()?;
    let store = args.store.store()?;
    // The operator's --model may be a path; requests may then name that path too, and no other.
    if let Some(Ok(exo_models::ModelRef::Path(path))) = args.model.as_deref().map(|m| store.resolve(m)) {
        store.allow_path(&path);
    }
    if args.queue == 0 {
        bail!("--queue must be at least 1");
    }
    if args.api_port != 0 && args.api_port == args.listen_port {
        bail!("--api-port and --listen-port must differ (both are {})", args.api_port);
    }
    let home = home_dir("EXO_HOME", ".exo")?;
    let id = match args.node_id {
        Some(id) => check_node_id(&id).map(|_| id).context("--node-id")?,
        None => stored_node_id(&home)?,
    };
    for p in &args.peers {
        if p.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
            bail!("--peers: '{p}' is not host:port");
        }
    }
    let context = if args.ctx_size == 0 { usize::MAX } else { args.ctx_size };
    let cluster_key = crate::cluster_key::node_key(args.cluster_key.as_deref())?;
    let mut devices = crate::find_devices(&args.devices)?;
    // Once every setting is checked, and before the node announces itself: peers plan with the figures from its
    // first hello on.
    let speed = if args.calibrate { crate::speed::speed(&home, threads) } else { Default::default() };
    for d in devices.iter_mut().filter(|d| !d.info.is_cpu() && args.calibrate) {
        d.info.matvec_bytes_per_s = crate::speed::device_speed(&home, d);
    }
    devices = with_cpu_layers(devices, args.cpu_layers);

    // Two runtime threads are plenty for HTTP and the peer transport: tensor work runs on the inference and host
    // threads and the engine's pool.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.api_host, args.api_port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.api_host, args.api_port))?;
        let addr = listener.local_addr()?;
        warn_if_open(args.api_host, args.api_key.is_some());
        let access = exo_api::Access::new(args.api_key.clone(), args.cors_origin.clone());
        let cluster = Cluster::start(ClusterConfig {
            id: id.clone(),
            listen: SocketAddr::new(args.api_host, args.listen_port),
            api_port: addr.port(),
            threads,
            memory_limit: args.memory_limit,
            kv_type: args.kv_type,
            store,
            peers: args.peers.clone(),
            discovery: args.discovery,
            cluster_key,
            speed,
            devices,
        })
        .await?;
        let config = InferenceConfig { queue: args.queue, context };
        let preload = args.model.clone();
        let inference = tokio::task::spawn_blocking(move || Inference::start(cluster, config, preload.as_deref()))
            .await?
            .map_err(|e| anyhow::anyhow!("--model: {e}"))?;
        let peer = inference.cluster().peer_address();
        eprintln!(
            "exo node {id}: OpenAI API on http://{addr}/v1, web chat on http://{addr}/, peers on {peer} (models from {})",
            models_dir.display()
        );

        // On SIGINT or SIGTERM: end every request with an error, stop accepting, and wait (a while) for open
        // connections to close.
        let signalled = Arc::new(tokio::sync::Notify::new());
        let graceful = {
            let (inference, signalled) = (inference.clone(), signalled.clone());
            async move {
                shutdown_signal().await;
                eprintln!("exo node: shutting down");
                inference.shut_down();
                signalled.notify_one();
            }
        };
        let serve = axum::serve(listener, exo_api::router(inference, access)).with_graceful_shutdown(graceful);
        tokio::select! {
            served = serve => served?,
            _ = async { signalled.notified().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                tracing::warn!("connections still open {} s after the shutdown signal; closing them", SHUTDOWN_GRACE.as_secs());
            }
        }
        Ok(())
    })
}

/// `--cpu-layers`: whether the CPU takes the layers a node's GPUs cannot hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuLayers {
    Auto,
    None,
}

impl std::str::FromStr for CpuLayers {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "none" => Ok(Self::None),
            _ => Err(format!("unknown value '{s}' (expected auto or none)")),
        }
    }
}

/// The devices a node computes on, in the order its layers run: the GPUs, then (with `--cpu-layers auto`) the CPU
/// for what they cannot hold. A GPU without memory of its own (Metal's shares the machine's) gains nothing from
/// the CPU beside it, and the CPU alone is the CPU.
fn with_cpu_layers(mut devices: Vec<exo_engine::FoundDevice>, cpu_layers: CpuLayers) -> Vec<exo_engine::FoundDevice> {
    let gpus_with_memory = devices.iter().any(|d| !d.info.is_cpu() && d.info.memory_total > 0);
    if cpu_layers == CpuLayers::Auto && gpus_with_memory && !devices.iter().any(|d| d.info.is_cpu()) {
        devices.push(exo_engine::FoundDevice::cpu());
    }
    devices
}

/// Without an API key, an API listening beyond this machine lets anyone who can reach it use the node: say so once.
fn warn_if_open(host: IpAddr, keyed: bool) {
    if !keyed && !host.is_loopback() {
        tracing::warn!(
            "the API on {host} has no key and is open to the network: anyone who can reach this port can run models \
             and make this node download files; set --api-key KEY (or EXO_API_KEY) to require a key, or \
             --api-host 127.0.0.1 to serve this machine only"
        );
    }
}

/// Node IDs name nodes in logs, topologies and plans: 1 to 64 letters, digits, `-`, `_` or `.`.
fn check_node_id(id: &str) -> Result<()> {
    let ok = (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        bail!("'{id}' is not a node ID: use 1 to 64 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

/// The ID kept in `home/node_id`, made (random, 128 bits) and kept on first use.
fn stored_node_id(home: &Path) -> Result<String> {
    let file = home.join("node_id");
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let id = text.trim().to_string();
            check_node_id(&id).with_context(|| format!("{} holds a bad node ID", file.display()))?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("{:032x}", rand::random::<u128>());
            std::fs::create_dir_all(home).with_context(|| format!("cannot create {}", home.display()))?;
            // Written under another name and renamed, so a crash never leaves half an ID.
            let partial = home.join(format!("node_id.{}.tmp", std::process::id()));
            std::fs::write(&partial, format!("{id}\n"))
                .with_context(|| format!("cannot write {}", partial.display()))?;
            std::fs::rename(&partial, &file).with_context(|| format!("cannot write {}", file.display()))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_follows_gpus_with_their_own_memory_unless_told_not_to() {
        let gpu = |name: &str, total: u64| exo_engine::FoundDevice {
            info: exo_engine::DeviceInfo {
                name: name.into(),
                description: "GPU".into(),
                memory_total: total,
                memory_free: total,
                compute_capability: None,
                matvec_bytes_per_s: 0,
            },
            device: exo_engine::Device::Cpu,
        };
        let names = |d: Vec<exo_engine::FoundDevice>| d.into_iter().map(|d| d.info.name).collect::<Vec<_>>();
        let two = || vec![gpu("cuda:0", 24 << 30), gpu("cuda:1", 24 << 30)];
        assert_eq!(names(with_cpu_layers(two(), CpuLayers::Auto)), ["cuda:0", "cuda:1", "cpu"]);
        assert_eq!(names(with_cpu_layers(two(), CpuLayers::None)), ["cuda:0", "cuda:1"]);
        assert_eq!(names(with_cpu_layers(vec![gpu("metal", 0)], CpuLayers::Auto)), ["metal"]);
        assert_eq!(names(with_cpu_layers(vec![exo_engine::FoundDevice::cpu()], CpuLayers::Auto)), ["cpu"]);
        assert_eq!("NONE".parse::<CpuLayers>(), Ok(CpuLayers::None));
        assert!("some".parse::<CpuLayers>().unwrap_err().contains("expected auto or none"));
    }

    #[test]
    fn node_ids_are_checked_and_kept() {
        assert!(check_node_id("node-1.a_b").is_ok());
        for bad in ["", "has space", "slash/y", &"x".repeat(65)] {
            assert!(check_node_id(bad).is_err(), "{bad:?}");
        }
        let home = std::env::temp_dir().join(format!("exo-node-id-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        let first = stored_node_id(&home).unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(stored_node_id(&home).unwrap(), first);
        std::fs::write(home.join("node_id"), "not an id!\n").unwrap();
        let e = format!("{:#}", stored_node_id(&home).unwrap_err());
        assert!(e.contains("bad node ID") && e.contains("not an id!"), "{e}");
        std::fs::remove_dir_all(&home).unwrap();
    }
}
