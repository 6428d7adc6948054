//! First-order and data-free criteria against hand-derived values on a two-layer linear network
//! (closed forms in `common`), and the posterior criteria against the stored posterior.
//! Second-order criteria are tested in `second_order.rs` (in child processes started with
//! `CANDLE_GRAD_DO_NOT_DETACH=1`); here, that they refuse without it.

mod common;

use candle_core::{DType, Device, Result, Tensor};
use common::*;
use secateur_bayes::layers::{BayesLinear, BayesLinearConfig, SvdLinear, SvdLinearConfig};
use secateur_bayes::math::softplus;
use secateur_bayes::{Module, ParamBuilder, ParamStore, SeededRng};
use secateur_pruning::criteria::*;
use secateur_pruning::criterion::{by_name, entry, names, per_class_indices, CRITERIA};
use secateur_pruning::{Criterion, ScoringContext, ScoringData};

fn score(
    c: &dyn Criterion,
    model: &dyn Module,
    store: &ParamStore,
    data: Option<&ScoringData>,
) -> Result<secateur_pruning::Scores> {
    let mut rng = SeededRng::new(11);
    c.score(&mut ScoringContext::new(model, store, data, &mut rng))
}

#[test]
fn snip_matches_the_closed_form_gradient() -> Result<()> {
    let (net, store) = two_layer(4, 3, 3, 1, false)?;
    let (x, y) = data(7, 4, 3, 2)?;
    // batches of 3, 3, 1: the batch losses must be weighted by their share of the examples
    let d = ScoringData::new(x.clone(), y.clone(), 3)?;
    let s = score(&Snip::default(), &net, &store, Some(&d))?;
    let (w1, w2) = (mat(&net.fc1.weight), mat(&net.fc2.weight));
    let ys = y.to_vec1::<u32>()?;
    let (g1, g2) = mean_pair(&mat(&x), &ys, |xi, yi| grad(&w1, &w2, xi, yi, 1.0));
    let abs_prod = |w: &Mat, g: &Mat| -> Mat {
        w.iter()
            .zip(g)
            .map(|(r, s)| r.iter().zip(s).map(|(a, b)| (a * b).abs()).collect())
            .collect()
    };
    assert!(rel_err(&mat(&s["fc1.weight"]), &abs_prod(&w1, &g1)) < 1e-12);
    assert!(rel_err(&mat(&s["fc2.weight"]), &abs_prod(&w2, &g2)) < 1e-12);
    Ok(())
}

#[test]
fn empirical_fisher_is_the_mean_of_per_example_squared_gradients() -> Result<()> {
    let (net, store) = two_layer(4, 3, 3, 3, true)?;
    let (x, y) = data(6, 4, 3, 4)?;
    // a large batch size: the Fisher must still use one example per backward pass
    let d = ScoringData::new(x.clone(), y.clone(), 6)?;
    let mut rng = SeededRng::new(0);
    let mut cx = ScoringContext::new(&net, &store, Some(&d), &mut rng);
    let (f, gbar) = first_order::empirical_fisher(&mut cx, &secateur_pruning::Loss::default())?;
    // independent computation: autograd one example at a time, squared and averaged here
    let ys = y.to_vec1::<u32>()?;
    let n = ys.len() as f64;
    let (mut f1, mut f2) = (zeros(3, 4), zeros(3, 3));
    let (mut m1, mut m2) = (zeros(3, 4), zeros(3, 3));
    for i in 0..ys.len() {
        let one = ScoringData::new(x.narrow(0, i, 1)?, y.narrow(0, i, 1)?, 1)?;
        let g = score(&GradientProbe, &net, &store, Some(&one))?;
        let (a, b) = (mat(&g["fc1.weight"]), mat(&g["fc2.weight"]));
        let sq = |m: &Mat| -> Mat { m.iter().map(|r| r.iter().map(|v| v * v / n).collect()).collect() };
        f1 = add(&f1, &sq(&a));
        f2 = add(&f2, &sq(&b));
        m1 = add(&m1, &scale(&a, 1.0 / n));
        m2 = add(&m2, &scale(&b, 1.0 / n));
    }
    assert!(rel_err(&mat(&f["fc1.weight"]), &f1) < 1e-12);
    assert!(rel_err(&mat(&f["fc2.weight"]), &f2) < 1e-12);
    assert!(rel_err(&mat(&gbar["fc1.weight"]), &m1) < 1e-12);
    // FP and FTS from F and ḡ
    let fp = score(&EmpiricalFisher::new(FisherScore::Fp), &net, &store, Some(&d))?;
    let fts = score(&EmpiricalFisher::new(FisherScore::Fts), &net, &store, Some(&d))?;
    let w2 = mat(&net.fc2.weight);
    let want_fp: Mat = w2
        .iter()
        .zip(&f2)
        .map(|(r, s)| r.iter().zip(s).map(|(w, f)| w * w * f / 2.0).collect())
        .collect();
    let want_fts: Mat = w2
        .iter()
        .zip(&f2)
        .zip(&m2)
        .map(|((r, s), g)| {
            r.iter()
                .zip(s)
                .zip(g)
                .map(|((w, f), g)| (w * g + w * w * f / 2.0).abs())
                .collect()
        })
        .collect();
    assert!(rel_err(&mat(&fp["fc2.weight"]), &want_fp) < 1e-12);
    assert!(rel_err(&mat(&fts["fc2.weight"]), &want_fts) < 1e-12);
    Ok(())
}

