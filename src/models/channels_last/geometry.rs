//! The arithmetic of the cuDNN path, free of candle and of the GPU: a
//! convolution's geometry and output size, the NHWC tensor and KRSC filter
//! descriptors cuDNN is given (dimensions always in n, c, h, w order, the
//! memory order named by the format), the key the chosen algorithm is
//! cached under, and how the one workspace grows.

use std::fmt;

/// Why a geometry cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    #[error("convolution {0}: {1}")]
    Invalid(String, String),
    #[error("convolution {geometry} on a {h}x{w} input: {why}")]
    Input {
        geometry: String,
        h: usize,
        w: usize,
        why: String,
    },
    #[error("tensor dimension {0} does not fit cuDNN's 32-bit sizes")]
    TooLarge(usize),
}

/// A 2-D convolution as cuDNN sees it: symmetric zero padding (cuDNN has
/// no other; asymmetric padding is a separate pad step), and `groups` of
/// `c_in / groups` input channels each (depthwise: `groups == c_in`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvGeometry {
    pub c_in: usize,
    pub c_out: usize,
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl fmt::Display for ConvGeometry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}x{}/{} {}->{}",
            self.kernel[0], self.kernel[1], self.stride[0], self.c_in, self.c_out
        )?;
        if self.pad != [0, 0] {
            write!(f, " pad {}", self.pad[0])?;
            if self.pad[1] != self.pad[0] {
                write!(f, ",{}", self.pad[1])?;
            }
        }
        if self.dilation != [1, 1] {
            write!(f, " dil {}", self.dilation[0])?;
        }
        if self.groups > 1 {
            write!(f, " groups {}", self.groups)?;
        }
        Ok(())
    }
}

impl ConvGeometry {
    /// A square kernel with the same stride and padding on both axes.
    pub fn square(c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize) -> Self {
        ConvGeometry {
            c_in,
            c_out,
            kernel: [k, k],
            stride: [stride, stride],
            pad: [pad, pad],
            dilation: [1, 1],
            groups: 1,
        }
    }

    /// One `k x k` filter per channel, in one grouped call.
    pub fn depthwise(c: usize, k: usize, stride: usize, pad: usize) -> Self {
        ConvGeometry {
            groups: c,
            ..ConvGeometry::square(c, c, k, stride, pad)
        }
    }

    /// Every size positive, channels divisible by the groups.
    pub fn validate(&self) -> Result<(), GeometryError> {
        let bad = |why: String| Err(GeometryError::Invalid(self.to_string(), why));
        if self.c_in == 0 || self.c_out == 0 || self.groups == 0 {
            return bad("channels and groups must be positive".into());
        }
        if self.kernel.contains(&0) || self.stride.contains(&0) || self.dilation.contains(&0) {
            return bad("kernel, stride and dilation must be positive".into());
        }
        if !self.c_in.is_multiple_of(self.groups) || !self.c_out.is_multiple_of(self.groups) {
            return bad(format!(
                "{} groups do not divide {} input and {} output channels",
                self.groups, self.c_in, self.c_out
            ));
        }
        Ok(())
    }

    /// Output height and width, as PyTorch and cuDNN compute them:
    /// `(i + 2 p - d (k - 1) - 1) / s + 1`.
    pub fn out_hw(&self, h: usize, w: usize) -> Result<(usize, usize), GeometryError> {
        self.validate()?;
        let one = |i: usize, a: usize| -> Option<usize> {
            let span = self.dilation[a] * (self.kernel[a] - 1) + 1;
            let padded = i + 2 * self.pad[a];
            (padded >= span).then(|| (padded - span) / self.stride[a] + 1)
        };
        match (one(h, 0), one(w, 1)) {
            (Some(oh), Some(ow)) => Ok((oh, ow)),
            _ => Err(GeometryError::Input {
                geometry: self.to_string(),
                h,
                w,
                why: "the padded input is smaller than the kernel".into(),
            }),
        }
    }

    /// The filter's dimensions as cuDNN takes them, `[k, c / groups, r, s]`;
    /// with the NHWC format its memory is KRSC: PyTorch's OIHW weight
    /// permuted by [`OIHW_TO_KRSC`].
    pub fn filter_dims(&self) -> Result<[i32; 4], GeometryError> {
        self.validate()?;
        Ok([
            to_i32(self.c_out)?,
            to_i32(self.c_in / self.groups)?,
            to_i32(self.kernel[0])?,
            to_i32(self.kernel[1])?,
        ])
    }

    /// Multiply-adds of one image of `h x w`.
    pub fn macs(&self, h: usize, w: usize) -> Result<u64, GeometryError> {
        let (oh, ow) = self.out_hw(h, w)?;
        Ok(
            (oh * ow * self.c_out * (self.c_in / self.groups) * self.kernel[0] * self.kernel[1])
                as u64,
        )
    }
}

/// The permutation taking a PyTorch weight `[o, i, kh, kw]` to the KRSC
/// memory order cuDNN reads with the NHWC filter format.
pub const OIHW_TO_KRSC: (usize, usize, usize, usize) = (0, 2, 3, 1);

