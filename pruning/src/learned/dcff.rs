//! DCFF, dynamic-coded filter fusion (Lin, Chen, Chao, Ji et al., "Training compact CNNs for
//! image classification using dynamic-coded filter fusion", IEEE TPAMI 2023; code
//! `lmbxmu/DCFF`): a compact network trained from scratch, whose every pruned layer keeps all
//! `C` of its filters `W_1 … W_C` as parameters and computes with `m < C` *fused* filters
//!
//! ```text
//! Ŵ_i = Σ_j p_i(j) W_j,     p_i(j) = exp(−t‖W_i − W_j‖₂) / Σ_k exp(−t‖W_i − W_k‖₂),
//! ```
//!
//! the inter-similarity distribution of filter `i` over the layer's filters (itself included)
//! at temperature `t`, for the `m` filters `i` of largest importance
//!
//! ```text
//! s_j = (1/C) Σ_k KL(p_j ‖ p_k)
//! ```
//!
//! (a filter whose distribution differs most from the others' is the most distinctive). The
//! temperature grows during training, `t(e) = A / (1 + e^{−κe}) + t_s − A/2` with
//! `A = 2 (t_e − t_s)(1 + e^{−κE}) / (1 − e^{−κE})` over `E` epochs (`t(0) = t_s`, `t(E) = t_e`;
//! the reference code's `t_s = 1`, `t_e = 10⁴`, `κ = 1`), so that every `p_i` becomes one-hot, the
//! fused filters become single filters, and the compact network falls out with no pretrained
//! model and no sparsity penalty ([`fuse`]).
//!
//! **Matching the reference code**, which holds the full filters `[C, C_in, k, k]` and a
//! fusion matrix `P` (the kept rows of the distributions, `[m, C]`, no gradient) per pruned
//! layer and builds the rest of the network (batch norms, the next layer's inputs) at the
//! compact width: the same here ([`DcffLayer`] computes `P · W`; the gradient reaches every
//! filter through `P`); `P` and the kept set are recomputed at the start of every epoch
//! ([`refresh`], by [`Dcff`], the step hook), the distances are plain Euclidean distances of the
//! flattened filters, the importance keeps the code's `1/C`; in the ResNets only the first
//! convolution of each block is pruned (the structured groups of [`crate::structured`]), at a
//! rate per layer (`m = ⌊C (1 − r)⌋`, at least 1).
//!
//! **Where this differs from the reference code.** The code evaluates the KL with
//! probabilities (`p log(p / (q + 10⁻⁷))`): from the second epoch on (`t ≈ 4622`) the
//! probabilities underflow to exact zeros and ones, every score is NaN, and the code keeps the
//! previous epoch's scores, so its kept set is the one chosen at initialisation. Here the
//! distributions are computed in log space (`log p_i(j) = −t d_ij − logsumexp_k(−t d_ik)`), so the
//! importance is finite at every temperature and the kept set is re-selected every epoch as the
//! paper describes; in the limit `t → ∞` it tends to `(t/C) Σ_k d_jk`, the summed distance to the
//! other filters (the filters farthest from the rest are kept — the opposite choice to FPGM's
//! geometric median, He et al. 2019). When the kept set changes, filters kept before keep their
//! slot (their batch-norm channel and the next layer's input) and the newly kept ones take the
//! freed slots in increasing filter order (the code's `topk` order is arbitrary, and never
//! matters there since its set never changes).

use candle_core::{DType, Device, Result, Tensor, Var};
use secateur_bayes::nn::{conv2d_forward, linear_forward, Conv2d, Conv2dCfg, Linear, LinearCfg};
use secateur_bayes::{Ctx, Init, Module, ParamBuilder, ParamStore, UnitSummary};
use secateur_inference::hooks::StepHook;
use secateur_models::{Deterministic, LayerFactory};
use std::collections::{BTreeMap, HashMap};

/// Leaf name of the fusion-matrix buffer `[m, C]` of a pruned layer.
pub const FUSION_BUFFER: &str = "dcff_fusion";
/// Leaf name of the kept-filter buffer `[m]` (filter index per slot, as f32).
pub const KEPT_BUFFER: &str = "dcff_kept";

