//! The demo's classifier, `shapes_cnn`: four strided 3x3/5x5 convolutions
//! with ReLU, a global max-pool and a 1000-way linear head (tensor names
//! `convs.{0..3}.{weight,bias}`, `fc.{weight,bias}`). About 50 M
//! multiply-adds at 224 px. Max-pooling makes it answer "is one of my
//! objects anywhere in the view": it finds an object wherever the crop puts
//! it, but only when the object is large enough to make out.
//!
//! [`train`] fits it with candle's autograd (the differentiable CPU
//! convolution MEMO uses, and AdamW) on the canvases a [`TrainingData`]
//! makes (the demo hands in its generated scenes): seeded data, seeded
//! initial weights, one thread order, so the same weights on every run.

use candle_core::{DType, Device, Result, Tensor, Var, D};
use candle_nn::{Linear, Module, Optimizer, VarBuilder};
use std::collections::HashMap;

use super::kernels::conv::Conv;
use super::kernels::conv_grad;
use super::synthetic::SplitMix64;
use super::{Extras, Net};
use crate::labels::NUM_CLASSES;
use crate::zoom::{normalise_chw, IMAGENET_MEAN, IMAGENET_STD};

/// (in, out, kernel, stride, padding) of the four convolutions.
const LAYERS: [(usize, usize, usize, usize, usize); 4] = [
    (3, 16, 5, 2, 2),
    (16, 32, 3, 2, 1),
    (32, 48, 3, 2, 1),
    (48, 64, 3, 2, 1),
];
const FEATURES: usize = 64;

struct ShapesCnn {
    convs: Vec<Conv>,
    fc: Linear,
}

impl Module for ShapesCnn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for c in &self.convs {
            x = c.forward(&x)?;
        }
        let pooled = x.flatten_from(2)?.max(D::Minus1)?;
        self.fc.forward(&pooled)
    }
}

/// The inference network, from weights named as above.
pub fn shapes_cnn(vb: VarBuilder<'static>, _extras: &Extras) -> Result<Net> {
    let convs = LAYERS
        .iter()
        .enumerate()
        .map(|(i, &(c_in, c_out, k, s, p))| {
            let vb = vb.pp(format!("convs.{i}"));
            Conv::new(
                vb.get((c_out, c_in, k, k), "weight")?,
                vb.get(c_out, "bias")?,
                s,
                p,
                true,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let fc = candle_nn::linear(FEATURES, NUM_CLASSES, vb.pp("fc"))?;
    Ok(Box::new(ShapesCnn { convs, fc }))
}

/// How to train it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    pub seed: u64,
    pub steps: usize,
    pub batch: usize,
    /// Side of the training canvases, px.
    pub side: u32,
    pub learning_rate: f64,
    /// Held-out canvases scored at the end.
    pub held_out: usize,
}

impl TrainConfig {
    /// The demo's recipe.
    pub const DEMO: TrainConfig = TrainConfig {
        seed: 2023,
        steps: 260,
        batch: 48,
        side: 80,
        learning_rate: 4e-3,
        held_out: 420,
    };
}

/// What training did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    pub steps: usize,
    /// Mean loss over the first and the last tenth of the steps.
    pub first_loss: f32,
    pub last_loss: f32,
    /// Top-1 accuracy over the held-out canvases (7 labels, chance ~14%).
    pub held_out_accuracy: f64,
    pub held_out: usize,
}

/// The learnable tensors.
struct Params {
    convs: Vec<(Var, Var)>,
    fc: (Var, Var),
}

impl Params {
    /// Kaiming-uniform weights from splitmix64, zero biases.
    fn init(seed: u64) -> Result<Params> {
        let mut rng = SplitMix64(seed);
        let mut uniform = |shape: &[usize], fan_in: usize| -> Result<Var> {
            let bound = (6.0 / fan_in as f32).sqrt();
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| (2.0 * rng.next_unit() - 1.0) * bound)
                .collect();
            Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu)?)
        };
        let convs = LAYERS
            .iter()
            .map(|&(c_in, c_out, k, _, _)| {
                Ok((
                    uniform(&[c_out, c_in, k, k], c_in * k * k)?,
                    Var::from_tensor(&Tensor::zeros(c_out, DType::F32, &Device::Cpu)?)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let fc = (
            uniform(&[NUM_CLASSES, FEATURES], FEATURES)?,
            Var::from_tensor(&Tensor::zeros(NUM_CLASSES, DType::F32, &Device::Cpu)?)?,
        );
        Ok(Params { convs, fc })
    }

    fn vars(&self) -> Vec<Var> {
        self.convs
            .iter()
            .flat_map(|(w, b)| [w.clone(), b.clone()])
            .chain([self.fc.0.clone(), self.fc.1.clone()])
            .collect()
    }

    /// The same graph as [`ShapesCnn`], differentiable.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for ((w, b), &(_, c_out, _, s, p)) in self.convs.iter().zip(&LAYERS) {
            x = conv_grad::conv2d(&x, w.as_tensor(), s, p)?
                .broadcast_add(&b.as_tensor().reshape((1, c_out, 1, 1))?)?
                .relu()?;
        }
        let pooled = x.flatten_from(2)?.max(D::Minus1)?;
        pooled
            .matmul(&self.fc.0.as_tensor().t()?)?
            .broadcast_add(self.fc.1.as_tensor())
    }

    fn tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (w, b)) in self.convs.iter().enumerate() {
            out.insert(format!("convs.{i}.weight"), w.as_tensor().clone());
            out.insert(format!("convs.{i}.bias"), b.as_tensor().clone());
        }
        out.insert("fc.weight".into(), self.fc.0.as_tensor().clone());
        out.insert("fc.bias".into(), self.fc.1.as_tensor().clone());
        out
    }
}

