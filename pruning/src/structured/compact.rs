//! Physical compaction: the tensors of the network without its pruned groups.
//!
//! Given a [`Coupling`], a [`StructuredMask`] and the tensors of a store (parameters and
//! buffers by name, [`ParamStore::tensors`]), [`compact`] removes, for every pruned group `g` of
//! a layer `L` with consumer `M` (block `b`, see [`super::groups`]):
//! - row `g` (dimension 0) of `L`'s weight and entry `g` of `L`'s bias;
//! - entry `g` of the batch norm on `L`'s output: γ `weight`, β `bias`, `running_mean`,
//!   `running_var`;
//! - the input features `[g·b, (g+1)·b)` (dimension 1) of `M`'s weight: an input channel of a
//!   convolution, a column of a linear layer, or the block of `H·W` columns of a flatten.
//!
//! Kept entries are copied in their order (`index_select` with increasing indices), so the
//! compacted network computes exactly what the masked network computes
//! ([`super::ExpandedMask::apply`]): a pruned channel's output is 0 there, and its consumer's
//! columns multiply only that 0, so dropping both changes no sum but the order of additions of
//! zeros. The new widths ([`Compacted::widths`]) are the output widths of every weight layer in
//! forward order (the kept group counts; unchanged for the classifier and for layers without
//! groups); [`secateur_models::build_with_widths`] builds the narrowed network from them, so the compacted tensors
//! load strictly ([`ParamStore::load`]).
//!
//! **Which tensors are sliced, by name.** A weight layer with parameter path `p` owns every
//! tensor `p.{leaf}` (one more name component). Among them:
//! - a tensor of the weight's shape (`weight`, or in a Bayesian store `weight_mu`,
//!   `weight_rho`, `weight_log_sigma2`, a per-weight `weight_log_alpha`, …) loses the pruned
//!   rows if `L` forms groups and the pruned column blocks if `L` is a consumer (both for a
//!   layer in the middle);
//! - a vector of length `O` (the weight's first dimension: `bias`, `bias_mu`, `bias_rho`, a
//!   per-unit `inclusion_logit`, …) is per output unit and loses the pruned entries if `L` forms
//!   groups, and is kept whole otherwise (a consumer's outputs are not pruned);
//! - a tensor of one element is kept whole (a per-layer scalar);
//! - any other tensor of a layer whose rows or columns change (a per-input-unit `log α` of
//!   shape `[1, I]`, gates over blocks) is refused, naming it: there is no general rule for it.
//!
//! A batch norm `q` on a pruned layer's path loses the pruned entries of every vector
//! `q.{leaf}` of length `C` (γ, β, running statistics); a scalar is kept; anything else is
//! refused. Tensors that belong to no weight layer or batch norm of the coupling are copied.
//!
//! **Refusals.** A mask that does not fit the coupling (a layer the coupling refused or does
//! not know, a wrong group count: [`StructuredMask::check`]), a mask that leaves a layer with no
//! group (the error names the layers), and a store that lacks a coupled tensor.
//!
//! **Residual networks.** The ResNets' groups are the first convolution of every block
//! (`conv1 → bn1 → conv2`, see [`super::groups`]); the channels that join a residual sum keep
//! their width, and [`secateur_models::build_with_widths`] rebuilds the network with the new inner
//! widths ([`secateur_models::arch::ResNetConfig::inner`]).
//!
//! ```
//! use candle_core::{DType, Device};
//! use secateur_bayes::{ParamBuilder, ParamStore, SeededRng};
//! use secateur_models::{build, Deterministic, ModelSpec};
//! use secateur_pruning::structured::{compact, groups, StructuredMask};
//! # fn main() -> candle_core::Result<()> {
//! let spec = ModelSpec::new("mlp", [1, 28, 28], 10);
//! let store = ParamStore::new();
//! let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
//! let _net = build(&spec, &Deterministic, &pb)?;
//! let coupling = groups::record(&spec)?;
//! let mut mask = StructuredMask::all_kept(&coupling);
//! mask.prune(&coupling, "fc1.weight", 3)?;
//! mask.expand(&coupling)?.apply(&store)?;
//! let c = compact::compact(&coupling, &mask, &store.tensors())?;
//! assert_eq!(c.out_widths(), [299, 100, 10]);
//! let small = ParamStore::new();
//! let pb = ParamBuilder::new(small.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
//! let _narrow = secateur_models::build_with_widths(&spec, &c.out_widths(), &Deterministic, &pb)?;
//! small.load(&c.tensors)?; // strict
//! assert_eq!(small.num_params(), store.num_params() - 784 - 1 - 100);
//! # Ok(()) }
//! ```

