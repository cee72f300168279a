//! `Host`: this node's part in running requests. One dedicated thread owns the layers this node holds (one range
//! of one model at a time) and, per request, a KV cache; it runs the stage's forward passes in the order messages
//! arrive and passes the result on: hidden states to the next stage, or, on the last stage, the sampled token to
//! the origin and to stage 0 for the next step. Tensor work never runs on the async runtime.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use exo_engine::chain::{prefill_batches, PREFILL_CHUNK};
use exo_engine::constraint::{Constraint, Grammar, Vocabulary};
use exo_engine::sampler::{log_softmax, Sampler};
use exo_engine::{Backend, Device, Gguf, KvType, Shard, ShardInput, ShardOutput, StageCache, StageShards};
use tokio::sync::oneshot;

use crate::error::{ClusterError, Result};
use crate::memory::{model_needs, Memory};
use crate::plan::{Part, Plan, Stage};
use crate::proto;
use crate::transport::{plan_from_wire, sampling_from_wire, Dest, Outbox};
use exo_models::{ModelStore, Need};

/// A request whose origin has not been heard from for this long is dropped (its origin died).
const IDLE_REQUEST: Duration = Duration::from_secs(300);
/// Most requests one origin may hold on this node at once, and all origins together.
pub const MAX_REQUESTS_PER_ORIGIN: usize = 16;
pub const MAX_REQUESTS: usize = 64;
/// Most end-of-generation tokens and alternatives per token a request may ask for.
const MAX_EOG: usize = 256;
/// The longest grammar a request may carry (a JSON schema or tool list of real size is a few KiB).
const MAX_GRAMMAR: usize = 1 << 20;
const MAX_TOP_LOGPROBS: u32 = 100;
/// Most bytes of activations from peers waiting for the host thread, in KiB: a peer that sends faster than this
/// node computes waits ([`FORWARD_WAIT`]) instead of growing the queue.
pub const MAX_QUEUED_KIB: usize = 256 << 10;
/// In a ring, stage 0 cuts a prompt into about this many batches per stage, so that the stages work on different
/// batches at once (a pipeline) instead of one after the other...
const BATCHES_PER_STAGE: usize = 8;
/// ...but no batch smaller than this, below which the matrix products lose their efficiency. (8 and 16 against
/// 4 and 32: a 128-token prompt on the 1B-shape model through 2 nodes went from 44.9 to 50.8 tokens/s.)
const MIN_BATCH: usize = 16;

/// Bytes as the log shows them: MiB below a GiB, GiB with a decimal above.
fn size(bytes: u64) -> String {
    if bytes < 1 << 30 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    }
}

/// Most positions per prefill batch of a `len`-token prompt on a ring of `stages` stages: [`PREFILL_CHUNK`] on
/// one node; on a ring, small enough that every stage has work early (with 2 stages and 8 batches per stage the
/// prompt takes about 9/16 of the time it takes when the stages work one after the other). The batches are cut
/// even ([`prefill_batches`]), so the logits are those of one node bit for bit.
fn prefill_batch(len: usize, stages: usize) -> usize {
    if stages < 2 {
        return PREFILL_CHUNK;
    }
    len.div_ceil(stages * BATCHES_PER_STAGE).clamp(MIN_BATCH, PREFILL_CHUNK)
}

pub(crate) enum Job {
    Begin(Box<proto::BeginRequest>, oneshot::Sender<Result<()>>),
    /// An activation, with its share of the queue's budget when it came from a peer (released once it is run).
    Forward(proto::Activation, Option<tokio::sync::OwnedSemaphorePermit>),
    End(u64, oneshot::Sender<()>),
    /// Load layers ahead of any request (`--model`).
    Preload {
        plan: Plan,
        stage: usize,
        context: usize,
        done: oneshot::Sender<Result<()>>,
    },
}

