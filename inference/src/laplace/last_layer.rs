//! Last-layer Laplace (Kristiadi, Hein & Hennig 2020; Daxberger et al. 2021, laplace-torch's
//! `FullLLLaplace` and `KronLLLaplace`): a Gaussian over the head's parameters `{head}.weight`
//! `W: [K, d]` and `{head}.bias` `b: [K]`, the features `φ(x)` ([`Module::features`]) fixed at
//! the MAP.
//!
//! # Ordering and the full GGN
//!
//! With the augmented features `φ̃ = [φ; 1]` (`φ̃ = φ` for a head without bias; `d̃` its length),
//! the head's outputs are `f = W̃ φ̃`, `W̃ = [W b]` (`K × d̃`), and the parameters are ordered
//! class-major, `θ[k·d̃ + i] = W̃[k, i]` (the bias of class k last in its row; laplace-torch orders
//! all weights first, then all biases — a permutation, which changes neither the determinant
//! nor the scatter). The Jacobian of `f(xₙ)` is `I_K ⊗ φ̃ₙᵀ`, so the GGN is exact for the last
//! layer and
//!
//! ```text
//! H = Σₙ Λₙ ⊗ φ̃ₙ φ̃ₙᵀ,     Λₙ = diag(pₙ) − pₙ pₙᵀ  (categorical),   Λₙ = I/σ²  (Gaussian, fixed σ),
//! ```
//!
//! summed over the training data (`H[(k,i),(l,j)] = Σₙ Λₙ[k,l] φ̃ₙ[i] φ̃ₙ[j]`). `Full` stores its
//! symmetric eigendecomposition `H = Q diag(e) Qᵀ` (f64, nalgebra; eigenvalues below 0 from
//! rounding are set to 0), so that for any λ the posterior covariance is
//! `Σ = Q diag(1/(e + λ)) Qᵀ`, `log det(H + λI) = Σⱼ log(eⱼ + λ)` and a sample is
//! `θ* + Q diag((e + λ)^{−½}) z`, `z ~ N(0, I)`.
//!
//! # Kronecker factors (KFAC)
//!
//! ```text
//! H ≈ G ⊗ A,    G = Σₙ Λₙ  (K × K, summed),    A = (1/N) Σₙ φ̃ₙ φ̃ₙᵀ  (d̃ × d̃, averaged),
//! ```
//!
//! the scaling of laplace-torch (BackPACK/ASDL give the output factor summed over the batch and
//! the input factor averaged; laplace-torch rescales the input factor by `M/N` per batch of M, so
//! that `A` is the mean over all N examples and `G ⊗ A` has the magnitude of the sum). It is
//! exact for one example and whenever all `Λₙ` are equal (a Gaussian likelihood:
//! `Σₙ Λ ⊗ φ̃ₙφ̃ₙᵀ = (NΛ) ⊗ A`). With `G = U diag(g) Uᵀ`, `A = V diag(a) Vᵀ`, the eigenvectors of
//! `G ⊗ A + λI` are `U ⊗ V` with eigenvalues `g_k a_i + λ` (laplace-torch's `KronDecomposed`);
//! sampling is `θ* + vec(U (Z ⊘ √(g aᵀ + λ)) Vᵀ)` (`Z` a `K × d̃` matrix of standard normals,
//! row-major `vec`), and `log det = Σ_{k,i} log(g_k a_i + λ)`.
//!
//! **Difference from laplace-torch**: laplace-torch keeps the bias as its own block with the
//! single factor `G` (`Kron.init_from_model`: one factor for a 1-D parameter) and drops the
//! weight–bias cross terms; here the bias is the homogeneous coordinate of `φ̃` (Martens &
//! Grosse 2015, §3), so that the weight–bias curvature is kept and Kron equals Full whenever the
//! factorisation is exact.
//!
//! # Predictive
//!
//! The last layer is linear in its parameters, so the linearised (GLM) predictive is exact in
//! the logits: `f(x) ~ N(W̃* φ̃, J Σ Jᵀ)`, `J = I_K ⊗ φ̃ᵀ`, whose marginal variances are
//! `σ²_k = φ̃ᵀ Σ_kk φ̃` (`Σ_kk` the `d̃ × d̃` diagonal block of class k). The probit
//! approximation (MacKay 1992; laplace-torch's `link_approx="probit"`) is
//! `p(y | x, D) ≈ softmax(κ ⊙ f)`, `κ_c = 1/√(1 + π σ²_c / 8)`
//! ([`LastLayerLaplace::predict_probit`]). The Monte Carlo predictive is
//! [`crate::posterior::predict_bma`] over [`Posterior::sample`].
//!
//! # Saved tensors
//!
//! `mean/{head}.weight`, `mean/{head}.bias` (the head's dtype); for Full `full/eigenvalues` `[P]`
//! and `full/eigenvectors` `[P, P]` (f64, columns the eigenvectors); for Kron
//! `kron/output_eigenvalues` `[K]`, `kron/output_eigenvectors` `[K, K]`,
//! `kron/input_eigenvalues` `[d̃]`, `kron/input_eigenvectors` `[d̃, d̃]`; the `[1]` f64 scalars
//! `prior_precision`, `log_likelihood`, `n_data` and, for a Gaussian likelihood, `noise_std`.

