//! ResNet-18/50 (torchvision v1.5 layout) with torchvision tensor names
//! (`conv1`, `bn1`, `layer1.0.conv1`, `downsample.0`, `fc`), as stored by
//! torchvision and timm's `*.tv_in1k`. Inference only: every BatchNorm is
//! folded into the convolution before it at load time (scaled weights plus
//! a bias), which removes four passes over the activations per layer.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::conv::Conv;
use super::{Extras, Net};
use crate::labels::NUM_CLASSES;

const BN_EPS: f64 = 1e-5;

/// A convolution followed by its BatchNorm (and maybe ReLU), folded into
/// one convolution with a bias.
struct ConvBn;

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn load(
        conv: VarBuilder,
        bn: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        relu: bool,
    ) -> Result<Conv> {
        let w = conv.get((c_out, c_in, kernel, kernel), "weight")?;
        let gamma = bn.get(c_out, "weight")?;
        let beta = bn.get(c_out, "bias")?;
        let mean = bn.get(c_out, "running_mean")?;
        let var = bn.get(c_out, "running_var")?;
        // y = gamma (conv(x) - mean) / sqrt(var + eps) + beta = conv_{w s}(x) + (beta - mean s)
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let weight = w.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
        let bias = (beta - (mean * &scale)?)?;
        Conv::new(weight, bias, stride, padding, relu)
    }
}

enum Block {
    Basic {
        a: Conv,
        b: Conv,
        down: Option<Conv>,
    },
    Bottleneck {
        a: Conv,
        b: Conv,
        c: Conv,
        down: Option<Conv>,
    },
}

impl Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (y, last, down) = match self {
            Block::Basic { a, b, down } => (a.forward(x)?, b, down),
            Block::Bottleneck { a, b, c, down } => (b.forward(&a.forward(x)?)?, c, down),
        };
        let shortcut = match down {
            Some(d) => d.forward(x)?,
            None => x.clone(),
        };
        // relu(last(y) + shortcut), in one pass.
        last.forward_residual(&y, &shortcut)
    }
}

pub struct ResNet {
    stem: Conv,
    blocks: Vec<Block>,
    fc_w: Tensor,
    fc_b: Tensor,
}

impl Module for ResNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Zero padding before the max-pool is exact: its input is >= 0 after ReLU.
        let mut x = self
            .stem
            .forward(x)?
            .pad_with_zeros(D::Minus1, 1, 1)?
            .pad_with_zeros(D::Minus2, 1, 1)?
            .max_pool2d_with_stride(3, 2)?;
        for b in &self.blocks {
            x = b.forward(&x)?;
        }
        let pooled = x.mean(D::Minus1)?.mean(D::Minus1)?;
        pooled.matmul(&self.fc_w.t()?)?.broadcast_add(&self.fc_b)
    }
}

fn build(vb: VarBuilder, layers: [usize; 4], bottleneck: bool) -> Result<ResNet> {
    let stem = ConvBn::load(vb.pp("conv1"), vb.pp("bn1"), 3, 64, 7, 2, 3, true)?;
    let expansion = if bottleneck { 4 } else { 1 };
    let mut blocks = Vec::new();
    let mut c_in = 64;
    for (li, &n) in layers.iter().enumerate() {
        let width = 64 << li;
        let c_out = width * expansion;
        for bi in 0..n {
            let stride = if li > 0 && bi == 0 { 2 } else { 1 };
            let vb = vb.pp(format!("layer{}", li + 1)).pp(bi);
            let down = if stride != 1 || c_in != c_out {
                Some(ConvBn::load(
                    vb.pp("downsample").pp(0),
                    vb.pp("downsample").pp(1),
                    c_in,
                    c_out,
                    1,
                    stride,
                    0,
                    false,
                )?)
            } else {
                None
            };
            let cb = |i: usize, ci, co, k, s, p, relu| {
                ConvBn::load(
                    vb.pp(format!("conv{i}")),
                    vb.pp(format!("bn{i}")),
                    ci,
                    co,
                    k,
                    s,
                    p,
                    relu,
                )
            };
            blocks.push(if bottleneck {
                Block::Bottleneck {
                    a: cb(1, c_in, width, 1, 1, 0, true)?,
                    b: cb(2, width, width, 3, stride, 1, true)?,
                    c: cb(3, width, c_out, 1, 1, 0, false)?,
                    down,
                }
            } else {
                Block::Basic {
                    a: cb(1, c_in, width, 3, stride, 1, true)?,
                    b: cb(2, width, width, 3, 1, 1, false)?,
                    down,
                }
            });
            c_in = c_out;
        }
    }
    Ok(ResNet {
        stem,
        blocks,
        fc_w: vb.pp("fc").get((NUM_CLASSES, c_in), "weight")?,
        fc_b: vb.pp("fc").get(NUM_CLASSES, "bias")?,
    })
}

pub fn resnet18(vb: VarBuilder<'static>, _: &Extras) -> Result<Net> {
    Ok(Box::new(build(vb, [2, 2, 2, 2], false)?))
}

pub fn resnet50(vb: VarBuilder<'static>, _: &Extras) -> Result<Net> {
    Ok(Box::new(build(vb, [3, 4, 6, 3], true)?))
}
