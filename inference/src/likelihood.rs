//! Likelihoods `p(y | f(x; w))`: how a network's outputs turn into a distribution over targets,
//! and the negative log-likelihood (NLL) that the objectives of [`crate::elbo`] minimise.
//!
//! - [`Likelihood::Categorical`]: the outputs are logits of `K` classes, the targets integer
//!   labels `[B]` (u32); `NLL = −(1/B) Σᵢ log softmax(fᵢ)_{yᵢ}`, the softmax cross-entropy.
//! - [`Likelihood::Gaussian`]: the targets are real vectors `[B, D]` (f32; `[B]` is read as
//!   `[B, 1]`), `y ~ N(μ(x), diag σ²)` with the noise σ chosen by [`Noise`] — fixed, one learned
//!   log σ per target dimension (homoscedastic), or predicted per input (heteroscedastic; the
//!   network outputs `2·D` values, Nix & Weigend 1994; Kendall & Gal 2017).
//!
//! The Gaussian NLL per example is, exactly and with its constant (so that values compare with
//! other libraries' "test log-likelihood", e.g. Hernández-Lobato & Adams 2015),
//!
//! ```text
//! NLL(y; μ, σ) = Σ_d [ ½ log(2π σ_d²) + (y_d − μ_d)² / (2 σ_d²) ],
//! ```
//!
//! averaged over the batch.

use candle_core::{bail, DType, Result, Tensor, D};
use secateur_bayes::math::softplus;
use secateur_bayes::nn::cross_entropy;
use secateur_bayes::{Init, ParamBuilder};

/// `½ log(2π)`, the constant of the Gaussian log-density per dimension.
pub const HALF_LOG_2PI: f64 = 0.918_938_533_204_672_7;

/// The name of the learned log σ of the homoscedastic Gaussian likelihood in the model's
/// `ParamStore` (shape `[D]`).
pub const LOG_STD_NAME: &str = "likelihood.log_std";

/// The observation noise σ of a Gaussian likelihood.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Noise {
    /// A given σ, the same for every input and target dimension.
    Fixed {
        /// σ > 0, in the units of the targets the batches yield.
        std: f64,
    },
    /// One learned `log σ_d` per target dimension, shared by every input (homoscedastic noise),
    /// a trainable parameter [`LOG_STD_NAME`] initialised at `log init_std`.
    Homoscedastic {
        /// Initial σ > 0.
        init_std: f64,
    },
    /// σ predicted per input (heteroscedastic noise; Nix & Weigend 1994, Kendall & Gal 2017):
    /// the network outputs `2·D` values `[μ, s]` and `σ = softplus(s) + min_std`, the softplus
    /// link with a floor of Lakshminarayanan, Pritzel & Blundell 2017 (Kendall & Gal predict
    /// `log σ²` instead; the softplus grows linearly, so a large raw output cannot make σ blow up
    /// exponentially, and the floor keeps `1/σ²` bounded).
    Heteroscedastic {
        /// The floor of σ, ≥ 0 (finite).
        min_std: f64,
    },
}

impl Noise {
    /// Refuses σ ≤ 0, a negative floor and non-finite values; the message names the field.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Noise::Fixed { std } => positive("std", std),
            Noise::Homoscedastic { init_std } => positive("init_std", init_std),
            Noise::Heteroscedastic { min_std } => {
                if !(min_std.is_finite() && min_std >= 0.0) {
                    bail!("gaussian likelihood: field `min_std` must be finite and ≥ 0, got {min_std}");
                }
                Ok(())
            }
        }
    }

    /// The config name of the noise kind: `fixed`, `homoscedastic` or `heteroscedastic`.
    pub fn name(&self) -> &'static str {
        match self {
            Noise::Fixed { .. } => "fixed",
            Noise::Homoscedastic { .. } => "homoscedastic",
            Noise::Heteroscedastic { .. } => "heteroscedastic",
        }
    }
}

fn positive(field: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        bail!("gaussian likelihood: field `{field}` must be finite and > 0, got {v}");
    }
    Ok(())
}

/// A diagonal Gaussian likelihood over `D`-dimensional real targets (see the [module
/// docs](self) for the NLL).
#[derive(Debug, Clone)]
pub struct Gaussian {
    noise: Noise,
    dim: usize,
    /// The learned `log σ` (`[D]`), for homoscedastic noise only.
    log_std: Option<Tensor>,
}

