//! A faster CPU convolution for inference: im2col into a per-thread buffer
//! and one `gemm` per image (the weights are already the `[c_out, c_in*k*k]`
//! matrix in NCHW order, so nothing is repacked per call) into a per-thread
//! product buffer, then one pass that adds the bias (and shortcut), applies
//! the ReLU and writes the NCHW output, which is never zeroed first. Images
//! of a batch run in parallel. candle's stock CPU conv2d
//! re-lays the weights and transposes the input on every call; this path is
//! what lets the scan keep up with PyTorch on CPU. Other devices use
//! candle's conv2d.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, Device, Layout, Module, Result, Shape, Tensor,
};
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::Arc;

/// A 2-D convolution with a bias, optionally followed by ReLU.
#[derive(Clone)]
pub struct Conv {
    /// `[c_out, c_in, k, k]`, on the model's device.
    weight: Tensor,
    /// `[1, c_out, 1, 1]`, on the model's device.
    bias: Tensor,
    cpu: Option<CpuConv>,
    stride: usize,
    padding: usize,
    relu: bool,
}

#[derive(Clone)]
pub(super) struct CpuConv {
    weight: Arc<Vec<f32>>,
    bias: Arc<Vec<f32>>,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    relu: bool,
}

impl Conv {
    /// `weight` `[c_out, c_in, k, k]` and `bias` `[c_out]`.
    pub fn new(
        weight: Tensor,
        bias: Tensor,
        stride: usize,
        padding: usize,
        relu: bool,
    ) -> Result<Conv> {
        let (c_out, c_in, k, k2) = weight.dims4()?;
        if k != k2 {
            candle_core::bail!("square kernels only, got {k}x{k2}");
        }
        let cpu = match (weight.device(), weight.dtype()) {
            (Device::Cpu, candle_core::DType::F32) => Some(CpuConv {
                weight: Arc::new(weight.flatten_all()?.to_vec1::<f32>()?),
                bias: Arc::new(bias.flatten_all()?.to_vec1::<f32>()?),
                c_in,
                c_out,
                k,
                stride,
                padding,
                relu,
            }),
            _ => None,
        };
        Ok(Conv {
            bias: bias.reshape((1, c_out, 1, 1))?,
            weight,
            cpu,
            stride,
            padding,
            relu,
        })
    }
}

impl Conv {
    /// `relu(conv(x) + bias + residual)`: a residual block's last
    /// convolution with the shortcut added and the ReLU applied in the same
    /// pass (the ReLU whatever `relu` says).
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if let (Some(op), Device::Cpu, candle_core::DType::F32) = (&self.cpu, x.device(), x.dtype())
        {
            let op = Residual(CpuConv {
                relu: true,
                ..op.clone()
            });
            return x
                .contiguous()?
                .apply_op2_no_bwd(&residual.contiguous()?, &op);
        }
        let y = x
            .conv2d(&self.weight, self.padding, self.stride, 1, 1)?
            .broadcast_add(&self.bias)?;
        (y + residual)?.relu()
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let (Some(op), Device::Cpu, candle_core::DType::F32) = (&self.cpu, x.device(), x.dtype())
        {
            return x.contiguous()?.apply_op1_no_bwd(op);
        }
        let y = x
            .conv2d(&self.weight, self.padding, self.stride, 1, 1)?
            .broadcast_add(&self.bias)?;
        if self.relu {
            y.relu()
        } else {
            Ok(y)
        }
    }
}

