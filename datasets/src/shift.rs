//! Seeded distribution shifts of image test sets, at five severities each, for measuring
//! accuracy and calibration under shift (Ovadia et al. 2019, "Can you trust your model's
//! uncertainty? Evaluating predictive uncertainty under dataset shift"; Hendrycks & Dietterich
//! 2019, "Benchmarking neural network robustness to common corruptions and perturbations",
//! the CIFAR-10-C / ImageNet-C benchmarks).
//!
//! Three kinds ([`ShiftKind`]), each with a ladder of parameters over severities `1..=5`
//! ([`SEVERITIES`]), severity 1 the mildest:
//!
//! | kind | parameter | severities 1‥5 | source |
//! |---|---|---|---|
//! | [`Rotation`](ShiftKind::Rotation) | angle `a` in degrees | 15, 30, 45, 60, 90 | Ovadia et al. 2019 rotate MNIST by 15°‥180° in steps of 15° |
//! | [`GaussianNoise`](ShiftKind::GaussianNoise) | σ `c` on `[0, 1]` pixels | 0.08, 0.12, 0.18, 0.26, 0.38 | `gaussian_noise` of ImageNet-C (`make_imagenet_c.py`) |
//! | [`Contrast`](ShiftKind::Contrast) | factor `c` | 0.75, 0.5, 0.4, 0.3, 0.15 | `contrast` of `make_cifar_c.py` (CIFAR-10-C) |
//!
//! (`make_cifar_c.py` and `make_imagenet_c.py` are in `ImageNet-C/create_c/` of
//! <https://github.com/hendrycks/robustness>.) The noise follows ImageNet-C's ladder, not
//! CIFAR-10-C's (σ = 0.04‥0.10): on Fashion-MNIST the CIFAR ladder left the accuracy of a
//! trained MLP unchanged at every severity (0.81 → 0.80 at σ = 0.10), so its curve showed
//! nothing; the ImageNet-C ladder spans mild to strong on these images.
//!
//! [`apply_shift`] returns a new [`ImageSet`] with the same labels, shape and classes. Every
//! random draw comes from the generator the caller passes, image by image in set order, in the
//! order each kind documents, so a seed reproduces the shifted set exactly. Results are
//! rounded to the nearest byte (halves up) — `make_cifar_c.py` truncates with `np.uint8`,
//! which lowers every pixel by ½ on average; rounding keeps the means unbiased.

use std::fmt;
use std::ops::RangeInclusive;

use rand::Rng;

use super::{DataError, ImageSet};

/// The severities of every shift kind, mildest first.
pub const SEVERITIES: RangeInclusive<u8> = 1..=5;

/// Maximum rotation (degrees) per severity; see [`ShiftKind::Rotation`].
const ROTATION_DEGREES: [f64; 5] = [15.0, 30.0, 45.0, 60.0, 90.0];
/// Noise standard deviation on `[0, 1]` pixels per severity (ImageNet-C `gaussian_noise`).
const NOISE_SIGMA: [f64; 5] = [0.08, 0.12, 0.18, 0.26, 0.38];
/// Contrast factor per severity (CIFAR-10-C `contrast`); smaller is stronger.
const CONTRAST_FACTOR: [f64; 5] = [0.75, 0.5, 0.4, 0.3, 0.15];