/// The plain mean gradient as a "criterion", to get one example's gradient for the Fisher test.
struct GradientProbe;
impl Criterion for GradientProbe {
    fn name(&self) -> &str {
        "gradient"
    }
    fn score(&self, cx: &mut ScoringContext) -> Result<secateur_pruning::Scores> {
        secateur_pruning::criterion::mean_gradient(cx, &secateur_pruning::Loss::default())
    }
}

#[test]
fn synflow_matches_the_path_norm_gradient_and_restores_signs() -> Result<()> {
    // R = 1ᵀ |W2| |W1| 1 (the ReLU is the identity on positive activations);
    // ∂R/∂W2[k,j] = (|W1| 1)_j, ∂R/∂W1[j,i] = (1ᵀ |W2|)_j; the score is |θ| ∂R/∂θ / R.
    let (net, store) = two_layer(4, 3, 2, 5, true)?;
    let before = store
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, mat(&v)))
        .collect::<Vec<_>>();
    let sf = SynFlow {
        input_shape: Some(vec![4]),
    };
    let s = score(&sf, &net, &store, None)?;
    let a1: Mat = mat(&net.fc1.weight)
        .iter()
        .map(|r| r.iter().map(|v| v.abs()).collect())
        .collect();
    let a2: Mat = mat(&net.fc2.weight)
        .iter()
        .map(|r| r.iter().map(|v| v.abs()).collect())
        .collect();
    let row1: Vec<f64> = a1.iter().map(|r| r.iter().sum()).collect();
    let col2: Vec<f64> = tmatvec(&a2, &[1.0, 1.0]);
    let r: f64 = col2.iter().zip(&row1).map(|(a, b)| a * b).sum();
    let want1: Mat = a1
        .iter()
        .enumerate()
        .map(|(j, rw)| rw.iter().map(|v| v * col2[j] / r).collect())
        .collect();
    let want2: Mat = a2
        .iter()
        .map(|rw| rw.iter().enumerate().map(|(j, v)| v * row1[j] / r).collect())
        .collect();
    assert!(rel_err(&mat(&s["fc1.weight"]), &want1) < 1e-12);
    assert!(rel_err(&mat(&s["fc2.weight"]), &want2) < 1e-12);
    // Euler: the scores of a bias-free two-layer network sum to 2
    let total: f64 = s
        .values()
        .map(|t| t.sum_all().unwrap().to_scalar::<f64>().unwrap())
        .sum();
    assert!((total - 2.0).abs() < 1e-12);
    let after = store
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, mat(&v)))
        .collect::<Vec<_>>();
    assert_eq!(before, after, "weights (with their signs) must be restored exactly");
    Ok(())
}

#[test]
fn magnitude_random_and_names() -> Result<()> {
    let (net, store) = two_layer(4, 3, 2, 6, false)?;
    let m = score(&Magnitude, &net, &store, None)?;
    assert_eq!(
        m["fc1.weight"].to_vec2::<f64>()?,
        net.fc1.weight.abs()?.to_vec2::<f64>()?
    );
    let r1 = score(&Random, &net, &store, None)?;
    let r2 = score(&Random, &net, &store, None)?;
    assert_eq!(r1["fc2.weight"].to_vec2::<f64>()?, r2["fc2.weight"].to_vec2::<f64>()?);
    assert!(r1["fc1.weight"]
        .to_vec2::<f64>()?
        .iter()
        .flatten()
        .all(|v| (0.0..1.0).contains(v)));
    Ok(())
}

