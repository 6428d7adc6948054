//! Variational (Gaussian) dropout with learned rates (Kingma, Salimans & Welling 2015,
//! "Variational dropout and the local reparameterization trick").
//!
//! The posterior is `q(w) = N(θ, α θ²)`, i.e. Gaussian dropout `w = θ ξ`, `ξ ~ N(1, α)`, with the
//! log-uniform prior; `log α` is learned either per weight or per input unit (shared by the
//! weights leaving a unit), and clipped to `[−8, 0]` (α ≤ 1, where the paper's KL fit holds).
//! Training samples pre-activations by local reparameterisation: mean `x θᵀ + b`, variance
//! `x² (α θ²)ᵀ` (for the per-unit variant this is exactly the marginal of multiplicative noise on
//! the inputs). The divergence is the paper's approximation
//! ([`crate::divergence::kl_vd_kingma`]) summed over the noise variables (weights
//! or units). Parameters: `weight_mu` (θ), `weight_log_alpha` (`[out, in]` or `[in]`), `bias`.

use super::{gaussian_linear, GaussianWeights};
use crate::ctx::Ctx;
use crate::divergence::{kl_vd_kingma, Divergence};
use crate::error::ConfigError;
use crate::init::Init;
use crate::module::Module;
use crate::params::ParamBuilder;
use crate::rng::SeededRng;
use crate::variational::{PosteriorStats, Variational};
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Lower clip of `log α`.
pub const VD_LOG_ALPHA_MIN: f64 = -8.0;
/// Upper clip of `log α` (α ≤ 1).
pub const VD_LOG_ALPHA_MAX: f64 = 0.0;

/// Whether α is learned per weight or per input unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VdGranularity {
    /// One α per weight (independent weight noise).
    Weight,
    /// One α per input unit (multiplicative noise on the unit's activation).
    Unit,
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
            init_log_alpha: -2.0,
        }
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
        if (VD_LOG_ALPHA_MIN..=VD_LOG_ALPHA_MAX).contains(&self.init_log_alpha) {
            Ok(())
        } else {
            Err(ConfigError::invalid(
                "variational dropout linear",
                "init_log_alpha",
                "in [-8, 0]",
                self.init_log_alpha,
            ))
        }
    }
}

/// A variational-dropout fully connected layer (Kingma et al. 2015) with learned α.
#[derive(Debug, Clone)]
pub struct VdLinear {
    name: String,
    theta: Tensor,
    log_alpha: Tensor,
    bias: Option<Tensor>,
}

impl VdLinear {
    /// Creates `weight_mu`, `weight_log_alpha` and `bias` under `pb` and registers the layer.
    pub fn new(pb: &ParamBuilder, cfg: VdLinearConfig) -> Result<Self> {
        cfg.validate()?;
        let theta = pb.param("weight_mu", &[cfg.out_dim, cfg.in_dim], Init::TorchDefault)?;
        let la_shape: Vec<usize> = match cfg.granularity {
            VdGranularity::Weight => vec![cfg.out_dim, cfg.in_dim],
            VdGranularity::Unit => vec![cfg.in_dim],
        };
        let log_alpha = pb.param("weight_log_alpha", &la_shape, Init::Const(cfg.init_log_alpha))?;
        let bias = if cfg.bias {
            Some(pb.param("bias", &[cfg.out_dim], Init::torch_bias(cfg.in_dim))?)
        } else {
            None
        };
        let layer = Self {
            name: pb.prefix().to_string(),
            theta,
            log_alpha,
            bias,
        };
        pb.register_variational(Arc::new(layer.clone()))?;
        Ok(layer)
    }

    /// A layer from existing tensors (`log_alpha` of shape `[out, in]` or `[in]`); not registered.
    pub fn from_tensors(name: impl Into<String>, theta: Tensor, log_alpha: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            name: name.into(),
            theta,
            log_alpha,
            bias,
        }
    }

    /// `log α` clipped to `[−8, 0]` (differentiable inside).
    pub fn log_alpha(&self) -> Result<Tensor> {
        self.log_alpha.clamp(VD_LOG_ALPHA_MIN, VD_LOG_ALPHA_MAX)
    }

    /// θ.
    pub fn weight_mu(&self) -> &Tensor {
        &self.theta
    }

    /// `σ = √α |θ|`, broadcasting a per-unit α over the rows.
    fn sigma(&self) -> Result<Tensor> {
        (self.log_alpha()? * 0.5)?.exp()?.broadcast_mul(&self.theta.abs()?)
    }
}

impl Module for VdLinear {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let sigma = self.sigma()?;
        let w = GaussianWeights {
            mu: &self.theta,
            sigma: &sigma,
            bias_mu: self.bias.as_ref(),
            bias_sigma: None,
        };
        gaussian_linear(x, w, ctx.sampling, ctx.rng)
    }
}

impl Variational for VdLinear {
    fn divergence(&self, how: &Divergence, _rng: &mut SeededRng) -> Result<Tensor> {
        match how {
            Divergence::Kl => kl_vd_kingma(&self.log_alpha()?),
            other => Err(ConfigError::Unsupported(format!(
                "variational dropout layer `{}` defines only `kl` (Kingma et al. 2015's approximation), not `{other}`",
                self.name
            ))
            .into()),
        }
    }

    fn posterior_stats(&self) -> Result<Vec<PosteriorStats>> {
        let theta = self.theta.detach();
        let la = self.log_alpha()?.detach().broadcast_as(theta.shape())?.contiguous()?;
        let name = if self.name.is_empty() {
            "weight".to_string()
        } else {
            format!("{}.weight", self.name)
        };
        Ok(vec![PosteriorStats {
            name,
            std: Some(self.sigma()?.detach()),
            mean: theta,
            log_alpha: Some(la),
            inclusion: None,
        }])
    }
}
