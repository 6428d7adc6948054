//! Training-mode batch normalisation (Ioffe & Szegedy 2015), optionally fused with the ReLU that
//! follows it, as custom ops closed under differentiation up to second order.
//!
//! For an input `x: [B, C, ...]` each channel `c` has `n = B · Π(rest)` entries; with the batch
//! mean `μ`, the biased batch variance `v`, `s = √(v + ε)` and `x̂ = (x − μ) / s`:
//!
//! ```text
//! y = act(γ x̂ + β),       act = identity or ReLU
//! ```
//!
//! Writing `M = [γ x̂ + β > 0]` (all ones without the ReLU), `g' = M ⊙ g` for the upstream
//! gradient `g`, and per-channel means `ḡ' = mean(g')`, `m = mean(g' x̂)`:
//!
//! ```text
//! ∂L/∂x = (γ / s) (g' − ḡ' − x̂ m),      ∂L/∂γ = Σ g' x̂,      ∂L/∂β = Σ g'
//! ```
//!
//! (the standard batch-norm backward, e.g. Ioffe & Szegedy 2015, §3). The backward is made of
//! further custom ops of this module, whose own backward passes are derived in closed form
//! (for an upstream `h` of `∂L/∂x`, with `a = mean(h x̂)`, `h̄ = mean(h)`,
//! `c = mean(h g') − ḡ' h̄`):
//!
//! ```text
//! ∂⟨h, ∂L/∂x⟩/∂x = (γ / s²) [x̂ (3 m a − c) − a (g' − ḡ') − m (h − h̄)]
//! ∂⟨h, ∂L/∂x⟩/∂g = M ⊙ (γ / s) (h − h̄ − x̂ a)
//! ∂⟨h, ∂L/∂x⟩/∂γ = (n / s) (mean(h g') − h̄ ḡ' − a m)
//! ```
//!
//! and for an upstream `k = (k₁, k₂)` of `(∂L/∂γ, ∂L/∂β)`:
//! `∂/∂x = (k₁ / s)(g' − ḡ' − x̂ m)`, `∂/∂g = M ⊙ (k₁ x̂ + k₂)`. The ReLU mask is piecewise
//! constant, so it contributes nothing to second derivatives (almost everywhere). Hessian-vector
//! products by double backpropagation therefore work through these ops; a third derivative is
//! refused with an error.
//!
//! All ops reduce per channel (parallel over channels): each `(batch, channel)` plane is summed
//! in `T` with independent lane accumulators, and the planes' sums are added in `f64`. The batch
//! moments take one pass over memory (per-plane mean and M₂, merged pairwise as Chan, Golub &
//! LeVeque 1979); every sum over upstream gradients that a kernel needs (Σ g', Σ g'(x − μ),
//! Σ h, Σ h(x − μ), Σ g'h) comes from one fused pass. The three second-order kernels of one
//! node read the same inputs and share that pass. Elementwise formulas run in parallel over
//! planes, on all cores. Off the CPU, [`batch_norm_train`] falls back to candle's elementwise
//! ops.

use crate::cpu::contiguous;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex, OnceLock};

/// The result of [`batch_norm_train`]: the output and the (detached) batch statistics.
#[derive(Debug, Clone)]
pub struct BatchNormOutput {
    /// `act(γ x̂ + β)`, the shape of the input.
    pub y: Tensor,
    /// Batch mean per channel, `[C]`, detached.
    pub mean: Tensor,
    /// Biased batch variance per channel, `[C]`, detached (multiply by `n / (n − 1)` for the
    /// unbiased estimate that running statistics use).
    pub var: Tensor,
    /// Entries per channel, `n = B · Π(rest)`.
    pub count: usize,
}

/// Training-mode batch norm of `x: [B, C, ...]` with scale `weight: [C]`, shift `bias: [C]` and
/// `ε = eps`, followed by a ReLU if `relu` (see the module documentation for the formulas and
/// the derivatives). Differentiable twice in `x`, `weight` and `bias`.
pub fn batch_norm_train(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64, relu: bool) -> Result<BatchNormOutput> {
    let dims = x.dims();
    if dims.len() < 2 {
        candle_core::bail!("batch norm: input must have rank ≥ 2, got {dims:?}");
    }
    let c = dims[1];
    if weight.dims() != [c] || bias.dims() != [c] {
        candle_core::bail!(
            "batch norm over {c} channels: weight {:?} and bias {:?} must both be [{c}]",
            weight.dims(),
            bias.dims()
        );
    }
    if !(eps.is_finite() && eps > 0.0) {
        candle_core::bail!("batch norm: eps must be finite and > 0, got {eps}");
    }
    let count = x.elem_count() / c.max(1);
    if x.device().is_cpu() && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64) {
        let p = Tensor::stack(&[weight, bias], 0)?;
        let cell = Arc::new(Mutex::new(None));
        let op = BnForward {
            eps,
            relu,
            moments: cell.clone(),
        };
        let y = x.contiguous()?.apply_op2(&p, op)?;
        let moments = match cell.lock() {
            Ok(g) => g.clone(),
            Err(_) => None,
        }
        .ok_or_else(|| candle_core::Error::Msg("batch norm: the forward op left no statistics".into()))?;
        let mean: Vec<f64> = moments.iter().map(|m| m.mean).collect();
        let var: Vec<f64> = moments.iter().map(|m| m.var).collect();
        let mean = Tensor::from_vec(mean, c, x.device())?.to_dtype(x.dtype())?;
        let var = Tensor::from_vec(var, c, x.device())?.to_dtype(x.dtype())?;
        return Ok(BatchNormOutput { y, mean, var, count });
    }
    // Fallback: candle's ops (differentiable by candle's own rules).
    let batch = dims[0];
    let bshape: Vec<usize> = (0..dims.len()).map(|i| if i == 1 { c } else { 1 }).collect();
    let per_channel = |t: &Tensor| -> Result<Tensor> { t.reshape((batch, c, ()))?.sum(2)?.sum(0) };
    let mean = (per_channel(x)? / count as f64)?;
    let centred = x.broadcast_sub(&mean.reshape(bshape.clone())?)?;
    let var = (per_channel(&centred.sqr()?)? / count as f64)?;
    let scale = (weight * (&var + eps)?.sqrt()?.recip()?)?;
    let y = centred
        .broadcast_mul(&scale.reshape(bshape.clone())?)?
        .broadcast_add(&bias.reshape(bshape)?)?;
    let y = if relu { y.relu()? } else { y };
    Ok(BatchNormOutput {
        y,
        mean: mean.detach(),
        var: var.detach(),
        count,
    })
}

/// Geometry: `outer` batch entries, `c` channels, `inner` entries per plane.
#[derive(Debug, Clone, Copy)]
struct Geom {
    outer: usize,
    c: usize,
    inner: usize,
}

