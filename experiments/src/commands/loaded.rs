//! A finished classification run loaded for prediction: its config, data, network with the final
//! weights, and posterior. [`LoadedRun::predict`] gives the run's own predictive on any image set
//! of the training images' shape (the test set, an out-of-distribution set, a shifted copy),
//! exactly as `train` and `eval` predict: the `[posterior]`'s predictive where the run has one,
//! Monte Carlo over `bayes.eval_samples` draws for a Bayesian network, one pass otherwise.
//!
//! A directory written by `secateur prune --run RUN` loads as RUN's network with the prune's
//! `masks.safetensors` applied ([`MaskSet::apply`]: pruned weights zero, and for Bayesian layers
//! their posterior scale collapsed) and its compensated batch-norm statistics where an `fsm`
//! prune wrote them ([`crate::structured::apply_bn_stats`]), so that a report compares a network
//! before and after pruning (no fine-tune).

use super::eval::ood_predictions;
use super::posterior::Fitted;
use super::setup::{build_model, device, load_data};
use crate::config::StudyConfig;
use crate::data::{ImageSet, LoadedImages, Normalizer};
use crate::error::{ExpError, Result};
use crate::seed_stream::SeedStream;
use crate::store::RunDir;
use candle_core::Device;
use secateur_bayes::ParamStore;
use secateur_inference::predict::McPredictions;
use secateur_models::Network;
use secateur_pruning::MaskSet;
use std::path::{Path, PathBuf};

/// The prune a [`LoadedRun`] was loaded through: the prune directory and its summary.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneSource {
    /// The prune directory (`masks.safetensors`, `prune.json`).
    pub dir: PathBuf,
    /// Its criterion.
    pub criterion: String,
    /// The sparsity its masks reached over the weights they cover.
    pub sparsity: f64,
}

/// The run a `secateur prune --run` directory was made from, as its `prune.json` records it
/// (`"run"`, a path relative to the prune directory or absolute), with the prune's summary.
/// `None` for a directory that holds no `prune.json` (or is itself a run).
pub fn pruned_run(dir: &Path) -> Result<Option<(PathBuf, PruneSource)>> {
    let summary = dir.join(crate::prune::PRUNE_SUMMARY);
    if !summary.is_file() || dir.join("config.toml").is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&summary).map_err(|e| ExpError::io(&summary, e))?;
    let bad = |message: String| ExpError::Run {
        path: dir.to_path_buf(),
        message,
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("has a prune.json that is not valid JSON ({e})")))?;
    let Some(run) = v.get("run").and_then(|r| r.as_str()) else {
        return Err(bad(
            "is a prune of a freshly initialised network (prune --config); only a prune of a trained run \
             (prune --run) can be evaluated"
                .into(),
        ));
    };
    let run = dir.join(run);
    if !run.join("config.toml").is_file() {
        return Err(bad(format!(
            "was pruned from the run {}, which is no longer there (prune.json's `run`)",
            run.display()
        )));
    }
    let source = PruneSource {
        dir: dir.to_path_buf(),
        criterion: v.get("criterion").and_then(|c| c.as_str()).unwrap_or("?").to_string(),
        sparsity: v.get("sparsity").and_then(|s| s.as_f64()).unwrap_or(f64::NAN),
    };
    Ok(Some((run, source)))
}

/// A finished classification run, ready to predict.
pub struct LoadedRun {
    /// The run's config (`config.toml` of the run directory).
    pub cfg: StudyConfig,
    /// The run directory.
    pub run: RunDir,
    /// The run's data set (train and test splits as loaded).
    pub data: LoadedImages,
    /// The training images the run trained on (the training split less the validation split).
    pub train_set: ImageSet,
    /// The validation split (`data.val_fraction > 0`), drawn as `train` drew it.
    pub val_set: Option<ImageSet>,
    /// The normalisation of the training images, applied to every set predicted.
    pub norm: Normalizer,
    /// The prune whose masks were applied, when loaded from a `prune --run` directory.
    pub pruned: Option<PruneSource>,
    net: Network,
    store: ParamStore,
    fitted: Option<Fitted>,
    dev: Device,
}

