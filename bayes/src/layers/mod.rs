//! Probabilistic layers and the estimators they share.
//!
//! - [`mean_field`]: mean-field Gaussian weights (Blundell et al. 2015), [`BayesLinear`] and
//!   [`BayesConv2d`], with weight sampling, local reparameterisation and Flipout.
//! - [`sparse_vd`]: sparse variational dropout (Molchanov, Ashukha & Vetrov 2017), [`SvdLinear`]
//!   and [`SvdConv2d`].
//! - [`variational_dropout`]: variational dropout with learned α per weight or per unit (Kingma,
//!   Salimans & Welling 2015), [`VdLinear`] and [`VdConv2d`].
//! - [`dropout`]: MC dropout (Gal & Ghahramani 2016), [`McDropout`], the baseline.
//! - [`spike_slab`]: spike-and-slab node selection (Jantre, Bhattacharya & Maiti 2021),
//!   [`SpikeSlabLinear`] and [`SpikeSlabConv2d`].
//! - [`nested_dropout`]: nested dropout (Rippel, Gelbart & Adams 2014), [`NestedDropout`], and
//!   variational nested dropout (Cui et al. 2021), [`VariationalNestedDropout`]: ordered unit
//!   masks, so a network can be evaluated at any width ([`Ctx::width`](crate::Ctx::width)).
//! - [`gsm_gates`]: Bernoulli gates on units/filters with a Gaussian scale-mixture prior and a
//!   hyper-prior (Guenter & Sideris 2022), [`GateLinear`] and [`GateConv2d`].
//!
//! Every layer here is built from a [`ParamBuilder`](crate::ParamBuilder), creates its parameters
//! under the builder's path and registers itself as [`Variational`](crate::Variational) in the
//! builder's store, so `Box::new(layer)` can be handed to an architecture as a
//! `Box<dyn Module>` while training and pruning still reach it through the store.
//!
//! The estimators (how a Gaussian posterior over weights `N(μ, σ²)` becomes an output) are shared
//! by all families, in [`gaussian_linear`] and [`gaussian_conv2d`], selected by
//! [`Sampling`].

pub mod dropout;
pub mod gsm_gates;
pub mod mean_field;
pub mod nested_dropout;
pub mod sparse_vd;
pub mod spike_slab;
pub mod variational_dropout;

pub use dropout::McDropout;
pub use gsm_gates::{GateConv2d, GateConv2dConfig, GateLinear, GateLinearConfig, GsmGatePrior};
pub use mean_field::{BayesConv2d, BayesConv2dConfig, BayesLinear, BayesLinearConfig, KlReduction, PosteriorInit};
pub use nested_dropout::{NestedDropout, VariationalNestedDropout, VariationalNestedDropoutConfig};
pub use sparse_vd::{SvdConv2d, SvdConv2dConfig, SvdLinear, SvdLinearConfig};
pub use spike_slab::{SpikeSlabConv2d, SpikeSlabConv2dConfig, SpikeSlabLinear, SpikeSlabLinearConfig};
pub use variational_dropout::{VdConv2d, VdConv2dConfig, VdGranularity, VdLinear, VdLinearConfig};

use crate::ctx::{tile, Ctx, Sampling};
use crate::rng::SeededRng;
use candle_core::{Result, Tensor};
use secateur_kernels::matmul::matmul_bt as mm;
use serde::{Deserialize, Serialize};

/// Added to the pre-activation variance before the square root of the local
/// reparameterisation, so the gradient stays finite where the variance is zero.
pub const LRT_VAR_EPS: f64 = 1e-16;

/// Geometry of a 2-D convolution (square stride, padding, dilation; groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conv2dGeom {
    /// Stride (≥ 1).
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
    /// Dilation (≥ 1).
    pub dilation: usize,
    /// Groups (≥ 1, dividing both channel counts).
    pub groups: usize,
}

impl Default for Conv2dGeom {
    /// Stride 1, no padding, dilation 1, one group.
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
        }
    }
}

impl Conv2dGeom {
    /// Checks stride, dilation and groups against the channel counts.
    pub(crate) fn check(&self, what: &str, in_ch: usize, out_ch: usize) -> Result<()> {
        if self.stride == 0 || self.dilation == 0 {
            candle_core::bail!("{what}: stride and dilation must be ≥ 1");
        }
        if self.groups == 0 || !in_ch.is_multiple_of(self.groups) || !out_ch.is_multiple_of(self.groups) {
            candle_core::bail!(
                "{what}: groups {} must divide in_ch {in_ch} and out_ch {out_ch}",
                self.groups
            );
        }
        Ok(())
    }
}

