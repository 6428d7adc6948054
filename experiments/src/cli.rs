//! The `secateur` command line (clap).

use crate::commands::{self, TrainOptions, QUICKSTART_SPARSE_VD_TOML, QUICKSTART_TOML};
use crate::config::StudyConfig;
use crate::error::{ExpError, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// secateur: Bayesian deep learning and pruning on candle.
#[derive(Debug, Parser)]
#[command(name = "secateur", version, about, long_about = None)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Whether the command takes Hessian–vector products by double backpropagation (a
    /// second-order criterion, `scores --diagnose`, or a study with such criteria), so that
    /// `main` runs the program again with `CANDLE_GRAD_DO_NOT_DETACH=1`
    /// ([`secateur_kernels::double_backprop`]). Other commands keep candle's cheaper first-order
    /// backward. An unreadable study file answers `false`; the study then reports it.
    pub fn needs_double_backprop(&self) -> bool {
        let second = |name: &str| secateur_pruning::criterion::entry(name).is_ok_and(|e| e.needs_double_backprop);
        match &self.command {
            Command::Prune(c) => c.criterion.as_deref().is_some_and(second),
            Command::Scores(c) => c.diagnose || second(&c.criterion),
            Command::Study(c) => {
                c.study == "pai"
                    && !c.slurm.slurm
                    && c.config
                        .as_deref()
                        .is_some_and(|f| crate::pai::PaiConfig::from_file(f).is_ok_and(|p| p.needs_double_backprop()))
            }
            _ => false,
        }
    }
}

/// `--scope`: one of [`secateur_pruning::Scope::NAMES`], listed as clap's possible values.
fn scope_parser() -> impl clap::builder::TypedValueParser<Value = secateur_pruning::Scope> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(secateur_pruning::Scope::NAMES.map(|(n, _)| n))
        .try_map(|s| s.parse::<secateur_pruning::Scope>())
}

/// `--criterion`'s help: the names of the registry (`secateur_pruning::criterion::CRITERIA`).
fn criterion_help() -> String {
    format!("Criterion: {}", secateur_pruning::criterion::names().join(", "))
}

/// Options of the criteria that have them, shared by `prune` and `scores`.
#[derive(Debug, Args, Clone)]
pub struct CriterionArgs {
    /// Hutchinson (hutchinson, hp, hts): examples per Hessian batch (1: probes per example, as the
    /// reference code of Gollini Navarrete et al. 2025).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub hessian_batch_size: usize,
    /// Hutchinson: Rademacher probes per Hessian batch.
    #[arg(long, value_name = "P", default_value_t = 10)]
    pub probes: usize,
    /// Floating-point type of the model and data for scoring (f64: scores comparable with an
    /// independent computation to 1e-9). Overrides the config's `model.dtype`.
    #[arg(long, value_parser = ["f32", "f64"])]
    pub dtype: Option<String>,
}

impl CriterionArgs {
    fn options(&self) -> secateur_pruning::CriterionOptions {
        secateur_pruning::CriterionOptions {
            hutchinson: secateur_pruning::criteria::HutchinsonOptions {
                batch_size: self.hessian_batch_size,
                probes: self.probes,
            },
        }
    }

