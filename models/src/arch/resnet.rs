//! Residual networks (He, Zhang, Ren & Sun 2016): the CIFAR ResNet-20/32/56 with parameter-free
//! shortcuts, and the CIFAR-style ResNet-18.

use super::{check_input, conv_out};
use crate::factory::LayerFactory;
use candle_core::{Result, Tensor};
use secateur_bayes::init::Fan;
use secateur_bayes::nn::BatchNorm;
use secateur_bayes::nn::{Conv2dCfg, LinearCfg};
use secateur_bayes::{Ctx, Init, Module, ParamBuilder};
use serde::{Deserialize, Serialize};

/// How a residual block matches the shape of its shortcut when the stride or width changes
/// (He et al. 2016, §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShortcutKind {
    /// Option A: subsample by the stride (`x[:, :, ::s, ::s]`) and zero-pad the new channels
    /// equally on both sides; no parameters. Used by the CIFAR ResNets.
    ZeroPad,
    /// Option B: a 1×1 convolution (stride `s`, no bias) and batch norm, named `shortcut.0` and
    /// `shortcut.1`. Used by ResNet-18.
    Projection,
}

/// The shape of a [`ResNet`] built from basic blocks (two 3×3 convolutions each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// Channels of the 3×3 stem convolution (`conv1`, stride 1, no max pool).
    pub stem: usize,
    /// Channels of each stage; every stage after the first halves the resolution.
    pub widths: Vec<usize>,
    /// Blocks in each stage.
    pub blocks: Vec<usize>,
    /// How blocks that change shape form their shortcut.
    pub shortcut: ShortcutKind,
    /// Whether convolution and linear weights use Kaiming-normal (fan-in) initialisation, as
    /// the akamaster CIFAR ResNet code does; otherwise PyTorch's default.
    pub kaiming_init: bool,
    /// Output channels of each block's first convolution (`conv1` → `bn1` → `conv2`), one per
    /// block in forward order; empty (the default): the stage's width. Narrower inner widths are
    /// what filter pruning of the block-internal channels and compaction produce (the block's
    /// output, which joins the residual sum, keeps the stage's width).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inner: Vec<usize>,
}

impl ResNetConfig {
    /// The CIFAR ResNet of depth `6n + 2` (He et al. 2016, §4.2): stem 16 channels, three stages
    /// of `n` blocks with 16, 32, 64 channels, option-A shortcuts, Kaiming-normal init, as in the
    /// widely used reference (akamaster/pytorch_resnet_cifar10). Depths 20, 32, 44, 56, 110, …
    pub fn cifar(depth: usize) -> Result<Self> {
        if depth < 8 || !(depth - 2).is_multiple_of(6) {
            candle_core::bail!("CIFAR ResNet depth must be 6n + 2 with n ≥ 1 (20, 32, 44, 56, 110, …), got {depth}");
        }
        let n = (depth - 2) / 6;
        Ok(Self {
            stem: 16,
            widths: vec![16, 32, 64],
            blocks: vec![n; 3],
            shortcut: ShortcutKind::ZeroPad,
            kaiming_init: true,
            inner: Vec::new(),
        })
    }

    /// ResNet-18 in the CIFAR form of kuangliu/pytorch-cifar: 3×3 stem with 64 channels, stride
    /// 1, no max pool; four stages of two basic blocks with 64, 128, 256, 512 channels;
    /// projection shortcuts; PyTorch's default init.
    pub fn resnet18() -> Self {
        Self {
            stem: 64,
            widths: vec![64, 128, 256, 512],
            blocks: vec![2; 4],
            shortcut: ShortcutKind::Projection,
            kaiming_init: false,
            inner: Vec::new(),
        }
    }

    fn init(&self) -> Init {
        if self.kaiming_init {
            Init::KaimingNormal(Fan::In)
        } else {
            Init::TorchDefault
        }
    }
}

/// The shortcut branch of a [`BasicBlock`].
pub enum Shortcut {
    /// The identity.
    Identity,
    /// Option A: subsample by `stride` and zero-pad channels (`left` before, `right` after).
    ZeroPad {
        /// Spatial subsampling factor.
        stride: usize,
        /// Zero channels added before the input channels.
        left: usize,
        /// Zero channels added after the input channels.
        right: usize,
    },
    /// Option B: 1×1 convolution and batch norm.
    Projection {
        /// `shortcut.0`: the 1×1 convolution.
        conv: Box<dyn Module>,
        /// `shortcut.1`: its batch norm.
        bn: BatchNorm,
    },
}

