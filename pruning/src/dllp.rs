//! DLLP, distribution-lossless pruning: a trained dense network remodelled as a prior over a
//! latent pruned sub-network, whose posterior Stein variational gradient descent approximates.
//!
//! Only the abstract of the seed paper is public. It says: the dense network is remodelled as a
//! discrete prior over a latent pruned sub-network and the remaining redundancy; Stein
//! variational inference approximates the latent posterior, which bypasses a KL divergence
//! against an unknown distribution; the result is a sparser network with quantified reliability
//! rather than a regularised point estimate ("hard pruning"), and small weights are not assumed
//! unimportant. What follows is this crate's reconstruction; **every concrete choice below is
//! ours**, not the paper's.
//!
//! **Latent variables.** For every prunable weight `k` (the weights of linear and convolution
//! layers, [`crate::prunable`], less the excluded layers) a binary inclusion `zₖ` (the pruned
//! sub-network is `z ⊙ w`, the remaining redundancy `(1 − z) ⊙ w`), and the weights `w` of the
//! sub-network itself (every trainable parameter: biases and norm scales have no `z`).
//!
//! **Prior, built from the trained dense net `ŵ`.**
//! - `zₖ ~ Bernoulli(π)` independently, `π = 1 − s` the kept fraction at the target sparsity
//!   `s`: one number for every weight, so that the prior carries no ranking of its own, and
//!   magnitude in particular plays no part (the abstract's "does not assume small weights are
//!   unimportant"). SVGD needs a density with a gradient, so each `zₖ` is relaxed to the binary
//!   Concrete variable of temperature `τ` (Maddison, Mnih & Teh 2017): `zₖ = σ(sₖ)` with the
//!   logit `sₖ ~ Logistic(log(π/(1 − π))/τ, 1/τ)`, which puts mass `π` on `zₖ > ½` and tends to
//!   `Bernoulli(π)` as `τ → 0`. `∇ log p(s) = −τ · tanh((s − a)/(2/τ))` with `a = logit(π)/τ`.
//! - `w ~ N(ŵ, σ_w² I)`: the dense weights are the prior's centre, so that the sub-network
//!   starts from what the dense network learnt and can compensate a removed weight, within
//!   `σ_w`.
//!
//! **Likelihood.** The training labels under the network with the effective weights
//! `θ = σ(s) ⊙ w` (`θ = w` where no `z`), mini-batched as in SVGD:
//! `log p(s, w | D) ≈ −N · (1/B) Σ_b ℓ_b(θ) + log p(w) + log p(s)`.
//! The gradients are the chain rule through `θ`: `∇_w = −N g ⊙ σ(s) + ∇ log p(w)` and
//! `∇_s = −N g ⊙ w ⊙ σ(s)(1 − σ(s)) + ∇ log p(s)`, with `g = ∇_θ` of the mini-batch mean loss.
//! A weight's inclusion thus falls towards the prior's `π` unless the loss resists its removal:
//! saliency emerges from the data, not from `|w|`.
//!
//! **Particles.** Each of the `n` particles carries a whole network's weights `w` and the
//! logits of its relaxed mask, `[w, s / c]`, one row of an `n × (d + m)` matrix moved by
//! [`secateur_inference::svgd::stein_step`] (the RBF kernel with the median bandwidth over the
//! whole row, and the reference AdaGrad step). The logits are stored divided by
//! `c = mask_step / step`, so that AdaGrad, which moves every coordinate by about its step size,
//! moves weights by `step` and logits by `mask_step` per iteration (and logits and weights have
//! comparable scales in the kernel). Particle `i` starts at `w = ŵ + jitter · rms(ŵ_layer) · ε`
//! and `s = logit(init_keep) + ε′` (ε, ε′ standard normal draws of the run's generator).
//! [`DllpSettings::repulsive`] `= false` drops the kernel: independent particles, an ensemble of
//! relaxed-mask networks (the fair baseline of the interaction).
//!
//! **Read-off.** The posterior inclusion probability of weight `k` is the particle mean
//! `q̂ₖ = (1/n) Σᵢ σ(sᵢₖ)` ([`Dllp::inclusion`]); the final mask keeps the top-k of `q̂` at the
//! target sparsity (the crate's [`crate::Allocation`], so the count is exact and ties go by
//! position). Its uncertainty is reported two ways: the per-weight particle standard deviation of
//! `σ(sₖ)`, and [`Dllp::agreement`], the mean fraction of the final mask's kept weights that
//! each particle's own top-k keeps. Then [`Dllp::harden`] folds each particle's relaxed mask into
//! its weights (`w ← M ⊙ σ(s) ⊙ w`, the effective weights the likelihood saw, with the hard mask
//! `M`): the particles become `n` networks of one sparsity pattern, a finite posterior whose
//! model average gives predictions with entropy and mutual information per example
//! ([`Dllp::members`], `secateur_inference::posterior::Ensemble`). Hardened particles can go on
//! moving by SVGD over the kept weights with the mask held (the fine-tune of the comparison):
//! pruned coordinates have zero gradient and coincide on every particle, so their Stein direction
//! is zero and they stay zero.

