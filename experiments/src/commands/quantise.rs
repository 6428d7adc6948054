//! `secateur quantise`: post-training int8 weights of a finished run (per output channel,
//! symmetric, weight-only: [`secateur_pruning::quantise`]), evaluated on the test set against
//! the f32 network.
//!
//! The output directory is a run that `eval`, `report` and `compact` load like any other: its
//! `weights.safetensors` holds the dequantised weights `Ŵ = s_o · q` (f32, so that every
//! command reads it; what int8 weights with floating-point accumulation compute), beside
//! `weights.int8.safetensors`, the deployable file: each weight layer as `{name}` in int8
//! (safetensors dtype `I8`, readable by `safetensors`/PyTorch/NumPy) with `{name}.scale` (f32,
//! one per output channel), and every other tensor in f32. `quantise.md` and
//! [`QUANTISE_SUMMARY`] give size on disk, test accuracy, NLL and ECE, and CPU latency, f32
//! against int8.
//!
//! **Latency.** The network runs on the dequantised f32 weights, so its latency is the f32
//! network's: no int8 kernel is used (a weight-only int8 matrix product would save memory
//! traffic at batch 1, not arithmetic). Both are measured and reported so that the table says
//! so rather than assumes it.

use super::compact::{cpu_model, latencies, FinishedClassifier, Latency};
use super::setup::{build_model, geometry};
use crate::atomic;
use crate::error::{ExpError, Result};
use crate::store::RunDir;
use candle_core::{DType, Tensor};
use secateur_pruning::quantise::QuantisedWeights;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The summary file of a quantisation, in its output directory.
pub const QUANTISE_SUMMARY: &str = "quantise.json";

/// The int8 weights file of a quantised run.
pub const INT8_WEIGHTS: &str = "weights.int8.safetensors";

/// What `quantise` is asked to do.
#[derive(Debug, Clone)]
pub struct QuantiseOptions {
    /// A finished deterministic classification run (a compacted one too).
    pub run: PathBuf,
    /// The output run directory (new or empty).
    pub out: PathBuf,
    /// Data directory searched first.
    pub data_dir: Option<PathBuf>,
    /// Timed forward passes at batch 128 (five times as many at batch 1); 0: no timing.
    pub latency_reps: usize,
}

/// One network's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantisedCost {
    /// Size of the weights file on disk, bytes.
    pub file_bytes: u64,
    /// Test accuracy.
    pub test_accuracy: f64,
    /// Test negative log-likelihood.
    pub test_nll: f64,
    /// Test expected calibration error (15 bins).
    pub test_ece: f64,
    /// Latency at batch 1 and 128.
    pub latency: Vec<Latency>,
}

/// What `quantise` measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantiseSummary {
    /// The run quantised.
    pub run: String,
    /// Architecture.
    pub arch: String,
    /// Weight layers quantised.
    pub layers: usize,
    /// Largest `|W − Ŵ| / s_o` over all weights (at most 0.5 by construction).
    pub max_error_steps: f64,
    /// The f32 network.
    pub f32: QuantisedCost,
    /// The int8-weight network.
    pub int8: QuantisedCost,
    /// Test examples on which the two predict different classes.
    pub changed_predictions: usize,
    /// CPU model of the timing.
    pub cpu: String,
}

/// The int8 file: quantised weights as `I8` with their `.scale`, every other tensor f32.
fn int8_file(q: &QuantisedWeights, tensors: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in tensors {
        if let Some(w) = q.weights.get(name) {
            owned.push((
                name.clone(),
                Dtype::I8,
                w.shape.clone(),
                w.q.iter().map(|&c| c as u8).collect(),
            ));
            owned.push((
                format!("{name}.scale"),
                Dtype::F32,
                vec![w.scales.len()],
                w.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
            ));
        } else {
            let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            owned.push((
                name.clone(),
                Dtype::F32,
                t.dims().to_vec(),
                v.iter().flat_map(|s| s.to_le_bytes()).collect(),
            ));
        }
    }
    let views = owned
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| ExpError::Run {
            path: PathBuf::from(INT8_WEIGHTS),
            message: e.to_string(),
        })?;
    safetensors::serialize(views, None).map_err(|e| ExpError::Run {
        path: PathBuf::from(INT8_WEIGHTS),
        message: e.to_string(),
    })
}

fn file_size(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p).map_err(|e| ExpError::io(p, e))?.len())
}

