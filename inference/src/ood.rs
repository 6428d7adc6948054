//! Out-of-distribution (OOD) detection metrics of a scalar score, higher meaning "more
//! out-of-distribution" (predictive entropy, mutual information, `1 − max p`, …), computed from
//! the scores of an in-distribution and an OOD test set: AUROC, AUPR-in, AUPR-out and the FPR at
//! 95% TPR ([`ood_metrics`]), and the ROC curve ([`roc_curve`]).
//!
//! Scores are `f64`; NaN and empty sets are refused, infinities are allowed. Ties between scores
//! are never broken by input order: every function works on the groups of equal scores.

use candle_core::{bail, Result};
use serde::{Deserialize, Serialize};

/// OOD-detection summary of a score (see [`ood_metrics`] for each definition).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OodMetrics {
    /// Area under the ROC curve with OOD as the positive class (½ for a useless score).
    pub auroc: f64,
    /// Average precision with in-distribution as the positive class, scored by `−score`.
    pub aupr_in: f64,
    /// Average precision with OOD as the positive class, scored by `score`.
    pub aupr_out: f64,
    /// Fraction of OOD examples kept by the threshold that keeps ≥ 95% of in-distribution ones.
    pub fpr_at_95_tpr: f64,
}

/// One point of a ROC curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RocPoint {
    /// False-positive rate: fraction of in-distribution examples flagged as OOD.
    pub fpr: f64,
    /// True-positive rate: fraction of OOD examples flagged as OOD.
    pub tpr: f64,
}

/// A group of equal scores: the score, and how many in-distribution and OOD examples have it.
struct Group {
    score: f64,
    ins: usize,
    outs: usize,
}

/// Checks the two score sets and returns their groups of equal scores, highest score first.
fn groups(what: &str, in_scores: &[f64], out_scores: &[f64]) -> Result<Vec<Group>> {
    if in_scores.is_empty() || out_scores.is_empty() {
        bail!(
            "{what}: needs at least one in-distribution and one out-of-distribution score, got {} and {}",
            in_scores.len(),
            out_scores.len()
        );
    }
    if in_scores.iter().chain(out_scores).any(|v| v.is_nan()) {
        bail!("{what}: a score is NaN");
    }
    let mut all: Vec<(f64, bool)> = in_scores
        .iter()
        .map(|&s| (s, false))
        .chain(out_scores.iter().map(|&s| (s, true)))
        .collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut out: Vec<Group> = Vec::new();
    for (s, is_out) in all {
        match out.last_mut() {
            // `==` merges −0.0 and +0.0, which total_cmp puts next to each other.
            Some(g) if g.score == s => {}
            _ => out.push(Group {
                score: s,
                ins: 0,
                outs: 0,
            }),
        }
        let g = out.last_mut().expect("a group was just pushed");
        if is_out {
            g.outs += 1;
        } else {
            g.ins += 1;
        }
    }
    Ok(out)
}

/// The average precision of the groups visited in the given order (each group a threshold that
/// flags it and all groups before it): `Σ_t (ΔTP_t / P) · TP_t / (TP_t + FP_t)`, positives counted
/// by `pos`, negatives by `neg` — scikit-learn's `average_precision_score` (the step-wise sum
/// over recall increments, no interpolation).
fn average_precision<'a>(
    gs: impl Iterator<Item = &'a Group>,
    pos: fn(&Group) -> usize,
    neg: fn(&Group) -> usize,
) -> f64 {
    let (mut tp, mut fp, mut ap, mut total) = (0usize, 0usize, 0f64, 0usize);
    for g in gs {
        tp += pos(g);
        fp += neg(g);
        total += pos(g);
        if pos(g) > 0 {
            ap += pos(g) as f64 * tp as f64 / (tp + fp) as f64;
        }
    }
    ap / total as f64
}

