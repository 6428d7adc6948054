//! How good is an estimated curvature diagonal? Per layer: the share of negative entries and
//! Spearman rank correlations with the exact diagonal, of the diagonal itself and of the HP
//! score `θ² ⊙ diag / 2` that pruning ranks.
//!
//! For networks of ReLU, max-pooling, convolution and linear layers the exact Hessian diagonal
//! equals the Gauss–Newton diagonal ([`crate::criteria::ggn_diagonal`]), which is never negative:
//! a negative share far from 0 says that an estimate (Hutchinson's) is dominated by its noise.
//! Ranks matter rather than values, since allocation keeps the top-k.

use crate::mask::Scores;
use candle_core::{DType, Result, Tensor};

/// The comparison for one prunable tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerCurvature {
    /// Logical name of the weight.
    pub name: String,
    /// Entries.
    pub entries: usize,
    /// Share of entries where the estimate is negative.
    pub negative_estimate: f64,
    /// Share of entries where the exact diagonal is negative (0 for a ReLU/max-pool network's
    /// Gauss–Newton diagonal, up to rounding).
    pub negative_exact: f64,
    /// Spearman's ρ between the estimated and the exact diagonal.
    pub spearman_diagonal: f64,
    /// Spearman's ρ between the HP scores `θ² ⊙ diag / 2` of both.
    pub spearman_hp: f64,
    /// `Σ estimate / Σ exact` over the layer: near 1 for an unbiased estimate even where the
    /// entries are noise (their errors average out over the sum), so a check of the estimator
    /// on a network too large for the exact Hessian.
    pub sum_ratio: f64,
    /// Largest relative difference between the exact diagonal and the Hessian's own diagonal
    /// entry `(H e_i)_i` (a Hessian–vector product with a unit vector) at the entries checked by
    /// [`check_against_hessian`] (`None`: not checked).
    pub hessian_check: Option<f64>,
}

fn flat(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// Ranks from 1, ties given their average rank (NaN sorted as equal to everything it meets is
/// avoided by [`f64::total_cmp`]; the inputs here are finite).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Pearson's correlation (NaN when either side is constant).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    sab / (saa * sbb).sqrt()
}

/// Spearman's rank correlation: Pearson's correlation of the ranks, ties at their average rank.
///
/// ```
/// use secateur_pruning::diagnose::spearman;
/// assert_eq!(spearman(&[1.0, 2.0, 3.0], &[10.0, 40.0, 90.0]), 1.0); // monotone
/// assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), -1.0);
/// ```
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&ranks(a), &ranks(b))
}

/// Compares an estimated diagonal with the exact one for every tensor of `exact` (the same
/// names must be in `estimate` and `theta`).
pub fn compare(estimate: &Scores, exact: &Scores, theta: &Scores) -> Result<Vec<LayerCurvature>> {
    let mut out = Vec::new();
    for (name, ex) in exact {
        fn get<'a>(s: &'a Scores, name: &str, what: &str) -> Result<&'a Tensor> {
            s.get(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("diagnose: no {what} for `{name}`")))
        }
        let (e, x, th) = (
            flat(get(estimate, name, "estimate")?)?,
            flat(ex)?,
            flat(get(theta, name, "weight")?)?,
        );
        if e.len() != x.len() || th.len() != x.len() {
            candle_core::bail!(
                "diagnose: `{name}` has {} estimated, {} exact and {} weight entries",
                e.len(),
                x.len(),
                th.len()
            );
        }
        let n = x.len().max(1) as f64;
        let hp = |d: &[f64]| -> Vec<f64> { d.iter().zip(&th).map(|(d, t)| t * t * d / 2.0).collect() };
        out.push(LayerCurvature {
            name: name.clone(),
            entries: x.len(),
            negative_estimate: e.iter().filter(|v| **v < 0.0).count() as f64 / n,
            negative_exact: x.iter().filter(|v| **v < 0.0).count() as f64 / n,
            spearman_diagonal: spearman(&e, &x),
            spearman_hp: spearman(&hp(&e), &hp(&x)),
            sum_ratio: e.iter().sum::<f64>() / x.iter().sum::<f64>(),
            hessian_check: None,
        });
    }
    Ok(out)
}

/// Checks a claimed exact diagonal against the Hessian itself: for each layer of `rows`, the
/// entries `i` at `per_layer` evenly spaced positions and the largest entry of `exact`, compares
/// `exact_i` with `(H e_i)_i` from a Hessian–vector product with the unit vector `e_i` over the
/// scoring data ([`crate::criteria::hvp`], double backpropagation), and records the largest
/// relative difference in [`LayerCurvature::hessian_check`]. For a ReLU/max-pool network and the
/// Gauss–Newton diagonal it is rounding error.
pub fn check_against_hessian(
    cx: &mut crate::ScoringContext,
    loss: &crate::Loss,
    exact: &Scores,
    per_layer: usize,
    rows: &mut [LayerCurvature],
) -> Result<()> {
    let targets = cx.targets();
    for row in rows.iter_mut() {
        let Some(ex) = exact.get(&row.name) else { continue };
        let x = flat(ex)?;
        let n = x.len();
        if n == 0 {
            continue;
        }
        let mut idx: Vec<usize> = (0..per_layer).map(|k| k * n / per_layer.max(1)).collect();
        idx.push((0..n).max_by(|&a, &b| x[a].total_cmp(&x[b])).unwrap_or(0));
        idx.dedup();
        let mut worst: f64 = 0.0;
        for i in idx {
            let mut v = Scores::new();
            for (k, t) in &targets {
                let z = t.as_tensor().zeros_like()?;
                let z = if *k == row.name {
                    let mut e = vec![0f64; n];
                    e[i] = 1.0;
                    Tensor::from_vec(e, z.dims(), z.device())?.to_dtype(z.dtype())?
                } else {
                    z
                };
                v.insert(k.clone(), z);
            }
            let hv = crate::criteria::hvp(cx, loss, &v)?;
            let hii = flat(&hv[&row.name])?[i];
            let scale = hii.abs().max(x[i].abs()).max(f64::MIN_POSITIVE);
            worst = worst.max((hii - x[i]).abs() / scale);
        }
        row.hessian_check = Some(worst);
    }
    Ok(())
}

/// A Markdown table of [`compare`]'s rows.
pub fn table(rows: &[LayerCurvature]) -> String {
    let mut s = String::from(
        "| layer | entries | negative (estimate) | negative (exact) | Spearman diag | Spearman HP | Σ estimate / Σ exact | exact vs (H eᵢ)ᵢ |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.1}% | {:.1}% | {:.3} | {:.3} | {:.3} | {} |\n",
            r.name,
            r.entries,
            100.0 * r.negative_estimate,
            100.0 * r.negative_exact,
            r.spearman_diagonal,
            r.spearman_hp,
            r.sum_ratio,
            r.hessian_check.map_or("-".to_string(), |c| format!("{c:.1e}"))
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ties at their average rank: ranks of [3, 1, 3, 2] are [3.5, 1, 3.5, 2]; the ρ of two
    /// samples against a hand computation (Pearson of the ranks).
    #[test]
    fn ranks_with_ties_and_a_hand_computed_rho() {
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0]);
        // ranks a = [1, 2, 3, 4], b = [2, 1, 4, 3]: d = [-1, 1, -1, 1], ρ = 1 − 6·4/(4·15) = 0.6
        let r = spearman(&[0.1, 0.2, 0.3, 0.4], &[5.0, 1.0, 9.0, 7.0]);
        assert!((r - 0.6).abs() < 1e-12, "{r}");
        assert!(spearman(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
    }
}
