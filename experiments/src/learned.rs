//! The learned-pruning methods of `[pruning]` in `secateur train`: the step hook that trains
//! the method's variables, and after training the masks it learned (`masks.safetensors`, the
//! file `secateur compact` reads) and its report in `metrics.json`.
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
use secateur_pruning::learned::scl::{connection_masks, Scl};
use secateur_pruning::structured::StructuredMask;
use secateur_pruning::MaskSet;
use serde_json::Value;
use std::path::Path;

/// The config's learned-pruning hook, or `None` without `[pruning]`.
pub fn hook(cfg: &StudyConfig, input: [usize; 3], classes: usize) -> Result<Option<Box<dyn StepHook>>> {
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
