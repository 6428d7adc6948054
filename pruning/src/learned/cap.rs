//! CAP, instance-complexity-aware pruning (Wang, Ma & Yu 2022, "CAP: instance complexity-aware
//! network pruning", arXiv 2209.03534; retitled "CWP: instance complexity weighted channel-wise
//! soft masks for network pruning"): differentiable, sample-specific soft masks on the channels
//! of every prunable layer, a filter importance from their sum weighted by each example's
//! complexity (hard examples weigh more), and a polarisation regulariser that drives the
//! importances to 0 or up, so that the cut point is clear.
//!
//! **A reconstruction.** Only the abstract is public (no code found). It fixes: soft masks that
//! depend on the example and sit behind the channels, complexity weights that grow with the
//! example's difficulty, the importance as their weighted sum, and a polarisation regulariser.
//! These choices are ours:
//! - **The masks.** Behind every structured group's channels (the outputs of a layer of
//!   [`crate::structured`] after its batch norm and activation), at the input of the layer that
//!   reads them: `m(x) = σ(W_g · GAP(h) + b_g) ∈ (0, 1)^C`, where `h` is that input reshaped to
//!   `[C, rest]` and `GAP` its mean over `rest` (the spatial positions, or a flatten's block),
//!   a squeeze-and-excitation-style gate without bottleneck (Hu et al. 2018). `W_g = 0` and
//!   `b_g = 3` at the start (`m ≈ 0.95`, the same for every example), so that training starts
//!   from the dense network. ([`CapGated`], made by [`CapFactory`].)
//! - **Instance complexity.** The example's cross-entropy `ℓ(x)` (not differentiated), as a
//!   weight normalised to mean 1 over the batch: `w(x) = ℓ(x) / mean_B ℓ`.
//! - **Importance.** Per channel, `I_c = mean_B w(x) m_c(x)` in training (the complexity-weighted
//!   mean mask), and `I_c = Σ_x ℓ(x) m_c(x) / Σ_x ℓ(x)` over the training set for the cut
//!   ([`channel_statistics`]). Since `m ≤ 1`, `I_c` bounds how much the channel passes, which is
//!   how we read the abstract's "upper bound".
//! - **Polarisation.** Zhuang et al.'s regulariser (NeurIPS 2020), on the importances of all
//!   `n` gated channels of the network and normalised by `n`:
//!   `R = (1/n) (t Σ_c I_c − Σ_c |I_c − Ī|)`, `Ī` the mean over all of them; it pushes the
//!   channels below the mean down harder (`t + 1`) than those above (`t − 1`). The loss is
//!   `mean ℓ + λ R` ([`CapObjective`]; `λ`, `t`: [`CapConfig`]).
//! - **The cut.** After training, the channels with `I_c < τ` ([`CapConfig::threshold`], 0.5)
//!   are removed (the one of largest importance is kept in a layer that would lose all). The
//!   network then becomes static: each kept channel's mask is replaced by its mean over the
//!   training set, folded into the reading layer's weights (`W[:, c] ← W[:, c] · E[m_c]`), and the
//!   gates are dropped ([`static_tensors`]); the plain network is compacted and fine-tuned.

use crate::structured::{Coupling, StructuredMask};
use candle_core::{DType, Result, Tensor, D};
use secateur_bayes::nn::{Conv2dCfg, LinearCfg};
use secateur_bayes::{Ctx, Init, Module, ParamBuilder, ParamStore, Sampling, SeededRng};
use secateur_inference::likelihood::Likelihood;
use secateur_inference::objective::{BatchLoss, ObjectiveContext, TrainingObjective};
use secateur_models::{Deterministic, LayerFactory};
use std::collections::{BTreeMap, HashMap};

/// Leaf name of a gate's weight `W_g` (`[C, C]`), under the reading layer's path.
pub const GATE_WEIGHT: &str = "cap_gate_weight";
/// Leaf name of a gate's bias `b_g` (`[C]`).
pub const GATE_BIAS: &str = "cap_gate_bias";

