//! The commands behind `secateur prune` and `secateur scores`: score a model's weights with a
//! pruning criterion of `secateur-pruning`, allocate masks, and write masks, scores and a
//! per-layer table.
//!
//! The second-order criteria (GraSP, Hutchinson, HP, HTS) need Hessian-vector products by double
//! backpropagation, which candle only keeps in a process started with
//! `CANDLE_GRAD_DO_NOT_DETACH=1` ([`secateur_kernels::double_backprop`]); the `secateur` binary
//! runs itself again with it for the commands that need it ([`crate::cli::Cli::needs_double_backprop`]),
//! and [`prune_model`] refuses, naming the variable, where it is missing. Nothing here changes the
//! environment.
//!
//! **Random streams.** Batch-norm warm-up shuffles the training set from a stream of its own
//! ([`SeedStream::BnWarmup`]), so that the scoring examples, the Rademacher probes and random
//! scores, all drawn from [`SeedStream::Prune`], are the same with and without warm-up for a
//! seed: a paired comparison that differs only in the warm-up.

use crate::atomic;
use crate::commands::{build_model, load_data};
use crate::config::StudyConfig;
use crate::data::{ImageSet, Normalizer};
use crate::error::{ExpError, Result};
use crate::loader::ImageBatches;
use crate::seed_stream::SeedStream;
use candle_core::{DType, Device, Tensor};
use secateur_bayes::{ParamStore, Sampling, SeededRng};
use secateur_models::Network;
use secateur_pruning::allocate::{prune_iteratively, IterativeSchedule};
use secateur_pruning::criteria::HutchinsonOptions;
use secateur_pruning::diagnose::LayerCurvature;
use secateur_pruning::mask::{save_scores, LayerTable};
use secateur_pruning::{
    criterion, Allocation, CriterionOptions, Exclusions, Geometry, MaskSet, Scope, Scores, ScoringContext, ScoringData,
};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    /// (1 is one-shot; a criterion's usual number is its registry entry's `default_rounds`,
    /// SynFlow's 100).
    pub rounds: usize,
    /// Scoring examples per class (10 in Tanaka et al. 2020 and Gollini Navarrete et al. 2025).
    pub samples_per_class: usize,
    /// Keep the first weight layer dense.
    pub keep_first: bool,
    /// Keep the last weight layer (the classifier) dense.
    pub keep_last: bool,
    /// Keep every convolution dense: prune the fully connected layers only.
    pub keep_conv: bool,
    /// Options of the criteria that have them (Hutchinson's batch size and probes).
    pub options: CriterionOptions,
}

