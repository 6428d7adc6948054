//! Bayesian layer factories: every architecture of [`crate::arch`] built with probabilistic
//! layers from `secateur-bayes` instead of deterministic ones.
//!
//! | config name | factory | layers | reference |
//! |---|---|---|---|
//! | `deterministic` | [`Deterministic`] | [`crate::layers::Linear`], [`crate::layers::Conv2d`] | — |
//! | `mean-field` | [`MeanField`] | [`BayesLinear`], [`BayesConv2d`] | Blundell et al. 2015 |
//! | `sparse-vd` | [`SparseVd`] | [`SvdLinear`], [`SvdConv2d`] | Molchanov, Ashukha & Vetrov 2017 |
//! | `mc-dropout` | [`McDropoutFactory`] | dropout, then the deterministic layer | Gal & Ghahramani 2016 |
//! | `gsm-gates` | [`GsmGates`] | [`GateLinear`], [`GateConv2d`] (a Bernoulli gate per input unit/channel) | Guenter & Sideris 2022 |
//!
//! [`factory`] maps a config name to a boxed factory. The probabilistic layers register
//! themselves (under the layer's path, e.g. `features.0`) in the [`ParamBuilder`]'s store, so the
//! ELBO reaches their divergences through
//! [`ParamStore::divergence`](secateur_bayes::ParamStore::divergence) and pruning their posterior
//! statistics through [`ParamStore::posterior_stats`](secateur_bayes::ParamStore::posterior_stats),
//! whatever the architecture.
//!
//! Decisions:
//! - The posterior means are initialised as PyTorch initialises `nn.Linear`/`nn.Conv2d`
//!   (`U(±1/√fan_in)`), whatever initialiser the architecture asks of the deterministic factory
//!   ([`LinearCfg::init`], [`Conv2dCfg::init`]): the probabilistic layers own their
//!   initialisation (`softplus(ρ) = init_std`, `log σ² = −10`).
//! - Strided, padded, dilated and grouped convolutions are all supported (the estimators of
//!   `secateur-bayes` take the whole [`Conv2dGeom`]); an impossible geometry is refused by the
//!   layer with the layer's path in the message.

use crate::factory::{Conv2dCfg, Deterministic, LayerFactory, LinearCfg};
use crate::layers::{Conv2d, Linear};
use candle_core::{Result, Tensor};
use secateur_bayes::layers::gsm_gates::{DEFAULT_GATE_THRESHOLD, DEFAULT_INIT_INCLUSION, DEFAULT_LR_SCALE};
use secateur_bayes::layers::mean_field::DEFAULT_INIT_STD;
use secateur_bayes::layers::sparse_vd::DEFAULT_THRESHOLD;
use secateur_bayes::layers::{
    BayesConv2d, BayesConv2dConfig, BayesLinear, BayesLinearConfig, Conv2dGeom, GateConv2d, GateConv2dConfig,
    GateLinear, GateLinearConfig, GsmGatePrior, McDropout, SvdConv2d, SvdConv2dConfig, SvdLinear, SvdLinearConfig,
};
use secateur_bayes::{Ctx, Module, ParamBuilder, Prior};

/// The layer-kind names [`factory`] accepts (the values of the config key `model.layers`).
pub const LAYER_KINDS: &[&str] = &["deterministic", "mean-field", "sparse-vd", "mc-dropout", "gsm-gates"];

/// Whether a layer kind is Bayesian: trained with noise and evaluated by Monte Carlo averaging.
pub fn is_bayesian(layers: &str) -> bool {
    matches!(layers, "mean-field" | "sparse-vd" | "mc-dropout" | "gsm-gates")
}

/// Options of the Bayesian factories, with the defaults of their layers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FactoryOptions {
    /// Prior of the mean-field layers. Default `N(0, 1)`.
    pub prior: Prior,
    /// Initial posterior standard deviation of the mean-field layers. Default `1e-3`.
    pub init_std: f64,
    /// Test-time threshold on `log α` of the sparse-VD layers. Default 3.
    pub sparse_vd_threshold: f64,
    /// Drop probability of MC dropout. Default 0.1.
    pub dropout: f64,
    /// GSM prior and hyper-prior of the gated layers. Default shape 1, scale 1, unit cost 0.
    pub gate_prior: GsmGatePrior,
    /// Initial inclusion probability of every gate. Default 0.9.
    pub gate_init_inclusion: f64,
    /// Test-time threshold on the inclusion probability. Default ½.
    pub gate_threshold: f64,
    /// Step-size multiplier κ of the gates (`θ = clamp(κ · gate_theta, 0, 1)`). Default 1.
    pub gate_lr_scale: f64,
}

