//! AlexNet (torchvision) and VGG-16/19 (timm) against PyTorch: logits of
//! narrow copies at input sizes that run every pooling path, and the tensor
//! names and shapes of the full-size networks. Expectations are written by
//! `scripts/golden_vgg.py`.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use imagenet_hard::models::vgg::{AlexNet, AlexNetConfig, Vgg, VggConfig};
use imagenet_hard::models::{Architecture, Extras, Net};
use std::sync::{Arc, Mutex};

use crate::golden::{golden, logits_parity};

/// Logits parity for one golden: the config its `arch` names, narrowed by
/// its `width_divisor`.
fn check(doc: &str) {
    let text = std::fs::read_to_string(golden(doc)).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
    let divisor = meta["width_divisor"].as_u64().unwrap() as usize;
    match meta["arch"].as_str().unwrap() {
        "alexnet" => {
            let cfg = AlexNetConfig::TORCHVISION.narrowed(divisor);
            logits_parity(doc, move |vb| Ok(Box::new(AlexNet::new(cfg, vb)?) as Net));
        }
        arch => {
            let cfg = match arch {
                "vgg16" => VggConfig::VGG16,
                "vgg19" => VggConfig::VGG19,
                other => panic!("{doc}: unexpected arch {other}"),
            }
            .narrowed(divisor);
            logits_parity(doc, move |vb| Ok(Box::new(Vgg::new(cfg, vb)?) as Net));
        }
    }
}

#[test]
fn alexnet_logits_match_torchvision() {
    // 6x6 features (pool is identity), 4x4 (pooled up), 8x8 (overlapping bins).
    for size in [224, 160, 288] {
        check(&format!("vgg/alexnet_w8_{size}.json"));
    }
}

#[test]
fn vgg16_logits_match_timm() {
    // 7x7 features, and 5x5 ones that ConvMlp pools up to 7x7.
    for size in [224, 160] {
        check(&format!("vgg/vgg16_w8_{size}.json"));
    }
}

#[test]
fn vgg19_logits_match_timm() {
    // 8x8 features: fc1 gives 2x2, which the head averages.
    check("vgg/vgg19_w8_256.json");
}

type TensorList = Vec<(String, Vec<usize>)>;

/// Records the name and shape of every tensor a network asks for, and
/// hands back broadcast zeros, so full-size networks cost no memory.
struct Shapes(Arc<Mutex<TensorList>>);

impl candle_nn::var_builder::SimpleBackend for Shapes {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .lock()
            .unwrap()
            .push((name.into(), s.dims().to_vec()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: shape unknown")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

#[test]
fn full_size_tensor_names_match_the_reference_state_dicts() {
    let text = std::fs::read_to_string(golden("vgg/tensors.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    for name in ["alexnet", "vgg16", "vgg19"] {
        let arch = Architecture::find(name).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let vb = VarBuilder::from_backend(Box::new(Shapes(seen.clone())), DType::F32, Device::Cpu);
        drop((arch.spec().build)(vb, &Extras::default()).unwrap());
        let mut ours = seen.lock().unwrap().clone();
        ours.sort();
        let expected: TensorList = serde_json::from_value(reference[name].clone()).unwrap();
        assert_eq!(ours, expected, "{name}: tensor names and shapes");
    }
}
