//! Variational dropout with learned α (Kingma et al. 2015): gradients, moments, KL.

mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::{check_gradients, moments, vec, Z};
use secateur_bayes::divergence::{KINGMA_C1, KINGMA_C2, KINGMA_C3};
use secateur_bayes::layers::{Conv2dGeom, VdConv2d, VdConv2dConfig, VdGranularity, VdLinear, VdLinearConfig};
use secateur_bayes::{Ctx, Divergence, Module, ParamBuilder, ParamStore, Sampling, SeededRng, Variational};

fn uniform(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Tensor {
    SeededRng::new(seed)
        .rand_uniform(shape, lo, hi, DType::F64, &Device::Cpu)
        .unwrap()
}

#[test]
fn gradients_match_finite_differences_per_weight_and_per_unit() -> Result<()> {
    for la_shape in [vec![3, 4], vec![4]] {
        // |θ| ≥ 0.2 keeps |θ| smooth; log α ∈ [−4, −1] stays inside the clip range.
        let sign = SeededRng::new(1).rademacher(&[3, 4], DType::F64, &Device::Cpu)?;
        let theta = Var::from_tensor(&(uniform(&[3, 4], 0.2, 1.0, 2) * sign)?)?;
        let la = Var::from_tensor(&uniform(&la_shape, -4.0, -1.0, 3))?;
        let l = VdLinear::from_tensors("fc", theta.as_tensor().clone(), la.as_tensor().clone(), None)?;
        let x = Var::from_tensor(&uniform(&[2, 4], -1.0, 1.0, 4))?;
        let r = uniform(&[2, 3], -1.0, 1.0, 5);
        check_gradients(&[("theta", &theta), ("log_alpha", &la), ("x", &x)], 12, || {
            let mut rng = SeededRng::new(6);
            let y = l.forward(x.as_tensor(), &mut Ctx::train(&mut rng, Sampling::Local))?;
            (y * &r)?.sum_all()? + l.divergence(&Divergence::Kl, &mut rng)?
        })?;
    }
    Ok(())
}

#[test]
fn moments_and_kl_follow_the_paper() -> Result<()> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F64, Device::Cpu);
    let cfg = VdLinearConfig::new(3, 2)
        .with_granularity(VdGranularity::Unit)
        .with_init_log_alpha(-1.0);
    let l = VdLinear::new(&pb.pp("fc"), cfg)?;
    assert_eq!(store.get("fc.weight_log_alpha").unwrap().dims(), &[3]);
    // variance of the pre-activation: Σ_j x_j² α θ_ij²
    let theta = vec(l.weight_mu());
    let x = [0.5, -1.0, 2.0];
    let a = (-1.0f64).exp();
    let n = 20_000;
    let xs = Tensor::new(&x, &Device::Cpu)?.reshape((1, 3))?.repeat((n, 1))?;
    let y = vec(&l.forward(&xs, &mut Ctx::train(&mut SeededRng::new(1), Sampling::Local))?);
    let rows: Vec<Vec<f64>> = y.chunks(2).map(|c| c.to_vec()).collect();
    let (_, v) = moments(&rows);
    for i in 0..2 {
        let ev: f64 = (0..3).map(|j| x[j] * x[j] * a * theta[i * 3 + j].powi(2)).sum();
        assert!(
            (v[i] - ev).abs() < Z * ev * (2.0 / (n as f64 - 1.0)).sqrt(),
            "{} vs {ev}",
            v[i]
        );
    }
    // KL per noise variable (3 units), from the formula
    let kl = l
        .divergence(&Divergence::Kl, &mut SeededRng::new(0))?
        .to_scalar::<f64>()?;
    let la = -1.0;
    let expected = -3.0 * (0.5 * la + KINGMA_C1 * a + KINGMA_C2 * a * a + KINGMA_C3 * a * a * a);
    assert!((kl - expected).abs() < 1e-12);
    let stats = store.posterior_stats()?;
    assert_eq!(stats[0].name, "fc.weight");
    assert_eq!(stats[0].log_alpha.as_ref().unwrap().dims(), &[2, 3]);
    assert!(VdLinear::new(&pb.pp("g"), VdLinearConfig::new(2, 2).with_init_log_alpha(1.0)).is_err());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// VdConv2d

