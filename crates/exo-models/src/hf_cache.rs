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
//!
//! Commits and ETags come from a hub's headers, a peer's answer or a `refs/` file, and become folder and file
//! names here, so they are checked first: a commit is 40 hex digits, an ETag 64 (a sha256, for LFS files) or 40
//! (a git blob's sha1, for others), lowercase; anything else is a [`ModelsError::BadCacheName`]. Every path the
//! cache resolves is checked to stay under its root as well.

use std::path::{Component, Path, PathBuf};

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

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_commit(revision: &str) -> bool {
    is_hex(revision, 40)
}

/// What a value from outside may be shown as in an error: its start, escaped.
fn shown(value: &str) -> String {
    let start: String = value.chars().take(80).collect();
    format!("{start:?}{}", if start.len() < value.len() { "…" } else { "" })
}

/// A commit as the cache names its snapshot folders: 40 hex digits, lowercased.
pub fn check_commit(commit: &str) -> Result<String> {
    let c = commit.trim();
    if is_commit(c) {
        return Ok(c.to_ascii_lowercase());
    }
    Err(ModelsError::BadCacheName { what: "commit", value: shown(commit), expected: "40 hex digits" })
}

/// An ETag as the cache names its blobs: the hub's header value without `W/` and quotes, lowercased, which must be
/// a sha256 (64 hex digits, LFS files) or a git blob sha1 (40).
pub fn check_etag(etag: &str) -> Result<String> {
    let e = etag.trim();
    let e = e.strip_prefix("W/").unwrap_or(e).trim_matches('"');
    if is_hex(e, 64) || is_hex(e, 40) {
        return Ok(e.to_ascii_lowercase());
    }
    Err(ModelsError::BadCacheName {
        what: "ETag",
        value: shown(etag),
        expected: "a sha256 (64 hex digits) or a git sha1 (40)",
    })
}

