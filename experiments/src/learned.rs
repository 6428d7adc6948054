//! The learned-pruning methods of `[pruning]` in `secateur train`: the step hook that trains
//! the method's variables, and after training the masks it learned (`masks.safetensors`, the
//! file `secateur compact` reads) and its report in `metrics.json`.
//!
//! DCFF (`pruning.method = "dcff"`, `secateur_pruning::learned::dcff`) trains the compact
//! network itself: [`dcff_widths`] gives its widths (every structured group's layer at
//! `⌊C (1 − r)⌋` fused filters) and full filter counts; `secateur compact` replaces its layers by
//! the fused filters. It reports `dcff_rate`, `dcff_final_temperature` (of the last epoch),
//! `dcff_flops_kept` and `dcff_params_kept` (the compact network's over the full network's).
//!
//! CAP (`pruning.method = "cap"`, `secateur_pruning::learned::cap`) trains a gated network on
//! its own objective ([`objective`]); after training its channels are measured on the training
//! set and cut (`masks.safetensors`, and [`CAP_CHANNELS`] with every gated channel's importance
//! and mean mask); `secateur compact` builds the static plain network (mean masks folded, gates
//! dropped, the cut applied) and compacts it. It reports `cap_groups_removed`, `cap_groups`,
//! `cap_flops_kept` (the compacted network's over the full network's) and
//! `cap_cut_test_accuracy` (the static cut network before any fine-tuning).
//!
//! SCL (`pruning.method = "scl"`, `secateur_pruning::learned::scl`) reports:
//! - `scl_connections_kept`, `scl_connections_total`, `scl_connection_sparsity`: connections
//!   on at the end (`m > 0`, and not in a removed group) over every linear and conv weight;
//! - `scl_flops_kept`: the fraction of multiply–accumulates of the kept connections (each
//!   connection costs its layer's output positions), what an unstructured sparse kernel would
//!   run; `scl_groups_removed`: whole filters or units removed, which `compact` takes out.