impl Gaussian {
    /// A Gaussian likelihood over `dim`-dimensional targets. Homoscedastic noise registers its
    /// trainable `log σ` (`[dim]`, initialised at `log init_std`) as [`LOG_STD_NAME`] under
    /// `pb`'s path (give it the model's root builder, before the trainer collects the
    /// parameters); the other kinds create nothing. Bad noise values and `dim = 0` are refused.
    ///
    /// ```
    /// use secateur_inference::likelihood::{Gaussian, Noise};
    /// use secateur_bayes::{ParamBuilder, ParamStore, SeededRng};
    /// use candle_core::{DType, Device};
    /// let store = ParamStore::new();
    /// let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
    /// let g = Gaussian::new(Noise::Homoscedastic { init_std: 0.5 }, 1, &pb)?;
    /// assert!(store.get("likelihood.log_std").is_some());
    /// assert_eq!(g.output_dim(), 1);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn new(noise: Noise, dim: usize, pb: &ParamBuilder) -> Result<Self> {
        noise.validate()?;
        if dim == 0 {
            bail!("gaussian likelihood: field `dim` (target dimensions) must be at least 1, got 0");
        }
        let log_std = match noise {
            Noise::Homoscedastic { init_std } => Some(pb.pp("likelihood").param(
                "log_std",
                &[dim],
                Init::Const(init_std.ln()),
            )?),
            _ => None,
        };
        Ok(Self { noise, dim, log_std })
    }

    /// The noise model.
    pub fn noise(&self) -> Noise {
        self.noise
    }

    /// The target dimension `D`.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The network output width this likelihood reads: `D`, or `2·D` for heteroscedastic noise
    /// (means first, then the raw scales).
    pub fn output_dim(&self) -> usize {
        match self.noise {
            Noise::Heteroscedastic { .. } => 2 * self.dim,
            _ => self.dim,
        }
    }

    /// The mean `μ` and `log σ`, both `[B, D]`, of the network outputs `out: [B, output_dim]`:
    /// `μ = out[:, :D]`; `log σ = log std` (fixed), the learned `log σ` (homoscedastic), or
    /// `log(softplus(out[:, D:]) + min_std)` (heteroscedastic). Differentiable.
    pub fn mean_log_std(&self, out: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, w) = out.dims2().map_err(|_| {
            candle_core::Error::Msg(format!(
                "gaussian likelihood: network outputs must be [B, {}], got {:?}",
                self.output_dim(),
                out.dims()
            ))
        })?;
        if w != self.output_dim() {
            bail!(
                "gaussian likelihood ({} noise, D = {}): network outputs must be [B, {}], got [{b}, {w}]",
                self.noise.name(),
                self.dim,
                self.output_dim()
            );
        }
        let mu = out.narrow(1, 0, self.dim)?;
        let log_std = match (self.noise, &self.log_std) {
            (Noise::Fixed { std }, _) => Tensor::full(std.ln(), (b, self.dim), out.device())?.to_dtype(out.dtype())?,
            (Noise::Homoscedastic { .. }, Some(ls)) => {
                ls.to_dtype(out.dtype())?.unsqueeze(0)?.broadcast_as((b, self.dim))?
            }
            (Noise::Homoscedastic { .. }, None) => bail!("gaussian likelihood: homoscedastic noise without its log σ"),
            (Noise::Heteroscedastic { min_std }, _) => {
                let raw = out.narrow(1, self.dim, self.dim)?;
                (softplus(&raw)? + min_std)?.log()?
            }
        };
        Ok((mu, log_std))
    }

    /// The mean `μ` and standard deviation `σ`, both `[B, D]`, of the outputs (see
    /// [`Gaussian::mean_log_std`]).
    pub fn mean_std(&self, out: &Tensor) -> Result<(Tensor, Tensor)> {
        let (mu, log_std) = self.mean_log_std(out)?;
        Ok((mu, log_std.exp()?))
    }

    /// The targets as `[B, D]` in the outputs' dtype (`[B]` is accepted when `D = 1`).
    fn targets(&self, targets: &Tensor, b: usize, dtype: DType) -> Result<Tensor> {
        let t = match targets.dims() {
            [n] if self.dim == 1 => targets.reshape((*n, 1))?,
            [_, _] => targets.clone(),
            other => bail!(
                "gaussian likelihood: targets must be [B, {}] floats, got {other:?}",
                self.dim
            ),
        };
        if t.dims() != [b, self.dim] {
            bail!(
                "gaussian likelihood: targets {:?} do not match the batch [{b}, {}]",
                targets.dims(),
                self.dim
            );
        }
        t.to_dtype(dtype)
    }

    /// The mean NLL over the batch, `(1/B) Σᵢ Σ_d [½ log(2π) + log σ_{id} + (y_{id} − μ_{id})² /
    /// (2 σ_{id}²)]` (the Gaussian NLL of Nix & Weigend 1994 and Kendall & Gal 2017, eq. (8),
    /// with its constant), a differentiable scalar. `out: [B, output_dim]`, `targets: [B, D]`.
    ///
    /// ```
    /// use secateur_inference::likelihood::{Gaussian, Noise};
    /// use secateur_bayes::{ParamBuilder, ParamStore, SeededRng};
    /// use candle_core::{DType, Device, Tensor};
    /// let pb = ParamBuilder::new(ParamStore::new(), SeededRng::new(0), DType::F64, Device::Cpu);
    /// let g = Gaussian::new(Noise::Fixed { std: 2.0 }, 1, &pb)?;
    /// let out = Tensor::new(&[[1f64]], &Device::Cpu)?;
    /// let y = Tensor::new(&[3f64], &Device::Cpu)?;
    /// // ½ log(2π·4) + (3 − 1)² / 8 = 1.612086 + 0.5
    /// let nll = g.nll(&out, &y)?.to_scalar::<f64>()?;
    /// assert!((nll - (0.5 * (8.0 * std::f64::consts::PI).ln() + 0.5)).abs() < 1e-12);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn nll(&self, out: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let (mu, log_std) = self.mean_log_std(out)?;
        let b = mu.dim(0)?;
        let y = self.targets(targets, b, mu.dtype())?;
        let z = ((y - mu)? * (log_std.neg()?.exp()?))?;
        let per = ((z.sqr()? * 0.5)? + log_std)?;
        per.sum(D::Minus1)?.mean_all()? + HALF_LOG_2PI * self.dim as f64
    }
}

