//! Layer kinds as values: one [`LayerKind`] entry per value of the config key `model.layers`,
//! holding everything the rest of secateur asks of a kind — whether it is Bayesian, how it
//! samples, whether it is nested, how it builds its [`LayerFactory`], and what it reports after
//! training. [`LAYER_KINDS`] is the registry; [`kind`] looks a name up.
//!
//! Adding a layer kind: a factory (a file under `models/src/`, as the kinds of
//! [`crate::bayes_factory`]) whose probabilistic layers implement
//! [`Variational`](secateur_bayes::Variational) (divergence, posterior statistics, test-time
//! weights, removed units), plus one line in [`LAYER_KINDS`]. The config check, the CLI's list of
//! names, the trainer's objective and sampling, the test-time parameter count and the run report
//! all read the entry.
//!
//! Every kind reads its options from the shared [`FactoryOptions`] (the `[bayes]` section of a
//! config, flat keys such as `bayes.init_std`, `bayes.gate_threshold`), not from an options
//! struct of its own: a tagged per-kind table would change every existing config file.

use crate::bayes_factory::{
    FactoryOptions, GsmGates, McDropoutFactory, MeanField, NestedDropoutFactory, SparseVd, SpikeSlab,
    VariationalDropout,
};
use crate::factory::{Deterministic, LayerFactory};
use candle_core::Result;
use secateur_bayes::ParamStore;

/// How a kind's stochastic layers sample in training and Monte Carlo evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindSampling {
    /// Nothing to sample: the posterior mean, one pass (deterministic layers).
    Mean,
    /// The Gaussian-weight estimator the config chooses (`bayes.sampling`: local
    /// reparameterisation, weight sampling or Flipout).
    Configured,
    /// A fresh mask per pass (dropout and nested-dropout kinds; drawn whenever sampling is not
    /// `Mean`).
    Masks,
}

impl KindSampling {
    /// The [`Sampling`](secateur_bayes::Sampling) of a training or Monte Carlo pass: the
    /// posterior mean, `Weight` for the mask kinds (any sampling but `Mean` draws masks), or the
    /// estimator `configured` gives where the kind leaves it to the config (called only then, so
    /// that an unknown estimator name is an error only where it is used).
    pub fn resolve<E>(
        self,
        configured: impl FnOnce() -> std::result::Result<secateur_bayes::Sampling, E>,
    ) -> std::result::Result<secateur_bayes::Sampling, E> {
        use secateur_bayes::Sampling;
        Ok(match self {
            KindSampling::Mean => Sampling::Mean,
            KindSampling::Masks => Sampling::Weight,
            KindSampling::Configured => configured()?,
        })
    }
}

/// One value reported after training (a count keeps its integer form in `metrics.json`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReportValue {
    /// A count.
    Count(usize),
    /// A fraction or other real number.
    Real(f64),
}

/// A kind's report: `metrics.json` keys and their values.
pub type KindReport = Vec<(String, ReportValue)>;

/// What a kind's report may read besides the trained parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportInput {
    /// The network's input shape `[C, H, W]`.
    pub input: [usize; 3],
}

/// A layer kind: an entry of [`LAYER_KINDS`].
pub struct LayerKind {
    /// The config name (`model.layers`).
    pub name: &'static str,
    /// The method and its reference, one line.
    pub summary: &'static str,
    /// Bayesian: trained on the negative ELBO and evaluated by Monte Carlo averaging.
    pub bayesian: bool,
    /// Orders its units, so the network can be evaluated at any width (`ctx.width`).
    pub nested: bool,
    /// How its layers sample.
    pub sampling: KindSampling,
    /// Builds its factory from the shared options.
    pub factory: fn(&FactoryOptions) -> Result<Box<dyn LayerFactory>>,
    /// What its trained layers report beyond the common metrics (`metrics.json` keys).
    pub report: fn(&ParamStore, &ReportInput) -> Result<KindReport>,
}

