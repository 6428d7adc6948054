//! Bernoulli gates on units and filters with a Gaussian scale-mixture (GSM) prior and a
//! hyper-prior on the inclusion probabilities, after Guenter & Sideris 2022 ("Robust learning of
//! parsimonious deep neural networks", arXiv 2205.04650).
//!
//! # The model
//!
//! Every **input** unit `j` of a [`GateLinear`] (every input channel of a [`GateConv2d`]) is
//! multiplied by a gate `ξⱼ ∈ {0, 1}`; the gate removes the unit (the filter of the previous
//! layer) together with the group `wⱼ` of the `nⱼ` weights it feeds (column `j` of a linear
//! weight, `[out/groups, k, k]` of a convolution). Gating inputs rather than outputs means that a
//! network's classifier outputs are never gated, that every hidden unit of an MLP (the 300 and 100
//! of LeNet-300-100) and every filter of a CNN is the input of exactly one gated layer, and that
//! batch norm between a convolution and the next one cannot undo a gate; the price is that the
//! network's own inputs (pixels, image channels) are gated too.
//!
//! - **Variational posterior** (Guenter & Sideris 2022): `q(ξⱼ) = Bernoulli(θⱼ)`,
//!   θⱼ stored directly, up to the step-size factor κ (`gate_theta = θ/κ`, projected onto
//!   `[0, 1]`, below); the weights are point estimates `μ` (`weight_mu`), as in adaptive dropout;
//!   the bias is deterministic and not gated.
//! - **Prior** ([`GsmGatePrior`]): `ξⱼ | πⱼ ~ Bernoulli(πⱼ)`, and given `ξⱼ = 1` the group is a
//!   Gaussian scale mixture `wⱼ | σⱼ² ~ N(0, σⱼ² I)`, `σⱼ² ~ InvGamma(a, b)`, i.e. the multivariate
//!   Student-t `p(wⱼ) ∝ (1 + ‖wⱼ‖²/(2b))^{−(a + nⱼ/2)}`; given `ξⱼ = 0` the weights are unused and
//!   `q(wⱼ | ξⱼ = 0) = p(wⱼ | ξⱼ = 0)` (Titsias & Lázaro-Gredilla 2011's spike-and-slab choice).
//! - **Hyper-prior on the inclusion probability**: `h_λ(π) ∝ 1 / (1 + (e^λ − 1) π)` on `[0, 1]`,
//!   with `πⱼ` set to its optimum. For `λ = 0` it is the flat ("flattening") hyper-prior and
//!   `min_π KL(Bern(θ) ‖ Bern(π)) = 0`; in general (with `h_λ` normalised)
//!   `min_π [KL(Bern(θ) ‖ Bern(π)) − log h_λ(π)] = λθ + log(λ/(e^λ − 1))`: linear in θ.
//!
//! The divergence ([`Variational::divergence`] with [`Divergence::Kl`]) is therefore, up to an
//! additive constant,
//!
//! `D = Σⱼ θⱼ · [λ + (a + nⱼ/2) · log(1 + ‖μⱼ‖² / (2b))]`,
//!
//! linear in every θⱼ. For fixed weights the expected negative log-likelihood under independent
//! Bernoulli gates is multilinear in θ, so the ELBO is minimised at a vertex `θ ∈ {0, 1}ᴺ`: the
//! gates converge to 0 or 1 and the trained network is deterministic (the property Guenter & Sideris 2022 prove for
//! their hyper-prior).
//!
//! # Choices where the paper's text was not obtainable
//!
//! Only the abstract of Guenter & Sideris 2022 could be read here. The following are secateur's
//! choices, made to keep the properties the abstract states (GSM priors, Bernoulli gates per
//! unit/filter, a hyper-prior that makes the optimal gate probabilities 0 or 1):
//! - the exact GSM mixing law (inverse gamma, giving a Student-t group prior) and the form of the
//!   hyper-prior `h_λ` above;
//! - a point-mass posterior has no finite KL from a density: the weight term is the GSM's
//!   negative log-density **relative to its value at zero** (a unit whose weights are all zero is
//!   functionally absent), and the cost of a unit's presence is carried by λ (`unit_cost`);
//! - gradients through the gates: the straight-through estimator (Bengio, Léonard & Courville
//!   2013): the forward pass uses the sampled `ξ ∈ {0, 1}`, the backward pass treats `∂ξ/∂θ = 1`
//!   (exact for a loss linear in each gate, biased otherwise); gates are drawn per example, as
//!   dropout masks;
//! - the paper runs projected SGD on `θ ∈ [0, 1]`; secateur's optimisers have no projection hook,
//!   so the layer projects in its forward pass: it uses `θ = clamp(κ · gate_theta, 0, 1)` and passes
//!   the gradient straight through the clamp (a stored value outside `[0, 1]` acts as 0 or 1 and
//!   drifts back towards the box while the gradient points into it). The paper's projected SGD
//!   has its own step size for θ; here `lr_scale` κ plays that part: the stored parameter is
//!   `gate_theta = θ/κ` and `θ = clamp(κ · gate_theta, 0, 1)`, which for Adam-type optimisers
//!   multiplies the step size of θ by κ (default 1). Storing θ rather than a logit keeps
//!   the optimiser's steps in θ units, so gates reach 0 or 1 in a few epochs (a sigmoid logit
//!   only approaches them, at a rate that vanishes near the ends).
//!
//! At test time (`Mode::Eval` with `Sampling::Mean`) a unit is removed iff `θ < threshold`
//! (default ½, the median-probability model of Barbieri & Berger 2004) and a kept unit is scaled
//! by its inclusion probability: the gate value is `θ · [θ ≥ threshold]`, the posterior-mean gate
//! truncated at the threshold (dropout's weight-scaling rule, Srivastava et al. 2014, for the
//! kept units; the scale folds into the next weights). Once the gates have converged to 0 or 1
//! this is the deterministic pruned network. Every other context samples the gates.
//!
//! Parameters, under the builder's path: `weight_mu`, `bias` (deterministic, if any) and
//! `gate_theta` (`[in]` or `[in_ch]`).

use crate::ctx::{Ctx, Mode, Sampling};
use crate::divergence::Divergence;
use crate::error::ConfigError;
use crate::init::Init;
use crate::module::Module;
use crate::params::ParamBuilder;
use crate::rng::SeededRng;
use crate::variational::{PosteriorStats, TestTimeWeight, Variational};
use candle_core::{DType, Result, Tensor, D};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::Conv2dGeom;

/// The default GSM shape `a` of the inverse-gamma mixing law.
pub const DEFAULT_SHAPE: f64 = 1.0;
/// The default GSM scale `b` of the inverse-gamma mixing law.
pub const DEFAULT_SCALE: f64 = 1.0;
/// The default cost λ (nats) of an included unit: 0, the flat hyper-prior.
pub const DEFAULT_UNIT_COST: f64 = 0.0;
/// The default initial inclusion probability θ₀.
pub const DEFAULT_INIT_INCLUSION: f64 = 0.9;
/// The default test-time threshold on θ.
pub const DEFAULT_GATE_THRESHOLD: f64 = 0.5;
/// The default step-size multiplier κ of the gates.
pub const DEFAULT_LR_SCALE: f64 = 1.0;

