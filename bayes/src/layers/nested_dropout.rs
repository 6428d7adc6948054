//! Nested dropout (Rippel, Gelbart & Adams 2014, "Learning ordered representations with nested
//! dropout") and variational nested dropout (Cui, Liu, Li, Mao, Chan & Xue 2021, "Bayesian
//! nested neural networks for uncertainty calibration and adaptive compression").
//!
//! Both order the `K` units of their input (the features of a rank-2 or rank-3 input, the
//! channels of a `[N, C, H, W]` input) by drawing a **truncation index** `b ∈ {1, …, K}` and
//! keeping units `1..=b`: the mask `m_k = 1[k ≤ b]` is ordered (unit `k` kept ⇒ every earlier
//! unit kept), so each prefix of the units is trained as a network of its own and a trained
//! network can be evaluated at any width. Masks are drawn independently per example.
//!
//! - [`NestedDropout`]: `b ~ Geometric(p)` on `{1, 2, …}` truncated at `K` (the tail mass
//!   `(1 − p)^{K−1}` goes to `b = K`, i.e. Rippel et al.'s `b ~ Geom(p)`, keep `1..=min(b, K)`):
//!   [`truncated_geometric`]. A fixed distribution, no parameters, no divergence; masks are drawn
//!   in training mode only (it is not a Bayesian layer); no rescaling of the kept units.
//! - [`VariationalNestedDropout`]: the truncation index has a learned posterior
//!   `q(b) = Cat(π)`, `π = softmax(φ)` over the `K` positions, and the prior
//!   `p(b) = truncated_geometric(p₀, K)`. Training draws the **Downhill** relaxation of the
//!   ordered mask: a concrete (Gumbel-softmax) sample `s = softmax((φ + g)/τ)`, `g` Gumbel, and
//!   the reverse cumulative sum `m_k = Σ_{j ≥ k} s_j`, so that `1 = m_1 ≥ m_2 ≥ … ≥ m_K ≥ 0`, and
//!   as τ → 0 `m → 1[k ≤ b]`, `b ~ Cat(π)`: the relaxed mask is itself ordered ("downhill") and
//!   differentiable in φ. Evaluation with sampling draws exact masks `b ~ Cat(π)` (Gumbel-max),
//!   so Monte Carlo averaging is over the posterior of the sub-network. The divergence is the KL
//!   between the truncation distributions, `KL(Cat(π) ‖ p) = Σ_k π_k log(π_k / p_k)`
//!   ([`kl_categorical`]), the zero-temperature limit of the relaxed KL, as is usual for concrete
//!   relaxations (Jang, Gu & Poole 2017).
//!
//! Decisions and deviations (the paper's full text was not available to check against; its
//! abstract and introduction describe the Downhill distribution as a low-cost, differentiable
//! relaxation of nested dropout's index distribution, which is what is built here): the
//! posterior logits start at the prior (`φ = log p`, KL 0); the weights of the layer that follows
//! stay point estimates (the Bayesian part is the ordered mask, as for MC dropout).
//!
//! **Width.** When [`Ctx::width`] is `Some(w)`, both layers keep exactly the first
//! `⌈w · K⌉` units ([`kept_units`]) and draw nothing, in any mode: predictions of a narrower
//! sub-network through the ordinary forward pass, without retraining. With `Sampling::Mean` and
//! no width, both layers are the identity (the full network).

use crate::ctx::{kept_units, Ctx, Mode, Sampling};
use crate::divergence::Divergence;
use crate::error::ConfigError;
use crate::init::Init;
use crate::module::Module;
use crate::params::ParamBuilder;
use crate::rng::SeededRng;
use crate::variational::{PosteriorStats, TestTimeWeight, Variational};
use candle_core::{DType, Result, Tensor, D};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The default geometric parameter p of nested dropout (per unit).
pub const DEFAULT_P: f64 = 0.01;
/// The default temperature τ of the Downhill relaxation.
pub const DEFAULT_TEMPERATURE: f64 = 0.5;
/// Uniform draws are clamped to `[U_EPS, 1 − U_EPS]` before logarithms.
const U_EPS: f64 = 1e-7;

