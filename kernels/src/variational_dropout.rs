//! Variational dropout's per-weight arithmetic (Kingma, Salimans & Welling 2015) in one parallel
//! pass each: the divergence summed over the noise variables and its gradient, and the posterior
//! standard deviation `σ = √α |θ|` with its two gradients.
//!
//! With `l` the learned (unclipped) `log α` and `[lo, hi]` its clip (`[−8, 0]` in the layers):
//!
//! ```text
//! λ   = clip(l, lo, hi),   a = e^λ
//! KL  ≈ Σ −(½ λ + c₁ a + c₂ a² + c₃ a³)                       (eq. (14), without its constant)
//! ∂KL/∂l = −(½ + c₁ a + 2 c₂ a² + 3 c₃ a³) · d
//! σ   = e^{½ λ} |θ|
//! ∂σ/∂θ = e^{½ λ} sgn(θ),   ∂σ/∂l = ½ σ d
//! ```
//!
//! where `d`, the clip's derivative, is 1 inside `(lo, hi)`, 0 outside and ½ on either bound, and
//! `sgn(0) = 1` — as candle differentiates `clamp` (a `maximum` then a `minimum`, each splitting a
//! tie) and `abs`, so the fused gradients equal those of the candle composition
//! (`bayes::divergence::kl_vd_kingma_elementwise`, the layer's `sigma`). As candle ops the two are
//! 18 passes over the weights forward (6 for σ, 12 for the divergence and its sum) and their
//! backward, most of them candle's maps on the calling thread:
//! on LeNet-300-100 (266,200 weights) they made a variational-dropout training step 2.2× slower
//! than PyTorch's on the 2-core Intel host.
//!
//! The sum accumulates in f64 over blocks of a fixed size added in order, so it is the same for
//! every thread count. f32 tensors use the vectorisable `exp` of `crate::vmath`. The gradient ops
//! have no backward of their own: with double backpropagation requested
//! ([`crate::double_backprop::requested`]) both entry points answer `None` and the caller
//! differentiates its candle composition twice instead.

use crate::cpu::{contiguous, map1, map2, map3};
use crate::vmath::{clip_with_derivative, Real};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Entries per parallel block of the sum (fixed, so the summation order does not depend on threads).
const BLOCK: usize = 1 << 14;

/// The clip of `log α`, `[lo, hi]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Clip {
    /// Lower bound (−8 in the layers).
    pub lo: f64,
    /// Upper bound (0 in the layers: α ≤ 1, where the fit holds).
    pub hi: f64,
}

/// The polynomial's coefficients `c₁, c₂, c₃` (1.16145124, −1.50204118, 0.58629921 in the paper)
/// and the clip of `log α`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KlConstants {
    /// `c₁`.
    pub c1: f64,
    /// `c₂`.
    pub c2: f64,
    /// `c₃`.
    pub c3: f64,
    /// The clip of `log α`.
    pub clip: Clip,
}

/// `Σ KL` over the entries of the unclipped `log α` as a scalar tensor (see the module
/// documentation); `None` off the fast path (f32/f64 on the CPU) and when double
/// backpropagation is requested, where the caller uses its candle composition.
pub fn kl_sum(log_alpha: &Tensor, k: KlConstants) -> Result<Option<Tensor>> {
    if !fast(log_alpha) || crate::double_backprop::requested() {
        return Ok(None);
    }
    Ok(Some(log_alpha.contiguous()?.apply_op1(Kl(k))?))
}

/// `σ = e^{½ clip(log α)} |θ|` elementwise from θ and the unclipped `log α` of θ's shape (α per
/// weight); `None` off the fast path (f32/f64 on the CPU, one dtype, the same shape) and when
/// double backpropagation is requested.
pub fn sigma(theta: &Tensor, log_alpha: &Tensor, clip: Clip) -> Result<Option<Tensor>> {
    if theta.dims() != log_alpha.dims()
        || !fast(theta)
        || theta.dtype() != log_alpha.dtype()
        || crate::double_backprop::requested()
    {
        return Ok(None);
    }
    Ok(Some(
        theta.contiguous()?.apply_op2(&log_alpha.contiguous()?, Sigma(clip))?,
    ))
}

