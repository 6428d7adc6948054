//! The pruning-at-initialisation study (`secateur study pai --config experiments/configs/pai.toml`).
//!
//! For every model config, seed, criterion, target sparsity and batch-norm warm-up setting: build
//! the model from the seed, (warm up batch norm,) score and mask it at initialisation
//! ([`crate::prune::prune_model`]), train the masked network from that same initialisation with
//! the masks held by the training loop (Lee et al. 2019; Tanaka et al. 2020; Gollini Navarrete
//! et al. 2025), and record its test accuracy. A dense run per seed gives the reference. Results:
//! `results.csv` (one row per run), `table.md` (mean ± standard deviation over seeds),
//! `sparsity_accuracy.png` and `report.md` in the study directory. A failing run (e.g. a
//! diverging loss after layer collapse) is recorded with its error instead of stopping the study.

use crate::atomic;
use crate::commands::{build_model, eval_image_batches, TrainingSetup};
use crate::config::StudyConfig;
use crate::data::{load_images, ImageSet, Normalizer};
use crate::error::{ExpError, Result};
use crate::prune::{prune_model, PruneData, PruneSpec};
use crate::seed_stream::SeedStream;
use crate::store::RunDir;
use candle_core::Device;
use secateur_bayes::Sampling;
use secateur_inference::metrics::classification_metrics;
use secateur_inference::predict::predict;
use secateur_pruning::criteria::HutchinsonOptions;
use secateur_pruning::{criterion, CriterionOptions, MaskSet, Scope};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One model of the study: a training config (relative to the study file's directory, or
/// absolute) and `--set` style overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaiModel {
    /// The training config (data, architecture, optimiser, epochs).
    pub config: PathBuf,
    /// Overrides applied to it (`"train.epochs=2"`).
    #[serde(default)]
    pub set: Vec<String>,
}

/// The study file (`[pai]` keys at the top level).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaiConfig {
    /// Study name (the run directory's prefix).
    pub name: String,
    /// Seeds; every (model, criterion, sparsity, warm-up) cell is trained once per seed.
    pub seeds: Vec<u64>,
    /// Target sparsities in `[0, 1)`.
    pub sparsities: Vec<f64>,
    /// Criteria (names of `secateur_pruning::criterion::by_name`).
    pub criteria: Vec<String>,
    /// Batch-norm warm-up settings to compare (`[false, true]`); models without batch norm run
    /// only without.
    pub bn_warmup: Vec<bool>,
    /// Training batches of the warm-up pass (default: one pass over the training set).
    #[serde(default)]
    pub warmup_batches: Option<usize>,
    /// Scoring examples per class (default 10).
    #[serde(default = "ten")]
    pub samples_per_class: usize,
    /// Hutchinson's examples per Hessian batch (`hutchinson`, `hp`, `hts`; default 1, a probe per
    /// example, as the reference code of Gollini Navarrete et al. 2025).
    #[serde(default = "one")]
    pub hutchinson_batch_size: usize,
    /// Hutchinson's Rademacher probes per Hessian batch (default 10).
    #[serde(default = "ten")]
    pub probes: usize,
    /// Score-and-prune rounds of the iterative criteria, those whose registry entry runs more
    /// than one round by default (`default_rounds > 1`: SynFlow, 100 rounds, Tanaka et al.
    /// 2020). Unset: each criterion's `default_rounds`. One-shot criteria stay one-shot. Written
    /// into the study's `pai.toml` as the rounds SynFlow runs (100 when unset), as before.
    #[serde(default, serialize_with = "ser_synflow_rounds")]
    pub synflow_rounds: Option<usize>,
    /// `global` (default) or `layer`.
    #[serde(default, deserialize_with = "de_scope", serialize_with = "crate::config::ser_named")]
    pub scope: Scope,
    /// Keep the classifier dense (default true, as the reference code of Gollini Navarrete et
    /// al. 2025).
    #[serde(default = "yes")]
    pub keep_last: bool,
    /// Use only the first N training images of each class (smoke runs); all by default.
    #[serde(default)]
    pub train_per_class: Option<usize>,
    /// Use only the first N test images of each class; all by default.
    #[serde(default)]
    pub test_per_class: Option<usize>,
    /// The models.
    pub models: Vec<PaiModel>,
}

