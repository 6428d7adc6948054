//! Sources of mini-batches: the [`Batches`] trait that training, prediction and scoring read,
//! and [`TensorBatches`], an in-memory implementation over two tensors.
//!
//! A pass over a data set is `start_epoch` (which may draw the pass's order from the run's
//! generator), then `batch(0) … batch(num_batches − 1)`. Every draw comes from the
//! [`SeededRng`] passed in, so a pass is reproducible from the generator's state.

use candle_core::{bail, DType, Result, Tensor};
use rand::Rng;
use secateur_bayes::SeededRng;

/// A source of mini-batches `(inputs, targets)`: integer labels `[B]` (u32) for the categorical
/// likelihood, float targets `[B, D]` (f32) for a Gaussian one.
pub trait Batches {
    /// Number of batches in one pass.
    fn num_batches(&self) -> usize;
    /// Number of examples in one pass.
    fn num_examples(&self) -> usize;
    /// Prepares a pass (e.g. draws the epoch's shuffle from `rng`).
    fn start_epoch(&mut self, epoch: usize, rng: &mut SeededRng);
    /// Batch `i` of the current pass; augmentation draws from `rng`.
    fn batch(&mut self, i: usize, rng: &mut SeededRng) -> Result<(Tensor, Tensor)>;
}

/// Mini-batches of an in-memory data set: inputs `x: [N, …]` and targets `y: [N]` (labels) or
/// `[N, D]` (regression targets), in batches of `batch_size` examples; the last batch keeps the
/// remaining `N mod batch_size` examples when that is not zero, so every example is seen exactly
/// once per pass.
///
/// Without shuffling the batches are consecutive slices of `x` and `y` and no number is drawn.
/// With [`TensorBatches::shuffled`], [`Batches::start_epoch`] draws the pass's order by the
/// Fisher–Yates shuffle (Durstenfeld's in-place form; Knuth, TAOCP vol. 2, Algorithm 3.4.2P) of
/// the identity `0, 1, …, N − 1`: for `i = N − 1` down to `1`, one draw
/// `j = rng.random_range(0..=i)` (rand's uniform integer sampling), then swap positions `i` and
/// `j`. That is `N − 1` draws per epoch, so the order depends only on the generator's state at
/// the start of the epoch.
///
/// ```
/// use secateur_inference::batches::{Batches, TensorBatches};
/// use secateur_bayes::SeededRng;
/// use candle_core::{Device, Tensor};
/// let x = Tensor::arange(0f32, 10.0, &Device::Cpu)?.reshape((5, 2))?;
/// let y = Tensor::new(&[0u32, 1, 0, 1, 1], &Device::Cpu)?;
/// let mut data = TensorBatches::new(x, y, 2)?;
/// let mut rng = SeededRng::new(0);
/// data.start_epoch(0, &mut rng);
/// assert_eq!(data.num_batches(), 3);
/// let (xb, yb) = data.batch(2, &mut rng)?; // the last, partial batch
/// assert_eq!((xb.dims(), yb.to_vec1::<u32>()?), (&[1, 2][..], vec![1]));
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct TensorBatches {
    x: Tensor,
    y: Tensor,
    batch_size: usize,
    shuffle: bool,
    order: Vec<u32>,
}

impl TensorBatches {
    /// Batches of `batch_size` over `x: [N, …]` and `y: [N]` or `[N, D]`, in order (no shuffle).
    /// Fails with a message naming the argument when `batch_size` is 0, `x` is a scalar, `y` is
    /// not of rank 1 or 2, the leading dimensions differ, `N` is 0 or does not fit in `u32`.
    pub fn new(x: Tensor, y: Tensor, batch_size: usize) -> Result<Self> {
        if batch_size == 0 {
            bail!("tensor batches: `batch_size` must be at least 1, got 0");
        }
        let n = match x.dims().first() {
            Some(&n) => n,
            None => bail!("tensor batches: inputs `x` must be [N, ...], got a scalar"),
        };
        if !matches!(y.rank(), 1 | 2) {
            bail!("tensor batches: targets `y` must be [N] or [N, D], got {:?}", y.dims());
        }
        if y.dim(0)? != n {
            bail!(
                "tensor batches: `x` has {n} examples ({:?}) but `y` has {} ({:?})",
                x.dims(),
                y.dim(0)?,
                y.dims()
            );
        }
        if n == 0 {
            bail!("tensor batches: the data set is empty (`x` is {:?})", x.dims());
        }
        if u32::try_from(n).is_err() {
            bail!("tensor batches: {n} examples do not fit in a u32 index");
        }
        if !x.device().same_device(y.device()) {
            bail!("tensor batches: `x` is on {:?} but `y` on {:?}", x.device(), y.device());
        }
        Ok(Self {
            x,
            y,
            batch_size,
            shuffle: false,
            order: (0..n as u32).collect(),
        })
    }

