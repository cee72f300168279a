//! `Hub`: the client of a Hugging Face hub (or anything that serves its `resolve` URLs): what a file is (size,
//! sha256, commit) from a `HEAD`, and byte ranges of it from `GET`s with `Range`. Configured like
//! `huggingface_hub`: `HF_ENDPOINT`, `HF_TOKEN` (or the token file `huggingface-cli login` writes),
//! `HF_HUB_OFFLINE`.

use std::time::Duration;

use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_LENGTH, ETAG, LOCATION, RANGE};
use reqwest::{Client, StatusCode};
use serde::{Deserialize, Serialize};

use crate::error::{ModelsError, Result};
use crate::hf_cache::hf_home;
use crate::reference::FileKey;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// How to reach the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Base URL, without a trailing slash.
    pub endpoint: String,
    pub token: Option<String>,
    /// Never contact the hub.
    pub offline: bool,
    /// Parallel ranged connections for one file.
    pub connections: usize,
    /// Times a dropped transfer is resumed before the download fails.
    pub retries: usize,
}

fn truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

impl HubConfig {
    /// From the environment: `HF_ENDPOINT`, `HF_TOKEN` else the file `HF_TOKEN_PATH` (default `$HF_HOME/token`),
    /// `HF_HUB_OFFLINE`.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`HubConfig::from_env`], with the variables from `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let endpoint = var("HF_ENDPOINT").filter(|e| !e.trim().is_empty());
        let endpoint = endpoint.unwrap_or_else(|| DEFAULT_ENDPOINT.into()).trim().trim_end_matches('/').to_string();
        let token = var("HF_TOKEN").filter(|t| !t.trim().is_empty()).or_else(|| {
            let path = match var("HF_TOKEN_PATH").filter(|p| !p.is_empty()) {
                Some(p) => std::path::PathBuf::from(p),
                None => match var("HF_HOME").filter(|h| !h.is_empty()) {
                    Some(home) => std::path::PathBuf::from(home).join("token"),
                    None => hf_home().join("token"),
                },
            };
            std::fs::read_to_string(path).ok()
        });
        let token = token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v));
        Self { endpoint, token, offline, connections: 4, retries: 3 }
    }
}

/// What the hub says of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteFile {
    pub size: u64,
    /// The hub's ETag for the file: the sha256 of its content for files stored in LFS (all GGUF files).
    pub etag: Option<String>,
    /// The commit the revision pointed at.
    pub commit: Option<String>,
}

impl RemoteFile {
    /// The sha256 the content must have, when the ETag is one.
    pub fn sha256(&self) -> Option<&str> {
        self.etag.as_deref().filter(|e| e.len() == 64 && e.bytes().all(|b| b.is_ascii_hexdigit()))
    }
}

#[derive(Debug, Clone)]
pub struct Hub {
    config: HubConfig,
    /// For HEAD: redirects are read, not followed (the file's headers are on the redirect).
    head: Client,
    /// For GET: follows redirects to wherever the bytes are (a CDN), dropping the token when the host changes.
    get: Client,
}

impl Hub {
    pub fn new(config: HubConfig) -> Result<Self> {
        let build = |redirects: reqwest::redirect::Policy| {
            Client::builder()
                .redirect(redirects)
                .connect_timeout(Duration::from_secs(15))
                .read_timeout(Duration::from_secs(60))
                .user_agent(concat!("exo/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| ModelsError::Network { url: config.endpoint.clone(), message: e.to_string() })
        };
        let head = build(reqwest::redirect::Policy::none())?;
        let get = build(reqwest::redirect::Policy::limited(10))?;
        Ok(Self { config, head, get })
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    pub fn offline(&self) -> bool {
        self.config.offline
    }

    /// `{endpoint}/{repo}/resolve/{revision}/{file}`.
    pub fn url(&self, key: &FileKey) -> String {
        format!("{}/{}/resolve/{}/{}", self.config.endpoint, key.repo, key.revision, key.file)
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.config.token {
            Some(t) => request.header(AUTHORIZATION, format!("Bearer {t}")),
            None => request,
        }
    }

    /// The error with its causes (reqwest's own message repeats the URL, which the error already names).
    fn network(url: &str, e: reqwest::Error) -> ModelsError {
        let mut causes = Vec::new();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            causes.push(s.to_string());
            source = s.source();
        }
        let message = if causes.is_empty() { e.without_url().to_string() } else { causes.join(": ") };
        ModelsError::Network { url: url.into(), message }
    }

    /// The error for a refusal, by status and the hub's `X-Error-Code`.
    fn refusal(&self, key: &FileKey, url: &str, status: StatusCode, headers: &HeaderMap, body: String) -> ModelsError {
        let code = headers.get("x-error-code").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let repo = format!("the repository {}", key.repo);
        let file = format!("the file {} in {} at revision {}", key.file, key.repo, key.revision);
        match (status.as_u16(), code) {
            (_, "RepoNotFound") => ModelsError::NotFound { what: repo, url: url.into() },
            (_, "EntryNotFound" | "RevisionNotFound") | (404, _) => {
                ModelsError::NotFound { what: file, url: url.into() }
            }
            (401 | 403, _) => ModelsError::Unauthorized {
                what: repo,
                url: url.into(),
                status: status.as_u16(),
                had_token: self.config.token.is_some(),
            },
            (s, _) => ModelsError::Http { url: url.into(), status: s, body: body.chars().take(200).collect() },
        }
    }

    /// Size, ETag and commit of `key`, from a `HEAD` of its resolve URL.
    pub async fn stat(&self, key: &FileKey) -> Result<RemoteFile> {
        let mut url = self.url(key);
        // Relative redirects (a renamed repository) are followed; one to another host carries the file's headers.
        for _ in 0..5 {
            let response = self.authorize(self.head.head(&url)).send().await.map_err(|e| Self::network(&url, e))?;
            let status = response.status();
            let headers = response.headers();
            let text = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim_start_matches("W/").trim_matches('"').to_string())
            };
            let linked_size = text("x-linked-size").and_then(|s| s.parse::<u64>().ok());
            let commit = text("x-repo-commit");
            if status.is_redirection() && linked_size.is_none() {
                let Some(next) = text(LOCATION.as_str()) else { break };
                url = match reqwest::Url::parse(&url).and_then(|base| base.join(&next)) {
                    Ok(u) => u.to_string(),
                    Err(e) => return Err(ModelsError::Network { url, message: e.to_string() }),
                };
                continue;
            }
            if !status.is_success() && !status.is_redirection() {
                return Err(self.refusal(key, &url, status, headers, String::new()));
            }
            let etag = text("x-linked-etag").or_else(|| text(ETAG.as_str()));
            let size = linked_size.or_else(|| text(CONTENT_LENGTH.as_str()).and_then(|s| s.parse().ok()));
            let Some(size) = size else {
                return Err(ModelsError::Http {
                    url,
                    status: status.as_u16(),
                    body: "no file size in the answer".into(),
                });
            };
            return Ok(RemoteFile { size, etag, commit });
        }
        Err(ModelsError::Network { url, message: "more than 5 redirects".into() })
    }

