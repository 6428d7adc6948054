//! Posteriors over a trained network's parameters that are not layer kinds: one interface for
//! sampling, statistics and prediction by Bayesian model averaging.
//!
//! A [`Posterior`] covers some of a model's named parameters (all weights for SWAG and the
//! diagonal Laplace approximation, the head for last-layer Laplace, every parameter and buffer
//! for a deep ensemble). It gives
//!
//! - its mean `θ̄` ([`Posterior::mean`]) and seeded draws `θ ~ q` ([`Posterior::sample`]), both
//!   as a [`ParamSample`]: tensors by their names in the model's [`ParamStore`];
//! - per-parameter statistics ([`Posterior::stats`]) as the same [`PosteriorStats`] the
//!   variational layers report, so that the posterior pruning criteria (SNR `|μ|/σ`, Fisher at
//!   the mean) read any posterior without knowing its family;
//! - the Bayesian model average ([`predict_bma`]): `p(y | x, D) ≈ (1/S) Σₛ p(y | x, θₛ)` over S
//!   draws (or over the members of a finite mixture), with the entropy decomposition of
//!   [`crate::predict::decompose`] — the outputs [`crate::predict::predict_mc`] gives for the
//!   variational layers.
//!
//! Families whose samples move the weights away from those the batch-norm statistics were
//! collected with (SWAG, SWA; Izmailov et al. 2018, Maddox et al. 2019) ask for the statistics
//! to be recomputed on training data for every sample ([`Posterior::needs_batch_norm_refresh`],
//! [`refresh_batch_norm`]).
//!
//! Every random draw comes from the caller's [`SeededRng`]: same seed, same predictions.

use crate::batches::Batches;
use crate::likelihood::Gaussian;
use crate::predict::{predict, predict_regression, McPredictions, RegressionPredictions};
use candle_core::{Result, Tensor};
use secateur_bayes::{Ctx, Module, ParamStore, PosteriorStats, Sampling, SeededRng};
use std::collections::BTreeMap;

/// Parameter (and buffer) values by their names in a model's [`ParamStore`].
pub type ParamSample = BTreeMap<String, Tensor>;

/// A posterior over (some of) a model's parameters.
pub trait Posterior {
    /// The family's name: `swag`, `swag-diag`, `swa`, `laplace-diag`, `laplace-last-layer`,
    /// `ensemble`.
    fn kind(&self) -> &str;

    /// The posterior mean `θ̄` of every parameter it covers, by store name.
    fn mean(&self) -> Result<ParamSample>;

    /// One draw `θ ~ q` of every parameter it covers; all randomness from `rng`.
    fn sample(&self, rng: &mut SeededRng) -> Result<ParamSample>;

    /// Per-parameter statistics, one entry per covered weight tensor, named as in the store
    /// (`fc1.weight`): the mean and, where the family has one, the marginal standard deviation.
    fn stats(&self) -> Result<Vec<PosteriorStats>>;

    /// For a finite, equally weighted mixture (a deep ensemble): its number of members, which a
    /// model average enumerates instead of sampling. `None` (the default) for continuous
    /// posteriors.
    fn members(&self) -> Option<usize> {
        None
    }

    /// Member `i` of a finite mixture ([`Posterior::members`]); refused by the default.
    fn member(&self, i: usize) -> Result<ParamSample> {
        candle_core::bail!("posterior `{}` has no members (asked for member {i})", self.kind())
    }

    /// Whether batch-norm running statistics must be recomputed on training data after loading
    /// a sample (or the mean) before predicting. Default `false`.
    fn needs_batch_norm_refresh(&self) -> bool {
        false
    }

    /// The tensors that rebuild it, to be saved as safetensors (each family documents its
    /// names and reads them back with its own `from_tensors`).
    fn tensors(&self) -> Result<BTreeMap<String, Tensor>>;
}

/// Writes `sample` into `store`: each tensor into the parameter or buffer of the same name,
/// in place. Refuses (naming it) a name the store lacks or a shape it does not have; nothing
/// is written unless every entry matches.
pub fn apply_sample(store: &ParamStore, sample: &ParamSample) -> Result<()> {
    let mut vars = Vec::with_capacity(sample.len());
    for (name, t) in sample {
        let v = store
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("posterior sample: the model has no parameter `{name}`")))?;
        if v.dims() != t.dims() {
            candle_core::bail!(
                "posterior sample: `{name}` has shape {:?}, the model expects {:?}",
                t.dims(),
                v.dims()
            );
        }
        vars.push((v, t));
    }
    for (v, t) in vars {
        v.set(&t.to_dtype(v.dtype())?.to_device(v.device())?)?;
    }
    Ok(())
}

