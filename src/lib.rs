//! # secateur
//!
//! A Bayesian deep learning research framework on [candle](https://github.com/huggingface/candle):
//! probabilistic layers and a variational-inference core, pruning that emerges from learned
//! posteriors, deterministic pruning baselines, calibration and uncertainty reports.
//!
//! This facade re-exports the member crates:
//! - [`kernels`]: the CPU kernels and the process-wide double-backpropagation setting;
//! - [`bayes`]: seeded randomness, the forward context, named parameters, (later) priors,
//!   divergences and probabilistic layers;
//! - [`models`]: architectures built from a layer factory;
//! - [`inference`]: optimisers, schedules, the training loop, prediction, metrics;
//! - [`pruning`]: masks and criteria;
//! - [`experiments`]: data sets, configs, run store and the CLI.

pub use secateur_bayes as bayes;
#[cfg(feature = "cli")]
pub use secateur_experiments as experiments;
pub use secateur_inference as inference;
pub use secateur_kernels as kernels;
pub use secateur_models as models;
pub use secateur_pruning as pruning;
