//! The forward context.
//!
//! candle's `Module::forward(&Tensor)` has no room for randomness or mode, so secateur's layers
//! take a [`Ctx`]: train or eval mode, how stochastic layers sample, and the run's seeded noise
//! source. Deterministic layers ignore everything but the mode (batch norm, dropout). Nested
//! (ordered-unit) layers also read [`Ctx::width`], the fraction of their ordered units to keep.

use crate::rng::SeededRng;
use candle_core::Tensor;

/// Training or evaluation mode (batch-norm statistics, dropout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Batch statistics are used and running statistics updated; dropout is active.
    Train,
    /// Running statistics are used; deterministic layers are deterministic.
    Eval,
}

/// How a stochastic layer turns its posterior into an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// Use the posterior mean (no noise).
    Mean,
    /// Draw one weight sample per forward pass (reparameterisation, Blundell et al. 2015).
    Weight,
    /// Sample pre-activations (local reparameterisation, Kingma, Salimans & Welling 2015).
    Local,
    /// Flipout pseudo-independent perturbations (Wen et al. 2018).
    Flipout,
}

/// Everything a layer needs beyond its input.
pub struct Ctx<'a> {
    /// Train or eval mode.
    pub mode: Mode,
    /// How stochastic layers sample.
    pub sampling: Sampling,
    /// The run's seeded noise source.
    pub rng: &'a mut SeededRng,
    /// Width of a nested network (Rippel, Gelbart & Adams 2014; Cui et al. 2021): the fraction
    /// `w ∈ (0, 1]` of ordered units that nested-dropout layers keep, the first `⌈w · units⌉`
    /// ([`kept_units`]). `None` (the default) is the full width; other layers ignore it.
    pub width: Option<f64>,
    /// Momentum of batch-norm running statistics in training mode, overriding each layer's own
    /// (`None`, the default, keeps the layer's; PyTorch's `momentum = 0.1`). A recomputation of
    /// the statistics (after loading a SWAG or ensemble sample, Izmailov et al. 2018) passes
    /// `m = b / (n + b)` for a batch of `b` examples after `n` seen, so that the running
    /// statistics become the exact average over the pass.
    pub bn_momentum: Option<f64>,
    /// Where layers that expose a quantity of the pass put it, by layer path (CAP's
    /// sample-specific channel masks, which its objective regularises); `None` (the default):
    /// nowhere.
    pub taps: Option<&'a mut Vec<(String, Tensor)>>,
}

/// The number of ordered units a nested layer keeps at width `w ∈ (0, 1]`: `⌈w · units⌉`, at
/// least 1 (computed as `⌈w · units − 1e−9⌉` so that a product such as `0.1 · 30 =
/// 3.0000000000000004` counts as 3). Refuses a width outside `(0, 1]`, naming it.
///
/// ```
/// use secateur_bayes::ctx::kept_units;
/// assert_eq!(kept_units(0.5, 6).unwrap(), 3);
/// assert_eq!(kept_units(0.3, 6).unwrap(), 2);
/// assert_eq!(kept_units(0.1, 30).unwrap(), 3);
/// assert!(kept_units(0.0, 6).is_err() && kept_units(1.5, 6).is_err());
/// ```
pub fn kept_units(width: f64, units: usize) -> candle_core::Result<usize> {
    if !(width > 0.0 && width <= 1.0) {
        candle_core::bail!("ctx.width must be in (0, 1], got {width}");
    }
    Ok(((width * units as f64 - 1e-9).ceil() as usize).clamp(1, units.max(1)))
}

impl<'a> Ctx<'a> {
    /// A training context (batch statistics, noise as `sampling` says).
    pub fn train(rng: &'a mut SeededRng, sampling: Sampling) -> Self {
        Self {
            mode: Mode::Train,
            sampling,
            rng,
            width: None,
            bn_momentum: None,
            taps: None,
        }
    }

    /// An evaluation context (running statistics, posterior mean unless `sampling` says otherwise).
    pub fn eval(rng: &'a mut SeededRng, sampling: Sampling) -> Self {
        Self {
            mode: Mode::Eval,
            sampling,
            rng,
            width: None,
            bn_momentum: None,
            taps: None,
        }
    }

    /// The same context evaluating a nested network at width `w` (see [`Ctx::width`]; checked
    /// by the nested layers when they read it, [`kept_units`]).
    pub fn with_width(mut self, width: f64) -> Self {
        self.width = Some(width);
        self
    }

    /// The same context with batch-norm momentum `m` (see [`Ctx::bn_momentum`]).
    pub fn with_bn_momentum(mut self, m: f64) -> Self {
        self.bn_momentum = Some(m);
        self
    }

    /// Whether the context is in training mode.
    pub fn is_train(&self) -> bool {
        self.mode == Mode::Train
    }
}
