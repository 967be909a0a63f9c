//! ViT parity with PyTorch under both tensor namings: torchvision's
//! `VisionTransformer` (`vit_b_32`) and timm's (`vit_base_patch32_224`).
//! References come from `scripts/golden_vit.py`, which also records the
//! PyTorch state dict's names and shapes, so a naming slip fails here.

use crate::golden::{golden, logits_parity};
use imagenet_hard::models::synthetic::{tensor_shapes, tensor_shapes_with};
use imagenet_hard::models::vit::{build, Config, Naming, TIMM, TORCHVISION};
use imagenet_hard::models::Architecture;

/// The reduced shape of the CI references (`SMALL` in the script).
pub const SMALL: Config = Config {
    dim: 64,
    depth: 2,
    heads: 4,
    mlp_dim: 256,
    patch: 32,
    image_size: 224,
};

/// Names and shapes of the PyTorch state dict, sorted, as the script recorded them.
fn torch_tensors(doc: &str) -> Vec<(String, Vec<usize>)> {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden(doc)).unwrap()).unwrap();
    serde_json::from_value(reference["tensors"].clone()).unwrap()
}

fn check(doc: &str, config: Config, naming: &'static Naming) {
    let net = move |vb| build(config, naming, vb);
    assert_eq!(
        tensor_shapes_with(net).unwrap(),
        torch_tensors(doc),
        "{doc}: tensor names/shapes differ from the PyTorch state dict"
    );
    logits_parity(doc, net);
}

#[test]
fn vit_torchvision_names_match_pytorch() {
    check("vit/torchvision_small.json", SMALL, &TORCHVISION);
}

#[test]
fn vit_timm_names_match_pytorch() {
    check("vit/timm_small.json", SMALL, &TIMM);
}

/// The registered architectures read exactly the full-size checkpoints'
/// tensors (cheap: no forward pass, no weights written).
#[test]
fn vit_registered_architectures_have_the_checkpoint_names() {
    for (name, doc) in [
        ("vit_b_32", "vit/torchvision_b32.json"),
        ("vit_base_patch32_224", "vit/timm_b32.json"),
    ] {
        assert_eq!(
            tensor_shapes(Architecture::find(name).unwrap()).unwrap(),
            torch_tensors(doc),
            "{name}: tensor names/shapes differ from the PyTorch state dict"
        );
    }
}

#[test]
fn vit_b_32_full_size_matches_torchvision() {
    check("vit/torchvision_b32.json", Config::B_32, &TORCHVISION);
}

#[test]
fn vit_base_patch32_224_full_size_matches_timm() {
    check("vit/timm_b32.json", Config::B_32, &TIMM);
}
