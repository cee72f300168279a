//! `ModelStore`: turns a model reference into local files, fetching what is missing. A whole file lands in the
//! Hugging Face cache; a node that needs only some layers gets only their byte ranges, from its peers first (any
//! [`RangeSource`]) and from the hub for the rest, into a sparse [`PartialFile`] under `$EXO_HOME/downloads`,
//! which is moved into the cache once every byte is there and its sha256 checks.

use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use exo_engine::gguf::GgufHeader;
use exo_engine::Shard;
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use crate::catalog;
use crate::error::{ModelsError, Result};
use crate::hf_cache::HfCache;
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
/// First guess of a header's length; grown fourfold until the tensor table parses.
const HEADER_GUESS: u64 = 1 << 20;

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
    pub fn resolve(&self, reference: &str) -> Result<ModelRef> {
        if !reference.starts_with("hf:") {
            if let Some(dir) = &self.inner.config.models_dir {
                let is_name = !reference.contains('/') && !reference.starts_with('.') && !reference.is_empty();
                for candidate in [dir.join(reference), dir.join(format!("{reference}.gguf"))] {
                    if is_name && candidate.is_file() {
                        return Ok(ModelRef::Path(candidate));
                    }
                }
            }
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

    /// Where the partial download of `key` lives.
    fn partial_path(&self, key: &FileKey) -> PathBuf {
        self.inner
            .config
            .downloads_dir
            .join(format!("models--{}", key.repo.replace('/', "--")))
            .join(&key.revision)
            .join(&key.file)
    }

    fn lock(&self, key: &FileKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(key.clone()).or_default().clone()
    }

    /// Makes `reference` local enough for `need`, asking `peers` before the hub, and says where it is.
    pub async fn fetch(&self, reference: &str, need: Need, peers: &[Arc<dyn RangeSource>]) -> Result<LocalModel> {
        let (key, parts) = match self.resolve(reference)? {
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
            let mut wanted = RangeSet::new();
            wanted.insert(0, part.header.data_start.min(part.size));
            match need {
                Need::Header => {}
                Need::Whole => wanted.insert(0, part.size),
                Need::Layers(shard) => {
                    for t in part.header.tensors.values().filter(|t| shard.needs_tensor(&t.name, tied)) {
                        wanted.insert(t.offset, t.offset + t.size);
                    }
                }
            }
            self.fill(reference, &need.to_string(), &part.key, &partial, &wanted, peers, from).await?;
            if partial.is_complete() {
                part.complete = Some(self.promote(&part.key, &partial).await?);
                part.partial = None;
            }
        }
        if parts.len() == 1 {
            let p = &parts[0];
            return Ok(p.complete.clone().unwrap_or_else(|| self.partial_path(&p.key)));
        }
        // A split model opens from one folder: complete parts are linked into the partial downloads' folder.
        for p in &parts {
            if let Some(complete) = &p.complete {
                let link = self.partial_path(&p.key);
                if let Some(dir) = link.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| ModelsError::io(dir, e))?;
                }
                if link.symlink_metadata().is_ok() {
                    std::fs::remove_file(&link).map_err(|e| ModelsError::io(&link, e))?;
                }
                std::os::unix::fs::symlink(complete, &link).map_err(|e| ModelsError::io(&link, e))?;
            }
        }
        Ok(self.partial_path(&parts[0].key))
    }

    /// What the file is: the record of a partial download, else the hub, else a peer.
    async fn remote_info(&self, key: &FileKey, peers: &[Arc<dyn RangeSource>]) -> Result<RemoteFile> {
        if !self.offline() {
            match self.inner.hub.stat(key).await {
                Ok(info) => return Ok(info),
                // Unreachable hub: a peer may still have it.
                Err(e @ ModelsError::Network { .. }) if !peers.is_empty() => tracing::warn!("{e}; asking peers"),
                Err(e) => return Err(e),
            }
        }
        for peer in peers {
            if let Some((info, _)) = peer.held(key).await {
                return Ok(info);
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
        let path = self.partial_path(key);
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
                Err(e) if e.is_short_read() && prefix < size => prefix = (prefix * 4).min(size),
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
        partial.forget_record();
        let etag = info.etag.clone().unwrap_or(actual);
        let commit = info.commit.clone().unwrap_or_else(|| key.revision.clone());
        let cached = self.inner.config.cache.insert(key, &commit, &etag, &path)?;
        tracing::info!("{key}: complete, sha256 checked, in {}", cached.display());
        Ok(cached)
    }

    /// What this node can tell a peer of `key`: what the file is and which bytes of it are here (all of them when
    /// it is complete in the cache).
    pub fn held_local(&self, key: &FileKey) -> Option<(RemoteFile, RangeSet)> {
        key.validate().ok()?;
        if let Some(path) = self.inner.config.cache.find(key) {
            let size = std::fs::metadata(&path).ok()?.len();
            let etag =
                std::fs::read_link(&path).ok().and_then(|t| t.file_name().map(|n| n.to_string_lossy().to_string()));
            let commit = self.inner.config.cache.commit(&key.repo, &key.revision);
            return Some((RemoteFile { size, etag, commit }, RangeSet::from_ranges([(0, size)])));
        }
        PartialFile::open(&self.partial_path(key)).map(|p| (p.info().clone(), p.held()))
    }

    /// Bytes of `key` for a peer, if this node holds all of them.
    pub fn read_local(&self, key: &FileKey, offset: u64, len: u64) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        key.validate().ok()?;
        if let Some(path) = self.inner.config.cache.find(key) {
            let file = std::fs::File::open(path).ok()?;
            if offset.checked_add(len)? > file.metadata().ok()?.len() {
                return None;
            }
            let mut buf = vec![0u8; usize::try_from(len).ok()?];
            file.read_exact_at(&mut buf, offset).ok()?;
            return Some(buf);
        }
        PartialFile::open(&self.partial_path(key))?.read_held(offset, len)
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
                        cached += PartialFile::open(&self.partial_path(&k)).map_or(0, |p| p.held().len());
                    }
                }
                let id = if quant == catalog::default_quantization() {
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
