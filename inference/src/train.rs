//! The training loop.
//!
//! [`Trainer::fit`] runs epochs of mini-batch gradient descent. Each step `t` takes a batch
//! `(x, y)` from a [`Batches`], asks the trainer's [`TrainingObjective`] for the batch's loss
//! (built from [`TrainSettings::objective`]: the mean NLL of one pass, or the negative ELBO
//! `(1/S) Σₛ NLL_s + β(t) · T · D / N` of [`crate::elbo`]; or any objective set by
//! [`Trainer::with_objective`]), back-propagates it, lets the [`StepHook`] edit the gradients,
//! takes the optimiser step at the scheduled learning rate, lets the hook edit the parameters,
//! and reports a [`StepInfo`] to the [`Observer`]s. The likelihood (categorical unless
//! [`Trainer::with_likelihood`] sets a Gaussian one; see [`crate::likelihood`]) is an input of
//! the objective and decides the running training metric: accuracy of the arg-max of the summed
//! outputs (categorical) or the RMSE of the mean predicted μ (Gaussian).
//!
//! After every epoch the trainer evaluates on the evaluation batches, when given, through an
//! [`Evaluation`] (by default [`PosteriorMeanEvaluation`] under the trainer's likelihood), and
//! reports the [`EpochRecord`] and a [`Checkpoint`] to the observers (progress bars, history
//! files and checkpoint files live in `secateur-experiments`, which owns files and the terminal).
//!
//! All randomness (shuffling, augmentation, layer noise, Monte Carlo divergences) comes from the
//! trainer's [`SeededRng`] in the order: the epoch's shuffle, then per step the batch's
//! augmentation, the objective's draws (its forward passes, then its divergence); evaluation
//! draws from a sub-stream. The generator's state is part of the [`TrainState`] saved at each
//! epoch end, so that a resumed run continues bit-identically. A non-finite loss stops the run
//! with an error before anything of that epoch is reported, so the last checkpoint an observer
//! wrote stays the last good one.

use crate::elbo::Objective;
use crate::evaluate::{Evaluation, PosteriorMeanEvaluation};
use crate::hooks::StepHook;
use crate::likelihood::Likelihood;
use crate::metrics::{ClassificationMetrics, RegressionMetrics};
use crate::objective::{scalar, ObjectiveContext, StepPosition, TrainingObjective};
use crate::optim::Optimizer;
use crate::schedule::Schedule;
use candle_core::{DType, Result, Tensor, Var, D};
use secateur_bayes::rng::RngState;
use secateur_bayes::{Module, ParamStore, Sampling, SeededRng, UnitSummary};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

use crate::batches::Batches;

/// One epoch's summary: one row of `history.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    /// Mean training loss over the epoch's batches (for the ELBO: `NLL + β T D / N`).
    pub train_loss: f64,
    /// Mean over the epoch's batches of the expected negative log-likelihood per example
    /// (`(1/S) Σₛ NLL_s`; equal to `train_loss` for the cross-entropy objective).
    #[serde(default)]
    pub train_nll: f64,
    /// Mean over the epoch's batches of the summed divergence `D` of all probabilistic layers
    /// (not divided by `N`, not weighted by β or T); 0 without probabilistic layers.
    #[serde(default)]
    pub train_divergence: f64,
    /// β at the epoch's last step (1 for the cross-entropy objective).
    #[serde(default = "one")]
    pub beta: f64,
    /// Training accuracy over the epoch (on the augmented batches, in train mode); NaN for a
    /// Gaussian likelihood, where accuracy has no meaning (JSON `null`, read back as NaN).
    #[serde(deserialize_with = "nan_if_null")]
    pub train_accuracy: f64,
    /// Gaussian likelihood only: the RMSE over the epoch of the training batches' predicted means
    /// (the average of the `S` sampled means), in the units set by [`Trainer::with_target_units`].
    #[serde(default)]
    pub train_rmse: Option<f64>,
    /// Classification metrics on the evaluation set, if one was given (categorical likelihood),
    /// of the posterior-mean network (`Sampling::Mean`, one pass), unless the evaluation was
    /// Monte Carlo only ([`crate::evaluate::McEvaluation`]).
    pub eval: Option<ClassificationMetrics>,
    /// Classification metrics of the Monte Carlo predictive on the evaluation set, when the
    /// trainer evaluates with [`crate::evaluate::McEvaluation`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_mc: Option<ClassificationMetrics>,
    /// Regression metrics on the evaluation set, if one was given (Gaussian likelihood), of the
    /// posterior-mean network (`Sampling::Mean`, one pass, so no epistemic part), in the units set
    /// by [`Trainer::with_target_units`].
    #[serde(default)]
    pub eval_regression: Option<RegressionMetrics>,
    /// Wall-clock seconds of the epoch's training (not evaluation).
    pub seconds: f64,
    /// Wall-clock seconds of the epoch's evaluation on the test set (0 without one). The epoch's
    /// whole time is `seconds + eval_seconds`; read as 0 from checkpoints written before it existed.
    #[serde(default)]
    pub eval_seconds: f64,
    /// At the epoch's end, per layer that selects units (spike-and-slab nodes, gates): units kept
    /// by the test-time rule and their mean inclusion probability; then what the step hook
    /// selects ([`StepHook::units`]: SCL's connections on); empty for other models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<UnitSummary>,
}