/// The Gaussian scale-mixture prior with Bernoulli gates and a hyper-prior on the inclusion
/// probabilities (see the module documentation), as a validated value.
///
/// - `shape` `a > 0` and `scale` `b > 0`: the inverse-gamma mixing law of the group variance,
///   `σ² ~ InvGamma(a, b)`, so that a gated group of `n` weights has the Student-t prior
///   `p(w) ∝ (1 + ‖w‖²/(2b))^{−(a + n/2)}`;
/// - `unit_cost` `λ ≥ 0`: the hyper-prior `h_λ(π) ∝ 1/(1 + (e^λ − 1)π)` on the inclusion
///   probability; λ nats per included unit after π is optimised (λ = 0: flat hyper-prior).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GsmGatePrior {
    /// Inverse-gamma shape `a > 0`.
    pub shape: f64,
    /// Inverse-gamma scale `b > 0`.
    pub scale: f64,
    /// Cost λ ≥ 0 of an included unit, in nats.
    pub unit_cost: f64,
}

impl Default for GsmGatePrior {
    /// `a = 1`, `b = 1`, `λ = 0`.
    fn default() -> Self {
        Self {
            shape: DEFAULT_SHAPE,
            scale: DEFAULT_SCALE,
            unit_cost: DEFAULT_UNIT_COST,
        }
    }
}

impl GsmGatePrior {
    /// A validated prior; the error names the bad field.
    ///
    /// ```
    /// use secateur_bayes::layers::gsm_gates::GsmGatePrior;
    /// assert!(GsmGatePrior::new(1.0, 0.5, 2.0).is_ok());
    /// assert!(GsmGatePrior::new(1.0, 0.0, 2.0).unwrap_err().to_string().contains("`scale`"));
    /// ```
    pub fn new(shape: f64, scale: f64, unit_cost: f64) -> std::result::Result<Self, ConfigError> {
        let p = Self {
            shape,
            scale,
            unit_cost,
        };
        p.validate().map(|_| p)
    }

    /// Checks `shape > 0`, `scale > 0` (finite) and `unit_cost ≥ 0` (finite).
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        let what = "gsm gate prior";
        if !(self.shape.is_finite() && self.shape > 0.0) {
            return Err(ConfigError::invalid(what, "shape", "finite and > 0", self.shape));
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(ConfigError::invalid(what, "scale", "finite and > 0", self.scale));
        }
        if !(self.unit_cost.is_finite() && self.unit_cost >= 0.0) {
            return Err(ConfigError::invalid(
                what,
                "unit_cost",
                "finite and ≥ 0",
                self.unit_cost,
            ));
        }
        Ok(())
    }

    /// The cost of including a group of `n` weights with squared norm `‖μ‖² = sumsq`, relative to
    /// an all-zero group: `−log p(μ) + log p(0) = (a + n/2) · log(1 + ‖μ‖²/(2b))`, `p` the
    /// Student-t GSM `∫ N(w; 0, σ²I) InvGamma(σ²; a, b) dσ²` (elementwise over `sumsq`;
    /// differentiable).
    pub fn group_cost(&self, sumsq: &Tensor, n: usize) -> Result<Tensor> {
        (sumsq / (2.0 * self.scale))?
            .affine(1.0, 1.0)?
            .log()?
            .affine(self.shape + n as f64 / 2.0, 0.0)
    }

    /// The hyper-prior's contribution after optimising π, per unit of θ:
    /// `min_π [KL(Bern(θ) ‖ Bern(π)) − log h_λ(π)] = λθ + log(λ/(e^λ − 1))` (the minimiser is
    /// `π* = θ / (θ + e^λ (1 − θ))`); returns λ (the constant `log(λ/(e^λ − 1))`, 0 for λ = 0,
    /// does not depend on θ and is dropped).
    pub fn inclusion_cost(&self) -> f64 {
        self.unit_cost
    }
}

fn check_lr_scale(what: &str, k: f64) -> std::result::Result<(), ConfigError> {
    if k.is_finite() && k > 0.0 {
        Ok(())
    } else {
        Err(ConfigError::invalid(what, "lr_scale", "finite and > 0", k))
    }
}

fn check_gate_fields(what: &str, init: f64, threshold: f64) -> std::result::Result<(), ConfigError> {
    if !(init > 0.0 && init < 1.0) {
        return Err(ConfigError::invalid(what, "init_inclusion", "in (0, 1)", init));
    }
    if !(threshold > 0.0 && threshold < 1.0) {
        return Err(ConfigError::invalid(what, "threshold", "in (0, 1)", threshold));
    }
    Ok(())
}

fn check_dims(what: &str, fields: &[(&'static str, usize)]) -> std::result::Result<(), ConfigError> {
    for &(field, v) in fields {
        if v == 0 {
            return Err(ConfigError::invalid(what, field, "≥ 1", 0.0));
        }
    }
    Ok(())
}

/// Configuration of a [`GateLinear`] layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GateLinearConfig {
    /// Input features (one gate each).
    pub in_dim: usize,
    /// Output features.
    pub out_dim: usize,
    /// Whether the layer has a (deterministic) bias.
    pub bias: bool,
    /// The GSM prior with its hyper-prior.
    pub prior: GsmGatePrior,
    /// Initial inclusion probability θ₀ ∈ (0, 1) of every gate (default 0.9).
    pub init_inclusion: f64,
    /// Test-time threshold ∈ (0, 1): a gate is open iff θ ≥ threshold (default ½).
    pub threshold: f64,
    /// Step-size multiplier κ > 0 of the gates: `θ = clamp(κ · gate_theta, 0, 1)` (default 1).
    pub lr_scale: f64,
}

impl GateLinearConfig {
    /// `in_dim → out_dim` with bias, the default prior, θ₀ = 0.9, threshold ½.
    pub fn new(in_dim: usize, out_dim: usize) -> Self {
        Self {
            in_dim,
            out_dim,
            bias: true,
            prior: GsmGatePrior::default(),
            init_inclusion: DEFAULT_INIT_INCLUSION,
            threshold: DEFAULT_GATE_THRESHOLD,
            lr_scale: DEFAULT_LR_SCALE,
        }
    }
    /// With or without bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
    /// With this prior.
    pub fn with_prior(mut self, prior: GsmGatePrior) -> Self {
        self.prior = prior;
        self
    }
    /// With this initial inclusion probability.
    pub fn with_init_inclusion(mut self, p: f64) -> Self {
        self.init_inclusion = p;
        self
    }
    /// With this test-time threshold.
    pub fn with_threshold(mut self, t: f64) -> Self {
        self.threshold = t;
        self
    }
    /// With this step-size multiplier of the gates.
    pub fn with_lr_scale(mut self, k: f64) -> Self {
        self.lr_scale = k;
        self
    }
    /// Checks the dimensions, the prior, θ₀ and the threshold; the error names the field.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        let what = "gsm gate linear";
        check_dims(what, &[("in_dim", self.in_dim), ("out_dim", self.out_dim)])?;
        self.prior.validate()?;
        check_gate_fields(what, self.init_inclusion, self.threshold)?;
        check_lr_scale(what, self.lr_scale)
    }
}