impl Geom {
    fn of(shape: &Shape) -> Result<Self> {
        let d = shape.dims();
        if d.len() < 2 {
            candle_core::bail!("batch norm: input must have rank ≥ 2, got {d:?}");
        }
        Ok(Self {
            outer: d[0],
            c: d[1],
            inner: d[2..].iter().product(),
        })
    }
    fn n(&self) -> usize {
        self.outer * self.inner
    }
    /// The `(b, c)` plane of a flat buffer.
    #[inline]
    fn plane<'a, T>(&self, buf: &'a [T], b: usize, c: usize) -> &'a [T] {
        let o = (b * self.c + c) * self.inner;
        &buf[o..o + self.inner]
    }
}

/// Per-channel batch moments `(mean, biased variance)`, computed once by the forward op and
/// reused by its backward (the input does not change in between).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Moment {
    mean: f64,
    var: f64,
}

/// Per-channel sums of the upstream gradient `(Σ g', Σ g' x̂)`, computed by the γ/β-gradient
/// kernel and reused by the x-gradient kernel of the same backward pass.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct GradSums {
    g: f64,
    gx: f64,
}

/// Per-channel quantities every kernel needs, in `f64`.
#[derive(Debug, Clone, Copy, Default)]
struct Chan {
    mean: f64,
    var: f64,
    /// `1 / s`.
    inv: f64,
    gamma: f64,
    beta: f64,
    /// A per-channel factor in place of γ (the `k₁` of the γ-gradient's backward), if given.
    scale: f64,
    /// `mean(g')`, `mean(g' x̂)`.
    gbar: f64,
    m: f64,
    /// `mean(h)`, `mean(h x̂)`, `mean(h g')`.
    hbar: f64,
    a: f64,
    hg: f64,
}

impl Chan {
    /// The pre-activation `A x + B = γ x̂ + β` whose sign is the ReLU mask.
    fn pre(&self) -> (f64, f64) {
        (self.gamma * self.inv, self.beta - self.gamma * self.inv * self.mean)
    }
}

/// The inputs of one kernel call, as flat slices.
#[derive(Clone, Copy)]
struct Args<'a, T> {
    x: &'a [T],
    /// `[rows, C]`: γ, β, then an optional scale row.
    p: &'a [T],
    rows: usize,
    g: Option<&'a [T]>,
    h: Option<&'a [T]>,
    geom: Geom,
    eps: f64,
    relu: bool,
    /// Moments known from the forward pass, if any.
    moments: Option<&'a [Moment]>,
    /// Gradient sums known from the γ/β kernel, if any.
    sums: Option<&'a [GradSums]>,
}

/// Lanes of the vectorisable loops.
const LANES: usize = 8;

/// Entries per parallel task of the elementwise kernels (whole planes are grouped up to this).
const PLANE_GROUP: usize = 1 << 15;

/// `Σ f(x_i, g_i, h_i)` over three equally long slices, `K` sums at once, in `T` with
/// [`LANES`] independent accumulators each (so that the loop vectorises), returned in `f64`.
/// Slices that a kernel does not use are passed as `x` again.
#[inline(always)]
fn sums3<T: WithDType, const K: usize>(x: &[T], g: &[T], h: &[T], f: impl Fn(T, T, T) -> [T; K]) -> [f64; K] {
    let mut acc = [[T::zero(); LANES]; K];
    let (xc, gc, hc) = (x.chunks_exact(LANES), g.chunks_exact(LANES), h.chunks_exact(LANES));
    let (xr, gr, hr) = (xc.remainder(), gc.remainder(), hc.remainder());
    for ((xs, gs), hs) in xc.zip(gc).zip(hc) {
        for l in 0..LANES {
            let v = f(xs[l], gs[l], hs[l]);
            for k in 0..K {
                acc[k][l] += v[k];
            }
        }
    }
    let mut out = [0f64; K];
    for ((&x, &g), &h) in xr.iter().zip(gr).zip(hr) {
        let v = f(x, g, h);
        for k in 0..K {
            out[k] += v[k].to_f64();
        }
    }
    for k in 0..K {
        for a in acc[k] {
            out[k] += a.to_f64();
        }
    }
    out
}

/// Mean and biased variance of one channel from its planes in one pass over memory: each plane's
/// mean and `M₂ = Σ (x − mean)²` (its second pass reads the plane from L1), merged in `f64` by
/// the pairwise update of Chan, Golub & LeVeque (1979):
/// `δ = m_b − m_a`, `m = m_a + δ n_b / n`, `M₂ = M₂,a + M₂,b + δ² n_a n_b / n`.
#[inline(always)]
fn channel_moments<T: WithDType>(planes: &[&[T]]) -> Moment {
    let (mut n, mut mean, mut m2) = (0f64, 0f64, 0f64);
    for x in planes {
        if x.is_empty() {
            continue;
        }
        let nb = x.len() as f64;
        let [s] = sums3(x, x, x, |v, _, _| [v]);
        let mt = T::from_f64(s / nb);
        // About the rounded mean m̃: Σ d, Σ d² with d = x − m̃, so mean = m̃ + Σd/n and
        // M₂ = Σ d² − (Σ d)²/n exactly.
        let [sd, sd2] = sums3(x, x, x, |v, _, _| {
            let d = v - mt;
            [d, d * d]
        });
        let mb = mt.to_f64() + sd / nb;
        let m2b = (sd2 - sd * sd / nb).max(0.0);
        let total = n + nb;
        let delta = mb - mean;
        mean += delta * nb / total;
        m2 += m2b + delta * delta * n * nb / total;
        n = total;
    }
    if n == 0.0 {
        return Moment {
            mean: f64::NAN,
            var: f64::NAN,
        };
    }
    Moment { mean, var: m2 / n }
}

/// `(Σ g', Σ g'(x − m))` with `g' = g · [a x + b > 0]` and `[a, b, m] = k`, for f32 on CPUs
/// with AVX-512F: 16 lanes, the mask as a zeroing move. The generic loop compiles its mask to a
/// branch per entry around the load of `g`, mispredicted on about half the entries after a
/// ReLU; this is the γ/β-gradient pass of every training step. `None` for other types or CPUs.
/// `a x + b` is a multiply then an add (no fused multiply-add), so the mask is the generic
/// loop's; the sums are added in another order.
#[inline(always)]
fn masked_sums_f32<T: WithDType>(x: &[T], g: &[T], k: [T; 3]) -> Option<[f64; 2]> {
    #[cfg(target_arch = "x86_64")]
    if T::DTYPE == candle_core::DType::F32 && g.len() == x.len() && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: T is f32 (its dtype says so), so the slices and values reinterpret exactly.
        let (xf, gf) = unsafe {
            (
                std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len()),
                std::slice::from_raw_parts(g.as_ptr() as *const f32, g.len()),
            )
        };
        let kf = k.map(|v| v.to_f64() as f32);
        // SAFETY: the CPU supports AVX-512F (checked above).
        return Some(unsafe { masked_sums_avx512(xf, gf, kf) });
    }
    let _ = (x, g, k);
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn masked_sums_avx512(x: &[f32], g: &[f32], [a, b, m]: [f32; 3]) -> [f64; 2] {
    use std::arch::x86_64::*;
    let n = x.len().min(g.len());
    let full = n / 16 * 16;
    let (va, vb, vm, zero) = (
        _mm512_set1_ps(a),
        _mm512_set1_ps(b),
        _mm512_set1_ps(m),
        _mm512_setzero_ps(),
    );
    let (mut s0, mut s1) = (zero, zero);
    let mut i = 0;
    while i < full {
        // SAFETY: i + 16 ≤ n ≤ both lengths.
        let (xv, gv) = unsafe { (_mm512_loadu_ps(x.as_ptr().add(i)), _mm512_loadu_ps(g.as_ptr().add(i))) };
        let on = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_add_ps(_mm512_mul_ps(va, xv), vb), zero);
        let gp = _mm512_maskz_mov_ps(on, gv);
        s0 = _mm512_add_ps(s0, gp);
        s1 = _mm512_add_ps(s1, _mm512_mul_ps(gp, _mm512_sub_ps(xv, vm)));
        i += 16;
    }
    let (mut l0, mut l1) = ([0f32; 16], [0f32; 16]);
    // SAFETY: two 16-float stores into 16-float arrays.
    unsafe {
        _mm512_storeu_ps(l0.as_mut_ptr(), s0);
        _mm512_storeu_ps(l1.as_mut_ptr(), s1);
    }
    let mut out = [0f64; 2];
    for j in full..n {
        let gp = if a * x[j] + b > 0.0 { g[j] } else { 0.0 };
        out[0] += gp as f64;
        out[1] += (gp * (x[j] - m)) as f64;
    }
    for l in 0..16 {
        out[0] += l0[l] as f64;
        out[1] += l1[l] as f64;
    }
    out
}

