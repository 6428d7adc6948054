//! The regression smoke config through the library's command functions (not the shared binary):
//! one epoch of training writes an honest run directory, and `eval` on it reproduces the metrics.

use secateur_experiments::commands::{self, TrainOptions};
use secateur_experiments::config::StudyConfig;
use serde_json::Value;

fn smoke(extra: &[&str]) -> StudyConfig {
    let mut set = vec!["train.epochs=1".to_string()];
    set.extend(extra.iter().map(|s| s.to_string()));
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/regression-wine-smoke.toml");
    StudyConfig::from_file(std::path::Path::new(path), &set).unwrap()
}

#[test]
fn one_epoch_writes_regression_metrics_and_eval_reproduces_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let cfg = smoke(&[]);
    let opts = TrainOptions {
        out: Some(out.clone()),
        quiet: true,
        ..TrainOptions::default()
    };
    let s = commands::train(&cfg, &opts, None).unwrap();
    let m: serde_json::Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    // (values may differ in the last digit through serde_json's float parsing)
    assert!(m.keys().eq(s.metrics.keys()));
    let f = |k: &str| {
        m.get(k)
            .and_then(Value::as_f64)
            .unwrap_or_else(|| panic!("{k} missing"))
    };
    // 1,599 rows, 10% held out
    assert_eq!((f("train_size"), f("test_size")), (1439.0, 160.0));
    // No classification metric is reported for a regression run.
    for k in ["test_accuracy", "test_ece", "test_brier"] {
        assert!(!m.contains_key(k), "{k} reported");
    }
    // Original units: quality scores 3..8 with std ≈ 0.8; an RMSE far below the target std
    // would be suspicious after one epoch, one far above it broken.
    let (rmse, std) = (f("test_rmse"), f("target_std"));
    assert!(rmse > 0.3 && rmse < 1.5 * std, "rmse {rmse}, target std {std}");
    assert!((0.0..=1.0).contains(&f("test_coverage_95")));
    let var = f("test_mean_aleatoric_var") + f("test_mean_epistemic_var");
    assert!(
        f("test_mean_predictive_std") <= var.sqrt() + 1e-9,
        "Jensen: E σ ≤ sqrt(E σ²)"
    );
    for file in [
        "history.csv",
        "report.md",
        "curves.png",
        "predictions.safetensors",
        "config.toml",
    ] {
        assert!(out.join(file).exists(), "{file}");
    }
    assert!(!out.join("reliability.png").exists());
    let history = std::fs::read_to_string(out.join("history.csv")).unwrap();
    assert!(history.starts_with("epoch,lr,train_loss,train_nll,train_divergence,beta,train_rmse,test_rmse"));
    assert!(!history.contains("accuracy"));
    let (em, _) = commands::regression::eval(&out, None, "cpu").unwrap();
    assert_eq!(Value::from(em.rmse), s.metrics["test_rmse"]);
    assert_eq!(Value::from(em.nll), s.metrics["test_nll"]);
}

#[test]
fn resume_continues_a_regression_run_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let opts = |p: &std::path::Path| TrainOptions {
        out: Some(p.to_path_buf()),
        quiet: true,
        ..TrainOptions::default()
    };
    let straight = commands::train(&smoke(&["train.epochs=2"]), &opts(&dir.path().join("a")), None).unwrap();
    let b = dir.path().join("b");
    commands::train(&smoke(&["train.epochs=1"]), &opts(&b), None).unwrap();
    let resumed = commands::train(&smoke(&["train.epochs=2"]), &opts(&b), Some(&b)).unwrap();
    for k in ["test_rmse", "test_nll", "test_coverage_95", "train_loss"] {
        assert_eq!(straight.metrics[k], resumed.metrics[k], "{k}");
    }
}
