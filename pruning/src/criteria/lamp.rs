//! LAMP, layer-adaptive magnitude-based pruning (Lee, Park, Mo, Ahn & Shin 2021).

use crate::criterion::{Criterion, ScoringContext};
use crate::mask::Scores;
use candle_core::{DType, Result, Tensor};

/// The LAMP score (Lee, Park, Mo, Ahn & Shin 2021, "Layer-adaptive sparsity for the
/// magnitude-based pruning", ICLR), data-free. Within each prunable tensor, with its entries
/// ordered by magnitude, `|θ_(1)| ≤ |θ_(2)| ≤ … ≤ |θ_(n)|` (ties by flat index), the entry of rank
/// `u` scores
///
/// `S(u) = θ_(u)² / Σ_{v ≥ u} θ_(v)²`,
///
/// its squared magnitude over the squared norm of the entries ranked at or above it (`0/0 := 0`
/// for the zeros of a tensor with no non-zero entry). Within a tensor `S` ranks as the magnitude
/// does; its largest entry scores exactly 1 and every other entry less, so the scores of
/// different tensors are comparable, and global top-k on them chooses the per-layer sparsities
/// (LAMP with global allocation; the paper shows it minimises a bound on the output distortion)
/// and keeps at least one entry of every non-zero tensor whenever it keeps as many entries as
/// there are tensors — no layer collapse.
///
/// ```
/// use secateur_pruning::criterion::by_name;
/// let lamp = by_name("lamp").unwrap();
/// assert!(!lamp.needs_data() && !lamp.needs_double_backprop());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Lamp;

/// The LAMP scores of one tensor's entries, flat (see [`Lamp`]).
pub fn lamp_scores(w: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..w.len()).collect();
    order.sort_by(|&a, &b| w[a].abs().total_cmp(&w[b].abs()).then(a.cmp(&b)));
    let mut out = vec![0.0; w.len()];
    let mut tail = 0.0; // Σ_{v ≥ u} θ_(v)², accumulated from the largest entry down
    for &i in order.iter().rev() {
        let sq = w[i] * w[i];
        tail += sq;
        out[i] = if tail > 0.0 { sq / tail } else { 0.0 };
    }
    out
}