/// The `(b, c)` planes of channel `c`, for every `b`.
fn planes<T>(gm: Geom, buf: &[T], c: usize) -> Vec<&[T]> {
    (0..gm.outer).map(|b| gm.plane(buf, b, c)).collect()
}

/// `[g if on else 0]`.
#[inline(always)]
fn select<T: WithDType>(on: bool, v: T) -> T {
    if on {
        v
    } else {
        T::zero()
    }
}

impl<T: WithDType> Args<'_, T> {
    /// Channel statistics of `x` (or the cached moments), then the sums over `g'` and `h` that
    /// are present (or the cached gradient sums).
    fn channel(&self, c: usize) -> Chan {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { self.channel_avx2(c) };
        }
        self.channel_body(c)
    }

    /// [`Self::channel`] compiled with AVX2 (see [`affine_wide`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn channel_avx2(&self, c: usize) -> Chan {
        self.channel_body(c)
    }

    #[inline(always)]
    fn channel_body(&self, c: usize) -> Chan {
        let gm = self.geom;
        let n = gm.n() as f64;
        let xs = planes(gm, self.x, c);
        let Moment { mean, var } = match self.moments {
            Some(m) => m[c],
            None => channel_moments(&xs),
        };
        let inv = 1.0 / (var + self.eps).sqrt();
        let gamma = self.p[c].to_f64();
        let beta = self.p[gm.c + c].to_f64();
        let scale = if self.rows > 2 {
            self.p[2 * gm.c + c].to_f64()
        } else {
            gamma
        };
        let mut ch = Chan {
            mean,
            var,
            inv,
            gamma,
            beta,
            scale,
            ..Chan::default()
        };
        let (pa, pb) = ch.pre();
        let (pa, pb, mt, z) = (T::from_f64(pa), T::from_f64(pb), T::from_f64(mean), T::zero());
        let relu = self.relu;
        let on = move |x: T| !relu || pa * x + pb > z;
        // Every sum over the upstream gradients in one pass over the planes:
        // Σ g', Σ g'(x − μ), Σ h, Σ h(x − μ), Σ g' h.
        let [sg, sgx, sh, shx, shg] = match (self.g, self.h) {
            (Some(g), None) if self.sums.is_none() => {
                let mut t = [0f64; 5];
                for (x, g) in xs.iter().zip(planes(gm, g, c)) {
                    // Only behind a ReLU: without one, Σ g' is Σ g even where x is not finite.
                    let fast = if relu {
                        masked_sums_f32(x, g, [pa, pb, mt])
                    } else {
                        None
                    };
                    let [a, b] = match fast {
                        Some(v) => v,
                        None => sums3(x, g, x, |x, g, _| {
                            let gp = select(on(x), g);
                            [gp, gp * (x - mt)]
                        }),
                    };
                    t[0] += a;
                    t[1] += b;
                }
                t
            }
            (None, Some(h)) => {
                let mut t = [0f64; 5];
                for (x, h) in xs.iter().zip(planes(gm, h, c)) {
                    let [a, b] = sums3(x, h, x, |x, h, _| [h, h * (x - mt)]);
                    t[2] += a;
                    t[3] += b;
                }
                t
            }
            (Some(g), Some(h)) => {
                let mut t = [0f64; 5];
                let (gs, hs) = (planes(gm, g, c), planes(gm, h, c));
                for ((x, g), h) in xs.iter().zip(gs).zip(hs) {
                    let v = sums3(x, g, h, |x, g, h| {
                        let (gp, d) = (select(on(x), g), x - mt);
                        [gp, gp * d, h, h * d, gp * h]
                    });
                    for k in 0..5 {
                        t[k] += v[k];
                    }
                }
                t
            }
            _ => [0f64; 5],
        };
        if self.g.is_some() {
            let GradSums { g: sg, gx: sgx } = match self.sums {
                Some(s) => s[c],
                None => GradSums { g: sg, gx: sgx },
            };
            ch.gbar = sg / n;
            ch.m = sgx * inv / n;
            if self.h.is_some() {
                ch.hg = shg / n;
            }
        }
        if self.h.is_some() {
            ch.hbar = sh / n;
            ch.a = shx * inv / n;
        }
        ch
    }

    fn channels(&self) -> Vec<Chan> {
        (0..self.geom.c).into_par_iter().map(|c| self.channel(c)).collect()
    }

    /// `out = [on ∨ ¬zero_off] (cx x + cg g' + ch h + c0)` with one [`Affine`] per channel,
    /// parallel over planes, in `T`.
    fn map(&self, coefs: &[Affine], zero_off: bool) -> Vec<T> {
        let gm = self.geom;
        let coefs: Vec<[T; 6]> = coefs
            .iter()
            .map(|k| [k.a, k.b, k.cx, k.cg, k.ch, k.c0].map(T::from_f64))
            .collect();
        let (relu, g, h) = (self.relu, self.g, self.h);
        // Planes in groups of at least PLANE_GROUP entries per task (one task per plane would
        // spend more on scheduling than on the arithmetic for small planes).
        let inner = gm.inner.max(1);
        let per_task = PLANE_GROUP.div_ceil(inner).max(1);
        let fill = |t: usize, group: &mut [MaybeUninit<T>]| {
            for (j, o) in group.chunks_mut(inner).enumerate() {
                let k = t * per_task + j;
                let (b, c) = (k / gm.c, k % gm.c);
                let xs = gm.plane(self.x, b, c);
                let gs = g.map_or(xs, |g| gm.plane(g, b, c));
                let hs = h.map_or(xs, |h| gm.plane(h, b, c));
                // Monomorphised per (relu, zero_off) so that the loop has no invariant branch.
                match (relu, zero_off) {
                    (false, _) => affine_wide::<T, false, false>(o, xs, gs, hs, coefs[c]),
                    (true, false) => affine_wide::<T, true, false>(o, xs, gs, hs, coefs[c]),
                    (true, true) => affine_wide::<T, true, true>(o, xs, gs, hs, coefs[c]),
                }
            }
        };
        // SAFETY: the parts are whole planes (the length is `outer · C · inner`), and `affine`
        // writes every entry of each (it asserts the plane lengths equal).
        unsafe { crate::cpu::filled(self.x.len(), inner * per_task, fill) }
    }

    /// [`Self::map`] with the coefficients `coef(chan)` of each channel.
    fn map_each(&self, chans: &[Chan], zero_off: bool, coef: impl Fn(&Chan) -> Affine) -> Vec<T> {
        let coefs: Vec<Affine> = chans.iter().map(coef).collect();
        self.map(&coefs, zero_off)
    }

    /// A `[rows, C]` tensor buffer from per-channel rows.
    fn per_channel(rows: &[Vec<f64>]) -> Vec<T> {
        rows.iter().flat_map(|r| r.iter().map(|&v| T::from_f64(v))).collect()
    }
}

