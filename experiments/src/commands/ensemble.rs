//! Deep ensembles (Lakshminarayanan, Pritzel & Blundell 2017) in the `train` command: the M
//! members of `[posterior] kind = "ensemble"` are ordinary runs of the same config in
//! `members/member-<i>/` of the ensemble's run directory, member `i` with seed
//! `seed + 1000 · i` (member 0 is the run of the config's own seed, so an ensemble pairs with the
//! single network of that seed). Each member checkpoints and resumes like any run; a finished
//! member is kept, an unfinished one resumed, so a killed ensemble continues where it stopped.
//! The ensemble predicts by averaging its members' probabilities.

use super::eval::evaluate;
use super::posterior::{write_run_files, Fitted, MixtureRun};
use super::run_dir::{open_resumed, run_dir, RunSummary, TrainOptions};
use super::setup::{build_model, device, load_data};
use crate::atomic;
use crate::config::StudyConfig;
use crate::data::Normalizer;
use crate::error::{ExpError, Result};
use crate::store::RunDir;
use secateur_inference::posterior::{Ensemble, ParamSample};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Member `i`'s seed offset: member `i` trains with seed `seed + MEMBER_SEED_STEP · i`.
pub const MEMBER_SEED_STEP: u64 = 1000;

/// The config of member `i`: the ensemble's config with seed `seed + 1000 · i`, no posterior,
/// and the name `<name>-member<i>`.
pub fn member_config(cfg: &StudyConfig, i: usize) -> StudyConfig {
    let mut c = cfg.clone();
    c.seed = cfg.seed + MEMBER_SEED_STEP * i as u64;
    c.posterior = Default::default();
    c.name = format!("{}-member{i}", cfg.name);
    c
}

/// The directory of member `i` in the ensemble run `run`.
pub(super) fn member_dir(run: &Path, i: usize) -> PathBuf {
    run.join("members").join(format!("member-{i}"))
}

/// Trains (or resumes) only member `i` of the ensemble config `cfg` in the ensemble's run
/// directory `dir`, for parallel jobs (one per member, `train --member I`): the directory and
/// its `config.toml` are created if absent (a recorded config of another seed is refused); the
/// member holds its own run's lock, not the ensemble's. A finished member is left as it is. Run
/// `train --resume DIR` afterwards to train any member still missing and combine them.
pub fn train_member(cfg: &StudyConfig, opts: &TrainOptions, dir: &Path, i: usize) -> Result<RunSummary> {
    let m = cfg.posterior.members();
    if cfg.posterior.kind != "ensemble" {
        return Err(ExpError::config(
            "--member",
            "applies to [posterior] kind = \"ensemble\"",
        ));
    }
    if i >= m {
        return Err(ExpError::config(
            "--member",
            format!("{i} is not a member: the ensemble has {m} (0 to {})", m - 1),
        ));
    }
    let recorded = dir.join("config.toml");
    if recorded.is_file() {
        let r = StudyConfig::from_file(&recorded, &[])?;
        if r.seed != cfg.seed || r.posterior != cfg.posterior {
            return Err(ExpError::config(
                "--member",
                format!(
                    "{} records another ensemble (seed or [posterior] differ)",
                    recorded.display()
                ),
            ));
        }
    } else {
        std::fs::create_dir_all(dir).map_err(|e| ExpError::io(dir, e))?;
        atomic::write_string(&recorded, &cfg.to_toml()?)?;
    }
    let mdir = member_dir(dir, i);
    let summary_of = |d: &Path| -> Result<RunSummary> {
        let text = std::fs::read_to_string(d.join("metrics.json")).map_err(|e| ExpError::io(d, e))?;
        let metrics =
            serde_json::from_str::<Map<String, Value>>(&text).map_err(|e| ExpError::io(d, std::io::Error::other(e)))?;
        Ok(RunSummary {
            dir: d.to_path_buf(),
            metrics,
        })
    };
    if mdir.join("metrics.json").is_file() {
        return summary_of(&mdir);
    }
    let mcfg = member_config(cfg, i);
    let started = mdir.join("config.toml").is_file();
    let mopts = TrainOptions {
        out: (!started).then(|| mdir.clone()),
        ..opts.clone()
    };
    super::train::train(&mcfg, &mopts, started.then_some(mdir.as_path()))
}

