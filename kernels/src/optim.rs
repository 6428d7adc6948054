//! The SGD update in place, in one or two passes over the parameter (PyTorch's `torch.optim.SGD`
//! rule, Sutskever et al. 2013 momentum):
//!
//! ```text
//! d   = g + λ θ                      (weight decay λ)
//! buf = d                            (first step)
//! buf = μ buf + (1 − τ) d            (later steps; momentum μ, dampening τ)
//! θ   = θ − η (d + μ buf)            (Nesterov)   or   θ − η buf   (plain momentum)
//! θ   = θ − η d                      (no momentum)
//! ```
//!
//! Written with candle's in-place ops on the CPU, so a step allocates nothing after the first one
//! and reads each parameter, gradient and buffer once or twice, instead of the seven or eight
//! whole-tensor passes (each a fresh allocation) that the same update takes as tensor
//! arithmetic. Elsewhere (CUDA) it is that tensor arithmetic. The loops are closures over copied
//! scalars with no branch inside, run by `crate::cpu`'s `update2` / `update3` (compiled for the
//! baseline and for AVX2, picked at run time, the same bits): the earlier loop with the Nesterov test inside ran one scalar at a time, and the SGD
//! step was about 10% of an MLP training step on the 2-core Intel Xeon (6% after).

use crate::cpu::{contiguous, update2, update3};
use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor, WithDType};

/// SGD settings of one update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdRule {
    /// Learning rate `η`.
    pub lr: f64,
    /// Momentum `μ` (0: none).
    pub momentum: f64,
    /// Dampening `τ`.
    pub dampening: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Weight decay `λ` (L2, added to the gradient).
    pub weight_decay: f64,
}

/// Updates `theta` in place with gradient `g` and momentum buffer `buf` (`None` on the first
/// step); returns the buffer to keep (`None` without momentum). `theta`, `g` and a given `buf`
/// must have one shape and dtype; `buf` is updated in place when it is contiguous on `theta`'s
/// device with `theta`'s dtype, and replaced otherwise.
pub fn sgd_step(theta: &Tensor, g: &Tensor, buf: Option<&Tensor>, r: SgdRule) -> Result<Option<Tensor>> {
    if g.dims() != theta.dims() || g.dtype() != theta.dtype() {
        candle_core::bail!(
            "sgd step: gradient {:?} {:?} does not match the parameter {:?} {:?}",
            g.dims(),
            g.dtype(),
            theta.dims(),
            theta.dtype()
        );
    }
    if let Some(b) = buf {
        if b.dims() != theta.dims() {
            candle_core::bail!(
                "sgd step: momentum buffer {:?} does not match the parameter {:?}",
                b.dims(),
                theta.dims()
            );
        }
    }
    let fast = theta.device().is_cpu()
        && matches!(theta.dtype(), DType::F32 | DType::F64)
        && theta.is_contiguous()
        && g.is_contiguous();
    if !fast {
        return sgd_step_ops(theta, g, buf, r);
    }
    if r.momentum == 0.0 {
        theta.inplace_op2(g, &Step { r })?;
        return Ok(None);
    }
    let buf = match buf {
        Some(b) if b.device().is_cpu() && b.dtype() == theta.dtype() && b.is_contiguous() => {
            b.inplace_op3(g, theta, &Momentum { r })?;
            b.clone()
        }
        Some(b) => {
            let b = b
                .to_device(theta.device())?
                .to_dtype(theta.dtype())?
                .contiguous()?
                .copy()?;
            b.inplace_op3(g, theta, &Momentum { r })?;
            b
        }
        None => decayed(theta, g, r.weight_decay)?.copy()?,
    };
    theta.inplace_op3(&buf, g, &Step { r })?;
    Ok(Some(buf))
}

/// `g + λ θ`.
fn decayed(theta: &Tensor, g: &Tensor, wd: f64) -> Result<Tensor> {
    if wd == 0.0 {
        Ok(g.clone())
    } else {
        g + theta.affine(wd, 0.0)?
    }
}

