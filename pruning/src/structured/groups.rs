//! Groups and the tensors each one owns, derived by probing a throwaway copy of the network.
//!
//! **What a group is.** Output channel `i` of a convolution (a filter) or output unit `i` of a
//! linear layer `L`, together with every tensor entry that exists only because of it:
//! - row `i` of `L`'s weight (`W_L[i, …]`) and entry `i` of `L`'s bias, if any;
//! - entry `i` of the batch norm that normalises `L`'s output, if any: γ `weight`, β `bias`,
//!   `running_mean`, `running_var`;
//! - the input features of the next weight layer `M` (the *consumer*) that carry channel `i`:
//!   input channel `i` of a convolution, column `i` of a linear layer, or, for a convolution
//!   followed by a flatten into a linear layer, the block of `H·W` columns `[i·H·W, (i+1)·H·W)`
//!   (PyTorch's row-major `NCHW` flatten). In general the block is `[i·b, (i+1)·b)` with
//!   `b = in_M / C_L`.
//!
//! **How the coupling is derived.** Naming conventions differ between architectures
//! (`features.{i}` → `features.{i+1}` in VGG, `conv1` → `bn1` in ResNet blocks, no batch norm at
//! all in LeNet), so [`record`] derives the coupling from the network's behaviour instead, as
//! [`crate::geometry::record`] derives the layer sizes. It builds a deterministic, freshly
//! initialised copy of the architecture through a *probing* [`LayerFactory`] that wraps each
//! linear and convolution layer so that it can record its input and output, add a constant to one
//! output channel, or replace its output by a recorded one. All passes run in evaluation mode on
//! one seeded `N(0, 1)` example. For each weight layer `L` (in forward order, except the last,
//! the classifier, whose outputs are never a group) it checks, on the probe channels
//! `c ∈ {0, ⌊C/2⌋, C − 1}`:
//!
//! 1. `L` is called once per forward pass (no shared weights);
//! 2. the consumer `M`: adding [`PROBE_DELTA`] to channel `c` of `L`'s output changes the inputs
//!    of later layers; the first of them in call order is `M` (any other one is reached through
//!    a layer called before it);
//! 3. the path `L → M` is private and channel-wise: with `M`'s output held at its recorded value,
//!    perturbing channel `c` changes the input of no weight layer other than `M` (otherwise the
//!    output also bypasses `M`: a residual or skip connection), and it changes exactly the input
//!    features `[c·b, (c+1)·b)` of `M`, every entry of them; `M`'s weight has `in_M` columns (not
//!    a grouped convolution);
//! 4. `M` reads nothing but `L`: with `L`'s output held at its recorded value, another input
//!    example leaves `M`'s input unchanged (otherwise `M` reads a residual sum or a
//!    concatenation);
//! 5. the batch norm: among the store's batch norms over `C` channels (a prefix `Q` with
//!    parameters `Q.weight`, `Q.bias` and buffers `Q.running_mean`, `Q.running_var` of shape
//!    `[C]`), those whose β moves `M`'s input while `L`'s output is held are on the path; at most
//!    one may be;
//! 6. zeroing the group works: with row `c` of `W_L`, entry `c` of `L`'s bias and γ_c, β_c of that
//!    batch norm set to zero, block `c` of `M`'s input is exactly zero (this fails for an
//!    activation with `f(0) ≠ 0` or an additive parameter on the path).
//!
//! A layer that fails a check is *refused* ([`Refusal`]) with the reason; asking for its groups
//! is an error naming it and the reason ([`Coupling::layer`]). The checks are structural (they
//! do not depend on trained values), so the coupling recorded on a fresh copy holds for the
//! trained network and for every Bayesian variant of the architecture (same logical names).
//!
//! **Residual networks.** Channels joined by a residual sum are *refused*, not coupled: in the
//! ResNets the stem convolution and the second convolution of every block (and projection
//! shortcuts) feed a sum, and fail check 3 or 4, while the first convolution of every block
//! (`layer{k}.{j}.conv1` → `bn1` → ReLU → `conv2`) is a private path and forms groups. This is
//! the usual scheme of filter pruning in ResNets (Li, Kadav, Durdanovic, Samet & Graf 2017 prune
//! only the first layer of each residual block); pruning the channels of a residual stage jointly
//! is left to a later piece of work.

