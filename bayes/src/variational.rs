//! What a probabilistic layer offers the variational-inference core.
//!
//! Architectures hold their layers as `Box<dyn Module>`, so training and pruning cannot reach a
//! layer by its type. Instead every probabilistic layer registers itself, under its path, in the
//! model's [`ParamStore`](crate::ParamStore) when it is built
//! ([`ParamBuilder::register_variational`](crate::ParamBuilder::register_variational)); the store
//! then sums divergences ([`ParamStore::divergence`](crate::ParamStore::divergence)) and lists
//! posterior statistics ([`ParamStore::posterior_stats`](crate::ParamStore::posterior_stats)) in
//! sorted name order.

use crate::divergence::Divergence;
use crate::rng::SeededRng;
use candle_core::{Result, Tensor};

/// A layer with a variational posterior over (some of) its parameters.
pub trait Variational: Send + Sync {
    /// The divergence of the layer's posterior from its prior, chosen by `how`, **summed** over
    /// all its probabilistic parameters: a scalar tensor, differentiable in the variational
    /// parameters. Monte Carlo estimators draw from `rng`. A layer refuses (with an error naming
    /// itself) a divergence it does not define.
    fn divergence(&self, how: &Divergence, rng: &mut SeededRng) -> Result<Tensor>;

    /// Posterior statistics of each probabilistic parameter, in a fixed order.
    fn posterior_stats(&self) -> Result<Vec<PosteriorStats>>;

    /// The parameters of the **test-time network** this layer holds, by their names in the
    /// store, each with the layer's test-time keep rule. Every other parameter the layer
    /// created under its path (variances, dropout rates, inclusion and truncation logits, gate
    /// parameters) is not a weight at test time. Counting the kept, non-zero entries of these
    /// over a model gives its test-time parameter count ([`crate::ParamStore::test_time_params`]).
    fn test_time_weights(&self) -> Result<Vec<TestTimeWeight>>;

    /// The units this layer removes at test time, `(removed, total)`, for layers that select
    /// units (spike-and-slab nodes, gated inputs); `None` for the others.
    fn removed_units(&self) -> Result<Option<(usize, usize)>> {
        Ok(None)
    }

    /// The posterior inclusion probability of each unit this layer selects, `[units]` (a
    /// spike-and-slab node's `γ`, a gate's `θ`), detached; `None` for layers that select no units.
    fn unit_inclusion(&self) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

/// One parameter of the test-time network held by a probabilistic layer.
#[derive(Debug, Clone)]
pub struct TestTimeWeight {
    /// Its name in the [`ParamStore`](crate::ParamStore), e.g. `fc1.weight_mu` (the posterior mean
    /// stands for the weight) or `fc1.bias` (a deterministic bias).
    pub name: String,
    /// 1 where the entry survives at test time, 0 where the layer drops it (sparse VD's
    /// `log α ≥ threshold`, a spike-and-slab node or a gate below its threshold), in the
    /// parameter's shape; `None` keeps every entry. Zero entries are removed either way.
    pub keep: Option<Tensor>,
}

impl TestTimeWeight {
    /// A parameter every entry of which is kept.
    pub fn all(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            keep: None,
        }
    }
}

/// Posterior statistics of one parameter tensor, readable without knowing the layer type.
///
/// `name` is the parameter's name without a suffix (`fc1.weight`); by convention the trainable
/// posterior mean is stored as `{name}_mu` in the parameter store. All tensors are detached and
/// have the parameter's shape.
#[derive(Debug, Clone)]
pub struct PosteriorStats {
    /// Parameter name, e.g. `fc1.weight`.
    pub name: String,
    /// Posterior mean μ (θ for variational dropout).
    pub mean: Tensor,
    /// Posterior standard deviation σ, where the family has one.
    pub std: Option<Tensor>,
    /// `log α = log(σ² / μ²)`, the (log) dropout rate of variational dropout, where defined.
    pub log_alpha: Option<Tensor>,
    /// Inclusion probability of a gate or spike-and-slab variable, where the family has one.
    pub inclusion: Option<Tensor>,
}

impl PosteriorStats {
    /// The signal-to-noise ratio `SNR = |μ| / σ` (Blundell et al. 2015, §5.2, used to prune by
    /// ranking), from `std` if present, otherwise from `log α` as `e^{−½ log α}` (since
    /// `α = σ²/μ²`); an error if the family has neither.
    pub fn snr(&self) -> Result<Tensor> {
        match (&self.std, &self.log_alpha) {
            (Some(s), _) => self.mean.abs()?.div(s),
            (None, Some(la)) => (la * -0.5)?.exp(),
            (None, None) => candle_core::bail!("parameter `{}` has neither σ nor log α: no SNR", self.name),
        }
    }

    /// Number of scalar entries.
    pub fn numel(&self) -> usize {
        self.mean.elem_count()
    }
}
