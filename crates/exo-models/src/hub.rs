//! `Hub`: the client of a Hugging Face hub (or anything that serves its `resolve` URLs): what a file is (size,
//! sha256, commit) from a `HEAD`, and byte ranges of it from `GET`s with `Range`. Configured like
//! `huggingface_hub`: `HF_ENDPOINT`, `HF_TOKEN` (or the token file `huggingface-cli login` writes),
//! `HF_HUB_OFFLINE`.
//!
//! The token goes only to the endpoint's own origin (scheme, host and port): this client follows redirects itself
//! and sends it to no other (a CDN, another host). reqwest's own redirects are not used: on each hop they restore
//! the first request's headers and drop `Authorization` only if the host differs from the previous hop's, so a
//! chain endpoint → CDN → CDN sent the token to the CDN's second hop. Names in URLs are percent-encoded segment by
//! segment; error bodies are read up to [`MAX_ERROR_BODY`] only.

use std::time::Duration;

use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_LENGTH, ETAG, LOCATION, RANGE};
use reqwest::{Client, StatusCode};
use serde::{Deserialize, Serialize};

use crate::error::{ModelsError, Result};
use crate::hf_cache::{check_commit, check_etag, hf_home};
use crate::reference::FileKey;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Bytes of an error answer's body read (for its message); the rest is not read.
pub const MAX_ERROR_BODY: usize = 64 << 10;
/// Redirects followed for one `GET` (the hub sends one, to its CDN).
const MAX_REDIRECTS: usize = 10;

/// `segment` percent-encoded for a URL path: everything but `A-Z a-z 0-9 - . _ ~` as `%XX` of its UTF-8 bytes
/// (as `huggingface_hub` quotes file names), so `#`, `?`, `%`, spaces and `/` cannot change the URL's meaning.
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Each `/`-separated part of `path` percent-encoded, the `/`s kept.
fn encode_path(path: &str) -> String {
    path.split('/').map(encode_segment).collect::<Vec<_>>().join("/")
}

/// Scheme, host and port of `url`, which the token is tied to.
fn origin(url: &str) -> Option<(String, String, Option<u16>)> {
    let u = reqwest::Url::parse(url).ok()?;
    Some((u.scheme().to_string(), u.host_str()?.to_string(), u.port_or_known_default()))
}

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
    /// Follows no redirect: for a HEAD the file's headers are on the redirect, and every redirect is followed
    /// here so that the token goes only where [`Hub::authorize`] says.
    client: Client,
}