/// AUROC, AUPR-in, AUPR-out and FPR at 95% TPR of telling OOD examples (`out_scores`) from
/// in-distribution ones (`in_scores`) by a score that is higher for OOD (Hendrycks & Gimpel
/// 2017, "A baseline for detecting misclassified and out-of-distribution examples"; Liang et al.
/// 2018, "ODIN").
///
/// - **AUROC**, OOD positive: `P(s_out > s_in) + ½ P(s_out = s_in)`, the Mann–Whitney statistic
///   over all `n_in · n_out` pairs, ties counting one half — the same number as
///   [`crate::metrics::auroc`]`(out, in)` (which takes `f32`; the tests cross-check the two) and
///   as the trapezoid area under [`roc_curve`]. Computed from integer pair counts, so exact up to
///   one final rounding.
/// - **AUPR-out**: the average precision of detecting OOD by `score`, scikit-learn's
///   `average_precision_score(is_out, score)`: `Σ_t (R_t − R_{t−1}) P_t` over the distinct scores
///   `t` from highest to lowest, with precision `P_t` and recall `R_t` of flagging every example
///   with score `≥ t`. Equivalently, the mean over OOD examples of the precision at that
///   example's score (ties share one threshold, so a tie group contributes its pooled
///   precision). A constant score (all tied) gives the OOD fraction `n_out/(n_in + n_out)`.
/// - **AUPR-in**: the same with in-distribution as the positive class and `−score` as its score.
/// - **FPR at 95% TPR**, in-distribution positive (Hendrycks & Gimpel; Liang et al.): an example
///   is kept as in-distribution when its score is `≤ τ`. The threshold `τ` is the `k`-th
///   smallest in-distribution score, `k = ⌈0.95 n_in⌉` (computed in integers as
///   `⌈95 n_in / 100⌉`, so no rounding of `0.95 · n_in` can move it): the smallest threshold
///   that keeps at least 95% of the in-distribution examples. Every example whose score equals
///   `τ`, in-distribution or OOD, is kept, so ties at `τ` can push the TPR above 95% and count
///   the tied OOD examples as false positives. The FPR is `#{OOD with score ≤ τ} / n_out`, the
///   smallest FPR of any threshold with TPR ≥ 95%. (Liang et al.'s evaluation code instead
///   averages the FPR over a fine sweep of thresholds whose TPR lies in [0.9495, 0.9505].)
///
/// Refuses an empty set and NaN scores.
///
/// ```
/// use secateur_inference::ood::ood_metrics;
/// let m = ood_metrics(&[0.1, 0.2, 0.3], &[0.25, 0.9])?;
/// assert!((m.auroc - 5.0 / 6.0).abs() < 1e-15); // 0.25 beats 2 of 3, 0.9 beats 3 of 3
/// assert!((m.aupr_out - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-15);
/// assert_eq!(m.fpr_at_95_tpr, 0.5); // τ = 0.3 (k = ⌈2.85⌉ = 3) keeps all 3 in and 0.25
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn ood_metrics(in_scores: &[f64], out_scores: &[f64]) -> Result<OodMetrics> {
    let gs = groups("ood_metrics", in_scores, out_scores)?;
    let (n_in, n_out) = (in_scores.len(), out_scores.len());
    // 2U = Σ_groups outs · (2 · #in strictly below + ins tied), walking from the top.
    let (mut in_seen, mut twice_u) = (0usize, 0u128);
    for g in &gs {
        in_seen += g.ins;
        twice_u += g.outs as u128 * (2 * (n_in - in_seen) + g.ins) as u128;
    }
    let auroc = twice_u as f64 / (2.0 * n_in as f64 * n_out as f64);
    let aupr_out = average_precision(gs.iter(), |g| g.outs, |g| g.ins);
    let aupr_in = average_precision(gs.iter().rev(), |g| g.ins, |g| g.outs);
    let k = (95 * n_in as u128).div_ceil(100) as usize;
    let mut sorted_in = in_scores.to_vec();
    sorted_in.sort_by(f64::total_cmp);
    let tau = sorted_in[k - 1];
    let kept_out = out_scores.iter().filter(|&&s| s <= tau).count();
    Ok(OodMetrics {
        auroc,
        aupr_in,
        aupr_out,
        fpr_at_95_tpr: kept_out as f64 / n_out as f64,
    })
}