/// The temperature schedule (see the [module documentation](self)).
///
/// ```
/// use secateur_pruning::learned::dcff::Temperature;
/// let t = Temperature { start: 1.0, end: 1e4, k: 1.0, epochs: 300 };
/// assert!((t.at(0) - 1.0).abs() < 1e-9 && (t.at(300) - 1e4).abs() < 1e-6);
/// assert!((t.at(1) - 4622.0).abs() < 1.0); // the reference code's second epoch
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Temperature {
    /// `t_s > 0`, the temperature of the first epoch (reference code: 1).
    pub start: f64,
    /// `t_e ≥ t_s`, the temperature at the end (reference code: 10⁴).
    pub end: f64,
    /// `κ > 0`, the growth rate per epoch (reference code: 1).
    pub k: f64,
    /// `E ≥ 1`, the training epochs.
    pub epochs: usize,
}

impl Temperature {
    /// Refuses impossible values, naming the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.start.is_finite() && self.start > 0.0) {
            candle_core::bail!("dcff t_start must be finite and > 0, got {}", self.start);
        }
        if !(self.end.is_finite() && self.end >= self.start) {
            candle_core::bail!("dcff t_end must be finite and >= t_start, got {}", self.end);
        }
        if !(self.k.is_finite() && self.k > 0.0) {
            candle_core::bail!("dcff k must be finite and > 0, got {}", self.k);
        }
        if self.epochs == 0 {
            candle_core::bail!("dcff needs at least one epoch");
        }
        Ok(())
    }

    /// `t(e)` at the start of epoch `e` (from 0).
    pub fn at(&self, e: usize) -> f64 {
        let ek = (-self.k * self.epochs as f64).exp();
        let a = 2.0 * (self.end - self.start) * (1.0 + ek) / (1.0 - ek);
        a / (1.0 + (-self.k * e as f64).exp()) + self.start - a / 2.0
    }
}

/// Euclidean distances `d_ij = ‖W_i − W_j‖₂` of the rows of `w` (`[C, D]`, f64 computation).
pub fn distances(w: &Tensor) -> Result<Vec<Vec<f64>>> {
    let rows = w.to_dtype(DType::F64)?.flatten_from(1)?.to_vec2::<f64>()?;
    let c = rows.len();
    let mut d = vec![vec![0.0; c]; c];
    for i in 0..c {
        for j in i + 1..c {
            let s: f64 = rows[i].iter().zip(&rows[j]).map(|(a, b)| (a - b) * (a - b)).sum();
            d[i][j] = s.sqrt();
            d[j][i] = d[i][j];
        }
    }
    Ok(d)
}

/// `log p_i(j) = −t d_ij − log Σ_k exp(−t d_ik)`, computed stably (log-sum-exp).
pub fn log_similarity(d: &[Vec<f64>], t: f64) -> Vec<Vec<f64>> {
    d.iter()
        .map(|row| {
            let z: Vec<f64> = row.iter().map(|x| -t * x).collect();
            let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            z.iter().map(|v| v - lse).collect()
        })
        .collect()
}

/// `s_j = (1/C) Σ_k KL(p_j ‖ p_k)` from the log-distributions (`0 · log 0 = 0`).
pub fn importance(logp: &[Vec<f64>]) -> Vec<f64> {
    let c = logp.len();
    (0..c)
        .map(|j| {
            let mut s = 0.0;
            for other in logp {
                for (lj, lk) in logp[j].iter().zip(other) {
                    let p = lj.exp();
                    if p > 0.0 {
                        s += p * (lj - lk);
                    }
                }
            }
            s / c as f64
        })
        .collect()
}

