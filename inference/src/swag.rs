//! Stochastic weight averaging (SWA; Izmailov, Podoprikhin, Garipov, Vetrov & Wilson 2018) and
//! its Gaussian (SWAG; Maddox, Garipov, Izmailov, Vetrov & Wilson 2019).
//!
//! A [`SwagCollector`] watches a training run ([`Observer`]) and, on the schedule of
//! [`SwagConfig`], takes snapshots `θ₁, θ₂, …` of every trainable parameter of the store (not the
//! buffers: batch-norm statistics are recomputed for every sample instead, see
//! [`crate::posterior::refresh_batch_norm`]). After the `n`-th snapshot it holds
//!
//! ```text
//! θ̄ₙ  = θ̄ₙ₋₁  + (θₙ  − θ̄ₙ₋₁)  / n          running first moment (the SWA solution)
//! θ²̄ₙ = θ²̄ₙ₋₁ + (θₙ² − θ²̄ₙ₋₁) / n          running second moment (element-wise)
//! dₙ  = θₙ − θ̄ₙ                             deviation from the mean *including* θₙ
//! D̂   = [d_{n−K̂+1}, …, dₙ]                  the last K̂ = min(n, K) deviations, oldest first
//! ```
//!
//! (moments kept in f64; the deviations in f32, or f64 for f64 parameters). [`SwagCollector::posterior`]
//! turns them into a [`Swag`] posterior of one of three [`SwagKind`]s:
//!
//! ```text
//! Σ_diag = max(θ²̄ − θ̄², 1e-30)                                    element-wise
//! swag      θ̃ = θ̄ + √s · (Σ_diag^{½} ⊙ z₁ + D̂ z₂ / √(K̂ − 1))      z₁ ~ N(0, I_d), z₂ ~ N(0, I_K̂)
//!           Cov = s · (diag(Σ_diag) + D̂ D̂ᵀ / (K̂ − 1))
//! swag-diag θ̃ = θ̄ + Σ_diag^{½} ⊙ z₁                                  (s = 1, no low-rank part)
//! swa       θ̃ = θ̄                                                   (a point mass)
//! ```
//!
//! with `s` = [`SwagConfig::scale`] (default ½). Draws take, from the caller's [`SeededRng`],
//! `z₁` for every parameter in sorted name order (one `normal_vec` per parameter), then `z₂`
//! (`K̂` numbers; swag only). The marginal standard deviation reported by
//! [`Posterior::stats`] is `√(s · (Σ_diag + rowsum(D̂²)/(K̂ − 1)))` for swag and `√Σ_diag` for
//! swag-diag; swa has none. All three ask for batch-norm statistics to be recomputed after
//! loading a sample or the mean ([`Posterior::needs_batch_norm_refresh`]), as the reference
//! code's `bn_update` does for SWA and SWAG alike.
//!
//! # Choices, and where the paper and the reference code (wjmaddox/swa_gaussian) differ
//!
//! - **Scale.** The paper (Maddox et al. 2019, Sec. 4 and Alg. 1) samples from
//!   `N(θ̄, ½(Σ_diag + D̂D̂ᵀ/(K − 1)))`, i.e. `s = ½` fixed. The reference code's
//!   `SWAG.sample(scale, cov)` makes `s` a parameter (`sample = mean + √scale · (…)` in
//!   `sample_fullrank`); its experiments use `scale = 0.5` for SWAG and `scale = 1` for
//!   SWAG-diagonal (`experiments/uncertainty/README.md`), which is what `shared/REFERENCES.md`
//!   records. We follow that: swag uses [`SwagConfig::scale`], swag-diag always `s = 1`.
//! - **Rank divisor.** The reference divides `D̂ z₂` by `√(K − 1)` with `K` the *maximum*
//!   rank (`max_num_models`) even while fewer than `K` columns are held; we divide by
//!   `√(K̂ − 1)`, `K̂` the columns actually held, so that `D̂D̂ᵀ/(K̂ − 1)` is the sample
//!   covariance of the deviations at any time. The two agree once `K` snapshots have been taken
//!   (the usual case: the paper collects for many more epochs than `K = 20`). swag therefore
//!   needs `K̂ ≥ 2`.
//! - **Deviations.** As in the reference's `collect_model` (and the paper's `Dᵢ = θᵢ − θ̄ᵢ`),
//!   the deviation is taken from the running mean *after* including `θᵢ`; so the first column
//!   is zero until the ring of `K` columns has turned over once.
//! - **Precision.** The reference keeps the moments in the parameters' dtype; we keep them in
//!   f64 (the second moment minus the squared mean cancels badly in f32).
//! - **Schedule.** Collection follows `experiments/train/run_swag.py`: after epoch `E` (from 1)
//!   when `E > start_epoch` and `(E − start_epoch) mod c = 0`. The per-step mode (collect after
//!   global step `g` from 1 when `E > start_epoch` and `g mod c = 0`) is not in the reference; it
//!   serves short runs and the per-step cycles of Izmailov et al. (2018), whose cyclical
//!   schedule is [`crate::schedule::Schedule::SwaCyclic`] (and the reference's per-epoch one
//!   [`crate::schedule::Schedule::Swa`]).
//! - The reference's block-wise sampler (`sample_blockwise`, per-parameter blocks) is not
//!   implemented.
//!
//! # Saving
//!
//! [`SwagCollector::state`] holds everything needed to continue collecting after a resumed run
//! (save it with the trainer's checkpoint of the same epoch); [`Posterior::tensors`] of a
//! [`Swag`] rebuilds it through [`Swag::from_tensors`]. Names: `mean/{param}` and
//! `sq_mean/{param}` (f64, the parameter's shape), `dev/{param}` (`[K̂, numel]`, oldest column
//! first; only when `K̂ > 0`, and for a [`Swag`] only of kind swag), the scalar `n` (snapshots
//! taken); a [`Swag`] adds `kind` (0 swa, 1 swag-diag, 2 swag), `scale` and `dtype/{param}`, a
//! one-element zero tensor in the parameter's dtype (the dtype of the mean and of samples).

use crate::posterior::{ParamSample, Posterior};
use crate::train::{Checkpoint, EpochRecord, Observer, StepInfo};
use candle_core::{bail, DType, Device, Result, Tensor, Var};
use secateur_bayes::{ParamStore, PosteriorStats, SeededRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// The floor of the diagonal variance `Σ_diag` (the reference code's `var_clamp`).
pub const VAR_CLAMP: f64 = 1e-30;

/// The unit of [`SwagConfig::collect_every`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectEvery {
    /// Collect at the end of every `c`-th epoch after `start_epoch` (Maddox et al. 2019).
    #[default]
    Epochs,
    /// Collect after every `c`-th optimiser step, counted over the whole run.
    Steps,
}

/// When and how much to collect.
///
/// ```
/// use secateur_inference::swag::{CollectEvery, SwagConfig};
/// let c: SwagConfig = serde_json::from_str(r#"{"start_epoch": 160, "every": "epochs"}"#).unwrap();
/// assert_eq!((c.start_epoch, c.collect_every, c.max_rank, c.scale), (160, 1, 20, 0.5));
/// assert!(c.collects_after_epoch(161) && !c.collects_after_epoch(160));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwagConfig {
    /// Collection starts after this many epochs (the reference's `swa_start`; the paper collects
    /// from 75 % of a budget on, e.g. 160 of 300 epochs after a pre-training phase). The default
    /// 0 collects from the first epoch, which averages in the poor early weights: set it.
    pub start_epoch: usize,
    /// Collect every `c ≥ 1` epochs or steps ([`SwagConfig::every`]). Default 1.
    pub collect_every: usize,
    /// The unit of `collect_every`. Default [`CollectEvery::Epochs`].
    pub every: CollectEvery,
    /// `K`, the most deviation columns kept (the last `K`). 0 keeps none (swa and swag-diag
    /// only); otherwise at least 2. Default 20 (Maddox et al. 2019).
    pub max_rank: usize,
    /// `s`, the scale of swag's covariance, finite and `≥ 0`. Default ½ (the paper's, and the
    /// reference experiments'); swag-diag always uses 1.
    pub scale: f64,
}

