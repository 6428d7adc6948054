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

    /// The penultimate features: the input `φ(x)` of the model's final linear layer (its
    /// [head](Module::head)), `[B, d]`, so that `forward(x) = φ(x) Wᵀ + b` with `W =
    /// {head}.weight` and `b = {head}.bias`. Last-layer methods read it (last-layer Laplace,
    /// Kristiadi, Hein & Hennig 2020; laplace-torch's feature extractor). Default: refused.
    fn features(&self, _x: &Tensor, _ctx: &mut Ctx) -> Result<Tensor> {
        candle_core::bail!("this model does not expose its penultimate features (no last-layer methods)")
    }

    /// The parameter path of the final linear layer (`fc3` for LeNet-5), whose `{head}.weight`
    /// `[K, d]` and `{head}.bias` `[K]` map [`Module::features`] to the outputs; `None` when
    /// the model does not expose one (the default).
    fn head(&self) -> Option<String> {
        None
    }
}

impl<M: Module + ?Sized> Module for Box<M> {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        (**self).forward(x, ctx)
    }
    fn features(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        (**self).features(x, ctx)
    }
    fn head(&self) -> Option<String> {
        (**self).head()
    }
}

impl<M: Module + ?Sized> Module for std::sync::Arc<M> {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        (**self).forward(x, ctx)
    }
    fn features(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        (**self).features(x, ctx)
    }
    fn head(&self) -> Option<String> {
        (**self).head()
    }
}
