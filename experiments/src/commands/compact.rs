//! `secateur compact`: a structurally pruned run rebuilt as the smaller dense network it is.
//!
//! The source is a finished run whose masks remove whole filters or units (a run fine-tuned with
//! `train --masks` of a `prune --method structured`, which records them as `masks.safetensors`),
//! or a `prune --run` directory (the masks applied to its run, no fine-tune), or any run given
//! `--masks FILE`. The steps:
//!
//! 1. the run's network with its final weights, and the masks applied ([`secateur_pruning::MaskSet::apply`]);
//! 2. the structured mask they encode ([`StructuredMask::from_mask_set`]: a group is pruned when
//!    its whole weight row is masked), refused when it prunes nothing, and
//!    [`check_pruned_outputs`]: every pruned group must output exactly zero (its bias and
//!    batch-norm γ, β zero too), or removing it would change the network;
//! 3. [`compact_store`] and the narrower network of `model.widths`
//!    ([`secateur_models::build_with_widths`]), loaded strictly;
//! 4. the check that it computes what the masked network computes: the largest difference of
//!    posterior-mean logits over the whole test set (refused above [`MAX_LOGIT_DIFF`] relative
//!    to the largest logit), and both networks' test accuracy;
//! 5. parameters, FLOPs (multiply–accumulates per example, [`secateur_pruning::geometry`]) and
//!    measured CPU latency ([`latencies`]: batch 1 and 128, the median of repeated forward passes
//!    in evaluation mode, the two networks alternating) of the masked (full-width) and the
//!    compacted network.
//!
//! **Runs of pruning learned during training** (`[pruning]`, `crate::learned`): an SCL run takes
//! the path above with its learned masks (`masks.safetensors`) and becomes a plain network (the
//! masks' zeros in its weights, no mask variables; at full width when no whole group was left
//! without connections); a DCFF run becomes the plain compact network
//! of its fused filters (`secateur_pruning::learned::dcff::fuse`), measured against the
//! full-width network; a CAP run becomes its static network (mean masks folded, gates dropped,
//! its cut applied), compacted as above, measured against that static network at full width. A
//! DCFF or CAP run is compacted only from what it learned: `--masks`, or a prune directory made
//! from one, is refused.
//!
//! The output directory is a run (`config.toml` with `model.widths`, `weights.safetensors`,
//! `metrics.json`) that `eval`, `report` and `train` (`bayes.init_from`) load like any other,
//! plus `compact.md` (the table) and [`COMPACT_SUMMARY`]. A directory that holds anything is
//! refused; `--force` replaces only an earlier compaction's output (one with
//! [`COMPACT_SUMMARY`]).

use super::setup::{build_model, coupling, device, eval_image_batches, geometry, load_data};
use crate::atomic;
use crate::config::StudyConfig;
use crate::data::Normalizer;
use crate::error::{ExpError, Result};
use crate::seed_stream::SeedStream;
use crate::store::RunDir;
use candle_core::{DType, Device, Tensor};
use secateur_bayes::{Ctx, Module, Sampling, SeededRng};
use secateur_inference::batches::Batches;
use secateur_models::Network;
use secateur_pruning::structured::{check_pruned_outputs, compact_store, StructuredMask};
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The summary file of a compaction, in its output directory.
pub const COMPACT_SUMMARY: &str = "compact.json";

/// The largest accepted `max |Δ logits| / max(1, max |logits|)` between the masked and the
/// compacted network (f32 sums in another order differ by a few ulps).
pub const MAX_LOGIT_DIFF: f64 = 1e-5;

/// What `compact` is asked to do.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// A finished run, or a `prune --run` directory.
    pub run: PathBuf,
    /// The masks (default: `masks.safetensors` of the prune directory or of the run).
    pub masks: Option<PathBuf>,
    /// The output run directory.
    pub out: PathBuf,
    /// Data directory searched first.
    pub data_dir: Option<PathBuf>,
    /// Replace an earlier compaction in `out`.
    pub force: bool,
    /// Forward passes timed per batch size (after two untimed ones); 0 skips the timing.
    pub latency_reps: usize,
}

