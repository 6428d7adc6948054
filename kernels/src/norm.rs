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
//! All ops reduce in `f64` per channel (parallel over channels) and apply elementwise formulas
//! in parallel over `(batch, channel)` planes, on both cores. Off the CPU, [`batch_norm_train`]
//! falls back to candle's elementwise ops.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

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
            stats: cell.clone(),
        };
        let y = x.contiguous()?.apply_op2(&p, op)?;
        let (mean, var) = match cell.lock() {
            Ok(mut g) => g.take(),
            Err(_) => None,
        }
        .ok_or_else(|| candle_core::Error::Msg("batch norm: the forward op left no statistics".into()))?;
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

/// Per-channel batch mean and biased variance, as the forward kernel computed them.
type Moments = (Vec<f64>, Vec<f64>);

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

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("batch norm: {what} must be contiguous"),
    }
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

/// The inputs of one kernel call, as flat slices.
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
}

impl<T: WithDType> Args<'_, T> {
    /// Channel statistics of `x`, then the sums over `g'` and `h` that are present.
    fn channel(&self, c: usize) -> Chan {
        let gm = self.geom;
        let n = gm.n() as f64;
        let mut sum = 0f64;
        for b in 0..gm.outer {
            sum += gm.plane(self.x, b, c).iter().map(|v| v.to_f64()).sum::<f64>();
        }
        let mean = sum / n;
        let mut sq = 0f64;
        for b in 0..gm.outer {
            sq += gm
                .plane(self.x, b, c)
                .iter()
                .map(|v| {
                    let d = v.to_f64() - mean;
                    d * d
                })
                .sum::<f64>();
        }
        let var = sq / n;
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
        if self.g.is_none() && self.h.is_none() {
            return ch;
        }
        let (mut sg, mut sgx, mut sh, mut shx, mut shg) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for b in 0..gm.outer {
            let xs = gm.plane(self.x, b, c);
            let gs = self.g.map(|g| gm.plane(g, b, c));
            let hs = self.h.map(|h| gm.plane(h, b, c));
            for i in 0..gm.inner {
                let xh = (xs[i].to_f64() - mean) * inv;
                let gp = match gs {
                    Some(gs) => {
                        let g = gs[i].to_f64();
                        if self.relu && gamma * xh + beta <= 0.0 {
                            0.0
                        } else {
                            g
                        }
                    }
                    None => 0.0,
                };
                sg += gp;
                sgx += gp * xh;
                if let Some(hs) = hs {
                    let h = hs[i].to_f64();
                    sh += h;
                    shx += h * xh;
                    shg += h * gp;
                }
            }
        }
        ch.gbar = sg / n;
        ch.m = sgx / n;
        ch.hbar = sh / n;
        ch.a = shx / n;
        ch.hg = shg / n;
        ch
    }

    fn channels(&self) -> Vec<Chan> {
        (0..self.geom.c).into_par_iter().map(|c| self.channel(c)).collect()
    }

    /// `out[i] = f(chan, x̂_i, M_i, g_i, h_i)` over every entry, parallel over planes.
    fn map(&self, chans: &[Chan], f: impl Fn(&Chan, f64, bool, f64, f64) -> f64 + Sync) -> Vec<T> {
        let gm = self.geom;
        let mut out = vec![T::zero(); self.x.len()];
        out.par_chunks_mut(gm.inner.max(1)).enumerate().for_each(|(k, o)| {
            let (b, c) = (k / gm.c, k % gm.c);
            let ch = &chans[c];
            let xs = gm.plane(self.x, b, c);
            let gs = self.g.map(|g| gm.plane(g, b, c));
            let hs = self.h.map(|h| gm.plane(h, b, c));
            for i in 0..gm.inner {
                let xh = (xs[i].to_f64() - ch.mean) * ch.inv;
                let on = !self.relu || ch.gamma * xh + ch.beta > 0.0;
                let g = gs.map_or(0.0, |g| g[i].to_f64());
                let h = hs.map_or(0.0, |h| h[i].to_f64());
                o[i] = T::from_f64(f(ch, xh, on, g, h));
            }
        });
        out
    }

    /// A `[rows, C]` tensor buffer from per-channel rows.
    fn per_channel(rows: &[Vec<f64>]) -> Vec<T> {
        rows.iter().flat_map(|r| r.iter().map(|&v| T::from_f64(v))).collect()
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

fn run<T: WithDType>(kernel: Kernel, a: &Args<T>) -> (Vec<T>, Option<Moments>) {
    let chans = a.channels();
    let n = a.geom.n() as f64;
    let out = match kernel {
        Kernel::Forward => a.map(
            &chans,
            |ch, xh, on, _, _| if on { ch.gamma * xh + ch.beta } else { 0.0 },
        ),
        Kernel::GradX => a.map(&chans, |ch, xh, on, g, _| {
            let gp = if on { g } else { 0.0 };
            ch.scale * ch.inv * (gp - ch.gbar - xh * ch.m)
        }),
        Kernel::GradP => {
            let rows = [
                chans.iter().map(|ch| ch.m * n).collect::<Vec<_>>(),
                chans.iter().map(|ch| ch.gbar * n).collect(),
            ];
            Args::<T>::per_channel(&rows)
        }
        Kernel::HessX => a.map(&chans, |ch, xh, on, g, h| {
            let gp = if on { g } else { 0.0 };
            let cc = ch.hg - ch.gbar * ch.hbar;
            ch.scale * ch.inv * ch.inv * (xh * (3.0 * ch.m * ch.a - cc) - ch.a * (gp - ch.gbar) - ch.m * (h - ch.hbar))
        }),
        Kernel::HessG => a.map(&chans, |ch, xh, on, _, h| {
            if on {
                ch.scale * ch.inv * (h - ch.hbar - xh * ch.a)
            } else {
                0.0
            }
        }),
        Kernel::HessScale => {
            let row: Vec<f64> = chans
                .iter()
                .map(|ch| n * ch.inv * (ch.hg - ch.hbar * ch.gbar - ch.a * ch.m))
                .collect();
            Args::<T>::per_channel(&[row])
        }
        Kernel::GradPBackG => {
            let c = a.geom.c;
            let k1: Vec<f64> = (0..c).map(|i| a.p[(a.rows - 2) * c + i].to_f64()).collect();
            let k2: Vec<f64> = (0..c).map(|i| a.p[(a.rows - 1) * c + i].to_f64()).collect();
            let gm = a.geom;
            let mut out = vec![T::zero(); a.x.len()];
            out.par_chunks_mut(gm.inner.max(1)).enumerate().for_each(|(k, o)| {
                let (b, ci) = (k / gm.c, k % gm.c);
                let ch = &chans[ci];
                let xs = gm.plane(a.x, b, ci);
                for i in 0..gm.inner {
                    let xh = (xs[i].to_f64() - ch.mean) * ch.inv;
                    let on = !a.relu || ch.gamma * xh + ch.beta > 0.0;
                    o[i] = T::from_f64(if on { k1[ci] * xh + k2[ci] } else { 0.0 });
                }
            });
            out
        }
    };
    let stats = (kernel == Kernel::Forward).then(|| {
        (
            chans.iter().map(|ch| ch.mean).collect(),
            chans.iter().map(|ch| ch.var).collect(),
        )
    });
    (out, stats)
}

/// Runs `kernel` on CPU storages: `x`, the parameter pack `p: [rows, C]`, and an optional
/// gradient input `t` (either `g`, or `[g; h]` stacked on a new leading axis).
#[allow(clippy::too_many_arguments)]
fn cpu_run(
    kernel: Kernel,
    eps: f64,
    relu: bool,
    x: (&CpuStorage, &Layout),
    p: (&CpuStorage, &Layout),
    t: Option<(&CpuStorage, &Layout)>,
    stacked: bool,
) -> Result<(CpuStorage, Shape, Option<Moments>)> {
    let geom = Geom::of(x.1.shape())?;
    let (rows, pc) = p.1.shape().dims2()?;
    if pc != geom.c || rows < 2 {
        candle_core::bail!(
            "batch norm: parameter pack {:?} does not match {} channels",
            p.1.shape(),
            geom.c
        );
    }
    let numel = x.1.shape().elem_count();
    if let Some((_, tl)) = t {
        let want = if stacked { 2 * numel } else { numel };
        if tl.shape().elem_count() != want {
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
    macro_rules! go {
        ($t:ty, $variant:ident) => {{
            let xs = slice::<$t>(x.0, x.1, "input")?;
            let ps = slice::<$t>(p.0, p.1, "parameters")?;
            let ts = match t {
                Some((s, l)) => Some(slice::<$t>(s, l, "gradient")?),
                None => None,
            };
            let (g, h) = match (ts, stacked) {
                (Some(ts), true) => (Some(&ts[..numel]), Some(&ts[numel..])),
                (Some(ts), false) => match kernel {
                    Kernel::HessG => (None, Some(ts)),
                    _ => (Some(ts), None),
                },
                (None, _) => (None, None),
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
            };
            let (out, stats) = run(kernel, &args);
            (CpuStorage::$variant(out), stats)
        }};
    }
    let (storage, stats) = match (x.0, p.0) {
        (CpuStorage::F32(_), CpuStorage::F32(_)) => go!(f32, F32),
        (CpuStorage::F64(_), CpuStorage::F64(_)) => go!(f64, F64),
        _ => candle_core::bail!("batch norm: only f32 and f64 (not mixed) are supported on the CPU"),
    };
    Ok((storage, out_shape, stats))
}

fn third_order(name: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "{name}: third derivatives of the fused batch norm are not implemented (second order is)"
    ))
}

/// `y = act(γ x̂ + β)` from `(x, p = [γ; β])`; records the batch statistics in `stats`.
struct BnForward {
    eps: f64,
    relu: bool,
    stats: Arc<Mutex<Option<Moments>>>,
}

impl CustomOp2 for BnForward {
    fn name(&self) -> &'static str {
        "secateur-batch-norm"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (out, shape, stats) = cpu_run(Kernel::Forward, self.eps, self.relu, (s1, l1), (s2, l2), None, false)?;
        if let Ok(mut cell) = self.stats.lock() {
            *cell = stats;
        }
        Ok((out, shape))
    }
    fn bwd(&self, x: &Tensor, p: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dx = x.apply_op3(p, &g, BnGrad::new(Kernel::GradX, self.eps, self.relu))?;
        let dp = x.apply_op3(p, &g, BnGrad::new(Kernel::GradP, self.eps, self.relu))?;
        Ok((Some(dx), Some(dp)))
    }
}

