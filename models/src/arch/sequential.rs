//! A chain of modules applied in order.

use candle_core::{Result, Tensor};
use secateur_bayes::{Ctx, Module};

/// Modules applied one after the other (PyTorch's `nn.Sequential`).
///
/// Parameter names are given by the [`secateur_bayes::ParamBuilder`] paths the layers were built
/// under (`features.0`, `features.1`, …), not by the position in this list, so parameter-free
/// layers that are skipped for a small input do not shift the names of later layers.
#[derive(Default)]
pub struct Sequential {
    /// The modules, in application order.
    pub layers: Vec<Box<dyn Module>>,
}

impl Sequential {
    /// An empty chain (the identity).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a module.
    pub fn push(&mut self, m: impl Module + 'static) {
        self.layers.push(Box::new(m));
    }

    /// Appends a boxed module (e.g. one made by a layer factory).
    pub fn push_boxed(&mut self, m: Box<dyn Module>) {
        self.layers.push(m);
    }

    /// Number of modules.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether the chain is empty.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl Module for Sequential {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let mut x = x.clone();
        for m in &self.layers {
            x = m.forward(&x, ctx)?;
        }
        Ok(x)
    }
}