use crate::atomic;
use crate::config::StudyConfig;
use crate::data::{ImageSet, Normalizer};
use crate::error::{ExpError, Result};
use crate::seed_stream::SeedStream;
use candle_core::{Device, Tensor};
use secateur_bayes::ParamStore;
use secateur_inference::batches::Batches;
use secateur_inference::hooks::StepHook;
use secateur_inference::objective::TrainingObjective;
use secateur_models::Network;
use secateur_pruning::learned::cap::{self, CapObjective, ChannelStats};
use secateur_pruning::learned::dcff::Dcff;
use secateur_pruning::learned::scl::{connection_masks, Scl};
use secateur_pruning::structured::Coupling;
use secateur_pruning::structured::StructuredMask;
use secateur_pruning::MaskSet;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Refuses a config with `[pruning]` where `what` (a command or study that trains or scores the
/// network without the method's hook and objective) would silently do something else; the
/// error names the method and the way on: `compact` turns a learned run into a plain network.
pub fn refuse(cfg: &StudyConfig, what: &str) -> Result<()> {
    if cfg.pruning.is_off() {
        return Ok(());
    }
    Err(ExpError::config(
        "pruning.method",
        format!(
            "{what} takes a network without [pruning]; this one is trained by `{}` (train it with `secateur train`, \
             then `secateur compact --run RUN --out SMALL` gives the plain network to use here)",
            cfg.pruning.method
        ),
    ))
}

/// DCFF: the output width of every weight layer of the compact network in forward order, and
/// the full filter count of each pruned layer by path (`layer1.0.conv1`): the layers that form
/// structured groups (`secateur_pruning::structured`; in the ResNets the first convolution of
/// each block, as the reference code prunes) keep `⌊C (1 − r)⌋` filters.
pub fn dcff_widths(
    cfg: &StudyConfig,
    input: [usize; 3],
    classes: usize,
) -> Result<(Vec<usize>, BTreeMap<String, usize>)> {
    let coupling = crate::commands::coupling(cfg, input, classes)?;
    let geometry = crate::commands::geometry(cfg, input, classes)?;
    let mut full = BTreeMap::new();
    let widths = geometry
        .layers
        .iter()
        .map(|l| match coupling.layers.iter().find(|g| g.name == l.name) {
            Some(g) => {
                full.insert(l.name.trim_end_matches(".weight").to_string(), g.groups);
                cfg.pruning.dcff.kept(g.groups)
            }
            None => l.weight_shape.first().copied().unwrap_or(1),
        })
        .collect();
    Ok((widths, full))
}

/// The config with the widths of its DCFF compact network and no `[pruning]`: the plain
/// network `compact` writes.
pub fn dcff_compact_config(cfg: &StudyConfig, input: [usize; 3], classes: usize) -> Result<StudyConfig> {
    let (widths, _) = dcff_widths(cfg, input, classes)?;
    let mut c = cfg.at_widths(widths);
    c.pruning = Default::default();
    Ok(c)
}

/// The config's learned-pruning hook, or `None` without `[pruning]` (and for CAP, whose
/// objective does the work: [`objective`]).
pub fn hook(cfg: &StudyConfig, input: [usize; 3], classes: usize) -> Result<Option<Box<dyn StepHook>>> {
    if cfg.pruning.is_dcff() {
        let t = cfg.pruning.dcff.temperature(cfg.train.epochs);
        let h = Dcff::new(t).map_err(|e| ExpError::config("pruning.dcff", e.to_string()))?;
        return Ok(Some(Box::new(h)));
    }
    if !cfg.pruning.is_scl() {
        return Ok(None);
    }
    let coupling = crate::commands::coupling(cfg, input, classes)?;
    let scl = Scl::new(cfg.pruning.scl.config(), Some(coupling))
        .map_err(|e| ExpError::config("pruning.scl", e.to_string()))?;
    Ok(Some(Box::new(scl)))
}

/// A trained network and what its learned-pruning report reads.
pub struct Trained<'a> {
    /// The run's config.
    pub cfg: &'a StudyConfig,
    /// The trained network.
    pub net: &'a Network,
    /// Its parameters.
    pub store: &'a ParamStore,
    /// The input shape `[C, H, W]`.
    pub input: [usize; 3],
    /// The classes.
    pub classes: usize,
    /// The training set (CAP measures its channels on it).
    pub train: &'a ImageSet,
    /// The test set.
    pub test: &'a ImageSet,
    /// The input normaliser.
    pub norm: &'a Normalizer,
    /// The device.
    pub dev: &'a Device,
    /// The run directory.
    pub run: &'a Path,
}

/// After training: SCL's masks are applied to the store (the values of connections that are
/// off become 0, which changes no output) and written to the run's `masks.safetensors`; CAP's
/// cut is measured and written (`masks.safetensors`, [`CAP_CHANNELS`]); returns the report's
/// `metrics.json` entries (see the [module documentation](self)); nothing without `[pruning]`.
pub fn finish(t: &Trained) -> Result<Vec<(String, Value)>> {
    let (cfg, store, input, classes) = (t.cfg, t.store, t.input, t.classes);
    let masks_file = t.run.join(crate::commands::MASKS_FILE);
    if cfg.pruning.is_dcff() {
        return dcff_report(cfg, store, input, classes);
    }
    if cfg.pruning.is_cap() {
        return cap_finish(t);
    }
    if !cfg.pruning.is_scl() {
        return Ok(Vec::new());
    }
    let coupling = crate::commands::coupling(cfg, input, classes)?;
    let masks: MaskSet = connection_masks(store, Some(&coupling))?;
    let geometry = crate::commands::geometry(cfg, input, classes)?;
    let (mut kept_flops, mut all_flops) = (0u64, 0u64);
    for l in &geometry.layers {
        let n = l.weight_shape.iter().product();
        let kept = match masks.get(&l.name) {
            Some(m) => m.to_dtype(candle_core::DType::F64)?.sum_all()?.to_scalar::<f64>()? as usize,
            None => n,
        };
        kept_flops += l.flops(kept);
        all_flops += l.flops(n);
    }
    // connections: every weight with mask variables
    let (mut kept, mut total) = (0usize, 0usize);
    for (name, _) in secateur_pruning::learned::scl::mask_variables(store) {
        if let Some(m) = masks.get(&name) {
            kept += m.to_dtype(candle_core::DType::F64)?.sum_all()?.to_scalar::<f64>()? as usize;
            total += m.elem_count();
        }
    }
    let removed = StructuredMask::from_mask_set(&coupling, &masks)?.num_pruned();
    masks.apply(store)?;
    masks.save(&masks_file)?;
    let frac = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Ok(vec![
        ("pruning_method".into(), cfg.pruning.method.clone().into()),
        ("scl_connections_kept".into(), kept.into()),
        ("scl_connections_total".into(), total.into()),
        (
            "scl_connection_sparsity".into(),
            (1.0 - frac(kept as f64, total as f64)).into(),
        ),
        (
            "scl_flops_kept".into(),
            frac(kept_flops as f64, all_flops as f64).into(),
        ),
        ("scl_groups_removed".into(), removed.into()),
    ])
}