/// The same rule as tensor arithmetic (any device and dtype); `theta` is overwritten with `set`
/// semantics through a copy.
fn sgd_step_ops(theta: &Tensor, g: &Tensor, buf: Option<&Tensor>, r: SgdRule) -> Result<Option<Tensor>> {
    let d = decayed(theta, g, r.weight_decay)?;
    let (step, keep) = if r.momentum != 0.0 {
        let b = match buf {
            None => d.copy()?,
            Some(b) => {
                (b.to_device(theta.device())?
                    .to_dtype(theta.dtype())?
                    .affine(r.momentum, 0.0)?
                    + d.affine(1.0 - r.dampening, 0.0)?)?
            }
        };
        let step = if r.nesterov {
            (&d + b.affine(r.momentum, 0.0)?)?
        } else {
            b.clone()
        };
        (step, Some(b))
    } else {
        (d, None)
    };
    let new = (theta - step.affine(r.lr, 0.0)?)?;
    theta.slice_set(&new, 0, 0)?;
    Ok(keep)
}

fn contiguous_mut<'a, T>(v: &'a mut [T], l: &Layout) -> Result<&'a mut [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut v[a..b]),
        None => candle_core::bail!("sgd step: the updated tensor must be contiguous"),
    }
}

/// `buf ← μ buf + (1 − τ)(g + λ θ)`; sources `[g, θ]`.
struct Momentum {
    r: SgdRule,
}

impl Momentum {
    fn run<T: WithDType>(&self, buf: &mut [T], g: &[T], th: &[T]) {
        let (m, keep, wd) = (
            T::from_f64(self.r.momentum),
            T::from_f64(1.0 - self.r.dampening),
            T::from_f64(self.r.weight_decay),
        );
        update3(buf, g, th, move |b, g, t| m * b + keep * (g + wd * t));
    }
}

impl InplaceOp3 for Momentum {
    fn name(&self) -> &'static str {
        "secateur-sgd-momentum"
    }
    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        g: &CpuStorage,
        gl: &Layout,
        th: &CpuStorage,
        tl: &Layout,
    ) -> Result<()> {
        match dst {
            CpuStorage::F32(dst) => {
                let (g, th) = (
                    contiguous::<f32>(g, gl, "sgd step", "gradient")?,
                    contiguous::<f32>(th, tl, "sgd step", "parameter")?,
                );
                self.run(contiguous_mut(dst, dst_l)?, g, th);
            }
            CpuStorage::F64(dst) => {
                let (g, th) = (
                    contiguous::<f64>(g, gl, "sgd step", "gradient")?,
                    contiguous::<f64>(th, tl, "sgd step", "parameter")?,
                );
                self.run(contiguous_mut(dst, dst_l)?, g, th);
            }
            _ => candle_core::bail!("sgd step: only f32 and f64 are supported"),
        }
        Ok(())
    }
}

/// `θ ← θ − η s` with `s = buf` (plain momentum), `s = g + λθ + μ buf` (Nesterov) or `s = g + λθ`
/// (no momentum); sources `[buf, g]` when buffered, `[g]` otherwise.
struct Step {
    r: SgdRule,
}

impl Step {
    fn run<T: WithDType>(&self, th: &mut [T], buf: Option<&[T]>, g: &[T]) {
        let (lr, wd, m) = (
            T::from_f64(self.r.lr),
            T::from_f64(self.r.weight_decay),
            T::from_f64(self.r.momentum),
        );
        match buf {
            Some(buf) if self.r.nesterov => update3(th, buf, g, move |t, b, g| t - lr * (g + wd * t + m * b)),
            Some(buf) => update2(th, buf, move |t, b| t - lr * b),
            None => update2(th, g, move |t, g| t - lr * (g + wd * t)),
        }
    }
}

