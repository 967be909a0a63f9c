//! CLIP parity with transformers (`scripts/golden_clip.py`): a tiny CLIP
//! with generated weights, the committed tokenizer (CLIP's BPE cut to its
//! first 1000 merges, checked there against open_clip), and the head cache.
//! The full-size ViT-L/14 check runs from `golden_clip.py --full DIR` (1.7 GB
//! of generated weights), outside the suite.

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::ClipTextTransformer;
use candle_transformers::models::clip::ClipConfig;
use imagenet_hard::models::clip::{zero_shot, ImageEncoder};
use imagenet_hard::models::synthetic::{input, tensor_shapes_with, write_weights_with, Head};
use imagenet_hard::models::{var_builder, Extras, Net};
use serde_json::Value;
use std::path::{Path, PathBuf};

use crate::golden::{golden, logits_parity};

fn doc(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The script's config: transformers' names for candle's fields.
fn config(doc: &Value) -> ClipConfig {
    let c = &doc["config"];
    imagenet_hard::models::clip::config_from_json(&c["text"], &c["vision"], &c["projection_dim"])
        .unwrap()
}

fn extras(tokenizer: &Path, cache_dir: Option<PathBuf>) -> Extras {
    Extras {
        files: [("tokenizer.json".to_string(), tokenizer.to_path_buf())].into(),
        cache_dir,
    }
}

/// Class names and templates a zero-shot golden was made with.
fn prompts(doc: &Value) -> (Vec<&'static str>, Vec<String>) {
    let all: Vec<&str> = imagenet_hard::models::clip::CLASS_NAMES.lines().collect();
    let classes = doc["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| all[c.as_u64().unwrap() as usize])
        .collect();
    let templates = doc["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    (classes, templates)
}

/// Image embeddings for `dir/{prefix}_image.json`: the text tower is built
/// too, as its tensors come first in the shared generator stream.
fn image_parity(image_doc: &Path) {
    let cfg = config(&doc(image_doc));
    let build = |vb: VarBuilder<'static>| -> candle_core::Result<Net> {
        ClipTextTransformer::new(vb.pp("text_model"), &cfg.text_config)?;
        let t = &cfg.text_config;
        candle_nn::linear_no_bias(t.embed_dim, t.projection_dim, vb.pp("text_projection"))?;
        Ok(Box::new(ImageEncoder::new(vb, &cfg.vision_config)?))
    };
    logits_parity(image_doc.to_str().unwrap(), build);
}

fn zero_shot_parity(zero_shot_doc: &Path, tokenizer: &Path) {
    let d = doc(zero_shot_doc);
    let cfg = config(&d);
    let (classes, templates) = prompts(&d);
    let templates: Vec<&str> = templates.iter().map(String::as_str).collect();
    let extras = extras(tokenizer, None);
    let build = |vb| zero_shot(vb, &extras, &cfg, &classes, &templates);
    logits_parity(zero_shot_doc.to_str().unwrap(), build);
}

#[test]
fn clip_tiny_image_embeddings_match_pytorch() {
    image_parity(&golden("clip/tiny_image.json"));
}

#[test]
fn clip_tiny_zero_shot_logits_match_pytorch() {
    zero_shot_parity(
        &golden("clip/tiny_zero_shot.json"),
        &golden("clip/tokenizer.json"),
    );
}

#[test]
fn clip_tensor_names_are_transformers_names() {
    let d = doc(&golden("clip/tiny_zero_shot.json"));
    let cfg = config(&d);
    let (classes, templates) = prompts(&d);
    let templates: Vec<&str> = templates.iter().map(String::as_str).collect();
    let extras = extras(&golden("clip/tokenizer.json"), None);
    let names: Vec<String> =
        tensor_shapes_with(|vb| zero_shot(vb, &extras, &cfg, &classes, &templates))
            .unwrap()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
    let expected: Vec<String> =
        serde_json::from_value(doc(&golden("clip/tiny_image.json"))["tensors"].clone()).unwrap();
    assert_eq!(names, expected);
}

#[test]
fn clip_tokenizer_gives_open_clips_ids() {
    let d = doc(&golden("clip/tiny_zero_shot.json"));
    let tok = tokenizers::Tokenizer::from_file(golden("clip/tokenizer.json")).unwrap();
    for (prompt, ids) in d["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .zip(d["token_ids"].as_array().unwrap())
    {
        let ours = tok.encode(prompt.as_str().unwrap(), true).unwrap();
        let expected: Vec<u32> = serde_json::from_value(ids.clone()).unwrap();
        assert_eq!(ours.get_ids(), expected, "{prompt}");
    }
}

#[test]
fn clip_head_is_cached_and_read_back() {
    let d = doc(&golden("clip/tiny_zero_shot.json"));
    let cfg = config(&d);
    let (classes, templates) = prompts(&d);
    let templates: Vec<&str> = templates.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = golden("clip/tokenizer.json");
    let weights = dir.path().join("w.safetensors");
    // Uncached here: shape discovery's placeholder weights make a head too.
    let uncached = extras(&tokenizer, None);
    write_weights_with(
        |vb| zero_shot(vb, &uncached, &cfg, &classes, &templates),
        3,
        Head::Random,
        &weights,
    )
    .unwrap();
    let extras = extras(&tokenizer, Some(dir.path().join("cache")));
    let build = |vb| zero_shot(vb, &extras, &cfg, &classes, &templates);
    let size = cfg.vision_config.image_size;
    let x = Tensor::from_vec(input(5, 3 * size * size), (1, 3, size, size), &Device::Cpu).unwrap();
    let logits = |net: Net| -> Vec<f32> {
        net.forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let load = || build(var_builder(&weights, &Device::Cpu).unwrap()).unwrap();
    let first = logits(load());
    let heads: Vec<PathBuf> = std::fs::read_dir(dir.path().join("cache/clip-heads"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert_eq!(logits(load()), first);
    // A head of zeros in the cache shows the second load reads it.
    let zeros = Tensor::zeros(
        (classes.len(), cfg.text_config.projection_dim),
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    zeros.save_safetensors("head", &heads[0]).unwrap();
    assert!(logits(load()).iter().all(|v| *v == 0.0));
    // Other templates are another head.
    drop(
        zero_shot(
            var_builder(&weights, &Device::Cpu).unwrap(),
            &extras,
            &cfg,
            &classes,
            &templates[..1],
        )
        .unwrap(),
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("cache/clip-heads"))
            .unwrap()
            .count(),
        2
    );
}
