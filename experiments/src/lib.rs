//! # secateur-experiments
//!
//! Configs, the run store, studies, reports and the CLI commands: the crate that owns run
//! directories, configs and the terminal (behind the facade's `cli` feature).
//!
//! Modules:
//! - [`data`], [`loader`]: the `secateur-datasets` crate (checked loaders, named data sets and
//!   their lookup, batching), re-exported.
//! - [`config`]: study configs (TOML, defaults, validation, `--set` overrides).
//! - [`store`]: run directories, checkpoints, history; [`atomic`]: atomic file writes.
//! - [`observe`]: progress bars and recorders.
//! - [`commands`]: `train`, `eval`, `data info`, `quickstart`, split by command; [`cli`]: the
//!   clap front end.
//! - [`comparison`]: `secateur report`, one calibration and uncertainty report comparing runs
//!   (tables, figures, a self-contained HTML page, the arrays behind them).
//! - [`seed_stream`]: the named sub-streams of a run's seed ([`seed_stream::SeedStream`]).
//! - [`plot`]: PNG learning curves and reliability diagrams for every run, the sparsity–accuracy
//!   plot of pruning studies.
//! - [`prune`]: `prune` and `scores` (criteria of `secateur-pruning` on a config's model and
//!   data, masks and scores as safetensors, per-layer tables); `train --masks` trains with them.
//! - [`structured`]: `prune --method structured` (whole filters and units to a FLOP or parameter
//!   budget); `compact` ([`commands::compact()`]) rebuilds the smaller network and measures it.
//! - [`pai`]: the pruning-at-initialisation study (`secateur study pai`).
//! - [`greg`]: the growing-regularisation phase of `train` (`[greg]` in the config).
//! - [`posterior_config`]: the `[posterior]` section (SWA, SWAG, Laplace, deep ensembles); the
//!   commands collect, fit and predict with it ([`commands::posterior`]).
//! - [`posterior_study`]: the posterior study (`secateur study posteriors`): methods × seeds of
//!   one base config, compared on accuracy, NLL, Brier, ECE, OOD AUROC and wall time.
//! - [`compression_study`]: calibration-aware compression curves (`secateur study compression`):
//!   trained networks pruned by posterior and deterministic criteria at a grid of sparsities,
//!   without and with a fine-tune; accuracy, NLL, ECE and OOD AUROC against sparsity.

pub mod atomic;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod comparison;
pub mod compression_study;
pub mod config;
pub mod dllp;
pub mod error;
pub mod greg;
#[cfg(feature = "hdf5")]
pub mod h5;
pub mod learned;
pub mod observe;
pub mod pai;
pub mod plot;
pub mod posterior_config;
pub mod posterior_study;
pub mod prune;
pub mod pruning_config;
pub mod seed_stream;
pub mod store;
pub mod structured;
pub mod svgd_study;

pub use error::{ExpError, Result};
pub use secateur_datasets as data;
pub use secateur_datasets::loader;
