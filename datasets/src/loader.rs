//! Mini-batches of an [`ImageSet`] for the training loop ([`Batches`]).

use crate::{image_batch, shuffled_indices, Augment, ImageSet, Normalizer};
use candle_core::{DType, Device, Result, Tensor};
use secateur_bayes::SeededRng;
use secateur_inference::batches::Batches;

/// Batches of an image set: shuffled (training) or in order (evaluation), normalised, optionally
/// augmented. Every draw comes from the generator the loop passes in.
pub struct ImageBatches<'a> {
    set: &'a ImageSet,
    norm: Normalizer,
    batch_size: usize,
    shuffle: bool,
    augment: Option<Augment>,
    device: Device,
    dtype: DType,
    order: Vec<usize>,
}

impl<'a> ImageBatches<'a> {
    /// Batches over `set`, normalised by `norm`; `shuffle` draws a new order each epoch.
    pub fn new(
        set: &'a ImageSet,
        norm: Normalizer,
        batch_size: usize,
        shuffle: bool,
        augment: Option<Augment>,
        device: Device,
    ) -> Self {
        let order = (0..set.len()).collect();
        Self {
            set,
            norm,
            batch_size: batch_size.max(1),
            shuffle,
            augment,
            device,
            dtype: DType::F32,
            order,
        }
    }

    /// Inputs cast to `dtype` (f32 by default; f64 for a model in f64).
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }
}

impl Batches for ImageBatches<'_> {
    fn num_batches(&self) -> usize {
        self.set.len().div_ceil(self.batch_size)
    }

    fn num_examples(&self) -> usize {
        self.set.len()
    }

    fn start_epoch(&mut self, _epoch: usize, rng: &mut SeededRng) {
        self.order = if self.shuffle {
            shuffled_indices(self.set.len(), rng)
        } else {
            (0..self.set.len()).collect()
        };
    }

    fn batch(&mut self, i: usize, rng: &mut SeededRng) -> Result<(Tensor, Tensor)> {
        let lo = i * self.batch_size;
        if lo >= self.order.len() {
            candle_core::bail!(
                "batch {i} is past the end of {} ({} images)",
                self.set.name,
                self.order.len()
            );
        }
        let hi = (lo + self.batch_size).min(self.order.len());
        let (x, y) = image_batch(
            self.set,
            &self.order[lo..hi],
            &self.norm,
            self.augment.as_ref(),
            rng,
            &self.device,
        )?;
        Ok((x.to_dtype(self.dtype)?, y))
    }
}