impl CompactOptions {
    /// `secateur compact --run RUN --out OUT` without timing: the run's own masks, the default
    /// data directory, no `--force`, `latency_reps = 0`.
    pub fn untimed(run: &std::path::Path, out: &std::path::Path) -> Self {
        Self {
            run: run.to_path_buf(),
            masks: None,
            out: out.to_path_buf(),
            data_dir: None,
            force: false,
            latency_reps: 0,
        }
    }
}

/// Median and fastest wall time of a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Examples per forward pass.
    pub batch: usize,
    /// Median over the timed passes, milliseconds.
    pub median_ms: f64,
    /// Fastest timed pass, milliseconds.
    pub min_ms: f64,
    /// Timed passes.
    pub reps: usize,
}

/// One network's size and speed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkCost {
    /// Parameters (every stored parameter, not buffers).
    pub params: usize,
    /// Multiply–accumulates per example of the weight layers.
    pub flops: u64,
    /// Test accuracy (the run's own predictive: Monte Carlo for a Bayesian network).
    pub test_accuracy: f64,
    /// Latency at batch 1 and 128 (empty when not timed).
    pub latency: Vec<Latency>,
}

/// What `compact` measured (written as [`COMPACT_SUMMARY`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompactSummary {
    /// The run compacted.
    pub run: String,
    /// Architecture.
    pub arch: String,
    /// Layer kind.
    pub layers: String,
    /// Output widths of every weight layer before and after: `(name, before, after)`.
    pub widths: Vec<(String, usize, usize)>,
    /// Groups pruned of all prunable groups.
    pub groups_pruned: usize,
    /// Prunable groups.
    pub groups: usize,
    /// The masked network at full width.
    pub masked: NetworkCost,
    /// The compacted network.
    pub compacted: NetworkCost,
    /// `max |Δ logits|` of the posterior-mean networks over the test set.
    pub max_logit_diff: f64,
    /// `max |logits|` over the test set.
    pub max_logit: f64,
    /// The CPU's model name (from `/proc/cpuinfo`), for the latencies.
    pub cpu: String,
    /// Rayon threads of the timing.
    pub threads: usize,
}

/// The median and fastest wall time of a forward pass of each of `nets` in evaluation mode
/// (posterior mean) on one seeded `N(0, 1)` batch of `batch` inputs of shape `input`: `reps`
/// rounds after two untimed ones, each round timing one pass of every network, the order rotated
/// from round to round, so that a change of load during the measurement falls on all of them
/// alike (a paired measurement).
pub fn latencies(
    nets: &[&dyn Module],
    input: [usize; 3],
    batch: usize,
    dtype: DType,
    dev: &Device,
    reps: usize,
) -> candle_core::Result<Vec<Latency>> {
    let [c, h, w] = input;
    let mut rng = SeededRng::new(0);
    let x = rng.randn(&[batch, c, h, w], dtype, dev)?;
    let n = nets.len();
    let mut times = vec![Vec::with_capacity(reps); n];
    for round in 0..reps + 2 {
        for k in 0..n {
            let i = (round + k) % n;
            let t0 = Instant::now();
            let y = nets[i].forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
            dev.synchronize()?;
            drop(y);
            if round >= 2 {
                times[i].push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            Latency {
                batch,
                median_ms: t.get(t.len() / 2).copied().unwrap_or(f64::NAN),
                min_ms: t.first().copied().unwrap_or(f64::NAN),
                reps,
            }
        })
        .collect())
}

/// The CPU model name of this machine (`model name` of `/proc/cpuinfo`), or `unknown`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// A finished classification run without a `[posterior]` (refused otherwise, naming `command`),
/// loaded for `compact` and `quantise`: config, final weights, data, the training set's
/// normalisation, and the network with its weights.
pub(super) struct FinishedClassifier {
    pub(super) cfg: StudyConfig,
    pub(super) weights: std::collections::HashMap<String, Tensor>,
    pub(super) data: crate::data::LoadedImages,
    pub(super) norm: Normalizer,
    pub(super) input: [usize; 3],
    pub(super) classes: usize,
    pub(super) net: secateur_models::Network,
    pub(super) store: secateur_bayes::ParamStore,
    pub(super) dev: Device,
}

