//! Optimisers with PyTorch's exact update rules and checkpointable state.
//!
//! Both optimisers visit the parameters in the sorted order of the `BTreeMap` they are given,
//! skip every parameter that has no gradient in the [`GradStore`] (its state is left untouched,
//! as PyTorch skips parameters whose `.grad` is `None`), compute in the parameter's dtype, and
//! write the result back with [`Var::set`].
//!
//! State is keyed by parameter name plus a suffix, as in PyTorch's `state_dict()`:
//! `<param>.momentum_buffer` for [`Sgd`]; `<param>.exp_avg`, `<param>.exp_avg_sq` and
//! `<param>.step` for [`AdamW`] (the step count is per parameter, as in PyTorch, so a parameter
//! that sometimes has no gradient gets the bias correction of its own number of updates; it is
//! stored as an `i64` scalar). Because an optimiser is built without the parameters,
//! [`Optimizer::load_state`] checks names (known suffixes, complete sets, consistent shapes and
//! dtypes) when loading and the next [`Optimizer::step`] checks the loaded state against the
//! parameters (a state entry for a parameter that is not in `params`, or with another shape or
//! dtype, is an error naming the state tensor).

use candle_core::backprop::GradStore;
use candle_core::{bail, DType, Result, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// A first-order optimiser over named parameters.
pub trait Optimizer {
    /// One update of every named parameter that has a gradient in `grads`, with learning rate `lr`.
    fn step(&mut self, params: &BTreeMap<String, Var>, grads: &GradStore, lr: f64) -> Result<()>;
    /// Optimiser state by name (e.g. `fc1.weight.momentum_buffer`, `fc1.weight.exp_avg`,
    /// `fc1.weight.step`), for checkpoints.
    fn state(&self) -> Result<BTreeMap<String, Tensor>>;
    /// Restores state saved by `state()`; strict about names and shapes; the error names the tensor.
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
}

/// The parameter's gradient, checked against the parameter; `None` when it has none.
fn gradient(name: &str, var: &Var, grads: &GradStore) -> Result<Option<Tensor>> {
    let Some(g) = grads.get(var.as_tensor()) else {
        return Ok(None);
    };
    if g.shape() != var.shape() {
        bail!(
            "gradient of {name} has shape {:?} but the parameter has shape {:?}",
            g.dims(),
            var.dims()
        );
    }
    if g.dtype() != var.dtype() {
        bail!(
            "gradient of {name} has dtype {:?} but the parameter has dtype {:?}",
            g.dtype(),
            var.dtype()
        );
    }
    Ok(Some(g.detach()))
}

/// Checks a learning rate.
fn check_lr(lr: f64) -> Result<()> {
    if !(lr.is_finite() && lr >= 0.0) {
        bail!("learning rate must be finite and non-negative, got {lr}");
    }
    Ok(())
}

/// The gradients of the parameters that have one, checked against their parameters.
fn gradients<'p>(params: &'p BTreeMap<String, Var>, grads: &GradStore) -> Result<Vec<(&'p String, &'p Var, Tensor)>> {
    let mut out = Vec::new();
    for (name, var) in params {
        if let Some(g) = gradient(name, var, grads)? {
            out.push((name, var, g));
        }
    }
    Ok(out)
}

/// Checks a (possibly loaded) state tensor `key` against parameter `param` of `params`.
fn check_state(key: &str, t: &Tensor, param: &str, params: &BTreeMap<String, Var>) -> Result<()> {
    let Some(var) = params.get(param) else {
        bail!("optimiser state {key} belongs to no parameter");
    };
    if t.shape() != var.shape() {
        bail!(
            "optimiser state {key} has shape {:?} but the parameter has shape {:?}",
            t.dims(),
            var.dims()
        );
    }
    if t.dtype() != var.dtype() {
        bail!(
            "optimiser state {key} has dtype {:?} but the parameter has dtype {:?}",
            t.dtype(),
            var.dtype()
        );
    }
    Ok(())
}

/// Splits `key` into `(parameter, suffix)` at the last dot, requiring one of `suffixes`.
fn split_key<'k>(key: &'k str, suffixes: &[&str]) -> Result<(&'k str, &'k str)> {
    match key.rsplit_once('.') {
        Some((param, suffix)) if !param.is_empty() && suffixes.contains(&suffix) => Ok((param, suffix)),
        _ => bail!(
            "unexpected optimiser state {key}: expected <parameter>.{}",
            suffixes.join(" or <parameter>.")
        ),
    }
}

