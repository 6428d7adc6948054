//! Second-order criteria: Hessian–vector products by double backpropagation, the Hutchinson
//! diagonal (HP, HTS), GraSP, and the exact generalised Gauss–Newton diagonal (`ggn`,
//! `hp-ggn`, `hts-ggn`).
//!
//! **Double backpropagation in candle.** `Hv = ∇_θ (∇_θ L · v)` needs the first gradient to keep
//! its graph, which candle only does for a process started with `CANDLE_GRAD_DO_NOT_DETACH=1`
//! (see [`secateur_kernels::double_backprop`]). Every function here that needs it first checks
//! with [`require`] and refuses with an error saying so instead of silently returning a wrong
//! Hessian. Every op of secateur's models is twice differentiable (the convolution and pooling
//! kernels of `secateur-kernels` are closed under differentiation). The Gauss–Newton diagonal
//! needs only first-order backward passes and works in any process.
//!
//! **Which weights enter `g` and `Hg`.** The gradient and the Hessian are taken over the
//! prunable weights only (biases and batch-norm parameters are held fixed), as the reference code
//! of Synaptic-Flow (Tanaka et al. 2020) does for GraSP; with biases in `g` and `H`, GraSP's
//! scores differ by a few per cent.

use crate::criterion::{axpy, grads_of, mean_gradient, zeros_like, Criterion, Loss, ScoringContext};
use crate::mask::Scores;
use candle_core::{DType, Device, Result, Tensor};
use secateur_kernels::double_backprop::require;

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
    require("a Hessian-vector product")?;
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
/// `diag(H) ≈ Σ_b (n_b/N) (1/P) Σ_p z_p ⊙ H_b z_p`, over Hessian batches `b` of `batch_size`
/// examples (the scoring data's own batching is not used), with `P` Rademacher probes `z_p` per
/// batch drawn from the context's generator (per batch, per probe, per tensor in sorted name
/// order; Bekas, Kokiopoulou & Saad 2007), and the mean gradient `ḡ` from the same backward
/// passes. Unbiased: `E[z ⊙ Hz]_i = H_ii`, with variance `Σ_{j≠i} (H_b)_ij²` per probe.
///
/// The reference implementation of Gollini Navarrete et al. (2025) scores with batch size 1:
/// 10 probes on each of the 100 scoring examples, 1,000 probes in all, each on a per-example
/// Hessian ([`HutchinsonOptions::default`]). One batch of 100 examples with 10 probes costs a
/// hundredth as much and is mostly noise at `T = 200` (see `results/pai/README.md`).
pub fn hutchinson_diagonal(cx: &mut ScoringContext, loss: &Loss, opts: &HutchinsonOptions) -> Result<(Scores, Scores)> {
    require("the Hutchinson diagonal")?;
    loss.validate()?;
    opts.validate()?;
    let data = cx.data("hutchinson")?;
    let targets = cx.targets();
    let (mut diag, mut gbar) = (zeros_like(&targets)?, zeros_like(&targets)?);
    let n = data.len();
    let mut start = 0;
    while start < n {
        let len = opts.batch_size.min(n - start);
        let x = data.inputs.narrow(0, start, len)?;
        let y = data.labels.narrow(0, start, len)?;
        start += len;
        let w = len as f64 / n as f64;
        let g = grads_with_graph(cx, loss, &x, &y)?;
        let detached: Scores = g.iter().map(|(k, t)| (k.clone(), t.detach())).collect();
        axpy(&mut gbar, w, &detached)?;
        for _ in 0..opts.probes {
            let mut z = Scores::new();
            for (k, v) in &targets {
                z.insert(k.clone(), cx.rng.rademacher(v.dims(), v.dtype(), v.device())?);
            }
            let hz = grads_of(&targets, &dot(&g, &z)?.backward()?)?;
            let zhz: Scores = z
                .iter()
                .map(|(k, zk)| Ok((k.clone(), zk.mul(&hz[k])?)))
                .collect::<Result<_>>()?;
            axpy(&mut diag, w / opts.probes as f64, &zhz)?;
        }
    }
    Ok((diag, gbar))
}

