//! exo's cluster: nodes that find each other, agree on who holds which layers, and run requests around a ring.
//!
//! | module | owns |
//! |---|---|
//! | [`cluster_key`] | `ClusterKey`: the secret that makes nodes one cluster, made, read and kept |
//! | [`tls`] | how peer connections are made and accepted: plain, or TLS 1.3 with keys derived from the cluster key |
//! | [`node`] | this machine: CPU features, addresses, the description peers get |
//! | [`memory`] | the machine's memory, the node's limit, what a model needs, sizes like `8G` |
//! | [`topology`] | the peers this node knows, heartbeats' results, addresses to try |
//! | [`discovery`] | mDNS: advertising this node and finding others on the LAN |
//! | [`plan`] | `Plan`: which node holds which layers, its id, and checking one a peer sent |
//! | [`placement`] | how many layers each node holds: least predicted time per token within memory, explained |
//! | [`transport`] | the gRPC peer service, clients, and the ordered `Outbox` |
//! | [`host`] | this node's stage of requests: layers, KV caches, forward passes, sampling on the last stage |
//! | [`ring`] | running a request from its origin: Begin, prompt, tokens, failures, End |
//!
//! The cluster treats the engine as a library and knows nothing of HTTP.

pub mod cluster_key;
pub mod discovery;
pub mod error;
pub(crate) mod host;
pub mod memory;
pub mod node;
pub mod placement;
pub mod plan;
pub mod ring;
pub mod tls;
pub mod topology;
pub mod transport;

/// The peer protocol (`proto/exo.proto`), generated at build time.
pub mod proto {
    tonic::include_proto!("exo.v1");
}

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use exo_engine::KvType;
use tokio::runtime::Handle;
use tonic::transport::Channel;

pub use cluster_key::ClusterKey;
pub use error::{ClusterError, Result};
pub use exo_models::ModelStore;
pub use node::NodeInfo;
pub use placement::{PartCost, Placement, StageCost};
pub use plan::{Candidate, Part, Plan, Slot, Stage};
pub use ring::RingRequest;
pub use topology::{Peer, Seen, Topology, PEER_TIMEOUT};

use host::{HostConfig, HostShared, Job};
use proto::peer_client::PeerClient;
use topology::Source;
use transport::{Outbox, PeerServer, PeerService, Router};

/// How often a node says hello to every peer.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How nodes find each other besides `--peers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    Mdns,
    None,
}

impl std::str::FromStr for Discovery {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "mdns" => Ok(Discovery::Mdns),
            "none" => Ok(Discovery::None),
            other => Err(format!("unknown discovery '{other}': expected mdns or none")),
        }
    }
}

/// What a node needs to join a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub id: String,
    /// Address and port of the peer server (port 0: any free port).
    pub listen: SocketAddr,
    pub api_port: u16,
    pub threads: usize,
    pub memory_limit: Option<u64>,
    pub kv_type: KvType,
    pub store: ModelStore,
    /// Static peers, host:port.
    pub peers: Vec<String>,
    pub discovery: Discovery,
    /// With a key, peer connections are TLS between holders of the same key; without one the cluster is open.
    pub cluster_key: Option<ClusterKey>,
    /// This machine's speed at `threads` threads, as [`exo_engine::calibration::measure`] gives it (the binary keeps
    /// it in EXO_HOME); zeros: not measured, and the plan splits by memory alone.
    pub speed: exo_engine::calibration::Speed,
    /// What the node's layers compute on (`--devices`), in the order they run them: GPUs, then the CPU if it
    /// holds what they cannot (`--cpu-layers`). Each is a part of the node's stage. Empty: the CPU.
    pub devices: Vec<exo_engine::FoundDevice>,
}

/// A node of the cluster, as the rest of the program uses it. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    info: Arc<NodeInfo>,
    topology: Arc<Topology>,
    host: mpsc::Sender<Job>,
    shared: Arc<HostShared>,
    router: Router,
    outbox: Outbox,
    runtime: Handle,
    tls: tls::PeerTls,
    store: ModelStore,
    kv_type: KvType,
    /// The last plan used per model, with its placement.
    plans: Mutex<HashMap<String, (Plan, Placement)>>,
    stopping: AtomicBool,
    _discovery: Option<discovery::Mdns>,
}

/// One node in a topology listing.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub description: proto::NodeDescription,
    /// host:port of its peer server.
    pub address: String,
    pub rtt: Option<Duration>,
    /// Throughput of this node's link to it, bytes per second (`None`: this node itself, or not measured yet).
    pub link_bytes_per_s: Option<u64>,
    pub is_self: bool,
}

