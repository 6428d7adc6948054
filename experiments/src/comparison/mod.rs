//! `secateur report RUN... --out DIR`: one calibration and uncertainty report comparing finished
//! classification runs — deterministic, every Bayesian layer kind, every `[posterior]` — or
//! finished regression runs ([`regression`]: CRPS, the calibration curve of central intervals,
//! their widths, PIT histograms). The runs of one report are all of one kind.
//!
//! For each run it predicts, with the run's own predictive ([`LoadedRun::predict`]), the test
//! set, an out-of-distribution set and seeded shifted copies of the test set, and measures:
//!
//! - accuracy, NLL, Brier score and its decomposition (Murphy 1973), ECE over 15 equal-width
//!   bins, adaptive ECE (Nixon et al. 2019), class-wise ECE (Kull et al. 2019), MCE;
//! - temperature scaling (Guo et al. 2017): `T` fitted by NLL on the run's validation split if
//!   it has one (`data.val_fraction > 0`), evaluated on the whole test set; otherwise fitted on
//!   a seeded half of the test set and evaluated on the other half (the same halves for every
//!   run). NLL and ECE before and after on the evaluation split;
//! - selective prediction: the accuracy–coverage curve and AURC, ranking by predictive entropy;
//! - out-of-distribution detection by `1 − max p`, predictive entropy and mutual information:
//!   AUROC, AUPR-in, AUPR-out and FPR at 95% TPR;
//! - accuracy and ECE under rotation, Gaussian noise and contrast shifts at severities 1–5
//!   (`secateur_datasets::shift`; Ovadia et al. 2019).
//!
//! The out-of-distribution set is `--ood`, else the first run's `data.ood`, else `uci-digits`
//! for the Fashion-MNIST and MNIST data sets. The shifted sets and the temperature halves are
//! drawn from [`SeedStream::Report`] of the report's `--seed` and are shared by all runs, so the
//! runs are compared on the same examples. The runs must share their data set.
//!
//! Written to `--out`: `report.md` with `figures/*.png`, `report.html` (self-contained, figures
//! embedded), `metrics.csv` (one row per run), `arrays/<run>.safetensors` (every prediction the
//! report used) and, with the `hdf5` feature, `results.h5`. An existing report is replaced only
//! with `--force`; every file is written atomically.

mod document;
mod figures;
mod measure;
pub mod regression;

pub use document::{base64, escape, html, markdown, Block};
pub use figures::{panels_png, Line, Panel};
pub use measure::{ood_by_score, Calibration, OodScore, Temperature};

use crate::atomic;
use crate::commands::LoadedRun;
use crate::data::shift::{apply_shift, Shift, ShiftKind};
use crate::data::ImageSet;
use crate::error::{ExpError, Result};
use crate::seed_stream::SeedStream;
use candle_core::{Device, Tensor};
use secateur_inference::metrics::{classification_metrics, ClassificationMetrics};
use secateur_inference::ood::OodMetrics;
use secateur_inference::predict::McPredictions;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Options of `secateur report`.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// The run directories compared.
    pub runs: Vec<PathBuf>,
    /// The report's directory.
    pub out: PathBuf,
    /// Data directory searched first.
    pub data_dir: Option<PathBuf>,
    /// Device name (`cpu`, `cuda`).
    pub device: String,
    /// The out-of-distribution data set; `None`: see the [module docs](self).
    pub ood: Option<String>,
    /// The shift kinds drawn.
    pub shifts: Vec<ShiftKind>,
    /// Their severities (1–5).
    pub severities: Vec<u8>,
    /// The seed of the shifted sets and the temperature halves.
    pub seed: u64,
    /// Replace an existing report.
    pub force: bool,
    /// No progress bar.
    pub quiet: bool,
}

/// The test set under one shift, as one run predicts it.
#[derive(Debug, Clone)]
pub struct ShiftedResult {
    /// The shift.
    pub shift: Shift,
    /// The run's predictive on the shifted test set.
    pub predictions: McPredictions,
    /// Its metrics.
    pub metrics: ClassificationMetrics,
}

