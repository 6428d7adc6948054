//! `prune`, `scores` and `train --masks` through the library command functions, on the shipped
//! Fashion-MNIST subset.

use candle_core::{DType, Device, Tensor};
use secateur_experiments::commands::{self, TrainOptions};
use secateur_experiments::config::StudyConfig;
use secateur_experiments::prune::{self, PruneOptions, PruneSpec};
use secateur_pruning::{MaskSet, Scope};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const LENET: &str = r#"
name = "prune-test"
seed = 3
[data]
name = "fashion-mnist-mini"
batch_size = 200
[model]
arch = "lenet5"
[train]
epochs = 1
"#;

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

fn spec(criterion: &str, sparsity: f64) -> PruneSpec {
    PruneSpec {
        criterion: criterion.into(),
        sparsity,
        scope: Scope::Global,
        bn_warmup_batches: 0,
        rounds: 1,
        samples_per_class: 2,
        keep_first: false,
        keep_last: false,
        keep_conv: false,
        options: Default::default(),
    }
}

fn options(config: PathBuf, out: PathBuf, spec: PruneSpec) -> PruneOptions {
    PruneOptions {
        spec,
        run: None,
        config: Some(config),
        overrides: vec![],
        out,
        data_dir: None,
        force: false,
    }
}

/// Trains `cfg` quietly into `out`.
fn train_into(cfg: &StudyConfig, out: &Path) {
    let opts = TrainOptions {
        out: Some(out.to_path_buf()),
        quiet: true,
        ..TrainOptions::default()
    };
    commands::train(cfg, &opts, None).expect("train");
}

/// The largest absolute difference of two tensors (as f64).
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn scores_options(criterion: &str, weights: Option<PathBuf>, config: PathBuf, out: PathBuf) -> prune::ScoresOptions {
    prune::ScoresOptions {
        criterion: criterion.into(),
        weights,
        config,
        overrides: vec![],
        out,
        samples_per_class: 2,
        options: Default::default(),
        data_dir: None,
        diagnose: false,
        force: false,
    }
}