/// Per-channel coefficients of the elementwise map
/// `out = [on ∨ ¬zero_off] · (cx·x + cg·g' + ch·h + c0)`, with `on = ¬relu ∨ a·x + b > 0`
/// and `g' = on ? g : 0`.
#[derive(Debug, Clone, Copy, Default)]
struct Affine {
    a: f64,
    b: f64,
    cx: f64,
    cg: f64,
    ch: f64,
    c0: f64,
}

/// [`affine`] compiled for the CPU it runs on: with AVX2 where the CPU has it, for the baseline
/// (SSE2) otherwise. The crate is built for the baseline, where these loops (and the per-channel
/// sums of [`Args::channel`], dispatched alike) run four lanes at a time; with AVX2 they run
/// eight. No fused multiply-add is enabled and the sums keep their [`LANES`] accumulators, so
/// both builds give the same bits.
#[inline(always)]
fn affine_wide<T: WithDType, const RELU: bool, const ZERO_OFF: bool>(
    o: &mut [MaybeUninit<T>],
    x: &[T],
    g: &[T],
    h: &[T],
    k: [T; 6],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { affine_avx2::<T, RELU, ZERO_OFF>(o, x, g, h, k) };
    }
    affine::<T, RELU, ZERO_OFF>(o, x, g, h, k)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn affine_avx2<T: WithDType, const RELU: bool, const ZERO_OFF: bool>(
    o: &mut [MaybeUninit<T>],
    x: &[T],
    g: &[T],
    h: &[T],
    k: [T; 6],
) {
    affine::<T, RELU, ZERO_OFF>(o, x, g, h, k)
}

/// The elementwise loop of [`Args::map`] for one plane. Unused inputs carry zero coefficients.
#[inline(always)]
fn affine<T: WithDType, const RELU: bool, const ZERO_OFF: bool>(
    o: &mut [MaybeUninit<T>],
    x: &[T],
    g: &[T],
    h: &[T],
    k: [T; 6],
) {
    // every entry of `o` is written (what `Args::map` relies on)
    assert!(
        o.len() == x.len() && o.len() == g.len() && o.len() == h.len(),
        "batch norm: plane lengths differ"
    );
    let [pa, pb, cx, cg, ch, c0] = k;
    let (z, one) = (T::zero(), T::one());
    // The mask as a 0/1 factor chosen between two constants, in fixed-size blocks: this form
    // compiles to vector compares and blends instead of a branch per entry.
    let step = |o: &mut MaybeUninit<T>, x: T, g: T, h: T| {
        let m = if !RELU || pa * x + pb > z { one } else { z };
        let v = cx * x + cg * (g * m) + ch * h + c0;
        o.write(if ZERO_OFF { v * m } else { v });
    };
    let mut oc = o.chunks_exact_mut(LANES);
    let (xc, gc, hc) = (x.chunks_exact(LANES), g.chunks_exact(LANES), h.chunks_exact(LANES));
    let (xr, gr, hr) = (xc.remainder(), gc.remainder(), hc.remainder());
    for (((o8, x8), g8), h8) in (&mut oc).zip(xc).zip(gc).zip(hc) {
        for k in 0..LANES {
            step(&mut o8[k], x8[k], g8[k], h8[k]);
        }
    }
    for (((o, &x), &g), &h) in oc.into_remainder().iter_mut().zip(xr).zip(gr).zip(hr) {
        step(o, x, g, h);
    }
}

/// Which quantity a kernel computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// `y = act(γ x̂ + β)`.
    Forward,
    /// `∂L/∂x = (σ / s)(g' − ḡ' − x̂ m)`, σ = scale row or γ.
    GradX,
    /// `[Σ g' x̂, Σ g']` as `[2, C]`.
    GradP,
    /// `∂⟨h, GradX⟩/∂x`.
    HessX,
    /// `∂⟨h, GradX⟩/∂g`.
    HessG,
    /// `∂⟨h, GradX⟩/∂σ` as `[1, C]`.
    HessScale,
    /// `∂⟨k, GradP⟩/∂g = M ⊙ (k₁ x̂ + k₂)`, `k` the last two rows of `p`.
    GradPBackG,
}

