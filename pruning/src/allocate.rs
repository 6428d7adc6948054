//! Allocation: from scores to masks.
//!
//! Scoring and allocation are separate (as in Synaptic-Flow, Tanaka et al. 2020), so every
//! criterion gets every allocation:
//! - [`Allocation`]: top-k keeping **exactly** `k = round((1 − s) · n)` entries with the highest
//!   scores, either over all scored tensors together ([`Scope::Global`], the default of the PaI
//!   papers) or in each tensor separately ([`Scope::PerLayer`], `k_l = round((1 − s) · n_l)`).
//!   Ties are broken by position (the lower flat index in the sorted-name concatenation wins), so
//!   the result is deterministic. Scores are compared as numbers: `−0.0` and `+0.0` are equal
//!   (a ranking by `f64::total_cmp` would put `−0.0` below `+0.0`, so that the signs of zero
//!   scores, e.g. GraSP's `θ · (+0)` on dead units, would decide which of them survive). An optional guard keeps at least `min_kept_per_layer` entries of
//!   every tensor (against layer collapse) while still keeping exactly `k` in total.
//! - [`Exclusions`]: tensors never pruned. Biases, batch-norm/layer-norm parameters and posterior
//!   scales are never scored at all (see [`crate::prunable`]); the first and last weight layers
//!   (in forward order, from [`crate::geometry`]) and any named tensor can be excluded on
//!   request. Excluded tensors get no mask (they stay dense) and do not count in `n`: the target
//!   sparsity is over the scored, non-excluded tensors.
//! - [`threshold`]: keep entries whose score exceeds a threshold (sparse VD's `log α < 3`).
//! - [`IterativeSchedule`]: `T` rounds of score-and-prune, the kept fraction after round `t`
//!   being `d^{t/T}` for the final density `d = 1 − s` (Tanaka et al. 2020; the exponential is
//!   on the fraction **kept**: applying it to the pruned fraction is a known bug), driven by
//!   [`prune_iteratively`].

use crate::criterion::{Criterion, ScoringContext};
use crate::geometry::Geometry;
use crate::mask::{MaskSet, Scores};
use candle_core::{DType, Result, Tensor};
use std::cmp::Ordering;
use std::collections::BTreeSet;

/// Where top-k is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// One ranking over all scored tensors together.
    #[default]
    Global,
    /// Each tensor pruned to the target sparsity on its own.
    PerLayer,
}

impl Scope {
    /// The names of configs and command lines: `global` and `layer`.
    pub const NAMES: [(&'static str, Scope); 2] = [("global", Scope::Global), ("layer", Scope::PerLayer)];

    /// The scope's name (`global`, `layer`).
    ///
    /// ```
    /// use secateur_pruning::Scope;
    /// assert_eq!(Scope::PerLayer.name(), "layer");
    /// assert_eq!("layer".parse::<Scope>(), Ok(Scope::PerLayer));
    /// assert!("per-layer".parse::<Scope>().unwrap_err().contains("global or layer"));
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::PerLayer => "layer",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    /// The scope named `s` ([`Scope::NAMES`]); the error names the valid values.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Scope::NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|&(_, v)| v)
            .ok_or_else(|| format!("unknown scope `{s}`; use global or layer"))
    }
}

/// Tensors that are never pruned (besides the non-prunable ones, which are never scored).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Exclusions {
    /// Exclude the first weight layer in forward order.
    pub first_layer: bool,
    /// Exclude the last weight layer in forward order (the classifier).
    pub last_layer: bool,
    /// Exclude every convolution: only the fully connected (linear) layers are pruned, as Mohan,
    /// Scaife et al. (2022) prune their radio-galaxy LeNet.
    pub convolutions: bool,
    /// Further logical names to exclude.
    pub names: BTreeSet<String>,
}

