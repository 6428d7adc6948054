//! Branch-free f32 `exp` and `log` that the compiler vectorises, for the elementwise kernels of
//! mean-field layers (softplus, its derivatives, the Gaussian KL), which evaluate them once per
//! weight in every step. The C library's scalar `expf`/`log1pf` took about a quarter of a
//! mean-field MLP training step.
//!
//! - `exp(x) = 2ⁿ · e^r` with `n = round(x / ln 2)` and `r = x − n ln 2` (`|r| ≤ ln 2 / 2`, the
//!   product `n ln 2` split in two parts so that `r` is exact to f32 precision; Cody & Waite 1980),
//!   and `e^r` by its Taylor polynomial of degree 7 (truncation `|r|⁸/8! < 5·10⁻⁹`).
//! - `log(x) = k ln 2 + log m` with `x = 2ᵏ m`, `m ∈ [√½, √2)`, and
//!   `log m = 2 atanh(s) = 2(s + s³/3 + … + s⁹/9)` with `s = (m − 1)/(m + 1)`, `|s| ≤ 0.172`
//!   (truncation `< 2·10⁻⁹` relative).
//! - `log(1 + z)` for `z ∈ [0, 1]` as `2 atanh(s)` with `s = z/(2 + z) ∈ [0, ⅓]`, eight terms of
//!   the series (truncation `< 10⁻⁹` relative): tiny `z` keep their digits because `1 + z` is
//!   never formed.
//!
//! Accuracy (tested against f64 over dense sweeps): a few units in the last place of f32.
//! Inputs are assumed finite: `exp` clamps its argument to `[−87.3, 88.3]` (results in
//! `[1.2·10⁻³⁸, 2.2·10³⁸]`, never 0 or ∞); `log` expects `x > 0`.

const LN2_HI: f32 = 0.693_145_75; // ln 2 with its last 12 bits zero: n · LN2_HI is exact for |n| < 2¹²
const LN2_LO: f32 = 1.428_606_8e-6; // ln 2 − LN2_HI
const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// Adding and subtracting 1.5 · 2²³ rounds an f32 of magnitude < 2²² to the nearest integer.
const ROUND: f32 = 12_582_912.0;

/// `eˣ` (module notes).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    // The integer n sits in the low mantissa bits of `shifted` (integer arithmetic on the bits
    // instead of a float-to-int cast, which would not vectorise).
    let ni = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Horner form of Σ_{k ≤ 7} rᵏ/k!.
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // 2ⁿ for n ∈ [−126, 127]: the biased exponent n + 127 in the exponent field.
    p * f32::from_bits(((ni + 127) as u32) << 23)
}

/// `log x` for `x > 0` (module notes).
#[inline(always)]
pub(crate) fn ln(x: f32) -> f32 {
    // Subnormals: scale into the normal range first.
    let sub = x < f32::MIN_POSITIVE;
    let x = if sub { x * 8_388_608.0 } else { x }; // 2²³
    let bits = x.to_bits();
    let mut k = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000); // [1, 2)
    let high = m > std::f32::consts::SQRT_2;
    m = if high { m * 0.5 } else { m };
    k += high as i32;
    k -= if sub { 23 } else { 0 };
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let p = 1.0 / 9.0;
    let p = p * s2 + 1.0 / 7.0;
    let p = p * s2 + 1.0 / 5.0;
    let p = p * s2 + 1.0 / 3.0;
    let p = p * s2 + 1.0;
    let kf = k as f32;
    (kf * LN2_HI + 2.0 * s * p) + kf * LN2_LO
}

/// `log(1 + z)` for `z ∈ [0, 1]` (module notes).
#[inline(always)]
pub(crate) fn ln_1p_unit(z: f32) -> f32 {
    let s = z / (2.0 + z);
    let s2 = s * s;
    // 2 Σ_{k ≤ 7} s^{2k+1}/(2k+1), Horner in s².
    let p = 1.0 / 15.0;
    let p = p * s2 + 1.0 / 13.0;
    let p = p * s2 + 1.0 / 11.0;
    let p = p * s2 + 1.0 / 9.0;
    let p = p * s2 + 1.0 / 7.0;
    let p = p * s2 + 1.0 / 5.0;
    let p = p * s2 + 1.0 / 3.0;
    let p = p * s2 + 1.0;
    2.0 * s * p
}

/// `(clip(x, lo, hi), d)` with `d` the derivative candle gives `clamp` (a `maximum` then a
/// `minimum`, each passing half the gradient on a tie): 1 inside `(lo, hi)`, ½ on either bound,
/// 0 outside; NaN stays NaN. Written as selects without short-circuits so that the loops calling
/// it vectorise: as `if … else if` chains with `&&` the compiler kept variational dropout's
/// loops scalar, four times slower.
#[inline(always)]
pub(crate) fn clip_with_derivative<T: Real>(x: T, lo: T, hi: T) -> (T, T) {
    let c = if x < lo { lo } else { x };
    let c = if c > hi { hi } else { c };
    let inside = if (x > lo) & (x < hi) { T::one() } else { T::zero() };
    let bound = if (x == lo) | (x == hi) { T::of(0.5) } else { T::zero() };
    (c, inside + bound)
}

