//! Variational (Gaussian) dropout with learned rates (Kingma, Salimans & Welling 2015,
//! "Variational dropout and the local reparameterization trick").
//!
//! The posterior is `q(w) = N(θ, α θ²)`, i.e. Gaussian dropout `w = θ ξ`, `ξ ~ N(1, α)`, with the
//! log-uniform prior; `log α` is learned either per weight or per input unit (shared by the
//! weights leaving a unit: an input feature of [`VdLinear`], an input channel of [`VdConv2d`]),
//! and clipped to `[−8, 0]` (α ≤ 1, where the paper's KL fit holds). Training samples
//! pre-activations by local reparameterisation: mean `x θᵀ + b`, variance `x² (α θ²)ᵀ` (for a
//! convolution `conv(x, θ) + b` and `conv(x², α θ²)`). For the per-unit variant this is exactly
//! the marginal of each pre-activation under multiplicative Gaussian noise on the inputs,
//! `x̃ = x ⊙ ξ` with `ξ ~ N(1, α_unit)` drawn independently per example and input element (for a
//! convolution: per example, channel and pixel, with the channel's rate): the pre-activation is
//! linear in the independent `ξ`, hence Gaussian with that mean and variance. With the other
//! estimators (`Weight`, `Flipout`) the per-unit variant samples weights from `N(θ, α_unit θ²)`,
//! the posterior with α tied per unit, whose per-example marginals are the same. The divergence is
//! the paper's approximation ([`crate::divergence::kl_vd_kingma`]) summed over the noise
//! variables (weights or units). Parameters: `weight_mu` (θ), `weight_log_alpha` (the weight's
//! shape, or `[in]` / `[in_ch]` per unit), and a deterministic `bias`.
//!
//! The linear and conv layers share one parameter set and its arithmetic (`Vd`), as the
//! sparse-VD layers do.

use super::{gaussian_conv2d, gaussian_linear, Conv2dGeom, GaussianWeights};
use crate::ctx::Ctx;
use crate::divergence::{kl_vd_kingma, Divergence};
use crate::error::ConfigError;
use crate::init::Init;
use crate::module::Module;
use crate::params::ParamBuilder;
use crate::rng::SeededRng;
use crate::variational::{PosteriorStats, TestTimeWeight, Variational};
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Lower clip of `log α`.
pub const VD_LOG_ALPHA_MIN: f64 = -8.0;
/// Upper clip of `log α` (α ≤ 1).
pub const VD_LOG_ALPHA_MAX: f64 = 0.0;
/// The default initial `log α` (α ≈ 0.14).
pub const DEFAULT_INIT_LOG_ALPHA: f64 = -2.0;

/// The clip of `log α` for the fused kernels.
const CLIP: secateur_kernels::variational_dropout::Clip = secateur_kernels::variational_dropout::Clip {
    lo: VD_LOG_ALPHA_MIN,
    hi: VD_LOG_ALPHA_MAX,
};

/// The constants of [`kl_vd_kingma`] for the fused kernel.
const KL_CONSTANTS: secateur_kernels::variational_dropout::KlConstants =
    secateur_kernels::variational_dropout::KlConstants {
        c1: crate::divergence::KINGMA_C1,
        c2: crate::divergence::KINGMA_C2,
        c3: crate::divergence::KINGMA_C3,
        clip: CLIP,
    };

/// Whether α is learned per weight or per input unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VdGranularity {
    /// One α per weight (independent weight noise).
    Weight,
    /// One α per input unit (multiplicative noise on the unit's activation; for a convolution,
    /// on every pixel of the input channel).
    Unit,
}

impl VdGranularity {
    /// The config names, `weight` and `unit`.
    pub const NAMES: &'static [&'static str] = &["weight", "unit"];

    /// The granularity of a config name (`weight` or `unit`).
    pub fn parse(name: &str) -> std::result::Result<Self, ConfigError> {
        match name {
            "weight" => Ok(Self::Weight),
            "unit" => Ok(Self::Unit),
            other => Err(ConfigError::Parse {
                what: "variational dropout granularity",
                input: other.to_string(),
                reason: format!("known: {}", Self::NAMES.join(", ")),
            }),
        }
    }
}

