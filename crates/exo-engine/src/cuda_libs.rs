//! Loading the CUDA driver and libraries at run time (builds with the `cuda` feature).
//!
//! candle calls the CUDA driver (libcuda), cuBLAS, cuRAND and NVRTC by name. `scripts/build-cuda.sh` links exo so
//! that it needs none of them to start (a machine without a GPU runs it on the CPU) and binds their functions
//! lazily; this module loads them, globally, before the first CUDA call, so that those functions resolve. The
//! driver comes with the NVIDIA driver; the libraries with a CUDA install or the `nvidia-*` Python packages, found
//! through `LD_LIBRARY_PATH`, the system's library paths, or `CUDA_HOME`/`CUDA_PATH`/`/usr/local/cuda`.

use std::path::PathBuf;
use std::sync::OnceLock;

use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};

/// The libraries, by the names CUDA 13 gives them (and their development names), in load order; whether each is
/// needed (NVRTC is used only to compile kernels at run time, which candle's CUDA backend does not do).
const LIBRARIES: [(&str, &[&str], bool); 5] = [
    ("the NVIDIA driver", &["libcuda.so.1", "libcuda.so"], true),
    ("cuBLASLt", &["libcublasLt.so.13", "libcublasLt.so"], true),
    ("cuBLAS", &["libcublas.so.13", "libcublas.so"], true),
    ("cuRAND", &["libcurand.so.10", "libcurand.so"], true),
    ("NVRTC", &["libnvrtc.so.13", "libnvrtc.so"], false),
];

static LOADED: OnceLock<Result<Vec<Library>, String>> = OnceLock::new();

/// Loads the CUDA libraries once; the error names the first one missing and where it was looked for.
pub(crate) fn load() -> Result<(), String> {
    match LOADED.get_or_init(load_all) {
        Ok(_) => Ok(()),
        Err(why) => Err(why.clone()),
    }
}

fn load_all() -> Result<Vec<Library>, String> {
    let dirs = fallback_dirs();
    let mut loaded = Vec::new();
    for (what, names, needed) in LIBRARIES {
        match open(names, &dirs) {
            Some(lib) => loaded.push(lib),
            None if needed => {
                let hint = if what == "the NVIDIA driver" {
                    "is an NVIDIA driver installed?".to_string()
                } else {
                    format!(
                        "put the folder holding {} on LD_LIBRARY_PATH: a CUDA 13 install's lib64, or the nvidia-* \
                         Python packages' nvidia/cu13/lib",
                        names[0]
                    )
                };
                return Err(format!("{what} ({}) is not on this machine: {hint}", names[0]));
            }
            None => tracing::debug!("{what} ({}) not found; not needed to run models", names[0]),
        }
    }
    Ok(loaded)
}

/// Each name through the loader's own search, then in the fallback folders.
fn open(names: &[&str], dirs: &[PathBuf]) -> Option<Library> {
    for name in names {
        // SAFETY: loading a shared library runs its initialisers; these are NVIDIA's CUDA libraries, loaded by
        // their well-known names, as any CUDA program loads them.
        if let Ok(lib) = unsafe { Library::open(Some(name), RTLD_NOW | RTLD_GLOBAL) } {
            return Some(lib);
        }
        for dir in dirs {
            let path = dir.join(name);
            if path.is_file() {
                // SAFETY: as above.
                if let Ok(lib) = unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_GLOBAL) } {
                    return Some(lib);
                }
            }
        }
    }
    None
}

fn fallback_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var) {
            dirs.push(PathBuf::from(&root).join("lib64"));
            dirs.push(PathBuf::from(root).join("lib"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    dirs.push(PathBuf::from("/usr/local/cuda/targets/x86_64-linux/lib"));
    dirs
}
