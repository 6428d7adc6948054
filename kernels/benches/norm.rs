//! Training-mode batch norm + ReLU, forward and forward + backward (against the upstream
//! gradient `R` of a fixed random tensor), on ResNet-20's first-stage shape (batch 128,
//! 16×32×32, f32): the fused kernel of `secateur_kernels::norm` against the same computation
//! from candle 0.11's elementwise ops (the models' batch norm before the fused kernel).
//!
//! Run: `cargo bench -p secateur-kernels --bench norm`.

use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};
use secateur_kernels::norm::batch_norm_train;

fn candle_ops(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let (n, c) = (x.dim(0)?, x.dim(1)?);
    let count = (x.elem_count() / c) as f64;
    let per = |t: &Tensor| -> candle_core::Result<Tensor> { t.reshape((n, c, ()))?.sum(2)?.sum(0) };
    let shape = (1, c, 1, 1);
    let mean = (per(x)? / count)?;
    let cen = x.broadcast_sub(&mean.reshape(shape)?)?;
    let var = (per(&cen.sqr()?)? / count)?;
    let scale = (w * (var + 1e-5)?.sqrt()?.recip()?)?;
    cen.broadcast_mul(&scale.reshape(shape)?)?
        .broadcast_add(&b.reshape(shape)?)?
        .relu()
}

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (128, 16, 32, 32), &dev).unwrap()).unwrap();
    let w = Var::from_tensor(&Tensor::ones(16, candle_core::DType::F32, &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::zeros(16, candle_core::DType::F32, &dev).unwrap()).unwrap();
    let r = Tensor::randn(0f32, 1.0, (128, 16, 32, 32), &dev).unwrap();
    let mut g = c.benchmark_group("batch_norm_relu_128x16x32x32");
    g.sample_size(20);
    g.bench_function("fused/forward", |bch| {
        bch.iter(|| batch_norm_train(&x, &w, &b, 1e-5, true).unwrap().y)
    });
    g.bench_function("candle/forward", |bch| bch.iter(|| candle_ops(&x, &w, &b).unwrap()));
    g.bench_function("fused/forward+backward", |bch| {
        bch.iter(|| {
            let y = batch_norm_train(&x, &w, &b, 1e-5, true).unwrap().y;
            (y * &r).unwrap().sum_all().unwrap().backward().unwrap()
        })
    });
    g.bench_function("candle/forward+backward", |bch| {
        bch.iter(|| {
            let y = candle_ops(&x, &w, &b).unwrap();
            (y * &r).unwrap().sum_all().unwrap().backward().unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
