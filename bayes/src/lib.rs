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
//! - [`prior`]: priors as values ([`prior::Prior`]: Gaussian, scale mixture, log-uniform,
//!   spike-and-slab) with elementwise log-densities.
//! - [`divergence`]: divergences of a factorised Gaussian posterior from a prior, summed over
//!   weights (analytic and Monte Carlo KL, the variational-dropout approximations of Kingma et al.
//!   2015 and Molchanov et al. 2017, the geometric Jensen–Shannon divergence), and the config
//!   value [`divergence::Divergence`] (`kl`, `kl-mc:S`, `js:α`).
//! - [`variational`]: the [`variational::Variational`] trait (divergence, posterior statistics)
//!   that every probabilistic layer implements and registers in the [`ParamStore`], so training
//!   and pruning reach it without knowing its type.
//! - [`layers`]: mean-field Gaussian layers (weight sampling, local reparameterisation, Flipout)
//!   and sparse variational dropout.
//! - [`empirical_bayes`]: MOPED initialisation of a Bayesian model from a trained deterministic
//!   one (Krishnan et al. 2020): posterior means = its weights, `σ = δ·|w|`.
//! - [`math`]: stable softplus and sigmoid; [`error`]: [`error::ConfigError`] for refused values.

pub mod ctx;
pub mod divergence;
pub mod empirical_bayes;
pub mod error;
pub mod init;
pub mod layers;
pub mod math;
pub mod module;
pub mod params;
pub mod prior;
pub mod rng;
pub mod variational;

pub use ctx::{Ctx, Mode, Sampling};
pub use divergence::Divergence;
pub use error::ConfigError;
pub use init::Init;
pub use module::Module;
pub use params::{ParamBuilder, ParamStore};
pub use prior::Prior;
pub use rng::SeededRng;
pub use variational::{PosteriorStats, Variational};
