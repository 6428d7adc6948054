//! Empirical-Bayes initialisation of a Bayesian network from a trained deterministic one
//! (MOPED: Krishnan, Subedar & Tickoo 2020, "Specifying weight priors in Bayesian deep neural
//! networks with empirical Bayes").
//!
//! Every probabilistic weight gets the posterior mean of the deterministic weight `w` and a
//! standard deviation proportional to its magnitude, `σ = δ·|w|` (MOPED's default δ = 0.1), so
//! training starts from the deterministic solution with a noise level matched to each weight.
//! The Bayesian model's parameters are matched to the deterministic ones by name (the
//! deterministic factory's PyTorch-style names, e.g. `features.0.weight`):
//!
//! | Bayesian parameter | value | family |
//! |---|---|---|
//! | `{name}_mu` | `w` | all |
//! | `{name}_rho` | `softplus⁻¹(max(δ·|w|, σ_min))` | mean-field (Blundell et al. 2015) |
//! | `{name}_log_sigma2` | `log(max(δ·|w|, σ_min)²)` | sparse VD (Molchanov et al. 2017) |
//! | `{name}_log_alpha` | `clip(log δ², −8, 0)` | variational dropout (Kingma et al. 2015) |
//! | any other name | copied from the tensor of the same name | deterministic biases, batch norm, running statistics |
//!
//! `σ_min` ([`EB_MIN_SIGMA`] = 1e-20, bayesian-torch's additive constant in its
//! `get_rho`) keeps ρ and `log σ²` finite where `w = 0`. The Gaussian biases of mean-field layers
//! are initialised like their weights (`bias_mu = b`, `σ = δ·|b|`), as in bayesian-torch's
//! `dnn_to_bnn` with `moped_enable`. For variational dropout `σ = √α·|θ|`, so `log α = log δ²`
//! gives `σ = δ·|w|` exactly as long as `δ ∈ [e⁻⁴, 1]`; outside, `log α` is clipped to the layer's
//! range `[−8, 0]`.
//!
//! Deviation from the paper: MOPED also centres the prior on the deterministic weights; here the
//! prior stays the one chosen in config (priors are values held by the layers), only the
//! variational posterior is initialised.

use crate::layers::variational_dropout::{VD_LOG_ALPHA_MAX, VD_LOG_ALPHA_MIN};
use crate::math::inv_softplus;
use crate::params::ParamStore;
use candle_core::{DType, Result, Tensor, Var};
use std::collections::{BTreeMap, BTreeSet};

/// MOPED's default δ (Krishnan et al. 2020).
pub const DEFAULT_DELTA: f64 = 0.1;

/// The floor on the initial σ (and thus on `|w|·δ`): keeps `ρ = softplus⁻¹(σ)` and `log σ²`
/// finite for zero weights (bayesian-torch adds the same 1e-20 inside its `log`).
pub const EB_MIN_SIGMA: f64 = 1e-20;

/// How a Bayesian parameter is derived from a deterministic tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rule {
    /// The deterministic value itself (`_mu`, or a parameter of the same name).
    Copy,
    /// `softplus⁻¹(max(δ|w|, σ_min))`.
    Rho,
    /// `log(max(δ|w|, σ_min)²)`.
    LogSigma2,
    /// `clip(log δ², −8, 0)`, of the parameter's own shape.
    LogAlpha,
}

/// The deterministic tensor and the rule for the Bayesian parameter `name`: a tensor of the same
/// name is copied; otherwise the suffix `_mu`, `_rho`, `_log_sigma2` or `_log_alpha` names the
/// deterministic tensor it is derived from.
fn rule_for<'a>(name: &'a str, det: &BTreeMap<String, Tensor>) -> Option<(&'a str, Rule)> {
    if det.contains_key(name) {
        return Some((name, Rule::Copy));
    }
    [
        ("_mu", Rule::Copy),
        ("_rho", Rule::Rho),
        ("_log_sigma2", Rule::LogSigma2),
        ("_log_alpha", Rule::LogAlpha),
    ]
    .into_iter()
    .find_map(|(suffix, rule)| name.strip_suffix(suffix).map(|base| (base, rule)))
}

