//! `Inference`: the queue between HTTP handlers and the model, and the worker thread that runs it.
//!
//! One dedicated thread owns the loaded model (one at a time; a request for another model unloads it first, and a
//! model that would not fit in the node's memory is refused before loading) and serves jobs in arrival order from a
//! bounded queue; a full queue refuses new jobs at once. Each job streams [`Event`]s back over its own channel; when
//! the client goes away the channel closes, and the worker stops that job before its next token. Between jobs the
//! KV cache is freed. On shutdown the job in progress and every queued one end with an error. The worker publishes
//! what it is doing in a [`Status`]. Tensor work never runs on the async runtime.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use exo_engine::chat_template::{ChatMessage, ChatTemplate};
use exo_engine::generation::{FinishReason, Generation};
use exo_engine::sampler::log_softmax;
use exo_engine::tokenizer::Tokenizer;
use exo_engine::{Device, EngineError, Gguf, KvType, ShardChain};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::memory::{self, Memory};
use crate::validation::Options;

/// What a job's prompt is.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Chat messages, rendered with the model's template.
    Chat(Vec<ChatMessage>),
    /// Text tokenized as it is (`/v1/completions`).
    Text(String),
}

/// One request for the worker.
#[derive(Debug)]
pub struct Job {
    pub prompt: Prompt,
    pub options: Options,
    pub events: mpsc::UnboundedSender<Event>,
}

/// The log-probability of a generated token, with the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

/// What the worker reports for a job, in this order: `Started`, any number of `Text`, then `Done`; or `Failed`
/// at any point.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The model is loaded and the prompt fits: output follows.
    Started {
        model: String,
        prompt_tokens: usize,
    },
    Text {
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Done {
        finish: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
        seconds: f64,
    },
    Failed(ApiError),
}

/// The GGUF files a node can serve: files in its models folder, by name, or any path.
#[derive(Debug, Clone)]
pub struct ModelStore {
    dir: PathBuf,
}

impl ModelStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Names (file names without `.gguf`) of the GGUF files in the models folder, sorted.
    pub fn list(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".gguf")).map(str::to_string))
            .collect();
        names.sort();
        names
    }

    /// The file behind `model`: a name in the models folder (with or without `.gguf`), or a path to a GGUF file.
    pub fn resolve(&self, model: &str) -> Result<PathBuf, ApiError> {
        let candidates = [self.dir.join(model), self.dir.join(format!("{model}.gguf")), PathBuf::from(model)];
        let is_name = !model.contains('/') && !model.starts_with('.');
        candidates
            .into_iter()
            .enumerate()
            .find(|(i, p)| (*i == 2 || is_name) && p.is_file())
            .map(|(_, p)| p)
            .ok_or_else(|| ApiError::ModelNotFound(model.to_string()))
    }
}

/// How the worker runs models.
#[derive(Debug, Clone)]
pub struct InferenceConfig {
    /// Jobs that may wait before new ones are refused.
    pub queue: usize,
    pub kv_type: KvType,
    /// Most positions of a sequence (capped by each model's own context).
    pub context: usize,
    /// `--memory-limit`: most bytes a loaded model may need.
    pub memory_limit: Option<u64>,
}

/// The model the worker holds.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedModel {
    pub id: String,
    pub path: PathBuf,
    /// First and last layer held (inclusive), of `n_layers`.
    pub layers: (usize, usize),
    pub n_layers: usize,
    /// Bytes of tensor data read from the file.
    pub bytes: u64,
    /// Memory reserved for it (weights, KV cache at the full context, buffers).
    pub needs: u64,
    pub context: usize,
    pub backend: &'static str,
}

/// How the last finished job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Finished(FinishReason),
    /// The client went away.
    Cancelled,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Finished(f) => f.as_str(),
            Outcome::Cancelled => "cancelled",
            Outcome::Failed => "error",
        }
    }
}

/// What the worker is doing, for `/v1/topology`.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub model: Option<LoadedModel>,
    pub busy: bool,
    pub queued: usize,
    /// Jobs taken from the queue so far.
    pub requests: u64,
    pub tokens_generated: u64,
    /// Bytes held by the KV cache now (zero between requests).
    pub kv_cache_bytes: u64,
    /// The last finished job: how it ended and how many tokens it generated.
    pub last: Option<(Outcome, usize)>,
    pub memory_limit: Option<u64>,
}

/// What the worker and the handles share.
#[derive(Debug, Default)]
struct Shared {
    stopping: AtomicBool,
    busy: AtomicBool,
    requests: AtomicU64,
    tokens: AtomicU64,
    kv_bytes: AtomicU64,
    model: Mutex<Option<LoadedModel>>,
    last: Mutex<Option<(Outcome, usize)>>,
}

/// The handle HTTP handlers submit jobs through.
#[derive(Clone)]
pub struct Inference {
    jobs: mpsc::Sender<Job>,
    config: InferenceConfig,
    store: ModelStore,
    shared: Arc<Shared>,
}

