//! `train` and `eval` for regression tables under a Gaussian likelihood (`[likelihood] kind =
//! "gaussian"`).
//!
//! The table (no split of its own) is split into train and test rows by a permutation seeded
//! from the config's seed (`data.test_fraction` held out). Inputs and targets are standardised
//! with the mean and population standard deviation of the TRAINING rows only; the model is
//! trained on standardised targets, and every reported metric (`metrics.json`, the report, the
//! per-epoch history) is mapped back to the ORIGINAL target units: RMSE and predictive standard
//! deviations are multiplied by the target's standard deviation `s`, variances by `s²`, and
//! NLLs gain `log s` (the Jacobian of the standardisation).

use super::posterior::Fitted;
use super::run_dir::resume_from_checkpoint;
use super::setup::{eval_table_batches, TrainingSetup};
use super::{device, open_resumed, run_dir, sampling, RunSummary, TrainOptions};
use crate::atomic;
use crate::config::StudyConfig;
use crate::data::{load_table, Standardizer, TableSet};
use crate::error::{ExpError, Result};
use crate::seed_stream::SeedStream;
use crate::store::RunDir;
use candle_core::{Device, Tensor};
use secateur_bayes::{ParamStore, Sampling};
use secateur_inference::likelihood::{Gaussian, Likelihood, Noise, LOG_STD_NAME};
use secateur_inference::metrics::{regression_metrics, RegressionMetrics};
use secateur_inference::posterior::{predict_bma_regression, BmaSettings};
use secateur_inference::predict::{predict_regression, RegressionPredictions};
use secateur_inference::train::EpochRecord;
use secateur_models::Network;
use serde_json::{Map, Value};
use std::path::Path;
use std::time::Instant;

/// A table split into train and test rows, with the training rows' standardisation.
pub struct RegressionData {
    /// Training rows.
    pub train: TableSet,
    /// Test rows.
    pub test: TableSet,
    /// Statistics of the training rows.
    pub std: Standardizer,
}

/// Loads the config's table and splits it (seeded by `seed`, `data.test_fraction` held out).
pub fn load_regression_data(cfg: &StudyConfig, data_dir: Option<&Path>) -> Result<RegressionData> {
    let dir = data_dir.map(Path::to_path_buf).or_else(|| cfg.data.dir.clone());
    let table = load_table(&cfg.data.name, dir.as_deref())?.set;
    let mut rng = SeedStream::TableSplit.rng(cfg.seed);
    let (train, test) = table.split(cfg.data.test_fraction, &mut rng)?;
    let std = train.standardizer();
    Ok(RegressionData { train, test, std })
}

/// The model of a regression config (input `[F, 1, 1]`, output 1, or 2 for heteroscedastic
/// noise) and its Gaussian likelihood, whose learned noise (if any) lives in the same store.
pub fn build_regression_model(
    cfg: &StudyConfig,
    data: &RegressionData,
    dev: &Device,
) -> Result<(Network, ParamStore, Gaussian)> {
    let noise = cfg
        .likelihood
        .noise(f64::from(data.std.y_std))
        .map_err(|e| ExpError::config("likelihood", e))?;
    let (store, pb) = super::setup::param_builder(cfg, dev);
    // the output width depends only on the noise kind; the likelihood registers its parameter
    // after the network so that the network's initialisation draws do not depend on it
    let outputs = match noise {
        secateur_inference::likelihood::Noise::Heteroscedastic { .. } => 2,
        _ => 1,
    };
    let net = super::setup::build_network(cfg, [data.train.n_features, 1, 1], outputs, &pb)?;
    let lik = Gaussian::new(noise, 1, &pb)?;
    Ok((net, store, lik))
}

/// Monte Carlo test predictions in the ORIGINAL target units: `bayes.eval_samples` stochastic
/// passes for a Bayesian model, one deterministic pass otherwise (`mean_only`: one pass of the
/// posterior mean).
fn predict_table(
    net: &Network,
    lik: &Gaussian,
    set: &TableSet,
    data: &RegressionData,
    cfg: &StudyConfig,
    dev: &Device,
    mean_only: bool,
) -> Result<RegressionPredictions> {
    let mut batches = eval_table_batches(cfg, set, &data.std, dev);
    let mut rng = SeedStream::Eval.rng(cfg.seed);
    let (how, samples) = if cfg.is_bayesian() && !mean_only {
        (sampling(cfg)?, cfg.bayes.eval_samples)
    } else {
        (Sampling::Mean, 1)
    };
    let p = predict_regression(net, lik, &mut batches, how, samples, &mut rng)?;
    Ok(p.rescaled(f64::from(data.std.y_mean), f64::from(data.std.y_std))?)
}

