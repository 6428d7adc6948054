//! ReLU and the residual `relu(a + b)` as custom ops that use both cores, closed under
//! differentiation.
//!
//! `relu(x) = max(x, 0)`; its derivative is the mask `[x > 0]` (0 at 0, as PyTorch). The
//! backward is `Mask(y, g) = g ⊙ [y > 0]` with `y` the op's output (`y > 0 ⟺ x > 0`), which is
//! linear in `g` and piecewise constant in `y`: its own backward is `Mask(y, h)` for `g` and zero
//! (almost everywhere) for `y`, so double backpropagation works. `add_relu(a, b) = relu(a + b)`
//! (the end of a residual block, He et al. 2016) fuses the sum with the activation; both inputs
//! receive `Mask(y, g)`.

use crate::cpu::{contiguous, map1, map2};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType};

/// `max(x, 0)`, on both cores on the CPU (candle's ReLU elsewhere).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && is_float(x) {
        x.contiguous()?.apply_op1(Relu)
    } else {
        x.relu()
    }
}

/// `relu(a + b)` for `a`, `b` of one shape (falls back to candle's broadcasting ops otherwise).
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.device().is_cpu() && is_float(a) && a.dims() == b.dims() && a.dtype() == b.dtype() {
        a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
    } else {
        a.broadcast_add(b)?.relu()
    }
}

/// `g ⊙ [y > 0]`, the gradient through a ReLU whose output is `y` (the `Mask` op on the CPU,
/// differentiable as the module notes say; candle's ops elsewhere).
pub(crate) fn relu_mask(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    if y.device().is_cpu() && is_float(y) && y.dims() == g.dims() && y.dtype() == g.dtype() {
        y.contiguous()?.apply_op2(&g.contiguous()?, Mask)
    } else {
        g * y.gt(0.0)?.to_dtype(g.dtype())?
    }
}

fn is_float(x: &Tensor) -> bool {
    matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
}

#[inline]
fn pos<T: WithDType>(v: T) -> T {
    if v > T::zero() {
        v
    } else {
        T::zero()
    }
}

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "secateur-relu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(map1(contiguous::<f32>(s, l, "relu", "input")?, pos)),
            CpuStorage::F64(_) => CpuStorage::F64(map1(contiguous::<f64>(s, l, "relu", "input")?, pos)),
            _ => candle_core::bail!("relu: only f32 and f64 are supported"),
        };
        Ok((out, l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2(&g.contiguous()?, Mask)?))
    }
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "secateur-add-relu"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("add_relu: shapes {:?} and {:?} differ", l1.shape(), l2.shape());
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(map2(
                contiguous::<f32>(s1, l1, "relu", "a")?,
                contiguous::<f32>(s2, l2, "relu", "b")?,
                |a, b| pos(a + b),
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(map2(
                contiguous::<f64>(s1, l1, "relu", "a")?,
                contiguous::<f64>(s2, l2, "relu", "b")?,
                |a, b| pos(a + b),
            )),
            _ => candle_core::bail!("add_relu: only f32 and f64 (not mixed) are supported"),
        };
        Ok((out, l1.shape().clone()))
    }
    fn bwd(&self, _a: &Tensor, _b: &Tensor, res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let m = res.apply_op2(&g.contiguous()?, Mask)?;
        Ok((Some(m.clone()), Some(m)))
    }
}

/// `(y, g) ↦ g ⊙ [y > 0]`.
struct Mask;

