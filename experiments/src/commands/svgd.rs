//! SVGD in the `train` command (`[posterior] kind = "svgd"`, Liu & Wang 2016): `members`
//! particles of the config's network, each a whole set of its trainable parameters, moved
//! together by [`SteinNetwork`] for `train.epochs` passes over the training set.
//!
//! - **Particles.** Particle `i` starts at the initialisation of the ensemble member `i`
//!   (`ensemble::member_config`: seed `seed + 1000 · i`), so that SVGD and the deep
//!   ensemble of one seed start from the same networks (a paired comparison).
//! - **Target.** `∇ log p(x) = −N · ∇ (mini-batch mean cross-entropy) + ∇ log p₀(x)` with the
//!   Gaussian prior `p₀ = N(0, prior_std² I)` over every trainable parameter.
//! - **Steps.** One SVGD step per mini-batch of `data.batch_size` (the epoch's shuffle and
//!   augmentation from [`SeedStream::Train`], as `train` draws them; every particle sees the same
//!   batch), the network in training mode (batch-norm batch statistics; its running statistics
//!   are buffers every particle shares), AdaGrad with momentum at step `step`.
//!   `kernel = "none"` drops the kernel: independent particles trained in lock step (an ensemble
//!   on SVGD's budget and draws, the fair baseline of the repulsion).
//! - **Checkpoints.** After every epoch, `svgd/epoch-<e>.safetensors` (particles and AdaGrad
//!   history, [`SteinNetwork::state`]) and then `svgd/epoch-<e>.json` (epoch and generator
//!   state); a resume continues from the newest epoch whose JSON exists, bit-identically, and
//!   earlier epochs are removed.
//! - **Result.** `posterior.safetensors` (the particles by parameter name, an ensemble of kind
//!   `svgd`), `weights.safetensors` (the particles' mean, with the shared buffers), and the
//!   run's `metrics.json`, predictions and report from the particles' model average.

use super::posterior::{write_run_files, Fitted, MixtureRun};
use super::run_dir::{open_resumed, run_dir, RunSummary, TrainOptions};
use super::setup::{build_model, device, load_data, TrainingSetup};
use crate::atomic;
use crate::config::StudyConfig;
use crate::data::Normalizer;
use crate::error::{ExpError, Result};
use crate::seed_stream::SeedStream;
use crate::store::RunDir;
use candle_core::Tensor;
use secateur_bayes::rng::RngState;
use secateur_bayes::{Ctx, Module, Sampling, SeededRng};
use secateur_inference::batches::Batches;
use secateur_inference::posterior::{apply_sample, Ensemble, ParamSample};
use secateur_inference::svgd::network::{gaussian_prior_grad, SteinNetwork};
use secateur_inference::svgd::Interaction;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The folder of a run that holds the SVGD checkpoints.
pub const SVGD_DIR: &str = "svgd";

/// What `svgd/epoch-<e>.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Progress {
    /// Epochs finished.
    epoch: usize,
    /// The training generator after them.
    rng: RngState,
}

fn state_paths(run: &RunDir, epoch: usize) -> (PathBuf, PathBuf) {
    let d = run.file(SVGD_DIR);
    (
        d.join(format!("epoch-{epoch}.safetensors")),
        d.join(format!("epoch-{epoch}.json")),
    )
}

/// The newest finished epoch's progress, if any.
fn latest(run: &RunDir) -> Result<Option<Progress>> {
    let d = run.file(SVGD_DIR);
    let Ok(entries) = std::fs::read_dir(&d) else {
        return Ok(None);
    };
    let mut best: Option<usize> = None;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name
            .strip_prefix("epoch-")
            .and_then(|s| s.strip_suffix(".json"))
            .and_then(|s| s.parse::<usize>().ok())
        {
            best = Some(best.map_or(n, |b| b.max(n)));
        }
    }
    let Some(e) = best else { return Ok(None) };
    let (_, json) = state_paths(run, e);
    let text = std::fs::read_to_string(&json).map_err(|err| ExpError::io(&json, err))?;
    let p: Progress = serde_json::from_str(&text).map_err(|err| ExpError::io(&json, std::io::Error::other(err)))?;
    Ok(Some(p))
}