/// The registry: every entry builds a criterion of its own name that answers the entry's needs,
/// names are unique, and the needs are those of the papers (a mistyped flag fails here).
#[test]
fn the_registry_builds_every_criterion_with_its_needs() -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for e in CRITERIA {
        assert!(seen.insert(e.name), "`{}` is registered twice", e.name);
        let c = by_name(e.name)?;
        assert_eq!(c.name(), e.name);
        assert_eq!(c.needs_data(), e.needs_data, "{}", e.name);
        assert_eq!(c.needs_double_backprop(), e.needs_double_backprop, "{}", e.name);
        assert_eq!(c.default_rounds(), e.default_rounds, "{}", e.name);
        assert!(e.default_rounds >= 1 && !e.description.is_empty(), "{}", e.name);
    }
    assert_eq!(names(), CRITERIA.iter().map(|e| e.name).collect::<Vec<_>>());
    let double: Vec<&str> = CRITERIA
        .iter()
        .filter(|e| e.needs_double_backprop)
        .map(|e| e.name)
        .collect();
    assert_eq!(double, ["grasp", "hutchinson", "hp", "hts"]);
    let iterative: Vec<(&str, usize)> = CRITERIA
        .iter()
        .filter(|e| e.default_rounds > 1)
        .map(|e| (e.name, e.default_rounds))
        .collect();
    assert_eq!(iterative, [("synflow", 100)]);
    for free in ["random", "magnitude", "snr", "log-alpha", "inclusion"] {
        assert!(!entry(free)?.needs_data, "{free}");
    }
    for data in [
        "snip",
        "grasp",
        "synflow",
        "fisher",
        "fp",
        "fts",
        "hts",
        "ggn",
        "posterior-fisher",
    ] {
        assert!(entry(data)?.needs_data, "{data}");
    }
    assert!(!SynFlow {
        input_shape: Some(vec![4])
    }
    .needs_data());
    // Without scoring data, a criterion that needs it fails; a data-free one never fails for
    // want of data (the posterior criteria refuse this deterministic network for another reason).
    let (net, store) = two_layer(4, 3, 2, 6, false)?;
    for e in CRITERIA {
        let r = score((e.build)(&Default::default()).as_ref(), &net, &store, None);
        if e.needs_data {
            assert!(r.is_err(), "{} scored without data", e.name);
        } else if let Err(err) = r {
            assert!(!err.to_string().contains("data"), "{}: {err}", e.name);
        }
    }
    let e = by_name("obd").err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("`obd`") && e.contains("posterior-fisher"), "{e}");
    Ok(())
}

#[test]
fn second_order_criteria_refuse_without_double_backprop() -> Result<()> {
    // second-order tests run in child processes; this one needs the parent's first-order setting
    if secateur_kernels::double_backprop::requested() {
        eprintln!("skipped: this process was started with CANDLE_GRAD_DO_NOT_DETACH set");
        return Ok(());
    }
    let (net, store) = two_layer(4, 3, 2, 6, false)?;
    let (x, y) = data(4, 4, 2, 1)?;
    let d = ScoringData::new(x, y, 4)?;
    let e = score(&Grasp::default(), &net, &store, Some(&d))
        .unwrap_err()
        .to_string();
    assert!(e.contains("CANDLE_GRAD_DO_NOT_DETACH"), "{e}");
    let e = score(&Hutchinson::new(HessianScore::Hts), &net, &store, Some(&d))
        .unwrap_err()
        .to_string();
    assert!(e.contains("CANDLE_GRAD_DO_NOT_DETACH"), "{e}");
    Ok(())
}

