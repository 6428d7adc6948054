//! The run store: one directory per run, `runs/<study>-<timestamp>/`.
//!
//! ```text
//! config.toml              the fully resolved config, seed included (written before training)
//! history.csv              one row per epoch (loss, NLL and divergence apart, β, test metrics, units kept per unit-selecting layer)
//! checkpoints/latest       name of the newest complete checkpoint directory
//! checkpoints/epoch-NNNN/  weights.safetensors, optimizer.safetensors, state.json
//! weights.safetensors      final weights and buffers, PyTorch-style names
//! masks.safetensors        the masks it was trained with (`--masks`, `[greg]`); a resume re-applies them
//! predictions.safetensors  test-set probabilities `probs` [N, K] and `labels` [N]
//! curves.png               learning curves (loss/NLL and accuracy per epoch, train and test)
//! reliability.png          reliability diagram of the test predictions (15 bins, ECE in the title)
//! metrics.json             flat summary (test_accuracy, test_nll, …)
//! report.md                a short human-readable report
//! results.h5               arrays and metrics again, with the `hdf5` feature
//! lock                     locked by the process writing the run (one writer at a time)
//! ```
//! Every file is written atomically. A checkpoint directory is complete before `latest` names it,
//! so a run killed mid-checkpoint resumes from the previous one.

use crate::atomic;
use crate::error::{ExpError, Result};
use secateur_inference::train::{Checkpoint, EpochRecord, TrainState};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Refuses tensors with a NaN or infinite entry: the error names the file, the first such tensor
/// (in name order) and how many of its entries are NaN and infinite. Integer tensors pass.
pub fn check_finite(tensors: &HashMap<String, candle_core::Tensor>, file: &Path) -> Result<()> {
    use candle_core::DType;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let t = &tensors[name];
        let t = match t.dtype() {
            DType::F64 => t.clone(),
            DType::F32 | DType::F16 | DType::BF16 => t.to_dtype(DType::F32)?,
            _ => continue,
        };
        // x − x is 0 for a finite x and NaN for NaN or ±∞, so the sum is finite iff every entry is
        let all_finite = match t.dtype() {
            DType::F64 => t.sub(&t)?.sum_all()?.to_scalar::<f64>()?.is_finite(),
            _ => t.sub(&t)?.sum_all()?.to_scalar::<f32>()?.is_finite(),
        };
        if all_finite {
            continue;
        }
        let v = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let nan = v.iter().filter(|x| x.is_nan()).count();
        let inf = v.iter().filter(|x| x.is_infinite()).count();
        return Err(ExpError::Run {
            path: file.to_path_buf(),
            message: format!(
                "tensor `{name}` has {nan} NaN and {inf} infinite entries (of {}); refusing non-finite weights",
                v.len()
            ),
        });
    }
    Ok(())
}

/// Reads a weights file (or a checkpoint's optimiser state) for evaluation or a resume: a
/// safetensors file whose float tensors must all be finite ([`check_finite`]).
pub fn read_finite_safetensors(path: &Path) -> Result<HashMap<String, candle_core::Tensor>> {
    let tensors = atomic::read_safetensors(path)?;
    check_finite(&tensors, path)?;
    Ok(tensors)
}

/// The lock file of a run directory ([`RunDir::lock`]).
pub const LOCK_FILE: &str = "lock";

/// The exclusive lock on a run directory ([`RunDir::lock`]); released when dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

/// The key of `state.json` that holds the bits of its floats ([`state_json`]).
const EXACT_FLOATS: &str = "exact_floats";

/// Visits every float number of `v` in document order (object keys in the map's order, which
/// is the order in which they are written and read back).
fn visit_floats(
    v: &mut serde_json::Value,
    f: &mut dyn FnMut(&mut serde_json::Value) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => f(v),
        Value::Array(a) => a.iter_mut().try_for_each(|x| visit_floats(x, f)),
        Value::Object(m) => m.values_mut().try_for_each(|x| visit_floats(x, f)),
        _ => Ok(()),
    }
}

