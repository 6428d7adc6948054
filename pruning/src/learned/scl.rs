//! SCL, sparse connection learning: every weight is a trainable value times a binary mask given
//! by a unit step of a trainable mask variable,
//!
//! ```text
//! w = v ⊙ H(m),   H(m) = 1[m > 0],
//! ```
//!
//! trained with the identity straight-through estimator for the step (`∂H/∂m := 1`, so
//! `∂L/∂m = ∂L/∂w ⊙ v` and `∂L/∂v = ∂L/∂w ⊙ H(m)`), mask gradients normalised per feature, and
//! the total number of connections `Σ H(m)` as a regulariser, so that the sparsity is learned
//! without per-layer criteria or thresholds.
//!
//! **A reconstruction.** Only the seed paper's abstract is public. It fixes: the product with a
//! step of a mask variable, a straight-through estimator whose surrogate gradient is positive
//! (leaky-ReLU, softplus and identity qualify; the identity is used, as the abstract does), the
//! per-feature normalisation of mask gradients (they are badly unbalanced across features), and
//! the connection count as the regulariser. These choices are ours:
//! - **Where the step lives.** The mask variables are a buffer `{layer}.scl_mask` beside each
//!   linear and convolution weight (same shape), made by [`SclFactory`]; the layer computes
//!   `v ⊙ H(m)` in its forward pass through [`step_ste`], whose forward value is exactly
//!   `H(m)` and whose gradient is 1. The values `v` are the layer's ordinary `weight` and train
//!   with the run's optimiser (its learning-rate schedule, momentum and weight decay); a
//!   connection that is off gets no task gradient on `v` (`∂L/∂v = ∂L/∂w ⊙ H(m) = 0`), so its
//!   value changes only by the optimiser's momentum and weight decay, and it comes back with
//!   about the value it had.
//! - **How masks move.** The mask variables are not trained by the run's optimiser (they are a
//!   buffer, not a parameter): [`Scl`], the step hook, takes plain gradient steps
//!   `m ← m − η_m (ĝ + λ)` at a constant rate `η_m` ([`SclConfig::mask_lr`]), without momentum or
//!   weight decay, so that the mask dynamics are the method's own and do not depend on the
//!   weights' optimiser.
//! - **Per-feature normalisation.** A *feature* is an output unit (a row of a linear weight, an
//!   output filter of a convolution). Each feature's mask gradients are divided by their root
//!   mean square over the feature, `ĝ_{r,j} = g_{r,j} / sqrt(mean_j g_{r,j}²)` (a feature with no
//!   gradient keeps 0), so that every feature's gradients have unit RMS whatever its layer and
//!   scale.
//! - **The regulariser.** `λ · Σ H(m)` over every connection of every layer; under the identity
//!   STE its gradient is `λ` for every mask variable, so `λ` ([`SclConfig::lambda`]) is measured
//!   in units of the normalised task gradient: a connection stays on while its normalised task
//!   gradient pushes its mask up by more than `λ` on average.
//! - **Initialisation.** Every mask variable starts at `m₀ > 0` ([`SclConfig::mask_init`]): the
//!   network starts dense, and a connection whose task gradient is neutral turns off after about
//!   `m₀ / (η_m λ)` steps.
//! - **Whole filters.** When every connection of a structured group (a filter or unit with the
//!   tensors it owns, see [`crate::structured`]) is off, its output is a constant (its bias, or
//!   its batch norm's β) and no gradient can revive it through `v`. The hook then removes the
//!   group for good, as a structured prune: its values, bias, batch-norm γ and β and the next
//!   layer's input channels are zeroed and their gradients masked ([`ExpandedMask`]), so that the
//!   trained network computes what the network without those channels computes and
//!   `secateur compact` can build it. Groups are recomputed from the mask variables, which stay
//!   off once a group is removed, so a resumed run removes the same groups.
//!
//! [`connection_masks`] gives the learned connections as a [`MaskSet`] (with the removed groups'
//! coupled vectors), the common mask format that `compact` reads.