    /// Streams bytes `start..end` of `key` to `sink` (offset, bytes) as they arrive. On a dropped connection the
    /// error comes after the bytes that did arrive were given to `sink`; the caller resumes from there.
    pub async fn read_range(
        &self,
        key: &FileKey,
        start: u64,
        end: u64,
        sink: &mut (dyn FnMut(u64, &[u8]) -> Result<()> + Send),
    ) -> Result<()> {
        let url = self.url(key);
        let request = self.authorize(self.get.get(&url)).header(RANGE, format!("bytes={start}-{}", end - 1));
        let mut response = request.send().await.map_err(|e| Self::network(&url, e))?;
        let status = response.status();
        if status != StatusCode::PARTIAL_CONTENT {
            let headers = response.headers().clone();
            let body = response.text().await.unwrap_or_default();
            if status.is_success() {
                return Err(ModelsError::Http {
                    url,
                    status: status.as_u16(),
                    body: "the server ignored the Range header".into(),
                });
            }
            return Err(self.refusal(key, &url, status, &headers, body));
        }
        let mut at = start;
        let closed = |at: u64, e: Option<reqwest::Error>| {
            let why = e.map(|e| match Self::network(&url, e) {
                ModelsError::Network { message, .. } => format!(": {message}"),
                other => format!(": {other}"),
            });
            let message = format!(
                "the connection closed after {} of {} bytes{}",
                at - start,
                end - start,
                why.unwrap_or_default()
            );
            ModelsError::Network { url: url.clone(), message }
        };
        while let Some(chunk) = response.chunk().await.map_err(|e| closed(at, Some(e)))? {
            let take = chunk.len().min((end - at) as usize);
            sink(at, &chunk[..take])?;
            at += take as u64;
            if at >= end {
                return Ok(());
            }
        }
        Err(closed(at, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_comes_from_the_variables_huggingface_hub_reads() {
        let dir = std::env::temp_dir().join(format!("exo-hub-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "hf_from_file\n").unwrap();
        let home = dir.to_str().unwrap().to_string();
        let config = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            HubConfig::from_vars(move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
        };
        let c = config(&[("HF_HOME", &home)]);
        assert_eq!(
            (c.endpoint.as_str(), c.token.as_deref(), c.offline),
            (DEFAULT_ENDPOINT, Some("hf_from_file"), false)
        );
        let c = config(&[
            ("HF_HOME", &home),
            ("HF_TOKEN", "hf_env"),
            ("HF_ENDPOINT", "http://mirror:8080/ "),
            ("HF_HUB_OFFLINE", "1"),
        ]);
        assert_eq!((c.endpoint.as_str(), c.token.as_deref(), c.offline), ("http://mirror:8080", Some("hf_env"), true));
        let c = config(&[("HF_TOKEN_PATH", "/nonexistent/token"), ("HF_HUB_OFFLINE", "no")]);
        assert_eq!((c.token, c.offline), (None, false));
        assert!(config(&[("HF_HUB_OFFLINE", "TRUE")]).offline);
        let hub = Hub::new(config(&[("HF_ENDPOINT", "http://h")])).unwrap();
        assert_eq!(hub.url(&FileKey::new("o/r", "v1", "d/m.gguf")), "http://h/o/r/resolve/v1/d/m.gguf");
    }

    #[test]
    fn only_a_sha256_etag_is_a_checksum() {
        let file = |etag: &str| RemoteFile { size: 1, etag: Some(etag.into()), commit: None };
        assert_eq!(file(&"a".repeat(64)).sha256(), Some("a".repeat(64).as_str()));
        assert_eq!(file("1234abcd").sha256(), None);
        assert_eq!(file(&"g".repeat(64)).sha256(), None);
    }
}
