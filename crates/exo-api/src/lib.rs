//! exo's OpenAI-compatible API layer.
//!
//! | module | owns |
//! |---|---|
//! | [`error`] | `ApiError`: every way a request fails, with its HTTP status and OpenAI's error body |
//! | [`validation`] | turning request bodies of `/v1/chat/completions` and `/v1/completions` into checked requests |
//! | [`inference`] | the bounded queue in front of the model and the worker thread that runs it |
//! | [`memory`] | the machine's memory, the node's limit, what a model needs, sizes like `8G` |
//! | [`topology`] | `/v1/topology`: the node's identity, addresses, memory, CPU and model |
//! | [`server`] | routes, response and chunk shapes, server-sent events, the embedded web chat |
//!
//! This crate knows the API's JSON and statuses; it knows nothing of how layers are split or sent.

pub mod error;
pub mod inference;
pub mod memory;
pub mod server;
pub mod topology;
pub mod validation;

pub use error::ApiError;
pub use inference::{Inference, InferenceConfig, ModelStore};
pub use server::router;
pub use topology::NodeInfo;
pub use validation::{ChatRequest, CompletionRequest, Options};