#[test]
fn per_class_sampling_is_balanced_and_seeded() -> Result<()> {
    let labels = Tensor::new((0..50u32).map(|i| i % 5).collect::<Vec<_>>(), &Device::Cpu)?;
    let a = per_class_indices(&labels, 3, 5, &mut SeededRng::new(1))?;
    let b = per_class_indices(&labels, 3, 5, &mut SeededRng::new(1))?;
    assert_eq!(a, b);
    let l = labels.to_vec1::<u32>()?;
    for c in 0..5u32 {
        assert_eq!(a.iter().filter(|&&i| l[i] == c).count(), 3);
    }
    let mut u = a.clone();
    u.sort();
    u.dedup();
    assert_eq!(u.len(), 15, "drawn without replacement");
    let e = per_class_indices(&labels, 11, 5, &mut SeededRng::new(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("class 0"), "{e}");
    Ok(())
}

#[test]
fn posterior_criteria_read_the_posterior_statistics() -> Result<()> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(3), DType::F32, Device::Cpu);
    let _mf = BayesLinear::new(&pb.pp("fc1"), BayesLinearConfig::new(5, 4).with_init_std(0.05))?;
    let _svd = SvdLinear::new(&pb.pp("fc2"), SvdLinearConfig::new(4, 3).with_init_log_sigma2(-3.0))?;
    let net = common::two_layer(1, 1, 1, 0, false)?.0; // the posterior criteria never run the model
    let snr = score(&PosteriorScore::Snr, &net, &store, None)?;
    let p = store.params();
    let mu = p["fc1.weight_mu"].as_tensor();
    let want = mu.abs()?.div(&softplus(p["fc1.weight_rho"].as_tensor())?)?;
    let diff = (&snr["fc1.weight"] - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff < 1e-6);
    assert!(!snr.contains_key("fc1.bias"), "biases are not prunable");
    let la = score(&PosteriorScore::LogAlpha, &net, &store, None)?;
    let theta = p["fc2.weight_mu"].as_tensor();
    // −log α = −clip(log σ² − log(θ² + 1e−16), −8, 8)
    let want = (p["fc2.weight_log_sigma2"].as_tensor() - (theta.sqr()? + 1e-16)?.log()?)?
        .clamp(-8.0, 8.0)?
        .neg()?;
    let diff = (&la["fc2.weight"] - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff < 1e-5);
    let e = score(&PosteriorScore::Inclusion, &net, &store, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("inclusion"), "{e}");
    let det = common::two_layer(2, 2, 2, 0, false)?;
    assert!(
        score(&PosteriorScore::Snr, &det.0, &det.1, None).is_err(),
        "no probabilistic layer"
    );
    Ok(())
}

#[test]
fn synflow_on_deep_networks_scores_a_float64_twin() -> Result<()> {
    use secateur_models::{build, Deterministic, ModelSpec};
    let score_of = |spec: &ModelSpec, dt: DType| -> Result<(secateur_pruning::Scores, ParamStore)> {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), dt, Device::Cpu);
        let net = build(spec, &Deterministic, &pb)?;
        Ok((score(&SynFlow::default_for(spec), &net, &store, None)?, store))
    };
    // ResNet-56's synaptic flow overflows f32: refused with the remedy
    let deep = ModelSpec::new("resnet56", [3, 32, 32], 10);
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
    let net = build(&deep, &Deterministic, &pb)?;
    let e = score(&SynFlow::default_for(&deep), &net, &store, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("float64"), "{e}");
    let (twin, twin_store) = float64_twin(&deep, &Deterministic, &store)?;
    let s = score(&SynFlow::default_for(&deep), &twin, &twin_store, None)?;
    assert_eq!(s.len(), 56);
    // scores of ln R: for a network homogeneous but for the classifier bias, Σ θ ∂ln R/∂θ is
    // just under the number of weight layers (Euler)
    let total: f64 = s
        .values()
        .map(|t| t.sum_all().unwrap().to_scalar::<f64>().unwrap())
        .sum();
    assert!(total > 55.0 && total <= 56.0 + 1e-9, "{total}");
    // on a shallower network the f32 model and its f64 twin agree
    let spec = ModelSpec::new("resnet20", [3, 32, 32], 10);
    let (s32, store32) = score_of(&spec, DType::F32)?;
    let (twin, twin_store) = float64_twin(&spec, &Deterministic, &store32)?;
    let s64 = score(&SynFlow::default_for(&spec), &twin, &twin_store, None)?;
    for (k, a) in &s32 {
        let b = &s64[k];
        let err = (a.to_dtype(DType::F64)? - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
        let scale = b.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(err <= 1e-4 * scale, "{k}: {err} vs {scale}");
    }
    Ok(())
}

