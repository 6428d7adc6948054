//! 2-D convolution as three candle custom ops that are closed under differentiation.
//!
//! With `x: [N, C, H, W]`, `w: [O, C/G, KH, KW]` (`G` groups), stride `s`, padding `p` and
//! dilation `d`, the convolution is
//!
//! ```text
//! y[n, o, i, j] = Σ_{c ∈ group(o), a, b} w[o, c, a, b] · x[n, c, i·s_h − p_h + a·d_h, j·s_w − p_w + b·d_w]
//! ```
//!
//! (zero outside the image). All three ops below are partial derivatives of the same trilinear
//! form `T(x, w, g) = ⟨conv(x, w), g⟩`:
//!
//! - [`Conv2dOp`]: `y = conv(x, w)` (`= ∂T/∂g`),
//! - [`Conv2dInputGrad`]: `dx = conv_transpose(dy, w)` (`= ∂T/∂x` at `g = dy`),
//! - [`Conv2dWeightGrad`]: `dw = Σ_n dy[n] ⊗ patches(x[n])` (`= ∂T/∂w` at `g = dy`).
//!
//! Hence every backward pass is again made of these three ops:
//!
//! | forward | upstream `G` | gradients |
//! |---|---|---|
//! | `y = conv(x, w)` | `G ~ y` | `dx = InputGrad(G, w)`, `dw = WeightGrad(x, G)` |
//! | `dx = InputGrad(dy, w)` | `G ~ x` | `d(dy) = conv(G, w)`, `dw = WeightGrad(G, dy)` |
//! | `dw = WeightGrad(x, dy)` | `G ~ w` | `dx = InputGrad(dy, G)`, `d(dy) = conv(x, G)` |
//!
//! so Hessian-vector products by double backpropagation work (with `CANDLE_GRAD_DO_NOT_DETACH=1`).
//!
//! CPU path: per sample and group, the input is packed (im2col) into a `[C/G·KH·KW, OH·OW]`
//! matrix and multiplied with the `gemm` crate, in parallel over the batch with rayon (one packing
//! buffer per worker). Where a sample's output plane is small (fewer than 64 pixels: VGG's 7×7,
//! 3×3 and 1×1 planes) several samples are packed side by side into one product
//! (`samples_per_product`), since `gemm` runs a product with a handful of columns far below
//! its rate. The input gradient multiplies `wᵀ · dy[n]` and scatters it back (col2im).
//! The weight gradient is accumulated per chunk of the batch (the chunking depends only on the
//! batch size, never on the thread count) and the chunk sums are added in chunk order, so results
//! are bit-identical from run to run. f32 and f64 run on the fast path; other dtypes, and every
//! non-CPU device (CUDA), use candle's own `conv2d` / `conv_transpose2d`.
//!
//! Small planes on the CPU: [`conv2d_with`] and [`conv2d_bias`] first cut kernel taps that read
//! only padding for every output pixel (a 3×3 kernel with padding 1 on a 1×1 plane keeps its
//! centre), then run a 1×1 kernel on 1×1 planes as a linear layer (`kernels::matmul`), and the
//! three ops run planes of at most 16 output pixels (one group) as one product per (output
//! pixel, live tap) with the batch as columns (`conv_taps`, private), which computes only the
//! multiply-adds that read the input. Larger f32 planes take a direct convolution where one
//! applies (AVX-512F): with the output channels in the vector lanes on planes of at most 256
//! pixels and 32, 48, 64, … channels (`conv_lanes`, private; stride 1, and stride 2 for the
//! forward and weight gradient of kernels larger than 1×1), with flat pixels in the lanes
//! otherwise (stride 1, `conv_direct`, private). [`f32_path_of`] says which path an op takes.

use std::borrow::Cow;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::{conv_direct, conv_lanes, conv_taps};

/// Stride, padding, dilation (as `(height, width)` pairs) and group count of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvParams {
    /// Stride `(s_h, s_w)`, both ≥ 1.
    pub stride: (usize, usize),
    /// Zero padding `(p_h, p_w)` on each side.
    pub padding: (usize, usize),
    /// Dilation `(d_h, d_w)`, both ≥ 1.
    pub dilation: (usize, usize),
    /// Number of groups `G` (≥ 1): `C` and `O` must be multiples of `G`.
    pub groups: usize,
}

impl ConvParams {
    /// Square parameters: the same stride, padding and dilation along height and width.
    pub fn new(stride: usize, padding: usize, dilation: usize, groups: usize) -> Self {
        Self {
            stride: (stride, stride),
            padding: (padding, padding),
            dilation: (dilation, dilation),
            groups,
        }
    }

    fn is_square(&self) -> bool {
        self.stride.0 == self.stride.1 && self.padding.0 == self.padding.1 && self.dilation.0 == self.dilation.1
    }

    fn check(&self) -> Result<()> {
        if self.stride.0 == 0 || self.stride.1 == 0 {
            bail!("conv2d: stride must be ≥ 1, got {:?}", self.stride)
        }
        if self.dilation.0 == 0 || self.dilation.1 == 0 {
            bail!("conv2d: dilation must be ≥ 1, got {:?}", self.dilation)
        }
        if self.groups == 0 {
            bail!("conv2d: groups must be ≥ 1")
        }
        Ok(())
    }

    /// Output size along one axis: `⌊(n + 2p − d(k − 1) − 1) / s⌋ + 1`, or `None` if the
    /// (dilated) kernel does not fit in the padded input.
    fn out_dim(n: usize, k: usize, s: usize, p: usize, d: usize) -> Option<usize> {
        let span = d * (k - 1) + 1;
        let padded = n + 2 * p;
        if k == 0 || padded < span {
            None
        } else {
            Some((padded - span) / s + 1)
        }
    }

    /// Output spatial size `(OH, OW)` for input `(h, w)` and kernel `(kh, kw)`.
    pub fn out_hw(&self, hw: (usize, usize), khw: (usize, usize)) -> Option<(usize, usize)> {
        Some((
            Self::out_dim(hw.0, khw.0, self.stride.0, self.padding.0, self.dilation.0)?,
            Self::out_dim(hw.1, khw.1, self.stride.1, self.padding.1, self.dilation.1)?,
        ))
    }
}

/// Full geometry of one convolution `x: [n, c, h, w] * w: [o, c/groups, kh, kw] -> [n, o, oh, ow]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub p: ConvParams,
}

impl Geom {
    /// Builds and validates the geometry; errors name the shapes.
    pub fn new(x: (usize, usize, usize, usize), w: (usize, usize, usize, usize), p: ConvParams) -> Result<Self> {
        p.check()?;
        let (n, c, h, wd) = x;
        let (o, cg, kh, kw) = w;
        if c != cg * p.groups || o % p.groups != 0 || o == 0 || cg == 0 {
            bail!(
                "conv2d: input [{n}, {c}, {h}, {wd}] and kernel [{o}, {cg}, {kh}, {kw}] do not match \
                 with {} groups (need C = kernel_C·groups and O divisible by groups)",
                p.groups
            )
        }
        let Some((oh, ow)) = p.out_hw((h, wd), (kh, kw)) else {
            bail!(
                "conv2d: kernel [{o}, {cg}, {kh}, {kw}] (dilation {:?}) larger than the padded \
                 input [{n}, {c}, {h}, {wd}] (padding {:?})",
                p.dilation,
                p.padding
            )
        };
        Ok(Self {
            n,
            c,
            h,
            w: wd,
            o,
            kh,
            kw,
            oh,
            ow,
            p,
        })
    }