#[test]
fn magnitude_pruning_at_initialisation_hits_the_sparsity_and_trains_with_the_masks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = write_config(tmp.path(), LENET);
    let out = tmp.path().join("pruned");
    let m = prune::prune(&options(config.clone(), out.clone(), spec("magnitude", 0.9))).expect("prune");
    let (kept, total) = (m["kept"].as_u64().unwrap(), m["prunable"].as_u64().unwrap());
    // LeNet-5's prunable weights: 150 + 2,400 + 48,000 + 10,080 + 840 = 61,470
    assert_eq!(total, 61_470);
    assert_eq!(kept, (0.1f64 * 61_470.0).round() as u64);
    for f in ["masks.safetensors", "scores.safetensors", "layers.md", "prune.json"] {
        assert!(out.join(f).exists(), "{f}");
    }
    let table = std::fs::read_to_string(out.join("layers.md")).unwrap();
    assert!(table.contains("conv1.weight") || table.contains("features"), "{table}");

    // Magnitude masks keep exactly the largest |w| of the seed's initialisation: check against
    // the initial weights of the same config, ranked here.
    let cfg = StudyConfig::from_file(&config, &[]).unwrap();
    let (_, store) = commands::build_model(&cfg, [1, 28, 28], 10, &Device::Cpu).unwrap();
    let masks = MaskSet::load(out.join("masks.safetensors"), &Device::Cpu).unwrap();
    let mut all: Vec<f32> = Vec::new();
    for name in masks.masks().keys() {
        let w = store.params()[name].as_tensor().abs().unwrap();
        all.extend(w.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    all.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let cut = all[kept as usize - 1];
    for (name, mask) in masks.masks() {
        let w: Vec<f32> = store.params()[name]
            .as_tensor()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mk: Vec<f32> = mask
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (wi, mi) in w.iter().zip(&mk) {
            if *wi > cut {
                assert_eq!(*mi, 1.0, "{name}: |w| = {wi} above the cut {cut} was pruned");
            } else if *wi < cut {
                assert_eq!(*mi, 0.0, "{name}: |w| = {wi} below the cut {cut} was kept");
            }
        }
    }

    // train --masks: pruned weights stay exactly zero through SGD with momentum and weight decay.
    let run = tmp.path().join("run");
    let opts = TrainOptions {
        out: Some(run.clone()),
        quiet: true,
        masks: Some(out.join("masks.safetensors")),
        ..TrainOptions::default()
    };
    let s = commands::train(&cfg, &opts, None).expect("train with masks");
    assert!((s.metrics["mask_sparsity"].as_f64().unwrap() - 0.9).abs() < 1e-4);
    let w = candle_core::safetensors::load(run.join("weights.safetensors"), &Device::Cpu).unwrap();
    for (name, mask) in masks.masks() {
        let t = &w[name];
        let off = (t.abs().unwrap() * (1.0 - mask.to_dtype(DType::F32).unwrap()).unwrap()).unwrap();
        assert_eq!(off.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0, "{name}");
        let on = (t.abs().unwrap() * mask.to_dtype(DType::F32).unwrap()).unwrap();
        assert!(on.sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "{name}");
    }
}

#[test]
fn scores_of_given_weights_match_an_independent_computation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = write_config(tmp.path(), LENET);
    let cfg = StudyConfig::from_file(&config, &[]).unwrap();
    // weights from another seed, as an exported file would be
    let other = StudyConfig {
        seed: 11,
        ..cfg.clone()
    };
    let (_, store) = commands::build_model(&other, [1, 28, 28], 10, &Device::Cpu).unwrap();
    let weights = tmp.path().join("weights.safetensors");
    let map: HashMap<String, Tensor> = store.tensors().into_iter().collect();
    candle_core::safetensors::save(&map, &weights).unwrap();
    let out = tmp.path().join("scores.safetensors");
    let n = prune::scores(&scores_options("magnitude", Some(weights), config, out.clone())).expect("scores");
    assert_eq!(n.tensors, 5);
    let scores = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    for (name, s) in &scores {
        let d = (s - map[name].abs().unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_keepdim(0)
            .unwrap();
        let d = d.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "{name}");
    }
}

