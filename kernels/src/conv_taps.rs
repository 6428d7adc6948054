//! Convolutions on small output planes as one product per (output pixel, kernel tap) that reads
//! the input, with the batch as the products' columns.
//!
//! On a plane of a few pixels most kernel taps of the border pixels read padding: a 3×3 kernel
//! with padding 1 on a 3×3 plane (VGG-11's fourth stage on 28×28 inputs) reads the input with
//! 49 of its 81 (pixel, tap) pairs. im2col multiplies the other 32 by packed zeros, 1.65× the
//! work. Here, with `t = (a, b)` a tap and `p = (i, j)` an output pixel reading input pixel
//! `q = (i·s − pad + a·d, j·s − pad + b·d)` where that lies inside the plane:
//!
//! ```text
//! y[·, ·, p]  = Σ_t W_t · x_q              W_t = w[:, :, a, b]: [O, C],  x_q = x[:, :, q]ᵀ: [C, N]
//! dx[·, ·, q] = Σ_{(p, t) reading q} W_tᵀ · dy_p
//! dW_t        = Σ_{p reading with t} dy_p · x_qᵀ
//! ```
//!
//! each a product of `[O, C]` and `[C, N]` (or its transposes) over the valid pairs only: the
//! exact multiply-adds, in products of 512 × 512 by 128 columns for VGG-11, where im2col
//! multiplied the whole kernel with blocks of 8 samples' 72 columns (forward and input
//! gradient). The input, the weights and the output gradient are first laid out pixel-major
//! (`[P][C][N]`, `[T][O][C]`, `[P][O][N]`) so that every operand is one contiguous block. The
//! products of one output pixel (forward), one input pixel (input gradient) or one tap (weight
//! gradient) run in a fixed order on one worker, the pixels or taps in parallel: the sums are the
//! same for every thread count. Applies to one group, planes of at most [`MAX_PIX`] output pixels.

use crate::conv::{matmul, Elem, Geom};
use rayon::prelude::*;

/// The largest output plane (pixels) the per-tap products take.
pub(crate) const MAX_PIX: usize = 16;

/// Whether the convolution runs here: one group, a kernel larger than 1×1, at most
/// [`MAX_PIX`] output pixels.
pub(crate) fn applicable(g: &Geom) -> bool {
    g.p.groups == 1 && g.kh * g.kw > 1 && g.pix() <= MAX_PIX && g.n > 0
}

/// The input pixel that output pixel `p` reads with tap `t`, if inside the plane.
pub(crate) fn source(g: &Geom, p: usize, t: usize) -> Option<usize> {
    let (i, j) = (p / g.ow, p % g.ow);
    let (a, b) = (t / g.kw, t % g.kw);
    let ih = (i * g.p.stride.0 + a * g.p.dilation.0).checked_sub(g.p.padding.0)?;
    let iw = (j * g.p.stride.1 + b * g.p.dilation.1).checked_sub(g.p.padding.1)?;
    (ih < g.h && iw < g.w).then_some(ih * g.w + iw)
}

/// `[N][R][Q] → [Q][R][N]` (`src[(n·R + r)·Q + q]` to `dst[(q·R + r)·N + n]`), in parallel over `q`;
/// with `N = 1` the transpose `[R][Q] → [Q][R]`.
pub(crate) fn to_pixel_major<T: Elem>(src: &[T], n: usize, r: usize, q: usize) -> Vec<T> {
    let mut dst = vec![T::ZERO; n * r * q];
    dst.par_chunks_mut(r * n).enumerate().for_each(|(qi, d)| {
        for ri in 0..r {
            for ni in 0..n {
                d[ri * n + ni] = src[(ni * r + ri) * q + qi];
            }
        }
    });
    dst
}

/// `[Q][R][N] → [N][R][Q]`, the inverse of [`to_pixel_major`], in parallel over `n`.
fn from_pixel_major<T: Elem>(src: &[T], n: usize, r: usize, q: usize) -> Vec<T> {
    let mut dst = vec![T::ZERO; n * r * q];
    dst.par_chunks_mut(r * q).enumerate().for_each(|(ni, d)| {
        for ri in 0..r {
            for qi in 0..q {
                d[ri * q + qi] = src[(qi * r + ri) * n + ni];
            }
        }
    });
    dst
}

