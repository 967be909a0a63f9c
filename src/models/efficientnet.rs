//! timm's EfficientNet family (`timm.models.efficientnet.EfficientNet`) with
//! timm tensor names: `conv_stem`, `bn1`, `blocks.{stage}.{block}.*`
//! (depthwise-separable `conv_dw, bn1, se, conv_pw, bn2`; inverted residual
//! `conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3`), `conv_head`, `bn2`,
//! `classifier`. One implementation, driven by [`EfficientNetConfig`]: block
//! arguments, width/depth multipliers (timm's rounding), activation, padding
//! (PyTorch symmetric or TensorFlow "SAME"), squeeze-excite and BN epsilon.
//! Runs channels-last after the stem (see `super::kernels::nhwc`).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, Linear, VarBuilder};

use super::kernels::nhwc::{pointwise, DepthwiseConv, Pads};
use super::{Extras, Net};
use crate::labels::NUM_CLASSES;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockType {
    /// timm `ds`: depthwise conv, SE, pointwise projection.
    DepthwiseSeparable,
    /// timm `ir` (MBConv): pointwise expansion, depthwise conv, SE, projection.
    InvertedResidual,
}

/// One stage of timm's `arch_def`, e.g. `ir_r2_k5_s2_e6_c40`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageArgs {
    pub block: BlockType,
    pub repeats: usize,
    pub kernel: usize,
    pub stride: usize,
    pub expand: f64,
    pub out_chs: usize,
}

const fn stage(
    block: BlockType,
    repeats: usize,
    kernel: usize,
    stride: usize,
    expand: f64,
    out_chs: usize,
) -> StageArgs {
    StageArgs {
        block,
        repeats,
        kernel,
        stride,
        expand,
        out_chs,
    }
}

/// EfficientNet-B0's stages, shared by B0..B8 and Lite0..4 (which scale them).
pub const EFFICIENTNET_STAGES: [StageArgs; 7] = {
    use BlockType::{DepthwiseSeparable as Ds, InvertedResidual as Ir};
    [
        stage(Ds, 1, 3, 1, 1.0, 16),
        stage(Ir, 2, 3, 2, 6.0, 24),
        stage(Ir, 2, 5, 2, 6.0, 40),
        stage(Ir, 3, 3, 2, 6.0, 80),
        stage(Ir, 3, 5, 1, 6.0, 112),
        stage(Ir, 4, 5, 2, 6.0, 192),
        stage(Ir, 1, 3, 1, 6.0, 320),
    ]
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu6,
    /// SiLU (timm's `swish`).
    Silu,
}

impl Activation {
    fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Relu6 => x.clamp(0f32, 6f32),
            Activation::Silu => x.silu(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// PyTorch: `((stride - 1) + (k - 1)) / 2` on every side.
    Symmetric,
    /// TensorFlow "SAME" (timm `pad_type='same'`): total padding from the
    /// input size, the odd pixel at the bottom/right.
    TfSame,
}

impl Padding {
    fn one_dim(self, size: usize, k: usize, s: usize) -> (usize, usize) {
        match self {
            Padding::Symmetric => {
                let p = (s - 1 + k - 1) / 2;
                (p, p)
            }
            Padding::TfSame => {
                let total = ((size.div_ceil(s) - 1) * s + k).saturating_sub(size);
                (total / 2, total - total / 2)
            }
        }
    }