/// Configuration of a [`GateConv2d`] layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GateConv2dConfig {
    /// Input channels (one gate each).
    pub in_ch: usize,
    /// Output channels.
    pub out_ch: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride, padding, dilation, groups.
    pub geom: Conv2dGeom,
    /// Whether the layer has a (deterministic) bias.
    pub bias: bool,
    /// The GSM prior with its hyper-prior.
    pub prior: GsmGatePrior,
    /// Initial inclusion probability θ₀ ∈ (0, 1) of every gate (default 0.9).
    pub init_inclusion: f64,
    /// Test-time threshold ∈ (0, 1) (default ½).
    pub threshold: f64,
    /// Step-size multiplier κ > 0 of the gates: `θ = clamp(κ · gate_theta, 0, 1)` (default 1).
    pub lr_scale: f64,
}

impl GateConv2dConfig {
    /// A `kernel × kernel` convolution, stride 1, no padding, with bias, the default prior,
    /// θ₀ = 0.9, threshold ½.
    pub fn new(in_ch: usize, out_ch: usize, kernel: usize) -> Self {
        Self {
            in_ch,
            out_ch,
            kernel,
            geom: Conv2dGeom::default(),
            bias: true,
            prior: GsmGatePrior::default(),
            init_inclusion: DEFAULT_INIT_INCLUSION,
            threshold: DEFAULT_GATE_THRESHOLD,
            lr_scale: DEFAULT_LR_SCALE,
        }
    }
    /// With this geometry.
    pub fn with_geom(mut self, geom: Conv2dGeom) -> Self {
        self.geom = geom;
        self
    }
    /// With or without bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
    /// With this prior.
    pub fn with_prior(mut self, prior: GsmGatePrior) -> Self {
        self.prior = prior;
        self
    }
    /// With this initial inclusion probability.
    pub fn with_init_inclusion(mut self, p: f64) -> Self {
        self.init_inclusion = p;
        self
    }
    /// With this test-time threshold.
    pub fn with_threshold(mut self, t: f64) -> Self {
        self.threshold = t;
        self
    }
    /// With this step-size multiplier of the gates.
    pub fn with_lr_scale(mut self, k: f64) -> Self {
        self.lr_scale = k;
        self
    }
    /// Checks the dimensions, the geometry, the prior, θ₀ and the threshold.
    pub fn validate(&self) -> Result<()> {
        let what = "gsm gate conv2d";
        check_dims(
            what,
            &[("in_ch", self.in_ch), ("out_ch", self.out_ch), ("kernel", self.kernel)],
        )?;
        self.geom.check(what, self.in_ch, self.out_ch)?;
        self.prior.validate()?;
        check_gate_fields(what, self.init_inclusion, self.threshold)?;
        Ok(check_lr_scale(what, self.lr_scale)?)
    }
}

/// What the linear and conv variants share: the weight, the gate parameters, the prior.
#[derive(Debug, Clone)]
struct Gated {
    name: String,
    weight: Tensor,
    bias: Option<Tensor>,
    gate_theta: Tensor,
    prior: GsmGatePrior,
    threshold: f64,
    /// Convolution groups (1 for a linear layer).
    groups: usize,
    /// Step-size multiplier κ: θ = clamp(κ · gate_theta, 0, 1).
    lr_scale: f64,
}

impl Gated {
    /// `gate`: the prior, θ₀ and the threshold.
    fn build(
        pb: &ParamBuilder,
        shape: &[usize],
        gates: usize,
        fan_in: usize,
        bias: bool,
        gate: (GsmGatePrior, f64, f64, f64),
        groups: usize,
    ) -> Result<Self> {
        let (prior, init, threshold, lr_scale) = gate;
        let weight = pb.param("weight_mu", shape, Init::TorchDefault)?;
        let bias = if bias {
            Some(pb.param("bias", &[shape[0]], Init::torch_bias(fan_in))?)
        } else {
            None
        };
        let gate_theta = pb.param("gate_theta", &[gates], Init::Const(init / lr_scale))?;
        Ok(Self {
            name: pb.prefix().to_string(),
            weight,
            bias,
            gate_theta,
            prior,
            threshold,
            groups,
            lr_scale,
        })
    }

    fn gates(&self) -> usize {
        self.gate_theta.elem_count()
    }

    /// θ = clamp(κ · gate_theta, 0, 1) with the gradient passed straight through the clamp:
    /// `g + stop_grad(clamp(g, 0, 1) − g)`, `g = κ · gate_theta`.
    fn theta(&self) -> Result<Tensor> {
        let g = (&self.gate_theta * self.lr_scale)?;
        &g + (g.clamp(0.0, 1.0)? - &g)?.detach()
    }

    /// The test-time gates: 1 where θ ≥ threshold (detached).
    fn open(&self) -> Result<Tensor> {
        self.theta()?.detach().ge(self.threshold)?.to_dtype(self.weight.dtype())
    }

    /// `x` (`[rows, gates, …]`) times its gates, broadcast over the trailing dimensions: the
    /// test-time gates `θ · [θ ≥ threshold]` in `Eval` + `Mean`, otherwise per-example draws
    /// `ξ ~ Bernoulli(θ)` with the straight-through gradient `ξ + θ − stop_grad(θ)`. On the CPU
    /// the sampled case is one fused pass (`secateur_kernels::gates`: the same values and
    /// gradients, the same draws).
    fn apply(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let (rows, g) = (x.dims()[0], self.gates());
        let mut shape = vec![1, g];
        shape.resize(x.rank(), 1);
        if ctx.mode == Mode::Eval && ctx.sampling == Sampling::Mean {
            return x.broadcast_mul(&self.mean_gates()?.reshape(shape)?);
        }
        let theta = self.theta()?;
        ctx.mark_noisy();
        let u = ctx
            .rng
            .rand_uniform(&[rows, g], 0.0, 1.0, theta.dtype(), theta.device())?;
        if let Some(y) = secateur_kernels::gates::gate_inputs(x, &theta, &u)? {
            return Ok(y);
        }
        let xi = u
            .broadcast_lt(&theta.detach().reshape((1, g))?)?
            .to_dtype(theta.dtype())?;
        let st = (&theta - theta.detach())?.reshape((1, g))?;
        shape[0] = rows;
        x.broadcast_mul(&xi.broadcast_add(&st)?.reshape(shape)?)
    }

    /// The test-time gates `θ · [θ ≥ threshold]`, shape `[1, gates]`.
    fn mean_gates(&self) -> Result<Tensor> {
        (self.theta()? * self.open()?)?.reshape((1, self.gates()))
    }

    /// `‖μⱼ‖²` of the group of weights fed by each gate, `[gates]`, and the group size `nⱼ`.
    fn group_sumsq(&self) -> Result<(Tensor, usize)> {
        let sq = self.weight.sqr()?;
        match *self.weight.dims() {
            // the column sums as the product 1ᵀ·sq (parallel); candle's `sum(0)` reduces the
            // leading axis with strides on one thread (`perf` of a gated LeNet-300-100's training:
            // candle's reductions 17% of the samples with `sum(0)`, 5% with the product)
            [out, inp] => {
                let ones = Tensor::ones((1, out), sq.dtype(), sq.device())?;
                Ok((secateur_kernels::matmul::matmul(&ones, &sq)?.reshape(inp)?, out))
            }
            [out, cpg, kh, kw] => {
                let g = self.groups;
                let opg = out / g;
                let s = sq.sum(D::Minus1)?.sum(D::Minus1)?; // [out, cpg]
                let s = s.reshape((g, opg, cpg))?.sum(1)?.flatten_all()?; // [g·cpg]
                Ok((s, opg * kh * kw))
            }
            _ => candle_core::bail!(
                "gsm gate layer `{}`: unexpected weight shape {:?}",
                self.name,
                self.weight.dims()
            ),
        }
    }

