//! `secateur prune --method structured`: whole filters and units of a trained run, scored by a
//! data-free filter criterion and removed to a budget of FLOPs or parameters
//! ([`secateur_pruning::structured`]).
//!
//! Writes into the output directory:
//! - `masks.safetensors`: the structured mask as entry masks ([`secateur_pruning::structured::ExpandedMask::to_mask_set`]):
//!   the pruned filters' weight rows, the consumers' input channels, and the pruned entries of
//!   the biases and batch-norm γ, β; `train --masks` holds it during a fine-tune (started from
//!   the run's weights with `--set bayes.init_from=RUN`), `eval`/`report` evaluate this
//!   directory as the pruned run, and `compact` turns it (or the fine-tuned run) into the
//!   smaller network;
//! - `scores.safetensors`: the group scores per layer (f64, one entry per filter or unit);
//! - `layers.md`: per layer, groups kept of all, FLOPs and parameters before and after;
//! - `prune.json`: criterion, cost, target and reached fraction, FLOPs and parameters before and
//!   after, the run (relative to the directory);
//! - `bn_stats.safetensors` (criterion `fsm` only): FSM's distribution optimisation, the new
//!   running mean and variance of the batch norms after the pruned channels' consumers
//!   ([`secateur_pruning::structured::criteria::feature_shift_compensation`]); `eval`, `report`
//!   and `compact` of this directory load them over the run's ([`apply_bn_stats`]). A fine-tune
//!   re-estimates the running statistics, so it starts from the run's weights as before.

use crate::atomic;
use crate::commands::{build_model, coupling, load_data};
use crate::config::StudyConfig;
use crate::error::{ExpError, Result};
use crate::prune::{refuse_existing_prune, relative_to, write_summary};
use crate::store::RunDir;
use candle_core::{Device, Tensor};
use secateur_pruning::structured::allocate::cost as cost_of;
use secateur_pruning::structured::criteria::feature_shift_compensation;
use secateur_pruning::structured::{Cost, Coupling, FilterCriterion, StructuredAllocation, StructuredMask};
use secateur_pruning::{mask::save_scores, Scope};
use serde_json::{Map, Value};
use std::path::PathBuf;

/// The names of `--cost`.
pub const COSTS: [(&str, Cost); 2] = [("flops", Cost::Flops), ("params", Cost::Params)];

/// The [`Cost`] named `s` (`flops`, `params`); the error lists the names.
pub fn parse_cost(s: &str) -> Result<Cost> {
    COSTS
        .iter()
        .find(|(n, _)| *n == s)
        .map(|&(_, c)| c)
        .ok_or_else(|| ExpError::config("--cost", format!("unknown cost `{s}`; use flops or params")))
}

/// What a structured prune is asked to do.
#[derive(Debug, Clone)]
pub struct StructuredPruneOptions {
    /// The filter criterion.
    pub criterion: FilterCriterion,
    /// Fraction of the cost removed, in `[0, 1)`.
    pub fraction: f64,
    /// What the fraction is of.
    pub cost: Cost,
    /// Per layer (the same fraction of every layer's cost) or global (one ranking).
    pub scope: Scope,
    /// The finished run to prune.
    pub run: PathBuf,
    /// `--set` overrides of its config.
    pub overrides: Vec<String>,
    /// Output directory.
    pub out: PathBuf,
    /// Data directory searched first (the data give the input shape).
    pub data_dir: Option<PathBuf>,
    /// Replace an earlier prune's files in `out`.
    pub force: bool,
}

/// Per layer: groups, kept groups, and the layer's FLOPs and weight count before and after.
fn layer_table(c: &Coupling, mask: &StructuredMask) -> String {
    let mut pruned_rows = std::collections::BTreeMap::new();
    let mut pruned_cols = std::collections::BTreeMap::new();
    for l in &c.layers {
        let p = mask.pruned(&l.name).len();
        pruned_rows.insert(l.name.clone(), p);
        pruned_cols.insert(l.consumer.name.clone(), p * l.consumer.block);
    }
    let mut t = String::from(
        "| layer | groups | kept | FLOPs (MACs) | kept FLOPs | weights | kept weights |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for info in &c.geometry.layers {
        let s = &info.weight_shape;
        let (o, i) = (s[0], s.get(1).copied().unwrap_or(1));
        let e: usize = s.iter().skip(2).product();
        let r = pruned_rows.get(&info.name).copied().unwrap_or(0);
        let k = pruned_cols.get(&info.name).copied().unwrap_or(0);
        let (w, kw) = (o * i * e, (o - r) * (i - k) * e);
        let groups = c.layers.iter().find(|l| l.name == info.name);
        t += &format!(
            "| `{}` | {} | {} | {} | {} | {w} | {kw} |\n",
            info.name,
            groups.map_or("—".to_string(), |l| l.groups.to_string()),
            groups.map_or("—".to_string(), |l| (l.groups - r).to_string()),
            info.flops(w),
            info.flops(kw),
        );
    }
    t
}

