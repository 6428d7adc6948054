//! Mask sets: which weights are kept.
//!
//! A [`MaskSet`] maps the logical name of each prunable tensor (see [`crate::prunable`]:
//! `features.0.weight`, for a Bayesian layer the name of its posterior mean `features.0.weight_mu`
//! without the `_mu`) to a 0/1 tensor of the tensor's shape, 1 = kept, in sorted name order.
//! Tensors without a mask are dense.
//!
//! **Bayesian layers.** A pruned weight of a Bayesian layer is removed from the model: its
//! posterior mean `{name}_mu` is set to zero and its scale to the value that means "removed" in
//! its family:
//! - mean-field Gaussian (Blundell et al. 2015): `{name}_rho ← softplus⁻¹(PRUNED_STD)`, so that
//!   weight samples `μ + σε` are zero to within `1e-10 · ε`;
//! - sparse variational dropout (Molchanov et al. 2017): `{name}_log_sigma2 ←`
//!   [`PRUNED_LOG_SIGMA2`], i.e. `log α = +8`, the **pruned** end of the clipped range, where the
//!   KL approximation is about `3e-4` nats (a tiny σ would instead give `log α = −8`, the "most
//!   important" end, and about 4.6 nats of KL per pruned weight); the noise left, `σ ≈ 1e-6`,
//!   multiplies inputs of order 1;
//! - variational dropout with per-weight rates (Kingma et al. 2015, `N(θ, αθ²)`):
//!   `{name}_log_alpha ←` [`VD_LOG_ALPHA_MAX`] (`α = 1`), the end of its clipped range where the
//!   KL approximation is smallest; the weight is zero anyway once `θ = 0` (per-unit rates are
//!   shared with kept weights and are left alone).
//!
//! The gradients of `{name}_mu` and of every same-shaped `{name}_*` sibling are masked, so the
//! removed weights do not train. The divergence of a removed weight from its prior is then a
//! constant that no longer depends on any trained value.

use crate::geometry::{Geometry, LayerInfo};
use crate::prunable::{resolve, scale_siblings};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use secateur_bayes::layers::sparse_vd::PRUNED_LOG_SIGMA2;
use secateur_bayes::layers::variational_dropout::VD_LOG_ALPHA_MAX;
use secateur_bayes::math::inv_softplus;
use secateur_bayes::ParamStore;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Posterior standard deviation given to a pruned weight of a Bayesian layer.
pub const PRUNED_STD: f64 = 1e-10;

/// Scores of prunable tensors by logical name (every criterion's output).
pub type Scores = BTreeMap<String, Tensor>;

/// Name → 0/1 mask (1 = kept) of prunable tensors, in sorted name order.
///
/// ```
/// use secateur_pruning::MaskSet;
/// use candle_core::{Device, Tensor};
/// let mut m = MaskSet::new();
/// m.insert("fc1.weight", Tensor::new(&[[1f32, 0.], [0., 0.]], &Device::Cpu).unwrap()).unwrap();
/// assert_eq!((m.total(), m.kept().unwrap()), (4, 1));
/// assert_eq!(m.sparsity().unwrap(), 0.75);
/// assert!(m.insert("fc2.weight", Tensor::new(&[0.5f32], &Device::Cpu).unwrap()).is_err());
/// ```
#[derive(Debug, Clone, Default)]
pub struct MaskSet {
    masks: BTreeMap<String, Tensor>,
}

/// Output units (first dimension) of a 0/1 mask with no one left.
fn dead_units(m: &Tensor) -> Result<usize> {
    let units = m.dims().first().copied().unwrap_or(0);
    if units == 0 {
        return Ok(0);
    }
    let per_unit = m.to_dtype(DType::F64)?.reshape((units, ()))?.sum(1)?.to_vec1::<f64>()?;
    Ok(per_unit.iter().filter(|&&k| k == 0.0).count())
}

/// Number of ones of a 0/1 tensor.
fn count_ones(t: &Tensor) -> Result<usize> {
    Ok(t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?.round() as usize)
}

impl MaskSet {
    /// An empty set (everything dense).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the mask of `name`. Refuses a tensor with an entry other than 0 or 1,
    /// naming the tensor; the mask is stored as f32.
    pub fn insert(&mut self, name: impl Into<String>, mask: Tensor) -> Result<()> {
        let name = name.into();
        let m = mask.to_dtype(DType::F32)?;
        let bad = m.ne(0f64)?.mul(&m.ne(1f64)?)?;
        if count_ones(&bad.to_dtype(DType::F32)?)? > 0 {
            candle_core::bail!("mask `{name}` has entries other than 0 and 1");
        }
        self.masks.insert(name, m);
        Ok(())
    }