/// How [`hutchinson_diagonal`] batches examples and draws probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HutchinsonOptions {
    /// Examples per Hessian batch (1: a probe per example, as the reference).
    pub batch_size: usize,
    /// Rademacher probes per batch (10).
    pub probes: usize,
}

impl Default for HutchinsonOptions {
    /// The reference's shape: batch size 1, 10 probes per example.
    fn default() -> Self {
        Self {
            batch_size: 1,
            probes: 10,
        }
    }
}

impl HutchinsonOptions {
    /// Checks both fields are at least 1.
    pub fn validate(&self) -> Result<()> {
        if self.probes == 0 {
            candle_core::bail!("hutchinson: field `probes` must be at least 1");
        }
        if self.batch_size == 0 {
            candle_core::bail!("hutchinson: field `batch_size` must be at least 1");
        }
        Ok(())
    }
}

/// `(diag(G), ḡ)`: the exact diagonal of the generalised Gauss–Newton matrix of the mean loss
/// (Schraudolph 2002), `G = (1/N) Σ_n J_nᵀ Λ_n J_n`, `J_n = ∂f(x_n)/∂θ` the Jacobian of the
/// logits and `Λ_n = ∂²L/∂f² = (diag(p) − p pᵀ) / T²` the softmax cross-entropy's Hessian in the
/// logits, `p = softmax(f / T)`. With the symmetric factorisation `Λ = A Aᵀ`, column
/// `a_c = √p_c (e_c − p) / T` (since `Σ_c p_c = 1`), the diagonal is exact:
/// `diag(G) = (1/N) Σ_n Σ_c (J_nᵀ a_{n,c})²`, one forward pass and `C` backward passes of the
/// scalar `a_{n,c} · f(x_n)` per example (plus one for the gradient `ḡ`).
///
/// For networks made of ReLU, max-pooling, convolution, linear layers and batch norm in
/// evaluation mode, the logits are linear in each single weight, so the second term of the
/// Hessian, `Σ_k ∂L/∂f_k ∂²f_k/∂θ_i²`, vanishes on the diagonal and `diag(G) = diag(H)`
/// exactly (Martens 2020, "New insights and perspectives on the natural gradient method").
/// No double backpropagation is needed.
pub fn ggn_diagonal(cx: &mut ScoringContext, loss: &Loss) -> Result<(Scores, Scores)> {
    loss.validate()?;
    let data = cx.data("ggn")?;
    let targets = cx.targets();
    let (mut diag, mut gbar) = (zeros_like(&targets)?, zeros_like(&targets)?);
    let n = data.len();
    let w = 1.0 / n as f64;
    let t = loss.temperature;
    for i in 0..n {
        let (x, y) = data.example(i)?;
        let logits = cx.forward(&x)?;
        let l = loss.on_logits(&logits, &y)?;
        axpy(&mut gbar, w, &grads_of(&targets, &l.backward()?)?)?;
        let p = softmax(
            &logits.detach().to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?,
            t,
        );
        let classes = p.len();
        for c in 0..classes {
            let a: Vec<f64> = (0..classes)
                .map(|k| p[c].sqrt() * (f64::from(u8::from(k == c)) - p[k]) / t)
                .collect();
            let a = Tensor::from_vec(a, (1, classes), logits.device())?.to_dtype(logits.dtype())?;
            let jta = grads_of(&targets, &(&logits * a)?.sum_all()?.backward()?)?;
            let sq: Scores = jta
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.sqr()?)))
                .collect::<Result<_>>()?;
            axpy(&mut diag, w, &sq)?;
        }
    }
    Ok((diag, gbar))
}

/// `softmax(f / t)` of one example's logits, in f64 (max subtracted).
fn softmax(f: &[f64], t: f64) -> Vec<f64> {
    let m = f.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b / t));
    let e: Vec<f64> = f.iter().map(|&v| (v / t - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|v| v / z).collect()
}