/// Naive 2-D convolution by explicit loops (stride, zero padding, groups; dilation 1): the
/// independent reference the conv layer is checked against. `x: [N, C, H, W]`,
/// `w: [O, C/groups, k, k]`, both flat row-major; returns the flat `[N, O, H', W']` output and
/// its shape.
fn conv_ref(
    x: &[f64],
    xd: [usize; 4],
    w: &[f64],
    wd: [usize; 4],
    stride: usize,
    pad: usize,
    groups: usize,
) -> (Vec<f64>, [usize; 4]) {
    let [n, c, h, wid] = xd;
    let [o, cg, kh, kw] = wd;
    assert_eq!(cg * groups, c);
    let ho = (h + 2 * pad - kh) / stride + 1;
    let wo = (wid + 2 * pad - kw) / stride + 1;
    let mut y = vec![0.0; n * o * ho * wo];
    for b in 0..n {
        for oc in 0..o {
            let g = oc / (o / groups);
            for i in 0..ho {
                for j in 0..wo {
                    let mut s = 0.0;
                    for ci in 0..cg {
                        let ch = g * cg + ci;
                        for u in 0..kh {
                            for v in 0..kw {
                                let (r, q) = (
                                    (i * stride + u) as isize - pad as isize,
                                    (j * stride + v) as isize - pad as isize,
                                );
                                if r < 0 || q < 0 || r >= h as isize || q >= wid as isize {
                                    continue;
                                }
                                let xv = x[((b * c + ch) * h + r as usize) * wid + q as usize];
                                s += xv * w[((oc * cg + ci) * kh + u) * kw + v];
                            }
                        }
                    }
                    y[((b * o + oc) * ho + i) * wo + j] = s;
                }
            }
        }
    }
    (y, [n, o, ho, wo])
}

fn dims4(t: &Tensor) -> [usize; 4] {
    let (a, b, c, d) = t.dims4().unwrap();
    [a, b, c, d]
}

/// θ with |θ| ∈ [0.2, 1] and random signs (|θ| is smooth there).
fn signed_theta(shape: &[usize], seed: u64) -> Tensor {
    let sign = SeededRng::new(seed)
        .rademacher(shape, DType::F64, &Device::Cpu)
        .unwrap();
    (uniform(shape, 0.2, 1.0, seed + 1) * sign).unwrap()
}

fn strided() -> Conv2dGeom {
    Conv2dGeom {
        stride: 2,
        padding: 1,
        ..Default::default()
    }
}

#[test]
fn conv_gradients_match_finite_differences() -> Result<()> {
    // (θ shape, log α shape, groups): per weight with one group; per input channel with two
    // groups (the rates of channels 2, 3 act on output channels 1 only).
    for (w_shape, la_shape, groups) in [([2, 4, 3, 3], vec![2, 4, 3, 3], 1), ([2, 2, 3, 3], vec![4], 2)] {
        for s in [Sampling::Local, Sampling::Weight, Sampling::Flipout] {
            let theta = Var::from_tensor(&signed_theta(&w_shape, 1))?;
            // log α ∈ [−4, −1]: inside the clip range, away from its kinks.
            let la = Var::from_tensor(&uniform(&la_shape, -4.0, -1.0, 3))?;
            let bias = Var::from_tensor(&uniform(&[2], -0.5, 0.5, 4))?;
            let geom = Conv2dGeom { groups, ..strided() };
            let c = VdConv2d::from_tensors(
                "cv",
                theta.as_tensor().clone(),
                la.as_tensor().clone(),
                Some(bias.as_tensor().clone()),
                geom,
            )?;
            // batch 1, odd spatial size: out [1, 2, 3, 4]
            let x = Var::from_tensor(&uniform(&[1, 4, 5, 7], -1.0, 1.0, 5))?;
            let r = uniform(&[1, 2, 3, 4], -1.0, 1.0, 6);
            check_gradients(
                &[("theta", &theta), ("log_alpha", &la), ("bias", &bias), ("x", &x)],
                12,
                || {
                    let mut rng = SeededRng::new(7);
                    let y = c.forward(x.as_tensor(), &mut Ctx::train(&mut rng, s))?;
                    (y * &r)?.sum_all()? + c.divergence(&Divergence::Kl, &mut rng)?
                },
            )?;
        }
    }
    Ok(())
}

