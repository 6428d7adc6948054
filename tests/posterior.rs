//! Posteriors over a trained network end to end (`[posterior]`): SWAG resumed after a kill
//! predicts exactly as a run straight through; every kind trains, writes its posterior and is
//! evaluated again by `eval` with the same predictions; a deep ensemble trains its members as
//! runs and resumes; the posterior study writes its table and continues.

mod common;

use common::opts;
use secateur::experiments::commands::{eval, train};
use secateur::experiments::config::StudyConfig;
use std::path::Path;
use std::process::Command;

const SMOKE: &str = include_str!("../experiments/configs/quickstart-smoke.toml");

fn cfg(set: &[&str]) -> StudyConfig {
    common::config(SMOKE, "quickstart-smoke.toml", set)
}

/// SWAG on the smoke MLP: 6 epochs, the SWA schedule from epoch 3, a snapshot every 20 steps
/// of the last 3 epochs (15 snapshots, K = 10 columns), 8 samples.
const SWAG: &[&str] = &[
    "train.epochs=6",
    "train.schedule={kind=\"swa\",start=3,swa_lr=0.01}",
    "posterior={kind=\"swag\",start_epoch=3,every=\"steps\",collect_every=20,max_rank=10,samples=8}",
];

fn metrics(dir: &Path) -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("metrics.json")).expect("metrics.json exists");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("metrics.json is JSON");
    let m = v.as_object_mut().expect("flat object");
    m.remove("wall_seconds");
    m.clone()
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn swag_resumed_after_a_kill_predicts_as_a_run_straight_through() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("swag.toml");
    std::fs::write(&config, cfg(SWAG).to_toml().unwrap()).unwrap();
    let straight = dir.path().join("straight");
    let killed = dir.path().join("killed");
    let bin = env!("CARGO_BIN_EXE_secateur");
    let c = config.to_str().unwrap();
    let o = Command::new(bin)
        .args(["train", "--config", c, "--out", straight.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // the same run, killed (SIGKILL) once its fourth epoch's checkpoint, which holds collected
    // SWAG snapshots, is complete
    let mut child = Command::new(bin)
        .args(["train", "--config", c, "--out", killed.to_str().unwrap(), "--quiet"])
        .spawn()
        .unwrap();
    let latest = killed.join("checkpoints").join("latest");
    loop {
        let done = std::fs::read_to_string(&latest).is_ok_and(|n| n.trim() >= "epoch-0004");
        if done {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it could be killed");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !killed.join("metrics.json").exists(),
        "the run finished before the kill: the test could not kill it mid-collection"
    );
    let o = Command::new(bin)
        .args(["train", "--resume", killed.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // identical predictions, posterior and metrics (the collected snapshots, the samples)
    for f in ["predictions.safetensors", "posterior.safetensors"] {
        assert!(
            bytes(&straight.join(f)) == bytes(&killed.join(f)),
            "{f} differs after the resume"
        );
    }
    assert_eq!(metrics(&straight), metrics(&killed));
    let m = metrics(&straight);
    assert_eq!(m["posterior"], "swag");
    assert_eq!(m["eval_samples"], 8);
    // SWAG samples disagree somewhere: the epistemic part is positive
    assert!(m["test_mutual_information"].as_f64().unwrap() > 0.0);
    // `eval` predicts with the saved posterior exactly as `train` did
    let (em, _) = eval(&straight, None, "cpu").unwrap();
    assert_eq!(em.accuracy, m["test_accuracy"].as_f64().unwrap());
    assert_eq!(em.nll, m["test_nll"].as_f64().unwrap());
}

#[test]
fn every_posterior_kind_trains_saves_and_evaluates_again() {
    let dir = tempfile::tempdir().unwrap();
    let kinds: [(&str, Vec<&str>); 6] = [
        ("swa", vec!["train.epochs=3", "posterior={kind=\"swa\",start_epoch=1}"]),
        (
            "swag-diag",
            vec![
                "train.epochs=3",
                "posterior={kind=\"swag-diag\",start_epoch=1,samples=4}",
            ],
        ),
        ("laplace-kron", vec!["posterior={kind=\"laplace\"}"]),
        (
            "laplace-full-mc",
            vec![
                "model.hidden=[16]",
                "posterior={kind=\"laplace\",hessian=\"full\",predictive=\"mc\",samples=4}",
            ],
        ),
        (
            "laplace-diag-ef",
            vec![
                "model.hidden=[16]",
                "posterior={kind=\"laplace\",subset=\"all\",hessian=\"ef\",samples=4}",
            ],
        ),
        (
            "laplace-diag-ef-probit",
            vec![
                "model.hidden=[16]",
                "posterior={kind=\"laplace\",subset=\"all\",hessian=\"ef\",predictive=\"probit\"}",
            ],
        ),
    ];
    for (name, set) in kinds {
        let out = dir.path().join(name);
        let c = cfg(&set);
        let s = train(&c, &opts(&out), None).unwrap_or_else(|e| panic!("{name}: {e}"));
        let m = &s.metrics;
        assert_eq!(m["posterior"], c.posterior.kind.as_str(), "{name}");
        assert!(out.join("posterior.safetensors").is_file(), "{name}");
        let acc = m["test_accuracy"].as_f64().unwrap();
        assert!(acc > 0.5, "{name}: accuracy {acc}");
        if name.starts_with("laplace") {
            assert!(m["laplace_prior_precision"].as_f64().unwrap() > 0.0, "{name}");
        }
        let (em, _) = eval(&out, None, "cpu").unwrap();
        assert_eq!(em.accuracy, acc, "{name}");
        assert_eq!(em.nll, m["test_nll"].as_f64().unwrap(), "{name}");
    }
}

#[test]
fn an_ensemble_trains_its_members_as_runs_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ens");
    let c = cfg(&[
        "train.epochs=1",
        "posterior={kind=\"ensemble\",members=2}",
        "data.ood=\"uci-digits\"",
    ]);
    let s = train(&c, &opts(&out), None).unwrap();
    let m = &s.metrics;
    assert_eq!(m["members"], 2);
    for i in 0..2 {
        let md = out.join("members").join(format!("member-{i}"));
        let cfg_i = StudyConfig::from_file(&md.join("config.toml"), &[]).unwrap();
        assert_eq!(cfg_i.seed, 1000 * i as u64);
        assert!(md.join("weights.safetensors").is_file());
    }
    // member 0 is the single network of the config's seed
    let single = train(&cfg(&["train.epochs=1"]), &opts(&dir.path().join("single")), None).unwrap();
    assert!(
        bytes(&dir.path().join("single").join("weights.safetensors"))
            == bytes(&out.join("members").join("member-0").join("weights.safetensors")),
        "member 0 differs from the network of the config's seed"
    );
    // −log of averaged probabilities ≤ the average of −log (log is concave): the ensemble's NLL
    // is at most its members' mean NLL; and it reads the OOD set
    let member_nll: f64 = (0..2)
        .map(|i| {
            metrics(&out.join("members").join(format!("member-{i}")))["test_nll"]
                .as_f64()
                .unwrap()
        })
        .sum::<f64>()
        / 2.0;
    assert!(m["test_nll"].as_f64().unwrap() <= member_nll + 1e-9);
    assert_eq!(
        single.metrics["test_nll"],
        metrics(&out.join("members").join("member-0"))["test_nll"]
    );
    assert!(m["ood_auroc_entropy"].as_f64().unwrap() > 0.0);
    let (em, _) = eval(&out, None, "cpu").unwrap();
    assert_eq!(em.accuracy, m["test_accuracy"].as_f64().unwrap());
    // a second ensemble whose run stopped after its first member: resuming trains only the rest
    let out2 = dir.path().join("ens2");
    std::fs::create_dir_all(out2.join("members")).unwrap();
    std::fs::write(out2.join("config.toml"), c.to_toml().unwrap()).unwrap();
    copy_dir(
        &out.join("members").join("member-0"),
        &out2.join("members").join("member-0"),
    );
    let before = bytes(&out2.join("members").join("member-0").join("metrics.json"));
    let s2 = train(&c, &opts(&out2), Some(&out2)).unwrap();
    assert!(
        before == bytes(&out2.join("members").join("member-0").join("metrics.json")),
        "member 0 was retrained"
    );
    assert_eq!(s2.metrics["test_nll"], m["test_nll"]);
    // one job per member (`train --member I`, in any order), then `--resume` combines them:
    // the same ensemble as trained in one process
    let out3 = dir.path().join("ens3");
    for i in [1, 0] {
        secateur::experiments::commands::train_member(&c, &opts(&out3), &out3, i).unwrap();
    }
    let e = secateur::experiments::commands::train_member(&c, &opts(&out3), &out3, 2).unwrap_err();
    assert!(e.to_string().contains("the ensemble has 2"), "{e}");
    let s3 = train(&c, &opts(&out3), Some(&out3)).unwrap();
    assert_eq!(s3.metrics["test_nll"], m["test_nll"]);
    assert_eq!(s3.metrics["test_accuracy"], m["test_accuracy"]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn the_posterior_study_writes_its_table_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.toml");
    std::fs::write(&base, cfg(&["train.epochs=1"]).to_toml().unwrap()).unwrap();
    let study = dir.path().join("study.toml");
    std::fs::write(
        &study,
        "name = \"s\"\nbase = \"base.toml\"\nseeds = [0, 1]\n\n[[method]]\nname = \"map\"\n\n[[method]]\nname = \"swa\"\nset = ['posterior={kind=\"swa\",start_epoch=0}']\n",
    )
    .unwrap();
    use secateur::experiments::posterior_study::{run, PosteriorStudy, RunOptions};
    let s = PosteriorStudy::from_file(&study).unwrap();
    let out = dir.path().join("out");
    // shard 0/2 runs cells 0 and 2: map seed 0 and swa seed 0
    let o = RunOptions {
        out: Some(out.clone()),
        shard: Some((0, 2)),
        quiet: true,
        ..Default::default()
    };
    run(&s, &study, &o).unwrap();
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.contains("\nmap,0,") && csv.contains("\nswa,0,"), "{csv}");
    let kept = bytes(&out.join("runs").join("map-s0").join("metrics.json"));
    // shard 1/2 in a directory of its own; `study join` merges the two, runs included
    let out1 = dir.path().join("out1");
    let o = RunOptions {
        out: Some(out1.clone()),
        shard: Some((1, 2)),
        quiet: true,
        ..Default::default()
    };
    run(&s, &study, &o).unwrap();
    let joined = dir.path().join("joined");
    let j = secateur::experiments::cluster::join(
        &[out.clone(), out1],
        &secateur::experiments::cluster::JoinOptions {
            out: joined.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(j.missing.is_empty() && j.failed.is_empty() && j.rows == 4, "{j:?}");
    assert!(joined.join("runs").join("swa-s1").join("metrics.json").is_file());
    let o = RunOptions {
        resume: Some(out.clone()),
        quiet: true,
        ..Default::default()
    };
    run(&s, &study, &o).unwrap();
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(
        kept == bytes(&out.join("runs").join("map-s0").join("metrics.json")),
        "a finished run was rerun"
    );
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(
        table.contains("| map | 2 |") && table.contains("| swa | 2 |"),
        "{table}"
    );
    // the joined study has the rows of the one resumed in place (all but the wall seconds)
    let no_seconds = |p: &Path| -> Vec<String> {
        let text = std::fs::read_to_string(p).unwrap();
        let head: Vec<&str> = text.lines().next().unwrap().split(',').collect();
        let t = head.iter().position(|h| *h == "train_seconds").unwrap();
        text.lines()
            .map(|l| {
                let mut f: Vec<&str> = l.split(',').collect();
                f.remove(t);
                f.join(",")
            })
            .collect()
    };
    assert_eq!(
        no_seconds(&joined.join("results.csv")),
        no_seconds(&out.join("results.csv"))
    );
    let jt = std::fs::read_to_string(joined.join("table.md")).unwrap();
    assert!(jt.contains("| map | 2 |") && jt.contains("| swa | 2 |"), "{jt}");
    // a new study in the same directory is refused
    let o = RunOptions {
        out: Some(out.clone()),
        quiet: true,
        ..Default::default()
    };
    assert!(run(&s, &study, &o)
        .unwrap_err()
        .to_string()
        .contains("already holds a study"));
}

#[test]
fn prune_reads_the_posterior_of_a_run() {
    use secateur::experiments::prune::{prune, PruneOptions, PruneSpec};
    use secateur::inference::posterior::Posterior;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("swag");
    train(
        &cfg(&[
            "train.epochs=2",
            "posterior={kind=\"swag-diag\",start_epoch=0,samples=2}",
        ]),
        &opts(&run),
        None,
    )
    .unwrap();
    let out = dir.path().join("snr");
    let spec = PruneSpec {
        criterion: "snr".into(),
        sparsity: 0.5,
        scope: secateur::pruning::Scope::Global,
        bn_warmup_batches: 0,
        rounds: 1,
        samples_per_class: 1,
        keep_first: false,
        keep_last: false,
        keep_conv: false,
        options: Default::default(),
    };
    let o = PruneOptions {
        spec,
        run: Some(run.clone()),
        config: None,
        overrides: vec![],
        out: out.clone(),
        data_dir: None,
        force: false,
    };
    prune(&o).unwrap();
    // the scores are |mean| / σ of the saved SWAG-diagonal posterior
    let post = secateur::experiments::atomic::read_safetensors(&run.join("posterior.safetensors")).unwrap();
    let swag = secateur::inference::swag::Swag::from_tensors(&post.into_iter().collect()).unwrap();
    let st = swag
        .stats()
        .unwrap()
        .into_iter()
        .find(|s| s.name == "fc1.weight")
        .unwrap();
    let want: Vec<f32> = st.snr().unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let scores = secateur::experiments::atomic::read_safetensors(&out.join("scores.safetensors")).unwrap();
    let got: Vec<f32> = scores["fc1.weight"].flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got
        .iter()
        .zip(&want)
        .all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs().max(1.0)));
}

#[test]
fn regression_posteriors_train_and_evaluate_again() {
    const WINE: &str = include_str!("../experiments/configs/regression-wine-smoke.toml");
    let dir = tempfile::tempdir().unwrap();
    let base = [
        "model.layers=\"deterministic\"",
        "likelihood.noise=\"homoscedastic\"",
        "train.epochs=4",
    ];
    let kinds: [(&str, &str); 3] = [
        (
            "swag",
            "posterior={kind=\"swag\",start_epoch=1,every=\"steps\",collect_every=10,samples=4}",
        ),
        (
            "laplace",
            "posterior={kind=\"laplace\",subset=\"all\",hessian=\"ggn\",samples=4}",
        ),
        ("ensemble", "posterior={kind=\"ensemble\",members=2}"),
    ];
    for (name, p) in kinds {
        let mut set: Vec<&str> = base.to_vec();
        set.push(p);
        let c = common::config(WINE, "regression-wine-smoke.toml", &set);
        let out = dir.path().join(name);
        let s = train(&c, &opts(&out), None).unwrap_or_else(|e| panic!("{name}: {e}"));
        let rmse = s.metrics["test_rmse"].as_f64().unwrap();
        assert!(rmse.is_finite() && rmse > 0.0, "{name}: {rmse}");
        assert_eq!(s.metrics["posterior"], c.posterior.kind.as_str());
        let (m, _) = secateur::experiments::commands::regression::eval(&out, None, "cpu").unwrap();
        assert_eq!(m.rmse, rmse, "{name}");
        assert_eq!(m.nll, s.metrics["test_nll"].as_f64().unwrap(), "{name}");
    }
}
