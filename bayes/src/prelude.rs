//! Everything a program building and running a network needs, in one import:
//! `use secateur_bayes::prelude::*;`.
//!
//! The module trait and its context, parameters and their builder, the seeded generator, priors
//! and divergences, the deterministic building blocks of [`nn`](crate::nn) and the probabilistic
//! layers of [`layers`](crate::layers).

pub use crate::layers::{
    BayesConv2d, BayesConv2dConfig, BayesLinear, BayesLinearConfig, GateConv2d, GateConv2dConfig, GateLinear,
    GateLinearConfig, McDropout, SpikeSlabConv2d, SpikeSlabConv2dConfig, SpikeSlabLinear, SpikeSlabLinearConfig,
    SvdConv2d, SvdConv2dConfig, SvdLinear, SvdLinearConfig, VdConv2d, VdConv2dConfig, VdGranularity, VdLinear,
    VdLinearConfig,
};
pub use crate::nn::{
    cross_entropy, seq, BatchNorm, Conv2d, Conv2dCfg, Flatten, Gelu, GlobalAvgPool, LayerNorm, Linear, LinearCfg,
    MaxPool2d, Relu, Sequential, Sigmoid, Silu, Tanh,
};
pub use crate::{
    Ctx, Divergence, Init, Mode, Module, ParamBuilder, ParamStore, PosteriorStats, Prior, Sampling, SeededRng,
    Variational,
};
