//! The layer plan of each study model on the cuDNN path, as data: a
//! straight list of steps over channels-last values, which tensors of the
//! checkpoint each step reads, and what it fuses. Built from the same
//! architecture tables as the candle models, without weights or a device,
//! so the plan itself is tested here (every convolution carries its
//! BatchNorm, bias and activation; no value changes layout after the input;
//! depthwise convolutions are one grouped call) and `net` only executes it.

use std::fmt;

use super::geometry::{ConvGeometry, GeometryError, Nhwc};
use crate::models::convnext::ConvNextConfig;
use crate::models::efficientnet::{
    make_divisible, round_channels, stage_depths, Activation as EffAct, BlockType,
    EfficientNetConfig, Padding,
};
use crate::models::resnet;
use crate::models::vgg::{AlexNetConfig, VggConfig};
use crate::models::vit;

/// An activation applied in a step's epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Act {
    Identity,
    Relu,
    /// min(max(x, 0), 6): EfficientNet-Lite.
    Relu6,
    /// x * sigmoid(x): EfficientNet.
    Silu,
    /// The exact (erf) GELU: ViT, ConvNeXt.
    Gelu,
    /// x * sigmoid(1.702 x): CLIP.
    QuickGelu,
    Sigmoid,
}

impl Act {
    /// The activation's number in our CUDA kernels (`kernels.cu`).
    pub fn code(self) -> u32 {
        match self {
            Act::Identity => 0,
            Act::Relu => 1,
            Act::Relu6 => 2,
            Act::Silu => 3,
            Act::Gelu => 4,
            Act::QuickGelu => 5,
            Act::Sigmoid => 6,
        }
    }

    /// The activation itself, in f32: the reference every kernel is held to.
    pub fn apply(self, x: f32) -> f32 {
        let sigmoid = |v: f32| 1.0 / (1.0 + (-v).exp());
        match self {
            Act::Identity => x,
            Act::Relu => x.max(0.0),
            Act::Relu6 => x.clamp(0.0, 6.0),
            Act::Silu => x * sigmoid(x),
            Act::Gelu => 0.5 * x * (1.0 + erf(x / std::f32::consts::SQRT_2)),
            Act::QuickGelu => x * sigmoid(1.702 * x),
            Act::Sigmoid => sigmoid(x),
        }
    }
}

/// erf to f32 precision (Abramowitz and Stegun 7.1.26 is too coarse for a
/// reference; this is the series / continued-fraction split in f64).
fn erf(x: f32) -> f32 {
    let x = x as f64;
    let t = x.abs();
    let r = if t < 2.5 {
        // Maclaurin series: erf(t) = 2/sqrt(pi) sum (-1)^n t^(2n+1) / (n! (2n+1))
        let (mut term, mut sum, mut n) = (t, t, 0.0);
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -t * t / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc by its continued fraction, evaluated from the tail.
        let mut f = 0.0;
        for k in (1..60).rev() {
            f = (k as f64 / 2.0) / (t + f);
        }
        1.0 - (-t * t).exp() / std::f64::consts::PI.sqrt() / (t + f)
    };
    (if x < 0.0 { -r } else { r }) as f32
}

/// Memory order of a 4-D value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Channels first, as crops arrive from PyTorch-style callers.
    Nchw,
    /// Channels last: what every step of this path reads and writes.
    Nhwc,
}

/// The shape of a value, per image (the batch is left open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A feature map `h x w x c`.
    Map {
        h: usize,
        w: usize,
        c: usize,
        layout: Layout,
    },
    /// A sequence of `t` tokens of width `d`.
    Tokens { t: usize, d: usize },
    /// One vector of width `d`.
    Vector { d: usize },
}

impl Shape {
    fn nhwc(h: usize, w: usize, c: usize) -> Shape {
        Shape::Map {
            h,
            w,
            c,
            layout: Layout::Nhwc,
        }
    }

    /// The width of the last dimension, which layer norms and linear
    /// layers act on.
    pub fn last(&self) -> usize {
        match *self {
            Shape::Map { c, .. } => c,
            Shape::Tokens { d, .. } | Shape::Vector { d } => d,
        }
    }

    /// This per-image shape as `[n, h, w, c]` for a batch of `n`.
    pub fn nhwc_of(&self, n: usize) -> Option<Nhwc> {
        match *self {
            Shape::Map { h, w, c, .. } => Some(Nhwc { n, h, w, c }),
            _ => None,
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Map { h, w, c, layout } => write!(f, "{h}x{w}x{c} {layout:?}"),
            Shape::Tokens { t, d } => write!(f, "{t} tokens x {d}"),
            Shape::Vector { d } => write!(f, "{d}"),
        }
    }
}

/// Where a convolution's parameters come from.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvWeights {
    /// `[o, i / groups, kh, kw]`.
    pub weight: String,
    pub bias: Option<String>,
    /// A BatchNorm after it (its `weight`, `bias`, `running_mean`,
    /// `running_var` under this prefix), folded into weight and bias.
    pub bn: Option<(String, f64)>,
}

/// How a linear layer's checkpoint tensors are turned into the `[out, in]`
/// matrix and bias it runs with, once at load time.
#[derive(Debug, Clone, PartialEq)]
pub enum Fold {
    /// The input was flattened channels-first (`[c, h, w]`) in the
    /// checkpoint's network; here it is flattened channels-last, so the
    /// columns are put in `(h, w, c)` order.
    NchwColumns { c: usize, h: usize, w: usize },
    /// The first `rows` outputs (attention queries) scaled by `factor`, so
    /// the scores need no separate scaling.
    ScaleRows { rows: usize, factor: f64 },
    /// A layer scale (ConvNeXt's `gamma`, per output) multiplied in.
    LayerScale(String),
}

/// Where a linear layer's parameters come from: one or several weights
/// stacked by rows (CLIP's separate q, k and v), their biases, the folds.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseWeights {
    /// `[out_i, in]` each, stacked in this order; a 4-D `[out, in, 1, 1]`
    /// weight is read as `[out, in]`.
    pub weights: Vec<String>,
    pub biases: Vec<String>,
    pub folds: Vec<Fold>,
}

