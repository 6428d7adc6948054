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
//! The methods and their defaults are those of `secateur_pruning::learned`.

use secateur_pruning::learned::scl::SclConfig;
use serde::{Deserialize, Serialize};

/// The learned-pruning methods, by config name.
pub const METHODS: &[&str] = &["scl"];

/// `[pruning]`: which learned-pruning method trains the network, and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PruningConfig {
    /// `""` (off, the default) or `scl` (sparse connection learning, Tang et al. 2022).
    pub method: String,
    /// `[pruning.scl]`: sparse connection learning.
    pub scl: SclSection,
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
    }
}
