//! Direct convolution for stride 1 and dilation 1 (f32, AVX-512), without im2col.
//!
//! Pad each input plane once to `Hp × Wp` (`Hp = H + 2p_h`, `Wp = W + 2p_w`) and index it flat.
//! An output pixel `(i, j)` then sits at `q = i·Wp + j` of a flat output with the same row
//! width, and every kernel tap `(c, a, b)` is one constant offset `δ = c·Hp·Wp + a·Wp + b`:
//!
//! ```text
//! y[o, q] = Σ_{(c, a, b)} w[o, c, a, b] · x_pad[δ(c, a, b) + q]        (q = i·Wp + j, j < OW)
//! ```
//!
//! The `KW − 1` columns `j ≥ OW` of each flat output row are computed and dropped: each 16-lane
//! vector of flat pixels is stored straight into the `[OH, OW]` output planes with one masked
//! store per output row it touches (`Scatter`), so no flat copy of the output is kept. This is
//! im2col with every row of the packed matrix replaced by a shifted view of the padded input:
//! nothing is packed, the register-blocked loop below reads the taps straight from the (cached)
//! padded planes. (The stores replaced a flat buffer and a copy of its useful columns per row:
//! ResNet-20's step 466 → 431 ms on one thread and 250–258 → 245–251 ms on two, LeNet-5 4.06–4.15
//! → 3.83–3.96 ms, on the 2-core Intel Xeon of BENCHMARKS.md, alternating binaries, identical
//! final losses.)
//!
//! The two gradients are the same correlation read two other ways:
//!
//! - input gradient: `dx = corr(pad(dy, K − 1 − p), w̃)` with `w̃[c, o, a, b] = w[o, c, K_h − 1 − a, K_w − 1 − b]`
//!   (a full correlation with the flipped, transposed kernel; it needs `p ≤ K − 1`);
//! - weight gradient: `dw[o, (c, a, b)] = Σ_n Σ_q dy_flat[n, o, q] · x_pad[n, δ(c, a, b) + q]` with
//!   the dropped columns of `dy_flat` set to zero.
//!
//! Inner loops: 8 output rows × 48 flat pixels (24 AVX-512 accumulators, three loads and eight
//! broadcast multiply-adds per tap; the last block of a plane 16 or 32 pixels where that covers
//! it) for the correlation; 8 output channels × 3 taps (24
//! accumulators over pixels, reduced once per chunk of samples) for the weight gradient. The
//! weight gradient sums samples in the chunks of [`crate::conv::wgrad_chunk`], which depend on
//! the batch size only, so results are bit-identical across thread counts, like the im2col path.
//!
//! Used on x86-64 CPUs with AVX-512F for every stride-1, dilation-1, non-pointwise convolution
//! with `p ≤ K − 1` on both axes (only the input gradient needs it; one condition serves all
//! three ops) whose flat output is mostly output (`min_useful`: small planes such as VGG's 3×3
//! and 1×1 ones are mostly dropped columns and rounding), except the weight gradient where its
//! lane sums outgrow L2 ([`weight_grad_fits`]); everything else, and f64, stays on im2col + gemm.
//!
//! One difference from im2col: the dropped columns and the rounded-up tail of `dy_flat` are zero
//! but the input values they meet are real, so a non-finite input (`inf`) can turn a weight
//! gradient entry into NaN where im2col's sum would not touch it.
//!
//! `SECATEUR_CONV_DIRECT=0` switches it off (for A/B measurements). Timings against im2col are in
//! BENCHMARKS.md.

use rayon::prelude::*;
use std::mem::MaybeUninit;

use crate::conv::{reduce_in_order, wgrad_chunk, Geom};

/// Flat pixels per register block of the correlation (`3 × 16` lanes).
const PB: usize = 48;

/// 16-lane vectors per pixel tile of the weight gradient: a tile of gradient rows and input rows
/// stays in L1 while every tap block passes over it.
const TILE_V: usize = 32;

/// Whether the direct path handles `g` on this CPU: stride 1, dilation 1, not pointwise,
/// `p < K`, and at least [`min_useful`] of its flat output useful ([`useful_fraction`]).
pub(crate) fn applicable(g: &Geom) -> bool {
    let shape_ok = g.p.stride == (1, 1)
        && g.p.dilation == (1, 1)
        && g.h > 0
        && g.w > 0
        && !g.is_pointwise()
        && g.p.padding.0 < g.kh
        && g.p.padding.1 < g.kw;
    shape_ok && useful_fraction(g) >= min_useful(g) && enabled()
}

/// The smallest [`useful_fraction`] the direct path takes: 0.6, or 0.5 for layers of at most
/// 64 × 64 × 3 × 3 weights per group. Measured per op at batch 128 on the 2-core Xeon (ms,
/// direct vs im2col with several samples per product): 64×8×8 → 64 (0.67 useful) forward 3.0
/// vs 4.0 and LeNet-5's 6×14×14 → 16, 5×5 (0.69) 0.42–0.77 vs 0.92 go direct; on 7×7 planes
/// (0.51) ResNet-20's 64 → 64 (its third stage on 28×28 inputs) forward 2.65–2.77 vs 3.41, but
/// VGG-11's 128 → 256 20.1–22.3 vs 14.6–15.1 and 256 → 256 40–45 vs 29–30; VGG-11's 3×3
/// planes (0.19) 92–95 vs 26 (512 → 512) and 1×1 planes (0.02) 89–91 vs 3.9 stay on im2col.
fn min_useful(g: &Geom) -> f64 {
    if g.og() * g.k() <= 64 * 64 * 9 {
        0.5
    } else {
        0.6
    }
}

