//! The `[posterior]` section of a study config: a posterior over the trained network that is not
//! a layer kind (SWA, SWAG, Laplace, a deep ensemble), collected or fitted by `secateur train`
//! and used for prediction by `train` and `eval`.
//!
//! ```toml
//! [posterior]
//! kind = "swag"          # none (default) | swa | swag-diag | swag | laplace | ensemble
//! samples = 30           # draws of the Bayesian model average (not swa, not ensemble)
//! start_epoch = 6        # swa/swag: collect after this many epochs (default: half the epochs)
//! collect_every = 1      # swa/swag: every c epochs (or steps, with every = "steps")
//! max_rank = 20          # swag: K deviation columns
//! scale = 0.5            # swag: sampling scale
//! ```
//!
//! ```toml
//! [posterior]
//! kind = "laplace"
//! subset = "last-layer"      # or "all" (diagonal over every weight)
//! hessian = "kron"           # last-layer: full | kron; all: ggn | ef
//! prior_precision = "marglik" # marglik | val-nll | a positive number
//! predictive = "probit"      # probit on the linearised logits | mc (sampled networks)
//! ```
//!
//! ```toml
//! [posterior]
//! kind = "svgd"          # SVGD particles trained together (Liu & Wang 2016)
//! members = 5            # particles
//! kernel = "rbf"         # rbf (median heuristic) | none (independent particles)
//! step = 1e-3            # AdaGrad step
//! prior_std = 1.0        # σ₀ of N(0, σ₀² I)
//! ```
//!
//! Every option belongs to some kinds; an option given to a kind it does not belong to is
//! refused, naming it and the kinds it belongs to. Options left out take the defaults above
//! (laplace-torch's defaults for Laplace: last-layer, Kronecker-factored, marginal likelihood,
//! probit; Daxberger et al. 2021).

use serde::{Deserialize, Serialize};

/// The `[posterior]` section (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PosteriorConfig {
    /// `none` (default), `swa`, `swag-diag`, `swag`, `laplace`, `ensemble` or `svgd`.
    pub kind: String,
    /// Draws S of the Bayesian model average (SWAG, SWAG-diagonal, Laplace with the MC
    /// predictive). Default 30 (Maddox et al. 2019).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    /// SWA/SWAG: collection starts after this many epochs. Default `train.epochs / 2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_epoch: Option<usize>,
    /// SWA/SWAG: collect every c epochs (or steps). Default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collect_every: Option<usize>,
    /// SWA/SWAG: `epochs` (default) or `steps`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// SWAG: deviation columns K. Default 20.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rank: Option<usize>,
    /// SWAG: sampling scale s. Default 0.5.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    /// SWA/SWAG: recompute batch-norm statistics on training data for every sample. Default true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_batch_norm: Option<bool>,
    /// Laplace: `last-layer` (default) or `all`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Laplace: `full` or `kron` (last-layer; default `kron`), `ggn` or `ef` (all; default `ggn`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hessian: Option<String>,
    /// Laplace: `marglik` (default), `val-nll` (needs `data.val_fraction > 0`) or a positive
    /// number, the prior precision λ itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prior_precision: Option<String>,
    /// Laplace: `probit`, the probit approximation on the logits linearised at the MAP
    /// (laplace-torch's GLM predictive; the default for `last-layer`), or `mc`, the average over
    /// `samples` sampled networks (the default for `all`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predictive: Option<String>,
    /// Ensemble: number of members M; SVGD: number of particles. Default 5 (Lakshminarayanan
    /// et al. 2017).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<usize>,
    /// SVGD: `rbf` (default; the median-heuristic RBF kernel) or `none` (independent particles).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// SVGD: the AdaGrad step. Default 1e-3 (the reference code's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<f64>,
    /// SVGD: σ₀ of the Gaussian prior `N(0, σ₀² I)` over every trainable parameter. Default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prior_std: Option<f64>,
}

impl Default for PosteriorConfig {
    fn default() -> Self {
        Self {
            kind: "none".into(),
            samples: None,
            start_epoch: None,
            collect_every: None,
            every: None,
            max_rank: None,
            scale: None,
            refresh_batch_norm: None,
            subset: None,
            hessian: None,
            prior_precision: None,
            predictive: None,
            members: None,
            kernel: None,
            step: None,
            prior_std: None,
        }
    }
}

/// The kinds `[posterior] kind` accepts.
pub const POSTERIOR_KINDS: [&str; 7] = ["none", "swa", "swag-diag", "swag", "laplace", "ensemble", "svgd"];

const SWAG_KINDS: &[&str] = &["swa", "swag-diag", "swag"];

/// How the prior precision of a Laplace approximation is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PriorPrecision {
    /// Maximise the Laplace marginal likelihood (MacKay 1992; Immer et al. 2021).
    MargLik,
    /// Minimise the validation NLL over a grid.
    ValNll,
    /// This λ.
    Fixed(f64),
}

impl PosteriorConfig {
    /// Whether a posterior is used at all.
    pub fn is_none(&self) -> bool {
        self.kind == "none"
    }

