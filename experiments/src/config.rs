//! Study configs: TOML files, nested as
//! `StudyConfig { name, seed, data, model, optim, train, bayes, likelihood, greg, posterior, pruning }`.
//!
//! Every section has documented defaults (its `Default`), unknown keys are refused by name
//! (`deny_unknown_fields`), and [`StudyConfig::validate`] refuses impossible values, naming the
//! field. `--set key=value` overrides are applied to the TOML tree before it is read, so they
//! are checked exactly like the file.

use crate::error::{ExpError, Result};
pub use crate::posterior_config::{PosteriorConfig, PriorPrecision};
pub use crate::pruning_config::PruningConfig;
use secateur_bayes::layers::variational_dropout::{VD_LOG_ALPHA_MAX, VD_LOG_ALPHA_MIN};
use secateur_bayes::layers::VdGranularity;
use secateur_bayes::{Divergence, Prior};
use secateur_inference::elbo::{BetaSchedule, ElboConfig, Objective};
use secateur_inference::schedule::Schedule;
use secateur_models::bayes_factory::FactoryOptions;
use secateur_models::LayerKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A whole study: what to train, on what, how, and with which seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StudyConfig {
    /// Study name; run directories are `runs/<name>-<timestamp>/`. Default `study`.
    pub name: String,
    /// The run's seed: initialisation, shuffling, augmentation and noise all derive from it.
    /// Default 0.
    pub seed: u64,
    /// The data set and batching.
    pub data: DataConfig,
    /// The architecture and layer kind.
    pub model: ModelConfig,
    /// The optimiser.
    pub optim: OptimConfig,
    /// Epochs and learning-rate schedule.
    pub train: TrainConfig,
    /// Bayesian layers and the ELBO (read when `model.layers` is not `deterministic`).
    pub bayes: BayesConfig,
    /// The likelihood: categorical (classification, the default) or Gaussian (regression).
    pub likelihood: LikelihoodConfig,
    /// Growing regularisation before training (off unless `greg.method` is set).
    pub greg: GregConfig,
    /// A posterior over the trained network (SWA, SWAG, Laplace, a deep ensemble; off unless
    /// `posterior.kind` is set). Written into a run's config only when set.
    #[serde(skip_serializing_if = "PosteriorConfig::is_none")]
    pub posterior: PosteriorConfig,
    /// Pruning learned during training (SCL, DCFF, CAP; off unless `pruning.method` is set). Written into
    /// a run's config only when set.
    #[serde(skip_serializing_if = "PruningConfig::is_off")]
    pub pruning: PruningConfig,
}

impl Default for StudyConfig {
    fn default() -> Self {
        Self {
            name: "study".into(),
            seed: 0,
            data: DataConfig::default(),
            model: ModelConfig::default(),
            optim: OptimConfig::default(),
            train: TrainConfig::default(),
            bayes: BayesConfig::default(),
            likelihood: LikelihoodConfig::default(),
            greg: GregConfig::default(),
            posterior: PosteriorConfig::default(),
            pruning: PruningConfig::default(),
        }
    }
}

/// A value that configs and command lines give by one of a fixed set of names (`scope = "layer"`),
/// parsed in one place: [`Named::parse`] for a field, and the serde adapters [`de_named`] and
/// [`ser_named`] that make a config field hold the enum itself.
pub trait Named: Clone + PartialEq + 'static {
    /// Every value with its name, in the order error messages list them.
    const NAMES: &'static [(&'static str, Self)];

    /// The value's name.
    fn config_name(&self) -> &'static str {
        Self::NAMES.iter().find(|(_, v)| v == self).map_or("", |(n, _)| n)
    }

    /// The value named `value` of `field`; the error names the field and the valid names
    /// (`greg.scope `x` is unknown; use global or layer`).
    fn parse(field: &str, value: &str) -> std::result::Result<Self, String> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == value)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("{field} `{value}` is unknown; use {}", name_list(Self::NAMES)))
    }
}

/// `a or b`, `a, b or c`: the non-empty names.
fn name_list<T>(names: &[(&str, T)]) -> String {
    let n: Vec<&str> = names.iter().map(|(n, _)| *n).filter(|n| !n.is_empty()).collect();
    match n.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => (*last).to_string(),
        None => String::new(),
    }
}

impl Named for secateur_pruning::Scope {
    const NAMES: &'static [(&'static str, Self)] = &secateur_pruning::Scope::NAMES;
}

impl Named for secateur_pruning::greg::Granularity {
    const NAMES: &'static [(&'static str, Self)] = &secateur_pruning::greg::Granularity::NAMES;
}

/// Reads a [`Named`] value of `field` from a string (serde's `deserialize_with` of one field).
pub fn de_named<'de, D: serde::Deserializer<'de>, T: Named>(d: D, field: &str) -> std::result::Result<T, D::Error> {
    let s = String::deserialize(d)?;
    T::parse(field, &s).map_err(serde::de::Error::custom)
}

/// Writes a [`Named`] value as its name (serde's `serialize_with`).
pub fn ser_named<S: serde::Serializer, T: Named>(v: &T, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(v.config_name())
}

fn de_greg_method<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<GregMethod, D::Error> {
    de_named(d, "greg.method")
}
fn de_greg_granularity<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<secateur_pruning::greg::Granularity, D::Error> {
    de_named(d, "greg.granularity")
}
fn de_greg_scope<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<secateur_pruning::Scope, D::Error> {
    de_named(d, "greg.scope")
}

/// `greg.method`: off, GReg-1 or GReg-2 (Wang, Qin, Zhang & Fu 2021). `Clone` without `Copy`:
/// `commands::train` writes `cfg.greg.method.clone().into()` into `metrics.json`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GregMethod {
    /// `""`: no growing regularisation (the default).
    #[default]
    Off,
    /// `greg1`: the groups are picked by magnitude at the start, then their penalty grows
    /// (`secateur_pruning::greg::GReg::greg1`).
    Greg1,
    /// `greg2`: a uniform penalty on all groups first picks them, then grows on the picked ones
    /// (`secateur_pruning::greg::GReg::greg2`).
    Greg2,
}

impl Named for GregMethod {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("", GregMethod::Off),
        ("greg1", GregMethod::Greg1),
        ("greg2", GregMethod::Greg2),
    ];
}

impl From<GregMethod> for serde_json::Value {
    /// The method's config name (`metrics.json`'s `greg_method`).
    fn from(m: GregMethod) -> Self {
        m.config_name().into()
    }
}

/// Growing regularisation (Wang, Qin, Zhang & Fu 2021), run by `secateur train` before the
/// config's training: start from `greg.weights` (a trained network), train with the growing
/// penalty at the constant rate `greg.lr` until the schedule ends, prune the regularised groups,
/// then train `train.epochs` with the masks held (the paper's fine-tuning). The schedule
/// defaults are the paper's CIFAR settings (about 110,000 iterations for GReg-1); shorten them
/// for small data.
///
/// ```toml
/// [greg]
/// method = "greg1"            # or "greg2"
/// granularity = "filter"      # or "weight"
/// sparsity = 0.5
/// weights = "runs/dense/weights.safetensors"
/// lambda_step = 1e-3
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GregConfig {
    /// `""` (off, the default), `greg1` or `greg2`.
    #[serde(deserialize_with = "de_greg_method", serialize_with = "ser_named")]
    pub method: GregMethod,
    /// `filter` (whole output filters / rows, the paper's structured pruning; default) or
    /// `weight`.
    #[serde(deserialize_with = "de_greg_granularity", serialize_with = "ser_named")]
    pub granularity: secateur_pruning::greg::Granularity,
    /// Fraction of groups pruned, in `[0, 1)` (default 0.5).
    pub sparsity: f64,
    /// `layer` (each layer at the same ratio, as the paper; default) or `global`.
    #[serde(deserialize_with = "de_greg_scope", serialize_with = "ser_named")]
    pub scope: secateur_pruning::Scope,
    /// Keep the first weight layer (default false) / the classifier (default true) unpruned.
    pub keep_first: bool,
    /// See `keep_first`.
    pub keep_last: bool,
    /// Weights to start from (a finished run's `weights.safetensors`); the seed's
    /// initialisation when absent.
    pub weights: Option<PathBuf>,
    /// Learning rate while regularising (default 1e-3, the paper's CIFAR scripts).
    pub lr: f64,
    /// λ increment of the push phase (default 1e-4).
    pub lambda_step: f64,
    /// Iterations between increments (default 10).
    pub interval: usize,
    /// Growth stops once λ exceeds this (default 1).
    pub lambda_ceiling: f64,
    /// Iterations λ is held after growing (default 10,000).
    pub stabilise_iters: usize,
    /// GReg-2: λ increment of the picking phase (default 1e-5).
    pub picking_step: f64,
    /// GReg-2: the picking phase ends at this λ (default 1e-2).
    pub picking_ceiling: f64,
    /// GReg-2: λ of the kept groups while pushing (default −1e-4).
    pub kept_lambda: f64,
}