fn one() -> usize {
    1
}
fn ten() -> usize {
    10
}
fn de_scope<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Scope, D::Error> {
    crate::config::de_named(d, "scope")
}
/// `synflow_rounds` as the rounds SynFlow runs: the key's value, or SynFlow's default rounds when
/// unset (so that the `pai.toml` of a study, compared on `--resume`, is the same as before the
/// key became optional).
fn ser_synflow_rounds<S: serde::Serializer>(v: &Option<usize>, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(v.unwrap_or(secateur_pruning::criteria::SynFlow::DEFAULT_ROUNDS) as u64)
}
fn yes() -> bool {
    true
}

impl PaiConfig {
    /// The criteria's options (Hutchinson's batch size and probes).
    pub fn criterion_options(&self) -> CriterionOptions {
        CriterionOptions {
            hutchinson: HutchinsonOptions {
                batch_size: self.hutchinson_batch_size,
                probes: self.probes,
            },
        }
    }

    /// Whether some criterion of the study needs double backpropagation.
    pub fn needs_double_backprop(&self) -> bool {
        self.criteria
            .iter()
            .any(|c| criterion::entry(c).is_ok_and(|e| e.needs_double_backprop))
    }

    /// The score-and-prune rounds of `crit`: its registry entry's `default_rounds`, or
    /// `synflow_rounds` where that is set and the criterion is iterative (`default_rounds > 1`).
    pub fn rounds(&self, crit: &str) -> Result<usize> {
        let e = criterion::entry(crit).map_err(|e| ExpError::config("criteria", e.to_string()))?;
        Ok(match self.synflow_rounds {
            Some(r) if e.default_rounds > 1 => r,
            _ => e.default_rounds,
        })
    }

    /// Reads and validates a study file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ExpError::io(path, e))?;
        let cfg: PaiConfig =
            toml::from_str(&text).map_err(|e| ExpError::config(path.display().to_string(), e.to_string()))?;
        cfg.validate()
            .map_err(|e| ExpError::config(path.display().to_string(), e))?;
        Ok(cfg)
    }

    /// Refuses empty grids, sparsities outside `[0, 1)` and unknown criteria (an unknown scope is
    /// refused when the file is read).
    pub fn validate(&self) -> std::result::Result<(), String> {
        crate::config::check_name("name", &self.name)?;
        if self.seeds.is_empty() || self.sparsities.is_empty() || self.criteria.is_empty() || self.models.is_empty() {
            return Err("`seeds`, `sparsities`, `criteria` and `models` must not be empty".into());
        }
        if self.bn_warmup.is_empty() {
            return Err("`bn_warmup` must list at least one of false, true".into());
        }
        if let Some(s) = self.sparsities.iter().find(|s| !(0.0..1.0).contains(*s)) {
            return Err(format!("`sparsities` must lie in [0, 1), got {s}"));
        }
        for c in &self.criteria {
            criterion::entry(c).map_err(|e| format!("`criteria`: {e}"))?;
        }
        if self.samples_per_class == 0
            || self.synflow_rounds == Some(0)
            || self.probes == 0
            || self.hutchinson_batch_size == 0
        {
            return Err(
                "`samples_per_class`, `synflow_rounds`, `probes` and `hutchinson_batch_size` must be at least 1".into(),
            );
        }
        if self.train_per_class == Some(0) || self.test_per_class == Some(0) || self.warmup_batches == Some(0) {
            return Err("`train_per_class`, `test_per_class` and `warmup_batches` must be at least 1".into());
        }
        Ok(())
    }
}

/// One trained network of the study.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PaiRow {
    /// Architecture.
    pub arch: String,
    /// Criterion (`dense` for the unpruned reference).
    pub criterion: String,
    /// Batch-norm warm-up before scoring.
    pub bn_warmup: bool,
    /// Target sparsity.
    pub sparsity: f64,
    /// Seed.
    pub seed: u64,
    /// Reached sparsity of the prunable weights.
    pub reached: f64,
    /// Test accuracy after training (NaN if the run failed).
    pub accuracy: f64,
    /// Layers left without weights, `;`-separated.
    pub collapsed: String,
    /// Layers nearly collapsed (fewer kept weights than output units, or an output class with
    /// no input; `secateur_pruning::mask::LayerRow::near_collapse`), `;`-separated.
    pub near_collapse: String,
    /// Seconds for scoring and training.
    pub seconds: f64,
    /// The error of a failed run, empty otherwise.
    pub error: String,
}

