//! The commands behind `secateur prune` and `secateur scores`: score a model's weights with a
//! pruning criterion of `secateur-pruning`, allocate masks, and write masks, scores and a
//! per-layer table.
//!
//! Scoring runs on its own thread, which builds the model there: the second-order criteria
//! (GraSP, Hutchinson, HP, HTS) need Hessian-vector products by double backpropagation, which
//! candle only keeps for threads whose first backward pass runs with
//! `CANDLE_GRAD_DO_NOT_DETACH=1`. The variable is set for the scoring thread and removed when
//! it ends, so training on the calling thread keeps candle's cheaper first-order backward.

use crate::atomic;
use crate::commands::{build_model, load_data};
use crate::config::StudyConfig;
use crate::data::{ImageSet, Normalizer};
use crate::error::{ExpError, Result};
use crate::loader::ImageBatches;
use candle_core::{Device, Tensor};
use secateur_bayes::{ParamStore, Sampling, SeededRng};
use secateur_models::ModelSpec;
use secateur_pruning::allocate::{prune_iteratively, IterativeSchedule};
use secateur_pruning::mask::{save_scores, LayerTable};
use secateur_pruning::{
    criterion, geometry, Allocation, Exclusions, MaskSet, Scope, Scores, ScoringContext, ScoringData,
};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Seed sub-stream of the scoring data draw, BN warm-up order and random scores.
const STREAM_PRUNE: u64 = 5;

/// The criteria that need Hessian-vector products (double backpropagation).
pub const SECOND_ORDER: &[&str] = &["grasp", "hutchinson", "hp", "hts"];

/// How to prune: criterion, target, allocation and scoring data.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneSpec {
    /// Criterion name (one of [`secateur_pruning::criterion::CRITERIA`]).
    pub criterion: String,
    /// Target sparsity in `[0, 1)`: the fraction of prunable weights set to zero.
    pub sparsity: f64,
    /// Global or per-layer top-k.
    pub scope: Scope,
    /// Batch-norm warm-up: training-mode forward passes over this many training batches before
    /// scoring (0: none; Gollini Navarrete et al. 2025 use one pass over the training set).
    pub bn_warmup_batches: usize,
    /// Score-and-prune rounds with the exponential schedule `d^{t/T}` on the kept fraction
    /// (SynFlow: 100; 1 is one-shot).
    pub rounds: usize,
    /// Scoring examples per class (10 in Tanaka et al. 2020 and Gollini Navarrete et al. 2025).
    pub samples_per_class: usize,
    /// Keep the first weight layer dense.
    pub keep_first: bool,
    /// Keep the last weight layer (the classifier) dense.
    pub keep_last: bool,
}

impl PruneSpec {
    /// Refuses an unknown criterion, a sparsity outside `[0, 1)`, zero rounds or zero samples.
    pub fn validate(&self) -> Result<()> {
        criterion::by_name(&self.criterion).map_err(|e| ExpError::config("--criterion", e.to_string()))?;
        if !(0.0..1.0).contains(&self.sparsity) {
            return Err(ExpError::config(
                "--sparsity",
                format!("must be in [0, 1), got {}", self.sparsity),
            ));
        }
        if self.rounds == 0 {
            return Err(ExpError::config("--rounds", "must be at least 1"));
        }
        if self.samples_per_class == 0 {
            return Err(ExpError::config("--samples-per-class", "must be at least 1"));
        }
        Ok(())
    }

    /// Whether the criterion needs double backpropagation.
    pub fn second_order(&self) -> bool {
        SECOND_ORDER.contains(&self.criterion.as_str())
    }
}

/// What pruning produced.
#[derive(Debug, Clone)]
pub struct Pruned {
    /// The masks (1 = kept).
    pub masks: MaskSet,
    /// The criterion's scores (of the last round).
    pub scores: Scores,
    /// Per-layer sparsity, parameters and FLOPs.
    pub table: LayerTable,
}

/// The training split, its normaliser, the input shape and the class count of a config's data.
pub struct PruneData {
    /// Training images.
    pub train: ImageSet,
    /// Normalisation by the training set's statistics.
    pub norm: Normalizer,
    /// `[C, H, W]`.
    pub input: [usize; 3],
    /// Number of classes.
    pub classes: usize,
}

impl PruneData {
    /// Loads the config's data set (`data_dir` searched first).
    pub fn load(cfg: &StudyConfig, data_dir: Option<&Path>) -> Result<Self> {
        let data = load_data(cfg, data_dir)?;
        let norm = Normalizer::from_set(&data.train);
        let input = [data.train.channels, data.train.height, data.train.width];
        let classes = data.train.n_classes.max(data.test.n_classes) as usize;
        Ok(Self {
            train: data.train,
            norm,
            input,
            classes,
        })
    }
}