impl FinishedClassifier {
    pub(super) fn open(path: &Path, data_dir: Option<&Path>, command: &str) -> Result<Self> {
        let run = RunDir::open(path)?;
        let cfg = StudyConfig::from_file(&run.file("config.toml"), &[])?;
        if cfg.likelihood.is_regression() || !cfg.posterior.is_none() {
            return Err(ExpError::Run {
                path: path.to_path_buf(),
                message: format!(
                    "{command} takes a classification run without a [posterior] (its samples or members would \
                     need the same treatment)"
                ),
            });
        }
        let weights = run.read_final_weights()?;
        let dev = device("cpu")?;
        let data = load_data(&cfg, data_dir)?;
        let norm = Normalizer::from_set(&if cfg.data.val_fraction > 0.0 {
            let mut split_rng = SeedStream::DataSplit.rng(cfg.seed);
            data.train.split(cfg.data.val_fraction, &mut split_rng)?.0
        } else {
            data.train.clone()
        });
        let input = [data.train.channels, data.train.height, data.train.width];
        let classes = data.train.n_classes.max(data.test.n_classes) as usize;
        let (net, store) = build_model(&cfg, input, classes, &dev)?;
        store.load(&weights)?;
        Ok(Self {
            cfg,
            weights,
            data,
            norm,
            input,
            classes,
            net,
            store,
            dev,
        })
    }
}

/// The files a compaction writes into its output directory.
const COMPACT_OUTPUTS: [&str; 7] = [
    "config.toml",
    "weights.safetensors",
    "metrics.json",
    "compact.md",
    COMPACT_SUMMARY,
    crate::store::LOCK_FILE,
    "checkpoints",
];

