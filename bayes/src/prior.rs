//! Priors over weights, as plain values.
//!
//! A [`Prior`] is chosen in a config (`prior = { kind = "gaussian", mean = 0.0, std = 1.0 }`) and
//! held by a layer; adding a prior never means editing a layer. Values are validated when they are
//! built (the constructors) and when they are deserialised, so an invalid prior cannot exist; the
//! error names the field.

use crate::error::ConfigError;
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// `½ log(2π)`.
pub(crate) const HALF_LN_2PI: f64 = 0.918_938_533_204_672_8;

/// A prior over each weight (independent across weights).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "UncheckedPrior", into = "UncheckedPrior")]
pub enum Prior {
    /// `p(w) = N(w; mean, std²)`.
    Gaussian {
        /// Mean.
        mean: f64,
        /// Standard deviation (> 0).
        std: f64,
    },
    /// Scale mixture of two zero-mean Gaussians (Blundell et al. 2015, "Weight uncertainty in
    /// neural networks"): `p(w) = π N(w; 0, σ₁²) + (1 − π) N(w; 0, σ₂²)`, typically σ₁ > σ₂ and
    /// σ₂ ≪ 1.
    ScaleMixture {
        /// Weight π of the first component, in (0, 1).
        pi: f64,
        /// σ₁ (> 0).
        std1: f64,
        /// σ₂ (> 0).
        std2: f64,
    },
    /// The improper log-uniform prior `p(|w|) ∝ 1/|w|` (Kingma et al. 2015; Molchanov et al.
    /// 2017). It has no normalised density; it is only used through the variational-dropout KL
    /// approximations, which are exact up to a constant for it.
    LogUniform,
    /// Spike-and-slab: `p(w) = (1 − π) δ₀(w) + π N(w; 0, slab_std²)`, π the prior inclusion
    /// probability (Mitchell & Beauchamp 1988; used per node by Jantre, Bhattacharya & Maiti 2021).
    /// The point mass has no density, so the divergence is taken on the inclusion variable and
    /// the slab separately by the layers that use it.
    SpikeAndSlab {
        /// Prior inclusion (slab) probability, in (0, 1].
        pi: f64,
        /// Slab standard deviation (> 0).
        slab_std: f64,
    },
}

impl Default for Prior {
    /// The standard normal `N(0, 1)`.
    fn default() -> Self {
        Prior::Gaussian { mean: 0.0, std: 1.0 }
    }
}

fn positive(what: &str, field: &'static str, v: f64) -> std::result::Result<(), ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(ConfigError::invalid(what, field, "finite and > 0", v))
    }
}

impl Prior {
    /// `N(mean, std²)`; refuses `std ≤ 0` and non-finite values.
    pub fn gaussian(mean: f64, std: f64) -> std::result::Result<Self, ConfigError> {
        Prior::Gaussian { mean, std }.validated()
    }

    /// `π N(0, σ₁²) + (1 − π) N(0, σ₂²)` (Blundell et al. 2015).
    pub fn scale_mixture(pi: f64, std1: f64, std2: f64) -> std::result::Result<Self, ConfigError> {
        Prior::ScaleMixture { pi, std1, std2 }.validated()
    }

    /// `(1 − π) δ₀ + π N(0, slab_std²)`.
    pub fn spike_and_slab(pi: f64, slab_std: f64) -> std::result::Result<Self, ConfigError> {
        Prior::SpikeAndSlab { pi, slab_std }.validated()
    }