/// Settings of [`Sgd`].
///
/// `Default` gives momentum 0.9 (the usual value for image classifiers; PyTorch's default is 0),
/// dampening 0, no Nesterov, weight decay 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SgdConfig {
    /// Momentum factor `μ`, in `[0, 1)`; 0 is plain SGD.
    pub momentum: f64,
    /// Dampening `τ` of the gradient added to the momentum buffer, in `[0, 1]`.
    pub dampening: f64,
    /// Nesterov momentum (Sutskever et al. 2013, in PyTorch's form); needs `momentum > 0` and
    /// `dampening = 0`.
    pub nesterov: bool,
    /// L2 penalty coefficient `λ ≥ 0`, added to the gradient (coupled weight decay).
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }
}

impl SgdConfig {
    /// Checks every field; the error names the offending one.
    pub fn validate(&self) -> Result<()> {
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            bail!("momentum must be in [0, 1), got {}", self.momentum);
        }
        if !(self.dampening.is_finite() && (0.0..=1.0).contains(&self.dampening)) {
            bail!("dampening must be in [0, 1], got {}", self.dampening);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!(
                "weight_decay must be finite and non-negative, got {}",
                self.weight_decay
            );
        }
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            bail!(
                "nesterov requires momentum > 0 and dampening = 0, got momentum {} and dampening {}",
                self.momentum,
                self.dampening
            );
        }
        Ok(())
    }
}

/// Stochastic gradient descent with momentum, Nesterov momentum and weight decay, with
/// `torch.optim.SGD`'s update rule. For each parameter `θ` with gradient `g`, at learning rate
/// `η`:
///
/// ```text
/// g ← g + λ θ                                  (if λ ≠ 0)
/// b ← g on the first step, else μ b + (1 − τ) g (if μ ≠ 0)
/// g ← g + μ b if nesterov, else b               (if μ ≠ 0)
/// θ ← θ − η g
/// ```
///
/// The Nesterov form is PyTorch's reformulation of Sutskever et al. (2013), "On the importance of
/// initialization and momentum in deep learning", ICML. With `μ = 0` no state is kept.
///
/// ```
/// use candle_core::{backprop::GradStore, Device, Var};
/// use secateur_inference::optim::{Optimizer, Sgd, SgdConfig};
/// use std::collections::BTreeMap;
/// let w = Var::new(&[1.0f64], &Device::Cpu)?;
/// let mut grads = GradStore::default();
/// grads.insert(w.as_tensor(), candle_core::Tensor::new(&[2.0f64], &Device::Cpu)?);
/// let params = BTreeMap::from([("w".to_string(), w.clone())]);
/// let mut sgd = Sgd::new(SgdConfig::default())?;
/// sgd.step(&params, &grads, 0.1)?; // b = 2, θ = 1 − 0.1·2
/// assert_eq!(w.to_vec1::<f64>()?, [0.8]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Sgd {
    cfg: SgdConfig,
    momentum_buffer: BTreeMap<String, Tensor>,
}

impl Sgd {
    /// Suffix of the momentum buffer's state name.
    const BUF: &'static str = "momentum_buffer";