use crate::mask::MaskSet;
use crate::structured::{Coupling, ExpandedMask, StructuredMask};
use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use secateur_bayes::nn::{conv2d_forward, linear_forward, Conv2d, Conv2dCfg, Linear, LinearCfg};
use secateur_bayes::{Ctx, Init, Mode, Module, ParamBuilder, ParamStore, UnitSummary};
use secateur_inference::hooks::StepHook;
use secateur_models::LayerFactory;

/// Leaf name of the mask-variable buffer beside each weight (`fc1.scl_mask`).
pub const MASK_BUFFER: &str = "scl_mask";

/// The hyper-parameters of SCL (see the [module documentation](self) for their roles).
///
/// ```
/// use secateur_pruning::learned::scl::SclConfig;
/// assert!(SclConfig::default().validate().is_ok());
/// assert!(SclConfig { mask_lr: 0.0, ..Default::default() }.validate().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SclConfig {
    /// Initial value `m₀ > 0` of every mask variable. Default 1.
    pub mask_init: f64,
    /// Step size `η_m > 0` of the mask variables. Default 0.01.
    pub mask_lr: f64,
    /// Weight `λ ≥ 0` of the connection count, in units of the normalised mask gradient.
    /// Default 0.2.
    pub lambda: f64,
}

impl Default for SclConfig {
    fn default() -> Self {
        Self {
            mask_init: 1.0,
            mask_lr: 0.01,
            lambda: 0.2,
        }
    }
}

impl SclConfig {
    /// Refuses impossible values, naming the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.mask_init.is_finite() && self.mask_init > 0.0) {
            candle_core::bail!("scl mask_init must be finite and > 0, got {}", self.mask_init);
        }
        if !(self.mask_lr.is_finite() && self.mask_lr > 0.0) {
            candle_core::bail!("scl mask_lr must be finite and > 0, got {}", self.mask_lr);
        }
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            candle_core::bail!("scl lambda must be finite and >= 0, got {}", self.lambda);
        }
        Ok(())
    }
}

/// The unit step `H(m) = 1[m > 0]` with the identity straight-through estimator: the forward
/// value is exactly `H(m)` (computed as `H(m) + (m − sg(m))`, whose second term is exactly 0),
/// the gradient with respect to `m` is 1 (Bengio, Léonard & Courville 2013).
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use secateur_pruning::learned::scl::step_ste;
/// # fn main() -> candle_core::Result<()> {
/// let m = Var::new(&[-0.5f32, 0.0, 0.25], &Device::Cpu)?;
/// let h = step_ste(m.as_tensor())?;
/// assert_eq!(h.to_vec1::<f32>()?, [0.0, 0.0, 1.0]);
/// let g = (h * Tensor::new(&[1f32, 2., 3.], &Device::Cpu)?)?.sum_all()?.backward()?;
/// assert_eq!(g.get(m.as_tensor()).unwrap().to_vec1::<f32>()?, [1.0, 2.0, 3.0]);
/// # Ok(()) }
/// ```
pub fn step_ste(m: &Tensor) -> Result<Tensor> {
    let h = m.gt(0.0)?.to_dtype(m.dtype())?;
    h + (m - m.detach())?
}

/// A linear or convolution layer whose weight is `v ⊙ H(m)` (see the [module documentation](self)).
pub struct SclLayer {
    /// The values `v` (the layer's `weight` parameter).
    pub weight: Tensor,
    /// The mask variables `m` (the `scl_mask` buffer, of the weight's shape).
    pub mask: Var,
    /// The bias, if any.
    pub bias: Option<Tensor>,
    /// The convolution's hyper-parameters; `None` for a linear layer.
    pub conv: Option<Conv2dCfg>,
}

impl SclLayer {
    /// The weight the layer computes with: `v ⊙ H(m)`, through [`step_ste`] in training mode
    /// (so that `m` gets a gradient), the plain product otherwise.
    pub fn effective_weight(&self, mode: Mode) -> Result<Tensor> {
        let h = match mode {
            Mode::Train => step_ste(self.mask.as_tensor())?,
            Mode::Eval => {
                let m = self.mask.as_detached_tensor();
                m.gt(0.0)?.to_dtype(m.dtype())?
            }
        };
        self.weight.mul(&h)
    }
}

impl Module for SclLayer {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let w = self.effective_weight(ctx.mode)?;
        match &self.conv {
            Some(cfg) => conv2d_forward(x, &w, self.bias.as_ref(), cfg),
            None => linear_forward(x, &w, self.bias.as_ref()),
        }
    }
}

