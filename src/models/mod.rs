//! Classifiers in candle. Everything candle-specific stays in this folder:
//! callers hand in normalised CHW `f32` crops and get 1000 logits per crop.
//!
//! Adding a model = one file here + one [`Architecture`] variant + one
//! [`registry`] entry.

pub mod adapt;
pub mod clip;
mod conv;
mod conv_grad;
pub mod convnext;
pub mod efficientnet;
mod nhwc;
pub mod pth;
mod resnet;
pub mod synthetic;
pub mod vgg;
pub mod vit;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Module, VarBuilder};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::manifest::{HubFiles, UrlFile};
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
    /// Files of the model repo besides the weights that `build` needs
    /// (handed over in [`Extras::files`]).
    pub extra_files: &'static [&'static str],
    pub build: fn(VarBuilder<'static>, &Extras) -> candle_core::Result<Net>,
}

/// Every architecture the tool can build. Adding one = a file in this
/// folder and a line here.
pub static ARCHITECTURES: &[ArchSpec] = &[
    ArchSpec {
        name: "resnet18",
        config_names: &["resnet18"],
        extra_files: &[],
        build: resnet::resnet18,
    },
    ArchSpec {
        name: "resnet50",
        config_names: &["resnet50"],
        extra_files: &[],
        build: resnet::resnet50,
    },
    ArchSpec {
        name: "alexnet",
        config_names: &["alexnet"],
        extra_files: &[],
        build: vgg::alexnet,
    },
    ArchSpec {
        name: "vgg16",
        config_names: &["vgg16"],
        extra_files: &[],
        build: vgg::vgg16,
    },
    ArchSpec {
        name: "vgg19",
        config_names: &["vgg19"],
        extra_files: &[],
        build: vgg::vgg19,
    },
    ArchSpec {
        name: "vit_b_32",
        config_names: &["vit_b_32"],
        extra_files: &[],
        build: vit::vit_b_32,
    },
    ArchSpec {
        name: "vit_base_patch32_224",
        config_names: &["vit_base_patch32_224"],
        extra_files: &[],
        build: vit::vit_base_patch32_224,
    },
    ArchSpec {
        name: "tf_efficientnet_lite0",
        config_names: &["tf_efficientnet_lite0"],
        extra_files: &[],
        build: efficientnet::tf_efficientnet_lite0,
    },
    ArchSpec {
        name: "efficientnet_b0",
        config_names: &["efficientnet_b0"],
        extra_files: &[],
        build: efficientnet::efficientnet_b0,
    },
    ArchSpec {
        name: "convnext_base",
        config_names: &["convnext_base"],
        extra_files: &[],
        build: convnext::convnext_base,
    },
    ArchSpec {
        name: "clip_vit_large_patch14",
        config_names: &["CLIPModel"],
        extra_files: &["tokenizer.json", "config.json"],
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

    /// The candle device models are loaded on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `cpu` or `cuda:N`.
    pub fn describe(&self) -> &str {
        &self.name
    }
}

/// A loaded classifier producing ImageNet-1k logits.
pub struct Classifier {
    arch: Architecture,
    net: Box<dyn Module + Send + Sync>,
    device: Device,
    device_name: String,
    precision: Precision,
}

impl Classifier {
    /// Load weights (safetensors, or a PyTorch `.pth` checkpoint read
    /// without running pickle code) with the checkpoint's tensor names, on
    /// the runtime's device and in its precision.
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
        let net = (arch.spec().build)(vb.set_dtype(rt.precision.dtype()), extras).map_err(err)?;
        Ok(Classifier {
            arch,
            net,
            device: rt.device.clone(),
            device_name: rt.name.clone(),
            precision: rt.precision,
        })
    }

    pub fn architecture(&self) -> Architecture {
        self.arch
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Where it runs: `cpu` or `cuda:N`.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// Logits for `n` crops stored back to back as normalised CHW planes of
    /// `size x size`. Returns `n * 1000` values, crop-major.
    pub fn logits(&self, input: &[f32], n: usize, size: usize) -> Result<Vec<f32>, ModelError> {
        let err = |e: candle_core::Error| ModelError::Forward {
            arch: self.arch.name(),
            message: e.to_string(),
        };
        let x = Tensor::from_slice(input, (n, 3, size, size), &self.device)
            .and_then(|x| x.to_dtype(self.precision.dtype()))
            .map_err(err)?;
        let y = self.net.forward(&x).map_err(err)?;
        y.flatten_all()
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(err)
    }

    fn forward_error(&self, e: candle_core::Error) -> ModelError {
        ModelError::Forward {
            arch: self.arch.name(),
            message: e.to_string(),
        }
    }

    /// The table that normalises 8-bit crops with `mean` / `std` on this
    /// model's device.
    pub fn normaliser(&self, mean: [f32; 3], std: [f32; 3]) -> Result<Normaliser, ModelError> {
        let lut = crate::zoom::normalise_lut(mean, std);
        Ok(Normaliser {
            lut: Tensor::from_vec(lut, 3 * 256, &self.device).map_err(|e| self.forward_error(e))?,
            offsets: Tensor::from_vec(vec![0u32, 256, 512], 3, &self.device)
                .map_err(|e| self.forward_error(e))?,
        })
    }

    /// Copy `n` crops of `size x size` RGB bytes (HWC, back to back) to this
    /// model's device, once for every model that runs on them.
    pub fn upload(&self, pixels: &[u8], n: usize, size: usize) -> Result<Tensor, ModelError> {
        Tensor::from_slice(pixels, (n, size, size, 3), &self.device)
            .map_err(|e| self.forward_error(e))
    }

    /// Queue the forward pass of uploaded crops (normalised on the device);
    /// on CUDA this returns before the GPU is done.
    pub fn start(&self, crops: &Tensor, norm: &Normaliser) -> Result<Started, ModelError> {
        let go = || -> candle_core::Result<Tensor> {
            let (n, h, w, c) = crops.dims4()?;
            let levels = crops.to_dtype(DType::U32)?.broadcast_add(&norm.offsets)?;
            let x = norm
                .lut
                .index_select(&levels.flatten_all()?, 0)?
                .reshape((n, h, w, c))?
                .permute((0, 3, 1, 2))?
                .to_dtype(self.precision.dtype())?
                .contiguous()?;
            self.net.forward(&x)
        };
        go().map(Started).map_err(|e| self.forward_error(e))
    }

    /// The logits of a started batch, `n * 1000` f32 values, crop-major.
    pub fn finish(&self, started: Started) -> Result<Vec<f32>, ModelError> {
        started
            .0
            .flatten_all()
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| self.forward_error(e))
    }
}