impl Default for GregConfig {
    fn default() -> Self {
        let d = secateur_pruning::greg::GRegConfig::default();
        Self {
            method: GregMethod::Off,
            granularity: secateur_pruning::greg::Granularity::Filter,
            sparsity: 0.5,
            scope: secateur_pruning::Scope::PerLayer,
            keep_first: false,
            keep_last: true,
            weights: None,
            lr: 1e-3,
            lambda_step: d.lambda_step,
            interval: d.interval,
            lambda_ceiling: d.lambda_ceiling,
            stabilise_iters: d.stabilise_iters,
            picking_step: d.picking_step,
            picking_ceiling: d.picking_ceiling,
            kept_lambda: d.kept_lambda,
        }
    }
}

impl GregConfig {
    /// Whether growing regularisation runs.
    pub fn enabled(&self) -> bool {
        self.method != GregMethod::Off
    }

    /// The schedule constants.
    pub fn schedule(&self) -> secateur_pruning::greg::GRegConfig {
        secateur_pruning::greg::GRegConfig {
            lambda_step: self.lambda_step,
            interval: self.interval,
            lambda_ceiling: self.lambda_ceiling,
            stabilise_iters: self.stabilise_iters,
            picking_step: self.picking_step,
            picking_ceiling: self.picking_ceiling,
            kept_lambda: self.kept_lambda,
        }
    }

    /// Refuses impossible values; the message names the field. (Unknown names of `method`,
    /// `granularity` and `scope` are refused when the config is read, naming the field.)
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if !(0.0..1.0).contains(&self.sparsity) {
            return Err(format!("greg.sparsity must be in [0, 1), got {}", self.sparsity));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("greg.lr must be positive, got {}", self.lr));
        }
        self.schedule().validate().map_err(|e| format!("greg: {e}"))
    }
}

/// The data set and how it is batched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Named data set (`fashion-mnist-mini`, `fashion-mnist`, `mnist`, `cifar10`, `cifar100`).
    /// Default `fashion-mnist-mini` (shipped in `data/`).
    pub name: String,
    /// Where to look first (overridden by `--data-dir`); then `SECATEUR_DATA`, system locations,
    /// the user cache, and the repository's `data/`. Default: none.
    pub dir: Option<PathBuf>,
    /// Training mini-batch size. Default 128.
    pub batch_size: usize,
    /// Evaluation batch size. Default 1000.
    pub eval_batch_size: usize,
    /// Random crop (padding 4) and horizontal flip on training batches, as for CIFAR. Default false.
    pub augment: bool,
    /// Fraction of the training split held out for validation (reported as `val_*`). Default 0.
    pub val_fraction: f64,
    /// Regression tables only (they ship without a split): the fraction of rows held out as the
    /// test set by a split seeded from `seed`, in (0, 1). Default 0.1 (the 90/10 splits of
    /// Hernández-Lobato & Adams 2015).
    pub test_fraction: f64,
    /// An out-of-distribution data set of the same image shape (e.g. `uci-digits` for
    /// Fashion-MNIST models): `train` then reports the AUROC of telling its test images from the
    /// in-distribution test set by predictive entropy. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ood: Option<String>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            name: "fashion-mnist-mini".into(),
            dir: None,
            batch_size: 128,
            eval_batch_size: 1000,
            augment: false,
            val_fraction: 0.0,
            test_fraction: 0.1,
            ood: None,
        }
    }
}

/// The architecture and the kind of layers it is built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Architecture (`mlp`, `lenet5`, `vgg11`, `vgg16`, `resnet20`, `resnet32`, `resnet56`,
    /// `resnet18`, `vit-tiny`). Default `lenet5`.
    pub arch: String,
    /// Layer kind made by the factory: `deterministic`, `mean-field` (Blundell et al. 2015),
    /// `sparse-vd` (Molchanov et al. 2017), `variational-dropout` (Kingma et al. 2015),
    /// `mc-dropout` (Gal & Ghahramani 2016), `spike-slab` (Jantre et al. 2021), `nested-dropout`
    /// (Rippel et al. 2014) or `variational-nested-dropout` (Cui et al. 2021). Default
    /// `deterministic`.
    pub layers: String,
    /// `mlp` only: the hidden widths, input side first (e.g. `[50]`, the one hidden layer of 50
    /// units of the UCI regression benchmarks). Default: none, i.e. LeNet-300-100's `[300, 100]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<Vec<usize>>,
    /// The output width of every weight layer in forward order, classifier last (`mlp`,
    /// `lenet5`, the VGGs and the ResNets, whose free widths are the blocks' inner ones; see
    /// `secateur_models::build_with_widths`): the narrower network `secateur compact` writes.
    /// Default: none, the architecture's own widths. Not together with `model.hidden`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub widths: Option<Vec<usize>>,
    /// Floating-point type of the parameters and inputs: `f32` (default) or `f64` (for scores
    /// compared with an independent computation to 1e-9; slower). Written to a run's config only
    /// when not the default.
    #[serde(default = "f32_name", skip_serializing_if = "is_f32")]
    pub dtype: String,
}

fn f32_name() -> String {
    "f32".into()
}

fn is_f32(s: &str) -> bool {
    s == "f32"
}

impl ModelConfig {
    /// The candle dtype of [`ModelConfig::dtype`] (an error naming the field otherwise).
    pub fn dtype(&self) -> candle_core::Result<candle_core::DType> {
        match self.dtype.as_str() {
            "f32" => Ok(candle_core::DType::F32),
            "f64" => Ok(candle_core::DType::F64),
            other => candle_core::bail!("model.dtype must be f32 or f64, got `{other}`"),
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            arch: "lenet5".into(),
            layers: "deterministic".into(),
            hidden: None,
            widths: None,
            dtype: f32_name(),
        }
    }
}

/// The optimiser and its hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// `sgd` or `adamw`. Default `sgd`.
    pub kind: String,
    /// Base learning rate. Default 0.05.
    pub lr: f64,
    /// SGD momentum. Default 0.9.
    pub momentum: f64,
    /// SGD Nesterov momentum. Default false.
    pub nesterov: bool,
    /// Weight decay (L2 added to the gradient for SGD, decoupled for AdamW). Default 5e-4.
    pub weight_decay: f64,
    /// AdamW β₁. Default 0.9.
    pub beta1: f64,
    /// AdamW β₂. Default 0.999.
    pub beta2: f64,
    /// AdamW ε. Default 1e-8.
    pub eps: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            kind: "sgd".into(),
            lr: 0.05,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Epochs and the learning-rate schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Number of epochs. Default 10.
    pub epochs: usize,
    /// Learning-rate schedule. Default constant.
    pub schedule: Schedule,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            schedule: Schedule::default(),
        }
    }
}

