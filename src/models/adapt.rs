//! A ResNet whose weights can be adapted at test time (MEMO, protocol §7).
//!
//! The inference ResNet (`resnet.rs`) folds every BatchNorm into its
//! convolution; this one keeps BatchNorm as its own layer, so it can
//! normalise with statistics mixed from the stored running ones and the
//! current batch, and holds every learnable tensor as a candle [`Var`], so
//! the gradient of a loss comes from candle's autograd. It is built from
//! candle's stock operations only and runs on any candle device.
//!
//! The pretrained weights stay in memory beside the live ones:
//! [`AdaptResNet::restore`] copies them back without touching the disk.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var, D};
use candle_nn::VarBuilder;

/// The stage depths and block kind of `arch`, if this module builds it.
pub use super::resnet::layout;
use super::resnet::ConvPlan;
use crate::labels::NUM_CLASSES;

/// torchvision's BatchNorm epsilon.
pub const BN_EPS: f64 = 1e-5;

/// Where BatchNorm takes its mean and variance from.
pub enum Norm {
    /// The stored running statistics: the model's evaluation mode.
    Running,
    /// MEMO's prior: `prior * running + (1 - prior) * batch` for the mean and
    /// for the variance (the batch variance unbiased, as PyTorch's running
    /// update computes it). As in MEMO's reference code, the batch
    /// statistics are constants for the gradient. Every layer's mixed
    /// `(mean, var)` is kept in `used`, in forward order.
    Mixed {
        prior: f64,
        used: Vec<(Tensor, Tensor)>,
    },
    /// Normalise with statistics recorded by an earlier `Mixed` pass, layer
    /// by layer: the same function of the weights, for finite differences.
    Replay {
        stats: Vec<(Tensor, Tensor)>,
        next: usize,
    },
}

impl Norm {
    /// MEMO's prior for `strength` N: p = N / (N + 1).
    pub fn mixed(strength: f64) -> Norm {
        Norm::Mixed {
            prior: strength / (strength + 1.0),
            used: Vec::new(),
        }
    }

    /// A `Replay` of what a `Mixed` pass used (`None` for other modes).
    pub fn replay(&self) -> Option<Norm> {
        match self {
            Norm::Mixed { used, .. } => Some(Norm::Replay {
                stats: used.clone(),
                next: 0,
            }),
            _ => None,
        }
    }
}

/// Per-channel `(mean, var)` of an NCHW batch mixed with running statistics:
/// `prior * running + (1 - prior) * batch`, with the batch variance unbiased
/// (divided by `n*h*w - 1`). Shapes `[c]`; computed outside the autograd graph.
pub fn mixed_statistics(
    x: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    prior: f64,
) -> Result<(Tensor, Tensor)> {
    let x = x.detach();
    let (n, c, h, w) = x.dims4()?;
    let count = n * h * w;
    if count < 2 {
        candle_core::bail!("batch statistics need at least 2 values per channel, got {count}");
    }
    let per_channel = |t: &Tensor| -> Result<Tensor> {
        // Innermost dimension first: each reduction reads contiguous rows.
        t.sum_keepdim(3)?.sum_keepdim(2)?.sum_keepdim(0)?.reshape(c)
    };
    let mean = (per_channel(&x)? / count as f64)?;
    let centred = x.broadcast_sub(&mean.reshape((1, c, 1, 1))?)?;
    let var = (per_channel(&centred.sqr()?)? / (count - 1) as f64)?;
    let mix = |running: &Tensor, batch: &Tensor| -> Result<Tensor> {
        (running * prior)? + (batch * (1.0 - prior))?
    };
    Ok((mix(running_mean, &mean)?, mix(running_var, &var)?))
}

struct BatchNorm {
    weight: Var,
    bias: Var,
    running_mean: Tensor,
    running_var: Tensor,
}

impl BatchNorm {
    fn load(vb: VarBuilder, c: usize, params: &mut Params) -> Result<BatchNorm> {
        Ok(BatchNorm {
            weight: params.var(&vb, c, "weight")?,
            bias: params.var(&vb, c, "bias")?,
            running_mean: vb.get(c, "running_mean")?,
            running_var: vb.get(c, "running_var")?,
        })
    }