/// Normalisation of 8-bit crops where the model runs: each channel's 256
/// levels looked up in the table [`crate::zoom::normalise_lut`] makes, so
/// crops travel as bytes (a quarter of the f32 upload) and the values are
/// bit-identical to normalising on the host.
pub struct Normaliser {
    /// `[3 * 256]` f32.
    lut: Tensor,
    /// `[3]` u32: 0, 256, 512, added to each channel's level.
    offsets: Tensor,
}

/// Logits of a batch whose forward pass was started; on CUDA the work may
/// still be running until [`Classifier::finish`] reads them.
pub struct Started(Tensor);

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
    pub source: WeightSource,
    pub eval: EvalPreprocess,
}

/// Where a registered model's weights come from.
#[derive(Debug, Clone)]
pub enum WeightSource {
    Hub(HubFiles),
    /// A plain URL (torchvision's `.pth` files have no Hub copy).
    Url(UrlFile),
}

impl std::fmt::Display for WeightSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightSource::Hub(h) => {
                write!(f, "hf://{}@{} {}", h.repo, h.revision, h.files.join(" "))
            }
            WeightSource::Url(u) => write!(f, "{} (sha256 {})", u.url, u.sha256),
        }
    }
}

fn pinned(repo: &str, revision: &str, file: &str, sha256: &str) -> HubFiles {
    HubFiles {
        repo: repo.into(),
        revision: revision.into(),
        files: vec![file.into()],
        sha256: [(file.to_string(), sha256.to_string())]
            .into_iter()
            .collect(),
        gated: false,
    }
}