thread_local! {
    static COLUMNS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PRODUCT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Output maps of at most this many pixels (14x14: ResNet's last two
/// stages) are convolved a group of images per product
/// ([`CpuConv::images`]) when the batch has at least two images per thread.
const GROUPED_MAX_PIXELS: usize = 196;

impl CpuConv {
    /// The shape of a convolution without weights: for im2col alone.
    pub(super) fn geometry(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> CpuConv {
        CpuConv {
            weight: Arc::new(Vec::new()),
            bias: Arc::new(Vec::new()),
            c_in,
            c_out,
            k,
            stride,
            padding,
            relu: false,
        }
    }

    pub(super) fn stride(&self) -> usize {
        self.stride
    }

    pub(super) fn padding(&self) -> usize {
        self.padding
    }

    pub(super) fn out_size(&self, i: usize) -> usize {
        (i + 2 * self.padding).saturating_sub(self.k) / self.stride + 1
    }

    /// Images `inp` (`[m, c_in, h, w]`, m >= 1) as one product into this
    /// thread's product buffer: their columns side by side (`[kk, m*n]`), so
    /// the weights are packed once for the group (one image of a 1x1,
    /// stride-1 convolution is its own column matrix); then
    /// [`finish`](Self::finish) writes every value of `out` (`[m, c_out, n]`).
    /// `parallel`: the product itself runs on the thread pool.
    fn images(
        &self,
        (weight, bias): (&[f32], &[f32]),
        inp: &[f32],
        (h, w): (usize, usize),
        out: &mut [MaybeUninit<f32>],
        residual: Option<&[f32]>,
        parallel: bool,
    ) {
        let (oh, ow) = (self.out_size(h), self.out_size(w));
        let n = oh * ow;
        let kk = self.c_in * self.k * self.k;
        let per_in = self.c_in * h * w;
        let ld = inp.len() / per_in * n;
        let direct = ld == n && self.k == 1 && self.stride == 1 && self.padding == 0;
        COLUMNS.with(|cbuf| {
            PRODUCT.with(|pbuf| {
                let (mut cbuf, mut pbuf) = (cbuf.borrow_mut(), pbuf.borrow_mut());
                let cols: &[f32] = if direct {
                    inp
                } else {
                    let cols = scratch(&mut cbuf, kk * ld);
                    for (j, image) in inp.chunks_exact(per_in).enumerate() {
                        self.im2col_strided(image, (h, w, oh, ow), &mut cols[j * n..], ld);
                    }
                    cols
                };
                let prod = scratch(&mut pbuf, self.c_out * ld);
                // SAFETY: prod [c_out, ld], weight [c_out, kk], cols [kk, ld],
                // all row-major and long enough; prod is overwritten.
                unsafe {
                    matmul(
                        (self.c_out, ld, kk),
                        prod.as_mut_ptr(),
                        (ld as isize, 1),
                        weight.as_ptr(),
                        (kk as isize, 1),
                        cols.as_ptr(),
                        (ld as isize, 1),
                        false,
                        parallel,
                    )
                };
                let per_out = self.c_out * n;
                for (j, image) in out.chunks_exact_mut(per_out).enumerate() {
                    for (c, row) in image.chunks_exact_mut(n).enumerate() {
                        let from = &prod[c * ld + j * n..][..n];
                        let shortcut = residual.map(|r| &r[j * per_out + c * n..][..n]);
                        self.finish(bias.get(c), row, from, shortcut);
                    }
                }
            })
        });
    }

    /// One output channel: `row = product + bias (+ shortcut)`, then the
    /// ReLU when the convolution has one; every value of `row` is written
    /// (it may come uninitialised). A missing bias counts as 0.
    fn finish(
        &self,
        bias: Option<&f32>,
        row: &mut [MaybeUninit<f32>],
        product: &[f32],
        shortcut: Option<&[f32]>,
    ) {
        // `apply` marks the output initialised: every value must be written.
        assert_eq!(
            row.len(),
            product.len(),
            "a convolution row and its product"
        );
        let b = bias.copied().unwrap_or(0.0);
        let floor = if self.relu { 0.0 } else { f32::NEG_INFINITY };
        match shortcut {
            None => {
                for (o, &v) in row.iter_mut().zip(product) {
                    o.write((v + b).max(floor));
                }
            }
            Some(r) => {
                for ((o, &v), &x) in row.iter_mut().zip(product).zip(r) {
                    o.write((v + b + x).max(floor));
                }
            }
        }
    }

    /// `cols[(ci, ky, kx), (oy, ox)] = inp[ci, oy*s + ky - p, ox*s + kx - p]`, 0 outside.
    pub(super) fn im2col(
        &self,
        inp: &[f32],
        h: usize,
        w: usize,
        oh: usize,
        ow: usize,
        cols: &mut [f32],
    ) {
        self.im2col_strided(inp, (h, w, oh, ow), cols, oh * ow);
    }

    /// [`im2col`](Self::im2col) with row `r` of the columns written at
    /// `cols[r * ld..]`: several images' columns side by side.
    fn im2col_strided(
        &self,
        inp: &[f32],
        (h, w, oh, ow): (usize, usize, usize, usize),
        cols: &mut [f32],
        ld: usize,
    ) {
        let (k, s, p) = (self.k, self.stride, self.padding as isize);
        let n = oh * ow;
        for ci in 0..self.c_in {
            let plane = &inp[ci * h * w..(ci + 1) * h * w];
            for ky in 0..k {
                for kx in 0..k {
                    let row = &mut cols[((ci * k + ky) * k + kx) * ld..][..n];
                    for oy in 0..oh {
                        let y = (oy * s + ky) as isize - p;
                        let dst = &mut row[oy * ow..(oy + 1) * ow];
                        if y < 0 || y >= h as isize {
                            dst.fill(0.0);
                            continue;
                        }
                        let src = &plane[y as usize * w..(y as usize + 1) * w];
                        if s == 1 {
                            // A shifted copy of the input row, zeros at the edges:
                            // output column ox reads input column ox + x0.
                            let x0 = kx as isize - p;
                            let lo = (-x0).clamp(0, ow as isize) as usize;
                            let hi = (w as isize - x0).clamp(lo as isize, ow as isize) as usize;
                            dst[..lo].fill(0.0);
                            dst[hi..].fill(0.0);
                            let start = (lo as isize + x0) as usize;
                            dst[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
                        } else {
                            // Output column ox reads input column ox*s + kx - p;
                            // the columns that land inside are lo..hi.
                            let off = kx as isize - p;
                            let lo = ((-off).max(0) as usize).div_ceil(s).min(ow);
                            let hi = if (w as isize) > off {
                                (((w as isize - off) as usize).div_ceil(s)).clamp(lo, ow)
                            } else {
                                lo
                            };
                            dst[..lo].fill(0.0);
                            dst[hi..].fill(0.0);
                            for (ox, d) in dst[lo..hi].iter_mut().enumerate() {
                                *d = src[((ox + lo) * s) + kx - p as usize];
                            }
                        }
                    }
                }
            }
        }
    }
}

impl CpuConv {
    fn run(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
        residual: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = layout.shape().dims4()?;
        if c != self.c_in {
            candle_core::bail!("conv expects {} input channels, got {c}", self.c_in);
        }
        let (oh, ow) = (self.out_size(h), self.out_size(w));
        if residual.is_some_and(|r| r.len() != b * self.c_out * oh * ow) {
            candle_core::bail!("conv: the residual must have the output's shape");
        }
        let inp = contiguous_f32(storage, layout)?;
        let out = self.apply((&self.weight, &self.bias), inp, (b, h, w), residual);
        Ok((CpuStorage::F32(out), Shape::from((b, self.c_out, oh, ow))))
    }

    /// `inp` `[b, c_in, h, w]` convolved with `weight` `[c_out, c_in*k*k]`,
    /// plus `bias` (`[c_out]`, or empty for none) and `residual` (the
    /// output's shape), then the ReLU if any: `[b, c_out, oh, ow]`.
    pub(super) fn apply(
        &self,
        params: (&[f32], &[f32]),
        inp: &[f32],
        (b, h, w): (usize, usize, usize),
        residual: Option<&[f32]>,
    ) -> Vec<f32> {
        let (oh, ow) = (self.out_size(h), self.out_size(w));
        let per_out = self.c_out * oh * ow;
        let per_in = self.c_in * h * w;
        // Not zeroed: every path below writes every value (through `finish`).
        let mut out: Vec<f32> = Vec::with_capacity(b * per_out);
        let dst = &mut out.spare_capacity_mut()[..b * per_out];
        let res = |i: usize| residual.map(|r| &r[i * per_out..(i + 1) * per_out]);
        let threads = rayon::current_num_threads();
        if oh * ow <= GROUPED_MAX_PIXELS && b >= 2 * threads {
            // Small maps: one product per thread over a group of images.
            let group = b.div_ceil(threads);
            dst.par_chunks_mut(group * per_out)
                .zip(inp.par_chunks(group * per_in))
                .enumerate()
                .for_each(|(g, (o, i))| {
                    let r = residual.map(|r| &r[g * group * per_out..][..o.len()]);
                    self.images(params, i, (h, w), o, r, false)
                });
        } else if b >= threads {
            dst.par_chunks_exact_mut(per_out)
                .zip(inp.par_chunks_exact(per_in))
                .enumerate()
                .for_each(|(k, (o, i))| self.images(params, i, (h, w), o, res(k), false));
        } else {
            for (k, (o, i)) in dst
                .chunks_exact_mut(per_out)
                .zip(inp.chunks_exact(per_in))
                .enumerate()
            {
                self.images(params, i, (h, w), o, res(k), true);
            }
        }
        // SAFETY: the `b * per_out` values were all written above: each path
        // hands every image's `[c_out, n]` block, channel by channel, to
        // `finish`, which writes every value of its row.
        unsafe { out.set_len(b * per_out) };
        out
    }
}

/// Run `f` on this thread's column buffer, `len` values long (not zeroed).
pub(super) fn with_columns<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    COLUMNS.with(|buf| f(scratch(&mut buf.borrow_mut(), len)))
}

/// The first `len` values of a reused buffer, grown when short. Not zeroed:
/// callers overwrite every value they read.
fn scratch(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]`, every operand given by its row and
/// column strides; `accumulate` keeps what `dst` holds.
///
/// # Safety
/// Each pointer must cover its matrix under its strides, `dst` unaliased.
#[allow(clippy::too_many_arguments)]
pub(in crate::models) unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (dst_rs, dst_cs): (isize, isize),
    lhs: *const f32,
    (lhs_rs, lhs_cs): (isize, isize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (isize, isize),
    accumulate: bool,
    parallel: bool,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs,
        dst_rs,
        accumulate,
        lhs,
        lhs_cs,
        lhs_rs,
        rhs,
        rhs_cs,
        rhs_rs,
        1.0,
        1.0,
        false,
        false,
        false,
        if parallel {
            gemm::Parallelism::Rayon(rayon::current_num_threads())
        } else {
            gemm::Parallelism::None
        },
    )
}

pub(super) fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("conv: f32 input expected");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("conv: the input must be contiguous (forward makes it so)");
    };
    Ok(&data[start..end])
}

impl CustomOp1 for CpuConv {
    fn name(&self) -> &'static str {
        "imagenet-hard-conv2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(storage, layout, None)
    }
}

/// The convolution with a residual added before the ReLU.
struct Residual(CpuConv);

impl CustomOp2 for Residual {
    fn name(&self) -> &'static str {
        "imagenet-hard-conv2d-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let residual = contiguous_f32(s2, l2)?;
        self.0.run(s1, l1, Some(residual))
    }
}

#[cfg(test)]
pub(in crate::models) mod tests {
    use super::*;

    fn reference(x: &Tensor, w: &Tensor, bias: &Tensor, s: usize, p: usize, relu: bool) -> Tensor {
        let c_out = w.dim(0).unwrap();
        let y = x
            .conv2d(w, p, s, 1, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, c_out, 1, 1)).unwrap())
            .unwrap();
        if relu {
            y.relu().unwrap()
        } else {
            y
        }
    }

    /// Largest |a - b| (shared with the other convolution tests); NaN or
    /// infinity on either side fails.
    pub(in crate::models) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        for t in [a, b] {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "a value is not finite");
        }
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn matches_candle_conv2d_on_every_shape_the_models_use() {
        // Two threads whatever the machine, so which path runs is fixed.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(matches_candle_conv2d);
    }

    fn matches_candle_conv2d() {
        let dev = Device::Cpu;
        // (batch, c_in, c_out, size, kernel, stride, padding, relu)
        for &(b, ci, co, hw, k, s, p, relu) in &[
            (2, 3, 8, 17, 7, 2, 3, true),
            (3, 8, 16, 9, 3, 1, 1, false),
            (1, 8, 16, 10, 3, 2, 1, true),
            (2, 16, 8, 7, 1, 1, 0, false),
            (1, 16, 32, 8, 1, 2, 0, true),
            (2, 3, 6, 20, 11, 4, 2, true),
            (2, 4, 4, 5, 5, 1, 2, false),
            // Batches of small maps take the grouped path (2 threads below).
            (5, 8, 16, 9, 3, 1, 1, true),
            (5, 16, 8, 7, 1, 1, 0, false),
            (6, 8, 16, 10, 3, 2, 1, true),
        ] {
            let x = Tensor::randn(0f32, 1.0, (b, ci, hw, hw + 1), &dev).unwrap();
            let w = Tensor::randn(0f32, 0.3, (co, ci, k, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1.0, co, &dev).unwrap();
            let conv = Conv::new(w.clone(), bias.clone(), s, p, relu).unwrap();
            let ours = conv.forward(&x).unwrap();
            let want = reference(&x, &w, &bias, s, p, relu);
            assert_eq!(ours.dims(), want.dims());
            let diff = max_diff(&ours, &want);
            assert!(diff < 1e-4, "{b} {ci} {co} {hw} k{k} s{s} p{p}: {diff}");
        }
        // With a residual: relu(conv + bias + residual), one image at a time
        // (3) and grouped (5).
        for b in [3, 5] {
            let x = Tensor::randn(0f32, 1.0, (b, 8, 9, 9), &dev).unwrap();
            let w = Tensor::randn(0f32, 0.3, (16, 8, 3, 3), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1.0, 16, &dev).unwrap();
            let r = Tensor::randn(0f32, 1.0, (b, 16, 5, 5), &dev).unwrap();
            let conv = Conv::new(w.clone(), bias.clone(), 2, 1, false).unwrap();
            let ours = conv.forward_residual(&x, &r).unwrap();
            let want = (reference(&x, &w, &bias, 2, 1, false) + &r)
                .unwrap()
                .relu()
                .unwrap();
            assert!(max_diff(&ours, &want) < 1e-4, "residual, batch {b}");
        }
        // A non-contiguous input is handled too.
        let x = Tensor::randn(0f32, 1.0, (2, 6, 3, 5), &dev)
            .unwrap()
            .transpose(1, 3)
            .unwrap();
        let w = Tensor::randn(0f32, 0.3, (4, 5, 3, 3), &dev).unwrap();
        let bias = Tensor::zeros(4, candle_core::DType::F32, &dev).unwrap();
        let ours = Conv::new(w.clone(), bias.clone(), 1, 1, false)
            .unwrap()
            .forward(&x)
            .unwrap();
        let want = reference(&x, &w, &bias, 1, 1, false);
        assert!(max_diff(&ours, &want) < 1e-4);
    }
}