    /// A set from name → tensor pairs (each checked by [`MaskSet::insert`]).
    pub fn from_map(masks: BTreeMap<String, Tensor>) -> Result<Self> {
        let mut s = Self::new();
        for (k, v) in masks {
            s.insert(k, v)?;
        }
        Ok(s)
    }

    /// The mask of `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.masks.get(name)
    }

    /// Masks by name.
    pub fn masks(&self) -> &BTreeMap<String, Tensor> {
        &self.masks
    }

    /// Number of masked tensors.
    pub fn len(&self) -> usize {
        self.masks.len()
    }

    /// Whether no tensor is masked.
    pub fn is_empty(&self) -> bool {
        self.masks.is_empty()
    }

    /// Entries under a mask.
    pub fn total(&self) -> usize {
        self.masks.values().map(|m| m.elem_count()).sum()
    }

    /// Kept entries (ones).
    pub fn kept(&self) -> Result<usize> {
        self.masks.values().map(count_ones).sum()
    }

    /// Kept entries of one tensor.
    pub fn kept_in(&self, name: &str) -> Result<usize> {
        match self.masks.get(name) {
            Some(m) => count_ones(m),
            None => candle_core::bail!("no mask named `{name}`"),
        }
    }

    /// Fraction of masked entries that are zero: `1 − kept/total` (0 for an empty set).
    pub fn sparsity(&self) -> Result<f64> {
        Ok(crate::sparsity(self.total(), self.kept()?))
    }

    /// Names of the tensors with no weight left (layer collapse, Tanaka et al. 2020: a layer
    /// pruned entirely disconnects the network).
    pub fn collapsed(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (k, m) in &self.masks {
            if count_ones(m)? == 0 {
                out.push(k.clone());
            }
        }
        Ok(out)
    }

    /// The entrywise product (a weight is kept if both sets keep it); names in only one set keep
    /// that set's mask.
    pub fn intersect(&self, other: &MaskSet) -> Result<MaskSet> {
        let mut out = self.clone();
        for (k, m) in &other.masks {
            let v = match out.masks.get(k) {
                Some(a) => a.mul(m)?,
                None => m.clone(),
            };
            out.masks.insert(k.clone(), v);
        }
        Ok(out)
    }

    /// Checks every mask against `store`: the name must resolve to a parameter (`{name}` or
    /// `{name}_mu`) of the mask's shape; the error names the tensor.
    pub fn check(&self, store: &ParamStore) -> Result<()> {
        for (name, m) in &self.masks {
            let (stored, var) = resolve(store, name)?;
            if var.dims() != m.dims() {
                candle_core::bail!(
                    "mask `{name}` has shape {:?}, parameter `{stored}` has shape {:?}",
                    m.dims(),
                    var.dims()
                );
            }
        }
        Ok(())
    }

    fn mask_for(m: &Tensor, var: &Var) -> Result<Tensor> {
        m.to_dtype(var.dtype())?.to_device(var.device())
    }

    /// Zeroes the pruned weights in `store`: `θ ← θ ⊙ m`; for a Bayesian layer also sets the
    /// pruned entries' posterior scale to [`PRUNED_STD`] (see the [module documentation](self)).
    /// Checks the set first ([`MaskSet::check`]).
    pub fn apply(&self, store: &ParamStore) -> Result<()> {
        self.check(store)?;
        for (name, m) in &self.masks {
            let (_, var) = resolve(store, name)?;
            let mm = Self::mask_for(m, &var)?;
            var.set(&var.as_tensor().mul(&mm)?)?;
            for (sib, sv) in scale_siblings(store, name) {
                let pruned = if sib.ends_with("_rho") {
                    inv_softplus(PRUNED_STD)
                } else if sib.ends_with("_log_sigma2") {
                    PRUNED_LOG_SIGMA2
                } else if sib.ends_with("_log_alpha") {
                    VD_LOG_ALPHA_MAX
                } else {
                    continue;
                };
                let mm = Self::mask_for(m, &sv)?;
                // m ⊙ s + (1 − m) ⊙ pruned
                let v = (sv.as_tensor().mul(&mm)? + ((mm.affine(-1.0, 1.0)? * pruned)?))?;
                sv.set(&v)?;
            }
        }
        Ok(())
    }

    /// Zeroes the gradients of pruned weights, `g ← g ⊙ m`, for each masked tensor (and, for a
    /// Bayesian layer, for its same-shaped posterior-scale siblings). Parameters without a
    /// gradient are skipped.
    pub fn mask_grads(&self, store: &ParamStore, grads: &mut GradStore) -> Result<()> {
        for (name, m) in &self.masks {
            let (_, var) = resolve(store, name)?;
            let mut vars = vec![var];
            vars.extend(scale_siblings(store, name).into_values());
            for v in vars {
                if let Some(g) = grads.get(v.as_tensor()) {
                    if g.dims() != m.dims() {
                        candle_core::bail!(
                            "mask `{name}` has shape {:?}, its gradient has shape {:?}",
                            m.dims(),
                            g.dims()
                        );
                    }
                    let masked = g.mul(&Self::mask_for(m, &v)?)?;
                    grads.insert(v.as_tensor(), masked);
                }
            }
        }
        Ok(())
    }

    /// Per-layer table: parameters, kept, sparsity and FLOPs per example (multiply–accumulates of
    /// the kept weights, `kept · positions`; see [`crate::geometry`]) of every masked tensor,
    /// plus every unmasked prunable tensor of `store` as dense. FLOPs need the layer's geometry;
    /// without it (or for a tensor the geometry does not know) they are `None`.
    pub fn layer_table(&self, store: &ParamStore, geometry: Option<&Geometry>) -> Result<LayerTable> {
        self.check(store)?;
        let mut rows = Vec::new();
        for (name, (_, var)) in crate::prunable::prunable(store) {
            let params = var.elem_count();
            let kept = match self.masks.get(&name) {
                Some(m) => count_ones(m)?,
                None => params,
            };
            let info: Option<&LayerInfo> = geometry.and_then(|g| g.get(&name));
            let units = var.dims().first().copied().unwrap_or(0);
            let dead_units = match self.masks.get(&name) {
                Some(m) => dead_units(m)?,
                None => 0,
            };
            let is_output = geometry.and_then(|g| g.last()).is_some_and(|l| l.name == name);
            rows.push(LayerRow {
                shape: var.dims().to_vec(),
                params,
                kept,
                sparsity: crate::sparsity(params, kept),
                flops: info.map(|i| i.flops(params)),
                flops_kept: info.map(|i| i.flops(kept)),
                collapsed: kept == 0,
                near_collapse: kept > 0 && (kept < units || (is_output && dead_units > 0)),
                units,
                dead_units,
                name,
            });
        }
        Ok(LayerTable { rows })
    }

    /// Saves the masks as safetensors (one `u8` 0/1 tensor per logical name, the PyTorch-style
    /// name of the weight), atomically (temporary file, then rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let t: HashMap<String, Tensor> = self
            .masks
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.to_dtype(DType::U8)?.to_device(&Device::Cpu)?)))
            .collect::<Result<_>>()?;
        save_atomic(&t, path.as_ref())
    }

    /// Loads masks saved by [`MaskSet::save`] (or by PyTorch: any dtype, entries 0 or 1).
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let t = candle_core::safetensors::load(path, device)
            .map_err(|e| candle_core::Error::Msg(format!("cannot read masks {}: {e}", path.display())))?;
        Self::from_map(t.into_iter().collect())
            .map_err(|e| candle_core::Error::Msg(format!("masks {}: {e}", path.display())))
    }
}

