//! `softplus(x) = log(1 + eˣ)` as one parallel pass, closed under differentiation to second
//! order.
//!
//! The value is `max(x, 0) + log(1 + e^{−|x|})`, and `eˣ` for `x < −15` so that it never rounds
//! to zero in f32 (as `secateur_bayes::math::softplus` defines it). Derivatives:
//! `s′(x) = σ(x) = 1 / (1 + e^{−x})` (`eˣ` below −15) and `s″(x) = σ(x)(1 − σ(x))` (`eˣ` below
//! −15). The backward is [`SoftplusGrad`]`(x, g) = g ⊙ s′(x)`, whose own backward is `h ⊙ s′(x)`
//! for `g` (the same op) and `h ⊙ g ⊙ s″(x)` for `x` ([`SoftplusCurv`]); a third derivative is
//! refused with an error. Mean-field layers evaluate `σ = softplus(ρ)` for every weight in every
//! forward pass and KL term; as candle ops that is eleven passes over the parameters forward and
//! about as many backward.

use crate::cpu::{contiguous, map1, map2};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType};

/// Below this argument `softplus(x)` is `eˣ`.
pub const EXP_BELOW: f64 = -15.0;

/// `softplus(x)` elementwise (see the module documentation). `None` when `x` is not an f32/f64
/// tensor on the CPU (the caller then uses its own composition).
pub fn softplus(x: &Tensor) -> Result<Option<Tensor>> {
    if !fast(x) {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op1(Softplus)?))
}

fn fast(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// The arithmetic of the derivatives in the tensor's own precision (f32 math for f32 tensors).
trait Real: WithDType + std::ops::Neg<Output = Self> {
    fn exp_(self) -> Self;
    fn ln_1p_(self) -> Self;
    fn max0(self) -> Self;
    fn abs_(self) -> Self;
}

macro_rules! real {
    ($t:ty) => {
        impl Real for $t {
            fn exp_(self) -> Self {
                self.exp()
            }
            fn ln_1p_(self) -> Self {
                self.ln_1p()
            }
            fn max0(self) -> Self {
                self.max(0.0)
            }
            fn abs_(self) -> Self {
                self.abs()
            }
        }
    };
}
real!(f32);
real!(f64);

#[inline]
fn value<T: Real>(x: T) -> T {
    if x.to_f64() < EXP_BELOW {
        x.exp_()
    } else {
        x.max0() + (-x.abs_()).exp_().ln_1p_()
    }
}

#[inline]
fn first<T: Real>(x: T) -> T {
    let one = T::one();
    if x.to_f64() < EXP_BELOW {
        x.exp_()
    } else if x >= T::zero() {
        one / (one + (-x).exp_())
    } else {
        let e = x.exp_();
        e / (one + e)
    }
}

#[inline]
fn second<T: Real>(x: T) -> T {
    if x.to_f64() < EXP_BELOW {
        x.exp_()
    } else {
        let s = first(x);
        s * (T::one() - s)
    }
}

/// `g ⊙ f(x)`.
fn scale<T: WithDType>(x: &[T], g: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    map2(x, g, |x, g| g * f(x))
}

/// Which function of `x` an op evaluates.
#[derive(Clone, Copy)]
enum Fun {
    Value,
    First,
    Second,
}

fn eval<T: Real>(f: Fun) -> impl Fn(T) -> T + Sync {
    move |x| match f {
        Fun::Value => value(x),
        Fun::First => first(x),
        Fun::Second => second(x),
    }
}

fn unary(s: &CpuStorage, l: &Layout, f: Fun) -> Result<(CpuStorage, Shape)> {
    let out = match s {
        CpuStorage::F32(_) => CpuStorage::F32(map1(contiguous::<f32>(s, l, "softplus", "input")?, eval::<f32>(f))),
        CpuStorage::F64(_) => CpuStorage::F64(map1(contiguous::<f64>(s, l, "softplus", "input")?, eval::<f64>(f))),
        _ => candle_core::bail!("softplus: only f32 and f64 are supported"),
    };
    Ok((out, l.shape().clone()))
}

fn scaled(s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, f: Fun) -> Result<(CpuStorage, Shape)> {
    if l1.shape() != l2.shape() {
        candle_core::bail!(
            "softplus derivative: shapes {:?} and {:?} differ",
            l1.shape(),
            l2.shape()
        );
    }
    let out = match (s1, s2) {
        (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(scale(
            contiguous::<f32>(s1, l1, "softplus", "input")?,
            contiguous::<f32>(s2, l2, "softplus", "gradient")?,
            eval::<f32>(f),
        )),
        (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(scale(
            contiguous::<f64>(s1, l1, "softplus", "input")?,
            contiguous::<f64>(s2, l2, "softplus", "gradient")?,
            eval::<f64>(f),
        )),
        _ => candle_core::bail!("softplus derivative: only f32 and f64 (not mixed) are supported"),
    };
    Ok((out, l1.shape().clone()))
}

struct Softplus;

impl CustomOp1 for Softplus {
    fn name(&self) -> &'static str {
        "secateur-softplus"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        unary(s, l, Fun::Value)
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2(&g.contiguous()?, SoftplusGrad)?))
    }
}