/// Runs `kernel` on `a`. The per-channel quantities come from `shared` when another kernel on
/// the same inputs computed them already (see [`BnHess`]), else they are computed here.
fn run<T: WithDType>(kernel: Kernel, a: &Args<T>, shared: Option<&OnceLock<Vec<Chan>>>) -> (Vec<T>, Vec<Chan>) {
    // M ⊙ (k₁ x̂ + k₂) does not read g (an input for its shape only): no sums over it.
    let a = &match kernel {
        Kernel::GradPBackG => Args { g: None, ..*a },
        _ => *a,
    };
    let chans = match shared {
        Some(cell) => cell.get_or_init(|| a.channels()).clone(),
        None => a.channels(),
    };
    let n = a.geom.n() as f64;
    let out = match kernel {
        // y = act(γ x̂ + β)
        Kernel::Forward => a.map_each(&chans, a.relu, |ch| {
            let (pa, pb) = ch.pre();
            Affine {
                a: pa,
                b: pb,
                cx: pa,
                c0: pb,
                ..Affine::default()
            }
        }),
        // (σ/s)(g' − ḡ' − x̂ m) = P g' − P m inv x + P (m inv μ − ḡ')
        Kernel::GradX => a.map_each(&chans, false, |ch| {
            let (pa, pb) = ch.pre();
            let p = ch.scale * ch.inv;
            Affine {
                a: pa,
                b: pb,
                cx: -p * ch.m * ch.inv,
                cg: p,
                c0: p * (ch.m * ch.inv * ch.mean - ch.gbar),
                ..Affine::default()
            }
        }),
        Kernel::GradP => {
            let rows = [
                chans.iter().map(|ch| ch.m * n).collect::<Vec<_>>(),
                chans.iter().map(|ch| ch.gbar * n).collect(),
            ];
            Args::<T>::per_channel(&rows)
        }
        // (σ/s²)[x̂ (3ma − c) − a (g' − ḡ') − m (h − h̄)]
        Kernel::HessX => a.map_each(&chans, false, |ch| {
            let (pa, pb) = ch.pre();
            let k = ch.scale * ch.inv * ch.inv;
            let u = 3.0 * ch.m * ch.a - (ch.hg - ch.gbar * ch.hbar);
            Affine {
                a: pa,
                b: pb,
                cx: k * u * ch.inv,
                cg: -k * ch.a,
                ch: -k * ch.m,
                c0: k * (-u * ch.inv * ch.mean + ch.a * ch.gbar + ch.m * ch.hbar),
            }
        }),
        // M ⊙ (σ/s)(h − h̄ − x̂ a)
        Kernel::HessG => Args { g: None, ..*a }.map_each(&chans, true, |ch| {
            let (pa, pb) = ch.pre();
            let p = ch.scale * ch.inv;
            Affine {
                a: pa,
                b: pb,
                cx: -p * ch.a * ch.inv,
                ch: p,
                c0: p * (ch.a * ch.inv * ch.mean - ch.hbar),
                ..Affine::default()
            }
        }),
        Kernel::HessScale => {
            let row: Vec<f64> = chans
                .iter()
                .map(|ch| n * ch.inv * (ch.hg - ch.hbar * ch.gbar - ch.a * ch.m))
                .collect();
            Args::<T>::per_channel(&[row])
        }
        // M ⊙ (k₁ x̂ + k₂), k the last two rows of the pack
        Kernel::GradPBackG => {
            let c = a.geom.c;
            let coefs: Vec<Affine> = chans
                .iter()
                .enumerate()
                .map(|(i, ch)| {
                    let (pa, pb) = ch.pre();
                    let (k1, k2) = (a.p[(a.rows - 2) * c + i].to_f64(), a.p[(a.rows - 1) * c + i].to_f64());
                    Affine {
                        a: pa,
                        b: pb,
                        cx: k1 * ch.inv,
                        c0: k2 - k1 * ch.inv * ch.mean,
                        ..Affine::default()
                    }
                })
                .collect();
            a.map(&coefs, true)
        }
    };
    (out, chans)
}

/// What a kernel call may reuse from earlier calls on the same input.
#[derive(Debug, Clone, Default)]
struct Cache {
    moments: Option<Arc<Vec<Moment>>>,
    sums: Option<Arc<Vec<GradSums>>>,
}

/// The parameter pack `[rows, C]` of a kernel call: an input storage, or values read when the
/// op was built (the second-order kernels, whose outputs are not differentiated again).
#[derive(Clone, Copy)]
enum Pack<'a> {
    Storage(&'a CpuStorage, &'a Layout),
    Values(&'a [f64], usize),
}

/// Runs `kernel` on CPU storages: the input `x`, the parameter pack, and the upstream
/// gradients `g` and `h` that the kernel reads. Returns the output and the per-channel
/// quantities it used.
#[allow(clippy::too_many_arguments)]
fn cpu_run(
    kernel: Kernel,
    eps: f64,
    relu: bool,
    cache: &Cache,
    x: (&CpuStorage, &Layout),
    pack: Pack<'_>,
    g: Option<(&CpuStorage, &Layout)>,
    h: Option<(&CpuStorage, &Layout)>,
    shared: Option<&OnceLock<Vec<Chan>>>,
) -> Result<(CpuStorage, Shape, Vec<Chan>)> {
    let geom = Geom::of(x.1.shape())?;
    let (rows, pc) = match pack {
        Pack::Storage(_, l) => l.shape().dims2()?,
        Pack::Values(v, rows) => (rows, v.len() / rows.max(1)),
    };
    if pc != geom.c || rows < 2 {
        candle_core::bail!(
            "batch norm: a parameter pack of {rows} × {pc} does not match {} channels",
            geom.c
        );
    }
    let numel = x.1.shape().elem_count();
    for (_, tl) in g.iter().chain(h.iter()) {
        if tl.shape().elem_count() != numel {
            candle_core::bail!(
                "batch norm: gradient {:?} does not match input {:?}",
                tl.shape(),
                x.1.shape()
            );
        }
    }
    let out_shape = match kernel {
        Kernel::GradP => Shape::from((2, geom.c)),
        Kernel::HessScale => Shape::from((1, geom.c)),
        _ => x.1.shape().clone(),
    };
    let moments = cache.moments.as_deref().map(|m| m.as_slice());
    let sums = cache.sums.as_deref().map(|s| s.as_slice());
    if moments.is_some_and(|m| m.len() != geom.c) || sums.is_some_and(|s| s.len() != geom.c) {
        candle_core::bail!("batch norm: cached statistics do not match {} channels", geom.c);
    }
    macro_rules! go {
        ($t:ty, $variant:ident) => {{
            let xs = contiguous::<$t>(x.0, x.1, "batch norm", "input")?;
            let owned: Vec<$t>;
            let ps: &[$t] = match pack {
                Pack::Storage(s, l) => contiguous::<$t>(s, l, "batch norm", "parameters")?,
                Pack::Values(v, _) => {
                    owned = v.iter().map(|&v| <$t>::from_f64(v)).collect();
                    &owned
                }
            };
            let g = match g {
                Some((s, l)) => Some(contiguous::<$t>(s, l, "batch norm", "gradient")?),
                None => None,
            };
            let h = match h {
                Some((s, l)) => Some(contiguous::<$t>(s, l, "batch norm", "gradient")?),
                None => None,
            };
            let args = Args {
                x: xs,
                p: ps,
                rows,
                g,
                h,
                geom,
                eps,
                relu,
                moments,
                sums,
            };
            let (out, chans) = run(kernel, &args, shared);
            (CpuStorage::$variant(out), chans)
        }};
    }
    let (storage, chans) = match (x.0, pack) {
        (CpuStorage::F32(_), Pack::Storage(CpuStorage::F32(_), _) | Pack::Values(..)) => go!(f32, F32),
        (CpuStorage::F64(_), Pack::Storage(CpuStorage::F64(_), _) | Pack::Values(..)) => go!(f64, F64),
        _ => candle_core::bail!("batch norm: only f32 and f64 (not mixed) are supported on the CPU"),
    };
    Ok((storage, out_shape, chans))
}

fn third_order(name: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "{name}: third derivatives of the fused batch norm are not implemented (second order is)"
    ))
}

/// `y = act(γ x̂ + β)` from `(x, p = [γ; β])`; records the batch moments in `moments` (read by
/// [`batch_norm_train`] and reused by the backward pass).
struct BnForward {
    eps: f64,
    relu: bool,
    moments: Arc<Mutex<Option<Arc<Vec<Moment>>>>>,
}

impl BnForward {
    fn moments(&self) -> Option<Arc<Vec<Moment>>> {
        self.moments.lock().ok().and_then(|m| m.clone())
    }
}

