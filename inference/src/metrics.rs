//! Classification metrics computed in `f64` from predicted class probabilities, and regression
//! metrics of Gaussian predictives ([`regression_metrics`]: RMSE, NLL, 95% interval coverage).
//!
//! All functions take the probabilities row-major as `[N × classes]` (`probs[i * classes + k]` is
//! the probability of class `k` for example `i`) and the true labels (length `N`). They return
//! errors, never panic, on malformed input: a length that is not `N × classes`, a label
//! `≥ classes`, `N = 0`, `classes = 0`, or a probability that is not finite or is negative.
//! Rows are not required to sum to one (averaged Monte Carlo predictions may be off by rounding).
//!
//! # Calibration binning
//!
//! The *confidence* of a prediction is its largest probability; the *prediction* is the class
//! attaining it, ties broken by the lowest class index. With `B` equal-width bins, bin `b`
//! (`0 ≤ b < B`) covers the half-open interval `(b/B, (b+1)/B]` — open below, closed above.
//! This is the textbook convention (Naeini et al. 2015; Guo et al. 2017), and netcal's. A
//! confidence of exactly `0` (only possible for an all-zero row) goes to the first bin and a
//! confidence above `1` to the last. Boundaries are compared in `f64` as `b as f64 / B as f64`.
//!
//! torchmetrics 1.9 differs at the edges: its `_binning_bucketize` calls `torch.bucketize` with
//! `right=True`, so its bins are closed below, and a confidence of exactly `1` falls into a bin of
//! its own past the last (its issue #3510). For float32 probabilities only the confidences equal
//! to 1 are affected: its ECE then differs from this one when those examples are not off in the
//! same direction as the rest of the last bin (one correct prediction at 0.95 and one wrong at 1:
//! here 0.475, torchmetrics 0.525). On the LeNet-5 report of `results/report-lenet5` the two
//! agree to 1e-6 (`results/report-lenet5/agreement.md`, `bench/report_metrics_check.py`).

use crate::likelihood::HALF_LOG_2PI;
use crate::predict::RegressionPredictions;
use candle_core::{bail, Result};
use serde::{Deserialize, Serialize};

/// Number of equal-width confidence bins used by [`classification_metrics`] for ECE and MCE
/// (Guo et al. 2017 use 15).
pub const CALIBRATION_BINS: usize = 15;

/// Summary metrics of a probabilistic classifier on a labelled set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassificationMetrics {
    /// Fraction of examples whose arg-max class (lowest index on ties) equals the label.
    pub accuracy: f64,
    /// Mean negative log-likelihood `−(1/N) Σ_i ln max(p_{i,y_i}, f32::MIN_POSITIVE)`, in nats.
    pub nll: f64,
    /// Multi-class Brier score `(1/N) Σ_i Σ_k (p_{ik} − 1[k = y_i])²`, in `[0, 2]`.
    pub brier: f64,
    /// Expected calibration error with [`CALIBRATION_BINS`] equal-width bins.
    pub ece: f64,
    /// Maximum calibration error over the non-empty bins of the same binning.
    pub mce: f64,
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    /// Lower edge `b/B` of the bin (excluded, except that a confidence of exactly 0 falls here for
    /// the first bin).
    pub lower: f64,
    /// Upper edge `(b+1)/B` of the bin (included).
    pub upper: f64,
    /// Number of examples whose confidence falls in the bin.
    pub count: usize,
    /// Mean confidence of those examples; `0` for an empty bin (as torchmetrics' `nan_to_num`).
    pub mean_confidence: f64,
    /// Fraction of those examples predicted correctly; `0` for an empty bin.
    pub accuracy: f64,
}

