//! Direct convolution with the output channels in the vector lanes (f32, AVX-512), for stride 1,
//! dilation 1, one group and small planes with 32, 48, 64, … channels.
//!
//! [`crate::conv_direct`] puts 16 flat pixels of a padded plane in each vector and broadcasts the
//! weights. On a small plane most of those vectors are partly the `KW − 1` dropped columns of each
//! padded row: ResNet-20's third stage (8×8 planes padded to 10×10) computes 80 flat pixels per
//! plane for 64 outputs, and its per-op time on the 2-core AMD EPYC was 1.5–1.8× oneDNN's (3.7 ms
//! against 2.4 ms forward at batch 128). Here each vector holds 16 output channels instead, and
//! the loop broadcasts one input value per output pixel, so only output pixels are computed:
//!
//! ```text
//! Y[p, r] = Σ_k src[δ_k + q_p] · Wᵀ[k, r]      (Y: [pixels][rows], rows in the lanes)
//! ```
//!
//! with `q_p = i·Wp + j` the flat position of output pixel `p = (i, j)` in the padded plane and
//! `δ_k = c·Hp·Wp + a·Wp + b` the offset of tap `k = (c, a, b)`, as in [`crate::conv_direct`].
//! Each output row is cut into equal runs of at most `P` consecutive pixels (`P` = 6, 8, 12 for
//! `V` = 4, 2, 1), and a register block is `V` vectors of rows (16·V channels) by one run: per
//! tap `V` weight vectors are loaded and one input value per pixel broadcast from consecutive
//! addresses. A run takes only the taps that read the unpadded source for at least one of its
//! pixels ([`Runs`]); the taps left out would only add exact zeros. On an 8×8 plane under a
//! padded 3×3 kernel 528 of the 576 (pixel, tap) pairs are computed (484 read the input). oneDNN's
//! direct kernel must skip such pairs too: its measured rate on that plane would exceed the host's
//! FMA peak otherwise (BENCHMARKS.md). Each sample's `[pixels][rows]` result is transposed into the `[rows, OH, OW]`
//! output at the end.
//!
//! - forward: rows are the output channels, `src` the input padded by `p`, `Wᵀ[k, o] = w[o, k]`;
//! - input gradient: rows are the input channels, `src` the output gradient padded by
//!   `K − 1 − p`, `Wᵀ[(o, a, b), c] = w[o, c, KH − 1 − a, KW − 1 − b]` (the flipped kernel);
//! - weight gradient: `dwᵀ[k, o] = Σ_n Σ_p x_pad[n, δ_k + q_p] · dy[n, o, p]`, with the output
//!   gradient laid out `[pixels][O]` per sample; a block is `V` vectors of output channels by `T`
//!   taps (`T` = 6, 8, 12), summed over every sample of a chunk ([`wgrad_chunk`], which depends on
//!   the batch size only) and over its pixels in a fixed order, the chunk sums added in order:
//!   the result is the same for every thread count. (The weight gradient multiplies the padding
//!   too.)
//!
//! Used where [`applicable`] says (measured per op against [`crate::conv_direct`] and im2col;
//! the figures are in BENCHMARKS.md). `SECATEUR_CONV_LANES=0` switches it off, for A/B
//! measurements.

use rayon::prelude::*;
use std::mem::MaybeUninit;

use crate::conv::{reduce_in_order, wgrad_chunk, Geom};
use crate::conv_direct::flipped_kernel;
use crate::conv_taps::to_pixel_major;

/// The most pixels (or taps) per block for `V` vectors of rows: `V·P` accumulators, 24 for
/// `V = 4`, 16 for `V = 2` and 12 for `V = 1` (at `V = 2` with 12 pixels the compiler hoisted
/// all the broadcasts and spilled accumulators to the stack).
const fn per_block(v: usize) -> usize {
    match v {
        4 => 6,
        2 => 8,
        _ => 12,
    }
}

