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
//! - [`plot`]: PNG learning curves and reliability diagrams for every run.
//! - planned: calibration and pruning reports, one binary per study.

pub mod atomic;
pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod error;
#[cfg(feature = "hdf5")]
pub mod h5;
pub mod loader;
pub mod observe;
pub mod plot;
pub mod runtime;
pub mod store;

pub use error::{ExpError, Result};
