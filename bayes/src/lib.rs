//! # secateur-bayes
//!
//! The bottom of the secateur stack: what every layer, deterministic or Bayesian, shares, and
//! (as later issues land) the distributions, priors, divergences and probabilistic layers of the
//! variational-inference core.
//!
//! Module plan:
//! - [`rng`]: the run's seeded random generator ([`rng::SeededRng`]); candle's CPU RNG cannot be
//!   seeded, so every draw (initialisation, noise, shuffling) comes from here.
//! - [`ctx`]: the forward context ([`ctx::Ctx`]): train/eval mode, how stochastic layers sample,
//!   and the seeded noise source.
//! - [`module`]: the [`module::Module`] trait, `forward(&Tensor, &mut Ctx)`.
//! - [`params`]: named parameters and buffers ([`params::ParamStore`]) in sorted (BTreeMap) order
//!   with PyTorch-style names, and the [`params::ParamBuilder`] that creates them path by path.
//! - [`init`]: seeded initialisers (PyTorch defaults: Kaiming uniform, Kaiming normal, Xavier).
//! - planned: `dist` (distributions), `prior` (priors as values), `divergence` (analytic and Monte
//!   Carlo KL, variational-dropout approximations, geometric Jensen–Shannon), `layers`
//!   (mean-field Gaussian, variational dropout, gates), and the `Variational` trait.

pub mod ctx;
pub mod init;
pub mod module;
pub mod params;
pub mod rng;

pub use ctx::{Ctx, Mode, Sampling};
pub use init::Init;
pub use module::Module;
pub use params::{ParamBuilder, ParamStore};
pub use rng::SeededRng;