/// Whether the lanes path handles `g`: f32 on AVX-512F (checked by the caller's path), stride 1,
/// dilation 1, one group, `p < K`, not pointwise, and the rows of the op a multiple of 16
/// (output channels for the forward and weight gradient, input channels for the input
/// gradient: `rows`), on planes of at most [`MAX_PLANE`] output pixels with at least 32
/// channels of rows.
pub(crate) fn applicable(g: &Geom, rows: usize) -> bool {
    g.p.stride == (1, 1)
        && g.p.dilation == (1, 1)
        && g.p.groups == 1
        && !g.is_pointwise()
        && g.p.padding.0 < g.kh
        && g.p.padding.1 < g.kw
        && g.h > 0
        && g.w > 0
        && rows.is_multiple_of(16)
        && rows >= 32
        && g.pix() <= MAX_PLANE
        && g.h * g.w <= MAX_PLANE
        && enabled()
}

/// The largest plane (pixels) the lanes path takes.
pub(crate) const MAX_PLANE: usize = 256;

/// AVX-512F present and not switched off by `SECATEUR_CONV_LANES=0` (read once).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let off = std::env::var("SECATEUR_CONV_LANES").is_ok_and(|v| v == "0");
        !off && crate::conv_direct::cpu_has_avx512()
    })
}

/// One correlation over padded planes: the source planes' geometry, the tap offsets and the
/// output pixels' flat positions.
struct Plan {
    /// Source channels, padded plane `Hp × Wp`.
    ch: usize,
    hp: usize,
    wp: usize,
    /// Output plane `OH × OW`.
    oh: usize,
    ow: usize,
    /// `δ_k` for `k = (c·KH + a)·KW + b`.
    offs: Vec<usize>,
    /// `q_p = i·Wp + j` for `p = i·OW + j`.
    qs: Vec<usize>,
}

impl Plan {
    fn new(ch: usize, hp: usize, wp: usize, kh: usize, kw: usize) -> Self {
        let (oh, ow) = (hp + 1 - kh, wp + 1 - kw);
        let plane = hp * wp;
        let mut offs = Vec::with_capacity(ch * kh * kw);
        for c in 0..ch {
            for a in 0..kh {
                for b in 0..kw {
                    offs.push(c * plane + a * wp + b);
                }
            }
        }
        let qs = (0..oh).flat_map(|i| (0..ow).map(move |j| i * wp + j)).collect();
        Self {
            ch,
            hp,
            wp,
            oh,
            ow,
            offs,
            qs,
        }
    }

    /// Length of one padded source: every read `δ_k + q_p ≤ ch·Hp·Wp − 1`.
    fn src_len(&self) -> usize {
        self.ch * self.hp * self.wp
    }

    /// Copies `src: [ch, h, w]` into `dst` padded by `(top, left)`, zero elsewhere.
    fn pad_into(&self, src: &[f32], h: usize, w: usize, top: usize, left: usize, dst: &mut [f32]) {
        crate::conv_direct::pad_planes(src, self.ch, (h, w), (self.hp, self.wp), (top, left), dst);
    }
}

/// The correlation's work for one source geometry: runs of at most `P` consecutive output
/// pixels of one output row, each with the taps that read the unpadded source for at least one
/// of its pixels (in tap order). A tap whose every read in a run is padding only adds zeros;
/// skipping it leaves the sum's value (an exact zero added to a sum changes nothing but the sign
/// of a zero sum). On an 8×8 plane under a padded 3×3 kernel the pairs that read only padding
/// are a sixth of all (92 of 576); runs of 4 pixels leave out 48 of them (the kernel rows above
/// the first and below the last output row; a run's border columns share it with inner pixels).
struct Runs {
    /// `(first pixel p = i·OW + j0, pixel count, index into sets, flat position q = i·Wp + j0)`.
    runs: Vec<(usize, usize, usize, usize)>,
    /// Per tap set: `(δ_k, k·rows)` of its taps, `k = (c·KH + a)·KW + b` increasing.
    sets: Vec<Vec<(usize, usize)>>,
}

