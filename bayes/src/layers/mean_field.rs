//! Mean-field Gaussian layers ("Bayes by Backprop", Blundell, Cornebise, Kavukcuoglu & Wierstra
//! 2015, "Weight uncertainty in neural networks").
//!
//! Each weight and bias has an independent Gaussian posterior `q(w) = N(μ, σ²)` with
//! `σ = softplus(ρ) = log(1 + e^ρ)`, so `μ` and `ρ` are unconstrained. Parameters, under the
//! builder's path: `weight_mu`, `weight_rho`, `bias_mu`, `bias_rho`. `μ` is initialised as
//! PyTorch initialises `nn.Linear`/`nn.Conv2d` (`U(±1/√fan_in)`), `ρ` to the constant with
//! `softplus(ρ) = init_std` (default `1e-3`: the network starts close to a deterministic one).
//!
//! The forward pass uses the estimator in `ctx.sampling` (see
//! [`super::gaussian_linear`]): the posterior mean, one weight draw
//! (reparameterisation), local reparameterisation, or Flipout. The divergence from the layer's
//! [`Prior`] is any [`Divergence`] (analytic KL and JS^Gα for Gaussian priors, Monte Carlo KL
//! for any prior with a density), summed over weights and biases.

use super::{gaussian_conv2d, gaussian_linear, Conv2dGeom, GaussianWeights};
use crate::ctx::Ctx;
use crate::divergence::{gaussian_divergence, Divergence};
use crate::error::ConfigError;
use crate::init::Init;
use crate::math::{inv_softplus, softplus};
use crate::module::Module;
use crate::params::ParamBuilder;
use crate::prior::Prior;
use crate::rng::SeededRng;
use crate::variational::{PosteriorStats, TestTimeWeight, Variational};
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The default initial posterior standard deviation.
pub const DEFAULT_INIT_STD: f64 = 1e-3;

/// How a mean-field layer's posterior `(μ, ρ)` starts, weights and biases alike; `ρ₀ =
/// softplus⁻¹(init_std)`.
///
/// - `torch` (the default): `μ` as PyTorch initialises the deterministic layer (`U(±1/√fan_in)`,
///   so ±0.05 for a 400-input layer), `ρ = ρ₀` everywhere.
/// - `bayesian-torch`: `μ ~ N(0, 0.1)`, `ρ ~ N(ρ₀, 0.1)`, as bayesian-torch's Reparameterization
///   and Flipout layers (`posterior_mu_init = 0`, `posterior_rho_init = −3` there, with
///   `normal_(·, std = 0.1)`).
/// - `blundell`: `μ ~ U(−0.2, 0.2)`, `ρ ~ U(ρ₀ − ½, ρ₀ + ½)`. Blundell et al. (2015) state no
///   initialisation; this is the one of the widely used re-implementations of Bayes by Backprop
///   (`ρ ~ U(−5, −4)`, i.e. `init_std = softplus(−4.5)`), our choice for the name.
///
/// The `torch` start has a signal-to-noise ratio `|μ|/σ` below 1 for most weights of a wide layer
/// at `init_std ≈ 0.05`; the other two start every weight at `|μ| ≈ 0.08–0.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PosteriorInit {
    /// PyTorch's deterministic `μ`, constant `ρ`.
    #[default]
    Torch,
    /// `μ ~ N(0, 0.1)`, `ρ ~ N(ρ₀, 0.1)`.
    BayesianTorch,
    /// `μ ~ U(−0.2, 0.2)`, `ρ ~ U(ρ₀ − ½, ρ₀ + ½)`.
    Blundell,
}

impl PosteriorInit {
    /// The names, in the order of the variants.
    pub const NAMES: [&'static str; 3] = ["torch", "bayesian-torch", "blundell"];

    /// The initialisers of `μ` and `ρ`, where PyTorch's deterministic `μ` would be `torch_mu`.
    pub fn inits(self, torch_mu: Init, init_std: f64) -> (Init, Init) {
        let rho = inv_softplus(init_std);
        match self {
            PosteriorInit::Torch => (torch_mu, Init::Const(rho)),
            PosteriorInit::BayesianTorch => (
                Init::Normal { mean: 0.0, std: 0.1 },
                Init::Normal { mean: rho, std: 0.1 },
            ),
            PosteriorInit::Blundell => (
                Init::Uniform { lo: -0.2, hi: 0.2 },
                Init::Uniform {
                    lo: rho - 0.5,
                    hi: rho + 0.5,
                },
            ),
        }
    }
}

/// How a mean-field layer sums its divergence over its parameters.
///
/// - `sum` (the default): the divergence of the whole posterior, `Σᵢ D(q(wᵢ) ‖ p(wᵢ))` over every
///   weight and bias: the ELBO's term (Blundell et al. 2015).
/// - `tensor-mean`: each parameter tensor (a layer's weight, its bias) contributes the *mean* of
///   its entries' divergences, as bayesian-torch's `kl_div` returns `kl.mean()`. Not the ELBO:
///   the divergence is divided by each tensor's size (≈ 48,000 for a 400 × 120 layer), so the
///   posterior is pulled far less towards the prior. For reproducing bayesian-torch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KlReduction {
    /// `Σᵢ D(q(wᵢ) ‖ p(wᵢ))`.
    #[default]
    Sum,
    /// Per tensor, the mean over its entries, summed over tensors.
    TensorMean,
}

