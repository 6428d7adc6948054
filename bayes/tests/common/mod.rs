//! Shared helpers and tolerances for the integration tests.
#![allow(dead_code)]

use candle_core::{Result, Tensor, Var};

/// Statistical tests accept a deviation of at most this many standard errors (two-sided
/// probability of a false alarm per comparison ≈ 6e-7 for a Gaussian statistic).
pub const Z: f64 = 5.0;
/// Central finite-difference step in f64.
pub const FD_STEP: f64 = 1e-6;
/// Finite-difference agreement: `|analytic − numeric| ≤ FD_TOL · (1 + |numeric|)`.
pub const FD_TOL: f64 = 1e-5;

/// Flattened f64 values of a tensor.
pub fn vec(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Mean and (unbiased) variance of each coordinate over a list of draws.
pub fn moments(draws: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let n = draws.len() as f64;
    let d = draws[0].len();
    let mut mean = vec![0.0; d];
    for v in draws {
        for (m, x) in mean.iter_mut().zip(v) {
            *m += x / n;
        }
    }
    let mut var = vec![0.0; d];
    for v in draws {
        for ((s, x), m) in var.iter_mut().zip(v).zip(&mean) {
            *s += (x - m).powi(2) / (n - 1.0);
        }
    }
    (mean, var)
}

fn set_entry(var: &Var, i: usize, value: f64) -> Result<()> {
    let t = var.as_tensor();
    let mut v: Vec<f64> = t.flatten_all()?.to_vec1()?;
    v[i] = value;
    var.set(&Tensor::from_vec(v, t.dims(), t.device())?)
}

/// Compares the autograd gradient of the scalar `f()` with central finite differences for every
/// entry (up to `max_entries`, evenly spread) of every variable. `f` must be deterministic (it
/// re-seeds its generator), so the noise is the same at every evaluation.
pub fn check_gradients(vars: &[(&str, &Var)], max_entries: usize, f: impl Fn() -> Result<Tensor>) -> Result<()> {
    let grads = f()?.backward()?;
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for `{name}`"));
        let g = vec(g);
        let n = g.len();
        let step = n.div_ceil(max_entries).max(1);
        let base: Vec<f64> = var.as_tensor().flatten_all()?.to_vec1()?;
        for i in (0..n).step_by(step) {
            set_entry(var, i, base[i] + FD_STEP)?;
            let fp = f()?.to_scalar::<f64>()?;
            set_entry(var, i, base[i] - FD_STEP)?;
            let fm = f()?.to_scalar::<f64>()?;
            set_entry(var, i, base[i])?;
            let num = (fp - fm) / (2.0 * FD_STEP);
            assert!(
                (g[i] - num).abs() <= FD_TOL * (1.0 + num.abs()),
                "`{name}`[{i}]: autograd {} vs finite differences {num}",
                g[i]
            );
        }
    }
    Ok(())
}