impl Hub {
    pub fn new(config: HubConfig) -> Result<Self> {
        let client = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("exo/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ModelsError::Network { url: config.endpoint.clone(), message: e.to_string() })?;
        Ok(Self { config, client })
    }

    /// Where a redirect from `url` points, resolved against it.
    fn redirect_target(url: &str, location: &str) -> Result<String> {
        match reqwest::Url::parse(url).and_then(|base| base.join(location)) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(u.to_string()),
            Ok(u) => Err(ModelsError::Network { url: url.into(), message: format!("a redirect to {u}") }),
            Err(e) => Err(ModelsError::Network { url: url.into(), message: e.to_string() }),
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    pub fn offline(&self) -> bool {
        self.config.offline
    }

    /// `{endpoint}/{repo}/resolve/{revision}/{file}`, each part percent-encoded.
    pub fn url(&self, key: &FileKey) -> String {
        format!(
            "{}/{}/resolve/{}/{}",
            self.config.endpoint,
            encode_path(&key.repo),
            encode_segment(&key.revision),
            encode_path(&key.file)
        )
    }

    /// `request` to `url` with the token, if there is one and `url` is on the endpoint's origin.
    fn authorize(&self, request: reqwest::RequestBuilder, url: &str) -> reqwest::RequestBuilder {
        match &self.config.token {
            Some(t) if origin(url).is_some() && origin(url) == origin(&self.config.endpoint) => {
                request.header(AUTHORIZATION, format!("Bearer {t}"))
            }
            _ => request,
        }
    }

    /// Up to [`MAX_ERROR_BODY`] bytes of an answer's body, as text.
    async fn error_body(mut response: reqwest::Response) -> String {
        let mut body = Vec::new();
        while body.len() < MAX_ERROR_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(MAX_ERROR_BODY - body.len())]),
                Ok(None) | Err(_) => break,
            }
        }
        String::from_utf8_lossy(&body).into_owned()
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
            let response =
                self.authorize(self.client.head(&url), &url).send().await.map_err(|e| Self::network(&url, e))?;
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
                url = Self::redirect_target(&url, &next)?;
                continue;
            }
            if !status.is_success() && !status.is_redirection() {
                return Err(self.refusal(key, &url, status, headers, String::new()));
            }
            // Both become names in the cache: only the forms its layout defines are taken.
            let etag = text("x-linked-etag").or_else(|| text(ETAG.as_str())).map(|e| check_etag(&e)).transpose()?;
            let commit = commit.map(|c| check_commit(&c)).transpose()?;
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
        let mut at_url = url.clone();
        let mut hops = 0;
        let mut response = loop {
            let request =
                self.authorize(self.client.get(&at_url), &at_url).header(RANGE, format!("bytes={start}-{}", end - 1));
            let response = request.send().await.map_err(|e| Self::network(&at_url, e))?;
            let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok());
            match location {
                Some(next) if response.status().is_redirection() => {
                    if hops == MAX_REDIRECTS {
                        return Err(ModelsError::Network {
                            url,
                            message: format!("more than {MAX_REDIRECTS} redirects"),
                        });
                    }
                    hops += 1;
                    at_url = Self::redirect_target(&at_url, next)?;
                }
                _ => break response,
            }
        };
        let status = response.status();
        if status != StatusCode::PARTIAL_CONTENT {
            let headers = response.headers().clone();
            let body = Self::error_body(response).await;
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
    fn names_in_urls_are_percent_encoded_segment_by_segment() {
        let hub = Hub::new(HubConfig::from_vars(|v| (v == "HF_ENDPOINT").then(|| "http://h".to_string()))).unwrap();
        let key = FileKey::new("o/r", "v 1", "my dir/a#b?c%d é.gguf");
        assert_eq!(hub.url(&key), "http://h/o/r/resolve/v%201/my%20dir/a%23b%3Fc%25d%20%C3%A9.gguf");
        assert_eq!(encode_segment("A-z_0.9~"), "A-z_0.9~");
        assert_eq!(encode_segment("a/b"), "a%2Fb");
    }

    #[test]
    fn the_token_goes_to_the_endpoints_origin_only() {
        let config = HubConfig {
            endpoint: "https://huggingface.co".into(),
            token: Some("hf_secret".into()),
            offline: false,
            connections: 1,
            retries: 0,
        };
        let hub = Hub::new(config).unwrap();
        let sent = |url: &str| {
            let request = hub.authorize(hub.client.head(url), url).build().unwrap();
            request.headers().contains_key(AUTHORIZATION)
        };
        assert!(sent("https://huggingface.co/o/r/resolve/main/m.gguf"));
        assert!(sent("https://huggingface.co:443/other"));
        assert!(!sent("https://cdn-lfs.hf.co/o/r/m.gguf"));
        assert!(!sent("http://huggingface.co/o/r/resolve/main/m.gguf"));
        assert!(!sent("https://huggingface.co:8443/o/r/resolve/main/m.gguf"));
        assert!(!sent("https://huggingface.co.evil.example/o/r/resolve/main/m.gguf"));
    }

    #[test]
    fn only_a_sha256_etag_is_a_checksum() {
        let file = |etag: &str| RemoteFile { size: 1, etag: Some(etag.into()), commit: None };
        assert_eq!(file(&"a".repeat(64)).sha256(), Some("a".repeat(64).as_str()));
        assert_eq!(file("1234abcd").sha256(), None);
        assert_eq!(file(&"g".repeat(64)).sha256(), None);
    }
}