/// A channels-last activation `[n, h, w, c]`, contiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nhwc {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Nhwc {
    pub fn len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Dimensions in the order cuDNN's descriptors take them, `[n, c, h, w]`.
    pub fn dims(&self) -> Result<[i32; 4], GeometryError> {
        Ok([
            to_i32(self.n)?,
            to_i32(self.c)?,
            to_i32(self.h)?,
            to_i32(self.w)?,
        ])
    }

    /// Element strides of `[n, c, h, w]` for this memory order: channels
    /// adjacent, then columns, then rows.
    pub fn strides(&self) -> Result<[i32; 4], GeometryError> {
        Ok([
            to_i32(self.h * self.w * self.c)?,
            1,
            to_i32(self.w * self.c)?,
            to_i32(self.c)?,
        ])
    }

    /// The output of `g` on this input.
    pub fn conv_out(&self, g: &ConvGeometry) -> Result<Nhwc, GeometryError> {
        if self.c != g.c_in {
            return Err(GeometryError::Input {
                geometry: g.to_string(),
                h: self.h,
                w: self.w,
                why: format!("the input has {} channels, not {}", self.c, g.c_in),
            });
        }
        let (h, w) = g.out_hw(self.h, self.w)?;
        Ok(Nhwc {
            n: self.n,
            h,
            w,
            c: g.c_out,
        })
    }
}

fn to_i32(v: usize) -> Result<i32, GeometryError> {
    i32::try_from(v).map_err(|_| GeometryError::TooLarge(v))
}

/// The number formats the path runs in, and the cuDNN data and compute
/// types for each: bf16 and f16 store half and accumulate in f32 (cuDNN's
/// "pseudo" half configurations; bf16 has no other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    F32,
    F16,
    Bf16,
}

impl DataType {
    /// `cudnnDataType_t` of the tensors.
    pub fn cudnn_data(self) -> i32 {
        match self {
            DataType::F32 => 0,
            DataType::F16 => 2,
            DataType::Bf16 => 9,
        }
    }

    /// `cudnnDataType_t` of the convolution's arithmetic: always f32.
    pub fn cudnn_compute(self) -> i32 {
        0
    }

    /// `cudnnMathType_t` set before the algorithm search: tensor-op math for
    /// the half formats; FMA only for f32, so f32 stays f32 (no TF32).
    pub fn cudnn_math(self) -> i32 {
        match self {
            DataType::F32 => CUDNN_FMA_MATH,
            DataType::F16 | DataType::Bf16 => CUDNN_TENSOR_OP_MATH,
        }
    }

    pub fn size(self) -> usize {
        match self {
            DataType::F32 => 4,
            DataType::F16 | DataType::Bf16 => 2,
        }
    }
}

pub const CUDNN_TENSOR_OP_MATH: i32 = 1;
pub const CUDNN_FMA_MATH: i32 = 3;

/// What an algorithm choice is cached under, for the process: the device,
/// the number format, the whole input shape (batch included), the
/// geometry, and whether it runs fused (bias, residual and ReLU in the
/// convolution) or plain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AlgoKey {
    pub device: usize,
    pub dtype: DataType,
    pub input: Nhwc,
    pub geometry: ConvGeometry,
    pub fused: bool,
}