fn fast(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// The constants in the tensor's precision.
#[derive(Clone, Copy)]
struct Ks<T> {
    c1: T,
    c2: T,
    c3: T,
    lo: T,
    hi: T,
}

impl<T: Real> Ks<T> {
    fn new(k: KlConstants) -> Self {
        Self::with(k.c1, k.c2, k.c3, k.clip)
    }

    fn clip(c: Clip) -> Self {
        Self::with(0.0, 0.0, 0.0, c)
    }

    fn with(c1: f64, c2: f64, c3: f64, c: Clip) -> Self {
        Self {
            c1: T::of(c1),
            c2: T::of(c2),
            c3: T::of(c3),
            lo: T::of(c.lo),
            hi: T::of(c.hi),
        }
    }

    /// `(λ, d)`: the clipped value and the clip's derivative.
    #[inline(always)]
    fn clipped(&self, l: T) -> (T, T) {
        clip_with_derivative(l, self.lo, self.hi)
    }

    /// The divergence of one noise variable.
    #[inline(always)]
    fn value(&self, l: T) -> T {
        let (la, _) = self.clipped(l);
        let a = la.exp_();
        -(T::of(0.5) * la + ((self.c3 * a + self.c2) * a + self.c1) * a)
    }

    /// `∂KL/∂l` of one noise variable.
    #[inline(always)]
    fn grad(&self, l: T) -> T {
        let (la, d) = self.clipped(l);
        let a = la.exp_();
        let p = ((T::of(3.0) * self.c3 * a + T::of(2.0) * self.c2) * a + self.c1) * a;
        -(T::of(0.5) + p) * d
    }
}

/// `Σ KL`, a scalar.
struct Kl(KlConstants);

impl Kl {
    fn sum<T: Real>(&self, l: &[T]) -> f64 {
        let k = Ks::<T>::new(self.0);
        // the values in the vectorised elementwise loop, then their f64 sum in fixed blocks
        let v = map1(l, |x| k.value(x));
        let parts: Vec<f64> = v
            .par_chunks(BLOCK)
            .map(|b| b.iter().fold(0f64, |acc, x| acc + x.to_f64()))
            .collect();
        parts.iter().sum()
    }
}

impl CustomOp1 for Kl {
    fn name(&self) -> &'static str {
        "secateur-vd-kingma-kl"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "variational dropout divergence";
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(vec![self.sum(contiguous::<f32>(s, l, OP, "log α")?) as f32]),
            CpuStorage::F64(_) => CpuStorage::F64(vec![self.sum(contiguous::<f64>(s, l, OP, "log α")?)]),
            _ => candle_core::bail!("{OP}: only f32 and f64 are supported"),
        };
        Ok((out, Shape::from(())))
    }
    fn bwd(&self, l: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(l.apply_op1(KlGrad(self.0))?.broadcast_mul(g)?))
    }
}

/// `∂KL/∂l` elementwise (no backward of its own).
struct KlGrad(KlConstants);

impl CustomOp1 for KlGrad {
    fn name(&self) -> &'static str {
        "secateur-vd-kingma-kl-grad"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "variational dropout divergence gradient";
        let out = match s {
            CpuStorage::F32(_) => {
                let k = Ks::<f32>::new(self.0);
                CpuStorage::F32(map1(contiguous::<f32>(s, l, OP, "log α")?, |x| k.grad(x)))
            }
            CpuStorage::F64(_) => {
                let k = Ks::<f64>::new(self.0);
                CpuStorage::F64(map1(contiguous::<f64>(s, l, OP, "log α")?, |x| k.grad(x)))
            }
            _ => candle_core::bail!("{OP}: only f32 and f64 are supported"),
        };
        Ok((out, l.shape().clone()))
    }
}

/// `σ = e^{½ λ} |θ|` from `(θ, l)`.
struct Sigma(Clip);

#[inline(always)]
fn sigma_of<T: Real>(k: &Ks<T>, theta: T, l: T) -> T {
    (T::of(0.5) * k.clipped(l).0).exp_() * theta.abs_()
}