impl Default for SwagConfig {
    fn default() -> Self {
        Self {
            start_epoch: 0,
            collect_every: 1,
            every: CollectEvery::Epochs,
            max_rank: 20,
            scale: 0.5,
        }
    }
}

impl SwagConfig {
    /// Checks every field; the error names the offending one.
    pub fn validate(&self) -> Result<()> {
        if self.collect_every == 0 {
            bail!("posterior.collect_every must be at least 1");
        }
        if self.max_rank == 1 {
            bail!("posterior.max_rank must be 0 (no low-rank part: swa and swag-diag only) or at least 2, got 1");
        }
        if !(self.scale.is_finite() && self.scale >= 0.0) {
            bail!("posterior.scale must be finite and non-negative, got {}", self.scale);
        }
        Ok(())
    }

    /// Whether the [`CollectEvery::Epochs`] rule collects at the end of epoch `epoch` (from 1):
    /// `epoch > start_epoch` and `(epoch − start_epoch) mod collect_every = 0`. Always false in
    /// the per-step mode.
    pub fn collects_after_epoch(&self, epoch: usize) -> bool {
        self.every == CollectEvery::Epochs
            && epoch > self.start_epoch
            && (epoch - self.start_epoch).is_multiple_of(self.collect_every.max(1))
    }

    /// Whether the [`CollectEvery::Steps`] rule collects after step `step` (from 1) of epoch
    /// `epoch` (from 1) of `steps` steps: `epoch > start_epoch` and `g mod collect_every = 0`
    /// for the global step `g = (epoch − 1) · steps + step`. Always false in the per-epoch mode.
    pub fn collects_after_step(&self, epoch: usize, step: usize, steps: usize) -> bool {
        let g = epoch.saturating_sub(1).saturating_mul(steps).saturating_add(step);
        self.every == CollectEvery::Steps && epoch > self.start_epoch && g.is_multiple_of(self.collect_every.max(1))
    }
}

/// Which posterior to build from the collected moments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwagKind {
    /// The SWA mean `θ̄` as a point mass (Izmailov et al. 2018).
    Swa,
    /// `N(θ̄, diag(Σ_diag))` (SWAG-diagonal, Maddox et al. 2019).
    Diag,
    /// `N(θ̄, s · (diag(Σ_diag) + D̂D̂ᵀ/(K̂ − 1)))` (SWAG, Maddox et al. 2019).
    Full,
}

impl SwagKind {
    /// `swa`, `swag-diag` or `swag`: the [`Posterior::kind`] of the posterior.
    pub fn name(&self) -> &'static str {
        match self {
            SwagKind::Swa => "swa",
            SwagKind::Diag => "swag-diag",
            SwagKind::Full => "swag",
        }
    }

    /// Reads [`SwagKind::name`] (also `swag_diag`).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "swa" => Ok(SwagKind::Swa),
            "swag-diag" | "swag_diag" => Ok(SwagKind::Diag),
            "swag" => Ok(SwagKind::Full),
            other => bail!("unknown SWAG posterior `{other}`: expected `swa`, `swag-diag` or `swag`"),
        }
    }

    fn code(self) -> u32 {
        match self {
            SwagKind::Swa => 0,
            SwagKind::Diag => 1,
            SwagKind::Full => 2,
        }
    }

    fn from_code(c: usize) -> Option<Self> {
        [SwagKind::Swa, SwagKind::Diag, SwagKind::Full].get(c).copied()
    }
}

/// The dtype deviation columns are kept in: f64 for f64 parameters, f32 otherwise.
fn dev_dtype(param: DType) -> DType {
    if param == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// The one value of a one-element tensor, as f64.
fn scalar_of(t: &Tensor, key: &str, what: &str) -> Result<f64> {
    if t.elem_count() != 1 {
        bail!("{what}: `{key}` must hold one number, got shape {:?}", t.dims());
    }
    let v = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    v.first()
        .copied()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: empty scalar")))
}

/// A one-element tensor holding a non-negative integer.
fn count_of(tensors: &BTreeMap<String, Tensor>, key: &str, what: &str) -> Result<usize> {
    let t = tensors
        .get(key)
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: missing the scalar `{key}`")))?;
    let v = scalar_of(t, key, what)?;
    if !(v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < 1e15) {
        bail!("{what}: `{key}` must be a non-negative integer, got {v}");
    }
    Ok(v as usize)
}

/// The per-parameter tensors of a state or posterior file, grouped by parameter name.
#[derive(Default)]
struct Entries {
    mean: Option<Tensor>,
    sq_mean: Option<Tensor>,
    dev: Option<Tensor>,
    dtype: Option<Tensor>,
}

/// Groups `mean/`, `sq_mean/`, `dev/` (and, where `with_dtype`, `dtype/`) tensors by parameter;
/// any other name not in `scalars` is refused.
fn group(
    tensors: &BTreeMap<String, Tensor>,
    scalars: &[&str],
    with_dtype: bool,
    what: &str,
) -> Result<BTreeMap<String, Entries>> {
    let mut out: BTreeMap<String, Entries> = BTreeMap::new();
    for (k, t) in tensors {
        if scalars.contains(&k.as_str()) {
            continue;
        }
        let Some((prefix, name)) = k.split_once('/') else {
            bail!("{what}: unexpected tensor `{k}`");
        };
        let e = out.entry(name.to_string()).or_default();
        let slot = match prefix {
            "mean" => &mut e.mean,
            "sq_mean" => &mut e.sq_mean,
            "dev" => &mut e.dev,
            "dtype" if with_dtype => &mut e.dtype,
            _ => bail!("{what}: unexpected tensor `{k}`"),
        };
        *slot = Some(t.clone());
    }
    Ok(out)
}

/// Checks one parameter's moments (shape `shape`) and deviation matrix (`[K̂, numel]`, the same
/// `K̂` for every parameter, recorded in `columns`), and returns them on `device` in f64 (the
/// moments) and `dev_dt` (the deviations).
fn checked_block(
    name: &str,
    e: &Entries,
    shape: &[usize],
    device: &Device,
    dev_dt: Option<DType>,
    columns: &mut Option<usize>,
    what: &str,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let moment = |t: &Option<Tensor>, key: &str| -> Result<Tensor> {
        let t = t
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg(format!("{what}: missing `{key}/{name}`")))?;
        if t.dims() != shape {
            bail!(
                "{what}: `{key}/{name}` has shape {:?}, the parameter has {:?}",
                t.dims(),
                shape
            );
        }
        t.to_dtype(DType::F64)?.to_device(device)
    };
    let mean = moment(&e.mean, "mean")?;
    let sq_mean = moment(&e.sq_mean, "sq_mean")?;
    let numel: usize = shape.iter().product();
    let dev = match (&e.dev, dev_dt) {
        (None, _) => None,
        (Some(_), None) => bail!("{what}: unexpected tensor `dev/{name}`"),
        (Some(d), Some(dt)) => {
            let k = match d.dims() {
                [k, m] if *m == numel => *k,
                dims => bail!("{what}: `dev/{name}` has shape {dims:?}, expected [columns, {numel}]"),
            };
            match columns {
                Some(c) if *c != k => {
                    bail!("{what}: `dev/{name}` has {k} columns, other parameters have {c}")
                }
                _ => *columns = Some(k),
            }
            Some(d.to_dtype(dt)?.to_device(device)?)
        }
    };
    Ok((mean, sq_mean, dev))
}

