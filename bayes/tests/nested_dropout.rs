//! Nested dropout and variational nested dropout: ordered masks, the distribution of the
//! truncation index, the Downhill relaxation, the KL, gradients, evaluation at a width,
//! validation and reproducibility.

mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::{check_gradients, vec, Z};
use rand::Rng;
use secateur_bayes::ctx::kept_units;
use secateur_bayes::layers::nested_dropout::{downhill_mask, kl_categorical, truncated_geometric};
use secateur_bayes::layers::{BayesLinear, NestedDropout, VariationalNestedDropout, VariationalNestedDropoutConfig};
use secateur_bayes::{Ctx, Divergence, Module, ParamBuilder, ParamStore, Prior, Sampling, SeededRng, Variational};

/// Pearson's chi-square statistic of `counts` against the probabilities `probs` (cells with
/// expected count < 5 are pooled into the last kept cell), and its degrees of freedom.
fn chi_square(counts: &[usize], probs: &[f64]) -> (f64, usize) {
    let n: usize = counts.iter().sum();
    let (mut obs, mut exp) = (Vec::new(), Vec::new());
    let (mut o_acc, mut e_acc) = (0.0, 0.0);
    for (&c, &p) in counts.iter().zip(probs) {
        o_acc += c as f64;
        e_acc += p * n as f64;
        if e_acc >= 5.0 {
            obs.push(o_acc);
            exp.push(e_acc);
            o_acc = 0.0;
            e_acc = 0.0;
        }
    }
    if let (Some(o), Some(e)) = (obs.last_mut(), exp.last_mut()) {
        *o += o_acc;
        *e += e_acc;
    }
    let stat = obs.iter().zip(&exp).map(|(o, e)| (o - e).powi(2) / e).sum();
    (stat, obs.len() - 1)
}

/// Upper 0.1% quantile of the chi-square distribution for 1..=10 degrees of freedom (tables).
const CHI2_999: [f64; 10] = [10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88, 29.59];

/// Every row must be a prefix of ones (values > ½) followed by zeros (values < ½); returns the
/// truncation index b (number of kept units) of each row.
fn truncation_indices(mask: &[Vec<f64>]) -> Vec<usize> {
    mask.iter()
        .map(|row| {
            let b = row.iter().take_while(|&&v| v > 0.5).count();
            assert!(row[b..].iter().all(|&v| v < 0.5), "unordered mask {row:?}");
            b
        })
        .collect()
}

fn histogram(b: &[usize], units: usize) -> Vec<usize> {
    let mut h = vec![0usize; units];
    for &k in b {
        assert!((1..=units).contains(&k), "truncation index {k}");
        h[k - 1] += 1;
    }
    h
}

#[test]
fn truncated_geometric_sums_to_one_and_keeps_unit_k_with_survival_probability() {
    let (p, k) = (0.3, 6);
    let q = truncated_geometric(p, k).unwrap();
    assert!((q.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    for unit in 1..=k {
        let survive: f64 = q[unit - 1..].iter().sum();
        assert!((survive - (1.0 - p).powi(unit as i32 - 1)).abs() < 1e-12);
    }
    assert_eq!(truncated_geometric(1.0, 4).unwrap(), vec![1.0, 0.0, 0.0, 0.0]);
    assert!(truncated_geometric(0.0, 4).unwrap_err().to_string().contains("`p`"));
}

/// Plain nested dropout: masks are ordered per example and the truncation index follows the
/// truncated geometric distribution (chi-square at the 0.1% level); the kept units are not
/// rescaled; evaluation and `Sampling::Mean` are the identity.
#[test]
fn nested_dropout_masks_are_ordered_and_geometric() -> Result<()> {
    let (p, units, n) = (0.25, 8, 20_000);
    let nd = NestedDropout::new(p).unwrap();
    let x = Tensor::ones((n, units), DType::F64, &Device::Cpu)?;
    let mut rng = SeededRng::new(1);
    let y = nd
        .forward(&x, &mut Ctx::train(&mut rng, Sampling::Weight))?
        .to_vec2::<f64>()?;
    assert!(y.iter().flatten().all(|&v| v == 0.0 || v == 1.0));
    let h = histogram(&truncation_indices(&y), units);
    let (stat, dof) = chi_square(&h, &truncated_geometric(p, units).unwrap());
    assert!(stat < CHI2_999[dof - 1], "chi2 {stat} with {dof} dof, counts {h:?}");
    // channels of a conv input: one index per example, shared by the channel's positions
    let x4 = Tensor::ones((50, units, 2, 3), DType::F64, &Device::Cpu)?;
    let y4 = nd.forward(&x4, &mut Ctx::train(&mut rng, Sampling::Local))?;
    let per_channel = y4.flatten_from(2)?.to_vec3::<f64>()?;
    for ex in &per_channel {
        assert!(ex.iter().all(|c| c.iter().all(|&v| v == c[0])));
        truncation_indices(&[ex.iter().map(|c| c[0]).collect()]);
    }
    assert_eq!(
        vec(&nd.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Weight))?),
        vec(&x)
    );
    assert_eq!(
        vec(&nd.forward(&x, &mut Ctx::train(&mut rng, Sampling::Mean))?),
        vec(&x)
    );
    Ok(())
}