    /// Draws a new order at every [`Batches::start_epoch`] (see the type's docs for the draws).
    pub fn shuffled(mut self) -> Self {
        self.shuffle = true;
        self
    }

    /// Whether every pass is shuffled.
    pub fn is_shuffled(&self) -> bool {
        self.shuffle
    }

    /// The batch size.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The current pass's order: position `k` of the pass is example `order()[k]`.
    pub fn order(&self) -> &[u32] {
        &self.order
    }
}

/// The Fisher–Yates shuffle of `v` in place: for `i = len − 1` down to `1`, swap `v[i]` with
/// `v[j]`, `j = rng.random_range(0..=i)`.
fn fisher_yates(v: &mut [u32], rng: &mut SeededRng) {
    for i in (1..v.len()).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
}

impl Batches for TensorBatches {
    fn num_batches(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }

    fn num_examples(&self) -> usize {
        self.order.len()
    }

    fn start_epoch(&mut self, _epoch: usize, rng: &mut SeededRng) {
        if self.shuffle {
            self.order.iter_mut().enumerate().for_each(|(k, o)| *o = k as u32);
            fisher_yates(&mut self.order, rng);
        }
    }

    fn batch(&mut self, i: usize, _rng: &mut SeededRng) -> Result<(Tensor, Tensor)> {
        let n = self.order.len();
        let lo = i.saturating_mul(self.batch_size);
        if lo >= n {
            bail!(
                "tensor batches: batch {i} is past the end ({} batches of {} examples)",
                self.num_batches(),
                self.batch_size
            );
        }
        let len = self.batch_size.min(n - lo);
        if !self.shuffle {
            return Ok((self.x.narrow(0, lo, len)?, self.y.narrow(0, lo, len)?));
        }
        let idx = Tensor::from_slice(&self.order[lo..lo + len], len, self.x.device())?;
        debug_assert_eq!(idx.dtype(), DType::U32);
        Ok((self.x.index_select(&idx, 0)?, self.y.index_select(&idx, 0)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// `x[k] = [k, 100 + k]`, `y[k] = k`, so a batch names the examples it holds.
    fn data(n: usize) -> Result<(Tensor, Tensor)> {
        let x: Vec<f32> = (0..n).flat_map(|k| [k as f32, 100.0 + k as f32]).collect();
        let y: Vec<u32> = (0..n as u32).collect();
        Ok((
            Tensor::from_vec(x, (n, 2), &Device::Cpu)?,
            Tensor::from_vec(y, n, &Device::Cpu)?,
        ))
    }

    /// The labels of every batch of one pass, in order, after checking that each batch's inputs
    /// are the rows of those examples.
    fn pass(b: &mut TensorBatches, epoch: usize, rng: &mut SeededRng) -> Result<Vec<Vec<u32>>> {
        b.start_epoch(epoch, rng);
        let mut out = Vec::new();
        for i in 0..b.num_batches() {
            let (x, y) = b.batch(i, rng)?;
            let ys = y.to_vec1::<u32>()?;
            let xs = x.to_vec2::<f32>()?;
            for (row, &k) in xs.iter().zip(&ys) {
                assert_eq!(row, &[k as f32, 100.0 + k as f32]);
            }
            out.push(ys);
        }
        Ok(out)
    }

    #[test]
    fn every_example_once_per_pass_with_the_partial_batch_kept() -> Result<()> {
        for shuffle in [false, true] {
            let (x, y) = data(10)?;
            let mut b = TensorBatches::new(x, y, 4)?;
            if shuffle {
                b = b.shuffled();
            }
            assert_eq!((b.num_batches(), b.num_examples()), (3, 10));
            let mut rng = SeededRng::new(7);
            for epoch in 0..3 {
                let batches = pass(&mut b, epoch, &mut rng)?;
                let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
                assert_eq!(sizes, [4, 4, 2]);
                let mut all: Vec<u32> = batches.concat();
                if !shuffle {
                    assert_eq!(all, (0..10).collect::<Vec<u32>>());
                }
                all.sort_unstable();
                assert_eq!(all, (0..10).collect::<Vec<u32>>());
            }
        }
        Ok(())
    }

    #[test]
    fn the_shuffle_is_fisher_yates_and_deterministic_per_seed() -> Result<()> {
        let (x, y) = data(50)?;
        let mut b = TensorBatches::new(x, y, 8)?.shuffled();
        let order = |b: &mut TensorBatches, seed: u64| -> Result<Vec<Vec<u32>>> {
            let mut rng = SeededRng::new(seed);
            Ok(vec![pass(b, 0, &mut rng)?.concat(), pass(b, 1, &mut rng)?.concat()])
        };
        let a = order(&mut b, 3)?;
        assert_eq!(a, order(&mut b, 3)?);
        assert_ne!(a, order(&mut b, 4)?);
        assert_ne!(a[0], a[1], "two epochs drew the same order");
        assert_ne!(a[0], (0..50).collect::<Vec<u32>>());
        // the same draws written out independently: Durstenfeld's loop on 0..N
        let mut rng = SeededRng::new(3);
        let mut want: Vec<u32> = (0..50).collect();
        for i in (1..50usize).rev() {
            let j: usize = rng.random_range(0..=i);
            want.swap(i, j);
        }
        assert_eq!(a[0], want);
        // the pass drew what the written-out loop drew, nothing more: the next draws agree
        let mut after = SeededRng::new(3);
        b.start_epoch(0, &mut after);
        assert_eq!(after.random::<u64>(), rng.random::<u64>());
        // unshuffled batches draw nothing
        let (x, y) = data(5)?;
        let mut plain = TensorBatches::new(x, y, 2)?;
        let mut r = SeededRng::new(3);
        pass(&mut plain, 0, &mut r)?;
        assert_eq!(r.state(), SeededRng::new(3).state());
        Ok(())
    }

    #[test]
    fn regression_targets_keep_their_rows() -> Result<()> {
        let x = Tensor::arange(0f32, 6.0, &Device::Cpu)?.reshape((3, 1, 2))?;
        let y = Tensor::new(&[[1f32, -1.0], [2.0, -2.0], [3.0, -3.0]], &Device::Cpu)?;
        let mut b = TensorBatches::new(x, y, 2)?.shuffled();
        let mut rng = SeededRng::new(1);
        b.start_epoch(0, &mut rng);
        let order = b.order().to_vec();
        let (xb, yb) = b.batch(0, &mut rng)?;
        assert_eq!(xb.dims(), &[2, 1, 2]);
        let xb = xb.flatten_all()?.to_vec1::<f32>()?;
        let yb = yb.to_vec2::<f32>()?;
        for (r, &k) in order[..2].iter().enumerate() {
            assert_eq!(yb[r], [k as f32 + 1.0, -(k as f32 + 1.0)]);
            assert_eq!(xb[2 * r..2 * r + 2], [2.0 * k as f32, 2.0 * k as f32 + 1.0]);
        }
        Ok(())
    }

    #[test]
    fn bad_shapes_and_sizes_are_refused_by_argument() -> Result<()> {
        let (x, y) = data(4)?;
        let err = |r: Result<TensorBatches>| r.unwrap_err().to_string();
        assert!(err(TensorBatches::new(x.clone(), y.clone(), 0)).contains("`batch_size`"));
        let s = Tensor::new(1f32, &Device::Cpu)?;
        assert!(err(TensorBatches::new(s, y.clone(), 2)).contains("`x`"));
        let y3 = Tensor::zeros((4, 1, 1), DType::F32, &Device::Cpu)?;
        assert!(err(TensorBatches::new(x.clone(), y3, 2)).contains("`y` must be [N] or [N, D]"));
        let (_, y5) = data(5)?;
        let e = err(TensorBatches::new(x.clone(), y5, 2));
        assert!(e.contains("4 examples") && e.contains("has 5"), "{e}");
        let (x0, y0) = (
            Tensor::zeros((0, 2), DType::F32, &Device::Cpu)?,
            Tensor::zeros(0, DType::U32, &Device::Cpu)?,
        );
        assert!(err(TensorBatches::new(x0, y0, 2)).contains("empty"));
        let mut b = TensorBatches::new(x, y, 3)?;
        let mut rng = SeededRng::new(0);
        assert!(b.batch(2, &mut rng).unwrap_err().to_string().contains("past the end"));
        assert!(b.batch(usize::MAX, &mut rng).is_err());
        Ok(())
    }
}
