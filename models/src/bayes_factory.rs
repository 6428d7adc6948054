//! Bayesian layer factories: every architecture of [`crate::arch`] built with probabilistic
//! layers from `secateur-bayes` instead of deterministic ones.
//!
//! | config name | factory | layers | reference |
//! |---|---|---|---|
//! | `deterministic` | [`Deterministic`](crate::factory::Deterministic) | [`secateur_bayes::nn::Linear`], [`secateur_bayes::nn::Conv2d`] | — |
//! | `mean-field` | [`MeanField`] | [`BayesLinear`], [`BayesConv2d`] | Blundell et al. 2015 |
//! | `sparse-vd` | [`SparseVd`] | [`SvdLinear`], [`SvdConv2d`] | Molchanov, Ashukha & Vetrov 2017 |
//! | `variational-dropout` | [`VariationalDropout`] | [`VdLinear`], [`VdConv2d`] | Kingma, Salimans & Welling 2015 |
//! | `mc-dropout` | [`McDropoutFactory`] | dropout, then the deterministic layer | Gal & Ghahramani 2016 |
//! | `spike-slab` | [`SpikeSlab`] | [`SpikeSlabLinear`], [`SpikeSlabConv2d`] (node selection; none in the classifier) | Jantre, Bhattacharya & Maiti 2021 |
//! | `nested-dropout` | [`NestedDropoutFactory`] | ordered dropout on the input units, then the deterministic layer | Rippel, Gelbart & Adams 2014 |
//! | `variational-nested-dropout` | [`NestedDropoutFactory`] | learned ordered masks on the input units, then the deterministic layer | Cui et al. 2021 |
//! | `gsm-gates` | [`GsmGates`] | [`GateLinear`], [`GateConv2d`] (a Bernoulli gate per input unit/channel) | Guenter & Sideris 2022 |
//!
//! [`crate::kind::LAYER_KINDS`] maps a config name to its factory and what else the kind
//! declares. The probabilistic layers register
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
//!   initialisation (`softplus(ρ) = init_std`, `log σ² = −10`, `log α = vd_init_log_alpha`).
//! - Nested dropout orders the **input** units (features, or channels of a 4-D input) of every
//!   weight layer except the first one the factory makes (the one reading the network input, so
//!   pixels and image channels are never truncated). For the hidden layers this is the ordering
//!   of the previous layer's outputs that Cui et al. 2021 learn ("ordering the network components
//!   (e.g., convolution channels)"), and it never truncates the classifier's outputs; since the
//!   masks are non-negative per unit they commute with ReLU and max pooling, so on LeNet-5 and
//!   the MLP it is exactly a mask on the hidden layers' outputs. A layer that reads a flattened
//!   feature map (LeNet-5's `fc1`) orders its flattened features (channel-major, so widths that
//!   are multiples of `1/C` keep whole channels). Evaluated with `ctx.width = Some(w)` the
//!   network is the sub-network whose hidden layers keep their first `⌈w · units⌉` inputs.
//! - Strided, padded, dilated and grouped convolutions are all supported (the estimators of
//!   `secateur-bayes` take the whole [`Conv2dGeom`]); an impossible geometry is refused by the
//!   layer with the layer's path in the message.

