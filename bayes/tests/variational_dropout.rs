//! Variational dropout with learned α (Kingma et al. 2015): gradients, moments, KL.

mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::{check_gradients, moments, vec, Z};
use secateur_bayes::divergence::{KINGMA_C1, KINGMA_C2, KINGMA_C3};
use secateur_bayes::layers::{VdGranularity, VdLinear, VdLinearConfig};
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
        let l = VdLinear::from_tensors("fc", theta.as_tensor().clone(), la.as_tensor().clone(), None);
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
