//! `softplus(x) = log(1 + eˣ)` as one parallel pass, closed under differentiation to second
//! order.
//!
//! The value is `max(x, 0) + log(1 + e^{−|x|})`, and `eˣ` for `x < −15` so that it never rounds
//! to zero in f32 (as `secateur_bayes::math::softplus` defines it). Derivatives:
//! `s′(x) = σ(x) = 1 / (1 + e^{−x})` (`eˣ` below −15) and `s″(x) = σ(x)(1 − σ(x)) = e^{−|x|}/(1 + e^{−|x|})²` (`eˣ` below
//! −15). The backward is `SoftplusGrad(x, g) = g ⊙ s′(x)`, whose own backward is `h ⊙ s′(x)`
//! for `g` (the same op) and `h ⊙ g ⊙ s″(x)` for `x` (`SoftplusCurv`); a third derivative is
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

use crate::vmath::Real;

// Each function below computes `e = e^{−|x|}` once and selects (no branches, so the f32 loops
// vectorise). Below −15, `−|x| = x`, so `e` is the `eˣ` the definitions ask for there.

#[inline(always)]
fn value<T: Real>(x: T) -> T {
    let e = (-x.abs_()).exp_();
    let body = x.max0() + e.ln_1p_unit();
    if x.to_f64() < EXP_BELOW {
        e
    } else {
        body
    }
}

#[inline(always)]
fn first<T: Real>(x: T) -> T {
    let one = T::one();
    let e = (-x.abs_()).exp_();
    let num = if x >= T::zero() { one } else { e };
    let s = num / (one + e);
    if x.to_f64() < EXP_BELOW {
        e
    } else {
        s
    }
}

#[inline(always)]
fn second<T: Real>(x: T) -> T {
    // σ(x)(1 − σ(x)) = e/(1 + e)², without the cancellation of 1 − σ(x) for large x.
    let e = (-x.abs_()).exp_();
    let d = T::one() + e;
    let c = e / (d * d);
    if x.to_f64() < EXP_BELOW {
        e
    } else {
        c
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

/// `f(x)` elementwise. The match is outside the loop so that each loop inlines its function
/// (and the f32 loops vectorise).
fn run1<T: Real>(x: &[T], f: Fun) -> Vec<T> {
    match f {
        Fun::Value => map1(x, value::<T>),
        Fun::First => map1(x, first::<T>),
        Fun::Second => map1(x, second::<T>),
    }
}

/// `g ⊙ f(x)` elementwise (as [`run1`]).
fn run2<T: Real>(x: &[T], g: &[T], f: Fun) -> Vec<T> {
    match f {
        Fun::Value => scale(x, g, value::<T>),
        Fun::First => scale(x, g, first::<T>),
        Fun::Second => scale(x, g, second::<T>),
    }
}

fn unary(s: &CpuStorage, l: &Layout, f: Fun) -> Result<(CpuStorage, Shape)> {
    let out = match s {
        CpuStorage::F32(_) => CpuStorage::F32(run1(contiguous::<f32>(s, l, "softplus", "input")?, f)),
        CpuStorage::F64(_) => CpuStorage::F64(run1(contiguous::<f64>(s, l, "softplus", "input")?, f)),
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
        (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(run2(
            contiguous::<f32>(s1, l1, "softplus", "input")?,
            contiguous::<f32>(s2, l2, "softplus", "gradient")?,
            f,
        )),
        (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(run2(
            contiguous::<f64>(s1, l1, "softplus", "input")?,
            contiguous::<f64>(s2, l2, "softplus", "gradient")?,
            f,
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
        if !crate::double_backprop::run_test_in_child(concat!(
            module_path!(),
            "::second_derivative_matches_finite_differences"
        )) {
            return;
        }
        std::thread::spawn(|| {
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

    /// The f32 path (vectorised exp and log1p) against the f64 closed forms over a dense sweep
    /// across the switch at −15 and both signs: value, first and second derivative.
    #[test]
    fn f32_is_within_a_few_ulps_of_f64() {
        if !crate::double_backprop::run_test_in_child(concat!(module_path!(), "::f32_is_within_a_few_ulps_of_f64")) {
            return;
        }
        std::thread::spawn(|| {
            let xs: Vec<f32> = (0..=20_000).map(|i| -30.0 + 60.0 * i as f32 / 20_000.0).collect();
            let x = Var::from_vec(xs.clone(), xs.len(), &Device::Cpu).unwrap();
            let y = softplus(x.as_tensor()).unwrap().unwrap();
            let g = y.sum_all().unwrap().backward().unwrap();
            let d1 = g.get(&x).unwrap().clone();
            let d2 = d1.sum_all().unwrap().backward().unwrap().get(&x).unwrap().clone();
            let (y, d1, d2): (Vec<f32>, Vec<f32>, Vec<f32>) =
                (y.to_vec1().unwrap(), d1.to_vec1().unwrap(), d2.to_vec1().unwrap());
            for (i, &x32) in xs.iter().enumerate() {
                let x = x32 as f64;
                let s = 1.0 / (1.0 + (-x).exp());
                let e = (-x.abs()).exp();
                let (v, f, c) = if x < -15.0 {
                    (x.exp(), x.exp(), x.exp())
                } else {
                    // σ(1 − σ) as e^{−|x|}/(1 + e^{−|x|})²: 1 − σ cancels even in f64 for large x.
                    (x.exp().ln_1p(), s, e / ((1.0 + e) * (1.0 + e)))
                };
                for (name, got, want) in [("value", y[i], v), ("first", d1[i], f), ("second", d2[i], c)] {
                    let rel = ((got as f64 - want) / want).abs();
                    assert!(
                        rel <= 4.0 * f32::EPSILON as f64,
                        "softplus {name} at {x}: {got} vs {want}"
                    );
                }
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