/// Bayesian layers, the ELBO objective and Monte Carlo evaluation (`[bayes]`).
///
/// The loss of a Bayesian run is `(1/S) Σₛ NLL_s + β(t) · T · D / N` with `S = mc_samples`,
/// `β = beta`, `T = temperature`, `D` the summed `divergence` of every probabilistic layer and `N`
/// the training-set size (see `secateur_inference::elbo` for how `T` enters: likelihood
/// tempering). Evaluation averages `eval_samples` stochastic passes. Deterministic runs ignore
/// this section.
///
/// ```toml
/// [bayes]
/// prior = { kind = "gaussian", mean = 0.0, std = 1.0 }
/// init_std = 1e-3
/// posterior_init = "torch"    # or "bayesian-torch", "blundell"
/// kl_reduction = "sum"         # or "tensor-mean" (bayesian-torch's; not the ELBO)
/// divergence = "kl"            # or "kl-mc:8", "js:0.5"
/// beta = { kind = "linear", delay = 5, warmup = 15 }
/// temperature = 1.0
/// mc_samples = 1
/// eval_samples = 10
/// eval_every_epoch = "mean"    # per-epoch test columns: "mean", "mc" (as the final metrics), "both"
/// sampling = "local"           # or "weight", "flipout"
/// sparse_vd_threshold = 3.0
/// mc_dropout_p = 0.1
/// vd_granularity = "weight"    # or "unit" (variational-dropout layers)
/// vd_init_log_alpha = -2.0
/// init_from = "runs/lenet5-det/weights.safetensors"   # empirical-Bayes (MOPED) initialisation
/// init_delta = 0.1
/// spike_slab_prior = { kind = "spike-and-slab", pi = 1e-4, slab_std = 1.0 }
/// spike_slab_init_inclusion = 0.99
/// spike_slab_temperature = 0.5
/// nested_dropout_p = 0.01
/// nested_temperature = 0.5
/// eval_widths = [0.25, 0.5, 0.75, 1.0]   # nested layer kinds only
/// gate_shape = 1.0             # gsm-gates: inverse-gamma shape a of the GSM
/// gate_scale = 1.0             # gsm-gates: inverse-gamma scale b of the GSM
/// gate_unit_cost = 0.0         # gsm-gates: hyper-prior cost λ (nats) per included unit
/// gate_init_inclusion = 0.9    # gsm-gates: initial inclusion probability θ₀
/// gate_threshold = 0.5         # gsm-gates: a unit is removed at test time iff θ < threshold
/// gate_lr_scale = 1.0          # gsm-gates: step-size multiplier κ of the gates
/// ```
///
/// `gsm-gates` (Guenter & Sideris 2022) puts a Bernoulli gate on every input unit/channel of every
/// layer; its divergence is `Σⱼ θⱼ [λ + (a + nⱼ/2) log(1 + ‖μⱼ‖²/(2b))]` (see
/// `secateur_bayes::layers::gsm_gates`); only `divergence = "kl"` is defined for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BayesConfig {
    /// Prior of the mean-field layers (`gaussian`, `scale-mixture`, `log-uniform`,
    /// `spike-and-slab`; checked when read). Default `N(0, 1)`. Sparse VD always uses its
    /// log-uniform prior.
    pub prior: Prior,
    /// Mean-field layers: priors of single layers by path, overriding `prior` there, e.g.
    /// `[bayes.layer_priors]` then `fc3 = { kind = "gaussian", mean = 0.0, std = 0.1 }`. A path the
    /// model does not have is refused when the model is built. Default none.
    pub layer_priors: BTreeMap<String, Prior>,
    /// Initial posterior standard deviation of the mean-field layers, `softplus(ρ₀)`. Default 1e-3.
    pub init_std: f64,
    /// How the mean-field layers' posterior starts: `torch` (μ as PyTorch initialises the
    /// deterministic layer, ρ = ρ₀), `bayesian-torch` (μ ~ N(0, 0.1), ρ ~ N(ρ₀, 0.1)) or
    /// `blundell` (μ ~ U(±0.2), ρ ~ U(ρ₀ ± ½)); see `secateur_bayes::layers::PosteriorInit`.
    /// Default `torch`.
    pub posterior_init: String,
    /// How the mean-field layers sum their divergence: `sum` (the ELBO's) or `tensor-mean` (each
    /// weight and bias tensor contributes the mean of its entries' divergences, as bayesian-torch
    /// does; not the ELBO). See `secateur_bayes::layers::KlReduction`. Default `sum`.
    pub kl_reduction: String,
    /// Divergence: `kl`, `kl-mc:S` or `js:ALPHA`. Default `kl`.
    pub divergence: String,
    /// KL annealing schedule β(t) (`constant`, `linear`, `cyclical`). Default constant 1.
    pub beta: BetaSchedule,
    /// Posterior temperature T > 0 (likelihood tempering; T < 1 is a cold posterior). Default 1.
    pub temperature: f64,
    /// Monte Carlo samples S ≥ 1 of the expected NLL per training step. Default 1.
    pub mc_samples: usize,
    /// Samples ≥ 1 averaged at evaluation (test metrics, mutual information). Default 10.
    pub eval_samples: usize,
    /// The predictive of the per-epoch test columns of `history.csv`: `mean` (the posterior-mean
    /// network, one pass: `test_*`), `mc` (the Monte Carlo average of `eval_samples` passes, as
    /// the final metrics: `mc_test_*`) or `both` (both sets of columns). Classification only.
    /// Default `mean`.
    pub eval_every_epoch: String,
    /// Estimator of the Gaussian layers: `local` (local reparameterisation, Kingma et al. 2015),
    /// `weight` (one weight draw per batch, Blundell et al. 2015) or `flipout` (Wen et al. 2018).
    /// Default `local`.
    pub sampling: String,
    /// Sparse VD: weights with `log α ≥ sparse_vd_threshold` are zero at test time. Default 3.
    pub sparse_vd_threshold: f64,
    /// MC dropout: drop probability in [0, 1). Default 0.1.
    pub mc_dropout_p: f64,
    /// Variational dropout (Kingma et al. 2015): α learned per `weight` or per input `unit`
    /// (input feature of a linear layer, input channel of a convolution). Default `weight`.
    pub vd_granularity: String,
    /// Variational dropout: initial `log α`, in [−8, 0]. Default −2.
    pub vd_init_log_alpha: f64,
    /// Empirical-Bayes initialisation (MOPED, Krishnan, Subedar & Tickoo 2020): a deterministic
    /// run's final weights (`weights.safetensors` in its run directory; the directory itself is
    /// accepted too). The model is initialised from it right after it is built: posterior means
    /// are its weights, `σ = init_delta · |w|`, other tensors copied by name (see
    /// `secateur_bayes::empirical_bayes`). Ignored when a run is resumed. Default: none.
    pub init_from: Option<PathBuf>,
    /// δ of the empirical-Bayes initialisation (> 0; `σ = δ·|w|`). Default 0.1.
    pub init_delta: f64,
    /// Spike-and-slab node selection: the prior, `spike-and-slab` with `pi` = λ in (0, 1) and
    /// `slab_std` (the slab's initial posterior standard deviation is `init_std`). Default
    /// λ = 1e-4, slab_std = 1 (Jantre et al.'s reference code).
    pub spike_slab_prior: Prior,
    /// Spike-and-slab: initial inclusion probability γ in (0, 1). Default 0.99.
    pub spike_slab_init_inclusion: f64,
    /// Spike-and-slab: temperature > 0 of the relaxed inclusion variables. Default 0.5.
    pub spike_slab_temperature: f64,
    /// Spike-and-slab: the prior inclusion probability λ of each node-selecting layer in forward
    /// order, each in (0, 1), overriding `spike_slab_prior.pi`. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spike_slab_layer_inclusion: Vec<f64>,
    /// Spike-and-slab: `true` makes `train` set `spike_slab_layer_inclusion` to the layer-wise λ
    /// of Jantre et al.'s reference code from the MLP's widths and the number of training
    /// examples (`secateur_bayes::layers::spike_slab::layerwise_inclusion`), recorded in the run's
    /// config. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spike_slab_layerwise: bool,
    /// Nested dropout: geometric parameter p in (0, 1] of the truncation index (unit k kept with
    /// probability `(1 − p)^{k−1}`); the prior's for variational nested dropout. Default 0.01.
    pub nested_dropout_p: f64,
    /// Variational nested dropout: temperature > 0 of the Downhill relaxation. Default 0.5.
    pub nested_temperature: f64,
    /// Nested layer kinds: after training, the test accuracy of the network evaluated at each
    /// width w in (0, 1] (hidden layers keep their first ⌈w · units⌉ inputs), written to
    /// metrics.json as `accuracy_width_0.50` etc. and to the report. Default none.
    pub eval_widths: Vec<f64>,
    /// GSM gates: inverse-gamma shape `a > 0` of the Gaussian scale mixture. Default 1.
    pub gate_shape: f64,
    /// GSM gates: inverse-gamma scale `b > 0` of the Gaussian scale mixture. Default 1.
    pub gate_scale: f64,
    /// GSM gates: cost λ ≥ 0 (nats) of an included unit, from the hyper-prior on the inclusion
    /// probability (0: the flat hyper-prior). Default 0.
    pub gate_unit_cost: f64,
    /// GSM gates: initial inclusion probability θ₀ ∈ (0, 1). Default 0.9.
    pub gate_init_inclusion: f64,
    /// GSM gates: a unit is removed at test time iff θ < `gate_threshold` ∈ (0, 1). Default 0.5.
    pub gate_threshold: f64,
    /// GSM gates: step-size multiplier κ > 0 of the gates, `θ = clamp(κ · gate_theta, 0, 1)`
    /// (the paper's separate step size for θ). Default 1.
    pub gate_lr_scale: f64,
}

