//! A finished classification run loaded for prediction: its config, data, network with the final
//! weights, and posterior. [`LoadedRun::predict`] gives the run's own predictive on any image set
//! of the training images' shape (the test set, an out-of-distribution set, a shifted copy),
//! exactly as `train` and `eval` predict: the `[posterior]`'s predictive where the run has one,
//! Monte Carlo over `bayes.eval_samples` draws for a Bayesian network, one pass otherwise.

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
use std::path::Path;

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
    net: Network,
    store: ParamStore,
    fitted: Option<Fitted>,
    dev: Device,
}

impl LoadedRun {
    /// Loads the run in `run_dir` (data from `data_dir` first) onto the device `device_name`.
    /// Refuses an unfinished run (no `weights.safetensors`), weights with a NaN or infinite
    /// entry, and a regression run (those are evaluated by
    /// [`regression::eval`](super::regression::eval)).
    pub fn open(run_dir: &Path, data_dir: Option<&Path>, device_name: &str) -> Result<Self> {
        let run = RunDir::open(run_dir)?;
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
        Ok(Self {
            cfg,
            run,
            data,
            train_set,
            val_set,
            norm,
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