use super::groups::Coupling;
use super::mask::StructuredMask;
use candle_core::{Device, Result, Tensor};
use secateur_bayes::ParamStore;
use std::collections::{BTreeMap, HashMap};

/// The output width of one weight layer before and after compaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerWidth {
    /// Logical weight name (`features.0.weight`).
    pub name: String,
    /// Output channels or units before.
    pub before: usize,
    /// Output channels or units after (the kept groups).
    pub after: usize,
}

/// The result of [`compact`].
#[derive(Debug, Clone)]
pub struct Compacted {
    /// Every input tensor, sliced where it owns pruned entries, by the same names.
    pub tensors: HashMap<String, Tensor>,
    /// Every weight layer in forward order with its output width before and after.
    pub widths: Vec<LayerWidth>,
}

impl Compacted {
    /// The new output widths, in forward order (what [`secateur_models::build_with_widths`] takes).
    pub fn out_widths(&self) -> Vec<usize> {
        self.widths.iter().map(|w| w.after).collect()
    }

    /// `(weight name, width before, width after)` of every weight layer, in forward order.
    pub fn width_rows(&self) -> Vec<(String, usize, usize)> {
        self.widths
            .iter()
            .map(|w| (w.name.clone(), w.before, w.after))
            .collect()
    }
}

/// What happens to one parameter path.
#[derive(Debug, Default)]
struct Slicing {
    /// Shape of the layer's weight (empty for a batch norm).
    weight_shape: Vec<usize>,
    /// Kept rows (own groups), if the layer forms groups.
    rows: Option<Tensor>,
    /// Kept input features, if the layer is a consumer.
    cols: Option<Tensor>,
    /// Number of entries of a vector owned by this path (`O`, or `C` for a batch norm).
    len: usize,
    /// The layer whose groups decide (for error messages).
    layer: String,
}

fn indices(idx: impl IntoIterator<Item = usize>) -> Result<Tensor> {
    let v: Vec<u32> = idx.into_iter().map(|i| i as u32).collect();
    let n = v.len();
    Tensor::from_vec(v, n, &Device::Cpu)
}