/// What the host thread publishes.
#[derive(Debug)]
pub(crate) struct HostShared {
    /// Requests held, with their plan id: a message for any other is refused before it is queued.
    pub requests: Mutex<HashMap<u64, u64>>,
    pub held: Mutex<Vec<proto::LoadedShard>>,
    /// Memory reserved for the layers held.
    pub held_bytes: AtomicU64,
    pub kv_bytes: AtomicU64,
    /// Requests whose End is on its way: a long prefill stops between chunks instead of running to its end.
    pub ending: Mutex<std::collections::HashSet<u64>>,
    /// The budget of activations from peers queued for the host thread, in KiB ([`MAX_QUEUED_KIB`]), and its size.
    pub queue: Arc<tokio::sync::Semaphore>,
    pub queue_kib: usize,
    /// Bumped whenever the host thread finishes a job: peers waiting on this node see that it is working.
    pub progress: AtomicU64,
    /// Begins received and not yet answered.
    pub begins: AtomicU64,
}

impl Default for HostShared {
    fn default() -> Self {
        Self::with_queue(MAX_QUEUED_KIB)
    }
}

impl HostShared {
    /// With a queue budget of `kib` KiB.
    pub fn with_queue(kib: usize) -> Self {
        Self {
            requests: Mutex::default(),
            held: Mutex::default(),
            held_bytes: AtomicU64::new(0),
            kv_bytes: AtomicU64::new(0),
            ending: Mutex::default(),
            queue: Arc::new(tokio::sync::Semaphore::new(kib)),
            queue_kib: kib,
            progress: AtomicU64::new(0),
            begins: AtomicU64::new(0),
        }
    }

    /// Marks `request` as ending (its End job follows).
    pub fn ending(&self, request: u64) {
        if let Ok(mut e) = self.ending.lock() {
            e.insert(request);
        }
    }

    fn is_ending(&self, request: u64) -> bool {
        self.ending.lock().is_ok_and(|e| e.contains(&request))
    }

    /// Whether a message for `request` under `plan` may be queued; the error says why not.
    pub fn check(&self, request: u64, plan: u64, me: &str) -> Result<()> {
        match self.requests.lock().ok().and_then(|r| r.get(&request).copied()) {
            Some(p) if p == plan => Ok(()),
            Some(p) => Err(ClusterError::Rejected(format!(
                "node {me}: request {request:x} belongs to plan {p:x}, not {plan:x} (a stale plan)"
            ))),
            None => Err(ClusterError::Rejected(format!("node {me} holds no request {request:x}"))),
        }
    }
}

/// Settings of the host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub id: String,
    pub store: ModelStore,
    pub kv_type: KvType,
    pub memory_limit: Option<u64>,
    /// The runtime downloads run on (the host thread blocks on them).
    pub runtime: tokio::runtime::Handle,
    /// Where the peers to ask for model bytes are.
    pub topology: Arc<crate::topology::Topology>,
    /// How connections to those peers are made.
    pub tls: crate::tls::PeerTls,
    /// The devices a stage's parts may name (the CPU is always there).
    pub devices: Vec<exo_engine::FoundDevice>,
}

/// Starts the host thread on `jobs`.
pub(crate) fn start(config: HostConfig, jobs: mpsc::Receiver<Job>, outbox: Outbox, shared: Arc<HostShared>) {
    let worker = Worker { config, held: None, requests: HashMap::new(), outbox, shared };
    let spawned = std::thread::Builder::new().name("exo-host".into()).spawn(move || worker.run(jobs));
    if let Err(e) = spawned {
        tracing::error!("cannot start the host thread: {e}");
    }
}

struct Held {
    model: String,
    shard: StageShards,
    /// Which device holds which layers.
    parts: Vec<Part>,
    /// What its parts on the CPU need of this machine's memory (weights, KV cache, buffers), and hold of it.
    host_needs: u64,
    host_loaded: u64,
    /// Its layers whose KV caches live in this machine's memory.
    host_layers: usize,
    /// The model file, and its vocabulary for constrained sampling once a request asked for it.
    path: std::path::PathBuf,
    vocabulary: Option<Arc<Vocabulary>>,
}

impl Held {
    /// Whether these are `stage`'s layers of `plan.model`, on the same devices.
    fn is(&self, plan: &Plan, stage: &Stage) -> bool {
        let s = self.shard.shard();
        self.model == plan.model
            && s.start == stage.start
            && s.end == stage.end
            && s.total == plan.n_layers
            && self.parts == stage.parts
    }
}

struct LastStage {
    sampler: Sampler,
    history: Vec<u32>,
    max_tokens: usize,
    generated: usize,
    eog: Vec<u32>,
    top_logprobs: Option<usize>,
    /// The grammar the output follows, if the request has one.
    constraint: Option<Constraint>,
}

