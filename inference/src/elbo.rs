//! The training objective: plain cross-entropy, or the (tempered, annealed) negative ELBO.
//!
//! For a training set of `N` examples, a mini-batch `B`, `S` Monte Carlo samples of the network's
//! noise and the summed divergence `D = Σ_layers D(q ‖ p)` of every registered probabilistic
//! layer ([`ParamStore::divergence`](secateur_bayes::ParamStore::divergence)), the loss
//! minimised at global step `t` is
//!
//! ```text
//! L_t = (1/S) Σₛ NLL_s  +  β(t) · T · D / N,       NLL_s = −(1/|B|) Σ_{i∈B} log p(yᵢ | xᵢ, wₛ)
//! ```
//!
//! i.e. the negative ELBO of Blundell et al. 2015 (eq. (1)–(2), their "minibatch weighting"
//! with `π_i = 1/M` per batch) divided by `N`, so its scale is that of the cross-entropy and
//! learning rates carry over from deterministic training. `N` is explicit
//! ([`ElboConfig::train_size`]), never inferred from the batch.
//!
//! **β(t)** anneals the divergence ([`BetaSchedule`]): constant, linear warm-up (Bowman et al.
//! 2016; Sønderby et al. 2016; Molchanov et al. 2017 train sparse VD with a KL weight rising from
//! 0 to 1), or cyclical (Fu et al. 2019). β is evaluated at the fractional epoch
//! `t = epoch + step / steps_per_epoch`, so it changes smoothly within an epoch.
//!
//! **Temperature T** (cold posteriors, Wenzel et al. 2020, "How good is the Bayes posterior in
//! deep neural networks really?"). Wenzel et al. temper the whole posterior,
//! `p_T(w | D) ∝ exp(−U(w) / T)` with `U = −Σᵢ log p(yᵢ | xᵢ, w) − log p(w)`. secateur uses the
//! **likelihood-tempering** convention instead: the tempered target is
//! `p_T(w | D) ∝ p(D | w)^{1/T} p(w)`, whose variational objective is
//! `E_q[−log p(D | w)] / T + KL(q ‖ p)`; multiplied by `T / N` this is exactly the loss above
//! with the divergence scaled by `T`. `T = 1` is the ordinary ELBO, `T < 1` a cold posterior
//! (the data count `1/T` times), `T > 1` a warm one. (Tempering the prior too would add
//! `(1 − T) · H[q] / N`; with a Gaussian prior that is a change of prior variance, which a prior
//! config can express directly.)
//!
//! `log p(yᵢ | xᵢ, wₛ)` is the trainer's likelihood ([`crate::likelihood`]): the softmax
//! cross-entropy of integer labels (categorical, the default), or the Gaussian NLL
//! `Σ_d [½ log(2π σ²) + (y − μ)² / (2σ²)]` of float targets for regression, with fixed, learned
//! homoscedastic, or predicted heteroscedastic noise. A learned noise scale is a parameter of the
//! model, so it is fitted by the same gradient steps (a point estimate, not a posterior).
//!
//! The deterministic objective [`Objective::CrossEntropy`] is the mean NLL of one forward pass
//! under that likelihood ([`OnePassNll`]); with the categorical likelihood it is the softmax
//! cross-entropy.
//!
//! **One formula, three doors.** [`elbo_from_divergence`] is the only code that forms
//! `NLL + w · D`. [`elbo_loss`] calls it with the analytic KL of a [`ParamStore`] and
//! `w = β · T / N` ([`divergence_weight`]), for a library user who computes the NLL themselves;
//! [`ElboConfig`]'s [`TrainingObjective`] implementation, which the trainer uses, calls it with
//! the configured divergence and `w = β(t) · T / N`.

use crate::objective::{expected_nll, scalar, BatchLoss, ObjectiveContext, OnePassNll, TrainingObjective};
use candle_core::{bail, Result, Tensor};
use secateur_bayes::{Divergence, ParamStore, SeededRng};
use serde::{Deserialize, Serialize};