/// The hyper-parameters of CAP (see the [module documentation](self)).
///
/// ```
/// use secateur_pruning::learned::cap::CapConfig;
/// assert!(CapConfig::default().validate().is_ok());
/// assert!(CapConfig { t: 0.5, ..Default::default() }.validate().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapConfig {
    /// Weight `λ ≥ 0` of the polarisation regulariser. Default 0.2.
    pub lambda: f64,
    /// Zhuang et al.'s `t ≥ 1` (how hard importances are pushed down). Default 1.2.
    pub t: f64,
    /// Channels whose importance is below `τ ∈ (0, 1)` are cut. Default 0.5.
    pub threshold: f64,
    /// Initial gate bias `b_g` (the masks start at `σ(b_g)`). Default 3.
    pub gate_init: f64,
}

impl Default for CapConfig {
    fn default() -> Self {
        Self {
            lambda: 0.2,
            t: 1.2,
            threshold: 0.5,
            gate_init: 3.0,
        }
    }
}

impl CapConfig {
    /// Refuses impossible values, naming the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            candle_core::bail!("cap lambda must be finite and >= 0, got {}", self.lambda);
        }
        if !(self.t.is_finite() && self.t >= 1.0) {
            candle_core::bail!("cap t must be finite and >= 1, got {}", self.t);
        }
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            candle_core::bail!("cap threshold must be in (0, 1), got {}", self.threshold);
        }
        if !self.gate_init.is_finite() {
            candle_core::bail!("cap gate_init must be finite, got {}", self.gate_init);
        }
        Ok(())
    }
}

/// `σ(z) = 1 / (1 + e^{−z})`, computed as `(1 + tanh(z/2)) / 2`, whose gradient stays finite
/// where `e^{−z}` overflows.
fn sigmoid(z: &Tensor) -> Result<Tensor> {
    (z * 0.5)?.tanh()?.affine(0.5, 0.5)
}

/// A layer whose input channels pass through sample-specific soft masks
/// `m(x) = σ(W_g · GAP(h) + b_g)` (see the [module documentation](self)).
pub struct CapGated {
    /// The layer that reads the channels.
    pub inner: Box<dyn Module>,
    /// `W_g`, `[C, C]`.
    pub gate_weight: Tensor,
    /// `b_g`, `[C]`.
    pub gate_bias: Tensor,
    /// The layer's path (its masks' name in [`Ctx::taps`]).
    pub path: String,
}

impl CapGated {
    /// The masks `[B, C]` of the input `x` (`[B, C·rest]` or `[B, C, H, W]`).
    pub fn masks(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.gate_bias.dim(0)?;
        let pooled = x.reshape((x.dim(0)?, c, ()))?.mean(2)?;
        sigmoid(&pooled.matmul(&self.gate_weight.t()?)?.broadcast_add(&self.gate_bias)?)
    }
}

impl Module for CapGated {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let m = self.masks(x)?;
        if let Some(taps) = ctx.taps.as_mut() {
            taps.push((self.path.clone(), m.clone()));
        }
        let (b, c) = m.dims2()?;
        let y = x
            .reshape((b, c, ()))?
            .broadcast_mul(&m.unsqueeze(2)?)?
            .reshape(x.dims())?;
        self.inner.forward(&y, ctx)
    }
}

/// Makes plain deterministic layers, those reading gated channels (by path, with the channel
/// count) wrapped in [`CapGated`].
#[derive(Debug, Clone)]
pub struct CapFactory {
    gated: BTreeMap<String, usize>,
    gate_init: f64,
}

impl CapFactory {
    /// `gated`: path of every layer that reads a structured group's channels → the channels.
    pub fn new(gated: BTreeMap<String, usize>, gate_init: f64) -> Self {
        Self { gated, gate_init }
    }

    /// The layers that read the channels of `coupling`'s groups, with their channel counts.
    pub fn readers(coupling: &Coupling) -> BTreeMap<String, usize> {
        coupling
            .layers
            .iter()
            .map(|l| (l.consumer.name.trim_end_matches(".weight").to_string(), l.groups))
            .collect()
    }

