//! Growing regularisation (Wang, Qin, Zhang & Fu 2021, "Neural pruning via growing
//! regularization", ICLR; reference code MingSun-Tse/Regularization-Pruning).
//!
//! A ½λ‖W_g‖² penalty on each group `g` to be pruned, added to the gradient as
//! `∇ ← ∇ + λ_g W_g`, with λ **growing** during training so that the pruned groups are pushed to
//! zero gradually and the network adapts, instead of being cut at once:
//!
//! - **GReg-1** ([`GReg::greg1`]): the groups to prune are picked once, at the start, by
//!   magnitude (L1 norm of the group); λ starts at 0 and grows by `lambda_step` every `interval`
//!   iterations until `λ > lambda_ceiling` (phase [`Phase::Growing`]); λ is then held for
//!   `stabilise_iters` iterations ([`Phase::Stabilising`]); then [`Phase::Done`]: the driver
//!   prunes with [`GReg::masks`] and fine-tunes (with the [`MaskSet`] as step hook).
//! - **GReg-2** ([`GReg::greg2`]): a picking phase first ([`Phase::Picking`]) grows a uniform λ
//!   on **all** groups by `picking_step` every `interval` iterations up to `picking_ceiling`
//!   (under a uniform L2 penalty a Hessian eigen-component shrinks by `h/(h + λ)`, so weights in
//!   low-curvature directions shrink first), then picks the smallest-magnitude groups; the push
//!   phase is GReg-1's schedule for the picked groups, continuing from the λ reached in picking
//!   (a choice: dropping it to 0 would let the picked weights regrow), while kept groups get the
//!   constant `kept_lambda = −1e-4`.
//!
//! Groups ([`Granularity`]): single weights (unstructured), or whole filters — output filters of
//! a convolution weight `[O, C, k, k]`, rows of a linear weight `[out, in]`. The number of pruned
//! groups follows an [`Allocation`] over group magnitudes (the paper prunes each layer at its own
//! ratio: [`crate::Scope::PerLayer`]). Bayesian layers are regularised through their posterior
//! means `{name}_mu`.
//!
//! [`GReg`] is a [`StepHook`]: `before_step` adds the penalty gradient at the current λ,
//! `after_step` advances the schedule by one iteration.

use crate::allocate::Allocation;
use crate::mask::{MaskSet, Scores};
use crate::prunable::{prunable, resolve};
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};
use secateur_bayes::ParamStore;
use secateur_inference::hooks::StepHook;

/// Schedule constants; `Default` gives the paper's CIFAR settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GRegConfig {
    /// λ increment of the growing (push) phase (`1e-4`).
    pub lambda_step: f64,
    /// Iterations between increments (10 in the CIFAR scripts, 5 on ImageNet).
    pub interval: usize,
    /// Growth stops once `λ > lambda_ceiling` (1).
    pub lambda_ceiling: f64,
    /// Iterations λ is held after growing (10,000 in the CIFAR scripts; 40,000 on ImageNet).
    pub stabilise_iters: usize,
    /// GReg-2: λ increment of the picking phase (`1e-5`).
    pub picking_step: f64,
    /// GReg-2: the picking phase ends when λ reaches this (`1e-2`).
    pub picking_ceiling: f64,
    /// GReg-2: λ of the kept groups during the push phase (`−1e-4`).
    pub kept_lambda: f64,
}

impl Default for GRegConfig {
    /// The CIFAR settings of Wang et al. (2021).
    fn default() -> Self {
        Self {
            lambda_step: 1e-4,
            interval: 10,
            lambda_ceiling: 1.0,
            stabilise_iters: 10_000,
            picking_step: 1e-5,
            picking_ceiling: 1e-2,
            kept_lambda: -1e-4,
        }
    }
}

impl GRegConfig {
    /// Checks every field; the error names it.
    pub fn validate(&self) -> Result<()> {
        let pos = |f: &str, v: f64| -> Result<()> {
            if !(v.is_finite() && v > 0.0) {
                candle_core::bail!("growing regularisation: field `{f}` must be finite and > 0, got {v}");
            }
            Ok(())
        };
        pos("lambda_step", self.lambda_step)?;
        pos("lambda_ceiling", self.lambda_ceiling)?;
        pos("picking_step", self.picking_step)?;
        pos("picking_ceiling", self.picking_ceiling)?;
        if self.interval == 0 {
            candle_core::bail!("growing regularisation: field `interval` must be at least 1");
        }
        if !self.kept_lambda.is_finite() {
            candle_core::bail!("growing regularisation: field `kept_lambda` must be finite");
        }
        Ok(())
    }
}

/// What a group is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// Every weight is its own group (unstructured).
    Weight,
    /// Output filters of a convolution, rows of a linear weight (structured).
    Filter,
}