impl Default for FactoryOptions {
    fn default() -> Self {
        Self {
            prior: Prior::default(),
            init_std: DEFAULT_INIT_STD,
            sparse_vd_threshold: DEFAULT_THRESHOLD,
            dropout: 0.1,
            gate_prior: GsmGatePrior::default(),
            gate_init_inclusion: DEFAULT_INIT_INCLUSION,
            gate_threshold: DEFAULT_GATE_THRESHOLD,
            gate_lr_scale: DEFAULT_LR_SCALE,
        }
    }
}

/// The factory of the layer kind `layers` (one of [`LAYER_KINDS`]); an unknown name is refused
/// with the list of known ones, and invalid options with the field that is wrong.
///
/// ```
/// use secateur_models::bayes_factory::{factory, FactoryOptions};
/// assert_eq!(factory("sparse-vd", &FactoryOptions::default()).unwrap().name(), "sparse-vd");
/// let e = factory("gaussian-process", &FactoryOptions::default()).err().unwrap().to_string();
/// assert!(e.contains("mean-field") && e.contains("gaussian-process"));
/// ```
pub fn factory(layers: &str, opts: &FactoryOptions) -> Result<Box<dyn LayerFactory>> {
    Ok(match layers {
        "deterministic" => Box::new(Deterministic),
        "mean-field" => Box::new(MeanField::new(opts.prior, opts.init_std)?),
        "sparse-vd" => Box::new(SparseVd::new(opts.sparse_vd_threshold)?),
        "mc-dropout" => Box::new(McDropoutFactory::new(opts.dropout)?),
        "gsm-gates" => Box::new(
            GsmGates::new(opts.gate_prior, opts.gate_init_inclusion, opts.gate_threshold)?
                .with_lr_scale(opts.gate_lr_scale)?,
        ),
        other => candle_core::bail!("unknown layer kind `{other}`; known: {}", LAYER_KINDS.join(", ")),
    })
}

fn geom(cfg: &Conv2dCfg) -> Conv2dGeom {
    Conv2dGeom {
        stride: cfg.stride,
        padding: cfg.padding,
        dilation: cfg.dilation,
        groups: cfg.groups,
    }
}

fn at(pb: &ParamBuilder, e: candle_core::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("layer `{}`: {e}", pb.prefix()))
}

/// Mean-field Gaussian layers (Blundell et al. 2015): every weight and bias
/// `w ~ N(μ, softplus(ρ)²)`, prior `prior`, `softplus(ρ) = init_std` initially. Parameters
/// `{path}.weight_mu`, `{path}.weight_rho`, `{path}.bias_mu`, `{path}.bias_rho`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanField {
    /// Prior over every weight and bias.
    pub prior: Prior,
    /// Initial posterior standard deviation (> 0).
    pub init_std: f64,
}

impl MeanField {
    /// Checks the prior and `init_std > 0`.
    pub fn new(prior: Prior, init_std: f64) -> Result<Self> {
        BayesLinearConfig::new(1, 1)
            .with_prior(prior)
            .with_init_std(init_std)
            .validate()?;
        Ok(Self { prior, init_std })
    }
}

impl Default for MeanField {
    /// Prior `N(0, 1)`, `init_std = 1e-3`.
    fn default() -> Self {
        Self {
            prior: Prior::default(),
            init_std: DEFAULT_INIT_STD,
        }
    }
}

impl LayerFactory for MeanField {
    fn name(&self) -> &str {
        "mean-field"
    }
    fn linear(&self, pb: &ParamBuilder, cfg: LinearCfg) -> Result<Box<dyn Module>> {
        let c = BayesLinearConfig::new(cfg.in_dim, cfg.out_dim)
            .with_bias(cfg.bias)
            .with_prior(self.prior)
            .with_init_std(self.init_std);
        Ok(Box::new(BayesLinear::new(pb, c).map_err(|e| at(pb, e))?))
    }
    fn conv2d(&self, pb: &ParamBuilder, cfg: Conv2dCfg) -> Result<Box<dyn Module>> {
        let c = BayesConv2dConfig::new(cfg.in_ch, cfg.out_ch, cfg.kernel)
            .with_geom(geom(&cfg))
            .with_bias(cfg.bias)
            .with_prior(self.prior)
            .with_init_std(self.init_std);
        Ok(Box::new(BayesConv2d::new(pb, c).map_err(|e| at(pb, e))?))
    }
}

