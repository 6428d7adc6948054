//! Second-order criteria by double backpropagation: Hessian–vector products, the Hutchinson
//! diagonal (HP, HTS) and GraSP.
//!
//! **Double backpropagation in candle.** `Hv = ∇_θ (∇_θ L · v)` needs the first gradient to keep
//! its graph. candle detaches gradients unless the environment variable
//! `CANDLE_GRAD_DO_NOT_DETACH=1` is set when a thread runs its **first** backward pass (it is
//! read once per thread into a thread-local). A program that computes second-order scores must
//! therefore call [`enable_double_backprop`] (or set the variable) before any backward pass of
//! the scoring thread — for instance at the start of `main`, or on a fresh thread. Every function
//! here first checks with [`require_double_backprop`] and refuses with an error saying so instead
//! of silently returning zeros. Every op of secateur's models is twice differentiable (the
//! convolution and pooling kernels of `secateur-kernels` are closed under differentiation).

use crate::criterion::{axpy, grads_of, mean_gradient, zeros_like, Criterion, Loss, ScoringContext};
use crate::mask::Scores;
use candle_core::{DType, Device, Result, Tensor, Var};

/// Sets `CANDLE_GRAD_DO_NOT_DETACH=1` for this process. It takes effect on threads that have
/// not yet run a backward pass (candle reads it once per thread); call it before any other
/// thread reads or writes the environment (e.g. first thing in `main`).
pub fn enable_double_backprop() {
    std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1");
}

/// Whether this thread's backward passes keep the graph of the gradients, probed with
/// `f = (x²)²`, `f'' = 12x² = 27` at `x = 1.5`. (A detached run gives `4x² = 9`: candle detaches
/// only the gradient flowing into each node, so products with the node's inputs still carry
/// part of the graph and a wrong second derivative comes out instead of none.) The probe is
/// itself a backward pass: on a thread that has run none, it fixes the thread's setting from
/// the environment as it is now.
pub fn double_backprop_enabled() -> bool {
    let probe = || -> Result<bool> {
        let x = Var::new(&[1.5f64], &Device::Cpu)?;
        let g = x.as_tensor().sqr()?.sqr()?.sum_all()?.backward()?;
        let Some(gx) = g.get(x.as_tensor()) else {
            return Ok(false);
        };
        let h = gx.sum_all()?.backward()?;
        Ok(match h.get(x.as_tensor()) {
            Some(t) => (t.to_vec1::<f64>()?[0] - 27.0).abs() < 1e-9,
            None => false,
        })
    };
    probe().unwrap_or(false)
}

/// An error unless [`double_backprop_enabled`], naming the environment variable.
pub fn require_double_backprop(what: &str) -> Result<()> {
    if double_backprop_enabled() {
        Ok(())
    } else {
        candle_core::bail!(
            "{what} needs Hessian-vector products by double backpropagation: set CANDLE_GRAD_DO_NOT_DETACH=1 \
             (secateur_pruning::criteria::enable_double_backprop) before this thread's first backward pass"
        )
    }
}

/// `Σ_k ⟨a_k, b_k⟩` over the names of `b` (a scalar, differentiable in `a`).
fn dot(a: &Scores, b: &Scores) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for (k, bv) in b {
        let av = a
            .get(k)
            .ok_or_else(|| candle_core::Error::Msg(format!("internal: no gradient for `{k}`")))?;
        let d = secateur_kernels::inner::inner(av, &bv.to_dtype(av.dtype())?)?;
        acc = Some(match acc {
            None => d,
            Some(s) => (s + d)?,
        });
    }
    match acc {
        Some(s) => Ok(s),
        None => Tensor::zeros((), DType::F32, &Device::Cpu),
    }
}

/// The gradient of each target with its graph kept (zeros without graph where a target has
/// no gradient).
fn grads_with_graph(cx: &mut ScoringContext, loss: &Loss, x: &Tensor, y: &Tensor) -> Result<Scores> {
    let targets = cx.targets();
    let g = cx.loss(loss, x, y)?.backward()?;
    targets
        .iter()
        .map(|(k, v)| {
            let t = match g.get(v.as_tensor()) {
                Some(t) => t.clone(),
                None => v.as_tensor().zeros_like()?,
            };
            Ok((k.clone(), t))
        })
        .collect()
}

/// Hessian–vector product `H v` of the mean loss over the scoring data,
/// `H = Σ_b (n_b / N) ∇²L_b`, restricted to the prunable tensors (`v` and the result are keyed by
/// logical name), by double backpropagation: `H v = ∇_θ (∇_θ L · v)` (Pearlmutter 1994).
pub fn hvp(cx: &mut ScoringContext, loss: &Loss, v: &Scores) -> Result<Scores> {
    require_double_backprop("a Hessian-vector product")?;
    loss.validate()?;
    let data = cx.data("hessian-vector product")?;
    let targets = cx.targets();
    let mut acc = zeros_like(&targets)?;
    let n = data.len() as f64;
    for b in 0..data.num_batches() {
        let (x, y) = data.batch(b)?;
        let g = grads_with_graph(cx, loss, &x, &y)?;
        let hv = dot(&g, v)?.backward()?;
        axpy(&mut acc, x.dims()[0] as f64 / n, &grads_of(&targets, &hv)?)?;
    }
    Ok(acc)
}