/// The share of the correlation's flat output (`OH·Wp` rounded up to [`PB`] pixels) that is
/// output: `OH·OW / qlen`. The rest is the `KW − 1` dropped columns of every row and the
/// rounding: a 3×3 plane padded to 5×5 is 9 useful pixels of 48. [`min_useful`]'s thresholds were
/// measured when the kernel computed whole 48-pixel blocks; it now ends a plane with a block of
/// 16 or 32 pixels where that suffices (a plane's `qlen` rounds up to 16), so the share it
/// computes is at least this, and the decisions are left as they were measured.
fn useful_fraction(g: &Geom) -> f64 {
    let wp = g.w + 2 * g.p.padding.1;
    let qlen = (g.oh * wp).div_ceil(PB) * PB;
    if qlen == 0 {
        return 0.0;
    }
    (g.oh * g.ow) as f64 / qlen as f64
}

/// Whether the direct weight gradient is used for `g` (given [`applicable`]): its per-chunk lane
/// sums, `(O/G)·K·16` floats, must stay in L2 (at most 1 MiB), or every block's loads and stores
/// of them miss. Measured at batch 128 on the 2-core Xeon of BENCHMARKS.md (ms, direct vs
/// im2col): 16×32×32 → 16, 3×3: 3.7–4.0 vs 4.9–5.2; 32×16×16 → 32: 4.0–4.1 vs 3.9–4.1 (level);
/// 64×8×8 → 64 (2.25 MiB of lane sums): 7.6 vs 4.3, so that one stays on im2col.
pub(crate) fn weight_grad_fits(g: &Geom) -> bool {
    g.og() * g.k() * 16 * std::mem::size_of::<f32>() <= 1 << 20
}

/// AVX-512F present and not switched off by `SECATEUR_CONV_DIRECT=0` (read once).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let off = std::env::var("SECATEUR_CONV_DIRECT").is_ok_and(|v| v == "0");
        !off && cpu_has_avx512()
    })
}

/// Whether this CPU has AVX-512F.
pub(crate) fn cpu_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Geometry of one correlation `out[r, q] = Σ_k W[r, k] · src[δ_k + q]` over padded planes.
struct Plan {
    /// Padded plane size `Hp × Wp`, and the row width `Wp`.
    plane: usize,
    wp: usize,
    /// Channels of `src` (per group).
    src_ch: usize,
    /// Valid output size `(OH, OW)`.
    oh: usize,
    ow: usize,
    /// Flat output length, `OH·Wp` rounded up to a whole vector (16 pixels): the last block of
    /// a plane is 16 or 32 pixels wide where [`PB`] does not divide it.
    qlen: usize,
    /// Tap offsets `δ_k`, `k = (c·KH + a)·KW + b`.
    offs: Vec<usize>,
    /// Length of one padded source buffer (planes plus zero slack for the rounded-up reads).
    src_len: usize,
    /// Where each 16-lane vector of the flat output lands in an `[OH, OW]` plane.
    scatter: Scatter,
}

/// For every 16-lane vector `u` of a flat output (pixels `q = 16u + l`), one `(mask, shift)` per
/// output row `i` the vector touches: the lanes `l` with `q = i·Wp + j`, `i < OH` and `j < OW`,
/// and `shift = i·(Wp − OW)`, so that lane `l` belongs at `16u + l − shift = i·OW + j` of the
/// plane. The correlation stores each vector with these masks straight into the output planes;
/// the dropped columns and the rounded-up tail are never written.
struct Scatter {
    /// `segs[first[u]..first[u + 1]]` are vector `u`'s.
    first: Vec<usize>,
    segs: Vec<(u16, isize)>,
}

impl Scatter {
    fn new(qlen: usize, wp: usize, oh: usize, ow: usize) -> Self {
        let mut first = vec![0];
        let mut segs = Vec::new();
        for u in 0..qlen / 16 {
            let mut row: Option<(usize, u16)> = None;
            for l in 0..16 {
                let q = 16 * u + l;
                let (i, j) = (q / wp, q % wp);
                if i >= oh || j >= ow {
                    continue;
                }
                match &mut row {
                    Some((r, m)) if *r == i => *m |= 1 << l,
                    _ => {
                        if let Some((r, m)) = row {
                            segs.push((m, (r * (wp - ow)) as isize));
                        }
                        row = Some((i, 1 << l));
                    }
                }
            }
            if let Some((r, m)) = row {
                segs.push((m, (r * (wp - ow)) as isize));
            }
            first.push(segs.len());
        }
        Self { first, segs }
    }

    /// The segments of vector `u`.
    #[inline(always)]
    fn of(&self, u: usize) -> &[(u16, isize)] {
        &self.segs[self.first[u]..self.first[u + 1]]
    }
}

impl Plan {
    fn new(src_ch: usize, hp: usize, wp: usize, kh: usize, kw: usize) -> Self {
        let plane = hp * wp;
        let (oh, ow) = (hp + 1 - kh, wp + 1 - kw);
        let qlen = (oh * wp).div_ceil(16) * 16;
        let mut offs = Vec::with_capacity(src_ch * kh * kw);
        for c in 0..src_ch {
            for a in 0..kh {
                for b in 0..kw {
                    offs.push(c * plane + a * wp + b);
                }
            }
        }
        let max_off = offs.iter().copied().max().unwrap_or(0);
        let src_len = (src_ch * plane).max(max_off + qlen);
        Self {
            plane,
            wp,
            src_ch,
            oh,
            ow,
            qlen,
            offs,
            src_len,
            scatter: Scatter::new(qlen, wp, oh, ow),
        }
    }

