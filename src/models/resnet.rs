//! ResNet-18/50 (torchvision v1.5 layout) with torchvision tensor names
//! (`conv1`, `bn1`, `layer1.0.conv1`, `downsample.0`, `fc`), as stored by
//! torchvision and timm's `*.tv_in1k`. Inference only: every BatchNorm is
//! folded into the convolution before it at load time (scaled weights plus
//! a bias), which removes four passes over the activations per layer.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::kernels::conv::Conv;
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
        // Folded in f32 whatever the model computes in, then rounded once.
        let dtype = conv.dtype();
        let (conv, bn) = (conv.set_dtype(DType::F32), bn.set_dtype(DType::F32));
        let w = conv.get((c_out, c_in, kernel, kernel), "weight")?;
        let gamma = bn.get(c_out, "weight")?;
        let beta = bn.get(c_out, "bias")?;
        let mean = bn.get(c_out, "running_mean")?;
        let var = bn.get(c_out, "running_var")?;
        // y = gamma (conv(x) - mean) / sqrt(var + eps) + beta = conv_{w s}(x) + (beta - mean s)
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let weight = w.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
        let bias = (beta - (mean * &scale)?)?;
        Conv::new(
            weight.to_dtype(dtype)?,
            bias.to_dtype(dtype)?,
            stride,
            padding,
            relu,
        )
    }
}

/// A residual block: two (basic) or three (bottleneck) convolutions, the
/// last without its ReLU, and the optional projection shortcut.
struct Block {
    convs: Vec<Conv>,
    down: Option<Conv>,
}

impl Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let Some((last, first)) = self.convs.split_last() else {
            candle_core::bail!("a residual block without convolutions");
        };
        let mut y = x.clone();
        for conv in first {
            y = conv.forward(&y)?;
        }
        let shortcut = match &self.down {
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

/// Stage depths and block kind of ResNet-18 and ResNet-50.
pub fn layout(arch: &str) -> Option<([usize; 4], bool)> {
    match arch {
        "resnet18" => Some(([2, 2, 2, 2], false)),
        "resnet50" => Some(([3, 4, 6, 3], true)),
        _ => None,
    }
}

/// One convolution (and its BatchNorm) of a block.
pub(super) struct ConvPlan {
    pub c_in: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
}

/// One residual block of torchvision's layout: tensors under `prefix`
/// (`layer2.0`), convolution `i` named `conv{i+1}` / `bn{i+1}`, the
/// projection `downsample.0` / `downsample.1`.
pub(super) struct BlockPlan {
    pub prefix: String,
    pub convs: Vec<ConvPlan>,
    pub down: Option<ConvPlan>,
}

/// The blocks of a ResNet after the 7x7 stem (64 channels), and the
/// channels entering the classifier.
pub(super) fn plan(layers: [usize; 4], bottleneck: bool) -> (Vec<BlockPlan>, usize) {
    let conv = |c_in, c_out, k, stride| ConvPlan {
        c_in,
        c_out,
        k,
        stride,
        padding: k / 2,
    };
    let expansion = if bottleneck { 4 } else { 1 };
    let mut blocks = Vec::new();
    let mut c_in = 64;
    for (li, &n) in layers.iter().enumerate() {
        let width = 64 << li;
        let c_out = width * expansion;
        for bi in 0..n {
            let stride = if li > 0 && bi == 0 { 2 } else { 1 };
            let convs = if bottleneck {
                vec![
                    conv(c_in, width, 1, 1),
                    conv(width, width, 3, stride),
                    conv(width, c_out, 1, 1),
                ]
            } else {
                vec![conv(c_in, width, 3, stride), conv(width, width, 3, 1)]
            };
            blocks.push(BlockPlan {
                prefix: format!("layer{}.{bi}", li + 1),
                convs,
                down: (stride != 1 || c_in != c_out).then(|| conv(c_in, c_out, 1, stride)),
            });
            c_in = c_out;
        }
    }
    (blocks, c_in)
}

fn build(vb: VarBuilder, layers: [usize; 4], bottleneck: bool) -> Result<ResNet> {
    let stem = ConvBn::load(vb.pp("conv1"), vb.pp("bn1"), 3, 64, 7, 2, 3, true)?;
    let (plans, features) = plan(layers, bottleneck);
    let load = |conv: VarBuilder, bn: VarBuilder, c: &ConvPlan, relu| {
        ConvBn::load(conv, bn, c.c_in, c.c_out, c.k, c.stride, c.padding, relu)
    };
    let mut blocks = Vec::new();
    for bp in &plans {
        let vb = vb.pp(&bp.prefix);
        let last = bp.convs.len() - 1;
        let convs = bp
            .convs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                load(
                    vb.pp(format!("conv{}", i + 1)),
                    vb.pp(format!("bn{}", i + 1)),
                    c,
                    i < last,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let down = match &bp.down {
            Some(c) => {
                let d = vb.pp("downsample");
                Some(load(d.pp(0), d.pp(1), c, false)?)
            }
            None => None,
        };
        blocks.push(Block { convs, down });
    }
    Ok(ResNet {
        stem,
        blocks,
        fc_w: vb.pp("fc").get((NUM_CLASSES, features), "weight")?,
        fc_b: vb.pp("fc").get(NUM_CLASSES, "bias")?,
    })
}

fn build_named(vb: VarBuilder, arch: &str) -> Result<ResNet> {
    let Some((layers, bottleneck)) = layout(arch) else {
        candle_core::bail!("no ResNet layout named {arch}");
    };
    build(vb, layers, bottleneck)
}

pub fn resnet18(vb: VarBuilder<'static>, _: &Extras) -> Result<Net> {
    Ok(Box::new(build_named(vb, "resnet18")?))
}

pub fn resnet50(vb: VarBuilder<'static>, _: &Extras) -> Result<Net> {
    Ok(Box::new(build_named(vb, "resnet50")?))
}
