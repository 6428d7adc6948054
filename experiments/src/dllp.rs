//! DLLP on a trained run: `secateur prune --method dllp` and the `dllp` cells of the
//! compression study. The method itself, and which of its choices are ours, is
//! [`secateur_pruning::dllp`]; this module feeds it the run's training data and reads its
//! particles back as masks and as a predictive.
//!
//! Its settings are a `[dllp]` table (every key optional; unknown keys refused), given to
//! `prune --method dllp --dllp-config FILE` or as `[compression.dllp]` in a compression study:
//!
//! ```toml
//! [dllp]
//! particles = 10          # n
//! epochs = 2              # passes over the training set of Stein steps, one mini-batch each
//! step = 1e-3             # AdaGrad step of the weights
//! mask_step = 0.05        # AdaGrad step of the mask logits
//! temperature = 0.6667    # Concrete temperature τ
//! weight_prior_std = 0.1  # σ_w of N(ŵ, σ_w²)
//! init_keep = 0.98        # initial inclusion σ(s₀)
//! jitter = 0.01           # initial weight jitter, relative to each tensor's RMS
//! repulsive = true        # false: independent particles (no kernel)
//! ```
//!
//! **Steps.** Every step draws one mini-batch of the run's `data.batch_size` from the training
//! split as `train` saw it (shuffled every pass, augmented as the config says, from
//! [`SeedStream::Dllp`], which also draws the particles' initial jitter), and moves every
//! particle on it: the likelihood is the batch's mean cross-entropy of the network in evaluation
//! mode (batch norm at the dense run's statistics, no dropout), times the training-set size.
//! **Fine-tune** ([`finetune`]): the hardened particles take `epochs` more passes of Stein steps
//! with the mask held, shuffles from [`SeedStream::Finetune`] (as every fine-tune of the
//! compression study). **Prediction**: the model average over the particles
//! (`secateur_inference::posterior::predict_bma`), with per-example entropy and mutual
//! information.

use crate::commands::{build_model, eval_image_batches, TrainingSetup};
use crate::config::StudyConfig;
use crate::data::ImageSet;
use crate::error::{ExpError, Result};
use crate::prune::{PruneData, PruneSpec};
use crate::seed_stream::SeedStream;
use candle_core::{Device, Tensor};
use indicatif::ProgressBar;
use secateur_bayes::{Ctx, Module, ParamStore, Sampling, SeededRng};
use secateur_inference::batches::Batches;
use secateur_inference::posterior::{predict_bma, BmaSettings};
use secateur_inference::predict::McPredictions;
use secateur_models::Network;
use secateur_pruning::dllp::{Dllp, DllpSettings};
use secateur_pruning::mask::LayerTable;
use secateur_pruning::{MaskSet, Scores};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The `[dllp]` table (see the [module documentation](self)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DllpConfig {
    /// Particles `n`. Default 10.
    pub particles: usize,
    /// Passes over the training set of Stein steps. Default 2.
    pub epochs: usize,
    /// AdaGrad step of the weights. Default 1e-3.
    pub step: f64,
    /// AdaGrad step of the mask logits. Default 0.05.
    pub mask_step: f64,
    /// Concrete temperature τ. Default 2/3.
    pub temperature: f64,
    /// σ_w of the weight prior around the dense weights. Default 0.1.
    pub weight_prior_std: f64,
    /// Initial inclusion σ(s₀). Default 0.98.
    pub init_keep: f64,
    /// Initial weight jitter, relative to each tensor's RMS. Default 0.01.
    pub jitter: f64,
    /// The kernel's repulsion (false: independent particles). Default true.
    pub repulsive: bool,
}

impl Default for DllpConfig {
    fn default() -> Self {
        let s = DllpSettings::default();
        Self {
            particles: s.particles,
            epochs: 2,
            step: s.step,
            mask_step: s.mask_step,
            temperature: s.temperature,
            weight_prior_std: s.weight_prior_std,
            init_keep: s.init_keep,
            jitter: s.jitter,
            repulsive: s.repulsive,
        }
    }
}

/// A file whose only table is `[dllp]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DllpFile {
    #[serde(default)]
    dllp: DllpConfig,
}

impl DllpConfig {
    /// The settings of [`secateur_pruning::dllp`].
    pub fn settings(&self) -> DllpSettings {
        DllpSettings {
            particles: self.particles,
            step: self.step,
            mask_step: self.mask_step,
            temperature: self.temperature,
            weight_prior_std: self.weight_prior_std,
            init_keep: self.init_keep,
            jitter: self.jitter,
            repulsive: self.repulsive,
        }
    }