impl std::fmt::Debug for LayerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerKind")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The registry of layer kinds, in the order they are listed to users (one line per kind).
#[rustfmt::skip]
pub static LAYER_KINDS: &[LayerKind] = &[
    LayerKind { name: "deterministic", summary: "plain linear and convolution layers", bayesian: false, nested: false, sampling: KindSampling::Mean, factory: |_| Ok(Box::new(Deterministic)), report: no_report },
    LayerKind { name: "mean-field", summary: "mean-field Gaussian weights (Blundell et al. 2015)", bayesian: true, nested: false, sampling: KindSampling::Configured, factory: |o| Ok(Box::new(MeanField::new(o.prior, o.init_std)?.with_posterior_init(o.posterior_init).with_kl_reduction(o.kl_reduction))), report: no_report },
    LayerKind { name: "sparse-vd", summary: "sparse variational dropout (Molchanov, Ashukha & Vetrov 2017)", bayesian: true, nested: false, sampling: KindSampling::Configured, factory: |o| Ok(Box::new(SparseVd::new(o.sparse_vd_threshold)?)), report: dropped_weights },
    LayerKind { name: "variational-dropout", summary: "variational dropout, α per weight or unit (Kingma, Salimans & Welling 2015)", bayesian: true, nested: false, sampling: KindSampling::Configured, factory: |o| Ok(Box::new(VariationalDropout::new(o.vd_granularity, o.vd_init_log_alpha)?)), report: no_report },
    LayerKind { name: "mc-dropout", summary: "MC dropout (Gal & Ghahramani 2016)", bayesian: true, nested: false, sampling: KindSampling::Masks, factory: |o| Ok(Box::new(McDropoutFactory::new(o.dropout)?)), report: no_report },
    LayerKind { name: "spike-slab", summary: "spike-and-slab node selection (Jantre, Bhattacharya & Maiti 2021)", bayesian: true, nested: false, sampling: KindSampling::Configured, factory: |o| Ok(Box::new(SpikeSlab::new(o.spike_slab_prior, o.init_std, o.spike_slab_init_inclusion, o.spike_slab_temperature)?.with_layer_inclusion(o.spike_slab_layer_inclusion.clone())?)), report: removed_nodes },
    LayerKind { name: "nested-dropout", summary: "nested dropout (Rippel, Gelbart & Adams 2014)", bayesian: false, nested: true, sampling: KindSampling::Masks, factory: |o| Ok(Box::new(NestedDropoutFactory::plain(o.nested_dropout_p)?)), report: no_report },
    LayerKind { name: "variational-nested-dropout", summary: "variational nested dropout (Cui et al. 2021)", bayesian: true, nested: true, sampling: KindSampling::Masks, factory: |o| Ok(Box::new(NestedDropoutFactory::variational(o.nested_dropout_p, o.nested_temperature)?)), report: no_report },
    LayerKind { name: "gsm-gates", summary: "Bernoulli gates with a GSM prior and hyper-prior (Guenter & Sideris 2022)", bayesian: true, nested: false, sampling: KindSampling::Configured, factory: |o| Ok(Box::new(GsmGates::new(o.gate_prior, o.gate_init_inclusion, o.gate_threshold)?.with_lr_scale(o.gate_lr_scale)?)), report: removed_gates },
];

/// The kind named `name`, or an error listing the known names.
///
/// ```
/// let k = secateur_models::kind("sparse-vd").unwrap();
/// assert!(k.bayesian && !k.nested);
/// let e = secateur_models::kind("gaussian-process").unwrap_err().to_string();
/// assert!(e.contains("gaussian-process") && e.contains("mean-field"));
/// ```
pub fn kind(name: &str) -> Result<&'static LayerKind> {
    LAYER_KINDS.iter().find(|k| k.name == name).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "unknown layer kind `{name}`; known: {}",
            kind_names().join(", ")
        ))
    })
}

/// The factory of the layer kind `name`: [`kind`]`(name)?.factory(opts)`; an unknown name is
/// refused with the list of known ones, invalid options with the field that is wrong.
///
/// ```
/// use secateur_models::{factory, FactoryOptions};
/// assert_eq!(factory("sparse-vd", &FactoryOptions::default()).unwrap().name(), "sparse-vd");
/// ```
pub fn factory(name: &str, opts: &FactoryOptions) -> Result<Box<dyn LayerFactory>> {
    (kind(name)?.factory)(opts)
}

