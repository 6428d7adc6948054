//! Mean-field Gaussian layers: the estimators against explicit weight sampling and their
//! closed-form moments, finite-difference gradients, determinism, and the registry.

mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::{check_gradients, moments, vec, Z};
use secateur_bayes::layers::{BayesConv2d, BayesConv2dConfig, BayesLinear, BayesLinearConfig, Conv2dGeom};
use secateur_bayes::math::softplus;
use secateur_bayes::{Ctx, Divergence, Module, ParamBuilder, ParamStore, Prior, Sampling, SeededRng};

fn builder(seed: u64) -> (ParamStore, ParamBuilder) {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(seed), DType::F64, Device::Cpu);
    (store, pb)
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    SeededRng::new(seed).randn(shape, DType::F64, &Device::Cpu).unwrap()
}

fn draw(m: &dyn Module, x: &Tensor, s: Sampling, rng: &mut SeededRng) -> Vec<f64> {
    vec(&m.forward(x, &mut Ctx::train(rng, s)).unwrap())
}

/// Closed-form moments of a Gaussian-weight layer's pre-activations: mean = layer(x; μ, b_μ),
/// variance = layer(x²; σ², b_σ²) (the identity behind the local reparameterisation).
fn exact_moments_linear(l: &BayesLinear, x: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
    let (bm, br) = l.bias().unwrap();
    let mean = x.matmul(&l.weight_mu().t()?)?.broadcast_add(bm)?;
    let s2 = softplus(l.weight_rho())?.sqr()?;
    let var = x.sqr()?.matmul(&s2.t()?)?.broadcast_add(&softplus(br)?.sqr()?)?;
    Ok((vec(&mean), vec(&var)))
}

fn exact_moments_conv(l: &BayesConv2d, x: &Tensor, g: Conv2dGeom) -> Result<(Vec<f64>, Vec<f64>)> {
    let (bm, br) = l.bias().unwrap();
    let o = bm.elem_count();
    let mean = x
        .conv2d(l.weight_mu(), g.padding, g.stride, g.dilation, g.groups)?
        .broadcast_add(&bm.reshape((1, o, 1, 1))?)?;
    let s2 = softplus(l.weight_rho())?.sqr()?;
    let var = x
        .sqr()?
        .conv2d(&s2, g.padding, g.stride, g.dilation, g.groups)?
        .broadcast_add(&softplus(br)?.sqr()?.reshape((1, o, 1, 1))?)?;
    Ok((vec(&mean), vec(&var)))
}

/// Checks sample moments against exact ones: mean within Z·√(v/n), variance within
/// Z·v·√(2/(n−1)) (the standard error of a Gaussian sample variance).
fn assert_moments(what: &str, draws: &[Vec<f64>], exact: &(Vec<f64>, Vec<f64>)) {
    let n = draws.len() as f64;
    let (m, v) = moments(draws);
    for i in 0..m.len() {
        let (em, ev) = (exact.0[i], exact.1[i]);
        assert!(
            (m[i] - em).abs() < Z * (ev / n).sqrt(),
            "{what}[{i}]: mean {} vs {em}",
            m[i]
        );
        assert!(
            (v[i] - ev).abs() < Z * ev * (2.0 / (n - 1.0)).sqrt(),
            "{what}[{i}]: var {} vs {ev}",
            v[i]
        );
    }
}

#[test]
fn linear_estimators_have_the_moments_of_weight_sampling() -> Result<()> {
    let (_, pb) = builder(0);
    let l = BayesLinear::new(&pb.pp("fc"), BayesLinearConfig::new(5, 3).with_init_std(0.4))?;
    let x = randn(&[1, 5], 1);
    let exact = exact_moments_linear(&l, &x)?;
    let n = 8000;
    let mut rng = SeededRng::new(2);
    let weight: Vec<_> = (0..n).map(|_| draw(&l, &x, Sampling::Weight, &mut rng)).collect();
    assert_moments("weight sampling", &weight, &exact);
    // LRT: one forward over n copies of x draws n independent pre-activations.
    let xs = x.repeat((n, 1))?;
    let lrt = vec(&l.forward(&xs, &mut Ctx::train(&mut rng, Sampling::Local))?);
    let lrt: Vec<Vec<f64>> = lrt.chunks(3).map(|c| c.to_vec()).collect();
    assert_moments("local reparameterisation", &lrt, &exact);
    // Explicit weight sampling vs LRT directly: difference of means within Z·√(2v/n).
    let ((mw, vw), (ml, vl)) = (moments(&weight), moments(&lrt));
    for j in 0..3 {
        assert!((mw[j] - ml[j]).abs() < Z * (2.0 * exact.1[j] / n as f64).sqrt());
        assert!((vw[j] - vl[j]).abs() < Z * exact.1[j] * (4.0 / (n as f64 - 1.0)).sqrt());
    }
    Ok(())
}