/// A deep copy of every parameter and buffer of `store` (`Var::set` writes in place, so a
/// plain clone of the tensors would change with the store).
pub fn snapshot(store: &ParamStore) -> Result<ParamSample> {
    store.tensors().into_iter().map(|(k, t)| Ok((k, t.copy()?))).collect()
}

/// Whether `name` is a batch-norm running statistic (`running_mean`, `running_var`).
fn is_bn_statistic(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

/// Recomputes the batch-norm running statistics of `model` from one pass over `data` with the
/// current weights (SWA's `bn_update`, Izmailov et al. 2018): every `running_mean` is reset to 0
/// and every `running_var` to 1, then each batch is passed forward in training mode with
/// momentum `m = b / (n + b)` (`b` the batch's size, `n` the examples seen before), so that the
/// statistics end as the example-weighted average of the batch statistics. Stochastic layers
/// use their posterior means. No weight changes. Returns the number of batches passed (0, and
/// no pass, when the model has no batch norm).
pub fn refresh_batch_norm(
    model: &dyn Module,
    store: &ParamStore,
    data: &mut dyn Batches,
    rng: &mut SeededRng,
) -> Result<usize> {
    let stats: Vec<(String, candle_core::Var)> = store
        .buffers()
        .into_iter()
        .filter(|(k, _)| is_bn_statistic(k))
        .collect();
    if stats.is_empty() {
        return Ok(0);
    }
    for (name, v) in &stats {
        let fill = if name.ends_with("running_var") { 1.0 } else { 0.0 };
        v.set(&v.as_tensor().ones_like()?.affine(fill, 0.0)?)?;
    }
    data.start_epoch(0, rng);
    let mut seen = 0usize;
    for i in 0..data.num_batches() {
        let (x, _) = data.batch(i, rng)?;
        let b = x.dim(0)?;
        let m = b as f64 / (seen + b) as f64;
        let mut ctx = Ctx::train(rng, Sampling::Mean).with_bn_momentum(m);
        drop(model.forward(&x, &mut ctx)?);
        seen += b;
    }
    Ok(data.num_batches())
}

/// How [`predict_bma`] averages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BmaSettings {
    /// Draws S from a continuous posterior (ignored by finite mixtures, whose every member is
    /// used once). Maddox et al. (2019) average 30.
    pub samples: usize,
    /// Recompute batch-norm statistics for every draw when the posterior asks for it
    /// ([`Posterior::needs_batch_norm_refresh`]) and training data is given.
    pub refresh_batch_norm: bool,
}

impl Default for BmaSettings {
    /// 30 samples, batch-norm statistics recomputed where the family asks for it.
    fn default() -> Self {
        Self {
            samples: 30,
            refresh_batch_norm: true,
        }
    }
}

/// The Bayesian model average of `posterior` on `data`: for each of S draws `θₛ` (or each
/// member of a finite mixture), write `θₛ` into `store`, recompute the batch-norm statistics on
/// `train` when the family asks for it, and predict with [`predict`] (evaluation mode,
/// stochastic layers at their means); then average the probabilities and decompose the
/// predictive entropy ([`McPredictions::from_draws`]). The store is restored afterwards, also
/// on error. Draw `s` comes from `rng` before the pass of sample `s`.
pub fn predict_bma(
    model: &dyn Module,
    store: &ParamStore,
    posterior: &dyn Posterior,
    data: &mut dyn Batches,
    train: Option<&mut dyn Batches>,
    settings: BmaSettings,
    rng: &mut SeededRng,
) -> Result<McPredictions> {
    let draws = for_each_draw(model, store, posterior, train, settings, rng, "predict_bma", |rng| {
        predict(model, data, Sampling::Mean, rng)
    })?;
    let (labels, classes) = (draws[0].labels.clone(), draws[0].classes);
    let probs: Vec<Vec<f32>> = draws.into_iter().map(|p| p.probs).collect();
    McPredictions::from_draws(&probs, labels, classes)
}

