//! The `[posterior]` of a run in the `train` and `eval` commands: the SWAG collector observing
//! training (its state saved in every checkpoint, so that a resumed run collects exactly what a
//! straight one does), the Laplace fit after training, the posterior file of a finished run
//! (`posterior.safetensors`), and prediction by the posterior's predictive.

use super::setup::{eval_image_batches, TrainingSetup};
use crate::atomic;
use crate::config::{PriorPrecision, StudyConfig};
use crate::data::{ImageSet, Normalizer};
use crate::error::{ExpError, Result};
use crate::seed_stream::SeedStream;
use crate::store::RunDir;
use candle_core::{Device, Tensor};
use secateur_bayes::ParamStore;
use secateur_inference::batches::Batches;
use secateur_inference::laplace::{DiagCurvature, DiagLaplace, Laplace, LastLayerHessian, LastLayerLaplace};
use secateur_inference::likelihood::Likelihood;
use secateur_inference::metrics::auroc;
use secateur_inference::posterior::{predict_at_mean, predict_bma, BmaSettings, Ensemble, Posterior};
use secateur_inference::predict::McPredictions;
use secateur_inference::swag::{Swag, SwagCollector, SwagKind};
use secateur_inference::train::{Checkpoint, EpochRecord, Observer, StepInfo};
use secateur_models::Network;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The posterior of a finished run, in the run directory.
pub const POSTERIOR_FILE: &str = "posterior.safetensors";

/// The SWAG collector's state in each checkpoint directory.
const COLLECTOR_FILE: &str = "swag-collector.safetensors";

fn sorted(t: HashMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    t.into_iter().collect()
}

/// The SWAG collector of a run whose `[posterior]` is SWA, SWAG-diagonal or SWAG (`None`
/// otherwise), restored from the run's last checkpoint when the run resumes from one.
fn collector(
    cfg: &StudyConfig,
    store: &ParamStore,
    run: &RunDir,
    from_checkpoint: bool,
) -> Result<Option<SwagCollector>> {
    if !cfg.posterior.is_swag() {
        return Ok(None);
    }
    let swag = cfg
        .posterior
        .swag(cfg.train.epochs)
        .map_err(|m| ExpError::config("posterior", m))?;
    let mut c = SwagCollector::new(store, swag)?;
    if from_checkpoint {
        match run.read_checkpoint_part(COLLECTOR_FILE)? {
            Some(t) => c.restore(&sorted(t))?,
            None => {
                return Err(ExpError::Run {
                    path: run.path().to_path_buf(),
                    message: format!(
                        "its last checkpoint has no {COLLECTOR_FILE}: the SWAG collection cannot be resumed; start the run again"
                    ),
                })
            }
        }
    }
    Ok(Some(c))
}

/// The collector as an observer of training: it collects on its schedule, then saves its state
/// into the epoch's checkpoint directory before the recorder completes the checkpoint.
struct Collecting<'a> {
    collector: SwagCollector,
    run: &'a RunDir,
}

impl<'a> Collecting<'a> {
    /// Collects for the run in `run`.
    fn new(collector: SwagCollector, run: &'a RunDir) -> Self {
        Self { collector, run }
    }
}