    pub(crate) fn pads(self, h: usize, w: usize, k: usize, s: usize) -> Pads {
        let (top, bottom) = self.one_dim(h, k, s);
        let (left, right) = self.one_dim(w, k, s);
        [top, bottom, left, right]
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EfficientNetConfig {
    /// Stages before width/depth scaling.
    pub stages: Vec<StageArgs>,
    pub channel_multiplier: f64,
    pub depth_multiplier: f64,
    /// Lite: the first and last stages keep their depth.
    pub fix_first_last: bool,
    pub stem_size: usize,
    /// Lite: the stem keeps its width.
    pub fix_stem: bool,
    /// Channels of `conv_head` (already scaled where the variant scales it).
    pub num_features: usize,
    pub activation: Activation,
    pub padding: Padding,
    /// Squeeze-excite reduction relative to the block input; `None`: no SE.
    pub se_ratio: Option<f64>,
    pub bn_eps: f64,
}

impl EfficientNetConfig {
    /// timm `_gen_efficientnet` (efficientnet_b0 = multipliers 1.0, 1.0).
    pub fn efficientnet(channel_multiplier: f64, depth_multiplier: f64) -> Self {
        EfficientNetConfig {
            stages: EFFICIENTNET_STAGES.to_vec(),
            channel_multiplier,
            depth_multiplier,
            fix_first_last: false,
            stem_size: 32,
            fix_stem: false,
            num_features: round_channels(1280, channel_multiplier),
            activation: Activation::Silu,
            padding: Padding::Symmetric,
            se_ratio: Some(0.25),
            bn_eps: 1e-5,
        }
    }

    /// timm `_gen_efficientnet_lite` as the `tf_` ports of the TensorFlow
    /// weights build it (tf_efficientnet_lite0 = multipliers 1.0, 1.0).
    pub fn tf_efficientnet_lite(channel_multiplier: f64, depth_multiplier: f64) -> Self {
        EfficientNetConfig {
            stages: EFFICIENTNET_STAGES.to_vec(),
            channel_multiplier,
            depth_multiplier,
            fix_first_last: true,
            stem_size: 32,
            fix_stem: true,
            num_features: 1280,
            activation: Activation::Relu6,
            padding: Padding::TfSame,
            se_ratio: None,
            bn_eps: 1e-3,
        }
    }
}

/// timm `make_divisible(v, 8)`: nearest multiple of 8, at least 8, and
/// never more than 10% below `v`.
pub(crate) fn make_divisible(v: f64) -> usize {
    const DIVISOR: usize = 8;
    let mut new_v = DIVISOR.max((v + DIVISOR as f64 / 2.0) as usize / DIVISOR * DIVISOR);
    if (new_v as f64) < 0.9 * v {
        new_v += DIVISOR;
    }
    new_v
}

/// timm `round_channels`.
pub(crate) fn round_channels(channels: usize, multiplier: f64) -> usize {
    if multiplier == 0.0 {
        channels
    } else {
        make_divisible(channels as f64 * multiplier)
    }
}

/// BatchNorm in eval mode over the last dimension, folded to `x * scale + shift`.
struct BatchNorm {
    scale: Tensor,
    shift: Tensor,
}

impl BatchNorm {
    fn new(c: usize, eps: f64, vb: VarBuilder) -> Result<BatchNorm> {
        // Folded in f32 whatever the model computes in, then rounded once.
        let dtype = vb.dtype();
        let vb = vb.set_dtype(DType::F32);
        let weight = vb.get(c, "weight")?;
        let bias = vb.get(c, "bias")?;
        let mean = vb.get(c, "running_mean")?;
        let var = vb.get(c, "running_var")?;
        let scale = weight.div(&(var + eps)?.sqrt()?)?;
        let shift = bias.sub(&mean.mul(&scale)?)?;
        Ok(BatchNorm {
            scale: scale.to_dtype(dtype)?,
            shift: shift.to_dtype(dtype)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&self.scale)?.broadcast_add(&self.shift)
    }
}

struct SqueezeExcite {
    conv_reduce: Linear,
    conv_expand: Linear,
}

impl SqueezeExcite {
    fn forward(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let s = x.mean_keepdim((1, 2))?.apply(&self.conv_reduce)?;
        let gate = candle_nn::ops::sigmoid(&act.apply(&s)?.apply(&self.conv_expand)?)?;
        x.broadcast_mul(&gate)
    }
}

/// A `ds` or `ir` block; tensor names depend on the type.
struct Block {
    /// `ir` only: `conv_pw` + `bn1`.
    expand: Option<(Linear, BatchNorm)>,
    conv_dw: DepthwiseConv,
    /// `bn1` (`ds`) or `bn2` (`ir`).
    bn_dw: BatchNorm,
    se: Option<SqueezeExcite>,
    /// `conv_pw` + `bn2` (`ds`) or `conv_pwl` + `bn3` (`ir`); no activation.
    project: (Linear, BatchNorm),
    has_skip: bool,
}

impl Block {
    fn new(
        cfg: &EfficientNetConfig,
        args: &StageArgs,
        in_chs: usize,
        out_chs: usize,
        stride: usize,
        vb: VarBuilder,
    ) -> Result<Block> {
        let eps = cfg.bn_eps;
        let (mid_chs, names) = match args.block {
            BlockType::DepthwiseSeparable => (in_chs, ["bn1", "conv_pw", "bn2"]),
            BlockType::InvertedResidual => (
                make_divisible(in_chs as f64 * args.expand),
                ["bn2", "conv_pwl", "bn3"],
            ),
        };
        let expand = match args.block {
            BlockType::DepthwiseSeparable => None,
            BlockType::InvertedResidual => Some((
                pointwise(in_chs, mid_chs, false, vb.pp("conv_pw"))?,
                BatchNorm::new(mid_chs, eps, vb.pp("bn1"))?,
            )),
        };
        let conv_dw = DepthwiseConv::new(mid_chs, args.kernel, stride, false, vb.pp("conv_dw"))?;
        let bn_dw = BatchNorm::new(mid_chs, eps, vb.pp(names[0]))?;
        let se = match cfg.se_ratio {
            Some(ratio) => {
                // timm sizes SE from the block input: ratio / exp_ratio of the
                // mid channels, rounded as Python's `round` does.
                let rd = (mid_chs as f64 * (ratio / args.expand)).round_ties_even() as usize;
                let vb = vb.pp("se");
                Some(SqueezeExcite {
                    conv_reduce: pointwise(mid_chs, rd, true, vb.pp("conv_reduce"))?,
                    conv_expand: pointwise(rd, mid_chs, true, vb.pp("conv_expand"))?,
                })
            }
            None => None,
        };
        let project = (
            pointwise(mid_chs, out_chs, false, vb.pp(names[1]))?,
            BatchNorm::new(out_chs, eps, vb.pp(names[2]))?,
        );
        Ok(Block {
            expand,
            conv_dw,
            bn_dw,
            se,
            project,
            has_skip: stride == 1 && in_chs == out_chs,
        })
    }

    fn forward(&self, x: &Tensor, cfg: &EfficientNetConfig) -> Result<Tensor> {
        let act = cfg.activation;
        let mut y = x.clone();
        if let Some((conv, bn)) = &self.expand {
            y = act.apply(&bn.forward(&y.apply(conv)?)?)?;
        }
        let (_, h, w, _) = y.dims4()?;
        let pads = cfg
            .padding
            .pads(h, w, self.conv_dw.kernel(), self.conv_dw.stride());
        y = act.apply(&self.bn_dw.forward(&self.conv_dw.forward(&y, pads)?)?)?;
        if let Some(se) = &self.se {
            y = se.forward(&y, act)?;
        }
        y = self.project.1.forward(&y.apply(&self.project.0)?)?;
        if self.has_skip {
            y = (y + x)?;
        }
        Ok(y)
    }
}

pub struct EfficientNet {
    cfg: EfficientNetConfig,
    conv_stem: candle_nn::Conv2d,
    bn1: BatchNorm,
    blocks: Vec<Block>,
    conv_head: Linear,
    bn2: BatchNorm,
    classifier: Linear,
}

/// Blocks per stage after depth scaling (timm `decode_arch_def`, `ceil`).
pub(crate) fn stage_depths(cfg: &EfficientNetConfig) -> Vec<usize> {
    let last = cfg.stages.len().saturating_sub(1);
    cfg.stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if cfg.fix_first_last && (i == 0 || i == last) {
                s.repeats
            } else {
                ((s.repeats as f64 * cfg.depth_multiplier).ceil() as usize).max(1)
            }
        })
        .collect()
}

pub fn build(cfg: &EfficientNetConfig, vb: VarBuilder) -> Result<EfficientNet> {
    let stem_size = if cfg.fix_stem {
        cfg.stem_size
    } else {
        round_channels(cfg.stem_size, cfg.channel_multiplier)
    };
    let stem_cfg = Conv2dConfig {
        stride: 2,
        ..Default::default()
    };
    let conv_stem = candle_nn::conv2d_no_bias(3, stem_size, 3, stem_cfg, vb.pp("conv_stem"))?;
    let bn1 = BatchNorm::new(stem_size, cfg.bn_eps, vb.pp("bn1"))?;
    let mut blocks = Vec::new();
    let mut in_chs = stem_size;
    for (i, (args, depth)) in cfg.stages.iter().zip(stage_depths(cfg)).enumerate() {
        let out_chs = round_channels(args.out_chs, cfg.channel_multiplier);
        for j in 0..depth {
            let stride = if j == 0 { args.stride } else { 1 };
            let vb = vb.pp(format!("blocks.{i}.{j}"));
            blocks.push(Block::new(cfg, args, in_chs, out_chs, stride, vb)?);
            in_chs = out_chs;
        }
    }
    let conv_head = pointwise(in_chs, cfg.num_features, false, vb.pp("conv_head"))?;
    let bn2 = BatchNorm::new(cfg.num_features, cfg.bn_eps, vb.pp("bn2"))?;
    let classifier = candle_nn::linear(cfg.num_features, NUM_CLASSES, vb.pp("classifier"))?;
    Ok(EfficientNet {
        cfg: cfg.clone(),
        conv_stem,
        bn1,
        blocks,
        conv_head,
        bn2,
        classifier,
    })
}

impl Module for EfficientNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let act = self.cfg.activation;
        let (_, _, h, w) = x.dims4()?;
        let [top, bottom, left, right] = self.cfg.padding.pads(h, w, 3, 2);
        let x = x
            .pad_with_zeros(2, top, bottom)?
            .pad_with_zeros(3, left, right)?
            .apply(&self.conv_stem)?
            .permute((0, 2, 3, 1))?
            .contiguous()?;
        let mut x = act.apply(&self.bn1.forward(&x)?)?;
        for block in &self.blocks {
            x = block.forward(&x, &self.cfg)?;
        }
        let x = act.apply(&self.bn2.forward(&x.apply(&self.conv_head)?)?)?;
        x.mean((1, 2))?.apply(&self.classifier)
    }
}

