//! LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998), in the ReLU/max-pool form used by the
//! pruning and Bayesian-compression literature (Han et al. 2015; Louizos, Ullrich & Welling 2017).

use super::{check_input, conv_out};
use crate::factory::LayerFactory;
use candle_core::{Result, Tensor};
use secateur_bayes::nn::MaxPool2d;
use secateur_bayes::nn::{Conv2dCfg, LinearCfg};
use secateur_bayes::{Ctx, Module, ParamBuilder};

/// LeNet-5 (LeCun et al. 1998): `conv1` 6@5×5 → ReLU → max-pool 2 → `conv2` 16@5×5 → ReLU →
/// max-pool 2 → flatten → `fc1` 120 → ReLU → `fc2` 84 → ReLU → `fc3` classes.
///
/// `conv1` is padded by 2 when the input is 28×28 (MNIST), which reproduces the 32×32 geometry
/// of the original network (feature maps 28 → 14 → 10 → 5); other inputs are not padded (3×32×32
/// gives the same maps). The flatten size `16 · h · w` is computed from the input shape.
/// PyTorch's default initialisation. The original used average pooling and tanh; ReLU and max
/// pooling are the modern variant.
pub struct LeNet5 {
    /// First convolution, 6 maps of 5×5.
    pub conv1: Box<dyn Module>,
    /// Second convolution, 16 maps of 5×5.
    pub conv2: Box<dyn Module>,
    /// First fully connected layer, 120 units.
    pub fc1: Box<dyn Module>,
    /// Second fully connected layer, 84 units.
    pub fc2: Box<dyn Module>,
    /// Classifier.
    pub fc3: Box<dyn Module>,
    /// Input shape `[C, H, W]`.
    pub input: [usize; 3],
}

impl LeNet5 {
    /// Builds LeNet-5 for inputs `[C, H, W]` and `classes` outputs.
    pub fn new(input: [usize; 3], classes: usize, factory: &dyn LayerFactory, pb: &ParamBuilder) -> Result<Self> {
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
        let flat = 16 * ho * wo;
        Ok(Self {
            conv1: factory.conv2d(&pb.pp("conv1"), Conv2dCfg::new(c, 6, 5).with_padding(pad))?,
            conv2: factory.conv2d(&pb.pp("conv2"), Conv2dCfg::new(6, 16, 5))?,
            fc1: factory.linear(&pb.pp("fc1"), LinearCfg::new(flat, 120))?,
            fc2: factory.linear(&pb.pp("fc2"), LinearCfg::new(120, 84))?,
            fc3: factory.linear(&pb.pp("fc3"), LinearCfg::new(84, classes))?,
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
