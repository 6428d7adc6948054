//! Matrix products `op(A) op(B)` (`op` the identity or the transpose) as a custom op whose
//! backward computes only the gradients that are needed, closed under differentiation.
//!
//! The gradients of `C = A B` with upstream `G` are `∂L/∂A = G Bᵀ` and `∂L/∂B = Aᵀ G`. candle's
//! own matmul backward computes both whatever the operands are, so the first layer of every
//! network also pays for the gradient of its input batch (for the MLP 784-300-100-10 that is
//! 42% of the backward's multiply-adds), and allocates a zero tensor to add it to. [`MatMulOp`]
//! skips the product of an operand that carries no gradient (`Tensor::track_op` is false: neither
//! a variable nor computed from one). The transposes are flags of the op, not graph nodes: a
//! linear layer's `x Wᵀ` ([`matmul_bt`]) sends its gradient straight to `W`, where
//! `x.matmul(&w.t())` passes it through a transpose node whose gradient candle accumulates
//! separately (a zero tensor and an addition the size of `W`, at each order). The gradients are
//! again [`MatMulOp`]s, so double backpropagation (Hessian-vector products, Pearlmutter 1994)
//! skips the same work in its second pass:
//!
//! ```text
//! C = op_a(A) op_b(B):   dA = G op_b(B)ᵀ  (or its transpose op_b(B) Gᵀ when op_a transposes)
//!                        dB = op_a(A)ᵀ G  (or Gᵀ op_a(A) when op_b transposes)
//! ```
//!
//! The CPU path (f32/f64) calls the `gemm` crate on the operands' own strides (transposed views
//! are not copied), on rayon's pool, as candle does; elsewhere these are candle's matmul.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType};
use std::sync::Arc;

/// `A B` for `A: [M, K]` and `B: [K, N]`, giving `[M, N]`; differentiable (to any order) in both.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    product(a, false, b, false)
}

/// `A Bᵀ` for `A: [M, K]` and `B: [N, K]`, giving `[M, N]`: a linear layer's `x Wᵀ` with the
/// weight in PyTorch's `[out, in]` layout. Differentiable (to any order) in both.
pub fn matmul_bt(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    product(a, false, b, true)
}

/// `op_a(A) op_b(B)`, `op` transposing when its flag is set.
fn product(a: &Tensor, ta: bool, b: &Tensor, tb: bool) -> Result<Tensor> {
    let (_, k) = oriented(a, ta)?;
    let (k2, _) = oriented(b, tb)?;
    if k != k2 {
        bail!(
            "matmul: operands {:?}{} and {:?}{} do not match (the inner dimensions {k} and {k2} differ)",
            a.dims(),
            if ta { "ᵀ" } else { "" },
            b.dims(),
            if tb { "ᵀ" } else { "" }
        )
    }
    let fast = a.device().is_cpu() && a.dtype() == b.dtype() && matches!(a.dtype(), DType::F32 | DType::F64);
    if fast {
        a.apply_op2_arc(b, Arc::new(Box::new(MatMulOp { ta, tb })))
    } else {
        let a = if ta { a.t()? } else { a.clone() };
        let b = if tb { b.t()? } else { b.clone() };
        a.matmul(&b)
    }
}

/// `(rows, cols)` of `op(x)`; an error unless `x` is a matrix.
fn oriented(x: &Tensor, t: bool) -> Result<(usize, usize)> {
    match x.dims() {
        [r, c] => Ok(if t { (*c, *r) } else { (*r, *c) }),
        d => bail!("matmul: operand of shape {d:?} is not a matrix"),
    }
}

/// The custom op behind [`matmul`] and [`matmul_bt`] on the CPU: `op_a(A) op_b(B)` with
/// `op_a = ᵀ` when `ta` (likewise `tb`). Backward as in the module notes.
#[derive(Clone, Copy, Debug)]
pub struct MatMulOp {
    /// Transpose the left operand.
    pub ta: bool,
    /// Transpose the right operand.
    pub tb: bool,
}

/// `(rows, cols, row stride, column stride, start offset)` of `op(x)` for a 2-D layout.
fn view(l: &Layout, t: bool) -> Result<(usize, usize, usize, usize, usize)> {
    match (l.dims(), l.stride()) {
        ([r, c], [rs, cs]) if t => Ok((*c, *r, *cs, *rs, l.start_offset())),
        ([r, c], [rs, cs]) => Ok((*r, *c, *rs, *cs, l.start_offset())),
        (d, _) => bail!("matmul: operand of shape {d:?} is not a matrix"),
    }
}

/// `(M, N)` of the product.
fn out_dims(l1: &Layout, ta: bool, l2: &Layout, tb: bool) -> Result<(usize, usize)> {
    let (m, _, _, _, _) = view(l1, ta)?;
    let (_, n, _, _, _) = view(l2, tb)?;
    Ok((m, n))
}