impl CustomOp2 for Sigma {
    fn name(&self) -> &'static str {
        "secateur-vd-sigma"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "variational dropout σ";
        if l1.shape() != l2.shape() {
            candle_core::bail!("{OP}: θ {:?} and log α {:?} differ in shape", l1.shape(), l2.shape());
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let k = Ks::<f32>::clip(self.0);
                let (t, l) = (
                    contiguous::<f32>(s1, l1, OP, "θ")?,
                    contiguous::<f32>(s2, l2, OP, "log α")?,
                );
                CpuStorage::F32(map2(t, l, |t, l| sigma_of(&k, t, l)))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let k = Ks::<f64>::clip(self.0);
                let (t, l) = (
                    contiguous::<f64>(s1, l1, OP, "θ")?,
                    contiguous::<f64>(s2, l2, OP, "log α")?,
                );
                CpuStorage::F64(map2(t, l, |t, l| sigma_of(&k, t, l)))
            }
            _ => candle_core::bail!("{OP}: only f32 and f64 (not mixed) are supported"),
        };
        Ok((out, l1.shape().clone()))
    }
    fn bwd(&self, theta: &Tensor, l: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dtheta = theta.apply_op3(l, &g, SigmaGrad(self.0, Wrt::Theta))?;
        let dl = theta.apply_op3(l, &g, SigmaGrad(self.0, Wrt::LogAlpha))?;
        Ok((Some(dtheta), Some(dl)))
    }
}

#[derive(Clone, Copy)]
enum Wrt {
    /// `g e^{½ λ} sgn(θ)`.
    Theta,
    /// `g ½ σ d`.
    LogAlpha,
}

/// A gradient of σ from `(θ, l, g)`, elementwise (no backward of its own).
struct SigmaGrad(Clip, Wrt);

impl SigmaGrad {
    fn run<T: Real>(&self, theta: &[T], l: &[T], g: &[T]) -> Vec<T> {
        let k = Ks::<T>::clip(self.0);
        let half = T::of(0.5);
        match self.1 {
            Wrt::Theta => map3(theta, l, g, |t, l, g| {
                let s = (half * k.clipped(l).0).exp_();
                let sgn = if t >= T::zero() { T::one() } else { -T::one() };
                g * (s * sgn)
            }),
            Wrt::LogAlpha => map3(theta, l, g, |t, l, g| {
                let (la, d) = k.clipped(l);
                g * (half * ((half * la).exp_() * t.abs_()) * d)
            }),
        }
    }
}

