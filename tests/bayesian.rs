//! Bayesian runs end to end: the sparse-VD smoke config trains for one epoch through the ELBO and
//! reports finite sparsity, test-time parameter counts and mutual information; history.csv has
//! the NLL and divergence columns; the same seed gives the same metrics; a mean-field run with
//! Monte Carlo KL and several training samples also runs.

mod common;

use common::opts;
use secateur::experiments::commands::train;
use secateur::experiments::config::StudyConfig;

const SMOKE: &str = include_str!("../experiments/configs/sparse-vd-lenet300-smoke.toml");

fn cfg(set: &[&str]) -> StudyConfig {
    common::config(SMOKE, "sparse-vd-lenet300-smoke.toml", set)
}

fn finite(m: &serde_json::Map<String, serde_json::Value>, k: &str) -> f64 {
    let v = m
        .get(k)
        .and_then(|v| v.as_f64())
        .unwrap_or_else(|| panic!("metric {k} missing: {m:?}"));
    assert!(v.is_finite(), "{k} = {v}");
    v
}

#[test]
fn sparse_vd_smoke_trains_and_reports_its_bayesian_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let s = train(&cfg(&["train.epochs=1"]), &opts(&a), None).unwrap();
    let m = &s.metrics;
    assert_eq!(m["layers"], "sparse-vd");
    let sparsity = finite(m, "sparsity_log_alpha");
    assert!((0.0..=1.0).contains(&sparsity));
    let mi = finite(m, "test_mutual_information");
    assert!(mi >= 0.0);
    finite(m, "test_predictive_entropy");
    finite(m, "test_accuracy_posterior_mean");
    assert!(finite(m, "train_divergence") > 0.0);
    finite(m, "train_nll");
    // test-time counts: LeNet-300-100 has 266,610 weights and biases; the dropped weights are
    // not counted as non-zero; the trainable count adds one log σ² per weight (266,200).
    assert_eq!(m["params_weights"].as_u64(), Some(266_610));
    assert_eq!(m["params_total"].as_u64(), Some(266_610 + 266_200));
    let nz = m["params_nonzero"].as_u64().unwrap() as f64;
    let weights = 266_200.0;
    assert!(
        nz <= 266_610.0 - sparsity * weights + 1.0,
        "{nz} vs sparsity {sparsity}"
    );
    assert!(finite(m, "test_accuracy") > 0.3, "{m:?}");
    let history = std::fs::read_to_string(a.join("history.csv")).unwrap();
    let header = history.lines().next().unwrap();
    assert!(header.contains("train_nll") && header.contains("train_divergence") && header.contains("beta"));
    // same seed, same metrics
    let s2 = train(&cfg(&["train.epochs=1"]), &opts(&b), None).unwrap();
    let strip = |mut m: serde_json::Map<String, serde_json::Value>| {
        m.remove("wall_seconds");
        m
    };
    assert_eq!(strip(s.metrics.clone()), strip(s2.metrics));
}

#[test]
fn mean_field_with_monte_carlo_kl_and_two_samples_runs() {
    let dir = tempfile::tempdir().unwrap();
    let s = train(
        &cfg(&[
            "train.epochs=1",
            "model.layers=mean-field",
            "bayes.divergence=\"kl-mc:2\"",
            "bayes.prior={kind=\"scale-mixture\",pi=0.5,std1=1.0,std2=0.01}",
            "bayes.mc_samples=2",
            "bayes.sampling=\"flipout\"",
            "bayes.beta={kind=\"cyclical\",period=1}",
        ]),
        &opts(&dir.path().join("mf")),
        None,
    )
    .unwrap();
    let m = &s.metrics;
    assert!(finite(m, "test_mutual_information") >= 0.0);
    assert!(m.get("sparsity_log_alpha").is_none());
    assert_eq!(m["params_weights"].as_u64(), Some(266_610));
    assert!(finite(m, "test_accuracy") > 0.3, "{m:?}");
}