/// Per output element: mean and variance of `draws` (each a flat output) against those of
/// `other`, by a two-sample z-test with standard errors from the sample moments (the outputs are
/// Gaussian, so `Var(s²) ≈ 2σ⁴/(n−1)`).
fn same_moments(a: &[Vec<f64>], b: &[Vec<f64>], what: &str) {
    let (ma, va) = moments(a);
    let (mb, vb) = moments(b);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    for j in 0..ma.len() {
        let se_m = (va[j] / na + vb[j] / nb).sqrt();
        assert!(
            (ma[j] - mb[j]).abs() < Z * se_m,
            "{what} mean [{j}]: {} vs {}",
            ma[j],
            mb[j]
        );
        let se_v = (2.0 * va[j].powi(2) / (na - 1.0) + 2.0 * vb[j].powi(2) / (nb - 1.0)).sqrt();
        assert!(
            (va[j] - vb[j]).abs() < Z * se_v,
            "{what} variance [{j}]: {} vs {}",
            va[j],
            vb[j]
        );
    }
}

/// `n` draws of the layer's output on `x` repeated `n` times (local reparameterisation: one
/// independent draw per example), one flat output per draw.
fn lrt_draws(c: &VdConv2d, x: &Tensor, n: usize, seed: u64) -> Result<Vec<Vec<f64>>> {
    let xs = x.repeat((n, 1, 1, 1))?;
    let y = c.forward(&xs, &mut Ctx::train(&mut SeededRng::new(seed), Sampling::Local))?;
    let per = y.elem_count() / n;
    Ok(vec(&y).chunks(per).map(|c| c.to_vec()).collect())
}

#[test]
fn conv_local_reparameterisation_matches_explicit_weight_sampling() -> Result<()> {
    let w_shape = [2, 3, 3, 3];
    let theta = signed_theta(&w_shape, 11);
    let la = uniform(&w_shape, -3.0, -0.5, 12);
    let bias = uniform(&[2], -0.5, 0.5, 13);
    let c = VdConv2d::from_tensors("cv", theta.clone(), la.clone(), Some(bias.clone()), strided())?;
    let x = uniform(&[1, 3, 5, 6], -1.0, 1.0, 14);
    let n = 20_000;
    let local = lrt_draws(&c, &x, n, 15)?;

    // Explicit: W = θ + √α |θ| ε drawn per sample, then the loop convolution plus the bias.
    let (th, a, b, xv) = (vec(&theta), vec(&la.exp()?), vec(&bias), vec(&x));
    let mut rng = SeededRng::new(16);
    let mut explicit = Vec::with_capacity(n);
    for _ in 0..n {
        let eps = rng.normal_vec(th.len());
        let w: Vec<f64> = (0..th.len())
            .map(|i| th[i] + a[i].sqrt() * th[i].abs() * eps[i] as f64)
            .collect();
        let (mut y, d) = conv_ref(&xv, dims4(&x), &w, w_shape, 2, 1, 1);
        let per_ch = d[2] * d[3];
        for (k, v) in y.iter_mut().enumerate() {
            *v += b[k / per_ch];
        }
        explicit.push(y);
    }
    assert_eq!(local[0].len(), explicit[0].len());
    same_moments(&local, &explicit, "LRT vs weight sampling");

    // Both against the closed form: mean conv(x, θ) + b, variance conv(x², α θ²).
    let (mean, d) = conv_ref(&xv, dims4(&x), &th, w_shape, 2, 1, 1);
    let x2: Vec<f64> = xv.iter().map(|v| v * v).collect();
    let at2: Vec<f64> = (0..th.len()).map(|i| a[i] * th[i] * th[i]).collect();
    let (var, _) = conv_ref(&x2, dims4(&x), &at2, w_shape, 2, 1, 1);
    let per_ch = d[2] * d[3];
    for draws in [&local, &explicit] {
        let (m, v) = moments(draws);
        for j in 0..m.len() {
            let mj = mean[j] + b[j / per_ch];
            assert!(
                (m[j] - mj).abs() < Z * (var[j] / n as f64).sqrt(),
                "mean [{j}]: {} vs {mj}",
                m[j]
            );
            assert!(
                (v[j] - var[j]).abs() < Z * var[j] * (2.0 / (n as f64 - 1.0)).sqrt(),
                "variance [{j}]: {} vs {}",
                v[j],
                var[j]
            );
        }
    }
    Ok(())
}