impl Observer for Collecting<'_> {
    fn on_start(&mut self, epochs: usize, steps: usize, start: usize) -> candle_core::Result<()> {
        self.collector.on_start(epochs, steps, start)
    }
    fn on_step(&mut self, info: &StepInfo) -> candle_core::Result<()> {
        self.collector.on_step(info)
    }
    fn on_epoch(&mut self, record: &EpochRecord, ckpt: &Checkpoint) -> candle_core::Result<()> {
        self.collector.on_epoch(record, ckpt)?;
        self.run
            .write_checkpoint_part(ckpt.state.epochs_done, COLLECTOR_FILE, &self.collector.state()?)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

/// Trains the run in `run` ([`fit_run`](super::run_dir::fit_run)) with the SWAG collector of
/// its `[posterior]` observing, if it has one (restored from the last checkpoint when
/// `from_checkpoint`); returns the training state and the collector.
#[allow(clippy::too_many_arguments)]
pub(super) fn fit_run_collecting(
    cfg: &StudyConfig,
    store: &ParamStore,
    run: &RunDir,
    from_checkpoint: bool,
    trainer: &mut secateur_inference::train::Trainer<'_>,
    train: &mut dyn Batches,
    test: &mut dyn Batches,
    quiet: bool,
) -> Result<(secateur_inference::train::TrainState, Option<SwagCollector>)> {
    let mut collecting = collector(cfg, store, run, from_checkpoint)?.map(|c| Collecting::new(c, run));
    let state = super::run_dir::fit_run(
        trainer,
        train,
        test,
        run,
        quiet,
        collecting.as_mut().map(|c| c as &mut dyn Observer),
    )?;
    Ok((state, collecting.map(|c| c.collector)))
}

/// A fitted posterior of one of the `[posterior]` kinds.
pub enum Fitted {
    /// SWA, SWAG-diagonal or SWAG.
    Swag(Swag),
    /// The diagonal Laplace approximation over every weight.
    DiagLaplace(DiagLaplace),
    /// Last-layer Laplace.
    LastLayer(LastLayerLaplace),
    /// A deep ensemble.
    Ensemble(Ensemble),
    /// SVGD particles (an ensemble of kind `svgd`, saved in `posterior.safetensors`).
    Svgd(Ensemble),
}

impl Fitted {
    /// The posterior interface.
    pub fn posterior(&self) -> &dyn Posterior {
        match self {
            Fitted::Swag(p) => p,
            Fitted::DiagLaplace(p) => p,
            Fitted::LastLayer(p) => p,
            Fitted::Ensemble(p) => p,
            Fitted::Svgd(p) => p,
        }
    }

    /// The prior precision of a Laplace approximation.
    pub fn prior_precision(&self) -> Option<f64> {
        match self {
            Fitted::DiagLaplace(p) => Some(p.prior_precision()),
            Fitted::LastLayer(p) => Some(p.prior_precision()),
            _ => None,
        }
    }

    /// Writes `posterior.safetensors` into the run (an ensemble's members are its member runs).
    pub fn save(&self, run: &RunDir) -> Result<()> {
        if matches!(self, Fitted::Ensemble(_)) {
            return Ok(());
        }
        atomic::write_safetensors(&run.file(POSTERIOR_FILE), &self.posterior().tensors()?)
    }

    /// Reads the posterior a finished run saved (`None` for a run without `[posterior]`).
    pub fn load(cfg: &StudyConfig, run: &RunDir) -> Result<Option<Self>> {
        if cfg.posterior.is_none() {
            return Ok(None);
        }
        if cfg.posterior.kind == "ensemble" {
            return super::ensemble::load(cfg, run).map(|e| Some(Fitted::Ensemble(e)));
        }
        let file = run.file(POSTERIOR_FILE);
        if !file.is_file() {
            return Err(ExpError::Run {
                path: run.path().to_path_buf(),
                message: format!(
                    "{} is missing: the run's config has [posterior] kind `{}` but the run did not finish",
                    file.display(),
                    cfg.posterior.kind
                ),
            });
        }
        let t = sorted(crate::store::read_finite_safetensors(&file)?);
        Ok(Some(match cfg.posterior.kind.as_str() {
            "svgd" => Fitted::Svgd(Ensemble::from_tensors(&t)?.into_named("svgd")),
            "laplace" if cfg.posterior.last_layer() => Fitted::LastLayer(LastLayerLaplace::from_tensors(&t)?),
            "laplace" => Fitted::DiagLaplace(DiagLaplace::from_tensors(&t)?),
            _ => Fitted::Swag(Swag::from_tensors(&t)?),
        }))
    }
}

/// The posterior after training: the collector's SWA/SWAG posterior, or the Laplace
/// approximation fitted at the trained weights on the training set (evaluation batches, no
/// augmentation) with its prior precision chosen as `[posterior] prior_precision` says (the
/// validation split for `val-nll`). `None` for a run without `[posterior]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn fit(
    cfg: &StudyConfig,
    net: &Network,
    store: &ParamStore,
    collector: Option<&SwagCollector>,
    train_set: &ImageSet,
    val_set: &ImageSet,
    norm: &Normalizer,
    dev: &Device,
) -> Result<Option<Fitted>> {
    if cfg.posterior.is_swag() {
        return swag_posterior(cfg, collector).map(Some);
    }
    if cfg.posterior.kind != "laplace" {
        return Ok(None);
    }
    let mut data = eval_image_batches(cfg, train_set, norm, dev)?;
    let mut val = match val_set.is_empty() {
        true => None,
        false => Some(eval_image_batches(cfg, val_set, norm, dev)?),
    };
    let val = val.as_mut().map(|v| v as &mut dyn Batches);
    Ok(Some(fit_laplace(
        cfg,
        net,
        store,
        &mut data,
        &Likelihood::Categorical,
        val,
    )?))
}