/// Trains a regression config (see the [module docs](self)), or resumes the run in `resume`.
pub fn train(cfg: &StudyConfig, opts: &TrainOptions, resume: Option<&Path>) -> Result<RunSummary> {
    let t0 = Instant::now();
    let dev = device(&opts.device)?;
    let resumed = open_resumed(cfg, resume, opts.quiet)?;
    let from_checkpoint = matches!(resumed, Some((_, _, true)));
    // the inputs are checked before a new run directory is created
    let data = load_regression_data(cfg, opts.data_dir.as_deref())?;
    let (net, store, lik) = build_regression_model(cfg, &data, &dev)?;
    let setup = TrainingSetup::new(cfg, data.train.len())?;
    if opts.masks.is_some() {
        return Err(ExpError::config(
            "--masks",
            "is for classification runs; this is a regression run",
        ));
    }
    // held until the run is written
    let (run, _lock) = run_dir(cfg, opts, resumed)?;
    let mut trainer = setup
        .trainer(&net, &store)?
        .with_likelihood(Likelihood::Gaussian(lik.clone()))
        .with_target_units(f64::from(data.std.y_mean), f64::from(data.std.y_std))?;
    if from_checkpoint {
        resume_from_checkpoint(&mut trainer, &run)?;
    }
    let mut train_batches = setup.table_batches(&data.train, &data.std, &dev);
    let mut test_batches = eval_table_batches(cfg, &data.test, &data.std, &dev);
    // SWA/SWAG collect along the trajectory (their state is part of every checkpoint)
    let (state, collector) = super::posterior::fit_run_collecting(
        cfg,
        &store,
        &run,
        from_checkpoint,
        &mut trainer,
        &mut train_batches,
        &mut test_batches,
        opts.quiet,
    )?;

    let final_iterate = regression_metrics(&predict_table(&net, &lik, &data.test, &data, cfg, &dev, false)?)?;
    let fitted = fit_posterior(cfg, &net, &store, &lik, collector.as_ref(), &data, &dev)?;
    let preds = match &fitted {
        Some(f) => predict_posterior(cfg, f, &net, &store, &lik, &data.test, &data, &dev)?,
        None => predict_table(&net, &lik, &data.test, &data, cfg, &dev, false)?,
    };
    if let Some(f) = &fitted {
        f.save(&run)?;
    }
    let m = regression_metrics(&preds)?;
    let mut metrics = Map::new();
    let mut put = |k: &str, v: Value| {
        metrics.insert(k.to_string(), v);
    };
    put("study", cfg.name.clone().into());
    put("arch", cfg.model.arch.clone().into());
    put("layers", cfg.model.layers.clone().into());
    put("dataset", cfg.data.name.clone().into());
    put("likelihood", format!("gaussian-{}", lik.noise().name()).into());
    put("target_units", "original".into());
    put("target_mean", f64::from(data.std.y_mean).into());
    put("target_std", f64::from(data.std.y_std).into());
    put("train_size", data.train.len().into());
    put("test_size", data.test.len().into());
    put_regression(&mut put, "test", &m);
    if let Some(f) = &fitted {
        put("posterior", cfg.posterior.kind.clone().into());
        put("eval_samples", preds.samples.into());
        put("final_iterate_test_rmse", final_iterate.rmse.into());
        put("final_iterate_test_nll", final_iterate.nll.into());
        if let Some(l) = f.prior_precision() {
            put("laplace_prior_precision", l.into());
        }
    }
    if cfg.is_bayesian() {
        put("eval_samples", preds.samples.into());
        let pm = regression_metrics(&predict_table(&net, &lik, &data.test, &data, cfg, &dev, true)?)?;
        put("test_rmse_posterior_mean", pm.rmse.into());
        put("test_nll_posterior_mean", pm.nll.into());
    }
    put(
        "train_loss",
        state.history.last().map(|r| r.train_loss).unwrap_or(f64::NAN).into(),
    );
    if let Some(last) = state.history.last() {
        put("train_nll", last.train_nll.into());
        put("train_divergence", last.train_divergence.into());
        put("train_rmse", last.train_rmse.unwrap_or(f64::NAN).into());
    }
    let (nonzero, weights_total) = store.test_time_params()?;
    put("params_total", store.num_params().into());
    put("params_weights", weights_total.into());
    put("params_nonzero", nonzero.into());
    put("epochs", state.epochs_done.into());
    put("seed", cfg.seed.into());
    put("wall_seconds", t0.elapsed().as_secs_f64().into());

    atomic::write_safetensors(&run.file("weights.safetensors"), &store.tensors())?;
    write_predictions(&run, &preds)?;
    crate::plot::write_regression_plots(&run, &state.history)?;
    atomic::write_string(&run.file("report.md"), &report(cfg, &metrics, &state.history))?;
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

/// The posterior of a regression run after training: the collector's SWA/SWAG posterior, or a
/// Laplace approximation fitted on the training rows with the trained network's Gaussian
/// likelihood (its noise as learned or fixed); `None` without `[posterior]` (an ensemble is
/// combined by [`super::ensemble`]).
fn fit_posterior(
    cfg: &StudyConfig,
    net: &Network,
    store: &ParamStore,
    lik: &Gaussian,
    collector: Option<&secateur_inference::swag::SwagCollector>,
    data: &RegressionData,
    dev: &Device,
) -> Result<Option<Fitted>> {
    if cfg.posterior.is_swag() {
        return super::posterior::swag_posterior(cfg, collector).map(Some);
    }
    if cfg.posterior.kind != "laplace" {
        return Ok(None);
    }
    let mut train = eval_table_batches(cfg, &data.train, &data.std, dev);
    // Laplace takes the noise as fixed: a learned homoscedastic σ at its trained value
    let lik = match lik.noise() {
        Noise::Homoscedastic { .. } => {
            let log_std = store
                .get(LOG_STD_NAME)
                .ok_or_else(|| ExpError::config("likelihood", "the learned noise parameter is missing"))?;
            let std: Vec<f32> = log_std.as_tensor().exp()?.flatten_all()?.to_vec1()?;
            let (scratch, pb) = super::setup::param_builder(cfg, dev);
            drop(scratch);
            Gaussian::new(Noise::Fixed { std: f64::from(std[0]) }, lik.dim(), &pb)?
        }
        _ => lik.clone(),
    };
    let lik = Likelihood::Gaussian(lik);
    Ok(Some(super::posterior::fit_laplace(
        cfg, net, store, &mut train, &lik, None,
    )?))
}

/// The posterior predictive of a regression run on `set`, in the original target units: the
/// Gaussian mixture of `posterior.samples` draws (SWAG, Laplace) or of the members (an
/// ensemble), SWA at its mean.
#[allow(clippy::too_many_arguments)]
pub(super) fn predict_posterior(
    cfg: &StudyConfig,
    fitted: &Fitted,
    net: &Network,
    store: &ParamStore,
    lik: &Gaussian,
    set: &TableSet,
    data: &RegressionData,
    dev: &Device,
) -> Result<RegressionPredictions> {
    let mut rng = SeedStream::PosteriorPredictive.rng(cfg.seed);
    let mut batches = eval_table_batches(cfg, set, &data.std, dev);
    let setup = TrainingSetup::new(cfg, data.train.len())?;
    let mut train = setup.table_batches(&data.train, &data.std, dev);
    let settings = BmaSettings {
        samples: match fitted {
            Fitted::Swag(s) if s.kind_of() == secateur_inference::swag::SwagKind::Swa => 1,
            _ => cfg.posterior.samples(),
        },
        refresh_batch_norm: cfg.posterior.refresh_batch_norm.unwrap_or(true),
    };
    let p = predict_bma_regression(
        net,
        store,
        lik,
        fitted.posterior(),
        &mut batches,
        Some(&mut train),
        settings,
        &mut rng,
    )?;
    Ok(p.rescaled(f64::from(data.std.y_mean), f64::from(data.std.y_std))?)
}

/// The test metrics of a regression ensemble whose members are trained (see
/// [`super::ensemble`]): the Gaussian mixture of the members' predictives, written as the
/// ensemble run's `metrics.json`, predictions and report.
pub(super) fn ensemble(cfg: &StudyConfig, opts: &TrainOptions, run: &RunDir, t0: Instant) -> Result<RunSummary> {
    let dev = device(&opts.device)?;
    let data = load_regression_data(cfg, opts.data_dir.as_deref())?;
    let (net, store, lik) = build_regression_model(cfg, &data, &dev)?;
    let fitted = Fitted::Ensemble(super::ensemble::load(cfg, run)?);
    let preds = predict_posterior(cfg, &fitted, &net, &store, &lik, &data.test, &data, &dev)?;
    let m = regression_metrics(&preds)?;
    let mut metrics = Map::new();
    let mut put = |k: &str, v: Value| {
        metrics.insert(k.to_string(), v);
    };
    put("study", cfg.name.clone().into());
    put("arch", cfg.model.arch.clone().into());
    put("layers", cfg.model.layers.clone().into());
    put("dataset", cfg.data.name.clone().into());
    put("likelihood", format!("gaussian-{}", lik.noise().name()).into());
    put("posterior", "ensemble".into());
    put("members", cfg.posterior.members().into());
    put("target_units", "original".into());
    put("train_size", data.train.len().into());
    put("test_size", data.test.len().into());
    put_regression(&mut put, "test", &m);
    let member_seconds = super::ensemble::member_metrics(cfg, run)?
        .iter()
        .map(|m| m.get("wall_seconds").and_then(Value::as_f64).unwrap_or(f64::NAN))
        .sum::<f64>();
    put("seed", cfg.seed.into());
    put("member_wall_seconds", member_seconds.into());
    put("wall_seconds", t0.elapsed().as_secs_f64().into());
    write_predictions(run, &preds)?;
    atomic::write_string(&run.file("report.md"), &report(cfg, &metrics, &[]))?;
    let json = serde_json::to_string_pretty(&Value::Object(metrics.clone()))
        .map_err(|e| ExpError::io(run.path(), std::io::Error::other(e)))?;
    atomic::write_string(&run.file("metrics.json"), &json)?;
    Ok(RunSummary {
        dir: run.path().to_path_buf(),
        metrics,
    })
}

/// Puts the regression metrics under `{prefix}_rmse`, `{prefix}_nll`, … .
fn put_regression(put: &mut impl FnMut(&str, Value), prefix: &str, m: &RegressionMetrics) {
    for (k, v) in [
        ("rmse", m.rmse),
        ("nll", m.nll),
        ("mixture_nll", m.mixture_nll),
        ("coverage_95", m.coverage_95),
        ("mean_predictive_std", m.mean_predictive_std),
        ("mean_aleatoric_var", m.mean_aleatoric_var),
        ("mean_epistemic_var", m.mean_epistemic_var),
    ] {
        put(&format!("{prefix}_{k}"), v.into());
    }
}

/// `predictions.safetensors` of a regression run, in original units: the predictive mean, the
/// aleatoric and epistemic variances and the targets, `[N]` each (f32).
fn write_predictions(run: &RunDir, p: &RegressionPredictions) -> Result<()> {
    let n = p.len();
    let (mut mean, mut ale, mut epi) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let m = p.moments(i, 0);
        mean.push(m.mean as f32);
        ale.push(m.aleatoric as f32);
        epi.push(m.epistemic as f32);
    }
    let t = |v: Vec<f32>| Tensor::from_vec(v, n, &Device::Cpu);
    let (mean, ale, epi, y) = (t(mean)?, t(ale)?, t(epi)?, t(p.targets.clone())?);
    let names = ["mean", "aleatoric_var", "epistemic_var", "targets"].map(String::from);
    atomic::write_safetensors(
        &run.file("predictions.safetensors"),
        [
            (&names[0], &mean),
            (&names[1], &ale),
            (&names[2], &epi),
            (&names[3], &y),
        ],
    )
}