impl InplaceOp2 for Step {
    fn name(&self) -> &'static str {
        "secateur-sgd-step"
    }
    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, g: &CpuStorage, gl: &Layout) -> Result<()> {
        match dst {
            CpuStorage::F32(dst) => {
                let g = contiguous::<f32>(g, gl, "sgd step", "gradient")?;
                self.run(contiguous_mut(dst, dst_l)?, None, g);
            }
            CpuStorage::F64(dst) => {
                let g = contiguous::<f64>(g, gl, "sgd step", "gradient")?;
                self.run(contiguous_mut(dst, dst_l)?, None, g);
            }
            _ => candle_core::bail!("sgd step: only f32 and f64 are supported"),
        }
        Ok(())
    }
}

impl InplaceOp3 for Step {
    fn name(&self) -> &'static str {
        "secateur-sgd-step"
    }
    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        b: &CpuStorage,
        bl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<()> {
        match dst {
            CpuStorage::F32(dst) => {
                let (b, g) = (
                    contiguous::<f32>(b, bl, "sgd step", "buffer")?,
                    contiguous::<f32>(g, gl, "sgd step", "gradient")?,
                );
                self.run(contiguous_mut(dst, dst_l)?, Some(b), g);
            }
            CpuStorage::F64(dst) => {
                let (b, g) = (
                    contiguous::<f64>(b, bl, "sgd step", "buffer")?,
                    contiguous::<f64>(g, gl, "sgd step", "gradient")?,
                );
                self.run(contiguous_mut(dst, dst_l)?, Some(b), g);
            }
            _ => candle_core::bail!("sgd step: only f32 and f64 are supported"),
        }
        Ok(())
    }
}

/// AdamW settings of one update (Loshchilov & Hutter 2019, PyTorch's `torch.optim.AdamW` order of
/// operations): step `t ≥ 1` and the learning rate `η` of this step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWRule {
    /// Learning rate `η`.
    pub lr: f64,
    /// `β₁`.
    pub beta1: f64,
    /// `β₂`.
    pub beta2: f64,
    /// `ε`.
    pub eps: f64,
    /// Decoupled weight decay `λ`.
    pub weight_decay: f64,
    /// The step number `t ≥ 1` (for the bias corrections).
    pub step: i32,
}

/// One AdamW update in place, in three passes (the two moments, then the parameter), with no
/// allocation:
///
/// ```text
/// m ← m + (1 − β₁)(g − m)        v ← β₂ v + (1 − β₂) g²
/// θ ← θ (1 − ηλ) + (−η / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
/// ```
///
/// each operation rounded in the tensors' dtype in the order of the same update as tensor
/// arithmetic (`secateur_inference::optim::AdamW`), so the two give the same bits. Returns
/// `false`, changing nothing, where the fast path does not apply (not all four f32 or all f64,
/// contiguous, on the CPU, of one shape); the caller then uses tensor arithmetic. As tensor
/// arithmetic the update is twelve passes, each a fresh allocation, on the calling thread.
pub fn adamw_step(theta: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, r: AdamWRule) -> Result<bool> {
    let all = [theta, g, m, v];
    let fast = all
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == theta.dtype() && t.is_contiguous() && t.dims() == theta.dims())
        && matches!(theta.dtype(), DType::F32 | DType::F64);
    if !fast {
        return Ok(false);
    }
    if r.step < 1 {
        candle_core::bail!("adamw step: the step number must be at least 1, got {}", r.step);
    }
    m.inplace_op2(g, &AdamMoment { first: true, r })?;
    v.inplace_op2(g, &AdamMoment { first: false, r })?;
    theta.inplace_op3(m, v, &AdamParam { r })?;
    Ok(true)
}

/// `m ← m + (1 − β₁)(g − m)` (`first`) or `v ← β₂ v + (1 − β₂) g²`; source `[g]`.
struct AdamMoment {
    first: bool,
    r: AdamWRule,
}

impl AdamMoment {
    fn run<T: WithDType>(&self, dst: &mut [T], g: &[T]) {
        let zero = T::from_f64(0.0);
        if self.first {
            let c = T::from_f64(1.0 - self.r.beta1);
            // candle: &m + affine(&g − &m, 1 − β₁, 0)
            update2(dst, g, move |m, g| m + ((g - m) * c + zero));
        } else {
            let (b2, c) = (T::from_f64(self.r.beta2), T::from_f64(1.0 - self.r.beta2));
            // candle: affine(v, β₂, 0) + affine(g², 1 − β₂, 0)
            update2(dst, g, move |v, g| (v * b2 + zero) + ((g * g) * c + zero));
        }
    }
}

