//! The peer transport: the gRPC service every node serves on its peer port, clients for the other nodes, and the
//! `Outbox` that sends a stage's output on, in order, one lane per destination. Messages for this node itself
//! skip the network. This module is the only one that knows the wire; how connections are secured is
//! [`crate::tls`]'s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{mpsc as tmpsc, oneshot};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use exo_engine::sampler::SamplingParams;

use crate::error::ClusterError;
use crate::host::{HostShared, Job};
use crate::node::NodeInfo;
use crate::plan::{Part, Plan, Stage};
use crate::proto::peer_client::PeerClient;
use crate::proto::peer_server::Peer;
use crate::proto::{self, Ack, Activation, BeginRequest, EndRequest, NodeDescription, TokenEvent};
use crate::tls::PeerTls;
use crate::topology::{Seen, Source, Topology};

/// Largest message: a prefill chunk of hidden states of a big model (512 × 8192 f32 is 16 MiB).
pub const MAX_MESSAGE: usize = 64 << 20;
/// How long a heartbeat may take.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a peer's activation may wait for room in this node's queue.
pub const FORWARD_WAIT: Duration = Duration::from_secs(30);
/// How long sending an activation or a token to a peer may take (it is queued there, not computed).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(40);
/// Bytes of a link probe ([`probe`]), and the most a peer may send in one.
pub const PROBE_BYTES: usize = 1 << 20;
const MAX_PROBE_BYTES: usize = 2 << 20;
/// How long a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most byte ranges a peer's `FileHeld` reply may list.
pub const MAX_HELD_RANGES: usize = 1 << 16;

/// Where a message goes: this node, or a peer's peer server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    Local,
    Remote(String),
}

/// A plan as it goes over the wire.
pub fn plan_to_wire(plan: &Plan) -> proto::Plan {
    proto::Plan {
        id: plan.id,
        model: plan.model.clone(),
        n_layers: plan.n_layers as u32,
        stages: plan
            .stages
            .iter()
            .map(|s| proto::Stage {
                node_id: s.node_id.clone(),
                address: s.address.clone(),
                start: s.start as u32,
                end: s.end as u32,
                parts: s
                    .parts
                    .iter()
                    .map(|p| proto::StagePart { device: p.device.clone(), start: p.start as u32, end: p.end as u32 })
                    .collect(),
            })
            .collect(),
    }
}

/// A plan received from a peer; its id is checked against its content.
pub fn plan_from_wire(p: proto::Plan) -> Result<Plan, ClusterError> {
    let stages = p
        .stages
        .into_iter()
        .map(|s| Stage {
            node_id: s.node_id,
            address: s.address,
            start: s.start as usize,
            end: s.end as usize,
            parts: s
                .parts
                .into_iter()
                .take(crate::plan::MAX_PARTS + 1)
                .map(|p| Part { device: p.device, start: p.start as usize, end: p.end as usize })
                .collect(),
        })
        .collect();
    Plan::from_parts(p.id, p.model, p.n_layers as usize, stages)
}

/// Sampling parameters as they go over the wire, with the seed every stage must use.
pub fn sampling_to_wire(s: &SamplingParams, seed: u64) -> proto::Sampling {
    proto::Sampling {
        temperature: s.temperature,
        top_k: s.top_k as u32,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        repeat_last_n: s.repeat_last_n as u32,
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        seed,
    }
}

pub fn sampling_from_wire(s: proto::Sampling) -> SamplingParams {
    SamplingParams {
        temperature: s.temperature,
        top_k: s.top_k as usize,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        repeat_last_n: s.repeat_last_n as usize,
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        seed: Some(s.seed),
    }
}