/// One step's operation. Every step reads its `input`; some read a second
/// value (a residual, a gate), always one computed earlier.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// The only layout change: NCHW crops to NHWC, at the input.
    ToNhwc,
    /// `act(conv(x) + bias [+ residual])` in one call (bias, residual and
    /// ReLU inside cuDNN; other activations in one kernel right after).
    Conv {
        geometry: ConvGeometry,
        weights: ConvWeights,
        act: Act,
        residual: Option<usize>,
        /// The input multiplied first, per image and input channel, by
        /// this value (`[1, 1, c_in]` per image: a squeeze-excite gate).
        gate: Option<usize>,
    },
    /// Zero padding `[top, bottom, left, right]` (asymmetric "SAME").
    Pad([usize; 4]),
    /// `k x k` max-pool with stride `stride` and `pad` (never covering a
    /// whole window, so padding is never the maximum).
    MaxPool { k: usize, stride: usize, pad: usize },
    /// PyTorch's adaptive average pool to `out` (global: `(1, 1)`).
    AvgPool { out: (usize, usize) },
    /// LayerNorm over the last dimension.
    LayerNorm {
        weight: String,
        bias: String,
        eps: f64,
    },
    /// `act(x W^T + b [+ residual])` over the last dimension.
    Linear {
        c_in: usize,
        c_out: usize,
        weights: DenseWeights,
        act: Act,
        residual: Option<usize>,
    },
    /// A patch grid `h x w x d` to `1 + h w` tokens: the class token first,
    /// then the position embedding added (both `[t, d]`-sized tensors).
    Tokens {
        class_token: String,
        pos_embed: String,
    },
    /// Multi-head self-attention over fused `[q, k, v]` tokens (queries
    /// already scaled): `3 d` wide in, `d` out.
    Attention { heads: usize },
    /// Token 0 of a sequence.
    ClassToken,
    /// A feature map flattened channels-last.
    Flatten,
}

/// One step: its operation, the value it reads and the shape it makes.
/// Values are numbered: 0 is the input, step `i` makes value `i + 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub op: Op,
    pub input: usize,
    pub shape: Shape,
}

/// A model's layer plan: its input shape, its steps, and the width of what
/// the last step makes.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    pub arch: &'static str,
    pub input: Shape,
    pub steps: Vec<Step>,
}

/// What a plan fuses and where it changes layout: the facts the design
/// promises, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub convs: usize,
    /// Convolutions whose bias (or folded BatchNorm) and activation are in
    /// the same call.
    pub fused_convs: usize,
    pub residual_convs: usize,
    pub batchnorms_folded: usize,
    pub grouped_convs: usize,
    pub linears: usize,
    pub residual_linears: usize,
    pub layer_norms: usize,
    pub attentions: usize,
    pub pools: usize,
    pub other_steps: usize,
    /// Steps whose input is in a different layout than the one before.
    pub layout_changes: usize,
    /// Maps that are not channels-last after the first step.
    pub channels_first_values: usize,
}

impl Program {
    /// Count what the plan fuses and every layout change.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        let mut last_layout = match self.input {
            Shape::Map { layout, .. } => Some(layout),
            _ => None,
        };
        for (i, step) in self.steps.iter().enumerate() {
            match &step.op {
                Op::Conv {
                    geometry,
                    weights,
                    residual,
                    ..
                } => {
                    s.convs += 1;
                    // The bias is always applied: the conv's, the folded
                    // BatchNorm's, or zero; the activation too.
                    s.fused_convs += 1;
                    s.residual_convs += usize::from(residual.is_some());
                    s.batchnorms_folded += usize::from(weights.bn.is_some());
                    s.grouped_convs += usize::from(geometry.groups > 1);
                }
                Op::Linear { residual, .. } => {
                    s.linears += 1;
                    s.residual_linears += usize::from(residual.is_some());
                }
                Op::LayerNorm { .. } => s.layer_norms += 1,
                Op::Attention { .. } => s.attentions += 1,
                Op::MaxPool { .. } | Op::AvgPool { .. } => s.pools += 1,
                _ => s.other_steps += 1,
            }
            if let Shape::Map { layout, .. } = step.shape {
                if last_layout.is_some_and(|l| l != layout) {
                    s.layout_changes += 1;
                }
                if i > 0 && layout != Layout::Nhwc {
                    s.channels_first_values += 1;
                }
                last_layout = Some(layout);
            }
        }
        s
    }

    /// The shape of value `v`.
    pub fn shape(&self, v: usize) -> Shape {
        if v == 0 {
            self.input
        } else {
            self.steps[v - 1].shape
        }
    }

    /// Each value's last reader (a step index), so an executor can drop
    /// values as soon as nothing reads them.
    pub fn last_use(&self) -> Vec<usize> {
        let mut last = vec![0; self.steps.len() + 1];
        for (i, step) in self.steps.iter().enumerate() {
            last[step.input] = i;
            match &step.op {
                Op::Linear {
                    residual: Some(r), ..
                } => last[*r] = i,
                Op::Conv { residual, gate, .. } => {
                    for v in residual.iter().chain(gate) {
                        last[*v] = i;
                    }
                }
                _ => {}
            }
        }
        last
    }

    /// Every tensor name the plan reads, in order, without repeats.
    pub fn tensor_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        let mut add = |n: &String| {
            if !names.contains(n) {
                names.push(n.clone());
            }
        };
        for step in &self.steps {
            match &step.op {
                Op::Conv { weights, .. } => {
                    add(&weights.weight);
                    if let Some(b) = &weights.bias {
                        add(b);
                    }
                    if let Some((bn, _)) = &weights.bn {
                        for t in ["weight", "bias", "running_mean", "running_var"] {
                            add(&format!("{bn}.{t}"));
                        }
                    }
                }
                Op::Linear { weights, .. } => {
                    weights.weights.iter().for_each(&mut add);
                    weights.biases.iter().for_each(&mut add);
                    for f in &weights.folds {
                        if let Fold::LayerScale(g) = f {
                            add(g);
                        }
                    }
                }
                Op::LayerNorm { weight, bias, .. } => {
                    add(weight);
                    add(bias);
                }
                Op::Tokens {
                    class_token,
                    pos_embed,
                } => {
                    add(class_token);
                    add(pos_embed);
                }
                _ => {}
            }
        }
        names
    }
}

