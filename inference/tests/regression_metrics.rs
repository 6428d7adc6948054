//! Regression metrics against hand computations (in the comments) and independent f64 code.

use candle_core::Result;
use secateur_inference::metrics::{gaussian_nll, mixture_nll, regression_metrics, Z_975};
use secateur_inference::predict::RegressionPredictions;

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

#[test]
fn metrics_by_hand_on_two_examples_and_two_samples() -> Result<()> {
    // Example 0: y = 1, samples (μ, σ) = (0, 1), (2, 1): μ̄ = 1, aleatoric 1, epistemic 1, var 2.
    // Example 1: y = 4, samples (1, 0.5), (1, 0.5): μ̄ = 1, aleatoric 0.25, epistemic 0, var 0.25.
    let p = RegressionPredictions {
        sample_mean: vec![0.0, 2.0, 1.0, 1.0],
        sample_std: vec![1.0, 1.0, 0.5, 0.5],
        targets: vec![1.0, 4.0],
        samples: 2,
        dim: 1,
    };
    let m = regression_metrics(&p)?;
    // RMSE = sqrt((0² + 3²)/2) = sqrt(4.5)
    assert!(close(m.rmse, 4.5f64.sqrt(), 1e-15));
    // moment-matched NLL: ex0 ½ log(2π·2) + 0; ex1 ½ log(2π·0.25) + 9/(2·0.25) = ... + 18
    let c = 0.5 * (2.0 * std::f64::consts::PI).ln();
    let want = ((c + 0.5 * 2f64.ln()) + (c + 0.5 * 0.25f64.ln() + 18.0)) / 2.0;
    assert!(close(m.nll, want, 1e-14), "{} vs {want}", m.nll);
    // mixture NLL: ex0 −log N(1; 0, 1) (both components equal at y = 1) = c + ½;
    // ex1 the single component: c + log 0.5 + 18
    let want_mix = ((c + 0.5) + (c + 0.5f64.ln() + 18.0)) / 2.0;
    assert!(close(m.mixture_nll, want_mix, 1e-14), "{} vs {want_mix}", m.mixture_nll);
    // coverage: ex0 inside (error 0), ex1 outside (3 > 1.96·0.5)
    assert_eq!(m.coverage_95, 0.5);
    assert!(close(m.mean_aleatoric_var, 0.625, 1e-15));
    assert!(close(m.mean_epistemic_var, 0.5, 1e-15));
    assert!(close(m.mean_predictive_std, (2f64.sqrt() + 0.5) / 2.0, 1e-15));
    Ok(())
}

#[test]
fn mixture_nll_is_stable_and_matches_the_direct_sum() {
    // moderate values: the direct −log((1/S) Σ pdf) agrees
    let (mu, sigma) = ([0.0, 1.5, -0.5], [1.0, 0.3, 2.0]);
    let y = 0.7;
    let direct = -((mu
        .iter()
        .zip(&sigma)
        .map(|(m, s)| (-gaussian_nll(y, *m, s * s)).exp())
        .sum::<f64>())
        / 3.0)
        .ln();
    assert!(close(mixture_nll(y, &mu, &sigma), direct, 1e-14));
    // far out: every density underflows in f64, log-sum-exp does not; the nearest-in-NLL
    // component dominates: NLL ≈ min_s gaussian_nll + log S
    let y = 1e3;
    let v = mixture_nll(y, &[0.0, 1.0], &[0.01, 0.01]);
    let best = gaussian_nll(y, 1.0, 1e-4);
    assert!(v.is_finite());
    assert!(close(v, best + 2f64.ln(), 1e-12), "{v} vs {}", best + 2f64.ln());
}

#[test]
fn coverage_counts_targets_inside_mean_plus_minus_1_96_sigma() -> Result<()> {
    // σ = 2: targets just inside ±1.96·2, one just outside, one at the mean → 3 of 4 covered.
    let p = RegressionPredictions {
        sample_mean: vec![0.0; 4],
        sample_std: vec![2.0; 4],
        targets: vec![
            (2.0 * Z_975 - 1e-6) as f32,
            (-2.0 * Z_975 + 1e-6) as f32,
            (2.0 * Z_975 + 1e-3) as f32,
            0.0,
        ],
        samples: 1,
        dim: 1,
    };
    assert_eq!(regression_metrics(&p)?.coverage_95, 0.75);
    Ok(())
}

#[test]
fn rescaling_maps_metrics_to_the_original_units() -> Result<()> {
    // y ↦ 5 + 2y: RMSE × 2, NLL + log 2, coverage unchanged.
    let p = RegressionPredictions {
        sample_mean: vec![0.1, 0.3, -0.2, 0.0, 0.5, 0.4],
        sample_std: vec![0.5, 0.6, 0.4, 0.7, 0.3, 0.2],
        targets: vec![0.2, -0.5, 1.0],
        samples: 2,
        dim: 1,
    };
    let a = regression_metrics(&p)?;
    let b = regression_metrics(&p.rescaled(5.0, 2.0)?)?;
    assert!(close(b.rmse, 2.0 * a.rmse, 1e-6));
    assert!(close(b.nll, a.nll + 2f64.ln(), 1e-6));
    assert!(close(b.mixture_nll, a.mixture_nll + 2f64.ln(), 1e-6));
    assert_eq!(a.coverage_95, b.coverage_95);
    assert!(close(b.mean_epistemic_var, 4.0 * a.mean_epistemic_var, 1e-6));
    assert!(p.rescaled(0.0, 0.0).is_err());
    Ok(())
}

#[test]
fn malformed_predictions_are_refused() {
    let good = RegressionPredictions {
        sample_mean: vec![0.0, 0.0],
        sample_std: vec![1.0, 1.0],
        targets: vec![0.0],
        samples: 2,
        dim: 1,
    };
    assert!(regression_metrics(&good).is_ok());
    let mut bad = good.clone();
    bad.sample_std[1] = 0.0;
    assert!(regression_metrics(&bad)
        .unwrap_err()
        .to_string()
        .contains("standard deviation"));
    let mut bad = good.clone();
    bad.samples = 3;
    assert!(regression_metrics(&bad).is_err());
    let mut bad = good;
    bad.targets.clear();
    assert!(regression_metrics(&bad)
        .unwrap_err()
        .to_string()
        .contains("no examples"));
}
