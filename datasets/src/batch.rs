//! Turning in-memory sets into candle tensors: per-channel normalisation, seeded shuffling and
//! batches of images or table rows.

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::Rng;

use super::{Augment, ImageSet, PixelStats, Standardizer, TableSet};

/// Per-channel normalisation `(p / 255 − mean_c) / std_c`. Build it from the TRAIN split's
/// [`ImageSet::pixel_stats`].
#[derive(Debug, Clone, PartialEq)]
pub struct Normalizer {
    /// Mean per channel (of pixels scaled to `[0, 1]`).
    pub mean: Vec<f32>,
    /// Standard deviation per channel (of pixels scaled to `[0, 1]`).
    pub std: Vec<f32>,
}

impl Normalizer {
    /// From pixel statistics; a zero (or non-finite) standard deviation becomes 1 so that a
    /// constant channel maps to 0 instead of dividing by zero.
    pub fn from_stats(stats: &PixelStats) -> Self {
        let std = stats
            .std
            .iter()
            .map(|&s| if s.is_finite() && s > 0.0 { s } else { 1.0 })
            .collect();
        Normalizer {
            mean: stats.mean.clone(),
            std,
        }
    }

    /// From the pixel statistics of `set` (give it the training split).
    pub fn from_set(set: &ImageSet) -> Self {
        Self::from_stats(&set.pixel_stats())
    }

    /// No normalisation beyond scaling to `[0, 1]`: mean 0, std 1 for each of `channels`.
    pub fn identity(channels: usize) -> Self {
        Normalizer {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }
}

/// `0..n` in a seeded random order (Fisher–Yates, via `rand`'s `SliceRandom::shuffle`).
pub fn shuffled_indices(n: usize, rng: &mut impl Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    v.shuffle(rng);
    v
}

/// A batch of images `[B, C, H, W]` (f32, normalised) and labels `[B]` (u32) for `indices`.
/// With `augment`, each image gets its own draw from `rng`, in batch order (see
/// [`Augment::draw`]); without it `rng` is not used. Fails on an index past the end or a
/// normaliser with the wrong number of channels.
pub fn image_batch(
    set: &ImageSet,
    indices: &[usize],
    norm: &Normalizer,
    augment: Option<&Augment>,
    rng: &mut impl Rng,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (c, h, w) = (set.channels, set.height, set.width);
    if norm.mean.len() != c || norm.std.len() != c {
        candle_core::bail!(
            "normaliser has {}/{} channels, data set {} has {c}",
            norm.mean.len(),
            norm.std.len(),
            set.name
        );
    }
    let plane = h * w;
    let scale: Vec<f32> = norm.std.iter().map(|s| 1.0 / (255.0 * s)).collect();
    let shift: Vec<f32> = norm.mean.iter().zip(&norm.std).map(|(m, s)| m / s).collect();
    let mut data = Vec::with_capacity(indices.len() * c * plane);
    let mut labels = Vec::with_capacity(indices.len());
    for &i in indices {
        let (Some(img), Some(&label)) = (set.image(i), set.labels.get(i)) else {
            candle_core::bail!("index {i} past the end of {} ({} images)", set.name, set.len());
        };
        let augmented;
        let img = match augment {
            Some(a) => {
                let d = a.draw(rng);
                augmented = a.apply(d, img, c, h, w);
                augmented.as_slice()
            }
            None => img,
        };
        for ch in 0..c {
            data.extend(
                img[ch * plane..(ch + 1) * plane]
                    .iter()
                    .map(|&p| f32::from(p) * scale[ch] - shift[ch]),
            );
        }
        labels.push(label);
    }
    let b = indices.len();
    let x = Tensor::from_vec(data, (b, c, h, w), device)?;
    let y = Tensor::from_vec(labels, b, device)?;
    Ok((x, y))
}

/// A batch of table rows: standardised features `[B, F]` and standardised targets `[B]`, both
/// f32. Fails on an index past the end or a standardiser of the wrong width.
pub fn table_batch(
    set: &TableSet,
    indices: &[usize],
    std: &Standardizer,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let nf = set.n_features;
    if std.x_mean.len() != nf || std.x_std.len() != nf {
        candle_core::bail!(
            "standardiser has {} features, table {} has {nf}",
            std.x_mean.len(),
            set.name
        );
    }
    let mut x = Vec::with_capacity(indices.len() * nf);
    let mut y = Vec::with_capacity(indices.len());
    for &i in indices {
        let (Some(row), Some(&t)) = (set.x.get(i * nf..(i + 1) * nf), set.y.get(i)) else {
            candle_core::bail!("row {i} past the end of {} ({} rows)", set.name, set.len());
        };
        x.extend(row.iter().enumerate().map(|(j, &v)| std.x(j, v)));
        y.push(std.y(t));
    }
    let b = indices.len();
    Ok((Tensor::from_vec(x, (b, nf), device)?, Tensor::from_vec(y, b, device)?))
}
