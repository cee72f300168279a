//! The devices a shard can run on: which a `--devices` list names (`auto`, `cpu`, `cuda:0,cuda:1`, `metal`), which
//! this machine has (name, memory, compute capability), and the candle device to load onto.
//!
//! GPUs exist only in builds with the `cuda` or `metal` feature; a build without one answers a request for a GPU
//! with an error that says how to get one, and `auto` is then the CPU.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::error::{EngineError, Result};

/// What `--devices` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DeviceSelection {
    /// Every GPU found, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// These CUDA devices, by ordinal, in the order given.
    Cuda(Vec<usize>),
    Metal,
}

impl FromStr for DeviceSelection {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let expected = "expected auto, cpu, metal or a list such as cuda:0,cuda:1";
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => return Ok(Self::Auto),
            "cpu" => return Ok(Self::Cpu),
            "metal" => return Ok(Self::Metal),
            "" => return Err(format!("no device named ({expected})")),
            _ => {}
        }
        let mut ordinals = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let n = part
                .to_ascii_lowercase()
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| format!("unknown device '{part}' ({expected})"))?;
            if ordinals.contains(&n) {
                return Err(format!("cuda:{n} is named twice"));
            }
            ordinals.push(n);
        }
        Ok(Self::Cuda(ordinals))
    }
}

impl fmt::Display for DeviceSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Metal => write!(f, "metal"),
            Self::Cuda(ns) => {
                let names: Vec<String> = ns.iter().map(|n| format!("cuda:{n}")).collect();
                write!(f, "{}", names.join(","))
            }
        }
    }
}

/// One device of this machine.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    /// `cpu`, `cuda:0`, `metal`.
    pub name: String,
    /// What it is (`NVIDIA GeForce RTX 3090`); empty for the CPU.
    pub description: String,
    /// Device memory in bytes (0 for the CPU: the node's memory figures cover it).
    pub memory_total: u64,
    pub memory_free: u64,
    /// CUDA compute capability (`8.6`), if a CUDA device.
    pub compute_capability: Option<String>,
    /// Weight bytes per second a Q8_0 matrix-vector product streams on it ([`crate::calibration`]; 0: not
    /// measured).
    pub matvec_bytes_per_s: u64,
}

impl DeviceInfo {
    pub fn cpu() -> Self {
        Self {
            name: "cpu".into(),
            description: String::new(),
            memory_total: 0,
            memory_free: 0,
            compute_capability: None,
            matvec_bytes_per_s: 0,
        }
    }

    pub fn is_cpu(&self) -> bool {
        self.name == "cpu"
    }
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_cpu() {
            return write!(f, "cpu");
        }
        write!(f, "{} ({}, {} GiB", self.name, self.description, gib(self.memory_total))?;
        if let Some(cc) = &self.compute_capability {
            write!(f, ", compute {cc}")?;
        }
        write!(f, ")")
    }
}

fn gib(bytes: u64) -> String {
    let g = bytes as f64 / (1u64 << 30) as f64;
    if g >= 10.0 {
        format!("{g:.0}")
    } else {
        format!("{g:.1}")
    }
}

/// A device found, with the candle device that runs on it.
#[derive(Debug, Clone)]
pub struct FoundDevice {
    pub info: DeviceInfo,
    pub device: Device,
}

impl FoundDevice {
    /// The CPU, as the device a shard computes on.
    pub fn cpu() -> Self {
        Self { info: DeviceInfo::cpu(), device: Device::Cpu }
    }
}

/// A GPU's free memory now, if `device` is one that says.
pub fn free_memory(device: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        return d.cuda_stream().context().mem_get_info().ok().map(|(free, _)| free as u64);
    }
    let _ = device;
    None
}

/// The devices `selection` names on this machine, in order; an error says what is missing and what there is.
pub fn find(selection: &DeviceSelection) -> Result<Vec<FoundDevice>> {
    match selection {
        DeviceSelection::Cpu => Ok(vec![FoundDevice::cpu()]),
        DeviceSelection::Auto => {
            let gpus = match gpus() {
                Ok(found) => found,
                Err(why) => {
                    tracing::info!("{why}; computing on the CPU");
                    Vec::new()
                }
            };
            if gpus.is_empty() {
                return Ok(vec![FoundDevice::cpu()]);
            }
            (0..gpus.len()).map(|i| open(&gpus, i)).collect()
        }
        DeviceSelection::Cuda(ordinals) => {
            let gpus = cuda_devices().map_err(EngineError::Device)?;
            ordinals
                .iter()
                .map(|&n| {
                    if n >= gpus.len() {
                        let have: Vec<String> = gpus.iter().map(|g| g.to_string()).collect();
                        return Err(EngineError::Device(format!(
                            "no device cuda:{n}: this machine has {} CUDA device{}: {}",
                            gpus.len(),
                            if gpus.len() == 1 { "" } else { "s" },
                            have.join(", ")
                        )));
                    }
                    open(&gpus, n)
                })
                .collect()
        }
        DeviceSelection::Metal => metal(),
    }
}