fn check_p(what: &str, field: &'static str, p: f64) -> std::result::Result<(), ConfigError> {
    if p > 0.0 && p <= 1.0 {
        Ok(())
    } else {
        Err(ConfigError::invalid(what, field, "in (0, 1]", p))
    }
}

/// The truncated geometric distribution of the truncation index: `P(b = k) = p (1 − p)^{k−1}`
/// for `k < K` and `P(b = K) = (1 − p)^{K−1}` (Rippel et al. 2014's `b ~ Geom(p)` with every
/// `b ≥ K` keeping all `K` units), as a vector of length `K` (entry `k − 1` is `P(b = k)`). It
/// sums to 1; the probability that unit `k` is kept is `P(b ≥ k) = (1 − p)^{k−1}`.
///
/// ```
/// use secateur_bayes::layers::nested_dropout::truncated_geometric;
/// let q = truncated_geometric(0.5, 3).unwrap();
/// assert_eq!(q, vec![0.5, 0.25, 0.25]);
/// ```
pub fn truncated_geometric(p: f64, units: usize) -> std::result::Result<Vec<f64>, ConfigError> {
    check_p("truncated geometric", "p", p)?;
    if units == 0 {
        return Err(ConfigError::invalid("truncated geometric", "units", "≥ 1", 0.0));
    }
    let mut v: Vec<f64> = (0..units).map(|k| p * (1.0 - p).powi(k as i32)).collect();
    v[units - 1] = (1.0 - p).powi(units as i32 - 1);
    Ok(v)
}

/// `KL(Cat(softmax(φ)) ‖ Cat(prior)) = Σ_k π_k (log π_k − log prior_k)`, `π = softmax(φ)`,
/// computed with `log π = φ − logsumexp(φ)`; differentiable in φ. `prior` must have the length of
/// φ and positive entries.
pub fn kl_categorical(logits: &Tensor, prior: &[f64]) -> Result<Tensor> {
    let k = logits.elem_count();
    if prior.len() != k || prior.iter().any(|&p| p.is_nan() || p <= 0.0) {
        candle_core::bail!(
            "categorical kl: the prior must have {k} positive entries, got {}",
            prior.len()
        );
    }
    let log_pi = log_softmax(&logits.flatten_all()?)?;
    let log_p = Tensor::from_vec(prior.iter().map(|p| p.ln()).collect::<Vec<f64>>(), k, logits.device())?
        .to_dtype(logits.dtype())?;
    (log_pi.exp()? * (&log_pi - log_p)?)?.sum_all()
}

/// `x − logsumexp(x)` along the last dimension (the maximum, detached, is subtracted first).
fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let m = x.detach().max_keepdim(D::Minus1)?;
    let shifted = x.broadcast_sub(&m)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Gumbel(0, 1) noise `−log(−log u)` of the given shape from `rng`.
fn gumbel(shape: &[usize], dtype: DType, dev: &candle_core::Device, rng: &mut SeededRng) -> Result<Tensor> {
    let u = rng
        .rand_uniform(shape, 0.0, 1.0, dtype, dev)?
        .clamp(U_EPS, 1.0 - U_EPS)?;
    u.log()?.neg()?.log()?.neg()
}

/// The Downhill relaxation of an ordered mask (Cui et al. 2021, as described in this module's
/// documentation) for `n` examples: `s = softmax((φ + g)/τ)` per row, `g` Gumbel(0, 1) noise from
/// `rng`, and `m_k = Σ_{j ≥ k} s_j` (`m = s T`, `T_{jk} = 1[j ≥ k]`). Returns `[n, K]`, every row
/// non-increasing from `m_1 = 1` with entries in `[0, 1]`; differentiable in φ.
pub fn downhill_mask(logits: &Tensor, n: usize, temperature: f64, rng: &mut SeededRng) -> Result<Tensor> {
    let k = logits.elem_count();
    let g = gumbel(&[n, k], logits.dtype(), logits.device(), rng)?;
    let s = (g.broadcast_add(&logits.reshape((1, k))?)? / temperature)?;
    let s = log_softmax(&s)?.exp()?;
    s.matmul(&Tensor::tril2(k, logits.dtype(), logits.device())?)
}