impl NodeView {
    /// The node as a plan sees it: its memory and speed, its devices with what each offers, and this node's round
    /// trip to it (zero for this node itself).
    pub fn candidate(&self) -> Candidate {
        let d = &self.description;
        let devices = d
            .devices
            .iter()
            .filter(|dev| dev.usable > 0 && !dev.name.is_empty())
            .map(|dev| Slot { device: dev.name.clone(), usable: dev.usable, speed: dev.matvec_bytes_per_s })
            .collect();
        Candidate {
            id: d.id.clone(),
            address: self.address.clone(),
            usable: d.memory_usable,
            speed: d.matvec_bytes_per_s,
            rtt: if self.is_self { Some(Duration::ZERO) } else { self.rtt },
            // This node reaches itself in memory: no link to wait for.
            link_bytes_per_s: if self.is_self { Some(u64::MAX) } else { self.link_bytes_per_s },
            devices,
        }
    }
}

impl Cluster {
    /// Starts the peer server, the heartbeats and discovery on the current tokio runtime.
    pub async fn start(config: ClusterConfig) -> Result<Cluster> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| ClusterError::Engine(format!("cannot listen for peers on {}: {e}", config.listen)))?;
        let local = listener.local_addr().map_err(|e| ClusterError::Engine(e.to_string()))?;
        let info = Arc::new(NodeInfo {
            id: config.id.clone(),
            addresses: node::local_addresses(config.listen.ip()),
            api_port: config.api_port,
            peer_port: local.port(),
            threads: config.threads,
            memory_limit: config.memory_limit,
            speed: config.speed,
            devices: config.devices.iter().map(|d| d.info.clone()).collect(),
        });
        let topology = Arc::new(Topology::default());
        for p in &config.peers {
            topology.add_candidate(p.clone(), Source::Static);
        }
        let tls = match &config.cluster_key {
            Some(key) => tls::PeerTls::keyed(key)?,
            None => {
                tracing::warn!(
                    "node {}: the cluster is open: without a cluster key any machine that reaches port {} can join \
                     it and read its traffic (make a key with `exo cluster-key --write` and give every node the same)",
                    config.id,
                    local.port()
                );
                tls::PeerTls::open()
            }
        };
        let runtime = Handle::current();
        let shared = Arc::new(HostShared::default());
        let router = Router::default();
        let (host, jobs) = mpsc::channel();
        let outbox =
            Outbox::new(config.id.clone(), tls.clone(), runtime.clone(), host.clone(), shared.clone(), router.clone());
        host::start(
            HostConfig {
                id: config.id.clone(),
                store: config.store.clone(),
                kv_type: config.kv_type,
                memory_limit: config.memory_limit,
                runtime: runtime.clone(),
                topology: topology.clone(),
                tls: tls.clone(),
                devices: config.devices.clone(),
            },
            jobs,
            outbox.clone(),
            shared.clone(),
        );
        let service = PeerService {
            store: config.store.clone(),
            info: info.clone(),
            topology: topology.clone(),
            host: host.clone(),
            shared: shared.clone(),
            router: router.clone(),
            forward_wait: transport::FORWARD_WAIT,
        };
        let server = PeerServer::new(service)
            .max_decoding_message_size(transport::MAX_MESSAGE)
            .max_encoding_message_size(transport::MAX_MESSAGE);
        let incoming = accept_peers(listener, tls.clone());
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(server)
                .serve_with_incoming(incoming)
                .await;
            if let Err(e) = served {
                tracing::error!("the peer server stopped: {e}");
            }
        });
        let discovery = match config.discovery {
            Discovery::Mdns => match discovery::Mdns::start(&info, topology.clone()) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!("mDNS discovery is off: {e}");
                    None
                }
            },
            Discovery::None => None,
        };
        let cluster = Cluster {
            inner: Arc::new(Inner {
                info,
                topology,
                host,
                shared,
                router,
                outbox,
                runtime,
                tls,
                store: config.store,
                kv_type: config.kv_type,
                plans: Mutex::new(HashMap::new()),
                stopping: AtomicBool::new(false),
                _discovery: discovery,
            }),
        };
        tokio::spawn(heartbeats(cluster.clone()));
        Ok(cluster)
    }

    pub fn id(&self) -> &str {
        &self.inner.info.id
    }

    pub fn info(&self) -> &NodeInfo {
        &self.inner.info
    }

    pub fn store(&self) -> &ModelStore {
        &self.inner.store
    }

    pub fn kv_type(&self) -> KvType {
        self.inner.kv_type
    }

    /// Makes `model` local enough for `need`, asking the live peers for its bytes before the hub. `model` comes
    /// from a request, so it is resolved as untrusted: never a path the operator did not name
    /// ([`ModelStore::resolve_untrusted`]). Blocks: call it from a thread of its own, not from the async runtime.
    pub fn fetch(&self, model: &str, need: exo_models::Need) -> Result<exo_models::LocalModel> {
        let peers = transport::peer_files(&self.inner.tls, &self.inner.topology, &self.inner.runtime);
        Ok(self.inner.runtime.block_on(self.inner.store.fetch_untrusted(model, need, &peers))?)
    }

    /// host:port other nodes reach this one's peer server at.
    pub fn peer_address(&self) -> String {
        let ip: IpAddr =
            self.inner.info.addresses.first().and_then(|a| a.parse().ok()).unwrap_or(IpAddr::from([127, 0, 0, 1]));
        SocketAddr::new(ip, self.inner.info.peer_port).to_string()
    }

    /// This node's description now.
    pub fn describe(&self) -> proto::NodeDescription {
        let downloaded = transport::downloaded_bytes(&self.inner.store);
        transport::describe(&self.inner.info, &self.inner.shared, &self.inner.topology, downloaded)
    }

    /// This node and every live peer, this node first.
    pub fn nodes(&self) -> Vec<NodeView> {
        let mut nodes = vec![NodeView {
            description: self.describe(),
            address: self.peer_address(),
            rtt: None,
            link_bytes_per_s: None,
            is_self: true,
        }];
        nodes.extend(self.inner.topology.peers().into_iter().map(|p| NodeView {
            description: p.description,
            address: p.address,
            rtt: p.rtt,
            link_bytes_per_s: p.link_bytes_per_s,
            is_self: false,
        }));
        nodes
    }

    /// Whether a model of `n_layers` layers needing `needs` bytes could be planned over the nodes live now; the
    /// error is the refusal a plan would give. Nothing is kept.
    pub fn check_fits(&self, model: &str, n_layers: usize, needs: u64) -> Result<()> {
        Plan::new(model, n_layers, needs, &self.candidates()).map(|_| ())
    }

    /// The nodes live now as a plan sees them: memory, speed, and this node's round trip to each.
    fn candidates(&self) -> Vec<Candidate> {
        self.nodes().iter().map(NodeView::candidate).collect()
    }

    /// A plan for `model` (`n_layers` layers, `needs` bytes in all, hidden states `hidden_size` wide) over the
    /// nodes live now; kept as the model's current plan.
    pub fn plan(&self, model: &str, n_layers: usize, needs: u64, hidden_size: usize) -> Result<Plan> {
        let (plan, mut placement) = Plan::placed(model, n_layers, needs, &self.candidates())?;
        // What one token's hop carries: its hidden state, as f32.
        placement.hop_bytes = 4 * hidden_size as u64;
        if let Ok(mut plans) = self.inner.plans.lock() {
            let changed = plans.get(model).is_none_or(|(old, _)| old.id != plan.id);
            if changed {
                eprintln!("node {}: {}", self.id(), placement.summary());
            }
            plans.insert(model.to_string(), (plan.clone(), placement));
        }
        Ok(plan)
    }

    /// The last plan used for each model.
    pub fn plans(&self) -> Vec<Plan> {
        self.placed_plans().into_iter().map(|(plan, _)| plan).collect()
    }

    /// The last plan used for each model, with how its layers were placed.
    pub fn placed_plans(&self) -> Vec<(Plan, Placement)> {
        let mut plans: Vec<(Plan, Placement)> =
            self.inner.plans.lock().map(|p| p.values().cloned().collect()).unwrap_or_default();
        plans.sort_by(|a, b| a.0.model.cmp(&b.0.model));
        plans
    }

    /// Loads this node's layers of `plan` now, if it has any (`--model`). Blocking.
    pub fn preload(&self, plan: &Plan, context: usize) -> Result<()> {
        let Some(stage) = plan.stage_of(self.id()) else { return Ok(()) };
        let (done, result) = tokio::sync::oneshot::channel();
        self.inner
            .host
            .send(Job::Preload { plan: plan.clone(), stage, context, done })
            .map_err(|_| ClusterError::Engine("the host thread stopped".into()))?;
        result.blocking_recv().map_err(|_| ClusterError::Engine("the host thread dropped the request".into()))?
    }

    /// Bytes held by this node's KV caches now.
    pub fn kv_cache_bytes(&self) -> u64 {
        self.inner.shared.kv_bytes.load(Ordering::Relaxed)
    }

    /// Requests running on the ring end with [`ClusterError::ShuttingDown`].
    pub fn shut_down(&self) {
        self.inner.stopping.store(true, Ordering::Release);
    }
}

