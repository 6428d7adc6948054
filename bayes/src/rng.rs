//! The run's seeded random generator.
//!
//! candle's CPU random generator cannot be seeded, so secateur draws every random number from a
//! [`SeededRng`]: a ChaCha8 stream whose full state is three integers (seed, stream, word
//! position). The state can be saved in a checkpoint and restored so that a resumed run draws
//! exactly the numbers the uninterrupted run would have drawn.

use candle_core::{DType, Device, Result, Tensor};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Numbers per parallel block of [`SeededRng::normal_vec`].
const NORMAL_BLOCK: usize = 1 << 14;
/// Words of the stream reserved per block of [`SeededRng::normal_vec`] (a block uses about
/// `2 · NORMAL_BLOCK = 2¹⁵`).
const BLOCK_WORDS: u128 = 1 << 32;

/// The saved state of a [`SeededRng`]: enough to continue the stream bit-identically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The 64-bit seed the stream was created from.
    pub seed: u64,
    /// The ChaCha stream number (used to derive independent sub-streams).
    pub stream: u64,
    /// Position in the stream, in 32-bit words.
    pub word_pos: u128,
}

/// A seeded, checkpointable random generator (ChaCha8).
///
/// ```
/// use secateur_bayes::SeededRng;
/// use rand::Rng;
/// let mut a = SeededRng::new(7);
/// let mut b = SeededRng::new(7);
/// assert_eq!(a.random::<u64>(), b.random::<u64>());
/// ```
#[derive(Debug, Clone)]
pub struct SeededRng {
    seed: u64,
    inner: ChaCha8Rng,
}

impl SeededRng {
    /// A generator seeded with `seed` (stream 0).
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            inner: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// An independent sub-stream of the same seed, e.g. one per epoch for data shuffling, so that
    /// the order of an epoch does not depend on how many numbers earlier epochs drew.
    pub fn substream(seed: u64, stream: u64) -> Self {
        let mut inner = ChaCha8Rng::seed_from_u64(seed);
        inner.set_stream(stream);
        Self { seed, inner }
    }

    /// The seed this generator was created from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The current state, for checkpoints.
    pub fn state(&self) -> RngState {
        RngState {
            seed: self.seed,
            stream: self.inner.get_stream(),
            word_pos: self.inner.get_word_pos(),
        }
    }

    /// Rebuilds a generator from a saved state.
    pub fn from_state(state: RngState) -> Self {
        let mut inner = ChaCha8Rng::seed_from_u64(state.seed);
        inner.set_stream(state.stream);
        inner.set_word_pos(state.word_pos);
        Self {
            seed: state.seed,
            inner,
        }
    }

    /// `n` independent standard-normal draws as f32 (ziggurat, `rand_distr::StandardNormal`).
    ///
    /// Draws of at least `2 · NORMAL_BLOCK` numbers (the local-reparameterisation noise of a conv
    /// layer is ~10⁵–10⁶) run in parallel: block `b` of `NORMAL_BLOCK` numbers draws from this
    /// stream at word position `p + b · BLOCK_WORDS`, `p` the current position, and the generator
    /// continues after the last block's reservation. A block uses about two words per number
    /// (rejections are rare), far below its reservation (checked), so blocks never overlap; the
    /// numbers depend on the seed and stream position only, not on the thread count, and the
    /// state stays `(seed, stream, word position)` for checkpoints.
    pub fn normal_vec(&mut self, n: usize) -> Vec<f32> {
        if n < 2 * NORMAL_BLOCK {
            return (0..n).map(|_| StandardNormal.sample(&mut self.inner)).collect();
        }
        let base = self.inner.get_word_pos();
        let inner = &self.inner;
        let mut out = vec![0f32; n];
        out.par_chunks_mut(NORMAL_BLOCK).enumerate().for_each(|(b, block)| {
            let mut g = inner.clone();
            let start = base + b as u128 * BLOCK_WORDS;
            g.set_word_pos(start);
            block.iter_mut().for_each(|v| *v = StandardNormal.sample(&mut g));
            assert!(
                g.get_word_pos() - start < BLOCK_WORDS,
                "normal_vec: a block overran its reserved words"
            );
        });
        self.inner
            .set_word_pos(base + n.div_ceil(NORMAL_BLOCK) as u128 * BLOCK_WORDS);
        out
    }

    /// A uniform draw from `{0, …, n − 1}` (`n ≥ 1`; 0 for `n = 0`).
    pub fn index(&mut self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        self.inner.random_range(0..n)
    }