/// Checks the shapes and values of `probs` and `labels`; returns `N`.
pub(crate) fn check_inputs(probs: &[f32], labels: &[u32], classes: usize) -> Result<usize> {
    if classes == 0 {
        bail!("classes must be at least 1");
    }
    let n = labels.len();
    if n == 0 {
        bail!("no examples: labels is empty");
    }
    match n.checked_mul(classes) {
        Some(expected) if expected == probs.len() => {}
        _ => bail!(
            "probs has {} values but {} labels × {} classes need {}",
            probs.len(),
            n,
            classes,
            n as u128 * classes as u128
        ),
    }
    if let Some((i, &y)) = labels.iter().enumerate().find(|(_, &y)| y as usize >= classes) {
        bail!("label {y} of example {i} is not below classes = {classes}");
    }
    if let Some((j, &p)) = probs.iter().enumerate().find(|(_, &p)| !p.is_finite() || p < 0.0) {
        bail!(
            "probability {p} of example {}, class {} is not a finite non-negative number",
            j / classes,
            j % classes
        );
    }
    Ok(n)
}

/// Arg-max of a row (lowest index on ties) and its value (also the prediction rule of
/// [`crate::calibration`]).
pub fn top1(row: &[f32]) -> (usize, f32) {
    let mut best = 0;
    let mut best_p = row[0];
    for (k, &p) in row.iter().enumerate().skip(1) {
        if p > best_p {
            best = k;
            best_p = p;
        }
    }
    (best, best_p)
}

