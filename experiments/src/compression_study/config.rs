//! The study file of `secateur study compression` (its schema is in the [module docs](super)),
//! read and checked in two steps: [`CompressionFile::from_file`] checks everything the file and
//! the model configs say (names, grids, criteria against the registry and the model kinds), and
//! [`check_applicable`] checks, on each model freshly built, that its layers report what a
//! posterior criterion reads (`log α`, gate inclusion probabilities) before the study starts.

use crate::commands::build_model;
use crate::config::StudyConfig;
use crate::dllp::DllpConfig;
use crate::error::{ExpError, Result};
use crate::seed_stream::SeedStream;
use secateur_pruning::{criterion, Scope, ScoringContext};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The criteria that read a posterior (those of `secateur_pruning::criteria::posterior`): the
/// signal-to-noise ratio `|μ|/σ` (Graves 2011; Blundell et al. 2015; Mohan, Scaife et al. 2022),
/// `−log α` (Molchanov, Ashukha & Vetrov 2017), a gate's inclusion probability, and the Fisher
/// diagonal of the posterior-mean network (Mohan, Scaife et al. 2022). They apply to a model
/// with Bayesian layers that report those statistics, or with a `[posterior]` (SWAG, Laplace),
/// which reports a mean and a σ per weight only (so `snr` and `posterior-fisher`). Every other
/// criterion of the registry scores the weights themselves (the posterior means of a Bayesian
/// layer), so it applies to every model.
pub const POSTERIOR_CRITERIA: [&str; 4] = ["snr", "log-alpha", "inclusion", "posterior-fisher"];

/// The criterion name of DLLP's cells: not a score of the registry but a method of its own,
/// [`crate::dllp`] (Stein variational inference over relaxed masks and weights of the trained
/// deterministic network), evaluated by its particles' model average.
pub const DLLP: &str = "dllp";

/// Whether `name` is one of [`POSTERIOR_CRITERIA`].
pub fn reads_posterior(name: &str) -> bool {
    POSTERIOR_CRITERIA.contains(&name)
}

/// A study file: the keys of the `[compression]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionFile {
    /// The study.
    pub compression: CompressionConfig,
}

/// The study (see the [module docs](super) for an example).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionConfig {
    /// Study name (the default directory is `runs/<name>-<timestamp>`).
    pub name: String,
    /// Seeds; every model is trained once per seed, and all its cells start from that network.
    pub seeds: Vec<u64>,
    /// Target sparsities in `(0, 1)`: the fraction of prunable weights removed. The dense
    /// network (sparsity 0) is always evaluated as the reference.
    pub sparsities: Vec<f64>,
    /// Epochs of the fine-tune of each pruned network with its masks held (0: no fine-tune).
    /// Default 1. Every cell is evaluated without and, unless 0, with it.
    #[serde(default = "one")]
    pub finetune_epochs: usize,
    /// The fine-tune's learning rate, constant (default: a tenth of the model config's
    /// `optim.lr`).
    #[serde(default)]
    pub finetune_lr: Option<f64>,
    /// The out-of-distribution data set (e.g. `uci-digits`), detected by predictive entropy;
    /// default: each model config's `data.ood`; none: no OOD AUROC (NaN).
    #[serde(default)]
    pub ood: Option<String>,
    /// Scoring examples per class for the criteria that read data (`fisher`,
    /// `posterior-fisher`, `snip`, …). Default 10.
    #[serde(default = "ten")]
    pub samples_per_class: usize,
    /// `global` (default: one top-k over all layers) or `layer`.
    #[serde(default, deserialize_with = "de_scope")]
    pub scope: Scope,
    /// Keep the classifier dense. Default false (every linear and convolution weight is
    /// prunable, as Han et al. 2015 and Molchanov et al. 2017 prune trained networks).
    #[serde(default)]
    pub keep_last: bool,
    /// Keep every convolution dense: only the fully connected layers are pruned, and the
    /// sparsity is over their weights (Mohan, Scaife et al. 2022 prune the fully connected
    /// weights of their LeNet). Default false.
    #[serde(default)]
    pub keep_conv: bool,
    /// The settings of the `dllp` cells (`[compression.dllp]`, the keys of
    /// [`crate::dllp::DllpConfig`]; defaults where left out).
    #[serde(default)]
    pub dllp: DllpConfig,
    /// The models, in table order.
    pub models: Vec<CompressionModel>,
}

