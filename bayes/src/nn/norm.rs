//! Normalisation layers: batch norm (Ioffe & Szegedy 2015) and layer norm (Ba, Kiros & Hinton
//! 2016), with PyTorch's conventions and parameter names.

use crate::{Ctx, Init, Module, ParamBuilder};
use candle_core::{Result, Tensor, Var, D};

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
    /// Momentum of the running statistics ([`Ctx::bn_momentum`] overrides it).
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
            // y = act(s x + t), s = γ / √(σ²_run + ε), t = β − μ_run s: one fused pass on the CPU
            // (secateur_kernels::affine), the same bits as the broadcast multiply and add.
            let inv = (self.running_var.as_tensor() + self.eps)?.sqrt()?.recip()?;
            let scale = (&self.weight * inv)?;
            let shift = (&self.bias - (self.running_mean.as_tensor() * &scale)?)?;
            return secateur_kernels::affine::channel_affine(x, &scale, &shift, relu);
        }
        // A pass of S samples normalises each sample block with its own statistics and updates
        // the running statistics once per block, in block order, as S passes would; identical
        // blocks are normalised once and the result tiled (the S updates are then equal).
        if ctx.samples > 1 {
            if let Some(x0) = ctx.shared_block(x)? {
                let m = ctx.bn_momentum.unwrap_or(self.momentum);
                let y = self.train_pass(&x0, m, relu, ctx.samples)?;
                return crate::ctx::tile(&y, ctx.samples);
            }
            return ctx.per_block(x, |xb, c| self.normalise(xb, c, relu));
        }
        let m = ctx.bn_momentum.unwrap_or(self.momentum);
        self.train_pass(x, m, relu, 1)
    }

    /// Training-mode batch norm of `x` with its batch statistics, the running statistics updated
    /// `updates` times with momentum `m` (`updates` identical passes).
    fn train_pass(&self, x: &Tensor, m: f64, relu: bool, updates: usize) -> Result<Tensor> {
        // Batch statistics, normalisation, affine map (and ReLU) in one fused, twice
        // differentiable kernel on the CPU; candle's ops elsewhere.
        let out = secateur_kernels::norm::batch_norm_train(x, &self.weight, &self.bias, self.eps, relu)?;
        let n = out.count;
        let unbiased = (out.var * (n as f64 / (n.max(2) - 1) as f64))?;
        for _ in 0..updates {
            let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (&out.mean * m)?)?;
            let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (&unbiased * m)?)?;
            self.running_mean.set(&rm)?;
            self.running_var.set(&rv)?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ParamStore, Sampling, SeededRng};
    use candle_core::{DType, Device};

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
}