/// Makes the linear and convolution layers of an architecture as [`SclLayer`]s: the
/// deterministic layer's parameters (same names, same initialisation draws) plus the
/// `scl_mask` buffer at `m₀`.
#[derive(Debug, Clone, Copy)]
pub struct SclFactory {
    mask_init: f64,
}

impl SclFactory {
    /// A factory whose mask variables start at `mask_init` (`m₀ > 0`).
    pub fn new(mask_init: f64) -> Result<Self> {
        SclConfig {
            mask_init,
            ..Default::default()
        }
        .validate()?;
        Ok(Self { mask_init })
    }
}

impl LayerFactory for SclFactory {
    fn name(&self) -> &str {
        "scl"
    }
    fn linear(&self, pb: &ParamBuilder, cfg: LinearCfg) -> Result<Box<dyn Module>> {
        let l = Linear::new(pb, cfg)?;
        let mask = pb.buffer(MASK_BUFFER, l.weight.dims(), Init::Const(self.mask_init))?;
        Ok(Box::new(SclLayer {
            weight: l.weight,
            mask,
            bias: l.bias,
            conv: None,
        }))
    }
    fn conv2d(&self, pb: &ParamBuilder, cfg: Conv2dCfg) -> Result<Box<dyn Module>> {
        let c = Conv2d::new(pb, cfg)?;
        let mask = pb.buffer(MASK_BUFFER, c.weight.dims(), Init::Const(self.mask_init))?;
        Ok(Box::new(SclLayer {
            weight: c.weight,
            mask,
            bias: c.bias,
            conv: Some(c.cfg),
        }))
    }
}

/// The mask variables of `store` by the logical name of their weight (`fc1.weight`), in sorted
/// order.
pub fn mask_variables(store: &ParamStore) -> Vec<(String, Var)> {
    let suffix = format!(".{MASK_BUFFER}");
    store
        .buffers()
        .into_iter()
        .filter_map(|(k, v)| k.strip_suffix(&suffix).map(|p| (format!("{p}.weight"), v)))
        .collect()
}

/// Divides every feature's (row's) gradients by their root mean square over the feature; a row
/// with no gradient stays 0 (see the [module documentation](self)).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use secateur_pruning::learned::scl::normalise_per_feature;
/// # fn main() -> candle_core::Result<()> {
/// let g = Tensor::new(&[[3f32, 4.], [0., 0.]], &Device::Cpu)?;
/// let n = normalise_per_feature(&g)?.to_vec2::<f32>()?;
/// let rms = (12.5f32).sqrt();
/// assert!((n[0][0] - 3. / rms).abs() < 1e-6 && (n[0][1] - 4. / rms).abs() < 1e-6);
/// assert_eq!(n[1], [0., 0.]);
/// # Ok(()) }
/// ```
pub fn normalise_per_feature(g: &Tensor) -> Result<Tensor> {
    let rows = g.dim(0)?;
    let flat = g.reshape((rows, ()))?;
    let rms = flat.sqr()?.mean_keepdim(1)?.sqrt()?;
    // a zero row divides 0 by 1
    let zero = rms.eq(0.0)?.to_dtype(rms.dtype())?;
    flat.broadcast_div(&(rms + zero)?)?.reshape(g.dims())
}

/// Connections on (`m > 0`) and in all, over every mask variable of `store`.
pub fn connection_counts(store: &ParamStore) -> Result<(usize, usize)> {
    let (mut on, mut total) = (0, 0);
    for (_, m) in mask_variables(store) {
        on += m
            .as_tensor()
            .gt(0.0)?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()? as usize;
        total += m.elem_count();
    }
    Ok((on, total))
}

/// The groups of `coupling` all of whose connections are off: a [`StructuredMask`].
pub fn removed_groups(store: &ParamStore, coupling: &Coupling) -> Result<StructuredMask> {
    let masks: std::collections::BTreeMap<String, Var> = mask_variables(store).into_iter().collect();
    let mut s = StructuredMask::all_kept(coupling);
    for l in &coupling.layers {
        let Some(m) = masks.get(&l.name) else {
            continue;
        };
        let on = m
            .as_tensor()
            .gt(0.0)?
            .to_dtype(DType::F32)?
            .reshape((l.groups, ()))?
            .sum(1)?
            .to_vec1::<f32>()?;
        for (g, k) in on.iter().enumerate() {
            if *k == 0.0 {
                s.prune(coupling, &l.name, g)?;
            }
        }
    }
    Ok(s)
}