fn one() -> f64 {
    1.0
}

/// Reads a number, or `null` (how JSON writes NaN) as NaN.
fn nan_if_null<'de, De: serde::Deserializer<'de>>(d: De) -> std::result::Result<f64, De::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// What a checkpoint needs besides weights and optimiser state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epochs_done: usize,
    /// The trainer's generator after the last completed epoch.
    pub rng: RngState,
    /// The history so far.
    pub history: Vec<EpochRecord>,
}

/// Progress of one training step, for progress bars.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Step within the epoch, from 1.
    pub step: usize,
    /// Steps in the epoch.
    pub steps: usize,
    /// This batch's loss.
    pub loss: f64,
    /// Running mean accuracy of the epoch so far (NaN for a Gaussian likelihood).
    pub accuracy: f64,
    /// Running RMSE of the epoch so far (Gaussian likelihood only).
    pub rmse: Option<f64>,
    /// Examples per second so far in this epoch.
    pub examples_per_sec: f64,
}

/// Watches a training run (argmin-style observers).
pub trait Observer {
    /// Called once before the first epoch that will run.
    fn on_start(&mut self, _epochs: usize, _steps_per_epoch: usize, _start_epoch: usize) -> Result<()> {
        Ok(())
    }
    /// Called after every optimiser step.
    fn on_step(&mut self, _info: &StepInfo) -> Result<()> {
        Ok(())
    }
    /// Called after every completed (and evaluated) epoch, with everything a checkpoint needs.
    fn on_epoch(&mut self, _record: &EpochRecord, _ckpt: &Checkpoint) -> Result<()> {
        Ok(())
    }
    /// Called once after the last epoch.
    fn on_end(&mut self, _state: &TrainState) -> Result<()> {
        Ok(())
    }
}

/// Everything needed to resume: weights and buffers, optimiser state, trainer state.
pub struct Checkpoint {
    /// Parameters and buffers by name.
    pub weights: BTreeMap<String, Tensor>,
    /// Optimiser state by name.
    pub optimizer: BTreeMap<String, Tensor>,
    /// Epoch count, generator state and history.
    pub state: TrainState,
}

/// The training loop's settings. Build them with [`TrainSettings::new`] and the `with_*`
/// setters, or as a struct literal.
///
/// ```
/// use secateur_inference::elbo::{ElboConfig, Objective};
/// use secateur_inference::schedule::Schedule;
/// use secateur_inference::train::TrainSettings;
/// use secateur_bayes::Sampling;
/// let s = TrainSettings::new(10, 0.1)
///     .with_schedule(Schedule::Cosine { total: 10, min_lr: 0.0, warmup: 0 })
///     .with_objective(Objective::Elbo(ElboConfig::new(60_000)));
/// assert_eq!((s.epochs, s.lr, s.sampling), (10, 0.1, Sampling::Local));
/// assert!(s.validate().is_ok());
/// assert!(TrainSettings::new(0, 0.1).validate().is_err());
/// ```
#[derive(Debug, Clone)]
pub struct TrainSettings {
    /// Total epochs (≥ 1).
    pub epochs: usize,
    /// Base learning rate (finite, > 0; the schedule scales it).
    pub lr: f64,
    /// Learning-rate schedule. Default: constant, no warm-up.
    pub schedule: Schedule,
    /// How stochastic layers sample during training. Default: [`Sampling::Local`] (the local
    /// reparameterisation of Kingma, Salimans & Welling 2015); deterministic layers ignore it.
    pub sampling: Sampling,
    /// What is minimised. Default: [`Objective::CrossEntropy`], the mean NLL of one pass.
    pub objective: Objective,
}

