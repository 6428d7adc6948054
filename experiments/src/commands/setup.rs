//! The commands behind the CLI: `train`, `eval`, `data info`, `quickstart`. Regression tables
//! (`[likelihood] kind = "gaussian"`) go through [`regression`](super::regression).

use crate::atomic;
use crate::config::StudyConfig;
use crate::data::{load_images, LoadedImages, Normalizer};
use crate::error::{ExpError, Result};
use crate::loader::ImageBatches;
use crate::observe::{Progress, RunRecorder};
use crate::store::{RunDir, RunLock};
use candle_core::{DType, Device, Tensor};
use secateur_bayes::{Ctx, Module, ParamBuilder, ParamStore, Sampling, SeededRng};
use secateur_inference::metrics::{classification_metrics, ClassificationMetrics};
use secateur_inference::optim::{AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig};
use secateur_inference::predict::{predict, Predictions};
use secateur_inference::predict::{predict_mc, McPredictions};
use secateur_inference::train::{Observer, TrainSettings, Trainer};
use secateur_models::arch::{Mlp, MlpConfig};
use secateur_models::{build, ModelSpec, Network};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Sub-stream numbers of the run's seed: one generator per purpose, so that, e.g., changing the
/// architecture does not change the data order.
pub(crate) const STREAM_INIT: u64 = 1;
pub(crate) const STREAM_TRAIN: u64 = 2;
pub(crate) const STREAM_EVAL: u64 = 3;

/// Options of `train` beyond the config.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Run directory (default `runs/<study>-<timestamp>`).
    pub out: Option<PathBuf>,
    /// Data directory searched first.
    pub data_dir: Option<PathBuf>,
    /// `cpu` or `cuda`.
    pub device: String,
    /// Silence progress output.
    pub quiet: bool,
    /// A mask file (`secateur prune`'s `masks.safetensors`): the masked weights are zeroed before
    /// training and kept at zero (gradients masked, weights re-zeroed after every step). With a
    /// config this trains a network pruned at initialisation (the mask must come from the same
    /// config and seed to match the initialisation it was scored on). The file is copied into the
    /// run as `masks.safetensors`, which a resume applies again (a resume given other masks is
    /// refused).
    pub masks: Option<PathBuf>,
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run directory.
    pub dir: PathBuf,
    /// The flat metrics written to `metrics.json`.
    pub metrics: Map<String, Value>,
}

/// Parses a device name.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "" | "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).map_err(|e| {
            ExpError::config(
                "--device",
                format!("cuda is not available: {e} (build with `--features cuda` on a machine with an NVIDIA GPU)"),
            )
        }),
        other => Err(ExpError::config(
            "--device",
            format!("`{other}` is unknown; use cpu or cuda"),
        )),
    }
}

/// The model of a config, freshly initialised from the config's seed, with the layers of
/// `model.layers` (the factory of `secateur_models::factory`, options from `[bayes]`).
pub fn build_model(
    cfg: &StudyConfig,
    input: [usize; 3],
    classes: usize,
    dev: &Device,
) -> Result<(Network, ParamStore)> {
    let (store, pb) = param_builder(cfg, dev);
    let net = build_network(cfg, input, classes, &pb)?;
    Ok((net, store))
}

/// A fresh store and a builder drawing from the config's initialisation stream.
pub(crate) fn param_builder(cfg: &StudyConfig, dev: &Device) -> (ParamStore, ParamBuilder) {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(
        store.clone(),
        SeededRng::substream(cfg.seed, STREAM_INIT),
        cfg.model.dtype().unwrap_or(DType::F32),
        dev.clone(),
    );
    (store, pb)
}

