//! A layer plan bound to a checkpoint's tensors and executed: weights are
//! read in f32, folded (BatchNorm into convolutions, layer scale and query
//! scaling into linear layers, flatten order into columns), laid out for
//! the kernels (KRSC filters) and rounded once to the model's dtype. The
//! forward pass walks the plan, one op per step, dropping each value after
//! its last reader.

use candle_core::{DType, IndexOp, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::cpu::WeightOrder;
use super::geometry::{ConvGeometry, OIHW_TO_KRSC};
use super::ops::{ConvOp, GateOp, LinearOp, PoolOp};
use super::program::{ConvWeights, DenseWeights, Fold, Op, Program, Shape};

/// One step with its tensors.
enum Bound {
    ToNhwc,
    Conv {
        op: Op,
        weight: Tensor,
        bias: Tensor,
        /// How `weight` holds the filters (`prepare`).
        filters: WeightOrder,
    },
    Pad([usize; 4]),
    Pool(PoolOp),
    LayerNorm {
        weight: Tensor,
        bias: Tensor,
        eps: f32,
    },
    Linear {
        op: Op,
        weight: Tensor,
        /// How `weight` holds the matrix (`prepare`).
        order: WeightOrder,
        bias: Tensor,
    },
    Tokens {
        class_token: Tensor,
        pos_embed: Tensor,
    },
    Attention(usize),
    ClassToken,
    Flatten,
}

/// A model on the channels-last path: NCHW crops in (a permuted view of
/// NHWC data costs nothing), logits out.
pub struct ChannelsLastNet {
    program: Program,
    steps: Vec<Bound>,
    last_use: Vec<usize>,
    /// On the CPU, the batch in parts of this many images, each carried
    /// through the whole plan by one thread at a time (`split_batch`).
    images_per_thread: Option<usize>,
}

/// Read a convolution's weight and bias in f32 and fold its BatchNorm:
/// `w * s`, `(b - mean) * s + beta` with `s = gamma / sqrt(var + eps)`.
fn conv_weights(
    vb: &VarBuilder,
    cw: &ConvWeights,
    dims: (usize, usize, usize, usize),
) -> Result<(Tensor, Tensor)> {
    let c_out = dims.0;
    let mut w = vb.get(dims, &cw.weight)?;
    let mut b = match &cw.bias {
        Some(name) => vb.get(c_out, name)?,
        None => Tensor::zeros(c_out, DType::F32, w.device())?,
    };
    if let Some((bn, eps)) = &cw.bn {
        let get = |t: &str| vb.get(c_out, &format!("{bn}.{t}"));
        let (gamma, beta, mean, var) = (
            get("weight")?,
            get("bias")?,
            get("running_mean")?,
            get("running_var")?,
        );
        let scale = (gamma / (var + *eps)?.sqrt()?)?;
        w = w.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
        b = ((b - mean)? * &scale)?.add(&beta)?;
    }
    Ok((w, b))
}

/// How a weight's rows hold their inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Columns {
    /// As the kernels read them.
    Kernel,
    /// Channels first, `[c, h, w]` (a checkpoint's OIHW filters; a linear
    /// layer after PyTorch's NCHW flatten) where the kernels read `[h, w,
    /// c]` (KRSC; the channels-last flatten).
    ChannelsFirst(usize, usize, usize),
}

/// Read a linear layer's `[out, in]` matrix and bias in f32, stacked and
/// folded as the plan says; the columns' order is left to `prepare` (the
/// folds that scale rows commute with it).
fn dense_weights(
    vb: &VarBuilder,
    dw: &DenseWeights,
    c_in: usize,
    c_out: usize,
) -> Result<(Tensor, Tensor, Columns)> {
    let part = c_out / dw.weights.len().max(1);
    let read = |name: &String| -> Result<Tensor> {
        // A 1x1 convolution's `[out, in, 1, 1]` is the same matrix.
        vb.get((part, c_in), name)
            .or_else(|_| vb.get((part, c_in, 1, 1), name)?.reshape((part, c_in)))
    };
    let ws = dw.weights.iter().map(read).collect::<Result<Vec<_>>>()?;
    let mut w = Tensor::cat(&ws, 0)?;
    let mut b = if dw.biases.is_empty() {
        Tensor::zeros(c_out, DType::F32, w.device())?
    } else {
        let bs = dw
            .biases
            .iter()
            .map(|n| vb.get(part, n))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&bs, 0)?
    };
    let mut columns = Columns::Kernel;
    for fold in &dw.folds {
        match fold {
            Fold::NchwColumns { c, h, w } => columns = Columns::ChannelsFirst(*c, *h, *w),
            Fold::ScaleRows { rows, factor } => {
                let scale: Vec<f32> = (0..c_out)
                    .map(|i| if i < *rows { *factor as f32 } else { 1.0 })
                    .collect();
                let scale = Tensor::from_vec(scale, c_out, w.device())?;
                w = w.broadcast_mul(&scale.reshape((c_out, 1))?)?;
                b = (b * scale)?;
            }
            Fold::LayerScale(name) => {
                let gamma = vb.get(c_out, name)?;
                w = w.broadcast_mul(&gamma.reshape((c_out, 1))?)?;
                b = (b * gamma)?;
            }
        }
    }
    Ok((w, b, columns))
}