/// The first derivatives `(x, p, g) ↦ ∂L/∂x` or `(∂L/∂γ, ∂L/∂β)`, and the second-order kernels.
struct BnGrad {
    kernel: Kernel,
    eps: f64,
    relu: bool,
}

impl BnGrad {
    fn new(kernel: Kernel, eps: f64, relu: bool) -> Self {
        Self { kernel, eps, relu }
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
        let stacked = matches!(self.kernel, Kernel::HessX | Kernel::HessScale);
        let (out, shape, _) = cpu_run(
            self.kernel,
            self.eps,
            self.relu,
            (s1, l1),
            (s2, l2),
            Some((s3, l3)),
            stacked,
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
        let op = |k: Kernel| BnGrad::new(k, self.eps, self.relu);
        match self.kernel {
            Kernel::GradX => {
                // t = g, up = h: ∂⟨h, GradX(x, p, g)⟩ w.r.t. x, p (only the row σ is read) and g.
                let gh = Tensor::stack(&[t, &up], 0)?;
                let dx = x.apply_op3(p, &gh, op(Kernel::HessX))?;
                let dg = x.apply_op3(p, &up, op(Kernel::HessG))?;
                let ds = x.apply_op3(p, &gh, op(Kernel::HessScale))?;
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
        // candle detaches gradients unless this is set before the thread's first backward; run on
        // a fresh thread so that other tests are unaffected.
        std::thread::spawn(|| -> Result<()> {
            std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1");
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
