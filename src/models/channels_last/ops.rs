//! The path's operations as candle custom ops over channels-last tensors.
//! On CUDA each runs our kernels (`cuda_conv`: cuDNN; `cuda_kernels`: our
//! own; `cuda_linear`: cuBLASLt). On the CPU, f32 convolutions and linear
//! layers run our fused CPU kernels (`cpu`); everything else (half
//! formats, pools, gates) a plain reference written for clarity. The tests
//! execute whole plans on the CPU and hold them to PyTorch's logits, so
//! what the GPU check compares on the device is the CUDA kernels alone.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Shape};
use candle_core::{Result, Tensor};

use super::cpu::{Epilogue, WeightOrder, Weights};
use super::geometry::ConvGeometry;
use super::program::Act;

/// `act(conv(x, w) + bias [+ residual])`. Inputs: `x` `[n, h, w, c]`, `w`
/// KRSC `[k, r, s, c / groups]`, `bias` `[k]`, all contiguous and of one
/// dtype; the residual (if any) `[n, oh, ow, k]` contiguous.
pub struct ConvOp {
    pub geometry: ConvGeometry,
    pub act: Act,
    pub residual: Option<Tensor>,
    /// On the CPU, a gate the input is multiplied by first (`[n, 1, 1,
    /// c]`, squeeze-excite): the f32 kernels fold it into a pointwise
    /// layer's packed weights image by image where that costs less
    /// (`cpu::gated_conv`). On CUDA the caller gates the input instead.
    pub gate: Option<Tensor>,
    /// How the weight input holds the filters: KRSC (`Rows`, any device
    /// and dtype), or prepared once on the CPU in f32 as one flat tensor
    /// (`Packed` by `cpu::prepare`, `Winograd` by `cpu::winograd_filters`).
    pub filters: WeightOrder,
}

/// A pooling over each channel of `[n, h, w, c]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolOp {
    /// `k x k`, stride, zero padding that never fills a whole window.
    Max { k: usize, stride: usize, pad: usize },
    /// PyTorch's adaptive average pool: output cell `i` of `o` averages
    /// input rows `floor(i h / o) .. ceil((i + 1) h / o)`.
    Avg { out: (usize, usize) },
}

/// `x * gate`: `x` `[n, h, w, c]`, `gate` `[n, 1, 1, c]`.
pub struct GateOp;

/// `act(x w^T + bias [+ residual])`: `x` `[rows, k]`, `w` `[m, k]`, `bias`
/// `[m]`, residual `[rows, m]`; contiguous, one dtype.
pub struct LinearOp {
    pub act: Act,
    pub residual: Option<Tensor>,
    /// `Rows` (`[m, k]`), or `Packed` on the CPU in f32 (`cpu::prepare`):
    /// one flat tensor.
    pub weights: WeightOrder,
}

impl PoolOp {
    /// Output height and width on an `h x w` input.
    pub fn out_hw(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        match *self {
            PoolOp::Max { k, stride, pad } => ConvGeometry::square(1, 1, k, stride, pad)
                .out_hw(h, w)
                .map_err(candle_core::Error::wrap),
            PoolOp::Avg { out } => Ok(out),
        }
    }

    /// Rows `[start, end)` of output cell `i` of `o` over `n` inputs.
    pub fn avg_bin(i: usize, o: usize, n: usize) -> (usize, usize) {
        (i * n / o, ((i + 1) * n).div_ceil(o))
    }
}

/// A contiguous tensor's values widened to f32, with its dims.
fn to_f32(s: &CpuStorage, l: &Layout) -> Result<Vec<f32>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("channels-last reference ops take contiguous inputs");
    };
    Ok(match s {
        CpuStorage::F32(v) => v[start..end].to_vec(),
        CpuStorage::F16(v) => v[start..end].iter().map(|x| x.to_f32()).collect(),
        CpuStorage::BF16(v) => v[start..end].iter().map(|x| x.to_f32()).collect(),
        other => candle_core::bail!("unsupported dtype {:?}", other.dtype()),
    })
}