/// Sparse variational dropout layers (Molchanov, Ashukha & Vetrov 2017): `w = θ + σ ε`,
/// log-uniform prior, weights with `log α ≥ threshold` zero at test time. Parameters
/// `{path}.weight_mu` (θ), `{path}.weight_log_sigma2`, `{path}.bias` (deterministic).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseVd {
    /// Test-time threshold on `log α` (finite; the paper uses 3).
    pub threshold: f64,
}

impl SparseVd {
    /// Checks that the threshold is finite.
    pub fn new(threshold: f64) -> Result<Self> {
        SvdLinearConfig::new(1, 1).with_threshold(threshold).validate()?;
        Ok(Self { threshold })
    }
}

impl Default for SparseVd {
    /// Threshold 3.
    fn default() -> Self {
        Self {
            threshold: DEFAULT_THRESHOLD,
        }
    }
}

impl LayerFactory for SparseVd {
    fn name(&self) -> &str {
        "sparse-vd"
    }
    fn linear(&self, pb: &ParamBuilder, cfg: LinearCfg) -> Result<Box<dyn Module>> {
        let c = SvdLinearConfig::new(cfg.in_dim, cfg.out_dim)
            .with_bias(cfg.bias)
            .with_threshold(self.threshold);
        Ok(Box::new(SvdLinear::new(pb, c).map_err(|e| at(pb, e))?))
    }
    fn conv2d(&self, pb: &ParamBuilder, cfg: Conv2dCfg) -> Result<Box<dyn Module>> {
        let c = SvdConv2dConfig::new(cfg.in_ch, cfg.out_ch, cfg.kernel)
            .with_geom(geom(&cfg))
            .with_bias(cfg.bias)
            .with_threshold(self.threshold);
        Ok(Box::new(SvdConv2d::new(pb, c).map_err(|e| at(pb, e))?))
    }
}

/// MC dropout (Gal & Ghahramani 2016): inverted dropout with probability `p` on the **input** of
/// every weight layer made by the factory, followed by the deterministic layer (so parameter
/// names are exactly the deterministic ones). The mask is drawn whenever `ctx.sampling` is not
/// `Sampling::Mean`, in training and at prediction time alike; nothing is registered as
/// variational (the KL of the Gaussian-process view is weight decay, set in the optimiser).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct McDropoutFactory {
    /// Drop probability in `[0, 1)`.
    pub p: f64,
}

impl McDropoutFactory {
    /// Refuses `p ∉ [0, 1)`.
    pub fn new(p: f64) -> Result<Self> {
        McDropout::new(p)?;
        Ok(Self { p })
    }
}

/// Dropout, then a layer.
struct DropThen {
    drop: McDropout,
    layer: Box<dyn Module>,
}

impl Module for DropThen {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let x = self.drop.forward(x, ctx)?;
        self.layer.forward(&x, ctx)
    }
}

impl LayerFactory for McDropoutFactory {
    fn name(&self) -> &str {
        "mc-dropout"
    }
    fn linear(&self, pb: &ParamBuilder, cfg: LinearCfg) -> Result<Box<dyn Module>> {
        Ok(Box::new(DropThen {
            drop: McDropout::new(self.p)?,
            layer: Box::new(Linear::new(pb, cfg)?),
        }))
    }
    fn conv2d(&self, pb: &ParamBuilder, cfg: Conv2dCfg) -> Result<Box<dyn Module>> {
        Ok(Box::new(DropThen {
            drop: McDropout::new(self.p)?,
            layer: Box::new(Conv2d::new(pb, cfg)?),
        }))
    }
}

/// Bernoulli gates with a Gaussian scale-mixture prior and a hyper-prior (Guenter & Sideris
/// 2022): every layer gates its **inputs** (one gate per input unit of a linear layer, per input
/// channel of a convolution), so every hidden unit and filter is gated once and the classifier's
/// outputs never are (the network's own inputs are gated too). Weights are point estimates.
/// Parameters `{path}.weight_mu`, `{path}.bias` (deterministic), `{path}.gate_theta` (θ, projected onto [0, 1]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GsmGates {
    /// GSM prior with its hyper-prior.
    pub prior: GsmGatePrior,
    /// Initial inclusion probability θ₀ ∈ (0, 1).
    pub init_inclusion: f64,
    /// Test-time threshold ∈ (0, 1) on θ.
    pub threshold: f64,
    /// Step-size multiplier κ > 0 of the gates.
    pub lr_scale: f64,
}

