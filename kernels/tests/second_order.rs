//! Second-order tests: Hessian-vector products by double backpropagation through the custom ops
//! (`CANDLE_GRAD_DO_NOT_DETACH=1`), compared with central differences of the gradient,
//! `Hv ≈ (∇f(θ + εv) − ∇f(θ − εv)) / 2ε`, in f64. Each test runs in a child process of this
//! binary started with the variable set (`secateur_kernels::double_backprop::run_test_in_child`).

mod common;

use candle_core::{DType, Result, Tensor, Var};
use common::*;
use secateur_kernels::conv::{conv2d_input_grad, conv2d_weight_grad, conv2d_with};

type Objective<'a> = &'a dyn Fn(&[Tensor]) -> Result<Tensor>;

fn gradient(f: Objective, theta: &[Tensor]) -> Vec<Tensor> {
    let vars: Vec<Var> = theta.iter().map(var).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let g = f(&ts).unwrap().backward().unwrap();
    vars.iter().map(|v| g.get(v).unwrap().detach()).collect()
}

/// Hessian-vector product of `f` at `theta` along `v`, by double backpropagation.
fn hvp(f: Objective, theta: &[Tensor], v: &[Tensor]) -> Vec<Tensor> {
    let vars: Vec<Var> = theta.iter().map(var).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let g = f(&ts).unwrap().backward().unwrap();
    // ⟨g, v⟩ in the dtype of θ
    let mut gv = Tensor::zeros((), theta[0].dtype(), &candle_core::Device::Cpu).unwrap();
    for (var, vi) in vars.iter().zip(v) {
        let gi = g.get(var).expect("first-order gradient");
        gv = (gv + gi.mul(vi).unwrap().sum_all().unwrap()).unwrap();
    }
    let h = gv.backward().unwrap();
    vars.iter()
        .zip(theta)
        .map(|(var, t)| match h.get(var) {
            Some(t) => t.clone(),
            None => t.zeros_like().unwrap(),
        })
        .collect()
}

/// Checks double backprop against central differences of the gradient.
fn check_hvp(name: &str, f: Objective, theta: &[Tensor], seed: u64) {
    let v: Vec<Tensor> = theta
        .iter()
        .enumerate()
        .map(|(i, t)| rand_t(t.dims(), seed + i as u64, DType::F64).unwrap())
        .collect();
    let hv = hvp(f, theta, &v);
    let eps = 1e-5;
    let shift = |s: f64| -> Vec<Tensor> {
        theta
            .iter()
            .zip(&v)
            .map(|(t, vi)| (t + (vi * (s * eps)).unwrap()).unwrap())
            .collect()
    };
    let gp = gradient(f, &shift(1.0));
    let gm = gradient(f, &shift(-1.0));
    for (i, ((hvi, p), m)) in hv.iter().zip(&gp).zip(&gm).enumerate() {
        let fd = ((p - m).unwrap() / (2.0 * eps)).unwrap();
        assert!(max_abs(&fd).unwrap() > 1e-8, "{name}: degenerate Hessian block {i}");
        assert_close(hvi, &fd, 1e-6, &format!("{name}: Hv block {i}"));
    }
}

#[test]
fn conv_hessian_vector_products() {
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(module_path!(), "::conv_hessian_vector_products"))
    {
        return;
    }
    for (i, c) in cases().iter().chain(rect_cases().iter()).enumerate() {
        let p = c.p;
        let x = rand_t(&c.x, 300 + i as u64, DType::F64).unwrap();
        let w = rand_t(&c.w, 400 + i as u64, DType::F64).unwrap();
        let y = conv2d_with(&x, &w, p).unwrap();
        let r = rand_t(y.dims(), 500, DType::F64).unwrap();
        let dy = rand_t(y.dims(), 501, DType::F64).unwrap();
        let hw = (c.x[2], c.x[3]);
        let khw = (c.w[2], c.w[3]);
        let rx = rand_t(&c.x, 502, DType::F64).unwrap();
        let rw = rand_t(&c.w, 503, DType::F64).unwrap();

        // f(x, w) = Σ R ⊙ tanh(conv(x, w))
        let f_conv = |t: &[Tensor]| conv2d_with(&t[0], &t[1], p)?.tanh()?.mul(&r)?.sum_all();
        check_hvp(&format!("{} conv", c.name), &f_conv, &[x.clone(), w.clone()], 600);

        // f(dy, w) = Σ R ⊙ tanh(InputGrad(dy, w))
        let f_in = |t: &[Tensor]| conv2d_input_grad(&t[0], &t[1], p, hw)?.tanh()?.mul(&rx)?.sum_all();
        check_hvp(&format!("{} input grad", c.name), &f_in, &[dy.clone(), w.clone()], 700);

        // f(x, dy) = Σ R ⊙ tanh(WeightGrad(x, dy))
        let f_w = |t: &[Tensor]| conv2d_weight_grad(&t[0], &t[1], p, khw)?.tanh()?.mul(&rw)?.sum_all();
        check_hvp(&format!("{} weight grad", c.name), &f_w, &[x.clone(), dy.clone()], 800);
    }
}

