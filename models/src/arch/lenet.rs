//! LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998), in the ReLU/max-pool form used by the
//! pruning and Bayesian-compression literature (Han et al. 2015; Louizos, Ullrich & Welling 2017).

use super::{check_input, conv_out};
use crate::factory::LayerFactory;
use candle_core::{Result, Tensor};
use secateur_bayes::nn::MaxPool2d;
use secateur_bayes::nn::{Conv2dCfg, LinearCfg};
use secateur_bayes::{Ctx, Module, ParamBuilder};
use serde::{Deserialize, Serialize};

/// The widths of a [`LeNet5`]: output channels of the two convolutions and units of the two
/// hidden fully connected layers. The default is the original network (6, 16, 120, 84);
/// narrower widths are what structured pruning and compaction produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeNet5Config {
    /// Output channels of `conv1` (6).
    pub conv1: usize,
    /// Output channels of `conv2` (16).
    pub conv2: usize,
    /// Units of `fc1` (120).
    pub fc1: usize,
    /// Units of `fc2` (84).
    pub fc2: usize,
}

impl Default for LeNet5Config {
    fn default() -> Self {
        Self {
            conv1: 6,
            conv2: 16,
            fc1: 120,
            fc2: 84,
        }
    }
}

/// LeNet-5 (LeCun et al. 1998): `conv1` 6@5×5 → ReLU → max-pool 2 → `conv2` 16@5×5 → ReLU →
/// max-pool 2 → flatten → `fc1` 120 → ReLU → `fc2` 84 → ReLU → `fc3` classes.
///
/// `conv1` is padded by 2 when the input is 28×28 (MNIST), which reproduces the 32×32 geometry
/// of the original network (feature maps 28 → 14 → 10 → 5); other inputs are not padded (3×32×32
/// gives the same maps). The flatten size `16 · h · w` is computed from the input shape.
/// [`LeNet5::with_config`] builds other widths ([`LeNet5Config`]; the flatten is then
/// `conv2 · h · w`).
/// PyTorch's default initialisation. The original used average pooling and tanh; ReLU and max
/// pooling are the modern variant.
pub struct LeNet5 {
    /// First convolution, 6 maps of 5×5 (by default).
    pub conv1: Box<dyn Module>,
    /// Second convolution, 16 maps of 5×5 (by default).
    pub conv2: Box<dyn Module>,
    /// First fully connected layer, 120 units (by default).
    pub fc1: Box<dyn Module>,
    /// Second fully connected layer, 84 units (by default).
    pub fc2: Box<dyn Module>,
    /// Classifier.
    pub fc3: Box<dyn Module>,
    /// Input shape `[C, H, W]`.
    pub input: [usize; 3],
}

impl LeNet5 {
    /// Builds LeNet-5 for inputs `[C, H, W]` and `classes` outputs.
    pub fn new(input: [usize; 3], classes: usize, factory: &dyn LayerFactory, pb: &ParamBuilder) -> Result<Self> {
        Self::with_config(&LeNet5Config::default(), input, classes, factory, pb)
    }

    /// Builds LeNet-5 with the widths of `cfg` (same names, layers and initialisation order as
    /// [`LeNet5::new`]); a zero width is refused, naming the field.
    pub fn with_config(
        cfg: &LeNet5Config,
        input: [usize; 3],
        classes: usize,
        factory: &dyn LayerFactory,
        pb: &ParamBuilder,
    ) -> Result<Self> {
        for (field, v) in [
            ("conv1", cfg.conv1),
            ("conv2", cfg.conv2),
            ("fc1", cfg.fc1),
            ("fc2", cfg.fc2),
        ] {
            if v == 0 {
                candle_core::bail!("lenet5: field `{field}` must be a positive width, got 0");
            }
        }
        let [c, h, w] = input;
        let pad = if h == 28 && w == 28 { 2 } else { 0 };
        let pool = MaxPool2d::new(2);
        let side = |s: usize| -> Result<usize> {
            let s = conv_out("conv1", s, 5, 1, pad)?;
            let s = pool.out_size(s).ok_or_else(|| {
                candle_core::Error::Msg(format!("lenet5: input {h}×{w} is too small (pool after conv1)"))
            })?;
            let s = conv_out("conv2", s, 5, 1, 0)?;
            pool.out_size(s).ok_or_else(|| {
                candle_core::Error::Msg(format!("lenet5: input {h}×{w} is too small (pool after conv2)"))
            })
        };
        let (ho, wo) = (side(h)?, side(w)?);
        let flat = cfg.conv2 * ho * wo;
        Ok(Self {
            conv1: factory.conv2d(&pb.pp("conv1"), Conv2dCfg::new(c, cfg.conv1, 5).with_padding(pad))?,
            conv2: factory.conv2d(&pb.pp("conv2"), Conv2dCfg::new(cfg.conv1, cfg.conv2, 5))?,
            fc1: factory.linear(&pb.pp("fc1"), LinearCfg::new(flat, cfg.fc1))?,
            fc2: factory.linear(&pb.pp("fc2"), LinearCfg::new(cfg.fc1, cfg.fc2))?,
            fc3: factory.linear(&pb.pp("fc3"), LinearCfg::new(cfg.fc2, classes))?,
            input,
        })
    }
}

use secateur_kernels::activation::relu;

impl Module for LeNet5 {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let x = self.features(x, ctx)?;
        self.fc3.forward(&x, ctx)
    }
    fn features(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        check_input("lenet5", x, self.input)?;
        let pool = MaxPool2d::new(2);
        // ReLU after the pool: `pool(relu(x)) = relu(pool(x))` because max commutes with a
        // non-decreasing map, and both orders send the gradient to the same entry (the window's
        // first maximum, scaled by 0 where that maximum is ≤ 0), at every order of
        // differentiation. The ReLU then runs on a quarter of the entries.
        let x = relu(&pool.forward(&self.conv1.forward(x, ctx)?, ctx)?)?;
        let x = relu(&pool.forward(&self.conv2.forward(&x, ctx)?, ctx)?)?;
        let x = relu(&self.fc1.forward(&x.flatten_from(1)?, ctx)?)?;
        relu(&self.fc2.forward(&x, ctx)?)
    }
    fn head(&self) -> Option<String> {
        Some("fc3".into())
    }
}
