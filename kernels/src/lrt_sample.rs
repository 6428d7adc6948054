//! The local-reparameterisation draw `y = m + √(v + c) ⊙ ε` (Kingma, Salimans & Welling 2015) as
//! one custom op, closed under differentiation.
//!
//! A Gaussian-weight layer with local reparameterisation computes the pre-activation mean `m` and
//! variance `v` and draws `y = m + √(v + c) ⊙ ε` with `ε ~ N(0, I)` per output element (`c` a small
//! floor that keeps the square root differentiable at `v = 0`). As candle ops that is four passes
//! over the output forward (`+ c`, `√`, `⊙ ε`, `m +`) and, backward, a gradient per node (each
//! accumulated into a fresh zero tensor) plus the gradient of the constant `ε` that candle's
//! `mul` computes anyway. [`LrtSampleOp`] is one pass forward. Its backward, with upstream `G`:
//!
//! ```text
//! ∂/∂m = G,    ∂/∂v = G ⊙ ε / (2√(v + c)) = VarGrad(G, v, ε),    ∂/∂ε = G ⊙ √(v + c)
//! ```
//!
//! each only for an operand that tracks gradients. `VarGrad(a, v, b) = a ⊙ b / (2√(v + c))` is
//! itself a custom op, symmetric in `a` and `b`, whose derivatives are
//! `∂/∂a = VarGrad(H, v, b)`, `∂/∂b = VarGrad(H, v, a)` and
//! `∂/∂v = −H ⊙ a ⊙ b / (4 (v + c)^{3/2})` (candle ops), so Hessian-vector products by double
//! backpropagation work.

use crate::cpu::{contiguous, CHUNK};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::sync::Arc;

/// `m + √(v + c) ⊙ ε` for tensors `m`, `v`, `ε` of one shape and a floor `c ≥ 0`; differentiable
/// (to any order) in all three. On the CPU (f32/f64, one dtype) it is [`LrtSampleOp`]; elsewhere
/// candle's ops.
pub fn lrt_sample(mean: &Tensor, var: &Tensor, eps: &Tensor, floor: f64) -> Result<Tensor> {
    check(mean, var, eps, floor, "lrt sample")?;
    if fast(mean, var, eps) {
        mean.contiguous()?.apply_op3_arc(
            &var.contiguous()?,
            &eps.contiguous()?,
            Arc::new(Box::new(LrtSampleOp { floor })),
        )
    } else {
        mean + ((var + floor)?.sqrt()? * eps)?
    }
}

/// `a ⊙ b / (2√(v + c))`: the gradient of [`lrt_sample`] with respect to `v` (with `a` the
/// upstream gradient and `b = ε`); differentiable (to any order).
pub fn lrt_var_grad(a: &Tensor, var: &Tensor, b: &Tensor, floor: f64) -> Result<Tensor> {
    check(a, var, b, floor, "lrt variance gradient")?;
    if fast(a, var, b) {
        a.contiguous()?.apply_op3_arc(
            &var.contiguous()?,
            &b.contiguous()?,
            Arc::new(Box::new(LrtVarGradOp { floor })),
        )
    } else {
        ((a * b)? / ((var + floor)?.sqrt()? * 2.0)?)?.contiguous()
    }
}

fn check(a: &Tensor, v: &Tensor, b: &Tensor, floor: f64, what: &str) -> Result<()> {
    if a.dims() != v.dims() || b.dims() != v.dims() {
        bail!(
            "{what}: operands of shapes {:?}, {:?} and {:?} differ",
            a.dims(),
            v.dims(),
            b.dims()
        )
    }
    if !(floor >= 0.0 && floor.is_finite()) {
        bail!("{what}: the variance floor must be finite and ≥ 0, got {floor}")
    }
    Ok(())
}

fn fast(a: &Tensor, v: &Tensor, b: &Tensor) -> bool {
    let dt = v.dtype();
    a.device().is_cpu() && a.dtype() == dt && b.dtype() == dt && matches!(dt, DType::F32 | DType::F64)
}

/// The custom op behind [`lrt_sample`] on the CPU.
#[derive(Clone, Copy, Debug)]
pub struct LrtSampleOp {
    /// The variance floor `c`.
    pub floor: f64,
}

/// The custom op behind [`lrt_var_grad`] on the CPU.
#[derive(Clone, Copy, Debug)]
pub struct LrtVarGradOp {
    /// The variance floor `c`.
    pub floor: f64,
}

/// `f(a[i], v[i], b[i])` elementwise, in parallel.
fn map3<T: WithDType>(a: &[T], v: &[T], b: &[T], f: impl Fn(f64, f64, f64) -> f64 + Sync) -> Vec<T> {
    let mut out = crate::cpu::zeros::<T>(v.len());
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(v.par_chunks(CHUNK).zip(b.par_chunks(CHUNK))))
        .for_each(|(o, (a, (v, b)))| {
            for (o, ((&a, &v), &b)) in o.iter_mut().zip(a.iter().zip(v).zip(b)) {
                *o = T::from_f64(f(a.to_f64(), v.to_f64(), b.to_f64()));
            }
        });
    out
}