/// Files at a revision whose sha256 no archived Hub page showed: not checked.
fn unhashed(repo: &str, revision: &str, file: &str) -> HubFiles {
    HubFiles {
        repo: repo.into(),
        revision: revision.into(),
        files: vec![file.into()],
        sha256: Default::default(),
        gated: false,
    }
}

/// timm eval preprocessing at 224 with crop_pct 0.875 (resize 256), bicubic.
const fn timm_bicubic_224(mean: [f32; 3], std: [f32; 3]) -> EvalPreprocess {
    EvalPreprocess {
        resize: 256,
        crop: 224,
        interpolation: Interpolation::Bicubic,
        mean,
        std,
    }
}

/// [`pinned`] weights plus further files of the same commit (e.g. a tokenizer).
fn pinned_with(repo: &str, revision: &str, file: &str, sha256: &str, extra: &[&str]) -> HubFiles {
    let mut hub = pinned(repo, revision, file, sha256);
    hub.files.extend(extra.iter().map(|f| f.to_string()));
    hub
}

/// A registered architecture by name (registry entries only name existing ones;
/// `registry_is_consistent` checks it).
fn arch(name: &str) -> Architecture {
    Architecture::find(name)
        .unwrap_or_else(|| panic!("registry names unknown architecture `{name}`"))
}

