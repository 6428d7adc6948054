//! # secateur-pruning
//!
//! Pruning: masks, criteria, allocation and schedules. Pruning emerges from learned posteriors
//! (signal-to-noise ratio, learned dropout rates, Bernoulli gates, Fisher ranking) and is
//! measured against deterministic baselines on the same models, data and seeds.
//!
//! Modules:
//! - [`prunable`]: which tensors are prunable (linear and conv weights, `{name}_mu` for
//!   Bayesian layers) and their logical names.
//! - [`mask`]: [`MaskSet`], name → 0/1 tensor; applied to a store, to gradients (and as a
//!   [`StepHook`](secateur_inference::hooks::StepHook) in training), per-layer table, safetensors.
//! - [`geometry`]: the weight layers of an architecture in forward order with their output
//!   sizes (FLOPs, first/last-layer exclusions).
//! - [`allocate`]: global and per-layer top-k to an exact sparsity, exclusions, a
//!   minimum-kept guard, thresholds, iterative schedules.
//! - [`criterion`]: the [`Criterion`] trait and the scoring context (model, store, data, loss);
//!   the criteria in [`criteria`], every one listed with its needs in the registry
//!   [`criterion::CRITERIA`] — among them random, magnitude, SNIP, GraSP, SynFlow, Fisher (FP,
//!   FTS), Hutchinson (HP, HTS) and the posterior criteria (SNR, sparse-VD log α, gate
//!   inclusion, Fisher of the mean-mode network).
//! - [`bn_warmup`]: batch-norm warm-up before scoring (Gollini Navarrete et al. 2025).
//! - [`dllp`]: distribution-lossless pruning, SVGD over relaxed masks and weights of a trained
//!   network (a reconstruction from the seed paper's abstract).
//! - [`greg`]: growing regularisation (Wang, Qin, Zhang & Fu 2021), GReg-1 and GReg-2.
//! - [`learned`]: pruning learned during training — SCL (sparse connection learning), DCFF
//!   (dynamic-coded filter fusion), CAP (instance-complexity-aware pruning).
//! - [`structured`]: filter/unit groups with their coupled tensors, group masks, data-free
//!   filter criteria (ℓ1/ℓ2, FPGM, batch-norm statistics), FLOP/parameter budgets and
//!   compaction into the smaller network.
//! - [`quantise`]: post-training int8 weights, per output channel, symmetric.
//!
//! The pipeline of pruning at initialisation: build the model, warm up batch norm, score, allocate,
//! apply, then train with the masks as a step hook.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use secateur_bayes::{ParamBuilder, ParamStore, Sampling, SeededRng};
//! use secateur_models::{build, Deterministic, ModelSpec};
//! use secateur_pruning::{bn_warmup, criterion, geometry, Allocation, Exclusions, ScoringContext, ScoringData};
//! # fn main() -> candle_core::Result<()> {
//! let spec = ModelSpec::new("lenet5", [1, 28, 28], 10);
//! let store = ParamStore::new();
//! let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
//! let net = build(&spec, &Deterministic, &pb)?;
//! let mut rng = SeededRng::new(1);
//! // stand-in data: 2 examples of each of the 10 classes
//! let x = rng.randn(&[40, 1, 28, 28], DType::F32, &Device::Cpu)?;
//! let y = Tensor::new((0..40u32).map(|i| i % 10).collect::<Vec<_>>(), &Device::Cpu)?;
//! bn_warmup::warm_up(&net, [x.clone()], Sampling::Mean, &mut rng)?; // LeNet-5 has no BN: a no-op
//! let data = ScoringData::per_class(&x, &y, 2, 10, 20, &mut rng)?;
//! let snip = criterion::by_name("snip")?;
//! let scores = snip.score(&mut ScoringContext::new(&net, &store, Some(&data), &mut rng))?;
//! let geometry = geometry::record(&spec)?;
//! let keep_last = Exclusions { last_layer: true, ..Default::default() }.resolve(Some(&geometry))?;
//! let masks = Allocation::global(0.9).with_exclude(keep_last).masks(&scores)?;
//! masks.apply(&store)?;
//! let table = masks.layer_table(&store, Some(&geometry))?;
//! assert!(table.collapsed().is_empty());
//! assert_eq!(masks.kept()?, (0.1f64 * masks.total() as f64).round() as usize);
//! // training: `masks` implements secateur_inference::hooks::StepHook
//! # Ok(()) }
//! ```

pub mod allocate;
pub mod bn_warmup;
pub mod criteria;
pub mod criterion;
pub mod diagnose;
pub mod dllp;
pub mod geometry;
pub mod greg;
pub mod learned;
pub mod mask;
pub mod prunable;
pub mod quantise;
pub mod structured;

pub use allocate::{Allocation, Exclusions, IterativeSchedule, Scope};
pub use criterion::{Criterion, CriterionOptions, Loss, ScoringContext, ScoringData};
pub use geometry::{Geometry, LayerInfo, LayerKind};
pub use mask::{MaskSet, Scores};

/// The fraction of zero entries among `total` parameters of which `nonzero` are non-zero.
///
/// ```
/// assert_eq!(secateur_pruning::sparsity(10, 4), 0.6);
/// ```
pub fn sparsity(total: usize, nonzero: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        1.0 - nonzero as f64 / total as f64
    }
}