/// The draws of a model average: for each of S draws `θₛ` of `posterior` (or each member of a
/// finite mixture), `θₛ` written into `store`, batch-norm statistics recomputed on `train` when
/// the family asks for it and `settings` allow, then `pass` run; the store is restored
/// afterwards, also on error. `what` names the caller in errors.
#[allow(clippy::too_many_arguments)]
fn for_each_draw<T>(
    model: &dyn Module,
    store: &ParamStore,
    posterior: &dyn Posterior,
    mut train: Option<&mut dyn Batches>,
    settings: BmaSettings,
    rng: &mut SeededRng,
    what: &str,
    mut pass: impl FnMut(&mut SeededRng) -> Result<T>,
) -> Result<Vec<T>> {
    let count = posterior.members().unwrap_or(settings.samples);
    if count == 0 {
        candle_core::bail!("{what}: field `samples` must be at least 1, got 0");
    }
    let refresh = settings.refresh_batch_norm && posterior.needs_batch_norm_refresh();
    let saved = snapshot(store)?;
    let result = (|| {
        let mut out = Vec::with_capacity(count);
        for s in 0..count {
            let theta = match posterior.members() {
                Some(_) => posterior.member(s)?,
                None => posterior.sample(rng)?,
            };
            apply_sample(store, &theta)?;
            if refresh {
                if let Some(t) = train.as_deref_mut() {
                    refresh_batch_norm(model, store, t, rng)?;
                }
            }
            out.push(pass(rng)?);
        }
        Ok(out)
    })();
    apply_sample(store, &saved)?;
    result
}

/// [`predict_bma`] for a Gaussian likelihood: each of the S draws (or members) predicts
/// `N(μₛ(x), σₛ(x)²)` with [`predict_regression`] (one pass, stochastic layers at their means),
/// and the draws are interleaved into one [`RegressionPredictions`] of `S` samples, the equally
/// weighted Gaussian mixture of the model average. The store is restored afterwards.
#[allow(clippy::too_many_arguments)]
pub fn predict_bma_regression(
    model: &dyn Module,
    store: &ParamStore,
    likelihood: &Gaussian,
    posterior: &dyn Posterior,
    data: &mut dyn Batches,
    train: Option<&mut dyn Batches>,
    settings: BmaSettings,
    rng: &mut SeededRng,
) -> Result<RegressionPredictions> {
    let draws = for_each_draw(
        model,
        store,
        posterior,
        train,
        settings,
        rng,
        "predict_bma_regression",
        |rng| predict_regression(model, likelihood, data, Sampling::Mean, 1, rng),
    )?;
    let count = draws.len();
    let (dim, targets) = (draws[0].dim, draws[0].targets.clone());
    let n = targets.len() / dim.max(1);
    let (mut sample_mean, mut sample_std) = (Vec::with_capacity(n * count * dim), Vec::with_capacity(n * count * dim));
    for i in 0..n {
        for d in &draws {
            sample_mean.extend_from_slice(&d.sample_mean[i * dim..(i + 1) * dim]);
            sample_std.extend_from_slice(&d.sample_std[i * dim..(i + 1) * dim]);
        }
    }
    Ok(RegressionPredictions {
        sample_mean,
        sample_std,
        targets,
        samples: count,
        dim,
    })
}

/// Predictions of the posterior-mean network (SWA's prediction, the MAP of a Laplace
/// approximation): `θ̄` written into `store`, batch-norm statistics recomputed on `train` when
/// the family asks for it and data is given, one pass of [`predict`]. The store is restored
/// afterwards.
pub fn predict_at_mean(
    model: &dyn Module,
    store: &ParamStore,
    posterior: &dyn Posterior,
    data: &mut dyn Batches,
    train: Option<&mut dyn Batches>,
    rng: &mut SeededRng,
) -> Result<crate::predict::Predictions> {
    let saved = snapshot(store)?;
    let result = (|| {
        apply_sample(store, &posterior.mean()?)?;
        if posterior.needs_batch_norm_refresh() {
            if let Some(t) = train {
                refresh_batch_norm(model, store, t, rng)?;
            }
        }
        predict(model, data, Sampling::Mean, rng)
    })();
    apply_sample(store, &saved)?;
    result
}

/// A deep ensemble (Lakshminarayanan, Pritzel & Blundell 2017): M independently trained
/// networks, an equally weighted mixture of point masses. Each member holds every parameter
/// and buffer (its own batch-norm statistics). The mean and the statistics are the
/// across-member mean and (population) standard deviation of each weight; a sample is a member
/// drawn uniformly; a model average enumerates the members.
#[derive(Debug, Clone)]
pub struct Ensemble {
    members: Vec<ParamSample>,
    kind: String,
}

