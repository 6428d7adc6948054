//! First-order data-driven criteria: SNIP and the empirical-Fisher scores.

use crate::criteria::HessianScore;
use crate::criterion::{axpy, grads_of, mean_gradient, zeros_like, Criterion, Loss, ScoringContext};
use crate::mask::Scores;
use candle_core::Result;

/// SNIP connection sensitivity (Lee, Ajanthan & Torr 2019): `S = |θ ⊙ ∂L/∂θ|`, the gradient of
/// the mean cross-entropy over the scoring data (the paper uses one batch; over several batches
/// this is the full-data gradient).
#[derive(Debug, Clone, Copy, Default)]
pub struct Snip {
    /// The loss (`T = 1`).
    pub loss: Loss,
}

impl Criterion for Snip {
    fn name(&self) -> &str {
        "snip"
    }
    fn score(&self, cx: &mut ScoringContext) -> Result<Scores> {
        let g = mean_gradient(cx, &self.loss)?;
        cx.targets()
            .into_iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().mul(&g[&k])?.abs()?)))
            .collect()
    }
}

/// Which score [`EmpiricalFisher`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FisherScore {
    /// The empirical Fisher diagonal `F` itself.
    Diagonal,
    /// Fisher pruning `FP = θ² ⊙ F / 2` (Gollini Navarrete et al. 2025; the OBD saliency with the
    /// Hessian replaced by the empirical Fisher).
    Fp,
    /// Fisher Taylor score `FTS = |θ ⊙ ḡ + θ² ⊙ F / 2|` (Gollini Navarrete et al. 2025: the
    /// second-order Taylor change of the loss when `θ` is removed).
    Fts,
}

/// Empirical Fisher diagonal (Gollini Navarrete, Cuadrado Ávila, Takáč & Horváth 2025):
/// `F = (1/N) Σᵢ gᵢ²`, `gᵢ = ∇_θ L(xᵢ, yᵢ)` the gradient of **one** example (the reference scores
/// with batch size 1), and `ḡ = (1/N) Σᵢ gᵢ`; the score is chosen by [`FisherScore`]. Every
/// example of the scoring data is one backward pass, whatever its `batch_size`.
#[derive(Debug, Clone, Copy)]
pub struct EmpiricalFisher {
    /// The loss (`T = 1` by default; unverified against the reference code).
    pub loss: Loss,
    /// Which score.
    pub score: FisherScore,
}

impl EmpiricalFisher {
    /// The score `score` with `T = 1`.
    pub fn new(score: FisherScore) -> Self {
        Self {
            loss: Loss::default(),
            score,
        }
    }
}

/// `(F, ḡ)`: the mean of per-example squared gradients and the mean gradient over the scoring
/// data (one backward pass per example).
pub fn empirical_fisher(cx: &mut ScoringContext, loss: &Loss) -> Result<(Scores, Scores)> {
    loss.validate()?;
    let data = cx.data("fisher")?;
    let targets = cx.targets();
    let (mut f, mut gbar) = (zeros_like(&targets)?, zeros_like(&targets)?);
    let w = 1.0 / data.len() as f64;
    for i in 0..data.len() {
        let (x, y) = data.example(i)?;
        let g = grads_of(&targets, &cx.loss(loss, &x, &y)?.backward()?)?;
        let sq: Scores = g
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.sqr()?)))
            .collect::<Result<_>>()?;
        axpy(&mut f, w, &sq)?;
        axpy(&mut gbar, w, &g)?;
    }
    Ok((f, gbar))
}

impl Criterion for EmpiricalFisher {
    fn name(&self) -> &str {
        match self.score {
            FisherScore::Diagonal => "fisher",
            FisherScore::Fp => "fp",
            FisherScore::Fts => "fts",
        }
    }
    fn score(&self, cx: &mut ScoringContext) -> Result<Scores> {
        let (f, gbar) = empirical_fisher(cx, &self.loss)?;
        // the same three scores as the Hessian criteria, with F in place of diag(H)
        let kind = match self.score {
            FisherScore::Diagonal => HessianScore::Diagonal,
            FisherScore::Fp => HessianScore::Hp,
            FisherScore::Fts => HessianScore::Hts,
        };
        kind.scores(cx, &f, &gbar)
    }
}