/// The SWA, SWAG-diagonal or SWAG posterior of `[posterior] kind` from the run's collector.
pub(super) fn swag_posterior(cfg: &StudyConfig, collector: Option<&SwagCollector>) -> Result<Fitted> {
    let Some(c) = collector else {
        return Err(ExpError::config(
            "posterior",
            "internal: no SWAG collector for a SWAG kind",
        ));
    };
    Ok(Fitted::Swag(c.posterior(SwagKind::parse(&cfg.posterior.kind)?)?))
}

/// The Laplace approximation of `[posterior]` fitted at the trained weights on `train` under
/// `likelihood`, with its prior precision chosen as `prior_precision` says (on `val` for
/// `val-nll`).
pub(super) fn fit_laplace(
    cfg: &StudyConfig,
    net: &Network,
    store: &ParamStore,
    train: &mut dyn Batches,
    likelihood: &Likelihood,
    val: Option<&mut dyn Batches>,
) -> Result<Fitted> {
    let p = &cfg.posterior;
    let mut rng = SeedStream::Posterior.rng(cfg.seed);
    let mut fitted = if p.last_layer() {
        let h = LastLayerHessian::parse(p.hessian())?;
        Fitted::LastLayer(LastLayerLaplace::fit(net, store, train, likelihood, h, &mut rng)?)
    } else {
        let h = DiagCurvature::parse(p.hessian())?;
        Fitted::DiagLaplace(DiagLaplace::fit(net, store, train, likelihood, h, &mut rng)?)
    };
    let la: &mut dyn Laplace = match &mut fitted {
        Fitted::LastLayer(l) => l,
        Fitted::DiagLaplace(l) => l,
        _ => unreachable!("a Laplace kind was fitted above"),
    };
    match p.prior_precision().map_err(|m| ExpError::config("posterior", m))? {
        PriorPrecision::MargLik => {
            la.optimize_prior_precision()?;
        }
        PriorPrecision::Fixed(v) => la.set_prior_precision(v)?,
        PriorPrecision::ValNll => {
            let Some(val) = val else {
                return Err(ExpError::config(
                    "posterior.prior_precision",
                    "`val-nll` needs a validation split (data.val_fraction > 0)",
                ));
            };
            let grid: Vec<f64> = (0..41).map(|i| 10f64.powf(-4.0 + 0.2 * i as f64)).collect();
            secateur_inference::laplace::select_prior_precision_by_nll(
                la,
                net,
                store,
                val,
                &grid,
                p.samples(),
                &mut rng,
            )?;
        }
    }
    Ok(fitted)
}

/// The posterior predictive on `set`: SWA predicts at its mean (batch-norm statistics recomputed
/// on `train_set`); SWAG, SWAG-diagonal and Laplace with `predictive = "mc"` average
/// `posterior.samples` draws (SWAG recomputing batch-norm statistics per draw unless
/// `refresh_batch_norm = false`); Laplace with the probit predictive (on the logits linearised
/// at the MAP) is one pass (its entropy decomposition has no epistemic part: the mutual
/// information is 0); an ensemble
/// averages its members. All draws come from the run's posterior stream.
#[allow(clippy::too_many_arguments)]
pub(super) fn predict(
    cfg: &StudyConfig,
    fitted: &Fitted,
    net: &Network,
    store: &ParamStore,
    set: &ImageSet,
    train_set: &ImageSet,
    norm: &Normalizer,
    dev: &Device,
) -> Result<McPredictions> {
    let mut rng = SeedStream::PosteriorPredictive.rng(cfg.seed);
    let mut data = eval_image_batches(cfg, set, norm, dev)?;
    let setup = TrainingSetup::new(cfg, train_set.len())?;
    let mut train = setup.image_batches(train_set, norm, dev)?;
    let refresh = cfg.posterior.refresh_batch_norm.unwrap_or(true);
    if cfg.posterior.predictive() == "probit" {
        let p = match fitted {
            Fitted::LastLayer(l) => Some(l.predict_probit(net, &mut data, &mut rng)?),
            Fitted::DiagLaplace(l) => Some(l.predict_probit(net, store, &mut data, &mut rng)?),
            _ => None,
        };
        if let Some(p) = p {
            return Ok(McPredictions::from_draws(&[p.probs], p.labels, p.classes)?);
        }
    }
    if let Fitted::Swag(s) = fitted {
        if s.kind_of() == SwagKind::Swa {
            let t = refresh.then_some(&mut train as &mut dyn Batches);
            let p = predict_at_mean(net, store, s, &mut data, t, &mut rng)?;
            return Ok(McPredictions::from_draws(&[p.probs], p.labels, p.classes)?);
        }
    }
    let settings = BmaSettings {
        samples: cfg.posterior.samples(),
        refresh_batch_norm: refresh,
    };
    Ok(predict_bma(
        net,
        store,
        fitted.posterior(),
        &mut data,
        Some(&mut train),
        settings,
        &mut rng,
    )?)
}

