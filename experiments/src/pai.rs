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
use crate::commands::{build_model, optimizer, train_settings, STREAM_EVAL, STREAM_TRAIN};
use crate::config::StudyConfig;
use crate::data::{load_images, ImageSet, Normalizer};
use crate::error::{ExpError, Result};
use crate::loader::ImageBatches;
use crate::prune::{prune_model, PruneData, PruneSpec};
use crate::store::RunDir;
use candle_core::Device;
use secateur_bayes::{Sampling, SeededRng};
use secateur_inference::metrics::classification_metrics;
use secateur_inference::predict::predict;
use secateur_inference::train::Trainer;
use secateur_pruning::{MaskSet, Scope};
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
    /// SynFlow's score-and-prune rounds (default 100, Tanaka et al. 2020); other criteria are
    /// one-shot.
    #[serde(default = "hundred")]
    pub synflow_rounds: usize,
    /// `global` (default) or `layer`.
    #[serde(default = "global")]
    pub scope: String,
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

fn ten() -> usize {
    10
}
fn hundred() -> usize {
    100
}
fn global() -> String {
    "global".into()
}
fn yes() -> bool {
    true
}

impl PaiConfig {
    /// Reads and validates a study file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ExpError::io(path, e))?;
        let cfg: PaiConfig =
            toml::from_str(&text).map_err(|e| ExpError::config(path.display().to_string(), e.to_string()))?;
        cfg.validate()
            .map_err(|e| ExpError::config(path.display().to_string(), e))?;
        Ok(cfg)
    }

    /// Refuses empty grids, sparsities outside `[0, 1)`, unknown criteria and scopes.
    pub fn validate(&self) -> std::result::Result<(), String> {
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
            secateur_pruning::criterion::by_name(c).map_err(|e| format!("`criteria`: {e}"))?;
        }
        if !matches!(self.scope.as_str(), "global" | "layer") {
            return Err(format!("`scope` must be global or layer, got `{}`", self.scope));
        }
        if self.samples_per_class == 0 || self.synflow_rounds == 0 {
            return Err("`samples_per_class` and `synflow_rounds` must be at least 1".into());
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
    let (net, store) = build_model(cfg, data.input, data.classes, &dev)?;
    let settings = train_settings(cfg, data.train.len())?;
    let mut trainer = Trainer::new(
        &net,
        store.clone(),
        optimizer(cfg)?,
        settings,
        SeededRng::substream(cfg.seed, STREAM_TRAIN),
    )?;
    if let Some(m) = masks {
        m.check(&store)?;
        m.apply(&store)?;
        trainer.set_hook(Box::new(m.clone()));
    }
    let augment = cfg.data.augment.then_some(crate::data::Augment { pad: 4, flip: true });
    let mut batches = ImageBatches::new(
        &data.train,
        norm.clone(),
        cfg.data.batch_size,
        true,
        augment,
        dev.clone(),
    );
    trainer.fit(&mut batches, None, &mut [])?;
    let mut test_batches = ImageBatches::new(test, norm.clone(), cfg.data.eval_batch_size, false, None, dev);
    let mut rng = SeededRng::substream(cfg.seed, STREAM_EVAL);
    let p = predict(&net, &mut test_batches, Sampling::Mean, &mut rng)?;
    Ok(classification_metrics(&p.probs, &p.labels, p.classes)?.accuracy)
}