/// A Gaussian posterior over a layer's weights and (optionally) bias, as the estimators see it:
/// weight `N(μ, σ²)` and bias `N(b_μ, b_σ²)` (a deterministic bias has `bias_sigma = None`).
#[derive(Debug, Clone, Copy)]
pub struct GaussianWeights<'a> {
    /// Weight mean μ (`[out, in]` or `[out, in/groups, k, k]`).
    pub mu: &'a Tensor,
    /// Weight standard deviation σ (same shape).
    pub sigma: &'a Tensor,
    /// Bias mean (`[out]`).
    pub bias_mu: Option<&'a Tensor>,
    /// Bias standard deviation (`[out]`); `None` for a deterministic bias.
    pub bias_sigma: Option<&'a Tensor>,
}

impl GaussianWeights<'_> {
    /// One reparameterised bias draw `b_μ + b_σ ε` (or `b_μ` for a deterministic bias).
    fn sample_bias(&self, rng: &mut SeededRng) -> Result<Option<Tensor>> {
        match (self.bias_mu, self.bias_sigma) {
            (Some(m), Some(s)) => {
                let eps = rng.randn(m.dims(), m.dtype(), m.device())?;
                Ok(Some((m + (s * eps)?)?))
            }
            (Some(m), None) => Ok(Some(m.clone())),
            (None, _) => Ok(None),
        }
    }

    /// One reparameterised weight draw `μ + σ ε`.
    fn sample_weight(&self, rng: &mut SeededRng) -> Result<Tensor> {
        self.mu + self.sample_perturbation(rng)?
    }

    /// One perturbation draw `ΔW = σ ⊙ ε` (Flipout's; the weight draw is `μ + ΔW`).
    fn sample_perturbation(&self, rng: &mut SeededRng) -> Result<Tensor> {
        let eps = rng.randn(self.mu.dims(), self.mu.dtype(), self.mu.device())?;
        self.sigma * eps
    }
}

fn add_bias_rows(y: Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    match b {
        Some(b) => secateur_kernels::bias::add_bias(&y, b),
        None => Ok(y),
    }
}

fn add_bias_channels(y: Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    match b {
        Some(b) => secateur_kernels::bias::add_bias(&y, b),
        None => Ok(y),
    }
}