impl KlReduction {
    /// The names, in the order of the variants.
    pub const NAMES: [&'static str; 2] = ["sum", "tensor-mean"];
}

impl std::str::FromStr for KlReduction {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sum" => Ok(KlReduction::Sum),
            "tensor-mean" => Ok(KlReduction::TensorMean),
            other => Err(format!(
                "KL reduction `{other}` is unknown; known: {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

impl std::str::FromStr for PosteriorInit {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "torch" => Ok(PosteriorInit::Torch),
            "bayesian-torch" => Ok(PosteriorInit::BayesianTorch),
            "blundell" => Ok(PosteriorInit::Blundell),
            other => Err(format!(
                "posterior initialisation `{other}` is unknown; known: {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

fn check_init_std(what: &str, s: f64) -> std::result::Result<(), ConfigError> {
    if s.is_finite() && s > 0.0 {
        Ok(())
    } else {
        Err(ConfigError::invalid(what, "init_std", "finite and > 0", s))
    }
}

/// Configuration of a [`BayesLinear`] layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BayesLinearConfig {
    /// Input features.
    pub in_dim: usize,
    /// Output features.
    pub out_dim: usize,
    /// Whether the layer has a (Gaussian) bias.
    pub bias: bool,
    /// Prior over every weight and bias.
    pub prior: Prior,
    /// Initial posterior standard deviation (> 0).
    pub init_std: f64,
    /// How `(μ, ρ)` start.
    #[serde(default)]
    pub posterior_init: PosteriorInit,
    /// How the divergence sums over the parameters.
    #[serde(default)]
    pub kl_reduction: KlReduction,
}

impl BayesLinearConfig {
    /// With this reduction of the divergence.
    pub fn with_kl_reduction(mut self, r: KlReduction) -> Self {
        self.kl_reduction = r;
        self
    }
    /// `in_dim → out_dim` with bias, prior `N(0, 1)`, `init_std = 1e-3`, PyTorch's `μ`.
    pub fn new(in_dim: usize, out_dim: usize) -> Self {
        Self {
            in_dim,
            out_dim,
            bias: true,
            prior: Prior::default(),
            init_std: DEFAULT_INIT_STD,
            posterior_init: PosteriorInit::Torch,
            kl_reduction: KlReduction::Sum,
        }
    }
    /// With this posterior initialisation.
    pub fn with_posterior_init(mut self, init: PosteriorInit) -> Self {
        self.posterior_init = init;
        self
    }
    /// With or without bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
    /// With this prior.
    pub fn with_prior(mut self, prior: Prior) -> Self {
        self.prior = prior;
        self
    }
    /// With this initial posterior standard deviation.
    pub fn with_init_std(mut self, init_std: f64) -> Self {
        self.init_std = init_std;
        self
    }
    /// Checks the prior and `init_std`.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        self.prior.validate()?;
        check_init_std("bayes linear", self.init_std)
    }
}

/// Creates `{name}_mu` and `{name}_rho` under `pb`.
fn gaussian_param(pb: &ParamBuilder, name: &str, shape: &[usize], (mu, rho): (Init, Init)) -> Result<(Tensor, Tensor)> {
    let m = pb.param(&format!("{name}_mu"), shape, mu)?;
    let r = pb.param(&format!("{name}_rho"), shape, rho)?;
    Ok((m, r))
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// The parameters of a mean-field Gaussian layer, shared by the linear and conv variants.
#[derive(Debug, Clone)]
struct MeanField {
    name: String,
    weight_mu: Tensor,
    weight_rho: Tensor,
    bias: Option<(Tensor, Tensor)>,
    prior: Prior,
    reduction: KlReduction,
}

impl MeanField {
    /// Creates `weight_mu`/`weight_rho` of `weight_shape` and, with `bias`, `bias_mu`/`bias_rho`
    /// of `[weight_shape[0]]` under `pb`, started as `init` says (for `torch`: μ by PyTorch's
    /// default, `U(±1/√fan_in)` for the bias, every ρ at `softplus⁻¹(init_std)`).
    fn create(
        pb: &ParamBuilder,
        weight_shape: &[usize],
        bias: bool,
        (init_std, init): (f64, PosteriorInit),
        prior: Prior,
    ) -> Result<Self> {
        let (weight_mu, weight_rho) =
            gaussian_param(pb, "weight", weight_shape, init.inits(Init::TorchDefault, init_std))?;
        let fan_in: usize = weight_shape[1..].iter().product();
        let bias = if bias {
            Some(gaussian_param(
                pb,
                "bias",
                &weight_shape[..1],
                init.inits(Init::torch_bias(fan_in), init_std),
            )?)
        } else {
            None
        };
        Ok(Self {
            name: pb.prefix().to_string(),
            weight_mu,
            weight_rho,
            bias,
            prior,
            reduction: KlReduction::Sum,
        })
    }

    fn sigmas(&self) -> Result<(Tensor, Option<Tensor>)> {
        let ws = softplus(&self.weight_rho)?;
        let bs = match &self.bias {
            Some((_, r)) => Some(softplus(r)?),
            None => None,
        };
        Ok((ws, bs))
    }

    fn divergence(&self, how: &Divergence, rng: &mut SeededRng) -> Result<Tensor> {
        let (ws, bs) = self.sigmas()?;
        // `tensor-mean`: each tensor's divergence over its number of entries (bayesian-torch)
        let per = |d: Tensor, t: &Tensor| match self.reduction {
            KlReduction::Sum => Ok(d),
            KlReduction::TensorMean => d / t.elem_count() as f64,
        };
        let mut d = per(
            gaussian_divergence(how, &self.weight_mu, &ws, &self.prior, rng)?,
            &self.weight_mu,
        )?;
        if let (Some((bm, _)), Some(bs)) = (&self.bias, bs) {
            d = (d + per(gaussian_divergence(how, bm, &bs, &self.prior, rng)?, bm)?)?;
        }
        Ok(d)
    }

    fn stats(&self) -> Result<Vec<PosteriorStats>> {
        let one = |name: &str, mu: &Tensor, rho: &Tensor| -> Result<PosteriorStats> {
            let mu = mu.detach();
            let sigma = softplus(&rho.detach())?;
            // log α = log σ² − log μ² (the 1e-16 keeps μ = 0 finite)
            let log_alpha = (sigma.sqr()?.log()? - (mu.sqr()? + 1e-16)?.log()?)?;
            Ok(PosteriorStats {
                name: join(&self.name, name),
                mean: mu,
                std: Some(sigma),
                log_alpha: Some(log_alpha),
                inclusion: None,
            })
        };
        let mut v = vec![one("weight", &self.weight_mu, &self.weight_rho)?];
        if let Some((m, r)) = &self.bias {
            v.push(one("bias", m, r)?);
        }
        Ok(v)
    }
}

/// A mean-field Gaussian fully connected layer (Blundell et al. 2015): `y = x Wᵀ + b` with
/// `W ~ N(μ_W, softplus(ρ_W)²)`, `b ~ N(μ_b, softplus(ρ_b)²)`; the estimator is chosen by
/// `ctx.sampling`.
///
/// ```
/// use secateur_bayes::{Ctx, Module, ParamBuilder, ParamStore, Sampling, SeededRng};
/// use secateur_bayes::layers::{BayesLinear, BayesLinearConfig};
/// use secateur_bayes::divergence::Divergence;
/// use candle_core::{DType, Device, Tensor};
/// let store = ParamStore::new();
/// let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
/// let fc: Box<dyn Module> = Box::new(BayesLinear::new(&pb.pp("fc1"), BayesLinearConfig::new(4, 2)).unwrap());
/// let mut rng = SeededRng::new(1);
/// let y = fc.forward(&Tensor::ones((3, 4), DType::F32, &Device::Cpu).unwrap(), &mut Ctx::train(&mut rng, Sampling::Local)).unwrap();
/// assert_eq!(y.dims(), &[3, 2]);
/// assert!(store.get("fc1.weight_rho").is_some());
/// let (kl, per_layer) = store.divergence(&Divergence::Kl, &mut rng).unwrap();
/// assert!(kl.to_scalar::<f32>().unwrap() > 0.0 && per_layer.contains_key("fc1"));
/// ```
#[derive(Debug, Clone)]
pub struct BayesLinear {
    inner: MeanField,
}

impl BayesLinear {
    /// Creates `weight_mu`, `weight_rho` (`[out, in]`) and, with bias, `bias_mu`, `bias_rho`
    /// (`[out]`) under `pb`, and registers the layer as [`Variational`] under `pb`'s path (the
    /// registered copy shares the parameter storage with the returned layer).
    pub fn new(pb: &ParamBuilder, cfg: BayesLinearConfig) -> Result<Self> {
        cfg.validate()?;
        let layer = Self {
            inner: MeanField {
                reduction: cfg.kl_reduction,
                ..MeanField::create(
                    pb,
                    &[cfg.out_dim, cfg.in_dim],
                    cfg.bias,
                    (cfg.init_std, cfg.posterior_init),
                    cfg.prior,
                )?
            },
        };
        pb.register_variational(Arc::new(layer.clone()))?;
        Ok(layer)
    }

    /// A layer from existing tensors (tests, loading); not registered anywhere. `name` is the
    /// layer's path, used in its posterior statistics.
    pub fn from_tensors(
        name: impl Into<String>,
        weight_mu: Tensor,
        weight_rho: Tensor,
        bias: Option<(Tensor, Tensor)>,
        prior: Prior,
    ) -> Result<Self> {
        prior.validate()?;
        Ok(Self {
            inner: MeanField {
                name: name.into(),
                weight_mu,
                weight_rho,
                bias,
                prior,
                reduction: KlReduction::Sum,
            },
        })
    }

    /// Weight posterior mean μ.
    pub fn weight_mu(&self) -> &Tensor {
        &self.inner.weight_mu
    }
    /// Weight posterior ρ (σ = softplus(ρ)).
    pub fn weight_rho(&self) -> &Tensor {
        &self.inner.weight_rho
    }
    /// Bias posterior (μ, ρ), if the layer has a bias.
    pub fn bias(&self) -> Option<&(Tensor, Tensor)> {
        self.inner.bias.as_ref()
    }
    /// The prior.
    pub fn prior(&self) -> &Prior {
        &self.inner.prior
    }
}

impl Module for BayesLinear {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let (ws, bs) = self.inner.sigmas()?;
        let w = GaussianWeights {
            mu: &self.inner.weight_mu,
            sigma: &ws,
            bias_mu: self.inner.bias.as_ref().map(|b| &b.0),
            bias_sigma: bs.as_ref(),
        };
        gaussian_linear(x, w, ctx)
    }
}

impl Variational for BayesLinear {
    fn divergence(&self, how: &Divergence, rng: &mut SeededRng) -> Result<Tensor> {
        self.inner.divergence(how, rng)
    }
    fn posterior_stats(&self) -> Result<Vec<PosteriorStats>> {
        self.inner.stats()
    }

    fn test_time_weights(&self) -> Result<Vec<TestTimeWeight>> {
        self.inner.test_time_weights()
    }
}

/// Configuration of a [`BayesConv2d`] layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BayesConv2dConfig {
    /// Input channels.
    pub in_ch: usize,
    /// Output channels.
    pub out_ch: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride, padding, dilation, groups.
    pub geom: Conv2dGeom,
    /// Whether the layer has a (Gaussian) bias.
    pub bias: bool,
    /// Prior over every weight and bias.
    pub prior: Prior,
    /// Initial posterior standard deviation (> 0).
    pub init_std: f64,
    /// How `(μ, ρ)` start.
    #[serde(default)]
    pub posterior_init: PosteriorInit,
    /// How the divergence sums over the parameters.
    #[serde(default)]
    pub kl_reduction: KlReduction,
}

impl BayesConv2dConfig {
    /// With this reduction of the divergence.
    pub fn with_kl_reduction(mut self, r: KlReduction) -> Self {
        self.kl_reduction = r;
        self
    }
    /// With this posterior initialisation.
    pub fn with_posterior_init(mut self, init: PosteriorInit) -> Self {
        self.posterior_init = init;
        self
    }
    /// A `kernel × kernel` convolution, stride 1, no padding, with bias, prior `N(0, 1)`,
    /// `init_std = 1e-3`.
    pub fn new(in_ch: usize, out_ch: usize, kernel: usize) -> Self {
        Self {
            in_ch,
            out_ch,
            kernel,
            geom: Conv2dGeom::default(),
            bias: true,
            prior: Prior::default(),
            init_std: DEFAULT_INIT_STD,
            posterior_init: PosteriorInit::Torch,
            kl_reduction: KlReduction::Sum,
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
    /// With this prior.
    pub fn with_prior(mut self, prior: Prior) -> Self {
        self.prior = prior;
        self
    }
    /// With this initial posterior standard deviation.
    pub fn with_init_std(mut self, init_std: f64) -> Self {
        self.init_std = init_std;
        self
    }
    /// Checks the prior, `init_std` and the geometry.
    pub fn validate(&self) -> Result<()> {
        self.prior.validate()?;
        check_init_std("bayes conv2d", self.init_std)?;
        if self.kernel == 0 {
            candle_core::bail!("bayes conv2d: kernel must be ≥ 1");
        }
        self.geom.check("bayes conv2d", self.in_ch, self.out_ch)
    }
}

/// A mean-field Gaussian 2-D convolution (Blundell et al. 2015); the local reparameterisation
/// uses a mean and a variance convolution ([`lrt_conv`](super::lrt_conv)), Flipout sign vectors
/// per example and channel.
#[derive(Debug, Clone)]
pub struct BayesConv2d {
    inner: MeanField,
    geom: Conv2dGeom,
}

impl BayesConv2d {
    /// Creates `weight_mu`, `weight_rho` (`[out, in/groups, k, k]`) and, with bias, `bias_mu`,
    /// `bias_rho` (`[out]`) under `pb`, and registers the layer under `pb`'s path.
    pub fn new(pb: &ParamBuilder, cfg: BayesConv2dConfig) -> Result<Self> {
        cfg.validate()?;
        let shape = [cfg.out_ch, cfg.in_ch / cfg.geom.groups, cfg.kernel, cfg.kernel];
        let inner = MeanField {
            reduction: cfg.kl_reduction,
            ..MeanField::create(pb, &shape, cfg.bias, (cfg.init_std, cfg.posterior_init), cfg.prior)?
        };
        let layer = Self { inner, geom: cfg.geom };
        pb.register_variational(Arc::new(layer.clone()))?;
        Ok(layer)
    }

    /// A layer from existing tensors (tests, loading); not registered anywhere.
    pub fn from_tensors(
        name: impl Into<String>,
        weight_mu: Tensor,
        weight_rho: Tensor,
        bias: Option<(Tensor, Tensor)>,
        prior: Prior,
        geom: Conv2dGeom,
    ) -> Result<Self> {
        prior.validate()?;
        let (o, ci, _, _) = weight_mu.dims4()?;
        geom.check("bayes conv2d", ci * geom.groups, o)?;
        Ok(Self {
            inner: MeanField {
                name: name.into(),
                weight_mu,
                weight_rho,
                bias,
                prior,
                reduction: KlReduction::Sum,
            },
            geom,
        })
    }

    /// Weight posterior mean μ.
    pub fn weight_mu(&self) -> &Tensor {
        &self.inner.weight_mu
    }
    /// Weight posterior ρ (σ = softplus(ρ)).
    pub fn weight_rho(&self) -> &Tensor {
        &self.inner.weight_rho
    }
    /// Bias posterior (μ, ρ), if the layer has a bias.
    pub fn bias(&self) -> Option<&(Tensor, Tensor)> {
        self.inner.bias.as_ref()
    }
    /// The prior.
    pub fn prior(&self) -> &Prior {
        &self.inner.prior
    }
    /// The convolution geometry.
    pub fn geom(&self) -> Conv2dGeom {
        self.geom
    }
}

impl Module for BayesConv2d {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let (ws, bs) = self.inner.sigmas()?;
        let w = GaussianWeights {
            mu: &self.inner.weight_mu,
            sigma: &ws,
            bias_mu: self.inner.bias.as_ref().map(|b| &b.0),
            bias_sigma: bs.as_ref(),
        };
        gaussian_conv2d(x, w, self.geom, ctx)
    }
}

impl Variational for BayesConv2d {
    fn divergence(&self, how: &Divergence, rng: &mut SeededRng) -> Result<Tensor> {
        self.inner.divergence(how, rng)
    }
    fn posterior_stats(&self) -> Result<Vec<PosteriorStats>> {
        self.inner.stats()
    }

    fn test_time_weights(&self) -> Result<Vec<TestTimeWeight>> {
        self.inner.test_time_weights()
    }
}

impl MeanField {
    /// The posterior means stand for the weights and biases at test time; every entry is kept.
    fn test_time_weights(&self) -> Result<Vec<TestTimeWeight>> {
        let mut v = vec![TestTimeWeight::all(join(&self.name, "weight_mu"))];
        if self.bias.is_some() {
            v.push(TestTimeWeight::all(join(&self.name, "bias_mu")));
        }
        Ok(v)
    }
}
