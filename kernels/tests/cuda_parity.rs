//! CPU/CUDA parity of every kernel (built only with `--features cuda`; needs an NVIDIA GPU).
//!
//! On the CPU the kernels are secateur's custom ops; on CUDA they fall back to candle's own ops
//! (`Tensor::conv2d`, reshaped reductions, composed batch norm, ...). Both paths must compute the
//! same function, to first and second order: for each kernel `f` and an objective
//! `L(θ) = Σ c ⊙ f(θ)²` (fixed random `c`), this compares across devices, in f64,
//! the value `L`, the gradient `∇L` and the Hessian-vector product `∇(∇L · v)` by double
//! backpropagation (`CANDLE_GRAD_DO_NOT_DETACH=1`), as relative errors `‖cuda − cpu‖ / ‖cpu‖`.
//! The CPU path itself is checked against finite differences in `conv.rs`, `lrt.rs` and
//! `second_order.rs`, so agreement here carries those checks over to CUDA. One f32 forward and
//! gradient per kernel family checks the single-precision path too.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::*;
use secateur_kernels::activation::{add_relu, relu};
use secateur_kernels::conv::{conv2d_bias, conv2d_with, ConvParams};
use secateur_kernels::inner::inner;
use secateur_kernels::lrt::{lrt_conv2d, lrt_conv2d_fused, lrt_linear};
use secateur_kernels::lrt_sample::lrt_sample;
use secateur_kernels::matmul::{matmul, matmul_bt};
use secateur_kernels::norm::batch_norm_train;
use secateur_kernels::pool::max_pool2d;

/// The kernel under test: tensors (already on the device) to one output tensor.
type Kernel<'a> = &'a dyn Fn(&[Tensor]) -> Result<Tensor>;

fn cuda() -> Device {
    Device::new_cuda(0).expect("these tests need an NVIDIA GPU (built with --features cuda)")
}

/// `(L, ∇L, ∇(∇L · v))` of `L = Σ c ⊙ f(θ)²` on `dev`, returned on the CPU.
fn first_and_second_order(f: Kernel, theta: &[Tensor], dev: &Device, seed: u64) -> (Tensor, Vec<Tensor>, Vec<Tensor>) {
    assert!(
        secateur_kernels::double_backprop::requested(),
        "internal: a parity test runs without double backpropagation"
    );
    let vars: Vec<Var> = theta
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(dev).unwrap()).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts).unwrap();
    let c = rand_t(out.dims(), seed, out.dtype()).unwrap().to_device(dev).unwrap();
    let loss = (out.sqr().unwrap() * c).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let mut gv = Tensor::zeros((), loss.dtype(), dev).unwrap();
    for (i, var) in vars.iter().enumerate() {
        let gi = g.get(var).expect("first-order gradient");
        let vi = rand_t(var.dims(), seed + 100 + i as u64, var.dtype())
            .unwrap()
            .to_device(dev)
            .unwrap();
        gv = (gv + (gi * vi).unwrap().sum_all().unwrap()).unwrap();
    }
    let h = gv.backward().unwrap();
    let grads = vars
        .iter()
        .map(|v| g.get(v).unwrap().to_device(&Device::Cpu).unwrap())
        .collect();
    let hvps = vars
        .iter()
        .map(|v| match h.get(v) {
            Some(t) => t.to_device(&Device::Cpu).unwrap(),
            None => v.as_tensor().zeros_like().unwrap().to_device(&Device::Cpu).unwrap(),
        })
        .collect();
    (loss.to_device(&Device::Cpu).unwrap(), grads, hvps)
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let num = (&a - &b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let den = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Compares the CPU fast path with the CUDA path of `f` at `theta` (first and second order).
fn parity(name: &str, f: Kernel, theta: &[Tensor], tol: f64, second_order: bool) {
    let cpu = first_and_second_order(f, theta, &Device::Cpu, 7);
    let gpu = first_and_second_order(f, theta, &cuda(), 7);
    let e = rel_err(&gpu.0, &cpu.0);
    assert!(e <= tol, "{name}: loss differs across devices by {e:e}");
    for (i, (a, b)) in gpu.1.iter().zip(&cpu.1).enumerate() {
        let e = rel_err(a, b);
        assert!(e <= tol, "{name}: gradient {i} differs across devices by {e:e}");
    }
    if second_order {
        for (i, (a, b)) in gpu.2.iter().zip(&cpu.2).enumerate() {
            let e = rel_err(a, b);
            assert!(
                e <= tol,
                "{name}: Hessian-vector product {i} differs across devices by {e:e}"
            );
        }
    }
}

#[test]
fn convolution_matches_across_devices() {
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(
        module_path!(),
        "::convolution_matches_across_devices"
    )) {
        return;
    }
    for (k, c) in cases().into_iter().enumerate() {
        let p: ConvParams = c.p;
        let x = rand_t(&c.x, 10 + k as u64, DType::F64).unwrap();
        let w = rand_t(&c.w, 20 + k as u64, DType::F64).unwrap();
        let f = move |t: &[Tensor]| conv2d_with(&t[0], &t[1], p);
        parity(c.name, &f, &[x.clone(), w.clone()], 1e-10, true);
        let (x32, w32) = (x.to_dtype(DType::F32).unwrap(), w.to_dtype(DType::F32).unwrap());
        parity(&format!("{} (f32)", c.name), &f, &[x32, w32], 1e-4, false);
    }
}

