//! The vocabulary the architectures share: a network ([`Net`]), the files
//! some need beside their weights ([`Extras`]), and how a model's own
//! evaluation view is made ([`EvalPreprocess`]).

use candle_nn::Module;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

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