use crate::geometry::{Geometry, LayerInfo, LayerKind};
use crate::prunable::resolve;
use candle_core::{DType, Device, Result, Tensor};
use secateur_bayes::nn::{Conv2dCfg, LinearCfg};
use secateur_bayes::{Ctx, Module, ParamBuilder, ParamStore, Sampling, SeededRng};
use secateur_models::{build, Deterministic, LayerFactory, ModelSpec};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// The constant added to one output channel when probing the coupling: large against the `O(1)`
/// activations of a freshly initialised network, so that it passes a following ReLU and wins a
/// max pool.
pub const PROBE_DELTA: f64 = 1e3;

/// Where one layer's channels go: the consumer's input features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    /// Logical name of the consumer's weight (`features.3.weight`).
    pub name: String,
    /// Input features of the consumer per channel of the producer: `in_M / C_L` (`H·W` for a
    /// flatten into a linear layer, 1 otherwise).
    pub block: usize,
}

/// A weight layer whose outputs form groups, with every tensor a group owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerGroups {
    /// Logical name of the weight (`features.0.weight`).
    pub name: String,
    /// The layer's parameter path (`features.0`).
    pub prefix: String,
    /// Linear or convolution.
    pub kind: LayerKind,
    /// Number of groups: output channels or units, the first dimension of the weight.
    pub groups: usize,
    /// Logical name of the layer's bias (`features.0.bias`; `{name}_mu` in a Bayesian store), if
    /// it has one.
    pub bias: Option<String>,
    /// Parameter path of the batch norm that normalises the layer's output (`features.1`), if any.
    pub batch_norm: Option<String>,
    /// The next weight layer, which reads the groups' outputs.
    pub consumer: Consumer,
}

impl LayerGroups {
    /// The consumer's input features (columns of its weight, dimension 1) that carry group `g`:
    /// `[g·b, (g+1)·b)`.
    pub fn consumer_columns(&self, g: usize) -> Range<usize> {
        g * self.consumer.block..(g + 1) * self.consumer.block
    }

    /// The coupled vectors of the group (bias, batch-norm γ, β, running mean and variance), by
    /// logical name with their role, in that order; entry `g` of each belongs to group `g`.
    pub fn vectors(&self) -> Vec<(String, VectorRole)> {
        let mut v = Vec::new();
        if let Some(b) = &self.bias {
            v.push((b.clone(), VectorRole::Bias));
        }
        if let Some(q) = &self.batch_norm {
            v.push((format!("{q}.weight"), VectorRole::BnWeight));
            v.push((format!("{q}.bias"), VectorRole::BnBias));
            v.push((format!("{q}.running_mean"), VectorRole::BnRunningMean));
            v.push((format!("{q}.running_var"), VectorRole::BnRunningVar));
        }
        v
    }
}

/// What a coupled vector is to its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum VectorRole {
    /// The layer's bias.
    Bias,
    /// The batch norm's scale γ.
    BnWeight,
    /// The batch norm's shift β.
    BnBias,
    /// The batch norm's running mean (a buffer).
    BnRunningMean,
    /// The batch norm's running variance (a buffer).
    BnRunningVar,
}

impl VectorRole {
    /// Whether pruning zeroes the entry: the bias, γ and β. The running statistics are left
    /// alone: with γ = β = 0 the batch norm emits 0 whatever they are (they matter only to
    /// compaction, which drops them).
    pub fn zeroed(self) -> bool {
        matches!(self, VectorRole::Bias | VectorRole::BnWeight | VectorRole::BnBias)
    }
}

/// A weight layer whose outputs do not form groups, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Logical name of the weight.
    pub name: String,
    /// Why its channels cannot be pruned as groups.
    pub reason: String,
}

