//! OpenAI CLIP used zero-shot (protocol §4), with transformers' tensor names
//! (`vision_model.*`, `text_model.*`, `visual_projection`, `text_projection`)
//! as in `openai/clip-vit-large-patch14`. candle-transformers' CLIP towers do
//! the encoding; this file makes the 1000-class head from OpenAI's 80-prompt
//! ensemble and keeps it in the tool cache, since making it encodes 80,000
//! prompts.
//!
//! The checkpoint's `logit_scale` is not read: protocol §4 fixes the scale at 100.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, Linear, VarBuilder};
use candle_transformers::models::clip::text_model::{
    Activation, ClipTextConfig, ClipTextTransformer,
};
use candle_transformers::models::clip::vision_model::{ClipVisionConfig, ClipVisionTransformer};
use candle_transformers::models::clip::{div_l2_norm, ClipConfig};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{EvalPreprocess, Extras, Net};
use crate::zoom::Interpolation;

/// OpenAI's curated ImageNet class names in class-index order
/// (`scripts/gen_clip_tables.py`); some repeat, e.g. "missile" at 657 and 744.
pub const CLASS_NAMES: &str = include_str!("../labels/clip_imagenet.txt");
/// OpenAI's 80 ImageNet prompt templates; `{}` stands for the class name.
pub const TEMPLATES: &str = include_str!("../labels/clip_templates.txt");

/// Scale of the zero-shot logits (protocol §4).
const LOGIT_SCALE: f64 = 100.0;
/// Prompts encoded at once while making a head.
const PROMPT_BATCH: usize = 256;

/// CLIP's own eval view: bicubic resize to 224, centre crop 224, OpenAI's mean/std.
#[allow(clippy::excessive_precision)] // OpenAI's published digits, kept as written.
pub const EVAL: EvalPreprocess = EvalPreprocess {
    resize: 224,
    crop: 224,
    interpolation: Interpolation::Bicubic,
    mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
    std: [0.268_629_54, 0.261_302_58, 0.275_777_11],
};

/// `openai/clip-vit-large-patch14` (`config.json`): 224 px, patch 14.
pub fn vit_large_patch14() -> ClipConfig {
    ClipConfig {
        text_config: ClipTextConfig {
            vocab_size: 49408,
            embed_dim: 768,
            activation: Activation::QuickGelu,
            intermediate_size: 3072,
            max_position_embeddings: 77,
            pad_with: None,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            projection_dim: 768,
        },
        vision_config: ClipVisionConfig {
            embed_dim: 1024,
            activation: Activation::QuickGelu,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            projection_dim: 768,
            num_channels: 3,
            image_size: 224,
            patch_size: 14,
        },
        logit_scale_init_value: LOGIT_SCALE.ln() as f32,
        image_size: 224,
    }
}

/// A CLIP config from transformers' `config.json` fields: the text and
/// vision sub-configs (`hidden_size`, `intermediate_size`, layers, heads,
/// `vocab_size`, `max_position_embeddings`, `image_size`, `patch_size`) and
/// `projection_dim`. Only QuickGELU (OpenAI's CLIPs) is supported.
pub fn config_from_json(
    text: &serde_json::Value,
    vision: &serde_json::Value,
    projection_dim: &serde_json::Value,
) -> Result<ClipConfig, String> {
    let n = |v: &serde_json::Value, key: &str| -> Result<usize, String> {
        v[key]
            .as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| format!("missing or non-integer `{key}`"))
    };
    for (side, v) in [("text_config", text), ("vision_config", vision)] {
        if let Some(act) = v["hidden_act"].as_str().filter(|a| *a != "quick_gelu") {
            return Err(format!(
                "{side}.hidden_act `{act}`: only quick_gelu (OpenAI CLIP) is supported"
            ));
        }
    }
    let projection_dim = projection_dim
        .as_u64()
        .ok_or("missing or non-integer `projection_dim`")? as usize;
    let image_size = n(vision, "image_size")?;
    Ok(ClipConfig {
        text_config: ClipTextConfig {
            vocab_size: n(text, "vocab_size")?,
            embed_dim: n(text, "hidden_size")?,
            activation: Activation::QuickGelu,
            intermediate_size: n(text, "intermediate_size")?,
            max_position_embeddings: n(text, "max_position_embeddings")?,
            pad_with: None,
            num_hidden_layers: n(text, "num_hidden_layers")?,
            num_attention_heads: n(text, "num_attention_heads")?,
            projection_dim,
        },
        vision_config: ClipVisionConfig {
            embed_dim: n(vision, "hidden_size")?,
            activation: Activation::QuickGelu,
            intermediate_size: n(vision, "intermediate_size")?,
            num_hidden_layers: n(vision, "num_hidden_layers")?,
            num_attention_heads: n(vision, "num_attention_heads")?,
            projection_dim,
            num_channels: 3,
            image_size,
            patch_size: n(vision, "patch_size")?,
        },
        logit_scale_init_value: LOGIT_SCALE.ln() as f32,
        image_size,
    })
}