/// Everything the report measured of one run.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The run's name in the report (its directory's name, made unique).
    pub label: String,
    /// The run directory.
    pub path: PathBuf,
    /// Architecture, layers and posterior, for the table.
    pub description: String,
    /// The run's predictive on the test set.
    pub test: McPredictions,
    /// Its calibration.
    pub calibration: Calibration,
    /// Temperature scaling.
    pub temperature: Temperature,
    /// Where `T` was fitted and evaluated.
    pub temperature_split: String,
    /// The predictive on the out-of-distribution set.
    pub ood: Option<McPredictions>,
    /// Out-of-distribution detection by each score.
    pub ood_metrics: Vec<(OodScore, Option<OodMetrics>)>,
    /// The shifted test sets.
    pub shifted: Vec<ShiftedResult>,
}

/// The file that marks a report directory.
pub const REPORT_FILE: &str = "report.md";

fn run_error(path: &Path, message: impl Into<String>) -> ExpError {
    ExpError::Run {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The default out-of-distribution set of a data set, if it has one.
fn default_ood(data: &str) -> Option<&'static str> {
    (data.starts_with("fashion-mnist") || data.starts_with("mnist")).then_some("uci-digits")
}

/// Unique labels from the runs' directory names (`name`, `name-2`, …).
fn labels(runs: &[PathBuf]) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    runs.iter()
        .map(|p| {
            let base = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string());
            let n = seen.entry(base.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                base
            } else {
                format!("{base}-{n}")
            }
        })
        .collect()
}

/// Checks the options before anything is loaded.
fn validate(opts: &ReportOptions) -> Result<()> {
    if opts.runs.is_empty() {
        return Err(ExpError::config("report", "give at least one run directory"));
    }
    if let Some(s) = opts.severities.iter().find(|s| !(1..=5).contains(*s)) {
        return Err(ExpError::config(
            "--severities",
            format!("severity {s} is not in 1..=5"),
        ));
    }
    if opts.out.join(REPORT_FILE).exists() && !opts.force {
        return Err(run_error(
            &opts.out,
            format!("already holds a report ({REPORT_FILE}); pass --force to replace it"),
        ));
    }
    Ok(())
}

/// What a report measured: classification or regression runs.
#[derive(Debug, Clone)]
pub enum Measured {
    /// Classification runs.
    Classification(Vec<RunResult>),
    /// Regression runs.
    Regression(Vec<regression::RegressionResult>),
}

/// Whether the run (or the prune of a run) in `path` is a regression run.
fn is_regression(path: &Path) -> Result<bool> {
    if crate::commands::pruned_run(path)?.is_some() {
        return Ok(false);
    }
    let run = crate::store::RunDir::open(path)?;
    let cfg = crate::config::StudyConfig::from_file(&run.file("config.toml"), &[])?;
    Ok(cfg.likelihood.is_regression())
}

/// Measures every run and writes the report (of classification or of regression runs, by the
/// kind of the first run; every run must be of that kind); returns what was measured.
pub fn report(opts: &ReportOptions) -> Result<Measured> {
    validate(opts)?;
    let mut kinds = Vec::with_capacity(opts.runs.len());
    for p in &opts.runs {
        kinds.push(is_regression(p)?);
    }
    if let Some(i) = kinds.iter().position(|k| *k != kinds[0]) {
        let what = |r: bool| if r { "a regression run" } else { "a classification run" };
        return Err(run_error(
            &opts.runs[i],
            format!(
                "is {} but {} is {}: a report compares runs of one kind",
                what(kinds[i]),
                opts.runs[0].display(),
                what(kinds[0])
            ),
        ));
    }
    if kinds[0] {
        report_regression(opts).map(Measured::Regression)
    } else {
        report_classification(opts).map(Measured::Classification)
    }
}

