//! Seeded training end to end: same seed → identical metrics; 1 epoch + resume 1 epoch → the
//! same weights as 2 epochs straight; a diverging run stops with an error and keeps the last good
//! checkpoint and results.

mod common;

use common::opts;
use secateur::experiments::atomic::read_safetensors;
use secateur::experiments::commands::train;
use secateur::experiments::config::StudyConfig;
use std::path::Path;

const SMOKE: &str = include_str!("../experiments/configs/quickstart-smoke.toml");

fn cfg(set: &[&str]) -> StudyConfig {
    common::config(SMOKE, "quickstart-smoke.toml", set)
}

fn metrics_without_time(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("metrics.json")).expect("metrics.json exists");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("metrics.json is JSON");
    v.as_object_mut().expect("flat object").remove("wall_seconds");
    v
}

fn assert_same_tensors(a: &Path, b: &Path) {
    let ta = read_safetensors(a).unwrap();
    let tb = read_safetensors(b).unwrap();
    assert_eq!(ta.len(), tb.len());
    for (name, x) in &ta {
        let y = &tb[name];
        let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let yv: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            xv.iter().zip(&yv).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{name} differs"
        );
    }
}

#[test]
fn same_seed_gives_identical_metrics_and_different_seed_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    train(&cfg(&["train.epochs=1"]), &opts(&a), None).unwrap();
    train(&cfg(&["train.epochs=1"]), &opts(&b), None).unwrap();
    train(&cfg(&["train.epochs=1", "seed=1"]), &opts(&c), None).unwrap();
    let (ma, mb, mc) = (
        metrics_without_time(&a),
        metrics_without_time(&b),
        metrics_without_time(&c),
    );
    assert_eq!(ma, mb);
    assert_ne!(ma, mc);
    assert_same_tensors(&a.join("weights.safetensors"), &b.join("weights.safetensors"));
    for f in [
        "config.toml",
        "history.csv",
        "predictions.safetensors",
        "report.md",
        "checkpoints/latest",
    ] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    // the smoke MLP learns something in one epoch (10 classes: chance is 0.1)
    assert!(ma["test_accuracy"].as_f64().unwrap() > 0.6, "{ma}");
    #[cfg(feature = "hdf5")]
    assert!(a.join("results.h5").exists());
}

#[test]
fn resuming_is_bit_identical_to_training_straight_through() {
    let dir = tempfile::tempdir().unwrap();
    let (straight, resumed) = (dir.path().join("straight"), dir.path().join("resumed"));
    train(&cfg(&["train.epochs=2"]), &opts(&straight), None).unwrap();
    train(&cfg(&["train.epochs=1"]), &opts(&resumed), None).unwrap();
    train(&cfg(&["train.epochs=2"]), &opts(&resumed), Some(&resumed)).unwrap();
    assert_same_tensors(
        &straight.join("weights.safetensors"),
        &resumed.join("weights.safetensors"),
    );
    assert_eq!(metrics_without_time(&straight), metrics_without_time(&resumed));
}

#[test]
fn divergence_stops_with_an_error_and_keeps_the_last_good_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&cfg(&["train.epochs=1"]), &opts(&run), None).unwrap();
    let good_metrics = std::fs::read_to_string(run.join("metrics.json")).unwrap();
    let good_config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let err = train(&cfg(&["train.epochs=2", "optim.lr=1e12"]), &opts(&run), Some(&run))
        .unwrap_err()
        .to_string();
    assert!(err.contains("diverged"), "{err}");
    assert_eq!(
        std::fs::read_to_string(run.join("checkpoints/latest")).unwrap().trim(),
        "epoch-0001"
    );
    assert_eq!(std::fs::read_to_string(run.join("metrics.json")).unwrap(), good_metrics);
    assert_eq!(std::fs::read_to_string(run.join("config.toml")).unwrap(), good_config);
}

#[test]
fn a_finished_run_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&cfg(&["train.epochs=1"]), &opts(&run), None).unwrap();
    let before = std::fs::read_to_string(run.join("metrics.json")).unwrap();
    assert!(train(&cfg(&["train.epochs=1", "seed=5"]), &opts(&run), None).is_err());
    assert_eq!(std::fs::read_to_string(run.join("metrics.json")).unwrap(), before);
}

#[test]
fn validation_split_is_held_out_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let s = train(&cfg(&["train.epochs=1", "data.val_fraction=0.1"]), &opts(&run), None).unwrap();
    assert_eq!(s.metrics["train_size"].as_u64(), Some(9000));
    assert_eq!(s.metrics["val_size"].as_u64(), Some(1000));
    assert!(s.metrics["val_accuracy"].as_f64().unwrap() > 0.5);
}
