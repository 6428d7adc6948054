//! The closed-form KL divergence of a factorised Gaussian from a Gaussian prior, summed, in one
//! parallel pass:
//!
//! `KL = Σᵢ log(σₚ/σᵢ) + (σᵢ² + (μᵢ − μₚ)²) / (2σₚ²) − ½` (Blundell et al. 2015).
//!
//! Gradients: `∂KL/∂μᵢ = (μᵢ − μₚ)/σₚ²` and `∂KL/∂σᵢ = σᵢ/σₚ² − 1/σᵢ`, written as candle ops
//! (so second derivatives come from candle). The sum accumulates in f64 over blocks of a fixed
//! size added in order, so it is bit-identical across runs and thread counts. As candle ops the
//! same sum is eight passes over the parameters forward.

use crate::cpu::contiguous;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Entries per parallel block (fixed, so the summation order does not depend on threads).
const BLOCK: usize = 1 << 14;

/// `Σᵢ KL(N(μᵢ, σᵢ²) ‖ N(μₚ, σₚ²))` as a scalar tensor; `None` off the CPU fast path (f32/f64 on
/// the CPU, one dtype), where the caller uses its own composition.
pub fn gaussian_kl_sum(mu: &Tensor, sigma: &Tensor, prior_mean: f64, prior_std: f64) -> Result<Option<Tensor>> {
    if mu.dims() != sigma.dims() {
        candle_core::bail!(
            "gaussian KL: μ {:?} and σ {:?} differ in shape",
            mu.dims(),
            sigma.dims()
        );
    }
    if !(prior_std.is_finite() && prior_std > 0.0 && prior_mean.is_finite()) {
        candle_core::bail!("gaussian KL: prior N({prior_mean}, {prior_std}²) is not a proper Gaussian");
    }
    let fast = mu.device().is_cpu() && mu.dtype() == sigma.dtype() && matches!(mu.dtype(), DType::F32 | DType::F64);
    if !fast {
        return Ok(None);
    }
    let op = GaussianKl {
        mean: prior_mean,
        std: prior_std,
    };
    Ok(Some(mu.contiguous()?.apply_op2(&sigma.contiguous()?, op)?))
}

struct GaussianKl {
    mean: f64,
    std: f64,
}

impl GaussianKl {
    fn sum<T: WithDType>(&self, mu: &[T], sigma: &[T]) -> f64 {
        let (m, inv2, log_ps) = (self.mean, 1.0 / (2.0 * self.std * self.std), self.std.ln());
        let parts: Vec<f64> = mu
            .par_chunks(BLOCK)
            .zip(sigma.par_chunks(BLOCK))
            .map(|(mu, sg)| {
                mu.iter().zip(sg).fold(0f64, |acc, (&u, &s)| {
                    let (u, s) = (u.to_f64(), s.to_f64());
                    let d = u - m;
                    acc + log_ps - ln_of::<T>(s) + (s * s + d * d) * inv2 - 0.5
                })
            })
            .collect();
        parts.iter().sum()
    }
}

/// `log s` for a value of dtype `T` (held in an f64): the branch-free f32 logarithm of
/// `crate::vmath` (within two units in the last place) for f32 tensors, the C library's for f64.
#[inline(always)]
fn ln_of<T: WithDType>(s: f64) -> f64 {
    if T::DTYPE == DType::F32 {
        f64::from(crate::vmath::ln(s as f32))
    } else {
        s.ln()
    }
}

