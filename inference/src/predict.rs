//! Batched prediction: class probabilities ([`predict`], [`predict_mc`] with the entropy
//! decomposition) and Gaussian regression predictives ([`predict_regression`] with the variance
//! decomposition of [`decompose_gaussian`]).

use crate::batches::Batches;
use crate::likelihood::Gaussian;
use crate::objective::samples_in_one_pass;
use candle_core::{DType, Result, D};
use secateur_bayes::ctx::tile;
use secateur_bayes::{Ctx, Module, Sampling, SeededRng};

/// Predicted probabilities (row-major `[N × classes]`) and the true labels of a data set.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// Softmax probabilities, row-major `[N × classes]`.
    pub probs: Vec<f32>,
    /// True labels, length N.
    pub labels: Vec<u32>,
    /// Number of classes.
    pub classes: usize,
}

/// Runs `model` in evaluation mode over every batch of `data` and collects the softmax
/// probabilities. `rng` feeds stochastic layers when `sampling` is not [`Sampling::Mean`].
pub fn predict(
    model: &dyn Module,
    data: &mut dyn Batches,
    sampling: Sampling,
    rng: &mut SeededRng,
) -> Result<Predictions> {
    data.start_epoch(0, rng);
    let mut probs = Vec::new();
    let mut labels = Vec::new();
    let mut classes = 0;
    // computation only: the pool's other workers poll for its kernels (runtime::warm)
    secateur_kernels::runtime::warm(|| -> Result<()> {
        for i in 0..data.num_batches() {
            let (x, y) = data.batch(i, rng)?;
            let mut ctx = Ctx::eval(rng, sampling);
            let logits = model.forward(&x, &mut ctx)?;
            classes = logits.dim(D::Minus1)?;
            let p = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
            probs.extend(p.flatten_all()?.to_vec1::<f32>()?);
            labels.extend(y.to_dtype(DType::U32)?.to_vec1::<u32>()?);
        }
        Ok(())
    })?;
    Ok(Predictions { probs, labels, classes })
}

/// Monte Carlo predictions: the averaged probabilities and the per-example uncertainty
/// decomposition of [`decompose`].
#[derive(Debug, Clone, PartialEq)]
pub struct McPredictions {
    /// `p̄ = (1/S) Σₛ softmax(f(x; wₛ))`, row-major `[N × classes]`, with the labels.
    pub predictions: Predictions,
    /// Number of samples S.
    pub samples: usize,
    /// Per example, the predictive entropy `H[p̄]` (nats).
    pub predictive_entropy: Vec<f32>,
    /// Per example, the expected entropy `(1/S) Σₛ H[pₛ]` (aleatoric part, nats).
    pub expected_entropy: Vec<f32>,
    /// Per example, the mutual information `H[p̄] − (1/S) Σₛ H[pₛ]` between the label and the
    /// weights (epistemic part, nats, ≥ 0).
    pub mutual_information: Vec<f32>,
}

impl McPredictions {
    /// No examples yet, `samples` samples each.
    fn empty(samples: usize) -> Self {
        Self {
            predictions: Predictions {
                probs: Vec::new(),
                labels: Vec::new(),
                classes: 0,
            },
            samples,
            predictive_entropy: Vec::new(),
            expected_entropy: Vec::new(),
            mutual_information: Vec::new(),
        }
    }

