//! Where models run and in what number format: the device choice
//! (`auto`, `cpu`, `cuda:N`), the precision (f32, bf16, f16) and the
//! [`Runtime`] that holds both, plus the models' error type.

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::channels_last::Kernels;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{file}: cannot load {arch} weights: {message}")]
    Load {
        file: PathBuf,
        arch: &'static str,
        message: String,
    },
    #[error("forward pass of {arch} failed: {message}")]
    Forward { arch: &'static str, message: String },
    #[error("{0}")]
    Device(String),
    #[error("{0}")]
    Unsupported(String),
}

/// Where to run: `auto` takes CUDA device 0 when built with `cuda` and one
/// is present; `cuda` is `cuda:0`; `cuda:N` the N-th GPU this process sees
/// (after `CUDA_VISIBLE_DEVICES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| {
                    format!("`{s}` is not a device: use auto, cpu, cuda or cuda:N (N = 0, 1, ...)")
                }),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Serialize for DeviceChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The number format a classifier computes in. `bf16` and `f16` halve the
/// memory traffic and run on the GPU's tensor cores; weights are read and
/// BatchNorm is folded in f32 first, then rounded. On the CPU they are
/// slower than `f32` (candle widens them for every product): meant for CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A candle device, chosen once per process, and the precision models
/// loaded for it compute in.
#[derive(Clone)]
pub struct Runtime {
    device: Device,
    /// `cpu` or `cuda:N`.
    name: String,
    precision: Precision,
    kernels: Kernels,
}

impl Runtime {
    pub fn new(choice: DeviceChoice) -> Result<Runtime, ModelError> {
        let cuda = |n: usize| {
            Device::new_cuda(n).map_err(|e| {
                ModelError::Device(format!(
                    "cannot open CUDA device {n}: {e} (devices are numbered from 0 among those CUDA_VISIBLE_DEVICES shows; `nvidia-smi -L` lists them)"
                ))
            })
        };
        let (device, name) = match choice {
            DeviceChoice::Cpu => (Device::Cpu, "cpu".to_string()),
            DeviceChoice::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(ModelError::Device(format!(
                        "--device {choice}: this binary was built without the `cuda` feature; rebuild with `cargo build --release --features cuda`"
                    )));
                }
                (cuda(n)?, format!("cuda:{n}"))
            }
            DeviceChoice::Auto => {
                if candle_core::utils::cuda_is_available() {
                    match cuda(0) {
                        Ok(d) => (d, "cuda:0".to_string()),
                        Err(e) => {
                            tracing::warn!("no usable CUDA device ({e}); running on CPU");
                            (Device::Cpu, "cpu".to_string())
                        }
                    }
                } else {
                    (Device::Cpu, "cpu".to_string())
                }
            }
        };
        Ok(Runtime {
            device,
            name,
            precision: Precision::F32,
            kernels: Kernels::Auto,
        })
    }

    /// The same device, models computing in `precision`. bf16 needs CUDA:
    /// candle's CPU convolutions have no bf16 kernel.
    pub fn with_precision(self, precision: Precision) -> Result<Runtime, ModelError> {
        if precision == Precision::Bf16 && !self.device.is_cuda() {
            return Err(ModelError::Device(
                "bf16 runs on CUDA only (candle's CPU convolutions have no bf16 kernel): \
                 use --device cuda, or f16 / f32 on the CPU"
                    .into(),
            ));
        }
        Ok(Runtime { precision, ..self })
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The same device, models running on `kernels` there.
    pub fn with_kernels(self, kernels: Kernels) -> Result<Runtime, ModelError> {
        Ok(Runtime { kernels, ..self })
    }

    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Whether `arch` runs on the channels-last path here.
    pub fn channels_last(&self, arch: &str) -> bool {
        self.kernels.channels_last_for(arch, self.device.is_cuda())
    }

    /// The candle device models are loaded on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `cpu` or `cuda:N`.
    pub fn describe(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print_back() {
        for (text, choice) in [
            ("auto", DeviceChoice::Auto),
            ("cpu", DeviceChoice::Cpu),
            ("cuda:0", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceChoice>(), Ok(choice));
            assert_eq!(choice.to_string(), text);
        }
        assert_eq!("cuda".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda(0)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU0"] {
            let e = bad.parse::<DeviceChoice>().unwrap_err();
            assert!(e.contains("cuda:N"), "{e}");
        }
    }

    #[test]
    fn the_kernel_switch_reaches_the_runtime() {
        let cpu = Runtime::new(DeviceChoice::Cpu).unwrap();
        assert_eq!(cpu.kernels(), Kernels::Auto);
        let fused = cpu.clone().with_kernels(Kernels::Fused).unwrap();
        assert!(fused.channels_last("resnet50"));
        assert!(!fused.channels_last("shapes_cnn"));
        let candle = cpu.with_kernels(Kernels::Candle).unwrap();
        assert!(!candle.channels_last("resnet50"));
    }

    /// Without the `cuda` feature the error says to rebuild; with it, a
    /// device this process cannot see is named with how to list them.
    #[test]
    fn a_gpu_needs_the_cuda_build_and_a_device() {
        let e = Runtime::new(DeviceChoice::Cuda(99))
            .err()
            .expect("no machine here has 100 GPUs")
            .to_string();
        if candle_core::utils::cuda_is_available() {
            assert!(
                e.contains("cannot open CUDA device 99") && e.contains("CUDA_VISIBLE_DEVICES"),
                "{e}"
            );
        } else {
            assert!(
                e.contains("--device cuda:99") && e.contains("--features cuda"),
                "{e}"
            );
        }
    }
}
