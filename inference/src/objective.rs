//! What the trainer minimises, as a trait: [`TrainingObjective`] turns one mini-batch into a
//! differentiable loss (and the numbers the history records about it).
//!
//! The built-in objectives:
//!
//! - [`OnePassNll`]: the mean negative log-likelihood of one forward pass under the trainer's
//!   likelihood, `L = −(1/|B|) Σ_{i∈B} log p(yᵢ | xᵢ, w)` — the softmax cross-entropy under the
//!   categorical likelihood, the Gaussian NLL under a Gaussian one ([`crate::likelihood`]).
//! - [`ElboConfig`](crate::elbo::ElboConfig): the tempered, annealed negative ELBO of
//!   Blundell et al. 2015, `L = (1/S) Σₛ NLL_s + β(t) · T · D / N` ([`crate::elbo`]).
//! - [`Objective`](crate::elbo::Objective), the serialisable choice between the two that a
//!   config names, implements the trait by delegating to the one it names.
//!
//! A library user may implement [`TrainingObjective`] for another loss and hand it to
//! [`Trainer::with_objective`](crate::train::Trainer::with_objective).

use crate::likelihood::Likelihood;
use candle_core::{DType, Result, Tensor};
use secateur_bayes::ctx::tile;
use secateur_bayes::{Ctx, Module, ParamStore, Sampling, SeededRng};

/// Where a training step is in the run: step `step` (from 0) of `steps` in epoch `epoch` (from
/// 0). Schedules read the fractional epoch `epoch + step / steps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPosition {
    /// Epoch, from 0.
    pub epoch: usize,
    /// Step within the epoch, from 0.
    pub step: usize,
    /// Steps per epoch.
    pub steps: usize,
}

/// Everything a [`TrainingObjective`] reads besides the batch and the generator.
#[derive(Clone, Copy)]
pub struct ObjectiveContext<'a> {
    /// The network.
    pub model: &'a dyn Module,
    /// The network's parameters, with its registered probabilistic layers (for divergences).
    pub store: &'a ParamStore,
    /// How the network's outputs become a distribution over the targets.
    pub likelihood: &'a Likelihood,
    /// How stochastic layers sample in the training passes ([`Ctx::train`]).
    pub sampling: Sampling,
    /// The step being taken.
    pub at: StepPosition,
}

/// One mini-batch's loss and what the trainer records about it.
#[derive(Debug, Clone)]
pub struct BatchLoss {
    /// The differentiable scalar the optimiser minimises.
    pub loss: Tensor,
    /// The network's detached outputs `[B, …]`, summed over the [`BatchLoss::passes`] forward
    /// passes (so its arg-max is that of the mean output, for accuracy; divide by `passes` for
    /// the mean output, e.g. the mean predicted μ of a Gaussian likelihood for the RMSE).
    pub outputs: Tensor,
    /// The number of forward passes summed in `outputs` (≥ 1).
    pub passes: usize,
    /// The expected NLL `(1/S) Σₛ NLL_s` when the loss is more than the NLL; `None` when the
    /// loss is the NLL itself.
    pub nll: Option<f64>,
    /// The summed divergence `D` of every probabilistic layer that entered the loss (unweighted);
    /// 0 when none did.
    pub divergence: f64,
    /// The weight β of the divergence at this step (1 when the objective has none).
    pub beta: f64,
}

impl BatchLoss {
    /// The mean of the passes' outputs, `outputs / passes`.
    pub fn mean_outputs(&self) -> Result<Tensor> {
        &self.outputs / self.passes as f64
    }
}

/// A training objective: the loss of one mini-batch `(x, y)`.
///
/// Every random number (layer noise, Monte Carlo divergences) is drawn from `rng`, the run's
/// generator, so that the same generator state gives the same loss bit for bit.
pub trait TrainingObjective {
    /// The loss of the batch `(x, y)` at the position `cx.at`.
    fn batch_loss(&self, cx: &ObjectiveContext, x: &Tensor, y: &Tensor, rng: &mut SeededRng) -> Result<BatchLoss>;
}

impl<T: TrainingObjective + ?Sized> TrainingObjective for Box<T> {
    fn batch_loss(&self, cx: &ObjectiveContext, x: &Tensor, y: &Tensor, rng: &mut SeededRng) -> Result<BatchLoss> {
        (**self).batch_loss(cx, x, y, rng)
    }
}

/// The mean NLL of one forward pass (deterministic training, or a Bayesian network trained on
/// its likelihood alone): `L = −(1/|B|) Σ_{i∈B} log p(yᵢ | f(xᵢ; w))` with `w` one draw of the
/// network's noise under `cx.sampling`. The divergence is not computed; `nll` is `None` and
/// `beta` is 1.
///
/// ```
/// use secateur_inference::objective::{ObjectiveContext, OnePassNll, StepPosition, TrainingObjective};
/// use secateur_inference::likelihood::Likelihood;
/// use secateur_bayes::layers::{BayesLinear, BayesLinearConfig};
/// use secateur_bayes::{ParamBuilder, ParamStore, Sampling, SeededRng};
/// use candle_core::{DType, Device, Tensor};
/// let store = ParamStore::new();
/// let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
/// let net = BayesLinear::new(&pb.pp("fc"), BayesLinearConfig::new(3, 2))?;
/// let cx = ObjectiveContext {
///     model: &net,
///     store: &store,
///     likelihood: &Likelihood::Categorical,
///     sampling: Sampling::Local,
///     at: StepPosition { epoch: 0, step: 0, steps: 1 },
/// };
/// let x = Tensor::ones((4, 3), DType::F32, &Device::Cpu)?;
/// let y = Tensor::new(&[0u32, 1, 1, 0], &Device::Cpu)?;
/// let out = OnePassNll.batch_loss(&cx, &x, &y, &mut SeededRng::new(1))?;
/// assert_eq!((out.passes, out.nll, out.divergence, out.beta), (1, None, 0.0, 1.0));
/// assert!(out.loss.to_scalar::<f32>()? > 0.0);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OnePassNll;