impl Runs {
    /// Runs for `plan`, whose source is `h × w` padded by `(top, left)` and read by a `kh × kw`
    /// kernel; each row cut into equal runs of at most `p` pixels; weights `rows` apart.
    #[allow(clippy::too_many_arguments)]
    fn new(
        plan: &Plan,
        kh: usize,
        kw: usize,
        top: usize,
        left: usize,
        h: usize,
        w: usize,
        p: usize,
        rows: usize,
    ) -> Self {
        let mut keys: Vec<(usize, usize, usize, usize)> = Vec::new();
        let mut sets = Vec::new();
        let mut runs = Vec::new();
        let per_row = plan.ow.div_ceil(p.max(1));
        let len = plan.ow.div_ceil(per_row.max(1));
        for i in 0..plan.oh {
            // kernel rows a with top ≤ i + a < top + h
            let a0 = top.saturating_sub(i);
            let a1 = (top + h).saturating_sub(i).min(kh);
            let mut j0 = 0;
            while j0 < plan.ow {
                let n = len.min(plan.ow - j0);
                let j1 = j0 + n - 1;
                // kernel columns b with j + b in [left, left + w) for some j in [j0, j1]
                let b0 = left.saturating_sub(j1);
                let b1 = (left + w).saturating_sub(j0).min(kw);
                let key = (a0, a1, b0, b1);
                let set = match keys.iter().position(|&k| k == key) {
                    Some(s) => s,
                    None => {
                        let mut taps = Vec::new();
                        for c in 0..plan.ch {
                            for a in a0..a1 {
                                for b in b0..b1 {
                                    let k = (c * kh + a) * kw + b;
                                    taps.push((plan.offs[k], k * rows));
                                }
                            }
                        }
                        keys.push(key);
                        sets.push(taps);
                        sets.len() - 1
                    }
                };
                runs.push((i * plan.ow + j0, n, set, i * plan.wp + j0));
                j0 += n;
            }
        }
        Self { runs, sets }
    }
}

/// `V` for `rows`: blocks of `16·V` rows and [`per_block`]`(V)` pixels.
fn block_shape(rows: usize) -> usize {
    if rows.is_multiple_of(64) {
        4
    } else if rows.is_multiple_of(32) {
        2
    } else {
        1
    }
}

/// `out[r, p] = Σ_k src[δ_k + q_p] · wt[k·rows + r] (+ bias[r])` over the taps of each run,
/// `out: [rows, OH·OW]`, every entry written; `tbuf` holds `[pixels][rows]`.
#[allow(clippy::too_many_arguments)]
fn correlate(
    plan: &Plan,
    runs: &Runs,
    src: &[f32],
    wt: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
    tbuf: &mut [f32],
    out: &mut [MaybeUninit<f32>],
) {
    let pix = plan.oh * plan.ow;
    let v = block_shape(rows);
    let p = per_block(v);
    assert!(src.len() >= plan.src_len());
    assert!(wt.len() >= plan.offs.len() * rows);
    assert!(tbuf.len() >= pix * rows && out.len() >= rows * pix);
    assert!(runs
        .runs
        .iter()
        .all(|&(p0, n, set, _)| n >= 1 && n <= p && p0 + n <= pix && set < runs.sets.len()));
    for r0 in (0..rows).step_by(16 * v) {
        for &(p0, n, set, q0) in &runs.runs {
            // SAFETY: AVX-512F checked by `applicable`; every read `δ_k + q0 + l = c·Hp·Wp + (i +
            // a)·Wp + j0 + l + b` with `i + a < Hp` and `j0 + l + b < Wp` (the run's pixels are in
            // row i) is inside channel `c < ch` of `src` (asserted long enough); weights
            // `k·rows + r0 + 16V ≤ offs.len()·rows`; stores `(p0 + n − 1)·rows + r0 + 16V ≤
            // pix·rows ≤ tbuf.len()` (asserted), `n ≤ P` (asserted).
            unsafe {
                avx512::fwd(
                    v,
                    n,
                    src.as_ptr().add(q0),
                    &runs.sets[set],
                    wt.as_ptr().add(r0),
                    tbuf.as_mut_ptr().add(p0 * rows + r0),
                    rows,
                )
            }
        }
    }
    // [pixels][rows] → [rows][pixels] (+ bias)
    for r in 0..rows {
        let b = bias.map_or(0.0, |b| b[r]);
        let o = &mut out[r * pix..(r + 1) * pix];
        for (pi, o) in o.iter_mut().enumerate() {
            // after the sum, as `sum + b` (the other paths' order)
            o.write(if bias.is_some() {
                tbuf[pi * rows + r] + b
            } else {
                tbuf[pi * rows + r]
            });
        }
    }
}

