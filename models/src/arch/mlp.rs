//! Multi-layer perceptrons, LeNet-300-100 (LeCun, Bottou, Bengio & Haffner 1998) by default.

use super::check_input;
use crate::factory::LayerFactory;
use candle_core::{Result, Tensor};
use secateur_bayes::nn::LinearCfg;
use secateur_bayes::{Ctx, Module, ParamBuilder};
use serde::{Deserialize, Serialize};

/// The hidden widths of an [`Mlp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Widths of the hidden layers, input side first.
    pub hidden: Vec<usize>,
}

impl MlpConfig {
    /// LeNet-300-100 (LeCun et al. 1998): hidden widths 300 and 100, the standard MNIST network
    /// of the pruning literature (Han et al. 2015; Molchanov, Ashukha & Vetrov 2017).
    pub fn lenet_300_100() -> Self {
        Self { hidden: vec![300, 100] }
    }
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self::lenet_300_100()
    }
}

/// A fully connected ReLU network: flatten, `Linear → ReLU` per hidden width, then a linear
/// output layer. Layers are named `fc1`, `fc2`, …, the last being the classifier; PyTorch's
/// default initialisation. With [`MlpConfig::lenet_300_100`] this is LeNet-300-100
/// (LeCun et al. 1998).
pub struct Mlp {
    /// The linear layers `fc1 … fcN`, in order.
    pub layers: Vec<Box<dyn Module>>,
    /// Input shape `[C, H, W]`.
    pub input: [usize; 3],
}

impl Mlp {
    /// Builds the network for inputs `[C, H, W]` (flattened to `C·H·W` features) and `classes`
    /// outputs.
    pub fn new(
        cfg: &MlpConfig,
        input: [usize; 3],
        classes: usize,
        factory: &dyn LayerFactory,
        pb: &ParamBuilder,
    ) -> Result<Self> {
        if cfg.hidden.contains(&0) {
            candle_core::bail!("mlp: field `hidden` must contain positive widths, got {:?}", cfg.hidden);
        }
        let mut dims = vec![input.iter().product::<usize>()];
        dims.extend(&cfg.hidden);
        dims.push(classes);
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| factory.linear(&pb.pp(format!("fc{}", i + 1)), LinearCfg::new(w[0], w[1])))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, input })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let x = self.features(x, ctx)?;
        self.layers[self.layers.len() - 1].forward(&x, ctx)
    }
    fn features(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        check_input("mlp", x, self.input)?;
        let mut x = x.flatten_from(1)?;
        for l in &self.layers[..self.layers.len() - 1] {
            x = secateur_kernels::activation::relu(&l.forward(&x, ctx)?)?;
        }
        Ok(x)
    }
    fn head(&self) -> Option<String> {
        Some(format!("fc{}", self.layers.len()))
    }
}