    /// The Bayesian model average of `S = draws.len()` sets of predicted probabilities of the
    /// same examples: `draws[s]` holds sample `s`'s probabilities, row-major `[N × classes]`, and
    /// `labels` the N true labels. The averaged probabilities and the per-example decomposition
    /// of [`decompose`]. Refuses no draws and draws of the wrong length.
    ///
    /// ```
    /// use secateur_inference::predict::McPredictions;
    /// let m = McPredictions::from_draws(&[vec![1.0, 0.0], vec![0.0, 1.0]], vec![0], 2).unwrap();
    /// assert_eq!(m.predictions.probs, vec![0.5, 0.5]);
    /// assert!((m.mutual_information[0] as f64 - 2f64.ln()).abs() < 1e-6);
    /// ```
    pub fn from_draws(draws: &[Vec<f32>], labels: Vec<u32>, classes: usize) -> Result<Self> {
        let n = labels.len();
        if draws.is_empty() {
            candle_core::bail!("a Bayesian model average needs at least one sample");
        }
        if let Some(d) = draws.iter().find(|d| d.len() != n * classes) {
            candle_core::bail!(
                "a sample holds {} probabilities, expected {n} examples × {classes} classes",
                d.len()
            );
        }
        let mut out = Self::empty(draws.len());
        push_decomposed(draws, n, classes, &mut out);
        out.predictions.labels = labels;
        out.predictions.classes = classes;
        Ok(out)
    }

    /// Mean over examples of the mutual information (epistemic uncertainty).
    pub fn mean_mutual_information(&self) -> f64 {
        mean(&self.mutual_information)
    }
    /// Mean over examples of the predictive entropy.
    pub fn mean_predictive_entropy(&self) -> f64 {
        mean(&self.predictive_entropy)
    }
    /// Mean over examples of the expected entropy (aleatoric uncertainty).
    pub fn mean_expected_entropy(&self) -> f64 {
        mean(&self.expected_entropy)
    }
}

fn mean(v: &[f32]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64
}

/// The entropy `H[p] = −Σₖ pₖ log pₖ` of one probability vector, in nats, with `0 log 0 = 0`.
///
/// ```
/// use secateur_inference::predict::entropy;
/// assert!((entropy(&[0.5, 0.5]) - 2f64.ln()).abs() < 1e-12);
/// assert_eq!(entropy(&[1.0, 0.0]), 0.0);
/// ```
pub fn entropy(p: &[f64]) -> f64 {
    -p.iter().filter(|&&q| q > 0.0).map(|&q| q * q.ln()).sum::<f64>()
}

/// The uncertainty decomposition of one example's predictive distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Uncertainty {
    /// `H[p̄]`, the entropy of the averaged probabilities (total uncertainty).
    pub predictive_entropy: f64,
    /// `(1/S) Σₛ H[pₛ]` (aleatoric).
    pub expected_entropy: f64,
    /// `H[p̄] − (1/S) Σₛ H[pₛ]` (epistemic), clamped at 0 against rounding.
    pub mutual_information: f64,
}

/// The decomposition of the predictive entropy of S sampled probability vectors `samples[s]`
/// (Houlsby et al. 2011, "BALD"; Depeweg et al. 2018; Gal 2016 §3.3):
///
/// ```text
/// H[p̄] = (1/S) Σₛ H[pₛ]  +  I(y; w | x, D),       p̄ = (1/S) Σₛ pₛ
///        (aleatoric)         (epistemic, mutual information ≥ 0 by the concavity of H)
/// ```
///
/// The mutual information is zero exactly when all samples agree.
///
/// ```
/// use secateur_inference::predict::decompose;
/// // two confident samples that disagree: no aleatoric, all epistemic (log 2)
/// let u = decompose(&[&[1.0, 0.0], &[0.0, 1.0]]);
/// assert!(u.expected_entropy.abs() < 1e-12);
/// assert!((u.mutual_information - 2f64.ln()).abs() < 1e-12);
/// ```
pub fn decompose(samples: &[&[f64]]) -> Uncertainty {
    let s = samples.len().max(1) as f64;
    let k = samples.first().map(|p| p.len()).unwrap_or(0);
    let mut mean_p = vec![0f64; k];
    let mut expected = 0f64;
    for p in samples {
        for (m, &q) in mean_p.iter_mut().zip(p.iter()) {
            *m += q / s;
        }
        expected += entropy(p) / s;
    }
    let predictive = entropy(&mean_p);
    Uncertainty {
        predictive_entropy: predictive,
        expected_entropy: expected,
        mutual_information: (predictive - expected).max(0.0),
    }
}

