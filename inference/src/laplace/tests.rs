//! Tests of the Laplace approximations against independent computations: finite-difference
//! Jacobians for the diagonal curvature, the closed forms of Bayesian linear regression for the
//! last-layer posterior and the evidence, explicit Kronecker sums, a hand-computed probit, and
//! seeded statistical tests of the samples.

use super::*;
use crate::batches::TensorBatches;
use crate::likelihood::{Gaussian, Noise};
use crate::posterior::ParamSample;
use candle_core::{Device, Var};
use secateur_bayes::nn::{Linear, LinearCfg};
use secateur_bayes::ParamBuilder;

// ---------------------------------------------------------------------------------------------
// models and data

/// `fc2(tanh(fc1(x)))`, head `fc2`.
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let h = self.features(x, ctx)?;
        self.fc2.forward(&h, ctx)
    }
    fn features(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        self.fc1.forward(x, ctx)?.tanh()
    }
    fn head(&self) -> Option<String> {
        Some("fc2".into())
    }
}

fn mlp(seed: u64, inp: usize, hid: usize, out: usize) -> Result<(Mlp, ParamStore)> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(seed), DType::F64, Device::Cpu);
    let fc1 = Linear::new(&pb.pp("fc1"), LinearCfg::new(inp, hid))?;
    let fc2 = Linear::new(&pb.pp("fc2"), LinearCfg::new(hid, out))?;
    Ok((Mlp { fc1, fc2 }, store))
}

/// A single linear layer `lin`, whose features are its inputs (Bayesian linear regression).
struct Lin {
    lin: Linear,
}

impl Module for Lin {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        self.lin.forward(x, ctx)
    }
    fn features(&self, x: &Tensor, _ctx: &mut Ctx) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn head(&self) -> Option<String> {
        Some("lin".into())
    }
}

fn lin(inp: usize, out: usize) -> Result<(Lin, ParamStore)> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F64, Device::Cpu);
    let lin = Linear::new(&pb.pp("lin"), LinearCfg::new(inp, out))?;
    Ok((Lin { lin }, store))
}

/// A model without a head.
struct NoHead;

impl Module for NoHead {
    fn forward(&self, x: &Tensor, _ctx: &mut Ctx) -> Result<Tensor> {
        Ok(x.clone())
    }
}

fn gaussian(std: f64, dim: usize) -> Result<Likelihood> {
    let pb = ParamBuilder::new(ParamStore::new(), SeededRng::new(0), DType::F64, Device::Cpu);
    Ok(Likelihood::Gaussian(Gaussian::new(Noise::Fixed { std }, dim, &pb)?))
}

/// `n × d` standard normals (f64) from `seed`, row-major.
fn normals(seed: u64, n: usize, d: usize) -> Vec<f64> {
    SeededRng::new(seed)
        .normal_vec(n * d)
        .into_iter()
        .map(f64::from)
        .collect()
}

fn t2(v: &[f64], r: usize, c: usize) -> Result<Tensor> {
    Tensor::from_vec(v.to_vec(), (r, c), &Device::Cpu)
}

fn rows(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    t.to_dtype(DType::F64)?.to_vec2::<f64>()
}

fn flat(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// Relative difference `|a − b| / max(|b|, floor)`.
fn rel(a: f64, b: f64, floor: f64) -> f64 {
    (a - b).abs() / b.abs().max(floor)
}

fn softmax(f: &[f64]) -> Vec<f64> {
    let m = f.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = f.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

// ---------------------------------------------------------------------------------------------
// small dense linear algebra, written out (independent of nalgebra)

/// The inverse by Gauss–Jordan elimination with partial pivoting.
fn inverse(a: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let n = a.len();
    let mut m: Vec<Vec<f64>> = a
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut row = r.clone();
            row.extend((0..n).map(|j| if i == j { 1.0 } else { 0.0 }));
            row
        })
        .collect();
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| m[i][c].abs().total_cmp(&m[j][c].abs()))
            .expect("non-empty");
        m.swap(c, p);
        let d = m[c][c];
        for v in m[c].iter_mut() {
            *v /= d;
        }
        for r in 0..n {
            if r != c {
                let f = m[r][c];
                let pivot = m[c].clone();
                for (v, pv) in m[r].iter_mut().zip(&pivot) {
                    *v -= f * pv;
                }
            }
        }
    }
    m.into_iter().map(|r| r[n..].to_vec()).collect()
}

/// The Cholesky factor `L` (`a = L Lᵀ`).
fn cholesky(a: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let n = a.len();
    let mut l = vec![vec![0f64; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
            if i == j {
                l[i][j] = (a[i][i] - s).sqrt();
            } else {
                l[i][j] = (a[i][j] - s) / l[j][j];
            }
        }
    }
    l
}

fn log_det_spd(a: &[Vec<f64>]) -> f64 {
    cholesky(a).iter().enumerate().map(|(i, r)| 2.0 * r[i].ln()).sum()
}

