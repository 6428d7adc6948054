//! Batch-norm warm-up (running statistics against the hand-computed exponential average, no
//! parameter moves) and growing regularisation (phases, penalty gradients, the exact decay of
//! the pruned groups under SGD).

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor};
use secateur_bayes::nn::Sequential;
use secateur_bayes::nn::{BatchNorm, Conv2d, Conv2dCfg};
use secateur_bayes::{Ctx, Init, Module, ParamBuilder, ParamStore, Sampling, SeededRng};
use secateur_inference::batches::Batches;
use secateur_inference::hooks::StepHook;
use secateur_inference::optim::{Optimizer, Sgd, SgdConfig};
use secateur_pruning::bn_warmup::{warm_up, warm_up_batches};
use secateur_pruning::greg::{GReg, GRegConfig, Granularity, Phase};
use secateur_pruning::Allocation;

fn v1(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// 1×1 conv (1 → 2 channels, with bias) then batch norm, f64.
fn conv_bn() -> Result<(Sequential, ParamStore)> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(2), DType::F64, Device::Cpu);
    let mut net = Sequential::new();
    net.push(Conv2d::new(&pb.pp("0"), Conv2dCfg::new(1, 2, 1))?);
    net.push(BatchNorm::new(&pb.pp("1"), 2)?);
    Ok((net, store))
}

struct TwoBatches(Vec<Tensor>);
impl Batches for TwoBatches {
    fn num_batches(&self) -> usize {
        self.0.len()
    }
    fn num_examples(&self) -> usize {
        self.0.len() * 4
    }
    fn start_epoch(&mut self, _: usize, _: &mut SeededRng) {}
    fn batch(&mut self, i: usize, _: &mut SeededRng) -> Result<(Tensor, Tensor)> {
        Ok((self.0[i].clone(), Tensor::zeros(4, DType::U32, &Device::Cpu)?))
    }
}

#[test]
fn bn_warm_up_moves_running_statistics_and_no_parameter() -> Result<()> {
    let mut rng = SeededRng::new(5);
    let xs: Vec<Tensor> = (0..2)
        .map(|i| (rng.randn(&[4, 1, 3, 3], DType::F64, &Device::Cpu).unwrap() * (1.0 + i as f64)).unwrap())
        .collect();
    for use_batches in [false, true] {
        let (net, store) = conv_bn()?;
        let params_before: Vec<Vec<f64>> = store.params().values().map(|v| v1(v.as_tensor())).collect();
        let x_eval = xs[0].narrow(0, 0, 1)?;
        let y_before = v1(&net.forward(&x_eval, &mut Ctx::eval(&mut rng, Sampling::Mean))?);
        let n = if use_batches {
            warm_up_batches(&net, &mut TwoBatches(xs.clone()), None, Sampling::Mean, &mut rng)?
        } else {
            warm_up(&net, xs.iter().cloned(), Sampling::Mean, &mut rng)?
        };
        assert_eq!(n, 2);
        let params_after: Vec<Vec<f64>> = store.params().values().map(|v| v1(v.as_tensor())).collect();
        assert_eq!(params_before, params_after, "no parameter may change");
        // hand computation: channel c of the 1×1 conv is w_c x + b_c, so its batch mean is
        // w_c mean(x) + b_c and its unbiased variance w_c² var(x); r ← 0.9 r + 0.1 stat
        let (w, b) = (
            v1(store.get("0.weight").unwrap().as_tensor()),
            v1(store.get("0.bias").unwrap().as_tensor()),
        );
        let (mut rm, mut rv) = ([0.0; 2], [1.0; 2]);
        for x in &xs {
            let v = v1(x);
            let m = v.iter().sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
            for c in 0..2 {
                rm[c] = 0.9 * rm[c] + 0.1 * (w[c] * m + b[c]);
                rv[c] = 0.9 * rv[c] + 0.1 * (w[c] * w[c] * var);
            }
        }
        let got_m = v1(store.get("1.running_mean").unwrap().as_tensor());
        let got_v = v1(store.get("1.running_var").unwrap().as_tensor());
        for c in 0..2 {
            assert!((got_m[c] - rm[c]).abs() < 1e-12 && (got_v[c] - rv[c]).abs() < 1e-12);
        }
        let y_after = v1(&net.forward(&x_eval, &mut Ctx::eval(&mut rng, Sampling::Mean))?);
        assert_ne!(y_before, y_after, "evaluation mode now uses the warmed-up statistics");
    }
    Ok(())
}