    /// Refuses settings that cannot run (the message names the field).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.epochs == 0 {
            return Err("dllp.epochs must be at least 1".into());
        }
        self.settings().validate().map_err(|e| e.to_string())
    }

    /// Reads a file holding a `[dllp]` table; an unknown key or an impossible value is refused,
    /// naming the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let src = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ExpError::io(path, e))?;
        let f: DllpFile = toml::from_str(&text).map_err(|e| ExpError::config(&src, e.to_string()))?;
        f.dllp.validate().map_err(|m| ExpError::config(&src, m))?;
        Ok(f.dllp)
    }
}

/// What a DLLP run produced.
pub struct DllpOutcome {
    /// The model the particles are networks of.
    pub net: Network,
    /// Its parameters (holding the dense weights again after the run).
    pub store: ParamStore,
    /// The particles, hardened to `masks`.
    pub dllp: Dllp,
    /// The final mask (top-k of the inclusion probabilities).
    pub masks: MaskSet,
    /// Posterior inclusion probabilities by logical name (the scores the mask is read from).
    pub inclusion: Scores,
    /// Their standard deviation over particles.
    pub inclusion_sd: Scores,
    /// Mean and standard deviation over particles of the fraction of the mask's kept weights
    /// that the particle's own top-k keeps.
    pub agreement: (f64, f64),
    /// Per-layer sparsity, parameters and FLOPs of the mask.
    pub table: LayerTable,
}

/// Refuses a run DLLP does not apply to: Bayesian layers or a `[posterior]` (DLLP builds its
/// prior from one trained deterministic network).
pub fn check_applicable(cfg: &StudyConfig) -> std::result::Result<(), String> {
    if cfg.is_bayesian() || !cfg.posterior.is_none() {
        return Err(format!(
            "dllp remodels one trained deterministic network as its prior, and this run has layers `{}`{}; train \
             the architecture with model.layers = \"deterministic\" and no [posterior]",
            cfg.model.layers,
            if cfg.posterior.is_none() {
                String::new()
            } else {
                format!(" and a [posterior] of kind `{}`", cfg.posterior.kind)
            }
        ));
    }
    if cfg.likelihood.is_regression() {
        return Err("dllp prunes classifiers (a categorical likelihood); this run is a regression".into());
    }
    Ok(())
}

/// `epochs` passes of Stein steps over the training split, one mini-batch each, shuffles and
/// augmentation from `rng`; the bar advances by one per step.
#[allow(clippy::too_many_arguments)]
fn stein_epochs(
    dllp: &mut Dllp,
    net: &Network,
    store: &ParamStore,
    cfg: &StudyConfig,
    data: &PruneData,
    epochs: usize,
    rng: &mut SeededRng,
    bar: &ProgressBar,
) -> Result<()> {
    let dev = Device::Cpu;
    let n = data.train.len();
    let setup = TrainingSetup::new(cfg, n)?;
    let mut batches = setup.image_batches(&data.train, &data.norm, &dev)?;
    for epoch in 0..epochs {
        batches.start_epoch(epoch, rng);
        for i in 0..batches.num_batches() {
            let (x, y) = batches.batch(i, rng)?;
            dllp.step(store, n, |_| {
                let mut eval_rng = SeededRng::new(0);
                let mut ctx = Ctx::eval(&mut eval_rng, Sampling::Mean);
                let logits = net.forward(&x, &mut ctx)?;
                secateur_bayes::nn::cross_entropy(&logits, &y)
            })?;
            bar.inc(1);
        }
    }
    Ok(())
}

/// A bar of `len` steps (hidden when `quiet`).
fn bar(len: u64, quiet: bool, what: String) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} steps, {eta} left")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b.set_message(what);
    b
}

