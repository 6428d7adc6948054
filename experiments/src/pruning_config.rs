//! The `[pruning]` section of a config: pruning learned during training (off unless
//! `pruning.method` is set). Written into a run's config only when set.
//!
//! ```toml
//! [pruning]
//! method = "scl"
//!
//! [pruning.scl]
//! mask_init = 1.0   # m₀ > 0, every mask variable's start
//! mask_lr = 0.01    # η_m > 0, step size of the mask variables
//! lambda = 0.2      # λ ≥ 0, weight of the connection count (normalised-gradient units)
//! ```
//!
//! or
//!
//! ```toml
//! [pruning]
//! method = "dcff"
//!
//! [pruning.dcff]
//! rate = 0.5        # fraction of each pruned layer's filters fused away, in [0, 1)
//! t_start = 1.0     # temperature of the first epoch
//! t_end = 1e4       # temperature at the end
//! k = 1.0           # growth rate per epoch
//! ```
//!
//! or
//!
//! ```toml
//! [pruning]
//! method = "cap"
//!
//! [pruning.cap]
//! lambda = 0.2      # weight of the polarisation regulariser
//! t = 1.2           # how hard importances are pushed down (≥ 1)
//! threshold = 0.5   # channels of smaller importance are cut after training
//! gate_init = 3.0   # masks start at σ(gate_init)
//! ```
//!
//! The methods and their defaults are those of `secateur_pruning::learned`.

use secateur_pruning::learned::cap::CapConfig;
use secateur_pruning::learned::dcff::Temperature;
use secateur_pruning::learned::scl::SclConfig;
use serde::{Deserialize, Serialize};

/// The learned-pruning methods, by config name.
pub const METHODS: &[&str] = &["scl", "dcff", "cap"];

/// `[pruning]`: which learned-pruning method trains the network, and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PruningConfig {
    /// `""` (off, the default), `scl` (sparse connection learning, Tang et al. 2022), `dcff`
    /// (dynamic-coded filter fusion, Lin et al. 2023) or `cap` (instance-complexity-aware
    /// pruning, Wang, Ma & Yu 2022).
    pub method: String,
    /// `[pruning.scl]`: sparse connection learning.
    pub scl: SclSection,
    /// `[pruning.dcff]`: dynamic-coded filter fusion.
    pub dcff: DcffSection,
    /// `[pruning.cap]`: instance-complexity-aware pruning.
    pub cap: CapSection,
}

/// `[pruning.cap]` (see `secateur_pruning::learned::cap`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapSection {
    /// Weight of the polarisation regulariser (≥ 0). Default 0.2.
    pub lambda: f64,
    /// Zhuang et al.'s t (≥ 1). Default 1.2.
    pub t: f64,
    /// Channels of importance below it are cut after training, in (0, 1). Default 0.5.
    pub threshold: f64,
    /// Initial gate bias; the masks start at σ(gate_init). Default 3.
    pub gate_init: f64,
}

impl Default for CapSection {
    fn default() -> Self {
        let d = CapConfig::default();
        Self {
            lambda: d.lambda,
            t: d.t,
            threshold: d.threshold,
            gate_init: d.gate_init,
        }
    }
}

impl CapSection {
    /// The settings as the library takes them.
    pub fn config(&self) -> CapConfig {
        CapConfig {
            lambda: self.lambda,
            t: self.t,
            threshold: self.threshold,
            gate_init: self.gate_init,
        }
    }
}

/// `[pruning.dcff]` (see `secateur_pruning::learned::dcff`; defaults of the reference code but
/// the rate, which it sets per layer).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DcffSection {
    /// Fraction `r` of each pruned layer's filters fused away (`m = ⌊C (1 − r)⌋`, at least 1),
    /// in `[0, 1)`. Default 0.5.
    pub rate: f64,
    /// Temperature of the first epoch (> 0). Default 1.
    pub t_start: f64,
    /// Temperature at the end (≥ `t_start`). Default 1e4.
    pub t_end: f64,
    /// Growth rate per epoch (> 0). Default 1.
    pub k: f64,
}

impl Default for DcffSection {
    fn default() -> Self {
        Self {
            rate: 0.5,
            t_start: 1.0,
            t_end: 1e4,
            k: 1.0,
        }
    }
}

impl DcffSection {
    /// The temperature schedule over `epochs` epochs.
    pub fn temperature(&self, epochs: usize) -> Temperature {
        Temperature {
            start: self.t_start,
            end: self.t_end,
            k: self.k,
            epochs,
        }
    }