impl CustomOp2 for GaussianKl {
    fn name(&self) -> &'static str {
        "secateur-gaussian-kl"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("gaussian KL: μ {:?} and σ {:?} differ in shape", l1.shape(), l2.shape());
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let v = self.sum(
                    contiguous::<f32>(s1, l1, "gaussian KL", "μ")?,
                    contiguous::<f32>(s2, l2, "gaussian KL", "σ")?,
                );
                CpuStorage::F32(vec![v as f32])
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let v = self.sum(
                    contiguous::<f64>(s1, l1, "gaussian KL", "μ")?,
                    contiguous::<f64>(s2, l2, "gaussian KL", "σ")?,
                );
                CpuStorage::F64(vec![v])
            }
            _ => candle_core::bail!("gaussian KL: only f32 and f64 (not mixed) are supported"),
        };
        Ok((out, Shape::from(())))
    }
    fn bwd(&self, mu: &Tensor, sigma: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let v = 1.0 / (self.std * self.std);
        let dmu = mu.affine(v, -self.mean * v)?.broadcast_mul(g)?;
        let dsigma = (sigma.affine(v, 0.0)? - sigma.recip()?)?.broadcast_mul(g)?;
        Ok((Some(dmu), Some(dsigma)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(v: &[f64]) -> Tensor {
        Tensor::from_vec(v.to_vec(), v.len(), &Device::Cpu).unwrap()
    }

    /// Against the formula term by term, and its gradients against the closed form.
    #[test]
    fn value_and_gradients_match_closed_forms() {
        let (mu0, s0) = ([0.3, -1.2, 0.0, 2.5], [0.5, 1.7, 1e-3, 0.9]);
        let (pm, ps) = (0.1, 0.8);
        let mu = Var::from_tensor(&t(&mu0)).unwrap();
        let s = Var::from_tensor(&t(&s0)).unwrap();
        let kl = gaussian_kl_sum(mu.as_tensor(), s.as_tensor(), pm, ps).unwrap().unwrap();
        let want: f64 = mu0
            .iter()
            .zip(&s0)
            .map(|(u, s)| (ps / s).ln() + (s * s + (u - pm) * (u - pm)) / (2.0 * ps * ps) - 0.5)
            .sum();
        let got = kl.to_scalar::<f64>().unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        let g = (kl * 3.0).unwrap().backward().unwrap();
        let (gm, gs): (Vec<f64>, Vec<f64>) = (
            g.get(&mu).unwrap().to_vec1().unwrap(),
            g.get(&s).unwrap().to_vec1().unwrap(),
        );
        for i in 0..4 {
            assert!((gm[i] - 3.0 * (mu0[i] - pm) / (ps * ps)).abs() < 1e-12);
            assert!((gs[i] - 3.0 * (s0[i] / (ps * ps) - 1.0 / s0[i])).abs() < 1e-9);
        }
    }

    /// f32 tensors (whose logarithm is the vectorisable one) against the f64 closed form on many
    /// terms, within the f32 rounding of the result.
    #[test]
    fn f32_matches_the_closed_form() {
        let n = 50_000;
        let mu: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 0.3).collect();
        let sg: Vec<f32> = (0..n).map(|i| 0.002 + 0.05 * ((i as f32 * 0.11).cos() + 1.0)).collect();
        let (pm, ps) = (0.1, 0.7);
        let want: f64 = mu
            .iter()
            .zip(&sg)
            .map(|(&u, &s)| {
                let (u, s) = (u as f64, s as f64);
                (ps / s).ln() + (s * s + (u - pm) * (u - pm)) / (2.0 * ps * ps) - 0.5
            })
            .sum();
        let dev = &candle_core::Device::Cpu;
        let (m, s) = (
            Tensor::from_vec(mu, n, dev).unwrap(),
            Tensor::from_vec(sg, n, dev).unwrap(),
        );
        let got = gaussian_kl_sum(&m, &s, pm, ps)
            .unwrap()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!(
            ((got - want) / want).abs() < 2.0 * f32::EPSILON as f64,
            "{got} vs {want}"
        );
    }

    #[test]
    fn the_prior_itself_has_zero_divergence() {
        let kl = gaussian_kl_sum(&t(&[0.0; 5]), &t(&[1.0; 5]), 0.0, 1.0)
            .unwrap()
            .unwrap();
        assert_eq!(kl.to_scalar::<f64>().unwrap(), 0.0);
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert!(gaussian_kl_sum(&t(&[0.0; 2]), &t(&[1.0; 3]), 0.0, 1.0).is_err());
        assert!(gaussian_kl_sum(&t(&[0.0; 2]), &t(&[1.0; 2]), 0.0, 0.0).is_err());
    }
}
