//! ResNet-18/50 with torchvision tensor names (`conv1`, `layer1.0.conv1`,
//! `downsample.0`, `fc`), as stored by torchvision and timm's `*.tv_in1k`.
//! candle-transformers' ResNet already reads these names; this file fixes
//! the head at the 1000 ImageNet classes.

use candle_nn::{Func, VarBuilder};
use candle_transformers::models::resnet;

use crate::labels::NUM_CLASSES;

pub fn resnet18(vb: VarBuilder<'static>) -> candle_core::Result<Func<'static>> {
    resnet::resnet18(NUM_CLASSES, vb)
}

pub fn resnet50(vb: VarBuilder<'static>) -> candle_core::Result<Func<'static>> {
    resnet::resnet50(NUM_CLASSES, vb)
}