impl PruneSpec {
    /// Refuses an unknown criterion, a sparsity outside `[0, 1)`, zero rounds or zero samples.
    pub fn validate(&self) -> Result<()> {
        criterion::entry(&self.criterion).map_err(|e| ExpError::config("--criterion", e.to_string()))?;
        self.options
            .hutchinson
            .validate()
            .map_err(|e| ExpError::config("--probes/--hessian-batch-size", e.to_string()))?;
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

    /// Whether the criterion needs double backpropagation (its registry entry; false for an
    /// unknown name).
    pub fn second_order(&self) -> bool {
        criterion::entry(&self.criterion).is_ok_and(|e| e.needs_double_backprop)
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
    /// The training-set indices of the scoring examples, in scoring order.
    pub scoring_examples: Vec<usize>,
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
/// scoring data (normalised like training batches, no augmentation, in the model's dtype), and
/// their indices in the training set.
fn scoring_data(
    data: &PruneData,
    per_class: usize,
    dtype: DType,
    rng: &mut SeededRng,
) -> Result<(ScoringData, Vec<usize>)> {
    let labels = Tensor::from_vec(data.train.labels.clone(), data.train.len(), &Device::Cpu)?;
    let idx = criterion::per_class_indices(&labels, per_class, data.classes, rng)?;
    let subset = data.train.subset(&idx)?;
    let mut batches =
        ImageBatches::new(&subset, data.norm.clone(), subset.len(), false, None, Device::Cpu).with_dtype(dtype);
    Ok((ScoringData::from_batches(&mut batches, None, 100, rng)?, idx))
}

/// A model ready to be scored: built, weights loaded, batch norm warmed up, scoring examples
/// drawn, and the generator positioned after that draw.
struct Scoring {
    net: Network,
    store: ParamStore,
    data: ScoringData,
    examples: Vec<usize>,
    rng: SeededRng,
}

impl Scoring {
    /// Builds the config's model (its seed's initialisation, or `weights` when given, loaded
    /// strictly), warms up batch norm over `warmup_batches` shuffled training batches (its own
    /// stream, [`SeedStream::BnWarmup`]) and draws `per_class` scoring examples per class
    /// ([`SeedStream::Prune`]).
    fn prepare(
        cfg: &StudyConfig,
        data: &PruneData,
        weights: Option<&HashMap<String, Tensor>>,
        warmup_batches: usize,
        per_class: usize,
    ) -> Result<Self> {
        let dev = Device::Cpu;
        let (net, store) = build_model(cfg, data.input, data.classes, &dev)?;
        if let Some(w) = weights {
            store.load(w)?;
        }
        let dtype = cfg.model.dtype()?;
        if warmup_batches > 0 {
            let mut batches = ImageBatches::new(
                &data.train,
                data.norm.clone(),
                cfg.data.batch_size,
                true,
                None,
                dev.clone(),
            )
            .with_dtype(dtype);
            secateur_pruning::bn_warmup::warm_up_batches(
                &net,
                &mut batches,
                Some(warmup_batches),
                Sampling::Mean,
                &mut SeedStream::BnWarmup.rng(cfg.seed),
            )?;
        }
        let mut rng = SeedStream::Prune.rng(cfg.seed);
        let (scoring, examples) = scoring_data(data, per_class, dtype, &mut rng)?;
        Ok(Self {
            net,
            store,
            data: scoring,
            examples,
            rng,
        })
    }
}

/// The allocation of `spec` (sparsity, scope, and the first/last-layer and convolution
/// exclusions resolved on the configured network's geometry), with that geometry.
pub(crate) fn allocation(cfg: &StudyConfig, data: &PruneData, spec: &PruneSpec) -> Result<(Allocation, Geometry)> {
    let geom = crate::commands::geometry(cfg, data.input, data.classes)?;
    let exclude = Exclusions {
        first_layer: spec.keep_first,
        last_layer: spec.keep_last,
        convolutions: spec.keep_conv,
        ..Default::default()
    }
    .resolve(Some(&geom))?;
    Ok((Allocation::new(spec.sparsity, spec.scope).with_exclude(exclude), geom))
}

/// Builds the config's model (its seed's initialisation, or `weights` when given), warms up
/// batch norm, scores with the criterion, allocates and applies the masks; `weights` are loaded
/// strictly. A second-order criterion needs a process started with double backpropagation (an
/// error naming the variable otherwise). The posterior criteria read `posterior` when given (a
/// run's `[posterior]`: SWAG, Laplace, an ensemble), the probabilistic layers otherwise;
/// `adam-fisher` reads `moments`, the trained run's optimiser state ([`optimizer_moments`]).
pub fn prune_model(
    cfg: &StudyConfig,
    data: &PruneData,
    weights: Option<&HashMap<String, Tensor>>,
    spec: &PruneSpec,
    posterior: Option<&dyn secateur_inference::posterior::Posterior>,
    moments: Option<&BTreeMap<String, Tensor>>,
) -> Result<Pruned> {
    spec.validate()?;
    if spec.second_order() {
        secateur_kernels::double_backprop::require(&format!("criterion `{}`", spec.criterion))
            .map_err(|e| ExpError::config("--criterion", e.to_string()))?;
    }
    let Scoring {
        net,
        store,
        data: scoring,
        examples: scoring_examples,
        mut rng,
    } = Scoring::prepare(cfg, data, weights, spec.bn_warmup_batches, spec.samples_per_class)?;
    let (allocation, geom) = allocation(cfg, data, spec)?;
    let crit = criterion::build(&spec.criterion, &spec.options)?;
    let mut cx = ScoringContext::new(&net, &store, Some(&scoring), &mut rng);
    cx.posterior = posterior;
    cx.optimizer_moments = moments;
    let schedule = IterativeSchedule {
        rounds: spec.rounds,
        final_sparsity: spec.sparsity,
    };
    // Scoring is computation only: the pool's other workers poll for its kernels (runtime::warm).
    let (masks, scores) = secateur_kernels::runtime::warm(|| -> Result<_> {
        Ok(if spec.rounds == 1 {
            let scores = crit.score(&mut cx)?;
            let masks = allocation.masks(&scores)?;
            masks.apply(&store)?;
            (masks, scores)
        } else {
            let masks = prune_iteratively(crit.as_ref(), &mut cx, &allocation, &schedule)?;
            // The scores of the final, pruned state.
            (masks, crit.score(&mut cx)?)
        })
    })?;
    let table = masks.layer_table(&store, Some(&geom))?;
    Ok(Pruned {
        masks,
        scores,
        table,
        scoring_examples,
    })
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
    /// Output directory (created). One that already holds a prune's output
    /// ([`PRUNE_OUTPUTS`]) or a run (`config.toml`) is refused unless `force`.
    pub out: PathBuf,
    /// Data directory searched first.
    pub data_dir: Option<PathBuf>,
    /// Replace an earlier prune's files in `out`, or write into a run directory.
    pub force: bool,
}

/// The files `secateur prune` writes into its output directory.
pub const PRUNE_OUTPUTS: [&str; 5] = [
    "masks.safetensors",
    "scores.safetensors",
    "layers.md",
    PRUNE_SUMMARY,
    crate::structured::BN_STATS_FILE,
];

/// The summary a prune writes (criterion, sparsity, and for `prune --run` the run pruned).
pub const PRUNE_SUMMARY: &str = "prune.json";

/// Refuses, unless `force`, an output directory of `prune` that already holds one of
/// [`PRUNE_OUTPUTS`] or is a run directory (holds `config.toml`), naming the directory and the
/// file found.
pub(crate) fn refuse_existing_prune(out: &Path, force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    if let Some(f) = PRUNE_OUTPUTS.iter().find(|f| out.join(f).exists()) {
        return Err(ExpError::io(
            out,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("already holds {f} (an earlier prune's output); refusing to overwrite it: choose another --out, or give --force to replace it"),
            ),
        ));
    }
    if out.join("config.toml").exists() {
        return Err(ExpError::io(
            out,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "is a run directory (it holds config.toml); refusing to write a prune's files into it: choose another --out, or give --force",
            ),
        ));
    }
    Ok(())
}

/// `secateur prune`: writes `masks.safetensors` (0/1 per prunable weight, PyTorch-style names),
/// `scores.safetensors`, `layers.md` (per-layer table) and `prune.json` (summary) into `out`.
/// An `out` that already holds any of them, or a run, is refused before any work unless
/// `opts.force`.
pub fn prune(opts: &PruneOptions) -> Result<Map<String, Value>> {
    opts.spec.validate()?;
    refuse_existing_prune(&opts.out, opts.force)?;
    let (cfg, weights, posterior) = match (&opts.run, &opts.config) {
        (Some(run), None) => {
            let cfg = StudyConfig::from_file(&run.join("config.toml"), &opts.overrides)?;
            // a run's `[posterior]` is what the posterior criteria read; an ensemble's network
            // is its members' mean
            let posterior = crate::commands::posterior::Fitted::load(&cfg, &crate::store::RunDir::open(run)?)?;
            let w = match &posterior {
                Some(crate::commands::posterior::Fitted::Ensemble(e)) => {
                    use secateur_inference::posterior::Posterior;
                    e.mean()?.into_iter().collect()
                }
                _ => crate::store::read_finite_safetensors(&run.join("weights.safetensors"))?,
            };
            (cfg, Some(w), posterior)
        }
        (None, Some(c)) => (StudyConfig::from_file(c, &opts.overrides)?, None, None),
        _ => {
            return Err(ExpError::config(
                "prune",
                "give exactly one of --run DIR or --config FILE",
            ))
        }
    };
    crate::learned::refuse(&cfg, "`secateur prune`")?;
    let data = PruneData::load(&cfg, opts.data_dir.as_deref())?;
    let moments = match &opts.run {
        Some(run) => optimizer_moments(&crate::store::RunDir::open(run)?)?,
        None => None,
    };
    let pruned = prune_model(
        &cfg,
        &data,
        weights.as_ref(),
        &opts.spec,
        posterior.as_ref().map(|p| p.posterior()),
        moments.as_ref(),
    )?;
    std::fs::create_dir_all(&opts.out).map_err(|e| ExpError::io(&opts.out, e))?;
    let masks_file = opts.out.join("masks.safetensors");
    pruned.masks.save(&masks_file)?;
    save_scores(&pruned.scores, opts.out.join("scores.safetensors"))?;
    atomic::write_string(&opts.out.join("layers.md"), &pruned.table.to_string())?;
    let mut m = Map::new();
    m.insert("criterion".into(), opts.spec.criterion.clone().into());
    m.insert("target_sparsity".into(), opts.spec.sparsity.into());
    m.insert("bn_warmup_batches".into(), opts.spec.bn_warmup_batches.into());
    m.insert("rounds".into(), opts.spec.rounds.into());
    m.extend(mask_summary(&pruned.masks, &pruned.table, opts.spec.scope, &cfg)?);
    if let Some(run) = &opts.run {
        // the run, relative to `out` where it can be (so that both can move together), so
        // that `report` can evaluate the pruned network
        m.insert("run".into(), relative_to(run, &opts.out).display().to_string().into());
        m.insert("keep_conv".into(), opts.spec.keep_conv.into());
    }
    write_summary(&opts.out, &m)?;
    Ok(m)
}

/// The part of `prune.json` every method writes about its mask: reached sparsity, kept and
/// prunable weights, scope, FLOPs (dense and kept, where the geometry gives them), the layers
/// left without a weight (`collapsed_layers`) or nearly so (`near_collapse_layers`), and the
/// architecture and seed.
pub(crate) fn mask_summary(
    masks: &MaskSet,
    table: &LayerTable,
    scope: Scope,
    cfg: &StudyConfig,
) -> Result<Map<String, Value>> {
    let names = |v: Vec<&str>| Value::Array(v.into_iter().map(|s| s.to_string().into()).collect());
    let mut m = Map::new();
    m.insert("sparsity".into(), masks.sparsity()?.into());
    m.insert("kept".into(), masks.kept()?.into());
    m.insert("prunable".into(), masks.total().into());
    m.insert("scope".into(), scope.name().into());
    if let (Some(f), Some(k)) = (table.flops(), table.flops_kept()) {
        m.insert("flops".into(), f.into());
        m.insert("flops_kept".into(), k.into());
    }
    m.insert("collapsed_layers".into(), names(table.collapsed()));
    m.insert("near_collapse_layers".into(), names(table.near_collapse()));
    m.insert("arch".into(), cfg.model.arch.clone().into());
    m.insert("seed".into(), cfg.seed.into());
    Ok(m)
}

/// Writes `m` as `prune.json` ([`PRUNE_SUMMARY`]) into `out`, atomically.
pub(crate) fn write_summary(out: &Path, m: &Map<String, Value>) -> Result<()> {
    let json = serde_json::to_string_pretty(&Value::Object(m.clone()))
        .map_err(|e| ExpError::io(out, std::io::Error::other(e)))?;
    atomic::write_string(&out.join(PRUNE_SUMMARY), &json)
}

/// The optimiser state of a trained run, from its newest checkpoint's `optimizer.safetensors`
/// (Adam's `<param>.exp_avg` and `<param>.exp_avg_sq`, …), for `adam-fisher`; `None` for a run
/// without one.
pub fn optimizer_moments(run: &crate::store::RunDir) -> Result<Option<BTreeMap<String, Tensor>>> {
    Ok(run
        .read_checkpoint_part("optimizer.safetensors")?
        .map(|m| m.into_iter().collect()))
}

/// `target` as a path from the directory `base` (`../run`), or `target` made absolute where the
/// two share no prefix (or either cannot be resolved).
pub(crate) fn relative_to(target: &Path, base: &Path) -> PathBuf {
    let (Ok(t), Ok(b)) = (target.canonicalize(), base.canonicalize()) else {
        return std::path::absolute(target).unwrap_or_else(|_| target.to_path_buf());
    };
    let (tc, bc): (Vec<_>, Vec<_>) = (t.components().collect(), b.components().collect());
    let common = tc.iter().zip(&bc).take_while(|(a, b)| a == b).count();
    if common <= 1 {
        return t;
    }
    let mut out = PathBuf::new();
    for _ in common..bc.len() {
        out.push("..");
    }
    out.extend(&tc[common..]);
    out
}

/// Options of `secateur scores`.
#[derive(Debug, Clone)]
pub struct ScoresOptions {
    /// Criterion name.
    pub criterion: String,
    /// The weights to score (safetensors with the model's parameter names); `None`: the
    /// config's seed initialisation (what pruning at initialisation scores).
    pub weights: Option<PathBuf>,
    /// The config of the model and data.
    pub config: PathBuf,
    /// `--set` overrides of the config.
    pub overrides: Vec<String>,
    /// Output file (safetensors).
    pub out: PathBuf,
    /// Scoring examples per class.
    pub samples_per_class: usize,
    /// Options of the criteria that have them.
    pub options: CriterionOptions,
    /// Data directory searched first.
    pub data_dir: Option<PathBuf>,
    /// Also compare Hutchinson's diagonal (with `options.hutchinson`) with the exact
    /// Gauss–Newton diagonal on the same weights and scoring data, per layer.
    pub diagnose: bool,
    /// Replace an existing `out` (and, with `diagnose`, an existing diagnosis file).
    pub force: bool,
}

/// What `secateur scores` produced.
#[derive(Debug, Clone)]
pub struct ScoresOutput {
    /// Number of score tensors written.
    pub tensors: usize,
    /// The diagnosis, with `diagnose`.
    pub diagnosis: Option<CurvatureDiagnosis>,
}

/// `secateur scores`: the criterion's scores of the given weights (a safetensors file with the
/// model's parameter names, e.g. exported from another implementation; or the config's seed
/// initialisation) for the config's model and data, written to `out` as safetensors under the
/// prunable weights' names. With `diagnose`, also the per-layer comparison of Hutchinson's
/// diagonal with the exact Gauss–Newton diagonal ([`CurvatureDiagnosis`]), written beside `out`
/// as `<out stem>.diagnose.md`. An existing `out` (or diagnosis file) is refused before any work
/// unless `opts.force`; a directory is always refused.
pub fn scores(opts: &ScoresOptions) -> Result<ScoresOutput> {
    let existing = |path: &Path, what: &str| {
        ExpError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("already exists; refusing to overwrite it with {what}: choose another --out, or give --force to replace it"),
            ),
        )
    };
    if opts.out.is_dir() {
        return Err(ExpError::io(
            &opts.out,
            std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "is a directory; --out names the scores file (safetensors)",
            ),
        ));
    }
    if !opts.force {
        if opts.out.exists() {
            return Err(existing(&opts.out, "scores"));
        }
        let d = diagnosis_path(&opts.out);
        if opts.diagnose && d.exists() {
            return Err(existing(&d, "the diagnosis"));
        }
    }
    let cfg = StudyConfig::from_file(&opts.config, &opts.overrides)?;
    let w = opts
        .weights
        .as_deref()
        .map(crate::store::read_finite_safetensors)
        .transpose()?;
    let data = PruneData::load(&cfg, opts.data_dir.as_deref())?;
    let spec = PruneSpec {
        criterion: opts.criterion.clone(),
        sparsity: 0.0,
        scope: Scope::Global,
        bn_warmup_batches: 0,
        rounds: 1,
        samples_per_class: opts.samples_per_class,
        keep_first: false,
        keep_last: false,
        keep_conv: false,
        options: opts.options,
    };
    let pruned = prune_model(&cfg, &data, w.as_ref(), &spec, None, None)?;
    save_scores(&pruned.scores, &opts.out)?;
    let diagnosis = if opts.diagnose {
        let d = diagnose(
            &cfg,
            &data,
            w.as_ref(),
            opts.samples_per_class,
            &opts.options.hutchinson,
        )?;
        atomic::write_string(&diagnosis_path(&opts.out), &d.to_string())?;
        Some(d)
    } else {
        None
    };
    Ok(ScoresOutput {
        tensors: pruned.scores.len(),
        diagnosis,
    })
}