impl InplaceOp2 for AdamMoment {
    fn name(&self) -> &'static str {
        "secateur-adamw-moment"
    }
    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, g: &CpuStorage, gl: &Layout) -> Result<()> {
        match dst {
            CpuStorage::F32(dst) => self.run(
                contiguous_mut(dst, dst_l)?,
                contiguous::<f32>(g, gl, "adamw step", "gradient")?,
            ),
            CpuStorage::F64(dst) => self.run(
                contiguous_mut(dst, dst_l)?,
                contiguous::<f64>(g, gl, "adamw step", "gradient")?,
            ),
            _ => candle_core::bail!("adamw step: only f32 and f64 are supported"),
        }
        Ok(())
    }
}

/// The square root in the dtype's own precision (correctly rounded, as candle's `sqrt`).
trait Sqrt {
    fn sqrt_(self) -> Self;
}

impl Sqrt for f32 {
    fn sqrt_(self) -> Self {
        self.sqrt()
    }
}

impl Sqrt for f64 {
    fn sqrt_(self) -> Self {
        self.sqrt()
    }
}

/// `θ ← θ(1 − ηλ) + (−η/(1 − β₁ᵗ)) · m / (√v · (1/√(1 − β₂ᵗ)) + ε)`; sources `[m, v]`.
struct AdamParam {
    r: AdamWRule,
}

impl AdamParam {
    fn run<T: WithDType + Sqrt>(&self, th: &mut [T], m: &[T], v: &[T]) {
        let r = self.r;
        let zero = T::from_f64(0.0);
        let decay = T::from_f64(1.0 - r.lr * r.weight_decay);
        let bias1 = 1.0 - r.beta1.powi(r.step);
        let bias2_sqrt = (1.0 - r.beta2.powi(r.step)).sqrt();
        let (inv_b2, eps, scale) = (
            T::from_f64(1.0 / bias2_sqrt),
            T::from_f64(r.eps),
            T::from_f64(-r.lr / bias1),
        );
        update3(th, m, v, move |t, m, v| {
            let denom = v.sqrt_() * inv_b2 + eps;
            let update = (m / denom) * scale + zero;
            (t * decay + zero) + update
        });
    }
}

