//! Learning-rate schedules: constant, multistep and cosine annealing per epoch, each with an
//! optional linear warm-up per optimiser step.
//!
//! The main schedule changes only at epoch boundaries, with the semantics of PyTorch's
//! `MultiStepLR` / `CosineAnnealingLR` when `scheduler.step()` is called once at the end of every
//! epoch: epoch `e` (from 0) trains with the closed-form value at `last_epoch = e`. The warm-up
//! then scales it per step, so that the first steps of a run are small:
//!
//! ```text
//! s      = epoch · steps_per_epoch + step_in_epoch          (global step, from 0)
//! lr     = main(epoch) · min(1, (s + 1) / warmup)           (warmup = 0: no warm-up)
//! ```
//!
//! i.e. the first step uses `main(0) / warmup`, step `s` uses `(s + 1)/warmup` of the main value
//! and from step `warmup − 1` on the full main value is used.
//!
//! In a TOML config the schedule is a table tagged by `kind`:
//!
//! ```toml
//! schedule = { kind = "cosine", total = 200, min_lr = 0.0, warmup = 500 }
//! schedule = { kind = "multi_step", milestones = [100, 150], gamma = 0.1 }
//! schedule = { kind = "constant" }
//! ```
//!
//! Unknown fields are refused; `warmup` defaults to 0.

use candle_core::{bail, Result};
use serde::{Deserialize, Serialize};

/// A learning-rate schedule: the base learning rate times a factor depending on the epoch, times
/// a linear warm-up over the first `warmup` optimiser steps (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The base learning rate throughout (after the warm-up).
    Constant {
        /// Warm-up length in optimiser steps (0: none).
        #[serde(default)]
        warmup: usize,
    },
    /// `base · gamma^{#{m ∈ milestones : m ≤ epoch}}`: multiplied by `gamma` at the start of every
    /// milestone epoch (PyTorch's `MultiStepLR`; epochs from 0).
    #[serde(alias = "multistep")]
    MultiStep {
        /// Strictly increasing epochs (each ≥ 1) at which the rate is multiplied by `gamma`.
        milestones: Vec<usize>,
        /// Multiplicative factor, positive and finite (usually < 1).
        gamma: f64,
        /// Warm-up length in optimiser steps (0: none).
        #[serde(default)]
        warmup: usize,
    },
    /// Cosine annealing from `base` at epoch 0 to `min_lr` at epoch `total` (PyTorch's
    /// `CosineAnnealingLR` with `T_max = total`, `eta_min = min_lr`):
    /// `min_lr + (base − min_lr)(1 + cos(π · epoch / total)) / 2` for `epoch ≤ total` and `min_lr`
    /// after (where PyTorch's rate would rise again along the cosine).
    Cosine {
        /// Epochs to reach `min_lr`; at least 1.
        total: usize,
        /// Final learning rate (absolute, not a factor), finite and `≥ 0`.
        min_lr: f64,
        /// Warm-up length in optimiser steps (0: none).
        #[serde(default)]
        warmup: usize,
    },
}

impl Default for Schedule {
    /// A constant rate without warm-up.
    fn default() -> Self {
        Schedule::Constant { warmup: 0 }
    }
}

impl Schedule {
    /// Warm-up length in optimiser steps.
    pub fn warmup(&self) -> usize {
        match self {
            Schedule::Constant { warmup } | Schedule::MultiStep { warmup, .. } | Schedule::Cosine { warmup, .. } => {
                *warmup
            }
        }
    }

    /// Checks every field; the error names the offending one.
    pub fn validate(&self) -> Result<()> {
        match self {
            Schedule::Constant { .. } => {}
            Schedule::MultiStep { milestones, gamma, .. } => {
                if !(gamma.is_finite() && *gamma > 0.0) {
                    bail!("multi_step schedule: gamma must be positive and finite, got {gamma}");
                }
                if milestones.first() == Some(&0) {
                    bail!("multi_step schedule: milestones must be at least 1 (epochs from 0), got 0");
                }
                if let Some(w) = milestones.windows(2).find(|w| w[0] >= w[1]) {
                    bail!(
                        "multi_step schedule: milestones must be strictly increasing, got {} then {} in {milestones:?}",
                        w[0],
                        w[1]
                    );
                }
            }
            Schedule::Cosine { total, min_lr, .. } => {
                if *total == 0 {
                    bail!("cosine schedule: total must be at least 1 epoch");
                }
                if !(min_lr.is_finite() && *min_lr >= 0.0) {
                    bail!("cosine schedule: min_lr must be finite and non-negative, got {min_lr}");
                }
            }
        }
        Ok(())
    }

    /// The epoch's rate before warm-up: `base_lr` times the schedule's factor at `epoch` (from 0).
    pub fn epoch_lr(&self, base_lr: f64, epoch: usize) -> f64 {
        match self {
            Schedule::Constant { .. } => base_lr,
            Schedule::MultiStep { milestones, gamma, .. } => {
                let passed = milestones.iter().filter(|&&m| m <= epoch).count();
                base_lr * gamma.powi(i32::try_from(passed).unwrap_or(i32::MAX))
            }
            Schedule::Cosine { total, min_lr, .. } => {
                if epoch >= *total {
                    *min_lr
                } else {
                    let x = std::f64::consts::PI * epoch as f64 / *total as f64;
                    min_lr + (base_lr - min_lr) * (1.0 + x.cos()) / 2.0
                }
            }
        }
    }

    /// The learning rate of step `step_in_epoch` (from 0) of epoch `epoch` (from 0), with
    /// `steps_per_epoch` steps per epoch:
    /// `epoch_lr(base_lr, epoch) · min(1, (epoch · steps_per_epoch + step_in_epoch + 1) / warmup)`.
    ///
    /// ```
    /// use secateur_inference::schedule::Schedule;
    /// let s = Schedule::MultiStep { milestones: vec![2], gamma: 0.1, warmup: 4 };
    /// assert_eq!(s.lr_at(1.0, 0, 0, 3), 0.25); // warm-up: 1/4
    /// assert_eq!(s.lr_at(1.0, 1, 0, 3), 1.0); // global step 3: warm-up done
    /// assert!((s.lr_at(1.0, 2, 0, 3) - 0.1).abs() < 1e-15); // milestone 2 passed
    /// ```
    pub fn lr_at(&self, base_lr: f64, epoch: usize, step_in_epoch: usize, steps_per_epoch: usize) -> f64 {
        let lr = self.epoch_lr(base_lr, epoch);
        let warmup = self.warmup();
        if warmup == 0 {
            return lr;
        }
        let s = epoch.saturating_mul(steps_per_epoch).saturating_add(step_in_epoch);
        if s >= warmup {
            lr
        } else {
            lr * (s + 1) as f64 / warmup as f64
        }
    }
}