    /// The fused filters of a layer of `c`: `⌊c (1 − r)⌋ = c − ⌈c r⌉`, at least 1 (computed as
    /// `c − ⌈c r − 10⁻⁹⌉`, so that `20 · (1 − 0.9)` is 2, not the 1 that `0.09999999999999998`
    /// would floor to).
    pub fn kept(&self, c: usize) -> usize {
        let removed = ((c as f64 * self.rate - 1e-9).ceil().max(0.0) as usize).min(c);
        (c - removed).clamp(1, c.max(1))
    }
}

/// `[pruning.scl]` (see `secateur_pruning::learned::scl`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SclSection {
    /// Initial value of every mask variable (> 0). Default 1.
    pub mask_init: f64,
    /// Step size of the mask variables (> 0). Default 0.01.
    pub mask_lr: f64,
    /// Weight of the connection count (≥ 0), in units of the normalised mask gradient. Default 0.2.
    pub lambda: f64,
}

impl Default for SclSection {
    fn default() -> Self {
        let d = SclConfig::default();
        Self {
            mask_init: d.mask_init,
            mask_lr: d.mask_lr,
            lambda: d.lambda,
        }
    }
}

impl SclSection {
    /// The settings as the library takes them.
    pub fn config(&self) -> SclConfig {
        SclConfig {
            mask_init: self.mask_init,
            mask_lr: self.mask_lr,
            lambda: self.lambda,
        }
    }
}

impl PruningConfig {
    /// Whether no learned-pruning method is set (the section is then left out of a run's config).
    pub fn is_off(&self) -> bool {
        self.method.is_empty()
    }

    /// Whether SCL trains the network.
    pub fn is_scl(&self) -> bool {
        self.method == "scl"
    }

    /// Whether DCFF trains the network.
    pub fn is_dcff(&self) -> bool {
        self.method == "dcff"
    }

    /// Whether CAP trains the network.
    pub fn is_cap(&self) -> bool {
        self.method == "cap"
    }

    /// Refuses an unknown method and impossible settings; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.is_off() {
            return Ok(());
        }
        if !METHODS.contains(&self.method.as_str()) {
            return Err(format!(
                "pruning.method `{}` is unknown; known: {}",
                self.method,
                METHODS.join(", ")
            ));
        }
        if self.is_scl() {
            self.scl.config().validate().map_err(|e| format!("pruning.{e}"))?;
        }
        if self.is_dcff() {
            if !(0.0..1.0).contains(&self.dcff.rate) {
                return Err(format!("pruning.dcff.rate must be in [0, 1), got {}", self.dcff.rate));
            }
            self.dcff
                .temperature(1)
                .validate()
                .map_err(|e| format!("pruning.{e}"))?;
        }
        if self.is_cap() {
            self.cap.config().validate().map_err(|e| format!("pruning.{e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unknown_methods_and_bad_values() {
        assert!(PruningConfig::default().validate().is_ok());
        let mut p = PruningConfig {
            method: "lottery".into(),
            ..Default::default()
        };
        assert!(p.validate().unwrap_err().contains("pruning.method `lottery`"));
        p.method = "scl".into();
        assert!(p.validate().is_ok());
        p.scl.mask_lr = f64::NAN;
        assert!(p.validate().unwrap_err().contains("mask_lr"));
        p.method = "dcff".into();
        assert!(p.validate().is_ok(), "the scl section is not read for dcff");
        p.dcff.rate = 1.0;
        assert!(p.validate().unwrap_err().contains("pruning.dcff.rate"));
        p.dcff.rate = 0.5;
        p.dcff.t_end = 0.5;
        assert!(p.validate().unwrap_err().contains("t_end"));
        assert_eq!(
            (DcffSection::default().kept(16), DcffSection::default().kept(1)),
            (8, 1)
        );
        // ⌊C (1 − r)⌋ without the rounding of 1 − r: e.g. 1 − 0.9 = 0.09999999999999998
        for (rate, c, kept) in [
            (0.9, 20, 2),
            (0.8, 10, 2),
            (0.8, 100, 20),
            (0.9, 50, 5),
            (0.55, 100, 45),
            (0.0, 7, 7),
        ] {
            let d = DcffSection {
                rate,
                ..Default::default()
            };
            assert_eq!(d.kept(c), kept, "rate {rate}, {c} filters");
        }
        p.method = "cap".into();
        assert!(p.validate().is_ok());
        p.cap.threshold = 1.0;
        assert!(p.validate().unwrap_err().contains("threshold"));
        p.cap.threshold = 0.5;
        p.cap.t = 0.5;
        assert!(p.validate().unwrap_err().contains("cap t"));
    }
}
