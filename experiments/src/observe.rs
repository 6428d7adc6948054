//! Observers of a training run that touch the terminal and the run directory.

use crate::store::RunDir;
use candle_core::Result;
use indicatif::{ProgressBar, ProgressStyle};
use secateur_inference::train::{Checkpoint, EpochRecord, Observer, StepInfo};

fn to_candle(e: crate::error::ExpError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// Writes a checkpoint and then `history.csv` after every epoch. In that order, `history.csv`
/// never has a row for an epoch whose checkpoint was not written: a run that fails (or is killed)
/// while it records an epoch keeps a history that agrees with its last checkpoint.
pub struct RunRecorder<'a> {
    run: &'a RunDir,
}

impl<'a> RunRecorder<'a> {
    /// Records into `run`.
    pub fn new(run: &'a RunDir) -> Self {
        Self { run }
    }
}

impl Observer for RunRecorder<'_> {
    fn on_epoch(&mut self, _record: &EpochRecord, ckpt: &Checkpoint) -> Result<()> {
        self.run.write_checkpoint(ckpt).map_err(to_candle)?;
        self.run.write_history(&ckpt.state.history).map_err(to_candle)
    }
}

/// A progress bar per epoch (loss, accuracy, images/s) on a terminal, and one summary line per
/// epoch on standard error in any case (so logs of batch jobs show progress too).
pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Progress {
    /// A progress reporter; `quiet` silences the per-epoch lines too.
    pub fn new(quiet: bool) -> Self {
        Self { bar: None, quiet }
    }
}

impl Observer for Progress {
    fn on_step(&mut self, s: &StepInfo) -> Result<()> {
        if self.quiet {
            return Ok(());
        }
        if s.step == 1 {
            let bar = ProgressBar::new(s.steps as u64);
            let style = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(s.epoch.to_string());
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_position(s.step as u64);
            bar.set_message(match s.rmse {
                Some(rmse) => format!("loss {:.4} rmse {rmse:.4} {:.0} ex/s", s.loss, s.examples_per_sec),
                None => format!(
                    "loss {:.4} acc {:.3} {:.0} img/s",
                    s.loss, s.accuracy, s.examples_per_sec
                ),
            });
        }
        Ok(())
    }

    fn on_epoch(&mut self, r: &EpochRecord, _ckpt: &Checkpoint) -> Result<()> {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if !self.quiet {
            let eval = match (&r.eval, &r.eval_regression) {
                (Some(m), _) => format!("  test acc {:.4} nll {:.4} ece {:.4}", m.accuracy, m.nll, m.ece),
                (None, Some(m)) => format!(
                    "  test rmse {:.4} nll {:.4} coverage {:.3}",
                    m.rmse, m.nll, m.coverage_95
                ),
                (None, None) => String::new(),
            };
            let train = match r.train_rmse {
                Some(rmse) => format!("rmse {rmse:.4}"),
                None => format!("acc {:.4}", r.train_accuracy),
            };
            eprintln!(
                "epoch {:>3}  lr {:.4}  train loss {:.4} {train}{eval}  ({:.1}s + {:.1}s eval)",
                r.epoch, r.lr, r.train_loss, r.seconds, r.eval_seconds
            );
        }
        Ok(())
    }
}

/// A progress bar over the `total` runs of a study (hidden when `quiet`), showing the current
/// run in its message and an estimate of the time left.
pub fn study_bar(total: u64, quiet: bool) -> ProgressBar {
    counting_bar("runs", total, quiet)
}

/// A progress bar over `total` steps named `what` (hidden when `quiet`), showing the current
/// step in its message and an estimate of the time left.
pub fn counting_bar(what: &str, total: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(&format!(
        "{what} [{{bar:30}}] {{pos}}/{{len}} {{msg}} ({{elapsed}}, eta {{eta}})"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar
}