pub fn tf_efficientnet_lite0(vb: VarBuilder<'static>, _: &Extras) -> Result<Net> {
    Ok(Box::new(build(
        &EfficientNetConfig::tf_efficientnet_lite(1.0, 1.0),
        vb,
    )?))
}

pub fn efficientnet_b0(vb: VarBuilder<'static>, _: &Extras) -> Result<Net> {
    Ok(Box::new(build(
        &EfficientNetConfig::efficientnet(1.0, 1.0),
        vb,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timm_channel_rounding() {
        // Values from timm.layers.make_divisible / round_channels.
        assert_eq!(round_channels(16, 0.25), 8);
        assert_eq!(round_channels(40, 0.25), 16);
        assert_eq!(round_channels(112, 0.25), 32);
        assert_eq!(round_channels(1280, 1.1), 1408);
        assert_eq!(round_channels(32, 1.0), 32);
    }

    #[test]
    fn tf_same_padding_puts_the_odd_pixel_last() {
        assert_eq!(Padding::TfSame.one_dim(224, 3, 2), (0, 1));
        assert_eq!(Padding::TfSame.one_dim(57, 3, 2), (1, 1));
        assert_eq!(Padding::TfSame.one_dim(28, 5, 2), (1, 2));
        assert_eq!(Padding::TfSame.one_dim(14, 5, 1), (2, 2));
        assert_eq!(Padding::Symmetric.one_dim(28, 5, 2), (2, 2));
    }

    #[test]
    fn depth_scaling_matches_timm() {
        let lite = EfficientNetConfig::tf_efficientnet_lite(0.25, 0.5);
        assert_eq!(stage_depths(&lite), vec![1, 1, 1, 2, 2, 2, 1]);
        let b3 = EfficientNetConfig::efficientnet(1.2, 1.4);
        assert_eq!(stage_depths(&b3), vec![2, 3, 3, 5, 5, 6, 2]);
    }
}
