//! Spike-and-slab node selection: gradients, the divergence against independent computations,
//! the relaxed inclusion variables, the test-time rule, validation and reproducibility.

mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::{check_gradients, vec, Z};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use secateur_bayes::layers::spike_slab::{kl_bernoulli, relaxed_bernoulli};
use secateur_bayes::layers::{
    Conv2dGeom, SpikeSlabConv2d, SpikeSlabConv2dConfig, SpikeSlabLinear, SpikeSlabLinearConfig,
};
use secateur_bayes::math::inv_softplus;
use secateur_bayes::{Ctx, Divergence, Module, ParamBuilder, ParamStore, Prior, Sampling, SeededRng, Variational};

fn uniform(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Tensor {
    SeededRng::new(seed)
        .rand_uniform(shape, lo, hi, DType::F64, &Device::Cpu)
        .unwrap()
}

fn var(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Var {
    Var::from_tensor(&uniform(shape, lo, hi, seed)).unwrap()
}

fn prior(pi: f64, slab_std: f64) -> Prior {
    Prior::spike_and_slab(pi, slab_std).unwrap()
}

fn loss(m: &dyn Module, v: &dyn Variational, x: &Tensor, r: &Tensor, s: Sampling) -> Result<Tensor> {
    let mut rng = SeededRng::new(7);
    let y = m.forward(x, &mut Ctx::train(&mut rng, s))?;
    (y * r)?.sum_all()? + v.divergence(&Divergence::Kl, &mut rng)?
}

/// The posterior-mean network (test-time rule) and the divergence, and the relaxed (unrounded)
/// training path with every sampling estimator, against central finite differences (f64). The
/// logits are away from 0 so the test-time rule does not switch within a step.
#[test]
fn gradients_match_finite_differences() -> Result<()> {
    let logits = [1.5f64, -0.8, 0.6];
    for (s, hard) in [
        (Sampling::Mean, true),
        (Sampling::Weight, false),
        (Sampling::Local, false),
        (Sampling::Flipout, false),
    ] {
        let mu = var(&[3, 4], -1.0, 1.0, 1);
        let rho = var(&[3, 4], -3.0, -1.0, 2);
        let bmu = var(&[3], -0.5, 0.5, 3);
        let brho = var(&[3], -3.0, -1.0, 4);
        let th = Var::from_tensor(&Tensor::new(&logits, &Device::Cpu)?)?;
        let l = SpikeSlabLinear::from_tensors(
            "fc",
            mu.as_tensor().clone(),
            rho.as_tensor().clone(),
            Some((bmu.as_tensor().clone(), brho.as_tensor().clone())),
            th.as_tensor().clone(),
            prior(0.3, 1.5),
            0.7,
            hard,
        )?;
        let x = var(&[2, 4], -1.0, 1.0, 5);
        let r = uniform(&[2, 3], -1.0, 1.0, 6);
        check_gradients(
            &[
                ("mu", &mu),
                ("rho", &rho),
                ("bias_mu", &bmu),
                ("bias_rho", &brho),
                ("logit", &th),
                ("x", &x),
            ],
            12,
            || loss(&l, &l, x.as_tensor(), &r, s),
        )?;

        let mu = var(&[3, 2, 3, 3], -1.0, 1.0, 8);
        let rho = var(&[3, 2, 3, 3], -3.0, -1.0, 9);
        let th = Var::from_tensor(&Tensor::new(&logits, &Device::Cpu)?)?;
        let geom = Conv2dGeom {
            padding: 1,
            ..Default::default()
        };
        let c = SpikeSlabConv2d::from_tensors(
            "cv",
            mu.as_tensor().clone(),
            rho.as_tensor().clone(),
            None,
            th.as_tensor().clone(),
            prior(0.3, 1.5),
            0.7,
            hard,
            geom,
        )?;
        let x = var(&[2, 2, 4, 4], -1.0, 1.0, 10);
        let r = uniform(&[2, 3, 4, 4], -1.0, 1.0, 11);
        check_gradients(&[("mu", &mu), ("rho", &rho), ("logit", &th), ("x", &x)], 12, || {
            loss(&c, &c, x.as_tensor(), &r, s)
        })?;
    }
    Ok(())
}

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The divergence by hand, in plain f64 loops: per node
/// `γ log(γ/λ) + (1−γ) log((1−γ)/(1−λ)) + γ Σᵢ [log(σ_s/σᵢ) + (σᵢ² + μᵢ²)/(2σ_s²) − ½]`, for
/// prior inclusion probabilities from the reference code's default to near one (the layer-wise
/// λ of LeNet-300-100 is 2.05e-3 and 9.73e-3).
#[test]
fn divergence_matches_a_hand_computation() -> Result<()> {
    for pi in [1e-4, 2.0549e-3, 9.7309e-3, 0.2, 0.9] {
        divergence_matches_a_hand_computation_at(pi)?;
    }
    Ok(())
}

fn divergence_matches_a_hand_computation_at(pi: f64) -> Result<()> {
    let ss = 0.8;
    let mu = uniform(&[3, 2], -1.0, 1.0, 20);
    let rho = uniform(&[3, 2], -2.0, 0.5, 21);
    let bmu = uniform(&[3], -1.0, 1.0, 22);
    let brho = uniform(&[3], -2.0, 0.5, 23);
    let th = Tensor::new(&[2.0f64, -1.0, 0.1], &Device::Cpu)?;
    let l = SpikeSlabLinear::from_tensors(
        "fc",
        mu.clone(),
        rho.clone(),
        Some((bmu.clone(), brho.clone())),
        th.clone(),
        prior(pi, ss),
        0.5,
        true,
    )?;
    let kl = l
        .divergence(&Divergence::Kl, &mut SeededRng::new(0))?
        .to_scalar::<f64>()?;
    let (m, r, bm, br, t) = (vec(&mu), vec(&rho), vec(&bmu), vec(&brho), vec(&th));
    let gauss = |mu: f64, rho: f64| {
        let s = softplus(rho);
        (ss / s).ln() + (s * s + mu * mu) / (2.0 * ss * ss) - 0.5
    };
    let mut want = 0.0;
    for j in 0..3 {
        let g = sigmoid(t[j]);
        want += g * (g / pi).ln() + (1.0 - g) * ((1.0 - g) / (1.0 - pi)).ln();
        let slab: f64 = (0..2).map(|i| gauss(m[2 * j + i], r[2 * j + i])).sum::<f64>() + gauss(bm[j], br[j]);
        want += g * slab;
    }
    assert!(
        (kl - want).abs() < 1e-10 * want.abs().max(1.0),
        "λ = {pi}: {kl} vs {want}"
    );
    // only `kl` is defined
    let e = l
        .divergence(&Divergence::JsG { alpha: 0.5 }, &mut SeededRng::new(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("fc") && e.contains("js:0.5"), "{e}");
    Ok(())
}

/// `KL(q ‖ p)` of the spike-and-slab pair by Monte Carlo from its definition,
/// `E_q[log q(z, w) − log p(z, w)]`: with `z ~ Bern(γ)`, the point masses cancel when `z = 0`
/// (ratio `(1−γ)/(1−λ)`) and the densities are Gaussian when `z = 1` (ratio
/// `γ N(w; μ, σ²) / (λ N(w; 0, σ_s²))`). Compared with the layer's closed form within Z standard
/// errors.
#[test]
fn divergence_matches_monte_carlo_of_the_definition() -> Result<()> {
    let (pi, ss) = (0.3, 1.2);
    let mu = [0.4f64, -0.7, 1.1, 0.2];
    let sig = [0.3f64, 0.9, 0.5, 0.2];
    let logit = [0.7f64, -1.2];
    let rho: Vec<f64> = sig.iter().map(|&s| inv_softplus(s)).collect();
    let l = SpikeSlabLinear::from_tensors(
        "fc",
        Tensor::from_vec(mu.to_vec(), (2, 2), &Device::Cpu)?,
        Tensor::from_vec(rho, (2, 2), &Device::Cpu)?,
        None,
        Tensor::new(&logit, &Device::Cpu)?,
        prior(pi, ss),
        0.5,
        true,
    )?;
    let kl = l
        .divergence(&Divergence::Kl, &mut SeededRng::new(0))?
        .to_scalar::<f64>()?;
    let log_n =
        |w: f64, m: f64, s: f64| -0.5 * ((w - m) / s).powi(2) - s.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln();
    let mut rng = SeededRng::new(11);
    let n = 200_000;
    let draws: Vec<f64> = (0..n)
        .map(|_| {
            let mut d = 0.0;
            for (j, &t) in logit.iter().enumerate() {
                let g = sigmoid(t);
                if rng.random::<f64>() < g {
                    d += (g / pi).ln();
                    for i in 0..2 {
                        let k = 2 * j + i;
                        let e: f64 = StandardNormal.sample(&mut rng);
                        let w = mu[k] + sig[k] * e;
                        d += log_n(w, mu[k], sig[k]) - log_n(w, 0.0, ss);
                    }
                } else {
                    d += ((1.0 - g) / (1.0 - pi)).ln();
                }
            }
            d
        })
        .collect();
    let mean = draws.iter().sum::<f64>() / n as f64;
    let sd = (draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0)).sqrt();
    let se = sd / (n as f64).sqrt();
    assert!((mean - kl).abs() < Z * se, "MC {mean} ± {se} vs closed form {kl}");
    Ok(())
}

#[test]
fn bernoulli_kl_is_zero_at_the_prior_and_refuses_lambda_one() -> Result<()> {
    let lam: f64 = 0.37;
    let th = Tensor::new(&[(lam / (1.0 - lam)).ln(), 3.0], &Device::Cpu)?;
    let kl = vec(&kl_bernoulli(&th, lam)?);
    assert!(kl[0].abs() < 1e-12, "{}", kl[0]);
    let g = sigmoid(3.0);
    let want = g * (g / lam).ln() + (1.0 - g) * ((1.0 - g) / (1.0 - lam)).ln();
    assert!((kl[1] - want).abs() < 1e-12);
    assert!(kl_bernoulli(&th, 1.0).unwrap_err().to_string().contains("`pi`"));
    Ok(())
}

/// Binary concrete draws lie in [0, 1]; at low temperature they are nearly binary and their mean
/// is the Bernoulli probability (within Z standard errors of a Bernoulli mean); the rounded
/// draw is Bernoulli(γ) at any temperature.
#[test]
fn relaxed_samples_are_in_the_unit_interval_and_match_the_bernoulli() -> Result<()> {
    let probs = [0.15f64, 0.5, 0.8];
    let logits: Vec<f64> = probs.iter().map(|p| (p / (1.0 - p)).ln()).collect();
    let n = 20_000usize;
    let th = Tensor::new(logits.as_slice(), &Device::Cpu)?
        .reshape((1, 3))?
        .repeat((n, 1))?;
    let mut rng = SeededRng::new(3);
    for tau in [0.02, 0.7] {
        let z = relaxed_bernoulli(&th, tau, &mut rng)?.to_vec2::<f64>()?;
        for (j, &p) in probs.iter().enumerate() {
            let col: Vec<f64> = z.iter().map(|r| r[j]).collect();
            assert!(col.iter().all(|&v| (0.0..=1.0).contains(&v)));
            let se = (p * (1.0 - p) / n as f64).sqrt();
            let rounded = col.iter().filter(|&&v| v > 0.5).count() as f64 / n as f64;
            assert!((rounded - p).abs() < Z * se, "τ={tau} p={p}: rounded mean {rounded}");
            if tau < 0.1 {
                let mean = col.iter().sum::<f64>() / n as f64;
                assert!((mean - p).abs() < Z * se, "τ={tau} p={p}: mean {mean}");
            }
        }
    }
    Ok(())
}

/// Evaluation keeps exactly the nodes with γ ≥ ½ (θ ≥ 0): removed nodes output 0, kept ones the
/// posterior-mean output; the statistics broadcast γ over each weight row.
#[test]
fn test_time_rule_keeps_nodes_with_inclusion_at_least_half() -> Result<()> {
    let dev = Device::Cpu;
    let mu = uniform(&[3, 2], -1.0, 1.0, 30);
    let bmu = uniform(&[3], 0.5, 1.0, 31);
    let rho = Tensor::full(-3f64, (3, 2), &dev)?;
    let brho = Tensor::full(-3f64, 3, &dev)?;
    let th = Tensor::new(&[1.0f64, -1.0, 0.0], &dev)?;
    let l = SpikeSlabLinear::from_tensors(
        "fc",
        mu.clone(),
        rho,
        Some((bmu.clone(), brho)),
        th,
        prior(0.5, 1.0),
        0.5,
        true,
    )?;
    assert_eq!(l.kept_nodes()?, (2, 3));
    let x = uniform(&[4, 2], -1.0, 1.0, 32);
    let mut rng = SeededRng::new(0);
    let y = l
        .forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?
        .to_vec2::<f64>()?;
    let full = x.matmul(&mu.t()?)?.broadcast_add(&bmu)?.to_vec2::<f64>()?;
    for (yr, fr) in y.iter().zip(&full) {
        assert_eq!(yr[0], fr[0]);
        assert_eq!(yr[1], 0.0);
        assert_eq!(yr[2], fr[2]);
    }
    // with weight sampling in evaluation mode the removed node stays exactly 0 (the local
    // reparameterisation adds its √1e−16 = 1e−8 variance floor)
    let y = l
        .forward(&x, &mut Ctx::eval(&mut rng, Sampling::Weight))?
        .to_vec2::<f64>()?;
    assert!(y.iter().all(|r| r[1] == 0.0));
    let y = l
        .forward(&x, &mut Ctx::eval(&mut rng, Sampling::Local))?
        .to_vec2::<f64>()?;
    assert!(y.iter().all(|r| r[1].abs() < 1e-7));
    let stats = l.posterior_stats()?;
    assert_eq!(stats[0].name, "fc.weight");
    let inc = stats[0].inclusion.as_ref().unwrap();
    assert_eq!(inc.dims(), &[3, 2]);
    let g = inc.to_vec2::<f64>()?;
    assert!((g[0][1] - sigmoid(1.0)).abs() < 1e-12 && (g[2][0] - 0.5).abs() < 1e-12);
    assert_eq!(stats[1].inclusion.as_ref().unwrap().dims(), &[3]);
    Ok(())
}

/// Without node selection every node is kept whatever its logit, in training and evaluation,
/// the divergence is the slab KL alone and the statistics carry no inclusion; the switch is
/// shared with the copy registered in the store.
#[test]
fn node_selection_off_keeps_every_node_and_drops_the_bernoulli_term() -> Result<()> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F64, Device::Cpu);
    let cfg = SpikeSlabLinearConfig::new(3, 4)
        .with_prior(prior(0.2, 0.7))
        .with_node_selection(false);
    let l = SpikeSlabLinear::new(&pb.pp("fc"), cfg)?;
    store
        .get("fc.inclusion_logit")
        .unwrap()
        .set(&Tensor::new(&[-3.0f64, -1.0, 2.0, -0.5], &Device::Cpu)?)?;
    assert_eq!(l.kept_nodes()?, (4, 4));
    let x = uniform(&[2, 3], -1.0, 1.0, 40);
    let mut rng = SeededRng::new(1);
    let y = vec(&l.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?);
    let (bmu, _) = l.bias().unwrap();
    let full = vec(&x.matmul(&l.weight_mu().t()?)?.broadcast_add(bmu)?);
    assert_eq!(y, full);
    let slab = |mu: &Tensor, rho: &Tensor| -> f64 {
        vec(mu)
            .iter()
            .zip(vec(rho))
            .map(|(m, r)| {
                let s = softplus(r);
                (0.7 / s).ln() + (s * s + m * m) / (2.0 * 0.49) - 0.5
            })
            .sum()
    };
    let (_, brho) = l.bias().unwrap();
    let want = slab(l.weight_mu(), l.weight_rho()) + slab(bmu, brho);
    let (total, _) = store.divergence(&Divergence::Kl, &mut rng)?;
    assert!((total.to_scalar::<f64>()? - want).abs() < 1e-9 * want.abs(), "{want}");
    assert!(store.posterior_stats()?.iter().all(|s| s.inclusion.is_none()));
    // switched on through this handle, the registered copy selects too
    l.set_node_selection(true);
    assert_eq!(l.kept_nodes()?, (1, 4));
    assert!(store.posterior_stats()?.iter().all(|s| s.inclusion.is_some()));
    let (on, _) = store.divergence(&Divergence::Kl, &mut rng)?;
    assert_ne!(on.to_scalar::<f64>()?, total.to_scalar::<f64>()?);
    Ok(())
}

