//! The report's figures: overlaid reliability diagrams, confidence histograms, entropy
//! histograms in- vs out-of-distribution, ROC curves, accuracy–coverage curves and accuracy and
//! ECE under shift. Every figure is a grid of [`Panel`]s of lines drawn by [`panels_png`]
//! ([`crate::plot::panels`]).

use super::RunResult;
use crate::error::Result;
pub use crate::plot::{panels_png, Line, Panel};
use secateur_inference::metrics::{reliability_bins, CALIBRATION_BINS};
use secateur_inference::ood::roc_curve;
use secateur_inference::selective::accuracy_coverage;

/// A histogram of `values` over `[lo, hi]` in `bins` bins as a step line of the fraction of
/// values per bin (values outside go to the end bins).
pub fn histogram_steps(values: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<(f64, f64)> {
    let mut counts = vec![0usize; bins];
    let width = (hi - lo) / bins as f64;
    for &v in values.iter().filter(|v| v.is_finite()) {
        let b = (((v - lo) / width).floor().max(0.0) as usize).min(bins - 1);
        counts[b] += 1;
    }
    let n = values.len().max(1) as f64;
    let mut pts = Vec::with_capacity(2 * bins);
    for (b, &c) in counts.iter().enumerate() {
        let y = c as f64 / n;
        pts.push((lo + b as f64 * width, y));
        pts.push((lo + (b + 1) as f64 * width, y));
    }
    pts
}

/// At most `max` points of `pts`, evenly spaced in index, always keeping the last.
fn thin(pts: Vec<(f64, f64)>, max: usize) -> Vec<(f64, f64)> {
    if pts.len() <= max {
        return pts;
    }
    let step = pts.len().div_ceil(max);
    let last = *pts.last().unwrap_or(&(f64::NAN, f64::NAN));
    let mut out: Vec<(f64, f64)> = pts.into_iter().step_by(step).collect();
    if out.last() != Some(&last) {
        out.push(last);
    }
    out
}

fn line(label: &str, color: usize, points: Vec<(f64, f64)>) -> Line {
    Line {
        label: label.to_string(),
        color,
        dashed: false,
        points,
        markers: false,
        ..Default::default()
    }
}

/// Overlaid reliability diagrams: accuracy against mean confidence in the non-empty bins of
/// [`CALIBRATION_BINS`] equal-width bins, one line per run.
pub fn reliability(runs: &[RunResult]) -> Result<Panel> {
    let mut lines = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let p = &r.test.predictions;
        let bins = reliability_bins(&p.probs, &p.labels, p.classes, CALIBRATION_BINS)?;
        let pts = bins
            .iter()
            .filter(|b| b.count > 0)
            .map(|b| (b.mean_confidence, b.accuracy))
            .collect();
        lines.push(Line {
            markers: true,
            ..line(&r.label, i, pts)
        });
    }
    Ok(Panel {
        title: "Reliability (test set)".into(),
        x_desc: "confidence".into(),
        y_desc: "accuracy".into(),
        x_range: Some((0.0, 1.0)),
        y_range: Some((0.0, 1.0)),
        diagonal: true,
        lines,
        ..Default::default()
    })
}

/// Histograms of the top-1 confidence on the test set, one line per run.
pub fn confidence(runs: &[RunResult]) -> Panel {
    let lines = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let conf: Vec<f64> = super::measure::OodScore::MaxProbability
                .of(&r.test)
                .into_iter()
                .map(|s| 1.0 - s)
                .collect();
            line(&r.label, i, histogram_steps(&conf, 0.0, 1.0, 20))
        })
        .collect();
    Panel {
        title: "Confidence (test set)".into(),
        x_desc: "top-1 probability".into(),
        y_desc: "fraction of examples".into(),
        x_range: Some((0.0, 1.0)),
        y_range: None,
        diagonal: false,
        lines,
        ..Default::default()
    }
}

/// Predictive entropy in (solid) and out of distribution (dashed), one panel per run.
pub fn entropy(runs: &[RunResult], ood_name: &str) -> Vec<Panel> {
    runs.iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let ood = r.ood.as_ref()?;
            let max = (r.test.predictions.classes as f64).ln();
            let ent = |p: &secateur_inference::predict::McPredictions| -> Vec<f64> {
                p.predictive_entropy.iter().map(|&v| v as f64).collect()
            };
            Some(Panel {
                title: format!("{}: predictive entropy", r.label),
                x_desc: "entropy (nats)".into(),
                y_desc: "fraction of examples".into(),
                x_range: Some((0.0, max)),
                y_range: None,
                diagonal: false,
                lines: vec![
                    line("test set", i, histogram_steps(&ent(&r.test), 0.0, max, 25)),
                    Line {
                        dashed: true,
                        ..line(ood_name, i, histogram_steps(&ent(ood), 0.0, max, 25))
                    },
                ],
                ..Default::default()
            })
        })
        .collect()
}