fn check_init_log_alpha(what: &str, v: f64) -> std::result::Result<(), ConfigError> {
    if (VD_LOG_ALPHA_MIN..=VD_LOG_ALPHA_MAX).contains(&v) {
        Ok(())
    } else {
        Err(ConfigError::invalid(what, "init_log_alpha", "in [-8, 0]", v))
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// The parameters shared by [`VdLinear`] and [`VdConv2d`]: θ (`[out, in]` or
/// `[out, in/groups, k, k]`), `log α` (θ's shape, or one entry per input unit/channel), an
/// optional deterministic bias, and the number of convolution groups (1 for a linear layer).
#[derive(Debug, Clone)]
struct Vd {
    name: String,
    theta: Tensor,
    log_alpha: Tensor,
    bias: Option<Tensor>,
    granularity: VdGranularity,
    groups: usize,
}

impl Vd {
    /// Creates `weight_mu` (PyTorch's default init), `weight_log_alpha` (constant `init`) and,
    /// with `bias`, `bias` (`U(±1/√fan_in)`) under `pb`; `in_units` is the number of input units
    /// (features or channels) that a per-unit α is indexed by.
    fn create(
        pb: &ParamBuilder,
        shape: &[usize],
        in_units: usize,
        groups: usize,
        bias: bool,
        granularity: VdGranularity,
        init: f64,
    ) -> Result<Self> {
        let theta = pb.param("weight_mu", shape, Init::TorchDefault)?;
        let la_shape: Vec<usize> = match granularity {
            VdGranularity::Weight => shape.to_vec(),
            VdGranularity::Unit => vec![in_units],
        };
        let log_alpha = pb.param("weight_log_alpha", &la_shape, Init::Const(init))?;
        let fan_in: usize = shape[1..].iter().product();
        let bias = if bias {
            Some(pb.param("bias", &shape[..1], Init::torch_bias(fan_in))?)
        } else {
            None
        };
        Ok(Self {
            name: pb.prefix().to_string(),
            theta,
            log_alpha,
            bias,
            granularity,
            groups,
        })
    }

    /// Wraps existing tensors after checking their shapes: `log_alpha` of θ's shape, or `[in]`
    /// (linear) / `[in_ch] = [groups · θ.dims()[1]]` (conv) per unit; the bias `[out]`.
    fn from_tensors(
        what: &str,
        name: String,
        theta: Tensor,
        log_alpha: Tensor,
        bias: Option<Tensor>,
        groups: usize,
    ) -> Result<Self> {
        let dims = theta.dims();
        if dims.len() < 2 {
            candle_core::bail!("{what} `{name}`: θ must have rank ≥ 2, got shape {dims:?}");
        }
        let granularity = if log_alpha.dims() == dims {
            VdGranularity::Weight
        } else if log_alpha.dims() == [dims[1] * groups] {
            VdGranularity::Unit
        } else {
            candle_core::bail!(
                "{what} `{name}`: log α has shape {:?}, expected {dims:?} (per weight) or [{}] (per input unit)",
                log_alpha.dims(),
                dims[1] * groups
            );
        };
        if let Some(b) = &bias {
            if b.dims() != [dims[0]] {
                candle_core::bail!("{what} `{name}`: bias has shape {:?}, expected [{}]", b.dims(), dims[0]);
            }
        }
        Ok(Self {
            name,
            theta,
            log_alpha,
            bias,
            granularity,
            groups,
        })
    }

    /// `clip(log α, −8, 0)`, one entry per noise variable (differentiable inside the range).
    fn log_alpha(&self) -> Result<Tensor> {
        self.log_alpha.clamp(VD_LOG_ALPHA_MIN, VD_LOG_ALPHA_MAX)
    }

    /// The clipped `log α` laid out so that it broadcasts against θ: itself per weight; per unit,
    /// `[in]` for a linear layer, and for a convolution `[1, in_ch, 1, 1]` (one group) or
    /// `[out, in_ch/groups, 1, 1]`, the row of output channel `o` holding the rates of the input
    /// channels of `o`'s group (`(o / (out/groups)) · in_ch/groups + j`).
    fn log_alpha_per_weight(&self) -> Result<Tensor> {
        let la = self.log_alpha()?;
        let dims = self.theta.dims();
        match (self.granularity, dims.len()) {
            (VdGranularity::Weight, _) | (VdGranularity::Unit, 2) => Ok(la),
            (VdGranularity::Unit, _) => {
                let (out, per_group) = (dims[0], dims[1]);
                let g = self.groups;
                let trailing = vec![1usize; dims.len() - 2];
                if g == 1 {
                    return la.reshape([&[1, per_group][..], &trailing].concat());
                }
                let out_per_group = out / g;
                let idx: Vec<u32> = (0..out).map(|o| (o / out_per_group) as u32).collect();
                let idx = Tensor::from_vec(idx, out, la.device())?;
                la.reshape((g, per_group))?
                    .index_select(&idx, 0)?
                    .reshape([&[out, per_group][..], &trailing].concat())
            }
        }
    }

    /// `σ = √α |θ|` per weight (the posterior standard deviation of `N(θ, α θ²)`).
    fn sigma(&self) -> Result<Tensor> {
        // α per weight: one fused pass on the CPU (secateur-kernels), candle ops elsewhere
        if let Some(s) = secateur_kernels::variational_dropout::sigma(&self.theta, &self.log_alpha, CLIP)? {
            return Ok(s);
        }
        (self.log_alpha_per_weight()? * 0.5)?
            .exp()?
            .broadcast_mul(&self.theta.abs()?)
    }

    /// `Σ KL_Kingma(log α)` over the noise variables (weights or units).
    fn divergence(&self, how: &Divergence) -> Result<Tensor> {
        match how {
            // one fused pass on the CPU (secateur-kernels); the same formula as candle ops elsewhere
            Divergence::Kl => match secateur_kernels::variational_dropout::kl_sum(&self.log_alpha, KL_CONSTANTS)? {
                Some(kl) => Ok(kl),
                None => kl_vd_kingma(&self.log_alpha()?),
            },
            other => Err(ConfigError::Unsupported(format!(
                "variational dropout layer `{}` defines only `kl` (Kingma et al. 2015's approximation), not `{other}`",
                self.name
            ))
            .into()),
        }
    }

    /// Mean θ, standard deviation `√α |θ|` and `log α` broadcast to θ's shape, under
    /// `{name}.weight`.
    fn stats(&self) -> Result<Vec<PosteriorStats>> {
        let theta = self.theta.detach();
        let la = self
            .log_alpha_per_weight()?
            .detach()
            .broadcast_as(theta.shape())?
            .contiguous()?;
        Ok(vec![PosteriorStats {
            name: join(&self.name, "weight"),
            std: Some(self.sigma()?.detach()),
            mean: theta,
            log_alpha: Some(la),
            inclusion: None,
        }])
    }
}

macro_rules! vd_accessors {
    () => {
        /// `log α` clipped to `[−8, 0]` (differentiable inside), one entry per noise variable.
        pub fn log_alpha(&self) -> Result<Tensor> {
            self.inner.log_alpha()
        }
        /// θ, the posterior mean (`weight_mu`).
        pub fn weight_mu(&self) -> &Tensor {
            &self.inner.theta
        }
        /// The unclipped `weight_log_alpha` parameter.
        pub fn weight_log_alpha(&self) -> &Tensor {
            &self.inner.log_alpha
        }
        /// The deterministic bias, if any.
        pub fn bias(&self) -> Option<&Tensor> {
            self.inner.bias.as_ref()
        }
        /// Per weight or per input unit.
        pub fn granularity(&self) -> VdGranularity {
            self.inner.granularity
        }
        /// The posterior standard deviation `σ = √α |θ|` of every weight (θ's shape).
        pub fn weight_sigma(&self) -> Result<Tensor> {
            self.inner.sigma()
        }
    };
}

/// Configuration of a [`VdLinear`] layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VdLinearConfig {
    /// Input features.
    pub in_dim: usize,
    /// Output features.
    pub out_dim: usize,
    /// Whether the layer has a (deterministic) bias.
    pub bias: bool,
    /// Per weight or per unit.
    pub granularity: VdGranularity,
    /// Initial `log α` (default −2, α ≈ 0.14), in `[−8, 0]`.
    pub init_log_alpha: f64,
}

impl VdLinearConfig {
    /// `in_dim → out_dim`, with bias, α per weight, `log α = −2`.
    pub fn new(in_dim: usize, out_dim: usize) -> Self {
        Self {
            in_dim,
            out_dim,
            bias: true,
            granularity: VdGranularity::Weight,
            init_log_alpha: DEFAULT_INIT_LOG_ALPHA,
        }
    }
    /// With or without bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
    /// With this granularity.
    pub fn with_granularity(mut self, g: VdGranularity) -> Self {
        self.granularity = g;
        self
    }
    /// With this initial `log α`.
    pub fn with_init_log_alpha(mut self, v: f64) -> Self {
        self.init_log_alpha = v;
        self
    }
    /// Checks `init_log_alpha ∈ [−8, 0]`.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        check_init_log_alpha("variational dropout linear", self.init_log_alpha)
    }
}