    /// `n` uniform draws on `[lo, hi)` as f32.
    ///
    /// The numbers `rand`'s `random_range(lo..hi)` would draw one by one (`lo < hi`, both
    /// finite): the stream's next `n` 32-bit words, each mapped as rand 0.9 maps it, to
    /// `(1.m − 1) · (hi − lo) + lo` with `m` its 23 high bits, but the words generated in bulk
    /// and the map run as one vectorisable loop (a gated LeNet-300-100 step draws 151k of them;
    /// one by one they took 7% of its samples on the 2-core AMD EPYC).
    pub fn uniform_vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        assert!(
            lo < hi && (hi - lo).is_finite(),
            "uniform_vec: empty or infinite range [{lo}, {hi})"
        );
        let mut words = vec![0u32; n];
        self.inner.fill(&mut words[..]);
        let scale = hi - lo;
        words
            .iter()
            .map(|&w| (f32::from_bits((w >> 9) | 0x3F80_0000) - 1.0) * scale + lo)
            .collect()
    }

    /// A tensor of standard-normal draws with the given shape, dtype and device.
    pub fn randn(&mut self, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let n = shape.iter().product();
        Tensor::from_vec(self.normal_vec(n), shape, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    }

    /// A tensor of uniform draws on `[lo, hi)` with the given shape, dtype and device.
    pub fn rand_uniform(&mut self, shape: &[usize], lo: f32, hi: f32, dtype: DType, device: &Device) -> Result<Tensor> {
        let n = shape.iter().product();
        Tensor::from_vec(self.uniform_vec(n, lo, hi), shape, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    }
}

impl SeededRng {
    /// A tensor of independent Rademacher signs (±1 with probability ½ each), e.g. the sign
    /// vectors of Flipout (Wen et al. 2018) or Hutchinson probes.
    pub fn rademacher(&mut self, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let bits = self.inner.next_u64();
            for k in 0..64.min(n - v.len()) {
                v.push(if (bits >> k) & 1 == 1 { 1f32 } else { -1f32 });
            }
        }
        Tensor::from_vec(v, shape, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    }
}

impl RngCore for SeededRng {
    fn next_u32(&mut self) -> u32 {
        self.inner.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.inner.fill_bytes(dest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bulk draw equals `random_range(lo..hi)` called once per number, bit for bit, and
    /// leaves the stream where those calls would (the next draws agree too), from an odd word
    /// position as well.
    #[test]
    fn uniform_vec_equals_one_by_one_draws() {
        for (n, lo, hi) in [
            (0usize, 0f32, 1f32),
            (1, 0.0, 1.0),
            (7, -2.5, 3.0),
            (1000, 0.0, 1.0),
            (4097, 1e-3, 2e-3),
        ] {
            let mut bulk = SeededRng::new(11);
            let _ = bulk.next_u32(); // start from an odd word position
            let mut one = bulk.clone();
            let a = bulk.uniform_vec(n, lo, hi);
            let b: Vec<f32> = (0..n).map(|_| one.inner.random_range(lo..hi)).collect();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "n = {n}, [{lo}, {hi})");
            assert_eq!(bulk.state(), one.state(), "n = {n}");
            assert_eq!(bulk.next_u64(), one.next_u64());
        }
    }

    #[test]
    fn large_normal_draws_are_thread_count_independent_and_resumable() {
        let n = 5 * NORMAL_BLOCK + 123;
        let draw = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut g = SeededRng::new(5);
            let v = pool.install(|| g.normal_vec(n));
            (v, g.state())
        };
        let (a, sa) = draw(1);
        for t in [2, 3] {
            let (b, sb) = draw(t);
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{t} threads differ"
            );
            assert_eq!(sa, sb);
        }
        // the state after a parallel draw continues the stream: a resumed generator draws what
        // the uninterrupted one draws next
        let mut g = SeededRng::new(5);
        let _ = g.normal_vec(n);
        let mut resumed = SeededRng::from_state(g.state());
        assert_eq!(g.normal_vec(n), resumed.normal_vec(n));
        // blocks are not copies of each other
        assert_ne!(a[..NORMAL_BLOCK], a[NORMAL_BLOCK..2 * NORMAL_BLOCK]);
    }

    #[test]
    fn large_normal_draws_have_standard_moments_and_uncorrelated_blocks() {
        let n = 64 * NORMAL_BLOCK;
        let v = SeededRng::new(9).normal_vec(n);
        let nf = n as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / nf;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / nf;
        let kurt = v.iter().map(|&x| (x as f64 - mean).powi(4)).sum::<f64>() / nf / (var * var);
        // standard errors: 1/√n for the mean, √(2/n) for the variance, √(24/n) for the kurtosis
        assert!(mean.abs() < 5.0 / nf.sqrt(), "mean {mean}");
        assert!((var - 1.0).abs() < 5.0 * (2.0 / nf).sqrt(), "variance {var}");
        assert!((kurt - 3.0).abs() < 5.0 * (24.0 / nf).sqrt(), "kurtosis {kurt}");
        // neighbouring blocks, element by element: correlation within 5 standard errors of 0
        let (a, b) = (&v[..(n - NORMAL_BLOCK)], &v[NORMAL_BLOCK..]);
        let m = a.len() as f64;
        let r = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>() / m;
        assert!(r.abs() < 5.0 / m.sqrt(), "lag-one-block correlation {r}");
    }

    #[test]
    fn state_round_trip_continues_the_stream() {
        let mut a = SeededRng::new(42);
        let _: Vec<f32> = a.normal_vec(17);
        let saved = a.state();
        let next: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let mut b = SeededRng::from_state(saved);
        let again: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(next, again);
    }

    #[test]
    fn substreams_differ_and_are_reproducible() {
        let x: Vec<u32> = (0..4).map(|_| SeededRng::substream(1, 3).next_u32()).collect();
        assert!(x.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            SeededRng::substream(1, 3).next_u64(),
            SeededRng::substream(1, 4).next_u64()
        );
    }

    #[test]
    fn normal_draws_have_unit_moments() {
        let v = SeededRng::new(0).normal_vec(200_000);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        // standard errors: 1/sqrt(n) ≈ 0.0022 for the mean, sqrt(2/n) ≈ 0.0032 for the variance
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "var {var}");
    }
}
