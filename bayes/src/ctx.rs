//! The forward context.
//!
//! candle's `Module::forward(&Tensor)` has no room for randomness or mode, so secateur's layers
//! take a [`Ctx`]: train or eval mode, how stochastic layers sample, and the run's seeded noise
//! source. Deterministic layers ignore everything but the mode (batch norm, dropout).

use crate::rng::SeededRng;

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
}

impl<'a> Ctx<'a> {
    /// A training context (batch statistics, noise as `sampling` says).
    pub fn train(rng: &'a mut SeededRng, sampling: Sampling) -> Self {
        Self {
            mode: Mode::Train,
            sampling,
            rng,
        }
    }

    /// An evaluation context (running statistics, posterior mean unless `sampling` says otherwise).
    pub fn eval(rng: &'a mut SeededRng, sampling: Sampling) -> Self {
        Self {
            mode: Mode::Eval,
            sampling,
            rng,
        }
    }

    /// Whether the context is in training mode.
    pub fn is_train(&self) -> bool {
        self.mode == Mode::Train
    }
}
