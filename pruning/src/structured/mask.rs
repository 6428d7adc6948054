//! Group masks and their expansion into entry masks.
//!
//! A [`StructuredMask`] says which groups of each layer are kept (see [`super::groups`]).
//! [`StructuredMask::expand`] turns it into what the rest of the crate understands:
//! - an ordinary [`MaskSet`] over every weight the groups touch: for a pruned group `g` of layer
//!   `L`, row `g` of `W_L` and the columns `[g·b, (g+1)·b)` of the consumer's weight `W_M`
//!   (dimension 1) are zero; a weight that is both a producer and a consumer gets the product
//!   of the two masks, `m[o, j, …] = r[o] · c[j]`;
//! - the coupled vectors ([`CoupledVector`]): entry `g` of `L`'s bias and of the batch norm's γ,
//!   β, running mean and running variance.
//!
//! **Applying a mask** ([`ExpandedMask::apply`]) zeroes the masked weights (through
//! [`MaskSet::apply`], Bayesian scales included), and the pruned entries of the bias, γ **and
//! β**. Either half alone already gives the outputs of the network without those channels, and
//! we do both, on purpose. With the weight rows zeroed, a pruned channel's convolution output is
//! its bias `b_g`, and its batch norm still emits the constant `γ_g (b_g − μ_g)/σ_g + β_g`
//! (evaluation mode) or `β_g` (training mode, where the channel's batch variance is 0); the
//! zeroed columns of the consumer cancel that constant. Zeroing the bias, γ and β as well makes
//! the channel's output itself exactly 0 in both modes, whatever the running statistics, so
//! the masked network does not rely on the consumer's columns to hide a live constant (the tests
//! check both: rows plus zeroed vectors, and the full expansion, each equal a physically
//! sliced network, while rows alone do not). The running statistics are not changed.
//! For a Bayesian layer the posterior mean of the bias (`bias_mu`) is zeroed and its scale
//! (`bias_rho`, `bias_log_sigma2`) set to the "removed" values of [`crate::mask`].
//!
//! In training the [`ExpandedMask`] is a [`StepHook`]: it masks the gradients of the pruned
//! weights and of the zeroed vector entries, and applies itself again after each step.

use super::groups::{vector, Coupling, VectorRole};
use crate::mask::{MaskSet, PRUNED_STD};
use crate::prunable::{resolve, scale_siblings};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use secateur_bayes::layers::sparse_vd::PRUNED_LOG_SIGMA2;
use secateur_bayes::math::inv_softplus;
use secateur_bayes::ParamStore;
use secateur_inference::hooks::StepHook;
use std::collections::BTreeMap;

/// Which groups of each layer are kept, by the layer's logical weight name.
///
/// ```
/// use secateur_models::ModelSpec;
/// use secateur_pruning::structured::{groups, StructuredMask};
/// let c = groups::record(&ModelSpec::new("mlp", [1, 28, 28], 10)).unwrap();
/// let mut m = StructuredMask::all_kept(&c);
/// m.prune(&c, "fc2.weight", 7).unwrap();
/// assert_eq!(m.num_pruned(), 1);
/// assert!(m.prune(&c, "fc3.weight", 0).is_err()); // the classifier has no groups
/// let e = m.expand(&c).unwrap();
/// // row 7 of fc2 and column 7 of fc3
/// assert_eq!(e.weights.total() - e.weights.kept().unwrap(), 300 + 10);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StructuredMask {
    kept: BTreeMap<String, Vec<bool>>,
}

impl StructuredMask {
    /// Every group of every layer of `coupling` kept.
    pub fn all_kept(coupling: &Coupling) -> Self {
        Self {
            kept: coupling
                .layers
                .iter()
                .map(|l| (l.name.clone(), vec![true; l.groups]))
                .collect(),
        }
    }

    /// Every group kept except those listed (layer name → group indices). Refuses a layer that
    /// forms no groups (naming it and why) and an index out of range.
    pub fn from_pruned(coupling: &Coupling, pruned: &BTreeMap<String, Vec<usize>>) -> Result<Self> {
        let mut m = Self::all_kept(coupling);
        for (name, idx) in pruned {
            for &g in idx {
                m.prune(coupling, name, g)?;
            }
        }
        Ok(m)
    }

    /// Prunes group `g` of layer `name`. Refuses a layer that forms no groups (naming it and
    /// why) and an index out of range.
    pub fn prune(&mut self, coupling: &Coupling, name: &str, g: usize) -> Result<()> {
        let l = coupling.layer(name)?;
        let kept = self
            .kept
            .entry(name.to_string())
            .or_insert_with(|| vec![true; l.groups]);
        match kept.get_mut(g) {
            Some(k) => *k = false,
            None => candle_core::bail!("layer `{name}` has {} groups, no group {g}", l.groups),
        }
        Ok(())
    }

