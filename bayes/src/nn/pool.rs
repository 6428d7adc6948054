//! Pooling and reshaping layers: max pooling, global average pooling, flattening.

use crate::{Ctx, Module};
use candle_core::{Result, Tensor, D};

/// Max pooling with a square window and stride equal to the window (PyTorch's
/// `nn.MaxPool2d(k)`, floor mode: trailing rows and columns that do not fill a window are
/// dropped). On the CPU it runs [`secateur_kernels::pool::max_pool2d`] (PyTorch's
/// first-maximum rule, differentiable twice); candle's own `max_pool2d` is not used because its
/// gradient in candle 0.11 is scaled by `1/k²`. The gradient is checked against finite
/// differences in the tests.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Sampling, SeededRng};
    use candle_core::{DType, Device};

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
}
