//! `secateur study svgd`: the Bayesian neural network regression of Liu & Wang (2016, §5), as
//! their reference code (`python/bayesian_nn.py`) runs it, on a UCI table shipped in `data/`.
//!
//! The model (Hernández-Lobato & Adams 2015): one hidden layer of ReLU units,
//! `p(y | x, W, γ) = N(y; f(x; W), γ⁻¹)`, `p(W | λ) = N(0, λ⁻¹ I)`, `γ, λ ~ Gamma(a₀, b₀)` (rate
//! `b₀` in the density), each particle carrying `(W, log γ, log λ)`. Per split:
//!
//! - a seeded random 90/10 train/test split; the last 10% (at most 500) of the training rows are
//!   the development set; features and target standardised with the remaining training rows;
//! - `particles` particles initialised as the reference: `W₁ ~ N(0, 1/(d + 1))`, `W₂ ~
//!   N(0, 1/(hidden + 1))`, biases 0, `log λ = log` of a Gamma(`a₀`, scale `b₀`) draw (numpy's
//!   `gamma(a0, b0)` takes a scale, while the prior's density takes `b₀` as a rate — the
//!   reference's own mismatch, kept), and `log γ = −log` of the mean squared error of the
//!   particle's initial predictions on up to 1,000 training rows;
//! - `iterations` SVGD steps ([`SteinNetwork`], step `step`, AdaGrad with momentum) on
//!   mini-batches of `batch_size` rows taken in order, wrapping around, as the reference takes
//!   them; `∇ log p = (N/B) ∇ log-likelihood of the batch + ∇ log prior` with the Jacobians of
//!   the log transforms;
//! - then, per particle, `log γ` is replaced by `−log` of the development set's mean squared error
//!   in the target's original units if that raises the development log-likelihood (the
//!   reference compares a γ fitted on standardised targets with one in original units; kept);
//! - test RMSE of the particles' mean prediction and test log-likelihood
//!   `(1/N) Σᵢ log (1/M) Σₘ N(yᵢ; f_m(xᵢ), γₘ⁻¹)`, in original units.
//!
//! `interactions` runs each split with SVGD (`stein`) and with independent particles
//! (`independent`: the same particles, gradients and steps without the kernel, an ensemble), on
//! the same splits and initial particles. Rows go to `results.csv` after each split (atomically);
//! `--resume` skips the rows there, `--force` replaces the study. `table.md`: mean ± standard
//! error over splits.