    /// The config overrides with `model.dtype` added when `--dtype` is given.
    fn overrides(&self, mut set: Vec<String>) -> Vec<String> {
        if let Some(d) = &self.dtype {
            set.push(format!("model.dtype=\"{d}\""));
        }
        set
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model from a TOML config, or resume a run.
    Train(TrainCmd),
    /// Evaluate a finished run's weights on its test set.
    Eval(EvalCmd),
    /// Compare finished classification (or regression) runs in one calibration and uncertainty report
    /// (Markdown, PNG figures and a self-contained HTML page).
    Report(ReportCmd),
    /// Inspect data sets.
    Data {
        /// What to do.
        #[command(subcommand)]
        action: DataCmd,
    },
    /// Train a deterministic and a sparse-variational-dropout LeNet-5 on the shipped
    /// Fashion-MNIST subset and print their results side by side.
    Quickstart(QuickstartCmd),
    /// Score a model's weights with a pruning criterion and write masks to a target sparsity
    /// (pruning at initialisation with --config, or of a trained run with --run).
    Prune(PruneCmd),
    /// Score given weights with a pruning criterion (to compare with other implementations).
    Scores(ScoresCmd),
    /// Run a study of many trainings from a study file (`pai`: pruning at initialisation).
    Study(StudyCmd),
    /// Rebuild a structurally pruned run as the smaller dense network it is, and measure it
    /// (parameters, FLOPs, accuracy, CPU latency at batch 1 and 128) in compact.md.
    Compact(CompactCmd),
    /// Quantise a finished run's weights to int8 (per output channel, symmetric) and compare it
    /// with the f32 network (size on disk, accuracy, NLL, ECE, latency) in quantise.md.
    Quantise(QuantiseCmd),
}

/// `secateur quantise`.
#[derive(Debug, Args)]
pub struct QuantiseCmd {
    /// A finished deterministic classification run (a compacted one too).
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Output run directory: config.toml, weights.safetensors (dequantised, f32),
    /// weights.int8.safetensors, metrics.json, quantise.md, quantise.json. Must be empty or new.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Timed forward passes at batch 128 (five times as many at batch 1); 0: no timing.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub latency_reps: usize,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// `secateur compact`.
#[derive(Debug, Args)]
pub struct CompactCmd {
    /// A finished run whose masks remove whole filters or units (fine-tuned with `train --masks`
    /// of a `prune --method structured`), or a `prune --run` directory.
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// The masks (default: the prune directory's or the run's masks.safetensors).
    #[arg(long, value_name = "FILE")]
    pub masks: Option<PathBuf>,
    /// Output run directory: config.toml (with model.widths), weights.safetensors, metrics.json,
    /// compact.md, compact.json. Must be empty or new.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Timed forward passes at batch 128 (five times as many at batch 1); 0: no timing.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub latency_reps: usize,
    /// Replace an earlier compaction's output in --out.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// Options shared by commands that read data and run models.
#[derive(Debug, Args, Clone)]
pub struct Common {
    /// Directory searched first for data sets (then $SECATEUR_DATA, system locations, the user
    /// cache, the repository's data/).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Device: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `secateur train`.
#[derive(Debug, Args)]
pub struct TrainCmd {
    /// The study config (TOML). Required unless --resume is given.
    #[arg(long, value_name = "FILE", required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// Override a config value, e.g. `--set optim.lr=0.1` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Override the seed (of a new run: a resume refuses a seed other than the run's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run directory (default runs/STUDY-TIMESTAMP).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Resume the run in DIR from its last checkpoint (its config.toml, plus any --set; not
    /// --seed), or from the start if it stopped before its first checkpoint.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "out"])]
    pub resume: Option<PathBuf>,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
    /// Train with these pruning masks (`secateur prune`'s masks.safetensors): pruned weights are
    /// zeroed and kept at zero. The run records them; `--resume` applies them again by itself.
    #[arg(long, value_name = "FILE")]
    pub masks: Option<PathBuf>,
    /// Ensembles (`[posterior] kind = "ensemble"`): train only member I (0-based) into
    /// DIR/members/member-I of the ensemble in --out DIR (or --resume DIR), for one job per
    /// member; `train --resume DIR` then trains what is missing and combines the members.
    #[arg(long, value_name = "I")]
    pub member: Option<usize>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// `secateur eval`.
#[derive(Debug, Args)]
pub struct EvalCmd {
    /// The run directory.
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// `secateur report`.
#[derive(Debug, Args)]
pub struct ReportCmd {
    /// The run directories compared (classification runs on one data set). The output directory
    /// of `secateur prune --run RUN` stands for RUN with the prune's masks applied.
    #[arg(value_name = "RUN", required = true)]
    pub runs: Vec<PathBuf>,
    /// The report's directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The out-of-distribution data set (default: the first run's `data.ood`, else uci-digits
    /// for Fashion-MNIST and MNIST).
    #[arg(long, value_name = "NAME")]
    pub ood: Option<String>,
    /// Shift kinds of the test set, comma-separated (rotation, gaussian-noise, contrast); `none`
    /// for no shifted sets.
    #[arg(long, value_name = "KINDS", default_value = "rotation,gaussian-noise,contrast")]
    pub shifts: String,
    /// Shift severities, comma-separated, each 1–5.
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "1,2,3,4,5")]
    pub severities: Vec<u8>,
    /// Seed of the shifted sets and of the halves of the test set that fit the temperature.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Replace an existing report in --out.
    #[arg(long)]
    pub force: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

impl ReportCmd {
    fn options(self) -> Result<crate::comparison::ReportOptions> {
        let shifts = if self.shifts.trim() == "none" {
            Vec::new()
        } else {
            self.shifts
                .split(',')
                .map(|s| crate::data::shift::ShiftKind::parse(s.trim()))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| ExpError::config("--shifts", e.to_string()))?
        };
        Ok(crate::comparison::ReportOptions {
            runs: self.runs,
            out: self.out,
            data_dir: self.common.data_dir,
            device: self.common.device,
            ood: self.ood,
            shifts,
            severities: self.severities,
            seed: self.seed,
            force: self.force,
            quiet: self.quiet,
        })
    }
}

/// `secateur data …`.
#[derive(Debug, Subcommand)]
pub enum DataCmd {
    /// Where a named data set was found, its sizes, class counts and pixel statistics.
    Info {
        /// Data set name (fashion-mnist-mini, fashion-mnist, mnist, cifar10, cifar100, uci-digits, …).
        name: String,
        /// Directory searched first.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

/// `secateur quickstart`.
#[derive(Debug, Args)]
pub struct QuickstartCmd {
    /// Parent directory of the two runs, `DIR/deterministic` and `DIR/sparse-vd` (default
    /// runs/quickstart-TIMESTAMP and runs/quickstart-sparse-vd-TIMESTAMP).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Override the seed (default 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override a config value of both runs (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Only the deterministic LeNet-5 (skip the sparse-VD run).
    #[arg(long)]
    pub deterministic_only: bool,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// `secateur prune`.
#[derive(Debug, Args)]
pub struct PruneCmd {
    /// How the mask is found: `score` (a criterion's scores, top-k), `dllp` (distribution-
    /// lossless pruning: Stein variational inference over relaxed masks and weights of a trained
    /// deterministic run, `secateur_pruning::dllp`) or `structured` (whole filters and units of
    /// a trained run by a filter criterion, l1, l2, fpgm, bn-relu, fsm, group-snr or gate, to a budget: --sparsity is
    /// then the fraction of --cost removed; `secateur compact` makes the network smaller).
    #[arg(long, default_value = "score", value_parser = ["score", "dllp", "structured"])]
    pub method: String,
    /// --method structured: what --sparsity is a fraction of, `flops` (multiply–accumulates per
    /// example) or `params` (weights).
    #[arg(long, default_value = "flops", value_parser = ["flops", "params"])]
    pub cost: String,
    // Criterion: the registry's names (the help is made from it); required by --method score.
    #[arg(long, help = criterion_help())]
    pub criterion: Option<String>,
    /// --method dllp: a TOML file whose table `dllp` holds its settings (particles, epochs,
    /// step, mask_step, temperature, weight_prior_std, init_keep, jitter, repulsive); default:
    /// the defaults of every key.
    #[arg(long, value_name = "FILE")]
    pub dllp_config: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub criterion_args: CriterionArgs,
    /// Target sparsity in [0, 1): the fraction of prunable weights removed.
    #[arg(long)]
    pub sparsity: f64,
    /// Top-k over all layers together (global) or per layer (layer). Default: global, and layer
    /// for --method structured (filter norms are not comparable across layers; Li et al. 2017
    /// and He et al. 2019 prune each layer by the same ratio).
    #[arg(long, value_parser = scope_parser())]
    pub scope: Option<secateur_pruning::Scope>,
    /// Batch-norm warm-up: training-mode forward passes over this many training batches before
    /// scoring (0: none).
    #[arg(long, value_name = "BATCHES", default_value_t = 0)]
    pub bn_warmup: usize,
    /// Score-and-prune rounds with the kept fraction shrinking as d^(t/K) (SynFlow uses 100).
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub rounds: usize,
    /// Scoring examples drawn per class.
    #[arg(long, default_value_t = 10)]
    pub samples_per_class: usize,
    /// Keep the first weight layer dense.
    #[arg(long)]
    pub keep_first: bool,
    /// Keep the last weight layer (the classifier) dense.
    #[arg(long)]
    pub keep_last: bool,
    /// Keep every convolution dense: prune the fully connected layers only (as Mohan, Scaife et
    /// al. 2022 prune their LeNet).
    #[arg(long)]
    pub keep_conv: bool,
    /// A finished run directory to prune (its config.toml and weights.safetensors).
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "config",
        required_unless_present = "config"
    )]
    pub run: Option<PathBuf>,
    /// A config whose freshly initialised model is pruned.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override a config value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Output directory: masks.safetensors, scores.safetensors, layers.md, prune.json. One that
    /// already holds any of them, or a run (config.toml), is refused unless --force.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// No progress output (--method dllp).
    #[arg(long)]
    pub quiet: bool,
    /// Replace an earlier prune's files in --out, or write into a run directory.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

impl PruneCmd {
    /// The criterion `--method` asks for: `score` needs `--criterion`, `dllp` refuses one (it
    /// finds its own mask) and has none.
    pub fn method_criterion(&self) -> Result<Option<String>> {
        match (self.method.as_str(), &self.criterion) {
            ("dllp", Some(_)) => Err(ExpError::config(
                "--criterion",
                "--method dllp finds its own mask; leave out --criterion",
            )),
            ("dllp", None) => Ok(None),
            ("structured", None) => Err(ExpError::config(
                "--criterion",
                "--method structured needs a filter criterion: l1, l2, fpgm, bn-relu, fsm, group-snr or gate",
            )),
            (_, None) => Err(ExpError::config(
                "--criterion",
                "--method score needs a criterion (--criterion NAME), or use --method dllp",
            )),
            (_, Some(c)) => Ok(Some(c.clone())),
        }
    }
}

/// `secateur scores`.
#[derive(Debug, Args)]
pub struct ScoresCmd {
    /// Criterion (as for `prune`).
    #[arg(long)]
    pub criterion: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub criterion_args: CriterionArgs,
    /// The weights to score (safetensors with the model's parameter names); without it, the
    /// config's seed initialisation (what pruning at initialisation scores).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Also compare Hutchinson's diagonal (with --hessian-batch-size and --probes) with the exact
    /// Gauss-Newton diagonal on the same weights and examples, per layer: share of negative
    /// entries, Spearman correlations, time; printed and written to OUT_STEM.diagnose.md.
    #[arg(long)]
    pub diagnose: bool,
    /// The config of the model and data.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Override a config value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Scoring examples drawn per class.
    #[arg(long, default_value_t = 10)]
    pub samples_per_class: usize,
    /// Output file (safetensors of scores by weight name); an existing file is refused unless
    /// --force.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace an existing --out (and, with --diagnose, an existing diagnosis file).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// `secateur study`.
#[derive(Debug, Args)]
pub struct StudyCmd {
    /// The study: `pai` (pruning at initialisation: criteria × sparsities × batch-norm warm-up ×
    /// seeds, each network trained with its masks), `posteriors` (methods × seeds of one base
    /// config: MAP, MC dropout, VI, SWAG, Laplace, ensembles, …), `compression` (trained
    /// networks pruned by posterior and deterministic criteria, without and with a fine-tune) or
    /// `svgd` (Bayesian neural network regression by SVGD on random splits of a UCI table, as
    /// Liu & Wang 2016).
    /// `join` merges the shard directories of one study (`secateur study join SHARD_DIR...
    /// --out DIR`): it refuses shards of another study config, lists missing cells (and fails)
    /// or writes the study's results.csv, table, report and figures.
    #[arg(value_parser = ["pai", "posteriors", "compression", "svgd", "join"])]
    pub study: String,
    /// `join`: the shard directories (each holds `shard-I-of-N.json` and the shard's rows).
    #[arg(value_name = "SHARD_DIR")]
    pub shard_dirs: Vec<PathBuf>,
    /// The study file (e.g. experiments/configs/pai.toml); every study but `join` needs one.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Study directory (default runs/NAME-TIMESTAMP); with --slurm, the directory of the
    /// scripts, shards and joined study; with `join`, the joined study.
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Continue an interrupted study in DIR: runs already in its results.csv are skipped.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Networks scored and trained at the same time (they share candle's thread pool; the
    /// results do not depend on this number).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub jobs: usize,
    /// Run only every N-th run of the grid, starting at the I-th (0-based), to split a study
    /// over processes or machines; join their results.csv files into one directory and
    /// `--resume` it to finish (and to write the table).
    #[arg(long, value_name = "I/N", value_parser = crate::pai::parse_shard)]
    pub shard: Option<(usize, usize)>,
    /// With --resume: run nothing, only write the table, plot and report of the runs so far.
    #[arg(long, requires = "resume")]
    pub report_only: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// `compression`, `svgd`: replace the study in --out (its files and trained runs) instead
    /// of refusing it; with --slurm: replace the scripts, shards and joined study in --out;
    /// `join`: replace a study in --out that is not an earlier join of these shards.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub slurm: SlurmArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// `study --slurm`: the study as a Slurm job array and a join job (see
/// `secateur_experiments::cluster::slurm`).
#[derive(Debug, Args, Clone)]
pub struct SlurmArgs {
    /// Write into --out an sbatch job-array script (task I runs shard I/N) and a join job that
    /// depends on it, instead of running the study here.
    #[arg(long, requires = "out", conflicts_with_all = ["resume", "shard", "report_only"])]
    pub slurm: bool,
    /// --slurm: the number of array tasks (shards).
    #[arg(long, value_name = "N", default_value_t = 8, requires = "slurm")]
    pub array_size: usize,
    /// --slurm: the partition.
    #[arg(long, value_name = "P", requires = "slurm")]
    pub partition: Option<String>,
    /// --slurm: the time limit of each task and of the join (HH:MM:SS, D-HH:MM:SS).
    #[arg(long, value_name = "HH:MM:SS", requires = "slurm")]
    pub time: Option<String>,
    /// --slurm: CPUs per task (also the tasks' RAYON_NUM_THREADS).
    #[arg(long, value_name = "C", default_value_t = 1, requires = "slurm")]
    pub cpus_per_task: usize,
    /// --slurm: memory per task (e.g. 8G).
    #[arg(long, value_name = "M", requires = "slurm")]
    pub mem: Option<String>,
    /// --slurm: generic resources of each array task (e.g. gpu:1).
    #[arg(long, value_name = "GRES", requires = "slurm")]
    pub gres: Option<String>,
    /// --slurm: a further #SBATCH option for both scripts (repeatable, e.g. --sbatch-arg=--account=proj).
    #[arg(long, value_name = "ARG", requires = "slurm", allow_hyphen_values = true)]
    pub sbatch_arg: Vec<String>,
    /// --slurm: let Slurm requeue a pre-empted task (it resumes its shard).
    #[arg(long, requires = "slurm")]
    pub requeue: bool,
    /// --slurm: submit the two scripts with sbatch and print the job ids.
    #[arg(long, requires = "slurm")]
    pub submit: bool,
}

fn with_seed(mut set: Vec<String>, seed: Option<u64>) -> Vec<String> {
    if let Some(s) = seed {
        set.push(format!("seed={s}"));
    }
    set
}

/// The study file of a study command (every study but `join` needs one; only `join` takes
/// shard directories).
fn study_config(c: &StudyCmd) -> Result<&std::path::Path> {
    if !c.shard_dirs.is_empty() {
        return Err(ExpError::config(
            "study",
            format!(
                "`{}` takes no directories ({} given); `secateur study join SHARD_DIR... --out DIR` merges shards",
                c.study,
                c.shard_dirs.len()
            ),
        ));
    }
    c.config
        .as_deref()
        .ok_or_else(|| ExpError::config("study", format!("`{}` needs --config FILE (the study file)", c.study)))
}

/// Whether the run in `dir` was trained under a Gaussian likelihood (an unreadable config is
/// left to the classification path, which reports it).
fn is_regression_run(dir: &std::path::Path) -> bool {
    StudyConfig::from_file(&dir.join("config.toml"), &[]).is_ok_and(|c| c.likelihood.is_regression())
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(c) => {
            let set = with_seed(c.set, c.seed);
            let (cfg, resume) = match &c.resume {
                Some(dir) => (
                    StudyConfig::from_file(&dir.join("config.toml"), &set)?,
                    Some(dir.as_path()),
                ),
                None => {
                    let path = c
                        .config
                        .as_ref()
                        .ok_or_else(|| ExpError::config("--config", "missing"))?;
                    (StudyConfig::from_file(path, &set)?, None)
                }
            };
            let opts = TrainOptions {
                out: c.out,
                data_dir: c.common.data_dir,
                device: c.common.device,
                quiet: c.quiet,
                masks: c.masks,
            };
            let s = match c.member {
                Some(i) => {
                    let dir = resume.or(opts.out.as_deref()).ok_or_else(|| {
                        ExpError::config("--member", "needs the ensemble's directory: --out DIR or --resume DIR")
                    })?;
                    commands::train_member(&cfg, &opts, dir, i)?
                }
                None => commands::train(&cfg, &opts, resume)?,
            };
            println!("{}", commands::metrics_table(&s.metrics));
            println!("run directory: {}", s.dir.display());
        }
        Command::Eval(c) if is_regression_run(&c.run) => {
            let (m, cfg) = commands::regression::eval(&c.run, c.common.data_dir.as_deref(), &c.common.device)?;
            println!(
                "{} on {} ({}), original target units",
                cfg.model.arch,
                cfg.data.name,
                c.run.display()
            );
            println!("  test_rmse         {:.4}\n  test_nll          {:.4}\n  test_mixture_nll  {:.4}\n  test_coverage_95  {:.4}", m.rmse, m.nll, m.mixture_nll, m.coverage_95);
        }
        Command::Eval(c) => {
            let (m, cfg) = commands::eval(&c.run, c.common.data_dir.as_deref(), &c.common.device)?;
            println!("{} on {} ({})", cfg.model.arch, cfg.data.name, c.run.display());
            println!("  test_accuracy   {:.4}\n  test_nll        {:.4}\n  test_brier      {:.4}\n  test_ece        {:.4}\n  test_mce        {:.4}", m.accuracy, m.nll, m.brier, m.ece, m.mce);
        }
        Command::Report(c) => {
            let opts = c.options()?;
            match crate::comparison::report(&opts)? {
                crate::comparison::Measured::Classification(results) => {
                    for r in &results {
                        let m = &r.calibration.metrics;
                        println!(
                            "  {:<24} accuracy {:.4}  NLL {:.4}  ECE {:.4}  T {:.3}",
                            r.label, m.accuracy, m.nll, m.ece, r.temperature.temperature
                        );
                    }
                }
                crate::comparison::Measured::Regression(results) => {
                    for r in &results {
                        let c95 = r.coverage.iter().find(|c| (c.level - 0.95).abs() < 1e-12);
                        println!(
                            "  {:<24} RMSE {:.4}  NLL {:.4}  CRPS {:.4}  coverage 95% {:.4}",
                            r.label,
                            r.metrics.rmse,
                            r.metrics.nll,
                            r.crps,
                            c95.map_or(f64::NAN, |c| c.coverage)
                        );
                    }
                }
            }
            println!("report: {}", opts.out.join("report.html").display());
        }
        Command::Data {
            action: DataCmd::Info { name, data_dir },
        } => {
            println!("{}", crate::data::describe(&name, data_dir.as_deref())?);
        }
        Command::Quickstart(c) => {
            let set = with_seed(c.set, c.seed);
            let det = StudyConfig::from_toml(QUICKSTART_TOML, "experiments/configs/quickstart.toml", &set)?;
            let svd = StudyConfig::from_toml(
                QUICKSTART_SPARSE_VD_TOML,
                "experiments/configs/quickstart-sparse-vd.toml",
                &set,
            )?;
            let mut runs = vec![("deterministic", det)];
            if !c.deterministic_only {
                runs.push(("sparse-vd", svd));
            }
            let mut results = Vec::new();
            for (label, cfg) in &runs {
                eprintln!(
                    "quickstart: {} ({} layers) on {} for {} epochs (seed {})",
                    cfg.model.arch, cfg.model.layers, cfg.data.name, cfg.train.epochs, cfg.seed
                );
                let opts = TrainOptions {
                    out: c.out.as_ref().map(|o| o.join(label)),
                    data_dir: c.common.data_dir.clone(),
                    device: c.common.device.clone(),
                    quiet: c.quiet,
                    masks: None,
                };
                let s = commands::train(cfg, &opts, None)?;
                eprintln!("run directory: {}", s.dir.display());
                results.push((*label, s.metrics));
            }
            let refs: Vec<(&str, &serde_json::Map<String, serde_json::Value>)> =
                results.iter().map(|(l, m)| (*l, m)).collect();
            println!(
                "\nquickstart results (LeNet-5, {})\n{}",
                runs[0].1.data.name,
                commands::comparison_table(&refs)
            );
        }
        Command::Compact(c) => {
            let s = commands::compact(&commands::CompactOptions {
                run: c.run,
                masks: c.masks,
                out: c.out.clone(),
                data_dir: c.common.data_dir,
                force: c.force,
                latency_reps: c.latency_reps,
            })?;
            println!("{}", commands::compact_markdown(&s));
            println!("compacted run in {}", c.out.display());
        }
        Command::Quantise(c) => {
            let s = commands::quantise(&commands::QuantiseOptions {
                run: c.run,
                out: c.out.clone(),
                data_dir: c.common.data_dir,
                latency_reps: c.latency_reps,
            })?;
            println!("{}", commands::quantise_markdown(&s));
            println!("quantised run in {}", c.out.display());
        }
        Command::Prune(c) if c.method == "structured" => {
            let criterion = c.method_criterion()?.unwrap_or_default();
            let criterion = criterion
                .parse::<secateur_pruning::structured::FilterCriterion>()
                .map_err(|e| ExpError::config("--criterion", e))?;
            if c.config.is_some() || c.dllp_config.is_some() {
                return Err(ExpError::config(
                    "--method structured",
                    "prunes a trained run: give --run DIR (no --config, no --dllp-config)",
                ));
            }
            let Some(run) = c.run.clone() else {
                return Err(ExpError::config(
                    "--method structured",
                    "prunes a trained run: give --run DIR",
                ));
            };
            let opts = crate::structured::StructuredPruneOptions {
                criterion,
                fraction: c.sparsity,
                cost: crate::structured::parse_cost(&c.cost)?,
                scope: c.scope.unwrap_or(secateur_pruning::Scope::PerLayer),
                run,
                overrides: c.set.clone(),
                out: c.out.clone(),
                data_dir: c.common.data_dir.clone(),
                force: c.force,
            };
            let m = crate::structured::prune(&opts)?;
            println!(
                "{}",
                std::fs::read_to_string(c.out.join("layers.md")).unwrap_or_default()
            );
            let f = |k: &str| m.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
            println!(
                "{} filters: {} of {} groups pruned, {:.1}% of the {} removed (target {:.1}%); FLOPs {} → {}; files in {}",
                criterion,
                f("groups_pruned"),
                f("groups"),
                100.0 * f("reached_fraction"),
                c.cost,
                100.0 * c.sparsity,
                f("flops"),
                f("flops_kept"),
                c.out.display()
            );
        }
        Command::Prune(c) => {
            let criterion = c.method_criterion()?;
            let spec = crate::prune::PruneSpec {
                criterion: criterion.clone().unwrap_or_else(|| "dllp".into()),
                sparsity: c.sparsity,
                scope: c.scope.unwrap_or_default(),
                bn_warmup_batches: c.bn_warmup,
                rounds: c.rounds,
                samples_per_class: c.samples_per_class,
                keep_first: c.keep_first,
                keep_last: c.keep_last,
                keep_conv: c.keep_conv,
                options: c.criterion_args.options(),
            };
            if criterion.is_none() {
                let Some(run) = c.run.clone() else {
                    return Err(ExpError::config(
                        "--method dllp",
                        "prunes a trained run: give --run DIR",
                    ));
                };
                let dllp = match &c.dllp_config {
                    Some(f) => crate::dllp::DllpConfig::from_file(f)?,
                    None => crate::dllp::DllpConfig::default(),
                };
                let m = crate::dllp::prune(&crate::dllp::DllpPruneOptions {
                    spec,
                    run,
                    overrides: c.set.clone(),
                    dllp,
                    out: c.out.clone(),
                    data_dir: c.common.data_dir.clone(),
                    force: c.force,
                    quiet: c.quiet,
                })?;
                println!(
                    "{}",
                    std::fs::read_to_string(c.out.join("layers.md")).unwrap_or_default()
                );
                let f = |k: &str| m.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
                println!(
                    "dllp at sparsity {:.4}: {} of {} prunable weights kept; mask agreement {:.3} ± {:.3}; test accuracy {:.2}%, NLL {:.4}, ECE {:.4}, mean mutual information {:.4}; files in {}",
                    f("sparsity"),
                    m.get("kept").and_then(|v| v.as_u64()).unwrap_or(0),
                    m.get("prunable").and_then(|v| v.as_u64()).unwrap_or(0),
                    f("mask_agreement"),
                    f("mask_agreement_sd"),
                    100.0 * f("test_accuracy"),
                    f("test_nll"),
                    f("test_ece"),
                    f("test_mean_mutual_information"),
                    c.out.display()
                );
                return Ok(());
            }
            if c.dllp_config.is_some() {
                return Err(ExpError::config("--dllp-config", "belongs to --method dllp"));
            }
            let opts = crate::prune::PruneOptions {
                spec,
                run: c.run,
                config: c.config,
                overrides: c.criterion_args.overrides(c.set),
                out: c.out.clone(),
                data_dir: c.common.data_dir,
                force: c.force,
            };
            let m = crate::prune::prune(&opts)?;
            println!(
                "{}",
                std::fs::read_to_string(c.out.join("layers.md")).unwrap_or_default()
            );
            println!(
                "{} at sparsity {:.4}: {} of {} prunable weights kept; files in {}",
                opts.spec.criterion,
                m.get("sparsity").and_then(|v| v.as_f64()).unwrap_or(f64::NAN),
                m.get("kept").and_then(|v| v.as_u64()).unwrap_or(0),
                m.get("prunable").and_then(|v| v.as_u64()).unwrap_or(0),
                c.out.display()
            );
        }
        Command::Scores(c) => {
            let out = crate::prune::scores(&crate::prune::ScoresOptions {
                criterion: c.criterion.clone(),
                weights: c.weights.clone(),
                config: c.config.clone(),
                overrides: c.criterion_args.overrides(c.set.clone()),
                out: c.out.clone(),
                samples_per_class: c.samples_per_class,
                options: c.criterion_args.options(),
                data_dir: c.common.data_dir.clone(),
                diagnose: c.diagnose,
                force: c.force,
            })?;
            if let Some(d) = &out.diagnosis {
                println!("{d}");
                println!(
                    "diagnosis written to {}",
                    crate::prune::diagnosis_path(&c.out).display()
                );
            }
            println!("{} score tensors written to {}", out.tensors, c.out.display());
        }
        Command::Study(c) if c.study == "join" => {
            let out = c
                .out
                .clone()
                .ok_or_else(|| ExpError::config("study join", "needs --out DIR (the joined study)"))?;
            if c.config.is_some() || c.resume.is_some() || c.shard.is_some() || c.slurm.slurm {
                return Err(ExpError::config(
                    "study join",
                    "takes shard directories and --out (the study config is in the shards)",
                ));
            }
            let o = crate::cluster::join(
                &c.shard_dirs,
                &crate::cluster::JoinOptions {
                    out: out.clone(),
                    force: c.force,
                    data_dir: c.common.data_dir.clone(),
                },
            )?;
            println!(
                "joined {} of {} shard(s) of a `{}` study (config {}): {} row(s) in {}",
                o.shards - o.absent_shards.len(),
                o.shards,
                o.study.name(),
                o.config_hash,
                o.rows,
                out.join("results.csv").display()
            );
            if !o.failed.is_empty() {
                println!("{} failed cell(s):", o.failed.len());
                for f in &o.failed {
                    println!("  {f}");
                }
            }
            if !o.missing.is_empty() {
                return Err(ExpError::Run {
                    path: out.clone(),
                    message: format!(
                        "{} cell(s) missing, no table written (list in {}):\n  {}",
                        o.missing.len(),
                        out.join("missing.md").display(),
                        o.missing.iter().take(20).cloned().collect::<Vec<_>>().join("\n  ")
                    ),
                });
            }
            println!("table: {}", out.join("table.md").display());
        }
        Command::Study(c) if c.slurm.slurm => {
            let config = study_config(&c)?;
            let kind = crate::cluster::StudyKind::from_name(&c.study)?;
            let out = c
                .out
                .clone()
                .ok_or_else(|| ExpError::config("--slurm", "needs --out DIR"))?;
            let s = &c.slurm;
            let p = crate::cluster::slurm::prepare(
                kind,
                config,
                &out,
                &crate::cluster::slurm::SlurmOptions {
                    array_size: s.array_size,
                    partition: s.partition.clone(),
                    time: s.time.clone(),
                    cpus_per_task: s.cpus_per_task,
                    mem: s.mem.clone(),
                    gres: s.gres.clone(),
                    sbatch_args: s.sbatch_arg.clone(),
                    requeue: s.requeue,
                    submit: s.submit,
                    force: c.force,
                    data_dir: c.common.data_dir.clone(),
                },
            )?;
            println!("job array: {}", p.array_script.display());
            println!("join job:  {}", p.join_script.display());
            match &p.jobs {
                Some((a, j)) => {
                    println!(
                        "submitted: array job {a} ({} tasks), join job {j} (after the array)",
                        s.array_size
                    );
                    println!("the study will be in {}", p.study_dir.display());
                }
                None => println!(
                    "review them, then: a=$(sbatch --parsable {}) && sbatch --dependency=afterany:$a {}",
                    p.array_script.display(),
                    p.join_script.display()
                ),
            }
        }
        Command::Study(c) if c.study == "posteriors" => {
            let config = study_config(&c)?;
            let study = crate::posterior_study::PosteriorStudy::from_file(config)?;
            let opts = crate::posterior_study::RunOptions {
                out: c.out.clone(),
                resume: c.resume.clone(),
                data_dir: c.common.data_dir.clone(),
                shard: c.shard,
                report_only: c.report_only,
                quiet: c.quiet,
            };
            let dir = crate::posterior_study::run(&study, config, &opts)?;
            println!("{}", std::fs::read_to_string(dir.join("table.md")).unwrap_or_default());
            println!("study directory: {}", dir.display());
        }
        Command::Study(c) if c.study == "svgd" => {
            let config = study_config(&c)?;
            let file = crate::svgd_study::SvgdFile::from_file(config)?;
            let opts = crate::svgd_study::RunOptions {
                out: c.out.clone(),
                resume: c.resume.clone(),
                force: c.force,
                data_dir: c.common.data_dir.clone(),
                shard: c.shard,
                report_only: c.report_only,
            };
            let dir = crate::svgd_study::run(&file, config, &opts)?;
            println!("{}", std::fs::read_to_string(dir.join("table.md")).unwrap_or_default());
            println!("study directory: {}", dir.display());
        }
        Command::Study(c) if c.study == "compression" => {
            if c.jobs != 1 {
                return Err(ExpError::config(
                    "--jobs",
                    "the compression study runs one network at a time; split it with --shard",
                ));
            }
            let config = study_config(&c)?;
            let file = crate::compression_study::CompressionFile::from_file(config)?;
            let opts = crate::compression_study::RunOptions {
                out: c.out.clone(),
                resume: c.resume.clone(),
                force: c.force,
                data_dir: c.common.data_dir.clone(),
                shard: c.shard,
                report_only: c.report_only,
                quiet: c.quiet,
            };
            let dir = crate::compression_study::run(&file, config, &opts)?;
            println!(
                "{}",
                std::fs::read_to_string(dir.join("compression.md")).unwrap_or_default()
            );
            println!("study directory: {}", dir.display());
        }
        Command::Study(c) => {
            let config = study_config(&c)?;
            let pai = crate::pai::PaiConfig::from_file(config)?;
            let opts = crate::pai::RunOptions {
                out: c.out.clone(),
                data_dir: c.common.data_dir.clone(),
                jobs: c.jobs,
                resume: c.resume.clone(),
                shard: c.shard,
                report_only: c.report_only,
                quiet: c.quiet,
            };
            let dir = crate::pai::run(&pai, config, &opts)?;
            println!("{}", std::fs::read_to_string(dir.join("table.md")).unwrap_or_default());
            println!("study directory: {}", dir.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn prune(extra: &[&str]) -> std::result::Result<Cli, clap::Error> {
        let mut args = vec!["secateur", "prune", "--criterion", "snip", "--sparsity", "0.5"];
        args.extend_from_slice(&["--config", "c.toml", "--out", "o"]);
        args.extend_from_slice(extra);
        Cli::try_parse_from(args)
    }

    /// `--method` is `score` by default, which needs `--criterion`; `--method dllp` runs without
    /// one; other methods are refused.
    #[test]
    fn prune_methods_parse() {
        let parse = |args: &[&str]| {
            let mut v = vec!["secateur", "prune", "--sparsity", "0.9", "--run", "r", "--out", "o"];
            v.extend_from_slice(args);
            Cli::try_parse_from(v)
        };
        let method = |c: Cli| match c.command {
            Command::Prune(p) => Some((p.method, p.criterion)),
            _ => None,
        };
        assert_eq!(
            parse(&["--method", "dllp"]).ok().and_then(method),
            Some(("dllp".to_string(), None))
        );
        assert_eq!(
            parse(&["--criterion", "snr"]).ok().and_then(method),
            Some(("score".to_string(), Some("snr".to_string())))
        );
        let check = |args: &[&str]| match parse(args).map(|c| c.command) {
            Ok(Command::Prune(p)) => p.method_criterion().map_err(|e| e.to_string()),
            _ => Err("does not parse".into()),
        };
        assert_eq!(check(&["--criterion", "snr"]), Ok(Some("snr".into())));
        assert_eq!(check(&["--method", "dllp"]), Ok(None));
        let e = check(&[]).unwrap_err();
        assert!(e.contains("--criterion") && e.contains("dllp"), "{e}");
        let e = check(&["--method", "dllp", "--criterion", "snr"]).unwrap_err();
        assert!(e.contains("leave out --criterion"), "{e}");
        let e = parse(&["--method", "gates"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("gates") && e.contains("dllp"), "{e}");
    }

    /// `--scope` parses into `Scope` (default global), lists its values, and refuses others.
    #[test]
    fn scope_parses_into_the_enum() {
        let scope = |c: Cli| match c.command {
            Command::Prune(p) => Some(p.scope.unwrap_or_default()),
            _ => None,
        };
        assert_eq!(prune(&[]).ok().and_then(scope), Some(secateur_pruning::Scope::Global));
        assert_eq!(
            prune(&["--scope", "layer"]).ok().and_then(scope),
            Some(secateur_pruning::Scope::PerLayer)
        );
        let e = prune(&["--scope", "per-layer"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("per-layer") && e.contains("global, layer"), "{e}");
    }

    /// `--criterion`'s help lists every registered criterion, and the double-backprop question
    /// is the registry's.
    #[test]
    fn criterion_help_and_needs_come_from_the_registry() {
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("prune")
            .map(|p| p.render_help().to_string())
            .unwrap_or_default();
        for name in secateur_pruning::criterion::names() {
            assert!(help.contains(name), "{name} missing from\n{help}");
        }
        let needs = |crit: &str| {
            prune(&[])
                .map(|mut c| {
                    if let Command::Prune(p) = &mut c.command {
                        p.criterion = Some(crit.into());
                    }
                    c.needs_double_backprop()
                })
                .unwrap_or_default()
        };
        assert!(needs("hts") && needs("grasp") && !needs("snip") && !needs("hts-ggn") && !needs("obd"));
    }
}