use crate::allocate::Allocation;
use crate::mask::{MaskSet, Scores};
use crate::prunable;
use candle_core::{DType, Device, Result, Tensor};
use secateur_bayes::{ParamStore, SeededRng};
use secateur_inference::posterior::{Ensemble, ParamSample};
use secateur_inference::svgd::network::Layout;
use secateur_inference::svgd::{stein_step, AdagradMomentum, Interaction};
use std::collections::{BTreeMap, BTreeSet};

/// The settings of a DLLP run (see the [module documentation](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct DllpSettings {
    /// Particles `n` (≥ 2 for a kernel to act).
    pub particles: usize,
    /// AdaGrad step of the weights (the SVGD reference's `stepsize`).
    pub step: f64,
    /// AdaGrad step of the mask logits.
    pub mask_step: f64,
    /// Concrete temperature `τ > 0`.
    pub temperature: f64,
    /// `σ_w` of the weight prior `N(ŵ, σ_w²)`.
    pub weight_prior_std: f64,
    /// The initial inclusion `σ(s₀)` in (0, 1).
    pub init_keep: f64,
    /// Standard deviation of the initial weight jitter, relative to each tensor's RMS.
    pub jitter: f64,
    /// The kernel's repulsion on (SVGD) or off (independent particles).
    pub repulsive: bool,
}

impl Default for DllpSettings {
    /// 10 particles, steps 10⁻³ (weights) and 0.05 (logits), τ = 2/3 (Maddison et al. 2017;
    /// Louizos et al. 2018), σ_w = 0.1, initial inclusion 0.98, jitter 0.01, repulsion on.
    fn default() -> Self {
        Self {
            particles: 10,
            step: 1e-3,
            mask_step: 0.05,
            temperature: 2.0 / 3.0,
            weight_prior_std: 0.1,
            init_keep: 0.98,
            jitter: 0.01,
            repulsive: true,
        }
    }
}

impl DllpSettings {
    /// Refuses settings that cannot run, naming the field.
    pub fn validate(&self) -> Result<()> {
        let pos = |name: &str, v: f64| -> Result<()> {
            if !(v.is_finite() && v > 0.0) {
                candle_core::bail!("dllp: `{name}` must be finite and > 0, got {v}");
            }
            Ok(())
        };
        if self.particles == 0 {
            candle_core::bail!("dllp: `particles` must be at least 1");
        }
        pos("step", self.step)?;
        pos("mask_step", self.mask_step)?;
        pos("temperature", self.temperature)?;
        pos("weight_prior_std", self.weight_prior_std)?;
        if !(self.init_keep > 0.0 && self.init_keep < 1.0) {
            candle_core::bail!("dllp: `init_keep` must be in (0, 1), got {}", self.init_keep);
        }
        if !(self.jitter.is_finite() && self.jitter >= 0.0) {
            candle_core::bail!("dllp: `jitter` must be finite and ≥ 0, got {}", self.jitter);
        }
        Ok(())
    }
}