/// The learned connections as a [`MaskSet`]: per weight `H(m)` (times the removed groups' rows
/// and columns), plus the coupled vectors of the removed groups; what `compact` reads.
pub fn connection_masks(store: &ParamStore, coupling: Option<&Coupling>) -> Result<MaskSet> {
    let mut out = match coupling {
        Some(c) => removed_groups(store, c)?.expand(c)?.to_mask_set()?,
        None => MaskSet::new(),
    };
    for (name, m) in mask_variables(store) {
        let h = m.as_tensor().gt(0.0)?.to_dtype(DType::F32)?;
        let keep = match out.get(&name) {
            Some(s) => s.to_dtype(DType::F32)?.mul(&h)?,
            None => h,
        };
        out.insert(name, keep)?;
    }
    Ok(out)
}

/// The SCL step hook (see the [module documentation](self)): before the optimiser step, the
/// mask variables take their normalised, regularised gradient step, and the gradients of removed
/// groups are masked; after it, groups whose connections are all off are removed.
pub struct Scl {
    cfg: SclConfig,
    coupling: Option<Coupling>,
    removed: Option<(usize, ExpandedMask)>,
}

impl Scl {
    /// The hook; `coupling` (the structured groups of the network, when it has any) lets it
    /// remove whole groups.
    pub fn new(cfg: SclConfig, coupling: Option<Coupling>) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            coupling,
            removed: None,
        })
    }

    /// Recomputes the removed groups from the mask variables; applies them when their number
    /// changed (or on the first call).
    fn update_removed(&mut self, store: &ParamStore) -> Result<()> {
        let Some(c) = &self.coupling else {
            return Ok(());
        };
        let s = removed_groups(store, c)?;
        let n = s.num_pruned();
        match &self.removed {
            Some((k, e)) if *k == n => e.apply(store),
            _ => {
                let e = s.expand(c)?;
                e.apply(store)?;
                self.removed = Some((n, e));
                Ok(())
            }
        }
    }
}

impl StepHook for Scl {
    fn before_step(&mut self, store: &ParamStore, grads: &mut GradStore, _step: usize) -> Result<()> {
        if self.removed.is_none() {
            // first step of the run or of a resumed run: the groups the masks say are removed
            self.update_removed(store)?;
        }
        for (_, m) in mask_variables(store) {
            let Some(g) = grads.remove(m.as_tensor()) else {
                continue;
            };
            let g = normalise_per_feature(&g.to_dtype(m.dtype())?)?;
            let step = (g + self.cfg.lambda)?.affine(self.cfg.mask_lr, 0.0)?;
            m.set(&m.as_tensor().sub(&step)?)?;
        }
        if let Some((n, e)) = &self.removed {
            if *n > 0 {
                e.mask_grads(store, grads)?;
            }
        }
        Ok(())
    }

    fn after_step(&mut self, store: &ParamStore, _step: usize) -> Result<()> {
        self.update_removed(store)
    }