    pub fn cg(&self) -> usize {
        self.c / self.p.groups
    }
    pub fn og(&self) -> usize {
        self.o / self.p.groups
    }
    /// Rows of the packed matrix: `C/G · KH · KW`.
    pub fn k(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
    /// Columns of the packed matrix: `OH · OW`.
    pub fn pix(&self) -> usize {
        self.oh * self.ow
    }
    pub fn x_shape(&self) -> Shape {
        Shape::from((self.n, self.c, self.h, self.w))
    }
    pub fn w_shape(&self) -> Shape {
        Shape::from((self.o, self.cg(), self.kh, self.kw))
    }
    pub fn y_shape(&self) -> Shape {
        Shape::from((self.n, self.o, self.oh, self.ow))
    }
    /// True when im2col is the identity (1×1 kernel, stride 1, no padding).
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.p.stride == (1, 1) && self.p.padding == (0, 0)
    }
}

// ---------------------------------------------------------------------------------------------
// CPU kernels
// ---------------------------------------------------------------------------------------------

/// Element types of the fast CPU path.
pub(crate) trait Elem:
    Copy + Send + Sync + 'static + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
}
impl Elem for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}
impl Elem for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// Row-major `dst[m, n] (+)= lhs[m, k] · rhs[k, n]` with explicit strides (in elements):
/// `lhs[i, l] = lhs[i·lrs + l·lcs]`, `rhs[l, j] = rhs[l·rrs + j·rcs]`, `dst` is contiguous with
/// row stride `n`. Single-threaded: parallelism is over the batch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    accumulate: bool,
    lhs: &[T],
    lrs: usize,
    lcs: usize,
    rhs: &[T],
    rrs: usize,
    rcs: usize,
) {
    gemm_into(
        m,
        n,
        k,
        dst,
        DstLayout::RowMajor,
        accumulate,
        lhs,
        lrs,
        lcs,
        rhs,
        rrs,
        rcs,
    )
}

/// `dst[i, j] = Σ_l lhs[i, l] · rhs[l, j]` into a column-major `dst` (`dst[i, j] = dst[j·m + i]`),
/// overwriting it; strides as in [`matmul`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_col_major_dst<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    lhs: &[T],
    lrs: usize,
    lcs: usize,
    rhs: &[T],
    rrs: usize,
    rcs: usize,
) {
    gemm_into(m, n, k, dst, DstLayout::ColMajor, false, lhs, lrs, lcs, rhs, rrs, rcs)
}

/// How the contiguous `m × n` destination of [`gemm_into`] is laid out.
#[derive(Clone, Copy)]
enum DstLayout {
    /// `dst[i, j] = dst[i·n + j]`.
    RowMajor,
    /// `dst[i, j] = dst[j·m + i]`.
    ColMajor,
}

/// The one call into `gemm` behind [`matmul`] and [`matmul_col_major_dst`]: bounds-checked, then
/// `dst (+)= lhs · rhs` single-threaded.
#[allow(clippy::too_many_arguments)]
fn gemm_into<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    layout: DstLayout,
    accumulate: bool,
    lhs: &[T],
    lrs: usize,
    lcs: usize,
    rhs: &[T],
    rrs: usize,
    rcs: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= m * n);
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(T::ZERO);
        }
        return;
    }
    assert!(lhs.len() > (m - 1) * lrs + (k - 1) * lcs);
    assert!(rhs.len() > (k - 1) * rrs + (n - 1) * rcs);
    let (dst_cs, dst_rs) = match layout {
        DstLayout::RowMajor => (1, n as isize),
        DstLayout::ColMajor => (m as isize, 1),
    };
    // SAFETY: the asserts above bound every index gemm reads or writes.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs,
            dst_rs,
            accumulate,
            lhs.as_ptr(),
            lcs as isize,
            lrs as isize,
            rhs.as_ptr(),
            rcs as isize,
            rrs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Valid output columns `[lo, hi)` for kernel offset `off = kj·d − p` along an axis of length
/// `len` with stride `s` and `out` outputs: those `j` with `0 ≤ j·s + off < len`.
#[inline]
fn valid_range(off: isize, len: usize, s: usize, out: usize) -> (usize, usize) {
    let lo = if off >= 0 { 0 } else { ((-off) as usize).div_ceil(s) };
    let last = len as isize - 1 - off;
    let hi = if last < 0 { 0 } else { (last as usize / s + 1).min(out) };
    (lo.min(hi), hi)
}

/// Packs one group of one sample, `x: [C/G, H, W]`, into `cols: [C/G·KH·KW, OH·OW]`.
pub(crate) fn im2col<T: Elem>(x: &[T], cols: &mut [T], g: &Geom) {
    im2col_strided(x, cols, g.pix(), g)
}

