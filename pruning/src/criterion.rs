//! The [`Criterion`] trait and what every criterion is given.
//!
//! A criterion returns a score per entry of every prunable tensor (logical name → score tensor
//! of the tensor's shape; higher = more important, kept first). It is given a
//! [`ScoringContext`]: the model (a `&dyn Module`), its [`ParamStore`], the scoring data (inputs
//! and integer labels, consumed in batches), the mode and estimator of the forward pass, and the
//! run's [`SeededRng`] (every random draw — random scores, Rademacher probes, noisy layers —
//! comes from it). Criteria that use a loss carry a [`Loss`]: the mean softmax cross-entropy of
//! `logits / T` over the batch, with a loss temperature `T` (GraSP and the Hutchinson scores use
//! `T = 200`: Wang et al. 2020; Gollini Navarrete et al. 2025).
//!
//! The criteria themselves live in [`crate::criteria`], and the registry [`CRITERIA`] lists them:
//! one [`CriterionEntry`] per criterion (name, description, what it needs, default rounds,
//! constructor) feeds [`by_name`]/[`build`], the list of names ([`names`]) and the questions
//! callers ask about a criterion ([`entry`]).
//!
//! Scores refer to the *current* values in the store: score after batch-norm warm-up
//! ([`crate::bn_warmup`]) and in evaluation mode, as Gollini Navarrete et al. (2025) do.

use crate::mask::Scores;
use crate::prunable::prunable;
use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use rand::seq::SliceRandom;
use secateur_bayes::nn::cross_entropy;
use secateur_bayes::{Ctx, Mode, Module, ParamStore, PosteriorStats, Sampling, SeededRng};
use secateur_inference::batches::Batches;
use secateur_inference::posterior::Posterior;
use std::collections::BTreeMap;

/// Scores every prunable parameter of a model.
pub trait Criterion {
    /// The criterion's config name (`snip`, `hts`, …).
    fn name(&self) -> &str;
    /// Whether scoring reads the scoring data (fails without it). Default: the registry entry of
    /// [`name`](Self::name) ([`CriterionEntry::needs_data`]), `false` for a criterion outside the
    /// registry (which overrides it where it needs data).
    fn needs_data(&self) -> bool {
        entry(self.name()).is_ok_and(|e| e.needs_data)
    }
    /// Whether scoring takes Hessian–vector products by double backpropagation (the process
    /// must then start with `CANDLE_GRAD_DO_NOT_DETACH=1`, see
    /// [`secateur_kernels::double_backprop`]). Default: the registry entry of
    /// [`name`](Self::name) ([`CriterionEntry::needs_double_backprop`]), `false` outside it.
    fn needs_double_backprop(&self) -> bool {
        entry(self.name()).is_ok_and(|e| e.needs_double_backprop)
    }
    /// Score-and-prune rounds by default (1: one-shot). Default: the registry entry of
    /// [`name`](Self::name) ([`CriterionEntry::default_rounds`]), 1 outside it.
    fn default_rounds(&self) -> usize {
        entry(self.name()).map_or(1, |e| e.default_rounds)
    }
    /// A score per entry of every prunable tensor it can score, by logical name (higher = kept
    /// first). The store's values are unchanged on return.
    fn score(&self, cx: &mut ScoringContext) -> Result<Scores>;
}

/// The softmax cross-entropy of `logits / T`, averaged over the batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loss {
    /// Loss temperature `T > 0` (1: the ordinary cross-entropy).
    pub temperature: f64,
}

impl Default for Loss {
    /// `T = 1`.
    fn default() -> Self {
        Self { temperature: 1.0 }
    }
}

impl Loss {
    /// The loss at temperature `t`.
    pub fn with_temperature(t: f64) -> Self {
        Self { temperature: t }
    }

    /// Checks `T` (finite, > 0).
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            candle_core::bail!(
                "loss: field `temperature` must be finite and > 0, got {}",
                self.temperature
            );
        }
        Ok(())
    }

    /// `CE(logits / T, labels)`, the batch mean.
    pub fn on_logits(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        cross_entropy(&(logits / self.temperature)?, labels)
    }
}

