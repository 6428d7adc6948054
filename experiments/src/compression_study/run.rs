//! Running the study: its directory, the trained networks, the cells, and the rows of
//! `results.csv`, each added as it comes (under a lock, so that shards share a directory).

use super::config::{check_applicable, CompressionConfig, CompressionFile, CompressionModel, DLLP};
use crate::atomic;
use crate::commands::posterior::Fitted;
use crate::commands::{build_model, evaluate, load_data, ood_predictions, train, TrainOptions, TrainingSetup};
use crate::config::StudyConfig;
use crate::data::{ImageSet, LoadedImages, Normalizer};
use crate::error::{ExpError, Result};
use crate::prune::{prune_model, PruneData, PruneSpec};
use crate::seed_stream::SeedStream;
use crate::store::RunDir;
use candle_core::{Device, Tensor};
use indicatif::ProgressBar;
use secateur_bayes::ParamStore;
use secateur_inference::elbo::{BetaSchedule, Objective};
use secateur_inference::metrics::auroc;
use secateur_inference::predict::McPredictions;
use secateur_inference::schedule::Schedule;
use secateur_models::Network;
use secateur_pruning::{criterion, MaskSet};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The study file's copy inside a study directory (compared on `--resume`).
pub const STUDY_FILE: &str = "compression.toml";
/// One row per evaluated network ([`CompressionRow`]).
pub const RESULTS_FILE: &str = "results.csv";
/// The Markdown tables (mean ± standard deviation over seeds).
pub const TABLE_FILE: &str = "compression.md";
/// The figure.
pub const FIGURE_FILE: &str = "compression.png";
/// Locked while a process adds a row to `results.csv` (inside `runs/`, beside the trained runs).
const LOCK_FILE: &str = "runs/results.lock";
/// The criterion name of the dense reference rows (sparsity 0).
pub const DENSE: &str = "dense";
/// The header of `results.csv`.
pub const HEADER: &str =
    "model,seed,criterion,target_sparsity,sparsity,finetuned,accuracy,nll,ece,ood_auroc,seconds,error";

/// The columns of `results.csv` that name a row ([`CompressionRow::key`]).
pub const KEY_COLUMNS: [&str; 5] = ["model", "seed", "criterion", "target_sparsity", "finetuned"];

/// How a study is run (not part of its definition: the rows do not depend on it).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Study directory (default `runs/<name>-<timestamp>`). One that holds a compression study
    /// is refused unless `force`.
    pub out: Option<PathBuf>,
    /// Continue the study in this directory: the rows already in its `results.csv` are kept and
    /// skipped, finished trained runs reused, unfinished ones resumed. Its `compression.toml`
    /// must say what this study file says.
    pub resume: Option<PathBuf>,
    /// Replace the compression study in `out` (its files and trained runs are removed first).
    pub force: bool,
    /// Data directory searched first.
    pub data_dir: Option<PathBuf>,
    /// Run only the `(model, seed)` units whose position in the grid is `i` modulo `n`; shards
    /// may share one directory (start one with `out`, the others with `resume`).
    pub shard: Option<(usize, usize)>,
    /// With `resume`: run nothing, only rewrite the table and the figure.
    pub report_only: bool,
    /// No progress bar.
    pub quiet: bool,
}

/// One evaluated network: a row of `results.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressionRow {
    /// The model's name in the study file.
    pub model: String,
    /// Seed of the trained run.
    pub seed: u64,
    /// Criterion, or [`DENSE`] for the unpruned reference.
    pub criterion: String,
    /// Target sparsity (0 for the dense reference).
    pub target_sparsity: f64,
    /// Reached sparsity: the fraction of all prunable weights the masks remove.
    pub sparsity: f64,
    /// Evaluated after the fine-tune (`finetune_epochs` with the masks held).
    pub finetuned: bool,
    /// Test accuracy of the model's own predictive.
    pub accuracy: f64,
    /// Test negative log-likelihood (nats).
    pub nll: f64,
    /// Test expected calibration error (15 bins).
    pub ece: f64,
    /// AUROC of telling the OOD set from the test set by predictive entropy (NaN: no OOD set).
    pub ood_auroc: f64,
    /// Wall seconds of the row's own work (scoring and evaluation; fine-tune and evaluation).
    pub seconds: f64,
    /// The error of a failed cell, empty otherwise.
    pub error: String,
}

/// `(model, seed, criterion, target sparsity in ppm, finetuned)`: a row's identity.
pub type RowKey = (String, u64, String, u64, bool);

fn ppm(s: f64) -> u64 {
    (s * 1e6).round() as u64
}

