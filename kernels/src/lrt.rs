//! Fused local-reparameterisation convolution and linear layer (Kingma, Salimans & Welling 2015).
//!
//! With a factorised Gaussian posterior `w ~ N(μ, s²)` on the weights, the pre-activations are
//! Gaussian with
//!
//! ```text
//! mean = conv(x, μ),    var = conv(x², s²)
//! ```
//!
//! and a layer samples `mean + √var ⊙ ε`. Computing both with two separate convolutions packs
//! (im2col) `x` twice and materialises `x²`; [`lrt_conv2d`] packs each sample once, multiplies the
//! packed columns with `μ`, squares them in place and multiplies with `s²`.
//!
//! Design: a custom op returns a single tensor, so [`LrtConv2dOp`] returns `[2, N, O, OH, OW]`
//! (mean first, then variance) and [`lrt_conv2d_fused`] hands back `out.get(0)` and `out.get(1)`,
//! which are contiguous views. [`lrt_conv2d`] uses it when no gradient is tracked and two
//! separate convolutions otherwise (candle's backward of the split is slower than the saving;
//! see its notes). Its backward, with upstream `(G_m, G_v)`, is
//!
//! ```text
//! dx  = InputGrad(G_m, μ) + 2x ⊙ InputGrad(G_v, s²)
//! dμ  = WeightGrad(x, G_m),        ds² = WeightGrad(x², G_v)
//! ```
//!
//! where the pair `(dμ, ds²)` is one fused op, [`LrtWeightGradOp`] (again one packing of `x` per
//! sample, squared in place for the second product), returning `[2, O, C/G, KH, KW]`. Both ops
//! are closed under differentiation: the backward of `LrtWeightGrad(x, G)` with upstream
//! `(H_μ, H_s)` is `dx = InputGrad(G_m, H_μ) + 2x ⊙ InputGrad(G_v, H_s)` and
//! `dG = LrtConv(x, H_μ, H_s)`, so Hessian-vector products by double backpropagation work.
//!
//! The linear version ([`lrt_linear`]) is two matrix products, `x μᵀ` and `x² (s²)ᵀ`: the two
//! products share no operand (one reads `x`, the other `x²`), so there is no packing to share,
//! and [`crate::matmul::matmul_bt`] runs the `gemm` crate on all cores (skipping the gradient of
//! `x` when it tracks none).

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::conv::{
    contiguous, conv2d_input_grad, conv2d_with, fast_path, im2col, matmul, matmul_col_major_dst, reduce_in_order,
    untranspose_groups, wgrad_chunk, ConvParams, Elem, Geom,
};

/// Fused `[2, N, O, OH, OW]` output of `(conv(x, μ), conv(x², s²))` for `x: [N, C, H, W]`,
/// `μ, s²: [O, C/G, KH, KW]`.
#[derive(Clone, Copy, Debug)]
pub struct LrtConv2dOp {
    /// Convolution parameters.
    pub params: ConvParams,
}

/// Fused weight gradients `[2, O, C/G, KH, KW] = (WeightGrad(x, G_m), WeightGrad(x², G_v))` for
/// `x: [N, C, H, W]` and `G = (G_m, G_v): [2, N, O, OH, OW]`.
#[derive(Clone, Copy, Debug)]
pub struct LrtWeightGradOp {
    /// Convolution parameters.
    pub params: ConvParams,
    /// Kernel spatial size `(KH, KW)`.
    pub kernel_hw: (usize, usize),
}

fn dims(l: &Layout) -> &[usize] {
    l.dims()
}

fn d4(d: &[usize], what: &str) -> Result<(usize, usize, usize, usize)> {
    match *d {
        [a, b, c, e] => Ok((a, b, c, e)),
        _ => bail!("{what}: expected a rank-4 tensor, got shape {d:?}"),
    }
}