    fn forward(&self, x: &Tensor, norm: &mut Norm) -> Result<Tensor> {
        let c = self.running_mean.dim(0)?;
        let (mean, var) = match norm {
            Norm::Running => (self.running_mean.clone(), self.running_var.clone()),
            Norm::Mixed { prior, used } => {
                let stats = mixed_statistics(x, &self.running_mean, &self.running_var, *prior)?;
                used.push(stats.clone());
                stats
            }
            Norm::Replay { stats, next } => {
                let Some(s) = stats.get(*next) else {
                    candle_core::bail!("replayed statistics ran out at layer {next}");
                };
                *next += 1;
                s.clone()
            }
        };
        // gamma (x - mean) / sqrt(var + eps) + beta as one scale and one
        // shift per channel: two passes over the activations, not three.
        let scale = (self.weight.as_tensor() / (var + BN_EPS)?.sqrt()?)?;
        let shift = (self.bias.as_tensor() - (mean * &scale)?)?;
        x.broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
            .broadcast_add(&shift.reshape((1, c, 1, 1))?)
    }
}

/// A bias-free convolution followed by its BatchNorm.
struct ConvBn {
    weight: Var,
    bn: BatchNorm,
    stride: usize,
    padding: usize,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn load(
        conv: VarBuilder,
        bn: VarBuilder,
        (c_in, c_out, k): (usize, usize, usize),
        stride: usize,
        padding: usize,
        params: &mut Params,
    ) -> Result<ConvBn> {
        Ok(ConvBn {
            weight: params.var(&conv, (c_out, c_in, k, k), "weight")?,
            bn: BatchNorm::load(bn, c_out, params)?,
            stride,
            padding,
        })
    }

    fn forward(&self, x: &Tensor, norm: &mut Norm) -> Result<Tensor> {
        let y = super::kernels::conv_grad::conv2d(
            x,
            self.weight.as_tensor(),
            self.stride,
            self.padding,
        )?;
        self.bn.forward(&y, norm)
    }
}

struct Block {
    /// Two convolutions (basic block) or three (bottleneck).
    convs: Vec<ConvBn>,
    down: Option<ConvBn>,
}

impl Block {
    fn forward(&self, x: &Tensor, norm: &mut Norm) -> Result<Tensor> {
        let mut y = x.clone();
        let last = self.convs.len() - 1;
        for (i, conv) in self.convs.iter().enumerate() {
            y = conv.forward(&y, norm)?;
            if i < last {
                y = y.relu()?;
            }
        }
        let shortcut = match &self.down {
            Some(d) => d.forward(x, norm)?,
            None => x.clone(),
        };
        (y + shortcut)?.relu()
    }
}

/// The learnable tensors, in load order, with the pretrained values.
struct Params {
    names: Vec<String>,
    live: Vec<Var>,
    pristine: Vec<Tensor>,
}

impl Params {
    fn var<S: Into<candle_core::Shape>>(
        &mut self,
        vb: &VarBuilder,
        shape: S,
        name: &str,
    ) -> Result<Var> {
        let t = vb.get(shape, name)?;
        let var = Var::from_tensor(&t)?;
        let prefix = vb.prefix();
        self.names.push(if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        });
        self.live.push(var.clone());
        self.pristine.push(t);
        Ok(var)
    }
}

/// ResNet-18/50 (torchvision v1.5 layout and tensor names) for test-time
/// adaptation.
pub struct AdaptResNet {
    stem: ConvBn,
    blocks: Vec<Block>,
    fc_w: Var,
    fc_b: Var,
    params: Params,
}

