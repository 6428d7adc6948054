//! Inverted dropout with a given draw as one parallel pass (MC dropout's layer,
//! `secateur_bayes::layers::McDropout`; Srivastava et al. 2014, Gal & Ghahramani 2016):
//!
//! ```text
//! y = (x · [u ≥ p]) · s,   s = 1/(1 − p)
//! ```
//!
//! with `u` the layer's uniform draws (`x`'s shape) and `p` the drop probability: the value, to
//! the bit, of the candle composition `(x * u.ge(p)) / (1 − p)`, which is four passes (a
//! comparison and a cast on the calling thread); the gradient's values too (a dropped entry's
//! zero may differ in sign, which no sum sees). The map is linear in `x`, so its backward is the
//! same map applied to the incoming gradient, an op of the same kind: differentiable to any order.

use crate::cpu::{contiguous, map2};
use crate::vmath::Real;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// `(x · [u ≥ p]) / (1 − p)`; `None` off the fast path (f32/f64 on the CPU, one dtype). Fails
/// when the shapes differ or `p ∉ [0, 1)`.
pub fn inverted(x: &Tensor, u: &Tensor, p: f64) -> Result<Option<Tensor>> {
    if x.dims() != u.dims() {
        candle_core::bail!("dropout: x {:?} and its draws {:?} differ in shape", x.dims(), u.dims());
    }
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("dropout: the drop probability must be in [0, 1), got {p}");
    }
    let fast = x.device().is_cpu() && x.dtype() == u.dtype() && matches!(x.dtype(), DType::F32 | DType::F64);
    if !fast {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op2(&u.contiguous()?, Dropout { p })?))
}

/// The map `x ↦ (x · [u ≥ p]) · s` for fixed `u`.
struct Dropout {
    p: f64,
}

fn run<T: Real>(x: &[T], u: &[T], p: f64) -> Vec<T> {
    let (pt, s) = (T::of(p), T::of(1.0 / (1.0 - p)));
    map2(x, u, |x, u| {
        let keep = if u >= pt { T::one() } else { T::zero() };
        // `+ 0` as candle's `affine` adds it: a dropped negative entry is +0, not −0
        (x * keep) * s + T::zero()
    })
}

impl CustomOp2 for Dropout {
    fn name(&self) -> &'static str {
        "secateur-dropout"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "dropout";
        if l1.shape() != l2.shape() {
            candle_core::bail!("{OP}: x {:?} and u {:?} differ in shape", l1.shape(), l2.shape());
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(run(
                contiguous::<f32>(s1, l1, OP, "x")?,
                contiguous::<f32>(s2, l2, OP, "u")?,
                self.p,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(run(
                contiguous::<f64>(s1, l1, OP, "x")?,
                contiguous::<f64>(s2, l2, OP, "u")?,
                self.p,
            )),
            _ => candle_core::bail!("{OP}: only f32 and f64 (not mixed) are supported"),
        };
        Ok((out, l1.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, u: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // linear in x: the gradient is the same map of the incoming gradient (no gradient for u)
        let dx = g.contiguous()?.apply_op2(u, Dropout { p: self.p })?;
        Ok((Some(dx), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::bits;
    use candle_core::{Device, Var};

    fn det(n: usize, seed: f64, lo: f64, hi: f64) -> Tensor {
        let v: Vec<f64> = (0..n)
            .map(|i| {
                let s = ((i as f64 + 1.0) * (0.618 + seed)).sin() * 43758.5453;
                lo + (hi - lo) * (s - s.floor())
            })
            .collect();
        Tensor::from_vec(v, n, &Device::Cpu).unwrap()
    }

    /// Values bit for bit and the gradient's values (zeros of either sign) against the candle
    /// composition, f32 and f64, across several parallel chunks.
    #[test]
    fn equals_the_composition_bit_for_bit() {
        for dt in [DType::F32, DType::F64] {
            for p in [0.0, 0.1, 0.5] {
                let n = 40_003;
                let x = Var::from_tensor(&det(n, 0.1, -3.0, 3.0).to_dtype(dt).unwrap()).unwrap();
                let u = det(n, 0.2, 0.0, 1.0).to_dtype(dt).unwrap();
                let w = det(n, 0.3, 0.5, 1.5).to_dtype(dt).unwrap();
                let fused = inverted(x.as_tensor(), &u, p).unwrap().unwrap();
                let keep = u.ge(p).unwrap().to_dtype(dt).unwrap();
                let comp = ((x.as_tensor() * keep).unwrap() / (1.0 - p)).unwrap();
                assert_eq!(bits(&fused), bits(&comp), "{dt:?} p = {p}: values");
                let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let gc = (comp * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let vals = |t: &Tensor| t.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
                let (a, b) = (vals(gf.get(&x).unwrap()), vals(gc.get(&x).unwrap()));
                assert!(a == b, "{dt:?} p = {p}: gradients differ");
                // the draws are spread evenly over [0, 1), so about n·p entries are dropped: a
                // mask that dropped nothing (or kept nothing, caught by the values above) fails
                assert!(a.iter().filter(|v| **v == 0.0).count() >= (n as f64 * p * 0.9) as usize);
            }
        }
    }

    #[test]
    fn bad_input_is_refused() {
        let x = det(4, 0.1, -1.0, 1.0);
        assert!(inverted(&x, &det(3, 0.2, 0.0, 1.0), 0.1).is_err());
        assert!(inverted(&x, &det(4, 0.2, 0.0, 1.0), 1.0).is_err());
        assert!(inverted(&x, &det(4, 0.2, 0.0, 1.0), -0.1).is_err());
    }
}