    /// Copies `src: [src_ch, h, w]` into `dst` (length `src_len`) padded by `(top, left)`, zero
    /// elsewhere ([`pad_planes`], then the slack after the planes cleared).
    fn pad_into(&self, src: &[f32], h: usize, w: usize, top: usize, left: usize, dst: &mut [f32]) {
        pad_planes(
            src,
            self.src_ch,
            (h, w),
            (self.plane / self.wp, self.wp),
            (top, left),
            dst,
        );
        dst[self.src_ch * self.plane..self.src_len].fill(0.0);
    }

    /// Writes `src: [rows, OH, OW]` into `dst: [rows, qlen]` at `q = i·Wp + j`, zero at the
    /// dropped columns and the rounded-up tail.
    fn flatten_into(&self, src: &[f32], rows: usize, dst: &mut [f32]) {
        let (oh, ow, wp, ql) = (self.oh, self.ow, self.wp, self.qlen);
        for r in 0..rows {
            let d = &mut dst[r * ql..(r + 1) * ql];
            for i in 0..oh {
                d[i * wp..i * wp + ow].copy_from_slice(&src[(r * oh + i) * ow..(r * oh + i + 1) * ow]);
                d[i * wp + ow..(i + 1) * wp].fill(0.0);
            }
            d[oh * wp..].fill(0.0);
        }
    }
}

/// Copies `src: [ch, h, w]` into the first `ch` planes of `dst`, each `hp × wp`, at `(top, left)`,
/// zero elsewhere in them (only the borders are cleared; the interior is overwritten). Shared
/// with [`crate::conv_lanes`].
pub(crate) fn pad_planes(
    src: &[f32],
    ch: usize,
    (h, w): (usize, usize),
    (hp, wp): (usize, usize),
    (top, left): (usize, usize),
    dst: &mut [f32],
) {
    let plane = hp * wp;
    for c in 0..ch {
        let pl = &mut dst[c * plane..(c + 1) * plane];
        pl[..top * wp + left].fill(0.0);
        for i in 0..h {
            let d0 = (i + top) * wp + left;
            pl[d0..d0 + w].copy_from_slice(&src[(c * h + i) * w..(c * h + i + 1) * w]);
            // the right border of this row and the left border of the next one
            let end = ((i + top + 1) * wp + left).min(plane);
            pl[d0 + w..end].fill(0.0);
        }
        pl[((h + top) * wp + left).min(plane)..].fill(0.0);
    }
}

/// The input gradient's kernel for one group, `w: [O/G, C/G, KH, KW]` flipped and transposed to
/// `w̃[c, (o, a, b)] = w[o, c, KH − 1 − a, KW − 1 − b]`. Shared with [`crate::conv_lanes`].
pub(crate) fn flipped_kernel(wg: &[f32], og: usize, cg: usize, kh: usize, kw: usize) -> Vec<f32> {
    let (k, kt) = (cg * kh * kw, og * kh * kw);
    let mut wt = vec![0f32; cg * kt];
    for c in 0..cg {
        for o in 0..og {
            for a in 0..kh {
                for b in 0..kw {
                    wt[c * kt + (o * kh + a) * kw + b] = wg[o * k + (c * kh + (kh - 1 - a)) * kw + (kw - 1 - b)];
                }
            }
        }
    }
    wt
}

/// Rows of `W[rows, K]` (row-major) packed per block of 8, 4, 2 or 1 rows as `[K][block]`, so that
/// the correlation loop reads each tap's weights from consecutive addresses.
struct Packed {
    /// `(first row, rows in block, offset into data)`.
    blocks: Vec<(usize, usize, usize)>,
    data: Vec<f32>,
}

/// Splits `n` rows into blocks of 8, then one block each of 4, 2 and 1 as needed.
fn row_blocks(n: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut r = 0;
    while n - r >= 8 {
        out.push((r, 8));
        r += 8;
    }
    for b in [4, 2, 1] {
        if n - r >= b {
            out.push((r, b));
            r += b;
        }
    }
    out
}

impl Packed {
    fn new(wm: &[f32], rows: usize, k: usize) -> Self {
        let mut blocks = Vec::new();
        let mut data = Vec::with_capacity(rows * k);
        for (r0, rb) in row_blocks(rows) {
            blocks.push((r0, rb, data.len()));
            for kk in 0..k {
                for j in 0..rb {
                    data.push(wm[(r0 + j) * k + kk]);
                }
            }
        }
        Self { blocks, data }
    }
}

