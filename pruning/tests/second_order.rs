//! Second-order criteria: Hessian–vector products by double backpropagation against central
//! differences of gradients (f64) and against the closed form of `common`, GraSP against the
//! closed form, and the Hutchinson diagonal against the exact diagonal (column by column with
//! unit vectors), its error shrinking like `1/√probes`, with probes per example too, and the exact
//! Gauss–Newton diagonal against the Hessian's. Every test runs in a child process of this binary
//! started with `CANDLE_GRAD_DO_NOT_DETACH=1` (`secateur_kernels::double_backprop::run_test_in_child`).

mod common;

use candle_core::{DType, Device, Result, Tensor};
use common::*;
use secateur_bayes::nn::{Conv2d, Conv2dCfg, Linear, LinearCfg, MaxPool2d};
use secateur_bayes::{Ctx, Init, Module, ParamBuilder, ParamStore, SeededRng};
use secateur_pruning::criteria::second_order::hutchinson_diagonal;
use secateur_pruning::criteria::*;
use secateur_pruning::criterion::mean_gradient;
use secateur_pruning::{Criterion, Loss, Scores, ScoringContext, ScoringData};

/// conv 3×3 (padding 1) → tanh (or ReLU) → max-pool 2 → flatten → linear, f64, with biases.
struct ConvNet {
    conv: Conv2d,
    fc: Linear,
    relu: bool,
}

impl Module for ConvNet {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let a = self.conv.forward(x, ctx)?;
        let a = if self.relu { a.relu()? } else { a.tanh()? };
        let h = MaxPool2d::new(2).forward(&a, ctx)?;
        self.fc.forward(&h.flatten_from(1)?, ctx)
    }
}

fn conv_net() -> Result<(ConvNet, ParamStore)> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(4), DType::F64, Device::Cpu);
    let conv = Conv2d::new(&pb.pp("conv"), Conv2dCfg::new(2, 3, 3).with_padding(1))?;
    let fc = Linear::new(
        &pb.pp("fc"),
        LinearCfg::new(12, 3).with_init(Init::Normal { mean: 0.0, std: 0.5 }),
    )?;
    Ok((ConvNet { conv, fc, relu: false }, store))
}

fn random_like(targets: &Scores, seed: u64) -> Result<Scores> {
    let mut rng = SeededRng::new(seed);
    targets
        .iter()
        .map(|(k, v)| Ok((k.clone(), rng.randn(v.dims(), DType::F64, &Device::Cpu)?)))
        .collect()
}

#[test]
fn hvp_matches_central_differences_of_gradients() -> Result<()> {
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(
        module_path!(),
        "::hvp_matches_central_differences_of_gradients"
    )) {
        return Ok(());
    }
    let (net, store) = conv_net()?;
    let mut rng = SeededRng::new(9);
    let x = rng.randn(&[5, 2, 4, 4], DType::F64, &Device::Cpu)?;
    let y = Tensor::new(&[0u32, 2, 1, 1, 0], &Device::Cpu)?;
    let data = ScoringData::new(x, y, 2)?; // batches of 2, 2, 1
    let loss = Loss::default();
    let mut cx = ScoringContext::new(&net, &store, Some(&data), &mut rng);
    let targets: Scores = cx
        .targets()
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().copy().unwrap()))
        .collect();
    let v = random_like(&targets, 17)?;
    let hv = hvp(&mut cx, &loss, &v)?;
    let eps = 1e-5;
    let mut grad_at = |s: f64| -> Result<Scores> {
        for (k, var) in cx.targets() {
            var.set(&(&targets[&k] + (&v[&k] * (s * eps))?)?)?;
        }
        mean_gradient(&mut cx, &loss)
    };
    let (gp, gm) = (grad_at(1.0)?, grad_at(-1.0)?);
    for (k, var) in cx.targets() {
        var.set(&targets[&k])?;
    }
    for k in targets.keys() {
        let fd = ((&gp[k] - &gm[k])? / (2.0 * eps))?;
        let scale = fd.abs()?.max_all()?.to_scalar::<f64>()?;
        let err = (&hv[k] - &fd)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(scale > 1e-6, "{k}: degenerate Hessian block");
        assert!(err < 1e-6 * scale, "{k}: |Hv − FD| = {err}, scale {scale}");
    }
    Ok(())
}