fn one_linear(w: &[[f64; 2]; 3]) -> Result<ParamStore> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F64, Device::Cpu);
    pb.pp("fc").param("weight", &[3, 2], Init::Const(0.0))?;
    pb.pp("fc").param("bias", &[3], Init::Const(0.0))?;
    store.get("fc.weight").unwrap().set(&Tensor::new(w, &Device::Cpu)?)?;
    Ok(store)
}

fn small_cfg() -> GRegConfig {
    GRegConfig {
        lambda_step: 0.1,
        interval: 2,
        lambda_ceiling: 0.25,
        stabilise_iters: 3,
        picking_step: 0.01,
        picking_ceiling: 0.02,
        kept_lambda: -0.5,
    }
}

#[test]
fn greg1_grows_lambda_on_the_smallest_filters_then_stabilises() -> Result<()> {
    // row L1 norms 3, 0.5, 2: at 1/3 sparsity per layer the second row (filter) is pruned
    let store = one_linear(&[[1.0, -2.0], [0.25, 0.25], [-1.5, 0.5]])?;
    let mut g = GReg::greg1(
        &store,
        Granularity::Filter,
        Allocation::per_layer(1.0 / 3.0),
        small_cfg(),
    )?;
    assert_eq!(
        v1(g.masks().unwrap().get("fc.weight").unwrap()),
        [1., 1., 0., 0., 1., 1.]
    );
    // λ: +0.1 every 2 iterations; > 0.25 after 6 iterations; held 3 iterations; done
    let mut phases = Vec::new();
    let mut lambdas = Vec::new();
    for step in 0..9 {
        g.after_step(&store, step)?;
        phases.push(g.phase());
        lambdas.push(g.lambda());
    }
    use Phase::*;
    assert_eq!(
        phases,
        [
            Growing,
            Growing,
            Growing,
            Growing,
            Growing,
            Stabilising,
            Stabilising,
            Stabilising,
            Done
        ]
    );
    let want = [0.0, 0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3];
    assert!(
        lambdas.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12),
        "{lambdas:?}"
    );
    Ok(())
}

#[test]
fn greg1_penalty_decays_the_pruned_groups_exactly() -> Result<()> {
    // with no data gradient, SGD (no momentum) gives W ← (1 − η λ_t) W on pruned weights and
    // leaves kept weights unchanged (GReg-1 puts no penalty on them)
    let w0 = [[1.0, -2.0], [0.25, 0.25], [-1.5, 0.5]];
    let store = one_linear(&w0)?;
    let mut g = GReg::greg1(&store, Granularity::Weight, Allocation::global(0.5), small_cfg())?;
    let mut sgd = Sgd::new(SgdConfig {
        momentum: 0.0,
        ..Default::default()
    })?;
    let lr = 0.5;
    let mut factor = 1.0;
    for step in 0..9 {
        let mut grads = GradStore::default();
        g.before_step(&store, &mut grads, step)?;
        factor *= 1.0 - lr * g.lambda();
        sgd.step(&store.params(), &grads, lr)?;
        g.after_step(&store, step)?;
    }
    let w = v1(store.get("fc.weight").unwrap().as_tensor());
    // |w| ranks: 2, 1.5 and 1 kept (3 of 6); 0.5, 0.25, 0.25 pruned
    let want = [1.0, -2.0, 0.25 * factor, 0.25 * factor, -1.5, 0.5 * factor];
    for (a, b) in w.iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{w:?} vs {want:?}");
    }
    assert!(factor < 0.5);
    assert_eq!(
        v1(store.get("fc.bias").unwrap().as_tensor()),
        [0.0; 3],
        "biases are not regularised"
    );
    Ok(())
}

