//! Allocation: exact kept counts for global and per-layer top-k over many sizes and
//! sparsities (with heavy ties), the top-k property and the index tie-break, refused
//! sparsities, the minimum-kept guard, thresholds, exclusions, and the iterative schedule.

use candle_core::{Device, Result, Tensor};
use rand::Rng;
use secateur_bayes::{ParamStore, SeededRng};
use secateur_models::ModelSpec;
use secateur_pruning::allocate::{kept_count, prune_iteratively, threshold};
use secateur_pruning::criteria::Magnitude;
use secateur_pruning::{geometry, Allocation, Exclusions, IterativeSchedule, Scope, Scores, ScoringContext};
use std::collections::{BTreeMap, BTreeSet};

/// Scores quantised to 5 levels (many ties), for tensors of the given sizes.
fn tied_scores(sizes: &[usize], seed: u64) -> Scores {
    let mut rng = SeededRng::new(seed);
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(0..5) as f32).collect();
            (
                format!("layer{i}.weight"),
                Tensor::from_vec(v, n, &Device::Cpu).unwrap(),
            )
        })
        .collect()
}

fn flat(m: &Tensor) -> Vec<f32> {
    m.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Every kept entry scores at least as high as every pruned one; among equal scores at the
/// boundary, kept entries come first (lower flat index).
fn check_top_k(scores: &[f32], keep: &[f32]) {
    let kept: Vec<(f32, usize)> = (0..scores.len())
        .filter(|&i| keep[i] == 1.0)
        .map(|i| (scores[i], i))
        .collect();
    let pruned: Vec<(f32, usize)> = (0..scores.len())
        .filter(|&i| keep[i] == 0.0)
        .map(|i| (scores[i], i))
        .collect();
    for &(s, i) in &kept {
        for &(t, j) in &pruned {
            assert!(s > t || (s == t && i < j), "kept ({s}, {i}) vs pruned ({t}, {j})");
        }
    }
}

#[test]
fn global_and_per_layer_top_k_hit_the_target_exactly() -> Result<()> {
    let size_sets: [&[usize]; 4] = [&[1], &[7, 3], &[100, 1001, 13], &[4096, 10, 999]];
    for (si, sizes) in size_sets.iter().enumerate() {
        let scores = tied_scores(sizes, si as u64);
        let total: usize = sizes.iter().sum();
        for s in [0.0, 0.1, 0.5, 0.9, 0.98, 0.99, 0.999] {
            let g = Allocation::global(s).masks(&scores)?;
            assert_eq!(g.kept()?, kept_count(total, s), "global s={s} sizes {sizes:?}");
            assert_eq!(g.kept()?, ((1.0 - s) * total as f64).round() as usize);
            let all_s: Vec<f32> = scores.values().flat_map(flat).collect();
            let all_k: Vec<f32> = scores.keys().flat_map(|k| flat(g.get(k).unwrap())).collect();
            check_top_k(&all_s, &all_k);
            let p = Allocation::per_layer(s).masks(&scores)?;
            for (k, t) in &scores {
                let n = t.elem_count();
                assert_eq!(
                    p.kept_in(k)?,
                    ((1.0 - s) * n as f64).round() as usize,
                    "per-layer s={s} {k}"
                );
                check_top_k(&flat(t), &flat(p.get(k).unwrap()));
            }
        }
    }
    Ok(())
}

#[test]
fn impossible_sparsities_and_nan_scores_are_refused() {
    let scores = tied_scores(&[10], 0);
    for s in [1.0, 1.5, -0.1, f64::NAN] {
        let e = Allocation::global(s).masks(&scores).unwrap_err().to_string();
        assert!(e.contains("sparsity"), "{e}");
    }
    let nan = BTreeMap::from([("a".to_string(), Tensor::new(&[1f32, f32::NAN], &Device::Cpu).unwrap())]);
    let e = Allocation::global(0.5).masks(&nan).unwrap_err().to_string();
    assert!(e.contains("`a`") && e.contains("NaN"), "{e}");
    let e = IterativeSchedule {
        rounds: 0,
        final_sparsity: 0.5,
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(e.contains("rounds"), "{e}");
}

#[test]
fn min_kept_guard_prevents_collapse_and_keeps_the_total() -> Result<()> {
    // layer0 scores far below layer1: global top-k at 90% would empty layer0
    let scores: Scores = BTreeMap::from([
        (
            "layer0.weight".to_string(),
            Tensor::new(&[0.1f32, 0.2, 0.3, 0.4], &Device::Cpu)?,
        ),
        (
            "layer1.weight".to_string(),
            Tensor::from_vec((0..96).map(|i| 10.0 + i as f32).collect(), 96, &Device::Cpu)?,
        ),
    ]);
    let plain = Allocation::global(0.9).masks(&scores)?;
    assert_eq!(plain.collapsed()?, ["layer0.weight"]);
    let guarded = Allocation::global(0.9).with_min_kept(2).masks(&scores)?;
    assert!(guarded.collapsed()?.is_empty());
    assert_eq!(guarded.kept()?, 10);
    assert_eq!(
        flat(guarded.get("layer0.weight").unwrap()),
        [0., 0., 1., 1.],
        "the guard keeps the best 2"
    );
    let e = Allocation::global(0.99)
        .with_min_kept(3)
        .masks(&scores)
        .unwrap_err()
        .to_string();
    assert!(e.contains("min_kept_per_layer"), "{e}");
    Ok(())
}

#[test]
fn exclusions_threshold_and_schedule() -> Result<()> {
    let scores = tied_scores(&[50, 30], 3);
    let ex = BTreeSet::from(["layer1.weight".to_string()]);
    let m = Allocation::global(0.5).with_exclude(ex.clone()).masks(&scores)?;
    assert!(m.get("layer1.weight").is_none(), "excluded tensors stay dense");
    assert_eq!(m.kept()?, 25);
    let t = threshold(&scores, 2.0, &ex)?;
    let want = flat(&scores["layer0.weight"]).iter().filter(|v| **v > 2.0).count();
    assert_eq!(t.kept()?, want);
    // kept fraction d^{t/T}, not 1 − s^{t/T}
    let s = IterativeSchedule {
        rounds: 4,
        final_sparsity: 0.999,
    };
    let want = [1.0, 0.001f64.powf(0.25), 0.001f64.powf(0.5), 0.001f64.powf(0.75), 0.001];
    for (t, w) in want.iter().enumerate() {
        assert!((s.density(t) - w).abs() < 1e-12, "round {t}: {} vs {w}", s.density(t));
    }
    assert!((s.sparsity(1) - (1.0 - 0.001f64.powf(0.25))).abs() < 1e-12);
    Ok(())
}

/// `convolutions` excludes exactly the convolutions of LeNet-5 (conv1, conv2), so that only its
/// three fully connected layers are ranked, and it composes with the first/last-layer flags.
#[test]
fn excluding_convolutions_keeps_only_the_linear_layers() -> Result<()> {
    let g = geometry::record(&ModelSpec::new("lenet5", [1, 28, 28], 10))?;
    let set = |e: Exclusions| -> Result<Vec<String>> { Ok(e.resolve(Some(&g))?.into_iter().collect()) };
    let convs = Exclusions {
        convolutions: true,
        ..Default::default()
    };
    let want: Vec<String> = g
        .layers
        .iter()
        .filter(|l| l.weight_shape.len() == 4)
        .map(|l| l.name.clone())
        .collect();
    assert_eq!(want.len(), 2, "LeNet-5 has two convolutions: {want:?}");
    assert_eq!(set(convs.clone())?, want);
    let with_last = Exclusions {
        last_layer: true,
        ..convs.clone()
    };
    let mut want_last = want.clone();
    want_last.push(g.last().map(|l| l.name.clone()).unwrap_or_default());
    want_last.sort();
    assert_eq!(set(with_last)?, want_last);
    // an MLP has no convolution: nothing is excluded
    let mlp = geometry::record(&ModelSpec::new("mlp", [1, 28, 28], 10))?;
    assert!(convs.resolve(Some(&mlp))?.is_empty());
    // without the geometry the flag cannot be resolved
    assert!(convs.resolve(None).is_err());
    Ok(())
}

#[test]
fn iterative_pruning_is_monotone_and_ends_at_the_target() -> Result<()> {
    let store = ParamStore::new();
    let pb = secateur_bayes::ParamBuilder::new(store.clone(), SeededRng::new(0), candle_core::DType::F32, Device::Cpu);
    pb.pp("fc1").param(
        "weight",
        &[20, 10],
        secateur_bayes::Init::Normal { mean: 0.0, std: 1.0 },
    )?;
    pb.pp("fc2")
        .param("weight", &[5, 20], secateur_bayes::Init::Normal { mean: 0.0, std: 1.0 })?;
    struct Nop;
    impl secateur_bayes::Module for Nop {
        fn forward(&self, x: &Tensor, _: &mut secateur_bayes::Ctx) -> Result<Tensor> {
            Ok(x.clone())
        }
    }
    let mut rng = SeededRng::new(0);
    let mut cx = ScoringContext::new(&Nop, &store, None, &mut rng);
    let sched = IterativeSchedule {
        rounds: 5,
        final_sparsity: 0.9,
    };
    let m = prune_iteratively(&Magnitude, &mut cx, &Allocation::global(0.0), &sched)?;
    assert_eq!(m.kept()?, 30);
    // pruned weights are zero in the store; magnitude pruning is the same one-shot or iterative
    let one_shot = {
        let mut rng = SeededRng::new(0);
        let mut cx = ScoringContext::new(&Nop, &store, None, &mut rng);
        prune_iteratively(
            &Magnitude,
            &mut cx,
            &Allocation::global(0.0),
            &IterativeSchedule { rounds: 1, ..sched },
        )?
    };
    for (k, v) in m.masks() {
        assert_eq!(flat(v), flat(one_shot.get(k).unwrap()));
        let w = flat(&store.get(k).unwrap().as_tensor().clone());
        assert!(w.iter().zip(flat(v)).all(|(w, m)| (m == 0.0) == (*w == 0.0)));
    }
    Ok(())
}

/// Signed zeros tie: `−0.0` and `+0.0` are the same score, so position decides, not the sign.
/// (GraSP's scores of dead units are `θ · (+0)` and carry θ's sign; a ranking by
/// `f64::total_cmp` kept exactly the positive weights among them.)
#[test]
fn signed_zero_scores_tie_by_position() -> Result<()> {
    // 8 zeros of alternating sign after two positive scores; keep 6 = the two positives and the
    // first four zeros by position, whatever their signs.
    let v = [1f32, 2., -0., 0., -0., 0., -0., 0., -0., 0.];
    let scores: Scores = BTreeMap::from([("a.weight".to_string(), Tensor::new(&v, &Device::Cpu)?)]);
    for m in [
        Allocation::global(0.4).masks(&scores)?,
        Allocation::per_layer(0.4).masks(&scores)?,
    ] {
        assert_eq!(
            flat(m.get("a.weight").unwrap()),
            [1., 1., 1., 1., 1., 1., 0., 0., 0., 0.]
        );
    }
    // Across tensors (global scope): a `−0.0` in the first tensor outranks a `+0.0` in the second.
    let scores: Scores = BTreeMap::from([
        ("a.weight".to_string(), Tensor::new(&[-0f32, 3.], &Device::Cpu)?),
        ("b.weight".to_string(), Tensor::new(&[0f32, 0.], &Device::Cpu)?),
    ]);
    let m = Allocation::global(0.5).masks(&scores)?;
    assert_eq!(flat(m.get("a.weight").unwrap()), [1., 1.]);
    assert_eq!(flat(m.get("b.weight").unwrap()), [0., 0.]);
    Ok(())
}

/// The names of `Scope` and `greg::Granularity` round-trip, cover every variant once, and an
/// unknown name is refused listing the valid ones.
#[test]
fn scope_and_granularity_names_round_trip() {
    use secateur_pruning::greg::Granularity;
    for (n, v) in Scope::NAMES {
        assert_eq!((v.name(), n.parse::<Scope>()), (n, Ok(v)));
        assert_eq!(v.to_string(), n);
    }
    for (n, v) in Granularity::NAMES {
        assert_eq!((v.name(), n.parse::<Granularity>()), (n, Ok(v)));
    }
    assert_eq!(Scope::NAMES.map(|(_, v)| v), [Scope::Global, Scope::PerLayer]);
    assert_eq!(
        Granularity::NAMES.map(|(_, v)| v),
        [Granularity::Filter, Granularity::Weight]
    );
    assert_eq!(
        "Layer".parse::<Scope>(),
        Err("unknown scope `Layer`; use global or layer".to_string())
    );
    assert!("unit".parse::<Granularity>().unwrap_err().contains("filter or weight"));
}