impl Criterion for Lamp {
    fn name(&self) -> &str {
        "lamp"
    }
    fn score(&self, cx: &mut ScoringContext) -> Result<Scores> {
        cx.targets()
            .into_iter()
            .map(|(k, v)| {
                let t = v.as_tensor();
                let w = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                let s = Tensor::from_vec(lamp_scores(&w), t.dims(), t.device())?.to_dtype(t.dtype())?;
                Ok((k, s))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criterion::by_name;
    use crate::Allocation;
    use candle_core::Device;
    use secateur_bayes::{Ctx, Init, Module, ParamBuilder, ParamStore, SeededRng};
    use std::collections::HashMap;

    /// A store with two weight tensors, `fc1.weight` `[2, 3]` and `fc2.weight` `[2, 2]`, holding
    /// `w1` and `w2`, and a bias (never scored).
    fn net(w1: &[f64], w2: &[f64]) -> Result<ParamStore> {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F64, Device::Cpu);
        let init = Init::Normal { mean: 0.0, std: 1.0 };
        pb.pp("fc1").param("weight", &[2, 3], init)?;
        pb.pp("fc1").param("bias", &[2], init)?;
        pb.pp("fc2").param("weight", &[2, 2], init)?;
        let values: HashMap<String, Tensor> = [
            ("fc1.weight", Tensor::from_slice(w1, (2, 3), &Device::Cpu)?),
            ("fc2.weight", Tensor::from_slice(w2, (2, 2), &Device::Cpu)?),
            ("fc1.bias", Tensor::new(&[9.0f64, -9.0], &Device::Cpu)?),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        store.load(&values)?;
        Ok(store)
    }

    /// LAMP reads no forward pass; the model is never called.
    struct NoForward;
    impl Module for NoForward {
        fn forward(&self, _: &Tensor, _: &mut Ctx) -> Result<Tensor> {
            candle_core::bail!("LAMP must not run the model")
        }
    }

    fn lamp(store: &ParamStore) -> Result<Scores> {
        let mut rng = SeededRng::new(0);
        by_name("lamp")?.score(&mut ScoringContext::new(&NoForward, store, None, &mut rng))
    }

    fn flat(s: &Scores, k: &str) -> Vec<f64> {
        s[k].flatten_all().and_then(|t| t.to_vec1::<f64>()).unwrap_or_default()
    }

    /// Values worked out by hand from the paper's definition.
    #[test]
    fn lamp_matches_scores_computed_by_hand() -> Result<()> {
        // fc1: |θ| sorted 0.5 (#5), 1 (#1), 2 (#3), 3 (#0), 4 (#2), 6 (#4); squares 0.25, 1, 4, 9,
        // 16, 36; tail sums 66.25, 66, 65, 61, 52, 36.
        // fc2: ties and zeros: (0, #0), (0, #3), (2, #1), (2, #2); tail sums 8, 8, 8, 4.
        let store = net(&[3.0, -1.0, 4.0, 2.0, -6.0, 0.5], &[0.0, 2.0, -2.0, 0.0])?;
        let s = lamp(&store)?;
        assert_eq!(s.len(), 2, "biases are not scored");
        let want1 = [9.0 / 61.0, 1.0 / 66.0, 16.0 / 52.0, 4.0 / 65.0, 1.0, 0.25 / 66.25];
        for (got, want) in flat(&s, "fc1.weight").iter().zip(want1) {
            assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        }
        assert_eq!(flat(&s, "fc2.weight"), [0.0, 0.5, 1.0, 0.0]);
        assert_eq!(s["fc1.weight"].dims(), [2, 3]);
        // an all-zero tensor scores 0 everywhere, not NaN
        assert_eq!(lamp_scores(&[0.0, -0.0, 0.0]), [0.0, 0.0, 0.0]);
        Ok(())
    }

    /// Against an independent O(n²) computation: for each entry, the sum over the entries that
    /// rank at or above it, found by comparing every pair (no sorting), on seeded weights.
    #[test]
    fn lamp_matches_a_pairwise_computation() -> Result<()> {
        let mut rng = SeededRng::new(5);
        let w1 = rng.randn(&[6], DType::F64, &Device::Cpu)?.to_vec1::<f64>()?;
        let w2 = rng.randn(&[4], DType::F64, &Device::Cpu)?.to_vec1::<f64>()?;
        let s = lamp(&net(&w1, &w2)?)?;
        for (k, w) in [("fc1.weight", &w1), ("fc2.weight", &w2)] {
            let at_or_above = |u: usize, v: usize| (w[v].abs(), v) >= (w[u].abs(), u);
            for (u, got) in flat(&s, k).into_iter().enumerate() {
                let denom: f64 = (0..w.len()).filter(|&v| at_or_above(u, v)).map(|v| w[v] * w[v]).sum();
                let want = w[u] * w[u] / denom;
                assert!((got - want).abs() < 1e-12 * want.max(1.0), "{k}[{u}]: {got} vs {want}");
            }
        }
        Ok(())
    }

    /// Global top-k on LAMP keeps every layer alive where global magnitude empties one: fc2's
    /// weights are a hundred times smaller than fc1's.
    #[test]
    fn global_lamp_never_empties_a_layer() -> Result<()> {
        let store = net(&[3.0, -1.0, 4.0, 2.0, -6.0, 0.5], &[0.01, -0.02, 0.03, 0.04])?;
        let alloc = Allocation::global(0.8); // keep 2 of 10
        let by_lamp = alloc.masks(&lamp(&store)?)?;
        let mut rng = SeededRng::new(0);
        let magnitude = by_name("magnitude")?.score(&mut ScoringContext::new(&NoForward, &store, None, &mut rng))?;
        let by_magnitude = alloc.masks(&magnitude)?;
        assert_eq!(by_magnitude.kept_in("fc2.weight")?, 0, "magnitude empties fc2");
        assert_eq!(by_lamp.kept_in("fc2.weight")?, 1);
        assert_eq!(by_lamp.kept_in("fc1.weight")?, 1);
        Ok(())
    }
}
