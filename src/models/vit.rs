//! Vision Transformer (ViT) classifier with a class token, read under either
//! torchvision's names (`vit_b_32`: `conv_proj`, `encoder.layers.encoder_layer_N`,
//! fused `self_attention.in_proj_weight`) or timm's (`vit_base_patch32_224`:
//! `patch_embed.proj`, `blocks.N`, fused `attn.qkv`). Both are the same
//! network: pre-norm blocks, LayerNorm eps 1e-6, exact (erf) GELU, the
//! class token's final state into the head.

use candle_core::{IndexOp, Module, Result, Tensor};
use candle_nn::{conv2d, layer_norm, linear, Conv2d, Conv2dConfig, LayerNorm, Linear, VarBuilder};

use super::{Extras, Net};
use crate::labels::NUM_CLASSES;

/// Shape of a ViT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_dim: usize,
    pub patch: usize,
    pub image_size: usize,
}

impl Config {
    /// ViT-B/32 at 224 px (torchvision `vit_b_32`, timm `vit_base_patch32_224`).
    pub const B_32: Config = Config {
        dim: 768,
        depth: 12,
        heads: 12,
        mlp_dim: 3072,
        patch: 32,
        image_size: 224,
    };

    pub(crate) fn tokens(&self) -> usize {
        (self.image_size / self.patch).pow(2) + 1
    }
}

/// Where each tensor sits in a checkpoint. Block `i` lives under
/// `format!("{block}{i}")`; the others are paths from the root or the block.
#[derive(Debug, Clone, Copy)]
pub struct Naming {
    pub patch_embed: &'static str,
    pub class_token: &'static str,
    /// Covers the class token's slot too, in both namings.
    pub pos_embed: &'static str,
    pub block: &'static str,
    pub norm1: &'static str,
    pub qkv_weight: &'static str,
    pub qkv_bias: &'static str,
    pub attn_out: &'static str,
    pub norm2: &'static str,
    pub fc1: &'static str,
    pub fc2: &'static str,
    pub norm: &'static str,
    pub head: &'static str,
}

/// torchvision `VisionTransformer` state dict (nn.MultiheadAttention, `mlp.0`/`mlp.3`).
pub const TORCHVISION: Naming = Naming {
    patch_embed: "conv_proj",
    class_token: "class_token",
    pos_embed: "encoder.pos_embedding",
    block: "encoder.layers.encoder_layer_",
    norm1: "ln_1",
    qkv_weight: "self_attention.in_proj_weight",
    qkv_bias: "self_attention.in_proj_bias",
    attn_out: "self_attention.out_proj",
    norm2: "ln_2",
    fc1: "mlp.0",
    fc2: "mlp.3",
    norm: "encoder.ln",
    head: "heads.head",
};

/// timm `VisionTransformer` state dict (as in `timm/vit_*` safetensors).
pub const TIMM: Naming = Naming {
    patch_embed: "patch_embed.proj",
    class_token: "cls_token",
    pos_embed: "pos_embed",
    block: "blocks.",
    norm1: "norm1",
    qkv_weight: "attn.qkv.weight",
    qkv_bias: "attn.qkv.bias",
    attn_out: "attn.proj",
    norm2: "norm2",
    fc1: "mlp.fc1",
    fc2: "mlp.fc2",
    norm: "norm",
    head: "head",
};

pub(crate) const LN_EPS: f64 = 1e-6;

struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    attn_out: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl Block {
    fn new(c: &Config, n: &Naming, vb: VarBuilder) -> Result<Block> {
        let qkv = Linear::new(
            vb.get((3 * c.dim, c.dim), n.qkv_weight)?,
            Some(vb.get(3 * c.dim, n.qkv_bias)?),
        );
        Ok(Block {
            norm1: layer_norm(c.dim, LN_EPS, vb.pp(n.norm1))?,
            qkv,
            attn_out: linear(c.dim, c.dim, vb.pp(n.attn_out))?,
            norm2: layer_norm(c.dim, LN_EPS, vb.pp(n.norm2))?,
            fc1: linear(c.dim, c.mlp_dim, vb.pp(n.fc1))?,
            fc2: linear(c.mlp_dim, c.dim, vb.pp(n.fc2))?,
            heads: c.heads,
        })
    }

    fn attention(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, dim) = x.dims3()?;
        let head_dim = dim / self.heads;
        // (b, t, 3 dim) -> (3, b, heads, t, head_dim): q, k, v in that order in both namings.
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, t, 3, self.heads, head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let q = (qkv.get(0)? * (head_dim as f64).powf(-0.5))?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let att = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, dim))?;
        self.attn_out.forward(&y)
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.attention(&self.norm1.forward(x)?)?)?;
        let h = self.fc1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?;
        x + self.fc2.forward(&h)?
    }
}

struct VisionTransformer {
    patch_embed: Conv2d,
    class_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    head: Linear,
}

impl Module for VisionTransformer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // (b, dim, h/p, w/p) -> (b, patches, dim)
        let x = self
            .patch_embed
            .forward(x)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let (b, _, dim) = x.dims3()?;
        let cls = self.class_token.broadcast_as((b, 1, dim))?;
        let mut x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.pos_embed)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        // LayerNorm is per token, so normalising the class token alone is exact.
        let cls = self.norm.forward(&x.i((.., 0))?.contiguous()?)?;
        self.head.forward(&cls)
    }
}

/// A ViT of shape `config` reading the tensors named by `naming`, with the
/// 1000-class ImageNet head.
pub fn build(config: Config, naming: &Naming, vb: VarBuilder<'static>) -> Result<Net> {
    let c = &config;
    let patch_cfg = Conv2dConfig {
        stride: c.patch,
        ..Default::default()
    };
    let blocks = (0..c.depth)
        .map(|i| Block::new(c, naming, vb.pp(format!("{}{i}", naming.block))))
        .collect::<Result<_>>()?;
    Ok(Box::new(VisionTransformer {
        patch_embed: conv2d(3, c.dim, c.patch, patch_cfg, vb.pp(naming.patch_embed))?,
        class_token: vb.get((1, 1, c.dim), naming.class_token)?,
        pos_embed: vb.get((1, c.tokens(), c.dim), naming.pos_embed)?,
        blocks,
        norm: layer_norm(c.dim, LN_EPS, vb.pp(naming.norm))?,
        head: linear(c.dim, NUM_CLASSES, vb.pp(naming.head))?,
    }))
}

pub fn vit_b_32(vb: VarBuilder<'static>, _: &Extras) -> Result<Net> {
    build(Config::B_32, &TORCHVISION, vb)
}

pub fn vit_base_patch32_224(vb: VarBuilder<'static>, _: &Extras) -> Result<Net> {
    build(Config::B_32, &TIMM, vb)
}