#[test]
fn grasp_matches_the_closed_form_hessian_gradient_product() -> Result<()> {
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(
        module_path!(),
        "::grasp_matches_the_closed_form_hessian_gradient_product"
    )) {
        return Ok(());
    }
    let (net, store) = two_layer(4, 3, 3, 21, false)?;
    let (x, y) = data(6, 4, 3, 22)?;
    let d = ScoringData::new(x.clone(), y.clone(), 4)?;
    let mut rng = SeededRng::new(0);
    let s = Grasp::default().score(&mut ScoringContext::new(&net, &store, Some(&d), &mut rng))?;
    let (w1, w2) = (mat(&net.fc1.weight), mat(&net.fc2.weight));
    let (xs, ys) = (mat(&x), y.to_vec1::<u32>()?);
    let t = 200.0;
    let (g1, g2) = mean_pair(&xs, &ys, |xi, yi| grad(&w1, &w2, xi, yi, t));
    let (h1, h2) = mean_pair(&xs, &ys, |xi, yi| hvp_closed(&w1, &w2, xi, yi, t, &g1, &g2));
    // kept-first convention: θ ⊙ Hg (= −S of Wang et al. 2020)
    let prod = |w: &Mat, h: &Mat| -> Mat {
        w.iter()
            .zip(h)
            .map(|(r, s)| r.iter().zip(s).map(|(a, b)| a * b).collect())
            .collect()
    };
    assert!(rel_err(&mat(&s["fc1.weight"]), &prod(&w1, &h1)) < 1e-9);
    assert!(rel_err(&mat(&s["fc2.weight"]), &prod(&w2, &h2)) < 1e-9);
    Ok(())
}

/// The exact Hessian of the two-layer network's mean loss, column by column: `H e_j` by double
/// backpropagation for every unit vector `e_j` (checked against the closed form).
fn exact_hessian(cx: &mut ScoringContext, loss: &Loss) -> Result<Vec<Vec<f64>>> {
    let targets = cx.targets();
    let sizes: Vec<(String, Vec<usize>)> = targets.iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect();
    let n: usize = sizes.iter().map(|(_, d)| d.iter().product::<usize>()).sum();
    let mut cols = Vec::with_capacity(n);
    for j in 0..n {
        let mut e = vec![0f64; n];
        e[j] = 1.0;
        let mut v = Scores::new();
        let mut off = 0;
        for (k, d) in &sizes {
            let m: usize = d.iter().product();
            v.insert(
                k.clone(),
                Tensor::from_vec(e[off..off + m].to_vec(), d.as_slice(), &Device::Cpu)?,
            );
            off += m;
        }
        let hv = hvp(cx, loss, &v)?;
        let col: Vec<f64> = sizes
            .iter()
            .flat_map(|(k, _)| hv[k].flatten_all().unwrap().to_vec1::<f64>().unwrap())
            .collect();
        cols.push(col);
    }
    Ok(cols)
}

/// Mean over `seeds` (one generator each) of the mean squared error of Hutchinson's diagonal of
/// the two-layer network against `exact` (fc1 then fc2, flattened).
fn hutchinson_mse(
    net: &dyn Module,
    store: &ParamStore,
    d: &ScoringData,
    loss: &Loss,
    opts: &HutchinsonOptions,
    exact: &[f64],
    seeds: std::ops::Range<u64>,
) -> Result<f64> {
    let mut sq = 0.0;
    let count = seeds.end - seeds.start;
    for seed in seeds {
        let mut rng = SeededRng::new(seed);
        let mut cx = ScoringContext::new(net, store, Some(d), &mut rng);
        let (diag, _) = hutchinson_diagonal(&mut cx, loss, opts)?;
        let est: Vec<f64> = ["fc1.weight", "fc2.weight"]
            .iter()
            .flat_map(|k| diag[*k].flatten_all().unwrap().to_vec1::<f64>().unwrap())
            .collect();
        sq += est.iter().zip(exact).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / exact.len() as f64;
    }
    Ok(sq / count as f64)
}