/// One model of the study: a training config, overrides, and the criteria that prune it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionModel {
    /// Name (a plain name: it names run directories and lines of the figure).
    pub name: String,
    /// The training config, relative to the study file's directory (or absolute).
    pub config: PathBuf,
    /// `key=value` overrides of it, as `--set` takes them.
    #[serde(default)]
    pub set: Vec<String>,
    /// Criteria (names of `secateur_pruning::criterion::CRITERIA`, or [`DLLP`]) that apply to
    /// this model.
    pub criteria: Vec<String>,
}

fn one() -> usize {
    1
}
fn ten() -> usize {
    10
}
fn de_scope<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Scope, D::Error> {
    crate::config::de_named(d, "compression.scope")
}

impl CompressionFile {
    /// Reads and checks a study file ([`CompressionFile::parse`]), the model configs read
    /// relative to it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ExpError::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses the text of the study file `path` and checks it: the grids are non-empty and
    /// without repeats, sparsities lie in `(0, 1)`, names are plain and unique, every model
    /// config is a classification config of one network (no regression, ensemble or `[greg]`),
    /// and every criterion is known, first-order, and applies to its model's kind
    /// ([`POSTERIOR_CRITERIA`]); each message names the file, the model and the field.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let src = path.display().to_string();
        let f: CompressionFile = toml::from_str(text).map_err(|e| ExpError::config(&src, e.to_string()))?;
        f.compression.validate(path).map_err(|m| ExpError::config(&src, m))?;
        Ok(f)
    }
}

/// `true` if `v` holds a value twice.
fn has_repeat<T: PartialEq>(v: &[T]) -> bool {
    v.iter().enumerate().any(|(i, x)| v[..i].contains(x))
}

impl CompressionConfig {
    /// The config of model `m` with `seed`, read relative to the study file `path` with the
    /// model's overrides, `seed` and the name `<study>-<model>`.
    pub fn model_config(&self, path: &Path, m: &CompressionModel, seed: u64) -> Result<StudyConfig> {
        let file = if m.config.is_absolute() {
            m.config.clone()
        } else {
            path.parent().unwrap_or(Path::new(".")).join(&m.config)
        };
        let mut set = m.set.clone();
        set.push(format!("seed={seed}"));
        set.push(format!("name=\"{}-{}\"", self.name, m.name));
        let cfg = StudyConfig::from_file(&file, &set)?;
        crate::learned::refuse(&cfg, "the compression study")?;
        Ok(cfg)
    }

    /// The fine-tune's learning rate for a model config: `finetune_lr`, or `optim.lr / 10`.
    pub fn finetune_lr(&self, cfg: &StudyConfig) -> f64 {
        self.finetune_lr.unwrap_or(cfg.optim.lr / 10.0)
    }