/// The first `per_class` examples of each class of `set` (all with `None`).
fn first_per_class(set: &ImageSet, per_class: Option<usize>) -> Result<ImageSet> {
    let Some(n) = per_class else {
        return Ok(set.clone());
    };
    let mut seen = vec![0usize; set.n_classes as usize];
    let idx: Vec<usize> = (0..set.len())
        .filter(|&i| {
            let c = set.labels[i] as usize;
            let keep = seen[c] < n;
            seen[c] += 1;
            keep
        })
        .collect();
    Ok(set.subset(&idx)?)
}

/// Trains the config's model from its seed's initialisation with `masks` held at zero (none:
/// dense), returning the test accuracy.
fn train_masked(
    cfg: &StudyConfig,
    data: &PruneData,
    test: &ImageSet,
    norm: &Normalizer,
    masks: Option<&MaskSet>,
) -> Result<f64> {
    let dev = Device::Cpu;
    crate::learned::refuse(cfg, "the pruning-at-initialisation study")?;
    let (net, store) = build_model(cfg, data.input, data.classes, &dev)?;
    let setup = TrainingSetup::new(cfg, data.train.len())?;
    let mut trainer = setup.trainer(&net, &store)?;
    if let Some(m) = masks {
        m.check(&store)?;
        m.apply(&store)?;
        trainer.set_hook(Box::new(m.clone()));
    }
    let mut batches = setup.image_batches(&data.train, norm, &dev)?;
    trainer.fit(&mut batches, None, &mut [])?;
    let mut test_batches = eval_image_batches(cfg, test, norm, &dev)?;
    let mut rng = SeedStream::Eval.rng(cfg.seed);
    let p = predict(&net, &mut test_batches, Sampling::Mean, &mut rng)?;
    Ok(classification_metrics(&p.probs, &p.labels, p.classes)?.accuracy)
}

/// How a study is run (not part of the study's definition: the results do not depend on it).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Study directory (default `runs/<name>-<timestamp>`).
    pub out: Option<PathBuf>,
    /// Data directory overriding the configs'.
    pub data_dir: Option<PathBuf>,
    /// Networks scored and trained at the same time (at least 1). Each uses candle's shared
    /// thread pool; every run draws from its own seeded streams, so the results do not depend
    /// on this number.
    pub jobs: usize,
    /// Continue the study in this directory: the runs already in its `results.csv` are kept and
    /// skipped. Its `pai.toml` must be this study file's.
    pub resume: Option<PathBuf>,
    /// Run only the share `(i, n)` of the grid, the runs whose position in the grid's canonical
    /// order is `i` modulo `n` (0-based), so that `n` processes or machines can split a study;
    /// their `results.csv` files join into one study directory, which `resume` completes.
    pub shard: Option<(usize, usize)>,
    /// With `resume`: run nothing, only write the table, plot and report of the runs that are
    /// in `results.csv` (a partial study's summary).
    pub report_only: bool,
    /// No progress bar.
    pub quiet: bool,
}