/// f32 values back in `dtype`.
fn from_f32(v: Vec<f32>, dtype: DType) -> Result<CpuStorage> {
    Ok(match dtype {
        DType::F32 => CpuStorage::F32(v),
        DType::F16 => CpuStorage::F16(v.into_iter().map(half::f16::from_f32).collect()),
        DType::BF16 => CpuStorage::BF16(v.into_iter().map(half::bf16::from_f32).collect()),
        other => candle_core::bail!("unsupported dtype {other:?}"),
    })
}

/// A contiguous f32 tensor's values, in place.
fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        _ => candle_core::bail!("channels-last ops take contiguous f32 inputs here"),
    }
}

type Input3<'a> = (&'a CpuStorage, &'a Layout);

/// An f32 weight in place, laid out as `order` says: the checkpoint's
/// rows (any shape, contiguous), or a prepared flat tensor of `len` values;
/// `None` for any other format or layout.
fn weight_values<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    order: WeightOrder,
    len: usize,
) -> Option<Weights<'a>> {
    let CpuStorage::F32(v) = s else { return None };
    let (start, end) = l.contiguous_offsets()?;
    let prepared = order != WeightOrder::Rows;
    (!prepared || (l.dims().len() == 1 && end - start == len)).then(|| Weights {
        values: &v[start..end],
        order,
    })
}

/// The values of an op's three inputs in place, when all are f32 (the
/// fused CPU kernels' format) and laid out as they take them; `None` sends
/// the op to the references.
#[allow(clippy::type_complexity)]
fn all_f32<'a>(
    x: Input3<'a>,
    (w, order, len): (Input3<'a>, WeightOrder, usize),
    b: Input3<'a>,
) -> Result<Option<(&'a [f32], Weights<'a>, &'a [f32])>> {
    match (x.0, weight_values(w.0, w.1, order, len), b.0) {
        (CpuStorage::F32(_), Some(wt), CpuStorage::F32(_)) => {
            Ok(Some((contiguous(x.0, x.1)?, wt, contiguous(b.0, b.1)?)))
        }
        _ => Ok(None),
    }
}

/// `f` on the residual's f32 values (read in place), or on `None`.
fn with_residual<R>(r: &Option<Tensor>, f: impl FnOnce(Option<&[f32]>) -> R) -> Result<R> {
    let Some(t) = r else {
        return Ok(f(None));
    };
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(s) => Ok(f(Some(contiguous(s, layout)?))),
        _ => candle_core::bail!("the residual is not on the CPU"),
    }
}

/// A gate's f32 values, checked to be `[n, 1, 1, c]`.
fn gate_values(t: &Tensor, (n, c): (usize, usize)) -> Result<Vec<f32>> {
    if t.dims4()? != (n, 1, 1, c) {
        candle_core::bail!("gate {:?} for {n} images of {c} channels", t.shape());
    }
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
}

/// NHWC values `x` (`hw` pixels of `c` per image) times their image's
/// gate `g` (`[n, c]`): the references' gate.
fn gate_values_in_place(x: &mut [f32], g: &[f32], (hw, c): (usize, usize)) {
    for (i, v) in x.iter_mut().enumerate() {
        *v *= g[(i / (hw * c)) * c + i % c];
    }
}

/// The residual tensor's values, checked to have `len` of them.
fn residual_values(r: &Option<Tensor>, len: usize) -> Result<Option<Vec<f32>>> {
    match r {
        None => Ok(None),
        Some(t) => {
            let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            if v.len() != len {
                candle_core::bail!("residual has {} values, the output {len}", v.len());
            }
            Ok(Some(v))
        }
    }
}

