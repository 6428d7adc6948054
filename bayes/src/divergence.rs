//! Divergences of a factorised Gaussian posterior `q(w) = Π N(wᵢ; μᵢ, σᵢ²)` from a prior.
//!
//! Every function returns the divergence **summed** over the weights (a scalar tensor, in the
//! dtype of its inputs, differentiable in `μ` and `σ`); the `*_elementwise` variants return one
//! term per weight. Sums, never means: the ELBO divides the total by the training-set size.
//!
//! | estimator | formula | reference |
//! |---|---|---|
//! | [`kl_gaussian`] | `log(σₚ/σ) + (σ² + (μ − μₚ)²) / (2σₚ²) − ½` | closed form |
//! | [`kl_monte_carlo`] | `(1/S) Σₛ [log q(wₛ) − log p(wₛ)]`, `wₛ = μ + σ εₛ` | Blundell et al. 2015 |
//! | [`kl_vd_kingma`] | `−(½ log α + c₁α + c₂α² + c₃α³)` | Kingma, Salimans & Welling 2015 |
//! | [`kl_sparse_vd`] | `−(k₁ sigmoid(k₂ + k₃ log α) − ½ log1p(e^{−log α}) − k₁)` | Molchanov, Ashukha & Vetrov 2017 |
//! | [`jsg_gaussian`] | geometric Jensen–Shannon JS^Gα, closed form | Thiagarajan & Ghosh 2022 |
//!
//! [`Divergence`] is the config value that picks one (`kl`, `kl-mc:S`, `js:α`); the sparse-VD and
//! VD approximations are chosen by the layer kind (they are the KL to the log-uniform prior).

use crate::error::ConfigError;
use crate::math::{sigmoid, softplus};
use crate::prior::{Prior, HALF_LN_2PI};
use crate::rng::SeededRng;
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// Kingma et al. 2015, eq. (14): `c₁` of `−KL ≈ const + ½ log α + c₁α + c₂α² + c₃α³`.
pub const KINGMA_C1: f64 = 1.161_451_24;
/// Kingma et al. 2015: `c₂`.
pub const KINGMA_C2: f64 = -1.502_041_18;
/// Kingma et al. 2015: `c₃`.
pub const KINGMA_C3: f64 = 0.586_299_21;
/// Molchanov et al. 2017, eq. (14): `k₁` of `−KL ≈ k₁ σ(k₂ + k₃ log α) − ½ log1p(α⁻¹) − k₁`.
pub const MOLCHANOV_K1: f64 = 0.635_76;
/// Molchanov et al. 2017: `k₂`.
pub const MOLCHANOV_K2: f64 = 1.873_20;
/// Molchanov et al. 2017: `k₃`.
pub const MOLCHANOV_K3: f64 = 1.486_95;

/// Which divergence between posterior and prior the objective uses (a config value).
///
/// Parsed from and written as `kl`, `kl-mc:S` (S ≥ 1 Monte Carlo samples) and `js:α`
/// (α ∈ [0, 1]):
///
/// ```
/// use secateur_bayes::divergence::Divergence;
/// assert_eq!("kl-mc:8".parse::<Divergence>().unwrap(), Divergence::KlMonteCarlo { samples: 8 });
/// assert_eq!("js:0.5".parse::<Divergence>().unwrap().to_string(), "js:0.5");
/// assert!("js:2".parse::<Divergence>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Divergence {
    /// `KL(q ‖ p)`: analytic for Gaussian priors; for the variational-dropout layers, their
    /// KL approximation to the log-uniform prior.
    #[default]
    Kl,
    /// `KL(q ‖ p)` by Monte Carlo with `samples` reparameterised draws, for any prior with a
    /// log-density.
    KlMonteCarlo {
        /// Number of samples S ≥ 1.
        samples: usize,
    },
    /// The skewed geometric Jensen–Shannon divergence JS^Gα (Thiagarajan & Ghosh 2022); α = 0
    /// is `KL(q ‖ p)`, α = 1 is `KL(p ‖ q)`.
    JsG {
        /// Skew α ∈ [0, 1].
        alpha: f64,
    },
}

impl Divergence {
    /// Checks the fields (`samples ≥ 1`, `α ∈ [0, 1]`).
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        match *self {
            Divergence::Kl => Ok(()),
            Divergence::KlMonteCarlo { samples: 0 } => Err(ConfigError::invalid(
                "divergence kl-mc",
                "samples",
                "an integer ≥ 1",
                0.0,
            )),
            Divergence::KlMonteCarlo { .. } => Ok(()),
            Divergence::JsG { alpha } if !(0.0..=1.0).contains(&alpha) => {
                Err(ConfigError::invalid("divergence js", "alpha", "in [0, 1]", alpha))
            }
            Divergence::JsG { .. } => Ok(()),
        }
    }
}