/// A checkpoint's trainer state as JSON that reads back bit for bit: the usual fields, plus
/// `exact_floats`, the IEEE bits of every float in document order. (serde_json writes the
/// shortest decimal that round-trips, but without its `float_roundtrip` feature it may read
/// one back 1 ulp off, and a resumed run then rewrote its history with different last digits.)
fn state_json(state: &TrainState) -> std::result::Result<String, serde_json::Error> {
    let mut value = serde_json::to_value(state)?;
    let mut bits = Vec::new();
    let _ = visit_floats(&mut value, &mut |x| {
        bits.push(serde_json::Value::from(x.as_f64().unwrap_or(f64::NAN).to_bits()));
        Ok(())
    });
    if let serde_json::Value::Object(m) = &mut value {
        m.insert(EXACT_FLOATS.to_string(), serde_json::Value::Array(bits));
    }
    serde_json::to_string_pretty(&value)
}

/// Reads [`state_json`]'s output: each float takes the value of its bits in `exact_floats`
/// (a state written without them, by an older version, is read as it stands).
fn parse_state_json(text: &str) -> std::result::Result<TrainState, String> {
    let mut value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let exact = value.as_object_mut().and_then(|m| m.remove(EXACT_FLOATS));
    if let Some(exact) = exact {
        let bits: Vec<u64> = serde_json::from_value(exact).map_err(|e| format!("{EXACT_FLOATS}: {e}"))?;
        let mut next = bits.iter();
        visit_floats(&mut value, &mut |x| {
            let b = next
                .next()
                .ok_or_else(|| format!("{EXACT_FLOATS} has fewer entries than the state has numbers"))?;
            let exact = f64::from_bits(*b);
            // the bits must be those of the written number (a hand edit of one of them is an error)
            let read = x.as_f64().unwrap_or(f64::NAN);
            if !(exact.is_finite() && (exact - read).abs() <= 1e-12 * exact.abs().max(f64::MIN_POSITIVE)) {
                return Err(format!("{EXACT_FLOATS} does not match the number {read}"));
            }
            *x = serde_json::Value::from(exact);
            Ok(())
        })?;
        if next.next().is_some() {
            return Err(format!("{EXACT_FLOATS} has more entries than the state has numbers"));
        }
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    path: PathBuf,
}

/// A checkpoint read back from disk.
pub struct LoadedCheckpoint {
    /// Weights and buffers.
    pub weights: HashMap<String, candle_core::Tensor>,
    /// Optimiser state.
    pub optimizer: HashMap<String, candle_core::Tensor>,
    /// Trainer state.
    pub state: TrainState,
}

/// The local time as `YYYYMMDD-HHMMSS`, for default run and study directory names.
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // UTC civil date from days since the epoch (Hinnant's algorithm).
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl RunDir {
    /// A new run directory: `out` if given (it must not hold a finished or started run, or a run
    /// that stopped before its first checkpoint; the error says which and what to do), else
    /// `runs/<study>-<timestamp>` (with a numeric suffix if that exists).
    pub fn create(study: &str, out: Option<&Path>) -> Result<Self> {
        let path = Self::new_path(study, out);
        Self::refuse_existing(&path)?;
        std::fs::create_dir_all(path.join("checkpoints")).map_err(|e| ExpError::io(&path, e))?;
        Ok(Self { path })
    }

    /// `out`, or a fresh `runs/<study>-<timestamp>[-k]`.
    fn new_path(study: &str, out: Option<&Path>) -> PathBuf {
        match out {
            Some(p) => p.to_path_buf(),
            None => {
                let base = PathBuf::from("runs").join(format!("{study}-{}", timestamp()));
                let mut p = base.clone();
                let mut k = 1;
                while p.exists() {
                    p = PathBuf::from(format!("{}-{k}", base.display()));
                    k += 1;
                }
                p
            }
        }
    }

    /// [`RunDir::create`] for a process that then writes the run: the directory is locked
    /// ([`RunDir::lock`]) before it is checked and `checkpoints/` is made, so that of two
    /// processes given the same `out`, one writes and the other is refused (as is a directory
    /// whose run another process is writing).
    pub fn create_locked(study: &str, out: Option<&Path>) -> Result<(Self, RunLock)> {
        let path = Self::new_path(study, out);
        std::fs::create_dir_all(&path).map_err(|e| ExpError::io(&path, e))?;
        let run = Self { path };
        let lock = run.lock()?;
        Self::refuse_existing(&run.path)?;
        let checkpoints = run.file("checkpoints");
        std::fs::create_dir_all(&checkpoints).map_err(|e| ExpError::io(&checkpoints, e))?;
        Ok((run, lock))
    }

    fn refuse_existing(path: &Path) -> Result<()> {
        match Self::holds(path) {
            Some(what) => Err(ExpError::Run {
                path: path.to_path_buf(),
                message: format!("already holds {what}; refusing to overwrite it"),
            }),
            None => Ok(()),
        }
    }

    /// Takes the run's exclusive lock: the file [`LOCK_FILE`] in the directory, locked with
    /// [`std::fs::File::try_lock`] (an advisory lock released when the returned guard is dropped
    /// or the process ends, even by a kill). One process writes a run at a time: a second
    /// `train` or `train --resume` of the run is refused, naming the directory.
    pub fn lock(&self) -> Result<RunLock> {
        let path = self.file(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ExpError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(ExpError::Run {
                path: self.path.clone(),
                message: format!(
                    "is in use by another process (it holds {}); one process writes a run at a time, so wait for it to end",
                    path.display()
                ),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(ExpError::io(&path, e)),
        }
    }

    /// What the directory `path` already holds that a new run must not overwrite, in words (with
    /// what to do instead); `None` if it holds nothing of a run's.
    fn holds(path: &Path) -> Option<String> {
        let dir = Self {
            path: path.to_path_buf(),
        };
        let resume = format!("`secateur train --resume {}`", path.display());
        if path.join("metrics.json").exists() {
            Some("a finished run (metrics.json); choose another --out".into())
        } else if let Some(c) = dir.latest_checkpoint() {
            Some(format!(
                "an unfinished run (last checkpoint checkpoints/{c}); continue it with {resume}, or choose another --out"
            ))
        } else if path.join("config.toml").exists() {
            Some(format!(
                "a run that stopped before its first checkpoint (config.toml, no checkpoint); {resume} trains it from the start with its recorded config, or choose another --out"
            ))
        } else if path.join("checkpoints").exists() {
            Some("a run or study directory (checkpoints/); choose another --out".into())
        } else {
            None
        }
    }

    /// An existing run directory (for `eval` and `--resume`).
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, "config.toml")
    }

    /// An existing directory identified by the file `marker` it holds (a study's `pai.toml`).
    pub fn open_with(path: &Path, marker: &str) -> Result<Self> {
        if !path.join(marker).is_file() {
            return Err(ExpError::Run {
                path: path.to_path_buf(),
                message: format!("not a run directory (no {marker})"),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file inside the run directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes the history as CSV (one row per epoch). A classification history has the columns
    /// `epoch,lr,train_loss,train_nll,train_divergence,beta,train_accuracy,test_accuracy,test_nll,test_brier,test_ece,test_mce,seconds,eval_seconds`
    /// (`seconds` the epoch's training, `eval_seconds` its evaluation, wall clock),
    /// then `mc_test_accuracy,mc_test_nll,mc_test_brier,mc_test_ece,mc_test_mce` when the run
    /// evaluated the Monte Carlo predictive every epoch (`bayes.eval_every_epoch`; the `test_*`
    /// columns are the posterior-mean network's, empty when only the Monte Carlo one was asked),
    /// then `LAYER.kept,LAYER.mean_inclusion` for every layer that selects units.
    /// A regression history (records with `train_rmse`) has the columns
    /// `epoch,lr,train_loss,train_nll,train_divergence,beta,train_rmse,test_rmse,test_nll,test_coverage_95,seconds,eval_seconds`.
    pub fn write_history(&self, history: &[EpochRecord]) -> Result<()> {
        if history.iter().any(|r| r.train_rmse.is_some()) {
            return self.write_regression_history(history);
        }
        let mut s = String::from(
            "epoch,lr,train_loss,train_nll,train_divergence,beta,train_accuracy,test_accuracy,test_nll,test_brier,test_ece,test_mce,seconds,eval_seconds",
        );
        // Unit-selecting layers (spike-and-slab nodes, gates) add two columns each: the units kept
        // by the test-time rule and their mean inclusion probability, named after the layer.
        let layers: Vec<String> = history
            .first()
            .map(|r| r.units.iter().map(|u| u.layer.clone()).collect())
            .unwrap_or_default();
        // `bayes.eval_every_epoch = "mc"` or `"both"`: the Monte Carlo predictive's columns
        let mc = history.iter().any(|r| r.eval_mc.is_some());
        if mc {
            s.push_str(",mc_test_accuracy,mc_test_nll,mc_test_brier,mc_test_ece,mc_test_mce");
        }
        for l in &layers {
            s.push_str(&format!(",{l}.kept,{l}.mean_inclusion"));
        }
        s.push('\n');
        let five = |m: &Option<secateur_inference::metrics::ClassificationMetrics>| match m {
            Some(x) => (x.accuracy, x.nll, x.brier, x.ece, x.mce),
            None => (f64::NAN, f64::NAN, f64::NAN, f64::NAN, f64::NAN),
        };
        for r in history {
            let (a, n, b, e, m) = five(&r.eval);
            s.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{:.3},{:.3}",
                r.epoch,
                r.lr,
                r.train_loss,
                r.train_nll,
                r.train_divergence,
                r.beta,
                r.train_accuracy,
                a,
                n,
                b,
                e,
                m,
                r.seconds,
                r.eval_seconds
            ));
            if mc {
                let (a, n, b, e, m) = five(&r.eval_mc);
                s.push_str(&format!(",{a},{n},{b},{e},{m}"));
            }
            for l in &layers {
                match r.units.iter().find(|u| &u.layer == l) {
                    Some(u) => s.push_str(&format!(",{},{}", u.kept, u.mean_inclusion.unwrap_or(f64::NAN))),
                    None => s.push_str(",,"),
                }
            }
            s.push('\n');
        }
        atomic::write_string(&self.file("history.csv"), &s)
    }

    fn write_regression_history(&self, history: &[EpochRecord]) -> Result<()> {
        let mut s = String::from(
            "epoch,lr,train_loss,train_nll,train_divergence,beta,train_rmse,test_rmse,test_nll,test_coverage_95,seconds,eval_seconds\n",
        );
        for r in history {
            let (a, n, c) = match &r.eval_regression {
                Some(x) => (x.rmse, x.nll, x.coverage_95),
                None => (f64::NAN, f64::NAN, f64::NAN),
            };
            s.push_str(&format!(
                "{},{},{},{},{},{},{},{a},{n},{c},{:.3},{:.3}\n",
                r.epoch,
                r.lr,
                r.train_loss,
                r.train_nll,
                r.train_divergence,
                r.beta,
                r.train_rmse.unwrap_or(f64::NAN),
                r.seconds,
                r.eval_seconds
            ));
        }
        atomic::write_string(&self.file("history.csv"), &s)
    }

    /// Writes a complete checkpoint directory, then points `checkpoints/latest` at it and removes
    /// the previous one.
    pub fn write_checkpoint(&self, ckpt: &Checkpoint) -> Result<()> {
        let root = self.file("checkpoints");
        let name = format!("epoch-{:04}", ckpt.state.epochs_done);
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir).map_err(|e| ExpError::io(&dir, e))?;
        atomic::write_safetensors(&dir.join("weights.safetensors"), &ckpt.weights)?;
        atomic::write_safetensors(&dir.join("optimizer.safetensors"), &ckpt.optimizer)?;
        let state = state_json(&ckpt.state).map_err(|e| ExpError::io(&dir, std::io::Error::other(e)))?;
        atomic::write_string(&dir.join("state.json"), &state)?;
        let previous = std::fs::read_to_string(root.join("latest")).ok();
        atomic::write_string(&root.join("latest"), &name)?;
        if let Some(prev) = previous {
            let prev = prev.trim();
            if prev != name && !prev.is_empty() && !prev.contains('/') {
                let _ = std::fs::remove_dir_all(root.join(prev));
            }
        }
        Ok(())
    }

    /// Writes `file` (safetensors) into the checkpoint directory of epoch `epochs_done` before
    /// [`RunDir::write_checkpoint`] completes it: the state of an observer that must resume with
    /// the weights (a SWAG collector). Call it from an observer that runs before the recorder, so
    /// that `checkpoints/latest` never names a checkpoint without it.
    pub fn write_checkpoint_part(
        &self,
        epochs_done: usize,
        file: &str,
        tensors: &std::collections::BTreeMap<String, candle_core::Tensor>,
    ) -> Result<()> {
        let dir = self.file("checkpoints").join(format!("epoch-{epochs_done:04}"));
        std::fs::create_dir_all(&dir).map_err(|e| ExpError::io(&dir, e))?;
        atomic::write_safetensors(&dir.join(file), tensors)
    }

    /// The part `file` of the newest complete checkpoint ([`RunDir::write_checkpoint_part`]);
    /// `None` when there is no checkpoint or it lacks the part; non-finite values are refused.
    pub fn read_checkpoint_part(&self, file: &str) -> Result<Option<HashMap<String, candle_core::Tensor>>> {
        let Some(latest) = self.latest_checkpoint() else {
            return Ok(None);
        };
        let path = self.file("checkpoints").join(latest).join(file);
        if !path.is_file() {
            return Ok(None);
        }
        read_finite_safetensors(&path).map(Some)
    }

    /// The name of the newest complete checkpoint (`epoch-NNNN`), if there is one.
    pub fn latest_checkpoint(&self) -> Option<String> {
        let name = std::fs::read_to_string(self.file("checkpoints").join("latest")).ok()?;
        let name = name.trim();
        (!name.is_empty()).then(|| name.to_string())
    }

    /// The final weights of a finished run (`weights.safetensors`), for `eval`: refuses a run
    /// without them (naming the file and the run's last checkpoint, never falling back to it
    /// silently) and non-finite weights ([`check_finite`]).
    pub fn read_final_weights(&self) -> Result<HashMap<String, candle_core::Tensor>> {
        let file = self.file("weights.safetensors");
        if !file.is_file() {
            let state = match self.latest_checkpoint() {
                Some(c) => format!(
                    "the run did not finish (its last checkpoint is checkpoints/{c}); finish it with `secateur train --resume {}`",
                    self.path.display()
                ),
                None => "the run did not finish and has no checkpoint".to_string(),
            };
            return Err(ExpError::Run {
                path: self.path.clone(),
                message: format!("{} is missing: {state}", file.display()),
            });
        }
        read_finite_safetensors(&file)
    }

    /// Reads the newest complete checkpoint; refuses non-finite weights or optimiser state
    /// ([`check_finite`]).
    pub fn read_checkpoint(&self) -> Result<LoadedCheckpoint> {
        let root = self.file("checkpoints");
        let latest = root.join("latest");
        let name = std::fs::read_to_string(&latest).map_err(|e| ExpError::io(&latest, e))?;
        let dir = root.join(name.trim());
        let state_path = dir.join("state.json");
        let text = std::fs::read_to_string(&state_path).map_err(|e| ExpError::io(&state_path, e))?;
        let state = parse_state_json(&text).map_err(|message| ExpError::Run {
            path: state_path.clone(),
            message: format!("corrupt checkpoint state: {message}"),
        })?;
        Ok(LoadedCheckpoint {
            weights: read_finite_safetensors(&dir.join("weights.safetensors"))?,
            optimizer: read_finite_safetensors(&dir.join("optimizer.safetensors"))?,
            state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_has_the_expected_shape() {
        let t = timestamp();
        assert_eq!(t.len(), 15, "{t}");
        assert!(t.starts_with("20"));
    }

    #[test]
    fn refuses_to_overwrite_a_finished_run() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| ExpError::io("tempdir", e))?;
        let out = dir.path().join("r");
        let run = RunDir::create("t", Some(&out))?;
        atomic::write_string(&run.file("metrics.json"), "{}")?;
        assert!(RunDir::create("t", Some(&out)).is_err());
        Ok(())
    }
}