/// The names of [`LAYER_KINDS`], in order.
pub fn kind_names() -> Vec<&'static str> {
    LAYER_KINDS.iter().map(|k| k.name).collect()
}

fn no_report(_: &ParamStore, _: &ReportInput) -> Result<KindReport> {
    Ok(Vec::new())
}

/// `sparsity_log_alpha`: the fraction of weights the layers drop at test time (sparse VD:
/// `log α ≥ threshold`, Molchanov et al. 2017), over every weight with a test-time rule.
fn dropped_weights(store: &ParamStore, _: &ReportInput) -> Result<KindReport> {
    let (mut dropped, mut n) = (0usize, 0usize);
    for (_, layer) in store.variational_layers() {
        for w in layer.test_time_weights()? {
            if let Some(keep) = &w.keep {
                let kept = keep.to_dtype(candle_core::DType::F64)?.sum_all()?.to_scalar::<f64>()? as usize;
                dropped += keep.elem_count() - kept;
                n += keep.elem_count();
            }
        }
    }
    Ok(if n > 0 {
        vec![(
            "sparsity_log_alpha".into(),
            ReportValue::Real(dropped as f64 / n as f64),
        )]
    } else {
        Vec::new()
    })
}

/// `nodes_removed`, `nodes_total`: spike-and-slab nodes whose inclusion probability is below ½
/// (Jantre et al. 2021), over the layers that select nodes.
fn removed_nodes(store: &ParamStore, _: &ReportInput) -> Result<KindReport> {
    let units = store.removed_units()?;
    if units.is_empty() {
        return Ok(Vec::new());
    }
    let removed = units.iter().map(|u| u.1).sum();
    let total = units.iter().map(|u| u.2).sum();
    Ok(vec![
        ("nodes_removed".into(), ReportValue::Count(removed)),
        ("nodes_total".into(), ReportValue::Count(total)),
    ])
}

/// Gate counts of a GSM-gated model (Guenter & Sideris 2022): per layer `units_removed.{layer}`
/// and `units_total.{layer}` (a gate is removed when its inclusion is below `bayes.gate_threshold`);
/// every layer gates its inputs, so its gates are the units (filters) of the layer before it,
/// except for the layer reading the network input — recognised by a gate count equal to the
/// input's features `C·H·W` (linear) or channels `C` (convolution) — whose gates are pixels or
/// channels. `units_removed` is the removed fraction of hidden units, `units_hidden_total` their
/// count, `inputs_removed` the removed fraction of inputs.
fn removed_gates(store: &ParamStore, r: &ReportInput) -> Result<KindReport> {
    let mut out = Vec::new();
    let (mut removed, mut total, mut in_removed, mut in_total) = (0, 0, 0, 0);
    for (layer, rm, t) in store.removed_units()? {
        out.push((format!("units_removed.{layer}"), ReportValue::Count(rm)));
        out.push((format!("units_total.{layer}"), ReportValue::Count(t)));
        if t == r.input.iter().product::<usize>() || t == r.input[0] {
            (in_removed, in_total) = (in_removed + rm, in_total + t);
        } else {
            (removed, total) = (removed + rm, total + t);
        }
    }
    if total > 0 {
        out.push(("units_removed".into(), ReportValue::Real(removed as f64 / total as f64)));
        out.push(("units_hidden_total".into(), ReportValue::Count(total)));
    }
    if in_total > 0 {
        out.push((
            "inputs_removed".into(),
            ReportValue::Real(in_removed as f64 / in_total as f64),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_kind_builds_with_the_default_options() -> Result<()> {
        let names = kind_names();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        for k in LAYER_KINDS {
            let f = (k.factory)(&FactoryOptions::default())?;
            // the factory reports the kind's own name
            assert_eq!(f.name(), k.name);
            // a Bayesian kind samples; only the deterministic kind evaluates the mean
            assert_eq!(
                k.sampling == KindSampling::Mean,
                k.name == "deterministic",
                "{}",
                k.name
            );
        }
        Ok(())
    }
}