use super::{
    check_prior_precision, fixed_noise, laplace_evidence, read_scalar, scalar_tensor, Laplace, LastLayerHessian,
};
use crate::batches::Batches;
use crate::likelihood::{Likelihood, HALF_LOG_2PI};
use crate::posterior::{ParamSample, Posterior};
use crate::predict::Predictions;
use candle_core::{bail, DType, Device, Result, Tensor};
use nalgebra::{DMatrix, DVector, SymmetricEigen};
use secateur_bayes::{Ctx, Module, ParamStore, PosteriorStats, Sampling, SeededRng};
use std::collections::BTreeMap;

/// The eigendecomposed curvature of the head.
#[derive(Debug, Clone)]
enum Curvature {
    /// `H = Q diag(e) Qᵀ`, `P × P`.
    Full {
        values: DVector<f64>,
        vectors: DMatrix<f64>,
    },
    /// `G = U diag(g) Uᵀ` (`K × K`), `A = V diag(a) Vᵀ` (`d̃ × d̃`).
    Kron {
        g_values: DVector<f64>,
        g_vectors: DMatrix<f64>,
        a_values: DVector<f64>,
        a_vectors: DMatrix<f64>,
    },
}

/// A last-layer Laplace approximation (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct LastLayerLaplace {
    head: String,
    classes: usize,
    features: usize,
    bias: bool,
    dtype: DType,
    device: Device,
    /// `W̃* = [W b]`, `K × d̃`.
    theta: DMatrix<f64>,
    curvature: Curvature,
    prior_precision: f64,
    log_likelihood: f64,
    n_data: usize,
    noise_std: Option<f64>,
}

/// The targets of a batch, checked.
enum Targets {
    Labels(Vec<u32>),
    /// `n × K`, row-major.
    Values(Vec<f64>),
}

/// Sums the curvature and the log-likelihood over batches of features.
struct Accumulator {
    hessian: LastLayerHessian,
    features: usize,
    bias: bool,
    theta: DMatrix<f64>,
    noise: Option<f64>,
    /// Full: `H`, `P × P`.
    full: DMatrix<f64>,
    /// Kron: `Σ Λₙ` and `Σ φ̃ₙφ̃ₙᵀ`.
    g: DMatrix<f64>,
    a: DMatrix<f64>,
    log_lik: f64,
    n: usize,
}

impl Accumulator {
    fn new(
        weight: &Tensor,
        bias: Option<&Tensor>,
        head: &str,
        likelihood: &Likelihood,
        hessian: LastLayerHessian,
    ) -> Result<Self> {
        let noise = fixed_noise(likelihood)?;
        let (k, d) = match weight.dims() {
            [k, d] if *k > 0 && *d > 0 => (*k, *d),
            other => bail!("last-layer laplace: `{head}.weight` must be [K, d] with K, d ≥ 1, got {other:?}"),
        };
        if let Some(b) = bias {
            if b.dims() != [k] {
                bail!(
                    "last-layer laplace: `{head}.bias` must be [{k}] (the rows of `{head}.weight`), got {:?}",
                    b.dims()
                );
            }
        }
        if let Some(g) = likelihood.gaussian() {
            if g.dim() != k {
                bail!(
                    "last-layer laplace: the Gaussian likelihood has {} target dimensions but `{head}.weight` has {k} rows",
                    g.dim()
                );
            }
        }
        let dt = d + bias.is_some() as usize;
        let w = weight.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let b = match bias {
            Some(b) => b.to_dtype(DType::F64)?.to_vec1::<f64>()?,
            None => Vec::new(),
        };
        let theta = DMatrix::from_fn(k, dt, |r, c| if c < d { w[r][c] } else { b[r] });
        let p = k * dt;
        let full = match hessian {
            LastLayerHessian::Full => DMatrix::zeros(p, p),
            LastLayerHessian::Kron => DMatrix::zeros(0, 0),
        };
        Ok(Self {
            hessian,
            features: d,
            bias: bias.is_some(),
            theta,
            noise,
            full,
            g: DMatrix::zeros(k, k),
            a: DMatrix::zeros(dt, dt),
            log_lik: 0.0,
            n: 0,
        })
    }