/// Refuses an `out` that holds anything, unless `force` and it is an earlier compaction's output
/// (it holds [`COMPACT_SUMMARY`]) holding nothing else: its files are then removed. An `out`
/// that is the source run, or holds it or its masks, is refused even with `force`.
fn prepare_out(out: &Path, force: bool, sources: &[&Path]) -> Result<()> {
    let refuse = |m: String| {
        Err(ExpError::io(
            out,
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, m),
        ))
    };
    if let (Ok(o), true) = (out.canonicalize(), out.exists()) {
        for src in sources {
            if src.canonicalize().is_ok_and(|s| s.starts_with(&o)) {
                return refuse(format!(
                    "holds {}, an input of this compaction; choose another --out",
                    src.display()
                ));
            }
        }
    }
    let entries: Vec<String> = if out.is_dir() {
        std::fs::read_dir(out)
            .map_err(|e| ExpError::io(out, e))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    } else {
        Vec::new()
    };
    if entries.is_empty() {
        return Ok(());
    }
    if !force {
        return refuse(
            "is not empty; refusing to overwrite it: choose another --out, or give --force to replace an earlier compaction"
                .into(),
        );
    }
    if !out.join(COMPACT_SUMMARY).is_file() {
        return refuse("is not an earlier compaction's output (no compact.json); --force replaces only those".into());
    }
    let others: Vec<&String> = entries
        .iter()
        .filter(|e| !COMPACT_OUTPUTS.contains(&e.as_str()))
        .collect();
    if !others.is_empty() {
        return refuse(format!(
            "holds files a compaction did not write ({}); --force replaces only a compaction's own files",
            others.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    for e in &entries {
        let p = out.join(e);
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(|err| ExpError::io(&p, err))?;
    }
    Ok(())
}

/// The run to compact and its masks file: a `prune --run` directory names its run and holds
/// the masks; a run holds the masks it was trained with; `--masks` overrides both.
fn source(opts: &CompactOptions) -> Result<(PathBuf, PathBuf)> {
    let (run, own) = match super::pruned_run(&opts.run)? {
        Some((run, src)) => (run, src.dir.join(super::MASKS_FILE)),
        None => (opts.run.clone(), opts.run.join(super::MASKS_FILE)),
    };
    let masks = opts.masks.clone().unwrap_or(own);
    if !masks.is_file() {
        return Err(ExpError::config(
            "--masks",
            format!(
                "{} does not exist: give the masks with --masks FILE (a structured prune's masks.safetensors)",
                masks.display()
            ),
        ));
    }
    Ok((run, masks))
}

/// Posterior-mean logits of `net` over every batch; `(max |a − b|, max |a|)` against `other`.
fn logit_diff(
    a: &dyn Module,
    b: &dyn Module,
    cfg: &StudyConfig,
    set: &crate::data::ImageSet,
    norm: &Normalizer,
    dev: &Device,
) -> Result<(f64, f64)> {
    let mut batches = eval_image_batches(cfg, set, norm, dev)?;
    let mut rng = SeedStream::Eval.rng(cfg.seed);
    batches.start_epoch(0, &mut rng);
    let (mut diff, mut scale) = (0f64, 0f64);
    let max = |t: &Tensor| -> candle_core::Result<f64> {
        t.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()
    };
    for i in 0..batches.num_batches() {
        let (x, _) = batches.batch(i, &mut rng)?;
        let ya = a.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
        let yb = b.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
        diff = diff.max(max(&(&ya - &yb)?)?);
        scale = scale.max(max(&ya)?);
    }
    Ok((diff, scale))
}

/// `secateur compact` (see the [module documentation](self)).
pub fn compact(opts: &CompactOptions) -> Result<CompactSummary> {
    // a DCFF or CAP run is compacted from its own learned structure, never through other masks
    let (run, from_prune) = match super::pruned_run(&opts.run)? {
        Some((run, _)) => (run, true),
        None => (opts.run.clone(), false),
    };
    let learned = StudyConfig::from_file(&RunDir::open(&run)?.file("config.toml"), &[])?.pruning;
    if learned.is_dcff() || learned.is_cap() {
        if from_prune || opts.masks.is_some() {
            return Err(ExpError::config(
                "--masks",
                format!(
                    "a `{}` run is compacted from what it learned: `secateur compact --run {}` without --masks",
                    learned.method,
                    run.display()
                ),
            ));
        }
        return if learned.is_dcff() {
            compact_dcff(opts)
        } else {
            compact_cap(opts)
        };
    }
    let (run_path, masks_file) = source(opts)?;
    let FinishedClassifier {
        cfg,
        data,
        norm,
        input,
        classes,
        net,
        store,
        dev,
        ..
    } = FinishedClassifier::open(&run_path, opts.data_dir.as_deref(), "compact")?;
    let masks = crate::prune::load_masks(&masks_file, &store)?; // applies them
    if super::pruned_run(&opts.run)?.is_some() {
        crate::structured::apply_bn_stats(&opts.run, &store)?;
    }
    let c = coupling(&cfg, input, classes)?;
    let smask = StructuredMask::from_mask_set(&c, &masks)
        .map_err(|e| ExpError::config("--masks", format!("{}: {e}", masks_file.display())))?;
    // an SCL run whose connections left no whole group is still made a plain network (its
    // sparse weights at full width)
    if smask.num_pruned() == 0 && !cfg.pruning.is_scl() {
        return Err(ExpError::config(
            "--masks",
            format!(
                "{} prunes no whole filter or unit, so there is nothing to compact (a structured prune: \
                 `secateur prune --method structured`)",
                masks_file.display()
            ),
        ));
    }
    check_pruned_outputs(&c, &smask, &store.tensors()).map_err(|e| ExpError::config("--masks", e.to_string()))?;
    let mut compacted = compact_store(&c, &smask, &store)?;

    let mut small_cfg = cfg.at_widths(compacted.out_widths());
    if cfg.pruning.is_scl() {
        // the learned connections are in the weights (their masks applied): a plain network
        let suffix = format!(".{}", secateur_pruning::learned::scl::MASK_BUFFER);
        compacted.tensors.retain(|k, _| !k.ends_with(&suffix));
        small_cfg.pruning = Default::default();
    }
    let (small_net, small_store) = build_model(&small_cfg, input, classes, &dev)?;
    small_store.load(&compacted.tensors)?;
    let widths = compacted.width_rows();
    let before = Before {
        net: &net,
        cfg: &cfg,
        params: store.num_params(),
        timed: None,
    };
    let groups = (smask.num_pruned(), smask.num_groups());
    let small = (&small_net, &small_cfg, &small_store);
    let data = (&data, &norm, &dev, input, classes);
    finish(
        opts,
        &run_path,
        &[&run_path, &masks_file],
        before,
        small,
        data,
        widths,
        groups,
    )
}

/// The network compacted, for the summary's first column: its outputs (and accuracy), its
/// FLOPs (of `cfg`) and parameters, and the network timed in its place (`None`: itself).
struct Before<'a> {
    net: &'a Network,
    cfg: &'a StudyConfig,
    params: usize,
    timed: Option<&'a dyn Module>,
}

/// Checks that the compacted network computes what `before` computes, measures both, and
/// writes the compacted run into `opts.out` (see the [module documentation](self)).
#[allow(clippy::too_many_arguments)]
fn finish(
    opts: &CompactOptions,
    run_path: &Path,
    sources: &[&Path],
    before: Before<'_>,
    (small_net, small_cfg, small_store): (&Network, &StudyConfig, &secateur_bayes::ParamStore),
    (data, norm, dev, input, classes): (&crate::data::LoadedImages, &Normalizer, &Device, [usize; 3], usize),
    widths: Vec<(String, usize, usize)>,
    (groups_pruned, groups): (usize, usize),
) -> Result<CompactSummary> {
    let cfg = before.cfg;
    let (diff, scale) = logit_diff(before.net, small_net, cfg, &data.test, norm, dev)?;
    if diff.is_nan() || diff > MAX_LOGIT_DIFF * scale.max(1.0) {
        return Err(ExpError::Run {
            path: run_path.to_path_buf(),
            message: format!(
                "the compacted network differs from the masked one: max |Δ logits| = {diff:.3e} (logits up to \
                 {scale:.3}); this is a bug, please report it"
            ),
        });
    }
    let flops = |cfg: &StudyConfig| -> Result<u64> { Ok(geometry(cfg, input, classes)?.dense_flops()) };
    let (mut lat_masked, mut lat_small) = (Vec::new(), Vec::new());
    if opts.latency_reps > 0 {
        for b in [1, 128] {
            let reps = if b == 1 {
                opts.latency_reps * 5
            } else {
                opts.latency_reps
            };
            let timed: &dyn Module = before.timed.unwrap_or(before.net);
            let l = latencies(
                &[timed, small_net as &dyn Module],
                input,
                b,
                cfg.model.dtype()?,
                dev,
                reps,
            )?;
            lat_masked.push(l[0]);
            lat_small.push(l[1]);
        }
    }
    let acc_masked = super::evaluate(before.net, &data.test, norm, cfg, dev)?.metrics;
    let ev = super::evaluate(small_net, &data.test, norm, small_cfg, dev)?;
    let masked = NetworkCost {
        params: before.params,
        flops: flops(cfg)?,
        test_accuracy: acc_masked.accuracy,
        latency: lat_masked,
    };
    let small = NetworkCost {
        params: small_store.num_params(),
        flops: flops(small_cfg)?,
        test_accuracy: ev.metrics.accuracy,
        latency: lat_small,
    };
    let summary = CompactSummary {
        run: run_path.display().to_string(),
        arch: cfg.model.arch.clone(),
        layers: cfg.model.layers.clone(),
        widths,
        groups_pruned,
        groups,
        masked,
        compacted: small,
        max_logit_diff: diff,
        max_logit: scale,
        cpu: cpu_model(),
        threads: rayon_threads(),
    };

    prepare_out(&opts.out, opts.force, sources)?;
    let (out, _lock) = RunDir::create_locked(&small_cfg.name, Some(&opts.out))?;
    atomic::write_string(&out.file("config.toml"), &small_cfg.to_toml()?)?;
    atomic::write_safetensors(&out.file("weights.safetensors"), &small_store.tensors())?;
    let mut metrics = Map::new();
    metrics.insert("test_accuracy".into(), ev.metrics.accuracy.into());
    metrics.insert("test_nll".into(), ev.metrics.nll.into());
    metrics.insert("test_ece".into(), ev.metrics.ece.into());
    metrics.insert("params_total".into(), small_store.num_params().into());
    metrics.insert("seed".into(), cfg.seed.into());
    metrics.insert("compacted_from".into(), summary.run.clone().into());
    let json =
        |v: &Value| serde_json::to_string_pretty(v).map_err(|e| ExpError::io(out.path(), std::io::Error::other(e)));
    atomic::write_string(&out.file("metrics.json"), &json(&Value::Object(metrics))?)?;
    let s = serde_json::to_value(&summary).map_err(|e| ExpError::io(out.path(), std::io::Error::other(e)))?;
    atomic::write_string(&out.file(COMPACT_SUMMARY), &json(&s)?)?;
    atomic::write_string(&out.file("compact.md"), &markdown(&summary))?;
    Ok(summary)
}

/// A CAP run (`pruning.method = "cap"`): the static plain network (each kept channel's mean
/// mask folded into the layer that reads it, the gates dropped, the run's cut applied;
/// `crate::learned::cap_static`) is compacted as a structured prune; the first column is that
/// static network at full width.
fn compact_cap(opts: &CompactOptions) -> Result<CompactSummary> {
    let FinishedClassifier {
        cfg,
        data,
        norm,
        input,
        classes,
        store,
        dev,
        ..
    } = FinishedClassifier::open(&opts.run, opts.data_dir.as_deref(), "compact")?;
    let c = coupling(&cfg, input, classes)?;
    let stats = crate::learned::read_cap_channels(&opts.run)?;
    let masks_file = opts.run.join(super::MASKS_FILE);
    let masks = secateur_pruning::MaskSet::load(&masks_file, &Device::Cpu)
        .map_err(|e| ExpError::config("--masks", format!("{}: {e}", masks_file.display())))?;
    let smask = StructuredMask::from_mask_set(&c, &masks)
        .map_err(|e| ExpError::config("--masks", format!("{}: {e}", masks_file.display())))?;
    let (plain_cfg, plain_net, plain_store) =
        crate::learned::cap_static(&cfg, &store, &c, &stats, &smask, (input, classes), &dev)?;
    let compacted = compact_store(&c, &smask, &plain_store)?;
    let small_cfg = plain_cfg.at_widths(compacted.out_widths());
    let (small_net, small_store) = build_model(&small_cfg, input, classes, &dev)?;
    small_store.load(&compacted.tensors)?;
    let widths = compacted.width_rows();
    let before = Before {
        net: &plain_net,
        cfg: &plain_cfg,
        params: plain_store.num_params(),
        timed: None,
    };
    let groups = (smask.num_pruned(), smask.num_groups());
    let small = (&small_net, &small_cfg, &small_store);
    let data = (&data, &norm, &dev, input, classes);
    finish(opts, &opts.run, &[&opts.run], before, small, data, widths, groups)
}

/// A DCFF run (`pruning.method = "dcff"`): its pruned layers become plain layers holding the
/// fused filters (`secateur_pruning::learned::dcff::fuse`), the rest of its compact network is
/// copied; the first column is the full-width network of the same architecture (its FLOPs,
/// parameters and latency; the accuracy is the DCFF run's own).
fn compact_dcff(opts: &CompactOptions) -> Result<CompactSummary> {
    let FinishedClassifier {
        cfg,
        data,
        norm,
        input,
        classes,
        net,
        store,
        dev,
        ..
    } = FinishedClassifier::open(&opts.run, opts.data_dir.as_deref(), "compact")?;
    let small_cfg = crate::learned::dcff_compact_config(&cfg, input, classes)?;
    let (small_net, small_store) = build_model(&small_cfg, input, classes, &dev)?;
    small_store.load(&secateur_pruning::learned::dcff::fuse(&store)?)?;
    let mut full_cfg = cfg.clone();
    full_cfg.pruning = Default::default();
    let (full_net, full_store) = build_model(&full_cfg, input, classes, &dev)?;
    let (_, full_widths) = crate::learned::dcff_widths(&cfg, input, classes)?;
    let widths: Vec<(String, usize, usize)> = full_widths
        .iter()
        .map(|(path, c)| (format!("{path}.weight"), *c, cfg.pruning.dcff.kept(*c)))
        .collect();
    let groups = (
        widths.iter().map(|(_, b, a)| b - a).sum(),
        widths.iter().map(|(_, b, _)| *b).sum(),
    );
    let before = Before {
        net: &net,
        cfg: &full_cfg,
        params: full_store.num_params(),
        timed: Some(&full_net as &dyn Module),
    };
    let small = (&small_net, &small_cfg, &small_store);
    let data = (&data, &norm, &dev, input, classes);
    finish(opts, &opts.run, &[&opts.run], before, small, data, widths, groups)
}

/// The threads rayon (and so the CPU kernels) use.
fn rayon_threads() -> usize {
    rayon::current_num_threads()
}

/// `compact.md`: sizes, accuracy and latency before and after, and the widths per layer.
pub fn markdown(s: &CompactSummary) -> String {
    let (m, c) = (&s.masked, &s.compacted);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let mut t = format!(
        "# Compaction of `{}` ({}, {} layers)\n\n\
         {} of {} groups pruned. The compacted network computes what the masked one computes: max |Δ logits| \
         over the test set {:.2e} (logits up to {:.2}).\n\n\
         | | masked (full width) | compacted | ratio |\n|---|---:|---:|---:|\n\
         | parameters | {} | {} | {:.3} |\n| FLOPs (MACs per example) | {} | {} | {:.3} |\n\
         | test accuracy | {:.4} | {:.4} | |\n",
        s.run,
        s.arch,
        s.layers,
        s.groups_pruned,
        s.groups,
        s.max_logit_diff,
        s.max_logit,
        m.params,
        c.params,
        ratio(c.params as f64, m.params as f64),
        m.flops,
        c.flops,
        ratio(c.flops as f64, m.flops as f64),
        m.test_accuracy,
        c.test_accuracy,
    );
    for (a, b) in m.latency.iter().zip(&c.latency) {
        t += &format!(
            "| latency, batch {} (median ms; fastest) | {:.3}; {:.3} | {:.3}; {:.3} | speed-up {:.2}× |\n",
            a.batch,
            a.median_ms,
            a.min_ms,
            b.median_ms,
            b.min_ms,
            ratio(a.median_ms, b.median_ms)
        );
    }
    if s.layers != "deterministic" {
        t += "\nTest accuracy is each network's own predictive. Where that is a Monte Carlo average (Bayesian layers \
              sampled at evaluation), the two networks draw different noise (the compacted one has fewer weights), so \
              the accuracies can differ where the posterior-mean logits agree.\n";
    }
    if let Some(l) = m.latency.first() {
        t += &format!(
            "\nLatency: CPU forward pass in evaluation mode, median of {} (batch 1) and {} (batch {}) timed passes \
             after two untimed ones, the two networks alternating, on {} with {} threads. The speed-up to expect \
             from FLOPs alone is {:.2}×.\n",
            l.reps,
            m.latency.get(1).map_or(0, |x| x.reps),
            m.latency.get(1).map_or(0, |x| x.batch),
            s.cpu,
            s.threads,
            ratio(m.flops as f64, c.flops as f64)
        );
    }
    t += "\n| layer | width before | after |\n|---|---:|---:|\n";
    for (n, b, a) in &s.widths {
        t += &format!("| `{n}` | {b} | {a} |\n");
    }
    t
}
