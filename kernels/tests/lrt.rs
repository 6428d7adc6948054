//! Tests of the fused local-reparameterisation ops: outputs against two separate reference
//! convolutions, gradients against autograd of the unfused composition and finite differences,
//! bit-identical repeats, and the linear version.

mod common;

use candle_core::{DType, Tensor};
use common::*;
use secateur_kernels::conv::{conv2d_with, ConvParams};
use secateur_kernels::lrt::{lrt_conv2d, lrt_conv2d_fused, lrt_linear};

fn inputs(c: &Case, seed: u64, dt: DType) -> (Tensor, Tensor, Tensor) {
    let x = rand_t(&c.x, seed, dt).unwrap();
    let mu = rand_t(&c.w, seed + 1, dt).unwrap();
    let s2 = rand_t(&c.w, seed + 2, dt).unwrap().sqr().unwrap();
    (x, mu, s2)
}

#[test]
fn mean_and_variance_match_two_reference_convs() {
    for (i, c) in cases().iter().enumerate() {
        for dt in [DType::F64, DType::F32] {
            let (x, mu, s2) = inputs(c, 10 * i as u64, dt);
            let (m, v) = lrt_conv2d(&x, &mu, &s2, c.p).unwrap();
            let (mf, vf) = lrt_conv2d_fused(&x, &mu, &s2, c.p).unwrap();
            assert_eq!(
                mf.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap(),
                m.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
            );
            assert_eq!(
                vf.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap(),
                v.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
            );
            let p = c.p;
            let m_ref = x.conv2d(&mu, p.padding.0, p.stride.0, p.dilation.0, p.groups).unwrap();
            let v_ref = x
                .sqr()
                .unwrap()
                .conv2d(&s2, p.padding.0, p.stride.0, p.dilation.0, p.groups)
                .unwrap();
            let tol = if dt == DType::F64 { 1e-12 } else { 1e-5 };
            assert!(m.is_contiguous() && v.is_contiguous());
            assert_close(&m, &m_ref, tol, &format!("{} {dt:?} mean", c.name));
            assert_close(&v, &v_ref, tol, &format!("{} {dt:?} var", c.name));
        }
    }
    for (i, c) in rect_cases().iter().enumerate() {
        let (x, mu, s2) = inputs(c, 90 + i as u64, DType::F64);
        let (m, v) = lrt_conv2d(&x, &mu, &s2, c.p).unwrap();
        assert_close(&m, &naive_conv(&x, &mu, c.p).unwrap(), 1e-12, c.name);
        assert_close(&v, &naive_conv(&x.sqr().unwrap(), &s2, c.p).unwrap(), 1e-12, c.name);
    }
}

/// Gradients of `Σ R_m ⊙ tanh(mean) + Σ R_v ⊙ sqrt(var + 1)` against autograd of the unfused
/// composition `(conv(x, μ), conv(x², s²))`.
#[test]
fn gradients_match_unfused_composition() {
    for (i, c) in cases().iter().chain(rect_cases().iter()).enumerate() {
        for dt in [DType::F64, DType::F32] {
            let (x, mu, s2) = inputs(c, 20 * i as u64, dt);
            let y = conv2d_with(&x, &mu, c.p).unwrap();
            let rm = rand_t(y.dims(), 3, dt).unwrap();
            let rv = rand_t(y.dims(), 4, dt).unwrap();
            let loss = |m: Tensor, v: Tensor| {
                (m.tanh().unwrap().mul(&rm).unwrap().sum_all().unwrap()
                    + (v + 1.0).unwrap().sqrt().unwrap().mul(&rv).unwrap().sum_all().unwrap())
                .unwrap()
            };
            let (xv, mv, sv) = (var(&x), var(&mu), var(&s2));
            let (m, v) = lrt_conv2d_fused(xv.as_tensor(), mv.as_tensor(), sv.as_tensor(), c.p).unwrap();
            let g = loss(m, v).backward().unwrap();
            let (xr, mr, sr) = (var(&x), var(&mu), var(&s2));
            let m = conv2d_with(xr.as_tensor(), mr.as_tensor(), c.p).unwrap();
            let v = conv2d_with(&xr.as_tensor().sqr().unwrap(), sr.as_tensor(), c.p).unwrap();
            let gr = loss(m, v).backward().unwrap();
            let tol = if dt == DType::F64 { 1e-11 } else { 1e-4 };
            for (a, b, what) in [(&xv, &xr, "dx"), (&mv, &mr, "dmu"), (&sv, &sr, "ds2")] {
                let ga = g.get(a).unwrap();
                assert_close(ga, gr.get(b).unwrap(), tol, &format!("{} {dt:?} {what}", c.name));
            }
        }
    }
}

