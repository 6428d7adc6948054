//! Bayesian factories: every architecture builds with every layer kind, the registry holds one
//! variational layer per weight layer under the deterministic (PyTorch-style) path, and the
//! parameter names follow the layer family.

use candle_core::{DType, Device, Result, Tensor};
use secateur_bayes::divergence::Divergence;
use secateur_bayes::{Ctx, Module, ParamBuilder, ParamStore, Sampling, SeededRng};
use secateur_models::{build, factory, FactoryOptions, LayerFactory, ModelSpec, Network, ARCHITECTURES, LAYER_KINDS};
use std::collections::BTreeSet;

fn build_with(arch: &str, kind: &str) -> Result<(ParamStore, Network)> {
    let f: Box<dyn LayerFactory> = factory(kind, &FactoryOptions::default())?;
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
    let net = build(&ModelSpec::new(arch, [1, 28, 28], 10), f.as_ref(), &pb)?;
    Ok((store, net))
}

/// The paths of the weight layers of the deterministic build: every `X.weight` of rank ≥ 2
/// (batch-norm and layer-norm weights are 1-D and not made by the factory).
fn weight_layers(arch: &str) -> Result<BTreeSet<String>> {
    let (store, _) = build_with(arch, "deterministic")?;
    Ok(store
        .params()
        .into_iter()
        .filter(|(n, v)| n.ends_with(".weight") && v.rank() >= 2)
        .map(|(n, _)| n.trim_end_matches(".weight").to_string())
        .collect())
}

fn check(arch: &str, kind: &str) -> Result<()> {
    let (store, _) = build_with(arch, kind)?;
    let expected = weight_layers(arch)?;
    let registered: BTreeSet<String> = store.variational_layers().into_iter().map(|(n, _)| n).collect();
    match kind {
        "deterministic" | "mc-dropout" | "nested-dropout" => {
            assert!(registered.is_empty(), "{arch}/{kind}: {registered:?}")
        }
        // every weight layer but the first (which reads the network input) orders its inputs
        "variational-nested-dropout" => {
            assert!(
                registered.is_subset(&expected) && registered.len() + 1 == expected.len(),
                "{arch}/{kind}"
            )
        }
        _ => assert_eq!(registered, expected, "{arch}/{kind}"),
    }
    let names: BTreeSet<String> = store.params().into_keys().collect();
    for layer in &expected {
        let want: &[&str] = match kind {
            "mean-field" => &["weight_mu", "weight_rho"],
            "sparse-vd" => &["weight_mu", "weight_log_sigma2"],
            "variational-dropout" => &["weight_mu", "weight_log_alpha"],
            "spike-slab" => &["weight_mu", "weight_rho", "inclusion_logit"],
            "gsm-gates" => &["weight_mu", "gate_theta"],
            _ => &["weight"],
        };
        for w in want {
            assert!(names.contains(&format!("{layer}.{w}")), "{arch}/{kind}: no {layer}.{w}");
        }
    }
    if !registered.is_empty() && kind != "variational-nested-dropout" {
        // posterior statistics: one per weight tensor, named `{layer}.weight`
        let stats = store.posterior_stats()?;
        let weights: BTreeSet<String> = stats
            .iter()
            .filter(|s| s.name.ends_with(".weight"))
            .map(|s| s.name.trim_end_matches(".weight").to_string())
            .collect();
        assert_eq!(weights, expected, "{arch}/{kind}");
    }
    Ok(())
}

#[test]
fn quick_architectures_build_with_every_layer_kind() -> Result<()> {
    for arch in ["mlp", "lenet5", "resnet20"] {
        for kind in LAYER_KINDS {
            check(arch, kind)?;
        }
    }
    Ok(())
}

#[test]
fn every_architecture_builds_with_the_bayesian_factories() -> Result<()> {
    for arch in ARCHITECTURES {
        for kind in ["mean-field", "sparse-vd"] {
            let (store, _) = build_with(arch, kind)?;
            assert!(!store.variational_layers().is_empty(), "{arch}/{kind}");
        }
    }
    Ok(())
}

#[test]
fn bayesian_lenet5_runs_and_has_a_finite_divergence() -> Result<()> {
    let x = Tensor::ones((2, 1, 28, 28), DType::F32, &Device::Cpu)?;
    for (kind, div) in [("mean-field", Divergence::Kl), ("sparse-vd", Divergence::Kl)] {
        let (store, net) = build_with("lenet5", kind)?;
        let mut rng = SeededRng::new(3);
        for s in [Sampling::Mean, Sampling::Weight, Sampling::Local, Sampling::Flipout] {
            let y = net.forward(&x, &mut Ctx::train(&mut rng, s))?;
            assert_eq!(y.dims(), &[2, 10], "{kind} {s:?}");
        }
        let (total, per_layer) = store.divergence(&div, &mut rng)?;
        assert!(total.to_scalar::<f32>()?.is_finite());
        assert_eq!(per_layer.len(), 5, "{kind}: {per_layer:?}");
    }
    // MC dropout draws a mask whenever sampling is not `Mean`: two draws differ, `Mean` does not.
    let (_, net) = build_with("mlp", "mc-dropout")?;
    let mut rng = SeededRng::new(4);
    let a = net.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Weight))?;
    let b = net.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Weight))?;
    assert!(a.ne(&b)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? > 0.0);
    let c = net.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
    let d = net.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
    assert_eq!(c.to_vec2::<f32>()?, d.to_vec2::<f32>()?);
    Ok(())
}