/// `y = conv(x, w) (+ b)`, `[N, O, OH, OW]`.
pub(crate) fn forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, g: &Geom) -> Vec<f32> {
    let (ph, pw) = g.p.padding;
    let k = g.k();
    let plan = Plan::new(g.c, g.h + 2 * ph, g.w + 2 * pw, g.kh, g.kw);
    debug_assert_eq!((plan.oh, plan.ow), (g.oh, g.ow));
    let runs = Runs::new(&plan, g.kh, g.kw, ph, pw, g.h, g.w, per_block(block_shape(g.o)), g.o);
    // wt[k][o] = w[o][k]
    let wt = to_pixel_major(w, 1, g.o, k);
    let (pix, xs) = (g.pix(), g.c * g.h * g.w);
    if g.n * g.o * pix == 0 {
        return Vec::new();
    }
    // SAFETY: each part is one sample's output, `[O, OH, OW]`, which `correlate` writes whole.
    unsafe {
        crate::cpu::filled_with(
            g.n * g.o * pix,
            g.o * pix,
            || (vec![0f32; plan.src_len()], vec![0f32; pix * g.o]),
            |(src, tbuf), ni, yn| {
                plan.pad_into(&x[ni * xs..(ni + 1) * xs], g.h, g.w, ph, pw, src);
                correlate(&plan, &runs, src, &wt, g.o, bias, tbuf, yn);
            },
        )
    }
}

/// `dx = conv_transpose(dy, w)`, `[N, C, H, W]`: the correlation of `dy` padded by `K − 1 − p`
/// with the flipped kernel.
pub(crate) fn input_grad(dy: &[f32], w: &[f32], g: &Geom) -> Vec<f32> {
    let (ph, pw) = g.p.padding;
    let (qh, qw) = (g.kh - 1 - ph, g.kw - 1 - pw);
    let (kh, kw) = (g.kh, g.kw);
    let plan = Plan::new(g.o, g.oh + 2 * qh, g.ow + 2 * qw, kh, kw);
    debug_assert_eq!((plan.oh, plan.ow), (g.h, g.w));
    let runs = Runs::new(&plan, kh, kw, qh, qw, g.oh, g.ow, per_block(block_shape(g.c)), g.c);
    // wt[(o, a, b)][c] = w[o][c][KH − 1 − a][KW − 1 − b]: conv_direct's flipped kernel, transposed
    let wt = to_pixel_major(&flipped_kernel(w, g.o, g.c, kh, kw), 1, g.c, g.o * kh * kw);
    let (pix, hw) = (g.pix(), g.h * g.w);
    let xs = g.c * hw;
    if g.n * xs == 0 {
        return Vec::new();
    }
    // SAFETY: each part is one sample's input gradient, `[C, H, W]`, which `correlate` writes whole.
    unsafe {
        crate::cpu::filled_with(
            g.n * xs,
            xs,
            || (vec![0f32; plan.src_len()], vec![0f32; hw * g.c]),
            |(src, tbuf), ni, dxn| {
                plan.pad_into(&dy[ni * g.o * pix..(ni + 1) * g.o * pix], g.oh, g.ow, qh, qw, src);
                correlate(&plan, &runs, src, &wt, g.c, None, tbuf, dxn);
            },
        )
    }
}

