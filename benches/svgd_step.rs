//! Criterion benchmark of one SVGD step over 20 LeNet-5 particles (issue 18) against 20
//! separate gradient steps of 20 LeNet-5 networks, batch 128, f32, CPU:
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo bench --bench svgd_step
//! ```
//!
//! - `svgd/20`: [`SteinNetwork::step`] — for each particle, write it into the store, forward,
//!   cross-entropy, backward, flatten the gradient; then the 20 × 20 kernel, the Stein direction
//!   and the AdaGrad step on the `[20, 61,706]` particle matrix, fused
//!   ([`secateur_inference::svgd::stein_step`]);
//! - `svgd-gradients/20` and `svgd-update/20`: the two halves of that step;
//! - `separate/20`: for each of 20 networks (own stores), forward, cross-entropy, backward and an
//!   SGD step with momentum.
//!
//! The difference is SVGD's overhead: copying each particle in and its gradient out, the kernel
//! and the update on the whole particle matrix in f64.

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use secateur_bayes::nn::cross_entropy;
use secateur_bayes::{Ctx, Module, ParamBuilder, ParamStore, Sampling, SeededRng};
use secateur_inference::optim::{Optimizer, Sgd, SgdConfig};
use secateur_inference::svgd::network::{gaussian_prior_grad, SteinNetwork};
use secateur_inference::svgd::Interaction;
use secateur_models::{build, Deterministic, ModelSpec};
use std::time::Duration;

const BATCH: usize = 128;
const PARTICLES: usize = 20;

fn lenet(seed: u64) -> (secateur_models::Network, ParamStore) {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(seed), DType::F32, Device::Cpu);
    let net = build(&ModelSpec::new("lenet5", [1, 28, 28], 10), &Deterministic, &pb).expect("build");
    (net, store)
}

fn bench(c: &mut Criterion) {
    let mut data = SeededRng::new(1);
    let x = data
        .randn(&[BATCH, 1, 28, 28], DType::F32, &Device::Cpu)
        .expect("input");
    let labels: Vec<u32> = (0..BATCH).map(|i| (i % 10) as u32).collect();
    let y = Tensor::from_vec(labels, BATCH, &Device::Cpu).expect("labels");

    let nets: Vec<_> = (0..PARTICLES as u64).map(lenet).collect();
    let members: Vec<_> = nets.iter().map(|(_, s)| s.tensors()).collect();
    let (net, store) = lenet(0);
    let mut svgd = SteinNetwork::new(&store, &members, 1e-3, Interaction::Stein).expect("particles");
    let mut rng = SeededRng::new(2);

    let mut group = c.benchmark_group("svgd_step");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(20));
    group.bench_function(format!("svgd/{PARTICLES}"), |b| {
        b.iter(|| {
            svgd.step(
                &store,
                60_000,
                |_| {
                    let mut ctx = Ctx::train(&mut rng, Sampling::Mean);
                    cross_entropy(&net.forward(&x, &mut ctx)?, &y)
                },
                |p| gaussian_prior_grad(p, 1.0),
            )
            .expect("svgd step")
        })
    });
    // the two halves of the SVGD step
    let layout = svgd.layout().clone();
    let parts = svgd.particles().expect("particles");
    group.bench_function(format!("svgd-gradients/{PARTICLES}"), |b| {
        b.iter(|| {
            let params = store.params();
            for i in 0..PARTICLES {
                layout.write(&parts.get(i).expect("row"), &store).expect("write");
                let mut ctx = Ctx::train(&mut rng, Sampling::Mean);
                let loss = cross_entropy(&net.forward(&x, &mut ctx).expect("forward"), &y).expect("loss");
                let grads = loss.backward().expect("backward");
                layout.flatten_grads(&params, &grads).expect("flatten");
            }
        })
    });
    let mut xs = parts.flatten_all().and_then(|t| t.to_vec1::<f64>()).expect("particles");
    let g = vec![1.0; xs.len()];
    let mut stepper = secateur_inference::svgd::AdagradMomentum::new(1e-3);
    group.bench_function(format!("svgd-update/{PARTICLES}"), |b| {
        b.iter(|| {
            secateur_inference::svgd::stein_step(&mut xs, &g, PARTICLES, Interaction::Stein, &mut stepper)
                .expect("step")
        })
    });
    let mut opts: Vec<Sgd> = (0..PARTICLES)
        .map(|_| Sgd::new(SgdConfig::default()).expect("sgd"))
        .collect();
    group.bench_function(format!("separate/{PARTICLES}"), |b| {
        b.iter(|| {
            for ((n, s), opt) in nets.iter().zip(opts.iter_mut()) {
                let mut ctx = Ctx::train(&mut rng, Sampling::Mean);
                let loss = cross_entropy(&n.forward(&x, &mut ctx).expect("forward"), &y).expect("loss");
                let grads = loss.backward().expect("backward");
                opt.step(&s.params(), &grads, 0.01).expect("sgd step");
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
