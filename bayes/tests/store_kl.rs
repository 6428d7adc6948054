//! `ParamStore::kl`: the analytic divergence of every layer kind, summed, with no generator.

use candle_core::{DType, Device, Result};
use secateur_bayes::layers::VariationalNestedDropout;
use secateur_bayes::layers::VariationalNestedDropoutConfig;
use secateur_bayes::prelude::*;

/// One layer of every kind that registers a posterior, in one store.
fn store_with_every_kind() -> Result<ParamStore> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(3), DType::F64, Device::Cpu);
    BayesLinear::new(&pb.pp("mf"), BayesLinearConfig::new(4, 3))?;
    BayesConv2d::new(&pb.pp("mfc"), BayesConv2dConfig::new(2, 3, 3))?;
    SvdLinear::new(&pb.pp("svd"), SvdLinearConfig::new(4, 3))?;
    VdLinear::new(&pb.pp("vd"), VdLinearConfig::new(4, 3))?;
    SpikeSlabLinear::new(&pb.pp("ss"), SpikeSlabLinearConfig::new(4, 3))?;
    GateLinear::new(&pb.pp("gate"), GateLinearConfig::new(4, 3))?;
    VariationalNestedDropout::new(&pb.pp("vnd"), VariationalNestedDropoutConfig::new(5))?;
    Ok(store)
}

#[test]
fn kl_is_the_summed_analytic_divergence_and_draws_nothing() -> Result<()> {
    let store = store_with_every_kind()?;
    assert_eq!(store.variational_layers().len(), 7);
    let mut rng = SeededRng::new(11);
    let before = rng.state();
    let (total, per_layer) = store.divergence(&Divergence::Kl, &mut rng)?;
    // no layer's analytic divergence advances the generator
    assert_eq!(rng.state(), before);
    let kl = store.kl()?.to_scalar::<f64>()?;
    assert_eq!(kl, total.to_scalar::<f64>()?);
    // and the total is the sum of the per-layer shares, each layer counted once
    let sum: f64 = per_layer.values().sum();
    assert!((kl - sum).abs() <= 1e-12 * sum.abs().max(1.0), "{kl} vs {sum}");
    assert_eq!(per_layer.len(), 7);
    Ok(())
}

#[test]
fn kl_of_a_store_without_posteriors_is_zero() -> Result<()> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
    Linear::new(&pb.pp("fc"), LinearCfg::new(3, 2))?;
    assert_eq!(store.kl()?.to_scalar::<f32>()?, 0.0);
    Ok(())
}
