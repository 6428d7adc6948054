//! Laplace approximations of the posterior over a trained network's weights (MacKay 1992;
//! Ritter, Botev & Barber 2018; Daxberger et al. 2021, "Laplace Redux", whose reference code is
//! laplace-torch, `aleximmer/Laplace`).
//!
//! Around a MAP estimate `θ*` (the model's current weights) the log posterior is replaced by its
//! second-order Taylor expansion, giving the Gaussian
//!
//! ```text
//! q(θ) = N(θ*, P⁻¹),    P = H + λ I,    H ≈ −∇²_θ log p(D | θ)|_θ*  (summed over the data)
//! ```
//!
//! under the isotropic prior `p(θ) = N(0, λ⁻¹ I)` (λ the *prior precision*, temperature 1). The
//! Hessian of the log-likelihood is replaced by a positive semi-definite curvature:
//!
//! - the generalised Gauss–Newton matrix (GGN) `H = Σₙ Jₙᵀ Λₙ Jₙ`, `Jₙ = ∂f(xₙ)/∂θ` the Jacobian
//!   of the network outputs and `Λₙ = −∇²_f log p(yₙ | f)` the Hessian of the likelihood in the
//!   outputs: `diag(p) − p pᵀ` (softmax probabilities `p`) for the categorical likelihood,
//!   `I/σ²` for a Gaussian one with fixed noise σ;
//! - the empirical Fisher (EF) `H = Σₙ gₙ gₙᵀ`, `gₙ = ∇_θ log p(yₙ | xₙ, θ)`.
//!
//! Two families are built:
//!
//! - [`DiagLaplace`] (`laplace-diag`): every trainable parameter, `H` replaced by its diagonal
//!   (exact per-example diagonal GGN or EF, [`DiagCurvature`]);
//! - [`LastLayerLaplace`] (`laplace-last-layer`, Kristiadi, Hein & Hennig 2020): only the head
//!   (`{head}.weight`, `{head}.bias`), the rest of the network fixed at the MAP, with the full
//!   GGN of the head or its Kronecker factorisation ([`LastLayerHessian`]).
//!
//! # Marginal likelihood and the prior precision
//!
//! Both implement [`Laplace`]: the Laplace estimate of the log evidence (laplace-torch's
//! `log_marginal_likelihood`, Immer et al. 2021), evaluated at the stored MAP `θ*`,
//!
//! ```text
//! log p(D | λ) ≈ log p(D | θ*) − ½ (log det P − log det P_prior) − ½ (θ* − 0)ᵀ P_prior (θ* − 0),
//! P_prior = λ I,   P = H + λ I,
//! ```
//!
//! which equals `log p(D|θ*) + log p(θ*) + (P/2) log 2π − ½ log det P`; `log p(D | θ*)` is summed
//! over the data with its constants (the Gaussian `½ log 2πσ²` included). For a linear model
//! with a Gaussian likelihood it is the exact log evidence when `θ*` is the MAP under λ.
//! [`Laplace::optimize_prior_precision`] maximises it over λ at the fixed `θ*`.
//! [`select_prior_precision_by_nll`] chooses λ from a grid by the validation NLL of the
//! Monte Carlo predictive instead (laplace-torch's `method="gridsearch"`).
//!
//! # Where this differs from laplace-torch
//!
//! - The λ search is deterministic: a grid of 81 values of `log₁₀ λ` over `[−4, 4]`, then
//!   golden-section search on `log λ` in the bracket around the best grid value, to a width of
//!   `1e−9` in `log λ` (the maximiser itself is resolved to about `√ε ≈ 1e−8` relative, the
//!   flatness of the objective at its top in f64). laplace-torch runs 100 steps of Adam
//!   (learning rate 0.1) on `log λ` from λ = 1. The result is confined to `[1e−4, 1e4]`.
//! - One scalar λ for all parameters (laplace-torch also offers per-layer and per-parameter
//!   precisions).
//! - The diagonal GGN is computed by per-example backward passes in candle (laplace-torch uses
//!   BackPACK/ASDL/curvlinops extensions that form it in one batched pass).
//! - Kron for the head treats the bias as the homogeneous coordinate of the input, see
//!   [`last_layer`].
//! - The default prior precision after a fit is 1 (laplace-torch's default).

pub mod diag;
pub mod last_layer;

pub use diag::DiagLaplace;
pub use last_layer::LastLayerLaplace;