    /// An optimiser with validated settings (see [`SgdConfig::validate`]).
    pub fn new(cfg: SgdConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            momentum_buffer: BTreeMap::new(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &SgdConfig {
        &self.cfg
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &BTreeMap<String, Var>, grads: &GradStore, lr: f64) -> Result<()> {
        check_lr(lr)?;
        // Check everything before changing anything, so that an error leaves all untouched.
        for (name, b) in &self.momentum_buffer {
            check_state(&format!("{name}.{}", Self::BUF), b, name, params)?;
        }
        let SgdConfig {
            momentum,
            dampening,
            nesterov,
            weight_decay,
        } = self.cfg;
        let rule = secateur_kernels::optim::SgdRule {
            lr,
            momentum,
            dampening,
            nesterov,
            weight_decay,
        };
        for (name, var, g) in gradients(params, grads)? {
            // In place on the CPU (one or two passes, no allocation); tensor arithmetic elsewhere.
            let buf = secateur_kernels::optim::sgd_step(var.as_tensor(), &g, self.momentum_buffer.get(name), rule)?;
            if let Some(b) = buf {
                self.momentum_buffer.insert(name.clone(), b);
            }
        }
        Ok(())
    }

    fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        // Copies: the buffers are updated in place by later steps.
        self.momentum_buffer
            .iter()
            .map(|(n, b)| Ok((format!("{n}.{}", Self::BUF), b.copy()?)))
            .collect()
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let mut buffers = BTreeMap::new();
        for (key, t) in state {
            let (param, _) = split_key(key, &[Self::BUF])?;
            if !t.dtype().is_float() {
                bail!("optimiser state {key} has non-float dtype {:?}", t.dtype());
            }
            // a copy: later steps update the buffer in place, not the caller's tensor
            buffers.insert(param.to_string(), t.copy()?);
        }
        if self.cfg.momentum == 0.0 {
            if let Some(key) = state.keys().next() {
                bail!("optimiser state {key} given but SGD without momentum keeps no state");
            }
        }
        self.momentum_buffer = buffers;
        Ok(())
    }
}

/// Settings of [`AdamW`]; `Default` gives PyTorch's defaults `β1 = 0.9`, `β2 = 0.999`,
/// `ε = 1e-8`, `λ = 0.01`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    /// Decay rate `β1` of the first-moment estimate, in `[0, 1)`.
    pub beta1: f64,
    /// Decay rate `β2` of the second-moment estimate, in `[0, 1)`.
    pub beta2: f64,
    /// Term `ε > 0` added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay `λ ≥ 0` (multiplied by the learning rate).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    /// Checks every field; the error names the offending one.
    pub fn validate(&self) -> Result<()> {
        if !(self.beta1.is_finite() && (0.0..1.0).contains(&self.beta1)) {
            bail!("beta1 must be in [0, 1), got {}", self.beta1);
        }
        if !(self.beta2.is_finite() && (0.0..1.0).contains(&self.beta2)) {
            bail!("beta2 must be in [0, 1), got {}", self.beta2);
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            bail!("eps must be finite and positive, got {}", self.eps);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!(
                "weight_decay must be finite and non-negative, got {}",
                self.weight_decay
            );
        }
        Ok(())
    }
}

/// Adam with decoupled weight decay (Loshchilov & Hutter 2019, "Decoupled Weight Decay
/// Regularization", ICLR), with `torch.optim.AdamW`'s update rule. For each parameter `θ` with
/// gradient `g`, at learning rate `η` and that parameter's step count `t` (from 1):
///
/// ```text
/// θ ← θ (1 − η λ)
/// m ← β1 m + (1 − β1) g        (computed as PyTorch's lerp: m + (1 − β1)(g − m))
/// v ← β2 v + (1 − β2) g²
/// m̂ = m / (1 − β1^t),  v̂ = v / (1 − β2^t)
/// θ ← θ − η m̂ / (√v̂ + ε)      (computed as θ − (η / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε))
/// ```
///
/// `m` and `v` start at zero. The parenthesised forms are the order of operations PyTorch uses;
/// they equal the formulas in exact arithmetic.
#[derive(Debug, Clone)]
pub struct AdamW {
    cfg: AdamWConfig,
    moments: BTreeMap<String, Moments>,
}

/// Per-parameter state of [`AdamW`].
#[derive(Debug, Clone)]
struct Moments {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: i64,
}

impl AdamW {
    const M: &'static str = "exp_avg";
    const V: &'static str = "exp_avg_sq";
    const STEP: &'static str = "step";