impl CustomOp3 for SigmaGrad {
    fn name(&self) -> &'static str {
        "secateur-vd-sigma-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "variational dropout σ gradient";
        if l1.shape() != l2.shape() || l1.shape() != l3.shape() {
            candle_core::bail!(
                "{OP}: θ {:?}, log α {:?} and the incoming gradient {:?} differ in shape",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(self.run(
                contiguous::<f32>(s1, l1, OP, "θ")?,
                contiguous::<f32>(s2, l2, OP, "log α")?,
                contiguous::<f32>(s3, l3, OP, "gradient")?,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(self.run(
                contiguous::<f64>(s1, l1, OP, "θ")?,
                contiguous::<f64>(s2, l2, OP, "log α")?,
                contiguous::<f64>(s3, l3, OP, "gradient")?,
            )),
            _ => candle_core::bail!("{OP}: only f32 and f64 (not mixed) are supported"),
        };
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    const CLIP: Clip = Clip { lo: -8.0, hi: 0.0 };
    const K: KlConstants = KlConstants {
        c1: 1.161_451_24,
        c2: -1.502_041_18,
        c3: 0.586_299_21,
        clip: CLIP,
    };

    fn kl_ref(l: f64) -> f64 {
        let la = l.clamp(CLIP.lo, CLIP.hi);
        let a = la.exp();
        -(0.5 * la + K.c1 * a + K.c2 * a * a + K.c3 * a * a * a)
    }

    fn sigma_ref(t: f64, l: f64) -> f64 {
        (0.5 * l.clamp(CLIP.lo, CLIP.hi)).exp() * t.abs()
    }

    fn t64(v: &[f64]) -> Tensor {
        Tensor::from_vec(v.to_vec(), v.len(), &Device::Cpu).unwrap()
    }

    fn var(v: &[f64]) -> Var {
        Var::from_tensor(&t64(v)).unwrap()
    }

    /// Values against the closed form, gradients against central finite differences of it, for
    /// `log α` across and beyond the clip (off its bounds, where the derivative jumps).
    #[test]
    fn values_and_gradients_match_the_closed_form_and_finite_differences() {
        let ls: Vec<f64> = (0..45).map(|i| -10.3 + 0.25 * i as f64).collect();
        // θ ≠ 0 (where |θ| has no derivative for a finite difference to check)
        let th: Vec<f64> = (0..45).map(|i| ((i as f64) * 0.7 + 0.3).sin() * 0.3).collect();
        let lv = var(&ls);
        let kl = kl_sum(lv.as_tensor(), K).unwrap().unwrap();
        let want: f64 = ls.iter().map(|&l| kl_ref(l)).sum();
        let got = kl.to_scalar::<f64>().unwrap();
        assert!((got - want).abs() < 1e-12 * want.abs().max(1.0), "{got} vs {want}");
        let g = (kl * 3.0).unwrap().backward().unwrap();
        let gl: Vec<f64> = g.get(&lv).unwrap().to_vec1().unwrap();
        let h = 1e-6;
        for (i, &l) in ls.iter().enumerate() {
            let fd = 3.0 * (kl_ref(l + h) - kl_ref(l - h)) / (2.0 * h);
            assert!((gl[i] - fd).abs() < 1e-7, "dKL/dlog α at {l}: {} vs {fd}", gl[i]);
        }

        let (tv, lv) = (var(&th), var(&ls));
        let s = sigma(tv.as_tensor(), lv.as_tensor(), CLIP).unwrap().unwrap();
        let sv: Vec<f64> = s.to_vec1().unwrap();
        for i in 0..ls.len() {
            assert!((sv[i] - sigma_ref(th[i], ls[i])).abs() < 1e-15, "σ[{i}]");
        }
        // a weighted sum, so that each entry's incoming gradient differs
        let w: Vec<f64> = (0..ls.len()).map(|i| 1.0 + 0.1 * i as f64).collect();
        let g = (s * t64(&w)).unwrap().sum_all().unwrap().backward().unwrap();
        let (gt, gl): (Vec<f64>, Vec<f64>) = (
            g.get(&tv).unwrap().to_vec1().unwrap(),
            g.get(&lv).unwrap().to_vec1().unwrap(),
        );
        for i in 0..ls.len() {
            let (t, l) = (th[i], ls[i]);
            let fd_l = w[i] * (sigma_ref(t, l + h) - sigma_ref(t, l - h)) / (2.0 * h);
            let ht = 1e-6 * t.abs().max(1e-3);
            let fd_t = w[i] * (sigma_ref(t + ht, l) - sigma_ref(t - ht, l)) / (2.0 * ht);
            assert!(
                (gl[i] - fd_l).abs() < 1e-7,
                "dσ/dlog α at θ={t} l={l}: {} vs {fd_l}",
                gl[i]
            );
            assert!((gt[i] - fd_t).abs() < 1e-7, "dσ/dθ at θ={t} l={l}: {} vs {fd_t}", gt[i]);
        }
    }

    /// Against candle's autograd of the layer's composition (an independent computation of the
    /// gradients), including `log α` exactly on the clip's bounds, where candle's `clamp` passes
    /// half the gradient, and θ = 0, where candle's `abs` has derivative +1.
    #[test]
    fn gradients_equal_candle_autograd_of_the_composition_also_on_the_bounds() {
        let ls = [-8.0, 0.0, -3.0, -12.0, 2.5, -0.5, -8.0, 0.0];
        let th = [0.4, -0.2, 0.0, 1.5, -0.7, 0.0, -0.1, 0.0];
        let w: Vec<f64> = (0..ls.len()).map(|i| 0.5 + i as f64).collect();
        let (tf, lf) = (var(&th), var(&ls));
        let fused = (kl_sum(lf.as_tensor(), K).unwrap().unwrap()
            + (sigma(tf.as_tensor(), lf.as_tensor(), CLIP).unwrap().unwrap() * t64(&w))
                .unwrap()
                .sum_all()
                .unwrap())
        .unwrap();
        let (tc, lc) = (var(&th), var(&ls));
        let la = lc.as_tensor().clamp(CLIP.lo, CLIP.hi).unwrap();
        let a = la.exp().unwrap();
        let poly = (((&a * K.c3).unwrap() + K.c2).unwrap() * &a).unwrap();
        let poly = ((poly + K.c1).unwrap() * &a).unwrap();
        let kl = ((&la * 0.5).unwrap() + poly).unwrap().neg().unwrap().sum_all().unwrap();
        let s = (&la * 0.5)
            .unwrap()
            .exp()
            .unwrap()
            .mul(&tc.as_tensor().abs().unwrap())
            .unwrap();
        let comp = (kl + (s * t64(&w)).unwrap().sum_all().unwrap()).unwrap();
        let (a, b) = (fused.to_scalar::<f64>().unwrap(), comp.to_scalar::<f64>().unwrap());
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        let (gf, gc) = (fused.backward().unwrap(), comp.backward().unwrap());
        for (f, c, what) in [(&tf, &tc, "θ"), (&lf, &lc, "log α")] {
            let x: Vec<f64> = gf.get(f).unwrap().to_vec1().unwrap();
            let y: Vec<f64> = gc.get(c).unwrap().to_vec1().unwrap();
            for i in 0..ls.len() {
                assert!(
                    (x[i] - y[i]).abs() < 1e-12,
                    "d/d{what} [{i}]: fused {} vs candle {}",
                    x[i],
                    y[i]
                );
            }
        }
    }

    /// f32 over many weights (several parallel chunks and sum blocks) against the f64 closed
    /// form: the sum within f32 rounding, σ and both gradients within a few units in the last place.
    #[test]
    fn f32_matches_f64() {
        let n = 40_000;
        let ls: Vec<f32> = (0..n)
            .map(|i| -9.0 + 10.0 * (((i as f32) * 0.011).sin() * 0.5 + 0.5))
            .collect();
        let th: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin() * 0.2).collect();
        let dev = &Device::Cpu;
        let (lv, tv) = (
            Var::from_tensor(&Tensor::from_vec(ls.clone(), n, dev).unwrap()).unwrap(),
            Var::from_tensor(&Tensor::from_vec(th.clone(), n, dev).unwrap()).unwrap(),
        );
        let kl = kl_sum(lv.as_tensor(), K).unwrap().unwrap();
        let want: f64 = ls.iter().map(|&l| kl_ref(l as f64)).sum();
        let got = kl.to_scalar::<f32>().unwrap() as f64;
        // terms of both signs: bound the error by the sum of the terms' magnitudes (each term
        // within a few f32 ulp); a wrong coefficient moves the sum by far more
        let mag: f64 = ls.iter().map(|&l| kl_ref(l as f64).abs()).sum();
        assert!((got - want).abs() < 1e-6 * mag, "{got} vs {want} (Σ|KL| = {mag})");
        let gk: Vec<f32> = kl.backward().unwrap().get(&lv).unwrap().to_vec1().unwrap();
        let s = sigma(tv.as_tensor(), lv.as_tensor(), CLIP).unwrap().unwrap();
        let sv: Vec<f32> = s.to_vec1().unwrap();
        let gs = s.sum_all().unwrap().backward().unwrap();
        let (gt, gl): (Vec<f32>, Vec<f32>) = (
            gs.get(&tv).unwrap().to_vec1().unwrap(),
            gs.get(&lv).unwrap().to_vec1().unwrap(),
        );
        let mut worst = [0f64; 4];
        for i in 0..n {
            let (t, l) = (th[i] as f64, ls[i] as f64);
            let a = l.clamp(CLIP.lo, CLIP.hi).exp();
            // the clip's derivative (no entry lies on a bound)
            let d = if l > CLIP.lo && l < CLIP.hi { 1.0 } else { 0.0 };
            let dk = -(0.5 + K.c1 * a + 2.0 * K.c2 * a * a + 3.0 * K.c3 * a * a * a) * d;
            let e = (0.5 * l.clamp(CLIP.lo, CLIP.hi)).exp();
            let rel = |x: f32, y: f64| {
                if y == 0.0 {
                    (x as f64).abs()
                } else {
                    (x as f64 - y).abs() / y.abs()
                }
            };
            worst[0] = worst[0].max(rel(gk[i], dk));
            worst[1] = worst[1].max(rel(sv[i], sigma_ref(t, l)));
            worst[2] = worst[2].max(rel(gt[i], e * if t >= 0.0 { 1.0 } else { -1.0 }));
            if t != 0.0 {
                worst[3] = worst[3].max(rel(gl[i], 0.5 * sigma_ref(t, l) * d));
            }
        }
        // a few operations at 6e-8 each; 1e-5 leaves two orders of margin, while a missing
        // factor (½, d, a coefficient) errs by more than 0.1
        assert!(worst.iter().all(|&w| w < 1e-5), "largest relative f32 errors {worst:?}");
    }

    #[test]
    fn off_the_fast_path_the_caller_is_told() {
        let t = t64(&[0.1, 0.2]);
        assert!(sigma(&t, &t64(&[-1.0]), CLIP).unwrap().is_none(), "shapes differ");
        let t32 = t.to_dtype(DType::F32).unwrap();
        assert!(
            sigma(&t32, &t64(&[-1.0, -2.0]), CLIP).unwrap().is_none(),
            "dtypes differ"
        );
        let b = t.to_dtype(DType::BF16).unwrap();
        assert!(kl_sum(&b, K).unwrap().is_none());
    }
}