/// The GPUs `auto` uses: CUDA devices, or Metal's.
fn gpus() -> std::result::Result<Vec<DeviceInfo>, String> {
    if cfg!(feature = "metal") {
        return Ok(vec![DeviceInfo {
            name: "metal".into(),
            description: "Apple GPU".into(),
            memory_total: 0,
            memory_free: 0,
            compute_capability: None,
            matvec_bytes_per_s: 0,
        }]);
    }
    cuda_devices()
}

fn open(found: &[DeviceInfo], i: usize) -> Result<FoundDevice> {
    let info = found[i].clone();
    let device = if info.name == "metal" {
        Device::new_metal(0)?
    } else {
        Device::new_cuda(i).map_err(|e| EngineError::Device(format!("cannot open {}: {e}", info.name)))?
    };
    Ok(FoundDevice { info, device })
}

#[cfg(feature = "metal")]
fn metal() -> Result<Vec<FoundDevice>> {
    let gpus = gpus().map_err(EngineError::Device)?;
    Ok(vec![open(&gpus, 0)?])
}

#[cfg(not(feature = "metal"))]
fn metal() -> Result<Vec<FoundDevice>> {
    Err(EngineError::Device("this exo was built without Metal (build it on macOS with --features metal)".into()))
}

/// This machine's CUDA devices; an error says why there are none.
#[cfg(feature = "cuda")]
pub fn cuda_devices() -> std::result::Result<Vec<DeviceInfo>, String> {
    use candle_core::cuda::cudarc::driver::CudaContext;

    crate::cuda_libs::load().map_err(|why| format!("no CUDA device found ({why})"))?;
    let count = CudaContext::device_count().map_err(|e| format!("no CUDA device found (the driver says {e})"))?;
    if count <= 0 {
        return Err("no CUDA device found (the driver lists none)".into());
    }
    (0..count as usize)
        .map(|i| {
            let describe = || -> std::result::Result<DeviceInfo, candle_core::cuda::cudarc::driver::DriverError> {
                let ctx = CudaContext::new(i)?;
                let (free, total) = ctx.mem_get_info()?;
                let (major, minor) = ctx.compute_capability()?;
                Ok(DeviceInfo {
                    name: format!("cuda:{i}"),
                    description: ctx.name()?,
                    memory_total: total as u64,
                    memory_free: free as u64,
                    compute_capability: Some(format!("{major}.{minor}")),
                    matvec_bytes_per_s: 0,
                })
            };
            describe().map_err(|e| format!("cuda:{i} does not answer: {e}"))
        })
        .collect()
}

#[cfg(not(feature = "cuda"))]
pub fn cuda_devices() -> std::result::Result<Vec<DeviceInfo>, String> {
    Err("no CUDA device found (this exo was built without CUDA: build it with scripts/build-cuda.sh)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!("auto".parse(), Ok(DeviceSelection::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceSelection::Cpu));
        assert_eq!("metal".parse(), Ok(DeviceSelection::Metal));
        assert_eq!("cuda:0, cuda:1".parse(), Ok(DeviceSelection::Cuda(vec![0, 1])));
        assert_eq!("cuda:1,cuda:0".parse::<DeviceSelection>().unwrap().to_string(), "cuda:1,cuda:0");
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:0,cpu", ""] {
            let e = bad.parse::<DeviceSelection>().unwrap_err();
            assert!(e.contains("expected auto, cpu"), "{bad}: {e}");
        }
        assert_eq!("cuda:0,cuda:0".parse::<DeviceSelection>().unwrap_err(), "cuda:0 is named twice");
    }

    #[test]
    fn auto_and_cpu_find_the_cpu_where_there_is_no_gpu() {
        if cuda_devices().is_ok() {
            return; // a machine with a GPU: auto finds it instead
        }
        for selection in [DeviceSelection::Auto, DeviceSelection::Cpu] {
            let found = find(&selection).unwrap();
            assert_eq!(found.len(), 1);
            assert!(found[0].info.is_cpu() && found[0].device.is_cpu());
        }
    }

    #[test]
    fn a_cuda_device_that_is_not_there_is_a_clear_error() {
        let e = find(&DeviceSelection::Cuda(vec![7])).unwrap_err().to_string();
        match cuda_devices() {
            Ok(gpus) if gpus.len() > 7 => {}
            Ok(_) => assert!(e.contains("no device cuda:7: this machine has"), "{e}"),
            Err(_) => assert!(e.starts_with("no CUDA device found ("), "{e}"),
        }
    }
}
