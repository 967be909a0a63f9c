//! Classifiers in candle. Everything candle-specific stays in this folder:
//! callers hand in normalised CHW `f32` crops and get 1000 logits per crop.
//!
//! Adding a model = one file here + one [`Architecture`] variant + one
//! [`registry`] entry.

pub mod clip;
pub mod pth;
mod resnet;
pub mod synthetic;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Module, VarBuilder};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::manifest::HubFiles;
use crate::zoom::{Interpolation, IMAGENET_MEAN, IMAGENET_STD};

/// A network mapping normalised NCHW crops to 1000 ImageNet-1k logits.
pub type Net = Box<dyn Module + Send + Sync>;

/// Files beside the weights that some architectures need (e.g. a
/// tokenizer), keyed by their file name, and a folder for derived caches.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    pub files: BTreeMap<String, PathBuf>,
    pub cache_dir: Option<PathBuf>,
}

/// One buildable architecture: its name, the names Hub configs give it,
/// and how to build it from a checkpoint with its own tensor names.
pub struct ArchSpec {
    /// Name in manifests and on the command line, e.g. `resnet50`.
    pub name: &'static str,
    /// Names in a Hub `config.json` (timm `architecture`, transformers
    /// `architectures[0]`) that mean this architecture.
    pub config_names: &'static [&'static str],
    pub build: fn(VarBuilder<'static>, &Extras) -> candle_core::Result<Net>,
}

/// Every architecture the tool can build. Adding one = a file in this
/// folder and a line here.
pub static ARCHITECTURES: &[ArchSpec] = &[
    ArchSpec {
        name: "resnet18",
        config_names: &["resnet18"],
        build: resnet::resnet18,
    },
    ArchSpec {
        name: "resnet50",
        config_names: &["resnet50"],
        build: resnet::resnet50,
    },
    ArchSpec {
        name: "clip_vit_large_patch14",
        config_names: &["CLIPModel"],
        build: clip::clip_vit_large_patch14,
    },
];

/// A known architecture (serialised as its name).
#[derive(Clone, Copy)]
pub struct Architecture(&'static ArchSpec);

impl Architecture {
    pub fn name(self) -> &'static str {
        self.0.name
    }

    pub fn spec(self) -> &'static ArchSpec {
        self.0
    }

    pub fn all() -> impl Iterator<Item = Architecture> {
        ARCHITECTURES.iter().map(Architecture)
    }

    /// By our name or by a Hub config name (case-insensitive).
    pub fn find(name: &str) -> Option<Architecture> {
        let lower = name.to_ascii_lowercase();
        ARCHITECTURES
            .iter()
            .find(|a| {
                a.name == lower || a.config_names.iter().any(|c| c.eq_ignore_ascii_case(name))
            })
            .map(Architecture)
    }

    /// Names of all architectures, for error messages.
    pub fn known() -> String {
        ARCHITECTURES
            .iter()
            .map(|a| a.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl PartialEq for Architecture {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for Architecture {}

impl std::fmt::Debug for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name)
    }
}

impl Serialize for Architecture {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name)
    }
}

impl<'de> Deserialize<'de> for Architecture {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Architecture::find(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown architecture `{name}`; known: {}",
                Architecture::known()
            ))
        })
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
    /// Load weights (safetensors, or a PyTorch `.pth` checkpoint read
    /// without running pickle code) with the checkpoint's tensor names.
    pub fn load(
        arch: Architecture,
        weights: &Path,
        extras: &Extras,
        rt: &Runtime,
    ) -> Result<Classifier, ModelError> {
        let err = |e: candle_core::Error| ModelError::Load {
            file: weights.into(),
            arch: arch.name(),
            message: e.to_string(),
        };
        let vb = var_builder(weights, &rt.device).map_err(|e| match e {
            pth::PthError::Candle(e) => err(e),
            other => ModelError::Load {
                file: weights.into(),
                arch: arch.name(),
                message: other.to_string(),
            },
        })?;
        let net = (arch.spec().build)(vb, extras).map_err(err)?;
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

/// A `VarBuilder` over a weights file: safetensors (mmapped), or a PyTorch
/// zip checkpoint (`.pth`, `.pt`, `.bin`) after checking that its pickle
/// only rebuilds tensors.
pub fn var_builder(weights: &Path, device: &Device) -> Result<VarBuilder<'static>, pth::PthError> {
    let is_pickle = weights
        .extension()
        .is_some_and(|e| e == "pth" || e == "pt" || e == "bin");
    if is_pickle {
        pth::check_tensor_only(weights)?;
        return Ok(VarBuilder::from_pth(weights, DType::F32, device)?);
    }
    // SAFETY: the file is mmapped read-only; the tool never writes weights it is reading.
    Ok(unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device) }?)
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

/// [`pinned`] weights plus further files of the same commit (e.g. a tokenizer).
fn pinned_with(repo: &str, revision: &str, file: &str, sha256: &str, extra: &[&str]) -> HubFiles {
    let mut hub = pinned(repo, revision, file, sha256);
    hub.files.extend(extra.iter().map(|f| f.to_string()));
    hub
}

/// Models known by name (torchvision ImageNet-1k V1 weights, timm safetensors copies).
pub fn registry() -> Vec<RegistryEntry> {
    vec![
        RegistryEntry {
            name: "resnet18",
            architecture: Architecture::find("resnet18").expect("registered"),
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
            architecture: Architecture::find("resnet50").expect("registered"),
            hub: pinned(
                "timm/resnet50.tv_in1k",
                "aa6c2d36d56bc0209040c02b5a7b7d7bf11d57b8",
                "model.safetensors",
                "5d061a3c593d795bfe682d9b152bafbcf550579873492def3515b46db1189888",
            ),
            eval: EvalPreprocess::TORCHVISION,
        },
        RegistryEntry {
            name: "clip-vit-l-14",
            architecture: Architecture::find("clip_vit_large_patch14").expect("registered"),
            hub: pinned_with(
                "openai/clip-vit-large-patch14",
                "32bd64288804d66eefd0ccbe215aa642df71cc41",
                "model.safetensors",
                "a2bf730a0c7debf160f7a6b50b3aaf3703e7e88ac73de7a314903141db026dcb",
                &["tokenizer.json"],
            ),
            eval: clip::EVAL,
        },
    ]
}

pub fn lookup(name: &str) -> Option<RegistryEntry> {
    registry().into_iter().find(|e| e.name == name)
}
