//! A pass of S samples ([`Ctx::with_samples`]) against S ordinary passes.
//!
//! - Gaussian linear and convolution layers: the moments of the S sample blocks against the closed
//!   forms of one pass — the mean `x μᵀ + b_μ`, the variance `x² (σ²)ᵀ + b_σ²`, the covariance of
//!   two rows of one pass (`Σ_k x₁ₖ x₂ₖ σₖ² + b_σ²` for a weight sample shared by the batch, `b_σ²`
//!   for Flipout's shared bias, 0 for local reparameterisation), and 0 between rows of different blocks (independent
//!   passes) — on identical blocks (the stacked-weight path) and on distinct ones (block by block).
//! - Batch norm in training mode: each block normalised with its own statistics and the running
//!   statistics updated once per block, equal to the same S passes run one after the other.
//! - Deterministic layers on identical blocks: every block equals the one-pass output.

use candle_core::{DType, Device, Result, Tensor};
use secateur_bayes::ctx::tile;
use secateur_bayes::layers::{BayesConv2d, BayesLinear, Conv2dGeom};
use secateur_bayes::nn::{BatchNorm, Linear};
use secateur_bayes::{Ctx, Module, ParamBuilder, ParamStore, Prior, Sampling, SeededRng};

const S: usize = 6000;

/// A 3 → 2 Gaussian linear layer with a random bias, σ between 0.2 and 0.7.
fn layer() -> Result<BayesLinear> {
    let dev = Device::Cpu;
    let mu = Tensor::new(&[[0.5f64, -1.0, 0.3], [0.2, 0.8, -0.6]], &dev)?;
    // ρ such that σ = softplus(ρ) ∈ {0.2, …, 0.7}
    let sig = [[0.2f64, 0.5, 0.3], [0.7, 0.4, 0.6]];
    let rho: Vec<f64> = sig.iter().flatten().map(|s: &f64| (s.exp() - 1.0).ln()).collect();
    let rho = Tensor::from_vec(rho, (2, 3), &dev)?;
    let b_mu = Tensor::new(&[0.1f64, -0.2], &dev)?;
    let b_rho = Tensor::new(&[(0.3f64.exp() - 1.0).ln(), (0.1f64.exp() - 1.0).ln()], &dev)?;
    BayesLinear::from_tensors("fc", mu, rho, Some((b_mu, b_rho)), Prior::default())
}

const SIGMA: [[f64; 3]; 2] = [[0.2, 0.5, 0.3], [0.7, 0.4, 0.6]];
const B_SIGMA: [f64; 2] = [0.3, 0.1];

