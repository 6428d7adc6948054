//! The `train` command for classification (regression configs go to
//! [`regression::train`](super::regression::train)): check the inputs, open or create the run,
//! train (after the growing-regularisation phase of `[greg]`, if any), evaluate, and write the
//! run's files (weights, `metrics.json`, predictions, plots, `report.md`).

use super::eval::{evaluate, ood_predictions, posterior_mean_accuracy, width_accuracies};
use super::report::{report, report_value, write_predictions};
use super::run_dir::{
    open_resumed, record_masks, resume_from_checkpoint, run_dir, RunSummary, TrainOptions, MASKS_FILE,
};
use super::setup::{build_model, device, eval_image_batches, init_from_deterministic, load_data, TrainingSetup};
use crate::atomic;
use crate::config::StudyConfig;
use crate::data::Normalizer;
use crate::error::{ExpError, Result};
use crate::seed_stream::SeedStream;
use secateur_inference::metrics::classification_metrics;
use secateur_inference::predict::McPredictions;
use serde_json::{Map, Value};
use std::path::Path;
use std::time::Instant;

/// Trains the config's model, or resumes the run in `resume`; writes the run directory.
///
/// The data, the model and `opts.masks` are checked before a new directory is created. The
/// process holds the run's lock ([`RunDir::lock`](crate::store::RunDir::lock)) throughout, so a
/// second writer is refused. A resume continues from the last checkpoint (or, if the run stopped
/// before its first one, trains from the start with the recorded config), keeps the run's seed
/// (another one is refused) and its recorded masks (`masks.safetensors`), and writes the same
/// files, bit for bit but for wall times, as a run that was never interrupted.
pub fn train(cfg: &StudyConfig, opts: &TrainOptions, resume: Option<&Path>) -> Result<RunSummary> {
    if cfg.bayes.spike_slab_layerwise
        && cfg.bayes.spike_slab_layer_inclusion.is_empty()
        && (cfg.posterior.kind == "ensemble" || cfg.posterior.kind == "svgd" || cfg.likelihood.is_regression())
    {
        return Err(ExpError::config(
            "bayes.spike_slab_layerwise",
            "is resolved for classification training of one network; give bayes.spike_slab_layer_inclusion instead",
        ));
    }
    if cfg.posterior.kind == "ensemble" {
        return super::ensemble::train(cfg, opts, resume);
    }
    if cfg.posterior.kind == "svgd" {
        if cfg.likelihood.is_regression() {
            return Err(ExpError::config(
                "posterior.kind",
                "`svgd` trains classifiers here; regression by SVGD is `secateur study svgd`",
            ));
        }
        return super::svgd::train(cfg, opts, resume);
    }
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
    if !cfg.pruning.is_off() && opts.masks.is_some() {
        return Err(ExpError::config(
            "--masks",
            format!(
                "cannot be combined with pruning.method `{}`, which learns its own masks",
                cfg.pruning.method
            ),
        ));
    }

    // The inputs are checked before a new run directory is created: data, model, masks.
    let data = load_data(cfg, opts.data_dir.as_deref())?;
    let (train_set, val_set) = if cfg.data.val_fraction > 0.0 {
        let mut split_rng = SeedStream::DataSplit.rng(cfg.seed);
        data.train.split(cfg.data.val_fraction, &mut split_rng)?
    } else {
        (data.train.clone(), data.train.subset(&[])?)
    };
    let norm = Normalizer::from_set(&train_set);
    let input = [train_set.channels, train_set.height, train_set.width];
    let classes = data.train.n_classes.max(data.test.n_classes) as usize;
    // the layer-wise spike-and-slab λ is resolved from the data and recorded in the run's config
    let resolved = super::setup::resolve_layerwise_inclusion(cfg, input, classes, train_set.len())?;
    let cfg = &resolved;
    let (net, store) = build_model(cfg, input, classes, &dev)?;
    let setup = TrainingSetup::new(cfg, train_set.len())?;
    // Empirical-Bayes initialisation (unless a checkpoint is loaded below), and the
    // posterior-mean test accuracy it starts from.
    let init_accuracy = match (&cfg.bayes.init_from, from_checkpoint) {
        (Some(path), false) => {
            init_from_deterministic(&store, path, cfg.bayes.init_delta)?;
            Some(posterior_mean_accuracy(&net, &data.test, &norm, cfg, &dev)?)
        }
        _ => None,
    };
    // `--masks`, or the masks a resumed run records (`[greg]` makes its own below; a learned
    // method's masks are an output, and its state is in the checkpoint)
    let recorded_masks = match &resumed {
        Some((run, _, _)) if !cfg.greg.enabled() && cfg.pruning.is_off() && run.file(MASKS_FILE).is_file() => {
            Some(run.file(MASKS_FILE))
        }
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

    let mut trainer = setup.trainer(&net, &store)?;
    if let Some(o) = crate::learned::objective(cfg)? {
        trainer = trainer.with_objective(o);
    }
    if let Some(h) = crate::learned::hook(cfg, input, classes)? {
        trainer.set_hook(h);
    }
    let masks = match (given_masks, &greg) {
        (Some(m), _) => Some(m),
        (None, Some((m, _))) => Some(m.clone()),
        (None, None) => None,
    };
    if let Some(m) = &masks {
        trainer.set_hook(Box::new(m.clone()));
    }
    if from_checkpoint {
        resume_from_checkpoint(&mut trainer, &run)?;
    }
    let mut train_batches = setup.image_batches(&train_set, &norm, &dev)?;
    let mut test_batches = eval_image_batches(cfg, &data.test, &norm, &dev)?;
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

    // a learned method's masks, applied (no output changes), before anything is measured
    let learned = crate::learned::finish(&crate::learned::Trained {
        cfg,
        net: &net,
        store: &store,
        input,
        classes,
        train: &train_set,
        test: &data.test,
        norm: &norm,
        dev: &dev,
        run: run.path(),
    })?;
    // the network's own predictions (the final iterate), then those of the posterior, if any
    let mut ev = evaluate(&net, &data.test, &norm, cfg, &dev)?;
    let final_iterate = ev.metrics;
    let fitted = super::posterior::fit(cfg, &net, &store, collector.as_ref(), &train_set, &val_set, &norm, &dev)?;
    if let Some(f) = &fitted {
        let mc = super::posterior::predict(cfg, f, &net, &store, &data.test, &train_set, &norm, &dev)?;
        let p = &mc.predictions;
        ev.metrics = classification_metrics(&p.probs, &p.labels, p.classes)?;
        ev.preds = p.clone();
        ev.mc = Some(mc);
        f.save(&run)?;
    }
    let ood = match &cfg.data.ood {
        Some(name) => {
            let set = crate::data::load_images(name, opts.data_dir.as_deref())?.test;
            let mo = match &fitted {
                Some(f) => super::posterior::predict(cfg, f, &net, &store, &set, &train_set, &norm, &dev)?,
                None => ood_predictions(&net, &set, &norm, cfg, &dev)?,
            };
            let in_dist = match &ev.mc {
                Some(mc) => mc.clone(),
                None => {
                    McPredictions::from_draws(&[ev.preds.probs.clone()], ev.preds.labels.clone(), ev.preds.classes)?
                }
            };
            Some((name.clone(), super::posterior::ood_auroc(&in_dist, &mo)?))
        }
        None => None,
    };
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
    if let Some(f) = &fitted {
        put("posterior", cfg.posterior.kind.clone().into());
        put("final_iterate_test_accuracy", final_iterate.accuracy.into());
        put("final_iterate_test_nll", final_iterate.nll.into());
        if let Some(l) = f.prior_precision() {
            put("laplace_prior_precision", l.into());
        }
    }
    if let Some((name, a)) = &ood {
        put("ood_dataset", name.clone().into());
        put("ood_auroc_entropy", (*a).into());
    }
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
        if fitted.is_none() {
            put(
                "test_accuracy_posterior_mean",
                posterior_mean_accuracy(&net, &data.test, &norm, cfg, &dev)?.into(),
            );
        }
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
    for (k, v) in learned {
        put(&k, v);
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