/// `act(y + bias[c] + residual)` in place over rows of `bias.len()`.
fn epilogue(y: &mut [f32], bias: &[f32], residual: Option<&[f32]>, act: Act) {
    let c = bias.len();
    for (i, v) in y.iter_mut().enumerate() {
        let r = residual.map_or(0.0, |r| r[i]);
        *v = act.apply(*v + bias[i % c] + r);
    }
}

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        "channels-last-conv"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        let (n, h, w, c) = xl.shape().dims4()?;
        let [kh, kw] = g.kernel;
        let prepared = super::cpu::prepared_conv_len(g, self.filters);
        let filters_ok = match prepared {
            None => wl.shape().dims4()? == (g.c_out, kh, kw, g.c_in / g.groups),
            Some(len) => wl.shape().elem_count() == len,
        };
        if c != g.c_in || !filters_ok {
            candle_core::bail!(
                "conv {g}: input {:?} or filter {:?} ({:?}) of the wrong shape",
                xl.shape(),
                wl.shape(),
                self.filters
            );
        }
        let gate = match &self.gate {
            Some(t) => Some(gate_values(t, (n, c))?),
            None => None,
        };
        let weights = ((ws, wl), self.filters, prepared.unwrap_or(0));
        if let Some((x, wt, bias)) = all_f32((xs, xl), weights, (bs, bl))? {
            let fast = with_residual(&self.residual, |r| {
                let ep = Epilogue {
                    bias,
                    residual: r,
                    act: self.act,
                };
                match &gate {
                    Some(gate) => super::cpu::gated_conv(g, x, (n, h, w), gate, wt, ep),
                    None => super::cpu::conv(g, x, (n, h, w), wt, ep),
                }
            })?;
            if let Some(y) = fast {
                let (oh, ow) = g.out_hw(h, w).map_err(candle_core::Error::wrap)?;
                return Ok((CpuStorage::F32(y), Shape::from((n, oh, ow, g.c_out))));
            }
        }
        if prepared.is_some() {
            candle_core::bail!(
                "conv {g}: filters prepared for the CPU's f32 kernels, given {:?} {:?}",
                xs.dtype(),
                wl.shape()
            );
        }
        if g.stride[0] != g.stride[1] || g.pad[0] != g.pad[1] || g.dilation[0] != g.dilation[1] {
            candle_core::bail!("conv {g}: the reference takes equal strides, pads and dilations");
        }
        // candle's NCHW convolution in f32 is the reference.
        let mut xv = to_f32(xs, xl)?;
        if let Some(gate) = &gate {
            gate_values_in_place(&mut xv, gate, (h * w, c));
        }
        let x = Tensor::from_vec(xv, (n, h, w, c), &Device::Cpu)?;
        let wt = Tensor::from_vec(to_f32(ws, wl)?, wl.shape(), &Device::Cpu)?;
        let bias = to_f32(bs, bl)?;
        let y = x
            .permute((0, 3, 1, 2))?
            .conv2d(
                &wt.permute((0, 3, 1, 2))?,
                g.pad[0],
                g.stride[0],
                g.dilation[0],
                g.groups,
            )?
            .permute((0, 2, 3, 1))?;
        let (_, oh, ow, _) = y.dims4()?;
        let mut y = y.flatten_all()?.to_vec1::<f32>()?;
        let residual = residual_values(&self.residual, y.len())?;
        epilogue(&mut y, &bias, residual.as_deref(), self.act);
        Ok((from_f32(y, xs.dtype())?, Shape::from((n, oh, ow, g.c_out))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if self.gate.is_some() {
            candle_core::bail!(
                "conv {}: on CUDA the caller gates the input (GateOp) before the convolution",
                self.geometry
            );
        }
        super::cuda_conv::conv(self, (xs, xl), (ws, wl), (bs, bl))
    }
}

impl CustomOp1 for PoolOp {
    fn name(&self) -> &'static str {
        "channels-last-pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, h, w, c) = l.shape().dims4()?;
        let (oh, ow) = self.out_hw(h, w)?;
        if let CpuStorage::F32(_) = s {
            let y = super::cpu::pool(self, contiguous(s, l)?, (n, h, w, c));
            return Ok((CpuStorage::F32(y), Shape::from((n, oh, ow, c))));
        }
        let x = to_f32(s, l)?;
        let mut y = vec![0f32; n * oh * ow * c];
        let at = |b: usize, iy: usize, ix: usize, ch: usize| x[((b * h + iy) * w + ix) * c + ch];
        for b in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ch in 0..c {
                        let v = match *self {
                            PoolOp::Max { k, stride, pad } => {
                                let mut m = f32::NEG_INFINITY;
                                for r in 0..k {
                                    for q in 0..k {
                                        let (iy, ix) = (oy * stride + r, ox * stride + q);
                                        if iy < pad || ix < pad || iy - pad >= h || ix - pad >= w {
                                            continue;
                                        }
                                        m = m.max(at(b, iy - pad, ix - pad, ch));
                                    }
                                }
                                m
                            }
                            PoolOp::Avg { out } => {
                                let (y0, y1) = PoolOp::avg_bin(oy, out.0, h);
                                let (x0, x1) = PoolOp::avg_bin(ox, out.1, w);
                                let mut sum = 0f64;
                                for iy in y0..y1 {
                                    for ix in x0..x1 {
                                        sum += at(b, iy, ix, ch) as f64;
                                    }
                                }
                                (sum / ((y1 - y0) * (x1 - x0)) as f64) as f32
                            }
                        };
                        y[((b * oh + oy) * ow + ox) * c + ch] = v;
                    }
                }
            }
        }
        Ok((from_f32(y, s.dtype())?, Shape::from((n, oh, ow, c))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda_kernels::pool(self, (s, l))
    }
}