/// `out[r, i, j] = Σ_k W[r, k] · src[δ_k + i·Wp + j] (+ bias[r])` for all rows of `w`, `i < OH`,
/// `j < OW`; `out` is `[rows, OH, OW]` and every entry of it is written.
fn correlate(plan: &Plan, src: &[f32], w: &Packed, bias: Option<&[f32]>, out: &mut [MaybeUninit<f32>]) {
    assert!(src.len() >= plan.src_len);
    let rows: usize = w.blocks.iter().map(|b| b.1).sum();
    let pix = plan.oh * plan.ow;
    assert!(out.len() >= rows * pix);
    assert!(bias.is_none_or(|b| b.len() >= rows));
    let k = plan.offs.len();
    assert!(w.data.len() >= rows * k);
    for q0 in (0..plan.qlen).step_by(PB) {
        // vectors in this block: 3, or 1–2 for the plane's last
        let nv = ((plan.qlen - q0) / 16).min(PB / 16);
        for &(r0, rb, off) in &w.blocks {
            let wk = &w.data[off..off + rb * k];
            let o = out[r0 * pix..].as_mut_ptr().cast::<f32>();
            // SAFETY: `applicable` checked AVX-512F; every read `δ_k + q0 + 16·nv − 1 < src_len`
            // by `Plan::new` (`q0 + 16·nv ≤ qlen`); the scatter writes only `(r0 + j)·pix + i·OW + j'` with `i < OH`,
            // `j' < OW`, `j < rb`, inside `out` (asserted above); the bias has `rb` entries from
            // `r0` on.
            unsafe {
                avx512::corr(
                    rb,
                    nv,
                    src.as_ptr(),
                    &plan.offs,
                    wk.as_ptr(),
                    bias.map(|b| b[r0..].as_ptr()),
                    o,
                    pix,
                    q0,
                    &plan.scatter,
                )
            }
        }
    }
}

/// `y = conv(x, w) (+ b)` on the direct path.
pub(crate) fn forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, g: &Geom) -> Vec<f32> {
    assert!(cpu_has_avx512(), "direct convolution called on a CPU without AVX-512F");
    let (ph, pw) = g.p.padding;
    let (cg, og, k) = (g.cg(), g.og(), g.k());
    let plan = Plan::new(cg, g.h + 2 * ph, g.w + 2 * pw, g.kh, g.kw);
    debug_assert_eq!((plan.oh, plan.ow), (g.oh, g.ow));
    let packed: Vec<Packed> = (0..g.p.groups)
        .map(|gi| Packed::new(&w[gi * og * k..(gi + 1) * og * k], og, k))
        .collect();
    let pix = g.pix();
    let xs = g.c * g.h * g.w;
    if g.n * g.o * pix == 0 {
        return Vec::new();
    }
    // SAFETY: each part is one sample's output, `[O, OH, OW]`, and `correlate` writes every
    // entry of each group's channels.
    unsafe {
        crate::cpu::filled_with(
            g.n * g.o * pix,
            g.o * pix,
            || vec![0f32; plan.src_len],
            |src, ni, yn| {
                let xn = &x[ni * xs..(ni + 1) * xs];
                for gi in 0..g.p.groups {
                    let xg = &xn[gi * cg * g.h * g.w..(gi + 1) * cg * g.h * g.w];
                    plan.pad_into(xg, g.h, g.w, ph, pw, src);
                    let bg = bias.map(|b| &b[gi * og..(gi + 1) * og]);
                    correlate(&plan, src, &packed[gi], bg, &mut yn[gi * og * pix..(gi + 1) * og * pix]);
                }
            },
        )
    }
}

/// `dx = conv_transpose(dy, w)` on the direct path: the correlation of `dy` padded by
/// `K − 1 − p` with `w̃[c, (o, a, b)] = w[o, c, KH − 1 − a, KW − 1 − b]`.
pub(crate) fn input_grad(dy: &[f32], w: &[f32], g: &Geom) -> Vec<f32> {
    assert!(cpu_has_avx512(), "direct convolution called on a CPU without AVX-512F");
    let (ph, pw) = g.p.padding;
    let (qh, qw) = (g.kh - 1 - ph, g.kw - 1 - pw);
    let (cg, og, k) = (g.cg(), g.og(), g.k());
    let (kh, kw) = (g.kh, g.kw);
    let plan = Plan::new(og, g.oh + 2 * qh, g.ow + 2 * qw, kh, kw);
    debug_assert_eq!((plan.oh, plan.ow), (g.h, g.w));
    let kt = og * kh * kw;
    let packed: Vec<Packed> = (0..g.p.groups)
        .map(|gi| {
            let wt = flipped_kernel(&w[gi * og * k..(gi + 1) * og * k], og, cg, kh, kw);
            Packed::new(&wt, cg, kt)
        })
        .collect();
    let (pix, hw) = (g.pix(), g.h * g.w);
    let xs = g.c * hw;
    if g.n * xs == 0 {
        return Vec::new();
    }
    // SAFETY: each part is one sample's input gradient, `[C, H, W]`, and `correlate` writes every
    // entry of each group's channels.
    unsafe {
        crate::cpu::filled_with(
            g.n * xs,
            xs,
            || vec![0f32; plan.src_len],
            |src, ni, dxn| {
                let dyn_ = &dy[ni * g.o * pix..(ni + 1) * g.o * pix];
                for gi in 0..g.p.groups {
                    plan.pad_into(&dyn_[gi * og * pix..(gi + 1) * og * pix], g.oh, g.ow, qh, qw, src);
                    correlate(
                        &plan,
                        src,
                        &packed[gi],
                        None,
                        &mut dxn[gi * cg * hw..(gi + 1) * cg * hw],
                    );
                }
            },
        )
    }
}

