//! Calibration of Gaussian regression predictives: the coverage and width of central prediction
//! intervals at several levels ([`interval_coverage`]), and the continuous ranked probability
//! score (CRPS) of a Gaussian ([`crps_gaussian`], [`mean_crps`]) and of an equally weighted
//! Gaussian mixture ([`crps_mixture`], the Monte Carlo predictive of `S` posterior samples).
//!
//! The standard normal functions these need are implemented here in `f64` (no special-function
//! dependency): [`erf`] and [`erfc`] by W. J. Cody's rational Chebyshev approximations ("Rational
//! Chebyshev approximations for the error function", Math. Comp. 23, 1969, the `CALERF` of
//! SPECFUN), [`normal_cdf`] `Φ` and [`normal_pdf`] `φ` from them, and [`normal_quantile`] `Φ⁻¹`
//! by Wichura's algorithm AS 241 (`PPND16`, Applied Statistics 37, 1988), accurate to about
//! 1e-16 relative. The tests check them against 30-digit values (mpmath) to 1e-13 relative.

use candle_core::{bail, Result};

/// The default interval levels of [`interval_coverage`]: 10%, 20%, …, 90%, 95% and 99%.
pub const DEFAULT_COVERAGE_LEVELS: [f64; 11] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99];

/// `1/√π`.
const FRAC_1_SQRT_PI: f64 = 0.564_189_583_547_756_286_948_079_451_560_772_6;
/// `1/√(2π)`.
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_677_939_946_059_934_381_9;

// Cody (1969) coefficients, as published in CALERF. A/B: erf(x) = x·A(x²)/B(x²) on |x| ≤ 0.46875;
// C/D: erfc(x) = exp(−x²)·C(x)/D(x) on 0.46875 < x ≤ 4; P/Q: erfc(x) = exp(−x²)/x·(1/√π −
// x⁻²·P(x⁻²)/Q(x⁻²)) for x > 4. Highest-degree coefficient last (A[4], C[8], P[5]) as in CALERF's
// evaluation order.
#[allow(clippy::excessive_precision)]
const ERF_A: [f64; 5] = [
    3.161_123_743_870_565_60e0,
    1.138_641_541_510_501_56e2,
    3.774_852_376_853_020_21e2,
    3.209_377_589_138_469_47e3,
    1.857_777_061_846_031_53e-1,
];
#[allow(clippy::excessive_precision)]
const ERF_B: [f64; 4] = [
    2.360_129_095_234_412_09e1,
    2.440_246_379_344_441_73e2,
    1.282_616_526_077_372_28e3,
    2.844_236_833_439_170_62e3,
];
#[allow(clippy::excessive_precision)]
const ERF_C: [f64; 9] = [
    5.641_884_969_886_700_89e-1,
    8.883_149_794_388_375_94e0,
    6.611_919_063_714_162_95e1,
    2.986_351_381_974_001_31e2,
    8.819_522_212_417_690_90e2,
    1.712_047_612_634_070_58e3,
    2.051_078_377_826_071_47e3,
    1.230_339_354_797_997_25e3,
    2.153_115_354_744_038_46e-8,
];
#[allow(clippy::excessive_precision)]
const ERF_D: [f64; 8] = [
    1.574_492_611_070_983_47e1,
    1.176_939_508_913_124_99e2,
    5.371_811_018_620_098_58e2,
    1.621_389_574_566_690_19e3,
    3.290_799_235_733_459_63e3,
    4.362_619_090_143_247_16e3,
    3.439_367_674_143_721_64e3,
    1.230_339_354_803_749_42e3,
];
#[allow(clippy::excessive_precision)]
const ERF_P: [f64; 6] = [
    3.053_266_349_612_323_44e-1,
    3.603_448_999_498_044_39e-1,
    1.257_817_261_112_292_46e-1,
    1.608_378_514_874_227_66e-2,
    6.587_491_615_298_378_03e-4,
    1.631_538_713_730_209_78e-2,
];
#[allow(clippy::excessive_precision)]
const ERF_Q: [f64; 5] = [
    2.568_520_192_289_822_42e0,
    1.872_952_849_923_460_47e0,
    5.279_051_029_514_284_12e-1,
    6.051_834_131_244_131_91e-2,
    2.335_204_976_268_691_85e-3,
];

/// `erf(x) = x·A(x²)/B(x²)` for `|x| ≤ 0.46875` (Cody's first interval).
fn erf_small(x: f64) -> f64 {
    let z = x * x;
    let (mut num, mut den) = (ERF_A[4] * z, z);
    for i in 0..3 {
        num = (num + ERF_A[i]) * z;
        den = (den + ERF_B[i]) * z;
    }
    x * (num + ERF_A[3]) / (den + ERF_B[3])
}

