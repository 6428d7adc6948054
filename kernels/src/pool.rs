//! Max pooling with non-overlapping `k × k` windows (stride `k`), as LeNet-5 and VGG use it.
//!
//! `y[b, c, i, j] = max_{0 ≤ u, v < k} x[b, c, k·i + u, k·j + v]`; rows and columns past
//! `k · ⌊H / k⌋` are ignored, as in PyTorch. The gradient goes to the first maximum of each
//! window in row-major order (PyTorch's choice).
//!
//! Three custom ops, closed under differentiation, so double backpropagation works:
//! - `MaxPool`: `x ↦ y`; its backward is `Scatter(x, g)`;
//! - `Scatter(x, g)`: puts `g[b, c, i, j]` at the arg-max of window `(i, j)` of `x`, zeros
//!   elsewhere (linear in `g`); its backward in `g` is `Gather(x, G)`, none in `x` (the arg-max
//!   is piecewise constant);
//! - `Gather(x, G)`: reads `G` at the arg-max of every window of `x` (linear in `G`); its
//!   backward in `G` is `Scatter(x, g)`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Max pooling of `x: [B, C, H, W]` with `k × k` windows and stride `k`.
///
/// On CPU this uses the custom ops of this module; elsewhere it falls back to reductions of a
/// reshaped view (differentiable by candle's own rules).
pub fn max_pool2d(x: &Tensor, k: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if k == 0 || h < k || w < k {
        candle_core::bail!("max pool {k}×{k} got a {h}×{w} input");
    }
    let (ho, wo) = (h / k, w / k);
    if x.device().is_cpu() {
        return x.contiguous()?.apply_op1(MaxPool { k });
    }
    let x = if ho * k != h || wo * k != w {
        x.narrow(2, 0, ho * k)?.narrow(3, 0, wo * k)?.contiguous()?
    } else {
        x.contiguous()?
    };
    x.reshape((b, c, ho, k, wo, k))?.max(5)?.max(3)
}

/// Geometry of a pooling call: planes, input and output sides.
#[derive(Clone, Copy)]
struct Geom {
    planes: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    k: usize,
}

impl Geom {
    fn of(layout: &Layout, k: usize) -> Result<Self> {
        let (b, c, h, w) = layout.shape().dims4()?;
        if k == 0 || h < k || w < k {
            candle_core::bail!("max pool {k}×{k} got a {h}×{w} input");
        }
        Ok(Self {
            planes: b * c,
            h,
            w,
            ho: h / k,
            wo: w / k,
            k,
        })
    }
    fn out_shape(&self, layout: &Layout) -> Result<Shape> {
        let (b, c, _, _) = layout.shape().dims4()?;
        Ok(Shape::from((b, c, self.ho, self.wo)))
    }
}

fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("max pool: {what} must be contiguous"),
    }
}

/// Offset (within one input plane) of the first maximum of output window `(i, j)`.
#[inline]
fn argmax<T: WithDType>(plane: &[T], g: &Geom, i: usize, j: usize) -> usize {
    let mut best = (g.k * i) * g.w + g.k * j;
    let mut m = plane[best];
    for u in 0..g.k {
        let row = (g.k * i + u) * g.w + g.k * j;
        for v in 0..g.k {
            let val = plane[row + v];
            if val > m {
                m = val;
                best = row + v;
            }
        }
    }
    best
}

fn pool_fwd<T: WithDType>(x: &[T], g: Geom) -> Vec<T> {
    let mut out = crate::cpu::zeros::<T>(g.planes * g.ho * g.wo);
    out.par_chunks_mut(g.ho * g.wo).enumerate().for_each(|(p, o)| {
        let plane = &x[p * g.h * g.w..(p + 1) * g.h * g.w];
        for i in 0..g.ho {
            for j in 0..g.wo {
                o[i * g.wo + j] = plane[argmax(plane, &g, i, j)];
            }
        }
    });
    out
}

fn scatter<T: WithDType>(x: &[T], grad: &[T], g: Geom) -> Vec<T> {
    let mut out = crate::cpu::zeros::<T>(g.planes * g.h * g.w);
    out.par_chunks_mut(g.h * g.w).enumerate().for_each(|(p, o)| {
        let plane = &x[p * g.h * g.w..(p + 1) * g.h * g.w];
        let gp = &grad[p * g.ho * g.wo..(p + 1) * g.ho * g.wo];
        for i in 0..g.ho {
            for j in 0..g.wo {
                o[argmax(plane, &g, i, j)] = gp[i * g.wo + j];
            }
        }
    });
    out
}