/// Parses a `--shard` value `I/N` (0 ≤ I < N).
pub fn parse_shard(s: &str) -> std::result::Result<(usize, usize), String> {
    let bad = || format!("`{s}` is not a shard I/N with 0 ≤ I < N (e.g. 0/4)");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

/// One run of the grid.
#[derive(Debug, Clone)]
struct Cell {
    model: usize,
    seed: u64,
    /// `None`: the dense reference.
    criterion: Option<String>,
    sparsity: f64,
    warm: bool,
}

impl Cell {
    fn key(&self, arch: &str) -> RowKey {
        row_key(
            arch,
            self.criterion.as_deref().unwrap_or("dense"),
            self.warm,
            self.sparsity,
            self.seed,
        )
    }
}

/// The columns of `results.csv` that name a run.
pub const KEY_COLUMNS: [&str; 5] = ["arch", "criterion", "bn_warmup", "sparsity", "seed"];

/// `(arch, criterion, warm-up, sparsity in ppm, seed)`: identifies a run in `results.csv`.
type RowKey = (String, String, bool, u64, u64);

fn row_key(arch: &str, criterion: &str, warm: bool, sparsity: f64, seed: u64) -> RowKey {
    (
        arch.into(),
        criterion.into(),
        warm,
        (sparsity * 1e6).round() as u64,
        seed,
    )
}

/// A model of the study, loaded once and shared by its runs.
struct Prepared {
    cfg: StudyConfig,
    data: PruneData,
    test: ImageSet,
    warm_batches: usize,
}

/// Runs the study; returns the study directory.
pub fn run(pai: &PaiConfig, study_file: &Path, opts: &RunOptions) -> Result<PathBuf> {
    if opts.jobs == 0 {
        return Err(ExpError::config("--jobs", "must be at least 1"));
    }
    let text = toml::to_string(pai).map_err(|e| ExpError::config("pai", e.to_string()))?;
    let (dir, mut rows) = match &opts.resume {
        Some(path) => {
            let dir = RunDir::open_with(path, "pai.toml")?;
            let old =
                std::fs::read_to_string(dir.file("pai.toml")).map_err(|e| ExpError::io(dir.file("pai.toml"), e))?;
            if old != text {
                return Err(ExpError::Run {
                    path: path.clone(),
                    message: format!(
                        "holds another study (its pai.toml differs from {}); resume it with its own study file",
                        study_file.display()
                    ),
                });
            }
            let rows = read_results(&dir.file("results.csv"))?;
            (dir, rows)
        }
        None => {
            let dir = RunDir::create(&pai.name, opts.out.as_deref())?;
            atomic::write_string(&dir.file("pai.toml"), &text)?;
            (dir, Vec::new())
        }
    };
    let base = study_file.parent().unwrap_or(Path::new("."));
    let scope = pai.scope;
    // Load every model's data and list the grid in its canonical order.
    let mut models: Vec<Prepared> = Vec::new();
    let mut grid: Vec<Cell> = Vec::new();
    for (mi, model) in pai.models.iter().enumerate() {
        let path = if model.config.is_absolute() {
            model.config.clone()
        } else {
            base.join(&model.config)
        };
        let base_cfg = StudyConfig::from_file(&path, &model.set)?;
        crate::learned::refuse(&base_cfg, "the pruning-at-initialisation study")?;
        let dir_override = opts.data_dir.clone().or_else(|| base_cfg.data.dir.clone());
        let loaded = load_images(&base_cfg.data.name, dir_override.as_deref())?;
        let train = first_per_class(&loaded.train, pai.train_per_class)?;
        let test = first_per_class(&loaded.test, pai.test_per_class)?;
        let norm = Normalizer::from_set(&train);
        let data = PruneData {
            input: [train.channels, train.height, train.width],
            classes: loaded.train.n_classes.max(loaded.test.n_classes) as usize,
            norm,
            train,
        };
        let has_bn = {
            let (_, store) = build_model(&base_cfg, data.input, data.classes, &Device::Cpu)?;
            store.buffers().keys().any(|k| k.ends_with("running_mean"))
        };
        let warm_batches = pai
            .warmup_batches
            .unwrap_or_else(|| data.train.len().div_ceil(base_cfg.data.batch_size.max(1)));
        for &seed in &pai.seeds {
            grid.push(Cell {
                model: mi,
                seed,
                criterion: None,
                sparsity: 0.0,
                warm: false,
            });
            for crit in &pai.criteria {
                for &sparsity in &pai.sparsities {
                    for &warm in &pai.bn_warmup {
                        // Models without batch norm run without warm-up only.
                        if warm && !has_bn {
                            continue;
                        }
                        grid.push(Cell {
                            model: mi,
                            seed,
                            criterion: Some(crit.clone()),
                            sparsity,
                            warm,
                        });
                    }
                }
            }
        }
        models.push(Prepared {
            cfg: base_cfg,
            data,
            test,
            warm_batches,
        });
    }
    let order: BTreeMap<RowKey, usize> = grid
        .iter()
        .enumerate()
        .map(|(i, c)| (c.key(&models[c.model].cfg.model.arch), i))
        .collect();
    let done: std::collections::BTreeSet<RowKey> = rows
        .iter()
        .map(|r| row_key(&r.arch, &r.criterion, r.bn_warmup, r.sparsity, r.seed))
        .collect();
    if let Some(r) = rows
        .iter()
        .find(|r| !order.contains_key(&row_key(&r.arch, &r.criterion, r.bn_warmup, r.sparsity, r.seed)))
    {
        return Err(ExpError::Run {
            path: dir.file("results.csv"),
            message: format!(
                "has a run outside this study's grid ({} {} sparsity {} seed {})",
                r.arch, r.criterion, r.sparsity, r.seed
            ),
        });
    }
    let (shard, shards) = opts.shard.unwrap_or((0, 1));
    if shards == 0 || shard >= shards {
        return Err(ExpError::config(
            "--shard",
            format!("{shard}/{shards} is not a shard I/N with I < N"),
        ));
    }
    let mine: Vec<&Cell> = grid.iter().skip(shard).step_by(shards).collect();
    if opts.report_only && opts.resume.is_none() {
        return Err(ExpError::config(
            "--report-only",
            "needs --resume DIR (the study to report)",
        ));
    }
    if !opts.report_only {
        // what this shard owes, for `study join`
        let keys = grid
            .iter()
            .map(|c| {
                let k = c.key(&models[c.model].cfg.model.arch);
                vec![k.0, k.1, c.warm.to_string(), c.sparsity.to_string(), c.seed.to_string()]
            })
            .collect();
        crate::cluster::ShardManifest::new(
            crate::cluster::StudyKind::Pai,
            &pai.name,
            study_file,
            (shard, shards),
            &KEY_COLUMNS,
            keys,
            (0..grid.len()).map(|k| k % shards).collect(),
        )?
        .write(dir.path())?;
    }
    let todo: Vec<&Cell> = mine
        .iter()
        .copied()
        .filter(|c| !opts.report_only && !done.contains(&c.key(&models[c.model].cfg.model.arch)))
        .collect();
    let bar = crate::observe::study_bar(mine.len() as u64, opts.quiet);
    bar.inc((mine.len() - todo.len()) as u64);
    let sort = |rows: &mut Vec<PaiRow>| {
        rows.sort_by_key(|r| order[&row_key(&r.arch, &r.criterion, r.bn_warmup, r.sparsity, r.seed)]);
    };

    // Second-order criteria need a process started with double backpropagation: refuse before
    // any run rather than record the same error in every row.
    if !todo.is_empty() && pai.needs_double_backprop() {
        secateur_kernels::double_backprop::require("the study's second-order criteria")
            .map_err(|e| ExpError::config("criteria", e.to_string()))?;
    }
    let jobs = opts.jobs.min(todo.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<PaiRow>();
    // Each worker runs in a rayon pool of its own with an equal share of the cores
    // (runtime::in_pool_of).
    let threads = (rayon::current_num_threads() / jobs).max(1);
    let outcome = std::thread::scope(|s| -> Result<()> {
        for _ in 0..jobs {
            let tx = tx.clone();
            let (next, todo, models) = (&next, &todo, &models);
            s.spawn(move || {
                secateur_kernels::runtime::in_pool_of(threads, || loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(cell) = todo.get(i) else { break };
                    let row = run_cell(pai, &models[cell.model], cell, scope);
                    if tx.send(row).is_err() {
                        break;
                    }
                })
            });
        }
        drop(tx);
        for row in rx {
            bar.set_message(format!(
                "{} {} s={} warm-up={} seed={}: {:.4}",
                row.arch, row.criterion, row.sparsity, row.bn_warmup, row.seed, row.accuracy
            ));
            rows.push(row);
            sort(&mut rows);
            write_results(&dir, &rows)?;
            bar.inc(1);
        }
        Ok(())
    });
    outcome?;
    bar.finish_and_clear();
    sort(&mut rows);
    write_results(&dir, &rows)?;
    let table = summary_table(&rows);
    atomic::write_string(&dir.file("table.md"), &table)?;
    let png = crate::plot::sparsity_accuracy_png(&series(&rows))?;
    atomic::write_bytes(&dir.file("sparsity_accuracy.png"), &png)?;
    let failed = rows.iter().filter(|r| !r.error.is_empty()).count();
    let report = format!(
        "# {}\n\nPruning at initialisation: score and mask at initialisation, train the masked network from the same \
         initialisation, test accuracy. Mean ± standard deviation over seeds {:?}; `warm-up` = batch-norm warm-up \
         before scoring.\n\n{table}\n{failed} run(s) failed (see `results.csv`).\n\n![sparsity vs accuracy](sparsity_accuracy.png)\n",
        pai.name, pai.seeds
    );
    atomic::write_string(&dir.file("report.md"), &report)?;
    Ok(dir.path().to_path_buf())
}

/// Scores, masks and trains one cell of the grid (the dense reference when it has no criterion);
/// a failure is recorded in the row.
fn run_cell(pai: &PaiConfig, m: &Prepared, cell: &Cell, scope: Scope) -> PaiRow {
    let cfg = StudyConfig {
        seed: cell.seed,
        ..m.cfg.clone()
    };
    let t0 = Instant::now();
    let mut row = PaiRow {
        arch: cfg.model.arch.clone(),
        criterion: cell.criterion.clone().unwrap_or_else(|| "dense".into()),
        bn_warmup: cell.warm,
        sparsity: cell.sparsity,
        seed: cell.seed,
        reached: if cell.criterion.is_none() { 0.0 } else { f64::NAN },
        accuracy: f64::NAN,
        collapsed: String::new(),
        near_collapse: String::new(),
        seconds: 0.0,
        error: String::new(),
    };
    let outcome = match &cell.criterion {
        None => train_masked(&cfg, &m.data, &m.test, &m.data.norm, None),
        Some(crit) => pai
            .rounds(crit)
            .map(|rounds| PruneSpec {
                criterion: crit.clone(),
                sparsity: cell.sparsity,
                scope,
                bn_warmup_batches: if cell.warm { m.warm_batches } else { 0 },
                rounds,
                samples_per_class: pai.samples_per_class,
                keep_first: false,
                keep_last: pai.keep_last,
                keep_conv: false,
                options: pai.criterion_options(),
            })
            .and_then(|spec| prune_model(&cfg, &m.data, None, &spec, None, None))
            .and_then(|p| {
                row.reached = p.masks.sparsity()?;
                row.collapsed = p.table.collapsed().join(";");
                row.near_collapse = p.table.near_collapse().join(";");
                train_masked(&cfg, &m.data, &m.test, &m.data.norm, Some(&p.masks))
            }),
    };
    match outcome {
        Ok(a) => row.accuracy = a,
        Err(e) => row.error = e.to_string(),
    }
    row.seconds = t0.elapsed().as_secs_f64();
    row
}

/// Reads a study's `results.csv` (as [`write_results`] writes it); a missing file is an empty
/// study.
fn read_results(path: &Path) -> Result<Vec<PaiRow>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ExpError::io(path, e)),
    };
    let bad = |line: usize, what: &str| ExpError::Run {
        path: path.to_path_buf(),
        message: format!("line {line}: {what}"),
    };
    // Studies written before the `near_collapse` column have 10 fields.
    let header = text.lines().next().unwrap_or_default();
    let fields = if header.split(',').any(|h| h == "near_collapse") {
        11
    } else {
        10
    };
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.splitn(fields, ',').collect();
        if f.len() != fields {
            return Err(bad(i + 1, &format!("expected {fields} fields")));
        }
        let num = |k: usize| -> Result<f64> {
            f[k].parse::<f64>()
                .map_err(|_| bad(i + 1, &format!("field {} is not a number: `{}`", k + 1, f[k])))
        };
        let near = usize::from(fields == 11);
        rows.push(PaiRow {
            arch: f[0].into(),
            criterion: f[1].into(),
            bn_warmup: f[2]
                .parse()
                .map_err(|_| bad(i + 1, &format!("bn_warmup is not true/false: `{}`", f[2])))?,
            sparsity: num(3)?,
            seed: f[4]
                .parse()
                .map_err(|_| bad(i + 1, &format!("seed is not an integer: `{}`", f[4])))?,
            reached: num(5)?,
            accuracy: num(6)?,
            collapsed: f[7].into(),
            near_collapse: if near == 1 { f[8].into() } else { String::new() },
            seconds: num(8 + near)?,
            error: f[9 + near].trim_matches('"').into(),
        });
    }
    Ok(rows)
}

