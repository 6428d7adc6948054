//! `results.h5` (cargo feature `hdf5`): the run's arrays and metrics for h5py/pandas users.
//!
//! A run's `results.h5` layout: `/probs` [N, K] f32, `/labels` [N] u32, `/metrics/<name>` scalar f64 for every numeric
//! entry of `metrics.json`, `/history/<column>` [epochs] f64. Written to a temporary file and
//! renamed, like every other file of a run.
//!
//! The `results.h5` of `secateur report` ([`write_report`]) has one group per run:
//! `/<run>/<set>/{probs [N, K] f32, labels [N] u32, predictive_entropy [N] f32,
//! mutual_information [N] f32}` for the sets `test`, `ood` and `shift/<kind>/<severity>`, and
//! `/<run>/metrics/<name>` scalars (accuracy, nll, brier, ece, adaptive_ece, classwise_ece, aurc,
//! temperature, ood_auroc_<score>, …). A report of regression runs
//! ([`write_regression_report`]) has `/<run>/{mean, std, aleatoric_var, epistemic_var, pit,
//! targets}` [N] f64 and `/<run>/metrics/<name>` scalars (rmse, nll, mixture_nll, crps,
//! coverage_<level>, width_<level>).

use crate::error::{ExpError, Result};
use secateur_inference::predict::Predictions;
use secateur_inference::train::EpochRecord;
use serde_json::{Map, Value};
use std::path::Path;

fn h5err(path: &Path, e: hdf5::Error) -> ExpError {
    ExpError::io(path, std::io::Error::other(e.to_string()))
}

