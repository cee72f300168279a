//! `Downloads`: the downloads of this process, running and recent, with their byte counts, for the command line's
//! progress bar, `GET /v1/downloads` and the web chat.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// How many finished downloads are remembered.
const KEEP_FINISHED: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DownloadState {
    Running,
    Done,
    Failed,
}

/// One file's download, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct DownloadStatus {
    pub id: u64,
    pub model: String,
    pub file: String,
    /// What is fetched: `header`, `layers a-b of L` or `whole file`.
    pub what: String,
    /// Bytes this download must fetch (what was missing when it started).
    pub total_bytes: u64,
    pub done_bytes: u64,
    pub from_peers_bytes: u64,
    pub from_hub_bytes: u64,
    pub state: DownloadState,
    pub error: Option<String>,
    /// Unix seconds.
    pub started: u64,
}

/// A running download: adds to its counts in the registry.
#[derive(Debug)]
pub struct Tracker {
    id: u64,
    downloads: Downloads,
}

impl Tracker {
    /// Bytes fetched so far: (from the hub, from peers).
    pub fn counts(&self) -> (u64, u64) {
        let list = self.downloads.inner.lock().map(|g| g.1.iter().find(|s| s.id == self.id).cloned());
        list.ok().flatten().map_or((0, 0), |s| (s.from_hub_bytes, s.from_peers_bytes))
    }

    pub fn add_peer_bytes(&self, n: u64) {
        self.downloads.update(self.id, |s| {
            s.from_peers_bytes += n;
            s.done_bytes += n;
        });
    }

    pub fn add_hub_bytes(&self, n: u64) {
        self.downloads.update(self.id, |s| {
            s.from_hub_bytes += n;
            s.done_bytes += n;
        });
    }

    pub fn finish(&self, error: Option<String>) {
        self.downloads.update(self.id, |s| {
            s.state = if error.is_some() { DownloadState::Failed } else { DownloadState::Done };
            s.error = error;
        });
    }
}

/// Every download of this process. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Downloads {
    inner: Arc<Mutex<(u64, Vec<DownloadStatus>)>>,
}

impl Downloads {
    pub fn start(&self, model: &str, file: &str, what: &str, total_bytes: u64) -> Tracker {
        let mut id = 0;
        if let Ok(mut g) = self.inner.lock() {
            g.0 += 1;
            id = g.0;
            let started = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            g.1.push(DownloadStatus {
                id,
                model: model.into(),
                file: file.into(),
                what: what.into(),
                total_bytes,
                done_bytes: 0,
                from_peers_bytes: 0,
                from_hub_bytes: 0,
                state: DownloadState::Running,
                error: None,
                started,
            });
            let finished = g.1.iter().filter(|s| s.state != DownloadState::Running).count();
            if finished > KEEP_FINISHED {
                if let Some(i) = g.1.iter().position(|s| s.state != DownloadState::Running) {
                    g.1.remove(i);
                }
            }
        }
        Tracker { id, downloads: self.clone() }
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut DownloadStatus)) {
        if let Ok(mut g) = self.inner.lock() {
            if let Some(s) = g.1.iter_mut().find(|s| s.id == id) {
                f(s);
            }
        }
    }

    /// Every download remembered, oldest first.
    pub fn list(&self) -> Vec<DownloadStatus> {
        self.inner.lock().map(|g| g.1.clone()).unwrap_or_default()
    }
}