impl CustomOp2 for GateOp {
    fn name(&self) -> &'static str {
        "channels-last-gate"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, h, w, c) = xl.shape().dims4()?;
        if gl.shape().dims4()? != (n, 1, 1, c) {
            candle_core::bail!("gate {:?} for input {:?}", gl.shape(), xl.shape());
        }
        if let (CpuStorage::F32(_), CpuStorage::F32(_)) = (xs, gs) {
            let y = super::cpu::gate(contiguous(xs, xl)?, contiguous(gs, gl)?, (n, h * w, c));
            return Ok((CpuStorage::F32(y), xl.shape().clone()));
        }
        let (mut x, g) = (to_f32(xs, xl)?, to_f32(gs, gl)?);
        gate_values_in_place(&mut x, &g, (h * w, c));
        Ok((from_f32(x, xs.dtype())?, xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda_kernels::gate((xs, xl), (gs, gl))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "channels-last-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, k) = xl.shape().dims2()?;
        let m = bl.shape().elem_count();
        let prepared = super::cpu::prepared_len(k, m);
        let weights_ok = match self.weights {
            WeightOrder::Rows => wl.shape().dims2()? == (m, k),
            _ => wl.shape().elem_count() == prepared,
        };
        if !weights_ok {
            candle_core::bail!(
                "linear: input {:?}, weight {:?} ({:?}), bias {:?}",
                xl.shape(),
                wl.shape(),
                self.weights,
                bl.shape()
            );
        }
        if let Some((x, wt, bias)) =
            all_f32((xs, xl), ((ws, wl), self.weights, prepared), (bs, bl))?
        {
            let y = with_residual(&self.residual, |r| {
                let ep = Epilogue {
                    bias,
                    residual: r,
                    act: self.act,
                };
                super::cpu::linear(x, wt, ep, (rows, k, m))
            })?;
            return Ok((CpuStorage::F32(y), Shape::from((rows, m))));
        }
        if self.weights != WeightOrder::Rows {
            candle_core::bail!(
                "linear: weights prepared for the CPU's f32 kernels, given {:?}",
                xs.dtype()
            );
        }
        let x = Tensor::from_vec(to_f32(xs, xl)?, (rows, k), &Device::Cpu)?;
        let wt = Tensor::from_vec(to_f32(ws, wl)?, (m, k), &Device::Cpu)?;
        let bias = to_f32(bs, bl)?;
        let mut y = x.matmul(&wt.t()?)?.flatten_all()?.to_vec1::<f32>()?;
        let residual = residual_values(&self.residual, y.len())?;
        epilogue(&mut y, &bias, residual.as_deref(), self.act);
        Ok((from_f32(y, xs.dtype())?, Shape::from((rows, m))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda_linear::linear(self, (xs, xl), (ws, wl), (bs, bl))
    }
}

/// Whether `device` runs these ops on our kernels (CUDA) rather than the
/// references.
pub fn on_kernels(device: &Device) -> bool {
    device.is_cuda()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    fn values(x: &Tensor) -> Vec<f32> {
        x.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The test's residual at element `i` of an NHWC output: it varies
    /// from pixel to pixel and channel to channel, so a residual read at
    /// the wrong place shows.
    fn residual_at(i: usize) -> f32 {
        (i * 37 % 11) as f32 * 0.05 - 0.2
    }

    /// The convolution by its definition, over NCHW data and an OIHW
    /// weight, then ReLU(+ bias + residual_at).
    #[allow(clippy::too_many_arguments)]
    fn direct(
        g: &ConvGeometry,
        x: &[f32],
        wt: &[f32],
        bias: &[f32],
        (n, h, w): (usize, usize, usize),
    ) -> (Vec<f32>, (usize, usize)) {
        let (oh, ow) = g.out_hw(h, w).unwrap();
        let (cg, kg, [kh, kw]) = (g.c_in / g.groups, g.c_out / g.groups, g.kernel);
        let mut y = vec![0f32; n * oh * ow * g.c_out];
        for b in 0..n {
            for k in 0..g.c_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0f64;
                        for ci in 0..cg {
                            let c = (k / kg) * cg + ci;
                            for r in 0..kh {
                                for q in 0..kw {
                                    let iy = (oy * g.stride[0] + r * g.dilation[0]) as isize
                                        - g.pad[0] as isize;
                                    let ix = (ox * g.stride[1] + q * g.dilation[1]) as isize
                                        - g.pad[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xv =
                                        x[((b * g.c_in + c) * h + iy as usize) * w + ix as usize];
                                    let wv = wt[((k * cg + ci) * kh + r) * kw + q];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        // Written channels-last.
                        let at = ((b * oh + oy) * ow + ox) * g.c_out + k;
                        y[at] = (acc as f32 + bias[k] + residual_at(at)).max(0.0);
                    }
                }
            }
        }
        (y, (oh, ow))
    }

    /// Filters prepared on the CPU (packed, Winograd) give the KRSC
    /// filters' output; prepared filters of the wrong size are refused with
    /// the layer and the layout named.
    #[test]
    fn prepared_filters_match_the_checkpoints_rows() {
        let mut rng = crate::util::SplitMix64(17);
        let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.next_unit() - 0.5).collect() };
        for g in [
            ConvGeometry::square(16, 24, 3, 1, 1),
            ConvGeometry::square(8, 20, 3, 2, 1),
            ConvGeometry::square(12, 70, 1, 1, 0),
        ] {
            let (n, h, w) = (2, 7, 9);
            let x = t(&rand(n * h * w * g.c_in), &[n, h, w, g.c_in]);
            let krsc =
                rand(g.c_out * 9 * g.c_in)[..g.c_out * g.kernel[0] * g.kernel[1] * g.c_in].to_vec();
            let dims = [g.c_out, g.kernel[0], g.kernel[1], g.c_in];
            let b = t(&rand(g.c_out), &[g.c_out]);
            let op = |filters| ConvOp {
                geometry: g,
                gate: None,
                act: Act::Silu,
                residual: None,
                filters,
            };
            let want = values(
                &x.apply_op3_no_bwd(&t(&krsc, &dims), &b, &op(WeightOrder::Rows))
                    .unwrap(),
            );
            let (prepared, order) = match super::super::cpu::winograd_filters(&g, &krsc) {
                Some(u) => (u, WeightOrder::Winograd),
                None => {
                    let k = g.kernel[0] * g.kernel[1] * g.c_in;
                    (
                        super::super::cpu::prepare(&krsc, k, g.c_out),
                        WeightOrder::Packed,
                    )
                }
            };
            let wp = t(&prepared, &[prepared.len()]);
            let got = values(&x.apply_op3_no_bwd(&wp, &b, &op(order)).unwrap());
            let worst = crate::models::channels_last::max_abs_diff(&got, &want);
            assert!(worst < 2e-5, "{g} {order:?}: {worst}");
            let short = t(&prepared[1..], &[prepared.len() - 1]);
            let err = x
                .apply_op3_no_bwd(&short, &b, &op(order))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("wrong shape") && err.contains(&format!("{order:?}")),
                "{err}"
            );
        }
    }

    /// The op (KRSC filter, NHWC data, residual, ReLU) against the
    /// convolution's definition: strides, padding, dilation and groups.
    #[test]
    fn conv_op_matches_the_definition() {
        let mut rng = crate::util::SplitMix64(7);
        let mut rand =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.next_unit() * 2.0 - 1.0).collect() };
        let cases = [
            ConvGeometry::square(4, 6, 3, 2, 1),
            ConvGeometry::depthwise(6, 5, 1, 2),
            ConvGeometry {
                groups: 2,
                dilation: [2, 2],
                ..ConvGeometry::square(4, 6, 3, 1, 2)
            },
            ConvGeometry::square(3, 8, 4, 4, 0),
            // Tap rows read in place (`cpu::reads_in_place`): an RGB stem
            // with border pixels, overlapping stride-1 rows, two panels.
            ConvGeometry::square(3, 8, 7, 2, 3),
            ConvGeometry::square(6, 5, 3, 1, 1),
            ConvGeometry::square(4, 70, 5, 1, 2),
        ];
        for g in cases {
            let (n, h, w) = (2, 9, 11);
            let xv = rand(n * g.c_in * h * w);
            let wv = rand(g.c_out * g.c_in / g.groups * g.kernel[0] * g.kernel[1]);
            let bv = rand(g.c_out);
            let (expect, (oh, ow)) = direct(&g, &xv, &wv, &bv, (n, h, w));
            let x = t(&xv, &[n, g.c_in, h, w])
                .permute((0, 2, 3, 1))
                .unwrap()
                .contiguous()
                .unwrap();
            let wk = t(&wv, &[g.c_out, g.c_in / g.groups, g.kernel[0], g.kernel[1]])
                .permute(super::super::geometry::OIHW_TO_KRSC)
                .unwrap()
                .contiguous()
                .unwrap();
            let op = ConvOp {
                geometry: g,
                gate: None,
                act: Act::Relu,
                residual: Some(t(
                    &(0..n * oh * ow * g.c_out)
                        .map(residual_at)
                        .collect::<Vec<_>>(),
                    &[n, oh, ow, g.c_out],
                )),
                filters: WeightOrder::Rows,
            };
            let y = x.apply_op3_no_bwd(&wk, &t(&bv, &[g.c_out]), &op).unwrap();
            assert_eq!(y.dims(), [n, oh, ow, g.c_out], "{g}");
            let d = crate::models::channels_last::max_abs_diff(&values(&y), &expect);
            assert!(d < 1e-5, "{g}: {d}");
        }
    }

    #[test]
    fn reference_pools_match_pytorch_semantics() {
        // One channel, 1x4 row [1, 5, 2, 8] and 3x3 max with pad 1.
        let x = t(&[1.0, 5.0, 2.0, 8.0], &[1, 1, 4, 1]);
        let max = PoolOp::Max {
            k: 3,
            stride: 2,
            pad: 1,
        };
        let y = x.apply_op1_no_bwd(&max).unwrap();
        assert_eq!(y.dims(), [1, 1, 2, 1]);
        assert_eq!(values(&y), [5.0, 8.0]);
        // Adaptive 4 -> 3 over columns: bins [0,2), [1,3), [2,4).
        let avg = PoolOp::Avg { out: (1, 3) };
        assert_eq!(values(&x.apply_op1_no_bwd(&avg).unwrap()), [3.0, 3.5, 5.0]);
        // Channels stay apart: [n=1, 1, 2, c=2].
        let x = t(&[1.0, 10.0, 3.0, 30.0], &[1, 1, 2, 2]);
        let g = x.apply_op1_no_bwd(&PoolOp::Avg { out: (1, 1) }).unwrap();
        assert_eq!(values(&g), [2.0, 20.0]);
    }

    /// A gate given to the op equals gating the input first: on a
    /// pointwise layer (the kernels fold it into the weights) and a
    /// grouped one (no fast kernel: the reference gates the input).
    #[test]
    fn a_gate_in_the_op_gates_the_input() {
        let mut rng = crate::util::SplitMix64(21);
        let mut rand =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.next_unit() * 2.0 - 1.0).collect() };
        let grouped = ConvGeometry {
            groups: 2,
            ..ConvGeometry::square(4, 6, 3, 1, 1)
        };
        for g in [ConvGeometry::square(8, 5, 1, 1, 0), grouped] {
            let (n, h, w) = (2, 6, 7);
            let x = t(&rand(n * h * w * g.c_in), &[n, h, w, g.c_in]);
            let gate = t(&rand(n * g.c_in), &[n, 1, 1, g.c_in]);
            let [kh, kw] = g.kernel;
            let krsc = rand(g.c_out * kh * kw * g.c_in / g.groups);
            // The pointwise layer's filters packed, as `net` loads them.
            let (wk, filters) = if g.groups == 1 {
                let packed = super::super::cpu::prepare(&krsc, g.c_in, g.c_out);
                (t(&packed, &[packed.len()]), WeightOrder::Packed)
            } else {
                let dims = [g.c_out, kh, kw, g.c_in / g.groups];
                (t(&krsc, &dims), WeightOrder::Rows)
            };
            let b = t(&rand(g.c_out), &[g.c_out]);
            let op = |gate| ConvOp {
                geometry: g,
                act: Act::Silu,
                residual: None,
                gate,
                filters,
            };
            let want = x
                .apply_op2_no_bwd(&gate, &GateOp)
                .unwrap()
                .apply_op3_no_bwd(&wk, &b, &op(None))
                .unwrap();
            let got = x
                .apply_op3_no_bwd(&wk, &b, &op(Some(gate.clone())))
                .unwrap();
            let d = crate::models::channels_last::max_abs_diff(&values(&got), &values(&want));
            assert!(d < 1e-5, "{g}: {d}");
            let wrong = t(&rand(g.c_in), &[1, 1, 1, g.c_in]);
            assert!(
                x.apply_op3_no_bwd(&wk, &b, &op(Some(wrong))).is_err(),
                "{g}"
            );
        }
    }

    #[test]
    fn reference_gate_and_linear() {
        let x = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], &[2, 1, 2, 2]);
        let g = t(&[1.0, 0.5, 2.0, 0.0], &[2, 1, 1, 2]);
        let y = x.apply_op2_no_bwd(&g, &GateOp).unwrap();
        assert_eq!(values(&y), [1.0, 1.0, 3.0, 2.0, 10.0, 0.0, 14.0, 0.0]);
        let bad = t(&[1.0, 2.0], &[1, 1, 1, 2]);
        assert!(x.apply_op2_no_bwd(&bad, &GateOp).is_err());
        // [[1, 2]] . [[1, 0], [0, 1], [1, 1]]^T + [0, 0, -10] + [1, 1, 1], ReLU.
        let x = t(&[1.0, 2.0], &[1, 2]);
        let w = t(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2]);
        let b = t(&[0.0, 0.0, -10.0], &[3]);
        let op = LinearOp {
            act: Act::Relu,
            residual: Some(t(&[1.0, 1.0, 1.0], &[1, 3])),
            weights: WeightOrder::Rows,
        };
        let y = x.apply_op3_no_bwd(&w, &b, &op).unwrap();
        assert_eq!(values(&y), [2.0, 3.0, 0.0]);
    }

    /// Half formats take the references: f16 through the convolution, the
    /// pool and the gate stays within f16 rounding of the f32 kernels.
    #[test]
    fn half_formats_take_the_references() {
        use candle_core::DType;
        let mut rng = crate::util::SplitMix64(11);
        let v: Vec<f32> = (0..2 * 6 * 6 * 4).map(|_| rng.next_unit() - 0.5).collect();
        let x = t(&v, &[2, 6, 6, 4]);
        let w = t(&v[..4 * 3 * 3 * 4], &[4, 3, 3, 4]);
        let b = t(&[0.1, -0.2, 0.3, 0.0], &[4]);
        let run = |dtype: DType| {
            let cast = |t: &Tensor| t.to_dtype(dtype).unwrap();
            let op = ConvOp {
                geometry: ConvGeometry::square(4, 4, 3, 1, 1),
                gate: None,
                act: Act::Silu,
                residual: Some(cast(&x)),
                filters: WeightOrder::Rows,
            };
            let y = cast(&x)
                .apply_op3_no_bwd(&cast(&w), &cast(&b), &op)
                .unwrap();
            let pooled = y.apply_op1_no_bwd(&PoolOp::Avg { out: (1, 1) }).unwrap();
            let gated = y.apply_op2_no_bwd(&pooled, &GateOp).unwrap();
            values(&gated.to_dtype(DType::F32).unwrap())
        };
        let (full, half) = (run(DType::F32), run(DType::F16));
        let worst = crate::models::channels_last::max_abs_diff(&full, &half);
        assert!(worst < 1e-2, "{worst}");
        assert!(full.iter().any(|v| v.abs() > 0.05));
    }
}