/// The elementary functions in a tensor's own precision, for the elementwise kernels generic over
/// f32 and f64 (softplus and its derivatives, sparse VD's divergence): for f32 the branch-free,
/// vectorisable versions above (within two units in the last place), for f64 the C library's.
pub(crate) trait Real: candle_core::WithDType + std::ops::Neg<Output = Self> {
    fn exp_(self) -> Self;
    fn ln_(self) -> Self;
    /// `log(1 + z)` for `z ∈ [0, 1]`.
    fn ln_1p_unit(self) -> Self;
    fn max0(self) -> Self;
    fn abs_(self) -> Self;
    /// An f64 constant in this precision.
    fn of(v: f64) -> Self;
}

impl Real for f32 {
    #[inline(always)]
    fn exp_(self) -> Self {
        exp(self)
    }
    #[inline(always)]
    fn ln_(self) -> Self {
        ln(self)
    }
    #[inline(always)]
    fn ln_1p_unit(self) -> Self {
        ln_1p_unit(self)
    }
    #[inline(always)]
    fn max0(self) -> Self {
        self.max(0.0)
    }
    #[inline(always)]
    fn abs_(self) -> Self {
        self.abs()
    }
    #[inline(always)]
    fn of(v: f64) -> Self {
        v as f32
    }
}

impl Real for f64 {
    fn exp_(self) -> Self {
        self.exp()
    }
    fn ln_(self) -> Self {
        self.ln()
    }
    fn ln_1p_unit(self) -> Self {
        self.ln_1p()
    }
    fn max0(self) -> Self {
        self.max(0.0)
    }
    fn abs_(self) -> Self {
        self.abs()
    }
    fn of(v: f64) -> Self {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative error against the f64 function, in units of f32 ε (2⁻²³).
    fn ulps(got: f32, want: f64) -> f64 {
        ((got as f64 - want) / want.abs().max(f64::from(f32::MIN_POSITIVE))).abs() / f64::from(f32::EPSILON)
    }

    fn sweep(lo: f32, hi: f32, n: usize) -> impl Iterator<Item = f32> {
        (0..=n).map(move |i| lo + (hi - lo) * (i as f32 / n as f32))
    }

    #[test]
    fn exp_is_within_two_ulps() {
        let worst = sweep(-87.0, 88.3, 400_000)
            .chain([0.0, -0.0, 1e-8, -1e-8, 0.5 * std::f32::consts::LN_2, 88.3])
            .map(|x| (x, ulps(exp(x), (x as f64).exp())))
            .fold((0.0, 0.0), |a, b| if b.1 > a.1 { b } else { a });
        assert!(worst.1 <= 2.0, "exp({}) is {} ulps off", worst.0, worst.1);
        // The clamp: never 0 or ∞.
        assert!(exp(-1000.0) > 0.0 && exp(1000.0).is_finite());
    }

    #[test]
    fn ln_is_within_two_ulps() {
        let mut worst = (0f32, 0f64);
        for x in sweep(-30.0, 30.0, 200_000)
            .map(|t| t.exp())
            .chain([1.0, 2.0, 0.5, 1e-40, 1e-45, 3e38])
        {
            let e = ulps(ln(x), (x as f64).ln());
            // Near x = 1 the result is near 0: compare in absolute terms there.
            let e = if (x - 1.0).abs() < 1e-3 {
                (ln(x) as f64 - (x as f64).ln()).abs() / f64::from(f32::EPSILON)
            } else {
                e
            };
            if e > worst.1 {
                worst = (x, e);
            }
        }
        assert!(worst.1 <= 2.0, "ln({}) is {} ulps off", worst.0, worst.1);
    }

    #[test]
    fn ln_1p_keeps_tiny_arguments() {
        let mut worst = (0f32, 0f64);
        for z in sweep(-40.0, 0.0, 200_000).map(|t| t.exp()).chain([0.0, 1.0, 1e-30]) {
            let want = (z as f64).ln_1p();
            let e = if z == 0.0 {
                (ln_1p_unit(z) as f64).abs()
            } else {
                ulps(ln_1p_unit(z), want)
            };
            if e > worst.1 {
                worst = (z, e);
            }
        }
        assert!(worst.1 <= 2.0, "ln_1p({}) is {} ulps off", worst.0, worst.1);
    }

    /// The clip and its derivative at every kind of point, in both precisions: inside, on each
    /// bound (½, as candle's `clamp` passes it), outside, and NaN (kept, derivative 0).
    #[test]
    fn clip_with_derivative_matches_candles_clamp() {
        for (x, c, d) in [
            (-3.0, -3.0, 1.0),
            (-8.0, -8.0, 0.5),
            (0.0, 0.0, 0.5),
            (-9.0, -8.0, 0.0),
            (2.0, 0.0, 0.0),
        ] {
            assert_eq!(clip_with_derivative(x, -8.0f64, 0.0), (c, d), "f64 at {x}");
            assert_eq!(
                clip_with_derivative(x as f32, -8.0f32, 0.0),
                (c as f32, d as f32),
                "f32 at {x}"
            );
        }
        let (c, d) = clip_with_derivative(f32::NAN, -8.0, 0.0);
        assert!(c.is_nan() && d == 0.0);
    }
}