/// `erfc(y)` for `y > 0.46875` (Cody's second and third intervals). `exp(−y²)` is computed as
/// `exp(−s²)·exp(−(y − s)(y + s))` with `s = ⌊16y⌋/16`, whose square is exact, so that the
/// rounding of `y²` is not amplified by the exponential (as CALERF does).
fn erfc_large(y: f64) -> f64 {
    // erfc(y) < 1e-308 (below the smallest normal f64) beyond CALERF's XBIG = 26.543.
    if y >= 26.543 {
        return 0.0;
    }
    let r = if y <= 4.0 {
        let (mut num, mut den) = (ERF_C[8] * y, y);
        for i in 0..7 {
            num = (num + ERF_C[i]) * y;
            den = (den + ERF_D[i]) * y;
        }
        (num + ERF_C[7]) / (den + ERF_D[7])
    } else {
        let z = 1.0 / (y * y);
        let (mut num, mut den) = (ERF_P[5] * z, z);
        for i in 0..4 {
            num = (num + ERF_P[i]) * z;
            den = (den + ERF_Q[i]) * z;
        }
        (FRAC_1_SQRT_PI - z * (num + ERF_P[4]) / (den + ERF_Q[4])) / y
    };
    let s = (y * 16.0).trunc() / 16.0;
    let del = (y - s) * (y + s);
    (-s * s).exp() * (-del).exp() * r
}

/// The error function `erf(x) = (2/√π) ∫₀ˣ e^{−t²} dt`, to about 1e-16 relative (Cody 1969).
/// `erf(±∞) = ±1`; NaN gives NaN.
///
/// ```
/// use secateur_inference::regression_calibration::erf;
/// assert!((erf(1.0) - 0.842_700_792_949_714_9).abs() < 1e-15);
/// assert_eq!(erf(-1.0), -erf(1.0));
/// ```
pub fn erf(x: f64) -> f64 {
    let y = x.abs();
    if y.is_nan() {
        return f64::NAN;
    }
    if y <= 0.46875 {
        erf_small(x)
    } else {
        let v = 1.0 - erfc_large(y);
        if x < 0.0 {
            -v
        } else {
            v
        }
    }
}

/// The complementary error function `erfc(x) = 1 − erf(x)`, to about 1e-16 relative also in the
/// far right tail (no cancellation: computed directly for `x > 0.46875`; `erfc(x) = 2 − erfc(−x)`
/// for `x < −0.46875`). Underflows to 0 for `x ≥ 26.543`; NaN gives NaN.
///
/// ```
/// use secateur_inference::regression_calibration::erfc;
/// assert!((erfc(5.0) / 1.537_459_794_428_034_8e-12 - 1.0).abs() < 1e-14);
/// ```
pub fn erfc(x: f64) -> f64 {
    let y = x.abs();
    if y.is_nan() {
        return f64::NAN;
    }
    if y <= 0.46875 {
        1.0 - erf_small(x)
    } else if x > 0.0 {
        erfc_large(y)
    } else {
        2.0 - erfc_large(y)
    }
}

/// The standard normal density `φ(x) = exp(−x²/2)/√(2π)`.
pub fn normal_pdf(x: f64) -> f64 {
    FRAC_1_SQRT_2PI * (-0.5 * x * x).exp()
}

/// The standard normal distribution function `Φ(x) = ½ erfc(−x/√2)`, with no cancellation in
/// either tail: about 1e-15 relative for `|x| ≤ 5`; further into the lower tail the rounding of
/// `x/√2` costs about `x² · 1e-16` relative (measured against mpmath: 1e-14 at `x = −10`, 2e-13
/// at `x = −37`). `Φ(x)` underflows to 0 below about `x = −38.5`.
///
/// ```
/// use secateur_inference::regression_calibration::normal_cdf;
/// assert_eq!(normal_cdf(0.0), 0.5);
/// assert!((normal_cdf(1.959_963_984_540_054) - 0.975).abs() < 1e-15);
/// ```
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x * std::f64::consts::FRAC_1_SQRT_2)
}