/// The weight β(t) of the divergence term, as a function of the fractional epoch `t ≥ 0`
/// (epochs from 0). In a TOML config it is a table tagged by `kind`:
///
/// ```toml
/// beta = { kind = "constant", value = 1.0 }
/// beta = { kind = "linear", delay = 5, warmup = 15, max = 1.0 }
/// beta = { kind = "cyclical", period = 10, ratio = 0.5, max = 1.0 }
/// ```
///
/// ```
/// use secateur_inference::elbo::BetaSchedule;
/// let b = BetaSchedule::Linear { delay: 2.0, warmup: 4.0, max: 1.0 };
/// assert_eq!(b.at(1.0), 0.0);
/// assert_eq!(b.at(4.0), 0.5);
/// assert_eq!(b.at(9.0), 1.0);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BetaSchedule {
    /// `β(t) = value`.
    Constant {
        /// The weight, finite and ≥ 0.
        value: f64,
    },
    /// `β(t) = max · clamp((t − delay) / warmup, 0, 1)`: zero for `delay` epochs, then a linear
    /// rise to `max` over `warmup` epochs (`warmup = 0`: a step at `delay`).
    Linear {
        /// Epochs with β = 0 before the rise (≥ 0). Default 0.
        #[serde(default)]
        delay: f64,
        /// Length of the rise in epochs (≥ 0).
        warmup: f64,
        /// Final weight (finite, ≥ 0). Default 1.
        #[serde(default = "one")]
        max: f64,
    },
    /// Cyclical annealing (Fu, Li, Liu, Gao, Celikyilmaz & Carin 2019, eq. (5)): with
    /// `τ = (t mod period) / period`, `β(t) = max · min(1, τ / ratio)`: each cycle rises linearly
    /// over its first `ratio` fraction and stays at `max` for the rest.
    Cyclical {
        /// Cycle length in epochs (> 0).
        period: f64,
        /// Fraction of each cycle spent rising, in (0, 1]. Default 0.5 (the paper's R).
        #[serde(default = "half")]
        ratio: f64,
        /// Weight at the top of each cycle (finite, ≥ 0). Default 1.
        #[serde(default = "one")]
        max: f64,
    },
}

fn one() -> f64 {
    1.0
}
fn half() -> f64 {
    0.5
}

impl Default for BetaSchedule {
    /// β = 1 throughout: the ordinary ELBO.
    fn default() -> Self {
        BetaSchedule::Constant { value: 1.0 }
    }
}

fn nonneg(field: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v >= 0.0) {
        bail!("field `{field}` must be finite and ≥ 0, got {v}");
    }
    Ok(())
}

impl BetaSchedule {
    /// Refuses negative or non-finite weights and lengths; the message names the field.
    pub fn validate(&self) -> Result<()> {
        match *self {
            BetaSchedule::Constant { value } => nonneg("value", value),
            BetaSchedule::Linear { delay, warmup, max } => {
                nonneg("delay", delay)?;
                nonneg("warmup", warmup)?;
                nonneg("max", max)
            }
            BetaSchedule::Cyclical { period, ratio, max } => {
                if !(period.is_finite() && period > 0.0) {
                    bail!("field `period` must be finite and > 0, got {period}");
                }
                if !(ratio > 0.0 && ratio <= 1.0) {
                    bail!("field `ratio` must be in (0, 1], got {ratio}");
                }
                nonneg("max", max)
            }
        }
    }

    /// β at the fractional epoch `t` (epochs from 0).
    pub fn at(&self, t: f64) -> f64 {
        match *self {
            BetaSchedule::Constant { value } => value,
            BetaSchedule::Linear { delay, warmup, max } => {
                if t < delay {
                    0.0
                } else if warmup <= 0.0 {
                    max
                } else {
                    max * ((t - delay) / warmup).clamp(0.0, 1.0)
                }
            }
            BetaSchedule::Cyclical { period, ratio, max } => {
                let tau = t.rem_euclid(period) / period;
                max * (tau / ratio).min(1.0)
            }
        }
    }

    /// β at step `step` (from 0) of epoch `epoch` (from 0) with `steps` steps per epoch.
    pub fn at_step(&self, epoch: usize, step: usize, steps: usize) -> f64 {
        self.at(epoch as f64 + step as f64 / steps.max(1) as f64)
    }
}