impl CustomOp2 for Mask {
    fn name(&self) -> &'static str {
        "secateur-relu-mask"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("relu mask: shapes {:?} and {:?} differ", l1.shape(), l2.shape());
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(map2(
                contiguous::<f32>(s1, l1, "relu", "output")?,
                contiguous::<f32>(s2, l2, "relu", "gradient")?,
                |y, g| if y > 0.0 { g } else { 0.0 },
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(map2(
                contiguous::<f64>(s1, l1, "relu", "output")?,
                contiguous::<f64>(s2, l2, "relu", "gradient")?,
                |y, g| if y > 0.0 { g } else { 0.0 },
            )),
            _ => candle_core::bail!("relu mask: only f32 and f64 (not mixed) are supported"),
        };
        Ok((out, l1.shape().clone()))
    }
    fn bwd(&self, y: &Tensor, _g: &Tensor, _res: &Tensor, h: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Linear in g; piecewise constant (zero derivative almost everywhere) in y.
        Ok((None, Some(y.apply_op2(&h.contiguous()?, Mask)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn seq(n: usize, a: f64, b: f64) -> Result<Tensor> {
        let v: Vec<f64> = (0..n).map(|i| ((i as f64) * a + b).sin()).collect();
        Tensor::from_vec(v, n, &Device::Cpu)
    }

    #[test]
    fn values_and_gradients_match_candles_ops() -> Result<()> {
        let n = 40_000; // several parallel chunks
        let a = Var::from_tensor(&seq(n, 0.37, 0.1)?)?;
        let b = Var::from_tensor(&seq(n, 0.11, 2.0)?)?;
        let r = seq(n, 0.53, 1.0)?;
        let ours = (add_relu(&a, &b)? * &r)?.sum_all()?;
        let theirs = ((a.as_tensor() + b.as_tensor())?.relu()? * &r)?.sum_all()?;
        assert_eq!(ours.to_scalar::<f64>()?, theirs.to_scalar::<f64>()?);
        let (go, gt) = (ours.backward()?, theirs.backward()?);
        for v in [&a, &b] {
            let d = (go.get(v).expect("ours") - gt.get(v).expect("theirs"))?.abs()?.max(0)?;
            assert_eq!(d.to_scalar::<f64>()?, 0.0);
        }
        let single = (relu(&a)? * &r)?.sum_all()?.backward()?;
        let reference = (a.as_tensor().relu()? * &r)?.sum_all()?.backward()?;
        let d = (single.get(&a).expect("ours") - reference.get(&a).expect("theirs"))?
            .abs()?
            .max(0)?;
        assert_eq!(d.to_scalar::<f64>()?, 0.0);
        let x32 = a.as_tensor().to_dtype(DType::F32)?;
        let d = (relu(&x32)? - x32.relu()?)?.abs()?.max(0)?.to_scalar::<f32>()?;
        assert_eq!(d, 0.0);
        Ok(())
    }

    /// Second order: for `L = Σ q ⊙ relu(a + b)²`, the Hessian-vector product by double
    /// backpropagation equals `2 q ⊙ M ⊙ (v_a + v_b)` for both inputs (`M` the active mask).
    #[test]
    fn hessian_vector_products_are_exact() -> Result<()> {
        if !crate::double_backprop::run_test_in_child(concat!(module_path!(), "::hessian_vector_products_are_exact")) {
            return Ok(());
        }
        std::thread::spawn(|| -> Result<()> {
            let n = 50;
            let a = Var::from_tensor(&seq(n, 0.37, 0.1)?)?;
            let b = Var::from_tensor(&seq(n, 0.11, 2.0)?)?;
            let q = seq(n, 0.53, 1.0)?;
            let (va, vb) = (seq(n, 0.7, 0.3)?, seq(n, 0.2, 0.9)?);
            let y = add_relu(&a, &b)?;
            let g = (y.sqr()? * &q)?.sum_all()?.backward()?;
            let dot = ((g.get(&a).expect("ga") * &va)?.sum_all()? + (g.get(&b).expect("gb") * &vb)?.sum_all()?)?;
            let h = dot.backward()?;
            let mask = (a.as_tensor() + b.as_tensor())?.gt(0.0)?.to_dtype(DType::F64)?;
            let want = ((((&va + &vb)? * &q)? * &mask)? * 2.0)?;
            for v in [&a, &b] {
                let d = (h.get(v).expect("hv") - &want)?.abs()?.max(0)?.to_scalar::<f64>()?;
                assert!(d < 1e-12, "{d}");
            }
            Ok(())
        })
        .join()
        .expect("thread")
    }
}