fn write_results(dir: &RunDir, rows: &[PaiRow]) -> Result<()> {
    let mut s =
        String::from("arch,criterion,bn_warmup,sparsity,seed,reached,accuracy,collapsed,near_collapse,seconds,error\n");
    for r in rows {
        s.push_str(&format!(
            "{},{},{},{},{},{:.6},{:.6},{},{},{:.2},\"{}\"\n",
            r.arch,
            r.criterion,
            r.bn_warmup,
            r.sparsity,
            r.seed,
            r.reached,
            r.accuracy,
            r.collapsed,
            r.near_collapse,
            r.seconds,
            r.error.replace('"', "'").replace('\n', " ")
        ));
    }
    atomic::write_string(&dir.file("results.csv"), &s)
}

/// Mean and sample standard deviation of the finite values (NaN when there are none).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = f.iter().sum::<f64>() / f.len() as f64;
    let var = if f.len() > 1 {
        f.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (f.len() - 1) as f64
    } else {
        0.0
    };
    (m, var.sqrt())
}

type CellKey = (String, String, bool);

fn cells(rows: &[PaiRow]) -> BTreeMap<CellKey, BTreeMap<u64, Vec<f64>>> {
    let mut cells: BTreeMap<CellKey, BTreeMap<u64, Vec<f64>>> = BTreeMap::new();
    for r in rows {
        let key = (r.arch.clone(), r.criterion.clone(), r.bn_warmup);
        // sparsity as parts per million (a map key)
        let s = (r.sparsity * 1e6).round() as u64;
        cells.entry(key).or_default().entry(s).or_default().push(r.accuracy);
    }
    cells
}