#[test]
fn per_channel_conv_equals_multiplicative_input_noise_in_distribution() -> Result<()> {
    // 4 input channels in 2 groups: output channels 0, 1 see channels 0, 1; 2, 3 see 2, 3.
    let w_shape = [4, 2, 3, 3];
    let theta = signed_theta(&w_shape, 21);
    let la = Tensor::new(&[-0.5f64, -3.0, -1.0, -2.0], &Device::Cpu)?;
    let geom = Conv2dGeom { groups: 2, ..strided() };
    let c = VdConv2d::from_tensors("cv", theta.clone(), la.clone(), None, geom)?;
    let x = uniform(&[1, 4, 5, 5], -1.0, 1.0, 22);
    let n = 20_000;
    let local = lrt_draws(&c, &x, n, 23)?;

    // Explicit: x̃ = x ⊙ ξ, ξ_{c,h,w} = 1 + √α_c ε independent per input element, then the
    // deterministic loop convolution with θ. The output is linear in the Gaussian ξ, so it is
    // Gaussian and its per-element mean and variance determine its marginal distribution.
    let (th, a, xv) = (vec(&theta), vec(&la.exp()?), vec(&x));
    let per_ch = 25;
    let mut rng = SeededRng::new(24);
    let mut explicit = Vec::with_capacity(n);
    for _ in 0..n {
        let eps = rng.normal_vec(xv.len());
        let xn: Vec<f64> = (0..xv.len())
            .map(|i| xv[i] * (1.0 + a[i / per_ch].sqrt() * eps[i] as f64))
            .collect();
        explicit.push(conv_ref(&xn, dims4(&x), &th, w_shape, 2, 1, 2).0);
    }
    same_moments(&local, &explicit, "per-channel LRT vs input noise");

    // The rates are laid out per weight as the noise implies: weight [o, j, ·, ·] has
    // α of input channel (o / 2) · 2 + j.
    let store_stats = c.posterior_stats()?;
    let la_w = vec(store_stats[0].log_alpha.as_ref().unwrap());
    let sd = vec(store_stats[0].std.as_ref().unwrap());
    let lav = vec(&la);
    for (i, (l, s)) in la_w.iter().zip(&sd).enumerate() {
        let (o, j) = (i / 18, (i / 9) % 2);
        let ch = (o / 2) * 2 + j;
        assert_eq!(*l, lav[ch], "weight {i}");
        assert!((s - (lav[ch] * 0.5).exp() * th[i].abs()).abs() < 1e-15, "weight {i}");
    }
    Ok(())
}

