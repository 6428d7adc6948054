//! The option-A shortcut of the CIFAR ResNets (He et al. 2016, §4.2; the reference code of
//! akamaster/pytorch_resnet_cifar10 writes it as `F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))`):
//! subsample the planes by the stride and pad the channels with zeros,
//!
//! ```text
//! y[n, l + c, i, j] = x[n, c, s·i, s·j]      (c < C, i < ⌈H/s⌉, j < ⌈W/s⌉), zero in the l + r pad channels
//! ```
//!
//! as one parallel custom op. Its backward is the adjoint, `dx[n, c, s·i, s·j] = g[n, l + c, i, j]`
//! and zero at the pixels the stride skips, again a custom op whose backward is the forward
//! map (both are linear), so double backpropagation goes through. candle's composition
//! (`index_select` twice, `pad_with_zeros`; backward `index_add` into zeros and a `narrow`) runs on
//! one thread: on the 2-core Intel Xeon of BENCHMARKS.md it was the largest piece of work the
//! ResNet-20 step's second worker waited for. Off the CPU, and for types other than f32 and f64,
//! [`subsample_pad`] is that composition.

use crate::cpu::{contiguous, filled};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};

/// `pad_C(x[:, :, ::s, ::s], left, right)` for `x: [N, C, H, W]`: `[N, left + C + right, ⌈H/s⌉,
/// ⌈W/s⌉]`, differentiable (to any order) in `x`. `stride` must be at least 1.
pub fn subsample_pad(x: &Tensor, stride: usize, left: usize, right: usize) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    if stride == 0 {
        candle_core::bail!("subsample_pad: the stride must be at least 1");
    }
    let geom = Geom {
        s: stride,
        left,
        right,
        c,
        h,
        w,
    };
    if x.device().is_cpu() && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64) {
        x.contiguous()?.apply_op1(Forward(geom))
    } else {
        let idx = |n: usize| {
            Tensor::from_vec(
                (0..n).step_by(stride).map(|i| i as u32).collect::<Vec<_>>(),
                n.div_ceil(stride),
                x.device(),
            )
        };
        let sub = if stride == 1 {
            x.clone()
        } else {
            x.index_select(&idx(h)?, 2)?.index_select(&idx(w)?, 3)?
        };
        sub.pad_with_zeros(1, left, right)
    }
}

/// The shapes of one shortcut: stride, pad channels, and the input's `C × H × W`.
#[derive(Debug, Clone, Copy)]
struct Geom {
    s: usize,
    left: usize,
    right: usize,
    c: usize,
    h: usize,
    w: usize,
}

impl Geom {
    fn out_hw(&self) -> (usize, usize) {
        (self.h.div_ceil(self.s), self.w.div_ceil(self.s))
    }
    fn out_c(&self) -> usize {
        self.left + self.c + self.right
    }
    /// The input's and the output's entries per sample.
    fn sizes(&self) -> (usize, usize) {
        let (oh, ow) = self.out_hw();
        (self.c * self.h * self.w, self.out_c() * oh * ow)
    }
}

/// `x ↦ y` (the module's formula).
struct Forward(Geom);

/// `g ↦ dx`, the adjoint of [`Forward`].
struct Adjoint(Geom);

/// One sample of `y` from one sample of `x`; every entry of `y` written.
fn forward_sample<T: WithDType>(g: &Geom, x: &[T], y: &mut [std::mem::MaybeUninit<T>]) {
    let (oh, ow) = g.out_hw();
    let plane = oh * ow;
    for (k, yc) in y.chunks_mut(plane).enumerate() {
        if k < g.left || k >= g.left + g.c {
            yc.iter_mut().for_each(|v| {
                v.write(T::zero());
            });
            continue;
        }
        let xc = &x[(k - g.left) * g.h * g.w..(k - g.left + 1) * g.h * g.w];
        for i in 0..oh {
            let row = &xc[g.s * i * g.w..];
            for (j, v) in yc[i * ow..(i + 1) * ow].iter_mut().enumerate() {
                v.write(row[g.s * j]);
            }
        }
    }
}

/// One sample of `dx` from one sample of `g`; every entry of `dx` written.
fn adjoint_sample<T: WithDType>(geo: &Geom, g: &[T], dx: &mut [std::mem::MaybeUninit<T>]) {
    let (oh, ow) = geo.out_hw();
    let plane = oh * ow;
    for (c, dc) in dx.chunks_mut(geo.h * geo.w).enumerate() {
        let gc = &g[(geo.left + c) * plane..(geo.left + c + 1) * plane];
        for (r, drow) in dc.chunks_mut(geo.w).enumerate() {
            if r % geo.s != 0 {
                drow.iter_mut().for_each(|v| {
                    v.write(T::zero());
                });
                continue;
            }
            let grow = &gc[(r / geo.s) * ow..(r / geo.s + 1) * ow];
            for (j, v) in drow.iter_mut().enumerate() {
                v.write(if j % geo.s == 0 { grow[j / geo.s] } else { T::zero() });
            }
        }
    }
}

/// Runs `per_sample` over the samples of a contiguous `[N, …]` input of `n_in` entries per sample
/// into an output of `n_out` per sample, in parallel.
fn run<T: WithDType>(
    s: &CpuStorage,
    l: &Layout,
    (n_in, n_out): (usize, usize),
    what: &str,
    per_sample: impl Fn(&[T], &mut [std::mem::MaybeUninit<T>]) + Sync + Send,
) -> Result<Vec<T>> {
    let x = contiguous::<T>(s, l, "shortcut", what)?;
    let n = l.dims()[0];
    if x.len() != n * n_in {
        candle_core::bail!(
            "shortcut: {what} of shape {:?} does not match the op's geometry",
            l.dims()
        );
    }
    if n * n_out == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: each part is one sample's output (`n_out` entries) and `per_sample` writes each entry.
    Ok(unsafe { filled(n * n_out, n_out, |i, out| per_sample(&x[i * n_in..(i + 1) * n_in], out)) })
}

