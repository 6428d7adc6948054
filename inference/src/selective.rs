//! Selective prediction: how accuracy improves when the classifier may abstain on its most
//! uncertain examples. [`accuracy_coverage`] gives the accuracy–coverage curve and [`aurc`] the
//! area under the risk–coverage curve (Geifman & El-Yaniv 2017; Geifman et al. 2019).
//!
//! Inputs follow [`crate::metrics`] (probabilities row-major `[N × classes]`, labels, the same
//! refusals) plus one uncertainty score per example, lower meaning more certain (predictive
//! entropy, mutual information, `1 − max p`, …; NaN refused, infinities allowed). An example is
//! correct when its arg-max class (lowest index on ties) equals its label, as for
//! [`crate::metrics::ClassificationMetrics::accuracy`].

use crate::metrics::check_inputs;
use crate::metrics::top1;
use candle_core::{bail, Result};
use serde::{Deserialize, Serialize};

/// One point of an accuracy–coverage curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CoveragePoint {
    /// Fraction `k/N` of the examples kept (the `k` most certain).
    pub coverage: f64,
    /// Accuracy on the kept examples; the selective risk is `1 − accuracy`.
    pub accuracy: f64,
}

/// The accuracy–coverage curve: the examples sorted by `uncertainty`, ascending (most certain
/// kept first), and for `k = 1, …, N` the point `(k/N, accuracy of the k most certain)`. The last
/// point (coverage 1) is the plain accuracy.
///
/// **Ties.** Examples with equal uncertainty cannot be ranked against each other, so the curve
/// must not depend on the order they come in. Within a group of `g` tied examples of which `r`
/// are correct, following `c` correct examples ranked before the group, the point at which `m`
/// of the group are kept has `c + m·r/g` correct examples: the expected count when the tied
/// examples are kept in a uniformly random order, i.e. the accuracy interpolates linearly (in
/// the number correct) across the group. At the end of each group the count is exact. The curve,
/// and hence [`aurc`], is therefore invariant to the input order.
///
/// Refuses an `uncertainty` whose length is not `N`, a NaN uncertainty, and the inputs
/// [`crate::metrics`] refuses.
///
/// ```
/// use secateur_inference::selective::accuracy_coverage;
/// // example 0 correct and certain, example 1 wrong and uncertain
/// let c = accuracy_coverage(&[0.9, 0.1, 0.6, 0.4], &[0, 1], 2, &[0.1, 0.7])?;
/// assert_eq!((c[0].coverage, c[0].accuracy), (0.5, 1.0));
/// assert_eq!((c[1].coverage, c[1].accuracy), (1.0, 0.5));
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn accuracy_coverage(
    probs: &[f32],
    labels: &[u32],
    classes: usize,
    uncertainty: &[f32],
) -> Result<Vec<CoveragePoint>> {
    let n = check_inputs(probs, labels, classes)?;
    if uncertainty.len() != n {
        bail!(
            "accuracy_coverage: {} uncertainties for {n} examples",
            uncertainty.len()
        );
    }
    if let Some(i) = uncertainty.iter().position(|u| u.is_nan()) {
        bail!("accuracy_coverage: the uncertainty of example {i} is NaN");
    }
    let correct: Vec<bool> = probs
        .chunks_exact(classes)
        .zip(labels)
        .map(|(row, &y)| top1(row).0 == y as usize)
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| uncertainty[a].total_cmp(&uncertainty[b]));
    let mut points = Vec::with_capacity(n);
    let (mut before, mut i) = (0usize, 0usize);
    while i < n {
        let u = uncertainty[order[i]];
        let mut j = i;
        let mut r = 0usize;
        while j < n && uncertainty[order[j]] == u {
            r += usize::from(correct[order[j]]);
            j += 1;
        }
        let g = j - i;
        for m in 1..=g {
            let k = i + m;
            let right = if m == g {
                (before + r) as f64
            } else {
                before as f64 + m as f64 * r as f64 / g as f64
            };
            points.push(CoveragePoint {
                coverage: k as f64 / n as f64,
                accuracy: right / k as f64,
            });
        }
        before += r;
        i = j;
    }
    Ok(points)
}