impl Granularity {
    /// The names of configs: `filter` and `weight`.
    pub const NAMES: [(&'static str, Granularity); 2] =
        [("filter", Granularity::Filter), ("weight", Granularity::Weight)];

    /// The granularity's name (`filter`, `weight`).
    ///
    /// ```
    /// use secateur_pruning::greg::Granularity;
    /// assert_eq!(Granularity::Filter.name(), "filter");
    /// assert_eq!("weight".parse::<Granularity>(), Ok(Granularity::Weight));
    /// assert!("unit".parse::<Granularity>().is_err());
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Granularity::Filter => "filter",
            Granularity::Weight => "weight",
        }
    }
}

impl std::fmt::Display for Granularity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Granularity {
    type Err = String;
    /// The granularity named `s` ([`Granularity::NAMES`]); the error names the valid values.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Granularity::NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|&(_, v)| v)
            .ok_or_else(|| format!("unknown granularity `{s}`; use filter or weight"))
    }
}

/// Where the schedule is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// GReg-2: uniform λ on all groups, groups not yet picked.
    Picking,
    /// λ of the pruned groups growing.
    Growing,
    /// λ held.
    Stabilising,
    /// Schedule over: prune with [`GReg::masks`] and fine-tune.
    Done,
}

/// Growing regularisation as a step hook (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct GReg {
    cfg: GRegConfig,
    granularity: Granularity,
    allocation: Allocation,
    two: bool,
    phase: Phase,
    lambda: f64,
    iters: usize,
    names: Vec<String>,
    masks: Option<MaskSet>,
}

/// Group magnitudes of `w`: `|w|` per weight, or the L1 norm of each output filter / row
/// (shape `[O]`).
fn group_magnitude(w: &Tensor, g: Granularity) -> Result<Tensor> {
    match g {
        Granularity::Weight => w.abs(),
        Granularity::Filter => w.abs()?.flatten_from(1)?.sum(1),
    }
}

/// A group mask expanded to the weight's shape.
fn expand(mask: &Tensor, shape: &[usize], g: Granularity) -> Result<Tensor> {
    match g {
        Granularity::Weight => Ok(mask.clone()),
        Granularity::Filter => {
            let mut s = vec![1; shape.len()];
            s[0] = shape[0];
            mask.reshape(s)?.broadcast_as(shape)?.contiguous()
        }
    }
}

impl GReg {
    fn new(
        store: &ParamStore,
        granularity: Granularity,
        allocation: Allocation,
        cfg: GRegConfig,
        two: bool,
    ) -> Result<Self> {
        cfg.validate()?;
        allocation.validate()?;
        let names: Vec<String> = prunable(store)
            .into_keys()
            .filter(|k| !allocation.exclude.contains(k))
            .collect();
        if names.is_empty() {
            candle_core::bail!("growing regularisation: the model has no prunable weight outside the exclusions");
        }
        let mut g = Self {
            cfg,
            granularity,
            allocation,
            two,
            phase: if two { Phase::Picking } else { Phase::Growing },
            lambda: 0.0,
            iters: 0,
            names,
            masks: None,
        };
        if !two {
            g.pick(store)?;
        }
        Ok(g)
    }

    /// GReg-1: picks the groups to prune now by magnitude (L1 norm) with `allocation`, then
    /// grows their λ from 0.
    pub fn greg1(
        store: &ParamStore,
        granularity: Granularity,
        allocation: Allocation,
        cfg: GRegConfig,
    ) -> Result<Self> {
        Self::new(store, granularity, allocation, cfg, false)
    }

    /// GReg-2: a picking phase with uniform growing λ on all groups, then picks by magnitude with
    /// `allocation`, then pushes.
    pub fn greg2(
        store: &ParamStore,
        granularity: Granularity,
        allocation: Allocation,
        cfg: GRegConfig,
    ) -> Result<Self> {
        Self::new(store, granularity, allocation, cfg, true)
    }

    /// Picks the groups to prune from the current weights (kept = 1).
    fn pick(&mut self, store: &ParamStore) -> Result<()> {
        let mut scores = Scores::new();
        let mut shapes = Vec::new();
        for name in &self.names {
            let (_, v) = resolve(store, name)?;
            scores.insert(name.clone(), group_magnitude(v.as_tensor(), self.granularity)?);
            shapes.push(v.dims().to_vec());
        }
        let groups = Allocation {
            exclude: Default::default(),
            ..self.allocation.clone()
        }
        .masks(&scores)?;
        let mut masks = MaskSet::new();
        for (name, shape) in self.names.iter().zip(shapes) {
            let m = groups
                .get(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("internal: no group mask for `{name}`")))?;
            masks.insert(name.clone(), expand(m, &shape, self.granularity)?)?;
        }
        self.masks = Some(masks);
        Ok(())
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The current λ (of all groups while picking, of the pruned groups afterwards).
    pub fn lambda(&self) -> f64 {
        self.lambda
    }