/// A client for the peer server at `address` (host:port), over connections `tls` makes; connects on first use.
pub fn client(tls: &PeerTls, address: &str) -> Result<PeerClient<Channel>, ClusterError> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| ClusterError::Rejected(format!("bad peer address {address}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    let (tls, target) = (tls.clone(), address.to_string());
    let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let (tls, target) = (tls.clone(), target.clone());
        async move { tls.connect(&target).await.map(hyper_util::rt::TokioIo::new) }
    });
    Ok(PeerClient::new(endpoint.connect_with_connector_lazy(connector))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// Where tokens for requests this node started go: the origin's waiting request, by id.
#[derive(Clone, Default)]
pub struct Router {
    waiting: Arc<Mutex<HashMap<u64, mpsc::Sender<TokenEvent>>>>,
}

impl Router {
    pub fn register(&self, request: u64) -> mpsc::Receiver<TokenEvent> {
        let (tx, rx) = mpsc::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(request, tx);
        }
        rx
    }

    pub fn remove(&self, request: u64) {
        if let Ok(mut w) = self.waiting.lock() {
            w.remove(&request);
        }
    }

    /// Hands an event to its request; false when no request of this node waits for it.
    pub fn deliver(&self, event: TokenEvent) -> bool {
        let tx = self.waiting.lock().ok().and_then(|w| w.get(&event.request_id).cloned());
        tx.is_some_and(|tx| tx.send(event).is_ok())
    }
}

enum Out {
    /// Hidden states or tokens; a failure is reported to `origin`.
    Forward(Activation, Dest),
    Emit(TokenEvent),
}

/// Sends stage outputs on, in order per destination.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<OutboxInner>,
}

struct OutboxInner {
    me: String,
    tls: PeerTls,
    runtime: Handle,
    lanes: Mutex<HashMap<String, tmpsc::UnboundedSender<Out>>>,
    host: mpsc::Sender<Job>,
    shared: Arc<HostShared>,
    router: Router,
}

impl Outbox {
    pub(crate) fn new(
        me: String,
        tls: PeerTls,
        runtime: Handle,
        host: mpsc::Sender<Job>,
        shared: Arc<HostShared>,
        router: Router,
    ) -> Self {
        Self {
            inner: Arc::new(OutboxInner { me, tls, runtime, lanes: Mutex::new(HashMap::new()), host, shared, router }),
        }
    }

    /// Sends `a` to the stage at `dest`; if it cannot be delivered, the request's origin hears of it.
    pub fn forward(&self, dest: &Dest, a: Activation, origin: &Dest) {
        match dest {
            Dest::Local => {
                let checked = self.inner.shared.check(a.request_id, a.plan_id, &self.inner.me);
                let (request, plan) = (a.request_id, a.plan_id);
                let result = checked.and_then(|()| {
                    self.inner
                        .host
                        .send(Job::Forward(a, None))
                        .map_err(|_| ClusterError::Engine("the host thread stopped".into()))
                });
                if let Err(e) = result {
                    self.emit(origin, failure(request, plan, &self.inner.me, e.to_string()));
                }
            }
            Dest::Remote(address) => self.lane(address, Out::Forward(a, origin.clone())),
        }
    }

    /// Sends a token event to the origin at `dest`.
    pub fn emit(&self, dest: &Dest, event: TokenEvent) {
        match dest {
            Dest::Local => {
                if !self.inner.router.deliver(event) {
                    tracing::debug!("a token for a request that is over");
                }
            }
            Dest::Remote(address) => self.lane(address, Out::Emit(event)),
        }
    }

    fn lane(&self, address: &str, out: Out) {
        let sent = {
            let Ok(mut lanes) = self.inner.lanes.lock() else { return };
            let tx = lanes.entry(address.to_string()).or_insert_with(|| {
                let (tx, rx) = tmpsc::unbounded_channel();
                self.inner.runtime.spawn(pump(self.clone(), address.to_string(), rx));
                tx
            });
            tx.send(out)
        };
        // The lane's task ended (the runtime is shutting down): a failed send.
        if let Err(tmpsc::error::SendError(Out::Forward(a, origin))) = sent {
            let message = format!("cannot send to {address}");
            self.emit(&origin, failure(a.request_id, a.plan_id, &self.inner.me, message));
        }
    }
}