    /// The kept flags of layer `name`'s groups, if the mask has the layer.
    pub fn kept(&self, name: &str) -> Option<&[bool]> {
        self.kept.get(name).map(Vec::as_slice)
    }

    /// The pruned groups of layer `name`, in increasing order (empty for an unknown layer).
    pub fn pruned(&self, name: &str) -> Vec<usize> {
        self.kept
            .get(name)
            .map(|k| (0..k.len()).filter(|&g| !k[g]).collect())
            .unwrap_or_default()
    }

    /// Kept flags by layer name.
    pub fn layers(&self) -> &BTreeMap<String, Vec<bool>> {
        &self.kept
    }

    /// Groups under the mask.
    pub fn num_groups(&self) -> usize {
        self.kept.values().map(Vec::len).sum()
    }

    /// Pruned groups.
    pub fn num_pruned(&self) -> usize {
        self.kept.values().map(|k| k.iter().filter(|&&b| !b).count()).sum()
    }

    /// Names of layers with no group left (the network is disconnected there).
    pub fn collapsed(&self) -> Vec<&str> {
        self.kept
            .iter()
            .filter(|(_, k)| !k.is_empty() && k.iter().all(|&b| !b))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The structured mask an entry mask encodes: group `g` of a layer `L` of `coupling` is pruned
    /// iff row `g` of `L`'s weight mask in `masks` is all zero (a layer `masks` does not hold
    /// keeps every group). This reads the weight masks written by
    /// [`ExpandedMask::to_mask_set`] back, and finds the whole filters an unstructured mask
    /// happens to remove; it does not check the coupled vectors (see
    /// [`super::compact::check_pruned_outputs`]). A mask of the wrong shape is refused, naming it.
    pub fn from_mask_set(coupling: &Coupling, masks: &MaskSet) -> Result<Self> {
        let mut m = Self::all_kept(coupling);
        for l in &coupling.layers {
            let Some(t) = masks.get(&l.name) else {
                continue;
            };
            if t.dims().first() != Some(&l.groups) {
                candle_core::bail!(
                    "mask `{}` has shape {:?}, the layer has {} output groups",
                    l.name,
                    t.dims(),
                    l.groups
                );
            }
            let rows = t
                .to_dtype(DType::F32)?
                .flatten_from(1)?
                .abs()?
                .sum(1)?
                .to_vec1::<f32>()?;
            for (g, r) in rows.iter().enumerate() {
                if *r == 0.0 {
                    m.prune(coupling, &l.name, g)?;
                }
            }
        }
        Ok(m)
    }

    /// Checks that every layer of the mask forms groups in `coupling`, with the same count.
    pub fn check(&self, coupling: &Coupling) -> Result<()> {
        for (name, k) in &self.kept {
            let l = coupling.layer(name)?;
            if k.len() != l.groups {
                candle_core::bail!(
                    "the structured mask has {} groups for layer `{name}`, the layer has {}",
                    k.len(),
                    l.groups
                );
            }
        }
        Ok(())
    }

    /// The entry masks of every weight the groups touch and the coupled vectors (see the
    /// [module documentation](self)). Every layer of `coupling` and every consumer gets a mask,
    /// all ones where nothing is pruned.
    pub fn expand(&self, coupling: &Coupling) -> Result<ExpandedMask> {
        self.check(coupling)?;
        // per weight: kept rows (own groups) and kept columns (the producer's groups)
        let mut rows: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        let mut cols: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        let shape = |name: &str| -> Result<Vec<usize>> {
            match coupling.geometry.get(name) {
                Some(i) if i.weight_shape.len() >= 2 => Ok(i.weight_shape.clone()),
                _ => candle_core::bail!("the coupling has no weight shape for `{name}`"),
            }
        };
        let mut vectors = Vec::new();
        for l in &coupling.layers {
            let kept = self.kept.get(&l.name).cloned().unwrap_or_else(|| vec![true; l.groups]);
            let s = shape(&l.name)?;
            rows.insert(l.name.clone(), kept.iter().map(|&k| f32::from(u8::from(k))).collect());
            cols.entry(l.name.clone()).or_insert_with(|| vec![1.0; s[1]]);
            let ms = shape(&l.consumer.name)?;
            rows.entry(l.consumer.name.clone()).or_insert_with(|| vec![1.0; ms[0]]);
            if cols.get(&l.consumer.name).is_some_and(|c| c.contains(&0.0)) {
                candle_core::bail!("weight `{}` is the consumer of two layers", l.consumer.name);
            }
            let mut c = vec![1f32; ms[1]];
            for g in (0..l.groups).filter(|&g| !kept[g]) {
                for j in l.consumer_columns(g) {
                    c[j] = 0.0;
                }
            }
            cols.insert(l.consumer.name.clone(), c);
            let pruned: Vec<usize> = (0..l.groups).filter(|&g| !kept[g]).collect();
            for (name, role) in l.vectors() {
                vectors.push(CoupledVector {
                    name,
                    role,
                    len: l.groups,
                    pruned: pruned.clone(),
                });
            }
        }
        let mut weights = MaskSet::new();
        for (name, r) in rows {
            let s = shape(&name)?;
            let c = cols.remove(&name).unwrap_or_else(|| vec![1.0; s[1]]);
            let rest: usize = s[2..].iter().product();
            let (o, i) = (r.len(), c.len());
            let r = Tensor::from_vec(r, (o, 1, 1), &Device::Cpu)?;
            let c = Tensor::from_vec(c, (1, i, 1), &Device::Cpu)?;
            let m = r.broadcast_mul(&c)?.broadcast_as((o, i, rest))?.reshape(s.as_slice())?;
            weights.insert(name, m)?;
        }
        Ok(ExpandedMask { weights, vectors })
    }
}

/// A vector whose entries belong to the groups of one layer (see [`VectorRole`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoupledVector {
    /// Logical name (`features.1.weight`; a Bayesian bias is stored as `{name}_mu`).
    pub name: String,
    /// What the vector is.
    pub role: VectorRole,
    /// Its length (the layer's group count).
    pub len: usize,
    /// The entries of pruned groups, in increasing order.
    pub pruned: Vec<usize>,
}