    /// `D = Σⱼ θⱼ [λ + (a + nⱼ/2) log(1 + ‖μⱼ‖²/(2b))]`.
    fn divergence(&self, how: &Divergence) -> Result<Tensor> {
        match how {
            Divergence::Kl => {
                let (sumsq, n) = self.group_sumsq()?;
                let cost = (self.prior.group_cost(&sumsq, n)? + self.prior.inclusion_cost())?;
                (self.theta()? * cost)?.sum_all()
            }
            other => Err(ConfigError::Unsupported(format!(
                "gsm gate layer `{}` defines only `kl` (the GSM-with-hyper-prior regulariser of Guenter & \
                 Sideris 2022), not `{other}`",
                self.name
            ))
            .into()),
        }
    }

    /// θ broadcast to the weight's shape (each weight gets the probability of the gate feeding it).
    fn inclusion(&self) -> Result<Tensor> {
        let theta = self.theta()?.detach();
        match *self.weight.dims() {
            [out, inp] => theta.reshape((1, inp))?.broadcast_as((out, inp))?.contiguous(),
            [out, cpg, kh, kw] => {
                let g = self.groups;
                theta
                    .reshape((g, 1, cpg, 1, 1))?
                    .broadcast_as((g, out / g, cpg, kh, kw))?
                    .contiguous()?
                    .reshape((out, cpg, kh, kw))
            }
            _ => candle_core::bail!("gsm gate layer `{}`: unexpected weight shape", self.name),
        }
    }

    fn stats(&self) -> Result<Vec<PosteriorStats>> {
        let name = if self.name.is_empty() {
            "weight".to_string()
        } else {
            format!("{}.weight", self.name)
        };
        Ok(vec![PosteriorStats {
            name,
            mean: self.weight.detach(),
            std: None,
            log_alpha: None,
            inclusion: Some(self.inclusion()?),
        }])
    }

    fn removed(&self) -> Result<(usize, usize)> {
        let open = self.open()?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()? as usize;
        Ok((self.gates() - open, self.gates()))
    }
}

macro_rules! gated_accessors {
    () => {
        /// The weights μ (`weight_mu`).
        pub fn weight_mu(&self) -> &Tensor {
            &self.inner.weight
        }
        /// The deterministic bias, if any.
        pub fn bias(&self) -> Option<&Tensor> {
            self.inner.bias.as_ref()
        }
        /// The stored gate parameters (`gate_theta`; θ is their projection onto `[0, 1]`).
        pub fn gate_theta(&self) -> &Tensor {
            &self.inner.gate_theta
        }
        /// The inclusion probabilities `θ = clamp(gate_theta, 0, 1)`, one per gate (differentiable,
        /// the gradient passed straight through the clamp).
        pub fn inclusion(&self) -> Result<Tensor> {
            self.inner.theta()
        }
        /// The test-time gates: 1 where `θ ≥ threshold`, 0 where the unit is removed.
        pub fn open_gates(&self) -> Result<Tensor> {
            self.inner.open()
        }
        /// `(removed, total)` gates at test time.
        pub fn removed(&self) -> Result<(usize, usize)> {
            self.inner.removed()
        }
        /// The prior.
        pub fn prior(&self) -> GsmGatePrior {
            self.inner.prior
        }
    };
}

/// A fully connected layer with a Bernoulli gate on every input unit (Guenter & Sideris 2022):
/// `y = (x ⊙ ξ) μᵀ + b`, `ξⱼ ~ Bernoulli(θⱼ)`; see the module documentation.
#[derive(Debug, Clone)]
pub struct GateLinear {
    inner: Gated,
}

impl GateLinear {
    /// Creates `weight_mu` (PyTorch's default init), `bias` and `gate_theta` (θ₀) under
    /// `pb` and registers the layer as [`Variational`] under `pb`'s path.
    pub fn new(pb: &ParamBuilder, cfg: GateLinearConfig) -> Result<Self> {
        cfg.validate()?;
        let inner = Gated::build(
            pb,
            &[cfg.out_dim, cfg.in_dim],
            cfg.in_dim,
            cfg.in_dim,
            cfg.bias,
            (cfg.prior, cfg.init_inclusion, cfg.threshold, cfg.lr_scale),
            1,
        )?;
        let layer = Self { inner };
        pb.register_variational(Arc::new(layer.clone()))?;
        Ok(layer)
    }

    /// A layer from existing tensors (tests, loading): weight `[out, in]`, gate parameters `[in]`;
    /// not registered anywhere.
    pub fn from_tensors(
        name: impl Into<String>,
        weight: Tensor,
        bias: Option<Tensor>,
        gate_theta: Tensor,
        prior: GsmGatePrior,
        threshold: f64,
    ) -> Result<Self> {
        prior.validate()?;
        check_gate_fields("gsm gate linear", 0.5, threshold)?;
        let (_, inp) = weight.dims2()?;
        if gate_theta.dims() != [inp] {
            candle_core::bail!(
                "gsm gate linear: gate_theta must have shape [{inp}], got {:?}",
                gate_theta.dims()
            );
        }
        Ok(Self {
            inner: Gated {
                name: name.into(),
                weight,
                bias,
                gate_theta,
                prior,
                threshold,
                groups: 1,
                lr_scale: DEFAULT_LR_SCALE,
            },
        })
    }

    gated_accessors!();
}

impl Module for GateLinear {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (out_dim, in_dim) = self.inner.weight.dims2()?;
        if dims.last() != Some(&in_dim) {
            candle_core::bail!(
                "gsm gate linear `{}`: input has shape {dims:?}, the weight expects {in_dim} features",
                self.inner.name
            );
        }
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = self.inner.apply(&x.reshape((rows, in_dim))?, ctx)?;
        let mut y = secateur_kernels::matmul::matmul_bt(&x2, &self.inner.weight)?;
        if let Some(b) = &self.inner.bias {
            y = secateur_kernels::bias::add_bias(&y, b)?;
        }
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = out_dim;
        y.reshape(out)
    }
}

impl Variational for GateLinear {
    fn divergence(&self, how: &Divergence, _rng: &mut SeededRng) -> Result<Tensor> {
        self.inner.divergence(how)
    }
    fn posterior_stats(&self) -> Result<Vec<PosteriorStats>> {
        self.inner.stats()
    }

    fn test_time_weights(&self) -> Result<Vec<TestTimeWeight>> {
        self.inner.test_time_weights()
    }

    fn removed_units(&self) -> Result<Option<(usize, usize)>> {
        Ok(Some(self.inner.removed()?))
    }

    fn unit_inclusion(&self) -> Result<Option<Tensor>> {
        Ok(Some(self.inner.theta()?.detach()))
    }
}

/// A 2-D convolution with a Bernoulli gate on every input channel (the filters of the previous
/// layer; Guenter & Sideris 2022): `y = conv(x ⊙ ξ, μ) + b`; see the module documentation.
#[derive(Debug, Clone)]
pub struct GateConv2d {
    inner: Gated,
    geom: Conv2dGeom,
}