/// A kind of distribution shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShiftKind {
    /// Each image rotated about its centre by **exactly** the severity's angle `a`
    /// (15°, 30°, 45°, 60°, 90°), counter-clockwise or clockwise with probability ½ each — a
    /// fixed magnitude, as in the rotated-MNIST sets of Ovadia et al. 2019 (which rotate by
    /// 15°‥180° in steps of 15°; this ladder stops at a quarter turn), with a random sign so
    /// that the shifted set has no preferred direction.
    ///
    /// Draws per image: one fair coin, `rng.random_bool(0.5)`; `true` is counter-clockwise
    /// (`+a`). The pixels are resampled by inverse-mapped bilinear interpolation:
    /// output pixel `(y, x)` of every channel takes the source at
    /// `x_s = c_x + (x − c_x)·cos θ − (y − c_y)·sin θ`, `y_s = c_y + (x − c_x)·sin θ +
    /// (y − c_y)·cos θ` with centre `(c_y, c_x) = ((h − 1)/2, (w − 1)/2)` and `θ = ±a` (`y`
    /// runs down, so positive `θ` turns the picture counter-clockwise as displayed); source
    /// pixels outside the image count as 0 (black background, as MNIST-type data), then the
    /// value is rounded to the nearest byte. Multiples of 90° use exact cosines and sines, so
    /// quarter turns of square images move pixels onto pixels unchanged.
    Rotation,
    /// Additive Gaussian noise, `x' = round(255 · clip(x/255 + c·z, 0, 1))` with `z ~ N(0, 1)`
    /// independently per pixel and channel and `c` the severity's σ (0.08‥0.38), as
    /// `gaussian_noise` of ImageNet-C (`make_imagenet_c.py`).
    ///
    /// Draws per image: one normal per byte in the image's CHW order, made by Box–Muller from
    /// two uniforms per pair of bytes — for bytes `2k` and `2k + 1` (within the image), `u₁ =
    /// 1 − rng.random::<f64>()` then `u₂ = rng.random::<f64>()`, `r = √(−2 ln u₁)`, `z₂ₖ =
    /// r cos 2πu₂`, `z₂ₖ₊₁ = r sin 2πu₂` (an image with an odd byte count leaves the last
    /// pair's sine unused).
    GaussianNoise,
    /// Reduced contrast about the mean: per image and channel, with `m` the mean of that
    /// channel's plane, `x' = round((x − m)·c + m)` with `c` the severity's factor
    /// (0.75‥0.15), as `contrast` of CIFAR-10-C (`make_cifar_c.py`), whose
    /// `np.mean(x, axis=(0, 1))` over an `H × W × C` image is one mean per channel (for grey
    /// images the mean of the image). As `0 < c < 1` the result is a convex combination of `x`
    /// and `m`, so the clip to `[0, 255]` of the original never binds; every channel keeps its
    /// mean up to rounding. Draws nothing from the generator.
    Contrast,
}

impl ShiftKind {
    /// Every kind, in a fixed order.
    pub const ALL: [ShiftKind; 3] = [ShiftKind::Rotation, ShiftKind::GaussianNoise, ShiftKind::Contrast];

    /// The kind's name: `"rotation"`, `"gaussian-noise"` or `"contrast"`.
    pub fn name(self) -> &'static str {
        match self {
            ShiftKind::Rotation => "rotation",
            ShiftKind::GaussianNoise => "gaussian-noise",
            ShiftKind::Contrast => "contrast",
        }
    }

    /// The kind of a name from [`ShiftKind::name`] (ASCII case and `_` for `-` tolerated, so
    /// `gaussian_noise` as in CIFAR-10-C's file names works too); an unknown name is refused
    /// with a message naming it and listing the known names.
    pub fn parse(s: &str) -> Result<ShiftKind, DataError> {
        let wanted = s.trim().to_ascii_lowercase().replace('_', "-");
        ShiftKind::ALL
            .into_iter()
            .find(|k| k.name() == wanted)
            .ok_or_else(|| DataError::InvalidArgument {
                what: "shift",
                detail: format!(
                    "unknown shift kind {s:?}; the known kinds are {}",
                    ShiftKind::ALL.map(ShiftKind::name).join(", ")
                ),
            })
    }

    /// The severity's parameter: the rotation angle in degrees, the noise σ on `[0, 1]`
    /// pixels, or the contrast factor (see the table in the [module docs](self)). Fails
    /// unless `severity` is in [`SEVERITIES`].
    pub fn parameter(self, severity: u8) -> Result<f64, DataError> {
        let i = severity_index(severity)?;
        Ok(match self {
            ShiftKind::Rotation => ROTATION_DEGREES[i],
            ShiftKind::GaussianNoise => NOISE_SIGMA[i],
            ShiftKind::Contrast => CONTRAST_FACTOR[i],
        })
    }

    /// A human-readable account of the shift at `severity`, e.g. `"rotation by ±30°"`. Fails
    /// unless `severity` is in [`SEVERITIES`].
    pub fn describe(self, severity: u8) -> Result<String, DataError> {
        let p = self.parameter(severity)?;
        Ok(match self {
            ShiftKind::Rotation => format!("rotation by ±{p}° (sign drawn per image)"),
            ShiftKind::GaussianNoise => format!("Gaussian noise of σ = {p} on [0, 1] pixels"),
            ShiftKind::Contrast => format!("contrast scaled by {p} about each image's mean"),
        })
    }
}