/// `dw[o, (c, a, b)] = Σ_n Σ_q dy_flat[n, o, q] · x_pad[n, δ(c, a, b) + q]` on the direct path,
/// summed per chunk of samples ([`wgrad_chunk`]) and the chunk sums added in order.
pub(crate) fn weight_grad(x: &[f32], dy: &[f32], g: &Geom) -> Vec<f32> {
    assert!(cpu_has_avx512(), "direct convolution called on a CPU without AVX-512F");
    let (ph, pw) = g.p.padding;
    let (cg, og, k) = (g.cg(), g.og(), g.k());
    let plan = Plan::new(cg, g.h + 2 * ph, g.w + 2 * pw, g.kh, g.kw);
    let (pix, xs, ys) = (g.pix(), g.c * g.h * g.w, g.o * g.pix());
    let len = g.o * k;
    let chunk = wgrad_chunk(g.n);
    let starts: Vec<usize> = (0..g.n).step_by(chunk).collect();
    let obl = row_blocks(og);
    let tbl = tap_blocks(k);
    let nv = plan.qlen / 16;
    // Work per kernel call: a pixel tile of one sample, the plane cut into tiles of equal length
    // of at most TILE_V vectors.
    let tile = nv.div_ceil(nv.div_ceil(TILE_V));
    let dstride = og * plan.qlen;
    let parts: Vec<Vec<f32>> = starts
        .par_iter()
        .map(|&start| {
            let m = (start + chunk).min(g.n) - start;
            let mut acc = vec![0f32; len];
            let mut xbuf = vec![0f32; plan.src_len];
            let mut dbuf = vec![0f32; dstride];
            // per (o, k): 16 lane sums, reduced once at the end of the chunk
            let mut lanes = vec![0f32; og * k * 16];
            for gi in 0..g.p.groups {
                lanes.fill(0.0);
                for ni in start..start + m {
                    let xg = &x[ni * xs + gi * cg * g.h * g.w..ni * xs + (gi + 1) * cg * g.h * g.w];
                    plan.pad_into(xg, g.h, g.w, ph, pw, &mut xbuf);
                    plan.flatten_into(
                        &dy[ni * ys + gi * og * pix..ni * ys + (gi + 1) * og * pix],
                        og,
                        &mut dbuf,
                    );
                    for v0 in (0..nv).step_by(tile) {
                        let v1 = (v0 + tile).min(nv);
                        for &(o0, ob) in &obl {
                            for &(k0, tb) in &tbl {
                                // SAFETY: AVX-512F checked by `applicable`; reads stay within
                                // `xbuf` (`δ + qlen ≤ src_len`) and `dbuf` (`(o0 + ob)·qlen ≤
                                // dstride`), lane sums within `lanes` (`((o0 + ob − 1)·k + k0 +
                                // tb)·16`).
                                unsafe {
                                    avx512::wgrad(
                                        ob,
                                        tb,
                                        &plan.offs[k0..k0 + tb],
                                        &WgradArgs {
                                            x: xbuf.as_ptr(),
                                            d: dbuf.as_ptr().add(o0 * plan.qlen),
                                            dr: plan.qlen,
                                            v0,
                                            v1,
                                            lanes: lanes.as_mut_ptr().add((o0 * k + k0) * 16),
                                            ls: k * 16,
                                        },
                                    )
                                }
                            }
                        }
                    }
                }
                let accg = &mut acc[gi * og * k..(gi + 1) * og * k];
                for (a, l) in accg.iter_mut().zip(lanes.chunks_exact(16)) {
                    *a = l.iter().fold(0.0, |s, &v| s + v);
                }
            }
            acc
        })
        .collect();
    reduce_in_order(parts, len)
}

/// Splits `k` taps into blocks of 3, then one of 2 or 1.
fn tap_blocks(k: usize) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = (0..k / 3).map(|i| (3 * i, 3)).collect();
    if !k.is_multiple_of(3) {
        out.push((k - k % 3, k % 3));
    }
    out
}