/// A [`StructuredMask`] expanded to entry masks and coupled vectors (see the
/// [module documentation](self)).
#[derive(Debug, Clone, Default)]
pub struct ExpandedMask {
    /// Masks of every weight touched: pruned rows and the consumers' pruned columns.
    pub weights: MaskSet,
    /// Every coupled vector with the entries of the pruned groups.
    pub vectors: Vec<CoupledVector>,
}

/// `m ⊙ v + (1 − m) · value` for a 0/1 vector `m` on `var`'s first dimension.
fn set_entries(var: &Var, keep: &Tensor, value: f64) -> Result<()> {
    let m = keep.to_dtype(var.dtype())?.to_device(var.device())?;
    let v = (var.as_tensor().mul(&m)? + (m.affine(-1.0, 1.0)? * value)?)?;
    var.set(&v)
}

impl CoupledVector {
    /// The 0/1 keep vector (1 = kept).
    fn keep(&self) -> Result<Tensor> {
        let mut v = vec![1f32; self.len];
        for &g in &self.pruned {
            if let Some(e) = v.get_mut(g) {
                *e = 0.0;
            }
        }
        Tensor::from_vec(v, self.len, &Device::Cpu)
    }

    /// The stored tensors that pruning edits: the vector (`{name}` or `{name}_mu`) and, for a
    /// Bayesian bias, its scale siblings with the value of a removed entry.
    fn targets(&self, store: &ParamStore) -> Result<Vec<(Var, f64)>> {
        let (_, var) = resolve(store, &self.name)?;
        let mut out = vec![(var, 0.0)];
        for (sib, sv) in scale_siblings(store, &self.name) {
            if sib.ends_with("_rho") {
                out.push((sv, inv_softplus(PRUNED_STD)));
            } else if sib.ends_with("_log_sigma2") {
                out.push((sv, PRUNED_LOG_SIGMA2));
            }
        }
        Ok(out)
    }
}

impl ExpandedMask {
    /// Checks the weight masks and every coupled vector against `store` (names resolve, shapes
    /// match); the error names the tensor.
    pub fn check(&self, store: &ParamStore) -> Result<()> {
        self.weights.check(store)?;
        for v in &self.vectors {
            let t = vector(store, &v.name)?;
            if t.dims() != [v.len] {
                candle_core::bail!("`{}` has shape {:?}, expected [{}]", v.name, t.dims(), v.len);
            }
        }
        Ok(())
    }

    /// Zeroes the pruned weights (with [`MaskSet::apply`]) and the pruned entries of the biases
    /// and batch-norm γ and β (see the [module documentation](self)). Checks first.
    pub fn apply(&self, store: &ParamStore) -> Result<()> {
        self.check(store)?;
        self.weights.apply(store)?;
        for v in self.vectors.iter().filter(|v| v.role.zeroed() && !v.pruned.is_empty()) {
            let keep = v.keep()?;
            for (var, value) in v.targets(store)? {
                set_entries(&var, &keep, value)?;
            }
        }
        Ok(())
    }

    /// Zeroes the gradients of the pruned weights ([`MaskSet::mask_grads`]) and of the pruned
    /// entries of the zeroed vectors (and their Bayesian scales).
    pub fn mask_grads(&self, store: &ParamStore, grads: &mut GradStore) -> Result<()> {
        self.weights.mask_grads(store, grads)?;
        for v in self.vectors.iter().filter(|v| v.role.zeroed() && !v.pruned.is_empty()) {
            let keep = v.keep()?;
            for (var, _) in v.targets(store)? {
                if let Some(g) = grads.get(var.as_tensor()) {
                    let m = keep.to_dtype(g.dtype())?.to_device(g.device())?;
                    let masked = g.mul(&m)?;
                    grads.insert(var.as_tensor(), masked);
                }
            }
        }
        Ok(())
    }