/// The negative-ELBO objective's settings (see the [module docs](self) for the formula).
#[derive(Debug, Clone, PartialEq)]
pub struct ElboConfig {
    /// Which divergence every probabilistic layer contributes (`kl`, `kl-mc:S`, `js:α`).
    pub divergence: Divergence,
    /// The annealing schedule β(t).
    pub beta: BetaSchedule,
    /// Posterior temperature `T > 0` (likelihood tempering; 1 is the ordinary ELBO).
    pub temperature: f64,
    /// Monte Carlo samples `S ≥ 1` of the expected NLL per step (forward passes per batch).
    pub mc_samples: usize,
    /// The training-set size `N` (> 0) dividing the divergence.
    pub train_size: usize,
}

impl ElboConfig {
    /// The ordinary ELBO (`kl`, β = 1, T = 1, one sample) for a training set of `train_size`.
    pub fn new(train_size: usize) -> Self {
        Self {
            divergence: Divergence::Kl,
            beta: BetaSchedule::default(),
            temperature: 1.0,
            mc_samples: 1,
            train_size,
        }
    }

    /// Checks every field; the message names it.
    pub fn validate(&self) -> Result<()> {
        self.divergence
            .validate()
            .map_err(|e| candle_core::Error::Msg(format!("elbo divergence: {e}")))?;
        self.beta
            .validate()
            .map_err(|e| candle_core::Error::Msg(format!("elbo beta: {e}")))?;
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            bail!(
                "elbo: field `temperature` must be finite and > 0, got {}",
                self.temperature
            );
        }
        if self.mc_samples == 0 {
            bail!("elbo: field `mc_samples` must be at least 1, got 0");
        }
        if self.train_size == 0 {
            bail!("elbo: field `train_size` must be at least 1, got 0");
        }
        Ok(())
    }

    /// The factor multiplying the summed divergence at step `step` of epoch `epoch`:
    /// `β(t) · T / N` ([`divergence_weight`] at `β(t)`).
    pub fn divergence_weight(&self, epoch: usize, step: usize, steps: usize) -> f64 {
        divergence_weight(self.beta.at_step(epoch, step, steps), self.temperature, self.train_size)
    }
}

/// The weight `w = β · T / N` of the summed divergence in the per-example negative ELBO (see the
/// [module docs](self)), computed in this order.
///
/// ```
/// assert_eq!(secateur_inference::elbo::divergence_weight(0.5, 2.0, 100), 0.01);
/// ```
pub fn divergence_weight(beta: f64, temperature: f64, n_train: usize) -> f64 {
    beta * temperature / n_train as f64
}

/// The negative ELBO per example from its parts: `nll + weight · divergence`, a differentiable
/// scalar in `nll`'s dtype (the divergence is cast to it). `nll` is the (expected) mean NLL of
/// the batch, `divergence` the summed divergence `D` of the probabilistic layers and `weight`
/// usually [`divergence_weight`]`(β, T, N)` (Blundell et al. 2015, eq. (2) with minibatch
/// weighting, divided by `N`; Wenzel et al. 2020 for the temperature `T`). The trainer and
/// [`elbo_loss`] both form the loss here.
///
/// ```
/// use secateur_inference::elbo::elbo_from_divergence;
/// use candle_core::{Device, Tensor};
/// let nll = Tensor::new(2f64, &Device::Cpu)?;
/// let kl = Tensor::new(30f64, &Device::Cpu)?;
/// assert_eq!(elbo_from_divergence(&nll, &kl, 0.1)?.to_scalar::<f64>()?, 5.0);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn elbo_from_divergence(nll: &Tensor, divergence: &Tensor, weight: f64) -> Result<Tensor> {
    nll + (divergence.to_dtype(nll.dtype())? * weight)?
}

