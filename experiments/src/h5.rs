//! `results.h5` (cargo feature `hdf5`): the run's arrays and metrics for h5py/pandas users.
//!
//! Layout: `/probs` [N, K] f32, `/labels` [N] u32, `/metrics/<name>` scalar f64 for every numeric
//! entry of `metrics.json`, `/history/<column>` [epochs] f64. Written to a temporary file and
//! renamed, like every other file of a run.

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
        ("test_accuracy", col(&|r| r.eval.map_or(nan, |m| m.accuracy))),
        ("test_nll", col(&|r| r.eval.map_or(nan, |m| m.nll))),
        ("test_ece", col(&|r| r.eval.map_or(nan, |m| m.ece))),
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
}