/// Runs DLLP on the trained `weights` of `cfg` at `spec`'s sparsity, scope and exclusions:
/// particles around the dense net, `dc.epochs` passes of Stein steps, the mask read off the
/// inclusion probabilities, then the particles hardened to it (see the
/// [module documentation](self)).
pub fn fit(
    cfg: &StudyConfig,
    data: &PruneData,
    weights: &HashMap<String, Tensor>,
    spec: &PruneSpec,
    dc: &DllpConfig,
    quiet: bool,
) -> Result<DllpOutcome> {
    check_applicable(cfg).map_err(|m| ExpError::config("dllp", m))?;
    dc.validate().map_err(|m| ExpError::config("dllp", m))?;
    if !(spec.sparsity > 0.0 && spec.sparsity < 1.0) {
        return Err(ExpError::config(
            "--sparsity",
            format!("dllp needs a target sparsity in (0, 1), got {}", spec.sparsity),
        ));
    }
    let dev = Device::Cpu;
    let (net, store) = build_model(cfg, data.input, data.classes, &dev)?;
    store.load(weights)?;
    let (alloc, geom) = crate::prune::allocation(cfg, data, spec)?;
    let mut rng = SeedStream::Dllp.rng(cfg.seed);
    let mut dllp = Dllp::new(&store, &alloc.exclude, spec.sparsity, dc.settings(), &mut rng)?;
    let steps = dc.epochs * data.train.len().div_ceil(cfg.data.batch_size.max(1));
    let b = bar(
        steps as u64,
        quiet,
        format!("dllp, {} particles, sparsity {}", dc.particles, spec.sparsity),
    );
    stein_epochs(&mut dllp, &net, &store, cfg, data, dc.epochs, &mut rng, &b)?;
    b.finish_and_clear();
    let masks = dllp.masks(&alloc)?;
    let (inclusion, inclusion_sd) = dllp.inclusion_moments()?;
    let agreement = dllp.agreement(&masks, &alloc)?;
    dllp.harden(&masks)?;
    store.load(weights)?;
    let table = masks.layer_table(&store, Some(&geom))?;
    Ok(DllpOutcome {
        net,
        store,
        dllp,
        masks,
        inclusion,
        inclusion_sd,
        agreement,
        table,
    })
}

/// The fine-tune of hardened particles: `epochs` passes of Stein steps with the mask held (see
/// the [module documentation](self)).
pub fn finetune(out: &mut DllpOutcome, cfg: &StudyConfig, data: &PruneData, epochs: usize, quiet: bool) -> Result<()> {
    let steps = epochs * data.train.len().div_ceil(cfg.data.batch_size.max(1));
    let b = bar(steps as u64, quiet, "dllp fine-tune".into());
    let mut rng = SeedStream::Finetune.rng(cfg.seed);
    stein_epochs(&mut out.dllp, &out.net, &out.store, cfg, data, epochs, &mut rng, &b)?;
    b.finish_and_clear();
    Ok(())
}

/// The particles' model average on `set` (every particle once), with per-example predictive
/// entropy, expected entropy and mutual information; the store is left as it was.
pub fn predict(out: &DllpOutcome, cfg: &StudyConfig, set: &ImageSet, data: &PruneData) -> Result<McPredictions> {
    let dev = Device::Cpu;
    let post = out.dllp.posterior(&out.store)?;
    let mut batches = eval_image_batches(cfg, set, &data.norm, &dev)?;
    let settings = BmaSettings {
        samples: out.dllp.len(),
        refresh_batch_norm: false,
    };
    // a finite mixture draws nothing
    let mut rng = SeedStream::PosteriorPredictive.rng(cfg.seed);
    Ok(predict_bma(
        &out.net,
        &out.store,
        &post,
        &mut batches,
        None,
        settings,
        &mut rng,
    )?)
}

/// Options of `secateur prune --method dllp`.
#[derive(Debug, Clone)]
pub struct DllpPruneOptions {
    /// Sparsity, scope and exclusions (its criterion is ignored).
    pub spec: PruneSpec,
    /// The trained run (its `config.toml` and `weights.safetensors`).
    pub run: std::path::PathBuf,
    /// `--set` overrides of the run's config.
    pub overrides: Vec<String>,
    /// The settings.
    pub dllp: DllpConfig,
    /// Output directory, refused if it holds a prune's output unless `force`.
    pub out: std::path::PathBuf,
    /// Data directory searched first.
    pub data_dir: Option<std::path::PathBuf>,
    /// Replace an earlier prune's files.
    pub force: bool,
    /// No progress bar.
    pub quiet: bool,
}

/// The per-example file of `prune --method dllp`.
pub const UNCERTAINTY_FILE: &str = "uncertainty.csv";
/// The particles of `prune --method dllp`, as an ensemble's tensors (`member<i>/<param>`).
pub const PARTICLES_FILE: &str = "particles.safetensors";