impl CustomOp2 for BnForward {
    fn name(&self) -> &'static str {
        "secateur-batch-norm"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (out, shape, chans) = cpu_run(
            Kernel::Forward,
            self.eps,
            self.relu,
            &Cache::default(),
            (s1, l1),
            Pack::Storage(s2, l2),
            None,
            None,
            None,
        )?;
        let moments: Vec<Moment> = chans
            .iter()
            .map(|ch| Moment {
                mean: ch.mean,
                var: ch.var,
            })
            .collect();
        if let Ok(mut cell) = self.moments.lock() {
            *cell = Some(Arc::new(moments));
        }
        Ok((out, shape))
    }
    fn bwd(&self, x: &Tensor, p: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let moments = self.moments();
        let cache = Cache { moments, sums: None };
        // γ/β first: its per-channel sums are exactly what the x-gradient needs.
        let dp = x.apply_op3(p, &g, BnGrad::new(Kernel::GradP, self.eps, self.relu, cache.clone()))?;
        let rows = dp.to_dtype(candle_core::DType::F64)?.to_vec2::<f64>()?;
        let sums: Vec<GradSums> = rows[0]
            .iter()
            .zip(&rows[1])
            .map(|(&gx_scaled, &g)| GradSums { g, gx: gx_scaled })
            .collect();
        // `rows[0]` is Σ g' x̂ = inv · Σ g'(x − μ); the kernel expects Σ g'(x − μ).
        let inv: Vec<f64> = match &cache.moments {
            Some(m) => m.iter().map(|m| 1.0 / (m.var + self.eps).sqrt()).collect(),
            None => vec![],
        };
        let cache = if inv.len() == sums.len() {
            Cache {
                moments: cache.moments,
                sums: Some(Arc::new(
                    sums.iter()
                        .zip(&inv)
                        .map(|(s, &i)| GradSums { g: s.g, gx: s.gx / i })
                        .collect(),
                )),
            }
        } else {
            Cache::default()
        };
        let dx = x.apply_op3(p, &g, BnGrad::new(Kernel::GradX, self.eps, self.relu, cache))?;
        Ok((Some(dx), Some(dp)))
    }
}

/// The first derivatives `(x, p, g) ↦ ∂L/∂x` or `(∂L/∂γ, ∂L/∂β)`, and the second-order kernels.
struct BnGrad {
    kernel: Kernel,
    eps: f64,
    relu: bool,
    cache: Cache,
}

impl BnGrad {
    fn new(kernel: Kernel, eps: f64, relu: bool, cache: Cache) -> Self {
        Self {
            kernel,
            eps,
            relu,
            cache,
        }
    }
}

impl CustomOp3 for BnGrad {
    fn name(&self) -> &'static str {
        match self.kernel {
            Kernel::GradX => "secateur-batch-norm-grad-x",
            Kernel::GradP => "secateur-batch-norm-grad-p",
            _ => "secateur-batch-norm-second-order",
        }
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
        let (out, shape, _) = cpu_run(
            self.kernel,
            self.eps,
            self.relu,
            &self.cache,
            (s1, l1),
            Pack::Storage(s2, l2),
            Some((s3, l3)),
            None,
            None,
        )?;
        Ok((out, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        t: &Tensor,
        _res: &Tensor,
        up: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let up = up.contiguous()?;
        // Second-order kernels reuse the moments of x, never the gradient sums (their g differs).
        let cache = Cache {
            moments: self.cache.moments.clone(),
            sums: None,
        };
        let op = |k: Kernel| BnGrad::new(k, self.eps, self.relu, cache.clone());
        match self.kernel {
            Kernel::GradX => {
                // t = g, up = h: ∂⟨h, GradX(x, p, g)⟩ w.r.t. x, p (only the row σ is read) and g.
                // The three kernels read the same (x, p, g, h) and share one pass for their sums.
                let rows = p.dim(0)?;
                let pack: Arc<Vec<f64>> = Arc::new(p.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1()?);
                let shared = Arc::new(OnceLock::new());
                let hess = |kernel| BnHess {
                    kernel,
                    eps: self.eps,
                    relu: self.relu,
                    pack: pack.clone(),
                    rows,
                    moments: self.cache.moments.clone(),
                    shared: shared.clone(),
                };
                let dx = x.apply_op3(t, &up, hess(Kernel::HessX))?;
                let dg = x.apply_op3(t, &up, hess(Kernel::HessG))?;
                let ds = x.apply_op3(t, &up, hess(Kernel::HessScale))?;
                // σ is γ (row 0) of a two-row pack `[γ; β]`, the third row of `[γ; β; σ]`; the
                // mask depends on γ and β only piecewise constantly.
                let zeros = Tensor::zeros((2, p.dim(1)?), p.dtype(), p.device())?;
                let dp = match p.dim(0)? {
                    2 => Tensor::cat(&[&ds, &zeros.narrow(0, 0, 1)?], 0)?,
                    3 => Tensor::cat(&[&zeros, &ds], 0)?,
                    r => candle_core::bail!("batch norm: a parameter pack of {r} rows has no gradient"),
                };
                Ok((Some(dx), Some(dp), Some(dg)))
            }
            Kernel::GradP => {
                // t = g, up = k = [k₁; k₂]: ∂⟨k, GradP(x, p, g)⟩.
                let gamma_beta = p.narrow(0, 0, 2)?;
                let with_scale = Tensor::cat(&[&gamma_beta, &up.narrow(0, 0, 1)?], 0)?;
                let dx = x.apply_op3(&with_scale, t, op(Kernel::GradX))?;
                let with_k = Tensor::cat(&[&gamma_beta, &up], 0)?;
                let dg = x.apply_op3(&with_k, t, op(Kernel::GradPBackG))?;
                Ok((Some(dx), None, Some(dg)))
            }
            _ => Err(third_order(self.name())),
        }
    }
}

/// The second-order kernels `HessX`, `HessG` and `HessScale` of one `GradX` node, as
/// `(x, g, h) ↦ out`. The parameter pack is read when the node's backward runs (these outputs
/// are not differentiated again), so `g` and `h` need not be stacked into one input, and the
/// three kernels share one computation of the per-channel sums.
struct BnHess {
    kernel: Kernel,
    eps: f64,
    relu: bool,
    /// The pack `[rows, C]`, row-major.
    pack: Arc<Vec<f64>>,
    rows: usize,
    moments: Option<Arc<Vec<Moment>>>,
    shared: Arc<OnceLock<Vec<Chan>>>,
}

impl CustomOp3 for BnHess {
    fn name(&self) -> &'static str {
        "secateur-batch-norm-second-order"
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
        let cache = Cache {
            moments: self.moments.clone(),
            sums: None,
        };
        let (out, shape, _) = cpu_run(
            self.kernel,
            self.eps,
            self.relu,
            &cache,
            (s1, l1),
            Pack::Values(&self.pack, self.rows),
            Some((s2, l2)),
            Some((s3, l3)),
            Some(&self.shared),
        )?;
        Ok((out, shape))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _g: &Tensor,
        _h: &Tensor,
        _res: &Tensor,
        _up: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Err(third_order(self.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn seq(shape: &[usize], a: f64, b: f64) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|i| ((i as f64) * a + b).sin() * 1.7 + 0.3).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    /// Batch norm (+ ReLU) from candle's elementwise ops: the independent reference.
    fn reference(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, relu: bool) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let c = dims[1];
        let n = x.elem_count() / c;
        let bshape: Vec<usize> = (0..dims.len()).map(|i| if i == 1 { c } else { 1 }).collect();
        let per = |t: &Tensor| -> Result<Tensor> { t.reshape((dims[0], c, ()))?.sum(2)?.sum(0) };
        let mean = (per(x)? / n as f64)?;
        let cen = x.broadcast_sub(&mean.reshape(bshape.clone())?)?;
        let var = (per(&cen.sqr()?)? / n as f64)?;
        let y = cen
            .broadcast_div(&(var + eps)?.sqrt()?.reshape(bshape.clone())?)?
            .broadcast_mul(&w.reshape(bshape.clone())?)?
            .broadcast_add(&b.reshape(bshape)?)?;
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        (a - b)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()
    }