fn vnd(logits: &[f64], prior_p: f64, tau: f64) -> VariationalNestedDropout {
    VariationalNestedDropout::from_tensors("vnd", Tensor::new(logits, &Device::Cpu).unwrap(), prior_p, tau).unwrap()
}

fn softmax(l: &[f64]) -> Vec<f64> {
    let m = l.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = l.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// The Downhill relaxation: every row starts at 1, is non-increasing and lies in [0, 1]; at low
/// temperature the implied truncation index (units above ½) follows `Cat(softmax φ)`; exact
/// evaluation-mode masks follow it at any temperature.
#[test]
fn downhill_masks_are_ordered_and_follow_the_posterior() -> Result<()> {
    let logits = [0.3f64, -0.5, 1.2, 0.0, -1.0];
    let pi = softmax(&logits);
    let n = 20_000;
    let mut rng = SeededRng::new(2);
    let phi = Tensor::new(&logits, &Device::Cpu)?;
    for tau in [0.7, 0.03] {
        let m = downhill_mask(&phi, n, tau, &mut rng)?.to_vec2::<f64>()?;
        for row in &m {
            assert!((row[0] - 1.0).abs() < 1e-12, "{row:?}");
            assert!(row.windows(2).all(|w| w[1] <= w[0] + 1e-12), "{row:?}");
            assert!(row.iter().all(|&v| (-1e-12..=1.0 + 1e-12).contains(&v)));
        }
        if tau < 0.1 {
            let h = histogram(&truncation_indices(&m), logits.len());
            let (stat, dof) = chi_square(&h, &pi);
            assert!(stat < CHI2_999[dof - 1], "τ={tau}: chi2 {stat} ({dof} dof), {h:?}");
        }
    }
    let layer = vnd(&logits, 0.2, 0.7);
    let x = Tensor::ones((n, logits.len()), DType::F64, &Device::Cpu)?;
    let y = layer
        .forward(&x, &mut Ctx::eval(&mut rng, Sampling::Weight))?
        .to_vec2::<f64>()?;
    assert!(y.iter().flatten().all(|&v| v == 0.0 || v == 1.0));
    let h = histogram(&truncation_indices(&y), logits.len());
    let (stat, dof) = chi_square(&h, &pi);
    assert!(stat < CHI2_999[dof - 1], "eval: chi2 {stat} ({dof} dof), {h:?}");
    // the mean of the mask, P(b ≥ k), is the reverse cumulative sum of π
    let keep = vec(&layer.keep_probs()?);
    for k in 0..logits.len() {
        let want: f64 = pi[k..].iter().sum();
        assert!((keep[k] - want).abs() < 1e-12);
    }
    Ok(())
}

/// `KL(Cat(π) ‖ p)`: zero for a layer fresh from the builder (φ = log p), and equal to a Monte
/// Carlo average of `log π_b − log p_b`, `b ~ Cat(π)`, within Z standard errors.
#[test]
fn kl_is_zero_at_the_prior_and_matches_monte_carlo() -> Result<()> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F64, Device::Cpu);
    let fresh = VariationalNestedDropout::new(&pb.pp("fc2"), VariationalNestedDropoutConfig::new(9).with_prior_p(0.2))?;
    let kl0 = fresh
        .divergence(&Divergence::Kl, &mut SeededRng::new(0))?
        .to_scalar::<f64>()?;
    assert!(kl0.abs() < 1e-12, "{kl0}");
    assert!(store.get("fc2.truncation_logits").is_some());

    let logits = [0.5f64, 1.5, -0.3, 0.0, 2.0, -1.0];
    let prior = truncated_geometric(0.3, logits.len()).unwrap();
    let layer = vnd(&logits, 0.3, 0.5);
    let kl = layer
        .divergence(&Divergence::Kl, &mut SeededRng::new(0))?
        .to_scalar::<f64>()?;
    let pi = softmax(&logits);
    let mut rng = SeededRng::new(3);
    let n = 100_000;
    let draws: Vec<f64> = (0..n)
        .map(|_| {
            let u: f64 = rng.random();
            let mut acc = 0.0;
            let b = pi
                .iter()
                .position(|&p| {
                    acc += p;
                    u < acc
                })
                .unwrap_or(pi.len() - 1);
            (pi[b] / prior[b]).ln()
        })
        .collect();
    let mean = draws.iter().sum::<f64>() / n as f64;
    let sd = (draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0)).sqrt();
    assert!((mean - kl).abs() < Z * sd / (n as f64).sqrt(), "MC {mean} vs {kl}");
    assert!(layer
        .divergence(&Divergence::KlMonteCarlo { samples: 2 }, &mut rng)
        .unwrap_err()
        .to_string()
        .contains("vnd"));
    let e = kl_categorical(&Tensor::new(&logits, &Device::Cpu)?, &prior[..3]).unwrap_err();
    assert!(e.to_string().contains("6 positive entries"));
    Ok(())
}