/// A two-layer conv net: Hv through conv → tanh → conv, w.r.t. both kernels and the input.
#[test]
fn two_layer_hessian_vector_product() {
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(
        module_path!(),
        "::two_layer_hessian_vector_product"
    )) {
        return;
    }
    let p1 = secateur_kernels::conv::ConvParams::new(1, 1, 1, 1);
    let p2 = secateur_kernels::conv::ConvParams::new(2, 0, 1, 1);
    let x = rand_t(&[2, 3, 9, 11], 1, DType::F64).unwrap();
    let w1 = rand_t(&[4, 3, 3, 3], 2, DType::F64).unwrap();
    let w2 = rand_t(&[2, 4, 3, 3], 3, DType::F64).unwrap();
    let f = |t: &[Tensor]| {
        let h = conv2d_with(&t[0], &t[1], p1)?.tanh()?;
        conv2d_with(&h, &t[2], p2)?.sqr()?.sum_all()
    };
    check_hvp("two-layer", &f, &[x, w1, w2], 10);
}

/// Hv through the fused local-reparameterisation op (and its fused weight-gradient op).
#[test]
fn lrt_hessian_vector_products() {
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(module_path!(), "::lrt_hessian_vector_products")) {
        return;
    }
    for (i, c) in cases().iter().chain(rect_cases().iter()).enumerate() {
        let p = c.p;
        let x = rand_t(&c.x, 900 + i as u64, DType::F64).unwrap();
        let mu = rand_t(&c.w, 910 + i as u64, DType::F64).unwrap();
        let s2 = rand_t(&c.w, 920 + i as u64, DType::F64).unwrap().sqr().unwrap();
        let y = conv2d_with(&x, &mu, p).unwrap();
        let rm = rand_t(y.dims(), 930, DType::F64).unwrap();
        let rv = rand_t(y.dims(), 931, DType::F64).unwrap();
        let f = |t: &[Tensor]| {
            let (m, v) = secateur_kernels::lrt::lrt_conv2d_fused(&t[0], &t[1], &t[2], p)?;
            m.tanh()?.mul(&rm)?.sum_all()? + v.sin()?.mul(&rv)?.sum_all()?
        };
        check_hvp(&format!("{} lrt", c.name), &f, &[x, mu, s2], 940);
    }
}

/// Hv through the matrix-product op: a two-layer perceptron `tanh(X W1) W2` with the data `X`
/// held constant (the operand whose gradient [`matmul`] skips), w.r.t. both weights, and the same
/// with `X` as a parameter too. Also the double backprop against candle's matmul.
#[test]
fn matmul_hessian_vector_products() {
    use secateur_kernels::matmul::matmul;
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(
        module_path!(),
        "::matmul_hessian_vector_products"
    )) {
        return;
    }
    let x = rand_t(&[5, 4], 40, DType::F64).unwrap();
    let w1 = rand_t(&[4, 6], 41, DType::F64).unwrap();
    let w2 = rand_t(&[6, 3], 42, DType::F64).unwrap();
    let r = rand_t(&[5, 3], 43, DType::F64).unwrap();
    let f_const = |t: &[Tensor]| matmul(&matmul(&x, &t[0])?.tanh()?, &t[1])?.sin()?.mul(&r)?.sum_all();
    check_hvp("matmul, constant data", &f_const, &[w1.clone(), w2.clone()], 44);
    let f_all = |t: &[Tensor]| matmul(&matmul(&t[0], &t[1])?.tanh()?, &t[2])?.sin()?.mul(&r)?.sum_all();
    check_hvp(
        "matmul, every operand",
        &f_all,
        &[x.clone(), w1.clone(), w2.clone()],
        45,
    );
    let f_candle = |t: &[Tensor]| x.matmul(&t[0])?.tanh()?.matmul(&t[1])?.sin()?.mul(&r)?.sum_all();
    let v = [
        rand_t(&[4, 6], 46, DType::F64).unwrap(),
        rand_t(&[6, 3], 47, DType::F64).unwrap(),
    ];
    let ours = hvp(&f_const, &[w1.clone(), w2.clone()], &v);
    let theirs = hvp(&f_candle, &[w1, w2], &v);
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_close(a, b, 1e-12, &format!("matmul vs candle: Hv block {i}"));
    }
}