impl FromStr for Divergence {
    type Err = ConfigError;
    fn from_str(s: &str) -> std::result::Result<Self, ConfigError> {
        let err = |reason: String| ConfigError::Parse {
            what: "divergence",
            input: s.to_string(),
            reason,
        };
        let t = s.trim();
        let (name, arg) = match t.split_once(':') {
            Some((n, a)) => (n.trim(), Some(a.trim())),
            None => (t, None),
        };
        let d = match (name, arg) {
            ("kl", None) => Divergence::Kl,
            ("kl-mc", Some(a)) => {
                let samples = a
                    .parse::<usize>()
                    .map_err(|_| err(format!("the sample count `{a}` is not a positive integer")))?;
                Divergence::KlMonteCarlo { samples }
            }
            ("js", Some(a)) => {
                let alpha = a
                    .parse::<f64>()
                    .map_err(|_| err(format!("the skew `{a}` is not a number")))?;
                Divergence::JsG { alpha }
            }
            ("kl-mc", None) | ("js", None) => {
                return Err(err(format!("`{name}` needs a parameter: `kl-mc:S` or `js:ALPHA`")))
            }
            _ => {
                return Err(err(
                    "expected `kl`, `kl-mc:S` (S ≥ 1) or `js:ALPHA` (0 ≤ ALPHA ≤ 1)".into()
                ))
            }
        };
        d.validate().map_err(|e| err(e.to_string()))?;
        Ok(d)
    }
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Divergence::Kl => write!(f, "kl"),
            Divergence::KlMonteCarlo { samples } => write!(f, "kl-mc:{samples}"),
            Divergence::JsG { alpha } => write!(f, "js:{alpha}"),
        }
    }
}

impl TryFrom<String> for Divergence {
    type Error = ConfigError;
    fn try_from(s: String) -> std::result::Result<Self, ConfigError> {
        s.parse()
    }
}

impl From<Divergence> for String {
    fn from(d: Divergence) -> String {
        d.to_string()
    }
}

/// Elementwise `KL(N(μ, σ²) ‖ N(μₚ, σₚ²)) = log(σₚ/σ) + (σ² + (μ − μₚ)²) / (2σₚ²) − ½`.
pub fn kl_gaussian_elementwise(mu: &Tensor, sigma: &Tensor, prior_mean: f64, prior_std: f64) -> Result<Tensor> {
    let inv2 = 1.0 / (2.0 * prior_std * prior_std);
    let quad = (sigma.sqr()? + (mu - prior_mean)?.sqr()?)?;
    quad.affine(inv2, prior_std.ln() - 0.5)? - sigma.log()?
}

/// Analytic `KL(q ‖ p)` of the factorised Gaussian `q = N(μ, σ²)` from the Gaussian prior
/// `N(μₚ, σₚ²)`, summed over the weights:
/// `Σᵢ log(σₚ/σᵢ) + (σᵢ² + (μᵢ − μₚ)²) / (2σₚ²) − ½`.
///
/// ```
/// # use candle_core::{Tensor, Device};
/// use secateur_bayes::divergence::kl_gaussian;
/// let mu = Tensor::new(&[0f64, 1.0], &Device::Cpu).unwrap();
/// let s = Tensor::new(&[1f64, 1.0], &Device::Cpu).unwrap();
/// // KL(N(0,1)‖N(0,1)) + KL(N(1,1)‖N(0,1)) = 0 + ½
/// let kl = kl_gaussian(&mu, &s, 0.0, 1.0).unwrap().to_scalar::<f64>().unwrap();
/// assert!((kl - 0.5).abs() < 1e-12);
/// ```
pub fn kl_gaussian(mu: &Tensor, sigma: &Tensor, prior_mean: f64, prior_std: f64) -> Result<Tensor> {
    // One fused pass on the CPU (secateur-kernels); the same formula as candle ops elsewhere.
    match secateur_kernels::gaussian_kl::gaussian_kl_sum(mu, sigma, prior_mean, prior_std)? {
        Some(kl) => Ok(kl),
        None => kl_gaussian_elementwise(mu, sigma, prior_mean, prior_std)?.sum_all(),
    }
}