// Wichura (1988) AS 241 PPND16 coefficients, lowest degree first. A/B: |p − ½| ≤ 0.425, in
// r = 0.180625 − q²; C/D: r = √(−ln min(p, 1−p)) ≤ 5, in r − 1.6; E/F: r > 5, in r − 5.
#[allow(clippy::excessive_precision)]
const PPND_A: [f64; 8] = [
    3.387_132_872_796_366_608_0e0,
    1.331_416_678_917_843_774_5e2,
    1.971_590_950_306_551_442_7e3,
    1.373_169_376_550_946_112_5e4,
    4.592_195_393_154_987_145_7e4,
    6.726_577_092_700_870_085_3e4,
    3.343_057_558_358_812_810_5e4,
    2.509_080_928_730_122_672_7e3,
];
#[allow(clippy::excessive_precision)]
const PPND_B: [f64; 8] = [
    1.0,
    4.231_333_070_160_091_125_2e1,
    6.871_870_074_920_579_083_0e2,
    5.394_196_021_424_751_107_7e3,
    2.121_379_430_158_659_586_7e4,
    3.930_789_580_009_271_061_0e4,
    2.872_908_573_572_194_267_4e4,
    5.226_495_278_852_854_561_0e3,
];
#[allow(clippy::excessive_precision)]
const PPND_C: [f64; 8] = [
    1.423_437_110_749_683_577_34e0,
    4.630_337_846_156_545_295_90e0,
    5.769_497_221_460_691_405_50e0,
    3.647_848_324_763_204_605_04e0,
    1.270_458_252_452_368_382_58e0,
    2.417_807_251_774_506_117_70e-1,
    2.272_384_498_926_918_458_33e-2,
    7.745_450_142_783_414_076_40e-4,
];
#[allow(clippy::excessive_precision)]
const PPND_D: [f64; 8] = [
    1.0,
    2.053_191_626_637_758_821_87e0,
    1.676_384_830_183_803_849_40e0,
    6.897_673_349_851_000_045_50e-1,
    1.481_039_764_274_800_745_90e-1,
    1.519_866_656_361_645_719_66e-2,
    5.475_938_084_995_344_946_00e-4,
    1.050_750_071_644_416_843_24e-9,
];
#[allow(clippy::excessive_precision)]
const PPND_E: [f64; 8] = [
    6.657_904_643_501_103_777_20e0,
    5.463_784_911_164_114_369_90e0,
    1.784_826_539_917_291_335_80e0,
    2.965_605_718_285_048_912_30e-1,
    2.653_218_952_657_612_309_30e-2,
    1.242_660_947_388_078_438_60e-3,
    2.711_555_568_743_487_578_15e-5,
    2.010_334_399_292_288_132_65e-7,
];
#[allow(clippy::excessive_precision)]
const PPND_F: [f64; 8] = [
    1.0,
    5.998_322_065_558_879_376_90e-1,
    1.369_298_809_227_358_053_10e-1,
    1.487_536_129_085_061_485_25e-2,
    7.868_691_311_456_132_591_00e-4,
    1.846_318_317_510_054_681_80e-5,
    1.421_511_758_316_445_888_70e-7,
    2.044_263_103_389_939_785_64e-15,
];

/// `(Σ_k num[k] r^k) / (Σ_k den[k] r^k)` by Horner's rule.
fn rational(num: &[f64; 8], den: &[f64; 8], r: f64) -> f64 {
    let p = num.iter().rev().fold(0.0, |acc, &c| acc * r + c);
    let q = den.iter().rev().fold(0.0, |acc, &c| acc * r + c);
    p / q
}

/// The standard normal quantile `Φ⁻¹(p)` by Wichura's AS 241 (`PPND16`), about 1e-16 relative
/// over `(0, 1)` (down to the smallest subnormal `p`). `Φ⁻¹(0) = −∞`, `Φ⁻¹(1) = +∞`, NaN outside
/// `[0, 1]`. Note `Φ⁻¹(1 − ε)` can only be as accurate as `1 − ε` is representable; pass the lower
/// tail probability and negate for upper-tail quantiles.
///
/// ```
/// use secateur_inference::regression_calibration::normal_quantile;
/// assert!((normal_quantile(0.975) - 1.959_963_984_540_054).abs() < 1e-15);
/// assert_eq!(normal_quantile(0.5), 0.0);
/// ```
pub fn normal_quantile(p: f64) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        return q * rational(&PPND_A, &PPND_B, 0.180_625 - q * q);
    }
    let tail = if q < 0.0 { p } else { 1.0 - p };
    let r = (-tail.ln()).sqrt();
    let v = if r <= 5.0 {
        rational(&PPND_C, &PPND_D, r - 1.6)
    } else {
        rational(&PPND_E, &PPND_F, r - 5.0)
    };
    if q < 0.0 {
        -v
    } else {
        v
    }
}