/// Index of the bin `(b/B, (b+1)/B]` holding confidence `c`: the number of interior boundaries
/// `b/B` (`1 ≤ b < B`) strictly below `c`.
fn bin_index(c: f64, bins: usize) -> usize {
    let mut lo = 0usize; // invariant: boundaries 1..=lo are < c
    let mut hi = bins - 1; // boundaries above hi are not interior
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if (mid as f64) / (bins as f64) < c {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// Per-bin counts and means for a reliability diagram, with `bins` equal-width bins
/// `(b/bins, (b+1)/bins]` over the top-1 confidence (see the [module docs](self) for the edge
/// convention and how torchmetrics' differs).
///
/// For bin `b` with examples `I_b`: `count = |I_b|`,
/// `mean_confidence = (1/|I_b|) Σ_{i∈I_b} max_k p_{ik}` and
/// `accuracy = (1/|I_b|) Σ_{i∈I_b} 1[argmax_k p_{ik} = y_i]`; empty bins report zeros.
///
/// ```
/// use secateur_inference::metrics::reliability_bins;
/// // Confidences 0.9 (correct) and 0.6 (wrong) with two bins (0, 0.5] and (0.5, 1].
/// let bins = reliability_bins(&[0.9, 0.1, 0.4, 0.6], &[0, 0], 2, 2)?;
/// assert_eq!(bins[0].count, 0);
/// assert_eq!(bins[1].count, 2);
/// assert!((bins[1].mean_confidence - 0.75).abs() < 1e-7);
/// assert_eq!(bins[1].accuracy, 0.5);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn reliability_bins(probs: &[f32], labels: &[u32], classes: usize, bins: usize) -> Result<Vec<ReliabilityBin>> {
    if bins == 0 {
        bail!("bins must be at least 1");
    }
    check_inputs(probs, labels, classes)?;
    let mut count = vec![0usize; bins];
    let mut conf_sum = vec![0f64; bins];
    let mut correct = vec![0usize; bins];
    for (row, &y) in probs.chunks_exact(classes).zip(labels) {
        let (pred, conf) = top1(row);
        let b = bin_index(conf as f64, bins);
        count[b] += 1;
        conf_sum[b] += conf as f64;
        correct[b] += usize::from(pred == y as usize);
    }
    Ok((0..bins)
        .map(|b| {
            let (mean_confidence, accuracy) = if count[b] == 0 {
                (0.0, 0.0)
            } else {
                (conf_sum[b] / count[b] as f64, correct[b] as f64 / count[b] as f64)
            };
            ReliabilityBin {
                lower: b as f64 / bins as f64,
                upper: (b + 1) as f64 / bins as f64,
                count: count[b],
                mean_confidence,
                accuracy,
            }
        })
        .collect())
}

/// Accuracy, NLL, Brier score, ECE and MCE of predicted probabilities `probs` (row-major
/// `[N × classes]`) against `labels`, all accumulated in `f64`.
///
/// - accuracy `= (1/N) Σ_i 1[argmax_k p_{ik} = y_i]`, ties broken by the lowest class index;
/// - NLL `= −(1/N) Σ_i ln max(p_{i,y_i}, f32::MIN_POSITIVE)`: the probability of the true class
///   is clamped at the smallest positive normal `f32` (≈ 1.18e-38) so that a zero probability
///   gives a large finite value (≈ 87.3 nats) instead of `+∞`;
/// - Brier `= (1/N) Σ_i Σ_k (p_{ik} − 1[k = y_i])²`, the multi-class sum of Brier (1950), in
///   `[0, 2]`; some libraries divide by `K = classes` as well (then divide this value by `K`);
/// - ECE `= Σ_b (n_b/N) |acc_b − conf_b|` (Naeini et al. 2015; Guo et al. 2017) over
///   [`CALIBRATION_BINS`] = 15 equal-width bins `(b/15, (b+1)/15]` of the top-1 confidence, as
///   computed by [`reliability_bins`] (netcal's `ECE(bins=15)`; torchmetrics'
///   `multiclass_calibration_error` with `n_bins=15, norm="l1"` but for its edge convention, see
///   the [module docs](self));
/// - MCE `= max_b |acc_b − conf_b|` over the non-empty bins (netcal's `MCE`, torchmetrics'
///   `norm="max"`).
///
/// ```
/// use secateur_inference::metrics::classification_metrics;
/// // One example, two classes, p = (0.8, 0.2), label 0.
/// let m = classification_metrics(&[0.8, 0.2], &[0], 2)?;
/// assert_eq!(m.accuracy, 1.0);
/// assert!((m.nll - (-(0.8f32 as f64).ln())).abs() < 1e-12);
/// assert!((m.brier - 0.08).abs() < 1e-7); // 0.2² + 0.2²
/// assert!((m.ece - 0.2).abs() < 1e-7); // |1 − 0.8|
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn classification_metrics(probs: &[f32], labels: &[u32], classes: usize) -> Result<ClassificationMetrics> {
    let n = check_inputs(probs, labels, classes)?;
    let clamp = f32::MIN_POSITIVE as f64;
    let (mut correct, mut nll, mut brier) = (0usize, 0f64, 0f64);
    for (row, &y) in probs.chunks_exact(classes).zip(labels) {
        let y = y as usize;
        let (pred, _) = top1(row);
        correct += usize::from(pred == y);
        nll -= (row[y] as f64).max(clamp).ln();
        brier += row
            .iter()
            .enumerate()
            .map(|(k, &p)| {
                let d = p as f64 - if k == y { 1.0 } else { 0.0 };
                d * d
            })
            .sum::<f64>();
    }
    let bins = reliability_bins(probs, labels, classes, CALIBRATION_BINS)?;
    let (mut ece, mut mce) = (0f64, 0f64);
    for b in bins.iter().filter(|b| b.count > 0) {
        let gap = (b.accuracy - b.mean_confidence).abs();
        ece += b.count as f64 / n as f64 * gap;
        mce = mce.max(gap);
    }
    let n = n as f64;
    Ok(ClassificationMetrics {
        accuracy: correct as f64 / n,
        nll: nll / n,
        brier: brier / n,
        ece,
        mce,
    })
}

/// The standard normal quantile `Φ⁻¹(0.975)`: `μ ± 1.96 σ` is the central 95% interval of
/// `N(μ, σ²)`.
pub const Z_975: f64 = 1.959_963_984_540_054;

/// Summary metrics of a Gaussian regression predictive on a labelled set, averaged over the
/// examples (and summed over the target dimensions for the NLLs, as for a diagonal Gaussian).
/// In the units of the targets the predictions carry.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    /// `sqrt((1/(N·D)) Σ_{i,d} (y_{id} − μ̄_{id})²)` of the predictive mean.
    pub rmse: f64,
    /// NLL of the moment-matched Gaussian `N(μ̄, σ̄²)`, `σ̄² = aleatoric + epistemic`
    /// ([`gaussian_nll`]), mean over examples, in nats.
    pub nll: f64,
    /// NLL of the mixture predictive `−log (1/S) Σₛ N(y; μₛ, σₛ²)` ([`mixture_nll`]), mean over
    /// examples; equal to `nll` for one sample.
    pub mixture_nll: f64,
    /// Fraction of target values inside the central 95% interval `μ̄ ± 1.96 σ̄` of the
    /// moment-matched Gaussian (0.95 when calibrated).
    pub coverage_95: f64,
    /// Mean over examples and dimensions of the predictive standard deviation `σ̄`.
    pub mean_predictive_std: f64,
    /// Mean over examples and dimensions of the aleatoric variance `(1/S) Σₛ σₛ²`.
    pub mean_aleatoric_var: f64,
    /// Mean over examples and dimensions of the epistemic variance `(1/S) Σₛ μₛ² − μ̄²`.
    pub mean_epistemic_var: f64,
}

