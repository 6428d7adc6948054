//! The layer factory: how an architecture makes its linear and convolution layers.

use candle_core::Result;
use secateur_bayes::nn::{Conv2d, Conv2dCfg, Linear, LinearCfg};
use secateur_bayes::{Module, ParamBuilder};

/// Makes the linear and convolution layers of an architecture.
///
/// Architectures call only these two methods for their weight layers; batch norm, layer norm and
/// pooling stay deterministic. Implementations register their parameters through the given
/// [`ParamBuilder`] (already positioned at the layer's path, e.g. `features.0`), so every
/// parameter has a PyTorch-style name whatever the layer kind.
pub trait LayerFactory {
    /// A short name for reports (`deterministic`, `mean-field`, …).
    fn name(&self) -> &str;
    /// Makes a linear layer.
    fn linear(&self, pb: &ParamBuilder, cfg: LinearCfg) -> Result<Box<dyn Module>>;
    /// Makes a 2-D convolution.
    fn conv2d(&self, pb: &ParamBuilder, cfg: Conv2dCfg) -> Result<Box<dyn Module>>;
}

/// The deterministic factory: plain [`Linear`] and [`Conv2d`] layers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Deterministic;

impl LayerFactory for Deterministic {
    fn name(&self) -> &str {
        "deterministic"
    }
    fn linear(&self, pb: &ParamBuilder, cfg: LinearCfg) -> Result<Box<dyn Module>> {
        Ok(Box::new(Linear::new(pb, cfg)?))
    }
    fn conv2d(&self, pb: &ParamBuilder, cfg: Conv2dCfg) -> Result<Box<dyn Module>> {
        Ok(Box::new(Conv2d::new(pb, cfg)?))
    }
}