/// Coverage and width of one central prediction interval level.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IntervalCoverage {
    /// Nominal level `ℓ` of the central interval `μ ± z σ`, `z = Φ⁻¹((1 + ℓ)/2)`.
    pub level: f64,
    /// Fraction of targets inside the interval (closed: `|y − μ| ≤ z σ`); `ℓ` when calibrated.
    pub coverage: f64,
    /// Mean over examples of the interval width `2 z σ`, in the units of the targets.
    pub mean_width: f64,
}

/// Checks that `mean`, `std` and `targets` have the same non-zero length, finite means and targets
/// and finite positive standard deviations; returns the length.
fn check_gaussian(what: &str, mean: &[f64], std: &[f64], targets: &[f64]) -> Result<usize> {
    let n = targets.len();
    if n == 0 {
        bail!("{what}: no examples");
    }
    if mean.len() != n || std.len() != n {
        bail!(
            "{what}: {} means, {} standard deviations and {n} targets differ in length",
            mean.len(),
            std.len()
        );
    }
    if let Some((i, s)) = std.iter().enumerate().find(|(_, s)| !(s.is_finite() && **s > 0.0)) {
        bail!("{what}: standard deviation {s} of example {i} is not a finite positive number");
    }
    if let Some((i, v)) = mean
        .iter()
        .zip(targets)
        .enumerate()
        .find(|(_, (m, y))| !(m.is_finite() && y.is_finite()))
    {
        bail!("{what}: mean {} or target {} of example {i} is not finite", v.0, v.1);
    }
    Ok(n)
}

/// Coverage and mean width of the central intervals `μᵢ ± z σᵢ`, `z = Φ⁻¹((1 + ℓ)/2)`, of the
/// Gaussian predictives `N(μᵢ, σᵢ²)` at each level `ℓ` of `levels` (e.g.
/// [`DEFAULT_COVERAGE_LEVELS`]): coverage `= (1/N) Σᵢ 1[|yᵢ − μᵢ| ≤ z σᵢ]` (the interval is
/// closed, as `metrics::regression_metrics`' 95% coverage), width `= (1/N) Σᵢ 2 z σᵢ`. A calibrated
/// predictive has coverage `ℓ` at every level, up to the binomial noise
/// `√(ℓ(1 − ℓ)/N)` (0.0007 at ℓ = 0.95, N = 100 000).
///
/// For Monte Carlo predictions pass the moment-matched Gaussian (mean and standard deviation of
/// the mixture, [`crate::predict::decompose_gaussian`]). Refuses: lengths that differ, no example,
/// a non-finite mean or target, a standard deviation that is not finite and positive, a level
/// outside the open interval `(0, 1)`. An empty `levels` gives an empty result.
///
/// ```
/// use secateur_inference::regression_calibration::interval_coverage;
/// // errors 0.5 and 3 with σ = 1: the 95% interval ±1.96 holds only the first
/// let c = interval_coverage(&[0.0, 0.0], &[1.0, 1.0], &[0.5, 3.0], &[0.95])?;
/// assert_eq!(c[0].coverage, 0.5);
/// assert!((c[0].mean_width - 2.0 * 1.959_963_984_540_054).abs() < 1e-12);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn interval_coverage(mean: &[f64], std: &[f64], targets: &[f64], levels: &[f64]) -> Result<Vec<IntervalCoverage>> {
    let n = check_gaussian("interval_coverage", mean, std, targets)?;
    if let Some(l) = levels.iter().find(|l| !(**l > 0.0 && **l < 1.0)) {
        bail!("interval_coverage: level {l} is not in (0, 1)");
    }
    let std_sum: f64 = std.iter().sum();
    Ok(levels
        .iter()
        .map(|&level| {
            let z = normal_quantile(0.5 + 0.5 * level);
            let inside = (0..n).filter(|&i| (targets[i] - mean[i]).abs() <= z * std[i]).count();
            IntervalCoverage {
                level,
                coverage: inside as f64 / n as f64,
                mean_width: 2.0 * z * std_sum / n as f64,
            }
        })
        .collect())
}

/// `E|X|` for `X ~ N(m, s²)`: `m (2Φ(m/s) − 1) + 2 s φ(m/s)`, and `|m|` for `s = 0`.
fn abs_moment(m: f64, s: f64) -> f64 {
    if s == 0.0 {
        return m.abs();
    }
    let z = m / s;
    m * (2.0 * normal_cdf(z) - 1.0) + 2.0 * s * normal_pdf(z)
}