impl CompressionRow {
    /// The row's identity.
    pub fn key(&self) -> RowKey {
        (
            self.model.clone(),
            self.seed,
            self.criterion.clone(),
            ppm(self.target_sparsity),
            self.finetuned,
        )
    }
}

/// The `(criterion, target sparsity, finetuned)` rows of one trained network, in table order:
/// the dense reference, then every criterion at every sparsity, each without and (if
/// `finetune_epochs > 0`) with the fine-tune.
pub fn unit_rows(study: &CompressionConfig, m: &CompressionModel) -> Vec<(String, f64, bool)> {
    let fts: &[bool] = if study.finetune_epochs > 0 {
        &[false, true]
    } else {
        &[false]
    };
    let mut cells = vec![(DENSE.to_string(), 0.0)];
    for c in &m.criteria {
        cells.extend(study.sparsities.iter().map(|&s| (c.clone(), s)));
    }
    cells
        .into_iter()
        .flat_map(|(c, s)| fts.iter().map(move |&f| (c.clone(), s, f)))
        .collect()
}

/// Every row key of the study in canonical order (models, seeds, then [`unit_rows`]), with its
/// position.
pub fn grid(study: &CompressionConfig) -> BTreeMap<RowKey, usize> {
    let mut out = BTreeMap::new();
    for m in &study.models {
        for &seed in &study.seeds {
            for (c, s, f) in unit_rows(study, m) {
                let n = out.len();
                out.insert((m.name.clone(), seed, c, ppm(s), f), n);
            }
        }
    }
    out
}

/// Reads `results.csv` (a missing file is an empty study).
pub fn read_results(path: &Path) -> Result<Vec<CompressionRow>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ExpError::io(path, e)),
    };
    let bad = |line: usize, what: String| ExpError::Run {
        path: path.to_path_buf(),
        message: format!("line {line}: {what}"),
    };
    let mut lines = text.lines();
    if let Some(h) = lines.next() {
        if h != HEADER {
            return Err(bad(1, format!("the header is not `{HEADER}`")));
        }
    }
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let n = i + 2;
        let f: Vec<&str> = line.splitn(12, ',').collect();
        if f.len() != 12 {
            return Err(bad(n, "expected 12 fields".into()));
        }
        let num = |k: usize| -> Result<f64> {
            f[k].parse::<f64>()
                .map_err(|_| bad(n, format!("field {} is not a number: `{}`", k + 1, f[k])))
        };
        rows.push(CompressionRow {
            model: f[0].into(),
            seed: f[1]
                .parse()
                .map_err(|_| bad(n, format!("seed is not an integer: `{}`", f[1])))?,
            criterion: f[2].into(),
            target_sparsity: num(3)?,
            sparsity: num(4)?,
            finetuned: f[5]
                .parse()
                .map_err(|_| bad(n, format!("finetuned is not true/false: `{}`", f[5])))?,
            accuracy: num(6)?,
            nll: num(7)?,
            ece: num(8)?,
            ood_auroc: num(9)?,
            seconds: num(10)?,
            error: f[11].trim_matches('"').into(),
        });
    }
    Ok(rows)
}

/// `results.csv` of `rows`, in their order.
pub fn results_csv(rows: &[CompressionRow]) -> String {
    let mut s = format!("{HEADER}\n");
    for r in rows {
        s.push_str(&format!(
            "{},{},{},{},{:.6},{},{:.6},{:.6},{:.6},{:.6},{:.2},\"{}\"\n",
            r.model,
            r.seed,
            r.criterion,
            r.target_sparsity,
            r.sparsity,
            r.finetuned,
            r.accuracy,
            r.nll,
            r.ece,
            r.ood_auroc,
            r.seconds,
            r.error.replace('"', "'").replace('\n', " ")
        ));
    }
    s
}

/// Adds `row` to the study's `results.csv` (replacing a row with its key), sorted in grid
/// order, written atomically under the study's lock, so that shards in one directory add rows
/// side by side.
fn record(dir: &Path, row: CompressionRow, order: &BTreeMap<RowKey, usize>) -> Result<()> {
    let lock_path = dir.join(LOCK_FILE);
    if let Some(parent) = lock_path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ExpError::io(parent, e))?;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| ExpError::io(&lock_path, e))?;
    lock.lock().map_err(|e| ExpError::io(&lock_path, e))?;
    let path = dir.join(RESULTS_FILE);
    let mut rows = read_results(&path)?;
    let key = row.key();
    rows.retain(|r| r.key() != key);
    rows.push(row);
    rows.sort_by_key(|r| order.get(&r.key()).copied().unwrap_or(usize::MAX));
    atomic::write_string(&path, &results_csv(&rows))
    // the lock is released when `lock` is dropped
}