/// DCFF's `metrics.json` entries (see the [module documentation](self)).
fn dcff_report(
    cfg: &StudyConfig,
    store: &ParamStore,
    input: [usize; 3],
    classes: usize,
) -> Result<Vec<(String, Value)>> {
    let small = dcff_compact_config(cfg, input, classes)?;
    let flops = |c: &StudyConfig| -> Result<u64> { Ok(crate::commands::geometry(c, input, classes)?.dense_flops()) };
    let (full_flops, small_flops) = (flops(cfg)?, flops(&small)?);
    let full_params = {
        let mut plain = cfg.clone();
        plain.pruning = Default::default();
        crate::commands::build_model(&plain, input, classes, &candle_core::Device::Cpu)?
            .1
            .num_params()
    };
    let small_params = secateur_pruning::learned::dcff::fuse(store)?
        .iter()
        .filter(|(k, _)| store.params().contains_key(*k))
        .map(|(_, t)| t.elem_count())
        .sum::<usize>();
    let t = cfg.pruning.dcff.temperature(cfg.train.epochs);
    Ok(vec![
        ("pruning_method".into(), cfg.pruning.method.clone().into()),
        ("dcff_rate".into(), cfg.pruning.dcff.rate.into()),
        (
            "dcff_final_temperature".into(),
            t.at(cfg.train.epochs.saturating_sub(1)).into(),
        ),
        (
            "dcff_flops_kept".into(),
            (small_flops as f64 / full_flops.max(1) as f64).into(),
        ),
        (
            "dcff_params_kept".into(),
            (small_params as f64 / full_params.max(1) as f64).into(),
        ),
    ])
}

/// The CAP run's file of gated-channel statistics: per reading layer `{path}.importance` and
/// `{path}.mean` (f64 vectors).
pub const CAP_CHANNELS: &str = "cap_channels.safetensors";

/// The config's training objective when a learned method has its own (CAP), else `None`.
pub fn objective(cfg: &StudyConfig) -> Result<Option<Box<dyn TrainingObjective>>> {
    if !cfg.pruning.is_cap() {
        return Ok(None);
    }
    let o = CapObjective::new(cfg.pruning.cap.config()).map_err(|e| ExpError::config("pruning.cap", e.to_string()))?;
    Ok(Some(Box::new(o)))
}

/// The gated channels of a CAP network measured on `set` ([`cap::channel_statistics`]).
fn cap_statistics(t: &Trained, set: &ImageSet) -> Result<BTreeMap<String, ChannelStats>> {
    let mut batches = crate::commands::eval_image_batches(t.cfg, set, t.norm, t.dev)?;
    let mut brng = SeedStream::Eval.rng(t.cfg.seed);
    batches.start_epoch(0, &mut brng);
    let n = batches.num_batches();
    // one batch at a time
    let each = (0..n).map(|i| batches.batch(i, &mut brng));
    let mut rng = SeedStream::Eval.rng(t.cfg.seed);
    Ok(cap::channel_statistics(t.net, each, &mut rng)?)
}