/// Builds a program step by step, checking each step's input shape.
struct Builder {
    program: Program,
}

type Built<T> = Result<T, GeometryError>;

impl Builder {
    /// A model taking NCHW crops of `size x size`, turned NHWC at once.
    fn new(arch: &'static str, size: usize) -> Builder {
        let input = Shape::Map {
            h: size,
            w: size,
            c: 3,
            layout: Layout::Nchw,
        };
        let mut b = Builder {
            program: Program {
                arch,
                input,
                steps: Vec::new(),
            },
        };
        b.push(Op::ToNhwc, 0, Shape::nhwc(size, size, 3));
        b
    }

    /// The newest value.
    fn last(&self) -> usize {
        self.program.steps.len()
    }

    fn push(&mut self, op: Op, input: usize, shape: Shape) -> usize {
        self.program.steps.push(Step { op, input, shape });
        self.last()
    }

    fn map(&self, v: usize) -> Built<(usize, usize, usize)> {
        match self.program.shape(v) {
            Shape::Map { h, w, c, .. } => Ok((h, w, c)),
            other => Err(GeometryError::Invalid(
                format!("value {v}"),
                format!("expected a feature map, found {other}"),
            )),
        }
    }

    fn conv(
        &mut self,
        input: usize,
        geometry: ConvGeometry,
        weights: ConvWeights,
        act: Act,
        residual: Option<usize>,
    ) -> Built<usize> {
        self.gated_conv(input, None, geometry, weights, act, residual)
    }

    /// `conv` of `input` multiplied by `gate` (if any) first.
    fn gated_conv(
        &mut self,
        input: usize,
        gate: Option<usize>,
        geometry: ConvGeometry,
        weights: ConvWeights,
        act: Act,
        residual: Option<usize>,
    ) -> Built<usize> {
        let (h, w, c) = self.map(input)?;
        if let Some(g) = gate {
            if self.map(g)? != (1, 1, c) {
                return Err(GeometryError::Invalid(
                    geometry.to_string(),
                    format!("gate value {g} is not 1x1x{c}"),
                ));
            }
        }
        let out = Nhwc { n: 1, h, w, c }.conv_out(&geometry)?;
        if let Some(r) = residual {
            let (rh, rw, rc) = self.map(r)?;
            if (rh, rw, rc) != (out.h, out.w, out.c) {
                return Err(GeometryError::Invalid(
                    geometry.to_string(),
                    format!("residual {rh}x{rw}x{rc} does not match the output"),
                ));
            }
        }
        let op = Op::Conv {
            geometry,
            weights,
            act,
            residual,
            gate,
        };
        Ok(self.push(op, input, Shape::nhwc(out.h, out.w, out.c)))
    }

    fn linear(
        &mut self,
        input: usize,
        c_out: usize,
        weights: DenseWeights,
        act: Act,
        residual: Option<usize>,
    ) -> usize {
        let shape = self.program.shape(input);
        let out = match shape {
            Shape::Map { h, w, .. } => Shape::nhwc(h, w, c_out),
            Shape::Tokens { t, .. } => Shape::Tokens { t, d: c_out },
            Shape::Vector { .. } => Shape::Vector { d: c_out },
        };
        let op = Op::Linear {
            c_in: shape.last(),
            c_out,
            weights,
            act,
            residual,
        };
        self.push(op, input, out)
    }

    fn layer_norm(&mut self, input: usize, prefix: &str, eps: f64) -> usize {
        let shape = self.program.shape(input);
        let op = Op::LayerNorm {
            weight: format!("{prefix}.weight"),
            bias: format!("{prefix}.bias"),
            eps,
        };
        self.push(op, input, shape)
    }

    fn max_pool(&mut self, input: usize, k: usize, stride: usize, pad: usize) -> Built<usize> {
        let (h, w, c) = self.map(input)?;
        let g = ConvGeometry::square(c, c, k, stride, pad);
        let (oh, ow) = g.out_hw(h, w)?;
        Ok(self.push(
            Op::MaxPool { k, stride, pad },
            input,
            Shape::nhwc(oh, ow, c),
        ))
    }

    fn avg_pool(&mut self, input: usize, out: (usize, usize)) -> Built<usize> {
        let (_, _, c) = self.map(input)?;
        Ok(self.push(Op::AvgPool { out }, input, Shape::nhwc(out.0, out.1, c)))
    }

    /// The global average pool, flattened to a vector for the head.
    fn global_pool(&mut self, input: usize) -> Built<usize> {
        let x = self.avg_pool(input, (1, 1))?;
        let (_, _, c) = self.map(x)?;
        Ok(self.push(Op::Flatten, x, Shape::Vector { d: c }))
    }

    fn finish(self) -> Program {
        self.program
    }
}

fn conv_bn(conv: &str, bn: &str, eps: f64) -> ConvWeights {
    ConvWeights {
        weight: format!("{conv}.weight"),
        bias: None,
        bn: Some((bn.to_string(), eps)),
    }
}

fn conv_bias(prefix: &str) -> ConvWeights {
    ConvWeights {
        weight: format!("{prefix}.weight"),
        bias: Some(format!("{prefix}.bias")),
        bn: None,
    }
}

fn dense(prefix: &str, bias: bool) -> DenseWeights {
    DenseWeights {
        weights: vec![format!("{prefix}.weight")],
        biases: if bias {
            vec![format!("{prefix}.bias")]
        } else {
            vec![]
        },
        folds: vec![],
    }
}