/// A prunable tensor with a mask variable: its logical name, shape, and where its weights sit in
/// the layout.
#[derive(Debug, Clone)]
struct Masked {
    name: String,
    shape: Vec<usize>,
    offset: usize,
    len: usize,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

/// The particles of a DLLP run and the state of their SVGD (see the
/// [module documentation](self)).
pub struct Dllp {
    layout: Layout,
    masked: Vec<Masked>,
    /// Entries of the weights that carry a mask variable: `(weight index, mask index)`.
    /// Mask indices run over `masked` in order.
    m: usize,
    n: usize,
    /// Particles, row-major `n × (d + m)` while relaxed, `n × d` once hardened.
    x: Vec<f64>,
    anchor: Vec<f64>,
    /// `c = mask_step / step`: stored logit = `s / c`.
    c: f64,
    /// Location `a = logit(π)/τ` of the logits' prior.
    prior_loc: f64,
    settings: DllpSettings,
    stepper: AdagradMomentum,
    /// The hard mask over the `m` mask entries once hardened.
    hard: Option<Vec<f64>>,
}

impl Dllp {
    /// Particles around the dense weights now in `store`, with mask variables on every prunable
    /// tensor not in `exclude` (logical names), for the target sparsity `sparsity` (the prior's
    /// `π = 1 − sparsity`); initial draws from `rng`.
    pub fn new(
        store: &ParamStore,
        exclude: &BTreeSet<String>,
        sparsity: f64,
        settings: DllpSettings,
        rng: &mut SeededRng,
    ) -> Result<Self> {
        settings.validate()?;
        if !(sparsity.is_finite() && sparsity > 0.0 && sparsity < 1.0) {
            candle_core::bail!("dllp: the target sparsity must be in (0, 1), got {sparsity}");
        }
        let layout = Layout::of(store);
        let d = layout.dim;
        let anchor = layout.flatten(store)?.to_vec1::<f64>()?;
        if let Some(i) = anchor.iter().position(|v| !v.is_finite()) {
            candle_core::bail!("dllp: the dense weights hold a non-finite value (entry {i})");
        }
        let offsets: BTreeMap<&str, (usize, &Vec<usize>)> = layout
            .entries
            .iter()
            .map(|(name, shape, off)| (name.as_str(), (*off, shape)))
            .collect();
        let mut masked = Vec::new();
        for (logical, (stored, _)) in prunable::prunable(store) {
            if exclude.contains(&logical) {
                continue;
            }
            let Some(&(offset, shape)) = offsets.get(stored.as_str()) else {
                candle_core::bail!("dllp: the prunable tensor `{stored}` is not a trainable parameter");
            };
            masked.push(Masked {
                name: logical,
                shape: shape.clone(),
                offset,
                len: shape.iter().product(),
            });
        }
        if masked.is_empty() {
            candle_core::bail!("dllp: no prunable tensor is left to prune (all excluded)");
        }
        let m: usize = masked.iter().map(|t| t.len).sum();
        let n = settings.particles;
        let c = settings.mask_step / settings.step;
        let tau = settings.temperature;
        let prior_loc = logit(1.0 - sparsity) / tau;
        let s0 = logit(settings.init_keep);
        // per-parameter RMS of the dense weights, for the jitter's scale
        let mut scale = vec![0.0; d];
        for (_, shape, off) in &layout.entries {
            let len: usize = shape.iter().product();
            let seg = &anchor[*off..off + len];
            let rms = (seg.iter().map(|v| v * v).sum::<f64>() / len.max(1) as f64).sqrt();
            scale[*off..off + len].iter_mut().for_each(|s| *s = rms);
        }
        let row = d + m;
        let mut x = vec![0.0; n * row];
        for i in 0..n {
            let ew = rng.normal_vec(d);
            let es = rng.normal_vec(m);
            let r = &mut x[i * row..(i + 1) * row];
            for j in 0..d {
                r[j] = anchor[j] + settings.jitter * scale[j] * ew[j] as f64;
            }
            for k in 0..m {
                r[d + k] = (s0 + es[k] as f64) / c;
            }
        }
        Ok(Self {
            layout,
            masked,
            m,
            n,
            x,
            anchor,
            c,
            prior_loc,
            stepper: AdagradMomentum::new(settings.step),
            settings,
            hard: None,
        })
    }

    /// Number of particles.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether there are no particles (never: [`Dllp::new`] refuses zero).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Whether [`Dllp::harden`] has fixed the mask.
    pub fn is_hard(&self) -> bool {
        self.hard.is_some()
    }

    fn row_len(&self) -> usize {
        self.layout.dim + if self.hard.is_some() { 0 } else { self.m }
    }

    /// For each mask entry `k`, its weight index in the layout.
    fn weight_index(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.m);
        for t in &self.masked {
            out.extend(t.offset..t.offset + t.len);
        }
        out
    }

    /// The logits `s` of particle `i` (relaxed only).
    fn logits(&self, i: usize) -> Vec<f64> {
        let (d, row) = (self.layout.dim, self.row_len());
        self.x[i * row + d..(i + 1) * row].iter().map(|u| u * self.c).collect()
    }

    /// The effective weights `θ` of particle `i`: `σ(s) ⊙ w` where a mask acts (the hard mask
    /// once hardened, already folded into `w`), `w` elsewhere.
    pub fn effective(&self, i: usize) -> Result<Vec<f64>> {
        if i >= self.n {
            candle_core::bail!("dllp: particle {i} of {}", self.n);
        }
        let (d, row) = (self.layout.dim, self.row_len());
        let mut theta = self.x[i * row..i * row + d].to_vec();
        if self.hard.is_none() {
            for (j, s) in self.weight_index().into_iter().zip(self.logits(i)) {
                theta[j] *= sigmoid(s);
            }
        }
        Ok(theta)
    }