/// The report of regression runs ([`regression`]).
fn report_regression(opts: &ReportOptions) -> Result<Vec<regression::RegressionResult>> {
    let labels = labels(&opts.runs);
    let progress = crate::observe::counting_bar("runs", opts.runs.len() as u64, opts.quiet);
    let mut results = Vec::with_capacity(opts.runs.len());
    let mut data_name: Option<String> = None;
    for (label, path) in labels.iter().zip(&opts.runs) {
        progress.set_message(format!("{label}: test rows"));
        let r = regression::measure(label, path, opts.data_dir.as_deref(), &opts.device)?;
        let cfg = crate::config::StudyConfig::from_file(&path.join("config.toml"), &[])?;
        match &data_name {
            Some(d) if *d != cfg.data.name => {
                return Err(run_error(
                    path,
                    format!(
                        "uses data set `{}` but {} uses `{d}`: a report compares runs on one data set",
                        cfg.data.name,
                        opts.runs[0].display()
                    ),
                ))
            }
            Some(_) => {}
            None => data_name = Some(cfg.data.name.clone()),
        }
        progress.inc(1);
        results.push(r);
    }
    progress.finish_and_clear();
    let data = data_name.unwrap_or_default();
    let blocks = regression::blocks(&data, &results)?;
    let mut arrays = Vec::with_capacity(results.len());
    for r in &results {
        arrays.push((r.label.clone(), regression::arrays(r)?));
    }
    write_document(
        opts,
        &data,
        &blocks,
        &regression::metrics_csv(&results),
        &arrays,
        |_path| {
            #[cfg(feature = "hdf5")]
            crate::h5::write_regression_report(_path, &results)?;
            Ok(())
        },
    )?;
    Ok(results)
}

/// The report of classification runs.
fn report_classification(opts: &ReportOptions) -> Result<Vec<RunResult>> {
    let labels = labels(&opts.runs);
    // load every run first, so that a bad one fails before any prediction
    let mut loaded = Vec::with_capacity(opts.runs.len());
    for p in &opts.runs {
        loaded.push(LoadedRun::open(p, opts.data_dir.as_deref(), &opts.device)?);
    }
    let data_name = loaded[0].cfg.data.name.clone();
    if let Some((i, r)) = loaded.iter().enumerate().find(|(_, r)| r.cfg.data.name != data_name) {
        return Err(run_error(
            &opts.runs[i],
            format!(
                "uses data set `{}` but {} uses `{data_name}`: a report compares runs on one data set",
                r.cfg.data.name,
                opts.runs[0].display()
            ),
        ));
    }
    let ood_name = opts
        .ood
        .clone()
        .or_else(|| loaded[0].cfg.data.ood.clone())
        .or_else(|| default_ood(&data_name).map(str::to_string));
    let ood_set = match &ood_name {
        Some(name) => Some(crate::data::load_images(name, opts.data_dir.as_deref())?.test),
        None => None,
    };
    let test = &loaded[0].data.test;
    let mut rng = SeedStream::Report.rng(opts.seed);
    let mut shifted_sets: Vec<(Shift, ImageSet)> = Vec::new();
    for &kind in &opts.shifts {
        for &severity in &opts.severities {
            let shift = Shift { kind, severity };
            shifted_sets.push((shift, apply_shift(test, shift, &mut rng)?));
        }
    }
    let (fit_half, eval_half) = crate::data::split_indices(test.len(), 0.5, &mut rng)?;
    let per_run = 1 + u64::from(ood_set.is_some()) + shifted_sets.len() as u64;
    let progress = crate::observe::counting_bar("predicting", per_run * loaded.len() as u64, opts.quiet);
    let mut results = Vec::with_capacity(loaded.len());
    for ((run, label), path) in loaded.iter().zip(&labels).zip(&opts.runs) {
        progress.set_message(format!("{label}: test set"));
        let mc = run.predict(&run.data.test)?;
        progress.inc(1);
        let calibration = Calibration::of(&mc.predictions, &mc.predictive_entropy)?;
        let (temperature, temperature_split) = match &run.val_set {
            Some(val) => {
                let v = run.predict(val)?;
                (
                    Temperature::fit(&v.predictions, &mc.predictions)?,
                    format!(
                        "fitted on the validation split ({} images), evaluated on the test set",
                        val.len()
                    ),
                )
            }
            None => (
                Temperature::fit(
                    &measure::select(&mc.predictions, &fit_half),
                    &measure::select(&mc.predictions, &eval_half),
                )?,
                format!(
                    "fitted on a seeded half of the test set ({} images), evaluated on the other half ({})",
                    fit_half.len(),
                    eval_half.len()
                ),
            ),
        };
        let (ood, ood_metrics) = match &ood_set {
            Some(set) => {
                progress.set_message(format!("{label}: {}", set.name));
                let o = run.predict(set)?;
                progress.inc(1);
                let m = ood_by_score(&mc, &o)?;
                (Some(o), m)
            }
            None => (None, Vec::new()),
        };
        let mut shifted = Vec::with_capacity(shifted_sets.len());
        for (shift, set) in &shifted_sets {
            progress.set_message(format!("{label}: {}-{}", shift.kind.name(), shift.severity));
            let predictions = run.predict(set)?;
            progress.inc(1);
            let p = &predictions.predictions;
            let metrics = classification_metrics(&p.probs, &p.labels, p.classes)?;
            shifted.push(ShiftedResult {
                shift: *shift,
                predictions,
                metrics,
            });
        }
        let cfg = &run.cfg;
        let posterior = if cfg.posterior.kind.is_empty() || cfg.posterior.kind == "none" {
            String::new()
        } else {
            format!(", posterior {}", cfg.posterior.kind)
        };
        let pruned = match &run.pruned {
            Some(p) => format!(
                ", pruned by {} to {:.1}% sparsity (no fine-tune)",
                p.criterion,
                100.0 * p.sparsity
            ),
            None => String::new(),
        };
        results.push(RunResult {
            label: label.clone(),
            path: path.clone(),
            description: format!(
                "{} ({} layers{posterior}), seed {}{pruned}",
                cfg.model.arch, cfg.model.layers, cfg.seed
            ),
            test: mc,
            calibration,
            temperature,
            temperature_split,
            ood,
            ood_metrics,
            shifted,
        });
    }
    progress.finish_and_clear();
    write(opts, &data_name, ood_name.as_deref(), &results)?;
    Ok(results)
}

