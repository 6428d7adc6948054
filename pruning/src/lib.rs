//! # secateur-pruning
//!
//! Pruning: masks, criteria, allocation and schedules. Pruning emerges from learned posteriors
//! (signal-to-noise ratio, learned dropout rates, Bernoulli gates, Fisher ranking) and is
//! measured against deterministic baselines on the same models, data and seeds.
//!
//! Modules:
//! - [`prunable`]: which tensors are prunable (linear and conv weights, `{name}_mu` for
//!   Bayesian layers) and their logical names.
//! - [`mask`]: [`MaskSet`], name → 0/1 tensor; applied to a store, to gradients (and as a
//!   [`StepHook`](secateur_inference::hooks::StepHook) in training), per-layer table, safetensors.
//! - [`geometry`]: the weight layers of an architecture in forward order with their output
//!   sizes (FLOPs, first/last-layer exclusions).
//! - [`allocate`]: global and per-layer top-k to an exact sparsity, exclusions, a
//!   minimum-kept guard, thresholds, iterative schedules.
//! - [`criterion`]: the [`Criterion`] trait and the scoring context (model, store, data, loss);
//!   the criteria in [`criteria`]: random, magnitude, SNIP, GraSP, SynFlow, Fisher (FP, FTS),
//!   Hutchinson (HP, HTS) and the posterior criteria (SNR, sparse-VD log α, gate inclusion,
//!   Fisher of the mean-mode network).
//! - [`bn_warmup`]: batch-norm warm-up before scoring (Gollini Navarrete et al. 2025).
//! - [`greg`]: growing regularisation (Wang, Qin, Zhang & Fu 2021), GReg-1 and GReg-2.

pub mod allocate;
pub mod bn_warmup;
pub mod criteria;
pub mod criterion;
pub mod geometry;
pub mod greg;
pub mod mask;
pub mod prunable;

pub use allocate::{Allocation, Exclusions, IterativeSchedule, Scope};
pub use criterion::{Criterion, Loss, ScoringContext, ScoringData};
pub use geometry::{Geometry, LayerInfo, LayerKind};
pub use mask::{MaskSet, Scores};

/// The fraction of zero entries among `total` parameters of which `nonzero` are non-zero.
///
/// ```
/// assert_eq!(secateur_pruning::sparsity(10, 4), 0.6);
/// ```
pub fn sparsity(total: usize, nonzero: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        1.0 - nonzero as f64 / total as f64
    }
}