/// Inputs and integer labels used for scoring, consumed in batches of `batch_size`.
#[derive(Debug, Clone)]
pub struct ScoringData {
    /// Inputs `[N, …]`.
    pub inputs: Tensor,
    /// Labels `[N]` (any integer dtype).
    pub labels: Tensor,
    /// Batch size for gradient and Hessian–vector computations (≥ 1).
    pub batch_size: usize,
}

impl ScoringData {
    /// Checks that inputs and labels have the same number of examples (≥ 1) and `batch_size ≥ 1`.
    pub fn new(inputs: Tensor, labels: Tensor, batch_size: usize) -> Result<Self> {
        let n = inputs.dims().first().copied().unwrap_or(0);
        if labels.dims() != [n] {
            candle_core::bail!(
                "scoring data: labels have shape {:?}, expected [{n}] to match the inputs {:?}",
                labels.dims(),
                inputs.dims()
            );
        }
        if n == 0 {
            candle_core::bail!("scoring data: no examples");
        }
        if batch_size == 0 {
            candle_core::bail!("scoring data: field `batch_size` must be at least 1");
        }
        Ok(Self {
            inputs,
            labels,
            batch_size,
        })
    }

    /// `per_class` examples of each class `0..classes`, drawn without replacement with `rng`
    /// (10 per class in Tanaka et al. 2020 and Gollini Navarrete et al. 2025), ordered by class
    /// then by draw. Refuses a class with fewer examples, naming it.
    pub fn per_class(
        inputs: &Tensor,
        labels: &Tensor,
        per_class: usize,
        classes: usize,
        batch_size: usize,
        rng: &mut SeededRng,
    ) -> Result<Self> {
        let idx = per_class_indices(labels, per_class, classes, rng)?;
        let idx_t = Tensor::from_vec(
            idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            idx.len(),
            inputs.device(),
        )?;
        Self::new(
            inputs.index_select(&idx_t, 0)?,
            labels.index_select(&idx_t.to_device(labels.device())?, 0)?,
            batch_size,
        )
    }

    /// The first `max_examples` examples of one pass of a batch source (all of the pass with
    /// `None`), concatenated, re-batched by `batch_size`. The pass is prepared with
    /// `batches.start_epoch(0, rng)`.
    pub fn from_batches(
        batches: &mut dyn Batches,
        max_examples: Option<usize>,
        batch_size: usize,
        rng: &mut SeededRng,
    ) -> Result<Self> {
        batches.start_epoch(0, rng);
        let want = max_examples.unwrap_or(usize::MAX);
        let (mut xs, mut ys, mut n) = (Vec::new(), Vec::new(), 0usize);
        for i in 0..batches.num_batches() {
            if n >= want {
                break;
            }
            let (x, y) = batches.batch(i, rng)?;
            let take = x.dims().first().copied().unwrap_or(0).min(want - n);
            xs.push(x.narrow(0, 0, take)?);
            ys.push(y.narrow(0, 0, take)?);
            n += take;
        }
        if xs.is_empty() {
            candle_core::bail!("scoring data: the batch source has no batch");
        }
        Self::new(Tensor::cat(&xs, 0)?, Tensor::cat(&ys, 0)?, batch_size)
    }

    /// Number of examples `N`.
    pub fn len(&self) -> usize {
        self.inputs.dims()[0]
    }

    /// Whether there is no example (never true for a checked value).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of batches, `⌈N / batch_size⌉`.
    pub fn num_batches(&self) -> usize {
        self.len().div_ceil(self.batch_size)
    }

    /// Batch `i` (the last may be smaller).
    pub fn batch(&self, i: usize) -> Result<(Tensor, Tensor)> {
        let start = i * self.batch_size;
        let len = self.batch_size.min(self.len().saturating_sub(start));
        if len == 0 {
            candle_core::bail!(
                "scoring data: batch {i} is out of range ({} batches)",
                self.num_batches()
            );
        }
        Ok((self.inputs.narrow(0, start, len)?, self.labels.narrow(0, start, len)?))
    }