    /// Whether the kind is collected along the training trajectory (SWA, SWAG-diagonal, SWAG).
    pub fn is_swag(&self) -> bool {
        SWAG_KINDS.contains(&self.kind.as_str())
    }

    /// Draws of the model average (default 30).
    pub fn samples(&self) -> usize {
        self.samples.unwrap_or(30)
    }

    /// Members of an ensemble (default 5).
    pub fn members(&self) -> usize {
        self.members.unwrap_or(5)
    }

    /// SVGD: the kernel's name (default `rbf`).
    pub fn kernel(&self) -> &str {
        self.kernel.as_deref().unwrap_or("rbf")
    }

    /// SVGD: the AdaGrad step (default 1e-3).
    pub fn step(&self) -> f64 {
        self.step.unwrap_or(1e-3)
    }

    /// SVGD: the prior's σ₀ (default 1).
    pub fn prior_std(&self) -> f64 {
        self.prior_std.unwrap_or(1.0)
    }

    /// Laplace: whether the approximation covers the last layer only (the default).
    pub fn last_layer(&self) -> bool {
        self.subset.as_deref().unwrap_or("last-layer") == "last-layer"
    }

    /// Laplace: the curvature's name, defaulted by subset.
    pub fn hessian(&self) -> &str {
        match (&self.hessian, self.last_layer()) {
            (Some(h), _) => h,
            (None, true) => "kron",
            (None, false) => "ggn",
        }
    }

    /// Laplace: the predictive's name, defaulted by subset.
    pub fn predictive(&self) -> &str {
        match (&self.predictive, self.last_layer()) {
            (Some(p), _) => p,
            (None, true) => "probit",
            (None, false) => "mc",
        }
    }