impl Exclusions {
    /// The excluded logical names. First/last layer and convolutions need the geometry (an
    /// error otherwise).
    ///
    /// ```
    /// use secateur_pruning::{geometry, Exclusions};
    /// use secateur_models::ModelSpec;
    /// let g = geometry::record(&ModelSpec::new("mlp", [1, 28, 28], 10)).unwrap();
    /// let e = Exclusions { first_layer: true, last_layer: true, ..Default::default() };
    /// let names: Vec<_> = e.resolve(Some(&g)).unwrap().into_iter().collect();
    /// assert_eq!(names, ["fc1.weight", "fc3.weight"]);
    /// ```
    pub fn resolve(&self, geometry: Option<&Geometry>) -> Result<BTreeSet<String>> {
        let mut out = self.names.clone();
        if self.first_layer || self.last_layer || self.convolutions {
            let Some(g) = geometry else {
                candle_core::bail!(
                    "excluding the first or last layer or the convolutions needs the model's layer geometry"
                );
            };
            if self.convolutions {
                let convs = g.layers.iter().filter(|l| l.kind == crate::geometry::LayerKind::Conv2d);
                out.extend(convs.map(|l| l.name.clone()));
            }
            let pick = |l: Option<&crate::geometry::LayerInfo>| {
                l.map(|l| l.name.clone())
                    .ok_or_else(|| candle_core::Error::Msg("the model has no weight layer".into()))
            };
            if self.first_layer {
                out.insert(pick(g.first())?);
            }
            if self.last_layer {
                out.insert(pick(g.last())?);
            }
        }
        Ok(out)
    }
}

/// Top-k allocation to an exact sparsity (see the [module documentation](self)).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Allocation {
    /// Target sparsity `s ∈ [0, 1)`: the fraction of scored entries set to zero.
    pub sparsity: f64,
    /// Global or per-layer ranking.
    pub scope: Scope,
    /// Keep at least `min(this, n_l)` entries of every tensor (0: no guard).
    pub min_kept_per_layer: usize,
    /// Logical names never pruned (see [`Exclusions::resolve`]).
    pub exclude: BTreeSet<String>,
}

/// Number of entries kept out of `n` at sparsity `s`: `round((1 − s) · n)`.
///
/// ```
/// assert_eq!(secateur_pruning::allocate::kept_count(1000, 0.9), 100);
/// assert_eq!(secateur_pruning::allocate::kept_count(7, 0.5), 4); // 3.5 rounds up
/// ```
pub fn kept_count(n: usize, sparsity: f64) -> usize {
    (((1.0 - sparsity) * n as f64).round() as usize).min(n)
}

fn check_sparsity(field: &str, s: f64) -> Result<()> {
    if !(s.is_finite() && (0.0..1.0).contains(&s)) {
        candle_core::bail!("{field} must be in [0, 1), got {s}");
    }
    Ok(())
}

/// Flat scores of one tensor as f64, refusing NaN (naming the tensor).
fn flat_scores(name: &str, t: &Tensor) -> Result<Vec<f64>> {
    let v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    if v.iter().any(|x| x.is_nan()) {
        candle_core::bail!("scores of `{name}` contain NaN");
    }
    Ok(v)
}

/// Higher score first, then lower index. Scores are compared numerically (`−0.0 == +0.0`;
/// infinities order as usual); NaN never reaches here ([`flat_scores`] refuses it).
fn rank_order(s: &[f64]) -> impl Fn(&usize, &usize) -> Ordering + '_ {
    move |a, b| s[*b].partial_cmp(&s[*a]).unwrap_or(Ordering::Equal).then(a.cmp(b))
}

/// The `k` best of `candidates` (indices into `s`), by [`rank_order`].
fn top(s: &[f64], mut candidates: Vec<usize>, k: usize) -> Vec<usize> {
    if k == 0 {
        return Vec::new();
    }
    if k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, rank_order(s));
        candidates.truncate(k);
    }
    candidates
}

impl Allocation {
    /// Global top-k at sparsity `s`, no guard, no exclusions.
    pub fn global(sparsity: f64) -> Self {
        Self {
            sparsity,
            ..Default::default()
        }
    }

    /// Top-k at sparsity `s` in `scope`.
    ///
    /// ```
    /// use secateur_pruning::{Allocation, Scope};
    /// assert_eq!(Allocation::new(0.9, Scope::PerLayer), Allocation::per_layer(0.9));
    /// ```
    pub fn new(sparsity: f64, scope: Scope) -> Self {
        Self {
            sparsity,
            scope,
            ..Default::default()
        }
    }