/// Writes `results.h5` at `path` atomically.
pub fn write_results(
    path: &Path,
    metrics: &Map<String, Value>,
    preds: &Predictions,
    history: &[EpochRecord],
) -> Result<()> {
    let tmp = path.with_file_name(format!(".results.h5.tmp-{}", std::process::id()));
    let res = write_into(&tmp, metrics, preds, history);
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(h5err(path, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| ExpError::io(path, e))
}

fn write_into(
    tmp: &Path,
    metrics: &Map<String, Value>,
    preds: &Predictions,
    history: &[EpochRecord],
) -> hdf5::Result<()> {
    let file = hdf5::File::create(tmp)?;
    let n = preds.labels.len();
    file.new_dataset::<f32>()
        .shape([n, preds.classes])
        .create("probs")?
        .write_raw(preds.probs.as_slice())?;
    file.new_dataset::<u32>()
        .shape([n])
        .create("labels")?
        .write_raw(preds.labels.as_slice())?;
    let g = file.create_group("metrics")?;
    for (k, v) in metrics {
        if let Some(x) = v.as_f64() {
            g.new_dataset::<f64>().create(k.as_str())?.write_scalar(&x)?;
        }
    }
    let h = file.create_group("history")?;
    let col = |f: &dyn Fn(&EpochRecord) -> f64| history.iter().map(f).collect::<Vec<f64>>();
    let nan = f64::NAN;
    let cols: Vec<(&str, Vec<f64>)> = vec![
        ("epoch", col(&|r| r.epoch as f64)),
        ("lr", col(&|r| r.lr)),
        ("train_loss", col(&|r| r.train_loss)),
        ("train_nll", col(&|r| r.train_nll)),
        ("train_divergence", col(&|r| r.train_divergence)),
        ("beta", col(&|r| r.beta)),
        ("train_accuracy", col(&|r| r.train_accuracy)),
        (
            "test_accuracy",
            col(&|r| r.eval.or(r.eval_mc).map_or(nan, |m| m.accuracy)),
        ),
        ("test_nll", col(&|r| r.eval.or(r.eval_mc).map_or(nan, |m| m.nll))),
        ("test_ece", col(&|r| r.eval.or(r.eval_mc).map_or(nan, |m| m.ece))),
    ];
    for (name, values) in cols {
        h.new_dataset::<f64>()
            .shape([values.len()])
            .create(name)?
            .write_raw(values.as_slice())?;
    }
    file.flush()?;
    Ok(())
}

/// Writes the arrays and metrics of a `secateur report` to `path` atomically (layout in the
/// [module docs](self)).
pub fn write_report(path: &Path, results: &[crate::comparison::RunResult]) -> Result<()> {
    let tmp = path.with_file_name(format!(".results.h5.tmp-{}", std::process::id()));
    let res = write_report_into(&tmp, results);
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(h5err(path, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| ExpError::io(path, e))
}

fn write_predictions(g: &hdf5::Group, p: &secateur_inference::predict::McPredictions) -> hdf5::Result<()> {
    let n = p.predictions.labels.len();
    g.new_dataset::<f32>()
        .shape([n, p.predictions.classes])
        .create("probs")?
        .write_raw(p.predictions.probs.as_slice())?;
    g.new_dataset::<u32>()
        .shape([n])
        .create("labels")?
        .write_raw(p.predictions.labels.as_slice())?;
    g.new_dataset::<f32>()
        .shape([n])
        .create("predictive_entropy")?
        .write_raw(p.predictive_entropy.as_slice())?;
    g.new_dataset::<f32>()
        .shape([n])
        .create("mutual_information")?
        .write_raw(p.mutual_information.as_slice())?;
    Ok(())
}

fn write_report_into(tmp: &Path, results: &[crate::comparison::RunResult]) -> hdf5::Result<()> {
    let file = hdf5::File::create(tmp)?;
    for r in results {
        let g = file.create_group(&r.label)?;
        write_predictions(&g.create_group("test")?, &r.test)?;
        if let Some(o) = &r.ood {
            write_predictions(&g.create_group("ood")?, o)?;
        }
        if !r.shifted.is_empty() {
            let sg = g.create_group("shift")?;
            for s in &r.shifted {
                let kg = match sg.group(s.shift.kind.name()) {
                    Ok(k) => k,
                    Err(_) => sg.create_group(s.shift.kind.name())?,
                };
                write_predictions(&kg.create_group(&s.shift.severity.to_string())?, &s.predictions)?;
            }
        }
        let m = g.create_group("metrics")?;
        let c = &r.calibration;
        let mut scalars = vec![
            ("accuracy".to_string(), c.metrics.accuracy),
            ("nll".into(), c.metrics.nll),
            ("brier".into(), c.metrics.brier),
            ("ece".into(), c.metrics.ece),
            ("mce".into(), c.metrics.mce),
            ("adaptive_ece".into(), c.adaptive_ece),
            ("classwise_ece".into(), c.classwise_ece),
            ("aurc".into(), c.aurc),
            ("temperature".into(), r.temperature.temperature),
            ("nll_after_t".into(), r.temperature.after.nll),
            ("ece_after_t".into(), r.temperature.after.ece),
        ];
        for (score, o) in &r.ood_metrics {
            if let Some(o) = o {
                scalars.push((format!("ood_auroc_{}", score.name()), o.auroc));
                scalars.push((format!("ood_fpr95_{}", score.name()), o.fpr_at_95_tpr));
            }
        }
        for (k, v) in scalars {
            m.new_dataset::<f64>().create(k.as_str())?.write_scalar(&v)?;
        }
    }
    file.flush()?;
    Ok(())
}

/// Writes the arrays and metrics of a `secateur report` of regression runs to `path` atomically
/// (layout in the [module docs](self)).
pub fn write_regression_report(path: &Path, results: &[crate::comparison::regression::RegressionResult]) -> Result<()> {
    let tmp = path.with_file_name(format!(".results.h5.tmp-{}", std::process::id()));
    let res = write_regression_into(&tmp, results);
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(h5err(path, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| ExpError::io(path, e))
}

fn write_regression_into(tmp: &Path, results: &[crate::comparison::regression::RegressionResult]) -> hdf5::Result<()> {
    let file = hdf5::File::create(tmp)?;
    for r in results {
        let g = file.create_group(&r.label)?;
        for (name, v) in r.per_target.columns() {
            g.new_dataset::<f64>()
                .shape([v.len()])
                .create(name)?
                .write_raw(v.as_slice())?;
        }
        let m = g.create_group("metrics")?;
        let mut scalars = vec![
            ("rmse".to_string(), r.metrics.rmse),
            ("nll".into(), r.metrics.nll),
            ("mixture_nll".into(), r.metrics.mixture_nll),
            ("crps".into(), r.crps),
        ];
        for c in &r.coverage {
            scalars.push((format!("coverage_{}", c.level), c.coverage));
            scalars.push((format!("width_{}", c.level), c.mean_width));
        }
        for (k, v) in scalars {
            m.new_dataset::<f64>().create(k.as_str())?.write_scalar(&v)?;
        }
    }
    file.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_round_trip_through_hdf5() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| ExpError::io("tempdir", e))?;
        let path = dir.path().join("results.h5");
        let preds = Predictions {
            probs: vec![0.25, 0.75, 0.9, 0.1],
            labels: vec![1, 0],
            classes: 2,
        };
        let mut m = Map::new();
        m.insert("test_accuracy".into(), 1.0.into());
        m.insert("arch".into(), "mlp".into());
        write_results(&path, &m, &preds, &[])?;
        let f = hdf5::File::open(&path).map_err(|e| h5err(&path, e))?;
        let probs: Vec<f32> = f
            .dataset("probs")
            .and_then(|d| d.read_raw())
            .map_err(|e| h5err(&path, e))?;
        assert_eq!(probs, preds.probs);
        let shape = f.dataset("probs").map_err(|e| h5err(&path, e))?.shape();
        assert_eq!(shape, vec![2, 2]);
        let acc: f64 = f
            .dataset("metrics/test_accuracy")
            .and_then(|d| d.read_scalar())
            .map_err(|e| h5err(&path, e))?;
        assert_eq!(acc, 1.0);
        Ok(())
    }

    /// The report's layout: a run's test probabilities, its OOD set, a shifted set and its
    /// metrics read back as written.
    #[test]
    fn report_round_trips_through_hdf5() -> Result<()> {
        use crate::comparison::{ood_by_score, Calibration, RunResult, ShiftedResult, Temperature};
        use crate::data::shift::{Shift, ShiftKind};
        use secateur_inference::predict::McPredictions;
        let dir = tempfile::tempdir().map_err(|e| ExpError::io("tempdir", e))?;
        let path = dir.path().join("results.h5");
        let draws = vec![
            vec![0.9f32, 0.1, 0.3, 0.7, 0.6, 0.4],
            vec![0.7, 0.3, 0.2, 0.8, 0.5, 0.5],
        ];
        let test = McPredictions::from_draws(&draws, vec![0, 1, 1], 2)?;
        let ood = McPredictions::from_draws(&[vec![0.5f32, 0.5, 0.6, 0.4], vec![0.4, 0.6, 0.5, 0.5]], vec![0, 0], 2)?;
        let calibration = Calibration::of(&test.predictions, &test.predictive_entropy)?;
        let run = RunResult {
            label: "r".into(),
            path: "r".into(),
            description: String::new(),
            temperature: Temperature::fit(&test.predictions, &test.predictions)?,
            temperature_split: String::new(),
            ood_metrics: ood_by_score(&test, &ood)?,
            shifted: vec![ShiftedResult {
                shift: Shift {
                    kind: ShiftKind::Contrast,
                    severity: 3,
                },
                predictions: test.clone(),
                metrics: calibration.metrics,
            }],
            ood: Some(ood),
            calibration,
            test,
        };
        write_report(&path, std::slice::from_ref(&run))?;
        let f = hdf5::File::open(&path).map_err(|e| h5err(&path, e))?;
        let read = |name: &str| -> Result<Vec<f32>> {
            f.dataset(name).and_then(|d| d.read_raw()).map_err(|e| h5err(&path, e))
        };
        assert_eq!(read("r/test/probs")?, run.test.predictions.probs);
        assert_eq!(
            read("r/ood/predictive_entropy")?,
            run.ood
                .as_ref()
                .map(|o| o.predictive_entropy.clone())
                .unwrap_or_default()
        );
        assert_eq!(
            read("r/shift/contrast/3/mutual_information")?,
            run.test.mutual_information
        );
        let acc: f64 = f
            .dataset("r/metrics/accuracy")
            .and_then(|d| d.read_scalar())
            .map_err(|e| h5err(&path, e))?;
        assert_eq!(acc, run.calibration.metrics.accuracy);
        Ok(())
    }

    /// The regression report's layout: a run's arrays and its CRPS and coverage read back.
    #[test]
    fn regression_report_round_trips() -> Result<()> {
        use crate::comparison::regression::{PerTarget, RegressionResult};
        use secateur_inference::metrics::regression_metrics;
        use secateur_inference::predict::RegressionPredictions;
        use secateur_inference::regression_calibration::IntervalCoverage;
        let dir = tempfile::tempdir().map_err(|e| ExpError::io("tempdir", e))?;
        let path = dir.path().join("results.h5");
        let predictions = RegressionPredictions {
            sample_mean: vec![0.0, 1.0],
            sample_std: vec![1.0, 2.0],
            targets: vec![0.5, 0.0],
            samples: 1,
            dim: 1,
        };
        let r = RegressionResult {
            label: "det".into(),
            path: dir.path().to_path_buf(),
            description: String::new(),
            metrics: regression_metrics(&predictions)?,
            predictions,
            crps: 0.25,
            coverage: vec![IntervalCoverage {
                level: 0.9,
                coverage: 1.0,
                mean_width: 4.9,
            }],
            per_target: PerTarget {
                mean: vec![0.0, 1.0],
                std: vec![1.0, 2.0],
                aleatoric: vec![1.0, 4.0],
                epistemic: vec![0.0, 0.0],
                pit: vec![0.69, 0.31],
                targets: vec![0.5, 0.0],
            },
        };
        write_regression_report(&path, std::slice::from_ref(&r))?;
        let f = hdf5::File::open(&path).map_err(|e| h5err(&path, e))?;
        let read =
            |k: &str| -> Result<Vec<f64>> { f.dataset(k).and_then(|d| d.read_raw()).map_err(|e| h5err(&path, e)) };
        assert_eq!(read("det/std")?, r.per_target.std);
        assert_eq!(read("det/pit")?, r.per_target.pit);
        let scalar =
            |k: &str| -> Result<f64> { f.dataset(k).and_then(|d| d.read_scalar()).map_err(|e| h5err(&path, e)) };
        assert_eq!(scalar("det/metrics/crps")?, 0.25);
        assert_eq!(scalar("det/metrics/width_0.9")?, 4.9);
        Ok(())
    }
}
