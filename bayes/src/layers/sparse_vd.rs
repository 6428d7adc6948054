//! Sparse variational dropout (Molchanov, Ashukha & Vetrov 2017, "Variational dropout sparsifies
//! deep neural networks").
//!
//! Each weight has the posterior `q(w) = N(θ, σ²)` in the additive reparameterisation
//! `w = θ + σ ε` (θ and `log σ²` are the trainable parameters, so the gradient noise does not grow
//! with α), and the log-uniform prior. The dropout rate is `log α = log σ² − log θ²`, clipped to
//! `[−8, 8]`. Training uses the estimator in `ctx.sampling` (the paper uses the local
//! reparameterisation, `Sampling::Local`); in evaluation mode weights with `log α ≥ threshold`
//! (default 3, i.e. α ≥ e³ ≈ 20, dropout rate p = α/(1+α) ≥ 0.95) are set to zero. The
//! divergence is the paper's KL approximation
//! ([`crate::divergence::kl_sparse_vd`]).
//!
//! Parameters, under the builder's path: `weight_mu` (θ: the posterior mean, named like the
//! mean-field layers' so that pruning finds `{name}_mu` for every family), `weight_log_sigma2`
//! (initialised at −10), and a deterministic `bias` (as in the paper's reference code).

use super::{gaussian_conv2d, gaussian_linear, Conv2dGeom, GaussianWeights};
use crate::ctx::{Ctx, Mode};
use crate::divergence::{kl_sparse_vd, Divergence};
use crate::error::ConfigError;
use crate::init::Init;
use crate::module::Module;
use crate::params::ParamBuilder;
use crate::rng::SeededRng;
use crate::variational::{PosteriorStats, TestTimeWeight, Variational};
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// `log α` is clipped to `[−LOG_ALPHA_CLIP, LOG_ALPHA_CLIP]` (Molchanov et al. 2017).
pub const LOG_ALPHA_CLIP: f64 = 8.0;
/// The `ε` of `log α = log σ² − log(θ² + ε)`: at `θ = 0`, `log α = log σ² − ln ε`.
pub const THETA_SQ_EPS: f64 = 1e-16;
/// The `log σ²` that puts a weight with `θ = 0` at the pruned end, `log α = +`[`LOG_ALPHA_CLIP`]
/// (one nat past the clip, so rounding cannot pull it below): `ln ε + 8 + 1`. Its KL term is
/// then that of `log α = 8`, about `3e-4` nats (Molchanov et al. 2017's approximation), instead
/// of about 4.6 nats at `log α = −8`.
pub const PRUNED_LOG_SIGMA2: f64 = -36.841_361_487_904_734 + LOG_ALPHA_CLIP + 1.0;
/// The constants of [`kl_sparse_vd`] for the fused kernel.
const KL_CONSTANTS: secateur_kernels::sparse_vd::KlConstants = secateur_kernels::sparse_vd::KlConstants {
    k1: crate::divergence::MOLCHANOV_K1,
    k2: crate::divergence::MOLCHANOV_K2,
    k3: crate::divergence::MOLCHANOV_K3,
    clip: LOG_ALPHA_CLIP,
    eps: THETA_SQ_EPS,
};
/// The default initial `log σ²`.
pub const DEFAULT_INIT_LOG_SIGMA2: f64 = -10.0;
/// The default test-time threshold: weights with `log α ≥ 3` are dropped.
pub const DEFAULT_THRESHOLD: f64 = 3.0;

/// Configuration of a [`SvdLinear`] layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SvdLinearConfig {
    /// Input features.
    pub in_dim: usize,
    /// Output features.
    pub out_dim: usize,
    /// Whether the layer has a (deterministic) bias.
    pub bias: bool,
    /// Initial `log σ²` (default −10).
    pub init_log_sigma2: f64,
    /// Test-time threshold on `log α` (default 3).
    pub threshold: f64,
}

