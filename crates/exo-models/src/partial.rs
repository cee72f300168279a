//! `PartialFile`: a file being downloaded, at its full length with only some byte ranges present (a sparse file:
//! the holes take no disk space), beside a record (`<file>.ranges`, JSON) of what the hub says the file is and which
//! ranges are written. Ranges are recorded only after their bytes are on disk, so after a crash or a dropped
//! connection the record never claims bytes that are not there, and a download resumes with what is missing.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{ModelsError, Result};
use crate::hf_cache::write_atomic;
use crate::hub::RemoteFile;
use crate::ranges::RangeSet;

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    file: RemoteFile,
    held: RangeSet,
}

#[derive(Debug)]
pub struct PartialFile {
    path: PathBuf,
    record_path: PathBuf,
    file: File,
    info: RemoteFile,
    held: Mutex<RangeSet>,
}

fn record_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".ranges");
    path.with_file_name(name)
}

impl PartialFile {
    /// The partial file at `path`, if there is one with a readable record.
    pub fn open(path: &Path) -> Option<Self> {
        let record_path = record_path(path);
        let record: Record = serde_json::from_slice(&std::fs::read(&record_path).ok()?).ok()?;
        let file = OpenOptions::new().read(true).write(true).open(path).ok()?;
        if file.metadata().ok()?.len() != record.file.size {
            return None;
        }
        Some(Self { path: path.into(), record_path, file, info: record.file, held: Mutex::new(record.held) })
    }

    /// The partial file at `path` for `info`: the one there if it is of the same file (size and ETag), else a new
    /// empty one.
    pub fn open_or_create(path: &Path, info: &RemoteFile) -> Result<Self> {
        if let Some(p) = Self::open(path) {
            if p.info.size == info.size && (p.info.etag == info.etag || info.etag.is_none()) {
                return Ok(p);
            }
            tracing::info!("{}: the hub's file changed; starting over", path.display());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ModelsError::io(dir, e))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| ModelsError::io(path, e))?;
        file.set_len(info.size).map_err(|e| ModelsError::io(path, e))?;
        let p = Self {
            path: path.into(),
            record_path: record_path(path),
            file,
            info: info.clone(),
            held: Mutex::new(RangeSet::new()),
        };
        p.save(&RangeSet::new())?;
        Ok(p)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn info(&self) -> &RemoteFile {
        &self.info
    }

    pub fn held(&self) -> RangeSet {
        self.held.lock().map(|h| h.clone()).unwrap_or_default()
    }

    pub fn is_complete(&self) -> bool {
        self.held().contains(0, self.info.size)
    }

    pub fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        self.file.write_all_at(bytes, offset).map_err(|e| ModelsError::io(&self.path, e))
    }

    /// Records `start..end` as held, once its bytes are on disk.
    pub fn mark(&self, start: u64, end: u64) -> Result<()> {
        if start >= end {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| ModelsError::io(&self.path, e))?;
        let mut held = self.held.lock().map_err(|_| ModelsError::Corrupt {
            what: self.path.display().to_string(),
            message: "a download thread panicked".into(),
        })?;
        held.insert(start, end);
        self.save(&held)
    }

    fn save(&self, held: &RangeSet) -> Result<()> {
        let record = Record { file: self.info.clone(), held: held.clone() };
        let json = serde_json::to_vec(&record).map_err(|e| ModelsError::Corrupt {
            what: self.record_path.display().to_string(),
            message: e.to_string(),
        })?;
        write_atomic(&self.record_path, &json)
    }

    /// `len` bytes at `offset`, if every one of them is held.
    pub fn read_held(&self, offset: u64, len: u64) -> Option<Vec<u8>> {
        if !self.held().contains(offset, offset.checked_add(len)?) {
            return None;
        }
        let mut buf = vec![0u8; usize::try_from(len).ok()?];
        self.file.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    }

    /// Deletes the file and its record.
    pub fn discard(&self) {
        let _ = std::fs::remove_file(&self.record_path);
        let _ = std::fs::remove_file(&self.path);
    }

    /// Forgets the record (the file is complete and moves elsewhere).
    pub fn forget_record(&self) {
        let _ = std::fs::remove_file(&self.record_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_survive_reopening_and_a_changed_file_starts_over() {
        let dir = std::env::temp_dir().join(format!("exo-partial-{}", std::process::id()));
        let path = dir.join("m.gguf");
        let info = RemoteFile { size: 100, etag: Some("a".into()), commit: None };
        let p = PartialFile::open_or_create(&path, &info).unwrap();
        p.write_at(10, &[7u8; 20]).unwrap();
        p.mark(10, 30).unwrap();
        assert_eq!(p.read_held(10, 20), Some(vec![7u8; 20]));
        assert_eq!(p.read_held(0, 20), None);
        drop(p);
        let p = PartialFile::open_or_create(&path, &info).unwrap();
        assert_eq!(p.held().iter().collect::<Vec<_>>(), [(10, 30)]);
        assert!(!p.is_complete());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 100);
        drop(p);
        let changed = RemoteFile { etag: Some("b".into()), ..info };
        let p = PartialFile::open_or_create(&path, &changed).unwrap();
        assert!(p.held().is_empty());
        p.discard();
        assert!(!path.exists() && PartialFile::open(&path).is_none());
    }
}