use crate::factory::LayerFactory;
use candle_core::{Result, Tensor};
use secateur_bayes::layers::gsm_gates::{DEFAULT_GATE_THRESHOLD, DEFAULT_INIT_INCLUSION, DEFAULT_LR_SCALE};
use secateur_bayes::layers::mean_field::DEFAULT_INIT_STD;
use secateur_bayes::layers::sparse_vd::DEFAULT_THRESHOLD;
use secateur_bayes::layers::variational_dropout::DEFAULT_INIT_LOG_ALPHA;
use secateur_bayes::layers::{nested_dropout, spike_slab};
use secateur_bayes::layers::{
    BayesConv2d, BayesConv2dConfig, BayesLinear, BayesLinearConfig, Conv2dGeom, GateConv2d, GateConv2dConfig,
    GateLinear, GateLinearConfig, GsmGatePrior, KlReduction, McDropout, NestedDropout, PosteriorInit, SpikeSlabConv2d,
    SpikeSlabConv2dConfig, SpikeSlabLinear, SpikeSlabLinearConfig, SvdConv2d, SvdConv2dConfig, SvdLinear,
    SvdLinearConfig, VariationalNestedDropout, VariationalNestedDropoutConfig, VdConv2d, VdConv2dConfig, VdGranularity,
    VdLinear, VdLinearConfig,
};
use secateur_bayes::nn::{Conv2d, Linear};
use secateur_bayes::nn::{Conv2dCfg, LinearCfg};
use secateur_bayes::{Ctx, Module, ParamBuilder, Prior};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Options of the Bayesian factories, with the defaults of their layers.
#[derive(Debug, Clone, PartialEq)]
pub struct FactoryOptions {
    /// Prior of the mean-field layers. Default `N(0, 1)`.
    pub prior: Prior,
    /// Initial posterior standard deviation of the mean-field layers. Default `1e-3`.
    pub init_std: f64,
    /// How the mean-field layers' `(μ, ρ)` start. Default `torch`.
    pub posterior_init: PosteriorInit,
    /// How the mean-field layers sum their divergence. Default `sum` (the ELBO's).
    pub kl_reduction: KlReduction,
    /// Test-time threshold on `log α` of the sparse-VD layers. Default 3.
    pub sparse_vd_threshold: f64,
    /// Drop probability of MC dropout. Default 0.1.
    pub dropout: f64,
    /// Variational dropout: α per weight or per input unit. Default per weight.
    pub vd_granularity: VdGranularity,
    /// Variational dropout: initial `log α`, in `[−8, 0]`. Default −2.
    pub vd_init_log_alpha: f64,
    /// Prior of the spike-and-slab layers (must be `spike-and-slab`, `pi` = λ < 1). Default
    /// `λ = 1e-4`, `slab_std = 1` (the reference code's defaults). The slab's initial posterior
    /// standard deviation is `init_std`.
    pub spike_slab_prior: Prior,
    /// Initial inclusion probability γ of the spike-and-slab nodes. Default 0.99.
    pub spike_slab_init_inclusion: f64,
    /// Temperature of the relaxed inclusion variables. Default 0.5.
    pub spike_slab_temperature: f64,
    /// Prior inclusion probability λ of each spike-and-slab layer in the order the architecture
    /// makes them (forward order), overriding `spike_slab_prior`'s `pi` for those layers (e.g.
    /// `secateur_bayes::layers::spike_slab::layerwise_inclusion`); empty (the default): `pi`
    /// for every layer.
    pub spike_slab_layer_inclusion: Vec<f64>,
    /// Geometric parameter p of nested dropout (per unit: unit k is kept with probability
    /// `(1 − p)^{k−1}`), and of the prior of variational nested dropout. Default 0.01.
    pub nested_dropout_p: f64,
    /// Temperature of the Downhill relaxation of variational nested dropout. Default 0.5.
    pub nested_temperature: f64,
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
            posterior_init: PosteriorInit::Torch,
            kl_reduction: KlReduction::Sum,
            sparse_vd_threshold: DEFAULT_THRESHOLD,
            dropout: 0.1,
            vd_granularity: VdGranularity::Weight,
            vd_init_log_alpha: DEFAULT_INIT_LOG_ALPHA,
            spike_slab_prior: spike_slab::default_prior(),
            spike_slab_init_inclusion: spike_slab::DEFAULT_INIT_INCLUSION,
            spike_slab_temperature: spike_slab::DEFAULT_TEMPERATURE,
            spike_slab_layer_inclusion: Vec::new(),
            nested_dropout_p: nested_dropout::DEFAULT_P,
            nested_temperature: nested_dropout::DEFAULT_TEMPERATURE,
            gate_prior: GsmGatePrior::default(),
            gate_init_inclusion: DEFAULT_INIT_INCLUSION,
            gate_threshold: DEFAULT_GATE_THRESHOLD,
            gate_lr_scale: DEFAULT_LR_SCALE,
        }
    }
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
/// `w ~ N(μ, softplus(ρ)²)`, prior `prior` (or, per layer, the prior `layer_priors` gives for the
/// layer's path, e.g. a tighter prior on `fc3`), `softplus(ρ) = init_std` initially. Parameters
/// `{path}.weight_mu`, `{path}.weight_rho`, `{path}.bias_mu`, `{path}.bias_rho`.
#[derive(Debug, Clone, PartialEq)]
pub struct MeanField {
    /// Prior over every weight and bias of the layers without their own.
    pub prior: Prior,
    /// Initial posterior standard deviation (> 0).
    pub init_std: f64,
    /// How `(μ, ρ)` start (`secateur_bayes::layers::PosteriorInit`).
    pub posterior_init: PosteriorInit,
    /// How the divergence sums over the parameters (`secateur_bayes::layers::KlReduction`).
    pub kl_reduction: KlReduction,
    /// Priors by layer path (`features.0`, `fc1`): the prior of that layer's weights and bias.
    pub layer_priors: BTreeMap<String, Prior>,
}

