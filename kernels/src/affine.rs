//! A per-channel affine map with an optional ReLU, `y[n, c, …] = act(s[c] · x[n, c, …] + t[c])`,
//! as a custom op closed under differentiation: batch norm in evaluation mode, whose running
//! statistics fold into `s = γ / √(σ²_run + ε)` and `t = β − μ_run · s` (Ioffe & Szegedy 2015,
//! §3.1), followed by the ReLU of a convolution block.
//!
//! The forward is one parallel pass over memory, each plane's loop compiled for AVX2 where the
//! CPU has it. Written as candle's `broadcast_mul`, `broadcast_add` and a ReLU it was three
//! passes, the first two on candle's generic broadcasting loop: 12% of a ResNet-20 forward pass
//! in evaluation mode on the 2-core Intel Xeon (`perf`), and 15% of one at a quarter of its FLOPs
//! after structured pruning, since half of its batch norms are at the residual-sum width, which
//! pruning keeps. The
//! product and the sum are rounded as those two ops round them (a multiply, then an add; no fused
//! multiply-add), so the outputs are the same bits.
//!
//! With `M = [y > 0]` (all ones without the ReLU) and `g' = M ⊙ g` for the upstream gradient `g`:
//! `∂L/∂x = s ⊙ g'` (this op again, with `t = 0` and no ReLU), `∂L/∂s[c] = Σ g' x` and
//! `∂L/∂t[c] = Σ g'` over the other axes (`crate::bias::channel_sum`), each built from
//! differentiable ops, so Hessian-vector products pass through it.

use crate::activation::relu_mask;
use crate::bias::channel_sum;
use crate::cpu::contiguous;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use std::mem::MaybeUninit;

/// Entries per parallel task (at least).
const TASK: usize = 1 << 14;

/// `act(s[c] x + t[c])` along axis 1 of `x: [N, C, …]` (rank ≥ 2), `s` and `t` of shape `[C]`,
/// `act` the ReLU when `relu`. One custom op on the CPU (f32/f64, all three alike); candle's
/// broadcasting ops elsewhere. See the module notes.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[1f32, -2.0], [3.0, 4.0]], &Device::Cpu)?;
/// let s = Tensor::new(&[2f32, 0.5], &Device::Cpu)?;
/// let t = Tensor::new(&[-1f32, 0.0], &Device::Cpu)?;
/// let y = secateur_kernels::affine::channel_affine(&x, &s, &t, true)?;
/// assert_eq!(y.to_vec2::<f32>()?, vec![vec![1.0, 0.0], vec![5.0, 2.0]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn channel_affine(x: &Tensor, s: &Tensor, t: &Tensor, relu: bool) -> Result<Tensor> {
    let (c, _) = geometry(x.dims(), s.dims(), t.dims())?;
    let same = x.dtype() == s.dtype() && x.dtype() == t.dtype();
    if x.device().is_cpu() && same && matches!(x.dtype(), DType::F32 | DType::F64) {
        return x
            .contiguous()?
            .apply_op3(&s.contiguous()?, &t.contiguous()?, ChannelAffine { relu });
    }
    let mut shape = vec![1; x.rank()];
    shape[1] = c;
    let y = x
        .broadcast_mul(&s.reshape(shape.clone())?)?
        .broadcast_add(&t.reshape(shape)?)?;
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

/// `(C, inner)`: channels and entries per (sample, channel), checking `s`, `t` of shape `[C]`.
fn geometry(x: &[usize], s: &[usize], t: &[usize]) -> Result<(usize, usize)> {
    if x.len() < 2 {
        candle_core::bail!("channel affine: input must have rank ≥ 2 ([N, C, …]), got {x:?}");
    }
    if s != [x[1]] || t != [x[1]] {
        candle_core::bail!(
            "channel affine: input {x:?} has {} channels but the scale has shape {s:?} and the shift {t:?}",
            x[1]
        );
    }
    Ok((x[1], x[2..].iter().product()))
}

