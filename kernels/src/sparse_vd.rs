//! Sparse variational dropout's per-weight arithmetic (Molchanov, Ashukha & Vetrov 2017) in one
//! parallel pass each: the divergence summed over the weights, its gradients, and `σ = e^{½ log σ²}`.
//!
//! With `θ` the posterior means, `log σ²` the log variances and `ε = 1e−16`:
//!
//! ```text
//! log α = clip(log σ² − log(θ² + ε), −c, c)
//! KL    ≈ Σ k₁ − k₁ S(k₂ + k₃ log α) + ½ softplus(−log α)        (eq. (14); S the logistic sigmoid)
//! ∂KL/∂log α = −k₁ k₃ S(z)(1 − S(z)) − ½ S(−log α),   z = k₂ + k₃ log α
//! ∂log α/∂log σ² = d,   ∂log α/∂θ = −2θ d / (θ² + ε)
//! ```
//!
//! where `d`, the clip's derivative, is 1 inside `(−c, c)`, 0 outside and ½ on either bound —
//! as candle differentiates `clamp` (a `maximum` then a `minimum`, each splitting a tie), so the
//! fused gradients equal the composition's. As candle ops the divergence is fourteen passes over
//! the weights forward and about thirty backward, each on the calling thread: on LeNet-300-100
//! (266,200 weights) they made a sparse-VD training step 2.6× slower than PyTorch's.
//!
//! The sum accumulates in f64 over blocks of a fixed size added in order, so it is the same for
//! every thread count. f32 tensors use the vectorisable `exp` and `log` of `crate::vmath`. The
//! gradient ops have no backward of their own: with double backpropagation requested
//! ([`crate::double_backprop::requested`]) [`kl_sum`] answers `None` and the caller differentiates
//! its candle composition twice instead.

use crate::cpu::{contiguous, map2};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Entries per parallel block of the sum (fixed, so the summation order does not depend on threads).
const BLOCK: usize = 1 << 14;

/// The constants of the approximation: `k₁, k₂, k₃` of eq. (14), the clip `c` of `log α` and the
/// `ε` added to `θ²`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KlConstants {
    /// `k₁` (0.63576 in the paper).
    pub k1: f64,
    /// `k₂` (1.87320).
    pub k2: f64,
    /// `k₃` (1.48695).
    pub k3: f64,
    /// `log α` is clipped to `[−clip, clip]`.
    pub clip: f64,
    /// Added to `θ²` before its logarithm.
    pub eps: f64,
}

/// `Σ KL` of sparse VD as a scalar tensor (see the module documentation); `None` off the fast
/// path (f32/f64 on the CPU, one dtype) and when double backpropagation is requested, where the
/// caller uses its candle composition. Fails when the two tensors differ in shape.
pub fn kl_sum(theta: &Tensor, log_sigma2: &Tensor, k: KlConstants) -> Result<Option<Tensor>> {
    if theta.dims() != log_sigma2.dims() {
        candle_core::bail!(
            "sparse VD divergence: θ {:?} and log σ² {:?} differ in shape",
            theta.dims(),
            log_sigma2.dims()
        );
    }
    if !fast(theta, log_sigma2) || crate::double_backprop::requested() {
        return Ok(None);
    }
    Ok(Some(theta.contiguous()?.apply_op2(&log_sigma2.contiguous()?, Kl(k))?))
}

/// `σ = e^{½ log σ²}` elementwise, its backward `½ σ ⊙ g`; `None` off the fast path.
pub fn sigma(log_sigma2: &Tensor) -> Result<Option<Tensor>> {
    if !(log_sigma2.device().is_cpu() && matches!(log_sigma2.dtype(), DType::F32 | DType::F64)) {
        return Ok(None);
    }
    Ok(Some(log_sigma2.contiguous()?.apply_op1(Sigma)?))
}

fn fast(a: &Tensor, b: &Tensor) -> bool {
    a.device().is_cpu() && a.dtype() == b.dtype() && matches!(a.dtype(), DType::F32 | DType::F64)
}

use crate::vmath::{clip_with_derivative, Real};