/// Runs the study; returns the study directory.
pub fn run(
    pai: &PaiConfig,
    study_file: &Path,
    out: Option<&Path>,
    data_dir: Option<&Path>,
    quiet: bool,
) -> Result<PathBuf> {
    let dir = RunDir::create(&pai.name, out)?;
    let text = toml::to_string(pai).map_err(|e| ExpError::config("pai", e.to_string()))?;
    atomic::write_string(&dir.file("pai.toml"), &text)?;
    // Fix this thread's backward passes as first-order before any scoring thread turns on double
    // backpropagation (candle reads the setting on a thread's first backward pass).
    let _ = secateur_pruning::criteria::double_backprop_enabled();
    let base = study_file.parent().unwrap_or(Path::new("."));
    let scope = if pai.scope == "layer" {
        Scope::PerLayer
    } else {
        Scope::Global
    };
    let mut rows: Vec<PaiRow> = Vec::new();
    let total_cells: usize =
        pai.models.len() * pai.seeds.len() * (1 + pai.criteria.len() * pai.sparsities.len() * pai.bn_warmup.len());
    let bar = crate::observe::study_bar(total_cells as u64, quiet);
    for model in &pai.models {
        let path = if model.config.is_absolute() {
            model.config.clone()
        } else {
            base.join(&model.config)
        };
        let base_cfg = StudyConfig::from_file(&path, &model.set)?;
        let dir_override = data_dir.map(Path::to_path_buf).or_else(|| base_cfg.data.dir.clone());
        let loaded = load_images(&base_cfg.data.name, dir_override.as_deref())?;
        let train = first_per_class(&loaded.train, pai.train_per_class)?;
        let test = first_per_class(&loaded.test, pai.test_per_class)?;
        let norm = Normalizer::from_set(&train);
        let data = PruneData {
            input: [train.channels, train.height, train.width],
            classes: loaded.train.n_classes.max(loaded.test.n_classes) as usize,
            norm: norm.clone(),
            train,
        };
        let has_bn = {
            let (_, store) = build_model(&base_cfg, data.input, data.classes, &Device::Cpu)?;
            store.buffers().keys().any(|k| k.ends_with("running_mean"))
        };
        let warmups: Vec<bool> = if has_bn { pai.bn_warmup.clone() } else { vec![false] };
        let warm_batches = pai
            .warmup_batches
            .unwrap_or_else(|| data.train.len().div_ceil(base_cfg.data.batch_size.max(1)));
        for &seed in &pai.seeds {
            let cfg = StudyConfig {
                seed,
                ..base_cfg.clone()
            };
            let t0 = Instant::now();
            let dense = train_masked(&cfg, &data, &test, &norm, None);
            rows.push(PaiRow {
                arch: cfg.model.arch.clone(),
                criterion: "dense".into(),
                bn_warmup: false,
                sparsity: 0.0,
                seed,
                reached: 0.0,
                accuracy: *dense.as_ref().unwrap_or(&f64::NAN),
                collapsed: String::new(),
                seconds: t0.elapsed().as_secs_f64(),
                error: dense.err().map(|e| e.to_string()).unwrap_or_default(),
            });
            bar.inc(1);
            for crit in &pai.criteria {
                for &sparsity in &pai.sparsities {
                    for &warm in &pai.bn_warmup {
                        if !warmups.contains(&warm) {
                            bar.inc(1);
                            continue;
                        }
                        bar.set_message(format!(
                            "{} {crit} s={sparsity} warm-up={warm} seed={seed}",
                            cfg.model.arch
                        ));
                        let spec = PruneSpec {
                            criterion: crit.clone(),
                            sparsity,
                            scope,
                            bn_warmup_batches: if warm { warm_batches } else { 0 },
                            rounds: if crit == "synflow" { pai.synflow_rounds } else { 1 },
                            samples_per_class: pai.samples_per_class,
                            keep_first: false,
                            keep_last: pai.keep_last,
                        };
                        let t0 = Instant::now();
                        let mut row = PaiRow {
                            arch: cfg.model.arch.clone(),
                            criterion: crit.clone(),
                            bn_warmup: warm,
                            sparsity,
                            seed,
                            reached: f64::NAN,
                            accuracy: f64::NAN,
                            collapsed: String::new(),
                            seconds: 0.0,
                            error: String::new(),
                        };
                        let outcome = prune_model(&cfg, &data, None, &spec).and_then(|p| {
                            row.reached = p.masks.sparsity()?;
                            row.collapsed = p.table.collapsed().join(";");
                            train_masked(&cfg, &data, &test, &norm, Some(&p.masks))
                        });
                        match outcome {
                            Ok(a) => row.accuracy = a,
                            Err(e) => row.error = e.to_string(),
                        }
                        row.seconds = t0.elapsed().as_secs_f64();
                        rows.push(row);
                        bar.inc(1);
                    }
                }
            }
            write_results(&dir, &rows)?;
        }
    }
    bar.finish_and_clear();
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

fn write_results(dir: &RunDir, rows: &[PaiRow]) -> Result<()> {
    let mut s = String::from("arch,criterion,bn_warmup,sparsity,seed,reached,accuracy,collapsed,seconds,error\n");
    for r in rows {
        s.push_str(&format!(
            "{},{},{},{},{},{:.6},{:.6},{},{:.2},\"{}\"\n",
            r.arch,
            r.criterion,
            r.bn_warmup,
            r.sparsity,
            r.seed,
            r.reached,
            r.accuracy,
            r.collapsed,
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

/// The Markdown table: one row per (architecture, criterion, warm-up), one column per sparsity,
/// test accuracy in % as mean ± std over seeds.
pub fn summary_table(rows: &[PaiRow]) -> String {
    let cells = cells(rows);
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
                    if m.is_finite() {
                        s.push_str(&format!(" {:.2} ± {:.2} |", 100.0 * m, 100.0 * sd));
                    } else {
                        s.push_str(" failed |");
                    }
                }
                None => s.push_str(" |"),
            }
        }
        s.push('\n');
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
}
