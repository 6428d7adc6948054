//! What the report measures of one run from its predictions: the calibration, selective
//! prediction, temperature-scaling and out-of-distribution metrics of `secateur_inference`.

use crate::error::Result;
use secateur_inference::calibration::{
    adaptive_ece, brier_decomposition, class_calibration_errors, fit_temperature, temperature_scale, BrierDecomposition,
};
use secateur_inference::metrics::{classification_metrics, ClassificationMetrics, CALIBRATION_BINS};
use secateur_inference::ood::{ood_metrics, OodMetrics};
use secateur_inference::predict::{McPredictions, Predictions};
use secateur_inference::selective::aurc;

/// An out-of-distribution score: higher means "more likely out of distribution".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OodScore {
    /// `1 − max_k p_k` (Hendrycks & Gimpel 2017's maximum softmax probability, negated).
    MaxProbability,
    /// The predictive entropy `H[(1/S) Σₛ p(y | x, wₛ)]`.
    Entropy,
    /// The mutual information between the label and the weights (the epistemic part of the
    /// entropy; Houlsby et al. 2011, Depeweg et al. 2018); zero for a one-pass predictive.
    MutualInformation,
}

impl OodScore {
    /// Every score, in the order of the report's tables.
    pub const ALL: [OodScore; 3] = [OodScore::MaxProbability, OodScore::Entropy, OodScore::MutualInformation];

    /// The score's name in tables and files.
    pub fn name(self) -> &'static str {
        match self {
            OodScore::MaxProbability => "max-prob",
            OodScore::Entropy => "entropy",
            OodScore::MutualInformation => "mutual-info",
        }
    }

    /// The score of every example of `p`, as `f64`.
    pub fn of(self, p: &McPredictions) -> Vec<f64> {
        match self {
            OodScore::MaxProbability => {
                let k = p.predictions.classes;
                p.predictions
                    .probs
                    .chunks_exact(k)
                    .map(|row| 1.0 - row.iter().fold(0f32, |m, &v| m.max(v)) as f64)
                    .collect()
            }
            OodScore::Entropy => p.predictive_entropy.iter().map(|&v| v as f64).collect(),
            OodScore::MutualInformation => p.mutual_information.iter().map(|&v| v as f64).collect(),
        }
    }
}

/// Calibration of one set of predictions: the metrics of `classification_metrics` and the
/// finer calibration measures.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// Accuracy, NLL, Brier, ECE (15 equal-width bins) and MCE.
    pub metrics: ClassificationMetrics,
    /// ECE over 15 equal-mass bins (Nixon et al. 2019).
    pub adaptive_ece: f64,
    /// Class-wise ECE over 15 equal-width bins (Kull et al. 2019).
    pub classwise_ece: f64,
    /// The Brier score's reliability, resolution and uncertainty (Murphy 1973).
    pub brier: BrierDecomposition,
    /// Area under the risk–coverage curve, the predictive entropy ranking (Geifman et al. 2019).
    pub aurc: f64,
    /// Per class `k`: the accuracy on the examples of class `k` (its recall).
    pub class_accuracy: Vec<f64>,
    /// Per class `k`: the calibration error of `p_k` one-vs-rest (the class-wise ECE's terms).
    pub class_calibration: Vec<f64>,
}

impl Calibration {
    /// The calibration of `p` (selective prediction ranks by `uncertainty`).
    pub fn of(p: &Predictions, uncertainty: &[f32]) -> Result<Self> {
        let class_calibration = class_calibration_errors(&p.probs, &p.labels, p.classes, CALIBRATION_BINS)?;
        Ok(Self {
            metrics: classification_metrics(&p.probs, &p.labels, p.classes)?,
            adaptive_ece: adaptive_ece(&p.probs, &p.labels, p.classes, CALIBRATION_BINS)?,
            classwise_ece: class_calibration.iter().sum::<f64>() / p.classes as f64,
            class_accuracy: class_accuracy(p),
            brier: brier_decomposition(&p.probs, &p.labels, p.classes)?,
            aurc: aurc(&p.probs, &p.labels, p.classes, uncertainty)?,
            class_calibration,
        })
    }
}

/// The accuracy on the examples of each class (NaN for a class without examples).
pub fn class_accuracy(p: &Predictions) -> Vec<f64> {
    let mut correct = vec![0usize; p.classes];
    let mut count = vec![0usize; p.classes];
    for (row, &y) in p.probs.chunks_exact(p.classes).zip(&p.labels) {
        let (pred, _) = secateur_inference::metrics::top1(row);
        count[y as usize] += 1;
        correct[y as usize] += usize::from(pred == y as usize);
    }
    correct
        .iter()
        .zip(&count)
        .map(|(&c, &n)| if n == 0 { f64::NAN } else { c as f64 / n as f64 })
        .collect()
}

