//! Evaluation of a network on a data set, as a value: the [`Evaluation`] trait the trainer calls
//! after every epoch, and its default, [`PosteriorMeanEvaluation`].
//!
//! The trainer owns no metric code: it hands its model, the evaluation batches and a generator to
//! an [`Evaluation`] and stores the [`EvalMetrics`] it returns in the epoch's
//! [`EpochRecord`](crate::train::EpochRecord). The generator is a sub-stream of the run's seed
//! (stream `1 000 000 + epoch`), so evaluation never shifts the training stream.

use crate::batches::Batches;
use crate::likelihood::Likelihood;
use crate::metrics::{classification_metrics, regression_metrics, ClassificationMetrics, RegressionMetrics};
use crate::predict::{predict, predict_regression};
use candle_core::{bail, Result};
use secateur_bayes::{Module, Sampling, SeededRng};

/// The metrics of one evaluation pass; any may be absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalMetrics {
    /// Classification metrics (categorical likelihood) of the posterior-mean network.
    pub classification: Option<ClassificationMetrics>,
    /// Classification metrics of the Monte Carlo predictive `p̄ = (1/S) Σₛ softmax(f(x; wₛ))`
    /// ([`McEvaluation`]).
    pub classification_mc: Option<ClassificationMetrics>,
    /// Regression metrics (Gaussian likelihood).
    pub regression: Option<RegressionMetrics>,
}

/// Evaluates a model on a data set.
pub trait Evaluation {
    /// Runs `model` over `data`; stochastic layers draw from `rng`.
    fn evaluate(&mut self, model: &dyn Module, data: &mut dyn Batches, rng: &mut SeededRng) -> Result<EvalMetrics>;
}

impl<E: Evaluation + ?Sized> Evaluation for Box<E> {
    fn evaluate(&mut self, model: &dyn Module, data: &mut dyn Batches, rng: &mut SeededRng) -> Result<EvalMetrics> {
        (**self).evaluate(model, data, rng)
    }
}

/// The posterior-mean network (`Sampling::Mean`, one pass: no epistemic part) under a
/// likelihood: [`classification_metrics`] of the softmax probabilities for the categorical
/// likelihood, [`regression_metrics`] of the Gaussian predictive for a Gaussian one, in the
/// target units `y ↦ shift + scale · y` (default `(0, 1)`). The trainer's default.
#[derive(Debug, Clone)]
pub struct PosteriorMeanEvaluation {
    likelihood: Likelihood,
    target_units: (f64, f64),
}

impl PosteriorMeanEvaluation {
    /// Evaluation under `likelihood`, metrics in the batches' target units.
    pub fn new(likelihood: Likelihood) -> Self {
        Self {
            likelihood,
            target_units: (0.0, 1.0),
        }
    }

    /// Reports regression metrics for targets mapped by `y ↦ shift + scale · y`; fails unless
    /// `scale` is finite and > 0 and `shift` finite.
    pub fn with_target_units(mut self, shift: f64, scale: f64) -> Result<Self> {
        if !(shift.is_finite() && scale.is_finite() && scale > 0.0) {
            bail!("target units: `scale` must be finite and > 0 and `shift` finite, got {scale}, {shift}");
        }
        self.target_units = (shift, scale);
        Ok(self)
    }
}

impl Evaluation for PosteriorMeanEvaluation {
    fn evaluate(&mut self, model: &dyn Module, data: &mut dyn Batches, rng: &mut SeededRng) -> Result<EvalMetrics> {
        match &self.likelihood {
            Likelihood::Categorical => {
                let p = predict(model, data, Sampling::Mean, rng)?;
                Ok(EvalMetrics {
                    classification: Some(classification_metrics(&p.probs, &p.labels, p.classes)?),
                    ..Default::default()
                })
            }
            Likelihood::Gaussian(g) => {
                let p = predict_regression(model, g, data, Sampling::Mean, 1, rng)?;
                let (shift, scale) = self.target_units;
                Ok(EvalMetrics {
                    regression: Some(regression_metrics(&p.rescaled(shift, scale)?)?),
                    ..Default::default()
                })
            }
        }
    }
}

/// Classification by the Monte Carlo predictive: the softmax probabilities averaged over
/// `samples` stochastic passes under `sampling` (as the final test metrics of a Bayesian run),
/// and, `with_mean`, the posterior-mean network as well (one more pass).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct McEvaluation {
    /// How the layers draw (weight, local reparameterisation, Flipout, dropout masks).
    pub sampling: Sampling,
    /// Samples S ≥ 1 averaged.
    pub samples: usize,
    /// Also evaluate the posterior-mean network.
    pub with_mean: bool,
}

impl Evaluation for McEvaluation {
    fn evaluate(&mut self, model: &dyn Module, data: &mut dyn Batches, rng: &mut SeededRng) -> Result<EvalMetrics> {
        let mc = crate::predict::predict_mc(model, data, self.sampling, self.samples, rng)?;
        let p = &mc.predictions;
        let classification = if self.with_mean {
            let m = predict(model, data, Sampling::Mean, rng)?;
            Some(classification_metrics(&m.probs, &m.labels, m.classes)?)
        } else {
            None
        };
        Ok(EvalMetrics {
            classification,
            classification_mc: Some(classification_metrics(&p.probs, &p.labels, p.classes)?),
            regression: None,
        })
    }
}
