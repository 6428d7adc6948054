//! Direct convolution with the output channels in the vector lanes (f32, AVX-512), for stride 1
//! (and stride 2 for the forward and the weight gradient), dilation 1, one group and small planes
//! with 32, 48, 64, … channels.
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
//! with `q_p = s·(i·Wp + j)` the flat position of output pixel `p = (i, j)` in the padded plane
//! (stride `s`; a run's pixels then broadcast from every `s`-th address) and
//! `δ_k = c·Hp·Wp + a·Wp + b` the offset of tap `k = (c, a, b)`, as in [`crate::conv_direct`].
//! The output pixels are cut into runs of at most `P` pixels (`P` = 6, 8, 12 for `V` = 4, 2, 1:
//! pieces of an output row, or of the plane's pixels in order across rows, [`Runs`]), and a
//! register block is `V` vectors of rows (16·V channels) by one run: per tap `V` weight vectors
//! are loaded and one input value per pixel broadcast (from consecutive addresses within a row
//! at stride 1). A run takes only the taps that read the unpadded source for at least one of its
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
//!   gradient laid out `[pixels][O]` per sample; a block is `V` vectors of output channels by up
//!   to `T` taps of one kernel position (`T` = 6, 8, 12 channels), summed over every sample of a
//!   chunk ([`wgrad_chunk`], which depends on the batch size only) and over the pixels whose read
//!   at that kernel position is unpadded ([`live_pixels`]; the others add exact zeros), in a fixed
//!   order, the chunk sums added in order: the result is the same for every thread count.
//!
//! Used where [`applicable`] says (measured per op against [`crate::conv_direct`] and im2col;
//! the figures are in BENCHMARKS.md). `SECATEUR_CONV_LANES=0` switches it off, for A/B
//! measurements.

use rayon::prelude::*;
use std::mem::MaybeUninit;

use crate::conv::{reduce_in_order, wgrad_chunk, ConvOp, Geom};
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