/// A variational-dropout fully connected layer (Kingma et al. 2015) with learned α:
/// `y = x Wᵀ + b`, `W ~ N(θ, α θ²)`, the estimator chosen by `ctx.sampling`.
#[derive(Debug, Clone)]
pub struct VdLinear {
    inner: Vd,
}

impl VdLinear {
    /// Creates `weight_mu`, `weight_log_alpha` and `bias` under `pb` and registers the layer.
    pub fn new(pb: &ParamBuilder, cfg: VdLinearConfig) -> Result<Self> {
        cfg.validate()?;
        let inner = Vd::create(
            pb,
            &[cfg.out_dim, cfg.in_dim],
            cfg.in_dim,
            1,
            cfg.bias,
            cfg.granularity,
            cfg.init_log_alpha,
        )?;
        let layer = Self { inner };
        pb.register_variational(Arc::new(layer.clone()))?;
        Ok(layer)
    }

    /// A layer from existing tensors (`log_alpha` of shape `[out, in]` or `[in]`; the
    /// granularity follows from it); not registered. Refuses other shapes.
    pub fn from_tensors(
        name: impl Into<String>,
        theta: Tensor,
        log_alpha: Tensor,
        bias: Option<Tensor>,
    ) -> Result<Self> {
        theta.dims2()?;
        let inner = Vd::from_tensors("variational dropout linear", name.into(), theta, log_alpha, bias, 1)?;
        Ok(Self { inner })
    }