/// The registered architecture over the 1000 ImageNet classes: sized by the
/// repo's `config.json` when it is handed over, else ViT-L/14.
pub fn clip_vit_large_patch14(
    vb: VarBuilder<'static>,
    extras: &Extras,
) -> candle_core::Result<Net> {
    let cfg = config_of(extras)?;
    let image = Box::new(ImageEncoder::new(vb.clone(), &cfg.vision_config)?);
    imagenet_zero_shot(vb, extras, &cfg, image)
}

/// The same classifier with its image tower on the channels-last path
/// (`--kernels cudnn`); the text tower makes the head as before.
pub fn clip_vit_large_patch14_channels_last(
    vb: VarBuilder<'static>,
    extras: &Extras,
) -> candle_core::Result<Net> {
    use super::channels_last::{net::ChannelsLastNet, program};
    let cfg = config_of(extras)?;
    let plan = program::clip_image_tower("clip_vit_large_patch14", tower(&cfg.vision_config))
        .map_err(candle_core::Error::wrap)?;
    let image = Box::new(ChannelsLastNet::new(plan, vb.clone())?);
    imagenet_zero_shot(vb, extras, &cfg, image)
}

/// The shape of an image tower, for its channels-last plan.
pub fn tower(v: &ClipVisionConfig) -> super::channels_last::program::ClipTower {
    super::channels_last::program::ClipTower {
        dim: v.embed_dim,
        depth: v.num_hidden_layers,
        heads: v.num_attention_heads,
        mlp_dim: v.intermediate_size,
        patch: v.patch_size,
        image_size: v.image_size,
        projection_dim: v.projection_dim,
    }
}

/// The repo's `config.json` when it is handed over, else ViT-L/14.
fn config_of(extras: &Extras) -> candle_core::Result<ClipConfig> {
    Ok(match extras.files.get("config.json") {
        Some(path) => {
            let bad = |m: String| candle_core::Error::msg(format!("{}: {m}", path.display()));
            let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            config_from_json(
                &json["text_config"],
                &json["vision_config"],
                &json["projection_dim"],
            )
            .map_err(bad)?
        }
        None => vit_large_patch14(),
    })
}

/// A zero-shot classifier over the 1000 ImageNet classes and OpenAI's
/// prompt ensemble, on `image`.
fn imagenet_zero_shot(
    vb: VarBuilder<'static>,
    extras: &Extras,
    cfg: &ClipConfig,
    image: Box<dyn Module + Send + Sync>,
) -> candle_core::Result<Net> {
    zero_shot_with_image(
        vb,
        extras,
        cfg,
        &CLASS_NAMES.lines().collect::<Vec<_>>(),
        &TEMPLATES.lines().collect::<Vec<_>>(),
        image,
    )
}

/// Image tower + `visual_projection`: NCHW crops to unnormalised embeddings.
pub struct ImageEncoder {
    vision: ClipVisionTransformer,
    projection: Linear,
}

impl ImageEncoder {
    pub fn new(vb: VarBuilder<'static>, cfg: &ClipVisionConfig) -> candle_core::Result<Self> {
        // candle substitutes random values for an absent class embedding;
        // asking first makes it required (and visible to shape discovery).
        vb.pp("vision_model.embeddings")
            .get(cfg.embed_dim, "class_embedding")?;
        Ok(ImageEncoder {
            vision: ClipVisionTransformer::new(vb.pp("vision_model"), cfg)?,
            projection: candle_nn::linear_no_bias(
                cfg.embed_dim,
                cfg.projection_dim,
                vb.pp("visual_projection"),
            )?,
        })
    }
}

impl Module for ImageEncoder {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        xs.apply(&self.vision)?.apply(&self.projection)
    }
}

/// Text tower + `text_projection`.
struct TextEncoder {
    text: ClipTextTransformer,
    projection: Linear,
}

impl TextEncoder {
    fn new(vb: VarBuilder<'static>, cfg: &ClipTextConfig) -> candle_core::Result<Self> {
        Ok(TextEncoder {
            text: ClipTextTransformer::new(vb.pp("text_model"), cfg)?,
            projection: candle_nn::linear_no_bias(
                cfg.embed_dim,
                cfg.projection_dim,
                vb.pp("text_projection"),
            )?,
        })
    }