use crate::atomic;
use crate::data::{load_table, TableSet};
use crate::error::{ExpError, Result};
use crate::seed_stream::SeedStream;
use candle_core::{DType, Device, Tensor};
use rand::Rng;
use rand_distr::{Distribution, Gamma};
use secateur_bayes::nn::{Linear, LinearCfg};
use secateur_bayes::{Ctx, Init, Module, ParamBuilder, ParamStore, Sampling, SeededRng};
use secateur_inference::posterior::ParamSample;
use secateur_inference::svgd::network::SteinNetwork;
use secateur_inference::svgd::Interaction;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The study file: one `[svgd]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SvgdFile {
    /// The study.
    pub svgd: SvgdStudy,
}

/// The settings (see the [module documentation](self)); the defaults are the reference's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SvgdStudy {
    /// Study name.
    pub name: String,
    /// A shipped UCI table (`wine-quality-red`, `diabetes`).
    pub data: String,
    /// Random train/test splits (split `s` draws from the seed `seed + s`).
    #[serde(default = "twenty")]
    pub splits: usize,
    /// Base seed.
    #[serde(default)]
    pub seed: u64,
    /// Held-out fraction of each split (0.1).
    #[serde(default = "tenth")]
    pub test_fraction: f64,
    /// Particles M (20).
    #[serde(default = "twenty")]
    pub particles: usize,
    /// Hidden units (50).
    #[serde(default = "fifty")]
    pub hidden: usize,
    /// Mini-batch rows (100).
    #[serde(default = "hundred")]
    pub batch_size: usize,
    /// SVGD steps (2,000 in the reference's script).
    #[serde(default = "two_thousand")]
    pub iterations: usize,
    /// AdaGrad step size (1e-3).
    #[serde(default = "milli")]
    pub step: f64,
    /// Gamma prior shape a₀ (1).
    #[serde(default = "one")]
    pub a0: f64,
    /// Gamma prior rate b₀ (0.1).
    #[serde(default = "tenth")]
    pub b0: f64,
    /// `stein` and/or `independent`.
    #[serde(default = "stein_only")]
    pub interactions: Vec<String>,
}

fn twenty() -> usize {
    20
}
fn fifty() -> usize {
    50
}
fn hundred() -> usize {
    100
}
fn two_thousand() -> usize {
    2000
}
fn milli() -> f64 {
    1e-3
}
fn one() -> f64 {
    1.0
}
fn tenth() -> f64 {
    0.1
}
fn stein_only() -> Vec<String> {
    vec!["stein".into()]
}

impl SvgdFile {
    /// Reads and checks a study file; the error names the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ExpError::io(path, e))?;
        let f: SvgdFile =
            toml::from_str(&text).map_err(|e| ExpError::config(path.display().to_string(), e.to_string()))?;
        f.svgd
            .validate()
            .map_err(|e| ExpError::config(path.display().to_string(), e))?;
        Ok(f)
    }
}

impl SvgdStudy {
    fn validate(&self) -> std::result::Result<(), String> {
        crate::config::check_name("svgd.name", &self.name)?;
        if self.splits == 0 || self.particles == 0 || self.hidden == 0 || self.batch_size == 0 || self.iterations == 0 {
            return Err("svgd: splits, particles, hidden, batch_size and iterations must be > 0".into());
        }
        if !(self.test_fraction > 0.0 && self.test_fraction < 1.0) {
            return Err(format!(
                "svgd.test_fraction must lie in (0, 1), got {}",
                self.test_fraction
            ));
        }
        for (k, v) in [("step", self.step), ("a0", self.a0), ("b0", self.b0)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("svgd.{k} must be finite and > 0, got {v}"));
            }
        }
        if self.interactions.is_empty() {
            return Err("svgd.interactions must not be empty".into());
        }
        for i in &self.interactions {
            interaction(i)?;
        }
        Ok(())
    }
}

fn interaction(name: &str) -> std::result::Result<Interaction, String> {
    match name {
        "stein" => Ok(Interaction::Stein),
        "independent" => Ok(Interaction::Independent),
        other => Err(format!(
            "svgd.interactions: unknown `{other}`; use stein or independent"
        )),
    }
}

/// One row of `results.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct SvgdRow {
    /// `stein` or `independent`.
    pub interaction: String,
    /// Split index.
    pub split: usize,
    /// Test RMSE (original units).
    pub rmse: f64,
    /// Test log-likelihood per row (original units).
    pub log_likelihood: f64,
    /// Wall seconds.
    pub seconds: f64,
}

/// Options of a run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Study directory.
    pub out: Option<PathBuf>,
    /// Continue the study in this directory.
    pub resume: Option<PathBuf>,
    /// Replace a study in `out`.
    pub force: bool,
    /// Data directory searched first.
    pub data_dir: Option<PathBuf>,
    /// Run only the cells (split, interaction) whose position in the grid (splits, then
    /// interactions) is `i` modulo `n`.
    pub shard: Option<(usize, usize)>,
    /// With `resume`: run nothing, only rewrite the table.
    pub report_only: bool,
}

/// The results file, the table and the copy of the study file.
pub const RESULTS_FILE: &str = "results.csv";
/// The table.
pub const TABLE_FILE: &str = "table.md";
/// The study file as run.
pub const STUDY_FILE: &str = "svgd.toml";

fn read_rows(path: &Path) -> Result<Vec<SvgdRow>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(|e| ExpError::io(path, e))?;
    let bad = |line: usize| ExpError::Run {
        path: path.to_path_buf(),
        message: format!("line {line} is not `interaction,split,rmse,log_likelihood,seconds`"),
    };
    text.lines()
        .enumerate()
        .skip(1)
        .map(|(i, l)| {
            let f: Vec<&str> = l.split(',').collect();
            if f.len() != 5 {
                return Err(bad(i + 1));
            }
            let num = |s: &str| s.parse::<f64>().map_err(|_| bad(i + 1));
            Ok(SvgdRow {
                interaction: f[0].to_string(),
                split: f[1].parse().map_err(|_| bad(i + 1))?,
                rmse: num(f[2])?,
                log_likelihood: num(f[3])?,
                seconds: num(f[4])?,
            })
        })
        .collect()
}