/// ResNet-18/50 in torchvision's layout.
pub fn resnet(arch: &'static str, size: usize) -> Built<Program> {
    let Some((layers, bottleneck)) = resnet::layout(arch) else {
        return Err(GeometryError::Invalid(
            arch.into(),
            "not a ResNet layout".into(),
        ));
    };
    const EPS: f64 = 1e-5;
    let mut b = Builder::new(arch, size);
    let x = b.conv(
        1,
        ConvGeometry::square(3, 64, 7, 2, 3),
        conv_bn("conv1", "bn1", EPS),
        Act::Relu,
        None,
    )?;
    let mut x = b.max_pool(x, 3, 2, 1)?;
    let (blocks, features) = resnet::plan(layers, bottleneck);
    for block in &blocks {
        let p = &block.prefix;
        let shortcut = match &block.down {
            Some(d) => b.conv(
                x,
                ConvGeometry::square(d.c_in, d.c_out, d.k, d.stride, d.padding),
                conv_bn(
                    &format!("{p}.downsample.0"),
                    &format!("{p}.downsample.1"),
                    EPS,
                ),
                Act::Identity,
                None,
            )?,
            None => x,
        };
        let mut y = x;
        let last = block.convs.len() - 1;
        for (i, c) in block.convs.iter().enumerate() {
            let weights = conv_bn(
                &format!("{p}.conv{}", i + 1),
                &format!("{p}.bn{}", i + 1),
                EPS,
            );
            let g = ConvGeometry::square(c.c_in, c.c_out, c.k, c.stride, c.padding);
            let residual = (i == last).then_some(shortcut);
            y = b.conv(y, g, weights, Act::Relu, residual)?;
        }
        x = y;
    }
    let x = b.global_pool(x)?;
    b.linear(
        x,
        crate::labels::NUM_CLASSES,
        dense("fc", true),
        Act::Identity,
        None,
    );
    let _ = features;
    Ok(b.finish())
}

/// torchvision's AlexNet.
pub fn alexnet(cfg: AlexNetConfig, size: usize) -> Built<Program> {
    let c = cfg.convs;
    let mut b = Builder::new("alexnet", size);
    let conv = |b: &mut Builder, x, i: usize, (ci, co), k, s, p| {
        b.conv(
            x,
            ConvGeometry::square(ci, co, k, s, p),
            conv_bias(&format!("features.{i}")),
            Act::Relu,
            None,
        )
    };
    let x = conv(&mut b, 1, 0, (3, c[0]), 11, 4, 2)?;
    let x = b.max_pool(x, 3, 2, 0)?;
    let x = conv(&mut b, x, 3, (c[0], c[1]), 5, 1, 2)?;
    let x = b.max_pool(x, 3, 2, 0)?;
    let x = conv(&mut b, x, 6, (c[1], c[2]), 3, 1, 1)?;
    let x = conv(&mut b, x, 8, (c[2], c[3]), 3, 1, 1)?;
    let x = conv(&mut b, x, 10, (c[3], c[4]), 3, 1, 1)?;
    let x = b.max_pool(x, 3, 2, 0)?;
    const POOL: usize = 6;
    let x = b.avg_pool(x, (POOL, POOL))?;
    let x = b.push(
        Op::Flatten,
        x,
        Shape::Vector {
            d: c[4] * POOL * POOL,
        },
    );
    let mut fc1 = dense("classifier.1", true);
    fc1.folds.push(Fold::NchwColumns {
        c: c[4],
        h: POOL,
        w: POOL,
    });
    let x = b.linear(x, cfg.hidden, fc1, Act::Relu, None);
    let x = b.linear(x, cfg.hidden, dense("classifier.4", true), Act::Relu, None);
    b.linear(
        x,
        crate::labels::NUM_CLASSES,
        dense("classifier.6", true),
        Act::Identity,
        None,
    );
    Ok(b.finish())
}

/// timm's VGG (`pre_logits` as a 7x7 and a 1x1 convolution).
pub fn vgg(arch: &'static str, cfg: VggConfig, size: usize) -> Built<Program> {
    let mut b = Builder::new(arch, size);
    let (mut x, mut c_in, mut index) = (1, 3, 0);
    for (&depth, &width) in cfg.depths.iter().zip(&cfg.widths) {
        for _ in 0..depth {
            let g = ConvGeometry::square(c_in, width, 3, 1, 1);
            x = b.conv(
                x,
                g,
                conv_bias(&format!("features.{index}")),
                Act::Relu,
                None,
            )?;
            (index, c_in) = (index + 2, width);
        }
        x = b.max_pool(x, 2, 2, 0)?;
        index += 1;
    }
    const FC1: usize = 7;
    let (h, w, _) = b.map(x)?;
    if h < FC1 || w < FC1 {
        x = b.avg_pool(x, (h.max(FC1), w.max(FC1)))?;
    }
    let g = ConvGeometry::square(c_in, cfg.hidden, FC1, 1, 0);
    let x = b.conv(x, g, conv_bias("pre_logits.fc1"), Act::Relu, None)?;
    let g = ConvGeometry::square(cfg.hidden, cfg.hidden, 1, 1, 0);
    let x = b.conv(x, g, conv_bias("pre_logits.fc2"), Act::Relu, None)?;
    let x = b.global_pool(x)?;
    b.linear(
        x,
        crate::labels::NUM_CLASSES,
        dense("head.fc", true),
        Act::Identity,
        None,
    );
    Ok(b.finish())
}

/// A convolution with "SAME" or symmetric padding: symmetric goes into the
/// convolution, asymmetric becomes a pad step first.
fn padded_conv(
    b: &mut Builder,
    x: usize,
    padding: Padding,
    geometry: ConvGeometry,
    weights: ConvWeights,
    act: Act,
) -> Built<usize> {
    let (h, w, _) = b.map(x)?;
    let [k, s] = [geometry.kernel[0], geometry.stride[0]];
    let [top, bottom, left, right] = padding.pads(h, w, k, s);
    if top == bottom && left == right {
        let g = ConvGeometry {
            pad: [top, left],
            ..geometry
        };
        return b.conv(x, g, weights, act, None);
    }
    let shape = Shape::nhwc(h + top + bottom, w + left + right, geometry.c_in);
    let padded = b.push(Op::Pad([top, bottom, left, right]), x, shape);
    b.conv(padded, geometry, weights, act, None)
}

