//! The set-up shared by the commands: the device, the model of a config (initialised from the
//! seed's initialisation stream), how its stochastic layers sample, the empirical-Bayes (MOPED)
//! initialisation `σ = δ·|w|`, the optimiser, the training settings (the objective with
//! `N` = the training-set size), the config's image data, its mini-batches, and
//! [`TrainingSetup`]: the one way every training loop (`train`, regression, the
//! pruning-at-initialisation study, growing regularisation) gets its [`Trainer`] and batches.

use crate::config::StudyConfig;
use crate::data::{load_images, Augment, ImageSet, LoadedImages, Normalizer, Standardizer, TableBatches, TableSet};
use crate::error::{ExpError, Result};
use crate::loader::ImageBatches;
use crate::seed_stream::SeedStream;
use candle_core::{DType, Device, Tensor};
use secateur_bayes::{Module, ParamBuilder, ParamStore, Sampling};
use secateur_inference::optim::{AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig};
use secateur_inference::train::{TrainSettings, Trainer};
use secateur_models::arch::{Mlp, MlpConfig};
use secateur_models::{build, ModelSpec, Network};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Parses a device name.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "" | "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).map_err(|e| {
            ExpError::config(
                "--device",
                format!("cuda is not available: {e} (build with `--features cuda` on a machine with an NVIDIA GPU)"),
            )
        }),
        other => Err(ExpError::config(
            "--device",
            format!("`{other}` is unknown; use cpu or cuda"),
        )),
    }
}

/// The model of a config, freshly initialised from the config's seed, with the layers of
/// `model.layers` (the factory of `secateur_models::factory`, options from `[bayes]`).
pub fn build_model(
    cfg: &StudyConfig,
    input: [usize; 3],
    classes: usize,
    dev: &Device,
) -> Result<(Network, ParamStore)> {
    let (store, pb) = param_builder(cfg, dev);
    let net = build_network(cfg, input, classes, &pb)?;
    Ok((net, store))
}

/// The weight layers of the config's network in forward order (as
/// [`secateur_pruning::geometry::record`], but of the network `build_model` makes: an `mlp` with
/// `model.hidden` has those layers, not LeNet-300-100's), for exclusions and FLOPs.
pub fn geometry(cfg: &StudyConfig, input: [usize; 3], classes: usize) -> Result<secateur_pruning::Geometry> {
    let spec = ModelSpec {
        arch: cfg.model.arch.clone(),
        input,
        classes,
    };
    Ok(secateur_pruning::geometry::record_built(input, |factory, pb| {
        build_with(cfg, &spec, input, classes, factory, pb).map_err(|e| candle_core::Error::Msg(e.to_string()))
    })?)
}

/// The structured groups of the config's network (as [`secateur_pruning::structured::groups::record`],
/// but of the network `build_model` makes: `model.hidden` and `model.widths` included).
pub fn coupling(
    cfg: &StudyConfig,
    input: [usize; 3],
    classes: usize,
) -> Result<secateur_pruning::structured::Coupling> {
    let spec = ModelSpec {
        arch: cfg.model.arch.clone(),
        input,
        classes,
    };
    Ok(secateur_pruning::structured::groups::record_built(
        input,
        |factory, pb| {
            build_with(cfg, &spec, input, classes, factory, pb).map_err(|e| candle_core::Error::Msg(e.to_string()))
        },
    )?)
}

/// The config with `bayes.spike_slab_layer_inclusion` set to the layer-wise λ of Jantre et al.'s
/// reference code when `bayes.spike_slab_layerwise` asks for it and no list is given
/// (`secateur_bayes::layers::spike_slab::layerwise_inclusion` of the MLP's widths, input to
/// classes, and the `n` training examples); unchanged otherwise. Only the `mlp` has the formula
/// (the error says so for other architectures).
pub fn resolve_layerwise_inclusion(
    cfg: &StudyConfig,
    input: [usize; 3],
    classes: usize,
    n: usize,
) -> Result<StudyConfig> {
    let mut out = cfg.clone();
    if !cfg.bayes.spike_slab_layerwise || !cfg.bayes.spike_slab_layer_inclusion.is_empty() {
        return Ok(out);
    }
    if cfg.model.layers != "spike-slab" || cfg.model.arch != "mlp" {
        return Err(ExpError::config(
            "bayes.spike_slab_layerwise",
            format!(
                "the layer-wise λ is defined for spike-slab layers of an mlp, not `{}` layers of `{}`",
                cfg.model.layers, cfg.model.arch
            ),
        ));
    }
    let mut widths = vec![input.iter().product::<usize>()];
    widths.extend(cfg.model.widths.clone().map_or_else(
        || cfg.model.hidden.clone().unwrap_or_else(|| vec![300, 100]),
        |w| w[..w.len().saturating_sub(1)].to_vec(),
    ));
    widths.push(classes);
    out.bayes.spike_slab_layer_inclusion = secateur_bayes::layers::spike_slab::layerwise_inclusion(&widths, n)
        .map_err(|e| ExpError::config("bayes.spike_slab_layerwise", e.to_string()))?;
    Ok(out)
}