/// Where training canvases come from: canvas `seed` of `side x side`
/// pixels and its label, an index into `classes` (ImageNet classes). The
/// model knows nothing of the demo's world; the demo hands it in.
pub struct TrainingData<'a> {
    pub classes: Vec<i64>,
    pub canvas: &'a dyn Fn(u64, u32) -> (image::RgbImage, usize),
}

/// Canvases `first..first + n` as a normalised batch and their ImageNet
/// labels.
fn batch(data: &TrainingData, first: u64, n: usize, side: u32) -> Result<(Tensor, Tensor)> {
    let classes = &data.classes;
    let plane = (side * side) as usize;
    let mut pixels = vec![0f32; n * 3 * plane];
    let mut labels = Vec::with_capacity(n);
    for (i, out) in pixels.chunks_exact_mut(3 * plane).enumerate() {
        let (img, label) = (data.canvas)(first + i as u64, side);
        let img = crate::zoom::RgbImage {
            width: side,
            height: side,
            data: img.into_raw(),
        };
        normalise_chw(&img, IMAGENET_MEAN, IMAGENET_STD, out);
        labels.push(classes[label] as u32);
    }
    let s = side as usize;
    Ok((
        Tensor::from_vec(pixels, (n, 3, s, s), &Device::Cpu)?,
        Tensor::new(labels, &Device::Cpu)?,
    ))
}

