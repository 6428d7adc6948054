//! [`ImageSet`]: labelled 8-bit images in memory, with counts, statistics, subsets and splits.

use rand::Rng;

use super::batch::shuffled_indices;
use super::DataError;

/// Labelled images held as bytes: `pixels` is `N × C × H × W` in CHW order (channel planes,
/// each row-major); `labels[i] < n_classes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSet {
    /// Name of the data set (and split), for messages.
    pub name: String,
    /// Channels per image (1 for grey, 3 for RGB).
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// Number of classes.
    pub n_classes: u32,
    /// `N · C · H · W` bytes, image after image, CHW order.
    pub pixels: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u32>,
}

/// Per-channel mean and standard deviation of pixel values scaled to `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelStats {
    /// Mean per channel.
    pub mean: Vec<f32>,
    /// Population standard deviation per channel.
    pub std: Vec<f32>,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image (`C · H · W`).
    pub fn image_size(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The bytes of image `i` (CHW), or `None` past the end.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let s = self.image_size();
        self.pixels.get(i * s..(i + 1) * s)
    }

    /// Number of images of each class (length `n_classes`).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.n_classes as usize];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// Per-channel mean and (population) standard deviation of the pixels scaled to `[0, 1]`,
    /// i.e. `mean_c = Σ p / (255 · N·H·W)` over channel `c`. An empty set gives zeros.
    pub fn pixel_stats(&self) -> PixelStats {
        let c = self.channels;
        let plane = self.height * self.width;
        let mut sum = vec![0u64; c];
        let mut sum_sq = vec![0u64; c];
        if plane > 0 && c > 0 {
            for img in self.pixels.chunks_exact(c * plane) {
                for (ch, p) in img.chunks_exact(plane).enumerate() {
                    for &v in p {
                        sum[ch] += u64::from(v);
                        sum_sq[ch] += u64::from(v) * u64::from(v);
                    }
                }
            }
        }
        let count = (self.len() * plane) as f64;
        let mut mean = Vec::with_capacity(c);
        let mut std = Vec::with_capacity(c);
        for ch in 0..c {
            if count == 0.0 {
                mean.push(0.0);
                std.push(0.0);
                continue;
            }
            let m = sum[ch] as f64 / count;
            let var = (sum_sq[ch] as f64 / count - m * m).max(0.0);
            mean.push((m / 255.0) as f32);
            std.push((var.sqrt() / 255.0) as f32);
        }
        PixelStats { mean, std }
    }

    /// The images at `indices`, in that order (repeats allowed). Fails on an index past the
    /// end.
    pub fn subset(&self, indices: &[usize]) -> Result<ImageSet, DataError> {
        let s = self.image_size();
        let mut pixels = Vec::with_capacity(indices.len() * s);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let (Some(img), Some(&label)) = (self.image(i), self.labels.get(i)) else {
                return Err(DataError::InvalidArgument {
                    what: "indices",
                    detail: format!("index {i} past the end of {} ({} images)", self.name, self.len()),
                });
            };
            pixels.extend_from_slice(img);
            labels.push(label);
        }
        Ok(ImageSet {
            name: self.name.clone(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            n_classes: self.n_classes,
            pixels,
            labels,
        })
    }

    /// Splits into `(train, val)`: a seeded shuffle picks `round(val_fraction · N)` images for
    /// validation; both parts keep the original order. The two are disjoint and together hold
    /// every image. Fails unless `0 ≤ val_fraction ≤ 1`.
    pub fn split(&self, val_fraction: f64, rng: &mut impl Rng) -> Result<(ImageSet, ImageSet), DataError> {
        let (train, val) = split_indices(self.len(), val_fraction, rng)?;
        Ok((self.subset(&train)?, self.subset(&val)?))
    }
}

/// Seeded split of `0..n` into `(train, val)` index lists, each sorted; `val` has
/// `round(val_fraction · n)` entries.
pub fn split_indices(n: usize, val_fraction: f64, rng: &mut impl Rng) -> Result<(Vec<usize>, Vec<usize>), DataError> {
    if !(0.0..=1.0).contains(&val_fraction) {
        return Err(DataError::InvalidArgument {
            what: "val_fraction",
            detail: format!("{val_fraction} is not in [0, 1]"),
        });
    }
    let n_val = ((n as f64) * val_fraction).round() as usize;
    let order = shuffled_indices(n, rng);
    let mut val = order[..n_val].to_vec();
    let mut train = order[n_val..].to_vec();
    val.sort_unstable();
    train.sort_unstable();
    Ok((train, val))
}