/// The constants in the tensor's precision.
#[derive(Clone, Copy)]
struct Ks<T> {
    k1: T,
    k2: T,
    k3: T,
    clip: T,
    eps: T,
}

impl<T: Real> Ks<T> {
    fn new(k: KlConstants) -> Self {
        Self {
            k1: T::of(k.k1),
            k2: T::of(k.k2),
            k3: T::of(k.k3),
            clip: T::of(k.clip),
            eps: T::of(k.eps),
        }
    }

    /// `(log α, d)`: the clipped value and the clip's derivative.
    #[inline(always)]
    fn log_alpha(&self, theta: T, ls2: T) -> (T, T) {
        let raw = ls2 - (theta * theta + self.eps).ln_();
        clip_with_derivative(raw, -self.clip, self.clip)
    }

    /// `(S(x), S(x)(1 − S(x)))` without cancellation: with `e = e^{−|x|}`,
    /// `S = (x ≥ 0 ? 1 : e)/(1 + e)` and `S(1 − S) = e/(1 + e)²`.
    #[inline(always)]
    fn sigmoid(x: T) -> (T, T) {
        let ax = if x < T::zero() { -x } else { x };
        let e = (-ax).exp_();
        let d = T::one() + e;
        let num = if x >= T::zero() { T::one() } else { e };
        (num / d, e / (d * d))
    }

    /// The divergence of one weight.
    #[inline(always)]
    fn value(&self, theta: T, ls2: T) -> T {
        let (la, _) = self.log_alpha(theta, ls2);
        let (s, _) = Self::sigmoid(self.k2 + self.k3 * la);
        // softplus(−log α) = max(−log α, 0) + log(1 + e^{−|log α|}), |log α| ≤ clip
        let ax = if la < T::zero() { -la } else { la };
        let neg = if la < T::zero() { -la } else { T::zero() };
        let sp = neg + (-ax).exp_().ln_1p_unit();
        self.k1 - self.k1 * s + T::of(0.5) * sp
    }

    /// `∂KL/∂log α · d` of one weight.
    #[inline(always)]
    fn dla(&self, theta: T, ls2: T) -> T {
        let (la, d) = self.log_alpha(theta, ls2);
        let (_, sz) = Self::sigmoid(self.k2 + self.k3 * la);
        let (sneg, _) = Self::sigmoid(-la);
        let g = -(self.k1 * self.k3 * sz) - T::of(0.5) * sneg;
        g * d
    }
}

struct Kl(KlConstants);

impl Kl {
    fn sum<T: Real>(&self, theta: &[T], ls2: &[T]) -> f64 {
        let k = Ks::<T>::new(self.0);
        // the values in the vectorised elementwise loop, then their f64 sum in fixed blocks
        let v = map2(theta, ls2, |t, l| k.value(t, l));
        let parts: Vec<f64> = v
            .par_chunks(BLOCK)
            .map(|b| b.iter().fold(0f64, |acc, x| acc + x.to_f64()))
            .collect();
        parts.iter().sum()
    }
}

fn pair<'a, T: WithDType>(
    s1: &'a CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
    op: &str,
) -> Result<(&'a [T], &'a [T])> {
    if l1.shape() != l2.shape() {
        candle_core::bail!("{op}: θ {:?} and log σ² {:?} differ in shape", l1.shape(), l2.shape());
    }
    Ok((
        contiguous::<T>(s1, l1, op, "θ")?,
        contiguous::<T>(s2, l2, op, "log σ²")?,
    ))
}

impl CustomOp2 for Kl {
    fn name(&self) -> &'static str {
        "secateur-sparse-vd-kl"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "sparse VD divergence";
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (t, l) = pair::<f32>(s1, l1, s2, l2, OP)?;
                CpuStorage::F32(vec![self.sum(t, l) as f32])
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (t, l) = pair::<f64>(s1, l1, s2, l2, OP)?;
                CpuStorage::F64(vec![self.sum(t, l)])
            }
            _ => candle_core::bail!("{OP}: only f32 and f64 (not mixed) are supported"),
        };
        Ok((out, Shape::from(())))
    }
    fn bwd(&self, theta: &Tensor, ls2: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // D = ∂KL/∂log α · d once (the transcendental part), then ∂KL/∂log σ² = D and
        // ∂KL/∂θ = −2θ D / (θ² + ε)
        let d = theta.apply_op2(ls2, Grad(self.0, Wrt::LogSigma2))?;
        let dtheta = theta.apply_op2(&d, Grad(self.0, Wrt::Theta))?.broadcast_mul(g)?;
        Ok((Some(dtheta), Some(d.broadcast_mul(g)?)))
    }
}

