//! timm's ConvNeXt (`timm.models.convnext.ConvNeXt`, patch stem, linear MLP,
//! layer scale, pool -> norm -> fc head) with timm tensor names: `stem.0/1`,
//! `stages.{i}.downsample.0/1`, `stages.{i}.blocks.{j}.{conv_dw, norm,
//! mlp.fc1, mlp.fc2, gamma}`, `head.norm`, `head.fc`.
//!
//! candle-transformers has a ConvNeXt with these names, but it probes for
//! optional tensors (`gamma`, ConvNeXt-V2 `grn`) and so would create them
//! when tensor names are enumerated, and it runs the depthwise convolution as
//! one convolution per channel; this port runs channels-last throughout.

use candle_core::{Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::kernels::nhwc::DepthwiseConv;
use super::{Extras, Net};
use crate::labels::NUM_CLASSES;

/// timm's LayerNorm / LayerNorm2d epsilon for ConvNeXt.
pub(crate) const LN_EPS: f64 = 1e-6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvNextConfig {
    pub depths: [usize; 4],
    pub dims: [usize; 4],
}

impl ConvNextConfig {
    pub const BASE: ConvNextConfig = ConvNextConfig {
        depths: [3, 3, 27, 3],
        dims: [128, 256, 512, 1024],
    };
}

/// A `p x p` convolution with stride `p` (stem, downsampling) on NHWC input,
/// as one matrix product over the flattened patches.
struct Patchify {
    /// `[p * p * c_in, c_out]`, rows in (kh, kw, c_in) order.
    weight: Tensor,
    bias: Tensor,
    patch: usize,
}

impl Patchify {
    fn new(c_in: usize, c_out: usize, patch: usize, vb: VarBuilder) -> Result<Patchify> {
        let weight = vb
            .get((c_out, c_in, patch, patch), "weight")?
            .permute((2, 3, 1, 0))?
            .reshape((patch * patch * c_in, c_out))?;
        let bias = vb.get(c_out, "bias")?;
        Ok(Patchify {
            weight,
            bias,
            patch,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, h, w, c) = x.dims4()?;
        let p = self.patch;
        let (ho, wo) = (h / p, w / p);
        // A strided convolution drops the rows and columns no patch covers.
        let patches = x
            .narrow(1, 0, ho * p)?
            .narrow(2, 0, wo * p)?
            .reshape((n, ho, p, wo, p, c))?
            .permute((0, 1, 3, 2, 4, 5))?
            .reshape((n * ho * wo, p * p * c))?;
        patches
            .matmul(&self.weight)?
            .broadcast_add(&self.bias)?
            .reshape((n, ho, wo, ()))
    }
}

struct Block {
    conv_dw: DepthwiseConv,
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    gamma: Tensor,
}

impl Block {
    fn new(dim: usize, vb: VarBuilder) -> Result<Block> {
        Ok(Block {
            conv_dw: DepthwiseConv::new(dim, 7, 1, true, vb.pp("conv_dw"))?,
            norm: candle_nn::layer_norm(dim, LN_EPS, vb.pp("norm"))?,
            fc1: candle_nn::linear(dim, 4 * dim, vb.pp("mlp.fc1"))?,
            fc2: candle_nn::linear(4 * dim, dim, vb.pp("mlp.fc2"))?,
            gamma: vb.get(dim, "gamma")?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self
            .conv_dw
            .forward(x, [3, 3, 3, 3])?
            .apply(&self.norm)?
            .apply(&self.fc1)?
            .gelu_erf()?
            .apply(&self.fc2)?
            .broadcast_mul(&self.gamma)?;
        y + x
    }
}

struct Stage {
    /// `LayerNorm2d` then a 2x2 stride-2 convolution; absent in stage 0.
    downsample: Option<(LayerNorm, Patchify)>,
    blocks: Vec<Block>,
}

pub struct ConvNext {
    stem: (Patchify, LayerNorm),
    stages: Vec<Stage>,
    head_norm: LayerNorm,
    head_fc: Linear,
}

pub fn build(cfg: &ConvNextConfig, vb: VarBuilder) -> Result<ConvNext> {
    let stem = (
        Patchify::new(3, cfg.dims[0], 4, vb.pp("stem.0"))?,
        candle_nn::layer_norm(cfg.dims[0], LN_EPS, vb.pp("stem.1"))?,
    );
    let mut stages = Vec::with_capacity(4);
    for i in 0..4 {
        let vb = vb.pp(format!("stages.{i}"));
        let dim = cfg.dims[i];
        let downsample = if i == 0 {
            None
        } else {
            let prev = cfg.dims[i - 1];
            Some((
                candle_nn::layer_norm(prev, LN_EPS, vb.pp("downsample.0"))?,
                Patchify::new(prev, dim, 2, vb.pp("downsample.1"))?,
            ))
        };
        let blocks = (0..cfg.depths[i])
            .map(|j| Block::new(dim, vb.pp(format!("blocks.{j}"))))
            .collect::<Result<Vec<_>>>()?;
        stages.push(Stage { downsample, blocks });
    }
    Ok(ConvNext {
        stem,
        stages,
        head_norm: candle_nn::layer_norm(cfg.dims[3], LN_EPS, vb.pp("head.norm"))?,
        head_fc: candle_nn::linear(cfg.dims[3], NUM_CLASSES, vb.pp("head.fc"))?,
    })
}

impl Module for ConvNext {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.permute((0, 2, 3, 1))?;
        let mut x = self.stem.0.forward(&x)?.apply(&self.stem.1)?;
        for stage in &self.stages {
            if let Some((norm, conv)) = &stage.downsample {
                x = conv.forward(&x.apply(norm)?)?;
            }
            for block in &stage.blocks {
                x = block.forward(&x)?;
            }
        }
        x.mean((1, 2))?.apply(&self.head_norm)?.apply(&self.head_fc)
    }
}

pub fn convnext_base(vb: VarBuilder<'static>, _: &Extras) -> Result<Net> {
    Ok(Box::new(build(&ConvNextConfig::BASE, vb)?))
}
