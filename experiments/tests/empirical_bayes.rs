//! Empirical-Bayes (MOPED) initialisation through the library commands: a deterministic smoke
//! run, then a mean-field smoke run initialised from its `weights.safetensors` starts from the
//! same posterior-mean test accuracy (its posterior means are the deterministic weights).

use secateur_experiments::commands::{init_weights_file, train, TrainOptions};
use secateur_experiments::config::StudyConfig;
use serde_json::{Map, Value};
use std::path::Path;

type R = Result<(), Box<dyn std::error::Error>>;

/// A one-epoch MLP smoke run on the shipped Fashion-MNIST subset.
const SMOKE: &str = r#"
seed = 0
[data]
name = "fashion-mnist-mini"
batch_size = 100
eval_batch_size = 1000
[model]
arch = "mlp"
[optim]
kind = "sgd"
lr = 0.05
momentum = 0.9
weight_decay = 0.0
[train]
epochs = 1
"#;

fn opts(out: &Path) -> TrainOptions {
    TrainOptions {
        out: Some(out.to_path_buf()),
        quiet: true,
        ..TrainOptions::default()
    }
}

fn num(m: &Map<String, Value>, k: &str) -> f64 {
    m.get(k)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("metrics.json has no `{k}`"))
}

#[test]
fn a_mean_field_run_initialised_from_a_deterministic_run_starts_at_its_accuracy() -> R {
    let tmp = tempfile::tempdir()?;
    let det_cfg = StudyConfig::from_toml(SMOKE, "smoke", &["name=\"det\"".into()])?;
    let det = train(&det_cfg, &opts(&tmp.path().join("det")), None)?;
    let weights = det.dir.join("weights.safetensors");
    assert!(weights.exists());

    let bayes_overrides = |from: &Path| -> Vec<String> {
        vec![
            "name=\"mf\"".into(),
            "model.layers=\"mean-field\"".into(),
            format!("bayes.init_from={:?}", from.display().to_string()),
            "bayes.init_delta=0.1".into(),
            "bayes.eval_samples=2".into(),
        ]
    };
    let mf_cfg = StudyConfig::from_toml(SMOKE, "smoke", &bayes_overrides(&weights))?;
    let mf = train(&mf_cfg, &opts(&tmp.path().join("mf")), None)?;
    let det_acc = num(&det.metrics, "test_accuracy");
    let init_acc = num(&mf.metrics, "init_test_accuracy_posterior_mean");
    // The deterministic run's accuracy is its (only) forward pass on the test set; the
    // initialised Bayesian model's posterior mean is the same function, so every prediction agrees.
    assert_eq!(init_acc, det_acc);
    assert!(det_acc > 0.5, "the deterministic smoke run learned nothing: {det_acc}");
    // the resolved config records where the initialisation came from
    let resolved = std::fs::read_to_string(mf.dir.join("config.toml"))?;
    assert!(
        resolved.contains("init_from") && resolved.contains("init_delta"),
        "{resolved}"
    );

    // The run directory itself is accepted too; a missing file or a model of another
    // architecture is refused naming `bayes.init_from`.
    assert_eq!(init_weights_file(&det.dir), weights);
    assert_eq!(init_weights_file(&weights), weights);
    let missing = StudyConfig::from_toml(SMOKE, "smoke", &bayes_overrides(&tmp.path().join("nope.safetensors")))?;
    let e = train(&missing, &opts(&tmp.path().join("mf3")), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bayes.init_from") && e.contains("nope.safetensors"), "{e}");
    let mut other = bayes_overrides(&weights);
    other.push("model.arch=\"lenet5\"".into());
    let other = StudyConfig::from_toml(SMOKE, "smoke", &other)?;
    let e = train(&other, &opts(&tmp.path().join("mf4")), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bayes.init_from") && e.contains('`'), "{e}");
    Ok(())
}