/// The continuous ranked probability score `CRPS(F, y) = ∫ (F(x) − 1[x ≥ y])² dx` of the Gaussian
/// predictive `F = N(μ, σ²)` at the outcome `y`, by the closed form of Gneiting & Raftery (2007,
/// eq. (21)):
///
/// ```text
/// CRPS(N(μ, σ²), y) = σ [z (2Φ(z) − 1) + 2φ(z) − 1/√π],   z = (y − μ)/σ
/// ```
///
/// In the units of `y`; lower is better; `0` only for a point mass at `y`. Negatively oriented
/// and strictly proper, it equals the mean absolute error for `σ → 0` (returned exactly for
/// `σ = 0`). NaN for a negative or NaN `σ`.
///
/// ```
/// use secateur_inference::regression_calibration::crps_gaussian;
/// // at the mean, σ (2φ(0) − 1/√π) = σ (√2 − 1)/√π
/// let v = crps_gaussian(0.0, 0.0, 2.0);
/// assert!((v - 2.0 * (2f64.sqrt() - 1.0) / std::f64::consts::PI.sqrt()).abs() < 1e-15);
/// ```
pub fn crps_gaussian(y: f64, mu: f64, sigma: f64) -> f64 {
    if sigma.is_nan() || sigma < 0.0 {
        return f64::NAN;
    }
    if sigma == 0.0 {
        return (y - mu).abs();
    }
    let z = (y - mu) / sigma;
    sigma * (z * (2.0 * normal_cdf(z) - 1.0) + 2.0 * normal_pdf(z) - FRAC_1_SQRT_PI)
}

/// The CRPS at `y` of the equally weighted Gaussian mixture `F = (1/S) Σₛ N(μₛ, σₛ²)` (the Monte
/// Carlo predictive of `S` posterior samples), by the kernel form `CRPS = E|X − y| − ½ E|X − X'|`
/// (Gneiting & Raftery 2007, eq. (20)) with `X, X' ~ F` independent and, for the Gaussian
/// components, `E|N(m, s²)| = m (2Φ(m/s) − 1) + 2 s φ(m/s)` (Grimit et al. 2006):
///
/// ```text
/// CRPS = (1/S) Σₛ A(μₛ − y, σₛ) − (1/(2S²)) Σₛ Σₜ A(μₛ − μₜ, √(σₛ² + σₜ²)),
/// A(m, s) = m (2Φ(m/s) − 1) + 2 s φ(m/s)
/// ```
///
/// `O(S²)` evaluations of `Φ`. With one component (or identical ones) this is
/// [`crps_gaussian`]. NaN when `mu` is empty, the lengths differ, or a `σₛ` is negative or NaN
/// (`σₛ = 0` is a point mass).
///
/// ```
/// use secateur_inference::regression_calibration::{crps_gaussian, crps_mixture};
/// let v = crps_mixture(0.7, &[0.1, 0.1, 0.1], &[1.5, 1.5, 1.5]);
/// assert!((v - crps_gaussian(0.7, 0.1, 1.5)).abs() < 1e-14);
/// ```
pub fn crps_mixture(y: f64, mu: &[f64], sigma: &[f64]) -> f64 {
    let s = mu.len();
    if s == 0 || sigma.len() != s || sigma.iter().any(|v| v.is_nan() || *v < 0.0) {
        return f64::NAN;
    }
    let to_y: f64 = mu.iter().zip(sigma).map(|(&m, &sd)| abs_moment(m - y, sd)).sum::<f64>() / s as f64;
    // Σₛ Σₜ over ordered pairs: the diagonal terms A(0, √2 σₛ) = 2√2 σₛ φ(0) once each, the
    // off-diagonal ones twice (A is even in m).
    let mut pairs = 0.0;
    for a in 0..s {
        pairs += abs_moment(0.0, std::f64::consts::SQRT_2 * sigma[a]);
        for b in a + 1..s {
            pairs += 2.0 * abs_moment(mu[a] - mu[b], sigma[a].hypot(sigma[b]));
        }
    }
    to_y - 0.5 * pairs / (s * s) as f64
}

