//! `ClusterError`: every way planning or running a request over the cluster fails.

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClusterError {
    #[error("the model '{0}' does not exist on this node")]
    ModelNotFound(String),
    /// The model, with its KV cache, needs more memory than the cluster's nodes offer together.
    #[error("the model '{model}' does not fit in memory: it needs {needed_mib} MiB but the cluster ({nodes} node{}) has {available_mib} MiB available", if *nodes == 1 { "" } else { "s" })]
    ModelTooLarge { model: String, needed_mib: u64, available_mib: u64, nodes: usize },
    /// A node of the request's plan left the cluster, stopped answering, or failed.
    #[error("node {node} failed: {message}")]
    NodeFailed { node: String, message: String },
    /// A message for a request or plan the receiver does not hold.
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    Engine(String),
    #[error("the cluster is shutting down")]
    ShuttingDown,
    /// The model's files cannot be had: the hub refused, is unreachable, the node is offline, a hash failed.
    #[error("cannot get the model: {0}")]
    ModelUnavailable(String),
    /// A malformed model reference, or a quantization the catalog does not have.
    #[error("{0}")]
    InvalidModel(String),
    /// A cluster key that cannot be read, parsed or kept, or TLS credentials that cannot be made from it.
    #[error("{0}")]
    Key(String),
    /// A GPU ran out of memory loading layers or running a request (the message names it and what it has free).
    #[error("{0}")]
    DeviceMemory(String),
    /// A peer asked for more than this node gives any one peer (requests, KV cache memory, queued bytes).
    #[error("{0}")]
    Busy(String),
}

impl From<exo_models::ModelsError> for ClusterError {
    fn from(e: exo_models::ModelsError) -> Self {
        match e {
            exo_models::ModelsError::Unknown(name) => ClusterError::ModelNotFound(name),
            e @ (exo_models::ModelsError::InvalidReference { .. }
            | exo_models::ModelsError::UnknownQuantization { .. }) => ClusterError::InvalidModel(e.to_string()),
            other => ClusterError::ModelUnavailable(other.to_string()),
        }
    }
}

impl From<exo_engine::EngineError> for ClusterError {
    fn from(e: exo_engine::EngineError) -> Self {
        match e {
            exo_engine::EngineError::DeviceMemory(m) => ClusterError::DeviceMemory(m),
            other => ClusterError::Engine(other.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, ClusterError>;
