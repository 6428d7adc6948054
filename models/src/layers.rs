//! Deterministic building blocks.

use crate::factory::{Conv2dCfg, LinearCfg};
use candle_core::{DType, Result, Tensor, Var, D};
use secateur_bayes::{Ctx, Init, Module, ParamBuilder};

/// A fully connected layer, `y = x Wᵀ + b` (PyTorch's `nn.Linear`; names `weight`, `bias`).
pub struct Linear {
    /// Weight `[out, in]`.
    pub weight: Tensor,
    /// Bias `[out]`.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Creates the layer's parameters under `pb`.
    pub fn new(pb: &ParamBuilder, cfg: LinearCfg) -> Result<Self> {
        let weight = pb.param("weight", &[cfg.out_dim, cfg.in_dim], cfg.init)?;
        let bias = if cfg.bias {
            let init = cfg.bias_init.unwrap_or(Init::torch_bias(cfg.in_dim));
            Some(pb.param("bias", &[cfg.out_dim], init)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// A layer from existing tensors (tests, loading).
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }
}

/// `x Wᵀ (+ b)` for `x` of any rank ≥ 2 (leading dims are flattened into the batch).
pub fn linear_forward(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_dim = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = secateur_kernels::matmul::matmul_bt(&x.reshape((rows, in_dim))?, weight)?;
    let y = match bias {
        Some(b) => secateur_kernels::bias::add_bias(&y, b)?,
        None => y,
    };
    let mut out = dims;
    let last = out.len() - 1;
    out[last] = weight.dim(0)?;
    y.reshape(out)
}

impl Module for Linear {
    fn forward(&self, x: &Tensor, _ctx: &mut Ctx) -> Result<Tensor> {
        linear_forward(x, &self.weight, self.bias.as_ref())
    }
}

/// A 2-D convolution (PyTorch's `nn.Conv2d`; names `weight`, `bias`).
pub struct Conv2d {
    /// Weight `[out, in/groups, k, k]`.
    pub weight: Tensor,
    /// Bias `[out]`.
    pub bias: Option<Tensor>,
    /// Shape and hyper-parameters.
    pub cfg: Conv2dCfg,
}

impl Conv2d {
    /// Creates the layer's parameters under `pb`.
    pub fn new(pb: &ParamBuilder, cfg: Conv2dCfg) -> Result<Self> {
        if cfg.groups == 0 || !cfg.in_ch.is_multiple_of(cfg.groups) || !cfg.out_ch.is_multiple_of(cfg.groups) {
            candle_core::bail!(
                "conv {}: groups {} must divide in {} and out {}",
                pb.path(""),
                cfg.groups,
                cfg.in_ch,
                cfg.out_ch
            );
        }
        let weight = pb.param(
            "weight",
            &[cfg.out_ch, cfg.in_ch / cfg.groups, cfg.kernel, cfg.kernel],
            cfg.init,
        )?;
        let bias = if cfg.bias {
            let init = cfg.bias_init.unwrap_or(Init::torch_bias(cfg.fan_in()));
            Some(pb.param("bias", &[cfg.out_ch], init)?)
        } else {
            None
        };
        Ok(Self { weight, bias, cfg })
    }
}

/// Convolution of `x: [B, C, H, W]` with `weight`, plus a per-channel bias.
pub fn conv2d_forward(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, cfg: &Conv2dCfg) -> Result<Tensor> {
    // secateur's convolution ops on CPU (fast, differentiable twice); candle's conv2d elsewhere.
    let params = secateur_kernels::conv::ConvParams::new(cfg.stride, cfg.padding, cfg.dilation, cfg.groups);
    match bias {
        Some(b) => secateur_kernels::conv::conv2d_bias(x, weight, b, params),
        None => secateur_kernels::conv::conv2d_with(x, weight, params),
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor, _ctx: &mut Ctx) -> Result<Tensor> {
        conv2d_forward(x, &self.weight, self.bias.as_ref(), &self.cfg)
    }
}

/// Batch normalisation over `[B, C, H, W]` or `[B, C]` (Ioffe & Szegedy 2015), PyTorch's
/// conventions: `y = γ (x − μ_B) / √(σ²_B + ε) + β` with the biased batch variance; running
/// statistics `r ← (1 − m) r + m · stat` with momentum `m = 0.1` and the unbiased variance.
/// Names: `weight` (γ), `bias` (β), buffers `running_mean`, `running_var`.
pub struct BatchNorm {
    /// Scale γ.
    pub weight: Tensor,
    /// Shift β.
    pub bias: Tensor,
    /// Running mean (buffer).
    pub running_mean: Var,
    /// Running variance (buffer).
    pub running_var: Var,
    /// ε added to the variance.
    pub eps: f64,
    /// Momentum of the running statistics.
    pub momentum: f64,
}

impl BatchNorm {
    /// Creates a batch norm over `channels` (γ = 1, β = 0, running mean 0, running variance 1).
    pub fn new(pb: &ParamBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            weight: pb.param("weight", &[channels], Init::Const(1.0))?,
            bias: pb.param("bias", &[channels], Init::Const(0.0))?,
            running_mean: pb.buffer("running_mean", &[channels], Init::Const(0.0))?,
            running_var: pb.buffer("running_var", &[channels], Init::Const(1.0))?,
            eps: 1e-5,
            momentum: 0.1,
        })
    }
}