/// `<dir>/<stem>.diagnose.md` beside a scores file.
pub fn diagnosis_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{stem}.diagnose.md"))
}

/// Hutchinson's diagonal against the exact Gauss–Newton diagonal, per layer, on the same
/// weights and scoring examples (see [`secateur_pruning::diagnose`]), with the exact diagonal
/// itself checked against Hessian–vector products with unit vectors at 4 entries per layer.
#[derive(Debug, Clone)]
pub struct CurvatureDiagnosis {
    /// Hutchinson's batch size and probes.
    pub hutchinson: HutchinsonOptions,
    /// Scoring examples.
    pub examples: usize,
    /// Seconds for Hutchinson's diagonal.
    pub hutchinson_seconds: f64,
    /// Seconds for the exact diagonal.
    pub ggn_seconds: f64,
    /// Per layer.
    pub layers: Vec<LayerCurvature>,
}

impl std::fmt::Display for CurvatureDiagnosis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "Hutchinson (batch size {}, {} probes per batch) vs the exact Gauss-Newton diagonal on {} scoring examples \
             ({:.2} s vs {:.2} s); Spearman rank correlations, and the share of negative entries (the exact diagonal of \
             a ReLU/max-pool network has none).\n",
            self.hutchinson.batch_size, self.hutchinson.probes, self.examples, self.hutchinson_seconds, self.ggn_seconds
        )?;
        write!(f, "{}", secateur_pruning::diagnose::table(&self.layers))
    }
}

