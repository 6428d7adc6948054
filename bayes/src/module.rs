//! The module trait every layer and model implements.

use crate::ctx::Ctx;
use candle_core::{Result, Tensor};

/// A layer or model: `forward(x, ctx)`.
///
/// Unlike `candle_nn::Module`, the forward pass receives a [`Ctx`] so that stochastic layers can
/// draw from the run's seeded generator and batch norm can tell training from evaluation.
pub trait Module {
    /// Applies the module to `x`.
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor>;
}

impl<M: Module + ?Sized> Module for Box<M> {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        (**self).forward(x, ctx)
    }
}

impl<M: Module + ?Sized> Module for std::sync::Arc<M> {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        (**self).forward(x, ctx)
    }
}
