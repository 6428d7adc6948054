//! Per-channel bias `y[n, c, …] = x[n, c, …] + b[c]` as custom ops, closed under differentiation.
//!
//! The forward is one parallel pass. The gradient is `∂L/∂x = g` and
//! `∂L/∂b[c] = Σ_{n, …} g[n, c, …]`, a per-channel sum ([`channel_sum`]); its own derivative is
//! the broadcast of the incoming `[C]` gradient back to the input's shape, a candle op, so double
//! backpropagation works. candle's `broadcast_add` has the same forward, but its backward sums
//! over the broadcast axes with a strided single-threaded reduction that took about a third of a
//! LeNet-5 training step (the bias gradients of the two convolutions, 602k and 205k entries per
//! batch of 128).
//!
//! The channel sums accumulate in f64 over blocks whose size does not depend on the thread
//! count, added in a fixed order, so results are bit-identical across runs and thread counts.

use crate::cpu::contiguous;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Entries per parallel task (at least).
const TASK: usize = 1 << 14;

/// `x + b` with `b: [C]` added along axis 1 of `x: [N, C, …]` (rank ≥ 2): the bias of a linear
/// layer (`[N, C]`) or a convolution (`[N, C, H, W]`). Custom ops on the CPU (f32/f64), candle's
/// `broadcast_add` elsewhere.
pub fn add_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (c, _) = geometry(x.dims(), b.dims())?;
    if x.device().is_cpu() && float_pair(x, b) {
        x.contiguous()?.apply_op2(&b.contiguous()?, BiasAdd)
    } else {
        let mut shape = vec![1; x.rank()];
        shape[1] = c;
        x.broadcast_add(&b.reshape(shape)?)
    }
}

/// `s[c] = Σ_{n, …} g[n, c, …]` for `g: [N, C, …]` (rank ≥ 2), returning `[C]`: the bias gradient.
/// Differentiable (its derivative broadcasts back).
pub fn channel_sum(g: &Tensor) -> Result<Tensor> {
    if g.rank() < 2 {
        candle_core::bail!("channel sum: input must have rank ≥ 2, got {:?}", g.dims());
    }
    if g.device().is_cpu() && matches!(g.dtype(), DType::F32 | DType::F64) {
        g.contiguous()?.apply_op1(ChannelSum)
    } else {
        let mut axes: Vec<usize> = vec![0];
        axes.extend(2..g.rank());
        g.sum(axes)
    }
}

/// `(C, inner)`: channels and entries per (sample, channel), checking `b: [C]`.
fn geometry(x: &[usize], b: &[usize]) -> Result<(usize, usize)> {
    if x.len() < 2 {
        candle_core::bail!("bias: input must have rank ≥ 2 ([N, C, …]), got {x:?}");
    }
    if b != [x[1]] {
        candle_core::bail!("bias: input {x:?} has {} channels but the bias has shape {b:?}", x[1]);
    }
    Ok((x[1], x[2..].iter().product()))
}

