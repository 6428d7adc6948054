//! Deterministic building blocks beside the probabilistic [`layers`](crate::layers), PyTorch's
//! `torch.nn` in the shape of secateur's [`Module`](crate::Module):
//!
//! - [`linear`]: [`Linear`] and [`Conv2d`] and their shapes [`LinearCfg`], [`Conv2dCfg`]
//!   (PyTorch's default initialisation unless set);
//! - [`norm`]: [`BatchNorm`] (Ioffe & Szegedy 2015) and [`LayerNorm`] (Ba et al. 2016);
//! - [`pool`]: [`MaxPool2d`], [`GlobalAvgPool`], [`Flatten`];
//! - [`activation`]: [`Relu`] (on the fast kernel), [`Gelu`], [`Tanh`], [`Sigmoid`], [`Silu`],
//!   and [`FnModule`] for any function of the input;
//! - [`sequential`]: [`Sequential`], built with [`seq`]`().add(..).add_fn(..)`;
//! - [`loss`]: the softmax cross-entropy [`cross_entropy`] and [`softmax_last_dim`].
//!
//! Every layer registers its parameters through a [`ParamBuilder`](crate::ParamBuilder) under
//! PyTorch's names (`weight`, `bias`, `running_mean`, …), so state dicts line up with PyTorch's.

pub mod activation;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod pool;
pub mod sequential;

pub use activation::{FnModule, Gelu, Relu, Sigmoid, Silu, Tanh};
pub use linear::{conv2d_forward, linear_forward, Conv2d, Conv2dCfg, Linear, LinearCfg};
pub use loss::{cross_entropy, softmax_last_dim};
pub use norm::{BatchNorm, LayerNorm};
pub use pool::{Flatten, GlobalAvgPool, MaxPool2d};
pub use sequential::{seq, Sequential};