impl InplaceOp3 for AdamParam {
    fn name(&self) -> &'static str {
        "secateur-adamw-param"
    }
    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        m: &CpuStorage,
        ml: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<()> {
        match dst {
            CpuStorage::F32(dst) => {
                let (m, v) = (
                    contiguous::<f32>(m, ml, "adamw step", "first moment")?,
                    contiguous::<f32>(v, vl, "adamw step", "second moment")?,
                );
                self.run(contiguous_mut(dst, dst_l)?, m, v);
            }
            CpuStorage::F64(dst) => {
                let (m, v) = (
                    contiguous::<f64>(m, ml, "adamw step", "first moment")?,
                    contiguous::<f64>(v, vl, "adamw step", "second moment")?,
                );
                self.run(contiguous_mut(dst, dst_l)?, m, v);
            }
            _ => candle_core::bail!("adamw step: only f32 and f64 are supported"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn seq(n: usize, scale: f64, dt: DType) -> Tensor {
        let v: Vec<f64> = (0..n).map(|i| ((i * 37 % 101) as f64 - 50.0) * scale).collect();
        Tensor::from_vec(v, n, &Device::Cpu).unwrap().to_dtype(dt).unwrap()
    }

    /// AdamW in place: four steps, f32 and f64, against the same update as candle tensor
    /// arithmetic (the fallback of `secateur_inference::optim::AdamW`), bit for bit, with and
    /// without weight decay; and against the rule written out in f64 within rounding.
    #[test]
    fn adamw_in_place_equals_the_tensor_arithmetic_bit_for_bit() {
        for dt in [DType::F32, DType::F64] {
            for wd in [0.0, 1e-2] {
                let n = 40_000; // several chunks
                let theta = seq(n, 0.01, dt);
                let (m, v) = (theta.zeros_like().unwrap(), theta.zeros_like().unwrap());
                let mut th_ops = theta.copy().unwrap();
                let (mut m_ops, mut v_ops) = (m.copy().unwrap(), v.copy().unwrap());
                let (beta1, beta2, eps, lr) = (0.9, 0.999, 1e-8, 1e-3);
                let mut want: Vec<f64> = theta.to_dtype(DType::F64).unwrap().to_vec1().unwrap();
                let (mut wm, mut wv) = (vec![0f64; n], vec![0f64; n]);
                for t in 1..=4 {
                    let g = seq(n, 0.003 * t as f64, dt).sin().unwrap();
                    let r = AdamWRule {
                        lr,
                        beta1,
                        beta2,
                        eps,
                        weight_decay: wd,
                        step: t,
                    };
                    assert!(adamw_step(&theta, &g, &m, &v, r).unwrap());
                    // the tensor arithmetic
                    let th = th_ops.affine(1.0 - lr * wd, 0.0).unwrap();
                    m_ops = (&m_ops + (&g - &m_ops).unwrap().affine(1.0 - beta1, 0.0).unwrap()).unwrap();
                    v_ops = (v_ops.affine(beta2, 0.0).unwrap() + g.sqr().unwrap().affine(1.0 - beta2, 0.0).unwrap())
                        .unwrap();
                    let b1 = 1.0 - f64::powi(beta1, t);
                    let b2 = (1.0 - f64::powi(beta2, t)).sqrt();
                    let denom = v_ops.sqrt().unwrap().affine(1.0 / b2, eps).unwrap();
                    let upd = (&m_ops / denom).unwrap().affine(-lr / b1, 0.0).unwrap();
                    th_ops = (th + upd).unwrap();
                    // written out in f64
                    let gv: Vec<f64> = g.to_dtype(DType::F64).unwrap().to_vec1().unwrap();
                    for i in 0..n {
                        wm[i] = beta1 * wm[i] + (1.0 - beta1) * gv[i];
                        wv[i] = beta2 * wv[i] + (1.0 - beta2) * gv[i] * gv[i];
                        want[i] = want[i] * (1.0 - lr * wd) - lr / b1 * wm[i] / (wv[i].sqrt() / b2 + eps);
                    }
                }
                let bits = |t: &Tensor| -> Vec<u64> {
                    let v: Vec<f64> = t.to_dtype(DType::F64).unwrap().to_vec1().unwrap();
                    v.iter().map(|x| x.to_bits()).collect()
                };
                assert!(
                    bits(&theta) == bits(&th_ops),
                    "{dt:?} wd {wd}: θ differs from the tensor arithmetic"
                );
                assert!(bits(&m) == bits(&m_ops), "{dt:?} wd {wd}: m differs");
                assert!(bits(&v) == bits(&v_ops), "{dt:?} wd {wd}: v differs");
                let got: Vec<f64> = theta.to_dtype(DType::F64).unwrap().to_vec1().unwrap();
                // |θ| ≤ 0.5 and four steps of at most lr = 1e-3 each: f32 rounding of θ (3e-8 per
                // operation at that size, a handful of operations a step) stays below 1e-6, f64's
                // below 1e-12; a wrong bias correction or decay errs by more than 1e-5
                let tol = if dt == DType::F32 { 1e-6 } else { 1e-12 };
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                assert!(worst < tol, "{dt:?} wd {wd}: largest error against the rule {worst:e}");
            }
        }
    }

    #[test]
    fn adamw_declines_what_it_cannot_update_in_place() {
        let t = seq(6, 0.1, DType::F32);
        let r = AdamWRule {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            step: 1,
        };
        let z = t.zeros_like().unwrap();
        // a transposed (non-contiguous) parameter and a mismatched dtype are left to the caller
        let t2 = seq(6, 0.1, DType::F32).reshape((2, 3)).unwrap().t().unwrap();
        let z2 = t2.zeros_like().unwrap();
        assert!(!adamw_step(&t2, &z2.t().unwrap().contiguous().unwrap().t().unwrap(), &z2, &z2, r).unwrap());
        assert!(!adamw_step(&t, &seq(6, 0.1, DType::F64), &z, &z, r).unwrap());
        assert!(adamw_step(
            &t,
            &z,
            &z.copy().unwrap(),
            &z.copy().unwrap(),
            AdamWRule { step: 0, ..r }
        )
        .is_err());
    }

    /// Three steps of every variant against the rule written out with scalars (PyTorch's SGD).
    #[test]
    fn matches_the_rule_written_out() {
        for (momentum, dampening, nesterov, wd) in [
            (0.0, 0.0, false, 0.0),
            (0.0, 0.0, false, 5e-4),
            (0.9, 0.0, false, 5e-4),
            (0.9, 0.1, false, 0.0),
            (0.9, 0.0, true, 1e-3),
        ] {
            let r = SgdRule {
                lr: 0.05,
                momentum,
                dampening,
                nesterov,
                weight_decay: wd,
            };
            let n = 40_000; // several chunks
            let theta = seq(n, 0.01, DType::F64);
            let mut want: Vec<f64> = theta.to_vec1().unwrap();
            let mut want_buf: Option<Vec<f64>> = None;
            let mut buf: Option<Tensor> = None;
            for step in 0..3 {
                let g = seq(n, 0.003 * (step + 1) as f64, DType::F64);
                let gv: Vec<f64> = g.to_vec1().unwrap();
                buf = sgd_step(&theta, &g, buf.as_ref(), r).unwrap();
                let d: Vec<f64> = gv.iter().zip(&want).map(|(g, t)| g + wd * t).collect();
                let s: Vec<f64> = if momentum != 0.0 {
                    let b: Vec<f64> = match &want_buf {
                        None => d.clone(),
                        Some(b) => b
                            .iter()
                            .zip(&d)
                            .map(|(b, d)| momentum * b + (1.0 - dampening) * d)
                            .collect(),
                    };
                    let s = if nesterov {
                        d.iter().zip(&b).map(|(d, b)| d + momentum * b).collect()
                    } else {
                        b.clone()
                    };
                    want_buf = Some(b);
                    s
                } else {
                    d
                };
                want.iter_mut().zip(&s).for_each(|(t, s)| *t -= 0.05 * s);
                let got: Vec<f64> = theta.to_vec1().unwrap();
                let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                assert!(err < 1e-15, "{r:?} step {step}: {err}");
                if let (Some(b), Some(wb)) = (&buf, &want_buf) {
                    let bv: Vec<f64> = b.to_vec1().unwrap();
                    let err = bv.iter().zip(wb).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                    assert!(err < 1e-15, "{r:?} buffer step {step}: {err}");
                }
            }
        }
    }

    /// The in-place path and the tensor-arithmetic path (used on CUDA) agree to f32 rounding.
    #[test]
    fn in_place_equals_tensor_arithmetic() {
        let r = SgdRule {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 5e-4,
        };
        let a = seq(1000, 0.01, DType::F32);
        let b = a.copy().unwrap();
        let (mut ba, mut bb) = (None, None);
        for step in 0..3 {
            let g = seq(1000, 0.002 * (step + 1) as f64, DType::F32);
            ba = sgd_step(&a, &g, ba.as_ref(), r).unwrap();
            bb = sgd_step_ops(&b, &g, bb.as_ref(), r).unwrap();
        }
        let (va, vb): (Vec<f32>, Vec<f32>) = (a.to_vec1().unwrap(), b.to_vec1().unwrap());
        let err = va.iter().zip(&vb).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(err < 1e-6, "{err}");
    }

    #[test]
    fn mismatched_gradient_is_an_error() {
        let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let g = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let r = SgdRule {
            lr: 0.1,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        };
        assert!(sgd_step(&t, &g, None, r).is_err());
    }
}
