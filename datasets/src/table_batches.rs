//! Mini-batches of a [`TableSet`] for the training loop ([`Batches`]).

use candle_core::{Device, Result, Tensor};
use secateur_bayes::SeededRng;
use secateur_inference::batches::Batches;

use super::{shuffled_indices, table_batch, Standardizer, TableSet};

/// Batches of a regression table: shuffled (training) or in order (evaluation), standardised by
/// a [`Standardizer`] (build it from the training rows only). Inputs are `[B, F, 1, 1]` f32 (a
/// row as an `F`-channel 1×1 image, the `[C, H, W]` input shape the architectures take) and
/// targets `[B, 1]` f32, the shape of a one-dimensional Gaussian likelihood.
pub struct TableBatches<'a> {
    set: &'a TableSet,
    std: Standardizer,
    batch_size: usize,
    shuffle: bool,
    device: Device,
    order: Vec<usize>,
}

impl<'a> TableBatches<'a> {
    /// Batches over `set`, standardised by `std`; `shuffle` draws a new order each epoch.
    pub fn new(set: &'a TableSet, std: Standardizer, batch_size: usize, shuffle: bool, device: Device) -> Self {
        Self {
            set,
            std,
            batch_size: batch_size.max(1),
            shuffle,
            device,
            order: (0..set.len()).collect(),
        }
    }
}

impl Batches for TableBatches<'_> {
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

    fn batch(&mut self, i: usize, _rng: &mut SeededRng) -> Result<(Tensor, Tensor)> {
        let lo = i * self.batch_size;
        if lo >= self.order.len() {
            candle_core::bail!(
                "batch {i} is past the end of {} ({} rows)",
                self.set.name,
                self.order.len()
            );
        }
        let hi = (lo + self.batch_size).min(self.order.len());
        let (x, y) = table_batch(self.set, &self.order[lo..hi], &self.std, &self.device)?;
        let (b, f) = x.dims2()?;
        Ok((x.reshape((b, f, 1, 1))?, y.reshape((b, 1))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_standardised_and_shaped() -> Result<()> {
        let t = TableSet {
            name: "t".into(),
            columns: vec!["a".into()],
            target: "y".into(),
            x: vec![1.0, 3.0, 5.0],
            y: vec![10.0, 20.0, 30.0],
            n_features: 1,
        };
        let st = t.standardizer();
        let mut b = TableBatches::new(&t, st, 2, false, Device::Cpu);
        let mut rng = SeededRng::new(0);
        b.start_epoch(0, &mut rng);
        assert_eq!(b.num_batches(), 2);
        let (x, y) = b.batch(1, &mut rng)?;
        assert_eq!((x.dims(), y.dims()), (&[1, 1, 1, 1][..], &[1, 1][..]));
        // a: mean 3, population std sqrt(8/3); y: mean 20, std sqrt(200/3)
        let xv = x.flatten_all()?.to_vec1::<f32>()?[0];
        let yv = y.flatten_all()?.to_vec1::<f32>()?[0];
        assert!((xv - 2.0 / (8f32 / 3.0).sqrt()).abs() < 1e-6);
        assert!((yv - 10.0 / (200f32 / 3.0).sqrt()).abs() < 1e-6);
        assert!(b.batch(2, &mut rng).is_err());
        Ok(())
    }
}