fn matmul(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<Vec<f64>> {
    a.iter()
        .map(|r| {
            (0..b[0].len())
                .map(|j| r.iter().zip(b).map(|(x, br)| x * br[j]).sum())
                .collect()
        })
        .collect()
}

/// `max |a·b − I|`.
fn identity_error(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    let p = matmul(a, b);
    let mut e = 0f64;
    for (i, r) in p.iter().enumerate() {
        for (j, v) in r.iter().enumerate() {
            e = e.max((v - if i == j { 1.0 } else { 0.0 }).abs());
        }
    }
    e
}

// ---------------------------------------------------------------------------------------------
// finite differences on the store

fn var(store: &ParamStore, name: &str) -> Var {
    store.get(name).expect("parameter exists")
}

fn set_flat(store: &ParamStore, name: &str, values: &[f64]) -> Result<()> {
    let v = var(store, name);
    v.set(&Tensor::from_vec(values.to_vec(), v.dims(), &Device::Cpu)?)
}

/// The outputs `[N][C]` of `model` on `x` at the store's current values.
fn outputs(model: &dyn Module, x: &Tensor) -> Result<Vec<Vec<f64>>> {
    let mut rng = SeededRng::new(0);
    let mut ctx = Ctx::eval(&mut rng, Sampling::Mean);
    rows(&model.forward(x, &mut ctx)?)
}

/// For every parameter coordinate (sorted names, flat index), the central difference
/// `(F(θ + h eᵢ) − F(θ − h eᵢ)) / 2h` of every output, `[N][C]`.
fn fd_jacobians(model: &dyn Module, store: &ParamStore, x: &Tensor, h: f64) -> Result<Vec<(String, Vec<Vec<f64>>)>> {
    let mut out = Vec::new();
    for (name, v) in store.params() {
        let base = flat(v.as_tensor())?;
        for i in 0..base.len() {
            let mut p = base.clone();
            p[i] += h;
            set_flat(store, &name, &p)?;
            let fp = outputs(model, x)?;
            p[i] = base[i] - h;
            set_flat(store, &name, &p)?;
            let fm = outputs(model, x)?;
            set_flat(store, &name, &base)?;
            let j: Vec<Vec<f64>> = fp
                .iter()
                .zip(&fm)
                .map(|(a, b)| a.iter().zip(b).map(|(a, b)| (a - b) / (2.0 * h)).collect())
                .collect();
            out.push((name.clone(), j));
        }
    }
    Ok(out)
}

/// The store's parameters flattened in sorted name order, as `DiagLaplace` orders them.
fn flat_curvature(c: &ParamSample) -> Result<Vec<f64>> {
    let mut v = Vec::new();
    for t in c.values() {
        v.extend(flat(t)?);
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// 1. diagonal GGN and empirical Fisher against finite-difference Jacobians

#[test]
fn diag_ggn_and_ef_equal_the_per_example_curvature_from_finite_differences() -> Result<()> {
    let (net, store) = mlp(3, 3, 4, 3)?;
    let n = 6;
    let x = t2(&normals(1, n, 3), n, 3)?;
    let labels = vec![0u32, 2, 1, 1, 0, 2];
    let y = Tensor::new(labels.as_slice(), &Device::Cpu)?;
    let mut data = TensorBatches::new(x.clone(), y.clone(), 4)?;
    let mut rng = SeededRng::new(0);
    let ggn = DiagLaplace::fit(
        &net,
        &store,
        &mut data,
        &Likelihood::Categorical,
        DiagCurvature::Ggn,
        &mut rng,
    )?;
    let ef = DiagLaplace::fit(
        &net,
        &store,
        &mut data,
        &Likelihood::Categorical,
        DiagCurvature::EmpiricalFisher,
        &mut rng,
    )?;
    assert_eq!(ggn.num_params(), 3 * 4 + 4 + 4 * 3 + 3);
    assert_eq!(ggn.n_data(), n);

    // independent: Jₙ (C × P) by central differences (h = 1e−5, f64), then
    // GGN_ii = Σₙ Σ_{c,c'} Jₙ[c,i] Λₙ[c,c'] Jₙ[c',i], Λₙ = diag(p) − ppᵀ;
    // EF_ii = Σₙ (Σ_c Jₙ[c,i] (1[c = yₙ] − p_c))², the chain rule of ∂ log softmax(f)_y / ∂θᵢ.
    let f0 = outputs(&net, &x)?;
    let probs: Vec<Vec<f64>> = f0.iter().map(|f| softmax(f)).collect();
    let jac = fd_jacobians(&net, &store, &x, 1e-5)?;
    let (mut want_ggn, mut want_ef) = (Vec::new(), Vec::new());
    for (_, j) in &jac {
        let (mut g, mut e) = (0f64, 0f64);
        for (nn, p) in probs.iter().enumerate() {
            for c in 0..3 {
                for c2 in 0..3 {
                    let lam = if c == c2 { p[c] - p[c] * p[c] } else { -p[c] * p[c2] };
                    g += j[nn][c] * lam * j[nn][c2];
                }
            }
            let grad: f64 = (0..3)
                .map(|c| j[nn][c] * (if c as u32 == labels[nn] { 1.0 } else { 0.0 } - p[c]))
                .sum();
            e += grad * grad;
        }
        want_ggn.push(g);
        want_ef.push(e);
    }
    let got_ggn = flat_curvature(&ggn.curvature()?)?;
    let got_ef = flat_curvature(&ef.curvature()?)?;
    let worst = |got: &[f64], want: &[f64]| {
        got.iter()
            .zip(want)
            .map(|(a, b)| rel(*a, *b, 1e-6))
            .fold(0f64, f64::max)
    };
    let (eg, ee) = (worst(&got_ggn, &want_ggn), worst(&got_ef, &want_ef));
    println!("diag GGN max rel error {eg:.2e}, EF {ee:.2e}");
    assert!(eg < 1e-6, "GGN {got_ggn:?} vs {want_ggn:?}");
    assert!(ee < 1e-6, "EF {got_ef:?} vs {want_ef:?}");
    // the curvatures differ (the EF is not the GGN away from a perfect fit)
    assert!(worst(&got_ggn, &want_ef) > 1e-2);

    // log p(D | θ*) = Σₙ log softmax(fₙ)_{yₙ}
    let ll: f64 = probs.iter().zip(&labels).map(|(p, &y)| p[y as usize].ln()).sum();
    assert!(rel(ggn.log_likelihood(), ll, 1.0) < 1e-12);

    // Gaussian likelihood with σ = 0.5: GGN_ii = Σₙ Σ_d Jₙ[d,i]² / σ²; EF_ii = Σₙ (Σ_d Jₙ[d,i] rₙ_d/σ²)²
    let targets = normals(2, n, 3);
    let yt = t2(&targets, n, 3)?;
    let lik = gaussian(0.5, 3)?;
    let mut data = TensorBatches::new(x.clone(), yt, 3)?;
    let ggn = DiagLaplace::fit(&net, &store, &mut data, &lik, DiagCurvature::Ggn, &mut rng)?;
    let ef = DiagLaplace::fit(&net, &store, &mut data, &lik, DiagCurvature::EmpiricalFisher, &mut rng)?;
    let (mut want_ggn, mut want_ef) = (Vec::new(), Vec::new());
    for (_, j) in &jac {
        let (mut g, mut e) = (0f64, 0f64);
        for nn in 0..n {
            let mut grad = 0f64;
            for d in 0..3 {
                g += j[nn][d].powi(2) / 0.25;
                grad += j[nn][d] * (targets[nn * 3 + d] - f0[nn][d]) / 0.25;
            }
            e += grad * grad;
        }
        want_ggn.push(g);
        want_ef.push(e);
    }
    let (eg, ee) = (
        worst(&flat_curvature(&ggn.curvature()?)?, &want_ggn),
        worst(&flat_curvature(&ef.curvature()?)?, &want_ef),
    );
    println!("Gaussian diag GGN max rel error {eg:.2e}, EF {ee:.2e}");
    assert!(eg < 1e-6 && ee < 1e-6);
    let ll: f64 = (0..n)
        .flat_map(|i| (0..3).map(move |d| (i, d)))
        .map(|(i, d)| -0.5 * (2.0 * std::f64::consts::PI * 0.25).ln() - (targets[i * 3 + d] - f0[i][d]).powi(2) / 0.5)
        .sum();
    assert!(
        rel(ggn.log_likelihood(), ll, 1.0) < 1e-12,
        "{} vs {ll}",
        ggn.log_likelihood()
    );
    Ok(())
}

#[test]
fn diag_marginal_likelihood_is_the_formula_and_its_optimum_is_stationary() -> Result<()> {
    let (net, store) = mlp(5, 3, 4, 3)?;
    let n = 8;
    let x = t2(&normals(3, n, 3), n, 3)?;
    let y = Tensor::new(&[0u32, 1, 2, 0, 1, 2, 0, 1], &Device::Cpu)?;
    let mut data = TensorBatches::new(x, y, 8)?;
    let mut lap = DiagLaplace::fit(
        &net,
        &store,
        &mut data,
        &Likelihood::Categorical,
        DiagCurvature::Ggn,
        &mut SeededRng::new(0),
    )?;
    let h = flat_curvature(&lap.curvature()?)?;
    let theta = flat_curvature(&lap.mean()?)?;
    let p = h.len() as f64;
    let sq: f64 = theta.iter().map(|t| t * t).sum();
    // log p(D|θ*) − ½ (Σ log(hᵢ + λ) − P log λ) − ½ λ ‖θ*‖²
    let lml =
        |l: f64| lap.log_likelihood() - 0.5 * (h.iter().map(|v| (v + l).ln()).sum::<f64>() - p * l.ln()) - 0.5 * l * sq;
    for l in [0.01, 0.7, 30.0] {
        assert!(rel(lap.log_marginal_likelihood(l)?, lml(l), 1.0) < 1e-12);
    }
    // the derivative −½ Σ 1/(hᵢ + λ) + P/(2λ) − ½ ‖θ*‖², decreasing in λ, has its root at the optimum:
    // found independently by bisection on log λ
    let deriv = |l: f64| -0.5 * h.iter().map(|v| 1.0 / (v + l)).sum::<f64>() + p / (2.0 * l) - 0.5 * sq;
    let (mut a, mut b) = (1e-4f64.ln(), 1e4f64.ln());
    for _ in 0..200 {
        let m = 0.5 * (a + b);
        if deriv(m.exp()) > 0.0 {
            a = m;
        } else {
            b = m;
        }
    }
    let want = (0.5 * (a + b)).exp();
    let got = lap.optimize_prior_precision()?;
    println!("diag λ* = {got} (bisection {want}), rel {:.2e}", rel(got, want, 0.0));
    assert!(rel(got, want, 0.0) < 1e-6);
    assert_eq!(lap.prior_precision(), got);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2–3. Bayesian linear regression: posterior and evidence in closed form

struct Regression {
    /// `X̃ = [X 1]`, N × 3.
    xt: Vec<Vec<f64>>,
    x: Tensor,
    /// N × K targets.
    y: Vec<f64>,
    k: usize,
    sigma: f64,
}

fn regression(k: usize) -> Result<Regression> {
    let n = 20;
    let xs = normals(11, n, 2);
    let noise = normals(12, n, k);
    let w = [[0.8, -0.5, 0.3], [-0.2, 0.6, -0.4]];
    let sigma = 0.3;
    let mut y = Vec::new();
    for i in 0..n {
        for (c, wc) in w.iter().enumerate().take(k) {
            y.push(wc[0] * xs[2 * i] + wc[1] * xs[2 * i + 1] + wc[2] + sigma * noise[i * k + c]);
        }
    }
    let xt = (0..n).map(|i| vec![xs[2 * i], xs[2 * i + 1], 1.0]).collect();
    Ok(Regression {
        xt,
        x: t2(&xs, n, 2)?,
        y,
        k,
        sigma,
    })
}

impl Regression {
    fn n(&self) -> usize {
        self.xt.len()
    }

    /// `Σ = (X̃ᵀX̃/σ² + λI)⁻¹` (3 × 3).
    fn covariance(&self, lambda: f64) -> Vec<Vec<f64>> {
        let s2 = self.sigma * self.sigma;
        let a: Vec<Vec<f64>> = (0..3)
            .map(|i| {
                (0..3)
                    .map(|j| self.xt.iter().map(|r| r[i] * r[j]).sum::<f64>() / s2 + if i == j { lambda } else { 0.0 })
                    .collect()
            })
            .collect();
        inverse(&a)
    }

    /// The MAP `[w₁ w₂ b]` of each output: `Σ X̃ᵀ y_k / σ²`.
    fn map(&self, lambda: f64) -> Vec<Vec<f64>> {
        let s = self.covariance(lambda);
        let s2 = self.sigma * self.sigma;
        (0..self.k)
            .map(|c| {
                let xty: Vec<f64> = (0..3)
                    .map(|j| {
                        (0..self.n())
                            .map(|i| self.xt[i][j] * self.y[i * self.k + c])
                            .sum::<f64>()
                            / s2
                    })
                    .collect();
                (0..3).map(|i| (0..3).map(|j| s[i][j] * xty[j]).sum()).collect()
            })
            .collect()
    }

    /// `log N(y; 0, σ²I + X̃X̃ᵀ/λ)` summed over the outputs.
    fn log_evidence(&self, lambda: f64) -> f64 {
        let n = self.n();
        let c: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        let kij: f64 = (0..3).map(|t| self.xt[i][t] * self.xt[j][t]).sum::<f64>() / lambda;
                        kij + if i == j { self.sigma * self.sigma } else { 0.0 }
                    })
                    .collect()
            })
            .collect();
        let l = cholesky(&c);
        let log_det: f64 = (0..n).map(|i| 2.0 * l[i][i].ln()).sum();
        let mut total = 0f64;
        for k in 0..self.k {
            // forward substitution L z = y_k
            let mut z = vec![0f64; n];
            for i in 0..n {
                let s: f64 = (0..i).map(|j| l[i][j] * z[j]).sum();
                z[i] = (self.y[i * self.k + k] - s) / l[i][i];
            }
            let quad: f64 = z.iter().map(|v| v * v).sum();
            total += -0.5 * (n as f64 * (2.0 * std::f64::consts::PI).ln() + log_det + quad);
        }
        total
    }

    /// Writes the MAP under λ into the `lin` model's store.
    fn set_map(&self, store: &ParamStore, lambda: f64) -> Result<Vec<Vec<f64>>> {
        let m = self.map(lambda);
        let w: Vec<f64> = m.iter().flat_map(|r| r[..2].to_vec()).collect();
        let b: Vec<f64> = m.iter().map(|r| r[2]).collect();
        set_flat(store, "lin.weight", &w)?;
        set_flat(store, "lin.bias", &b)?;
        Ok(m)
    }

    fn fit(&self, model: &Lin, store: &ParamStore, hessian: LastLayerHessian) -> Result<LastLayerLaplace> {
        let y = t2(&self.y, self.n(), self.k)?;
        let mut data = TensorBatches::new(self.x.clone(), y, 7)?;
        let lik = gaussian(self.sigma, self.k)?;
        LastLayerLaplace::fit(model, store, &mut data, &lik, hessian, &mut SeededRng::new(0))
    }
}