/// The `m` filters of largest score (ties: the lower index), placed in slots: a filter in
/// `previous` keeps its slot; the others fill the free slots in increasing filter order.
pub fn select(scores: &[f64], m: usize, previous: Option<&[usize]>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut kept: Vec<usize> = order.into_iter().take(m).collect();
    kept.sort_unstable();
    let Some(prev) = previous.filter(|p| p.len() == m) else {
        return kept;
    };
    let mut slots: Vec<Option<usize>> = prev.iter().map(|f| kept.contains(f).then_some(*f)).collect();
    let mut new = kept.iter().filter(|f| !prev.contains(f));
    for s in slots.iter_mut().filter(|s| s.is_none()) {
        *s = new.next().copied();
    }
    slots.into_iter().map(|s| s.unwrap_or(0)).collect()
}

/// The fusion matrix `[m, C]` (row `s` = `p_{kept[s]}`) and the kept filters of the layer whose
/// full filters are `w` (`[C, …]`) at temperature `t`; `previous` keeps slots stable.
pub fn fusion(w: &Tensor, m: usize, t: f64, previous: Option<&[usize]>) -> Result<(Tensor, Vec<usize>)> {
    let logp = log_similarity(&distances(w)?, t);
    let kept = select(&importance(&logp), m, previous);
    let c = logp.len();
    let rows: Vec<f32> = kept
        .iter()
        .flat_map(|&i| logp[i].iter().map(|l| l.exp() as f32))
        .collect();
    Ok((Tensor::from_vec(rows, (m, c), w.device())?.to_dtype(w.dtype())?, kept))
}

/// A linear or convolution layer computing with `m` fused filters `P · W` of its `C` filters
/// (and the fused bias `P · b`).
pub struct DcffLayer {
    /// The full filters `[C, …]` (the layer's `weight` parameter).
    pub weight: Tensor,
    /// The full bias `[C]`, if any.
    pub bias: Option<Tensor>,
    /// The fusion matrix `[m, C]` (buffer `dcff_fusion`).
    pub fusion: Var,
    /// The convolution's hyper-parameters; `None` for a linear layer.
    pub conv: Option<Conv2dCfg>,
}

impl DcffLayer {
    /// `(P · W, P · b)`, the filters and bias the layer computes with.
    pub fn fused(&self) -> Result<(Tensor, Option<Tensor>)> {
        let p = self.fusion.as_detached_tensor();
        let mut dims = self.weight.dims().to_vec();
        dims[0] = p.dim(0)?;
        let w = p.matmul(&self.weight.flatten_from(1)?)?.reshape(dims)?;
        let b = match &self.bias {
            Some(b) => Some(p.matmul(&b.unsqueeze(1)?)?.squeeze(1)?),
            None => None,
        };
        Ok((w, b))
    }
}

impl Module for DcffLayer {
    fn forward(&self, x: &Tensor, _ctx: &mut Ctx) -> Result<Tensor> {
        let (w, b) = self.fused()?;
        match &self.conv {
            Some(cfg) => conv2d_forward(x, &w, b.as_ref(), cfg),
            None => linear_forward(x, &w, b.as_ref()),
        }
    }
}

/// Makes the pruned layers (by path, with their full filter count `C`) as [`DcffLayer`]s whose
/// output width is the one the architecture asks for (`m`), and every other layer as a plain
/// deterministic one. The first fusion matrix is computed from the initial filters at `t_start`.
#[derive(Debug, Clone)]
pub struct DcffFactory {
    full: BTreeMap<String, usize>,
    t_start: f64,
}

impl DcffFactory {
    /// `full`: layer path (`layer1.0.conv1`) → its full filter count `C`.
    pub fn new(full: BTreeMap<String, usize>, t_start: f64) -> Self {
        Self { full, t_start }
    }

    /// A pruned layer with full filters `w` (`[C, …]`) computing `m` fused ones.
    fn layer(
        pb: &ParamBuilder,
        w: Tensor,
        bias: Option<Tensor>,
        m: usize,
        conv: Option<Conv2dCfg>,
        t: f64,
    ) -> Result<DcffLayer> {
        let c = w.dim(0)?;
        if m == 0 || m > c {
            candle_core::bail!("dcff `{}`: {m} fused filters of {c}", pb.prefix());
        }
        let fusion = pb.buffer(FUSION_BUFFER, &[m, c], Init::Const(0.0))?;
        let kept = pb.buffer(KEPT_BUFFER, &[m], Init::Const(0.0))?;
        let (p, k) = self::fusion(&w, m, t, None)?;
        fusion.set(&p.to_dtype(fusion.dtype())?)?;
        kept.set(&kept_tensor(&k, w.device())?.to_dtype(kept.dtype())?)?;
        Ok(DcffLayer {
            weight: w,
            bias,
            fusion,
            conv,
        })
    }
}