/// `path`, if it is `root` followed only by plain names (no `..`, `.`, root or prefix parts).
pub(crate) fn contained(root: &Path, path: PathBuf) -> Result<PathBuf> {
    let inside = path.strip_prefix(root).is_ok_and(|rest| rest.components().all(|c| matches!(c, Component::Normal(_))));
    if inside {
        return Ok(path);
    }
    Err(ModelsError::BadCacheName {
        what: "path",
        value: shown(&path.display().to_string()),
        expected: "a path inside the cache",
    })
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

    /// `models--{owner}--{name}`, for a key's repository (`FileKey::validate` checked it is `owner/name`).
    fn repo_dir(&self, repo: &str) -> Result<PathBuf> {
        contained(&self.root, self.root.join(format!("models--{}", repo.replace('/', "--"))))
    }

    /// The commit `revision` names, from `refs/` (a commit names itself); `None` when the revision is not a plain
    /// name or the ref does not hold a commit.
    pub fn commit(&self, repo: &str, revision: &str) -> Option<String> {
        if is_commit(revision) {
            return Some(revision.to_ascii_lowercase());
        }
        let path = contained(&self.root, self.repo_dir(repo).ok()?.join("refs").join(revision)).ok()?;
        let text = std::fs::read_to_string(&path).ok()?;
        match check_commit(&text) {
            Ok(commit) => Some(commit),
            Err(e) => {
                tracing::warn!("{}: {e}; the ref is ignored", path.display());
                None
            }
        }
    }

    /// The cached file for `key`, if the cache has it whole.
    pub fn find(&self, key: &FileKey) -> Option<PathBuf> {
        key.validate().ok()?;
        let commit = self.commit(&key.repo, &key.revision)?;
        let path = contained(&self.root, self.repo_dir(&key.repo).ok()?.join("snapshots").join(commit).join(&key.file))
            .ok()?;
        path.is_file().then_some(path)
    }

    /// Where the blob with `etag` lives (whether or not it is there); an error for an ETag the cache cannot name.
    pub fn blob(&self, repo: &str, etag: &str) -> Result<PathBuf> {
        let etag = check_etag(etag)?;
        contained(&self.root, self.repo_dir(repo)?.join("blobs").join(etag))
    }

    /// Points `snapshots/{commit}/{file}` at the blob `etag` and `refs/{revision}` at `commit`; returns the
    /// snapshot path. The key, commit and ETag are checked before anything is made.
    pub fn link(&self, key: &FileKey, commit: &str, etag: &str) -> Result<PathBuf> {
        key.validate()?;
        let (commit, etag) = (check_commit(commit)?, check_etag(etag)?);
        let dir = self.repo_dir(&key.repo)?;
        let snapshot = contained(&self.root, dir.join("snapshots").join(&commit).join(&key.file))?;
        let parent = snapshot.parent().unwrap_or(&dir).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|e| ModelsError::io(&parent, e))?;
        // Relative, as huggingface_hub makes them: one `..` per folder between the snapshot file and the repo.
        let depth = key.file.matches('/').count() + 2;
        let target = PathBuf::from("../".repeat(depth)).join("blobs").join(&etag);
        if snapshot.symlink_metadata().is_ok() {
            std::fs::remove_file(&snapshot).map_err(|e| ModelsError::io(&snapshot, e))?;
        }
        std::os::unix::fs::symlink(&target, &snapshot).map_err(|e| ModelsError::io(&snapshot, e))?;
        if !key.revision.eq_ignore_ascii_case(&commit) {
            let refs = dir.join("refs");
            std::fs::create_dir_all(&refs).map_err(|e| ModelsError::io(&refs, e))?;
            write_atomic(&contained(&self.root, refs.join(&key.revision))?, commit.as_bytes())?;
        }
        Ok(snapshot)
    }

    /// Moves the complete file `from` into the cache as the blob `etag` (a rename, or a copy then a rename across
    /// file systems, so the blob appears whole or not at all) and links it.
    pub fn insert(&self, key: &FileKey, commit: &str, etag: &str, from: &Path) -> Result<PathBuf> {
        key.validate()?;
        check_commit(commit)?;
        let etag = &check_etag(etag)?;
        let blob = self.blob(&key.repo, etag)?;
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
        let etag = "e7a9".repeat(16);
        let path = cache.insert(&key, commit, &format!("\"{}\"", etag.to_uppercase()), &src).unwrap();
        assert_eq!(path, root.join("models--owner--repo/snapshots").join(commit).join("sub/m.gguf"));
        assert_eq!(std::fs::read(&path).unwrap(), b"GGUF...");
        assert_eq!(std::fs::read_link(&path).unwrap(), PathBuf::from("../../../blobs").join(&etag));
        assert_eq!(cache.find(&key), Some(path.clone()));
        assert_eq!(cache.find(&FileKey::new("owner/repo", commit, "sub/m.gguf")), Some(path.clone()));
        assert_eq!(cache.find(&FileKey::new("owner/repo", "v2", "sub/m.gguf")), None);
        assert_eq!(cache.list(), [("owner/repo".to_string(), "sub/m.gguf".to_string(), path)]);
        assert!(!src.exists());
    }

    #[test]
    fn commits_and_etags_that_are_not_hashes_never_become_paths() {
        let root = std::env::temp_dir().join(format!("exo-hf-cache-names-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let cache = HfCache::new(root.join("hub"));
        let key = FileKey::new("owner/repo", "main", "m.gguf");
        let src = root.join("download");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let sha256 = "ab".repeat(32);
        for (bad_commit, bad_etag) in [
            ("../../../../tmp/evil", sha256.as_str()),
            ("0123456789abcdef0123456789abcdef0123456/", sha256.as_str()),
            ("0123456789abcdef0123456789abcdef0123456g", sha256.as_str()),
            ("", sha256.as_str()),
            (commit, "../../../evil"),
            (commit, "/etc/passwd"),
            (commit, &"ab".repeat(31)),
            (commit, "abc-12"),
        ] {
            std::fs::write(&src, b"GGUF").unwrap();
            let e = cache.insert(&key, bad_commit, bad_etag, &src).unwrap_err();
            assert!(matches!(e, ModelsError::BadCacheName { .. }), "{bad_commit} {bad_etag}: {e}");
            assert!(e.to_string().contains("refused"), "{e}");
            assert!(src.exists(), "the download stays where it was");
        }
        assert!(!root.join("tmp").exists() && !root.join("evil").exists() && !root.join("hub").exists());
        assert!(cache.blob("owner/repo", "..").is_err());

        // The hub's forms of an ETag are accepted: quoted, weak, uppercase; a git sha1 too.
        assert_eq!(check_etag(&format!("W/\"{}\"", sha256.to_uppercase())).unwrap(), sha256);
        assert_eq!(check_etag(commit).unwrap(), commit);
        assert_eq!(check_commit(&format!(" {}\n", commit.to_uppercase())).unwrap(), commit);

        // A ref that holds anything but a commit is ignored, and nothing outside the cache is found through it.
        let refs = root.join("hub/models--owner--repo/refs");
        std::fs::create_dir_all(&refs).unwrap();
        std::fs::create_dir_all(root.join("outside")).unwrap();
        std::fs::write(root.join("outside/m.gguf"), b"GGUF").unwrap();
        std::fs::write(refs.join("main"), "../../../outside").unwrap();
        assert_eq!(cache.commit("owner/repo", "main"), None);
        assert_eq!(cache.find(&key), None);
        assert_eq!(cache.find(&FileKey::new("owner/repo", "..", "m.gguf")), None);
    }

    #[test]
    fn only_paths_under_the_root_are_contained() {
        let root = Path::new("/cache");
        assert!(contained(root, root.join("models--o--r/blobs/x")).is_ok());
        assert!(contained(root, root.join("models--o--r/../../etc")).is_err());
        assert!(contained(root, PathBuf::from("/etc/passwd")).is_err());
    }
}
