//! # secateur-bayes
//!
//! The layers of secateur, deterministic and Bayesian, and what they share: seeded randomness,
//! the forward context, named parameters, priors, divergences and the probabilistic layers of
//! the variational-inference core. `use secateur_bayes::prelude::*` brings the common names.
//!
//! ```
//! use secateur_bayes::prelude::*;
//! use candle_core::{DType, Device, Tensor};
//! // a two-layer Bayesian MLP with local reparameterisation
//! let store = ParamStore::new();
//! let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
//! let net = seq()
//!     .add(BayesLinear::new(&pb.pp("fc1"), BayesLinearConfig::new(4, 8))?)
//!     .add(Relu)
//!     .add(BayesLinear::new(&pb.pp("fc2"), BayesLinearConfig::new(8, 3))?);
//! let x = Tensor::ones((5, 4), DType::F32, &Device::Cpu)?;
//! let mut rng = SeededRng::new(1);
//! let logits = net.forward(&x, &mut Ctx::train(&mut rng, Sampling::Local))?;
//! let loss = (cross_entropy(&logits, &Tensor::new(&[0u32, 1, 2, 0, 1], &Device::Cpu)?)?
//!     + (store.kl()? / 1000.0)?)?; // the negative ELBO per example for N = 1000
//! assert!(loss.to_scalar::<f32>()?.is_finite());
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! Modules:
//! - [`rng`]: the run's seeded random generator ([`rng::SeededRng`]); candle's CPU RNG cannot be
//!   seeded, so every draw (initialisation, noise, shuffling) comes from here.
//! - [`ctx`]: the forward context ([`ctx::Ctx`]): train/eval mode, how stochastic layers sample,
//!   and the seeded noise source.
//! - [`module`]: the [`module::Module`] trait, `forward(&Tensor, &mut Ctx)`.
//! - [`params`]: named parameters and buffers ([`params::ParamStore`]) in sorted (BTreeMap) order
//!   with PyTorch-style names, the [`params::ParamBuilder`] that creates them path by path, and
//!   the summed divergence of the registered probabilistic layers ([`ParamStore::kl`]).
//! - [`init`]: seeded initialisers (PyTorch defaults: Kaiming uniform, Kaiming normal, Xavier).
//! - [`nn`]: the deterministic building blocks (linear, convolution, batch and layer norm,
//!   pooling, activations, [`nn::Sequential`]) and the softmax cross-entropy.
//! - [`prior`]: priors as values ([`prior::Prior`]: Gaussian, scale mixture, log-uniform,
//!   spike-and-slab) with elementwise log-densities.
//! - [`divergence`]: divergences of a factorised Gaussian posterior from a prior, summed over
//!   weights (analytic and Monte Carlo KL, the variational-dropout approximations of Kingma et al.
//!   2015 and Molchanov et al. 2017, the geometric Jensen–Shannon divergence), and the config
//!   value [`divergence::Divergence`] (`kl`, `kl-mc:S`, `js:α`).
//! - [`variational`]: the [`variational::Variational`] trait (divergence, posterior statistics)
//!   that every probabilistic layer implements and registers in the [`ParamStore`], so training
//!   and pruning reach it without knowing its type.
//! - [`layers`]: the probabilistic layers: mean-field Gaussian (weight sampling, local
//!   reparameterisation, Flipout), sparse variational dropout, variational dropout, MC dropout,
//!   spike-and-slab node selection, (variational) nested dropout, Bernoulli gates with a
//!   Gaussian scale-mixture prior.
//! - [`empirical_bayes`]: MOPED initialisation of a Bayesian model from a trained deterministic
//!   one (Krishnan et al. 2020): posterior means = its weights, `σ = δ·|w|`.
//! - [`math`]: stable softplus and sigmoid; [`error`]: [`error::ConfigError`] for refused values.
//! - [`prelude`]: the names above that most programs use.

pub mod ctx;
pub mod divergence;
pub mod empirical_bayes;
pub mod error;
pub mod init;
pub mod layers;
pub mod math;
pub mod module;
pub mod nn;
pub mod params;
pub mod prelude;
pub mod prior;
pub mod rng;
pub mod variational;

pub use ctx::{Ctx, Mode, Sampling};
pub use divergence::Divergence;
pub use error::ConfigError;
pub use init::Init;
pub use module::Module;
pub use params::{ParamBuilder, ParamStore, UnitSummary};
pub use prior::Prior;
pub use rng::SeededRng;
pub use variational::{PosteriorStats, TestTimeWeight, Variational};
