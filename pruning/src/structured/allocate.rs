//! Allocation of groups to a budget of FLOPs or parameters removed.
//!
//! **Costs.** Over every weight layer `W` of the network (all of [`Coupling::geometry`], the
//! classifier and refused layers included), with `O_W` rows, `I_W` columns (dimension 1),
//! `e_W` entries per (row, column) pair (`k²` for a convolution, 1 for a linear layer) and `P_W`
//! output positions per example, the kept cost is
//!
//! `Σ_W (O_W − r_W) · (I_W − c_W) · e_W · P_W`,
//!
//! where `r_W` counts the pruned groups of `W` and `c_W = b · r_L` the columns fed by the pruned
//! groups of its producer `L` (block `b`). With `P_W` this is the multiply–accumulates per
//! example of the kept weights, as in [`crate::geometry`] and [`crate::mask::LayerTable`]
//! ([`Cost::Flops`]); with `P_W = 1`, the kept weight entries ([`Cost::Params`]; biases and
//! batch-norm entries, a few per group, are not counted). Pruning one more group of `L` (with
//! consumer `M`) removes
//!
//! `Δ_L = (I_L − c_L) · e_L · P_L + b · (O_M − r_M) · e_M · P_M`,
//!
//! its row and its share of the next layer, not counting entries already removed by earlier
//! prunings (an entry `W_M[o, j]` is counted once, whether row `o` or column `j` went first).
//!
//! **Allocation** ([`StructuredAllocation::allocate`]) prunes groups one at a time, lowest score
//! first, until the removed cost reaches `fraction · total` (the dense cost): the reached cost
//! exceeds the target by less than the cost `Δ` of the last group pruned.
//! - [`Scope::Global`]: the next group is the lowest-scoring one of the whole network (ties: the
//!   layer first in forward order, then the lower index). Scores of different layers must then be
//!   comparable; raw norms of layers with different fan-in are not, which is why filter pruning
//!   papers usually prune per layer.
//! - [`Scope::PerLayer`]: the next group is the lowest-scoring one of the layer with the smallest
//!   fraction of its groups pruned so far (ties: forward order), so all layers are pruned at
//!   nearly the same ratio (Li et al. 2017; He et al. 2019 prune every layer at one rate).
//!
//! A layer keeps at least `min_kept_per_layer` groups (default 1, against layer collapse);
//! excluded layers keep all. A target beyond what these guards allow is refused with the
//! largest reachable fraction.

use super::criteria::GroupScores;
use super::groups::Coupling;
use super::mask::StructuredMask;
use crate::allocate::Scope;
use candle_core::Result;
use std::collections::{BTreeMap, BTreeSet};

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cost {
    /// Multiply–accumulates per example of the weight layers.
    #[default]
    Flops,
    /// Weight entries (biases and batch-norm entries are not counted).
    Params,
}

/// The per-layer cost model of a [`Coupling`] (see the [module documentation](self)).
#[derive(Debug, Clone)]
struct CostModel {
    /// Per weight layer in forward order: rows, columns, entries per pair, positions.
    dims: Vec<(u64, u64, u64, u64)>,
    /// Per layer that forms groups (in `coupling.layers` order): its index, its consumer's index
    /// and the block.
    links: Vec<(usize, usize, u64)>,
}

impl CostModel {
    fn new(coupling: &Coupling, cost: Cost) -> Result<Self> {
        let g = &coupling.geometry;
        let mut dims = Vec::with_capacity(g.layers.len());
        for info in &g.layers {
            let s = &info.weight_shape;
            if s.len() < 2 {
                candle_core::bail!("weight `{}` has shape {s:?}, expected rank 2 or more", info.name);
            }
            let e: usize = s[2..].iter().product();
            let p = match cost {
                Cost::Flops => info.positions as u64,
                Cost::Params => 1,
            };
            dims.push((s[0] as u64, s[1] as u64, e as u64, p));
        }
        let index = |name: &str| -> Result<usize> {
            match g.layers.iter().position(|l| l.name == name) {
                Some(i) => Ok(i),
                None => candle_core::bail!("`{name}` is not in the coupling's geometry"),
            }
        };
        let links = coupling
            .layers
            .iter()
            .map(|l| Ok((index(&l.name)?, index(&l.consumer.name)?, l.consumer.block as u64)))
            .collect::<Result<_>>()?;
        Ok(Self { dims, links })
    }