#[test]
fn flipout_is_unbiased_with_the_weight_sampling_variance() -> Result<()> {
    let (_, pb) = builder(3);
    let l = BayesLinear::new(&pb.pp("fc"), BayesLinearConfig::new(4, 2).with_init_std(0.5))?;
    // A batch of three different examples: each row must have mean x μᵀ + b_μ and variance
    // x² σ²ᵀ + b_σ² (the per-example signs square to one).
    let x = randn(&[3, 4], 4);
    let exact = exact_moments_linear(&l, &x)?;
    let mut rng = SeededRng::new(5);
    let draws: Vec<_> = (0..8000).map(|_| draw(&l, &x, Sampling::Flipout, &mut rng)).collect();
    assert_moments("flipout", &draws, &exact);
    // Mean sampling is exactly the mean-weight output.
    let mean = draw(&l, &x, Sampling::Mean, &mut rng);
    let eval = vec(&l.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?);
    for i in 0..mean.len() {
        assert!((mean[i] - exact.0[i]).abs() < 1e-12 && mean[i] == eval[i]);
    }
    Ok(())
}

#[test]
fn conv_estimators_have_the_moments_of_weight_sampling() -> Result<()> {
    let geom = Conv2dGeom {
        stride: 2,
        padding: 1,
        ..Default::default()
    };
    let (_, pb) = builder(6);
    let cfg = BayesConv2dConfig::new(2, 3, 3).with_geom(geom).with_init_std(0.3);
    let l = BayesConv2d::new(&pb.pp("conv"), cfg)?;
    let x = randn(&[1, 2, 5, 5], 7);
    let exact = exact_moments_conv(&l, &x, geom)?;
    let per = exact.0.len();
    let n = 4000;
    let mut rng = SeededRng::new(8);
    let weight: Vec<_> = (0..n).map(|_| draw(&l, &x, Sampling::Weight, &mut rng)).collect();
    assert_moments("conv weight sampling", &weight, &exact);
    let xs = x.repeat((n, 1, 1, 1))?;
    let lrt = vec(&l.forward(&xs, &mut Ctx::train(&mut rng, Sampling::Local))?);
    let lrt: Vec<Vec<f64>> = lrt.chunks(per).map(|c| c.to_vec()).collect();
    assert_moments("conv local reparameterisation", &lrt, &exact);
    // Flipout on a batch of two examples.
    let x2 = randn(&[2, 2, 5, 5], 9);
    let exact2 = exact_moments_conv(&l, &x2, geom)?;
    let flip: Vec<_> = (0..n).map(|_| draw(&l, &x2, Sampling::Flipout, &mut rng)).collect();
    assert_moments("conv flipout", &flip, &exact2);
    Ok(())
}

const ALL: [Sampling; 4] = [Sampling::Mean, Sampling::Weight, Sampling::Local, Sampling::Flipout];

/// Loss = Σ out ⊙ R + divergence, with the noise re-seeded identically at each evaluation.
fn loss(
    m: &dyn Module,
    v: &dyn secateur_bayes::Variational,
    x: &Tensor,
    r: &Tensor,
    s: Sampling,
    how: &Divergence,
) -> Result<Tensor> {
    let mut rng = SeededRng::new(42);
    let y = m.forward(x, &mut Ctx::train(&mut rng, s))?;
    (y * r)?.sum_all()? + v.divergence(how, &mut rng)?
}