/// The area under the risk–coverage curve (Geifman & El-Yaniv 2017; Geifman et al. 2019,
/// "Bias-reduced uncertainty estimation for deep neural classifiers"): the mean over
/// `k = 1, …, N` of the selective risk `1 − accuracy` of the `k` most certain examples, from
/// [`accuracy_coverage`] (the same tie rule, so invariant to the input order). Lower is better.
///
/// For an error rate `r = e/N`, a ranking that puts all `e` errors last attains the minimum
/// `(1/N) Σ_{k=N−e+1}^{N} (1 − (N − e)/k) ≈ r + (1 − r) ln(1 − r)`; a ranking that carries no
/// information (all uncertainties tied) gives `r`. Refuses what [`accuracy_coverage`] refuses.
///
/// ```
/// use secateur_inference::selective::aurc;
/// // risks 0 at coverage ½ and ½ at coverage 1
/// let a = aurc(&[0.9, 0.1, 0.6, 0.4], &[0, 1], 2, &[0.1, 0.7])?;
/// assert!((a - 0.25).abs() < 1e-15);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn aurc(probs: &[f32], labels: &[u32], classes: usize, uncertainty: &[f32]) -> Result<f64> {
    let points = accuracy_coverage(probs, labels, classes, uncertainty)?;
    Ok(points.iter().map(|p| 1.0 - p.accuracy).sum::<f64>() / points.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::classification_metrics;
    use rand::Rng;
    use secateur_bayes::SeededRng;

    /// Two-class rows predicting class 0 (confidence 0.7), labelled 0 when `correct`.
    fn rows(correct: &[bool]) -> (Vec<f32>, Vec<u32>) {
        (
            correct.iter().flat_map(|_| [0.7, 0.3]).collect(),
            correct.iter().map(|&c| u32::from(!c)).collect(),
        )
    }

    fn pairs(c: &[CoveragePoint]) -> Vec<(f64, f64)> {
        c.iter().map(|p| (p.coverage, p.accuracy)).collect()
    }

    #[test]
    fn hand_case() {
        // sorted by uncertainty: 0.1 ✗, 0.2 ✓, 0.3 ✓, 0.4 ✗ → accuracies 0, ½, ⅔, ½
        let (p, y) = rows(&[true, false, true, false]);
        let u = [0.3, 0.1, 0.2, 0.4];
        let c = accuracy_coverage(&p, &y, 2, &u).unwrap();
        assert_eq!(pairs(&c), vec![(0.25, 0.0), (0.5, 0.5), (0.75, 2.0 / 3.0), (1.0, 0.5)]);
        let a = aurc(&p, &y, 2, &u).unwrap();
        assert!((a - (1.0 + 0.5 + 1.0 / 3.0 + 0.5) / 4.0).abs() < 1e-15, "{a}");
    }

    #[test]
    fn hand_case_with_ties() {
        // 0.1 ✓ | 0.2 ✓ ✗ ✗ (tied: ⅓ correct each) | 0.5 ✓
        // k = 1: 1/1; k = 2: (1 + ⅓)/2; k = 3: (1 + ⅔)/3; k = 4: 2/4 (group complete); k = 5: 3/5
        let (p, y) = rows(&[false, true, true, false, true]);
        let u = [0.2, 0.1, 0.5, 0.2, 0.2];
        let c = accuracy_coverage(&p, &y, 2, &u).unwrap();
        let want = [1.0, (4.0 / 3.0) / 2.0, (5.0 / 3.0) / 3.0, 0.5, 0.6];
        for (k, (pt, w)) in c.iter().zip(want).enumerate() {
            assert_eq!(pt.coverage, (k + 1) as f64 / 5.0);
            assert!((pt.accuracy - w).abs() < 1e-15, "k = {}: {} vs {w}", k + 1, pt.accuracy);
        }
    }

    /// Random 4-class rows, some with a tied top-1 (which the lowest index wins), random labels.
    fn random_case(n: usize, rng: &mut SeededRng) -> (Vec<f32>, Vec<u32>) {
        let mut probs = Vec::new();
        for i in 0..n {
            if i % 7 == 0 {
                probs.extend([0.4, 0.1, 0.4, 0.1]);
            } else {
                let v: Vec<f32> = (0..4).map(|_| rng.random::<f32>() + 0.01).collect();
                let s: f32 = v.iter().sum();
                probs.extend(v.iter().map(|x| x / s));
            }
        }
        let labels = (0..n).map(|_| rng.index(4) as u32).collect();
        (probs, labels)
    }

    #[test]
    fn full_coverage_is_the_plain_accuracy() {
        let mut rng = SeededRng::new(4);
        let (p, y) = random_case(300, &mut rng);
        let u: Vec<f32> = (0..300).map(|_| rng.index(10) as f32).collect();
        let c = accuracy_coverage(&p, &y, 4, &u).unwrap();
        let last = c.last().unwrap();
        assert_eq!(c.len(), 300);
        assert_eq!(last.coverage, 1.0);
        assert_eq!(last.accuracy, classification_metrics(&p, &y, 4).unwrap().accuracy);
    }

    #[test]
    fn aurc_of_a_perfect_ranking_has_its_closed_form() {
        // e errors out of N, all ranked more uncertain than every correct example: risk 0 up to
        // k = N − e, then (k − (N − e))/k, so
        // AURC = (1/N) Σ_{k=N−e+1}^{N} (1 − (N−e)/k) = e/N − ((N − e)/N)(H_N − H_{N−e}).
        let mut rng = SeededRng::new(8);
        let n = 500;
        let (p, y) = random_case(n, &mut rng);
        let m = classification_metrics(&p, &y, 4).unwrap();
        let e = ((1.0 - m.accuracy) * n as f64).round() as usize;
        let correct: Vec<bool> = p
            .chunks_exact(4)
            .zip(&y)
            .map(|(r, &l)| top1(r).0 == l as usize)
            .collect();
        let u: Vec<f32> = correct
            .iter()
            .map(|&c| rng.random::<f32>() + if c { 0.0 } else { 2.0 })
            .collect();
        let harmonic = |m: usize| (1..=m).map(|k| 1.0 / k as f64).sum::<f64>();
        let want = e as f64 / n as f64 - (n - e) as f64 / n as f64 * (harmonic(n) - harmonic(n - e));
        let got = aurc(&p, &y, 4, &u).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // The reverse ranking is worse, and all-tied uncertainties give the error rate.
        let reversed: Vec<f32> = u.iter().map(|v| -v).collect();
        assert!(aurc(&p, &y, 4, &reversed).unwrap() > got + 0.1);
        let tied = aurc(&p, &y, 4, &vec![0.5; n]).unwrap();
        assert!((tied - (1.0 - m.accuracy)).abs() < 1e-12, "{tied}");
    }

    #[test]
    fn the_curve_does_not_depend_on_the_input_order() {
        let mut rng = SeededRng::new(6);
        let n = 257;
        let (p, y) = random_case(n, &mut rng);
        // Few distinct uncertainties: large tie groups with mixed outcomes; −0.0 and +0.0 tie.
        let u: Vec<f32> = (0..n)
            .map(|i| if i % 11 == 0 { -0.0 } else { rng.index(6) as f32 })
            .collect();
        let c = accuracy_coverage(&p, &y, 4, &u).unwrap();
        let a = aurc(&p, &y, 4, &u).unwrap();
        for _ in 0..5 {
            let mut perm: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                perm.swap(i, rng.index(i + 1));
            }
            let pp: Vec<f32> = perm.iter().flat_map(|&i| p[4 * i..4 * i + 4].to_vec()).collect();
            let yy: Vec<u32> = perm.iter().map(|&i| y[i]).collect();
            let uu: Vec<f32> = perm.iter().map(|&i| u[i]).collect();
            assert_eq!(accuracy_coverage(&pp, &yy, 4, &uu).unwrap(), c);
            assert_eq!(aurc(&pp, &yy, 4, &uu).unwrap(), a);
        }
    }

    #[test]
    fn refuses_bad_input() {
        let (p, y) = rows(&[true, false]);
        assert!(accuracy_coverage(&p, &y, 2, &[0.1]).is_err());
        assert!(accuracy_coverage(&p, &y, 2, &[0.1, f32::NAN]).is_err());
        assert!(aurc(&[], &[], 2, &[]).is_err());
        assert!(aurc(&p, &[0, 5], 2, &[0.1, 0.2]).is_err());
        // infinities are ordinary scores
        assert!(aurc(&p, &y, 2, &[f32::INFINITY, f32::NEG_INFINITY]).is_ok());
    }
}