impl LayerFactory for DcffFactory {
    fn name(&self) -> &str {
        "dcff"
    }
    fn linear(&self, pb: &ParamBuilder, cfg: LinearCfg) -> Result<Box<dyn Module>> {
        match self.full.get(pb.prefix()) {
            Some(&c) => {
                let m = cfg.out_dim;
                let l = Linear::new(pb, LinearCfg { out_dim: c, ..cfg })?;
                Ok(Box::new(Self::layer(pb, l.weight, l.bias, m, None, self.t_start)?))
            }
            None => Deterministic.linear(pb, cfg),
        }
    }
    fn conv2d(&self, pb: &ParamBuilder, cfg: Conv2dCfg) -> Result<Box<dyn Module>> {
        match self.full.get(pb.prefix()) {
            Some(&c) => {
                let m = cfg.out_ch;
                let l = Conv2d::new(pb, Conv2dCfg { out_ch: c, ..cfg })?;
                Ok(Box::new(Self::layer(
                    pb,
                    l.weight,
                    l.bias,
                    m,
                    Some(l.cfg),
                    self.t_start,
                )?))
            }
            None => Deterministic.conv2d(pb, cfg),
        }
    }
}

fn kept_tensor(kept: &[usize], dev: &Device) -> Result<Tensor> {
    Tensor::from_vec(kept.iter().map(|&k| k as f32).collect::<Vec<_>>(), kept.len(), dev)
}

/// The kept filters of a layer of `c` filters from its buffer; an index that is not a filter of
/// the layer (an edited or damaged weights file) is an error naming the layer.
fn kept_indices(path: &str, kept: &Var, c: usize) -> Result<Vec<usize>> {
    kept.as_tensor()
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?
        .iter()
        .map(|&k| {
            if k.fract() == 0.0 && k >= 0.0 && (k as usize) < c {
                Ok(k as usize)
            } else {
                Err(candle_core::Error::Msg(format!(
                    "dcff `{path}`: kept filter {k} is not one of its {c} filters"
                )))
            }
        })
        .collect()
}

/// The pruned layers of `store`: path → (full filters, fusion buffer, kept buffer).
fn layers(store: &ParamStore) -> Result<Vec<(String, Var, Var, Var)>> {
    let buffers = store.buffers();
    let params = store.params();
    let suffix = format!(".{FUSION_BUFFER}");
    let mut out = Vec::new();
    for (name, fusion) in &buffers {
        let Some(path) = name.strip_suffix(&suffix) else {
            continue;
        };
        let w = params
            .get(&format!("{path}.weight"))
            .ok_or_else(|| candle_core::Error::Msg(format!("dcff: `{path}` has no weight")))?;
        let kept = buffers
            .get(&format!("{path}.{KEPT_BUFFER}"))
            .ok_or_else(|| candle_core::Error::Msg(format!("dcff: `{path}` has no {KEPT_BUFFER}")))?;
        out.push((path.to_string(), w.clone(), fusion.clone(), kept.clone()));
    }
    Ok(out)
}

/// Recomputes every pruned layer's fusion matrix and kept set at temperature `t` (the start of
/// an epoch), keeping the slots of filters that stay kept.
pub fn refresh(store: &ParamStore, t: f64) -> Result<()> {
    for (path, w, fusion, kept) in layers(store)? {
        let prev = kept_indices(&path, &kept, w.dim(0)?)?;
        let (p, k) = self::fusion(w.as_tensor(), prev.len(), t, Some(&prev))?;
        fusion.set(&p.to_dtype(fusion.dtype())?)?;
        kept.set(&kept_tensor(&k, w.device())?.to_dtype(kept.dtype())?)?;
    }
    Ok(())
}

