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
//! arithmetic. Elsewhere (CUDA) it is that tensor arithmetic.

use crate::cpu::{contiguous, CHUNK};
use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor, WithDType};
use rayon::prelude::*;

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
        buf.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(th.par_chunks(CHUNK)))
            .for_each(|(b, (g, th))| {
                for ((b, &g), &t) in b.iter_mut().zip(g).zip(th) {
                    *b = m * *b + keep * (g + wd * t);
                }
            });
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
        let nesterov = self.r.nesterov;
        match buf {
            Some(buf) => th
                .par_chunks_mut(CHUNK)
                .zip(buf.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                .for_each(|(th, (b, g))| {
                    for ((t, &b), &g) in th.iter_mut().zip(b).zip(g) {
                        let s = if nesterov { g + wd * *t + m * b } else { b };
                        *t -= lr * s;
                    }
                }),
            None => th.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(th, g)| {
                for (t, &g) in th.iter_mut().zip(g) {
                    *t -= lr * (g + wd * *t);
                }
            }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn seq(n: usize, scale: f64, dt: DType) -> Tensor {
        let v: Vec<f64> = (0..n).map(|i| ((i * 37 % 101) as f64 - 50.0) * scale).collect();
        Tensor::from_vec(v, n, &Device::Cpu).unwrap().to_dtype(dt).unwrap()
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