#[test]
fn first_order_finite_differences() {
    let eps = 1e-5;
    for (i, c) in cases().iter().chain(rect_cases().iter()).enumerate() {
        let (x, mu, s2) = inputs(c, 30 * i as u64, DType::F64);
        let y = conv2d_with(&x, &mu, c.p).unwrap();
        let rm = rand_t(y.dims(), 5, DType::F64).unwrap();
        let rv = rand_t(y.dims(), 6, DType::F64).unwrap();
        let f = |t: [&Tensor; 3]| -> Tensor {
            let (m, v) = lrt_conv2d_fused(t[0], t[1], t[2], c.p).unwrap();
            (m.tanh().unwrap().mul(&rm).unwrap().sum_all().unwrap()
                + v.sin().unwrap().mul(&rv).unwrap().sum_all().unwrap())
            .unwrap()
        };
        let vars = [var(&x), var(&mu), var(&s2)];
        let g = f([vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor()])
            .backward()
            .unwrap();
        let base = [x.clone(), mu.clone(), s2.clone()];
        for j in 0..3 {
            let d = rand_t(base[j].dims(), 40 + j as u64, DType::F64).unwrap();
            let mut tp = base.clone();
            tp[j] = (&base[j] + (&d * eps).unwrap()).unwrap();
            let mut tm = base.clone();
            tm[j] = (&base[j] - (&d * eps).unwrap()).unwrap();
            let fd = (sum_f64(&f([&tp[0], &tp[1], &tp[2]])) - sum_f64(&f([&tm[0], &tm[1], &tm[2]]))) / (2.0 * eps);
            let an = dot(g.get(&vars[j]).unwrap(), &d);
            assert!(
                (fd - an).abs() < 1e-6 * (1.0 + an.abs()),
                "{} arg {j}: fd {fd} vs {an}",
                c.name
            );
        }
    }
}

#[test]
fn bit_identical_repeats_and_thread_counts() {
    let p = ConvParams::new(1, 2, 1, 1);
    let x = rand_t(&[37, 3, 16, 16], 1, DType::F32).unwrap();
    let mu = rand_t(&[8, 3, 5, 5], 2, DType::F32).unwrap();
    let s2 = rand_t(&[8, 3, 5, 5], 3, DType::F32).unwrap().sqr().unwrap();
    let run = || {
        let (xv, mv, sv) = (var(&x), var(&mu), var(&s2));
        let (m, v) = lrt_conv2d_fused(xv.as_tensor(), mv.as_tensor(), sv.as_tensor(), p).unwrap();
        let g = (m.sqr().unwrap().sum_all().unwrap() + v.sum_all().unwrap())
            .unwrap()
            .backward()
            .unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        [
            flat(&m),
            flat(&v),
            flat(g.get(&xv).unwrap()),
            flat(g.get(&mv).unwrap()),
            flat(g.get(&sv).unwrap()),
        ]
    };
    let first = run();
    assert!(first == run(), "repeat differs");
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        assert!(first == pool.install(run), "{threads} threads differ");
    }
}

#[test]
fn shape_errors_are_errors() {
    let x = rand_t(&[2, 3, 8, 8], 1, DType::F32).unwrap();
    let mu = rand_t(&[4, 3, 3, 3], 2, DType::F32).unwrap();
    let s2 = rand_t(&[4, 3, 3, 1], 2, DType::F32).unwrap();
    assert!(lrt_conv2d(&x, &mu, &s2, ConvParams::new(1, 1, 1, 1)).is_err());
    assert!(lrt_conv2d_fused(&x, &mu, &s2, ConvParams::new(1, 1, 1, 1)).is_err());
    let xv = var(&x);
    assert!(lrt_conv2d(xv.as_tensor(), &mu, &s2, ConvParams::new(1, 1, 1, 1)).is_err());
    let bad = rand_t(&[4, 2, 3, 3], 2, DType::F32).unwrap();
    assert!(lrt_conv2d(&x, &bad, &bad, ConvParams::new(1, 1, 1, 1)).is_err());
    let xl = rand_t(&[5, 7], 1, DType::F32).unwrap();
    let ml = rand_t(&[3, 6], 1, DType::F32).unwrap();
    let e = lrt_linear(&xl, &ml, &ml).unwrap_err().to_string();
    assert!(e.contains("[5, 7]") && e.contains("[3, 6]"), "{e}");
}

#[test]
fn linear_matches_reference_and_finite_differences() {
    let x = rand_t(&[5, 7], 1, DType::F64).unwrap();
    let mu = rand_t(&[3, 7], 2, DType::F64).unwrap();
    let s2 = rand_t(&[3, 7], 3, DType::F64).unwrap().sqr().unwrap();
    let (m, v) = lrt_linear(&x, &mu, &s2).unwrap();
    assert_close(&m, &x.matmul(&mu.t().unwrap()).unwrap(), 1e-14, "linear mean");
    assert_close(
        &v,
        &x.sqr().unwrap().matmul(&s2.t().unwrap()).unwrap(),
        1e-14,
        "linear var",
    );
    let r = rand_t(&[5, 3], 4, DType::F64).unwrap();
    let f = |x: &Tensor, mu: &Tensor, s2: &Tensor| {
        let (m, v) = lrt_linear(x, mu, s2).unwrap();
        (m.tanh().unwrap() + v.sqrt().unwrap())
            .unwrap()
            .mul(&r)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let (xv, mv, sv) = (var(&x), var(&mu), var(&s2));
    let g = f(xv.as_tensor(), mv.as_tensor(), sv.as_tensor()).backward().unwrap();
    let eps = 1e-6;
    let d = rand_t(&[3, 7], 9, DType::F64).unwrap().abs().unwrap();
    let fd = (sum_f64(&f(&x, &mu, &(&s2 + (&d * eps).unwrap()).unwrap()))
        - sum_f64(&f(&x, &mu, &(&s2 - (&d * eps).unwrap()).unwrap())))
        / (2.0 * eps);
    let an = dot(g.get(&sv).unwrap(), &d);
    assert!((fd - an).abs() < 1e-6 * (1.0 + an.abs()), "linear ds2: fd {fd} vs {an}");
    assert!(g.get(&xv).is_some() && g.get(&mv).is_some());
}