/// A model's data, loaded once: the named set, its shape, and the OOD set.
struct ModelData {
    loaded: LoadedImages,
    input: [usize; 3],
    classes: usize,
    ood: Option<ImageSet>,
}

fn load_model_data(
    study: &CompressionConfig,
    m: &CompressionModel,
    cfg: &StudyConfig,
    data_dir: Option<&Path>,
) -> Result<ModelData> {
    let loaded = load_data(cfg, data_dir)?;
    let t = &loaded.train;
    let input = [t.channels, t.height, t.width];
    let classes = loaded.train.n_classes.max(loaded.test.n_classes) as usize;
    let ood = match study.ood.as_ref().or(cfg.data.ood.as_ref()) {
        Some(name) => {
            let dir = data_dir.map(Path::to_path_buf).or_else(|| cfg.data.dir.clone());
            let set = crate::data::load_images(name, dir.as_deref())?.test;
            if [set.channels, set.height, set.width] != input {
                return Err(ExpError::config(
                    "compression.ood",
                    format!(
                        "`{name}` has images of {}×{}×{}; model `{}` reads {}×{}×{}",
                        set.channels, set.height, set.width, m.name, input[0], input[1], input[2]
                    ),
                ));
            }
            Some(set)
        }
        None => None,
    };
    Ok(ModelData {
        loaded,
        input,
        classes,
        ood,
    })
}

/// The study directory: a new one (refusing, unless `force`, one that holds a compression study)
/// or the one to resume (whose recorded study file must say what `file` says).
fn open_dir(file: &CompressionFile, text: &str, path: &Path, opts: &RunOptions) -> Result<PathBuf> {
    if let Some(d) = &opts.resume {
        let recorded = d.join(STUDY_FILE);
        let old = std::fs::read_to_string(&recorded).map_err(|e| ExpError::io(&recorded, e))?;
        let old: CompressionFile =
            toml::from_str(&old).map_err(|e| ExpError::config(recorded.display().to_string(), e.to_string()))?;
        if &old != file {
            return Err(ExpError::Run {
                path: d.clone(),
                message: format!(
                    "holds another study (its {STUDY_FILE} differs from {}); a study continues with its own file",
                    path.display()
                ),
            });
        }
        return Ok(d.clone());
    }
    let study = &file.compression;
    let d = opts
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("{}-{}", study.name, crate::store::timestamp())));
    let ours = d.join(STUDY_FILE).is_file();
    if let Some(f) = [STUDY_FILE, RESULTS_FILE, "runs"].iter().find(|f| d.join(f).exists()) {
        if !ours {
            return Err(ExpError::Run {
                path: d.clone(),
                message: format!("holds {f} but no {STUDY_FILE}: it is not a compression study; choose another --out"),
            });
        }
        if !opts.force {
            return Err(ExpError::Run {
                path: d.clone(),
                message: format!(
                    "already holds a compression study ({STUDY_FILE}); refusing to overwrite it: continue it with \
                     --resume {0}, or replace it with --force",
                    d.display()
                ),
            });
        }
        for f in [STUDY_FILE, RESULTS_FILE, TABLE_FILE, FIGURE_FILE] {
            let p = d.join(f);
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| ExpError::io(&p, e))?;
            }
        }
        let runs = d.join("runs");
        if runs.exists() {
            std::fs::remove_dir_all(&runs).map_err(|e| ExpError::io(&runs, e))?;
        }
    }
    std::fs::create_dir_all(d.join("runs")).map_err(|e| ExpError::io(&d, e))?;
    atomic::write_string(&d.join(STUDY_FILE), text)?;
    Ok(d)
}

