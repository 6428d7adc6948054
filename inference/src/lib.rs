//! # secateur-inference
//!
//! Training and evaluation of anything built from secateur's modules.
//!
//! Module plan:
//! - [`batches`]: the [`Batches`](batches::Batches) source of mini-batches, and
//!   [`TensorBatches`](batches::TensorBatches) over in-memory tensors.
//! - [`metrics`]: accuracy, NLL, Brier score, ECE and MCE, reliability bins.
//! - [`optim`]: SGD (momentum, Nesterov, weight decay) and AdamW with PyTorch's update rules and
//!   checkpointable state.
//! - [`schedule`]: learning-rate schedules (multistep, cosine, linear warm-up).
//! - [`train`]: the training loop with observers (progress, history, checkpoints), a divergence
//!   guard and bit-identical resume.
//! - [`predict`]: batched prediction of class probabilities, Monte Carlo prediction with S
//!   posterior samples and the entropy / mutual-information decomposition.
//! - [`elbo`]: the training objective: the NLL of one pass or the tempered, annealed negative ELBO.
//! - [`likelihood`]: categorical (softmax) and Gaussian (fixed, homoscedastic, heteroscedastic
//!   noise) likelihoods and their negative log-likelihoods.
//! - planned: SWAG, Stein VI.

pub mod batches;
pub mod elbo;
pub mod hooks;
pub mod likelihood;
pub mod metrics;
pub mod optim;
pub mod predict;
pub mod schedule;
pub mod train;
