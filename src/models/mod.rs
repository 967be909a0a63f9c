//! Classifiers in candle. Everything candle-specific stays in this folder:
//! callers hand in normalised CHW `f32` crops and get 1000 logits per crop.
//!
//! Adding a model = one file here + one [`Architecture`] variant + one
//! [`registry`] entry.

mod resnet;
pub mod synthetic;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Module, VarBuilder};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::manifest::HubFiles;
use crate::zoom::{Interpolation, IMAGENET_MEAN, IMAGENET_STD};

/// Network architectures the tool can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    Resnet18,
    Resnet50,
}

impl Architecture {
    pub const ALL: [Architecture; 2] = [Architecture::Resnet18, Architecture::Resnet50];

    pub fn name(self) -> &'static str {
        match self {
            Architecture::Resnet18 => "resnet18",
            Architecture::Resnet50 => "resnet50",
        }
    }

    /// Map a Hub `config.json` architecture name (timm `architecture`,
    /// transformers `architectures[0]`) to ours.
    pub fn from_config_name(name: &str) -> Option<Architecture> {
        match name.to_ascii_lowercase().as_str() {
            "resnet18" => Some(Architecture::Resnet18),
            "resnet50" => Some(Architecture::Resnet50),
            _ => None,
        }
    }
}

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
}

/// Where to run: `auto` takes CUDA device 0 when built with `cuda` and one is present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// A candle device, chosen once per process.
#[derive(Clone)]
pub struct Runtime {
    device: Device,
}

impl Runtime {
    pub fn new(choice: DeviceChoice) -> Result<Runtime, ModelError> {
        let device = match choice {
            DeviceChoice::Cpu => Device::Cpu,
            DeviceChoice::Cuda => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(ModelError::Device(
                        "--device cuda: this binary was built without the `cuda` feature; rebuild with `cargo build --release --features cuda`".into(),
                    ));
                }
                Device::new_cuda(0)
                    .map_err(|e| ModelError::Device(format!("cannot open CUDA device 0: {e}")))?
            }
            DeviceChoice::Auto => {
                if candle_core::utils::cuda_is_available() {
                    match Device::new_cuda(0) {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::warn!("no usable CUDA device ({e}); running on CPU");
                            Device::Cpu
                        }
                    }
                } else {
                    Device::Cpu
                }
            }
        };
        Ok(Runtime { device })
    }

    pub fn describe(&self) -> &'static str {
        if self.device.is_cuda() {
            "cuda:0"
        } else {
            "cpu"
        }
    }
}

/// A loaded classifier producing ImageNet-1k logits.
pub struct Classifier {
    arch: Architecture,
    net: Box<dyn Module + Send + Sync>,
    device: Device,
}

impl Classifier {
    /// Load safetensors weights with torchvision/timm tensor names.
    pub fn load(
        arch: Architecture,
        weights: &Path,
        rt: &Runtime,
    ) -> Result<Classifier, ModelError> {
        let err = |e: candle_core::Error| ModelError::Load {
            file: weights.into(),
            arch: arch.name(),
            message: e.to_string(),
        };
        // SAFETY: the file is mmapped read-only; the tool never writes weights it is reading.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &rt.device) }
            .map_err(err)?;
        let net: Box<dyn Module + Send + Sync> = match arch {
            Architecture::Resnet18 => Box::new(resnet::resnet18(vb).map_err(err)?),
            Architecture::Resnet50 => Box::new(resnet::resnet50(vb).map_err(err)?),
        };
        Ok(Classifier {
            arch,
            net,
            device: rt.device.clone(),
        })
    }

    pub fn architecture(&self) -> Architecture {
        self.arch
    }

    /// Logits for `n` crops stored back to back as normalised CHW planes of
    /// `size x size`. Returns `n * 1000` values, crop-major.
    pub fn logits(&self, input: &[f32], n: usize, size: usize) -> Result<Vec<f32>, ModelError> {
        let err = |e: candle_core::Error| ModelError::Forward {
            arch: self.arch.name(),
            message: e.to_string(),
        };
        let x = Tensor::from_slice(input, (n, 3, size, size), &self.device).map_err(err)?;
        let y = self.net.forward(&x).map_err(err)?;
        y.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(err)
    }
}

/// How a model's own evaluation view is made (torchvision/timm style).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalPreprocess {
    pub resize: u32,
    pub crop: u32,
    pub interpolation: Interpolation,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl EvalPreprocess {
    /// torchvision's ImageNet eval transform: Resize(256, bilinear), CenterCrop(224).
    pub const TORCHVISION: EvalPreprocess = EvalPreprocess {
        resize: 256,
        crop: 224,
        interpolation: Interpolation::Bilinear,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    };
}

/// A named, pinned model the tool knows how to fetch and build.
#[derive(Debug, Clone)]
pub struct RegistryEntry {
    pub name: &'static str,
    pub architecture: Architecture,
    pub hub: HubFiles,
    pub eval: EvalPreprocess,
}

fn pinned(repo: &str, revision: &str, file: &str, sha256: &str) -> HubFiles {
    HubFiles {
        repo: repo.into(),
        revision: revision.into(),
        files: vec![file.into()],
        sha256: [(file.to_string(), sha256.to_string())]
            .into_iter()
            .collect(),
    }
}

/// Models known by name (torchvision ImageNet-1k V1 weights, timm safetensors copies).
pub fn registry() -> Vec<RegistryEntry> {
    vec![
        RegistryEntry {
            name: "resnet18",
            architecture: Architecture::Resnet18,
            hub: pinned(
                "timm/resnet18.tv_in1k",
                "590dfdd48494d2316a8385e1ca7fbec3b9359b35",
                "model.safetensors",
                "694f673df6520a3158624e8a89af086f59923ee4cd7436fe5bc3bc71d295ad81",
            ),
            eval: EvalPreprocess::TORCHVISION,
        },
        RegistryEntry {
            name: "resnet50",
            architecture: Architecture::Resnet50,
            hub: pinned(
                "timm/resnet50.tv_in1k",
                "aa6c2d36d56bc0209040c02b5a7b7d7bf11d57b8",
                "model.safetensors",
                "5d061a3c593d795bfe682d9b152bafbcf550579873492def3515b46db1189888",
            ),
            eval: EvalPreprocess::TORCHVISION,
        },
    ]
}

pub fn lookup(name: &str) -> Option<RegistryEntry> {
    registry().into_iter().find(|e| e.name == name)
}
