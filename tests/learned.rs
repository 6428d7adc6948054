//! Pruning learned during training (`[pruning]`), end to end: an SCL run resumed after one
//! epoch is bit-identical to one trained straight through (the mask variables are part of the
//! checkpoint, the removed groups are recomputed from them); its learned masks compact into a
//! smaller network that `eval` scores as the run does; and the combinations it cannot take are
//! refused before anything is written.

mod common;

use common::opts;
use secateur::experiments::commands::{compact, eval, train, CompactOptions};
use secateur::experiments::config::StudyConfig;
use std::path::Path;

const SMOKE: &str = include_str!("../experiments/configs/quickstart-smoke.toml");

/// The smoke MLP trained by SCL with masks fast enough to move within two epochs.
fn scl(set: &[&str]) -> StudyConfig {
    let mut all = vec![
        "pruning.method=\"scl\"",
        "pruning.scl.mask_lr=0.05",
        "pruning.scl.lambda=0.5",
    ];
    all.extend_from_slice(set);
    common::config(SMOKE, "quickstart-smoke.toml", &all)
}

fn metrics(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("metrics.json")).expect("metrics.json exists");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("metrics.json is JSON");
    v.as_object_mut().expect("flat object").remove("wall_seconds");
    v
}

#[test]
fn scl_resumes_bit_identically_and_compacts_to_what_it_learned() {
    let dir = tempfile::tempdir().unwrap();
    let (straight, resumed, small) = (
        dir.path().join("straight"),
        dir.path().join("resumed"),
        dir.path().join("small"),
    );
    train(&scl(&["train.epochs=2"]), &opts(&straight), None).unwrap();
    train(&scl(&["train.epochs=1"]), &opts(&resumed), None).unwrap();
    train(&scl(&["train.epochs=2"]), &opts(&resumed), Some(&resumed)).unwrap();
    let m = metrics(&straight);
    assert_eq!(m, metrics(&resumed));
    assert_eq!(
        std::fs::read(straight.join("masks.safetensors")).unwrap(),
        std::fs::read(resumed.join("masks.safetensors")).unwrap()
    );
    // it learned sparsity, removed whole units, and kept an accurate network
    assert!(m["scl_connection_sparsity"].as_f64().unwrap() > 0.5, "{m}");
    let removed = m["scl_groups_removed"].as_u64().unwrap();
    assert!(removed > 0, "{m}");
    assert!(m["test_accuracy"].as_f64().unwrap() > 0.7, "{m}");
    // the history has each layer's connections per epoch, falling
    let history = std::fs::read_to_string(straight.join("history.csv")).unwrap();
    let header: Vec<&str> = history.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|c| *c == "fc1.kept").expect("fc1.kept column");
    let kept: Vec<u64> = history
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(col).unwrap().parse().unwrap())
        .collect();
    assert!(kept.len() == 2 && kept[1] < kept[0] && kept[0] < 784 * 300, "{kept:?}");

    let s = compact(&CompactOptions {
        run: straight.clone(),
        masks: None,
        out: small.clone(),
        data_dir: None,
        force: false,
        latency_reps: 0,
    })
    .unwrap();
    assert_eq!(s.groups_pruned as u64, removed);
    assert!(s.compacted.params < s.masked.params);
    let (small_metrics, small_cfg) = eval(&small, None, "cpu").unwrap();
    assert_eq!(small_metrics.accuracy, m["test_accuracy"].as_f64().unwrap());
    assert!(small_cfg.pruning.is_scl(), "the compacted run keeps its SCL layers");
}

#[test]
fn scl_refuses_what_it_cannot_combine() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let err = |set: &[&str]| {
        let set: Vec<String> = ["pruning.method=\"scl\""]
            .iter()
            .chain(set)
            .map(|s| s.to_string())
            .collect();
        StudyConfig::from_toml(SMOKE, "quickstart-smoke.toml", &set)
            .unwrap_err()
            .to_string()
    };
    assert!(err(&["model.layers=\"mean-field\""]).contains("deterministic layers"));
    assert!(err(&["pruning.scl.lambda=-1"]).contains("lambda"));
    assert!(err(&["pruning.scl.mask_init=0"]).contains("mask_init"));
    let mut o = opts(&out);
    o.masks = Some(dir.path().join("masks.safetensors"));
    let e = train(&scl(&[]), &o, None).unwrap_err().to_string();
    assert!(e.contains("--masks") && e.contains("learns its own masks"), "{e}");
    assert!(!out.exists());
}

#[test]
fn the_shipped_scl_config_is_the_library_default() {
    let text = include_str!("../experiments/configs/scl-lenet300.toml");
    let cfg = common::config(text, "scl-lenet300.toml", &[]);
    assert!(cfg.pruning.is_scl());
    assert_eq!(
        cfg.pruning.scl.config(),
        secateur::pruning::learned::scl::SclConfig::default()
    );
    // and the resolved config written into a run keeps the section
    assert!(cfg.to_toml().unwrap().contains("[pruning.scl]"));
    let plain = common::config(SMOKE, "quickstart-smoke.toml", &[]);
    assert!(!plain.to_toml().unwrap().contains("pruning"));
}