/// Pointers and strides of one weight-gradient kernel call: `x` the padded input of one sample,
/// `d` its flattened output gradient from the block's first channel on (row stride `dr`), the
/// vectors `v0..v1`, and the lane sums `lanes` (row stride `ls`).
struct WgradArgs {
    x: *const f32,
    d: *const f32,
    dr: usize,
    v0: usize,
    v1: usize,
    lanes: *mut f32,
    ls: usize,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Scatter, WgradArgs};
    use std::arch::x86_64::*;

    /// Calls `$go!(R, C)` for the block shape `(R, C)`, `R ∈ {8, 4, 2, 1}` rows (output channels)
    /// and `C ∈ {3, 2, 1}` columns (vectors of pixels, or taps): the one dispatch of both kernels.
    macro_rules! blocks_3x4 {
        ($r:expr, $c:expr, $go:ident) => {
            match ($r, $c) {
                (8, 3) => $go!(8, 3),
                (8, 2) => $go!(8, 2),
                (8, _) => $go!(8, 1),
                (4, 3) => $go!(4, 3),
                (4, 2) => $go!(4, 2),
                (4, _) => $go!(4, 1),
                (2, 3) => $go!(2, 3),
                (2, 2) => $go!(2, 2),
                (2, _) => $go!(2, 1),
                (_, 3) => $go!(1, 3),
                (_, 2) => $go!(1, 2),
                _ => $go!(1, 1),
            }
        };
    }

    /// Dispatches [`corr_block`] on the block height `rb ∈ {8, 4, 2, 1}` and its width, `nv ∈
    /// {3, 2, 1}` vectors.
    ///
    /// # Safety
    /// AVX-512F must be available; `src[offs[k] + q0 + 0..16·nv]` readable for every `k`,
    /// `w[0..offs.len()·rb]` readable, `bias[0..rb]` readable if given, and for `j < rb` the
    /// entries of `out[j·stride..]` that `scatter` names for the vectors `q0/16 + 0..nv` writable.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn corr(
        rb: usize,
        nv: usize,
        src: *const f32,
        offs: &[usize],
        w: *const f32,
        bias: Option<*const f32>,
        out: *mut f32,
        stride: usize,
        q0: usize,
        scatter: &Scatter,
    ) {
        macro_rules! go {
            ($r:literal, $v:literal) => {
                corr_block::<$r, $v>(src, offs, w, bias, out, stride, q0, scatter)
            };
        }
        blocks_3x4!(rb, nv, go)
    }

    /// `acc[j, l] = Σ_k w[k·R + j] · src[offs[k] + q0 + l]` for `j < R`, `l < 16·V`, plus
    /// `bias[j]` if given, stored through the masks of `scatter` at `out + j·stride`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn corr_block<const R: usize, const V: usize>(
        src: *const f32,
        offs: &[usize],
        w: *const f32,
        bias: Option<*const f32>,
        out: *mut f32,
        stride: usize,
        q0: usize,
        scatter: &Scatter,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        let base = src.add(q0);
        for (kk, &off) in offs.iter().enumerate() {
            let p = base.add(off);
            let mut x = [_mm512_setzero_ps(); V];
            for (v, x) in x.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(p.add(16 * v));
            }
            let wk = w.add(kk * R);
            for (j, a) in acc.iter_mut().enumerate() {
                let wv = _mm512_set1_ps(*wk.add(j));
                for v in 0..V {
                    a[v] = _mm512_fmadd_ps(wv, x[v], a[v]);
                }
            }
        }
        if let Some(b) = bias {
            // after the sum, as `sum + b` (the bits of the sum-then-add this replaced)
            for (j, a) in acc.iter_mut().enumerate() {
                let bv = _mm512_set1_ps(*b.add(j));
                for a in a.iter_mut() {
                    *a = _mm512_add_ps(*a, bv);
                }
            }
        }
        for v in 0..V {
            let u = q0 / 16 + v;
            for &(mask, shift) in scatter.of(u) {
                // lane l of the vector goes to 16u + l − shift; masked-off lanes are not accessed
                let at = (16 * u) as isize - shift;
                for (j, a) in acc.iter().enumerate() {
                    _mm512_mask_storeu_ps(out.wrapping_add(j * stride).wrapping_offset(at), mask, a[v]);
                }
            }
        }
    }

    /// Dispatches [`wgrad_block`] on `(ob, tb)`, `ob ∈ {8, 4, 2, 1}`, `tb ∈ {3, 2, 1}`.
    ///
    /// # Safety
    /// AVX-512F must be available; for `v0 ≤ v < v1`: `x[offs[t] + 16v + 0..16]` and
    /// `d[j·dr + 16v + 0..16]` readable for `t < tb`, `j < ob`; `lanes[j·ls + 16t + 0..16]`
    /// readable and writable.
    pub(super) unsafe fn wgrad(ob: usize, tb: usize, offs: &[usize], a: &WgradArgs) {
        macro_rules! go {
            ($o:literal, $t:literal) => {
                wgrad_block::<$o, $t>(a, offs)
            };
        }
        blocks_3x4!(ob, tb, go)
    }

    /// `lanes[j·ls + 16t + l] += Σ_{v0 ≤ v < v1} d[j·dr + 16v + l] · x[offs[t] + 16v + l]` for
    /// `j < O`, `t < T`, `l < 16`.
    #[target_feature(enable = "avx512f")]
    unsafe fn wgrad_block<const O: usize, const T: usize>(args: &WgradArgs, offs: &[usize]) {
        let WgradArgs {
            x,
            d,
            dr,
            v0,
            v1,
            lanes,
            ls,
        } = *args;
        let mut acc = [[_mm512_setzero_ps(); T]; O];
        for (j, a) in acc.iter_mut().enumerate() {
            for (t, a) in a.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(lanes.add(j * ls + 16 * t));
            }
        }
        let mut off = [0usize; T];
        off.copy_from_slice(&offs[..T]);
        for v in v0..v1 {
            let mut xv = [_mm512_setzero_ps(); T];
            for (t, xv) in xv.iter_mut().enumerate() {
                *xv = _mm512_loadu_ps(x.add(off[t] + 16 * v));
            }
            for (j, a) in acc.iter_mut().enumerate() {
                let dv = _mm512_loadu_ps(d.add(j * dr + 16 * v));
                for t in 0..T {
                    a[t] = _mm512_fmadd_ps(dv, xv[t], a[t]);
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            for (t, a) in a.iter().enumerate() {
                _mm512_storeu_ps(lanes.add(j * ls + 16 * t), *a);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    //! Never called off x86-64: `applicable` is false there.
    use super::{Scatter, WgradArgs};
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn corr(
        _: usize,
        _: usize,
        _: *const f32,
        _: &[usize],
        _: *const f32,
        _: Option<*const f32>,
        _: *mut f32,
        _: usize,
        _: usize,
        _: &Scatter,
    ) {
        unreachable!("direct convolution needs x86-64")
    }
    pub(super) unsafe fn wgrad(_: usize, _: usize, _: &[usize], _: &WgradArgs) {
        unreachable!("direct convolution needs x86-64")
    }
}

#[cfg(test)]
mod tests {
    //! The direct path against the im2col path run in f64 on the same (f32-representable)
    //! inputs: an independent computation (packing + gemm, different summation order and
    //! precision). Skipped, saying so, on CPUs without AVX-512F.

    use super::*;
    use crate::conv::{conv_bias_fwd_cpu, conv_input_grad_cpu, conv_weight_grad_cpu, ConvParams};
    use rand::{Rng, SeedableRng};

    fn rand_vec(rng: &mut rand_chacha::ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn wide(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }

    /// Largest `|a − b|` relative to `max(1, max |b|)`.
    fn rel_err(a: &[f32], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        a.iter().zip(b).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max) / scale
    }

    type Dims4 = (usize, usize, usize, usize);
    type Case = (Dims4, Dims4, (usize, usize), usize);

    /// `(x shape, kernel shape, padding, groups)`: batch 1 and odd batches, 7×7 with padding 3,
    /// rectangular kernels and padding, non-square inputs, kernels larger than the input and
    /// sides of 1, groups and depthwise, channel counts that leave every row-block tail
    /// (8/4/2/1) and tap-block tail (3/2/1), planes with several pixel tiles, and the LeNet-5 /
    /// ResNet-20 shapes.
    fn cases() -> Vec<Case> {
        vec![
            ((1, 1, 28, 28), (6, 1, 5, 5), (2, 2), 1),
            ((3, 6, 14, 14), (16, 6, 5, 5), (0, 0), 1),
            ((2, 16, 32, 32), (16, 16, 3, 3), (1, 1), 1),
            ((2, 64, 8, 8), (64, 64, 3, 3), (1, 1), 1),
            ((2, 64, 7, 7), (64, 64, 3, 3), (1, 1), 1),
            ((1, 3, 9, 13), (15, 3, 7, 7), (3, 3), 1),
            ((2, 4, 11, 7), (7, 4, 3, 5), (1, 2), 1),
            ((3, 6, 10, 9), (6, 2, 3, 3), (0, 1), 3),
            ((2, 5, 12, 12), (5, 1, 3, 3), (1, 1), 5),
            ((1, 2, 40, 37), (17, 2, 2, 3), (1, 0), 1),
            ((5, 1, 6, 6), (1, 1, 2, 2), (0, 1), 1),
            ((2, 3, 2, 1), (4, 3, 5, 3), (2, 1), 1),
            ((1, 2, 1, 1), (3, 2, 3, 3), (1, 1), 1),
            ((2, 2, 1, 9), (5, 2, 1, 3), (0, 2), 1),
        ]
    }

    #[test]
    fn direct_path_matches_im2col_in_f64() {
        if !cpu_has_avx512() {
            eprintln!("skipped: this CPU has no AVX-512F, the direct path is not used here");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for (xs, ws, pad, groups) in cases() {
            let p = ConvParams {
                stride: (1, 1),
                padding: pad,
                dilation: (1, 1),
                groups,
            };
            let g = Geom::new(xs, ws, p).unwrap();
            assert!(
                g.p.stride == (1, 1) && !g.is_pointwise() && pad.0 < g.kh && pad.1 < g.kw,
                "case {xs:?} {ws:?} must take the direct path"
            );
            let x = rand_vec(&mut rng, xs.0 * xs.1 * xs.2 * xs.3);
            let w = rand_vec(&mut rng, ws.0 * ws.1 * ws.2 * ws.3);
            let b = rand_vec(&mut rng, ws.0);
            let dy = rand_vec(&mut rng, g.n * g.o * g.pix());
            let (x64, w64, b64, dy64) = (wide(&x), wide(&w), wide(&b), wide(&dy));

            let y = forward(&x, &w, Some(&b), &g);
            // f32 sums of at most 576 products of numbers in [−1, 1]: rounding grows like
            // √K·2⁻²⁴ ≈ 1.4e-6 of the scale; 1e-5 leaves room, while a wrong tap or offset gives
            // errors of order 1 (1.22 and 1.72 when the kernels were broken on purpose)
            let e = rel_err(&y, &conv_bias_fwd_cpu(&x64, &w64, Some(&b64), &g));
            assert!(e < 1e-5, "forward {xs:?} * {ws:?} pad {pad:?}: relative error {e:.2e}");
            let y0 = forward(&x, &w, None, &g);
            let e = rel_err(&y0, &conv_bias_fwd_cpu(&x64, &w64, None, &g));
            assert!(e < 1e-5, "forward without bias {xs:?} * {ws:?}: relative error {e:.2e}");

            let dx = input_grad(&dy, &w, &g);
            let e = rel_err(&dx, &conv_input_grad_cpu(&dy64, &w64, &g));
            assert!(
                e < 1e-5,
                "input grad {xs:?} * {ws:?} pad {pad:?}: relative error {e:.2e}"
            );

            let dw = weight_grad(&x, &dy, &g);
            let e = rel_err(&dw, &conv_weight_grad_cpu(&x64, &dy64, &g));
            assert!(
                e < 1e-5,
                "weight grad {xs:?} * {ws:?} pad {pad:?}: relative error {e:.2e}"
            );
        }
    }

    #[test]
    fn direct_weight_grad_is_bit_identical_across_thread_counts() {
        if !cpu_has_avx512() {
            eprintln!("skipped: this CPU has no AVX-512F, the direct path is not used here");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let g = Geom::new((37, 16, 16, 16), (16, 16, 3, 3), ConvParams::new(1, 1, 1, 1)).unwrap();
        let x = rand_vec(&mut rng, g.n * g.c * g.h * g.w);
        let dy = rand_vec(&mut rng, g.n * g.o * g.pix());
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| weight_grad(&x, &dy, &g))
        };
        let one = run(1);
        for t in [2, 3, 5] {
            let other = run(t);
            assert!(
                one.iter().zip(&other).all(|(a, b)| a.to_bits() == b.to_bits()),
                "weight gradient differs between 1 and {t} threads"
            );
        }
    }

    #[test]
    fn padding_copies_match_a_plain_loop() {
        if !cpu_has_avx512() {
            eprintln!("skipped: this CPU has no AVX-512F, the direct path is not used here");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        // (channels, h, w, top, left, bottom, right): ResNet-20's planes padded by 1, a row of
        // more than two vectors, rows narrower than a vector, padding 2 (5×5), uneven sides
        for (c, h, w, top, left, bottom, right) in [
            (3, 32, 32, 1, 1, 1, 1),
            (2, 5, 40, 1, 1, 1, 1),
            (4, 8, 8, 2, 2, 2, 2),
            (2, 3, 1, 0, 1, 2, 0),
            (1, 6, 15, 1, 0, 0, 1),
        ] {
            let (hp, wp) = (h + top + bottom, w + left + right);
            let plan = Plan::new(c, hp, wp, 1 + top + bottom, 1 + left + right);
            let src = rand_vec(&mut rng, c * h * w);
            // the buffer holds garbage, as a reused one does: every entry must be written
            let mut dst = vec![f32::NAN; plan.src_len];
            plan.pad_into(&src, h, w, top, left, &mut dst);
            for (k, &v) in dst.iter().enumerate() {
                let (ch, rem) = (k / plan.plane, k % plan.plane);
                let (i, j) = (rem / wp, rem % wp);
                let want = if ch < c && (top..top + h).contains(&i) && (left..left + w).contains(&j) {
                    src[(ch * h + i - top) * w + j - left]
                } else {
                    0.0
                };
                assert_eq!(
                    v.to_bits(),
                    want.to_bits(),
                    "pad {c}×{h}×{w} by ({top}, {left}): entry {k}"
                );
            }
            // flatten the [c, OH, OW] output of this plan into rows of width wp
            let (oh, ow) = (plan.oh, plan.ow);
            let out = rand_vec(&mut rng, c * oh * ow);
            let mut flat = vec![f32::NAN; c * plan.qlen];
            plan.flatten_into(&out, c, &mut flat);
            for (k, &v) in flat.iter().enumerate() {
                let (r, q) = (k / plan.qlen, k % plan.qlen);
                let (i, j) = (q / wp, q % wp);
                let want = if i < oh && j < ow {
                    out[(r * oh + i) * ow + j]
                } else {
                    0.0
                };
                assert_eq!(
                    v.to_bits(),
                    want.to_bits(),
                    "flatten {c}×{oh}×{ow} into width {wp}: entry {k}"
                );
            }
        }
    }

    #[test]
    fn scatter_names_every_output_pixel_once() {
        // (src channels, Hp, Wp, KH, KW): ResNet-20's three stages, LeNet-5's 5×5, a plane
        // narrower than a vector (Wp = 5: a vector spans four rows), a 1-pixel-wide output
        for (c, hp, wp, kh, kw) in [
            (16, 34, 34, 3, 3),
            (32, 18, 18, 3, 3),
            (64, 10, 10, 3, 3),
            (6, 14, 14, 5, 5),
            (2, 9, 5, 3, 3),
            (1, 7, 3, 3, 3),
        ] {
            let plan = Plan::new(c, hp, wp, kh, kw);
            let (oh, ow) = (plan.oh, plan.ow);
            let mut seen = vec![0u32; oh * ow];
            for u in 0..plan.qlen / 16 {
                for &(mask, shift) in plan.scatter.of(u) {
                    for l in 0..16 {
                        if mask & (1 << l) == 0 {
                            continue;
                        }
                        let q = 16 * u + l;
                        let (i, j) = (q / wp, q % wp);
                        assert!(i < oh && j < ow, "{hp}×{wp}: lane {q} is a dropped column or the tail");
                        let at = q as isize - shift;
                        assert_eq!(at, (i * ow + j) as isize, "{hp}×{wp}: lane {q} lands at {at}");
                        seen[i * ow + j] += 1;
                    }
                }
            }
            assert!(
                seen.iter().all(|&n| n == 1),
                "{hp}×{wp}: every output pixel once, got {seen:?}"
            );
        }
    }

    #[test]
    fn blocks_cover_every_row_and_tap_once() {
        for n in 0..40 {
            let rows = row_blocks(n);
            let mut next = 0;
            for (r0, rb) in rows {
                assert_eq!(r0, next);
                assert!([8, 4, 2, 1].contains(&rb));
                next += rb;
            }
            assert_eq!(next, n);
            let taps = tap_blocks(n);
            let mut next = 0;
            for (k0, tb) in taps {
                assert_eq!(k0, next);
                assert!((1..=3).contains(&tb));
                next += tb;
            }
            assert_eq!(next, n);
        }
    }
}
