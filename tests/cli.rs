//! End-to-end tests of the `secateur` binary: help, refusals of bad input, `data info`.

use std::process::Command;

fn secateur(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_secateur"))
        .args(args)
        .output()
        .expect("the secateur binary runs")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["train", "--help"],
        vec!["eval", "--help"],
        vec!["data", "info", "--help"],
        vec!["quickstart", "--help"],
    ] {
        let o = secateur(&args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("Usage"), "{args:?}");
    }
}

#[test]
fn unknown_config_key_exits_non_zero_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[optim]\nlearnin_rate = 0.1\n").unwrap();
    let out = dir.path().join("run");
    let o = secateur(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("learnin_rate") && t.contains("bad.toml"), "{t}");
    assert!(!out.join("metrics.json").exists());
}

#[test]
fn impossible_value_and_unknown_device_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[model]\narch = \"mlp\"\n").unwrap();
    let c = cfg.to_str().unwrap();
    let o = secateur(&["train", "--config", c, "--set", "optim.lr=0", "--quiet"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("optim.lr"), "{}", text(&o));
    let o = secateur(&["train", "--config", c, "--device", "tpu", "--quiet"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("tpu"), "{}", text(&o));
}

#[test]
fn missing_data_set_lists_the_places_searched() {
    let dir = tempfile::tempdir().unwrap();
    let o = secateur(&["data", "info", "cifar100", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains(dir.path().to_str().unwrap()), "{}", text(&o));
}

#[test]
fn data_info_reports_the_shipped_subset() {
    let o = secateur(&["data", "info", "fashion-mnist-mini"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("10000") || t.contains("10,000"), "{t}");
    assert!(t.contains("2000") || t.contains("2,000"), "{t}");
}

#[test]
fn eval_of_a_non_run_directory_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let o = secateur(&["eval", "--run", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not a run directory"), "{}", text(&o));
}

#[test]
fn bad_bayesian_settings_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[model]\narch = \"mlp\"\nlayers = \"sparse-vd\"\n").unwrap();
    let c = cfg.to_str().unwrap();
    for (set, field) in [
        ("bayes.mc_samples=0", "bayes.mc_samples"),
        ("model.layers=gaussian-process", "model.layers"),
        ("bayes.init_std=-1", "bayes.init_std"),
        ("bayes.divergence=js:7", "bayes.divergence"),
    ] {
        let out = dir.path().join("run");
        let o = secateur(&[
            "train",
            "--config",
            c,
            "--set",
            set,
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        assert!(!o.status.success(), "{set} was accepted");
        let t = text(&o);
        assert!(t.contains(field), "{set}: {t}");
        assert!(!out.join("metrics.json").exists());
    }
    // the unknown layer kind lists the known ones
    let o = secateur(&[
        "train",
        "--config",
        c,
        "--set",
        "model.layers=gaussian-process",
        "--quiet",
    ]);
    assert!(text(&o).contains("mean-field"), "{}", text(&o));
}
