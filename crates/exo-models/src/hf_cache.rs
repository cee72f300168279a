//! `HfCache`: the Hugging Face cache layout that `huggingface_hub` (and `huggingface-cli download`, llama.cpp's
//! `-hf`, …) share, so a file one tool downloaded is found by the others:
//!
//! ```text
//! $HF_HUB_CACHE (default $HF_HOME/hub, HF_HOME default ~/.cache/huggingface)
//!   models--{owner}--{name}/
//!     blobs/{etag}                      the file's bytes, named by the hub's ETag (its sha256 for LFS files)
//!     snapshots/{commit}/{path/in/repo} a relative symlink to ../../blobs/{etag}
//!     refs/{revision}                   the commit a branch or tag pointed at
//! ```

use std::path::{Path, PathBuf};

use crate::error::{ModelsError, Result};
use crate::reference::FileKey;

#[derive(Debug, Clone)]
pub struct HfCache {
    root: PathBuf,
}

/// `$HF_HOME`, default `~/.cache/huggingface`.
pub fn hf_home() -> PathBuf {
    if let Some(h) = std::env::var_os("HF_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let xdg = std::env::var_os("XDG_CACHE_HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    xdg.unwrap_or_else(|| home.join(".cache")).join("huggingface")
}

fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

impl HfCache {
    /// The cache the environment names: `HF_HUB_CACHE`, else `$HF_HOME/hub`.
    pub fn from_env() -> Self {
        match std::env::var_os("HF_HUB_CACHE").filter(|h| !h.is_empty()) {
            Some(dir) => Self::new(dir),
            None => Self::new(hf_home().join("hub")),
        }
    }

    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.root.join(format!("models--{}", repo.replace('/', "--")))
    }

    /// The commit `revision` names, from `refs/` (a commit names itself).
    pub fn commit(&self, repo: &str, revision: &str) -> Option<String> {
        if is_commit(revision) {
            return Some(revision.to_string());
        }
        let text = std::fs::read_to_string(self.repo_dir(repo).join("refs").join(revision)).ok()?;
        Some(text.trim().to_string()).filter(|c| !c.is_empty())
    }

    /// The cached file for `key`, if the cache has it whole.
    pub fn find(&self, key: &FileKey) -> Option<PathBuf> {
        let commit = self.commit(&key.repo, &key.revision)?;
        let path = self.repo_dir(&key.repo).join("snapshots").join(commit).join(&key.file);
        path.is_file().then_some(path)
    }

    /// Where the blob with `etag` lives (whether or not it is there).
    pub fn blob(&self, repo: &str, etag: &str) -> PathBuf {
        self.repo_dir(repo).join("blobs").join(etag)
    }

    /// Points `snapshots/{commit}/{file}` at the blob `etag` and `refs/{revision}` at `commit`; returns the
    /// snapshot path.
    pub fn link(&self, key: &FileKey, commit: &str, etag: &str) -> Result<PathBuf> {
        let dir = self.repo_dir(&key.repo);
        let snapshot = dir.join("snapshots").join(commit).join(&key.file);
        let parent = snapshot.parent().unwrap_or(&dir).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|e| ModelsError::io(&parent, e))?;
        // Relative, as huggingface_hub makes them: one `..` per folder between the snapshot file and the repo.
        let depth = key.file.matches('/').count() + 2;
        let target = PathBuf::from("../".repeat(depth)).join("blobs").join(etag);
        if snapshot.symlink_metadata().is_ok() {
            std::fs::remove_file(&snapshot).map_err(|e| ModelsError::io(&snapshot, e))?;
        }
        std::os::unix::fs::symlink(&target, &snapshot).map_err(|e| ModelsError::io(&snapshot, e))?;
        if key.revision != commit {
            let refs = dir.join("refs");
            std::fs::create_dir_all(&refs).map_err(|e| ModelsError::io(&refs, e))?;
            write_atomic(&refs.join(&key.revision), commit.as_bytes())?;
        }
        Ok(snapshot)
    }

    /// Moves the complete file `from` into the cache as the blob `etag` (a rename, or a copy then a rename across
    /// file systems, so the blob appears whole or not at all) and links it.
    pub fn insert(&self, key: &FileKey, commit: &str, etag: &str, from: &Path) -> Result<PathBuf> {
        let blob = self.blob(&key.repo, etag);
        let blobs = blob.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&blobs).map_err(|e| ModelsError::io(&blobs, e))?;
        if std::fs::rename(from, &blob).is_err() {
            let tmp = blobs.join(format!("{etag}.incomplete"));
            std::fs::copy(from, &tmp).map_err(|e| ModelsError::io(&tmp, e))?;
            std::fs::rename(&tmp, &blob).map_err(|e| ModelsError::io(&blob, e))?;
            let _ = std::fs::remove_file(from);
        }
        self.link(key, commit, etag)
    }

    /// Every GGUF file in the cache: (repository, path in the repository, file).
    pub fn list(&self) -> Vec<(String, String, PathBuf)> {
        let mut out = Vec::new();
        for (repo, dir) in repo_dirs(&self.root) {
            for snap in std::fs::read_dir(dir.join("snapshots")).into_iter().flatten().flatten() {
                for (rel, p) in files_under(&snap.path()) {
                    if rel.ends_with(".gguf") && p.is_file() {
                        out.push((repo.clone(), rel, p));
                    }
                }
            }
        }
        out.sort();
        out.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        out
    }
}

/// The `models--owner--name` folders under `root`, as (owner/name, folder).
pub(crate) fn repo_dirs(root: &Path) -> Vec<(String, PathBuf)> {
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_prefix("models--").map(|r| (r.replacen("--", "/", 1), e.path()))
        })
        .collect()
}

/// Every file under `dir`, at any depth, as (path relative to `dir` with `/`, path); links are not followed into
/// folders.
pub(crate) fn files_under(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else {
                out.push((p.strip_prefix(dir).unwrap_or(&p).to_string_lossy().to_string(), p));
            }
        }
    }
    out
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| ModelsError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ModelsError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_found_through_refs_and_snapshots() {
        let root = std::env::temp_dir().join(format!("exo-hf-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let cache = HfCache::new(&root);
        let key = FileKey::new("owner/repo", "main", "sub/m.gguf");
        assert_eq!(cache.find(&key), None);
        let src = root.join("download");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(&src, b"GGUF...").unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let path = cache.insert(&key, commit, "e7a9", &src).unwrap();
        assert_eq!(path, root.join("models--owner--repo/snapshots").join(commit).join("sub/m.gguf"));
        assert_eq!(std::fs::read(&path).unwrap(), b"GGUF...");
        assert_eq!(std::fs::read_link(&path).unwrap(), PathBuf::from("../../../blobs/e7a9"));
        assert_eq!(cache.find(&key), Some(path.clone()));
        assert_eq!(cache.find(&FileKey::new("owner/repo", commit, "sub/m.gguf")), Some(path.clone()));
        assert_eq!(cache.find(&FileKey::new("owner/repo", "v2", "sub/m.gguf")), None);
        assert_eq!(cache.list(), [("owner/repo".to_string(), "sub/m.gguf".to_string(), path)]);
        assert!(!src.exists());
    }
}