struct Request {
    plan: Arc<Plan>,
    stage: usize,
    cache: StageCache,
    origin: Dest,
    origin_id: String,
    /// The most bytes its KV cache may grow to.
    kv_limit: u64,
    last: Option<LastStage>,
    touched: Instant,
}

struct Worker {
    config: HostConfig,
    held: Option<Held>,
    requests: HashMap<u64, Request>,
    outbox: Outbox,
    shared: Arc<HostShared>,
}

impl Worker {
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        loop {
            match jobs.recv_timeout(Duration::from_secs(10)) {
                Ok(Job::Begin(begin, done)) => {
                    let _ = done.send(self.begin(*begin));
                }
                Ok(Job::Forward(a, permit)) => {
                    self.forward(a);
                    drop(permit);
                }
                Ok(Job::End(id, done)) => {
                    self.end(id);
                    let _ = done.send(());
                }
                Ok(Job::Preload { plan, stage, context, done }) => {
                    let stage = plan.stages[stage].clone();
                    let _ = done.send(self.hold(&plan, &stage, context));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let idle: Vec<u64> = self
                        .requests
                        .iter()
                        .filter(|(_, r)| r.touched.elapsed() > IDLE_REQUEST)
                        .map(|(id, _)| *id)
                        .collect();
                    idle.into_iter().for_each(|id| self.end(id));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            self.shared.progress.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether request `r` is still wanted: its origin is this node or a live peer, and it was used lately.
    fn is_live(&self, r: &Request) -> bool {
        r.touched.elapsed() <= IDLE_REQUEST && (r.origin == Dest::Local || self.config.topology.is_alive(&r.origin_id))
    }

    /// Drops the requests [`Self::is_live`] says nobody wants any more.
    fn drop_orphans(&mut self) {
        let orphans: Vec<u64> = self.requests.iter().filter(|(_, r)| !self.is_live(r)).map(|(id, _)| *id).collect();
        for id in orphans {
            tracing::debug!("dropping request {id:x}: its origin is gone");
            self.end(id);
        }
    }

    fn begin(&mut self, b: proto::BeginRequest) -> Result<()> {
        let me = self.config.id.clone();
        let plan = b.plan.ok_or_else(|| ClusterError::Rejected("Begin without a plan".into()))?;
        let plan = plan_from_wire(plan)?;
        let index = b.stage as usize;
        let stage = match plan.stages.get(index) {
            Some(s) if s.node_id == me => s.clone(),
            _ => return Err(ClusterError::Rejected(format!("node {me} is not stage {index} of plan {:x}", plan.id))),
        };
        // Where tokens and failures go: this node, or the origin as this node knows it (never an address the
        // message names, which could be anyone's).
        let origin = if b.origin_id == me {
            Dest::Local
        } else {
            match self.config.topology.peers().into_iter().find(|p| p.description.id == b.origin_id) {
                Some(p) if self.config.topology.is_alive(&p.description.id) => Dest::Remote(p.address),
                _ => {
                    return Err(ClusterError::Rejected(format!(
                        "node {me}: the origin {} of request {:x} is not a peer of this node",
                        b.origin_id, b.request_id
                    )))
                }
            }
        };
        if self.requests.contains_key(&b.request_id) {
            return Err(ClusterError::Rejected(format!("node {me}: request {:x} is already running", b.request_id)));
        }
        self.drop_orphans();
        let of_origin = self.requests.values().filter(|r| r.origin_id == b.origin_id).count();
        if of_origin >= MAX_REQUESTS_PER_ORIGIN || self.requests.len() >= MAX_REQUESTS {
            return Err(ClusterError::Busy(format!(
                "node {me} holds {} requests ({of_origin} of node {}); at most {MAX_REQUESTS} ({MAX_REQUESTS_PER_ORIGIN} per origin)",
                self.requests.len(),
                b.origin_id
            )));
        }
        if b.eog.len() > MAX_EOG
            || b.top_logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS)
            || b.grammar.as_ref().is_some_and(|g| g.len() > MAX_GRAMMAR)
        {
            return Err(ClusterError::Rejected(format!(
                "node {me}: at most {MAX_EOG} end-of-generation tokens, {MAX_TOP_LOGPROBS} alternatives per token and a grammar of {} KiB",
                MAX_GRAMMAR >> 10
            )));
        }
        // Other layers are loaded only when no live request runs on the ones held: a new plan never ends requests
        // that are running.
        if let Some(h) = &self.held {
            let s = h.shard.shard();
            if !h.is(&plan, &stage) && !self.requests.is_empty() {
                return Err(ClusterError::Busy(format!(
                    "node {me} is running {} requests on layers {}-{} of {}; it loads other layers when they end",
                    self.requests.len(),
                    s.start,
                    s.end,
                    h.model
                )));
            }
        }
        self.hold(&plan, &stage, b.context as usize)?;
        let Some(held) = self.held.as_ref() else { return Err(ClusterError::Engine("no layers are loaded".into())) };
        let c = held.shard.config();
        let max_len = (b.context as usize).min(c.context_length);
        if b.history.len() > max_len {
            return Err(ClusterError::Rejected(format!(
                "node {me}: a history of {} tokens for a context of {max_len}",
                b.history.len()
            )));
        }
        // The caches of layers on a GPU live there: running out of its memory is the device's clear error.
        let kv_limit = (held.host_layers as u64)
            .saturating_mul(2 * (c.n_kv_heads as u64).saturating_mul(c.head_dim as u64))
            .saturating_mul(max_len as u64)
            .saturating_mul(self.config.kv_type.size() as u64);
        let committed: u64 = self.requests.values().map(|r| r.kv_limit).sum();
        let memory = Memory::now(self.config.memory_limit);
        let budget = memory.limit.unwrap_or(memory.total).saturating_sub(held.host_loaded);
        if committed.saturating_add(kv_limit) > budget {
            return Err(ClusterError::Busy(format!(
                "node {me}: the KV caches of its {} requests may grow to {} MiB, and this one to {} MiB more; it has {} MiB for them",
                self.requests.len(),
                committed >> 20,
                kv_limit >> 20,
                budget >> 20
            )));
        }
        let constraint = match (&b.grammar, index + 1 == plan.stages.len()) {
            (Some(g), true) => Some(self.constraint(g)?),
            _ => None,
        };
        let Some(held) = self.held.as_ref() else { return Err(ClusterError::Engine("no layers are loaded".into())) };
        let last = if index + 1 == plan.stages.len() {
            let sampling = sampling_from_wire(b.sampling.unwrap_or_default());
            Some(LastStage {
                sampler: Sampler::new(sampling)?,
                history: b.history,
                max_tokens: b.max_tokens as usize,
                generated: 0,
                eog: b.eog,
                top_logprobs: b.top_logprobs.map(|k| k as usize),
                constraint,
            })
        } else {
            None
        };
        let request = Request {
            cache: held.shard.new_cache(b.context as usize, self.config.kv_type),
            plan: Arc::new(plan),
            stage: index,
            origin,
            origin_id: b.origin_id,
            kv_limit,
            last,
            touched: Instant::now(),
        };
        if let Ok(mut r) = self.shared.requests.lock() {
            r.insert(b.request_id, request.plan.id);
        }
        self.requests.insert(b.request_id, request);
        Ok(())
    }

    /// A constraint following `grammar` (as [`Grammar::to_wire`] wrote it) over the held model's vocabulary, which
    /// is read from its file the first time a request needs it.
    fn constraint(&mut self, grammar: &str) -> Result<Constraint> {
        let me = self.config.id.clone();
        let Some(held) = self.held.as_mut() else { return Err(ClusterError::Engine("no layers are loaded".into())) };
        let engine = |e: exo_engine::EngineError| ClusterError::Rejected(format!("node {me}: {e}"));
        let vocabulary = match &held.vocabulary {
            Some(v) => v.clone(),
            None => {
                let gguf = Gguf::open(&held.path).map_err(|e| engine(e.into()))?;
                let tokenizer = exo_engine::tokenizer::Tokenizer::from_gguf(&gguf).map_err(engine)?;
                held.vocabulary.insert(Arc::new(Vocabulary::new(&tokenizer).map_err(engine)?)).clone()
            }
        };
        vocabulary.constrain(&Grammar::from_wire(grammar).map_err(engine)?).map_err(engine)
    }

    /// Makes sure this node holds `stage`'s layers of `plan.model`, loading them (and dropping others) if not.
    fn hold(&mut self, plan: &Plan, stage: &Stage, context: usize) -> Result<()> {
        if self.held.as_ref().is_some_and(|h| h.is(plan, stage)) {
            return Ok(());
        }
        let me = self.config.id.clone();
        // The header first: what the layers need in memory is known before any of them is downloaded. A plan's
        // model comes from a peer: never a path this node's operator did not name.
        let peers = crate::transport::peer_files(&self.config.tls, &self.config.topology, &self.config.runtime);
        let store = &self.config.store;
        let header = self.config.runtime.block_on(store.fetch_untrusted(&plan.model, Need::Header, &peers))?;
        let path = header.path;
        let gguf = Gguf::open(&path).map_err(|e| ClusterError::Engine(format!("{}: {e}", path.display())))?;
        let config = exo_engine::ModelConfig::from_gguf(&gguf)?;
        if config.n_layers != plan.n_layers {
            return Err(ClusterError::Rejected(format!(
                "node {me}: {} has {} layers, the plan says {}",
                path.display(),
                config.n_layers,
                plan.n_layers
            )));
        }
        // The devices first: a plan naming one this node does not have is refused before anything is fetched.
        let devices = self.stage_devices(stage, plan.n_layers)?;
        let all = model_needs(&gguf, context, self.config.kv_type)?;
        let share =
            |layers: usize| (all as u128 * layers as u128 / plan.n_layers.max(1) as u128).min(u64::MAX as u128) as u64;
        let needs = share(stage.n_layers());
        let host_layers: usize = devices.iter().filter(|(_, d)| d.device.is_cpu()).map(|(p, _)| p.n_layers()).sum();
        let host_needs = share(host_layers);
        let memory = Memory::now(self.config.memory_limit);
        let freed = self.held.as_ref().map_or(0, |h| h.host_needs);
        let offered = memory.available + freed;
        let usable = memory.limit.map_or(offered, |l| l.min(offered));
        // Device memory is checked where it is allocated: running out there is a clear error, not a crash.
        if host_needs > usable || memory.limit.is_some_and(|l| needs > l) {
            return Err(ClusterError::ModelTooLarge {
                model: plan.model.clone(),
                needed_mib: if host_needs > usable { host_needs >> 20 } else { needs >> 20 },
                available_mib: usable.min(memory.limit.unwrap_or(u64::MAX)) >> 20,
                nodes: 1,
            });
        }
        let shard_range = Shard::new(stage.start, stage.end, plan.n_layers)?;
        let fetched =
            self.config.runtime.block_on(store.fetch_untrusted(&plan.model, Need::Layers(shard_range), &peers))?;
        if fetched.from_hub + fetched.from_peers > 0 {
            eprintln!(
                "node {me}: fetched {} bytes for layers {}-{} of {} ({} from the hub, {} from peers)",
                fetched.from_hub + fetched.from_peers,
                stage.start,
                stage.end,
                plan.n_layers,
                fetched.from_hub,
                fetched.from_peers
            );
        }
        // A download that completed the file moved it into the cache.
        let reopened;
        let gguf = if fetched.path == path {
            &gguf
        } else {
            reopened = Gguf::open(&fetched.path)
                .map_err(|e| ClusterError::Engine(format!("{}: {e}", fetched.path.display())))?;
            &reopened
        };
        // One range at a time: requests on the old layers end.
        let stale: Vec<u64> = self.requests.keys().copied().collect();
        for id in stale {
            self.fail(id, "its node loaded other layers for a newer plan".into());
        }
        self.held = None;
        self.publish_held();
        let started = Instant::now();
        let parts: Vec<(Shard, &Device)> = devices.iter().map(|(p, d)| (*p, &d.device)).collect();
        let shard = StageShards::load(gguf, &parts, Backend::Auto)?;
        for ((p, d), loaded) in devices.iter().zip(shard.parts()) {
            // A CPU node says `node <id>: layers …`; a device other than the CPU is named with what it is.
            let on = if d.info.is_cpu() && devices.len() == 1 { String::new() } else { format!(" {}", d.info) };
            eprintln!(
                "node {me}{on}: layers {}-{} of {} ({})",
                p.start,
                p.end,
                plan.n_layers,
                size(loaded.bytes_loaded())
            );
        }
        tracing::info!(
            "loaded {} layers {}-{} in {:.1} s",
            path.display(),
            stage.start,
            stage.end,
            started.elapsed().as_secs_f64()
        );
        let host_loaded =
            shard.parts().iter().filter(|p| p.device().is_cpu()).map(exo_engine::ModelShard::bytes_loaded).sum();
        let parts = stage.parts.clone();
        self.held = Some(Held {
            model: plan.model.clone(),
            shard,
            parts,
            host_needs,
            host_loaded,
            host_layers,
            path: fetched.path.clone(),
            vocabulary: None,
        });
        self.publish_held();
        Ok(())
    }

    /// The layers and device of each of `stage`'s parts; an error names a device this node does not compute on.
    fn stage_devices(&self, stage: &Stage, n_layers: usize) -> Result<Vec<(Shard, exo_engine::FoundDevice)>> {
        let cpu = exo_engine::FoundDevice::cpu();
        stage
            .parts
            .iter()
            .map(|p| {
                let device = self.config.devices.iter().find(|d| d.info.name == p.device).cloned();
                let device = match device {
                    Some(d) => d,
                    None if p.device == "cpu" => cpu.clone(),
                    None => {
                        let have: Vec<&str> = self.config.devices.iter().map(|d| d.info.name.as_str()).collect();
                        return Err(ClusterError::Rejected(format!(
                            "node {}: the plan puts layers {}-{} on {}, which this node does not compute on ({})",
                            self.config.id,
                            p.start,
                            p.end,
                            p.device,
                            if have.is_empty() { "cpu".to_string() } else { have.join(", ") }
                        )));
                    }
                };
                Ok((Shard::new(p.start, p.end, n_layers)?, device))
            })
            .collect()
    }

    fn publish_held(&self) {
        let held: Vec<proto::LoadedShard> = self
            .held
            .iter()
            .map(|h| {
                let s = h.shard.shard();
                proto::LoadedShard {
                    model: h.model.clone(),
                    start: s.start as u32,
                    end: s.end as u32,
                    n_layers: s.total as u32,
                    bytes: h.shard.bytes_loaded(),
                    parts: h
                        .parts
                        .iter()
                        .map(|p| proto::StagePart {
                            device: p.device.clone(),
                            start: p.start as u32,
                            end: p.end as u32,
                        })
                        .collect(),
                }
            })
            .collect();
        if let Ok(mut h) = self.shared.held.lock() {
            *h = held;
        }
        self.shared.held_bytes.store(self.held.as_ref().map_or(0, |h| h.host_needs), Ordering::Relaxed);
    }

    fn publish_kv(&self) {
        let bytes: usize = self.requests.values().map(|r| r.cache.bytes()).sum();
        self.shared.kv_bytes.store(bytes as u64, Ordering::Relaxed);
    }

    fn end(&mut self, id: u64) {
        self.requests.remove(&id);
        if let Ok(mut r) = self.shared.requests.lock() {
            r.remove(&id);
        }
        if let Ok(mut e) = self.shared.ending.lock() {
            e.remove(&id);
        }
        self.publish_kv();
    }

    /// Ends request `id` and tells its origin why.
    fn fail(&mut self, id: u64, message: String) {
        if let Some(r) = self.requests.get(&id) {
            let event = proto::TokenEvent {
                request_id: id,
                plan_id: r.plan.id,
                error: message,
                node: self.config.id.clone(),
                ..Default::default()
            };
            self.outbox.emit(&r.origin, event);
        }
        self.end(id);
    }

    fn forward(&mut self, a: proto::Activation) {
        let id = a.request_id;
        if let Err(e) = self.step(a) {
            self.fail(id, e.to_string());
        }
        // Idle is counted from the end of its last step: a long prefill is not idleness.
        if let Some(r) = self.requests.get_mut(&id) {
            r.touched = Instant::now();
        }
        self.publish_kv();
    }

    fn step(&mut self, a: proto::Activation) -> Result<()> {
        let me = self.config.id.clone();
        let Some(held) = self.held.as_ref() else { return Err(ClusterError::Engine("no layers are loaded".into())) };
        let Some(r) = self.requests.get_mut(&a.request_id) else {
            return Err(ClusterError::Rejected(format!("node {me} holds no request {:x}", a.request_id)));
        };
        r.touched = Instant::now();
        if a.plan_id != r.plan.id {
            return Err(ClusterError::Rejected(format!(
                "node {me}: a message for plan {:x}, not {:x}",
                a.plan_id, r.plan.id
            )));
        }
        if a.position as usize != r.cache.len() {
            return Err(ClusterError::Rejected(format!(
                "node {me}: input for position {} but the cache holds {}",
                a.position,
                r.cache.len()
            )));
        }
        let stage = &r.plan.stages[r.stage];
        let next = r.plan.stages.get(r.stage + 1).map(|s| dest(&me, s));
        let first = dest(&me, &r.plan.stages[0]);
        let plan_id = r.plan.id;
        let hidden_size = held.shard.config().hidden_size;
        let shared = &self.shared;
        let outbox = &self.outbox;
        let cache = &mut r.cache;
        let origin = &r.origin;
        let mut forward = || -> Result<Vec<(ShardOutput, usize, usize, bool)>> {
            let mut outputs = Vec::new();
            if stage.start == 0 {
                let batch = prefill_batch(a.tokens.len(), r.plan.stages.len());
                let chunks: Vec<&[u32]> = prefill_batches(a.tokens.len(), batch).map(|b| &a.tokens[b]).collect();
                if chunks.is_empty() {
                    return Err(ClusterError::Rejected(format!("node {me}: stage 0 got no tokens")));
                }
                for (i, chunk) in chunks.iter().enumerate() {
                    if shared.is_ending(a.request_id) {
                        return Ok(Vec::new());
                    }
                    let position = cache.len();
                    let out = held.shard.forward(ShardInput::Tokens(chunk), cache)?;
                    // A long prompt is work: each chunk counts as progress, so the origin's stall watch (which
                    // hears of no token until the prompt is done) does not take it for a hang.
                    shared.progress.fetch_add(1, Ordering::Relaxed);
                    outputs.push((out, position, chunk.len(), a.sample && i + 1 == chunks.len()));
                    // Hidden states go on chunk by chunk, so the next stage works while this one goes on.
                    if let Some(next) = &next {
                        for (out, position, seq, sample) in outputs.drain(..) {
                            send_hidden(outbox, next, origin, a.request_id, plan_id, out, position, seq, sample)?;
                        }
                    }
                }
            } else {
                let seq = a.seq as usize;
                if a.hidden.len() != seq * hidden_size * 4 || seq == 0 {
                    return Err(ClusterError::Rejected(format!(
                        "node {me}: {} bytes of hidden states for {seq} positions of {hidden_size}",
                        a.hidden.len()
                    )));
                }
                let position = cache.len();
                // The message's bytes go straight into the engine's residual stream.
                let out = held.shard.forward(ShardInput::HiddenBytes(&a.hidden), cache)?;
                match &next {
                    Some(next) => {
                        send_hidden(outbox, next, origin, a.request_id, plan_id, out, position, seq, a.sample)?
                    }
                    None => outputs.push((out, position, seq, a.sample)),
                }
            }
            Ok(outputs)
        };
        // The last stage's constraint works out which tokens may come next while the forward pass runs: that depends
        // only on the tokens so far, and on a large vocabulary it takes a good part of a millisecond.
        let constraint = r.last.as_mut().and_then(|l| l.constraint.as_mut()).filter(|_| a.sample && next.is_none());
        let (outputs, mut allowed) = std::thread::scope(|s| {
            let pending = constraint.map(|c| s.spawn(|| c.allowed()));
            let outputs = forward();
            (outputs, pending.map(|p| p.join()))
        });
        let outputs = outputs?;
        // The last stage: sample after the last chunk.
        for (out, _, _, sample) in outputs {
            let ShardOutput::Logits(mut logits) = out else {
                return Err(ClusterError::Engine("the last stage produced hidden states".into()));
            };
            if !sample {
                continue;
            }
            let Some(last) = r.last.as_mut() else {
                return Err(ClusterError::Engine("the last stage has no sampler".into()));
            };
            let logprobs = last.top_logprobs.map(|k| (log_softmax(&logits), k));
            if let Some(c) = last.constraint.as_mut() {
                match allowed.take() {
                    Some(Ok(Ok(mask))) => c.apply(&mask, &mut logits),
                    Some(Ok(Err(e))) => return Err(e.into()),
                    Some(Err(_)) => return Err(ClusterError::Engine("the constraint's thread panicked".into())),
                    None => c.mask(&mut logits)?,
                }
            }
            let token = last.sampler.sample(&mut logits, &last.history, &[]);
            if let Some(c) = last.constraint.as_mut() {
                c.accept(token)?;
            }
            last.history.push(token);
            last.generated += 1;
            let finished =
                last.eog.contains(&token) || last.generated >= last.max_tokens || r.cache.len() >= r.cache.max_len();
            let (logprob, top) = match logprobs {
                Some((lp, k)) => {
                    let mut top: Vec<(u32, f32)> = lp.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
                    let k = k.min(top.len());
                    if k > 0 {
                        top.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
                    }
                    top.truncate(k);
                    top.sort_by(|a, b| b.1.total_cmp(&a.1));
                    let top = top.into_iter().map(|(token, logprob)| proto::TopLogprob { token, logprob }).collect();
                    (lp.get(token as usize).copied(), top)
                }
                None => (None, Vec::new()),
            };
            let event = proto::TokenEvent {
                request_id: a.request_id,
                plan_id,
                token,
                finished,
                error: String::new(),
                node: me.clone(),
                logprob,
                top,
            };
            self.outbox.emit(&r.origin, event);
            if !finished {
                let next = proto::Activation {
                    request_id: a.request_id,
                    plan_id,
                    position: r.cache.len() as u32,
                    tokens: vec![token],
                    hidden: Default::default(),
                    seq: 1,
                    sample: true,
                };
                self.outbox.forward(&first, next, &r.origin);
            }
        }
        Ok(())
    }
}

/// Where messages for `stage` go, seen from node `me`.
fn dest(me: &str, stage: &Stage) -> Dest {
    if stage.node_id == me {
        Dest::Local
    } else {
        Dest::Remote(stage.address.clone())
    }
}

/// Hidden states as little-endian f32 bytes, owned by the message that carries them (no copy into a byte
/// buffer: on a little-endian machine the values already are those bytes).
struct LeF32(Vec<f32>);

impl AsRef<[u8]> for LeF32 {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: f32 values are initialized 4-byte units, and u8 has no alignment requirement.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), std::mem::size_of_val(self.0.as_slice())) }
    }
}

