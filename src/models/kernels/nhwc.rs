//! Channels-last (NHWC) layers shared by the EfficientNet and ConvNeXt ports.
//! Both networks are mostly depthwise and 1x1 convolutions: channels-last
//! makes a 1x1 convolution one matrix product and lets the depthwise
//! convolution below avoid candle's grouped convolution, which runs one
//! convolution per channel.

use candle_core::{Result, Tensor};
use candle_nn::{Linear, VarBuilder};

/// A 1x1 convolution stored with PyTorch's `[out, in, 1, 1]` weight, applied
/// to the last (channel) dimension.
pub fn pointwise(c_in: usize, c_out: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let weight = vb
        .get((c_out, c_in, 1, 1), "weight")?
        .reshape((c_out, c_in))?;
    let bias = if bias {
        Some(vb.get(c_out, "bias")?)
    } else {
        None
    };
    Ok(Linear::new(weight, bias))
}

/// Zero padding `[top, bottom, left, right]`.
pub type Pads = [usize; 4];

/// A depthwise `k x k` convolution (one filter per channel, PyTorch weight
/// `[c, 1, k, k]`) computed as the sum of `k^2` shifted, per-channel scaled
/// views of the padded input.
pub struct DepthwiseConv {
    /// Tap `i * k + j` of every channel, shape `[c]`.
    taps: Vec<Tensor>,
    bias: Option<Tensor>,
    kernel: usize,
    stride: usize,
}

impl DepthwiseConv {
    pub fn new(
        channels: usize,
        kernel: usize,
        stride: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<DepthwiseConv> {
        let weight = vb
            .get((channels, 1, kernel, kernel), "weight")?
            .reshape((channels, kernel * kernel))?
            .t()?
            .contiguous()?;
        let taps = (0..kernel * kernel)
            .map(|t| weight.get(t))
            .collect::<Result<Vec<_>>>()?;
        let bias = if bias {
            Some(vb.get(channels, "bias")?)
        } else {
            None
        };
        Ok(DepthwiseConv {
            taps,
            bias,
            kernel,
            stride,
        })
    }

    pub fn kernel(&self) -> usize {
        self.kernel
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    /// `x`: `[n, h, w, c]`; output `[n, ho, wo, c]` with PyTorch's output size.
    pub fn forward(&self, x: &Tensor, pads: Pads) -> Result<Tensor> {
        let (n, h, w, c) = x.dims4()?;
        let (k, s) = (self.kernel, self.stride);
        let [top, bottom, left, right] = pads;
        let (hp, wp) = (h + top + bottom, w + left + right);
        if hp < k || wp < k {
            candle_core::bail!("depthwise conv: padded input {hp}x{wp} smaller than kernel {k}");
        }
        let (ho, wo) = ((hp - k) / s + 1, (wp - k) / s + 1);
        // Padding up to a multiple of the stride lets one reshape split a row
        // index into (row / s, row % s), so strided taps are plain narrows.
        let (hb, wb) = (hp.div_ceil(s), wp.div_ceil(s));
        let x = x
            .pad_with_zeros(1, top, bottom + hb * s - hp)?
            .pad_with_zeros(2, left, right + wb * s - wp)?
            .reshape((n, hb, s, wb, s, c))?;
        let mut sum: Option<Tensor> = None;
        for i in 0..k {
            for j in 0..k {
                let view = x
                    .narrow(1, i / s, ho)?
                    .narrow(2, i % s, 1)?
                    .narrow(3, j / s, wo)?
                    .narrow(4, j % s, 1)?;
                let term = view.broadcast_mul(&self.taps[i * k + j])?;
                sum = Some(match sum {
                    None => term,
                    Some(acc) => (acc + term)?,
                });
            }
        }
        let y = match sum {
            Some(y) => y.reshape((n, ho, wo, c))?,
            None => candle_core::bail!("depthwise conv with an empty kernel"),
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}