    /// Per-layer top-k at sparsity `s`.
    pub fn per_layer(sparsity: f64) -> Self {
        Self {
            sparsity,
            scope: Scope::PerLayer,
            ..Default::default()
        }
    }

    /// With a minimum number of kept entries per tensor.
    pub fn with_min_kept(mut self, n: usize) -> Self {
        self.min_kept_per_layer = n;
        self
    }

    /// With these excluded names.
    pub fn with_exclude(mut self, names: BTreeSet<String>) -> Self {
        self.exclude = names;
        self
    }

    /// Checks the sparsity (in `[0, 1)`).
    pub fn validate(&self) -> Result<()> {
        check_sparsity("allocation: field `sparsity`", self.sparsity)
    }

    /// Masks keeping the highest-scoring entries of `scores` (see the
    /// [module documentation](self)). Global scope keeps exactly `round((1 − s) · n)` entries in
    /// total; per-layer scope exactly `round((1 − s) · n_l)` of each tensor, raised to
    /// `min(min_kept_per_layer, n_l)` where the guard asks for more. Refuses NaN scores and a
    /// guard that alone keeps more than the global budget.
    ///
    /// ```
    /// use secateur_pruning::Allocation;
    /// use candle_core::{Device, Tensor};
    /// use std::collections::BTreeMap;
    /// let scores = BTreeMap::from([
    ///     ("a".to_string(), Tensor::new(&[3f32, 1., 2.], &Device::Cpu).unwrap()),
    ///     ("b".to_string(), Tensor::new(&[2f32, 0.5], &Device::Cpu).unwrap()),
    /// ]);
    /// // keep round(0.4 · 5) = 2: the 3 of `a`, then the tie 2 = 2 goes to the lower index (in `a`)
    /// let m = Allocation::global(0.6).masks(&scores).unwrap();
    /// assert_eq!(m.get("a").unwrap().to_vec1::<f32>().unwrap(), [1., 0., 1.]);
    /// assert_eq!(m.get("b").unwrap().to_vec1::<f32>().unwrap(), [0., 0.]);
    /// ```
    pub fn masks(&self, scores: &Scores) -> Result<MaskSet> {
        self.validate()?;
        let names: Vec<&String> = scores.keys().filter(|k| !self.exclude.contains(*k)).collect();
        let mut flat: Vec<f64> = Vec::new();
        let mut ranges = Vec::with_capacity(names.len());
        for name in &names {
            let v = flat_scores(name, &scores[*name])?;
            ranges.push(flat.len()..flat.len() + v.len());
            flat.extend(v);
        }
        let mut keep = vec![false; flat.len()];
        match self.scope {
            Scope::PerLayer => {
                for r in &ranges {
                    let n = r.len();
                    let k = kept_count(n, self.sparsity).max(self.min_kept_per_layer.min(n));
                    for i in top(&flat, r.clone().collect(), k) {
                        keep[i] = true;
                    }
                }
            }
            Scope::Global => {
                let k = kept_count(flat.len(), self.sparsity);
                let mut reserved = 0;
                if self.min_kept_per_layer > 0 {
                    for r in &ranges {
                        let m = self.min_kept_per_layer.min(r.len());
                        for i in top(&flat, r.clone().collect(), m) {
                            keep[i] = true;
                        }
                        reserved += m;
                    }
                    if reserved > k {
                        candle_core::bail!(
                            "allocation: field `min_kept_per_layer` = {} reserves {reserved} entries, more than the {k} kept at sparsity {}",
                            self.min_kept_per_layer,
                            self.sparsity
                        );
                    }
                }
                let rest: Vec<usize> = (0..flat.len()).filter(|&i| !keep[i]).collect();
                for i in top(&flat, rest, k - reserved) {
                    keep[i] = true;
                }
            }
        }
        let mut out = MaskSet::new();
        for (name, r) in names.iter().zip(ranges) {
            let m: Vec<f32> = keep[r].iter().map(|&b| if b { 1.0 } else { 0.0 }).collect();
            let t = &scores[*name];
            out.insert((*name).clone(), Tensor::from_vec(m, t.dims(), t.device())?)?;
        }
        Ok(out)
    }
}