/// A weight as the kernels take it, in the model's `dtype`: on the CPU in
/// f32, prepared once (`cpu::prepare`: packed for the product, reordered
/// to KRSC row by row as it is packed; `cpu::winograd_filters`: a 3x3
/// or 5x5 stride-1 convolution transformed for Winograd) in place of
/// the checkpoint's rows, so that no call packs them; elsewhere (cuDNN and
/// cuBLASLt take KRSC and `[m, k]` rows, half formats the references) as
/// rows in the kernels' order. `w`: `[m, ..]` f32 rows holding their
/// inputs as `columns` says; `conv`: the convolution it belongs to, `None`
/// for a linear layer (then `[m, k]` rows out).
fn prepare(
    w: Tensor,
    columns: Columns,
    conv: Option<&ConvGeometry>,
    dtype: DType,
) -> Result<(Tensor, WeightOrder)> {
    let m = w.dim(0)?;
    let k = w.elem_count() / m.max(1);
    let cpu_f32 = w.device().is_cpu() && dtype == DType::F32;
    if cpu_f32 && conv.is_none_or(super::cpu::takes_prepared) {
        let packed = with_values(&w, |values| match columns {
            Columns::Kernel => super::cpu::prepare(values, k, m),
            Columns::ChannelsFirst(c, h, wd) => {
                super::cpu::prepare_channels_first(values, m, (c, h, wd))
            }
        })?;
        let n = packed.len();
        return Ok((
            Tensor::from_vec(packed, n, w.device())?,
            WeightOrder::Packed,
        ));
    }
    let w = match columns {
        Columns::Kernel => w,
        Columns::ChannelsFirst(c, h, wd) => w.reshape((m, c, h, wd))?.permute(OIHW_TO_KRSC)?,
    };
    let w = w.to_dtype(dtype)?.contiguous()?;
    let w = if conv.is_some() {
        w
    } else {
        w.reshape((m, k))?
    };
    if let Some(g) = conv.filter(|_| cpu_f32) {
        if let Some(u) = with_values(&w, |krsc| super::cpu::winograd_filters(g, krsc))? {
            let n = u.len();
            return Ok((Tensor::from_vec(u, n, w.device())?, WeightOrder::Winograd));
        }
    }
    Ok((w, WeightOrder::Rows))
}

/// `f` over an f32 tensor's values, read in place where it is contiguous
/// on the CPU (a copy would add a large layer's size to the peak memory
/// of loading it).
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(f(&v[a..b]));
        }
    }
    Ok(f(&t.flatten_all()?.to_vec1::<f32>()?))
}