/// The groups of an architecture: every weight layer, in forward order, either forms groups or
/// is refused with a reason; the last layer (the classifier) never forms groups.
#[derive(Debug, Clone, PartialEq)]
pub struct Coupling {
    /// Layers whose outputs form groups, in forward order.
    pub layers: Vec<LayerGroups>,
    /// Layers refused, in forward order (the classifier is not among them: see
    /// [`Coupling::output`]).
    pub refused: Vec<Refusal>,
    /// Logical name of the network's output layer, whose outputs are never groups.
    pub output: String,
    /// Every weight layer in forward order (the same as [`crate::geometry::record`] gives).
    pub geometry: Geometry,
}

impl Coupling {
    /// The groups of layer `name`; an error naming the layer and the reason if it forms none.
    pub fn layer(&self, name: &str) -> Result<&LayerGroups> {
        if let Some(l) = self.layers.iter().find(|l| l.name == name) {
            return Ok(l);
        }
        if let Some(r) = self.refused.iter().find(|r| r.name == name) {
            candle_core::bail!("layer `{name}` cannot be pruned by groups: {}", r.reason);
        }
        if name == self.output {
            candle_core::bail!("layer `{name}` is the network's output layer: its outputs are never groups");
        }
        candle_core::bail!("`{name}` is not a weight layer of the network");
    }

    /// The layer whose consumer is `name` (its producer), if any.
    pub fn producer_of(&self, name: &str) -> Option<&LayerGroups> {
        self.layers.iter().find(|l| l.consumer.name == name)
    }

    /// Total number of groups over all layers that form groups.
    pub fn num_groups(&self) -> usize {
        self.layers.iter().map(|l| l.groups).sum()
    }

    /// An error listing every refused layer with its reason, if any: for callers that need the
    /// whole network (every layer but the classifier) to form groups.
    pub fn require_all(&self) -> Result<()> {
        if self.refused.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = self
            .refused
            .iter()
            .map(|r| format!("`{}` ({})", r.name, r.reason))
            .collect();
        candle_core::bail!("layers that cannot be pruned by groups: {}", list.join("; "))
    }

    /// Checks the coupling against `store`: every weight (by logical name, `{name}_mu` in a
    /// Bayesian store) has its recorded shape, and every coupled vector resolves to a tensor of
    /// shape `[groups]`. The error names the tensor.
    pub fn check(&self, store: &ParamStore) -> Result<()> {
        for info in &self.geometry.layers {
            let (stored, var) = resolve(store, &info.name)?;
            if var.dims() != info.weight_shape.as_slice() {
                candle_core::bail!(
                    "weight `{stored}` has shape {:?}, the coupling was recorded for {:?}",
                    var.dims(),
                    info.weight_shape
                );
            }
        }
        for l in &self.layers {
            for (name, _) in l.vectors() {
                let t = vector(store, &name)?;
                if t.dims() != [l.groups] {
                    candle_core::bail!(
                        "`{name}` of layer `{}` has shape {:?}, expected [{}]",
                        l.name,
                        t.dims(),
                        l.groups
                    );
                }
            }
        }
        Ok(())
    }
}

/// The stored tensor of a coupled vector: a parameter `{name}` or `{name}_mu`, or a buffer.
pub(crate) fn vector(store: &ParamStore, name: &str) -> Result<Tensor> {
    if let Ok((_, v)) = resolve(store, name) {
        return Ok(v.as_tensor().clone());
    }
    match store.get(name) {
        Some(v) => Ok(v.as_tensor().clone()),
        None => candle_core::bail!("the model has no parameter or buffer `{name}` (nor `{name}_mu`)"),
    }
}

/// Records the coupling of the architecture `spec` (see the [module documentation](self)).
///
/// ```
/// use secateur_models::ModelSpec;
/// use secateur_pruning::structured::groups::record;
/// let c = record(&ModelSpec::new("lenet5", [1, 28, 28], 10)).unwrap();
/// let conv2 = c.layer("conv2.weight").unwrap();
/// assert_eq!((conv2.consumer.name.as_str(), conv2.consumer.block), ("fc1.weight", 25)); // 5×5 maps
/// assert!(c.layer("fc3.weight").is_err()); // the classifier
/// ```
pub fn record(spec: &ModelSpec) -> Result<Coupling> {
    record_built(spec.input, |factory, pb| build(spec, factory, pb))
}