impl MeanField {
    /// Checks the prior and `init_std > 0`.
    pub fn new(prior: Prior, init_std: f64) -> Result<Self> {
        BayesLinearConfig::new(1, 1)
            .with_prior(prior)
            .with_init_std(init_std)
            .validate()?;
        Ok(Self {
            prior,
            init_std,
            posterior_init: PosteriorInit::Torch,
            kl_reduction: KlReduction::Sum,
            layer_priors: BTreeMap::new(),
        })
    }

    /// With this posterior initialisation.
    pub fn with_posterior_init(mut self, init: PosteriorInit) -> Self {
        self.posterior_init = init;
        self
    }

    /// With this reduction of the divergence.
    pub fn with_kl_reduction(mut self, r: KlReduction) -> Self {
        self.kl_reduction = r;
        self
    }

    /// With these per-layer priors (checked; the error names the layer). A path that the
    /// architecture does not have is not an error here; [`MeanField::unused_layer_priors`] lists
    /// them after building.
    pub fn with_layer_priors(mut self, priors: BTreeMap<String, Prior>) -> Result<Self> {
        for (path, p) in &priors {
            p.validate()
                .map_err(|e| candle_core::Error::Msg(format!("prior of layer `{path}`: {e}")))?;
        }
        self.layer_priors = priors;
        Ok(self)
    }

    /// The prior of the layer at `path`.
    pub fn prior_for(&self, path: &str) -> Prior {
        self.layer_priors.get(path).copied().unwrap_or(self.prior)
    }

    /// The paths of `layer_priors` that name no layer of the model in `store` (built with this
    /// factory): a typo in a config would otherwise be silently ignored.
    pub fn unused_layer_priors(&self, store: &secateur_bayes::ParamStore) -> Vec<String> {
        let layers: Vec<String> = store.variational_layers().into_iter().map(|(n, _)| n).collect();
        self.layer_priors
            .keys()
            .filter(|k| !layers.contains(k))
            .cloned()
            .collect()
    }
}