fn failure(request_id: u64, plan_id: u64, node: &str, error: String) -> TokenEvent {
    TokenEvent { request_id, plan_id, error, node: node.to_string(), ..Default::default() }
}

/// One destination's lane: sends its messages one after the other.
async fn pump(outbox: Outbox, address: String, mut rx: tmpsc::UnboundedReceiver<Out>) {
    let mut peer = match client(&outbox.inner.tls, &address) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("{e}");
            None
        }
    };
    while let Some(out) = rx.recv().await {
        let Some(c) = peer.as_mut() else {
            if let Out::Forward(a, origin) = out {
                outbox.emit(&origin, failure(a.request_id, a.plan_id, &address, format!("bad address {address}")));
            }
            continue;
        };
        match out {
            Out::Forward(a, origin) => {
                let (request, plan) = (a.request_id, a.plan_id);
                let failed = match tokio::time::timeout(SEND_TIMEOUT, c.forward(a)).await {
                    Ok(Ok(_)) => None,
                    Ok(Err(status)) => Some(status.message().to_string()),
                    Err(_) => Some(format!("no answer in {} s", SEND_TIMEOUT.as_secs())),
                };
                if let Some(why) = failed {
                    let message = format!("sending to the node at {address} failed: {why}");
                    outbox.emit(&origin, failure(request, plan, &outbox.inner.me, message));
                }
            }
            Out::Emit(event) => match tokio::time::timeout(SEND_TIMEOUT, c.emit(event)).await {
                Ok(Ok(_)) => {}
                Ok(Err(status)) => tracing::warn!("cannot reach the origin at {address}: {}", status.message()),
                Err(_) => {
                    tracing::warn!("the origin at {address} did not take a token in {} s", SEND_TIMEOUT.as_secs())
                }
            },
        }
    }
}

/// The gRPC service.
pub(crate) struct PeerService {
    pub store: exo_models::ModelStore,
    pub info: Arc<NodeInfo>,
    pub topology: Arc<Topology>,
    pub host: mpsc::Sender<Job>,
    pub shared: Arc<HostShared>,
    pub router: Router,
    /// How long an activation may wait for room in the queue ([`FORWARD_WAIT`]).
    pub forward_wait: Duration,
}

impl PeerService {
    pub fn describe(&self) -> NodeDescription {
        describe(&self.info, &self.shared, &self.topology, downloaded_bytes(&self.store))
    }
}

/// This node's description now.
pub(crate) fn describe(info: &NodeInfo, shared: &HostShared, topology: &Topology, downloaded: u64) -> NodeDescription {
    let held = shared.held.lock().map(|h| h.clone()).unwrap_or_default();
    let held_bytes = shared.held_bytes.load(std::sync::atomic::Ordering::Relaxed);
    let peers = topology.peers().into_iter().map(|p| p.address).collect();
    let mut d = info.describe(&held, held_bytes, peers);
    d.progress = shared.progress.load(std::sync::atomic::Ordering::Relaxed).wrapping_add(downloaded);
    d.begins = shared.begins.load(std::sync::atomic::Ordering::Relaxed) as u32;
    d
}

/// Bytes this node's downloads have fetched so far, counted into its progress.
pub(crate) fn downloaded_bytes(store: &exo_models::ModelStore) -> u64 {
    store.downloads().list().iter().map(|d| d.done_bytes).sum()
}

