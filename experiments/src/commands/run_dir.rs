//! The run directory of `train` and of the regression path: their options ([`TrainOptions`]) and
//! result ([`RunSummary`]), the run being resumed or a new one, the mask file it records,
//! the training loop of a run (resumed from its checkpoint, recording every epoch), and the
//! error of a failed fit, which names the checkpoint the run keeps.

use crate::atomic;
use crate::config::StudyConfig;
use crate::error::{ExpError, Result};
use crate::observe::{Progress, RunRecorder};
use crate::store::{RunDir, RunLock};
use secateur_inference::batches::Batches;
use secateur_inference::train::{Observer, TrainState, Trainer};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

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
pub(super) fn record_masks(run: &RunDir, path: &Path) -> Result<()> {
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

/// Continues `trainer` from the last checkpoint of `run`: its weights, optimiser state,
/// generator and history.
pub(crate) fn resume_from_checkpoint(trainer: &mut Trainer<'_>, run: &RunDir) -> Result<()> {
    let ck = run.read_checkpoint()?;
    trainer.resume(&ck.weights, &ck.optimizer, ck.state)?;
    Ok(())
}

/// Trains the run in `run` on `train`, evaluating on `test` after each epoch: progress on
/// standard error unless `quiet`, `extra` observers (a SWAG collector), and every epoch recorded
/// in the run (its history and checkpoint, [`RunRecorder`], after the others, so that a
/// checkpoint is complete only once every observer has seen its epoch). A failure is
/// [`fit_failed`]: the trainer's error and the checkpoint the run keeps.
pub(crate) fn fit_run(
    trainer: &mut Trainer<'_>,
    train: &mut dyn Batches,
    test: &mut dyn Batches,
    run: &RunDir,
    quiet: bool,
    extra: Option<&mut dyn Observer>,
) -> Result<TrainState> {
    let mut recorder = RunRecorder::new(run);
    let mut progress = Progress::new(quiet);
    let mut observers: Vec<&mut dyn Observer> = vec![&mut progress];
    if let Some(o) = extra {
        observers.push(o);
    }
    observers.push(&mut recorder);
    trainer
        .fit(train, Some(test), &mut observers)
        .map_err(|e| fit_failed(e, run))
}