fn f4(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "—".into()
    }
}

/// The report's blocks: tables and figures.
fn blocks(data: &str, ood_name: Option<&str>, results: &[RunResult]) -> Result<Vec<Block>> {
    let mut b = vec![
        Block::Heading(1, format!("Calibration and uncertainty on {data}")),
        Block::Paragraph(format!(
            "{} runs compared on the test set of {data}{}. Each run predicts with its own predictive (its posterior, Monte Carlo over its weight distribution, or one pass).",
            results.len(),
            ood_name.map(|o| format!(", with {o} as the out-of-distribution set")).unwrap_or_default()
        )),
        Block::Heading(2, "Runs".into()),
        Block::Table(
            vec!["run".into(), "model".into(), "draws".into(), "directory".into()],
            results
                .iter()
                .map(|r| vec![r.label.clone(), r.description.clone(), r.test.samples.to_string(), r.path.display().to_string()])
                .collect(),
        ),
        Block::Heading(2, "Calibration on the test set".into()),
        Block::Paragraph("ECE: 15 equal-width bins; adaptive ECE: 15 equal-mass bins; class-wise ECE: mean over classes. Brier decomposition (Murphy 1973) over the cells of the predicted class, as TensorFlow Probability computes it: Brier = uncertainty − resolution + reliability + a within-cell covariance term, which vanishes only when the forecast is constant within each cell (see `secateur_inference::calibration::brier_decomposition`). AURC: area under the risk–coverage curve, ranking by predictive entropy (lower is better).".into()),
        Block::Table(
            ["run", "accuracy", "NLL", "Brier", "reliability", "resolution", "uncertainty", "ECE", "adaptive ECE", "class-wise ECE", "MCE", "AURC"]
                .map(String::from)
                .to_vec(),
            results
                .iter()
                .map(|r| {
                    let c = &r.calibration;
                    let m = &c.metrics;
                    vec![
                        r.label.clone(),
                        f4(m.accuracy),
                        f4(m.nll),
                        f4(m.brier),
                        f4(c.brier.reliability),
                        f4(c.brier.resolution),
                        f4(c.brier.uncertainty),
                        f4(m.ece),
                        f4(c.adaptive_ece),
                        f4(c.classwise_ece),
                        f4(m.mce),
                        f4(c.aurc),
                    ]
                })
                .collect(),
        ),
        Block::Heading(2, "Temperature scaling".into()),
        Block::Table(
            ["run", "T", "NLL before", "NLL after", "ECE before", "ECE after", "split"]
                .map(String::from)
                .to_vec(),
            results
                .iter()
                .map(|r| {
                    let t = &r.temperature;
                    vec![
                        r.label.clone(),
                        f4(t.temperature),
                        f4(t.before.nll),
                        f4(t.after.nll),
                        f4(t.before.ece),
                        f4(t.after.ece),
                        r.temperature_split.clone(),
                    ]
                })
                .collect(),
        ),
    ];
    let classes = results.first().map_or(0, |r| r.test.predictions.classes);
    let mut header = vec!["run".to_string()];
    header.extend((0..classes).map(|k| format!("class {k}")));
    let per_class = |f: &dyn Fn(&Calibration) -> &Vec<f64>| -> Vec<Vec<String>> {
        results
            .iter()
            .map(|r| {
                let mut row = vec![r.label.clone()];
                row.extend(f(&r.calibration).iter().map(|&v| f4(v)));
                row
            })
            .collect()
    };
    b.push(Block::Heading(2, "Per class".into()));
    b.push(Block::Paragraph("Accuracy on each class's test images, and the calibration error of each class's probability one-vs-rest (15 equal-width bins; their mean is the class-wise ECE).".into()));
    b.push(Block::Heading(3, "Accuracy".into()));
    b.push(Block::Table(header.clone(), per_class(&|c| &c.class_accuracy)));
    b.push(Block::Heading(3, "Calibration error".into()));
    b.push(Block::Table(header, per_class(&|c| &c.class_calibration)));
    let figure = |file: &str, caption: String, png: Vec<u8>| Block::Figure {
        file: file.into(),
        caption,
        png,
    };
    b.push(figure(
        "reliability.png",
        "Reliability diagrams: accuracy against mean confidence per bin; the dashed diagonal is perfect calibration."
            .into(),
        panels_png(
            "reliability.png",
            &[figures::reliability(results)?, figures::confidence(results)],
            2,
        )?,
    ));
    b.push(figure(
        "coverage.png",
        "Accuracy of the examples kept when the most uncertain (highest predictive entropy) are rejected first.".into(),
        panels_png("coverage.png", &[figures::coverage(results)?], 1)?,
    ));
    if let Some(o) = ood_name {
        b.push(Block::Heading(2, format!("Out of distribution: {o}")));
        b.push(Block::Paragraph(
            "Scores where higher means out of distribution: 1 − max p, predictive entropy, mutual information (— for a one-pass predictive, whose mutual information is zero). AUPR-in takes the test set as positive, AUPR-out the out-of-distribution set; FPR at 95% TPR: the fraction of out-of-distribution images kept at the threshold that keeps 95% of the test set.".into(),
        ));
        let mut rows = Vec::new();
        for r in results {
            for (s, m) in &r.ood_metrics {
                let cells = match m {
                    Some(m) => vec![f4(m.auroc), f4(m.aupr_in), f4(m.aupr_out), f4(m.fpr_at_95_tpr)],
                    None => vec!["—".into(); 4],
                };
                let mut row = vec![r.label.clone(), s.name().to_string()];
                row.extend(cells);
                rows.push(row);
            }
        }
        b.push(Block::Table(
            ["run", "score", "AUROC", "AUPR-in", "AUPR-out", "FPR@95TPR"]
                .map(String::from)
                .to_vec(),
            rows,
        ));
        let mut panels = vec![figures::roc(results, o)?];
        panels.extend(figures::entropy(results, o));
        b.push(figure(
            "ood.png",
            format!("ROC curves (predictive entropy) and entropy histograms: test set (solid) against {o} (dashed)."),
            panels_png("ood.png", &panels, 3)?,
        ));
    }
    if results.first().is_some_and(|r| !r.shifted.is_empty()) {
        b.push(Block::Heading(2, "Under shift".into()));
        let first = &results[0];
        let mut header = vec!["run".to_string(), "clean".to_string()];
        header.extend(
            first
                .shifted
                .iter()
                .map(|s| format!("{}-{}", s.shift.kind.name(), s.shift.severity)),
        );
        let table = |acc: bool| -> Vec<Vec<String>> {
            results
                .iter()
                .map(|r| {
                    let m = &r.calibration.metrics;
                    let mut row = vec![r.label.clone(), f4(if acc { m.accuracy } else { m.ece })];
                    row.extend(
                        r.shifted
                            .iter()
                            .map(|s| f4(if acc { s.metrics.accuracy } else { s.metrics.ece })),
                    );
                    row
                })
                .collect()
        };
        let described: Vec<String> = {
            let mut kinds: Vec<ShiftKind> = first.shifted.iter().map(|s| s.shift.kind).collect();
            kinds.dedup();
            kinds
                .iter()
                .filter_map(|k| k.describe(5).ok().map(|d| format!("{} (severity 5: {d})", k.name())))
                .collect()
        };
        b.push(Block::Paragraph(format!(
            "Seeded shifted copies of the test set, the same for every run: {}.",
            described.join("; ")
        )));
        b.push(Block::Heading(3, "Accuracy".into()));
        b.push(Block::Table(header.clone(), table(true)));
        b.push(Block::Heading(3, "ECE".into()));
        b.push(Block::Table(header, table(false)));
        let panels = figures::shift(results);
        let cols = panels.len().div_ceil(2);
        b.push(figure(
            "shift.png",
            "Accuracy (top) and ECE (bottom) against the severity of each shift.".into(),
            panels_png("shift.png", &panels, cols)?,
        ));
    }
    Ok(b)
}