fn write_rows(path: &Path, rows: &[SvgdRow]) -> Result<()> {
    let mut s = String::from("interaction,split,rmse,log_likelihood,seconds\n");
    for r in rows {
        s.push_str(&format!(
            "{},{},{:.6},{:.6},{:.2}\n",
            r.interaction, r.split, r.rmse, r.log_likelihood, r.seconds
        ));
    }
    atomic::write_string(path, &s)
}

/// `table.md`: per interaction, mean ± standard error over splits.
pub fn table(study: &SvgdStudy, rows: &[SvgdRow]) -> String {
    let mut s = format!(
        "# {}\n\n{} with {} particles, one hidden layer of {} units, {} steps of {} rows; mean ± standard error over \
         the splits run (of {}). Test RMSE and log-likelihood per row in the target's original units.\n\n\
         | interaction | splits | RMSE | log-likelihood |\n|---|---|---|---|\n",
        study.name, study.data, study.particles, study.hidden, study.iterations, study.batch_size, study.splits
    );
    for i in &study.interactions {
        let r: Vec<&SvgdRow> = rows.iter().filter(|r| &r.interaction == i).collect();
        let n = r.len() as f64;
        let ms = |v: Vec<f64>| {
            let m = v.iter().sum::<f64>() / n;
            let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
            (m, sd / n.sqrt())
        };
        let (rm, rse) = ms(r.iter().map(|x| x.rmse).collect());
        let (lm, lse) = ms(r.iter().map(|x| x.log_likelihood).collect());
        s.push_str(&format!(
            "| {i} | {} | {rm:.3} ± {rse:.3} | {lm:.3} ± {lse:.3} |\n",
            r.len()
        ));
    }
    s
}

/// Runs (or continues) the study; returns its directory.
pub fn run(file: &SvgdFile, path: &Path, opts: &RunOptions) -> Result<PathBuf> {
    let study = &file.svgd;
    let text = std::fs::read_to_string(path).map_err(|e| ExpError::io(path, e))?;
    let (shard, shards) = opts.shard.unwrap_or((0, 1));
    if shards == 0 || shard >= shards {
        return Err(ExpError::config(
            "--shard",
            format!("{shard}/{shards} is not a shard I/N with I < N"),
        ));
    }
    if opts.report_only && opts.resume.is_none() {
        return Err(ExpError::config(
            "--report-only",
            "needs --resume DIR (the study to report)",
        ));
    }
    let table_set = load_table(&study.data, opts.data_dir.as_deref())?.set;
    let dir = match &opts.resume {
        Some(d) => {
            let recorded = d.join(STUDY_FILE);
            let old = std::fs::read_to_string(&recorded).map_err(|e| ExpError::io(&recorded, e))?;
            let old: SvgdFile =
                toml::from_str(&old).map_err(|e| ExpError::config(recorded.display().to_string(), e.to_string()))?;
            if &old != file {
                return Err(ExpError::Run {
                    path: d.clone(),
                    message: format!("holds another study (its {STUDY_FILE} differs from {})", path.display()),
                });
            }
            d.clone()
        }
        None => {
            let d = opts
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from("runs").join(format!("{}-{}", study.name, crate::store::timestamp())));
            if d.join(STUDY_FILE).exists() || d.join(RESULTS_FILE).exists() {
                if !opts.force {
                    return Err(ExpError::Run {
                        path: d,
                        message: "already holds a study; continue it with --resume, or replace it with --force".into(),
                    });
                }
                for f in [STUDY_FILE, RESULTS_FILE, TABLE_FILE] {
                    let p = d.join(f);
                    if p.exists() {
                        std::fs::remove_file(&p).map_err(|e| ExpError::io(&p, e))?;
                    }
                }
            }
            std::fs::create_dir_all(&d).map_err(|e| ExpError::io(&d, e))?;
            atomic::write_string(&d.join(STUDY_FILE), &text)?;
            d
        }
    };
    let mut rows = read_rows(&dir.join(RESULTS_FILE))?;
    // the grid in the order of `results.csv`: splits, then interactions by name
    let mut names: Vec<&String> = study.interactions.iter().collect();
    names.sort();
    let cells: Vec<(usize, &String)> = (0..study.splits)
        .flat_map(|s| names.iter().map(move |&i| (s, i)))
        .collect();
    if !opts.report_only {
        // what this shard owes, for `study join`
        crate::cluster::ShardManifest::new(
            crate::cluster::StudyKind::Svgd,
            &study.name,
            path,
            (shard, shards),
            &["interaction", "split"],
            cells.iter().map(|(s, i)| vec![i.to_string(), s.to_string()]).collect(),
            (0..cells.len()).map(|k| k % shards).collect(),
        )?
        .write(&dir)?;
    }
    for (k, &(split, name)) in cells.iter().enumerate() {
        {
            if opts.report_only
                || k % shards != shard
                || rows.iter().any(|r| &r.interaction == name && r.split == split)
            {
                continue;
            }
            let how = interaction(name).map_err(|e| ExpError::config("svgd.interactions", e))?;
            let t0 = std::time::Instant::now();
            let (rmse, ll) = run_split(study, &table_set, split, how)?;
            rows.push(SvgdRow {
                interaction: name.clone(),
                split,
                rmse,
                log_likelihood: ll,
                seconds: t0.elapsed().as_secs_f64(),
            });
            rows.sort_by(|a, b| (a.split, &a.interaction).cmp(&(b.split, &b.interaction)));
            write_rows(&dir.join(RESULTS_FILE), &rows)?;
        }
    }
    atomic::write_string(&dir.join(TABLE_FILE), &table(study, &rows))?;
    Ok(dir)
}