/// The negative log-density of `N(μ, var)` at `y`: `½ log(2π var) + (y − μ)² / (2 var)` (with
/// its constant).
///
/// ```
/// use secateur_inference::metrics::gaussian_nll;
/// // ½ log 2π + ½ at one standard deviation
/// assert!((gaussian_nll(1.0, 0.0, 1.0) - 1.418_938_533_204_672_7).abs() < 1e-15);
/// ```
pub fn gaussian_nll(y: f64, mu: f64, var: f64) -> f64 {
    HALF_LOG_2PI + 0.5 * var.ln() + (y - mu) * (y - mu) / (2.0 * var)
}

/// The negative log-density at `y` of the equally weighted mixture `(1/S) Σₛ N(μₛ, σₛ²)`,
/// `−log (1/S) Σₛ exp(−gaussian_nll(y, μₛ, σₛ²))`, by log-sum-exp:
/// `−(m + log Σₛ exp(ℓₛ − m)) + log S` with `ℓₛ` the log-densities and `m = maxₛ ℓₛ`, so
/// that far-out targets do not underflow (the "test log-likelihood" of MC dropout, Gal &
/// Ghahramani 2016, eq. (8)).
///
/// ```
/// use secateur_inference::metrics::{gaussian_nll, mixture_nll};
/// // identical components: the mixture is the component
/// let v = mixture_nll(0.3, &[0.0, 0.0], &[1.0, 1.0]);
/// assert!((v - gaussian_nll(0.3, 0.0, 1.0)).abs() < 1e-15);
/// ```
pub fn mixture_nll(y: f64, mu: &[f64], sigma: &[f64]) -> f64 {
    let logs: Vec<f64> = mu.iter().zip(sigma).map(|(m, s)| -gaussian_nll(y, *m, s * s)).collect();
    let m = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + logs.iter().map(|l| (l - m).exp()).sum::<f64>().ln();
    -(lse - (logs.len() as f64).ln())
}