/// Gradients of the Downhill path (re-seeded noise) and of the KL in φ, and of the input,
/// against central finite differences (f64), for a rank-2 and a rank-4 input.
#[test]
fn gradients_match_finite_differences() -> Result<()> {
    let phi = Var::from_tensor(&Tensor::new(&[0.2f64, -0.4, 0.9, 0.1], &Device::Cpu)?)?;
    let layer = VariationalNestedDropout::from_tensors("vnd", phi.as_tensor().clone(), 0.3, 0.6)?;
    let rng_x = |shape: &[usize], seed| {
        SeededRng::new(seed)
            .rand_uniform(shape, -1.0, 1.0, DType::F64, &Device::Cpu)
            .unwrap()
    };
    for shape in [vec![3usize, 4], vec![2, 4, 2, 2]] {
        let x = Var::from_tensor(&rng_x(&shape, 5))?;
        let r = rng_x(&shape, 6);
        check_gradients(&[("phi", &phi), ("x", &x)], 16, || {
            let mut rng = SeededRng::new(9);
            let y = layer.forward(x.as_tensor(), &mut Ctx::train(&mut rng, Sampling::Local))?;
            (y * &r)?.sum_all()? + layer.divergence(&Divergence::Kl, &mut rng)?
        })?;
    }
    Ok(())
}

/// At width w both layers keep exactly the first ⌈w K⌉ units, in any mode, for rank-2 and rank-4
/// inputs; an invalid width is refused by name.
#[test]
fn width_keeps_exactly_the_first_ceil_w_units() -> Result<()> {
    let units = 7;
    let nd = NestedDropout::new(0.1).unwrap();
    let v = vnd(&[0.0; 7], 0.1, 0.5);
    let mut rng = SeededRng::new(4);
    for (w, want) in [(0.1, 1usize), (0.25, 2), (0.5, 4), (0.75, 6), (1.0, 7)] {
        assert_eq!(kept_units(w, units)?, want);
        for x in [
            Tensor::ones((3, units), DType::F32, &Device::Cpu)?,
            Tensor::ones((3, units, 2, 2), DType::F32, &Device::Cpu)?,
        ] {
            for m in [&nd as &dyn Module, &v as &dyn Module] {
                for train in [true, false] {
                    let ctx = if train {
                        Ctx::train(&mut rng, Sampling::Local)
                    } else {
                        Ctx::eval(&mut rng, Sampling::Weight)
                    };
                    let y = m.forward(&x, &mut ctx.with_width(w))?;
                    let per_unit: Vec<f32> = if y.rank() == 4 {
                        y.sum((0, 2, 3))?.to_vec1()?
                    } else {
                        y.sum(0)?.to_vec1()?
                    };
                    let kept = per_unit.iter().filter(|&&s| s != 0.0).count();
                    assert_eq!(kept, want, "w={w}");
                    assert!(per_unit[..want].iter().all(|&s| s == per_unit[0]));
                }
            }
        }
    }
    let x = Tensor::ones((1, units), DType::F32, &Device::Cpu)?;
    let e = nd
        .forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean).with_width(0.0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("width"), "{e}");
    let e = v
        .forward(
            &Tensor::ones((1, 5), DType::F32, &Device::Cpu)?,
            &mut Ctx::eval(&mut rng, Sampling::Mean),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("5 units") && e.contains("7"), "{e}");
    Ok(())
}

