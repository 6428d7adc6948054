//! Divergences: closed forms against Monte Carlo and numerical quadrature, limits, and the
//! variational-dropout approximations against their published formulas.

mod common;

use candle_core::{Device, Result, Tensor};
use common::{vec, Z};
use secateur_bayes::divergence::*;
use secateur_bayes::{Prior, SeededRng};

fn t(v: &[f64]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap()
}

fn scalar(x: Tensor) -> f64 {
    x.to_scalar::<f64>().unwrap()
}

/// `∫ f(w) dw` by the trapezoid rule on `[lo, hi]` with `n` intervals.
fn integrate(f: impl Fn(f64) -> f64, lo: f64, hi: f64, n: usize) -> f64 {
    let h = (hi - lo) / n as f64;
    let mut s = 0.5 * (f(lo) + f(hi));
    for i in 1..n {
        s += f(lo + i as f64 * h);
    }
    s * h
}

fn normal_pdf(w: f64, m: f64, s: f64) -> f64 {
    (-0.5 * ((w - m) / s).powi(2)).exp() / (s * (2.0 * std::f64::consts::PI).sqrt())
}

const MU: [f64; 5] = [0.0, 0.3, -1.2, 2.0, 0.05];
const SIGMA: [f64; 5] = [1.0, 0.2, 0.7, 1.5, 0.01];

#[test]
fn analytic_kl_matches_quadrature_is_nonnegative_and_zero_at_the_prior() -> Result<()> {
    let (pm, ps) = (0.1, 0.8);
    let kl = vec(&kl_gaussian_elementwise(&t(&MU), &t(&SIGMA), pm, ps)?);
    for i in 0..MU.len() {
        // Independent check: ∫ q log(q/p) on ±12σ around μ, 200k intervals.
        let (m, s) = (MU[i], SIGMA[i]);
        let quad = integrate(
            |w| {
                let q = normal_pdf(w, m, s);
                if q == 0.0 {
                    0.0
                } else {
                    q * (q.ln() - normal_pdf(w, pm, ps).ln())
                }
            },
            m - 12.0 * s,
            m + 12.0 * s,
            200_000,
        );
        assert!(
            (kl[i] - quad).abs() < 1e-6 * quad.abs().max(1.0),
            "{i}: {} vs {quad}",
            kl[i]
        );
        assert!(kl[i] >= 0.0);
    }
    // KL(q‖q) = 0
    let same = scalar(kl_gaussian(&t(&[0.1, 0.1]), &t(&[0.8, 0.8]), 0.1, 0.8)?);
    assert!(same.abs() < 1e-15, "{same}");
    // summed, not averaged
    let total = scalar(kl_gaussian(&t(&MU), &t(&SIGMA), pm, ps)?);
    assert!((total - kl.iter().sum::<f64>()).abs() < 1e-12);
    Ok(())
}

#[test]
fn monte_carlo_kl_agrees_with_analytic_within_sampling_error() -> Result<()> {
    // Moderate σ so the per-draw variance is small enough for a sharp test.
    let mu = t(&[0.0, 0.3, -1.2, 2.0, 0.5]);
    let sigma = t(&[1.0, 0.2, 0.7, 1.5, 0.4]);
    let prior = Prior::gaussian(0.0, 1.0).unwrap();
    let exact = scalar(kl_gaussian(&mu, &sigma, 0.0, 1.0)?);
    // The standard error is estimated from S single-draw estimates T_s (each unbiased):
    // SE = sd(T_s) / √S.
    let s = 4000;
    let mut rng = SeededRng::new(11);
    let draws: Vec<f64> = (0..s)
        .map(|_| scalar(kl_monte_carlo(&mu, &sigma, &prior, 1, &mut rng).unwrap()))
        .collect();
    let mean = draws.iter().sum::<f64>() / s as f64;
    let sd = (draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (s as f64 - 1.0)).sqrt();
    let se = sd / (s as f64).sqrt();
    assert!(
        (mean - exact).abs() < Z * se,
        "mean of single draws {mean} vs {exact} (SE {se})"
    );
    let batched = scalar(kl_monte_carlo(&mu, &sigma, &prior, s, &mut rng)?);
    assert!(
        (batched - exact).abs() < Z * se,
        "kl-mc:{s} {batched} vs {exact} (SE {se})"
    );
    // The dispatcher gives the same estimate for the same seed.
    let a = scalar(gaussian_divergence(
        &Divergence::KlMonteCarlo { samples: 3 },
        &mu,
        &sigma,
        &prior,
        &mut SeededRng::new(5),
    )?);
    let b = scalar(kl_monte_carlo(&mu, &sigma, &prior, 3, &mut SeededRng::new(5))?);
    assert_eq!(a, b);
    Ok(())
}