/// Saves scores as safetensors (one tensor per logical name; f64 scores stay f64, every other
/// dtype is written as f32), atomically.
pub fn save_scores(scores: &Scores, path: impl AsRef<Path>) -> Result<()> {
    let t: HashMap<String, Tensor> = scores
        .iter()
        .map(|(k, v)| {
            let dt = if v.dtype() == DType::F64 {
                DType::F64
            } else {
                DType::F32
            };
            Ok((k.clone(), v.to_dtype(dt)?.to_device(&Device::Cpu)?))
        })
        .collect::<Result<_>>()?;
    save_atomic(&t, path.as_ref())
}

/// Loads scores saved by [`save_scores`].
pub fn load_scores(path: impl AsRef<Path>, device: &Device) -> Result<Scores> {
    let path = path.as_ref();
    let t = candle_core::safetensors::load(path, device)
        .map_err(|e| candle_core::Error::Msg(format!("cannot read scores {}: {e}", path.display())))?;
    Ok(t.into_iter().collect())
}

/// Writes `t` as safetensors at `path` atomically: into `.<name>.tmp` beside it, then renamed over
/// it; the temporary file is removed if any step fails. The file gets the mode of any other file
/// the process creates (`0o666` less the umask), not the 0600 of the safetensors writer's own
/// temporary file: the temporary file is first created by [`std::fs::File::create`] to learn that
/// mode, which is given back to it once the writer has replaced it.
fn save_atomic(t: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let file = path
        .file_name()
        .ok_or_else(|| candle_core::Error::Msg(format!("not a file path: {}", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    // a stale temporary file would keep its old mode
    let _ = std::fs::remove_file(&tmp);
    let res = std::fs::File::create(&tmp)
        .and_then(|f| f.metadata())
        .map_err(|e| candle_core::Error::Msg(format!("cannot create {}: {e}", tmp.display())))
        .and_then(|m| {
            candle_core::safetensors::save(t, &tmp)?;
            std::fs::set_permissions(&tmp, m.permissions())
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| {
                    candle_core::Error::Msg(format!("cannot move {} to {}: {e}", tmp.display(), path.display()))
                })
        });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// One row of a [`LayerTable`].
#[derive(Debug, Clone, PartialEq)]
pub struct LayerRow {
    /// Logical name of the weight.
    pub name: String,
    /// Weight shape.
    pub shape: Vec<usize>,
    /// Entries.
    pub params: usize,
    /// Kept entries.
    pub kept: usize,
    /// `1 − kept/params`.
    pub sparsity: f64,
    /// Dense multiply–accumulates per example, if the geometry is known.
    pub flops: Option<u64>,
    /// Multiply–accumulates per example of the kept weights, if the geometry is known.
    pub flops_kept: Option<u64>,
    /// Whether no weight is left (layer collapse).
    pub collapsed: bool,
    /// Output units (filters, neurons): the first dimension of the weight.
    pub units: usize,
    /// Output units left with no kept incoming weight.
    pub dead_units: usize,
    /// Near-collapse: some weights are left, but fewer than the layer's output units, or (the
    /// network's output layer) an output unit has no incoming weight left, so that no input
    /// reaches it. Flagged where [`LayerRow::collapsed`] is not.
    pub near_collapse: bool,
}

/// Per-layer sparsity, parameters and FLOPs (see [`MaskSet::layer_table`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LayerTable {
    /// One row per prunable tensor, in sorted name order.
    pub rows: Vec<LayerRow>,
}

impl LayerTable {
    /// Total entries over all rows.
    pub fn params(&self) -> usize {
        self.rows.iter().map(|r| r.params).sum()
    }
    /// Total kept entries.
    pub fn kept(&self) -> usize {
        self.rows.iter().map(|r| r.kept).sum()
    }
    /// Overall sparsity of the prunable tensors.
    pub fn sparsity(&self) -> f64 {
        crate::sparsity(self.params(), self.kept())
    }
    /// Total dense FLOPs per example, if every row has a geometry.
    pub fn flops(&self) -> Option<u64> {
        self.rows.iter().map(|r| r.flops).sum()
    }
    /// Total kept FLOPs per example, if every row has a geometry.
    pub fn flops_kept(&self) -> Option<u64> {
        self.rows.iter().map(|r| r.flops_kept).sum()
    }
    /// Names of collapsed layers.
    pub fn collapsed(&self) -> Vec<&str> {
        self.rows
            .iter()
            .filter(|r| r.collapsed)
            .map(|r| r.name.as_str())
            .collect()
    }
    /// Names of nearly collapsed layers ([`LayerRow::near_collapse`]).
    pub fn near_collapse(&self) -> Vec<&str> {
        self.rows
            .iter()
            .filter(|r| r.near_collapse)
            .map(|r| r.name.as_str())
            .collect()
    }
}

impl std::fmt::Display for LayerTable {
    /// A Markdown table, one row per layer and a total row.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fl = |x: Option<u64>| x.map_or("-".to_string(), |v| v.to_string());
        writeln!(
            f,
            "| layer | shape | params | kept | kept fraction | sparsity | units without input | FLOPs | FLOPs kept |"
        )?;
        writeln!(f, "|---|---|---:|---:|---:|---:|---:|---:|---:|")?;
        for r in &self.rows {
            let flag = if r.collapsed {
                " (collapsed)"
            } else if r.near_collapse {
                " (near collapse)"
            } else {
                ""
            };
            writeln!(
                f,
                "| {}{flag} | {:?} | {} | {} | {:.4} | {:.4} | {} of {} | {} | {} |",
                r.name,
                r.shape,
                r.params,
                r.kept,
                1.0 - r.sparsity,
                r.sparsity,
                r.dead_units,
                r.units,
                fl(r.flops),
                fl(r.flops_kept)
            )?;
        }
        writeln!(
            f,
            "| total | | {} | {} | {:.4} | {:.4} | | {} | {} |",
            self.params(),
            self.kept(),
            1.0 - self.sparsity(),
            self.sparsity(),
            fl(self.flops()),
            fl(self.flops_kept())
        )
    }
}

impl secateur_inference::hooks::StepHook for MaskSet {
    /// Zeroes the gradients of pruned weights before the optimiser ([`MaskSet::mask_grads`]).
    fn before_step(&mut self, store: &ParamStore, grads: &mut GradStore, _step: usize) -> Result<()> {
        self.mask_grads(store, grads)
    }
    /// Sets pruned weights back to zero after the optimiser ([`MaskSet::apply`]): momentum
    /// buffers and weight decay would otherwise move them.
    fn after_step(&mut self, store: &ParamStore, _step: usize) -> Result<()> {
        self.apply(store)
    }
}