    /// `∇ log p` of particle `i` in the stored coordinates (`[w, s/c]`, or `w` once hardened),
    /// with the likelihood's mini-batch mean loss `loss(store)` scaled by `n_train` (see the
    /// [module documentation](self)). Leaves the store holding the particle's effective weights.
    pub fn grad_log_target(
        &self,
        i: usize,
        store: &ParamStore,
        n_train: usize,
        loss: &mut impl FnMut(&ParamStore) -> Result<Tensor>,
    ) -> Result<Vec<f64>> {
        let d = self.layout.dim;
        let row = self.row_len();
        let theta = self.effective(i)?;
        self.layout
            .write(&Tensor::from_slice(&theta, d, &Device::Cpu)?, store)?;
        let l = loss(store)?;
        let lv = l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !lv.is_finite() {
            candle_core::bail!("dllp: the loss of particle {i} is not finite ({lv})");
        }
        let grads = l.backward()?;
        let g = self.layout.flatten_grads(&store.params(), &grads)?.to_vec1::<f64>()?;
        let nn = n_train as f64;
        let inv_var = 1.0 / (self.settings.weight_prior_std * self.settings.weight_prior_std);
        let xi = &self.x[i * row..(i + 1) * row];
        let mut out = vec![0.0; row];
        for j in 0..d {
            out[j] = -nn * g[j] - (xi[j] - self.anchor[j]) * inv_var;
        }
        let idx = self.weight_index();
        match &self.hard {
            Some(mask) => {
                for (k, &j) in idx.iter().enumerate() {
                    if mask[k] == 0.0 {
                        out[j] = 0.0;
                    }
                }
            }
            None => {
                let tau = self.settings.temperature;
                for (k, (&j, s)) in idx.iter().zip(self.logits(i)).enumerate() {
                    let q = sigmoid(s);
                    out[j] = -nn * g[j] * q - (xi[j] - self.anchor[j]) * inv_var;
                    let prior = -tau * ((s - self.prior_loc) * tau / 2.0).tanh();
                    let gs = -nn * g[j] * xi[j] * q * (1.0 - q) + prior;
                    out[d + k] = self.c * gs;
                }
            }
        }
        Ok(out)
    }

    /// `log p` of particle `i` up to a constant (the target whose gradient
    /// [`Dllp::grad_log_target`] gives; for checks).
    pub fn log_target(
        &self,
        i: usize,
        store: &ParamStore,
        n_train: usize,
        loss: &mut impl FnMut(&ParamStore) -> Result<Tensor>,
    ) -> Result<f64> {
        let d = self.layout.dim;
        let row = self.row_len();
        let theta = self.effective(i)?;
        self.layout
            .write(&Tensor::from_slice(&theta, d, &Device::Cpu)?, store)?;
        let lv = loss(store)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let sw = self.settings.weight_prior_std;
        let xi = &self.x[i * row..(i + 1) * row];
        let mut lp = -(n_train as f64) * lv;
        let hard = self.hard.as_ref();
        let idx = self.weight_index();
        let pruned: BTreeSet<usize> = match hard {
            Some(mask) => idx
                .iter()
                .zip(mask)
                .filter(|(_, &v)| v == 0.0)
                .map(|(&j, _)| j)
                .collect(),
            None => BTreeSet::new(),
        };
        for j in (0..d).filter(|j| !pruned.contains(j)) {
            lp -= 0.5 * ((xi[j] - self.anchor[j]) / sw).powi(2);
        }
        if hard.is_none() {
            let tau = self.settings.temperature;
            for s in self.logits(i) {
                // log Logistic(s; a, 1/τ) = −u − 2 log(1 + e^{−u}) + const, u = (s − a) τ
                let u = (s - self.prior_loc) * tau;
                lp += -u - 2.0 * ((-u).max(0.0) + (-u.abs()).exp().ln_1p());
            }
        }
        Ok(lp)
    }

    /// Overwrites the stored coordinates of particle `i` (for checks: finite differences).
    pub fn set_particle(&mut self, i: usize, row: &[f64]) -> Result<()> {
        let r = self.row_len();
        if i >= self.n || row.len() != r {
            candle_core::bail!(
                "dllp: particle {i} with {} entries; expected < {} and {r}",
                row.len(),
                self.n
            );
        }
        self.x[i * r..(i + 1) * r].copy_from_slice(row);
        Ok(())
    }

    /// The stored coordinates of particle `i`.
    pub fn particle(&self, i: usize) -> Vec<f64> {
        let r = self.row_len();
        self.x[i * r..(i + 1) * r].to_vec()
    }

    /// One SVGD step of every particle on one mini-batch: `loss(store)` is the batch's mean loss
    /// with the store's current parameters (the same batch for every particle), `n_train` the
    /// training-set size. Leaves the store holding the last particle's effective weights;
    /// returns the kernel bandwidth (NaN without repulsion).
    pub fn step(
        &mut self,
        store: &ParamStore,
        n_train: usize,
        mut loss: impl FnMut(&ParamStore) -> Result<Tensor>,
    ) -> Result<f64> {
        let row = self.row_len();
        let mut g = Vec::with_capacity(self.n * row);
        for i in 0..self.n {
            g.extend(self.grad_log_target(i, store, n_train, &mut loss)?);
        }
        let interaction = if self.settings.repulsive {
            Interaction::Stein
        } else {
            Interaction::Independent
        };
        let h = stein_step(&mut self.x, &g, self.n, interaction, &mut self.stepper)?;
        if let Some(j) = self.x.iter().position(|v| !v.is_finite()) {
            candle_core::bail!(
                "dllp: particle {} holds a non-finite value after the step (lower the step sizes)",
                j / row
            );
        }
        Ok(h)
    }

