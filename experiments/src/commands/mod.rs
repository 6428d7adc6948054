//! The commands behind the CLI: `train` and `eval` (classification here, regression tables
//! under `[likelihood] kind = "gaussian"` in [`regression`]), and the configs of `quickstart`.
//!
//! - `setup`: the device, the model of a config, sampling, the optimiser, the training settings,
//!   the data and its batches, and [`TrainingSetup`], from which every training loop (`train`,
//!   [`regression`], [`crate::pai`], [`crate::greg`]) gets its trainer and batches;
//! - `run_dir`: the options and result of a run, its directory (new or resumed), its masks, the loop of a run
//!   (resumed from its checkpoint, recording every epoch) and a failed fit's error;
//! - `train`: the `train` command;
//! - `eval`: test-set evaluation and the `eval` command;
//! - `loaded`: a finished classification run loaded for prediction on any image set
//!   ([`LoadedRun`]: what `eval` and `secateur report` predict with);
//! - `report`: `report.md`, the predictions file and the terminal tables;
//! - [`regression`]: `train` and `eval` for regression tables;
//! - [`posterior`]: the `[posterior]` of a run (SWAG collection during training, the Laplace fit
//!   after it, the posterior file, prediction by the posterior's predictive);
//! - `ensemble`: deep ensembles, whose members are runs inside the ensemble's run;
//! - `quantise`: the `quantise` command (int8 weights of a run, evaluated against f32);
//! - `compact`: the `compact` command (a structurally pruned run rebuilt as a smaller dense
//!   network, with its measured speed-up).

pub mod compact;
mod ensemble;
mod eval;
mod loaded;
pub mod posterior;
pub mod quantise;
pub mod regression;
mod report;
mod run_dir;
mod setup;
pub mod svgd;
mod train;

pub use compact::{
    compact, cpu_model, latencies, markdown as compact_markdown, CompactOptions, CompactSummary, Latency, NetworkCost,
    COMPACT_SUMMARY,
};
pub use ensemble::train_member;
pub use eval::{eval, posterior_mean_accuracy};
pub(crate) use eval::{evaluate, ood_predictions};
pub use loaded::{pruned_run, LoadedRun, PruneSource};
pub use quantise::{
    markdown as quantise_markdown, quantise, QuantiseOptions, QuantiseSummary, QuantisedCost, INT8_WEIGHTS,
    QUANTISE_SUMMARY,
};
pub use report::{comparison_table, metrics_table};
pub(crate) use run_dir::{open_resumed, run_dir};
pub use run_dir::{RunSummary, TrainOptions, MASKS_FILE};
pub(crate) use setup::load_data;
pub use setup::{
    build_model, coupling, device, eval_image_batches, eval_table_batches, geometry, init_from_deterministic,
    init_weights_file, optimizer, resolve_layerwise_inclusion, sampling, train_settings, TrainingSetup,
};
pub use train::train;

/// The quickstart config, shipped in `experiments/configs/quickstart.toml`.
pub const QUICKSTART_TOML: &str = include_str!("../../configs/quickstart.toml");

/// The quickstart's sparse-VD LeNet-5, shipped in `experiments/configs/quickstart-sparse-vd.toml`.
pub const QUICKSTART_SPARSE_VD_TOML: &str = include_str!("../../configs/quickstart-sparse-vd.toml");
