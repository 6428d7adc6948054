//! # secateur-models
//!
//! Architectures written once against a [`factory::LayerFactory`] that makes their linear and
//! convolution layers, so that every method (deterministic, mean-field Gaussian, variational
//! dropout, …) is compared on the same network.
//!
//! Modules (the deterministic building blocks themselves are in `secateur_bayes::nn`):
//! - [`bayes_factory`]: the Bayesian factories (mean-field Gaussian, sparse variational dropout,
//!   MC dropout, …).
//! - [`kind`](mod@kind): the registry of layer kinds ([`LAYER_KINDS`]): per config name
//!   (`model.layers`), whether it is Bayesian, how it samples, its factory and its report.
//! - [`factory`](mod@factory): the [`factory::LayerFactory`] trait and the deterministic factory; Bayesian
//!   factories wrap the probabilistic layers of `secateur-bayes`.
//! - [`arch`]: the architectures (LeNet-300-100, LeNet-5, VGG, CIFAR ResNets, ResNet-18, ViT) and
//!   a registry, [`build`], that builds one by name from a [`ModelSpec`]; [`ARCHITECTURES`] lists
//!   the names.

pub mod arch;
pub mod bayes_factory;
pub mod factory;
pub mod kind;

pub use arch::{architectures, build, build_with_widths, ModelSpec, Network, ARCHITECTURES};
pub use bayes_factory::{FactoryOptions, McDropoutFactory, MeanField, SparseVd};
pub use factory::{Deterministic, LayerFactory};
pub use kind::{factory, kind, kind_names, KindReport, KindSampling, LayerKind, ReportInput, ReportValue, LAYER_KINDS};
