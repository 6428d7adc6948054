//! Data-free baselines: random and magnitude scores.

use crate::criterion::{Criterion, ScoringContext};
use crate::mask::Scores;
use candle_core::Result;

/// Random scores `U(0, 1)`, one independent draw per weight from the run's generator, in sorted
/// name order (the random-pruning baseline; same seed, same masks).
#[derive(Debug, Clone, Copy, Default)]
pub struct Random;

impl Criterion for Random {
    fn name(&self) -> &str {
        "random"
    }
    fn score(&self, cx: &mut ScoringContext) -> Result<Scores> {
        let mut out = Scores::new();
        for (k, v) in cx.targets() {
            let t = cx.rng.rand_uniform(v.dims(), 0.0, 1.0, v.dtype(), v.device())?;
            out.insert(k, t);
        }
        Ok(out)
    }
}

/// Magnitude scores `|θ|` (Han, Pool, Tran & Dally 2015).
#[derive(Debug, Clone, Copy, Default)]
pub struct Magnitude;

impl Criterion for Magnitude {
    fn name(&self) -> &str {
        "magnitude"
    }
    fn score(&self, cx: &mut ScoringContext) -> Result<Scores> {
        cx.targets()
            .into_iter()
            .map(|(k, v)| Ok((k, v.as_tensor().abs()?)))
            .collect()
    }
}
