//! Layer geometry from a forward pass: which weight layers run in which order, and how many
//! output positions each produces per example (for FLOP counts and first/last-layer exclusions).
//!
//! Architectures hold their layers as `Box<dyn Module>`, so a layer cannot be asked for its
//! output size. Instead [`record`] builds a throwaway copy of the architecture through a
//! *recording* [`LayerFactory`] that wraps every linear and convolution layer made by the
//! deterministic factory, runs one forward pass of a single all-zeros example in evaluation mode,
//! and logs each wrapped layer's output shape in call order. Parameter names come from the same
//! [`ParamBuilder`] paths as in the real model, so the recorded logical names (`features.0.weight`)
//! are those of the deterministic and of every Bayesian variant of the architecture.
//!
//! FLOPs (multiply–accumulates) per example of a weight tensor with `n` entries used at `P`
//! output positions are `n · P`: for a linear layer `in · out · P` with `P` the number of rows per
//! example (1 for an MLP, the token count in a ViT); for a convolution
//! `k² · C_in/groups · C_out · H_out · W_out`, `P = H_out · W_out`.

use candle_core::{DType, Device, Result, Tensor};
use secateur_bayes::nn::{Conv2dCfg, LinearCfg};
use secateur_bayes::{Ctx, Module, ParamBuilder, ParamStore, Sampling, SeededRng};
use secateur_models::{build, Deterministic, LayerFactory, ModelSpec};
use std::sync::{Arc, Mutex};

/// The kind of a weight layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// A fully connected layer, weight `[out, in]`.
    Linear,
    /// A 2-D convolution, weight `[out, in/groups, k, k]`.
    Conv2d,
}

/// One weight layer as seen in a forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerInfo {
    /// Logical name of the weight (`features.0.weight`).
    pub name: String,
    /// Linear or convolution.
    pub kind: LayerKind,
    /// Position in the forward pass (0 = the layer applied to the input first).
    pub order: usize,
    /// Weight shape.
    pub weight_shape: Vec<usize>,
    /// Output shape for a batch of one example, as the layer returned it.
    pub output_shape: Vec<usize>,
    /// Output positions per example: `H_out · W_out` for a convolution, rows per example for a
    /// linear layer (1 for a flat input, the token count for a transformer).
    pub positions: usize,
}

impl LayerInfo {
    /// Multiply–accumulates per example with `kept` non-zero weights: `kept · positions`.
    pub fn flops(&self, kept: usize) -> u64 {
        kept as u64 * self.positions as u64
    }
}

/// The weight layers of an architecture in forward order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Geometry {
    /// Layers in the order of their first call.
    pub layers: Vec<LayerInfo>,
}

impl Geometry {
    /// Multiply–accumulates per example of every weight layer with all its weights kept:
    /// `Σ_l |W_l| · positions_l`.
    ///
    /// ```
    /// use secateur_models::ModelSpec;
    /// // LeNet-300-100: every weight is used once per example
    /// let g = secateur_pruning::geometry::record(&ModelSpec::new("mlp", [1, 28, 28], 10)).unwrap();
    /// assert_eq!(g.dense_flops(), 784 * 300 + 300 * 100 + 100 * 10);
    /// ```
    pub fn dense_flops(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| l.flops(l.weight_shape.iter().product()))
            .sum()
    }

    /// The layer with logical weight name `name`.
    pub fn get(&self, name: &str) -> Option<&LayerInfo> {
        self.layers.iter().find(|l| l.name == name)
    }
    /// The layer applied to the input first.
    pub fn first(&self) -> Option<&LayerInfo> {
        self.layers.first()
    }
    /// The layer applied last (the classifier).
    pub fn last(&self) -> Option<&LayerInfo> {
        self.layers.last()
    }
}

type Log = Arc<Mutex<Vec<(String, LayerKind, Vec<usize>)>>>;

struct Recorded {
    inner: Box<dyn Module>,
    name: String,
    kind: LayerKind,
    log: Log,
}

impl Module for Recorded {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let y = self.inner.forward(x, ctx)?;
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if !log.iter().any(|(n, _, _)| n == &self.name) {
            log.push((self.name.clone(), self.kind, y.dims().to_vec()));
        }
        Ok(y)
    }
}

struct Recording {
    log: Log,
}

impl Recording {
    fn wrap(&self, pb: &ParamBuilder, kind: LayerKind, inner: Box<dyn Module>) -> Box<dyn Module> {
        Box::new(Recorded {
            inner,
            name: pb.path("weight"),
            kind,
            log: self.log.clone(),
        })
    }
}

impl LayerFactory for Recording {
    fn name(&self) -> &str {
        "recording"
    }
    fn linear(&self, pb: &ParamBuilder, cfg: LinearCfg) -> Result<Box<dyn Module>> {
        Ok(self.wrap(pb, LayerKind::Linear, Deterministic.linear(pb, cfg)?))
    }
    fn conv2d(&self, pb: &ParamBuilder, cfg: Conv2dCfg) -> Result<Box<dyn Module>> {
        Ok(self.wrap(pb, LayerKind::Conv2d, Deterministic.conv2d(pb, cfg)?))
    }
}

/// Records the weight layers of the architecture `spec` (see the [module documentation](self)):
/// a deterministic copy is built in f32 on the CPU and applied to one all-zeros example.
///
/// ```
/// use secateur_models::ModelSpec;
/// let g = secateur_pruning::geometry::record(&ModelSpec::new("lenet5", [1, 28, 28], 10)).unwrap();
/// assert_eq!(g.first().unwrap().name, "conv1.weight");
/// assert_eq!(g.first().unwrap().positions, 28 * 28);
/// assert_eq!(g.last().unwrap().name, "fc3.weight");
/// ```
pub fn record(spec: &ModelSpec) -> Result<Geometry> {
    record_built(spec.input, |factory, pb| build(spec, factory, pb))
}

/// Records the weight layers of the network `build` makes with the layer factory and builder it
/// is given, for inputs of shape `input` (as [`record`] does for a named architecture): for
/// networks configured beyond their [`ModelSpec`], such as an MLP with other hidden widths.
pub fn record_built<N: Module>(
    input: [usize; 3],
    build: impl FnOnce(&dyn LayerFactory, &ParamBuilder) -> Result<N>,
) -> Result<Geometry> {
    let log: Log = Arc::default();
    let factory = Recording { log: log.clone() };
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
    let net = build(&factory, &pb)?;
    let [c, h, w] = input;
    let x = Tensor::zeros((1, c, h, w), DType::F32, &Device::Cpu)?;
    let mut rng = SeededRng::new(0);
    net.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
    let params = store.params();
    let log = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut layers = Vec::with_capacity(log.len());
    for (order, (name, kind, out)) in log.into_iter().enumerate() {
        let weight_shape = params
            .get(&name)
            .map(|v| v.dims().to_vec())
            .ok_or_else(|| candle_core::Error::Msg(format!("recorded layer `{name}` has no weight")))?;
        // output entries per output channel/feature, for a batch of one: H_out·W_out for a
        // convolution, rows for a linear layer (architectures may fold tokens into the batch)
        let out_features = weight_shape.first().copied().unwrap_or(1).max(1);
        let positions = out.iter().product::<usize>() / out_features;
        let output_shape = out;
        layers.push(LayerInfo {
            name,
            kind,
            order,
            weight_shape,
            output_shape,
            positions,
        });
    }
    Ok(Geometry { layers })
}