impl GateConv2d {
    /// Creates `weight_mu` (`[out, in/groups, k, k]`, PyTorch's default init), `bias` and
    /// `gate_theta` (`[in]`) under `pb` and registers the layer under `pb`'s path.
    pub fn new(pb: &ParamBuilder, cfg: GateConv2dConfig) -> Result<Self> {
        cfg.validate()?;
        let shape = [cfg.out_ch, cfg.in_ch / cfg.geom.groups, cfg.kernel, cfg.kernel];
        let fan_in = shape[1] * shape[2] * shape[3];
        let inner = Gated::build(
            pb,
            &shape,
            cfg.in_ch,
            fan_in,
            cfg.bias,
            (cfg.prior, cfg.init_inclusion, cfg.threshold, cfg.lr_scale),
            cfg.geom.groups,
        )?;
        let layer = Self { inner, geom: cfg.geom };
        pb.register_variational(Arc::new(layer.clone()))?;
        Ok(layer)
    }

    /// A layer from existing tensors (tests, loading): weight `[out, in/groups, k, k]`, gate
    /// parameters `[in]`; not registered anywhere.
    pub fn from_tensors(
        name: impl Into<String>,
        weight: Tensor,
        bias: Option<Tensor>,
        gate_theta: Tensor,
        prior: GsmGatePrior,
        threshold: f64,
        geom: Conv2dGeom,
    ) -> Result<Self> {
        prior.validate()?;
        check_gate_fields("gsm gate conv2d", 0.5, threshold)?;
        let (o, cpg, _, _) = weight.dims4()?;
        geom.check("gsm gate conv2d", cpg * geom.groups, o)?;
        if gate_theta.dims() != [cpg * geom.groups] {
            candle_core::bail!(
                "gsm gate conv2d: gate_theta must have shape [{}], got {:?}",
                cpg * geom.groups,
                gate_theta.dims()
            );
        }
        Ok(Self {
            inner: Gated {
                name: name.into(),
                weight,
                bias,
                gate_theta,
                prior,
                threshold,
                groups: geom.groups,
                lr_scale: DEFAULT_LR_SCALE,
            },
            geom,
        })
    }

    gated_accessors!();

    /// The convolution geometry.
    pub fn geom(&self) -> Conv2dGeom {
        self.geom
    }
}

impl Module for GateConv2d {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let (_, c, _, _) = x.dims4()?;
        if c != self.inner.gates() {
            candle_core::bail!(
                "gsm gate conv2d `{}`: input has {c} channels, the layer expects {}",
                self.inner.name,
                self.inner.gates()
            );
        }
        let xg = self.inner.apply(x, ctx)?;
        let gm = self.geom;
        let y = secateur_kernels::conv::conv2d(&xg, &self.inner.weight, gm.stride, gm.padding, gm.dilation, gm.groups)?;
        match &self.inner.bias {
            Some(b) => secateur_kernels::bias::add_bias(&y, b),
            None => Ok(y),
        }
    }
}

impl Variational for GateConv2d {
    fn divergence(&self, how: &Divergence, _rng: &mut SeededRng) -> Result<Tensor> {
        self.inner.divergence(how)
    }
    fn posterior_stats(&self) -> Result<Vec<PosteriorStats>> {
        self.inner.stats()
    }

    fn test_time_weights(&self) -> Result<Vec<TestTimeWeight>> {
        self.inner.test_time_weights()
    }

    fn removed_units(&self) -> Result<Option<(usize, usize)>> {
        Ok(Some(self.inner.removed()?))
    }

    fn unit_inclusion(&self) -> Result<Option<Tensor>> {
        Ok(Some(self.inner.theta()?.detach()))
    }
}

