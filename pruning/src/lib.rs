//! # secateur-pruning
//!
//! Pruning: masks, criteria, allocation and schedules. Pruning emerges from learned posteriors
//! (signal-to-noise ratio, learned dropout rates, Bernoulli gates, Fisher ranking) and is
//! measured against deterministic baselines on the same models, data and seeds.
//!
//! Module plan (the pruning issue builds these):
//! - `mask`: a mask set, name → 0/1 tensor in sorted order, applied in forward and to gradients.
//! - `criterion`: the `Criterion` trait — given a model, data and loss, a score per prunable
//!   parameter; random, magnitude, SNIP, GraSP, SynFlow, Fisher and Hutchinson scores, and the
//!   posterior criteria read through the posterior-statistics trait.
//! - `allocate`: global and per-layer top-k to an exact sparsity, exclusions, layer-collapse guard,
//!   iterative schedules.
//! - `greg`: growing regularisation (Wang et al. 2021).
//!
//! Nothing is implemented yet; this crate exists so the dependency chain
//! `bayes ← models ← inference ← pruning ← experiments` is in place from the start.

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