/// Models known by name (torchvision ImageNet-1k V1 weights, timm safetensors copies).
pub fn registry() -> Vec<RegistryEntry> {
    vec![
        RegistryEntry {
            name: "resnet18",
            architecture: arch("resnet18"),
            source: WeightSource::Hub(pinned(
                "timm/resnet18.tv_in1k",
                "590dfdd48494d2316a8385e1ca7fbec3b9359b35",
                "model.safetensors",
                "694f673df6520a3158624e8a89af086f59923ee4cd7436fe5bc3bc71d295ad81",
            )),
            eval: EvalPreprocess::TORCHVISION,
        },
        RegistryEntry {
            name: "resnet50",
            architecture: arch("resnet50"),
            source: WeightSource::Hub(pinned(
                "timm/resnet50.tv_in1k",
                "aa6c2d36d56bc0209040c02b5a7b7d7bf11d57b8",
                "model.safetensors",
                "5d061a3c593d795bfe682d9b152bafbcf550579873492def3515b46db1189888",
            )),
            eval: EvalPreprocess::TORCHVISION,
        },
        RegistryEntry {
            name: "alexnet",
            architecture: arch("alexnet"),
            // torchvision's AlexNet_Weights.IMAGENET1K_V1; no Hub copy from its authors.
            source: WeightSource::Url(UrlFile {
                url: "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth".into(),
                sha256: "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02".into(),
            }),
            eval: EvalPreprocess::TORCHVISION,
        },
        RegistryEntry {
            name: "vit_b_32",
            architecture: arch("vit_b_32"),
            // torchvision's ViT_B_32_Weights.IMAGENET1K_V1, the zoom study's ViT. Only the
            // first 8 hex digits of its sha256 are published (in the file name).
            source: WeightSource::Url(UrlFile {
                url: "https://download.pytorch.org/models/vit_b_32-d86f8d99.pth".into(),
                sha256: "d86f8d99".into(),
            }),
            eval: EvalPreprocess::TORCHVISION,
        },
        RegistryEntry {
            name: "vgg16",
            architecture: arch("vgg16"),
            source: WeightSource::Hub(pinned(
                "timm/vgg16.tv_in1k",
                "3394518cba29aee1ea82a49d971be90d2dd1dab7",
                "model.safetensors",
                "57b026918159a6bf9faf8405c3a551903768e7138989d9c6224a14227203fad8",
            )),
            eval: EvalPreprocess::TORCHVISION,
        },
        RegistryEntry {
            name: "vgg19",
            architecture: arch("vgg19"),
            source: WeightSource::Hub(pinned(
                "timm/vgg19.tv_in1k",
                "128d4708565b3a414bcbb9bbad440b2fe37b9f18",
                "model.safetensors",
                "11aea017b543ff59233749d8f1cf544cda749378f5790d2fedab841fb86b7669",
            )),
            eval: EvalPreprocess::TORCHVISION,
        },
        RegistryEntry {
            name: "vit_base_patch32_224.augreg_in21k_ft_in1k",
            architecture: arch("vit_base_patch32_224"),
            // Only a short commit (08ccebf) is known: follow `main`, the lock pins it on fetch.
            source: WeightSource::Hub(HubFiles {
                repo: "timm/vit_base_patch32_224.augreg_in21k_ft_in1k".into(),
                revision: "main".into(),
                files: vec!["model.safetensors".into()],
                sha256: BTreeMap::new(),
                gated: false,
            }),
            // timm pretrained_cfg: bicubic, crop_pct 0.9 (resize floor(224 / 0.9) = 248), mean = std = 0.5.
            eval: EvalPreprocess {
                resize: 248,
                crop: 224,
                interpolation: Interpolation::Bicubic,
                mean: [0.5; 3],
                std: [0.5; 3],
            },
        },
        RegistryEntry {
            name: "tf_efficientnet_lite0.in1k",
            architecture: arch("tf_efficientnet_lite0"),
            source: WeightSource::Hub(unhashed(
                "timm/tf_efficientnet_lite0.in1k",
                "38825935cd55b7f62331fbc6fdbe14a0bca3dcfd",
                "model.safetensors",
            )),
            eval: timm_bicubic_224([0.5; 3], [0.5; 3]),
        },
        RegistryEntry {
            name: "efficientnet_b0.ra_in1k",
            architecture: arch("efficientnet_b0"),
            // Only the short sha `d18a84b` of main is known.
            source: WeightSource::Hub(unhashed(
                "timm/efficientnet_b0.ra_in1k",
                "main",
                "model.safetensors",
            )),
            eval: timm_bicubic_224(IMAGENET_MEAN, IMAGENET_STD),
        },
        RegistryEntry {
            name: "convnext_base.fb_in1k",
            architecture: arch("convnext_base"),
            source: WeightSource::Hub(unhashed(
                "timm/convnext_base.fb_in1k",
                "9868d443015978c683675b2f78030a9c943033f8",
                "model.safetensors",
            )),
            eval: timm_bicubic_224(IMAGENET_MEAN, IMAGENET_STD),
        },
        RegistryEntry {
            name: "clip-vit-l-14",
            architecture: arch("clip_vit_large_patch14"),
            source: WeightSource::Hub(pinned_with(
                "openai/clip-vit-large-patch14",
                "32bd64288804d66eefd0ccbe215aa642df71cc41",
                "model.safetensors",
                "a2bf730a0c7debf160f7a6b50b3aaf3703e7e88ac73de7a314903141db026dcb",
                &["tokenizer.json", "config.json"],
            )),
            eval: clip::EVAL,
        },
    ]
}

pub fn lookup(name: &str) -> Option<RegistryEntry> {
    registry().into_iter().find(|e| e.name == name)
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
    fn a_gpu_needs_the_cuda_build() {
        if candle_core::utils::cuda_is_available() {
            return;
        }
        let e = Runtime::new(DeviceChoice::Cuda(1))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("--device cuda:1") && e.contains("--features cuda"),
            "{e}"
        );
    }

    #[test]
    fn registry_is_consistent() {
        let entries = registry();
        let mut names: Vec<&str> = entries.iter().map(|e| e.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), entries.len(), "registry names are unique");
        let mut archs: Vec<&str> = ARCHITECTURES.iter().map(|a| a.name).collect();
        archs.sort();
        archs.dedup();
        assert_eq!(
            archs.len(),
            ARCHITECTURES.len(),
            "architecture names are unique"
        );
        for a in ARCHITECTURES {
            assert_eq!(Architecture::find(a.name).map(|f| f.name()), Some(a.name));
        }
    }
}