/// The tempered negative ELBO per example with the **analytic** divergence of every
/// probabilistic layer registered in `store`:
///
/// ```text
/// L = nll + β · T · KL(q ‖ p) / N
/// ```
///
/// `nll` is the batch's mean NLL (e.g. [`crate::likelihood::Likelihood::nll`] of a training
/// pass, or an average over several passes), `KL = Σ_layers KL(q ‖ p)` the closed form of each
/// layer ([`Divergence::Kl`]: analytic for Gaussian priors, the variational-dropout layers'
/// approximation), `n_train` the training-set size `N`, `beta` the weight β ≥ 0 and
/// `temperature` the posterior temperature `T > 0` (1: the ordinary ELBO of Blundell et al. 2015;
/// below 1 a cold posterior, Wenzel et al. 2020). With no probabilistic layer the KL is 0. No
/// random number is drawn. Fails, naming the argument, on `n_train = 0`, a negative or
/// non-finite β or a non-positive or non-finite `T`.
///
/// ```
/// use secateur_inference::elbo::elbo_loss;
/// use secateur_bayes::layers::{BayesLinear, BayesLinearConfig};
/// use secateur_bayes::{ParamBuilder, ParamStore, SeededRng};
/// use candle_core::{DType, Device, Tensor};
/// let store = ParamStore::new();
/// let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
/// let _fc = BayesLinear::new(&pb.pp("fc"), BayesLinearConfig::new(3, 2))?;
/// let nll = Tensor::new(0.7f32, &Device::Cpu)?;
/// let loss = elbo_loss(&nll, &store, 1000, 1.0, 1.0)?.to_scalar::<f32>()?;
/// assert!(loss > 0.7); // the KL of a σ = 1e-3 posterior from N(0, 1) is large
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn elbo_loss(nll: &Tensor, store: &ParamStore, n_train: usize, beta: f64, temperature: f64) -> Result<Tensor> {
    if n_train == 0 {
        bail!("elbo_loss: `n_train` must be at least 1, got 0");
    }
    nonneg("beta", beta).map_err(|e| candle_core::Error::Msg(format!("elbo_loss: {e}")))?;
    if !(temperature.is_finite() && temperature > 0.0) {
        bail!("elbo_loss: `temperature` must be finite and > 0, got {temperature}");
    }
    elbo_from_divergence(nll, &store.kl()?, divergence_weight(beta, temperature, n_train))
}

/// The negative ELBO of the [module docs](self): `S = mc_samples` training passes
/// ([`expected_nll`]), then — when the store has probabilistic layers — the configured
/// divergence (Monte Carlo divergences draw from `rng` after the passes), weighted by
/// `β(t) · T / N` at `cx.at`. Without probabilistic layers the loss is the expected NLL and
/// nothing more is drawn.
impl TrainingObjective for ElboConfig {
    fn batch_loss(&self, cx: &ObjectiveContext, x: &Tensor, y: &Tensor, rng: &mut SeededRng) -> Result<BatchLoss> {
        if self.mc_samples == 0 {
            bail!("elbo: mc_samples must be at least 1");
        }
        let (nll, outputs) = expected_nll(cx, x, y, self.mc_samples, rng)?;
        let at = cx.at;
        let beta = self.beta.at_step(at.epoch, at.step, at.steps);
        let (loss, divergence) = if cx.store.variational_layers().is_empty() {
            (nll.clone(), 0.0)
        } else {
            let (d, _) = cx.store.divergence(&self.divergence, rng)?;
            let dv = scalar(&d)?;
            let w = self.divergence_weight(at.epoch, at.step, at.steps);
            (elbo_from_divergence(&nll, &d, w)?, dv)
        };
        Ok(BatchLoss {
            loss,
            outputs,
            passes: self.mc_samples,
            nll: Some(scalar(&nll)?),
            divergence,
            beta,
        })
    }
}

/// Which built-in [`TrainingObjective`] the trainer minimises: the serialisable choice a config
/// makes ([`crate::train::TrainSettings::objective`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Objective {
    /// Mean negative log-likelihood of one forward pass (the deterministic objective): the softmax
    /// cross-entropy under the categorical likelihood (hence the name), the Gaussian NLL under a
    /// Gaussian one.
    #[default]
    CrossEntropy,
    /// The negative ELBO of the [module docs](self).
    Elbo(ElboConfig),
}

impl Objective {
    /// Checks the ELBO's fields (nothing to check for cross-entropy).
    pub fn validate(&self) -> Result<()> {
        match self {
            Objective::CrossEntropy => Ok(()),
            Objective::Elbo(c) => c.validate(),
        }
    }
}