/// Output `[S, 2 rows, 2 units]` of one pass of `S` samples of the two-row batch `x`, the
/// blocks identical (`shared`) or made distinct by an exact no-op that clears the flag.
fn pass(x: &[[f64; 3]; 2], sampling: Sampling, shared: bool, seed: u64) -> Result<Vec<[[f64; 2]; 2]>> {
    let fc = layer()?;
    let xt = Tensor::new(x, &Device::Cpu)?;
    let mut rng = SeededRng::new(seed);
    let mut ctx = Ctx::eval(&mut rng, sampling).with_samples(S);
    ctx.shared = shared;
    let y = fc.forward(&tile(&xt, S)?, &mut ctx)?;
    assert!(!ctx.shared, "a noisy layer must clear `shared`");
    let v: Vec<f64> = y.flatten_all()?.to_vec1()?;
    Ok(v.chunks(4).map(|c| [[c[0], c[1]], [c[2], c[3]]]).collect())
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn cov(a: &[f64], b: &[f64]) -> f64 {
    let (ma, mb) = (mean(a), mean(b));
    a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum::<f64>() / (a.len() - 1) as f64
}

/// What one pass shares across its rows: the weight and bias sample (weight sampling), the
/// bias sample only (Flipout: the weight perturbation is decorrelated by the sign flips), nothing
/// (local reparameterisation).
#[derive(Clone, Copy, PartialEq)]
enum Shares {
    WeightAndBias,
    Bias,
    Nothing,
}

/// Checks every first and second moment of the S blocks against the closed forms.
fn check_moments(sampling: Sampling, shared_blocks: bool, shares: Shares) -> Result<()> {
    let x = [[1.0, 0.5, -2.0], [0.3, -1.5, 0.8]];
    let out = pass(&x, sampling, shared_blocks, 7)?;
    let mu = [[0.5, -1.0, 0.3], [0.2, 0.8, -0.6]];
    let b_mu = [0.1, -0.2];
    let n = S as f64;
    for u in 0..2 {
        let col = |r: usize| out.iter().map(|o| o[r][u]).collect::<Vec<f64>>();
        let var_of = |r: usize| {
            (0..3)
                .map(|k| x[r][k] * x[r][k] * SIGMA[u][k] * SIGMA[u][k])
                .sum::<f64>()
                + B_SIGMA[u] * B_SIGMA[u]
        };
        for (r, xr) in x.iter().enumerate() {
            let m = (0..3).map(|k| xr[k] * mu[u][k]).sum::<f64>() + b_mu[u];
            let v = var_of(r);
            let (em, ev) = (mean(&col(r)), cov(&col(r), &col(r)));
            assert!(
                (em - m).abs() < 5.0 * (v / n).sqrt(),
                "{sampling:?} row {r} unit {u}: mean {em} vs {m}"
            );
            assert!(
                (ev - v).abs() < 5.0 * v * (2.0 / n).sqrt(),
                "{sampling:?} row {r} unit {u}: var {ev} vs {v}"
            );
        }
        // the two rows of one pass
        let c_true = match shares {
            Shares::WeightAndBias => {
                (0..3)
                    .map(|k| x[0][k] * x[1][k] * SIGMA[u][k] * SIGMA[u][k])
                    .sum::<f64>()
                    + B_SIGMA[u] * B_SIGMA[u]
            }
            Shares::Bias => B_SIGMA[u] * B_SIGMA[u],
            Shares::Nothing => 0.0,
        };
        let (v0, v1) = (var_of(0), var_of(1));
        let se = ((v0 * v1 + c_true * c_true) / n).sqrt();
        let c = cov(&col(0), &col(1));
        assert!(
            (c - c_true).abs() < 5.0 * se,
            "{sampling:?} unit {u}: within-pass covariance {c} vs {c_true}"
        );
        // row 0 of pass s against row 1 of pass s + 1: independent passes
        let a = col(0);
        let b: Vec<f64> = col(1).into_iter().cycle().skip(1).take(S).collect();
        let c = cov(&a, &b);
        assert!(
            c.abs() < 5.0 * (v0 * v1 / n).sqrt(),
            "{sampling:?} unit {u}: across-pass covariance {c}"
        );
    }
    Ok(())
}

#[test]
fn gaussian_linear_blocks_have_the_moments_of_independent_passes() -> Result<()> {
    for shared in [true, false] {
        check_moments(Sampling::Weight, shared, Shares::WeightAndBias)?;
        check_moments(Sampling::Local, shared, Shares::Nothing)?;
        check_moments(Sampling::Flipout, shared, Shares::Bias)?;
    }
    Ok(())
}

#[test]
fn gaussian_conv_blocks_have_the_moments_of_independent_passes() -> Result<()> {
    // A 1×1 convolution is a linear map per pixel: conv blocks must show the linear layer's
    // covariance between two pixels of one pass (shared weight sample) and none across passes.
    let dev = Device::Cpu;
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store, SeededRng::new(3), DType::F64, dev.clone());
    let conv = BayesConv2d::new(
        &pb.pp("c"),
        secateur_bayes::layers::BayesConv2dConfig::new(2, 1, 1)
            .with_geom(Conv2dGeom::default())
            .with_init_std(0.5),
    )?;
    let x = Tensor::new(&[[[[1.0f64, -0.5]], [[0.4, 2.0]]]], &dev)?; // [1, 2, 1, 2]
                                                                     // identical blocks (one convolution with S·O outputs) and distinct ones (a grouped
                                                                     // convolution); Flipout's signs are per example and channel, so two pixels of one pass share
                                                                     // them and have the same covariance as under weight sampling
    for sampling in [Sampling::Weight, Sampling::Flipout] {
        for shared in [true, false] {
            conv_moments(&conv, &x, sampling, shared)?;
        }
    }
    Ok(())
}