#[test]
fn monte_carlo_kl_to_a_scale_mixture_matches_quadrature() -> Result<()> {
    let prior = Prior::scale_mixture(0.5, 1.0, 0.05).unwrap();
    let (m, s) = (0.2, 0.3);
    let p = |w: f64| 0.5 * normal_pdf(w, 0.0, 1.0) + 0.5 * normal_pdf(w, 0.0, 0.05);
    let exact = integrate(
        |w| {
            let q = normal_pdf(w, m, s);
            q * (q.ln() - p(w).ln())
        },
        m - 12.0 * s,
        m + 12.0 * s,
        200_000,
    );
    let n = 20_000;
    let mut rng = SeededRng::new(3);
    let draws: Vec<f64> = (0..n)
        .map(|_| scalar(kl_monte_carlo(&t(&[m]), &t(&[s]), &prior, 1, &mut rng).unwrap()))
        .collect();
    let mean = draws.iter().sum::<f64>() / n as f64;
    let se = (draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0)).sqrt() / (n as f64).sqrt();
    assert!((mean - exact).abs() < Z * se, "{mean} vs quadrature {exact} (SE {se})");
    // and the analytic estimator refuses a non-Gaussian prior with a pointer to kl-mc
    let e = gaussian_divergence(&Divergence::Kl, &t(&[m]), &t(&[s]), &prior, &mut rng).unwrap_err();
    assert!(e.to_string().contains("kl-mc"), "{e}");
    Ok(())
}

#[test]
fn jsg_limits_are_forward_and_reverse_kl() -> Result<()> {
    // α → 0: G_α → p, JS^Gα → KL(q‖p); α → 1: G_α → q, JS^Gα → KL(p‖q). Derivation: with
    // G_α ∝ q^α p^{1−α}, JS^Gα = (1−α) KL(q‖G_α) + α KL(p‖G_α). The approach is O(α σₚ²/σ²), so
    // the near-limit α is 1e-10 (σ goes down to 0.01 here).
    let (pm, ps) = (0.2, 0.9);
    let (mu, sigma) = (t(&MU), t(&SIGMA));
    let fwd = vec(&kl_gaussian_elementwise(&mu, &sigma, pm, ps)?);
    for alpha in [0.0, 1e-10] {
        let js = vec(&jsg_gaussian_elementwise(&mu, &sigma, pm, ps, alpha)?);
        for i in 0..MU.len() {
            assert!(
                (js[i] - fwd[i]).abs() < 1e-4 * fwd[i].max(1.0),
                "α={alpha} {i}: {} vs {}",
                js[i],
                fwd[i]
            );
        }
    }
    for alpha in [1.0, 1.0 - 1e-10] {
        let js = vec(&jsg_gaussian_elementwise(&mu, &sigma, pm, ps, alpha)?);
        for i in 0..MU.len() {
            // KL(p‖q) with the roles swapped: p = N(pm, ps²) is "posterior", q the "prior".
            let rev = scalar(kl_gaussian(&t(&[pm]), &t(&[ps]), MU[i], SIGMA[i])?);
            assert!(
                (js[i] - rev).abs() < 1e-4 * rev.max(1.0),
                "α={alpha} {i}: {} vs {rev}",
                js[i]
            );
        }
    }
    Ok(())
}