    fn wrap(&self, pb: &ParamBuilder, inner: Box<dyn Module>) -> Result<Box<dyn Module>> {
        let Some(&c) = self.gated.get(pb.prefix()) else {
            return Ok(inner);
        };
        let gate_weight = pb.param(GATE_WEIGHT, &[c, c], Init::Const(0.0))?;
        let gate_bias = pb.param(GATE_BIAS, &[c], Init::Const(self.gate_init))?;
        Ok(Box::new(CapGated {
            inner,
            gate_weight,
            gate_bias,
            path: pb.prefix().to_string(),
        }))
    }
}

impl LayerFactory for CapFactory {
    fn name(&self) -> &str {
        "cap"
    }
    fn linear(&self, pb: &ParamBuilder, cfg: LinearCfg) -> Result<Box<dyn Module>> {
        let l = Deterministic.linear(pb, cfg)?;
        self.wrap(pb, l)
    }
    fn conv2d(&self, pb: &ParamBuilder, cfg: Conv2dCfg) -> Result<Box<dyn Module>> {
        let l = Deterministic.conv2d(pb, cfg)?;
        self.wrap(pb, l)
    }
}

/// Per-example cross-entropy `[B]` of `logits` `[B, K]` against `labels` `[B]`.
pub fn per_example_ce(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    logp.gather(&labels.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .neg()
}

/// The polarisation regulariser `R = (1/n)(t Σ I − Σ |I − Ī|)` of the importances `I` (`[n]`).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use secateur_pruning::learned::cap::polarisation;
/// let i = Tensor::new(&[0.0f32, 1.0], &Device::Cpu).unwrap();
/// // t Σ I = 1.2, Σ |I − 0.5| = 1: R = 0.2 / 2
/// let r = polarisation(&i, 1.2).unwrap().to_scalar::<f32>().unwrap();
/// assert!((r - 0.1).abs() < 1e-6);
/// ```
pub fn polarisation(importance: &Tensor, t: f64) -> Result<Tensor> {
    let n = importance.elem_count() as f64;
    let mean = importance.mean_all()?;
    let spread = importance.broadcast_sub(&mean)?.abs()?.sum_all()?;
    ((importance.sum_all()? * t)? - spread)? / n
}

/// The CAP training objective: `mean ℓ + λ R` over the complexity-weighted mean masks of every
/// gated layer (see the [module documentation](self)). The history's divergence column holds `R`
/// and its β column `λ`.
#[derive(Debug, Clone, Copy)]
pub struct CapObjective {
    cfg: CapConfig,
}

impl CapObjective {
    /// The objective with these settings.
    pub fn new(cfg: CapConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self { cfg })
    }
}

impl TrainingObjective for CapObjective {
    fn batch_loss(&self, cx: &ObjectiveContext, x: &Tensor, y: &Tensor, rng: &mut SeededRng) -> Result<BatchLoss> {
        if !matches!(cx.likelihood, Likelihood::Categorical) {
            candle_core::bail!("cap trains classifiers (a categorical likelihood)");
        }
        let mut taps = Vec::new();
        let logits = {
            let mut ctx = Ctx::train(rng, cx.sampling);
            ctx.taps = Some(&mut taps);
            cx.model.forward(x, &mut ctx)?
        };
        if taps.is_empty() {
            candle_core::bail!("cap: the network has no gated channels");
        }
        let ce = per_example_ce(&logits, y)?;
        let nll = ce.mean_all()?;
        let c = ce.detach();
        let w = c.broadcast_div(&(c.mean_all()? + 1e-12)?)?;
        let importances = taps
            .iter()
            .map(|(_, m)| m.broadcast_mul(&w.unsqueeze(1)?.to_dtype(m.dtype())?)?.mean(0))
            .collect::<Result<Vec<_>>>()?;
        let r = polarisation(&Tensor::cat(&importances, 0)?, self.cfg.t)?;
        let loss = (&nll + (&r * self.cfg.lambda)?)?;
        Ok(BatchLoss {
            loss,
            outputs: logits.detach(),
            passes: 1,
            nll: Some(nll.to_dtype(DType::F64)?.to_scalar::<f64>()?),
            divergence: r.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            beta: self.cfg.lambda,
        })
    }
}