    fn classes(&self) -> usize {
        self.theta.nrows()
    }

    fn dt(&self) -> usize {
        self.theta.ncols()
    }

    /// Adds the examples of features `phi: [n, d]` and targets `y`.
    fn add(&mut self, phi: &Tensor, y: &Tensor) -> Result<()> {
        let phi_t = augmented(phi, self.features, self.bias)?;
        let n = phi_t.nrows();
        let k = self.classes();
        let dt = self.dt();
        let targets = read_targets(y, n, k, self.noise.is_none())?;
        let f = &phi_t * self.theta.transpose(); // n × K
        match (&targets, self.noise) {
            (Targets::Labels(labels), _) => {
                // Λₙ = diag(p) − ppᵀ, log p(y) = f_y − logsumexp(f)
                let mut lam = vec![DVector::<f64>::zeros(n); k * k];
                for r in 0..n {
                    let row: Vec<f64> = f.row(r).iter().copied().collect();
                    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = row.iter().map(|v| (v - m).exp()).sum();
                    let lse = m + z.ln();
                    self.log_lik += row[labels[r] as usize] - lse;
                    let p: Vec<f64> = row.iter().map(|v| (v - lse).exp()).collect();
                    for a in 0..k {
                        for b in 0..k {
                            lam[a * k + b][r] = if a == b { p[a] - p[a] * p[a] } else { -p[a] * p[b] };
                        }
                    }
                }
                match self.hessian {
                    LastLayerHessian::Full => {
                        for a in 0..k {
                            for b in a..k {
                                let mut scaled = phi_t.clone();
                                for (r, mut row) in scaled.row_iter_mut().enumerate() {
                                    row *= lam[a * k + b][r];
                                }
                                let block = phi_t.tr_mul(&scaled);
                                let mut v = self.full.view_mut((a * dt, b * dt), (dt, dt));
                                v += &block;
                                if a != b {
                                    let mut v = self.full.view_mut((b * dt, a * dt), (dt, dt));
                                    v += block.transpose();
                                }
                            }
                        }
                    }
                    LastLayerHessian::Kron => {
                        for a in 0..k {
                            for b in 0..k {
                                self.g[(a, b)] += lam[a * k + b].sum();
                            }
                        }
                        self.a += phi_t.tr_mul(&phi_t);
                    }
                }
            }
            (Targets::Values(v), Some(sigma)) => {
                let s2 = sigma * sigma;
                for r in 0..n {
                    for c in 0..k {
                        let e = v[r * k + c] - f[(r, c)];
                        self.log_lik -= HALF_LOG_2PI + sigma.ln() + e * e / (2.0 * s2);
                    }
                }
                let gram = phi_t.tr_mul(&phi_t);
                match self.hessian {
                    LastLayerHessian::Full => {
                        for a in 0..k {
                            let mut v = self.full.view_mut((a * dt, a * dt), (dt, dt));
                            v += &gram / s2;
                        }
                    }
                    LastLayerHessian::Kron => {
                        for a in 0..k {
                            self.g[(a, a)] += n as f64 / s2;
                        }
                        self.a += gram;
                    }
                }
            }
            (Targets::Values(_), None) => bail!("last-layer laplace: real targets for the categorical likelihood"),
        }
        self.n += n;
        Ok(())
    }