/// The size to grow the workspace to when `needed` bytes are asked of one
/// of `current` bytes, or `None` when it is large enough. It grows to at
/// least 1.5 times its size (so a run of slowly growing requests does not
/// reallocate each time), rounded up to whole MiB.
pub fn workspace_growth(current: usize, needed: usize) -> Option<usize> {
    const MIB: usize = 1 << 20;
    if needed <= current {
        return None;
    }
    let target = needed.max(current + current / 2);
    Some(target.div_ceil(MIB) * MIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_sizes_match_pytorch() {
        // ResNet stem 7x7/2 pad 3 on 224 -> 112; its max-pool follows.
        let stem = ConvGeometry::square(3, 64, 7, 2, 3);
        assert_eq!(stem.out_hw(224, 224), Ok((112, 112)));
        // AlexNet's 11x11/4 pad 2 on 224 -> 55.
        assert_eq!(
            ConvGeometry::square(3, 64, 11, 4, 2).out_hw(224, 224),
            Ok((55, 55))
        );
        // A 3x3 stride-2 pad-1 on an odd side rounds down, as PyTorch.
        assert_eq!(ConvGeometry::square(8, 8, 3, 2, 1).out_hw(7, 9), Ok((4, 5)));
        // Dilation 2 spans 5 pixels.
        let dil = ConvGeometry {
            dilation: [2, 2],
            ..ConvGeometry::square(4, 4, 3, 1, 0)
        };
        assert_eq!(dil.out_hw(9, 5), Ok((5, 1)));
        assert!(matches!(dil.out_hw(4, 9), Err(GeometryError::Input { .. })));
        // ViT-B/32's patch embedding: 32x32/32 on 224 -> 7x7.
        assert_eq!(
            ConvGeometry::square(3, 768, 32, 32, 0).out_hw(224, 224),
            Ok((7, 7))
        );
    }

    #[test]
    fn groups_must_divide_channels() {
        let dw = ConvGeometry::depthwise(96, 3, 2, 1);
        assert_eq!(dw.filter_dims(), Ok([96, 1, 3, 3]));
        assert_eq!(dw.to_string(), "3x3/2 96->96 pad 1 groups 96");
        let bad = ConvGeometry {
            groups: 5,
            ..ConvGeometry::square(96, 96, 3, 1, 1)
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("5 groups do not divide 96"), "{e}");
        assert!(ConvGeometry::square(0, 8, 3, 1, 1).validate().is_err());
    }

    #[test]
    fn nhwc_descriptors_are_nchw_dims_with_channels_last_strides() {
        let t = Nhwc {
            n: 2,
            h: 5,
            w: 7,
            c: 3,
        };
        assert_eq!(t.dims(), Ok([2, 3, 5, 7]));
        assert_eq!(t.strides(), Ok([105, 1, 21, 3]));
        // Every element lands at a distinct offset below len(): the strides
        // describe exactly the row-major [n, h, w, c] buffer.
        let [sn, sc, sh, sw] = t.strides().unwrap().map(|s| s as usize);
        let mut seen = vec![false; t.len()];
        for n in 0..t.n {
            for c in 0..t.c {
                for h in 0..t.h {
                    for w in 0..t.w {
                        let at = n * sn + c * sc + h * sh + w * sw;
                        assert_eq!(at, ((n * t.h + h) * t.w + w) * t.c + c);
                        assert!(!seen[at]);
                        seen[at] = true;
                    }
                }
            }
        }
        assert!(seen.iter().all(|&s| s));
        let huge = Nhwc {
            n: 1,
            h: 1 << 16,
            w: 1 << 16,
            c: 1,
        };
        assert_eq!(huge.strides(), Err(GeometryError::TooLarge(1 << 32)));
    }

    #[test]
    fn conv_out_checks_channels() {
        let x = Nhwc {
            n: 4,
            h: 56,
            w: 56,
            c: 64,
        };
        let g = ConvGeometry::square(64, 128, 3, 2, 1);
        assert_eq!(
            x.conv_out(&g),
            Ok(Nhwc {
                n: 4,
                h: 28,
                w: 28,
                c: 128
            })
        );
        let e = x
            .conv_out(&ConvGeometry::square(32, 8, 1, 1, 0))
            .unwrap_err();
        assert!(e.to_string().contains("64 channels, not 32"), "{e}");
    }

    #[test]
    fn algo_key_tells_batches_formats_and_fusion_apart() {
        use std::collections::HashSet;
        let input = Nhwc {
            n: 128,
            h: 56,
            w: 56,
            c: 64,
        };
        let key = AlgoKey {
            device: 0,
            dtype: DataType::Bf16,
            input,
            geometry: ConvGeometry::square(64, 64, 3, 1, 1),
            fused: true,
        };
        let variants = [
            key,
            AlgoKey {
                input: Nhwc { n: 127, ..input },
                ..key
            },
            AlgoKey {
                dtype: DataType::F16,
                ..key
            },
            AlgoKey {
                fused: false,
                ..key
            },
            AlgoKey { device: 1, ..key },
            AlgoKey {
                geometry: ConvGeometry::square(64, 64, 3, 1, 2),
                ..key
            },
        ];
        let set: HashSet<_> = variants.iter().collect();
        assert_eq!(set.len(), variants.len());
        assert!(set.contains(&AlgoKey { ..key }));
    }

    #[test]
    fn workspace_grows_rarely_and_in_whole_mib() {
        const MIB: usize = 1 << 20;
        assert_eq!(workspace_growth(0, 0), None);
        assert_eq!(workspace_growth(0, 1), Some(MIB));
        assert_eq!(workspace_growth(8 * MIB, 8 * MIB), None);
        assert_eq!(workspace_growth(8 * MIB, 3 * MIB), None);
        // A little more than 8 MiB grows to 12 MiB, not 9.
        assert_eq!(workspace_growth(8 * MIB, 8 * MIB + 1), Some(12 * MIB));
        assert_eq!(workspace_growth(8 * MIB, 100 * MIB + 5), Some(101 * MIB));
        // Growing by small steps reallocates a logarithmic number of times.
        let (mut size, mut grows) = (0usize, 0);
        for need in (1..=1000).map(|i| i * 100_000) {
            if let Some(s) = workspace_growth(size, need) {
                assert!(s >= need && s % MIB == 0);
                size = s;
                grows += 1;
            }
        }
        assert!(grows <= 12, "{grows} reallocations");
    }

    #[test]
    fn formats_compute_in_f32_and_keep_f32_exact() {
        for d in [DataType::F32, DataType::F16, DataType::Bf16] {
            assert_eq!(d.cudnn_compute(), 0);
        }
        assert_eq!(DataType::Bf16.cudnn_data(), 9);
        assert_eq!(DataType::F16.cudnn_data(), 2);
        assert_eq!(DataType::Bf16.cudnn_math(), CUDNN_TENSOR_OP_MATH);
        assert_eq!(DataType::F32.cudnn_math(), CUDNN_FMA_MATH);
    }
}