impl ChannelsLastNet {
    /// Bind `program` to the tensors under `vb`, in `vb`'s dtype.
    pub fn new(program: Program, vb: VarBuilder) -> Result<ChannelsLastNet> {
        let dtype = vb.dtype();
        let vb = vb.set_dtype(DType::F32);
        let cast = |t: Tensor| t.to_dtype(dtype)?.contiguous();
        let mut steps = Vec::with_capacity(program.steps.len());
        for (i, step) in program.steps.iter().enumerate() {
            let input = program.shape(step.input);
            steps.push(match &step.op {
                Op::ToNhwc => Bound::ToNhwc,
                Op::Conv {
                    geometry: g,
                    weights,
                    ..
                } => {
                    let dims = (g.c_out, g.c_in / g.groups, g.kernel[0], g.kernel[1]);
                    let (w, b) = conv_weights(&vb, weights, dims)?;
                    let columns = Columns::ChannelsFirst(dims.1, dims.2, dims.3);
                    let (weight, filters) = prepare(w, columns, Some(g), dtype)?;
                    Bound::Conv {
                        op: step.op.clone(),
                        filters,
                        weight,
                        bias: cast(b)?,
                    }
                }
                Op::Pad(p) => Bound::Pad(*p),
                Op::MaxPool { k, stride, pad } => Bound::Pool(PoolOp::Max {
                    k: *k,
                    stride: *stride,
                    pad: *pad,
                }),
                Op::AvgPool { out } => Bound::Pool(PoolOp::Avg { out: *out }),
                Op::LayerNorm { weight, bias, eps } => {
                    let d = input.last();
                    Bound::LayerNorm {
                        weight: cast(vb.get(d, weight)?)?,
                        bias: cast(vb.get(d, bias)?)?,
                        eps: *eps as f32,
                    }
                }
                Op::Linear {
                    c_in,
                    c_out,
                    weights,
                    ..
                } => {
                    let (w, b, columns) = dense_weights(&vb, weights, *c_in, *c_out)?;
                    let (weight, order) = prepare(w, columns, None, dtype)?;
                    Bound::Linear {
                        op: step.op.clone(),
                        weight,
                        order,
                        bias: cast(b)?,
                    }
                }
                Op::Tokens {
                    class_token,
                    pos_embed,
                } => {
                    let Shape::Tokens { t, d } = step.shape else {
                        candle_core::bail!("step {i}: tokens without a token shape");
                    };
                    let cls = vb.get_unchecked(class_token)?;
                    let pos = vb.get_unchecked(pos_embed)?;
                    if cls.elem_count() != d || pos.elem_count() != t * d {
                        candle_core::bail!(
                            "{class_token} {:?} / {pos_embed} {:?}: expected {d} and {t}x{d} values",
                            cls.shape(),
                            pos.shape()
                        );
                    }
                    Bound::Tokens {
                        class_token: cast(cls.reshape((1, 1, d))?)?,
                        pos_embed: cast(pos.reshape((1, t, d))?)?,
                    }
                }
                Op::Attention { heads } => Bound::Attention(*heads),
                Op::ClassToken => Bound::ClassToken,
                Op::Flatten => Bound::Flatten,
            });
        }
        let last_use = program.last_use();
        Ok(ChannelsLastNet {
            program,
            steps,
            last_use,
            images_per_thread: None,
        })
    }

    /// Run batches on the CPU in parts of `images` images, the threads
    /// taking parts rather than sharing each layer: a part's values stay
    /// in cache from layer to layer, where a whole batch's spill to
    /// memory; the weights are read once per part. `None`: whole batches.
    pub fn split_batch(self, images: Option<usize>) -> ChannelsLastNet {
        ChannelsLastNet {
            images_per_thread: images.filter(|&n| n > 0),
            ..self
        }
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    fn step(&self, i: usize, values: &[Option<Tensor>]) -> Result<Tensor> {
        let value = |v: usize| read(values, v);
        let x = value(self.program.steps[i].input)?;
        match &self.steps[i] {
            // A permuted view of NHWC data is contiguous again here: free.
            Bound::ToNhwc => x.permute((0, 2, 3, 1))?.contiguous(),
            Bound::Conv {
                op,
                weight,
                bias,
                filters,
            } => conv(x, op, (weight, bias, *filters), values),
            Bound::Pad([top, bottom, left, right]) => x
                .pad_with_zeros(1, *top, *bottom)?
                .pad_with_zeros(2, *left, *right)?
                .contiguous(),
            Bound::Pool(op) => x.apply_op1_no_bwd(op),
            Bound::LayerNorm { weight, bias, eps } => layer_norm(x, weight, bias, *eps),
            Bound::Linear {
                op,
                weight,
                order,
                bias,
            } => {
                let Op::Linear {
                    c_in,
                    c_out,
                    act,
                    residual,
                    ..
                } = op
                else {
                    unreachable!("bound from a linear step")
                };
                let dims = x.dims().to_vec();
                let rows = x.elem_count() / c_in;
                let residual = match residual {
                    Some(r) => Some(value(*r)?.reshape((rows, *c_out))?),
                    None => None,
                };
                let op = LinearOp {
                    act: *act,
                    residual,
                    weights: *order,
                };
                let y = x
                    .reshape((rows, *c_in))?
                    .apply_op3_no_bwd(weight, bias, &op)?;
                let mut out = dims;
                if let Some(last) = out.last_mut() {
                    *last = *c_out;
                }
                y.reshape(out)
            }
            Bound::Tokens {
                class_token,
                pos_embed,
            } => {
                let (n, h, w, d) = x.dims4()?;
                let patches = x.reshape((n, h * w, d))?;
                let cls = class_token.broadcast_as((n, 1, d))?;
                Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(pos_embed)
            }
            Bound::Attention(heads) => attention(x, *heads),
            Bound::ClassToken => x.i((.., 0))?.contiguous(),
            Bound::Flatten => x.flatten_from(1),
        }
    }
}

/// Value `v` of a forward pass.
fn read(values: &[Option<Tensor>], v: usize) -> Result<&Tensor> {
    values[v]
        .as_ref()
        .ok_or_else(|| candle_core::Error::msg(format!("value {v} dropped too early")))
}

/// A convolution step: `act(conv(x [* gate]) + bias [+ residual])`, the
/// gate and residual read from `values`. On the CPU in f32 the gate goes
/// into the op (whose kernels fold it into the weights where that costs
/// less, `cpu::gated_conv`); elsewhere it gates a copy of the input first.
fn conv(
    x: &Tensor,
    op: &Op,
    (weight, bias, filters): (&Tensor, &Tensor, WeightOrder),
    values: &[Option<Tensor>],
) -> Result<Tensor> {
    let Op::Conv {
        geometry,
        act,
        residual,
        gate,
        ..
    } = op
    else {
        unreachable!("bound from a conv step")
    };
    let mut x = x.clone();
    let mut in_op = None;
    if let Some(g) = gate {
        let g = read(values, *g)?;
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            in_op = Some(g.clone());
        } else {
            x = x.apply_op2_no_bwd(g, &GateOp)?;
        }
    }
    let op = ConvOp {
        geometry: *geometry,
        act: *act,
        residual: residual.map(|r| read(values, r)).transpose()?.cloned(),
        gate: in_op,
        filters,
    };
    x.apply_op3_no_bwd(weight, bias, &op)
}

