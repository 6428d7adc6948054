//! Posterior criteria: pruning read from a Bayesian network's learned posterior.
//!
//! They read only [`ScoringContext::posterior_stats`] (never the layer types or the posterior's
//! family): every registered probabilistic layer reports, per parameter, its posterior mean,
//! standard deviation, `log α` and gate inclusion probability where its family has them; a
//! posterior over a deterministic network given in [`ScoringContext::posterior`] (SWAG, a
//! Laplace approximation, a deep ensemble) reports its mean and marginal standard deviation. Statistics of non-prunable parameters (biases) are skipped; prunable tensors of
//! deterministic layers get no score (so no mask: they stay dense).

use super::first_order::{EmpiricalFisher, FisherScore};
use crate::criterion::{Criterion, Loss, ScoringContext};
use crate::mask::Scores;
use crate::prunable::prunable;
use candle_core::Result;
use secateur_bayes::Sampling;
use secateur_inference::posterior::{apply_sample, snapshot};

/// A score computed from posterior statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PosteriorScore {
    /// Signal-to-noise ratio `|μ| / σ` (Graves 2011; Blundell et al. 2015, §5.2; Mohan, Scaife et
    /// al. 2022 prune a variational network's weights by it).
    Snr,
    /// `−log α`, `log α = log σ² − log μ²` (Molchanov, Ashukha & Vetrov 2017: weights with
    /// `log α ≥ 3` are dropped; with [`crate::allocate::threshold`] at `−3` this is exactly their
    /// rule, with top-k a target sparsity).
    LogAlpha,
    /// Inclusion probability of a Bernoulli gate or spike-and-slab variable.
    Inclusion,
}

impl Criterion for PosteriorScore {
    fn name(&self) -> &str {
        match self {
            PosteriorScore::Snr => "snr",
            PosteriorScore::LogAlpha => "log-alpha",
            PosteriorScore::Inclusion => "inclusion",
        }
    }
    fn score(&self, cx: &mut ScoringContext) -> Result<Scores> {
        let stats = cx.posterior_stats()?;
        if stats.is_empty() {
            candle_core::bail!(
                "criterion `{}` needs a Bayesian model or a posterior: no probabilistic layer is registered and no posterior is given",
                self.name()
            );
        }
        let targets = prunable(cx.store);
        let mut out = Scores::new();
        for s in stats.into_iter().filter(|s| targets.contains_key(&s.name)) {
            let score = match self {
                PosteriorScore::Snr => s.snr()?,
                PosteriorScore::LogAlpha => match &s.log_alpha {
                    Some(la) => la.neg()?,
                    None => candle_core::bail!("criterion `log-alpha`: parameter `{}` has no log α", s.name),
                },
                PosteriorScore::Inclusion => match &s.inclusion {
                    Some(p) => p.clone(),
                    None => candle_core::bail!(
                        "criterion `inclusion`: parameter `{}` has no gate inclusion probability",
                        s.name
                    ),
                },
            };
            out.insert(s.name, score);
        }
        Ok(out)
    }
}

/// Fisher ranking of a Bayesian network's weights (Mohan, Scaife et al. 2022): the empirical
/// Fisher diagonal `F = (1/N) Σᵢ gᵢ²` of the **mean-mode** network (every stochastic layer at
/// its posterior mean, `Sampling::Mean`) with respect to the posterior means `{name}_mu`
/// (see [`super::first_order::empirical_fisher`]). With a [`ScoringContext::posterior`], the
/// network is evaluated at that posterior's mean (written into the store for the scoring and
/// restored after).
#[derive(Debug, Clone, Copy, Default)]
pub struct PosteriorFisher {
    /// The loss (`T = 1`).
    pub loss: Loss,
}

impl Criterion for PosteriorFisher {
    fn name(&self) -> &str {
        "posterior-fisher"
    }
    fn score(&self, cx: &mut ScoringContext) -> Result<Scores> {
        let saved = cx.sampling;
        cx.sampling = Sampling::Mean;
        let weights = match cx.posterior {
            Some(p) => {
                let w = snapshot(cx.store)?;
                apply_sample(cx.store, &p.mean()?)?;
                Some(w)
            }
            None => None,
        };
        let f = EmpiricalFisher {
            loss: self.loss,
            score: FisherScore::Diagonal,
        }
        .score(cx);
        cx.sampling = saved;
        if let Some(w) = weights {
            apply_sample(cx.store, &w)?;
        }
        f
    }
}
