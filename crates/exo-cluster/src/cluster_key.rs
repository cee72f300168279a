//! `ClusterKey`: the secret that makes a set of nodes one cluster. 32 random bytes, written as 64 hex digits; kept
//! in `$EXO_HOME/cluster_key` (mode 0600) by `exo cluster-key --write`. What the key protects and how is in
//! [`crate::tls`] and `docs/security.md`; this module only makes, reads and keeps keys.

use std::path::{Path, PathBuf};

use crate::error::{ClusterError, Result};

/// The file in `EXO_HOME` a kept key lives in.
pub const KEY_FILE: &str = "cluster_key";

/// A cluster key. Its `Debug` form never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey(…)")
    }
}

impl ClusterKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| ClusterError::Key("the system's random source failed".into()))?;
        Ok(Self(bytes))
    }

    /// A key as `exo cluster-key` prints it: 64 hex digits (surrounding whitespace is ignored).
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let bad = || {
            ClusterError::Key(format!(
                "a cluster key is 64 hex digits (as `exo cluster-key` prints), not {} characters{}",
                text.chars().count(),
                if text.chars().all(|c| c.is_ascii_hexdigit()) { "" } else { " with non-hex ones" }
            ))
        };
        if text.len() != 64 || !text.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let digits = std::str::from_utf8(pair).map_err(|_| bad())?;
            bytes[i] = u8::from_str_radix(digits, 16).map_err(|_| bad())?;
        }
        Ok(Self(bytes))
    }

    pub(crate) fn secret(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Where a kept key lives under `exo_home`.
    pub fn path(exo_home: &Path) -> PathBuf {
        exo_home.join(KEY_FILE)
    }

    /// The key kept under `exo_home`, if there is one.
    pub fn load(exo_home: &Path) -> Result<Option<Self>> {
        let path = Self::path(exo_home);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text).map(Some).map_err(|e| ClusterError::Key(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ClusterError::Key(format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// Keeps the key under `exo_home`, readable by its owner only; refuses to replace a kept key.
    pub fn write(&self, exo_home: &Path) -> Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = Self::path(exo_home);
        std::fs::create_dir_all(exo_home)
            .map_err(|e| ClusterError::Key(format!("cannot create {}: {e}", exo_home.display())))?;
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    ClusterError::Key(format!(
                        "{} already holds a cluster key; remove it first to make a new one",
                        path.display()
                    ))
                } else {
                    ClusterError::Key(format!("cannot write {}: {e}", path.display()))
                }
            })?;
        file.write_all(format!("{}\n", self.to_hex()).as_bytes())
            .map_err(|e| ClusterError::Key(format!("cannot write {}: {e}", path.display())))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bad_ones_say_why() {
        let k = ClusterKey::generate().unwrap();
        assert_eq!(ClusterKey::parse(&format!("  {}\n", k.to_hex())).unwrap(), k);
        assert_ne!(ClusterKey::generate().unwrap(), k);
        assert!(!format!("{k:?}").contains(&k.to_hex()[..8]));
        let e = ClusterKey::parse("abc").unwrap_err().to_string();
        assert!(e.contains("64 hex digits") && e.contains("not 3"), "{e}");
        let e = ClusterKey::parse(&"g".repeat(64)).unwrap_err().to_string();
        assert!(e.contains("non-hex"), "{e}");
        assert!(ClusterKey::parse(&"é".repeat(32)).is_err());
    }

    #[test]
    fn a_kept_key_is_private_and_never_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let home = std::env::temp_dir().join(format!("exo-key-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        assert_eq!(ClusterKey::load(&home).unwrap(), None);
        let k = ClusterKey::generate().unwrap();
        let path = k.write(&home).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(ClusterKey::load(&home).unwrap(), Some(k));
        let e = ClusterKey::generate().unwrap().write(&home).unwrap_err().to_string();
        assert!(e.contains("already holds"), "{e}");
        std::fs::write(&path, "nonsense").unwrap();
        assert!(ClusterKey::load(&home).unwrap_err().to_string().contains("cluster_key"));
        let _ = std::fs::remove_dir_all(&home);
    }
}