/// A squeeze-excite gate over `y`'s `mid` channels through `rd`: pooled,
/// reduced, expanded to a sigmoid gate (the value returned), which the
/// next convolution multiplies in (`gated_conv`).
fn squeeze_excite(
    b: &mut Builder,
    y: usize,
    (mid, rd): (usize, usize),
    p: &str,
    act: Act,
) -> Built<usize> {
    let pooled = b.avg_pool(y, (1, 1))?;
    let s = b.conv(
        pooled,
        ConvGeometry::square(mid, rd, 1, 1, 0),
        conv_bias(&format!("{p}.se.conv_reduce")),
        act,
        None,
    )?;
    b.conv(
        s,
        ConvGeometry::square(rd, mid, 1, 1, 0),
        conv_bias(&format!("{p}.se.conv_expand")),
        Act::Sigmoid,
        None,
    )
}

/// timm's EfficientNet family (B0 and Lite0 are the registered ones).
pub fn efficientnet(arch: &'static str, cfg: &EfficientNetConfig, size: usize) -> Built<Program> {
    let act = match cfg.activation {
        EffAct::Relu6 => Act::Relu6,
        EffAct::Silu => Act::Silu,
    };
    let eps = cfg.bn_eps;
    let mut b = Builder::new(arch, size);
    let stem = if cfg.fix_stem {
        cfg.stem_size
    } else {
        round_channels(cfg.stem_size, cfg.channel_multiplier)
    };
    let mut x = padded_conv(
        &mut b,
        1,
        cfg.padding,
        ConvGeometry::square(3, stem, 3, 2, 0),
        conv_bn("conv_stem", "bn1", eps),
        act,
    )?;
    let mut in_chs = stem;
    for (i, (args, depth)) in cfg.stages.iter().zip(stage_depths(cfg)).enumerate() {
        let out_chs = round_channels(args.out_chs, cfg.channel_multiplier);
        for j in 0..depth {
            let p = format!("blocks.{i}.{j}");
            let stride = if j == 0 { args.stride } else { 1 };
            let block_in = x;
            let (mid, names) = match args.block {
                BlockType::DepthwiseSeparable => (in_chs, ["bn1", "conv_pw", "bn2"]),
                BlockType::InvertedResidual => (
                    make_divisible(in_chs as f64 * args.expand),
                    ["bn2", "conv_pwl", "bn3"],
                ),
            };
            let mut y = x;
            if args.block == BlockType::InvertedResidual {
                y = b.conv(
                    y,
                    ConvGeometry::square(in_chs, mid, 1, 1, 0),
                    conv_bn(&format!("{p}.conv_pw"), &format!("{p}.bn1"), eps),
                    act,
                    None,
                )?;
            }
            y = padded_conv(
                &mut b,
                y,
                cfg.padding,
                ConvGeometry::depthwise(mid, args.kernel, stride, 0),
                conv_bn(&format!("{p}.conv_dw"), &format!("{p}.{}", names[0]), eps),
                act,
            )?;
            let gate = match cfg.se_ratio {
                Some(ratio) => {
                    let rd = (mid as f64 * (ratio / args.expand)).round_ties_even() as usize;
                    Some(squeeze_excite(&mut b, y, (mid, rd), &p, act)?)
                }
                None => None,
            };
            let skip = stride == 1 && in_chs == out_chs;
            y = b.gated_conv(
                y,
                gate,
                ConvGeometry::square(mid, out_chs, 1, 1, 0),
                conv_bn(
                    &format!("{p}.{}", names[1]),
                    &format!("{p}.{}", names[2]),
                    eps,
                ),
                Act::Identity,
                skip.then_some(block_in),
            )?;
            x = y;
            in_chs = out_chs;
        }
    }
    let x = b.conv(
        x,
        ConvGeometry::square(in_chs, cfg.num_features, 1, 1, 0),
        conv_bn("conv_head", "bn2", eps),
        act,
        None,
    )?;
    let x = b.global_pool(x)?;
    b.linear(
        x,
        crate::labels::NUM_CLASSES,
        dense("classifier", true),
        Act::Identity,
        None,
    );
    Ok(b.finish())
}

/// timm's ConvNeXt.
pub fn convnext(arch: &'static str, cfg: &ConvNextConfig, size: usize) -> Built<Program> {
    use crate::models::convnext::LN_EPS;
    let mut b = Builder::new(arch, size);
    let d = cfg.dims;
    let x = b.conv(
        1,
        ConvGeometry::square(3, d[0], 4, 4, 0),
        conv_bias("stem.0"),
        Act::Identity,
        None,
    )?;
    let mut x = b.layer_norm(x, "stem.1", LN_EPS);
    for i in 0..4 {
        let s = format!("stages.{i}");
        if i > 0 {
            let n = b.layer_norm(x, &format!("{s}.downsample.0"), LN_EPS);
            x = b.conv(
                n,
                ConvGeometry::square(d[i - 1], d[i], 2, 2, 0),
                conv_bias(&format!("{s}.downsample.1")),
                Act::Identity,
                None,
            )?;
        }
        for j in 0..cfg.depths[i] {
            let p = format!("{s}.blocks.{j}");
            let y = b.conv(
                x,
                ConvGeometry::depthwise(d[i], 7, 1, 3),
                conv_bias(&format!("{p}.conv_dw")),
                Act::Identity,
                None,
            )?;
            let y = b.layer_norm(y, &format!("{p}.norm"), LN_EPS);
            let y = b.linear(
                y,
                4 * d[i],
                dense(&format!("{p}.mlp.fc1"), true),
                Act::Gelu,
                None,
            );
            let mut fc2 = dense(&format!("{p}.mlp.fc2"), true);
            fc2.folds.push(Fold::LayerScale(format!("{p}.gamma")));
            x = b.linear(y, d[i], fc2, Act::Identity, Some(x));
        }
    }
    let x = b.global_pool(x)?;
    let x = b.layer_norm(x, "head.norm", LN_EPS);
    b.linear(
        x,
        crate::labels::NUM_CLASSES,
        dense("head.fc", true),
        Act::Identity,
        None,
    );
    Ok(b.finish())
}