#[test]
fn local_reparameterisation_matches_across_devices() {
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(
        module_path!(),
        "::local_reparameterisation_matches_across_devices"
    )) {
        return;
    }
    let p = ConvParams::new(1, 2, 1, 1);
    let x = rand_t(&[3, 2, 9, 8], 1, DType::F64).unwrap();
    let mu = rand_t(&[4, 2, 5, 5], 2, DType::F64).unwrap();
    let s2 = rand_t(&[4, 2, 5, 5], 3, DType::F64).unwrap().abs().unwrap();
    let both = |(m, v): (Tensor, Tensor)| (m + v.sqrt()?)?.sum_all();
    let tracked = move |t: &[Tensor]| both(lrt_conv2d(&t[0], &t[1], &t[2], p)?);
    let fused = move |t: &[Tensor]| both(lrt_conv2d_fused(&t[0], &t[1], &t[2], p)?);
    let theta = [x, mu, s2];
    parity("lrt conv2d", &tracked, &theta, 1e-10, true);
    parity("lrt conv2d fused", &fused, &theta, 1e-10, true);
    let xl = rand_t(&[5, 7], 4, DType::F64).unwrap();
    let ml = rand_t(&[3, 7], 5, DType::F64).unwrap();
    let sl = rand_t(&[3, 7], 6, DType::F64).unwrap().abs().unwrap();
    let lin = |t: &[Tensor]| {
        let (m, v) = lrt_linear(&t[0], &t[1], &t[2])?;
        m + v.sqrt()?
    };
    parity("lrt linear", &lin, &[xl, ml, sl], 1e-10, true);
}

#[test]
fn pooling_matches_across_devices() {
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(
        module_path!(),
        "::pooling_matches_across_devices"
    )) {
        return;
    }
    // Odd sides: the last row and column are dropped, as in PyTorch.
    let x = rand_t(&[2, 3, 9, 7], 8, DType::F64).unwrap();
    let f = |t: &[Tensor]| max_pool2d(&(&t[0] * &t[0])?, 2);
    parity("max pool 2", &f, &[x.clone()], 1e-12, true);
    parity("max pool 2 (f32)", &f, &[x.to_dtype(DType::F32).unwrap()], 1e-5, false);
}

