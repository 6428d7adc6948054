//! Structured pruning: whole filters and units with every tensor they own.
//!
//! Unstructured masks ([`crate::mask`]) zero single weights; structured pruning removes a
//! *group*, one output channel of a convolution or one output unit of a linear layer, with its
//! bias, its batch-norm entries and the next layer's input channels, so that the network can be
//! made smaller and faster ([`compact`]). The pieces:
//!
//! - [`groups`]: the groups of an architecture and the tensors each one owns, derived by probing
//!   a throwaway copy of the network ([`groups::record`]); layers whose channels are joined by a
//!   residual sum are refused, naming them.
//! - [`mask`]: [`StructuredMask`], the kept groups per layer, and its expansion into an ordinary
//!   [`crate::MaskSet`] over every coupled weight plus the coupled biases and batch-norm entries
//!   ([`ExpandedMask`]), which applies to a store so that the masked network computes what the
//!   network without the pruned channels computes (biases, γ **and** β zeroed).
//! - [`criteria`]: data-free filter scores — ℓ1 and ℓ2 norms (Li et al. 2017), FPGM (He et al.
//!   2019) and the expected post-ReLU activation under the batch norm's statistics.
//! - [`allocate`]: groups to a budget of FLOPs or parameters removed, globally or per layer; a
//!   group's cost includes its share of the next layer.
//! - [`compact`]: the tensors of the network without the pruned groups and the narrowed
//!   network to load them into (MLP, LeNet-5, the VGG family).
//!
//! The pipeline on a trained network:
//!
//! ```
//! use candle_core::{DType, Device};
//! use secateur_bayes::{ParamBuilder, ParamStore, SeededRng};
//! use secateur_models::{build, Deterministic, ModelSpec};
//! use secateur_pruning::structured::{groups, Cost, FilterCriterion, StructuredAllocation};
//! use secateur_pruning::Scope;
//! # fn main() -> candle_core::Result<()> {
//! let spec = ModelSpec::new("mlp", [1, 28, 28], 10);
//! let store = ParamStore::new();
//! let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
//! let _net = build(&spec, &Deterministic, &pb)?; // (trained)
//! let coupling = groups::record(&spec)?;
//! let scores = FilterCriterion::L1.score(&store, &coupling)?;
//! let plan = StructuredAllocation::new(Cost::Flops, 0.5, Scope::PerLayer).allocate(&coupling, &scores)?;
//! let expanded = plan.mask.expand(&coupling)?;
//! expanded.apply(&store)?; // fine-tune with `expanded` as the step hook
//! assert!(plan.removed >= plan.target);
//! # Ok(()) }
//! ```

pub mod allocate;
pub mod compact;
pub mod criteria;
pub mod groups;
pub mod mask;

pub use allocate::{Allocated, Cost, StructuredAllocation};
pub use compact::{check_pruned_outputs, compact_store, Compacted, LayerWidth};
pub use criteria::{FilterCriterion, GroupScores};
pub use groups::{Consumer, Coupling, LayerGroups, Refusal, VectorRole};
pub use mask::{CoupledVector, ExpandedMask, StructuredMask};

#[cfg(test)]
pub(crate) mod test_util {
    //! Shared helpers of the structured tests: seeded networks with random batch-norm statistics.

    use candle_core::{DType, Device, Result, Tensor};
    use secateur_bayes::{Ctx, Module, ParamBuilder, ParamStore, Sampling, SeededRng};
    use secateur_models::{build, Deterministic, LayerFactory, ModelSpec, Network};

    /// Builds `spec` with `factory` into a fresh store seeded with 0.
    pub fn net(spec: &ModelSpec, factory: &dyn LayerFactory) -> Result<(Network, ParamStore)> {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
        Ok((build(spec, factory, &pb)?, store))
    }

    /// A deterministic network of `spec` whose batch norms have random γ ~ ±U(0.5, 1.5), β ~ N(0, 1),
    /// running mean ~ N(0, 1) and running variance ~ U(0.5, 2) (seed `seed`), so that a channel's
    /// batch-norm output is a non-zero constant when its input is zero.
    pub fn random_net(spec: &ModelSpec, seed: u64) -> Result<(Network, ParamStore)> {
        let (net, store) = net(spec, &Deterministic)?;
        randomise_bn(&store, seed)?;
        Ok((net, store))
    }

    /// Random batch-norm parameters and statistics (see [`random_net`]).
    pub fn randomise_bn(store: &ParamStore, seed: u64) -> Result<()> {
        let mut rng = SeededRng::new(seed);
        let dev = Device::Cpu;
        for (name, var) in store.params().into_iter().chain(store.buffers()) {
            if var.rank() != 1 {
                continue;
            }
            let prefix = name.rsplit_once('.').map_or("", |p| p.0);
            if store.get(&format!("{prefix}.running_var")).is_none() {
                continue;
            }
            let n = var.dim(0)?;
            let v = if name.ends_with(".weight") {
                let mag = rng.rand_uniform(&[n], 0.5, 1.5, DType::F32, &dev)?;
                let sign = rng.rademacher(&[n], DType::F32, &dev)?;
                (mag * sign)?
            } else if name.ends_with(".running_var") {
                rng.rand_uniform(&[n], 0.5, 2.0, DType::F32, &dev)?
            } else {
                rng.randn(&[n], DType::F32, &dev)?
            };
            var.set(&v)?;
        }
        Ok(())
    }

    /// Logits of `net` in evaluation mode.
    pub fn logits(net: &dyn Module, x: &Tensor) -> Result<Tensor> {
        let mut rng = SeededRng::new(0);
        net.forward(x, &mut Ctx::eval(&mut rng, Sampling::Mean))
    }

    /// `max |a − b|` and `max |b|`.
    pub fn max_diff(a: &Tensor, b: &Tensor) -> Result<(f64, f64)> {
        let d = (a - b)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        let m = b
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        Ok((d, m))
    }

    /// Prunes about half of the groups of every layer of `coupling` at random (seeded), keeping at
    /// least one per layer.
    pub fn random_half(coupling: &super::Coupling, seed: u64) -> Result<super::StructuredMask> {
        let mut rng = SeededRng::new(seed);
        let mut m = super::StructuredMask::all_kept(coupling);
        for l in &coupling.layers {
            let u = rng.uniform_vec(l.groups, 0.0, 1.0);
            for (g, &ug) in u.iter().enumerate().skip(1) {
                if ug < 0.5 {
                    m.prune(coupling, &l.name, g)?;
                }
            }
        }
        Ok(m)
    }
}