/// `per_class` training examples of each class, drawn without replacement with `rng`, as
/// scoring data (normalised like training batches, no augmentation).
fn scoring_data(data: &PruneData, per_class: usize, rng: &mut SeededRng) -> Result<ScoringData> {
    let labels = Tensor::from_vec(data.train.labels.clone(), data.train.len(), &Device::Cpu)?;
    let idx = criterion::per_class_indices(&labels, per_class, data.classes, rng)?;
    let subset = data.train.subset(&idx)?;
    let mut batches = ImageBatches::new(&subset, data.norm.clone(), subset.len(), false, None, Device::Cpu);
    Ok(ScoringData::from_batches(&mut batches, None, 100, rng)?)
}

/// Builds the config's model (its seed's initialisation, or `weights` when given), warms up
/// batch norm, scores with the criterion, allocates and applies the masks. Runs on a fresh
/// thread (see the module documentation); `weights` are loaded strictly.
pub fn prune_model(
    cfg: &StudyConfig,
    data: &PruneData,
    weights: Option<&HashMap<String, Tensor>>,
    spec: &PruneSpec,
) -> Result<Pruned> {
    spec.validate()?;
    // Set the variable for the scoring thread, and remove it afterwards only if it was set here
    // (a caller that set it, like a parallel study, keeps it).
    let set_here = spec.second_order() && std::env::var_os("CANDLE_GRAD_DO_NOT_DETACH").is_none();
    if set_here {
        secateur_pruning::criteria::enable_double_backprop();
    }
    let out = std::thread::scope(|s| {
        // A pool of its own, as large as the caller's (see runtime::in_pool_of).
        let threads = rayon::current_num_threads();
        s.spawn(move || crate::runtime::in_pool_of(threads, || score_on_this_thread(cfg, data, weights, spec)))
            .join()
            .unwrap_or_else(|_| Err(ExpError::config("prune", "the scoring thread panicked")))
    });
    if set_here {
        std::env::remove_var("CANDLE_GRAD_DO_NOT_DETACH");
    }
    out
}

fn score_on_this_thread(
    cfg: &StudyConfig,
    data: &PruneData,
    weights: Option<&HashMap<String, Tensor>>,
    spec: &PruneSpec,
) -> Result<Pruned> {
    let dev = Device::Cpu;
    let (net, store) = build_model(cfg, data.input, data.classes, &dev)?;
    if let Some(w) = weights {
        store.load(w)?;
    }
    let mut rng = SeededRng::substream(cfg.seed, STREAM_PRUNE);
    if spec.bn_warmup_batches > 0 {
        let mut batches = ImageBatches::new(
            &data.train,
            data.norm.clone(),
            cfg.data.batch_size,
            true,
            None,
            dev.clone(),
        );
        secateur_pruning::bn_warmup::warm_up_batches(
            &net,
            &mut batches,
            Some(spec.bn_warmup_batches),
            Sampling::Mean,
            &mut rng,
        )?;
    }
    let scoring = scoring_data(data, spec.samples_per_class, &mut rng)?;
    let model_spec = ModelSpec::new(cfg.model.arch.clone(), data.input, data.classes);
    let geom = geometry::record(&model_spec)?;
    let exclude = Exclusions {
        first_layer: spec.keep_first,
        last_layer: spec.keep_last,
        ..Default::default()
    }
    .resolve(Some(&geom))?;
    let allocation = match spec.scope {
        Scope::Global => Allocation::global(spec.sparsity),
        Scope::PerLayer => Allocation::per_layer(spec.sparsity),
    }
    .with_exclude(exclude);
    let crit = criterion::by_name(&spec.criterion)?;
    let mut cx = ScoringContext::new(&net, &store, Some(&scoring), &mut rng);
    let schedule = IterativeSchedule {
        rounds: spec.rounds,
        final_sparsity: spec.sparsity,
    };
    let (masks, scores) = if spec.rounds == 1 {
        let scores = crit.score(&mut cx)?;
        let masks = allocation.masks(&scores)?;
        masks.apply(&store)?;
        (masks, scores)
    } else {
        let masks = prune_iteratively(crit.as_ref(), &mut cx, &allocation, &schedule)?;
        // The scores of the final, pruned state.
        (masks, crit.score(&mut cx)?)
    };
    let table = masks.layer_table(&store, Some(&geom))?;
    Ok(Pruned { masks, scores, table })
}

/// Options of `secateur prune`.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// How to prune.
    pub spec: PruneSpec,
    /// A finished run to prune (its `config.toml` and `weights.safetensors`).
    pub run: Option<PathBuf>,
    /// A config whose freshly initialised model is pruned (pruning at initialisation).
    pub config: Option<PathBuf>,
    /// `--set` overrides of the config.
    pub overrides: Vec<String>,
    /// Output directory (created; files are replaced atomically).
    pub out: PathBuf,
    /// Data directory searched first.
    pub data_dir: Option<PathBuf>,
}