impl Default for BayesConfig {
    fn default() -> Self {
        let f = FactoryOptions::default();
        Self {
            prior: f.prior,
            layer_priors: BTreeMap::new(),
            init_std: f.init_std,
            posterior_init: "torch".into(),
            kl_reduction: "sum".into(),
            divergence: "kl".into(),
            beta: BetaSchedule::default(),
            temperature: 1.0,
            mc_samples: 1,
            eval_samples: 10,
            eval_every_epoch: "mean".into(),
            sampling: "local".into(),
            sparse_vd_threshold: f.sparse_vd_threshold,
            mc_dropout_p: f.dropout,
            vd_granularity: "weight".into(),
            vd_init_log_alpha: f.vd_init_log_alpha,
            init_from: None,
            init_delta: secateur_bayes::empirical_bayes::DEFAULT_DELTA,
            spike_slab_prior: f.spike_slab_prior,
            spike_slab_init_inclusion: f.spike_slab_init_inclusion,
            spike_slab_temperature: f.spike_slab_temperature,
            spike_slab_layer_inclusion: Vec::new(),
            spike_slab_layerwise: false,
            nested_dropout_p: f.nested_dropout_p,
            nested_temperature: f.nested_temperature,
            eval_widths: Vec::new(),
            gate_shape: f.gate_prior.shape,
            gate_scale: f.gate_prior.scale,
            gate_unit_cost: f.gate_prior.unit_cost,
            gate_init_inclusion: f.gate_init_inclusion,
            gate_threshold: f.gate_threshold,
            gate_lr_scale: f.gate_lr_scale,
        }
    }
}

/// The sampling names of `bayes.sampling`.
pub const SAMPLING_NAMES: &[&str] = &["local", "weight", "flipout"];

/// The Gaussian-weight estimator of one of [`SAMPLING_NAMES`]; an error naming the unknown name
/// and the known ones otherwise.
pub fn parse_sampling(name: &str) -> std::result::Result<secateur_bayes::Sampling, String> {
    use secateur_bayes::Sampling;
    match name {
        "local" => Ok(Sampling::Local),
        "weight" => Ok(Sampling::Weight),
        "flipout" => Ok(Sampling::Flipout),
        other => Err(format!("`{other}` is unknown; known: {}", SAMPLING_NAMES.join(", "))),
    }
}

impl BayesConfig {
    /// Refuses impossible values; the message names the field (`bayes.…`).
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.prior.validate().map_err(|e| format!("bayes.prior: {e}"))?;
        for (path, p) in &self.layer_priors {
            p.validate().map_err(|e| format!("bayes.layer_priors.{path}: {e}"))?;
        }
        if !(self.init_std.is_finite() && self.init_std > 0.0) {
            return Err(format!("bayes.init_std must be finite and > 0, got {}", self.init_std));
        }
        self.divergence()?;
        self.beta.validate().map_err(|e| format!("bayes.beta: {e}"))?;
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(format!(
                "bayes.temperature must be finite and > 0, got {}",
                self.temperature
            ));
        }
        if self.mc_samples == 0 {
            return Err("bayes.mc_samples must be at least 1, got 0".into());
        }
        if self.eval_samples == 0 {
            return Err("bayes.eval_samples must be at least 1, got 0".into());
        }
        self.sampling()?;
        if !self.sparse_vd_threshold.is_finite() {
            return Err(format!(
                "bayes.sparse_vd_threshold must be finite, got {}",
                self.sparse_vd_threshold
            ));
        }
        if !(0.0..1.0).contains(&self.mc_dropout_p) {
            return Err(format!(
                "bayes.mc_dropout_p must be in [0, 1), got {}",
                self.mc_dropout_p
            ));
        }
        self.gate_prior()?;
        for (field, v) in [
            ("gate_init_inclusion", self.gate_init_inclusion),
            ("gate_threshold", self.gate_threshold),
        ] {
            if !(v > 0.0 && v < 1.0) {
                return Err(format!("bayes.{field} must be in (0, 1), got {v}"));
            }
        }
        if !(self.gate_lr_scale.is_finite() && self.gate_lr_scale > 0.0) {
            return Err(format!(
                "bayes.gate_lr_scale must be finite and > 0, got {}",
                self.gate_lr_scale
            ));
        }
        self.vd_granularity()?;
        if !(VD_LOG_ALPHA_MIN..=VD_LOG_ALPHA_MAX).contains(&self.vd_init_log_alpha) {
            return Err(format!(
                "bayes.vd_init_log_alpha must be in [{VD_LOG_ALPHA_MIN}, {VD_LOG_ALPHA_MAX}], got {}",
                self.vd_init_log_alpha
            ));
        }
        if self.init_from.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err("bayes.init_from must name a deterministic run's weights file, got an empty path".into());
        }
        if !(self.init_delta.is_finite() && self.init_delta > 0.0) {
            return Err(format!(
                "bayes.init_delta must be finite and > 0, got {}",
                self.init_delta
            ));
        }
        match self.spike_slab_prior {
            Prior::SpikeAndSlab { pi, .. } if pi < 1.0 => {}
            other => {
                return Err(format!(
                    "bayes.spike_slab_prior must be a spike-and-slab prior with pi < 1, got {other}"
                ))
            }
        }
        if !(self.spike_slab_init_inclusion > 0.0 && self.spike_slab_init_inclusion < 1.0) {
            return Err(format!(
                "bayes.spike_slab_init_inclusion must be in (0, 1), got {}",
                self.spike_slab_init_inclusion
            ));
        }
        if !(self.spike_slab_temperature.is_finite() && self.spike_slab_temperature > 0.0) {
            return Err(format!(
                "bayes.spike_slab_temperature must be finite and > 0, got {}",
                self.spike_slab_temperature
            ));
        }
        if let Some(bad) = self.spike_slab_layer_inclusion.iter().find(|&&x| !(x > 0.0 && x < 1.0)) {
            return Err(format!(
                "bayes.spike_slab_layer_inclusion must hold probabilities in (0, 1), got {bad}"
            ));
        }
        if !(self.nested_dropout_p > 0.0 && self.nested_dropout_p <= 1.0) {
            return Err(format!(
                "bayes.nested_dropout_p must be in (0, 1], got {}",
                self.nested_dropout_p
            ));
        }
        if !(self.nested_temperature.is_finite() && self.nested_temperature > 0.0) {
            return Err(format!(
                "bayes.nested_temperature must be finite and > 0, got {}",
                self.nested_temperature
            ));
        }
        self.posterior_init()?;
        self.kl_reduction()?;
        if !["mean", "mc", "both"].contains(&self.eval_every_epoch.as_str()) {
            return Err(format!(
                "bayes.eval_every_epoch `{}` is unknown; known: mean, mc, both",
                self.eval_every_epoch
            ));
        }
        if let Some(w) = self.eval_widths.iter().find(|w| !(**w > 0.0 && **w <= 1.0)) {
            return Err(format!("bayes.eval_widths must lie in (0, 1], got {w}"));
        }
        Ok(())
    }

    /// The parsed `posterior_init`.
    pub fn posterior_init(&self) -> std::result::Result<secateur_bayes::layers::PosteriorInit, String> {
        self.posterior_init
            .parse()
            .map_err(|e| format!("bayes.posterior_init: {e}"))
    }

    /// The parsed `kl_reduction`.
    pub fn kl_reduction(&self) -> std::result::Result<secateur_bayes::layers::KlReduction, String> {
        self.kl_reduction
            .parse()
            .map_err(|e| format!("bayes.kl_reduction: {e}"))
    }

    /// The parsed `vd_granularity`.
    pub fn vd_granularity(&self) -> std::result::Result<VdGranularity, String> {
        VdGranularity::parse(&self.vd_granularity).map_err(|e| format!("bayes.vd_granularity: {e}"))
    }

    /// The GSM gate prior of `gate_shape`, `gate_scale`, `gate_unit_cost` (the error names the
    /// `bayes.gate_*` key).
    pub fn gate_prior(&self) -> std::result::Result<secateur_bayes::layers::GsmGatePrior, String> {
        secateur_bayes::layers::GsmGatePrior::new(self.gate_shape, self.gate_scale, self.gate_unit_cost).map_err(|e| {
            let key = match e {
                secateur_bayes::ConfigError::Invalid { field, .. } => format!("bayes.gate_{field}"),
                _ => "bayes.gate_*".into(),
            };
            format!("{key}: {e}")
        })
    }

    /// The parsed `divergence`.
    pub fn divergence(&self) -> std::result::Result<Divergence, String> {
        self.divergence.parse().map_err(|e| format!("bayes.divergence: {e}"))
    }

    /// The parsed `sampling`.
    pub fn sampling(&self) -> std::result::Result<secateur_bayes::Sampling, String> {
        parse_sampling(&self.sampling).map_err(|e| format!("bayes.sampling {e}"))
    }

    /// The options of the layer factories.
    pub fn factory_options(&self) -> FactoryOptions {
        FactoryOptions {
            prior: self.prior,
            init_std: self.init_std,
            // a validated config always parses; `build_model` checks it before building
            posterior_init: self.posterior_init().unwrap_or_default(),
            kl_reduction: self.kl_reduction().unwrap_or_default(),
            sparse_vd_threshold: self.sparse_vd_threshold,
            dropout: self.mc_dropout_p,
            // a validated config always parses; `build_model` checks it before building
            vd_granularity: self.vd_granularity().unwrap_or(VdGranularity::Weight),
            vd_init_log_alpha: self.vd_init_log_alpha,
            spike_slab_prior: self.spike_slab_prior,
            spike_slab_init_inclusion: self.spike_slab_init_inclusion,
            spike_slab_temperature: self.spike_slab_temperature,
            spike_slab_layer_inclusion: self.spike_slab_layer_inclusion.clone(),
            nested_dropout_p: self.nested_dropout_p,
            nested_temperature: self.nested_temperature,
            gate_prior: secateur_bayes::layers::GsmGatePrior {
                shape: self.gate_shape,
                scale: self.gate_scale,
                unit_cost: self.gate_unit_cost,
            },
            gate_init_inclusion: self.gate_init_inclusion,
            gate_threshold: self.gate_threshold,
            gate_lr_scale: self.gate_lr_scale,
        }
    }
}