/// Standardised rows `(x, y)` of `set` at `idx` (row-major x), f64.
fn rows_of(set: &TableSet, idx: &[usize], xm: &[f64], xs: &[f64], ym: f64, ys: f64) -> (Vec<f64>, Vec<f64>) {
    let d = set.n_features;
    let mut x = Vec::with_capacity(idx.len() * d);
    let mut y = Vec::with_capacity(idx.len());
    for &i in idx {
        for j in 0..d {
            x.push((f64::from(set.x[i * d + j]) - xm[j]) / xs[j]);
        }
        y.push((f64::from(set.y[i]) - ym) / ys);
    }
    (x, y)
}

/// The network `x ↦ W₂ relu(W₁ x + b₁) + b₂` of one particle.
struct Net {
    fc1: Linear,
    fc2: Linear,
}

impl Net {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut rng = SeededRng::new(0);
        let mut ctx = Ctx::eval(&mut rng, Sampling::Mean);
        let h = self.fc1.forward(x, &mut ctx)?.relu()?;
        Ok(self.fc2.forward(&h, &mut ctx)?.squeeze(1)?)
    }
}

/// Trains and evaluates one split; returns the test RMSE and log-likelihood.
fn run_split(study: &SvgdStudy, set: &TableSet, split: usize, how: Interaction) -> Result<(f64, f64)> {
    let dev = Device::Cpu;
    let seed = study.seed + split as u64;
    // the split: a seeded permutation, the first 90% train (the last 10% of it development)
    let mut split_rng = SeedStream::TableSplit.rng(seed);
    let n = set.len();
    if n < 10 {
        return Err(ExpError::config(
            "svgd.data",
            format!("table `{}` has {n} rows; the study needs at least 10", set.name),
        ));
    }
    let mut perm: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        perm.swap(i, split_rng.random_range(0..=i));
    }
    let n_train_all = (((1.0 - study.test_fraction) * n as f64).round() as usize).clamp(2, n - 1);
    let (train_all, test) = perm.split_at(n_train_all);
    let n_dev = ((0.1 * train_all.len() as f64).round() as usize).clamp(1, 500);
    let (train, devset) = train_all.split_at(train_all.len() - n_dev);
    let d = set.n_features;
    let stat = |idx: &[usize], col: &dyn Fn(usize) -> f64| {
        let m = idx.iter().map(|&i| col(i)).sum::<f64>() / idx.len() as f64;
        let v = idx.iter().map(|&i| (col(i) - m).powi(2)).sum::<f64>() / idx.len() as f64;
        (m, if v > 0.0 { v.sqrt() } else { 1.0 })
    };
    let (xm, xs): (Vec<f64>, Vec<f64>) = (0..d).map(|j| stat(train, &|i| f64::from(set.x[i * d + j]))).unzip();
    let (ym, ys) = stat(train, &|i| f64::from(set.y[i]));
    let (tx, ty) = rows_of(set, train, &xm, &xs, ym, ys);
    let n_train = train.len();
    let x_train = Tensor::from_vec(tx, (n_train, d), &dev)?;
    let y_train = Tensor::from_vec(ty.clone(), n_train, &dev)?;

    // the model and its particles
    let mut init = SeedStream::Init.rng(seed);
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(seed), DType::F64, dev.clone());
    let lin = |inp: usize, out: usize| LinearCfg {
        in_dim: inp,
        out_dim: out,
        bias: true,
        init: Init::Const(0.0),
        bias_init: Some(Init::Const(0.0)),
    };
    let net = Net {
        fc1: Linear::new(&pb.pp("fc1"), lin(d, study.hidden))?,
        fc2: Linear::new(&pb.pp("fc2"), lin(study.hidden, 1))?,
    };
    let log_gamma = pb.param("log_gamma", &[1], Init::Const(0.0))?;
    pb.param("log_lambda", &[1], Init::Const(0.0))?;
    let gamma_draw = Gamma::new(study.a0, study.b0).map_err(|e| ExpError::config("svgd.a0/b0", e.to_string()))?;
    let h = study.hidden;
    let mut members = Vec::with_capacity(study.particles);
    for _ in 0..study.particles {
        let normal = |rng: &mut SeededRng, len: usize, std: f64| -> Vec<f64> {
            rng.normal_vec(len).iter().map(|&v| std * f64::from(v)).collect()
        };
        let w1 = normal(&mut init, h * d, 1.0 / ((d + 1) as f64).sqrt());
        let w2 = normal(&mut init, h, 1.0 / ((h + 1) as f64).sqrt());
        let lambda: f64 = gamma_draw.sample(&mut init);
        let mut m = ParamSample::new();
        m.insert("fc1.weight".into(), Tensor::from_vec(w1, (h, d), &dev)?);
        m.insert("fc1.bias".into(), Tensor::zeros(h, DType::F64, &dev)?);
        m.insert("fc2.weight".into(), Tensor::from_vec(w2, (1, h), &dev)?);
        m.insert("fc2.bias".into(), Tensor::zeros(1, DType::F64, &dev)?);
        m.insert("log_lambda".into(), Tensor::new(&[lambda.ln()], &dev)?);
        // log γ from the initial network's error on up to 1,000 training rows
        let probe: Vec<usize> = (0..n_train.min(1000)).map(|_| init.random_range(0..n_train)).collect();
        let mut tmp = m.clone();
        tmp.insert("log_gamma".into(), Tensor::new(&[0.0f64], &dev)?);
        let hm: std::collections::HashMap<String, Tensor> = tmp.clone().into_iter().collect();
        store.load(&hm)?;
        let idx = Tensor::from_vec(probe.iter().map(|&i| i as u32).collect::<Vec<_>>(), probe.len(), &dev)?;
        let f = net.forward(&x_train.index_select(&idx, 0)?)?;
        let mse = (f - y_train.index_select(&idx, 0)?)?
            .sqr()?
            .mean_all()?
            .to_scalar::<f64>()?;
        tmp.insert("log_gamma".into(), Tensor::new(&[-mse.ln()], &dev)?);
        members.push(tmp);
    }
    let mut svgd = SteinNetwork::new(&store, &members, study.step, how)?;
    let layout = svgd.layout().clone();
    let offset = |name: &str| layout.entries.iter().find(|e| e.0 == name).map(|e| e.2);
    let (Some(og), Some(ol)) = (offset("log_gamma"), offset("log_lambda")) else {
        return Err(ExpError::config("svgd", "the model lost its log γ or log λ"));
    };
    let (a0, b0) = (study.a0, study.b0);
    let n_weights = layout.dim - 2;
    let prior = |p: &Tensor| -> candle_core::Result<Tensor> {
        let rows = p.to_vec2::<f64>()?;
        let dim = rows.first().map_or(0, Vec::len);
        let mut out = Vec::with_capacity(rows.len() * dim);
        for r in &rows {
            let lambda = r[ol].exp();
            let gamma = r[og].exp();
            let sq: f64 = r
                .iter()
                .enumerate()
                .filter(|(k, _)| *k != og && *k != ol)
                .map(|(_, w)| w * w)
                .sum();
            for (k, w) in r.iter().enumerate() {
                out.push(if k == og {
                    // log prior of γ with the log transform's Jacobian
                    (a0 - 1.0) - b0 * gamma + 1.0
                } else if k == ol {
                    0.5 * n_weights as f64 - 0.5 * lambda * sq + (a0 - 1.0) - b0 * lambda + 1.0
                } else {
                    -lambda * w
                });
            }
        }
        Tensor::from_vec(out, (rows.len(), dim), p.device())
    };
    let b = study.batch_size;
    for it in 0..study.iterations {
        let idx: Vec<u32> = (it * b..(it + 1) * b).map(|i| (i % n_train) as u32).collect();
        let idx = Tensor::from_vec(idx, b, &dev)?;
        let (xb, yb) = (x_train.index_select(&idx, 0)?, y_train.index_select(&idx, 0)?);
        svgd.step(
            &store,
            n_train,
            |_| {
                // mean negative log-likelihood of the batch: ½(log 2π − log γ) + γ/2 · (f − y)²
                let f = net.forward(&xb).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                let sq = (f - &yb)?.sqr()?.mean_all()?;
                let g = log_gamma.exp()?.squeeze(0)?;
                let half_log = ((log_gamma.squeeze(0)? - (2.0 * std::f64::consts::PI).ln())? * -0.5)?;
                half_log + (g * sq)? * 0.5
            },
            prior,
        )?;
    }
    // development-set choice of γ, then the test metrics, in original units
    let eval = |idx: &[usize]| -> Result<(Tensor, Vec<f64>)> {
        let (x, _) = rows_of(set, idx, &xm, &xs, ym, ys);
        let y: Vec<f64> = idx.iter().map(|&i| f64::from(set.y[i])).collect();
        Ok((Tensor::from_vec(x, (idx.len(), d), &dev)?, y))
    };
    let (x_dev, y_dev) = eval(devset)?;
    let (x_test, y_test) = eval(test)?;
    let mut preds = Vec::with_capacity(study.particles);
    let mut gammas = Vec::with_capacity(study.particles);
    for m in svgd.members(&store)? {
        let lg = m["log_gamma"].to_vec1::<f64>()?[0];
        store.load(&m.into_iter().collect())?;
        let orig = |x: &Tensor| -> Result<Vec<f64>> {
            Ok(net.forward(x)?.to_vec1::<f64>()?.iter().map(|v| v * ys + ym).collect())
        };
        let pd = orig(&x_dev)?;
        let ll = |lg: f64| -> f64 {
            pd.iter()
                .zip(&y_dev)
                .map(|(p, y)| 0.5 * lg - 0.5 * (2.0 * std::f64::consts::PI).ln() - 0.5 * (p - y).powi(2) * lg.exp())
                .sum()
        };
        let mse = pd.iter().zip(&y_dev).map(|(p, y)| (p - y).powi(2)).sum::<f64>() / pd.len() as f64;
        let heuristic = -mse.ln();
        gammas.push(if ll(heuristic) > ll(lg) { heuristic } else { lg });
        preds.push(orig(&x_test)?);
    }
    let mm = preds.len() as f64;
    let mut sq = 0.0;
    let mut ll = 0.0;
    for (i, y) in y_test.iter().enumerate() {
        let mean = preds.iter().map(|p| p[i]).sum::<f64>() / mm;
        sq += (mean - y).powi(2);
        // log (1/M) Σ N(y; f_m, 1/γ_m), by log-sum-exp
        let logs: Vec<f64> = preds
            .iter()
            .zip(&gammas)
            .map(|(p, &lg)| 0.5 * lg - 0.5 * (2.0 * std::f64::consts::PI).ln() - 0.5 * (p[i] - y).powi(2) * lg.exp())
            .collect();
        let top = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        ll += top + (logs.iter().map(|l| (l - top).exp()).sum::<f64>() / mm).ln();
    }
    let nt = y_test.len() as f64;
    Ok(((sq / nt).sqrt(), ll / nt))
}