    /// L2-normalised embeddings of token sequences that each end with the
    /// end-of-text token, read at that token as CLIP does. The batch is only
    /// as long as its longest sequence: attention is causal, so what follows
    /// a sequence's end does not change it.
    fn encode(&self, ids: &[&[u32]], device: &Device) -> candle_core::Result<Tensor> {
        let len = ids.iter().map(|s| s.len()).max().unwrap_or(0);
        let padded: Vec<u32> = ids
            .iter()
            .flat_map(|s| s.iter().copied().chain(std::iter::repeat(0)).take(len))
            .collect();
        let input = Tensor::from_vec(padded, (ids.len(), len), device)?;
        let hidden = self.text.forward_with_mask(&input, usize::MAX)?;
        let ends: Vec<u32> = ids
            .iter()
            .enumerate()
            .map(|(i, s)| (i * len + s.len() - 1) as u32)
            .collect();
        let ends = Tensor::new(ends, device)?;
        let pooled = hidden.flatten_to(1)?.index_select(&ends, 0)?;
        div_l2_norm(&pooled.apply(&self.projection)?)
    }
}

/// `100 * normalize(image embedding) @ head^T`.
pub struct ZeroShot {
    /// Crops to unnormalised embeddings: [`ImageEncoder`], or the tower on
    /// the channels-last path.
    image: Box<dyn Module + Send + Sync>,
    /// (classes, projection_dim), rows L2-normalised.
    head: Tensor,
}

impl Module for ZeroShot {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let image = div_l2_norm(&self.image.forward(xs)?)?;
        image.matmul(&self.head.t()?)? * LOGIT_SCALE
    }
}

/// A zero-shot classifier over `class_names` with the prompt ensemble
/// `templates`. The tokenizer is `extras.files["tokenizer.json"]`; the head
/// is read from, or written to, `extras.cache_dir/clip-heads/`.
pub fn zero_shot(
    vb: VarBuilder<'static>,
    extras: &Extras,
    cfg: &ClipConfig,
    class_names: &[&str],
    templates: &[&str],
) -> candle_core::Result<Net> {
    let image = Box::new(ImageEncoder::new(vb.clone(), &cfg.vision_config)?);
    zero_shot_with_image(vb, extras, cfg, class_names, templates, image)
}

