//! Empirical-Bayes (MOPED) initialisation of every Bayesian layer kind from a deterministic
//! network: afterwards the Bayesian network's posterior-mean forward pass is the deterministic
//! network's forward pass (computed by the deterministic layers, an independent code path).

use candle_core::{DType, Device, Result, Tensor};
use secateur_bayes::empirical_bayes::init_from_deterministic;
use secateur_bayes::layers::VdGranularity;
use secateur_bayes::{Ctx, Module, ParamBuilder, ParamStore, Sampling, SeededRng};
use secateur_models::{build, factory, FactoryOptions, ModelSpec, Network};
use std::collections::BTreeMap;

fn build_kind(arch: &str, kind: &str, opts: &FactoryOptions, seed: u64) -> Result<(ParamStore, Network)> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(seed), DType::F64, Device::Cpu);
    let f = factory(kind, opts)?;
    let net = build(&ModelSpec::new(arch, [1, 28, 28], 10), f.as_ref(), &pb)?;
    Ok((store, net))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
}

/// A "trained" deterministic network: its seeded initialisation with every fifth weight set to
/// exactly zero (as after pruning) and batch-norm running statistics moved away from (0, 1), so
/// that copying them matters.
fn deterministic(arch: &str) -> Result<(Network, BTreeMap<String, Tensor>)> {
    let (store, net) = build_kind(arch, "deterministic", &FactoryOptions::default(), 1)?;
    let mut rng = SeededRng::new(2);
    for (name, var) in store.params().into_iter().chain(store.buffers()) {
        let t = var.as_tensor();
        let v: Vec<f64> = t.flatten_all()?.to_vec1()?;
        let v: Vec<f64> = if name.ends_with("running_mean") {
            rng.uniform_vec(v.len(), -0.5, 0.5).into_iter().map(f64::from).collect()
        } else if name.ends_with("running_var") {
            rng.uniform_vec(v.len(), 0.5, 2.0).into_iter().map(f64::from).collect()
        } else {
            v.iter()
                .enumerate()
                .map(|(i, &x)| if i % 5 == 0 { 0.0 } else { x })
                .collect()
        };
        var.set(&Tensor::from_vec(v, t.dims(), t.device())?)?;
    }
    Ok((net, store.tensors()))
}

#[test]
fn posterior_mean_forward_equals_the_deterministic_forward_after_init() -> Result<()> {
    let unit = FactoryOptions {
        vd_granularity: VdGranularity::Unit,
        ..FactoryOptions::default()
    };
    let x = SeededRng::new(3).randn(&[3, 1, 28, 28], DType::F64, &Device::Cpu)?;
    for arch in ["mlp", "lenet5", "resnet20"] {
        let (det_net, det) = deterministic(arch)?;
        let y_det = det_net.forward(&x, &mut Ctx::eval(&mut SeededRng::new(0), Sampling::Mean))?;
        for (kind, opts) in [
            ("mean-field", FactoryOptions::default()),
            ("sparse-vd", FactoryOptions::default()),
            ("variational-dropout", FactoryOptions::default()),
            ("variational-dropout", unit.clone()),
            ("mc-dropout", FactoryOptions::default()),
        ] {
            let (store, net) = build_kind(arch, kind, &opts, 7)?;
            let mean = |net: &Network| net.forward(&x, &mut Ctx::eval(&mut SeededRng::new(0), Sampling::Mean));
            // before: a different (seeded) initialisation, a different function
            assert!(max_abs_diff(&mean(&net)?, &y_det)? > 1e-3, "{arch}/{kind}");
            init_from_deterministic(&store, &det, 0.1)?;
            let d = max_abs_diff(&mean(&net)?, &y_det)?;
            assert!(d < 1e-10, "{arch}/{kind}: max |Δ| = {d}");
        }
    }
    Ok(())
}

#[test]
fn a_deterministic_model_of_another_architecture_is_refused() -> Result<()> {
    let (_, det) = deterministic("mlp")?;
    let (store, _) = build_kind("lenet5", "mean-field", &FactoryOptions::default(), 7)?;
    let e = init_from_deterministic(&store, &det, 0.1).unwrap_err().to_string();
    assert!(e.contains("empirical-Bayes") && e.contains('`'), "{e}");
    Ok(())
}