/// A Gaussian-weight linear layer `y = x Wᵀ + b` for `x: [..., in]` (leading dimensions are
/// flattened into rows, each row its own example), with the estimator `ctx.sampling`:
///
/// - `Mean`: `x μᵀ + b_μ`;
/// - `Weight` (Blundell et al. 2015): one draw `W = μ + σ ε`, `b = b_μ + b_σ ε'` per call;
/// - `Local` (Kingma, Salimans & Welling 2015): `y = x μᵀ + b_μ + √(x² (σ²)ᵀ + b_σ² + 1e−16) ⊙ ε`,
///   an independent pre-activation draw per example;
/// - `Flipout` (Wen et al. 2018): `y = x μᵀ + ((x ⊙ s_in) ΔWᵀ) ⊙ s_out + b`, `ΔW = σ ⊙ ε` one per
///   call, `s_in`, `s_out` Rademacher sign vectors per example, `b` one draw per call.
///
/// In a pass of `S > 1` samples ([`Ctx::with_samples`]) "per call" means per sample block: `S`
/// weight (or perturbation) draws, one for each block. While the blocks are identical
/// ([`Ctx::shared`]) the mean and the local-reparameterisation moments are computed on one block,
/// and the `S` weight samples multiply that block as one stacked `[S·out, in]` product; distinct
/// blocks meet their own weight samples (or Flipout perturbations) in one batched product.
pub fn gaussian_linear(x: &Tensor, w: GaussianWeights, ctx: &mut Ctx) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    if dims.is_empty() {
        candle_core::bail!("linear layer: input must have rank ≥ 1, got a scalar");
    }
    let in_dim = dims[dims.len() - 1];
    let (out_dim, w_in) = w.mu.dims2()?;
    if in_dim != w_in {
        candle_core::bail!("linear layer: input has {in_dim} features, the weight expects {w_in}");
    }
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.reshape((rows, in_dim))?;
    let s = ctx.samples;
    let y = match (ctx.sampling, ctx.shared_block(&x2)?) {
        (_, _) if s <= 1 => linear_pass(&x2, &w, ctx.sampling, ctx.rng)?,
        (Sampling::Mean, Some(x0)) => tile(&linear_pass(&x0, &w, Sampling::Mean, ctx.rng)?, s)?,
        (Sampling::Mean, None) => linear_pass(&x2, &w, Sampling::Mean, ctx.rng)?,
        (Sampling::Local, shared) => {
            let (mean, var) = match shared {
                Some(x0) => {
                    let (m, v) = lrt_linear(&x0, &w)?;
                    (tile(&m, s)?, tile(&v, s)?)
                }
                None => lrt_linear(&x2, &w)?,
            };
            ctx.mark_noisy();
            let eps = ctx.rng.randn(&[rows, out_dim], x.dtype(), x.device())?;
            secateur_kernels::lrt_sample::lrt_sample(&mean, &var, &eps, LRT_VAR_EPS)?
        }
        (Sampling::Weight, Some(x0)) => {
            let mut ws = Vec::with_capacity(s);
            let mut bs = Vec::with_capacity(s);
            for _ in 0..s {
                ws.push(w.sample_weight(ctx.rng)?);
                if let Some(b) = w.sample_bias(ctx.rng)? {
                    bs.push(b);
                }
            }
            ctx.mark_noisy();
            let stacked = Tensor::cat(&ws, 0)?; // [S·out, in]
            let bias = if bs.is_empty() {
                None
            } else {
                Some(Tensor::cat(&bs, 0)?)
            };
            let y0 = add_bias_rows(mm(&x0, &stacked)?, bias.as_ref())?; // [b, S·out]
            let b = x0.dim(0)?;
            y0.reshape((b, s, out_dim))?
                .transpose(0, 1)?
                .reshape((s * b, out_dim))?
        }
        (Sampling::Weight, None) => {
            // S weight samples `[S, out, in]` against the S blocks `[S, b, in]`: one batched product
            let (ws, bias) = stacked_draws(&w, s, ctx.rng, |r| w.sample_weight(r))?;
            ctx.mark_noisy();
            let b = ctx.block_rows(&x2)?;
            let y = x2.reshape((s, b, in_dim))?.matmul(&ws.transpose(1, 2)?)?;
            let y = match bias {
                Some(bias) => y.broadcast_add(&bias.unsqueeze(1)?)?,
                None => y,
            };
            y.reshape((s * b, out_dim))?
        }
        (Sampling::Flipout, shared) => {
            let mean = match shared {
                Some(x0) => tile(&mm(&x0, w.mu)?, s)?,
                None => mm(&x2, w.mu)?,
            };
            ctx.mark_noisy();
            let (dt, dev) = (x.dtype(), x.device());
            let (deltas, bias) = stacked_draws(&w, s, ctx.rng, |r| w.sample_perturbation(r))?; // [S, out, in], [S, out]
            let s_in = ctx.rng.rademacher(&[rows, in_dim], dt, dev)?;
            let s_out = ctx.rng.rademacher(&[rows, out_dim], dt, dev)?;
            let b = ctx.block_rows(&x2)?;
            let pert = (x2 * s_in)?.reshape((s, b, in_dim))?.matmul(&deltas.transpose(1, 2)?)?;
            let y = (mean.reshape((s, b, out_dim))? + (pert * s_out.reshape((s, b, out_dim))?)?)?;
            let y = match bias {
                Some(bias) => y.broadcast_add(&bias.unsqueeze(1)?)?,
                None => y,
            };
            y.reshape((rows, out_dim))?
        }
    };
    let mut out = dims;
    let last = out.len() - 1;
    out[last] = out_dim;
    y.reshape(out)
}