impl AdaptResNet {
    /// Build `arch` (see [`layout`]) from a checkpoint with torchvision's
    /// names, in the `VarBuilder`'s dtype and device.
    pub fn new(vb: VarBuilder, arch: &str) -> Result<AdaptResNet> {
        let Some((layers, bottleneck)) = layout(arch) else {
            candle_core::bail!(
                "test-time adaptation needs a BatchNorm ResNet (resnet18, resnet50), not {arch}"
            );
        };
        let mut params = Params {
            names: Vec::new(),
            live: Vec::new(),
            pristine: Vec::new(),
        };
        let p = &mut params;
        let stem = ConvBn::load(vb.pp("conv1"), vb.pp("bn1"), (3, 64, 7), 2, 3, p)?;
        let (plans, features) = super::resnet::plan(layers, bottleneck);
        let mut blocks = Vec::new();
        for bp in &plans {
            let vb = vb.pp(&bp.prefix);
            let mut load = |conv: VarBuilder, bn: VarBuilder, c: &ConvPlan| {
                ConvBn::load(conv, bn, (c.c_in, c.c_out, c.k), c.stride, c.padding, p)
            };
            let mut convs = Vec::new();
            for (i, c) in bp.convs.iter().enumerate() {
                convs.push(load(
                    vb.pp(format!("conv{}", i + 1)),
                    vb.pp(format!("bn{}", i + 1)),
                    c,
                )?);
            }
            let down = match &bp.down {
                Some(c) => {
                    let d = vb.pp("downsample");
                    Some(load(d.pp(0), d.pp(1), c)?)
                }
                None => None,
            };
            blocks.push(Block { convs, down });
        }
        let fc = vb.pp("fc");
        let fc_w = params.var(&fc, (NUM_CLASSES, features), "weight")?;
        let fc_b = params.var(&fc, NUM_CLASSES, "bias")?;
        Ok(AdaptResNet {
            stem,
            blocks,
            fc_w,
            fc_b,
            params,
        })
    }

    /// The device and dtype of the weights.
    pub fn device(&self) -> &Device {
        self.fc_w.device()
    }

    pub fn dtype(&self) -> DType {
        self.fc_w.dtype()
    }

    /// Logits `[n, 1000]` of normalised NCHW crops.
    pub fn forward(&self, x: &Tensor, norm: &mut Norm) -> Result<Tensor> {
        let y = self.stem.forward(x, norm)?.relu()?;
        let mut y = max_pool_3x3_s2(&y)?;
        for b in &self.blocks {
            y = b.forward(&y, norm)?;
        }
        let pooled = y.mean(D::Minus1)?.mean(D::Minus1)?;
        pooled
            .matmul(&self.fc_w.as_tensor().t()?)?
            .broadcast_add(self.fc_b.as_tensor())
    }

    /// Every learnable tensor with its checkpoint name, in load order.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.params
            .names
            .iter()
            .map(String::as_str)
            .zip(&self.params.live)
    }

    /// The learnable tensor called `name` in the checkpoint.
    pub fn var(&self, name: &str) -> Option<&Var> {
        self.vars().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Put the pretrained weights back (a device copy, no disk read).
    pub fn restore(&self) -> Result<()> {
        for (var, t) in self.params.live.iter().zip(&self.params.pristine) {
            var.set(t)?;
        }
        Ok(())
    }

    /// One plain SGD step: `w -= lr * grad` for every weight with a gradient
    /// (no momentum, no weight decay).
    pub fn sgd_step(&self, grads: &GradStore, lr: f64) -> Result<()> {
        for var in &self.params.live {
            if let Some(g) = grads.get(var.as_tensor()) {
                var.set(&(var.as_tensor() - (g * lr)?)?)?;
            }
        }
        Ok(())
    }
}

/// MEMO's marginal entropy: the entropy of the softmax averaged over the
/// views (rows of `logits`, `[views, classes]`), computed in log space.
pub fn marginal_entropy(logits: &Tensor) -> Result<Tensor> {
    let views = logits.dim(0)?;
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    // log(mean_v p_v) = logsumexp_v(log p_v) - ln V; the shift by the
    // (constant) maximum keeps the exponentials finite and the gradient exact.
    let peak = logp.max_keepdim(0)?.detach();
    let avg =
        ((logp.broadcast_sub(&peak)?.exp()?.sum_keepdim(0)?.log()? + peak)? - (views as f64).ln())?;
    (avg.exp()? * avg)?.sum_all()?.neg()
}

