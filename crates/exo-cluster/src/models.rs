//! `ModelStore`: the GGUF files a node can serve, by name from its models folder or by path.

use std::path::PathBuf;

use crate::error::ClusterError;

#[derive(Debug, Clone)]
pub struct ModelStore {
    dir: PathBuf,
}

impl ModelStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Names (file names without `.gguf`) of the GGUF files in the models folder, sorted.
    pub fn list(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".gguf")).map(str::to_string))
            .collect();
        names.sort();
        names
    }

    /// The file behind `model`: a name in the models folder (with or without `.gguf`), or a path to a GGUF file.
    pub fn resolve(&self, model: &str) -> Result<PathBuf, ClusterError> {
        let candidates = [self.dir.join(model), self.dir.join(format!("{model}.gguf")), PathBuf::from(model)];
        let is_name = !model.contains('/') && !model.starts_with('.');
        candidates
            .into_iter()
            .enumerate()
            .find(|(i, p)| (*i == 2 || is_name) && p.is_file())
            .map(|(_, p)| p)
            .ok_or_else(|| ClusterError::ModelNotFound(model.to_string()))
    }
}
