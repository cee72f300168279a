//! `ModelRef`: what a user may name a model by, parsed. A catalog name (`llama-3.1-70b`, `llama-3.1-70b:q8_0`),
//! a Hugging Face file (`hf:owner/repo/path/file.gguf`, optionally `@revision`) or a path to a GGUF file.

use std::path::PathBuf;

use exo_engine::gguf::MAX_SPLIT_PARTS;

use crate::catalog;
use crate::error::{ModelsError, Result};

/// One file of a Hugging Face repository at a revision (a branch, tag or commit).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub repo: String,
    pub revision: String,
    pub file: String,
}

impl FileKey {
    pub fn new(repo: &str, revision: &str, file: &str) -> Self {
        Self { repo: repo.into(), revision: revision.into(), file: file.into() }
    }

    /// Checks that the key names a file inside a repository folder and nothing else: `owner/name`, a revision
    /// without `/`, and a relative path without `.` or `..` components (a key from a peer is checked before it is
    /// turned into a path).
    pub fn validate(&self) -> Result<()> {
        let plain = |part: &str| !part.is_empty() && part != "." && part != ".." && !part.contains('\\');
        let repo_ok = self.repo.split('/').count() == 2 && self.repo.split('/').all(plain);
        let revision_ok = plain(&self.revision) && !self.revision.contains('/');
        let file_ok = self.file.split('/').all(plain);
        if repo_ok && revision_ok && file_ok {
            return Ok(());
        }
        Err(ModelsError::InvalidReference {
            reference: format!("{}/{}@{}", self.repo, self.file, self.revision),
            why: "a file key must be owner/repo, a revision and a relative path without . or .. parts".into(),
        })
    }

    /// The same repository and revision, another file.
    pub fn with_file(&self, file: String) -> Self {
        Self { repo: self.repo.clone(), revision: self.revision.clone(), file }
    }

    /// The keys of every part of a model split in `parts` files of which this is the first, in order; just this
    /// key when `parts` is 1 or the name is not a first part's.
    pub fn parts(&self, parts: usize) -> Vec<FileKey> {
        if parts <= 1 {
            return vec![self.clone()];
        }
        let (dir, name) = match self.file.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), self.file.as_str()),
        };
        match exo_engine::gguf::split_part_names(name, parts) {
            Some(names) => names.into_iter().map(|n| self.with_file(format!("{dir}{n}"))).collect(),
            None => vec![self.clone()],
        }
    }
}

impl std::fmt::Display for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hf:{}/{}", self.repo, self.file)?;
        // A name with an `@` needs its revision shown, or the shown reference would end at that `@`.
        if self.revision != "main" || self.file.contains('@') || self.repo.contains('@') {
            write!(f, "@{}", self.revision)?;
        }
        Ok(())
    }
}

/// A model reference, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// A GGUF file on this machine.
    Path(PathBuf),
    /// A file on the hub; `parts` > 1 for a split model (the key names the first part); `size` is the catalog's
    /// figure when the reference came from the catalog.
    Hub { key: FileKey, parts: usize, size: Option<u64>, layers: Option<usize> },
}