/// Trains (or resumes) every member, then evaluates the ensemble and writes its run files.
pub(super) fn train(cfg: &StudyConfig, opts: &TrainOptions, resume: Option<&Path>) -> Result<RunSummary> {
    let t0 = Instant::now();
    if opts.masks.is_some() {
        return Err(ExpError::config("--masks", "is not supported for an ensemble"));
    }
    let resumed = open_resumed(cfg, resume, opts.quiet)?;
    let (run, _lock) = run_dir(cfg, opts, resumed)?;
    let m = cfg.posterior.members();
    for i in 0..m {
        let dir = member_dir(run.path(), i);
        if dir.join("metrics.json").is_file() {
            continue;
        }
        let mcfg = member_config(cfg, i);
        if !opts.quiet {
            eprintln!(
                "ensemble member {}/{m} (seed {}) in {}",
                i + 1,
                mcfg.seed,
                dir.display()
            );
        }
        let started = dir.join("config.toml").is_file();
        let mopts = TrainOptions {
            out: (!started).then(|| dir.clone()),
            ..opts.clone()
        };
        super::train::train(&mcfg, &mopts, started.then_some(dir.as_path()))?;
    }
    if cfg.likelihood.is_regression() {
        return super::regression::ensemble(cfg, opts, &run, t0);
    }
    let ens = load(cfg, &run)?;

    let dev = device(&opts.device)?;
    let data = load_data(cfg, opts.data_dir.as_deref())?;
    // the members' training set (no validation split: refused for ensembles) and its normalisation
    let train_set = data.train.clone();
    let norm = Normalizer::from_set(&train_set);
    let input = [train_set.channels, train_set.height, train_set.width];
    let classes = data.train.n_classes.max(data.test.n_classes) as usize;
    let (net, store) = build_model(cfg, input, classes, &dev)?;
    let fitted = Fitted::Ensemble(ens);
    let mixture = MixtureRun {
        cfg,
        fitted: &fitted,
        net: &net,
        store: &store,
        test: &data.test,
        train_set: &train_set,
        norm: &norm,
        dev: &dev,
    };
    let (mut metrics, mc) = mixture.metrics("ensemble", m, opts.data_dir.as_deref())?;
    // each member alone, as a reference, and the members' training time
    let member_seconds = member_metrics(cfg, &run)?
        .iter()
        .map(|mm| mm.get("wall_seconds").and_then(Value::as_f64).unwrap_or(f64::NAN))
        .sum::<f64>();
    let mut accs = Vec::new();
    for i in 0..m {
        let w = RunDir::open(&member_dir(run.path(), i))?.read_final_weights()?;
        store.load(&w)?;
        accs.push(
            evaluate(&net, &data.test, &norm, &member_config(cfg, i), &dev)?
                .metrics
                .accuracy,
        );
    }
    let mut put = |k: &str, v: Value| {
        metrics.insert(k.to_string(), v);
    };
    put(
        "member_test_accuracy_mean",
        (accs.iter().sum::<f64>() / m as f64).into(),
    );
    // the members' training (each from its own metrics.json) plus the ensemble's evaluation
    put("member_wall_seconds", member_seconds.into());
    put("wall_seconds", t0.elapsed().as_secs_f64().into());
    write_run_files(&run, cfg, &metrics, &mc.predictions)?;
    Ok(RunSummary {
        dir: run.path().to_path_buf(),
        metrics,
    })
}

/// The `metrics.json` of each finished member of the ensemble run `run`, in member order.
pub(super) fn member_metrics(cfg: &StudyConfig, run: &RunDir) -> Result<Vec<Map<String, Value>>> {
    (0..cfg.posterior.members())
        .map(|i| {
            let path = member_dir(run.path(), i).join("metrics.json");
            let text = std::fs::read_to_string(&path).map_err(|e| ExpError::io(&path, e))?;
            serde_json::from_str(&text).map_err(|e| ExpError::io(&path, std::io::Error::other(e)))
        })
        .collect()
}

/// The ensemble of a run's finished members (every parameter and buffer of each), refusing a
/// run with a member that has not finished.
pub(super) fn load(cfg: &StudyConfig, run: &RunDir) -> Result<Ensemble> {
    let mut members: Vec<ParamSample> = Vec::new();
    for i in 0..cfg.posterior.members() {
        let dir = member_dir(run.path(), i);
        let w = RunDir::open(&dir)?.read_final_weights()?;
        members.push(w.into_iter().collect());
    }
    Ok(Ensemble::new(members)?)
}
