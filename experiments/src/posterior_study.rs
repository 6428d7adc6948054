//! The posterior study (`secateur study posteriors`): methods × seeds, each an ordinary `train`
//! run of one base config with the method's `--set` overrides, compared on accuracy, NLL,
//! Brier score, ECE, out-of-distribution AUROC by predictive entropy and wall time.
//!
//! ```toml
//! name = "posteriors-lenet5"
//! base = "posterior-study-lenet5-base.toml"   # a study config, relative to this file
//! seeds = [0, 1, 2]
//!
//! [[method]]
//! name = "map"
//!
//! [[method]]
//! name = "swag"
//! set = ["posterior.kind=\"swag\"", "train.schedule={kind=\"swa\",start=6,swa_lr=0.01}"]
//! ```
//!
//! Every run lives in `<dir>/runs/<method>-s<seed>/` with all its files; a finished run (its
//! `metrics.json`) is kept, an unfinished one resumed, so a killed study continues with
//! `--resume`. `--shard I/N` runs every N-th cell from the I-th, so shards can run in parallel
//! processes on the same directory (each run is locked by the process writing it). The table
//! (`results.csv`, one row per run, and `table.md`, mean ± standard deviation over seeds per
//! method, then each method's paired difference from the first method seed by seed) is
//! rewritten from the run directories after every run.

use crate::atomic;
use crate::commands::{train, TrainOptions};
use crate::config::StudyConfig;
use crate::error::{ExpError, Result};
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A posterior study file (see the [module docs](self)).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PosteriorStudy {
    /// Study name (the default directory is `runs/<name>-<timestamp>`).
    pub name: String,
    /// The base study config, relative to the study file.
    pub base: PathBuf,
    /// Seeds; every method runs with each.
    pub seeds: Vec<u64>,
    /// The methods, in table order.
    #[serde(rename = "method")]
    pub methods: Vec<Method>,
}

/// One row group of the table: a name and the overrides that turn the base config into it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Method {
    /// Name (a plain name: it names run directories).
    pub name: String,
    /// `key=value` overrides of the base config, as `--set` takes them.
    #[serde(default)]
    pub set: Vec<String>,
}

/// Options of `study posteriors`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Study directory (default `runs/<name>-<timestamp>`); refused if it holds another study.
    pub out: Option<PathBuf>,
    /// Continue the study in this directory.
    pub resume: Option<PathBuf>,
    /// Data directory searched first.
    pub data_dir: Option<PathBuf>,
    /// Run only cells `i, i + n, …`.
    pub shard: Option<(usize, usize)>,
    /// Run nothing; only rewrite the table.
    pub report_only: bool,
    /// No progress output.
    pub quiet: bool,
}

/// The study file's name inside a study directory.
pub const STUDY_FILE: &str = "posteriors.toml";

impl PosteriorStudy {
    /// Reads and checks a study file: at least one seed and method, plain unique method names,
    /// and every method's config valid (read with its overrides), naming the method.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ExpError::io(path, e))?;
        let s: PosteriorStudy =
            toml::from_str(&text).map_err(|e| ExpError::config(path.display().to_string(), e.to_string()))?;
        let src = path.display().to_string();
        crate::config::check_name("name", &s.name).map_err(|m| ExpError::config(&src, m))?;
        if s.seeds.is_empty() || s.methods.is_empty() {
            return Err(ExpError::config(&src, "needs at least one seed and one [[method]]"));
        }
        for (i, m) in s.methods.iter().enumerate() {
            crate::config::check_name("method.name", &m.name).map_err(|e| ExpError::config(&src, e))?;
            if s.methods[..i].iter().any(|o| o.name == m.name) {
                return Err(ExpError::config(&src, format!("method `{}` appears twice", m.name)));
            }
            s.config(path, m, s.seeds[0])
                .map_err(|e| ExpError::config(&src, format!("method `{}`: {e}", m.name)))?;
        }
        Ok(s)
    }

    /// The config of `method` with `seed`, the base read relative to the study file `path`.
    pub fn config(&self, path: &Path, method: &Method, seed: u64) -> Result<StudyConfig> {
        let base = path.parent().unwrap_or(Path::new(".")).join(&self.base);
        let mut set = method.set.clone();
        set.push(format!("seed={seed}"));
        set.push(format!("name=\"{}-{}\"", self.name, method.name));
        StudyConfig::from_file(&base, &set)
    }
}