/// `metrics.csv`: one row per run.
fn metrics_csv(results: &[RunResult]) -> String {
    let mut header = vec![
        "run",
        "accuracy",
        "nll",
        "brier",
        "brier_reliability",
        "brier_resolution",
        "brier_uncertainty",
        "ece",
        "adaptive_ece",
        "classwise_ece",
        "mce",
        "aurc",
        "temperature",
        "nll_before_t",
        "nll_after_t",
        "ece_before_t",
        "ece_after_t",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    if let Some(r) = results.first() {
        for k in 0..r.calibration.class_accuracy.len() {
            header.push(format!("accuracy_class_{k}"));
            header.push(format!("calibration_class_{k}"));
        }
        for (s, _) in &r.ood_metrics {
            for m in ["auroc", "aupr_in", "aupr_out", "fpr95"] {
                header.push(format!("ood_{m}_{}", s.name()));
            }
        }
        for s in &r.shifted {
            header.push(format!("accuracy_{}_{}", s.shift.kind.name(), s.shift.severity));
            header.push(format!("ece_{}_{}", s.shift.kind.name(), s.shift.severity));
        }
    }
    let mut out = header.join(",") + "\n";
    for r in results {
        let c = &r.calibration;
        let m = &c.metrics;
        let t = &r.temperature;
        let mut row: Vec<String> = vec![r.label.replace(',', ";")];
        row.extend(
            [
                m.accuracy,
                m.nll,
                m.brier,
                c.brier.reliability,
                c.brier.resolution,
                c.brier.uncertainty,
                m.ece,
                c.adaptive_ece,
                c.classwise_ece,
                m.mce,
                c.aurc,
                t.temperature,
                t.before.nll,
                t.after.nll,
                t.before.ece,
                t.after.ece,
            ]
            .iter()
            .map(|x| x.to_string()),
        );
        for (a, e) in c.class_accuracy.iter().zip(&c.class_calibration) {
            row.push(a.to_string());
            row.push(e.to_string());
        }
        for (_, o) in &r.ood_metrics {
            match o {
                Some(o) => row.extend(
                    [o.auroc, o.aupr_in, o.aupr_out, o.fpr_at_95_tpr]
                        .iter()
                        .map(|x| x.to_string()),
                ),
                None => row.extend(std::iter::repeat_n(String::new(), 4)),
            }
        }
        for s in &r.shifted {
            row.push(s.metrics.accuracy.to_string());
            row.push(s.metrics.ece.to_string());
        }
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// The arrays of one run: every prediction the report used.
fn arrays(r: &RunResult) -> Result<Vec<(String, Tensor)>> {
    let dev = Device::Cpu;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut put = |prefix: &str, p: &McPredictions| -> Result<()> {
        let n = p.predictions.labels.len();
        let k = p.predictions.classes;
        tensors.push((
            format!("{prefix}.probs"),
            Tensor::from_vec(p.predictions.probs.clone(), (n, k), &dev)?,
        ));
        tensors.push((
            format!("{prefix}.labels"),
            Tensor::from_vec(p.predictions.labels.clone(), n, &dev)?,
        ));
        tensors.push((
            format!("{prefix}.predictive_entropy"),
            Tensor::from_vec(p.predictive_entropy.clone(), n, &dev)?,
        ));
        tensors.push((
            format!("{prefix}.mutual_information"),
            Tensor::from_vec(p.mutual_information.clone(), n, &dev)?,
        ));
        Ok(())
    };
    put("test", &r.test)?;
    if let Some(o) = &r.ood {
        put("ood", o)?;
    }
    for s in &r.shifted {
        put(
            &format!("shift.{}.{}", s.shift.kind.name(), s.shift.severity),
            &s.predictions,
        )?;
    }
    Ok(tensors)
}

fn write(opts: &ReportOptions, data: &str, ood_name: Option<&str>, results: &[RunResult]) -> Result<()> {
    let blocks = blocks(data, ood_name, results)?;
    let mut all = Vec::with_capacity(results.len());
    for r in results {
        all.push((r.label.clone(), arrays(r)?));
    }
    write_document(opts, data, &blocks, &metrics_csv(results), &all, |_path| {
        #[cfg(feature = "hdf5")]
        crate::h5::write_report(_path, results)?;
        Ok(())
    })
}

/// Writes a report's files into `--out`: `figures/` from the blocks' figures, `arrays/<run>` from
/// `arrays`, `metrics.csv`, `results.h5` (by `h5`, given its path), `report.html`, and
/// `report.md` last (it marks a finished report). The figures and arrays of a report replaced
/// with `--force` are removed first.
fn write_document(
    opts: &ReportOptions,
    data: &str,
    blocks: &[Block],
    csv: &str,
    arrays: &[(String, Vec<(String, Tensor)>)],
    h5: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let out = &opts.out;
    // a replaced report (--force) keeps nothing of the old one's figures and arrays
    for d in [out.join("figures"), out.join("arrays")] {
        if d.exists() {
            std::fs::remove_dir_all(&d).map_err(|e| ExpError::io(&d, e))?;
        }
    }
    for d in [out.clone(), out.join("figures"), out.join("arrays")] {
        std::fs::create_dir_all(&d).map_err(|e| ExpError::io(&d, e))?;
    }
    for b in blocks {
        if let Block::Figure { file, png, .. } = b {
            atomic::write_bytes(&out.join("figures").join(file), png)?;
        }
    }
    for (label, tensors) in arrays {
        let path = out.join("arrays").join(format!("{label}.safetensors"));
        atomic::write_safetensors(&path, tensors.iter().map(|(k, v)| (k, v)))?;
    }
    atomic::write_string(&out.join("metrics.csv"), csv)?;
    h5(&out.join("results.h5"))?;
    atomic::write_string(
        &out.join("report.html"),
        &html(&format!("secateur report: {data}"), blocks),
    )?;
    // report.md last: it marks a finished report
    atomic::write_string(&out.join(REPORT_FILE), &markdown(blocks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique() {
        let l = labels(&["a/run".into(), "b/run".into(), "c/other".into(), "d/run".into()]);
        assert_eq!(l, ["run", "run-2", "other", "run-3"]);
    }

    #[test]
    fn default_ood_of_image_sets() {
        assert_eq!(default_ood("fashion-mnist-mini"), Some("uci-digits"));
        assert_eq!(default_ood("cifar10"), None);
    }
}
