//! Sparse variational dropout: gradients, test-time masking, the KL approximation, registry.

mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::{check_gradients, moments, vec, Z};
use secateur_bayes::divergence::{kl_sparse_vd_elementwise, MOLCHANOV_K1, MOLCHANOV_K2, MOLCHANOV_K3};
use secateur_bayes::layers::{Conv2dGeom, SvdConv2d, SvdConv2dConfig, SvdLinear, SvdLinearConfig};
use secateur_bayes::{Ctx, Divergence, Module, ParamBuilder, ParamStore, Sampling, SeededRng, Variational};

fn uniform(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Tensor {
    SeededRng::new(seed)
        .rand_uniform(shape, lo, hi, DType::F64, &Device::Cpu)
        .unwrap()
}

/// θ with |θ| ∈ [0.2, 1] and log σ² ∈ [−4, −1], so log α ∈ [−4, 2.3] stays inside the clip
/// range and away from its kinks (finite differences across a kink would disagree).
fn theta_and_log_sigma2(shape: &[usize], seed: u64) -> (Var, Var) {
    let mag = uniform(shape, 0.2, 1.0, seed);
    let sign = SeededRng::new(seed + 1)
        .rademacher(shape, DType::F64, &Device::Cpu)
        .unwrap();
    let theta = Var::from_tensor(&(mag * sign).unwrap()).unwrap();
    let ls2 = Var::from_tensor(&uniform(shape, -4.0, -1.0, seed + 2)).unwrap();
    (theta, ls2)
}

fn loss(m: &dyn Module, v: &dyn Variational, x: &Tensor, r: &Tensor, s: Sampling) -> Result<Tensor> {
    let mut rng = SeededRng::new(7);
    let y = m.forward(x, &mut Ctx::train(&mut rng, s))?;
    (y * r)?.sum_all()? + v.divergence(&Divergence::Kl, &mut rng)?
}

#[test]
fn gradients_match_finite_differences() -> Result<()> {
    for s in [Sampling::Local, Sampling::Weight, Sampling::Flipout, Sampling::Mean] {
        let (theta, ls2) = theta_and_log_sigma2(&[3, 4], 1);
        let bias = Var::from_tensor(&uniform(&[3], -0.5, 0.5, 4))?;
        let l = SvdLinear::from_tensors(
            "fc",
            theta.as_tensor().clone(),
            ls2.as_tensor().clone(),
            Some(bias.as_tensor().clone()),
            3.0,
        )?;
        let x = Var::from_tensor(&uniform(&[2, 4], -1.0, 1.0, 5))?;
        let r = uniform(&[2, 3], -1.0, 1.0, 6);
        check_gradients(
            &[("theta", &theta), ("log_sigma2", &ls2), ("bias", &bias), ("x", &x)],
            12,
            || loss(&l, &l, x.as_tensor(), &r, s),
        )?;

        let (theta, ls2) = theta_and_log_sigma2(&[2, 2, 3, 3], 8);
        let geom = Conv2dGeom {
            padding: 1,
            ..Default::default()
        };
        let c = SvdConv2d::from_tensors(
            "cv",
            theta.as_tensor().clone(),
            ls2.as_tensor().clone(),
            None,
            3.0,
            geom,
        )?;
        let x = Var::from_tensor(&uniform(&[2, 2, 4, 4], -1.0, 1.0, 9))?;
        let r = uniform(&[2, 2, 4, 4], -1.0, 1.0, 10);
        check_gradients(&[("theta", &theta), ("log_sigma2", &ls2), ("x", &x)], 12, || {
            loss(&c, &c, x.as_tensor(), &r, s)
        })?;
    }
    Ok(())
}

#[test]
fn weights_with_large_log_alpha_are_dropped_at_test_time() -> Result<()> {
    let dev = Device::Cpu;
    // log α = log σ² − log θ²: θ = 1 everywhere, log σ² chosen per weight.
    let ls2 = Tensor::new(&[[-5.0f64, 2.9, 3.0], [3.5, 10.0, 0.0]], &dev)?;
    let theta = Tensor::ones((2, 3), DType::F64, &dev)?;
    let bias = Tensor::new(&[0.5f64, -0.5], &dev)?;
    let l = SvdLinear::from_tensors("fc", theta.clone(), ls2.clone(), Some(bias.clone()), 3.0)?;
    let la = vec(&l.log_alpha()?);
    assert_eq!(la, vec![-5.0, 2.9, 3.0, 3.5, 8.0, 0.0]); // 10 is clipped to 8
    assert_eq!(vec(&l.mask()?), vec![1.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    assert_eq!(l.dropped()?, (3, 6));
    let x = Tensor::new(&[[1.0f64, 2.0, 4.0]], &dev)?;
    let mut rng = SeededRng::new(0);
    let y = vec(&l.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?);
    // row 0 keeps weights 0, 1: 1 + 2 + 0.5; row 1 keeps weight 2: 4 − 0.5
    assert_eq!(y, vec![3.5, 3.5]);
    // In training mode every weight is used (Mean sampling: θ, unmasked).
    let y = vec(&l.forward(&x, &mut Ctx::train(&mut rng, Sampling::Mean))?);
    assert_eq!(y, vec![7.5, 6.5]);
    // A different threshold drops a different set.
    let l = SvdLinear::from_tensors("fc", theta, ls2, Some(bias), 3.2)?;
    assert_eq!(vec(&l.mask()?), vec![1.0, 1.0, 1.0, 0.0, 0.0, 1.0]);
    // conv: dropped kernels contribute nothing
    let theta = Tensor::ones((1, 1, 1, 2), DType::F64, &dev)?;
    let ls2 = Tensor::new(&[-1.0f64, 5.0], &dev)?.reshape((1, 1, 1, 2))?;
    let c = SvdConv2d::from_tensors("cv", theta, ls2, None, 3.0, Conv2dGeom::default())?;
    let x = Tensor::new(&[1.0f64, 10.0], &dev)?.reshape((1, 1, 1, 2))?;
    let y = vec(&c.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?);
    assert_eq!(y, vec![1.0]);
    Ok(())
}

#[test]
fn divergence_is_the_molchanov_approximation_summed() -> Result<()> {
    let dev = Device::Cpu;
    let theta = Tensor::new(&[0.5f64, -0.1, 2.0, 1e-6], &dev)?;
    let ls2 = Tensor::new(&[-3.0f64, -1.0, -12.0, 0.0], &dev)?;
    let l = SvdLinear::from_tensors("fc", theta.reshape((2, 2))?, ls2.reshape((2, 2))?, None, 3.0)?;
    let kl = l
        .divergence(&Divergence::Kl, &mut SeededRng::new(0))?
        .to_scalar::<f64>()?;
    let mut expected = 0.0;
    for (t, s) in [(0.5f64, -3.0f64), (-0.1, -1.0), (2.0, -12.0), (1e-6, 0.0)] {
        // log α = clip(log σ² − log θ², −8, 8); −KL = k₁σ(k₂ + k₃ log α) − ½ log(1 + 1/α) − k₁
        let la = (s - (t * t).ln()).clamp(-8.0, 8.0);
        let sig = 1.0 / (1.0 + (-(MOLCHANOV_K2 + MOLCHANOV_K3 * la)).exp());
        expected += -(MOLCHANOV_K1 * sig - 0.5 * (1.0 + (-la).exp()).ln() - MOLCHANOV_K1);
    }
    assert!((kl - expected).abs() < 1e-9, "{kl} vs {expected}");
    let direct = kl_sparse_vd_elementwise(&l.log_alpha()?)?
        .sum_all()?
        .to_scalar::<f64>()?;
    assert!((kl - direct).abs() < 1e-12);
    // other divergences are refused, naming the layer
    let e = l
        .divergence(&Divergence::JsG { alpha: 0.5 }, &mut SeededRng::new(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`fc`") && e.contains("js:0.5"), "{e}");
    Ok(())
}

#[test]
fn built_layers_register_and_use_the_paper_defaults() -> Result<()> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F64, Device::Cpu);
    let fc = SvdLinear::new(&pb.pp("fc1"), SvdLinearConfig::new(6, 4))?;
    let _cv = SvdConv2d::new(&pb.pp("conv1"), SvdConv2dConfig::new(1, 2, 3).with_padding(1))?;
    let names: Vec<String> = store.params().into_keys().collect();
    assert_eq!(
        names,
        [
            "conv1.bias",
            "conv1.weight_log_sigma2",
            "conv1.weight_mu",
            "fc1.bias",
            "fc1.weight_log_sigma2",
            "fc1.weight_mu"
        ]
    );
    assert!(vec(fc.weight_log_sigma2()).iter().all(|&v| v == -10.0));
    let stats = store.posterior_stats()?;
    assert_eq!(
        stats.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["conv1.weight", "fc1.weight"]
    );
    assert!(stats.iter().all(|s| s.log_alpha.is_some() && s.std.is_some()));
    let (_, per) = store.divergence(&Divergence::Kl, &mut SeededRng::new(0))?;
    assert_eq!(per.keys().collect::<Vec<_>>(), ["conv1", "fc1"]);
    // LRT in training: per-example pre-activation moments match the closed form.
    let x = Tensor::ones((4000, 6), DType::F64, &Device::Cpu)?;
    let theta = fc.weight_mu().clone();
    let var = (fc.weight_log_sigma2().exp()?.sum(1)?).to_vec1::<f64>()?;
    let mean = (theta.sum(1)? + fc.bias().unwrap())?.to_vec1::<f64>()?;
    let y = vec(&fc.forward(&x, &mut Ctx::train(&mut SeededRng::new(1), Sampling::Local))?);
    let rows: Vec<Vec<f64>> = y.chunks(4).map(|c| c.to_vec()).collect();
    let (m, _) = moments(&rows);
    for j in 0..4 {
        assert!((m[j] - mean[j]).abs() < Z * (var[j] / 4000.0).sqrt());
    }
    Ok(())
}
