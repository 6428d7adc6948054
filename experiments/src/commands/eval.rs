//! Test-set evaluation of a classification model, and the `eval` command. A Bayesian model is
//! evaluated by Monte Carlo, `p(y | x) ≈ (1/S) Σₛ p(y | x, wₛ)` over `S = bayes.eval_samples`
//! weight draws; a deterministic one (and the posterior mean, `Sampling::Mean`) by one pass.
//! Nested models are also evaluated at the widths of `bayes.eval_widths`.

use super::loaded::LoadedRun;
use super::setup::{eval_image_batches, sampling};
use crate::config::StudyConfig;
use crate::data::Normalizer;
use crate::error::Result;
use crate::seed_stream::SeedStream;
use candle_core::{Device, Tensor};
use secateur_bayes::{Ctx, Module, Sampling};
use secateur_inference::metrics::{classification_metrics, ClassificationMetrics};
use secateur_inference::predict::{predict, predict_mc, McPredictions, Predictions};
use secateur_models::Network;
use std::path::Path;

/// A network evaluated at a width: sets `ctx.width` for the nested layers (Rippel et al. 2014;
/// Cui et al. 2021) around the ordinary forward pass.
struct AtWidth<'a> {
    net: &'a Network,
    width: f64,
}

impl Module for AtWidth<'_> {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        let saved = ctx.width.replace(self.width);
        let y = self.net.forward(x, ctx);
        ctx.width = saved;
        y
    }
}

/// Test accuracy of a nested network at each of `bayes.eval_widths`, as
/// `(accuracy_width_0.50, accuracy)` pairs. At a width the nested layers keep a fixed prefix of
/// their units and draw nothing, and the weights of the nested kinds are point estimates, so one
/// deterministic pass (`Sampling::Mean`) per width is the whole evaluation.
pub(super) fn width_accuracies(
    net: &Network,
    test: &crate::data::ImageSet,
    norm: &Normalizer,
    cfg: &StudyConfig,
    dev: &Device,
) -> Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    for &w in &cfg.bayes.eval_widths {
        let m = AtWidth { net, width: w };
        let mut batches = eval_image_batches(cfg, test, norm, dev)?;
        let mut rng = SeedStream::Eval.rng(cfg.seed);
        let p = predict(&m, &mut batches, Sampling::Mean, &mut rng)?;
        let acc = classification_metrics(&p.probs, &p.labels, p.classes)?.accuracy;
        out.push((format!("accuracy_width_{w:.2}"), acc));
    }
    Ok(out)
}

/// Test-set evaluation: Monte Carlo with `bayes.eval_samples` samples for a Bayesian model
/// (the classification metrics are those of the averaged probabilities), the posterior mean /
/// deterministic forward pass otherwise.
pub(crate) struct Evaluation {
    pub(crate) preds: Predictions,
    pub(crate) metrics: ClassificationMetrics,
    pub(crate) mc: Option<McPredictions>,
}

pub(crate) fn evaluate(
    net: &Network,
    test: &crate::data::ImageSet,
    norm: &Normalizer,
    cfg: &StudyConfig,
    dev: &Device,
) -> Result<Evaluation> {
    let mut batches = eval_image_batches(cfg, test, norm, dev)?;
    let mut rng = SeedStream::Eval.rng(cfg.seed);
    if cfg.is_bayesian() {
        let mc = predict_mc(net, &mut batches, sampling(cfg)?, cfg.bayes.eval_samples, &mut rng)?;
        let p = &mc.predictions;
        let metrics = classification_metrics(&p.probs, &p.labels, p.classes)?;
        Ok(Evaluation {
            preds: p.clone(),
            metrics,
            mc: Some(mc),
        })
    } else {
        let p = predict(net, &mut batches, Sampling::Mean, &mut rng)?;
        let metrics = classification_metrics(&p.probs, &p.labels, p.classes)?;
        Ok(Evaluation {
            preds: p,
            metrics,
            mc: None,
        })
    }
}

/// The model's own predictive on a set `set` (an out-of-distribution or shifted set) (normalised with the training
/// set's `norm`): Monte Carlo for a Bayesian model, one pass otherwise, as [`evaluate`].
pub(crate) fn ood_predictions(
    net: &Network,
    set: &crate::data::ImageSet,
    norm: &Normalizer,
    cfg: &StudyConfig,
    dev: &Device,
) -> Result<McPredictions> {
    let ev = evaluate(net, set, norm, cfg, dev)?;
    Ok(match ev.mc {
        Some(mc) => mc,
        None => McPredictions::from_draws(&[ev.preds.probs], ev.preds.labels, ev.preds.classes)?,
    })
}

/// Accuracy of the posterior-mean network (`Sampling::Mean`) on `test`: one deterministic pass
/// over its [`eval_image_batches`], normalised by `norm`.
pub fn posterior_mean_accuracy(
    net: &Network,
    test: &crate::data::ImageSet,
    norm: &Normalizer,
    cfg: &StudyConfig,
    dev: &Device,
) -> Result<f64> {
    let mut batches = eval_image_batches(cfg, test, norm, dev)?;
    let mut rng = SeedStream::Eval.rng(cfg.seed);
    let p = predict(net, &mut batches, Sampling::Mean, &mut rng)?;
    Ok(classification_metrics(&p.probs, &p.labels, p.classes)?.accuracy)
}

/// Evaluates a finished classification run's final weights on its test set (regression runs:
/// [`regression::eval`](super::regression::eval)); a run with a `[posterior]` predicts with its
/// posterior (`posterior.safetensors`, or an ensemble's members) exactly as `train` did
/// ([`LoadedRun::predict`]). A run without `weights.safetensors` (unfinished) and weights with a
/// NaN or infinite entry are refused, naming the file or the tensor.
pub fn eval(
    run_dir: &Path,
    data_dir: Option<&Path>,
    device_name: &str,
) -> Result<(ClassificationMetrics, StudyConfig)> {
    let run = LoadedRun::open(run_dir, data_dir, device_name)?;
    let mc = run.predict(&run.data.test)?;
    let p = &mc.predictions;
    Ok((classification_metrics(&p.probs, &p.labels, p.classes)?, run.cfg))
}
