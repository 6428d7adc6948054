//! The report of regression runs (Gaussian likelihood on the UCI tables): how well each run's
//! predictive distribution is calibrated, on the run's own test rows in the target's original
//! units.
//!
//! Per run, from its predictive ([`predict_run`]: the `[posterior]`, Monte Carlo over the
//! weights, or one pass), a mixture `(1/S) Σₛ N(μₛ, σₛ²)` per test target:
//!
//! - RMSE of the predictive mean, NLL of the moment-matched Gaussian `N(μ̄, σ̄²)` and of the
//!   mixture;
//! - the CRPS of the mixture (Gneiting & Raftery 2007, eq. (20); the closed form of the Gaussian
//!   for one sample), mean over test targets, in the target's units;
//! - the calibration curve of central intervals: the fraction of targets inside
//!   `μ̄ ± Φ⁻¹((1 + ℓ)/2) σ̄` at the levels `ℓ` of [`DEFAULT_COVERAGE_LEVELS`], and the mean width
//!   of those intervals (sharpness; Kuleshov et al. 2018 draw the same curve);
//! - the probability integral transform `Φ((y − μ̄)/σ̄)`, uniform for a calibrated predictive.
//!
//! Figures: the calibration curve against the diagonal, the widths against the level, and the
//! PIT histograms. Arrays per run: `mean`, `std` (of the moment-matched Gaussian), `aleatoric_var`,
//! `epistemic_var` and `targets`.

use super::document::Block;
use super::figures::{histogram_steps, panels_png, Line, Panel};
use crate::commands::regression::predict_run;
use crate::error::Result;
use candle_core::{Device, Tensor};
use secateur_inference::metrics::{regression_metrics, RegressionMetrics};
use secateur_inference::predict::RegressionPredictions;
use secateur_inference::regression_calibration::{
    crps_mixture, interval_coverage, normal_cdf, IntervalCoverage, DEFAULT_COVERAGE_LEVELS,
};
use std::path::{Path, PathBuf};

/// Everything the report measured of one regression run.
#[derive(Debug, Clone)]
pub struct RegressionResult {
    /// The run's name in the report.
    pub label: String,
    /// The run directory.
    pub path: PathBuf,
    /// Architecture, layers, noise and posterior, for the table.
    pub description: String,
    /// The run's predictive on its test rows (original units).
    pub predictions: RegressionPredictions,
    /// RMSE, NLL, 95% coverage and the variance decomposition.
    pub metrics: RegressionMetrics,
    /// Mean CRPS of the mixture predictive.
    pub crps: f64,
    /// Coverage and mean width at each level of [`DEFAULT_COVERAGE_LEVELS`].
    pub coverage: Vec<IntervalCoverage>,
    /// Per test target, the moment-matched mean, standard deviation, PIT and target.
    pub per_target: PerTarget,
}

/// Per test target (examples × dimensions, flattened), the moment-matched Gaussian predictive
/// and the probability integral transform.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PerTarget {
    /// `μ̄`.
    pub mean: Vec<f64>,
    /// `σ̄ = √(aleatoric + epistemic)`.
    pub std: Vec<f64>,
    /// Aleatoric variance `(1/S) Σₛ σₛ²`.
    pub aleatoric: Vec<f64>,
    /// Epistemic variance `(1/S) Σₛ μₛ² − μ̄²`.
    pub epistemic: Vec<f64>,
    /// `Φ((y − μ̄)/σ̄)`.
    pub pit: Vec<f64>,
    /// `y`.
    pub targets: Vec<f64>,
}

