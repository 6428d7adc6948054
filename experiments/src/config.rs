//! Study configs: TOML files, nested as
//! `StudyConfig { name, seed, data, model, optim, train, bayes }`.
//!
//! Every section has documented defaults (its `Default`), unknown keys are refused by name
//! (`deny_unknown_fields`), and [`StudyConfig::validate`] refuses impossible values, naming the
//! field. `--set key=value` overrides are applied to the TOML tree before it is read, so they
//! are checked exactly like the file.

use crate::error::{ExpError, Result};
use secateur_bayes::{Divergence, Prior};
use secateur_inference::elbo::{BetaSchedule, ElboConfig, Objective};
use secateur_inference::schedule::Schedule;
use secateur_models::bayes_factory::{is_bayesian, FactoryOptions, LAYER_KINDS};
use serde::{Deserialize, Serialize};
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
        }
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
    /// `sparse-vd` (Molchanov et al. 2017) or `mc-dropout` (Gal & Ghahramani 2016). Default
    /// `deterministic`.
    pub layers: String,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            arch: "lenet5".into(),
            layers: "deterministic".into(),
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
/// divergence = "kl"            # or "kl-mc:8", "js:0.5"
/// beta = { kind = "linear", delay = 5, warmup = 15 }
/// temperature = 1.0
/// mc_samples = 1
/// eval_samples = 10
/// sampling = "local"           # or "weight", "flipout"
/// sparse_vd_threshold = 3.0
/// mc_dropout_p = 0.1
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
    /// Initial posterior standard deviation of the mean-field layers, `softplus(ρ₀)`. Default 1e-3.
    pub init_std: f64,
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
    /// Estimator of the Gaussian layers: `local` (local reparameterisation, Kingma et al. 2015),
    /// `weight` (one weight draw per batch, Blundell et al. 2015) or `flipout` (Wen et al. 2018).
    /// Default `local`.
    pub sampling: String,
    /// Sparse VD: weights with `log α ≥ sparse_vd_threshold` are zero at test time. Default 3.
    pub sparse_vd_threshold: f64,
    /// MC dropout: drop probability in [0, 1). Default 0.1.
    pub mc_dropout_p: f64,
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
            init_std: f.init_std,
            divergence: "kl".into(),
            beta: BetaSchedule::default(),
            temperature: 1.0,
            mc_samples: 1,
            eval_samples: 10,
            sampling: "local".into(),
            sparse_vd_threshold: f.sparse_vd_threshold,
            mc_dropout_p: f.dropout,
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

impl BayesConfig {
    /// Refuses impossible values; the message names the field (`bayes.…`).
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.prior.validate().map_err(|e| format!("bayes.prior: {e}"))?;
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
        Ok(())
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
        use secateur_bayes::Sampling;
        match self.sampling.as_str() {
            "local" => Ok(Sampling::Local),
            "weight" => Ok(Sampling::Weight),
            "flipout" => Ok(Sampling::Flipout),
            other => Err(format!(
                "bayes.sampling `{other}` is unknown; known: {}",
                SAMPLING_NAMES.join(", ")
            )),
        }
    }

    /// The options of the layer factories.
    pub fn factory_options(&self) -> FactoryOptions {
        FactoryOptions {
            prior: self.prior,
            init_std: self.init_std,
            sparse_vd_threshold: self.sparse_vd_threshold,
            dropout: self.mc_dropout_p,
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

impl StudyConfig {
    /// Whether `model.layers` is a Bayesian layer kind (ELBO training, Monte Carlo evaluation).
    pub fn is_bayesian(&self) -> bool {
        is_bayesian(&self.model.layers)
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

impl StudyConfig {
    /// Parses a config from TOML text, applying `key=value` overrides first; `source` names the
    /// file in errors.
    pub fn from_toml(text: &str, source: &str, overrides: &[String]) -> Result<Self> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ExpError::config(source, e.to_string()))?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let cfg: StudyConfig = table
            .try_into()
            .map_err(|e: toml::de::Error| ExpError::config(source, e.to_string()))?;
        cfg.validate().map_err(|m| ExpError::config(source, m))?;
        Ok(cfg)
    }

    /// Reads a config file (see [`StudyConfig::from_toml`]).
    pub fn from_file(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ExpError::io(path, e))?;
        Self::from_toml(&text, &path.display().to_string(), overrides)
    }

    /// The fully resolved config as TOML (what `config.toml` in a run directory holds).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| ExpError::config("resolved config", e.to_string()))
    }

    /// Refuses impossible values; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
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
        if !LAYER_KINDS.contains(&self.model.layers.as_str()) {
            return Err(format!(
                "model.layers `{}` is unknown; known: {}",
                self.model.layers,
                LAYER_KINDS.join(", ")
            ));
        }
        self.bayes.validate()?;
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

    #[test]
    fn defaults_validate_and_round_trip() -> Result<()> {
        let cfg = StudyConfig::default();
        assert!(cfg.validate().is_ok());
        let again = StudyConfig::from_toml(&cfg.to_toml()?, "round trip", &[])?;
        assert_eq!(cfg, again);
        Ok(())
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
}
