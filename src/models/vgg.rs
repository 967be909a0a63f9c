//! The plain convolution stacks: AlexNet with torchvision tensor names
//! (`features.{0,3,6,8,10}`, `classifier.{1,4,6}`) and VGG-16/19 with timm's
//! (`features.N`, `pre_logits.fc1` as a 7x7 convolution, `pre_logits.fc2`
//! as a 1x1 one, `head.fc`), as in `timm/vgg{16,19}.tv_in1k`.
//! candle-transformers' `vgg.rs` takes one image and ReLUs the logits, so
//! these are written out here. Widths come from a config so the parity
//! tests can run narrow copies of the same graph.

use candle_core::{Result, Tensor, D};
use candle_nn::{linear, Linear, Module, VarBuilder};

use super::kernels::conv::Conv;

use super::{Extras, Net};
use crate::labels::NUM_CLASSES;

/// PyTorch's `adaptive_avg_pool2d`: output cell `i` of `n` averages input
/// rows `floor(i*h/n) .. ceil((i+1)*h/n)`, and likewise for columns. Bins
/// may overlap, and repeat rows when the output is larger than the input.
fn adaptive_avg_pool2d(x: &Tensor, (oh, ow): (usize, usize)) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if (h, w) == (oh, ow) {
        return Ok(x.clone());
    }
    if h % oh == 0 && w % ow == 0 {
        return x.avg_pool2d((h / oh, w / ow));
    }
    // A rectangle's mean is the mean over columns of the mean over rows.
    let pool_dim = |x: &Tensor, dim: usize, n: usize, out: usize| -> Result<Tensor> {
        let cells = (0..out)
            .map(|i| {
                let (start, end) = (i * n / out, ((i + 1) * n).div_ceil(out));
                x.narrow(dim, start, end - start)?.mean_keepdim(dim)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&cells, dim)
    };
    pool_dim(&pool_dim(x, 2, h, oh)?, 3, w, ow)
}

fn conv(
    vb: &VarBuilder,
    index: usize,
    (c_in, c_out): (usize, usize),
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Conv> {
    conv_relu(
        &vb.pp(format!("features.{index}")),
        (c_in, c_out),
        kernel,
        stride,
        padding,
    )
}

/// A convolution with a bias, followed by ReLU (every one in these nets is).
fn conv_relu(
    vb: &VarBuilder,
    (c_in, c_out): (usize, usize),
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Conv> {
    let w = vb.get((c_out, c_in, kernel, kernel), "weight")?;
    let b = vb.get(c_out, "bias")?;
    Conv::new(w, b, stride, padding, true)
}

/// AlexNet's widths: its five convolutions and the two hidden layers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlexNetConfig {
    pub convs: [usize; 5],
    pub hidden: usize,
}

impl AlexNetConfig {
    /// torchvision's `alexnet` (ImageNet-1k V1).
    pub const TORCHVISION: AlexNetConfig = AlexNetConfig {
        convs: [64, 192, 384, 256, 256],
        hidden: 4096,
    };

    /// Every width divided by `divisor`, for small test networks.
    pub fn narrowed(self, divisor: usize) -> AlexNetConfig {
        AlexNetConfig {
            convs: self.convs.map(|c| c / divisor),
            hidden: self.hidden / divisor,
        }
    }
}

/// AlexNet as torchvision builds it (the "one weird trick" variant).
pub struct AlexNet {
    convs: [Conv; 5],
    fc: [Linear; 3],
}

impl AlexNet {
    /// Pooled feature map side before the classifier.
    const POOL: usize = 6;

    pub fn new(cfg: AlexNetConfig, vb: VarBuilder) -> Result<AlexNet> {
        let c = cfg.convs;
        let convs = [
            conv(&vb, 0, (3, c[0]), 11, 4, 2)?,
            conv(&vb, 3, (c[0], c[1]), 5, 1, 2)?,
            conv(&vb, 6, (c[1], c[2]), 3, 1, 1)?,
            conv(&vb, 8, (c[2], c[3]), 3, 1, 1)?,
            conv(&vb, 10, (c[3], c[4]), 3, 1, 1)?,
        ];
        let head = vb.pp("classifier");
        let fc = [
            linear(c[4] * Self::POOL * Self::POOL, cfg.hidden, head.pp("1"))?,
            linear(cfg.hidden, cfg.hidden, head.pp("4"))?,
            linear(cfg.hidden, NUM_CLASSES, head.pp("6"))?,
        ];
        Ok(AlexNet { convs, fc })
    }
}

impl Module for AlexNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let pool = |x: Tensor| x.max_pool2d_with_stride(3, 2);
        let [c0, c3, c6, c8, c10] = &self.convs;
        let x = pool(c0.forward(x)?)?;
        let x = pool(c3.forward(&x)?)?;
        let x = c6.forward(&x)?;
        let x = c8.forward(&x)?;
        let x = pool(c10.forward(&x)?)?;
        let x = adaptive_avg_pool2d(&x, (Self::POOL, Self::POOL))?.flatten_from(1)?;
        let [fc1, fc4, fc6] = &self.fc;
        let x = fc1.forward(&x)?.relu()?;
        let x = fc4.forward(&x)?.relu()?;
        fc6.forward(&x)
    }
}