/// `dw[o, k] = Σ_n Σ_p x_pad[n, δ_k + q_p] · dy[n, o, p]`, summed per chunk of samples
/// ([`wgrad_chunk`]) in a fixed order and the chunk sums added in order.
pub(crate) fn weight_grad(x: &[f32], dy: &[f32], g: &Geom) -> Vec<f32> {
    let (ph, pw) = g.p.padding;
    let k = g.k();
    let o = g.o;
    let plan = Plan::new(g.c, g.h + 2 * ph, g.w + 2 * pw, g.kh, g.kw);
    let (pix, xs, ys) = (g.pix(), g.c * g.h * g.w, g.o * g.pix());
    let sl = plan.src_len();
    let v = block_shape(o);
    let tb = per_block(v);
    let chunk = wgrad_chunk(g.n);
    let starts: Vec<usize> = (0..g.n).step_by(chunk).collect();
    let parts: Vec<Vec<f32>> = starts
        .par_iter()
        // the chunk's padded inputs and its output gradients as [pixels][O], both written whole
        // before they are read; one pair of buffers serves every chunk a worker takes
        .map_init(
            || (vec![0f32; chunk * sl], vec![0f32; chunk * pix * o]),
            |(xp, dt), &start| {
                let m = (start + chunk).min(g.n) - start;
                for (j, ni) in (start..start + m).enumerate() {
                    plan.pad_into(
                        &x[ni * xs..(ni + 1) * xs],
                        g.h,
                        g.w,
                        ph,
                        pw,
                        &mut xp[j * sl..(j + 1) * sl],
                    );
                    let d = &dy[ni * ys..(ni + 1) * ys];
                    let t = &mut dt[j * pix * o..(j + 1) * pix * o];
                    for oi in 0..o {
                        for pi in 0..pix {
                            t[pi * o + oi] = d[oi * pix + pi];
                        }
                    }
                }
                // dwᵀ[k][o] for this chunk
                let mut acc = vec![0f32; k * o];
                for o0 in (0..o).step_by(16 * v) {
                    let mut k0 = 0;
                    while k0 < k {
                        let t = if k - k0 >= tb { tb } else { 1 };
                        // SAFETY: AVX-512F checked by `applicable`; reads `j·sl + δ + q_p < m·sl`
                        // (`δ + q_p < sl`), `dt[(j·pix + p)·o + o0 + 16v + 16] ≤ m·pix·o`; stores
                        // `(k0 + t − 1)·o + o0 + 16v + 16 ≤ k·o`.
                        unsafe {
                            avx512::wgrad(
                                v,
                                t,
                                &WgradArgs {
                                    x: xp.as_ptr(),
                                    xs: sl,
                                    offs: &plan.offs[k0..k0 + t],
                                    qs: &plan.qs,
                                    d: dt.as_ptr().add(o0),
                                    ds: pix * o,
                                    dr: o,
                                    m,
                                    out: acc.as_mut_ptr().add(k0 * o + o0),
                                    os: o,
                                },
                            )
                        }
                        k0 += t;
                    }
                }
                acc
            },
        )
        .collect();
    // dwᵀ[k][o] → dw[o][k]
    to_pixel_major(&reduce_in_order(parts, k * o), 1, k, o)
}