fn conv_moments(conv: &BayesConv2d, x: &Tensor, sampling: Sampling, shared: bool) -> Result<()> {
    let s = 4000;
    let mut rng = SeededRng::new(11);
    let mut ctx = Ctx::eval(&mut rng, sampling).with_samples(s);
    ctx.shared = shared;
    let y: Vec<f64> = conv.forward(&tile(x, s)?, &mut ctx)?.flatten_all()?.to_vec1()?;
    let p0: Vec<f64> = y.iter().step_by(2).copied().collect();
    let p1: Vec<f64> = y.iter().skip(1).step_by(2).copied().collect();
    let sig: Vec<f64> = conv
        .weight_rho()
        .flatten_all()?
        .to_vec1::<f64>()?
        .iter()
        .map(|r| r.exp().ln_1p())
        .collect();
    let bs = conv
        .bias()
        .map(|(_, r)| r.to_vec1::<f64>().map(|v| v[0].exp().ln_1p()))
        .transpose()?
        .unwrap_or(0.0);
    let xs = [[1.0, 0.4], [-0.5, 2.0]]; // [pixel][channel]
    let v = |p: usize| (0..2).map(|k| xs[p][k] * xs[p][k] * sig[k] * sig[k]).sum::<f64>() + bs * bs;
    let c_true = (0..2).map(|k| xs[0][k] * xs[1][k] * sig[k] * sig[k]).sum::<f64>() + bs * bs;
    let n = s as f64;
    let c = cov(&p0, &p1);
    assert!(
        (c - c_true).abs() < 5.0 * ((v(0) * v(1) + c_true * c_true) / n).sqrt(),
        "{c} vs {c_true}"
    );
    for (p, col) in [&p0, &p1].into_iter().enumerate() {
        let e = cov(col, col);
        assert!(
            (e - v(p)).abs() < 5.0 * v(p) * (2.0 / n).sqrt(),
            "pixel {p}: {e} vs {}",
            v(p)
        );
    }
    let shifted: Vec<f64> = p1.iter().cycle().skip(1).take(s).copied().collect();
    assert!(cov(&p0, &shifted).abs() < 5.0 * (v(0) * v(1) / n).sqrt());
    Ok(())
}

#[test]
fn batch_norm_blocks_match_sequential_passes() -> Result<()> {
    let dev = Device::Cpu;
    let make = || -> Result<BatchNorm> {
        let pb = ParamBuilder::new(ParamStore::new(), SeededRng::new(0), DType::F64, dev.clone());
        BatchNorm::new(&pb.pp("bn"), 2)
    };
    let s = 3;
    let xs: Vec<Tensor> = (0..s)
        .map(|k| {
            Tensor::new(
                &[[1.0f64 + k as f64, -2.0], [0.5, 3.0 * k as f64], [2.0, 1.0 - k as f64]],
                &dev,
            )
        })
        .collect::<Result<_>>()?;
    // S ordinary passes, one after the other
    let seq = make()?;
    let mut rng = SeededRng::new(0);
    let mut ys = Vec::new();
    for x in &xs {
        ys.push(seq.forward(x, &mut Ctx::train(&mut rng, Sampling::Mean))?);
    }
    let want = Tensor::cat(&ys, 0)?;
    // one pass of S distinct blocks
    let bat = make()?;
    let mut ctx = Ctx::train(&mut rng, Sampling::Mean).with_samples(s);
    ctx.shared = false;
    let got = bat.forward(&Tensor::cat(&xs, 0)?, &mut ctx)?;
    let diff = |a: &Tensor, b: &Tensor| -> Result<f64> { (a - b)?.abs()?.max_all()?.to_scalar::<f64>() };
    assert!(diff(&got, &want)? < 1e-12);
    assert!(diff(bat.running_mean.as_tensor(), seq.running_mean.as_tensor())? < 1e-12);
    assert!(diff(bat.running_var.as_tensor(), seq.running_var.as_tensor())? < 1e-12);
    // identical blocks: normalised once, the running statistics still updated S times
    let seq = make()?;
    for _ in 0..s {
        seq.forward(&xs[0], &mut Ctx::train(&mut rng, Sampling::Mean))?;
    }
    let bat = make()?;
    let mut ctx = Ctx::train(&mut rng, Sampling::Mean).with_samples(s);
    let got = bat.forward(&tile(&xs[0], s)?, &mut ctx)?;
    assert!(ctx.shared, "batch norm draws no noise");
    let one = make()?.forward(&xs[0], &mut Ctx::train(&mut rng, Sampling::Mean))?;
    assert!(diff(&got, &tile(&one, s)?)? < 1e-12);
    assert!(diff(bat.running_mean.as_tensor(), seq.running_mean.as_tensor())? < 1e-12);
    assert!(diff(bat.running_var.as_tensor(), seq.running_var.as_tensor())? < 1e-12);
    Ok(())
}