    /// Per prunable tensor (logical name), the particles' `σ(s)`: mean and standard deviation.
    /// Once hardened, the hard mask (standard deviation 0).
    pub fn inclusion_moments(&self) -> Result<(Scores, Scores)> {
        let mut mean = vec![0.0f64; self.m];
        let mut sq = vec![0.0f64; self.m];
        match &self.hard {
            Some(mask) => mean.copy_from_slice(mask),
            None => {
                for i in 0..self.n {
                    for (k, s) in self.logits(i).into_iter().enumerate() {
                        let q = sigmoid(s);
                        mean[k] += q;
                        sq[k] += q * q;
                    }
                }
                let n = self.n as f64;
                for k in 0..self.m {
                    mean[k] /= n;
                    sq[k] = (sq[k] / n - mean[k] * mean[k]).max(0.0).sqrt();
                }
            }
        }
        if self.hard.is_some() {
            sq.iter_mut().for_each(|v| *v = 0.0);
        }
        let to_scores = |v: &[f64]| -> Result<Scores> {
            let mut out = Scores::new();
            let mut at = 0;
            for t in &self.masked {
                let part: Vec<f32> = v[at..at + t.len].iter().map(|&x| x as f32).collect();
                out.insert(
                    t.name.clone(),
                    Tensor::from_vec(part, t.shape.as_slice(), &Device::Cpu)?,
                );
                at += t.len;
            }
            Ok(out)
        };
        Ok((to_scores(&mean)?, to_scores(&sq)?))
    }

    /// The posterior inclusion probabilities `q̂ₖ = (1/n) Σᵢ σ(sᵢₖ)` by logical name: the scores
    /// the final mask is read from.
    pub fn inclusion(&self) -> Result<Scores> {
        Ok(self.inclusion_moments()?.0)
    }

    /// The final mask: top-k of [`Dllp::inclusion`] by `allocation` (its sparsity, scope and
    /// exclusions).
    pub fn masks(&self, allocation: &Allocation) -> Result<MaskSet> {
        allocation.masks(&self.inclusion()?)
    }

    /// Mask uncertainty: for each particle, the fraction of the kept weights of `masks` that the
    /// particle's own mask (the top-k of its `σ(s)` by `allocation`) also keeps; the mean and
    /// standard deviation over particles (1 and 0: every particle agrees). Relaxed particles only.
    pub fn agreement(&self, masks: &MaskSet, allocation: &Allocation) -> Result<(f64, f64)> {
        if self.hard.is_some() {
            candle_core::bail!("dllp: agreement reads the relaxed masks; call it before `harden`");
        }
        let kept = masks.kept()? as f64;
        let mut fr = Vec::with_capacity(self.n);
        for i in 0..self.n {
            let logits = self.logits(i);
            let mut own = Scores::new();
            let mut at = 0;
            for t in &self.masked {
                let part: Vec<f32> = logits[at..at + t.len].iter().map(|&s| s as f32).collect();
                own.insert(
                    t.name.clone(),
                    Tensor::from_vec(part, t.shape.as_slice(), &Device::Cpu)?,
                );
                at += t.len;
            }
            let mine = allocation.masks(&own)?;
            let both = masks.intersect(&mine)?.kept()? as f64;
            fr.push(if kept > 0.0 { both / kept } else { 1.0 });
        }
        let n = fr.len() as f64;
        let mean = fr.iter().sum::<f64>() / n;
        let var = fr.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        Ok((mean, var.sqrt()))
    }

    /// Fixes the mask: each particle's weights become its effective weights with the hard mask,
    /// `w ← M ⊙ σ(s) ⊙ w`; the logits are dropped, and later steps move the kept weights only,
    /// from a fresh AdaGrad history. `masks` must cover exactly the tensors that carry mask
    /// variables.
    pub fn harden(&mut self, masks: &MaskSet) -> Result<()> {
        if self.hard.is_some() {
            candle_core::bail!("dllp: the particles are already hardened");
        }
        let mut hard = Vec::with_capacity(self.m);
        for t in &self.masked {
            let Some(mk) = masks.get(&t.name) else {
                candle_core::bail!("dllp: the mask set has no `{}`", t.name);
            };
            if mk.dims() != t.shape.as_slice() {
                candle_core::bail!(
                    "dllp: mask `{}` of shape {:?}, expected {:?}",
                    t.name,
                    mk.dims(),
                    t.shape
                );
            }
            hard.extend(mk.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?);
        }
        let d = self.layout.dim;
        let mut x = Vec::with_capacity(self.n * d);
        for i in 0..self.n {
            let mut theta = self.effective(i)?;
            for (k, j) in self.weight_index().into_iter().enumerate() {
                theta[j] *= hard[k];
            }
            x.extend(theta);
        }
        self.x = x;
        self.hard = Some(hard);
        self.stepper = AdagradMomentum::new(self.settings.step);
        Ok(())
    }

    /// The particles as parameter sets by name (their effective weights, in the store's dtypes).
    pub fn members(&self, store: &ParamStore) -> Result<Vec<ParamSample>> {
        (0..self.n)
            .map(|i| {
                let theta = self.effective(i)?;
                self.layout
                    .unflatten(&Tensor::from_slice(&theta, self.layout.dim, &Device::Cpu)?, store)
            })
            .collect()
    }