#[test]
fn greg2_picks_after_uniform_growth_then_pushes_with_negative_kept_lambda() -> Result<()> {
    let store = one_linear(&[[1.0, -2.0], [0.25, 0.25], [-1.5, 0.5]])?;
    let mut g = GReg::greg2(
        &store,
        Granularity::Filter,
        Allocation::per_layer(1.0 / 3.0),
        small_cfg(),
    )?;
    assert_eq!(g.phase(), Phase::Picking);
    assert!(g.masks().is_none());
    // picking: λ = 0.01 after 2 iterations, 0.02 (the ceiling) after 4: picked, push phase
    let mut grads = GradStore::default();
    for step in 0..3 {
        g.after_step(&store, step)?;
    }
    assert!((g.lambda() - 0.01).abs() < 1e-12);
    g.before_step(&store, &mut grads, 3)?;
    let w = v1(store.get("fc.weight").unwrap().as_tensor());
    let pen = v1(grads.get(store.get("fc.weight").unwrap().as_tensor()).unwrap());
    assert!(
        pen.iter().zip(&w).all(|(p, w)| (p - 0.01 * w).abs() < 1e-15),
        "uniform λ on all groups"
    );
    g.after_step(&store, 3)?;
    assert_eq!(g.phase(), Phase::Growing);
    assert_eq!(
        v1(g.masks().unwrap().get("fc.weight").unwrap()),
        [1., 1., 0., 0., 1., 1.]
    );
    let mut grads = GradStore::default();
    g.before_step(&store, &mut grads, 4)?;
    let pen = v1(grads.get(store.get("fc.weight").unwrap().as_tensor()).unwrap());
    let lam = g.lambda();
    let want: Vec<f64> = w
        .iter()
        .enumerate()
        .map(|(i, w)| if i == 2 || i == 3 { lam * w } else { -0.5 * w })
        .collect();
    assert!(
        pen.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-15),
        "{pen:?} vs {want:?}"
    );
    Ok(())
}

#[test]
fn schedule_length_is_what_the_driven_schedule_takes() -> Result<()> {
    let store = one_linear(&[[1.0, -2.0], [0.25, 0.25], [-1.5, 0.5]])?;
    // GReg-1 above: done at the 9th iteration
    assert_eq!(small_cfg().iterations(false)?, 9);
    for two in [false, true] {
        let alloc = Allocation::per_layer(1.0 / 3.0);
        let mut g = if two {
            GReg::greg2(&store, Granularity::Filter, alloc, small_cfg())?
        } else {
            GReg::greg1(&store, Granularity::Filter, alloc, small_cfg())?
        };
        let mut n = 0;
        while g.phase() != Phase::Done {
            g.after_step(&store, n)?;
            n += 1;
        }
        assert_eq!(small_cfg().iterations(two)?, n, "GReg-{}", if two { 2 } else { 1 });
    }
    // the paper's CIFAR schedule: 10,000 (or 10,001: λ is a float sum) increments every 10
    // iterations, then 10,000 held
    let d = GRegConfig::default().iterations(false)?;
    assert!((110_000..=110_010).contains(&d), "{d}");
    Ok(())
}

#[test]
fn greg_config_is_checked() {
    let store = one_linear(&[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).unwrap();
    let bad = GRegConfig {
        interval: 0,
        ..Default::default()
    };
    let e = GReg::greg1(&store, Granularity::Weight, Allocation::global(0.5), bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("interval"), "{e}");
    let d = GRegConfig::default();
    assert_eq!(
        (d.lambda_step, d.interval, d.lambda_ceiling, d.stabilise_iters),
        (1e-4, 10, 1.0, 10_000)
    );
}

#[test]
fn scoring_data_from_a_batch_source() -> Result<()> {
    let mut rng = SeededRng::new(1);
    let xs: Vec<Tensor> = (0..3)
        .map(|_| rng.randn(&[4, 1, 3, 3], DType::F64, &Device::Cpu).unwrap())
        .collect();
    let d = secateur_pruning::ScoringData::from_batches(&mut TwoBatches(xs.clone()), Some(6), 5, &mut rng)?;
    assert_eq!((d.len(), d.num_batches()), (6, 2));
    let want = Tensor::cat(&[xs[0].clone(), xs[1].narrow(0, 0, 2)?], 0)?;
    assert_eq!(v1(&d.inputs), v1(&want));
    assert_eq!(d.batch(1)?.0.dims(), &[1, 1, 3, 3]);
    Ok(())
}