/// Sends a stage's hidden states on to `next` as raw little-endian f32: one copy out of the tensor, which the
/// message then owns.
#[allow(clippy::too_many_arguments)]
fn send_hidden(
    outbox: &Outbox,
    next: &Dest,
    origin: &Dest,
    request_id: u64,
    plan_id: u64,
    out: ShardOutput,
    position: usize,
    seq: usize,
    sample: bool,
) -> Result<()> {
    let ShardOutput::Hidden(hidden) = out else {
        return Err(ClusterError::Engine("a stage before the last produced logits".into()));
    };
    let mut values: Vec<f32> =
        hidden.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(|e| ClusterError::Engine(e.to_string()))?;
    if cfg!(target_endian = "big") {
        values.iter_mut().for_each(|v| *v = f32::from_bits(v.to_bits().to_le()));
    }
    let a = proto::Activation {
        request_id,
        plan_id,
        position: position as u32,
        tokens: Vec::new(),
        hidden: prost::bytes::Bytes::from_owner(LeF32(values)),
        seq: seq as u32,
        sample,
    };
    outbox.forward(next, a, origin);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_cuts_prompts_into_batches_for_a_pipeline() {
        // One node: the engine's chunk.
        assert_eq!(prefill_batch(8000, 1), PREFILL_CHUNK);
        // Two stages: 8 batches per stage, but none below MIN_BATCH or above PREFILL_CHUNK.
        assert_eq!(prefill_batch(128, 2), MIN_BATCH);
        assert_eq!(prefill_batch(1000, 2), 63);
        assert_eq!(prefill_batch(40, 3), MIN_BATCH);
        assert_eq!(prefill_batch(8000, 2), 500);
        assert_eq!(prefill_batch(20_000, 2), PREFILL_CHUNK);
    }
}