impl Ensemble {
    /// An ensemble of `members` (at least one; all with the same names and shapes).
    pub fn new(members: Vec<ParamSample>) -> Result<Self> {
        Self::named("ensemble", members)
    }

    /// [`Ensemble::new`] under another family name ([`Posterior::kind`]), for other finite,
    /// equally weighted mixtures: the particles of SVGD (`svgd`).
    pub fn named(kind: &str, members: Vec<ParamSample>) -> Result<Self> {
        let Some(first) = members.first() else {
            candle_core::bail!("an ensemble needs at least one member");
        };
        for (i, m) in members.iter().enumerate().skip(1) {
            if m.len() != first.len() {
                candle_core::bail!(
                    "ensemble member {i} has {} tensors, member 0 has {}",
                    m.len(),
                    first.len()
                );
            }
            for (k, t) in first {
                match m.get(k) {
                    Some(u) if u.dims() == t.dims() => {}
                    Some(u) => candle_core::bail!(
                        "ensemble member {i}: `{k}` has shape {:?}, member 0 has {:?}",
                        u.dims(),
                        t.dims()
                    ),
                    None => candle_core::bail!("ensemble member {i} lacks `{k}`"),
                }
            }
        }
        Ok(Self {
            members,
            kind: kind.to_string(),
        })
    }

    /// Rebuilds an ensemble from [`Posterior::tensors`] (names `member{i}/{name}`).
    pub fn from_tensors(tensors: &BTreeMap<String, Tensor>) -> Result<Self> {
        let mut members: BTreeMap<usize, ParamSample> = BTreeMap::new();
        for (k, t) in tensors {
            let parsed = k
                .strip_prefix("member")
                .and_then(|r| r.split_once('/'))
                .and_then(|(i, n)| i.parse::<usize>().ok().map(|i| (i, n)));
            let Some((i, name)) = parsed else {
                candle_core::bail!("ensemble file: tensor `{k}` is not named `member<i>/<name>`");
            };
            members.entry(i).or_default().insert(name.to_string(), t.clone());
        }
        if members.keys().enumerate().any(|(j, &i)| i != j) {
            candle_core::bail!("ensemble file: members are not numbered 0, 1, …");
        }
        Self::new(members.into_values().collect())
    }

    /// The same members under the family name `kind` (e.g. a saved SVGD posterior read back
    /// by [`Ensemble::from_tensors`]).
    pub fn into_named(mut self, kind: &str) -> Self {
        self.kind = kind.to_string();
        self
    }

    /// The number of members M.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false (an ensemble has at least one member).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The across-member mean and population standard deviation of tensor `name`.
    fn moments(&self, name: &str) -> Result<(Tensor, Tensor)> {
        let m = self.members.len() as f64;
        let mut sum = self.members[0][name].to_dtype(candle_core::DType::F64)?;
        let mut sq = sum.sqr()?;
        for mem in &self.members[1..] {
            let t = mem[name].to_dtype(candle_core::DType::F64)?;
            sum = (sum + &t)?;
            sq = (sq + t.sqr()?)?;
        }
        let mean = (sum / m)?;
        let var = ((sq / m)? - mean.sqr()?)?.relu()?;
        let dt = self.members[0][name].dtype();
        Ok((mean.to_dtype(dt)?, var.sqrt()?.to_dtype(dt)?))
    }
}

impl Posterior for Ensemble {
    fn kind(&self) -> &str {
        &self.kind
    }

    fn mean(&self) -> Result<ParamSample> {
        self.members[0]
            .keys()
            .map(|k| Ok((k.clone(), self.moments(k)?.0)))
            .collect()
    }

    fn sample(&self, rng: &mut SeededRng) -> Result<ParamSample> {
        let i = rng.index(self.members.len());
        Ok(self.members[i].clone())
    }

    fn stats(&self) -> Result<Vec<PosteriorStats>> {
        self.members[0]
            .keys()
            .filter(|k| !is_bn_statistic(k) && !k.ends_with("num_batches_tracked"))
            .map(|k| {
                let (mean, std) = self.moments(k)?;
                Ok(PosteriorStats {
                    name: k.clone(),
                    mean,
                    std: Some(std),
                    log_alpha: None,
                    inclusion: None,
                })
            })
            .collect()
    }

    fn members(&self) -> Option<usize> {
        Some(self.members.len())
    }

    fn member(&self, i: usize) -> Result<ParamSample> {
        self.members.get(i).cloned().ok_or_else(|| {
            candle_core::Error::Msg(format!("the ensemble has {} members, asked for member {i}", self.len()))
        })
    }

