//! `ModelStore`: turns a model reference into local files, fetching what is missing. A whole file lands in the
//! Hugging Face cache; a node that needs only some layers gets only their byte ranges, from its peers first (any
//! [`RangeSource`]) and from the hub for the rest, into a sparse [`PartialFile`] under `$EXO_HOME/downloads`,
//! which is moved into the cache once every byte is there and its sha256 checks.
//!
//! References from the operator (`exo run`, `exo download`, `--model`) go through [`ModelStore::resolve`] and may
//! be paths; references from the API or a peer go through [`ModelStore::resolve_untrusted`], which takes a path
//! only if the operator allowed it ([`ModelStore::allow_path`]) and answers anything else without looking at the
//! disk. What a peer is told or served ([`ModelStore::held_local`], [`ModelStore::read_local`]) is only GGUF files.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use exo_engine::gguf::{GgufHeader, MAX_HEADER_BYTES};
use exo_engine::Shard;
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use crate::catalog;
use crate::error::{ModelsError, Result};
use crate::hf_cache::{check_commit, check_etag, contained, HfCache};
use crate::hub::{Hub, HubConfig, RemoteFile};
use crate::partial::PartialFile;
use crate::progress::{Downloads, Tracker};
use crate::ranges::RangeSet;
use crate::reference::{FileKey, ModelRef};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Somewhere else byte ranges of hub files may be had: another node of the cluster.
pub trait RangeSource: Send + Sync {
    /// Names it in logs.
    fn name(&self) -> String;
    /// What the file is and which of its bytes this source holds, if any.
    fn held<'a>(&'a self, key: &'a FileKey) -> BoxFuture<'a, Option<(RemoteFile, RangeSet)>>;
    /// Bytes `offset..offset+len` of the file, if this source holds all of them.
    fn read<'a>(&'a self, key: &'a FileKey, offset: u64, len: u64) -> BoxFuture<'a, Option<Vec<u8>>>;
}

/// What must be local.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Metadata and tensor table (tokenizer, chat template, sizes): enough to plan and tokenize.
    Header,
    /// What a shard of these layers reads ([`Shard::needs_tensor`]).
    Layers(Shard),
    /// Every byte, verified, in the Hugging Face cache.
    Whole,
}

impl std::fmt::Display for Need {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Need::Header => write!(f, "header"),
            Need::Layers(s) => write!(f, "{s}"),
            Need::Whole => write!(f, "whole file"),
        }
    }
}

/// A model made local enough for a need.
#[derive(Debug, Clone)]
pub struct LocalModel {
    /// What to open (for a split model, its first part, with the others beside it).
    pub path: PathBuf,
    pub from_hub: u64,
    pub from_peers: u64,
}

/// Where a store keeps and finds files.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// A folder of GGUF files served by file name (`--models-dir`).
    pub models_dir: Option<PathBuf>,
    pub cache: HfCache,
    /// Partial downloads (`$EXO_HOME/downloads`).
    pub downloads_dir: PathBuf,
    pub hub: HubConfig,
}

impl StoreConfig {
    /// The usual places: the Hugging Face cache the environment names ([`HfCache::from_env`]), partial downloads
    /// in `{exo_home}/downloads`, the hub as `HF_ENDPOINT`/`HF_TOKEN`/`HF_HUB_OFFLINE` say.
    pub fn from_env(models_dir: Option<PathBuf>, exo_home: &Path) -> Self {
        Self {
            models_dir,
            cache: HfCache::from_env(),
            downloads_dir: exo_home.join("downloads"),
            hub: HubConfig::from_env(),
        }
    }
}

/// One line of `exo models` and `/v1/models`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listing {
    pub id: String,
    /// `catalog`, `folder`, `cache` (a whole file in the Hugging Face cache) or `partial` (a partial download).
    pub source: &'static str,
    pub description: Option<String>,
    pub repo: Option<String>,
    pub file: Option<String>,
    pub architecture: Option<String>,
    pub layers: Option<usize>,
    pub size: Option<u64>,
    /// Bytes of it on this machine (the whole size when complete).
    pub cached_bytes: u64,
    pub complete: bool,
}

/// Bytes asked of a peer at a time (under gRPC's default 4 MiB message limit).
const PEER_PIECE: u64 = 2 << 20;
/// Bytes asked of the hub per request; several run in parallel.
const HUB_PIECE: u64 = 16 << 20;
/// First guess of a header's length; grown fourfold until the tensor table parses (up to the longest header the
/// parser reads).
const HEADER_GUESS: u64 = 1 << 20;
/// How every GGUF file starts.
const GGUF_MAGIC: &[u8; 4] = b"GGUF";

#[derive(Debug, Clone)]
pub struct ModelStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: StoreConfig,
    hub: Hub,
    downloads: Downloads,
    locks: std::sync::Mutex<HashMap<FileKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Paths the operator named (`--model`), which untrusted references may name too.
    allowed: std::sync::RwLock<HashSet<PathBuf>>,
}