impl ModelRef {
    /// Parses `hf:owner/repo/file.gguf[@revision]` or `name[:quant]` from the catalog; `None` for anything else
    /// (a path or a name in a models folder, which the store checks against the disk).
    pub fn parse_remote(reference: &str) -> Result<Option<ModelRef>> {
        let invalid = |why: &str| ModelsError::InvalidReference { reference: reference.into(), why: why.into() };
        if let Some(rest) = reference.strip_prefix("hf:") {
            let (path, revision) = match rest.rsplit_once('@') {
                Some((p, r)) if !r.is_empty() && !r.contains('/') => (p, r),
                Some(_) => return Err(invalid("an empty or malformed @revision")),
                None => (rest, "main"),
            };
            let mut it = path.splitn(3, '/');
            let (Some(owner), Some(repo), Some(file)) = (it.next(), it.next(), it.next()) else {
                return Err(invalid("expected hf:owner/repo/path/to/file.gguf"));
            };
            if owner.is_empty()
                || repo.is_empty()
                || file.is_empty()
                || file.split('/').any(|c| c.is_empty() || c == "..")
            {
                return Err(invalid("expected hf:owner/repo/path/to/file.gguf"));
            }
            if !file.ends_with(".gguf") {
                return Err(invalid("the file must be a .gguf file"));
            }
            let key = FileKey::new(&format!("{owner}/{repo}"), revision, file);
            key.validate()?;
            let name = file.rsplit('/').next().unwrap_or(file);
            // A reference to a first part of a split model loads every part; the count is capped before any
            // part's name is made.
            let split = name.strip_suffix(".gguf").and_then(|s| s.rsplit_once("-of-")).and_then(|(rest, n)| {
                let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
                let index = rest.rsplit_once('-').map_or("", |(_, i)| i);
                (digits(index) && digits(n)).then_some(n)
            });
            let parts = match split.map(|n| n.parse::<usize>().ok().filter(|&n| n <= MAX_SPLIT_PARTS)) {
                Some(None) => {
                    return Err(invalid(&format!(
                        "a split model has at most {MAX_SPLIT_PARTS} parts; this name says {}",
                        split.unwrap_or_default()
                    )))
                }
                Some(Some(n)) if exo_engine::gguf::split_part_names(name, n).is_some() => n,
                _ => 1,
            };
            return Ok(Some(ModelRef::Hub { key, parts, size: None, layers: None }));
        }
        let (name, quant) = match reference.split_once(':') {
            Some((n, q)) => (n, Some(q)),
            None => (reference, None),
        };
        let Some(entry) = catalog::lookup(name) else { return Ok(None) };
        let quant = quant.unwrap_or(entry.default_quantization());
        let (_, file) = entry.file(quant).ok_or_else(|| ModelsError::UnknownQuantization {
            name: entry.name.clone(),
            quant: quant.into(),
            available: entry.quantizations().join(", "),
        })?;
        Ok(Some(ModelRef::Hub {
            key: FileKey::new(&entry.repo, "main", &file.file),
            parts: file.parts,
            size: Some(file.size),
            layers: Some(entry.layers),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(r: &str) -> (FileKey, usize) {
        match ModelRef::parse_remote(r).unwrap() {
            Some(ModelRef::Hub { key, parts, .. }) => (key, parts),
            other => panic!("{r}: {other:?}"),
        }
    }

    #[test]
    fn references_parse() {
        let (k, parts) = hub("hf:bartowski/Llama-3.2-1B-Instruct-GGUF/Llama-3.2-1B-Instruct-Q4_K_M.gguf");
        assert_eq!(
            k,
            FileKey::new("bartowski/Llama-3.2-1B-Instruct-GGUF", "main", "Llama-3.2-1B-Instruct-Q4_K_M.gguf")
        );
        assert_eq!(parts, 1);
        let (k, _) = hub("hf:o/r/sub/dir/m.gguf@v1.0");
        assert_eq!((k.file.as_str(), k.revision.as_str()), ("sub/dir/m.gguf", "v1.0"));
        let (k, parts) = hub("hf:o/r/q8/m-00001-of-00003.gguf");
        assert_eq!(parts, 3);
        assert_eq!(k.parts(3)[2].file, "q8/m-00003-of-00003.gguf");

        let (k, parts) = hub("llama-3.1-70b");
        assert_eq!((k.repo.as_str(), parts), ("bartowski/Meta-Llama-3.1-70B-Instruct-GGUF", 1));
        assert!(k.file.contains("Q4_K_M"));
        let (k, parts) = hub("llama-3.1-70b:q8_0");
        assert_eq!(parts, 2);
        assert!(k.file.ends_with("-00001-of-00002.gguf"), "{}", k.file);

        assert_eq!(ModelRef::parse_remote("./model.gguf").unwrap(), None);
        assert_eq!(ModelRef::parse_remote("SmolLM2-135M-Instruct.Q4_1").unwrap(), None);
    }

    #[test]
    fn bad_references_say_why() {
        for (r, why) in [
            ("hf:owner/repo", "expected hf:owner/repo"),
            ("hf:owner//m.gguf", "expected hf:owner/repo"),
            ("hf:o/r/../m.gguf", "expected hf:owner/repo"),
            ("hf:o/r/m.bin", "must be a .gguf"),
            ("hf:o/r/m.gguf@", "revision"),
            ("hf:o/r/m-00001-of-99999999999.gguf", "at most 1024 parts"),
            ("hf:o/r/m-00001-of-99999999999999999999999999.gguf", "at most 1024 parts"),
            ("hf:o/r/m-0001-of-1025.gguf", "at most 1024 parts"),
        ] {
            let e = ModelRef::parse_remote(r).unwrap_err().to_string();
            assert!(e.contains(why), "{r}: {e}");
        }
        for bad in [
            FileKey::new("o/r", "main", "../../etc/passwd"),
            FileKey::new("o/r", "main", "/etc/passwd"),
            FileKey::new("../x", "main", "m.gguf"),
            FileKey::new("o", "main", "m.gguf"),
            FileKey::new("o/r/s", "main", "m.gguf"),
            FileKey::new("o/r", "..", "m.gguf"),
            FileKey::new("o/r", "a/b", "m.gguf"),
            FileKey::new("o/r", "main", "d/./m.gguf"),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(FileKey::new("o/r", "v1.0", "d/m.gguf").validate().is_ok());
        // A key is shown as a reference that names it again, an `@` in its file name included (found by the
        // model_reference fuzz target: "hf:o/r/a@b.gguf" parsed back as file "a" at revision "b.gguf").
        for key in [
            FileKey::new("o/r", "main", "a@b.gguf"),
            FileKey::new("o/r", "v1", "a@b.gguf"),
            FileKey::new("o@x/r", "main", "m.gguf"),
        ] {
            assert_eq!(hub(&key.to_string()).0, key, "{key}");
        }
        // At the cap, and names that only look like split parts.
        assert_eq!(hub("hf:o/r/m-0001-of-1024.gguf").1, 1024);
        assert_eq!(hub("hf:o/r/m-0002-of-1024.gguf").1, 1);
        assert_eq!(hub("hf:o/r/story-of-99999999999.gguf").1, 1);
        assert_eq!(FileKey::new("o/r", "main", "m-00001-of-99999999999.gguf").parts(99_999_999_999).len(), 1);
        assert!(ModelRef::parse_remote("hf:../r/m.gguf").is_err());
        let e = ModelRef::parse_remote("llama-3.1-8b:q3_xs").unwrap_err().to_string();
        assert!(e.contains("has no q3_xs file") && e.contains("Q4_K_M"), "{e}");
    }
}
