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
use std::process::Command;

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

/// A structured ℓ1 prune of 30% of the FLOPs of the run in `run` into `out`.
fn structured_options(
    run: &Path,
    out: std::path::PathBuf,
) -> secateur::experiments::structured::StructuredPruneOptions {
    secateur::experiments::structured::StructuredPruneOptions {
        run: run.to_path_buf(),
        out,
        criterion: secateur::pruning::structured::FilterCriterion::L1,
        cost: secateur::pruning::structured::Cost::Flops,
        fraction: 0.3,
        scope: secateur::pruning::Scope::PerLayer,
        force: false,
        overrides: Vec::new(),
        data_dir: None,
    }
}

fn metrics(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("metrics.json")).expect("metrics.json exists");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("metrics.json is JSON");
    v.as_object_mut().expect("flat object").remove("wall_seconds");
    v
}

/// `history.csv` without its wall-time columns.
fn history_without_seconds(dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("history.csv")).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|c| *c == name).unwrap();
    let (secs, eval_secs) = (col("seconds"), col("eval_seconds"));
    text.lines()
        .map(|l| {
            l.split(',')
                .enumerate()
                .filter(|(i, _)| *i != secs && *i != eval_secs)
                .map(|(_, v)| v.to_string())
                .collect()
        })
        .collect()
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
    for f in ["masks.safetensors", "weights.safetensors"] {
        assert!(
            std::fs::read(straight.join(f)).unwrap() == std::fs::read(resumed.join(f)).unwrap(),
            "{f} differs after the resume"
        );
    }
    assert_eq!(history_without_seconds(&straight), history_without_seconds(&resumed));
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

    let s = compact(&CompactOptions::untimed(&straight, &small)).unwrap();
    assert_eq!(s.groups_pruned as u64, removed);
    assert!(s.compacted.params < s.masked.params);
    let (small_metrics, small_cfg) = eval(&small, None, "cpu").unwrap();
    assert_eq!(small_metrics.accuracy, m["test_accuracy"].as_f64().unwrap());
    assert!(small_cfg.pruning.is_off(), "the compacted network is a plain one");
    // which `prune` takes, and the SCL run it refuses (it would score the values, not the masks)
    let e = secateur::experiments::structured::prune(&secateur::experiments::structured::StructuredPruneOptions {
        run: straight.clone(),
        ..structured_options(&small, dir.path().join("p2"))
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("[pruning]") && e.contains("compact"), "{e}");
    secateur::experiments::structured::prune(&structured_options(&small, dir.path().join("p1"))).unwrap();
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
    assert!(err(&["pruning.method=\"cap\"", "pruning.cap.t=0.5"]).contains("cap t"));
    assert!(err(&["pruning.method=\"dcff\"", "greg.method=\"greg2\""]).contains("cannot be combined"));
    assert!(err(&["pruning.method=\"cap\"", "posterior.kind=\"swag\""]).contains("cannot be combined"));
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

/// The smoke MLP trained as a DCFF compact network (its two hidden layers at half width).
fn dcff(set: &[&str]) -> StudyConfig {
    let mut all = vec!["pruning.method=\"dcff\""];
    all.extend_from_slice(set);
    common::config(SMOKE, "quickstart-smoke.toml", &all)
}

#[test]
fn dcff_resumes_bit_identically_and_fuses_into_the_compact_network() {
    let dir = tempfile::tempdir().unwrap();
    let (straight, resumed, small) = (
        dir.path().join("straight"),
        dir.path().join("resumed"),
        dir.path().join("small"),
    );
    // the temperature schedule depends on the total epochs, so a shorter run extended by a
    // resume is another run: the resumed one is killed (SIGKILL) after its first epoch's
    // checkpoint, then resumed
    let config = dir.path().join("dcff.toml");
    std::fs::write(&config, dcff(&["train.epochs=3"]).to_toml().unwrap()).unwrap();
    let bin = env!("CARGO_BIN_EXE_secateur");
    let run = |args: &[&str]| {
        let o = Command::new(bin).args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let c = config.to_str().unwrap();
    run(&["train", "--config", c, "--out", straight.to_str().unwrap(), "--quiet"]);
    let mut child = Command::new(bin)
        .args(["train", "--config", c, "--out", resumed.to_str().unwrap(), "--quiet"])
        .spawn()
        .unwrap();
    let latest = resumed.join("checkpoints").join("latest");
    while !std::fs::read_to_string(&latest).is_ok_and(|n| n.trim() >= "epoch-0001") {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it could be killed");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !resumed.join("metrics.json").exists(),
        "the run finished before the kill"
    );
    run(&["train", "--resume", resumed.to_str().unwrap(), "--quiet"]);
    let m = metrics(&straight);
    assert_eq!(m, metrics(&resumed));
    assert!(
        std::fs::read(straight.join("weights.safetensors")).unwrap()
            == std::fs::read(resumed.join("weights.safetensors")).unwrap(),
        "weights differ after the resume"
    );
    assert_eq!(history_without_seconds(&straight), history_without_seconds(&resumed));
    assert!(m["test_accuracy"].as_f64().unwrap() > 0.6, "{m}");
    assert_eq!(m["dcff_rate"].as_f64(), Some(0.5));
    let flops = m["dcff_flops_kept"].as_f64().unwrap();
    // fc1 at 150 of 300, fc2 at 50 of 100: (784·150 + 150·50 + 50·10) / (784·300 + 300·100 + 100·10)
    let want = (784.0 * 150.0 + 150.0 * 50.0 + 50.0 * 10.0) / (784.0 * 300.0 + 300.0 * 100.0 + 100.0 * 10.0);
    assert!((flops - want).abs() < 1e-12, "{flops} vs {want}");
    let history = std::fs::read_to_string(straight.join("history.csv")).unwrap();
    assert!(history.lines().next().unwrap().contains("fc1.kept,fc1.mean_inclusion"));

    let s = compact(&CompactOptions::untimed(&straight, &small)).unwrap();
    assert_eq!((s.groups_pruned, s.groups), (200, 400));
    assert!(s.max_logit_diff < 1e-4, "{}", s.max_logit_diff);
    let (small_metrics, small_cfg) = eval(&small, None, "cpu").unwrap();
    assert_eq!(small_metrics.accuracy, m["test_accuracy"].as_f64().unwrap());
    assert!(small_cfg.pruning.is_off(), "the fused network is a plain one");
    // a DCFF run is compacted from its fusion only
    let e = compact(&CompactOptions {
        masks: Some(straight.join("checkpoints")),
        ..CompactOptions::untimed(&straight, &dir.path().join("other"))
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("without --masks"), "{e}");
    assert_eq!(small_cfg.model.widths, Some(vec![150, 50, 10]));
}

/// The smoke MLP trained by CAP (its two hidden layers' units gated where they are read).
fn cap(set: &[&str]) -> StudyConfig {
    let mut all = vec!["pruning.method=\"cap\"", "pruning.cap.lambda=1"];
    all.extend_from_slice(set);
    common::config(SMOKE, "quickstart-smoke.toml", &all)
}

#[test]
fn cap_resumes_bit_identically_and_its_cut_compacts_and_fine_tunes() {
    let dir = tempfile::tempdir().unwrap();
    let (straight, resumed, small, tuned) = (
        dir.path().join("straight"),
        dir.path().join("resumed"),
        dir.path().join("small"),
        dir.path().join("tuned"),
    );
    train(&cap(&["train.epochs=2"]), &opts(&straight), None).unwrap();
    train(&cap(&["train.epochs=1"]), &opts(&resumed), None).unwrap();
    train(&cap(&["train.epochs=2"]), &opts(&resumed), Some(&resumed)).unwrap();
    let m = metrics(&straight);
    assert_eq!(m, metrics(&resumed));
    assert_eq!(history_without_seconds(&straight), history_without_seconds(&resumed));
    // the regulariser is in the history (divergence column, β = λ), and it cut units
    let h = history_without_seconds(&straight);
    let beta = h[0].iter().position(|c| c == "beta").unwrap();
    assert_eq!(h[1][beta], "1");
    let removed = m["cap_groups_removed"].as_u64().unwrap();
    assert!(removed > 0 && removed < 400, "{m}");
    assert!(m["cap_flops_kept"].as_f64().unwrap() < 1.0, "{m}");
    assert!(straight.join("cap_channels.safetensors").is_file());

    let s = compact(&CompactOptions::untimed(&straight, &small)).unwrap();
    assert_eq!(s.groups_pruned as u64, removed);
    assert!(
        s.max_logit_diff < 1e-4,
        "the compacted network is the static cut network"
    );
    let (small_metrics, small_cfg) = eval(&small, None, "cpu").unwrap();
    assert_eq!(small_metrics.accuracy, m["cap_cut_test_accuracy"].as_f64().unwrap());
    assert!(small_cfg.pruning.is_off());
    // fine-tuning the compacted network starts from its weights
    let ft = common::config(
        &std::fs::read_to_string(small.join("config.toml")).unwrap(),
        "small config.toml",
        &[
            &format!("bayes.init_from=\"{}\"", small.display()),
            "train.epochs=1",
            "optim.lr=0.01",
        ],
    );
    train(&ft, &opts(&tuned), None).unwrap();
    assert!(metrics(&tuned)["test_accuracy"].as_f64().unwrap() > 0.6);
}