impl SvdLinearConfig {
    /// `in_dim → out_dim` with bias, `log σ²` initialised at −10, threshold 3.
    pub fn new(in_dim: usize, out_dim: usize) -> Self {
        Self {
            in_dim,
            out_dim,
            bias: true,
            init_log_sigma2: DEFAULT_INIT_LOG_SIGMA2,
            threshold: DEFAULT_THRESHOLD,
        }
    }
    /// With or without bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
    /// With this initial `log σ²`.
    pub fn with_init_log_sigma2(mut self, v: f64) -> Self {
        self.init_log_sigma2 = v;
        self
    }
    /// With this test-time threshold on `log α`.
    pub fn with_threshold(mut self, t: f64) -> Self {
        self.threshold = t;
        self
    }
    /// Checks that both values are finite.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        check_finite("sparse vd linear", self.init_log_sigma2, self.threshold)
    }
}

fn check_finite(what: &str, init: f64, threshold: f64) -> std::result::Result<(), ConfigError> {
    if !init.is_finite() {
        return Err(ConfigError::invalid(what, "init_log_sigma2", "finite", init));
    }
    if !threshold.is_finite() {
        return Err(ConfigError::invalid(what, "threshold", "finite", threshold));
    }
    Ok(())
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// The parameters shared by the linear and conv variants.
#[derive(Debug, Clone)]
struct Svd {
    name: String,
    theta: Tensor,
    log_sigma2: Tensor,
    bias: Option<Tensor>,
    threshold: f64,
}

impl Svd {
    fn new(pb: &ParamBuilder, shape: &[usize], fan_in: usize, bias: bool, init: f64, threshold: f64) -> Result<Self> {
        let theta = pb.param("weight_mu", shape, Init::TorchDefault)?;
        let log_sigma2 = pb.param("weight_log_sigma2", shape, Init::Const(init))?;
        let bias = if bias {
            Some(pb.param("bias", &[shape[0]], Init::torch_bias(fan_in))?)
        } else {
            None
        };
        Ok(Self {
            name: pb.prefix().to_string(),
            theta,
            log_sigma2,
            bias,
            threshold,
        })
    }

    /// `clip(log σ² − log(θ² + 1e−16), −8, 8)`.
    fn log_alpha(&self) -> Result<Tensor> {
        (&self.log_sigma2 - (self.theta.sqr()? + THETA_SQ_EPS)?.log()?)?.clamp(-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)
    }

    /// 1 where `log α < threshold`, 0 elsewhere (detached).
    fn mask(&self) -> Result<Tensor> {
        self.log_alpha()?
            .detach()
            .lt(self.threshold)?
            .to_dtype(self.theta.dtype())
    }

    /// `(θ, σ)` as the forward pass uses them: masked in evaluation mode.
    fn weights(&self, mode: Mode) -> Result<(Tensor, Tensor)> {
        // σ = e^{½ log σ²}: one pass on the CPU (secateur-kernels), candle ops elsewhere
        let sigma = match secateur_kernels::sparse_vd::sigma(&self.log_sigma2)? {
            Some(s) => s,
            None => (&self.log_sigma2 * 0.5)?.exp()?,
        };
        match mode {
            Mode::Train => Ok((self.theta.clone(), sigma)),
            Mode::Eval => {
                let m = self.mask()?;
                Ok(((&self.theta * &m)?, (sigma * m)?))
            }
        }
    }

    fn divergence(&self, how: &Divergence) -> Result<Tensor> {
        match how {
            // one fused pass on the CPU (secateur-kernels); the same formula as candle ops elsewhere
            Divergence::Kl => match secateur_kernels::sparse_vd::kl_sum(&self.theta, &self.log_sigma2, KL_CONSTANTS)? {
                Some(kl) => Ok(kl),
                None => kl_sparse_vd(&self.log_alpha()?),
            },
            other => Err(ConfigError::Unsupported(format!(
                "sparse variational dropout layer `{}` defines only `kl` (its approximation to the KL from the \
                 log-uniform prior, Molchanov et al. 2017), not `{other}`",
                self.name
            ))
            .into()),
        }
    }

    fn stats(&self) -> Result<Vec<PosteriorStats>> {
        Ok(vec![PosteriorStats {
            name: join(&self.name, "weight"),
            mean: self.theta.detach(),
            std: Some((self.log_sigma2.detach() * 0.5)?.exp()?),
            log_alpha: Some(self.log_alpha()?.detach()),
            inclusion: None,
        }])
    }

    fn dropped(&self) -> Result<(usize, usize)> {
        let kept = self
            .mask()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()? as usize;
        let n = self.theta.elem_count();
        Ok((n - kept, n))
    }
}

macro_rules! svd_accessors {
    () => {
        /// θ, the posterior mean (`weight_mu`).
        pub fn weight_mu(&self) -> &Tensor {
            &self.inner.theta
        }
        /// `log σ²` (`weight_log_sigma2`).
        pub fn weight_log_sigma2(&self) -> &Tensor {
            &self.inner.log_sigma2
        }
        /// The deterministic bias, if any.
        pub fn bias(&self) -> Option<&Tensor> {
            self.inner.bias.as_ref()
        }
        /// `log α = clip(log σ² − log θ², −8, 8)`, differentiable.
        pub fn log_alpha(&self) -> Result<Tensor> {
            self.inner.log_alpha()
        }
        /// The test-time mask: 1 where `log α < threshold`, 0 where the weight is dropped.
        pub fn mask(&self) -> Result<Tensor> {
            self.inner.mask()
        }
        /// `(dropped, total)`: how many weights have `log α ≥ threshold`.
        pub fn dropped(&self) -> Result<(usize, usize)> {
            self.inner.dropped()
        }
        /// The test-time threshold on `log α`.
        pub fn threshold(&self) -> f64 {
            self.inner.threshold
        }
    };
}

/// A sparse-variational-dropout fully connected layer (Molchanov et al. 2017):
/// `y = x Wᵀ + b`, `W = θ + σ ε`; weights with `log α ≥ threshold` are zero in evaluation mode.
#[derive(Debug, Clone)]
pub struct SvdLinear {
    inner: Svd,
}

impl SvdLinear {
    /// Creates `weight_mu` (θ, PyTorch's default init), `weight_log_sigma2` and `bias` under `pb`
    /// and registers the layer as [`Variational`] under `pb`'s path.
    pub fn new(pb: &ParamBuilder, cfg: SvdLinearConfig) -> Result<Self> {
        cfg.validate()?;
        let inner = Svd::new(
            pb,
            &[cfg.out_dim, cfg.in_dim],
            cfg.in_dim,
            cfg.bias,
            cfg.init_log_sigma2,
            cfg.threshold,
        )?;
        let layer = Self { inner };
        pb.register_variational(Arc::new(layer.clone()))?;
        Ok(layer)
    }

    /// A layer from existing tensors (tests, loading); not registered anywhere.
    pub fn from_tensors(
        name: impl Into<String>,
        theta: Tensor,
        log_sigma2: Tensor,
        bias: Option<Tensor>,
        threshold: f64,
    ) -> Result<Self> {
        check_finite("sparse vd linear", 0.0, threshold)?;
        Ok(Self {
            inner: Svd {
                name: name.into(),
                theta,
                log_sigma2,
                bias,
                threshold,
            },
        })
    }

    svd_accessors!();
}

impl Module for SvdLinear {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let (theta, sigma) = self.inner.weights(ctx.mode)?;
        let w = GaussianWeights {
            mu: &theta,
            sigma: &sigma,
            bias_mu: self.inner.bias.as_ref(),
            bias_sigma: None,
        };
        gaussian_linear(x, w, ctx)
    }
}

