//! The forward context.
//!
//! candle's `Module::forward(&Tensor)` has no room for randomness or mode, so secateur's layers
//! take a [`Ctx`]: train or eval mode, how stochastic layers sample, and the run's seeded noise
//! source. Deterministic layers ignore everything but the mode (batch norm, dropout). Nested
//! (ordered-unit) layers also read [`Ctx::width`], the fraction of their ordered units to keep.
//!
//! **S samples in one pass.** With [`Ctx::with_samples`] a forward pass evaluates `S` Monte
//! Carlo samples of the network at once: the input is the batch tiled `S` times along the first
//! dimension (sample-major, rows `[s·B, (s+1)·B)` are sample `s`, [`tile`]), and every layer
//! treats the `S` blocks as `S` independent passes would. Layers whose noise is drawn per row
//! (local reparameterisation, dropout, gates) need nothing more; layers whose noise is drawn once
//! per pass (a weight sample, Flipout's perturbation, a spike-and-slab node mask) and training-mode
//! batch norm (statistics per pass) work block by block ([`Ctx::per_block`]). While the blocks are
//! still identical copies ([`Ctx::shared`], true until the first noisy layer), deterministic
//! linear and convolution layers and the first local-reparameterisation layer compute on one
//! block and tile the result, so the shared part of the network costs one pass, not `S`.

use crate::rng::SeededRng;
use candle_core::{Result, Tensor};

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
    /// The number `S ≥ 1` of Monte Carlo samples the pass evaluates at once (1, the default: an
    /// ordinary pass). With `S > 1` every activation's first dimension holds `S` sample blocks of
    /// equal size (see the [module docs](self)).
    pub samples: usize,
    /// Whether the `S` sample blocks of the current activation are still identical (no noise has
    /// been drawn yet in this pass); meaningful only with `samples > 1`. Layers that draw noise
    /// clear it ([`Ctx::mark_noisy`]); it never becomes true again within a pass.
    pub shared: bool,
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
            samples: 1,
            shared: false,
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
            samples: 1,
            shared: false,
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

    /// The same context evaluating `s ≥ 1` samples in one pass: the input **must** be one batch
    /// tiled `s` times ([`tile`]), because the blocks start out [`shared`](Ctx::shared) and the
    /// layers before the first noisy one compute on the first block only. (To pass `s` different
    /// batches, set `shared = false` after this call.)
    pub fn with_samples(mut self, s: usize) -> Self {
        self.samples = s.max(1);
        self.shared = self.samples > 1;
        self
    }

    /// Records that the layer being evaluated draws noise, so the sample blocks of its output
    /// differ.
    pub fn mark_noisy(&mut self) {
        self.shared = false;
    }

    /// The first sample block of `x` when the pass holds `S > 1` identical blocks, `None`
    /// otherwise (then `x` must be computed on as it is). Fails when the first dimension of `x` is
    /// not a multiple of `S`.
    pub fn shared_block(&self, x: &Tensor) -> Result<Option<Tensor>> {
        if self.samples <= 1 || !self.shared {
            return Ok(None);
        }
        Ok(Some(x.narrow(0, 0, self.block_rows(x)?)?))
    }

    /// The rows of one sample block of `x`: its first dimension divided by `S`.
    pub fn block_rows(&self, x: &Tensor) -> Result<usize> {
        let n = x.dim(0)?;
        if !n.is_multiple_of(self.samples) {
            candle_core::bail!(
                "a pass of {} samples needs a first dimension that is a multiple of {}, got shape {:?}",
                self.samples,
                self.samples,
                x.dims()
            );
        }
        Ok(n / self.samples)
    }

    /// `f` applied to each of the `S` sample blocks of `x` in turn, as `S` ordinary passes would
    /// (each with `samples = 1`, drawing from the context's generator in block order), the results
    /// concatenated along the first dimension; with `S = 1`, `f(x)`. Clears [`Ctx::shared`].
    pub fn per_block(&mut self, x: &Tensor, f: impl Fn(&Tensor, &mut Ctx) -> Result<Tensor>) -> Result<Tensor> {
        let s = self.samples;
        if s <= 1 {
            return f(x, self);
        }
        let b = self.block_rows(x)?;
        self.samples = 1;
        let mut outs = Vec::with_capacity(s);
        let mut result = Ok(());
        for k in 0..s {
            match x.narrow(0, k * b, b).and_then(|xk| f(&xk, self)) {
                Ok(y) => outs.push(y),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.samples = s;
        self.shared = false;
        result?;
        Tensor::cat(&outs, 0)
    }
}

/// `x` repeated `s` times along its first dimension (`[B, …]` → `[s·B, …]`, sample-major): the
/// input of a pass with [`Ctx::with_samples`], or a block computed once and shared by all samples.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap();
/// let t = secateur_bayes::ctx::tile(&x, 3).unwrap();
/// assert_eq!(t.dims(), &[6, 2]);
/// assert_eq!(t.get(4).unwrap().to_vec1::<f32>().unwrap(), vec![1., 2.]);
/// ```
pub fn tile(x: &Tensor, s: usize) -> Result<Tensor> {
    if s <= 1 {
        return Ok(x.clone());
    }
    let dims = x.dims();
    let mut rep = vec![1; dims.len()];
    rep[0] = s;
    x.repeat(rep.as_slice())
}