    fn finish(self, head: &str, weight: &Tensor) -> Result<LastLayerLaplace> {
        if self.n == 0 {
            bail!("last-layer laplace: the data has no examples");
        }
        let curvature = match self.hessian {
            LastLayerHessian::Full => {
                let (values, vectors) = eigen(self.full, "the last-layer Hessian")?;
                Curvature::Full { values, vectors }
            }
            LastLayerHessian::Kron => {
                let (g_values, g_vectors) = eigen(self.g, "the output Kronecker factor")?;
                let (a_values, a_vectors) = eigen(self.a / self.n as f64, "the input Kronecker factor")?;
                Curvature::Kron {
                    g_values,
                    g_vectors,
                    a_values,
                    a_vectors,
                }
            }
        };
        Ok(LastLayerLaplace {
            head: head.to_string(),
            classes: self.theta.nrows(),
            features: self.features,
            bias: self.bias,
            dtype: weight.dtype(),
            device: weight.device().clone(),
            theta: self.theta,
            curvature,
            prior_precision: 1.0,
            log_likelihood: self.log_lik,
            n_data: self.n,
            noise_std: self.noise,
        })
    }
}

/// The symmetric eigendecomposition of `m` (symmetrised first), eigenvalues below 0 set to 0;
/// refuses non-finite entries.
fn eigen(m: DMatrix<f64>, what: &str) -> Result<(DVector<f64>, DMatrix<f64>)> {
    if m.iter().any(|v| !v.is_finite()) {
        bail!("last-layer laplace: {what} has non-finite entries");
    }
    let sym = (&m + m.transpose()) * 0.5;
    let e = SymmetricEigen::new(sym);
    Ok((e.eigenvalues.map(|v| v.max(0.0)), e.eigenvectors))
}

/// `[φ 1]` (or `φ`) as an `n × d̃` f64 matrix; refuses `phi` that is not `[n, d]`.
fn augmented(phi: &Tensor, d: usize, bias: bool) -> Result<DMatrix<f64>> {
    let n = match phi.dims() {
        [n, dd] if *dd == d => *n,
        other => bail!(
            "last-layer laplace: features `phi` must be [N, {d}] (the columns of the head's weight), got {other:?}"
        ),
    };
    let v = phi.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    if v.iter().any(|x| !x.is_finite()) {
        bail!("last-layer laplace: features `phi` have non-finite entries");
    }
    let dt = d + bias as usize;
    Ok(DMatrix::from_fn(n, dt, |r, c| if c < d { v[r * d + c] } else { 1.0 }))
}

/// The targets of `n` examples: labels `[n]` below `k` (categorical), or `[n, k]` (`[n]` when
/// `k = 1`) reals.
fn read_targets(y: &Tensor, n: usize, k: usize, categorical: bool) -> Result<Targets> {
    if categorical {
        if y.dims() != [n] {
            bail!(
                "last-layer laplace: labels `y` must be [{n}] (one per feature row), got {:?}",
                y.dims()
            );
        }
        let labels = y.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        if let Some(l) = labels.iter().find(|&&l| l as usize >= k) {
            bail!("last-layer laplace: label {l} in `y` is not one of the {k} classes");
        }
        Ok(Targets::Labels(labels))
    } else {
        let ok = y.dims() == [n, k] || (k == 1 && y.dims() == [n]);
        if !ok {
            bail!("last-layer laplace: targets `y` must be [{n}, {k}], got {:?}", y.dims());
        }
        Ok(Targets::Values(
            y.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?,
        ))
    }
}

/// A row-major `[r, c]` f64 tensor of `m`.
fn matrix_tensor(m: &DMatrix<f64>) -> Result<Tensor> {
    Tensor::from_vec(m.transpose().as_slice().to_vec(), (m.nrows(), m.ncols()), &Device::Cpu)
}

/// The `[n]` f64 tensor of `v`.
fn vector_tensor(v: &DVector<f64>) -> Result<Tensor> {
    Tensor::from_vec(v.as_slice().to_vec(), v.len(), &Device::Cpu)
}

