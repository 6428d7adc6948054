//! SynFlow, iterative synaptic flow pruning (Tanaka, Kunin, Yamins & Ganguli 2020).

use crate::criterion::{grads_of, Criterion, ScoringContext};
use crate::mask::Scores;
use candle_core::{DType, Result, Tensor};
use secateur_bayes::{Mode, ParamBuilder, ParamStore, Sampling, SeededRng};
use secateur_models::{build, LayerFactory, ModelSpec, Network};

/// A float64 copy of a model: the architecture `spec` built again with `factory` in f64 on the
/// store's device, holding the values of every parameter and buffer of `store` (names and shapes
/// must match: the same spec and factory). Scores computed on the twin have the same logical
/// names, so its masks apply to the original model. For SynFlow on deep networks, whose
/// synaptic flow overflows f32.
pub fn float64_twin(spec: &ModelSpec, factory: &dyn LayerFactory, store: &ParamStore) -> Result<(Network, ParamStore)> {
    let device = store
        .params()
        .values()
        .next()
        .map(|v| v.device().clone())
        .unwrap_or(candle_core::Device::Cpu);
    let twin = ParamStore::new();
    let pb = ParamBuilder::new(twin.clone(), SeededRng::new(0), DType::F64, device);
    let net = build(spec, factory, &pb)?;
    twin.load(&store.tensors().into_iter().collect())?;
    Ok((net, twin))
}

/// The SynFlow score (Tanaka et al. 2020), data-free:
///
/// 1. every parameter and buffer is replaced by its absolute value, `θ ← |θ|` (batch norm in
///    evaluation mode, as the reference's `model.eval()`; stochastic layers at their posterior
///    mean);
/// 2. an all-ones input `1` of one example gives the synaptic flow `R = 1ᵀ f(1; |θ|)`, the sum of
///    the outputs;
/// 3. the score is `S = |θ ⊙ ∂R/∂θ|`;
/// 4. every parameter and buffer gets back its exact original value (signs restored).
///
/// **Overflow.** `R` is a product of layer norms and overflows f32 in deep networks, and so do
/// its gradients. This implementation back-propagates `ln R` instead: `∂ ln R/∂θ = (∂R/∂θ)/R`,
/// so the returned score is `S / R` — the same ranking (one global factor), with magnitudes
/// of order `1/n` (for a bias-free ReLU network `Σ θ ∂R/∂θ = L·R` by Euler's theorem, so the
/// scores sum to the number of layers `L`). Only the forward value `R` itself must be finite; if
/// it is not, the error says to score a float64 copy of the model, made by [`float64_twin`]. (At
/// PyTorch's initialisation, in f32: ResNet-20, ResNet-18 and VGG-16 on 32×32 inputs are
/// fine, ResNet-56 overflows; its f64 twin does not.)
///
/// The input shape is `input_shape` (`[C, H, W]`) if given, otherwise that of the scoring
/// data's examples. Run it iteratively ([`SynFlow::DEFAULT_ROUNDS`] rounds in the paper) with
/// [`crate::allocate::prune_iteratively`].
#[derive(Debug, Clone, Default)]
pub struct SynFlow {
    /// Shape of one input example; `None`: taken from the scoring data.
    pub input_shape: Option<Vec<usize>>,
}

impl SynFlow {
    /// Score-and-prune rounds of the paper (Tanaka et al. 2020: 100), its registry entry's
    /// default rounds.
    pub const DEFAULT_ROUNDS: usize = 100;

    /// SynFlow on inputs of the shape of `spec` (`[C, H, W]`).
    pub fn default_for(spec: &ModelSpec) -> Self {
        Self {
            input_shape: Some(spec.input.to_vec()),
        }
    }
}

impl Criterion for SynFlow {
    fn name(&self) -> &str {
        "synflow"
    }
    /// Only for the input shape, and only without [`SynFlow::input_shape`].
    fn needs_data(&self) -> bool {
        self.input_shape.is_none()
    }
    fn score(&self, cx: &mut ScoringContext) -> Result<Scores> {
        let shape: Vec<usize> = match (&self.input_shape, cx.data) {
            (Some(s), _) => s.clone(),
            (None, Some(d)) => d.inputs.dims()[1..].to_vec(),
            (None, None) => candle_core::bail!("criterion `synflow` needs an input shape or scoring data"),
        };
        let targets = cx.targets();
        let Some(first) = targets.values().next() else {
            return Ok(Scores::new());
        };
        let (dtype, device) = (first.dtype(), first.device().clone());
        // 1. linearise: every parameter and buffer to |θ|, keeping exact copies
        let mut all = cx.store.params();
        all.extend(cx.store.buffers());
        let saved: Vec<(candle_core::Var, Tensor)> = all
            .values()
            .map(|v| Ok((v.clone(), v.as_tensor().copy()?)))
            .collect::<Result<_>>()?;
        for (v, t) in &saved {
            v.set(&t.abs()?)?;
        }
        let (mode, sampling) = (cx.mode, cx.sampling);
        cx.mode = Mode::Eval;
        cx.sampling = Sampling::Mean;
        let result = (|| -> Result<Scores> {
            let mut dims = vec![1];
            dims.extend(&shape);
            let x = Tensor::ones(dims, dtype, &device)?;
            let r = cx.forward(&x)?.sum_all()?;
            let rv = r.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !(rv.is_finite() && rv > 0.0) {
                candle_core::bail!(
                    "synflow: the synaptic flow R = {rv} is not a finite positive number in {dtype:?}; score a float64 copy of the model"
                );
            }
            let g = grads_of(&targets, &r.log()?.backward()?)?;
            targets
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.as_tensor().mul(&g[k])?.abs()?)))
                .collect()
        })();
        cx.mode = mode;
        cx.sampling = sampling;
        // 4. restore the exact values
        for (v, t) in &saved {
            v.set(t)?;
        }
        result
    }
}