/// The AUROC of telling the out-of-distribution set from the in-distribution test set by
/// predictive entropy (out-of-distribution positive).
pub(super) fn ood_auroc(in_dist: &McPredictions, ood: &McPredictions) -> Result<f64> {
    Ok(auroc(&ood.predictive_entropy, &in_dist.predictive_entropy)?)
}

/// What a run of a finite mixture (a deep ensemble, SVGD particles) evaluates: the model average
/// on the test set and, where the config names one, on its out-of-distribution set.
pub(super) struct MixtureRun<'a> {
    pub cfg: &'a StudyConfig,
    pub fitted: &'a Fitted,
    pub net: &'a Network,
    pub store: &'a ParamStore,
    pub test: &'a ImageSet,
    pub train_set: &'a ImageSet,
    pub norm: &'a Normalizer,
    pub dev: &'a Device,
}

impl MixtureRun<'_> {
    /// The metrics of the model average over the `members` members of `kind`: identity, test
    /// accuracy, NLL, Brier, ECE, MCE, mean mutual information and predictive entropy, and the
    /// OOD AUROC by predictive entropy (`data.ood`, looked up from `data_dir` first); with the
    /// test predictions.
    pub fn metrics(
        &self,
        kind: &str,
        members: usize,
        data_dir: Option<&Path>,
    ) -> Result<(serde_json::Map<String, serde_json::Value>, McPredictions)> {
        let cfg = self.cfg;
        let predict_on = |set: &ImageSet| {
            predict(
                cfg,
                self.fitted,
                self.net,
                self.store,
                set,
                self.train_set,
                self.norm,
                self.dev,
            )
        };
        let mc = predict_on(self.test)?;
        let p = &mc.predictions;
        let cm = secateur_inference::metrics::classification_metrics(&p.probs, &p.labels, p.classes)?;
        let mut m = serde_json::Map::new();
        let mut put = |k: &str, v: serde_json::Value| {
            m.insert(k.to_string(), v);
        };
        put("study", cfg.name.clone().into());
        put("arch", cfg.model.arch.clone().into());
        put("layers", cfg.model.layers.clone().into());
        put("dataset", cfg.data.name.clone().into());
        put("posterior", kind.into());
        put("members", members.into());
        put("test_size", self.test.len().into());
        put("test_accuracy", cm.accuracy.into());
        put("test_nll", cm.nll.into());
        put("test_brier", cm.brier.into());
        put("test_ece", cm.ece.into());
        put("test_mce", cm.mce.into());
        put("eval_samples", members.into());
        put("test_mutual_information", mc.mean_mutual_information().into());
        put("test_predictive_entropy", mc.mean_predictive_entropy().into());
        if let Some(name) = &cfg.data.ood {
            let ood = crate::data::load_images(name, data_dir)?;
            let mo = predict_on(&ood.test)?;
            put("ood_dataset", name.clone().into());
            put("ood_auroc_entropy", ood_auroc(&mc, &mo)?.into());
        }
        put("seed", cfg.seed.into());
        Ok((m, mc))
    }
}

/// Writes a classification run's closing files: its test predictions, `report.md` and
/// `metrics.json`.
pub(super) fn write_run_files(
    run: &RunDir,
    cfg: &StudyConfig,
    metrics: &serde_json::Map<String, serde_json::Value>,
    predictions: &secateur_inference::predict::Predictions,
) -> Result<()> {
    super::report::write_predictions(run, predictions)?;
    atomic::write_string(&run.file("report.md"), &super::report::report(cfg, metrics, &[]))?;
    let json = serde_json::to_string_pretty(&serde_json::Value::Object(metrics.clone()))
        .map_err(|e| ExpError::io(run.path(), std::io::Error::other(e)))?;
    atomic::write_string(&run.file("metrics.json"), &json)
}