    /// Example `i` as a batch of one.
    pub fn example(&self, i: usize) -> Result<(Tensor, Tensor)> {
        Ok((self.inputs.narrow(0, i, 1)?, self.labels.narrow(0, i, 1)?))
    }
}

/// Indices of `per_class` examples of each class `0..classes` (see [`ScoringData::per_class`]).
pub fn per_class_indices(labels: &Tensor, per_class: usize, classes: usize, rng: &mut SeededRng) -> Result<Vec<usize>> {
    let y = labels.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &c) in y.iter().enumerate() {
        if c < 0 || c as usize >= classes {
            candle_core::bail!("scoring data: label {c} of example {i} is outside 0..{classes}");
        }
        by_class[c as usize].push(i);
    }
    let mut out = Vec::with_capacity(per_class * classes);
    for (c, mut idx) in by_class.into_iter().enumerate() {
        if idx.len() < per_class {
            candle_core::bail!(
                "scoring data: class {c} has {} examples, {per_class} per class were asked for",
                idx.len()
            );
        }
        idx.shuffle(rng);
        out.extend_from_slice(&idx[..per_class]);
    }
    Ok(out)
}

/// Everything a criterion is given (see the [module documentation](self)).
pub struct ScoringContext<'a> {
    /// The model.
    pub model: &'a dyn Module,
    /// Its parameters and buffers.
    pub store: &'a ParamStore,
    /// Scoring data; `None` for data-free criteria (magnitude, random, SynFlow with an input
    /// shape, posterior criteria).
    pub data: Option<&'a ScoringData>,
    /// Mode of the scoring forward passes (default evaluation: batch norm uses its running
    /// statistics, warmed up by [`crate::bn_warmup`]).
    pub mode: Mode,
    /// Estimator of stochastic layers (default the posterior mean).
    pub sampling: Sampling,
    /// The run's generator.
    pub rng: &'a mut SeededRng,
    /// A posterior over the model's parameters that is not a layer kind (SWAG, Laplace, a deep
    /// ensemble; [`secateur_inference::posterior`]). When set, the posterior criteria read its
    /// statistics instead of the probabilistic layers' ([`ScoringContext::posterior_stats`]).
    pub posterior: Option<&'a dyn Posterior>,
    /// The trained run's optimiser state by key (`fc1.weight_mu.exp_avg_sq`: a checkpoint's
    /// `optimizer.safetensors`), for the criteria that read it ([`crate::criteria::AdamFisher`]).
    pub optimizer_moments: Option<&'a BTreeMap<String, Tensor>>,
}

impl<'a> ScoringContext<'a> {
    /// The same context reading posterior statistics from `posterior` (see
    /// [`ScoringContext::posterior`]).
    pub fn with_posterior(mut self, posterior: &'a dyn Posterior) -> Self {
        self.posterior = Some(posterior);
        self
    }

    /// The same context reading the trained run's optimiser state `moments` (see
    /// [`ScoringContext::optimizer_moments`]).
    pub fn with_optimizer_moments(mut self, moments: &'a BTreeMap<String, Tensor>) -> Self {
        self.optimizer_moments = Some(moments);
        self
    }

    /// The posterior statistics the posterior criteria read: those of
    /// [`ScoringContext::posterior`] when set, otherwise those of the model's probabilistic
    /// layers ([`ParamStore::posterior_stats`]).
    pub fn posterior_stats(&self) -> Result<Vec<PosteriorStats>> {
        match self.posterior {
            Some(p) => p.stats(),
            None => self.store.posterior_stats(),
        }
    }

    /// A context in evaluation mode with the posterior-mean estimator.
    pub fn new(
        model: &'a dyn Module,
        store: &'a ParamStore,
        data: Option<&'a ScoringData>,
        rng: &'a mut SeededRng,
    ) -> Self {
        Self {
            model,
            store,
            data,
            mode: Mode::Eval,
            sampling: Sampling::Mean,
            rng,
            posterior: None,
            optimizer_moments: None,
        }
    }