/// One weight-gradient block: the chunk's padded inputs `x` (sample stride `xs`), the taps
/// `offs`, the output pixels `qs`, the `[pixels][O]` output gradients `d` from the block's first
/// channel on (sample stride `ds`, pixel stride `dr`), `m` samples, and where the sums go (`out`,
/// tap stride `os`).
struct WgradArgs<'a> {
    x: *const f32,
    xs: usize,
    offs: &'a [usize],
    qs: &'a [usize],
    d: *const f32,
    ds: usize,
    dr: usize,
    m: usize,
    out: *mut f32,
    os: usize,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::WgradArgs;
    use std::arch::x86_64::*;

    /// Dispatches [`fwd_block`] on `v ∈ {4, 2, 1}` vectors of rows and `n` pixels, at most
    /// [`super::per_block`]`(v)`.
    ///
    /// # Safety
    /// AVX-512F; `src[off + l]` readable for every `(off, _)` of `taps` and `l < n`;
    /// `w[wo + 0..16v]` readable for every `(_, wo)`; `t[i·ts + 0..16v]` writable for `i < n`.
    pub(super) unsafe fn fwd(
        v: usize,
        n: usize,
        src: *const f32,
        taps: &[(usize, usize)],
        w: *const f32,
        t: *mut f32,
        ts: usize,
    ) {
        macro_rules! go {
            ($v:literal; $($p:literal)*) => {
                match n {
                    $($p => fwd_block::<$v, $p>(src, taps, w, t, ts),)*
                    _ => unreachable!("a run of {n} pixels for {} vectors", $v),
                }
            };
        }
        match v {
            4 => go!(4; 1 2 3 4 5 6),
            2 => go!(2; 1 2 3 4 5 6 7 8),
            _ => go!(1; 1 2 3 4 5 6 7 8 9 10 11 12),
        }
    }

    /// `t[i·ts + 16v' + l] = Σ_{(off, wo)} src[off + i] · w[wo + 16v' + l]`, `i < P`, `v' < V`.
    #[target_feature(enable = "avx512f")]
    unsafe fn fwd_block<const V: usize, const P: usize>(
        src: *const f32,
        taps: &[(usize, usize)],
        w: *const f32,
        t: *mut f32,
        ts: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; P];
        for &(off, wo) in taps {
            let wk = w.add(wo);
            let mut wv = [_mm512_setzero_ps(); V];
            for (j, wv) in wv.iter_mut().enumerate() {
                *wv = _mm512_loadu_ps(wk.add(16 * j));
            }
            let s = src.add(off);
            for (i, acc) in acc.iter_mut().enumerate() {
                let xb = _mm512_set1_ps(*s.add(i));
                for j in 0..V {
                    acc[j] = _mm512_fmadd_ps(xb, wv[j], acc[j]);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            for (j, a) in a.iter().enumerate() {
                _mm512_storeu_ps(t.add(i * ts + 16 * j), *a);
            }
        }
    }

    /// Dispatches [`wgrad_block`] on `v ∈ {4, 2, 1}` vectors of output channels and `tb` taps
    /// ([`super::per_block`]`(v)`, or 1 for the tail).
    ///
    /// # Safety
    /// AVX-512F; for `j < m`, `k < tb`, every `q` of `qs` (pixel `p`): `x[j·xs + offs[k] + q]`
    /// and `d[j·ds + p·dr + 0..16v]` readable; `out[k·os + 0..16v]` writable.
    pub(super) unsafe fn wgrad(v: usize, tb: usize, a: &WgradArgs) {
        match (v, tb) {
            (4, 6) => wgrad_block::<4, 6>(a),
            (4, _) => wgrad_block::<4, 1>(a),
            (2, 8) => wgrad_block::<2, 8>(a),
            (2, _) => wgrad_block::<2, 1>(a),
            (_, 12) => wgrad_block::<1, 12>(a),
            _ => wgrad_block::<1, 1>(a),
        }
    }

    /// `out[k·os + 16v' + l] = Σ_j Σ_p x[j·xs + offs[k] + qs[p]] · d[j·ds + p·dr + 16v' + l]`
    /// (samples, then pixels, in order).
    #[target_feature(enable = "avx512f")]
    unsafe fn wgrad_block<const V: usize, const T: usize>(a: &WgradArgs) {
        let mut off = [0usize; T];
        off.copy_from_slice(&a.offs[..T]);
        let mut acc = [[_mm512_setzero_ps(); V]; T];
        for j in 0..a.m {
            let xj = a.x.add(j * a.xs);
            let dj = a.d.add(j * a.ds);
            for (p, &q) in a.qs.iter().enumerate() {
                let dp = dj.add(p * a.dr);
                let mut dv = [_mm512_setzero_ps(); V];
                for (v, dv) in dv.iter_mut().enumerate() {
                    *dv = _mm512_loadu_ps(dp.add(16 * v));
                }
                let xq = xj.add(q);
                for k in 0..T {
                    let xb = _mm512_set1_ps(*xq.add(off[k]));
                    for v in 0..V {
                        acc[k][v] = _mm512_fmadd_ps(xb, dv[v], acc[k][v]);
                    }
                }
            }
        }
        for (k, acc) in acc.iter().enumerate() {
            for (v, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(a.out.add(k * a.os + 16 * v), *acc);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    //! Never called off x86-64: `applicable` is false there.
    use super::WgradArgs;
    pub(super) unsafe fn fwd(
        _: usize,
        _: usize,
        _: *const f32,
        _: &[(usize, usize)],
        _: *const f32,
        _: *mut f32,
        _: usize,
    ) {
        unreachable!("the lanes convolution needs AVX-512F")
    }
    pub(super) unsafe fn wgrad(_: usize, _: usize, _: &WgradArgs) {
        unreachable!("the lanes convolution needs AVX-512F")
    }
}
