//! Batch-norm warm-up before scoring (Gollini Navarrete, Cuadrado Ávila, Takáč & Horváth 2025).
//!
//! At initialisation batch norm's running statistics are mean 0, variance 1, so a network
//! scored in evaluation mode sees activations normalised by the wrong statistics — the
//! layer-collapse mechanism that paper addresses. The warm-up runs forward passes in **training
//! mode** over the given batches: each batch-norm layer normalises with the batch statistics and
//! updates its running statistics, `r ← (1 − m) r + m · stat` (momentum `m = 0.1`, unbiased
//! variance; PyTorch's rule, see `secateur_bayes::nn::BatchNorm`). No backward pass is run
//! and no parameter changes: only the running statistics (buffers) move. Scoring then runs in
//! evaluation mode ([`crate::ScoringContext::new`]).

use candle_core::{Result, Tensor};
use secateur_bayes::{Ctx, Mode, Module, Sampling, SeededRng};
use secateur_inference::batches::Batches;

/// Forward passes in training mode over `inputs` (no gradient), updating only the batch-norm
/// running statistics; stochastic layers use `sampling` and draw from `rng`. Returns the
/// number of batches seen.
pub fn warm_up<I>(model: &dyn Module, inputs: I, sampling: Sampling, rng: &mut SeededRng) -> Result<usize>
where
    I: IntoIterator<Item = Tensor>,
{
    let mut n = 0;
    for x in inputs {
        let mut ctx = Ctx {
            mode: Mode::Train,
            sampling,
            rng: &mut *rng,
            width: None,
            bn_momentum: None,
            taps: None,
            samples: 1,
            shared: false,
        };
        // The output (and the graph it holds) is dropped: no backward pass.
        drop(model.forward(&x, &mut ctx)?);
        n += 1;
    }
    Ok(n)
}

/// [`warm_up`] over one pass of a batch source (the reference uses one pass over the training
/// set), or its first `max_batches` batches. Labels are ignored. The pass is prepared with
/// `batches.start_epoch(0, rng)` (shuffling and augmentation draw from `rng`).
pub fn warm_up_batches(
    model: &dyn Module,
    batches: &mut dyn Batches,
    max_batches: Option<usize>,
    sampling: Sampling,
    rng: &mut SeededRng,
) -> Result<usize> {
    batches.start_epoch(0, rng);
    let n = max_batches.map_or(batches.num_batches(), |m| m.min(batches.num_batches()));
    for i in 0..n {
        let (x, _) = batches.batch(i, rng)?;
        warm_up(model, std::iter::once(x), sampling, rng)?;
    }
    Ok(n)
}