#[test]
fn last_layer_laplace_of_linear_regression_is_the_closed_form_posterior() -> Result<()> {
    let reg = regression(2)?;
    let (model, store) = lin(2, 2)?;
    let lambda = 2.0;
    let map = reg.set_map(&store, lambda)?;
    let sigma = reg.covariance(lambda);
    for hessian in [LastLayerHessian::Full, LastLayerHessian::Kron] {
        let mut lap = reg.fit(&model, &store, hessian)?;
        lap.set_prior_precision(lambda)?;
        // mean: the MAP written into the store, read back as the head's tensors
        let mean = lap.mean()?;
        let w = rows(&mean["lin.weight"])?;
        let b = flat(&mean["lin.bias"])?;
        for k in 0..2 {
            assert_eq!([w[k][0], w[k][1], b[k]], [map[k][0], map[k][1], map[k][2]]);
        }
        // covariance: I₂ ⊗ Σ in the class-major order k·3 + i (the bias last in each class)
        let cov = rows(&lap.covariance()?)?;
        let mut worst = 0f64;
        for (i, row) in cov.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                let want = if i / 3 == j / 3 { sigma[i % 3][j % 3] } else { 0.0 };
                worst = worst.max((v - want).abs() / sigma[i % 3][i % 3].abs());
            }
        }
        println!("{}: max rel covariance error {worst:.2e}", hessian.name());
        assert!(worst < 1e-8, "{cov:?} vs {sigma:?}");
        // marginal standard deviations
        let st = lap.stats()?;
        let sw = rows(
            st.iter()
                .find(|s| s.name == "lin.weight")
                .unwrap()
                .std
                .as_ref()
                .unwrap(),
        )?;
        let sb = flat(st.iter().find(|s| s.name == "lin.bias").unwrap().std.as_ref().unwrap())?;
        for k in 0..2 {
            assert!(rel(sw[k][1], sigma[1][1].sqrt(), 0.0) < 1e-8);
            assert!(rel(sb[k], sigma[2][2].sqrt(), 0.0) < 1e-8);
        }
    }
    Ok(())
}