/// Records the coupling of the network `build` makes with the layer factory and builder it is
/// given, for inputs of shape `input` (for networks configured beyond their [`ModelSpec`]).
pub fn record_built<N: Module + 'static>(
    input: [usize; 3],
    build: impl FnOnce(&dyn LayerFactory, &ParamBuilder) -> Result<N>,
) -> Result<Coupling> {
    let state: Shared = Arc::default();
    let factory = Probing { state: state.clone() };
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
    let net = build(&factory, &pb)?;
    let [c, h, w] = input;
    let mut rng = SeededRng::new(1);
    let x = rng.randn(&[1, c, h, w], DType::F32, &Device::Cpu)?;
    let x_other = rng.randn(&[1, c, h, w], DType::F32, &Device::Cpu)?;
    let probe = Prober {
        net: Box::new(net),
        state,
        store,
    };
    let base = probe.pass(&x, Intervention::default())?;
    let geometry = probe.geometry(&base)?;
    let Some(output) = base.order.last().cloned() else {
        candle_core::bail!("the network has no linear or convolution layer");
    };
    let (mut layers, mut refused) = (Vec::new(), Vec::new());
    for (pos, name) in base.order.iter().enumerate().take(base.order.len() - 1) {
        match probe.derive(name, pos, &base, &x, &x_other)? {
            Ok(l) => layers.push(l),
            Err(reason) => refused.push(Refusal {
                name: name.clone(),
                reason,
            }),
        }
    }
    if let Some(l) = base.calls.get(&output).filter(|&&n| n != 1) {
        refused.push(Refusal {
            name: output.clone(),
            reason: format!("called {l} times in one forward pass"),
        });
    }
    Ok(Coupling {
        layers,
        refused,
        output,
        geometry,
    })
}

// ------------------------------------------------------------------------------------------
// The probing factory.

/// An intervention on the forward pass.
#[derive(Debug, Clone, Default)]
struct Intervention {
    /// Add `delta` to output channel `c` of layer `name`.
    perturb: Option<(String, usize, f64)>,
    /// Replace the outputs of these layers by these tensors.
    clamp: BTreeMap<String, Tensor>,
}

/// What one forward pass recorded.
#[derive(Debug, Clone, Default)]
struct Pass {
    /// Logical weight names in the order of their first call.
    order: Vec<String>,
    /// Calls per layer.
    calls: BTreeMap<String, usize>,
    /// Input of each layer's first call.
    inputs: BTreeMap<String, Tensor>,
    /// Output of each layer's first call (after the intervention).
    outputs: BTreeMap<String, Tensor>,
    /// Layer kind and parameter path.
    layers: BTreeMap<String, (LayerKind, String)>,
}

#[derive(Default)]
struct State {
    pass: Pass,
    intervention: Intervention,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// The feature (channel) dimension of a layer's input or output: 1 for a convolution (`NCHW`),
/// the last for a linear layer (`[…, features]`).
fn feature_dim(kind: LayerKind, rank: usize) -> usize {
    match kind {
        LayerKind::Conv2d => 1,
        LayerKind::Linear => rank.saturating_sub(1),
    }
}

struct Probed {
    inner: Box<dyn Module>,
    name: String,
    prefix: String,
    kind: LayerKind,
    state: Shared,
}

impl Module for Probed {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let y = self.inner.forward(x, ctx)?;
        let mut st = lock(&self.state);
        let y = if let Some(t) = st.intervention.clamp.get(&self.name).filter(|t| t.dims() == y.dims()) {
            t.clone()
        } else if let Some((_, c, delta)) = st.intervention.perturb.as_ref().filter(|p| p.0 == self.name) {
            let d = feature_dim(self.kind, y.rank());
            let n = y.dim(d)?;
            let mut v = vec![0f32; n];
            if let Some(e) = v.get_mut(*c) {
                *e = *delta as f32;
            }
            let shape: Vec<usize> = (0..y.rank()).map(|i| if i == d { n } else { 1 }).collect();
            y.broadcast_add(&Tensor::from_vec(v, shape, y.device())?.to_dtype(y.dtype())?)?
        } else {
            y
        };
        let pass = &mut st.pass;
        let calls = pass.calls.entry(self.name.clone()).or_insert(0);
        *calls += 1;
        if *calls == 1 {
            pass.order.push(self.name.clone());
            pass.inputs.insert(self.name.clone(), x.clone());
            pass.outputs.insert(self.name.clone(), y.clone());
            pass.layers.insert(self.name.clone(), (self.kind, self.prefix.clone()));
        }
        Ok(y)
    }
}