#[allow(clippy::too_many_arguments)]
fn cpu_map3(
    name: &str,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    s3: &CpuStorage,
    l3: &Layout,
    f: impl Fn(f64, f64, f64) -> f64 + Sync,
) -> Result<(CpuStorage, Shape)> {
    let out = match (s1, s2, s3) {
        (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(map3(
            contiguous::<f32>(s1, l1, name, "first operand")?,
            contiguous::<f32>(s2, l2, name, "variance")?,
            contiguous::<f32>(s3, l3, name, "third operand")?,
            f,
        )),
        (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(map3(
            contiguous::<f64>(s1, l1, name, "first operand")?,
            contiguous::<f64>(s2, l2, name, "variance")?,
            contiguous::<f64>(s3, l3, name, "third operand")?,
            f,
        )),
        _ => bail!(
            "{name}: the CPU kernel supports f32 and f64 (all operands alike), got {:?}, {:?} and {:?}",
            s1.dtype(),
            s2.dtype(),
            s3.dtype()
        ),
    };
    Ok((out, l2.shape().clone()))
}

impl CustomOp3 for LrtSampleOp {
    fn name(&self) -> &'static str {
        "secateur-lrt-sample"
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
        let c = self.floor;
        cpu_map3(self.name(), s1, l1, s2, l2, s3, l3, move |m, v, e| {
            m + (v + c).sqrt() * e
        })
    }

    fn bwd(
        &self,
        mean: &Tensor,
        var: &Tensor,
        eps: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = mean.track_op().then(|| g.clone());
        let dv = var
            .track_op()
            .then(|| lrt_var_grad(g, var, eps, self.floor))
            .transpose()?;
        let de = eps.track_op().then(|| g * (var + self.floor)?.sqrt()?).transpose()?;
        Ok((dm, dv, de))
    }
}

impl CustomOp3 for LrtVarGradOp {
    fn name(&self) -> &'static str {
        "secateur-lrt-var-grad"
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
        let c = self.floor;
        cpu_map3(self.name(), s1, l1, s2, l2, s3, l3, move |a, v, b| {
            a * b / (2.0 * (v + c).sqrt())
        })
    }

    fn bwd(
        &self,
        a: &Tensor,
        var: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        h: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = self.floor;
        let da = a.track_op().then(|| lrt_var_grad(h, var, b, c)).transpose()?;
        let db = b.track_op().then(|| lrt_var_grad(h, var, a, c)).transpose()?;
        let dv = var
            .track_op()
            .then(|| ((h * a)? * b)? * ((var + c)?.powf(-1.5)? * -0.25)?)
            .transpose()?;
        Ok((da, dv, db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(n: usize, seed: f64, shift: f64) -> Tensor {
        let v: Vec<f64> = (0..n).map(|i| (i as f64 * 0.61 + seed).sin() + shift).collect();
        Tensor::from_vec(v, (n / 5, 5), &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Value and the gradients of all three operands against candle's composition.
    #[test]
    fn matches_the_composition() -> Result<()> {
        let n = 5 * 7;
        let (m, v, e) = (
            Var::from_tensor(&t(n, 0.1, 0.0))?,
            Var::from_tensor(&t(n, 0.7, 1.2))?,
            Var::from_tensor(&t(n, 1.9, 0.0))?,
        );
        let w = t(n, 2.3, 0.0);
        let c = 1e-3;
        let ours = lrt_sample(m.as_tensor(), v.as_tensor(), e.as_tensor(), c)?;
        let theirs = (m.as_tensor() + ((v.as_tensor() + c)?.sqrt()? * e.as_tensor())?)?;
        assert!(max_diff(&ours, &theirs) < 1e-14);
        let go = (ours * &w)?.sum_all()?.backward()?;
        let gt = (theirs * &w)?.sum_all()?.backward()?;
        for (name, x) in [("mean", &m), ("var", &v), ("eps", &e)] {
            let d = max_diff(go.get(x).unwrap(), gt.get(x).unwrap());
            assert!(d < 1e-13, "d{name} differs by {d}");
        }
        Ok(())
    }

    /// The constant noise gets no gradient.
    #[test]
    fn constant_noise_gets_no_gradient() -> Result<()> {
        let n = 10;
        let v = Var::from_tensor(&t(n, 0.3, 1.5))?;
        let e = t(n, 0.9, 0.0);
        let g = lrt_sample(&t(n, 0.2, 0.0), v.as_tensor(), &e, 1e-16)?
            .sum_all()?
            .backward()?;
        assert!(g.get(&e).is_none());
        assert!(g.get(v.as_tensor()).is_some());
        Ok(())
    }

    #[test]
    fn refuses_bad_input() {
        let a = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((5, 2), DType::F32, &Device::Cpu).unwrap();
        let e = lrt_sample(&a, &a, &b, 0.0).unwrap_err().to_string();
        assert!(e.contains("[2, 5]") && e.contains("[5, 2]"), "{e}");
        let e = lrt_sample(&a, &a, &a, -1.0).unwrap_err().to_string();
        assert!(e.contains("floor"), "{e}");
    }
}