/// The static plain network of a CAP network at full width with its cut applied (see
/// `secateur_pruning::learned::cap`): its config (no `[pruning]`), network and store.
pub fn cap_static(
    cfg: &StudyConfig,
    store: &ParamStore,
    coupling: &Coupling,
    stats: &BTreeMap<String, ChannelStats>,
    mask: &secateur_pruning::structured::StructuredMask,
    (input, classes): ([usize; 3], usize),
    dev: &Device,
) -> Result<(StudyConfig, Network, ParamStore)> {
    let mut plain = cfg.clone();
    plain.pruning = Default::default();
    let (net, s) = crate::commands::build_model(&plain, input, classes, dev)?;
    s.load(&cap::static_tensors(store, coupling, stats)?)?;
    mask.expand(coupling)?.apply(&s)?;
    Ok((plain, net, s))
}

/// Reads [`CAP_CHANNELS`] of a CAP run.
pub fn read_cap_channels(run: &Path) -> Result<BTreeMap<String, ChannelStats>> {
    let t = atomic::read_safetensors(&run.join(CAP_CHANNELS))?;
    let mut out: BTreeMap<String, ChannelStats> = BTreeMap::new();
    for (k, v) in &t {
        let (path, what) = k.rsplit_once('.').ok_or_else(|| ExpError::Run {
            path: run.to_path_buf(),
            message: format!("{CAP_CHANNELS}: unexpected tensor `{k}`"),
        })?;
        let vals = v.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        let e = out.entry(path.to_string()).or_insert_with(|| ChannelStats {
            importance: Vec::new(),
            mean: Vec::new(),
        });
        match what {
            "importance" => e.importance = vals,
            "mean" => e.mean = vals,
            _ => {
                return Err(ExpError::Run {
                    path: run.to_path_buf(),
                    message: format!("{CAP_CHANNELS}: unexpected tensor `{k}`"),
                })
            }
        }
    }
    for (path, s) in &out {
        if s.importance.len() != s.mean.len() || s.mean.is_empty() {
            return Err(ExpError::Run {
                path: run.to_path_buf(),
                message: format!(
                    "{CAP_CHANNELS}: `{path}` has {} importances and {} mean masks",
                    s.importance.len(),
                    s.mean.len()
                ),
            });
        }
    }
    Ok(out)
}

/// CAP after training (see the [module documentation](self)).
fn cap_finish(t: &Trained) -> Result<Vec<(String, Value)>> {
    let (cfg, input, classes) = (t.cfg, t.input, t.classes);
    let coupling = crate::commands::coupling(cfg, input, classes)?;
    let stats = cap_statistics(t, t.train)?;
    let mask = cap::cut(&coupling, &stats, cfg.pruning.cap.threshold)?;
    let mut file: BTreeMap<String, Tensor> = BTreeMap::new();
    for (path, s) in &stats {
        file.insert(
            format!("{path}.importance"),
            Tensor::new(s.importance.as_slice(), &Device::Cpu)?,
        );
        file.insert(format!("{path}.mean"), Tensor::new(s.mean.as_slice(), &Device::Cpu)?);
    }
    atomic::write_safetensors(&t.run.join(CAP_CHANNELS), &file)?;
    mask.expand(&coupling)?
        .to_mask_set()?
        .save(t.run.join(crate::commands::MASKS_FILE))?;
    let (plain_cfg, plain_net, plain_store) =
        cap_static(cfg, t.store, &coupling, &stats, &mask, (input, classes), t.dev)?;
    let cut_accuracy = crate::commands::evaluate(&plain_net, t.test, t.norm, &plain_cfg, t.dev)?
        .metrics
        .accuracy;
    let compacted = secateur_pruning::structured::compact_store(&coupling, &mask, &plain_store)?;
    let small = plain_cfg.at_widths(compacted.out_widths());
    let flops = |c: &StudyConfig| -> Result<u64> { Ok(crate::commands::geometry(c, input, classes)?.dense_flops()) };
    Ok(vec![
        ("pruning_method".into(), cfg.pruning.method.clone().into()),
        ("cap_groups_removed".into(), mask.num_pruned().into()),
        ("cap_groups".into(), mask.num_groups().into()),
        (
            "cap_flops_kept".into(),
            (flops(&small)? as f64 / flops(&plain_cfg)?.max(1) as f64).into(),
        ),
        ("cap_cut_test_accuracy".into(), cut_accuracy.into()),
    ])
}
