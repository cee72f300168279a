//! `ModelsError`: everything that can go wrong naming, finding or downloading a model, each with what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    /// Not a catalog name, a file in the models folder, an `hf:` reference or a path.
    #[error("unknown model '{0}': not a name in the catalog (see `exo models`), a file in the models folder, an hf:owner/repo/file.gguf reference or a path to a GGUF file")]
    Unknown(String),
    #[error("invalid model reference '{reference}': {why}")]
    InvalidReference { reference: String, why: String },
    #[error("the model '{name}' has no {quant} file in the catalog (it has {available})")]
    UnknownQuantization { name: String, quant: String, available: String },
    /// The hub answered 404, or 401 with a repo-not-found code.
    #[error("{what} was not found on the hub ({url}): check the repository and file names")]
    NotFound { what: String, url: String },
    /// 401 or 403: a gated or private repository.
    #[error("{what} is gated or private ({url}, HTTP {status}): accept its terms on the hub and set HF_TOKEN to a token that may read it (or run `huggingface-cli login`){}", if *.had_token { "; the token that was sent is not allowed" } else { "; no token was sent" })]
    Unauthorized { what: String, url: String, status: u16, had_token: bool },
    #[error("the hub answered HTTP {status} for {url}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Http { url: String, status: u16, body: String },
    #[error("cannot reach the hub at {url}: {message}")]
    Network { url: String, message: String },
    /// Offline (HF_HUB_OFFLINE or --offline) and neither the cache nor a peer has what is needed.
    #[error("offline (HF_HUB_OFFLINE or --offline) and {what} is not in the cache ({cache}){}", if *.asked_peers { " nor on any peer" } else { "" })]
    Offline { what: String, cache: PathBuf, asked_peers: bool },
    #[error("{file}: the downloaded bytes have sha256 {actual}, the hub says {expected}; the file was discarded")]
    HashMismatch { file: String, expected: String, actual: String },
    #[error("out of disk space writing {path}{}; free some space, or set HF_HOME / EXO_HOME to a disk with more", if *needed_mib > 0 { format!(": the download needs {needed_mib} MiB more") } else { String::new() })]
    DiskFull { path: PathBuf, needed_mib: u64 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Gguf(#[from] exo_engine::gguf::GgufError),
    #[error("{what}: {message}")]
    Corrupt { what: String, message: String },
    /// A commit, ETag or path from a hub, a peer or a `refs/` file that the cache layout does not allow: it would
    /// name a file elsewhere.
    #[error("the {what} {value} is not {expected}: refused, as it would name a file in the model cache")]
    BadCacheName { what: &'static str, value: String, expected: &'static str },
}

impl ModelsError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::StorageFull {
            return ModelsError::DiskFull { path, needed_mib: 0 };
        }
        ModelsError::Io { path, source }
    }
}

pub type Result<T> = std::result::Result<T, ModelsError>;