/// Runs (or continues) the study of the file `path`; returns its directory.
pub fn run(file: &CompressionFile, path: &Path, opts: &RunOptions) -> Result<PathBuf> {
    let study = &file.compression;
    let text = std::fs::read_to_string(path).map_err(|e| ExpError::io(path, e))?;
    if opts.report_only && opts.resume.is_none() {
        return Err(ExpError::config(
            "--report-only",
            "needs --resume DIR (the study to report)",
        ));
    }
    let (shard, shards) = opts.shard.unwrap_or((0, 1));
    if shards == 0 || shard >= shards {
        return Err(ExpError::config(
            "--shard",
            format!("{shard}/{shards} is not a shard I/N with I < N"),
        ));
    }
    // Data and the built-model check of every criterion, before any directory is touched.
    let mut data = Vec::new();
    if !opts.report_only {
        for m in &study.models {
            let cfg = study.model_config(path, m, study.seeds[0])?;
            let md = load_model_data(study, m, &cfg, opts.data_dir.as_deref())?;
            check_applicable(&cfg, &m.name, &m.criteria, md.input, md.classes)?;
            data.push(md);
        }
    }
    let dir = open_dir(file, &text, path, opts)?;
    let order = grid(study);
    let done: Vec<CompressionRow> = read_results(&dir.join(RESULTS_FILE))?;
    if let Some(r) = done.iter().find(|r| !order.contains_key(&r.key())) {
        return Err(ExpError::Run {
            path: dir.join(RESULTS_FILE),
            message: format!(
                "has a row outside this study's grid ({} seed {} {} at {})",
                r.model, r.seed, r.criterion, r.target_sparsity
            ),
        });
    }
    let recorded = done;
    let done: BTreeSet<RowKey> = recorded.iter().map(CompressionRow::key).collect();
    if !opts.report_only {
        // what this shard owes, for `study join`: the rows of its (model, seed) units
        let mut keys = Vec::new();
        let mut owner = Vec::new();
        let mut unit = 0;
        for m in &study.models {
            for &seed in &study.seeds {
                for (c, s, f) in unit_rows(study, m) {
                    owner.push(unit % shards);
                    keys.push(vec![m.name.clone(), seed.to_string(), c, s.to_string(), f.to_string()]);
                }
                unit += 1;
            }
        }
        crate::cluster::ShardManifest::new(
            crate::cluster::StudyKind::Compression,
            &study.name,
            path,
            (shard, shards),
            &KEY_COLUMNS,
            keys,
            owner,
        )?
        .write(&dir)?;
        let units: Vec<(usize, u64)> = (0..study.models.len())
            .flat_map(|i| study.seeds.iter().map(move |&s| (i, s)))
            .skip(shard)
            .step_by(shards)
            .collect();
        let total: usize = units
            .iter()
            .map(|&(i, _)| unit_rows(study, &study.models[i]).len())
            .sum();
        let bar = crate::observe::study_bar(total as u64, opts.quiet);
        for &(i, seed) in &units {
            let m = &study.models[i];
            let key = |(c, s, f): &(String, f64, bool)| (m.name.clone(), seed, c.clone(), ppm(*s), *f);
            let missing: Vec<(String, f64, bool)> = unit_rows(study, m)
                .into_iter()
                .filter(|r| !done.contains(&key(r)))
                .collect();
            bar.inc((unit_rows(study, m).len() - missing.len()) as u64);
            if missing.is_empty() {
                continue;
            }
            let unit = Unit {
                study,
                model: m,
                seed,
                data: &data[i],
                dir: &dir,
                order: &order,
            };
            // the unit's dense row, if an earlier process recorded it: the network trained now
            // must give it again
            let dense = recorded
                .iter()
                .find(|r| r.model == m.name && r.seed == seed && r.criterion == DENSE && !r.finetuned);
            unit.run(path, &missing, dense, opts, &bar)?;
            super::plot::write_report(study, &dir)?;
        }
        bar.finish_and_clear();
    }
    super::plot::write_report(study, &dir)?;
    Ok(dir)
}

/// One trained network of the study (a model and a seed) and the rows it owes.
struct Unit<'a> {
    study: &'a CompressionConfig,
    model: &'a CompressionModel,
    seed: u64,
    data: &'a ModelData,
    dir: &'a Path,
    order: &'a BTreeMap<RowKey, usize>,
}

/// What every cell of a unit shares: the trained run's config, weights and posterior, and its
/// data as `train` saw it.
struct Trained {
    cfg: StudyConfig,
    weights: HashMap<String, Tensor>,
    fitted: Option<Fitted>,
    prune: PruneData,
    /// The optimiser state of the run's last checkpoint (for `adam-fisher`).
    moments: Option<std::collections::BTreeMap<String, Tensor>>,
}

