//! Pruning learned during training: methods that decide what to remove while the network
//! trains, instead of scoring a network once.
//!
//! - [`scl`]: sparse connection learning — every weight times a unit step of a trainable mask
//!   variable, with the identity straight-through estimator, per-feature normalised mask
//!   gradients and the connection count as a regulariser (a reconstruction from the seed
//!   paper's abstract: Tang et al. 2022, "Automatic sparse connectivity learning for neural
//!   networks", IEEE TNNLS).
//! - [`cap`]: instance-complexity-aware pruning — sample-specific soft channel masks, a
//!   complexity-weighted importance and a polarisation regulariser (a reconstruction from the
//!   abstract of Wang, Ma & Yu 2022).
//! - [`dcff`]: dynamic-coded filter fusion — each kept filter replaced by its average under an
//!   inter-similarity distribution whose temperature grows until it is one-hot, so that a compact
//!   network trains from scratch (Lin et al. 2023, TPAMI; after the reference code).
//!
//! Each method is a [`LayerFactory`](secateur_models::LayerFactory) whose layers compute with
//! the method's variables (so that the forward pass is the method's), plus what moves the
//! variables the optimiser does not: a [`StepHook`](secateur_inference::hooks::StepHook) (SCL's
//! mask steps, DCFF's fusion at each epoch) or a
//! [`TrainingObjective`](secateur_inference::objective::TrainingObjective) (CAP's regulariser,
//! which reads the masks of the pass through [`Ctx::taps`](secateur_bayes::Ctx::taps)). The
//! result is a smaller plain network: SCL's and CAP's as structured masks that
//! [`compact`](crate::structured::compact) applies, DCFF's as its fused filters.

pub mod cap;
pub mod dcff;
pub mod scl;