/// [`im2col`] into rows `ld ≥ OH·OW` elements apart: row `r` is `cols[r·ld..r·ld + OH·OW]` (the
/// columns of one sample in a matrix of several samples side by side).
pub(crate) fn im2col_strided<T: Elem>(x: &[T], cols: &mut [T], ld: usize, g: &Geom) {
    let (h, w, oh, ow) = (g.h, g.w, g.oh, g.ow);
    let (sh, sw) = g.p.stride;
    let (ph, pw) = g.p.padding;
    let (dh, dw) = g.p.dilation;
    let pix = oh * ow;
    for c in 0..g.cg() {
        let xc = &x[c * h * w..(c + 1) * h * w];
        for ki in 0..g.kh {
            let offy = (ki * dh) as isize - ph as isize;
            let (ylo, yhi) = valid_range(offy, h, sh, oh);
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let dst = &mut cols[row * ld..row * ld + pix];
                let offx = (kj * dw) as isize - pw as isize;
                let (xlo, xhi) = valid_range(offx, w, sw, ow);
                dst[..ylo * ow].fill(T::ZERO);
                dst[yhi * ow..].fill(T::ZERO);
                for oy in ylo..yhi {
                    let iy = (oy * sh) as isize + offy;
                    let src = &xc[iy as usize * w..(iy as usize + 1) * w];
                    let d = &mut dst[oy * ow..(oy + 1) * ow];
                    d[..xlo].fill(T::ZERO);
                    d[xhi..].fill(T::ZERO);
                    if xlo < xhi {
                        let ix0 = ((xlo * sw) as isize + offx) as usize;
                        if sw == 1 {
                            d[xlo..xhi].copy_from_slice(&src[ix0..ix0 + (xhi - xlo)]);
                        } else {
                            for (t, v) in d[xlo..xhi].iter_mut().enumerate() {
                                *v = src[ix0 + t * sw];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Adjoint of [`im2col`]: adds `cols: [C/G·KH·KW, OH·OW]` back into `x: [C/G, H, W]`.
pub(crate) fn col2im_add<T: Elem>(cols: &[T], x: &mut [T], g: &Geom) {
    col2im_add_strided(cols, x, g.pix(), g)
}

/// [`col2im_add`] from rows `ld ≥ OH·OW` elements apart (as [`im2col_strided`] writes them).
pub(crate) fn col2im_add_strided<T: Elem>(cols: &[T], x: &mut [T], ld: usize, g: &Geom) {
    let (h, w, oh, ow) = (g.h, g.w, g.oh, g.ow);
    let (sh, sw) = g.p.stride;
    let (ph, pw) = g.p.padding;
    let (dh, dw) = g.p.dilation;
    let pix = oh * ow;
    for c in 0..g.cg() {
        let xc = &mut x[c * h * w..(c + 1) * h * w];
        for ki in 0..g.kh {
            let offy = (ki * dh) as isize - ph as isize;
            let (ylo, yhi) = valid_range(offy, h, sh, oh);
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let src = &cols[row * ld..row * ld + pix];
                let offx = (kj * dw) as isize - pw as isize;
                let (xlo, xhi) = valid_range(offx, w, sw, ow);
                if xlo >= xhi {
                    continue;
                }
                for oy in ylo..yhi {
                    let iy = ((oy * sh) as isize + offy) as usize;
                    let drow = &mut xc[iy * w..(iy + 1) * w];
                    let s = &src[oy * ow + xlo..oy * ow + xhi];
                    let ix0 = ((xlo * sw) as isize + offx) as usize;
                    if sw == 1 {
                        for (d, &v) in drow[ix0..ix0 + s.len()].iter_mut().zip(s) {
                            *d = *d + v;
                        }
                    } else {
                        for (t, &v) in s.iter().enumerate() {
                            let d = &mut drow[ix0 + t * sw];
                            *d = *d + v;
                        }
                    }
                }
            }
        }
    }
}

/// `y = conv(x, w)` on contiguous buffers.
pub(crate) fn conv_fwd_cpu<T: Elem>(x: &[T], w: &[T], g: &Geom) -> Vec<T> {
    conv_bias_fwd_cpu(x, w, None, g)
}

/// `y = conv(x, w) (+ b[o])` on contiguous buffers; the bias is added to each sample's output
/// right after its product, while it is in cache.
pub(crate) fn conv_bias_fwd_cpu<T: Elem>(x: &[T], w: &[T], b: Option<&[T]>, g: &Geom) -> Vec<T> {
    if conv_taps::applicable(g) {
        return conv_taps::forward(x, w, b, g);
    }
    let bs = samples_per_product(g);
    if bs > 1 {
        return conv_bias_fwd_blocked(x, w, b, g, bs);
    }
    let (k, pix, og, cg) = (g.k(), g.pix(), g.og(), g.cg());
    let xs = g.c * g.h * g.w;
    let mut y = vec![T::ZERO; g.n * g.o * pix];
    if y.is_empty() {
        return y;
    }
    let pointwise = g.is_pointwise();
    y.par_chunks_mut(g.o * pix).enumerate().for_each_init(
        || if pointwise { Vec::new() } else { vec![T::ZERO; k * pix] },
        |cols, (ni, yn)| {
            let xn = &x[ni * xs..(ni + 1) * xs];
            for gi in 0..g.p.groups {
                let xg = &xn[gi * cg * g.h * g.w..(gi + 1) * cg * g.h * g.w];
                let packed: &[T] = if pointwise {
                    xg
                } else {
                    im2col(xg, cols, g);
                    cols
                };
                let wg = &w[gi * og * k..(gi + 1) * og * k];
                let yg = &mut yn[gi * og * pix..(gi + 1) * og * pix];
                // y[og, pix] written as the column-major [pix, og] product packedᵀ · wgᵀ
                // (measured faster than the row-major wg · packed)
                matmul_col_major_dst(pix, og, k, yg, packed, 1, pix, wg, 1, k);
            }
            if let Some(b) = b {
                for (plane, &bo) in yn.chunks_mut(pix).zip(b) {
                    plane.iter_mut().for_each(|v| *v = *v + bo);
                }
            }
        },
    );
    y
}

/// Columns (samples × output pixels) the im2col path hands `gemm` in one product at least,
/// where a sample's output plane is smaller: a product of 512 × 4608 weights with the 9 columns
/// of one sample's 3×3 plane runs far below the rate of the same product with 72 columns.
const MIN_COLS: usize = 64;

/// How many samples the im2col path packs side by side into one product: 1 where a sample's
/// output plane has at least [`MIN_COLS`] pixels (and for pointwise convolutions, which pack
/// nothing), else enough samples to reach [`MIN_COLS`] columns, at most the batch. A function
/// of the geometry only, so results do not depend on the thread count.
pub(crate) fn samples_per_product(g: &Geom) -> usize {
    let pix = g.pix();
    if g.is_pointwise() || pix == 0 || pix >= MIN_COLS {
        1
    } else {
        MIN_COLS.div_ceil(pix).min(g.n).max(1)
    }
}

/// [`conv_bias_fwd_cpu`] for small output planes: `bs` samples packed side by side,
/// `cols: [K, m·OH·OW]`, one product `out[O/G, m·OH·OW] = w_g · cols` per group, then copied
/// into each sample's `[O, OH, OW]` (with the bias).
fn conv_bias_fwd_blocked<T: Elem>(x: &[T], w: &[T], b: Option<&[T]>, g: &Geom, bs: usize) -> Vec<T> {
    let (k, pix, og, cg) = (g.k(), g.pix(), g.og(), g.cg());
    let (xs, ys, gs) = (g.c * g.h * g.w, g.o * pix, cg * g.h * g.w);
    let mut y = vec![T::ZERO; g.n * ys];
    if y.is_empty() {
        return y;
    }
    y.par_chunks_mut(bs * ys).enumerate().for_each_init(
        || (vec![T::ZERO; k * bs * pix], vec![T::ZERO; og * bs * pix]),
        |(cols, out), (bi, yb)| {
            let m = yb.len() / ys;
            let ld = m * pix;
            for gi in 0..g.p.groups {
                for s in 0..m {
                    let xn = &x[(bi * bs + s) * xs..(bi * bs + s + 1) * xs];
                    im2col_strided(&xn[gi * gs..(gi + 1) * gs], &mut cols[s * pix..], ld, g);
                }
                let wg = &w[gi * og * k..(gi + 1) * og * k];
                // out[og, ld] = wg[og, k] · cols[k, ld]
                matmul(og, ld, k, out, false, wg, k, 1, cols, ld, 1);
                for s in 0..m {
                    for o in 0..og {
                        let oc = gi * og + o;
                        let dst = &mut yb[s * ys + oc * pix..s * ys + (oc + 1) * pix];
                        let src = &out[o * ld + s * pix..o * ld + (s + 1) * pix];
                        match b {
                            Some(b) => dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v + b[oc]),
                            None => dst.copy_from_slice(src),
                        }
                    }
                }
            }
        },
    );
    y
}

/// Copies the output gradients of samples `n0..n0 + m`, group `gi`, side by side into
/// `dyb: [O/G, m·OH·OW]`.
fn gather_dy<T: Elem>(dy: &[T], n0: usize, m: usize, gi: usize, dyb: &mut [T], g: &Geom) {
    let (pix, og) = (g.pix(), g.og());
    let (ys, ld) = (g.o * pix, m * pix);
    for s in 0..m {
        for o in 0..og {
            let src = (n0 + s) * ys + (gi * og + o) * pix;
            dyb[o * ld + s * pix..o * ld + (s + 1) * pix].copy_from_slice(&dy[src..src + pix]);
        }
    }
}

/// [`conv_input_grad_cpu`] for small output planes: `bs` samples' output gradients side by
/// side, `dcols[K, m·OH·OW] = w_gᵀ · dy_block`, scattered back per sample.
fn conv_input_grad_blocked<T: Elem>(dy: &[T], w: &[T], g: &Geom, bs: usize) -> Vec<T> {
    let (k, pix, og, cg) = (g.k(), g.pix(), g.og(), g.cg());
    let (xs, gs) = (g.c * g.h * g.w, cg * g.h * g.w);
    let mut dx = vec![T::ZERO; g.n * xs];
    if dx.is_empty() {
        return dx;
    }
    dx.par_chunks_mut(bs * xs).enumerate().for_each_init(
        || (vec![T::ZERO; k * bs * pix], vec![T::ZERO; og * bs * pix]),
        |(dcols, dyb), (bi, dxb)| {
            let m = dxb.len() / xs;
            let ld = m * pix;
            for gi in 0..g.p.groups {
                gather_dy(dy, bi * bs, m, gi, dyb, g);
                let wg = &w[gi * og * k..(gi + 1) * og * k];
                // dcols[k, ld] = wgᵀ[k, og] · dyb[og, ld]
                matmul(k, ld, og, dcols, false, wg, 1, k, dyb, ld, 1);
                for s in 0..m {
                    let dxg = &mut dxb[s * xs + gi * gs..s * xs + (gi + 1) * gs];
                    col2im_add_strided(&dcols[s * pix..], dxg, ld, g);
                }
            }
        },
    );
    dx
}

/// `dx = conv_transpose(dy, w)` (the input gradient) on contiguous buffers.
pub(crate) fn conv_input_grad_cpu<T: Elem>(dy: &[T], w: &[T], g: &Geom) -> Vec<T> {
    if conv_taps::applicable(g) {
        return conv_taps::input_grad(dy, w, g);
    }
    let bs = samples_per_product(g);
    if bs > 1 {
        return conv_input_grad_blocked(dy, w, g, bs);
    }
    let (k, pix, og, cg) = (g.k(), g.pix(), g.og(), g.cg());
    let xs = g.c * g.h * g.w;
    let gs = cg * g.h * g.w;
    let mut dx = vec![T::ZERO; g.n * xs];
    if dx.is_empty() {
        return dx;
    }
    let pointwise = g.is_pointwise();
    dx.par_chunks_mut(xs).enumerate().for_each_init(
        || if pointwise { Vec::new() } else { vec![T::ZERO; k * pix] },
        |dcols, (ni, dxn)| {
            let dyn_ = &dy[ni * g.o * pix..(ni + 1) * g.o * pix];
            for gi in 0..g.p.groups {
                let wg = &w[gi * og * k..(gi + 1) * og * k];
                let dyg = &dyn_[gi * og * pix..(gi + 1) * og * pix];
                let dxg = &mut dxn[gi * gs..(gi + 1) * gs];
                // dcols[k, pix] = wgᵀ[k, og] · dyg[og, pix]
                // computed as the column-major [pix, k] product dygᵀ · wg (measured faster)
                if pointwise {
                    matmul_col_major_dst(pix, k, og, dxg, dyg, 1, pix, wg, k, 1);
                } else {
                    matmul_col_major_dst(pix, k, og, dcols, dyg, 1, pix, wg, k, 1);
                    col2im_add(dcols, dxg, g);
                }
            }
        },
    );
    dx
}

/// The three operations of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvOp {
    /// `y = conv(x, w)`.
    Forward,
    /// `dx = conv_transpose(dy, w)`.
    InputGrad,
    /// `dw = Σ_n dy[n] ⋆ x[n]`.
    WeightGrad,
}

/// Which implementation runs an f32 convolution op on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F32Path {
    /// One product per (output pixel, live tap), batch as columns (`conv_taps`, private): one
    /// group, at most 16 output pixels.
    Taps,
    /// Direct, output channels in the vector lanes (`conv_lanes`, private): AVX-512F, stride 1
    /// (or 2 for the forward and weight gradient of kernels larger than 1×1), one group, planes
    /// of at most 256 output pixels, rows a multiple of 16 (at least 32).
    Lanes,
    /// Direct, flat pixels in the vector lanes (`conv_direct`, private): AVX-512F, stride 1.
    Direct,
    /// im2col (or samples packed side by side) + gemm: everything else.
    Im2col,
}

/// The path of `op` for geometry `g` (f32). The f64 ops always take [`F32Path::Taps`] or
/// [`F32Path::Im2col`] by the same rule as here.
fn f32_path(g: &Geom, op: ConvOp) -> F32Path {
    if conv_taps::applicable(g) {
        return F32Path::Taps;
    }
    if conv_lanes::applicable(g, op) {
        F32Path::Lanes
    } else if conv_direct::applicable(g) && (op != ConvOp::WeightGrad || conv_direct::weight_grad_fits(g)) {
        F32Path::Direct
    } else {
        F32Path::Im2col
    }
}

/// Which implementation an f32 convolution of input `[N, C, H, W]` and kernel `[O, C/G, KH, KW]`
/// with `params` takes for `op` on this CPU: for tests and benchmarks that mean to exercise one
/// path. Errors as [`conv2d_with`] does on shapes that do not match.
pub fn f32_path_of(
    x: (usize, usize, usize, usize),
    w: (usize, usize, usize, usize),
    params: ConvParams,
    op: ConvOp,
) -> Result<F32Path> {
    Ok(f32_path(&Geom::new(x, w, params)?, op))
}

/// f32 forward on its [`f32_path`].
fn conv_fwd_f32(x: &[f32], w: &[f32], b: Option<&[f32]>, g: &Geom) -> Vec<f32> {
    match f32_path(g, ConvOp::Forward) {
        F32Path::Lanes => conv_lanes::forward(x, w, b, g),
        F32Path::Direct => conv_direct::forward(x, w, b, g),
        F32Path::Taps | F32Path::Im2col => conv_bias_fwd_cpu(x, w, b, g),
    }
}

/// f32 input gradient on its [`f32_path`].
fn conv_input_grad_f32(dy: &[f32], w: &[f32], g: &Geom) -> Vec<f32> {
    match f32_path(g, ConvOp::InputGrad) {
        F32Path::Lanes => conv_lanes::input_grad(dy, w, g),
        F32Path::Direct => conv_direct::input_grad(dy, w, g),
        F32Path::Taps | F32Path::Im2col => conv_input_grad_cpu(dy, w, g),
    }
}

/// f32 weight gradient on its [`f32_path`]: the direct path only where its lane sums fit in L2
/// ([`conv_direct::weight_grad_fits`]).
fn conv_weight_grad_f32(x: &[f32], dy: &[f32], g: &Geom) -> Vec<f32> {
    match f32_path(g, ConvOp::WeightGrad) {
        F32Path::Lanes => conv_lanes::weight_grad(x, dy, g),
        F32Path::Direct => conv_direct::weight_grad(x, dy, g),
        F32Path::Taps | F32Path::Im2col => conv_weight_grad_cpu(x, dy, g),
    }
}

/// Number of samples per weight-gradient chunk: a function of the batch size only, so the
/// summation order (and hence every bit of the result) does not depend on the thread count.
pub(crate) fn wgrad_chunk(n: usize) -> usize {
    const CHUNKS: usize = 16;
    n.div_ceil(CHUNKS).max(1)
}

/// Adds per-chunk partial sums in chunk order.
pub(crate) fn reduce_in_order<T: Elem>(parts: Vec<Vec<T>>, len: usize) -> Vec<T> {
    let mut it = parts.into_iter();
    let mut acc = it.next().unwrap_or_else(|| vec![T::ZERO; len]);
    for part in it {
        for (a, b) in acc.iter_mut().zip(part) {
            *a = *a + b;
        }
    }
    acc
}

/// `dw = Σ_n dy[n] · patches(x[n])ᵀ` (the weight gradient) on contiguous buffers.
pub(crate) fn conv_weight_grad_cpu<T: Elem>(x: &[T], dy: &[T], g: &Geom) -> Vec<T> {
    if conv_taps::applicable(g) {
        return conv_taps::weight_grad(x, dy, g);
    }
    if weight_grad_blocked(g) {
        return conv_weight_grad_blocked(x, dy, g);
    }
    let (k, pix, og, cg) = (g.k(), g.pix(), g.og(), g.cg());
    let xs = g.c * g.h * g.w;
    let len = g.o * k;
    let pointwise = g.is_pointwise();
    let chunk = wgrad_chunk(g.n);
    let starts: Vec<usize> = (0..g.n).step_by(chunk).collect();
    let parts: Vec<Vec<T>> = starts
        .par_iter()
        .map(|&start| {
            let mut acc = vec![T::ZERO; len];
            let mut cols = if pointwise { Vec::new() } else { vec![T::ZERO; k * pix] };
            for ni in start..(start + chunk).min(g.n) {
                let xn = &x[ni * xs..(ni + 1) * xs];
                let dyn_ = &dy[ni * g.o * pix..(ni + 1) * g.o * pix];
                for gi in 0..g.p.groups {
                    let xg = &xn[gi * cg * g.h * g.w..(gi + 1) * cg * g.h * g.w];
                    let packed: &[T] = if pointwise {
                        xg
                    } else {
                        im2col(xg, &mut cols, g);
                        &cols
                    };
                    let dyg = &dyn_[gi * og * pix..(gi + 1) * og * pix];
                    let accg = &mut acc[gi * og * k..(gi + 1) * og * k];
                    // accᵀ[k, og] += packed[k, pix] · dygᵀ[pix, og] (transposed at the end: the
                    // long pixel axis then runs along gemm's preferred direction)
                    matmul(k, og, pix, accg, true, packed, pix, 1, dyg, 1, pix);
                }
            }
            acc
        })
        .collect();
    untranspose_groups(&reduce_in_order(parts, len), g)
}

/// Whether the weight gradient packs several samples per product ([`conv_weight_grad_blocked`]):
/// for planes under 32 pixels, and under [`MIN_COLS`] for layers of more than 64 × 64 × 3 × 3
/// weights per group. Measured at batch 128 on the 2-core Xeon (ms, per sample vs blocked):
/// 64×7×7 → 64 2.97–3.10 vs 3.13–3.41 stays per sample; 128×7×7 → 256 19.9–20.5 vs 16.8–17.0
/// and 512×3×3 → 512 136–148 vs 48 are blocked.
fn weight_grad_blocked(g: &Geom) -> bool {
    let pix = g.pix();
    samples_per_product(g) > 1 && (pix < 32 || g.og() * g.k() > 64 * 64 * 9)
}

/// Columns per product of the blocked weight gradient ([`conv_weight_grad_blocked`]): there
/// they are the product's inner dimension, against an accumulator of all `K × O/G` weights
/// that each product reads and writes (9 MiB for a 512 → 512 3×3 layer).
const MIN_COLS_WGRAD: usize = 256;

/// [`conv_weight_grad_cpu`] for small output planes: within each chunk of the batch, blocks of
/// `bs` samples packed side by side (`bs·OH·OW` about [`MIN_COLS_WGRAD`] columns),
/// `accᵀ[K, O/G] += cols[K, m·OH·OW] · dy_blockᵀ`; at least four chunks where the batch allows,
/// for the cores; chunk sums added in order. Block and chunk sizes depend on the batch size and
/// the geometry only, so the sums are the same for every thread count.
fn conv_weight_grad_blocked<T: Elem>(x: &[T], dy: &[T], g: &Geom) -> Vec<T> {
    let (k, pix, og, cg) = (g.k(), g.pix(), g.og(), g.cg());
    let (xs, gs) = (g.c * g.h * g.w, cg * g.h * g.w);
    let len = g.o * k;
    let bs = MIN_COLS_WGRAD.div_ceil(pix.max(1)).clamp(1, g.n.div_ceil(4).max(1));
    let chunk = wgrad_chunk(g.n).max(bs);
    let starts: Vec<usize> = (0..g.n).step_by(chunk).collect();
    let parts: Vec<Vec<T>> = starts
        .par_iter()
        .map(|&start| {
            let mut acc = vec![T::ZERO; len];
            let mut cols = vec![T::ZERO; k * bs * pix];
            let mut dyb = vec![T::ZERO; og * bs * pix];
            let end = (start + chunk).min(g.n);
            for n0 in (start..end).step_by(bs) {
                let m = (n0 + bs).min(end) - n0;
                let ld = m * pix;
                for gi in 0..g.p.groups {
                    for s in 0..m {
                        let xn = &x[(n0 + s) * xs..(n0 + s + 1) * xs];
                        im2col_strided(&xn[gi * gs..(gi + 1) * gs], &mut cols[s * pix..], ld, g);
                    }
                    gather_dy(dy, n0, m, gi, &mut dyb, g);
                    let accg = &mut acc[gi * og * k..(gi + 1) * og * k];
                    // accᵀ[k, og] += cols[k, ld] · dybᵀ[ld, og]
                    matmul(k, og, ld, accg, true, &cols, ld, 1, &dyb, 1, ld);
                }
            }
            acc
        })
        .collect();
    untranspose_groups(&reduce_in_order(parts, len), g)
}

/// Per group, `[C/G·KH·KW, O/G] -> [O/G, C/G·KH·KW]` (the weight gradients are accumulated
/// transposed, which the `gemm` crate runs several times faster for these shapes).
pub(crate) fn untranspose_groups<T: Elem>(acc_t: &[T], g: &Geom) -> Vec<T> {
    let (k, og) = (g.k(), g.og());
    let mut dw = vec![T::ZERO; acc_t.len()];
    for (src, dst) in acc_t.chunks(og * k).zip(dw.chunks_mut(og * k)) {
        for r in 0..k {
            for c in 0..og {
                dst[c * k + r] = src[r * og + c];
            }
        }
    }
    dw
}

/// Contiguous view of a CPU buffer in its layout (copies only when strided).
pub(crate) fn contiguous<'a, T: Copy>(data: &'a [T], l: &Layout) -> Cow<'a, [T]> {
    if let Some((a, b)) = l.contiguous_offsets() {
        return Cow::Borrowed(&data[a..b]);
    }
    let dims = l.dims();
    let stride = l.stride();
    let total: usize = dims.iter().product();
    let mut out = Vec::with_capacity(total);
    let mut idx = vec![0usize; dims.len()];
    for _ in 0..total {
        let off: usize = l.start_offset() + idx.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
        out.push(data[off]);
        for d in (0..dims.len()).rev() {
            idx[d] += 1;
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Cow::Owned(out)
}

fn dims4(l: &Layout, what: &str) -> Result<(usize, usize, usize, usize)> {
    match *l.dims() {
        [a, b, c, d] => Ok((a, b, c, d)),
        ref d => bail!("{what}: expected a rank-4 tensor, got shape {d:?}"),
    }
}

/// Runs a binary kernel on f32 or f64 storage.
fn dispatch2(
    name: &str,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    f32k: impl FnOnce(&[f32], &[f32]) -> Vec<f32>,
    f64k: impl FnOnce(&[f64], &[f64]) -> Vec<f64>,
) -> Result<CpuStorage> {
    match (s1, s2) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => Ok(CpuStorage::F32(f32k(&contiguous(a, l1), &contiguous(b, l2)))),
        (CpuStorage::F64(a), CpuStorage::F64(b)) => Ok(CpuStorage::F64(f64k(&contiguous(a, l1), &contiguous(b, l2)))),
        _ => bail!(
            "{name}: the CPU kernel supports f32 and f64 (both operands alike), got {:?} and {:?}",
            s1.dtype(),
            s2.dtype()
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Custom ops
// ---------------------------------------------------------------------------------------------

/// `y = conv(x, w)`: `(x: [N, C, H, W], w: [O, C/G, KH, KW]) -> [N, O, OH, OW]`.
/// Backward: `dx = InputGrad(G, w)`, `dw = WeightGrad(x, G)`.
#[derive(Clone, Copy, Debug)]
pub struct Conv2dOp {
    /// Convolution parameters.
    pub params: ConvParams,
}

/// `dx = conv_transpose(dy, w)`: `(dy: [N, O, OH, OW], w: [O, C/G, KH, KW]) -> [N, C, H, W]`,
/// i.e. `dx[n, c, ·] = Σ_o w[o, c]ᵀ ⋆ dy[n, o]` scattered back through the patches; `(H, W)` is
/// given explicitly (several input sizes give the same output size when the stride is > 1).
/// Backward: `d(dy) = conv(G, w)`, `dw = WeightGrad(G, dy)`.
#[derive(Clone, Copy, Debug)]
pub struct Conv2dInputGrad {
    /// Convolution parameters (of the forward convolution).
    pub params: ConvParams,
    /// Input spatial size `(H, W)` of the forward convolution.
    pub input_hw: (usize, usize),
}

/// `dw = Σ_n dy[n] ⊗ patches(x[n])`: `(x: [N, C, H, W], dy: [N, O, OH, OW]) -> [O, C/G, KH, KW]`
/// with the kernel size `(KH, KW)` given explicitly.
/// Backward: `dx = InputGrad(dy, G)`, `d(dy) = conv(x, G)`.
#[derive(Clone, Copy, Debug)]
pub struct Conv2dWeightGrad {
    /// Convolution parameters (of the forward convolution).
    pub params: ConvParams,
    /// Kernel spatial size `(KH, KW)`.
    pub kernel_hw: (usize, usize),
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "secateur-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(dims4(l1, "conv2d input")?, dims4(l2, "conv2d kernel")?, self.params)?;
        let out = dispatch2(
            self.name(),
            s1,
            l1,
            s2,
            l2,
            |x, w| conv_fwd_f32(x, w, None, &g),
            |x, w| conv_fwd_cpu(x, w, &g),
        )?;
        Ok((out, g.y_shape()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        conv_grads(x, w, grad, self.params)
    }
}

/// `(dx, dw) = (InputGrad(G, w), WeightGrad(x, G))` of a convolution, each skipped when its
/// operand tracks no gradient (the input batch of a first layer).
fn conv_grads(x: &Tensor, w: &Tensor, grad: &Tensor, params: ConvParams) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (_, _, h, wd) = x.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    let dx = x
        .track_op()
        .then(|| conv2d_input_grad(grad, w, params, (h, wd)))
        .transpose()?;
    let dw = w
        .track_op()
        .then(|| conv2d_weight_grad(x, grad, params, (kh, kw)))
        .transpose()?;
    Ok((dx, dw))
}

/// `y = conv(x, w) + b`: `(x: [N, C, H, W], w: [O, C/G, KH, KW], b: [O]) -> [N, O, OH, OW]`,
/// one pass (the bias is added per sample after its product). Backward, only for the operands
/// that track gradients: `dx = InputGrad(G, w)`, `dw = WeightGrad(x, G)`, `db = channel_sum(G)`.
#[derive(Clone, Copy, Debug)]
pub struct Conv2dBiasOp {
    /// Convolution parameters.
    pub params: ConvParams,
}

impl CustomOp3 for Conv2dBiasOp {
    fn name(&self) -> &'static str {
        "secateur-conv2d-bias"
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
        let g = Geom::new(dims4(l1, "conv2d input")?, dims4(l2, "conv2d kernel")?, self.params)?;
        if l3.dims() != [g.o] {
            bail!("conv2d: bias of shape {:?} for {} output channels", l3.dims(), g.o)
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => CpuStorage::F32(conv_fwd_f32(
                &contiguous(x, l1),
                &contiguous(w, l2),
                Some(&contiguous(b, l3)),
                &g,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => CpuStorage::F64(conv_bias_fwd_cpu(
                &contiguous(x, l1),
                &contiguous(w, l2),
                Some(&contiguous(b, l3)),
                &g,
            )),
            _ => bail!(
                "{}: the CPU kernel supports f32 and f64 (all operands alike), got {:?}, {:?} and {:?}",
                self.name(),
                s1.dtype(),
                s2.dtype(),
                s3.dtype()
            ),
        };
        Ok((out, g.y_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = conv_grads(x, w, grad, self.params)?;
        let db = b.track_op().then(|| crate::bias::channel_sum(grad)).transpose()?;
        Ok((dx, dw, db))
    }
}

impl Conv2dInputGrad {
    fn geom(&self, dy: (usize, usize, usize, usize), w: (usize, usize, usize, usize)) -> Result<Geom> {
        let (n, o, oh, ow) = dy;
        let (ow_, cg, kh, kw) = w;
        let g = Geom::new(
            (n, cg * self.params.groups, self.input_hw.0, self.input_hw.1),
            w,
            self.params,
        )?;
        if o != ow_ || (g.oh, g.ow) != (oh, ow) {
            bail!(
                "conv2d input grad: output gradient [{n}, {o}, {oh}, {ow}] does not match kernel \
                 [{ow_}, {cg}, {kh}, {kw}] on input size {:?} (expected [{n}, {ow_}, {}, {}])",
                self.input_hw,
                g.oh,
                g.ow
            )
        }
        Ok(g)
    }
}

impl CustomOp2 for Conv2dInputGrad {
    fn name(&self) -> &'static str {
        "secateur-conv2d-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.geom(dims4(l1, "conv2d output grad")?, dims4(l2, "conv2d kernel")?)?;
        let out = dispatch2(
            self.name(),
            s1,
            l1,
            s2,
            l2,
            |dy, w| conv_input_grad_f32(dy, w, &g),
            |dy, w| conv_input_grad_cpu(dy, w, &g),
        )?;
        Ok((out, g.x_shape()))
    }

    fn bwd(&self, dy: &Tensor, w: &Tensor, _dx: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, _, kh, kw) = w.dims4()?;
        let ddy = conv2d_with(grad, w, self.params)?;
        let dw = conv2d_weight_grad(grad, dy, self.params, (kh, kw))?;
        Ok((Some(ddy), Some(dw)))
    }
}

impl Conv2dWeightGrad {
    fn geom(&self, x: (usize, usize, usize, usize), dy: (usize, usize, usize, usize)) -> Result<Geom> {
        let (n, c, h, w) = x;
        let (n2, o, oh, ow) = dy;
        let gr = self.params.groups;
        if c % gr != 0 {
            bail!("conv2d weight grad: input channels {c} not divisible by {gr} groups")
        }
        let g = Geom::new(x, (o, c / gr, self.kernel_hw.0, self.kernel_hw.1), self.params)?;
        if n != n2 || (g.oh, g.ow) != (oh, ow) {
            bail!(
                "conv2d weight grad: input [{n}, {c}, {h}, {w}] and output gradient \
                 [{n2}, {o}, {oh}, {ow}] do not match kernel size {:?} (expected [{n}, {o}, {}, {}])",
                self.kernel_hw,
                g.oh,
                g.ow
            )
        }
        Ok(g)
    }
}

impl CustomOp2 for Conv2dWeightGrad {
    fn name(&self) -> &'static str {
        "secateur-conv2d-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.geom(dims4(l1, "conv2d input")?, dims4(l2, "conv2d output grad")?)?;
        let out = dispatch2(
            self.name(),
            s1,
            l1,
            s2,
            l2,
            |x, dy| conv_weight_grad_f32(x, dy, &g),
            |x, dy| conv_weight_grad_cpu(x, dy, &g),
        )?;
        Ok((out, g.w_shape()))
    }

    fn bwd(&self, x: &Tensor, dy: &Tensor, _dw: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, _, h, w) = x.dims4()?;
        let dx = conv2d_input_grad(dy, grad, self.params, (h, w))?;
        let ddy = conv2d_with(x, grad, self.params)?;
        Ok((Some(dx), Some(ddy)))
    }
}

// ---------------------------------------------------------------------------------------------
// Public functions
// ---------------------------------------------------------------------------------------------

/// Whether the fast path applies: CPU tensors of dtype f32 or f64.
pub(crate) fn fast_path(a: &Tensor, b: &Tensor) -> bool {
    matches!(a.device(), Device::Cpu) && a.dtype() == b.dtype() && matches!(a.dtype(), DType::F32 | DType::F64)
}

fn need_square(p: &ConvParams, what: &str) -> Result<()> {
    if !p.is_square() {
        bail!("{what}: rectangular stride/padding/dilation {p:?} are only supported on the CPU fast path (f32/f64)")
    }
    Ok(())
}

/// 2-D convolution `y[n, o, i, j] = Σ_{c ∈ group(o), a, b} w[o, c, a, b] · x[n, c, i·s − p + a·d, j·s − p + b·d]`
/// of `x: [N, C, H, W]` with `w: [O, C/groups, KH, KW]`, giving `[N, O, OH, OW]` with
/// `OH = ⌊(H + 2p − d(KH − 1) − 1)/s⌋ + 1` (likewise `OW`).
///
/// On CPU (f32/f64) this is [`Conv2dOp`], whose gradients are again convolution custom ops (so
/// double backpropagation works); elsewhere it is built from candle's own ops
/// (`conv2d_candle`, private).
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize, dilation: usize, groups: usize) -> Result<Tensor> {
    conv2d_with(x, w, ConvParams::new(stride, padding, dilation, groups))
}

/// The taps `[first, last]` of one kernel axis that read the input for some output position
/// (`0 ≤ i·s + k·d − p < n` for some output `i < out`); `None` when all do.
fn live_taps(n: usize, k: usize, s: usize, p: usize, d: usize, out: usize) -> Option<(usize, usize)> {
    let live = |t: usize| (0..out).any(|i| (i * s + t * d).checked_sub(p).is_some_and(|pos| pos < n));
    let first = (0..k).find(|&t| live(t))?;
    let last = (0..k).rev().find(|&t| live(t))?;
    (first > 0 || last + 1 < k).then_some((first, last))
}

/// The kernel cut to the taps that read the input, with the padding that keeps every output
/// position's taps in place, when some taps never do and the cut keeps the output's size: a
/// 3×3 kernel with padding 1 on a 1×1 plane (VGG-11's last stage on 28×28 inputs) reads the
/// input with its centre only, the other eight taps multiply padding. The convolution is then
/// the same sum without the zero terms (`conv(x, W, p) = conv(x, W[a..=b], p − a·d)`), and the
/// gradient of the cut-off taps, zero, comes back through `narrow`.
fn without_dead_taps(w: &Tensor, g: &Geom) -> Result<Option<(Tensor, ConvParams)>> {
    let p = g.p;
    let rows = live_taps(g.h, g.kh, p.stride.0, p.padding.0, p.dilation.0, g.oh);
    let cols = live_taps(g.w, g.kw, p.stride.1, p.padding.1, p.dilation.1, g.ow);
    if rows.is_none() && cols.is_none() {
        return Ok(None);
    }
    let (r0, r1) = rows.unwrap_or((0, g.kh - 1));
    let (c0, c1) = cols.unwrap_or((0, g.kw - 1));
    let (Some(ph), Some(pw)) = (
        p.padding.0.checked_sub(r0 * p.dilation.0),
        p.padding.1.checked_sub(c0 * p.dilation.1),
    ) else {
        return Ok(None);
    };
    let cut = ConvParams { padding: (ph, pw), ..p };
    if cut.out_hw((g.h, g.w), (r1 - r0 + 1, c1 - c0 + 1)) != Some((g.oh, g.ow)) {
        return Ok(None);
    }
    let w = w.narrow(2, r0, r1 - r0 + 1)?.narrow(3, c0, c1 - c0 + 1)?;
    Ok(Some((w, cut)))
}

/// `(x as [N, C], w as [O, C])` when the convolution is a linear layer: a 1×1 kernel on 1×1
/// planes (stride 1, no padding, one group), as VGG-11's last stage on 28×28 inputs is once its
/// dead taps are cut. The im2col path would run it sample by sample as matrix–vector products
/// and sum the weight gradient of each sample's one column as a rank-1 update of all O × C
/// weights: for 512 → 512 at batch 128 on the 2-core AMD EPYC the forward and both gradients
/// through [`conv2d_with`] took 15.1 ms that way and take 8.0 ms as the three products `x Wᵀ`,
/// `dy W`, `dyᵀ x` (`kernels/examples/conv_timing.rs`).
fn as_linear(x: &Tensor, w: &Tensor, g: &Geom) -> Result<Option<(Tensor, Tensor)>> {
    if !(g.is_pointwise() && g.h == 1 && g.w == 1 && g.p.groups == 1) {
        return Ok(None);
    }
    Ok(Some((x.reshape((g.n, g.c))?, w.reshape((g.o, g.c))?)))
}

/// [`conv2d`] with per-axis parameters ([`ConvParams`]).
pub fn conv2d_with(x: &Tensor, w: &Tensor, params: ConvParams) -> Result<Tensor> {
    // Validate up front so that shape errors are the same on every device.
    let g = Geom::new(x.dims4()?, w.dims4()?, params)?;
    if fast_path(x, w) {
        if let Some((w, cut)) = without_dead_taps(w, &g)? {
            return conv2d_with(x, &w, cut);
        }
        if let Some((x2, w2)) = as_linear(x, w, &g)? {
            return crate::matmul::matmul_bt(&x2, &w2)?.reshape((g.n, g.o, 1, 1));
        }
        x.contiguous()?
            .apply_op2_arc(&w.contiguous()?, std::sync::Arc::new(Box::new(Conv2dOp { params })))
    } else {
        conv2d_candle(x, w, &g)
    }
}

/// [`conv2d_with`] plus a per-channel bias `b: [O]`, `y[n, o] = conv(x, w)[n, o] + b[o]`. On CPU
/// (f32/f64) one [`Conv2dBiasOp`] (the bias added in the same pass, no separate graph node);
/// elsewhere the convolution followed by [`crate::bias::add_bias`].
pub fn conv2d_bias(x: &Tensor, w: &Tensor, b: &Tensor, params: ConvParams) -> Result<Tensor> {
    let g = Geom::new(x.dims4()?, w.dims4()?, params)?;
    if b.dims() != [g.o] {
        bail!("conv2d: bias of shape {:?} for {} output channels", b.dims(), g.o)
    }
    if fast_path(x, w) && b.dtype() == w.dtype() && b.device().is_cpu() {
        if let Some((w, cut)) = without_dead_taps(w, &g)? {
            return conv2d_bias(x, &w, b, cut);
        }
        if let Some((x2, w2)) = as_linear(x, w, &g)? {
            let y = crate::bias::add_bias(&crate::matmul::matmul_bt(&x2, &w2)?, b)?;
            return y.reshape((g.n, g.o, 1, 1));
        }
        x.contiguous()?.apply_op3_arc(
            &w.contiguous()?,
            &b.contiguous()?,
            std::sync::Arc::new(Box::new(Conv2dBiasOp { params })),
        )
    } else {
        crate::bias::add_bias(&conv2d_with(x, w, params)?, b)
    }
}

/// The convolution from candle's own ops (CUDA, other dtypes), shaped so that candle's backward
/// is right. candle's `conv2d` backward ignores groups and takes the transposed convolution's
/// output padding from the height alone. So groups run as separate convolutions joined along
/// the channels, and when the rows and columns that the output never reads differ in number
/// (`H + 2p − ((OH − 1)s + d(KH − 1) + 1)` and likewise for the width), the input is padded and
/// cut to exactly the part the output reads, then convolved without padding; `pad_with_zeros`
/// and `narrow` differentiate into each other, so second derivatives stay available.
fn conv2d_candle(x: &Tensor, w: &Tensor, g: &Geom) -> Result<Tensor> {
    let params = g.p;
    need_square(&params, "conv2d")?;
    let (s, p, d) = (params.stride.0, params.padding.0, params.dilation.0);
    let used_h = (g.oh - 1) * s + d * (g.kh - 1) + 1;
    let used_w = (g.ow - 1) * s + d * (g.kw - 1) + 1;
    let (x, p) = if g.h + 2 * p - used_h != g.w + 2 * p - used_w {
        let xp = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
        (xp.narrow(2, 0, used_h)?.narrow(3, 0, used_w)?, 0)
    } else {
        (x.clone(), p)
    };
    if params.groups == 1 {
        return x.conv2d(w, p, s, d, 1);
    }
    let (cg, og) = (g.cg(), g.og());
    let parts = (0..params.groups)
        .map(|gi| {
            x.narrow(1, gi * cg, cg)?
                .contiguous()?
                .conv2d(&w.narrow(0, gi * og, og)?.contiguous()?, p, s, d, 1)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 1)
}

/// Input gradient of a convolution, `dx = conv_transpose(dy, w)`: for `dy: [N, O, OH, OW]` and
/// `w: [O, C/G, KH, KW]`, returns `dx: [N, C, H, W]` with `⟨dx, v⟩ = ⟨dy, conv(v, w)⟩` for all `v`;
/// `input_hw = (H, W)`.
pub fn conv2d_input_grad(dy: &Tensor, w: &Tensor, params: ConvParams, input_hw: (usize, usize)) -> Result<Tensor> {
    let op = Conv2dInputGrad { params, input_hw };
    let g = op.geom(dy.dims4()?, w.dims4()?)?;
    if fast_path(dy, w) {
        return dy
            .contiguous()?
            .apply_op2_arc(&w.contiguous()?, std::sync::Arc::new(Box::new(op)));
    }
    need_square(&params, "conv2d input grad")?;
    let (s, p, d) = (params.stride.0, params.padding.0, params.dilation.0);
    // conv_transpose2d gives (OH − 1)s − 2p + d(KH − 1) + 1 + output_padding rows.
    let base = (g.oh - 1) * s + d * (g.kh - 1) + 1 - 2 * p;
    let out_pad = g.h - base;
    if g.w - ((g.ow - 1) * s + d * (g.kw - 1) + 1 - 2 * p) != out_pad {
        bail!("conv2d input grad: unequal output padding along height and width is not supported off the CPU path")
    }
    let og = g.og();
    let parts = (0..params.groups)
        .map(|gi| {
            dy.narrow(1, gi * og, og)?.contiguous()?.conv_transpose2d(
                &w.narrow(0, gi * og, og)?.contiguous()?,
                p,
                out_pad,
                s,
                d,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 1)
}

/// Weight gradient of a convolution, `dw[o, c, a, b] = Σ_{n, i, j} dy[n, o, i, j] · x[n, c', i·s − p + a·d, j·s − p + b·d]`
/// (`c'` the `c`-th channel of `o`'s group): for `x: [N, C, H, W]` and `dy: [N, O, OH, OW]`,
/// returns `[O, C/G, KH, KW]` with `⟨dw, v⟩ = ⟨dy, conv(x, v)⟩` for all `v`; `kernel_hw = (KH, KW)`.
pub fn conv2d_weight_grad(x: &Tensor, dy: &Tensor, params: ConvParams, kernel_hw: (usize, usize)) -> Result<Tensor> {
    let op = Conv2dWeightGrad { params, kernel_hw };
    let g = op.geom(x.dims4()?, dy.dims4()?)?;
    if fast_path(x, dy) {
        return x
            .contiguous()?
            .apply_op2_arc(&dy.contiguous()?, std::sync::Arc::new(Box::new(op)));
    }
    need_square(&params, "conv2d weight grad")?;
    let (s, p, d) = (params.stride.0, params.padding.0, params.dilation.0);
    let (cg, og) = (g.cg(), g.og());
    // candle's own formulation: the batch becomes the channel axis, stride and dilation swap.
    let parts = (0..params.groups)
        .map(|gi| {
            let xg = x.narrow(1, gi * cg, cg)?.transpose(0, 1)?.contiguous()?;
            let dyg = dy.narrow(1, gi * og, og)?.transpose(0, 1)?.contiguous()?;
            xg.conv2d(&dyg, p, d, s, 1)?
                .transpose(0, 1)?
                .narrow(2, 0, g.kh)?
                .narrow(D::Minus1, 0, g.kw)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)?.contiguous()
}