#[test]
fn bad_requests_are_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = write_config(tmp.path(), LENET);
    let out = tmp.path().join("x");
    let e = prune::prune(&options(config.clone(), out.clone(), spec("magnitude", 1.0)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--sparsity"), "{e}");
    let e = prune::prune(&options(config.clone(), out.clone(), spec("obd", 0.5)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("obd") && e.contains("snip"), "{e}");
    assert!(!out.exists(), "a refused request wrote files");

    // masks of LeNet-5 do not fit an MLP
    prune::prune(&options(config.clone(), out.clone(), spec("random", 0.5))).expect("prune");
    let mlp = StudyConfig::from_toml(&LENET.replace("lenet5", "mlp"), "mlp", &[]).unwrap();
    let opts = TrainOptions {
        out: Some(tmp.path().join("mlp")),
        quiet: true,
        masks: Some(out.join("masks.safetensors")),
        ..TrainOptions::default()
    };
    let e = commands::train(&mlp, &opts, None).unwrap_err().to_string();
    assert!(e.contains("--masks"), "{e}");
}

/// Warm-up has a stream of its own: for one seed, the scoring examples and every draw after them
/// (here the random criterion's scores) are the same with and without batch-norm warm-up, so
/// that the two differ only in the warm-up (a paired comparison). Before the fix the warm-up's
/// shuffle drew from the scoring stream.
#[test]
fn warm_up_leaves_the_scoring_examples_and_draws_unchanged() {
    let cfg = StudyConfig::from_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/pai-resnet20.toml"),
        &["data.batch_size=20".into()],
    )
    .expect("config");
    let data = prune::PruneData::load(&cfg, None).expect("data");
    let run = |warm: usize| {
        let s = PruneSpec {
            bn_warmup_batches: warm,
            ..spec("random", 0.5)
        };
        prune::prune_model(&cfg, &data, None, &s, None, None).expect("prune")
    };
    let (cold, warm) = (run(0), run(2));
    assert_eq!(cold.scoring_examples, warm.scoring_examples);
    assert_eq!(cold.scoring_examples.len(), 20);
    for (name, s) in &cold.scores {
        let d = (s - &warm.scores[name])
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{name}");
    }
    // and the warm-up did change the model: SNIP scores differ through the running statistics
    let snip = |warm: usize| {
        let s = PruneSpec {
            bn_warmup_batches: warm,
            ..spec("snip", 0.5)
        };
        prune::prune_model(&cfg, &data, None, &s, None, None)
            .expect("prune")
            .scores
    };
    let (a, b) = (snip(0), snip(2));
    let differs = a.iter().any(|(k, v)| {
        (v - &b[k])
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    });
    assert!(differs, "warm-up changed nothing");
}

/// `model.dtype = "f64"` (what `--dtype f64` sets) scores in double precision: SNIP and the
/// empirical Fisher diagonal of a one-hidden-layer ReLU MLP agree with a computation by hand in
/// plain f64 (forward pass, softmax, back-propagated deltas) to 1e-12, far below f32 rounding,
/// and the saved scores stay f64.
#[test]
fn f64_scores_match_a_computation_by_hand() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let text = LENET.replace("arch = \"lenet5\"", "arch = \"mlp\"\nhidden = [6]\ndtype = \"f64\"");
    let config = write_config(tmp.path(), &text);
    let cfg = StudyConfig::from_file(&config, &[]).expect("config");
    let data = prune::PruneData::load(&cfg, None).expect("data");
    let (_, store) = commands::build_model(&cfg, data.input, data.classes, &Device::Cpu).expect("model");
    let p = store.tensors();
    let mat = |k: &str| -> Vec<Vec<f64>> { p[k].to_dtype(DType::F64).unwrap().to_vec2().unwrap() };
    let vec = |k: &str| -> Vec<f64> { p[k].to_dtype(DType::F64).unwrap().to_vec1().unwrap() };
    let (w1, b1, w2, b2) = (mat("fc1.weight"), vec("fc1.bias"), mat("fc2.weight"), vec("fc2.bias"));
    let snip = prune::prune_model(&cfg, &data, None, &spec("snip", 0.5), None, None).expect("snip");
    let fisher = prune::prune_model(&cfg, &data, None, &spec("fisher", 0.5), None, None).expect("fisher");
    assert_eq!(snip.scoring_examples, fisher.scoring_examples);
    let idx = &snip.scoring_examples;
    let mut rng = secateur_bayes::SeededRng::new(0);
    let (x, y) = secateur_experiments::data::image_batch(&data.train, idx, &data.norm, None, &mut rng, &Device::Cpu)
        .expect("batch");
    let x: Vec<Vec<f64>> = x
        .flatten_from(1)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2()
        .unwrap();
    let y: Vec<u32> = y.to_dtype(DType::U32).unwrap().to_vec1().unwrap();
    let n = x.len() as f64;
    // per example: h = relu(W1 x + b1), z = W2 h + b2, δ2 = softmax(z) − e_y, δ1 = (W2ᵀ δ2) ⊙ [h > 0]
    let (mut g1, mut g2) = (vec![vec![0.0; 784]; 6], vec![vec![0.0; 6]; 10]);
    let (mut f1, mut f2) = (g1.clone(), g2.clone());
    for (xi, &yi) in x.iter().zip(&y) {
        let h: Vec<f64> = (0..6)
            .map(|u| (w1[u].iter().zip(xi).map(|(a, b)| a * b).sum::<f64>() + b1[u]).max(0.0))
            .collect();
        let z: Vec<f64> = (0..10)
            .map(|c| w2[c].iter().zip(&h).map(|(a, b)| a * b).sum::<f64>() + b2[c])
            .collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        let d2: Vec<f64> = (0..10)
            .map(|c| e[c] / s - f64::from(u8::from(c == yi as usize)))
            .collect();
        let d1: Vec<f64> = (0..6)
            .map(|u| {
                if h[u] > 0.0 {
                    (0..10).map(|c| w2[c][u] * d2[c]).sum()
                } else {
                    0.0
                }
            })
            .collect();
        for c in 0..10 {
            for u in 0..6 {
                g2[c][u] += d2[c] * h[u] / n;
                f2[c][u] += (d2[c] * h[u]).powi(2) / n;
            }
        }
        for u in 0..6 {
            for j in 0..784 {
                g1[u][j] += d1[u] * xi[j] / n;
                f1[u][j] += (d1[u] * xi[j]).powi(2) / n;
            }
        }
    }
    let rel = |got: &Tensor, want: &[Vec<f64>]| -> f64 {
        assert_eq!(got.dtype(), DType::F64);
        let got: Vec<Vec<f64>> = got.to_vec2().unwrap();
        let scale = want.iter().flatten().fold(0.0f64, |a, b| a.max(b.abs()));
        got.iter()
            .flatten()
            .zip(want.iter().flatten())
            .fold(0.0f64, |a, (g, w)| a.max((g - w).abs()))
            / scale
    };
    let snip_want = |w: &[Vec<f64>], g: &[Vec<f64>]| -> Vec<Vec<f64>> {
        w.iter()
            .zip(g)
            .map(|(a, b)| a.iter().zip(b).map(|(p, q)| (p * q).abs()).collect())
            .collect()
    };
    assert!(rel(&snip.scores["fc1.weight"], &snip_want(&w1, &g1)) < 1e-12);
    assert!(rel(&snip.scores["fc2.weight"], &snip_want(&w2, &g2)) < 1e-12);
    assert!(rel(&fisher.scores["fc1.weight"], &f1) < 1e-12);
    assert!(rel(&fisher.scores["fc2.weight"], &f2) < 1e-12);
    // saved scores keep f64
    let out = tmp.path().join("s.safetensors");
    secateur_pruning::mask::save_scores(&snip.scores, &out).expect("save");
    let back = candle_core::safetensors::load(&out, &Device::Cpu).expect("load");
    assert_eq!(back["fc1.weight"].dtype(), DType::F64);
}