    /// Laplace: how the prior precision is chosen.
    pub fn prior_precision(&self) -> std::result::Result<PriorPrecision, String> {
        match self.prior_precision.as_deref().unwrap_or("marglik") {
            "marglik" => Ok(PriorPrecision::MargLik),
            "val-nll" => Ok(PriorPrecision::ValNll),
            s => match s.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => Ok(PriorPrecision::Fixed(v)),
                _ => Err(format!(
                    "posterior.prior_precision must be `marglik`, `val-nll` or a positive number, got `{s}`"
                )),
            },
        }
    }

    /// The SWAG settings, with `epochs` the run's epoch count (for the default start).
    pub fn swag(&self, epochs: usize) -> std::result::Result<secateur_inference::swag::SwagConfig, String> {
        use secateur_inference::swag::{CollectEvery, SwagConfig};
        let every = match self.every.as_deref().unwrap_or("epochs") {
            "epochs" => CollectEvery::Epochs,
            "steps" => CollectEvery::Steps,
            e => return Err(format!("posterior.every must be `epochs` or `steps`, got `{e}`")),
        };
        let c = SwagConfig {
            start_epoch: self.start_epoch.unwrap_or(epochs / 2),
            collect_every: self.collect_every.unwrap_or(1),
            every,
            max_rank: self.max_rank.unwrap_or(20),
            scale: self.scale.unwrap_or(0.5),
        };
        c.validate().map_err(|e| e.to_string())?;
        if c.start_epoch >= epochs {
            return Err(format!(
                "posterior.start_epoch ({}) must be below train.epochs ({epochs}): nothing would be collected",
                c.start_epoch
            ));
        }
        Ok(c)
    }

    /// Refuses unknown kinds and names, options of other kinds, and impossible values; the
    /// message names the field. `epochs` is `train.epochs`, `has_val` whether a validation split
    /// exists.
    pub fn validate(&self, epochs: usize, has_val: bool) -> std::result::Result<(), String> {
        if !POSTERIOR_KINDS.contains(&self.kind.as_str()) {
            return Err(format!(
                "posterior.kind `{}` is unknown; known: {}",
                self.kind,
                POSTERIOR_KINDS.join(", ")
            ));
        }
        let owners: [(&str, bool, &[&str]); 15] = [
            ("samples", self.samples.is_some(), &["swag-diag", "swag", "laplace"]),
            ("start_epoch", self.start_epoch.is_some(), SWAG_KINDS),
            ("collect_every", self.collect_every.is_some(), SWAG_KINDS),
            ("every", self.every.is_some(), SWAG_KINDS),
            ("max_rank", self.max_rank.is_some(), &["swag"]),
            ("scale", self.scale.is_some(), &["swag"]),
            ("refresh_batch_norm", self.refresh_batch_norm.is_some(), SWAG_KINDS),
            ("subset", self.subset.is_some(), &["laplace"]),
            ("hessian", self.hessian.is_some(), &["laplace"]),
            ("prior_precision", self.prior_precision.is_some(), &["laplace"]),
            ("predictive", self.predictive.is_some(), &["laplace"]),
            ("members", self.members.is_some(), &["ensemble", "svgd"]),
            ("kernel", self.kernel.is_some(), &["svgd"]),
            ("step", self.step.is_some(), &["svgd"]),
            ("prior_std", self.prior_std.is_some(), &["svgd"]),
        ];
        for (field, given, kinds) in owners {
            if given && !kinds.contains(&self.kind.as_str()) {
                return Err(format!(
                    "posterior.{field} is an option of kind {}, not of `{}`",
                    kinds.join(" / "),
                    self.kind
                ));
            }
        }
        if self.samples == Some(0) {
            return Err("posterior.samples must be at least 1".into());
        }
        if self.members.is_some_and(|m| m < 2) {
            return Err("posterior.members must be at least 2".into());
        }
        if self.is_swag() {
            self.swag(epochs)?;
        }
        if self.kind == "svgd" {
            if !["rbf", "none"].contains(&self.kernel()) {
                return Err(format!(
                    "posterior.kernel must be `rbf` or `none`, got `{}`",
                    self.kernel()
                ));
            }
            for (field, v) in [("step", self.step()), ("prior_std", self.prior_std())] {
                if !(v.is_finite() && v > 0.0) {
                    return Err(format!("posterior.{field} must be finite and > 0, got {v}"));
                }
            }
        }
        if self.kind == "laplace" {
            match self.subset.as_deref().unwrap_or("last-layer") {
                "last-layer" | "all" => {}
                s => return Err(format!("posterior.subset must be `last-layer` or `all`, got `{s}`")),
            }
            let ok: &[&str] = if self.last_layer() {
                &["full", "kron"]
            } else {
                &["ggn", "ef"]
            };
            if !ok.contains(&self.hessian()) {
                return Err(format!(
                    "posterior.hessian `{}` does not apply to subset `{}`; known: {}",
                    self.hessian(),
                    self.subset.as_deref().unwrap_or("last-layer"),
                    ok.join(", ")
                ));
            }
            match self.predictive() {
                "mc" | "probit" => {}
                p => return Err(format!("posterior.predictive must be `probit` or `mc`, got `{p}`")),
            }
            if self.prior_precision()? == PriorPrecision::ValNll && !has_val {
                return Err(
                    "posterior.prior_precision = \"val-nll\" needs a validation split (data.val_fraction > 0)".into(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<PosteriorConfig, String> {
        let c: PosteriorConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate(10, false)?;
        Ok(c)
    }

    #[test]
    fn options_are_validated_by_name_and_kind() {
        assert!(parse("").unwrap().is_none());
        let c = parse("kind = \"swag\"\nmax_rank = 10").unwrap();
        assert_eq!(c.swag(10).unwrap().start_epoch, 5);
        assert_eq!(c.swag(10).unwrap().max_rank, 10);
        let e = parse("kind = \"laplace\"\nmax_rank = 10").unwrap_err();
        assert!(
            e.contains("posterior.max_rank") && e.contains("not of `laplace`"),
            "{e}"
        );
        let e = parse("kind = \"swagg\"").unwrap_err();
        assert!(e.contains("posterior.kind `swagg`"), "{e}");
        let e = parse("kind = \"swag\"\nmax_rnak = 3").unwrap_err();
        assert!(e.contains("max_rnak"), "{e}");
        let e = parse("kind = \"swag\"\nstart_epoch = 10").unwrap_err();
        assert!(e.contains("start_epoch"), "{e}");
        let e = parse("kind = \"laplace\"\nsubset = \"all\"\nhessian = \"kron\"").unwrap_err();
        assert!(e.contains("posterior.hessian `kron`"), "{e}");
        let c = parse("kind = \"laplace\"\nsubset = \"all\"\npredictive = \"probit\"").unwrap();
        assert_eq!((c.hessian(), c.predictive()), ("ggn", "probit"));
        let e = parse("kind = \"laplace\"\npredictive = \"glm\"").unwrap_err();
        assert!(e.contains("posterior.predictive"), "{e}");
        let e = parse("kind = \"laplace\"\nprior_precision = \"-1\"").unwrap_err();
        assert!(e.contains("prior_precision"), "{e}");
        let e = parse("kind = \"laplace\"\nprior_precision = \"val-nll\"").unwrap_err();
        assert!(e.contains("val_fraction"), "{e}");
        let c = parse("kind = \"laplace\"\nprior_precision = \"2.5\"").unwrap();
        assert_eq!(c.prior_precision().unwrap(), PriorPrecision::Fixed(2.5));
        assert_eq!((c.hessian(), c.predictive()), ("kron", "probit"));
        let e = parse("kind = \"ensemble\"\nmembers = 1").unwrap_err();
        assert!(e.contains("posterior.members"), "{e}");
        let c = parse("kind = \"svgd\"\nmembers = 4\nkernel = \"none\"").unwrap();
        assert_eq!(
            (c.members(), c.kernel(), c.step(), c.prior_std()),
            (4, "none", 1e-3, 1.0)
        );
        let e = parse("kind = \"svgd\"\nkernel = \"imq\"").unwrap_err();
        assert!(e.contains("posterior.kernel"), "{e}");
        let e = parse("kind = \"svgd\"\nstep = 0.0").unwrap_err();
        assert!(e.contains("posterior.step"), "{e}");
        let e = parse("kind = \"ensemble\"\nkernel = \"rbf\"").unwrap_err();
        assert!(e.contains("posterior.kernel") && e.contains("not of `ensemble`"), "{e}");
    }
}