struct Probing {
    state: Shared,
}

impl Probing {
    fn wrap(&self, pb: &ParamBuilder, kind: LayerKind, inner: Box<dyn Module>) -> Box<dyn Module> {
        Box::new(Probed {
            inner,
            name: pb.path("weight"),
            prefix: pb.prefix().to_string(),
            kind,
            state: self.state.clone(),
        })
    }
}

impl LayerFactory for Probing {
    fn name(&self) -> &str {
        "probing"
    }
    fn linear(&self, pb: &ParamBuilder, cfg: LinearCfg) -> Result<Box<dyn Module>> {
        Ok(self.wrap(pb, LayerKind::Linear, Deterministic.linear(pb, cfg)?))
    }
    fn conv2d(&self, pb: &ParamBuilder, cfg: Conv2dCfg) -> Result<Box<dyn Module>> {
        Ok(self.wrap(pb, LayerKind::Conv2d, Deterministic.conv2d(pb, cfg)?))
    }
}

/// Per feature along `dim`: how many entries of `a` and `b` differ, and the entries per feature.
fn changed_per_feature(a: &Tensor, b: &Tensor, dim: usize) -> Result<(Vec<usize>, usize)> {
    let f = a.dim(dim)?;
    let per = a.elem_count() / f.max(1);
    let ne = a
        .ne(b)?
        .to_dtype(DType::F32)?
        .transpose(0, dim)?
        .contiguous()?
        .reshape((f, per))?;
    let counts = ne.sum(1)?.to_vec1::<f32>()?;
    Ok((counts.into_iter().map(|c| c as usize).collect(), per))
}

fn differs(a: &Tensor, b: &Tensor) -> Result<bool> {
    if a.dims() != b.dims() {
        return Ok(true);
    }
    Ok(a.ne(b)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? > 0.0)
}

/// The input a pass recorded for layer `k`.
fn input<'a>(p: &'a Pass, k: &str) -> Result<&'a Tensor> {
    match p.inputs.get(k) {
        Some(t) => Ok(t),
        None => candle_core::bail!("layer `{k}` was not called in a probing pass (data-dependent control flow?)"),
    }
}

/// A short description of a set of feature indices.
fn describe(idx: &[usize]) -> String {
    match idx {
        [] => "none".into(),
        [a] => format!("[{a}]"),
        _ if idx.windows(2).all(|w| w[1] == w[0] + 1) => format!("[{}, {})", idx[0], idx[idx.len() - 1] + 1),
        _ => format!("{} features from {} to {}", idx.len(), idx[0], idx[idx.len() - 1]),
    }
}

struct Prober {
    net: Box<dyn Module>,
    state: Shared,
    store: ParamStore,
}

/// A refusal reason, or a derived layer.
type Derived = std::result::Result<LayerGroups, String>;

impl Prober {
    fn pass(&self, x: &Tensor, iv: Intervention) -> Result<Pass> {
        {
            let mut st = lock(&self.state);
            st.pass = Pass::default();
            st.intervention = iv;
        }
        let mut rng = SeededRng::new(0);
        let res = self.net.forward(x, &mut Ctx::eval(&mut rng, Sampling::Mean));
        let mut st = lock(&self.state);
        st.intervention = Intervention::default();
        let pass = std::mem::take(&mut st.pass);
        res.map(|_| pass)
    }

    fn weight_shape(&self, name: &str) -> Result<Vec<usize>> {
        match self.store.params().get(name) {
            Some(v) => Ok(v.dims().to_vec()),
            None => candle_core::bail!("recorded layer `{name}` has no weight"),
        }
    }