/// Runs (or continues) the study; returns its directory.
pub fn run(study: &PosteriorStudy, path: &Path, opts: &RunOptions) -> Result<PathBuf> {
    let text = std::fs::read_to_string(path).map_err(|e| ExpError::io(path, e))?;
    let dir = match (&opts.resume, &opts.out) {
        (Some(d), _) => {
            let recorded = d.join(STUDY_FILE);
            let old = std::fs::read_to_string(&recorded).map_err(|e| ExpError::io(&recorded, e))?;
            if old != text {
                return Err(ExpError::config(
                    "--resume",
                    format!(
                        "{} differs from the study file the directory was started with ({}); a study continues with its own file",
                        path.display(),
                        recorded.display()
                    ),
                ));
            }
            d.clone()
        }
        (None, out) => {
            let d = out
                .clone()
                .unwrap_or_else(|| PathBuf::from("runs").join(format!("{}-{}", study.name, crate::store::timestamp())));
            if d.join(STUDY_FILE).exists() {
                return Err(ExpError::Run {
                    path: d,
                    message: "already holds a study; continue it with --resume".into(),
                });
            }
            std::fs::create_dir_all(d.join("runs")).map_err(|e| ExpError::io(&d, e))?;
            atomic::write_string(&d.join(STUDY_FILE), &text)?;
            d
        }
    };
    if !opts.report_only {
        let cells: Vec<(&Method, u64)> = study
            .methods
            .iter()
            .flat_map(|m| study.seeds.iter().map(move |&s| (m, s)))
            .collect();
        let (shard, shards) = opts.shard.unwrap_or((0, 1));
        if shards == 0 || shard >= shards {
            return Err(ExpError::config(
                "--shard",
                format!("{shard}/{shards} is not a shard I/N with I < N"),
            ));
        }
        // what this shard owes, for `study join`
        crate::cluster::ShardManifest::new(
            crate::cluster::StudyKind::Posteriors,
            &study.name,
            path,
            (shard, shards),
            &["method", "seed"],
            cells.iter().map(|(m, s)| vec![m.name.clone(), s.to_string()]).collect(),
            (0..cells.len()).map(|k| k % shards).collect(),
        )?
        .write(&dir)?;
        for (k, (m, seed)) in cells.into_iter().enumerate() {
            if let Some((i, n)) = opts.shard {
                if k % n != i {
                    continue;
                }
            }
            let rd = dir.join("runs").join(format!("{}-s{seed}", m.name));
            if rd.join("metrics.json").is_file() {
                continue;
            }
            let cfg = study.config(path, m, seed)?;
            let started = rd.join("config.toml").is_file();
            if !opts.quiet {
                eprintln!("{} seed {seed}: {}", m.name, rd.display());
            }
            let topts = TrainOptions {
                out: (!started).then(|| rd.clone()),
                data_dir: opts.data_dir.clone(),
                device: "cpu".into(),
                quiet: opts.quiet,
                masks: None,
            };
            if let Err(e) = train(&cfg, &topts, started.then_some(rd.as_path())) {
                atomic::write_string(&rd.join("error.txt"), &format!("{e}\n"))?;
                if !opts.quiet {
                    eprintln!("{} seed {seed} failed: {e}", m.name);
                }
            }
            write_table(study, &dir)?;
        }
    }
    write_table(study, &dir)?;
    Ok(dir)
}

/// The columns of `results.csv` after `method,seed` for classification, with their table
/// headers.
pub const CLASSIFICATION_COLUMNS: [(&str, &str); 6] = [
    ("test_accuracy", "accuracy %"),
    ("test_nll", "NLL"),
    ("test_brier", "Brier"),
    ("test_ece", "ECE"),
    ("ood_auroc_entropy", "OOD AUROC (entropy)"),
    ("train_seconds", "train s"),
];

/// The columns for regression (original target units).
pub const REGRESSION_COLUMNS: [(&str, &str); 5] = [
    ("test_rmse", "RMSE"),
    ("test_nll", "NLL"),
    ("test_coverage_95", "95% coverage"),
    ("test_mean_predictive_std", "mean predictive σ"),
    ("train_seconds", "train s"),
];

/// One run's values of `columns` (NaN where absent). `train_seconds` is the run's wall time,
/// plus its members' for an ensemble.
fn row(metrics: &Value, columns: &[(&str, &str)]) -> Vec<f64> {
    let get = |k: &str| metrics.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    columns
        .iter()
        .map(|(k, _)| match *k {
            "train_seconds" => {
                get("wall_seconds")
                    + metrics
                        .get("member_wall_seconds")
                        .and_then(Value::as_f64)
                        .unwrap_or(0.0)
            }
            k => get(k),
        })
        .collect()
}