/// `w: [O][C][T] → [T][O][C]`.
fn taps_major<T: Elem>(w: &[T], o: usize, c: usize, taps: usize) -> Vec<T> {
    // the same map as `to_pixel_major` with (N, R, Q) = (1, O·C, T), then [T][O·C]
    to_pixel_major(w, 1, o * c, taps)
}

/// `y = conv(x, w) (+ b)`: `[N, O, OH, OW]`.
pub(crate) fn forward<T: Elem>(x: &[T], w: &[T], b: Option<&[T]>, g: &Geom) -> Vec<T> {
    let (n, c, o, pix, taps) = (g.n, g.c, g.o, g.pix(), g.kh * g.kw);
    let xt = to_pixel_major(x, n, c, g.h * g.w);
    let wt = taps_major(w, o, c, taps);
    let mut yt = vec![T::ZERO; pix * o * n];
    yt.par_chunks_mut(o * n).enumerate().for_each(|(p, yp)| {
        let mut first = true;
        for t in 0..taps {
            if let Some(q) = source(g, p, t) {
                // yp[O, N] (+)= W_t[O, C] · x_q[C, N]
                let (wt_t, xq) = (&wt[t * o * c..(t + 1) * o * c], &xt[q * c * n..(q + 1) * c * n]);
                matmul(o, n, c, yp, !first, wt_t, c, 1, xq, n, 1);
                first = false;
            }
        }
    });
    let mut y = from_pixel_major(&yt, n, o, pix);
    if let Some(b) = b {
        y.par_chunks_mut(o * pix).for_each(|yn| {
            for (plane, &bo) in yn.chunks_mut(pix).zip(b) {
                plane.iter_mut().for_each(|v| *v = *v + bo);
            }
        });
    }
    y
}

/// `dx`: `[N, C, H, W]` from `dy: [N, O, OH, OW]`.
pub(crate) fn input_grad<T: Elem>(dy: &[T], w: &[T], g: &Geom) -> Vec<T> {
    let (n, c, o, pix, taps, hw) = (g.n, g.c, g.o, g.pix(), g.kh * g.kw, g.h * g.w);
    let dyt = to_pixel_major(dy, n, o, pix);
    let wt = taps_major(w, o, c, taps);
    let mut dxt = vec![T::ZERO; hw * c * n];
    dxt.par_chunks_mut(c * n).enumerate().for_each(|(q, dxq)| {
        let mut first = true;
        for p in 0..pix {
            for t in 0..taps {
                if source(g, p, t) == Some(q) {
                    // dx_q[C, N] (+)= W_tᵀ[C, O] · dy_p[O, N]
                    let (wt_t, dyp) = (&wt[t * o * c..(t + 1) * o * c], &dyt[p * o * n..(p + 1) * o * n]);
                    matmul(c, n, o, dxq, !first, wt_t, 1, c, dyp, n, 1);
                    first = false;
                }
            }
        }
    });
    from_pixel_major(&dxt, n, c, hw)
}

/// `dw`: `[O, C, KH, KW]` from `x` and `dy`.
pub(crate) fn weight_grad<T: Elem>(x: &[T], dy: &[T], g: &Geom) -> Vec<T> {
    let (n, c, o, pix, taps) = (g.n, g.c, g.o, g.pix(), g.kh * g.kw);
    let xt = to_pixel_major(x, n, c, g.h * g.w);
    let dyt = to_pixel_major(dy, n, o, pix);
    let mut dwt = vec![T::ZERO; taps * o * c];
    dwt.par_chunks_mut(o * c).enumerate().for_each(|(t, dwt_t)| {
        let mut first = true;
        for p in 0..pix {
            if let Some(q) = source(g, p, t) {
                // dW_t[O, C] (+)= dy_p[O, N] · x_qᵀ[N, C]
                let (dyp, xq) = (&dyt[p * o * n..(p + 1) * o * n], &xt[q * c * n..(q + 1) * c * n]);
                matmul(o, c, n, dwt_t, !first, dyp, n, 1, xq, 1, n);
                first = false;
            }
        }
    });
    // [T][O][C] → [O][C][T]
    from_pixel_major(&dwt, 1, o * c, taps)
}