impl Unit<'_> {
    /// Trains (or resumes, or reuses) the unit's run, then computes the `missing` rows, adding
    /// each to `results.csv` as it comes. Where the unit's dense row was recorded earlier
    /// (`dense`), the network trained now must reproduce it ([`check_dense`]) before any row is
    /// added, so that a resumed study never mixes rows of two different trained networks.
    fn run(
        &self,
        path: &Path,
        missing: &[(String, f64, bool)],
        dense: Option<&CompressionRow>,
        opts: &RunOptions,
        bar: &ProgressBar,
    ) -> Result<()> {
        let t = self.trained(path, opts, bar)?;
        if let Some(recorded) = dense.filter(|d| d.error.is_empty()) {
            bar.set_message(format!(
                "{} s{}: checking the dense network",
                self.model.name, self.seed
            ));
            let (net, _) = self.network(&t, None, false)?;
            check_dense(self.dir, recorded, self.evaluate(&t, &net)?)?;
        }
        let mut cells: Vec<(String, f64)> = missing.iter().map(|(c, s, _)| (c.clone(), *s)).collect();
        cells.dedup();
        for (crit, target) in cells {
            let wants = |f: bool| missing.iter().any(|(c, s, ff)| *c == crit && *s == target && *ff == f);
            bar.set_message(format!("{} s{} {crit} {target}", self.model.name, self.seed));
            let row = |finetuned: bool| CompressionRow {
                model: self.model.name.clone(),
                seed: self.seed,
                criterion: crit.clone(),
                target_sparsity: target,
                sparsity: f64::NAN,
                finetuned,
                accuracy: f64::NAN,
                nll: f64::NAN,
                ece: f64::NAN,
                ood_auroc: f64::NAN,
                seconds: 0.0,
                error: String::new(),
            };
            if crit == DLLP {
                self.dllp_cell(&t, target, &wants, &row, bar)?;
                continue;
            }
            let t0 = Instant::now();
            let masks = if crit == DENSE {
                Ok((None, 0.0))
            } else {
                self.prune(&t, &crit, target)
            };
            let (masks, sparsity) = match masks {
                Ok(m) => m,
                Err(e) => {
                    self.record_failed(&e, t0, &wants, &row, bar)?;
                    continue;
                }
            };
            if wants(false) {
                let mut r = row(false);
                r.sparsity = sparsity;
                let net = self.network(&t, masks.as_ref(), false);
                fill(&mut r, net.and_then(|(n, _)| self.evaluate(&t, &n)));
                r.seconds = t0.elapsed().as_secs_f64();
                record(self.dir, r, self.order)?;
                bar.inc(1);
            }
            if wants(true) {
                let t1 = Instant::now();
                let mut r = row(true);
                r.sparsity = sparsity;
                let net = self.network(&t, masks.as_ref(), true);
                fill(&mut r, net.and_then(|(n, _)| self.evaluate(&t, &n)));
                r.seconds = t1.elapsed().as_secs_f64();
                record(self.dir, r, self.order)?;
                bar.inc(1);
            }
        }
        Ok(())
    }

    /// Records the error `e` of a cell whose pruning failed in each of its wanted rows (without
    /// and with the fine-tune), with the time since `t0`.
    fn record_failed(
        &self,
        e: &ExpError,
        t0: Instant,
        wants: &dyn Fn(bool) -> bool,
        row: &dyn Fn(bool) -> CompressionRow,
        bar: &ProgressBar,
    ) -> Result<()> {
        for f in [false, true].into_iter().filter(|&f| wants(f)) {
            let mut r = row(f);
            r.error = e.to_string();
            r.seconds = t0.elapsed().as_secs_f64();
            record(self.dir, r, self.order)?;
            bar.inc(1);
        }
        Ok(())
    }

    /// The `dllp` cell at `target` ([`crate::dllp`]): DLLP on the trained weights (the study's
    /// scope and exclusions), evaluated by its particles' model average; with the fine-tune, its
    /// hardened particles take `finetune_epochs` more passes of Stein steps with the mask held
    /// ([`crate::dllp::finetune`]) and are evaluated again. A failure is recorded in the rows
    /// it leaves.
    fn dllp_cell(
        &self,
        t: &Trained,
        target: f64,
        wants: &dyn Fn(bool) -> bool,
        row: &dyn Fn(bool) -> CompressionRow,
        bar: &ProgressBar,
    ) -> Result<()> {
        let spec = PruneSpec {
            criterion: DLLP.into(),
            sparsity: target,
            scope: self.study.scope,
            bn_warmup_batches: 0,
            rounds: 1,
            samples_per_class: self.study.samples_per_class,
            keep_first: false,
            keep_last: self.study.keep_last,
            keep_conv: self.study.keep_conv,
            options: Default::default(),
        };
        let t0 = Instant::now();
        let fitted = bar.suspend(|| crate::dllp::fit(&t.cfg, &t.prune, &t.weights, &spec, &self.study.dllp, true));
        let mut out = match fitted {
            Ok(o) => o,
            Err(e) => return self.record_failed(&e, t0, wants, row, bar),
        };
        let sparsity = out.masks.sparsity()?;
        if wants(false) {
            let mut r = row(false);
            r.sparsity = sparsity;
            fill(&mut r, self.evaluate_dllp(t, &out));
            r.seconds = t0.elapsed().as_secs_f64();
            record(self.dir, r, self.order)?;
            bar.inc(1);
        }
        if wants(true) {
            let t1 = Instant::now();
            let mut r = row(true);
            r.sparsity = sparsity;
            let tuned = crate::dllp::finetune(&mut out, &t.cfg, &t.prune, self.study.finetune_epochs, true);
            fill(&mut r, tuned.and_then(|_| self.evaluate_dllp(t, &out)));
            r.seconds = t1.elapsed().as_secs_f64();
            record(self.dir, r, self.order)?;
            bar.inc(1);
        }
        Ok(())
    }

    /// Test metrics and OOD AUROC (by predictive entropy) of DLLP's particle average.
    fn evaluate_dllp(&self, t: &Trained, out: &crate::dllp::DllpOutcome) -> Result<[f64; 4]> {
        let mc = crate::dllp::predict(out, &t.cfg, &self.data.loaded.test, &t.prune)?;
        let p = &mc.predictions;
        let m = secateur_inference::metrics::classification_metrics(&p.probs, &p.labels, p.classes)?;
        let ood = match &self.data.ood {
            Some(set) => {
                let mo = crate::dllp::predict(out, &t.cfg, set, &t.prune)?;
                auroc(&mo.predictive_entropy, &mc.predictive_entropy)?
            }
            None => f64::NAN,
        };
        Ok([m.accuracy, m.nll, m.ece, ood])
    }

    /// The unit's trained run `<dir>/runs/<model>-s<seed>`: trained by `train` if absent,
    /// resumed if unfinished, reused if finished (refused if trained from another config).
    fn trained(&self, path: &Path, opts: &RunOptions, bar: &ProgressBar) -> Result<Trained> {
        let cfg = self.study.model_config(path, self.model, self.seed)?;
        let rd = self
            .dir
            .join("runs")
            .join(format!("{}-s{}", self.model.name, self.seed));
        if rd.join("metrics.json").is_file() {
            let recorded = StudyConfig::from_file(&rd.join("config.toml"), &[])?;
            if recorded != cfg {
                return Err(ExpError::Run {
                    path: rd,
                    message: "was trained from another config than the study's model config and seed now give; \
                              start the study again (--force) or restore the config"
                        .into(),
                });
            }
        } else {
            let started = rd.join("config.toml").is_file();
            bar.set_message(format!(
                "training {} seed {} ({} epochs)",
                self.model.name, self.seed, cfg.train.epochs
            ));
            let topts = TrainOptions {
                out: (!started).then(|| rd.clone()),
                data_dir: opts.data_dir.clone(),
                device: "cpu".into(),
                quiet: opts.quiet,
                masks: None,
            };
            bar.suspend(|| train(&cfg, &topts, started.then_some(rd.as_path())))?;
        }
        let run = RunDir::open(&rd)?;
        let weights = run.read_final_weights()?;
        let fitted = Fitted::load(&cfg, &run)?;
        // the training split as `train` drew it, and its normalisation
        let train_set = if cfg.data.val_fraction > 0.0 {
            let mut split_rng = SeedStream::DataSplit.rng(cfg.seed);
            self.data.loaded.train.split(cfg.data.val_fraction, &mut split_rng)?.0
        } else {
            self.data.loaded.train.clone()
        };
        let prune = PruneData {
            norm: Normalizer::from_set(&train_set),
            train: train_set,
            input: self.data.input,
            classes: self.data.classes,
        };
        Ok(Trained {
            moments: crate::prune::optimizer_moments(&run)?,
            cfg,
            weights,
            fitted,
            prune,
        })
    }

    /// Scores the trained weights with `crit` (posterior criteria read the run's variational
    /// posterior or `[posterior]`) and masks them to `target`; returns the masks and the reached
    /// sparsity over all prunable weights.
    fn prune(&self, t: &Trained, crit: &str, target: f64) -> Result<(Option<MaskSet>, f64)> {
        let e = criterion::entry(crit).map_err(|e| ExpError::config("criteria", e.to_string()))?;
        let spec = PruneSpec {
            criterion: crit.to_string(),
            sparsity: target,
            scope: self.study.scope,
            bn_warmup_batches: 0,
            rounds: e.default_rounds,
            samples_per_class: self.study.samples_per_class,
            keep_first: false,
            keep_last: self.study.keep_last,
            keep_conv: self.study.keep_conv,
            options: Default::default(),
        };
        let p = prune_model(
            &t.cfg,
            &t.prune,
            Some(&t.weights),
            &spec,
            t.fitted.as_ref().map(|f| f.posterior()),
            t.moments.as_ref(),
        )?;
        Ok((Some(p.masks), p.table.sparsity()))
    }

    /// The trained network with `masks` applied; with `finetune`, then trained
    /// `finetune_epochs` more epochs with the masks held (their gradients zeroed and the weights
    /// re-zeroed after every step, as `train --masks` and the PaI study train masked networks):
    /// a constant learning rate ([`CompressionConfig::finetune_lr`]), a fresh optimiser, the
    /// ELBO's β fixed at its value on the last training step, draws from
    /// [`SeedStream::Finetune`].
    fn network(&self, t: &Trained, masks: Option<&MaskSet>, finetune: bool) -> Result<(Network, ParamStore)> {
        let dev = Device::Cpu;
        let cfg = &t.cfg;
        let (net, store) = build_model(cfg, t.prune.input, t.prune.classes, &dev)?;
        store.load(&t.weights)?;
        if let Some(m) = masks {
            m.apply(&store)?;
        }
        if finetune {
            let n = t.prune.train.len();
            let mut setup = TrainingSetup::new(cfg, n)?.with_stream(SeedStream::Finetune);
            let steps = n.div_ceil(cfg.data.batch_size.max(1));
            let s = &mut setup.settings;
            s.epochs = self.study.finetune_epochs;
            s.lr = self.study.finetune_lr(cfg);
            s.schedule = Schedule::Constant { warmup: 0 };
            if let Objective::Elbo(e) = &mut s.objective {
                let last = e
                    .beta
                    .at_step(cfg.train.epochs.saturating_sub(1), steps.saturating_sub(1), steps);
                e.beta = BetaSchedule::Constant { value: last };
            }
            let mut trainer = setup.trainer(&net, &store)?;
            if let Some(m) = masks {
                trainer.set_hook(Box::new(m.clone()));
            }
            let mut batches = setup.image_batches(&t.prune.train, &t.prune.norm, &dev)?;
            trainer.fit(&mut batches, None, &mut [])?;
        }
        Ok((net, store))
    }

    /// Test metrics of the model's own predictive (Monte Carlo over `bayes.eval_samples` draws
    /// for a Bayesian model, one pass otherwise, as `train` evaluates) and the OOD AUROC by
    /// predictive entropy (OOD positive).
    fn evaluate(&self, t: &Trained, net: &Network) -> Result<[f64; 4]> {
        let dev = Device::Cpu;
        let norm = &t.prune.norm;
        let ev = evaluate(net, &self.data.loaded.test, norm, &t.cfg, &dev)?;
        let m = ev.metrics;
        let ood = match &self.data.ood {
            Some(set) => {
                let mo = ood_predictions(net, set, norm, &t.cfg, &dev)?;
                let ind = match ev.mc {
                    Some(mc) => mc,
                    None => McPredictions::from_draws(&[ev.preds.probs], ev.preds.labels, ev.preds.classes)?,
                };
                auroc(&mo.predictive_entropy, &ind.predictive_entropy)?
            }
            None => f64::NAN,
        };
        Ok([m.accuracy, m.nll, m.ece, ood])
    }
}