#[test]
fn bad_configs_are_refused_by_field() {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store, SeededRng::new(0), DType::F32, Device::Cpu);
    let base = SpikeSlabLinearConfig::new(3, 2);
    for (cfg, field) in [
        (base.with_prior(Prior::default()), "prior"),
        (base.with_prior(prior(1.0, 1.0)), "`pi`"),
        (base.with_init_std(0.0), "`init_std`"),
        (base.with_init_inclusion(1.0), "`init_inclusion`"),
        (base.with_temperature(0.0), "`temperature`"),
        (base.with_temperature(f64::NAN), "`temperature`"),
    ] {
        let e = SpikeSlabLinear::new(&pb.pp("fc"), cfg).unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
    let e = SpikeSlabConv2dConfig::new(2, 3, 0).validate().unwrap_err().to_string();
    assert!(e.contains("kernel"), "{e}");
    let e = SpikeSlabConv2dConfig::new(2, 3, 3)
        .with_init_inclusion(0.0)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("init_inclusion"), "{e}");
}

fn build_and_run(seed: u64) -> Result<(Vec<f32>, ParamStore)> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(seed), DType::F32, Device::Cpu);
    let conv = SpikeSlabConv2d::new(&pb.pp("conv"), SpikeSlabConv2dConfig::new(1, 3, 3).with_padding(1))?;
    let fc = SpikeSlabLinear::new(&pb.pp("fc"), SpikeSlabLinearConfig::new(3 * 16, 2))?;
    let x = SeededRng::new(99).rand_uniform(&[2, 1, 4, 4], -1.0, 1.0, DType::F32, &Device::Cpu)?;
    let mut rng = SeededRng::new(seed + 1);
    let mut ctx = Ctx::train(&mut rng, Sampling::Local);
    let h = conv.forward(&x, &mut ctx)?.relu()?.flatten_from(1)?;
    let y = fc.forward(&h, &mut ctx)?;
    Ok((vec(&y).into_iter().map(|v| v as f32).collect(), store))
}

