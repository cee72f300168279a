//! `Inference`: the queue between HTTP handlers and the cluster, and the worker thread that runs requests.
//!
//! One dedicated thread takes jobs in arrival order from a bounded queue (a full queue refuses new jobs at once).
//! For each it reads the model's tokenizer and chat template (kept while the model stays the same), asks the
//! cluster for a plan (refused when the model does not fit in the cluster's memory), and runs the request around
//! the ring: this node is the origin, keeps the token history, turns tokens into text, applies stop strings, and
//! streams [`Event`]s back over the job's channel. When the client goes away the channel closes and the worker
//! ends the request at the next token; every stage's KV cache is freed when a request ends. On shutdown the job
//! in progress and every queued one end with an error. The worker publishes what it is doing in a [`Status`].

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use exo_cluster::memory::model_needs;
use exo_cluster::{Cluster, ClusterError, ModelStore, RingRequest};
use exo_engine::chat_template::{ChatMessage, ChatTemplate};
use exo_engine::constraint::{Grammar, Vocabulary};
use exo_engine::generation::{FinishReason, Generation};
use exo_engine::reasoning::{self, ReasoningSplitter, Split, ThinkStart};
use exo_engine::tokenizer::Tokenizer;
use exo_engine::tool_calls::{self, ToolChoice, ToolFormat};
use exo_engine::{EngineError, Gguf, ModelConfig};
use exo_models::ModelRef;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::logprobs::{ShownLogprobs, TokenLogprob};
use crate::validation::Options;

/// What a job's prompt is.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Chat messages, rendered with the model's template.
    Chat(Vec<ChatMessage>),
    /// Text tokenized as it is (`/v1/completions`).
    Text(String),
    /// Chat messages whose prompt is only counted, nothing generated (`/v1/messages/count_tokens`): the job
    /// reports `Started` with the prompt's length, then `Done`.
    Count(Vec<ChatMessage>),
}

/// One request for the worker.
#[derive(Debug)]
pub struct Job {
    pub prompt: Prompt,
    pub options: Options,
    pub events: mpsc::UnboundedSender<Event>,
}

/// A job that has started: the rest of its events, and what its `Started` event said.
pub struct Started {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub reasoning: Option<ThinkStart>,
    pub prompt_tokens: usize,
    /// For a request with tools: how the model writes its calls.
    pub tools: Option<ToolFormat>,
}

/// A job's output text as it streams, split into reasoning and answer when the model thinks, all answer
/// otherwise.
pub struct Output(Option<ReasoningSplitter>);

impl Output {
    pub fn new(reasoning: Option<ThinkStart>) -> Self {
        Self(reasoning.map(ReasoningSplitter::new))
    }

    /// The next piece of output: what of it is now known.
    pub fn push(&mut self, text: &str) -> Split {
        match &mut self.0 {
            Some(s) => s.push(text),
            None => Split { reasoning: String::new(), content: text.to_string() },
        }
    }

    /// The end of the output: what was held back.
    pub fn finish(&mut self) -> Split {
        self.0.as_mut().map(ReasoningSplitter::finish).unwrap_or_default()
    }
}

/// What the worker reports for a job, in this order: `Started`, any number of `Text`, then `Done`; or `Failed`
/// at any point.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The model is loaded and the prompt fits: output follows.
    Started {
        model: String,
        prompt_tokens: usize,
        /// For a chat with a model that thinks: where its output starts (inside an open `<think>` or not, or in
        /// harmony's channel messages).
        reasoning: Option<ThinkStart>,
        /// For a request with tools: how the model writes its calls (what to read them out of the text with).
        tools: Option<ToolFormat>,
    },
    Text {
        text: String,
        /// The log-probabilities of the tokens whose text this completes (when the request asked for them).
        logprobs: Vec<TokenLogprob>,
    },
    Done {
        finish: FinishReason,
        /// The stop string that ended it, if one did.
        stop_sequence: Option<String>,
        prompt_tokens: usize,
        completion_tokens: usize,
        seconds: f64,
    },
    Failed(ApiError),
}