    vd_accessors!();
}

impl Module for VdLinear {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let sigma = self.inner.sigma()?;
        let w = GaussianWeights {
            mu: &self.inner.theta,
            sigma: &sigma,
            bias_mu: self.inner.bias.as_ref(),
            bias_sigma: None,
        };
        gaussian_linear(x, w, ctx)
    }
}

impl Variational for VdLinear {
    fn divergence(&self, how: &Divergence, _rng: &mut SeededRng) -> Result<Tensor> {
        self.inner.divergence(how)
    }

    fn posterior_stats(&self) -> Result<Vec<PosteriorStats>> {
        self.inner.stats()
    }

    fn test_time_weights(&self) -> Result<Vec<TestTimeWeight>> {
        self.inner.test_time_weights()
    }
}

/// Configuration of a [`VdConv2d`] layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VdConv2dConfig {
    /// Input channels.
    pub in_ch: usize,
    /// Output channels.
    pub out_ch: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride, padding, dilation, groups.
    pub geom: Conv2dGeom,
    /// Whether the layer has a (deterministic) bias.
    pub bias: bool,
    /// Per weight or per input channel.
    pub granularity: VdGranularity,
    /// Initial `log α` (default −2), in `[−8, 0]`.
    pub init_log_alpha: f64,
}

impl VdConv2dConfig {
    /// A `kernel × kernel` convolution, stride 1, no padding, with bias, α per weight,
    /// `log α = −2`.
    pub fn new(in_ch: usize, out_ch: usize, kernel: usize) -> Self {
        Self {
            in_ch,
            out_ch,
            kernel,
            geom: Conv2dGeom::default(),
            bias: true,
            granularity: VdGranularity::Weight,
            init_log_alpha: DEFAULT_INIT_LOG_ALPHA,
        }
    }
    /// With this geometry.
    pub fn with_geom(mut self, geom: Conv2dGeom) -> Self {
        self.geom = geom;
        self
    }
    /// With this stride.
    pub fn with_stride(mut self, stride: usize) -> Self {
        self.geom.stride = stride;
        self
    }
    /// With this padding.
    pub fn with_padding(mut self, padding: usize) -> Self {
        self.geom.padding = padding;
        self
    }
    /// With or without bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
    /// With this granularity.
    pub fn with_granularity(mut self, g: VdGranularity) -> Self {
        self.granularity = g;
        self
    }
    /// With this initial `log α`.
    pub fn with_init_log_alpha(mut self, v: f64) -> Self {
        self.init_log_alpha = v;
        self
    }
    /// Checks `init_log_alpha ∈ [−8, 0]`, the kernel size and the geometry.
    pub fn validate(&self) -> Result<()> {
        check_init_log_alpha("variational dropout conv2d", self.init_log_alpha)?;
        if self.kernel == 0 {
            candle_core::bail!("variational dropout conv2d: kernel must be ≥ 1");
        }
        self.geom.check("variational dropout conv2d", self.in_ch, self.out_ch)
    }
}

