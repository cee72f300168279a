//! exo's OpenAI-compatible API layer.
//!
//! | module | owns |
//! |---|---|
//! | [`error`] | `ApiError`: every way a request fails, with its HTTP status and OpenAI's error body |
//! | [`validation`] | turning request bodies of `/v1/chat/completions` and `/v1/completions` into checked requests |
//!
//! This crate knows the API's JSON and statuses; it knows nothing of how layers are split or sent.

pub mod error;
pub mod validation;

pub use error::ApiError;
pub use validation::{ChatRequest, CompletionRequest, Options};