/// `S` stochastic forward passes of `model` in evaluation mode over every batch of `data`,
/// averaging the softmax probabilities (the Monte Carlo posterior predictive
/// `p(y | x, D) ≈ (1/S) Σₛ p(y | x, wₛ)`), with the per-example decomposition of [`decompose`].
///
/// `sampling` selects the estimator of the stochastic layers (`Weight`, `Local`, `Flipout`;
/// `Mean` makes every sample identical, so the mutual information is 0). All draws come from
/// `rng`. Where [`samples_in_one_pass`] says so and the inputs are rows of features (or the
/// device is a GPU), the S passes of a batch run as passes of several samples at once
/// ([`Ctx::with_samples`]: the part of the network before the first noisy layer is computed once
/// per pass), as many as keep the tiled input under [`MC_PASS_ELEMENTS`] elements, so the draws
/// depend on the batch size; otherwise as S consecutive passes. Images on the CPU take one
/// sample per pass: there the several-sample pass gains nothing while it holds S-fold
/// activations (a mean-field VGG-11 at batch 1000 and 10 samples peaked at 20 GiB resident).
/// `samples = 0` is refused.
pub fn predict_mc(
    model: &dyn Module,
    data: &mut dyn Batches,
    sampling: Sampling,
    samples: usize,
    rng: &mut SeededRng,
) -> Result<McPredictions> {
    if samples == 0 {
        candle_core::bail!("predict_mc: field `samples` must be at least 1, got 0");
    }
    data.start_epoch(0, rng);
    let mut out = McPredictions::empty(samples);
    let mut labels = Vec::new();
    let mut classes = 0;
    // computation only: the pool's other workers poll for its kernels (runtime::warm)
    secateur_kernels::runtime::warm(|| -> Result<()> {
        for i in 0..data.num_batches() {
            let (x, y) = data.batch(i, rng)?;
            let b = x.dim(0)?;
            if b == 0 {
                continue;
            }
            let mut draws: Vec<Vec<f32>> = Vec::with_capacity(samples);
            let per_pass = samples_per_pass(samples, &x, sampling);
            while draws.len() < samples {
                let s = per_pass.min(samples - draws.len());
                let mut ctx = Ctx::eval(rng, sampling).with_samples(s);
                let logits = model.forward(&tile(&x, s)?, &mut ctx)?;
                classes = logits.dim(D::Minus1)?;
                if logits.dims() != [s * b, classes] {
                    candle_core::bail!(
                        "predict_mc: a pass of {s} samples of a batch of {b} returned logits of shape {:?}",
                        logits.dims()
                    );
                }
                let p = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
                let p = p.flatten_all()?.to_vec1::<f32>()?;
                draws.extend(p.chunks(b * classes).map(<[f32]>::to_vec));
            }
            push_decomposed(&draws, y.dim(0)?, classes, &mut out);
            labels.extend(y.to_dtype(DType::U32)?.to_vec1::<u32>()?);
        }
        Ok(())
    })?;
    out.predictions.labels = labels;
    out.predictions.classes = classes;
    Ok(out)
}

/// The largest tiled input, in elements, that [`predict_mc`] evaluates in one pass (2²² = 4 Mi
/// values, 16 MiB in f32): it bounds the memory of a pass of several samples.
pub const MC_PASS_ELEMENTS: usize = 1 << 22;