    /// The geometry of the base pass (one example), as [`crate::geometry::record`] computes it.
    fn geometry(&self, base: &Pass) -> Result<Geometry> {
        let mut layers = Vec::with_capacity(base.order.len());
        for (order, name) in base.order.iter().enumerate() {
            let weight_shape = self.weight_shape(name)?;
            let out = base.outputs[name].dims().to_vec();
            let out_features = weight_shape.first().copied().unwrap_or(1).max(1);
            layers.push(LayerInfo {
                name: name.clone(),
                kind: base.layers[name].0,
                order,
                positions: out.iter().product::<usize>() / out_features,
                weight_shape,
                output_shape: out,
            });
        }
        Ok(Geometry { layers })
    }

    /// Batch norms over `c` channels in the store: prefixes `Q` with `Q.weight`, `Q.bias`
    /// parameters and `Q.running_mean`, `Q.running_var` buffers of shape `[c]`.
    fn batch_norms(&self, c: usize) -> Vec<String> {
        let (params, buffers) = (self.store.params(), self.store.buffers());
        let is = |m: &BTreeMap<String, candle_core::Var>, k: &str| m.get(k).is_some_and(|v| v.dims() == [c]);
        params
            .keys()
            .filter_map(|k| k.strip_suffix(".weight"))
            .filter(|q| {
                is(&params, &format!("{q}.weight"))
                    && is(&params, &format!("{q}.bias"))
                    && is(&buffers, &format!("{q}.running_mean"))
                    && is(&buffers, &format!("{q}.running_var"))
            })
            .map(str::to_string)
            .collect()
    }

    /// Sets entries `idx` of the first dimension of parameter `name` to zero (or, with
    /// `add = Some(d)`, adds `d` to them); returns the old value to restore.
    fn edit(&self, name: &str, idx: &[usize], add: Option<f64>) -> Result<Tensor> {
        let Some(var) = self.store.get(name) else {
            candle_core::bail!("no parameter `{name}`");
        };
        let old = var.as_tensor().copy()?;
        let n = var.dim(0)?;
        let mut v = vec![if add.is_some() { 0f32 } else { 1f32 }; n];
        for &i in idx {
            v[i] = add.map_or(0.0, |d| d as f32);
        }
        let shape: Vec<usize> = (0..var.rank()).map(|i| if i == 0 { n } else { 1 }).collect();
        let m = Tensor::from_vec(v, shape, var.device())?.to_dtype(var.dtype())?;
        let new = if add.is_some() {
            old.broadcast_add(&m)?
        } else {
            old.broadcast_mul(&m)?
        };
        var.set(&new)?;
        Ok(old)
    }

    fn restore(&self, name: &str, old: &Tensor) -> Result<()> {
        match self.store.get(name) {
            Some(v) => v.set(old),
            None => candle_core::bail!("no parameter `{name}`"),
        }
    }