/// How the worker runs models.
#[derive(Debug, Clone)]
pub struct InferenceConfig {
    /// Jobs that may wait before new ones are refused.
    pub queue: usize,
    /// Most positions of a sequence (capped by each model's own context).
    pub context: usize,
}

/// The model requests run on, as this node (the origin) sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub id: String,
    pub path: PathBuf,
    pub n_layers: usize,
    /// Width of the hidden state that passes between stages.
    pub hidden_size: usize,
    /// Memory the whole model needs: weights, KV cache at the full context, buffers.
    pub needs: u64,
    pub context: usize,
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
    pub busy: bool,
    pub queued: usize,
    /// Jobs taken from the queue so far.
    pub requests: u64,
    pub tokens_generated: u64,
    /// The last finished job: how it ended and how many tokens it generated.
    pub last: Option<(Outcome, usize)>,
}

/// What the worker and the handles share.
#[derive(Debug, Default)]
struct Shared {
    stopping: AtomicBool,
    busy: AtomicBool,
    requests: AtomicU64,
    tokens: AtomicU64,
    last: Mutex<Option<(Outcome, usize)>>,
}

/// The handle HTTP handlers submit jobs through.
#[derive(Clone)]
pub struct Inference {
    jobs: mpsc::Sender<Job>,
    config: InferenceConfig,
    cluster: Cluster,
    shared: Arc<Shared>,
}

impl Inference {
    /// Starts the worker thread. `preload` is planned and this node's layers of it loaded before this returns;
    /// an error doing so is returned.
    pub fn start(cluster: Cluster, config: InferenceConfig, preload: Option<&str>) -> Result<Self, ApiError> {
        let config = InferenceConfig { queue: config.queue.max(1), ..config };
        let (jobs, rx) = mpsc::channel(config.queue);
        let shared = Arc::new(Shared::default());
        let mut worker =
            Worker { cluster: cluster.clone(), context: config.context, shared: shared.clone(), model: None };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let preload = preload.map(str::to_string);
        std::thread::Builder::new()
            .name("exo-inference".into())
            .spawn(move || {
                let loaded = preload.map_or(Ok(()), |m| worker.preload(&m));
                let ok = loaded.is_ok();
                let _ = ready_tx.send(loaded);
                if ok {
                    worker.run(rx);
                }
            })
            .map_err(|e| ApiError::Internal(format!("cannot start the inference thread: {e}")))?;
        ready_rx.recv().map_err(|_| ApiError::Internal("the inference thread stopped while loading".into()))??;
        Ok(Self { jobs, config, cluster, shared })
    }