    /// The checks of [`CompressionFile::parse`]; the message names the field.
    fn validate(&self, path: &Path) -> std::result::Result<(), String> {
        crate::config::check_name("compression.name", &self.name)?;
        if self.seeds.is_empty() || self.sparsities.is_empty() || self.models.is_empty() {
            return Err("compression: `seeds`, `sparsities` and `models` must not be empty".into());
        }
        if has_repeat(&self.seeds) || has_repeat(&self.sparsities) {
            return Err("compression: `seeds` and `sparsities` must not repeat a value".into());
        }
        if let Some(s) = self.sparsities.iter().find(|s| !(**s > 0.0 && **s < 1.0)) {
            return Err(format!(
                "compression.sparsities must lie in (0, 1) (the dense network, 0, is always the reference), got {s}"
            ));
        }
        if let Some(lr) = self.finetune_lr {
            if !(lr.is_finite() && lr > 0.0) {
                return Err(format!("compression.finetune_lr must be finite and > 0, got {lr}"));
            }
        }
        if self.samples_per_class == 0 {
            return Err("compression.samples_per_class must be at least 1".into());
        }
        self.dllp.validate().map_err(|e| format!("compression.{e}"))?;
        for (i, m) in self.models.iter().enumerate() {
            let at = format!("compression.models[{i}] (`{}`)", m.name);
            crate::config::check_name(&format!("compression.models[{i}].name"), &m.name)?;
            if self.models[..i].iter().any(|o| o.name == m.name) {
                return Err(format!("{at}: the name `{}` appears twice", m.name));
            }
            if m.criteria.is_empty() || has_repeat(&m.criteria) {
                return Err(format!("{at}: `criteria` must list at least one criterion, none twice"));
            }
            let cfg = self
                .model_config(path, m, self.seeds[0])
                .map_err(|e| format!("{at}: {e}"))?;
            check_model(&cfg).map_err(|e| format!("{at}: {e}"))?;
            for c in &m.criteria {
                check_criterion(&cfg, c).map_err(|e| format!("{at}.criteria: {e}"))?;
            }
        }
        Ok(())
    }
}

/// Refuses a model config the study cannot prune: regression, a deep ensemble (no single
/// network), growing regularisation (a network already pruned by its own masks), an unknown
/// layer kind.
fn check_model(cfg: &StudyConfig) -> std::result::Result<(), String> {
    cfg.layer_kind()?;
    if cfg.likelihood.is_regression() {
        return Err("a regression config (Gaussian likelihood); the study measures classification".into());
    }
    if matches!(cfg.posterior.kind.as_str(), "ensemble" | "svgd") {
        return Err(format!(
            "a [posterior] of kind `{}` has no single network to prune; give one member's config (no [posterior]) instead",
            cfg.posterior.kind
        ));
    }
    if cfg.greg.enabled() {
        return Err("a [greg] config trains its own masks; the study prunes dense trained networks".into());
    }
    Ok(())
}

/// Refuses an unknown criterion, a second-order one, and a posterior criterion where the
/// model's kind has no posterior or its `[posterior]` lacks the statistic.
fn check_criterion(cfg: &StudyConfig, name: &str) -> std::result::Result<(), String> {
    if name == DLLP {
        return crate::dllp::check_applicable(cfg);
    }
    let e = criterion::entry(name).map_err(|e| e.to_string())?;
    if e.needs_double_backprop {
        return Err(format!(
            "criterion `{name}` takes Hessian-vector products by double backpropagation, which this study does not \
             run; use its exact Gauss-Newton variant (ggn, hp-ggn, hts-ggn) instead"
        ));
    }
    if name == "adam-fisher" && !matches!(cfg.optim.kind.as_str(), "adam" | "adamw") {
        return Err(format!(
            "criterion `adam-fisher` reads the Adam second moments of the trained run, and this model trains with \
             `{}`; train it with optim.kind = \"adamw\" or use fisher",
            cfg.optim.kind
        ));
    }
    if !reads_posterior(name) {
        return Ok(());
    }
    let has_posterior = !cfg.posterior.is_none();
    if !cfg.is_bayesian() && !has_posterior {
        return Err(format!(
            "criterion `{name}` reads a posterior, and this model has none (layers `{}`, no [posterior]); it applies \
             to Bayesian layers (mean-field, sparse-vd, …) or a [posterior]; prune a deterministic model by \
             magnitude, fisher, …",
            cfg.model.layers
        ));
    }
    if has_posterior && (name == "log-alpha" || name == "inclusion") {
        return Err(format!(
            "criterion `{name}` does not apply to a model with [posterior] kind `{}`: it reports a mean and a σ per \
             weight, no {}; use snr or posterior-fisher",
            cfg.posterior.kind,
            if name == "log-alpha" {
                "log α"
            } else {
                "gate inclusion probability"
            }
        ));
    }
    Ok(())
}