    /// The config name of the prior's kind (`gaussian`, `scale-mixture`, `log-uniform`,
    /// `spike-and-slab`).
    pub fn kind(&self) -> &'static str {
        match self {
            Prior::Gaussian { .. } => "gaussian",
            Prior::ScaleMixture { .. } => "scale-mixture",
            Prior::LogUniform => "log-uniform",
            Prior::SpikeAndSlab { .. } => "spike-and-slab",
        }
    }

    /// Checks every field; the error names the prior and the field.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        let what = format!("prior {}", self.kind());
        match *self {
            Prior::Gaussian { mean, std } => {
                if !mean.is_finite() {
                    return Err(ConfigError::invalid(what, "mean", "finite", mean));
                }
                positive(&what, "std", std)
            }
            Prior::ScaleMixture { pi, std1, std2 } => {
                if !(pi > 0.0 && pi < 1.0) {
                    return Err(ConfigError::invalid(what, "pi", "in (0, 1)", pi));
                }
                positive(&what, "std1", std1)?;
                positive(&what, "std2", std2)
            }
            Prior::LogUniform => Ok(()),
            Prior::SpikeAndSlab { pi, slab_std } => {
                if !(pi > 0.0 && pi <= 1.0) {
                    return Err(ConfigError::invalid(what, "pi", "in (0, 1]", pi));
                }
                positive(&what, "slab_std", slab_std)
            }
        }
    }

    fn validated(self) -> std::result::Result<Self, ConfigError> {
        self.validate().map(|_| self)
    }

    /// `Some((mean, std))` for a Gaussian prior, the case with closed-form divergences.
    pub fn as_gaussian(&self) -> Option<(f64, f64)> {
        match *self {
            Prior::Gaussian { mean, std } => Some((mean, std)),
            _ => None,
        }
    }

    /// Whether [`Prior::log_density`] is defined (a proper prior with a Lebesgue density).
    pub fn has_density(&self) -> bool {
        matches!(self, Prior::Gaussian { .. } | Prior::ScaleMixture { .. })
    }

    /// The elementwise log-density `log p(w)` (same shape and dtype as `w`; differentiable).
    ///
    /// - Gaussian: `−½ log 2π − log σ − (w − m)² / (2σ²)`;
    /// - scale mixture: `log(π N(w; 0, σ₁²) + (1 − π) N(w; 0, σ₂²))`, by log-sum-exp;
    /// - log-uniform (improper) and spike-and-slab (point mass): not defined, an error.
    ///
    /// ```
    /// # use candle_core::{Tensor, Device};
    /// use secateur_bayes::prior::Prior;
    /// let w = Tensor::new(&[0f64, 1.0], &Device::Cpu).unwrap();
    /// let lp: Vec<f64> = Prior::default().log_density(&w).unwrap().to_vec1().unwrap();
    /// assert!((lp[1] - (-0.5 - 0.5 * (2.0 * std::f64::consts::PI).ln())).abs() < 1e-12);
    /// ```
    pub fn log_density(&self, w: &Tensor) -> Result<Tensor> {
        match *self {
            Prior::Gaussian { mean, std } => gaussian_log_density(w, mean, std),
            Prior::ScaleMixture { pi, std1, std2 } => {
                let a = (gaussian_log_density(w, 0.0, std1)? + pi.ln())?;
                let b = (gaussian_log_density(w, 0.0, std2)? + (1.0 - pi).ln())?;
                log_add_exp(&a, &b)
            }
            Prior::LogUniform | Prior::SpikeAndSlab { .. } => Err(ConfigError::Unsupported(format!(
                "prior {} has no log-density ({}); use it with the divergences defined for it",
                self.kind(),
                if matches!(self, Prior::LogUniform) {
                    "it is improper"
                } else {
                    "it has a point mass at zero"
                }
            ))
            .into()),
        }
    }
}

/// Elementwise `log N(w; mean, std²)`.
pub(crate) fn gaussian_log_density(w: &Tensor, mean: f64, std: f64) -> Result<Tensor> {
    w.affine(1.0 / std, -mean / std)?
        .sqr()?
        .affine(-0.5, -HALF_LN_2PI - std.ln())
}

/// Elementwise `log(eᵃ + eᵇ) = max(a, b) + log(1 + e^{−|a − b|})`.
pub(crate) fn log_add_exp(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let m = a.maximum(b)?;
    let d = (a - b)?.abs()?.neg()?.exp()?;
    m + (d + 1.0)?.log()?
}

impl std::fmt::Display for Prior {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Prior::Gaussian { mean, std } => write!(f, "gaussian(mean={mean}, std={std})"),
            Prior::ScaleMixture { pi, std1, std2 } => {
                write!(f, "scale-mixture(pi={pi}, std1={std1}, std2={std2})")
            }
            Prior::LogUniform => write!(f, "log-uniform"),
            Prior::SpikeAndSlab { pi, slab_std } => write!(f, "spike-and-slab(pi={pi}, slab_std={slab_std})"),
        }
    }
}