    fn derive(&self, l: &str, pos: usize, base: &Pass, x: &Tensor, x_other: &Tensor) -> Result<Derived> {
        let calls = base.calls[l];
        if calls != 1 {
            return Ok(Err(format!(
                "called {calls} times in one forward pass (shared weights)"
            )));
        }
        let (kind, prefix) = base.layers[l].clone();
        let shape = self.weight_shape(l)?;
        let c = shape[0];
        let out = &base.outputs[l];
        let od = feature_dim(kind, out.rank());
        if out.dim(od)? != c {
            return Ok(Err(format!(
                "its output {:?} does not have its {c} units along dimension {od}",
                out.dims()
            )));
        }
        let mut probes = vec![0, c / 2, c - 1];
        probes.dedup();
        let later = &base.order[pos + 1..];

        // 2. the consumer
        let iv = Intervention {
            perturb: Some((l.to_string(), probes[0], PROBE_DELTA)),
            ..Default::default()
        };
        let p = self.pass(x, iv)?;
        let mut consumer = None;
        for k in later {
            if differs(input(&p, k)?, input(base, k)?)? {
                consumer = Some(k.clone());
                break;
            }
        }
        let Some(m) = consumer else {
            return Ok(Err("its output reaches no later weight layer".into()));
        };
        if base.calls[&m] != 1 {
            return Ok(Err(format!(
                "its consumer `{m}` is called {} times per forward pass",
                base.calls[&m]
            )));
        }
        let m_kind = base.layers[&m].0;
        let m_in = &base.inputs[&m];
        let md = feature_dim(m_kind, m_in.rank());
        let f = m_in.dim(md)?;
        let m_shape = self.weight_shape(&m)?;
        if m_shape.get(1) != Some(&f) {
            return Ok(Err(format!(
                "its consumer `{m}` reads {f} input features but its weight has shape {m_shape:?} (a grouped convolution?)"
            )));
        }
        if f % c != 0 {
            return Ok(Err(format!(
                "its consumer `{m}` reads {f} input features, not a multiple of its {c} channels"
            )));
        }
        let block = f / c;

        // 3. private, channel-wise path
        for &ch in &probes {
            let iv = Intervention {
                perturb: Some((l.to_string(), ch, PROBE_DELTA)),
                clamp: BTreeMap::from([(m.clone(), base.outputs[&m].clone())]),
            };
            let p = self.pass(x, iv)?;
            for k in later.iter().filter(|k| **k != m) {
                if differs(input(&p, k)?, input(base, k)?)? {
                    return Ok(Err(format!(
                        "its output also reaches `{k}` other than through `{m}` (a residual or skip connection)"
                    )));
                }
            }
            let (counts, per) = changed_per_feature(input(&p, &m)?, m_in, md)?;
            let changed: Vec<usize> = (0..f).filter(|&j| counts[j] > 0).collect();
            let expected: Vec<usize> = (ch * block..(ch + 1) * block).collect();
            if changed != expected || expected.iter().any(|&j| counts[j] != per) {
                return Ok(Err(format!(
                    "channel {ch} reaches input features {} of `{m}`, not all of the block {} (not a channel-wise path)",
                    describe(&changed),
                    describe(&expected)
                )));
            }
        }

        // 4. the consumer reads nothing but this layer
        let held = BTreeMap::from([(l.to_string(), out.clone())]);
        let p = self.pass(
            x_other,
            Intervention {
                clamp: held.clone(),
                ..Default::default()
            },
        )?;
        if differs(input(&p, &m)?, m_in)? {
            return Ok(Err(format!(
                "the input of its consumer `{m}` also depends on other layers (a residual sum or a concatenation)"
            )));
        }

        // 5. the batch norm on the path
        let mut on_path = Vec::new();
        for q in self.batch_norms(c) {
            let beta = format!("{q}.bias");
            let old = self.edit(&beta, &[probes[0]], Some(PROBE_DELTA))?;
            let p = self.pass(
                x,
                Intervention {
                    clamp: held.clone(),
                    ..Default::default()
                },
            );
            self.restore(&beta, &old)?;
            if differs(input(&p?, &m)?, m_in)? {
                on_path.push(q);
            }
        }
        if on_path.len() > 1 {
            return Ok(Err(format!(
                "several batch norms act on its output: {}",
                on_path.iter().map(|q| format!("`{q}`")).collect::<Vec<_>>().join(", ")
            )));
        }
        let batch_norm = on_path.pop();
        let bias =
            Some(format!("{prefix}.bias")).filter(|b| self.store.params().get(b).is_some_and(|v| v.dims() == [c]));

        // 6. zeroing the group zeroes the consumer's input block
        let mut zeroed = vec![l.to_string()];
        zeroed.extend(bias.clone());
        if let Some(q) = &batch_norm {
            zeroed.push(format!("{q}.weight"));
            zeroed.push(format!("{q}.bias"));
        }
        let mut saved = Vec::new();
        for t in &zeroed {
            saved.push((t.clone(), self.edit(t, &probes, None)?));
        }
        let p = self.pass(x, Intervention::default());
        for (t, old) in &saved {
            self.restore(t, old)?;
        }
        let p = p?;
        let m_zeroed = input(&p, &m)?;
        for &ch in &probes {
            let blk = m_zeroed.narrow(md, ch * block, block)?;
            let nonzero = blk.ne(0f64)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
            if nonzero > 0.0 {
                return Ok(Err(format!(
                    "zeroing channel {ch} (weights, bias, batch-norm γ and β) leaves its input block of `{m}` non-zero \
                     (an activation with f(0) ≠ 0 or a shift on the path)"
                )));
            }
        }
        Ok(Ok(LayerGroups {
            name: l.to_string(),
            prefix,
            kind,
            groups: c,
            bias,
            batch_norm,
            consumer: Consumer { name: m, block },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(c: &Coupling) -> Vec<&str> {
        c.layers.iter().map(|l| l.name.as_str()).collect()
    }

    #[test]
    fn lenet5_mlp_coupling() -> Result<()> {
        let c = record(&ModelSpec::new("lenet5", [1, 28, 28], 10))?;
        assert_eq!(names(&c), ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]);
        assert!(c.refused.is_empty(), "{:?}", c.refused);
        let l = |n: &str| c.layer(n).unwrap().clone();
        assert_eq!(
            l("conv1.weight").consumer,
            Consumer {
                name: "conv2.weight".into(),
                block: 1
            }
        );
        assert_eq!(
            l("conv2.weight").consumer,
            Consumer {
                name: "fc1.weight".into(),
                block: 25
            }
        );
        assert_eq!(
            l("fc2.weight").consumer,
            Consumer {
                name: "fc3.weight".into(),
                block: 1
            }
        );
        assert_eq!(l("conv1.weight").bias.as_deref(), Some("conv1.bias"));
        assert!(c.layers.iter().all(|l| l.batch_norm.is_none()));
        assert_eq!(c.output, "fc3.weight");
        assert!(c.layer("fc3.weight").unwrap_err().to_string().contains("output layer"));
        // the geometry is the one the unstructured code records
        assert_eq!(
            c.geometry,
            crate::geometry::record(&ModelSpec::new("lenet5", [1, 28, 28], 10))?
        );

        let c = record(&ModelSpec::new("mlp", [1, 28, 28], 10))?;
        assert_eq!(names(&c), ["fc1.weight", "fc2.weight"]);
        assert_eq!(c.num_groups(), 400);
        Ok(())
    }

    #[test]
    fn vgg11_coupling_finds_the_batch_norms() -> Result<()> {
        let spec = ModelSpec::new("vgg11", [3, 16, 16], 10);
        let c = record(&spec)?;
        assert!(c.refused.is_empty(), "{:?}", c.refused);
        // convolutions at features.{0,4,8,11,15,18,22,25}, each followed by its batch norm at i+1
        let idx = [0, 4, 8, 11, 15, 18, 22, 25];
        assert_eq!(c.layers.len(), idx.len());
        for (l, i) in c.layers.iter().zip(idx) {
            assert_eq!(l.name, format!("features.{i}.weight"));
            assert_eq!(l.batch_norm, Some(format!("features.{}", i + 1)));
            assert_eq!(l.bias, Some(format!("features.{i}.bias")));
            assert_eq!(l.consumer.block, 1);
        }
        assert_eq!(c.layers[7].consumer.name, "classifier.weight");
        assert_eq!(c.geometry, crate::geometry::record(&spec)?);
        Ok(())
    }

    #[test]
    fn resnet20_refuses_layers_joined_by_residual_sums() -> Result<()> {
        let c = record(&ModelSpec::new("resnet20", [3, 8, 8], 10))?;
        // the first convolution of each of the 9 blocks forms groups, with its bn1
        assert_eq!(c.layers.len(), 9);
        for l in &c.layers {
            assert!(l.name.ends_with(".conv1.weight"), "{}", l.name);
            assert_eq!(l.consumer.name, l.name.replace("conv1", "conv2"));
            assert_eq!(l.batch_norm.as_deref(), Some(l.prefix.replace("conv1", "bn1").as_str()));
            assert_eq!(l.bias, None);
        }
        // the stem and every conv2 feed a residual sum
        assert_eq!(c.refused.len(), 10);
        assert_eq!(c.refused[0].name, "conv1.weight");
        let err = c.layer("layer1.0.conv2.weight").unwrap_err().to_string();
        assert!(
            err.contains("layer1.0.conv2.weight") && err.contains("residual"),
            "{err}"
        );
        let err = c.require_all().unwrap_err().to_string();
        assert!(err.contains("layer3.2.conv2.weight"), "{err}");
        Ok(())
    }
}
