//! Seeded initialisers, following PyTorch's defaults.
//!
//! Every draw comes from the run's [`SeededRng`]; candle's own random initialisers are never used
//! because candle's CPU generator cannot be seeded.

use crate::rng::SeededRng;
use candle_core::{DType, Device, Result, Tensor};

/// Which fan a Kaiming initialiser scales by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fan {
    /// Input fan: `shape[1] · Π shape[2..]`.
    In,
    /// Output fan: `shape[0] · Π shape[2..]`.
    Out,
}

/// How a parameter is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Every entry equal to the constant.
    Const(f64),
    /// Uniform on `[lo, hi)`.
    Uniform {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
    /// Normal with the given mean and standard deviation.
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        std: f64,
    },
    /// Normal truncated to ±2 standard deviations (redrawn outside), as timm's ViTs use.
    TruncNormal {
        /// Standard deviation before truncation.
        std: f64,
    },
    /// PyTorch's default for `nn.Linear` and `nn.Conv2d` weights: `kaiming_uniform_(a = √5)`,
    /// which is `U(−1/√fan_in, 1/√fan_in)` (He et al. 2015 with PyTorch's leaky-ReLU gain).
    TorchDefault,
    /// Kaiming (He et al. 2015) normal for ReLU: `N(0, 2 / fan)`.
    KaimingNormal(Fan),
    /// Xavier (Glorot & Bengio 2010) uniform: `U(±√(6 / (fan_in + fan_out)))`.
    XavierUniform,
}

/// `(fan_in, fan_out)` of a weight shape as PyTorch computes them: `shape[1] · receptive field`
/// and `shape[0] · receptive field`; a 1-D shape has fan_in = fan_out = its length.
pub fn fans(shape: &[usize]) -> (usize, usize) {
    match shape.len() {
        0 => (1, 1),
        1 => (shape[0], shape[0]),
        _ => {
            let rf: usize = shape[2..].iter().product();
            (shape[1] * rf, shape[0] * rf)
        }
    }
}

impl Init {
    /// PyTorch's default bias initialiser for a layer with the given input fan:
    /// `U(−1/√fan_in, 1/√fan_in)`.
    pub fn torch_bias(fan_in: usize) -> Self {
        let b = 1.0 / (fan_in.max(1) as f64).sqrt();
        Init::Uniform { lo: -b, hi: b }
    }

    /// Draws a tensor of `shape` from this initialiser using `rng`.
    pub fn sample(&self, shape: &[usize], rng: &mut SeededRng, dtype: DType, device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let (fan_in, fan_out) = fans(shape);
        let values: Vec<f32> = match *self {
            Init::Const(c) => vec![c as f32; n],
            Init::Uniform { lo, hi } => rng.uniform_vec(n, lo as f32, hi as f32),
            Init::Normal { mean, std } => rng
                .normal_vec(n)
                .into_iter()
                .map(|z| mean as f32 + std as f32 * z)
                .collect(),
            Init::TruncNormal { std } => (0..n)
                .map(|_| loop {
                    let z = rng.normal_vec(1)[0];
                    if z.abs() <= 2.0 {
                        break std as f32 * z;
                    }
                })
                .collect(),
            Init::TorchDefault => {
                let b = 1.0 / (fan_in.max(1) as f32).sqrt();
                rng.uniform_vec(n, -b, b)
            }
            Init::KaimingNormal(fan) => {
                let f = match fan {
                    Fan::In => fan_in,
                    Fan::Out => fan_out,
                };
                let std = (2.0 / f.max(1) as f32).sqrt();
                rng.normal_vec(n).into_iter().map(|z| std * z).collect()
            }
            Init::XavierUniform => {
                let b = (6.0 / (fan_in + fan_out).max(1) as f32).sqrt();
                rng.uniform_vec(n, -b, b)
            }
        };
        Tensor::from_vec(values, shape, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(t: &Tensor) -> (f64, f64, f64) {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let maxabs = v.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
        (mean, var.sqrt(), maxabs)
    }

    #[test]
    fn torch_default_is_uniform_with_bound_one_over_sqrt_fan_in() {
        // Conv weight [64, 16, 3, 3]: fan_in = 144, bound 1/12, std of U(±b) = b/√3.
        let t = Init::TorchDefault
            .sample(&[64, 16, 3, 3], &mut SeededRng::new(1), DType::F32, &Device::Cpu)
            .unwrap();
        let (m, s, a) = stats(&t);
        assert!(a <= 1.0 / 12.0);
        assert!(m.abs() < 0.002);
        assert!((s - 1.0 / 12.0 / 3f64.sqrt()).abs() < 0.001, "std {s}");
    }

    #[test]
    fn kaiming_normal_fan_out_std() {
        // [128, 64, 3, 3], fan_out = 1152, std = sqrt(2/1152)
        let t = Init::KaimingNormal(Fan::Out)
            .sample(&[128, 64, 3, 3], &mut SeededRng::new(2), DType::F32, &Device::Cpu)
            .unwrap();
        let (_, s, _) = stats(&t);
        assert!((s - (2.0f64 / 1152.0).sqrt()).abs() < 0.0005, "std {s}");
    }

    #[test]
    fn trunc_normal_is_truncated() {
        let t = Init::TruncNormal { std: 0.02 }
            .sample(&[10_000], &mut SeededRng::new(3), DType::F32, &Device::Cpu)
            .unwrap();
        let (_, _, a) = stats(&t);
        assert!(a <= 0.04 + 1e-7);
    }

    #[test]
    fn fans_match_pytorch() {
        assert_eq!(fans(&[6, 1, 5, 5]), (25, 150));
        assert_eq!(fans(&[300, 784]), (784, 300));
    }
}