impl PerTarget {
    /// The per-target arrays under the names the report writes them (`arrays/<run>.safetensors`
    /// and `results.h5`): `mean`, `std`, `aleatoric_var`, `epistemic_var`, `pit`, `targets`.
    pub fn columns(&self) -> [(&'static str, &Vec<f64>); 6] {
        [
            ("mean", &self.mean),
            ("std", &self.std),
            ("aleatoric_var", &self.aleatoric),
            ("epistemic_var", &self.epistemic),
            ("pit", &self.pit),
            ("targets", &self.targets),
        ]
    }
}

/// Measures one regression run (see the [module documentation](self)).
pub fn measure(label: &str, path: &Path, data_dir: Option<&Path>, device: &str) -> Result<RegressionResult> {
    let (predictions, cfg) = predict_run(path, data_dir, device)?;
    let metrics = regression_metrics(&predictions)?;
    let (n, dim) = (predictions.len(), predictions.dim.max(1));
    let mut t = PerTarget::default();
    let mut crps = 0.0;
    for i in 0..n {
        for d in 0..dim {
            let m = predictions.moments(i, d);
            let (mu, sigma) = predictions.samples_of(i, d);
            let y = f64::from(predictions.targets[i * dim + d]);
            let sd = (m.aleatoric + m.epistemic).sqrt();
            crps += crps_mixture(y, &mu, &sigma);
            t.pit.push(normal_cdf((y - m.mean) / sd));
            t.mean.push(m.mean);
            t.std.push(sd);
            t.aleatoric.push(m.aleatoric);
            t.epistemic.push(m.epistemic);
            t.targets.push(y);
        }
    }
    let coverage = interval_coverage(&t.mean, &t.std, &t.targets, &DEFAULT_COVERAGE_LEVELS)?;
    let posterior = if cfg.posterior.kind.is_empty() || cfg.posterior.kind == "none" {
        String::new()
    } else {
        format!(", posterior {}", cfg.posterior.kind)
    };
    Ok(RegressionResult {
        label: label.to_string(),
        path: path.to_path_buf(),
        description: format!(
            "{} ({} layers, {} noise{posterior}), seed {}",
            cfg.model.arch, cfg.model.layers, cfg.likelihood.noise, cfg.seed
        ),
        metrics,
        crps: crps / t.targets.len().max(1) as f64,
        coverage,
        per_target: t,
        predictions,
    })
}

fn f4(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "—".into()
    }
}

/// The coverage of `r` at `level` (one of [`DEFAULT_COVERAGE_LEVELS`]).
fn at(r: &RegressionResult, level: f64) -> Option<&IntervalCoverage> {
    r.coverage.iter().find(|c| (c.level - level).abs() < 1e-12)
}