    /// Pruned rows and pruned columns per weight layer for `pruned[k]` groups of `links[k]`.
    fn state(&self, pruned: &[u64]) -> (Vec<u64>, Vec<u64>) {
        let (mut r, mut c) = (vec![0; self.dims.len()], vec![0; self.dims.len()]);
        for (&(l, m, b), &p) in self.links.iter().zip(pruned) {
            r[l] = p;
            c[m] = b * p;
        }
        (r, c)
    }

    /// Kept cost with `pruned[k]` groups of `links[k]` pruned.
    fn kept(&self, pruned: &[u64]) -> u64 {
        let (r, c) = self.state(pruned);
        self.dims
            .iter()
            .enumerate()
            .map(|(w, &(o, i, e, p))| (o - r[w]) * (i - c[w]) * e * p)
            .sum()
    }

    /// Dense cost.
    fn total(&self) -> u64 {
        self.dims.iter().map(|&(o, i, e, p)| o * i * e * p).sum()
    }

    /// Cost removed by pruning one more group of `links[k]` in the state `(r, c)`.
    fn delta(&self, k: usize, r: &[u64], c: &[u64]) -> u64 {
        let (l, m, b) = self.links[k];
        let (_, il, el, pl) = self.dims[l];
        let (om, _, em, pm) = self.dims[m];
        (il - c[l]) * el * pl + b * (om - r[m]) * em * pm
    }
}

/// Dense and kept cost of the network under `mask` (see the [module documentation](self)).
///
/// ```
/// use secateur_models::ModelSpec;
/// use secateur_pruning::structured::{allocate::{cost, Cost}, groups, StructuredMask};
/// let c = groups::record(&ModelSpec::new("mlp", [1, 28, 28], 10)).unwrap();
/// let mut m = StructuredMask::all_kept(&c);
/// m.prune(&c, "fc1.weight", 0).unwrap();
/// // 784·300 + 300·100 + 100·10 weights; unit 0 of fc1 removes 784 + 100
/// assert_eq!(cost(&c, &m, Cost::Params).unwrap(), (266_200, 266_200 - 884));
/// ```
pub fn cost(coupling: &Coupling, mask: &StructuredMask, cost: Cost) -> Result<(u64, u64)> {
    mask.check(coupling)?;
    let model = CostModel::new(coupling, cost)?;
    let pruned: Vec<u64> = coupling
        .layers
        .iter()
        .map(|l| mask.pruned(&l.name).len() as u64)
        .collect();
    Ok((model.total(), model.kept(&pruned)))
}

/// Allocation of groups to a budget (see the [module documentation](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct StructuredAllocation {
    /// What the budget counts.
    pub cost: Cost,
    /// Fraction of the dense cost to remove, in `[0, 1)`.
    pub fraction: f64,
    /// Global or per-layer order.
    pub scope: Scope,
    /// Layers (logical weight names) never pruned.
    pub exclude: BTreeSet<String>,
    /// Groups every layer keeps at least (default 1).
    pub min_kept_per_layer: usize,
}

/// The result of [`StructuredAllocation::allocate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Allocated {
    /// The groups kept.
    pub mask: StructuredMask,
    /// Dense cost.
    pub total: u64,
    /// The target: `⌈fraction · total⌉` removed.
    pub target: u64,
    /// Cost removed.
    pub removed: u64,
    /// Cost removed by the last group pruned (0 if none): `removed − target < last`.
    pub last: u64,
}