    /// The weight masks and a 0/1 mask of every zeroed coupled vector (bias, γ, β; 0 at the
    /// pruned groups) as one [`MaskSet`]: what `train --masks` holds during a fine-tune and
    /// [`StructuredMask::from_mask_set`] reads back. [`MaskSet::apply`] and
    /// [`MaskSet::mask_grads`] on it do what [`ExpandedMask::apply`] and
    /// [`ExpandedMask::mask_grads`] do (a Bayesian bias's scale goes to the removed value).
    pub fn to_mask_set(&self) -> Result<MaskSet> {
        let mut out = self.weights.clone();
        for v in self.vectors.iter().filter(|v| v.role.zeroed()) {
            out.insert(v.name.clone(), v.keep()?)?;
        }
        Ok(out)
    }

    /// Kept and total entries of the weight masks.
    pub fn weight_counts(&self) -> Result<(usize, usize)> {
        Ok((self.weights.kept()?, self.weights.total()))
    }
}

impl StepHook for ExpandedMask {
    /// Masks the gradients of pruned entries ([`ExpandedMask::mask_grads`]).
    fn before_step(&mut self, store: &ParamStore, grads: &mut GradStore, _step: usize) -> Result<()> {
        self.mask_grads(store, grads)
    }
    /// Applies the mask again after the optimiser ([`ExpandedMask::apply`]).
    fn after_step(&mut self, store: &ParamStore, _step: usize) -> Result<()> {
        self.apply(store)
    }
}

/// The f32 0/1 keep flags of a layer as a tensor (1 = kept): a helper for callers that force
/// activations or slice tensors by group.
pub fn keep_tensor(kept: &[bool]) -> Result<Tensor> {
    let v: Vec<f32> = kept.iter().map(|&k| f32::from(u8::from(k))).collect();
    Tensor::from_vec(v, kept.len(), &Device::Cpu)?.to_dtype(DType::F32)
}

#[cfg(test)]
mod tests {
    use super::super::groups::{record, Coupling};
    use super::super::test_util::{logits, max_diff, net, random_half, random_net};
    use super::*;
    use crate::geometry::LayerKind;
    use secateur_bayes::nn::{Conv2dCfg, LinearCfg};
    use secateur_bayes::{Ctx, Module, ParamBuilder, SeededRng};
    use secateur_models::arch::{Mlp, MlpConfig, Vgg, VggConfig, VggItem};
    use secateur_models::{Deterministic, LayerFactory, ModelSpec, Network};
    use std::collections::HashMap;

    /// A copy of every tensor of `store` (not sharing storage).
    fn snapshot(store: &ParamStore) -> Result<HashMap<String, Tensor>> {
        store.tensors().into_iter().map(|(k, v)| Ok((k, v.copy()?))).collect()
    }

    /// Replaces output channel `g` of the named layers by `fill[g]` where `keep[g] = 0`:
    /// `y ← y ⊙ keep + fill` along the channel dimension (1 for a convolution, the last for a
    /// linear layer). An independent way to remove channels: no weight is touched.
    struct Forcing {
        force: BTreeMap<String, (Tensor, Tensor)>,
    }

    struct Forced {
        inner: Box<dyn Module>,
        kind: LayerKind,
        force: Option<(Tensor, Tensor)>,
    }