/// Collects SWA / SWAG moments of every trainable parameter of a store during training (see the
/// [module docs](self)). Attach it to [`crate::train::Trainer::fit`] as an [`Observer`], or call
/// [`SwagCollector::collect`] directly.
pub struct SwagCollector {
    cfg: SwagConfig,
    /// The trainable parameters, by name in sorted order.
    vars: Vec<(String, Var)>,
    /// Snapshots taken.
    n: usize,
    /// Running means θ̄ (f64), one per parameter.
    mean: Vec<Tensor>,
    /// Running means of θ² (f64), one per parameter.
    sq_mean: Vec<Tensor>,
    /// The last ≤ K deviation columns, oldest first; each one flat tensor per parameter.
    dev: VecDeque<Vec<Tensor>>,
}

impl SwagCollector {
    /// A collector over every trainable parameter of `store` (`store.params()`; buffers are not
    /// covered), with nothing collected. Refuses an invalid `cfg` and a store without
    /// parameters.
    pub fn new(store: &ParamStore, cfg: SwagConfig) -> Result<Self> {
        cfg.validate()?;
        let vars: Vec<(String, Var)> = store.params().into_iter().collect();
        if vars.is_empty() {
            bail!("SWAG: the model has no trainable parameters");
        }
        let mut mean = Vec::with_capacity(vars.len());
        for (_, v) in &vars {
            mean.push(Tensor::zeros(v.dims(), DType::F64, v.device())?);
        }
        Ok(Self {
            cfg,
            vars,
            n: 0,
            sq_mean: mean.clone(),
            mean,
            dev: VecDeque::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SwagConfig {
        &self.cfg
    }

    /// Takes one snapshot of the current weights: updates both running moments and pushes the
    /// deviation `θₙ − θ̄ₙ` into the ring of the last `K` columns (the oldest leaves when full).
    pub fn collect(&mut self) -> Result<()> {
        let inv = 1.0 / (self.n + 1) as f64;
        let (mut mean, mut sq_mean) = (Vec::with_capacity(self.vars.len()), Vec::with_capacity(self.vars.len()));
        let mut column = Vec::new();
        for (i, (_, v)) in self.vars.iter().enumerate() {
            // `to_dtype` may share storage with the Var (f64 parameters); only new tensors are kept.
            let theta = v.as_tensor().to_dtype(DType::F64)?;
            let m = (&self.mean[i] + ((&theta - &self.mean[i])? * inv)?)?;
            let q = (&self.sq_mean[i] + ((theta.sqr()? - &self.sq_mean[i])? * inv)?)?;
            if self.cfg.max_rank > 0 {
                column.push((&theta - &m)?.flatten_all()?.to_dtype(dev_dtype(v.dtype()))?);
            }
            mean.push(m);
            sq_mean.push(q);
        }
        self.mean = mean;
        self.sq_mean = sq_mean;
        if self.cfg.max_rank > 0 {
            self.dev.push_back(column);
            while self.dev.len() > self.cfg.max_rank {
                self.dev.pop_front();
            }
        }
        self.n += 1;
        Ok(())
    }

    /// Snapshots taken so far, `n`.
    pub fn collected(&self) -> usize {
        self.n
    }

    /// Deviation columns held, `K̂ = min(n, K)`.
    pub fn columns(&self) -> usize {
        self.dev.len()
    }

    /// Everything needed to continue collecting: the scalar `n`, `mean/{param}` and
    /// `sq_mean/{param}` (f64), and, when columns are held, `dev/{param}` (`[K̂, numel]`, oldest
    /// first: the ring's order, so no separate position is needed).
    pub fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        out.insert("n".to_string(), Tensor::new(self.n as i64, &Device::Cpu)?);
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("mean/{name}"), self.mean[i].clone());
            out.insert(format!("sq_mean/{name}"), self.sq_mean[i].clone());
            if !self.dev.is_empty() {
                let cols: Vec<&Tensor> = self.dev.iter().map(|c| &c[i]).collect();
                out.insert(format!("dev/{name}"), Tensor::stack(&cols, 0)?);
            }
        }
        Ok(out)
    }

    /// Continues from a [`SwagCollector::state`]. Refuses (naming it) a parameter the store lacks
    /// or does not cover, a shape that differs, more columns than `max_rank` or than snapshots,
    /// and any unexpected name; nothing changes unless everything matches.
    pub fn restore(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        const WHAT: &str = "SWAG collector state";
        let n = count_of(state, "n", WHAT)?;
        let mut groups = group(state, &["n"], false, WHAT)?;
        let (mut mean, mut sq_mean, mut devs) = (Vec::new(), Vec::new(), Vec::new());
        let mut columns = None;
        for (name, v) in &self.vars {
            let e = groups.remove(name).ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "{WHAT}: missing `mean/{name}` (the parameter `{name}` of the model)"
                ))
            })?;
            let (m, q, d) = checked_block(
                name,
                &e,
                v.dims(),
                v.device(),
                Some(dev_dtype(v.dtype())),
                &mut columns,
                WHAT,
            )?;
            mean.push(m);
            sq_mean.push(q);
            devs.push(d);
        }
        if let Some(extra) = groups.keys().next() {
            bail!("{WHAT}: `{extra}` is not a trainable parameter of the model");
        }
        let k = columns.unwrap_or(0);
        if devs.iter().any(|d| d.is_some() != (k > 0)) {
            bail!("{WHAT}: `dev/…` is given for some parameters and not for others");
        }
        if k > self.cfg.max_rank {
            bail!(
                "{WHAT}: holds {k} deviation columns, more than posterior.max_rank = {}",
                self.cfg.max_rank
            );
        }
        if k > n {
            bail!("{WHAT}: holds {k} deviation columns but only n = {n} snapshots");
        }
        let mut dev = VecDeque::with_capacity(k);
        for j in 0..k {
            let mut col = Vec::with_capacity(devs.len());
            for d in devs.iter().flatten() {
                col.push(d.get(j)?);
            }
            dev.push_back(col);
        }
        self.n = n;
        self.mean = mean;
        self.sq_mean = sq_mean;
        self.dev = dev;
        Ok(())
    }

    /// The posterior of `kind` from the snapshots so far: swag with `s = posterior.scale` and the
    /// deviation columns held, swag-diag with `s = 1`, swa the mean. Refuses when nothing has been
    /// collected, and swag with fewer than 2 columns.
    pub fn posterior(&self, kind: SwagKind) -> Result<Swag> {
        if self.n == 0 {
            bail!(
                "SWAG: no weights collected yet (collection starts after epoch posterior.start_epoch = {})",
                self.cfg.start_epoch
            );
        }
        if kind == SwagKind::Full && self.dev.len() < 2 {
            bail!(
                "swag needs at least 2 deviation columns, {} held (posterior.max_rank = {}, {} snapshots); use swag-diag or swa",
                self.dev.len(),
                self.cfg.max_rank,
                self.n
            );
        }
        let mut params = Vec::with_capacity(self.vars.len());
        for (i, (name, v)) in self.vars.iter().enumerate() {
            let dev = if kind == SwagKind::Full {
                let cols: Vec<&Tensor> = self.dev.iter().map(|c| &c[i]).collect();
                Some(Tensor::stack(&cols, 0)?)
            } else {
                None
            };
            params.push(SwagParam {
                name: name.clone(),
                dtype: v.dtype(),
                mean: self.mean[i].clone(),
                sq_mean: self.sq_mean[i].clone(),
                dev,
            });
        }
        Swag::build(kind, self.scale_for(kind), self.n, params)
    }

    fn scale_for(&self, kind: SwagKind) -> f64 {
        match kind {
            SwagKind::Full => self.cfg.scale,
            SwagKind::Diag | SwagKind::Swa => 1.0,
        }
    }
}

impl Observer for SwagCollector {
    /// Per-step mode: collects after global step `g` when [`SwagConfig::collects_after_step`].
    fn on_step(&mut self, info: &StepInfo) -> Result<()> {
        if self.cfg.collects_after_step(info.epoch, info.step, info.steps) {
            self.collect()?;
        }
        Ok(())
    }

    /// Per-epoch mode: collects at the end of epoch `E` when
    /// [`SwagConfig::collects_after_epoch`] (before any later observer, e.g. a checkpoint writer,
    /// sees the epoch).
    fn on_epoch(&mut self, record: &EpochRecord, _ckpt: &Checkpoint) -> Result<()> {
        if self.cfg.collects_after_epoch(record.epoch) {
            self.collect()?;
        }
        Ok(())
    }
}

