//! Vision Transformer (Dosovitskiy et al. 2021) in the DeiT-Tiny size (Touvron et al. 2021),
//! with timm's parameter names and initialisation.

use super::check_input;
use crate::factory::LayerFactory;
use candle_core::{Result, Tensor};
use secateur_bayes::nn::{softmax_last_dim, LayerNorm};
use secateur_bayes::nn::{Conv2dCfg, LinearCfg};
use secateur_bayes::{Ctx, Init, Module, ParamBuilder};
use serde::{Deserialize, Serialize};

/// The shape of a [`VisionTransformer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViTConfig {
    /// Side of the square patches (must divide the image height and width).
    pub patch: usize,
    /// Token width.
    pub embed_dim: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads (must divide `embed_dim`).
    pub heads: usize,
    /// Hidden width of each block's MLP.
    pub mlp_dim: usize,
    /// ε of every layer norm (timm uses 1e-6).
    pub norm_eps: f64,
}

impl ViTConfig {
    /// ViT-Tiny for 32×32 images: patch 4, width 192, depth 12, 3 heads, MLP 768 (the DeiT-Tiny
    /// dimensions of Touvron et al. 2021 with a CIFAR-sized patch).
    pub fn tiny() -> Self {
        Self {
            patch: 4,
            embed_dim: 192,
            depth: 12,
            heads: 3,
            mlp_dim: 768,
            norm_eps: 1e-6,
        }
    }

    /// DeiT-Tiny (Touvron et al. 2021), for 224×224 ImageNet images: [`ViTConfig::tiny`] with
    /// patch 16.
    pub fn deit_tiny() -> Self {
        Self {
            patch: 16,
            ..Self::tiny()
        }
    }

    /// Sets the patch size.
    pub fn with_patch(mut self, patch: usize) -> Self {
        self.patch = patch;
        self
    }

    /// Checks the config against an input `[C, H, W]`; the error names the offending field.
    pub fn validate(&self, input: [usize; 3]) -> Result<()> {
        let [_, h, w] = input;
        if self.patch == 0 || h % self.patch != 0 || w % self.patch != 0 {
            candle_core::bail!(
                "vit: field `patch` = {} must divide the input height {h} and width {w}",
                self.patch
            );
        }
        if self.heads == 0 || self.embed_dim == 0 || !self.embed_dim.is_multiple_of(self.heads) {
            candle_core::bail!(
                "vit: field `heads` = {} must divide field `embed_dim` = {}",
                self.heads,
                self.embed_dim
            );
        }
        if self.mlp_dim == 0 {
            candle_core::bail!("vit: field `mlp_dim` must be positive");
        }
        Ok(())
    }
}

impl Default for ViTConfig {
    fn default() -> Self {
        Self::tiny()
    }
}

/// timm's initialisation of a ViT linear layer: weight trunc-normal(0.02), bias zero.
fn timm_linear(in_dim: usize, out_dim: usize) -> LinearCfg {
    LinearCfg::new(in_dim, out_dim)
        .with_init(Init::TruncNormal { std: 0.02 })
        .with_bias_init(Init::Const(0.0))
}

/// Applies a factory linear layer to `[B, N, in]` by flattening the tokens into rows, so the
/// factory's layer always sees a matrix `[B·N, in]`.
fn tokens_linear(l: &dyn Module, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
    let (b, n, c) = x.dims3()?;
    let y = l.forward(&x.reshape((b * n, c))?, ctx)?;
    let out = y.dim(1)?;
    y.reshape((b, n, out))
}

fn layer_norm(pb: &ParamBuilder, dim: usize, eps: f64) -> Result<LayerNorm> {
    let mut ln = LayerNorm::new(pb, dim)?;
    ln.eps = eps;
    Ok(ln)
}

/// Multi-head self-attention (Vaswani et al. 2017): `qkv` projects to queries, keys and values,
/// `softmax(q kᵀ / √d_head) v` per head, then `proj`.
pub struct Attention {
    /// `attn.qkv`: `Linear(E, 3E)`.
    pub qkv: Box<dyn Module>,
    /// `attn.proj`: `Linear(E, E)`.
    pub proj: Box<dyn Module>,
    /// Number of heads.
    pub heads: usize,
}

impl Module for Attention {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let (b, n, e) = x.dims3()?;
        let hd = e / self.heads;
        let qkv = tokens_linear(self.qkv.as_ref(), x, ctx)?
            .reshape((b, n, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let att = (q.matmul(&k.transpose(2, 3)?.contiguous()?)? * (1.0 / (hd as f64).sqrt()))?;
        let att = softmax_last_dim(&att)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, n, e))?;
        tokens_linear(self.proj.as_ref(), &y, ctx)
    }
}

/// A pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))` with the MLP
/// `fc2(GELU(fc1(·)))`.
pub struct Block {
    /// Layer norm before attention.
    pub norm1: LayerNorm,
    /// Self-attention.
    pub attn: Attention,
    /// Layer norm before the MLP.
    pub norm2: LayerNorm,
    /// `mlp.fc1`: `Linear(E, mlp_dim)`.
    pub fc1: Box<dyn Module>,
    /// `mlp.fc2`: `Linear(mlp_dim, E)`.
    pub fc2: Box<dyn Module>,
}