/// The second check, on the model of `cfg` freshly built for `input` and `classes`: a model
/// without `[posterior]` must report posterior statistics for every posterior criterion, and a
/// data-free posterior criterion must score it (its own message says what is missing, e.g.
/// "parameter `fc1.weight` has no log α" for `log-alpha` on gates). `model` names the model in
/// the error.
pub fn check_applicable(
    cfg: &StudyConfig,
    model: &str,
    criteria: &[String],
    input: [usize; 3],
    classes: usize,
) -> Result<()> {
    if !cfg.posterior.is_none() {
        return Ok(());
    }
    let refuse = |c: &str, why: String| {
        ExpError::config(
            "compression",
            format!("model `{model}`: criterion `{c}` does not apply: {why}"),
        )
    };
    let (net, store) = build_model(cfg, input, classes, &candle_core::Device::Cpu)?;
    let has_stats = !store.posterior_stats()?.is_empty();
    for c in criteria.iter().filter(|c| reads_posterior(c)) {
        if !has_stats {
            return Err(refuse(
                c,
                format!("its layers (`{}`) report no posterior statistics", cfg.model.layers),
            ));
        }
        let e = criterion::entry(c).map_err(|e| ExpError::config("compression", e.to_string()))?;
        if !e.needs_data {
            let crit = criterion::build(c, &Default::default())?;
            let mut rng = SeedStream::Prune.rng(cfg.seed);
            let mut cx = ScoringContext::new(&net, &store, None, &mut rng);
            crit.score(&mut cx).map_err(|e| refuse(c, e.to_string()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A study file in a temporary directory beside a copy of the smoke training config.
    fn study(dir: &Path, models: &str, extra: &str) -> PathBuf {
        std::fs::write(
            dir.join("base.toml"),
            include_str!("../../configs/quickstart-smoke.toml"),
        )
        .unwrap();
        let p = dir.join("study.toml");
        std::fs::write(
            &p,
            format!("[compression]\nname = \"c\"\nseeds = [0, 1]\nsparsities = [0.5, 0.9]\n{extra}\n{models}"),
        )
        .unwrap();
        p
    }

    const MODELS: &str = r#"
[[compression.models]]
name = "det"
config = "base.toml"
criteria = ["magnitude", "fisher"]

[[compression.models]]
name = "mf"
config = "base.toml"
set = ['model.layers="mean-field"']
criteria = ["snr", "log-alpha", "posterior-fisher", "magnitude"]
"#;

    #[test]
    fn a_good_file_reads_with_its_defaults() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let f = CompressionFile::from_file(&study(dir.path(), MODELS, ""))?;
        let c = &f.compression;
        assert_eq!(
            (c.finetune_epochs, c.samples_per_class, c.keep_last, c.keep_conv),
            (1, 10, false, false)
        );
        assert_eq!((c.scope, c.ood.as_deref(), c.finetune_lr), (Scope::Global, None, None));
        let cfg = c.model_config(&dir.path().join("study.toml"), &c.models[1], 7)?;
        assert_eq!(
            (cfg.seed, cfg.name.as_str(), cfg.model.layers.as_str()),
            (7, "c-mf", "mean-field")
        );
        // a tenth of the config's learning rate (quickstart-smoke: 0.05)
        assert!((c.finetune_lr(&cfg) - 0.005).abs() < 1e-15);
        Ok(())
    }

    /// Every listed posterior criterion is a registry name (a rename there fails here).
    #[test]
    fn posterior_criteria_are_registry_names() {
        for c in POSTERIOR_CRITERIA {
            assert!(criterion::entry(c).is_ok(), "{c}");
        }
        assert!(reads_posterior("snr") && !reads_posterior("magnitude"));
    }

    #[test]
    fn bad_files_are_refused_naming_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let det = |crit: &str| {
            format!("[[compression.models]]\nname = \"det\"\nconfig = \"base.toml\"\ncriteria = [\"{crit}\"]\n")
        };
        let cases: Vec<(String, &str, &str)> = vec![
            (det("snr"), "", "criterion `snr` reads a posterior"),
            (det("log-alpha"), "", "layers `deterministic`"),
            (det("obd"), "", "unknown pruning criterion `obd`"),
            (det("hts"), "", "double backpropagation"),
            (
                det("adam-fisher"),
                "",
                "criterion `adam-fisher` reads the Adam second moments",
            ),
            (det("magnitude"), "sparsity = 0.5", "unknown field `sparsity`"),
            (det("magnitude"), "finetune_lr = -1.0", "finetune_lr"),
            (format!("{}{}", det("magnitude"), det("fisher")), "", "appears twice"),
            (
                det("magnitude").replace(
                    "criteria",
                    "set = ['posterior={kind=\"ensemble\",members=2}']\ncriteria",
                ),
                "",
                "has no single network",
            ),
            (
                det("log-alpha").replace("criteria", "set = ['posterior={kind=\"swag-diag\"}']\ncriteria"),
                "",
                "no log α",
            ),
            (
                det("magnitude").replace("base.toml", "missing.toml"),
                "",
                "missing.toml",
            ),
            // DLLP prunes one trained deterministic network; its table's keys are checked
            (
                det("dllp").replace("criteria", "set = ['model.layers=\"mean-field\"']\ncriteria"),
                "",
                "dllp remodels one trained deterministic network",
            ),
            (
                det("dllp"),
                "[compression.dllp]\nparticle = 3",
                "unknown field `particle`",
            ),
            (det("dllp"), "[compression.dllp]\nepochs = 0", "compression.dllp.epochs"),
        ];
        for (models, extra, want) in cases {
            let p = study(dir.path(), &models, extra);
            let e = CompressionFile::from_file(&p).unwrap_err().to_string();
            assert!(e.contains(want), "expected `{want}` in: {e}");
        }
        // the sparsity grid
        let p = dir.path().join("s.toml");
        let base = study(dir.path(), MODELS, "");
        let text = std::fs::read_to_string(base).unwrap();
        for (from, to, want) in [
            ("[0.5, 0.9]", "[0.5, 1.0]", "(0, 1)"),
            ("[0.5, 0.9]", "[0.0, 0.5]", "(0, 1)"),
            ("[0.5, 0.9]", "[0.5, 0.5]", "repeat"),
            ("seeds = [0, 1]", "seeds = []", "must not be empty"),
        ] {
            std::fs::write(&p, text.replace(from, to)).unwrap();
            let e = CompressionFile::from_file(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{from} -> {to}: {e}");
        }
    }

    /// The built-model check: `inclusion` on mean-field layers is refused by the criterion's
    /// own message; `snr` and `log-alpha` score; a `[posterior]` model is left to the file check.
    #[test]
    fn applicability_is_checked_on_the_built_model() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let f = CompressionFile::from_file(&study(dir.path(), MODELS, ""))?;
        let c = &f.compression;
        let cfg = c.model_config(&dir.path().join("study.toml"), &c.models[1], 0)?;
        let ok = ["snr".to_string(), "log-alpha".into(), "posterior-fisher".into()];
        check_applicable(&cfg, "mf", &ok, [1, 28, 28], 10)?;
        let e = check_applicable(&cfg, "mf", &["inclusion".into()], [1, 28, 28], 10)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model `mf`: criterion `inclusion` does not apply") && e.contains("inclusion probability"),
            "{e}"
        );
        Ok(())
    }
}