impl LastLayerLaplace {
    /// Fits the approximation to the head of `model` ([`Module::head`]) at its current weights
    /// (the MAP), with the features [`Module::features`] of one pass over `data` in evaluation
    /// mode (stochastic layers at their means); λ starts at 1. Refuses a model without a head,
    /// a store without `{head}.weight`, and a Gaussian likelihood whose noise is not fixed.
    pub fn fit(
        model: &dyn Module,
        store: &ParamStore,
        data: &mut dyn Batches,
        likelihood: &Likelihood,
        hessian: LastLayerHessian,
        rng: &mut SeededRng,
    ) -> Result<Self> {
        let Some(head) = model.head() else {
            bail!("last-layer laplace: the model exposes no head (`Module::head` is None)");
        };
        let Some(weight) = store.get(&format!("{head}.weight")) else {
            bail!("last-layer laplace: the store has no `{head}.weight` (the model's head `{head}`)");
        };
        let weight = weight.as_tensor().clone();
        let bias = store.get(&format!("{head}.bias")).map(|v| v.as_tensor().clone());
        let mut acc = Accumulator::new(&weight, bias.as_ref(), &head, likelihood, hessian)?;
        data.start_epoch(0, rng);
        for i in 0..data.num_batches() {
            let (x, y) = data.batch(i, rng)?;
            let mut ctx = Ctx::eval(rng, Sampling::Mean);
            let phi = model.features(&x, &mut ctx)?;
            acc.add(&phi, &y)?;
        }
        acc.finish(&head, &weight)
    }

    /// Fits the approximation from the features `phi: [N, d]` and targets `y` (labels `[N]` for
    /// the categorical likelihood, `[N, K]` reals for a Gaussian one) of the training data and
    /// the MAP head `head_weight: [K, d]`, `head_bias: [K]`; `head` names the parameters
    /// (`{head}.weight`, `{head}.bias`). The core of [`LastLayerLaplace::fit`]; λ starts at 1.
    pub fn fit_features(
        phi: &Tensor,
        y: &Tensor,
        head_weight: &Tensor,
        head_bias: Option<&Tensor>,
        head: &str,
        likelihood: &Likelihood,
        hessian: LastLayerHessian,
    ) -> Result<Self> {
        let mut acc = Accumulator::new(head_weight, head_bias, head, likelihood, hessian)?;
        acc.add(phi, y)?;
        acc.finish(head, head_weight)
    }