/// The streams the peer server serves: every accepted connection that completes `tls`'s handshake. Handshakes run
/// concurrently (a slow or silent client delays no other) but at most [`MAX_HANDSHAKES`] at once.
fn accept_peers(
    listener: tokio::net::TcpListener,
    tls: tls::PeerTls,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<tls::PeerStream>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on accepting.
                    tracing::warn!("accepting a peer connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                if let Some(stream) = tls.accept(tcp).await {
                    let _ = tx.send(Ok(stream)).await;
                }
                drop(permit);
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Most peer handshakes in progress at once.
const MAX_HANDSHAKES: usize = 64;

/// How often each link's throughput is measured again (1 MiB each time).
const PROBE_EVERY: Duration = Duration::from_secs(60);

/// Measures the throughput of the link to peer `id` and records it; a failed probe is only logged (the heartbeat
/// judges whether the peer is alive).
async fn probe_link(inner: Arc<Inner>, c: PeerClient<Channel>, id: String, address: String, rtt: Duration) {
    match transport::probe(c, &address, rtt).await {
        Ok(rate) => inner.topology.link_measured(&id, rate),
        Err(e) => tracing::debug!("probing the link to {id}: {e}"),
    }
}

/// Every [`HEARTBEAT`]: hello to every known address, and drop the peers that stopped answering.
async fn heartbeats(cluster: Cluster) {
    let inner = cluster.inner.clone();
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One client per address, kept from beat to beat: a heartbeat's round trip is one exchange on an open
    // connection, not a new connection each second.
    let mut clients: HashMap<String, PeerClient<Channel>> = HashMap::new();
    loop {
        tick.tick().await;
        let me = cluster.describe();
        let mut calls = tokio::task::JoinSet::new();
        let addresses = inner.topology.addresses();
        clients.retain(|a, _| addresses.contains(a));
        for address in addresses {
            let c = match clients.get(&address) {
                Some(c) => c.clone(),
                None => match transport::client(&inner.tls, &address) {
                    Ok(c) => clients.entry(address.clone()).or_insert(c).clone(),
                    Err(e) => {
                        tracing::debug!("{e}");
                        inner.topology.failed(&address);
                        continue;
                    }
                },
            };
            let me = me.clone();
            calls.spawn(async move { (transport::hello_on(c, &address, me).await, address) });
        }
        while let Some(Ok((result, address))) = calls.join_next().await {
            match result {
                Ok((peer, _)) if peer.id == inner.info.id => inner.topology.is_me(&address),
                Ok((peer, _)) if !inner.topology.speaks_our_protocol(&inner.info.id, &peer, &address) => {
                    inner.topology.failed(&address)
                }
                Ok((peer, rtt)) => {
                    for p in peer.peers.iter().take(topology::MAX_PEERS) {
                        inner.topology.add_candidate(p.clone(), Source::Found);
                    }
                    let id = peer.id.clone();
                    let seen = inner.topology.seen(peer, address.clone(), Some(rtt));
                    if matches!(seen, topology::Seen::New | topology::Seen::Known)
                        && inner.topology.probe_due(&id, PROBE_EVERY)
                    {
                        if let Some(c) = clients.get(&address).cloned() {
                            tokio::spawn(probe_link(inner.clone(), c, id.clone(), address.clone(), rtt));
                        }
                    }
                    match seen {
                        topology::Seen::New => eprintln!("node {}: peer {id} at {address} joined", inner.info.id),
                        topology::Seen::Known => {}
                        topology::Seen::Refused(why) => {
                            tracing::debug!("{why}");
                            inner.topology.failed(&address);
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!("{e}");
                    inner.topology.failed(&address);
                }
            }
        }
        for id in inner.topology.expire(PEER_TIMEOUT) {
            eprintln!("node {}: peer {id} left (no heartbeat for {} s)", inner.info.id, PEER_TIMEOUT.as_secs());
        }
    }
}