/// The tensors of the plain compact network: every pruned layer's `weight` and `bias` replaced
/// by the fused ones (`P · W`, `P · b`), the DCFF buffers left out; everything else as stored.
/// A deterministic network built at the compact widths loads them strictly and computes what
/// the DCFF network computes.
pub fn fuse(store: &ParamStore) -> Result<HashMap<String, Tensor>> {
    let mut out: HashMap<String, Tensor> = store.tensors().into_iter().collect();
    for (path, w, fusion, _) in layers(store)? {
        let layer = DcffLayer {
            weight: w.as_tensor().clone(),
            bias: store
                .params()
                .get(&format!("{path}.bias"))
                .map(|b| b.as_tensor().clone()),
            fusion,
            conv: None,
        };
        let (fw, fb) = layer.fused()?;
        out.insert(format!("{path}.weight"), fw);
        if let Some(b) = fb {
            out.insert(format!("{path}.bias"), b);
        }
        out.remove(&format!("{path}.{FUSION_BUFFER}"));
        out.remove(&format!("{path}.{KEPT_BUFFER}"));
    }
    Ok(out)
}

/// The DCFF step hook: at the start of every epoch `e`, the fusion matrices and kept sets are
/// recomputed at the temperature `t(e)` ([`refresh`]), so that the epoch trains and is evaluated
/// with the same fusion (as the reference code). Stateless: a resumed run recomputes them from its
/// checkpoint's filters at the epoch it resumes at, which is what the run did there.
pub struct Dcff {
    temperature: Temperature,
}

impl Dcff {
    /// The hook with this schedule.
    pub fn new(temperature: Temperature) -> Result<Self> {
        temperature.validate()?;
        Ok(Self { temperature })
    }
}

impl StepHook for Dcff {
    fn before_step(&mut self, _: &ParamStore, _: &mut candle_core::backprop::GradStore, _: usize) -> Result<()> {
        Ok(())
    }

    fn after_step(&mut self, _: &ParamStore, _: usize) -> Result<()> {
        Ok(())
    }

    fn on_epoch_start(&mut self, store: &ParamStore, epoch: usize) -> Result<()> {
        refresh(store, self.temperature.at(epoch))
    }