    /// Rebuilds the approximation from [`Posterior::tensors`] (see the [module docs](self) for
    /// the names); the error names a missing or mismatched tensor.
    pub fn from_tensors(t: &BTreeMap<String, Tensor>) -> Result<Self> {
        const WHAT: &str = "last-layer laplace";
        let heads: Vec<&str> = t
            .keys()
            .filter_map(|k| k.strip_prefix("mean/").and_then(|r| r.strip_suffix(".weight")))
            .collect();
        let head = match heads.as_slice() {
            [h] => h.to_string(),
            [] => bail!("{WHAT} file: no `mean/<head>.weight` tensor"),
            many => bail!("{WHAT} file: several heads {many:?}"),
        };
        let weight = &t[&format!("mean/{head}.weight")];
        let bias = t.get(&format!("mean/{head}.bias"));
        let get = |name: &str| -> Result<&Tensor> {
            t.get(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("{WHAT} file: missing tensor `{name}`")))
        };
        let read_vec = |name: &str, len: usize| -> Result<DVector<f64>> {
            let v = get(name)?;
            if v.dims() != [len] {
                bail!("{WHAT} file: `{name}` must be [{len}], got {:?}", v.dims());
            }
            let v = v.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            if v.iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
                bail!("{WHAT} file: `{name}` must be finite and ≥ 0");
            }
            Ok(DVector::from_vec(v))
        };
        let read_mat = |name: &str, len: usize| -> Result<DMatrix<f64>> {
            let m = get(name)?;
            if m.dims() != [len, len] {
                bail!("{WHAT} file: `{name}` must be [{len}, {len}], got {:?}", m.dims());
            }
            let v = m.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            Ok(DMatrix::from_row_slice(len, len, &v))
        };
        // the head's shapes and values, checked as a fit would
        let mut acc = Accumulator::new(weight, bias, &head, &Likelihood::Categorical, LastLayerHessian::Kron)?;
        let (k, dt) = (acc.classes(), acc.dt());
        let p = k * dt;
        let curvature = if t.contains_key("full/eigenvalues") {
            Curvature::Full {
                values: read_vec("full/eigenvalues", p)?,
                vectors: read_mat("full/eigenvectors", p)?,
            }
        } else if t.contains_key("kron/output_eigenvalues") {
            Curvature::Kron {
                g_values: read_vec("kron/output_eigenvalues", k)?,
                g_vectors: read_mat("kron/output_eigenvectors", k)?,
                a_values: read_vec("kron/input_eigenvalues", dt)?,
                a_vectors: read_mat("kron/input_eigenvectors", dt)?,
            }
        } else {
            bail!("{WHAT} file: neither `full/eigenvalues` nor `kron/output_eigenvalues`");
        };
        let prior_precision = read_scalar(t, "prior_precision", WHAT)?;
        check_prior_precision(prior_precision)?;
        let noise_std = match t.contains_key("noise_std") {
            true => Some(read_scalar(t, "noise_std", WHAT)?),
            false => None,
        };
        Ok(Self {
            head,
            classes: k,
            features: acc.features,
            bias: acc.bias,
            dtype: weight.dtype(),
            device: weight.device().clone(),
            theta: std::mem::replace(&mut acc.theta, DMatrix::zeros(0, 0)),
            curvature,
            prior_precision,
            log_likelihood: read_scalar(t, "log_likelihood", WHAT)?,
            n_data: read_scalar(t, "n_data", WHAT)? as usize,
            noise_std,
        })
    }

    /// The head's parameter path (`fc3`).
    pub fn head(&self) -> &str {
        &self.head
    }

    /// The Hessian structure.
    pub fn hessian(&self) -> LastLayerHessian {
        match self.curvature {
            Curvature::Full { .. } => LastLayerHessian::Full,
            Curvature::Kron { .. } => LastLayerHessian::Kron,
        }
    }

    /// `log p(D | θ*)`, summed over the training data.
    pub fn log_likelihood(&self) -> f64 {
        self.log_likelihood
    }

    /// The number of training examples N.
    pub fn n_data(&self) -> usize {
        self.n_data
    }

    /// The number of parameters `P = K · d̃`.
    pub fn num_params(&self) -> usize {
        self.classes * self.dt()
    }

    fn dt(&self) -> usize {
        self.features + self.bias as usize
    }

    /// The eigenvalues of the posterior precision `H + λI` (Kron: `g_k a_i + λ` at index
    /// `k·d̃ + i`) and, for Full, their eigenvectors.
    fn precision_eigenvalues(&self) -> DVector<f64> {
        let l = self.prior_precision;
        match &self.curvature {
            Curvature::Full { values, .. } => values.map(|e| e + l),
            Curvature::Kron { g_values, a_values, .. } => {
                let (k, dt) = (g_values.len(), a_values.len());
                DVector::from_fn(k * dt, |j, _| g_values[j / dt] * a_values[j % dt] + l)
            }
        }
    }

    /// The posterior covariance `(H + λI)⁻¹`, `[P, P]` f64, in the order `k·d̃ + i` of the
    /// [module docs](self) (dense: meant for small heads and tests).
    pub fn covariance(&self) -> Result<Tensor> {
        let w = self.precision_eigenvalues().map(|v| 1.0 / v);
        let q = match &self.curvature {
            Curvature::Full { vectors, .. } => vectors.clone(),
            Curvature::Kron {
                g_vectors, a_vectors, ..
            } => g_vectors.kronecker(a_vectors),
        };
        let mut scaled = q.clone();
        for (j, mut col) in scaled.column_iter_mut().enumerate() {
            col *= w[j];
        }
        matrix_tensor(&(scaled * q.transpose()))
    }

    /// The diagonal blocks `Σ_kk` (`d̃ × d̃`) of the posterior covariance, one per output.
    fn class_blocks(&self) -> Vec<DMatrix<f64>> {
        let l = self.prior_precision;
        let dt = self.dt();
        match &self.curvature {
            Curvature::Full { values, vectors } => (0..self.classes)
                .map(|k| {
                    let rows = vectors.rows(k * dt, dt);
                    let mut scaled = rows.clone_owned();
                    for (j, mut col) in scaled.column_iter_mut().enumerate() {
                        col /= values[j] + l;
                    }
                    scaled * rows.transpose()
                })
                .collect(),
            Curvature::Kron {
                g_values,
                g_vectors,
                a_values,
                a_vectors,
            } => (0..self.classes)
                .map(|k| {
                    let c = DVector::from_fn(dt, |j, _| {
                        (0..self.classes)
                            .map(|m| g_vectors[(k, m)].powi(2) / (g_values[m] * a_values[j] + l))
                            .sum::<f64>()
                    });
                    let mut scaled = a_vectors.clone();
                    for (j, mut col) in scaled.column_iter_mut().enumerate() {
                        col *= c[j];
                    }
                    scaled * a_vectors.transpose()
                })
                .collect(),
        }
    }

    /// The linearised (here exact) predictive of the logits at features `phi: [B, d]`: the
    /// means `W* φ + b*` and the marginal variances `σ²_k = φ̃ᵀ Σ_kk φ̃`, both `[B, K]` f64.
    pub fn logit_moments(&self, phi: &Tensor) -> Result<(Tensor, Tensor)> {
        let phi_t = augmented(phi, self.features, self.bias)?;
        let n = phi_t.nrows();
        let mean = &phi_t * self.theta.transpose();
        let mut var = DMatrix::<f64>::zeros(n, self.classes);
        for (k, block) in self.class_blocks().iter().enumerate() {
            let v = &phi_t * block;
            for r in 0..n {
                var[(r, k)] = v.row(r).dot(&phi_t.row(r));
            }
        }
        Ok((matrix_tensor(&mean)?, matrix_tensor(&var)?))
    }

    /// The probit predictive `softmax(κ ⊙ f)`, `κ_c = 1/√(1 + π σ²_c/8)` on the linearised
    /// logits (see the [module docs](self)), over every batch of `data` with the features of
    /// `model` in evaluation mode; the labels are the batches' targets. Categorical likelihood
    /// only.
    pub fn predict_probit(
        &self,
        model: &dyn Module,
        data: &mut dyn Batches,
        rng: &mut SeededRng,
    ) -> Result<Predictions> {
        if self.noise_std.is_some() {
            bail!("last-layer laplace: the probit predictive is for the categorical likelihood, not a Gaussian one");
        }
        data.start_epoch(0, rng);
        let (mut probs, mut labels) = (Vec::new(), Vec::new());
        for i in 0..data.num_batches() {
            let (x, y) = data.batch(i, rng)?;
            let mut ctx = Ctx::eval(rng, Sampling::Mean);
            let phi = model.features(&x, &mut ctx)?;
            let (mean, var) = self.logit_moments(&phi)?;
            let (mean, var) = (mean.to_vec2::<f64>()?, var.to_vec2::<f64>()?);
            for (f, v) in mean.iter().zip(&var) {
                probs.extend(probit(f, v).into_iter().map(|p| p as f32));
            }
            labels.extend(y.to_dtype(DType::U32)?.to_vec1::<u32>()?);
        }
        Ok(Predictions {
            probs,
            labels,
            classes: self.classes,
        })
    }

    /// `θ` in the order `k·d̃ + i` as the head's tensors.
    fn to_sample(&self, theta: &DMatrix<f64>) -> Result<ParamSample> {
        let (k, d) = (self.classes, self.features);
        let w: Vec<f64> = (0..k).flat_map(|r| (0..d).map(move |c| theta[(r, c)])).collect();
        let mut out = ParamSample::new();
        let wt = Tensor::from_vec(w, (k, d), &Device::Cpu)?
            .to_dtype(self.dtype)?
            .to_device(&self.device)?;
        out.insert(format!("{}.weight", self.head), wt);
        if self.bias {
            let b: Vec<f64> = (0..k).map(|r| theta[(r, d)]).collect();
            let bt = Tensor::from_vec(b, k, &Device::Cpu)?
                .to_dtype(self.dtype)?
                .to_device(&self.device)?;
            out.insert(format!("{}.bias", self.head), bt);
        }
        Ok(out)
    }

    /// The marginal posterior variances `Σ_ii`, as a `K × d̃` matrix.
    fn marginal_variances(&self) -> DMatrix<f64> {
        let l = self.prior_precision;
        let (k, dt) = (self.classes, self.dt());
        match &self.curvature {
            Curvature::Full { values, vectors } => {
                let var = DVector::from_fn(k * dt, |i, _| {
                    (0..k * dt)
                        .map(|j| vectors[(i, j)].powi(2) / (values[j] + l))
                        .sum::<f64>()
                });
                DMatrix::from_fn(k, dt, |r, c| var[r * dt + c])
            }
            Curvature::Kron {
                g_values,
                g_vectors,
                a_values,
                a_vectors,
            } => {
                let m = DMatrix::from_fn(k, dt, |r, c| 1.0 / (g_values[r] * a_values[c] + l));
                g_vectors.map(|v| v * v) * m * a_vectors.map(|v| v * v).transpose()
            }
        }
    }
}