impl StructuredAllocation {
    /// Remove `fraction` of the `cost` in `scope`, keeping at least one group per layer.
    pub fn new(cost: Cost, fraction: f64, scope: Scope) -> Self {
        Self {
            cost,
            fraction,
            scope,
            exclude: BTreeSet::new(),
            min_kept_per_layer: 1,
        }
    }

    /// With these layers never pruned.
    pub fn with_exclude(mut self, names: BTreeSet<String>) -> Self {
        self.exclude = names;
        self
    }

    /// With at least `n` groups kept per layer.
    pub fn with_min_kept(mut self, n: usize) -> Self {
        self.min_kept_per_layer = n;
        self
    }

    /// Checks the fraction (in `[0, 1)`).
    pub fn validate(&self) -> Result<()> {
        if !(self.fraction.is_finite() && (0.0..1.0).contains(&self.fraction)) {
            candle_core::bail!(
                "structured allocation: field `fraction` must be in [0, 1), got {}",
                self.fraction
            );
        }
        Ok(())
    }

    /// Prunes the lowest-scoring groups until `fraction` of the dense cost is removed (see the
    /// [module documentation](self)). Every layer of `coupling` that is not excluded needs scores,
    /// one finite or infinite (not NaN) number per group; scores of excluded layers are ignored,
    /// scores of a layer that forms no groups are refused, naming it.
    ///
    /// ```
    /// use secateur_bayes::{ParamBuilder, ParamStore, SeededRng};
    /// use secateur_models::{build, Deterministic, ModelSpec};
    /// use secateur_pruning::structured::{groups, FilterCriterion, Cost, StructuredAllocation};
    /// use secateur_pruning::Scope;
    /// use candle_core::{DType, Device};
    /// let spec = ModelSpec::new("lenet5", [1, 28, 28], 10);
    /// let store = ParamStore::new();
    /// let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
    /// let _net = build(&spec, &Deterministic, &pb).unwrap();
    /// let coupling = groups::record(&spec).unwrap();
    /// let scores = FilterCriterion::L1.score(&store, &coupling).unwrap();
    /// let a = StructuredAllocation::new(Cost::Flops, 0.5, Scope::PerLayer).allocate(&coupling, &scores).unwrap();
    /// assert!(a.removed >= a.target && a.removed - a.target < a.last);
    /// a.mask.expand(&coupling).unwrap().apply(&store).unwrap();
    /// ```
    pub fn allocate(&self, coupling: &Coupling, scores: &GroupScores) -> Result<Allocated> {
        self.validate()?;
        for name in &self.exclude {
            if coupling.geometry.get(name).is_none() {
                candle_core::bail!("structured allocation: excluded `{name}` is not a weight layer of the network");
            }
        }
        for name in scores.keys().filter(|n| !self.exclude.contains(*n)) {
            coupling.layer(name)?;
        }
        let model = CostModel::new(coupling, self.cost)?;
        let total = model.total();
        let target = (self.fraction * total as f64).ceil() as u64;
        // per layer: groups in pruning order (lowest score first, then lower index), or None
        // for an excluded layer
        let mut queues: Vec<Option<Vec<(f64, usize)>>> = Vec::with_capacity(coupling.layers.len());
        for l in &coupling.layers {
            if self.exclude.contains(&l.name) {
                queues.push(None);
                continue;
            }
            let Some(s) = scores.get(&l.name) else {
                candle_core::bail!(
                    "structured allocation: no scores for layer `{}` (score it or exclude it)",
                    l.name
                );
            };
            if s.len() != l.groups {
                candle_core::bail!(
                    "structured allocation: {} scores for layer `{}`, which has {} groups",
                    s.len(),
                    l.name,
                    l.groups
                );
            }
            if s.iter().any(|x| x.is_nan()) {
                candle_core::bail!("structured allocation: the scores of layer `{}` contain NaN", l.name);
            }
            let mut q: Vec<(f64, usize)> = s.iter().copied().zip(0..).collect();
            q.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            queues.push(Some(q));
        }
        let n = coupling.layers.len();
        let limit: Vec<u64> = coupling
            .layers
            .iter()
            .zip(&queues)
            .map(|(l, q)| match q {
                Some(_) => l.groups.saturating_sub(self.min_kept_per_layer.max(1).min(l.groups)) as u64,
                None => 0,
            })
            .collect();
        let mut pruned = vec![0u64; n];
        let (mut removed, mut last) = (0u64, 0u64);
        let mut order: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        // global order: every candidate group, lowest score first, then forward order, index
        let mut global: Vec<(f64, usize, usize)> = Vec::new();
        if self.scope == Scope::Global {
            for (k, q) in queues.iter().enumerate() {
                for &(s, g) in q.iter().flatten() {
                    global.push((s, k, g));
                }
            }
            global.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        }
        let mut next_global = global.into_iter();
        while removed < target {
            let pick = match self.scope {
                Scope::Global => next_global
                    .by_ref()
                    .find(|&(_, k, _)| pruned[k] < limit[k])
                    .map(|(_, k, g)| (k, g)),
                Scope::PerLayer => (0..n)
                    .filter(|&k| pruned[k] < limit[k])
                    .min_by(|&a, &b| {
                        let ga = coupling.layers[a].groups as u64;
                        let gb = coupling.layers[b].groups as u64;
                        (pruned[a] * gb).cmp(&(pruned[b] * ga)).then(a.cmp(&b))
                    })
                    .and_then(|k| queues[k].as_ref().map(|q| (k, q[pruned[k] as usize].1))),
            };
            let Some((k, g)) = pick else {
                let all: Vec<u64> = limit.clone();
                let max = total - model.kept(&all);
                candle_core::bail!(
                    "structured allocation: cannot remove {} of the {:?} ({target} of {total}); at most {max} ({:.4}) with \
                     min_kept_per_layer = {} and {} excluded layers",
                    self.fraction,
                    self.cost,
                    max as f64 / total.max(1) as f64,
                    self.min_kept_per_layer,
                    self.exclude.len()
                );
            };
            let (r, c) = model.state(&pruned);
            last = model.delta(k, &r, &c);
            removed += last;
            pruned[k] += 1;
            order.entry(coupling.layers[k].name.clone()).or_default().push(g);
        }
        debug_assert_eq!(removed, total - model.kept(&pruned));
        let mask = StructuredMask::from_pruned(coupling, &order)?;
        Ok(Allocated {
            mask,
            total,
            target,
            removed,
            last,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::criteria::l1_norm;
    use super::super::groups::record;
    use super::super::test_util::random_net;
    use super::*;
    use secateur_models::ModelSpec;

    /// On VGG-11 and LeNet-5 with L1 scores, for FLOPs and parameters, global and per-layer, at
    /// several fractions: the removed cost reaches the target within the last group's cost, and
    /// equals the cost counted independently from the expanded entry masks (the layer table of
    /// the unstructured code: kept entries × positions).
    #[test]
    fn budget_reached_within_one_group() -> Result<()> {
        for (arch, input) in [("vgg11", [3, 16, 16]), ("lenet5", [1, 28, 28])] {
            let spec = ModelSpec::new(arch, input, 10);
            let c = record(&spec)?;
            let (_, store) = random_net(&spec, 4)?;
            let scores = l1_norm(&store, &c)?;
            for cost_kind in [Cost::Flops, Cost::Params] {
                for scope in [Scope::Global, Scope::PerLayer] {
                    for fraction in [0.1, 0.4, 0.7] {
                        let a = StructuredAllocation::new(cost_kind, fraction, scope).allocate(&c, &scores)?;
                        assert!(a.removed >= a.target && a.removed - a.target < a.last.max(1));
                        let table = a.mask.expand(&c)?.weights.layer_table(&store, Some(&c.geometry))?;
                        let (total, kept) = match cost_kind {
                            Cost::Flops => (table.flops().unwrap(), table.flops_kept().unwrap()),
                            Cost::Params => (table.params() as u64, table.kept() as u64),
                        };
                        assert_eq!((a.total, a.total - a.removed), (total, kept));
                        assert_eq!(cost(&c, &a.mask, cost_kind)?, (total, kept));
                        if scope == Scope::PerLayer {
                            // every layer within one group of the same pruned fraction
                            let f: Vec<f64> = c
                                .layers
                                .iter()
                                .map(|l| a.mask.pruned(&l.name).len() as f64 / l.groups as f64)
                                .collect();
                            let spread = f.iter().cloned().fold(0.0, f64::max) - f.iter().cloned().fold(1.0, f64::min);
                            let step = c.layers.iter().map(|l| 1.0 / l.groups as f64).fold(0.0, f64::max);
                            assert!(spread <= step + 1e-12, "{arch} {f:?}");
                        }
                        eprintln!(
                            "{arch} {cost_kind:?} {scope} {fraction}: target {} removed {} (over by {}, last group {}), {} groups pruned",
                            a.target,
                            a.removed,
                            a.removed - a.target,
                            a.last,
                            a.mask.num_pruned()
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Global order follows the scores; exclusions, missing scores, unknown layers and an
    /// unreachable budget are refused with messages naming the problem.
    #[test]
    fn global_order_and_refusals() -> Result<()> {
        let spec = ModelSpec::new("mlp", [1, 28, 28], 10);
        let c = record(&spec)?;
        // fc1 scores 1000 + i, fc2 scores i: global pruning takes fc2 first, lowest index first
        let scores = GroupScores::from([
            ("fc1.weight".to_string(), (0..300).map(|i| 1000.0 + i as f64).collect()),
            ("fc2.weight".to_string(), (0..100).map(|i| i as f64).collect()),
        ]);
        // one fc2 unit: 300 + 10 weights; a target of ⌈1549.5⌉ = 1550 weights takes 5 units
        let a = StructuredAllocation::new(Cost::Params, 1549.5 / 266_200.0, Scope::Global).allocate(&c, &scores)?;
        assert_eq!(a.mask.pruned("fc2.weight"), [0, 1, 2, 3, 4]);
        assert!(a.mask.pruned("fc1.weight").is_empty());
        assert_eq!((a.removed, a.last), (1550, 310));
        // excluded fc2: fc1 goes instead, 784 + 100 weights a unit, 4 units for ⌈2662⌉
        let ex = BTreeSet::from(["fc2.weight".to_string()]);
        let a = StructuredAllocation::new(Cost::Params, 0.01, Scope::Global)
            .with_exclude(ex)
            .allocate(&c, &scores)?;
        assert_eq!(a.mask.pruned("fc1.weight"), [0, 1, 2, 3]);
        assert_eq!((a.target, a.removed), (2662, 4 * 884));
        let err = |r: Result<Allocated>| r.unwrap_err().to_string();
        let one = GroupScores::from([("fc1.weight".to_string(), vec![0.0; 300])]);
        let alloc = StructuredAllocation::new(Cost::Flops, 0.5, Scope::Global);
        assert!(err(alloc.allocate(&c, &one)).contains("no scores for layer `fc2.weight`"));
        let mut bad = scores.clone();
        bad.insert("fc3.weight".into(), vec![0.0; 10]);
        assert!(err(alloc.allocate(&c, &bad)).contains("output layer"));
        assert!(
            err(StructuredAllocation::new(Cost::Flops, 0.999, Scope::PerLayer).allocate(&c, &scores))
                .contains("at most")
        );
        assert!(
            err(StructuredAllocation::new(Cost::Flops, 1.0, Scope::Global).allocate(&c, &scores))
                .contains("field `fraction`")
        );
        Ok(())
    }
}