/// The serialised form (`kind = "…"` plus the fields), checked on the way in.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
enum UncheckedPrior {
    Gaussian { mean: f64, std: f64 },
    ScaleMixture { pi: f64, std1: f64, std2: f64 },
    LogUniform,
    SpikeAndSlab { pi: f64, slab_std: f64 },
}

impl TryFrom<UncheckedPrior> for Prior {
    type Error = ConfigError;
    fn try_from(u: UncheckedPrior) -> std::result::Result<Self, ConfigError> {
        match u {
            UncheckedPrior::Gaussian { mean, std } => Prior::Gaussian { mean, std },
            UncheckedPrior::ScaleMixture { pi, std1, std2 } => Prior::ScaleMixture { pi, std1, std2 },
            UncheckedPrior::LogUniform => Prior::LogUniform,
            UncheckedPrior::SpikeAndSlab { pi, slab_std } => Prior::SpikeAndSlab { pi, slab_std },
        }
        .validated()
    }
}

impl From<Prior> for UncheckedPrior {
    fn from(p: Prior) -> Self {
        match p {
            Prior::Gaussian { mean, std } => UncheckedPrior::Gaussian { mean, std },
            Prior::ScaleMixture { pi, std1, std2 } => UncheckedPrior::ScaleMixture { pi, std1, std2 },
            Prior::LogUniform => UncheckedPrior::LogUniform,
            Prior::SpikeAndSlab { pi, slab_std } => UncheckedPrior::SpikeAndSlab { pi, slab_std },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn constructors_refuse_bad_fields_and_name_them() {
        let e = Prior::gaussian(0.0, 0.0).unwrap_err().to_string();
        assert!(e.contains("`std`") && e.contains("gaussian"), "{e}");
        assert!(Prior::gaussian(f64::NAN, 1.0).is_err());
        let e = Prior::scale_mixture(1.0, 1.0, 0.1).unwrap_err().to_string();
        assert!(e.contains("`pi`"), "{e}");
        assert!(Prior::scale_mixture(0.5, 1.0, -0.1)
            .unwrap_err()
            .to_string()
            .contains("`std2`"));
        assert!(Prior::spike_and_slab(0.0, 1.0).is_err());
        assert!(Prior::spike_and_slab(1.0, 1.0).is_ok());
    }

    #[test]
    fn serde_round_trip_and_validation_on_deserialise() {
        for p in [
            Prior::default(),
            Prior::scale_mixture(0.25, 1.0, 0.002).unwrap(),
            Prior::LogUniform,
            Prior::spike_and_slab(0.3, 2.0).unwrap(),
        ] {
            let s = serde_json::to_string(&p).unwrap();
            let back: Prior = serde_json::from_str(&s).unwrap();
            assert_eq!(p, back, "{s}");
        }
        let s = r#"{"kind":"gaussian","mean":0.0,"std":-1.0}"#;
        let e = serde_json::from_str::<Prior>(s).unwrap_err().to_string();
        assert!(e.contains("`std`"), "{e}");
        assert!(serde_json::from_str::<Prior>(r#"{"kind":"cauchy"}"#).is_err());
        assert!(serde_json::from_str::<Prior>(r#"{"kind":"gaussian","mean":0.0,"std":1.0,"x":1}"#).is_err());
    }

    #[test]
    fn scale_mixture_density_matches_direct_formula() -> Result<()> {
        let (pi, s1, s2) = (0.3, 1.5, 0.01);
        let ws = [-3.0, -0.02, 0.0, 0.005, 0.7, 40.0];
        let lp = Prior::scale_mixture(pi, s1, s2)
            .unwrap()
            .log_density(&Tensor::new(&ws, &Device::Cpu)?)?
            .to_vec1::<f64>()?;
        let n = |w: f64, s: f64| (-0.5 * (w / s).powi(2)).exp() / (s * (2.0 * std::f64::consts::PI).sqrt());
        for (w, l) in ws.iter().zip(lp) {
            let direct = (pi * n(*w, s1) + (1.0 - pi) * n(*w, s2)).ln();
            assert!(
                (l - direct).abs() < 1e-10 * direct.abs().max(1.0),
                "w={w}: {l} vs {direct}"
            );
        }
        assert!(Prior::LogUniform.log_density(&Tensor::new(&ws, &Device::Cpu)?).is_err());
        Ok(())
    }
}