/// A variational-dropout 2-D convolution (Kingma et al. 2015) with learned α per weight or per
/// input channel: `W ~ N(θ, α θ²)`; with `Sampling::Local` the output is drawn from
/// `N(conv(x, θ) + b, conv(x², α θ²))` per element ([`lrt_conv`](super::lrt_conv)).
///
/// ```
/// use secateur_bayes::{Ctx, Module, ParamBuilder, ParamStore, Sampling, SeededRng};
/// use secateur_bayes::layers::{VdConv2d, VdConv2dConfig, VdGranularity};
/// use candle_core::{DType, Device, Tensor};
/// let store = ParamStore::new();
/// let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
/// let cfg = VdConv2dConfig::new(3, 4, 3).with_padding(1).with_granularity(VdGranularity::Unit);
/// let conv = VdConv2d::new(&pb.pp("features.0"), cfg).unwrap();
/// assert_eq!(store.get("features.0.weight_log_alpha").unwrap().dims(), &[3]);
/// let x = Tensor::ones((2, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
/// let y = conv.forward(&x, &mut Ctx::train(&mut SeededRng::new(1), Sampling::Local)).unwrap();
/// assert_eq!(y.dims(), &[2, 4, 8, 8]);
/// ```
#[derive(Debug, Clone)]
pub struct VdConv2d {
    inner: Vd,
    geom: Conv2dGeom,
}

impl VdConv2d {
    /// Creates `weight_mu` (`[out, in/groups, k, k]`), `weight_log_alpha` (the same shape, or
    /// `[in]` per input channel) and `bias` under `pb`, and registers the layer under `pb`'s path.
    pub fn new(pb: &ParamBuilder, cfg: VdConv2dConfig) -> Result<Self> {
        cfg.validate()?;
        let shape = [cfg.out_ch, cfg.in_ch / cfg.geom.groups, cfg.kernel, cfg.kernel];
        let inner = Vd::create(
            pb,
            &shape,
            cfg.in_ch,
            cfg.geom.groups,
            cfg.bias,
            cfg.granularity,
            cfg.init_log_alpha,
        )?;
        let layer = Self { inner, geom: cfg.geom };
        pb.register_variational(Arc::new(layer.clone()))?;
        Ok(layer)
    }

    /// A layer from existing tensors (`log_alpha` of θ's shape, or `[in_ch]` per input channel);
    /// not registered. Refuses other shapes and an impossible geometry.
    pub fn from_tensors(
        name: impl Into<String>,
        theta: Tensor,
        log_alpha: Tensor,
        bias: Option<Tensor>,
        geom: Conv2dGeom,
    ) -> Result<Self> {
        let (o, ci, _, _) = theta.dims4()?;
        geom.check("variational dropout conv2d", ci * geom.groups, o)?;
        let inner = Vd::from_tensors(
            "variational dropout conv2d",
            name.into(),
            theta,
            log_alpha,
            bias,
            geom.groups,
        )?;
        Ok(Self { inner, geom })
    }

    vd_accessors!();

    /// The convolution geometry.
    pub fn geom(&self) -> Conv2dGeom {
        self.geom
    }
}

impl Module for VdConv2d {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let sigma = self.inner.sigma()?;
        let w = GaussianWeights {
            mu: &self.inner.theta,
            sigma: &sigma,
            bias_mu: self.inner.bias.as_ref(),
            bias_sigma: None,
        };
        gaussian_conv2d(x, w, self.geom, ctx)
    }
}

impl Variational for VdConv2d {
    fn divergence(&self, how: &Divergence, _rng: &mut SeededRng) -> Result<Tensor> {
        self.inner.divergence(how)
    }
    fn posterior_stats(&self) -> Result<Vec<PosteriorStats>> {
        self.inner.stats()
    }

    fn test_time_weights(&self) -> Result<Vec<TestTimeWeight>> {
        self.inner.test_time_weights()
    }
}

impl Vd {
    /// θ stands for the weight (variational dropout keeps every weight at test time, Kingma et
    /// al. 2015); the bias is deterministic.
    fn test_time_weights(&self) -> Result<Vec<TestTimeWeight>> {
        let mut v = vec![TestTimeWeight::all(join(&self.name, "weight_mu"))];
        if self.bias.is_some() {
            v.push(TestTimeWeight::all(join(&self.name, "bias")));
        }
        Ok(v)
    }
}
