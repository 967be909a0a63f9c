//! A loaded classifier: weights read (safetensors, or a PyTorch checkpoint
//! through the restricted pickle reader) into an architecture on a
//! runtime's device, and its forward passes: normalised f32 crops, or 8-bit
//! crops normalised on the device and read back one batch behind.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Module, VarBuilder};
use std::path::Path;

use super::{pth, Architecture, Extras, ModelError, Precision, Runtime};

/// A loaded classifier producing ImageNet-1k logits.
pub struct Classifier {
    arch: Architecture,
    net: Box<dyn Module + Send + Sync>,
    device: Device,
    device_name: String,
    precision: Precision,
    /// The net runs channels-last (`--kernels cudnn`): it takes NCHW crops
    /// as a permuted view of NHWC data, with no copy.
    channels_last: bool,
}

impl Classifier {
    /// Load weights (safetensors, or a PyTorch `.pth` checkpoint read
    /// without running pickle code) with the checkpoint's tensor names, on
    /// the runtime's device and in its precision.
    pub fn load(
        arch: Architecture,
        weights: &Path,
        extras: &Extras,
        rt: &Runtime,
    ) -> Result<Classifier, ModelError> {
        let err = |e: candle_core::Error| ModelError::Load {
            file: weights.into(),
            arch: arch.name(),
            message: e.to_string(),
        };
        let vb = var_builder(weights, rt.device()).map_err(|e| match e {
            pth::PthError::Candle(e) => err(e),
            other => ModelError::Load {
                file: weights.into(),
                arch: arch.name(),
                message: other.to_string(),
            },
        })?;
        let vb = vb.set_dtype(rt.precision().dtype());
        let channels_last = rt.channels_last(arch.name());
        let net = if channels_last {
            super::channels_last::build(arch, vb, extras).map_err(|e| match e {
                super::channels_last::BuildError::Cudnn(e) => ModelError::Device(e.to_string()),
                super::channels_last::BuildError::Candle(e) => err(e),
            })?
        } else {
            (arch.spec().build)(vb, extras).map_err(err)?
        };
        Ok(Classifier {
            arch,
            net,
            device: rt.device().clone(),
            device_name: rt.describe().to_string(),
            precision: rt.precision(),
            channels_last,
        })
    }

    pub fn architecture(&self) -> Architecture {
        self.arch
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether it runs on the channels-last path.
    pub fn channels_last(&self) -> bool {
        self.channels_last
    }

    /// The kernels it runs on: `cudnn` (the channels-last path on a GPU),
    /// `fused` (on the CPU) or `candle`.
    pub fn kernels_name(&self) -> &'static str {
        match (self.channels_last, self.device.is_cuda()) {
            (true, true) => "cudnn",
            (true, false) => "fused",
            (false, _) => "candle",
        }
    }

    /// Where it runs: `cpu` or `cuda:N`.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// Logits for `n` crops stored back to back as normalised CHW planes of
    /// `size x size`. Returns `n * 1000` values, crop-major.
    pub fn logits(&self, input: &[f32], n: usize, size: usize) -> Result<Vec<f32>, ModelError> {
        let err = |e: candle_core::Error| ModelError::Forward {
            arch: self.arch.name(),
            message: e.to_string(),
        };
        let x = Tensor::from_slice(input, (n, 3, size, size), &self.device)
            .and_then(|x| x.to_dtype(self.precision.dtype()))
            .map_err(err)?;
        let y = self.net.forward(&x).map_err(err)?;
        y.flatten_all()
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(err)
    }

    fn forward_error(&self, e: candle_core::Error) -> ModelError {
        ModelError::Forward {
            arch: self.arch.name(),
            message: e.to_string(),
        }
    }

    /// The table that normalises 8-bit crops with `mean` / `std` on this
    /// model's device.
    pub fn normaliser(&self, mean: [f32; 3], std: [f32; 3]) -> Result<Normaliser, ModelError> {
        Normaliser::new(mean, std, &self.device).map_err(|e| self.forward_error(e))
    }

    /// Copy `n` crops of `size x size` RGB bytes (HWC, back to back) to this
    /// model's device, once for every model that runs on them.
    pub fn upload(&self, pixels: &[u8], n: usize, size: usize) -> Result<Tensor, ModelError> {
        Tensor::from_slice(pixels, (n, size, size, 3), &self.device)
            .map_err(|e| self.forward_error(e))
    }

    /// Queue the forward pass of uploaded crops (normalised on the device);
    /// on CUDA this returns before the GPU is done.
    pub fn start(&self, crops: &Tensor, norm: &Normaliser) -> Result<Started, ModelError> {
        let go = || -> candle_core::Result<Tensor> {
            let x = norm
                .apply(crops, self.precision.dtype())?
                .permute((0, 3, 1, 2))?;
            // A channels-last net reads the NHWC data through the view.
            let x = if self.channels_last {
                x
            } else {
                x.contiguous()?
            };
            self.net.forward(&x)
        };
        go().map(Started).map_err(|e| self.forward_error(e))
    }

    /// The logits of a started batch, `n * 1000` f32 values, crop-major.
    pub fn finish(&self, started: Started) -> Result<Vec<f32>, ModelError> {
        started
            .0
            .flatten_all()
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| self.forward_error(e))
    }
}

/// Normalisation of 8-bit crops where the model runs: each channel's 256
/// levels looked up in the table [`crate::zoom::normalise_lut`] makes, so
/// crops travel as bytes (a quarter of the f32 upload) and the values are
/// bit-identical to normalising on the host.
pub struct Normaliser {
    /// `[3 * 256]` f32.
    lut: Tensor,
    /// The same table in host memory.
    host_lut: Vec<f32>,
    /// `[3]` u32: 0, 256, 512, added to each channel's level.
    offsets: Tensor,
}