/// One parameter of a [`Swag`].
#[derive(Debug, Clone)]
struct SwagParam {
    name: String,
    /// The parameter's dtype: that of the mean and of samples.
    dtype: DType,
    /// θ̄, f64, the parameter's shape.
    mean: Tensor,
    /// The mean of θ², f64.
    sq_mean: Tensor,
    /// D̂ as `[K̂, numel]` (swag only), f32 or f64.
    dev: Option<Tensor>,
}

impl SwagParam {
    /// `Σ_diag = max(θ²̄ − θ̄², 1e-30)`, f64.
    fn var(&self) -> Result<Tensor> {
        (&self.sq_mean - self.mean.sqr()?)?.maximum(VAR_CLAMP)
    }
}

/// An SWA / SWAG posterior (see the [module docs](self)): built by
/// [`SwagCollector::posterior`] or [`Swag::from_tensors`].
#[derive(Debug, Clone)]
pub struct Swag {
    kind: SwagKind,
    scale: f64,
    n: usize,
    /// By name in sorted order.
    params: Vec<SwagParam>,
}

impl Swag {
    fn build(kind: SwagKind, scale: f64, n: usize, params: Vec<SwagParam>) -> Result<Self> {
        let k = params.first().and_then(|p| p.dev.as_ref()).map_or(0, |d| d.dims()[0]);
        if kind == SwagKind::Full && k < 2 {
            bail!("swag posterior: needs at least 2 deviation columns, got {k}");
        }
        Ok(Self { kind, scale, n, params })
    }

    /// Rebuilds a posterior from its [`Posterior::tensors`] (names in the [module docs](self)).
    /// Refuses a missing or unexpected name, shapes that do not fit together, `n = 0`, an unknown
    /// kind and swag with fewer than 2 columns.
    pub fn from_tensors(t: &BTreeMap<String, Tensor>) -> Result<Swag> {
        const WHAT: &str = "SWAG posterior file";
        let code = count_of(t, "kind", WHAT)?;
        let kind = SwagKind::from_code(code).ok_or_else(|| {
            candle_core::Error::Msg(format!("{WHAT}: unknown `kind` {code} (0 swa, 1 swag-diag, 2 swag)"))
        })?;
        let n = count_of(t, "n", WHAT)?;
        if n == 0 {
            bail!("{WHAT}: `n` is 0: nothing was collected");
        }
        let scale = scalar_of(
            t.get("scale")
                .ok_or_else(|| candle_core::Error::Msg(format!("{WHAT}: missing the scalar `scale`")))?,
            "scale",
            WHAT,
        )?;
        if !(scale.is_finite() && scale >= 0.0) {
            bail!("{WHAT}: `scale` must be finite and non-negative, got {scale}");
        }
        let groups = group(t, &["kind", "n", "scale"], true, WHAT)?;
        if groups.is_empty() {
            bail!("{WHAT}: no parameters (`mean/…`)");
        }
        let mut columns = None;
        let mut params = Vec::with_capacity(groups.len());
        for (name, e) in &groups {
            let Some(mean) = &e.mean else {
                bail!("{WHAT}: missing `mean/{name}`");
            };
            let dtype = match &e.dtype {
                Some(d) => d.dtype(),
                None => bail!("{WHAT}: missing `dtype/{name}`"),
            };
            let dev_dt = e.dev.as_ref().map(|d| dev_dtype(d.dtype()));
            if kind == SwagKind::Full && e.dev.is_none() {
                bail!("{WHAT}: missing `dev/{name}` (kind swag)");
            }
            if kind != SwagKind::Full && e.dev.is_some() {
                bail!("{WHAT}: unexpected tensor `dev/{name}` (kind {})", kind.name());
            }
            let (mean, sq_mean, dev) = checked_block(name, e, mean.dims(), mean.device(), dev_dt, &mut columns, WHAT)?;
            params.push(SwagParam {
                name: name.clone(),
                dtype,
                mean,
                sq_mean,
                dev,
            });
        }
        Swag::build(kind, scale, n, params)
    }

    /// Which of swa, swag-diag and swag this is.
    pub fn kind_of(&self) -> SwagKind {
        self.kind
    }

    /// Deviation columns used, `K̂` (0 for swa and swag-diag).
    pub fn columns(&self) -> usize {
        self.params
            .first()
            .and_then(|p| p.dev.as_ref())
            .map_or(0, |d| d.dims()[0])
    }

    /// Snapshots the moments were computed from, `n`.
    pub fn collected(&self) -> usize {
        self.n
    }

    /// The covariance scale `s` (1 for swag-diag).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// `√(K̂ − 1)`, the divisor of the low-rank part.
    fn rank_divisor(&self) -> f64 {
        ((self.columns().max(2) - 1) as f64).sqrt()
    }
}

impl Posterior for Swag {
    fn kind(&self) -> &str {
        self.kind.name()
    }

    fn mean(&self) -> Result<ParamSample> {
        self.params
            .iter()
            .map(|p| Ok((p.name.clone(), p.mean.to_dtype(p.dtype)?)))
            .collect()
    }