/// A pre-norm transformer block: LN, fused qkv, attention, projection +
/// residual; LN, MLP with `act`, projection + residual.
#[allow(clippy::too_many_arguments)]
fn transformer_block(
    b: &mut Builder,
    x: usize,
    dim: usize,
    mlp: usize,
    heads: usize,
    act: Act,
    names: &BlockNames,
    eps: f64,
) -> usize {
    let t = match b.program.shape(x) {
        Shape::Tokens { t, .. } => t,
        _ => 0,
    };
    let n1 = b.layer_norm(x, &names.norm1, eps);
    let mut qkv = names.qkv.clone();
    qkv.folds.push(Fold::ScaleRows {
        rows: dim,
        factor: ((dim / heads) as f64).powf(-0.5),
    });
    let q = b.linear(n1, 3 * dim, qkv, Act::Identity, None);
    let a = b.push(Op::Attention { heads }, q, Shape::Tokens { t, d: dim });
    let x = b.linear(a, dim, dense(&names.proj, true), Act::Identity, Some(x));
    let n2 = b.layer_norm(x, &names.norm2, eps);
    let h = b.linear(n2, mlp, dense(&names.fc1, true), act, None);
    b.linear(h, dim, dense(&names.fc2, true), Act::Identity, Some(x))
}

struct BlockNames {
    norm1: String,
    qkv: DenseWeights,
    proj: String,
    norm2: String,
    fc1: String,
    fc2: String,
}

/// A ViT under torchvision's or timm's names.
pub fn vit(arch: &'static str, c: vit::Config, n: &vit::Naming) -> Built<Program> {
    let mut b = Builder::new(arch, c.image_size);
    let x = b.conv(
        1,
        ConvGeometry::square(3, c.dim, c.patch, c.patch, 0),
        conv_bias(n.patch_embed),
        Act::Identity,
        None,
    )?;
    let mut x = b.push(
        Op::Tokens {
            class_token: n.class_token.into(),
            pos_embed: n.pos_embed.into(),
        },
        x,
        Shape::Tokens {
            t: c.tokens(),
            d: c.dim,
        },
    );
    for i in 0..c.depth {
        let p = format!("{}{i}", n.block);
        let names = BlockNames {
            norm1: format!("{p}.{}", n.norm1),
            qkv: DenseWeights {
                weights: vec![format!("{p}.{}", n.qkv_weight)],
                biases: vec![format!("{p}.{}", n.qkv_bias)],
                folds: vec![],
            },
            proj: format!("{p}.{}", n.attn_out),
            norm2: format!("{p}.{}", n.norm2),
            fc1: format!("{p}.{}", n.fc1),
            fc2: format!("{p}.{}", n.fc2),
        };
        x = transformer_block(
            &mut b,
            x,
            c.dim,
            c.mlp_dim,
            c.heads,
            Act::Gelu,
            &names,
            vit::LN_EPS,
        );
    }
    // LayerNorm is per token: normalising the class token alone is exact.
    let x = b.push(Op::ClassToken, x, Shape::Vector { d: c.dim });
    let x = b.layer_norm(x, n.norm, vit::LN_EPS);
    b.linear(
        x,
        crate::labels::NUM_CLASSES,
        dense(n.head, true),
        Act::Identity,
        None,
    );
    Ok(b.finish())
}

/// The shape of a CLIP image tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClipTower {
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_dim: usize,
    pub patch: usize,
    pub image_size: usize,
    pub projection_dim: usize,
}

/// CLIP's image tower under transformers' names, up to the projected
/// (unnormalised) embedding; the zero-shot head stays with the model.
pub fn clip_image_tower(arch: &'static str, c: ClipTower) -> Built<Program> {
    const EPS: f64 = 1e-5;
    let mut b = Builder::new(arch, c.image_size);
    let e = "vision_model.embeddings";
    let x = b.conv(
        1,
        ConvGeometry::square(3, c.dim, c.patch, c.patch, 0),
        ConvWeights {
            weight: format!("{e}.patch_embedding.weight"),
            bias: None,
            bn: None,
        },
        Act::Identity,
        None,
    )?;
    let side = c.image_size / c.patch;
    let x = b.push(
        Op::Tokens {
            class_token: format!("{e}.class_embedding"),
            pos_embed: format!("{e}.position_embedding.weight"),
        },
        x,
        Shape::Tokens {
            t: side * side + 1,
            d: c.dim,
        },
    );
    let mut x = b.layer_norm(x, "vision_model.pre_layrnorm", EPS);
    for i in 0..c.depth {
        let p = format!("vision_model.encoder.layers.{i}");
        let a = format!("{p}.self_attn");
        let names = BlockNames {
            norm1: format!("{p}.layer_norm1"),
            qkv: DenseWeights {
                weights: ["q", "k", "v"]
                    .map(|w| format!("{a}.{w}_proj.weight"))
                    .to_vec(),
                biases: ["q", "k", "v"]
                    .map(|w| format!("{a}.{w}_proj.bias"))
                    .to_vec(),
                folds: vec![],
            },
            proj: format!("{a}.out_proj"),
            norm2: format!("{p}.layer_norm2"),
            fc1: format!("{p}.mlp.fc1"),
            fc2: format!("{p}.mlp.fc2"),
        };
        x = transformer_block(
            &mut b,
            x,
            c.dim,
            c.mlp_dim,
            c.heads,
            Act::QuickGelu,
            &names,
            EPS,
        );
    }
    let x = b.push(Op::ClassToken, x, Shape::Vector { d: c.dim });
    let x = b.layer_norm(x, "vision_model.post_layernorm", EPS);
    b.linear(
        x,
        c.projection_dim,
        dense("visual_projection", false),
        Act::Identity,
        None,
    );
    Ok(b.finish())
}

