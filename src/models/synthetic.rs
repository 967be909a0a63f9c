//! Reproducible synthetic weights (no download needed) for the demo, the
//! tests and the PyTorch parity check. `scripts/golden_resnet.py` implements
//! the same generator in numpy, so both sides build identical networks.
//!
//! Generator: splitmix64 over one counter shared by all tensors taken in
//! sorted name order; `u = (z >> 40) / 2^24` in [0, 1). Per tensor:
//! `running_var = 0.5 + u`, `running_mean = 0.2 (u - 0.5)`,
//! 1-d `weight` = `0.5 + 0.5 u`, `bias = 0.2 (u - 0.5)`,
//! other weights `(2u - 1) sqrt(3 / fan_in)`.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::collections::HashMap;
use std::path::Path;

use super::{Architecture, Extras, ModelError, Net};
use crate::labels::NUM_CLASSES;

pub use crate::util::SplitMix64;

/// What the classification head does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Head {
    /// Generated like every other tensor.
    Random,
    /// Zero weights and a bias of 10 on one class: the model answers that
    /// class for every input, whatever the backbone computes.
    Always(usize),
}

fn value(name: &str, rank: usize, fan_in: usize, u: f32) -> f32 {
    if name.ends_with("running_var") {
        0.5 + u
    } else if name.ends_with("running_mean") || name.ends_with("bias") {
        0.2 * (u - 0.5)
    } else if rank == 1 {
        0.5 + 0.5 * u
    } else {
        (2.0 * u - 1.0) * (3.0 / fan_in as f32).sqrt()
    }
}

/// Names and shapes of every tensor a network reads, sorted by name.
pub fn tensor_shapes_with(
    build: impl Fn(VarBuilder<'static>) -> candle_core::Result<Net>,
) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    drop(build(vb).map_err(|e| ModelError::Device(format!("building tensor shapes: {e}")))?);
    let data = varmap
        .data()
        .lock()
        .map_err(|_| ModelError::Device("poisoned var map".into()))?;
    let mut shapes: Vec<(String, Vec<usize>)> = data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().dims().to_vec()))
        .collect();
    shapes.sort();
    Ok(shapes)
}

/// Names and shapes of every tensor `arch` reads, sorted by name.
pub fn tensor_shapes(arch: Architecture) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
    tensor_shapes_with(|vb| (arch.spec().build)(vb, &Extras::default()))
}

/// Generate weights for the network `build` makes, from `seed`, as safetensors.
/// With [`Head::Always`], every `[1000, _]` weight is zeroed and every
/// `[1000]` bias is one-hot: the final classifier answers one class.
pub fn write_weights_with(
    build: impl Fn(VarBuilder<'static>) -> candle_core::Result<Net>,
    seed: u64,
    head: Head,
    out: &Path,
) -> Result<(), ModelError> {
    let err = |e: candle_core::Error| ModelError::Load {
        file: out.into(),
        arch: "synthetic",
        message: e.to_string(),
    };
    let mut rng = SplitMix64(seed);
    let mut tensors = HashMap::new();
    for (name, shape) in tensor_shapes_with(build)? {
        let n: usize = shape.iter().product();
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        let mut values: Vec<f32> = (0..n)
            .map(|_| value(&name, shape.len(), fan_in, rng.next_unit()))
            .collect();
        if let Head::Always(class) = head {
            if name.ends_with("weight") && shape.len() == 2 && shape[0] == NUM_CLASSES {
                values.iter_mut().for_each(|v| *v = 0.0);
            } else if name.ends_with("bias") && shape == [NUM_CLASSES] {
                values = (0..NUM_CLASSES)
                    .map(|i| if i == class { 10.0 } else { 0.0 })
                    .collect();
            }
        }
        tensors.insert(
            name,
            Tensor::from_vec(values, shape, &Device::Cpu).map_err(err)?,
        );
    }
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ModelError::Load {
            file: out.into(),
            arch: "synthetic",
            message: e.to_string(),
        })?;
    }
    candle_core::safetensors::save(&tensors, out).map_err(err)
}

/// Generate weights for `arch` from `seed` and save them as safetensors.
pub fn write_weights(
    arch: Architecture,
    seed: u64,
    head: Head,
    out: &Path,
) -> Result<(), ModelError> {
    write_weights_with(
        |vb| (arch.spec().build)(vb, &Extras::default()),
        seed,
        head,
        out,
    )
}

/// A word-level tokenizer (`tokenizer.json`) over the words of CLIP's class
/// names and prompt templates, each prompt between `<|startoftext|>` and
/// `<|endoftext|>`: enough to make a zero-shot head from generated text
/// weights. Returns the JSON and its vocabulary size.
pub fn clip_word_tokenizer() -> (String, usize) {
    let text = format!("{}\n{}", super::clip::CLASS_NAMES, super::clip::TEMPLATES);
    let mut words = std::collections::BTreeSet::new();
    let mut word = String::new();
    for ch in text.chars().chain(std::iter::once(' ')) {
        if ch.is_alphanumeric() || ch == '_' {
            word.push(ch);
            continue;
        }
        if !word.is_empty() {
            words.insert(std::mem::take(&mut word));
        }
        if !ch.is_whitespace() {
            words.insert(ch.to_string());
        }
    }
    let specials = ["<|startoftext|>", "<|endoftext|>", "<unk>"];
    let vocab: serde_json::Map<String, serde_json::Value> = specials
        .iter()
        .map(|s| s.to_string())
        .chain(words)
        .enumerate()
        .map(|(i, w)| (w, serde_json::Value::from(i)))
        .collect();
    let size = vocab.len();
    let doc = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": 0, "content": specials[0], "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 1, "content": specials[1], "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": specials[0], "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": specials[1], "type_id": 0}},
            ],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {
                specials[0]: {"id": specials[0], "ids": [0], "tokens": [specials[0]]},
                specials[1]: {"id": specials[1], "ids": [1], "tokens": [specials[1]]},
            },
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": specials[2]},
    });
    (doc.to_string(), size)
}

