//! `prune --method dllp` through the library: a small trained MLP on the shipped Fashion-MNIST
//! subset pruned by DLLP; its files, their agreement with each other, reproducibility, and the
//! refusals.

use secateur_experiments::commands::{self, TrainOptions};
use secateur_experiments::config::StudyConfig;
use secateur_experiments::dllp::{self, DllpConfig, DllpPruneOptions};
use secateur_experiments::prune::PruneSpec;
use secateur_pruning::{MaskSet, Scope};
use std::path::{Path, PathBuf};

const MLP: &str = r#"
name = "dllp-test"
seed = 1
[data]
name = "fashion-mnist-mini"
batch_size = 250
eval_batch_size = 1000
[model]
arch = "mlp"
hidden = [32]
[optim]
kind = "sgd"
lr = 0.05
momentum = 0.9
[train]
epochs = 1
"#;

fn train_into(text: &str, out: &Path) {
    let cfg = StudyConfig::from_toml(text, "test", &[]).expect("config");
    let opts = TrainOptions {
        out: Some(out.to_path_buf()),
        quiet: true,
        ..TrainOptions::default()
    };
    commands::train(&cfg, &opts, None).expect("train");
}

fn options(run: &Path, out: PathBuf, sparsity: f64) -> DllpPruneOptions {
    DllpPruneOptions {
        spec: PruneSpec {
            criterion: "dllp".into(),
            sparsity,
            scope: Scope::Global,
            bn_warmup_batches: 0,
            rounds: 1,
            samples_per_class: 2,
            keep_first: false,
            keep_last: true,
            keep_conv: false,
            options: Default::default(),
        },
        run: run.to_path_buf(),
        overrides: vec![],
        dllp: DllpConfig {
            particles: 3,
            epochs: 1,
            ..Default::default()
        },
        out,
        data_dir: None,
        force: false,
        quiet: true,
    }
}

fn csv_rows(path: &Path) -> Vec<Vec<f64>> {
    std::fs::read_to_string(path)
        .expect("uncertainty.csv")
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse::<f64>().expect("number")).collect())
        .collect()
}

#[test]
fn dllp_prunes_a_trained_run_reproducibly_with_per_example_uncertainty() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    train_into(MLP, &run);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let m = dllp::prune(&options(&run, a.clone(), 0.8)).expect("dllp");

    // the mask: the target over the prunable weights the classifier aside, and files like
    // every prune's
    let masks = MaskSet::load(a.join("masks.safetensors"), &candle_core::Device::Cpu).expect("masks");
    assert_eq!(masks.len(), 1, "the classifier is kept dense");
    assert!((masks.sparsity().unwrap() - 0.8).abs() < 1e-3);
    for f in [
        "scores.safetensors",
        "inclusion_sd.safetensors",
        "layers.md",
        "prune.json",
        dllp::PARTICLES_FILE,
    ] {
        assert!(a.join(f).is_file(), "{f}");
    }
    // every particle is a network of that mask
    let particles = candle_core::safetensors::load(a.join(dllp::PARTICLES_FILE), &candle_core::Device::Cpu).unwrap();
    let mask = masks
        .get("fc1.weight")
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for i in 0..3 {
        let w = particles[&format!("member{i}/fc1.weight")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(w.iter().zip(&mask).all(|(w, m)| *m == 1.0 || *w == 0.0), "member {i}");
    }
    // the per-example file: entropy = expected entropy + MI, and the accuracy of prune.json
    let rows = csv_rows(&a.join(dllp::UNCERTAINTY_FILE));
    assert_eq!(rows.len(), 2000);
    for r in &rows {
        assert!((r[4] - (r[5] + r[6])).abs() < 2e-5 && r[6] >= -1e-6, "{r:?}");
    }
    let acc = rows.iter().filter(|r| r[1] == r[2]).count() as f64 / rows.len() as f64;
    assert_eq!(m["test_accuracy"].as_f64().unwrap(), acc);
    assert!(acc > 0.5, "accuracy {acc}");
    let agree = m["mask_agreement"].as_f64().unwrap();
    assert!(agree > 0.0 && agree <= 1.0);

    // seeded: a second run gives the same mask and predictions
    dllp::prune(&options(&run, b.clone(), 0.8)).expect("dllp again");
    let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
    assert_eq!(read(&a, "masks.safetensors"), read(&b, "masks.safetensors"));
    assert_eq!(read(&a, dllp::UNCERTAINTY_FILE), read(&b, dllp::UNCERTAINTY_FILE));

    // an existing output is refused unless --force
    let e = dllp::prune(&options(&run, a.clone(), 0.8))
        .expect_err("refused")
        .to_string();
    assert!(e.contains("--force"), "{e}");
    let mut forced = options(&run, a.clone(), 0.8);
    forced.force = true;
    dllp::prune(&forced).expect("forced");
}

/// The layer geometry (first/last-layer exclusions, FLOPs) is that of the network the config
/// builds: an `mlp` with `model.hidden = [32]` ends in `fc2`, not LeNet-300-100's `fc3` (whose
/// name `--keep-last` used to exclude, keeping nothing dense).
#[test]
fn the_geometry_is_that_of_the_configured_network() {
    let cfg = StudyConfig::from_toml(MLP, "test", &[]).unwrap();
    let g = commands::geometry(&cfg, [1, 28, 28], 10).unwrap();
    let names: Vec<&str> = g.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["fc1.weight", "fc2.weight"]);
    assert_eq!(g.layers[0].weight_shape, [32, 784]);
}

#[test]
fn dllp_refuses_what_it_cannot_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // a Bayesian model: DLLP's prior is one deterministic network
    let mf = StudyConfig::from_toml(MLP, "test", &["model.layers=\"mean-field\"".into()]).unwrap();
    let e = dllp::check_applicable(&mf).err().unwrap_or_default();
    assert!(e.contains("deterministic") && e.contains("mean-field"), "{e}");
    assert!(dllp::check_applicable(&StudyConfig::from_toml(MLP, "test", &[]).unwrap()).is_ok());
    // unknown keys and impossible values in the [dllp] file, named
    let f = tmp.path().join("d.toml");
    for (text, needle) in [
        ("[dllp]\nparticle = 4\n", "particle"),
        ("[dllp]\nepochs = 0\n", "epochs"),
        ("[dllp]\ntemperature = -1.0\n", "temperature"),
        ("[dllp]\ninit_keep = 1.0\n", "init_keep"),
    ] {
        std::fs::write(&f, text).unwrap();
        let e = DllpConfig::from_file(&f).expect_err(text).to_string();
        assert!(e.contains(needle) && e.contains("d.toml"), "{text}: {e}");
    }
    std::fs::write(&f, "[dllp]\nparticles = 4\n").unwrap();
    assert_eq!(DllpConfig::from_file(&f).unwrap().particles, 4);
}