fn report(cfg: &StudyConfig, m: &Map<String, Value>, history: &[EpochRecord]) -> String {
    let f = |k: &str| m.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let mut s = format!(
        "# {}\n\n{} ({} layers, hidden {:?}) on {}, Gaussian likelihood with {} noise, seed {}, {} epochs.\n\n\
         Metrics are in the original units of the target (`{}`: training mean {:.4}, std {:.4}); the \
         model is trained on standardised targets. NLL is per example, in nats, with its constant.\n\n",
        cfg.name,
        cfg.model.arch,
        cfg.model.layers,
        cfg.model.hidden.clone().unwrap_or_else(|| vec![300, 100]),
        cfg.data.name,
        cfg.likelihood.noise,
        cfg.seed,
        cfg.train.epochs,
        cfg.data.name,
        f("target_mean"),
        f("target_std"),
    );
    s.push_str("| metric | value |\n|---|---|\n");
    for k in [
        "test_rmse",
        "test_nll",
        "test_mixture_nll",
        "test_coverage_95",
        "test_mean_predictive_std",
        "test_mean_aleatoric_var",
        "test_mean_epistemic_var",
        "test_rmse_posterior_mean",
        "test_nll_posterior_mean",
        "train_rmse",
        "params_total",
        "wall_seconds",
    ] {
        if m.contains_key(k) {
            s.push_str(&format!("| {k} | {:.4} |\n", f(k)));
        }
    }
    s.push_str(
        "\n## History\n\nTest metrics of the posterior-mean network, one pass.\n\n\
         | epoch | lr | train loss | train RMSE | test RMSE | test NLL | test coverage 95% |\n|---|---|---|---|---|---|---|\n",
    );
    for r in history {
        let (a, n, c) = r
            .eval_regression
            .as_ref()
            .map(|x| (x.rmse, x.nll, x.coverage_95))
            .unwrap_or((f64::NAN, f64::NAN, f64::NAN));
        s.push_str(&format!(
            "| {} | {:.4} | {:.4} | {:.4} | {a:.4} | {n:.4} | {c:.4} |\n",
            r.epoch,
            r.lr,
            r.train_loss,
            r.train_rmse.unwrap_or(f64::NAN)
        ));
    }
    s
}