fn lrt_fwd_cpu<T: Elem>(x: &[T], mu: &[T], s2: &[T], g: &Geom) -> Vec<T> {
    let (k, pix, og, cg) = (g.k(), g.pix(), g.og(), g.cg());
    let xs = g.c * g.h * g.w;
    let ys = g.o * pix;
    let mut out = vec![T::ZERO; 2 * g.n * ys];
    if ys == 0 {
        return out;
    }
    let (mean, var) = out.split_at_mut(g.n * ys);
    mean.par_chunks_mut(ys)
        .zip(var.par_chunks_mut(ys))
        .enumerate()
        .for_each_init(
            || vec![T::ZERO; k * pix],
            |cols, (ni, (mn, vn))| {
                let xn = &x[ni * xs..(ni + 1) * xs];
                for gi in 0..g.p.groups {
                    let xg = &xn[gi * cg * g.h * g.w..(gi + 1) * cg * g.h * g.w];
                    let wr = gi * og * k..(gi + 1) * og * k;
                    let yr = gi * og * pix..(gi + 1) * og * pix;
                    if g.is_pointwise() {
                        matmul_col_major_dst(pix, og, k, &mut mn[yr.clone()], xg, 1, pix, &mu[wr.clone()], 1, k);
                        for (c, &v) in cols.iter_mut().zip(xg) {
                            *c = v * v;
                        }
                    } else {
                        im2col(xg, cols, g);
                        matmul_col_major_dst(pix, og, k, &mut mn[yr.clone()], cols, 1, pix, &mu[wr.clone()], 1, k);
                        for c in cols.iter_mut() {
                            *c = *c * *c;
                        }
                    }
                    matmul_col_major_dst(pix, og, k, &mut vn[yr], cols, 1, pix, &s2[wr], 1, k);
                }
            },
        );
    out
}

fn lrt_wgrad_cpu<T: Elem>(x: &[T], gr: &[T], g: &Geom) -> Vec<T> {
    let (k, pix, og, cg) = (g.k(), g.pix(), g.og(), g.cg());
    let xs = g.c * g.h * g.w;
    let ys = g.o * pix;
    let len = g.o * k;
    let (gm, gv) = gr.split_at(g.n * ys);
    let chunk = wgrad_chunk(g.n);
    let starts: Vec<usize> = (0..g.n).step_by(chunk).collect();
    let parts: Vec<Vec<T>> = starts
        .par_iter()
        .map(|&start| {
            let mut acc = vec![T::ZERO; 2 * len];
            let mut cols = vec![T::ZERO; k * pix];
            for ni in start..(start + chunk).min(g.n) {
                let xn = &x[ni * xs..(ni + 1) * xs];
                for gi in 0..g.p.groups {
                    let xg = &xn[gi * cg * g.h * g.w..(gi + 1) * cg * g.h * g.w];
                    if g.is_pointwise() {
                        cols.copy_from_slice(xg);
                    } else {
                        im2col(xg, &mut cols, g);
                    }
                    let yr = ni * ys + gi * og * pix..ni * ys + (gi + 1) * og * pix;
                    let (am, av) = acc.split_at_mut(len);
                    let ar = gi * og * k..(gi + 1) * og * k;
                    // accumulated transposed, as in the plain weight gradient
                    matmul(
                        k,
                        og,
                        pix,
                        &mut am[ar.clone()],
                        true,
                        &cols,
                        pix,
                        1,
                        &gm[yr.clone()],
                        1,
                        pix,
                    );
                    for c in cols.iter_mut() {
                        *c = *c * *c;
                    }
                    matmul(k, og, pix, &mut av[ar], true, &cols, pix, 1, &gv[yr], 1, pix);
                }
            }
            acc
        })
        .collect();
    let acc_t = reduce_in_order(parts, 2 * len);
    let (m, v) = acc_t.split_at(len);
    let mut out = untranspose_groups(m, g);
    out.extend(untranspose_groups(v, g));
    out
}

