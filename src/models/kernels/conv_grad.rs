//! A differentiable CPU convolution for test-time adaptation: the forward
//! pass is the inference path's im2col + `gemm`, and the backward pass is two
//! more matrix products per image (weights: `grad · colsᵀ`, summed over the
//! batch; input: `Wᵀ · grad`, folded back with col2im). candle's own CPU
//! backward goes through a scalar transposed convolution, which made a MEMO
//! step several times slower than the forward passes. Other devices use
//! candle's `conv2d` and its backward.

use candle_core::{CpuStorage, CustomOp2, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::{contiguous_f32, matmul, with_columns, CpuConv};

/// `conv2d(x, w)` (no bias, no dilation, one group) that candle can
/// differentiate, fast on the CPU for f32.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if matches!(x.device(), Device::Cpu) && x.dtype() == candle_core::DType::F32 {
        let (c_out, c_in, k, _) = w.dims4()?;
        let op = Conv {
            geometry: CpuConv::geometry(c_in, c_out, k, stride, padding),
            dims: (c_in, c_out, k),
        };
        return x.contiguous()?.apply_op2(&w.contiguous()?, op);
    }
    x.conv2d(w, padding, stride, 1, 1)
}

struct Conv {
    geometry: CpuConv,
    dims: (usize, usize, usize),
}

impl Conv {
    fn sizes(&self, x: &Layout) -> Result<(usize, usize, usize, usize, usize)> {
        let (b, c, h, w) = x.shape().dims4()?;
        if c != self.dims.0 {
            candle_core::bail!("conv expects {} input channels, got {c}", self.dims.0);
        }
        Ok((
            b,
            h,
            w,
            self.geometry.out_size(h),
            self.geometry.out_size(w),
        ))
    }

    /// `dW[c_out, kk] = sum over images of grad[c_out, n] · colsᵀ[n, kk]`.
    fn grad_weight(
        &self,
        x: &[f32],
        g: &[f32],
        (b, h, wd, oh, ow): (usize, usize, usize, usize, usize),
    ) -> Vec<f32> {
        let (c_in, c_out, k) = self.dims;
        let (n, kk) = (oh * ow, c_in * k * k);
        let mut dw = vec![0f32; c_out * kk];
        let mut cols = vec![0f32; kk * n];
        for i in 0..b {
            self.geometry.im2col(
                &x[i * c_in * h * wd..][..c_in * h * wd],
                h,
                wd,
                oh,
                ow,
                &mut cols,
            );
            // SAFETY: dw [c_out, kk]; g_i [c_out, n]; cols [kk, n] read transposed.
            unsafe {
                matmul(
                    (c_out, kk, n),
                    dw.as_mut_ptr(),
                    (kk as isize, 1),
                    g[i * c_out * n..].as_ptr(),
                    (n as isize, 1),
                    cols.as_ptr(),
                    (1, n as isize),
                    i > 0,
                    true,
                )
            };
        }
        dw
    }