impl BatchNorm {
    /// `relu(bn(x))` with the two fused in one kernel when training on the CPU
    /// ([`secateur_kernels::norm::batch_norm_train`]); the same values as
    /// `relu(self.forward(x))`.
    pub fn forward_relu(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        self.normalise(x, ctx, true)
    }

    fn normalise(&self, x: &Tensor, ctx: &mut Ctx, relu: bool) -> Result<Tensor> {
        let c = self.weight.dim(0)?;
        let rank = x.rank();
        if rank < 2 || x.dim(1)? != c {
            candle_core::bail!("batch norm over {c} channels got input of shape {:?}", x.dims());
        }
        if !ctx.is_train() {
            let bshape: Vec<usize> = (0..rank).map(|i| if i == 1 { c } else { 1 }).collect();
            let inv = (self.running_var.as_tensor() + self.eps)?.sqrt()?.recip()?;
            let scale = (&self.weight * inv)?;
            let shift = (&self.bias - (self.running_mean.as_tensor() * &scale)?)?;
            let y = x
                .broadcast_mul(&scale.reshape(bshape.clone())?)?
                .broadcast_add(&shift.reshape(bshape)?)?;
            return if relu {
                secateur_kernels::activation::relu(&y)
            } else {
                Ok(y)
            };
        }
        // Batch statistics, normalisation, affine map (and ReLU) in one fused, twice
        // differentiable kernel on the CPU; candle's ops elsewhere.
        let out = secateur_kernels::norm::batch_norm_train(x, &self.weight, &self.bias, self.eps, relu)?;
        let n = out.count;
        let unbiased = (out.var * (n as f64 / (n.max(2) - 1) as f64))?;
        let m = self.momentum;
        let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (out.mean * m)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        Ok(out.y)
    }
}

impl Module for BatchNorm {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        self.normalise(x, ctx, false)
    }
}

/// Layer normalisation over the last dimension (Ba, Kiros & Hinton 2016):
/// `y = γ (x − mean) / √(var + ε) + β`, names `weight`, `bias`.
pub struct LayerNorm {
    /// Scale γ.
    pub weight: Tensor,
    /// Shift β.
    pub bias: Tensor,
    /// ε added to the variance.
    pub eps: f64,
}

