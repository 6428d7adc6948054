//! Linear and convolution layers: their shapes ([`LinearCfg`], [`Conv2dCfg`]), the deterministic
//! layers ([`Linear`], [`Conv2d`]) and their forward functions, shared with the Bayesian layers.

use crate::{Ctx, Init, Module, ParamBuilder};
use candle_core::{Result, Tensor};

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

/// A fully connected layer, `y = x Wᵀ + b` (PyTorch's `nn.Linear`; names `weight`, `bias`).
pub struct Linear {
    /// Weight `[out, in]`.
    pub weight: Tensor,
    /// Bias `[out]`.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Creates the layer's parameters under `pb`.
    pub fn new(pb: &ParamBuilder, cfg: LinearCfg) -> Result<Self> {
        let weight = pb.param("weight", &[cfg.out_dim, cfg.in_dim], cfg.init)?;
        let bias = if cfg.bias {
            let init = cfg.bias_init.unwrap_or(Init::torch_bias(cfg.in_dim));
            Some(pb.param("bias", &[cfg.out_dim], init)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// A layer from existing tensors (tests, loading).
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }
}

/// `x Wᵀ (+ b)` for `x` of any rank ≥ 2 (leading dims are flattened into the batch).
pub fn linear_forward(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_dim = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = secateur_kernels::matmul::matmul_bt(&x.reshape((rows, in_dim))?, weight)?;
    let y = match bias {
        Some(b) => secateur_kernels::bias::add_bias(&y, b)?,
        None => y,
    };
    let mut out = dims;
    let last = out.len() - 1;
    out[last] = weight.dim(0)?;
    y.reshape(out)
}

impl Module for Linear {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        match ctx.shared_block(x)? {
            Some(x0) => crate::ctx::tile(&linear_forward(&x0, &self.weight, self.bias.as_ref())?, ctx.samples),
            None => linear_forward(x, &self.weight, self.bias.as_ref()),
        }
    }
}

/// A 2-D convolution (PyTorch's `nn.Conv2d`; names `weight`, `bias`).
pub struct Conv2d {
    /// Weight `[out, in/groups, k, k]`.
    pub weight: Tensor,
    /// Bias `[out]`.
    pub bias: Option<Tensor>,
    /// Shape and hyper-parameters.
    pub cfg: Conv2dCfg,
}

impl Conv2d {
    /// Creates the layer's parameters under `pb`.
    pub fn new(pb: &ParamBuilder, cfg: Conv2dCfg) -> Result<Self> {
        if cfg.groups == 0 || !cfg.in_ch.is_multiple_of(cfg.groups) || !cfg.out_ch.is_multiple_of(cfg.groups) {
            candle_core::bail!(
                "conv {}: groups {} must divide in {} and out {}",
                pb.path(""),
                cfg.groups,
                cfg.in_ch,
                cfg.out_ch
            );
        }
        let weight = pb.param(
            "weight",
            &[cfg.out_ch, cfg.in_ch / cfg.groups, cfg.kernel, cfg.kernel],
            cfg.init,
        )?;
        let bias = if cfg.bias {
            let init = cfg.bias_init.unwrap_or(Init::torch_bias(cfg.fan_in()));
            Some(pb.param("bias", &[cfg.out_ch], init)?)
        } else {
            None
        };
        Ok(Self { weight, bias, cfg })
    }
}

/// Convolution of `x: [B, C, H, W]` with `weight`, plus a per-channel bias.
pub fn conv2d_forward(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, cfg: &Conv2dCfg) -> Result<Tensor> {
    // secateur's convolution ops on CPU (fast, differentiable twice); candle's conv2d elsewhere.
    let params = secateur_kernels::conv::ConvParams::new(cfg.stride, cfg.padding, cfg.dilation, cfg.groups);
    match bias {
        Some(b) => secateur_kernels::conv::conv2d_bias(x, weight, b, params),
        None => secateur_kernels::conv::conv2d_with(x, weight, params),
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        match ctx.shared_block(x)? {
            Some(x0) => crate::ctx::tile(
                &conv2d_forward(&x0, &self.weight, self.bias.as_ref(), &self.cfg)?,
                ctx.samples,
            ),
            None => conv2d_forward(x, &self.weight, self.bias.as_ref(), &self.cfg),
        }
    }
}