    /// The picked masks (1 = kept group), once picked (always for GReg-1, after the picking phase
    /// for GReg-2). Prune with them when [`Phase::Done`].
    pub fn masks(&self) -> Option<&MaskSet> {
        self.masks.as_ref()
    }

    /// The schedule constants.
    pub fn config(&self) -> &GRegConfig {
        &self.cfg
    }

    /// Adds the penalty gradient `λ_g W` to each regularised weight's gradient (inserting it
    /// where a weight has no gradient): `λ` on every group while picking; `λ` on pruned groups
    /// and `kept_lambda` (GReg-2) or 0 (GReg-1) on kept groups while growing and stabilising;
    /// nothing when done.
    pub fn add_penalty(&self, store: &ParamStore, grads: &mut GradStore) -> Result<()> {
        if self.phase == Phase::Done {
            return Ok(());
        }
        let kept_lambda = if self.two { self.cfg.kept_lambda } else { 0.0 };
        for name in &self.names {
            let (_, v) = resolve(store, name)?;
            let w = v.as_tensor();
            let pen = match (&self.masks, self.phase) {
                (Some(m), Phase::Growing | Phase::Stabilising) => {
                    let m = m
                        .get(name)
                        .ok_or_else(|| candle_core::Error::Msg(format!("internal: no mask for `{name}`")))?
                        .to_dtype(w.dtype())?;
                    // λ (1 − m) + λ_kept m
                    let coef = m.affine(kept_lambda - self.lambda, self.lambda)?;
                    w.mul(&coef)?
                }
                _ => (w * self.lambda)?,
            };
            let g = match grads.get(w) {
                Some(g) => (g + pen)?,
                None => pen,
            };
            grads.insert(w, g);
        }
        Ok(())
    }

    /// Advances the schedule by one iteration (see the [module documentation](self)); picks the
    /// groups from `store` when GReg-2's picking phase ends.
    pub fn advance(&mut self, store: &ParamStore) -> Result<()> {
        if tick(&self.cfg, &mut self.phase, &mut self.lambda, &mut self.iters) {
            self.pick(store)?;
        }
        Ok(())
    }
}

/// One iteration of the schedule's arithmetic; `true` when GReg-2's picking phase ends now (the
/// caller picks the groups).
fn tick(cfg: &GRegConfig, phase: &mut Phase, lambda: &mut f64, iters: &mut usize) -> bool {
    *iters += 1;
    let on_interval = (*iters).is_multiple_of(cfg.interval);
    match *phase {
        Phase::Picking => {
            if on_interval {
                *lambda += cfg.picking_step;
            }
            // compare with a relative tolerance: λ is a sum of increments
            if *lambda >= cfg.picking_ceiling * (1.0 - 1e-9) {
                *phase = Phase::Growing;
                *iters = 0;
                return true;
            }
        }
        Phase::Growing => {
            if on_interval {
                *lambda += cfg.lambda_step;
            }
            if *lambda > cfg.lambda_ceiling {
                *phase = Phase::Stabilising;
                *iters = 0;
            }
        }
        Phase::Stabilising => {
            if *iters >= cfg.stabilise_iters {
                *phase = Phase::Done;
            }
        }
        Phase::Done => {}
    }
    false
}

impl GRegConfig {
    /// Training iterations until the schedule is [`Phase::Done`] (GReg-2 when `two`): what a
    /// driver must train before pruning. The paper's CIFAR defaults give about 110,000 for GReg-1
    /// (10,000 increments of λ, one every 10 iterations, then 10,000 iterations held).
    pub fn iterations(&self, two: bool) -> Result<usize> {
        self.validate()?;
        let (mut phase, mut lambda, mut iters) = (if two { Phase::Picking } else { Phase::Growing }, 0.0, 0);
        let mut n = 0usize;
        while phase != Phase::Done {
            tick(self, &mut phase, &mut lambda, &mut iters);
            n += 1;
            if n > 1 << 34 {
                candle_core::bail!("growing regularisation: the schedule does not end (lambda_step too small?)");
            }
        }
        Ok(n)
    }
}

impl StepHook for GReg {
    /// [`GReg::add_penalty`].
    fn before_step(&mut self, store: &ParamStore, grads: &mut GradStore, _step: usize) -> Result<()> {
        self.add_penalty(store, grads)
    }
    /// [`GReg::advance`].
    fn after_step(&mut self, store: &ParamStore, _step: usize) -> Result<()> {
        self.advance(store)
    }
}