impl Shortcut {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        match self {
            Shortcut::Identity => Ok(x.clone()),
            Shortcut::ZeroPad { stride, left, right } => {
                secateur_kernels::shortcut::subsample_pad(x, *stride, *left, *right)
            }
            Shortcut::Projection { conv, bn } => bn.forward(&conv.forward(x, ctx)?, ctx),
        }
    }
}

/// The basic residual block (He et al. 2016): `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`,
/// 3×3 convolutions without bias, the first with the block's stride.
pub struct BasicBlock {
    /// First 3×3 convolution (carries the stride).
    pub conv1: Box<dyn Module>,
    /// Batch norm after `conv1`.
    pub bn1: BatchNorm,
    /// Second 3×3 convolution.
    pub conv2: Box<dyn Module>,
    /// Batch norm after `conv2`.
    pub bn2: BatchNorm,
    /// The shortcut branch.
    pub shortcut: Shortcut,
}

impl BasicBlock {
    /// Builds a block from `in_ch` to `out_ch` channels, `mid_ch` between its convolutions,
    /// with the given stride under `pb` (e.g. `layer2.0`); returns the block and its output
    /// spatial size.
    #[allow(clippy::too_many_arguments)]
    fn new(
        in_ch: usize,
        mid_ch: usize,
        out_ch: usize,
        stride: usize,
        hw: (usize, usize),
        kind: ShortcutKind,
        init: Init,
        factory: &dyn LayerFactory,
        pb: &ParamBuilder,
    ) -> Result<(Self, (usize, usize))> {
        let name = pb.path("conv1");
        let out_hw = (
            conv_out(&name, hw.0, 3, stride, 1)?,
            conv_out(&name, hw.1, 3, stride, 1)?,
        );
        let conv = |i, o| Conv2dCfg::new(i, o, 3).with_padding(1).with_bias(false).with_init(init);
        let conv1 = factory.conv2d(&pb.pp("conv1"), conv(in_ch, mid_ch).with_stride(stride))?;
        let bn1 = BatchNorm::new(&pb.pp("bn1"), mid_ch)?;
        let conv2 = factory.conv2d(&pb.pp("conv2"), conv(mid_ch, out_ch))?;
        let bn2 = BatchNorm::new(&pb.pp("bn2"), out_ch)?;
        let shortcut = if stride == 1 && in_ch == out_ch {
            Shortcut::Identity
        } else {
            match kind {
                ShortcutKind::ZeroPad => {
                    if out_ch < in_ch {
                        candle_core::bail!(
                            "{}: a zero-padding shortcut cannot reduce channels {in_ch} → {out_ch}",
                            pb.path("")
                        );
                    }
                    let left = (out_ch - in_ch) / 2;
                    Shortcut::ZeroPad {
                        stride,
                        left,
                        right: out_ch - in_ch - left,
                    }
                }
                ShortcutKind::Projection => {
                    let spb = pb.pp("shortcut");
                    let cfg = Conv2dCfg::new(in_ch, out_ch, 1)
                        .with_stride(stride)
                        .with_bias(false)
                        .with_init(init);
                    Shortcut::Projection {
                        conv: factory.conv2d(&spb.pp(0), cfg)?,
                        bn: BatchNorm::new(&spb.pp(1), out_ch)?,
                    }
                }
            }
        };
        Ok((
            Self {
                conv1,
                bn1,
                conv2,
                bn2,
                shortcut,
            },
            out_hw,
        ))
    }
}

impl Module for BasicBlock {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let y = self.bn1.forward_relu(&self.conv1.forward(x, ctx)?, ctx)?;
        let y = self.bn2.forward(&self.conv2.forward(&y, ctx)?, ctx)?;
        secateur_kernels::activation::add_relu(&y, &self.shortcut.forward(x, ctx)?)
    }
}