/// `(diag(H), ḡ)`: Hutchinson's estimate of the Hessian diagonal of the mean loss,
/// `diag(H) ≈ Σ_b (n_b/N) (1/P) Σ_p z_p ⊙ H_b z_p` with Rademacher probes `z_p` drawn from the
/// context's generator (per batch, per probe, per tensor in sorted name order; Bekas, Kokiopoulou
/// & Saad 2007), and the mean gradient `ḡ` from the same backward passes. Unbiased:
/// `E[z ⊙ Hz]_i = H_ii`, with variance `Σ_{j≠i} H_ij²` per probe.
pub fn hutchinson_diagonal(cx: &mut ScoringContext, loss: &Loss, probes: usize) -> Result<(Scores, Scores)> {
    require_double_backprop("the Hutchinson diagonal")?;
    loss.validate()?;
    if probes == 0 {
        candle_core::bail!("hutchinson: field `probes` must be at least 1");
    }
    let data = cx.data("hutchinson")?;
    let targets = cx.targets();
    let (mut diag, mut gbar) = (zeros_like(&targets)?, zeros_like(&targets)?);
    let n = data.len() as f64;
    for b in 0..data.num_batches() {
        let (x, y) = data.batch(b)?;
        let w = x.dims()[0] as f64 / n;
        let g = grads_with_graph(cx, loss, &x, &y)?;
        let detached: Scores = g.iter().map(|(k, t)| (k.clone(), t.detach())).collect();
        axpy(&mut gbar, w, &detached)?;
        for _ in 0..probes {
            let mut z = Scores::new();
            for (k, v) in &targets {
                z.insert(k.clone(), cx.rng.rademacher(v.dims(), v.dtype(), v.device())?);
            }
            let hz = grads_of(&targets, &dot(&g, &z)?.backward()?)?;
            let zhz: Scores = z
                .iter()
                .map(|(k, zk)| Ok((k.clone(), zk.mul(&hz[k])?)))
                .collect::<Result<_>>()?;
            axpy(&mut diag, w / probes as f64, &zhz)?;
        }
    }
    Ok((diag, gbar))
}

/// Which score [`Hutchinson`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HessianScore {
    /// The estimated diagonal `diag(H)`.
    Diagonal,
    /// `HP = θ² ⊙ diag(H) / 2`, signed (negative curvature ranks lowest; Gollini Navarrete et al.
    /// 2025; the OBD saliency of LeCun, Denker & Solla 1990).
    Hp,
    /// `HTS = |θ ⊙ ḡ + θ² ⊙ diag(H) / 2|` (Gollini Navarrete et al. 2025).
    Hts,
}

/// Hutchinson second-order scores (Gollini Navarrete, Cuadrado Ávila, Takáč & Horváth 2025):
/// [`hutchinson_diagonal`] with `P` probes (10 in the reference) on the loss at `T = 200`; the
/// score is chosen by [`HessianScore`] (`ḡ` at the same temperature).
#[derive(Debug, Clone, Copy)]
pub struct Hutchinson {
    /// The loss (`T = 200`).
    pub loss: Loss,
    /// Rademacher probes per batch (10).
    pub probes: usize,
    /// Which score.
    pub score: HessianScore,
}

impl Hutchinson {
    /// The score `score` with the reference's defaults (`T = 200`, 10 probes).
    pub fn new(score: HessianScore) -> Self {
        Self {
            loss: Loss::with_temperature(200.0),
            probes: 10,
            score,
        }
    }
}

impl Criterion for Hutchinson {
    fn name(&self) -> &str {
        match self.score {
            HessianScore::Diagonal => "hutchinson",
            HessianScore::Hp => "hp",
            HessianScore::Hts => "hts",
        }
    }
    fn score(&self, cx: &mut ScoringContext) -> Result<Scores> {
        let (diag, gbar) = hutchinson_diagonal(cx, &self.loss, self.probes)?;
        let mut out = Scores::new();
        for (k, v) in cx.targets() {
            let th = v.as_tensor();
            let half = (th.sqr()?.mul(&diag[&k])? * 0.5)?;
            let s = match self.score {
                HessianScore::Diagonal => diag[&k].clone(),
                HessianScore::Hp => half,
                HessianScore::Hts => (th.mul(&gbar[&k])? + half)?.abs()?,
            };
            out.insert(k, s);
        }
        Ok(out)
    }
}

/// GraSP, gradient signal preservation (Wang, Zhang & Grosse 2020): the paper's score is
/// `S(−θ) = −θ ⊙ H g` with `g = ∇L` and `H = ∇²L` of the loss at `T = 200`, and it removes the
/// weights with the **highest** `S` (their removal reduces the gradient flow least). In this
/// crate's convention (higher = kept) the returned score is therefore `−S = θ ⊙ H g`, as in
/// Tanaka et al.'s (2020) implementation. `g` is the mean gradient over the scoring data (first
/// pass), `H g` the Hessian–vector product over the same data (second pass, [`hvp`]).
#[derive(Debug, Clone, Copy)]
pub struct Grasp {
    /// The loss (`T = 200`).
    pub loss: Loss,
}

impl Default for Grasp {
    fn default() -> Self {
        Self {
            loss: Loss::with_temperature(200.0),
        }
    }
}

impl Criterion for Grasp {
    fn name(&self) -> &str {
        "grasp"
    }
    fn score(&self, cx: &mut ScoringContext) -> Result<Scores> {
        require_double_backprop("grasp")?;
        let g = mean_gradient(cx, &self.loss)?;
        let hg = hvp(cx, &self.loss, &g)?;
        cx.targets()
            .into_iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().mul(&hg[&k])?)))
            .collect()
    }
}