/// The report's blocks: tables and figures.
pub fn blocks(data: &str, results: &[RegressionResult]) -> Result<Vec<Block>> {
    let mut b = vec![
        Block::Heading(1, format!("Predictive calibration on {data}")),
        Block::Paragraph(format!(
            "{} regression runs compared on the test rows of {data}, in the target's original units. Each run predicts with its own predictive (its posterior, Monte Carlo over its weight distribution, or one pass): per target a mixture of Gaussians, summarised by its mean μ̄ and standard deviation σ̄.",
            results.len()
        )),
        Block::Heading(2, "Runs".into()),
        Block::Table(
            ["run", "model", "draws", "directory"].map(String::from).to_vec(),
            results
                .iter()
                .map(|r| {
                    vec![
                        r.label.clone(),
                        r.description.clone(),
                        r.predictions.samples.to_string(),
                        r.path.display().to_string(),
                    ]
                })
                .collect(),
        ),
        Block::Heading(2, "Accuracy and calibration".into()),
        Block::Paragraph("NLL: of the moment-matched Gaussian N(μ̄, σ̄²) and of the mixture itself, per target in nats. CRPS: of the mixture (Gneiting & Raftery 2007), in the target's units. Coverage: the fraction of targets inside the central interval μ̄ ± z σ̄ of that level (equal to the level when calibrated); width: its mean width.".into()),
        Block::Table(
            [
                "run", "RMSE", "NLL", "mixture NLL", "CRPS", "coverage 50%", "coverage 90%", "coverage 95%", "width 95%",
                "mean σ̄", "aleatoric var", "epistemic var",
            ]
            .map(String::from)
            .to_vec(),
            results
                .iter()
                .map(|r| {
                    let m = &r.metrics;
                    let c = |l: f64| at(r, l).map_or(f64::NAN, |c| c.coverage);
                    vec![
                        r.label.clone(),
                        f4(m.rmse),
                        f4(m.nll),
                        f4(m.mixture_nll),
                        f4(r.crps),
                        f4(c(0.5)),
                        f4(c(0.9)),
                        f4(c(0.95)),
                        f4(at(r, 0.95).map_or(f64::NAN, |c| c.mean_width)),
                        f4(m.mean_predictive_std),
                        f4(m.mean_aleatoric_var),
                        f4(m.mean_epistemic_var),
                    ]
                })
                .collect(),
        ),
        Block::Heading(2, "Calibration curve".into()),
    ];
    let mut header = vec!["run".to_string()];
    header.extend(DEFAULT_COVERAGE_LEVELS.iter().map(|l| format!("{:.0}%", 100.0 * l)));
    b.push(Block::Table(
        header,
        results
            .iter()
            .map(|r| {
                let mut row = vec![r.label.clone()];
                row.extend(r.coverage.iter().map(|c| f4(c.coverage)));
                row
            })
            .collect(),
    ));
    let line = |i: usize, label: &str, points: Vec<(f64, f64)>| Line {
        label: label.to_string(),
        color: i,
        dashed: false,
        points,
        markers: true,
        ..Line::default()
    };
    let curve = Panel {
        title: "Calibration of central intervals".into(),
        x_desc: "nominal level".into(),
        y_desc: "observed coverage".into(),
        x_range: Some((0.0, 1.0)),
        y_range: Some((0.0, 1.0)),
        diagonal: true,
        lines: results
            .iter()
            .enumerate()
            .map(|(i, r)| line(i, &r.label, r.coverage.iter().map(|c| (c.level, c.coverage)).collect()))
            .collect(),
        ..Default::default()
    };
    let widths = Panel {
        title: "Sharpness: mean interval width".into(),
        x_desc: "nominal level".into(),
        y_desc: "mean width (target units)".into(),
        x_range: Some((0.0, 1.0)),
        y_range: None,
        diagonal: false,
        lines: results
            .iter()
            .enumerate()
            .map(|(i, r)| {
                line(
                    i,
                    &r.label,
                    r.coverage.iter().map(|c| (c.level, c.mean_width)).collect(),
                )
            })
            .collect(),
        ..Default::default()
    };
    let mut pit = Panel {
        title: "PIT histogram (uniform when calibrated)".into(),
        x_desc: "Φ((y − μ̄)/σ̄)".into(),
        y_desc: "density".into(),
        x_range: Some((0.0, 1.0)),
        y_range: None,
        diagonal: false,
        lines: results
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let steps = histogram_steps(&r.per_target.pit, 0.0, 1.0, 10);
                // fractions per bin of width 0.1 → densities
                line(i, &r.label, steps.into_iter().map(|(x, y)| (x, 10.0 * y)).collect())
            })
            .map(|mut l| {
                l.markers = false;
                l
            })
            .collect(),
        ..Default::default()
    };
    // densities from 0, so that the bars' heights compare with the uniform's 1
    let top = pit
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(1.0f64, f64::max);
    pit.y_range = Some((0.0, 1.1 * top));
    b.push(Block::Figure {
        file: "calibration.png".into(),
        caption: "Observed against nominal coverage of the central intervals μ̄ ± z σ̄ (the dashed diagonal is perfect calibration; below it the intervals are too narrow), their mean width, and the histogram of the probability integral transform (a ∪ shape: too narrow; a ∩ shape: too wide).".into(),
        png: panels_png("calibration.png", &[curve, widths, pit], 3)?,
    });
    Ok(b)
}

/// `metrics.csv`: one row per run.
pub fn metrics_csv(results: &[RegressionResult]) -> String {
    let mut header: Vec<String> = [
        "run",
        "rmse",
        "nll",
        "mixture_nll",
        "crps",
        "mean_predictive_std",
        "mean_aleatoric_var",
        "mean_epistemic_var",
    ]
    .map(String::from)
    .to_vec();
    for l in DEFAULT_COVERAGE_LEVELS {
        header.push(format!("coverage_{l}"));
        header.push(format!("width_{l}"));
    }
    let mut out = header.join(",") + "\n";
    for r in results {
        let m = &r.metrics;
        let mut row = vec![r.label.replace(',', ";")];
        row.extend(
            [
                m.rmse,
                m.nll,
                m.mixture_nll,
                r.crps,
                m.mean_predictive_std,
                m.mean_aleatoric_var,
                m.mean_epistemic_var,
            ]
            .iter()
            .map(|x| x.to_string()),
        );
        for c in &r.coverage {
            row.push(c.coverage.to_string());
            row.push(c.mean_width.to_string());
        }
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// The arrays of one run: `mean`, `std`, `aleatoric_var`, `epistemic_var`, `pit` and `targets`,
/// `[N·D]` f64 each.
pub fn arrays(r: &RegressionResult) -> Result<Vec<(String, Tensor)>> {
    let t = &r.per_target;
    let n = t.targets.len();
    let mut out = Vec::new();
    for (name, v) in t.columns() {
        out.push((name.to_string(), Tensor::from_vec(v.clone(), n, &Device::Cpu)?));
    }
    Ok(out)
}