use crate::batches::Batches;
use crate::likelihood::{Likelihood, Noise};
use crate::posterior::{apply_sample, predict_bma, snapshot, BmaSettings, Posterior};
use candle_core::{bail, DType, Result, Tensor};
use secateur_bayes::{Ctx, Module, ParamStore, Sampling, SeededRng};
use std::collections::BTreeMap;

/// The curvature of [`DiagLaplace`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiagCurvature {
    /// The exact diagonal of the generalised Gauss–Newton matrix (`ggn`).
    Ggn,
    /// The diagonal of the empirical Fisher, the sum of squared per-example gradients (`ef`).
    EmpiricalFisher,
}

impl DiagCurvature {
    /// The config name: `ggn` or `ef`.
    pub fn name(&self) -> &'static str {
        match self {
            DiagCurvature::Ggn => "ggn",
            DiagCurvature::EmpiricalFisher => "ef",
        }
    }

    /// Parses `ggn` or `ef`; anything else is refused with the accepted names.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "ggn" => Ok(DiagCurvature::Ggn),
            "ef" => Ok(DiagCurvature::EmpiricalFisher),
            other => bail!("laplace: unknown diagonal curvature `{other}` (expected `ggn` or `ef`)"),
        }
    }
}

/// The Hessian structure of [`LastLayerLaplace`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastLayerHessian {
    /// The full GGN of the head's parameters (`full`).
    Full,
    /// Its Kronecker factorisation, KFAC (`kron`).
    Kron,
}

impl LastLayerHessian {
    /// The config name: `full` or `kron`.
    pub fn name(&self) -> &'static str {
        match self {
            LastLayerHessian::Full => "full",
            LastLayerHessian::Kron => "kron",
        }
    }

    /// Parses `full` or `kron`; anything else is refused with the accepted names.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "full" => Ok(LastLayerHessian::Full),
            "kron" => Ok(LastLayerHessian::Kron),
            other => bail!("laplace: unknown last-layer Hessian `{other}` (expected `full` or `kron`)"),
        }
    }
}

/// A Laplace approximation `N(θ*, (H + λI)⁻¹)` with a tunable prior precision λ (see the
/// [module docs](self) for the marginal likelihood).
pub trait Laplace: Posterior {
    /// The prior precision λ of `p(θ) = N(0, λ⁻¹ I)`.
    fn prior_precision(&self) -> f64;

    /// Sets λ (the posterior precision becomes `H + λ I`). Refuses non-finite values and λ ≤ 0.
    fn set_prior_precision(&mut self, lambda: f64) -> Result<()>;

    /// The Laplace log evidence at prior precision `lambda` and the stored MAP (see the module
    /// docs); does not change the stored λ. Refuses non-finite values and λ ≤ 0.
    fn log_marginal_likelihood(&self, lambda: f64) -> Result<f64>;

    /// Maximises [`Laplace::log_marginal_likelihood`] over λ ∈ [1e−4, 1e4] (grid then
    /// golden-section search on `log λ`), sets the maximiser and returns it.
    fn optimize_prior_precision(&mut self) -> Result<f64> {
        let lambda = maximise_over_log_lambda(|l| self.log_marginal_likelihood(l))?;
        self.set_prior_precision(lambda)?;
        Ok(lambda)
    }

    /// The fixed observation noise σ of a Gaussian likelihood; `None` for the categorical
    /// likelihood (the default). [`select_prior_precision_by_nll`] reads it.
    fn noise_std(&self) -> Option<f64> {
        None
    }
}

/// Refuses a prior precision that is not finite and positive, naming the field.
pub(crate) fn check_prior_precision(lambda: f64) -> Result<()> {
    if !(lambda.is_finite() && lambda > 0.0) {
        bail!("laplace: field `prior_precision` must be finite and > 0, got {lambda}");
    }
    Ok(())
}

/// `log p(D|θ*) − ½ (log det P − P log λ) − ½ λ ‖θ*‖²`.
pub(crate) fn laplace_evidence(
    log_lik: f64,
    log_det_posterior: f64,
    num_params: usize,
    lambda: f64,
    theta_sq: f64,
) -> f64 {
    let log_det_prior = num_params as f64 * lambda.ln();
    log_lik - 0.5 * (log_det_posterior - log_det_prior) - 0.5 * lambda * theta_sq
}

/// The noise σ of the likelihood: `None` for the categorical one, `Some(σ)` for a Gaussian with
/// fixed noise; other Gaussian noise models are refused.
pub(crate) fn fixed_noise(likelihood: &Likelihood) -> Result<Option<f64>> {
    match likelihood {
        Likelihood::Categorical => Ok(None),
        Likelihood::Gaussian(g) => match g.noise() {
            Noise::Fixed { std } => Ok(Some(std)),
            other => bail!(
                "laplace: a Gaussian likelihood needs fixed noise (`Noise::Fixed`), got {} noise",
                other.name()
            ),
        },
    }
}