/// Monte Carlo `KL(q ‖ p) ≈ (1/S) Σₛ Σᵢ [log q(wᵢₛ) − log p(wᵢₛ)]` with reparameterised draws
/// `wᵢₛ = μᵢ + σᵢ εᵢₛ`, `ε ~ N(0, 1)` from `rng` (Blundell et al. 2015, eq. (2)), for any prior
/// with a log-density. Unbiased; differentiable in `μ` and `σ`. Since
/// `log q(w) = −½ log 2π − log σ − ε²/2`, only the prior term needs evaluating at `w`.
pub fn kl_monte_carlo(
    mu: &Tensor,
    sigma: &Tensor,
    prior: &Prior,
    samples: usize,
    rng: &mut SeededRng,
) -> Result<Tensor> {
    if samples == 0 {
        return Err(ConfigError::invalid("divergence kl-mc", "samples", "an integer ≥ 1", 0.0).into());
    }
    let log_sigma_sum = sigma.log()?.sum_all()?;
    let mut total: Option<Tensor> = None;
    for _ in 0..samples {
        let eps = rng.randn(mu.dims(), mu.dtype(), mu.device())?;
        let w = (mu + (sigma * &eps)?)?;
        // Σᵢ log q(wᵢ) = −n ½log 2π − Σ log σᵢ − ½ Σ εᵢ²
        let n = mu.elem_count() as f64;
        let log_q = (eps.sqr()?.sum_all()?.affine(-0.5, -n * HALF_LN_2PI)? - &log_sigma_sum)?;
        let term = (log_q - prior.log_density(&w)?.sum_all()?)?;
        total = Some(match total {
            None => term,
            Some(t) => (t + term)?,
        });
    }
    total.expect("samples ≥ 1") / samples as f64
}

/// Elementwise approximate `KL(q ‖ p)` of Gaussian dropout `q(w) = N(θ, αθ²)` from the
/// log-uniform prior (Kingma, Salimans & Welling 2015, eq. (14)):
/// `KL ≈ −(½ log α + c₁α + c₂α² + c₃α³)`, omitting the paper's additive constant (so the value
/// is not ≥ 0; gradients are unaffected). The fit is for `α ≤ 1` (`log α ≤ 0`); callers clip.
pub fn kl_vd_kingma_elementwise(log_alpha: &Tensor) -> Result<Tensor> {
    let a = log_alpha.exp()?;
    let poly = (((&a * KINGMA_C3)? + KINGMA_C2)? * &a)?;
    let poly = ((poly + KINGMA_C1)? * &a)?;
    ((log_alpha * 0.5)? + poly)?.neg()
}

/// [`kl_vd_kingma_elementwise`] summed over the weights.
pub fn kl_vd_kingma(log_alpha: &Tensor) -> Result<Tensor> {
    kl_vd_kingma_elementwise(log_alpha)?.sum_all()
}

/// Elementwise approximate `KL(q ‖ p)` of sparse variational dropout (Molchanov, Ashukha &
/// Vetrov 2017, eq. (14)), `q(w) = N(θ, σ²)`, `α = σ²/θ²`, log-uniform prior:
/// `KL ≈ −(k₁ sigmoid(k₂ + k₃ log α) − ½ log1p(e^{−log α}) − k₁)`, with `k₁ = 0.63576`,
/// `k₂ = 1.87320`, `k₃ = 1.48695`. Exact as α → ∞ (tends to 0); `log1p(e^{−x})` is computed as
/// a stable softplus.
pub fn kl_sparse_vd_elementwise(log_alpha: &Tensor) -> Result<Tensor> {
    let s = sigmoid(&log_alpha.affine(MOLCHANOV_K3, MOLCHANOV_K2)?)?;
    let neg_kl = (s.affine(MOLCHANOV_K1, -MOLCHANOV_K1)? - (softplus(&log_alpha.neg()?)? * 0.5)?)?;
    neg_kl.neg()
}

/// [`kl_sparse_vd_elementwise`] summed over the weights.
pub fn kl_sparse_vd(log_alpha: &Tensor) -> Result<Tensor> {
    kl_sparse_vd_elementwise(log_alpha)?.sum_all()
}

/// Elementwise skewed geometric Jensen–Shannon divergence JS^Gα between the posterior
/// `q = N(μ, σ²)` and the prior `p = N(μₚ, σₚ²)` (Thiagarajan & Ghosh 2022, "Jensen–Shannon
/// divergence based novel loss functions for Bayesian neural networks"):
///
/// `JS^Gα = (1 − α) KL(q ‖ G_α) + α KL(p ‖ G_α)`, `G_α ∝ q^α p^{1−α} = N(μ_α, σ_α²)`, with
/// `σ_α² = 1 / (α/σ² + (1 − α)/σₚ²)`, `μ_α = σ_α² (αμ/σ² + (1 − α)μₚ/σₚ²)`; in closed form
/// `½ [((1−α)σ² + ασₚ²)/σ_α² + log(σ_α² / (σ^{2(1−α)} σₚ^{2α})) + (1−α)(μ_α−μ)²/σ_α²
/// + α(μ_α−μₚ)²/σ_α² − 1]`.
///
/// Limits: α → 0 gives `G → p` and `KL(q ‖ p)`; α → 1 gives `G → q` and `KL(p ‖ q)`; at α = ½ it
/// is symmetric in `q` and `p`.
pub fn jsg_gaussian_elementwise(
    mu: &Tensor,
    sigma: &Tensor,
    prior_mean: f64,
    prior_std: f64,
    alpha: f64,
) -> Result<Tensor> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(ConfigError::invalid("divergence js", "alpha", "in [0, 1]", alpha).into());
    }
    let s2 = sigma.sqr()?;
    let s2p = prior_std * prior_std;
    let prec_a = (s2.recip()? * alpha)?.affine(1.0, (1.0 - alpha) / s2p)?;
    let s2a = prec_a.recip()?;
    let mu_a = ((mu / &s2)? * alpha)?.affine(1.0, (1.0 - alpha) * prior_mean / s2p)?;
    let mu_a = (mu_a * &s2a)?;
    let t1 = ((&s2 * (1.0 - alpha))? + alpha * s2p)?.mul(&prec_a)?;
    let t2 = ((s2a.log()? - (s2.log()? * (1.0 - alpha))?)? - alpha * s2p.ln())?;
    let t3 = (((&mu_a - mu)?.sqr()? * (1.0 - alpha))? * &prec_a)?;
    let t4 = (((&mu_a - prior_mean)?.sqr()? * alpha)? * &prec_a)?;
    (((t1 + t2)? + t3)? + t4)?.affine(0.5, -0.5)
}