impl Normaliser {
    /// The table for `mean` and `std` on `device`.
    fn new(mean: [f32; 3], std: [f32; 3], device: &Device) -> candle_core::Result<Normaliser> {
        let lut = crate::zoom::normalise_lut(mean, std);
        Ok(Normaliser {
            lut: Tensor::from_slice(&lut, 3 * 256, device)?,
            host_lut: lut,
            offsets: Tensor::from_vec(vec![0u32, 256, 512], 3, device)?,
        })
    }

    /// `crops` (`[n, h, w, 3]` u8) normalised, NHWC in `dtype`: on the CPU
    /// in f32 one pass over the bytes through the table; elsewhere the
    /// tensor ops.
    fn apply(&self, crops: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
        if dtype == DType::F32 {
            if let Some(x) = self.on_cpu(crops)? {
                return Ok(x);
            }
        }
        self.with_ops(crops, dtype)
    }

    /// The table through tensor ops on the crops' device: a widening, an
    /// add and a gather, each a pass over the batch.
    fn with_ops(&self, crops: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
        let (n, h, w, c) = crops.dims4()?;
        let levels = crops.to_dtype(DType::U32)?.broadcast_add(&self.offsets)?;
        self.lut
            .index_select(&levels.flatten_all()?, 0)?
            .reshape((n, h, w, c))?
            .to_dtype(dtype)
    }

    /// The CPU's pass, for contiguous RGB bytes in host memory (`None`
    /// for anything else).
    fn on_cpu(&self, crops: &Tensor) -> candle_core::Result<Option<Tensor>> {
        use rayon::prelude::*;
        if crops.rank() != 4 || crops.dims().last() != Some(&3) {
            return Ok(None);
        }
        let out = {
            let (storage, layout) = crops.storage_and_layout();
            let (candle_core::Storage::Cpu(candle_core::CpuStorage::U8(v)), Some((a, b))) =
                (&*storage, layout.contiguous_offsets())
            else {
                return Ok(None);
            };
            let lut = &self.host_lut;
            // Pixel by pixel, written once (no zero fill first).
            let pixels: Vec<[f32; 3]> = v[a..b]
                .par_chunks_exact(3)
                .with_min_len(4096)
                .map(|p| {
                    [
                        lut[p[0] as usize],
                        lut[256 + p[1] as usize],
                        lut[512 + p[2] as usize],
                    ]
                })
                .collect();
            pixels.into_flattened()
        };
        Tensor::from_vec(out, crops.shape(), crops.device()).map(Some)
    }
}

/// Logits of a batch whose forward pass was started; on CUDA the work may
/// still be running until [`Classifier::finish`] reads them.
pub struct Started(Tensor);

/// A `VarBuilder` over a weights file: safetensors (mapped, each tensor's
/// pages handed back once read: `weights_file`), or a PyTorch
/// zip checkpoint (`.pth`, `.pt`, `.bin`) after checking that its pickle
/// only rebuilds tensors.
pub fn var_builder(weights: &Path, device: &Device) -> Result<VarBuilder<'static>, pth::PthError> {
    let is_pickle = weights
        .extension()
        .is_some_and(|e| e == "pth" || e == "pt" || e == "bin");
    if is_pickle {
        pth::check_tensor_only(weights)?;
        return Ok(VarBuilder::from_pth(weights, DType::F32, device)?);
    }
    // SAFETY: the file is mapped read-only; the tool never writes weights it is reading.
    let file = unsafe { super::weights_file::WeightsFile::open(weights) }?;
    Ok(VarBuilder::from_backend(
        Box::new(file),
        DType::F32,
        device.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU's one pass gives the tensor ops' values bit for bit, on
    /// every level of every channel and on a strided (not contiguous)
    /// batch, which takes the tensor ops.
    #[test]
    fn the_cpu_pass_matches_the_device_ops() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (mean, std) = (crate::zoom::IMAGENET_MEAN, crate::zoom::IMAGENET_STD);
        let norm = Normaliser::new(mean, std, &dev)?;
        let mut rng = crate::util::SplitMix64(7);
        // 2 crops of 96 x 96: every level of every channel, and more
        // pixels than a task's smallest share.
        let bytes: Vec<u8> = (0..2 * 96 * 96 * 3)
            .map(|i| {
                if i < 3 * 256 {
                    (i / 3) as u8
                } else {
                    (rng.next_u64() >> 56) as u8
                }
            })
            .collect();
        let crops = Tensor::from_vec(bytes, (2, 96, 96, 3), &dev)?;
        let fast = norm
            .on_cpu(&crops)?
            .expect("contiguous bytes take the CPU pass");
        let ops = norm.with_ops(&crops, DType::F32)?;
        let bits = |t: &Tensor| -> candle_core::Result<Vec<u32>> {
            Ok(t.flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|v| v.to_bits())
                .collect())
        };
        assert_eq!(fast.dims(), ops.dims());
        assert_eq!(bits(&fast)?, bits(&ops)?);
        assert_eq!(bits(&norm.apply(&crops, DType::F32)?)?, bits(&ops)?);
        // A view that is not contiguous (rows and columns swapped) is left
        // to the tensor ops, with the values of its contiguous copy.
        let swapped = crops.permute((0, 2, 1, 3))?;
        assert!(norm.on_cpu(&swapped)?.is_none());
        let copy = norm
            .on_cpu(&swapped.contiguous()?)?
            .expect("a contiguous copy");
        assert_eq!(bits(&norm.apply(&swapped, DType::F32)?)?, bits(&copy)?);
        Ok(())
    }
}