/// The likelihood of the targets (`[likelihood]`; see `secateur_inference::likelihood`).
///
/// ```toml
/// [likelihood]
/// kind = "gaussian"            # or "categorical" (the default, classification)
/// noise = "heteroscedastic"    # or "fixed", "homoscedastic"
/// std = 1.0                    # fixed: σ; homoscedastic: initial σ (original target units)
/// min_std = 1e-3               # heteroscedastic: floor of σ (standardised target units)
/// ```
///
/// A Gaussian likelihood needs a regression table (`data.name` one of the table data sets) and
/// the `mlp` architecture; the categorical one an image data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LikelihoodConfig {
    /// `categorical` or `gaussian`. Default `categorical`.
    pub kind: String,
    /// Gaussian noise: `fixed` (σ = `std`), `homoscedastic` (one learned log σ, initialised at
    /// `std`) or `heteroscedastic` (σ predicted per input: the network outputs mean and raw scale,
    /// `σ = softplus(raw) + min_std`). Default `heteroscedastic`.
    pub noise: String,
    /// The fixed σ, or the initial σ of homoscedastic noise, in the ORIGINAL units of the target
    /// (divided by the training targets' standard deviation, since the model sees standardised
    /// targets); finite and > 0. Default 1.
    pub std: f64,
    /// Heteroscedastic noise: the floor of σ in standardised target units, finite and ≥ 0.
    /// Default 1e-3.
    pub min_std: f64,
}

impl Default for LikelihoodConfig {
    fn default() -> Self {
        Self {
            kind: "categorical".into(),
            noise: "heteroscedastic".into(),
            std: 1.0,
            min_std: 1e-3,
        }
    }
}

/// The names of `likelihood.kind`.
pub const LIKELIHOOD_KINDS: &[&str] = &["categorical", "gaussian"];

/// The names of `likelihood.noise`.
pub const NOISE_KINDS: &[&str] = &["fixed", "homoscedastic", "heteroscedastic"];

impl LikelihoodConfig {
    /// Whether this is the Gaussian (regression) likelihood.
    pub fn is_regression(&self) -> bool {
        self.kind == "gaussian"
    }

    /// Refuses unknown names and impossible values; the message names the field
    /// (`likelihood.…`).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !LIKELIHOOD_KINDS.contains(&self.kind.as_str()) {
            return Err(format!(
                "likelihood.kind `{}` is unknown; known: {}",
                self.kind,
                LIKELIHOOD_KINDS.join(", ")
            ));
        }
        if !(self.std.is_finite() && self.std > 0.0) {
            return Err(format!("likelihood.std must be finite and > 0, got {}", self.std));
        }
        if !(self.min_std.is_finite() && self.min_std >= 0.0) {
            return Err(format!(
                "likelihood.min_std must be finite and ≥ 0, got {}",
                self.min_std
            ));
        }
        self.noise(1.0).map(|_| ())
    }

    /// The Gaussian noise for targets standardised by a training-target standard deviation
    /// `target_std` (the fixed or initial σ is divided by it).
    pub fn noise(&self, target_std: f64) -> std::result::Result<secateur_inference::likelihood::Noise, String> {
        use secateur_inference::likelihood::Noise;
        Ok(match self.noise.as_str() {
            "fixed" => Noise::Fixed {
                std: self.std / target_std,
            },
            "homoscedastic" => Noise::Homoscedastic {
                init_std: self.std / target_std,
            },
            "heteroscedastic" => Noise::Heteroscedastic { min_std: self.min_std },
            other => {
                return Err(format!(
                    "likelihood.noise `{other}` is unknown; known: {}",
                    NOISE_KINDS.join(", ")
                ))
            }
        })
    }
}

impl StudyConfig {
    /// The same config with every weight layer's output width given (`model.widths`, forward
    /// order; `model.hidden` cleared): what a compacted network is built from.
    pub fn at_widths(&self, widths: Vec<usize>) -> StudyConfig {
        let mut c = self.clone();
        c.model.hidden = None;
        c.model.widths = Some(widths);
        c
    }