fn status(e: ClusterError) -> Status {
    match e {
        ClusterError::Rejected(m) => Status::failed_precondition(m),
        ClusterError::Busy(m) => Status::resource_exhausted(m),
        ClusterError::ModelNotFound(_) => Status::not_found(e.to_string()),
        ClusterError::ModelTooLarge { .. } => Status::resource_exhausted(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn hello(&self, request: Request<NodeDescription>) -> Result<Response<NodeDescription>, Status> {
        let remote = request.remote_addr();
        let caller = request.into_inner();
        if caller.id != self.info.id {
            if let Some(ip) = remote.map(|a| a.ip()) {
                let address = SocketAddr::new(ip, caller.peer_port as u16).to_string();
                // A node of another protocol is not joined, but hears this node's description, so that it says
                // which versions differ too.
                if !self.topology.speaks_our_protocol(&self.info.id, &caller, &address) {
                    return Ok(Response::new(self.describe()));
                }
                for p in caller.peers.iter().take(crate::topology::MAX_PEERS) {
                    self.topology.add_candidate(p.clone(), Source::Found);
                }
                let id = caller.id.clone();
                match self.topology.seen(caller, address.clone(), None) {
                    Seen::New => eprintln!("node {}: peer {id} at {address} joined", self.info.id),
                    Seen::Known => {}
                    Seen::Refused(why) => return Err(Status::already_exists(why)),
                }
            }
        }
        Ok(Response::new(self.describe()))
    }

    async fn begin(&self, request: Request<BeginRequest>) -> Result<Response<Ack>, Status> {
        let (done, result) = oneshot::channel();
        self.host
            .send(Job::Begin(Box::new(request.into_inner()), done))
            .map_err(|_| Status::unavailable("the host thread stopped"))?;
        // Counted while it runs, so that the origin, watching heartbeats, sees this node is working on it.
        let shared = self.shared.clone();
        shared.begins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = result.await;
        shared.begins.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(Ok(())) => Ok(Response::new(Ack {})),
            Ok(Err(e)) => Err(status(e)),
            Err(_) => Err(Status::internal("the host thread dropped the request")),
        }
    }

    async fn forward(&self, request: Request<Activation>) -> Result<Response<Ack>, Status> {
        let a = request.into_inner();
        self.shared.check(a.request_id, a.plan_id, &self.info.id).map_err(status)?;
        // Its share of the queue's budget: a peer that sends faster than this node computes waits here (and its
        // Outbox lane behind it) rather than growing the queue without bound.
        let kib = (a.hidden.len() + 4 * a.tokens.len()).div_ceil(1024).clamp(1, self.shared.queue_kib) as u32;
        let permit = tokio::time::timeout(self.forward_wait, self.shared.queue.clone().acquire_many_owned(kib))
            .await
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "node {}: its queue of activations stayed full for {:?}",
                    self.info.id, self.forward_wait
                ))
            })?
            .map_err(|_| Status::unavailable("the host thread stopped"))?;
        self.host.send(Job::Forward(a, Some(permit))).map_err(|_| Status::unavailable("the host thread stopped"))?;
        Ok(Response::new(Ack {}))
    }

    async fn emit(&self, request: Request<TokenEvent>) -> Result<Response<Ack>, Status> {
        let event = request.into_inner();
        if !self.router.deliver(event) {
            tracing::debug!("a token for a request that is over");
        }
        Ok(Response::new(Ack {}))
    }

    async fn end(&self, request: Request<EndRequest>) -> Result<Response<Ack>, Status> {
        let (done, result) = oneshot::channel();
        let id = request.into_inner().request_id;
        self.shared.ending(id);
        self.host.send(Job::End(id, done)).map_err(|_| Status::unavailable("the host thread stopped"))?;
        let _ = result.await;
        Ok(Response::new(Ack {}))
    }

    async fn file_held(&self, request: Request<proto::FileKey>) -> Result<Response<proto::FileHeldReply>, Status> {
        let key = file_key_from_wire(request.into_inner())?;
        let store = self.store.clone();
        let held = tokio::task::spawn_blocking(move || store.held_local(&key))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let reply = match held {
            None => proto::FileHeldReply::default(),
            Some((info, ranges)) => proto::FileHeldReply {
                present: true,
                size: info.size,
                etag: info.etag.unwrap_or_default(),
                commit: info.commit.unwrap_or_default(),
                ranges: ranges.iter().flat_map(|(a, b)| [a, b]).collect(),
            },
        };
        Ok(Response::new(reply))
    }

    async fn probe(&self, request: Request<proto::ProbeBytes>) -> Result<Response<proto::Ack>, Status> {
        let n = request.get_ref().data.len();
        if n > MAX_PROBE_BYTES {
            return Err(Status::invalid_argument(format!("a probe of {n} bytes; at most {MAX_PROBE_BYTES}")));
        }
        Ok(Response::new(proto::Ack {}))
    }

    async fn read_file(&self, request: Request<proto::ReadFileRequest>) -> Result<Response<proto::FileBytes>, Status> {
        let r = request.into_inner();
        if r.length > MAX_FILE_READ {
            return Err(Status::invalid_argument(format!("at most {MAX_FILE_READ} bytes per read, not {}", r.length)));
        }
        let key = file_key_from_wire(r.key.unwrap_or_default())?;
        let store = self.store.clone();
        let (offset, length) = (r.offset, r.length);
        let shown = key.to_string();
        let data = tokio::task::spawn_blocking(move || store.read_local(&key, offset, length))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        match data {
            Some(data) => Ok(Response::new(proto::FileBytes { data })),
            None => Err(Status::not_found(format!(
                "node {} does not hold bytes {offset}+{length} of {shown}",
                self.info.id
            ))),
        }
    }
}