impl CustomOp3 for LrtConv2dOp {
    fn name(&self) -> &'static str {
        "secateur-lrt-conv2d"
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
        let g = Geom::new(
            d4(dims(l1), "lrt input")?,
            d4(dims(l2), "lrt mean kernel")?,
            self.params,
        )?;
        if l2.dims() != l3.dims() {
            bail!(
                "lrt conv2d: mean kernel {:?} and variance kernel {:?} differ",
                l2.dims(),
                l3.dims()
            )
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(a), CpuStorage::F32(b), CpuStorage::F32(c)) => CpuStorage::F32(lrt_fwd_cpu(
                &contiguous(a, l1),
                &contiguous(b, l2),
                &contiguous(c, l3),
                &g,
            )),
            (CpuStorage::F64(a), CpuStorage::F64(b), CpuStorage::F64(c)) => CpuStorage::F64(lrt_fwd_cpu(
                &contiguous(a, l1),
                &contiguous(b, l2),
                &contiguous(c, l3),
                &g,
            )),
            _ => bail!(
                "lrt conv2d: the CPU kernel supports f32 and f64, got {:?}, {:?}, {:?}",
                s1.dtype(),
                s2.dtype(),
                s3.dtype()
            ),
        };
        Ok((out, Shape::from((2, g.n, g.o, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        mu: &Tensor,
        s2: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, _, kh, kw) = mu.dims4()?;
        let dx = lrt_input_grad(x, grad, mu, s2, self.params)?;
        let dw = lrt_weight_grad(x, grad, self.params, (kh, kw))?;
        Ok((Some(dx), Some(dw.get(0)?), Some(dw.get(1)?)))
    }
}

impl LrtWeightGradOp {
    fn geom(&self, x: &[usize], g: &[usize]) -> Result<Geom> {
        let (n, c, h, w) = d4(x, "lrt weight grad input")?;
        let [two, n2, o, oh, ow] = *g else {
            bail!("lrt weight grad: expected a [2, N, O, OH, OW] gradient, got {g:?}")
        };
        let gr = self.params.groups;
        if c % gr != 0 {
            bail!("lrt weight grad: input channels {c} not divisible by {gr} groups")
        }
        let geom = Geom::new(
            (n, c, h, w),
            (o, c / gr, self.kernel_hw.0, self.kernel_hw.1),
            self.params,
        )?;
        if two != 2 || n2 != n || (geom.oh, geom.ow) != (oh, ow) {
            bail!(
                "lrt weight grad: input {x:?} and gradient {g:?} do not match kernel size {:?} \
                 (expected [2, {n}, {o}, {}, {}])",
                self.kernel_hw,
                geom.oh,
                geom.ow
            )
        }
        Ok(geom)
    }
}

impl CustomOp2 for LrtWeightGradOp {
    fn name(&self) -> &'static str {
        "secateur-lrt-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.geom(l1.dims(), l2.dims())?;
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                CpuStorage::F32(lrt_wgrad_cpu(&contiguous(a, l1), &contiguous(b, l2), &g))
            }
            (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                CpuStorage::F64(lrt_wgrad_cpu(&contiguous(a, l1), &contiguous(b, l2), &g))
            }
            _ => bail!(
                "lrt weight grad: the CPU kernel supports f32 and f64, got {:?}, {:?}",
                s1.dtype(),
                s2.dtype()
            ),
        };
        Ok((out, Shape::from((2, g.o, g.cg(), g.kh, g.kw))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        grad_out: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (h_mu, h_s2) = (grad.get(0)?, grad.get(1)?);
        let dx = lrt_input_grad(x, grad_out, &h_mu, &h_s2, self.params)?;
        let dg = lrt_stacked(x, &h_mu, &h_s2, self.params)?;
        Ok((Some(dx), Some(dg)))
    }
}

/// `dx = InputGrad(G_m, μ) + 2x ⊙ InputGrad(G_v, s²)` for `G = (G_m, G_v): [2, N, O, OH, OW]`.
fn lrt_input_grad(x: &Tensor, g: &Tensor, mu: &Tensor, s2: &Tensor, p: ConvParams) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let dm = conv2d_input_grad(&g.get(0)?, mu, p, (h, w))?;
    let dv = conv2d_input_grad(&g.get(1)?, s2, p, (h, w))?;
    dm + (x * 2.0)?.mul(&dv)?
}

/// `(WeightGrad(x, G_m), WeightGrad(x², G_v))` stacked as `[2, O, C/G, KH, KW]`.
fn lrt_weight_grad(x: &Tensor, g: &Tensor, p: ConvParams, khw: (usize, usize)) -> Result<Tensor> {
    let op = LrtWeightGradOp {
        params: p,
        kernel_hw: khw,
    };
    if fast_path(x, g) {
        op.geom(x.dims(), g.dims())?;
        x.contiguous()?.apply_op2_arc(&g.contiguous()?, Arc::new(Box::new(op)))
    } else {
        let dm = crate::conv::conv2d_weight_grad(x, &g.get(0)?, p, khw)?;
        let dv = crate::conv::conv2d_weight_grad(&x.sqr()?, &g.get(1)?, p, khw)?;
        Tensor::stack(&[dm, dv], 0)
    }
}

