//! The smoke variant of the pruning-at-initialisation study (`experiments/configs/pai-smoke.toml`):
//! every criterion, LeNet-5 and ResNet-20 (with and without batch-norm warm-up), one epoch on a
//! few images per class.

use secateur_experiments::pai::{self, PaiConfig};
use std::path::Path;

#[test]
fn pai_smoke_study_runs_every_criterion_to_the_target_sparsity() {
    // GraSP, HP and HTS take Hessian-vector products: run in a process started for them.
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(
        module_path!(),
        "::pai_smoke_study_runs_every_criterion_to_the_target_sparsity"
    )) {
        return;
    }
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/pai-smoke.toml");
    let cfg = PaiConfig::from_file(&file).expect("study file");
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = pai::RunOptions {
        out: Some(tmp.path().join("pai")),
        jobs: 1,
        quiet: true,
        ..Default::default()
    };
    let dir = pai::run(&cfg, &file, &opts).expect("study");
    let csv = std::fs::read_to_string(dir.join("results.csv")).expect("results.csv");
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.splitn(11, ',').collect()).collect();
    // per seed: one dense run per model; LeNet-5 (no batch norm) once per criterion, ResNet-20
    // with and without warm-up
    let crit = cfg.criteria.len();
    assert_eq!(rows.len(), 2 + crit + 2 * crit, "{csv}");
    for r in &rows {
        let (criterion, reached, accuracy, error) = (r[1], r[5], r[6], r[10]);
        assert_eq!(error, "\"\"", "{criterion}: {error}");
        let acc: f64 = accuracy.parse().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{criterion}: accuracy {acc}");
        if criterion != "dense" {
            let reached: f64 = reached.parse().unwrap();
            // the classifier is kept dense and excluded from the count: exactly 0.9 up to rounding
            assert!((reached - 0.9).abs() < 1e-3, "{criterion}: sparsity {reached}");
        }
    }
    let table = std::fs::read_to_string(dir.join("table.md")).expect("table.md");
    for c in &cfg.criteria {
        assert!(table.contains(&format!("| resnet20 | {c} | yes |")), "{c}\n{table}");
        assert!(table.contains(&format!("| lenet5 | {c} | no |")), "{c}\n{table}");
    }
    let png = std::fs::read(dir.join("sparsity_accuracy.png")).expect("png");
    assert_eq!(&png[1..4], b"PNG");

    // An interrupted study, resumed with two jobs, ends with the same results: keep the first
    // third of the rows, resume, and compare everything but the timings.
    let without_seconds = |csv: &str| -> Vec<String> {
        csv.lines()
            .map(|l| {
                let mut f: Vec<&str> = l.splitn(11, ',').collect();
                f.remove(9);
                f.join(",")
            })
            .collect()
    };
    let lines: Vec<&str> = csv.lines().collect();
    let keep = 1 + rows.len() / 3;
    std::fs::write(dir.join("results.csv"), lines[..keep].join("\n") + "\n").expect("truncate");
    let resume = pai::RunOptions {
        resume: Some(dir.clone()),
        jobs: 2,
        quiet: true,
        ..Default::default()
    };
    let again = pai::run(&cfg, &file, &resume).expect("resumed study");
    assert_eq!(again, dir);
    let csv2 = std::fs::read_to_string(dir.join("results.csv")).expect("results.csv");
    assert_eq!(without_seconds(&csv2), without_seconds(&csv));

    // Resuming with another study file is refused.
    let mut other = cfg.clone();
    other.seeds.push(99);
    let err = pai::run(&other, &file, &resume).expect_err("another study").to_string();
    assert!(err.contains("another study"), "{err}");
}

/// The `pai.toml` of every committed study directory (written by earlier versions, compared
/// byte for byte by `--resume`) is written back unchanged: `scope` and `synflow_rounds` (now an
/// enum and an optional key) serialise as before.
#[test]
fn committed_study_files_are_written_back_unchanged() {
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results");
    let mut files = vec![];
    // (results/pai/before-issue-13 predates the `hutchinson_batch_size` and `probes` keys: no
    // later version writes its pai.toml back unchanged)
    for dir in ["pai", "pai/batch-hutchinson", "pai-resnet20"] {
        let f = results.join(dir).join("pai.toml");
        if f.is_file() {
            files.push(f);
        }
    }
    assert!(!files.is_empty(), "no committed pai.toml under {}", results.display());
    for f in files {
        let text = std::fs::read_to_string(&f).expect("pai.toml");
        let cfg = PaiConfig::from_file(&f).expect("study file");
        assert_eq!(toml::to_string(&cfg).expect("toml"), text, "{}", f.display());
    }
}