/// RMSE, moment-matched and mixture NLL, 95% coverage and the mean variance parts of Monte Carlo
/// regression predictions (see [`RegressionMetrics`] for each formula), accumulated in `f64`.
/// The variance split is that of [`crate::predict::decompose_gaussian`] (Kendall & Gal 2017;
/// Depeweg et al. 2018). Fails on no example, a shape mismatch, or a non-finite or non-positive
/// standard deviation.
///
/// ```
/// use secateur_inference::metrics::regression_metrics;
/// use secateur_inference::predict::RegressionPredictions;
/// // two examples, one sample, σ = 1: errors 1 and 3
/// let p = RegressionPredictions {
///     sample_mean: vec![0.0, 0.0], sample_std: vec![1.0, 1.0], targets: vec![1.0, 3.0],
///     samples: 1, dim: 1,
/// };
/// let m = regression_metrics(&p)?;
/// assert!((m.rmse - 5f64.sqrt()).abs() < 1e-12);
/// assert_eq!(m.coverage_95, 0.5); // 1 < 1.96 < 3
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn regression_metrics(p: &RegressionPredictions) -> Result<RegressionMetrics> {
    if p.samples == 0 || p.dim == 0 {
        bail!(
            "regression metrics: `samples` and `dim` must be at least 1, got {} and {}",
            p.samples,
            p.dim
        );
    }
    let n = p.len();
    if n == 0 {
        bail!("regression metrics: no examples");
    }
    let want = n * p.samples * p.dim;
    if p.targets.len() != n * p.dim || p.sample_mean.len() != want || p.sample_std.len() != want {
        bail!(
            "regression metrics: {} targets, {} means and {} standard deviations do not fit N = {n}, S = {}, D = {}",
            p.targets.len(),
            p.sample_mean.len(),
            p.sample_std.len(),
            p.samples,
            p.dim
        );
    }
    if let Some((j, s)) = p
        .sample_std
        .iter()
        .enumerate()
        .find(|(_, s)| !(s.is_finite() && **s > 0.0))
    {
        bail!("regression metrics: standard deviation {s} at position {j} is not a finite positive number");
    }
    if let Some((j, v)) = p
        .sample_mean
        .iter()
        .chain(&p.targets)
        .enumerate()
        .find(|(_, v)| !v.is_finite())
    {
        bail!("regression metrics: mean or target {v} at position {j} is not finite");
    }
    let (mut se, mut nll, mut mix, mut inside) = (0f64, 0f64, 0f64, 0usize);
    let (mut std_sum, mut ale, mut epi) = (0f64, 0f64, 0f64);
    for i in 0..n {
        for d in 0..p.dim {
            let y = f64::from(p.targets[i * p.dim + d]);
            let (mu, sigma) = p.samples_of(i, d);
            let m = crate::predict::decompose_gaussian(&mu, &sigma);
            let var = m.variance();
            se += (y - m.mean) * (y - m.mean);
            nll += gaussian_nll(y, m.mean, var);
            mix += mixture_nll(y, &mu, &sigma);
            inside += usize::from((y - m.mean).abs() <= Z_975 * var.sqrt());
            std_sum += var.sqrt();
            ale += m.aleatoric;
            epi += m.epistemic;
        }
    }
    let (nf, cells) = (n as f64, (n * p.dim) as f64);
    Ok(RegressionMetrics {
        rmse: (se / cells).sqrt(),
        nll: nll / nf,
        mixture_nll: mix / nf,
        coverage_95: inside as f64 / cells,
        mean_predictive_std: std_sum / cells,
        mean_aleatoric_var: ale / cells,
        mean_epistemic_var: epi / cells,
    })
}

/// The area under the ROC curve of telling `positive` scores from `negative` ones, higher
/// scores meaning "more likely positive": the probability that a random positive scores above a
/// random negative, ties counting one half (the Mann–Whitney U statistic over `n₊ n₋`; Hanley &
/// McNeil 1982). For out-of-distribution detection by predictive entropy the positives are the
/// out-of-distribution examples. NaN scores and empty sets are refused.
///
/// ```
/// use secateur_inference::metrics::auroc;
/// assert_eq!(auroc(&[0.9, 0.8], &[0.1, 0.2]).unwrap(), 1.0);
/// assert_eq!(auroc(&[0.5], &[0.5]).unwrap(), 0.5);
/// assert!((auroc(&[0.3, 0.9], &[0.5]).unwrap() - 0.5).abs() < 1e-12);
/// ```
pub fn auroc(positive: &[f32], negative: &[f32]) -> Result<f64> {
    if positive.is_empty() || negative.is_empty() {
        bail!("auroc: needs at least one positive and one negative score");
    }
    if positive.iter().chain(negative).any(|v| v.is_nan()) {
        bail!("auroc: a score is NaN");
    }
    // Sort all scores once; each positive counts the negatives strictly below it plus half the
    // negatives tied with it.
    let mut all: Vec<(f32, bool)> = positive
        .iter()
        .map(|&v| (v, true))
        .chain(negative.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut below, mut u, mut i) = (0usize, 0f64, 0usize);
    while i < all.len() {
        let (mut j, mut pos, mut neg) = (i, 0usize, 0usize);
        while j < all.len() && all[j].0 == all[i].0 {
            if all[j].1 {
                pos += 1;
            } else {
                neg += 1;
            }
            j += 1;
        }
        u += pos as f64 * (below as f64 + 0.5 * neg as f64);
        below += neg;
        i = j;
    }
    Ok(u / (positive.len() as f64 * negative.len() as f64))
}
