//! Convolution kernels against candle 0.11's own, batch 128, f32: forward, and forward + backward
//! (`y.backward()`, i.e. an all-ones upstream gradient, back to the input and the kernel; a
//! scalar loss such as `(y ⊙ R).sum_all()` would add candle's elementwise backward, which costs
//! more than the convolution at these sizes), on the LeNet-5 and ResNet-20 shapes, plus the
//! fused local-reparameterisation convolution against two separate convolutions.
//!
//! Run: `cargo bench -p secateur-kernels --bench conv`.

use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};
use secateur_kernels::conv::{conv2d, ConvParams};
use secateur_kernels::lrt::{lrt_conv2d, lrt_conv2d_fused};

struct Shape {
    name: &'static str,
    c: usize,
    hw: usize,
    o: usize,
    k: usize,
    pad: usize,
}

const SHAPES: [Shape; 3] = [
    Shape {
        name: "lenet_c1_1x28x28_6x5x5_p2",
        c: 1,
        hw: 28,
        o: 6,
        k: 5,
        pad: 2,
    },
    Shape {
        name: "lenet_c2_6x14x14_16x5x5",
        c: 6,
        hw: 14,
        o: 16,
        k: 5,
        pad: 0,
    },
    Shape {
        name: "resnet_16x32x32_16x3x3_p1",
        c: 16,
        hw: 32,
        o: 16,
        k: 3,
        pad: 1,
    },
];
const BATCH: usize = 128;

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    for s in SHAPES {
        let x = Tensor::randn(0f32, 1.0, (BATCH, s.c, s.hw, s.hw), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.1, (s.o, s.c, s.k, s.k), &dev).unwrap();
        let s2 = w.sqr().unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        let wv = Var::from_tensor(&w).unwrap();
        let sv = Var::from_tensor(&s2).unwrap();
        let mut g = c.benchmark_group(s.name);
        g.sample_size(20);
        g.bench_function("fwd/secateur", |b| b.iter(|| conv2d(&x, &w, 1, s.pad, 1, 1).unwrap()));
        g.bench_function("fwd/candle", |b| b.iter(|| x.conv2d(&w, s.pad, 1, 1, 1).unwrap()));
        g.bench_function("fwd_bwd/secateur", |b| {
            b.iter(|| {
                let y = conv2d(xv.as_tensor(), wv.as_tensor(), 1, s.pad, 1, 1).unwrap();
                y.backward().unwrap()
            })
        });
        g.bench_function("fwd_bwd/candle", |b| {
            b.iter(|| {
                let y = xv.as_tensor().conv2d(wv.as_tensor(), s.pad, 1, 1, 1).unwrap();
                y.backward().unwrap()
            })
        });
        let p = ConvParams::new(1, s.pad, 1, 1);
        g.bench_function("lrt_fwd/fused", |b| {
            b.iter(|| lrt_conv2d_fused(&x, &w, &s2, p).unwrap())
        });
        g.bench_function("lrt_fwd/two_convs", |b| {
            b.iter(|| {
                let m = conv2d(&x, &w, 1, s.pad, 1, 1).unwrap();
                let v = conv2d(&x.sqr().unwrap(), &s2, 1, s.pad, 1, 1).unwrap();
                (m, v)
            })
        });
        g.bench_function("lrt_fwd_bwd/fused", |b| {
            b.iter(|| {
                let (m, v) = lrt_conv2d_fused(xv.as_tensor(), wv.as_tensor(), sv.as_tensor(), p).unwrap();
                (m + v).unwrap().backward().unwrap()
            })
        });
        g.bench_function("lrt_fwd_bwd/two_convs", |b| {
            b.iter(|| {
                let m = conv2d(xv.as_tensor(), wv.as_tensor(), 1, s.pad, 1, 1).unwrap();
                let v = conv2d(&xv.as_tensor().sqr().unwrap(), sv.as_tensor(), 1, s.pad, 1, 1).unwrap();
                (m + v).unwrap().backward().unwrap()
            })
        });
        g.bench_function("lrt_fwd/default_no_grad", |b| {
            b.iter(|| lrt_conv2d(&x, &w, &s2, p).unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