impl LayerNorm {
    /// Creates a layer norm over `dim` features (γ = 1, β = 0, ε = 1e-5).
    pub fn new(pb: &ParamBuilder, dim: usize) -> Result<Self> {
        Ok(Self {
            weight: pb.param("weight", &[dim], Init::Const(1.0))?,
            bias: pb.param("bias", &[dim], Init::Const(0.0))?,
            eps: 1e-5,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor, _ctx: &mut Ctx) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let y = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        y.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

/// ReLU as a module.
pub struct Relu;

impl Module for Relu {
    fn forward(&self, x: &Tensor, _ctx: &mut Ctx) -> Result<Tensor> {
        secateur_kernels::activation::relu(x)
    }
}

/// GELU with the exact error function, `x · Φ(x)` (Hendrycks & Gimpel 2016), as PyTorch's
/// `nn.GELU()` computes it.
pub struct Gelu;

impl Module for Gelu {
    fn forward(&self, x: &Tensor, _ctx: &mut Ctx) -> Result<Tensor> {
        x.gelu_erf()
    }
}

/// Max pooling with a square window and stride equal to the window (PyTorch's
/// `nn.MaxPool2d(k)`, floor mode: trailing rows and columns that do not fill a window are
/// dropped).
///
/// Written as a reshape `[B, C, H/k, k, W/k, k]` and two max reductions rather than candle's
/// `max_pool2d`, whose gradient in candle 0.11 is scaled by `1/k²` (it multiplies by the
/// window's average of the arg-max mask instead of dividing by the number of maxima); the
/// reduction's gradient is exact and is checked against finite differences in the tests. Where
/// several entries of a window tie for the maximum, each receives the full gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2d {
    /// Window size and stride.
    pub kernel: usize,
}

impl MaxPool2d {
    /// A `kernel × kernel` max pool with stride `kernel`.
    pub fn new(kernel: usize) -> Self {
        Self { kernel }
    }

    /// The output size of one spatial side, or `None` if the side is smaller than the window.
    pub fn out_size(&self, size: usize) -> Option<usize> {
        if self.kernel == 0 || size < self.kernel {
            None
        } else {
            Some(size / self.kernel)
        }
    }
}

impl Module for MaxPool2d {
    fn forward(&self, x: &Tensor, _ctx: &mut Ctx) -> Result<Tensor> {
        // The fast CPU kernel (PyTorch's first-maximum rule, twice differentiable); candle's own
        // `max_pool2d` is not used: its gradient is scaled by 1/k² in candle 0.11.
        secateur_kernels::pool::max_pool2d(x, self.kernel)
    }
}

/// Global average pooling `[B, C, H, W] → [B, C]` (Lin, Chen & Yan 2014, "Network in Network").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlobalAvgPool;

impl Module for GlobalAvgPool {
    fn forward(&self, x: &Tensor, _ctx: &mut Ctx) -> Result<Tensor> {
        let (b, c, _, _) = x.dims4()?;
        x.flatten_from(2)?.mean(D::Minus1)?.reshape((b, c))
    }
}

/// Flattens every dimension but the first: `[B, …] → [B, Π …]` (PyTorch's `nn.Flatten()`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flatten;

impl Module for Flatten {
    fn forward(&self, x: &Tensor, _ctx: &mut Ctx) -> Result<Tensor> {
        x.flatten_from(1)
    }
}

/// Softmax over the last dimension, written with ordinary (differentiable) tensor ops; the
/// row maximum is subtracted first for stability (it cancels, so it is detached).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Softmax cross-entropy of `logits: [B, K]` against integer `labels: [B]`, averaged over the batch.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&labels.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use secateur_bayes::{ParamStore, Sampling, SeededRng};

    #[test]
    fn batch_norm_train_normalises_and_updates_running_stats() -> Result<()> {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
        let bn = BatchNorm::new(&pb.pp("bn"), 2)?;
        // channel 0 values 1,2,3,4 (mean 2.5, biased var 1.25, unbiased 5/3); channel 1 all 7.
        let x = Tensor::new(&[[[[1f32, 2.]], [[7., 7.]]], [[[3., 4.]], [[7., 7.]]]], &Device::Cpu)?;
        let mut rng = SeededRng::new(0);
        let y = bn.forward(&x, &mut Ctx::train(&mut rng, Sampling::Mean))?;
        let y0: Vec<f32> = y.narrow(1, 0, 1)?.flatten_all()?.to_vec1()?;
        let s = (1.25f32 + 1e-5).sqrt();
        let want = [(1. - 2.5) / s, (2. - 2.5) / s, (3. - 2.5) / s, (4. - 2.5) / s];
        for (a, b) in y0.iter().zip(want) {
            assert!((a - b).abs() < 1e-5);
        }
        let rm: Vec<f32> = bn.running_mean.as_tensor().to_vec1()?;
        let rv: Vec<f32> = bn.running_var.as_tensor().to_vec1()?;
        assert!((rm[0] - 0.25).abs() < 1e-6 && (rm[1] - 0.7).abs() < 1e-6);
        assert!((rv[0] - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-6 && (rv[1] - 0.9).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn max_pool_matches_candle_forward_and_finite_differences() -> Result<()> {
        let x = SeededRng::new(3).randn(&[2, 3, 7, 6], DType::F64, &Device::Cpu)?;
        let mut rng = SeededRng::new(0);
        let pool = MaxPool2d::new(2);
        let y = pool.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
        // floor mode: candle's forward (same window arithmetic as PyTorch) on the 7×6 input
        let want = x.max_pool2d(2)?;
        assert_eq!(y.dims(), &[2, 3, 3, 3]);
        assert_eq!((&y - &want)?.abs()?.sum_all()?.to_scalar::<f64>()?, 0.0);
        // d Σ y² / dx = 2 y at the arg-max of each window, 0 elsewhere (no ties in Gaussian data)
        let v = candle_core::Var::from_tensor(&x)?;
        let g = pool
            .forward(v.as_tensor(), &mut Ctx::eval(&mut rng, Sampling::Mean))?
            .sqr()?
            .sum_all()?
            .backward()?;
        let g = g
            .get(v.as_tensor())
            .map(|g| g.flatten_all())
            .transpose()?
            .map(|g| g.to_vec1::<f64>())
            .transpose()?
            .unwrap_or_default();
        let xs = x.flatten_all()?.to_vec1::<f64>()?;
        let ys = y.flatten_all()?.to_vec1::<f64>()?;
        let mut expected = vec![0f64; xs.len()];
        for (o, &m) in ys.iter().enumerate() {
            let (bc, r) = (o / 9, o % 9);
            let (i, j) = (r / 3, r % 3);
            for di in 0..2 {
                for dj in 0..2 {
                    let idx = bc * 42 + (2 * i + di) * 6 + 2 * j + dj;
                    if xs[idx] == m {
                        expected[idx] = 2.0 * m;
                    }
                }
            }
        }
        assert_eq!(g, expected);
        Ok(())
    }

    #[test]
    fn cross_entropy_matches_hand_value() -> Result<()> {
        // logits [0, ln 3] for label 1: p = 3/4, loss = ln(4/3); label 0: p = 1/4, loss = ln 4.
        let logits = Tensor::new(&[[0f32, 3f32.ln()], [0., 3f32.ln()]], &Device::Cpu)?;
        let labels = Tensor::new(&[1u32, 0], &Device::Cpu)?;
        let l = cross_entropy(&logits, &labels)?.to_scalar::<f32>()?;
        let want = ((4f32 / 3.).ln() + 4f32.ln()) / 2.;
        assert!((l - want).abs() < 1e-6);
        Ok(())
    }
}
