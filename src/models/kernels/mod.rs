//! Our own kernels, as candle custom ops with parity tests beside them:
//! the CPU inference convolution (`conv`), the trainable CPU convolution
//! MEMO adapts through (`conv_grad`), and channels-last depthwise and
//! pointwise convolutions (`nhwc`).

pub(super) mod conv;
pub(super) mod conv_grad;
pub(super) mod nhwc;