/// `secateur prune`: writes `masks.safetensors` (0/1 per prunable weight, PyTorch-style names),
/// `scores.safetensors`, `layers.md` (per-layer table) and `prune.json` (summary) into `out`.
pub fn prune(opts: &PruneOptions) -> Result<Map<String, Value>> {
    opts.spec.validate()?;
    let (cfg, weights) = match (&opts.run, &opts.config) {
        (Some(run), None) => {
            let cfg = StudyConfig::from_file(&run.join("config.toml"), &opts.overrides)?;
            let w = atomic::read_safetensors(&run.join("weights.safetensors"))?;
            (cfg, Some(w))
        }
        (None, Some(c)) => (StudyConfig::from_file(c, &opts.overrides)?, None),
        _ => {
            return Err(ExpError::config(
                "prune",
                "give exactly one of --run DIR or --config FILE",
            ))
        }
    };
    let data = PruneData::load(&cfg, opts.data_dir.as_deref())?;
    let pruned = prune_model(&cfg, &data, weights.as_ref(), &opts.spec)?;
    std::fs::create_dir_all(&opts.out).map_err(|e| ExpError::io(&opts.out, e))?;
    let masks_file = opts.out.join("masks.safetensors");
    pruned.masks.save(&masks_file)?;
    save_scores(&pruned.scores, opts.out.join("scores.safetensors"))?;
    atomic::write_string(&opts.out.join("layers.md"), &pruned.table.to_string())?;
    let mut m = Map::new();
    m.insert("criterion".into(), opts.spec.criterion.clone().into());
    m.insert("target_sparsity".into(), opts.spec.sparsity.into());
    m.insert("sparsity".into(), pruned.masks.sparsity()?.into());
    m.insert("kept".into(), pruned.masks.kept()?.into());
    m.insert("prunable".into(), pruned.masks.total().into());
    m.insert(
        "scope".into(),
        match opts.spec.scope {
            Scope::Global => "global",
            Scope::PerLayer => "layer",
        }
        .into(),
    );
    m.insert("bn_warmup_batches".into(), opts.spec.bn_warmup_batches.into());
    m.insert("rounds".into(), opts.spec.rounds.into());
    if let (Some(f), Some(k)) = (pruned.table.flops(), pruned.table.flops_kept()) {
        m.insert("flops".into(), f.into());
        m.insert("flops_kept".into(), k.into());
    }
    let collapsed: Vec<Value> = pruned
        .table
        .collapsed()
        .into_iter()
        .map(|s| s.to_string().into())
        .collect();
    m.insert("collapsed_layers".into(), Value::Array(collapsed));
    m.insert("arch".into(), cfg.model.arch.clone().into());
    m.insert("seed".into(), cfg.seed.into());
    let json = serde_json::to_string_pretty(&Value::Object(m.clone()))
        .map_err(|e| ExpError::io(&opts.out, std::io::Error::other(e)))?;
    atomic::write_string(&opts.out.join("prune.json"), &json)?;
    Ok(m)
}

/// `secateur scores`: the criterion's scores of the given weights (a safetensors file with the
/// model's parameter names, e.g. exported from another implementation) for the config's model
/// and data, written to `out` as safetensors under the prunable weights' names.
pub fn scores(
    criterion_name: &str,
    weights: &Path,
    config: &Path,
    overrides: &[String],
    out: &Path,
    samples_per_class: usize,
    data_dir: Option<&Path>,
) -> Result<usize> {
    let cfg = StudyConfig::from_file(config, overrides)?;
    let w = atomic::read_safetensors(weights)?;
    let data = PruneData::load(&cfg, data_dir)?;
    let spec = PruneSpec {
        criterion: criterion_name.to_string(),
        sparsity: 0.0,
        scope: Scope::Global,
        bn_warmup_batches: 0,
        rounds: 1,
        samples_per_class,
        keep_first: false,
        keep_last: false,
    };
    let pruned = prune_model(&cfg, &data, Some(&w), &spec)?;
    save_scores(&pruned.scores, out)?;
    Ok(pruned.scores.len())
}

/// Loads a mask file for a model, checks it against the model's prunable weights (names and
/// shapes; a mismatch is refused naming the tensor) and applies it.
pub fn load_masks(path: &Path, store: &ParamStore) -> Result<MaskSet> {
    let masks = MaskSet::load(path, &Device::Cpu)
        .map_err(|e| ExpError::config("--masks", format!("{}: {e}", path.display())))?;
    masks
        .check(store)
        .map_err(|e| ExpError::config("--masks", format!("{}: {e}", path.display())))?;
    masks.apply(store)?;
    Ok(masks)
}