/// The ROC curve of detecting OOD examples (positive) by a score that is higher for OOD: one
/// point per distinct score `t`, from the highest down, at the rates of flagging every example
/// with score `≥ t`, preceded by `(0, 0)` (nothing flagged); the last point is `(1, 1)`. Tied
/// in-distribution and OOD examples enter together, giving a diagonal segment, so the trapezoid
/// area under the curve is exactly the AUROC with ties counting ½ ([`ood_metrics`]). Refuses an
/// empty set and NaN scores.
///
/// ```
/// use secateur_inference::ood::roc_curve;
/// let roc = roc_curve(&[0.1, 0.5], &[0.5, 0.9])?;
/// let pts: Vec<(f64, f64)> = roc.iter().map(|p| (p.fpr, p.tpr)).collect();
/// assert_eq!(pts, vec![(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn roc_curve(in_scores: &[f64], out_scores: &[f64]) -> Result<Vec<RocPoint>> {
    let gs = groups("roc_curve", in_scores, out_scores)?;
    let (n_in, n_out) = (in_scores.len() as f64, out_scores.len() as f64);
    let mut points = Vec::with_capacity(gs.len() + 1);
    points.push(RocPoint { fpr: 0.0, tpr: 0.0 });
    let (mut fp, mut tp) = (0usize, 0usize);
    for g in &gs {
        fp += g.ins;
        tp += g.outs;
        points.push(RocPoint {
            fpr: fp as f64 / n_in,
            tpr: tp as f64 / n_out,
        });
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::auroc;
    use rand::Rng;
    use secateur_bayes::SeededRng;

    /// Scores on a coarse grid (many ties), as f32 values so that `metrics::auroc` sees the same
    /// numbers; OOD shifted up by `shift` grid steps on average.
    fn scores(n: usize, shift: f64, rng: &mut SeededRng) -> Vec<f64> {
        (0..n)
            .map(|_| ((rng.random::<f64>() * 20.0 + shift).floor() / 8.0) as f32 as f64)
            .collect()
    }

    #[test]
    fn auroc_equals_metrics_auroc() {
        let mut rng = SeededRng::new(21);
        for (n_in, n_out, shift) in [(300, 200, 4.0), (50, 500, 0.0), (1, 7, 2.0), (400, 400, -3.0)] {
            let ins = scores(n_in, 0.0, &mut rng);
            let outs = scores(n_out, shift, &mut rng);
            let m = ood_metrics(&ins, &outs).unwrap();
            let to32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
            let reference = auroc(&to32(&outs), &to32(&ins)).unwrap();
            assert!(
                (m.auroc - reference).abs() < 1e-12,
                "{} vs metrics::auroc {reference}",
                m.auroc
            );
            // Continuous scores (no ties) too.
            let ins: Vec<f64> = (0..n_in).map(|_| rng.random::<f32>() as f64).collect();
            let outs: Vec<f64> = (0..n_out).map(|_| (rng.random::<f32>() + 0.3) as f64).collect();
            let reference = auroc(&to32(&outs), &to32(&ins)).unwrap();
            assert!((ood_metrics(&ins, &outs).unwrap().auroc - reference).abs() < 1e-12);
        }
    }

    /// Average precision, brute force: the mean over positives of the precision among all
    /// examples scoring at least that positive's score.
    fn brute_ap(pos: &[f64], neg: &[f64]) -> f64 {
        pos.iter()
            .map(|&s| {
                let tp = pos.iter().filter(|&&v| v >= s).count();
                let fp = neg.iter().filter(|&&v| v >= s).count();
                tp as f64 / (tp + fp) as f64
            })
            .sum::<f64>()
            / pos.len() as f64
    }

    #[test]
    fn aupr_equals_a_brute_force_average_precision() {
        let mut rng = SeededRng::new(22);
        for (n_in, n_out, shift) in [(300, 200, 4.0), (50, 500, 0.0), (1, 7, 2.0), (9, 1, -3.0)] {
            let ins = scores(n_in, 0.0, &mut rng);
            let outs = scores(n_out, shift, &mut rng);
            let m = ood_metrics(&ins, &outs).unwrap();
            let out_ap = brute_ap(&outs, &ins);
            let neg = |v: &[f64]| v.iter().map(|x| -x).collect::<Vec<_>>();
            let in_ap = brute_ap(&neg(&ins), &neg(&outs));
            assert!((m.aupr_out - out_ap).abs() < 1e-12, "{} vs {out_ap}", m.aupr_out);
            assert!((m.aupr_in - in_ap).abs() < 1e-12, "{} vs {in_ap}", m.aupr_in);
        }
        // A hand case: OOD at 0.9 and 0.5, in-distribution at 0.7 and 0.5 (tied with an OOD):
        // AUPR-out = ½ (1/1 + 2/4); AUPR-in (−score: −0.5 tied pair first) = ½ (1/2 + 2/3).
        let m = ood_metrics(&[0.7, 0.5], &[0.9, 0.5]).unwrap();
        assert!((m.aupr_out - 0.75).abs() < 1e-15);
        assert!((m.aupr_in - (0.5 + 2.0 / 3.0) / 2.0).abs() < 1e-15);
    }

    #[test]
    fn perfect_separation_and_identical_distributions() {
        let m = ood_metrics(&[0.1, 0.2, 0.2, 0.3], &[0.5, 0.9, 0.5]).unwrap();
        assert_eq!((m.auroc, m.aupr_in, m.aupr_out, m.fpr_at_95_tpr), (1.0, 1.0, 1.0, 0.0));
        // The same multiset in both sets, in different orders: AUROC exactly ½.
        let mut rng = SeededRng::new(23);
        let ins = scores(500, 0.0, &mut rng);
        let mut outs = ins.clone();
        outs.reverse();
        assert_eq!(ood_metrics(&ins, &outs).unwrap().auroc, 0.5);
        // Independent draws from one distribution: ½ within noise (sd ≈ √((n+n+1)/(12 n n)) ≈ 0.013).
        let a = ood_metrics(&scores(1000, 0.0, &mut rng), &scores(1000, 0.0, &mut rng))
            .unwrap()
            .auroc;
        assert!((a - 0.5).abs() < 0.06, "{a}");
    }

    #[test]
    fn fpr_at_95_tpr_hand_cases_with_ties() {
        // n_in = 20 → k = ⌈19⌉ = 19: τ = the 19th smallest in-distribution score = 19; both
        // in-distribution 19s are kept (TPR 20/20). OOD at ≤ 19: 18.5, 19, 19 → 3/8.
        let mut ins: Vec<f64> = (1..=18).map(f64::from).collect();
        ins.extend([19.0, 19.0]);
        let outs = [19.0, 25.0, 18.5, 19.0, 30.0, 40.0, 50.0, 60.0];
        assert_eq!(ood_metrics(&ins, &outs).unwrap().fpr_at_95_tpr, 3.0 / 8.0);
        // n_in = 21 → k = ⌈19.95⌉ = 20: τ = 20th smallest = 20; OOD ≤ 20: 19.5, 20 → 2/4.
        let ins: Vec<f64> = (1..=21).map(f64::from).collect();
        assert_eq!(ood_metrics(&ins, &[19.5, 20.0, 20.5, 21.0]).unwrap().fpr_at_95_tpr, 0.5);
        // n_in = 12 → k = ⌈11.4⌉ = 12 (rounding or truncating 11.4 would keep only 11 = 91.7%):
        // τ = 12; OOD ≤ 12: 11.5, 12 → 2/3.
        let ins: Vec<f64> = (1..=12).map(f64::from).collect();
        assert_eq!(ood_metrics(&ins, &[11.5, 12.0, 13.0]).unwrap().fpr_at_95_tpr, 2.0 / 3.0);
        // n_in = 100 → k = 95 exactly (no rounding up from 95.00000000000001).
        let ins: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(ood_metrics(&ins, &[95.0, 95.5]).unwrap().fpr_at_95_tpr, 0.5);
        // One in-distribution example: τ is its score.
        assert_eq!(ood_metrics(&[1.0], &[0.5, 1.0, 2.0]).unwrap().fpr_at_95_tpr, 2.0 / 3.0);
    }

    #[test]
    fn roc_trapezoid_area_equals_auroc() {
        let mut rng = SeededRng::new(24);
        for (n_in, n_out, shift) in [(300, 200, 4.0), (50, 500, 0.0), (1, 1, 0.0), (9, 1, -3.0)] {
            let ins = scores(n_in, 0.0, &mut rng);
            let outs = scores(n_out, shift, &mut rng);
            let roc = roc_curve(&ins, &outs).unwrap();
            assert_eq!((roc[0].fpr, roc[0].tpr), (0.0, 0.0));
            let last = roc.last().unwrap();
            assert_eq!((last.fpr, last.tpr), (1.0, 1.0));
            assert!(roc.windows(2).all(|w| w[1].fpr >= w[0].fpr && w[1].tpr >= w[0].tpr));
            let mut distinct: Vec<f64> = ins.iter().chain(&outs).copied().collect();
            distinct.sort_by(f64::total_cmp);
            distinct.dedup();
            assert_eq!(roc.len(), distinct.len() + 1);
            let area: f64 = roc
                .windows(2)
                .map(|w| (w[1].fpr - w[0].fpr) * (w[1].tpr + w[0].tpr) / 2.0)
                .sum();
            let a = ood_metrics(&ins, &outs).unwrap().auroc;
            assert!((area - a).abs() < 1e-12, "{area} vs {a}");
        }
    }

    #[test]
    fn refuses_bad_input() {
        assert!(ood_metrics(&[], &[1.0]).is_err());
        assert!(ood_metrics(&[1.0], &[]).is_err());
        assert!(ood_metrics(&[1.0, f64::NAN], &[1.0]).is_err());
        assert!(roc_curve(&[1.0], &[f64::NAN]).is_err());
        assert!(roc_curve(&[], &[]).is_err());
        let m = ood_metrics(&[f64::NEG_INFINITY, 0.0], &[f64::INFINITY]).unwrap();
        assert_eq!(m.auroc, 1.0);
    }
}