/// How many of `samples` Monte Carlo samples one pass evaluates for an input `x`: 1 where
/// [`samples_in_one_pass`] says no, and for image inputs (`[B, C, H, W]`) on the CPU; else as
/// many as fit under [`MC_PASS_ELEMENTS`], at least one.
///
/// Images get one sample per pass on the CPU because there the several-sample pass gains nothing
/// (LeNet-5 with local reparameterisation: 0.98–1.03× the time of S passes to predict,
/// BENCHMARKS.md) while every activation of the network is S times larger and, with no backward
/// pass to come, still held by the graph until the logits are read: a mean-field VGG-11
/// evaluated at batch 1000 with 10 samples (5 per pass) peaked at 20 GiB resident, on a 24 GiB
/// machine. The bound on the input does not bound the activations, which a convolution widens
/// 64-fold in VGG's first layer. Feature rows keep the several-sample pass, which costs an MLP's
/// 8 samples about two passes.
fn samples_per_pass(samples: usize, x: &candle_core::Tensor, sampling: Sampling) -> usize {
    if !samples_in_one_pass(sampling, x.device()) || (x.rank() > 2 && !x.device().is_cuda()) {
        return 1;
    }
    (MC_PASS_ELEMENTS / x.elem_count().max(1)).clamp(1, samples.max(1))
}

/// Appends to `out` the averaged probabilities and the decomposition of [`decompose`] of `n`
/// examples, from `draws[s]`, the row-major `[n × classes]` probabilities of sample `s`.
fn push_decomposed(draws: &[Vec<f32>], n: usize, classes: usize, out: &mut McPredictions) {
    let samples = draws.len();
    let mut row: Vec<Vec<f64>> = vec![vec![0.0; classes]; samples];
    for e in 0..n {
        for (s, d) in draws.iter().enumerate() {
            for (k, r) in row[s].iter_mut().enumerate() {
                *r = d[e * classes + k] as f64;
            }
        }
        let refs: Vec<&[f64]> = row.iter().map(Vec::as_slice).collect();
        let u = decompose(&refs);
        for k in 0..classes {
            let m = refs.iter().map(|p| p[k]).sum::<f64>() / samples as f64;
            out.predictions.probs.push(m as f32);
        }
        out.predictive_entropy.push(u.predictive_entropy as f32);
        out.expected_entropy.push(u.expected_entropy as f32);
        out.mutual_information.push(u.mutual_information as f32);
    }
}

/// The moments of an equally weighted mixture of `S` Gaussians `N(μₛ, σₛ²)` (one target
/// dimension of one example), split into aleatoric and epistemic parts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaussianMoments {
    /// The predictive mean `μ̄ = (1/S) Σₛ μₛ`.
    pub mean: f64,
    /// The aleatoric variance `(1/S) Σₛ σₛ²` (expected noise).
    pub aleatoric: f64,
    /// The epistemic variance `(1/S) Σₛ μₛ² − μ̄²` (spread of the sampled means).
    pub epistemic: f64,
}

impl GaussianMoments {
    /// The predictive variance `aleatoric + epistemic`, the variance of the mixture.
    pub fn variance(&self) -> f64 {
        self.aleatoric + self.epistemic
    }
}

/// The law of total variance for `S` posterior samples `(μₛ, σₛ)` of a Gaussian predictive
/// (Kendall & Gal 2017, eq. (9); Depeweg et al. 2018, eq. (10)):
///
/// ```text
/// μ̄ = (1/S) Σₛ μₛ,    Var[y] = (1/S) Σₛ σₛ²  +  ((1/S) Σₛ μₛ² − μ̄²)
///                              (aleatoric)      (epistemic)
/// ```
///
/// The epistemic part is computed in the equivalent two-pass form `(1/S) Σₛ (μₛ − μ̄)²`, which
/// is never negative and does not cancel catastrophically. `mu` and `sigma` have the same
/// length `S` (an empty slice gives NaN moments).
///
/// ```
/// use secateur_inference::predict::decompose_gaussian;
/// // samples N(1, 1) and N(3, 1): mean 2, aleatoric 1, epistemic (1 + 9)/2 − 4 = 1
/// let m = decompose_gaussian(&[1.0, 3.0], &[1.0, 1.0]);
/// assert_eq!((m.mean, m.aleatoric, m.epistemic), (2.0, 1.0, 1.0));
/// ```
pub fn decompose_gaussian(mu: &[f64], sigma: &[f64]) -> GaussianMoments {
    let s = mu.len() as f64;
    let mean = mu.iter().sum::<f64>() / s;
    let aleatoric = sigma.iter().map(|v| v * v).sum::<f64>() / s;
    let epistemic = mu.iter().map(|m| (m - mean) * (m - mean)).sum::<f64>() / s;
    GaussianMoments {
        mean,
        aleatoric,
        epistemic,
    }
}