impl fmt::Display for ShiftKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One shift: a kind at a severity in [`SEVERITIES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shift {
    /// What is done to the images.
    pub kind: ShiftKind,
    /// How strongly, `1..=5`.
    pub severity: u8,
}

impl fmt::Display for Shift {
    /// `"<kind>-<severity>"`, e.g. `rotation-3`: the suffix [`apply_shift`] gives set names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.kind.name(), self.severity)
    }
}

/// The index into the parameter ladders of a severity, or an error naming it.
fn severity_index(severity: u8) -> Result<usize, DataError> {
    if SEVERITIES.contains(&severity) {
        Ok(usize::from(severity - SEVERITIES.start()))
    } else {
        Err(DataError::InvalidArgument {
            what: "severity",
            detail: format!(
                "severity {severity} is not in {}..={}",
                SEVERITIES.start(),
                SEVERITIES.end()
            ),
        })
    }
}

/// `set` under `shift`: a new set with the same labels, shape and classes, named
/// `"<name>+<kind>-<severity>"` (e.g. `fashion-mnist-test+contrast-5`). The images are
/// processed in order, each drawing from `rng` as its [`ShiftKind`] documents, so the same
/// seed gives the same set. Fails on a severity outside [`SEVERITIES`] or a set whose pixel
/// count is not `N · C · H · W`.
pub fn apply_shift(set: &ImageSet, shift: Shift, rng: &mut impl Rng) -> Result<ImageSet, DataError> {
    let p = shift.kind.parameter(shift.severity)?;
    let size = set.image_size();
    if set.pixels.len() != set.len() * size {
        return Err(DataError::InvalidArgument {
            what: "set",
            detail: format!(
                "{} holds {} pixel bytes but {} images of {}×{}×{} need {}",
                set.name,
                set.pixels.len(),
                set.len(),
                set.channels,
                set.height,
                set.width,
                set.len() * size
            ),
        });
    }
    let (c, h, w) = (set.channels, set.height, set.width);
    let mut pixels = Vec::with_capacity(set.pixels.len());
    if size > 0 {
        for img in set.pixels.chunks_exact(size) {
            match shift.kind {
                ShiftKind::Rotation => {
                    let degrees = if rng.random_bool(0.5) { p } else { -p };
                    pixels.extend(rotate_image(img, c, h, w, degrees));
                }
                ShiftKind::GaussianNoise => pixels.extend(gaussian_noise_image(img, p, rng)),
                ShiftKind::Contrast => pixels.extend(contrast_image(img, c, h * w, p)),
            }
        }
    }
    Ok(ImageSet {
        name: format!("{}+{shift}", set.name),
        channels: c,
        height: h,
        width: w,
        n_classes: set.n_classes,
        pixels,
        labels: set.labels.clone(),
    })
}

/// Nearest byte of a value on the 0‥255 scale (halves up), clamped.
fn to_byte(v: f64) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// `(cos, sin)` of an angle in degrees, exact for multiples of 90° (so that quarter turns
/// move pixels onto pixels without floating-point residue).
fn cos_sin_degrees(degrees: f64) -> (f64, f64) {
    let quarter = degrees / 90.0;
    if quarter == quarter.round() && quarter.abs() < 1e15 {
        match (quarter as i64).rem_euclid(4) {
            0 => (1.0, 0.0),
            1 => (0.0, 1.0),
            2 => (-1.0, 0.0),
            _ => (0.0, -1.0),
        }
    } else {
        let (s, c) = degrees.to_radians().sin_cos();
        (c, s)
    }
}

/// One CHW image of `c × h × w` bytes rotated counter-clockwise (as displayed, `y` down) by
/// `degrees` about its centre `((h − 1)/2, (w − 1)/2)`: each channel is resampled by
/// inverse-mapped bilinear interpolation, source pixels outside the image counting as 0, and
/// rounded to the nearest byte. See [`ShiftKind::Rotation`] for the formula.
fn rotate_image(pixels: &[u8], c: usize, h: usize, w: usize, degrees: f64) -> Vec<u8> {
    let plane = h * w;
    let mut out = vec![0u8; c * plane];
    let (cos, sin) = cos_sin_degrees(degrees);
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    for (src, dst) in pixels
        .chunks_exact(plane.max(1))
        .zip(out.chunks_exact_mut(plane.max(1)))
        .take(c)
    {
        let at = |y: i64, x: i64| -> f64 {
            if y < 0 || x < 0 || y >= h as i64 || x >= w as i64 {
                0.0
            } else {
                f64::from(src[y as usize * w + x as usize])
            }
        };
        for y in 0..h {
            let dy = y as f64 - cy;
            for x in 0..w {
                let dx = x as f64 - cx;
                let xs = cx + dx * cos - dy * sin;
                let ys = cy + dx * sin + dy * cos;
                let (x0, y0) = (xs.floor(), ys.floor());
                let (fx, fy) = (xs - x0, ys - y0);
                let (x0, y0) = (x0 as i64, y0 as i64);
                let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1) * fx;
                let bottom = at(y0 + 1, x0) * (1.0 - fx) + at(y0 + 1, x0 + 1) * fx;
                dst[y * w + x] = to_byte(top * (1.0 - fy) + bottom * fy);
            }
        }
    }
    out
}

/// One standard normal pair by Box–Muller from two uniforms, drawn `u₁` then `u₂`.
fn box_muller(rng: &mut impl Rng) -> (f64, f64) {
    let u1 = 1.0 - rng.random::<f64>(); // (0, 1]: ln u₁ is finite
    let u2 = rng.random::<f64>();
    let r = (-2.0 * u1.ln()).sqrt();
    let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
    (r * c, r * s)
}

/// One image (any layout; bytes in order) plus Gaussian noise of σ `sigma` on `[0, 1]`
/// pixels; see [`ShiftKind::GaussianNoise`] for the formula and the draw order.
fn gaussian_noise_image(pixels: &[u8], sigma: f64, rng: &mut impl Rng) -> Vec<u8> {
    let noisy = |v: u8, z: f64| to_byte((f64::from(v) / 255.0 + sigma * z).clamp(0.0, 1.0) * 255.0);
    let mut out = Vec::with_capacity(pixels.len());
    for pair in pixels.chunks(2) {
        let (z0, z1) = box_muller(rng);
        out.push(noisy(pair[0], z0));
        if let Some(&v) = pair.get(1) {
            out.push(noisy(v, z1));
        }
    }
    out
}

/// One CHW image of `c` planes of `plane` bytes with each plane's deviations from its mean
/// scaled by `factor`; see [`ShiftKind::Contrast`].
fn contrast_image(pixels: &[u8], c: usize, plane: usize, factor: f64) -> Vec<u8> {
    let mut out = Vec::with_capacity(pixels.len());
    for p in pixels.chunks_exact(plane.max(1)).take(c) {
        let m = p.iter().map(|&v| f64::from(v)).sum::<f64>() / p.len() as f64;
        out.extend(p.iter().map(|&v| to_byte((f64::from(v) - m) * factor + m)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// `n` images of `c × h × w` with varied, asymmetric content and labels `i mod 3`.
    fn set_of(n: usize, c: usize, h: usize, w: usize) -> ImageSet {
        let size = c * h * w;
        let pixels = (0..n * size).map(|i| ((i * 37 + i / 7 * 11) % 256) as u8).collect();
        ImageSet {
            name: "toy".into(),
            channels: c,
            height: h,
            width: w,
            n_classes: 3,
            pixels,
            labels: (0..n as u32).map(|i| i % 3).collect(),
        }
    }

    fn shift(kind: ShiftKind, severity: u8) -> Shift {
        Shift { kind, severity }
    }

    /// Counter-clockwise quarter turn written independently: transpose, then reverse the rows.
    fn transpose_then_flip(src: &[u8], n: usize) -> Vec<u8> {
        let mut t = vec![0u8; n * n];
        for y in 0..n {
            for x in 0..n {
                t[y * n + x] = src[x * n + y];
            }
        }
        let mut out = vec![0u8; n * n];
        for y in 0..n {
            out[y * n..(y + 1) * n].copy_from_slice(&t[(n - 1 - y) * n..(n - y) * n]);
        }
        out
    }

    #[test]
    fn rotation_by_zero_is_identity() {
        let s = set_of(1, 2, 5, 7);
        assert_eq!(rotate_image(&s.pixels, 2, 5, 7, 0.0), s.pixels);
        assert_eq!(rotate_image(&s.pixels, 2, 5, 7, 360.0), s.pixels);
    }

    #[test]
    fn quarter_turn_is_transpose_then_flip() {
        for n in [4usize, 5, 28] {
            let s = set_of(1, 2, n, n);
            let (a, b) = s.pixels.split_at(n * n);
            let expect: Vec<u8> = [transpose_then_flip(a, n), transpose_then_flip(b, n)].concat();
            assert_eq!(rotate_image(&s.pixels, 2, n, n, 90.0), expect, "n = {n}");
            // −90° = 270°, the inverse turn; −90° after 90° gives the original back.
            let cw = rotate_image(&s.pixels, 2, n, n, -90.0);
            assert_eq!(cw, rotate_image(&s.pixels, 2, n, n, 270.0));
            assert_eq!(rotate_image(&expect, 2, n, n, -90.0), s.pixels);
        }
    }

    #[test]
    fn bilinear_near_a_quarter_turn_is_exact_after_rounding() {
        // Off the exact-trigonometry path, the floating-point residue of cos/sin (≈1e-11
        // here) moves samples by far less than half a byte: still exactly the quarter turn.
        let n = 28;
        let s = set_of(1, 1, n, n);
        let expect = transpose_then_flip(&s.pixels, n);
        assert_eq!(rotate_image(&s.pixels, 1, n, n, 90.0 + 1e-9), expect);
        assert_eq!(rotate_image(&s.pixels, 1, n, n, 90.0 - 1e-9), expect);
        // f64 trigonometry at 90° is not exact (cos ≈ 6e-17), hence the snapping.
        assert_ne!((90.0f64).to_radians().cos(), 0.0);
    }

    #[test]
    fn half_turn_reverses_and_twice_restores() {
        let (h, w) = (6, 9);
        let s = set_of(1, 1, h, w);
        let once = rotate_image(&s.pixels, 1, h, w, 180.0);
        let reversed: Vec<u8> = s.pixels.iter().rev().copied().collect();
        assert_eq!(once, reversed);
        let twice = rotate_image(&once, 1, h, w, 180.0);
        for y in 1..h - 1 {
            for x in 1..w - 1 {
                assert_eq!(twice[y * w + x], s.pixels[y * w + x], "({y}, {x})");
            }
        }
    }

    #[test]
    fn oblique_rotation_interpolates_and_fills_black() {
        // A constant 9×9 image turned by 45°: the centre and its neighbours (all four bilinear
        // sources inside) stay 200; the corners sample beyond the edge and turn black.
        let (n, v) = (9, 200u8);
        let out = rotate_image(&vec![v; n * n], 1, n, n, 45.0);
        for (y, x) in [(4, 4), (3, 4), (4, 5), (2, 6)] {
            assert_eq!(out[y * n + x], v, "({y}, {x})");
        }
        for (y, x) in [(0, 0), (0, n - 1), (n - 1, 0), (n - 1, n - 1)] {
            assert_eq!(out[y * n + x], 0, "corner ({y}, {x})");
        }
        // A 1×2 row turned by 180° about its centre (0, ½) is reversed exactly.
        assert_eq!(rotate_image(&[0, 200], 1, 1, 2, 180.0), vec![200, 0]);
        // A 2×2 image by 45°: the centre (½, ½) is fixed, pixel (0, 0) at offset (−½, −½)
        // samples the source at offset (0, −√½): x = ½, y = ½ − √½ ≈ −0.207, i.e. 0.793 of the
        // mean of the top row plus 0.207 of the black row above.
        let src = [100u8, 60, 20, 220];
        let out = rotate_image(&src, 1, 2, 2, 45.0);
        let fy = 0.5 - 0.5f64.sqrt() + 1.0; // fraction towards row 0 from row −1
        assert_eq!(out[0], (fy * 80.0).round() as u8);
    }

    /// Mean and standard deviation of `(round(255·clip(128/255 + c·z, 0, 1)) − 128)/255` for
    /// `z ~ N(0, 1)`, by numerical integration over `z ∈ [−10, 10]` (the clip matters at the
    /// larger σ: 128/255 ± 0.38·z leaves `[0, 1]` for |z| > 1.3).
    fn clipped_noise_moments(c: f64) -> (f64, f64) {
        let (steps, lo, hi) = (200_000, -10.0f64, 10.0f64);
        let h = (hi - lo) / steps as f64;
        let (mut m1, mut m2) = (0.0, 0.0);
        for i in 0..steps {
            let z = lo + (i as f64 + 0.5) * h;
            let w = (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt() * h;
            let v = ((128.0 / 255.0 + c * z).clamp(0.0, 1.0) * 255.0).round();
            let d = (v - 128.0) / 255.0;
            m1 += w * d;
            m2 += w * d * d;
        }
        (m1, (m2 - m1 * m1).sqrt())
    }

    #[test]
    fn noise_has_the_ladder_sigma_and_zero_mean() {
        // 20 images of 1×25×40 = 20 000 bytes of mid-grey (128); at the larger σ the clip to
        // [0, 1] lowers the spread, so the measured moments are compared with those of the
        // clipped, rounded noise computed independently (clipped_noise_moments).
        let mut grey = set_of(20, 1, 25, 40);
        grey.pixels.fill(128);
        let n = grey.pixels.len() as f64;
        assert_eq!(n, 20_000.0);
        for severity in SEVERITIES {
            let c = ShiftKind::GaussianNoise.parameter(severity).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(100 + u64::from(severity));
            let out = apply_shift(&grey, shift(ShiftKind::GaussianNoise, severity), &mut rng).unwrap();
            let d: Vec<f64> = out.pixels.iter().map(|&v| (f64::from(v) - 128.0) / 255.0).collect();
            let mean = d.iter().sum::<f64>() / n;
            let std = (d.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt();
            let (m_exact, s_exact) = clipped_noise_moments(c);
            assert!(
                s_exact > 0.75 * c && s_exact <= c * 1.001,
                "σ {c}: clipped std {s_exact}"
            );
            assert!(
                (std / s_exact - 1.0).abs() < 0.03,
                "severity {severity}: std {std} vs {s_exact} (σ {c})"
            );
            let se = s_exact / n.sqrt();
            assert!(
                (mean - m_exact).abs() < 3.0 * se,
                "severity {severity}: mean {mean}, 3 SE {}",
                3.0 * se
            );
        }
    }

    #[test]
    fn noise_follows_the_documented_draw_order_and_clips() {
        let s = set_of(3, 1, 3, 3); // 9 bytes per image: odd, the last sine unused
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let out = apply_shift(&s, shift(ShiftKind::GaussianNoise, 5), &mut rng).unwrap();
        let mut r = ChaCha8Rng::seed_from_u64(7);
        let sigma5 = ShiftKind::GaussianNoise.parameter(5).unwrap();
        let mut expect = Vec::new();
        for img in s.pixels.chunks_exact(9) {
            for pair in img.chunks(2) {
                let u1 = 1.0 - r.random::<f64>();
                let u2 = r.random::<f64>();
                let rad = (-2.0 * u1.ln()).sqrt();
                let zs = [
                    rad * (std::f64::consts::TAU * u2).cos(),
                    rad * (std::f64::consts::TAU * u2).sin(),
                ];
                for (&v, z) in pair.iter().zip(zs) {
                    let y = (f64::from(v) / 255.0 + sigma5 * z).clamp(0.0, 1.0) * 255.0;
                    expect.push(y.round() as u8);
                }
            }
        }
        assert_eq!(out.pixels, expect);
        // Black and white stay inside the byte range (the clip): black never darkens.
        let mut bw = set_of(1, 1, 10, 10);
        bw.pixels
            .iter_mut()
            .enumerate()
            .for_each(|(i, p)| *p = if i % 2 == 0 { 0 } else { 255 });
        let out = apply_shift(&bw, shift(ShiftKind::GaussianNoise, 5), &mut rng).unwrap();
        assert!(out.pixels.iter().step_by(2).any(|&v| v > 0));
        assert!(out.pixels.iter().skip(1).step_by(2).any(|&v| v < 255));
    }

    #[test]
    fn contrast_hand_cases() {
        // m = 100, c = 0.5 (severity 2): [0, 100, 200, 100] → [50, 100, 150, 100].
        assert_eq!(contrast_image(&[0, 100, 200, 100], 1, 4, 0.5), vec![50, 100, 150, 100]);
        // m = 25.25, c = 0.75: 13.8125, 21.3125, 28.8125, 37.0625 → 14, 21, 29, 37 (mean 25.25).
        assert_eq!(contrast_image(&[10, 20, 30, 41], 1, 4, 0.75), vec![14, 21, 29, 37]);
        // Per channel: channel 0 about 100, channel 1 about 20 (not the image mean of 60).
        assert_eq!(contrast_image(&[0, 200, 10, 30], 2, 2, 0.5), vec![50, 150, 15, 25]);
    }

    #[test]
    fn contrast_keeps_means_and_scales_deviations() {
        let s = set_of(6, 3, 7, 5);
        let plane = 35;
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for severity in SEVERITIES {
            let c = ShiftKind::Contrast.parameter(severity).unwrap();
            let out = apply_shift(&s, shift(ShiftKind::Contrast, severity), &mut rng).unwrap();
            for (a, b) in s.pixels.chunks_exact(plane).zip(out.pixels.chunks_exact(plane)) {
                let m = a.iter().map(|&v| f64::from(v)).sum::<f64>() / plane as f64;
                let m2 = b.iter().map(|&v| f64::from(v)).sum::<f64>() / plane as f64;
                assert!((m2 - m).abs() <= 0.5, "severity {severity}: mean {m} → {m2}");
                for (&x, &y) in a.iter().zip(b) {
                    let want = (f64::from(x) - m) * c;
                    assert!((f64::from(y) - m - want).abs() <= 0.5 + 1e-9, "{x} → {y} (c = {c})");
                }
            }
        }
        // Contrast draws nothing: the generator is untouched.
        let mut a = ChaCha8Rng::seed_from_u64(3);
        let b = a.clone();
        apply_shift(&s, shift(ShiftKind::Contrast, 3), &mut a).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn rotation_draws_one_sign_per_image() {
        let s = set_of(12, 1, 8, 8);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let out = apply_shift(&s, shift(ShiftKind::Rotation, 2), &mut rng).unwrap();
        let mut r = ChaCha8Rng::seed_from_u64(11);
        let mut signs = Vec::new();
        for (i, img) in s.pixels.chunks_exact(64).enumerate() {
            let ccw = r.random_bool(0.5);
            signs.push(ccw);
            let deg = if ccw { 30.0 } else { -30.0 };
            assert_eq!(out.image(i).unwrap(), rotate_image(img, 1, 8, 8, deg), "image {i}");
        }
        assert!(
            signs.contains(&true) && signs.contains(&false),
            "both signs occur: {signs:?}"
        );
    }

    #[test]
    fn seeds_reproduce_and_differ() {
        let s = set_of(16, 1, 8, 8);
        for kind in [ShiftKind::Rotation, ShiftKind::GaussianNoise] {
            let run = |seed: u64| {
                apply_shift(&s, shift(kind, 3), &mut ChaCha8Rng::seed_from_u64(seed))
                    .unwrap()
                    .pixels
            };
            assert_eq!(run(5), run(5), "{kind}");
            assert_ne!(run(5), run(6), "{kind}");
        }
    }

    #[test]
    fn labels_shape_and_name_are_kept() {
        let s = set_of(4, 3, 6, 5);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for kind in ShiftKind::ALL {
            for severity in SEVERITIES {
                let out = apply_shift(&s, shift(kind, severity), &mut rng).unwrap();
                assert_eq!(out.labels, s.labels);
                assert_eq!(
                    (out.channels, out.height, out.width, out.n_classes, out.pixels.len()),
                    (3, 6, 5, 3, s.pixels.len())
                );
                assert_eq!(out.name, format!("toy+{}-{severity}", kind.name()));
                assert_ne!(out.pixels, s.pixels, "{kind} {severity} changed nothing");
            }
        }
        // A set whose bytes do not match its shape is refused.
        let mut bad = s.clone();
        bad.pixels.pop();
        assert!(apply_shift(&bad, shift(ShiftKind::Contrast, 1), &mut rng).is_err());
    }

    #[test]
    fn bad_severities_and_names_are_refused() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let s = set_of(1, 1, 4, 4);
        for kind in ShiftKind::ALL {
            for bad in [0u8, 6, 255] {
                let msg = kind.parameter(bad).unwrap_err().to_string();
                assert!(
                    msg.contains(&format!("severity {bad} ")) && msg.contains("1..=5"),
                    "{msg}"
                );
                assert!(kind.describe(bad).is_err());
                let msg = apply_shift(&s, shift(kind, bad), &mut rng).unwrap_err().to_string();
                assert!(msg.contains(&format!("severity {bad} ")), "{msg}");
            }
        }
        let msg = ShiftKind::parse("blur").unwrap_err().to_string();
        assert!(msg.contains("\"blur\""), "{msg}");
        for k in ShiftKind::ALL {
            assert!(msg.contains(k.name()), "{msg}");
            assert_eq!(ShiftKind::parse(k.name()).unwrap(), k);
        }
        assert_eq!(ShiftKind::parse("Gaussian_Noise").unwrap(), ShiftKind::GaussianNoise);
    }

    #[test]
    fn ladders_are_monotone_and_described() {
        let ladder = |k: ShiftKind| SEVERITIES.map(|s| k.parameter(s).unwrap()).collect::<Vec<_>>();
        let rot = ladder(ShiftKind::Rotation);
        let noise = ladder(ShiftKind::GaussianNoise);
        let contrast = ladder(ShiftKind::Contrast);
        assert!(rot.windows(2).all(|p| p[0] < p[1]), "{rot:?}");
        assert!(noise.windows(2).all(|p| p[0] < p[1]), "{noise:?}");
        // Stronger contrast shift = smaller factor, all in (0, 1).
        assert!(contrast.windows(2).all(|p| p[0] > p[1]), "{contrast:?}");
        assert!(contrast.iter().all(|&c| c > 0.0 && c < 1.0));
        assert_eq!(noise, vec![0.08, 0.12, 0.18, 0.26, 0.38]);
        assert_eq!(contrast, vec![0.75, 0.5, 0.4, 0.3, 0.15]);
        assert_eq!(
            ShiftKind::Rotation.describe(2).unwrap(),
            "rotation by ±30° (sign drawn per image)"
        );
        assert!(ShiftKind::GaussianNoise.describe(3).unwrap().contains("0.18"));
        assert!(ShiftKind::Contrast.describe(5).unwrap().contains("0.15"));
        assert_eq!(shift(ShiftKind::GaussianNoise, 4).to_string(), "gaussian-noise-4");
    }
}