/// `prune --run --keep-conv` prunes LeNet-5's fully connected weights only, records the run in
/// `prune.json`, and the prune directory loads as the run with the masks applied: its
/// predictions equal those of a copy of the run whose weights were multiplied by the masks here.
/// A prune of a fresh network and a prune whose run has gone are refused by name.
#[test]
fn a_prune_of_a_trained_run_loads_as_the_masked_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = StudyConfig::from_toml(LENET, "lenet", &[]).unwrap();
    let run = tmp.path().join("run");
    train_into(&cfg, &run);
    let out = tmp.path().join("fc-half");
    let mut s = spec("magnitude", 0.5);
    s.keep_conv = true;
    let opts = PruneOptions {
        run: Some(run.clone()),
        config: None,
        ..options(PathBuf::new(), out.clone(), s)
    };
    let m = prune::prune(&opts).expect("prune --run");
    // the fully connected weights only: 48,000 + 10,080 + 840
    assert_eq!(m["prunable"].as_u64(), Some(58_920));
    assert_eq!(m["kept"].as_u64(), Some(29_460));
    assert_eq!(m["run"].as_str(), Some("../run"));
    let masks = MaskSet::load(out.join("masks.safetensors"), &Device::Cpu).unwrap();
    let names: Vec<&String> = masks.masks().keys().collect();
    assert!(names.iter().all(|n| n.starts_with("fc")), "{names:?}");

    // the independent copy: weights ⊙ masks written by hand
    let copy = tmp.path().join("masked-copy");
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(&run).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
    }
    let mut w = candle_core::safetensors::load(run.join("weights.safetensors"), &Device::Cpu).unwrap();
    for (name, mask) in masks.masks() {
        let t = &w[name];
        let masked = t.mul(&mask.to_dtype(t.dtype()).unwrap()).unwrap();
        w.insert(name.clone(), masked);
    }
    candle_core::safetensors::save(&w, copy.join("weights.safetensors")).unwrap();

    let pruned = commands::LoadedRun::open(&out, None, "cpu").expect("open the prune");
    let source = pruned.pruned.clone().expect("loaded through the prune");
    assert_eq!((source.criterion.as_str(), source.sparsity), ("magnitude", 0.5));
    let by_hand = commands::LoadedRun::open(&copy, None, "cpu").expect("open the copy");
    let dense = commands::LoadedRun::open(&run, None, "cpu").expect("open the run");
    assert!(dense.pruned.is_none());
    let test = &dense.data.test;
    let p = pruned.predict(test).unwrap().predictions.probs;
    let q = by_hand.predict(test).unwrap().predictions.probs;
    let d = dense.predict(test).unwrap().predictions.probs;
    assert!(p == q, "the prune's predictions differ from the masked weights'");
    assert!(p != d, "the masks changed nothing");

    // a prune at initialisation names no run
    let fresh = tmp.path().join("fresh");
    let config = write_config(tmp.path(), LENET);
    prune::prune(&options(config, fresh.clone(), spec("magnitude", 0.5))).expect("prune --config");
    let e = commands::LoadedRun::open(&fresh, None, "cpu")
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("prune --config"), "{e}");
    // a prune whose run moved away
    std::fs::rename(&run, tmp.path().join("moved")).unwrap();
    let e = commands::LoadedRun::open(&out, None, "cpu")
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("no longer there"), "{e}");
}