/// Train the demo classifier; its weights (by tensor name) and a report.
/// `progress` hears (step, loss) now and then.
pub fn train(
    cfg: TrainConfig,
    data: &TrainingData,
    mut progress: impl FnMut(usize, f32),
) -> Result<(HashMap<String, Tensor>, TrainReport)> {
    let params = Params::init(cfg.seed)?;
    let mut opt = candle_nn::AdamW::new(
        params.vars(),
        candle_nn::ParamsAdamW {
            lr: cfg.learning_rate,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    let tenth = (cfg.steps / 10).max(1);
    let (mut first, mut last) = (0f32, 0f32);
    for step in 0..cfg.steps {
        let (x, y) = batch(
            data,
            cfg.seed.wrapping_mul(1 << 20) + (step * cfg.batch) as u64,
            cfg.batch,
            cfg.side,
        )?;
        // Decay the rate linearly to a tenth over the run.
        opt.set_learning_rate(
            cfg.learning_rate * (1.0 - 0.9 * step as f64 / cfg.steps.max(1) as f64),
        );
        let loss = candle_nn::loss::cross_entropy(&params.forward(&x)?, &y)?;
        opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f32>()?;
        if step < tenth {
            first += l / tenth as f32;
        }
        if step >= cfg.steps - tenth {
            last += l / tenth as f32;
        }
        if step % 20 == 0 || step + 1 == cfg.steps {
            progress(step, l);
        }
    }
    // Held out: canvases from a seed range training never drew.
    let mut correct = 0;
    let held_seed = (cfg.seed ^ 0xD00D).wrapping_mul(1 << 32);
    for chunk in (0..cfg.held_out)
        .collect::<Vec<_>>()
        .chunks(cfg.batch.max(1))
    {
        let (x, y) = batch(data, held_seed + chunk[0] as u64, chunk.len(), cfg.side)?;
        let pred = params.forward(&x)?.argmax(D::Minus1)?;
        correct += pred
            .eq(&y)?
            .to_dtype(DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()? as usize;
    }
    Ok((
        params.tensors(),
        TrainReport {
            steps: cfg.steps,
            first_loss: first,
            last_loss: last,
            held_out_accuracy: correct as f64 / cfg.held_out.max(1) as f64,
            held_out: cfg.held_out,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Learnable canvases of the model's own: a bright square in one of
    /// four places tells the label.
    fn squares(seed: u64, side: u32) -> (image::RgbImage, usize) {
        let label = (seed % 4) as usize;
        let (qx, qy) = ((label % 2) as u32 * side / 2, (label / 2) as u32 * side / 2);
        let img = image::RgbImage::from_fn(side, side, |x, y| {
            let inside = (qx..qx + side / 2).contains(&x) && (qy..qy + side / 2).contains(&y);
            let n = ((x * 7 + y * 13 + seed as u32) % 23) as u8;
            if inside {
                image::Rgb([230, 200 - n, 40])
            } else {
                image::Rgb([30 + n, 60, 90])
            }
        });
        (img, label)
    }

    fn data() -> TrainingData<'static> {
        TrainingData {
            classes: vec![1, 2, 3, 4],
            canvas: &squares,
        }
    }

    /// The training graph and the inference network compute the same
    /// logits from the same weights.
    #[test]
    fn training_and_inference_graphs_agree() {
        let params = Params::init(7).unwrap();
        let (x, _) = batch(&data(), 0, 3, 64).unwrap();
        let train = params.forward(&x).unwrap();
        let vb = VarBuilder::from_tensors(params.tensors(), DType::F32, &Device::Cpu);
        let net = shapes_cnn(vb, &Extras::default()).unwrap();
        let infer = net.forward(&x).unwrap();
        let diff = (train - infer)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "max |difference| {diff}");
    }

    /// A few steps lower the loss, and the same seed gives the same
    /// weights.
    #[test]
    fn training_learns_and_repeats() {
        let cfg = TrainConfig {
            steps: 12,
            batch: 16,
            side: 48,
            held_out: 16,
            ..TrainConfig::DEMO
        };
        let (a, ra) = train(cfg, &data(), |_, _| {}).unwrap();
        let (b, _) = train(cfg, &data(), |_, _| {}).unwrap();
        assert!(ra.last_loss < ra.first_loss, "{ra:?}");
        for (name, t) in &a {
            let same = t
                .eq(&b[name])
                .unwrap()
                .to_dtype(DType::U32)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<u32>()
                .unwrap() as usize
                == t.elem_count();
            assert!(same, "{name} differs between two runs");
        }
    }
}