#[test]
fn linear_gradients_match_finite_differences() -> Result<()> {
    for (k, s) in ALL.into_iter().enumerate() {
        let (store, pb) = builder(10);
        let l = BayesLinear::new(&pb.pp("fc"), BayesLinearConfig::new(4, 3).with_init_std(0.3))?;
        let x = Var::from_tensor(&randn(&[2, 4], 11))?;
        let r = randn(&[2, 3], 12);
        let how = [
            Divergence::Kl,
            Divergence::JsG { alpha: 0.3 },
            Divergence::KlMonteCarlo { samples: 2 },
        ][k % 3];
        let names = ["fc.weight_mu", "fc.weight_rho", "fc.bias_mu", "fc.bias_rho"];
        let vars: Vec<Var> = names.iter().map(|n| store.get(n).unwrap()).collect();
        let mut list: Vec<(&str, &Var)> = names.iter().copied().zip(vars.iter()).collect();
        list.push(("x", &x));
        check_gradients(&list, 12, || loss(&l, &l, x.as_tensor(), &r, s, &how))
            .map_err(|e| candle_core::Error::Msg(format!("{s:?}: {e}")))?;
    }
    Ok(())
}

#[test]
fn conv_gradients_match_finite_differences() -> Result<()> {
    let geom = Conv2dGeom {
        stride: 2,
        padding: 1,
        ..Default::default()
    };
    for s in ALL {
        let (store, pb) = builder(13);
        let cfg = BayesConv2dConfig::new(2, 3, 3).with_geom(geom).with_init_std(0.3);
        let l = BayesConv2d::new(&pb.pp("conv"), cfg)?;
        let x = Var::from_tensor(&randn(&[2, 2, 5, 5], 14))?;
        let r = randn(&[2, 3, 3, 3], 15);
        let names = ["conv.weight_mu", "conv.weight_rho", "conv.bias_mu", "conv.bias_rho"];
        let vars: Vec<Var> = names.iter().map(|n| store.get(n).unwrap()).collect();
        let mut list: Vec<(&str, &Var)> = names.iter().copied().zip(vars.iter()).collect();
        list.push(("x", &x));
        check_gradients(&list, 10, || loss(&l, &l, x.as_tensor(), &r, s, &Divergence::Kl))?;
    }
    Ok(())
}

#[test]
fn same_seed_same_outputs() -> Result<()> {
    for s in ALL {
        let run = || -> Result<(Vec<f64>, Vec<f64>)> {
            let (_, pb) = builder(20);
            let fc = BayesLinear::new(&pb.pp("fc"), BayesLinearConfig::new(3, 2).with_init_std(0.1))?;
            let cv = BayesConv2d::new(&pb.pp("cv"), BayesConv2dConfig::new(1, 2, 2).with_init_std(0.1))?;
            let mut rng = SeededRng::new(21);
            let a = draw(&fc, &randn(&[4, 3], 22), s, &mut rng);
            let b = draw(&cv, &randn(&[2, 1, 3, 3], 23), s, &mut rng);
            Ok((a, b))
        };
        assert_eq!(run()?, run()?, "{s:?}");
    }
    Ok(())
}