/// [`zero_shot`] on a given image encoder.
pub fn zero_shot_with_image(
    vb: VarBuilder<'static>,
    extras: &Extras,
    cfg: &ClipConfig,
    class_names: &[&str],
    templates: &[&str],
    image: Box<dyn Module + Send + Sync>,
) -> candle_core::Result<Net> {
    let fingerprint = Arc::new(Mutex::new(Sha256::new()));
    let text_vb = VarBuilder::from_backend(
        Box::new(Fingerprint {
            inner: vb.root(),
            hash: fingerprint.clone(),
        }),
        vb.dtype(),
        vb.device().clone(),
    );
    let text = TextEncoder::new(text_vb, &cfg.text_config)?;
    let tokenizer_path = extras.files.get("tokenizer.json").ok_or_else(|| {
        candle_core::Error::msg(
            "CLIP needs the repo's tokenizer.json: name the Hub repo (its tokenizer.json and \
             config.json are fetched with the weights), or put both beside a local weights file",
        )
    })?;
    let tokenizer_json = std::fs::read(tokenizer_path)
        .map_err(|e| candle_core::Error::msg(format!("{}: {e}", tokenizer_path.display())))?;
    let key = {
        let mut h = Sha256::new();
        h.update(b"clip zero-shot head v1\n");
        // Heads made in reduced precision are their own entries (f32 keys
        // are unchanged from before precisions existed).
        if vb.dtype() != DType::F32 {
            h.update(format!("{:?}\n", vb.dtype()).as_bytes());
        }
        h.update(lock(&fingerprint).clone().finalize());
        let (names, prompts) = (class_names.join("\n"), templates.join("\n"));
        for part in [&tokenizer_json[..], names.as_bytes(), prompts.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        crate::util::hex(&h.finalize())
    };
    let cache = extras
        .cache_dir
        .as_ref()
        .map(|dir| dir.join("clip-heads").join(format!("{key}.safetensors")));
    let cached = match &cache {
        Some(path) if path.is_file() => Some(read_head(
            path,
            vb.device(),
            class_names.len(),
            cfg.text_config.projection_dim,
        )?),
        _ => None,
    };
    let head = match cached {
        Some(head) => head,
        None => {
            let tokenizer = tokenizers::Tokenizer::from_bytes(&tokenizer_json).map_err(|e| {
                candle_core::Error::msg(format!("{}: {e}", tokenizer_path.display()))
            })?;
            let head = make_head(
                &text,
                &tokenizer,
                cfg.text_config.max_position_embeddings,
                class_names,
                templates,
                vb.device(),
            )?;
            if let Some(path) = &cache {
                // The head is only a cache: a failed write costs time, not results.
                if let Err(e) = write_head(&head, path) {
                    tracing::warn!("cannot cache the CLIP head at {}: {e}", path.display());
                }
            }
            head
        }
    };
    // Kept in f32 on disk; it meets the image features in the model's precision.
    let head = head.to_dtype(vb.dtype())?;
    Ok(Box::new(ZeroShot { image, head }))
}

fn read_head(
    path: &Path,
    device: &Device,
    classes: usize,
    dim: usize,
) -> candle_core::Result<Tensor> {
    let head = candle_core::safetensors::load(path, device)?
        .remove("head")
        .ok_or_else(|| candle_core::Error::msg(format!("{}: no `head` tensor", path.display())))?;
    if head.dims() != [classes, dim] {
        candle_core::bail!(
            "{}: head is {:?}, expected [{classes}, {dim}]",
            path.display(),
            head.dims()
        );
    }
    Ok(head)
}

fn write_head(head: &Tensor, path: &Path) -> candle_core::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // Written beside the target then renamed, so a reader never sees half a file.
    let tmp: PathBuf = path.with_extension(format!("tmp{}", std::process::id()));
    head.save_safetensors("head", &tmp)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Token ids of `text` between start- and end-of-text, cut to `max_len`
/// with the end token kept last (open_clip's rule).
fn tokenize(
    tokenizer: &tokenizers::Tokenizer,
    text: &str,
    eot: u32,
    max_len: usize,
) -> candle_core::Result<Vec<u32>> {
    let mut ids = tokenizer
        .encode(text, true)
        .map_err(|e| candle_core::Error::msg(format!("tokenizing {text:?}: {e}")))?
        .get_ids()
        .to_vec();
    if ids.last() != Some(&eot) {
        candle_core::bail!("the tokenizer does not end {text:?} with <|endoftext|>");
    }
    if ids.len() > max_len {
        ids.truncate(max_len);
        ids[max_len - 1] = eot;
    }
    Ok(ids)
}

/// One row per class: the mean of its normalised prompt embeddings, normalised.
fn make_head(
    text: &TextEncoder,
    tokenizer: &tokenizers::Tokenizer,
    max_len: usize,
    class_names: &[&str],
    templates: &[&str],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let eot = tokenizer
        .token_to_id("<|endoftext|>")
        .ok_or_else(|| candle_core::Error::msg("the tokenizer has no <|endoftext|> token"))?;
    let ids = class_names
        .iter()
        .flat_map(|name| templates.iter().map(move |t| t.replacen("{}", name, 1)))
        .map(|prompt| tokenize(tokenizer, &prompt, eot, max_len))
        .collect::<candle_core::Result<Vec<_>>>()?;
    // Similar lengths batched together waste little on padding.
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    tracing::info!(
        "making the CLIP zero-shot head: {} prompts (once; then cached)",
        ids.len()
    );
    let mut done = Vec::with_capacity(order.len().div_ceil(PROMPT_BATCH));
    for (n, chunk) in order.chunks(PROMPT_BATCH).enumerate() {
        let batch: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
        done.push(text.encode(&batch, device)?);
        if (n + 1) % 20 == 0 {
            tracing::info!(
                "CLIP head: {} of {} prompts",
                (n + 1) * PROMPT_BATCH,
                ids.len()
            );
        }
    }
    let sorted = Tensor::cat(&done, 0)?;
    let mut back = vec![0u32; order.len()];
    for (pos, &i) in order.iter().enumerate() {
        back[i] = pos as u32;
    }
    let prompts = sorted.index_select(&Tensor::new(back, device)?, 0)?;
    let dim = prompts.dim(1)?;
    let mean = prompts
        .reshape((class_names.len(), templates.len(), dim))?
        .mean(1)?;
    div_l2_norm(&mean)?.to_dtype(DType::F32)
}

fn lock(hash: &Mutex<Sha256>) -> std::sync::MutexGuard<'_, Sha256> {
    hash.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Passes tensors through from `inner` and hashes each one's name, shape and
/// values: the cache key covers exactly the weights the head is made from.
struct Fingerprint {
    inner: VarBuilder<'static>,
    hash: Arc<Mutex<Sha256>>,
}

impl Fingerprint {
    fn record(&self, name: &str, t: &Tensor) -> candle_core::Result<()> {
        let values = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let mut h = lock(&self.hash);
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        for d in t.dims() {
            h.update((*d as u64).to_le_bytes());
        }
        let mut bytes = Vec::with_capacity(4 << 14);
        for chunk in values.chunks(1 << 14) {
            bytes.clear();
            bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
            h.update(&bytes);
        }
        Ok(())
    }
}

impl SimpleBackend for Fingerprint {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        h: Init,
        dtype: DType,
        _: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.inner.get_with_hints_dtype(s, name, h, dtype)?;
        self.record(name, &t)?;
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        let t = self.inner.get_unchecked_dtype(name, dtype)?;
        self.record(name, &t)?;
        Ok(t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}