/// A CLIP model for throughput runs, written into `dir`: the weights
/// (generated, as `weights`), `config.json` and `tokenizer.json` beside
/// them. The image tower is `vision` (ViT-L/14's for the study's CLIP);
/// the text tower is a one-layer 64-wide transformer over
/// [`clip_word_tokenizer`]'s words, so the zero-shot head (80,000 prompts)
/// is made in seconds. Returns the weights' path.
pub fn write_clip_for_bench(
    dir: &Path,
    weights: &str,
    seed: u64,
    vision: &candle_transformers::models::clip::vision_model::ClipVisionConfig,
) -> Result<std::path::PathBuf, ModelError> {
    use candle_transformers::models::clip::text_model::ClipTextTransformer;
    let io = |file: &Path, e: std::io::Error| ModelError::Load {
        file: file.into(),
        arch: "synthetic",
        message: e.to_string(),
    };
    let (tokenizer, vocab) = clip_word_tokenizer();
    let real = vision;
    let config = serde_json::json!({
        "architectures": ["CLIPModel"],
        "projection_dim": real.projection_dim,
        "text_config": {"vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128,
                        "num_hidden_layers": 1, "num_attention_heads": 2,
                        "max_position_embeddings": 77, "hidden_act": "quick_gelu"},
        "vision_config": {"hidden_size": real.embed_dim, "intermediate_size": real.intermediate_size,
                          "num_hidden_layers": real.num_hidden_layers, "num_attention_heads": real.num_attention_heads,
                          "image_size": real.image_size, "patch_size": real.patch_size, "hidden_act": "quick_gelu"},
    });
    let cfg = super::clip::config_from_json(
        &config["text_config"],
        &config["vision_config"],
        &config["projection_dim"],
    )
    .map_err(ModelError::Device)?;
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    for (name, text) in [
        ("tokenizer.json", tokenizer),
        ("config.json", config.to_string()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| io(&path, e))?;
    }
    let weights = dir.join(weights);
    let build = |vb: VarBuilder<'static>| -> candle_core::Result<Net> {
        ClipTextTransformer::new(vb.pp("text_model"), &cfg.text_config)?;
        let t = &cfg.text_config;
        candle_nn::linear_no_bias(t.embed_dim, t.projection_dim, vb.pp("text_projection"))?;
        Ok(Box::new(super::clip::ImageEncoder::new(
            vb,
            &cfg.vision_config,
        )?))
    };
    write_weights_with(build, seed, Head::Random, &weights)?;
    Ok(weights)
}

/// Generated weights of `arch` in `dir`, for throughput runs on machines
/// with no weights at hand (`bench --model synthetic`): the weights file,
/// plus for CLIP ViT-L/14's image tower a small text tower, its config and
/// a tokenizer beside it to make the zero-shot head from.
pub fn write_for_bench(arch: Architecture, dir: &Path) -> Result<std::path::PathBuf, ModelError> {
    let file = format!("synthetic-{}.safetensors", arch.name());
    if arch.spec().extra_files.contains(&"tokenizer.json") {
        return write_clip_for_bench(
            dir,
            &file,
            1,
            &super::clip::vit_large_patch14().vision_config,
        );
    }
    let path = dir.join(&file);
    write_weights(arch, 1, Head::Random, &path)?;
    Ok(path)
}

/// A reproducible input batch (values in [-2, 2)), as the parity script makes it.
pub fn input(seed: u64, len: usize) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    (0..len).map(|_| 4.0 * rng.next_unit() - 2.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_reference_sequence() {
        // Reference values of splitmix64 seeded with 0 (Vigna's generator).
        let mut r = SplitMix64(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn the_word_tokenizer_wraps_prompts_in_clips_markers() {
        let (json, size) = clip_word_tokenizer();
        let tok = tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap();
        assert_eq!(tok.get_vocab_size(true), size);
        let ids = tok.encode("a photo of a goldfish.", true).unwrap();
        let ids = ids.get_ids();
        assert_eq!((ids[0], ids[ids.len() - 1]), (0, 1), "{ids:?}");
        assert_eq!(ids.len(), 2 + 6, "{ids:?}");
        let unk = tok.token_to_id("<unk>").unwrap();
        assert!(ids[1..ids.len() - 1].iter().all(|&i| i != unk), "{ids:?}");
    }

    #[test]
    fn resnet18_has_the_torchvision_tensor_names() {
        let shapes = tensor_shapes(Architecture::find("resnet18").unwrap()).unwrap();
        let find = |n: &str| shapes.iter().find(|(k, _)| k == n).map(|(_, s)| s.clone());
        assert_eq!(find("conv1.weight"), Some(vec![64, 3, 7, 7]));
        assert_eq!(
            find("layer2.0.downsample.0.weight"),
            Some(vec![128, 64, 1, 1])
        );
        assert_eq!(find("fc.weight"), Some(vec![1000, 512]));
        assert_eq!(find("bn1.running_var"), Some(vec![64]));
        // torchvision's resnet18 state dict has 102 float tensors (+ 20 num_batches_tracked).
        assert_eq!(shapes.len(), 102);
    }
}