/// The number of `log₁₀ λ` grid points over `[−4, 4]` of the λ search.
const GRID_POINTS: usize = 81;
/// The golden-section search stops when its bracket on `ln λ` is narrower than this.
const LOG_LAMBDA_TOL: f64 = 1e-9;

/// Maximises `f(λ)` over λ ∈ [1e−4, 1e4]: the best of 81 log-spaced values, then golden-section
/// search on `ln λ` over the bracket formed by its two neighbours. Non-finite values count as
/// −∞; refuses when every grid value is non-finite.
pub(crate) fn maximise_over_log_lambda(f: impl Fn(f64) -> Result<f64>) -> Result<f64> {
    let eval = |u: f64| -> Result<f64> {
        let v = f(u.exp())?;
        Ok(if v.is_finite() { v } else { f64::NEG_INFINITY })
    };
    let ln10 = std::f64::consts::LN_10;
    let grid: Vec<f64> = (0..GRID_POINTS)
        .map(|i| (-4.0 + 8.0 * i as f64 / (GRID_POINTS - 1) as f64) * ln10)
        .collect();
    let mut best = (0usize, f64::NEG_INFINITY);
    for (i, &u) in grid.iter().enumerate() {
        let v = eval(u)?;
        if v > best.1 {
            best = (i, v);
        }
    }
    if best.1 == f64::NEG_INFINITY {
        bail!("laplace: the log marginal likelihood is not finite for any prior precision in [1e-4, 1e4]");
    }
    let (mut a, mut b) = (grid[best.0.saturating_sub(1)], grid[(best.0 + 1).min(GRID_POINTS - 1)]);
    let r = (5f64.sqrt() - 1.0) / 2.0;
    let (mut c, mut d) = (b - r * (b - a), a + r * (b - a));
    let (mut fc, mut fd) = (eval(c)?, eval(d)?);
    while b - a > LOG_LAMBDA_TOL {
        if fc >= fd {
            b = d;
            d = c;
            fd = fc;
            c = b - r * (b - a);
            fc = eval(c)?;
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + r * (b - a);
            fd = eval(d)?;
        }
    }
    // the bracket's midpoint, unless the grid point itself is better (a maximum at the edge)
    let mid = 0.5 * (a + b);
    let u = if eval(mid)? >= best.1 { mid } else { grid[best.0] };
    Ok(u.exp())
}

/// Chooses the prior precision from `grid` by the negative log-likelihood of the Monte Carlo
/// predictive on validation data (laplace-torch's `optimize_prior_precision(method="gridsearch")`,
/// whose default grid is 100 values of λ over `[1e−4, 1e4]`), sets it and returns it.
///
/// For each λ (in the order given) the predictive `p(y | x, D) ≈ (1/S) Σₛ p(y | x, θₛ)` is
/// formed from S = `samples` draws `θₛ ~ q` written into `store` ([`predict_bma`] without
/// batch-norm recomputation; a Gaussian mixture `(1/S) Σₛ N(y; f(x; θₛ), σ²I)` for a Gaussian
/// likelihood), and scored by `−(1/N) Σₙ log p(yₙ | xₙ, D)`. Every λ uses the same draws of the
/// standard normals (common random numbers: each starts from a copy of `rng`), so that the
/// comparison is not blurred by Monte Carlo noise; `rng` ends where the last λ's draws ended.
/// The first λ with the smallest NLL wins. The store is restored. Refuses an empty grid, a
/// non-positive λ and `samples = 0`.
pub fn select_prior_precision_by_nll(
    laplace: &mut dyn Laplace,
    model: &dyn Module,
    store: &ParamStore,
    val: &mut dyn Batches,
    grid: &[f64],
    samples: usize,
    rng: &mut SeededRng,
) -> Result<f64> {
    if grid.is_empty() {
        bail!("laplace: field `grid` of prior precisions is empty");
    }
    for &l in grid {
        check_prior_precision(l)?;
    }
    if samples == 0 {
        bail!("laplace: field `samples` must be at least 1, got 0");
    }
    let start = rng.clone();
    let mut best: Option<(f64, f64)> = None;
    for &lambda in grid {
        laplace.set_prior_precision(lambda)?;
        let mut r = start.clone();
        let nll = validation_nll(&*laplace, model, store, val, samples, &mut r)?;
        if nll.is_finite() && best.is_none_or(|(_, b)| nll < b) {
            best = Some((lambda, nll));
        }
        *rng = r;
    }
    let Some((lambda, _)) = best else {
        bail!("laplace: the validation NLL is not finite for any prior precision of the grid");
    };
    laplace.set_prior_precision(lambda)?;
    Ok(lambda)
}