impl Variational for SvdLinear {
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

/// Configuration of a [`SvdConv2d`] layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SvdConv2dConfig {
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
    /// Initial `log σ²` (default −10).
    pub init_log_sigma2: f64,
    /// Test-time threshold on `log α` (default 3).
    pub threshold: f64,
}

impl SvdConv2dConfig {
    /// A `kernel × kernel` convolution, stride 1, no padding, with bias, `log σ² = −10`,
    /// threshold 3.
    pub fn new(in_ch: usize, out_ch: usize, kernel: usize) -> Self {
        Self {
            in_ch,
            out_ch,
            kernel,
            geom: Conv2dGeom::default(),
            bias: true,
            init_log_sigma2: DEFAULT_INIT_LOG_SIGMA2,
            threshold: DEFAULT_THRESHOLD,
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
    /// With this initial `log σ²`.
    pub fn with_init_log_sigma2(mut self, v: f64) -> Self {
        self.init_log_sigma2 = v;
        self
    }
    /// With this test-time threshold on `log α`.
    pub fn with_threshold(mut self, t: f64) -> Self {
        self.threshold = t;
        self
    }
    /// Checks the values and the geometry.
    pub fn validate(&self) -> Result<()> {
        check_finite("sparse vd conv2d", self.init_log_sigma2, self.threshold)?;
        if self.kernel == 0 {
            candle_core::bail!("sparse vd conv2d: kernel must be ≥ 1");
        }
        self.geom.check("sparse vd conv2d", self.in_ch, self.out_ch)
    }
}

/// A sparse-variational-dropout 2-D convolution (Molchanov et al. 2017); in training with
/// `Sampling::Local` it uses a mean and a variance convolution ([`lrt_conv`](super::lrt_conv)).
#[derive(Debug, Clone)]
pub struct SvdConv2d {
    inner: Svd,
    geom: Conv2dGeom,
}

impl SvdConv2d {
    /// Creates `weight_mu`, `weight_log_sigma2` (`[out, in/groups, k, k]`) and `bias` under `pb`
    /// and registers the layer under `pb`'s path.
    pub fn new(pb: &ParamBuilder, cfg: SvdConv2dConfig) -> Result<Self> {
        cfg.validate()?;
        let shape = [cfg.out_ch, cfg.in_ch / cfg.geom.groups, cfg.kernel, cfg.kernel];
        let fan_in = shape[1] * shape[2] * shape[3];
        let inner = Svd::new(pb, &shape, fan_in, cfg.bias, cfg.init_log_sigma2, cfg.threshold)?;
        let layer = Self { inner, geom: cfg.geom };
        pb.register_variational(Arc::new(layer.clone()))?;
        Ok(layer)
    }

    /// A layer from existing tensors (tests, loading); not registered anywhere.
    pub fn from_tensors(
        name: impl Into<String>,
        theta: Tensor,
        log_sigma2: Tensor,
        bias: Option<Tensor>,
        threshold: f64,
        geom: Conv2dGeom,
    ) -> Result<Self> {
        check_finite("sparse vd conv2d", 0.0, threshold)?;
        let (o, ci, _, _) = theta.dims4()?;
        geom.check("sparse vd conv2d", ci * geom.groups, o)?;
        Ok(Self {
            inner: Svd {
                name: name.into(),
                theta,
                log_sigma2,
                bias,
                threshold,
            },
            geom,
        })
    }

    svd_accessors!();

    /// The convolution geometry.
    pub fn geom(&self) -> Conv2dGeom {
        self.geom
    }
}

impl Module for SvdConv2d {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let (theta, sigma) = self.inner.weights(ctx.mode)?;
        let w = GaussianWeights {
            mu: &theta,
            sigma: &sigma,
            bias_mu: self.inner.bias.as_ref(),
            bias_sigma: None,
        };
        gaussian_conv2d(x, w, self.geom, ctx)
    }
}

impl Variational for SvdConv2d {
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

impl Svd {
    /// θ stands for the weight, dropped where `log α ≥ threshold` (Molchanov et al. 2017); the
    /// bias is deterministic.
    fn test_time_weights(&self) -> Result<Vec<TestTimeWeight>> {
        let keep = self.log_alpha()?.detach().lt(self.threshold)?;
        let mut v = vec![TestTimeWeight {
            name: join(&self.name, "weight_mu"),
            keep: Some(keep),
        }];
        if self.bias.is_some() {
            v.push(TestTimeWeight::all(join(&self.name, "bias")));
        }
        Ok(v)
    }
}
