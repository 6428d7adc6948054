//! Bernoulli gates on a layer's input units with the straight-through estimator (the gated
//! layers of `secateur_bayes::layers::gsm_gates`) as one parallel pass forward, and backward one
//! pass for `x`'s gradient and a product and a per-channel sum for θ's.
//!
//! With `x` of shape `[rows, g, inner]` (`inner = 1` for a linear layer's `[rows, g]` input, the
//! pixels of a channel for a convolution's `[N, C, H, W]`), gate probabilities `θ` of shape `[g]`
//! and uniform draws `u` of shape `[rows, g]`:
//!
//! ```text
//! ξ[r, j]       = [u[r, j] < θ[j]]                     (ξ ~ Bernoulli(θ))
//! y[r, j, k]    = x[r, j, k] · ξ[r, j]
//! ∂L/∂x         = ∂L/∂y ⊙ ξ
//! ∂L/∂θ[j]      = Σ_r Σ_k ∂L/∂y[r, j, k] · x[r, j, k]     (straight through: ∂ξ/∂θ = 1; Bengio et al. 2013)
//! ```
//!
//! the values and gradients of the candle composition `x ⊙ (ξ + θ − stop_grad(θ))` (whose value
//! is exactly ξ, since `θ − θ = 0`), which as candle ops is a comparison, a cast, a subtraction,
//! two broadcasts and a product forward, and a broadcast product and a strided sum over the rows
//! on one thread backward. θ's gradient is [`crate::bias::channel_sum`] of `∂L/∂y ⊙ x` (summed in
//! f64, the same for every thread count). With double backpropagation requested
//! ([`crate::double_backprop::requested`]) [`gate_inputs`] answers `None` and the caller uses its
//! composition.

use crate::cpu::{contiguous, filled};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};

/// Entries per parallel task (whole rows of `x`, at least one).
const TASK: usize = 1 << 14;

/// `x ⊙ ξ`, `ξ = [u < θ]` broadcast over the trailing dimensions of `x` (`x`: `[rows, g, …]`,
/// `θ`: `[g]`, `u`: `[rows, g]`), with the straight-through gradient for θ (see the module
/// documentation); `None` off the fast path (f32/f64 on the CPU, one dtype) and when double
/// backpropagation is requested. Fails when the shapes disagree.
pub fn gate_inputs(x: &Tensor, theta: &Tensor, u: &Tensor) -> Result<Option<Tensor>> {
    let dims = x.dims();
    let g = theta.elem_count();
    if dims.len() < 2 || dims[1] != g || theta.rank() != 1 || u.dims() != [dims[0], g] {
        candle_core::bail!(
            "gates: x {:?}, θ {:?} and u {:?} do not fit (x: [rows, g, …], θ: [g], u: [rows, g])",
            dims,
            theta.dims(),
            u.dims()
        );
    }
    let fast = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && theta.dtype() == x.dtype()
        && u.dtype() == x.dtype();
    if !fast || crate::double_backprop::requested() {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op3(
        &theta.contiguous()?,
        &u.contiguous()?,
        Gate,
    )?))
}

/// `(x, θ, u) ↦ x ⊙ ξ`; also `∂L/∂x` from `(∂L/∂y, θ, u)`, the same map.
struct Gate;

/// `(rows, g, inner)` of `x`.
fn geometry(l: &Layout) -> (usize, usize, usize) {
    let d = l.dims();
    (d[0], d[1], d[2..].iter().product())
}

fn masked<T: WithDType>(x: &[T], theta: &[T], u: &[T], (rows, g, inner): (usize, usize, usize)) -> Vec<T> {
    let row = g * inner;
    let per_task = (TASK / row.max(1)).max(1) * row;
    // SAFETY: every entry of each part is written (whole rows: the part's length is a multiple
    // of `row`, and the last part ends with the last row).
    let out = unsafe {
        filled(rows * row, per_task, |i, part| {
            let r0 = i * per_task / row;
            for (k, o) in part.chunks_mut(row).enumerate() {
                let r = r0 + k;
                let xr = &x[r * row..(r + 1) * row];
                let ur = &u[r * g..(r + 1) * g];
                if inner == 1 {
                    // one entry per gate: a branch-free select the compiler vectorises
                    for (((o, &v), &uj), &t) in o.iter_mut().zip(xr).zip(ur).zip(theta) {
                        o.write(if uj < t { v } else { T::zero() });
                    }
                    continue;
                }
                for j in 0..g {
                    let open = ur[j] < theta[j];
                    let (xs, os) = (&xr[j * inner..(j + 1) * inner], &mut o[j * inner..(j + 1) * inner]);
                    for (o, &v) in os.iter_mut().zip(xs) {
                        o.write(if open { v } else { T::zero() });
                    }
                }
            }
        })
    };
    out
}