impl TrainSettings {
    /// `epochs` epochs at base learning rate `lr`, with the defaults of the fields' docs: a
    /// constant schedule, [`Sampling::Local`], the one-pass NLL. Checked by
    /// [`TrainSettings::validate`] (which [`Trainer::new`] calls).
    pub fn new(epochs: usize, lr: f64) -> Self {
        Self {
            epochs,
            lr,
            schedule: Schedule::default(),
            sampling: Sampling::Local,
            objective: Objective::default(),
        }
    }

    /// With this learning-rate schedule.
    pub fn with_schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// With this training-time sampling of stochastic layers.
    pub fn with_sampling(mut self, sampling: Sampling) -> Self {
        self.sampling = sampling;
        self
    }

    /// With this objective.
    pub fn with_objective(mut self, objective: Objective) -> Self {
        self.objective = objective;
        self
    }

    /// Refuses 0 epochs, a non-positive or non-finite learning rate and an invalid objective; the
    /// message names the field.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            candle_core::bail!("epochs must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            candle_core::bail!("lr must be a positive number, got {}", self.lr);
        }
        self.objective.validate()
    }
}

/// Trains a model: owns the optimiser and the run's generator.
pub struct Trainer<'a> {
    model: &'a dyn Module,
    params: BTreeMap<String, Var>,
    store: ParamStore,
    optimizer: Box<dyn Optimizer + 'a>,
    settings: TrainSettings,
    rng: SeededRng,
    history: Vec<EpochRecord>,
    start_epoch: usize,
    objective: Box<dyn TrainingObjective + 'a>,
    evaluation: Option<Box<dyn Evaluation + 'a>>,
    likelihood: Likelihood,
    target_units: (f64, f64),
    hook: Option<Box<dyn StepHook + 'a>>,
}

impl<'a> Trainer<'a> {
    /// A trainer for `model` whose parameters live in `store`; `rng` is the run's generator
    /// (after initialisation). Fails when the settings do not validate.
    pub fn new(
        model: &'a dyn Module,
        store: ParamStore,
        optimizer: Box<dyn Optimizer + 'a>,
        settings: TrainSettings,
        rng: SeededRng,
    ) -> Result<Self> {
        settings.validate()?;
        Ok(Self {
            model,
            params: store.params(),
            store,
            optimizer,
            objective: Box::new(settings.objective.clone()),
            settings,
            rng,
            history: Vec::new(),
            start_epoch: 0,
            evaluation: None,
            likelihood: Likelihood::Categorical,
            target_units: (0.0, 1.0),
            hook: None,
        })
    }

    /// Trains under `likelihood` instead of the categorical default. A Gaussian likelihood with
    /// learned noise must have registered its parameter in the store given to [`Trainer::new`]
    /// (build it before the trainer), or that parameter is not trained.
    pub fn with_likelihood(mut self, likelihood: Likelihood) -> Self {
        self.likelihood = likelihood;
        self
    }

    /// The per-epoch regression metrics are reported for targets mapped by `y ↦ shift + scale · y`
    /// (e.g. the training set's target mean and standard deviation, when the batches yield
    /// standardised targets: the metrics are then in the original units). Default `(0, 1)`.
    pub fn with_target_units(mut self, shift: f64, scale: f64) -> Result<Self> {
        if !(shift.is_finite() && scale.is_finite() && scale > 0.0) {
            candle_core::bail!("target units: `scale` must be finite and > 0 and `shift` finite, got {scale}, {shift}");
        }
        self.target_units = (shift, scale);
        Ok(self)
    }