#[test]
fn registry_sums_divergences_and_lists_posterior_stats() -> Result<()> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
    let prior = Prior::gaussian(0.0, 0.5).unwrap();
    let b = BayesLinear::new(&pb.pp("b"), BayesLinearConfig::new(3, 2).with_prior(prior))?;
    let a: Box<dyn Module> = Box::new(BayesConv2d::new(
        &pb.pp("a"),
        BayesConv2dConfig::new(1, 2, 3).with_bias(false),
    )?);
    let layers = store.variational_layers();
    assert_eq!(layers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    let mut rng = SeededRng::new(1);
    let (total, per) = store.divergence(&Divergence::Kl, &mut rng)?;
    let total = total.to_scalar::<f32>()? as f64;
    assert!((total - per.values().sum::<f64>()).abs() < 1e-3 * total);
    // per-layer value equals the layer's own analytic KL (weights + bias, summed)
    let (bm, br) = b.bias().unwrap();
    let direct = secateur_bayes::divergence::kl_gaussian(b.weight_mu(), &softplus(b.weight_rho())?, 0.0, 0.5)?
        .add(&secateur_bayes::divergence::kl_gaussian(bm, &softplus(br)?, 0.0, 0.5)?)?
        .to_scalar::<f32>()? as f64;
    assert!((per["b"] - direct).abs() < 1e-4 * direct);
    let stats = store.posterior_stats()?;
    let names: Vec<_> = stats.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a.weight", "b.weight", "b.bias"]);
    let snr = vec(&stats[1].snr()?);
    let mu = vec(b.weight_mu());
    for (s, m) in snr.iter().zip(mu) {
        assert!(
            (s - m.abs() / 1e-3).abs() < 1e-2 * s.max(1.0),
            "{s} vs {}",
            m.abs() / 1e-3
        );
    }
    // a boxed layer still trains the registered parameters
    let y = a.forward(
        &Tensor::ones((1, 1, 3, 3), DType::F32, &Device::Cpu)?,
        &mut Ctx::eval(&mut rng, Sampling::Mean),
    )?;
    assert_eq!(y.dims(), &[1, 2, 1, 1]);
    // a second layer at the same path is refused
    assert!(BayesLinear::new(&pb.pp("b"), BayesLinearConfig::new(3, 2)).is_err());
    // a non-Gaussian prior with analytic KL is refused, naming the layer
    let pb2 = ParamBuilder::new(ParamStore::new(), SeededRng::new(0), DType::F32, Device::Cpu);
    let mix = Prior::scale_mixture(0.5, 1.0, 0.01).unwrap();
    BayesLinear::new(&pb2.pp("m"), BayesLinearConfig::new(2, 2).with_prior(mix))?;
    let e = pb2
        .store()
        .divergence(&Divergence::Kl, &mut rng)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`m`") && e.contains("kl-mc"), "{e}");
    assert!(pb2
        .store()
        .divergence(&Divergence::KlMonteCarlo { samples: 1 }, &mut rng)
        .is_ok());
    Ok(())
}

#[test]
fn bad_configs_are_refused() {
    let (_, pb) = builder(0);
    assert!(BayesLinear::new(&pb.pp("x"), BayesLinearConfig::new(2, 2).with_init_std(0.0)).is_err());
    assert!(BayesConv2d::new(
        &pb.pp("y"),
        BayesConv2dConfig::new(3, 4, 3).with_geom(Conv2dGeom {
            groups: 2,
            ..Default::default()
        })
    )
    .is_err());
}

/// Mean and sample standard deviation, minimum and maximum of a tensor's entries.
fn summary(t: &Tensor) -> Result<(f64, f64, f64, f64)> {
    let v: Vec<f64> = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Ok((mean, sd, lo, hi))
}

/// `bayes.posterior_init`: the three starts draw μ and ρ from the distributions their doc
/// states. 48,000 weights per layer: the sample mean is within 4 standard errors
/// (4 · 0.1/√48000 ≈ 0.0018) of the stated mean, the sample std within 2% of the stated one
/// (its standard error is ≈ 0.3%), and uniform draws stay in their interval.
#[test]
fn posterior_inits_draw_what_they_state() -> Result<()> {
    use secateur_bayes::layers::PosteriorInit;
    let std0 = 0.048_587_351_573_742_06; // softplus(−3)
    let rho0 = -3.0;
    for init in [
        PosteriorInit::Torch,
        PosteriorInit::BayesianTorch,
        PosteriorInit::Blundell,
    ] {
        let (store, pb) = builder(11);
        let cfg = BayesLinearConfig::new(400, 120)
            .with_init_std(std0)
            .with_posterior_init(init);
        BayesLinear::new(&pb, cfg)?;
        let p = store.params();
        let get = |n: &str| p[n].as_tensor().clone();
        for (mu_name, rho_name) in [("weight_mu", "weight_rho"), ("bias_mu", "bias_rho")] {
            let (mu, rho) = (summary(&get(mu_name))?, summary(&get(rho_name))?);
            let big = mu_name == "weight_mu"; // the bias has 120 entries: bounds only
            match init {
                PosteriorInit::Torch => {
                    // PyTorch's U(±1/√400) for both, ρ constant
                    assert!(mu.2 >= -0.05 && mu.3 <= 0.05, "{init:?} {mu_name} {mu:?}");
                    assert!((rho.2 - rho0).abs() < 1e-6 && (rho.3 - rho0).abs() < 1e-6, "{rho:?}");
                }
                PosteriorInit::BayesianTorch => {
                    if big {
                        assert!(mu.0.abs() < 0.0018 && (mu.1 / 0.1 - 1.0).abs() < 0.02, "{mu:?}");
                        assert!(
                            (rho.0 - rho0).abs() < 0.0018 && (rho.1 / 0.1 - 1.0).abs() < 0.02,
                            "{rho:?}"
                        );
                    }
                }
                PosteriorInit::Blundell => {
                    assert!(mu.2 >= -0.2 && mu.3 <= 0.2, "{mu:?}");
                    assert!(rho.2 >= rho0 - 0.5 && rho.3 <= rho0 + 0.5, "{rho:?}");
                    if big {
                        // U(a, b): std (b − a)/√12
                        assert!((mu.1 / (0.4 / 12f64.sqrt()) - 1.0).abs() < 0.02, "{mu:?}");
                        assert!((rho.1 / (1.0 / 12f64.sqrt()) - 1.0).abs() < 0.02, "{rho:?}");
                    }
                }
            }
        }
    }
    // the names parse back, an unknown one is refused with the known ones
    for n in PosteriorInit::NAMES {
        assert!(n.parse::<PosteriorInit>().is_ok(), "{n}");
    }
    let e = "kaiming".parse::<PosteriorInit>().unwrap_err();
    assert!(e.contains("bayesian-torch"), "{e}");
    Ok(())
}

