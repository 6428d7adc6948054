//! Which tensors can be pruned, and where a mask's name points in a [`ParamStore`].
//!
//! **Prunable tensors.** The weights of linear and convolution layers: a trainable parameter
//! whose last name segment is `weight` (deterministic layers) or `weight_mu` (the posterior mean
//! of a Bayesian layer, the convention of `secateur-bayes`) and whose rank is at least 2. This
//! rule leaves out, by name and shape: biases (`bias`, `bias_mu`), batch-norm and layer-norm
//! scales and shifts (rank 1), posterior scales (`weight_rho`, `weight_log_sigma2`,
//! `weight_log_alpha`), and embeddings such as a ViT's `cls_token` and `pos_embed` — the same
//! set the reference pruning codes mask (Tanaka et al. 2020; Gollini Navarrete et al. 2025:
//! biases and batch norm are never pruned).
//!
//! **Logical names.** A prunable tensor is known by its *logical* name, the PyTorch-style name
//! of the weight without the `_mu` suffix (`features.0.weight`, `fc1.weight`), whatever the layer
//! kind, so masks and scores of a deterministic network and of its Bayesian twin have the same
//! keys (and match [`secateur_bayes::PosteriorStats::name`]). [`resolve`] maps a logical name to
//! the stored tensor: `{name}` if the store has it, otherwise `{name}_mu`.

use candle_core::{Result, Var};
use secateur_bayes::ParamStore;
use std::collections::BTreeMap;

/// Suffix of the posterior-mean parameter of a Bayesian layer (`fc1.weight_mu`).
pub const MU_SUFFIX: &str = "_mu";

/// The logical name of the stored parameter `stored` if it is prunable (see the
/// [module documentation](self)), `None` otherwise.
///
/// ```
/// use secateur_pruning::prunable::logical_name;
/// assert_eq!(logical_name("features.0.weight", 4).as_deref(), Some("features.0.weight"));
/// assert_eq!(logical_name("fc1.weight_mu", 2).as_deref(), Some("fc1.weight"));
/// assert_eq!(logical_name("bn1.weight", 1), None); // batch norm: rank 1
/// assert_eq!(logical_name("fc1.weight_rho", 2), None); // posterior scale
/// assert_eq!(logical_name("fc1.bias", 1), None);
/// ```
pub fn logical_name(stored: &str, rank: usize) -> Option<String> {
    if rank < 2 {
        return None;
    }
    let last = stored.rsplit('.').next().unwrap_or(stored);
    match last {
        "weight" => Some(stored.to_string()),
        "weight_mu" => Some(stored[..stored.len() - MU_SUFFIX.len()].to_string()),
        _ => None,
    }
}

/// Every prunable tensor of `store`, by logical name in sorted order, with its stored name and
/// [`Var`].
pub fn prunable(store: &ParamStore) -> BTreeMap<String, (String, Var)> {
    store
        .params()
        .into_iter()
        .filter_map(|(stored, var)| logical_name(&stored, var.rank()).map(|l| (l, (stored, var))))
        .collect()
}

/// The stored name and [`Var`] of the logical name `name`: `{name}` if the store has that
/// parameter, otherwise `{name}_mu`; an error naming `name` if neither exists.
pub fn resolve(store: &ParamStore, name: &str) -> Result<(String, Var)> {
    let params = store.params();
    if let Some(v) = params.get(name) {
        return Ok((name.to_string(), v.clone()));
    }
    let mu = format!("{name}{MU_SUFFIX}");
    match params.get(&mu) {
        Some(v) => Ok((mu, v.clone())),
        None => candle_core::bail!("tensor `{name}`: the model has no parameter `{name}` or `{mu}`"),
    }
}

/// The trainable siblings of a Bayesian weight `{name}_mu` that have its shape: the posterior
/// scale parameters `{name}_rho`, `{name}_log_sigma2` (and any other `{name}_*` of the same
/// shape, e.g. a per-weight `{name}_log_alpha`), by stored name. Empty for a deterministic
/// weight.
pub fn scale_siblings(store: &ParamStore, name: &str) -> BTreeMap<String, Var> {
    let params = store.params();
    let Some(mu) = params.get(&format!("{name}{MU_SUFFIX}")) else {
        return BTreeMap::new();
    };
    let prefix = format!("{name}_");
    params
        .iter()
        .filter(|(k, v)| k.starts_with(&prefix) && !k.ends_with(MU_SUFFIX) && v.dims() == mu.dims())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