/// Per cell and sparsity: the seeds with a collapsed layer, and those with a nearly collapsed
/// layer but none collapsed.
fn collapse_counts(rows: &[PaiRow]) -> BTreeMap<(CellKey, u64), (usize, usize)> {
    let mut out: BTreeMap<(CellKey, u64), (usize, usize)> = BTreeMap::new();
    for r in rows {
        let key = (
            (r.arch.clone(), r.criterion.clone(), r.bn_warmup),
            (r.sparsity * 1e6).round() as u64,
        );
        let e = out.entry(key).or_default();
        if !r.collapsed.is_empty() {
            e.0 += 1;
        } else if !r.near_collapse.is_empty() {
            e.1 += 1;
        }
    }
    out
}

/// The Markdown table: one row per (architecture, criterion, warm-up), one column per sparsity,
/// test accuracy in % as mean ± std over seeds; `(Ck)` marks a cell where `k` seeds left a layer
/// without weights, `(Nk)` one where `k` further seeds left a layer nearly collapsed (see
/// [`PaiRow::near_collapse`]). A legend follows the table when a mark is used.
pub fn summary_table(rows: &[PaiRow]) -> String {
    let cells = cells(rows);
    let flags = collapse_counts(rows);
    let mut marked = false;
    let mut sparsities: Vec<u64> = cells.values().flat_map(|m| m.keys().copied()).collect();
    sparsities.sort_unstable();
    sparsities.dedup();
    let mut s = String::from("| model | criterion | warm-up |");
    for sp in &sparsities {
        s.push_str(&format!(" {} |", *sp as f64 / 1e6));
    }
    s.push_str("\n|---|---|---|");
    for _ in &sparsities {
        s.push_str("---:|");
    }
    s.push('\n');
    for ((arch, crit, warm), by_sparsity) in &cells {
        s.push_str(&format!("| {arch} | {crit} | {} |", if *warm { "yes" } else { "no" }));
        for sp in &sparsities {
            match by_sparsity.get(sp) {
                Some(v) => {
                    let (m, sd) = mean_std(v);
                    let mut mark = String::new();
                    let key = ((arch.clone(), crit.clone(), *warm), *sp);
                    if let Some(&(c, n)) = flags.get(&key) {
                        if c > 0 {
                            mark.push_str(&format!(" (C{c})"));
                        }
                        if n > 0 {
                            mark.push_str(&format!(" (N{n})"));
                        }
                    }
                    marked |= !mark.is_empty();
                    if m.is_finite() {
                        s.push_str(&format!(" {:.2} ± {:.2}{mark} |", 100.0 * m, 100.0 * sd));
                    } else {
                        s.push_str(&format!(" failed{mark} |"));
                    }
                }
                None => s.push_str(" |"),
            }
        }
        s.push('\n');
    }
    if marked {
        s.push_str(
            "\n(Ck): k seeds left a layer with no weight (layer collapse); (Nk): k further seeds left a layer with \
             fewer weights than output units, or an output class with no input (near collapse).\n",
        );
    }
    s
}