/// Rewrites `results.csv` and `table.md` from the finished runs of the study directory (a
/// failed run's row holds its error). Columns follow the task of the first finished run.
pub fn write_table(study: &PosteriorStudy, dir: &Path) -> Result<()> {
    let mut found: Vec<(&Method, u64, Option<Value>, String)> = Vec::new();
    for m in &study.methods {
        for &seed in &study.seeds {
            let rd = dir.join("runs").join(format!("{}-s{seed}", m.name));
            let metrics = rd.join("metrics.json");
            if let Ok(text) = std::fs::read_to_string(&metrics) {
                let v: Value =
                    serde_json::from_str(&text).map_err(|e| ExpError::io(&metrics, std::io::Error::other(e)))?;
                found.push((m, seed, Some(v), String::new()));
            } else if let Ok(err) = std::fs::read_to_string(rd.join("error.txt")) {
                found.push((m, seed, None, err.trim().replace(['"', '\n'], " ")));
            }
        }
    }
    let regression = found
        .iter()
        .find_map(|f| f.2.as_ref())
        .is_some_and(|v| v.get("test_rmse").is_some());
    let columns: &[(&str, &str)] = if regression {
        &REGRESSION_COLUMNS
    } else {
        &CLASSIFICATION_COLUMNS
    };
    let names: Vec<&str> = columns.iter().map(|c| c.0).collect();
    let heads: Vec<&str> = columns.iter().map(|c| c.1).collect();
    let mut csv = format!("method,seed,{},error\n", names.join(","));
    let mut md = format!(
        "| method | runs | {} |\n|---|---|{}\n",
        heads.join(" | "),
        "---|".repeat(columns.len())
    );
    for m in &study.methods {
        let mut rows = Vec::new();
        for (fm, seed, v, err) in found.iter().filter(|f| f.0.name == m.name) {
            match v {
                Some(v) => {
                    let r = row(v, columns);
                    let cells: Vec<String> = r.iter().map(|x| format!("{x:.6}")).collect();
                    csv += &format!("{},{seed},{},\n", fm.name, cells.join(","));
                    rows.push(r);
                }
                None => csv += &format!("{},{seed},{}\"{err}\"\n", fm.name, ",".repeat(columns.len())),
            }
        }
        if rows.is_empty() {
            continue;
        }
        let mut cells = Vec::new();
        for (c, (name, _)) in columns.iter().enumerate() {
            let v: Vec<f64> = rows.iter().map(|r| r[c]).collect();
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let sd = if v.len() > 1 {
                (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
            } else {
                f64::NAN
            };
            cells.push(match *name {
                "test_accuracy" => format!("{:.2} ± {:.2}", 100.0 * mean, 100.0 * sd),
                "train_seconds" => format!("{mean:.0}"),
                _ => format!("{mean:.4} ± {sd:.4}"),
            });
        }
        md += &format!("| {} | {} | {} |\n", m.name, rows.len(), cells.join(" | "));
    }
    md += &paired_table(study, &found, columns);
    atomic::write_string(&dir.join("results.csv"), &csv)?;
    atomic::write_string(&dir.join("table.md"), &md)
}

/// The paired comparison with the first method (the reference, e.g. MAP): per method, the mean
/// and standard deviation over seeds of `method − reference` for each column, over the seeds
/// both finished (same seed: same initialisation, data order and split but for the method).
fn paired_table(
    study: &PosteriorStudy,
    found: &[(&Method, u64, Option<Value>, String)],
    columns: &[(&str, &str)],
) -> String {
    let Some(reference) = study.methods.first() else {
        return String::new();
    };
    let value = |m: &str, seed: u64| -> Option<Vec<f64>> {
        found
            .iter()
            .find(|f| f.0.name == m && f.1 == seed)
            .and_then(|f| f.2.as_ref())
            .map(|v| row(v, columns))
    };
    let heads: Vec<String> = columns.iter().map(|c| format!("Δ {}", c.1)).collect();
    let mut md = format!(
        "\nPaired by seed, `method − {}` (mean ± sd over the seeds both finished):\n\n| method | pairs | {} |\n|---|---|{}\n",
        reference.name,
        heads.join(" | "),
        "---|".repeat(columns.len())
    );
    for m in &study.methods[1..] {
        let diffs: Vec<Vec<f64>> = study
            .seeds
            .iter()
            .filter_map(|&s| Some((value(&m.name, s)?, value(&reference.name, s)?)))
            .map(|(a, b)| a.iter().zip(&b).map(|(x, y)| x - y).collect())
            .collect();
        if diffs.is_empty() {
            continue;
        }
        let n = diffs.len() as f64;
        let cells: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(c, (name, _))| {
                let mean = diffs.iter().map(|d| d[c]).sum::<f64>() / n;
                let sd = if diffs.len() > 1 {
                    (diffs.iter().map(|d| (d[c] - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
                } else {
                    f64::NAN
                };
                match *name {
                    "test_accuracy" => format!("{:+.2} ± {:.2}", 100.0 * mean, 100.0 * sd),
                    "train_seconds" => format!("{mean:+.0}"),
                    _ => format!("{mean:+.4} ± {sd:.4}"),
                }
            })
            .collect();
        md += &format!("| {} | {} | {} |\n", m.name, diffs.len(), cells.join(" | "));
    }
    md
}