/// A fresh store and a builder drawing from the config's initialisation stream.
pub(super) fn param_builder(cfg: &StudyConfig, dev: &Device) -> (ParamStore, ParamBuilder) {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(
        store.clone(),
        SeedStream::Init.rng(cfg.seed),
        cfg.model.dtype().unwrap_or(DType::F32),
        dev.clone(),
    );
    (store, pb)
}

/// The config's architecture with `outputs` outputs, registered under `pb`; an `mlp` with
/// `model.hidden` set gets those hidden widths instead of LeNet-300-100's.
pub(super) fn build_network(
    cfg: &StudyConfig,
    input: [usize; 3],
    outputs: usize,
    pb: &ParamBuilder,
) -> Result<Network> {
    let spec = ModelSpec {
        arch: cfg.model.arch.clone(),
        input,
        classes: outputs,
    };
    cfg.bayes
        .vd_granularity()
        .map_err(|e| ExpError::config("bayes.vd_granularity", e))?;
    let posterior_init = cfg
        .bayes
        .posterior_init()
        .map_err(|e| ExpError::config("bayes.posterior_init", e))?;
    let layer_priors = &cfg.bayes.layer_priors;
    let mean_field = if layer_priors.is_empty() {
        None
    } else if cfg.model.layers == "mean-field" {
        Some(
            secateur_models::MeanField::new(cfg.bayes.prior, cfg.bayes.init_std)
                .and_then(|m| {
                    m.with_posterior_init(posterior_init)
                        .with_kl_reduction(cfg.bayes.kl_reduction().unwrap_or_default())
                        .with_layer_priors(layer_priors.clone())
                })
                .map_err(|e| ExpError::config("bayes.layer_priors", e.to_string()))?,
        )
    } else {
        return Err(ExpError::config(
            "bayes.layer_priors",
            format!(
                "per-layer priors are for mean-field layers; model.layers is `{}`",
                cfg.model.layers
            ),
        ));
    };
    let factory: Box<dyn secateur_models::LayerFactory> = match &mean_field {
        Some(m) => Box::new(m.clone()),
        // learned pruning: deterministic layers whose weights the method computes
        None if cfg.pruning.is_scl() => Box::new(
            secateur_pruning::learned::scl::SclFactory::new(cfg.pruning.scl.mask_init)
                .map_err(|e| ExpError::config("pruning.scl.mask_init", e.to_string()))?,
        ),
        None if cfg.pruning.is_cap() => {
            let coupling = coupling(cfg, input, outputs)?;
            Box::new(secateur_pruning::learned::cap::CapFactory::new(
                secateur_pruning::learned::cap::CapFactory::readers(&coupling),
                cfg.pruning.cap.gate_init,
            ))
        }
        None if cfg.pruning.is_dcff() => {
            // the compact network, with the full filters of every pruned layer
            let (widths, full) = crate::learned::dcff_widths(cfg, input, outputs)?;
            let compact = cfg.at_widths(widths);
            let factory = secateur_pruning::learned::dcff::DcffFactory::new(full, cfg.pruning.dcff.t_start);
            return build_with(&compact, &spec, input, outputs, &factory, pb);
        }
        None => secateur_models::factory(&cfg.model.layers, &cfg.bayes.factory_options())
            .map_err(|e| ExpError::config("model.layers", e.to_string()))?,
    };
    let net = build_with(cfg, &spec, input, outputs, factory.as_ref(), pb)?;
    let given = &cfg.bayes.spike_slab_layer_inclusion;
    if cfg.model.layers == "spike-slab" && !given.is_empty() {
        // every spike-and-slab layer but the classifier selects nodes
        let selecting = pb.store().variational_layers().len().saturating_sub(1);
        if given.len() != selecting {
            return Err(ExpError::config(
                "bayes.spike_slab_layer_inclusion",
                format!(
                    "gives {} values; `{}` has {selecting} node-selecting layers",
                    given.len(),
                    cfg.model.arch
                ),
            ));
        }
    }
    if let Some(m) = &mean_field {
        let unused = m.unused_layer_priors(pb.store());
        if !unused.is_empty() {
            return Err(ExpError::config(
                "bayes.layer_priors",
                format!(
                    "no layer named {} in `{}`; its Bayesian layers are: {}",
                    unused.join(", "),
                    cfg.model.arch,
                    pb.store()
                        .variational_layers()
                        .into_iter()
                        .map(|(n, _)| n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    Ok(net)
}

fn build_with(
    cfg: &StudyConfig,
    spec: &ModelSpec,
    input: [usize; 3],
    outputs: usize,
    factory: &dyn secateur_models::LayerFactory,
    pb: &ParamBuilder,
) -> Result<Network> {
    if let Some(widths) = &cfg.model.widths {
        return secateur_models::build_with_widths(spec, widths, factory, pb)
            .map_err(|e| ExpError::config("model.widths", e.to_string()));
    }
    Ok(match (&cfg.model.hidden, cfg.model.arch.as_str()) {
        (Some(hidden), "mlp") => {
            spec.validate()?;
            let mlp = Mlp::new(&MlpConfig { hidden: hidden.clone() }, input, outputs, factory, pb)?;
            Network::new("mlp", Box::new(mlp))
        }
        _ => build(spec, factory, pb)?,
    })
}

/// How the stochastic layers of a config's model sample: the layer kind's
/// [`KindSampling`](secateur_models::KindSampling), with `bayes.sampling` where the kind leaves
/// the Gaussian estimator to the config.
pub fn sampling(cfg: &StudyConfig) -> Result<Sampling> {
    let kind = cfg.layer_kind().map_err(|e| ExpError::config("model.layers", e))?;
    kind.sampling
        .resolve(|| cfg.bayes.sampling().map_err(|e| ExpError::config("bayes.sampling", e)))
}

/// The weights file named by `bayes.init_from`: the path itself, or `weights.safetensors` inside
/// it when it is a (run) directory.
pub fn init_weights_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("weights.safetensors")
    } else {
        path.to_path_buf()
    }
}

/// Empirical-Bayes (MOPED) initialisation of the model in `store` from the deterministic weights
/// in `path` (a safetensors file, or a run directory holding `weights.safetensors`), with
/// `σ = δ·|w|` (Krishnan, Subedar & Tickoo 2020; see
/// [`secateur_bayes::empirical_bayes::init_from_deterministic`]). Errors name `bayes.init_from`
/// and the file.
pub fn init_from_deterministic(store: &ParamStore, path: &Path, delta: f64) -> Result<()> {
    let file = init_weights_file(path);
    let det: BTreeMap<String, Tensor> = crate::store::read_finite_safetensors(&file)
        .map_err(|e| ExpError::config("bayes.init_from", e.to_string()))?
        .into_iter()
        .collect();
    secateur_bayes::empirical_bayes::init_from_deterministic(store, &det, delta)
        .map_err(|e| ExpError::config("bayes.init_from", format!("{}: {e}", file.display())))
}

/// The optimiser of `[optim]` (SGD or AdamW with their PyTorch update rules).
pub fn optimizer(cfg: &StudyConfig) -> Result<Box<dyn Optimizer>> {
    let o = &cfg.optim;
    Ok(match o.kind.as_str() {
        "sgd" => Box::new(Sgd::new(SgdConfig {
            momentum: o.momentum,
            dampening: 0.0,
            nesterov: o.nesterov,
            weight_decay: o.weight_decay,
        })?),
        "adamw" => Box::new(AdamW::new(AdamWConfig {
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            weight_decay: o.weight_decay,
        })?),
        k => return Err(ExpError::config("optim.kind", format!("`{k}` is unknown"))),
    })
}

/// The training settings of a config for a training set of `train_size` examples (epochs,
/// learning rate and schedule, estimator, and the objective with `N = train_size`).
pub fn train_settings(cfg: &StudyConfig, train_size: usize) -> Result<TrainSettings> {
    Ok(TrainSettings {
        epochs: cfg.train.epochs,
        lr: cfg.optim.lr,
        schedule: cfg.train.schedule.clone(),
        sampling: sampling(cfg)?,
        objective: cfg.objective(train_size).map_err(|e| ExpError::config("bayes", e))?,
    })
}

/// The config's image data set (`data_dir` searched first, then `data.dir`, then the lookup).
pub(crate) fn load_data(cfg: &StudyConfig, data_dir: Option<&Path>) -> Result<LoadedImages> {
    let dir = data_dir.map(Path::to_path_buf).or_else(|| cfg.data.dir.clone());
    Ok(load_images(&cfg.data.name, dir.as_deref())?)
}

/// The training loop of a config, set up in two steps so that a command can check the config
/// before it creates anything: [`TrainingSetup::new`] resolves the settings (refusing a bad
/// estimator or objective), and [`TrainingSetup::trainer`] later makes the [`Trainer`] — the
/// config's optimiser, the settings, and a generator on the sub-stream [`stream`](Self::stream)
/// of the config's seed. The training batches come from the same config
/// ([`image_batches`](Self::image_batches), [`table_batches`](Self::table_batches)); hooks
/// (masks, regularisers), a likelihood, a checkpoint and observers are the caller's.
#[derive(Debug, Clone)]
pub struct TrainingSetup<'c> {
    cfg: &'c StudyConfig,
    /// The loop's settings: [`train_settings`] of the config for the training set; a phase with
    /// its own epochs, learning rate or schedule replaces those fields.
    pub settings: TrainSettings,
    /// The sub-stream of the config's seed the trainer's generator draws from (shuffling,
    /// augmentation, weight noise): [`SeedStream::Train`] unless set.
    pub stream: SeedStream,
}

impl<'c> TrainingSetup<'c> {
    /// The config's training loop for a training set of `train_size` examples
    /// ([`train_settings`]), drawing from the training stream of the seed.
    pub fn new(cfg: &'c StudyConfig, train_size: usize) -> Result<Self> {
        Ok(Self {
            cfg,
            settings: train_settings(cfg, train_size)?,
            stream: SeedStream::Train,
        })
    }

    /// The same loop drawing from sub-stream `stream` of the config's seed instead.
    pub fn with_stream(mut self, stream: SeedStream) -> Self {
        self.stream = stream;
        self
    }

    /// A trainer of `net`, whose parameters live in `store`: the config's [`optimizer`], the
    /// settings, and a fresh generator on [`stream`](Self::stream). Refuses a config whose
    /// optimiser or settings the trainer rejects (an unknown `optim.kind`, no epochs, a learning
    /// rate that is not a positive number).
    pub fn trainer<'a>(&self, net: &'a dyn Module, store: &ParamStore) -> Result<Trainer<'a>> {
        let trainer = Trainer::new(
            net,
            store.clone(),
            optimizer(self.cfg)?,
            self.settings.clone(),
            self.stream.rng(self.cfg.seed),
        )?;
        // `bayes.eval_every_epoch`: the Monte Carlo predictive after every epoch (Bayesian
        // classifiers; a deterministic network has only the one predictive)
        let every = self.cfg.bayes.eval_every_epoch.as_str();
        Ok(if every != "mean" && self.cfg.is_bayesian() {
            trainer.with_evaluation(Box::new(secateur_inference::evaluate::McEvaluation {
                sampling: sampling(self.cfg)?,
                samples: self.cfg.bayes.eval_samples,
                with_mean: every == "both",
            }))
        } else {
            trainer
        })
    }

    /// Training batches of an image set: shuffled each epoch, `data.batch_size` examples,
    /// normalised by `norm`, augmented when `data.augment` (random crops of the image padded by 4
    /// zero pixels, horizontal flips with probability ½), in the model's dtype.
    pub fn image_batches<'s>(&self, set: &'s ImageSet, norm: &Normalizer, dev: &Device) -> Result<ImageBatches<'s>> {
        let cfg = self.cfg;
        let augment = cfg.data.augment.then_some(Augment { pad: 4, flip: true });
        Ok(
            ImageBatches::new(set, norm.clone(), cfg.data.batch_size, true, augment, dev.clone())
                .with_dtype(cfg.model.dtype()?),
        )
    }

    /// Training batches of a table: shuffled each epoch, `data.batch_size` rows, standardised
    /// by `std`.
    pub fn table_batches<'s>(&self, set: &'s TableSet, std: &Standardizer, dev: &Device) -> TableBatches<'s> {
        TableBatches::new(set, std.clone(), self.cfg.data.batch_size, true, dev.clone())
    }
}

/// Evaluation batches of an image set: in order, `data.eval_batch_size` examples, normalised by
/// `norm`, not augmented, in the model's dtype.
pub fn eval_image_batches<'s>(
    cfg: &StudyConfig,
    set: &'s ImageSet,
    norm: &Normalizer,
    dev: &Device,
) -> Result<ImageBatches<'s>> {
    Ok(
        ImageBatches::new(set, norm.clone(), cfg.data.eval_batch_size, false, None, dev.clone())
            .with_dtype(cfg.model.dtype()?),
    )
}

/// Evaluation batches of a table: in order, `data.eval_batch_size` rows, standardised by `std`.
pub fn eval_table_batches<'s>(
    cfg: &StudyConfig,
    set: &'s TableSet,
    std: &Standardizer,
    dev: &Device,
) -> TableBatches<'s> {
    TableBatches::new(set, std.clone(), cfg.data.eval_batch_size, false, dev.clone())
}