    #[test]
    fn forward_and_statistics_match_the_reference() -> Result<()> {
        for (shape, relu) in [(vec![4, 3, 5, 6], false), (vec![1, 2, 7, 3], true), (vec![5, 4], true)] {
            let x = seq(&shape, 0.37, 0.1)?;
            let c = shape[1];
            let w = seq(&[c], 1.3, 0.5)?;
            let b = seq(&[c], 0.7, 2.0)?;
            let out = batch_norm_train(&x, &w, &b, 1e-5, relu)?;
            assert!(
                max_abs_diff(&out.y, &reference(&x, &w, &b, 1e-5, relu)?)? < 1e-12,
                "{shape:?}"
            );
            let xf = x.to_dtype(DType::F32)?;
            let o32 = batch_norm_train(&xf, &w.to_dtype(DType::F32)?, &b.to_dtype(DType::F32)?, 1e-5, relu)?;
            assert!(max_abs_diff(&o32.y.to_dtype(DType::F64)?, &out.y)? < 1e-5);
            // statistics: mean and biased variance per channel, computed directly
            let n = x.elem_count() / c;
            let xt = x.transpose(0, 1)?.contiguous()?.reshape((c, n))?;
            let mean = (xt.sum(1)? / n as f64)?;
            let var = (xt.broadcast_sub(&mean.unsqueeze(1)?)?.sqr()?.sum(1)? / n as f64)?;
            assert!(max_abs_diff(&out.mean, &mean)? < 1e-12);
            assert!(max_abs_diff(&out.var, &var)? < 1e-12);
            assert_eq!(out.count, n);
        }
        Ok(())
    }

