//! Data augmentation for image batches: random crop with zero padding and horizontal flip,
//! drawn from a caller-supplied seeded generator (never candle's).

use rand::Rng;

/// Random crop of the image padded by `pad` zero pixels on every side, back to its own size,
/// then, if `flip`, a horizontal mirror with probability ½ — the usual CIFAR recipe
/// (`pad = 4`, `flip = true`). Padding is with raw pixel value 0, before normalisation (as
/// torchvision's `RandomCrop(padding=4)` before `Normalize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Augment {
    /// Zero padding on each side before the random crop; 0 disables the crop.
    pub pad: usize,
    /// Whether to mirror horizontally with probability ½.
    pub flip: bool,
}

impl Default for Augment {
    /// `pad = 4`, `flip = true`.
    fn default() -> Self {
        Augment { pad: 4, flip: true }
    }
}

/// One draw of the augmentation for one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AugmentDraw {
    /// Top of the crop window in the padded image, in `0..=2·pad`.
    pub dy: usize,
    /// Left of the crop window in the padded image, in `0..=2·pad`.
    pub dx: usize,
    /// Whether the crop is mirrored horizontally.
    pub flip: bool,
}

impl Augment {
    /// Draws the parameters for one image, in this order: `dy`, then `dx` (each uniform in
    /// `0..=2·pad`, not drawn when `pad = 0`), then the flip (a fair coin, not drawn when
    /// `flip` is off).
    pub fn draw(&self, rng: &mut impl Rng) -> AugmentDraw {
        let (dy, dx) = if self.pad > 0 {
            let dy = rng.random_range(0..=2 * self.pad);
            let dx = rng.random_range(0..=2 * self.pad);
            (dy, dx)
        } else {
            (0, 0)
        };
        let flip = self.flip && rng.random_bool(0.5);
        AugmentDraw { dy, dx, flip }
    }

    /// Applies a draw to one CHW image of `channels × height × width` bytes:
    /// `out[c][y][x] = src[c][y + dy − pad][x' + dx − pad]` (0 outside the image), where
    /// `x' = width − 1 − x` if flipped and `x` otherwise.
    pub fn apply(&self, draw: AugmentDraw, src: &[u8], channels: usize, height: usize, width: usize) -> Vec<u8> {
        let mut out = vec![0u8; channels * height * width];
        let plane = height * width;
        for c in 0..channels {
            for y in 0..height {
                let sy = (y + draw.dy).checked_sub(self.pad).filter(|&v| v < height);
                let Some(sy) = sy else { continue };
                for x in 0..width {
                    let xc = if draw.flip { width - 1 - x } else { x };
                    let sx = (xc + draw.dx).checked_sub(self.pad).filter(|&v| v < width);
                    if let Some(sx) = sx {
                        if let Some(&v) = src.get(c * plane + sy * width + sx) {
                            out[c * plane + y * width + x] = v;
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_draw_is_identity() {
        let a = Augment { pad: 2, flip: true };
        let src: Vec<u8> = (1..=6).collect();
        let d = AugmentDraw {
            dy: 2,
            dx: 2,
            flip: false,
        };
        assert_eq!(a.apply(d, &src, 1, 2, 3), src);
        // mirrored: rows [1 2 3] [4 5 6] → [3 2 1] [6 5 4]
        let m = a.apply(AugmentDraw { flip: true, ..d }, &src, 1, 2, 3);
        assert_eq!(m, vec![3, 2, 1, 6, 5, 4]);
    }
}
