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
//! [`Kernels`] is the switch; [`DECISIONS`] says, per model, what `auto`
//! runs: what the GPU check measured, never a guess.

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

/// Which kernels a model runs on a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// Per model, what the GPU check decided (docs/gpu.md); candle's
    /// kernels where it has not decided.
    #[default]
    Auto,
    /// candle's kernels (im2col + GEMM, NCHW).
    Candle,
    /// Our channels-last path: cuDNN, cuBLASLt and our kernels.
    Cudnn,
}

impl Kernels {
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Auto => "auto",
            Kernels::Candle => "candle",
            Kernels::Cudnn => "cudnn",
        }
    }

    /// Whether `arch` runs on the channels-last path under this switch,
    /// on a CUDA device.
    pub fn channels_last_for(self, arch: &str) -> bool {
        let planned = runnable(arch);
        match self {
            Kernels::Candle => false,
            Kernels::Cudnn => planned,
            Kernels::Auto => planned && decision(arch) == Some(Decision::Cudnn),
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
    Ok(Box::new(net::ChannelsLastNet::new(program, vb)?))
}

/// What the GPU check decided for one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Parity held and it was faster than candle's kernels.
    Cudnn,
    /// It failed parity or was slower: candle's kernels stay.
    Candle,
}

/// Per model, what `--kernels auto` runs, from `scripts/kernel_verdict.py`'s
/// rows (the card, date and speed-up beside each). A model missing here has
/// not been through the check on a GPU yet and keeps candle's kernels.
pub const DECISIONS: &[(&str, Decision, &str)] = &[];

/// The decision for `arch`, if the GPU check made one.
pub fn decision(arch: &str) -> Option<Decision> {
    DECISIONS
        .iter()
        .find(|(a, _, _)| *a == arch)
        .map(|(_, d, _)| *d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_defaults_to_what_the_check_decided() {
        assert_eq!(Kernels::default(), Kernels::Auto);
        // Nothing has passed the check on a GPU yet: auto is candle's path.
        for a in crate::models::Architecture::all() {
            assert_eq!(
                Kernels::Auto.channels_last_for(a.name()),
                decision(a.name()) == Some(Decision::Cudnn)
            );
            assert!(!Kernels::Candle.channels_last_for(a.name()));
        }
        assert!(Kernels::Cudnn.channels_last_for("resnet50"));
        assert!(!Kernels::Cudnn.channels_last_for("shapes_cnn"));
        assert!(!Kernels::Cudnn.channels_last_for("no-such-net"));
        for (arch, _, note) in DECISIONS {
            assert!(crate::models::Architecture::find(arch).is_some(), "{arch}");
            assert!(!note.is_empty(), "{arch}: say where it was measured");
        }
    }
}