    /// Per layer (its path, `fc1`), the connections on (`m > 0`, and not in a removed group) of
    /// all: what [`connection_masks`] keeps.
    fn units(&self, store: &ParamStore) -> Result<Vec<UnitSummary>> {
        let removed = self.removed.as_ref().map(|(_, e)| &e.weights);
        mask_variables(store)
            .into_iter()
            .map(|(name, m)| {
                let mut h = m.as_tensor().gt(0.0)?.to_dtype(DType::F64)?;
                if let Some(keep) = removed.and_then(|w| w.get(&name)) {
                    h = h.mul(&keep.to_dtype(DType::F64)?)?;
                }
                let on = h.sum_all()?.to_scalar::<f64>()?;
                Ok(UnitSummary {
                    layer: name.strip_suffix(".weight").unwrap_or(&name).to_string(),
                    kept: on as usize,
                    total: m.elem_count(),
                    mean_inclusion: None,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::structured::{compact::compact, groups};
    use candle_core::{Device, D};
    use secateur_bayes::nn::cross_entropy;
    use secateur_bayes::{Sampling, SeededRng};
    use secateur_inference::optim::{Optimizer, Sgd, SgdConfig};
    use secateur_models::{build, build_with_widths, ModelSpec};

    fn store_and_builder(seed: u64) -> (ParamStore, ParamBuilder) {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(seed), DType::F32, Device::Cpu);
        (store, pb)
    }

    /// The layer's forward is the plain layer with `v ⊙ H(m)`, exactly; its gradients are the
    /// identity-STE ones, `∂L/∂v = G ⊙ H(m)` and `∂L/∂m = G ⊙ v` with `G = ∂L/∂w = cᵀ x` for
    /// `L = Σ c ⊙ y`, computed here by hand in f64.
    #[test]
    fn forward_and_straight_through_gradients() -> Result<()> {
        let (store, pb) = store_and_builder(3);
        let layer = SclFactory::new(1.0)?.linear(&pb.pp("fc"), LinearCfg::new(4, 3))?;
        let m = store.get("fc.scl_mask").expect("mask buffer");
        let v = store.get("fc.weight").expect("weight");
        let b = store.get("fc.bias").expect("bias");
        let mut rng = SeededRng::new(9);
        m.set(&rng.randn(&[3, 4], DType::F32, &Device::Cpu)?)?;
        let x = rng.randn(&[5, 4], DType::F32, &Device::Cpu)?;
        let c = rng.randn(&[5, 3], DType::F32, &Device::Cpu)?;
        let h = m.as_tensor().gt(0.0)?.to_dtype(DType::F32)?;
        let plain = linear_forward(&x, &v.as_tensor().mul(&h)?, Some(b.as_tensor()))?;
        let mut r = SeededRng::new(0);
        let y = layer.forward(&x, &mut Ctx::train(&mut r, Sampling::Mean))?;
        assert_eq!(y.to_vec2::<f32>()?, plain.to_vec2::<f32>()?);
        let grads = (y * &c)?.sum_all()?.backward()?;
        let (xs, cs) = (x.to_vec2::<f32>()?, c.to_vec2::<f32>()?);
        let (vs, hs) = (v.as_tensor().to_vec2::<f32>()?, h.to_vec2::<f32>()?);
        let gv = grads.get(v.as_tensor()).expect("grad v").to_vec2::<f32>()?;
        let gm = grads.get(m.as_tensor()).expect("grad m").to_vec2::<f32>()?;
        let mut some_off = false;
        for o in 0..3 {
            for i in 0..4 {
                let g: f64 = (0..5).map(|n| cs[n][o] as f64 * xs[n][i] as f64).sum();
                assert!((gv[o][i] as f64 - g * hs[o][i] as f64).abs() < 1e-5);
                assert!((gm[o][i] as f64 - g * vs[o][i] as f64).abs() < 1e-5);
                some_off |= hs[o][i] == 0.0 && gm[o][i] != 0.0;
            }
        }
        assert!(some_off, "an off connection gets a mask gradient (it can come back)");
        // eval mode computes the same outputs
        let ye = layer.forward(&x, &mut Ctx::eval(&mut r, Sampling::Mean))?;
        assert_eq!(ye.to_vec2::<f32>()?, plain.to_vec2::<f32>()?);
        Ok(())
    }

    /// One hook step moves every mask variable by `−η (g_r / rms(g_r) + λ)` (rows of a
    /// convolution's mask are its output filters), computed here entry by entry in f64.
    #[test]
    fn mask_step_is_normalised_and_regularised() -> Result<()> {
        let (store, pb) = store_and_builder(1);
        let layer = SclFactory::new(0.5)?.conv2d(&pb.pp("c"), Conv2dCfg::new(2, 3, 3).with_padding(1))?;
        let m = store.get("c.scl_mask").expect("mask");
        let mut rng = SeededRng::new(4);
        let x = rng.randn(&[2, 2, 5, 5], DType::F32, &Device::Cpu)?;
        let mut r = SeededRng::new(0);
        // one output filter gets a gradient 1000 times larger than the others
        let scale = Tensor::new(&[1f32, 1000., 1.], &Device::Cpu)?.reshape((1, 3, 1, 1))?;
        let y = layer.forward(&x, &mut Ctx::train(&mut r, Sampling::Mean))?;
        let mut grads = y.broadcast_mul(&scale)?.sqr()?.sum_all()?.backward()?;
        let g = grads
            .get(m.as_tensor())
            .expect("grad")
            .flatten_from(1)?
            .to_vec2::<f32>()?;
        let before = m.as_tensor().flatten_from(1)?.to_vec2::<f32>()?;
        let cfg = SclConfig {
            mask_init: 0.5,
            mask_lr: 0.1,
            lambda: 0.3,
        };
        let mut hook = Scl::new(cfg, None)?;
        hook.before_step(&store, &mut grads, 0)?;
        assert!(
            grads.get(m.as_tensor()).is_none(),
            "the optimiser never sees the mask gradient"
        );
        let after = m.as_tensor().flatten_from(1)?.to_vec2::<f32>()?;
        for r in 0..3 {
            let rms = (g[r].iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / g[r].len() as f64).sqrt();
            assert!(rms > 0.0);
            for j in 0..g[r].len() {
                let want = before[r][j] as f64 - 0.1 * (g[r][j] as f64 / rms + 0.3);
                assert!((after[r][j] as f64 - want).abs() < 1e-5, "row {r} entry {j}");
            }
        }
        // every row moves by a comparable amount although one row's gradient is 1000 times larger
        // (each row's normalised gradients have RMS 1, so their mean |ĝ + λ| is at most 1 + λ;
        // without the normalisation the ratio of movements would be about 1000)
        let moved: Vec<f64> = (0..3)
            .map(|r| {
                (0..g[r].len())
                    .map(|j| (after[r][j] - before[r][j]).abs() as f64)
                    .sum::<f64>()
            })
            .collect();
        let (lo, hi) = moved.iter().fold((f64::MAX, 0f64), |(a, b), &m| (a.min(m), b.max(m)));
        assert!(hi / lo < 2.0, "row movements {moved:?}");
        Ok(())
    }

    /// Groups whose connections are all off are removed with what they own, and the compacted
    /// network (narrower SCL layers, masks included) computes the same logits: a ResNet-20
    /// (batch norm, residual sums) in eval mode.
    #[test]
    fn removed_groups_compact_to_the_same_outputs() -> Result<()> {
        let spec = ModelSpec::new("resnet20", [3, 8, 8], 10);
        let (store, pb) = store_and_builder(5);
        let net = build(&spec, &SclFactory::new(1.0)?, &pb)?;
        let coupling = groups::record(&spec)?;
        let mut rng = SeededRng::new(7);
        // random masks (a third of the connections off), batch-norm statistics and β
        for (_, m) in mask_variables(&store) {
            let u = rng.rand_uniform(m.dims(), 0.0, 1.0, DType::F32, &Device::Cpu)?;
            m.set(&(u - 1.0 / 3.0)?)?;
        }
        for (name, var) in store.tensors() {
            if name.ends_with("running_var") || name.ends_with("bn1.bias") {
                let u = rng.rand_uniform(var.dims(), 0.5, 1.5, DType::F32, &Device::Cpu)?;
                store.get(&name).expect("var").set(&u)?;
            }
        }
        // and every connection of two filters of the first block's conv1 off
        let name = "layer1.0.conv1.weight";
        let m = mask_variables(&store)
            .into_iter()
            .find(|(n, _)| n == name)
            .expect("mask")
            .1;
        let row = Tensor::new(
            &[1f32, 0., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 0., 1., 1., 1.],
            &Device::Cpu,
        )?;
        m.set(
            &m.as_tensor()
                .broadcast_mul(&row.reshape((16, 1, 1, 1))?)?
                .affine(1.0, 0.0)?,
        )?;
        // m = 0 is off; make the two rows strictly negative
        let neg = row.affine(1.0, -1.0)?.reshape((16, 1, 1, 1))?;
        m.set(&m.as_tensor().broadcast_add(&neg)?)?;
        let mut hook = Scl::new(SclConfig::default(), Some(coupling.clone()))?;
        hook.after_step(&store, 0)?;
        let masks = connection_masks(&store, Some(&coupling))?;
        let s = StructuredMask::from_mask_set(&coupling, &masks)?;
        assert!(s.pruned(name).contains(&1) && s.pruned(name).contains(&12));
        assert_eq!(s.num_pruned(), removed_groups(&store, &coupling)?.num_pruned());
        let c = compact(&coupling, &s, &store.tensors())?;
        let (small, spb) = store_and_builder(6);
        let small_net = build_with_widths(&spec, &c.out_widths(), &SclFactory::new(1.0)?, &spb)?;
        small.load(&c.tensors)?;
        let x = rng.randn(&[4, 3, 8, 8], DType::F32, &Device::Cpu)?;
        let mut r = SeededRng::new(0);
        let a = net.forward(&x, &mut Ctx::eval(&mut r, Sampling::Mean))?;
        let b = small_net.forward(&x, &mut Ctx::eval(&mut r, Sampling::Mean))?;
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max |Δ logits| = {diff}");
        assert!(small.num_params() < store.num_params());
        Ok(())
    }

    /// On a task whose label depends on 2 of 10 inputs, SCL keeps the relevant inputs'
    /// connections and turns (almost) every connection of the irrelevant ones off, learning the
    /// sparsity from the connection-count regulariser alone.
    #[test]
    fn learns_to_drop_irrelevant_inputs() -> Result<()> {
        let spec = ModelSpec::new("mlp", [1, 1, 10], 2);
        let (store, pb) = store_and_builder(2);
        let mlp = secateur_models::arch::MlpConfig { hidden: vec![16] };
        let net = secateur_models::arch::Mlp::new(&mlp, spec.input, 2, &SclFactory::new(1.0)?, &pb)?;
        let coupling = groups::record_built(spec.input, |f, p| {
            secateur_models::arch::Mlp::new(&mlp, spec.input, 2, f, p)
        })?;
        let cfg = SclConfig {
            mask_init: 0.5,
            mask_lr: 0.02,
            lambda: 0.5,
        };
        let mut hook = Scl::new(cfg, Some(coupling))?;
        let mut opt = Sgd::new(SgdConfig::default())?;
        let mut rng = SeededRng::new(11);
        let mut r = SeededRng::new(0);
        for step in 0..1500 {
            let x = rng.randn(&[64, 10], DType::F32, &Device::Cpu)?;
            // y = 1[x₀ + x₁ > 0]
            let y = x.narrow(1, 0, 2)?.sum(1)?.gt(0.0)?.to_dtype(DType::U32)?;
            let logits = net.forward(&x.reshape((64, 1, 1, 10))?, &mut Ctx::train(&mut r, Sampling::Mean))?;
            let mut grads = cross_entropy(&logits, &y)?.backward()?;
            hook.before_step(&store, &mut grads, step)?;
            opt.step(&store.params(), &grads, 0.05)?;
            hook.after_step(&store, step)?;
        }
        let h = store
            .get("fc1.scl_mask")
            .expect("mask")
            .as_tensor()
            .gt(0.0)?
            .to_dtype(DType::F32)?;
        let per_input = h.sum(0)?.to_vec1::<f32>()?; // connections on per input
        let irrelevant: f32 = per_input[2..].iter().sum();
        assert!(
            per_input[0] >= 1.0 && per_input[1] >= 1.0,
            "relevant inputs keep connections: {per_input:?}"
        );
        assert!(
            irrelevant <= 0.05 * 8.0 * 16.0,
            "irrelevant inputs lose theirs: {per_input:?}"
        );
        // and the network still solves the task
        let x = rng.randn(&[1000, 10], DType::F32, &Device::Cpu)?;
        let y = x.narrow(1, 0, 2)?.sum(1)?.gt(0.0)?.to_dtype(DType::U32)?;
        let pred = net
            .forward(&x.reshape((1000, 1, 1, 10))?, &mut Ctx::eval(&mut r, Sampling::Mean))?
            .argmax(D::Minus1)?;
        let acc = pred.eq(&y)?.to_dtype(DType::F32)?.mean_all()?.to_scalar::<f32>()?;
        assert!(acc > 0.95, "accuracy {acc}");
        Ok(())
    }
}
