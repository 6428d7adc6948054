//! VGG with batch norm (Simonyan & Zisserman 2015; Ioffe & Szegedy 2015), CIFAR style.

use super::{check_input, conv_out};
use crate::factory::LayerFactory;
use candle_core::{Result, Tensor};
use secateur_bayes::nn::Sequential;
use secateur_bayes::nn::{BatchNorm, GlobalAvgPool, MaxPool2d, Relu};
use secateur_bayes::nn::{Conv2dCfg, LinearCfg};
use secateur_bayes::{Ctx, Module, ParamBuilder};
use serde::{Deserialize, Serialize};

/// One entry of a VGG feature list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VggItem {
    /// A 3×3 convolution (padding 1) to this many channels, followed by batch norm and ReLU.
    Conv(usize),
    /// A 2×2 max pool, stride 2.
    Pool,
}

/// The feature list of a [`Vgg`] (torchvision's `cfgs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VggConfig {
    /// Convolutions and pools, input side first.
    pub features: Vec<VggItem>,
}

fn parse(cfg: &[i64]) -> VggConfig {
    VggConfig {
        features: cfg
            .iter()
            .map(|&c| {
                if c < 0 {
                    VggItem::Pool
                } else {
                    VggItem::Conv(c as usize)
                }
            })
            .collect(),
    }
}

impl VggConfig {
    /// VGG-11 ("configuration A" of Simonyan & Zisserman 2015): 64, M, 128, M, 256, 256, M,
    /// 512, 512, M, 512, 512, M.
    pub fn vgg11() -> Self {
        parse(&[64, -1, 128, -1, 256, 256, -1, 512, 512, -1, 512, 512, -1])
    }
    /// VGG-13 (configuration B).
    pub fn vgg13() -> Self {
        parse(&[64, 64, -1, 128, 128, -1, 256, 256, -1, 512, 512, -1, 512, 512, -1])
    }
    /// VGG-16 (configuration D): 64, 64, M, 128, 128, M, 256×3, M, 512×3, M, 512×3, M.
    pub fn vgg16() -> Self {
        parse(&[
            64, 64, -1, 128, 128, -1, 256, 256, 256, -1, 512, 512, 512, -1, 512, 512, 512, -1,
        ])
    }
    /// VGG-19 (configuration E).
    pub fn vgg19() -> Self {
        parse(&[
            64, 64, -1, 128, 128, -1, 256, 256, 256, 256, -1, 512, 512, 512, 512, -1, 512, 512, 512, 512, -1,
        ])
    }
}

/// VGG with batch norm (Simonyan & Zisserman 2015), in the CIFAR form of the widely used
/// reference code (kuangliu/pytorch-cifar; Liu et al. 2019 "Rethinking the value of network
/// pruning"): every convolution is 3×3, padding 1, with bias, followed by batch norm and ReLU;
/// the classifier is a single `Linear(last width, classes)` named `classifier`. PyTorch's default
/// initialisation, as in that code.
///
/// Names follow torchvision's `vgg*_bn`: a convolution at index `i` of `features` is
/// `features.{i}`, its batch norm `features.{i+1}`, its ReLU takes `i+2`, and each pool takes one
/// index. The names do not depend on the input size.
///
/// **Small inputs.** A pool that would shrink a side below 1 is skipped (28×28 inputs keep 4 of
/// the 5 pools: 28 → 14 → 7 → 3 → 1; the skipped pool keeps its index, so names are unchanged),
/// and the features are always globally average-pooled before the classifier. For 32×32 inputs
/// the map is already 1×1 there, so this equals the reference's flatten; larger inputs are
/// averaged rather than flattened, so the classifier always has `last width` inputs.
pub struct Vgg {
    /// Convolutions, batch norms, ReLUs and pools (parameters under `features.{i}`).
    pub features: Sequential,
    /// The linear classifier.
    pub classifier: Box<dyn Module>,
    /// Input shape `[C, H, W]`.
    pub input: [usize; 3],
}

impl Vgg {
    /// Builds the network for inputs `[C, H, W]` and `classes` outputs.
    pub fn new(
        cfg: &VggConfig,
        input: [usize; 3],
        classes: usize,
        factory: &dyn LayerFactory,
        pb: &ParamBuilder,
    ) -> Result<Self> {
        let [mut ch, mut h, mut w] = input;
        let mut features = Sequential::new();
        let fpb = pb.pp("features");
        let mut idx = 0usize;
        let pool = MaxPool2d::new(2);
        for item in &cfg.features {
            match *item {
                VggItem::Conv(out) => {
                    if out == 0 {
                        candle_core::bail!("vgg: field `features` has a convolution with 0 channels");
                    }
                    let name = format!("features.{idx}");
                    h = conv_out(&name, h, 3, 1, 1)?;
                    w = conv_out(&name, w, 3, 1, 1)?;
                    features.push_boxed(factory.conv2d(&fpb.pp(idx), Conv2dCfg::new(ch, out, 3).with_padding(1))?);
                    features.push(BatchNorm::new(&fpb.pp(idx + 1), out)?);
                    features.push(Relu);
                    ch = out;
                    idx += 3;
                }
                VggItem::Pool => {
                    if let (Some(ho), Some(wo)) = (pool.out_size(h), pool.out_size(w)) {
                        features.push(pool);
                        (h, w) = (ho, wo);
                    }
                    idx += 1;
                }
            }
        }
        features.push(GlobalAvgPool);
        let classifier = factory.linear(&pb.pp("classifier"), LinearCfg::new(ch, classes))?;
        Ok(Self {
            features,
            classifier,
            input,
        })
    }
}

impl Module for Vgg {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        check_input("vgg", x, self.input)?;
        let x = self.features.forward(x, ctx)?;
        self.classifier.forward(&x, ctx)
    }
    fn features(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        check_input("vgg", x, self.input)?;
        self.features.forward(x, ctx)
    }
    fn head(&self) -> Option<String> {
        Some("classifier".into())
    }
}
