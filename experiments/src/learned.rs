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
//! SCL (`pruning.method = "scl"`, `secateur_pruning::learned::scl`) reports:
//! - `scl_connections_kept`, `scl_connections_total`, `scl_connection_sparsity`: connections
//!   on at the end (`m > 0`, and not in a removed group) over every linear and conv weight;
//! - `scl_flops_kept`: the fraction of multiply–accumulates of the kept connections (each
//!   connection costs its layer's output positions), what an unstructured sparse kernel would
//!   run; `scl_groups_removed`: whole filters or units removed, which `compact` takes out.

use crate::config::StudyConfig;
use crate::error::{ExpError, Result};
use secateur_bayes::ParamStore;
use secateur_inference::hooks::StepHook;
use secateur_pruning::learned::dcff::Dcff;
use secateur_pruning::learned::scl::{connection_masks, Scl};
use secateur_pruning::structured::StructuredMask;
use secateur_pruning::MaskSet;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

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
    let mut c = cfg.clone();
    c.model.hidden = None;
    c.model.widths = Some(widths);
    c.pruning = Default::default();
    Ok(c)
}

/// The config's learned-pruning hook (for a run of `steps_per_epoch` optimiser steps per epoch),
/// or `None` without `[pruning]`.
pub fn hook(
    cfg: &StudyConfig,
    input: [usize; 3],
    classes: usize,
    steps_per_epoch: usize,
) -> Result<Option<Box<dyn StepHook>>> {
    if cfg.pruning.is_dcff() {
        let t = cfg.pruning.dcff.temperature(cfg.train.epochs);
        let h = Dcff::new(t, steps_per_epoch).map_err(|e| ExpError::config("pruning.dcff", e.to_string()))?;
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

/// After training: applies the learned masks to the store (the values of connections that are
/// off become 0, which changes no output), writes them to `masks_file` and returns the report's
/// `metrics.json` entries (see the [module documentation](self)); nothing without `[pruning]`.
pub fn finish(
    cfg: &StudyConfig,
    store: &ParamStore,
    input: [usize; 3],
    classes: usize,
    masks_file: &Path,
) -> Result<Vec<(String, Value)>> {
    if cfg.pruning.is_dcff() {
        return dcff_report(cfg, store, input, classes);
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
    masks.save(masks_file)?;
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
    let flops = |c: &StudyConfig| -> Result<u64> {
        Ok(crate::commands::geometry(c, input, classes)?
            .layers
            .iter()
            .map(|l| l.flops(l.weight_shape.iter().product()))
            .sum())
    };
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
