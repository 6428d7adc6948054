//! # secateur
//!
//! A Bayesian deep learning research framework on [candle](https://github.com/huggingface/candle):
//! probabilistic layers and a variational-inference core, pruning that emerges from learned
//! posteriors, deterministic pruning baselines, calibration and uncertainty reports.
//!
//! As a library: `secateur = { version = "0.1", default-features = false }` is the layers,
//! training, pruning and data sets without the command line; `use secateur::prelude::*` brings
//! the names most programs use. The default feature `cli` adds [`experiments`] (configs, the run
//! store, studies, reports) and the `secateur` binary.
//!
//! ```
//! use secateur::prelude::*;
//! use candle_core::{DType, Device, Tensor};
//! # fn main() -> candle_core::Result<()> {
//! // a Bayesian MLP trained on the negative ELBO of 64 in-memory examples
//! let dev = Device::Cpu;
//! let store = ParamStore::new();
//! let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, dev.clone());
//! let net = seq()
//!     .add(BayesLinear::new(&pb.pp("fc1"), BayesLinearConfig::new(4, 16))?)
//!     .add(Relu)
//!     .add(BayesLinear::new(&pb.pp("fc2"), BayesLinearConfig::new(16, 2))?);
//! let mut rng = SeededRng::new(1);
//! let x = rng.randn(&[64, 4], DType::F32, &dev)?;
//! let y = x.narrow(1, 0, 1)?.squeeze(1)?.gt(0f64)?.to_dtype(DType::U32)?;
//! let settings = TrainSettings::new(2, 1e-2).with_objective(Objective::Elbo(ElboConfig::new(64)));
//! let optimizer = AdamW::new(AdamWConfig::default())?;
//! let mut trainer = Trainer::new(&net, store, Box::new(optimizer), settings, rng)?;
//! let mut data = TensorBatches::new(x, y, 16)?.shuffled();
//! let state = trainer.fit(&mut data, None, &mut [])?;
//! assert_eq!(state.epochs_done, 2);
//! # Ok(()) }
//! ```
//!
//! The member crates:
//! - [`kernels`]: the CPU kernels, the process-wide double-backpropagation setting, and the
//!   process set-up of training programs (thread pool, allocator);
//! - [`bayes`]: seeded randomness, the forward context, named parameters, the deterministic
//!   building blocks ([`bayes::nn`]), priors, divergences and the probabilistic layers;
//! - [`models`]: architectures built from a layer factory, and the registry of layer kinds;
//! - [`inference`]: batches, objectives (NLL, ELBO), optimisers, schedules, the training loop,
//!   prediction, metrics;
//! - [`pruning`]: masks, criteria, allocation, growing regularisation;
//! - [`datasets`]: checked readers of the shipped and standard data sets, batching;
//! - [`experiments`] (feature `cli`): configs, the run store, studies, reports and the CLI.

pub use secateur_bayes as bayes;
pub use secateur_datasets as datasets;
#[cfg(feature = "cli")]
pub use secateur_experiments as experiments;
pub use secateur_inference as inference;
pub use secateur_kernels as kernels;
pub use secateur_models as models;
pub use secateur_pruning as pruning;

/// The names most programs use: `use secateur::prelude::*;`.
pub mod prelude {
    pub use secateur_bayes::prelude::*;
    pub use secateur_inference::batches::{Batches, TensorBatches};
    pub use secateur_inference::elbo::{elbo_loss, BetaSchedule, ElboConfig, Objective};
    pub use secateur_inference::laplace::{DiagLaplace, Laplace, LastLayerLaplace};
    pub use secateur_inference::metrics::classification_metrics;
    pub use secateur_inference::optim::{AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig};
    pub use secateur_inference::posterior::{predict_bma, BmaSettings, Ensemble, Posterior};
    pub use secateur_inference::predict::{predict, predict_mc};
    pub use secateur_inference::swag::{Swag, SwagCollector, SwagConfig, SwagKind};
    pub use secateur_inference::train::{TrainSettings, Trainer};
    pub use secateur_models::{build, ModelSpec, Network};
    pub use secateur_pruning::{criterion, Allocation, MaskSet, ScoringContext, ScoringData};
}