/// Bilinear resize of one `h × w` plane to `new_h × new_w`, with half-pixel centres (the
/// convention of PIL, OpenCV and `align_corners = false`): output pixel `(y, x)` samples the
/// source at `((y + ½)·h/new_h − ½, (x + ½)·w/new_w − ½)`, clamped to the edges.
///
/// ```
/// use secateur_datasets::resize_bilinear;
/// // 1×2 → 1×4 samples the source at x = −¼ (clamped to 0), ¼, ¾ and 1¼ (clamped to 1).
/// assert_eq!(resize_bilinear(&[0.0, 4.0], 1, 2, 1, 4), vec![0.0, 1.0, 3.0, 4.0]);
/// ```
pub fn resize_bilinear(src: &[f32], h: usize, w: usize, new_h: usize, new_w: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; new_h * new_w];
    if h == 0 || w == 0 || src.len() < h * w {
        return out;
    }
    let coord = |o: usize, n_src: usize, n_dst: usize| {
        let s = ((o as f64 + 0.5) * n_src as f64 / n_dst as f64 - 0.5).clamp(0.0, (n_src - 1) as f64);
        let i0 = s.floor() as usize;
        let i1 = (i0 + 1).min(n_src - 1);
        (i0, i1, (s - i0 as f64) as f32)
    };
    for y in 0..new_h {
        let (y0, y1, fy) = coord(y, h, new_h);
        for x in 0..new_w {
            let (x0, x1, fx) = coord(x, w, new_w);
            let top = src[y0 * w + x0] * (1.0 - fx) + src[y0 * w + x1] * fx;
            let bottom = src[y1 * w + x0] * (1.0 - fx) + src[y1 * w + x1] * fx;
            out[y * new_w + x] = top * (1.0 - fy) + bottom * fy;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn tiny() -> ImageSet {
        ImageSet {
            name: "tiny".into(),
            channels: 2,
            height: 1,
            width: 2,
            n_classes: 3,
            // image 0: ch0 = [0, 255], ch1 = [51, 51]; image 1: ch0 = [255, 255], ch1 = [102, 0]
            pixels: vec![0, 255, 51, 51, 255, 255, 102, 0],
            labels: vec![2, 0],
        }
    }

    #[test]
    fn stats_match_hand_computation() {
        let s = tiny().pixel_stats();
        // ch0 values/255: 0, 1, 1, 1 → mean 0.75, var = 0.75 − 0.5625 = 0.1875
        assert!((s.mean[0] - 0.75).abs() < 1e-6);
        assert!((s.std[0] - 0.1875f32.sqrt()).abs() < 1e-6);
        // ch1 values/255: 0.2, 0.2, 0.4, 0 → mean 0.2, var = (0+0+0.04+0.04)/4 = 0.02
        assert!((s.mean[1] - 0.2).abs() < 1e-6);
        assert!((s.std[1] - 0.02f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn class_counts_and_subset() {
        let t = tiny();
        assert_eq!(t.class_counts(), vec![1, 0, 1]);
        let s = t.subset(&[1, 1, 0]).expect("subset");
        assert_eq!(s.labels, vec![0, 0, 2]);
        assert_eq!(&s.pixels[..4], &[255, 255, 102, 0]);
        assert!(t.subset(&[2]).is_err());
    }

    #[test]
    fn split_rejects_bad_fraction() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert!(tiny().split(1.5, &mut rng).is_err());
    }

    #[test]
    fn bilinear_identity_and_upsample() {
        let src = [0.0, 4.0, 8.0, 12.0];
        assert_eq!(resize_bilinear(&src, 2, 2, 2, 2), src.to_vec());
        // 1×2 → 1×4: samples at x = −0.25 (clamped 0), 0.25, 0.75, 1.25 (clamped 1)
        let up = resize_bilinear(&[0.0, 4.0], 1, 2, 1, 4);
        assert_eq!(up, vec![0.0, 1.0, 3.0, 4.0]);
    }
}