/// Temperature scaling (Guo et al. 2017) of a run's predictive: `T` fitted by NLL on the
/// calibration split, and the evaluation split's metrics before and after.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Temperature {
    /// The fitted temperature.
    pub temperature: f64,
    /// The evaluation split's metrics at `T = 1`.
    pub before: ClassificationMetrics,
    /// The evaluation split's metrics at the fitted `T`.
    pub after: ClassificationMetrics,
}

impl Temperature {
    /// Fits `T` on `fit` and measures `eval` before and after scaling by it.
    pub fn fit(fit: &Predictions, eval: &Predictions) -> Result<Self> {
        let temperature = fit_temperature(&fit.probs, &fit.labels, fit.classes)?;
        let scaled = temperature_scale(&eval.probs, eval.classes, temperature)?;
        Ok(Self {
            temperature,
            before: classification_metrics(&eval.probs, &eval.labels, eval.classes)?,
            after: classification_metrics(&scaled, &eval.labels, eval.classes)?,
        })
    }
}

/// Out-of-distribution detection of one run by each [`OodScore`]: `None` for the mutual
/// information of a one-pass predictive (it is zero everywhere and detects nothing).
pub fn ood_by_score(in_dist: &McPredictions, ood: &McPredictions) -> Result<Vec<(OodScore, Option<OodMetrics>)>> {
    let one_pass = in_dist.samples <= 1 && ood.samples <= 1;
    OodScore::ALL
        .iter()
        .map(|&s| {
            if s == OodScore::MutualInformation && one_pass {
                return Ok((s, None));
            }
            Ok((s, Some(ood_metrics(&s.of(in_dist), &s.of(ood))?)))
        })
        .collect()
}

/// The rows of `p` at `indices`, as a new set of predictions.
pub fn select(p: &Predictions, indices: &[usize]) -> Predictions {
    let k = p.classes;
    Predictions {
        probs: indices
            .iter()
            .flat_map(|&i| p.probs[i * k..(i + 1) * k].iter().copied())
            .collect(),
        labels: indices.iter().map(|&i| p.labels[i]).collect(),
        classes: k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The max-probability score is `1 − max p` per row; entropy and mutual information are the
    /// predictions' own.
    #[test]
    fn scores_read_the_predictions() -> Result<()> {
        let draws = vec![vec![0.9f32, 0.1, 0.2, 0.8], vec![0.7, 0.3, 0.6, 0.4]];
        let p = McPredictions::from_draws(&draws, vec![0, 1], 2)?;
        let m = OodScore::MaxProbability.of(&p);
        assert!(
            (m[0] - (1.0 - 0.8)).abs() < 1e-6 && (m[1] - (1.0 - 0.6)).abs() < 1e-6,
            "{m:?}"
        );
        assert_eq!(OodScore::Entropy.of(&p)[1], p.predictive_entropy[1] as f64);
        assert_eq!(OodScore::MutualInformation.of(&p)[0], p.mutual_information[0] as f64);
        Ok(())
    }

    /// A one-pass predictive has no mutual-information row; a two-draw one has.
    #[test]
    fn one_pass_has_no_mutual_information_row() -> Result<()> {
        let one = McPredictions::from_draws(&[vec![0.9f32, 0.1, 0.4, 0.6]], vec![0, 1], 2)?;
        let rows = ood_by_score(&one, &one)?;
        assert!(rows[2].1.is_none() && rows[1].1.is_some());
        let two = McPredictions::from_draws(&[vec![0.9f32, 0.1, 0.4, 0.6], vec![0.5, 0.5, 0.3, 0.7]], vec![0, 1], 2)?;
        assert!(ood_by_score(&two, &two)?[2].1.is_some());
        Ok(())
    }

    /// Per-class accuracy is the recall of each class; the per-class calibration errors average
    /// to the class-wise ECE.
    #[test]
    fn per_class_measures() -> Result<()> {
        let p = Predictions {
            probs: vec![0.9, 0.1, 0.6, 0.4, 0.3, 0.7, 0.8, 0.2],
            labels: vec![0, 0, 1, 1],
            classes: 2,
        };
        let c = Calibration::of(&p, &[0.1, 0.2, 0.3, 0.4])?;
        assert_eq!(c.class_accuracy, vec![1.0, 0.5]);
        let cw = secateur_inference::calibration::classwise_ece(&p.probs, &p.labels, 2, CALIBRATION_BINS)?;
        assert!((c.classwise_ece - cw).abs() < 1e-15);
        assert_eq!(c.class_calibration.len(), 2);
        Ok(())
    }

    #[test]
    fn select_keeps_rows_in_order() {
        let p = Predictions {
            probs: vec![0.1, 0.9, 0.2, 0.8, 0.3, 0.7],
            labels: vec![1, 0, 1],
            classes: 2,
        };
        let s = select(&p, &[2, 0]);
        assert_eq!(s.probs, vec![0.3, 0.7, 0.1, 0.9]);
        assert_eq!(s.labels, vec![1, 1]);
    }
}
