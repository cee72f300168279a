//! This machine's speed as the node advertises it: measured once by the engine's calibration
//! ([`exo_engine::calibration::measure`]) and kept in `EXO_HOME/speed.json`, keyed by what the figure depends on
//! (CPU model, architecture, the kernels in use, the thread count, exo's version), so that two nodes sharing a
//! machine with different `--threads` never share a figure, and a new CPU or release measures again. Each GPU's
//! figure ([`exo_engine::calibration::measure_device`]) is kept in the same file under a key of what it is.

use std::path::Path;
use std::time::Instant;

use exo_engine::calibration::{self, Speed};
use serde_json::{json, Map, Value};

/// The figures' file under EXO_HOME.
const FILE: &str = "speed.json";

/// This machine's speed at `threads` threads: from `home/speed.json` if measured before under the same key,
/// otherwise measured now (a fraction of a second) and kept. A file that cannot be read or written costs a
/// measurement, never the start.
pub fn speed(home: &Path, threads: usize) -> Speed {
    let kept = kept(
        home,
        &key(threads),
        |v| {
            Some(Speed {
                matvec_bytes_per_s: figure(v, "matvec_bytes_per_s")?,
                memory_bytes_per_s: figure(v, "memory_bytes_per_s")?,
            })
        },
        || {
            let started = Instant::now();
            let s = calibration::measure(threads);
            eprintln!(
            "measured this machine at --threads {threads} in {} ms: Q8_0 matrix-vector {:.1} GB/s, memory reads {:.1} GB/s \
             (kept in {})",
            started.elapsed().as_millis(),
            s.matvec_bytes_per_s as f64 / 1e9,
            s.memory_bytes_per_s as f64 / 1e9,
            home.join(FILE).display()
        );
            Some((s, json!({"matvec_bytes_per_s": s.matvec_bytes_per_s, "memory_bytes_per_s": s.memory_bytes_per_s})))
        },
    );
    kept.unwrap_or_default()
}

/// A GPU's Q8_0 matrix-vector rate ([`calibration::measure_device`]), kept in `home/speed.json` the same way under
/// a key of what it is (its name and model, compute capability, exo's version), so that each GPU of a machine is
/// measured once; 0 if it cannot be measured (the node then advertises no speed for it).
pub fn device_speed(home: &Path, device: &exo_engine::FoundDevice) -> u64 {
    let info = &device.info;
    let key = format!(
        "{} | {} | compute {} | exo {}",
        info.name,
        info.description,
        info.compute_capability.as_deref().unwrap_or("-"),
        env!("CARGO_PKG_VERSION")
    );
    let measured = kept(
        home,
        &key,
        |v| figure(v, "matvec_bytes_per_s"),
        || {
            let started = Instant::now();
            match calibration::measure_device(&device.device) {
                Ok(rate) => {
                    eprintln!(
                        "measured {info} in {} ms: Q8_0 matrix-vector {:.1} GB/s (kept in {})",
                        started.elapsed().as_millis(),
                        rate as f64 / 1e9,
                        home.join(FILE).display()
                    );
                    Some((rate, json!({ "matvec_bytes_per_s": rate })))
                }
                Err(e) => {
                    tracing::warn!("cannot measure {info}: {e}; it advertises no speed");
                    None
                }
            }
        },
    );
    measured.unwrap_or(0)
}

/// The figure under `key` in `home/speed.json` as `parse` reads it, or what `measure` gives, kept there (with the
/// JSON to keep) unless it gives nothing.
fn kept<T>(
    home: &Path,
    key: &str,
    parse: impl Fn(&Value) -> Option<T>,
    measure: impl FnOnce() -> Option<(T, Value)>,
) -> Option<T> {
    let file = home.join(FILE);
    let mut entries = std::fs::read_to_string(&file)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    if let Some(s) = entries.get(key).and_then(&parse) {
        return Some(s);
    }
    let (figure, value) = measure()?;
    entries.insert(key.to_string(), value);
    if let Err(e) = write(home, &file, &entries) {
        tracing::warn!("cannot keep the speed figures in {}: {e}", file.display());
    }
    Some(figure)
}

/// What a figure depends on: CPU model, architecture, kernels, threads, exo's version.
fn key(threads: usize) -> String {
    let (arch, _, kernels) = exo_cluster::node::cpu();
    format!("{} | {arch} | {kernels} | {threads} threads | exo {}", cpu_model(), env!("CARGO_PKG_VERSION"))
}

/// The CPU's model name as the operating system gives it ("unknown CPU" if it does not).
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "unknown CPU".into())
}

/// A kept figure, if it is there and plausible (a hand-edited or damaged file measures again).
fn figure(v: &Value, name: &str) -> Option<u64> {
    v.get(name)?.as_u64().filter(|&b| (1..exo_cluster::topology::MAX_SPEED_CLAIM).contains(&b))
}

/// Writes the figures under another name and renames, so a crash never leaves half a file.
fn write(home: &Path, file: &Path, entries: &Map<String, Value>) -> std::io::Result<()> {
    std::fs::create_dir_all(home)?;
    let partial = home.join(format!("{FILE}.{}.tmp", std::process::id()));
    let text = serde_json::to_string_pretty(&Value::Object(entries.clone())).map_err(std::io::Error::other)?;
    std::fs::write(&partial, text + "\n")?;
    std::fs::rename(&partial, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_is_measured_once_per_thread_count_and_kept() {
        let home = std::env::temp_dir().join(format!("exo-speed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        let one = speed(&home, 1);
        assert!(one.matvec_bytes_per_s > 0 && one.memory_bytes_per_s > 0, "{one:?}");
        // Kept: a planted figure under the same key is what the next start reads, without measuring.
        let file = home.join(FILE);
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        v[key(1)] = json!({"matvec_bytes_per_s": 123, "memory_bytes_per_s": 456});
        std::fs::write(&file, v.to_string()).unwrap();
        assert_eq!(speed(&home, 1), Speed { matvec_bytes_per_s: 123, memory_bytes_per_s: 456 });
        // Another thread count is another key, measured and kept beside the first.
        assert_ne!(key(1), key(2));
        speed(&home, 2);
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 2);
        // A damaged file measures again and is replaced.
        std::fs::write(&file, "{not json").unwrap();
        assert!(speed(&home, 1).matvec_bytes_per_s > 456);
        assert!(serde_json::from_str::<Value>(&std::fs::read_to_string(&file).unwrap()).is_ok());
        // A device's figure is kept beside them under its own key.
        let rate = device_speed(&home, &exo_engine::FoundDevice::cpu());
        assert!(rate > 0);
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
        assert_eq!(device_speed(&home, &exo_engine::FoundDevice::cpu()), rate);
        std::fs::remove_dir_all(&home).unwrap();
    }
}
