//! `Inference`: the queue between HTTP handlers and the model, and the worker thread that runs it.
//!
//! One dedicated thread owns the loaded model (one at a time; a request for another model unloads it first) and
//! serves jobs in arrival order from a bounded queue; a full queue refuses new jobs at once. Each job streams
//! [`Event`]s back over its own channel; when the client goes away the channel closes, and the worker stops that
//! job before its next token. Tensor work never runs on the async runtime.

use std::path::{Path, PathBuf};
use std::time::Instant;

use exo_engine::chat_template::{ChatMessage, ChatTemplate};
use exo_engine::generation::{FinishReason, Generation};
use exo_engine::sampler::log_softmax;
use exo_engine::tokenizer::Tokenizer;
use exo_engine::{Device, EngineError, Gguf, KvType, ShardChain};
use tokio::sync::mpsc;

use crate::error::ApiError;
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

/// The handle HTTP handlers submit jobs through.
#[derive(Clone)]
pub struct Inference {
    jobs: mpsc::Sender<Job>,
    capacity: usize,
    store: ModelStore,
}

impl Inference {
    /// Starts the worker thread with a queue of `capacity` waiting jobs. `preload` is loaded right away.
    pub fn start(store: ModelStore, capacity: usize, kv_type: KvType, preload: Option<String>) -> Self {
        let (jobs, rx) = mpsc::channel(capacity.max(1));
        let worker_store = store.clone();
        std::thread::Builder::new()
            .name("exo-inference".into())
            .spawn(move || Worker { store: worker_store, kv_type, loaded: None }.run(rx, preload))
            .expect("spawning the inference thread");
        Self { jobs, capacity: capacity.max(1), store }
    }

    pub fn store(&self) -> &ModelStore {
        &self.store
    }

    /// Queues a job, or refuses it when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ApiError::QueueFull(self.capacity),
            mpsc::error::TrySendError::Closed(_) => ApiError::Internal("the inference thread has stopped".into()),
        })
    }
}

struct Loaded {
    name: String,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    chain: ShardChain,
}

struct Worker {
    store: ModelStore,
    kv_type: KvType,
    loaded: Option<Loaded>,
}

impl Worker {
    fn run(mut self, mut jobs: mpsc::Receiver<Job>, preload: Option<String>) {
        if let Some(model) = preload {
            match self.load(&model) {
                Ok(()) => tracing::info!("loaded {model}"),
                Err(e) => tracing::error!("cannot load {model}: {e}"),
            }
        }
        while let Some(job) = jobs.blocking_recv() {
            if job.events.is_closed() {
                continue;
            }
            if let Err(e) = self.serve(&job) {
                let _ = job.events.send(Event::Failed(e));
            }
        }
    }

    fn load(&mut self, model: &str) -> Result<(), ApiError> {
        if self.loaded.as_ref().is_some_and(|l| l.name == model) {
            return Ok(());
        }
        let path = self.store.resolve(model)?;
        // One model at a time: free the old one before reading the new one.
        self.loaded = None;
        let started = Instant::now();
        let load = |path: &Path| -> Result<Loaded, EngineError> {
            let gguf = Gguf::open(path)?;
            let tokenizer = Tokenizer::from_gguf(&gguf)?;
            let template = ChatTemplate::from_gguf(&gguf, &tokenizer)?;
            let chain =
                ShardChain::load_whole_with(&gguf, usize::MAX, &Device::Cpu, self.kv_type, exo_engine::Backend::Auto)?;
            Ok(Loaded { name: model.to_string(), tokenizer, template, chain })
        };
        let loaded = load(&path).map_err(|e| ApiError::Internal(format!("cannot load {model}: {e}")))?;
        tracing::info!("loaded {} in {:.1} s", path.display(), started.elapsed().as_secs_f64());
        self.loaded = Some(loaded);
        Ok(())
    }

    fn serve(&mut self, job: &Job) -> Result<(), ApiError> {
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
        if job.events.send(Event::Started { model: m.name.clone(), prompt_tokens: prompt.len() }).is_err() {
            return Ok(());
        }

        let started = Instant::now();
        m.chain.reset();
        let mut logits = m.chain.forward(&prompt).map_err(engine)?;
        loop {
            let logprob = o.logprobs.map(|k| (log_softmax(&logits), k));
            let step = generation.step(&mut logits);
            let logprob = logprob.map(|(lp, k)| token_logprob(&m.tokenizer, &lp, step.token, k));
            if !step.text.is_empty() || logprob.is_some() {
                // A closed channel: the client went away; stop here.
                if job.events.send(Event::Text { text: step.text, logprob }).is_err() {
                    return Ok(());
                }
            }
            if let Some(finish) = step.finished {
                let _ = job.events.send(Event::Done {
                    finish,
                    prompt_tokens: prompt.len(),
                    completion_tokens: generation.generated(),
                    seconds: started.elapsed().as_secs_f64(),
                });
                return Ok(());
            }
            if job.events.is_closed() {
                return Ok(());
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