/// Exact ordered masks `m_k = 1[k ≤ b]` with `b ~ Cat(softmax(φ))` per example (Gumbel-max),
/// `[n, K]`, detached.
fn categorical_mask(logits: &Tensor, n: usize, rng: &mut SeededRng) -> Result<Tensor> {
    let k = logits.elem_count();
    let g = gumbel(&[n, k], logits.dtype(), logits.device(), rng)?;
    let b = g.broadcast_add(&logits.detach().reshape((1, k))?)?.argmax_keepdim(1)?; // 0-based
    let idx = Tensor::arange(0u32, k as u32, logits.device())?.reshape((1, k))?;
    idx.broadcast_le(&b)?.to_dtype(logits.dtype())
}

/// The first `kept` of `units` ones, then zeros: the mask at a width, `[1, units]`.
fn prefix_mask(kept: usize, units: usize, dtype: DType, dev: &candle_core::Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..units).map(|k| if k < kept { 1.0 } else { 0.0 }).collect();
    Tensor::from_vec(v, (1, units), dev)?.to_dtype(dtype)
}

/// `(n, units)` of an input: units are the channels of a rank-4 input, the last dimension
/// otherwise (rank ≥ 2).
fn unit_dims(x: &Tensor, what: &str) -> Result<(usize, usize)> {
    match x.rank() {
        0 | 1 => candle_core::bail!("{what}: the input must have rank ≥ 2 (batch first), got {:?}", x.dims()),
        4 => Ok((x.dim(0)?, x.dim(1)?)),
        _ => Ok((x.dim(0)?, x.dim(D::Minus1)?)),
    }
}

/// `x ⊙ m` for a mask `m: [n or 1, units]` over the units of `x`.
fn apply_mask(x: &Tensor, m: &Tensor) -> Result<Tensor> {
    let (rows, units) = m.dims2()?;
    let m = match x.rank() {
        4 => m.reshape((rows, units, 1, 1))?,
        2 => m.clone(),
        r => {
            let mut d = vec![1usize; r];
            d[0] = rows;
            d[r - 1] = units;
            m.reshape(d)?
        }
    };
    x.broadcast_mul(&m.to_dtype(x.dtype())?)
}

/// Plain nested dropout (Rippel, Gelbart & Adams 2014) with geometric parameter `p ∈ (0, 1]`:
/// in training mode (sampling not `Mean`) each example keeps units `1..=b`,
/// `b ~ truncated_geometric(p, K)`; with `ctx.width = Some(w)` the first `⌈w K⌉` units are kept;
/// otherwise the identity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NestedDropout {
    p: f64,
}

impl NestedDropout {
    /// Nested dropout with geometric parameter `p`; refuses `p ∉ (0, 1]`, naming `p`.
    pub fn new(p: f64) -> std::result::Result<Self, ConfigError> {
        check_p("nested dropout", "p", p)?;
        Ok(Self { p })
    }

    /// The geometric parameter.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// One truncation index per example, `b = min(1 + ⌊log u / log(1 − p)⌋, K)` (inversion of
    /// the geometric distribution, `u ~ U(0, 1)`), 1-based.
    pub fn sample_truncation(&self, n: usize, units: usize, rng: &mut SeededRng) -> Vec<usize> {
        let u = rng.uniform_vec(n, 0.0, 1.0);
        u.into_iter()
            .map(|u| {
                if self.p >= 1.0 {
                    return 1;
                }
                let u = (u as f64).clamp(U_EPS, 1.0);
                let extra = (u.ln() / (1.0 - self.p).ln()).floor();
                if extra >= units as f64 {
                    units
                } else {
                    1 + extra as usize
                }
            })
            .collect()
    }
}

impl Module for NestedDropout {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let (n, units) = unit_dims(x, "nested dropout")?;
        if let Some(w) = ctx.width {
            return apply_mask(x, &prefix_mask(kept_units(w, units)?, units, x.dtype(), x.device())?);
        }
        if ctx.mode != Mode::Train || ctx.sampling == Sampling::Mean {
            return Ok(x.clone());
        }
        ctx.mark_noisy();
        let b = self.sample_truncation(n, units, ctx.rng);
        let v: Vec<f32> = b
            .iter()
            .flat_map(|&b| (0..units).map(move |k| if k < b { 1.0 } else { 0.0 }))
            .collect();
        apply_mask(x, &Tensor::from_vec(v, (n, units), x.device())?)
    }
}