/// `softmax(κ ⊙ f)`, `κ_c = 1/√(1 + π σ²_c/8)`, of one example's logit means `f` and variances
/// `v`.
pub(super) fn probit(f: &[f64], v: &[f64]) -> Vec<f64> {
    let z: Vec<f64> = f
        .iter()
        .zip(v)
        .map(|(f, v)| f / (1.0 + std::f64::consts::PI * v / 8.0).sqrt())
        .collect();
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

impl Posterior for LastLayerLaplace {
    fn kind(&self) -> &str {
        "laplace-last-layer"
    }

    fn mean(&self) -> Result<ParamSample> {
        self.to_sample(&self.theta)
    }

    fn sample(&self, rng: &mut SeededRng) -> Result<ParamSample> {
        let (k, dt) = (self.classes, self.dt());
        let z = rng.normal_vec(k * dt);
        let l = self.prior_precision;
        let delta = match &self.curvature {
            Curvature::Full { values, vectors } => {
                let s = DVector::from_fn(k * dt, |j, _| z[j] as f64 / (values[j] + l).sqrt());
                let d = vectors * s;
                DMatrix::from_fn(k, dt, |r, c| d[r * dt + c])
            }
            Curvature::Kron {
                g_values,
                g_vectors,
                a_values,
                a_vectors,
            } => {
                let s = DMatrix::from_fn(k, dt, |r, c| {
                    z[r * dt + c] as f64 / (g_values[r] * a_values[c] + l).sqrt()
                });
                g_vectors * s * a_vectors.transpose()
            }
        };
        self.to_sample(&(&self.theta + delta))
    }

    fn stats(&self) -> Result<Vec<PosteriorStats>> {
        let means = self.mean()?;
        let stds = self.to_sample(&self.marginal_variances().map(f64::sqrt))?;
        Ok(means
            .into_iter()
            .zip(stds)
            .map(|((name, mean), (_, std))| PosteriorStats {
                name,
                mean,
                std: Some(std),
                log_alpha: None,
                inclusion: None,
            })
            .collect())
    }

    fn tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (k, t) in self.mean()? {
            out.insert(format!("mean/{k}"), t);
        }
        match &self.curvature {
            Curvature::Full { values, vectors } => {
                out.insert("full/eigenvalues".into(), vector_tensor(values)?);
                out.insert("full/eigenvectors".into(), matrix_tensor(vectors)?);
            }
            Curvature::Kron {
                g_values,
                g_vectors,
                a_values,
                a_vectors,
            } => {
                out.insert("kron/output_eigenvalues".into(), vector_tensor(g_values)?);
                out.insert("kron/output_eigenvectors".into(), matrix_tensor(g_vectors)?);
                out.insert("kron/input_eigenvalues".into(), vector_tensor(a_values)?);
                out.insert("kron/input_eigenvectors".into(), matrix_tensor(a_vectors)?);
            }
        }
        out.insert("prior_precision".into(), scalar_tensor(self.prior_precision)?);
        out.insert("log_likelihood".into(), scalar_tensor(self.log_likelihood)?);
        out.insert("n_data".into(), scalar_tensor(self.n_data as f64)?);
        if let Some(s) = self.noise_std {
            out.insert("noise_std".into(), scalar_tensor(s)?);
        }
        Ok(out)
    }
}

impl Laplace for LastLayerLaplace {
    fn prior_precision(&self) -> f64 {
        self.prior_precision
    }

    fn set_prior_precision(&mut self, lambda: f64) -> Result<()> {
        check_prior_precision(lambda)?;
        self.prior_precision = lambda;
        Ok(())
    }

    fn log_marginal_likelihood(&self, lambda: f64) -> Result<f64> {
        check_prior_precision(lambda)?;
        let log_det: f64 = match &self.curvature {
            Curvature::Full { values, .. } => values.iter().map(|e| (e + lambda).ln()).sum(),
            Curvature::Kron { g_values, a_values, .. } => g_values
                .iter()
                .map(|g| a_values.iter().map(|a| (g * a + lambda).ln()).sum::<f64>())
                .sum(),
        };
        let theta_sq = self.theta.norm_squared();
        Ok(laplace_evidence(
            self.log_likelihood,
            log_det,
            self.num_params(),
            lambda,
            theta_sq,
        ))
    }

    fn noise_std(&self) -> Option<f64> {
        self.noise_std
    }
}