    fn tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (i, m) in self.members.iter().enumerate() {
            for (k, t) in m {
                out.insert(format!("member{i}/{k}"), t.clone());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batches::TensorBatches;
    use candle_core::{DType, Device};
    use secateur_bayes::nn::{BatchNorm, Linear, LinearCfg};
    use secateur_bayes::ParamBuilder;

    /// `bn(linear(x))`: a linear layer followed by batch norm over its 3 outputs.
    struct LinBn {
        lin: Linear,
        bn: BatchNorm,
    }

    impl Module for LinBn {
        fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
            self.bn.forward(&self.lin.forward(x, ctx)?, ctx)
        }
    }

    fn lin_bn(seed: u64) -> Result<(LinBn, ParamStore)> {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(seed), DType::F32, Device::Cpu);
        let lin = Linear::new(&pb.pp("lin"), LinearCfg::new(2, 3))?;
        let bn = BatchNorm::new(&pb.pp("bn"), 3)?;
        Ok((LinBn { lin, bn }, store))
    }

    fn data(n: usize, batch: usize) -> Result<TensorBatches> {
        let mut rng = SeededRng::new(9);
        let x: Vec<f32> = rng.normal_vec(2 * n).into_iter().map(|z| z * 2.0 + 1.0).collect();
        let x = Tensor::from_vec(x, (n, 2), &Device::Cpu)?;
        let y = Tensor::zeros(n, DType::U32, &Device::Cpu)?;
        TensorBatches::new(x, y, batch)
    }

    #[test]
    fn batch_norm_refresh_gives_the_exact_average_and_changes_no_weight() -> Result<()> {
        let (net, store) = lin_bn(0)?;
        let before = snapshot(&store)?;
        // 10 examples in batches of 4, 4, 2: the refreshed statistics are the example-weighted
        // averages of the batch means and of the unbiased batch variances.
        let mut d = data(10, 4)?;
        let n = refresh_batch_norm(&net, &store, &mut d, &mut SeededRng::new(1))?;
        assert_eq!(n, 3);
        let mut ctx_rng = SeededRng::new(0);
        let mut ctx = Ctx::eval(&mut ctx_rng, Sampling::Mean);
        let (x, _) = {
            let mut all = data(10, 10)?;
            all.start_epoch(0, &mut SeededRng::new(0));
            all.batch(0, &mut SeededRng::new(0))?
        };
        let h = net.lin.forward(&x, &mut ctx)?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let (mut want_m, mut want_v) = (vec![0f64; 3], vec![0f64; 3]);
        for (lo, b) in [(0usize, 4usize), (4, 4), (8, 2)] {
            for c in 0..3 {
                let col: Vec<f64> = (lo..lo + b).map(|i| h[i][c]).collect();
                let m = col.iter().sum::<f64>() / b as f64;
                let v = col.iter().map(|z| (z - m).powi(2)).sum::<f64>() / (b - 1) as f64;
                want_m[c] += m * b as f64 / 10.0;
                want_v[c] += v * b as f64 / 10.0;
            }
        }
        let got_m: Vec<f32> = store.get("bn.running_mean").unwrap().as_tensor().to_vec1()?;
        let got_v: Vec<f32> = store.get("bn.running_var").unwrap().as_tensor().to_vec1()?;
        for c in 0..3 {
            assert!((got_m[c] as f64 - want_m[c]).abs() < 1e-5, "{got_m:?} {want_m:?}");
            assert!((got_v[c] as f64 - want_v[c]).abs() < 1e-4, "{got_v:?} {want_v:?}");
        }
        // the statistics changed, the weights did not
        let after = store.tensors();
        for (k, t) in &before {
            let same = (t - &after[k])?.abs()?.sum_all()?.to_scalar::<f32>()? == 0.0;
            assert_eq!(same, !is_bn_statistic(k), "{k}");
        }
        Ok(())
    }