/// A small network `fc1 → ReLU → nested dropout → fc2`: at width 1 it equals the full network;
/// at width ½ it equals the slimmed network computed independently, with the columns of `fc2`
/// past ⌈½ · 6⌉ = 3 set to zero.
#[test]
fn network_at_a_width_is_the_slimmed_network() -> Result<()> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F64, Device::Cpu);
    let cfg = secateur_bayes::layers::BayesLinearConfig::new(4, 6).with_prior(Prior::default());
    let fc1 = BayesLinear::new(&pb.pp("fc1"), cfg)?;
    let drop = VariationalNestedDropout::new(&pb.pp("drop2"), VariationalNestedDropoutConfig::new(6))?;
    let fc2 = BayesLinear::new(&pb.pp("fc2"), secateur_bayes::layers::BayesLinearConfig::new(6, 3))?;
    let net = |x: &Tensor, ctx: &mut Ctx| -> Result<Tensor> {
        let h = fc1.forward(x, ctx)?.relu()?;
        fc2.forward(&drop.forward(&h, ctx)?, ctx)
    };
    let x = SeededRng::new(8).rand_uniform(&[5, 4], -1.0, 1.0, DType::F64, &Device::Cpu)?;
    let mut rng = SeededRng::new(1);
    let full = vec(&net(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?);
    let at_one = vec(&net(&x, &mut Ctx::eval(&mut rng, Sampling::Mean).with_width(1.0))?);
    assert_eq!(full, at_one);
    let half = vec(&net(&x, &mut Ctx::eval(&mut rng, Sampling::Mean).with_width(0.5))?);
    let h = x
        .matmul(&fc1.weight_mu().t()?)?
        .broadcast_add(&fc1.bias().unwrap().0)?
        .relu()?;
    let col_mask = Tensor::new(&[1f64, 1., 1., 0., 0., 0.], &Device::Cpu)?.reshape((1, 6))?;
    let w2 = fc2.weight_mu().broadcast_mul(&col_mask)?;
    let slim = vec(&h.matmul(&w2.t()?)?.broadcast_add(&fc2.bias().unwrap().0)?);
    for (a, b) in half.iter().zip(&slim) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
    assert_ne!(half, full);
    Ok(())
}

/// A rank-3 input `[N, T, K]` (tokens): the units are the last dimension, one truncation index
/// per example shared by its tokens; at a width the last-dimension prefix is kept.
#[test]
fn rank_three_inputs_order_the_last_dimension() -> Result<()> {
    let (n, t, k) = (200, 3, 6);
    let x = Tensor::ones((n, t, k), DType::F64, &Device::Cpu)?;
    let v = vnd(&[0.0; 6], 0.2, 0.5);
    let nd = NestedDropout::new(0.3).unwrap();
    let mut rng = SeededRng::new(12);
    // plain nested dropout draws in training mode only; the variational layer's exact masks in
    // evaluation mode
    for (m, train) in [(&nd as &dyn Module, true), (&v as &dyn Module, false)] {
        let mut ctx = if train {
            Ctx::train(&mut rng, Sampling::Weight)
        } else {
            Ctx::eval(&mut rng, Sampling::Weight)
        };
        let y = m.forward(&x, &mut ctx)?.to_vec3::<f64>()?;
        let mut truncated = 0;
        for ex in &y {
            assert!(
                ex.iter().all(|tok| tok == &ex[0]),
                "tokens of an example share the mask"
            );
            let b = truncation_indices(&[ex[0].clone()])[0];
            truncated += usize::from(b < k);
        }
        assert!(truncated > 0);
        let y = m.forward(&x, &mut Ctx::train(&mut rng, Sampling::Local).with_width(0.5))?;
        assert_eq!(
            y.sum((0, 1))?.to_vec1::<f64>()?,
            vec![600.0, 600.0, 600.0, 0.0, 0.0, 0.0]
        );
    }
    Ok(())
}

#[test]
fn bad_configs_are_refused_by_field() {
    assert!(NestedDropout::new(0.0).unwrap_err().to_string().contains("`p`"));
    assert!(NestedDropout::new(1.5).is_err());
    let base = VariationalNestedDropoutConfig::new(4);
    for (cfg, field) in [
        (VariationalNestedDropoutConfig::new(0), "`units`"),
        (base.with_prior_p(0.0), "`prior_p`"),
        (base.with_prior_p(f64::NAN), "`prior_p`"),
        (base.with_temperature(0.0), "`temperature`"),
        (base.with_temperature(f64::INFINITY), "`temperature`"),
    ] {
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
}

#[test]
fn same_seed_same_masks() -> Result<()> {
    let x = Tensor::ones((16, 10), DType::F32, &Device::Cpu)?;
    let nd = NestedDropout::new(0.2).unwrap();
    let v = vnd(&[0.1, -0.2, 0.3, 0.0, 0.5, -0.5, 0.2, 0.1, 0.0, 0.4], 0.2, 0.5);
    for m in [&nd as &dyn Module, &v as &dyn Module] {
        let run = |seed| -> Result<Vec<f64>> {
            let mut rng = SeededRng::new(seed);
            Ok(vec(&m.forward(&x, &mut Ctx::train(&mut rng, Sampling::Local))?))
        };
        assert_eq!(run(3)?, run(3)?);
        assert_ne!(run(3)?, run(4)?);
    }
    Ok(())
}