/// Configuration of a [`VariationalNestedDropout`] layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VariationalNestedDropoutConfig {
    /// Number of ordered units K (features or channels of the input).
    pub units: usize,
    /// Geometric parameter of the prior `p(b) = truncated_geometric(prior_p, K)`, in (0, 1].
    /// Default 0.01.
    pub prior_p: f64,
    /// Temperature τ > 0 of the Downhill relaxation. Default 0.5.
    pub temperature: f64,
}

impl VariationalNestedDropoutConfig {
    /// `units` ordered units, prior `truncated_geometric(0.01, units)`, τ = 0.5.
    pub fn new(units: usize) -> Self {
        Self {
            units,
            prior_p: DEFAULT_P,
            temperature: DEFAULT_TEMPERATURE,
        }
    }
    /// With this prior geometric parameter.
    pub fn with_prior_p(mut self, p: f64) -> Self {
        self.prior_p = p;
        self
    }
    /// With this relaxation temperature.
    pub fn with_temperature(mut self, t: f64) -> Self {
        self.temperature = t;
        self
    }
    /// Checks `units ≥ 1`, `prior_p ∈ (0, 1]`, `temperature` finite and > 0; the error names the
    /// field.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        let what = "variational nested dropout";
        if self.units == 0 {
            return Err(ConfigError::invalid(what, "units", "≥ 1", 0.0));
        }
        check_p(what, "prior_p", self.prior_p)?;
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(ConfigError::invalid(
                what,
                "temperature",
                "finite and > 0",
                self.temperature,
            ));
        }
        Ok(())
    }
}

/// Variational nested dropout (Cui et al. 2021): ordered masks over `K` units with a learned
/// truncation posterior `Cat(softmax(φ))`, the Downhill relaxation in training, exact draws in
/// evaluation with sampling, and `KL(q(b) ‖ p(b))` as its divergence. Parameter, under the
/// builder's path: `truncation_logits` φ (`[K]`).
///
/// ```
/// use secateur_bayes::{Ctx, Module, ParamBuilder, ParamStore, Sampling, SeededRng};
/// use secateur_bayes::layers::{VariationalNestedDropout, VariationalNestedDropoutConfig};
/// use candle_core::{DType, Device, Tensor};
/// let store = ParamStore::new();
/// let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
/// let vnd = VariationalNestedDropout::new(&pb.pp("fc2"), VariationalNestedDropoutConfig::new(4)).unwrap();
/// let x = Tensor::ones((1, 4), DType::F32, &Device::Cpu).unwrap();
/// let mut rng = SeededRng::new(1);
/// let y = vnd.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean).with_width(0.5)).unwrap();
/// assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![1.0, 1.0, 0.0, 0.0]]);
/// ```
#[derive(Debug, Clone)]
pub struct VariationalNestedDropout {
    name: String,
    logits: Tensor,
    prior: Vec<f64>,
    prior_p: f64,
    temperature: f64,
}

impl VariationalNestedDropout {
    /// Creates `truncation_logits` (`[K]`, initialised at the log prior) under `pb` and registers
    /// the layer as [`Variational`] under `pb`'s path.
    pub fn new(pb: &ParamBuilder, cfg: VariationalNestedDropoutConfig) -> Result<Self> {
        cfg.validate()?;
        let prior = truncated_geometric(cfg.prior_p, cfg.units)?;
        let logits = pb.param("truncation_logits", &[cfg.units], Init::Const(0.0))?;
        let log_p = Tensor::from_vec(
            prior.iter().map(|p| p.ln()).collect::<Vec<f64>>(),
            cfg.units,
            pb.device(),
        )?
        .to_dtype(pb.dtype())?;
        // initialise φ = log p (the Var shares storage with `logits`)
        if let Some(var) = pb.store().get(&pb.path("truncation_logits")) {
            var.set(&log_p)?;
        }
        let layer = Self {
            name: pb.prefix().to_string(),
            logits,
            prior,
            prior_p: cfg.prior_p,
            temperature: cfg.temperature,
        };
        pb.register_variational(Arc::new(layer.clone()))?;
        Ok(layer)
    }