/// The validation NLL of the Monte Carlo predictive of `laplace` (see
/// [`select_prior_precision_by_nll`]).
fn validation_nll(
    laplace: &dyn Laplace,
    model: &dyn Module,
    store: &ParamStore,
    val: &mut dyn Batches,
    samples: usize,
    rng: &mut SeededRng,
) -> Result<f64> {
    match laplace.noise_std() {
        None => {
            let settings = BmaSettings {
                samples,
                refresh_batch_norm: false,
            };
            let posterior: &dyn Posterior = laplace;
            let p = predict_bma(model, store, posterior, val, None, settings, rng)?.predictions;
            let k = p.classes;
            let mut nll = 0f64;
            for (n, &y) in p.labels.iter().enumerate() {
                let Some(&q) = p.probs.get(n * k + y as usize) else {
                    bail!("laplace: validation label {y} is not a class of the {k} outputs");
                };
                nll -= (q as f64).max(f64::MIN_POSITIVE).ln();
            }
            Ok(nll / p.labels.len().max(1) as f64)
        }
        Some(sigma) => gaussian_mixture_nll(laplace, model, store, val, samples, sigma, rng),
    }
}

/// `−(1/N) Σₙ log (1/S) Σₛ N(yₙ; f(xₙ; θₛ), σ² I)` over S draws written into `store`, which is
/// restored afterwards (also on error).
fn gaussian_mixture_nll(
    laplace: &dyn Laplace,
    model: &dyn Module,
    store: &ParamStore,
    val: &mut dyn Batches,
    samples: usize,
    sigma: f64,
    rng: &mut SeededRng,
) -> Result<f64> {
    let saved = snapshot(store)?;
    let result = (|| {
        // per draw, the log-density of every validation example
        let mut per_draw: Vec<Vec<f64>> = Vec::with_capacity(samples);
        for _ in 0..samples {
            apply_sample(store, &laplace.sample(rng)?)?;
            let mut logp = Vec::new();
            val.start_epoch(0, rng);
            for i in 0..val.num_batches() {
                let (x, y) = val.batch(i, rng)?;
                let mut ctx = Ctx::eval(rng, Sampling::Mean);
                let f = model.forward(&x, &mut ctx)?.to_dtype(DType::F64)?;
                let (b, d) = f.dims2()?;
                let y = y.to_dtype(DType::F64)?.reshape((b, d)).map_err(|_| {
                    candle_core::Error::Msg(format!(
                        "laplace: validation targets {:?} do not match the outputs [{b}, {d}]",
                        y.dims()
                    ))
                })?;
                let r = (f - y)?.to_vec2::<f64>()?;
                for row in r {
                    logp.push(
                        row.iter()
                            .map(|e| -crate::likelihood::HALF_LOG_2PI - sigma.ln() - e * e / (2.0 * sigma * sigma))
                            .sum::<f64>(),
                    );
                }
            }
            per_draw.push(logp);
        }
        let n = per_draw[0].len();
        let mut nll = 0f64;
        for i in 0..n {
            let m = per_draw.iter().map(|l| l[i]).fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = per_draw.iter().map(|l| (l[i] - m).exp()).sum();
            nll -= m + (s / samples as f64).ln();
        }
        Ok(nll / n.max(1) as f64)
    })();
    apply_sample(store, &saved)?;
    result
}

/// A scalar `[1]` f64 tensor (for [`Posterior::tensors`]).
pub(crate) fn scalar_tensor(v: f64) -> Result<Tensor> {
    Tensor::new(&[v], &candle_core::Device::Cpu)
}

/// Reads the scalar `[1]` tensor `name` of a saved Laplace approximation.
pub(crate) fn read_scalar(t: &BTreeMap<String, Tensor>, name: &str, what: &str) -> Result<f64> {
    let Some(v) = t.get(name) else {
        bail!("{what} file: missing tensor `{name}`");
    };
    let v = v.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    match v.as_slice() {
        [x] => Ok(*x),
        _ => bail!("{what} file: tensor `{name}` must hold one value, got {}", v.len()),
    }
}

#[cfg(test)]
mod tests;