fn gather<T: WithDType>(x: &[T], big: &[T], g: Geom) -> Vec<T> {
    let mut out = crate::cpu::zeros::<T>(g.planes * g.ho * g.wo);
    out.par_chunks_mut(g.ho * g.wo).enumerate().for_each(|(p, o)| {
        let plane = &x[p * g.h * g.w..(p + 1) * g.h * g.w];
        let bp = &big[p * g.h * g.w..(p + 1) * g.h * g.w];
        for i in 0..g.ho {
            for j in 0..g.wo {
                o[i * g.wo + j] = bp[argmax(plane, &g, i, j)];
            }
        }
    });
    out
}

struct MaxPool {
    k: usize,
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "secateur-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = Geom::of(l, self.k)?;
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(pool_fwd(contiguous::<f32>(s, l, "input")?, g)),
            CpuStorage::F64(_) => CpuStorage::F64(pool_fwd(contiguous::<f64>(s, l, "input")?, g)),
            _ => candle_core::bail!("max pool: only f32 and f64 are supported on the CPU"),
        };
        Ok((out, g.out_shape(l)?))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.contiguous()?
                .apply_op2(&grad.contiguous()?, Scatter { k: self.k })?,
        ))
    }
}

struct Scatter {
    k: usize,
}

impl CustomOp2 for Scatter {
    fn name(&self) -> &'static str {
        "secateur-max-pool2d-scatter"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = Geom::of(l1, self.k)?;
        if l2.shape() != &g.out_shape(l1)? {
            candle_core::bail!(
                "max pool scatter: gradient {:?} does not match input {:?}",
                l2.shape(),
                l1.shape()
            );
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(scatter(
                contiguous::<f32>(s1, l1, "input")?,
                contiguous::<f32>(s2, l2, "gradient")?,
                g,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(scatter(
                contiguous::<f64>(s1, l1, "input")?,
                contiguous::<f64>(s2, l2, "gradient")?,
                g,
            )),
            _ => candle_core::bail!("max pool scatter: unsupported or mixed dtypes"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _g: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((
            None,
            Some(x.contiguous()?.apply_op2(&grad.contiguous()?, Gather { k: self.k })?),
        ))
    }
}

struct Gather {
    k: usize,
}

impl CustomOp2 for Gather {
    fn name(&self) -> &'static str {
        "secateur-max-pool2d-gather"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = Geom::of(l1, self.k)?;
        if l2.shape() != l1.shape() {
            candle_core::bail!(
                "max pool gather: {:?} does not match input {:?}",
                l2.shape(),
                l1.shape()
            );
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(gather(
                contiguous::<f32>(s1, l1, "input")?,
                contiguous::<f32>(s2, l2, "tensor")?,
                g,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(gather(
                contiguous::<f64>(s1, l1, "input")?,
                contiguous::<f64>(s2, l2, "tensor")?,
                g,
            )),
            _ => candle_core::bail!("max pool gather: unsupported or mixed dtypes"),
        };
        Ok((out, g.out_shape(l1)?))
    }

    fn bwd(&self, x: &Tensor, _big: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((
            None,
            Some(x.contiguous()?.apply_op2(&grad.contiguous()?, Scatter { k: self.k })?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn reference(x: &Tensor, k: usize) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let (ho, wo) = (h / k, w / k);
        x.narrow(2, 0, ho * k)?
            .narrow(3, 0, wo * k)?
            .contiguous()?
            .reshape((b, c, ho, k, wo, k))?
            .max(5)?
            .max(3)
    }

    fn input(shape: (usize, usize, usize, usize), dtype: DType) -> Result<Tensor> {
        // distinct values (no ties), deterministic: a permutation-like sequence
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let v: Vec<f64> = (0..n).map(|i| ((i * 7919) % 10007) as f64 / 1000.0 - 5.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)
    }

    #[test]
    fn forward_matches_reductions_on_odd_shapes() -> Result<()> {
        for (shape, k) in [
            ((2, 3, 9, 13), 2),
            ((1, 1, 7, 7), 3),
            ((3, 2, 4, 4), 2),
            ((1, 2, 5, 6), 5),
        ] {
            let x = input(shape, DType::F32)?;
            let a: Vec<f32> = max_pool2d(&x, k)?.flatten_all()?.to_vec1()?;
            let b: Vec<f32> = reference(&x, k)?.flatten_all()?.to_vec1()?;
            assert_eq!(a, b, "{shape:?} k={k}");
        }
        Ok(())
    }

    #[test]
    fn gradient_goes_to_the_first_maximum() -> Result<()> {
        // one 2×2 window with a tie between positions 1 and 2: PyTorch sends the gradient to 1.
        let x = Var::new(&[[[[1f32, 3.], [3., 0.]]]], &Device::Cpu)?;
        let y = max_pool2d(x.as_tensor(), 2)?;
        let g = (y * 5.0)?.sum_all()?.backward()?;
        let gx: Vec<f32> = g.get(x.as_tensor()).expect("grad").flatten_all()?.to_vec1()?;
        assert_eq!(gx, vec![0., 5., 0., 0.]);
        Ok(())
    }

    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        let x = Var::from_tensor(&input((2, 2, 6, 7), DType::F64)?)?;
        let wts = input((2, 2, 3, 3), DType::F64)?;
        let f = |t: &Tensor| -> Result<f64> { (max_pool2d(t, 2)? * &wts)?.sum_all()?.to_scalar::<f64>() };
        let grads = (max_pool2d(x.as_tensor(), 2)? * &wts)?.sum_all()?.backward()?;
        let g: Vec<f64> = grads.get(x.as_tensor()).expect("grad").flatten_all()?.to_vec1()?;
        let base: Vec<f64> = x.as_tensor().flatten_all()?.to_vec1()?;
        let eps = 1e-4; // smaller than the gap between distinct inputs (1e-3), so the arg-max is stable
        for (i, gi) in g.iter().enumerate() {
            let mut p = base.clone();
            p[i] += eps;
            let mut m = base.clone();
            m[i] -= eps;
            let tp = Tensor::from_vec(p, (2, 2, 6, 7), &Device::Cpu)?;
            let tm = Tensor::from_vec(m, (2, 2, 6, 7), &Device::Cpu)?;
            let fd = (f(&tp)? - f(&tm)?) / (2.0 * eps);
            assert!((fd - gi).abs() < 1e-6, "entry {i}: fd {fd} vs {gi}");
        }
        Ok(())
    }

    /// `relu(pool(x)) = pool(relu(x))`, value and gradient, bit for bit, on an input with ties,
    /// zeros and windows whose entries are all ≤ 0 (the reordering LeNet-5 relies on).
    #[test]
    fn relu_commutes_with_max_pool() -> Result<()> {
        use crate::activation::relu;
        let v: Vec<f64> = (0..2 * 3 * 6 * 7).map(|i| ((i * 37) % 13) as f64 - 9.0).collect();
        let x = Var::from_vec(v, (2, 3, 6, 7), &Device::Cpu)?;
        let w = input((2, 3, 3, 3), DType::F64)?;
        let a = relu(&max_pool2d(x.as_tensor(), 2)?)?;
        let b = max_pool2d(&relu(x.as_tensor())?, 2)?;
        let (av, bv): (Vec<f64>, Vec<f64>) = (a.flatten_all()?.to_vec1()?, b.flatten_all()?.to_vec1()?);
        assert_eq!(av, bv);
        assert!(av.contains(&0.0) && av.iter().any(|&t| t > 0.0));
        let ga = (a * &w)?.sum_all()?.backward()?;
        let gb = (b * &w)?.sum_all()?.backward()?;
        let ga: Vec<f64> = ga.get(x.as_tensor()).expect("grad").flatten_all()?.to_vec1()?;
        let gb: Vec<f64> = gb.get(x.as_tensor()).expect("grad").flatten_all()?.to_vec1()?;
        assert_eq!(ga, gb);
        Ok(())
    }

    #[test]
    fn scatter_and_gather_are_adjoint() -> Result<()> {
        // <Scatter(x, g), G> = <g, Gather(x, G)> for any g, G: the pair is a linear map and its transpose.
        let x = input((2, 3, 6, 6), DType::F64)?;
        let g = input((2, 3, 3, 3), DType::F64)?.sin()?;
        let big = input((2, 3, 6, 6), DType::F64)?.cos()?;
        let lhs = (x.apply_op2(&g, Scatter { k: 2 })? * &big)?
            .sum_all()?
            .to_scalar::<f64>()?;
        let rhs = (x.apply_op2(&big, Gather { k: 2 })? * &g)?
            .sum_all()?
            .to_scalar::<f64>()?;
        assert!((lhs - rhs).abs() < 1e-12, "{lhs} vs {rhs}");
        Ok(())
    }
}