/// The likelihood of a model's targets given its outputs.
#[derive(Debug, Clone, Default)]
pub enum Likelihood {
    /// Softmax over logits `[B, K]`, integer labels `[B]` (classification; the default).
    #[default]
    Categorical,
    /// Diagonal Gaussian over real targets `[B, D]` (regression).
    Gaussian(Gaussian),
}

impl Likelihood {
    /// Whether this is the categorical (classification) likelihood.
    pub fn is_categorical(&self) -> bool {
        matches!(self, Likelihood::Categorical)
    }

    /// The Gaussian likelihood, if this is one.
    pub fn gaussian(&self) -> Option<&Gaussian> {
        match self {
            Likelihood::Gaussian(g) => Some(g),
            Likelihood::Categorical => None,
        }
    }

    /// The mean NLL over the batch of the network outputs `out` for `targets`, a differentiable
    /// scalar: the softmax cross-entropy `−(1/B) Σᵢ log softmax(outᵢ)_{yᵢ}` for
    /// [`Likelihood::Categorical`] (computed by `secateur_bayes::nn::cross_entropy`, exactly
    /// as the trainer did before likelihoods existed), [`Gaussian::nll`] otherwise.
    pub fn nll(&self, out: &Tensor, targets: &Tensor) -> Result<Tensor> {
        match self {
            Likelihood::Categorical => cross_entropy(out, targets),
            Likelihood::Gaussian(g) => g.nll(out, targets),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use secateur_bayes::{ParamStore, SeededRng};

    fn builder() -> (ParamStore, ParamBuilder) {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F64, Device::Cpu);
        (store, pb)
    }

    fn softplus64(x: f64) -> f64 {
        x.max(0.0) + (-x.abs()).exp().ln_1p()
    }

    /// The Gaussian NLL of one scalar target, written out in f64.
    fn hand(y: f64, mu: f64, sigma: f64) -> f64 {
        0.5 * (2.0 * std::f64::consts::PI * sigma * sigma).ln() + (y - mu).powi(2) / (2.0 * sigma * sigma)
    }

    const OUT: [[f64; 4]; 3] = [[0.3, -1.2, 0.5, -0.7], [1.1, 0.4, -2.0, 0.9], [-0.6, 2.2, 0.1, 0.0]];
    const Y: [[f64; 2]; 3] = [[0.8, -1.0], [0.2, 0.9], [-2.0, 1.5]];

    fn nll_of(g: &Gaussian, out: &[[f64; 4]; 3], width: usize) -> Result<f64> {
        let rows: Vec<f64> = out.iter().flat_map(|r| r[..width].to_vec()).collect();
        let out = Tensor::from_vec(rows, (3, width), &Device::Cpu)?;
        let y = Tensor::new(&Y, &Device::Cpu)?;
        g.nll(&out, &y)?.to_scalar::<f64>()
    }

    #[test]
    fn nll_matches_the_hand_formula_for_each_noise_kind() -> Result<()> {
        let (_, pb) = builder();
        // fixed σ = 0.7: mean over 3 rows of the sum over 2 dims of the scalar NLL
        let g = Gaussian::new(Noise::Fixed { std: 0.7 }, 2, &pb)?;
        let want: f64 = (0..3)
            .map(|i| (0..2).map(|d| hand(Y[i][d], OUT[i][d], 0.7)).sum::<f64>())
            .sum::<f64>()
            / 3.0;
        let got = nll_of(&g, &OUT, 2)?;
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // homoscedastic, σ initialised at 1.3 for both dims (initial values are drawn in f32, so
        // log σ is log 1.3 rounded to f32)
        let g = Gaussian::new(Noise::Homoscedastic { init_std: 1.3 }, 2, &pb)?;
        let s = f64::from(1.3f64.ln() as f32).exp();
        let want: f64 = (0..3)
            .map(|i| (0..2).map(|d| hand(Y[i][d], OUT[i][d], s)).sum::<f64>())
            .sum::<f64>()
            / 3.0;
        let got = nll_of(&g, &OUT, 2)?;
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // heteroscedastic: σ = softplus(raw) + 0.05, raw in columns 2..4
        let g = Gaussian::new(Noise::Heteroscedastic { min_std: 0.05 }, 2, &pb)?;
        let want: f64 = (0..3)
            .map(|i| {
                (0..2)
                    .map(|d| hand(Y[i][d], OUT[i][d], softplus64(OUT[i][2 + d]) + 0.05))
                    .sum::<f64>()
            })
            .sum::<f64>()
            / 3.0;
        assert!((nll_of(&g, &OUT, 4)? - want).abs() < 1e-12);
        // a worked number: y = 1, μ = 0, σ = 1 → ½ log 2π + ½ = 1.4189385332046727
        let g = Gaussian::new(Noise::Fixed { std: 1.0 }, 1, &pb)?;
        let v = g
            .nll(
                &Tensor::new(&[[0f64]], &Device::Cpu)?,
                &Tensor::new(&[1f64], &Device::Cpu)?,
            )?
            .to_scalar::<f64>()?;
        assert!((v - 1.418_938_533_204_672_7).abs() < 1e-15, "{v}");
        Ok(())
    }

    /// Central differences of `f` at `x` in every coordinate.
    fn fd(x: &[f64], f: &dyn Fn(&[f64]) -> Result<f64>) -> Result<Vec<f64>> {
        let h = 1e-6;
        (0..x.len())
            .map(|j| {
                let (mut a, mut b) = (x.to_vec(), x.to_vec());
                a[j] += h;
                b[j] -= h;
                Ok((f(&a)? - f(&b)?) / (2.0 * h))
            })
            .collect()
    }

    #[test]
    fn gradients_match_finite_differences_for_each_noise_kind() -> Result<()> {
        let y = Tensor::new(&Y, &Device::Cpu)?;
        for noise in [
            Noise::Fixed { std: 0.7 },
            Noise::Homoscedastic { init_std: 0.8 },
            Noise::Heteroscedastic { min_std: 0.05 },
        ] {
            let (store, pb) = builder();
            let g = Gaussian::new(noise, 2, &pb)?;
            let w = g.output_dim();
            let flat: Vec<f64> = OUT.iter().flat_map(|r| r[..w].to_vec()).collect();
            let out = Var::from_tensor(&Tensor::from_vec(flat.clone(), (3, w), &Device::Cpu)?)?;
            let grads = g.nll(out.as_tensor(), &y)?.backward()?;
            let got: Vec<f64> = grads
                .get(out.as_tensor())
                .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?
                .flatten_all()?
                .to_vec1()?;
            let want = fd(&flat, &|v| {
                let o = Tensor::from_vec(v.to_vec(), (3, w), &Device::Cpu)?;
                g.nll(&o, &y)?.to_scalar::<f64>()
            })?;
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-7 * (1.0 + b.abs()), "{noise:?}: {a} vs {b}");
            }
            if let Noise::Homoscedastic { .. } = noise {
                // gradient w.r.t. the learned log σ, against finite differences of a fresh
                // likelihood initialised at log σ ± h
                let ls = store.get(LOG_STD_NAME).unwrap();
                let got: Vec<f64> = grads.get(ls.as_tensor()).unwrap().to_vec1()?;
                let at = |log_std: &[f64]| -> Result<f64> {
                    let out = Tensor::from_vec(flat.clone(), (3, w), &Device::Cpu)?;
                    let mu = out.narrow(1, 0, 2)?;
                    let t = Tensor::new(log_std, &Device::Cpu)?.unsqueeze(0)?.broadcast_as((3, 2))?;
                    // the same formula with log σ as an input: independent of the Var plumbing
                    let z = ((&y - mu)? * t.neg()?.exp()?)?;
                    ((z.sqr()? * 0.5)? + t)?.sum(1)?.mean_all()?.to_scalar::<f64>()
                };
                let log_s = f64::from(0.8f64.ln() as f32); // initial values are drawn in f32
                let want = fd(&[log_s, log_s], &at)?;
                // closed form: ∂/∂ log σ_d = (1/B) Σᵢ [1 − (yᵢ_d − μᵢ_d)² / σ²]
                let var = (2.0 * log_s).exp();
                for d in 0..2 {
                    let cf = (0..3).map(|i| 1.0 - (Y[i][d] - OUT[i][d]).powi(2) / var).sum::<f64>() / 3.0;
                    assert!((got[d] - cf).abs() < 1e-12, "{} vs {cf}", got[d]);
                    assert!((got[d] - want[d]).abs() < 1e-7, "{} vs {}", got[d], want[d]);
                }
            }
        }
        Ok(())
    }

    #[test]
    fn bad_noise_and_shapes_are_refused_by_field() {
        let (_, pb) = builder();
        let e = |n: Noise| Gaussian::new(n, 1, &pb).unwrap_err().to_string();
        assert!(e(Noise::Fixed { std: 0.0 }).contains("`std`"));
        assert!(e(Noise::Fixed { std: -1.0 }).contains("`std`"));
        assert!(e(Noise::Fixed { std: f64::NAN }).contains("`std`"));
        assert!(e(Noise::Homoscedastic { init_std: f64::NAN }).contains("`init_std`"));
        assert!(e(Noise::Heteroscedastic { min_std: -0.1 }).contains("`min_std`"));
        assert!(Gaussian::new(Noise::Fixed { std: 1.0 }, 0, &pb)
            .unwrap_err()
            .to_string()
            .contains("`dim`"));
        let g = Gaussian::new(Noise::Heteroscedastic { min_std: 0.0 }, 1, &pb).unwrap();
        let out = Tensor::zeros((4, 1), DType::F64, &Device::Cpu).unwrap();
        let y = Tensor::zeros(4, DType::F64, &Device::Cpu).unwrap();
        assert!(g.nll(&out, &y).unwrap_err().to_string().contains("[B, 2]"));
        let out = Tensor::zeros((4, 2), DType::F64, &Device::Cpu).unwrap();
        let y3 = Tensor::zeros(3, DType::F64, &Device::Cpu).unwrap();
        assert!(g.nll(&out, &y3).is_err());
        assert!(g.nll(&out, &y).is_ok());
    }

    #[test]
    fn categorical_is_the_cross_entropy() -> Result<()> {
        let logits = Tensor::new(&[[2f32, 0.5, -1.0], [0.1, 0.2, 0.3]], &Device::Cpu)?;
        let labels = Tensor::new(&[0u32, 2], &Device::Cpu)?;
        let a = Likelihood::Categorical.nll(&logits, &labels)?.to_scalar::<f32>()?;
        let b = cross_entropy(&logits, &labels)?.to_scalar::<f32>()?;
        assert_eq!(a.to_bits(), b.to_bits());
        Ok(())
    }
}
