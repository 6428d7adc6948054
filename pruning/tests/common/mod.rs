//! Shared test fixtures: a two-layer bias-free linear network `z = W2 (W1 x)` in f64, and its
//! gradient and Hessian–vector product in closed form (derived by hand, independently of
//! autograd):
//!
//! ```text
//! h = W1 x, z = W2 h, p = softmax(z / T), δ = ∂L/∂z = (p − e_y) / T, A = ∂²L/∂z² = (diag p − p pᵀ) / T²
//! ∂L/∂W2 = δ hᵀ,  ∂L/∂W1 = (W2ᵀ δ) xᵀ
//! H·(V1, V2):  u = A (W2 V1 x + V2 h)
//!   (Hv)_W1 = (W2ᵀ u + V2ᵀ δ) xᵀ,   (Hv)_W2 = u hᵀ + δ (V1 x)ᵀ
//! ```
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor};
use secateur_bayes::nn::{Linear, LinearCfg};
use secateur_bayes::{Ctx, Init, Module, ParamBuilder, ParamStore, SeededRng};

pub type Mat = Vec<Vec<f64>>;

/// `fc2(fc1(x))`, no biases, optionally a ReLU in between.
pub struct TwoLayer {
    pub fc1: Linear,
    pub fc2: Linear,
    pub relu: bool,
}

impl Module for TwoLayer {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let h = self.fc1.forward(x, ctx)?;
        let h = if self.relu { h.relu()? } else { h };
        self.fc2.forward(&h, ctx)
    }
}

/// A `d → h → k` network in f64 with seeded weights `N(0, 1)·scale`.
pub fn two_layer(d: usize, h: usize, k: usize, seed: u64, relu: bool) -> Result<(TwoLayer, ParamStore)> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(seed), DType::F64, Device::Cpu);
    let fc1 = Linear::new(
        &pb.pp("fc1"),
        LinearCfg::new(d, h)
            .with_bias(false)
            .with_init(Init::Normal { mean: 0.0, std: 0.8 }),
    )?;
    let fc2 = Linear::new(
        &pb.pp("fc2"),
        LinearCfg::new(h, k)
            .with_bias(false)
            .with_init(Init::Normal { mean: 0.0, std: 0.8 }),
    )?;
    Ok((TwoLayer { fc1, fc2, relu }, store))
}

/// Seeded inputs `[n, d]` (f64) and labels `[n]` in `0..k`.
pub fn data(n: usize, d: usize, k: usize, seed: u64) -> Result<(Tensor, Tensor)> {
    let mut rng = SeededRng::new(seed);
    let x = rng.randn(&[n, d], DType::F64, &Device::Cpu)?;
    let y: Vec<u32> = (0..n).map(|i| ((i * 7 + seed as usize) % k) as u32).collect();
    Ok((x, Tensor::new(y, &Device::Cpu)?))
}

pub fn mat(t: &Tensor) -> Mat {
    t.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap()
}

pub fn rows(t: &Tensor) -> Mat {
    mat(t)
}

pub fn matvec(a: &Mat, x: &[f64]) -> Vec<f64> {
    a.iter().map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

pub fn tmatvec(a: &Mat, x: &[f64]) -> Vec<f64> {
    let cols = a[0].len();
    (0..cols)
        .map(|j| a.iter().zip(x).map(|(r, xi)| r[j] * xi).sum())
        .collect()
}

pub fn outer(a: &[f64], b: &[f64]) -> Mat {
    a.iter().map(|ai| b.iter().map(|bj| ai * bj).collect()).collect()
}

pub fn add(a: &Mat, b: &Mat) -> Mat {
    a.iter()
        .zip(b)
        .map(|(r, s)| r.iter().zip(s).map(|(x, y)| x + y).collect())
        .collect()
}

pub fn scale(a: &Mat, c: f64) -> Mat {
    a.iter().map(|r| r.iter().map(|x| x * c).collect()).collect()
}

pub fn zeros(r: usize, c: usize) -> Mat {
    vec![vec![0.0; c]; r]
}

/// The forward quantities of one example: `(h, δ, p)`.
pub fn forward(w1: &Mat, w2: &Mat, x: &[f64], y: usize, t: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let h = matvec(w1, x);
    let z = matvec(w2, &h);
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|zi| ((zi - m) / t).exp()).collect();
    let s: f64 = e.iter().sum();
    let p: Vec<f64> = e.iter().map(|v| v / s).collect();
    let delta: Vec<f64> = p
        .iter()
        .enumerate()
        .map(|(i, pi)| (pi - if i == y { 1.0 } else { 0.0 }) / t)
        .collect();
    (h, delta, p)
}

/// Closed-form gradient `(∂L/∂W1, ∂L/∂W2)` of one example.
pub fn grad(w1: &Mat, w2: &Mat, x: &[f64], y: usize, t: f64) -> (Mat, Mat) {
    let (h, d, _) = forward(w1, w2, x, y, t);
    (outer(&tmatvec(w2, &d), x), outer(&d, &h))
}

/// Closed-form Hessian–vector product of one example's loss along `(v1, v2)`.
pub fn hvp_closed(w1: &Mat, w2: &Mat, x: &[f64], y: usize, t: f64, v1: &Mat, v2: &Mat) -> (Mat, Mat) {
    let (h, d, p) = forward(w1, w2, x, y, t);
    let v1x = matvec(v1, x);
    let jv: Vec<f64> = matvec(w2, &v1x)
        .iter()
        .zip(matvec(v2, &h))
        .map(|(a, b)| a + b)
        .collect();
    let pj: f64 = p.iter().zip(&jv).map(|(a, b)| a * b).sum();
    let u: Vec<f64> = p
        .iter()
        .zip(&jv)
        .map(|(pi, ji)| (pi * ji - pi * pj) / (t * t))
        .collect();
    let left: Vec<f64> = tmatvec(w2, &u)
        .iter()
        .zip(tmatvec(v2, &d))
        .map(|(a, b)| a + b)
        .collect();
    (outer(&left, x), add(&outer(&u, &h), &outer(&d, &v1x)))
}

/// Mean over the examples of `f(example)`, for a pair of matrices.
pub fn mean_pair(xs: &Mat, ys: &[u32], f: impl Fn(&[f64], usize) -> (Mat, Mat)) -> (Mat, Mat) {
    let n = xs.len() as f64;
    let mut acc: Option<(Mat, Mat)> = None;
    for (x, &y) in xs.iter().zip(ys) {
        let (a, b) = f(x, y as usize);
        acc = Some(match acc {
            None => (a, b),
            Some((p, q)) => (add(&p, &a), add(&q, &b)),
        });
    }
    let (a, b) = acc.unwrap();
    (scale(&a, 1.0 / n), scale(&b, 1.0 / n))
}

/// Largest absolute difference, relative to the largest absolute value of `want`.
pub fn rel_err(got: &Mat, want: &Mat) -> f64 {
    let scale = want.iter().flatten().fold(0f64, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .flatten()
        .zip(want.iter().flatten())
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(scale > 0.0, "degenerate reference");
    diff / scale
}