/// Hv through the fused convolution with bias, w.r.t. input, kernel and bias.
#[test]
fn conv_bias_hessian_vector_products() {
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(
        module_path!(),
        "::conv_bias_hessian_vector_products"
    )) {
        return;
    }
    for (i, c) in cases().iter().chain(rect_cases().iter()).enumerate() {
        let p = c.p;
        let x = rand_t(&c.x, 1300 + i as u64, DType::F64).unwrap();
        let w = rand_t(&c.w, 1310 + i as u64, DType::F64).unwrap();
        let b = rand_t(&[c.w[0]], 1320 + i as u64, DType::F64).unwrap();
        let y = conv2d_with(&x, &w, p).unwrap();
        let r = rand_t(y.dims(), 1330, DType::F64).unwrap();
        let f = |t: &[Tensor]| {
            secateur_kernels::conv::conv2d_bias(&t[0], &t[1], &t[2], p)?
                .tanh()?
                .mul(&r)?
                .sum_all()
        };
        check_hvp(&format!("{} conv+bias", c.name), &f, &[x, w, b], 1340);
    }
}

/// Hv through the local-reparameterisation draw `m + √(v + c) ⊙ ε` (w.r.t. `m`, `v` and `ε`),
/// which also runs the second derivatives of its variance-gradient op.
#[test]
fn lrt_sample_hessian_vector_products() {
    use secateur_kernels::lrt_sample::lrt_sample;
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(
        module_path!(),
        "::lrt_sample_hessian_vector_products"
    )) {
        return;
    }
    let m = rand_t(&[3, 4, 5], 1400, DType::F64).unwrap();
    let v = (rand_t(&[3, 4, 5], 1401, DType::F64).unwrap().sqr().unwrap() + 0.5).unwrap();
    let e = rand_t(&[3, 4, 5], 1402, DType::F64).unwrap();
    let r = rand_t(&[3, 4, 5], 1403, DType::F64).unwrap();
    let f = |t: &[Tensor]| lrt_sample(&t[0], &t[1], &t[2], 1e-3)?.tanh()?.mul(&r)?.sum_all();
    check_hvp("lrt sample", &f, &[m, v, e], 1404);
}

/// Hv in f32 against Hv in f64 on the same inputs. On CPUs with AVX-512F the f32 stride-1
/// convolutions and both their gradients run on the direct path (no im2col), the f64 ones on
/// im2col + gemm, so this checks that the direct ops compose under double backpropagation; the
/// f64 side is itself checked against finite differences above.
#[test]
fn f32_hessian_vector_products_match_f64() {
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(
        module_path!(),
        "::f32_hessian_vector_products_match_f64"
    )) {
        return;
    }
    let wide = |ts: &[Tensor]| -> Vec<Tensor> { ts.iter().map(|t| t.to_dtype(DType::F64).unwrap()).collect() };
    let narrow = |t: Tensor| t.to_dtype(DType::F32).unwrap();
    for (i, c) in cases().iter().chain(rect_cases().iter()).enumerate() {
        let p = c.p;
        // f32-representable inputs, so that both sides see the same numbers
        let x = narrow(rand_t(&c.x, 1500 + i as u64, DType::F64).unwrap());
        let w = narrow(rand_t(&c.w, 1510 + i as u64, DType::F64).unwrap());
        let b = narrow(rand_t(&[c.w[0]], 1520 + i as u64, DType::F64).unwrap());
        let y = conv2d_with(&x, &w, p).unwrap();
        let r = narrow(rand_t(y.dims(), 1530, DType::F64).unwrap());
        let theta32 = [x, w, b];
        let v32: Vec<Tensor> = theta32
            .iter()
            .enumerate()
            .map(|(k, t)| narrow(rand_t(t.dims(), 1540 + k as u64, DType::F64).unwrap()))
            .collect();
        // f(x, w, b) = Σ R ⊙ tanh(conv(x, w) + b), R in the dtype of the inputs
        let f = |t: &[Tensor]| {
            secateur_kernels::conv::conv2d_bias(&t[0], &t[1], &t[2], p)?
                .tanh()?
                .mul(&r.to_dtype(t[0].dtype())?)?
                .sum_all()
        };
        let h32 = wide(&hvp(&f, &theta32, &v32));
        let h64 = hvp(&f, &wide(&theta32), &wide(&v32));
        for (k, (a, b)) in h32.iter().zip(&h64).enumerate() {
            let scale = max_abs(b).unwrap().max(1.0);
            let err = max_abs_diff(a, b).unwrap() / scale;
            assert!(max_abs(b).unwrap() > 1e-6, "{}: degenerate Hessian block {k}", c.name);
            // f32 rounds each of the forward and two backward passes at 2⁻²⁴ ≈ 6e-8 relative
            // over sums of at most a few hundred terms; 1e-4 leaves that room, while a wrong
            // tap of the direct kernels gives errors of order 1 (1.25 when the input
            // gradient's kernel flip was broken on purpose)
            assert!(
                err < 1e-4,
                "{}: f32 Hv block {k} differs from f64 by {err:.2e} (relative)",
                c.name
            );
        }
    }
}