#[test]
fn deterministic_layers_on_shared_blocks_equal_one_pass() -> Result<()> {
    let dev = Device::Cpu;
    let pb = ParamBuilder::new(ParamStore::new(), SeededRng::new(5), DType::F64, dev.clone());
    let fc = Linear::new(&pb.pp("fc"), secateur_bayes::nn::LinearCfg::new(4, 3))?;
    let x = Tensor::new(&[[1.0f64, 2.0, -1.0, 0.5], [0.0, -3.0, 2.0, 1.0]], &dev)?;
    let mut rng = SeededRng::new(0);
    let one = fc.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
    let mut ctx = Ctx::eval(&mut rng, Sampling::Mean).with_samples(4);
    let got = fc.forward(&tile(&x, 4)?, &mut ctx)?;
    assert!(ctx.shared);
    assert_eq!(got.to_vec2::<f64>()?, tile(&one, 4)?.to_vec2::<f64>()?);
    // a first dimension that is not a multiple of S is refused with the shape named
    let err = fc
        .forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean).with_samples(3))
        .unwrap_err();
    assert!(err.to_string().contains("multiple of 3"), "{err}");
    Ok(())
}

/// A grouped Gaussian convolution (2 groups) on distinct blocks, with σ ≈ 0 so that every weight
/// draw is the mean: each block of the S-sample pass (the `S · groups`-group convolution over
/// the blocks stacked as channels) must equal the one-sample convolution of that block's input —
/// which fails if a block meets another block's channels or kernels.
#[test]
fn grouped_conv_blocks_meet_their_own_channels() -> Result<()> {
    let dev = Device::Cpu;
    let mut r = SeededRng::new(21);
    let mu = r.randn(&[4, 2, 3, 3], DType::F64, &dev)?; // 4 outputs, 4 inputs in 2 groups
    let rho = (mu.zeros_like()? - 40.0)?; // σ = softplus(−40) ≈ 4e−18
    let b_mu = r.randn(&[4], DType::F64, &dev)?;
    let b_rho = (b_mu.zeros_like()? - 40.0)?;
    let geom = Conv2dGeom {
        padding: 1,
        groups: 2,
        ..Conv2dGeom::default()
    };
    let conv = BayesConv2d::from_tensors("c", mu, rho, Some((b_mu, b_rho)), Prior::default(), geom)?;
    let s = 3;
    let x = r.randn(&[s * 2, 4, 5, 5], DType::F64, &dev)?; // 3 distinct blocks of 2 examples
    for sampling in [Sampling::Weight, Sampling::Flipout] {
        let mut rng = SeededRng::new(1);
        let mut ctx = Ctx::eval(&mut rng, sampling).with_samples(s);
        ctx.shared = false;
        let got = conv.forward(&x, &mut ctx)?;
        for k in 0..s {
            let xk = x.narrow(0, 2 * k, 2)?;
            let want = conv.forward(&xk, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
            let d = (got.narrow(0, 2 * k, 2)? - want)?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?;
            // σ ε adds below 1e-16 per term and f64 rounding of these 18-term sums about 1e-15;
            // a block convolved with another block's channels is off by O(1)
            assert!(d < 1e-9, "{sampling:?} block {k}: {d}");
        }
    }
    Ok(())
}
