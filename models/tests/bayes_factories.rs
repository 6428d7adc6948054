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
            check(arch, kind.name)?;
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

/// Per-layer priors of the mean-field factory: the layer named in `layer_priors` gets its own
/// prior, the others the model's. Checked through the per-layer divergences against the
/// closed-form Gaussian KL computed here from the stored μ and ρ:
/// `KL = Σ [log(s/σ) + (σ² + (μ − m)²)/(2 s²) − ½]`, `σ = softplus(ρ)`.
#[test]
fn mean_field_layer_priors_apply_to_their_layer_only() -> Result<()> {
    use secateur_bayes::Prior;
    use secateur_models::MeanField;
    let tight = Prior::gaussian(0.0, 0.1).unwrap();
    let priors = [("fc3".to_string(), tight)].into_iter().collect();
    let f = MeanField::new(Prior::default(), 0.05)?.with_layer_priors(priors)?;
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F64, Device::Cpu);
    build(&ModelSpec::new("mlp", [1, 28, 28], 10), &f, &pb)?;
    assert!(f.unused_layer_priors(&store).is_empty());
    let (_, per_layer) = store.divergence(&Divergence::Kl, &mut SeededRng::new(1))?;
    let kl_by_hand = |layer: &str, s: f64| -> Result<f64> {
        let mut total = 0.0;
        for part in ["weight", "bias"] {
            let mu = store.get(&format!("{layer}.{part}_mu")).expect("mu");
            let rho = store.get(&format!("{layer}.{part}_rho")).expect("rho");
            let mu: Vec<f64> = mu.flatten_all()?.to_vec1()?;
            let rho: Vec<f64> = rho.flatten_all()?.to_vec1()?;
            for (m, r) in mu.iter().zip(&rho) {
                let sigma = (1.0 + r.exp()).ln();
                total += (s / sigma).ln() + (sigma * sigma + m * m) / (2.0 * s * s) - 0.5;
            }
        }
        Ok(total)
    };
    for (layer, s) in [("fc1", 1.0), ("fc2", 1.0), ("fc3", 0.1)] {
        let got = per_layer[layer];
        let want = kl_by_hand(layer, s)?;
        assert!(
            (got - want).abs() < 1e-8 * want.abs().max(1.0),
            "{layer}: {got} vs {want}"
        );
    }
    // a path the model does not have is reported, an invalid prior refused with its layer
    let typo = MeanField::default().with_layer_priors([("fc9".to_string(), tight)].into_iter().collect())?;
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
    build(&ModelSpec::new("mlp", [1, 28, 28], 10), &typo, &pb)?;
    assert_eq!(typo.unused_layer_priors(&store), vec!["fc9".to_string()]);
    let bad = Prior::Gaussian { mean: 0.0, std: -1.0 };
    let e = MeanField::default()
        .with_layer_priors([("fc1".to_string(), bad)].into_iter().collect())
        .unwrap_err()
        .to_string();
    assert!(e.contains("fc1"), "{e}");
    Ok(())
}

/// `spike_slab_layer_inclusion` reaches the layers: with λ of fc1 changed from `a` to `b` (same
/// seed, so the same γ = 0.99 and weights), fc1's divergence changes by the closed form of the
/// Bernoulli term alone, `Σ_nodes [γ ln(a/b) + (1−γ) ln((1−a)/(1−b))]` over its 300 nodes, and
/// fc2's (λ from the list too) and fc3's (no node selection) do not change.
#[test]
fn spike_slab_layer_inclusion_sets_each_layers_prior() -> Result<()> {
    let kl = |l: Vec<f64>| -> Result<std::collections::BTreeMap<String, f64>> {
        let opts = FactoryOptions {
            spike_slab_layer_inclusion: l,
            ..FactoryOptions::default()
        };
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(4), DType::F64, Device::Cpu);
        build(
            &ModelSpec::new("mlp", [1, 28, 28], 10),
            factory("spike-slab", &opts)?.as_ref(),
            &pb,
        )?;
        Ok(store.divergence(&Divergence::Kl, &mut SeededRng::new(0))?.1)
    };
    let (a, b) = (2e-3, 1e-4);
    let ka = kl(vec![a, 5e-3])?;
    let kb = kl(vec![b, 5e-3])?;
    let g: f64 = 0.99;
    let want = 300.0 * (g * (a / b).ln() + (1.0 - g) * ((1.0 - a) / (1.0 - b)).ln());
    let got = kb["fc1"] - ka["fc1"];
    assert!((got - want).abs() < 1e-6 * want.abs(), "{got} vs {want}");
    assert_eq!(ka["fc2"], kb["fc2"]);
    assert_eq!(ka["fc3"], kb["fc3"]);
    // an inclusion outside (0, 1) is refused
    let opts = FactoryOptions {
        spike_slab_layer_inclusion: vec![1.0],
        ..FactoryOptions::default()
    };
    assert!(factory("spike-slab", &opts).is_err());
    Ok(())
}
