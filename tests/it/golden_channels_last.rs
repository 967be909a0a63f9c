//! The channels-last (cuDNN) path's layer plans, executed on the CPU
//! through the ops' reference implementations, against the same PyTorch
//! logits as the candle ports: every plan's weight folding (BatchNorm,
//! layer scale, query scaling, flatten order), KRSC filters, fused
//! residuals and pooling. What a GPU adds is the kernels alone, which
//! `scripts/gpu-check.sh` compares on the device.

use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::ClipTextTransformer;
use imagenet_hard::models::channels_last::net::ChannelsLastNet;
use imagenet_hard::models::channels_last::program::{self, Program};
use imagenet_hard::models::clip::ImageEncoder;
use imagenet_hard::models::convnext::{self, ConvNextConfig};
use imagenet_hard::models::efficientnet::{self, EfficientNetConfig};
use imagenet_hard::models::vgg::{AlexNet, AlexNetConfig, Vgg, VggConfig};
use imagenet_hard::models::vit::{self, TIMM, TORCHVISION};

use crate::golden_vit::SMALL;
use imagenet_hard::models::{Architecture, Extras, Net};

use crate::golden::logits_parity_of;

fn channels_last(
    plan: impl Fn() -> Program + Copy,
) -> impl Fn(VarBuilder<'static>) -> candle_core::Result<Net> + Copy {
    move |vb| Ok(Box::new(ChannelsLastNet::new(plan(), vb)?) as Net)
}

fn registered(name: &str) -> impl Fn(VarBuilder<'static>) -> candle_core::Result<Net> + Copy {
    let arch = Architecture::find(name).unwrap();
    move |vb| (arch.spec().build)(vb, &Extras::default())
}

#[test]
fn channels_last_resnets_match_pytorch() {
    logits_parity_of(
        "resnet/resnet18.json",
        registered("resnet18"),
        channels_last(|| program::resnet("resnet18", 224).unwrap()),
    );
    logits_parity_of(
        "resnet/resnet50.json",
        registered("resnet50"),
        channels_last(|| program::resnet("resnet50", 224).unwrap()),
    );
}

#[test]
fn channels_last_alexnet_and_vgg_match_pytorch() {
    // 160 and 288 px take the adaptive pools' uneven and repeated bins;
    // AlexNet's first linear layer reads its columns in channels-last order.
    let alex = AlexNetConfig::TORCHVISION.narrowed(8);
    for size in [160, 224, 288] {
        logits_parity_of(
            &format!("vgg/alexnet_w8_{size}.json"),
            move |vb| Ok(Box::new(AlexNet::new(alex, vb)?) as Net),
            channels_last(move || program::alexnet(alex, size).unwrap()),
        );
    }
    let vgg = VggConfig::VGG16.narrowed(8);
    for size in [160, 224] {
        logits_parity_of(
            &format!("vgg/vgg16_w8_{size}.json"),
            move |vb| Ok(Box::new(Vgg::new(vgg, vb)?) as Net),
            channels_last(move || program::vgg("vgg16", vgg, size).unwrap()),
        );
    }
}

#[test]
fn channels_last_efficientnets_match_timm() {
    let b0 = || EfficientNetConfig::efficientnet(0.25, 0.5);
    logits_parity_of(
        "effnet/efficientnet_w025_d05_s64.json",
        move |vb| Ok(Box::new(efficientnet::build(&b0(), vb)?) as Net),
        channels_last(move || program::efficientnet("efficientnet_b0", &b0(), 64).unwrap()),
    );
    // As the CPU runs EfficientNet-B0 (`CPU_SPLITS`): the batch of two in
    // parts of one image, each through the whole plan on its own thread.
    logits_parity_of(
        "effnet/efficientnet_w025_d05_s64.json",
        move |vb| Ok(Box::new(efficientnet::build(&b0(), vb)?) as Net),
        move |vb| {
            let plan = program::efficientnet("efficientnet_b0", &b0(), 64).unwrap();
            Ok(Box::new(ChannelsLastNet::new(plan, vb)?.split_batch(Some(1))) as Net)
        },
    );
    // "SAME" padding: asymmetric pads become pad steps at 57 px.
    let lite = || EfficientNetConfig::tf_efficientnet_lite(0.25, 0.5);
    logits_parity_of(
        "effnet/tf_efficientnet_lite_w025_d05_s57.json",
        move |vb| Ok(Box::new(efficientnet::build(&lite(), vb)?) as Net),
        channels_last(move || program::efficientnet("tf_efficientnet_lite0", &lite(), 57).unwrap()),
    );
}

#[test]
fn channels_last_convnext_matches_timm() {
    let cfg = ConvNextConfig {
        depths: [1, 1, 2, 1],
        dims: [40, 80, 160, 320],
    };
    logits_parity_of(
        "effnet/convnext_d1121_atto_dims_s64.json",
        move |vb| Ok(Box::new(convnext::build(&cfg, vb)?) as Net),
        channels_last(move || program::convnext("convnext_base", &cfg, 64).unwrap()),
    );
}

#[test]
fn channels_last_vits_match_pytorch() {
    logits_parity_of(
        "vit/torchvision_small.json",
        |vb| vit::build(SMALL, &TORCHVISION, vb),
        channels_last(|| program::vit("vit_b_32", SMALL, &TORCHVISION).unwrap()),
    );
    logits_parity_of(
        "vit/timm_small.json",
        |vb| vit::build(SMALL, &TIMM, vb),
        channels_last(|| program::vit("vit_base_patch32_224", SMALL, &TIMM).unwrap()),
    );
}

#[test]
fn channels_last_clip_image_tower_matches_transformers() {
    let path = crate::golden::golden("clip/tiny_image.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let c = &doc["config"];
    let cfg = imagenet_hard::models::clip::config_from_json(
        &c["text"],
        &c["vision"],
        &c["projection_dim"],
    )
    .unwrap();
    let (text, vision) = (cfg.text_config.clone(), cfg.vision_config.clone());
    let (text, vision) = (&*Box::leak(Box::new(text)), &*Box::leak(Box::new(vision)));
    // The text tower's tensors come first in the generator's stream.
    let weights = move |vb: VarBuilder<'static>| -> candle_core::Result<Net> {
        ClipTextTransformer::new(vb.pp("text_model"), text)?;
        candle_nn::linear_no_bias(
            text.embed_dim,
            text.projection_dim,
            vb.pp("text_projection"),
        )?;
        Ok(Box::new(ImageEncoder::new(vb, vision)?) as Net)
    };
    let tower = imagenet_hard::models::clip::tower(vision);
    logits_parity_of(
        path.to_str().unwrap(),
        weights,
        channels_last(move || program::clip_image_tower("clip_vit_large_patch14", tower).unwrap()),
    );
}
