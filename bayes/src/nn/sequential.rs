//! A chain of modules applied in order.

use super::activation::FnModule;
use crate::{Ctx, Module};
use candle_core::{Result, Tensor};

/// Modules applied one after the other (PyTorch's `nn.Sequential`).
///
/// Parameter names are given by the [`crate::ParamBuilder`] paths the layers were built under
/// (`features.0`, `features.1`, …), not by the position in this list, so parameter-free layers
/// that are skipped for a small input do not shift the names of later layers.
///
/// ```
/// use secateur_bayes::nn::{seq, Relu};
/// use secateur_bayes::{Ctx, Module, Sampling, SeededRng};
/// let net = seq().add(Relu).add_fn(|x| x.affine(2.0, 0.0));
/// let x = candle_core::Tensor::new(&[-1f32, 3.0], &candle_core::Device::Cpu)?;
/// let mut rng = SeededRng::new(0);
/// let y = net.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
/// assert_eq!(y.to_vec1::<f32>()?, [0.0, 6.0]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Default)]
pub struct Sequential {
    /// The modules, in application order.
    pub layers: Vec<Box<dyn Module>>,
}

/// An empty [`Sequential`], to be extended with [`Sequential::add`].
pub fn seq() -> Sequential {
    Sequential::default()
}

impl Sequential {
    /// An empty chain (the identity).
    pub fn new() -> Self {
        Self::default()
    }

    /// The chain with `m` appended (builder style, `seq().add(..).add(..)`; not `std::ops::Add`).
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, m: impl Module + 'static) -> Self {
        self.push(m);
        self
    }

    /// The chain with the function `f` appended as a module.
    pub fn add_fn<F: Fn(&Tensor) -> Result<Tensor> + 'static>(self, f: F) -> Self {
        self.add(FnModule(f))
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