    /// Per image: `dcols[kk, n] = Wᵀ[kk, c_out] · grad[c_out, n]`, then each
    /// column value added back to the input pixel it was copied from.
    fn grad_input(
        &self,
        w: &[f32],
        g: &[f32],
        (b, h, wd, oh, ow): (usize, usize, usize, usize, usize),
    ) -> Vec<f32> {
        let (c_in, c_out, k) = self.dims;
        let (n, kk) = (oh * ow, c_in * k * k);
        let (s, p) = (self.geometry.stride(), self.geometry.padding());
        let mut dx = vec![0f32; b * c_in * h * wd];
        dx.par_chunks_exact_mut(c_in * h * wd)
            .zip(g.par_chunks_exact(c_out * n))
            .for_each(|(dxi, gi)| {
                with_columns(kk * n, |dcols| {
                    // SAFETY: dcols [kk, n]; w [c_out, kk] read transposed; gi [c_out, n].
                    unsafe {
                        matmul(
                            (kk, n, c_out),
                            dcols.as_mut_ptr(),
                            (n as isize, 1),
                            w.as_ptr(),
                            (1, kk as isize),
                            gi.as_ptr(),
                            (n as isize, 1),
                            false,
                            false,
                        )
                    };
                    for (row, vals) in dcols.chunks_exact(n).enumerate() {
                        let (ci, ky, kx) = (row / (k * k), row / k % k, row % k);
                        let plane = &mut dxi[ci * h * wd..(ci + 1) * h * wd];
                        for oy in 0..oh {
                            let y = (oy * s + ky) as isize - p as isize;
                            if y < 0 || y >= h as isize {
                                continue;
                            }
                            let line = &mut plane[y as usize * wd..(y as usize + 1) * wd];
                            for ox in 0..ow {
                                let x = (ox * s + kx) as isize - p as isize;
                                if x >= 0 && x < wd as isize {
                                    line[x as usize] += vals[oy * ow + ox];
                                }
                            }
                        }
                    }
                })
            });
        dx
    }
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "imagenet-hard-conv2d-trainable"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, h, w, oh, ow) = self.sizes(l1)?;
        // The inference convolution's forward pass, without bias or ReLU.
        let weight = contiguous_f32(s2, l2)?;
        let out = self
            .geometry
            .apply((weight, &[]), contiguous_f32(s1, l1)?, (b, h, w), None);
        Ok((CpuStorage::F32(out), Shape::from((b, self.dims.1, oh, ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grads = GradOp {
            conv: Conv {
                geometry: self.geometry.clone(),
                dims: self.dims,
            },
            x_shape: x.dims().to_vec(),
        };
        let g = grad.contiguous()?;
        let dw = x
            .contiguous()?
            .apply_op2_no_bwd(&g, &Gradient(&grads, Wrt::Weight))?;
        let dx = w
            .contiguous()?
            .apply_op2_no_bwd(&g, &Gradient(&grads, Wrt::Input))?;
        Ok((Some(dx), Some(dw)))
    }
}

struct GradOp {
    conv: Conv,
    x_shape: Vec<usize>,
}

impl GradOp {
    fn sizes(&self) -> (usize, usize, usize, usize, usize) {
        let (b, h, w) = (self.x_shape[0], self.x_shape[2], self.x_shape[3]);
        (
            b,
            h,
            w,
            self.conv.geometry.out_size(h),
            self.conv.geometry.out_size(w),
        )
    }
}

/// Which gradient a [`Gradient`] op computes.
#[derive(Clone, Copy)]
enum Wrt {
    /// From `(x, grad)`: `[c_out, c_in, k, k]`.
    Weight,
    /// From `(w, grad)`: the input's shape.
    Input,
}

struct Gradient<'a>(&'a GradOp, Wrt);

impl CustomOp2 for Gradient<'_> {
    fn name(&self) -> &'static str {
        match self.1 {
            Wrt::Weight => "imagenet-hard-conv2d-grad-weight",
            Wrt::Input => "imagenet-hard-conv2d-grad-input",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (op, sizes) = (&self.0.conv, self.0.sizes());
        let (a, g) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        Ok(match self.1 {
            Wrt::Weight => {
                let (c_in, c_out, k) = op.dims;
                let dw = op.grad_weight(a, g, sizes);
                (CpuStorage::F32(dw), Shape::from((c_out, c_in, k, k)))
            }
            Wrt::Input => {
                let dx = op.grad_input(a, g, sizes);
                (CpuStorage::F32(dx), Shape::from(self.0.x_shape.clone()))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::kernels::conv::tests::max_diff;
    use crate::models::synthetic::input;

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let zero = b.zeros_like().unwrap();
        max_diff(a, b) / max_diff(b, &zero).max(1e-6)
    }

    /// Output and both gradients equal candle's conv2d and its backward on
    /// the shapes ResNet uses (7x7/2 stem, 3x3/1 and /2, 1x1/1 and /2).
    #[test]
    fn forward_and_gradients_match_candles_conv2d() {
        let dev = Device::Cpu;
        for (b, c_in, c_out, hw, k, s, p) in [
            (2, 3, 4, 15, 7, 2, 3),
            (3, 5, 6, 9, 3, 1, 1),
            (2, 4, 3, 10, 3, 2, 1),
            (2, 6, 5, 7, 1, 1, 0),
            (2, 6, 5, 8, 1, 2, 0),
        ] {
            let x =
                Tensor::from_vec(input(1, b * c_in * hw * hw), (b, c_in, hw, hw), &dev).unwrap();
            let wv = Tensor::from_vec(input(2, c_out * c_in * k * k), (c_out, c_in, k, k), &dev)
                .unwrap();
            let case = format!("{b}x{c_in}x{hw}x{hw} k{k} s{s} p{p}");
            let run = |ours: bool| {
                let xv = candle_core::Var::from_tensor(&x).unwrap();
                let w = candle_core::Var::from_tensor(&wv).unwrap();
                let y = if ours {
                    conv2d(&xv, &w, s, p).unwrap()
                } else {
                    xv.conv2d(&w, p, s, 1, 1).unwrap()
                };
                // A loss that weighs every output differently.
                let r = Tensor::from_vec(input(3, y.elem_count()), y.shape(), &dev).unwrap();
                let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
                let gx = g.get(xv.as_tensor()).unwrap().clone();
                let gw = g.get(w.as_tensor()).unwrap().clone();
                (y, gx, gw)
            };
            let (y0, gx0, gw0) = run(false);
            let (y1, gx1, gw1) = run(true);
            assert!(max_rel(&y1, &y0) < 1e-5, "{case}: output");
            assert!(max_rel(&gw1, &gw0) < 1e-5, "{case}: weight gradient");
            assert!(max_rel(&gx1, &gx0) < 1e-5, "{case}: input gradient");
        }
    }
}