/// Evaluates a finished regression run's final weights on its test rows (original units).
/// A run without `weights.safetensors` (unfinished) and weights with a NaN or infinite entry are
/// refused, naming the file or the tensor.
pub fn eval(run_dir: &Path, data_dir: Option<&Path>, device_name: &str) -> Result<(RegressionMetrics, StudyConfig)> {
    let (preds, cfg) = predict_run(run_dir, data_dir, device_name)?;
    Ok((regression_metrics(&preds)?, cfg))
}

/// A finished regression run's predictive on its test rows, in the original units of the
/// target, exactly as `train` predicted it: the `[posterior]`'s predictive where the run has
/// one, Monte Carlo over `bayes.eval_samples` draws for a Bayesian network, one pass otherwise.
/// Refuses what [`eval`] refuses.
pub fn predict_run(
    run_dir: &Path,
    data_dir: Option<&Path>,
    device_name: &str,
) -> Result<(RegressionPredictions, StudyConfig)> {
    let run = RunDir::open(run_dir)?;
    let cfg = StudyConfig::from_file(&run.file("config.toml"), &[])?;
    if !cfg.likelihood.is_regression() {
        return Err(ExpError::config(
            "likelihood.kind",
            format!("run {} is not a regression run", run_dir.display()),
        ));
    }
    let ensemble = cfg.posterior.kind == "ensemble";
    // an ensemble's weights are its members'
    let weights = if ensemble {
        None
    } else {
        Some(run.read_final_weights()?)
    };
    let dev = device(device_name)?;
    let data = load_regression_data(&cfg, data_dir)?;
    let (net, store, lik) = build_regression_model(&cfg, &data, &dev)?;
    if let Some(w) = &weights {
        store.load(w)?;
    }
    let preds = match Fitted::load(&cfg, &run)? {
        Some(f) => predict_posterior(&cfg, &f, &net, &store, &lik, &data.test, &data, &dev)?,
        None => predict_table(&net, &lik, &data.test, &data, &cfg, &dev, false)?,
    };
    Ok((preds, cfg))
}