    /// The layer kind of `model.layers` (its registry entry); the error names the key and the
    /// known kinds.
    pub fn layer_kind(&self) -> std::result::Result<&'static LayerKind, String> {
        secateur_models::kind(&self.model.layers).map_err(|e| format!("model.layers: {e}"))
    }

    /// Whether `model.layers` is a Bayesian layer kind (ELBO training, Monte Carlo evaluation).
    pub fn is_bayesian(&self) -> bool {
        self.layer_kind().is_ok_and(|k| k.bayesian)
    }

    /// The training objective: cross-entropy for deterministic layers, the ELBO of `[bayes]` with
    /// `N = train_size` otherwise.
    pub fn objective(&self, train_size: usize) -> std::result::Result<Objective, String> {
        if !self.is_bayesian() {
            return Ok(Objective::CrossEntropy);
        }
        let b = &self.bayes;
        Ok(Objective::Elbo(ElboConfig {
            divergence: b.divergence()?,
            beta: b.beta.clone(),
            temperature: b.temperature,
            mc_samples: b.mc_samples,
            train_size,
        }))
    }
}

/// The dotted key of the first non-finite float in `v` (depth first, in key order), if any.
fn non_finite_key(path: &str, v: &toml::Value) -> Option<String> {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        toml::Value::Float(f) if !f.is_finite() => Some(path.to_string()),
        toml::Value::Table(t) => t.iter().find_map(|(k, v)| non_finite_key(&join(k), v)),
        toml::Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, v)| non_finite_key(&format!("{path}[{i}]"), v)),
        _ => None,
    }
}

/// Refuses a study name that is empty, `.` or `..`, or holds a path separator or a NUL: the
/// default run directory is `runs/<name>-<timestamp>`, which must stay inside `runs/`.
pub fn check_name(field: &str, name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(format!(
            "{field} `{name}` must be a plain name (no path separators, not empty, `.` or `..`): it names the run \
             directory under runs/"
        ));
    }
    Ok(())
}

impl StudyConfig {
    /// Parses a config from TOML text, applying `key=value` overrides first; `source` names the
    /// file in errors.
    pub fn from_toml(text: &str, source: &str, overrides: &[String]) -> Result<Self> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ExpError::config(source, e.to_string()))?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        if let Some(key) = non_finite_key("", &toml::Value::Table(table.clone())) {
            return Err(ExpError::config(
                source,
                format!("{key} is not a finite number (NaN and infinities are refused in every field)"),
            ));
        }
        let cfg: StudyConfig = table
            .try_into()
            .map_err(|e: toml::de::Error| ExpError::config(source, e.to_string()))?;
        cfg.validate().map_err(|m| ExpError::config(source, m))?;
        Ok(cfg)
    }

    /// Reads a config file (see [`StudyConfig::from_toml`]). A file with neither a `[data]` nor
    /// a `[model]` section (an empty or truncated file, or the wrong file) is refused rather than
    /// training the defaults silently.
    pub fn from_file(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ExpError::io(path, e))?;
        let source = path.display().to_string();
        let cfg = Self::from_toml(&text, &source, overrides)?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| ExpError::config(&source, e.to_string()))?;
        if !table.contains_key("data") && !table.contains_key("model") {
            return Err(ExpError::config(
                &source,
                "has neither a [data] nor a [model] section: a run's config names its data and model (see \
                 experiments/configs/quickstart.toml); an empty file would train the defaults",
            ));
        }
        Ok(cfg)
    }

    /// The fully resolved config as TOML (what `config.toml` in a run directory holds).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| ExpError::config("resolved config", e.to_string()))
    }

    /// Refuses impossible values; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        check_name("name", &self.name)?;
        let d = &self.data;
        if d.batch_size == 0 {
            return Err("data.batch_size must be at least 1".into());
        }
        if d.eval_batch_size == 0 {
            return Err("data.eval_batch_size must be at least 1".into());
        }
        if !(0.0..1.0).contains(&d.val_fraction) {
            return Err(format!("data.val_fraction must be in [0, 1), got {}", d.val_fraction));
        }
        if !secateur_models::arch::ARCHITECTURES.contains(&self.model.arch.as_str()) {
            return Err(format!(
                "model.arch `{}` is unknown; known: {}",
                self.model.arch,
                secateur_models::arch::ARCHITECTURES.join(", ")
            ));
        }
        let kind = secateur_models::kind(&self.model.layers).map_err(|_| {
            format!(
                "model.layers `{}` is unknown; known: {}",
                self.model.layers,
                secateur_models::kind_names().join(", ")
            )
        })?;
        self.model.dtype().map_err(|e| e.to_string())?;
        if let Some(h) = &self.model.hidden {
            if self.model.arch != "mlp" {
                return Err(format!(
                    "model.hidden applies to the mlp only, not to `{}`",
                    self.model.arch
                ));
            }
            if h.contains(&0) {
                return Err(format!("model.hidden must hold positive widths, got {h:?}"));
            }
        }
        if let Some(w) = &self.model.widths {
            if self.model.hidden.is_some() {
                return Err("model.widths and model.hidden cannot both be set (widths gives every layer)".into());
            }
            if w.is_empty() || w.contains(&0) {
                return Err(format!("model.widths must hold positive widths, got {w:?}"));
            }
        }
        self.bayes.validate()?;
        self.validate_likelihood()?;
        self.greg.validate()?;
        self.pruning.validate()?;
        if !self.pruning.is_off() {
            if self.model.layers != "deterministic" {
                return Err(format!(
                    "pruning.method `{}` trains deterministic layers; model.layers is `{}`",
                    self.pruning.method, self.model.layers
                ));
            }
            if self.greg.enabled() || !self.posterior.is_none() || self.likelihood.is_regression() {
                return Err(format!(
                    "pruning.method `{}` trains one classifier; it cannot be combined with [greg], [posterior] or a regression likelihood",
                    self.pruning.method
                ));
            }
        }
        self.posterior.validate(self.train.epochs, d.val_fraction > 0.0)?;
        if !self.posterior.is_none() && self.model.layers != "deterministic" {
            return Err(format!(
                "posterior.kind `{}` needs model.layers = \"deterministic\" (a posterior over a trained network)",
                self.posterior.kind
            ));
        }
        if self.posterior.kind == "ensemble" && d.val_fraction > 0.0 {
            return Err(
                "posterior.kind `ensemble` with data.val_fraction > 0: each member's seed would hold out a different validation split"
                    .into(),
            );
        }
        if self.posterior.kind == "laplace"
            && self.likelihood.is_regression()
            && self.likelihood.noise == "heteroscedastic"
        {
            return Err(
                "posterior.kind `laplace` needs a fixed or homoscedastic Gaussian noise (likelihood.noise)".into(),
            );
        }
        if let Some(o) = &d.ood {
            if self.likelihood.is_regression() {
                return Err("data.ood applies to classification only".into());
            }
            if !crate::data::IMAGE_DATASETS.contains(&o.as_str()) {
                return Err(format!(
                    "data.ood `{o}` is not an image data set; known: {}",
                    crate::data::IMAGE_DATASETS.join(", ")
                ));
            }
        }
        if self.greg.enabled() && (self.model.layers != "deterministic" || self.likelihood.is_regression()) {
            return Err("greg needs model.layers = \"deterministic\" and a classification likelihood".into());
        }
        if !self.bayes.eval_widths.is_empty() && !kind.nested {
            return Err(format!(
                "bayes.eval_widths needs a nested layer kind (nested-dropout, variational-nested-dropout), \
                 model.layers is `{}`",
                self.model.layers
            ));
        }
        let o = &self.optim;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return Err(format!("optim.lr must be positive, got {}", o.lr));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return Err(format!("optim.weight_decay must be ≥ 0, got {}", o.weight_decay));
        }
        match o.kind.as_str() {
            "sgd" => {
                if !(0.0..1.0).contains(&o.momentum) {
                    return Err(format!("optim.momentum must be in [0, 1), got {}", o.momentum));
                }
                if o.nesterov && o.momentum == 0.0 {
                    return Err("optim.nesterov needs optim.momentum > 0".into());
                }
            }
            "adamw" => {
                if !(0.0..1.0).contains(&o.beta1) {
                    return Err(format!("optim.beta1 must be in [0, 1), got {}", o.beta1));
                }
                if !(0.0..1.0).contains(&o.beta2) {
                    return Err(format!("optim.beta2 must be in [0, 1), got {}", o.beta2));
                }
                if !(o.eps.is_finite() && o.eps > 0.0) {
                    return Err(format!("optim.eps must be positive, got {}", o.eps));
                }
            }
            k => return Err(format!("optim.kind `{k}` is unknown; known: sgd, adamw")),
        }
        if self.train.epochs == 0 {
            return Err("train.epochs must be at least 1".into());
        }
        self.train
            .schedule
            .validate()
            .map_err(|e| format!("train.schedule: {e}"))?;
        Ok(())
    }
}