    /// f32 statistics of data far from zero (mean 1000, spread 0.01): the per-plane moments and
    /// their pairwise merge keep the variance, which a one-pass Σx² − (Σx)²/n in f32 would lose.
    #[test]
    fn f32_statistics_of_offset_data_match_f64() -> Result<()> {
        let shape = [7usize, 3, 9, 11];
        let x = ((seq(&shape, 0.61, 0.4)? * 0.01)? + 1000.0)?;
        let c = shape[1];
        let n = x.elem_count() / c;
        let xt = x.transpose(0, 1)?.contiguous()?.reshape((c, n))?;
        let mean = (xt.sum(1)? / n as f64)?;
        let var = (xt.broadcast_sub(&mean.unsqueeze(1)?)?.sqr()?.sum(1)? / n as f64)?;
        let ones = Tensor::ones(c, DType::F32, &Device::Cpu)?;
        let out = batch_norm_train(&x.to_dtype(DType::F32)?, &ones, &ones, 1e-9, false)?;
        let var32 = out.var.to_dtype(DType::F64)?;
        let rel = ((var32 - &var)?.abs()? / &var)?.max(0)?.to_scalar::<f64>()?;
        // Measured 9e-5 (the f32 rounding of the inputs, ulp 6e-5 at 1000, against a spread of
        // 0.01); a one-pass Σx² − (Σx)²/n in f32 is off by orders of magnitude more than the
        // variance itself (1e-4) here.
        assert!(rel < 1e-3, "relative variance error {rel}");
        assert!(max_abs_diff(&out.mean.to_dtype(DType::F64)?, &mean)? < 1e-3);
        Ok(())
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn moments_avx2(planes: &[&[f32]]) -> Moment {
        channel_moments(planes)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn sums_avx2(x: &[f32], g: &[f32], h: &[f32], mt: f32) -> [f64; 5] {
        sums3(x, g, h, |x, g, h| {
            let (gp, d) = (select(x > 0.0, g), x - mt);
            [gp, gp * d, h, h * d, gp * h]
        })
    }

    /// The AVX2 builds of the elementwise map and of the per-channel sums give the bits of the
    /// baseline builds (what `affine_wide`'s notes promise), over plane lengths that leave every
    /// tail. On a CPU without AVX2 there is nothing to compare.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_and_baseline_builds_give_the_same_bits() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        for n in [1usize, 7, 8, 9, 31, 784, 1001] {
            let x: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin() * 2.0 + 0.1).collect();
            let g: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.91).cos()).collect();
            let h: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.13).sin() * 0.5).collect();
            let k = [1.3f32, -0.2, 0.7, -1.1, 0.4, 0.05];
            let bits = |v: &[MaybeUninit<f32>]| {
                // SAFETY: `affine` wrote every entry (it asserts the lengths equal).
                v.iter()
                    .map(|o| unsafe { o.assume_init() }.to_bits())
                    .collect::<Vec<_>>()
            };
            macro_rules! both {
                ($relu:literal, $zero:literal) => {{
                    let (mut base, mut wide) = (vec![MaybeUninit::uninit(); n], vec![MaybeUninit::uninit(); n]);
                    affine::<f32, $relu, $zero>(&mut base, &x, &g, &h, k);
                    // SAFETY: the CPU supports AVX2 (checked above).
                    unsafe { affine_avx2::<f32, $relu, $zero>(&mut wide, &x, &g, &h, k) };
                    assert_eq!(
                        bits(&base),
                        bits(&wide),
                        "n {n}, relu {}, zero_off {}",
                        $relu,
                        $zero
                    );
                }};
            }
            both!(false, false);
            both!(true, false);
            both!(true, true);
            let planes = [&x[..], &g[..], &h[..]];
            // SAFETY: as above.
            let wide = unsafe { moments_avx2(&planes) };
            let base = channel_moments(&planes);
            assert_eq!(
                (base.mean.to_bits(), base.var.to_bits()),
                (wide.mean.to_bits(), wide.var.to_bits()),
                "n {n}"
            );
            let base = sums3(&x, &g, &h, |x, g, h| {
                let (gp, d) = (select(x > 0.0, g), x - 0.3f32);
                [gp, gp * d, h, h * d, gp * h]
            });
            // SAFETY: as above.
            let wide = unsafe { sums_avx2(&x, &g, &h, 0.3) };
            assert_eq!(base.map(f64::to_bits), wide.map(f64::to_bits), "n {n}");
        }
    }

    /// The AVX-512 masked sums against the same sums in f64, over lengths that leave every tail,
    /// with and without a mask that cuts (a ReLU's, about half the entries off).
    #[test]
    fn masked_sums_match_f64() {
        if !cfg!(target_arch = "x86_64") || !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: this CPU has no AVX-512F");
            return;
        }
        for n in [1usize, 15, 16, 17, 100, 1024] {
            let x: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37 + 0.1).sin()).collect();
            let g: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.53 + 3.0).sin()).collect();
            for [a, b, m] in [[1.3f32, -0.2, 0.05], [0.0, 1.0, -0.3]] {
                let got = masked_sums_f32(&x, &g, [a, b, m]).expect("f32 on AVX-512F");
                // Rounding bound of the f32 sums: each of the 16 lanes adds at most n/16 terms
                // (plus the tail, ≤ 15, and the f32 product), every term |t| ≤ 2, so the error is
                // at most (n/16 + 17)·2⁻²⁴·2n ≤ 1e-5·n for n ≤ 1024.

                let (mut e0, mut e1) = (0f64, 0f64);
                for i in 0..n {
                    if a * x[i] + b > 0.0 {
                        e0 += g[i] as f64;
                        e1 += g[i] as f64 * (x[i] as f64 - m as f64);
                    }
                }
                assert!((got[0] - e0).abs() < 1e-5 * n as f64, "n={n} a={a}: {} vs {e0}", got[0]);
                assert!((got[1] - e1).abs() < 1e-5 * n as f64, "n={n} a={a}: {} vs {e1}", got[1]);
            }
        }
        assert!(masked_sums_f32(&[1.0f64], &[1.0], [1.0, 0.0, 0.0]).is_none());
    }

    /// Gradients of `L = Σ r ⊙ y` (r fixed) by the custom ops vs by candle's autograd of the
    /// reference ops, for x, γ and β.
    #[test]
    fn first_derivatives_match_autograd_of_the_reference() -> Result<()> {
        for (shape, relu) in [(vec![3, 2, 4, 5], false), (vec![3, 2, 4, 5], true), (vec![6, 3], true)] {
            let c = shape[1];
            let x = Var::from_tensor(&seq(&shape, 0.91, 0.2)?)?;
            let w = Var::from_tensor(&seq(&[c], 1.1, 0.4)?)?;
            let b = Var::from_tensor(&seq(&[c], 0.3, 1.0)?)?;
            let r = seq(&shape, 0.53, 3.0)?;
            let fused = (batch_norm_train(&x, &w, &b, 1e-3, relu)?.y * &r)?
                .sum_all()?
                .backward()?;
            let refg = (reference(&x, &w, &b, 1e-3, relu)? * &r)?.sum_all()?.backward()?;
            for v in [&x, &w, &b] {
                let a = fused.get(v.as_tensor()).expect("fused grad");
                let e = refg.get(v.as_tensor()).expect("reference grad");
                assert!(max_abs_diff(a, e)? < 1e-10, "{shape:?} relu={relu}");
            }
        }
        Ok(())
    }

    /// Hessian-vector products by double backpropagation vs central differences of gradients.
    #[test]
    fn second_derivatives_match_finite_differences_of_gradients() -> Result<()> {
        if !crate::double_backprop::run_test_in_child(concat!(
            module_path!(),
            "::second_derivatives_match_finite_differences_of_gradients"
        )) {
            return Ok(());
        }
        std::thread::spawn(|| -> Result<()> {
            for relu in [false, true] {
                let shape = [3usize, 2, 3, 4];
                let c = shape[1];
                let x0 = seq(&shape, 0.91, 0.2)?;
                let w0 = seq(&[c], 1.1, 0.4)?;
                let b0 = seq(&[c], 0.3, 1.0)?;
                let r = seq(&shape, 0.53, 3.0)?;
                let q = seq(&shape, 0.29, 1.5)?;
                // L = Σ r ⊙ y + ½ Σ q ⊙ y²: a non-linear head, so second derivatives through the
                // incoming gradient are exercised too.
                let loss = |x: &Tensor, w: &Tensor, b: &Tensor| -> Result<Tensor> {
                    let y = batch_norm_train(x, w, b, 1e-3, relu)?.y;
                    (&y * &r)?.sum_all()? + ((y.sqr()? * &q)?.sum_all()? * 0.5)?
                };
                let grads = |x: &Tensor, w: &Tensor, b: &Tensor| -> Result<Vec<Tensor>> {
                    let (xv, wv, bv) = (Var::from_tensor(x)?, Var::from_tensor(w)?, Var::from_tensor(b)?);
                    let g = loss(&xv, &wv, &bv)?.backward()?;
                    Ok([&xv, &wv, &bv]
                        .iter()
                        .map(|v| g.get(v.as_tensor()).expect("grad").detach())
                        .collect())
                };
                let (vx, vw, vb) = (seq(&shape, 0.77, 0.9)?, seq(&[c], 0.61, 0.1)?, seq(&[c], 0.43, 2.2)?);
                // Hv by double backprop: ∇ ⟨∇L, v⟩
                let (xv, wv, bv) = (Var::from_tensor(&x0)?, Var::from_tensor(&w0)?, Var::from_tensor(&b0)?);
                let g = loss(&xv, &wv, &bv)?.backward()?;
                let dot = ((g.get(&xv).expect("gx") * &vx)?.sum_all()?
                    + (g.get(&wv).expect("gw") * &vw)?.sum_all()?
                    + (g.get(&bv).expect("gb") * &vb)?.sum_all()?)?;
                let h = dot.backward()?;
                let hv: Vec<Tensor> = [&xv, &wv, &bv]
                    .iter()
                    .map(|v| h.get(v.as_tensor()).expect("hv").clone())
                    .collect();
                // central differences of the gradient along v
                let e = 1e-6;
                let plus = grads(&(&x0 + (&vx * e)?)?, &(&w0 + (&vw * e)?)?, &(&b0 + (&vb * e)?)?)?;
                let minus = grads(&(&x0 - (&vx * e)?)?, &(&w0 - (&vw * e)?)?, &(&b0 - (&vb * e)?)?)?;
                for i in 0..3 {
                    let fd = ((&plus[i] - &minus[i])? / (2.0 * e))?;
                    let scale = fd.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?.max(1.0);
                    let err = max_abs_diff(&hv[i], &fd)?;
                    assert!(
                        err < 1e-6 * scale,
                        "relu={relu} argument {i}: error {err} (scale {scale})"
                    );
                }
            }
            Ok(())
        })
        .join()
        .expect("thread")
    }

    #[test]
    fn bad_arguments_are_refused() -> Result<()> {
        let x = seq(&[2, 3, 4], 0.1, 0.0)?;
        let w = seq(&[2], 0.1, 0.0)?;
        let e = batch_norm_train(&x, &w, &w, 1e-5, false).unwrap_err().to_string();
        assert!(e.contains("3 channels"), "{e}");
        let w3 = seq(&[3], 0.1, 0.0)?;
        assert!(batch_norm_train(&x, &w3, &w3, 0.0, false).is_err());
        assert!(batch_norm_train(&seq(&[4], 0.1, 0.0)?, &w3, &w3, 1e-5, false).is_err());
        Ok(())
    }
}