impl Block {
    fn new(cfg: &ViTConfig, factory: &dyn LayerFactory, pb: &ParamBuilder) -> Result<Self> {
        let e = cfg.embed_dim;
        let apb = pb.pp("attn");
        let mpb = pb.pp("mlp");
        Ok(Self {
            norm1: layer_norm(&pb.pp("norm1"), e, cfg.norm_eps)?,
            attn: Attention {
                qkv: factory.linear(&apb.pp("qkv"), timm_linear(e, 3 * e))?,
                proj: factory.linear(&apb.pp("proj"), timm_linear(e, e))?,
                heads: cfg.heads,
            },
            norm2: layer_norm(&pb.pp("norm2"), e, cfg.norm_eps)?,
            fc1: factory.linear(&mpb.pp("fc1"), timm_linear(e, cfg.mlp_dim))?,
            fc2: factory.linear(&mpb.pp("fc2"), timm_linear(cfg.mlp_dim, e))?,
        })
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.norm1.forward(x, ctx)?, ctx)?)?;
        let h = tokens_linear(self.fc1.as_ref(), &self.norm2.forward(&x, ctx)?, ctx)?.gelu_erf()?;
        x + tokens_linear(self.fc2.as_ref(), &h, ctx)?
    }
}

/// The Vision Transformer (Dosovitskiy et al. 2021) as in timm / DeiT (Touvron et al. 2021):
/// patch embedding by a strided convolution, a class token, learned position embeddings,
/// pre-norm blocks with GELU MLPs, a final layer norm and a linear head on the class token.
///
/// Names follow timm: `patch_embed.proj`, `cls_token` `[1, 1, E]`, `pos_embed` `[1, N + 1, E]`,
/// `blocks.{i}.norm1`, `blocks.{i}.attn.qkv`, `blocks.{i}.attn.proj`, `blocks.{i}.norm2`,
/// `blocks.{i}.mlp.fc1`, `blocks.{i}.mlp.fc2`, `norm`, `head`.
///
/// Initialisation follows timm's default: linear weights, `pos_embed` and `cls_token`
/// trunc-normal(0.02) (the DeiT release), linear biases zero, layer norms (1, 0); the patch
/// convolution keeps PyTorch's default, as timm leaves it. No dropout.
pub struct VisionTransformer {
    /// The patch embedding convolution (`kernel = stride = patch`).
    pub patch_embed: Box<dyn Module>,
    /// The class token `[1, 1, E]`.
    pub cls_token: Tensor,
    /// Position embeddings `[1, N + 1, E]`.
    pub pos_embed: Tensor,
    /// The transformer blocks.
    pub blocks: Vec<Block>,
    /// Final layer norm.
    pub norm: LayerNorm,
    /// The classifier on the class token.
    pub head: Box<dyn Module>,
    /// Input shape `[C, H, W]`.
    pub input: [usize; 3],
}

impl VisionTransformer {
    /// Builds the network for inputs `[C, H, W]` and `classes` outputs; refuses a patch that does
    /// not divide the image or heads that do not divide the width.
    pub fn new(
        cfg: &ViTConfig,
        input: [usize; 3],
        classes: usize,
        factory: &dyn LayerFactory,
        pb: &ParamBuilder,
    ) -> Result<Self> {
        cfg.validate(input)?;
        let [c, h, w] = input;
        let e = cfg.embed_dim;
        let tokens = (h / cfg.patch) * (w / cfg.patch);
        let patch_embed = factory.conv2d(
            &pb.pp("patch_embed").pp("proj"),
            Conv2dCfg::new(c, e, cfg.patch).with_stride(cfg.patch),
        )?;
        let cls_token = pb.param("cls_token", &[1, 1, e], Init::TruncNormal { std: 0.02 })?;
        let pos_embed = pb.param("pos_embed", &[1, tokens + 1, e], Init::TruncNormal { std: 0.02 })?;
        let bpb = pb.pp("blocks");
        let blocks = (0..cfg.depth)
            .map(|i| Block::new(cfg, factory, &bpb.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = layer_norm(&pb.pp("norm"), e, cfg.norm_eps)?;
        let head = factory.linear(&pb.pp("head"), timm_linear(e, classes))?;
        Ok(Self {
            patch_embed,
            cls_token,
            pos_embed,
            blocks,
            norm,
            head,
            input,
        })
    }
}

impl Module for VisionTransformer {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let cls = self.features(x, ctx)?;
        self.head.forward(&cls, ctx)
    }
    fn features(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        check_input("vit", x, self.input)?;
        let b = x.dim(0)?;
        // [B, E, h, w] → [B, h·w, E]
        let p = self.patch_embed.forward(x, ctx)?.flatten_from(2)?.transpose(1, 2)?;
        let e = p.dim(2)?;
        let cls = self.cls_token.broadcast_as((b, 1, e))?;
        let mut x = Tensor::cat(&[&cls, &p], 1)?.broadcast_add(&self.pos_embed)?;
        for block in &self.blocks {
            x = block.forward(&x, ctx)?;
        }
        let x = self.norm.forward(&x, ctx)?;
        x.narrow(1, 0, 1)?.squeeze(1)
    }
    fn head(&self) -> Option<String> {
        Some("head".into())
    }
}