fn gemm_product<T: WithDType>(a: &[T], la: &Layout, ta: bool, b: &[T], lb: &Layout, tb: bool) -> Result<Vec<T>> {
    let (m, k, ars, acs, aoff) = view(la, ta)?;
    let (k2, n, brs, bcs, boff) = view(lb, tb)?;
    if k != k2 {
        bail!("matmul: operands [{m}, {k}] and [{k2}, {n}] do not match")
    }
    if m == 0 || n == 0 || k == 0 {
        return Ok(vec![T::zero(); m * n]);
    }
    // Not zeroed first: with `read_dst = false` gemm sets its α to 0 and never reads the
    // destination (in the gemm-common 0.19 source: its k = 0 case, the packed and "horizontal"
    // micro-kernels and the matrix–vector kernels store β·(A B), or zero, where α = 0), so every
    // entry is written, not combined with what was there. Zeroing cost a `memset` of every
    // product's output on the calling thread (`memset` was 5.8% of a gated LeNet-300-100 step's
    // samples on the 2-core AMD EPYC, most of it under the products).
    // `uninitialised_outputs_are_written_everywhere` checks it on every path's shapes.
    let mut dst: Vec<T> = Vec::with_capacity(m * n);
    let (a, b) = (&a[aoff..], &b[boff..]);
    // Every index gemm reads: a[i·ars + p·acs], b[p·brs + j·bcs] for i < m, p < k, j < n.
    if a.len() <= (m - 1) * ars + (k - 1) * acs || b.len() <= (k - 1) * brs + (n - 1) * bcs {
        bail!("matmul: operand storage is shorter than its layout")
    }
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the check above bounds every read; dst is m × n, row-major.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            acs as isize,
            ars as isize,
            b.as_ptr(),
            bcs as isize,
            brs as isize,
            T::zero(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
        // SAFETY: gemm wrote all m × n entries (see above); T is a plain float.
        dst.set_len(m * n);
    }
    Ok(dst)
}

