//! # secateur-models
//!
//! Architectures written once against a [`factory::LayerFactory`] that makes their linear and
//! convolution layers, so that every method (deterministic, mean-field Gaussian, variational
//! dropout, …) is compared on the same network.
//!
//! Module plan:
//! - [`layers`]: deterministic building blocks (linear, conv, batch norm, layer norm, pooling,
//!   GELU, flatten).
//! - [`bayes_factory`]: the Bayesian factories (mean-field Gaussian, sparse variational dropout,
//!   MC dropout) and [`factory()`], which maps a config name (`model.layers`) to a factory.
//! - [`factory`](mod@factory): the [`factory::LayerFactory`] trait and the deterministic factory; Bayesian
//!   factories wrap the probabilistic layers of `secateur-bayes`.
//! - [`arch`]: the architectures (LeNet-300-100, LeNet-5, VGG, CIFAR ResNets, ResNet-18, ViT) and
//!   a registry, [`build`], that builds one by name from a [`ModelSpec`]; [`ARCHITECTURES`] lists
//!   the names.

pub mod arch;
pub mod bayes_factory;
pub mod factory;
pub mod layers;

pub use arch::{architectures, build, ModelSpec, Network, ARCHITECTURES};
pub use bayes_factory::{factory, is_bayesian, FactoryOptions, McDropoutFactory, MeanField, SparseVd, LAYER_KINDS};
pub use factory::{Deterministic, LayerFactory};
pub use secateur_bayes::nn::{Conv2dCfg, LinearCfg};