/// A residual network of basic blocks (He et al. 2016) with a 3×3 stem and no max pool, for
/// small images: `conv1 → bn1 → ReLU → layer1 … layerK → global average pool → linear`.
///
/// Names: `conv1`, `bn1`, `layer{k}.{j}.conv1/bn1/conv2/bn2`, `layer{k}.{j}.shortcut.{0,1}` for
/// projection shortcuts, `linear`. The reference codes pool with a fixed window (`avg_pool2d(out,
/// 4)` in ResNet-18, the final map size in the CIFAR ResNets); for 32×32 inputs that is the global
/// average pool used here, which also accepts other sizes (28×28 gives 7×7 or 4×4 final maps).
pub struct ResNet {
    /// Stem 3×3 convolution (no bias).
    pub conv1: Box<dyn Module>,
    /// Stem batch norm.
    pub bn1: BatchNorm,
    /// The stages `layer1 …`, each a list of blocks.
    pub layers: Vec<Vec<BasicBlock>>,
    /// The classifier.
    pub linear: Box<dyn Module>,
    /// Input shape `[C, H, W]`.
    pub input: [usize; 3],
}

impl ResNet {
    /// Builds the network for inputs `[C, H, W]` and `classes` outputs.
    pub fn new(
        cfg: &ResNetConfig,
        input: [usize; 3],
        classes: usize,
        factory: &dyn LayerFactory,
        pb: &ParamBuilder,
    ) -> Result<Self> {
        if cfg.widths.len() != cfg.blocks.len() || cfg.widths.is_empty() {
            candle_core::bail!("resnet: fields `widths` and `blocks` must be non-empty and of equal length");
        }
        if cfg.stem == 0 || cfg.widths.contains(&0) || cfg.blocks.contains(&0) {
            candle_core::bail!("resnet: fields `stem`, `widths` and `blocks` must be positive");
        }
        let n_blocks: usize = cfg.blocks.iter().sum();
        if !cfg.inner.is_empty() && (cfg.inner.len() != n_blocks || cfg.inner.contains(&0)) {
            candle_core::bail!(
                "resnet: field `inner` must hold one positive width per block ({n_blocks}), got {:?}",
                cfg.inner
            );
        }
        let mut inner = cfg.inner.iter();
        let init = cfg.init();
        let [c, h, w] = input;
        let mut hw = (conv_out("conv1", h, 3, 1, 1)?, conv_out("conv1", w, 3, 1, 1)?);
        let conv1 = factory.conv2d(
            &pb.pp("conv1"),
            Conv2dCfg::new(c, cfg.stem, 3)
                .with_padding(1)
                .with_bias(false)
                .with_init(init),
        )?;
        let bn1 = BatchNorm::new(&pb.pp("bn1"), cfg.stem)?;
        let mut ch = cfg.stem;
        let mut layers = Vec::with_capacity(cfg.widths.len());
        for (k, (&width, &n)) in cfg.widths.iter().zip(&cfg.blocks).enumerate() {
            let lpb = pb.pp(format!("layer{}", k + 1));
            let mut stage = Vec::with_capacity(n);
            for j in 0..n {
                let stride = if k > 0 && j == 0 { 2 } else { 1 };
                let mid = inner.next().copied().unwrap_or(width);
                let (block, out_hw) =
                    BasicBlock::new(ch, mid, width, stride, hw, cfg.shortcut, init, factory, &lpb.pp(j))?;
                stage.push(block);
                hw = out_hw;
                ch = width;
            }
            layers.push(stage);
        }
        let lin = if cfg.kaiming_init {
            LinearCfg::new(ch, classes).with_init(init)
        } else {
            LinearCfg::new(ch, classes)
        };
        let linear = factory.linear(&pb.pp("linear"), lin)?;
        Ok(Self {
            conv1,
            bn1,
            layers,
            linear,
            input,
        })
    }
}

impl Module for ResNet {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let x = self.features(x, ctx)?;
        self.linear.forward(&x, ctx)
    }
    fn features(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        check_input("resnet", x, self.input)?;
        let mut x = self.bn1.forward_relu(&self.conv1.forward(x, ctx)?, ctx)?;
        for block in self.layers.iter().flatten() {
            x = block.forward(&x, ctx)?;
        }
        x.flatten_from(2)?.mean(2)
    }
    fn head(&self) -> Option<String> {
        Some("linear".into())
    }
}