/// Compacts `tensors` (a store's parameters and buffers by name) under `mask` (see the
/// [module documentation](self) for the rules and refusals).
pub fn compact(coupling: &Coupling, mask: &StructuredMask, tensors: &BTreeMap<String, Tensor>) -> Result<Compacted> {
    mask.check(coupling)?;
    let collapsed = mask.collapsed();
    if !collapsed.is_empty() {
        candle_core::bail!(
            "the structured mask prunes every group of {}: the compacted network would be disconnected",
            collapsed
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let present = |name: &str| tensors.contains_key(name) || tensors.contains_key(&format!("{name}_mu"));
    let prefix_of = |name: &str| -> Result<String> {
        match name.strip_suffix(".weight") {
            Some(p) => Ok(p.to_string()),
            None => candle_core::bail!("weight layer `{name}` is not named `<path>.weight`"),
        }
    };
    let mut paths: BTreeMap<String, Slicing> = BTreeMap::new();
    let mut widths = Vec::with_capacity(coupling.geometry.layers.len());
    for info in &coupling.geometry.layers {
        if !present(&info.name) {
            candle_core::bail!("the tensors have no `{0}` (nor `{0}_mu`)", info.name);
        }
        let o = info.weight_shape.first().copied().unwrap_or(0);
        let after = match coupling.layers.iter().find(|l| l.name == info.name) {
            Some(l) => mask
                .kept(&l.name)
                .map_or(l.groups, |k| k.iter().filter(|&&b| b).count()),
            None => o,
        };
        widths.push(LayerWidth {
            name: info.name.clone(),
            before: o,
            after,
        });
        paths.insert(
            prefix_of(&info.name)?,
            Slicing {
                weight_shape: info.weight_shape.clone(),
                len: o,
                layer: info.name.clone(),
                ..Default::default()
            },
        );
    }
    for l in &coupling.layers {
        for (v, _) in l.vectors() {
            if !tensors.contains_key(&v) && !tensors.contains_key(&format!("{v}_mu")) {
                candle_core::bail!("the tensors have no `{v}` (nor `{v}_mu`) of layer `{}`", l.name);
            }
        }
        let kept = mask
            .kept(&l.name)
            .map_or_else(|| vec![true; l.groups], <[bool]>::to_vec);
        let rows = indices((0..l.groups).filter(|&g| kept[g]))?;
        let cols = indices((0..l.groups).filter(|&g| kept[g]).flat_map(|g| l.consumer_columns(g)))?;
        let missing = |n: &str| candle_core::Error::Msg(format!("`{n}` is not in the coupling's geometry"));
        paths.get_mut(&l.prefix).ok_or_else(|| missing(&l.name))?.rows = Some(rows.clone());
        let consumer = prefix_of(&l.consumer.name)?;
        paths.get_mut(&consumer).ok_or_else(|| missing(&l.consumer.name))?.cols = Some(cols);
        if let Some(q) = &l.batch_norm {
            paths.insert(
                q.clone(),
                Slicing {
                    rows: Some(rows),
                    len: l.groups,
                    layer: l.name.clone(),
                    ..Default::default()
                },
            );
        }
    }
    let mut out = HashMap::with_capacity(tensors.len());
    for (name, t) in tensors {
        let owner = name.rsplit_once('.').and_then(|(p, _)| paths.get(p).map(|s| (p, s)));
        let Some((path, s)) = owner else {
            out.insert(name.clone(), t.clone());
            continue;
        };
        let mut t = t.clone();
        if !s.weight_shape.is_empty() && t.dims() == s.weight_shape.as_slice() {
            if let Some(r) = &s.rows {
                t = t.index_select(r, 0)?;
            }
            if let Some(c) = &s.cols {
                t = t.index_select(c, 1)?;
            }
        } else if t.dims() == [s.len] {
            if let Some(r) = &s.rows {
                t = t.index_select(r, 0)?;
            }
        } else if t.elem_count() != 1 && (s.rows.is_some() || s.cols.is_some()) {
            candle_core::bail!(
                "cannot compact `{name}` of `{path}` (layer `{}`): shape {:?} is neither the weight's {:?} \
                 nor per output unit [{}]",
                s.layer,
                t.dims(),
                s.weight_shape,
                s.len
            );
        }
        out.insert(name.clone(), t);
    }
    Ok(Compacted { tensors: out, widths })
}

/// Checks that every pruned group of `mask` outputs exactly zero in `tensors`: its weight row
/// (`{name}` or `{name}_mu`) and the entries of its zeroed coupled vectors (bias, batch-norm γ
/// and β) are 0, as [`super::ExpandedMask::apply`] leaves them. Only then does the compacted
/// network compute what the masked one computes; a mask that zeroes a filter's weights but not
/// its bias leaves a channel that emits a constant, and the error names that tensor and group.
pub fn check_pruned_outputs(
    coupling: &Coupling,
    mask: &StructuredMask,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<()> {
    let get = |n: &str| tensors.get(n).or_else(|| tensors.get(&format!("{n}_mu")));
    for l in &coupling.layers {
        let pruned = mask.pruned(&l.name);
        if pruned.is_empty() {
            continue;
        }
        let mut named: Vec<String> = vec![l.name.clone()];
        named.extend(l.vectors().into_iter().filter(|(_, r)| r.zeroed()).map(|(n, _)| n));
        for name in named {
            let Some(t) = get(&name) else {
                candle_core::bail!("the tensors have no `{name}` (nor `{name}_mu`) of layer `{}`", l.name);
            };
            let t = t.to_dtype(candle_core::DType::F64)?.abs()?;
            let rows = if t.rank() == 1 { t } else { t.flatten_from(1)?.sum(1)? }.to_vec1::<f64>()?;
            for &g in &pruned {
                if rows.get(g).is_some_and(|&r| r != 0.0) {
                    candle_core::bail!(
                        "group {g} of `{}` is pruned but `{name}` is not zero there: the channel still outputs a \
                         value, and removing it would change the network (a structured mask, `secateur prune \
                         --method structured`, zeroes its weights, bias and batch-norm γ, β)",
                        l.name
                    );
                }
            }
        }
    }
    Ok(())
}

/// [`compact`] on the parameters and buffers of `store`.
pub fn compact_store(coupling: &Coupling, mask: &StructuredMask, store: &ParamStore) -> Result<Compacted> {
    compact(coupling, mask, &store.tensors())
}

#[cfg(test)]
mod tests {
    use super::super::allocate::{cost, Cost};
    use super::super::groups::record;
    use super::super::test_util::{logits, max_diff, net, random_half, randomise_bn};
    use super::*;
    use candle_core::DType;
    use secateur_bayes::ParamBuilder;
    use secateur_bayes::SeededRng;
    use secateur_models::{build_with_widths, Deterministic, FactoryOptions, LayerFactory, ModelSpec};

    /// Prunes a random half of every layer's groups, applies the expanded mask, compacts,
    /// loads the tensors strictly into the narrowed network and returns
    /// `(max |masked − compacted|, max |masked|)` of the logits on a seeded batch of 8, after
    /// checking the parameter count.
    fn round_trip(spec: &ModelSpec, seed: u64, factory: &dyn LayerFactory, random_bn: bool) -> Result<(f64, f64)> {
        let (full, store) = net(spec, factory)?;
        if random_bn {
            randomise_bn(&store, seed)?;
        }
        let c = record(spec)?;
        let mask = random_half(&c, seed)?;
        assert!(mask.num_pruned() > 0);
        let [ch, h, wd] = spec.input;
        let x = SeededRng::new(seed + 100).randn(&[8, ch, h, wd], DType::F32, &Device::Cpu)?;
        let dense = logits(&full, &x)?;
        mask.expand(&c)?.apply(&store)?;
        let out = compact_store(&c, &mask, &store)?;
        let small = ParamStore::new();
        let pb = ParamBuilder::new(small.clone(), SeededRng::new(7), DType::F32, Device::Cpu);
        let narrow = build_with_widths(spec, &out.out_widths(), factory, &pb)?;
        small.load(&out.tensors)?;
        // the widths are the kept group counts
        for (w, l) in out.widths.iter().zip(&c.geometry.layers) {
            assert_eq!(w.name, l.name);
            let kept = mask
                .kept(&l.name)
                .map_or(w.before, |k| k.iter().filter(|&&b| b).count());
            assert_eq!(w.after, kept, "{}", w.name);
        }
        let compacted = logits(&narrow, &x)?;
        // the test can tell networks apart: pruning half the groups moves the logits
        let (moved, _) = max_diff(&compacted, &dense)?;
        assert!(
            moved > 1e-3,
            "{}: pruning did not change the logits ({moved})",
            spec.arch
        );
        max_diff(&compacted, &logits(&full, &x)?)
    }

    /// Parameters removed besides weight entries: one bias entry and, with a batch norm, γ and
    /// β per pruned group (per stored tensor of that shape: a Bayesian bias has `_mu` and
    /// `_rho`).
    fn check_params(spec: &ModelSpec, seed: u64, factory: &dyn LayerFactory, per_weight: u64) -> Result<()> {
        let (_, store) = net(spec, factory)?;
        let c = record(spec)?;
        let mask = random_half(&c, seed)?;
        let out = compact_store(&c, &mask, &store)?;
        let small = ParamStore::new();
        let pb = ParamBuilder::new(small.clone(), SeededRng::new(7), DType::F32, Device::Cpu);
        let _ = build_with_widths(spec, &out.out_widths(), factory, &pb)?;
        small.load(&out.tensors)?;
        let (total, kept) = cost(&c, &mask, Cost::Params)?;
        let mut vectors = 0u64;
        for l in &c.layers {
            let r = mask.pruned(&l.name).len() as u64;
            vectors += r * (per_weight * u64::from(l.bias.is_some()) + 2 * u64::from(l.batch_norm.is_some()));
        }
        let dense = store.num_params() as u64;
        assert_eq!(
            small.num_params() as u64,
            dense - per_weight * (total - kept) - vectors,
            "{}: dense {dense}, weight cost {total} → {kept}, vector entries {vectors}",
            spec.arch
        );
        Ok(())
    }

    /// Compacted network = masked network, to rounding, with a random half of the groups of
    /// every layer pruned and a strict load into the narrowed network. Measured max |Δ logits|
    /// (CPU, f32, batch of 8): mlp 1.1e-8 (logits up to 0.16), lenet5 7.5e-9 (0.12), vgg11 with
    /// random batch-norm statistics on 3×16×16 1.8e-7 (0.75), resnet20 with random batch-norm
    /// statistics on 3×12×12 (inner channels of every block pruned) 7.6e-6 (34.2); the bound is
    /// 1e-5 relative to the largest logit, or absolute below 1 (f32 rounds a logit of 34 to
    /// 3.8e-6). (Not 0: the narrower matrix products sum in another order.)
    #[test]
    fn compacted_equals_masked_mlp_lenet5_vgg11_resnet20() -> Result<()> {
        for (spec, bn) in [
            (ModelSpec::new("mlp", [1, 28, 28], 10), false),
            (ModelSpec::new("lenet5", [1, 28, 28], 10), false),
            (ModelSpec::new("vgg11", [3, 16, 16], 10), true),
            (ModelSpec::new("resnet20", [3, 12, 12], 10), true),
        ] {
            let (d, scale) = round_trip(&spec, 3, &Deterministic, bn)?;
            println!(
                "{}: max |compacted − masked| = {d:.3e} (logits up to {scale:.3})",
                spec.arch
            );
            assert!(d <= 1e-5 * scale.max(1.0), "{}: {d}", spec.arch);
            assert!(scale > 0.0);
        }
        Ok(())
    }

    /// Parameter count of the compacted network = dense − pruned weight entries
    /// ([`cost`] with [`Cost::Params`]) − one bias entry and (VGG) γ, β per pruned group: the
    /// cost model counts weight entries only; running statistics are buffers, not parameters.
    #[test]
    fn compacted_parameter_counts() -> Result<()> {
        for spec in [
            ModelSpec::new("mlp", [1, 28, 28], 10),
            ModelSpec::new("lenet5", [1, 28, 28], 10),
            ModelSpec::new("vgg11", [3, 16, 16], 10),
            ModelSpec::new("resnet20", [3, 8, 8], 10),
        ] {
            check_params(&spec, 5, &Deterministic, 1)?;
        }
        Ok(())
    }

    /// A mean-field MLP compacts too (`weight_mu`, `weight_rho`, `bias_mu`, `bias_rho` sliced
    /// alike): equal posterior-mean logits (measured max |Δ| 3.0e-8, logits up to 0.16), and
    /// twice the deterministic parameter arithmetic.
    #[test]
    fn mean_field_mlp_compacts() -> Result<()> {
        let mf = secateur_models::factory("mean-field", &FactoryOptions::default())?;
        let spec = ModelSpec::new("mlp", [1, 28, 28], 10);
        let (d, scale) = round_trip(&spec, 4, mf.as_ref(), false)?;
        println!("mean-field mlp: max |compacted − masked| = {d:.3e} (logits up to {scale:.3})");
        assert!(d <= 1e-5, "{d}");
        check_params(&spec, 4, mf.as_ref(), 2)?;
        Ok(())
    }

    /// A mean-field ResNet-20 (Bayesian convolutions, batch norm with random statistics,
    /// residual sums) compacts to the same posterior-mean logits (measured max |Δ| 4.8e-7,
    /// logits up to 4.9; bound as in the test above).
    #[test]
    fn mean_field_resnet20_compacts() -> Result<()> {
        let mf = secateur_models::factory("mean-field", &FactoryOptions::default())?;
        let spec = ModelSpec::new("resnet20", [3, 8, 8], 10);
        let (d, scale) = round_trip(&spec, 6, mf.as_ref(), true)?;
        println!("mean-field resnet20: max |compacted − masked| = {d:.3e} (logits up to {scale:.3})");
        assert!(d <= 1e-5 * scale.max(1.0), "{d}");
        check_params(&spec, 6, mf.as_ref(), 2)?;
        Ok(())
    }

    #[test]
    fn refuses_collapse_refused_layers_and_missing_tensors() -> Result<()> {
        let spec = ModelSpec::new("mlp", [1, 28, 28], 10);
        let (_, store) = net(&spec, &Deterministic)?;
        let c = record(&spec)?;
        // a layer with no group left
        let mut m = StructuredMask::all_kept(&c);
        for g in 0..100 {
            m.prune(&c, "fc2.weight", g)?;
        }
        let e = compact_store(&c, &m, &store).unwrap_err().to_string();
        assert!(e.contains("`fc2.weight`") && e.contains("every group"), "{e}");
        // a layer the coupling refuses: conv1 of LeNet-5 forms groups, the ResNet stem does not
        let lenet = record(&ModelSpec::new("lenet5", [1, 28, 28], 10))?;
        let mut only = BTreeMap::new();
        only.insert("conv1.weight".to_string(), vec![0]);
        let m = StructuredMask::from_pruned(&lenet, &only)?;
        let resnet_spec = ModelSpec::new("resnet20", [3, 8, 8], 10);
        let resnet = record(&resnet_spec)?;
        let (_, rstore) = net(&resnet_spec, &Deterministic)?;
        let e = compact_store(&resnet, &m, &rstore).unwrap_err().to_string();
        assert!(e.contains("`conv1.weight`") && e.contains("residual"), "{e}");
        // a store without a coupled tensor
        let mut t = store.tensors();
        t.remove("fc1.bias");
        let m = random_half(&c, 1)?;
        let e = compact(&c, &m, &t).unwrap_err().to_string();
        assert!(e.contains("fc1.bias"), "{e}");
        // a tensor of a pruned layer without a slicing rule
        let mut t = store.tensors();
        t.insert("fc1.odd".into(), Tensor::zeros((3, 3), DType::F32, &Device::Cpu)?);
        let e = compact(&c, &m, &t).unwrap_err().to_string();
        assert!(e.contains("fc1.odd"), "{e}");
        // widths that do not fit the architecture
        let pb = ParamBuilder::new(ParamStore::new(), SeededRng::new(0), DType::F32, Device::Cpu);
        let lenet5 = ModelSpec::new("lenet5", [1, 28, 28], 10);
        assert!(build_with_widths(&lenet5, &[3, 8, 60, 10], &Deterministic, &pb).is_err());
        assert!(build_with_widths(&lenet5, &[3, 8, 60, 40, 9], &Deterministic, &pb).is_err());
        let e = build_with_widths(
            &ModelSpec::new("vit-tiny", [3, 32, 32], 10),
            &[16, 10],
            &Deterministic,
            &pb,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("vit-tiny"), "{e}");
        Ok(())
    }
}