#[test]
fn conv_kl_is_kingmas_approximation_summed_over_noise_variables() -> Result<()> {
    let dev = Device::Cpu;
    let kl_one = |la: f64| {
        // −KL ≈ ½ log α + c₁α + c₂α² + c₃α³ with log α clipped to [−8, 0]
        let la = la.clamp(-8.0, 0.0);
        let a = la.exp();
        -(0.5 * la + KINGMA_C1 * a + KINGMA_C2 * a * a + KINGMA_C3 * a * a * a)
    };
    // per weight: one term per weight, including clipped values
    let la_vals = [-10.0f64, -8.0, -3.0, -1.0, 0.0, 0.5, -0.2, -5.0];
    let theta = signed_theta(&[2, 1, 2, 2], 31);
    let la = Tensor::new(&la_vals, &dev)?.reshape((2, 1, 2, 2))?;
    let c = VdConv2d::from_tensors("cv", theta.clone(), la, None, Conv2dGeom::default())?;
    let kl = c
        .divergence(&Divergence::Kl, &mut SeededRng::new(0))?
        .to_scalar::<f64>()?;
    let expected: f64 = la_vals.iter().map(|&l| kl_one(l)).sum();
    assert!((kl - expected).abs() < 1e-12, "{kl} vs {expected}");
    // per input channel: one term per channel, not per weight
    let theta = signed_theta(&[3, 2, 3, 3], 32);
    let ch_vals = [-2.0f64, -0.5];
    let c = VdConv2d::from_tensors("cv", theta, Tensor::new(&ch_vals, &dev)?, None, Conv2dGeom::default())?;
    let kl = c
        .divergence(&Divergence::Kl, &mut SeededRng::new(0))?
        .to_scalar::<f64>()?;
    let expected: f64 = ch_vals.iter().map(|&l| kl_one(l)).sum();
    assert!((kl - expected).abs() < 1e-12, "{kl} vs {expected}");
    // other divergences are refused, naming the layer
    let e = c
        .divergence(&Divergence::JsG { alpha: 0.5 }, &mut SeededRng::new(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`cv`") && e.contains("js:0.5"), "{e}");
    Ok(())
}

#[test]
fn conv_layers_register_and_bad_configs_are_refused() -> Result<()> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F64, Device::Cpu);
    let cfg = VdConv2dConfig::new(4, 6, 3).with_padding(1).with_init_log_alpha(-3.0);
    VdConv2d::new(&pb.pp("conv1"), cfg)?;
    VdConv2d::new(
        &pb.pp("conv2"),
        cfg.with_granularity(VdGranularity::Unit).with_bias(false),
    )?;
    let names: Vec<String> = store.params().into_keys().collect();
    assert_eq!(
        names,
        [
            "conv1.bias",
            "conv1.weight_log_alpha",
            "conv1.weight_mu",
            "conv2.weight_log_alpha",
            "conv2.weight_mu"
        ]
    );
    assert_eq!(store.get("conv1.weight_log_alpha").unwrap().dims(), &[6, 4, 3, 3]);
    assert_eq!(store.get("conv2.weight_log_alpha").unwrap().dims(), &[4]);
    assert!(vec(store.get("conv2.weight_log_alpha").unwrap().as_tensor())
        .iter()
        .all(|&v| v == -3.0));
    let (_, per) = store.divergence(&Divergence::Kl, &mut SeededRng::new(0))?;
    assert_eq!(per.keys().collect::<Vec<_>>(), ["conv1", "conv2"]);
    let stats = store.posterior_stats()?;
    assert_eq!(stats[1].name, "conv2.weight");
    assert_eq!(stats[1].log_alpha.as_ref().unwrap().dims(), &[6, 4, 3, 3]);

    for (bad, field) in [
        (cfg.with_init_log_alpha(0.5), "init_log_alpha"),
        (cfg.with_init_log_alpha(-9.0), "init_log_alpha"),
        (cfg.with_init_log_alpha(f64::NAN), "init_log_alpha"),
        (VdConv2dConfig::new(4, 6, 0), "kernel"),
        (
            cfg.with_geom(Conv2dGeom {
                groups: 3,
                ..Default::default()
            }),
            "groups",
        ),
        (cfg.with_stride(0), "stride"),
    ] {
        let e = VdConv2d::new(&pb.pp("bad"), bad).unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
    // from_tensors checks the shapes of log α and the bias
    let theta = Tensor::zeros((2, 3, 3, 3), DType::F64, &Device::Cpu)?;
    let g = Conv2dGeom::default();
    let la = Tensor::zeros(2, DType::F64, &Device::Cpu)?;
    let e = VdConv2d::from_tensors("cv", theta.clone(), la, None, g)
        .unwrap_err()
        .to_string();
    assert!(e.contains("log α") && e.contains("`cv`"), "{e}");
    let la = Tensor::zeros(3, DType::F64, &Device::Cpu)?;
    let b = Tensor::zeros(3, DType::F64, &Device::Cpu)?;
    let e = VdConv2d::from_tensors("cv", theta, la, Some(b), g)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bias"), "{e}");
    let e = VdLinear::from_tensors(
        "fc",
        Tensor::zeros((2, 3), DType::F64, &Device::Cpu)?,
        Tensor::zeros(2, DType::F64, &Device::Cpu)?,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("log α"), "{e}");
    assert_eq!(VdGranularity::parse("unit")?, VdGranularity::Unit);
    assert!(VdGranularity::parse("layer")
        .unwrap_err()
        .to_string()
        .contains("weight, unit"));
    Ok(())
}