#[derive(Clone, Copy)]
enum Wrt {
    /// From `(θ, D)`: `−2θ D / (θ² + ε)`.
    Theta,
    /// From `(θ, log σ²)`: `D = ∂KL/∂log α · d`.
    LogSigma2,
}

/// `∂KL/∂log σ²` from `(θ, log σ²)`, or `∂KL/∂θ` from `(θ, ∂KL/∂log σ²)`, elementwise (no
/// backward of its own).
struct Grad(KlConstants, Wrt);

impl Grad {
    fn run<T: Real>(&self, theta: &[T], other: &[T]) -> Vec<T> {
        let k = Ks::<T>::new(self.0);
        let two = T::of(2.0);
        match self.1 {
            Wrt::Theta => map2(theta, other, |t, d| -(two * t * d) / (t * t + k.eps)),
            Wrt::LogSigma2 => map2(theta, other, |t, l| k.dla(t, l)),
        }
    }
}

impl CustomOp2 for Grad {
    fn name(&self) -> &'static str {
        "secateur-sparse-vd-kl-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "sparse VD divergence gradient";
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (t, l) = pair::<f32>(s1, l1, s2, l2, OP)?;
                CpuStorage::F32(self.run(t, l))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (t, l) = pair::<f64>(s1, l1, s2, l2, OP)?;
                CpuStorage::F64(self.run(t, l))
            }
            _ => candle_core::bail!("{OP}: only f32 and f64 (not mixed) are supported"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// `σ = e^{½ x}`.
struct Sigma;

impl CustomOp1 for Sigma {
    fn name(&self) -> &'static str {
        "secateur-sparse-vd-sigma"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(_) => {
                let x = contiguous::<f32>(s, l, "sparse VD σ", "log σ²")?;
                CpuStorage::F32(crate::cpu::map1(x, |v| crate::vmath::exp(0.5 * v)))
            }
            CpuStorage::F64(_) => {
                let x = contiguous::<f64>(s, l, "sparse VD σ", "log σ²")?;
                CpuStorage::F64(crate::cpu::map1(x, |v| (0.5 * v).exp()))
            }
            _ => candle_core::bail!("sparse VD σ: only f32 and f64 are supported"),
        };
        Ok((out, l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        // dσ/dx = ½ σ, as candle ops (differentiable again)
        Ok(Some((res * g)?.affine(0.5, 0.0)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    const K: KlConstants = KlConstants {
        k1: 0.63576,
        k2: 1.87320,
        k3: 1.48695,
        clip: 8.0,
        eps: 1e-16,
    };

    /// The closed form in f64, term by term.
    fn kl_ref(theta: f64, ls2: f64) -> f64 {
        let la = (ls2 - (theta * theta + K.eps).ln()).clamp(-K.clip, K.clip);
        let s = 1.0 / (1.0 + (-(K.k2 + K.k3 * la)).exp());
        K.k1 - K.k1 * s + 0.5 * (-la).exp().ln_1p()
    }

    fn t64(v: &[f64]) -> Tensor {
        Tensor::from_vec(v.to_vec(), v.len(), &Device::Cpu).unwrap()
    }

    /// The value against the closed form, and both gradients against central finite differences
    /// of the closed form, across the clip (log α from −20 to 20) and at θ = 0.
    #[test]
    fn value_and_gradients_match_the_closed_form_and_finite_differences() {
        let mut th = Vec::new();
        let mut ls = Vec::new();
        for i in 0..41 {
            for &t in &[0.7f64, -0.03, 2.1e-3] {
                th.push(t);
                // log α = ls − log θ² from −19.5 to 20.5 (off the clip's bounds, where the
                // derivative jumps and a finite difference has no meaning)
                ls.push((t * t).ln() - 19.5 + i as f64);
            }
        }
        th.push(0.0);
        ls.push(-10.0);
        let (tv, lv) = (
            Var::from_tensor(&t64(&th)).unwrap(),
            Var::from_tensor(&t64(&ls)).unwrap(),
        );
        let kl = kl_sum(tv.as_tensor(), lv.as_tensor(), K).unwrap().unwrap();
        let want: f64 = th.iter().zip(&ls).map(|(&t, &l)| kl_ref(t, l)).sum();
        let got = kl.to_scalar::<f64>().unwrap();
        assert!((got - want).abs() < 1e-10 * want.abs().max(1.0), "{got} vs {want}");
        let g = (kl * 2.0).unwrap().backward().unwrap();
        let gt: Vec<f64> = g.get(&tv).unwrap().to_vec1().unwrap();
        let gl: Vec<f64> = g.get(&lv).unwrap().to_vec1().unwrap();
        for i in 0..th.len() {
            let (t, l) = (th[i], ls[i]);
            let h = 1e-6;
            let fd_l = 2.0 * (kl_ref(t, l + h) - kl_ref(t, l - h)) / (2.0 * h);
            let ht = 1e-6 * t.abs().max(1e-3);
            let fd_t = 2.0 * (kl_ref(t + ht, l) - kl_ref(t - ht, l)) / (2.0 * ht);
            assert!(
                (gl[i] - fd_l).abs() < 1e-6,
                "d/dlogσ² at θ={t} log σ²={l}: {} vs {fd_l}",
                gl[i]
            );
            assert!(
                (gt[i] - fd_t).abs() < 1e-5 * fd_t.abs().max(1.0),
                "d/dθ at θ={t} log σ²={l}: {} vs {fd_t}",
                gt[i]
            );
        }
    }

    /// f32 against the f64 closed form over many weights, within f32 rounding of the sum; the
    /// f32 gradients within a few units in the last place of the f64 ones.
    #[test]
    fn f32_matches_f64() {
        let n = 40_000;
        let th: Vec<f64> = (0..n).map(|i| ((i as f64) * 0.37).sin() * 0.2).collect();
        let ls: Vec<f64> = (0..n).map(|i| -12.0 + 10.0 * ((i as f64) * 0.11).cos()).collect();
        let dev = &Device::Cpu;
        let to32 = |v: &[f64]| Tensor::from_vec(v.iter().map(|&x| x as f32).collect::<Vec<_>>(), n, dev).unwrap();
        let (t32, l32) = (
            Var::from_tensor(&to32(&th)).unwrap(),
            Var::from_tensor(&to32(&ls)).unwrap(),
        );
        let th_r: Vec<f64> = t32
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|&x| x as f64)
            .collect();
        let ls_r: Vec<f64> = l32
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|&x| x as f64)
            .collect();
        let kl = kl_sum(t32.as_tensor(), l32.as_tensor(), K).unwrap().unwrap();
        let want: f64 = th_r.iter().zip(&ls_r).map(|(&t, &l)| kl_ref(t, l)).sum();
        let got = kl.to_scalar::<f32>().unwrap() as f64;
        // each f32 term is within a few ulp (≈ 4e-7 relative: a log, two exps and a log1p of
        // `vmath`, 2 ulp each); summed in f64, the total's relative error is bounded by the
        // terms' (all terms are positive), then rounded once to f32: 1e-5 is 25× that bound,
        // while a wrong constant or clip moves the sum by more than 1e-3
        assert!(((got - want) / want).abs() < 1e-5, "{got} vs {want}");
        let g = kl.backward().unwrap();
        let g32: Vec<f32> = g.get(&l32).unwrap().to_vec1().unwrap();
        let (t64v, l64v) = (
            Var::from_tensor(&t64(&th_r)).unwrap(),
            Var::from_tensor(&t64(&ls_r)).unwrap(),
        );
        let g64 = kl_sum(t64v.as_tensor(), l64v.as_tensor(), K)
            .unwrap()
            .unwrap()
            .backward()
            .unwrap();
        let g64: Vec<f64> = g64.get(&l64v).unwrap().to_vec1().unwrap();
        let worst = g32
            .iter()
            .zip(&g64)
            .map(|(&a, &b)| (a as f64 - b).abs())
            .fold(0.0, f64::max);
        // |∂KL/∂log σ²| ≤ k₁k₃/4 + ½ < 0.74, so f32 rounding of a few operations (each 6e-8
        // relative) stays near 1e-7 absolute; 1e-5 leaves two orders of margin while a missing
        // factor d or k₃ errs by more than 0.1
        assert!(worst < 1e-5, "largest f32 gradient error {worst}");
    }

    /// Against candle's autograd of the same formula as candle ops (an independent computation
    /// of both gradients), including log α exactly on the clip's bounds (θ = 1, where
    /// `θ² + ε` rounds to 1), where candle's `clamp` passes half the gradient.
    #[test]
    fn gradients_equal_candle_autograd_of_the_composition_also_on_the_bounds() {
        let th = [1.0, 1.0, 1.0, 0.3, -0.05, 0.0, 1.5];
        let ls = [8.0, -8.0, 3.0, -4.0, -9.0, -30.0, 12.0];
        let (tv, lv) = (
            Var::from_tensor(&t64(&th)).unwrap(),
            Var::from_tensor(&t64(&ls)).unwrap(),
        );
        let fused = kl_sum(tv.as_tensor(), lv.as_tensor(), K).unwrap().unwrap();
        let gf = fused.backward().unwrap();
        let (ta, la_) = (
            Var::from_tensor(&t64(&th)).unwrap(),
            Var::from_tensor(&t64(&ls)).unwrap(),
        );
        let la = (la_.as_tensor() - (ta.as_tensor().sqr().unwrap() + K.eps).unwrap().log().unwrap())
            .unwrap()
            .clamp(-K.clip, K.clip)
            .unwrap();
        let z = la.affine(K.k3, K.k2).unwrap();
        let s = (z.neg().unwrap().exp().unwrap() + 1.0).unwrap().recip().unwrap();
        let sp = (la.neg().unwrap().exp().unwrap() + 1.0).unwrap().log().unwrap();
        let comp = (s.affine(-K.k1, K.k1).unwrap() + (sp * 0.5).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let a = fused.to_scalar::<f64>().unwrap();
        let b = comp.to_scalar::<f64>().unwrap();
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        let gc = comp.backward().unwrap();
        for (f, c, what) in [(&tv, &ta, "θ"), (&lv, &la_, "log σ²")] {
            let x: Vec<f64> = gf.get(f).unwrap().to_vec1().unwrap();
            let y: Vec<f64> = gc.get(c).unwrap().to_vec1().unwrap();
            for i in 0..th.len() {
                assert!(
                    (x[i] - y[i]).abs() < 1e-12,
                    "d/d{what} [{i}]: fused {} vs candle {}",
                    x[i],
                    y[i]
                );
            }
        }
    }

    #[test]
    fn sigma_and_its_gradient() {
        let x = Var::from_tensor(&t64(&[-10.0, 0.0, 3.0])).unwrap();
        let s = sigma(x.as_tensor()).unwrap().unwrap();
        let v: Vec<f64> = s.to_vec1().unwrap();
        for (got, x) in v.iter().zip([-10.0f64, 0.0, 3.0]) {
            assert!((got - (0.5 * x).exp()).abs() < 1e-15);
        }
        let g = s.sum_all().unwrap().backward().unwrap();
        let d: Vec<f64> = g.get(&x).unwrap().to_vec1().unwrap();
        for (got, x) in d.iter().zip([-10.0f64, 0.0, 3.0]) {
            assert!((got - 0.5 * (0.5 * x).exp()).abs() < 1e-15);
        }
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        assert!(kl_sum(&t64(&[0.1, 0.2]), &t64(&[-1.0]), K).is_err());
    }
}