impl TrainingObjective for OnePassNll {
    fn batch_loss(&self, cx: &ObjectiveContext, x: &Tensor, y: &Tensor, rng: &mut SeededRng) -> Result<BatchLoss> {
        let mut ctx = Ctx::train(rng, cx.sampling);
        let outputs = cx.model.forward(x, &mut ctx)?;
        let loss = cx.likelihood.nll(&outputs, y)?;
        Ok(BatchLoss {
            loss,
            outputs: outputs.detach(),
            passes: 1,
            nll: None,
            divergence: 0.0,
            beta: 1.0,
        })
    }
}

/// Whether `S > 1` Monte Carlo samples under `sampling` on `device` run as one pass of `S`
/// samples ([`Ctx::with_samples`]) rather than as `S` one-sample passes.
///
/// On a GPU always. On the CPU for local reparameterisation and posterior means, where the part
/// of the network before the first noisy layer is computed once (LeNet-300-100 with 8 local-
/// reparameterisation samples: one pass costs 0.26× the 8 passes to predict, 0.34× to train;
/// LeNet-5 0.9–1.05×, BENCHMARKS.md), but not for weight sampling and Flipout, whose noise starts
/// at the first layer: their `S`-fold activations leave the caches that `S` passes reuse (LeNet-5:
/// 1.4–1.6× the 8 passes; LeNet-300-100: 0.87–0.94×).
pub fn samples_in_one_pass(sampling: Sampling, device: &candle_core::Device) -> bool {
    device.is_cuda() || matches!(sampling, Sampling::Local | Sampling::Mean)
}

/// The expected NLL `(1/S) Σₛ NLL_s` of `samples` noisy forward passes of the same batch, and
/// the sum of the passes' detached outputs. Fails when `samples` is 0.
///
/// Where [`samples_in_one_pass`] says so, the `S` passes are one pass over the batch tiled `S`
/// times ([`Ctx::with_samples`]): every layer treats each sample block as its own pass (a weight
/// draw per block, batch statistics per block), and the part of the network before the first
/// noisy layer is computed once; the NLL of the tiled batch, a mean over its `S·B` rows, is
/// `(1/S) Σₛ NLL_s`. Otherwise they are `S` [`Ctx::train`] passes drawing from `rng` in turn.
pub fn expected_nll(
    cx: &ObjectiveContext,
    x: &Tensor,
    y: &Tensor,
    samples: usize,
    rng: &mut SeededRng,
) -> Result<(Tensor, Tensor)> {
    if samples == 0 {
        candle_core::bail!("expected NLL: `samples` must be at least 1, got 0");
    }
    if samples > 1 && samples_in_one_pass(cx.sampling, x.device()) {
        return expected_nll_one_pass(cx, x, y, samples, rng);
    }
    let mut nll: Option<Tensor> = None;
    let mut sum: Option<Tensor> = None;
    for _ in 0..samples {
        let mut ctx = Ctx::train(rng, cx.sampling);
        let out = cx.model.forward(x, &mut ctx)?;
        let ce = cx.likelihood.nll(&out, y)?;
        nll = Some(match nll {
            None => ce,
            Some(t) => (t + ce)?,
        });
        let o = out.detach();
        sum = Some(match sum {
            None => o,
            Some(t) => (t + o)?,
        });
    }
    let (Some(nll), Some(sum)) = (nll, sum) else {
        candle_core::bail!("expected NLL: `samples` must be at least 1, got 0");
    };
    Ok(((nll / samples as f64)?, sum))
}

/// [`expected_nll`] as one pass of `samples` samples over the batch tiled `samples` times.
pub fn expected_nll_one_pass(
    cx: &ObjectiveContext,
    x: &Tensor,
    y: &Tensor,
    samples: usize,
    rng: &mut SeededRng,
) -> Result<(Tensor, Tensor)> {
    if samples == 0 {
        candle_core::bail!("expected NLL: `samples` must be at least 1, got 0");
    }
    let b = x.dim(0)?;
    let mut ctx = Ctx::train(rng, cx.sampling).with_samples(samples);
    let out = cx.model.forward(&tile(x, samples)?, &mut ctx)?;
    if out.dim(0)? != samples * b {
        candle_core::bail!(
            "expected NLL: a pass of {samples} samples of a batch of {b} returned {} rows",
            out.dim(0)?
        );
    }
    let nll = cx.likelihood.nll(&out, &tile(y, samples)?)?;
    let mut dims = out.dims().to_vec();
    dims[0] = b;
    dims.insert(0, samples);
    let sum = out.detach().reshape(dims)?.sum(0)?;
    Ok((nll, sum))
}

/// A scalar tensor as `f64`.
pub(crate) fn scalar(t: &Tensor) -> Result<f64> {
    t.to_dtype(DType::F64)?.to_scalar::<f64>()
}