impl Inference {
    /// Starts the worker thread. `preload` is loaded before this returns; an error loading it is returned.
    pub fn start(store: ModelStore, config: InferenceConfig, preload: Option<&str>) -> Result<Self, ApiError> {
        let config = InferenceConfig { queue: config.queue.max(1), ..config };
        let (jobs, rx) = mpsc::channel(config.queue);
        let shared = Arc::new(Shared::default());
        let mut worker = Worker { store: store.clone(), config: config.clone(), shared: shared.clone(), loaded: None };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let preload = preload.map(str::to_string);
        std::thread::Builder::new()
            .name("exo-inference".into())
            .spawn(move || {
                let loaded = preload.map_or(Ok(()), |m| worker.load(&m));
                let ok = loaded.is_ok();
                let _ = ready_tx.send(loaded);
                if ok {
                    worker.run(rx);
                }
            })
            .map_err(|e| ApiError::Internal(format!("cannot start the inference thread: {e}")))?;
        ready_rx.recv().map_err(|_| ApiError::Internal("the inference thread stopped while loading".into()))??;
        Ok(Self { jobs, config, store, shared })
    }

    pub fn store(&self) -> &ModelStore {
        &self.store
    }

    /// Queues a job, or refuses it when the queue is full or the node is shutting down.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        if self.shared.stopping.load(Ordering::Acquire) {
            return Err(ApiError::ShuttingDown);
        }
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ApiError::QueueFull(self.config.queue),
            mpsc::error::TrySendError::Closed(_) => ApiError::Internal("the inference thread has stopped".into()),
        })
    }

    /// Ends the job in progress and every queued one with [`ApiError::ShuttingDown`], and refuses new ones.
    pub fn shut_down(&self) {
        self.shared.stopping.store(true, Ordering::Release);
    }

    /// What the worker is doing now.
    pub fn status(&self) -> Status {
        let s = &self.shared;
        Status {
            model: s.model.lock().map(|m| m.clone()).unwrap_or(None),
            busy: s.busy.load(Ordering::Acquire),
            queued: self.config.queue - self.jobs.capacity(),
            requests: s.requests.load(Ordering::Relaxed),
            tokens_generated: s.tokens.load(Ordering::Relaxed),
            kv_cache_bytes: s.kv_bytes.load(Ordering::Relaxed),
            last: s.last.lock().map(|l| *l).unwrap_or(None),
            memory_limit: self.config.memory_limit,
        }
    }
}

struct Loaded {
    info: LoadedModel,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    chain: ShardChain,
}

struct Worker {
    store: ModelStore,
    config: InferenceConfig,
    shared: Arc<Shared>,
    loaded: Option<Loaded>,
}