impl StudyConfig {
    /// The likelihood section and its fit with the data set and architecture.
    fn validate_likelihood(&self) -> std::result::Result<(), String> {
        self.likelihood.validate()?;
        let table = crate::data::TABLE_DATASETS.contains(&self.data.name.as_str());
        if self.likelihood.is_regression() {
            if !table {
                return Err(format!(
                    "likelihood.kind = \"gaussian\" needs a regression table in data.name ({}), got `{}`",
                    crate::data::TABLE_DATASETS.join(", "),
                    self.data.name
                ));
            }
            if self.model.arch != "mlp" {
                return Err(format!(
                    "likelihood.kind = \"gaussian\": regression tables need model.arch = \"mlp\", got `{}`",
                    self.model.arch
                ));
            }
            if self.data.val_fraction > 0.0 {
                return Err("data.val_fraction is not supported for regression tables (use data.test_fraction)".into());
            }
            if self.bayes.eval_every_epoch != "mean" {
                return Err(format!(
                    "bayes.eval_every_epoch = \"{}\" is for classification; a regression history evaluates the posterior mean",
                    self.bayes.eval_every_epoch
                ));
            }
            if !(self.data.test_fraction > 0.0 && self.data.test_fraction < 1.0) {
                return Err(format!(
                    "data.test_fraction must be in (0, 1), got {}",
                    self.data.test_fraction
                ));
            }
        } else if table {
            return Err(format!(
                "data.name `{}` is a regression table: set likelihood.kind = \"gaussian\"",
                self.data.name
            ));
        }
        Ok(())
    }
}