#[test]
fn laplace_evidence_of_linear_regression_is_the_closed_form_and_its_optimum() -> Result<()> {
    let reg = regression(1)?;
    let (model, store) = lin(2, 1)?;
    // the Laplace evidence at (λ, MAP(λ)) equals log N(y; 0, σ²I + X̃X̃ᵀ/λ)
    for lambda in [0.05, 0.5, 3.0, 40.0] {
        reg.set_map(&store, lambda)?;
        for hessian in [LastLayerHessian::Full, LastLayerHessian::Kron] {
            let lap = reg.fit(&model, &store, hessian)?;
            let got = lap.log_marginal_likelihood(lambda)?;
            let want = reg.log_evidence(lambda);
            println!("λ = {lambda} {}: {got} vs {want}", hessian.name());
            assert!(rel(got, want, 1.0) < 1e-10, "{got} vs {want}");
        }
    }
    // λ* by MacKay's (1992) fixed point λ ← γ / ‖θ*(λ)‖², γ = P − λ tr Σ(λ), the stationarity
    // condition of the closed-form evidence
    let mut lambda = 1.0;
    for _ in 0..10_000 {
        let s = reg.covariance(lambda);
        let m = &reg.map(lambda)[0];
        let gamma = 3.0 - lambda * (s[0][0] + s[1][1] + s[2][2]);
        let next = gamma / m.iter().map(|v| v * v).sum::<f64>();
        if rel(next, lambda, 0.0) < 1e-14 {
            lambda = next;
            break;
        }
        lambda = next;
    }
    let star = lambda;
    // it is the maximum of the closed-form evidence
    let e0 = reg.log_evidence(star);
    assert!(reg.log_evidence(star * 1.01) < e0 && reg.log_evidence(star / 1.01) < e0);
    reg.set_map(&store, star)?;
    for hessian in [LastLayerHessian::Full, LastLayerHessian::Kron] {
        let mut lap = reg.fit(&model, &store, hessian)?;
        let got = lap.optimize_prior_precision()?;
        println!(
            "{}: λ* = {got}, closed form {star}, rel {:.2e}",
            hessian.name(),
            rel(got, star, 0.0)
        );
        assert!(rel(got, star, 0.0) < 1e-4);
        assert_eq!(lap.prior_precision(), got);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Kron against Full and against explicit sums

/// A dense matrix, by rows.
type Mat = Vec<Vec<f64>>;

/// `H = Σₙ Λₙ ⊗ φ̃ₙφ̃ₙᵀ` (categorical), and `G = Σ Λₙ`, `A = (1/N) Σ φ̃ₙφ̃ₙᵀ`, by loops.
fn explicit_curvature(phi: &[f64], n: usize, d: usize, w: &[f64], b: &[f64]) -> (Mat, Mat, Mat) {
    let k = b.len();
    let dt = d + 1;
    let p = k * dt;
    let mut h = vec![vec![0f64; p]; p];
    let mut g = vec![vec![0f64; k]; k];
    let mut a = vec![vec![0f64; dt]; dt];
    for r in 0..n {
        let mut pt: Vec<f64> = phi[r * d..(r + 1) * d].to_vec();
        pt.push(1.0);
        let f: Vec<f64> = (0..k)
            .map(|c| (0..d).map(|j| w[c * d + j] * pt[j]).sum::<f64>() + b[c])
            .collect();
        let pr = softmax(&f);
        for c in 0..k {
            for c2 in 0..k {
                let lam = if c == c2 {
                    pr[c] * (1.0 - pr[c])
                } else {
                    -pr[c] * pr[c2]
                };
                g[c][c2] += lam;
                for i in 0..dt {
                    for j in 0..dt {
                        h[c * dt + i][c2 * dt + j] += lam * pt[i] * pt[j];
                    }
                }
            }
        }
        for i in 0..dt {
            for j in 0..dt {
                a[i][j] += pt[i] * pt[j] / n as f64;
            }
        }
    }
    (h, g, a)
}

fn plus_lambda(m: &[Vec<f64>], l: f64) -> Vec<Vec<f64>> {
    m.iter()
        .enumerate()
        .map(|(i, r)| {
            r.iter()
                .enumerate()
                .map(|(j, v)| v + if i == j { l } else { 0.0 })
                .collect()
        })
        .collect()
}

#[test]
fn kron_equals_full_where_the_factorisation_is_exact_and_matches_explicit_sums() -> Result<()> {
    let (k, d) = (3, 2);
    let w = normals(21, k, d);
    let b = normals(22, 1, k);
    let wt = t2(&w, k, d)?;
    let bt = Tensor::new(b.as_slice(), &Device::Cpu)?;
    let fit = |phi: &[f64], n: usize, labels: &[u32], hessian| -> Result<LastLayerLaplace> {
        let mut l = LastLayerLaplace::fit_features(
            &t2(phi, n, d)?,
            &Tensor::new(labels, &Device::Cpu)?,
            &wt,
            Some(&bt),
            "head",
            &Likelihood::Categorical,
            hessian,
        )?;
        l.set_prior_precision(0.7)?;
        Ok(l)
    };
    let max_diff = |a: &[Vec<f64>], b: &[Vec<f64>]| {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0f64, f64::max)
    };
    // one example: Λ₁ ⊗ φ̃φ̃ᵀ is a Kronecker product, so Kron = Full
    let phi1 = normals(23, 1, d);
    let full = rows(&fit(&phi1, 1, &[1], LastLayerHessian::Full)?.covariance()?)?;
    let kron = rows(&fit(&phi1, 1, &[1], LastLayerHessian::Kron)?.covariance()?)?;
    let e1 = max_diff(&full, &kron);
    // many examples, categorical: the Λₙ differ, so Kron ≠ Full
    let n = 12;
    let phi = normals(24, n, d);
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
    let lf = fit(&phi, n, &labels, LastLayerHessian::Full)?;
    let lk = fit(&phi, n, &labels, LastLayerHessian::Kron)?;
    let (full, kron) = (rows(&lf.covariance()?)?, rows(&lk.covariance()?)?);
    let en = max_diff(&full, &kron);
    println!("Kron vs Full: one example {e1:.2e}, {n} examples {en:.2e}");
    assert!(e1 < 1e-10);
    assert!(en > 1e-2);
    // against the explicit sums: Σ_Full (H + λI) = I and Σ_Kron (G ⊗ A + λI) = I
    let (h, g, a) = explicit_curvature(&phi, n, d, &w, &b);
    let ef = identity_error(&full, &plus_lambda(&h, 0.7));
    let p = k * (d + 1);
    let ga: Vec<Vec<f64>> = (0..p)
        .map(|r| (0..p).map(|c| g[r / 3][c / 3] * a[r % 3][c % 3]).collect())
        .collect();
    let ek = identity_error(&kron, &plus_lambda(&ga, 0.7));
    println!("‖ΣP − I‖∞: Full {ef:.2e}, Kron {ek:.2e}");
    assert!(ef < 1e-9 && ek < 1e-9);
    // the log evidence: log p(D|θ*) − ½(log det(H + λI) − P log λ) − ½ λ‖θ*‖², the determinant by Cholesky
    let theta_sq: f64 = w.iter().chain(&b).map(|v| v * v).sum();
    let mut ll = 0f64;
    for r in 0..n {
        let f: Vec<f64> = (0..k)
            .map(|c| (0..d).map(|j| w[c * d + j] * phi[r * d + j]).sum::<f64>() + b[c])
            .collect();
        ll += softmax(&f)[labels[r] as usize].ln();
    }
    for (lap, hm) in [(&lf, &h), (&lk, &ga)] {
        let l = 2.5;
        let want = ll - 0.5 * (log_det_spd(&plus_lambda(hm, l)) - p as f64 * l.ln()) - 0.5 * l * theta_sq;
        assert!(rel(lap.log_marginal_likelihood(l)?, want, 1.0) < 1e-10);
    }
    // a Gaussian likelihood: every Λₙ = I/σ², so Kron = Full
    let lik = gaussian(0.4, k)?;
    let yt = t2(&normals(25, n, k), n, k)?;
    let cov = |hessian| -> Result<Vec<Vec<f64>>> {
        rows(
            &LastLayerLaplace::fit_features(&t2(&phi, n, d)?, &yt, &wt, Some(&bt), "head", &lik, hessian)?
                .covariance()?,
        )
    };
    let eg = max_diff(&cov(LastLayerHessian::Full)?, &cov(LastLayerHessian::Kron)?);
    println!("Gaussian Kron vs Full {eg:.2e}");
    assert!(eg < 1e-10);
    Ok(())
}

#[test]
fn fit_through_the_model_equals_fit_on_its_features() -> Result<()> {
    let (net, store) = mlp(8, 3, 4, 3)?;
    let n = 9;
    let x = t2(&normals(31, n, 3), n, 3)?;
    let y = Tensor::new(&[0u32, 1, 2, 2, 1, 0, 0, 1, 2], &Device::Cpu)?;
    let mut data = TensorBatches::new(x.clone(), y.clone(), 4)?.shuffled();
    for hessian in [LastLayerHessian::Full, LastLayerHessian::Kron] {
        let a = LastLayerLaplace::fit(
            &net,
            &store,
            &mut data,
            &Likelihood::Categorical,
            hessian,
            &mut SeededRng::new(3),
        )?;
        let mut rng = SeededRng::new(0);
        let phi = net.features(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
        let b = LastLayerLaplace::fit_features(
            &phi,
            &y,
            var(&store, "fc2.weight").as_tensor(),
            Some(var(&store, "fc2.bias").as_tensor()),
            "fc2",
            &Likelihood::Categorical,
            hessian,
        )?;
        let (ca, cb) = (flat(&a.covariance()?)?, flat(&b.covariance()?)?);
        let e = ca.iter().zip(&cb).map(|(u, v)| (u - v).abs()).fold(0f64, f64::max);
        assert!(e < 1e-10, "{e}");
        assert!(rel(a.log_likelihood(), b.log_likelihood(), 1.0) < 1e-10);
        assert_eq!((a.head(), a.n_data(), a.num_params()), ("fc2", n, 15));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. probit, samples, round trips, errors

/// Features are the inputs, head `h` without bias (for the probit by hand).
struct Ident;

impl Module for Ident {
    fn forward(&self, x: &Tensor, _ctx: &mut Ctx) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn features(&self, x: &Tensor, _ctx: &mut Ctx) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn head(&self) -> Option<String> {
        Some("h".into())
    }
}

#[test]
fn probit_matches_a_hand_computation() -> Result<()> {
    // K = 2, d = 1, no bias, W = [1, −1]ᵀ; one training example φ = 1 with label 0.
    // f = (1, −1), p₀ = 1/(1 + e⁻²), c = p₀p₁; Λ = c [[1, −1], [−1, 1]];
    // with λ = 1: Σ = (Λ + I)⁻¹ = [[1 + c, c], [c, 1 + c]] / (1 + 2c).
    // At φ = 2: f = (2, −2), σ²_k = 4 (1 + c)/(1 + 2c), κ = 1/√(1 + πσ²/8),
    // p₀ = 1/(1 + e^{−4κ}).
    let w = Tensor::new(&[[1f64], [-1.0]], &Device::Cpu)?;
    let lap = LastLayerLaplace::fit_features(
        &Tensor::new(&[[1f64]], &Device::Cpu)?,
        &Tensor::new(&[0u32], &Device::Cpu)?,
        &w,
        None,
        "h",
        &Likelihood::Categorical,
        LastLayerHessian::Full,
    )?;
    let p0 = 1.0 / (1.0 + (-2f64).exp());
    let c = p0 * (1.0 - p0);
    let var = 4.0 * (1.0 + c) / (1.0 + 2.0 * c);
    let kappa = 1.0 / (1.0 + std::f64::consts::PI * var / 8.0).sqrt();
    let want = 1.0 / (1.0 + (-4.0 * kappa).exp());
    let (m, v) = lap.logit_moments(&Tensor::new(&[[2f64]], &Device::Cpu)?)?;
    assert_eq!(rows(&m)?, vec![vec![2.0, -2.0]]);
    let v = rows(&v)?;
    assert!(
        rel(v[0][0], var, 0.0) < 1e-12 && rel(v[0][1], var, 0.0) < 1e-12,
        "{v:?} vs {var}"
    );
    let mut data = TensorBatches::new(
        Tensor::new(&[[2f64]], &Device::Cpu)?,
        Tensor::new(&[1u32], &Device::Cpu)?,
        1,
    )?;
    let p = lap.predict_probit(&Ident, &mut data, &mut SeededRng::new(0))?;
    println!("probit p₀ = {} (hand {want})", p.probs[0]);
    assert_eq!((p.classes, p.labels.clone()), (2, vec![1]));
    assert!((p.probs[0] as f64 - want).abs() < 1e-6 && (p.probs[1] as f64 - (1.0 - want)).abs() < 1e-6);
    // the probit is less confident than the MAP's softmax
    assert!(want < 1.0 / (1.0 + (-4f64).exp()));
    Ok(())
}

/// A categorical head fit, K = 3, d = 2 with bias (P = 9), λ = 0.5.
fn categorical_head(hessian: LastLayerHessian) -> Result<LastLayerLaplace> {
    let n = 15;
    let labels: Vec<u32> = (0..n as u32).map(|i| (i * 7) % 3).collect();
    let mut lap = LastLayerLaplace::fit_features(
        &t2(&normals(41, n, 2), n, 2)?,
        &Tensor::new(labels.as_slice(), &Device::Cpu)?,
        &t2(&normals(42, 3, 2), 3, 2)?,
        Some(&Tensor::new(normals(43, 1, 3).as_slice(), &Device::Cpu)?),
        "head",
        &Likelihood::Categorical,
        hessian,
    )?;
    lap.set_prior_precision(0.5)?;
    Ok(lap)
}

/// A sample as one vector in the order `k·d̃ + i`.
fn sample_vector(s: &ParamSample) -> Result<Vec<f64>> {
    let w = rows(&s["head.weight"])?;
    let b = flat(&s["head.bias"])?;
    Ok(w.iter()
        .zip(&b)
        .flat_map(|(r, b)| r.iter().copied().chain([*b]))
        .collect())
}

#[test]
fn last_layer_samples_have_the_stated_mean_and_covariance() -> Result<()> {
    for hessian in [LastLayerHessian::Full, LastLayerHessian::Kron] {
        let lap = categorical_head(hessian)?;
        let cov = rows(&lap.covariance()?)?;
        let mean = sample_vector(&lap.mean()?)?;
        let p = mean.len();
        let s = 20_000usize;
        let mut rng = SeededRng::new(7);
        let mut sum = vec![0f64; p];
        let mut outer = vec![vec![0f64; p]; p];
        for _ in 0..s {
            let v = sample_vector(&lap.sample(&mut rng)?)?;
            let dv: Vec<f64> = v.iter().zip(&mean).map(|(a, m)| a - m).collect();
            for i in 0..p {
                sum[i] += dv[i];
                for j in 0..p {
                    outer[i][j] += dv[i] * dv[j];
                }
            }
        }
        // z-scores: mean error / √(Σᵢᵢ/S); covariance error (about the known mean) /
        // √((ΣᵢᵢΣⱼⱼ + Σᵢⱼ²)/S), the standard error of a Gaussian sample covariance entry
        let mut zmax = 0f64;
        for i in 0..p {
            zmax = zmax.max((sum[i] / s as f64).abs() / (cov[i][i] / s as f64).sqrt());
            for j in 0..p {
                let se = ((cov[i][i] * cov[j][j] + cov[i][j].powi(2)) / s as f64).sqrt();
                zmax = zmax.max((outer[i][j] / s as f64 - cov[i][j]).abs() / se);
            }
        }
        println!(
            "{}: max |z| over {} mean and covariance entries = {zmax:.2}",
            hessian.name(),
            p + p * p
        );
        assert!(zmax < 4.5, "{zmax}");
        // the stats' standard deviations are the covariance's diagonal
        let st = lap.stats()?;
        let sd = sample_vector(
            &st.iter()
                .map(|s| (s.name.clone(), s.std.clone().unwrap()))
                .collect::<ParamSample>(),
        )?;
        for i in 0..p {
            assert!(rel(sd[i], cov[i][i].sqrt(), 0.0) < 1e-10);
        }
    }
    Ok(())
}

#[test]
fn same_seed_same_samples_and_tensors_round_trip() -> Result<()> {
    let (net, store) = mlp(9, 3, 4, 3)?;
    let n = 6;
    let x = t2(&normals(51, n, 3), n, 3)?;
    let y = Tensor::new(&[0u32, 1, 2, 1, 0, 2], &Device::Cpu)?;
    let mut data = TensorBatches::new(x, y, 6)?;
    let mut diag = DiagLaplace::fit(
        &net,
        &store,
        &mut data,
        &Likelihood::Categorical,
        DiagCurvature::EmpiricalFisher,
        &mut SeededRng::new(0),
    )?;
    diag.set_prior_precision(3.0)?;
    let mut posteriors: Vec<Box<dyn Laplace>> = vec![Box::new(diag)];
    for hessian in [LastLayerHessian::Full, LastLayerHessian::Kron] {
        posteriors.push(Box::new(categorical_head(hessian)?));
    }
    let same = |a: &ParamSample, b: &ParamSample| -> Result<bool> {
        for (k, t) in a {
            if flat(t)? != flat(&b[k])? || t.dtype() != b[k].dtype() {
                return Ok(false);
            }
        }
        Ok(a.len() == b.len())
    };
    for lap in &posteriors {
        let a = lap.sample(&mut SeededRng::new(5))?;
        let b = lap.sample(&mut SeededRng::new(5))?;
        let c = lap.sample(&mut SeededRng::new(6))?;
        assert!(same(&a, &b)? && !same(&a, &c)?, "{}", lap.kind());
        // round trip through tensors()
        let t = lap.tensors()?;
        let back: Box<dyn Laplace> = match lap.kind() {
            "laplace-diag" => Box::new(DiagLaplace::from_tensors(&t)?),
            _ => Box::new(LastLayerLaplace::from_tensors(&t)?),
        };
        assert_eq!(back.kind(), lap.kind());
        assert_eq!(back.prior_precision(), lap.prior_precision());
        assert!(same(&back.mean()?, &lap.mean()?)?);
        assert!(same(&back.sample(&mut SeededRng::new(5))?, &a)?);
        for l in [0.1, 10.0] {
            assert_eq!(back.log_marginal_likelihood(l)?, lap.log_marginal_likelihood(l)?);
        }
        let (sa, sb) = (lap.stats()?, back.stats()?);
        for (u, v) in sa.iter().zip(&sb) {
            assert_eq!(u.name, v.name);
            assert_eq!(flat(u.std.as_ref().unwrap())?, flat(v.std.as_ref().unwrap())?);
        }
    }
    assert_eq!(posteriors[0].kind(), "laplace-diag");
    assert_eq!(posteriors[1].kind(), "laplace-last-layer");
    Ok(())
}

#[test]
fn bad_input_gives_clear_errors() -> Result<()> {
    let mut lap = categorical_head(LastLayerHessian::Full)?;
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = lap.set_prior_precision(bad).unwrap_err().to_string();
        assert!(e.contains("`prior_precision`"), "{e}");
        assert!(lap.log_marginal_likelihood(bad).is_err());
    }
    assert_eq!(lap.prior_precision(), 0.5);
    // no head
    let x = Tensor::zeros((2, 2), DType::F64, &Device::Cpu)?;
    let y = Tensor::new(&[0u32, 1], &Device::Cpu)?;
    let mut data = TensorBatches::new(x.clone(), y.clone(), 2)?;
    let e = LastLayerLaplace::fit(
        &NoHead,
        &ParamStore::new(),
        &mut data,
        &Likelihood::Categorical,
        LastLayerHessian::Full,
        &mut SeededRng::new(0),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no head"), "{e}");
    // a head the store lacks
    let e = LastLayerLaplace::fit(
        &Ident,
        &ParamStore::new(),
        &mut data,
        &Likelihood::Categorical,
        LastLayerHessian::Full,
        &mut SeededRng::new(0),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("`h.weight`"), "{e}");
    // wrong shapes
    let w = Tensor::zeros((3, 2), DType::F64, &Device::Cpu)?;
    let ff = |phi: &Tensor, y: &Tensor, w: &Tensor, b: Option<&Tensor>| {
        LastLayerLaplace::fit_features(phi, y, w, b, "fc", &Likelihood::Categorical, LastLayerHessian::Kron)
            .unwrap_err()
            .to_string()
    };
    let e = ff(&Tensor::zeros((2, 5), DType::F64, &Device::Cpu)?, &y, &w, None);
    assert!(e.contains("`phi`") && e.contains("[N, 2]"), "{e}");
    let e = ff(&x, &Tensor::new(&[0u32, 1, 2], &Device::Cpu)?, &w, None);
    assert!(e.contains("`y`"), "{e}");
    let e = ff(&x, &Tensor::new(&[0u32, 3], &Device::Cpu)?, &w, None);
    assert!(e.contains("label 3"), "{e}");
    let e = ff(&x, &y, &w, Some(&Tensor::zeros(2, DType::F64, &Device::Cpu)?));
    assert!(e.contains("`fc.bias`"), "{e}");
    let e = ff(&x, &y, &Tensor::zeros(3, DType::F64, &Device::Cpu)?, None);
    assert!(e.contains("`fc.weight`"), "{e}");
    // noise that is not fixed
    let pb = ParamBuilder::new(ParamStore::new(), SeededRng::new(0), DType::F64, Device::Cpu);
    let homo = Likelihood::Gaussian(Gaussian::new(Noise::Homoscedastic { init_std: 1.0 }, 3, &pb)?);
    let e = LastLayerLaplace::fit_features(&x, &y, &w, None, "fc", &homo, LastLayerHessian::Full)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fixed noise"), "{e}");
    // the probit of a Gaussian head
    let lik = gaussian(1.0, 3)?;
    let yt = Tensor::zeros((2, 3), DType::F64, &Device::Cpu)?;
    let g = LastLayerLaplace::fit_features(&x, &yt, &w, None, "fc", &lik, LastLayerHessian::Full)?;
    assert!(g
        .predict_probit(&Ident, &mut data, &mut SeededRng::new(0))
        .unwrap_err()
        .to_string()
        .contains("categorical"));
    // names
    assert_eq!(DiagCurvature::parse("ef")?, DiagCurvature::EmpiricalFisher);
    assert_eq!(
        LastLayerHessian::parse(LastLayerHessian::Kron.name())?,
        LastLayerHessian::Kron
    );
    assert!(DiagCurvature::parse("kfac").unwrap_err().to_string().contains("`ggn`"));
    assert!(LastLayerHessian::parse("diag").is_err());
    // files lacking a tensor
    let mut t = lap.tensors()?;
    t.remove("full/eigenvectors");
    let e = LastLayerLaplace::from_tensors(&t).unwrap_err().to_string();
    assert!(e.contains("`full/eigenvectors`"), "{e}");
    let e = DiagLaplace::from_tensors(&BTreeMap::new()).unwrap_err().to_string();
    assert!(e.contains("mean/"), "{e}");
    // the selection's arguments
    let (net, store) = mlp(0, 2, 3, 2)?;
    let mut d = DiagLaplace::fit(
        &net,
        &store,
        &mut data,
        &Likelihood::Categorical,
        DiagCurvature::Ggn,
        &mut SeededRng::new(0),
    )?;
    let mut rng = SeededRng::new(0);
    assert!(select_prior_precision_by_nll(&mut d, &net, &store, &mut data, &[], 2, &mut rng).is_err());
    assert!(select_prior_precision_by_nll(&mut d, &net, &store, &mut data, &[1.0, -1.0], 2, &mut rng).is_err());
    assert!(select_prior_precision_by_nll(&mut d, &net, &store, &mut data, &[1.0], 0, &mut rng).is_err());
    Ok(())
}

#[test]
fn nll_selection_picks_the_grid_minimum_with_common_random_numbers() -> Result<()> {
    let (net, store) = mlp(4, 3, 5, 3)?;
    let n = 10;
    let x = t2(&normals(61, n, 3), n, 3)?;
    let y = Tensor::new(&[0u32, 1, 2, 0, 1, 2, 0, 1, 2, 0], &Device::Cpu)?;
    let mut train = TensorBatches::new(x.clone(), y.clone(), 5)?;
    let mut val = TensorBatches::new(x, y, 4)?;
    let before = snapshot(&store)?;
    let grid = [1e-2, 1.0, 1e2, 1e4];
    let mut lap = DiagLaplace::fit(
        &net,
        &store,
        &mut train,
        &Likelihood::Categorical,
        DiagCurvature::Ggn,
        &mut SeededRng::new(0),
    )?;
    let got = select_prior_precision_by_nll(&mut lap, &net, &store, &mut val, &grid, 4, &mut SeededRng::new(9))?;
    assert_eq!(lap.prior_precision(), got);
    // independently: the NLL of predict_bma for each λ with the generator seeded as the selection's
    let mut nlls = Vec::new();
    for &l in &grid {
        lap.set_prior_precision(l)?;
        let settings = BmaSettings {
            samples: 4,
            refresh_batch_norm: false,
        };
        let p = predict_bma(&net, &store, &lap, &mut val, None, settings, &mut SeededRng::new(9))?.predictions;
        let nll = -p
            .labels
            .iter()
            .enumerate()
            .map(|(i, &y)| (p.probs[i * 3 + y as usize] as f64).ln())
            .sum::<f64>()
            / n as f64;
        nlls.push(nll);
    }
    let best = (0..grid.len()).min_by(|&a, &b| nlls[a].total_cmp(&nlls[b])).unwrap();
    println!("validation NLL by λ: {nlls:?}, chosen {got}");
    assert_eq!(got, grid[best]);
    // the store is restored
    for (k, t) in &before {
        assert_eq!(flat(t)?, flat(&store.tensors()[k])?);
    }
    // regression: the Gaussian mixture predictive; deterministic for a seed
    let reg = regression(1)?;
    let (model, store) = lin(2, 1)?;
    reg.set_map(&store, 1.0)?;
    let mut lap = reg.fit(&model, &store, LastLayerHessian::Full)?;
    let mut val = TensorBatches::new(reg.x.clone(), t2(&reg.y, reg.n(), 1)?, 6)?;
    let a = select_prior_precision_by_nll(&mut lap, &model, &store, &mut val, &grid, 8, &mut SeededRng::new(1))?;
    let b = select_prior_precision_by_nll(&mut lap, &model, &store, &mut val, &grid, 8, &mut SeededRng::new(1))?;
    assert_eq!(a, b);
    // a tiny λ spreads the samples far beyond the data's noise: never the best
    assert_ne!(a, 1e-2);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// the linearised (GLM) probit predictive of the diagonal approximation

#[test]
fn diag_probit_uses_the_linearised_logit_variances() -> Result<()> {
    let (net, store) = mlp(5, 3, 4, 3)?;
    let n = 5;
    let x = t2(&normals(2, n, 3), n, 3)?;
    let y = Tensor::new(&[0u32, 1, 2, 1, 0], &Device::Cpu)?;
    let mut data = TensorBatches::new(x.clone(), y, 2)?;
    let mut rng = SeededRng::new(0);
    let mut la = DiagLaplace::fit(
        &net,
        &store,
        &mut data,
        &Likelihood::Categorical,
        DiagCurvature::Ggn,
        &mut rng,
    )?;
    la.set_prior_precision(0.7)?;
    let got = la.predict_probit(&net, &store, &mut data, &mut rng)?;
    // independent: σ²_c = Σᵢ J_ci² / (hᵢ + λ) with J by central differences, then the probit
    // softmax(f_c / √(1 + π σ²_c / 8)) written out here
    let h = flat_curvature(&la.curvature()?)?;
    let jac = fd_jacobians(&net, &store, &x, 1e-5)?;
    let f0 = outputs(&net, &x)?;
    let mut worst = 0f64;
    for (e, f) in f0.iter().enumerate() {
        let var: Vec<f64> = (0..3)
            .map(|c| {
                jac.iter()
                    .zip(&h)
                    .map(|((_, j), hi)| j[e][c].powi(2) / (hi + 0.7))
                    .sum()
            })
            .collect();
        let z: Vec<f64> = (0..3)
            .map(|c| f[c] / (1.0 + std::f64::consts::PI * var[c] / 8.0).sqrt())
            .collect();
        let want = softmax(&z);
        for (c, w) in want.iter().enumerate() {
            worst = worst.max((got.probs[e * 3 + c] as f64 - w).abs());
        }
        // the variance is large enough here to move the probabilities off the MAP's
        assert!(var.iter().all(|v| *v > 1e-3), "{var:?}");
    }
    println!("diag probit max abs error {worst:.2e}");
    assert!(worst < 1e-6, "{worst}");
    // the MAP network's own probabilities differ (κ < 1 flattens them)
    let map: Vec<f64> = softmax(&f0[0]);
    assert!((0..3).any(|c| (got.probs[c] as f64 - map[c]).abs() > 1e-3));
    Ok(())
}