/// Most bytes one `ReadFile` returns.
pub const MAX_FILE_READ: u64 = 4 << 20;

fn file_key_to_wire(k: &exo_models::FileKey) -> proto::FileKey {
    proto::FileKey { repo: k.repo.clone(), revision: k.revision.clone(), file: k.file.clone() }
}

/// A peer's file key, refused unless it names a file inside a repository folder (no `..`, no absolute path).
fn file_key_from_wire(k: proto::FileKey) -> Result<exo_models::FileKey, Status> {
    let key = exo_models::FileKey { repo: k.repo, revision: k.revision, file: k.file };
    key.validate().map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(key)
}

/// Every live peer as a source of model bytes, in the topology's order; their clients live on `runtime`.
pub fn peer_files(tls: &PeerTls, topology: &Topology, runtime: &Handle) -> Vec<Arc<dyn exo_models::RangeSource>> {
    let _inside = runtime.enter();
    topology
        .peers()
        .into_iter()
        .filter_map(|p| PeerFiles::new(tls, p.description.id, p.address).ok())
        .map(|p| Arc::new(p) as Arc<dyn exo_models::RangeSource>)
        .collect()
}

/// A peer as a source of model bytes: its `FileHeld` and `ReadFile`.
pub struct PeerFiles {
    pub id: String,
    pub address: String,
    client: PeerClient<Channel>,
}

impl PeerFiles {
    pub fn new(tls: &PeerTls, id: String, address: String) -> Result<Self, ClusterError> {
        let client = client(tls, &address)?;
        Ok(Self { id, address, client })
    }
}

impl exo_models::RangeSource for PeerFiles {
    fn name(&self) -> String {
        format!("node {} ({})", self.id, self.address)
    }