/// One gated layer's channels over a data set.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelStats {
    /// `I_c = Σ_x ℓ(x) m_c(x) / Σ_x ℓ(x)`, the complexity-weighted mean mask.
    pub importance: Vec<f64>,
    /// `E[m_c]`, the plain mean mask.
    pub mean: Vec<f64>,
}

/// The importance and mean mask of every gated channel over `batches` (evaluation mode), by
/// the reading layer's path.
pub fn channel_statistics<I>(
    model: &dyn Module,
    batches: I,
    rng: &mut SeededRng,
) -> Result<BTreeMap<String, ChannelStats>>
where
    I: IntoIterator<Item = Result<(Tensor, Tensor)>>,
{
    let mut sums: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let (mut total_loss, mut n) = (0f64, 0usize);
    for b in batches {
        let (x, y) = b?;
        let mut taps = Vec::new();
        let logits = {
            let mut ctx = Ctx::eval(rng, Sampling::Mean);
            ctx.taps = Some(&mut taps);
            model.forward(&x, &mut ctx)?
        };
        let ce = per_example_ce(&logits, &y)?.to_dtype(DType::F64)?;
        let ce_v = ce.to_vec1::<f64>()?;
        total_loss += ce_v.iter().sum::<f64>();
        n += ce_v.len();
        for (path, m) in taps {
            let weighted = m
                .to_dtype(DType::F64)?
                .broadcast_mul(&ce.unsqueeze(1)?)?
                .sum(0)?
                .to_vec1::<f64>()?;
            let plain = m.to_dtype(DType::F64)?.sum(0)?.to_vec1::<f64>()?;
            let e = sums
                .entry(path)
                .or_insert_with(|| (vec![0.0; plain.len()], vec![0.0; plain.len()]));
            e.0.iter_mut().zip(&weighted).for_each(|(a, b)| *a += b);
            e.1.iter_mut().zip(&plain).for_each(|(a, b)| *a += b);
        }
    }
    if n == 0 {
        candle_core::bail!("cap: no examples to measure the channels on");
    }
    let lz = total_loss.max(1e-300);
    Ok(sums
        .into_iter()
        .map(|(k, (w, p))| {
            (
                k,
                ChannelStats {
                    importance: w.iter().map(|v| v / lz).collect(),
                    mean: p.iter().map(|v| v / n as f64).collect(),
                },
            )
        })
        .collect())
}

/// The cut: in every layer of `coupling`, the groups whose importance (read at the layer that
/// reads them) is below `threshold`; a layer keeps at least its most important group.
pub fn cut(coupling: &Coupling, stats: &BTreeMap<String, ChannelStats>, threshold: f64) -> Result<StructuredMask> {
    let mut mask = StructuredMask::all_kept(coupling);
    for l in &coupling.layers {
        let reader = l.consumer.name.trim_end_matches(".weight");
        let Some(s) = stats.get(reader) else {
            candle_core::bail!(
                "cap: no statistics for the channels of `{}` (read by `{reader}`)",
                l.name
            );
        };
        if s.importance.len() != l.groups {
            candle_core::bail!(
                "cap: `{reader}` has {} gated channels, `{}` has {} groups",
                s.importance.len(),
                l.name,
                l.groups
            );
        }
        let best = (0..l.groups)
            .max_by(|&a, &b| s.importance[a].total_cmp(&s.importance[b]))
            .unwrap_or(0);
        for (g, &i) in s.importance.iter().enumerate() {
            if i < threshold && g != best {
                mask.prune(coupling, &l.name, g)?;
            }
        }
    }
    Ok(mask)
}