/// Computes the [`CurvatureDiagnosis`] of the config's model (or `weights`) at `T = 200` (the
/// temperature of the HP and HTS criteria). Needs double backpropagation (Hutchinson).
pub fn diagnose(
    cfg: &StudyConfig,
    data: &PruneData,
    weights: Option<&HashMap<String, Tensor>>,
    per_class: usize,
    hutchinson: &HutchinsonOptions,
) -> Result<CurvatureDiagnosis> {
    secateur_kernels::double_backprop::require("--diagnose (Hutchinson's diagonal)")
        .map_err(|e| ExpError::config("--diagnose", e.to_string()))?;
    let Scoring {
        net,
        store,
        data: sd,
        mut rng,
        ..
    } = Scoring::prepare(cfg, data, weights, 0, per_class)?;
    let loss = secateur_pruning::Loss::with_temperature(200.0);
    let mut cx = ScoringContext::new(&net, &store, Some(&sd), &mut rng);
    let t0 = Instant::now();
    let (est, _) = secateur_pruning::criteria::hutchinson_diagonal(&mut cx, &loss, hutchinson)?;
    let hutchinson_seconds = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let (exact, _) = secateur_pruning::criteria::ggn_diagonal(&mut cx, &loss)?;
    let ggn_seconds = t0.elapsed().as_secs_f64();
    let theta: Scores = cx
        .targets()
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().clone()))
        .collect();
    let mut layers = secateur_pruning::diagnose::compare(&est, &exact, &theta)?;
    secateur_pruning::diagnose::check_against_hessian(&mut cx, &loss, &exact, 3, &mut layers)?;
    Ok(CurvatureDiagnosis {
        hutchinson: *hutchinson,
        examples: sd.len(),
        hutchinson_seconds,
        ggn_seconds,
        layers,
    })
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