/// Applies one `a.b.c=value` override to a TOML table. The value is read as TOML (`0.1`, `true`,
/// `[30, 60]`, `"text"`); anything that is not valid TOML is taken as a string.
fn apply_override(table: &mut toml::Table, spec: &str) -> Result<()> {
    let (key, raw) = spec
        .split_once('=')
        .ok_or_else(|| ExpError::config("--set", format!("`{spec}` is not key=value")))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(|k| k.is_empty()) {
        return Err(ExpError::config("--set", format!("`{spec}` has an empty key")));
    }
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.trim().to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(ExpError::config("--set", format!("`{key}`: `{p}` is not a section"))),
        };
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `greg.method`, `greg.granularity` and `greg.scope` are read into their enums, written
    /// back under the same names as before (a run's `config.toml` is unchanged), and an unknown
    /// name is refused naming the field and the valid names, whether or not `greg` is on.
    #[test]
    fn greg_names_are_read_into_enums_and_written_back_unchanged() -> Result<()> {
        use secateur_pruning::{greg::Granularity, Scope};
        let d = StudyConfig::default();
        assert_eq!(
            (d.greg.method.clone(), d.greg.granularity, d.greg.scope),
            (GregMethod::Off, Granularity::Filter, Scope::PerLayer)
        );
        let text = d.to_toml()?;
        for line in ["method = \"\"", "granularity = \"filter\"", "scope = \"layer\""] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        let set = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let g = StudyConfig::from_toml(
            "",
            "c.toml",
            &set(&[
                "greg.method=\"greg2\"",
                "greg.granularity=\"weight\"",
                "greg.scope=\"global\"",
            ]),
        )?;
        assert_eq!(
            (g.greg.method.clone(), g.greg.granularity, g.greg.scope),
            (GregMethod::Greg2, Granularity::Weight, Scope::Global)
        );
        assert!(g.greg.enabled() && !d.greg.enabled());
        let again = g.to_toml()?;
        assert!(
            again.contains("method = \"greg2\"") && again.contains("scope = \"global\""),
            "{again}"
        );
        assert_eq!(StudyConfig::from_toml(&again, "round trip", &[])?, g);
        assert_eq!(serde_json::Value::from(GregMethod::Greg1), serde_json::json!("greg1"));
        for (bad, want) in [
            (
                "greg.scope=\"per-layer\"",
                "greg.scope `per-layer` is unknown; use global or layer",
            ),
            (
                "greg.granularity=\"unit\"",
                "greg.granularity `unit` is unknown; use filter or weight",
            ),
            (
                "greg.method=\"greg3\"",
                "greg.method `greg3` is unknown; use greg1 or greg2",
            ),
        ] {
            let e = StudyConfig::from_toml("", "c.toml", &set(&[bad]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.contains("c.toml"), "{bad}: {e}");
        }
        Ok(())
    }

    #[test]
    fn defaults_validate_and_round_trip() -> Result<()> {
        let cfg = StudyConfig::default();
        assert!(cfg.validate().is_ok());
        let again = StudyConfig::from_toml(&cfg.to_toml()?, "round trip", &[])?;
        assert_eq!(cfg, again);
        Ok(())
    }

    #[test]
    fn names_with_path_separators_and_files_without_sections_are_refused() {
        for bad in ["../../escape", "a/b", "a\\b", "", ".."] {
            let e = StudyConfig::from_toml("", "x.toml", &[format!("name={bad:?}")])
                .unwrap_err()
                .to_string();
            assert!(e.contains("plain name"), "{bad}: {e}");
        }
        assert!(StudyConfig::from_toml("", "x.toml", &["name=\"ok-1.2\"".into()]).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        for text in ["", "[optim]\nlr = 0.1\n"] {
            std::fs::write(&p, text).unwrap();
            let e = StudyConfig::from_file(&p, &[]).unwrap_err().to_string();
            assert!(
                e.contains("neither a [data] nor a [model]") && e.contains("c.toml"),
                "{e}"
            );
        }
        std::fs::write(&p, "[model]\narch = \"mlp\"\n").unwrap();
        assert!(StudyConfig::from_file(&p, &[]).is_ok());
    }

    /// NaN and infinities are refused in every field, also in fields the chosen mode does not
    /// read (`optim.momentum` under AdamW, `data.test_fraction` for image data; found by the
    /// config fuzzer of `experiments/fuzz`), naming the key.
    #[test]
    fn non_finite_numbers_are_refused_in_every_field() {
        for (set, key) in [
            ("data.test_fraction=nan", "data.test_fraction"),
            ("optim.momentum=inf", "optim.momentum"),
            ("optim.lr=-inf", "optim.lr"),
        ] {
            let e = StudyConfig::from_toml("[optim]\nkind = \"adamw\"\n", "x.toml", &[set.into()])
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("finite"), "{set}: {e}");
        }
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let e = StudyConfig::from_toml("[optim]\nlearning_rate = 0.1\n", "x.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("learning_rate") && e.contains("x.toml"), "{e}");
        let e = StudyConfig::from_toml("", "x.toml", &["model.depth=3".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("depth"), "{e}");
    }

    #[test]
    fn impossible_values_are_refused_by_field() {
        for (set, field) in [
            ("optim.lr=-1", "optim.lr"),
            ("data.batch_size=0", "data.batch_size"),
            ("train.epochs=0", "train.epochs"),
            ("optim.momentum=1.5", "optim.momentum"),
            ("model.arch=\"resnet9000\"", "model.arch"),
            ("optim.kind=\"lbfgs\"", "optim.kind"),
            ("data.val_fraction=1.0", "data.val_fraction"),
            ("model.layers=gaussian-process", "model.layers"),
            ("bayes.mc_samples=0", "bayes.mc_samples"),
            ("bayes.eval_samples=0", "bayes.eval_samples"),
            ("bayes.init_std=0", "bayes.init_std"),
            ("bayes.temperature=-1", "bayes.temperature"),
            ("bayes.divergence=\"js:2\"", "bayes.divergence"),
            ("bayes.divergence=\"wasserstein\"", "bayes.divergence"),
            ("bayes.sampling=\"exact\"", "bayes.sampling"),
            ("bayes.beta={kind=\"constant\",value=-0.5}", "bayes.beta"),
            ("bayes.prior={kind=\"gaussian\",mean=0.0,std=0.0}", "std"),
            ("bayes.prior={kind=\"cauchy\"}", "cauchy"),
            ("bayes.mc_dropout_p=1.0", "bayes.mc_dropout_p"),
            ("bayes.vd_granularity=\"layer\"", "bayes.vd_granularity"),
            ("bayes.vd_init_log_alpha=0.5", "bayes.vd_init_log_alpha"),
            ("bayes.vd_init_log_alpha=-9", "bayes.vd_init_log_alpha"),
            ("bayes.init_delta=0", "bayes.init_delta"),
            ("bayes.init_delta=-0.1", "bayes.init_delta"),
            ("bayes.init_delta=nan", "bayes.init_delta"),
            ("bayes.init_from=\"\"", "bayes.init_from"),
            ("likelihood.kind=\"poisson\"", "likelihood.kind"),
            ("likelihood.kind=\"gaussian\"", "regression table"),
            ("data.name=\"diabetes\"", "likelihood.kind"),
            ("model.hidden=[50]", "model.hidden"),
            ("model.widths=[6, 0, 120, 84, 10]", "model.widths"),
            ("model.widths=[]", "model.widths"),
            (
                "bayes.spike_slab_layer_inclusion=[0.1, 1.0]",
                "bayes.spike_slab_layer_inclusion",
            ),
            (
                "bayes.spike_slab_prior={kind=\"gaussian\",mean=0.0,std=1.0}",
                "bayes.spike_slab_prior",
            ),
            (
                "bayes.spike_slab_prior={kind=\"spike-and-slab\",pi=1.0,slab_std=1.0}",
                "bayes.spike_slab_prior",
            ),
            ("bayes.spike_slab_init_inclusion=1.0", "bayes.spike_slab_init_inclusion"),
            ("bayes.spike_slab_temperature=0", "bayes.spike_slab_temperature"),
            ("bayes.nested_dropout_p=0", "bayes.nested_dropout_p"),
            ("bayes.nested_temperature=-1", "bayes.nested_temperature"),
            ("bayes.eval_widths=[0.5,1.5]", "bayes.eval_widths"),
            ("bayes.eval_widths=[0.5]", "bayes.eval_widths"),
            ("bayes.gate_shape=0", "bayes.gate_shape"),
            ("bayes.gate_scale=-1", "bayes.gate_scale"),
            ("bayes.gate_unit_cost=-1", "bayes.gate_unit_cost"),
            ("bayes.gate_init_inclusion=1.0", "bayes.gate_init_inclusion"),
            ("bayes.gate_threshold=0", "bayes.gate_threshold"),
            ("bayes.gate_lr_scale=0", "bayes.gate_lr_scale"),
        ] {
            let e = StudyConfig::from_toml("", "c.toml", &[set.into()])
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{set}: {e}");
        }
    }

    #[test]
    fn spike_slab_and_nested_configs_parse() -> Result<()> {
        for (name, text) in [
            (
                "spike-slab-lenet300",
                include_str!("../configs/spike-slab-lenet300.toml"),
            ),
            (
                "spike-slab-lenet300-smoke",
                include_str!("../configs/spike-slab-lenet300-smoke.toml"),
            ),
            (
                "nested-dropout-lenet5",
                include_str!("../configs/nested-dropout-lenet5.toml"),
            ),
            (
                "nested-dropout-lenet5-smoke",
                include_str!("../configs/nested-dropout-lenet5-smoke.toml"),
            ),
        ] {
            let cfg = StudyConfig::from_toml(text, name, &[])?;
            assert_eq!(cfg.name, name);
            assert!(cfg.is_bayesian(), "{name}");
        }
        let cfg = StudyConfig::from_toml(
            include_str!("../configs/nested-dropout-lenet5.toml"),
            "nested",
            &["model.layers=nested-dropout".into()],
        )?;
        assert_eq!(cfg.bayes.eval_widths, vec![0.25, 0.5, 0.75, 1.0]);
        assert!(!cfg.is_bayesian());
        Ok(())
    }

    #[test]
    fn overrides_parse_toml_values() -> Result<()> {
        let cfg = StudyConfig::from_toml(
            "",
            "c",
            &["optim.lr=0.2".into(), "seed=9".into(), "model.arch=mlp".into()],
        )?;
        assert_eq!(cfg.optim.lr, 0.2);
        assert_eq!(cfg.seed, 9);
        assert_eq!(cfg.model.arch, "mlp");
        Ok(())
    }

    #[test]
    fn variational_dropout_and_empirical_bayes_keys_reach_the_factory() -> Result<()> {
        let cfg = StudyConfig::from_toml(
            "[model]\nlayers = \"variational-dropout\"\n[bayes]\nvd_granularity = \"unit\"\nvd_init_log_alpha = -4.0\n\
             init_from = \"runs/det/weights.safetensors\"\ninit_delta = 0.05\n",
            "c",
            &[],
        )?;
        assert!(cfg.is_bayesian());
        let o = cfg.bayes.factory_options();
        assert_eq!((o.vd_granularity, o.vd_init_log_alpha), (VdGranularity::Unit, -4.0));
        assert_eq!(
            cfg.bayes.init_from.as_deref(),
            Some(Path::new("runs/det/weights.safetensors"))
        );
        assert_eq!(cfg.bayes.init_delta, 0.05);
        assert_eq!(StudyConfig::from_toml(&cfg.to_toml()?, "round trip", &[])?, cfg);
        Ok(())
    }

    #[test]
    fn likelihood_section_is_checked_by_field() -> Result<()> {
        let base = [
            "data.name=\"wine-quality-red\"".to_string(),
            "model.arch=\"mlp\"".into(),
            "likelihood.kind=\"gaussian\"".into(),
        ];
        let cfg = StudyConfig::from_toml("", "c.toml", &base)?;
        assert!(cfg.likelihood.is_regression());
        for (set, field) in [
            ("likelihood.std=0", "likelihood.std"),
            ("likelihood.std=-2", "likelihood.std"),
            ("likelihood.std=nan", "likelihood.std"),
            ("likelihood.min_std=-1e-3", "likelihood.min_std"),
            ("likelihood.noise=\"laplace\"", "likelihood.noise"),
            ("likelihood.scale=1", "scale"),
            ("model.arch=\"lenet5\"", "model.arch"),
            ("data.test_fraction=0", "data.test_fraction"),
            ("model.hidden=[50, 0]", "model.hidden"),
        ] {
            let mut sets = base.to_vec();
            sets.push(set.into());
            let e = StudyConfig::from_toml("", "c.toml", &sets).unwrap_err().to_string();
            assert!(e.contains(field), "{set}: {e}");
        }
        // σ in original units is divided by the target std
        let mut sets = base.to_vec();
        sets.extend([
            "likelihood.noise=\"fixed\"".to_string(),
            "likelihood.std=0.5".into(),
            "model.hidden=[50]".into(),
        ]);
        let cfg = StudyConfig::from_toml("", "c.toml", &sets)?;
        assert_eq!(
            cfg.likelihood.noise(2.0).unwrap(),
            secateur_inference::likelihood::Noise::Fixed { std: 0.25 }
        );
        assert_eq!(StudyConfig::from_toml(&cfg.to_toml()?, "round trip", &[])?, cfg);
        Ok(())
    }
}