/// The tensors of the static plain network: the gates dropped and each gated channel's mean
/// mask folded into the reading layer's weight (its input features of that channel scaled by
/// `E[m_c]`). Load them into the deterministic network of the same widths, then apply the cut.
pub fn static_tensors(
    store: &ParamStore,
    coupling: &Coupling,
    stats: &BTreeMap<String, ChannelStats>,
) -> Result<HashMap<String, Tensor>> {
    let mut out: HashMap<String, Tensor> = store
        .tensors()
        .into_iter()
        .filter(|(k, _)| !k.ends_with(GATE_WEIGHT) && !k.ends_with(GATE_BIAS))
        .collect();
    for l in &coupling.layers {
        let reader = l.consumer.name.trim_end_matches(".weight");
        let Some(s) = stats.get(reader) else {
            candle_core::bail!("cap: no statistics for `{reader}`");
        };
        let Some(w) = out.get(&l.consumer.name) else {
            candle_core::bail!("cap: the store has no `{}`", l.consumer.name);
        };
        let scale: Vec<f32> = s
            .mean
            .iter()
            .flat_map(|&m| std::iter::repeat_n(m as f32, l.consumer.block))
            .collect();
        let mut shape = vec![1; w.rank()];
        shape[1] = scale.len();
        let scale = Tensor::from_vec(scale, shape, w.device())?.to_dtype(w.dtype())?;
        let folded = w.broadcast_mul(&scale)?;
        out.insert(l.consumer.name.clone(), folded);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::structured::{compact::compact, groups};
    use candle_core::{Device, Var};
    use secateur_bayes::nn::{linear_forward, Linear};
    use secateur_inference::objective::StepPosition;
    use secateur_models::{build, build_with_widths, ModelSpec};

    fn builder(seed: u64) -> (ParamStore, ParamBuilder) {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(seed), DType::F32, Device::Cpu);
        (store, pb)
    }

    /// A gated linear layer reading 3 channels of 2 features each (a flatten's blocks): the masks
    /// are σ(W_g · (block means) + b_g), computed here entry by entry in f64; the layer's output
    /// is the plain layer on the masked input; the pass's masks are tapped.
    #[test]
    fn gate_masks_and_forward() -> Result<()> {
        let (store, pb) = builder(1);
        let mut gated = BTreeMap::new();
        gated.insert("fc".to_string(), 3);
        let layer = CapFactory::new(gated, 0.5).linear(&pb.pp("fc"), LinearCfg::new(6, 4))?;
        let mut rng = SeededRng::new(2);
        let wg = rng.randn(&[3, 3], DType::F32, &Device::Cpu)?;
        store.get("fc.cap_gate_weight").unwrap().set(&wg)?;
        let x = rng.randn(&[5, 6], DType::F32, &Device::Cpu)?;
        let mut taps = Vec::new();
        let mut r = SeededRng::new(0);
        let y = {
            let mut ctx = Ctx::train(&mut r, Sampling::Mean);
            ctx.taps = Some(&mut taps);
            layer.forward(&x, &mut ctx)?
        };
        assert_eq!(taps.len(), 1);
        assert_eq!(taps[0].0, "fc");
        let (xs, w) = (x.to_vec2::<f32>()?, wg.to_vec2::<f32>()?);
        let m = taps[0].1.to_vec2::<f32>()?;
        let mut masked = vec![vec![0f32; 6]; 5];
        for b in 0..5 {
            for c in 0..3 {
                let z: f64 = (0..3)
                    .map(|k| w[c][k] as f64 * (xs[b][2 * k] as f64 + xs[b][2 * k + 1] as f64) / 2.0)
                    .sum::<f64>()
                    + 0.5;
                let want = 1.0 / (1.0 + (-z).exp());
                assert!((m[b][c] as f64 - want).abs() < 1e-6);
                for j in 0..2 {
                    masked[b][2 * c + j] = xs[b][2 * c + j] * want as f32;
                }
            }
        }
        let plain = Linear::from_tensors(
            store.get("fc.weight").unwrap().as_tensor().clone(),
            Some(store.get("fc.bias").unwrap().as_tensor().clone()),
        );
        let want = linear_forward(&Tensor::new(masked, &Device::Cpu)?, &plain.weight, plain.bias.as_ref())?;
        let diff = (y - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5);
        Ok(())
    }

    /// R's gradient by autograd equals central finite differences (away from the kinks), and for
    /// importances of the same sum R is smallest when they are polarised.
    #[test]
    fn polarisation_gradient_and_preference() -> Result<()> {
        let v = vec![0.9f64, 0.2, 0.55, 0.7, 0.05];
        let i = Var::new(v.as_slice(), &Device::Cpu)?;
        let r = polarisation(i.as_tensor(), 1.3)?;
        let g = r.backward()?.get(i.as_tensor()).unwrap().to_vec1::<f64>()?;
        let f = |x: &[f64]| -> f64 {
            let n = x.len() as f64;
            let mean = x.iter().sum::<f64>() / n;
            (1.3 * x.iter().sum::<f64>() - x.iter().map(|a| (a - mean).abs()).sum::<f64>()) / n
        };
        for k in 0..v.len() {
            let (mut p, mut m) = (v.clone(), v.clone());
            p[k] += 1e-6;
            m[k] -= 1e-6;
            let fd = (f(&p) - f(&m)) / 2e-6;
            assert!((g[k] - fd).abs() < 1e-6, "{k}: {} vs {fd}", g[k]);
        }
        // below the mean a channel is pushed down harder than above it
        assert!(g[1] > g[0] && g[4] > g[3]);
        let r = |x: &[f32]| {
            polarisation(&Tensor::new(x, &Device::Cpu).unwrap(), 1.2)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(r(&[1.0, 1.0, 0.0, 0.0]) < r(&[0.75, 0.75, 0.25, 0.25]));
        assert!(r(&[0.75, 0.75, 0.25, 0.25]) < r(&[0.5, 0.5, 0.5, 0.5]));
        Ok(())
    }

    /// The objective is mean ℓ + λ R of the complexity-weighted mean masks, recomputed here from
    /// the tapped masks and the per-example losses (weights ℓ / mean ℓ); the examples with the
    /// larger loss weigh more in the importance.
    #[test]
    fn objective_weights_examples_by_their_loss() -> Result<()> {
        let spec = ModelSpec::new("mlp", [1, 1, 6], 3);
        let coupling = groups::record_built(spec.input, |f, p| {
            secateur_models::arch::Mlp::new(
                &secateur_models::arch::MlpConfig { hidden: vec![4] },
                spec.input,
                3,
                f,
                p,
            )
        })?;
        let (store, pb) = builder(3);
        let factory = CapFactory::new(CapFactory::readers(&coupling), 0.0);
        let net = secateur_models::arch::Mlp::new(
            &secateur_models::arch::MlpConfig { hidden: vec![4] },
            spec.input,
            3,
            &factory,
            &pb,
        )?;
        let mut rng = SeededRng::new(4);
        store
            .get("fc2.cap_gate_weight")
            .unwrap()
            .set(&rng.randn(&[4, 4], DType::F32, &Device::Cpu)?)?;
        let x = rng.randn(&[8, 1, 1, 6], DType::F32, &Device::Cpu)?;
        let y = Tensor::new(&[0u32, 1, 2, 0, 1, 2, 0, 1], &Device::Cpu)?;
        let cfg = CapConfig {
            lambda: 0.7,
            t: 1.4,
            ..Default::default()
        };
        let cx = ObjectiveContext {
            model: &net,
            store: &store,
            likelihood: &Likelihood::Categorical,
            sampling: Sampling::Mean,
            at: StepPosition {
                epoch: 0,
                step: 0,
                steps: 1,
            },
        };
        let out = CapObjective::new(cfg)?.batch_loss(&cx, &x, &y, &mut SeededRng::new(0))?;
        // independently: the same pass with taps, then the formula in f64
        let mut taps = Vec::new();
        let logits = {
            let mut r = SeededRng::new(0);
            let mut ctx = Ctx::train(&mut r, Sampling::Mean);
            ctx.taps = Some(&mut taps);
            net.forward(&x, &mut ctx)?
        };
        let l = logits.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let labels = y.to_vec1::<u32>()?;
        let ce: Vec<f64> = l
            .iter()
            .zip(&labels)
            .map(|(row, &k)| {
                let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
                lse - row[k as usize]
            })
            .collect();
        let mean_ce = ce.iter().sum::<f64>() / 8.0;
        let m = taps[0].1.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let imp: Vec<f64> = (0..4)
            .map(|c| (0..8).map(|b| ce[b] / mean_ce * m[b][c]).sum::<f64>() / 8.0)
            .collect();
        let ibar = imp.iter().sum::<f64>() / 4.0;
        let r = (1.4 * imp.iter().sum::<f64>() - imp.iter().map(|v| (v - ibar).abs()).sum::<f64>()) / 4.0;
        assert!((out.divergence - r).abs() < 1e-5, "{} vs {r}", out.divergence);
        assert!((out.nll.unwrap() - mean_ce).abs() < 1e-5);
        let loss = out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        assert!((loss - (mean_ce + 0.7 * r)).abs() < 1e-5);
        Ok(())
    }

    /// With sample-independent masks (W_g = 0) the static network (means folded, gates dropped)
    /// computes what the gated one computes; channels whose masks are ~0 are cut, and the
    /// compacted network computes the same again: LeNet-5 (a flatten's blocks) and ResNet-20
    /// (batch norm, residual sums).
    #[test]
    fn static_cut_and_compacted_networks_agree() -> Result<()> {
        for (arch, input) in [("lenet5", [1, 28, 28]), ("resnet20", [3, 8, 8])] {
            let spec = ModelSpec::new(arch, input, 10);
            let coupling = groups::record(&spec)?;
            let (store, pb) = builder(5);
            let net = build(&spec, &CapFactory::new(CapFactory::readers(&coupling), 0.0), &pb)?;
            let mut rng = SeededRng::new(6);
            // gate biases: about a third of the channels shut (σ(−40) ≈ 4e-18), the rest open to
            // various degrees above the threshold (σ(0.5 + |z|) > 0.62); random batch-norm
            // statistics
            for (name, var) in store.params() {
                if name.ends_with(GATE_BIAS) {
                    let u = rng.rand_uniform(var.dims(), 0.0, 1.0, DType::F32, &Device::Cpu)?;
                    let shut = u.lt(1.0 / 3.0)?.to_dtype(DType::F32)?;
                    let open = (rng.randn(var.dims(), DType::F32, &Device::Cpu)?.abs()? + 0.5)?;
                    var.set(&((&shut * -40.0)? + open.broadcast_mul(&shut.affine(-1.0, 1.0)?)?)?)?;
                }
            }
            for (name, var) in store.buffers() {
                if name.ends_with("running_var") {
                    var.set(&rng.rand_uniform(var.dims(), 0.5, 1.5, DType::F32, &Device::Cpu)?)?;
                }
            }
            let x = rng.randn(&[6, input[0], input[1], input[2]], DType::F32, &Device::Cpu)?;
            let labels = Tensor::new(&[0u32, 1, 2, 3, 4, 5], &Device::Cpu)?;
            let stats = channel_statistics(&net, [Ok((x.clone(), labels))], &mut SeededRng::new(0))?;
            let mask = cut(&coupling, &stats, 0.5)?;
            assert!(mask.num_pruned() > 0, "{arch}");
            let (plain, ppb) = builder(7);
            let plain_net = build(&spec, &Deterministic, &ppb)?;
            plain.load(&static_tensors(&store, &coupling, &stats)?)?;
            mask.expand(&coupling)?.apply(&plain)?;
            let mut r = SeededRng::new(0);
            let a = net.forward(&x, &mut Ctx::eval(&mut r, Sampling::Mean))?;
            let b = plain_net.forward(&x, &mut Ctx::eval(&mut r, Sampling::Mean))?;
            let d = (&a - &b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-4, "{arch}: gated vs static cut: {d}");
            let c = compact(&coupling, &mask, &plain.tensors())?;
            let (small, spb) = builder(8);
            let small_net = build_with_widths(&spec, &c.out_widths(), &Deterministic, &spb)?;
            small.load(&c.tensors)?;
            let s = small_net.forward(&x, &mut Ctx::eval(&mut r, Sampling::Mean))?;
            let d = (b - s)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "{arch}: static vs compacted: {d}");
        }
        Ok(())
    }
}
