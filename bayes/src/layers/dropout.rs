//! MC dropout (Gal & Ghahramani 2016, "Dropout as a Bayesian approximation"), the baseline:
//! inverted dropout `y = x ⊙ m / (1 − p)`, `m ~ Bernoulli(1 − p)` elementwise, kept **on** at
//! prediction time so that averaging S stochastic passes approximates the posterior predictive.
//!
//! The mask is drawn whenever `ctx.sampling` is not `Sampling::Mean` (in training and in
//! evaluation alike); `Sampling::Mean` gives the deterministic `y = x` (the usual test-time
//! weight-scaling rule). It has no variational parameters of its own, so it is not registered as
//! [`Variational`](crate::Variational): the KL of the Gaussian-process view reduces to L2 weight
//! decay, which belongs to the optimiser.

use crate::ctx::{Ctx, Sampling};
use crate::error::ConfigError;
use crate::module::Module;
use candle_core::{Result, Tensor};

/// MC dropout with drop probability `p ∈ [0, 1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct McDropout {
    p: f64,
}

impl McDropout {
    /// Dropout with drop probability `p`; refuses `p ∉ [0, 1)`.
    pub fn new(p: f64) -> std::result::Result<Self, ConfigError> {
        if (0.0..1.0).contains(&p) {
            Ok(Self { p })
        } else {
            Err(ConfigError::invalid("mc dropout", "p", "in [0, 1)", p))
        }
    }

    /// The drop probability.
    pub fn p(&self) -> f64 {
        self.p
    }
}

impl Module for McDropout {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        if ctx.sampling == Sampling::Mean || self.p == 0.0 {
            return Ok(x.clone());
        }
        ctx.mark_noisy();
        let u = ctx.rng.rand_uniform(x.dims(), 0.0, 1.0, x.dtype(), x.device())?;
        // one pass on the CPU (secateur-kernels, the same bits); candle ops elsewhere
        if let Some(y) = secateur_kernels::dropout::inverted(x, &u, self.p)? {
            return Ok(y);
        }
        let keep = u.ge(self.p)?.to_dtype(x.dtype())?;
        (x * keep)? / (1.0 - self.p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SeededRng;
    use candle_core::{DType, Device};

    #[test]
    fn mask_rate_scale_and_mean_mode() -> Result<()> {
        let d = McDropout::new(0.25).unwrap();
        assert!(McDropout::new(1.0).is_err() && McDropout::new(-0.1).is_err());
        let x = Tensor::ones(20_000, DType::F64, &Device::Cpu)?;
        let mut rng = SeededRng::new(0);
        let y: Vec<f64> = d.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Weight))?.to_vec1()?;
        let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / y.len() as f64;
        // SE of the kept fraction: √(0.75·0.25/20000) ≈ 0.0031
        assert!((kept - 0.75).abs() < 5.0 * 0.0031, "{kept}");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-12));
        let z: Vec<f64> = d.forward(&x, &mut Ctx::train(&mut rng, Sampling::Mean))?.to_vec1()?;
        assert!(z.iter().all(|&v| v == 1.0));
        Ok(())
    }
}