/// `adam-fisher` on a run trained with AdamW scores each weight by the Adam second moment in the
/// run's last checkpoint (the scores written equal `optimizer.safetensors`' `exp_avg_sq`), and on
/// a run trained with SGD it is refused, naming what it needs.
#[test]
fn adam_fisher_scores_are_the_checkpoint_second_moments() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let set = |kind: &str| {
        vec![
            format!("optim.kind=\"{kind}\""),
            "optim.lr=1e-3".into(),
            "optim.weight_decay=0.0".into(),
        ]
    };
    let adam = StudyConfig::from_toml(LENET, "lenet", &set("adamw")).unwrap();
    let run = tmp.path().join("adam");
    train_into(&adam, &run);
    let out = tmp.path().join("p");
    let opts = PruneOptions {
        run: Some(run.clone()),
        config: None,
        ..options(PathBuf::new(), out.clone(), spec("adam-fisher", 0.5))
    };
    prune::prune(&opts).expect("prune adam-fisher");
    let scores = candle_core::safetensors::load(out.join("scores.safetensors"), &Device::Cpu).unwrap();
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    let opt = candle_core::safetensors::load(
        run.join("checkpoints")
            .join(latest.trim())
            .join("optimizer.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(scores.len(), 5, "{:?}", scores.keys().collect::<Vec<_>>());
    for (name, s) in &scores {
        assert_eq!(max_abs_diff(s, &opt[&format!("{name}.exp_avg_sq")]), 0.0, "{name}");
    }

    let sgd = StudyConfig::from_toml(LENET, "lenet", &set("sgd")).unwrap();
    let run = tmp.path().join("sgd");
    train_into(&sgd, &run);
    let opts = PruneOptions {
        run: Some(run),
        config: None,
        ..options(PathBuf::new(), tmp.path().join("q"), spec("adam-fisher", 0.5))
    };
    let e = prune::prune(&opts).unwrap_err().to_string();
    assert!(e.contains("exp_avg_sq") || e.contains("adam"), "{e}");
}