/// `S` draws stacked `[S, …]`, each followed by its bias draw as one pass makes them (stacked
/// `[S, out]`; `None` without a bias): `draw` is [`GaussianWeights::sample_weight`] (weights
/// `μ + σ ε`) or [`GaussianWeights::sample_perturbation`] (Flipout's `ΔW = σ ⊙ ε`).
fn stacked_draws(
    w: &GaussianWeights,
    s: usize,
    rng: &mut SeededRng,
    draw: impl Fn(&mut SeededRng) -> Result<Tensor>,
) -> Result<(Tensor, Option<Tensor>)> {
    let mut ws = Vec::with_capacity(s);
    let mut bs = Vec::with_capacity(s);
    for _ in 0..s {
        ws.push(draw(rng)?);
        if let Some(b) = w.sample_bias(rng)? {
            bs.push(b);
        }
    }
    let bias = if bs.is_empty() {
        None
    } else {
        Some(Tensor::stack(&bs, 0)?)
    };
    Ok((Tensor::stack(&ws, 0)?, bias))
}

/// `[S·B, C, H, W]` sample blocks as `S` channel groups `[B, S·C, H, W]` (a copy), so that one
/// grouped convolution applies a different kernel to each block.
fn blocks_to_channels(x: &Tensor, s: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    x.reshape((s, n / s, c, h, w))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((n / s, s * c, h, w))
}

/// The inverse of [`blocks_to_channels`]: `[B, S·O, H, W]` → `[S·B, O, H, W]`.
fn channels_to_blocks(y: &Tensor, s: usize) -> Result<Tensor> {
    let (b, so, h, w) = y.dims4()?;
    y.reshape((b, s, so / s, h, w))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((s * b, so / s, h, w))
}

/// The local-reparameterisation moments of a Gaussian linear layer, `(x μᵀ + b_μ, x² (σ²)ᵀ + b_σ²)`.
fn lrt_linear(x2: &Tensor, w: &GaussianWeights) -> Result<(Tensor, Tensor)> {
    let mean = add_bias_rows(mm(x2, w.mu)?, w.bias_mu)?;
    let var = mm(&x2.sqr()?, &w.sigma.sqr()?)?;
    let var = match w.bias_sigma {
        Some(bs) => add_bias_rows(var, Some(&bs.sqr()?))?,
        None => var,
    };
    Ok((mean, var))
}

/// One ordinary pass of [`gaussian_linear`] over the rows of `x2: [rows, in]`.
fn linear_pass(x2: &Tensor, w: &GaussianWeights, sampling: Sampling, rng: &mut SeededRng) -> Result<Tensor> {
    let (rows, in_dim) = x2.dims2()?;
    let out_dim = w.mu.dim(0)?;
    let (dt, dev) = (x2.dtype(), x2.device());
    match sampling {
        Sampling::Mean => add_bias_rows(mm(x2, w.mu)?, w.bias_mu),
        Sampling::Weight => {
            let wt = w.sample_weight(rng)?;
            let b = w.sample_bias(rng)?;
            add_bias_rows(mm(x2, &wt)?, b.as_ref())
        }
        Sampling::Local => {
            let (mean, var) = lrt_linear(x2, w)?;
            let eps = rng.randn(&[rows, out_dim], dt, dev)?;
            secateur_kernels::lrt_sample::lrt_sample(&mean, &var, &eps, LRT_VAR_EPS)
        }
        Sampling::Flipout => {
            let mean = mm(x2, w.mu)?;
            let delta = w.sample_perturbation(rng)?;
            let b = w.sample_bias(rng)?;
            let s_in = rng.rademacher(&[rows, in_dim], dt, dev)?;
            let s_out = rng.rademacher(&[rows, out_dim], dt, dev)?;
            let pert = (mm(&(x2 * s_in)?, &delta)? * s_out)?;
            add_bias_rows((mean + pert)?, b.as_ref())
        }
    }
}

/// The local-reparameterisation convolution pair `(conv(x, μ), conv(x², σ²))` (Kingma, Salimans
/// & Welling 2015: the pre-activation of a Gaussian-weight convolution is Gaussian with this mean
/// and variance, per output element), without bias.
///
/// Computed by `secateur_kernels::lrt::lrt_conv2d`: one packing of `x` for both products when
/// no gradient is tracked (evaluation), two of secateur's fast convolutions when training.
pub fn lrt_conv(x: &Tensor, mu: &Tensor, var: &Tensor, geom: Conv2dGeom) -> Result<(Tensor, Tensor)> {
    let p = secateur_kernels::conv::ConvParams::new(geom.stride, geom.padding, geom.dilation, geom.groups);
    secateur_kernels::lrt::lrt_conv2d(x, mu, var, p)
}

