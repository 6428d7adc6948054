//! # secateur-experiments
//!
//! Data sets, configs, the run store, reports and the CLI commands. This is the only crate that
//! touches files, configs and the terminal.
//!
//! Module plan:
//! - [`data`]: checked loaders (IDX, CIFAR, CSV), named data sets and their lookup, batching.
//! - [`config`]: study configs (TOML, defaults, validation, `--set` overrides).
//! - [`store`]: run directories, checkpoints, history; [`atomic`]: atomic file writes.
//! - [`loader`]: mini-batches for the training loop; [`observe`]: progress bars and recorders.
//! - [`commands`]: `train`, `eval`, `data info`, `quickstart`; [`cli`]: the clap front end.
//! - [`plot`]: PNG learning curves and reliability diagrams for every run, the sparsity–accuracy
//!   plot of pruning studies.
//! - [`prune`]: `prune` and `scores` (criteria of `secateur-pruning` on a config's model and
//!   data, masks and scores as safetensors, per-layer tables); `train --masks` trains with them.
//! - [`pai`]: the pruning-at-initialisation study (`secateur study pai`).
//! - [`greg`]: the growing-regularisation phase of `train` (`[greg]` in the config).

pub mod atomic;
pub mod cli;
pub mod commands;
pub mod config;
pub use secateur_datasets as data;
pub use secateur_datasets::loader;
pub mod error;
pub mod greg;
#[cfg(feature = "hdf5")]
pub mod h5;
pub mod observe;
pub mod pai;
pub mod plot;
pub mod prune;
pub mod runtime;
pub mod seed_stream;
pub mod store;

pub use error::{ExpError, Result};