#[test]
fn batch_norm_matches_across_devices() {
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(
        module_path!(),
        "::batch_norm_matches_across_devices"
    )) {
        return;
    }
    let x = rand_t(&[4, 3, 5, 6], 9, DType::F64).unwrap();
    let w = (rand_t(&[3], 10, DType::F64).unwrap() + 1.5).unwrap();
    let b = rand_t(&[3], 11, DType::F64).unwrap();
    for relu_after in [false, true] {
        let f = move |t: &[Tensor]| {
            let o = batch_norm_train(&t[0], &t[1], &t[2], 1e-5, relu_after)?;
            // The batch statistics are part of the output too.
            o.y.broadcast_add(&(o.mean.sum_all()? + o.var.sum_all()?)?)
        };
        let name = format!("batch norm (relu {relu_after})");
        parity(&name, &f, &[x.clone(), w.clone(), b.clone()], 1e-9, true);
        let t32: Vec<Tensor> = [&x, &w, &b].iter().map(|t| t.to_dtype(DType::F32).unwrap()).collect();
        parity(&format!("{name} (f32)"), &f, &t32, 1e-4, false);
    }
}

#[test]
fn activations_match_across_devices() {
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(
        module_path!(),
        "::activations_match_across_devices"
    )) {
        return;
    }
    let a = rand_t(&[3, 4, 5], 12, DType::F64).unwrap();
    let b = rand_t(&[3, 4, 5], 13, DType::F64).unwrap();
    // x·|x| keeps a nonzero second derivative through the ReLU.
    let r = |t: &[Tensor]| relu(&(&t[0] * t[0].abs()?)?);
    let ar = |t: &[Tensor]| add_relu(&(&t[0] * t[0].abs()?)?, &t[1]);
    parity("relu", &r, &[a.clone()], 1e-12, true);
    parity("add relu", &ar, &[a, b], 1e-12, true);
}

#[test]
fn convolution_with_bias_matches_across_devices() {
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(
        module_path!(),
        "::convolution_with_bias_matches_across_devices"
    )) {
        return;
    }
    for (k, c) in cases().into_iter().enumerate() {
        let p: ConvParams = c.p;
        let x = rand_t(&c.x, 30 + k as u64, DType::F64).unwrap();
        let w = rand_t(&c.w, 40 + k as u64, DType::F64).unwrap();
        let b = rand_t(&[c.w[0]], 50 + k as u64, DType::F64).unwrap();
        let f = move |t: &[Tensor]| conv2d_bias(&t[0], &t[1], &t[2], p);
        parity(&format!("{} with bias", c.name), &f, &[x, w, b], 1e-10, true);
    }
}

#[test]
fn matrix_products_match_across_devices() {
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(
        module_path!(),
        "::matrix_products_match_across_devices"
    )) {
        return;
    }
    let a = rand_t(&[5, 7], 60, DType::F64).unwrap();
    let b = rand_t(&[7, 3], 61, DType::F64).unwrap();
    let bt = rand_t(&[3, 7], 62, DType::F64).unwrap();
    let mm = |t: &[Tensor]| matmul(&t[0], &t[1]);
    let mbt = |t: &[Tensor]| matmul_bt(&t[0], &t[1]);
    parity("matmul", &mm, &[a.clone(), b], 1e-12, true);
    parity("matmul Bᵀ", &mbt, &[a.clone(), bt.clone()], 1e-12, true);
    let t32: Vec<Tensor> = [&a, &bt].iter().map(|t| t.to_dtype(DType::F32).unwrap()).collect();
    parity("matmul Bᵀ (f32)", &mbt, &t32, 1e-5, false);
    let ip = |t: &[Tensor]| inner(&(&t[0] * &t[0])?, &t[1]);
    parity("inner", &ip, &[a.clone(), a.sin().unwrap()], 1e-12, true);
}

#[test]
fn local_reparameterisation_draw_matches_across_devices() {
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(
        module_path!(),
        "::local_reparameterisation_draw_matches_across_devices"
    )) {
        return;
    }
    let m = rand_t(&[3, 4, 5], 70, DType::F64).unwrap();
    let v = (rand_t(&[3, 4, 5], 71, DType::F64).unwrap().sqr().unwrap() + 0.5).unwrap();
    let e = rand_t(&[3, 4, 5], 72, DType::F64).unwrap();
    let f = |t: &[Tensor]| lrt_sample(&t[0], &t[1], &t[2], 1e-3);
    parity("lrt sample", &f, &[m, v, e], 1e-12, true);
}