impl CustomOp3 for Gate {
    fn name(&self) -> &'static str {
        "secateur-gates"
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
        const OP: &str = "gates";
        let geo = geometry(l1);
        if l2.dims() != [geo.1] || l3.dims() != [geo.0, geo.1] {
            candle_core::bail!(
                "{OP}: x {:?}, θ {:?}, u {:?} do not fit",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(masked(
                contiguous::<f32>(s1, l1, OP, "x")?,
                contiguous::<f32>(s2, l2, OP, "θ")?,
                contiguous::<f32>(s3, l3, OP, "u")?,
                geo,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(masked(
                contiguous::<f64>(s1, l1, OP, "x")?,
                contiguous::<f64>(s2, l2, OP, "θ")?,
                contiguous::<f64>(s3, l3, OP, "u")?,
                geo,
            )),
            _ => candle_core::bail!("{OP}: only f32 and f64 (not mixed) are supported"),
        };
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        theta: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // ∂L/∂x = ∂L/∂y ⊙ ξ: the forward map applied to the incoming gradient
        let dx = grad.apply_op3(theta, u, Gate)?;
        // ∂L/∂θ[j] = Σ_r Σ_k ∂L/∂y[r, j, k] x[r, j, k]: the bias kernel's per-channel sum
        // (parallel, summed in f64 in an order independent of the thread count)
        let dtheta = crate::bias::channel_sum(&(x * &grad)?)?;
        Ok((Some(dx), Some(dtheta), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn filled_t(shape: &[usize], seed: u64, lo: f64, hi: f64) -> Tensor {
        // a deterministic spread of values without a generator: a scrambled sine
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|i| {
                let s = ((i as f64 + 1.0) * (0.618 + seed as f64 * 0.1)).sin() * 43758.5453;
                lo + (hi - lo) * (s - s.floor())
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Values and both gradients against the candle composition `x ⊙ (ξ + θ − stop_grad(θ))`
    /// (an independent computation), for a linear input and a convolution's `[N, C, H, W]`, with
    /// a weighted loss so that every entry's incoming gradient differs.
    #[test]
    fn equals_the_straight_through_composition() {
        for shape in [vec![37usize, 130], vec![5, 7, 3, 4], vec![300, 70]] {
            let (rows, g) = (shape[0], shape[1]);
            let x = Var::from_tensor(&filled_t(&shape, 1, -2.0, 2.0)).unwrap();
            let th = Var::from_tensor(&filled_t(&[g], 2, 0.0, 1.0)).unwrap();
            let u = filled_t(&[rows, g], 3, 0.0, 1.0);
            let w = filled_t(&shape, 4, 0.5, 1.5);
            let fused = gate_inputs(x.as_tensor(), th.as_tensor(), &u).unwrap().unwrap();
            let xi = u
                .broadcast_lt(&th.as_tensor().detach().reshape((1, g)).unwrap())
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            let st = (th.as_tensor() - th.as_tensor().detach())
                .unwrap()
                .reshape((1, g))
                .unwrap();
            let gates = xi.broadcast_add(&st).unwrap();
            let mut gshape = vec![rows, g];
            gshape.extend(std::iter::repeat_n(1, shape.len() - 2));
            let comp = x.as_tensor().broadcast_mul(&gates.reshape(gshape).unwrap()).unwrap();
            let (a, b): (Vec<f64>, Vec<f64>) = (
                fused.flatten_all().unwrap().to_vec1().unwrap(),
                comp.flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert_eq!(a, b, "values, shape {shape:?}");
            assert!(
                a.contains(&0.0) && a.iter().any(|&v| v != 0.0),
                "some gates open, some shut"
            );
            let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = (comp * &w).unwrap().sum_all().unwrap().backward().unwrap();
            for (v, what) in [(&x, "x"), (&th, "θ")] {
                let p: Vec<f64> = gf.get(v).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                let q: Vec<f64> = gc.get(v).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                for i in 0..p.len() {
                    assert!(
                        (p[i] - q[i]).abs() < 1e-12 * q[i].abs().max(1.0),
                        "∂/∂{what}[{i}], shape {shape:?}: fused {} vs composition {}",
                        p[i],
                        q[i]
                    );
                }
            }
        }
    }

    /// θ's gradient is the sum over rows of `∂L/∂y ⊙ x` entry by entry, summed in f64 by hand,
    /// for f32 inputs over several rows and many gates. The tolerance: each f32 product rounds
    /// once (6e-8 relative) and the sum is then rounded to f32, so the error stays near 1e-7 of
    /// `Σ|x·w|` whatever the summation order (an f32 accumulation over the 129 rows stays under
    /// 129 · 6e-8 ≈ 8e-6 of it); 1e-5 of it admits either, while a dropped row or gate, or the
    /// gradient of the wrong operand, errs by a whole term (on average `Σ|x·w|`/129, hundreds of
    /// times the tolerance).
    #[test]
    fn f32_theta_gradient_is_the_row_sum() {
        let (rows, g) = (129, 200);
        let x = filled_t(&[rows, g], 5, -1.0, 1.0).to_dtype(DType::F32).unwrap();
        let th = Var::from_tensor(&filled_t(&[g], 6, 0.0, 1.0).to_dtype(DType::F32).unwrap()).unwrap();
        let u = filled_t(&[rows, g], 7, 0.0, 1.0).to_dtype(DType::F32).unwrap();
        let w = filled_t(&[rows, g], 8, -1.0, 1.0).to_dtype(DType::F32).unwrap();
        let y = gate_inputs(&x, th.as_tensor(), &u).unwrap().unwrap();
        let gt: Vec<f32> = (y * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
            .get(&th)
            .unwrap()
            .to_vec1()
            .unwrap();
        let (xv, wv): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (x.to_vec2().unwrap(), w.to_vec2().unwrap());
        for j in 0..g {
            let want: f64 = (0..rows).map(|r| xv[r][j] as f64 * wv[r][j] as f64).sum();
            let mag: f64 = (0..rows).map(|r| (xv[r][j] as f64 * wv[r][j] as f64).abs()).sum();
            assert!(
                (gt[j] as f64 - want).abs() < 1e-5 * mag.max(1e-3),
                "θ[{j}]: {} vs {want}",
                gt[j]
            );
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        let x = filled_t(&[4, 3], 1, 0.0, 1.0);
        assert!(gate_inputs(&x, &filled_t(&[2], 2, 0.0, 1.0), &filled_t(&[4, 3], 3, 0.0, 1.0)).is_err());
        assert!(gate_inputs(&x, &filled_t(&[3], 2, 0.0, 1.0), &filled_t(&[4, 2], 3, 0.0, 1.0)).is_err());
    }
}