/// The objective the value names: [`OnePassNll`] or the negative ELBO of its [`ElboConfig`].
impl TrainingObjective for Objective {
    fn batch_loss(&self, cx: &ObjectiveContext, x: &Tensor, y: &Tensor, rng: &mut SeededRng) -> Result<BatchLoss> {
        match self {
            Objective::CrossEntropy => OnePassNll.batch_loss(cx, x, y, rng),
            Objective::Elbo(c) => c.batch_loss(cx, x, y, rng),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_their_formulas() {
        let c = BetaSchedule::Constant { value: 0.3 };
        assert_eq!(c.at(0.0), 0.3);
        assert_eq!(c.at(100.0), 0.3);
        let l = BetaSchedule::Linear {
            delay: 1.0,
            warmup: 2.0,
            max: 2.0,
        };
        for (t, b) in [(0.0, 0.0), (1.0, 0.0), (1.5, 0.5), (2.0, 1.0), (3.0, 2.0), (10.0, 2.0)] {
            assert!((l.at(t) - b).abs() < 1e-12, "t={t}: {} vs {b}", l.at(t));
        }
        let step = BetaSchedule::Linear {
            delay: 2.0,
            warmup: 0.0,
            max: 1.0,
        };
        assert_eq!((step.at(1.99), step.at(2.0)), (0.0, 1.0));
        // Fu et al. 2019 with period 4, R = 0.5: rises over 2 epochs, flat for 2, restarts.
        let cyc = BetaSchedule::Cyclical {
            period: 4.0,
            ratio: 0.5,
            max: 1.0,
        };
        for (t, b) in [(0.0, 0.0), (1.0, 0.5), (2.0, 1.0), (3.5, 1.0), (4.0, 0.0), (5.0, 0.5)] {
            assert!((cyc.at(t) - b).abs() < 1e-12, "t={t}");
        }
        // step 50 of 100 in epoch 1 is t = 1.5
        assert!((l.at_step(1, 50, 100) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn bad_values_are_refused_by_field() {
        let e = |b: BetaSchedule| b.validate().unwrap_err().to_string();
        assert!(e(BetaSchedule::Constant { value: -0.1 }).contains("`value`"));
        assert!(e(BetaSchedule::Linear {
            delay: 0.0,
            warmup: -1.0,
            max: 1.0
        })
        .contains("`warmup`"));
        assert!(e(BetaSchedule::Cyclical {
            period: 0.0,
            ratio: 0.5,
            max: 1.0
        })
        .contains("`period`"));
        assert!(e(BetaSchedule::Cyclical {
            period: 2.0,
            ratio: 0.0,
            max: 1.0
        })
        .contains("`ratio`"));
        let mut c = ElboConfig::new(100);
        assert!(c.validate().is_ok());
        c.mc_samples = 0;
        assert!(c.validate().unwrap_err().to_string().contains("mc_samples"));
        let mut c = ElboConfig::new(100);
        c.temperature = 0.0;
        assert!(c.validate().unwrap_err().to_string().contains("temperature"));
        assert!(ElboConfig::new(0)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("train_size"));
    }

    #[test]
    fn serde_is_tagged_and_strict() {
        let b: BetaSchedule = serde_json::from_str(r#"{"kind":"linear","delay":5,"warmup":15}"#).unwrap();
        assert_eq!(
            b,
            BetaSchedule::Linear {
                delay: 5.0,
                warmup: 15.0,
                max: 1.0
            }
        );
        assert!(serde_json::from_str::<BetaSchedule>(r#"{"kind":"linear","warmup":1,"x":2}"#).is_err());
        assert!(serde_json::from_str::<BetaSchedule>(r#"{"kind":"sigmoid"}"#).is_err());
    }

    #[test]
    fn divergence_weight_is_beta_times_temperature_over_n() {
        let mut c = ElboConfig::new(50_000);
        c.temperature = 0.5;
        c.beta = BetaSchedule::Constant { value: 2.0 };
        assert!((c.divergence_weight(3, 7, 10) - 2.0 * 0.5 / 50_000.0).abs() < 1e-18);
    }
}