/// The config's architecture with `outputs` outputs, registered under `pb`; an `mlp` with
/// `model.hidden` set gets those hidden widths instead of LeNet-300-100's.
pub(crate) fn build_network(cfg: &StudyConfig, input: [usize; 3], outputs: usize, pb: &ParamBuilder) -> Result<Network> {
    let spec = ModelSpec {
        arch: cfg.model.arch.clone(),
        input,
        classes: outputs,
    };
    cfg.bayes
        .vd_granularity()
        .map_err(|e| ExpError::config("bayes.vd_granularity", e))?;
    let layer_priors = &cfg.bayes.layer_priors;
    let mean_field = if layer_priors.is_empty() {
        None
    } else if cfg.model.layers == "mean-field" {
        Some(
            secateur_models::MeanField::new(cfg.bayes.prior, cfg.bayes.init_std)
                .and_then(|m| m.with_layer_priors(layer_priors.clone()))
                .map_err(|e| ExpError::config("bayes.layer_priors", e.to_string()))?,
        )
    } else {
        return Err(ExpError::config(
            "bayes.layer_priors",
            format!(
                "per-layer priors are for mean-field layers; model.layers is `{}`",
                cfg.model.layers
            ),
        ));
    };
    let factory: Box<dyn secateur_models::LayerFactory> = match &mean_field {
        Some(m) => Box::new(m.clone()),
        None => secateur_models::factory(&cfg.model.layers, &cfg.bayes.factory_options())
            .map_err(|e| ExpError::config("model.layers", e.to_string()))?,
    };
    let net = build_with(cfg, &spec, input, outputs, factory.as_ref(), pb)?;
    if let Some(m) = &mean_field {
        let unused = m.unused_layer_priors(pb.store());
        if !unused.is_empty() {
            return Err(ExpError::config(
                "bayes.layer_priors",
                format!(
                    "no layer named {} in `{}`; its Bayesian layers are: {}",
                    unused.join(", "),
                    cfg.model.arch,
                    pb.store()
                        .variational_layers()
                        .into_iter()
                        .map(|(n, _)| n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    Ok(net)
}

fn build_with(
    cfg: &StudyConfig,
    spec: &ModelSpec,
    input: [usize; 3],
    outputs: usize,
    factory: &dyn secateur_models::LayerFactory,
    pb: &ParamBuilder,
) -> Result<Network> {
    Ok(match (&cfg.model.hidden, cfg.model.arch.as_str()) {
        (Some(hidden), "mlp") => {
            spec.validate()?;
            let mlp = Mlp::new(&MlpConfig { hidden: hidden.clone() }, input, outputs, factory, pb)?;
            Network::new("mlp", Box::new(mlp))
        }
        _ => build(spec, factory, pb)?,
    })
}

/// How the stochastic layers of a config's model sample: the layer kind's
/// [`KindSampling`](secateur_models::KindSampling), with `bayes.sampling` where the kind leaves
/// the Gaussian estimator to the config.
pub fn sampling(cfg: &StudyConfig) -> Result<Sampling> {
    use secateur_models::KindSampling;
    let kind = cfg.layer_kind().map_err(|e| ExpError::config("model.layers", e))?;
    Ok(match kind.sampling {
        KindSampling::Mean => Sampling::Mean,
        KindSampling::Masks => Sampling::Weight,
        KindSampling::Configured => cfg
            .bayes
            .sampling()
            .map_err(|e| ExpError::config("bayes.sampling", e))?,
    })
}

/// The weights file named by `bayes.init_from`: the path itself, or `weights.safetensors` inside
/// it when it is a (run) directory.
pub fn init_weights_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("weights.safetensors")
    } else {
        path.to_path_buf()
    }
}

/// Empirical-Bayes (MOPED) initialisation of the model in `store` from the deterministic weights
/// in `path` (a safetensors file, or a run directory holding `weights.safetensors`), with
/// `σ = δ·|w|` (Krishnan, Subedar & Tickoo 2020; see
/// [`secateur_bayes::empirical_bayes::init_from_deterministic`]). Errors name `bayes.init_from`
/// and the file.
pub fn init_from_deterministic(store: &ParamStore, path: &Path, delta: f64) -> Result<()> {
    let file = init_weights_file(path);
    let det: BTreeMap<String, Tensor> = crate::store::read_finite_safetensors(&file)
        .map_err(|e| ExpError::config("bayes.init_from", e.to_string()))?
        .into_iter()
        .collect();
    secateur_bayes::empirical_bayes::init_from_deterministic(store, &det, delta)
        .map_err(|e| ExpError::config("bayes.init_from", format!("{}: {e}", file.display())))
}

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
fn width_accuracies(
    net: &Network,
    test: &crate::data::ImageSet,
    norm: &Normalizer,
    cfg: &StudyConfig,
    dev: &Device,
) -> Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    for &w in &cfg.bayes.eval_widths {
        let m = AtWidth { net, width: w };
        let mut batches = ImageBatches::new(test, norm.clone(), cfg.data.eval_batch_size, false, None, dev.clone())
            .with_dtype(cfg.model.dtype()?);
        let mut rng = SeededRng::substream(cfg.seed, STREAM_EVAL);
        let p = predict(&m, &mut batches, Sampling::Mean, &mut rng)?;
        let acc = classification_metrics(&p.probs, &p.labels, p.classes)?.accuracy;
        out.push((format!("accuracy_width_{w:.2}"), acc));
    }
    Ok(out)
}

/// The optimiser of `[optim]` (SGD or AdamW with their PyTorch update rules).
pub fn optimizer(cfg: &StudyConfig) -> Result<Box<dyn Optimizer>> {
    let o = &cfg.optim;
    Ok(match o.kind.as_str() {
        "sgd" => Box::new(Sgd::new(SgdConfig {
            momentum: o.momentum,
            dampening: 0.0,
            nesterov: o.nesterov,
            weight_decay: o.weight_decay,
        })?),
        "adamw" => Box::new(AdamW::new(AdamWConfig {
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            weight_decay: o.weight_decay,
        })?),
        k => return Err(ExpError::config("optim.kind", format!("`{k}` is unknown"))),
    })
}

/// The training settings of a config for a training set of `train_size` examples (epochs,
/// learning rate and schedule, estimator, and the objective with `N = train_size`).
pub fn train_settings(cfg: &StudyConfig, train_size: usize) -> Result<TrainSettings> {
    Ok(TrainSettings {
        epochs: cfg.train.epochs,
        lr: cfg.optim.lr,
        schedule: cfg.train.schedule.clone(),
        sampling: sampling(cfg)?,
        objective: cfg.objective(train_size).map_err(|e| ExpError::config("bayes", e))?,
    })
}

/// The run being resumed (`resume`), opened without changing it, and whether it has a
/// checkpoint to continue from. A run with no checkpoint (it failed or was killed before its
/// first epoch ended) is trained from the start with its recorded config; unless `quiet`, a line
/// on standard error says so. A seed other than the recorded one is refused. The run is locked
/// ([`RunDir::lock`]) for as long as the returned lock lives.
pub(crate) fn open_resumed(
    cfg: &StudyConfig,
    resume: Option<&Path>,
    quiet: bool,
) -> Result<Option<(RunDir, RunLock, bool)>> {
    let Some(path) = resume else { return Ok(None) };
    let run = RunDir::open(path)?;
    let lock = run.lock()?;
    let recorded = StudyConfig::from_file(&run.file("config.toml"), &[])?;
    if recorded.seed != cfg.seed {
        return Err(ExpError::config(
            "seed",
            format!(
                "the run in {} was trained with seed {} (its config.toml); a resume cannot change it to {} (start a new run with that seed instead)",
                path.display(),
                recorded.seed,
                cfg.seed
            ),
        ));
    }
    let from_checkpoint = run.latest_checkpoint().is_some();
    if !from_checkpoint && !quiet {
        eprintln!(
            "run {}: no checkpoint (it stopped before its first epoch ended); training it from the start with its recorded config",
            path.display()
        );
    }
    Ok(Some((run, lock, from_checkpoint)))
}

/// The run directory of `train` and its lock: the run being resumed, or a new one under
/// `opts.out` (locked, [`RunDir::create_locked`]) whose resolved config is written before
/// training. Call it only once the inputs are checked (data loaded, model built, masks matched),
/// so that bad input leaves no directory behind. A resumed run's config is rewritten only once
/// the resumed run has succeeded, so a failing resume leaves the good run as it was.
pub(crate) fn run_dir(
    cfg: &StudyConfig,
    opts: &TrainOptions,
    resumed: Option<(RunDir, RunLock, bool)>,
) -> Result<(RunDir, RunLock)> {
    if let Some((run, lock, _)) = resumed {
        return Ok((run, lock));
    }
    let (run, lock) = RunDir::create_locked(&cfg.name, opts.out.as_deref())?;
    atomic::write_string(&run.file("config.toml"), &cfg.to_toml()?)?;
    Ok((run, lock))
}

/// The masks a run was trained with (`train --masks`, or the masks of `[greg]`), in its directory.
pub const MASKS_FILE: &str = "masks.safetensors";

/// Records the mask file `path` of `train --masks` in the run as [`MASKS_FILE`] (a byte copy,
/// written atomically), so that `--resume` trains with the same masks. A run that already records
/// masks (a resume given `--masks` again) accepts only the same file: a resume cannot change the
/// masks a run was trained with.
fn record_masks(run: &RunDir, path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| ExpError::io(path, e))?;
    let recorded = run.file(MASKS_FILE);
    if recorded.is_file() {
        let old = std::fs::read(&recorded).map_err(|e| ExpError::io(&recorded, e))?;
        if old != bytes {
            return Err(ExpError::config(
                "--masks",
                format!(
                    "{} differs from the masks the run was trained with ({}); a resume keeps the run's masks (leave out --masks)",
                    path.display(),
                    recorded.display()
                ),
            ));
        }
        return Ok(());
    }
    atomic::write_bytes(&recorded, &bytes)
}

/// The config's image data set (`data_dir` searched first, then `data.dir`, then the lookup).
pub(crate) fn load_data(cfg: &StudyConfig, data_dir: Option<&Path>) -> Result<LoadedImages> {
    let dir = data_dir.map(Path::to_path_buf).or_else(|| cfg.data.dir.clone());
    Ok(load_images(&cfg.data.name, dir.as_deref())?)
}

/// Test-set evaluation: Monte Carlo with `bayes.eval_samples` samples for a Bayesian model
/// (the classification metrics are those of the averaged probabilities), the posterior mean /
/// deterministic forward pass otherwise.
struct Evaluation {
    preds: Predictions,
    metrics: ClassificationMetrics,
    mc: Option<McPredictions>,
}

fn evaluate(
    net: &Network,
    test: &crate::data::ImageSet,
    norm: &Normalizer,
    cfg: &StudyConfig,
    dev: &Device,
) -> Result<Evaluation> {
    let mut batches = ImageBatches::new(test, norm.clone(), cfg.data.eval_batch_size, false, None, dev.clone())
        .with_dtype(cfg.model.dtype()?);
    let mut rng = SeededRng::substream(cfg.seed, STREAM_EVAL);
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

/// Accuracy of the posterior-mean network (`Sampling::Mean`) on a set.
fn posterior_mean_accuracy(
    net: &Network,
    test: &crate::data::ImageSet,
    norm: &Normalizer,
    cfg: &StudyConfig,
    dev: &Device,
) -> Result<f64> {
    let mut batches = ImageBatches::new(test, norm.clone(), cfg.data.eval_batch_size, false, None, dev.clone())
        .with_dtype(cfg.model.dtype()?);
    let mut rng = SeededRng::substream(cfg.seed, STREAM_EVAL);
    let p = predict(net, &mut batches, Sampling::Mean, &mut rng)?;
    Ok(classification_metrics(&p.probs, &p.labels, p.classes)?.accuracy)
}

/// A failed `fit` (a diverged loss, a failed write, …) of the run in `run`: the trainer's error,
/// followed by what the run keeps — its last checkpoint, named, or that none exists yet (the
/// failure came before the first was written), so that the user knows whether `--resume` can
/// continue it.
pub(crate) fn fit_failed(e: candle_core::Error, run: &RunDir) -> ExpError {
    let kept = match run.latest_checkpoint() {
        Some(c) => format!(
            "the last good checkpoint, {}, is kept",
            run.file("checkpoints").join(c).display()
        ),
        None => format!(
            "no checkpoint exists yet in {} (the run failed before the first one was written)",
            run.path().display()
        ),
    };
    ExpError::Candle(candle_core::Error::Msg(format!("{e}; {kept}")))
}

/// Trains the config's model, or resumes the run in `resume`; writes the run directory.
///
/// The data, the model and `opts.masks` are checked before a new directory is created. The
/// process holds the run's lock ([`RunDir::lock`]) throughout, so a second writer is refused. A
/// resume continues from the last checkpoint (or, if the run stopped before its first one, trains
/// from the start with the recorded config), keeps the run's seed (another one is refused) and
/// its recorded masks (`masks.safetensors`), and writes the same files, bit for bit but for wall
/// times, as a run that was never interrupted.
pub fn train(cfg: &StudyConfig, opts: &TrainOptions, resume: Option<&Path>) -> Result<RunSummary> {
    if cfg.likelihood.is_regression() {
        return super::regression::train(cfg, opts, resume);
    }
    let t0 = Instant::now();
    let dev = device(&opts.device)?;
    let resumed = open_resumed(cfg, resume, opts.quiet)?;
    let from_checkpoint = matches!(resumed, Some((_, _, true)));
    if cfg.greg.enabled() {
        if from_checkpoint {
            return Err(ExpError::config(
                "greg",
                "a run with growing regularisation cannot be resumed from a checkpoint; start it again",
            ));
        }
        if opts.masks.is_some() {
            return Err(ExpError::config(
                "--masks",
                "cannot be combined with [greg], which makes its own masks",
            ));
        }
    }

    // The inputs are checked before a new run directory is created: data, model, masks.
    let data = load_data(cfg, opts.data_dir.as_deref())?;
    let (train_set, val_set) = if cfg.data.val_fraction > 0.0 {
        let mut split_rng = SeededRng::substream(cfg.seed, 4);
        data.train.split(cfg.data.val_fraction, &mut split_rng)?
    } else {
        (data.train.clone(), data.train.subset(&[])?)
    };
    let norm = Normalizer::from_set(&train_set);
    let input = [train_set.channels, train_set.height, train_set.width];
    let classes = data.train.n_classes.max(data.test.n_classes) as usize;
    let (net, store) = build_model(cfg, input, classes, &dev)?;
    let settings = train_settings(cfg, train_set.len())?;
    // Empirical-Bayes initialisation (unless a checkpoint is loaded below), and the
    // posterior-mean test accuracy it starts from.
    let init_accuracy = match (&cfg.bayes.init_from, from_checkpoint) {
        (Some(path), false) => {
            init_from_deterministic(&store, path, cfg.bayes.init_delta)?;
            Some(posterior_mean_accuracy(&net, &data.test, &norm, cfg, &dev)?)
        }
        _ => None,
    };
    // `--masks`, or the masks a resumed run records (`[greg]` makes its own below)
    let recorded_masks = match &resumed {
        Some((run, _, _)) if !cfg.greg.enabled() && run.file(MASKS_FILE).is_file() => Some(run.file(MASKS_FILE)),
        _ => None,
    };
    let given_masks = match (&opts.masks, &recorded_masks) {
        (Some(path), _) => Some(crate::prune::load_masks(path, &store)?),
        (None, Some(path)) => Some(crate::prune::load_masks(path, &store)?),
        (None, None) => None,
    };

    // held until the run is written
    let (run, _lock) = run_dir(cfg, opts, resumed)?;
    if let Some(path) = &opts.masks {
        record_masks(&run, path)?;
    }
    // Growing regularisation first (`[greg]`): its masks are held during the training below.
    let greg = if cfg.greg.enabled() {
        let (m, summary) = crate::greg::regularise(cfg, &net, &store, &train_set, &norm, &dev, opts.quiet)?;
        m.save(run.file(MASKS_FILE))?;
        Some((m, summary))
    } else {
        None
    };

    let mut trainer = Trainer::new(
        &net,
        store.clone(),
        optimizer(cfg)?,
        settings,
        SeededRng::substream(cfg.seed, STREAM_TRAIN),
    )?;
    let masks = match (given_masks, &greg) {
        (Some(m), _) => Some(m),
        (None, Some((m, _))) => Some(m.clone()),
        (None, None) => None,
    };
    if let Some(m) = &masks {
        trainer.set_hook(Box::new(m.clone()));
    }
    if from_checkpoint {
        let ck = run.read_checkpoint()?;
        trainer.resume(&ck.weights, &ck.optimizer, ck.state)?;
    }
    let augment = cfg.data.augment.then_some(crate::data::Augment { pad: 4, flip: true });
    let mut train_batches = ImageBatches::new(
        &train_set,
        norm.clone(),
        cfg.data.batch_size,
        true,
        augment,
        dev.clone(),
    )
    .with_dtype(cfg.model.dtype()?);
    let mut test_batches = ImageBatches::new(
        &data.test,
        norm.clone(),
        cfg.data.eval_batch_size,
        false,
        None,
        dev.clone(),
    )
    .with_dtype(cfg.model.dtype()?);
    let mut recorder = RunRecorder::new(&run);
    let mut progress = Progress::new(opts.quiet);
    let mut observers: Vec<&mut dyn Observer> = vec![&mut progress, &mut recorder];
    let state = trainer
        .fit(&mut train_batches, Some(&mut test_batches), &mut observers)
        .map_err(|e| fit_failed(e, &run))?;

    let ev = evaluate(&net, &data.test, &norm, cfg, &dev)?;
    let (preds, m) = (ev.preds, ev.metrics);
    let (nonzero, weights_total) = store.test_time_params()?;
    let mut metrics = Map::new();
    let mut put = |k: &str, v: Value| {
        metrics.insert(k.to_string(), v);
    };
    put("study", cfg.name.clone().into());
    put("arch", cfg.model.arch.clone().into());
    put("layers", cfg.model.layers.clone().into());
    put("dataset", cfg.data.name.clone().into());
    put("train_size", train_set.len().into());
    put("test_size", data.test.len().into());
    put("test_accuracy", m.accuracy.into());
    put("test_nll", m.nll.into());
    put("test_brier", m.brier.into());
    put("test_ece", m.ece.into());
    put("test_mce", m.mce.into());
    if !val_set.is_empty() {
        let v = evaluate(&net, &val_set, &norm, cfg, &dev)?.metrics;
        put("val_size", val_set.len().into());
        put("val_accuracy", v.accuracy.into());
        put("val_nll", v.nll.into());
        put("val_ece", v.ece.into());
    }
    put(
        "train_loss",
        state.history.last().map(|r| r.train_loss).unwrap_or(f64::NAN).into(),
    );
    if let Some(last) = state.history.last() {
        put("train_nll", last.train_nll.into());
        put("train_divergence", last.train_divergence.into());
    }
    if let Some(mc) = &ev.mc {
        put("eval_samples", mc.samples.into());
        put("test_mutual_information", mc.mean_mutual_information().into());
        put("test_predictive_entropy", mc.mean_predictive_entropy().into());
        put("test_expected_entropy", mc.mean_expected_entropy().into());
        put(
            "test_accuracy_posterior_mean",
            posterior_mean_accuracy(&net, &data.test, &norm, cfg, &dev)?.into(),
        );
    }
    if let Some(a) = init_accuracy {
        put("init_test_accuracy_posterior_mean", a.into());
    }
    if let Some(m) = &masks {
        put("mask_sparsity", m.sparsity()?.into());
        put("mask_kept", m.kept()?.into());
    }
    if let Some((_, g)) = &greg {
        put("greg_method", cfg.greg.method.clone().into());
        put("greg_schedule_iterations", g.schedule_iterations.into());
        put("greg_epochs", g.epochs.into());
        put("greg_final_lambda", g.final_lambda.into());
        put("greg_final_train_loss", g.final_train_loss.into());
    }
    let kind = cfg.layer_kind().map_err(|e| ExpError::config("model.layers", e))?;
    for (k, v) in (kind.report)(&store, &secateur_models::ReportInput { input })? {
        put(&k, report_value(v));
    }
    for (k, acc) in width_accuracies(&net, &data.test, &norm, cfg, &dev)? {
        put(&k, acc.into());
    }
    put("params_total", store.num_params().into());
    put("params_weights", weights_total.into());
    put("params_nonzero", nonzero.into());
    put("epochs", state.epochs_done.into());
    put("seed", cfg.seed.into());
    put("wall_seconds", t0.elapsed().as_secs_f64().into());

    atomic::write_safetensors(&run.file("weights.safetensors"), &store.tensors())?;
    write_predictions(&run, &preds)?;
    crate::plot::write_run_plots(&run, &state.history, &preds)?;
    atomic::write_string(&run.file("report.md"), &report(cfg, &metrics, &state.history))?;
    #[cfg(feature = "hdf5")]
    crate::h5::write_results(&run.file("results.h5"), &metrics, &preds, &state.history)?;
    let json = serde_json::to_string_pretty(&Value::Object(metrics.clone()))
        .map_err(|e| ExpError::io(run.path(), std::io::Error::other(e)))?;
    atomic::write_string(&run.file("metrics.json"), &json)?;
    if resume.is_some() {
        atomic::write_string(&run.file("config.toml"), &cfg.to_toml()?)?;
    }
    Ok(RunSummary {
        dir: run.path().to_path_buf(),
        metrics,
    })
}

/// A layer kind's report value as JSON: counts stay integers.
pub(crate) fn report_value(v: secateur_models::ReportValue) -> Value {
    match v {
        secateur_models::ReportValue::Count(n) => n.into(),
        secateur_models::ReportValue::Real(x) => x.into(),
    }
}

fn write_predictions(run: &RunDir, p: &Predictions) -> Result<()> {
    let n = p.labels.len();
    let probs = Tensor::from_vec(p.probs.clone(), (n, p.classes), &Device::Cpu)?;
    let labels = Tensor::from_vec(p.labels.clone(), n, &Device::Cpu)?;
    let (kp, kl) = ("probs".to_string(), "labels".to_string());
    atomic::write_safetensors(&run.file("predictions.safetensors"), [(&kp, &probs), (&kl, &labels)])
}

fn report(cfg: &StudyConfig, m: &Map<String, Value>, history: &[secateur_inference::train::EpochRecord]) -> String {
    let f = |k: &str| m.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let mut s = format!(
        "# {}\n\n{} ({} layers) on {}, seed {}, {} epochs.\n\n",
        cfg.name, cfg.model.arch, cfg.model.layers, cfg.data.name, cfg.seed, cfg.train.epochs
    );
    s.push_str("| metric | value |\n|---|---|\n");
    for k in [
        "test_accuracy",
        "test_nll",
        "test_brier",
        "test_ece",
        "test_mce",
        "test_mutual_information",
        "test_accuracy_posterior_mean",
        "sparsity_log_alpha",
        "nodes_removed",
        "nodes_total",
        "units_removed",
        "inputs_removed",
        "params_total",
        "params_nonzero",
        "wall_seconds",
    ] {
        if m.contains_key(k) {
            s.push_str(&format!("| {k} | {:.4} |\n", f(k)));
        }
    }
    let widths: Vec<&String> = m.keys().filter(|k| k.starts_with("accuracy_width_")).collect();
    if !widths.is_empty() {
        s.push_str("\n## Accuracy at reduced widths\n\n| width | test accuracy |\n|---|---|\n");
        for k in widths {
            s.push_str(&format!("| {} | {:.4} |\n", &k["accuracy_width_".len()..], f(k)));
        }
    }
    let gated: Vec<&str> = m.keys().filter_map(|k| k.strip_prefix("units_total.")).collect();
    if !gated.is_empty() {
        s.push_str(
            "\n## Gates removed at test time\n\n| layer (gates on its inputs) | removed | total |\n|---|---|---|\n",
        );
        for layer in gated {
            let r = f(&format!("units_removed.{layer}"));
            let t = f(&format!("units_total.{layer}"));
            s.push_str(&format!("| {layer} | {r} | {t} |\n"));
        }
    }
    s.push_str("\n## History\n\n| epoch | lr | train loss | train acc | test acc | test NLL | test ECE |\n|---|---|---|---|---|---|---|\n");
    for r in history {
        let (a, n, e) = r
            .eval
            .as_ref()
            .map(|x| (x.accuracy, x.nll, x.ece))
            .unwrap_or((f64::NAN, f64::NAN, f64::NAN));
        s.push_str(&format!(
            "| {} | {:.4} | {:.4} | {:.4} | {a:.4} | {n:.4} | {e:.4} |\n",
            r.epoch, r.lr, r.train_loss, r.train_accuracy
        ));
    }
    s
}

/// Evaluates a finished classification run's final weights on its test set (regression runs:
/// [`regression::eval`](super::regression::eval)). A run without `weights.safetensors` (unfinished) and weights with a
/// NaN or infinite entry are refused, naming the file or the tensor.
pub fn eval(
    run_dir: &Path,
    data_dir: Option<&Path>,
    device_name: &str,
) -> Result<(ClassificationMetrics, StudyConfig)> {
    let run = RunDir::open(run_dir)?;
    let cfg = StudyConfig::from_file(&run.file("config.toml"), &[])?;
    let weights = run.read_final_weights()?;
    let dev = device(device_name)?;
    let data = load_data(&cfg, data_dir)?;
    let train_set = if cfg.data.val_fraction > 0.0 {
        let mut split_rng = SeededRng::substream(cfg.seed, 4);
        data.train.split(cfg.data.val_fraction, &mut split_rng)?.0
    } else {
        data.train.clone()
    };
    let norm = Normalizer::from_set(&train_set);
    let input = [train_set.channels, train_set.height, train_set.width];
    let classes = data.train.n_classes.max(data.test.n_classes) as usize;
    let (net, store) = build_model(&cfg, input, classes, &dev)?;
    store.load(&weights)?;
    let m = evaluate(&net, &data.test, &norm, &cfg, &dev)?.metrics;
    Ok((m, cfg))
}

/// The quickstart config, shipped in `experiments/configs/quickstart.toml`.
pub const QUICKSTART_TOML: &str = include_str!("../../configs/quickstart.toml");

/// The quickstart's sparse-VD LeNet-5, shipped in `experiments/configs/quickstart-sparse-vd.toml`.
pub const QUICKSTART_SPARSE_VD_TOML: &str = include_str!("../../configs/quickstart-sparse-vd.toml");

/// Runs side by side as a terminal table: accuracy, NLL, ECE, the fraction of weights with
/// `log α ≥ threshold` and the test-time non-zero parameters, one column per run.
pub fn comparison_table(runs: &[(&str, &Map<String, Value>)]) -> String {
    let mut s = format!("  {:<28}", "");
    for (name, _) in runs {
        s.push_str(&format!("{name:>16}"));
    }
    s.push('\n');
    for (k, label) in [
        ("test_accuracy", "test accuracy"),
        ("test_nll", "test NLL"),
        ("test_ece", "test ECE"),
        ("sparsity_log_alpha", "weights with log α ≥ 3"),
        ("units_removed", "hidden units removed"),
        ("params_nonzero", "non-zero parameters"),
        ("wall_seconds", "seconds"),
    ] {
        s.push_str(&format!("  {label:<28}"));
        for (_, m) in runs {
            let shown = match m.get(k) {
                Some(Value::Number(n)) if n.is_f64() => format!("{:.4}", n.as_f64().unwrap_or(f64::NAN)),
                Some(v) => v.to_string(),
                None => "—".into(),
            };
            s.push_str(&format!("{shown:>16}"));
        }
        s.push('\n');
    }
    s
}

/// Formats a metrics map as a short table for the terminal.
pub fn metrics_table(m: &Map<String, Value>) -> String {
    let mut s = String::new();
    for k in [
        "arch",
        "layers",
        "dataset",
        "epochs",
        "seed",
        "test_accuracy",
        "test_rmse",
        "test_nll",
        "test_mixture_nll",
        "test_coverage_95",
        "test_mean_predictive_std",
        "test_mean_aleatoric_var",
        "test_mean_epistemic_var",
        "test_brier",
        "test_ece",
        "test_mce",
        "test_mutual_information",
        "sparsity_log_alpha",
        "nodes_removed",
        "units_removed",
        "params_total",
        "params_nonzero",
        "wall_seconds",
    ] {
        if let Some(v) = m.get(k) {
            let shown = match v {
                Value::Number(n) if n.is_f64() => format!("{:.4}", n.as_f64().unwrap_or(f64::NAN)),
                Value::String(t) => t.clone(),
                other => other.to_string(),
            };
            s.push_str(&format!("  {k:<24} {shown}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(store: &ParamStore, cfg: &StudyConfig) -> Result<BTreeMap<String, Value>> {
        let kind = cfg.layer_kind().map_err(|e| ExpError::config("model.layers", e))?;
        let r = (kind.report)(store, &secateur_models::ReportInput { input: [1, 28, 28] })?;
        Ok(r.into_iter().map(|(k, v)| (k, report_value(v))).collect())
    }

    /// LeNet-300-100 with spike-and-slab layers: setting the inclusion logits of some nodes
    /// below 0 (γ < ½) removes exactly those nodes, and the test-time weight count drops by their
    /// incoming weights and biases; the logits are not counted as weights.
    #[test]
    fn spike_slab_nodes_removed_and_test_time_params() -> Result<()> {
        let cfg = StudyConfig::from_toml("", "t", &["model.arch=mlp".into(), "model.layers=spike-slab".into()])?;
        let (_, store) = build_model(&cfg, [1, 28, 28], 10, &Device::Cpu)?;
        let r = report(&store, &cfg)?;
        // the classifier selects no nodes
        assert_eq!(
            (r["nodes_removed"].as_u64(), r["nodes_total"].as_u64()),
            (Some(0), Some(400))
        );
        let (nz0, total) = store.test_time_params()?;
        assert_eq!(total, 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10);
        assert_eq!(nz0, total);
        // remove nodes 0..5 of fc2 (100 → 95 nodes, each with 300 weights and a bias)
        let logit = store.get("fc2.inclusion_logit").unwrap();
        let mut v: Vec<f32> = logit.as_tensor().to_vec1()?;
        v[..5].iter_mut().for_each(|x| *x = -1.0);
        logit.set(&Tensor::new(v, &Device::Cpu)?)?;
        let r = report(&store, &cfg)?;
        assert_eq!(
            (r["nodes_removed"].as_u64(), r["nodes_total"].as_u64()),
            (Some(5), Some(400))
        );
        assert_eq!(store.test_time_params()?.0, total - 5 * (300 + 1));
        Ok(())
    }

    /// GSM gates: the test-time weight count and the gate report use the same threshold
    /// (`bayes.gate_threshold`), so closing a gate of fc2 removes its 100 outgoing weights from
    /// the count exactly when the report counts it removed — also at a threshold other than ½.
    #[test]
    fn gate_threshold_rules_both_the_count_and_the_report() -> Result<()> {
        let cfg = StudyConfig::from_toml(
            "",
            "t",
            &[
                "model.arch=mlp".into(),
                "model.layers=gsm-gates".into(),
                "bayes.gate_threshold=0.7".into(),
            ],
        )?;
        let (_, store) = build_model(&cfg, [1, 28, 28], 10, &Device::Cpu)?;
        let (nz0, total) = store.test_time_params()?;
        assert_eq!(report(&store, &cfg)?["units_removed.fc2"].as_u64(), Some(0));
        // θ of fc2's gates (its 300 inputs): gate 0 at 0.6 (below 0.7: removed), gate 1 at 0.8
        let theta = store.get("fc2.gate_theta").unwrap();
        let mut v: Vec<f32> = theta.as_tensor().to_vec1()?;
        (v[0], v[1]) = (0.6, 0.8);
        theta.set(&Tensor::new(v, &Device::Cpu)?)?;
        let r = report(&store, &cfg)?;
        assert_eq!(r["units_removed.fc2"].as_u64(), Some(1));
        assert_eq!(r["units_total.fc2"].as_u64(), Some(300));
        assert_eq!(store.test_time_params()?, (nz0 - 100, total));
        Ok(())
    }
}
