//! The commands behind the CLI: `train`, `eval`, `data info`, `quickstart`.

use crate::atomic;
use crate::config::StudyConfig;
use crate::data::{load_images, LoadedImages, Normalizer};
use crate::error::{ExpError, Result};
use crate::loader::ImageBatches;
use crate::observe::{Progress, RunRecorder};
use crate::store::RunDir;
use candle_core::{DType, Device, Tensor};
use secateur_bayes::{ParamBuilder, ParamStore, Sampling, SeededRng};
use secateur_inference::metrics::{classification_metrics, ClassificationMetrics};
use secateur_inference::optim::{AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig};
use secateur_inference::predict::{predict, Predictions};
use secateur_inference::predict::{predict_mc, McPredictions};
use secateur_inference::train::{Observer, TrainSettings, Trainer};
use secateur_models::{build, ModelSpec, Network};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Sub-stream numbers of the run's seed: one generator per purpose, so that, e.g., changing the
/// architecture does not change the data order.
const STREAM_INIT: u64 = 1;
const STREAM_TRAIN: u64 = 2;
const STREAM_EVAL: u64 = 3;

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
    let store = ParamStore::new();
    let pb = ParamBuilder::new(
        store.clone(),
        SeededRng::substream(cfg.seed, STREAM_INIT),
        DType::F32,
        dev.clone(),
    );
    let spec = ModelSpec {
        arch: cfg.model.arch.clone(),
        input,
        classes,
    };
    let factory = secateur_models::factory(&cfg.model.layers, &cfg.bayes.factory_options())
        .map_err(|e| ExpError::config("model.layers", e.to_string()))?;
    let net = build(&spec, factory.as_ref(), &pb)?;
    Ok((net, store))
}

/// How the stochastic layers of a config's model sample: `Mean` for deterministic layers,
/// `bayes.sampling` for the Gaussian layers, and a mask draw (`Weight`) for MC dropout, whose
/// masks are drawn whenever sampling is not `Mean`.
pub fn sampling(cfg: &StudyConfig) -> Result<Sampling> {
    Ok(match cfg.model.layers.as_str() {
        "deterministic" => Sampling::Mean,
        "mc-dropout" => Sampling::Weight,
        _ => cfg
            .bayes
            .sampling()
            .map_err(|e| ExpError::config("bayes.sampling", e))?,
    })
}

/// Test-time parameter counts `(nonzero, total)` of a model: the variance parameters of the
/// probabilistic layers (`*_rho`, `*_log_sigma2`) are not weights of the test-time network and
/// are skipped; a posterior mean `{name}_mu` counts as the weight `{name}`, zero where it is
/// zero or, with `threshold = Some(t)` (sparse VD), where `log α ≥ t` (the weight is dropped at
/// test time, Molchanov et al. 2017), or where its inclusion probability (a gate's, GSM gates) is
/// below ½; gate parameters (`*.gate_theta`) are not weights. For a deterministic model this is the
/// count of non-zero trainable parameters.
pub fn test_time_params(store: &ParamStore, threshold: Option<f64>) -> Result<(usize, usize)> {
    let stats: BTreeMap<String, secateur_bayes::PosteriorStats> = store
        .posterior_stats()?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let count = |t: &Tensor| -> Result<usize> { Ok(t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()? as usize) };
    let (mut nonzero, mut total) = (0usize, 0usize);
    for (name, var) in store.params() {
        if name.ends_with("_rho") || name.ends_with("_log_sigma2") || name.ends_with(".gate_theta") {
            continue;
        }
        let t = var.as_tensor();
        total += t.elem_count();
        let stat = name.strip_suffix("_mu").and_then(|base| stats.get(base));
        let kept = t.ne(0f64)?;
        let kept = match (stat, threshold) {
            (Some(st), Some(th)) => match &st.log_alpha {
                Some(la) => kept.mul(&la.lt(th)?)?,
                None => kept,
            },
            _ => kept,
        };
        let kept = match stat.and_then(|st| st.inclusion.as_ref()) {
            Some(inc) => kept.mul(&inc.ge(0.5)?)?,
            None => kept,
        };
        nonzero += count(&kept)?;
    }
    Ok((nonzero, total))
}

/// The fraction of weights with `log α ≥ threshold` over every posterior statistic that has a
/// `log α` (sparse VD: every weight of every layer); `None` if there is none.
pub fn sparsity_log_alpha(store: &ParamStore, threshold: f64) -> Result<Option<f64>> {
    let (mut dropped, mut n) = (0f64, 0usize);
    for s in store.posterior_stats()? {
        if let Some(la) = &s.log_alpha {
            dropped += la.ge(threshold)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
            n += la.elem_count();
        }
    }
    Ok((n > 0).then(|| dropped / n as f64))
}

/// Test-time gate counts of a GSM-gated model (`gsm-gates`, Guenter & Sideris 2022), by layer:
/// `(layer, removed, total, reads_input)` where a gate is removed iff
/// `θ = clamp(lr_scale · gate_theta, 0, 1) < threshold` (`lr_scale` = `bayes.gate_lr_scale`). Every layer gates its inputs, so the gates of a layer are
/// the hidden units (filters) of the layer before it, except for the layer that reads the
/// network's input: recognised as the layer whose gate count equals the input's feature count
/// `C·H·W` (a linear layer on flattened images) or channel count `C` (a convolution), its gates
/// are pixels/channels (`reads_input = true`). Empty for a model without gates.
pub fn gate_counts(
    store: &ParamStore,
    threshold: f64,
    lr_scale: f64,
    input: [usize; 3],
) -> Result<Vec<(String, usize, usize, bool)>> {
    let mut out = Vec::new();
    for (name, var) in store.params() {
        if let Some(layer) = name.strip_suffix(".gate_theta") {
            let t = var.as_tensor();
            let removed = (t * lr_scale)?
                .lt(threshold)?
                .to_dtype(DType::F64)?
                .sum_all()?
                .to_scalar::<f64>()? as usize;
            let total = t.elem_count();
            let reads_input = total == input.iter().product::<usize>() || total == input[0];
            out.push((layer.to_string(), removed, total, reads_input));
        }
    }
    Ok(out)
}