fn float_pair(x: &Tensor, b: &Tensor) -> bool {
    x.dtype() == b.dtype() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// Whole samples per task: at least one, about [`TASK`] entries.
fn rows_per_task(row: usize) -> usize {
    TASK.div_ceil(row.max(1)).max(1)
}

fn add<T: WithDType>(x: &[T], b: &[T], inner: usize) -> Vec<T> {
    let row = b.len() * inner;
    let mut out = x.to_vec();
    if row == 0 {
        return out;
    }
    out.par_chunks_mut(row * rows_per_task(row)).for_each(|rows| {
        for r in rows.chunks_mut(row) {
            if inner == 1 {
                r.iter_mut().zip(b).for_each(|(o, &bc)| *o += bc);
            } else {
                for (plane, &bc) in r.chunks_mut(inner).zip(b) {
                    plane.iter_mut().for_each(|o| *o += bc);
                }
            }
        }
    });
    out
}

fn sums<T: WithDType>(g: &[T], c: usize, inner: usize) -> Vec<T> {
    let row = c * inner;
    if row == 0 {
        return vec![T::zero(); c];
    }
    let per = rows_per_task(row);
    let partial: Vec<Vec<f64>> = g
        .par_chunks(row * per)
        .map(|rows| {
            let mut acc = vec![0f64; c];
            for r in rows.chunks(row) {
                if inner == 1 {
                    acc.iter_mut().zip(r).for_each(|(a, &v)| *a += v.to_f64());
                } else {
                    for (a, plane) in acc.iter_mut().zip(r.chunks(inner)) {
                        *a += plane.iter().fold(0f64, |s, &v| s + v.to_f64());
                    }
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0f64; c];
    for p in &partial {
        total.iter_mut().zip(p).for_each(|(t, &v)| *t += v);
    }
    total.into_iter().map(T::from_f64).collect()
}

struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "secateur-bias-add"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, inner) = geometry(l1.dims(), l2.dims())?;
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(add(
                contiguous::<f32>(s1, l1, "bias", "input")?,
                contiguous::<f32>(s2, l2, "bias", "bias")?,
                inner,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(add(
                contiguous::<f64>(s1, l1, "bias", "input")?,
                contiguous::<f64>(s2, l2, "bias", "bias")?,
                inner,
            )),
            _ => candle_core::bail!("bias: only f32 and f64 (not mixed) are supported"),
        };
        Ok((out, l1.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, b: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // only the operands that carry a gradient (a constant's would be computed and stored
        // for nothing)
        let dx = x.track_op().then(|| g.clone());
        let db = if b.track_op() { Some(channel_sum(g)?) } else { None };
        Ok((dx, db))
    }
}

struct ChannelSum;

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "secateur-channel-sum"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = l.dims();
        if d.len() < 2 {
            candle_core::bail!("channel sum: input must have rank ≥ 2, got {d:?}");
        }
        let (c, inner) = (d[1], d[2..].iter().product::<usize>());
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(sums(contiguous::<f32>(s, l, "bias", "gradient")?, c, inner)),
            CpuStorage::F64(_) => CpuStorage::F64(sums(contiguous::<f64>(s, l, "bias", "gradient")?, c, inner)),
            _ => candle_core::bail!("channel sum: only f32 and f64 are supported"),
        };
        Ok((out, Shape::from(c)))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let mut shape = vec![1; x.rank()];
        shape[1] = x.dim(1)?;
        Ok(Some(g.reshape(shape)?.broadcast_as(x.shape())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn seq(shape: &[usize], scale: f64, dt: DType) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|i| ((i * 37 % 101) as f64 - 50.0) * scale).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap().to_dtype(dt).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Forward and both gradients against candle's broadcast ops, for linear and conv shapes
    /// (including more samples than one task holds).
    #[test]
    fn matches_candle_broadcast_add_and_sum() {
        for shape in [
            vec![5, 3],
            vec![2, 3, 4, 5],
            vec![300, 7],
            vec![64, 6, 28, 28],
            vec![1, 1, 1],
        ] {
            let c = shape[1];
            let x = Var::from_tensor(&seq(&shape, 0.01, DType::F64)).unwrap();
            let b = Var::from_tensor(&seq(&[c], 0.1, DType::F64)).unwrap();
            let w = seq(&shape, 0.003, DType::F64);
            let y = add_bias(x.as_tensor(), b.as_tensor()).unwrap();
            let mut bshape = vec![1; shape.len()];
            bshape[1] = c;
            let y_ref = x
                .as_tensor()
                .broadcast_add(&b.as_tensor().reshape(bshape).unwrap())
                .unwrap();
            assert!(max_diff(&y, &y_ref) == 0.0, "{shape:?} forward");
            let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = (y_ref * &w).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(
                max_diff(g.get(&x).unwrap(), g_ref.get(&x).unwrap()) == 0.0,
                "{shape:?} dx"
            );
            let (gb, gb_ref) = (g.get(&b).unwrap(), g_ref.get(&b).unwrap());
            assert!(max_diff(gb, gb_ref) < 1e-12, "{shape:?} db {gb} vs {gb_ref}");
        }
    }

    /// Second order: `L = Σ w ⊙ (x + b)² ` has `∂²L/∂b∂x = 2w` summed per channel; the
    /// double-backprop Hessian-vector product matches central differences of the gradient.
    #[test]
    fn hessian_vector_product_matches_finite_differences() {
        if !crate::double_backprop::run_test_in_child(concat!(
            module_path!(),
            "::hessian_vector_product_matches_finite_differences"
        )) {
            return;
        }
        std::thread::spawn(|| {
            let shape = [3, 4, 2, 5];
            let x0 = seq(&shape, 0.02, DType::F64);
            let b0 = seq(&[4], 0.3, DType::F64);
            let w = seq(&shape, 0.01, DType::F64);
            let (vx, vb) = (seq(&shape, 0.005, DType::F64), seq(&[4], -0.07, DType::F64));
            let grads = |x0: &Tensor, b0: &Tensor| -> (Var, Var, candle_core::backprop::GradStore) {
                let (x, b) = (Var::from_tensor(x0).unwrap(), Var::from_tensor(b0).unwrap());
                let y = add_bias(x.as_tensor(), b.as_tensor()).unwrap();
                let g = (y.sqr().unwrap() * &w).unwrap().sum_all().unwrap().backward().unwrap();
                (x, b, g)
            };
            let (x, b, g) = grads(&x0, &b0);
            let gv = ((g.get(&x).unwrap() * &vx).unwrap().sum_all().unwrap()
                + (g.get(&b).unwrap() * &vb).unwrap().sum_all().unwrap())
            .unwrap();
            let h = gv.backward().unwrap();
            let eps = 1e-6;
            let shifted = |s: f64| {
                let (x, b, g) = grads(
                    &(&x0 + (&vx * (s * eps)).unwrap()).unwrap(),
                    &(&b0 + (&vb * (s * eps)).unwrap()).unwrap(),
                );
                (g.get(&x).unwrap().clone(), g.get(&b).unwrap().clone())
            };
            let ((px, pb), (mx, mb)) = (shifted(1.0), shifted(-1.0));
            let fdx = ((px - mx).unwrap() / (2.0 * eps)).unwrap();
            let fdb = ((pb - mb).unwrap() / (2.0 * eps)).unwrap();
            assert!(max_diff(h.get(&x).unwrap(), &fdx) < 1e-7);
            assert!(max_diff(h.get(&b).unwrap(), &fdb) < 1e-7);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn f32_sums_are_identical_across_thread_counts() {
        let g = seq(&[128, 6, 28, 28], 1e-3, DType::F32);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| channel_sum(&g).unwrap().to_vec1::<f32>().unwrap());
        let two = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
            .install(|| channel_sum(&g).unwrap().to_vec1::<f32>().unwrap());
        assert_eq!(one, two);
    }

    #[test]
    fn mismatched_bias_is_an_error() {
        let x = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let e = add_bias(&x, &b).unwrap_err().to_string();
        assert!(e.contains("3 channels"), "{e}");
    }
}