    impl Module for Forced {
        fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
            let y = self.inner.forward(x, ctx)?;
            let Some((keep, fill)) = &self.force else { return Ok(y) };
            let d = if self.kind == LayerKind::Conv2d {
                1
            } else {
                y.rank() - 1
            };
            let shape: Vec<usize> = (0..y.rank())
                .map(|i| if i == d { y.dim(d).unwrap_or(1) } else { 1 })
                .collect();
            y.broadcast_mul(&keep.reshape(shape.clone())?)?
                .broadcast_add(&fill.reshape(shape)?)
        }
    }

    impl LayerFactory for Forcing {
        fn name(&self) -> &str {
            "forcing"
        }
        fn linear(&self, pb: &ParamBuilder, cfg: LinearCfg) -> Result<Box<dyn Module>> {
            Ok(Box::new(Forced {
                inner: Deterministic.linear(pb, cfg)?,
                kind: LayerKind::Linear,
                force: self.force.get(&pb.path("weight")).cloned(),
            }))
        }
        fn conv2d(&self, pb: &ParamBuilder, cfg: Conv2dCfg) -> Result<Box<dyn Module>> {
            Ok(Box::new(Forced {
                inner: Deterministic.conv2d(pb, cfg)?,
                kind: LayerKind::Conv2d,
                force: self.force.get(&pb.path("weight")).cloned(),
            }))
        }
    }

    /// The network of `spec` with the pruned channels' outputs forced: to 0 for a layer without
    /// batch norm; for a layer followed by the batch norm `bn(layer)` (named by the test, not
    /// found by the coupling), to `m − β √(v + ε)/γ`, the input the batch norm maps to 0 in
    /// evaluation mode. Loads the tensors `orig`.
    fn forced_net(
        spec: &ModelSpec,
        mask: &StructuredMask,
        orig: &HashMap<String, Tensor>,
        bn: impl Fn(&str) -> Option<String>,
    ) -> Result<Network> {
        let mut force = BTreeMap::new();
        for (name, kept) in mask.layers() {
            let keep = keep_tensor(kept)?;
            let fill = match bn(name) {
                None => keep.zeros_like()?,
                Some(q) => {
                    let t = |s: &str| orig[&format!("{q}.{s}")].to_dtype(DType::F64);
                    let (g, b, m, var) = (t("weight")?, t("bias")?, t("running_mean")?, t("running_var")?);
                    let shift = ((var + 1e-5)?.sqrt()? * b)?.div(&g)?;
                    let v: Vec<f64> = (m - shift)?.to_vec1()?;
                    let v: Vec<f32> = v
                        .iter()
                        .zip(kept)
                        .map(|(&k, &kp)| if kp { 0.0 } else { k as f32 })
                        .collect();
                    Tensor::from_vec(v, kept.len(), &Device::Cpu)?
                }
            };
            force.insert(name.clone(), (keep, fill));
        }
        let (n, store) = net(spec, &Forcing { force })?;
        store.load(orig)?;
        Ok(n)
    }

    /// The tensors of the network without the pruned groups: rows of each layer's weight, the
    /// consumer's column blocks, and the coupled vectors, by index selection.
    fn sliced(orig: &HashMap<String, Tensor>, c: &Coupling, mask: &StructuredMask) -> Result<HashMap<String, Tensor>> {
        let idx =
            |v: Vec<usize>| Tensor::from_vec(v.iter().map(|&i| i as u32).collect::<Vec<_>>(), v.len(), &Device::Cpu);
        let kept = |l: &str| -> Vec<usize> {
            let k = mask.kept(l).unwrap();
            (0..k.len()).filter(|&g| k[g]).collect()
        };
        let mut out = HashMap::new();
        for (name, t) in orig {
            let mut t = t.clone();
            if let Ok(l) = c.layer(name) {
                t = t.index_select(&idx(kept(&l.name))?, 0)?;
            }
            if let Some(p) = c.producer_of(name) {
                let cols = kept(&p.name).into_iter().flat_map(|g| p.consumer_columns(g)).collect();
                t = t.index_select(&idx(cols)?, 1)?;
            }
            for l in &c.layers {
                if l.vectors().iter().any(|(v, _)| v == name) {
                    t = t.index_select(&idx(kept(&l.name))?, 0)?;
                }
            }
            out.insert(name.clone(), t);
        }
        Ok(out)
    }

    fn kept_count(mask: &StructuredMask, l: &str) -> usize {
        mask.kept(l).unwrap().iter().filter(|&&k| k).count()
    }

    #[test]
    fn expansion_zeroes_rows_and_consumer_columns() -> Result<()> {
        let c = record(&ModelSpec::new("lenet5", [1, 28, 28], 10))?;
        let mut m = StructuredMask::all_kept(&c);
        m.prune(&c, "conv2.weight", 2)?;
        m.prune(&c, "fc1.weight", 5)?;
        assert!(m
            .prune(&c, "conv2.weight", 16)
            .unwrap_err()
            .to_string()
            .contains("no group 16"));
        let e = m.expand(&c)?;
        let conv2 = e
            .weights
            .get("conv2.weight")
            .unwrap()
            .sum((1, 2, 3))?
            .to_vec1::<f32>()?;
        assert_eq!(conv2[2], 0.0);
        assert_eq!(conv2.iter().filter(|&&s| s == 150.0).count(), 15); // 6·5·5 kept per row
                                                                       // fc1 [120, 400]: columns 50..75 (channel 2 of conv2, 5×5 map) and row 5
        let fc1 = e.weights.get("fc1.weight").unwrap();
        let cols = fc1.sum(0)?.to_vec1::<f32>()?;
        for (j, &s) in cols.iter().enumerate() {
            assert_eq!(s, if (50..75).contains(&j) { 0.0 } else { 119.0 }, "column {j}");
        }
        assert_eq!(fc1.sum(1)?.to_vec1::<f32>()?[5], 0.0);
        let fc2 = e.weights.get("fc2.weight").unwrap().sum(0)?.to_vec1::<f32>()?;
        assert_eq!(fc2[5], 0.0);
        // conv2 row 2: 6·5·5 = 150; fc1: 25 columns × 119 rows other than row 5, plus row 5's 400
        // entries (the union of the column block and the row); fc2 column 5: 84 rows
        assert_eq!(e.weights.total() - e.weights.kept()?, 150 + 25 * 119 + 400 + 84);
        let roles: Vec<_> = e.vectors.iter().map(|v| (v.name.as_str(), v.pruned.clone())).collect();
        assert!(roles.contains(&("conv2.bias", vec![2])) && roles.contains(&("fc1.bias", vec![5])));
        Ok(())
    }

    /// MLP and LeNet-5 (no batch norm): the expanded mask applied to the weights and biases gives
    /// the logits of the unmasked network whose pruned channels are forced to 0 at the layer's
    /// output (an independent computation: no weight touched).
    #[test]
    fn masked_equals_forced_activations_mlp_lenet5() -> Result<()> {
        for (arch, seed) in [("mlp", 11), ("lenet5", 12)] {
            let spec = ModelSpec::new(arch, [1, 28, 28], 10);
            let c = record(&spec)?;
            let (full, store) = random_net(&spec, seed)?;
            let orig = snapshot(&store)?;
            let x = SeededRng::new(seed + 100).randn(&[4, 1, 28, 28], DType::F32, &Device::Cpu)?;
            let dense = logits(&full, &x)?;
            let mask = random_half(&c, seed)?;
            mask.expand(&c)?.apply(&store)?;
            let masked = logits(&full, &x)?;
            let forced = logits(&forced_net(&spec, &mask, &orig, |_| None)?, &x)?;
            let (d, scale) = max_diff(&masked, &forced)?;
            let (moved, _) = max_diff(&masked, &dense)?;
            eprintln!(
                "{arch}: {} of {} groups pruned; max |masked − forced| = {d:.3e} (logits up to {scale:.3}); pruning moved the logits by up to {moved:.3}",
                mask.num_pruned(),
                mask.num_groups()
            );
            assert!(d <= 1e-5 * scale.max(1.0), "{arch}: {d}");
            assert!(
                moved > 1e-2,
                "{arch}: pruning half the groups changed nothing ({moved})"
            );
        }
        Ok(())
    }

    /// MLP and VGG-11 (batch norm with random γ, β, statistics): the masked full network gives
    /// the logits of a narrower network built from scratch (`Mlp`/`Vgg` with the kept widths) and
    /// loaded with the sliced tensors (a strict load: every shape must match). For VGG also the
    /// two halves of the expansion (see the module documentation): rows with zeroed bias/γ/β match
    /// the sliced network, rows alone do not.
    #[test]
    fn masked_equals_physically_sliced_mlp_vgg11() -> Result<()> {
        // MLP
        let spec = ModelSpec::new("mlp", [1, 28, 28], 10);
        let c = record(&spec)?;
        let (full, store) = random_net(&spec, 21)?;
        let orig = snapshot(&store)?;
        let mask = random_half(&c, 21)?;
        let cfg = MlpConfig {
            hidden: vec![kept_count(&mask, "fc1.weight"), kept_count(&mask, "fc2.weight")],
        };
        let narrow_store = ParamStore::new();
        let pb = ParamBuilder::new(narrow_store.clone(), SeededRng::new(5), DType::F32, Device::Cpu);
        let narrow = Mlp::new(&cfg, [1, 28, 28], 10, &Deterministic, &pb)?;
        narrow_store.load(&sliced(&orig, &c, &mask)?)?;
        mask.expand(&c)?.apply(&store)?;
        let x = SeededRng::new(22).randn(&[4, 1, 28, 28], DType::F32, &Device::Cpu)?;
        let (d, scale) = max_diff(&logits(&full, &x)?, &logits(&narrow, &x)?)?;
        eprintln!(
            "mlp hidden {:?}: max |masked − sliced| = {d:.3e} (logits up to {scale:.3})",
            cfg.hidden
        );
        assert!(d <= 1e-5 * scale.max(1.0), "mlp: {d}");

        // VGG-11 on 16×16 inputs
        let spec = ModelSpec::new("vgg11", [3, 16, 16], 10);
        let c = record(&spec)?;
        let (full, store) = random_net(&spec, 23)?;
        let orig = snapshot(&store)?;
        let mask = random_half(&c, 23)?;
        let mut widths = c.layers.iter().map(|l| kept_count(&mask, &l.name));
        let features = VggConfig::vgg11()
            .features
            .iter()
            .map(|it| match it {
                VggItem::Conv(_) => VggItem::Conv(widths.next().unwrap()),
                VggItem::Pool => VggItem::Pool,
            })
            .collect();
        let narrow_store = ParamStore::new();
        let pb = ParamBuilder::new(narrow_store.clone(), SeededRng::new(5), DType::F32, Device::Cpu);
        let narrow = Vgg::new(&VggConfig { features }, [3, 16, 16], 10, &Deterministic, &pb)?;
        narrow_store.load(&sliced(&orig, &c, &mask)?)?;
        let x = SeededRng::new(24).randn(&[4, 3, 16, 16], DType::F32, &Device::Cpu)?;
        let expanded = mask.expand(&c)?;
        let sliced_logits = logits(&narrow, &x)?;
        // controls: (a) only the pruned rows of each layer zeroed (no consumer columns, no
        // vectors): the batch norms' constants leak; (b) the rows and the bias, γ, β zeroed, the
        // consumer columns left dense: the channels emit exactly 0
        let mut rows_only = MaskSet::new();
        for l in &c.layers {
            let s = c.geometry.get(&l.name).unwrap().weight_shape.clone();
            let mut rs = vec![1; s.len()];
            rs[0] = s[0];
            let r = keep_tensor(mask.kept(&l.name).unwrap())?
                .reshape(rs)?
                .broadcast_as(s.as_slice())?;
            rows_only.insert(l.name.clone(), r.contiguous()?)?;
        }
        rows_only.apply(&store)?;
        let (d_rows, _) = max_diff(&logits(&full, &x)?, &sliced_logits)?;
        store.load(&orig)?;
        ExpandedMask {
            weights: rows_only,
            vectors: expanded.vectors.clone(),
        }
        .apply(&store)?;
        let (d_rows_vectors, _) = max_diff(&logits(&full, &x)?, &sliced_logits)?;
        store.load(&orig)?;
        expanded.apply(&store)?;
        let (d, scale) = max_diff(&logits(&full, &x)?, &sliced_logits)?;
        eprintln!(
            "vgg11 {} of {} groups pruned: max |masked − sliced| = {d:.3e} (logits up to {scale:.3}); \
             rows only: {d_rows:.3}; rows + bias/γ/β: {d_rows_vectors:.3e}",
            mask.num_pruned(),
            mask.num_groups()
        );
        assert!(d <= 1e-5 * scale.max(1.0), "vgg11: {d}");
        assert!(
            d_rows_vectors <= 1e-5 * scale.max(1.0),
            "vgg11 rows + vectors: {d_rows_vectors}"
        );
        assert!(d_rows > 1e-2, "vgg11: the rows alone already matched ({d_rows})");
        Ok(())
    }

    /// VGG-11 and ResNet-20 (random batch norms): the masked network equals the unmasked one whose
    /// pruned channels are forced, at the convolution's output, to the value its batch norm maps
    /// to 0 (batch norms named by the test from the architectures' conventions).
    #[test]
    fn masked_equals_forced_batch_norm_output_vgg11_resnet20() -> Result<()> {
        let vgg_bn = |n: &str| {
            let i: usize = n.strip_prefix("features.")?.strip_suffix(".weight")?.parse().ok()?;
            Some(format!("features.{}", i + 1))
        };
        let resnet_bn = |n: &str| Some(n.strip_suffix(".conv1.weight")?.to_string() + ".bn1");
        type Bn = dyn Fn(&str) -> Option<String>;
        let cases: [(&str, [usize; 3], &Bn); 2] =
            [("vgg11", [3, 16, 16], &vgg_bn), ("resnet20", [3, 8, 8], &resnet_bn)];
        for (k, (arch, input, bn)) in cases.into_iter().enumerate() {
            let spec = ModelSpec::new(arch, input, 10);
            let c = record(&spec)?;
            let seed = 31 + k as u64;
            let (full, store) = random_net(&spec, seed)?;
            let orig = snapshot(&store)?;
            let mask = random_half(&c, seed)?;
            let [ch, h, w] = input;
            let x = SeededRng::new(seed + 100).randn(&[4, ch, h, w], DType::F32, &Device::Cpu)?;
            let dense = logits(&full, &x)?;
            mask.expand(&c)?.apply(&store)?;
            let masked = logits(&full, &x)?;
            let forced = logits(&forced_net(&spec, &mask, &orig, bn)?, &x)?;
            let (d, scale) = max_diff(&masked, &forced)?;
            let (moved, _) = max_diff(&masked, &dense)?;
            eprintln!(
                "{arch}: {} of {} groups pruned; max |masked − forced| = {d:.3e} (logits up to {scale:.3}); pruning moved the logits by up to {moved:.3}",
                mask.num_pruned(),
                mask.num_groups()
            );
            assert!(d <= 1e-4 * scale.max(1.0), "{arch}: {d}");
            assert!(moved > 1e-2, "{arch}: pruning changed nothing ({moved})");
        }
        Ok(())
    }

    /// A mean-field Bayesian store: the bias posterior mean and scale of a pruned unit are set to
    /// the removed values, and the refused classifier cannot be pruned.
    #[test]
    fn apply_to_a_bayesian_store() -> Result<()> {
        let spec = ModelSpec::new("mlp", [1, 28, 28], 10);
        let c = record(&spec)?;
        let prior = secateur_bayes::Prior::gaussian(0.0, 1.0).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let (_, store) = net(&spec, &secateur_models::MeanField::new(prior, 0.05)?)?;
        let mask = StructuredMask::from_pruned(&c, &BTreeMap::from([("fc1.weight".to_string(), vec![3, 9])]))?;
        mask.expand(&c)?.apply(&store)?;
        let get = |n: &str| store.get(n).unwrap().as_tensor().to_dtype(DType::F64).unwrap();
        let b = get("fc1.bias_mu").to_vec1::<f64>()?;
        assert_eq!((b[3], b[9]), (0.0, 0.0));
        assert!(b[4] != 0.0);
        let rho = get("fc1.bias_rho").to_vec1::<f64>()?;
        assert!((rho[3] - inv_softplus(PRUNED_STD)).abs() < 1e-3 && rho[4] != rho[3]);
        let w = get("fc2.weight_mu").sum(0)?.to_vec1::<f64>()?;
        let wr = get("fc1.weight_mu").abs()?.sum(1)?.to_vec1::<f64>()?;
        assert_eq!((w[3], w[9], wr[3]), (0.0, 0.0, 0.0));
        assert!(StructuredMask::from_pruned(&c, &BTreeMap::from([("fc3.weight".to_string(), vec![0])])).is_err());
        Ok(())
    }

    /// The structured mask survives the round trip through an entry mask file
    /// ([`ExpandedMask::to_mask_set`], [`StructuredMask::from_mask_set`]), and the entry masks
    /// applied by [`MaskSet::apply`] leave every tensor (biases, γ, β included) as
    /// [`ExpandedMask::apply`] does, on a VGG-11 with batch norm and a mean-field MLP.
    #[test]
    fn mask_set_round_trip() -> Result<()> {
        let prior = secateur_bayes::Prior::gaussian(0.0, 1.0).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mf = secateur_models::MeanField::new(prior, 0.05)?;
        for (spec, factory) in [
            (
                ModelSpec::new("vgg11", [3, 16, 16], 10),
                &Deterministic as &dyn LayerFactory,
            ),
            (ModelSpec::new("mlp", [1, 28, 28], 10), &mf as &dyn LayerFactory),
        ] {
            let c = record(&spec)?;
            let mask = random_half(&c, 11)?;
            let expanded = mask.expand(&c)?;
            let set = expanded.to_mask_set()?;
            assert_eq!(StructuredMask::from_mask_set(&c, &set)?, mask, "{}", spec.arch);
            let (_, a) = net(&spec, factory)?;
            let (_, b) = net(&spec, factory)?;
            super::super::test_util::randomise_bn(&a, 2)?;
            super::super::test_util::randomise_bn(&b, 2)?;
            expanded.apply(&a)?;
            set.apply(&b)?;
            let (ta, tb) = (snapshot(&a)?, snapshot(&b)?);
            let mut moved = 0;
            for (name, t) in &ta {
                let (d, _) = max_diff(t, &tb[name])?;
                assert_eq!(d, 0.0, "{}: `{name}`", spec.arch);
                moved += 1;
            }
            assert!(moved > 0);
            super::super::compact::check_pruned_outputs(&c, &mask, &b.tensors())?;
        }
        Ok(())
    }

    /// An unstructured mask that happens to zero a whole filter is read as pruning it, but the
    /// compaction check refuses it while the filter's bias is live, naming the bias.
    #[test]
    fn whole_zero_rows_with_a_live_bias_are_refused() -> Result<()> {
        let spec = ModelSpec::new("lenet5", [1, 28, 28], 10);
        let c = record(&spec)?;
        let (_, store) = net(&spec, &Deterministic)?;
        let mut set = MaskSet::new();
        let mut m = vec![1f32; 6 * 25];
        m[2 * 25..3 * 25].iter_mut().for_each(|v| *v = 0.0);
        m[7] = 0.0; // a lone entry of filter 0
        set.insert("conv1.weight", Tensor::from_vec(m, (6, 1, 5, 5), &Device::Cpu)?)?;
        let sm = StructuredMask::from_mask_set(&c, &set)?;
        assert_eq!(sm.pruned("conv1.weight"), vec![2]);
        assert_eq!(sm.num_pruned(), 1);
        set.apply(&store)?;
        let e = super::super::compact::check_pruned_outputs(&c, &sm, &store.tensors())
            .unwrap_err()
            .to_string();
        assert!(e.contains("conv1.bias") && e.contains("group 2"), "{e}");
        // with the structured expansion applied, it passes
        sm.expand(&c)?.apply(&store)?;
        super::super::compact::check_pruned_outputs(&c, &sm, &store.tensors())?;
        // a mask of the wrong shape is refused
        let mut bad = MaskSet::new();
        bad.insert("conv1.weight", Tensor::ones((5, 1, 5, 5), DType::F32, &Device::Cpu)?)?;
        assert!(StructuredMask::from_mask_set(&c, &bad).is_err());
        Ok(())
    }
}
