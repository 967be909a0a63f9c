//! The architecture table: every network the tool can build, by name and by
//! the names Hub configs give it, and how each is built from a checkpoint.
//! Adding an architecture = a file in this folder and a line in
//! [`ARCHITECTURES`].

use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::{clip, convnext, efficientnet, resnet, shapes, vgg, vit, Extras, Net};

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
    /// Multiply-adds of one 224 px forward pass, in billions (the published
    /// counts): the cost a curate order weighs pairs by when no measured
    /// rate is at hand.
    pub gmacs: f64,
}

/// Every architecture the tool can build. Adding one = a file in this
/// folder and a line here.
pub static ARCHITECTURES: &[ArchSpec] = &[
    ArchSpec {
        name: "resnet18",
        config_names: &["resnet18"],
        extra_files: &[],
        build: resnet::resnet18,
        gmacs: 1.82,
    },
    ArchSpec {
        name: "resnet50",
        config_names: &["resnet50"],
        extra_files: &[],
        build: resnet::resnet50,
        gmacs: 4.09,
    },
    ArchSpec {
        name: "alexnet",
        config_names: &["alexnet"],
        extra_files: &[],
        build: vgg::alexnet,
        gmacs: 0.71,
    },
    ArchSpec {
        name: "vgg16",
        config_names: &["vgg16"],
        extra_files: &[],
        build: vgg::vgg16,
        gmacs: 15.47,
    },
    ArchSpec {
        name: "vgg19",
        config_names: &["vgg19"],
        extra_files: &[],
        build: vgg::vgg19,
        gmacs: 19.63,
    },
    ArchSpec {
        name: "vit_b_32",
        config_names: &["vit_b_32"],
        extra_files: &[],
        build: vit::vit_b_32,
        gmacs: 4.41,
    },
    ArchSpec {
        name: "vit_base_patch32_224",
        config_names: &["vit_base_patch32_224"],
        extra_files: &[],
        build: vit::vit_base_patch32_224,
        gmacs: 4.41,
    },
    ArchSpec {
        name: "tf_efficientnet_lite0",
        config_names: &["tf_efficientnet_lite0"],
        extra_files: &[],
        build: efficientnet::tf_efficientnet_lite0,
        gmacs: 0.39,
    },
    ArchSpec {
        name: "efficientnet_b0",
        config_names: &["efficientnet_b0"],
        extra_files: &[],
        build: efficientnet::efficientnet_b0,
        gmacs: 0.39,
    },
    ArchSpec {
        name: "convnext_base",
        config_names: &["convnext_base"],
        extra_files: &[],
        build: convnext::convnext_base,
        gmacs: 15.36,
    },
    ArchSpec {
        name: "clip_vit_large_patch14",
        config_names: &["CLIPModel"],
        extra_files: &["tokenizer.json", "config.json"],
        build: clip::clip_vit_large_patch14,
        gmacs: 80.7,
    },
    ArchSpec {
        name: "shapes_cnn",
        config_names: &["shapes_cnn"],
        extra_files: &[],
        build: shapes::shapes_cnn,
        gmacs: 0.046,
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
