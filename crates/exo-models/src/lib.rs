//! exo's models: what a user may name a model by and how its bytes reach this machine.
//!
//! | module | owns |
//! |---|---|
//! | [`catalog`] | short names (`llama-3.1-70b`) to a Hugging Face repository and file per quantization (`catalog.json`) |
//! | [`reference`] | `ModelRef`: a catalog name, `hf:owner/repo/file.gguf[@revision]` or a path; `FileKey` |
//! | [`hub`] | the hub's HTTP client: `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`, `HEAD` and ranged `GET` |
//! | [`hf_cache`] | the Hugging Face cache layout (`models--owner--repo/blobs|snapshots|refs`) |
//! | [`partial`] | a sparse file being downloaded and the record of the byte ranges it holds |
//! | [`ranges`] | `RangeSet`: sorted disjoint byte ranges |
//! | [`store`] | `ModelStore`: a reference to local files, fetching the header, one shard's ranges or the whole file, from peers first |
//! | [`progress`] | `Downloads`: running and recent downloads with their byte counts |

pub mod catalog;
pub mod error;
pub mod hf_cache;
pub mod hub;
pub mod partial;
pub mod progress;
pub mod ranges;
pub mod reference;
pub mod store;

pub use error::{ModelsError, Result};
pub use hf_cache::HfCache;
pub use hub::{HubConfig, RemoteFile};
pub use progress::{DownloadStatus, Downloads};
pub use reference::{FileKey, ModelRef};
pub use store::{Listing, LocalModel, ModelStore, Need, RangeSource, StoreConfig};
