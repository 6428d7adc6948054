//! The named sub-streams of a run's seed.
//!
//! Every random draw of a run comes from a [`SeededRng`] made from the run's seed and a stream
//! number ([`SeededRng::substream`]): one independent generator per purpose, so that changing one
//! part of a run (the architecture, the warm-up, the validation split) does not change the draws
//! of the others. [`SeedStream`] names those purposes. Its numbers are the ones every published
//! result was made with: changing one changes the results of every seed.
//!
//! **Stream 5 has two purposes.** The scoring examples, probes and random scores of pruning
//! ([`SeedStream::Prune`]) and the train/test split of a regression table
//! ([`SeedStream::TableSplit`]) both draw from stream 5. They never meet in one run (pruning runs
//! on image data, the table split only under a Gaussian likelihood), and renumbering either would
//! change published results, so they keep the number; they are two variants so that each call
//! site says what it draws.
//!
//! **Reserved.** The training loop of `secateur-inference` evaluates on the validation data
//! after each epoch with stream `1_000_000 + epoch` of the run's seed (`Trainer::fit`), so that
//! evaluation never shifts the training stream; the streams here stay below.
//!
//! ```
//! use secateur_experiments::seed_stream::SeedStream;
//! assert_eq!(SeedStream::DataSplit.number(), 4);
//! let mut a = SeedStream::Init.rng(7);
//! let mut b = secateur_bayes::SeededRng::substream(7, 1);
//! use rand::RngCore;
//! assert_eq!(a.next_u64(), b.next_u64());
//! ```

use secateur_bayes::SeededRng;

/// A purpose that draws from the run's seed, with its stream number ([`SeedStream::number`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeedStream {
    /// 1: parameter initialisation of the model (every layer's initial values, drawn in build
    /// order).
    Init,
    /// 2: the training loop's generator (its state is checkpointed): each epoch's shuffle and
    /// augmentation, the noise of stochastic layers (weight samples, dropout, gates) and Monte
    /// Carlo divergences during training.
    Train,
    /// 3: evaluation and prediction on the test set (Monte Carlo samples of stochastic layers).
    Eval,
    /// 4: the training/validation split of an image data set (`data.val_fraction > 0`), drawn
    /// the same way by `train` and `eval`.
    DataSplit,
    /// 5: pruning's scoring examples (`samples_per_class` per class), then the Rademacher probes
    /// and random scores of the criteria (`prune`, `scores`, the PaI study). Shares its number
    /// with [`SeedStream::TableSplit`] (see the [module documentation](self)).
    Prune,
    /// 5: the train/test split of a regression table (`data.test_fraction`). Shares its number
    /// with [`SeedStream::Prune`] (see the [module documentation](self)).
    TableSplit,
    /// 6: the shuffling of growing regularisation's training phase (`[greg]`).
    Greg,
    /// 7: the training-set shuffle of the batch-norm warm-up before scoring, apart from
    /// [`SeedStream::Prune`] so that the scoring examples and probes are the same with and
    /// without warm-up (a paired comparison).
    BnWarmup,
    /// 8: the fit of a `[posterior]` (Laplace's prior-precision search on validation data).
    Posterior,
    /// 9: the draws of a `[posterior]`'s predictive (SWAG and Laplace samples, the shuffles of
    /// batch-norm recomputation), apart from [`SeedStream::Posterior`] so that the predictive of
    /// a run is the same whether or not it was fitted in the same process.
    PosteriorPredictive,
    /// 10: the draws of `secateur report` from the report's own `--seed` (not a run's): the
    /// shifted copies of the test set and the split of the test set that fits the temperature,
    /// the same for every run compared (a paired comparison).
    Report,
    /// 11: the fine-tune of a pruned network in the compression study
    /// ([`crate::compression_study`]): its shuffles and weight noise, the same for every
    /// criterion and sparsity of a seed (and apart from [`SeedStream::Train`], which trained the
    /// network), so that fine-tuned cells are a paired comparison.
    Finetune,
    /// 12: DLLP (`prune --method dllp`, [`crate::dllp`]): the particles' initial jitter and the
    /// shuffles of their Stein steps, apart from [`SeedStream::Finetune`], from which the
    /// fine-tune of its hardened particles draws as every other fine-tune of the compression
    /// study does.
    Dllp,
}

impl SeedStream {
    /// Every stream, in number order.
    pub const ALL: [SeedStream; 13] = [
        SeedStream::Init,
        SeedStream::Train,
        SeedStream::Eval,
        SeedStream::DataSplit,
        SeedStream::Prune,
        SeedStream::TableSplit,
        SeedStream::Greg,
        SeedStream::BnWarmup,
        SeedStream::Posterior,
        SeedStream::PosteriorPredictive,
        SeedStream::Report,
        SeedStream::Finetune,
        SeedStream::Dllp,
    ];

    /// The stream number passed to [`SeededRng::substream`].
    pub const fn number(self) -> u64 {
        match self {
            SeedStream::Init => 1,
            SeedStream::Train => 2,
            SeedStream::Eval => 3,
            SeedStream::DataSplit => 4,
            SeedStream::Prune | SeedStream::TableSplit => 5,
            SeedStream::Greg => 6,
            SeedStream::BnWarmup => 7,
            SeedStream::Posterior => 8,
            SeedStream::PosteriorPredictive => 9,
            SeedStream::Report => 10,
            SeedStream::Finetune => 11,
            SeedStream::Dllp => 12,
        }
    }

    /// The generator of this purpose for the run's `seed`:
    /// `SeededRng::substream(seed, self.number())`.
    pub fn rng(self, seed: u64) -> SeededRng {
        SeededRng::substream(seed, self.number())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    /// The numbers every published result was made with; a change here changes results.
    #[test]
    fn numbers_are_the_published_ones() {
        let n: Vec<u64> = SeedStream::ALL.iter().map(|s| s.number()).collect();
        assert_eq!(n, [1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10, 11, 12]);
    }

    /// Distinct purposes draw from distinct streams, except the documented pair sharing 5, and
    /// all stay below the training loop's per-epoch streams.
    #[test]
    fn streams_are_distinct_except_the_documented_pair() {
        for (i, a) in SeedStream::ALL.iter().enumerate() {
            assert!(a.number() < 1_000_000, "{a:?}");
            for b in &SeedStream::ALL[i + 1..] {
                let shared = matches!(
                    (a, b),
                    (SeedStream::Prune, SeedStream::TableSplit) | (SeedStream::TableSplit, SeedStream::Prune)
                );
                assert_eq!(a.number() == b.number(), shared, "{a:?} and {b:?}");
            }
        }
    }

    #[test]
    fn rng_is_the_numbered_substream() {
        for s in SeedStream::ALL {
            let (mut a, mut b) = (s.rng(42), SeededRng::substream(42, s.number()));
            assert_eq!(
                (0..4).map(|_| a.next_u64()).collect::<Vec<_>>(),
                (0..4).map(|_| b.next_u64()).collect::<Vec<_>>()
            );
        }
        assert_ne!(SeedStream::Init.rng(0).next_u64(), SeedStream::Train.rng(0).next_u64());
    }
}
