//! The engine's one error type. Every message says what went wrong in terms a user can act on.

use crate::gguf::GgufError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported model architecture '{0}' (supported: llama, qwen2, qwen3, qwen3moe, gemma2, gemma3, phi3, gpt-oss)")]
    UnsupportedArchitecture(String),
    #[error("{path}: metadata {key} is {found}, expected {expected}")]
    Metadata { path: String, key: String, found: String, expected: String },
    #[error("{path}: tensor {name} is missing")]
    MissingTensor { path: String, name: String },
    #[error("{path}: tensor {name} has shape {found:?}, expected {expected:?}")]
    TensorShape { path: String, name: String, found: Vec<u64>, expected: Vec<u64> },
    #[error("invalid shard: {0}")]
    InvalidShard(String),
    #[error("the prompt and generation need {needed} tokens, more than the model's context of {context} tokens")]
    ContextOverflow { needed: usize, context: usize },
    #[error("the prompt is {prompt} tokens, but the model's context holds {context} (it must leave room for at least one new token)")]
    PromptTooLong { prompt: usize, context: usize },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// A grammar for constrained output that does not compile, or that no token can follow.
    #[error("grammar: {0}")]
    Grammar(String),
    #[error("invalid sampling parameter: {0}")]
    InvalidSampling(String),
    /// A size from a model file or a request that no machine could hold, or that overflows when computed.
    #[error("too large: {0}")]
    TooLarge(String),
    /// A device named that this machine or build does not have, or one that fails.
    #[error("{0}")]
    Device(String),
    /// A GPU without the memory a load or a forward pass needed (the message names the device and what it has).
    #[error("{0}")]
    DeviceMemory(String),
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, EngineError>;