/// `g ⊙ s′(x)`.
struct SoftplusGrad;

impl CustomOp2 for SoftplusGrad {
    fn name(&self) -> &'static str {
        "secateur-softplus-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        scaled(s1, l1, s2, l2, Fun::First)
    }
    fn bwd(&self, x: &Tensor, g: &Tensor, _res: &Tensor, h: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let h = h.contiguous()?;
        let dx = x.apply_op2(&(g * &h)?, SoftplusCurv)?;
        let dg = x.apply_op2(&h, SoftplusGrad)?;
        Ok((Some(dx), Some(dg)))
    }
}

/// `gh ⊙ s″(x)`.
struct SoftplusCurv;

impl CustomOp2 for SoftplusCurv {
    fn name(&self) -> &'static str {
        "secateur-softplus-curvature"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        scaled(s1, l1, s2, l2, Fun::Second)
    }
    fn bwd(&self, _x: &Tensor, _g: &Tensor, _res: &Tensor, _h: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        candle_core::bail!("softplus: third derivatives are not implemented")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn xs() -> Tensor {
        let v: Vec<f64> = vec![-40.0, -15.5, -14.5, -3.0, -0.25, 0.0, 0.3, 2.0, 17.0, 50.0];
        Tensor::from_vec(v, 10, &Device::Cpu).unwrap()
    }

    #[test]
    fn values_and_derivatives_match_closed_forms() {
        let x = Var::from_tensor(&xs()).unwrap();
        let y = softplus(x.as_tensor()).unwrap().unwrap();
        let xv: Vec<f64> = xs().to_vec1().unwrap();
        let yv: Vec<f64> = y.to_vec1().unwrap();
        for (&x, &y) in xv.iter().zip(&yv) {
            let want = if x < -15.0 { x.exp() } else { x.exp().ln_1p() };
            assert!(
                (y - want).abs() <= 1e-15 * want.max(1.0),
                "softplus({x}) = {y}, want {want}"
            );
        }
        let g = y.sum_all().unwrap().backward().unwrap();
        let d: Vec<f64> = g.get(&x).unwrap().to_vec1().unwrap();
        for (&x, &d) in xv.iter().zip(&d) {
            let want = if x < -15.0 { x.exp() } else { 1.0 / (1.0 + (-x).exp()) };
            assert!((d - want).abs() <= 1e-15, "softplus'({x}) = {d}, want {want}");
        }
    }

    /// Double backprop: `∂²/∂x² Σ softplus(x)·c` against central differences of the gradient.
    #[test]
    fn second_derivative_matches_finite_differences() {
        std::thread::spawn(|| {
            std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1");
            let c = Tensor::from_vec((1..=10).map(|i| i as f64 * 0.3).collect::<Vec<_>>(), 10, &Device::Cpu).unwrap();
            let v = Tensor::from_vec(
                (0..10).map(|i| 1.0 - i as f64 * 0.17).collect::<Vec<_>>(),
                10,
                &Device::Cpu,
            )
            .unwrap();
            let grad = |x0: &Tensor| {
                let x = Var::from_tensor(x0).unwrap();
                let l = (softplus(x.as_tensor()).unwrap().unwrap() * &c)
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let g = l.backward().unwrap();
                (x, g)
            };
            let (x, g) = grad(&xs());
            let gv = (g.get(&x).unwrap() * &v).unwrap().sum_all().unwrap();
            let hv: Vec<f64> = gv.backward().unwrap().get(&x).unwrap().to_vec1().unwrap();
            let eps = 1e-6;
            let shifted = |s: f64| {
                let (x, g) = grad(&(xs() + (&v * (s * eps)).unwrap()).unwrap());
                g.get(&x).unwrap().to_vec1::<f64>().unwrap()
            };
            let (p, m) = (shifted(1.0), shifted(-1.0));
            for i in 0..10 {
                let fd = (p[i] - m[i]) / (2.0 * eps);
                assert!(
                    (hv[i] - fd).abs() < 1e-8 + 1e-6 * fd.abs(),
                    "entry {i}: {} vs {fd}",
                    hv[i]
                );
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn off_the_fast_path_it_declines() {
        let x = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
        assert!(softplus(&x).unwrap().is_none());
    }
}