/// ROC curves of telling the out-of-distribution set from the test set by predictive entropy.
pub fn roc(runs: &[RunResult], ood_name: &str) -> Result<Panel> {
    let mut lines = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let Some(ood) = &r.ood else { continue };
        let s = super::measure::OodScore::Entropy;
        let pts = roc_curve(&s.of(&r.test), &s.of(ood))?
            .into_iter()
            .map(|p| (p.fpr, p.tpr))
            .collect();
        lines.push(line(&r.label, i, thin(pts, 400)));
    }
    Ok(Panel {
        title: format!("ROC: test set vs {ood_name} (predictive entropy)"),
        x_desc: "false positive rate".into(),
        y_desc: "true positive rate".into(),
        x_range: Some((0.0, 1.0)),
        y_range: Some((0.0, 1.0)),
        diagonal: true,
        lines,
        ..Default::default()
    })
}

/// Accuracy against coverage, keeping the examples of lowest predictive entropy first.
pub fn coverage(runs: &[RunResult]) -> Result<Panel> {
    let mut lines = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let p = &r.test.predictions;
        let pts = accuracy_coverage(&p.probs, &p.labels, p.classes, &r.test.predictive_entropy)?
            .into_iter()
            .map(|c| (c.coverage, c.accuracy))
            .collect();
        lines.push(line(&r.label, i, thin(pts, 400)));
    }
    Ok(Panel {
        title: "Selective prediction (by predictive entropy)".into(),
        x_desc: "coverage".into(),
        y_desc: "accuracy of the kept examples".into(),
        x_range: Some((0.0, 1.0)),
        y_range: None,
        diagonal: false,
        lines,
        ..Default::default()
    })
}

/// Accuracy and ECE against shift severity (0: the clean test set), one panel per shift kind
/// and metric, one line per run.
pub fn shift(runs: &[RunResult]) -> Vec<Panel> {
    let Some(first) = runs.first() else { return Vec::new() };
    let mut kinds: Vec<secateur_datasets::shift::ShiftKind> = first.shifted.iter().map(|s| s.shift.kind).collect();
    kinds.dedup();
    let mut panels = Vec::new();
    for (metric, name) in [(0usize, "accuracy"), (1, "ECE")] {
        for &kind in &kinds {
            let lines = runs
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let clean = if metric == 0 {
                        r.calibration.metrics.accuracy
                    } else {
                        r.calibration.metrics.ece
                    };
                    let mut pts = vec![(0.0, clean)];
                    pts.extend(r.shifted.iter().filter(|s| s.shift.kind == kind).map(|s| {
                        let v = if metric == 0 { s.metrics.accuracy } else { s.metrics.ece };
                        (s.shift.severity as f64, v)
                    }));
                    Line {
                        markers: true,
                        ..line(&r.label, i, pts)
                    }
                })
                .collect();
            panels.push(Panel {
                title: format!("{name} under {}", kind.name()),
                x_desc: "severity (0 = clean)".into(),
                y_desc: name.into(),
                x_range: Some((-0.2, 5.2)),
                y_range: if metric == 0 { Some((0.0, 1.0)) } else { None },
                diagonal: false,
                lines,
                ..Default::default()
            });
        }
    }
    panels
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A histogram's steps cover the range and its heights are the fractions per bin.
    #[test]
    fn histogram_fractions() {
        let pts = histogram_steps(&[0.05, 0.15, 0.16, 0.99, 1.0], 0.0, 1.0, 10);
        assert_eq!(pts.len(), 20);
        assert_eq!(pts[0], (0.0, 0.2));
        assert!((pts[2].1 - 0.4).abs() < 1e-12);
        assert!((pts[19].1 - 0.4).abs() < 1e-12, "1.0 lands in the last bin");
        let total: f64 = pts.iter().step_by(2).map(|p| p.1).sum();
        assert!((total - 1.0).abs() < 1e-12);
    }

    #[test]
    fn thin_keeps_the_ends() {
        let pts: Vec<(f64, f64)> = (0..1001).map(|i| (i as f64, 0.0)).collect();
        let t = thin(pts, 100);
        assert!(t.len() <= 102);
        assert_eq!(t[0].0, 0.0);
        assert_eq!(t.last().map(|p| p.0), Some(1000.0));
    }
}