    fn held<'a>(
        &'a self,
        key: &'a exo_models::FileKey,
    ) -> exo_models::store::BoxFuture<'a, Option<(exo_models::RemoteFile, exo_models::ranges::RangeSet)>> {
        Box::pin(async move {
            let mut c = self.client.clone();
            let call = c.file_held(file_key_to_wire(key));
            let reply = match tokio::time::timeout(Duration::from_secs(10), call).await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(e)) => {
                    tracing::debug!("{}: FileHeld {key}: {e}", self.name());
                    return None;
                }
                Err(_) => return None,
            };
            if !reply.present || reply.ranges.len() % 2 != 0 || reply.ranges.len() > 2 * MAX_HELD_RANGES {
                return None;
            }
            let ranges = reply.ranges.chunks(2).map(|p| (p[0], p[1].min(reply.size)));
            let info = exo_models::RemoteFile {
                size: reply.size,
                etag: Some(reply.etag).filter(|e| !e.is_empty()),
                commit: Some(reply.commit).filter(|c| !c.is_empty()),
            };
            Some((info, exo_models::ranges::RangeSet::from_ranges(ranges)))
        })
    }

    fn read<'a>(
        &'a self,
        key: &'a exo_models::FileKey,
        offset: u64,
        len: u64,
    ) -> exo_models::store::BoxFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let mut c = self.client.clone();
            let call = c.read_file(proto::ReadFileRequest { key: Some(file_key_to_wire(key)), offset, length: len });
            match tokio::time::timeout(Duration::from_secs(60), call).await {
                Ok(Ok(r)) => Some(r.into_inner().data),
                Ok(Err(e)) => {
                    tracing::debug!("{}: ReadFile {key} {offset}+{len}: {e}", self.name());
                    None
                }
                Err(_) => None,
            }
        })
    }
}

/// Says hello to `address` with `me` on a new connection; returns the peer's description and the round trip.
pub async fn hello(
    tls: &PeerTls,
    address: &str,
    me: NodeDescription,
) -> Result<(NodeDescription, Duration), ClusterError> {
    hello_on(client(tls, address)?, address, me).await
}

/// Says hello with `me` over `c`, a client for `address` (an open connection is reused, a broken one reconnects);
/// returns the peer's description and the round trip.
pub async fn hello_on(
    mut c: PeerClient<Channel>,
    address: &str,
    me: NodeDescription,
) -> Result<(NodeDescription, Duration), ClusterError> {
    let started = Instant::now();
    let reply = tokio::time::timeout(HELLO_TIMEOUT, c.hello(me))
        .await
        .map_err(|_| ClusterError::NodeFailed { node: address.to_string(), message: "no answer".into() })?
        .map_err(|s| ClusterError::NodeFailed { node: address.to_string(), message: s.message().to_string() })?;
    Ok((reply.into_inner(), started.elapsed()))
}

/// The throughput of the link to `address` over `c`, in bytes per second: [`PROBE_BYTES`] sent and acknowledged,
/// less `rtt` (the exchange's own round trip, as the heartbeat measured it).
pub async fn probe(mut c: PeerClient<Channel>, address: &str, rtt: Duration) -> Result<u64, ClusterError> {
    let data = vec![0u8; PROBE_BYTES];
    let started = Instant::now();
    tokio::time::timeout(PROBE_TIMEOUT, c.probe(proto::ProbeBytes { data }))
        .await
        .map_err(|_| ClusterError::NodeFailed { node: address.to_string(), message: "no answer to a probe".into() })?
        .map_err(|s| ClusterError::NodeFailed { node: address.to_string(), message: s.message().to_string() })?;
    Ok(link_rate(PROBE_BYTES, started.elapsed(), rtt))
}

/// Bytes per second of `bytes` sent in `took`, of which `rtt` was the round trip any exchange takes.
fn link_rate(bytes: usize, took: Duration, rtt: Duration) -> u64 {
    let transfer = took.saturating_sub(rtt).max(Duration::from_micros(10));
    (bytes as f64 / transfer.as_secs_f64()).min(crate::topology::MAX_SPEED_CLAIM as f64) as u64
}