/// `kl_reduction = "tensor-mean"` (bayesian-torch's `kl_div(...).mean()` per tensor): the layer's
/// divergence is the weight tensor's mean KL plus the bias tensor's mean KL, against the closed
/// form `log(σp/σq) + (σq² + (μq − μp)²)/(2σp²) − ½` evaluated entry by entry here; `sum` is the
/// sum of the same entries.
#[test]
fn tensor_mean_reduction_is_bayesian_torchs_per_tensor_mean() -> Result<()> {
    use secateur_bayes::layers::{KlReduction, PosteriorInit};
    use secateur_bayes::Variational;
    let prior = Prior::Gaussian { mean: 0.1, std: 0.7 };
    let mut got = Vec::new();
    for r in [KlReduction::Sum, KlReduction::TensorMean] {
        let (store, pb) = builder(5);
        let cfg = BayesLinearConfig::new(7, 3)
            .with_prior(prior)
            .with_init_std(0.05)
            .with_posterior_init(PosteriorInit::BayesianTorch)
            .with_kl_reduction(r);
        let layer = BayesLinear::new(&pb, cfg)?;
        let d: f64 = layer
            .divergence(&Divergence::Kl, &mut SeededRng::new(0))?
            .to_dtype(DType::F64)?
            .to_scalar()?;
        let p = store.params();
        let kl = |mu: &str, rho: &str| -> Result<Vec<f64>> {
            let m = vec(p[mu].as_tensor());
            let r: Vec<f64> = vec(p[rho].as_tensor());
            Ok(m.iter()
                .zip(&r)
                .map(|(m, r)| {
                    let s = (1.0f64 + r.exp()).ln();
                    (0.7f64 / s).ln() + (s * s + (m - 0.1).powi(2)) / (2.0 * 0.49) - 0.5
                })
                .collect())
        };
        let (w, b) = (kl("weight_mu", "weight_rho")?, kl("bias_mu", "bias_rho")?);
        let want = match r {
            KlReduction::Sum => w.iter().sum::<f64>() + b.iter().sum::<f64>(),
            KlReduction::TensorMean => w.iter().sum::<f64>() / 21.0 + b.iter().sum::<f64>() / 3.0,
        };
        assert!((d - want).abs() < 1e-9 * want.abs().max(1.0), "{r:?}: {d} vs {want}");
        got.push(d);
    }
    // same seed, same parameters: the two reductions differ only by the division
    assert!(got[0] > 5.0 * got[1], "{got:?}");
    assert_eq!("tensor-mean".parse::<KlReduction>(), Ok(KlReduction::TensorMean));
    assert!("mean".parse::<KlReduction>().unwrap_err().contains("tensor-mean"));
    Ok(())
}