/// Trains (or resumes) the particles, then evaluates their model average and writes the run.
pub(super) fn train(cfg: &StudyConfig, opts: &TrainOptions, resume: Option<&Path>) -> Result<RunSummary> {
    let t0 = Instant::now();
    if opts.masks.is_some() {
        return Err(ExpError::config(
            "--masks",
            "is not supported for [posterior] kind = \"svgd\"",
        ));
    }
    let dev = device(&opts.device)?;
    let data = load_data(cfg, opts.data_dir.as_deref())?;
    let train_set = if cfg.data.val_fraction > 0.0 {
        let mut split_rng = SeedStream::DataSplit.rng(cfg.seed);
        data.train.split(cfg.data.val_fraction, &mut split_rng)?.0
    } else {
        data.train.clone()
    };
    let norm = Normalizer::from_set(&train_set);
    let input = [train_set.channels, train_set.height, train_set.width];
    let classes = data.train.n_classes.max(data.test.n_classes) as usize;
    let (net, store) = build_model(cfg, input, classes, &dev)?;
    let resumed = open_resumed(cfg, resume, opts.quiet)?;
    let (run, _lock) = run_dir(cfg, opts, resumed)?;

    // the particles start at the ensemble members' initialisations
    let m = cfg.posterior.members();
    let members = (0..m)
        .map(|i| {
            let (_, s) = build_model(&super::ensemble::member_config(cfg, i), input, classes, &dev)?;
            Ok(s.params()
                .into_iter()
                .map(|(k, v)| (k, v.as_tensor().copy()))
                .map(|(k, t)| t.map(|t| (k, t)))
                .collect::<candle_core::Result<ParamSample>>()?)
        })
        .collect::<Result<Vec<_>>>()?;
    let interaction = match cfg.posterior.kernel() {
        "none" => Interaction::Independent,
        _ => Interaction::Stein,
    };
    let mut svgd = SteinNetwork::new(&store, &members, cfg.posterior.step(), interaction)?;
    let prior_std = cfg.posterior.prior_std();
    let mut rng = SeedStream::Train.rng(cfg.seed);
    let mut start = 0;
    if let Some(p) = latest(&run)? {
        let (st, _) = state_paths(&run, p.epoch);
        let mut state: BTreeMap<String, Tensor> = crate::store::read_finite_safetensors(&st)?.into_iter().collect();
        // the AdaGrad history holds NaN where no step has been taken yet: none after an epoch
        svgd.load_state(&state)?;
        state.retain(|k, _| k.starts_with("buffer/"));
        apply_sample(&store, &state_buffers(&state))?;
        rng = SeededRng::from_state(p.rng);
        start = p.epoch;
    }

    let setup = TrainingSetup::new(cfg, train_set.len())?;
    let mut batches = setup.image_batches(&train_set, &norm, &dev)?;
    let n = train_set.len();
    let epochs = cfg.train.epochs;
    let bar = if opts.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(((epochs - start.min(epochs)) * batches.num_batches()) as u64)
    };
    bar.set_message(format!("svgd, {m} particles"));
    for epoch in start..epochs {
        batches.start_epoch(epoch, &mut rng);
        for i in 0..batches.num_batches() {
            let (x, y) = batches.batch(i, &mut rng)?;
            svgd.step(
                &store,
                n,
                |_| {
                    let mut ctx = Ctx::train(&mut rng, Sampling::Mean);
                    let logits = net.forward(&x, &mut ctx)?;
                    secateur_bayes::nn::cross_entropy(&logits, &y)
                },
                |p| gaussian_prior_grad(p, prior_std),
            )?;
            bar.inc(1);
        }
        // checkpoint: the state, then the progress that names it
        let (st, json) = state_paths(&run, epoch + 1);
        std::fs::create_dir_all(run.file(SVGD_DIR)).map_err(|e| ExpError::io(run.file(SVGD_DIR), e))?;
        let mut state = svgd.state()?;
        for (k, v) in store.buffers() {
            state.insert(format!("buffer/{k}"), v.as_tensor().copy()?);
        }
        atomic::write_safetensors(&st, &state)?;
        let p = Progress {
            epoch: epoch + 1,
            rng: rng.state(),
        };
        let text = serde_json::to_string_pretty(&p).map_err(|e| ExpError::io(&json, std::io::Error::other(e)))?;
        atomic::write_string(&json, &text)?;
        if epoch > 0 {
            let (old_st, old_json) = state_paths(&run, epoch);
            let _ = std::fs::remove_file(old_json);
            let _ = std::fs::remove_file(old_st);
        }
    }
    bar.finish_and_clear();

    // the posterior: the particles with the shared buffers
    let buffers: ParamSample = store
        .buffers()
        .into_iter()
        .map(|(k, v)| Ok((k, v.as_tensor().copy()?)))
        .collect::<candle_core::Result<_>>()?;
    let particles = svgd
        .members(&store)?
        .into_iter()
        .map(|mut p| {
            p.extend(buffers.clone());
            p
        })
        .collect();
    let ens = Ensemble::named("svgd", particles)?;
    let fitted = Fitted::Svgd(ens);
    fitted.save(&run)?;
    let mean = fitted.posterior().mean()?;
    atomic::write_safetensors(&run.file("weights.safetensors"), &mean)?;

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
    let (mut metrics, mc) = mixture.metrics("svgd", m, opts.data_dir.as_deref())?;
    metrics.insert("kernel".into(), cfg.posterior.kernel().into());
    metrics.insert("epochs".into(), epochs.into());
    metrics.insert("wall_seconds".into(), t0.elapsed().as_secs_f64().into());
    write_run_files(&run, cfg, &metrics, &mc.predictions)?;
    Ok(RunSummary {
        dir: run.path().to_path_buf(),
        metrics,
    })
}

/// The buffers saved beside a checkpoint's particles (`buffer/<name>`).
fn state_buffers(state: &BTreeMap<String, Tensor>) -> ParamSample {
    state
        .iter()
        .filter_map(|(k, t)| k.strip_prefix("buffer/").map(|n| (n.to_string(), t.clone())))
        .collect()
}