pub(crate) use proto::peer_server::PeerServer;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Candidate;

    #[test]
    fn plans_and_sampling_survive_the_wire() {
        let nodes = [
            Candidate { id: "a".into(), address: "10.0.0.1:52416".into(), usable: 2 << 30, ..Default::default() },
            Candidate { id: "b".into(), address: "10.0.0.2:52416".into(), usable: 1 << 30, ..Default::default() },
        ];
        let plan = Plan::new("m", 30, 1 << 30, &nodes).unwrap();
        assert_eq!(plan_from_wire(plan_to_wire(&plan)).unwrap(), plan);
        let mut tampered = plan_to_wire(&plan);
        tampered.stages[0].end += 1;
        assert!(plan_from_wire(tampered).is_err());

        let sampling = SamplingParams { temperature: 0.7, top_k: 5, seed: None, ..SamplingParams::default() };
        let back = sampling_from_wire(sampling_to_wire(&sampling, 42));
        assert_eq!(back, SamplingParams { seed: Some(42), ..sampling });
    }

    /// A service over a host thread that never runs its jobs, with a queue of `queue_kib` KiB.
    fn stalled_service(queue_kib: usize, forward_wait: Duration) -> (PeerService, mpsc::Receiver<Job>) {
        let dir = std::env::temp_dir().join(format!("exo-queue-test-{}", std::process::id()));
        let mut hub = exo_models::HubConfig::from_vars(|_| None);
        hub.offline = true;
        let store = exo_models::StoreConfig {
            models_dir: None,
            cache: exo_models::HfCache::new(dir.join("hub")),
            downloads_dir: dir.join("downloads"),
            hub,
        };
        let info = NodeInfo {
            id: "n".into(),
            addresses: vec!["127.0.0.1".into()],
            api_port: 0,
            peer_port: 0,
            threads: 1,
            memory_limit: None,
            devices: vec![],
            speed: Default::default(),
        };
        let shared = Arc::new(HostShared::with_queue(queue_kib));
        if let Ok(mut r) = shared.requests.lock() {
            r.insert(7, 9);
        }
        let (host, jobs) = mpsc::channel();
        let service = PeerService {
            store: exo_models::ModelStore::new(store).unwrap(),
            info: Arc::new(info),
            topology: Arc::new(Topology::default()),
            host,
            shared,
            router: Router::default(),
            forward_wait,
        };
        (service, jobs)
    }

    fn activation(hidden_kib: usize) -> Activation {
        Activation {
            request_id: 7,
            plan_id: 9,
            hidden: vec![0u8; hidden_kib << 10].into(),
            seq: 1,
            ..Activation::default()
        }
    }

    #[tokio::test]
    async fn a_full_queue_holds_a_peer_back_then_refuses_it_and_frees_as_jobs_run() {
        let (service, jobs) = stalled_service(8, Duration::from_millis(500));
        // 5 KiB fits the 8 KiB budget; another 5 KiB does not while the first is queued: it waits, then is refused.
        service.forward(Request::new(activation(5))).await.unwrap();
        let refused = service.forward(Request::new(activation(5))).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
        assert!(refused.message().contains("queue of activations stayed full"), "{}", refused.message());
        // Smaller messages still fit the room left, and one larger than the whole budget takes all of it.
        service.forward(Request::new(activation(3))).await.unwrap();
        assert_eq!(service.shared.queue.available_permits(), 0);

        // A peer waiting for room goes on as soon as the host runs (drops) a queued job.
        let waiting = tokio::spawn(async move {
            let r = service.forward(Request::new(activation(100))).await.map(|_| ());
            (r, service)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a message larger than the room left was queued at once");
        for _ in 0..2 {
            match jobs.recv_timeout(Duration::from_secs(1)) {
                Ok(Job::Forward(_, permit)) => drop(permit),
                _ => panic!("a forwarded activation did not reach the host"),
            }
        }
        let (r, service) = waiting.await.unwrap();
        r.unwrap();
        assert_eq!(service.shared.queue.available_permits(), 0, "a message over the budget holds all of it");
        drop(jobs.recv_timeout(Duration::from_secs(1)));
        assert_eq!(service.shared.queue.available_permits(), 8, "the budget comes back once the host runs the job");

        // A message for a request this node does not hold is refused before it is queued.
        let stranger = Activation { request_id: 8, ..activation(1) };
        assert_eq!(service.forward(Request::new(stranger)).await.unwrap_err().code(), tonic::Code::FailedPrecondition);
    }
}