impl Gated {
    /// The weights behind a gate whose inclusion `θ` is below the layer's threshold are removed at
    /// test time (Guenter & Sideris 2022); the bias is deterministic.
    fn test_time_weights(&self) -> Result<Vec<TestTimeWeight>> {
        let prefix = |n: &str| {
            if self.name.is_empty() {
                n.to_string()
            } else {
                format!("{}.{n}", self.name)
            }
        };
        let mut v = vec![TestTimeWeight {
            name: prefix("weight_mu"),
            keep: Some(self.inclusion()?.ge(self.threshold)?),
        }];
        if self.bias.is_some() {
            v.push(TestTimeWeight::all(prefix("bias")));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParamStore;
    use candle_core::{Device, Var};

    const FD_STEP: f64 = 1e-6;
    const FD_TOL: f64 = 1e-6;

    fn uniform(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Tensor {
        SeededRng::new(seed)
            .rand_uniform(shape, lo, hi, DType::F64, &Device::Cpu)
            .unwrap()
    }

    fn var(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Var {
        Var::from_tensor(&uniform(shape, lo, hi, seed)).unwrap()
    }

    fn vals(t: &Tensor) -> Vec<f64> {
        t.flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Gate parameters θ with |θ − ½| ∈ [0.1, 0.4]: inside (0, 1) and away from the test-time
    /// threshold ½, so finite differences cross neither.
    fn thetas(n: usize, seed: u64) -> Var {
        let mag = uniform(&[n], 0.1, 0.4, seed);
        let sign = SeededRng::new(seed + 1)
            .rademacher(&[n], DType::F64, &Device::Cpu)
            .unwrap();
        Var::from_tensor(&(mag * sign).unwrap().affine(1.0, 0.5).unwrap()).unwrap()
    }

    /// Central finite differences of `f` against its autograd gradient, for every entry of every
    /// variable.
    fn check_gradients(vars: &[(&str, &Var)], f: impl Fn() -> Result<Tensor>) -> Result<()> {
        let grads = f()?.backward()?;
        for (name, v) in vars {
            let analytic = match grads.get(v.as_tensor()) {
                Some(g) => vals(g),
                None => vec![0.0; v.elem_count()],
            };
            let base = vals(v.as_tensor());
            for i in 0..base.len() {
                let at = |d: f64| -> Result<f64> {
                    let mut p = base.clone();
                    p[i] += d;
                    v.set(&Tensor::from_vec(p, v.dims(), &Device::Cpu)?)?;
                    f()?.to_scalar::<f64>()
                };
                let numeric = (at(FD_STEP)? - at(-FD_STEP)?) / (2.0 * FD_STEP);
                v.set(&Tensor::from_vec(base.clone(), v.dims(), &Device::Cpu)?)?;
                assert!(
                    (analytic[i] - numeric).abs() <= FD_TOL * (1.0 + numeric.abs()),
                    "{name}[{i}]: autograd {} vs finite differences {numeric}",
                    analytic[i]
                );
            }
        }
        Ok(())
    }

    fn prior() -> GsmGatePrior {
        GsmGatePrior::new(1.5, 0.7, 0.8).unwrap()
    }

    fn eval_loss(m: &dyn Module, v: &dyn Variational, x: &Tensor, r: &Tensor) -> Result<Tensor> {
        let mut rng = SeededRng::new(7);
        let y = m.forward(x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
        (y * r)?.sum_all()? + v.divergence(&Divergence::Kl, &mut rng)?
    }

    #[test]
    fn gradients_match_finite_differences_with_test_time_gates() -> Result<()> {
        let (w, b, g) = (var(&[3, 5], -1.0, 1.0, 1), var(&[3], -0.5, 0.5, 2), thetas(5, 3));
        let l = GateLinear::from_tensors(
            "fc",
            w.as_tensor().clone(),
            Some(b.as_tensor().clone()),
            g.as_tensor().clone(),
            prior(),
            0.5,
        )?;
        let x = uniform(&[4, 5], -1.0, 1.0, 5);
        let r = uniform(&[4, 3], -1.0, 1.0, 6);
        check_gradients(&[("weight", &w), ("bias", &b), ("gate_theta", &g)], || {
            eval_loss(&l, &l, &x, &r)
        })?;

        let geom = Conv2dGeom {
            padding: 1,
            groups: 2,
            ..Default::default()
        };
        let (w, b, g) = (var(&[4, 2, 3, 3], -1.0, 1.0, 8), var(&[4], -0.5, 0.5, 9), thetas(4, 10));
        let c = GateConv2d::from_tensors(
            "conv",
            w.as_tensor().clone(),
            Some(b.as_tensor().clone()),
            g.as_tensor().clone(),
            prior(),
            0.5,
            geom,
        )?;
        let x = uniform(&[2, 4, 4, 4], -1.0, 1.0, 11);
        let r = uniform(&[2, 4, 4, 4], -1.0, 1.0, 12);
        check_gradients(&[("weight", &w), ("bias", &b), ("gate_theta", &g)], || {
            eval_loss(&c, &c, &x, &r)
        })
    }

    #[test]
    fn training_forward_and_straight_through_gradient_match_an_independent_computation() -> Result<()> {
        let (rows, inp, out) = (6, 4, 3);
        let (w, g) = (var(&[out, inp], -1.0, 1.0, 21), thetas(inp, 22));
        let b = uniform(&[out], -0.5, 0.5, 23);
        let l = GateLinear::from_tensors(
            "fc",
            w.as_tensor().clone(),
            Some(b.clone()),
            g.as_tensor().clone(),
            prior(),
            0.5,
        )?;
        let x = uniform(&[rows, inp], -1.0, 1.0, 24);
        let r = uniform(&[rows, out], -1.0, 1.0, 25);
        let mut rng = SeededRng::new(26);
        let y = l.forward(&x, &mut Ctx::train(&mut rng, Sampling::Local))?;
        let grads = (&y * &r)?.sum_all()?.backward()?;

        // The same draws, redone by hand: ξ_rj = [u_rj < θ_j] with u from the same stream.
        let theta = vals(g.as_tensor());
        let u = vals(&SeededRng::new(26).rand_uniform(&[rows, inp], 0.0, 1.0, DType::F64, &Device::Cpu)?);
        let (wv, bv, xv, rv) = (vals(w.as_tensor()), vals(&b), vals(&x), vals(&r));
        let xi = |rr: usize, j: usize| if u[rr * inp + j] < theta[j] { 1.0 } else { 0.0 };
        let yv = vals(&y);
        for rr in 0..rows {
            for i in 0..out {
                let e: f64 = bv[i]
                    + (0..inp)
                        .map(|j| xv[rr * inp + j] * xi(rr, j) * wv[i * inp + j])
                        .sum::<f64>();
                assert!((yv[rr * out + i] - e).abs() < 1e-12, "y[{rr},{i}]");
            }
        }
        // ∂L/∂W_ij = Σ_r r_ri x_rj ξ_rj; straight-through ∂L/∂θ_j = Σ_r x_rj Σ_i r_ri W_ij.
        let gw = vals(grads.get(w.as_tensor()).unwrap());
        let gg = vals(grads.get(g.as_tensor()).unwrap());
        for j in 0..inp {
            for i in 0..out {
                let e: f64 = (0..rows)
                    .map(|rr| rv[rr * out + i] * xv[rr * inp + j] * xi(rr, j))
                    .sum();
                assert!((gw[i * inp + j] - e).abs() < 1e-12, "dW[{i},{j}]");
            }
            let dl_dxi: f64 = (0..rows)
                .map(|rr| xv[rr * inp + j] * (0..out).map(|i| rv[rr * out + i] * wv[i * inp + j]).sum::<f64>())
                .sum();
            assert!((gg[j] - dl_dxi).abs() < 1e-12, "dθ[{j}]: {} vs {dl_dxi}", gg[j]);
        }
        Ok(())
    }

    #[test]
    fn conv_training_forward_gates_whole_input_channels() -> Result<()> {
        let w = uniform(&[3, 2, 3, 3], -1.0, 1.0, 31);
        let g = Tensor::new(&[0.6f64, 0.45], &Device::Cpu)?;
        let c = GateConv2d::from_tensors("conv", w.clone(), None, g.clone(), prior(), 0.5, Conv2dGeom::default())?;
        let x = uniform(&[5, 2, 4, 4], -1.0, 1.0, 32);
        let y = c.forward(&x, &mut Ctx::train(&mut SeededRng::new(33), Sampling::Local))?;
        let theta = vals(&g);
        let u = vals(&SeededRng::new(33).rand_uniform(&[5, 2], 0.0, 1.0, DType::F64, &Device::Cpu)?);
        let xi: Vec<f64> = (0..10).map(|k| if u[k] < theta[k % 2] { 1.0 } else { 0.0 }).collect();
        let mask = Tensor::from_vec(xi, (5, 2, 1, 1), &Device::Cpu)?;
        let expected = x.broadcast_mul(&mask)?.conv2d(&w, 0, 1, 1, 1)?;
        let d = (y - expected)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(d < 1e-12, "max deviation {d}");
        Ok(())
    }

    /// `log ∫ N(w; 0, σ²I) InvGamma(σ²; a, b) dσ²` by the trapezoidal rule in `t = log σ²`.
    fn student_t_log_density_by_quadrature(sumsq: f64, n: usize, a: f64, b: f64) -> f64 {
        let ln_gamma_a = ln_gamma(a);
        let logf = |t: f64| {
            let s2 = t.exp();
            let ln_normal = -0.5 * n as f64 * (2.0 * std::f64::consts::PI * s2).ln() - sumsq / (2.0 * s2);
            let ln_ig = a * b.ln() - ln_gamma_a - (a + 1.0) * t - b / s2;
            ln_normal + ln_ig + t // dσ² = σ² dt
        };
        let (lo, hi, steps) = (-40.0, 40.0, 200_000);
        let h = (hi - lo) / steps as f64;
        let m = (0..=steps)
            .map(|k| logf(lo + k as f64 * h))
            .fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = (0..=steps)
            .map(|k| {
                let wgt = if k == 0 || k == steps { 0.5 } else { 1.0 };
                wgt * (logf(lo + k as f64 * h) - m).exp()
            })
            .sum();
        m + (s * h).ln()
    }

    /// Lanczos approximation of `log Γ(x)`, x > 0 (relative error ≈ 1e-15).
    fn ln_gamma(x: f64) -> f64 {
        const G: [f64; 9] = [
            0.999_999_999_999_809_9,
            676.520_368_121_885_1,
            -1_259.139_216_722_402_8,
            771.323_428_777_653_1,
            -176.615_029_162_140_6,
            12.507_343_278_686_905,
            -0.138_571_095_265_720_12,
            9.984_369_578_019_572e-6,
            1.505_632_735_149_311_6e-7,
        ];
        let x = x - 1.0;
        let t = x + 7.5;
        let s: f64 = G[0] + (1..9).map(|i| G[i] / (x + i as f64)).sum::<f64>();
        0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + s.ln()
    }

    #[test]
    fn group_cost_is_the_student_t_gsm_relative_to_zero() -> Result<()> {
        let p = prior();
        for (sumsq, n) in [(0.3, 3usize), (2.5, 10), (0.01, 1)] {
            let got = p
                .group_cost(&Tensor::new(&[sumsq], &Device::Cpu)?, n)?
                .to_vec1::<f64>()?[0];
            let quad = student_t_log_density_by_quadrature(0.0, n, p.shape, p.scale)
                - student_t_log_density_by_quadrature(sumsq, n, p.shape, p.scale);
            assert!(
                (got - quad).abs() < 1e-7 * (1.0 + quad.abs()),
                "n={n}: {got} vs quadrature {quad}"
            );
        }
        Ok(())
    }

    #[test]
    fn optimised_hyper_prior_makes_the_bernoulli_term_linear_in_theta() {
        // f(θ) = min_π [KL(Bern θ ‖ Bern π) − log h_λ(π)], h_λ normalised numerically, minimised on a grid.
        for lambda in [0.0f64, 0.8, 3.0] {
            let h = |pi: f64| 1.0 / (1.0 + (lambda.exp() - 1.0) * pi);
            let steps = 200_000;
            let z: f64 = (0..=steps)
                .map(|k| {
                    let wgt = if k == 0 || k == steps { 0.5 } else { 1.0 };
                    wgt * h(k as f64 / steps as f64)
                })
                .sum::<f64>()
                / steps as f64;
            let xlogy = |x: f64, y: f64| if x == 0.0 { 0.0 } else { x * (x / y).ln() };
            let f = |theta: f64| {
                (0..=steps)
                    .map(|k| {
                        let pi = k as f64 / steps as f64;
                        xlogy(theta, pi) + xlogy(1.0 - theta, 1.0 - pi) - (h(pi) / z).ln()
                    })
                    .fold(f64::INFINITY, f64::min)
            };
            let p = GsmGatePrior::new(1.0, 1.0, lambda).unwrap();
            let f0 = f(0.0);
            let c = if lambda == 0.0 {
                0.0
            } else {
                (lambda / (lambda.exp() - 1.0)).ln()
            };
            assert!((f0 - c).abs() < 1e-4, "λ={lambda}: f(0) = {f0}, expected {c}");
            for theta in [0.1, 0.5, 0.9, 1.0] {
                let got = f(theta) - f0;
                assert!(
                    (got - p.inclusion_cost() * theta).abs() < 1e-4,
                    "λ={lambda}, θ={theta}: {got} vs {}",
                    p.inclusion_cost() * theta
                );
            }
        }
    }

    #[test]
    fn divergence_is_the_sum_over_gates_computed_by_hand() -> Result<()> {
        let p = prior();
        let sig = |z: f64| z.clamp(0.0, 1.0);
        let cost = |s: f64, n: usize| p.unit_cost + (p.shape + n as f64 / 2.0) * (1.0 + s / (2.0 * p.scale)).ln();

        let (w, g) = (uniform(&[3, 5], -1.0, 1.0, 41), uniform(&[5], -0.5, 1.5, 42));
        let l = GateLinear::from_tensors("fc", w.clone(), None, g.clone(), p, 0.5)?;
        let (wv, gv) = (vals(&w), vals(&g));
        let expected: f64 = (0..5)
            .map(|j| sig(gv[j]) * cost((0..3).map(|i| wv[i * 5 + j].powi(2)).sum(), 3))
            .sum();
        let got = l
            .divergence(&Divergence::Kl, &mut SeededRng::new(0))?
            .to_scalar::<f64>()?;
        assert!((got - expected).abs() < 1e-10 * expected.abs(), "{got} vs {expected}");

        // Grouped conv: 4 input channels in 2 groups, 6 outputs (3 per group), 2×2 kernels.
        let geom = Conv2dGeom {
            groups: 2,
            ..Default::default()
        };
        let (w, g) = (uniform(&[6, 2, 2, 2], -1.0, 1.0, 43), uniform(&[4], -0.5, 1.5, 44));
        let c = GateConv2d::from_tensors("conv", w.clone(), None, g.clone(), p, 0.5, geom)?;
        let (wv, gv) = (vals(&w), vals(&g));
        let mut expected = 0.0;
        for (ch, &gch) in gv.iter().enumerate() {
            let (grp, local) = (ch / 2, ch % 2);
            let mut s = 0.0;
            for o in grp * 3..grp * 3 + 3 {
                for k in 0..4 {
                    s += wv[o * 8 + local * 4 + k].powi(2);
                }
            }
            expected += sig(gch) * cost(s, 3 * 4);
        }
        let got = c
            .divergence(&Divergence::Kl, &mut SeededRng::new(0))?
            .to_scalar::<f64>()?;
        assert!((got - expected).abs() < 1e-10 * expected.abs(), "{got} vs {expected}");

        // The inclusion statistic has the weight's shape; weight (o, l, ·, ·) gets θ of channel grp(o)·2 + l.
        let inc = vals(c.posterior_stats()?[0].inclusion.as_ref().unwrap());
        for o in 0..6 {
            for local in 0..2 {
                for k in 0..4 {
                    assert!((inc[o * 8 + local * 4 + k] - sig(gv[(o / 3) * 2 + local])).abs() < 1e-14);
                }
            }
        }
        let e = c
            .divergence(&Divergence::JsG { alpha: 0.5 }, &mut SeededRng::new(0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`conv`") && e.contains("js:0.5"), "{e}");
        Ok(())
    }

    #[test]
    fn gate_probabilities_lie_in_the_unit_interval() -> Result<()> {
        let g = Tensor::new(&[-3f32, -0.2, 0.3, 0.7, 1.2, 9.0], &Device::Cpu)?;
        let ones = Tensor::ones((2, 6), DType::F32, &Device::Cpu)?;
        let l = GateLinear::from_tensors("fc", ones, None, g, prior(), 0.5)?;
        let th = vals(&l.inclusion()?);
        assert_eq!(th, [0.0, 0.0, 0.3f32 as f64, 0.7f32 as f64, 1.0, 1.0]);
        let st = &l.posterior_stats()?[0];
        assert_eq!(st.inclusion.as_ref().unwrap().dims(), &[2, 6]);
        assert!(vals(st.inclusion.as_ref().unwrap())
            .iter()
            .all(|t| (0.0..=1.0).contains(t)));
        assert_eq!(l.removed()?, (3, 6));
        // a projected gate samples like its projection: θ ≤ 0 never opens, θ ≥ 1 always does
        let x = Tensor::ones((50, 6), DType::F32, &Device::Cpu)?;
        let eye = Tensor::eye(6, DType::F32, &Device::Cpu)?;
        let g = Tensor::new(&[-3f32, 0.0, 1.0, 9.0, 0.0, 1.0], &Device::Cpu)?;
        let l = GateLinear::from_tensors("fc", eye, None, g, prior(), 0.5)?;
        let y = l.forward(&x, &mut Ctx::train(&mut SeededRng::new(1), Sampling::Local))?;
        let cols: Vec<f32> = y.sum(0)?.to_vec1()?;
        assert_eq!(cols, [0.0, 0.0, 50.0, 50.0, 0.0, 50.0]);
        Ok(())
    }

    #[test]
    fn a_gate_below_threshold_removes_its_unit_at_test_time() -> Result<()> {
        let w = uniform(&[3, 4], -1.0, 1.0, 51);
        let b = uniform(&[3], -1.0, 1.0, 52);
        let x = uniform(&[2, 4], -1.0, 1.0, 53);
        // x with unit 1 replaced by a large value
        let mut xv = vals(&x);
        xv[1] = 100.0;
        xv[5] = -100.0;
        let x2 = Tensor::from_vec(xv, (2, 4), &Device::Cpu)?;
        let run = |theta1: f64| -> Result<f64> {
            let g = Tensor::new(&[0.9f64, theta1, 0.9, 0.9], &Device::Cpu)?;
            let l = GateLinear::from_tensors("fc", w.clone(), Some(b.clone()), g, prior(), 0.5)?;
            let mut rng = SeededRng::new(0);
            let y1 = l.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
            let y2 = l.forward(&x2, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
            (y1 - y2)?.abs()?.max_all()?.to_scalar::<f64>()
        };
        assert_eq!(run(0.45)?, 0.0, "a closed gate (θ < ½) lets its unit through");
        assert!(run(0.55)? > 1.0, "an open gate (θ > ½) must pass its unit");
        // the kept units are scaled by θ: y = (x ⊙ θ·[θ ≥ ½]) Wᵀ + b, by hand
        let th = [0.9, 0.45, 0.55, 1.0];
        let l = GateLinear::from_tensors(
            "fc",
            w.clone(),
            Some(b.clone()),
            Tensor::new(&th, &Device::Cpu)?,
            prior(),
            0.5,
        )?;
        let y = vals(&l.forward(&x, &mut Ctx::eval(&mut SeededRng::new(0), Sampling::Mean))?);
        let (wv, bv, xv) = (vals(&w), vals(&b), vals(&x));
        for r in 0..2 {
            for i in 0..3 {
                let e: f64 = bv[i]
                    + (0..4)
                        .map(|j| xv[r * 4 + j] * if th[j] >= 0.5 { th[j] } else { 0.0 } * wv[i * 4 + j])
                        .sum::<f64>();
                assert!((y[r * 3 + i] - e).abs() < 1e-12, "y[{r},{i}] = {} vs {e}", y[r * 3 + i]);
            }
        }

        let w = uniform(&[2, 3, 3, 3], -1.0, 1.0, 54);
        let g = Tensor::new(&[0.8f64, 0.2, 0.8], &Device::Cpu)?;
        let c = GateConv2d::from_tensors("conv", w, None, g, prior(), 0.5, Conv2dGeom::default())?;
        let x = uniform(&[1, 3, 5, 5], -1.0, 1.0, 55);
        let noise = uniform(&[1, 1, 5, 5], -50.0, 50.0, 56);
        let x2 = Tensor::cat(&[x.narrow(1, 0, 1)?, noise, x.narrow(1, 2, 1)?], 1)?;
        let mut rng = SeededRng::new(0);
        let y1 = c.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
        let y2 = c.forward(&x2, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
        assert_eq!((y1 - y2)?.abs()?.max_all()?.to_scalar::<f64>()?, 0.0);
        assert_eq!(c.removed()?, (1, 3));
        Ok(())
    }

    #[test]
    fn bad_configs_are_refused_by_field_name() {
        let base = GateLinearConfig::new(4, 3);
        let bad = |p: (f64, f64, f64)| GsmGatePrior {
            shape: p.0,
            scale: p.1,
            unit_cost: p.2,
        };
        for (cfg, field) in [
            (base.with_prior(bad((0.0, 1.0, 0.0))), "`shape`"),
            (base.with_prior(bad((1.0, -1.0, 0.0))), "`scale`"),
            (base.with_prior(bad((1.0, 1.0, -0.1))), "`unit_cost`"),
            (base.with_prior(bad((1.0, 1.0, f64::NAN))), "`unit_cost`"),
            (base.with_init_inclusion(1.0), "`init_inclusion`"),
            (base.with_threshold(0.0), "`threshold`"),
            (GateLinearConfig::new(0, 3), "`in_dim`"),
        ] {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
            let pb = ParamBuilder::new(ParamStore::new(), SeededRng::new(0), DType::F32, Device::Cpu);
            assert!(GateLinear::new(&pb, cfg).is_err());
        }
        let c = GateConv2dConfig::new(3, 4, 0);
        assert!(c.validate().unwrap_err().to_string().contains("`kernel`"));
        let c = GateConv2dConfig::new(3, 4, 3).with_geom(Conv2dGeom {
            groups: 2,
            ..Default::default()
        });
        assert!(c.validate().unwrap_err().to_string().contains("groups"));
        assert!(GateConv2dConfig::new(3, 4, 3)
            .with_threshold(1.5)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("`threshold`"));
        assert!(GateConv2dConfig::new(3, 4, 3).validate().is_ok());
    }

    #[test]
    fn registers_itself_and_same_seed_gives_same_output() -> Result<()> {
        let build = |seed: u64| -> Result<(ParamStore, GateLinear)> {
            let store = ParamStore::new();
            let pb = ParamBuilder::new(store.clone(), SeededRng::new(seed), DType::F32, Device::Cpu);
            let l = GateLinear::new(&pb.pp("fc2"), GateLinearConfig::new(6, 4).with_init_inclusion(0.5))?;
            Ok((store, l))
        };
        let (store, l) = build(3)?;
        let names: Vec<String> = store.params().into_keys().collect();
        assert_eq!(names, ["fc2.bias", "fc2.gate_theta", "fc2.weight_mu"]);
        assert_eq!(store.variational_layers()[0].0, "fc2");
        let (total, _) = store.divergence(&Divergence::Kl, &mut SeededRng::new(0))?;
        let own = l.divergence(&Divergence::Kl, &mut SeededRng::new(0))?;
        assert_eq!(total.to_scalar::<f32>()?, own.to_scalar::<f32>()?);

        let x = SeededRng::new(9).randn(&[8, 6], DType::F32, &Device::Cpu)?;
        let run = |l: &GateLinear, seed: u64| -> Result<Vec<f64>> {
            let mut rng = SeededRng::new(seed);
            Ok(vals(&l.forward(&x, &mut Ctx::train(&mut rng, Sampling::Local))?))
        };
        let (_, l2) = build(3)?;
        assert_eq!(run(&l, 5)?, run(&l2, 5)?);
        // κ = 4 stores θ/4 and multiplies the gradient of the stored value by 4
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(3), DType::F64, Device::Cpu);
        let cfg = GateLinearConfig::new(6, 4).with_init_inclusion(0.6).with_lr_scale(4.0);
        let k = GateLinear::new(&pb, cfg)?;
        assert!(vals(k.gate_theta()).iter().all(|v| (v - 0.15).abs() < 1e-7));
        assert!(vals(&k.inclusion()?).iter().all(|v| (v - 0.6).abs() < 1e-6));
        let d = k.divergence(&Divergence::Kl, &mut SeededRng::new(0))?;
        let grad = vals(d.backward()?.get(k.gate_theta()).unwrap());
        let (sumsq, n) = k.inner.group_sumsq()?;
        let cost = vals(&k.prior().group_cost(&sumsq, n)?);
        for (g, c) in grad.iter().zip(cost) {
            assert!(
                (g - 4.0 * (c + k.prior().unit_cost)).abs() < 1e-9 * (1.0 + g.abs()),
                "{g} vs 4·{c}"
            );
        }
        assert!(GateLinearConfig::new(6, 4)
            .with_lr_scale(0.0)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("`lr_scale`"));
        assert_ne!(
            run(&l, 5)?,
            run(&l, 6)?,
            "different noise seeds must draw different gates"
        );
        Ok(())
    }
}