/// Plot series: per architecture, per (criterion, warm-up), the mean accuracy by sparsity.
fn series(rows: &[PaiRow]) -> Vec<crate::plot::Series> {
    cells(rows)
        .into_iter()
        .filter(|((_, crit, _), _)| crit != "dense")
        .map(|((arch, crit, warm), by)| crate::plot::Series {
            panel: arch,
            label: if warm { format!("{crit} (warm-up)") } else { crit },
            points: by
                .into_iter()
                .map(|(sp, v)| (sp as f64 / 1e6, mean_std(&v).0))
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_std_by_hand() {
        let (m, s) = mean_std(&[0.5, 0.7, f64::NAN, 0.9]);
        assert!((m - 0.7).abs() < 1e-12);
        assert!((s - 0.2).abs() < 1e-12); // √((0.04 + 0 + 0.04) / 2)
        assert!(mean_std(&[f64::NAN]).0.is_nan());
    }

    #[test]
    fn table_groups_seeds_and_marks_failures() {
        let row = |crit: &str, s: f64, seed: u64, acc: f64| PaiRow {
            arch: "lenet5".into(),
            criterion: crit.into(),
            bn_warmup: false,
            sparsity: s,
            seed,
            reached: s,
            accuracy: acc,
            collapsed: String::new(),
            near_collapse: String::new(),
            seconds: 0.0,
            error: String::new(),
        };
        let rows = vec![
            row("snip", 0.9, 0, 0.80),
            row("snip", 0.9, 1, 0.84),
            row("snip", 0.5, 0, f64::NAN),
        ];
        let t = summary_table(&rows);
        assert!(t.contains("| lenet5 | snip | no | failed | 82.00 ± 2.83 |"), "{t}");
    }

    #[test]
    fn bad_study_files_are_refused() {
        let good = r#"
name = "pai"
seeds = [0]
sparsities = [0.9]
criteria = ["snip"]
bn_warmup = [false]
[[models]]
config = "fashion-mnist-lenet5.toml"
"#;
        let cfg: PaiConfig = toml::from_str(good).unwrap();
        assert!(cfg.validate().is_ok());
        for (bad, what) in [
            (good.replace("[0.9]", "[1.0]"), "sparsities"),
            (good.replace("\"snip\"", "\"obd\""), "criteria"),
            (good.replace("seeds = [0]", "seeds = []"), "seeds"),
        ] {
            let c: PaiConfig = toml::from_str(&bad).unwrap();
            assert!(c.validate().unwrap_err().contains(what), "{what}");
        }
        assert!(toml::from_str::<PaiConfig>(&format!("{good}\nrounds = 3")).is_err());
    }

    const STUDY: &str = r#"
name = "pai"
seeds = [0]
sparsities = [0.9]
criteria = ["snip", "synflow"]
bn_warmup = [false]
[[models]]
config = "fashion-mnist-lenet5.toml"
"#;

    /// `scope` is read into `Scope` (`layer` and `global` as before; an unknown name refused
    /// naming the key and the valid names), and the study file written into a study directory
    /// (compared on `--resume`) is the same as before: `scope` by name, `synflow_rounds = 100`
    /// when the key is unset.
    #[test]
    fn scope_and_synflow_rounds_read_and_write_as_before() {
        let cfg: PaiConfig = toml::from_str(STUDY).unwrap();
        assert_eq!((cfg.scope, cfg.synflow_rounds), (Scope::Global, None));
        let text = toml::to_string(&cfg).unwrap();
        assert!(
            text.contains("synflow_rounds = 100\n") && text.contains("scope = \"global\"\n"),
            "{text}"
        );
        let layer: PaiConfig = toml::from_str(&format!("scope = \"layer\"\n{STUDY}")).unwrap();
        assert_eq!(layer.scope, Scope::PerLayer);
        assert!(toml::to_string(&layer).unwrap().contains("scope = \"layer\"\n"));
        let e = toml::from_str::<PaiConfig>(&format!("scope = \"lyer\"\n{STUDY}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("scope `lyer` is unknown; use global or layer"), "{e}");
    }

    /// Rounds come from the registry (SynFlow 100, the others 1); `synflow_rounds`, where set,
    /// overrides the iterative criteria only.
    #[test]
    fn rounds_come_from_the_registry_unless_the_key_is_set() -> Result<()> {
        let cfg: PaiConfig = toml::from_str(STUDY).unwrap();
        assert_eq!((cfg.rounds("synflow")?, cfg.rounds("snip")?), (100, 1));
        let set: PaiConfig = toml::from_str(&format!("synflow_rounds = 3\n{STUDY}")).unwrap();
        assert_eq!((set.rounds("synflow")?, set.rounds("snip")?), (3, 1));
        assert!(toml::to_string(&set).unwrap().contains("synflow_rounds = 3\n"));
        assert!(cfg.rounds("obd").is_err());
        let zero: PaiConfig = toml::from_str(&format!("synflow_rounds = 0\n{STUDY}")).unwrap();
        assert!(zero.validate().unwrap_err().contains("synflow_rounds"));
        Ok(())
    }
}