impl GsmGates {
    /// Checks the prior, θ₀ and the threshold (the error names the field).
    pub fn new(prior: GsmGatePrior, init_inclusion: f64, threshold: f64) -> Result<Self> {
        GateLinearConfig::new(1, 1)
            .with_prior(prior)
            .with_init_inclusion(init_inclusion)
            .with_threshold(threshold)
            .validate()?;
        Ok(Self {
            prior,
            init_inclusion,
            threshold,
            lr_scale: DEFAULT_LR_SCALE,
        })
    }

    /// With this step-size multiplier κ of the gates (checked: finite and > 0).
    pub fn with_lr_scale(mut self, k: f64) -> Result<Self> {
        GateLinearConfig::new(1, 1).with_lr_scale(k).validate()?;
        self.lr_scale = k;
        Ok(self)
    }
}

impl Default for GsmGates {
    /// The default prior (shape 1, scale 1, unit cost 0), θ₀ = 0.9, threshold ½.
    fn default() -> Self {
        Self {
            prior: GsmGatePrior::default(),
            init_inclusion: DEFAULT_INIT_INCLUSION,
            threshold: DEFAULT_GATE_THRESHOLD,
            lr_scale: DEFAULT_LR_SCALE,
        }
    }
}

impl LayerFactory for GsmGates {
    fn name(&self) -> &str {
        "gsm-gates"
    }
    fn linear(&self, pb: &ParamBuilder, cfg: LinearCfg) -> Result<Box<dyn Module>> {
        let c = GateLinearConfig::new(cfg.in_dim, cfg.out_dim)
            .with_bias(cfg.bias)
            .with_prior(self.prior)
            .with_init_inclusion(self.init_inclusion)
            .with_threshold(self.threshold)
            .with_lr_scale(self.lr_scale);
        Ok(Box::new(GateLinear::new(pb, c).map_err(|e| at(pb, e))?))
    }
    fn conv2d(&self, pb: &ParamBuilder, cfg: Conv2dCfg) -> Result<Box<dyn Module>> {
        let c = GateConv2dConfig::new(cfg.in_ch, cfg.out_ch, cfg.kernel)
            .with_geom(geom(&cfg))
            .with_bias(cfg.bias)
            .with_prior(self.prior)
            .with_init_inclusion(self.init_inclusion)
            .with_threshold(self.threshold)
            .with_lr_scale(self.lr_scale);
        Ok(Box::new(GateConv2d::new(pb, c).map_err(|e| at(pb, e))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_kinds_and_bad_options_are_refused_by_name() {
        let o = FactoryOptions::default();
        for k in LAYER_KINDS {
            assert_eq!(factory(k, &o).unwrap().name(), *k);
        }
        let e = factory("gaussian-process", &o).err().unwrap().to_string();
        assert!(e.contains("gaussian-process") && e.contains("sparse-vd"), "{e}");
        let bad = FactoryOptions { init_std: 0.0, ..o };
        let e = factory("mean-field", &bad).err().unwrap().to_string();
        assert!(e.contains("init_std"), "{e}");
        let bad = FactoryOptions {
            sparse_vd_threshold: f64::NAN,
            ..o
        };
        assert!(factory("sparse-vd", &bad)
            .err()
            .unwrap()
            .to_string()
            .contains("threshold"));
        let bad = FactoryOptions { dropout: 1.0, ..o };
        assert!(factory("mc-dropout", &bad).err().unwrap().to_string().contains("`p`"));
        let bad = FactoryOptions {
            gate_threshold: 1.0,
            ..o
        };
        assert!(factory("gsm-gates", &bad)
            .err()
            .unwrap()
            .to_string()
            .contains("threshold"));
        let bad = FactoryOptions {
            gate_prior: GsmGatePrior {
                scale: 0.0,
                ..GsmGatePrior::default()
            },
            ..o
        };
        assert!(factory("gsm-gates", &bad).err().unwrap().to_string().contains("scale"));
    }
}
