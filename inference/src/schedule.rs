//! Learning-rate schedules: constant, multistep and cosine annealing per epoch, the two schedules
//! of stochastic weight averaging (SWA, Izmailov et al. 2018; SWAG, Maddox et al. 2019), each with
//! an optional linear warm-up per optimiser step.
//!
//! Except for `swa_cyclic`, which changes every step, the main schedule changes only at epoch
//! boundaries, with the semantics of PyTorch's
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
//! schedule = { kind = "swa", start = 160, swa_lr = 0.01 }
//! schedule = { kind = "swa_cyclic", start = 160, swa_lr = 0.001, cycle = 4 }
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
    /// The schedule of SWAG's reference training script (`schedule` in `run_swag.py` of
    /// wjmaddox/swa_gaussian; Maddox et al. 2019): with `t = epoch / start` (epoch from 0) and
    /// `r = swa_lr / base`, the rate is `base · factor(t)` where
    ///
    /// ```text
    /// factor(t) = 1                              t ≤ 0.5
    ///           = 1 − (1 − r)(t − 0.5)/0.4       0.5 < t ≤ 0.9
    ///           = r                              t > 0.9
    /// ```
    ///
    /// i.e. the base rate for the first half of the pre-averaging phase, a linear decrease to
    /// `swa_lr` until 90 % of it, and the constant `swa_lr` from there on, through the averaging
    /// phase (collect from epoch `start` on: `SwagConfig::start_epoch = start`).
    Swa {
        /// The epoch (from 0) at which averaging starts (the reference's `swa_start`); ≥ 1.
        start: usize,
        /// The constant rate of the averaging phase (absolute, not a factor), finite and `> 0`.
        swa_lr: f64,
        /// Warm-up length in optimiser steps (0: none).
        #[serde(default)]
        warmup: usize,
    },
    /// Cyclical SWA (Izmailov et al. 2018, Eq. 2): the base rate `α₁` for epochs `< start`,
    /// then cycles of `cycle` epochs in which the rate falls linearly per optimiser step from
    /// `α₁` to `α₂ = swa_lr`. With `c = cycle · steps_per_epoch` steps per cycle and
    /// `i = (epoch − start) · steps_per_epoch + step_in_epoch + 1` the step from 1 since `start`,
    ///
    /// ```text
    /// t(i) = (mod(i − 1, c) + 1) / c,     α(i) = (1 − t(i)) α₁ + t(i) α₂,
    /// ```
    ///
    /// so that the last step of every cycle uses exactly `α₂`: collect the weights at the end of
    /// each cycle (`SwagConfig { start_epoch: start, collect_every: cycle, .. }` in epochs).
    SwaCyclic {
        /// The epoch (from 0) at which the cycles start; may be 0.
        start: usize,
        /// The rate `α₂` at the end of every cycle (absolute, not a factor), finite and `> 0`.
        swa_lr: f64,
        /// Cycle length in epochs, ≥ 1.
        cycle: usize,
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
            Schedule::Constant { warmup }
            | Schedule::MultiStep { warmup, .. }
            | Schedule::Cosine { warmup, .. }
            | Schedule::Swa { warmup, .. }
            | Schedule::SwaCyclic { warmup, .. } => *warmup,
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
            Schedule::Swa { start, swa_lr, .. } => {
                if *start == 0 {
                    bail!("swa schedule: start must be at least 1 epoch");
                }
                if !(swa_lr.is_finite() && *swa_lr > 0.0) {
                    bail!("swa schedule: swa_lr must be positive and finite, got {swa_lr}");
                }
            }
            Schedule::SwaCyclic { swa_lr, cycle, .. } => {
                if *cycle == 0 {
                    bail!("swa_cyclic schedule: cycle must be at least 1 epoch");
                }
                if !(swa_lr.is_finite() && *swa_lr > 0.0) {
                    bail!("swa_cyclic schedule: swa_lr must be positive and finite, got {swa_lr}");
                }
            }
        }
        Ok(())
    }

    /// The epoch's rate before warm-up: `base_lr` times the schedule's factor at `epoch` (from 0).
    /// For `swa_cyclic`, which changes every step, the rate of the epoch's last step (which does
    /// not depend on the number of steps per epoch).
    pub fn epoch_lr(&self, base_lr: f64, epoch: usize) -> f64 {
        self.main_lr(base_lr, epoch, 0, 1)
    }

    /// The main schedule (before warm-up) at step `step_in_epoch` of `epoch` (both from 0).
    fn main_lr(&self, base_lr: f64, epoch: usize, step_in_epoch: usize, steps_per_epoch: usize) -> f64 {
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
            Schedule::Swa { start, swa_lr, .. } => {
                let t = epoch as f64 / (*start).max(1) as f64;
                let r = swa_lr / base_lr;
                let factor = if t <= 0.5 {
                    1.0
                } else if t <= 0.9 {
                    1.0 - (1.0 - r) * (t - 0.5) / 0.4
                } else {
                    r
                };
                base_lr * factor
            }
            Schedule::SwaCyclic {
                start, swa_lr, cycle, ..
            } => {
                if epoch < *start {
                    return base_lr;
                }
                let steps = steps_per_epoch.max(1);
                let c = (*cycle).max(1).saturating_mul(steps);
                // i − 1 = steps since `start`, from 0
                let i0 = (epoch - start).saturating_mul(steps).saturating_add(step_in_epoch);
                let t = ((i0 % c) + 1) as f64 / c as f64;
                (1.0 - t) * base_lr + t * swa_lr
            }
        }
    }

    /// The learning rate of step `step_in_epoch` (from 0) of epoch `epoch` (from 0), with
    /// `steps_per_epoch` steps per epoch:
    /// `main · min(1, (epoch · steps_per_epoch + step_in_epoch + 1) / warmup)`, where `main` is
    /// [`Schedule::epoch_lr`] (for `swa_cyclic` the per-step rate of its formula).
    ///
    /// ```
    /// use secateur_inference::schedule::Schedule;
    /// let s = Schedule::MultiStep { milestones: vec![2], gamma: 0.1, warmup: 4 };
    /// assert_eq!(s.lr_at(1.0, 0, 0, 3), 0.25); // warm-up: 1/4
    /// assert_eq!(s.lr_at(1.0, 1, 0, 3), 1.0); // global step 3: warm-up done
    /// assert!((s.lr_at(1.0, 2, 0, 3) - 0.1).abs() < 1e-15); // milestone 2 passed
    /// ```
    pub fn lr_at(&self, base_lr: f64, epoch: usize, step_in_epoch: usize, steps_per_epoch: usize) -> f64 {
        let lr = self.main_lr(base_lr, epoch, step_in_epoch, steps_per_epoch);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn swa_schedule_matches_run_swag_py_at_hand_computed_epochs() {
        // base 0.1, swa_lr 0.01 (r = 0.1), start 10: t = epoch / 10.
        let s = Schedule::Swa {
            start: 10,
            swa_lr: 0.01,
            warmup: 0,
        };
        assert!(s.validate().is_ok());
        for (epoch, want) in [
            (0, 0.1),    // t = 0: factor 1
            (5, 0.1),    // t = 0.5: still factor 1
            (6, 0.0775), // t = 0.6: 1 − 0.9 · 0.1/0.4 = 0.775
            (7, 0.055),  // t = 0.7: 1 − 0.9 · 0.2/0.4 = 0.55
            (9, 0.01),   // t = 0.9: 1 − 0.9 · 0.4/0.4 = 0.1 = r
            (10, 0.01),  // t = 1: r
            (30, 0.01),  // averaging phase: r
        ] {
            let got = s.lr_at(0.1, epoch, 3, 7);
            assert!(close(got, want), "epoch {epoch}: {got} vs {want}");
            assert!(close(s.epoch_lr(0.1, epoch), want));
        }
        // warm-up composes as for the other schedules: global step 1 of 4 → 2/4
        let w = Schedule::Swa {
            start: 10,
            swa_lr: 0.01,
            warmup: 4,
        };
        assert!(close(w.lr_at(0.1, 0, 1, 3), 0.05));
        assert!(close(w.lr_at(0.1, 6, 0, 3), 0.0775));
    }

    #[test]
    fn swa_cyclic_schedule_falls_linearly_within_each_cycle() {
        // base α₁ = 0.1, α₂ = 0.01, start 2, cycles of 2 epochs of 5 steps: c = 10 steps.
        let s = Schedule::SwaCyclic {
            start: 2,
            swa_lr: 0.01,
            cycle: 2,
            warmup: 0,
        };
        assert!(s.validate().is_ok());
        for (epoch, step, want) in [
            (0, 0, 0.1),   // before start: α₁
            (1, 4, 0.1),   // before start: α₁
            (2, 0, 0.091), // i = 1: t = 0.1, 0.9 · 0.1 + 0.1 · 0.01
            (2, 4, 0.055), // i = 5: t = 0.5
            (3, 3, 0.019), // i = 9: t = 0.9, 0.1 · 0.1 + 0.9 · 0.01
            (3, 4, 0.01),  // i = 10: t = 1, the cycle's last step is α₂
            (4, 0, 0.091), // i = 11: a new cycle, t = 0.1
            (9, 4, 0.01),  // i = 40: end of the 4th cycle
        ] {
            let got = s.lr_at(0.1, epoch, step, 5);
            assert!(close(got, want), "epoch {epoch} step {step}: {got} vs {want}");
        }
        // epoch_lr is the rate of the epoch's last step
        assert!(close(s.epoch_lr(0.1, 2), 0.055));
        assert!(close(s.epoch_lr(0.1, 3), 0.01));
        assert!(close(s.epoch_lr(0.1, 1), 0.1));
    }

    #[test]
    fn swa_schedules_parse_and_validate() {
        let s: Schedule =
            serde_json::from_str(r#"{"kind": "swa_cyclic", "start": 2, "swa_lr": 0.01, "cycle": 3}"#).unwrap();
        assert_eq!(
            s,
            Schedule::SwaCyclic {
                start: 2,
                swa_lr: 0.01,
                cycle: 3,
                warmup: 0
            }
        );
        let s: Schedule = serde_json::from_str(r#"{"kind": "swa", "start": 5, "swa_lr": 0.02, "warmup": 7}"#).unwrap();
        assert_eq!(s.warmup(), 7);
        assert!(
            serde_json::from_str::<Schedule>(r#"{"kind": "swa", "start": 5, "swa_lr": 0.02, "cycle": 1}"#).is_err()
        );
        let e = |s: Schedule| s.validate().unwrap_err().to_string();
        assert!(e(Schedule::Swa {
            start: 0,
            swa_lr: 0.01,
            warmup: 0
        })
        .contains("start"));
        assert!(e(Schedule::Swa {
            start: 3,
            swa_lr: 0.0,
            warmup: 0
        })
        .contains("swa_lr"));
        assert!(e(Schedule::SwaCyclic {
            start: 3,
            swa_lr: 0.01,
            cycle: 0,
            warmup: 0
        })
        .contains("cycle"));
        assert!(e(Schedule::SwaCyclic {
            start: 3,
            swa_lr: f64::NAN,
            cycle: 1,
            warmup: 0
        })
        .contains("swa_lr"));
    }
}