/// `f` applied to every element of `w` (in f64), as a tensor of `w`'s shape.
fn map_elems(w: &Tensor, f: impl Fn(f64) -> f64) -> Result<Tensor> {
    let v: Vec<f64> = w.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    Tensor::from_vec(v.into_iter().map(f).collect::<Vec<_>>(), w.dims(), w.device())
}

/// The value of the Bayesian parameter `target` (its shape and dtype) under `rule` from the
/// deterministic tensor `w`.
fn derive(rule: Rule, w: &Tensor, target: &Var, delta: f64) -> Result<Tensor> {
    let sigma = |x: f64| (delta * x.abs()).max(EB_MIN_SIGMA);
    let value = match rule {
        Rule::Copy => w.clone(),
        Rule::Rho => map_elems(w, |x| inv_softplus(sigma(x)))?,
        Rule::LogSigma2 => map_elems(w, |x| 2.0 * sigma(x).ln())?,
        Rule::LogAlpha => {
            let la = (2.0 * delta.ln()).clamp(VD_LOG_ALPHA_MIN, VD_LOG_ALPHA_MAX);
            Tensor::full(la, target.dims(), target.device())?
        }
    };
    value.to_dtype(target.dtype())?.to_device(target.device())
}

/// Initialises the Bayesian model in `store` from the deterministic weights `det` (MOPED,
/// Krishnan, Subedar & Tickoo 2020): for every probabilistic weight `{name}_mu = w` and its scale
/// set so that `σ = δ·|w|` (see the module table), every other parameter or buffer copied from the
/// deterministic tensor of the same name.
///
/// Strict, and all-or-nothing (nothing is written unless everything matches): refuses `δ` not
/// finite and > 0, a Bayesian parameter with no deterministic counterpart, a deterministic tensor
/// that no Bayesian parameter uses, and a shape mismatch, naming the tensor.
///
/// ```
/// use secateur_bayes::empirical_bayes::init_from_deterministic;
/// use secateur_bayes::layers::{BayesLinear, BayesLinearConfig};
/// use secateur_bayes::{math::softplus, ParamBuilder, ParamStore, SeededRng};
/// use candle_core::{DType, Device, Tensor};
/// use std::collections::BTreeMap;
/// let store = ParamStore::new();
/// let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F64, Device::Cpu);
/// BayesLinear::new(&pb.pp("fc"), BayesLinearConfig::new(2, 1)).unwrap();
/// let mut det = BTreeMap::new();
/// det.insert("fc.weight".to_string(), Tensor::new(&[[0.5f64, -2.0]], &Device::Cpu).unwrap());
/// det.insert("fc.bias".to_string(), Tensor::new(&[1.0f64], &Device::Cpu).unwrap());
/// init_from_deterministic(&store, &det, 0.1).unwrap();
/// let rho = store.get("fc.weight_rho").unwrap();
/// let sigma: Vec<Vec<f64>> = softplus(rho.as_tensor()).unwrap().to_vec2().unwrap();
/// assert!((sigma[0][0] - 0.05).abs() < 1e-12 && (sigma[0][1] - 0.2).abs() < 1e-12);
/// assert!(init_from_deterministic(&store, &det, 0.0).is_err());
/// ```
pub fn init_from_deterministic(store: &ParamStore, det: &BTreeMap<String, Tensor>, delta: f64) -> Result<()> {
    if !(delta.is_finite() && delta > 0.0) {
        candle_core::bail!("empirical-Bayes initialisation: δ (init_delta) must be finite and > 0, got {delta}");
    }
    let targets: BTreeMap<String, Var> = store.params().into_iter().chain(store.buffers()).collect();
    let mut used = BTreeSet::new();
    let mut updates = Vec::with_capacity(targets.len());
    for (name, var) in &targets {
        let (source, rule) = rule_for(name, det).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "empirical-Bayes initialisation: the deterministic weights have no tensor `{name}`"
            ))
        })?;
        let w = det.get(source).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "empirical-Bayes initialisation: parameter `{name}` needs the deterministic tensor `{source}`, which \
                 the weights do not have"
            ))
        })?;
        let shape_ok = match rule {
            // per weight, or one rate per input unit (a vector)
            Rule::LogAlpha => var.dims() == w.dims() || var.rank() == 1,
            _ => var.dims() == w.dims(),
        };
        if !shape_ok {
            candle_core::bail!(
                "empirical-Bayes initialisation: deterministic tensor `{source}` has shape {:?}, parameter `{name}` \
                 has shape {:?}",
                w.dims(),
                var.dims()
            );
        }
        used.insert(source.to_string());
        updates.push((var, derive(rule, w, var, delta)?));
    }
    if let Some(extra) = det.keys().find(|k| !used.contains(k.as_str())) {
        candle_core::bail!(
            "empirical-Bayes initialisation: deterministic tensor `{extra}` has no counterpart in the Bayesian model"
        );
    }
    for (var, value) in updates {
        var.set(&value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{
        BayesConv2d, BayesConv2dConfig, SvdLinear, SvdLinearConfig, VdConv2d, VdConv2dConfig, VdGranularity, VdLinear,
        VdLinearConfig,
    };
    use crate::math::softplus;
    use crate::params::ParamBuilder;
    use crate::rng::SeededRng;
    use candle_core::Device;

    fn vals(t: &Tensor) -> Vec<f64> {
        t.flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// A model with one layer of every family, the deterministic weights it corresponds to (with
    /// some exact zeros), and the store.
    fn model() -> Result<(ParamStore, BTreeMap<String, Tensor>)> {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F64, Device::Cpu);
        BayesConv2d::new(&pb.pp("conv"), BayesConv2dConfig::new(2, 3, 3))?;
        SvdLinear::new(&pb.pp("svd"), SvdLinearConfig::new(4, 3))?;
        VdLinear::new(&pb.pp("vdw"), VdLinearConfig::new(3, 2))?;
        VdConv2d::new(
            &pb.pp("vdu"),
            VdConv2dConfig::new(2, 2, 1).with_granularity(VdGranularity::Unit),
        )?;
        pb.pp("bn").param("weight", &[3], crate::Init::Const(1.0))?;
        pb.pp("bn").buffer("running_var", &[3], crate::Init::Const(1.0))?;
        let mut rng = SeededRng::new(9);
        let mut det = BTreeMap::new();
        for (name, shape) in [
            ("conv.weight", vec![3, 2, 3, 3]),
            ("conv.bias", vec![3]),
            ("svd.weight", vec![3, 4]),
            ("svd.bias", vec![3]),
            ("vdw.weight", vec![2, 3]),
            ("vdw.bias", vec![2]),
            ("vdu.weight", vec![2, 2, 1, 1]),
            ("vdu.bias", vec![2]),
            ("bn.weight", vec![3]),
            ("bn.running_var", vec![3]),
        ] {
            let t = rng.rand_uniform(&shape, -1.0, 1.0, DType::F64, &Device::Cpu)?;
            // an exact zero in every tensor: the σ floor must keep everything finite
            let mut v = vals(&t);
            v[0] = 0.0;
            det.insert(name.to_string(), Tensor::from_vec(v, shape, &Device::Cpu)?);
        }
        Ok((store, det))
    }

    #[test]
    fn sigma_is_delta_times_magnitude_for_every_family() -> Result<()> {
        let (store, det) = model()?;
        let delta = 0.2;
        init_from_deterministic(&store, &det, delta)?;
        let get = |n: &str| store.get(n).unwrap().as_tensor().clone();
        let expect_sigma = |w: &[f64], s: &[f64], what: &str| {
            for (i, (w, s)) in w.iter().zip(s).enumerate() {
                let e = (delta * w.abs()).max(EB_MIN_SIGMA);
                assert!((s - e).abs() <= 1e-12 * e, "{what}[{i}]: σ {s} vs δ|w| {e}");
            }
        };
        // mean-field: μ = w and softplus(ρ) = δ|w|, weights and biases alike
        for p in ["conv.weight", "conv.bias"] {
            let w = vals(&det[p]);
            assert_eq!(vals(&get(&format!("{p}_mu"))), w);
            expect_sigma(&w, &vals(&softplus(&get(&format!("{p}_rho")))?), p);
        }
        // sparse VD: θ = w, exp(½ log σ²) = δ|w|; the deterministic bias is copied
        let w = vals(&det["svd.weight"]);
        assert_eq!(vals(&get("svd.weight_mu")), w);
        expect_sigma(&w, &vals(&(get("svd.weight_log_sigma2") * 0.5)?.exp()?), "svd");
        assert_eq!(vals(&get("svd.bias")), vals(&det["svd.bias"]));
        // variational dropout, per weight and per unit: σ = √α|θ| = δ|w| (0 where w = 0)
        for p in ["vdw", "vdu"] {
            let w = vals(&det[&format!("{p}.weight")]);
            assert_eq!(vals(&get(&format!("{p}.weight_mu"))), w);
            let stats = store.posterior_stats()?;
            let st = stats.iter().find(|s| s.name == format!("{p}.weight")).unwrap();
            for (i, (w, s)) in w.iter().zip(vals(st.std.as_ref().unwrap())).enumerate() {
                assert!((s - delta * w.abs()).abs() <= 1e-12 * delta * w.abs(), "{p}[{i}]: {s}");
            }
        }
        assert_eq!(get("vdu.weight_log_alpha").dims(), &[2]);
        // batch norm parameter and buffer copied
        assert_eq!(vals(&get("bn.weight")), vals(&det["bn.weight"]));
        assert_eq!(vals(&get("bn.running_var")), vals(&det["bn.running_var"]));
        for (n, v) in store.params() {
            assert!(vals(v.as_tensor()).iter().all(|x| x.is_finite()), "{n}");
        }
        Ok(())
    }

    #[test]
    fn log_alpha_is_clipped_to_the_layer_range() -> Result<()> {
        for (delta, expected) in [(2.0, 0.0), (1e-3, -8.0), (0.5, 2.0 * 0.5f64.ln())] {
            let (store, det) = model()?;
            init_from_deterministic(&store, &det, delta)?;
            let la = vals(store.get("vdw.weight_log_alpha").unwrap().as_tensor());
            assert!(la.iter().all(|&v| (v - expected).abs() < 1e-12), "δ = {delta}: {la:?}");
        }
        Ok(())
    }

    #[test]
    fn bad_delta_and_mismatches_are_refused_by_name_and_nothing_is_written() -> Result<()> {
        let (store, det) = model()?;
        let before = vals(store.get("conv.weight_mu").unwrap().as_tensor());
        for d in [0.0, -0.1, f64::NAN, f64::INFINITY] {
            let e = init_from_deterministic(&store, &det, d).unwrap_err().to_string();
            assert!(e.contains("init_delta"), "{d}: {e}");
        }
        // a missing deterministic tensor
        let mut missing = det.clone();
        missing.remove("svd.bias");
        let e = init_from_deterministic(&store, &missing, 0.1).unwrap_err().to_string();
        assert!(e.contains("`svd.bias`"), "{e}");
        let mut missing = det.clone();
        missing.remove("conv.weight");
        let e = init_from_deterministic(&store, &missing, 0.1).unwrap_err().to_string();
        assert!(e.contains("`conv.weight`") && e.contains("conv.weight_mu"), "{e}");
        // an unused deterministic tensor
        let mut extra = det.clone();
        extra.insert("head.weight".into(), Tensor::zeros(2, DType::F64, &Device::Cpu)?);
        let e = init_from_deterministic(&store, &extra, 0.1).unwrap_err().to_string();
        assert!(e.contains("`head.weight`"), "{e}");
        // a shape mismatch
        let mut wrong = det.clone();
        wrong.insert("vdw.weight".into(), Tensor::zeros((3, 2), DType::F64, &Device::Cpu)?);
        let e = init_from_deterministic(&store, &wrong, 0.1).unwrap_err().to_string();
        assert!(e.contains("`vdw.weight`") && e.contains("[3, 2]"), "{e}");
        // nothing was written by the refused calls (conv.weight_mu comes before the failures)
        assert_eq!(vals(store.get("conv.weight_mu").unwrap().as_tensor()), before);
        Ok(())
    }
}
