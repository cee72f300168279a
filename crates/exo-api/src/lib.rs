//! exo's API layer: OpenAI's API, with OpenAI's Responses API, Anthropic's Messages API and Ollama's API as thin
//! translations onto the same generation path.
//!
//! | module | owns |
//! |---|---|
//! | [`access`] | who may call the API: the API key and the web origins allowed, one layer in front of every route |
//! | [`error`] | `ApiError`: every way a request fails, with its HTTP status and OpenAI's error body |
//! | [`validation`] | turning request bodies of `/v1/chat/completions` and `/v1/completions` into checked requests |
//! | [`inference`] | the bounded queue in front of the cluster and the worker thread that runs requests from it |
//! | [`responses`] | OpenAI's Responses API (`/v1/responses`), stateless, over the same path |
//! | [`anthropic`] | Anthropic's Messages API (`/v1/messages`) over the same path |
//! | [`ollama`] | Ollama's API (`/api/chat`, `/api/generate`, `/api/tags`, `/api/ps`, `/api/show`, `/api/pull`, `/api/version`) over the same path |
//! | [`logprobs`] | tokens' log-probabilities with their bytes, reported with the text they produced |
//! | [`topology`] | `/v1/topology`: every node's identity, addresses, memory, CPU, layers and link; the plans |
//! | [`server`] | routes, response and chunk shapes, server-sent events, the embedded web chat |
//!
//! This crate knows the API's JSON and statuses; it asks the cluster (`exo-cluster`) to plan and run requests and
//! knows nothing of how layers are split or sent.

pub mod access;
pub mod anthropic;
pub mod error;
pub mod inference;
pub mod logprobs;
pub mod ollama;
pub mod responses;
pub mod server;
pub mod topology;
pub mod validation;

pub use access::Access;
pub use error::ApiError;
pub use inference::{Inference, InferenceConfig};
pub use server::router;
pub use validation::{ChatRequest, CompletionRequest, Options, ReasoningFormat};