/// Monte Carlo predictions of a Gaussian likelihood: for `N` examples, `S` posterior samples
/// and `D` target dimensions, the sampled means and standard deviations and the targets.
/// Everything is kept per sample so that both the moment-matched and the mixture predictive
/// can be evaluated ([`crate::metrics::regression_metrics`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RegressionPredictions {
    /// `μₛ(xᵢ)_d` at `[(i · S + s) · D + d]` (`[N × S × D]`).
    pub sample_mean: Vec<f32>,
    /// `σₛ(xᵢ)_d` at the same positions.
    pub sample_std: Vec<f32>,
    /// The targets `yᵢ_d` at `[i · D + d]` (`[N × D]`).
    pub targets: Vec<f32>,
    /// Number of samples S.
    pub samples: usize,
    /// Target dimension D.
    pub dim: usize,
}

impl RegressionPredictions {
    /// Number of examples N.
    pub fn len(&self) -> usize {
        self.targets.len() / self.dim.max(1)
    }

    /// Whether there is no example.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The S samples `(μₛ, σₛ)` of example `i`, dimension `d`, in f64.
    pub fn samples_of(&self, i: usize, d: usize) -> (Vec<f64>, Vec<f64>) {
        let at = |s: usize| (i * self.samples + s) * self.dim + d;
        (0..self.samples)
            .map(|s| (f64::from(self.sample_mean[at(s)]), f64::from(self.sample_std[at(s)])))
            .unzip()
    }

    /// The [`decompose_gaussian`] moments of example `i`, dimension `d`.
    pub fn moments(&self, i: usize, d: usize) -> GaussianMoments {
        let (mu, sigma) = self.samples_of(i, d);
        decompose_gaussian(&mu, &sigma)
    }

    /// The predictions in other units under the affine map `y ↦ shift + scale · y` (`scale > 0`),
    /// e.g. back from standardised targets to the original ones: means and targets are mapped,
    /// standard deviations multiplied by `scale`.
    pub fn rescaled(&self, shift: f64, scale: f64) -> Result<Self> {
        if !(scale.is_finite() && scale > 0.0 && shift.is_finite()) {
            candle_core::bail!("rescaled: `scale` must be finite and > 0 and `shift` finite, got {scale}, {shift}");
        }
        let map = |v: &f32| (shift + scale * f64::from(*v)) as f32;
        Ok(Self {
            sample_mean: self.sample_mean.iter().map(map).collect(),
            sample_std: self.sample_std.iter().map(|v| (scale * f64::from(*v)) as f32).collect(),
            targets: self.targets.iter().map(map).collect(),
            samples: self.samples,
            dim: self.dim,
        })
    }
}