    /// `θ̄ + √s · (Σ_diag^{½} ⊙ z₁ + D̂ z₂ / √(K̂ − 1))` (swag), `θ̄ + Σ_diag^{½} ⊙ z₁`
    /// (swag-diag), `θ̄` (swa, no draw). `z₁` parameter by parameter in sorted name order, then
    /// `z₂`.
    fn sample(&self, rng: &mut SeededRng) -> Result<ParamSample> {
        if self.kind == SwagKind::Swa {
            return self.mean();
        }
        let mut diag = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let z1 = rng.normal_vec(p.mean.elem_count());
            let z1 = Tensor::from_vec(z1, p.mean.dims(), p.mean.device())?.to_dtype(DType::F64)?;
            diag.push((p.var()?.sqrt()? * z1)?);
        }
        let z2 = match self.kind {
            SwagKind::Full => {
                let k = self.columns();
                Some(Tensor::from_vec(
                    rng.normal_vec(k),
                    (1, k),
                    self.params[0].mean.device(),
                )?)
            }
            _ => None,
        };
        let root_s = self.scale.sqrt();
        let div = self.rank_divisor();
        let mut out = ParamSample::new();
        for (p, d) in self.params.iter().zip(diag) {
            let mut x = d;
            if let (Some(dev), Some(z2)) = (&p.dev, &z2) {
                let low = z2.to_dtype(dev.dtype())?.matmul(dev)?.to_dtype(DType::F64)?;
                x = (x + (low.reshape(p.mean.dims())? / div)?)?;
            }
            let theta = (&p.mean + (x * root_s)?)?;
            out.insert(p.name.clone(), theta.to_dtype(p.dtype)?);
        }
        Ok(out)
    }

    /// Mean `θ̄` and the marginal standard deviation of the sampling distribution:
    /// `√(s · (Σ_diag + rowsum(D̂²)/(K̂ − 1)))` (swag), `√Σ_diag` (swag-diag), none (swa); every
    /// parameter, biases included.
    fn stats(&self) -> Result<Vec<PosteriorStats>> {
        let k1 = (self.columns().max(2) - 1) as f64;
        self.params
            .iter()
            .map(|p| {
                let std = match self.kind {
                    SwagKind::Swa => None,
                    SwagKind::Diag => Some(p.var()?.sqrt()?),
                    SwagKind::Full => {
                        let mut v = p.var()?;
                        if let Some(dev) = &p.dev {
                            let rows = dev.sqr()?.sum(0)?.to_dtype(DType::F64)?.reshape(p.mean.dims())?;
                            v = (v + (rows / k1)?)?;
                        }
                        Some((v * self.scale)?.sqrt()?)
                    }
                };
                Ok(PosteriorStats {
                    name: p.name.clone(),
                    mean: p.mean.to_dtype(p.dtype)?,
                    std: std.map(|s| s.to_dtype(p.dtype)).transpose()?,
                    log_alpha: None,
                    inclusion: None,
                })
            })
            .collect()
    }

    fn needs_batch_norm_refresh(&self) -> bool {
        true
    }

    fn tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let cpu = Device::Cpu;
        let mut out = BTreeMap::new();
        out.insert("kind".to_string(), Tensor::new(self.kind.code(), &cpu)?);
        out.insert("n".to_string(), Tensor::new(self.n as i64, &cpu)?);
        out.insert("scale".to_string(), Tensor::new(self.scale, &cpu)?);
        for p in &self.params {
            out.insert(format!("mean/{}", p.name), p.mean.clone());
            out.insert(format!("sq_mean/{}", p.name), p.sq_mean.clone());
            out.insert(format!("dtype/{}", p.name), Tensor::zeros(1, p.dtype, &cpu)?);
            if let Some(d) = &p.dev {
                out.insert(format!("dev/{}", p.name), d.clone());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batches::TensorBatches;
    use crate::optim::{Sgd, SgdConfig};
    use crate::train::{TrainSettings, TrainState, Trainer};
    use secateur_bayes::nn::{Linear, LinearCfg};
    use secateur_bayes::{Init, ParamBuilder};
    use std::collections::HashMap;

    /// A store with the parameters `a` [2] and `b` [1] (f32, zero) and a buffer `buf` [1].
    fn tiny() -> Result<ParamStore> {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
        pb.param("a", &[2], Init::Const(0.0))?;
        pb.param("b", &[1], Init::Const(0.0))?;
        pb.buffer("buf", &[1], Init::Const(0.0))?;
        Ok(store)
    }

    fn set(store: &ParamStore, name: &str, v: &[f32]) -> Result<()> {
        let var = store
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("no `{name}`")))?;
        var.set(&Tensor::from_vec(v.to_vec(), var.dims(), &Device::Cpu)?)
    }

    fn vec64(t: &Tensor) -> Result<Vec<f64>> {
        t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()
    }

    fn cfg(max_rank: usize, scale: f64) -> SwagConfig {
        SwagConfig {
            max_rank,
            scale,
            ..SwagConfig::default()
        }
    }

    /// Asserts two maps of tensors have the same names and bit-identical values.
    fn assert_same(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> Result<()> {
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (k, t) in a {
            assert_eq!(t.dims(), b[k].dims(), "{k}");
            assert_eq!(vec64(t)?, vec64(&b[k])?, "{k}");
        }
        Ok(())
    }

    /// The hand-computed case: snapshots (a₀, a₁, b) = (1, 0, 2), (3, 2, 2), (2, 7, 5).
    fn hand_case(max_rank: usize, scale: f64) -> Result<SwagCollector> {
        let store = tiny()?;
        let mut c = SwagCollector::new(&store, cfg(max_rank, scale))?;
        for (a, b) in [([1f32, 0.], 2f32), ([3., 2.], 2.), ([2., 7.], 5.)] {
            set(&store, "a", &a)?;
            set(&store, "b", &[b])?;
            c.collect()?;
        }
        Ok(c)
    }

    #[test]
    fn moments_are_the_running_means_of_the_snapshots() -> Result<()> {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
        pb.param("w", &[2, 3], Init::Const(0.0))?;
        pb.param("b", &[3], Init::Const(0.0))?;
        pb.buffer("running_mean", &[3], Init::Const(0.0))?;
        let mut c = SwagCollector::new(&store, cfg(4, 0.5))?;
        let mut rng = SeededRng::new(3);
        let mut snaps: Vec<BTreeMap<&str, Vec<f32>>> = Vec::new();
        for n in 1..=6usize {
            let mut snap = BTreeMap::new();
            for (name, len) in [("w", 6), ("b", 3)] {
                let v: Vec<f32> = rng.normal_vec(len).into_iter().map(|z| 3.0 * z + 1.0).collect();
                set(&store, name, &v)?;
                snap.insert(name, v);
            }
            snaps.push(snap);
            c.collect()?;
            assert_eq!((c.collected(), c.columns()), (n, n.min(4)));
            let st = c.state()?;
            assert!(
                !st.keys().any(|k| k.contains("running_mean")),
                "buffers are not covered"
            );
            for name in ["w", "b"] {
                // independently: plain sums over the snapshots so far, divided by n
                let len = snaps[0][name].len();
                let mean: Vec<f64> = (0..len)
                    .map(|j| snaps.iter().map(|s| s[name][j] as f64).sum::<f64>() / n as f64)
                    .collect();
                let sq: Vec<f64> = (0..len)
                    .map(|j| snaps.iter().map(|s| (s[name][j] as f64).powi(2)).sum::<f64>() / n as f64)
                    .collect();
                for (got, want) in [
                    (vec64(&st[&format!("mean/{name}")])?, &mean),
                    (vec64(&st[&format!("sq_mean/{name}")])?, &sq),
                ] {
                    for (g, w) in got.iter().zip(want) {
                        assert!((g - w).abs() < 1e-12 * (1.0 + w.abs()), "n={n} {name}: {g} vs {w}");
                    }
                }
                // the newest deviation column is θₙ − θ̄ₙ (f32)
                let dev = st[&format!("dev/{name}")].to_dtype(DType::F64)?.to_vec2::<f64>()?;
                let last = dev.last().expect("a column");
                for j in 0..len {
                    let want = snaps[n - 1][name][j] as f64 - mean[j];
                    assert!(
                        (last[j] - want).abs() < 1e-5,
                        "n={n} {name}[{j}]: {} vs {want}",
                        last[j]
                    );
                }
                // the SWA mean is θ̄, in the parameter's dtype
                let swa = c.posterior(SwagKind::Swa)?;
                let m = &swa.mean()?[name];
                assert_eq!(m.dtype(), DType::F32);
                for (g, w) in vec64(m)?.iter().zip(&mean) {
                    assert!((g - w).abs() < 1e-5 * (1.0 + w.abs()));
                }
            }
            // the collector keeps copies: moving the weights does not change what it holds
            set(&store, "b", &[99.0, 99.0, 99.0])?;
            assert_same(&st, &c.state()?)?;
        }
        // swa: a point mass at θ̄ that draws nothing
        let swa = c.posterior(SwagKind::Swa)?;
        let mut rng = SeededRng::new(1);
        let before = rng.state();
        assert_same(&swa.sample(&mut rng)?, &swa.mean()?)?;
        assert_eq!(rng.state(), before);
        assert!(swa.stats()?.iter().all(|s| s.std.is_none()));
        assert!(swa.needs_batch_norm_refresh());
        Ok(())
    }

    #[test]
    fn low_rank_covariance_and_ring_by_hand() -> Result<()> {
        // Snapshots (a₀, a₁, b): θ₁ = (1, 0, 2), θ₂ = (3, 2, 2), θ₃ = (2, 7, 5).
        // Running means: θ̄₁ = (1, 0, 2), θ̄₂ = (2, 1, 2), θ̄₃ = (2, 3, 3).
        // Deviations θᵢ − θ̄ᵢ: d₁ = (0, 0, 0), d₂ = (1, 1, 0), d₃ = (0, 4, 2).
        // Second moments: a₀ (1+9+4)/3 = 14/3, a₁ (0+4+49)/3 = 53/3, b (4+4+25)/3 = 11, so
        // Σ_diag = (14/3 − 4, 53/3 − 9, 11 − 9) = (2/3, 26/3, 2).
        // K = 2 keeps d₂, d₃ (K̂ − 1 = 1): D̂D̂ᵀ = d₂d₂ᵀ + d₃d₃ᵀ
        //   = [[1,1,0],[1,1,0],[0,0,0]] + [[0,0,0],[0,16,8],[0,8,4]] = [[1,1,0],[1,17,8],[0,8,4]].
        // K = 3 keeps d₁, d₂, d₃ (K̂ − 1 = 2): D̂D̂ᵀ/2 = [[.5,.5,0],[.5,8.5,4],[0,4,2]].
        let sigma_diag = [2.0 / 3.0, 26.0 / 3.0, 2.0];
        for (k, want_lr) in [
            (2usize, [[1.0, 1.0, 0.0], [1.0, 17.0, 8.0], [0.0, 8.0, 4.0]]),
            (3, [[0.5, 0.5, 0.0], [0.5, 8.5, 4.0], [0.0, 4.0, 2.0]]),
        ] {
            let c = hand_case(k, 0.5)?;
            assert_eq!((c.collected(), c.columns()), (3, k));
            let post = c.posterior(SwagKind::Full)?;
            assert_eq!(post.columns(), k);
            let t = post.tensors()?;
            // the ring keeps the last K columns, oldest first
            let (da, db) = (t["dev/a"].to_vec2::<f32>()?, t["dev/b"].to_vec2::<f32>()?);
            let cols: Vec<[f64; 3]> = (0..k)
                .map(|j| [da[j][0] as f64, da[j][1] as f64, db[j][0] as f64])
                .collect();
            let want_cols = [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 4.0, 2.0]];
            assert_eq!(cols, want_cols[3 - k..].to_vec());
            // D̂D̂ᵀ/(K̂ − 1) from the stored columns
            for i in 0..3 {
                for j in 0..3 {
                    let got: f64 = cols.iter().map(|d| d[i] * d[j]).sum::<f64>() / (k - 1) as f64;
                    assert!((got - want_lr[i][j]).abs() < 1e-12, "K={k} [{i}][{j}]: {got}");
                }
            }
            // marginal variance: s · (Σ_diag + diag(D̂D̂ᵀ)/(K̂ − 1)); K=2: (5/6, 77/6, 3),
            // K=3: (7/12, 103/12, 2); swag-diag: Σ_diag.
            let stats = post.stats()?;
            let std2: Vec<f64> = stats
                .iter()
                .flat_map(|s| vec64(s.std.as_ref().expect("swag has a std")).expect("f64"))
                .collect();
            for i in 0..3 {
                let want = 0.5 * (sigma_diag[i] + want_lr[i][i]);
                assert!(
                    (std2[i].powi(2) - want).abs() < 1e-5,
                    "K={k} var[{i}]: {} vs {want}",
                    std2[i].powi(2)
                );
            }
            let want = if k == 2 {
                [5.0 / 6.0, 77.0 / 6.0, 3.0]
            } else {
                [7.0 / 12.0, 103.0 / 12.0, 2.0]
            };
            for i in 0..3 {
                assert!((std2[i].powi(2) - want[i]).abs() < 1e-5);
            }
            let diag = c.posterior(SwagKind::Diag)?;
            let sd: Vec<f64> = diag
                .stats()?
                .iter()
                .flat_map(|s| vec64(s.std.as_ref().expect("diag has a std")).expect("f64"))
                .collect();
            for i in 0..3 {
                assert!((sd[i].powi(2) - sigma_diag[i]).abs() < 1e-5);
            }
            assert_eq!(stats.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        }
        Ok(())
    }

    /// Empirical mean and covariance of 20 000 draws of the 3 scalars (a₀, a₁, b) against the
    /// hand-computed ones; returns the largest |z|.
    fn check_moments(post: &Swag, mean: [f64; 3], cov: [[f64; 3]; 3], seed: u64) -> Result<f64> {
        const N: usize = 20_000;
        let mut rng = SeededRng::new(seed);
        let mut xs = Vec::with_capacity(N);
        for _ in 0..N {
            let s = post.sample(&mut rng)?;
            let (a, b) = (vec64(&s["a"])?, vec64(&s["b"])?);
            xs.push([a[0], a[1], b[0]]);
        }
        let m: Vec<f64> = (0..3)
            .map(|i| xs.iter().map(|x| x[i]).sum::<f64>() / N as f64)
            .collect();
        let mut zmax = 0f64;
        for i in 0..3 {
            // the sample mean's standard error is √(Σᵢᵢ / N)
            let z = (m[i] - mean[i]) / (cov[i][i] / N as f64).sqrt();
            zmax = zmax.max(z.abs());
            for j in 0..3 {
                let s: f64 = xs.iter().map(|x| (x[i] - m[i]) * (x[j] - m[j])).sum::<f64>() / (N - 1) as f64;
                // for Gaussian data Var(Sᵢⱼ) ≈ (Σᵢⱼ² + ΣᵢᵢΣⱼⱼ) / N
                let se = ((cov[i][j].powi(2) + cov[i][i] * cov[j][j]) / N as f64).sqrt();
                zmax = zmax.max(((s - cov[i][j]) / se).abs());
            }
        }
        Ok(zmax)
    }

    #[test]
    fn samples_have_the_stated_mean_and_covariance() -> Result<()> {
        // Hand case of `low_rank_covariance_and_ring_by_hand`, K = 2, s = ½: θ̄ = (2, 3, 3),
        // Cov = ½ · (diag(2/3, 26/3, 2) + [[1,1,0],[1,17,8],[0,8,4]])
        //     = [[5/6, 1/2, 0], [1/2, 77/6, 4], [0, 4, 3]].
        // Tolerance: every entry of the empirical mean and covariance within 5 standard errors
        // (of 9 distinct entries, a false alarm has probability ≈ 9 · 6e-7; the draws are seeded).
        let full = hand_case(2, 0.5)?.posterior(SwagKind::Full)?;
        let cov = [[5.0 / 6.0, 0.5, 0.0], [0.5, 77.0 / 6.0, 4.0], [0.0, 4.0, 3.0]];
        let z = check_moments(&full, [2.0, 3.0, 3.0], cov, 21)?;
        println!("swag: max |z| = {z:.2}");
        assert!(z < 5.0, "swag: max |z| = {z}");
        // swag-diag: s = 1, no low-rank part: diag(2/3, 26/3, 2).
        let diag = hand_case(2, 0.5)?.posterior(SwagKind::Diag)?;
        let cov = [[2.0 / 3.0, 0.0, 0.0], [0.0, 26.0 / 3.0, 0.0], [0.0, 0.0, 2.0]];
        let z = check_moments(&diag, [2.0, 3.0, 3.0], cov, 22)?;
        println!("swag-diag: max |z| = {z:.2}");
        assert!(z < 5.0, "swag-diag: max |z| = {z}");
        Ok(())
    }

    /// A 2 → 3 linear layer and 10 examples in batches of 4 (3 steps per epoch).
    fn setup() -> Result<(Linear, ParamStore, TensorBatches)> {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(5), DType::F32, Device::Cpu);
        let fc = Linear::new(&pb.pp("fc"), LinearCfg::new(2, 3))?;
        let mut rng = SeededRng::new(6);
        let x = Tensor::from_vec(rng.normal_vec(20), (10, 2), &Device::Cpu)?;
        let y = Tensor::from_vec((0..10u32).map(|i| i % 3).collect::<Vec<_>>(), 10, &Device::Cpu)?;
        Ok((fc, store, TensorBatches::new(x, y, 4)?))
    }

    fn trainer<'a>(model: &'a Linear, store: &ParamStore, epochs: usize) -> Result<Trainer<'a>> {
        let sgd = Sgd::new(SgdConfig::default())?;
        Trainer::new(
            model,
            store.clone(),
            Box::new(sgd),
            TrainSettings::new(epochs, 0.1),
            SeededRng::new(7),
        )
    }

    /// Records the trainable weights after every step (by global step) and every epoch.
    struct Recorder {
        store: ParamStore,
        steps: BTreeMap<usize, BTreeMap<String, Vec<f64>>>,
        epochs: BTreeMap<usize, BTreeMap<String, Vec<f64>>>,
    }

    impl Recorder {
        fn weights(&self) -> Result<BTreeMap<String, Vec<f64>>> {
            self.store
                .params()
                .iter()
                .map(|(k, v)| Ok((k.clone(), vec64(v.as_tensor())?)))
                .collect()
        }
    }

    impl Observer for Recorder {
        fn on_step(&mut self, info: &StepInfo) -> Result<()> {
            let w = self.weights()?;
            self.steps.insert((info.epoch - 1) * info.steps + info.step, w);
            Ok(())
        }
        fn on_epoch(&mut self, record: &EpochRecord, _ckpt: &Checkpoint) -> Result<()> {
            let w = self.weights()?;
            self.epochs.insert(record.epoch, w);
            Ok(())
        }
    }

    /// Asserts the collector's mean is the average of the recorded weights at `at`.
    fn assert_mean_of(
        c: &SwagCollector,
        rec: &BTreeMap<usize, BTreeMap<String, Vec<f64>>>,
        at: &[usize],
    ) -> Result<()> {
        let st = c.state()?;
        for name in ["fc.bias", "fc.weight"] {
            let got = vec64(&st[&format!("mean/{name}")])?;
            for (j, g) in got.iter().enumerate() {
                let want = at.iter().map(|e| rec[e][name][j]).sum::<f64>() / at.len() as f64;
                assert!((g - want).abs() < 1e-9, "{name}[{j}]: {g} vs {want}");
            }
        }
        Ok(())
    }

    #[test]
    fn collection_follows_the_schedule_in_a_real_training_run() -> Result<()> {
        let (fc, store, mut data) = setup()?;
        let mut t = trainer(&fc, &store, 7)?;
        let mk = |start_epoch, collect_every, every| {
            SwagCollector::new(
                &store,
                SwagConfig {
                    start_epoch,
                    collect_every,
                    every,
                    ..SwagConfig::default()
                },
            )
        };
        // 7 epochs of 3 steps (global steps 1..=21).
        // epochs, start 2, every 2: E ∈ {4, 6}                          → 2
        // epochs, start 0, every 1: E ∈ {1, …, 7}                       → 7
        // steps,  start 2, every 2: epochs 3..7 = g 7..=21, even g 8..20 → 7
        // steps,  start 0, every 4: g ∈ {4, 8, 12, 16, 20}              → 5
        let mut e2 = mk(2, 2, CollectEvery::Epochs)?;
        let mut e1 = mk(0, 1, CollectEvery::Epochs)?;
        let mut s2 = mk(2, 2, CollectEvery::Steps)?;
        let mut s4 = mk(0, 4, CollectEvery::Steps)?;
        let mut rec = Recorder {
            store: store.clone(),
            steps: BTreeMap::new(),
            epochs: BTreeMap::new(),
        };
        t.fit(&mut data, None, &mut [&mut e2, &mut e1, &mut s2, &mut s4, &mut rec])?;
        assert_eq!(
            [e2.collected(), e1.collected(), s2.collected(), s4.collected()],
            [2, 7, 7, 5]
        );
        // … and at those times: the means are those of the weights recorded then
        assert_mean_of(&e2, &rec.epochs, &[4, 6])?;
        assert_mean_of(&e1, &rec.epochs, &[1, 2, 3, 4, 5, 6, 7])?;
        assert_mean_of(&s2, &rec.steps, &[8, 10, 12, 14, 16, 18, 20])?;
        assert_mean_of(&s4, &rec.steps, &[4, 8, 12, 16, 20])?;
        // and the rule as functions
        let c = e2.config();
        assert!(!c.collects_after_epoch(2) && !c.collects_after_epoch(3) && c.collects_after_epoch(4));
        assert!(
            !c.collects_after_step(4, 2, 3),
            "per-epoch mode never collects per step"
        );
        Ok(())
    }

    type Captured = (BTreeMap<String, Tensor>, BTreeMap<String, Tensor>, TrainState);

    /// Captures (deep copies of) the checkpoint of epoch `at`, then stops the run with an error.
    struct Abort {
        at: usize,
        ckpt: Option<Captured>,
    }

    impl Observer for Abort {
        fn on_epoch(&mut self, record: &EpochRecord, ckpt: &Checkpoint) -> Result<()> {
            if record.epoch == self.at {
                let copy = |m: &BTreeMap<String, Tensor>| -> Result<BTreeMap<String, Tensor>> {
                    m.iter().map(|(k, t)| Ok((k.clone(), t.copy()?))).collect()
                };
                self.ckpt = Some((copy(&ckpt.weights)?, copy(&ckpt.optimizer)?, ckpt.state.clone()));
                bail!("test: stopped after epoch {}", record.epoch);
            }
            Ok(())
        }
    }

    #[test]
    fn resumed_collection_is_identical_to_an_uninterrupted_one() -> Result<()> {
        const EPOCHS: usize = 8;
        let collectors = |store: &ParamStore| -> Result<(SwagCollector, SwagCollector)> {
            let e = SwagCollector::new(
                store,
                SwagConfig {
                    start_epoch: 1,
                    max_rank: 3,
                    ..SwagConfig::default()
                },
            )?;
            let s = SwagCollector::new(
                store,
                SwagConfig {
                    start_epoch: 2,
                    collect_every: 2,
                    every: CollectEvery::Steps,
                    max_rank: 3,
                    ..SwagConfig::default()
                },
            )?;
            Ok((e, s))
        };
        // straight through
        let (fc, store, mut data) = setup()?;
        let (mut e_ref, mut s_ref) = collectors(&store)?;
        trainer(&fc, &store, EPOCHS)?.fit(&mut data, None, &mut [&mut e_ref, &mut s_ref])?;
        // epochs 2..=8 → 7 snapshots; steps: g 7..=24 even → 9; the ring of 3 has turned over
        assert_eq!((e_ref.collected(), s_ref.collected(), e_ref.columns()), (7, 9, 3));

        // interrupted after epoch 5
        let (fc, store, mut data) = setup()?;
        let (mut e1, mut s1) = collectors(&store)?;
        let mut abort = Abort { at: 5, ckpt: None };
        let err = trainer(&fc, &store, EPOCHS)?
            .fit(&mut data, None, &mut [&mut e1, &mut s1, &mut abort])
            .unwrap_err()
            .to_string();
        assert!(err.contains("stopped after epoch 5"), "{err}");
        let (weights, optimizer, state) = abort.ckpt.take().expect("checkpoint of epoch 5");
        let (state_e, state_s) = (e1.state()?, s1.state()?);

        // resumed in fresh objects
        let (fc, store, mut data) = setup()?;
        let mut t = trainer(&fc, &store, EPOCHS)?;
        let hm = |m: BTreeMap<String, Tensor>| m.into_iter().collect::<HashMap<_, _>>();
        t.resume(&hm(weights), &hm(optimizer), state)?;
        let (mut e2, mut s2) = collectors(&store)?;
        e2.restore(&state_e)?;
        s2.restore(&state_s)?;
        // after epoch 5: epochs 2..=5 → 4; steps g 7..=15 even → 4
        assert_eq!((e2.collected(), s2.collected()), (4, 4));
        t.fit(&mut data, None, &mut [&mut e2, &mut s2])?;

        assert_same(&e_ref.state()?, &e2.state()?)?;
        assert_same(&s_ref.state()?, &s2.state()?)?;
        for (a, b) in [(&e_ref, &e2), (&s_ref, &s2)] {
            let (pa, pb) = (a.posterior(SwagKind::Full)?, b.posterior(SwagKind::Full)?);
            let (mut ra, mut rb) = (SeededRng::new(11), SeededRng::new(11));
            for _ in 0..3 {
                assert_same(&pa.sample(&mut ra)?, &pb.sample(&mut rb)?)?;
            }
        }
        Ok(())
    }

    #[test]
    fn tensors_round_trip_and_bad_input_is_refused() -> Result<()> {
        let c = hand_case(3, 0.5)?;
        for kind in [SwagKind::Full, SwagKind::Diag, SwagKind::Swa] {
            let post = c.posterior(kind)?;
            let back = Swag::from_tensors(&post.tensors()?)?;
            assert_eq!(
                (back.kind_of(), back.columns(), back.collected()),
                (kind, post.columns(), 3)
            );
            assert_eq!(back.kind(), kind.name());
            assert_eq!(SwagKind::parse(kind.name())?, kind);
            let (mut ra, mut rb) = (SeededRng::new(4), SeededRng::new(4));
            for _ in 0..3 {
                assert_same(&post.sample(&mut ra)?, &back.sample(&mut rb)?)?;
            }
            for (x, y) in post.stats()?.iter().zip(&back.stats()?) {
                assert_eq!(vec64(&x.mean)?, vec64(&y.mean)?);
                assert_eq!(x.std.is_some(), y.std.is_some());
            }
        }
        assert_eq!(c.posterior(SwagKind::Full)?.columns(), 3);
        assert_eq!(c.posterior(SwagKind::Diag)?.columns(), 0);

        // through a safetensors file
        let full = c.posterior(SwagKind::Full)?;
        let path = std::env::temp_dir().join(format!("secateur-swag-test-{}.safetensors", std::process::id()));
        let t: HashMap<String, Tensor> = full.tensors()?.into_iter().collect();
        candle_core::safetensors::save(&t, &path)?;
        let loaded = candle_core::safetensors::load(&path, &Device::Cpu);
        std::fs::remove_file(&path).ok();
        let back = Swag::from_tensors(&loaded?.into_iter().collect())?;
        let (mut ra, mut rb) = (SeededRng::new(8), SeededRng::new(8));
        assert_same(&full.sample(&mut ra)?, &back.sample(&mut rb)?)?;
        assert_eq!(back.sample(&mut rb)?["a"].dtype(), DType::F32);

        // bad posterior files: each error names the offending tensor
        let good = full.tensors()?;
        let err = |edit: &dyn Fn(&mut BTreeMap<String, Tensor>)| -> String {
            let mut t = good.clone();
            edit(&mut t);
            Swag::from_tensors(&t).map(|_| ()).unwrap_err().to_string()
        };
        let cpu = Device::Cpu;
        let z = |shape: &[usize]| Tensor::zeros(shape, DType::F64, &cpu).expect("zeros");
        assert!(err(&|t| {
            t.remove("kind");
        })
        .contains("`kind`"));
        assert!(err(&|t| {
            t.insert("kind".into(), Tensor::new(7u32, &cpu).expect("scalar"));
        })
        .contains("unknown `kind` 7"));
        assert!(err(&|t| {
            t.insert("n".into(), Tensor::new(0i64, &cpu).expect("scalar"));
        })
        .contains("`n` is 0"));
        assert!(err(&|t| {
            t.insert("sq_mean/a".into(), z(&[3]));
        })
        .contains("`sq_mean/a` has shape [3]"));
        assert!(err(&|t| {
            t.remove("dev/b");
        })
        .contains("missing `dev/b`"));
        assert!(err(&|t| {
            t.insert("dev/b".into(), z(&[2, 1]));
        })
        .contains("columns"));
        assert!(err(&|t| {
            t.insert("dev/a".into(), z(&[3, 3]));
        })
        .contains("`dev/a` has shape [3, 3]"));
        assert!(err(&|t| {
            t.insert("foo".into(), z(&[1]));
        })
        .contains("`foo`"));
        assert!(err(&|t| {
            t.remove("dtype/a");
        })
        .contains("`dtype/a`"));
        let mut diag = c.posterior(SwagKind::Diag)?.tensors()?;
        diag.insert("dev/a".into(), z(&[3, 2]));
        assert!(Swag::from_tensors(&diag)
            .map(|_| ())
            .unwrap_err()
            .to_string()
            .contains("dev/a"));

        // nothing collected, too few columns
        let store = tiny()?;
        let mut fresh = SwagCollector::new(&store, cfg(3, 0.5))?;
        let e = fresh.posterior(SwagKind::Swa).map(|_| ()).unwrap_err().to_string();
        assert!(
            e.contains("no weights collected") && e.contains("posterior.start_epoch"),
            "{e}"
        );
        fresh.collect()?;
        assert!(fresh.posterior(SwagKind::Diag).is_ok());
        let e = fresh.posterior(SwagKind::Full).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("at least 2 deviation columns"), "{e}");
        let mut no_rank = SwagCollector::new(&store, cfg(0, 0.5))?;
        for _ in 0..3 {
            no_rank.collect()?;
        }
        assert_eq!(no_rank.columns(), 0);
        assert!(no_rank.posterior(SwagKind::Full).is_err());
        assert!(!no_rank.state()?.keys().any(|k| k.starts_with("dev/")));

        // restore: names, shapes, ranks
        let state = c.state()?;
        let restore_err = |st: &BTreeMap<String, Tensor>, max_rank: usize| -> String {
            let mut r = SwagCollector::new(&tiny().expect("store"), cfg(max_rank, 0.5)).expect("collector");
            r.restore(st).map(|_| ()).unwrap_err().to_string()
        };
        let mut r = SwagCollector::new(&tiny()?, cfg(3, 0.5))?;
        r.restore(&state)?;
        assert_same(&r.state()?, &state)?;
        assert!(restore_err(&state, 2).contains("posterior.max_rank = 2"));
        let mut s = state.clone();
        s.insert("mean/a".into(), z(&[1]));
        assert!(restore_err(&s, 3).contains("`mean/a` has shape [1]"));
        let mut s = state.clone();
        s.insert("mean/c".into(), z(&[1]));
        assert!(restore_err(&s, 3).contains("`c` is not a trainable parameter"));
        let mut s = state.clone();
        s.remove("sq_mean/b");
        assert!(restore_err(&s, 3).contains("missing `sq_mean/b`"));
        let mut s = state.clone();
        s.remove("dev/b");
        assert!(restore_err(&s, 3).contains("some parameters and not for others"));
        let mut s = state.clone();
        s.insert("n".into(), Tensor::new(2i64, &cpu)?);
        assert!(restore_err(&s, 3).contains("only n = 2"));
        let other = ParamStore::new();
        ParamBuilder::new(other.clone(), SeededRng::new(0), DType::F32, Device::Cpu).param(
            "w",
            &[2],
            Init::Const(0.0),
        )?;
        let e = SwagCollector::new(&other, cfg(3, 0.5))?
            .restore(&state)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`w`"), "{e}");
        Ok(())
    }

    #[test]
    fn config_and_kind_are_validated() {
        let e = |c: SwagConfig| c.validate().unwrap_err().to_string();
        assert!(e(SwagConfig {
            collect_every: 0,
            ..SwagConfig::default()
        })
        .contains("posterior.collect_every must be at least 1"));
        assert!(e(cfg(1, 0.5)).contains("posterior.max_rank"));
        assert!(e(cfg(20, -1.0)).contains("posterior.scale"));
        assert!(e(cfg(20, f64::INFINITY)).contains("posterior.scale"));
        assert!(SwagConfig::default().validate().is_ok() && cfg(0, 0.0).validate().is_ok());
        let c: SwagConfig = serde_json::from_str(
            r#"{"start_epoch": 3, "collect_every": 5, "every": "steps", "max_rank": 10, "scale": 1.0}"#,
        )
        .unwrap();
        assert_eq!(
            (c.start_epoch, c.collect_every, c.every, c.max_rank, c.scale),
            (3, 5, CollectEvery::Steps, 10, 1.0)
        );
        assert!(serde_json::from_str::<SwagConfig>(r#"{"rank": 3}"#).is_err());
        assert!(serde_json::from_str::<SwagConfig>(r#"{"every": "batches"}"#).is_err());
        assert!(SwagCollector::new(&ParamStore::new(), SwagConfig::default()).is_err());
        assert!(SwagCollector::new(&tiny().unwrap(), cfg(1, 0.5)).is_err());
        let e = SwagKind::parse("swag-full").unwrap_err().to_string();
        assert!(e.contains("swag-full") && e.contains("swag-diag"), "{e}");
        assert_eq!(SwagKind::parse("swag_diag").unwrap(), SwagKind::Diag);
    }
}