/// [`jsg_gaussian_elementwise`] summed over the weights.
pub fn jsg_gaussian(mu: &Tensor, sigma: &Tensor, prior_mean: f64, prior_std: f64, alpha: f64) -> Result<Tensor> {
    jsg_gaussian_elementwise(mu, sigma, prior_mean, prior_std, alpha)?.sum_all()
}

/// The divergence `how` of `q = N(μ, σ²)` from `prior`, summed over the weights: the one place
/// the mean-field layers dispatch on (divergence, prior).
///
/// - `Kl`: analytic, Gaussian prior only (others: use `kl-mc:S`);
/// - `KlMonteCarlo`: any prior with a log-density, noise from `rng`;
/// - `JsG`: closed form, Gaussian prior only.
pub fn gaussian_divergence(
    how: &Divergence,
    mu: &Tensor,
    sigma: &Tensor,
    prior: &Prior,
    rng: &mut SeededRng,
) -> Result<Tensor> {
    how.validate()?;
    match *how {
        Divergence::Kl => match prior.as_gaussian() {
            Some((m, s)) => kl_gaussian(mu, sigma, m, s),
            None => Err(ConfigError::Unsupported(format!(
                "analytic KL needs a Gaussian prior, the prior is {prior}; use `kl-mc:S` (Monte Carlo) instead"
            ))
            .into()),
        },
        Divergence::KlMonteCarlo { samples } => kl_monte_carlo(mu, sigma, prior, samples, rng),
        Divergence::JsG { alpha } => match prior.as_gaussian() {
            Some((m, s)) => jsg_gaussian(mu, sigma, m, s, alpha),
            None => Err(ConfigError::Unsupported(format!(
                "the geometric JS divergence is implemented in closed form for Gaussian priors only, the prior is {prior}"
            ))
            .into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        for (s, d) in [
            ("kl", Divergence::Kl),
            ("kl-mc:16", Divergence::KlMonteCarlo { samples: 16 }),
            ("js:0.25", Divergence::JsG { alpha: 0.25 }),
            ("js:0", Divergence::JsG { alpha: 0.0 }),
            (" js : 1 ", Divergence::JsG { alpha: 1.0 }),
        ] {
            assert_eq!(s.parse::<Divergence>().unwrap(), d, "{s}");
            assert_eq!(d.to_string().parse::<Divergence>().unwrap(), d);
        }
        for bad in [
            "", "KL2", "kl:3", "kl-mc", "kl-mc:0", "kl-mc:-1", "kl-mc:x", "js", "js:1.5", "js:-0.1", "js:nan", "js:a",
        ] {
            let e = bad.parse::<Divergence>();
            assert!(e.is_err(), "`{bad}` was accepted");
            assert!(e.unwrap_err().to_string().contains("divergence"));
        }
        let e = "kl-mc:0".parse::<Divergence>().unwrap_err().to_string();
        assert!(e.contains("samples"), "{e}");
        let e = "js:1.5".parse::<Divergence>().unwrap_err().to_string();
        assert!(e.contains("alpha"), "{e}");
    }

    #[test]
    fn serde_as_string() {
        let d: Divergence = serde_json::from_str("\"js:0.5\"").unwrap();
        assert_eq!(d, Divergence::JsG { alpha: 0.5 });
        assert_eq!(
            serde_json::to_string(&Divergence::KlMonteCarlo { samples: 4 }).unwrap(),
            "\"kl-mc:4\""
        );
        assert!(serde_json::from_str::<Divergence>("\"kl-mc:0\"").is_err());
    }
}