    /// Per pruned layer: the fused filters `m` of `C`, and as "mean inclusion" the mean weight a
    /// fused filter gives its own filter, `mean_s p_{kept[s]}(kept[s])` (1 once one-hot).
    fn units(&self, store: &ParamStore) -> Result<Vec<UnitSummary>> {
        layers(store)?
            .into_iter()
            .map(|(path, w, fusion, kept)| {
                let p = fusion.as_tensor().to_dtype(DType::F64)?.to_vec2::<f64>()?;
                let k = kept_indices(&path, &kept, w.dim(0)?)?;
                let own: f64 = k.iter().enumerate().map(|(s, &f)| p[s][f]).sum::<f64>() / k.len().max(1) as f64;
                Ok(UnitSummary {
                    layer: path,
                    kept: k.len(),
                    total: w.dim(0)?,
                    mean_inclusion: Some(own),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secateur_bayes::{Sampling, SeededRng};
    use secateur_models::{build_with_widths, ModelSpec};

    fn random(c: usize, d: usize, seed: u64) -> Result<Tensor> {
        SeededRng::new(seed).randn(&[c, d], DType::F32, &Device::Cpu)
    }

    /// The distributions are softmax(−t d) over every filter, the filter itself included,
    /// computed here directly with exponentials in f64; uniform as t → 0, one-hot on the filter
    /// itself as t → ∞, and finite (no NaN) at the reference code's end temperature.
    #[test]
    fn similarity_distributions_and_their_limits() -> Result<()> {
        let w = random(6, 5, 1)?;
        let d = distances(&w)?;
        let rows = w.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let direct = |i: usize, j: usize| -> f64 {
            rows[i]
                .iter()
                .zip(&rows[j])
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f64>()
                .sqrt()
        };
        for t in [0.3, 1.0, 2.5] {
            let lp = log_similarity(&d, t);
            #[allow(clippy::needless_range_loop)]
            for i in 0..6 {
                let z: f64 = (0..6).map(|k| (-t * direct(i, k)).exp()).sum();
                for j in 0..6 {
                    let want = (-t * direct(i, j)).exp() / z;
                    assert!((lp[i][j].exp() - want).abs() < 1e-12);
                }
                let total: f64 = lp[i].iter().map(|l| l.exp()).sum();
                assert!((total - 1.0).abs() < 1e-12);
            }
        }
        let cold = log_similarity(&d, 1e-9);
        assert!(cold.iter().flatten().all(|l| (l.exp() - 1.0 / 6.0).abs() < 1e-6));
        let hot = log_similarity(&d, 1e4);
        for (i, row) in hot.iter().enumerate() {
            assert!((row[i].exp() - 1.0).abs() < 1e-12, "one-hot on itself");
            assert!(row.iter().enumerate().all(|(j, l)| j == i || l.exp() < 1e-100));
        }
        assert!(importance(&hot).iter().all(|s| s.is_finite()));
        Ok(())
    }

    /// The importance is (1/C) Σ_k KL(p_j ‖ p_k), checked against a direct sum over
    /// probabilities at a moderate temperature; as t → ∞ it tends to (t/C) Σ_k d_jk, so the
    /// kept filters are those farthest from the others.
    #[test]
    fn kl_importance_and_its_limit() -> Result<()> {
        let w = random(5, 7, 2)?;
        let d = distances(&w)?;
        let t = 0.8;
        let lp = log_similarity(&d, t);
        let p: Vec<Vec<f64>> = lp.iter().map(|r| r.iter().map(|l| l.exp()).collect()).collect();
        let s = importance(&lp);
        for j in 0..5 {
            let mut kl = 0.0;
            for k in 0..5 {
                kl += (0..5).map(|l| p[j][l] * (p[j][l] / p[k][l]).ln()).sum::<f64>();
            }
            assert!((s[j] - kl / 5.0).abs() < 1e-10);
        }
        let t = 1e6;
        let s = importance(&log_similarity(&d, t));
        for (j, sj) in s.iter().enumerate() {
            let limit = t / 5.0 * d[j].iter().sum::<f64>();
            assert!((sj / limit - 1.0).abs() < 1e-6, "{sj} vs {limit}");
        }
        // the kept set: the largest summed distances
        let mut by_distance: Vec<usize> = (0..5).collect();
        by_distance.sort_by(|&a, &b| d[b].iter().sum::<f64>().total_cmp(&d[a].iter().sum::<f64>()));
        let mut top: Vec<usize> = by_distance[..3].to_vec();
        top.sort_unstable();
        assert_eq!(select(&s, 3, None), top);
        Ok(())
    }

    #[test]
    fn filters_that_stay_kept_keep_their_slot() {
        // kept before: filters 4, 1, 2 in slots 0, 1, 2; now the top three are 0, 2, 4
        let scores = [5.0, 1.0, 4.0, 0.5, 3.0];
        assert_eq!(select(&scores, 3, Some(&[4, 1, 2])), vec![4, 0, 2]);
        assert_eq!(select(&scores, 3, None), vec![0, 2, 4]);
        // ties go to the lower index
        assert_eq!(select(&[1.0, 1.0, 1.0], 2, None), vec![0, 1]);
    }

    /// A DCFF ResNet-20 (pruned block convolutions at compact width, batch norm, residual sums)
    /// computes what the plain compact network with the fused filters computes; a refresh at a
    /// large temperature makes the fused filters the kept filters themselves.
    #[test]
    fn fused_network_computes_the_same_and_tends_to_selection() -> Result<()> {
        let spec = ModelSpec::new("resnet20", [3, 8, 8], 10);
        let full = crate::structured::groups::record(&spec)?;
        let geom = crate::geometry::record(&spec)?;
        let mut paths = BTreeMap::new();
        let widths: Vec<usize> = geom
            .layers
            .iter()
            .map(|l| match full.layers.iter().find(|g| g.name == l.name) {
                Some(g) => {
                    paths.insert(l.name.trim_end_matches(".weight").to_string(), g.groups);
                    g.groups / 2
                }
                None => l.weight_shape[0],
            })
            .collect();
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(3), DType::F32, Device::Cpu);
        let net = build_with_widths(&spec, &widths, &DcffFactory::new(paths.clone(), 1.0), &pb)?;
        assert_eq!(store.get("layer1.0.conv1.weight").unwrap().dims(), [16, 16, 3, 3]);
        assert_eq!(store.get("layer1.0.bn1.weight").unwrap().dims(), [8]);
        let check = |net: &secateur_models::Network, store: &ParamStore| -> Result<f32> {
            let small = ParamStore::new();
            let spb = ParamBuilder::new(small.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
            let plain = build_with_widths(&spec, &widths, &Deterministic, &spb)?;
            small.load(&fuse(store)?)?;
            let x = SeededRng::new(8).randn(&[3, 3, 8, 8], DType::F32, &Device::Cpu)?;
            let mut r = SeededRng::new(0);
            let a = net.forward(&x, &mut Ctx::eval(&mut r, Sampling::Mean))?;
            let b = plain.forward(&x, &mut Ctx::eval(&mut r, Sampling::Mean))?;
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        assert!(check(&net, &store)? < 1e-5);
        // at t = 1 the fused filters are mixtures, not single filters
        let w = store.get("layer2.0.conv1.weight").unwrap();
        let p = store
            .get("layer2.0.conv1.dcff_fusion")
            .unwrap()
            .as_tensor()
            .to_vec2::<f32>()?;
        assert!(p.iter().all(|r| r.iter().cloned().fold(0.0, f32::max) < 0.999));
        refresh(&store, 1e4)?;
        assert!(check(&net, &store)? < 1e-5);
        let kept = store
            .get("layer2.0.conv1.dcff_kept")
            .unwrap()
            .as_tensor()
            .to_vec1::<f32>()?;
        let fused = fuse(&store)?["layer2.0.conv1.weight"].clone();
        for (s, &f) in kept.iter().enumerate() {
            let diff = (fused.get(s)? - w.as_tensor().get(f as usize)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-6, "slot {s} is filter {f}");
        }
        Ok(())
    }

    /// The hook refreshes at the start of every epoch, at that epoch's temperature, and only
    /// then (its steps change nothing).
    #[test]
    fn hook_refreshes_at_each_epoch_start() -> Result<()> {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(4), DType::F32, Device::Cpu);
        let mut full = BTreeMap::new();
        full.insert("fc".to_string(), 6);
        let _l = DcffFactory::new(full, 1.0).linear(&pb.pp("fc"), LinearCfg::new(5, 3))?;
        let t = Temperature {
            start: 1.0,
            end: 1e4,
            k: 1.0,
            epochs: 3,
        };
        let mut hook = Dcff::new(t)?;
        let fusion_now = || store.get("fc.dcff_fusion").unwrap().as_tensor().to_vec2::<f32>();
        let p0 = fusion_now()?;
        hook.on_epoch_start(&store, 0)?; // t(0) = t_start, the factory's own
        assert_eq!(fusion_now()?, p0);
        // a step of training: the filters move, the fusion does not until the next epoch starts
        let w = store.get("fc.weight").unwrap();
        w.set(&(w.as_tensor() * 1.5)?)?;
        for step in 0..4 {
            hook.after_step(&store, step)?;
        }
        assert_eq!(fusion_now()?, p0);
        hook.on_epoch_start(&store, 1)?;
        let expected = fusion(w.as_tensor(), 3, t.at(1), None)?.0;
        let p1 = store.get("fc.dcff_fusion").unwrap().as_tensor().clone();
        assert_ne!(p1.to_vec2::<f32>()?, p0);
        assert!((p1 - expected)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-7);
        let u = hook.units(&store)?;
        assert_eq!((u[0].kept, u[0].total), (3, 6));
        Ok(())
    }
}