/// `secateur quantise` (see the [module documentation](self)).
pub fn quantise(opts: &QuantiseOptions) -> Result<QuantiseSummary> {
    let FinishedClassifier {
        cfg,
        weights,
        data,
        norm,
        input,
        classes,
        net,
        store,
        dev,
    } = FinishedClassifier::open(&opts.run, opts.data_dir.as_deref(), "quantise")?;
    if cfg.model.dtype != "f32" {
        return Err(ExpError::Run {
            path: opts.run.clone(),
            message: format!("quantise takes an f32 run; its model.dtype is `{}`", cfg.model.dtype),
        });
    }
    if cfg.model.layers != "deterministic" {
        return Err(ExpError::Run {
            path: opts.run.clone(),
            message: format!(
                "quantise takes a deterministic run; its layers are `{}` (a posterior is not a weight)",
                cfg.model.layers
            ),
        });
    }
    if opts.out.is_dir()
        && std::fs::read_dir(&opts.out)
            .map_err(|e| ExpError::io(&opts.out, e))?
            .next()
            .is_some()
    {
        return Err(ExpError::io(
            &opts.out,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "is not empty; refusing to overwrite it: choose another --out",
            ),
        ));
    }
    let before = super::evaluate(&net, &data.test, &norm, &cfg, &dev)?;
    // the f32 network beside the quantised one, for the paired timing
    let (f32_net, f32_store) = build_model(&cfg, input, classes, &dev)?;
    f32_store.load(&weights)?;
    let g = geometry(&cfg, input, classes)?;
    let q = QuantisedWeights::quantise(&store, &g)?;
    let mut max_err = 0f64;
    for (name, w) in &q.weights {
        let orig = weights
            .get(name)
            .ok_or_else(|| ExpError::config("quantise", format!("the run has no `{name}`")))?
            .to_dtype(DType::F32)?;
        let o = w.shape[0];
        let d = (orig - w.dequantise(&dev)?)?
            .abs()?
            .reshape((o, ()))?
            .max(1)?
            .to_vec1::<f32>()?;
        for (e, s) in d.iter().zip(&w.scales) {
            if *s > 0.0 {
                max_err = max_err.max(f64::from(e / s));
            }
        }
    }
    q.apply(&store)?;
    let after = super::evaluate(&net, &data.test, &norm, &cfg, &dev)?;
    let (mut f32_latency, mut int8_latency): (Vec<Latency>, Vec<Latency>) = (Vec::new(), Vec::new());
    if opts.latency_reps > 0 {
        for b in [1, 128] {
            let reps = if b == 1 {
                opts.latency_reps * 5
            } else {
                opts.latency_reps
            };
            let l = latencies(&[&f32_net, &net], input, b, cfg.model.dtype()?, &dev, reps)?;
            f32_latency.push(l[0]);
            int8_latency.push(l[1]);
        }
    }
    let k = before.preds.classes;
    let argmax = |p: &[f32]| (0..k).fold(0, |b, c| if p[c] > p[b] { c } else { b });
    let changed = before
        .preds
        .probs
        .chunks(k)
        .zip(after.preds.probs.chunks(k))
        .filter(|(a, b)| argmax(a) != argmax(b))
        .count();

    let (out, _lock) = RunDir::create_locked(&cfg.name, Some(&opts.out))?;
    atomic::write_string(&out.file("config.toml"), &cfg.to_toml()?)?;
    atomic::write_safetensors(&out.file("weights.safetensors"), &store.tensors())?;
    atomic::write_bytes(&out.file(INT8_WEIGHTS), &int8_file(&q, &store.tensors())?)?;
    let summary = QuantiseSummary {
        run: opts.run.display().to_string(),
        arch: cfg.model.arch.clone(),
        layers: q.weights.len(),
        max_error_steps: max_err,
        f32: QuantisedCost {
            file_bytes: file_size(&opts.run.join("weights.safetensors"))?,
            test_accuracy: before.metrics.accuracy,
            test_nll: before.metrics.nll,
            test_ece: before.metrics.ece,
            latency: f32_latency,
        },
        int8: QuantisedCost {
            file_bytes: file_size(&out.file(INT8_WEIGHTS))?,
            test_accuracy: after.metrics.accuracy,
            test_nll: after.metrics.nll,
            test_ece: after.metrics.ece,
            latency: int8_latency,
        },
        changed_predictions: changed,
        cpu: cpu_model(),
    };
    let mut metrics = Map::new();
    metrics.insert("test_accuracy".into(), after.metrics.accuracy.into());
    metrics.insert("test_nll".into(), after.metrics.nll.into());
    metrics.insert("test_ece".into(), after.metrics.ece.into());
    metrics.insert("seed".into(), cfg.seed.into());
    metrics.insert("quantised_from".into(), summary.run.clone().into());
    let json =
        |v: &Value| serde_json::to_string_pretty(v).map_err(|e| ExpError::io(out.path(), std::io::Error::other(e)));
    atomic::write_string(&out.file("metrics.json"), &json(&Value::Object(metrics))?)?;
    let s = serde_json::to_value(&summary).map_err(|e| ExpError::io(out.path(), std::io::Error::other(e)))?;
    atomic::write_string(&out.file(QUANTISE_SUMMARY), &json(&s)?)?;
    atomic::write_string(&out.file("quantise.md"), &markdown(&summary))?;
    Ok(summary)
}

/// `quantise.md`: size, accuracy, NLL, ECE and latency, f32 against int8.
pub fn markdown(s: &QuantiseSummary) -> String {
    let (a, b) = (&s.f32, &s.int8);
    let mut t = format!(
        "# Int8 weights of `{}` ({})\n\n\
         {} weight layers, per output channel, symmetric, weight-only; largest error {:.3} steps (≤ 0.5). \
         {} test predictions change class.\n\n\
         | | f32 | int8 weights | ratio |\n|---|---:|---:|---:|\n\
         | weights file, bytes | {} | {} | {:.3} |\n| test accuracy | {:.4} | {:.4} | |\n\
         | test NLL | {:.4} | {:.4} | |\n| test ECE | {:.4} | {:.4} | |\n",
        s.run,
        s.arch,
        s.layers,
        s.max_error_steps,
        s.changed_predictions,
        a.file_bytes,
        b.file_bytes,
        b.file_bytes as f64 / a.file_bytes.max(1) as f64,
        a.test_accuracy,
        b.test_accuracy,
        a.test_nll,
        b.test_nll,
        a.test_ece,
        b.test_ece,
    );
    for (x, y) in a.latency.iter().zip(&b.latency) {
        t += &format!(
            "| latency, batch {} (median ms) | {:.3} | {:.3} | {:.2} |\n",
            x.batch,
            x.median_ms,
            y.median_ms,
            y.median_ms / x.median_ms
        );
    }
    if !a.latency.is_empty() {
        t += &format!(
            "\nLatency on {}, the two networks alternating: the int8 network runs on its dequantised f32 weights \
             (no int8 kernel), so its latency is the f32 network's; the ratio shows the timing noise.\n",
            s.cpu
        );
    }
    t
}