/// `S` forward passes of `model` in evaluation mode over every batch of `data`, each read by the
/// Gaussian `likelihood` as means and standard deviations `(μₛ, σₛ)`: the Monte Carlo posterior
/// predictive `p(y | x, D) ≈ (1/S) Σₛ N(y; μₛ(x), σₛ²(x))`. Batches yield `(inputs, targets)`
/// with float targets `[B, D]` (or `[B]` for `D = 1`).
///
/// `sampling` selects the estimator of the stochastic layers; `Sampling::Mean` with
/// `samples = 1` is the deterministic (or posterior-mean) prediction, with zero epistemic
/// variance. All draws come from `rng`; the S passes of a batch run several samples at a time
/// as in [`predict_mc`]. `samples = 0` is refused.
pub fn predict_regression(
    model: &dyn Module,
    likelihood: &Gaussian,
    data: &mut dyn Batches,
    sampling: Sampling,
    samples: usize,
    rng: &mut SeededRng,
) -> Result<RegressionPredictions> {
    if samples == 0 {
        candle_core::bail!("predict_regression: field `samples` must be at least 1, got 0");
    }
    let dim = likelihood.dim();
    data.start_epoch(0, rng);
    let (mut sample_mean, mut sample_std, mut targets) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..data.num_batches() {
        let (x, y) = data.batch(i, rng)?;
        let b = x.dim(0)?;
        if b == 0 {
            continue;
        }
        let mut draws: Vec<(Vec<f32>, Vec<f32>)> = Vec::with_capacity(samples);
        let per_pass = samples_per_pass(samples, &x, sampling);
        while draws.len() < samples {
            let s = per_pass.min(samples - draws.len());
            let mut ctx = Ctx::eval(rng, sampling).with_samples(s);
            let out = model.forward(&tile(&x, s)?, &mut ctx)?;
            if out.dim(0)? != s * b {
                candle_core::bail!(
                    "predict_regression: a pass of {s} samples of a batch of {b} returned {} rows",
                    out.dim(0)?
                );
            }
            let (mu, sigma) = likelihood.mean_std(&out.to_dtype(DType::F32)?)?;
            let mu = mu.flatten_all()?.to_vec1::<f32>()?;
            let sigma = sigma.flatten_all()?.to_vec1::<f32>()?;
            let per = mu.len() / s;
            draws.extend(
                mu.chunks(per)
                    .zip(sigma.chunks(per))
                    .map(|(m, g)| (m.to_vec(), g.to_vec())),
            );
        }
        let y = y.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let n = draws[0].0.len() / dim;
        if y.len() != n * dim {
            candle_core::bail!(
                "predict_regression: batch {i} has {} target values for {n} examples × {dim} dimensions",
                y.len()
            );
        }
        for e in 0..n {
            for (mu, sigma) in &draws {
                sample_mean.extend_from_slice(&mu[e * dim..(e + 1) * dim]);
                sample_std.extend_from_slice(&sigma[e * dim..(e + 1) * dim]);
            }
        }
        targets.extend(y);
    }
    Ok(RegressionPredictions {
        sample_mean,
        sample_std,
        targets,
        samples,
        dim,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn images_take_one_sample_per_pass_on_the_cpu_and_rows_several() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let rows = candle_core::Tensor::zeros((1000, 784), DType::F32, &dev)?;
        let images = candle_core::Tensor::zeros((1000, 1, 28, 28), DType::F32, &dev)?;
        // 2²² / 784,000 = 5 samples of a batch of 1000 rows fit under MC_PASS_ELEMENTS
        assert_eq!(samples_per_pass(10, &rows, Sampling::Local), 5);
        assert_eq!(samples_per_pass(3, &rows, Sampling::Local), 3);
        assert_eq!(samples_per_pass(10, &rows, Sampling::Weight), 1);
        // the same number of input elements as images: one sample per pass
        assert_eq!(samples_per_pass(10, &images, Sampling::Local), 1);
        assert_eq!(samples_per_pass(10, &images, Sampling::Mean), 1);
        Ok(())
    }

    #[test]
    fn decomposition_on_hand_computed_probabilities() {
        // All samples agree on p = (0.7, 0.2, 0.1): MI = 0, H[p̄] = E H = H(p)
        //   = −(0.7 ln 0.7 + 0.2 ln 0.2 + 0.1 ln 0.1) = 0.249672 + 0.321888 + 0.230259 = 0.801819
        //   (0.8018185525433372 in Python's math.log).
        let p: &[f64] = &[0.7, 0.2, 0.1];
        let u = decompose(&[p, p, p]);
        assert!(close(u.predictive_entropy, 0.801_818_552_543_337_2), "{u:?}");
        assert!(close(u.predictive_entropy, u.expected_entropy));
        assert!(u.mutual_information < 1e-12);
        // Two samples (0.9, 0.1) and (0.5, 0.5): p̄ = (0.7, 0.3).
        //   H[p̄] = −(0.7 ln 0.7 + 0.3 ln 0.3) = 0.249672 + 0.361192 = 0.610864
        //   H(0.9, 0.1) = 0.094824 + 0.230259 = 0.325083;  H(0.5, 0.5) = ln 2 = 0.693147
        //   E H = 0.509115;  MI = 0.610864 − 0.509115 = 0.101749
        let u = decompose(&[&[0.9, 0.1], &[0.5, 0.5]]);
        let h = |p: f64| -(p * p.ln() + (1.0 - p) * (1.0 - p).ln());
        assert!(close(u.predictive_entropy, h(0.7)));
        assert!(close(u.expected_entropy, (h(0.9) + 2f64.ln()) / 2.0));
        assert!((u.mutual_information - 0.101_749).abs() < 1e-5, "{u:?}");
        assert!(close(u.predictive_entropy, u.expected_entropy + u.mutual_information));
        // MI ≥ 0 on many random-looking vectors (concavity of H)
        for a in 1..10 {
            for b in 1..10 {
                let (x, y) = (a as f64 / 10.0, b as f64 / 10.0);
                let u = decompose(&[&[x, 1.0 - x], &[y, 1.0 - y]]);
                assert!(u.mutual_information >= 0.0);
                assert!(u.predictive_entropy + 1e-12 >= u.expected_entropy);
                if a == b {
                    assert!(u.mutual_information < 1e-12);
                }
            }
        }
    }

    #[test]
    fn variance_decomposition_matches_the_mixture_variance() {
        // Hand example: μ = (1, 2, 6), σ = (1, 2, 2):
        //   μ̄ = 3; aleatoric = (1 + 4 + 4)/3 = 3; E[μ²] = (1 + 4 + 36)/3 = 41/3,
        //   epistemic = 41/3 − 9 = 14/3.
        let m = decompose_gaussian(&[1.0, 2.0, 6.0], &[1.0, 2.0, 2.0]);
        assert!(
            close(m.mean, 3.0) && close(m.aleatoric, 3.0) && close(m.epistemic, 14.0 / 3.0),
            "{m:?}"
        );
        // Direct computation: the variance of the mixture (1/S) Σ N(μₛ, σₛ²) by numerical
        // integration of (y − μ̄)² against its density on a fine grid (independent of the formula).
        let (mu, sigma) = ([1.0, 2.0, 6.0], [1.0, 2.0, 2.0]);
        let pdf = |y: f64| -> f64 {
            mu.iter()
                .zip(&sigma)
                .map(|(m, s)| (-(y - m) * (y - m) / (2.0 * s * s)).exp() / (s * (2.0 * std::f64::consts::PI).sqrt()))
                .sum::<f64>()
                / 3.0
        };
        let h = 1e-3;
        let (mut mass, mut first, mut second) = (0.0, 0.0, 0.0);
        let mut y = -30.0;
        while y < 40.0 {
            let p = pdf(y) * h;
            mass += p;
            first += y * p;
            second += y * y * p;
            y += h;
        }
        let var = second / mass - (first / mass).powi(2);
        assert!((mass - 1.0).abs() < 1e-9);
        assert!((first / mass - m.mean).abs() < 1e-9);
        assert!((var - m.variance()).abs() < 1e-8, "{var} vs {}", m.variance());
        // One sample: no epistemic part.
        let m = decompose_gaussian(&[0.4], &[0.3]);
        assert_eq!(m.epistemic, 0.0);
        assert!(close(m.aleatoric, 0.09));
    }
}