/// Layer norm over the last dimension: on the CPU in f32 ours
/// (`cpu::layer_norm`), elsewhere candle's fused kernel.
fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    let on_ours = x.device().is_cpu() && x.dtype() == DType::F32;
    let d = x.dims().last().copied().unwrap_or(0);
    if !on_ours || weight.elem_count() != d || bias.elem_count() != d {
        // (candle names a mismatch of shapes)
        return candle_nn::ops::layer_norm(x, weight, bias, eps);
    }
    let y = with_values(x, |v| {
        with_values(weight, |w| {
            with_values(bias, |b| super::cpu::layer_norm(v, w, b, eps))
        })
    })???;
    Tensor::from_vec(y, x.shape(), x.device())
}

/// Softmax attention over `[n, t, 3 d]` tokens holding q (already scaled),
/// k and v: on the CPU in f32 ours (`cpu::attention`); elsewhere the
/// scores stay in the model's dtype (candle's softmax kernel accumulates
/// in f32) and cuBLAS makes both products.
fn attention(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    let (n, t, d3) = qkv.dims3()?;
    let d = d3 / 3;
    if d3 % 3 != 0 || heads == 0 || d % heads != 0 {
        candle_core::bail!("attention: {d3} values a token are not q, k and v of {heads} heads");
    }
    if qkv.device().is_cpu() && qkv.dtype() == DType::F32 {
        // Our products per image and head, from the tokens in place.
        let out = with_values(qkv, |v| super::cpu::attention(v, (n, t, d), heads))?;
        return Tensor::from_vec(out, (n, t, d), qkv.device());
    }
    let qkv = qkv
        .reshape((n, t, 3, heads, d / heads))?
        .permute((2, 0, 3, 1, 4))?;
    let q = qkv.get(0)?.contiguous()?;
    let k = qkv.get(1)?.contiguous()?;
    let v = qkv.get(2)?.contiguous()?;
    let scores = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
    scores
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((n, t, d))?
        .contiguous()
}

impl Module for ChannelsLastNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        match self.images_per_thread {
            Some(per) if x.device().is_cpu() && n > per => {
                use rayon::prelude::*;
                let parts = (0..n)
                    .step_by(per)
                    .map(|at| x.narrow(0, at, per.min(n - at)))
                    .collect::<Result<Vec<_>>>()?;
                let logits = parts
                    .par_iter()
                    .map(|part| self.forward_whole(part))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&logits, 0)
            }
            _ => self.forward_whole(x),
        }
    }
}

impl ChannelsLastNet {
    /// The plan over all of `x`, one step after another (each step's
    /// kernel shares its work among the threads).
    fn forward_whole(&self, x: &Tensor) -> Result<Tensor> {
        let mut values: Vec<Option<Tensor>> = vec![None; self.steps.len() + 1];
        values[0] = Some(x.clone());
        for i in 0..self.steps.len() {
            let y = self
                .step(i, &values)
                .map_err(|e| e.context(format!("{} step {i}", self.program.arch)))?;
            values[i + 1] = Some(y);
            // Drop what no later step reads (the output is read below).
            for (v, slot) in values.iter_mut().enumerate().take(i + 1) {
                if self.last_use[v] <= i {
                    *slot = None;
                }
            }
        }
        values
            .pop()
            .flatten()
            .ok_or_else(|| candle_core::Error::msg("an empty plan"))
    }
}