/// `bayes.spike_slab_layerwise = true` on a spike-and-slab LeNet-300-100: `train` records the
/// layer-wise λ of the reference code's formula for its widths and the 10,000 training images in
/// the run's config, and the run trains.
#[test]
fn spike_slab_layerwise_inclusion_is_resolved_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(&[
        "train.epochs=1",
        "model.layers=\"spike-slab\"",
        "bayes.spike_slab_layerwise=true",
    ]);
    let s = train(&c, &opts(&dir.path().join("ss")), None).unwrap();
    let written = StudyConfig::from_file(&s.dir.join("config.toml"), &[]).unwrap();
    let want = secateur::bayes::layers::spike_slab::layerwise_inclusion(&[784, 300, 100, 10], 10_000).unwrap();
    assert_eq!(written.bayes.spike_slab_layer_inclusion, want);
    assert!(finite(&s.metrics, "test_accuracy") > 0.3);
    // history.csv shows, per node-selecting layer, the nodes kept and their mean inclusion; at the
    // last epoch they agree with the nodes metrics.json reports removed
    let history = std::fs::read_to_string(s.dir.join("history.csv")).unwrap();
    let rows: Vec<Vec<&str>> = history.lines().map(|l| l.split(',').collect()).collect();
    let col = |name: &str| {
        rows[0]
            .iter()
            .position(|c| *c == name)
            .unwrap_or_else(|| panic!("{name}: {}", history))
    };
    let last = rows.last().unwrap();
    let kept: usize = ["fc1.kept", "fc2.kept"]
        .iter()
        .map(|c| last[col(c)].parse::<usize>().unwrap())
        .sum();
    let removed = s.metrics["nodes_removed"].as_u64().unwrap() as usize;
    assert_eq!(
        (kept + removed, s.metrics["nodes_total"].as_u64()),
        (400, Some(400)),
        "{history}"
    );
    for c in ["fc1.mean_inclusion", "fc2.mean_inclusion"] {
        let g: f64 = last[col(c)].parse().unwrap();
        assert!(g > 0.0 && g < 1.0, "{c} = {g}");
    }
    assert!(
        rows[0].iter().all(|c| *c != "fc3.kept"),
        "the classifier selects no nodes"
    );
    // on another architecture it is refused, naming the key
    let e = train(
        &cfg(&[
            "train.epochs=1",
            "model.arch=\"lenet5\"",
            "model.layers=\"spike-slab\"",
            "bayes.spike_slab_layerwise=true",
        ]),
        &opts(&dir.path().join("lenet")),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("bayes.spike_slab_layerwise"), "{e}");
    // an explicit list must give one λ per node-selecting layer (two in LeNet-300-100)
    let e = train(
        &cfg(&[
            "train.epochs=1",
            "model.layers=\"spike-slab\"",
            "bayes.spike_slab_layer_inclusion=[0.01]",
        ]),
        &opts(&dir.path().join("short")),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("bayes.spike_slab_layer_inclusion") && e.contains("2 node-selecting"),
        "{e}"
    );
}

/// `bayes.eval_every_epoch`: `mean` writes the posterior-mean columns only (as before), `both`
/// adds the Monte Carlo columns, `mc` writes the Monte Carlo ones only; the report says which;
/// a deterministic network's Monte Carlo average of its one predictive equals it. An unknown
/// value is refused.
#[test]
fn per_epoch_evaluation_says_and_chooses_its_predictive() {
    let dir = tempfile::tempdir().unwrap();
    let history = |name: &str, every: &str, layers: &str| -> (Vec<String>, Vec<Vec<String>>, String) {
        let out = dir.path().join(name);
        train(
            &cfg(&[
                "train.epochs=1",
                "data.name=\"uci-digits\"",
                &format!("model.layers=\"{layers}\""),
                &format!("bayes.eval_every_epoch=\"{every}\""),
            ]),
            &opts(&out),
            None,
        )
        .unwrap();
        let text = std::fs::read_to_string(out.join("history.csv")).unwrap();
        let mut lines = text.lines();
        let head: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
        let rows = lines.map(|l| l.split(',').map(String::from).collect()).collect();
        (head, rows, std::fs::read_to_string(out.join("report.md")).unwrap())
    };
    let col = |h: &[String], r: &[String], k: &str| -> f64 {
        r[h.iter()
            .position(|c| c == k)
            .unwrap_or_else(|| panic!("no column {k} in {h:?}"))]
        .parse()
        .unwrap()
    };
    let (h, _, report) = history("mean", "mean", "mean-field");
    assert!(!h.iter().any(|c| c.starts_with("mc_")), "{h:?}");
    assert!(report.contains("Test columns: the posterior-mean network"), "{report}");
    let (h, r, _) = history("both", "both", "mean-field");
    let (mean_acc, mc_acc) = (col(&h, &r[0], "test_accuracy"), col(&h, &r[0], "mc_test_accuracy"));
    assert!(mean_acc > 0.3 && mc_acc > 0.3, "{mean_acc} {mc_acc}");
    let (h, r, report) = history("mc", "mc", "mean-field");
    assert!(col(&h, &r[0], "test_accuracy").is_nan() && col(&h, &r[0], "mc_test_accuracy") > 0.3);
    assert!(report.contains("Test columns: the Monte Carlo average"), "{report}");
    // a deterministic network has one predictive: `both` evaluates it once, no Monte Carlo columns
    let (h, _, _) = history("det", "both", "deterministic");
    assert!(!h.iter().any(|c| c.starts_with("mc_")), "{h:?}");
    let bad = StudyConfig::from_toml("[bayes]\neval_every_epoch = \"sometimes\"\n", "t.toml", &[]);
    assert!(bad.unwrap_err().to_string().contains("eval_every_epoch"));
}