impl CustomOp1 for Forward {
    fn name(&self) -> &'static str {
        "secateur-shortcut"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let (oh, ow) = g.out_hw();
        let n = l.dims()[0];
        let (n_in, n_out) = g.sizes();
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(run(s, l, (n_in, n_out), "input", |x, y| forward_sample(&g, x, y))?),
            CpuStorage::F64(_) => CpuStorage::F64(run(s, l, (n_in, n_out), "input", |x, y| forward_sample(&g, x, y))?),
            _ => candle_core::bail!("shortcut: only f32 and f64 are supported"),
        };
        Ok((out, Shape::from((n, g.out_c(), oh, ow))))
    }
    fn bwd(&self, _x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(g.contiguous()?.apply_op1(Adjoint(self.0))?))
    }
}

impl CustomOp1 for Adjoint {
    fn name(&self) -> &'static str {
        "secateur-shortcut-adjoint"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let geo = self.0;
        let n = l.dims()[0];
        let (n_in, n_out) = geo.sizes();
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(run(s, l, (n_out, n_in), "gradient", |g, dx| {
                adjoint_sample(&geo, g, dx)
            })?),
            CpuStorage::F64(_) => CpuStorage::F64(run(s, l, (n_out, n_in), "gradient", |g, dx| {
                adjoint_sample(&geo, g, dx)
            })?),
            _ => candle_core::bail!("shortcut: only f32 and f64 are supported"),
        };
        Ok((out, Shape::from((n, geo.c, geo.h, geo.w))))
    }
    fn bwd(&self, _g: &Tensor, _res: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(up.contiguous()?.apply_op1(Forward(self.0))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn seq(shape: &[usize], a: f64) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|i| ((i as f64) * a).sin()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    /// candle's composition, the independent reference.
    fn reference(x: &Tensor, s: usize, left: usize, right: usize) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let idx = |n: usize| {
            Tensor::from_vec(
                (0..n).step_by(s).map(|i| i as u32).collect::<Vec<_>>(),
                n.div_ceil(s),
                x.device(),
            )
        };
        x.index_select(&idx(h)?, 2)?
            .index_select(&idx(w)?, 3)?
            .pad_with_zeros(1, left, right)
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
    }

    #[test]
    fn forward_and_gradient_match_candles_composition() -> Result<()> {
        // ResNet's case (stride 2, even planes, half the new channels on each side), odd planes,
        // stride 3, one-sided padding, stride 1
        for (shape, s, l, r) in [
            ([3, 4, 8, 8], 2, 2, 2),
            ([2, 3, 7, 5], 2, 1, 2),
            ([2, 2, 7, 7], 3, 0, 3),
            ([1, 2, 4, 6], 1, 1, 0),
        ] {
            let x = Var::from_tensor(&seq(&shape, 0.37)?)?;
            let y = subsample_pad(&x, s, l, r)?;
            let want = reference(&x, s, l, r)?;
            assert_eq!(y.dims(), want.dims(), "{shape:?} s={s}");
            assert_eq!(max_abs_diff(&y, &want)?, 0.0, "{shape:?} s={s}: forward");
            // gradient of Σ u ⊙ y against candle's autograd of the composition
            let u = seq(y.dims(), 0.91)?;
            let got = (&y * &u)?.sum_all()?.backward()?;
            let exp = (&want * &u)?.sum_all()?.backward()?;
            let (gx, ex) = (got.get(&x).expect("grad"), exp.get(&x).expect("reference grad"));
            assert_eq!(max_abs_diff(gx, ex)?, 0.0, "{shape:?} s={s}: gradient");
            // f32 the same values
            let y32 = subsample_pad(&x.to_dtype(DType::F32)?, s, l, r)?;
            assert_eq!(
                max_abs_diff(
                    &y32.to_dtype(DType::F64)?,
                    &want.to_dtype(DType::F32)?.to_dtype(DType::F64)?
                )?,
                0.0
            );
        }
        Ok(())
    }

    #[test]
    fn the_adjoints_backward_is_the_forward_map() -> Result<()> {
        // ⟨A x, u⟩ = ⟨x, Aᵀ u⟩, and differentiating Aᵀ u in u gives A back
        let geom = Geom {
            s: 2,
            left: 1,
            right: 2,
            c: 3,
            h: 5,
            w: 6,
        };
        let x = seq(&[2, 3, 5, 6], 0.53)?;
        let u = Var::from_tensor(&seq(&[2, 6, 3, 3], 0.29)?)?;
        let ax = x.apply_op1(Forward(geom))?;
        let atu = u.as_tensor().apply_op1(Adjoint(geom))?;
        let lhs = (&ax * u.as_tensor())?.sum_all()?.to_scalar::<f64>()?;
        let rhs = (&x * &atu)?.sum_all()?.to_scalar::<f64>()?;
        assert!((lhs - rhs).abs() < 1e-12 * (1.0 + lhs.abs()), "{lhs} vs {rhs}");
        let g = (&atu * &x)?.sum_all()?.backward()?;
        assert_eq!(max_abs_diff(g.get(&u).expect("grad"), &ax)?, 0.0);
        Ok(())
    }

    #[test]
    fn a_zero_stride_is_refused() -> Result<()> {
        let x = seq(&[1, 1, 2, 2], 0.1)?;
        assert!(subsample_pad(&x, 0, 0, 0).is_err());
        Ok(())
    }
}
