//! The cuDNN kernel path (`--kernels cudnn`): each study model as a layer
//! plan ([`program`]) executed over channels-last (NHWC) tensors by
//! [`net`], every step one of our ops ([`ops`]): convolutions through cuDNN
//! with BatchNorm folded and bias, residual and activation fused; linear
//! layers through cuBLASLt with the bias in the product; pooling, gates and
//! activations in our own CUDA kernels; layer norm and softmax in candle's
//! fused kernels. Activations stay NHWC and in the model's dtype from the
//! first step to the logits.
//!
//! cuDNN is not linked: [`cudnn`] loads `libcudnn.so.9` when the path is
//! first used, so the CUDA binary starts, and candle's path runs, on a
//! machine without it. On the CPU the ops run plain references, which is
//! how the tests hold every plan to the candle models.
//!
//! On the CPU the same plans run our fused CPU kernels ([`cpu`]).
//!
//! [`Kernels`] is the switch; [`GPU_DECISIONS`] and [`CPU_DECISIONS`] say,
//! per model, what `auto` runs: what was measured, never a guess.

pub mod cpu;
pub mod cudnn;
pub mod geometry;
pub mod net;
pub mod ops;
pub mod program;

#[cfg(feature = "cuda")]
mod cuda_conv;
#[cfg(feature = "cuda")]
mod cuda_kernels;
#[cfg(feature = "cuda")]
mod cuda_linear;

use serde::{Deserialize, Serialize};

/// Which kernels a model runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// Per model and device, what was measured faster (docs/gpu.md,
    /// docs/speed.md); candle's kernels where nothing was decided.
    #[default]
    Auto,
    /// candle's kernels (on a GPU im2col + GEMM, NCHW; on the CPU our NCHW
    /// convolution).
    Candle,
    /// The channels-last plans with fused epilogues: cuDNN, cuBLASLt and our
    /// kernels on a GPU (also spelled `cudnn`), our fused kernels on the CPU.
    #[value(alias = "cudnn")]
    #[serde(alias = "cudnn")]
    Fused,
}

impl Kernels {
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Auto => "auto",
            Kernels::Candle => "candle",
            Kernels::Fused => "fused",
        }
    }

    /// Whether `arch` runs on the channels-last path under this switch, on
    /// a GPU (`gpu`) or the CPU.
    pub fn channels_last_for(self, arch: &str, gpu: bool) -> bool {
        let planned = runnable(arch);
        match self {
            Kernels::Candle => false,
            Kernels::Fused => planned,
            Kernels::Auto => {
                planned && decision(arch, gpu).is_some_and(|d| d == Decision::ChannelsLast)
            }
        }
    }
}

impl std::fmt::Display for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether `arch` has a plan on this path (all but the demo's small CNN).
pub fn runnable(arch: &str) -> bool {
    crate::models::Architecture::find(arch).is_some_and(|a| program::for_arch(a.name()).is_some())
}

/// Why a model could not be built on the path.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Cudnn(#[from] cudnn::CudnnError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `arch` on the channels-last path, its weights under `vb` (in `vb`'s
/// dtype, on its device); CLIP's image tower under its zero-shot head. On
/// a GPU, cuDNN is loaded first, so a missing library is named before any
/// weight is read.
pub fn build(
    arch: crate::models::Architecture,
    vb: candle_nn::VarBuilder<'static>,
    extras: &crate::models::Extras,
) -> Result<crate::models::Net, BuildError> {
    let Some(program) = program::for_arch(arch.name()) else {
        return Err(candle_core::Error::msg(format!(
            "{} has no plan on the cuDNN path: run it with --kernels candle",
            arch.name()
        ))
        .into());
    };
    if vb.device().is_cuda() {
        cudnn::Cudnn::load()?;
    }
    if arch.name() == "clip_vit_large_patch14" {
        return Ok(crate::models::clip::clip_vit_large_patch14_channels_last(
            vb, extras,
        )?);
    }
    let program = program.map_err(candle_core::Error::wrap)?;
    // (`forward` splits on the CPU only.)
    let split = cpu_images_per_thread(arch.name());
    Ok(Box::new(
        net::ChannelsLastNet::new(program, vb)?.split_batch(split),
    ))
}

/// What a measurement decided for one model on one kind of device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Parity held and the channels-last path was faster.
    ChannelsLast,
    /// It failed parity or was slower: candle's kernels stay.
    Candle,
}

/// Per model, what `--kernels auto` runs on a GPU: the rows
/// `scripts/kernel_verdict.py` prints from `scripts/gpu-check.sh` (the card,
/// date and speed-up beside each). A model missing here has not passed the
/// check on a GPU and keeps candle's kernels.
pub const GPU_DECISIONS: &[(&str, Decision, &str)] = &[];

