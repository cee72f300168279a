//! A stand-in for the Hugging Face hub that tests start on 127.0.0.1: `HEAD` and `GET`
//! `/{owner}/{repo}/resolve/{revision}/{path}` answer like the hub does for LFS files (a 302 to a content URL,
//! with `X-Linked-Size`, `X-Linked-Etag` and `X-Repo-Commit`); the content URL serves `Range` requests. It counts
//! the body bytes it sends, and can drop a connection once halfway, advertise a wrong sha256, or require a token.
//! For the security tests it also records the paths asked for and which requests carried `Authorization`, can
//! send any commit or ETag, send every `resolve` to another stand-in (another host: another port), and answer the
//! content URL with an error whose body never ends.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use sha2::{Digest, Sha256};

pub const COMMIT: &str = "5d1f5e8a0c3b4e2f9a7d6c5b4a3928170f1e2d3c";

#[derive(Clone)]
struct HubFile {
    bytes: Arc<Vec<u8>>,
    /// What the hub says the sha256 is.
    sha256: String,
}

#[derive(Default)]
struct Hub {
    /// (repo, path in repo) to file.
    files: Mutex<HashMap<(String, String), HubFile>>,
    /// Repos that answer 401 unless this bearer token comes.
    gated: Mutex<HashMap<String, String>>,
    sent: AtomicU64,
    /// Cut the connection once after this many body bytes of one response.
    drop_after: Mutex<Option<u64>>,
    dropped: AtomicBool,
    requests: AtomicU64,
    /// Requests that carried an `Authorization` header.
    authorized: AtomicU64,
    /// Every request's path, as it arrived (percent-encoded).
    paths: Mutex<Vec<String>>,
    /// Overrides of what `X-Repo-Commit` and the ETags say.
    commit: Mutex<Option<String>>,
    etag: Mutex<Option<String>>,
    /// Another stand-in's endpoint that every `resolve` redirects to.
    forward_to: Mutex<Option<String>>,
    /// The content URL answers 500 with a body that never ends.
    endless_error: AtomicBool,
}

/// A running stand-in hub; it stops when the test process ends.
#[derive(Clone)]
pub struct StandInHub {
    pub addr: SocketAddr,
    hub: Arc<Hub>,
}

/// Percent-encodes each `/`-separated part of `path`, as the hub's clients do.
pub fn encode_path(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            seg.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl StandInHub {
    pub fn start() -> Self {
        let hub = Arc::new(Hub::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let state = hub.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new()
                    .route("/cdn/{owner}/{repo}/{*file}", axum::routing::get(content))
                    .route("/{owner}/{repo}/resolve/{revision}/{*file}", axum::routing::any(resolve))
                    .with_state(state);
                axum::serve(listener, app).await.unwrap();
            });
        });
        let addr = rx.recv().expect("the stand-in hub starts");
        Self { addr, hub }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves `bytes` as `repo`'s file `path`.
    pub fn add(&self, repo: &str, path: &str, bytes: Arc<Vec<u8>>) {
        let sha256 = sha256_hex(&bytes);
        self.hub.files.lock().unwrap().insert((repo.into(), path.into()), HubFile { bytes, sha256 });
    }

    /// Serves `bytes` but says their sha256 is something else.
    pub fn add_with_wrong_hash(&self, repo: &str, path: &str, bytes: Arc<Vec<u8>>) {
        let sha256 = "0".repeat(64);
        self.hub.files.lock().unwrap().insert((repo.into(), path.into()), HubFile { bytes, sha256 });
    }

    pub fn gate(&self, repo: &str, token: &str) {
        self.hub.gated.lock().unwrap().insert(repo.into(), token.into());
    }

    /// The next response that gets past `bytes` body bytes is cut there (once).
    pub fn drop_once_after(&self, bytes: u64) {
        *self.hub.drop_after.lock().unwrap() = Some(bytes);
        self.hub.dropped.store(false, Ordering::SeqCst);
    }

    /// Body bytes sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.hub.sent.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> u64 {
        self.hub.requests.load(Ordering::SeqCst)
    }

    /// Requests so far that carried an `Authorization` header.
    pub fn authorized_requests(&self) -> u64 {
        self.hub.authorized.load(Ordering::SeqCst)
    }

    /// The path of every request so far, as it arrived.
    pub fn paths(&self) -> Vec<String> {
        self.hub.paths.lock().unwrap().clone()
    }

    /// Says `commit` in `X-Repo-Commit` from now on.
    pub fn say_commit(&self, commit: &str) {
        *self.hub.commit.lock().unwrap() = Some(commit.into());
    }

    /// Says `etag` in `X-Linked-Etag` and `ETag` from now on.
    pub fn say_etag(&self, etag: &str) {
        *self.hub.etag.lock().unwrap() = Some(etag.into());
    }

    /// Redirects every `resolve` request to the same path on `other` (a temporary redirect, no file headers).
    pub fn forward_to(&self, other: &StandInHub) {
        *self.hub.forward_to.lock().unwrap() = Some(other.endpoint());
    }

    /// Answers the content URL with HTTP 500 and a body that never ends.
    pub fn fail_with_endless_body(&self) {
        self.hub.endless_error.store(true, Ordering::SeqCst);
    }
}

/// Counts the request and notes its path and whether it carried a token.
fn note(hub: &Hub, uri: &Uri, headers: &HeaderMap) {
    hub.requests.fetch_add(1, Ordering::SeqCst);
    if headers.contains_key("authorization") {
        hub.authorized.fetch_add(1, Ordering::SeqCst);
    }
    hub.paths.lock().unwrap().push(uri.path().to_string());
}

