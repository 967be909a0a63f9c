//! Models known by name: pinned weight sources (a Hub commit and sha256, or
//! a URL and sha256) and each model's own evaluation view.

use std::collections::BTreeMap;

use super::{clip, Architecture, EvalPreprocess};
use crate::hub::{HubFiles, UrlFile};
use crate::zoom::{Interpolation, IMAGENET_MEAN, IMAGENET_STD};

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
    use crate::models::arch::ARCHITECTURES;

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