#[test]
fn jsg_matches_its_definition_by_quadrature_and_is_symmetric_at_half() -> Result<()> {
    let (pm, ps) = (-0.3, 1.1);
    for alpha in [0.2, 0.5, 0.8] {
        for i in 0..4 {
            let (m, s) = (MU[i], SIGMA[i]);
            let js = scalar(jsg_gaussian(&t(&[m]), &t(&[s]), pm, ps, alpha)?);
            // Independent: normalise q^α p^{1−α} numerically, then (1−α)KL(q‖G) + αKL(p‖G).
            let (lo, hi) = (-15.0, 15.0);
            let g_un = |w: f64| normal_pdf(w, m, s).powf(alpha) * normal_pdf(w, pm, ps).powf(1.0 - alpha);
            let z = integrate(g_un, lo, hi, 400_000);
            let kl_to_g = |dm: f64, ds: f64| {
                integrate(
                    |w| {
                        let d = normal_pdf(w, dm, ds);
                        let g = g_un(w) / z;
                        if d == 0.0 || g == 0.0 {
                            0.0
                        } else {
                            d * (d.ln() - g.ln())
                        }
                    },
                    lo,
                    hi,
                    400_000,
                )
            };
            let reference = (1.0 - alpha) * kl_to_g(m, s) + alpha * kl_to_g(pm, ps);
            assert!(
                (js - reference).abs() < 1e-5 * reference.max(1.0),
                "α={alpha} {i}: {js} vs {reference}"
            );
            assert!(js >= 0.0);
        }
    }
    // symmetric at α = ½: JS(q, p) = JS(p, q)
    for i in 0..MU.len() {
        let a = scalar(jsg_gaussian(&t(&[MU[i]]), &t(&[SIGMA[i]]), pm, ps, 0.5)?);
        let b = scalar(jsg_gaussian(&t(&[pm]), &t(&[ps]), MU[i], SIGMA[i], 0.5)?);
        assert!((a - b).abs() < 1e-10 * a.max(1.0), "{a} vs {b}");
    }
    // zero when q = p
    assert!(scalar(jsg_gaussian(&t(&[pm]), &t(&[ps]), pm, ps, 0.3)?).abs() < 1e-14);
    Ok(())
}

#[test]
fn sparse_vd_approximation_matches_its_formula() -> Result<()> {
    let las = [-8.0, -3.0, -0.5, 0.0, 2.5, 3.0, 8.0];
    let kl = vec(&kl_sparse_vd_elementwise(&t(&las))?);
    for (la, k) in las.iter().zip(&kl) {
        // −KL = k₁ σ(k₂ + k₃ log α) − ½ log(1 + 1/α) − k₁, evaluated directly in f64.
        let sig = 1.0 / (1.0 + (-(MOLCHANOV_K2 + MOLCHANOV_K3 * la)).exp());
        let expected = -(MOLCHANOV_K1 * sig - 0.5 * (1.0 + (-la).exp()).ln() - MOLCHANOV_K1);
        assert!((k - expected).abs() < 1e-12, "log α = {la}: {k} vs {expected}");
    }
    // the published constants
    assert_eq!((MOLCHANOV_K1, MOLCHANOV_K2, MOLCHANOV_K3), (0.63576, 1.87320, 1.48695));
    // the KL decreases in α towards 0 and is positive on the clipped range
    assert!(kl.windows(2).all(|w| w[0] > w[1]));
    assert!(kl.iter().all(|&k| k > 0.0));
    assert!(kl[6] < 1e-3);
    let total = scalar(kl_sparse_vd(&t(&las))?);
    assert!((total - kl.iter().sum::<f64>()).abs() < 1e-12);
    Ok(())
}

#[test]
fn kingma_approximation_matches_its_formula() -> Result<()> {
    let las = [-6.0, -2.0, -0.5, 0.0];
    let kl = vec(&kl_vd_kingma_elementwise(&t(&las))?);
    for (la, k) in las.iter().zip(&kl) {
        let a: f64 = la.exp();
        let expected = -(0.5 * la + KINGMA_C1 * a + KINGMA_C2 * a * a + KINGMA_C3 * a * a * a);
        assert!((k - expected).abs() < 1e-12, "log α = {la}: {k} vs {expected}");
    }
    assert_eq!((KINGMA_C1, KINGMA_C2, KINGMA_C3), (1.16145124, -1.50204118, 0.58629921));
    // decreasing in α on α ≤ 1 (more noise, closer to the prior)
    assert!(kl.windows(2).all(|w| w[0] > w[1]));
    Ok(())
}
