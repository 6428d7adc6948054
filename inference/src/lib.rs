//! # secateur-inference
//!
//! Training and evaluation of anything built from secateur's modules.
//!
//! Modules:
//! - [`batches`]: the [`Batches`](batches::Batches) source of mini-batches that training,
//!   prediction and pruning read, and [`TensorBatches`](batches::TensorBatches) over in-memory
//!   tensors (seeded Fisher–Yates shuffle per epoch).
//! - [`likelihood`]: categorical (softmax) and Gaussian (fixed, homoscedastic, heteroscedastic
//!   noise) likelihoods and their negative log-likelihoods.
//! - [`objective`]: the [`TrainingObjective`](objective::TrainingObjective) trait (the loss of
//!   one mini-batch) and the one-pass NLL.
//! - [`elbo`]: the tempered, annealed negative ELBO `(1/S) Σₛ NLL_s + β(t) · T · D / N`
//!   (Blundell et al. 2015; Wenzel et al. 2020) as a training objective and as the functions
//!   [`elbo_loss`](elbo::elbo_loss) and [`elbo_from_divergence`](elbo::elbo_from_divergence);
//!   the KL-annealing schedules; [`Objective`](elbo::Objective), the serialisable choice of
//!   objective.
//! - [`predict`]: batched prediction of class probabilities, Monte Carlo prediction with S
//!   posterior samples and the entropy / mutual-information decomposition; Gaussian regression
//!   predictives and their variance decomposition.
//! - [`posterior`]: the [`Posterior`](posterior::Posterior) interface of posteriors over a trained
//!   network's parameters (mean, seeded sample, [`PosteriorStats`](secateur_bayes::PosteriorStats),
//!   Bayesian model averaging with batch-norm recomputation), and deep ensembles.
//! - [`swag`]: stochastic weight averaging (SWA, Izmailov et al. 2018) and SWAG (Maddox et al.
//!   2019): a [`SwagCollector`](swag::SwagCollector) observer that collects the moments and
//!   deviation columns during training, and the [`Swag`](swag::Swag) posterior.
//! - [`laplace`]: Laplace approximations at a trained network's MAP: diagonal (GGN or empirical
//!   Fisher) over all weights, last-layer (full or Kronecker-factored GGN) with the probit
//!   predictive; the Laplace marginal likelihood and the choice of the prior precision.
//! - [`metrics`]: accuracy, NLL, Brier score, ECE and MCE, reliability bins; RMSE, Gaussian NLL
//!   and interval coverage of regression predictives.
//! - [`calibration`]: equal-mass (adaptive) and class-wise ECE, the Murphy decomposition of the
//!   Brier score (as TensorFlow Probability's), temperature scaling and its NLL fit.
//! - [`selective`]: selective prediction: the accuracy–coverage curve of abstaining on the most
//!   uncertain examples and the area under the risk–coverage curve (AURC).
//! - [`ood`]: out-of-distribution detection by a score: AUROC, AUPR-in/out, FPR at 95% TPR and
//!   the ROC curve.
//! - [`regression_calibration`]: coverage and width of central Gaussian prediction intervals at
//!   several levels, the CRPS of Gaussian and Gaussian-mixture predictives; `erf`, `erfc`, `Φ`
//!   and `Φ⁻¹` in `f64`.
//! - [`evaluate`]: the [`Evaluation`](evaluate::Evaluation) the trainer runs after every epoch,
//!   by default the posterior-mean network's metrics under the likelihood.
//! - [`optim`]: SGD (momentum, Nesterov, weight decay) and AdamW with PyTorch's update rules and
//!   checkpointable state.
//! - [`schedule`]: learning-rate schedules (multistep, cosine, linear warm-up).
//! - [`hooks`]: [`StepHook`](hooks::StepHook)s that edit gradients before and parameters after
//!   every optimiser step (pruning masks, growing regularisation).
//! - [`train`]: the training loop with observers (progress, history, checkpoints), a divergence
//!   guard and bit-identical resume.
//!
//! Module graph: each module uses only modules of lower layers, so the dependencies form a DAG.
//!
//! ```text
//! 5  swag      → posterior, train
//! 4  train     → batches, elbo, evaluate, hooks, likelihood, metrics (epoch-record types),
//!                objective, optim, schedule
//!    laplace   → batches, likelihood, posterior, predict
//!    selective → calibration, metrics
//! 3  evaluate  → batches, likelihood, metrics, predict
//!    posterior → batches, likelihood, predict
//!    calibration → metrics
//! 2  elbo      → objective
//!    metrics   → likelihood, predict
//! 1  objective → likelihood
//!    predict   → batches, likelihood
//! 0  batches, likelihood, hooks, optim, schedule, ood, regression_calibration
//! ```

pub mod batches;
pub mod calibration;
pub mod elbo;
pub mod evaluate;
pub mod hooks;
pub mod laplace;
pub mod likelihood;
pub mod metrics;
pub mod objective;
pub mod ood;
pub mod optim;
pub mod posterior;
pub mod predict;
pub mod regression_calibration;
pub mod schedule;
pub mod selective;
pub mod svgd;
pub mod swag;
pub mod train;
