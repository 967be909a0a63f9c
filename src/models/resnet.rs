//! ResNet-18/50 with torchvision tensor names (`conv1`, `layer1.0.conv1`,
//! `downsample.0`, `fc`), as stored by torchvision and timm's `*.tv_in1k`.
//! candle-transformers' ResNet already reads these names; this file fixes
//! the head at the 1000 ImageNet classes.

use candle_nn::VarBuilder;
use candle_transformers::models::resnet;

use super::{Extras, Net};
use crate::labels::NUM_CLASSES;

pub fn resnet18(vb: VarBuilder<'static>, _: &Extras) -> candle_core::Result<Net> {
    Ok(Box::new(resnet::resnet18(NUM_CLASSES, vb)?))
}

pub fn resnet50(vb: VarBuilder<'static>, _: &Extras) -> candle_core::Result<Net> {
    Ok(Box::new(resnet::resnet50(NUM_CLASSES, vb)?))
}