#[test]
fn hutchinson_converges_to_the_exact_diagonal_like_one_over_sqrt_probes() -> Result<()> {
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(
        module_path!(),
        "::hutchinson_converges_to_the_exact_diagonal_like_one_over_sqrt_probes"
    )) {
        return Ok(());
    }
    let (net, store) = two_layer(4, 3, 3, 31, false)?;
    let (x, y) = data(8, 4, 3, 32)?;
    let d = ScoringData::new(x.clone(), y.clone(), 8)?;
    let loss = Loss::default();
    let mut rng = SeededRng::new(0);
    let mut cx = ScoringContext::new(&net, &store, Some(&d), &mut rng);
    let h = exact_hessian(&mut cx, &loss)?;
    let n = h.len();
    // the unit-vector columns agree with the closed form (first column of W1's block)
    let (w1, w2) = (mat(&net.fc1.weight), mat(&net.fc2.weight));
    let mut e1 = zeros(3, 4);
    e1[0][0] = 1.0;
    let (c1, c2) = mean_pair(&mat(&x), &y.to_vec1::<u32>()?, |xi, yi| {
        hvp_closed(&w1, &w2, xi, yi, 1.0, &e1, &zeros(3, 3))
    });
    let closed: Vec<f64> = c1.iter().flatten().chain(c2.iter().flatten()).cloned().collect();
    for (a, b) in h[0].iter().zip(&closed) {
        assert!((a - b).abs() < 1e-12, "HVP column vs closed form: {a} vs {b}");
    }
    for (i, row) in h.iter().enumerate() {
        for (j, hij) in row.iter().enumerate() {
            assert!((hij - h[j][i]).abs() < 1e-12, "Hessian not symmetric at ({i}, {j})");
        }
    }
    let exact: Vec<f64> = (0..n).map(|i| h[i][i]).collect();
    // per probe, Var[(z ⊙ Hz)_i] = Σ_{j≠i} H_ij² (Rademacher z); mean squared error over entries
    let offdiag: f64 = (0..n)
        .map(|i| (0..n).filter(|&j| j != i).map(|j| h[i][j] * h[i][j]).sum::<f64>())
        .sum::<f64>()
        / n as f64;
    let seeds = 20;
    let mut mse = Vec::new();
    for &probes in &[16usize, 256] {
        let opts = HutchinsonOptions { batch_size: 8, probes };
        let m = hutchinson_mse(&net, &store, &d, &loss, &opts, &exact, 1000..1000 + seeds)?;
        let theory = offdiag / probes as f64;
        eprintln!("{probes} probes: mean squared error {m:.3e}, theory {theory:.3e}");
        assert!(
            m > 0.5 * theory && m < 2.0 * theory,
            "{probes} probes: mean squared error {m}, theory {theory}"
        );
        mse.push(m);
    }
    // 16× the probes: 16× smaller squared error, 4× smaller error
    let ratio = mse[0] / mse[1];
    assert!(ratio > 8.0 && ratio < 32.0, "MSE ratio 16 vs 256 probes: {ratio}");
    Ok(())
}

#[test]
fn hp_and_hts_combine_the_diagonal_and_the_gradient() -> Result<()> {
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(
        module_path!(),
        "::hp_and_hts_combine_the_diagonal_and_the_gradient"
    )) {
        return Ok(());
    }
    let (net, store) = two_layer(3, 3, 2, 41, true)?;
    let (x, y) = data(4, 3, 2, 42)?;
    let d = ScoringData::new(x, y, 2)?;
    let c = Hutchinson::new(HessianScore::Hts);
    let mut rng = SeededRng::new(5);
    let hts = c.score(&mut ScoringContext::new(&net, &store, Some(&d), &mut rng))?;
    let mut rng = SeededRng::new(5);
    let hp = Hutchinson::new(HessianScore::Hp).score(&mut ScoringContext::new(&net, &store, Some(&d), &mut rng))?;
    let mut rng = SeededRng::new(5);
    let (diag, gbar) = hutchinson_diagonal(
        &mut ScoringContext::new(&net, &store, Some(&d), &mut rng),
        &c.loss,
        &c.options,
    )?;
    // ḡ at T = 200 equals the mean gradient at T = 200
    let mut rng = SeededRng::new(5);
    let g = mean_gradient(&mut ScoringContext::new(&net, &store, Some(&d), &mut rng), &c.loss)?;
    for (k, w) in [("fc1.weight", &net.fc1.weight), ("fc2.weight", &net.fc2.weight)] {
        let err = (&gbar[k] - &g[k])?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(err < 1e-15);
        let half = (w.sqr()?.mul(&diag[k])? * 0.5)?;
        assert_eq!(mat(&hp[k]), mat(&half), "HP is signed θ² diag(H) / 2");
        let want = (w.mul(&gbar[k])? + &half)?.abs()?;
        let err = (&hts[k] - want)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(err < 1e-15);
    }
    assert!(mat(&hp["fc2.weight"]).iter().flatten().any(|v| *v != 0.0));
    Ok(())
}