fn optimizer(cfg: &StudyConfig) -> Result<Box<dyn Optimizer>> {
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

fn load_data(cfg: &StudyConfig, data_dir: Option<&Path>) -> Result<LoadedImages> {
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
    let mut batches = ImageBatches::new(test, norm.clone(), cfg.data.eval_batch_size, false, None, dev.clone());
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
    let mut batches = ImageBatches::new(test, norm.clone(), cfg.data.eval_batch_size, false, None, dev.clone());
    let mut rng = SeededRng::substream(cfg.seed, STREAM_EVAL);
    let p = predict(net, &mut batches, Sampling::Mean, &mut rng)?;
    Ok(classification_metrics(&p.probs, &p.labels, p.classes)?.accuracy)
}

/// Trains the config's model, or resumes the run in `resume`; writes the run directory.
pub fn train(cfg: &StudyConfig, opts: &TrainOptions, resume: Option<&Path>) -> Result<RunSummary> {
    let t0 = Instant::now();
    let dev = device(&opts.device)?;
    let run = match resume {
        Some(p) => RunDir::open(p)?,
        None => RunDir::create(&cfg.name, opts.out.as_deref())?,
    };
    // A new run records its resolved config before training; a resumed run only once it has
    // succeeded, so a failing resume leaves the good run as it was.
    if resume.is_none() {
        atomic::write_string(&run.file("config.toml"), &cfg.to_toml()?)?;
    }

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

    let settings = TrainSettings {
        epochs: cfg.train.epochs,
        lr: cfg.optim.lr,
        schedule: cfg.train.schedule.clone(),
        sampling: sampling(cfg)?,
        objective: cfg
            .objective(train_set.len())
            .map_err(|e| ExpError::config("bayes", e))?,
    };
    let mut trainer = Trainer::new(
        &net,
        store.clone(),
        optimizer(cfg)?,
        settings,
        SeededRng::substream(cfg.seed, STREAM_TRAIN),
    )?;
    if resume.is_some() {
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
    );
    let mut test_batches = ImageBatches::new(
        &data.test,
        norm.clone(),
        cfg.data.eval_batch_size,
        false,
        None,
        dev.clone(),
    );
    let mut recorder = RunRecorder::new(&run);
    let mut progress = Progress::new(opts.quiet);
    let mut observers: Vec<&mut dyn Observer> = vec![&mut progress, &mut recorder];
    let state = trainer.fit(&mut train_batches, Some(&mut test_batches), &mut observers)?;

    let ev = evaluate(&net, &data.test, &norm, cfg, &dev)?;
    let (preds, m) = (ev.preds, ev.metrics);
    let sparse_threshold = (cfg.model.layers == "sparse-vd").then_some(cfg.bayes.sparse_vd_threshold);
    let (nonzero, weights_total) = test_time_params(&store, sparse_threshold)?;
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
    if let Some(th) = sparse_threshold {
        if let Some(f) = sparsity_log_alpha(&store, th)? {
            put("sparsity_log_alpha", f.into());
        }
    }
    if cfg.model.layers == "gsm-gates" {
        let gates = gate_counts(&store, cfg.bayes.gate_threshold, cfg.bayes.gate_lr_scale, input)?;
        let (mut removed, mut total, mut in_removed, mut in_total) = (0, 0, 0, 0);
        for (layer, r, t, reads_input) in &gates {
            put(&format!("units_removed.{layer}"), (*r).into());
            put(&format!("units_total.{layer}"), (*t).into());
            if *reads_input {
                (in_removed, in_total) = (in_removed + r, in_total + t);
            } else {
                (removed, total) = (removed + r, total + t);
            }
        }
        if total > 0 {
            put("units_removed", (removed as f64 / total as f64).into());
            put("units_hidden_total", total.into());
        }
        if in_total > 0 {
            put("inputs_removed", (in_removed as f64 / in_total as f64).into());
        }
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

/// Evaluates a finished run's final weights on its test set.
pub fn eval(
    run_dir: &Path,
    data_dir: Option<&Path>,
    device_name: &str,
) -> Result<(ClassificationMetrics, StudyConfig)> {
    let run = RunDir::open(run_dir)?;
    let cfg = StudyConfig::from_file(&run.file("config.toml"), &[])?;
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
    let weights = run.file("weights.safetensors");
    let tensors = if weights.exists() {
        atomic::read_safetensors(&weights)?
    } else {
        run.read_checkpoint()?.weights
    };
    store.load(&tensors)?;
    let m = evaluate(&net, &data.test, &norm, &cfg, &dev)?.metrics;
    Ok((m, cfg))
}

/// The quickstart config, shipped in `experiments/configs/quickstart.toml`.
pub const QUICKSTART_TOML: &str = include_str!("../configs/quickstart.toml");

/// The quickstart's sparse-VD LeNet-5, shipped in `experiments/configs/quickstart-sparse-vd.toml`.
pub const QUICKSTART_SPARSE_VD_TOML: &str = include_str!("../configs/quickstart-sparse-vd.toml");

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
        "test_nll",
        "test_brier",
        "test_ece",
        "test_mce",
        "test_mutual_information",
        "sparsity_log_alpha",
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