impl LoadedRun {
    /// Loads the run in `run_dir` (data from `data_dir` first) onto the device `device_name`;
    /// `run_dir` may also be a `prune --run` directory, whose masks are then applied to the
    /// run's network ([`MaskSet::apply`]).
    /// Refuses an unfinished run (no `weights.safetensors`), weights with a NaN or infinite
    /// entry, a regression run (those are evaluated by
    /// [`regression::eval`](super::regression::eval)), and masks on a run whose predictive is a
    /// `[posterior]` (the masks would not reach its samples).
    pub fn open(run_dir: &Path, data_dir: Option<&Path>, device_name: &str) -> Result<Self> {
        let (run_dir, pruned) = match pruned_run(run_dir)? {
            Some((run, source)) => (run, Some(source)),
            None => (run_dir.to_path_buf(), None),
        };
        let run = RunDir::open(&run_dir)?;
        let cfg = StudyConfig::from_file(&run.file("config.toml"), &[])?;
        if cfg.likelihood.is_regression() {
            return Err(ExpError::Run {
                path: run.path().to_path_buf(),
                message: "is a regression run; this needs a classification run".into(),
            });
        }
        // an ensemble's weights are its members'
        let weights = if cfg.posterior.kind == "ensemble" {
            None
        } else {
            Some(run.read_final_weights()?)
        };
        let dev = device(device_name)?;
        let data = load_data(&cfg, data_dir)?;
        let (train_set, val_set) = if cfg.data.val_fraction > 0.0 {
            let mut split_rng = SeedStream::DataSplit.rng(cfg.seed);
            let (t, v) = data.train.split(cfg.data.val_fraction, &mut split_rng)?;
            (t, Some(v))
        } else {
            (data.train.clone(), None)
        };
        let norm = Normalizer::from_set(&train_set);
        let input = [train_set.channels, train_set.height, train_set.width];
        let classes = data.train.n_classes.max(data.test.n_classes) as usize;
        let (net, store) = build_model(&cfg, input, classes, &dev)?;
        if let Some(w) = &weights {
            store.load(w)?;
        }
        let fitted = Fitted::load(&cfg, &run)?;
        if let Some(p) = &pruned {
            if fitted.is_some() {
                return Err(ExpError::Run {
                    path: p.dir.clone(),
                    message: format!(
                        "prunes a run whose predictive is its [posterior] ({}), which masks do not reach; \
                         evaluate prunes of runs without one",
                        cfg.posterior.kind
                    ),
                });
            }
            let file = p.dir.join("masks.safetensors");
            let masks = MaskSet::load(&file, &dev).map_err(|e| ExpError::Run {
                path: file.clone(),
                message: format!("cannot be read as masks: {e}"),
            })?;
            masks.apply(&store).map_err(|e| ExpError::Run {
                path: file,
                message: format!("do not fit the run's network: {e}"),
            })?;
            crate::structured::apply_bn_stats(&p.dir, &store)?;
        }
        Ok(Self {
            cfg,
            run,
            data,
            train_set,
            val_set,
            norm,
            pruned,
            net,
            store,
            fitted,
            dev,
        })
    }

    /// The number of classes the network predicts.
    pub fn classes(&self) -> usize {
        self.data.train.n_classes.max(self.data.test.n_classes) as usize
    }

    /// The run's predictive on `set` (normalised with the training images' statistics). Every
    /// call draws afresh from the run's evaluation (or posterior-predictive) stream, so a set
    /// gets the same predictions whichever sets were predicted before it.
    pub fn predict(&self, set: &ImageSet) -> Result<McPredictions> {
        let shape = (self.train_set.channels, self.train_set.height, self.train_set.width);
        if (set.channels, set.height, set.width) != shape {
            return Err(ExpError::Run {
                path: self.run.path().to_path_buf(),
                message: format!(
                    "cannot predict {}: its images are {}×{}×{}, the run's are {}×{}×{}",
                    set.name, set.channels, set.height, set.width, shape.0, shape.1, shape.2
                ),
            });
        }
        match &self.fitted {
            Some(f) => super::posterior::predict(
                &self.cfg,
                f,
                &self.net,
                &self.store,
                set,
                &self.train_set,
                &self.norm,
                &self.dev,
            ),
            None => ood_predictions(&self.net, set, &self.norm, &self.cfg, &self.dev),
        }
    }
}