/// `secateur prune --method dllp --run DIR`: runs DLLP on the trained run and writes, like every
/// prune, `masks.safetensors`, `scores.safetensors` (the inclusion probabilities), `layers.md`
/// and `prune.json` (with the mask agreement and the test metrics of the particles' model
/// average), and besides them `inclusion_sd.safetensors`, `particles.safetensors` (the hardened
/// particles by parameter name) and `uncertainty.csv` (per test example: label, prediction,
/// confidence, predictive entropy, expected entropy, mutual information).
pub fn prune(opts: &DllpPruneOptions) -> Result<serde_json::Map<String, serde_json::Value>> {
    crate::prune::refuse_existing_prune(&opts.out, opts.force)?;
    for f in [UNCERTAINTY_FILE, PARTICLES_FILE] {
        if !opts.force && opts.out.join(f).exists() {
            return Err(ExpError::io(
                &opts.out,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("already holds {f} (an earlier prune's output); choose another --out, or give --force"),
                ),
            ));
        }
    }
    let cfg = StudyConfig::from_file(&opts.run.join("config.toml"), &opts.overrides)?;
    crate::learned::refuse(&cfg, "`secateur prune --method dllp`")?;
    check_applicable(&cfg).map_err(|m| ExpError::config("--method dllp", m))?;
    let weights = crate::store::read_finite_safetensors(&opts.run.join("weights.safetensors"))?;
    let data = PruneData::load(&cfg, opts.data_dir.as_deref())?;
    let t0 = std::time::Instant::now();
    let out = fit(&cfg, &data, &weights, &opts.spec, &opts.dllp, opts.quiet)?;
    let seconds = t0.elapsed().as_secs_f64();
    let test = crate::commands::load_data(&cfg, opts.data_dir.as_deref())?.test;
    let mc = predict(&out, &cfg, &test, &data)?;
    let p = &mc.predictions;
    let metrics = secateur_inference::metrics::classification_metrics(&p.probs, &p.labels, p.classes)?;

    std::fs::create_dir_all(&opts.out).map_err(|e| ExpError::io(&opts.out, e))?;
    out.masks.save(opts.out.join("masks.safetensors"))?;
    secateur_pruning::mask::save_scores(&out.inclusion, opts.out.join("scores.safetensors"))?;
    secateur_pruning::mask::save_scores(&out.inclusion_sd, opts.out.join("inclusion_sd.safetensors"))?;
    let particles = secateur_inference::posterior::Posterior::tensors(&out.dllp.posterior(&out.store)?)?;
    crate::atomic::write_safetensors(&opts.out.join(PARTICLES_FILE), &particles)?;
    crate::atomic::write_string(&opts.out.join("layers.md"), &out.table.to_string())?;
    let mut csv =
        String::from("example,label,predicted,confidence,predictive_entropy,expected_entropy,mutual_information\n");
    for i in 0..p.labels.len() {
        let row = &p.probs[i * p.classes..(i + 1) * p.classes];
        let (k, conf) = secateur_inference::metrics::top1(row);
        csv.push_str(&format!(
            "{i},{},{k},{conf:.6},{:.6},{:.6},{:.6}\n",
            p.labels[i], mc.predictive_entropy[i], mc.expected_entropy[i], mc.mutual_information[i]
        ));
    }
    crate::atomic::write_string(&opts.out.join(UNCERTAINTY_FILE), &csv)?;

    let mut m = serde_json::Map::new();
    m.insert("method".into(), "dllp".into());
    m.insert("target_sparsity".into(), opts.spec.sparsity.into());
    m.extend(crate::prune::mask_summary(
        &out.masks,
        &out.table,
        opts.spec.scope,
        &cfg,
    )?);
    m.insert("mask_agreement".into(), out.agreement.0.into());
    m.insert("mask_agreement_sd".into(), out.agreement.1.into());
    m.insert(
        "dllp".into(),
        serde_json::to_value(&opts.dllp).map_err(|e| ExpError::io(&opts.out, std::io::Error::other(e)))?,
    );
    m.insert("seconds".into(), seconds.into());
    m.insert("test_accuracy".into(), metrics.accuracy.into());
    m.insert("test_nll".into(), metrics.nll.into());
    m.insert("test_ece".into(), metrics.ece.into());
    m.insert(
        "test_mean_predictive_entropy".into(),
        mc.mean_predictive_entropy().into(),
    );
    m.insert(
        "test_mean_mutual_information".into(),
        mc.mean_mutual_information().into(),
    );
    m.insert(
        "run".into(),
        crate::prune::relative_to(&opts.run, &opts.out)
            .display()
            .to_string()
            .into(),
    );
    m.insert("keep_conv".into(), opts.spec.keep_conv.into());
    crate::prune::write_summary(&opts.out, &m)?;
    Ok(m)
}