    /// Minimises `objective` instead of the one [`TrainSettings::objective`] names (which is then
    /// not used).
    pub fn with_objective(mut self, objective: Box<dyn TrainingObjective + 'a>) -> Self {
        self.objective = objective;
        self
    }

    /// Evaluates with `evaluation` after every epoch instead of the default
    /// [`PosteriorMeanEvaluation`] under the trainer's likelihood and target units.
    pub fn with_evaluation(mut self, evaluation: Box<dyn Evaluation + 'a>) -> Self {
        self.evaluation = Some(evaluation);
        self
    }

    /// Runs `hook` around every optimiser step (see [`crate::hooks`]): e.g. a pruning mask set,
    /// which zeroes the gradients of pruned weights and keeps them at zero, or growing
    /// regularisation. The step count it receives runs over the whole run from 0.
    pub fn set_hook(&mut self, hook: Box<dyn StepHook + 'a>) {
        self.hook = Some(hook);
    }

    /// Restores a checkpoint: weights, optimiser state, generator and history. Training then
    /// continues at epoch `state.epochs_done + 1`.
    pub fn resume(
        &mut self,
        weights: &std::collections::HashMap<String, Tensor>,
        optimizer: &std::collections::HashMap<String, Tensor>,
        state: TrainState,
    ) -> Result<()> {
        if state.epochs_done > self.settings.epochs {
            candle_core::bail!(
                "checkpoint has {} epochs done but the run asks for {}",
                state.epochs_done,
                self.settings.epochs
            );
        }
        self.store.load(weights)?;
        self.optimizer.load_state(optimizer)?;
        self.rng = SeededRng::from_state(state.rng);
        self.start_epoch = state.epochs_done;
        self.history = state.history;
        Ok(())
    }

    /// The history so far.
    pub fn history(&self) -> &[EpochRecord] {
        &self.history
    }