/// `(conv(x, μ), conv(x², s²))` stacked as `[2, N, O, OH, OW]`.
fn lrt_stacked(x: &Tensor, mu: &Tensor, s2: &Tensor, p: ConvParams) -> Result<Tensor> {
    let g = Geom::new(x.dims4()?, mu.dims4()?, p)?;
    if mu.dims() != s2.dims() {
        bail!(
            "lrt conv2d: mean kernel {:?} and variance kernel {:?} differ",
            mu.dims(),
            s2.dims()
        )
    }
    let _ = g;
    if fast_path(x, mu) && mu.dtype() == s2.dtype() {
        x.contiguous()?.apply_op3_arc(
            &mu.contiguous()?,
            &s2.contiguous()?,
            Arc::new(Box::new(LrtConv2dOp { params: p })),
        )
    } else {
        Tensor::stack(&[conv2d_with(x, mu, p)?, conv2d_with(&x.sqr()?, s2, p)?], 0)
    }
}

/// Local-reparameterisation convolution: for `x: [N, C, H, W]` and the posterior mean `μ` and
/// variance `s²` (both `[O, C/G, KH, KW]`), returns `(conv(x, μ), conv(x², s²))`, each
/// `[N, O, OH, OW]`. Differentiable (twice) in `x`, `μ` and `s²`.
///
/// When no argument tracks gradients (evaluation, Monte Carlo prediction) this is
/// [`lrt_conv2d_fused`]; otherwise it is two of secateur's convolutions, because candle's backward
/// of the split of the fused `[2, …]` output (`narrow` → zero-padded `cat` → `add`, single-threaded
/// over the full output) costs more than the second packing saves (measured: LeNet-5 first conv,
/// batch 128, forward + backward 24.6 ms fused vs 6.9 ms as two convolutions).
pub fn lrt_conv2d(x: &Tensor, mu: &Tensor, s2: &Tensor, params: ConvParams) -> Result<(Tensor, Tensor)> {
    if x.track_op() || mu.track_op() || s2.track_op() {
        if mu.dims() != s2.dims() {
            bail!(
                "lrt conv2d: mean kernel {:?} and variance kernel {:?} differ",
                mu.dims(),
                s2.dims()
            )
        }
        Ok((conv2d_with(x, mu, params)?, conv2d_with(&x.sqr()?, s2, params)?))
    } else {
        lrt_conv2d_fused(x, mu, s2, params)
    }
}

/// Fused local-reparameterisation convolution: `(conv(x, μ), conv(x², s²))` as the two halves of
/// one [`LrtConv2dOp`] output `[2, N, O, OH, OW]` (one packing of `x` per sample on CPU, f32/f64;
/// two candle convolutions elsewhere). Differentiable (twice) in `x`, `μ` and `s²`.
pub fn lrt_conv2d_fused(x: &Tensor, mu: &Tensor, s2: &Tensor, params: ConvParams) -> Result<(Tensor, Tensor)> {
    let out = lrt_stacked(x, mu, s2, params)?;
    Ok((out.get(0)?, out.get(1)?))
}

/// Local-reparameterisation linear layer: for `x: [B, I]`, `μ, s²: [O, I]`, returns
/// `(x μᵀ, x² (s²)ᵀ)`, each `[B, O]` (two matrix products; see the module notes).
pub fn lrt_linear(x: &Tensor, mu: &Tensor, s2: &Tensor) -> Result<(Tensor, Tensor)> {
    if mu.dims() != s2.dims() || mu.rank() != 2 || x.rank() != 2 || x.dim(1)? != mu.dim(1)? {
        bail!(
            "lrt linear: input {:?}, mean {:?} and variance {:?} do not match (need [B, I], [O, I], [O, I])",
            x.dims(),
            mu.dims(),
            s2.dims()
        )
    }
    let mean = crate::matmul::matmul_bt(x, mu)?;
    let var = crate::matmul::matmul_bt(&x.sqr()?, s2)?;
    Ok((mean, var))
}
