//! `ApiError`: every way an API request fails, each with one HTTP status and OpenAI's error body
//! (`{"error": {"message", "type", "param", "code"}}`), so every failure renders the same way.

use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, or not a JSON object.
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    /// A field is missing, of the wrong type, or out of range.
    #[error("{message}")]
    InvalidField { param: String, message: String },
    #[error("the model '{0}' does not exist on this node")]
    ModelNotFound(String),
    #[error("there is no endpoint {0}")]
    UnknownEndpoint(String),
    /// The prompt alone fills the model's context, leaving no room for a token (`param`: the prompt's field,
    /// `messages` or `prompt`). A `max_tokens` beyond the room left is not an error: generation ends with `length`
    /// when the context is full, as in llama-server and Ollama.
    #[error("this model's context holds {context} tokens, but the prompt is {prompt} tokens: there is no room left to generate one")]
    ContextExceeded { prompt: usize, context: usize, param: &'static str },
    /// The model, with its KV cache at the node's context, needs more memory than the cluster's nodes offer
    /// (the message says how much is needed and available).
    #[error("{0}")]
    ModelTooLarge(String),
    /// A node holding part of the model failed or left during the request.
    #[error("{0}")]
    NodeFailed(String),
    /// The model's files cannot be had (the hub refused or is unreachable, offline, a hash failed); the message
    /// says which and what to do.
    #[error("{0}")]
    ModelUnavailable(String),
    #[error("the server is busy: its queue of {0} waiting requests is full; try again later")]
    QueueFull(usize),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("the request body is larger than the limit of {0} bytes")]
    BodyTooLarge(usize),
    /// The node has an API key and the request did not carry it (`key_given`: it carried another).
    #[error("{}", if *key_given { "the API key given is not this node's (send it as Authorization: Bearer KEY or x-api-key: KEY)" } else { "this node needs an API key: send it as Authorization: Bearer KEY or x-api-key: KEY" })]
    Unauthorized { key_given: bool },
    /// A web page of another origin, not listed with `--cors-origin`, sent the request.
    #[error("requests from the web origin '{0}' are refused: only this node's own pages and the origins named with --cors-origin may call its API")]
    CrossOrigin(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub(crate) fn field(param: &str, message: impl Into<String>) -> Self {
        ApiError::InvalidField { param: param.to_string(), message: message.into() }
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::MalformedJson(_) | ApiError::InvalidField { .. } | ApiError::ContextExceeded { .. } => 400,
            ApiError::Unauthorized { .. } => 401,
            ApiError::CrossOrigin(_) => 403,
            ApiError::ModelNotFound(_) | ApiError::UnknownEndpoint(_) => 404,
            ApiError::BodyTooLarge(_) => 413,
            ApiError::ModelTooLarge(_)
            | ApiError::ModelUnavailable(_)
            | ApiError::NodeFailed(_)
            | ApiError::QueueFull(_)
            | ApiError::ShuttingDown => 503,
            ApiError::Internal(_) => 500,
        }
    }

    /// OpenAI's error `type`.
    pub fn kind(&self) -> &'static str {
        match self.status() {
            // OpenAI answers a missing or wrong key with invalid_request_error too.
            400 | 401 | 403 | 413 => "invalid_request_error",
            404 => "not_found_error",
            _ => "server_error",
        }
    }

    /// OpenAI's error `code`, where it has one for this case.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::ModelNotFound(_) => Some("model_not_found"),
            ApiError::ContextExceeded { .. } => Some("context_length_exceeded"),
            ApiError::QueueFull(_) => Some("server_busy"),
            ApiError::ModelTooLarge(_) => Some("insufficient_memory"),
            ApiError::NodeFailed(_) => Some("node_failed"),
            ApiError::ModelUnavailable(_) => Some("model_unavailable"),
            ApiError::BodyTooLarge(_) => Some("request_too_large"),
            ApiError::ShuttingDown => Some("shutting_down"),
            ApiError::Unauthorized { .. } => Some("invalid_api_key"),
            ApiError::CrossOrigin(_) => Some("origin_not_allowed"),
            _ => None,
        }
    }

    /// The field the error is about, if any.
    pub fn param(&self) -> Option<&str> {
        match self {
            ApiError::InvalidField { param, .. } => Some(param),
            ApiError::ModelNotFound(_) => Some("model"),
            ApiError::ContextExceeded { param, .. } => Some(param),
            _ => None,
        }
    }

    /// The response body.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.to_string(), "type": self.kind(), "param": self.param(), "code": self.code()}})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_render_in_openais_shape_with_their_status() {
        let e = ApiError::field("temperature", "temperature must be between 0 and 2, got 3");
        assert_eq!(e.status(), 400);
        assert_eq!(
            e.body(),
            json!({"error": {"message": "temperature must be between 0 and 2, got 3", "type": "invalid_request_error",
                "param": "temperature", "code": null}})
        );
        let e = ApiError::ContextExceeded { prompt: 8300, context: 8192, param: "messages" };
        assert_eq!((e.status(), e.code(), e.param()), (400, Some("context_length_exceeded"), Some("messages")));
        let message = e.to_string();
        assert!(message.contains("8192") && message.contains("8300"), "{message}");
        assert_eq!(ApiError::ModelNotFound("x".into()).status(), 404);
        assert_eq!(ApiError::UnknownEndpoint("GET /v2".into()).body()["error"]["type"], "not_found_error");
        assert_eq!(ApiError::BodyTooLarge(1 << 20).status(), 413);
        assert_eq!(ApiError::QueueFull(16).body()["error"]["type"], "server_error");
        assert_eq!(ApiError::ModelTooLarge("m".into()).status(), 503);
        let e = ApiError::Unauthorized { key_given: false };
        assert_eq!(
            (e.status(), e.body()["error"]["type"].as_str(), e.code()),
            (401, Some("invalid_request_error"), Some("invalid_api_key"))
        );
        assert_eq!(ApiError::CrossOrigin("http://evil.example".into()).status(), 403);
    }
}