#[test]
fn bayesian_networks_are_scored_through_their_posterior_means() -> Result<()> {
    use secateur_models::{build, Deterministic, MeanField, ModelSpec};
    use std::collections::HashMap;
    // SNIP of a mean-field MLP at its posterior mean equals SNIP of the deterministic MLP whose
    // weights and biases are those means
    let spec = ModelSpec::new("mlp", [1, 4, 4], 3);
    let bstore = ParamStore::new();
    let pb = ParamBuilder::new(bstore.clone(), SeededRng::new(1), DType::F64, Device::Cpu);
    let bnet = build(&spec, &MeanField::new(Default::default(), 0.1)?, &pb)?;
    let dstore = ParamStore::new();
    let pb = ParamBuilder::new(dstore.clone(), SeededRng::new(2), DType::F64, Device::Cpu);
    let dnet = build(&spec, &Deterministic, &pb)?;
    let means: HashMap<String, Tensor> = bstore
        .params()
        .into_iter()
        .filter_map(|(k, v)| {
            k.strip_suffix("_mu")
                .map(|b| (b.to_string(), v.as_tensor().copy().unwrap()))
        })
        .collect();
    dstore.load(&means)?;
    let mut rng = SeededRng::new(3);
    let x = rng.randn(&[6, 1, 4, 4], DType::F64, &Device::Cpu)?;
    let y = Tensor::new(&[0u32, 1, 2, 0, 1, 2], &Device::Cpu)?;
    let d = ScoringData::new(x, y, 4)?;
    let sb = score(&Snip::default(), &bnet, &bstore, Some(&d))?;
    let sd = score(&Snip::default(), &dnet, &dstore, Some(&d))?;
    assert_eq!(
        sb.keys().collect::<Vec<_>>(),
        ["fc1.weight", "fc2.weight", "fc3.weight"]
    );
    for (k, a) in &sb {
        let err = (a - &sd[k])?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(err < 1e-14, "{k}: {err}");
    }
    Ok(())
}

#[test]
fn posterior_criteria_read_a_posterior_over_a_deterministic_network() -> Result<()> {
    use secateur_inference::posterior::{snapshot, Ensemble, Posterior};
    // three independently seeded members of the same architecture: a deep ensemble
    let (net, store) = two_layer(4, 3, 3, 1, true)?;
    let members = (0..3)
        .map(|s| snapshot(&two_layer(4, 3, 3, 20 + s, true)?.1))
        .collect::<Result<Vec<_>>>()?;
    let ens = Ensemble::new(members.clone())?;
    let before = snapshot(&store)?;
    // SNR = |mean| / std across members, computed here from the member weights
    let mut rng = SeededRng::new(0);
    let snr = posterior::PosteriorScore::Snr
        .score(&mut ScoringContext::new(&net, &store, None, &mut rng).with_posterior(&ens))?;
    let w: Vec<Mat> = members.iter().map(|m| mat(&m["fc2.weight"])).collect();
    let got = mat(&snr["fc2.weight"]);
    for i in 0..3 {
        for j in 0..3 {
            let v: Vec<f64> = w.iter().map(|m| m[i][j]).collect();
            let mu = v.iter().sum::<f64>() / 3.0;
            let sd = (v.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / 3.0).sqrt();
            assert!(
                (got[i][j] - mu.abs() / sd).abs() < 1e-9 * (1.0 + mu.abs() / sd),
                "{i},{j}"
            );
        }
    }
    // without the posterior the deterministic network has no posterior statistics
    let e = posterior::PosteriorScore::Snr
        .score(&mut ScoringContext::new(&net, &store, None, &mut rng))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no posterior is given"), "{e}");
    // Fisher at the posterior mean = the empirical Fisher of the network holding the mean
    let (x, y) = data(5, 4, 3, 2)?;
    let d = ScoringData::new(x, y, 5)?;
    let f = posterior::PosteriorFisher::default()
        .score(&mut ScoringContext::new(&net, &store, Some(&d), &mut rng).with_posterior(&ens))?;
    // the store is restored after scoring
    assert_eq!(mat(&store.tensors()["fc1.weight"]), mat(&before["fc1.weight"]));
    let (net2, store2) = two_layer(4, 3, 3, 1, true)?;
    secateur_inference::posterior::apply_sample(&store2, &ens.mean()?)?;
    let want = score(
        &first_order::EmpiricalFisher {
            loss: Default::default(),
            score: first_order::FisherScore::Diagonal,
        },
        &net2,
        &store2,
        Some(&d),
    )?;
    for k in ["fc1.weight", "fc2.weight"] {
        assert!(rel_err(&mat(&f[k]), &mat(&want[k])) < 1e-12, "{k}");
        assert!(
            rel_err(
                &mat(&f[k]),
                &mat(&score(
                    &first_order::EmpiricalFisher {
                        loss: Default::default(),
                        score: first_order::FisherScore::Diagonal
                    },
                    &net,
                    &store,
                    Some(&d)
                )?[k])
            ) > 1e-3,
            "{k}: the mean must differ from the model's own weights"
        );
    }
    Ok(())
}
