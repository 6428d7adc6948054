//! Criteria read from the trained run's optimiser state rather than from the weights and data
//! alone.
//!
//! [`AdamFisher`] is the Fisher ranking of Mohan, Scaife et al.'s radio-galaxy code (its
//! `pruning.py`, `FisherPruningMethod` with `r = 1`): the score of a weight is Adam's running
//! second moment `v` of its gradient at the end of training (`exp_avg_sq`, an exponential average
//! with β₂ = 0.999 of `g²` over the last few thousand mini-batches), an empirical-Fisher estimate
//! accumulated along training. For a variational layer the gradient is that of the whole ELBO
//! with respect to the posterior mean `μ` (the expected NLL under the weight noise, plus the KL's
//! pull `∝ μ/σ_p²` toward the prior), so the ranking mixes curvature with magnitude; the
//! `posterior-fisher` criterion instead scores the NLL's Fisher at the posterior mean on scoring
//! examples. Their code also mixes magnitude in explicitly (`r < 1`); this is the `r = 1` case.

use crate::criterion::{Criterion, ScoringContext};
use crate::mask::Scores;
use candle_core::Result;

/// Adam's second moment of each prunable weight's gradient (see the [module documentation](self)),
/// read from [`ScoringContext::optimizer_moments`] under `<stored name>.exp_avg_sq` (for a
/// variational layer the stored name is the mean's, `fc1.weight_mu`).
#[derive(Debug, Clone, Copy, Default)]
pub struct AdamFisher;

/// The key of a parameter's Adam second moment in a checkpoint's `optimizer.safetensors`.
pub fn second_moment_key(stored: &str) -> String {
    format!("{stored}.exp_avg_sq")
}

impl Criterion for AdamFisher {
    fn name(&self) -> &str {
        "adam-fisher"
    }
    fn score(&self, cx: &mut ScoringContext) -> Result<Scores> {
        let Some(moments) = cx.optimizer_moments else {
            candle_core::bail!(
                "criterion `adam-fisher` reads the Adam second moments of a trained run (its last checkpoint's \
                 optimizer.safetensors): prune a run trained with adam or adamw (prune --run)"
            );
        };
        let mut out = Scores::new();
        for (logical, (stored, var)) in crate::prunable::prunable(cx.store) {
            let key = second_moment_key(&stored);
            let Some(v) = moments.get(&key) else {
                candle_core::bail!(
                    "criterion `adam-fisher`: the optimiser state has no `{key}` for `{logical}` (was the run trained \
                     with adam or adamw?)"
                );
            };
            if v.dims() != var.dims() {
                candle_core::bail!(
                    "criterion `adam-fisher`: `{key}` has shape {:?}, `{stored}` has {:?}",
                    v.dims(),
                    var.dims()
                );
            }
            out.insert(logical, v.to_dtype(var.dtype())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};
    use secateur_bayes::{Ctx, Init, Module, ParamBuilder, ParamStore, SeededRng};
    use std::collections::BTreeMap;

    /// The criterion reads no forward pass; the model is never called.
    struct NoForward;
    impl Module for NoForward {
        fn forward(&self, _: &Tensor, _: &mut Ctx) -> Result<Tensor> {
            candle_core::bail!("adam-fisher must not run the model")
        }
    }

    /// The scores are the second moments of the prunable weights, by logical name, for a
    /// variational layer's mean; a missing moment, a wrong shape and no optimiser state are
    /// refused by name.
    #[test]
    fn scores_are_the_second_moments() -> Result<()> {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
        pb.pp("fc1").param("weight_mu", &[2, 3], Init::Const(0.5))?;
        pb.pp("fc1").param("weight_rho", &[2, 3], Init::Const(-5.0))?;
        pb.pp("fc1").param("bias_mu", &[2], Init::Const(0.0))?;
        let v = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &Device::Cpu)?;
        let mut moments = BTreeMap::new();
        moments.insert("fc1.weight_mu.exp_avg_sq".to_string(), v.clone());
        moments.insert("fc1.weight_mu.exp_avg".to_string(), v.zeros_like()?);
        let model = NoForward;
        let mut rng = SeededRng::new(1);
        let mut cx = ScoringContext::new(&model, &store, None, &mut rng).with_optimizer_moments(&moments);
        let s = AdamFisher.score(&mut cx)?;
        assert_eq!(s.keys().collect::<Vec<_>>(), ["fc1.weight"]);
        assert_eq!(s["fc1.weight"].to_vec2::<f32>()?, v.to_vec2::<f32>()?);

        moments.insert(
            "fc1.weight_mu.exp_avg_sq".into(),
            Tensor::zeros(6, DType::F32, &Device::Cpu)?,
        );
        let mut cx = ScoringContext::new(&model, &store, None, &mut rng).with_optimizer_moments(&moments);
        let e = AdamFisher.score(&mut cx).unwrap_err().to_string();
        assert!(e.contains("shape"), "{e}");
        moments.remove("fc1.weight_mu.exp_avg_sq");
        let mut cx = ScoringContext::new(&model, &store, None, &mut rng).with_optimizer_moments(&moments);
        let e = AdamFisher.score(&mut cx).unwrap_err().to_string();
        assert!(e.contains("fc1.weight_mu.exp_avg_sq"), "{e}");
        let mut cx = ScoringContext::new(&model, &store, None, &mut rng);
        let e = AdamFisher.score(&mut cx).unwrap_err().to_string();
        assert!(e.contains("adam"), "{e}");
        Ok(())
    }
}
