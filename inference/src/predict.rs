//! Batched prediction of class probabilities.

use crate::train::Batches;
use candle_core::{DType, Result, D};
use secateur_bayes::{Ctx, Module, Sampling, SeededRng};

/// Predicted probabilities (row-major `[N × classes]`) and the true labels of a data set.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// Softmax probabilities, row-major `[N × classes]`.
    pub probs: Vec<f32>,
    /// True labels, length N.
    pub labels: Vec<u32>,
    /// Number of classes.
    pub classes: usize,
}

/// Runs `model` in evaluation mode over every batch of `data` and collects the softmax
/// probabilities. `rng` feeds stochastic layers when `sampling` is not [`Sampling::Mean`].
pub fn predict(
    model: &dyn Module,
    data: &mut dyn Batches,
    sampling: Sampling,
    rng: &mut SeededRng,
) -> Result<Predictions> {
    data.start_epoch(0, rng);
    let mut probs = Vec::new();
    let mut labels = Vec::new();
    let mut classes = 0;
    for i in 0..data.num_batches() {
        let (x, y) = data.batch(i, rng)?;
        let mut ctx = Ctx::eval(rng, sampling);
        let logits = model.forward(&x, &mut ctx)?;
        classes = logits.dim(D::Minus1)?;
        let p = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
        probs.extend(p.flatten_all()?.to_vec1::<f32>()?);
        labels.extend(y.to_dtype(DType::U32)?.to_vec1::<u32>()?);
    }
    Ok(Predictions { probs, labels, classes })
}