/// MEMO's knobs (protocol §7).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoStep {
    /// BatchNorm prior strength N: p = N / (N + 1).
    pub prior_strength: f64,
    /// Plain SGD learning rate.
    pub lr: f64,
}

impl MemoStep {
    /// The paper's setting: N = 16, lr 2.5e-4.
    pub const PAPER: MemoStep = MemoStep {
        prior_strength: 16.0,
        lr: 2.5e-4,
    };
}

/// What one adaptation episode produced.
pub struct Episode {
    /// The marginal entropy before the step.
    pub loss: f32,
    /// The test crop's 1000 logits with the adapted weights.
    pub logits: Vec<f32>,
}

impl AdaptResNet {
    /// Load `arch` from a weights file (safetensors or a tensor-only `.pth`).
    pub fn load(
        arch: &str,
        weights: &std::path::Path,
        device: &Device,
        dtype: DType,
    ) -> std::result::Result<AdaptResNet, super::ModelError> {
        let err = |message: String| super::ModelError::Load {
            file: weights.into(),
            arch: "adaptable resnet",
            message,
        };
        let vb = super::var_builder(weights, device).map_err(|e| err(e.to_string()))?;
        AdaptResNet::new(vb.set_dtype(dtype), arch).map_err(|e| err(e.to_string()))
    }

    /// One MEMO episode: restore the pretrained weights; forward the
    /// `views` (`[n, 3, size, size]`, normalised, back to back) with mixed
    /// BatchNorm statistics; take one SGD step on the marginal entropy over
    /// `classes` (ImageNet-1k indices; all 1000 when `None`); return the
    /// logits of `test` (`[1, 3, size, size]`) under the adapted weights, with
    /// the same mixed BatchNorm (as MEMO's reference code predicts).
    pub fn memo_episode(
        &self,
        views: &[f32],
        test: &[f32],
        size: usize,
        classes: Option<&[u32]>,
        step: MemoStep,
    ) -> std::result::Result<Episode, super::ModelError> {
        let err = |e: candle_core::Error| super::ModelError::Forward {
            arch: "adaptable resnet",
            message: e.to_string(),
        };
        let plane = 3 * size * size;
        let dev = self.device().clone();
        let to_input = |x: &[f32], n: usize| {
            Tensor::from_slice(x, (n, 3, size, size), &dev)?.to_dtype(self.dtype())
        };
        let run = || -> Result<Episode> {
            self.restore()?;
            let x = to_input(views, views.len() / plane)?;
            let mut logits = self.forward(&x, &mut Norm::mixed(step.prior_strength))?;
            if let Some(c) = classes {
                logits = logits.index_select(&Tensor::new(c, &dev)?, 1)?;
            }
            let loss = marginal_entropy(&logits)?;
            self.sgd_step(&loss.backward()?, step.lr)?;
            let out = self.forward(&to_input(test, 1)?, &mut Norm::mixed(step.prior_strength))?;
            Ok(Episode {
                loss: loss.to_dtype(DType::F32)?.to_scalar::<f32>()?,
                logits: out.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            })
        };
        if views.is_empty() || !views.len().is_multiple_of(plane) || test.len() != plane {
            return Err(err(candle_core::Error::Msg(format!(
                "MEMO needs whole {size}x{size} views and one test crop"
            ))));
        }
        run().map_err(err)
    }
}

/// Max-pool 3x3, stride 2, padding 1 from operations candle can
/// differentiate (its own max-pool backward needs kernel = stride). Zero
/// padding is exact here: the input comes out of a ReLU.
fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    let mut y = x.clone();
    for dim in [2, 3] {
        let len = y.dim(dim)?;
        let out = (len - 1) / 2 + 1;
        // Windows start at 2i - 1: pad 1 in front and enough behind that
        // three shifted views of length 2*out fit.
        let behind = 2 * out + 1 - len;
        let padded = y.pad_with_zeros(dim, 1, behind)?;
        let m = padded
            .narrow(dim, 0, 2 * out)?
            .maximum(&padded.narrow(dim, 1, 2 * out)?)?
            .maximum(&padded.narrow(dim, 2, 2 * out)?)?;
        // Keep the even positions: the windows at stride 2.
        let mut shape = m.dims().to_vec();
        shape[dim] = out;
        shape.insert(dim + 1, 2);
        y = m.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)?;
    }
    Ok(y)
}

