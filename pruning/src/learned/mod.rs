//! Pruning learned during training: methods that decide what to remove while the network
//! trains, instead of scoring a network once.
//!
//! - [`scl`]: sparse connection learning — every weight times a unit step of a trainable mask
//!   variable, with the identity straight-through estimator, per-feature normalised mask
//!   gradients and the connection count as a regulariser (a reconstruction from the seed
//!   paper's abstract: Tang et al. 2022, "Automatic sparse connectivity learning for neural
//!   networks", IEEE TNNLS).
//! - [`dcff`]: dynamic-coded filter fusion — each kept filter replaced by its average under an
//!   inter-similarity distribution whose temperature grows until it is one-hot, so that a compact
//!   network trains from scratch (Lin et al. 2023, TPAMI; after the reference code).
//!
//! Each method is a [`LayerFactory`](secateur_models::LayerFactory) whose layers compute their
//! weights from the method's variables (so that the forward pass is the method's), plus a
//! [`StepHook`](secateur_inference::hooks::StepHook) that moves the variables the optimiser does
//! not; its result is a [`MaskSet`](crate::MaskSet) over structured groups, which
//! [`compact`](crate::structured::compact) turns into the smaller network.

pub mod dcff;
pub mod scl;