/// The exact Gauss–Newton diagonal equals the Hessian diagonal (built column by column) for a
/// conv → ReLU → max-pool → linear network and a two-layer ReLU network (each logit is linear in
/// each single weight), and differs from it for the tanh network (the check can fail); the
/// gradient it returns is the mean gradient.
#[test]
fn ggn_diagonal_is_the_exact_hessian_diagonal_of_relu_networks() -> Result<()> {
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(
        module_path!(),
        "::ggn_diagonal_is_the_exact_hessian_diagonal_of_relu_networks"
    )) {
        return Ok(());
    }
    let loss = Loss::with_temperature(3.0);
    let mut rng = SeededRng::new(9);
    let x = rng.randn(&[5, 2, 4, 4], DType::F64, &Device::Cpu)?;
    let y = Tensor::new(&[0u32, 2, 1, 1, 0], &Device::Cpu)?;
    let d = ScoringData::new(x, y, 2)?;
    let check = |net: &dyn Module, store: &ParamStore, d: &ScoringData| -> Result<f64> {
        let mut rng = SeededRng::new(0);
        let mut cx = ScoringContext::new(net, store, Some(d), &mut rng);
        let h = exact_hessian(&mut cx, &loss)?;
        let (ggn, gbar) = ggn_diagonal(&mut cx, &loss)?;
        let g = mean_gradient(&mut cx, &loss)?;
        let names: Vec<String> = cx.targets().keys().cloned().collect();
        let flat = |s: &Scores| -> Vec<f64> {
            names
                .iter()
                .flat_map(|k| s[k].flatten_all().unwrap().to_vec1::<f64>().unwrap())
                .collect()
        };
        for (a, b) in flat(&gbar).iter().zip(flat(&g)) {
            assert!((a - b).abs() < 1e-12, "gradient {a} vs {b}");
        }
        let got = flat(&ggn);
        assert!(
            got.iter().all(|v| *v >= 0.0),
            "a Gauss-Newton diagonal is never negative"
        );
        let scale = h.iter().enumerate().map(|(i, r)| r[i].abs()).fold(0.0, f64::max);
        Ok(got
            .iter()
            .enumerate()
            .map(|(i, v)| (v - h[i][i]).abs())
            .fold(0.0, f64::max)
            / scale)
    };
    let (mut conv, store) = conv_net()?;
    conv.relu = true;
    let err = check(&conv, &store, &d)?;
    assert!(err < 1e-12, "conv/ReLU/max-pool: relative error {err}");
    conv.relu = false;
    let err = check(&conv, &store, &d)?;
    assert!(
        err > 1e-6,
        "tanh: the Gauss-Newton diagonal should differ from the Hessian's ({err})"
    );
    let (net, store) = two_layer(4, 5, 3, 51, true)?;
    let (x, y) = data(6, 4, 3, 52)?;
    let err = check(&net, &store, &ScoringData::new(x, y, 3)?)?;
    assert!(err < 1e-12, "two-layer ReLU: relative error {err}");
    Ok(())
}

/// Hutchinson with a probe per example (the reference's batch size 1) is unbiased too: over many
/// probes it converges to the exact diagonal, with the error of each probe budget predicted by
/// the per-example Hessians, `Var = (1/N²) Σ_n Σ_{j≠i} (H_n)_ij² / P` per entry.
#[test]
fn hutchinson_per_example_probes_converge_to_the_exact_diagonal() -> Result<()> {
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(
        module_path!(),
        "::hutchinson_per_example_probes_converge_to_the_exact_diagonal"
    )) {
        return Ok(());
    }
    let (net, store) = two_layer(4, 3, 3, 61, false)?;
    let (x, y) = data(6, 4, 3, 62)?;
    let loss = Loss::default();
    let all = ScoringData::new(x.clone(), y.clone(), 6)?;
    let mut rng = SeededRng::new(0);
    let h = exact_hessian(&mut ScoringContext::new(&net, &store, Some(&all), &mut rng), &loss)?;
    let n = h.len();
    // Σ_n Σ_{j≠i} (H_n)²_ij / N², averaged over entries i, from each example's own Hessian
    let mut var = 0.0;
    for e in 0..6 {
        let one = ScoringData::new(x.narrow(0, e, 1)?, y.narrow(0, e, 1)?, 1)?;
        let he = exact_hessian(&mut ScoringContext::new(&net, &store, Some(&one), &mut rng), &loss)?;
        for (i, row) in he.iter().enumerate() {
            for (_, hij) in row.iter().enumerate().filter(|(j, _)| *j != i) {
                var += hij * hij / 36.0;
            }
        }
    }
    let var = var / n as f64;
    let exact: Vec<f64> = (0..n).map(|i| h[i][i]).collect();
    let (probes, seeds) = (64, 20);
    let opts = HutchinsonOptions { batch_size: 1, probes };
    let m = hutchinson_mse(&net, &store, &all, &loss, &opts, &exact, 2000..2000 + seeds)?;
    let theory = var / probes as f64;
    eprintln!("per-example probes: mean squared error {m:.3e}, theory {theory:.3e}");
    assert!(
        m > 0.5 * theory && m < 2.0 * theory,
        "mean squared error {m}, theory {theory}"
    );
    Ok(())
}