/// Writes an evaluation (or its error) into a row.
/// Refuses a trained network whose dense metrics (accuracy, NLL, ECE, OOD AUROC) differ from the
/// dense row recorded for its unit beyond the six decimals `results.csv` keeps: the study was
/// resumed on another machine or build, or the trained run was replaced, and its remaining rows
/// would come from another network than the recorded ones.
fn check_dense(dir: &Path, recorded: &CompressionRow, now: [f64; 4]) -> Result<()> {
    let was = [recorded.accuracy, recorded.nll, recorded.ece, recorded.ood_auroc];
    // equal to the file's six decimals, or both NaN; a NaN on one side only differs
    let same = |a: f64, b: f64| (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-6;
    let differs = was.iter().zip(&now).any(|(a, b)| !same(*a, *b));
    if differs {
        return Err(ExpError::Run {
            path: dir.join(RESULTS_FILE),
            message: format!(
                "records for {} seed {} a dense network with accuracy {:.6}, NLL {:.6}, ECE {:.6}, OOD AUROC {:.6}; \
                 the network trained now gives {:.6}, {:.6}, {:.6}, {:.6} (another machine or build?). Its remaining \
                 rows would come from another network: finish the study where it began, or start it again with --force",
                recorded.model, recorded.seed, was[0], was[1], was[2], was[3], now[0], now[1], now[2], now[3]
            ),
        });
    }
    Ok(())
}

fn fill(r: &mut CompressionRow, v: Result<[f64; 4]>) {
    match v {
        Ok([a, n, e, o]) => {
            r.accuracy = a;
            r.nll = n;
            r.ece = e;
            r.ood_auroc = o;
        }
        Err(e) => r.error = e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(model: &str, crit: &str, s: f64, ft: bool, err: &str) -> CompressionRow {
        CompressionRow {
            model: model.into(),
            seed: 3,
            criterion: crit.into(),
            target_sparsity: s,
            sparsity: s + 0.001,
            finetuned: ft,
            accuracy: 0.8125,
            nll: f64::NAN,
            ece: 0.03,
            ood_auroc: 0.9,
            seconds: 1.5,
            error: err.into(),
        }
    }

    /// A resumed unit's dense network must give its recorded dense row again, to the six
    /// decimals the file keeps; a change, also from NaN to a number, is refused naming both.
    #[test]
    fn a_resumed_unit_must_reproduce_its_dense_row() {
        let dir = tempfile::tempdir().unwrap();
        let r = row("m", DENSE, 0.0, false, "");
        assert!(check_dense(dir.path(), &r, [0.8125 + 4e-7, f64::NAN, 0.03, 0.9]).is_ok());
        let e = check_dense(dir.path(), &r, [0.813, f64::NAN, 0.03, 0.9])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("0.812500") && e.contains("0.813000") && e.contains("--force"),
            "{e}"
        );
        assert!(check_dense(dir.path(), &r, [0.8125, 0.3, 0.03, 0.9]).is_err());
    }

    /// Rows written and read back are the same rows (NaN compared as NaN), an error with
    /// commas and quotes included.
    #[test]
    fn results_round_trip() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![
            row("det", DENSE, 0.0, false, ""),
            row("mf", "snr", 0.95, true, "diverged, \"NaN\" loss"),
        ];
        let p = dir.path().join(RESULTS_FILE);
        std::fs::write(&p, results_csv(&rows)).unwrap();
        let back = read_results(&p)?;
        assert_eq!(back.len(), 2);
        for (a, b) in rows.iter().zip(&back) {
            assert_eq!(a.key(), b.key());
            assert!(b.nll.is_nan());
            assert_eq!((a.accuracy, a.sparsity, a.ece), (b.accuracy, b.sparsity, b.ece));
        }
        assert_eq!(back[1].error, "diverged, 'NaN' loss");
        assert_eq!(results_csv(&back), results_csv(&read_results(&p)?));
        std::fs::write(&p, "model,seed\n").unwrap();
        assert!(read_results(&p).unwrap_err().to_string().contains("header"));
        Ok(())
    }

    /// The grid: per model and seed, the dense pair, then criterion × sparsity × fine-tune; a
    /// study without fine-tune has no fine-tuned rows.
    #[test]
    fn the_grid_lists_every_row_once_in_table_order() {
        let text = r#"
[compression]
name = "c"
seeds = [0, 1]
sparsities = [0.5, 0.9]
[[compression.models]]
name = "a"
config = "x.toml"
criteria = ["magnitude", "fisher"]
"#;
        let mut f: CompressionFile = toml::from_str(text).unwrap();
        let rows = unit_rows(&f.compression, &f.compression.models[0]);
        assert_eq!(rows.len(), 2 + 2 * 2 * 2);
        assert_eq!(rows[0], (DENSE.to_string(), 0.0, false));
        assert_eq!(rows[3], ("magnitude".to_string(), 0.5, true));
        let g = grid(&f.compression);
        assert_eq!(g.len(), 2 * rows.len());
        assert_eq!(g[&("a".into(), 1, "fisher".into(), 900_000, true)], 2 * 10 - 1);
        f.compression.finetune_epochs = 0;
        assert!(unit_rows(&f.compression, &f.compression.models[0]).iter().all(|r| !r.2));
    }

    /// `record` replaces a row of the same key and keeps grid order.
    #[test]
    fn record_adds_rows_in_grid_order() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let mut order = BTreeMap::new();
        for (i, k) in [row("m", DENSE, 0.0, false, ""), row("m", "snr", 0.5, false, "")]
            .iter()
            .enumerate()
        {
            order.insert(k.key(), i);
        }
        record(dir.path(), row("m", "snr", 0.5, false, "first"), &order)?;
        record(dir.path(), row("m", DENSE, 0.0, false, ""), &order)?;
        record(dir.path(), row("m", "snr", 0.5, false, ""), &order)?;
        let back = read_results(&dir.path().join(RESULTS_FILE))?;
        assert_eq!(back.len(), 2);
        assert_eq!((back[0].criterion.as_str(), back[1].error.as_str()), (DENSE, ""));
        Ok(())
    }
}
