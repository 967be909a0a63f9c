//! EfficientNet and ConvNeXt against timm: logits of reduced configurations
//! (written by `scripts/golden_effnet.py`) and the tensor names and shapes
//! of the full-size registered architectures.

use candle_nn::VarBuilder;
use imagenet_hard::models::convnext::{self, ConvNextConfig};
use imagenet_hard::models::efficientnet::{self, EfficientNetConfig, EFFICIENTNET_STAGES};
use imagenet_hard::models::synthetic::tensor_shapes;
use imagenet_hard::models::{Architecture, Net};

use crate::golden::{golden, logits_parity};

fn efficientnet(cfg: EfficientNetConfig, vb: VarBuilder<'static>) -> candle_core::Result<Net> {
    Ok(Box::new(efficientnet::build(&cfg, vb)?))
}

#[test]
fn tf_efficientnet_lite_matches_timm_at_two_input_sizes() {
    // 64 and 57 px take different TensorFlow "SAME" pads at every stride-2 layer.
    for size in [64, 57] {
        logits_parity(
            &format!("effnet/tf_efficientnet_lite_w025_d05_s{size}.json"),
            |vb| efficientnet(EfficientNetConfig::tf_efficientnet_lite(0.25, 0.5), vb),
        );
    }
}

#[test]
fn efficientnet_matches_timm() {
    logits_parity("effnet/efficientnet_w025_d05_s64.json", |vb| {
        efficientnet(EfficientNetConfig::efficientnet(0.25, 0.5), vb)
    });
}

#[test]
fn shallow_efficientnet_matches_timm() {
    logits_parity("effnet/efficientnet_3stages_s32.json", |vb| {
        let cfg = EfficientNetConfig {
            stages: EFFICIENTNET_STAGES[..3].to_vec(),
            stem_size: 16,
            num_features: 64,
            ..EfficientNetConfig::efficientnet(1.0, 1.0)
        };
        efficientnet(cfg, vb)
    });
}

#[test]
fn convnext_matches_timm() {
    logits_parity("effnet/convnext_d1121_atto_dims_s64.json", |vb| {
        let cfg = ConvNextConfig {
            depths: [1, 1, 2, 1],
            dims: [40, 80, 160, 320],
        };
        Ok(Box::new(convnext::build(&cfg, vb)?))
    });
}

#[test]
fn full_size_architectures_read_timm_state_dicts() {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("effnet/state_dicts.json")).unwrap())
            .unwrap();
    for name in ["tf_efficientnet_lite0", "efficientnet_b0", "convnext_base"] {
        let expected: Vec<(String, Vec<usize>)> =
            serde_json::from_value(doc[name].clone()).unwrap();
        let ours = tensor_shapes(Architecture::find(name).unwrap()).unwrap();
        assert_eq!(
            ours, expected,
            "{name}: tensor names and shapes differ from timm"
        );
    }
}
