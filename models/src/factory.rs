//! The layer factory: how an architecture makes its linear and convolution layers.

use crate::layers::{Conv2d, Linear};
use candle_core::Result;
use secateur_bayes::{Init, Module, ParamBuilder};

/// A linear layer's shape and initialisation (`y = x Wᵀ + b`, `W: [out, in]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearCfg {
    /// Input features.
    pub in_dim: usize,
    /// Output features.
    pub out_dim: usize,
    /// Whether the layer has a bias.
    pub bias: bool,
    /// Weight initialiser (PyTorch's default unless the architecture says otherwise).
    pub init: Init,
    /// Bias initialiser; `None` means PyTorch's default `U(±1/√in)`.
    pub bias_init: Option<Init>,
}

impl LinearCfg {
    /// A linear layer with bias and PyTorch's default initialisation.
    pub fn new(in_dim: usize, out_dim: usize) -> Self {
        Self {
            in_dim,
            out_dim,
            bias: true,
            init: Init::TorchDefault,
            bias_init: None,
        }
    }
    /// Sets whether the layer has a bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
    /// Sets the weight initialiser.
    pub fn with_init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }
    /// Sets the bias initialiser.
    pub fn with_bias_init(mut self, init: Init) -> Self {
        self.bias_init = Some(init);
        self
    }
}

/// A 2-D convolution's shape and initialisation (`W: [out, in/groups, k, k]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conv2dCfg {
    /// Input channels.
    pub in_ch: usize,
    /// Output channels.
    pub out_ch: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
    /// Dilation.
    pub dilation: usize,
    /// Groups.
    pub groups: usize,
    /// Whether the layer has a bias.
    pub bias: bool,
    /// Weight initialiser.
    pub init: Init,
    /// Bias initialiser; `None` means PyTorch's default `U(±1/√fan_in)`.
    pub bias_init: Option<Init>,
}

impl Conv2dCfg {
    /// A `kernel × kernel` convolution, stride 1, no padding, with bias, PyTorch's default init.
    pub fn new(in_ch: usize, out_ch: usize, kernel: usize) -> Self {
        Self {
            in_ch,
            out_ch,
            kernel,
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
            bias: true,
            init: Init::TorchDefault,
            bias_init: None,
        }
    }
    /// Sets the stride.
    pub fn with_stride(mut self, s: usize) -> Self {
        self.stride = s;
        self
    }
    /// Sets the padding.
    pub fn with_padding(mut self, p: usize) -> Self {
        self.padding = p;
        self
    }
    /// Sets whether the layer has a bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
    /// Sets the weight initialiser.
    pub fn with_init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }
    /// Sets the bias initialiser.
    pub fn with_bias_init(mut self, init: Init) -> Self {
        self.bias_init = Some(init);
        self
    }
    /// Input fan of the weight: `in/groups · k²`.
    pub fn fan_in(&self) -> usize {
        self.in_ch / self.groups.max(1) * self.kernel * self.kernel
    }
}

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
