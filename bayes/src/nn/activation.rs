//! Activation functions as modules. ReLU runs on the fast kernel
//! ([`secateur_kernels::activation::relu`], differentiable twice); the others are candle's
//! elementwise ops.

use crate::{Ctx, Module};
use candle_core::{Result, Tensor};

/// `relu(x) = max(x, 0)` (PyTorch's `nn.ReLU`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relu;

impl Module for Relu {
    fn forward(&self, x: &Tensor, _ctx: &mut Ctx) -> Result<Tensor> {
        secateur_kernels::activation::relu(x)
    }
}

/// GELU with the exact error function, `x · Φ(x)` (Hendrycks & Gimpel 2016), as PyTorch's
/// `nn.GELU()` computes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gelu;

impl Module for Gelu {
    fn forward(&self, x: &Tensor, _ctx: &mut Ctx) -> Result<Tensor> {
        x.gelu_erf()
    }
}

/// `tanh(x)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tanh;

impl Module for Tanh {
    fn forward(&self, x: &Tensor, _ctx: &mut Ctx) -> Result<Tensor> {
        x.tanh()
    }
}

/// The logistic sigmoid `σ(x) = 1 / (1 + e^{−x})`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sigmoid;

impl Module for Sigmoid {
    fn forward(&self, x: &Tensor, _ctx: &mut Ctx) -> Result<Tensor> {
        candle_nn::ops::sigmoid(x)
    }
}

/// SiLU (swish), `x · σ(x)` (Elfwing, Uchibe & Doya 2018).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Silu;

impl Module for Silu {
    fn forward(&self, x: &Tensor, _ctx: &mut Ctx) -> Result<Tensor> {
        x.silu()
    }
}

/// Any function of the input as a module (`Sequential::add_fn`): reshapes, residual-free glue,
/// activations not listed here.
pub struct FnModule<F>(pub F);

impl<F: Fn(&Tensor) -> Result<Tensor>> Module for FnModule<F> {
    fn forward(&self, x: &Tensor, _ctx: &mut Ctx) -> Result<Tensor> {
        (self.0)(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Sampling, SeededRng};
    use candle_core::Device;

    #[test]
    fn activations_match_their_closed_forms() -> Result<()> {
        let xs = [-2.5f64, -0.3, 0.0, 0.7, 3.1];
        let x = Tensor::new(&xs, &Device::Cpu)?;
        let mut rng = SeededRng::new(0);
        let mut ctx = Ctx::eval(&mut rng, Sampling::Mean);
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        type Case<'a> = (&'a dyn Module, fn(f64) -> f64);
        let cases: [Case; 4] = [
            (&Relu, |v| v.max(0.0)),
            (&Tanh, f64::tanh),
            (&Sigmoid, |v| 1.0 / (1.0 + (-v).exp())),
            (&FnModule(|t: &Tensor| t.affine(2.0, 1.0)), |v| 2.0 * v + 1.0),
        ];
        for (m, f) in cases {
            let y = m.forward(&x, &mut ctx)?.to_vec1::<f64>()?;
            for (a, &v) in y.iter().zip(&xs) {
                assert!((a - f(v)).abs() < 1e-12, "{v}: {a} vs {}", f(v));
            }
        }
        let y = Silu.forward(&x, &mut ctx)?.to_vec1::<f64>()?;
        for (a, &v) in y.iter().zip(&xs) {
            assert!((a - v * sig(v)).abs() < 1e-12);
        }
        // Φ(x) = (1 + erf(x/√2))/2; erf(0.7/√2) to 1e-9 from tables: 0.516073
        let y = Gelu.forward(&x, &mut ctx)?.to_vec1::<f64>()?;
        assert_eq!(y[2], 0.0);
        assert!((y[3] - 0.7 * (1.0 + 0.5160727) / 2.0).abs() < 1e-6, "{}", y[3]);
        Ok(())
    }
}