/// The plan of a registered architecture at its 224 px input, or `None`
/// for those that keep candle's path (the demo's small CNN, whose speed
/// does not matter).
pub fn for_arch(arch: &'static str) -> Option<Built<Program>> {
    const SIZE: usize = 224;
    Some(match arch {
        "resnet18" | "resnet50" => resnet(arch, SIZE),
        "alexnet" => alexnet(AlexNetConfig::TORCHVISION, SIZE),
        "vgg16" => vgg(arch, VggConfig::VGG16, SIZE),
        "vgg19" => vgg(arch, VggConfig::VGG19, SIZE),
        "efficientnet_b0" => efficientnet(arch, &EfficientNetConfig::efficientnet(1.0, 1.0), SIZE),
        "tf_efficientnet_lite0" => efficientnet(
            arch,
            &EfficientNetConfig::tf_efficientnet_lite(1.0, 1.0),
            SIZE,
        ),
        "convnext_base" => convnext(arch, &ConvNextConfig::BASE, SIZE),
        "vit_b_32" => vit(arch, vit::Config::B_32, &vit::TORCHVISION),
        "vit_base_patch32_224" => vit(arch, vit::Config::B_32, &vit::TIMM),
        "clip_vit_large_patch14" => clip_image_tower(
            arch,
            ClipTower {
                dim: 1024,
                depth: 24,
                heads: 16,
                mlp_dim: 4096,
                patch: 14,
                image_size: 224,
                projection_dim: 768,
            },
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(arch: &'static str) -> Program {
        for_arch(arch).expect("planned").expect("valid")
    }

    /// The promises every plan keeps: one layout change (at the input),
    /// no channels-first value after it, every step reading an earlier
    /// value, and the logits (or embedding) last.
    fn check_common(p: &Program, out: usize) -> Summary {
        let s = p.summary();
        assert_eq!(s.layout_changes, 1, "{}: {s:?}", p.arch);
        assert_eq!(s.channels_first_values, 0, "{}", p.arch);
        assert_eq!(p.steps[0].op, Op::ToNhwc);
        assert!(
            !p.steps[1..].iter().any(|st| st.op == Op::ToNhwc),
            "{}",
            p.arch
        );
        for (i, st) in p.steps.iter().enumerate() {
            assert!(st.input <= i, "{}: step {i} reads a later value", p.arch);
        }
        assert_eq!(p.steps.last().unwrap().shape, Shape::Vector { d: out });
        s
    }

    #[test]
    fn resnet_plans_fold_every_batchnorm_and_fuse_every_shortcut() {
        let p = plan("resnet50");
        let s = check_common(&p, 1000);
        // 1 stem + 16 blocks x 3 + 4 projections = 53 convolutions.
        assert_eq!(s.convs, 53);
        assert_eq!(s.batchnorms_folded, 53);
        assert_eq!(s.fused_convs, 53);
        assert_eq!(s.residual_convs, 16);
        assert_eq!(s.pools, 2); // the stem's max-pool and the global pool
        assert_eq!(s.linears, 1);
        // The input's layout change and the pooled map's flatten.
        assert_eq!(s.other_steps, 2);
        let p18 = plan("resnet18");
        let s = check_common(&p18, 1000);
        assert_eq!((s.convs, s.residual_convs), (20, 8));
        // The last block reads 7x7x2048 (ResNet-50) and 7x7x512.
        let pooled = |p: &Program| {
            p.steps
                .iter()
                .find(|s| s.op == Op::AvgPool { out: (1, 1) })
                .map(|s| p.shape(s.input))
        };
        assert_eq!(pooled(&p), Some(Shape::nhwc(7, 7, 2048)));
        assert_eq!(pooled(&p18), Some(Shape::nhwc(7, 7, 512)));
        // 53 convolutions of the 4.09 published GMACs.
        let macs: u64 = p
            .steps
            .iter()
            .filter_map(|st| match &st.op {
                Op::Conv { geometry, .. } => {
                    let Shape::Map { h, w, .. } = p.shape(st.input) else {
                        unreachable!()
                    };
                    Some(geometry.macs(h, w).unwrap())
                }
                _ => None,
            })
            .sum();
        assert!((4.0e9..4.15e9).contains(&(macs as f64)), "{macs}");
    }

    #[test]
    fn plain_stacks_keep_their_flatten_order() {
        let p = plan("alexnet");
        let s = check_common(&p, 1000);
        assert_eq!((s.convs, s.linears, s.pools), (5, 3, 4));
        let fc1 = p
            .steps
            .iter()
            .find_map(|s| match &s.op {
                Op::Linear { weights, c_in, .. } if *c_in == 9216 => Some(weights.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(fc1.folds, [Fold::NchwColumns { c: 256, h: 6, w: 6 }]);
        let s = check_common(&plan("vgg16"), 1000);
        // 13 convolutions + fc1 (7x7) + fc2 (1x1), all with ReLU fused.
        assert_eq!((s.convs, s.fused_convs, s.pools), (15, 15, 6));
    }

    #[test]
    fn efficientnet_runs_depthwise_as_one_grouped_call_per_layer() {
        let p = plan("efficientnet_b0");
        let s = check_common(&p, 1000);
        // 16 blocks: each one depthwise, SE (2 convs + gate), projection;
        // 15 with an expansion; stem and head.
        assert_eq!(s.grouped_convs, 16);
        assert_eq!(s.convs, 1 + 16 * 4 + 15 + 1);
        assert_eq!(s.batchnorms_folded, 1 + 16 * 2 + 15 + 1);
        // Shortcuts: blocks with stride 1 and equal widths (9 of 16).
        assert_eq!(s.residual_convs, 9);
        // Every block's projection multiplies its input by the block's
        // gate, made just before it and read by it alone.
        let last = p.last_use();
        let gated: Vec<(usize, usize)> = p
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.op {
                Op::Conv { gate: Some(g), .. } => Some((i, g)),
                _ => None,
            })
            .collect();
        assert_eq!(gated.len(), 16);
        for (i, g) in gated {
            assert_eq!((g, last[g]), (i, i), "step {i}");
        }
        // Symmetric padding: no pad steps.
        assert!(!p.steps.iter().any(|s| matches!(s.op, Op::Pad(_))));
        // Lite's "SAME" padding pads its stride-2 layers (stem + 4 stages) first.
        let lite = plan("tf_efficientnet_lite0");
        check_common(&lite, 1000);
        let pads = lite
            .steps
            .iter()
            .filter(|s| matches!(s.op, Op::Pad(_)))
            .count();
        assert_eq!(pads, 5);
    }

    #[test]
    fn convnext_folds_layer_scale_and_adds_the_residual_in_the_product() {
        let p = plan("convnext_base");
        let s = check_common(&p, 1000);
        let blocks = 3 + 3 + 27 + 3;
        assert_eq!(s.grouped_convs, blocks);
        assert_eq!(s.convs, 1 + 3 + blocks);
        assert_eq!(s.linears, 2 * blocks + 1);
        assert_eq!(s.residual_linears, blocks);
        assert_eq!(s.layer_norms, 1 + 3 + blocks + 1);
        let scaled = p
            .steps
            .iter()
            .filter(|s| {
                matches!(&s.op, Op::Linear { weights, .. }
                    if matches!(weights.folds[..], [Fold::LayerScale(_)]))
            })
            .count();
        assert_eq!(scaled, blocks);
    }

    #[test]
    fn transformers_scale_queries_once_and_fuse_residuals() {
        for arch in ["vit_b_32", "vit_base_patch32_224"] {
            let p = plan(arch);
            let s = check_common(&p, 1000);
            assert_eq!(s.attentions, 12);
            assert_eq!(s.residual_linears, 24);
            assert_eq!(s.layer_norms, 25);
            assert_eq!(p.steps[2].shape, Shape::Tokens { t: 50, d: 768 });
            let scale = p.steps.iter().find_map(|s| match &s.op {
                Op::Linear { weights, .. } => weights.folds.first().cloned(),
                _ => None,
            });
            assert_eq!(
                scale,
                Some(Fold::ScaleRows {
                    rows: 768,
                    factor: 0.125
                })
            );
        }
        let p = plan("clip_vit_large_patch14");
        let s = check_common(&p, 768);
        assert_eq!((s.attentions, s.layer_norms), (24, 2 * 24 + 2));
        assert_eq!(p.steps[2].shape, Shape::Tokens { t: 257, d: 1024 });
        // q, k and v are stacked into one product.
        let qkv = p
            .steps
            .iter()
            .find_map(|s| match &s.op {
                Op::Linear { weights, c_out, .. } if *c_out == 3 * 1024 => Some(weights.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(qkv.weights.len(), 3);
        assert!(qkv.weights[1].ends_with("k_proj.weight"));
    }

    #[test]
    fn a_layout_change_after_the_input_is_counted() {
        let mut p = plan("resnet18");
        let s = p.summary();
        assert_eq!((s.layout_changes, s.channels_first_values), (1, 0));
        // A step that left a value channels-first would be caught.
        if let Shape::Map { layout, .. } = &mut p.steps[3].shape {
            *layout = Layout::Nchw;
        }
        let s = p.summary();
        assert_eq!((s.layout_changes, s.channels_first_values), (3, 1));
    }

    #[test]
    fn last_use_covers_residuals_and_gates() {
        let p = plan("resnet18");
        let last = p.last_use();
        // The max-pool's output (value 3) feeds the first block's first
        // conv and, as its shortcut, the block's last conv.
        let first_block_last = p
            .steps
            .iter()
            .position(|s| {
                matches!(
                    s.op,
                    Op::Conv {
                        residual: Some(3),
                        ..
                    }
                )
            })
            .unwrap();
        assert_eq!(last[3], first_block_last);
        let names = p.tensor_names();
        assert!(names.contains(&"layer4.1.bn2.running_var".to_string()));
        assert_eq!(names.len(), 20 * 5 + 2);
    }

    #[test]
    fn every_plan_is_valid_at_its_input_size() {
        for a in crate::models::ARCHITECTURES {
            match for_arch(a.name) {
                Some(p) => {
                    let p = p.unwrap_or_else(|e| panic!("{}: {e}", a.name));
                    assert_eq!(p.arch, a.name);
                }
                None => assert_eq!(a.name, "shapes_cnn"),
            }
        }
    }

    #[test]
    fn the_reference_activations() {
        assert_eq!(Act::Relu.apply(-2.0), 0.0);
        assert_eq!(Act::Relu6.apply(7.5), 6.0);
        assert!((Act::Sigmoid.apply(0.0) - 0.5).abs() < 1e-7);
        // erf-GELU(1) = 0.8413447..., QuickGELU(1) = 0.8457958...
        assert!((Act::Gelu.apply(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((Act::Gelu.apply(-3.0) + 0.004_049_8).abs() < 1e-6);
        assert!((Act::QuickGelu.apply(1.0) - 0.845_795_8).abs() < 1e-6);
        assert!((Act::Silu.apply(2.0) - 1.761_594_2).abs() < 1e-6);
        assert!((erf(0.5) - 0.520_499_9).abs() < 1e-7);
        assert!((erf(3.0) - 0.999_977_9).abs() < 1e-7);
        let codes: std::collections::HashSet<_> = [
            Act::Identity,
            Act::Relu,
            Act::Relu6,
            Act::Silu,
            Act::Gelu,
            Act::QuickGelu,
            Act::Sigmoid,
        ]
        .map(Act::code)
        .into();
        assert_eq!(codes.len(), 7);
    }
}