/// `secateur prune --method structured` (see the [module documentation](self)). Returns the
/// summary written as `prune.json`.
pub fn prune(opts: &StructuredPruneOptions) -> Result<Map<String, Value>> {
    let alloc = StructuredAllocation::new(opts.cost, opts.fraction, opts.scope);
    alloc
        .validate()
        .map_err(|e| ExpError::config("--sparsity", e.to_string()))?;
    refuse_existing_prune(&opts.out, opts.force)?;
    let run = RunDir::open(&opts.run)?;
    let cfg = StudyConfig::from_file(&run.file("config.toml"), &opts.overrides)?;
    crate::learned::refuse(&cfg, "a structured prune")?;
    if cfg.likelihood.is_regression() || !cfg.posterior.is_none() {
        return Err(ExpError::Run {
            path: opts.run.clone(),
            message: "a structured prune takes a classification run without a [posterior]".into(),
        });
    }
    let weights = run.read_final_weights()?;
    let data = load_data(&cfg, opts.data_dir.as_deref())?;
    let input = [data.train.channels, data.train.height, data.train.width];
    let classes = data.train.n_classes.max(data.test.n_classes) as usize;
    let (_net, store) = build_model(&cfg, input, classes, &Device::Cpu)?;
    store.load(&weights)?;
    let c = coupling(&cfg, input, classes)?;
    c.check(&store)?;
    let scores = opts.criterion.score(&store, &c)?;
    let plan = alloc.allocate(&c, &scores)?;
    let expanded = plan.mask.expand(&c)?;
    let masks = expanded.to_mask_set()?;

    std::fs::create_dir_all(&opts.out).map_err(|e| ExpError::io(&opts.out, e))?;
    masks.save(opts.out.join("masks.safetensors"))?;
    let score_tensors = scores
        .iter()
        .map(|(k, v)| Ok((k.clone(), Tensor::new(v.as_slice(), &Device::Cpu)?)))
        .collect::<candle_core::Result<_>>()?;
    save_scores(&score_tensors, opts.out.join("scores.safetensors"))?;
    atomic::write_string(&opts.out.join("layers.md"), &layer_table(&c, &plan.mask))?;
    let (flops, flops_kept) = cost_of(&c, &plan.mask, Cost::Flops)?;
    let (params, params_kept) = cost_of(&c, &plan.mask, Cost::Params)?;
    let (kept, total) = expanded.weight_counts()?;
    let mut m = Map::new();
    m.insert("method".into(), "structured".into());
    m.insert("criterion".into(), opts.criterion.name().into());
    m.insert(
        "cost".into(),
        COSTS
            .iter()
            .find(|(_, c)| *c == opts.cost)
            .map_or("?", |(n, _)| n)
            .into(),
    );
    m.insert("target_fraction".into(), opts.fraction.into());
    m.insert(
        "reached_fraction".into(),
        (plan.removed as f64 / plan.total.max(1) as f64).into(),
    );
    m.insert("scope".into(), opts.scope.name().into());
    m.insert("groups".into(), plan.mask.num_groups().into());
    m.insert("groups_pruned".into(), plan.mask.num_pruned().into());
    m.insert("flops".into(), flops.into());
    m.insert("flops_kept".into(), flops_kept.into());
    m.insert("weights".into(), params.into());
    m.insert("weights_kept".into(), params_kept.into());
    // the fraction of the masked weights that are zero (what `eval` and `report` read)
    m.insert("sparsity".into(), (1.0 - kept as f64 / total.max(1) as f64).into());
    m.insert(
        "collapsed_layers".into(),
        Value::Array(
            plan.mask
                .collapsed()
                .into_iter()
                .map(|s| s.to_string().into())
                .collect(),
        ),
    );
    m.insert("arch".into(), cfg.model.arch.clone().into());
    m.insert("seed".into(), cfg.seed.into());
    m.insert(
        "run".into(),
        relative_to(&opts.run, &opts.out).display().to_string().into(),
    );
    // a replaced (--force) fsm prune's statistics must not outlive it: eval would load them
    let bn_stats = opts.out.join(BN_STATS_FILE);
    if bn_stats.exists() {
        std::fs::remove_file(&bn_stats).map_err(|e| ExpError::io(&bn_stats, e))?;
    }
    if opts.criterion == FilterCriterion::FeatureShift {
        let stats = feature_shift_compensation(&store, &c, plan.mask.layers())?;
        m.insert("bn_stats_compensated".into(), (stats.len() / 2).into());
        if !stats.is_empty() {
            atomic::write_safetensors(&opts.out.join(BN_STATS_FILE), stats.iter())?;
        }
    }
    write_summary(&opts.out, &m)?;
    Ok(m)
}

/// The file of a `fsm` prune's compensated batch-norm statistics.
pub const BN_STATS_FILE: &str = "bn_stats.safetensors";

/// Loads a prune directory's compensated batch-norm statistics ([`BN_STATS_FILE`]) into `store`,
/// over the run's; nothing when the directory has none. Every tensor must name a buffer of the
/// network with the same shape.
pub fn apply_bn_stats(prune_dir: &std::path::Path, store: &secateur_bayes::ParamStore) -> Result<()> {
    let file = prune_dir.join(BN_STATS_FILE);
    if !file.is_file() {
        return Ok(());
    }
    let tensors = atomic::read_safetensors(&file)?;
    let bad = |message: String| ExpError::Run {
        path: file.clone(),
        message,
    };
    for (name, t) in &tensors {
        let Some(var) = store.buffers().get(name).cloned() else {
            return Err(bad(format!("holds `{name}`, which is no buffer of the run's network")));
        };
        if var.dims() != t.dims() {
            return Err(bad(format!(
                "`{name}` has shape {:?}, the network's {:?}",
                t.dims(),
                var.dims()
            )));
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(())
}