/// The loop of one run of entries that share a channel's `(s, t)`.
#[inline(always)]
fn plane<T: WithDType, const RELU: bool>(o: &mut [MaybeUninit<T>], x: &[T], s: T, t: T) {
    let z = T::zero();
    for (o, &x) in o.iter_mut().zip(x) {
        let v = s * x + t;
        o.write(if !RELU || v > z { v } else { z });
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn plane_avx2<T: WithDType, const RELU: bool>(o: &mut [MaybeUninit<T>], x: &[T], s: T, t: T) {
    plane::<T, RELU>(o, x, s, t)
}

/// [`plane`] with AVX2 where the CPU has it (the same bits: no fused multiply-add is enabled).
#[inline(always)]
fn plane_wide<T: WithDType, const RELU: bool>(o: &mut [MaybeUninit<T>], x: &[T], s: T, t: T) {
    assert_eq!(o.len(), x.len(), "channel affine: plane lengths differ");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { plane_avx2::<T, RELU>(o, x, s, t) };
    }
    plane::<T, RELU>(o, x, s, t)
}

/// The forward pass over whole samples (`row = C · inner` entries each), in parallel.
fn forward<T: WithDType>(x: &[T], s: &[T], t: &[T], inner: usize, relu: bool) -> Vec<T> {
    let row = s.len() * inner;
    if row == 0 || x.is_empty() {
        return x.to_vec();
    }
    let rows = TASK.div_ceil(row).max(1);
    let fill = |i: usize, part: &mut [MaybeUninit<T>]| {
        let start = i * rows * row;
        for (r, out) in part.chunks_mut(row).enumerate() {
            let xr = &x[start + r * row..start + (r + 1) * row];
            if inner == 1 {
                // [N, C]: one entry per channel and row.
                for ((o, &xv), (&sc, &tc)) in out.iter_mut().zip(xr).zip(s.iter().zip(t)) {
                    let v = sc * xv + tc;
                    o.write(if !relu || v > T::zero() { v } else { T::zero() });
                }
            } else {
                for (c, (o, xp)) in out.chunks_mut(inner).zip(xr.chunks(inner)).enumerate() {
                    if relu {
                        plane_wide::<T, true>(o, xp, s[c], t[c]);
                    } else {
                        plane_wide::<T, false>(o, xp, s[c], t[c]);
                    }
                }
            }
        }
    };
    // SAFETY: every part is whole rows (the length is N · row), and each row's entries are all
    // written above (plane_wide asserts its lengths equal).
    unsafe { crate::cpu::filled(x.len(), rows * row, fill) }
}

/// The op behind [`channel_affine`] on the CPU.
struct ChannelAffine {
    relu: bool,
}

impl CustomOp3 for ChannelAffine {
    fn name(&self) -> &'static str {
        "secateur-channel-affine"
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
        let (_, inner) = geometry(l1.dims(), l2.dims(), l3.dims())?;
        let what = "channel affine";
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(forward(
                contiguous::<f32>(s1, l1, what, "input")?,
                contiguous::<f32>(s2, l2, what, "scale")?,
                contiguous::<f32>(s3, l3, what, "shift")?,
                inner,
                self.relu,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(forward(
                contiguous::<f64>(s1, l1, what, "input")?,
                contiguous::<f64>(s2, l2, what, "scale")?,
                contiguous::<f64>(s3, l3, what, "shift")?,
                inner,
                self.relu,
            )),
            _ => candle_core::bail!("channel affine: only f32 and f64 (all alike) are supported"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        s: &Tensor,
        t: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gp = if self.relu { relu_mask(res, g)? } else { g.clone() };
        let dx = x
            .track_op()
            .then(|| channel_affine(&gp, s, &t.zeros_like()?, false))
            .transpose()?;
        let ds = s.track_op().then(|| channel_sum(&(&gp * x)?)).transpose()?;
        let dt = t.track_op().then(|| channel_sum(&gp)).transpose()?;
        Ok((dx, ds, dt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::bits;
    use candle_core::{Device, Var};

    /// A fixed irregular fill (no RNG), with negatives so that the ReLU cuts.
    fn seq(shape: &[usize], a: f64, dt: DType) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|i| ((i as f64) * a + 0.3).sin() * 2.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap().to_dtype(dt).unwrap()
    }

    /// The composition it replaces: candle's broadcast multiply, broadcast add and ReLU.
    fn reference(x: &Tensor, s: &Tensor, t: &Tensor, relu: bool) -> Result<Tensor> {
        let mut shape = vec![1; x.rank()];
        shape[1] = x.dim(1)?;
        let y = x
            .broadcast_mul(&s.reshape(shape.clone())?)?
            .broadcast_add(&t.reshape(shape)?)?;
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }

    /// The same bits as the broadcast composition, for f32 and f64, with and without the ReLU,
    /// on `[N, C]` and on planes whose lengths leave every vector tail, over several tasks.
    #[test]
    fn equals_the_broadcast_composition_bit_for_bit() -> Result<()> {
        for dt in [DType::F32, DType::F64] {
            for shape in [vec![5usize, 3], vec![3, 4, 7, 7], vec![2, 3, 1, 1], vec![9, 16, 33]] {
                let c = shape[1];
                let x = seq(&shape, 0.37, dt);
                let s = seq(&[c], 1.3, dt);
                let t = seq(&[c], 0.7, dt);
                for relu in [false, true] {
                    let ours = channel_affine(&x, &s, &t, relu)?;
                    assert_eq!(ours.dims(), x.dims());
                    assert_eq!(
                        bits(&ours),
                        bits(&reference(&x, &s, &t, relu)?),
                        "{dt:?} {shape:?} relu {relu}"
                    );
                }
            }
        }
        Ok(())
    }

    /// Variables `x, s, t` (f64; `t` shifted so that no entry sits on the ReLU's kink), the
    /// weights `w` of the loss `Σ w ⊙ y²` (so that second derivatives are not all zero), and
    /// directions for Hessian-vector products.
    struct Case {
        vars: [Var; 3],
        w: Tensor,
        dirs: [Tensor; 3],
    }

    fn case() -> Result<Case> {
        let shape = [3usize, 4, 5, 5];
        Ok(Case {
            vars: [
                Var::from_tensor(&seq(&shape, 0.37, DType::F64))?,
                Var::from_tensor(&seq(&[4], 1.3, DType::F64))?,
                Var::from_tensor(&(seq(&[4], 0.7, DType::F64) + 0.0123)?)?,
            ],
            w: seq(&shape, 0.11, DType::F64),
            dirs: [
                seq(&shape, 0.23, DType::F64),
                seq(&[4], 0.5, DType::F64),
                seq(&[4], 0.9, DType::F64),
            ],
        })
    }

    /// `(∇L, H v)` of `L = Σ w ⊙ f(x, s, t)²` by (double) backpropagation; `H v` only when asked.
    fn grads(
        k: &Case,
        f: fn(&Tensor, &Tensor, &Tensor, bool) -> Result<Tensor>,
        relu: bool,
        second: bool,
    ) -> Result<Vec<Tensor>> {
        let [x, s, t] = &k.vars;
        let g = (f(x, s, t, relu)?.sqr()? * &k.w)?.sum_all()?.backward()?;
        let first: Vec<Tensor> = k.vars.iter().map(|v| g.get(v).expect("gradient").clone()).collect();
        if !second {
            return Ok(first);
        }
        let mut dot = Tensor::zeros((), DType::F64, &Device::Cpu)?;
        for (gv, d) in first.iter().zip(&k.dirs) {
            dot = (dot + (gv * d)?.sum_all()?)?;
        }
        let h = dot.backward()?;
        Ok(k.vars.iter().map(|v| h.get(v).expect("Hv").clone()).collect())
    }

    fn max_rel_diff(a: &[Tensor], b: &[Tensor]) -> Result<f64> {
        let mut worst = 0f64;
        for (a, b) in a.iter().zip(b) {
            let d = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
            let m = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
            assert!(m > 0.0, "a zero derivative compares nothing");
            worst = worst.max(d / m.max(1.0));
        }
        Ok(worst)
    }

    /// First derivatives in `x`, `s` and `t` equal autograd's of the broadcast composition.
    #[test]
    fn first_derivatives_match_autograd_of_the_composition() -> Result<()> {
        let k = case()?;
        for relu in [false, true] {
            let d = max_rel_diff(
                &grads(&k, channel_affine, relu, false)?,
                &grads(&k, reference, relu, false)?,
            )?;
            // f64: the same formulas, but the per-channel sums of ∂s and ∂t (75 terms each) are
            // added in another order than candle's reductions, so the two agree to a few ulps
            // (~1e-15 of the largest entry), not bit for bit; 1e-12 is that with room, and far
            // below what a wrong term would give (order 1).
            assert!(d < 1e-12, "relu {relu}: first derivatives differ by {d}");
        }
        Ok(())
    }

    /// Hessian-vector products by double backpropagation through it equal those through the
    /// composition (in a child process started with double backpropagation on).
    #[test]
    fn hessian_vector_products_match_the_composition() -> Result<()> {
        if !crate::double_backprop::run_test_in_child(concat!(
            module_path!(),
            "::hessian_vector_products_match_the_composition"
        )) {
            return Ok(());
        }
        let k = case()?;
        for relu in [false, true] {
            let d = max_rel_diff(
                &grads(&k, channel_affine, relu, true)?,
                &grads(&k, reference, relu, true)?,
            )?;
            // the bound of the test above, for the same reason
            assert!(d < 1e-12, "relu {relu}: Hessian-vector products differ by {d}");
        }
        Ok(())
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let x = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let c3 = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let c4 = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        assert!(channel_affine(&x, &c4, &c3, false).is_err());
        assert!(channel_affine(&x, &c3, &c4, false).is_err());
        assert!(channel_affine(&c3, &c3, &c3, false).is_err());
    }
}