/// The network MEMO adapts for a model of architecture `arch`: a BatchNorm
/// ResNet, in f32 (its step of 2.5e-4 rounds away in half precision).
pub fn load_for_memo(
    arch: &str,
    weights: &std::path::Path,
    rt: &super::Runtime,
) -> std::result::Result<AdaptResNet, super::ModelError> {
    if rt.precision() != super::Precision::F32 {
        return Err(super::ModelError::Unsupported(format!(
            "MEMO adapts the weights in f32 (in {} a step of 2.5e-4 would round away): drop --dtype {}",
            rt.precision(),
            rt.precision()
        )));
    }
    if layout(arch).is_none() {
        return Err(super::ModelError::Unsupported(format!(
            "MEMO adapts BatchNorm ResNets (resnet18, resnet50); this model is {arch}"
        )));
    }
    AdaptResNet::load(arch, weights, rt.device(), DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_statistics_follow_the_formula_on_a_hand_made_batch() {
        // 2 images, 2 channels, 1x2 pixels. Channel 0 holds 1, 3, 5, 7:
        // mean 4, unbiased variance ((9+1+1+9)/3) = 20/3. Channel 1 holds
        // 0, 0, 2, 2: mean 1, variance 4/3.
        let x = Tensor::new(
            &[
                [[[1f32, 3.]], [[0., 0.]]], // image 0
                [[[5., 7.]], [[2., 2.]]],   // image 1
            ],
            &Device::Cpu,
        )
        .unwrap();
        let rm = Tensor::new(&[10f32, -2.], &Device::Cpu).unwrap();
        let rv = Tensor::new(&[1f32, 2.], &Device::Cpu).unwrap();
        let p = 16.0 / 17.0;
        let (m, v) = mixed_statistics(&x, &rm, &rv, p).unwrap();
        let (m, v) = (m.to_vec1::<f32>().unwrap(), v.to_vec1::<f32>().unwrap());
        let want_m = [p * 10. + (1. - p) * 4., p * -2. + (1. - p) * 1.];
        let want_v = [p * 1. + (1. - p) * 20. / 3., p * 2. + (1. - p) * 4. / 3.];
        for i in 0..2 {
            assert!((m[i] as f64 - want_m[i]).abs() < 1e-6, "mean {i}: {m:?}");
            assert!((v[i] as f64 - want_v[i]).abs() < 1e-6, "var {i}: {v:?}");
        }
    }

    #[test]
    fn the_batch_norm_layer_normalises_with_the_mixed_statistics() {
        let dev = Device::Cpu;
        let bn = BatchNorm {
            weight: Var::new(&[2f32, 0.5], &dev).unwrap(),
            bias: Var::new(&[0.1f32, -1.], &dev).unwrap(),
            running_mean: Tensor::new(&[10f32, -2.], &dev).unwrap(),
            running_var: Tensor::new(&[1f32, 2.], &dev).unwrap(),
        };
        let x = Tensor::new(
            &[[[[1f32, 3.]], [[0., 0.]]], [[[5., 7.]], [[2., 2.]]]],
            &dev,
        )
        .unwrap();
        let mut norm = Norm::mixed(16.0);
        let y = bn.forward(&x, &mut norm).unwrap();
        let p = 16.0 / 17.0;
        let mean = p * 10. + (1. - p) * 4.;
        let var = p * 1. + (1. - p) * 20. / 3.;
        let want = 2. * (5. - mean) / (var + BN_EPS).sqrt() + 0.1;
        let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap()[4] as f64;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // Running mode uses the stored statistics alone.
        let y = bn.forward(&x, &mut Norm::Running).unwrap();
        let want = 0.5 * (2. - -2.) / (2. + BN_EPS).sqrt() - 1.;
        let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap()[6] as f64;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    /// The autograd gradient of the marginal entropy equals central finite
    /// differences of the same function (float64, BatchNorm statistics
    /// replayed from the unperturbed pass, as the gradient treats them).
    #[test]
    fn the_marginal_entropy_gradient_matches_finite_differences() {
        use crate::models::synthetic::{input, write_weights, Head};
        use crate::models::Architecture;
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("r18.safetensors");
        write_weights(
            Architecture::find("resnet18").unwrap(),
            3,
            Head::Random,
            &weights,
        )
        .unwrap();
        let net = AdaptResNet::load("resnet18", &weights, &Device::Cpu, DType::F64).unwrap();
        let size = 32;
        let x: Vec<f64> = input(5, 3 * 3 * size * size)
            .iter()
            .map(|&v| v as f64)
            .collect();
        let x = Tensor::from_vec(x, (3, 3, size, size), &Device::Cpu).unwrap();
        let classes = Tensor::new(&[1u32, 7, 42, 500, 999], &Device::Cpu).unwrap();
        let loss_of = |norm: &mut Norm| -> Tensor {
            let logits = net
                .forward(&x, norm)
                .unwrap()
                .index_select(&classes, 1)
                .unwrap();
            marginal_entropy(&logits).unwrap()
        };
        let mut norm = Norm::mixed(16.0);
        let loss = loss_of(&mut norm);
        let grads = loss.backward().unwrap();
        let stats = norm.replay().unwrap();
        let Norm::Replay { stats, .. } = stats else {
            unreachable!()
        };
        let h = 1e-5;
        let mut checked = 0;
        for (name, index) in [
            ("conv1.weight", 17),
            ("bn1.weight", 3),
            ("bn1.bias", 60),
            ("layer1.0.conv2.weight", 1234),
            ("layer3.1.bn1.weight", 100),
            ("layer4.0.downsample.0.weight", 100),
            ("fc.weight", 42 * 512 + 9),
            ("fc.bias", 500),
            ("fc.bias", 3),
        ] {
            let var = net.var(name).unwrap();
            let analytic = grads
                .get(var.as_tensor())
                .map(|g| g.flatten_all().unwrap().to_vec1::<f64>().unwrap()[index])
                .unwrap_or(0.0);
            let original = var.as_tensor().copy().unwrap();
            let at = |delta: f64| -> f64 {
                let mut v = original.flatten_all().unwrap().to_vec1::<f64>().unwrap();
                v[index] += delta;
                var.set(&Tensor::from_vec(v, original.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let mut replay = Norm::Replay {
                    stats: stats.clone(),
                    next: 0,
                };
                loss_of(&mut replay).to_scalar::<f64>().unwrap()
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            var.set(&original).unwrap();
            assert!(
                (analytic - numeric).abs() <= 1e-6 * numeric.abs().max(1e-3),
                "{name}[{index}]: autograd {analytic}, finite differences {numeric}"
            );
            checked += (numeric != 0.0) as usize;
        }
        // Classes outside the loss have no gradient (fc.bias[3]); the rest do.
        assert_eq!(checked, 8);
    }

    #[test]
    fn the_differentiable_max_pool_equals_candles_max_pool() {
        for (h, w) in [(8, 8), (7, 9), (5, 6), (112, 112)] {
            let n = 2 * 3 * h * w;
            let v: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32) / 7.0).collect();
            let x = Tensor::from_vec(v, (2, 3, h, w), &Device::Cpu).unwrap();
            let ours = max_pool_3x3_s2(&x).unwrap();
            let want = x
                .pad_with_zeros(3, 1, 1)
                .unwrap()
                .pad_with_zeros(2, 1, 1)
                .unwrap()
                .max_pool2d_with_stride(3, 2)
                .unwrap();
            assert_eq!(ours.dims(), want.dims(), "{h}x{w}");
            let d = crate::models::kernels::conv::tests::max_diff(&ours, &want);
            assert_eq!(d, 0.0, "{h}x{w}");
        }
    }
}