/// Which score the diagonal criteria ([`Hutchinson`], [`Ggn`]) return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HessianScore {
    /// The diagonal `diag(H)` itself.
    Diagonal,
    /// `HP = θ² ⊙ diag(H) / 2`, signed (negative curvature ranks lowest; Gollini Navarrete et al.
    /// 2025; the OBD saliency of LeCun, Denker & Solla 1990).
    Hp,
    /// `HTS = |θ ⊙ ḡ + θ² ⊙ diag(H) / 2|` (Gollini Navarrete et al. 2025).
    Hts,
}

impl HessianScore {
    /// The scores of every target from a curvature diagonal `d` and the mean gradient `ḡ`: `d`,
    /// `θ² ⊙ d / 2` or `|θ ⊙ ḡ + θ² ⊙ d / 2|` (also the Fisher scores, with `d = F`).
    pub(crate) fn scores(self, cx: &ScoringContext, diag: &Scores, gbar: &Scores) -> Result<Scores> {
        let mut out = Scores::new();
        for (k, v) in cx.targets() {
            let th = v.as_tensor();
            let half = (th.sqr()?.mul(&diag[&k])? * 0.5)?;
            let s = match self {
                HessianScore::Diagonal => diag[&k].clone(),
                HessianScore::Hp => half,
                HessianScore::Hts => (th.mul(&gbar[&k])? + half)?.abs()?,
            };
            out.insert(k, s);
        }
        Ok(out)
    }
}

/// Hutchinson second-order scores (Gollini Navarrete, Cuadrado Ávila, Takáč & Horváth 2025):
/// [`hutchinson_diagonal`] with the reference's 10 probes per example on the loss at `T = 200`;
/// the score is chosen by [`HessianScore`] (`ḡ` at the same temperature).
#[derive(Debug, Clone, Copy)]
pub struct Hutchinson {
    /// The loss (`T = 200`).
    pub loss: Loss,
    /// Hessian batch size and probes per batch (1 and 10).
    pub options: HutchinsonOptions,
    /// Which score.
    pub score: HessianScore,
}

impl Hutchinson {
    /// The score `score` with the reference's defaults (`T = 200`, batch size 1, 10 probes).
    pub fn new(score: HessianScore) -> Self {
        Self {
            loss: Loss::with_temperature(200.0),
            options: HutchinsonOptions::default(),
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
        let (diag, gbar) = hutchinson_diagonal(cx, &self.loss, &self.options)?;
        self.score.scores(cx, &diag, &gbar)
    }
}

/// The HP and HTS scores of Gollini Navarrete et al. (2025) on the **exact** Gauss–Newton
/// diagonal ([`ggn_diagonal`]) instead of Hutchinson's estimate, at the same `T = 200`: `ggn`,
/// `hp-ggn`, `hts-ggn`. For ReLU/max-pool networks this is the exact Hessian diagonal (a
/// criterion beyond the paper, which only estimates it).
#[derive(Debug, Clone, Copy)]
pub struct Ggn {
    /// The loss (`T = 200`).
    pub loss: Loss,
    /// Which score.
    pub score: HessianScore,
}

impl Ggn {
    /// The score `score` at `T = 200`.
    pub fn new(score: HessianScore) -> Self {
        Self {
            loss: Loss::with_temperature(200.0),
            score,
        }
    }
}

impl Criterion for Ggn {
    fn name(&self) -> &str {
        match self.score {
            HessianScore::Diagonal => "ggn",
            HessianScore::Hp => "hp-ggn",
            HessianScore::Hts => "hts-ggn",
        }
    }
    fn score(&self, cx: &mut ScoringContext) -> Result<Scores> {
        let (diag, gbar) = ggn_diagonal(cx, &self.loss)?;
        self.score.scores(cx, &diag, &gbar)
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
        require("grasp")?;
        let g = mean_gradient(cx, &self.loss)?;
        let hg = hvp(cx, &self.loss, &g)?;
        cx.targets()
            .into_iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().mul(&hg[&k])?)))
            .collect()
    }
}