impl Worker {
    fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.blocking_recv() {
            if job.events.is_closed() {
                continue;
            }
            self.shared.busy.store(true, Ordering::Release);
            self.shared.requests.fetch_add(1, Ordering::Relaxed);
            let (outcome, tokens, last_event) = match self.serve(&job) {
                Ok(done) => done,
                Err(e) => (Outcome::Failed, 0, Some(Event::Failed(e))),
            };
            // The KV cache is freed between requests, and the status says so before the client hears the end.
            if let Some(m) = self.loaded.as_mut() {
                m.chain.release();
            }
            self.shared.kv_bytes.store(0, Ordering::Relaxed);
            if let Ok(mut last) = self.shared.last.lock() {
                *last = Some((outcome, tokens));
            }
            self.shared.busy.store(false, Ordering::Release);
            if let Some(event) = last_event {
                let _ = job.events.send(event);
            }
        }
    }

    fn load(&mut self, model: &str) -> Result<(), ApiError> {
        if self.loaded.as_ref().is_some_and(|l| l.info.id == model) {
            return Ok(());
        }
        let path = self.store.resolve(model)?;
        let engine = |e: EngineError| ApiError::Internal(format!("cannot load {model}: {e}"));
        let gguf = Gguf::open(&path).map_err(|e| engine(e.into()))?;
        // The model in memory now is freed first, so its share counts as available.
        let needs = memory::model_needs(&gguf, self.config.context, self.config.kv_type).map_err(engine)?;
        let memory = Memory::now(self.config.memory_limit);
        let freed = self.loaded.as_ref().map_or(0, |l| l.info.needs);
        let usable = memory.limit.map_or(memory.available + freed, |l| l.min(memory.available + freed));
        if needs > usable {
            return Err(ApiError::ModelTooLarge {
                model: model.to_string(),
                needed_mib: needs >> 20,
                available_mib: usable >> 20,
            });
        }
        // One model at a time: free the old one before reading the new one.
        self.loaded = None;
        if let Ok(mut m) = self.shared.model.lock() {
            *m = None;
        }
        let started = Instant::now();
        let load = |path: &Path| -> Result<Loaded, EngineError> {
            let tokenizer = Tokenizer::from_gguf(&gguf)?;
            let template = ChatTemplate::from_gguf(&gguf, &tokenizer)?;
            let chain = ShardChain::load_whole_with(
                &gguf,
                self.config.context,
                &Device::Cpu,
                self.config.kv_type,
                exo_engine::Backend::Auto,
            )?;
            let shard = &chain.shards()[0];
            let info = LoadedModel {
                id: model.to_string(),
                path: path.to_path_buf(),
                layers: (shard.shard().start, shard.shard().end),
                n_layers: shard.shard().total,
                bytes: shard.bytes_loaded(),
                needs,
                context: chain.max_len(),
                backend: shard.backend(),
            };
            Ok(Loaded { info, tokenizer, template, chain })
        };
        let loaded = load(&path).map_err(engine)?;
        tracing::info!(
            "loaded {} ({} MiB, layers {}-{} of {}) in {:.1} s",
            path.display(),
            loaded.info.bytes >> 20,
            loaded.info.layers.0,
            loaded.info.layers.1,
            loaded.info.n_layers,
            started.elapsed().as_secs_f64()
        );
        if let Ok(mut m) = self.shared.model.lock() {
            *m = Some(loaded.info.clone());
        }
        self.loaded = Some(loaded);
        Ok(())
    }

    /// Runs one job until its last event; returns how it ended, how many tokens it generated, and the last event
    /// (`Done`, or `Failed` on shutdown) for the caller to send once the job's resources are freed.
    fn serve(&mut self, job: &Job) -> Result<(Outcome, usize, Option<Event>), ApiError> {
        if self.shared.stopping.load(Ordering::Acquire) {
            return Err(ApiError::ShuttingDown);
        }
        let o = &job.options;
        self.load(&o.model)?;
        let Some(m) = self.loaded.as_mut() else {
            return Err(ApiError::Internal("no model is loaded".into()));
        };
        let engine = |e: EngineError| ApiError::Internal(e.to_string());
        let prompt = match &job.prompt {
            Prompt::Chat(messages) => {
                let rendered =
                    m.template.render(messages, true).map_err(|e| ApiError::field("messages", e.to_string()))?;
                m.tokenizer.encode_chat(&rendered).map_err(engine)?
            }
            Prompt::Text(text) => m.tokenizer.encode(text, true, false).map_err(engine)?,
        };
        let context = m.chain.max_len();
        let room = context.saturating_sub(prompt.len());
        let max_tokens = match o.max_tokens {
            Some(n) if n > room => {
                return Err(ApiError::ContextExceeded { prompt: prompt.len(), max_tokens: n, context });
            }
            Some(n) => n,
            None if room == 0 => {
                return Err(ApiError::ContextExceeded { prompt: prompt.len(), max_tokens: 1, context });
            }
            None => room,
        };
        let params = o.generation_params(max_tokens);
        let mut generation = Generation::new(&m.tokenizer, &prompt, &params).map_err(engine)?;
        if job.events.send(Event::Started { model: m.info.id.clone(), prompt_tokens: prompt.len() }).is_err() {
            return Ok((Outcome::Cancelled, 0, None));
        }

        let started = Instant::now();
        m.chain.reset();
        let mut logits = m.chain.forward(&prompt).map_err(engine)?;
        loop {
            self.shared.kv_bytes.store(m.chain.cache_bytes() as u64, Ordering::Relaxed);
            let logprob = o.logprobs.map(|k| (log_softmax(&logits), k));
            let step = generation.step(&mut logits);
            self.shared.tokens.fetch_add(1, Ordering::Relaxed);
            let logprob = logprob.map(|(lp, k)| token_logprob(&m.tokenizer, &lp, step.token, k));
            if !step.text.is_empty() || logprob.is_some() {
                // A closed channel: the client went away; stop here.
                if job.events.send(Event::Text { text: step.text, logprob }).is_err() {
                    return Ok((Outcome::Cancelled, generation.generated(), None));
                }
            }
            let generated = generation.generated();
            if let Some(finish) = step.finished {
                let done = Event::Done {
                    finish,
                    prompt_tokens: prompt.len(),
                    completion_tokens: generated,
                    seconds: started.elapsed().as_secs_f64(),
                };
                return Ok((Outcome::Finished(finish), generated, Some(done)));
            }
            if job.events.is_closed() {
                return Ok((Outcome::Cancelled, generated, None));
            }
            if self.shared.stopping.load(Ordering::Acquire) {
                return Ok((Outcome::Failed, generated, Some(Event::Failed(ApiError::ShuttingDown))));
            }
            logits = m.chain.forward(&[step.token]).map_err(engine)?;
        }
    }
}

fn token_logprob(tokenizer: &Tokenizer, logprobs: &[f32], token: u32, k: usize) -> TokenLogprob {
    let text = |id: u32| String::from_utf8_lossy(tokenizer.token_bytes(id, true)).into_owned();
    let mut top: Vec<(u32, f32)> = logprobs.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    let k = k.min(top.len());
    if k > 0 {
        top.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
    }
    top.truncate(k);
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    TokenLogprob {
        token: text(token),
        logprob: logprobs.get(token as usize).copied().unwrap_or(f32::NEG_INFINITY),
        top: top.into_iter().map(|(id, l)| (text(id), l)).collect(),
    }
}