#[test]
fn same_seed_same_output_and_registration() -> Result<()> {
    let (a, store) = build_and_run(5)?;
    let (b, _) = build_and_run(5)?;
    let (c, _) = build_and_run(6)?;
    assert_eq!(a, b);
    assert_ne!(a, c);
    let layers: Vec<String> = store.variational_layers().into_iter().map(|(n, _)| n).collect();
    assert_eq!(layers, vec!["conv", "fc"]);
    for p in [
        "conv.weight_mu",
        "conv.weight_rho",
        "conv.inclusion_logit",
        "fc.bias_rho",
    ] {
        assert!(store.get(p).is_some(), "{p}");
    }
    // γ starts at 0.99
    let th = store.get("fc.inclusion_logit").unwrap();
    let g = sigmoid(vec(th.as_tensor())[0]);
    assert!((g - 0.99).abs() < 1e-6, "{g}");
    Ok(())
}

/// The layer-wise prior inclusion probabilities against the reference code's formula evaluated
/// independently (NumPy, `jsanket12/SS_IG/SS_Gaussian_Node_MLP.py`, two hidden layers): the
/// reference code's own network (784-400-400-10, 60,000 examples) and LeNet-300-100 on the
/// 10,000-image subset; a wider first layer gets a smaller λ, more data a smaller λ.
#[test]
fn layerwise_inclusion_matches_the_reference_code() {
    use secateur_bayes::layers::spike_slab::layerwise_inclusion;
    for (widths, n, want) in [
        (
            &[784usize, 400, 400, 10][..],
            60_000usize,
            [0.001541135531010872, 0.002343842915729095],
        ),
        (
            &[784, 300, 100, 10][..],
            10_000,
            [0.0020548536327840484, 0.00973086139196273],
        ),
    ] {
        let got = layerwise_inclusion(widths, n).expect("λ");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-12 * w, "{widths:?}, n = {n}: {g} vs {w}");
        }
    }
    let small = layerwise_inclusion(&[784, 300, 100, 10], 60_000).expect("λ");
    let large = layerwise_inclusion(&[784, 300, 100, 10], 10_000).expect("λ");
    assert!(small[0] < large[0]);
    assert!(layerwise_inclusion(&[784, 10], 100).is_err());
    assert!(layerwise_inclusion(&[784, 0, 10], 100).is_err());
    assert!(layerwise_inclusion(&[784, 30, 10], 0).is_err());
}