/// The mean CRPS `(1/N) Σᵢ CRPS(N(μᵢ, σᵢ²), yᵢ)` of [`crps_gaussian`] over a set of Gaussian
/// predictives, in the units of the targets. Refuses lengths that differ, no example, a
/// non-finite mean or target, or a standard deviation that is not finite and positive.
///
/// ```
/// use secateur_inference::regression_calibration::{crps_gaussian, mean_crps};
/// let v = mean_crps(&[0.0, 1.0], &[1.0, 0.5], &[0.3, 2.0])?;
/// assert!((v - 0.5 * (crps_gaussian(0.3, 0.0, 1.0) + crps_gaussian(2.0, 1.0, 0.5))).abs() < 1e-15);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn mean_crps(mean: &[f64], std: &[f64], targets: &[f64]) -> Result<f64> {
    let n = check_gaussian("mean_crps", mean, std, targets)?;
    Ok((0..n).map(|i| crps_gaussian(targets[i], mean[i], std[i])).sum::<f64>() / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use secateur_bayes::SeededRng;

    /// Relative error (absolute for a zero reference).
    fn rel(got: f64, want: f64) -> f64 {
        if want == 0.0 {
            got.abs()
        } else {
            (got - want).abs() / want.abs()
        }
    }

    // References: mpmath 1.3 at 40–50 digits, rounded to 20, of the exact f64 arguments.
    #[test]
    fn erf_and_erfc_match_reference_values() {
        #[allow(clippy::excessive_precision)]
        let erf_ref = [
            (0.1, 0.1124629160182848984),
            (0.3, 0.32862675945912741619),
            (0.5, 0.52049987781304653768),
            (1.0, 0.84270079294971486934),
            (2.0, 0.99532226501895273416),
            (3.5, 0.99999925690162765859),
            (4.5, 0.99999999980338395585),
            (6.0, 0.99999999999999997848),
            (-1.5, -0.96610514647531072707),
        ];
        for (x, want) in erf_ref {
            assert!(rel(erf(x), want) < 1e-13, "erf({x}) = {} vs {want}", erf(x));
        }
        #[allow(clippy::excessive_precision)]
        let erfc_ref = [
            (0.3, 0.67137324054087258381),
            (1.0, 0.15729920705028513066),
            (3.0, 2.2090496998585441373e-5),
            (5.0, 1.5374597944280348502e-12),
            (10.0, 2.088487583762544757e-45),
            (26.0, 5.6631924088561428465e-296),
            (-2.0, 1.9953222650189527342),
        ];
        for (x, want) in erfc_ref {
            assert!(rel(erfc(x), want) < 1e-13, "erfc({x}) = {:e} vs {want:e}", erfc(x));
        }
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erfc(0.0), 1.0);
        assert_eq!(erf(f64::INFINITY), 1.0);
        assert_eq!(erf(f64::NEG_INFINITY), -1.0);
        assert_eq!(erfc(30.0), 0.0);
        assert_eq!(erfc(-30.0), 2.0);
        assert!(erf(f64::NAN).is_nan() && erfc(f64::NAN).is_nan());
    }

    #[test]
    fn normal_cdf_and_quantile_match_reference_values() {
        #[allow(clippy::excessive_precision)]
        let cdf_ref = [
            (-30.0, 4.9067139271481870595e-198),
            (-8.0, 6.2209605742717841235e-16),
            (-1.0, 0.15865525393145705141),
            (0.5, 0.69146246127401310364),
            (2.0, 0.9772498680518207928),
        ];
        for (x, want) in cdf_ref {
            assert!(
                rel(normal_cdf(x), want) < 1e-13,
                "Φ({x}) = {:e} vs {want:e}",
                normal_cdf(x)
            );
        }
        #[allow(clippy::excessive_precision)]
        let quantile_ref = [
            (1e-300, -37.047096299361199237),
            (1e-20, -9.2623400897984075796),
            (1e-5, -4.2648907939228246102),
            (0.02, -2.0537489106318230443),
            (0.1, -1.2815515655446004353),
            (0.3, -0.52440051270804081597),
            (0.975, 1.9599639845400538556),
            (0.999, 3.0902323061678132778),
        ];
        for (p, want) in quantile_ref {
            assert!(
                rel(normal_quantile(p), want) < 1e-13,
                "Φ⁻¹({p}) = {} vs {want}",
                normal_quantile(p)
            );
        }
        assert!((normal_quantile(0.975) - crate::metrics::Z_975).abs() < 1e-15);
        assert!((normal_pdf(1.0) - 0.241_970_724_519_143_37).abs() < 1e-16);
        assert_eq!(normal_quantile(0.0), f64::NEG_INFINITY);
        assert_eq!(normal_quantile(1.0), f64::INFINITY);
        assert!(normal_quantile(-0.1).is_nan() && normal_quantile(1.5).is_nan() && normal_quantile(f64::NAN).is_nan());
    }

    #[test]
    fn symmetries_and_round_trips() {
        for i in 0..=1200 {
            let x = i as f64 / 100.0;
            assert_eq!(erf(-x), -erf(x));
            assert!((erf(x) + erfc(x) - 1.0).abs() < 2e-16, "erf + erfc at {x}");
            assert!((erfc(x) + erfc(-x) - 2.0).abs() < 4e-16, "erfc(x) + erfc(−x) at {x}");
            assert!(
                (normal_cdf(x) + normal_cdf(-x) - 1.0).abs() < 2e-16,
                "Φ(x) + Φ(−x) at {x}"
            );
        }
        // Φ⁻¹(1 − p) = −Φ⁻¹(p) where 1 − p is exact (p = k/1024), and Φ(Φ⁻¹(p)) = p.
        for k in 1..1024 {
            let p = k as f64 / 1024.0;
            assert!((normal_quantile(1.0 - p) + normal_quantile(p)).abs() < 1e-15, "p = {p}");
            assert!(rel(normal_cdf(normal_quantile(p)), p) < 1e-14, "Φ(Φ⁻¹({p}))");
        }
        for e in 1..=300 {
            let p = 10f64.powi(-e);
            // relative error of Φ(x) for x ≈ −37 grows to ~2e-13 through the rounding of x/√2
            assert!(rel(normal_cdf(normal_quantile(p)), p) < 1e-12, "Φ(Φ⁻¹(1e-{e}))");
        }
    }

    /// A standard normal draw (Box–Muller on the crate's seeded ChaCha8 stream).
    fn normal(rng: &mut SeededRng) -> f64 {
        let u1 = 1.0 - rng.random::<f64>();
        let u2 = rng.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    #[test]
    fn calibrated_gaussians_cover_at_their_levels() {
        // y = μ + σ ε, ε ~ N(0, 1), 100 000 draws, μ and σ varying per example: coverage ℓ
        // within 4 binomial standard errors √(ℓ(1 − ℓ)/N) at every level.
        let n = 100_000;
        let mut rng = SeededRng::new(31);
        let mean: Vec<f64> = (0..n).map(|_| 10.0 * (rng.random::<f64>() - 0.5)).collect();
        let std: Vec<f64> = (0..n).map(|_| 0.1 + 3.0 * rng.random::<f64>()).collect();
        let targets: Vec<f64> = mean.iter().zip(&std).map(|(m, s)| m + s * normal(&mut rng)).collect();
        let cov = interval_coverage(&mean, &std, &targets, &DEFAULT_COVERAGE_LEVELS).unwrap();
        let mean_std = std.iter().sum::<f64>() / n as f64;
        for c in &cov {
            let se = (c.level * (1.0 - c.level) / n as f64).sqrt();
            assert!(
                (c.coverage - c.level).abs() < 4.0 * se,
                "level {}: coverage {} ({:.1} standard errors {se:.5})",
                c.level,
                c.coverage,
                (c.coverage - c.level) / se
            );
            let z = normal_quantile(0.5 + 0.5 * c.level);
            assert!((c.mean_width - 2.0 * z * mean_std).abs() < 1e-12 * c.mean_width);
        }
        // Over-dispersed predictives (σ doubled) over-cover, under-dispersed under-cover.
        let wide: Vec<f64> = std.iter().map(|s| 2.0 * s).collect();
        let narrow: Vec<f64> = std.iter().map(|s| 0.5 * s).collect();
        let at = |s: &[f64]| interval_coverage(&mean, s, &targets, &[0.5]).unwrap()[0].coverage;
        assert!(at(&wide) > 0.8 && at(&narrow) < 0.3);
    }

    #[test]
    fn interval_coverage_refuses_bad_input() {
        let ok = [0.0];
        assert!(interval_coverage(&ok, &[1.0], &ok, &[0.0]).is_err());
        assert!(interval_coverage(&ok, &[1.0], &ok, &[1.0]).is_err());
        assert!(interval_coverage(&ok, &[1.0], &ok, &[f64::NAN]).is_err());
        assert!(interval_coverage(&ok, &[0.0], &ok, &[0.5]).is_err());
        assert!(interval_coverage(&ok, &[1.0], &[f64::INFINITY], &[0.5]).is_err());
        assert!(interval_coverage(&[], &[], &[], &[0.5]).is_err());
        assert!(interval_coverage(&[0.0, 1.0], &[1.0], &ok, &[0.5]).is_err());
        assert!(interval_coverage(&ok, &[1.0], &ok, &[]).unwrap().is_empty());
        assert!(mean_crps(&ok, &[-1.0], &ok).is_err());
        assert!(mean_crps(&[], &[], &[]).is_err());
        assert!(mean_crps(&[f64::NAN], &[1.0], &ok).is_err());
    }

    /// `∫ (F(x) − 1[x ≥ y])² dx` by the trapezoid rule on `[lo, y]` and `[y, hi]` (split at the
    /// jump), `steps` intervals each.
    fn crps_numeric(cdf: impl Fn(f64) -> f64, y: f64, lo: f64, hi: f64, steps: usize) -> f64 {
        let piece = |a: f64, b: f64, step: f64| {
            let h = (b - a) / steps as f64;
            let f = |x: f64| (cdf(x) - step).powi(2);
            h * ((f(a) + f(b)) / 2.0 + (1..steps).map(|i| f(a + i as f64 * h)).sum::<f64>())
        };
        piece(lo, y, 0.0) + piece(y, hi, 1.0)
    }

    #[test]
    fn crps_gaussian_matches_numerical_integration() {
        for (y, mu, sigma) in [
            (0.0f64, 0.0f64, 1.0f64),
            (1.3, -0.4, 0.7),
            (-5.0, 2.0, 3.0),
            (10.0, 0.0, 1.0),
            (0.2, 0.25, 0.01),
        ] {
            let (lo, hi) = ((mu - 12.0 * sigma).min(y - 1.0), (mu + 12.0 * sigma).max(y + 1.0));
            let num = crps_numeric(|x| normal_cdf((x - mu) / sigma), y, lo, hi, 200_000);
            let got = crps_gaussian(y, mu, sigma);
            assert!(
                (got - num).abs() < 1e-6,
                "CRPS(N({mu}, {sigma}²), {y}) = {got} vs {num}"
            );
        }
        #[allow(clippy::excessive_precision)]
        let at_mean = 0.23369497725510906893; // (√2 − 1)/√π
        assert!((crps_gaussian(0.0, 0.0, 1.0) - at_mean).abs() < 1e-15);
        // scale and shift equivariance
        assert!((crps_gaussian(3.0 + 2.0 * 0.7, 3.0, 2.0) - 2.0 * crps_gaussian(0.7, 0.0, 1.0)).abs() < 1e-14);
        assert_eq!(crps_gaussian(1.5, 0.5, 0.0), 1.0);
        assert!(crps_gaussian(0.0, 0.0, -1.0).is_nan());
    }

    #[test]
    fn crps_mixture_of_identical_components_is_the_gaussian_crps() {
        for (y, mu, sigma) in [(0.0, 0.0, 1.0), (1.3, -0.4, 0.7), (-5.0, 2.0, 3.0)] {
            let g = crps_gaussian(y, mu, sigma);
            assert!((crps_mixture(y, &[mu], &[sigma]) - g).abs() < 1e-14);
            assert!((crps_mixture(y, &[mu; 4], &[sigma; 4]) - g).abs() < 1e-14);
        }
        assert!(crps_mixture(0.0, &[], &[]).is_nan());
        assert!(crps_mixture(0.0, &[0.0, 1.0], &[1.0]).is_nan());
        assert!(crps_mixture(0.0, &[0.0], &[-1.0]).is_nan());
    }

    #[test]
    fn crps_mixture_matches_numerical_integration() {
        let mu = [-1.0, 0.5, 2.5];
        let sigma = [0.4, 1.2, 0.8];
        let cdf = |x: f64| mu.iter().zip(&sigma).map(|(m, s)| normal_cdf((x - m) / s)).sum::<f64>() / 3.0;
        for y in [-3.0, -1.0, 0.0, 1.7, 6.0] {
            let (lo, hi) = ((-1.0 - 12.0 * 1.2f64).min(y - 1.0), (2.5 + 12.0 * 1.2f64).max(y + 1.0));
            let num = crps_numeric(cdf, y, lo, hi, 200_000);
            let got = crps_mixture(y, &mu, &sigma);
            assert!((got - num).abs() < 1e-6, "y = {y}: {got} vs {num}");
        }
    }

    #[test]
    fn mean_crps_is_the_mean_of_crps_gaussian() {
        let mean = [0.0, 1.0, -2.0];
        let std = [1.0, 0.5, 2.0];
        let targets = [0.3, 2.0, -2.5];
        let want = (0..3).map(|i| crps_gaussian(targets[i], mean[i], std[i])).sum::<f64>() / 3.0;
        assert_eq!(mean_crps(&mean, &std, &targets).unwrap(), want);
    }
}