    pub fn store(&self) -> &ModelStore {
        self.cluster.store()
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
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

    /// Queues a job for `prompt` and waits for its first event: the job's output channel once it has started
    /// (with where a thinking model's output starts and the prompt's length), or why it could not.
    pub async fn begin(&self, prompt: Prompt, options: Options) -> Result<Started, ApiError> {
        let (tx, mut events) = mpsc::unbounded_channel();
        self.submit(Job { prompt, options, events: tx })?;
        match events.recv().await {
            Some(Event::Started { reasoning, prompt_tokens, tools, .. }) => {
                Ok(Started { events, reasoning, prompt_tokens, tools })
            }
            Some(Event::Failed(e)) => Err(e),
            _ => Err(ApiError::Internal("the inference thread stopped".into())),
        }
    }

    /// Ends the job in progress and every queued one with [`ApiError::ShuttingDown`], and refuses new ones.
    pub fn shut_down(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.cluster.shut_down();
    }

    /// What the worker is doing now.
    pub fn status(&self) -> Status {
        let s = &self.shared;
        Status {
            busy: s.busy.load(Ordering::Acquire),
            queued: self.config.queue - self.jobs.capacity(),
            requests: s.requests.load(Ordering::Relaxed),
            tokens_generated: s.tokens.load(Ordering::Relaxed),
            last: s.last.lock().map(|l| *l).unwrap_or(None),
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::ModelNotFound(m) => ApiError::ModelNotFound(m),
            ClusterError::ModelTooLarge { .. } => ApiError::ModelTooLarge(e.to_string()),
            // The same answer as a model that does not fit: 503, insufficient_memory, naming the device.
            ClusterError::DeviceMemory(m) => ApiError::ModelTooLarge(m),
            ClusterError::NodeFailed { .. } => ApiError::NodeFailed(e.to_string()),
            ClusterError::ShuttingDown => ApiError::ShuttingDown,
            ClusterError::ModelUnavailable(m) => ApiError::ModelUnavailable(m),
            ClusterError::InvalidModel(m) => ApiError::InvalidField { param: "model".into(), message: m },
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// What the origin keeps of a model: enough to plan and to turn text into tokens and back.
struct Model {
    info: ModelInfo,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    /// Whether it writes `<think>` reasoning before its answers.
    thinks: bool,
    /// How it writes tool calls.
    tool_format: ToolFormat,
    /// Its vocabulary for constrained output, read the first time a request asks for it.
    vocabulary: Option<Vocabulary>,
}

struct Worker {
    cluster: Cluster,
    context: usize,
    shared: Arc<Shared>,
    model: Option<Model>,
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
            // Every stage has freed the request's KV cache by now; the status says so before the client hears
            // the end.
            if let Ok(mut last) = self.shared.last.lock() {
                *last = Some((outcome, tokens));
            }
            self.shared.busy.store(false, Ordering::Release);
            if let Some(event) = last_event {
                let _ = job.events.send(event);
            }
        }
    }

    /// Reads `model`'s tokenizer, template and size (not its weights), unless it is the one read last.
    fn model(&mut self, model: &str) -> Result<&Model, ApiError> {
        if self.model.as_ref().is_some_and(|m| m.info.id == model) {
            return self.model.as_ref().ok_or_else(|| ApiError::Internal("no model".into()));
        }
        // A request's model is never a local path (only a name, hf:, a catalog name, or the operator's --model):
        // anything else is an unknown model, decided without looking at the disk.
        let resolved = self.cluster.store().resolve_untrusted(model).map_err(ClusterError::from)?;
        // A catalog model too large for the cluster by the catalog's size alone (weights, without the KV cache) is
        // refused before anything is fetched.
        if let ModelRef::Hub { size: Some(size), layers: Some(layers), .. } = resolved {
            self.cluster.check_fits(model, layers, size + size / 10 + (100 << 20))?;
        }
        // The origin needs the header only (tokenizer, chat template, sizes); the layers go to the plan's nodes.
        let path = self.cluster.fetch(model, exo_models::Need::Header)?.path;
        let read = || -> Result<Model, EngineError> {
            let gguf = Gguf::open(&path)?;
            let config = ModelConfig::from_gguf(&gguf)?;
            let tokenizer = Tokenizer::from_gguf(&gguf)?;
            let template = ChatTemplate::from_gguf(&gguf, &tokenizer)?;
            let context = self.context.min(config.context_length);
            let needs = model_needs(&gguf, context, self.cluster.kv_type())?;
            let info = ModelInfo {
                id: model.to_string(),
                path: path.clone(),
                n_layers: config.n_layers,
                hidden_size: config.hidden_size,
                needs,
                context,
            };
            let thinks = reasoning::model_thinks(&template, &tokenizer);
            let tool_format = ToolFormat::detect(&template, &tokenizer);
            Ok(Model { info, tokenizer, template, thinks, tool_format, vocabulary: None })
        };
        let m = read().map_err(|e| ApiError::Internal(format!("cannot read {model}: {e}")))?;
        Ok(self.model.insert(m))
    }

    /// The grammar the output must follow (a `response_format` schema, or the calls `tools` allow), compiled once
    /// here so that a schema it cannot express is the client's 400 (naming the feature) before any node works on
    /// it.
    fn grammar(&mut self, model: &str, options: &Options) -> Result<Option<Grammar>, ApiError> {
        if options.schema.is_none() && options.tools.is_none() {
            return Ok(None);
        }
        self.model(model)?;
        let m = self.model.as_mut().ok_or_else(|| ApiError::Internal("no model".into()))?;
        let (grammar, param) = match (&options.schema, &options.tools) {
            (Some(schema), _) => (Grammar::json_schema(schema.clone()), "response_format"),
            (None, Some(tools)) => (tool_calls::grammar(m.tool_format, tools), "tools"),
            (None, None) => return Ok(None),
        };
        let vocabulary = match &mut m.vocabulary {
            Some(v) => v,
            empty => empty.insert(
                Vocabulary::new(&m.tokenizer).map_err(|e| ApiError::Internal(format!("cannot read {model}: {e}")))?,
            ),
        };
        vocabulary.constrain(&grammar).map_err(|e| ApiError::field(param, e.to_string()))?;
        Ok(Some(grammar))
    }

    fn preload(&mut self, model: &str) -> Result<(), ApiError> {
        let info = self.model(model)?.info.clone();
        let plan = self.cluster.plan(&info.id, info.n_layers, info.needs, info.hidden_size)?;
        self.cluster.preload(&plan, info.context)?;
        tracing::info!("loaded {}", info.path.display());
        Ok(())
    }

    /// Runs one job until its last event; returns how it ended, how many tokens it generated, and the last event
    /// (`Done`, or `Failed`) for the caller to send once the request is over everywhere.
    fn serve(&mut self, job: &Job) -> Result<(Outcome, usize, Option<Event>), ApiError> {
        let shared = self.shared.clone();
        if shared.stopping.load(Ordering::Acquire) {
            return Err(ApiError::ShuttingDown);
        }
        let o = &job.options;
        let cluster = self.cluster.clone();
        let grammar = self.grammar(&o.model, o)?;
        let m = self.model(&o.model)?;
        let tools = o.tools.as_ref().map(|_| m.tool_format);
        let engine = |e: EngineError| ApiError::Internal(e.to_string());
        let (prompt, reasoning, param) = match &job.prompt {
            Prompt::Chat(messages) | Prompt::Count(messages) => {
                let chat = match &o.tools {
                    Some(tools) => tool_calls::prompt(m.tool_format, &m.template, messages, tools),
                    None => m.template.prompt(messages),
                }
                .map_err(|e| ApiError::field("messages", e.to_string()))?;
                // A constrained answer starts at once: no reasoning comes before it, unless the model may write
                // text before its calls, or its calls' grammar is the whole turn with its reasoning (harmony).
                let free_start = o
                    .tools
                    .as_ref()
                    .is_some_and(|t| t.choice == ToolChoice::Auto || matches!(m.tool_format, ToolFormat::Harmony(_)));
                let reasoning =
                    (m.thinks && (grammar.is_none() || free_start)).then(|| ThinkStart::after_prompt(&chat.text));
                (chat.encode(&m.tokenizer).map_err(engine)?, reasoning, "messages")
            }
            // A hand-templated prompt: its special tokens (`<|im_start|>`) are tokens, as in llama-server.
            Prompt::Text(text) => (m.tokenizer.encode(text, true, true).map_err(engine)?, None, "prompt"),
        };
        if matches!(job.prompt, Prompt::Count(_)) {
            let counted = Event::Started { model: m.info.id.clone(), prompt_tokens: prompt.len(), reasoning, tools };
            let done = Event::Done {
                finish: FinishReason::Stop,
                stop_sequence: None,
                prompt_tokens: prompt.len(),
                completion_tokens: 0,
                seconds: 0.0,
            };
            let outcome = if job.events.send(counted).is_ok() {
                Outcome::Finished(FinishReason::Stop)
            } else {
                Outcome::Cancelled
            };
            return Ok((outcome, 0, Some(done)));
        }
        let context = m.info.context;
        // A max_tokens beyond the room left generates until the context is full, then ends with `length`.
        let room = context.saturating_sub(prompt.len());
        if room == 0 {
            return Err(ApiError::ContextExceeded { prompt: prompt.len(), context, param });
        }
        let max_tokens = o.max_tokens.map_or(room, |n| n.min(room));
        let plan = cluster.plan(&m.info.id, m.info.n_layers, m.info.needs, m.info.hidden_size)?;
        let mut params = o.generation_params(max_tokens);
        // The format's markers must reach the text for its calls to be read.
        params.preserved = tools.map(ToolFormat::preserved).unwrap_or_default();
        // Every stage must draw the same way: the origin picks the seed.
        params.sampling.seed = Some(params.sampling.seed.unwrap_or_else(rand::random));
        let mut generation = Generation::new(&m.tokenizer, &prompt, &params).map_err(engine)?;
        let first = Event::Started { model: m.info.id.clone(), prompt_tokens: prompt.len(), reasoning, tools };
        if job.events.send(first).is_err() {
            return Ok((Outcome::Cancelled, 0, None));
        }
        let started = Instant::now();
        let mut outcome = Outcome::Cancelled;
        let mut last_event = None;
        let request = RingRequest {
            plan: &plan,
            prompt: &prompt,
            sampling: params.sampling.clone(),
            max_tokens,
            context,
            eog: m.tokenizer.eog_ids().to_vec(),
            top_logprobs: o.logprobs,
            grammar: grammar.as_ref(),
        };
        let tokenizer = &m.tokenizer;
        let mut logprobs = ShownLogprobs::default();
        let ran = cluster.run(request, |event| {
            let gone = job.events.is_closed();
            if shared.stopping.load(Ordering::Acquire) {
                outcome = Outcome::Failed;
                last_event = Some(Event::Failed(ApiError::ShuttingDown));
                return ControlFlow::Break(());
            }
            let Some(event) = event else {
                return if gone { ControlFlow::Break(()) } else { ControlFlow::Continue(()) };
            };
            let step = generation.accept(event.token);
            shared.tokens.fetch_add(1, Ordering::Relaxed);
            let eog = tokenizer.is_eog(event.token);
            if o.logprobs.is_some() && !eog {
                logprobs.push(TokenLogprob::of(tokenizer, event), tokenizer.token_bytes(event.token, false).len());
            }
            let mut shown = logprobs.shown(&step.text);
            if step.finished.is_some() {
                // Everything was shown unless a stop string cut the end.
                let cut = step.finished == Some(FinishReason::Stop) && !eog;
                shown.extend(logprobs.finish(!cut));
            }
            if (!step.text.is_empty() || !shown.is_empty())
                && job.events.send(Event::Text { text: step.text, logprobs: shown }).is_err()
            {
                // The client went away: stop here.
                return ControlFlow::Break(());
            }
            if let Some(finish) = step.finished {
                outcome = Outcome::Finished(finish);
                last_event = Some(Event::Done {
                    finish,
                    stop_sequence: generation.stop_string().map(str::to_string),
                    prompt_tokens: prompt.len(),
                    completion_tokens: generation.generated(),
                    seconds: started.elapsed().as_secs_f64(),
                });
                return ControlFlow::Break(());
            }
            if gone {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        let generated = generation.generated();
        match ran {
            Ok(()) => Ok((outcome, generated, last_event)),
            Err(e) => Ok((Outcome::Failed, generated, Some(Event::Failed(e.into())))),
        }
    }
}
