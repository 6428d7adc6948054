//! Step hooks: code that runs around every optimiser step.
//!
//! Pruning needs two things from a training loop that the loop itself should not know about:
//! gradients of pruned weights must be zeroed before the optimiser sees them, and the pruned
//! weights must be set back to zero after the update (momentum buffers and weight decay would
//! otherwise revive them). Growing regularisation (Wang, Qin, Zhang & Fu 2021) adds a penalty
//! gradient `λ W` before the step. A [`StepHook`] gives both a place:
//!
//! ```text
//! grads = loss.backward()
//! hook.before_step(store, &mut grads, step)   // edit gradients
//! optimiser.step(params, &grads, lr)
//! hook.after_step(store, step)                // edit parameters
//! ```
//!
//! `step` counts optimiser steps from 0 over the whole run (not per epoch), so schedules that
//! advance every `k` iterations can rely on it. [`StepHook::on_epoch_start`] runs before an
//! epoch's first forward pass, [`StepHook::units`] after its last step.

use candle_core::backprop::GradStore;
use candle_core::Result;
use secateur_bayes::{ParamStore, UnitSummary};

/// Runs around every optimiser step (see the [module documentation](self) for the order).
///
/// ```
/// use candle_core::{backprop::GradStore, Result};
/// use secateur_bayes::ParamStore;
/// use secateur_inference::hooks::StepHook;
/// /// Counts steps and changes nothing.
/// struct Count(usize);
/// impl StepHook for Count {
///     fn before_step(&mut self, _: &ParamStore, _: &mut GradStore, _: usize) -> Result<()> { Ok(()) }
///     fn after_step(&mut self, _: &ParamStore, _: usize) -> Result<()> { self.0 += 1; Ok(()) }
/// }
/// let mut c = Count(0);
/// c.after_step(&ParamStore::new(), 0).unwrap();
/// assert_eq!(c.0, 1);
/// ```
pub trait StepHook {
    /// Called after the backward pass and before the optimiser step `step` (from 0): may edit the
    /// gradients (e.g. zero those of pruned weights, add a regularisation gradient).
    fn before_step(&mut self, store: &ParamStore, grads: &mut GradStore, step: usize) -> Result<()>;

    /// Called after the optimiser step `step`: may edit the parameters (e.g. set pruned weights
    /// back to zero).
    fn after_step(&mut self, store: &ParamStore, step: usize) -> Result<()>;

    /// Called at the start of every epoch `epoch` (from 0) that runs, before its first forward
    /// pass; a resumed run calls it for the epoch it resumes at (e.g. DCFF recomputes its
    /// filter fusion here). Default: nothing.
    fn on_epoch_start(&mut self, _store: &ParamStore, _epoch: usize) -> Result<()> {
        Ok(())
    }

    /// What the hook selects, per layer, at an epoch's end (a learned-pruning hook: the
    /// connections it keeps), reported with the layers' own unit counts in
    /// [`EpochRecord::units`](crate::train::EpochRecord::units). Default: nothing.
    fn units(&self, _store: &ParamStore) -> Result<Vec<UnitSummary>> {
        Ok(Vec::new())
    }
}

impl<H: StepHook + ?Sized> StepHook for Box<H> {
    fn before_step(&mut self, store: &ParamStore, grads: &mut GradStore, step: usize) -> Result<()> {
        (**self).before_step(store, grads, step)
    }
    fn after_step(&mut self, store: &ParamStore, step: usize) -> Result<()> {
        (**self).after_step(store, step)
    }
    fn on_epoch_start(&mut self, store: &ParamStore, epoch: usize) -> Result<()> {
        (**self).on_epoch_start(store, epoch)
    }
    fn units(&self, store: &ParamStore) -> Result<Vec<UnitSummary>> {
        (**self).units(store)
    }
}

/// A borrowed hook, so that the caller gets it back (its state, e.g. masks) once the trainer
/// is dropped.
impl<H: StepHook + ?Sized> StepHook for &mut H {
    fn before_step(&mut self, store: &ParamStore, grads: &mut GradStore, step: usize) -> Result<()> {
        (**self).before_step(store, grads, step)
    }
    fn after_step(&mut self, store: &ParamStore, step: usize) -> Result<()> {
        (**self).after_step(store, step)
    }
    fn on_epoch_start(&mut self, store: &ParamStore, epoch: usize) -> Result<()> {
        (**self).on_epoch_start(store, epoch)
    }
    fn units(&self, store: &ParamStore) -> Result<Vec<UnitSummary>> {
        (**self).units(store)
    }
}

/// Several hooks run in order (before the step in list order, after the step in list order).
#[derive(Default)]
pub struct HookList {
    /// The hooks, in the order they run.
    pub hooks: Vec<Box<dyn StepHook>>,
}

impl HookList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a hook.
    pub fn push(&mut self, hook: impl StepHook + 'static) {
        self.hooks.push(Box::new(hook));
    }
}

impl StepHook for HookList {
    fn before_step(&mut self, store: &ParamStore, grads: &mut GradStore, step: usize) -> Result<()> {
        for h in &mut self.hooks {
            h.before_step(store, grads, step)?;
        }
        Ok(())
    }
    fn after_step(&mut self, store: &ParamStore, step: usize) -> Result<()> {
        for h in &mut self.hooks {
            h.after_step(store, step)?;
        }
        Ok(())
    }
    fn on_epoch_start(&mut self, store: &ParamStore, epoch: usize) -> Result<()> {
        for h in &mut self.hooks {
            h.on_epoch_start(store, epoch)?;
        }
        Ok(())
    }
    fn units(&self, store: &ParamStore) -> Result<Vec<UnitSummary>> {
        let mut out = Vec::new();
        for h in &self.hooks {
            out.extend(h.units(store)?);
        }
        Ok(out)
    }
}