/// Per model, what `--kernels auto` runs on the CPU: from
/// `scripts/bench.py --kernels` (fused against candle, same run; docs/speed.md).
pub const CPU_DECISIONS: &[(&str, Decision, &str)] = &[
    (
        "efficientnet_b0",
        Decision::ChannelsLast,
        "2 cores, 2026-12-06: 94 vs 17 crops/s",
    ),
    (
        "convnext_base",
        Decision::ChannelsLast,
        "2 cores, 2026-12-06: 5.3 vs 3.0 crops/s",
    ),
    (
        "vit_b_32",
        Decision::ChannelsLast,
        "2 cores, 2026-12-06: 20.6 vs 13.4 crops/s (weights in product order)",
    ),
    (
        "vit_base_patch32_224",
        Decision::ChannelsLast,
        "the network of vit_b_32 under timm's names",
    ),
    (
        "resnet50",
        Decision::ChannelsLast,
        "2 cores, 2026-12-06: 19.2 vs 18.1 crops/s (weights in product order)",
    ),
    (
        "resnet18",
        Decision::ChannelsLast,
        "2 cores, 2026-12-06: 45.4 vs 36.3 crops/s (Winograd F(2x2, 3x3)); F(4x4, 3x3) since: 57 -> 65",
    ),
    (
        "vgg16",
        Decision::ChannelsLast,
        "2 cores, 2026-12-06: 8.9 vs 5.0 crops/s (Winograd F(2x2, 3x3)); F(4x4, 3x3) since: 9.9 -> 11.8",
    ),
    (
        "alexnet",
        Decision::ChannelsLast,
        "2 cores, 2026-12-06: 99 vs 59 crops/s (weights in product order)",
    ),
    (
        "clip_vit_large_patch14",
        Decision::ChannelsLast,
        "2 cores, 2026-12-06: 1.05 vs 0.80 crops/s (batch 4, our packed product)",
    ),
];

/// Per model, how many images each thread carries through the whole plan
/// on the CPU (`net::ChannelsLastNet::split_batch`), where that was
/// measured faster than sharing each layer of the whole batch; models
/// missing here (weight-bound ones: AlexNet's and VGG's classifiers, ViT)
/// run whole batches.
pub const CPU_SPLITS: &[(&str, usize, &str)] = &[
    (
        "efficientnet_b0",
        2,
        "2 cores, 2026-12-06: 124 vs 100 crops/s (batch 16; 1 image: 122, 4: 113)",
    ),
    (
        "resnet18",
        4,
        "2 cores, 2026-12-06: 80 vs 68 crops/s (batch 16; 2 images: 72, 8: 79); peak RSS 397 -> 303 MB",
    ),
    (
        "resnet50",
        4,
        "2 cores, 2026-12-06: 27.6 vs 26.6 crops/s (batch 16, 6 pairs); peak RSS 559 -> 457 MB",
    ),
];

/// `CPU_SPLITS`' entry for `arch`.
pub fn cpu_images_per_thread(arch: &str) -> Option<usize> {
    CPU_SPLITS
        .iter()
        .find(|(a, _, _)| *a == arch)
        .map(|(_, n, _)| *n)
}

/// The decision for `arch` on a GPU or the CPU, if one was measured.
pub fn decision(arch: &str, gpu: bool) -> Option<Decision> {
    let table = if gpu { GPU_DECISIONS } else { CPU_DECISIONS };
    table
        .iter()
        .find(|(a, _, _)| *a == arch)
        .map(|(_, d, _)| *d)
}

/// The largest elementwise difference of two equally long value lists:
/// what the kernels' tests hold to a tolerance.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared outputs differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_defaults_to_what_was_measured() {
        assert_eq!(Kernels::default(), Kernels::Auto);
        for a in crate::models::Architecture::all() {
            for gpu in [false, true] {
                assert_eq!(
                    Kernels::Auto.channels_last_for(a.name(), gpu),
                    runnable(a.name()) && decision(a.name(), gpu) == Some(Decision::ChannelsLast)
                );
                assert!(!Kernels::Candle.channels_last_for(a.name(), gpu));
            }
        }
        assert!(Kernels::Fused.channels_last_for("resnet50", true));
        assert!(Kernels::Fused.channels_last_for("resnet50", false));
        assert!(!Kernels::Fused.channels_last_for("shapes_cnn", true));
        assert!(!Kernels::Fused.channels_last_for("no-such-net", false));
        for (arch, _, note) in GPU_DECISIONS.iter().chain(CPU_DECISIONS) {
            assert!(crate::models::Architecture::find(arch).is_some(), "{arch}");
            assert!(!note.is_empty(), "{arch}: say where it was measured");
        }
        for (arch, images, note) in CPU_SPLITS {
            assert!(runnable(arch) && *images > 0, "{arch}");
            assert!(!note.is_empty(), "{arch}: say where it was measured");
            assert_eq!(cpu_images_per_thread(arch), Some(*images));
        }
        assert_eq!(cpu_images_per_thread("alexnet"), None);
        // `cudnn` is the path's name on a GPU.
        use clap::ValueEnum;
        assert_eq!(Kernels::from_str("cudnn", false), Ok(Kernels::Fused));
    }
}