/// The local-reparameterisation pair with the biases, `(conv(x, μ) + b_μ, conv(x², σ²) + b_σ²)`.
/// When training (a gradient is tracked) each half is one convolution-with-bias op; otherwise the
/// fused pair of [`lrt_conv`], then the biases.
fn lrt_conv_bias(x: &Tensor, w: &GaussianWeights, geom: Conv2dGeom) -> Result<(Tensor, Tensor)> {
    let p = secateur_kernels::conv::ConvParams::new(geom.stride, geom.padding, geom.dilation, geom.groups);
    let s2 = w.sigma.sqr()?;
    let bias_var = w.bias_sigma.map(|b| b.sqr()).transpose()?;
    let tracked = [Some(x), Some(w.mu), Some(&s2), w.bias_mu, bias_var.as_ref()]
        .into_iter()
        .flatten()
        .any(|t| t.track_op());
    if !tracked {
        let (mean, var) = lrt_conv(x, w.mu, &s2, geom)?;
        return Ok((
            add_bias_channels(mean, w.bias_mu)?,
            add_bias_channels(var, bias_var.as_ref())?,
        ));
    }
    let with_bias = |x: &Tensor, k: &Tensor, b: Option<&Tensor>| match b {
        Some(b) => secateur_kernels::conv::conv2d_bias(x, k, b, p),
        None => secateur_kernels::conv::conv2d_with(x, k, p),
    };
    Ok((
        with_bias(x, w.mu, w.bias_mu)?,
        with_bias(&x.sqr()?, &s2, bias_var.as_ref())?,
    ))
}

fn conv(x: &Tensor, w: &Tensor, g: Conv2dGeom) -> Result<Tensor> {
    secateur_kernels::conv::conv2d(x, w, g.stride, g.padding, g.dilation, g.groups)
}