/// One file of a model while it is made local.
struct Part {
    key: FileKey,
    /// Complete in the cache.
    complete: Option<PathBuf>,
    partial: Option<Arc<PartialFile>>,
    header: GgufHeader,
    size: u64,
}

impl ModelStore {
    pub fn new(config: StoreConfig) -> Result<Self> {
        let hub = Hub::new(config.hub.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                hub,
                downloads: Downloads::default(),
                locks: std::sync::Mutex::new(HashMap::new()),
                allowed: std::sync::RwLock::new(HashSet::new()),
            }),
        })
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    pub fn downloads(&self) -> &Downloads {
        &self.inner.downloads
    }

    pub fn offline(&self) -> bool {
        self.inner.hub.offline()
    }

    /// What `reference` names: a file of the models folder (by name, with or without `.gguf`), an `hf:` file, a
    /// catalog name, or a path to a GGUF file.
    /// For the operator's own commands; see [`ModelStore::resolve_untrusted`] for references from elsewhere.
    pub fn resolve(&self, reference: &str) -> Result<ModelRef> {
        if let Some(path) = self.in_models_dir(reference, false) {
            return Ok(ModelRef::Path(path));
        }
        if let Some(r) = ModelRef::parse_remote(reference)? {
            return Ok(r);
        }
        // Anything that looks like a path is one: opening it says what is wrong with it.
        let path = PathBuf::from(reference);
        if path.exists() || reference.contains('/') || reference.ends_with(".gguf") {
            return Ok(ModelRef::Path(path));
        }
        Err(ModelsError::Unknown(reference.into()))
    }

    /// Lets untrusted references name `path` exactly as written (the operator's `--model /path/x.gguf`).
    pub fn allow_path(&self, path: &Path) {
        let mut allowed = self.inner.allowed.write().unwrap_or_else(|e| e.into_inner());
        allowed.insert(path.to_path_buf());
    }

    /// What a reference from the API or a peer names: a GGUF file of the models folder by plain name (no `/`,
    /// `\`, leading `.`), an `hf:` file, a catalog name, or a path equal to one given to
    /// [`ModelStore::allow_path`] (as `Path`s compare: part by part, so `a//b` and `a/./b` are `a/b`, but `a/../b`
    /// is not `b`). Anything else is [`ModelsError::Unknown`], decided without touching the file
    /// system for it, so the answer says nothing of whether a path exists or what it holds.
    pub fn resolve_untrusted(&self, reference: &str) -> Result<ModelRef> {
        if let Some(path) = self.in_models_dir(reference, true) {
            return Ok(ModelRef::Path(path));
        }
        if let Some(r) = ModelRef::parse_remote(reference)? {
            return Ok(r);
        }
        let path = PathBuf::from(reference);
        let allowed = self.inner.allowed.read().unwrap_or_else(|e| e.into_inner());
        if !reference.is_empty() && allowed.contains(&path) {
            return Ok(ModelRef::Path(path));
        }
        Err(ModelsError::Unknown(reference.into()))
    }

    /// The file of the models folder that `name` names (itself or with `.gguf` added), when it is a plain name;
    /// `gguf_only` takes only names ending in `.gguf`.
    fn in_models_dir(&self, name: &str, gguf_only: bool) -> Option<PathBuf> {
        let dir = self.inner.config.models_dir.as_ref()?;
        let plain =
            !name.is_empty() && !name.starts_with("hf:") && !name.starts_with('.') && !name.contains(['/', '\\', '\0']);
        if !plain {
            return None;
        }
        [dir.join(name), dir.join(format!("{name}.gguf"))]
            .into_iter()
            .filter(|c| !gguf_only || c.extension().is_some_and(|e| e == "gguf"))
            .find(|c| c.is_file())
    }

    /// Where the partial download of `key` lives: inside the downloads folder, or an error.
    fn partial_path(&self, key: &FileKey) -> Result<PathBuf> {
        key.validate()?;
        let dir = &self.inner.config.downloads_dir;
        let path = dir.join(format!("models--{}", key.repo.replace('/', "--"))).join(&key.revision).join(&key.file);
        contained(dir, path)
    }

    fn lock(&self, key: &FileKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(key.clone()).or_default().clone()
    }

    /// Makes `reference` local enough for `need`, asking `peers` before the hub, and says where it is. For the
    /// operator's own commands; see [`ModelStore::fetch_untrusted`].
    pub async fn fetch(&self, reference: &str, need: Need, peers: &[Arc<dyn RangeSource>]) -> Result<LocalModel> {
        self.fetch_resolved(reference, self.resolve(reference)?, need, peers).await
    }

    /// [`ModelStore::fetch`] for a reference from the API or a peer, resolved by
    /// [`ModelStore::resolve_untrusted`].
    pub async fn fetch_untrusted(
        &self,
        reference: &str,
        need: Need,
        peers: &[Arc<dyn RangeSource>],
    ) -> Result<LocalModel> {
        self.fetch_resolved(reference, self.resolve_untrusted(reference)?, need, peers).await
    }

    async fn fetch_resolved(
        &self,
        reference: &str,
        resolved: ModelRef,
        need: Need,
        peers: &[Arc<dyn RangeSource>],
    ) -> Result<LocalModel> {
        let (key, parts) = match resolved {
            ModelRef::Path(path) => return Ok(LocalModel { path, from_hub: 0, from_peers: 0 }),
            ModelRef::Hub { key, parts, .. } => (key, parts),
        };
        let keys = key.parts(parts);
        let locks: Vec<_> = keys.iter().map(|k| self.lock(k)).collect();
        let mut guards = Vec::with_capacity(locks.len());
        for l in &locks {
            guards.push(l.lock().await);
        }
        let mut from = (0u64, 0u64);
        let path = match self.fetch_parts(reference, &keys, need, peers, &mut from).await {
            // The bad file is gone: one more try.
            Err(e @ ModelsError::HashMismatch { .. }) => {
                tracing::warn!("{e}; downloading it again");
                self.fetch_parts(reference, &keys, need, peers, &mut from).await?
            }
            other => other?,
        };
        Ok(LocalModel { path, from_hub: from.0, from_peers: from.1 })
    }

    async fn fetch_parts(
        &self,
        reference: &str,
        keys: &[FileKey],
        need: Need,
        peers: &[Arc<dyn RangeSource>],
        from: &mut (u64, u64),
    ) -> Result<PathBuf> {
        let mut parts = Vec::with_capacity(keys.len());
        for key in keys {
            parts.push(self.open_part(reference, key, peers, from).await?);
        }
        if parts[0].header.split_count() != keys.len() {
            return Err(ModelsError::Corrupt {
                what: keys[0].to_string(),
                message: format!(
                    "it says the model has {} parts; name the first part of a split model (…-00001-of-0000N.gguf)",
                    parts[0].header.split_count()
                ),
            });
        }
        let tied = !parts.iter().any(|p| p.header.tensors.contains_key("output.weight"));
        for part in &mut parts {
            let Some(partial) = part.partial.clone() else { continue };
            // One sort and merge, whatever the order of the tensor table.
            let mut wanted = vec![(0, part.header.data_start.min(part.size))];
            match need {
                Need::Header => {}
                Need::Whole => wanted.push((0, part.size)),
                Need::Layers(shard) => wanted.extend(
                    part.header
                        .tensors
                        .values()
                        .filter(|t| shard.needs_tensor(&t.name, tied))
                        .map(|t| (t.offset, t.offset + t.size)),
                ),
            }
            let wanted = RangeSet::from_ranges(wanted);
            self.fill(reference, &need.to_string(), &part.key, &partial, &wanted, peers, from).await?;
            if partial.is_complete() {
                part.complete = Some(self.promote(&part.key, &partial).await?);
                part.partial = None;
            }
        }
        if parts.len() == 1 {
            let p = &parts[0];
            return match &p.complete {
                Some(path) => Ok(path.clone()),
                None => self.partial_path(&p.key),
            };
        }
        // A split model opens from one folder: complete parts are linked into the partial downloads' folder.
        for p in &parts {
            if let Some(complete) = &p.complete {
                let link = self.partial_path(&p.key)?;
                if let Some(dir) = link.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| ModelsError::io(dir, e))?;
                }
                if link.symlink_metadata().is_ok() {
                    std::fs::remove_file(&link).map_err(|e| ModelsError::io(&link, e))?;
                }
                std::os::unix::fs::symlink(complete, &link).map_err(|e| ModelsError::io(&link, e))?;
            }
        }
        self.partial_path(&parts[0].key)
    }

    /// What the file is: the hub says, else a peer (one whose answer names a commit and an ETag the cache layout
    /// allows).
    async fn remote_info(&self, key: &FileKey, peers: &[Arc<dyn RangeSource>]) -> Result<RemoteFile> {
        if !self.offline() {
            match self.inner.hub.stat(key).await.and_then(|info| checked_info(key, info)) {
                Ok(info) => return Ok(info),
                // Unreachable hub: a peer may still have it.
                Err(e @ ModelsError::Network { .. }) if !peers.is_empty() => tracing::warn!("{e}; asking peers"),
                Err(e) => return Err(e),
            }
        }
        for peer in peers {
            if let Some((info, _)) = peer.held(key).await {
                match checked_info(key, info) {
                    Ok(info) => return Ok(info),
                    Err(e) => tracing::warn!("{}: {key}: {e}; not used", peer.name()),
                }
            }
        }
        Err(ModelsError::Offline {
            what: key.to_string(),
            cache: self.inner.config.cache.root().to_path_buf(),
            asked_peers: !peers.is_empty(),
        })
    }

    /// One file: found complete in the cache, or opened as a partial download with at least its header.
    async fn open_part(
        &self,
        reference: &str,
        key: &FileKey,
        peers: &[Arc<dyn RangeSource>],
        from: &mut (u64, u64),
    ) -> Result<Part> {
        if let Some(path) = self.inner.config.cache.find(key) {
            let file = std::fs::File::open(&path).map_err(|e| ModelsError::io(&path, e))?;
            let size = file.metadata().map_err(|e| ModelsError::io(&path, e))?.len();
            let header = GgufHeader::parse(std::io::BufReader::with_capacity(1 << 20, file), size, &path)?;
            return Ok(Part { key: key.clone(), complete: Some(path), partial: None, header, size });
        }
        let path = self.partial_path(key)?;
        let partial = match PartialFile::open(&path) {
            Some(p) => p,
            None => PartialFile::open_or_create(&path, &self.remote_info(key, peers).await?)?,
        };
        let partial = Arc::new(partial);
        let size = partial.info().size;
        let mut prefix = HEADER_GUESS.min(size);
        loop {
            let wanted = RangeSet::from_ranges([(0, prefix)]);
            self.fill(reference, "header", key, &partial, &wanted, peers, from).await?;
            let file = std::fs::File::open(&path).map_err(|e| ModelsError::io(&path, e))?;
            match GgufHeader::parse(std::io::BufReader::new(file.take(prefix)), size, &path) {
                Ok(header) => {
                    return Ok(Part { key: key.clone(), complete: None, partial: Some(partial), header, size })
                }
                Err(e) if e.is_short_read() && prefix < size.min(MAX_HEADER_BYTES) => {
                    prefix = (prefix * 4).min(size).min(MAX_HEADER_BYTES)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Fetches the bytes of `wanted` that `partial` lacks: from peers, then from the hub.
    #[allow(clippy::too_many_arguments)]
    async fn fill(
        &self,
        reference: &str,
        what: &str,
        key: &FileKey,
        partial: &Arc<PartialFile>,
        wanted: &RangeSet,
        peers: &[Arc<dyn RangeSource>],
        from: &mut (u64, u64),
    ) -> Result<()> {
        let missing = |p: &PartialFile| -> Vec<(u64, u64)> {
            let held = p.held();
            wanted.iter().flat_map(|(a, b)| held.missing(a, b)).collect()
        };
        let todo = missing(partial);
        let total: u64 = todo.iter().map(|(a, b)| b - a).sum();
        if total == 0 {
            return Ok(());
        }
        let tracker = Arc::new(self.inner.downloads.start(reference, &key.to_string(), what, total));
        let result = self.fill_from(key, partial, peers, &tracker, missing).await.map_err(|e| match e {
            // What is still to come, for the message.
            ModelsError::DiskFull { path, .. } => {
                let held = partial.held();
                let left: u64 = wanted.iter().flat_map(|(a, b)| held.missing(a, b)).map(|(a, b)| b - a).sum();
                ModelsError::DiskFull { path, needed_mib: left.div_ceil(1 << 20) }
            }
            other => other,
        });
        let (hub, peer) = tracker.counts();
        from.0 += hub;
        from.1 += peer;
        tracker.finish(result.as_ref().err().map(|e| e.to_string()));
        tracing::info!("{key} ({what}): {} bytes from the hub, {} from peers", hub, peer);
        result
    }

    async fn fill_from(
        &self,
        key: &FileKey,
        partial: &Arc<PartialFile>,
        peers: &[Arc<dyn RangeSource>],
        tracker: &Arc<Tracker>,
        missing: impl Fn(&PartialFile) -> Vec<(u64, u64)>,
    ) -> Result<()> {
        for peer in peers {
            let Some((info, theirs)) = peer.held(key).await else { continue };
            let info = match checked_info(key, info) {
                Ok(info) => info,
                Err(e) => {
                    tracing::warn!("{}: {key}: {e}; not used", peer.name());
                    continue;
                }
            };
            if info.size != partial.info().size
                || (info.etag.is_some() && partial.info().etag.is_some() && info.etag != partial.info().etag)
            {
                tracing::warn!(
                    "{}: its {key} is another file (size {}, etag {:?}); not used",
                    peer.name(),
                    info.size,
                    info.etag
                );
                continue;
            }
            let mut offered = Vec::new();
            for (a, b) in missing(partial) {
                offered.extend(theirs.within(a, b));
            }
            'ranges: for (a, b) in offered {
                let mut at = a;
                while at < b {
                    let len = PEER_PIECE.min(b - at);
                    // A peer's answer is used only if it is exactly the bytes asked for.
                    match peer.read(key, at, len).await {
                        Some(bytes) if bytes.len() as u64 == len => {
                            partial.write_at(at, &bytes)?;
                            partial.mark(at, at + len)?;
                            tracker.add_peer_bytes(len);
                        }
                        Some(bytes) => {
                            tracing::warn!(
                                "{}: {} bytes for a {len}-byte range of {key}; ignored",
                                peer.name(),
                                bytes.len()
                            );
                            break 'ranges;
                        }
                        None => break 'ranges,
                    }
                    at += len;
                }
            }
        }
        let rest = missing(partial);
        if rest.is_empty() {
            return Ok(());
        }
        if self.offline() {
            return Err(ModelsError::Offline {
                what: key.to_string(),
                cache: self.inner.config.cache.root().to_path_buf(),
                asked_peers: !peers.is_empty(),
            });
        }
        let mut pieces = std::collections::VecDeque::new();
        for (a, b) in rest {
            let mut at = a;
            while at < b {
                let end = (at + HUB_PIECE).min(b);
                pieces.push_back((at, end));
                at = end;
            }
        }
        let queue = Arc::new(std::sync::Mutex::new(pieces));
        let mut workers = JoinSet::new();
        for _ in 0..self.inner.hub.config().connections.max(1) {
            let (queue, hub, key, partial, tracker) =
                (queue.clone(), self.inner.hub.clone(), key.clone(), partial.clone(), tracker.clone());
            workers.spawn(async move {
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                    let Some((a, b)) = next else { return Ok(()) };
                    fetch_piece(&hub, &key, &partial, &tracker, a, b).await?;
                }
            });
        }
        let mut first_error = None;
        while let Some(done) = workers.join_next().await {
            let result = done.unwrap_or_else(|e| {
                Err(ModelsError::Corrupt { what: key.to_string(), message: format!("a download task failed: {e}") })
            });
            if let Err(e) = result {
                queue.lock().map(|mut q| q.clear()).ok();
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Verifies a complete partial file against the hub's sha256 and moves it into the cache.
    async fn promote(&self, key: &FileKey, partial: &Arc<PartialFile>) -> Result<PathBuf> {
        let path = partial.path().to_path_buf();
        let hashing = path.clone();
        let actual = tokio::task::spawn_blocking(move || sha256_file(&hashing))
            .await
            .map_err(|e| ModelsError::Corrupt { what: key.to_string(), message: e.to_string() })??;
        let info = partial.info().clone();
        if let Some(expected) = info.sha256() {
            if !expected.eq_ignore_ascii_case(&actual) {
                partial.discard();
                return Err(ModelsError::HashMismatch { file: key.to_string(), expected: expected.into(), actual });
            }
        }
        let etag = info.etag.clone().unwrap_or(actual);
        let commit = info.commit.clone().unwrap_or_else(|| key.revision.clone());
        // Checked before the record goes: a record that names no usable commit or ETag keeps the download.
        let (commit, etag) = (check_commit(&commit)?, check_etag(&etag)?);
        partial.forget_record();
        let cached = self.inner.config.cache.insert(key, &commit, &etag, &path)?;
        tracing::info!("{key}: complete, sha256 checked, in {}", cached.display());
        Ok(cached)
    }

    /// What this node can tell a peer of `key`: what the file is and which bytes of it are here (all of them when
    /// it is complete in the cache). Only GGUF files are told of: the name ends in `.gguf` and the bytes start
    /// with the GGUF magic (a partial download only once it holds them); other files of the cache (another tool's
    /// downloads, private repositories) are `None`, as if absent.
    pub fn held_local(&self, key: &FileKey) -> Option<(RemoteFile, RangeSet)> {
        match self.local_gguf(key)? {
            Local::Complete(path, file) => {
                let size = file.metadata().ok()?.len();
                let etag = std::fs::read_link(&path)
                    .ok()
                    .and_then(|t| t.file_name().and_then(|n| check_etag(&n.to_string_lossy()).ok()));
                let commit = self.inner.config.cache.commit(&key.repo, &key.revision);
                Some((RemoteFile { size, etag, commit }, RangeSet::from_ranges([(0, size)])))
            }
            Local::Partial(p) => Some((p.info().clone(), p.held())),
        }
    }

    /// Bytes of `key` for a peer, if this node holds all of them and the file is one [`ModelStore::held_local`]
    /// tells of.
    pub fn read_local(&self, key: &FileKey, offset: u64, len: u64) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        match self.local_gguf(key)? {
            Local::Complete(_, file) => {
                if offset.checked_add(len)? > file.metadata().ok()?.len() {
                    return None;
                }
                let mut buf = vec![0u8; usize::try_from(len).ok()?];
                file.read_exact_at(&mut buf, offset).ok()?;
                Some(buf)
            }
            Local::Partial(p) => p.read_held(offset, len),
        }
    }

    /// The complete or partial GGUF file of `key` on this machine, if it is one.
    fn local_gguf(&self, key: &FileKey) -> Option<Local> {
        use std::os::unix::fs::FileExt;
        key.validate().ok()?;
        if !key.file.ends_with(".gguf") {
            return None;
        }
        if let Some(path) = self.inner.config.cache.find(key) {
            let file = std::fs::File::open(&path).ok()?;
            let mut magic = [0u8; 4];
            file.read_exact_at(&mut magic, 0).ok()?;
            return (&magic == GGUF_MAGIC).then_some(Local::Complete(path, file));
        }
        let partial = PartialFile::open(&self.partial_path(key).ok()?)?;
        let magic = partial.read_held(0, GGUF_MAGIC.len() as u64)?;
        (magic == GGUF_MAGIC).then_some(Local::Partial(partial))
    }

    /// Every model this node can name: the catalog (with what of each is on this machine), the models folder, and
    /// GGUF files in the Hugging Face cache that the catalog does not name.
    pub fn list(&self) -> Vec<Listing> {
        let cache = &self.inner.config.cache;
        let mut out = Vec::new();
        let mut catalog_files = std::collections::HashSet::new();
        for e in catalog::entries() {
            for (quant, f) in &e.files {
                let key = FileKey::new(&e.repo, "main", &f.file);
                let mut cached = 0;
                let mut complete = true;
                for k in key.parts(f.parts) {
                    catalog_files.insert((k.repo.clone(), k.file.clone()));
                    if let Some(p) = cache.find(&k) {
                        cached += std::fs::metadata(p).map_or(0, |m| m.len());
                    } else {
                        complete = false;
                        cached += self
                            .partial_path(&k)
                            .ok()
                            .and_then(|path| PartialFile::open(&path))
                            .map_or(0, |p| p.held().len());
                    }
                }
                let id = if quant == e.default_quantization() {
                    e.name.clone()
                } else {
                    format!("{}:{}", e.name, quant.to_ascii_lowercase())
                };
                out.push(Listing {
                    id,
                    source: "catalog",
                    description: Some(format!("{} {quant}", e.description)),
                    repo: Some(e.repo.clone()),
                    file: Some(f.file.clone()),
                    architecture: Some(e.architecture.clone()),
                    layers: Some(e.layers),
                    size: Some(f.size),
                    cached_bytes: cached,
                    complete,
                });
            }
        }
        if let Some(dir) = &self.inner.config.models_dir {
            let mut files: Vec<_> = std::fs::read_dir(dir).into_iter().flatten().flatten().collect();
            files.sort_by_key(|e| e.file_name());
            for entry in files {
                let name = entry.file_name().to_string_lossy().to_string();
                let Some(id) = name.strip_suffix(".gguf") else { continue };
                let size = entry.metadata().map_or(0, |m| m.len());
                out.push(Listing {
                    id: id.into(),
                    source: "folder",
                    description: None,
                    repo: None,
                    file: Some(entry.path().display().to_string()),
                    architecture: None,
                    layers: None,
                    size: Some(size),
                    cached_bytes: size,
                    complete: true,
                });
            }
        }
        // Partial downloads of files the catalog does not name.
        for (key, held, size) in self.partial_downloads() {
            if catalog_files.contains(&(key.repo.clone(), key.file.clone())) || cache.find(&key).is_some() {
                continue;
            }
            out.push(Listing {
                id: key.to_string(),
                source: "partial",
                description: None,
                repo: Some(key.repo.clone()),
                file: Some(key.file.clone()),
                architecture: None,
                layers: None,
                size: Some(size),
                cached_bytes: held,
                complete: false,
            });
        }
        for (repo, file, path) in cache.list() {
            if catalog_files.contains(&(repo.clone(), file.clone())) {
                continue;
            }
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            out.push(Listing {
                id: format!("hf:{repo}/{file}"),
                source: "cache",
                description: None,
                repo: Some(repo),
                file: Some(file),
                architecture: None,
                layers: None,
                size: Some(size),
                cached_bytes: size,
                complete: true,
            });
        }
        out
    }
}

impl ModelStore {
    /// Every partial download under the downloads folder: its key, bytes held and size.
    fn partial_downloads(&self) -> Vec<(FileKey, u64, u64)> {
        let mut out = Vec::new();
        for (repo, dir) in crate::hf_cache::repo_dirs(&self.inner.config.downloads_dir) {
            for revision in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let rev = revision.file_name().to_string_lossy().to_string();
                for (rel, _) in crate::hf_cache::files_under(&revision.path()) {
                    let Some(file) = rel.strip_suffix(".ranges") else { continue };
                    let Some(partial) = PartialFile::open(&revision.path().join(file)) else { continue };
                    out.push((FileKey::new(&repo, &rev, file), partial.held().len(), partial.info().size));
                }
            }
        }
        out.sort();
        out
    }
}

/// A GGUF file of this machine that a peer may be told of and served.
enum Local {
    Complete(PathBuf, std::fs::File),
    Partial(PartialFile),
}

/// `info` with its ETag and commit in the forms the cache layout names files by, or an error: the commit is 40
/// hex digits (the key's revision when that is a commit and `info` names none), the ETag a sha256 or git sha1.
fn checked_info(key: &FileKey, info: RemoteFile) -> Result<RemoteFile> {
    let etag = info.etag.as_deref().map(check_etag).transpose()?;
    let commit = match info.commit.as_deref() {
        Some(c) => check_commit(c)?,
        None => check_commit(&key.revision).map_err(|_| ModelsError::Corrupt {
            what: key.to_string(),
            message: format!("the answer does not say which commit '{}' is (no X-Repo-Commit)", key.revision),
        })?,
    };
    Ok(RemoteFile { size: info.size, etag, commit: Some(commit) })
}

/// Fetches `a..b` of `key` from the hub into `partial`, resuming where a dropped connection stopped (up to the
/// configured retries); what arrived is recorded even when it fails.
async fn fetch_piece(
    hub: &Hub,
    key: &FileKey,
    partial: &Arc<PartialFile>,
    tracker: &Tracker,
    a: u64,
    b: u64,
) -> Result<()> {
    let mut at = a;
    let mut attempt = 0;
    loop {
        let mut reached = at;
        let mut sink = |offset: u64, bytes: &[u8]| -> Result<()> {
            partial.write_at(offset, bytes)?;
            reached = offset + bytes.len() as u64;
            tracker.add_hub_bytes(bytes.len() as u64);
            Ok(())
        };
        let result = hub.read_range(key, at, b, &mut sink).await;
        at = reached;
        match result {
            Ok(()) => return partial.mark(a, b),
            Err(ModelsError::Network { url, message }) if attempt < hub.config().retries => {
                attempt += 1;
                tracing::warn!("{url}: {message}; resuming at byte {at} (retry {attempt})");
                tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
            }
            Err(e) => {
                partial.mark(a, at)?;
                return Err(e);
            }
        }
    }
}

/// The sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| ModelsError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| ModelsError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("exo-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn offline_store(dir: &Path, models_dir: Option<PathBuf>) -> ModelStore {
        ModelStore::new(StoreConfig {
            models_dir,
            cache: HfCache::new(dir.join("hf")),
            downloads_dir: dir.join("downloads"),
            hub: HubConfig {
                endpoint: "http://127.0.0.1:9".into(),
                token: None,
                offline: true,
                connections: 1,
                retries: 0,
            },
        })
        .unwrap()
    }

    /// The error's message with `reference` replaced, to compare the messages for two references.
    fn message_without(e: ModelsError, reference: &str) -> String {
        assert!(matches!(e, ModelsError::Unknown(_)), "{reference}: {e}");
        e.to_string().replace(reference, "REFERENCE")
    }

    #[test]
    fn untrusted_references_name_no_path_the_operator_did_not_allow() {
        let dir = temp_dir("untrusted");
        let models = dir.join("models");
        std::fs::create_dir_all(&models).unwrap();
        std::fs::write(models.join("local.gguf"), b"GGUF").unwrap();
        std::fs::write(models.join("notes.txt"), b"private notes").unwrap();
        let secret = dir.join("secret.gguf");
        std::fs::write(&secret, b"SECRET BYTES").unwrap();
        let s = offline_store(&dir, Some(models.clone()));

        // A file that exists and one that does not get the same answer, which names neither its bytes nor its
        // existence.
        let existing = secret.to_str().unwrap();
        let missing = dir.join("missing.gguf");
        let missing = missing.to_str().unwrap();
        let told = message_without(s.resolve_untrusted(existing).unwrap_err(), existing);
        assert_eq!(told, message_without(s.resolve_untrusted(missing).unwrap_err(), missing));
        assert!(!told.contains("SECRET") && !told.contains("exist"), "{told}");
        for reference in ["/etc/passwd", "../secret.gguf", "./local.gguf", "models/local.gguf", "notes.txt", "notes"] {
            assert!(matches!(s.resolve_untrusted(reference), Err(ModelsError::Unknown(_))), "{reference}");
        }
        // The operator's own commands still take paths.
        assert_eq!(s.resolve(existing).unwrap(), ModelRef::Path(secret.clone()));

        // A models-folder file by plain name, an hf: reference and a catalog name are accepted.
        assert_eq!(s.resolve_untrusted("local").unwrap(), ModelRef::Path(models.join("local.gguf")));
        assert_eq!(s.resolve_untrusted("local.gguf").unwrap(), ModelRef::Path(models.join("local.gguf")));
        assert!(matches!(s.resolve_untrusted("hf:o/r/m.gguf").unwrap(), ModelRef::Hub { .. }));
        assert!(matches!(s.resolve_untrusted("llama-3.1-8b").unwrap(), ModelRef::Hub { .. }));

        // A path the operator allowed is accepted as allowed (compared part by part: `a//b` is `a/b`), and not
        // when spelled through other folders.
        s.allow_path(&secret);
        assert_eq!(s.resolve_untrusted(existing).unwrap(), ModelRef::Path(secret.clone()));
        let respelled = format!("{}/models/../secret.gguf", dir.display());
        assert!(matches!(s.resolve_untrusted(&respelled), Err(ModelsError::Unknown(_))));
        assert!(matches!(s.resolve_untrusted(missing), Err(ModelsError::Unknown(_))));
    }

    #[tokio::test]
    async fn fetch_untrusted_refuses_paths_and_fetches_what_resolve_untrusted_accepts() {
        let dir = temp_dir("fetch-untrusted");
        let models = dir.join("models");
        std::fs::create_dir_all(&models).unwrap();
        std::fs::write(models.join("local.gguf"), b"GGUF").unwrap();
        let s = offline_store(&dir, Some(models.clone()));
        let e = s.fetch_untrusted("/etc/passwd", Need::Header, &[]).await.unwrap_err();
        assert!(matches!(e, ModelsError::Unknown(_)), "{e}");
        let local = s.fetch_untrusted("local", Need::Header, &[]).await.unwrap();
        assert_eq!(local.path, models.join("local.gguf"));
        s.allow_path(Path::new("/operator/model.gguf"));
        let local = s.fetch_untrusted("/operator/model.gguf", Need::Header, &[]).await.unwrap();
        assert_eq!(local.path, PathBuf::from("/operator/model.gguf"));
    }

    #[test]
    fn peers_are_told_of_and_served_only_gguf_files() {
        let dir = temp_dir("only-gguf");
        let s = offline_store(&dir, None);
        let cache = HfCache::new(dir.join("hf"));
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let put = |file: &str, bytes: &[u8], etag: &str| {
            let src = dir.join("src");
            std::fs::write(&src, bytes).unwrap();
            cache.insert(&FileKey::new("o/r", "main", file), commit, etag, &src).unwrap();
        };
        put("m.gguf", b"GGUF model bytes", &"a".repeat(64));
        // Another tool's download of a private repository, and a GGUF file under another name.
        put("secret.gguf", b"private key material", &"b".repeat(64));
        put("model.bin", b"GGUF but not named so", &"c".repeat(64));
        put("config.json", b"{}", &"d".repeat(40));
        let key = |file: &str| FileKey::new("o/r", "main", file);

        let (info, held) = s.held_local(&key("m.gguf")).unwrap();
        assert_eq!((info.size, info.etag.as_deref(), held.len()), (16, Some("a".repeat(64).as_str()), 16));
        assert_eq!(s.read_local(&key("m.gguf"), 0, 4).unwrap(), b"GGUF");
        for file in ["secret.gguf", "model.bin", "config.json", "absent.gguf"] {
            assert!(s.held_local(&key(file)).is_none(), "{file}");
            assert!(s.read_local(&key(file), 0, 4).is_none(), "{file}");
        }

        // A partial download is told of once it holds the magic, and only if the magic is GGUF's.
        let info = RemoteFile { size: 64, etag: Some("e".repeat(64)), commit: Some(commit.into()) };
        let partial = PartialFile::open_or_create(&s.partial_path(&key("p.gguf")).unwrap(), &info).unwrap();
        partial.write_at(8, b"tail").unwrap();
        partial.mark(8, 12).unwrap();
        assert!(s.held_local(&key("p.gguf")).is_none(), "its first bytes are not held");
        assert!(s.read_local(&key("p.gguf"), 8, 4).is_none());
        partial.write_at(0, b"GGUF").unwrap();
        partial.mark(0, 4).unwrap();
        assert_eq!(s.held_local(&key("p.gguf")).unwrap().1.iter().collect::<Vec<_>>(), [(0, 4), (8, 12)]);
        assert_eq!(s.read_local(&key("p.gguf"), 8, 4).unwrap(), b"tail");
        let other = PartialFile::open_or_create(&s.partial_path(&key("q.gguf")).unwrap(), &info).unwrap();
        other.write_at(0, b"PK\x03\x04").unwrap();
        other.mark(0, 4).unwrap();
        assert!(s.held_local(&key("q.gguf")).is_none());
        assert!(s.read_local(&key("q.gguf"), 0, 4).is_none());
    }

    #[test]
    fn partial_downloads_stay_in_the_downloads_folder() {
        let dir = temp_dir("partial-path");
        let s = offline_store(&dir, None);
        let path = s.partial_path(&FileKey::new("o/r", "main", "d/m.gguf")).unwrap();
        assert_eq!(path, dir.join("downloads/models--o--r/main/d/m.gguf"));
        for bad in [FileKey::new("o/r", "..", "m.gguf"), FileKey::new("o/r", "main", "../../../m.gguf")] {
            assert!(s.partial_path(&bad).is_err(), "{bad:?}");
        }
    }
}