    #[test]
    fn apply_sample_refuses_unknown_names_and_shapes_and_writes_nothing() -> Result<()> {
        let (_, store) = lin_bn(0)?;
        let before = snapshot(&store)?;
        let mut s = ParamSample::new();
        s.insert("lin.weight".into(), Tensor::zeros((3, 2), DType::F32, &Device::Cpu)?);
        s.insert("nope".into(), Tensor::zeros(3, DType::F32, &Device::Cpu)?);
        let e = apply_sample(&store, &s).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        s.remove("nope");
        s.insert("lin.bias".into(), Tensor::zeros(4, DType::F32, &Device::Cpu)?);
        let e = apply_sample(&store, &s).unwrap_err().to_string();
        assert!(e.contains("lin.bias") && e.contains("[4]"), "{e}");
        let w = store.get("lin.weight").unwrap().as_tensor().to_vec2::<f32>()?;
        assert_eq!(w, before["lin.weight"].to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn ensemble_average_is_the_mean_of_member_predictions() -> Result<()> {
        let (net, store) = lin_bn(0)?;
        let mut members = Vec::new();
        for seed in 0..3 {
            let (_, s) = lin_bn(seed + 10)?;
            members.push(snapshot(&s)?);
        }
        let ens = Ensemble::new(members.clone())?;
        let mut d = data(6, 4)?;
        let settings = BmaSettings::default();
        let bma = predict_bma(&net, &store, &ens, &mut d, None, settings, &mut SeededRng::new(0))?;
        assert_eq!(bma.samples, 3);
        // independent computation: each member's predictions, averaged by hand
        let mut want = vec![0f64; 6 * 3];
        for m in &members {
            apply_sample(&store, m)?;
            let p = predict(&net, &mut d, Sampling::Mean, &mut SeededRng::new(0))?;
            for (w, q) in want.iter_mut().zip(&p.probs) {
                *w += *q as f64 / 3.0;
            }
        }
        for (a, b) in bma.predictions.probs.iter().zip(&want) {
            assert!((*a as f64 - b).abs() < 1e-6);
        }
        // mean and standard deviation by hand for one entry
        let w: Vec<f32> = members
            .iter()
            .map(|m| m["lin.weight"].to_vec2::<f32>().unwrap()[1][0])
            .collect();
        let mu = w.iter().map(|&v| v as f64).sum::<f64>() / 3.0;
        let sd = (w.iter().map(|&v| (v as f64 - mu).powi(2)).sum::<f64>() / 3.0).sqrt();
        let st = ens.stats()?.into_iter().find(|s| s.name == "lin.weight").unwrap();
        assert!((st.mean.to_vec2::<f32>()?[1][0] as f64 - mu).abs() < 1e-6);
        assert!((st.std.unwrap().to_vec2::<f32>()?[1][0] as f64 - sd).abs() < 1e-6);
        assert!(ens.stats()?.iter().all(|s| !is_bn_statistic(&s.name)));
        // the round trip through tensors() rebuilds the same members
        let back = Ensemble::from_tensors(&ens.tensors()?)?;
        assert_eq!(back.len(), 3);
        assert_eq!(
            back.member(2)?["lin.bias"].to_vec1::<f32>()?,
            members[2]["lin.bias"].to_vec1::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn regression_average_interleaves_the_members_gaussians() -> Result<()> {
        use crate::likelihood::Noise;
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
        let lin = Linear::new(&pb.pp("lin"), LinearCfg::new(2, 1))?;
        let lik = Gaussian::new(Noise::Fixed { std: 0.5 }, 1, &pb)?;
        let members: Vec<ParamSample> = (0..2)
            .map(|i| {
                let mut m = ParamSample::new();
                let w = Tensor::new(&[[1.0f32 + i as f32, -2.0]], &Device::Cpu)?;
                m.insert("lin.weight".into(), w);
                m.insert("lin.bias".into(), Tensor::new(&[0.5f32 * i as f32], &Device::Cpu)?);
                Ok(m)
            })
            .collect::<Result<_>>()?;
        let ens = Ensemble::new(members)?;
        let x = Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0], [2.0, 1.0]], &Device::Cpu)?;
        let y = Tensor::new(&[[0.0f32], [1.0], [2.0]], &Device::Cpu)?;
        let mut d = TensorBatches::new(x, y, 2)?;
        let p = predict_bma_regression(
            &lin,
            &store,
            &lik,
            &ens,
            &mut d,
            None,
            BmaSettings::default(),
            &mut SeededRng::new(0),
        )?;
        // by hand: member 0 predicts x₁ − 2x₂, member 1 predicts 2x₁ − 2x₂ + 0.5
        assert_eq!((p.samples, p.dim), (2, 1));
        assert_eq!(p.sample_mean, vec![1.0, 2.5, -2.0, -1.5, 0.0, 2.5]);
        assert_eq!(p.sample_std, vec![0.5; 6]);
        assert_eq!(p.targets, vec![0.0, 1.0, 2.0]);
        Ok(())
    }
}