/// A Gaussian-weight 2-D convolution for `x: [N, C, H, W]`, weight `[O, C/groups, k, k]`, with
/// the estimator `ctx.sampling` (as [`gaussian_linear`]; for convolutions):
///
/// - `Mean`: `conv(x, μ) + b_μ`;
/// - `Weight`: one weight and bias draw per call, shared by the batch;
/// - `Local`: `conv(x, μ) + b_μ + √(conv(x², σ²) + b_σ² + 1e−16) ⊙ ε`, `ε` per output element
///   ([`lrt_conv`]);
/// - `Flipout` (Wen et al. 2018): `conv(x, μ) + conv(x ⊙ s_in, ΔW) ⊙ s_out + b`, `ΔW = σ ⊙ ε` one per
///   call, sign vectors per example and channel (`s_in: [N, C, 1, 1]`, `s_out: [N, O, 1, 1]`).
///
/// In a pass of `S > 1` samples, as [`gaussian_linear`]: one draw per sample block; on identical
/// blocks the mean and the local-reparameterisation moments are computed once, and (one group)
/// the `S` weight samples convolve that block as one convolution with `S·O` output channels.
/// Distinct blocks meet their own kernels in one grouped convolution (`S · groups` groups, the
/// blocks stacked as channels).
pub fn gaussian_conv2d(x: &Tensor, w: GaussianWeights, geom: Conv2dGeom, ctx: &mut Ctx) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    let (_, ci, _, _) = w.mu.dims4()?;
    if ci * geom.groups != c {
        candle_core::bail!(
            "conv layer: input has {c} channels, the weight expects {} ({} groups)",
            ci * geom.groups,
            geom.groups
        );
    }
    let s = ctx.samples;
    match (ctx.sampling, ctx.shared_block(x)?) {
        (_, _) if s <= 1 => conv_pass(x, &w, geom, ctx.sampling, ctx.rng),
        (Sampling::Mean, Some(x0)) => tile(&conv_pass(&x0, &w, geom, Sampling::Mean, ctx.rng)?, s),
        (Sampling::Mean, None) => conv_pass(x, &w, geom, Sampling::Mean, ctx.rng),
        (Sampling::Local, shared) => {
            let (mean, var) = match shared {
                Some(x0) => {
                    let (m, v) = lrt_conv_bias(&x0, &w, geom)?;
                    (tile(&m, s)?, tile(&v, s)?)
                }
                None => lrt_conv_bias(x, &w, geom)?,
            };
            ctx.mark_noisy();
            let eps = ctx.rng.randn(mean.dims(), x.dtype(), x.device())?;
            secateur_kernels::lrt_sample::lrt_sample(&mean, &var, &eps, LRT_VAR_EPS)
        }
        (Sampling::Weight, shared) => {
            let (ws, bias) = stacked_draws(&w, s, ctx.rng, |r| w.sample_weight(r))?;
            ctx.mark_noisy();
            let (o, ci, k1, k2) = w.mu.dims4()?;
            let stacked = ws.reshape((s * o, ci, k1, k2))?;
            let bias = bias.map(|b| b.flatten_all()).transpose()?;
            match shared {
                // one block, S·O output channels
                Some(x0) if geom.groups == 1 => {
                    channels_to_blocks(&add_bias_channels(conv(&x0, &stacked, geom)?, bias.as_ref())?, s)
                }
                // each block its own kernels: S·groups groups over the blocks stacked as channels
                _ => {
                    let g = Conv2dGeom {
                        groups: geom.groups * s,
                        ..geom
                    };
                    let y = add_bias_channels(conv(&blocks_to_channels(x, s)?, &stacked, g)?, bias.as_ref())?;
                    channels_to_blocks(&y, s)
                }
            }
        }
        (Sampling::Flipout, shared) => {
            let mean = match shared {
                Some(x0) => tile(&conv(&x0, w.mu, geom)?, s)?,
                None => conv(x, w.mu, geom)?,
            };
            ctx.mark_noisy();
            let (deltas, bias) = stacked_draws(&w, s, ctx.rng, |r| w.sample_perturbation(r))?;
            let (o, ci, k1, k2) = w.mu.dims4()?;
            let n = x.dim(0)?;
            let b = ctx.block_rows(x)?;
            let (dt, dev) = (x.dtype(), x.device());
            let s_in = ctx.rng.rademacher(&[n, c, 1, 1], dt, dev)?;
            let s_out = ctx.rng.rademacher(&[n, o, 1, 1], dt, dev)?;
            let g = Conv2dGeom {
                groups: geom.groups * s,
                ..geom
            };
            let xs = blocks_to_channels(&x.broadcast_mul(&s_in)?, s)?;
            let pert = channels_to_blocks(&conv(&xs, &deltas.reshape((s * o, ci, k1, k2))?, g)?, s)?;
            let y = (mean + pert.broadcast_mul(&s_out)?)?;
            match bias {
                Some(bias) => {
                    let (_, _, h, wd) = y.dims4()?;
                    let y5 = y.reshape((s, b, o, h, wd))?;
                    y5.broadcast_add(&bias.reshape((s, 1, o, 1, 1))?)?
                        .reshape((n, o, h, wd))
                }
                None => Ok(y),
            }
        }
    }
}

/// One ordinary pass of [`gaussian_conv2d`].
fn conv_pass(
    x: &Tensor,
    w: &GaussianWeights,
    geom: Conv2dGeom,
    sampling: Sampling,
    rng: &mut SeededRng,
) -> Result<Tensor> {
    let (n, c, _, _) = x.dims4()?;
    let o = w.mu.dim(0)?;
    let (dt, dev) = (x.dtype(), x.device());
    match sampling {
        Sampling::Mean => add_bias_channels(conv(x, w.mu, geom)?, w.bias_mu),
        Sampling::Weight => {
            let wt = w.sample_weight(rng)?;
            let b = w.sample_bias(rng)?;
            add_bias_channels(conv(x, &wt, geom)?, b.as_ref())
        }
        Sampling::Local => {
            let (mean, var) = lrt_conv_bias(x, w, geom)?;
            let eps = rng.randn(mean.dims(), dt, dev)?;
            secateur_kernels::lrt_sample::lrt_sample(&mean, &var, &eps, LRT_VAR_EPS)
        }
        Sampling::Flipout => {
            let mean = conv(x, w.mu, geom)?;
            let delta = w.sample_perturbation(rng)?;
            let b = w.sample_bias(rng)?;
            let s_in = rng.rademacher(&[n, c, 1, 1], dt, dev)?;
            let s_out = rng.rademacher(&[n, o, 1, 1], dt, dev)?;
            let pert = conv(&x.broadcast_mul(&s_in)?, &delta, geom)?.broadcast_mul(&s_out)?;
            add_bias_channels((mean + pert)?, b.as_ref())
        }
    }
}