    /// The scoring data, or an error naming `criterion` that needs it.
    pub fn data(&self, criterion: &str) -> Result<&'a ScoringData> {
        self.data
            .ok_or_else(|| candle_core::Error::Msg(format!("criterion `{criterion}` needs scoring data")))
    }

    /// The model's output on `x` in the context's mode and estimator.
    pub fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let mut ctx = Ctx {
            mode: self.mode,
            sampling: self.sampling,
            rng: self.rng,
            width: None,
            bn_momentum: None,
            taps: None,
            samples: 1,
            shared: false,
        };
        self.model.forward(x, &mut ctx)
    }

    /// The loss on one batch.
    pub fn loss(&mut self, loss: &Loss, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let logits = self.forward(x)?;
        loss.on_logits(&logits, y)
    }

    /// The prunable tensors by logical name (see [`crate::prunable`]).
    pub fn targets(&self) -> BTreeMap<String, Var> {
        prunable(self.store).into_iter().map(|(k, (_, v))| (k, v)).collect()
    }
}

/// The gradient of each target in `grads` (zeros where a target has none), detached.
pub(crate) fn grads_of(targets: &BTreeMap<String, Var>, grads: &GradStore) -> Result<Scores> {
    targets
        .iter()
        .map(|(k, v)| {
            let g = match grads.get(v.as_tensor()) {
                Some(g) => g.detach(),
                None => v.as_tensor().zeros_like()?,
            };
            Ok((k.clone(), g))
        })
        .collect()
}

/// `a + c · b` for every name of `a` (names must match).
pub(crate) fn axpy(a: &mut Scores, c: f64, b: &Scores) -> Result<()> {
    for (k, v) in a.iter_mut() {
        let bv = b
            .get(k)
            .ok_or_else(|| candle_core::Error::Msg(format!("internal: no `{k}` to add")))?;
        *v = (&*v + (bv * c)?)?;
    }
    Ok(())
}

/// Zeros shaped like the targets.
pub(crate) fn zeros_like(targets: &BTreeMap<String, Var>) -> Result<Scores> {
    targets
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().zeros_like()?)))
        .collect()
}

/// The mean gradient `ḡ = ∇_θ L` of the loss over the scoring data (batch losses weighted by
/// their share of the examples, `Σ_b (n_b / N) ∇L_b`), for every prunable tensor.
pub fn mean_gradient(cx: &mut ScoringContext, loss: &Loss) -> Result<Scores> {
    loss.validate()?;
    let data = cx.data("gradient")?;
    let targets = cx.targets();
    let mut acc = zeros_like(&targets)?;
    let n = data.len() as f64;
    for b in 0..data.num_batches() {
        let (x, y) = data.batch(b)?;
        let w = x.dims()[0] as f64 / n;
        let g = cx.loss(loss, &x, &y)?.backward()?;
        axpy(&mut acc, w, &grads_of(&targets, &g)?)?;
    }
    Ok(acc)
}

/// Options of the criteria that have them; the others ignore them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CriterionOptions {
    /// Hutchinson's batch size and probes per batch (`hutchinson`, `hp`, `hts`).
    pub hutchinson: crate::criteria::HutchinsonOptions,
}

/// One criterion of the registry [`CRITERIA`]: its config name, what it needs, and how to make
/// it. Callers ask the entry (or [`Criterion::needs_double_backprop`], …) what a criterion
/// needs; they never branch on its name.
#[derive(Clone, Copy)]
pub struct CriterionEntry {
    /// The config name (`snip`, `hts`, …); the built criterion's [`Criterion::name`].
    pub name: &'static str,
    /// One line: the score and its reference.
    pub description: &'static str,
    /// Whether scoring reads the scoring data ([`ScoringContext::data`]; it fails without).
    /// Data-free criteria (random, magnitude, the posterior criteria) score without it; the
    /// registry's SynFlow reads only its input shape from it (`SynFlow::default_for` does not).
    pub needs_data: bool,
    /// Whether scoring takes Hessian–vector products by double backpropagation (the process must
    /// start with `CANDLE_GRAD_DO_NOT_DETACH=1`, see [`secateur_kernels::double_backprop`]).
    pub needs_double_backprop: bool,
    /// Score-and-prune rounds the criterion is run with by default (1: one-shot; SynFlow: 100,
    /// Tanaka et al. 2020), the `T` of [`crate::allocate::IterativeSchedule`].
    pub default_rounds: usize,
    /// Makes the criterion with `options` (those it does not use are ignored).
    pub build: fn(&CriterionOptions) -> Box<dyn Criterion>,
}