    /// Trains up to `settings.epochs`, evaluating on `eval` after each epoch.
    pub fn fit(
        &mut self,
        train: &mut dyn Batches,
        mut eval: Option<&mut dyn Batches>,
        observers: &mut [&mut dyn Observer],
    ) -> Result<TrainState> {
        let steps = train.num_batches();
        if steps == 0 {
            candle_core::bail!("the training set yields no batches");
        }
        for o in observers.iter_mut() {
            o.on_start(self.settings.epochs, steps, self.start_epoch)?;
        }
        for epoch in self.start_epoch..self.settings.epochs {
            let t0 = Instant::now();
            train.start_epoch(epoch, &mut self.rng);
            if let Some(h) = self.hook.as_mut() {
                h.on_epoch_start(&self.store, epoch)?;
            }
            let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
            let (mut sq_err, mut cells) = (0f64, 0usize);
            let (mut nll_sum, mut div_sum, mut beta) = (0f64, 0f64, 1f64);
            let mut lr = self.settings.lr;
            // The pool's other workers poll for work through the steps and the evaluation
            // instead of sleeping between kernels (runtime::warm).
            let (seconds, metrics, eval_seconds) = secateur_kernels::runtime::warm(|| -> Result<_> {
                for step in 0..steps {
                    lr = self.settings.schedule.lr_at(self.settings.lr, epoch, step, steps);
                    let (x, y) = train.batch(step, &mut self.rng)?;
                    let cx = ObjectiveContext {
                        model: self.model,
                        store: &self.store,
                        likelihood: &self.likelihood,
                        sampling: self.settings.sampling,
                        at: StepPosition { epoch, step, steps },
                    };
                    let out = self.objective.batch_loss(&cx, &x, &y, &mut self.rng)?;
                    let lv = scalar(&out.loss)?;
                    if !lv.is_finite() {
                        let parts = match out.nll {
                            Some(n) => format!(" (NLL {n}, divergence {})", out.divergence),
                            None => String::new(),
                        };
                        candle_core::bail!(
                            "training diverged: loss is {lv}{parts} at epoch {}, step {}",
                            epoch + 1,
                            step + 1
                        );
                    }
                    beta = out.beta;
                    nll_sum += out.nll.unwrap_or(lv);
                    div_sum += out.divergence;
                    let mut grads = out.loss.backward()?;
                    let global_step = epoch * steps + step;
                    if let Some(h) = self.hook.as_mut() {
                        h.before_step(&self.store, &mut grads, global_step)?;
                    }
                    self.optimizer.step(&self.params, &grads, lr)?;
                    if let Some(h) = self.hook.as_mut() {
                        h.after_step(&self.store, global_step)?;
                    }
                    match &self.likelihood {
                        Likelihood::Categorical => {
                            let pred = out.outputs.argmax(D::Minus1)?;
                            correct += pred
                                .eq(&y.to_dtype(DType::U32)?)?
                                .to_dtype(DType::F32)?
                                .sum_all()?
                                .to_scalar::<f32>()? as usize;
                        }
                        Likelihood::Gaussian(g) => {
                            let (mu, _) = g.mean_log_std(&out.mean_outputs()?)?;
                            let t = y.to_dtype(DType::F64)?.reshape(mu.dims())?;
                            sq_err += (mu.to_dtype(DType::F64)? - t)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
                            cells += mu.elem_count();
                        }
                    }
                    seen += y.dim(0)?;
                    loss_sum += lv;
                    let info = StepInfo {
                        epoch: epoch + 1,
                        step: step + 1,
                        steps,
                        loss: lv,
                        accuracy: self.accuracy(correct, seen),
                        rmse: self.rmse(sq_err, cells),
                        examples_per_sec: seen as f64 / t0.elapsed().as_secs_f64().max(1e-9),
                    };
                    for o in observers.iter_mut() {
                        o.on_step(&info)?;
                    }
                }
                let seconds = t0.elapsed().as_secs_f64();
                let t_eval = Instant::now();
                let metrics = match eval.as_deref_mut() {
                    Some(data) => {
                        // Evaluation draws from its own sub-stream so it never shifts the training stream.
                        let mut erng = SeededRng::substream(self.rng.seed(), 1_000_000 + epoch as u64);
                        match self.evaluation.as_mut() {
                            Some(e) => e.evaluate(self.model, data, &mut erng)?,
                            None => PosteriorMeanEvaluation::new(self.likelihood.clone())
                                .with_target_units(self.target_units.0, self.target_units.1)?
                                .evaluate(self.model, data, &mut erng)?,
                        }
                    }
                    None => Default::default(),
                };
                Ok((seconds, metrics, t_eval.elapsed().as_secs_f64()))
            })?;
            let record = EpochRecord {
                epoch: epoch + 1,
                lr,
                train_loss: loss_sum / steps as f64,
                train_nll: nll_sum / steps as f64,
                train_divergence: div_sum / steps as f64,
                beta,
                train_accuracy: self.accuracy(correct, seen),
                train_rmse: self.rmse(sq_err, cells),
                eval: metrics.classification,
                eval_mc: metrics.classification_mc,
                eval_regression: metrics.regression,
                seconds,
                eval_seconds,
                units: {
                    let mut u = self.store.unit_summaries()?;
                    if let Some(h) = self.hook.as_ref() {
                        u.extend(h.units(&self.store)?);
                    }
                    u
                },
            };
            self.history.push(record.clone());
            let ckpt = Checkpoint {
                weights: self.store.tensors(),
                optimizer: self.optimizer.state()?,
                state: TrainState {
                    epochs_done: epoch + 1,
                    rng: self.rng.state(),
                    history: self.history.clone(),
                },
            };
            for o in observers.iter_mut() {
                o.on_epoch(&record, &ckpt)?;
            }
        }
        let state = TrainState {
            epochs_done: self.settings.epochs,
            rng: self.rng.state(),
            history: self.history.clone(),
        };
        for o in observers.iter_mut() {
            o.on_end(&state)?;
        }
        Ok(state)
    }

    /// `correct / seen` for the categorical likelihood, NaN otherwise.
    fn accuracy(&self, correct: usize, seen: usize) -> f64 {
        if self.likelihood.is_categorical() {
            correct as f64 / seen as f64
        } else {
            f64::NAN
        }
    }

    /// `sqrt(sq_err / cells)` in the trainer's target units for a Gaussian likelihood.
    fn rmse(&self, sq_err: f64, cells: usize) -> Option<f64> {
        (!self.likelihood.is_categorical()).then(|| (sq_err / cells.max(1) as f64).sqrt() * self.target_units.1)
    }
}
