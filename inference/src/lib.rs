//! # secateur-inference
//!
//! Training and evaluation of anything built from secateur's modules.
//!
//! Module plan:
//! - [`metrics`]: accuracy, NLL, Brier score, ECE and MCE, reliability bins.
//! - [`optim`]: SGD (momentum, Nesterov, weight decay) and AdamW with PyTorch's update rules and
//!   checkpointable state.
//! - [`schedule`]: learning-rate schedules (multistep, cosine, linear warm-up).
//! - [`train`]: the training loop with observers (progress, history, checkpoints), a divergence
//!   guard and bit-identical resume.
//! - [`predict`]: batched prediction of class probabilities.
//! - planned: the ELBO objective, SWAG, Stein VI, Monte Carlo prediction.

pub mod metrics;
pub mod optim;
pub mod predict;
pub mod schedule;
pub mod train;