fn answer(status: StatusCode, headers: &[(&str, String)], body: Body) -> Response {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(body).unwrap()
}

fn refused(hub: &Hub, repo: &str, headers: &HeaderMap) -> Option<Response> {
    let gated = hub.gated.lock().unwrap();
    let token = gated.get(repo)?;
    let sent = headers.get("authorization").and_then(|v| v.to_str().ok());
    match sent {
        Some(s) if s == format!("Bearer {token}") => None,
        Some(_) => Some(answer(StatusCode::FORBIDDEN, &[], Body::from("Access to this repo is restricted"))),
        None => Some(answer(
            StatusCode::UNAUTHORIZED,
            &[("x-error-code", "GatedRepo".into())],
            Body::from("Access to this gated repo is restricted"),
        )),
    }
}

async fn resolve(
    State(hub): State<Arc<Hub>>,
    Path((owner, repo, revision, file)): Path<(String, String, String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    note(&hub, &uri, &headers);
    if let Some(other) = hub.forward_to.lock().unwrap().clone() {
        let location = format!("{other}/{owner}/{repo}/resolve/{}/{}", encode_path(&revision), encode_path(&file));
        return answer(StatusCode::TEMPORARY_REDIRECT, &[("location", location)], Body::empty());
    }
    let repo = format!("{owner}/{repo}");
    if let Some(r) = refused(&hub, &repo, &headers) {
        return r;
    }
    let files = hub.files.lock().unwrap();
    if !files.keys().any(|(r, _)| r == &repo) {
        return answer(
            StatusCode::NOT_FOUND,
            &[("x-error-code", "RepoNotFound".into())],
            Body::from("Repository not found"),
        );
    }
    let Some(f) = files.get(&(repo.clone(), file.clone())) else {
        return answer(
            StatusCode::NOT_FOUND,
            &[("x-error-code", "EntryNotFound".into())],
            Body::from("Entry not found"),
        );
    };
    let etag = hub.etag.lock().unwrap().clone().unwrap_or_else(|| format!("\"{}\"", f.sha256));
    let commit = hub.commit.lock().unwrap().clone().unwrap_or_else(|| COMMIT.into());
    answer(
        StatusCode::FOUND,
        &[
            ("location", format!("/cdn/{repo}/{}", encode_path(&file))),
            ("x-linked-size", f.bytes.len().to_string()),
            ("x-linked-etag", etag.clone()),
            ("etag", etag),
            ("x-repo-commit", commit),
        ],
        Body::empty(),
    )
}

async fn content(
    State(hub): State<Arc<Hub>>,
    Path((owner, repo, file)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    note(&hub, &uri, &headers);
    if hub.endless_error.load(Ordering::SeqCst) && method == Method::GET {
        let endless =
            tokio_stream::iter(std::iter::repeat_with(|| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 64 << 10]))));
        return answer(StatusCode::INTERNAL_SERVER_ERROR, &[], Body::from_stream(endless));
    }
    let repo = format!("{owner}/{repo}");
    let Some(f) = hub.files.lock().unwrap().get(&(repo, file)).cloned() else {
        return answer(StatusCode::NOT_FOUND, &[], Body::empty());
    };
    let len = f.bytes.len() as u64;
    let range = headers.get("range").and_then(|v| v.to_str().ok()).and_then(|r| {
        let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
        let a: u64 = a.parse().ok()?;
        let b: u64 = if b.is_empty() { len - 1 } else { b.parse().ok()? };
        (a <= b && b < len).then_some((a, b + 1))
    });
    let (status, start, end) = match range {
        Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b),
        None if headers.contains_key("range") => return answer(StatusCode::RANGE_NOT_SATISFIABLE, &[], Body::empty()),
        None => (StatusCode::OK, 0, len),
    };
    // The body goes out in 64 KiB pieces, counted as they are handed to the connection; a planned drop ends the
    // stream with an error there, which makes the server cut the connection.
    let cut = {
        let mut d = hub.drop_after.lock().unwrap();
        match *d {
            Some(n) if !hub.dropped.load(Ordering::SeqCst) && end - start > n => {
                hub.dropped.store(true, Ordering::SeqCst);
                *d = None;
                Some(start + n)
            }
            _ => None,
        }
    };
    let bytes = f.bytes.clone();
    let counter = hub.clone();
    let stream = futures_stream(bytes, start, end, cut, counter);
    answer(
        status,
        &[
            ("content-length", (end - start).to_string()),
            ("content-range", format!("bytes {start}-{}/{len}", end.max(1) - 1)),
            ("accept-ranges", "bytes".into()),
        ],
        Body::from_stream(stream),
    )
}

fn futures_stream(
    bytes: Arc<Vec<u8>>,
    start: u64,
    end: u64,
    cut: Option<u64>,
    hub: Arc<Hub>,
) -> impl tokio_stream::Stream<Item = Result<Bytes, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut at = start;
        while at < end {
            let stop = cut.map_or(end, |c| c.min(end));
            if at >= stop {
                let _ = tx.send(Err(std::io::Error::other("the stand-in hub drops the connection"))).await;
                return;
            }
            let next = (at + (64 << 10)).min(stop);
            let piece = Bytes::copy_from_slice(&bytes[at as usize..next as usize]);
            if tx.send(Ok(piece)).await.is_err() {
                return;
            }
            hub.sent.fetch_add(next - at, Ordering::SeqCst);
            at = next;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
