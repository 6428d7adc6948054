//! The inner product `⟨a, b⟩ = Σ_i a_i b_i` of two tensors of one shape, as a custom op whose
//! backward computes only the gradients that are needed.
//!
//! A Hessian-vector product by double backpropagation, `Hv = ∇_θ ⟨∇_θ L, v⟩` (Pearlmutter 1994),
//! starts from this scalar. Written as `(g * v).sum_all()` in candle it costs, per parameter
//! tensor, a broadcast of the upstream scalar, two products (candle's `mul` backward computes
//! the gradient of the constant probe `v` too) and two zero-initialised accumulations.
//! [`InnerOp`]'s backward is `∂/∂a = s · b` (and `∂/∂b = s · a`) for the upstream scalar `s`, only
//! for operands that track gradients, one pass each.
//!
//! On the CPU (f32/f64) the sum runs on rayon's pool in fixed blocks accumulated in f64 and added
//! in order, so it does not depend on the thread count; elsewhere it is `(a * b).sum_all()`.

use crate::cpu::{contiguous, CHUNK};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// `Σ_i a_i b_i`, a scalar (rank 0) of the operands' dtype; differentiable (to any order).
pub fn inner(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() {
        bail!(
            "inner product: operands of shapes {:?} and {:?} differ",
            a.dims(),
            b.dims()
        )
    }
    let fast = a.device().is_cpu() && a.dtype() == b.dtype() && matches!(a.dtype(), DType::F32 | DType::F64);
    if fast {
        a.contiguous()?.apply_op2(&b.contiguous()?, InnerOp)
    } else {
        (a * b)?.sum_all()
    }
}

/// The custom op behind [`inner`] on the CPU.
#[derive(Clone, Copy, Debug)]
pub struct InnerOp;

fn dot<T: WithDType>(a: &[T], b: &[T]) -> T {
    let parts: Vec<f64> = a
        .par_chunks(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .map(|(a, b)| a.iter().zip(b).fold(0f64, |s, (&x, &y)| s + x.to_f64() * y.to_f64()))
        .collect();
    T::from_f64(parts.iter().sum())
}

/// `s · t` for a scalar tensor `s`: an affine map when `s` carries no gradient (one pass), a
/// broadcast product when it does (third-order derivatives).
fn scale(t: &Tensor, s: &Tensor) -> Result<Tensor> {
    if s.track_op() {
        t.broadcast_mul(s)
    } else {
        t.affine(s.to_dtype(DType::F64)?.to_scalar::<f64>()?, 0.0)
    }
}

impl CustomOp2 for InnerOp {
    fn name(&self) -> &'static str {
        "secateur-inner"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(vec![dot(
                contiguous::<f32>(s1, l1, "inner product", "left operand")?,
                contiguous::<f32>(s2, l2, "inner product", "right operand")?,
            )]),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(vec![dot(
                contiguous::<f64>(s1, l1, "inner product", "left operand")?,
                contiguous::<f64>(s2, l2, "inner product", "right operand")?,
            )]),
            _ => bail!(
                "inner product: the CPU kernel supports f32 and f64 (both operands alike), got {:?} and {:?}",
                s1.dtype(),
                s2.dtype()
            ),
        };
        Ok((out, Shape::from(())))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let da = if a.track_op() { Some(scale(b, g)?) } else { None };
        let db = if b.track_op() { Some(scale(a, g)?) } else { None };
        Ok((da, db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn fill(n: usize, seed: f64) -> Vec<f64> {
        (0..n).map(|i| (i as f64 * 0.37 + seed).sin()).collect()
    }

    #[test]
    fn value_and_gradients_match_the_elementwise_form() -> Result<()> {
        // Longer than one parallel chunk, so several blocks are summed.
        let n = 3 * CHUNK + 17;
        let a = Var::from_vec(fill(n, 0.1), n, &Device::Cpu)?;
        let b = Tensor::from_vec(fill(n, 2.3), n, &Device::Cpu)?;
        let ours = inner(a.as_tensor(), &b)?;
        let theirs = (a.as_tensor() * &b)?.sum_all()?;
        let (x, y) = (ours.to_scalar::<f64>()?, theirs.to_scalar::<f64>()?);
        assert!((x - y).abs() < 1e-9 * (1.0 + y.abs()), "{x} vs {y}");
        // d⟨a, b⟩/da = b; the constant b gets no gradient.
        let g = (ours * 3.0)?.backward()?;
        let ga = g.get(a.as_tensor()).unwrap();
        let d = (ga - (&b * 3.0)?)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(d < 1e-12, "gradient differs by {d}");
        assert!(g.get(&b).is_none());
        Ok(())
    }

    #[test]
    fn f32_is_accumulated_in_f64() -> Result<()> {
        // 1e8 + 1 − 1e8: an f32 running sum loses the 1 (1e8 + 1 rounds to 1e8 in f32).
        let a = Tensor::new(&[1e8f32, 1.0, -1e8], &Device::Cpu)?;
        let ones = Tensor::ones(3, DType::F32, &Device::Cpu)?;
        assert_eq!(inner(&a, &ones)?.to_scalar::<f32>()?, 1.0);
        Ok(())
    }

    #[test]
    fn refuses_different_shapes() {
        let a = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
        let e = inner(&a, &b).unwrap_err().to_string();
        assert!(e.contains("[2, 3]") && e.contains("[3, 2]"), "{e}");
    }
}