impl CustomOp2 for MatMulOp {
    fn name(&self) -> &'static str {
        "secateur-matmul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (ta, tb) = (self.ta, self.tb);
        let shape = Shape::from(out_dims(l1, ta, l2, tb)?);
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(gemm_product(a, l1, ta, b, l2, tb)?),
            (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(gemm_product(a, l1, ta, b, l2, tb)?),
            _ => bail!(
                "matmul: the CPU kernel supports f32 and f64 (both operands alike), got {:?} and {:?}",
                s1.dtype(),
                s2.dtype()
            ),
        };
        Ok((out, shape))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _c: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (ta, tb) = (self.ta, self.tb);
        let da = if !a.track_op() {
            None
        } else if ta {
            Some(product(b, tb, g, true)?) // op_b(B) Gᵀ
        } else {
            Some(product(g, false, b, !tb)?) // G op_b(B)ᵀ
        };
        let db = if !b.track_op() {
            None
        } else if tb {
            Some(product(g, true, a, ta)?) // Gᵀ op_a(A)
        } else {
            Some(product(a, !ta, g, false)?) // op_a(A)ᵀ G
        };
        Ok((da, db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn det(seed: u64, shape: (usize, usize)) -> Tensor {
        // A fixed, irregular fill (no RNG needed): sin of a scrambled index.
        let n = shape.0 * shape.1;
        let v: Vec<f64> = (0..n)
            .map(|i| (i as f64 * 0.7 + seed as f64 * 1.3).sin() * 1.7)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The product's output is not zeroed before gemm writes it: with NaN left in the
    /// allocator's free lists, every path of gemm (matrix–vector with m = 1 or n = 1, the small
    /// "horizontal" kernels for m·n ≤ 256, the packed micro-kernels, transposed operands) gives
    /// the naive product and no NaN (a path that read its destination would turn 0·NaN into NaN).
    #[test]
    fn uninitialised_outputs_are_written_everywhere() {
        for (m, k, n) in [
            (1, 37, 19),
            (23, 41, 1),
            (1, 5, 1),
            (7, 9, 11),
            (16, 16, 16),
            (65, 130, 47),
            (128, 784, 300),
        ] {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let a = det(1, if ta { (k, m) } else { (m, k) }).to_dtype(DType::F32).unwrap();
                let b = det(2, if tb { (n, k) } else { (k, n) }).to_dtype(DType::F32).unwrap();
                drop(vec![f32::NAN; m * n]);
                let c: Vec<f32> = product(&a, ta, &b, tb)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let (av, bv): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (a.to_vec2().unwrap(), b.to_vec2().unwrap());
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|p| {
                                let x = if ta { av[p][i] } else { av[i][p] };
                                let y = if tb { bv[j][p] } else { bv[p][j] };
                                x as f64 * y as f64
                            })
                            .sum();
                        let got = c[i * n + j] as f64;
                        // f32 rounding of k products of size ≤ 1.7² grows like √k · 6e-8 · 2.9
                        // (about 5e-6 at k = 784); the bound, 3e-4 · √k, is 1,700 times that,
                        // while a destination that was read (0 · NaN) or left as it was gives NaN
                        // or garbage, which fail any bound
                        assert!(
                            (got - want).abs() < 3e-4 * (k as f64).sqrt(),
                            "({m}, {k}, {n}) ta={ta} tb={tb} [{i}, {j}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn matches_candle_on_strided_views() -> Result<()> {
        for &(m, k, n) in &[(1, 1, 1), (3, 5, 2), (7, 1, 4), (17, 33, 9)] {
            let a = det(1, (m, k));
            let bt = det(2, (n, k));
            // b as a transposed (non-contiguous) view; a as a narrow of a wider matrix.
            let wide = det(3, (m, k + 3));
            let a_view = wide.narrow(1, 2, k)?;
            for (x, y) in [(&a, bt.t()?), (&a_view, bt.t()?)] {
                let got = matmul(x, &y)?.to_vec2::<f64>()?;
                let want = x.matmul(&y)?.to_vec2::<f64>()?;
                for (gr, wr) in got.iter().zip(&want) {
                    for (g, w) in gr.iter().zip(wr) {
                        assert!((g - w).abs() <= 1e-12 * (1.0 + w.abs()), "{m}×{k}×{n}: {g} vs {w}");
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn f32_matches_f64() -> Result<()> {
        let (a, b) = (det(4, (6, 11)), det(5, (11, 3)));
        let c64 = matmul(&a, &b)?.to_vec2::<f64>()?;
        let c32 = matmul(&a.to_dtype(DType::F32)?, &b.to_dtype(DType::F32)?)?.to_vec2::<f32>()?;
        for (r64, r32) in c64.iter().zip(&c32) {
            for (x, y) in r64.iter().zip(r32) {
                assert!((x - *y as f64).abs() < 1e-5 * (1.0 + x.abs()));
            }
        }
        Ok(())
    }

    /// Every transpose flag, against candle's matmul of explicit transposes: value, and the
    /// gradients of both operands (which exercise every branch of the backward).
    #[test]
    fn transpose_flags_match_candle() -> Result<()> {
        let (m, k, n) = (4, 6, 3);
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let a = Var::from_tensor(&det(9, if ta { (k, m) } else { (m, k) }))?;
            let b = Var::from_tensor(&det(10, if tb { (n, k) } else { (k, n) }))?;
            let w = det(11, (m, n));
            let op = |x: &Tensor, t: bool| if t { x.t() } else { Ok(x.clone()) };
            let ours = (product(a.as_tensor(), ta, b.as_tensor(), tb)? * &w)?.sum_all()?;
            let theirs = (op(a.as_tensor(), ta)?.matmul(&op(b.as_tensor(), tb)?)? * &w)?.sum_all()?;
            let dv = (ours.to_scalar::<f64>()? - theirs.to_scalar::<f64>()?).abs();
            assert!(dv < 1e-12, "({ta}, {tb}): value differs by {dv}");
            let (go, gt) = (ours.backward()?, theirs.backward()?);
            for (name, v) in [("A", &a), ("B", &b)] {
                let d = (go.get(v).unwrap() - gt.get(v).unwrap())?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f64>()?;
                assert!(d < 1e-12, "({ta}, {tb}): d{name} differs by {d}");
            }
        }
        Ok(())
    }

    #[test]
    fn refuses_mismatched_operands() {
        let e = matmul(&det(1, (2, 3)), &det(2, (4, 2))).unwrap_err().to_string();
        assert!(e.contains("[2, 3]") && e.contains("[4, 2]"), "{e}");
    }

    /// Gradients against candle's matmul, and no gradient for a constant operand.
    #[test]
    fn gradients_match_candle_and_skip_constants() -> Result<()> {
        let a = Var::from_tensor(&det(6, (5, 4)))?;
        let b = det(7, (4, 3));
        let c = det(8, (5, 3));
        let ours = (matmul(a.as_tensor(), &b)? * &c)?.sum_all()?.backward()?;
        let theirs = (a.as_tensor().matmul(&b)? * &c)?.sum_all()?.backward()?;
        let (ga, gb) = (ours.get(a.as_tensor()).unwrap(), theirs.get(a.as_tensor()).unwrap());
        let d = (ga - gb)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(d < 1e-12, "dA differs by {d}");
        assert!(ours.get(&b).is_none(), "a constant operand got a gradient");
        // dA = C Bᵀ in closed form.
        let want = c.matmul(&b.t()?)?;
        let d = (ga - want)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(d < 1e-12, "dA differs from C Bᵀ by {d}");
        Ok(())
    }
}
