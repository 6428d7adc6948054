//! `train` with `[posterior] kind = "svgd"` on the shipped Fashion-MNIST subset: the particles
//! train, save by parameter name, predict again through `eval` exactly as `train` did, resume
//! bit-identically from an epoch's checkpoint, and differ from independent particles only
//! through the kernel.

use secateur_experiments::commands::{self, TrainOptions};
use secateur_experiments::config::StudyConfig;
use std::path::Path;

const MLP: &str = r#"
name = "svgd-train-test"
seed = 2
[data]
name = "fashion-mnist-mini"
batch_size = 500
eval_batch_size = 1000
[model]
arch = "mlp"
hidden = [16]
[train]
epochs = 2
[posterior]
kind = "svgd"
members = 3
step = 0.01
"#;

fn cfg(set: &[&str]) -> StudyConfig {
    let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    StudyConfig::from_toml(MLP, "test", &set).expect("config")
}

fn opts(out: &Path) -> TrainOptions {
    TrainOptions {
        out: Some(out.to_path_buf()),
        quiet: true,
        ..TrainOptions::default()
    }
}

fn metrics(dir: &Path) -> serde_json::Map<String, serde_json::Value> {
    let mut m: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap();
    m.remove("wall_seconds");
    m
}

#[test]
fn svgd_particles_train_save_predict_and_resume_bit_identically() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (straight, resumed, free) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    let s = commands::train(&cfg(&[]), &opts(&straight), None).expect("train");
    let acc = s.metrics["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.5, "accuracy {acc}");
    assert_eq!(s.metrics["posterior"], "svgd");
    assert!(s.metrics["test_mutual_information"].as_f64().unwrap() > 0.0);

    // `eval` reads the saved particles and predicts as `train` did
    let (m, _) = commands::eval(&straight, None, "cpu").expect("eval");
    assert_eq!(m.accuracy, acc);
    assert_eq!(m.nll, s.metrics["test_nll"].as_f64().unwrap());

    // one epoch, then resumed to two: the same particles and metrics, bit for bit
    commands::train(&cfg(&["train.epochs=1"]), &opts(&resumed), None).expect("one epoch");
    commands::train(&cfg(&[]), &opts(&resumed), Some(&resumed)).expect("resume");
    for f in ["posterior.safetensors", "weights.safetensors"] {
        assert_eq!(
            std::fs::read(straight.join(f)).unwrap(),
            std::fs::read(resumed.join(f)).unwrap(),
            "{f}"
        );
    }
    assert_eq!(metrics(&straight), metrics(&resumed));

    // without the kernel: the same start and draws, other particles
    commands::train(&cfg(&["posterior.kernel=\"none\""]), &opts(&free), None).expect("independent");
    assert_ne!(
        std::fs::read(straight.join("posterior.safetensors")).unwrap(),
        std::fs::read(free.join("posterior.safetensors")).unwrap()
    );
}
