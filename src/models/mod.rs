//! Classifiers in candle. Everything candle-specific stays in this folder:
//! callers hand in crops and get 1000 logits per crop.
//!
//! - [`arch`]: the architecture table; one file per family (`resnet`,
//!   `vgg`, `vit`, `efficientnet`, `convnext`, `clip`) building a [`Net`]
//!   from the shared vocabulary in [`net`].
//! - [`runtime`]: device, precision, errors. [`classifier`]: loading and
//!   forward passes. [`registry`]: models known by name and their pins.
//! - `kernels`: our own CPU convolutions (inference, and the trainable
//!   one MEMO adapts through) and channels-last helpers.
//! - [`channels_last`]: the cuDNN kernel path (`--kernels cudnn`): each
//!   study model as a layer plan over NHWC tensors, on cuDNN, cuBLASLt and
//!   our CUDA kernels.
//! - [`adapt`]: MEMO's adaptable ResNet; [`synthetic`]: generated weights;
//!   [`pth`]: the PyTorch checkpoint reader.

pub mod adapt;
pub mod arch;
pub mod channels_last;
pub mod classifier;
pub mod clip;
pub mod convnext;
pub mod efficientnet;
mod kernels;
pub mod net;
pub mod pth;
pub mod registry;
mod resnet;
pub mod runtime;
pub mod shapes;
pub mod synthetic;
pub mod vgg;
pub mod vit;
pub mod weights_file;

pub use arch::{ArchSpec, Architecture, ARCHITECTURES};
pub use channels_last::Kernels;
pub use classifier::{var_builder, Classifier, Normaliser, Started};
pub use net::{EvalPreprocess, Extras, Net};
pub use registry::{lookup, registry, RegistryEntry, WeightSource};
pub use runtime::{DeviceChoice, ModelError, Precision, Runtime};