    /// An optimiser with validated settings (see [`AdamWConfig::validate`]).
    pub fn new(cfg: AdamWConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            moments: BTreeMap::new(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, params: &BTreeMap<String, Var>, grads: &GradStore, lr: f64) -> Result<()> {
        check_lr(lr)?;
        // Check everything before changing anything, so that an error leaves all untouched.
        for (name, s) in &self.moments {
            check_state(&format!("{name}.{}", Self::M), &s.exp_avg, name, params)?;
            check_state(&format!("{name}.{}", Self::V), &s.exp_avg_sq, name, params)?;
        }
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.cfg;
        for (name, var, g) in gradients(params, grads)? {
            let (m, v, t) = match self.moments.get(name) {
                None => (g.zeros_like()?, g.zeros_like()?, 1),
                Some(s) => (
                    s.exp_avg.to_device(var.device())?,
                    s.exp_avg_sq.to_device(var.device())?,
                    s.step + 1,
                ),
            };
            let t_i32 = i32::try_from(t).unwrap_or(i32::MAX);
            // In place on the CPU (three passes, no allocation, the same bits); tensor
            // arithmetic elsewhere. The first step's moments are fresh zeros, never shared.
            let rule = secateur_kernels::optim::AdamWRule {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
                step: t_i32,
            };
            let (m, v) = if secateur_kernels::optim::adamw_step(var.as_tensor(), &g, &m, &v, rule)? {
                (m, v)
            } else {
                let theta = var.as_detached_tensor().affine(1.0 - lr * weight_decay, 0.0)?;
                let m = (&m + (&g - &m)?.affine(1.0 - beta1, 0.0)?)?;
                let v = (v.affine(beta2, 0.0)? + g.sqr()?.affine(1.0 - beta2, 0.0)?)?;
                let bias1 = 1.0 - beta1.powi(t_i32);
                let bias2_sqrt = (1.0 - beta2.powi(t_i32)).sqrt();
                let denom = v.sqrt()?.affine(1.0 / bias2_sqrt, eps)?;
                let update = (&m / denom)?.affine(-lr / bias1, 0.0)?;
                var.set(&(theta + update)?)?;
                (m, v)
            };
            self.moments.insert(
                name.clone(),
                Moments {
                    exp_avg: m,
                    exp_avg_sq: v,
                    step: t,
                },
            );
        }
        Ok(())
    }

    fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        // Copies: the moments are updated in place by later steps.
        let mut out = BTreeMap::new();
        for (name, s) in &self.moments {
            out.insert(format!("{name}.{}", Self::M), s.exp_avg.copy()?);
            out.insert(format!("{name}.{}", Self::V), s.exp_avg_sq.copy()?);
            out.insert(
                format!("{name}.{}", Self::STEP),
                Tensor::new(s.step, s.exp_avg.device())?,
            );
        }
        Ok(out)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        type Parts = (Option<Tensor>, Option<Tensor>, Option<i64>);
        let mut parts: BTreeMap<&str, Parts> = BTreeMap::new();
        for (key, t) in state {
            let (param, suffix) = split_key(key, &[Self::M, Self::V, Self::STEP])?;
            let entry = parts.entry(param).or_default();
            match suffix {
                Self::STEP => {
                    if t.rank() != 0 {
                        bail!("optimiser state {key} must be a scalar, got shape {:?}", t.dims());
                    }
                    let step = t.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                    if !(step.fract() == 0.0 && step >= 1.0 && step <= i64::MAX as f64) {
                        bail!("optimiser state {key} must be a positive integer, got {step}");
                    }
                    entry.2 = Some(step as i64);
                }
                _ => {
                    if !t.dtype().is_float() {
                        bail!("optimiser state {key} has non-float dtype {:?}", t.dtype());
                    }
                    // copies: later steps update the moments in place, not the caller's tensors
                    if suffix == Self::M {
                        entry.0 = Some(t.copy()?);
                    } else {
                        entry.1 = Some(t.copy()?);
                    }
                }
            }
        }
        let mut moments = BTreeMap::new();
        for (param, (m, v, step)) in parts {
            let missing = |s: &str| candle_core::Error::Msg(format!("optimiser state {param}.{s} is missing"));
            let m = m.ok_or_else(|| missing(Self::M))?;
            let v = v.ok_or_else(|| missing(Self::V))?;
            let step = step.ok_or_else(|| missing(Self::STEP))?;
            if v.shape() != m.shape() || v.dtype() != m.dtype() {
                bail!(
                    "optimiser state {param}.{} ({:?}, {:?}) does not match {param}.{} ({:?}, {:?})",
                    Self::V,
                    v.dims(),
                    v.dtype(),
                    Self::M,
                    m.dims(),
                    m.dtype()
                );
            }
            moments.insert(
                param.to_string(),
                Moments {
                    exp_avg: m,
                    exp_avg_sq: v,
                    step,
                },
            );
        }
        self.moments = moments;
        Ok(())
    }
}