/// VGG's widths: five stages of 3x3 convolutions, each closed by a 2x2
/// max-pool, then the 4096-wide convolutional MLP.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VggConfig {
    pub depths: [usize; 5],
    pub widths: [usize; 5],
    pub hidden: usize,
}

impl VggConfig {
    pub const VGG16: VggConfig = VggConfig {
        depths: [2, 2, 3, 3, 3],
        widths: [64, 128, 256, 512, 512],
        hidden: 4096,
    };

    pub const VGG19: VggConfig = VggConfig {
        depths: [2, 2, 4, 4, 4],
        widths: [64, 128, 256, 512, 512],
        hidden: 4096,
    };

    /// Every width divided by `divisor`, for small test networks.
    pub fn narrowed(self, divisor: usize) -> VggConfig {
        VggConfig {
            widths: self.widths.map(|c| c / divisor),
            hidden: self.hidden / divisor,
            ..self
        }
    }
}

/// VGG as timm builds it: the classifier is a 7x7 then a 1x1 convolution,
/// global average pooling, and a linear head.
pub struct Vgg {
    stages: Vec<Vec<Conv>>,
    fc1: Conv,
    fc2: Conv,
    head: Linear,
}

impl Vgg {
    /// Kernel side of `pre_logits.fc1`; smaller feature maps are pooled up to it.
    const FC1_KERNEL: usize = 7;

    pub fn new(cfg: VggConfig, vb: VarBuilder) -> Result<Vgg> {
        // timm's `features` numbers every layer: conv and ReLU, then the pool.
        let mut index = 0;
        let mut c_in = 3;
        let mut stages = Vec::with_capacity(cfg.depths.len());
        for (&depth, &width) in cfg.depths.iter().zip(&cfg.widths) {
            let mut stage = Vec::with_capacity(depth);
            for _ in 0..depth {
                stage.push(conv(&vb, index, (c_in, width), 3, 1, 1)?);
                (index, c_in) = (index + 2, width);
            }
            stages.push(stage);
            index += 1;
        }
        let pre = vb.pp("pre_logits");
        let fc1 = conv_relu(&pre.pp("fc1"), (c_in, cfg.hidden), Self::FC1_KERNEL, 1, 0)?;
        let fc2 = conv_relu(&pre.pp("fc2"), (cfg.hidden, cfg.hidden), 1, 1, 0)?;
        let head = linear(cfg.hidden, NUM_CLASSES, vb.pp("head").pp("fc"))?;
        Ok(Vgg {
            stages,
            fc1,
            fc2,
            head,
        })
    }
}

impl Module for Vgg {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for stage in &self.stages {
            for conv in stage {
                x = conv.forward(&x)?;
            }
            x = x.max_pool2d_with_stride(2, 2)?;
        }
        let (_, _, h, w) = x.dims4()?;
        let k = Self::FC1_KERNEL;
        if h < k || w < k {
            x = adaptive_avg_pool2d(&x, (h.max(k), w.max(k)))?;
        }
        let x = self.fc2.forward(&self.fc1.forward(&x)?)?;
        // No ReLU on the logits.
        self.head.forward(&x.mean(D::Minus1)?.mean(D::Minus1)?)
    }
}

pub fn alexnet(vb: VarBuilder<'static>, _: &Extras) -> Result<Net> {
    Ok(Box::new(AlexNet::new(AlexNetConfig::TORCHVISION, vb)?))
}

pub fn vgg16(vb: VarBuilder<'static>, _: &Extras) -> Result<Net> {
    Ok(Box::new(Vgg::new(VggConfig::VGG16, vb)?))
}

pub fn vgg19(vb: VarBuilder<'static>, _: &Extras) -> Result<Net> {
    Ok(Box::new(Vgg::new(VggConfig::VGG19, vb)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adaptive_pool_bins_as_pytorch() {
        // 1x1x1x3 -> 2: bins [0, 2) and [1, 3) overlap on the middle value.
        let x = Tensor::new(&[1f32, 2.0, 6.0], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 3))
            .unwrap();
        let y = adaptive_avg_pool2d(&x, (1, 2)).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [1.5, 4.0]
        );
        // 2 -> 3 repeats: bins [0, 1), [0, 2), [1, 2).
        let x = Tensor::new(&[2f32, 4.0], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 2, 1))
            .unwrap();
        let y = adaptive_avg_pool2d(&x, (3, 1)).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [2.0, 3.0, 4.0]
        );
    }
}