    /// A layer from existing logits φ (`[K]`; tests, loading); not registered anywhere.
    pub fn from_tensors(name: impl Into<String>, logits: Tensor, prior_p: f64, temperature: f64) -> Result<Self> {
        let cfg = VariationalNestedDropoutConfig {
            units: logits.elem_count(),
            prior_p,
            temperature,
        };
        cfg.validate()?;
        Ok(Self {
            name: name.into(),
            prior: truncated_geometric(prior_p, cfg.units)?,
            logits: logits.flatten_all()?,
            prior_p,
            temperature,
        })
    }

    /// The truncation logits φ.
    pub fn logits(&self) -> &Tensor {
        &self.logits
    }

    /// The posterior of the truncation index, `π = softmax(φ)` (entry `k − 1` is `q(b = k)`).
    pub fn truncation_probs(&self) -> Result<Tensor> {
        log_softmax(&self.logits)?.exp()
    }

    /// The posterior probability that each unit is kept, `P(b ≥ k) = Σ_{j ≥ k} π_j` (`[K]`,
    /// non-increasing): the mean of the ordered mask.
    pub fn keep_probs(&self) -> Result<Tensor> {
        let k = self.logits.elem_count();
        self.truncation_probs()?
            .reshape((1, k))?
            .matmul(&Tensor::tril2(k, self.logits.dtype(), self.logits.device())?)?
            .flatten_all()
    }

    /// The prior `p(b = k)`, `truncated_geometric(prior_p, K)`.
    pub fn prior(&self) -> &[f64] {
        &self.prior
    }

    /// The prior's geometric parameter.
    pub fn prior_p(&self) -> f64 {
        self.prior_p
    }
}

impl Module for VariationalNestedDropout {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let (n, units) = unit_dims(x, "variational nested dropout")?;
        let k = self.logits.elem_count();
        if units != k {
            candle_core::bail!(
                "variational nested dropout `{}`: the input has {units} units, the layer orders {k}",
                self.name
            );
        }
        if let Some(w) = ctx.width {
            return apply_mask(x, &prefix_mask(kept_units(w, units)?, units, x.dtype(), x.device())?);
        }
        if ctx.sampling != Sampling::Mean {
            ctx.mark_noisy();
        }
        match (ctx.mode, ctx.sampling) {
            (_, Sampling::Mean) => Ok(x.clone()),
            (Mode::Train, _) => apply_mask(x, &downhill_mask(&self.logits, n, self.temperature, ctx.rng)?),
            (Mode::Eval, _) => apply_mask(x, &categorical_mask(&self.logits, n, ctx.rng)?),
        }
    }
}

impl Variational for VariationalNestedDropout {
    /// `KL(Cat(softmax φ) ‖ truncated_geometric(p₀, K))`; only `kl` is defined.
    fn divergence(&self, how: &Divergence, _rng: &mut SeededRng) -> Result<Tensor> {
        match how {
            Divergence::Kl => kl_categorical(&self.logits, &self.prior),
            other => Err(ConfigError::Unsupported(format!(
                "variational nested dropout layer `{}` defines only `kl` (between the truncation \
                 distributions), not `{other}`",
                self.name
            ))
            .into()),
        }
    }

    /// One entry, `{path}.mask`: the mean of the ordered mask `P(b ≥ k)` (also its
    /// `inclusion`), shape `[K]`; no standard deviation or `log α`.
    /// The truncation logits are not weights of the test-time network.
    fn test_time_weights(&self) -> Result<Vec<TestTimeWeight>> {
        Ok(Vec::new())
    }

    fn posterior_stats(&self) -> Result<Vec<PosteriorStats>> {
        let keep = self.keep_probs()?.detach();
        Ok(vec![PosteriorStats {
            name: if self.name.is_empty() {
                "mask".into()
            } else {
                format!("{}.mask", self.name)
            },
            mean: keep.clone(),
            std: None,
            log_alpha: None,
            inclusion: Some(keep),
        }])
    }
}