    /// The particles as a finite posterior (kind `dllp`): model averaging, entropy and mutual
    /// information over particles.
    pub fn posterior(&self, store: &ParamStore) -> Result<Ensemble> {
        Ensemble::named("dllp", self.members(store)?)
    }

    /// The state that resumes the run bit-identically: `particles` (`[n, d + m]`, or `[n, d]`
    /// once hardened), `anchor` (the dense weights `ŵ`, `[d]`), `history` after the first step,
    /// and `hard` (the hard mask, once hardened).
    pub fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        let dev = Device::Cpu;
        let row = self.row_len();
        let mut out = BTreeMap::new();
        out.insert(
            "particles".to_string(),
            Tensor::from_slice(&self.x, (self.n, row), &dev)?,
        );
        out.insert(
            "anchor".to_string(),
            Tensor::from_slice(&self.anchor, self.layout.dim, &dev)?,
        );
        if let Some(h) = &self.stepper.history {
            out.insert("history".to_string(), Tensor::from_slice(h, (self.n, row), &dev)?);
        }
        if let Some(hd) = &self.hard {
            out.insert("hard".to_string(), Tensor::from_slice(hd, self.m, &dev)?);
        }
        Ok(out)
    }

    /// Restores [`Dllp::state`] into particles made by [`Dllp::new`] with the same store,
    /// exclusions and settings; refuses shapes that do not match.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let hard = match state.get("hard") {
            Some(h) if h.dims() == [self.m] => Some(h.to_dtype(DType::F64)?.to_vec1::<f64>()?),
            Some(h) => candle_core::bail!("dllp state: hard mask of shape {:?}, expected [{}]", h.dims(), self.m),
            None => None,
        };
        let row = self.layout.dim + if hard.is_some() { 0 } else { self.m };
        let Some(p) = state.get("particles") else {
            candle_core::bail!("dllp state: no `particles`");
        };
        if p.dims() != [self.n, row] {
            candle_core::bail!(
                "dllp state: particles of shape {:?}, expected [{}, {row}]",
                p.dims(),
                self.n
            );
        }
        let history = match state.get("history") {
            Some(h) if h.dims() == p.dims() => Some(h.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?),
            Some(h) => candle_core::bail!("dllp state: history of shape {:?}, expected {:?}", h.dims(), p.dims()),
            None => None,
        };
        let anchor = match state.get("anchor") {
            Some(a) if a.dims() == [self.layout.dim] => a.to_dtype(DType::F64)?.to_vec1::<f64>()?,
            Some(a) => candle_core::bail!(
                "dllp state: anchor of shape {:?}, expected [{}]",
                a.dims(),
                self.layout.dim
            ),
            None => candle_core::bail!("dllp state: no `anchor`"),
        };
        self.x = p.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        self.anchor = anchor;
        self.hard = hard;
        self.stepper = AdagradMomentum::new(self.settings.step);
        self.stepper.history = history;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secateur_bayes::nn::{Linear, LinearCfg};
    use secateur_bayes::{Ctx, Init, Module, ParamBuilder, Sampling};

    /// A linear layer `in → out` (f64) with the given weight and bias.
    fn linear(in_dim: usize, out_dim: usize, bias: bool, weight: &[f64]) -> Result<(ParamStore, Linear)> {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F64, Device::Cpu);
        let lin = Linear::new(
            &pb.pp("fc"),
            LinearCfg {
                in_dim,
                out_dim,
                bias,
                init: Init::Const(0.0),
                bias_init: None,
            },
        )?;
        store.params()["fc.weight"].set(&Tensor::from_slice(weight, (out_dim, in_dim), &Device::Cpu)?)?;
        Ok((store, lin))
    }

    fn mse(lin: &Linear, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let mut rng = SeededRng::new(0);
        let mut ctx = Ctx::eval(&mut rng, Sampling::Mean);
        (lin.forward(x, &mut ctx)? - y)?.sqr()?.mean_all()
    }

    /// `∇ log p` in the stored coordinates against central differences of `log p`, relaxed and
    /// hardened, on a linear layer with bias (the bias has no mask variable).
    #[test]
    fn the_gradient_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let (store, lin) = linear(3, 2, true, &[0.3, -0.5, 0.8, 0.1, 0.4, -0.2])?;
        let mut rng = SeededRng::new(5);
        let x = rng.randn(&[7, 3], DType::F64, &dev)?;
        let y = rng.randn(&[7, 2], DType::F64, &dev)?;
        let settings = DllpSettings {
            particles: 3,
            jitter: 0.5,
            ..Default::default()
        };
        let mut dllp = Dllp::new(&store, &BTreeSet::new(), 0.7, settings, &mut rng)?;
        let mut loss = |_: &ParamStore| mse(&lin, &x, &y);
        for hardened in [false, true] {
            if hardened {
                let m = MaskSet::from_map(BTreeMap::from([(
                    "fc.weight".to_string(),
                    Tensor::from_slice(&[1f32, 0., 1., 1., 0., 1.], (2, 3), &dev)?,
                )]))?;
                dllp.harden(&m)?;
            }
            let g = dllp.grad_log_target(1, &store, 50, &mut loss)?;
            let x0 = dllp.particle(1);
            assert_eq!(g.len(), x0.len());
            for j in 0..x0.len() {
                let eps = 1e-5;
                let mut at = |v: f64| -> Result<f64> {
                    let mut r = x0.clone();
                    r[j] = v;
                    dllp.set_particle(1, &r)?;
                    dllp.log_target(1, &store, 50, &mut loss)
                };
                let fd = (at(x0[j] + eps)? - at(x0[j] - eps)?) / (2.0 * eps);
                dllp.set_particle(1, &x0)?;
                // a pruned weight is held: its coordinate has no gradient
                let off = dllp.masked[0].offset; // after `fc.bias` in name order
                let expect = if hardened && [off + 1, off + 4].contains(&j) {
                    0.0
                } else {
                    fd
                };
                assert!(
                    (g[j] - expect).abs() <= 1e-5 * (1.0 + fd.abs()),
                    "hardened {hardened}, coordinate {j}: analytic {} vs finite difference {fd}",
                    g[j]
                );
            }
        }
        Ok(())
    }

    /// With a loss that ignores the weights, the particles follow the prior alone:
    /// `w ~ N(ŵ, σ_w²)` and the logit `s ~ Logistic(logit(π)/τ, 1/τ)`, so `P(σ(s) > ½) = π`.
    /// 100 particles of one weight after 1500 steps (measured: mean of s −2.02 against −2.08,
    /// sd 2.58 against 2.72, 23% above zero against 20%; w 0.503 ± 0.091 against 0.5 ± 0.1):
    /// the means within 4 standard errors, the spreads within 25% (SVGD under-disperses).
    #[test]
    fn without_data_the_particles_follow_the_prior() -> Result<()> {
        let dev = Device::Cpu;
        let (store, lin) = linear(1, 1, false, &[0.5])?;
        let x = Tensor::zeros((4, 1), DType::F64, &dev)?;
        let y = Tensor::zeros((4, 1), DType::F64, &dev)?;
        let settings = DllpSettings {
            particles: 100,
            step: 0.02,
            mask_step: 0.5,
            init_keep: 0.5,
            jitter: 0.5,
            ..Default::default()
        };
        let (tau, sw, keep) = (settings.temperature, settings.weight_prior_std, 0.2);
        let mut dllp = Dllp::new(&store, &BTreeSet::new(), 1.0 - keep, settings, &mut SeededRng::new(1))?;
        for _ in 0..1500 {
            dllp.step(&store, 100, |_| mse(&lin, &x, &y))?;
        }
        let n = dllp.len() as f64;
        let rows: Vec<Vec<f64>> = (0..dllp.len()).map(|i| dllp.particle(i)).collect();
        let w: Vec<f64> = rows.iter().map(|r| r[0]).collect();
        let s: Vec<f64> = rows.iter().map(|r| r[1] * dllp.c).collect();
        let moments = |v: &[f64]| {
            let m = v.iter().sum::<f64>() / n;
            (m, (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt())
        };
        let (mw, sdw) = moments(&w);
        let (ms, sds) = moments(&s);
        let (loc, sd_s) = (logit(keep) / tau, std::f64::consts::PI / 3f64.sqrt() / tau);
        let above = s.iter().filter(|&&v| v > 0.0).count() as f64 / n;
        eprintln!("w: {mw:.4} ± {sdw:.4}; s: {ms:.3} ± {sds:.3} (prior {loc:.3} ± {sd_s:.3}); above 0: {above:.2}");
        assert!((mw - 0.5).abs() < 4.0 * sw / n.sqrt(), "w mean {mw}");
        assert!((sdw / sw - 1.0).abs() < 0.25, "w sd {sdw}");
        assert!((ms - loc).abs() < 4.0 * sd_s / n.sqrt(), "s mean {ms} vs {loc}");
        assert!((sds / sd_s - 1.0).abs() < 0.25, "s sd {sds} vs {sd_s}");
        assert!(
            (above - keep).abs() < 4.0 * (keep * (1.0 - keep) / n).sqrt(),
            "P(s > 0) = {above}"
        );
        Ok(())
    }

    /// The inclusion comes from the data, not the magnitude: `y = 0.1 x₁` with the second input
    /// always 0, dense weights `(0.1, 5.0)`. Magnitude would keep the useless 5.0; at sparsity ½
    /// DLLP keeps the small weight the loss needs (measured: inclusion 0.90 ± 0.07 against
    /// 0.52 ± 0.28, the second at its prior's ½), and the hardened particles fit `y = 0.1 x₁`.
    #[test]
    fn it_keeps_the_weight_the_loss_needs_not_the_largest() -> Result<()> {
        let dev = Device::Cpu;
        let (store, lin) = linear(2, 1, false, &[0.1, 5.0])?;
        let mut rng = SeededRng::new(2);
        let x1 = rng.randn(&[64, 1], DType::F64, &dev)?;
        let x = Tensor::cat(&[&x1, &x1.zeros_like()?], 1)?;
        let y = x1.affine(0.1, 0.0)?;
        let settings = DllpSettings {
            particles: 8,
            ..Default::default()
        };
        let mut dllp = Dllp::new(&store, &BTreeSet::new(), 0.5, settings, &mut rng)?;
        for _ in 0..300 {
            // the noise scale of the Gaussian likelihood: 0.01
            dllp.step(&store, 64, |_| mse(&lin, &x, &y)? / (2.0 * 1e-4))?;
        }
        let (q, sd) = dllp.inclusion_moments()?;
        let q = q["fc.weight"].flatten_all()?.to_vec1::<f32>()?;
        let sd = sd["fc.weight"].flatten_all()?.to_vec1::<f32>()?;
        eprintln!("inclusion {q:?} ± {sd:?}");
        let alloc = Allocation::global(0.5);
        let masks = dllp.masks(&alloc)?;
        assert_eq!(
            masks.get("fc.weight").unwrap().flatten_all()?.to_vec1::<f32>()?,
            [1., 0.]
        );
        assert!(q[0] > q[1], "inclusion {q:?}");
        // the useless weight's logit follows its prior (inclusion ½, wide), so some particles
        // rank it first: the agreement is the fraction of particles with s₁ > s₂
        let by_hand: Vec<f64> = (0..dllp.len())
            .map(|i| {
                if dllp.logits(i)[0] > dllp.logits(i)[1] {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let mean = by_hand.iter().sum::<f64>() / by_hand.len() as f64;
        let (agree, spread) = dllp.agreement(&masks, &alloc)?;
        assert_eq!(agree, mean);
        // one weight kept of two: a particle ranking them at random would agree half the time;
        // the loss pushes the needed weight's logit up, so most particles rank it first
        assert!(mean > 0.5 && spread > 0.0, "agreement {agree} ± {spread}");
        // hardened, the particles are networks of that mask that fit y = 0.1 x₁
        dllp.harden(&masks)?;
        let post = dllp.posterior(&store)?;
        for w in dllp.members(&store)? {
            let w = w["fc.weight"].flatten_all()?.to_vec1::<f64>()?;
            assert_eq!(w[1], 0.0);
            assert!((w[0] - 0.1).abs() < 0.02, "kept weight {}", w[0]);
        }
        assert_eq!(secateur_inference::posterior::Posterior::kind(&post), "dllp");
        Ok(())
    }

    /// A hardened run keeps its pruned weights at exactly zero through further steps, and
    /// `state`/`load_state` resume it bit-identically (relaxed and hardened).
    #[test]
    fn state_resumes_bit_identically_and_pruned_weights_stay_zero() -> Result<()> {
        let dev = Device::Cpu;
        let (store, lin) = linear(3, 2, true, &[0.3, -0.5, 0.8, 0.1, 0.4, -0.2])?;
        let mut rng = SeededRng::new(9);
        let x = rng.randn(&[16, 3], DType::F64, &dev)?;
        let y = rng.randn(&[16, 2], DType::F64, &dev)?;
        let make = || {
            let settings = DllpSettings {
                particles: 4,
                ..Default::default()
            };
            Dllp::new(&store, &BTreeSet::new(), 0.5, settings, &mut SeededRng::new(4))
        };
        let mut a = make()?;
        let loss = |_: &ParamStore| mse(&lin, &x, &y);
        for _ in 0..5 {
            a.step(&store, 100, loss)?;
        }
        let alloc = Allocation::global(0.5);
        let masks = a.masks(&alloc)?;
        let mut b = make()?;
        b.load_state(&a.state()?)?;
        assert_eq!(a.particle(2), b.particle(2));
        assert_eq!(a.stepper.history, b.stepper.history);
        a.harden(&masks)?;
        b.harden(&masks)?;
        assert_eq!(a.particle(2), b.particle(2));
        a.step(&store, 100, loss)?;
        b.step(&store, 100, loss)?;
        assert_eq!(a.particle(2), b.particle(2), "first hardened step");
        for _ in 0..3 {
            a.step(&store, 100, loss)?;
        }
        let mut c = make()?;
        c.load_state(&a.state()?)?;
        for _ in 0..3 {
            b.step(&store, 100, loss)?;
        }
        a.step(&store, 100, loss)?;
        c.step(&store, 100, loss)?;
        b.step(&store, 100, loss)?;
        for i in 0..4 {
            assert_eq!(a.particle(i), b.particle(i));
            assert_eq!(a.particle(i), c.particle(i));
        }
        let m = masks.get("fc.weight").unwrap().flatten_all()?.to_vec1::<f32>()?;
        for member in a.members(&store)? {
            let w = member["fc.weight"].flatten_all()?.to_vec1::<f64>()?;
            for (wv, mv) in w.iter().zip(&m) {
                if *mv == 0.0 {
                    assert_eq!(*wv, 0.0);
                }
            }
        }
        Ok(())
    }
}