impl Default for MeanField {
    /// Prior `N(0, 1)`, `init_std = 1e-3`, no per-layer priors.
    fn default() -> Self {
        Self {
            prior: Prior::default(),
            init_std: DEFAULT_INIT_STD,
            posterior_init: PosteriorInit::Torch,
            kl_reduction: KlReduction::Sum,
            layer_priors: BTreeMap::new(),
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
            .with_prior(self.prior_for(pb.prefix()))
            .with_init_std(self.init_std)
            .with_posterior_init(self.posterior_init)
            .with_kl_reduction(self.kl_reduction);
        Ok(Box::new(BayesLinear::new(pb, c).map_err(|e| at(pb, e))?))
    }
    fn conv2d(&self, pb: &ParamBuilder, cfg: Conv2dCfg) -> Result<Box<dyn Module>> {
        let c = BayesConv2dConfig::new(cfg.in_ch, cfg.out_ch, cfg.kernel)
            .with_geom(geom(&cfg))
            .with_bias(cfg.bias)
            .with_prior(self.prior_for(pb.prefix()))
            .with_init_std(self.init_std)
            .with_posterior_init(self.posterior_init)
            .with_kl_reduction(self.kl_reduction);
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

/// Variational dropout with learned rates (Kingma, Salimans & Welling 2015): `w ~ N(θ, α θ²)`,
/// log-uniform prior, `log α ∈ [−8, 0]` learned per weight or per input unit (input feature or
/// input channel). Parameters `{path}.weight_mu` (θ), `{path}.weight_log_alpha`, `{path}.bias`
/// (deterministic).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VariationalDropout {
    /// Per weight or per input unit.
    pub granularity: VdGranularity,
    /// Initial `log α` (in `[−8, 0]`).
    pub init_log_alpha: f64,
}

impl VariationalDropout {
    /// Checks `init_log_alpha ∈ [−8, 0]`.
    pub fn new(granularity: VdGranularity, init_log_alpha: f64) -> Result<Self> {
        VdLinearConfig::new(1, 1)
            .with_init_log_alpha(init_log_alpha)
            .validate()?;
        Ok(Self {
            granularity,
            init_log_alpha,
        })
    }
}

impl Default for VariationalDropout {
    /// α per weight, `log α = −2`.
    fn default() -> Self {
        Self {
            granularity: VdGranularity::Weight,
            init_log_alpha: DEFAULT_INIT_LOG_ALPHA,
        }
    }
}

impl LayerFactory for VariationalDropout {
    fn name(&self) -> &str {
        "variational-dropout"
    }
    fn linear(&self, pb: &ParamBuilder, cfg: LinearCfg) -> Result<Box<dyn Module>> {
        let c = VdLinearConfig::new(cfg.in_dim, cfg.out_dim)
            .with_bias(cfg.bias)
            .with_granularity(self.granularity)
            .with_init_log_alpha(self.init_log_alpha);
        Ok(Box::new(VdLinear::new(pb, c).map_err(|e| at(pb, e))?))
    }
    fn conv2d(&self, pb: &ParamBuilder, cfg: Conv2dCfg) -> Result<Box<dyn Module>> {
        let c = VdConv2dConfig::new(cfg.in_ch, cfg.out_ch, cfg.kernel)
            .with_geom(geom(&cfg))
            .with_bias(cfg.bias)
            .with_granularity(self.granularity)
            .with_init_log_alpha(self.init_log_alpha);
        Ok(Box::new(VdConv2d::new(pb, c).map_err(|e| at(pb, e))?))
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

/// Spike-and-slab node selection (Jantre, Bhattacharya & Maiti 2021): every output node of
/// every weight layer but the last one made (linear units, conv channels) has a Bernoulli
/// inclusion variable with prior probability λ and a Gaussian slab on its incoming weights and
/// bias; nodes with posterior inclusion `γ < ½` are removed at test time. The last layer made is
/// the classifier in every architecture; its outputs are the classes, so it keeps all its nodes
/// (the paper selects hidden nodes) and is a mean-field Gaussian layer with the slab as prior:
/// each new layer is made without node selection, and switches it on in the layer made before it.
/// Parameters `{path}.weight_mu`, `{path}.weight_rho`, `{path}.bias_mu`, `{path}.bias_rho`,
/// `{path}.inclusion_logit` (unused in the classifier). The same prior is used in every layer
/// (the paper's layer-wise λ_l would be one prior per layer).
///
/// The factory remembers the last layer it made, so use one factory per network (as [`factory`](crate::kind::factory)
/// does).
#[derive(Debug)]
pub struct SpikeSlab {
    /// The spike-and-slab prior (λ = `pi` < 1, σ_slab = `slab_std`).
    pub prior: Prior,
    /// Initial posterior standard deviation of the slab.
    pub init_std: f64,
    /// Initial inclusion probability γ.
    pub init_inclusion: f64,
    /// Temperature of the relaxed inclusion variables.
    pub temperature: f64,
    /// λ of the k-th layer made, overriding the prior's `pi` ([`SpikeSlab::with_layer_inclusion`]).
    pub layer_inclusion: Vec<f64>,
    last: Mutex<Option<LastLayer>>,
    made: std::sync::atomic::AtomicUsize,
}

/// The last spike-and-slab layer made (a clone sharing its node-selection switch).
#[derive(Debug)]
enum LastLayer {
    Linear(SpikeSlabLinear),
    Conv(SpikeSlabConv2d),
}

impl SpikeSlab {
    /// Checks every field (the error names it).
    pub fn new(prior: Prior, init_std: f64, init_inclusion: f64, temperature: f64) -> Result<Self> {
        SpikeSlabLinearConfig::new(1, 1)
            .with_prior(prior)
            .with_init_std(init_std)
            .with_init_inclusion(init_inclusion)
            .with_temperature(temperature)
            .validate()?;
        Ok(Self {
            prior,
            init_std,
            init_inclusion,
            temperature,
            layer_inclusion: Vec::new(),
            last: Mutex::new(None),
            made: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The prior inclusion probability λ of the k-th layer made (forward order) is `l[k]`
    /// instead of the prior's `pi` (layers past the list keep `pi`). Each must be in (0, 1).
    pub fn with_layer_inclusion(mut self, l: Vec<f64>) -> Result<Self> {
        if let Some(bad) = l.iter().find(|&&x| !(x > 0.0 && x < 1.0)) {
            candle_core::bail!("spike-and-slab layer inclusion probabilities must be in (0, 1), got {bad}");
        }
        self.layer_inclusion = l;
        Ok(self)
    }

    /// The prior of the next layer made.
    fn next_prior(&self) -> Prior {
        let k = self.made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match (self.prior, self.layer_inclusion.get(k)) {
            (Prior::SpikeAndSlab { slab_std, .. }, Some(&pi)) => Prior::SpikeAndSlab { pi, slab_std },
            (p, _) => p,
        }
    }

    /// Makes `layer` the last one, switching node selection on in the previous last layer.
    fn push(&self, layer: LastLayer) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match last.take() {
            Some(LastLayer::Linear(l)) => l.set_node_selection(true),
            Some(LastLayer::Conv(c)) => c.set_node_selection(true),
            None => {}
        }
        *last = Some(layer);
    }
}

impl LayerFactory for SpikeSlab {
    fn name(&self) -> &str {
        "spike-slab"
    }
    fn linear(&self, pb: &ParamBuilder, cfg: LinearCfg) -> Result<Box<dyn Module>> {
        let c = SpikeSlabLinearConfig::new(cfg.in_dim, cfg.out_dim)
            .with_bias(cfg.bias)
            .with_prior(self.next_prior())
            .with_init_std(self.init_std)
            .with_init_inclusion(self.init_inclusion)
            .with_temperature(self.temperature)
            .with_node_selection(false);
        let layer = SpikeSlabLinear::new(pb, c).map_err(|e| at(pb, e))?;
        self.push(LastLayer::Linear(layer.clone()));
        Ok(Box::new(layer))
    }
    fn conv2d(&self, pb: &ParamBuilder, cfg: Conv2dCfg) -> Result<Box<dyn Module>> {
        let c = SpikeSlabConv2dConfig::new(cfg.in_ch, cfg.out_ch, cfg.kernel)
            .with_geom(geom(&cfg))
            .with_bias(cfg.bias)
            .with_prior(self.next_prior())
            .with_init_std(self.init_std)
            .with_init_inclusion(self.init_inclusion)
            .with_temperature(self.temperature)
            .with_node_selection(false);
        let layer = SpikeSlabConv2d::new(pb, c).map_err(|e| at(pb, e))?;
        self.push(LastLayer::Conv(layer.clone()));
        Ok(Box::new(layer))
    }
}

/// Nested dropout (Rippel, Gelbart & Adams 2014; `nested-dropout`) or variational nested dropout
/// (Cui et al. 2021; `variational-nested-dropout`) on the input units of every weight layer but
/// the first one made, followed by the deterministic layer (parameter names are the
/// deterministic ones, plus `{path}.truncation_logits` for the variational kind, registered as
/// variational under the layer's path). See the module documentation for the placement.
///
/// The factory remembers whether it has made a layer yet, so use one factory per network (as
/// [`factory`](crate::kind::factory) does).
#[derive(Debug)]
pub struct NestedDropoutFactory {
    /// Geometric parameter of the truncation distribution (the prior's, for the variational kind).
    pub p: f64,
    /// Temperature of the Downhill relaxation (variational kind only).
    pub temperature: f64,
    /// Whether the masks are learned (variational nested dropout).
    pub variational: bool,
    made_one: AtomicBool,
}

impl NestedDropoutFactory {
    /// Plain nested dropout with `b ~ Geom(p)`; refuses `p ∉ (0, 1]`.
    pub fn plain(p: f64) -> Result<Self> {
        NestedDropout::new(p)?;
        Ok(Self {
            p,
            temperature: nested_dropout::DEFAULT_TEMPERATURE,
            variational: false,
            made_one: AtomicBool::new(false),
        })
    }

    /// Variational nested dropout with prior `truncated_geometric(p, K)` and Downhill temperature
    /// `temperature`; refuses `p ∉ (0, 1]` or a temperature that is not finite and > 0.
    pub fn variational(p: f64, temperature: f64) -> Result<Self> {
        VariationalNestedDropoutConfig::new(1)
            .with_prior_p(p)
            .with_temperature(temperature)
            .validate()?;
        Ok(Self {
            p,
            temperature,
            variational: true,
            made_one: AtomicBool::new(false),
        })
    }

    /// The mask over `units` inputs of the layer at `pb`, or `None` for the first layer made.
    fn mask(&self, pb: &ParamBuilder, units: usize) -> Result<Option<Box<dyn Module>>> {
        if !self.made_one.swap(true, Ordering::SeqCst) {
            return Ok(None);
        }
        Ok(Some(if self.variational {
            let c = VariationalNestedDropoutConfig::new(units)
                .with_prior_p(self.p)
                .with_temperature(self.temperature);
            Box::new(VariationalNestedDropout::new(pb, c).map_err(|e| at(pb, e))?)
        } else {
            Box::new(NestedDropout::new(self.p)?)
        }))
    }
}

/// An optional mask on the input, then a layer.
struct MaskThen {
    mask: Option<Box<dyn Module>>,
    layer: Box<dyn Module>,
}

impl Module for MaskThen {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        match &self.mask {
            Some(m) => self.layer.forward(&m.forward(x, ctx)?, ctx),
            None => self.layer.forward(x, ctx),
        }
    }
}

impl LayerFactory for NestedDropoutFactory {
    fn name(&self) -> &str {
        if self.variational {
            "variational-nested-dropout"
        } else {
            "nested-dropout"
        }
    }
    fn linear(&self, pb: &ParamBuilder, cfg: LinearCfg) -> Result<Box<dyn Module>> {
        let mask = self.mask(pb, cfg.in_dim)?;
        Ok(Box::new(MaskThen {
            mask,
            layer: Box::new(Linear::new(pb, cfg)?),
        }))
    }
    fn conv2d(&self, pb: &ParamBuilder, cfg: Conv2dCfg) -> Result<Box<dyn Module>> {
        let mask = self.mask(pb, cfg.in_ch)?;
        Ok(Box::new(MaskThen {
            mask,
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
    use crate::kind::factory;

    #[test]
    fn unknown_kinds_and_bad_options_are_refused_by_name() {
        let o = FactoryOptions::default();
        for k in crate::kind::kind_names() {
            assert_eq!(factory(k, &o).unwrap().name(), k);
        }
        let e = factory("gaussian-process", &o).err().unwrap().to_string();
        assert!(e.contains("gaussian-process") && e.contains("sparse-vd"), "{e}");
        let bad = FactoryOptions {
            init_std: 0.0,
            ..o.clone()
        };
        let e = factory("mean-field", &bad).err().unwrap().to_string();
        assert!(e.contains("init_std"), "{e}");
        let bad = FactoryOptions {
            sparse_vd_threshold: f64::NAN,
            ..o.clone()
        };
        assert!(factory("sparse-vd", &bad)
            .err()
            .unwrap()
            .to_string()
            .contains("threshold"));
        for v in [0.5, -8.5, f64::NAN] {
            let bad = FactoryOptions {
                vd_init_log_alpha: v,
                ..o.clone()
            };
            let e = factory("variational-dropout", &bad).err().unwrap().to_string();
            assert!(e.contains("init_log_alpha"), "{v}: {e}");
        }
        let bad = FactoryOptions {
            dropout: 1.0,
            ..o.clone()
        };
        assert!(factory("mc-dropout", &bad).err().unwrap().to_string().contains("`p`"));
        let bad = FactoryOptions {
            gate_threshold: 1.0,
            ..o.clone()
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
            ..o.clone()
        };
        assert!(factory("gsm-gates", &bad).err().unwrap().to_string().contains("scale"));
        for (bad, field) in [
            (
                FactoryOptions {
                    spike_slab_prior: Prior::default(),
                    ..o.clone()
                },
                "prior",
            ),
            (
                FactoryOptions {
                    spike_slab_init_inclusion: 1.0,
                    ..o.clone()
                },
                "init_inclusion",
            ),
            (
                FactoryOptions {
                    spike_slab_temperature: 0.0,
                    ..o.clone()
                },
                "temperature",
            ),
        ] {
            let e = factory("spike-slab", &bad).err().unwrap().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        let bad = FactoryOptions {
            nested_dropout_p: 0.0,
            ..o.clone()
        };
        assert!(factory("nested-dropout", &bad)
            .err()
            .unwrap()
            .to_string()
            .contains("`p`"));
        assert!(factory("variational-nested-dropout", &bad)
            .err()
            .unwrap()
            .to_string()
            .contains("prior_p"));
        let bad = FactoryOptions {
            nested_temperature: -1.0,
            ..o.clone()
        };
        assert!(factory("variational-nested-dropout", &bad)
            .err()
            .unwrap()
            .to_string()
            .contains("temperature"));
    }

    /// The quick architectures (MLP, LeNet-5, ResNet-20) build with the new kinds and run one
    /// example, at a reduced width for the nested kinds.
    #[test]
    fn quick_architectures_run_with_spike_slab_and_nested_kinds() -> Result<()> {
        use candle_core::{DType, Device};
        use secateur_bayes::{ParamStore, Sampling, SeededRng};
        for arch in ["mlp", "lenet5", "resnet20"] {
            for kind in ["spike-slab", "nested-dropout", "variational-nested-dropout"] {
                let f = factory(kind, &FactoryOptions::default())?;
                let pb = ParamBuilder::new(ParamStore::new(), SeededRng::new(0), DType::F32, Device::Cpu);
                let net = crate::build(&crate::ModelSpec::new(arch, [1, 28, 28], 10), f.as_ref(), &pb)?;
                let x = Tensor::ones((1, 1, 28, 28), DType::F32, &Device::Cpu)?;
                let mut rng = SeededRng::new(1);
                let y = net.forward(&x, &mut Ctx::train(&mut rng, Sampling::Local))?;
                assert_eq!(y.dims(), &[1, 10], "{arch}/{kind}");
                let y = net.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Weight).with_width(0.5))?;
                assert_eq!(y.dims(), &[1, 10], "{arch}/{kind}");
            }
        }
        Ok(())
    }

    /// Spike-and-slab LeNet-5: every layer selects nodes except the classifier `fc3`.
    #[test]
    fn spike_slab_selects_nodes_in_every_layer_but_the_classifier() -> Result<()> {
        use candle_core::{DType, Device};
        use secateur_bayes::{ParamStore, SeededRng};
        let f = factory("spike-slab", &FactoryOptions::default())?;
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
        crate::build(&crate::ModelSpec::new("lenet5", [1, 28, 28], 10), f.as_ref(), &pb)?;
        let with_inclusion: Vec<String> = store
            .posterior_stats()?
            .into_iter()
            .filter(|s| s.name.ends_with(".weight") && s.inclusion.is_some())
            .map(|s| s.name)
            .collect();
        assert_eq!(
            with_inclusion,
            vec!["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
        );
        Ok(())
    }

    /// LeNet-5 with variational nested dropout: the first layer (`conv1`) reads the image
    /// unmasked, every later weight layer orders its inputs; at width 1 the network is the full
    /// network and narrower widths change the output.
    #[test]
    fn nested_lenet5_masks_all_but_the_first_layer_and_evaluates_at_widths() -> Result<()> {
        use candle_core::{DType, Device};
        use secateur_bayes::{ParamStore, Sampling, SeededRng};
        let f = factory("variational-nested-dropout", &FactoryOptions::default())?;
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
        let net = crate::build(&crate::ModelSpec::new("lenet5", [1, 28, 28], 10), f.as_ref(), &pb)?;
        let layers: Vec<String> = store.variational_layers().into_iter().map(|(n, _)| n).collect();
        assert_eq!(layers, vec!["conv2", "fc1", "fc2", "fc3"]);
        assert_eq!(store.get("conv2.truncation_logits").unwrap().dims(), &[6]);
        assert_eq!(store.get("fc1.truncation_logits").unwrap().dims(), &[400]);
        let x = SeededRng::new(1).rand_uniform(&[2, 1, 28, 28], 0.0, 1.0, DType::F32, &Device::Cpu)?;
        let mut rng = SeededRng::new(2);
        let full = net
            .forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?
            .to_vec2::<f32>()?;
        let one = net
            .forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean).with_width(1.0))?
            .to_vec2::<f32>()?;
        let quarter = net
            .forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean).with_width(0.25))?
            .to_vec2::<f32>()?;
        assert_eq!(full, one);
        assert_ne!(full, quarter);
        Ok(())
    }

    #[test]
    fn variational_dropout_builds_per_unit_rates_and_runs_every_estimator() -> Result<()> {
        use crate::{build, ModelSpec};
        use candle_core::{DType, Device};
        use secateur_bayes::divergence::Divergence;
        use secateur_bayes::{ParamStore, Sampling, SeededRng};
        let opts = FactoryOptions {
            vd_granularity: VdGranularity::Unit,
            vd_init_log_alpha: -3.0,
            ..FactoryOptions::default()
        };
        let f = factory("variational-dropout", &opts)?;
        assert!(crate::kind::kind(f.name())?.bayesian);
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
        let net = build(&ModelSpec::new("lenet5", [1, 28, 28], 10), f.as_ref(), &pb)?;
        // one rate per input unit: input channels of the convolutions, input features of the
        // linear layers, every one at the initial value
        for (name, var) in store.params() {
            if let Some(layer) = name.strip_suffix(".weight_log_alpha") {
                let mu = store.get(&format!("{layer}.weight_mu")).unwrap();
                assert_eq!(var.dims(), &[mu.dims()[1]], "{name}");
                let v: Vec<f32> = var.as_tensor().to_vec1()?;
                assert!(v.iter().all(|&x| x == -3.0), "{name}");
            }
        }
        let x = Tensor::ones((2, 1, 28, 28), DType::F32, &Device::Cpu)?;
        let mut rng = SeededRng::new(1);
        for s in [Sampling::Mean, Sampling::Weight, Sampling::Local, Sampling::Flipout] {
            let y = net.forward(&x, &mut Ctx::train(&mut rng, s))?;
            assert_eq!(y.dims(), &[2, 10], "{s:?}");
        }
        let (kl, per_layer) = store.divergence(&Divergence::Kl, &mut rng)?;
        assert!(kl.to_scalar::<f32>()?.is_finite());
        assert_eq!(per_layer.len(), 5);
        Ok(())
    }
}