/// Masks keeping the entries whose score is strictly greater than `min_score` (e.g. sparse
/// VD: score `−log α`, `min_score = −3` keeps `log α < 3`, Molchanov et al. 2017). Refuses NaN.
pub fn threshold(scores: &Scores, min_score: f64, exclude: &BTreeSet<String>) -> Result<MaskSet> {
    let mut out = MaskSet::new();
    for (name, t) in scores.iter().filter(|(k, _)| !exclude.contains(*k)) {
        flat_scores(name, t)?;
        out.insert(
            name.clone(),
            t.to_dtype(DType::F64)?.gt(min_score)?.to_dtype(DType::F32)?,
        )?;
    }
    Ok(out)
}

/// Iterative pruning to a final sparsity in `rounds` rounds (Tanaka et al. 2020): the kept
/// fraction after round `t` is `d^{t/T}`, `d = 1 − final_sparsity` (exponential on the fraction
/// kept).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IterativeSchedule {
    /// Number of rounds `T ≥ 1` (SynFlow uses 100).
    pub rounds: usize,
    /// Final sparsity `s ∈ [0, 1)`.
    pub final_sparsity: f64,
}

impl IterativeSchedule {
    /// Checks `rounds ≥ 1` and `final_sparsity ∈ [0, 1)`.
    pub fn validate(&self) -> Result<()> {
        if self.rounds == 0 {
            candle_core::bail!("iterative schedule: field `rounds` must be at least 1, got 0");
        }
        check_sparsity("iterative schedule: field `final_sparsity`", self.final_sparsity)
    }

    /// Kept fraction after round `t` (0 ≤ t ≤ T): `d^{t/T}`.
    ///
    /// ```
    /// use secateur_pruning::IterativeSchedule;
    /// let s = IterativeSchedule { rounds: 2, final_sparsity: 0.99 };
    /// assert!((s.density(1) - 0.1).abs() < 1e-12 && (s.density(2) - 0.01).abs() < 1e-12);
    /// ```
    pub fn density(&self, t: usize) -> f64 {
        (1.0 - self.final_sparsity).powf(t as f64 / self.rounds as f64)
    }

    /// Sparsity after round `t`: `1 − d^{t/T}`.
    pub fn sparsity(&self, t: usize) -> f64 {
        1.0 - self.density(t)
    }
}

/// Iterative score-and-prune: for `t = 1..=T`, applies the current masks to the store (pruned
/// weights are zero while scoring), scores with `criterion`, gives already-pruned entries the
/// score `−∞` (so they stay pruned), and allocates with `allocation` at the sparsity
/// [`IterativeSchedule::sparsity`]`(t)`. The returned masks are applied to the store. With
/// `rounds = 1` this is one-shot pruning.
pub fn prune_iteratively(
    criterion: &dyn Criterion,
    cx: &mut ScoringContext,
    allocation: &Allocation,
    schedule: &IterativeSchedule,
) -> Result<MaskSet> {
    schedule.validate()?;
    let mut masks: Option<MaskSet> = None;
    for t in 1..=schedule.rounds {
        if let Some(m) = &masks {
            m.apply(cx.store)?;
        }
        let mut scores = criterion.score(cx)?;
        if let Some(m) = &masks {
            for (name, s) in scores.iter_mut() {
                if let Some(mk) = m.get(name) {
                    let ninf = Tensor::full(f32::NEG_INFINITY, s.dims(), s.device())?.to_dtype(s.dtype())?;
                    *s = mk.to_dtype(DType::U8)?.where_cond(s, &ninf)?;
                }
            }
        }
        let a = Allocation {
            sparsity: schedule.sparsity(t),
            ..allocation.clone()
        };
        masks = Some(a.masks(&scores)?);
    }
    let m = masks.unwrap_or_default();
    m.apply(cx.store)?;
    Ok(m)
}