impl CriterionEntry {
    /// A data-free, first-order, one-shot criterion; add its needs with
    /// [`with_data`](Self::with_data), [`with_double_backprop`](Self::with_double_backprop) and
    /// [`with_rounds`](Self::with_rounds).
    pub const fn new(
        name: &'static str,
        description: &'static str,
        build: fn(&CriterionOptions) -> Box<dyn Criterion>,
    ) -> Self {
        Self {
            name,
            description,
            needs_data: false,
            needs_double_backprop: false,
            default_rounds: 1,
            build,
        }
    }

    /// Needs scoring data.
    pub const fn with_data(self) -> Self {
        Self {
            needs_data: true,
            ..self
        }
    }

    /// Needs double backpropagation.
    pub const fn with_double_backprop(self) -> Self {
        Self {
            needs_double_backprop: true,
            ..self
        }
    }

    /// Runs `rounds` score-and-prune rounds by default.
    pub const fn with_rounds(self, rounds: usize) -> Self {
        Self {
            default_rounds: rounds,
            ..self
        }
    }
}

impl std::fmt::Debug for CriterionEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriterionEntry")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("needs_data", &self.needs_data)
            .field("needs_double_backprop", &self.needs_double_backprop)
            .field("default_rounds", &self.default_rounds)
            .finish_non_exhaustive()
    }
}

pub use crate::criteria::CRITERIA;

/// The registry entry of the criterion named `name`, or an error listing the known names.
///
/// ```
/// use secateur_pruning::criterion::entry;
/// assert!(entry("hts").unwrap().needs_double_backprop);
/// assert_eq!(entry("synflow").unwrap().default_rounds, 100);
/// let e = entry("obd").unwrap_err().to_string();
/// assert!(e.contains("`obd`") && e.contains("snip"), "{e}");
/// ```
pub fn entry(name: &str) -> Result<&'static CriterionEntry> {
    CRITERIA.iter().find(|e| e.name == name).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "unknown pruning criterion `{name}`; known: {}",
            names().join(", ")
        ))
    })
}

/// The names [`by_name`] accepts, in registry order.
pub fn names() -> Vec<&'static str> {
    CRITERIA.iter().map(|e| e.name).collect()
}

/// The criterion named `name` (one of [`CRITERIA`]) with its paper defaults.
///
/// ```
/// let c = secateur_pruning::criterion::by_name("hts").unwrap();
/// assert_eq!(c.name(), "hts");
/// assert!(secateur_pruning::criterion::by_name("obd").is_err());
/// ```
pub fn by_name(name: &str) -> Result<Box<dyn Criterion>> {
    build(name, &CriterionOptions::default())
}

/// The criterion named `name` (one of [`CRITERIA`]) with `options`.
///
/// ```
/// use secateur_pruning::criterion::{build, CriterionOptions};
/// use secateur_pruning::criteria::HutchinsonOptions;
/// let o = CriterionOptions { hutchinson: HutchinsonOptions { batch_size: 100, probes: 10 } };
/// assert!(build("hp", &o).unwrap().needs_double_backprop());
/// assert!(!build("hp-ggn", &o).unwrap().needs_double_backprop());
/// ```
pub fn build(name: &str, options: &CriterionOptions) -> Result<Box<dyn Criterion>> {
    Ok((entry(name)?.build)(options))
}