/// Whether the lanes path handles `op` on `g`: f32 on AVX-512F (checked by the caller's path),
/// stride 1 (or 2 in both directions for the forward and the weight gradient of kernels larger
/// than 1×1, the only ones measured), dilation 1, one
/// group, `p < K`, not pointwise, and the rows of the op a multiple of 16 (output channels for
/// the forward and weight gradient, input channels for the input gradient), on planes of at
/// most [`MAX_PLANE`] output pixels and `MAX_PLANE·stride²` input pixels with at least 32
/// channels of rows.
pub(crate) fn applicable(g: &Geom, op: ConvOp) -> bool {
    let rows = if op == ConvOp::InputGrad { g.c } else { g.o };
    let s = g.p.stride;
    (s == (1, 1) || (s == (2, 2) && op != ConvOp::InputGrad && g.kh * g.kw > 1))
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
        && g.h * g.w <= MAX_PLANE * s.0 * s.1
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

/// One correlation over padded planes: the source planes' geometry, the stride and the tap
/// offsets.
struct Plan {
    /// Source channels, padded plane `Hp × Wp`.
    ch: usize,
    hp: usize,
    wp: usize,
    /// Stride (the same in both directions): output pixel `(i, j)` reads from `(s·i, s·j)` on.
    s: usize,
    /// Output plane `OH × OW`.
    oh: usize,
    ow: usize,
    /// `δ_k` for `k = (c·KH + a)·KW + b`.
    offs: Vec<usize>,
}

impl Plan {
    fn new(ch: usize, hp: usize, wp: usize, kh: usize, kw: usize, s: usize) -> Self {
        let (oh, ow) = ((hp - kh) / s + 1, (wp - kw) / s + 1);
        let plane = hp * wp;
        let mut offs = Vec::with_capacity(ch * kh * kw);
        for c in 0..ch {
            for a in 0..kh {
                for b in 0..kw {
                    offs.push(c * plane + a * wp + b);
                }
            }
        }
        Self {
            ch,
            hp,
            wp,
            s,
            oh,
            ow,
            offs,
        }
    }

    /// Length of one padded source: every read `δ_k + q_p ≤ ch·Hp·Wp − 1` (`q_p = s·(i·Wp + j)`).
    fn src_len(&self) -> usize {
        self.ch * self.hp * self.wp
    }

    /// Copies `src: [ch, h, w]` into `dst` padded by `(top, left)`, zero elsewhere.
    fn pad_into(&self, src: &[f32], h: usize, w: usize, top: usize, left: usize, dst: &mut [f32]) {
        crate::conv_direct::pad_planes(src, self.ch, (h, w), (self.hp, self.wp), (top, left), dst);
    }
}

/// The correlation's work for one source geometry: runs of at most `P` output pixels, each with
/// the taps that read the unpadded source for at least one of its pixels (in tap order). A tap
/// whose every read in a run is padding only adds zeros; skipping it leaves the sum's value (an
/// exact zero added to a sum changes nothing but the sign of a zero sum).
///
/// The runs are cut one of two ways, whichever costs less by [`Cut::cost`]:
/// - **rows**: each output row cut into runs of consecutive pixels as equal as they come
///   ([`balanced`]), which read every `s`-th address. On an 8×8 plane under a padded 3×3 kernel,
///   runs of 4 pixels compute 528 of the 576 (pixel, tap) pairs (484 read the input): they leave
///   out the kernel rows above the first and below the last output row, and a run's border
///   columns share it with inner pixels.
/// - **flat**: the plane's pixels in order cut the same way, into runs that may cross rows
///   (their pixels' offsets listed). A 7×7 plane takes 9 runs of 5–6 pixels instead of 14 of 3–4
///   (408 pairs instead of 399): each tap's weights, loaded once per run, serve more pixels.
struct Runs {
    /// `(first pixel p, pixel count, index into sets, flat position q of p)`.
    runs: Vec<(usize, usize, usize, usize)>,
    /// Per run: `None` for a run within one output row (its pixels read every `s`-th address from
    /// `q`), or the index in `steps` of its `n` pixels' offsets from `q` (a run that crosses rows).
    gathers: Vec<Option<usize>>,
    /// Pixel offsets of the runs that cross rows.
    steps: Vec<usize>,
    /// Per tap set: `(δ_k, k·rows)` of its taps, `k = (c·KH + a)·KW + b` increasing.
    sets: Vec<Vec<(usize, usize)>>,
}

/// One way of cutting a plane into runs: per run its first pixel, its length and the kernel rows
/// `a0..a1` and columns `b0..b1` its pixels read unpadded.
struct Cut {
    runs: Vec<(usize, usize, [usize; 4])>,
}

impl Cut {
    /// Runs of the output pixels `p0..p0 + n` listed by `cuts`, each with the bounding rectangle
    /// of its pixels' live kernel positions: kernel row `a` is live for output row `i` where
    /// `top ≤ s·i + a < top + h`, column `b` for output column `j` where `left ≤ s·j + b < left +
    /// w`.
    fn new(
        plan: &Plan,
        (kh, kw): (usize, usize),
        (top, left): (usize, usize),
        (h, w): (usize, usize),
        cuts: impl Iterator<Item = (usize, usize)>,
    ) -> Self {
        let s = plan.s;
        let runs = cuts
            .map(|(p0, n)| {
                let mut r = [kh, 0, kw, 0];
                for p in p0..p0 + n {
                    let (i, j) = (p / plan.ow, p % plan.ow);
                    r[0] = r[0].min(top.saturating_sub(s * i));
                    r[1] = r[1].max((top + h).saturating_sub(s * i).min(kh));
                    r[2] = r[2].min(left.saturating_sub(s * j));
                    r[3] = r[3].max((left + w).saturating_sub(s * j).min(kw));
                }
                (p0, n, r)
            })
            .collect();
        Self { runs }
    }

    /// Each output row cut into runs of at most `p` pixels, as equal as they come ([`balanced`]).
    fn rows(plan: &Plan, k: (usize, usize), pad: (usize, usize), hw: (usize, usize), p: usize) -> Self {
        let ow = plan.ow;
        let cuts = (0..plan.oh).flat_map(move |i| balanced(ow, p).map(move |(j, n)| (i * ow + j, n)));
        Self::new(plan, k, pad, hw, cuts)
    }

    /// The plane's pixels in order cut into runs of at most `p` pixels, as equal as they come.
    fn flat(plan: &Plan, k: (usize, usize), pad: (usize, usize), hw: (usize, usize), p: usize) -> Self {
        Self::new(plan, k, pad, hw, balanced(plan.oh * plan.ow, p))
    }

    /// `Σ_runs taps·(n + 1)` per source channel: each tap of a run costs its `n` pixels'
    /// multiply-adds and one more for loading its weights. Per op on the 2-core AMD EPYC (ms,
    /// batch 128), with the flat cut of eacfbf9 (eight runs of 6 and one of 1 on 7×7, 8% below
    /// the rows by this cost): 256 channels forward and input gradient 41–42 → 33–36 ms with flat
    /// runs, 128 → 256 input gradient 42–45 → 34 (one thread); on 8×8 and 14×14 planes, 3%
    /// below, level (64 channels); so flat runs are taken only where they cost at least 5% less.
    /// The balanced flat cut of 7×7 (four runs of 6, five of 5) is 5.8% below the rows by this
    /// cost and measured level with eacfbf9's.
    fn cost(&self) -> usize {
        self.runs
            .iter()
            .map(|&(_, n, [a0, a1, b0, b1])| (a1 - a0) * (b1 - b0) * (n + 1))
            .sum()
    }
}

impl Runs {
    /// Runs for `plan`, whose source is `h × w` padded by `(top, left)` and read by a `kh × kw`
    /// kernel, of at most `p` pixels ([`Cut::rows`], or [`Cut::flat`] where it costs at least 5%
    /// less); weights `rows` apart.
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
        let args = ((kh, kw), (top, left), (h, w));
        let by_rows = Cut::rows(plan, args.0, args.1, args.2, p);
        let flat = Cut::flat(plan, args.0, args.1, args.2, p);
        let cut = if 20 * flat.cost() <= 19 * by_rows.cost() {
            flat
        } else {
            by_rows
        };
        let mut keys: Vec<[usize; 4]> = Vec::new();
        let mut sets: Vec<Vec<(usize, usize)>> = Vec::new();
        let (mut runs, mut gathers, mut steps) = (Vec::new(), Vec::new(), Vec::new());
        let s = plan.s;
        // the flat position of output pixel p in the padded plane
        let q_of = |p: usize| s * ((p / plan.ow) * plan.wp + p % plan.ow);
        for (p0, n, key) in cut.runs {
            let set = match keys.iter().position(|&k| k == key) {
                Some(i) => i,
                None => {
                    let [a0, a1, b0, b1] = key;
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
            let q0 = q_of(p0);
            runs.push((p0, n, set, q0));
            if p0 % plan.ow + n <= plan.ow {
                gathers.push(None);
            } else {
                gathers.push(Some(steps.len()));
                steps.extend((p0..p0 + n).map(|p| q_of(p) - q0));
            }
        }
        Self {
            runs,
            gathers,
            steps,
            sets,
        }
    }
}

/// `0..len` cut into the fewest runs of at most `p`, their lengths differing by at most one
/// (longer first): `(start, length)`. 49 pixels in runs of at most 6: four of 6, five of 5.
fn balanced(len: usize, p: usize) -> impl Iterator<Item = (usize, usize)> {
    let runs = len.div_ceil(p.max(1));
    let (base, extra) = (len.checked_div(runs).unwrap_or(0), len.checked_rem(runs).unwrap_or(0));
    (0..runs).scan(0, move |start, r| {
        let n = base + usize::from(r < extra);
        let at = *start;
        *start += n;
        Some((at, n))
    })
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
        for (&(p0, n, set, q0), gather) in runs.runs.iter().zip(&runs.gathers) {
            if let Some(g0) = *gather {
                // SAFETY: as below, the run's pixels read `q0 + steps[g0 + l]`, their own flat
                // positions in the padded plane.
                unsafe {
                    avx512::fwd_gather(
                        v,
                        n,
                        src.as_ptr().add(q0),
                        &runs.steps[g0..g0 + n],
                        &runs.sets[set],
                        wt.as_ptr().add(r0),
                        tbuf.as_mut_ptr().add(p0 * rows + r0),
                        rows,
                    )
                }
                continue;
            }
            // SAFETY: AVX-512F checked by `applicable`; every read `δ_k + q0 + s·l = c·Hp·Wp + (s·i
            // + a)·Wp + s·(j0 + l) + b` with `s·i + a < Hp` and `s·(j0 + l) + b < Wp` (the run's
            // pixels are in row i) is inside channel `c < ch` of `src` (asserted long enough); weights
            // `k·rows + r0 + 16V ≤ offs.len()·rows`; stores `(p0 + n − 1)·rows + r0 + 16V ≤
            // pix·rows ≤ tbuf.len()` (asserted), `n ≤ P` (asserted).
            unsafe {
                avx512::fwd(
                    v,
                    n,
                    plan.s,
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
    let plan = Plan::new(g.c, g.h + 2 * ph, g.w + 2 * pw, g.kh, g.kw, g.p.stride.0);
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
    debug_assert_eq!(g.p.stride, (1, 1));
    let plan = Plan::new(g.o, g.oh + 2 * qh, g.ow + 2 * qw, kh, kw, 1);
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
    let plan = Plan::new(g.c, g.h + 2 * ph, g.w + 2 * pw, g.kh, g.kw, g.p.stride.0);
    let (pix, xs, ys) = (g.pix(), g.c * g.h * g.w, g.o * g.pix());
    let sl = plan.src_len();
    let v = block_shape(o);
    let tb = per_block(v);
    let chunk = wgrad_chunk(g.n);
    let kk = g.kh * g.kw;
    let live = live_pixels(g);
    // per kernel position, the offsets δ of its taps channel by channel
    let blocks: Vec<Vec<usize>> = (0..kk)
        .map(|ab| (0..g.c).map(|c| plan.offs[c * kk + ab]).collect())
        .collect();
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
                // dwᵀ[k][o] for this chunk: per kernel position (a, b), blocks of up to `tb`
                // channels c, each tap k = (c·KH + a)·KW + b over the pixels whose read is unpadded
                let mut acc = vec![0f32; k * o];
                for o0 in (0..o).step_by(16 * v) {
                    for (ab, pixels) in live.iter().enumerate() {
                        let mut c0 = 0;
                        while c0 < g.c {
                            let t = tb.min(g.c - c0);
                            let offs = &blocks[ab][c0..c0 + t];
                            // SAFETY: AVX-512F checked by `applicable`; reads `j·sl + δ + q <
                            // m·sl` (`δ + q < sl`: `q` is an output pixel's flat position),
                            // `dt[j·pix·o + p·o + o0 + 16V] ≤ m·pix·o` (`p < pix`, `o0 + 16V ≤
                            // o`); stores `((c0 + t − 1)·KK + ab)·o + o0 + 16V ≤ k·o`.
                            unsafe {
                                avx512::wgrad(
                                    v,
                                    t,
                                    &WgradArgs {
                                        x: xp.as_ptr(),
                                        xs: sl,
                                        offs,
                                        pixels,
                                        d: dt.as_ptr().add(o0),
                                        ds: pix * o,
                                        m,
                                        out: acc.as_mut_ptr().add((c0 * kk + ab) * o + o0),
                                        os: kk * o,
                                    },
                                )
                            }
                            c0 += t;
                        }
                    }
                }
                acc
            },
        )
        .collect();
    // dwᵀ[k][o] → dw[o][k]
    to_pixel_major(&reduce_in_order(parts, k * o), 1, k, o)
}

/// For each kernel position `(a, b)` (index `a·KW + b`) of the forward correlation, the output
/// pixels `p = (i, j)` whose read `(s·i + a, s·j + b)` of the padded input lies in the unpadded
/// `H × W` source ([`conv_taps::source`](crate::conv_taps::source), the rule every path uses),
/// as `(p·O, q_p)`: the offset of `p`'s row in a sample's `[pixels][O]` output gradient and its
/// flat position `q_p = s·(i·Wp + j)` (stride `s`). Every other pixel reads padding and adds an
/// exact zero to the tap's sum (for a finite output gradient: an infinite or NaN one at such a
/// pixel made the sum NaN before, as im2col still does, and is now left out). On an 8×8 plane
/// under a 3×3 kernel with padding 1: 49 pixels at the corners, 56 at the edges, 64 in the
/// middle, 484 of 576 pairs.
fn live_pixels(g: &Geom) -> Vec<Vec<(usize, usize)>> {
    let (wp, s) = (g.w + 2 * g.p.padding.1, g.p.stride.0);
    (0..g.kh * g.kw)
        .map(|tap| {
            (0..g.pix())
                .filter(|&p| crate::conv_taps::source(g, p, tap).is_some())
                .map(|p| (p * g.o, s * ((p / g.ow) * wp + p % g.ow)))
                .collect()
        })
        .collect()
}

/// One weight-gradient block: the chunk's padded inputs `x` (sample stride `xs`), the taps
/// `offs`, the pixels summed over ([`live_pixels`]: each pixel's offset in a sample's output
/// gradients and its flat position), the `[pixels][O]` output gradients `d` from the block's
/// first channel on (sample stride `ds`), `m` samples, and where the sums go (`out`, tap stride
/// `os`).
struct WgradArgs<'a> {
    x: *const f32,
    xs: usize,
    offs: &'a [usize],
    pixels: &'a [(usize, usize)],
    d: *const f32,
    ds: usize,
    m: usize,
    out: *mut f32,
    os: usize,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::WgradArgs;
    use std::arch::x86_64::*;

    /// Calls `$go!(V, P)` for `$v ∈ {4, 2, 1}` vectors and `$n` pixels or taps, at most
    /// [`super::per_block`]`(V)`: the shapes the blocks are compiled for.
    macro_rules! by_shape {
        ($v:expr, $n:expr, $go:ident) => {
            match ($v, $n) {
                (4, 1) => $go!(4, 1),
                (4, 2) => $go!(4, 2),
                (4, 3) => $go!(4, 3),
                (4, 4) => $go!(4, 4),
                (4, 5) => $go!(4, 5),
                (4, 6) => $go!(4, 6),
                (2, 1) => $go!(2, 1),
                (2, 2) => $go!(2, 2),
                (2, 3) => $go!(2, 3),
                (2, 4) => $go!(2, 4),
                (2, 5) => $go!(2, 5),
                (2, 6) => $go!(2, 6),
                (2, 7) => $go!(2, 7),
                (2, 8) => $go!(2, 8),
                (1, 1) => $go!(1, 1),
                (1, 2) => $go!(1, 2),
                (1, 3) => $go!(1, 3),
                (1, 4) => $go!(1, 4),
                (1, 5) => $go!(1, 5),
                (1, 6) => $go!(1, 6),
                (1, 7) => $go!(1, 7),
                (1, 8) => $go!(1, 8),
                (1, 9) => $go!(1, 9),
                (1, 10) => $go!(1, 10),
                (1, 11) => $go!(1, 11),
                (1, 12) => $go!(1, 12),
                (v, n) => unreachable!("a block of {n} pixels or taps for {v} vectors"),
            }
        };
    }

    /// Dispatches [`corr_block`] on `v ∈ {4, 2, 1}` vectors of rows and `n` pixels (at most
    /// [`super::per_block`]`(v)`), pixel `i` reading `s·i` on (stride `s ∈ {1, 2}`).
    ///
    /// # Safety
    /// AVX-512F; `src[off + s·l]` readable for every `(off, _)` of `taps` and `l < n`;
    /// `w[wo + 0..16v]` readable for every `(_, wo)`; `t[i·ts + 0..16v]` writable for `i < n`.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn fwd(
        v: usize,
        n: usize,
        s: usize,
        src: *const f32,
        taps: &[(usize, usize)],
        w: *const f32,
        t: *mut f32,
        ts: usize,
    ) {
        macro_rules! stride1 {
            ($v:literal, $p:literal) => {
                corr_block::<$v, $p>(src, |i| i, taps, w, t, ts)
            };
        }
        macro_rules! stride2 {
            ($v:literal, $p:literal) => {
                corr_block::<$v, $p>(src, |i| 2 * i, taps, w, t, ts)
            };
        }
        if s == 1 {
            by_shape!(v, n, stride1)
        } else {
            by_shape!(v, n, stride2)
        }
    }

    /// [`fwd`] for a run whose pixels read `src[off + steps[i]]`.
    ///
    /// # Safety
    /// As [`fwd`], with `src[off + steps[l]]` readable.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn fwd_gather(
        v: usize,
        n: usize,
        src: *const f32,
        steps: &[usize],
        taps: &[(usize, usize)],
        w: *const f32,
        t: *mut f32,
        ts: usize,
    ) {
        macro_rules! go {
            ($v:literal, $p:literal) => {{
                let mut st = [0usize; $p];
                st.copy_from_slice(&steps[..$p]);
                corr_block::<$v, $p>(src, |i| st[i], taps, w, t, ts)
            }};
        }
        by_shape!(v, n, go)
    }

    /// `t[i·ts + 16v' + l] = Σ_{(off, wo)} src[off + at(i)] · w[wo + 16v' + l]`, `i < P`,
    /// `v' < V`: pixel `i` of the run at offset `at(i)` (`S·i` for a run within a row, its listed
    /// offset for a run across rows; the closure is inlined, so `S·i` stays an immediate).
    #[target_feature(enable = "avx512f")]
    unsafe fn corr_block<const V: usize, const P: usize>(
        src: *const f32,
        at: impl Fn(usize) -> usize,
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
                let xb = _mm512_set1_ps(*s.add(at(i)));
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

    /// Dispatches [`wgrad_block`] on `v ∈ {4, 2, 1}` vectors of output channels and `t` taps,
    /// at most [`super::per_block`]`(v)` (`a.offs.len() == t`).
    ///
    /// # Safety
    /// AVX-512F; for `j < m`, `k < t`, every `(dp, q)` of `pixels`: `x[j·xs + offs[k] + q]`
    /// and `d[j·ds + dp + 0..16v]` readable; `out[k·os + 0..16v]` writable.
    pub(super) unsafe fn wgrad(v: usize, t: usize, a: &WgradArgs) {
        macro_rules! go {
            ($v:literal, $t:literal) => {
                wgrad_block::<$v, $t>(a)
            };
        }
        by_shape!(v, t, go)
    }

    /// `out[k·os + 16v' + l] = Σ_j Σ_{(dp, q)} x[j·xs + offs[k] + q] · d[j·ds + dp + 16v' + l]`
    /// (samples, then pixels, in order).
    #[target_feature(enable = "avx512f")]
    unsafe fn wgrad_block<const V: usize, const T: usize>(a: &WgradArgs) {
        let mut off = [0usize; T];
        off.copy_from_slice(&a.offs[..T]);
        let mut acc = [[_mm512_setzero_ps(); V]; T];
        for j in 0..a.m {
            let xj = a.x.add(j * a.xs);
            let dj = a.d.add(j * a.ds);
            for &(dp, q) in a.pixels {
                let dp = dj.add(dp);
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
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn fwd(
        _: usize,
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
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn fwd_gather(
        _: usize,
        _: usize,
        _: *const f32,
        _: &[usize],
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::ConvParams;

    /// The forward's runs on `g`: their pixels partition the plane in order, at most `P` each;
    /// every (pixel, tap) pair whose read is unpadded is in the pixel's run's tap set; each
    /// pixel's read position is its own flat position. Returns the run lengths and whether each
    /// crosses rows.
    fn check_runs(g: &Geom) -> Vec<(usize, bool)> {
        let (ph, pw) = g.p.padding;
        let s = g.p.stride.0;
        let plan = Plan::new(g.c, g.h + 2 * ph, g.w + 2 * pw, g.kh, g.kw, s);
        let pmax = per_block(block_shape(g.o));
        let runs = Runs::new(&plan, g.kh, g.kw, ph, pw, g.h, g.w, pmax, g.o);
        let mut next = 0;
        let mut shape = Vec::new();
        for (&(p0, n, set, q0), gather) in runs.runs.iter().zip(&runs.gathers) {
            assert_eq!(p0, next, "runs in order");
            assert!((1..=pmax).contains(&n));
            next += n;
            let taps = &runs.sets[set];
            for (l, p) in (p0..p0 + n).enumerate() {
                let (i, j) = (p / g.ow, p % g.ow);
                let step = gather.map_or(s * l, |g0| runs.steps[g0 + l]);
                assert_eq!(q0 + step, s * (i * plan.wp + j), "pixel {p}'s position");
                for c in 0..g.c {
                    for a in 0..g.kh {
                        for b in 0..g.kw {
                            let (y, x) = (s * i + a, s * j + b);
                            let live = (ph..ph + g.h).contains(&y) && (pw..pw + g.w).contains(&x);
                            let k = (c * g.kh + a) * g.kw + b;
                            if live {
                                assert!(taps.contains(&(plan.offs[k], k * g.o)), "pixel {p} tap {k}");
                            }
                        }
                    }
                }
            }
            shape.push((n, gather.is_some()));
        }
        assert_eq!(next, g.oh * g.ow, "every pixel in a run");
        shape
    }

    #[test]
    fn balanced_runs_cover_in_order_and_differ_by_at_most_one() {
        assert_eq!(
            balanced(49, 6).map(|r| r.1).collect::<Vec<_>>(),
            [6, 6, 6, 6, 5, 5, 5, 5, 5]
        );
        assert_eq!(balanced(0, 6).count(), 0);
        for len in 1..60 {
            for p in 1..13 {
                let runs: Vec<_> = balanced(len, p).collect();
                assert_eq!(runs.len(), len.div_ceil(p));
                let mut at = 0;
                for &(start, n) in &runs {
                    assert_eq!(start, at);
                    assert!(n >= 1 && n <= p);
                    at += n;
                }
                assert_eq!(at, len);
                let (lo, hi) = (runs.iter().map(|r| r.1).min(), runs.iter().map(|r| r.1).max());
                assert!(hi.unwrap() - lo.unwrap() <= 1, "{len} in runs of {p}: {runs:?}");
            }
        }
    }

    fn geom(x: (usize, usize, usize, usize), w: (usize, usize, usize, usize), pad: usize, s: usize) -> Geom {
        Geom::new(x, w, ConvParams::new(s, pad, 1, 1)).unwrap()
    }

    #[test]
    fn runs_cover_every_live_pair_and_pick_the_cheaper_cut() {
        // 7×7 under 3×3: flat runs, 9 of 5–6 pixels (rows would be 14 of 3–4)
        let r = check_runs(&geom((1, 8, 7, 7), (64, 8, 3, 3), 1, 1));
        assert_eq!(r.iter().map(|r| r.0).collect::<Vec<_>>(), [6, 6, 6, 6, 5, 5, 5, 5, 5]);
        assert!(r.iter().any(|&(_, crosses)| crosses));
        // 8×8: rows, 16 runs of 4 (flat would cost only 3% less)
        let r = check_runs(&geom((1, 8, 8, 8), (64, 8, 3, 3), 1, 1));
        assert_eq!(r, vec![(4, false); 16]);
        // 3×3: rows (flat runs would read the padding rows)
        assert_eq!(check_runs(&geom((1, 8, 3, 3), (64, 8, 3, 3), 1, 1)).len(), 3);
        // runs across rows at stride 2 (ResNet-20's 32×16×16 → 64) and with 2 and 1 vectors
        for (x, w, s) in [
            ((1, 4, 16, 16), (64, 4, 3, 3), 2),
            ((1, 4, 7, 9), (32, 4, 3, 3), 1),
            ((1, 4, 9, 13), (48, 4, 3, 3), 1),
        ] {
            assert!(check_runs(&geom(x, w, 1, s)).iter().any(|&(_, c)| c), "{x:?} {w:?}");
        }
        // other shapes, strides and paddings: the invariants only
        for (x, w, pad, s) in [
            ((1, 4, 9, 7), (32, 4, 5, 5), 2, 1),
            ((1, 4, 6, 5), (48, 4, 3, 3), 1, 1),
            ((1, 4, 16, 16), (32, 4, 3, 3), 1, 2),
            ((1, 4, 10, 8), (48, 4, 5, 5), 2, 2),
            ((1, 4, 13, 11), (64, 4, 3, 3), 0, 2),
            ((1, 4, 14, 14), (32, 4, 3, 3), 1, 2),
        ] {
            check_runs(&geom(x, w, pad, s));
        }
    }
}
