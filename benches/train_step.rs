//! Criterion benchmarks of full training steps (forward in train mode, cross-entropy, backward,
//! SGD with momentum 0.9) at batch 128, f32, CPU:
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo bench --bench train_step            # all three models
//! RAYON_NUM_THREADS=2 cargo bench --bench train_step -- lenet5  # one model
//! RAYON_NUM_THREADS=2 cargo bench --bench train_step -- kinds   # LeNet-5 per layer kind
//! ```
//!
//! The `layer_kinds` group times one LeNet-5 step per layer kind and estimator (deterministic;
//! mean-field with weight sampling, local reparameterisation and Flipout; sparse VD; MC dropout;
//! variational dropout; spike-and-slab; nested and variational nested dropout; GSM gates), the
//! Bayesian ones with the divergence term `Σ D / N` (N = 60,000) in the loss.
//!
//! Few samples in flat sampling mode so that the slow ResNet-20 step stays quick. The side-by-side
//! comparison with PyTorch is `bench/compare.sh`, which uses the `bench_step` binary of
//! `secateur-experiments` with the same step.

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, Criterion, SamplingMode, Throughput};
use secateur_bayes::nn::cross_entropy;
use secateur_bayes::Divergence;
use secateur_bayes::{Ctx, Module, ParamBuilder, ParamStore, Sampling, SeededRng};
use secateur_inference::optim::{Optimizer, Sgd, SgdConfig};
use secateur_models::{build, factory, Deterministic, FactoryOptions, ModelSpec};
use std::time::Duration;

const BATCH: usize = 128;

fn bench_model(c: &mut Criterion, arch: &str, input: [usize; 3], measurement: Duration) {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
    let net = build(&ModelSpec::new(arch, input, 10), &Deterministic, &pb).expect("build");
    let mut data = SeededRng::new(1);
    let [ch, h, w] = input;
    let x = data.randn(&[BATCH, ch, h, w], DType::F32, &Device::Cpu).expect("input");
    let labels: Vec<u32> = (0..BATCH).map(|i| (i % 10) as u32).collect();
    let y = Tensor::from_vec(labels, BATCH, &Device::Cpu).expect("labels");
    let params = store.params();
    let mut opt = Sgd::new(SgdConfig::default()).expect("sgd");
    let mut rng = SeededRng::new(2);

    let mut group = c.benchmark_group("train_step");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(measurement)
        .throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(format!("{arch}/b{BATCH}"), |b| {
        b.iter(|| {
            let mut ctx = Ctx::train(&mut rng, Sampling::Mean);
            let logits = net.forward(&x, &mut ctx).expect("forward");
            let loss = cross_entropy(&logits, &y).expect("loss");
            let grads = loss.backward().expect("backward");
            opt.step(&params, &grads, 0.01).expect("sgd step");
            loss.to_scalar::<f32>().expect("loss value")
        })
    });
    group.finish();
}

fn train_steps(c: &mut Criterion) {
    // As the CLI does: keep freed tensor memory in the process (see `runtime::tune_allocator`).
    secateur_kernels::runtime::tune_allocator();
    bench_model(c, "mlp", [1, 28, 28], Duration::from_secs(2));
    bench_model(c, "lenet5", [1, 28, 28], Duration::from_secs(3));
    bench_model(c, "resnet20", [3, 32, 32], Duration::from_secs(5));
}

/// One LeNet-5 training step with the layers of `kind`, sampled as `sampling`.
fn bench_kind(c: &mut Criterion, kind: &str, sampling: Sampling, label: &str) {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
    let f = factory(kind, &FactoryOptions::default()).expect("layer kind");
    let net = build(&ModelSpec::new("lenet5", [1, 28, 28], 10), f.as_ref(), &pb).expect("build");
    let mut data = SeededRng::new(1);
    let x = data
        .randn(&[BATCH, 1, 28, 28], DType::F32, &Device::Cpu)
        .expect("input");
    let labels: Vec<u32> = (0..BATCH).map(|i| (i % 10) as u32).collect();
    let y = Tensor::from_vec(labels, BATCH, &Device::Cpu).expect("labels");
    let params = store.params();
    let bayesian = !store.variational_layers().is_empty();
    let mut opt = Sgd::new(SgdConfig::default()).expect("sgd");
    let mut rng = SeededRng::new(2);

    let mut group = c.benchmark_group("layer_kinds");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(format!("lenet5/{label}/b{BATCH}"), |b| {
        b.iter(|| {
            let mut ctx = Ctx::train(&mut rng, sampling);
            let logits = net.forward(&x, &mut ctx).expect("forward");
            let mut loss = cross_entropy(&logits, &y).expect("loss");
            if bayesian {
                let (d, _) = store.divergence(&Divergence::Kl, &mut rng).expect("divergence");
                loss = (loss + (d / 60_000.0).expect("scale")).expect("elbo");
            }
            let grads = loss.backward().expect("backward");
            opt.step(&params, &grads, 0.01).expect("sgd step");
            loss.to_scalar::<f32>().expect("loss value")
        })
    });
    group.finish();
}

fn layer_kinds(c: &mut Criterion) {
    secateur_kernels::runtime::tune_allocator();
    bench_kind(c, "deterministic", Sampling::Mean, "deterministic");
    bench_kind(c, "mean-field", Sampling::Weight, "mean-field-weight");
    bench_kind(c, "mean-field", Sampling::Local, "mean-field-local");
    bench_kind(c, "mean-field", Sampling::Flipout, "mean-field-flipout");
    bench_kind(c, "sparse-vd", Sampling::Local, "sparse-vd-local");
    // masks are drawn whenever sampling is not `Mean` (as `secateur train` does for this kind)
    bench_kind(c, "mc-dropout", Sampling::Weight, "mc-dropout");
    bench_kind(c, "variational-dropout", Sampling::Local, "variational-dropout-local");
    bench_kind(c, "spike-slab", Sampling::Local, "spike-slab-local");
    bench_kind(c, "nested-dropout", Sampling::Weight, "nested-dropout");
    bench_kind(
        c,
        "variational-nested-dropout",
        Sampling::Weight,
        "variational-nested-dropout",
    );
    bench_kind(c, "gsm-gates", Sampling::Weight, "gsm-gates");
}

criterion_group!(benches, train_steps, layer_kinds);
/// As the CLI does: candle's thread count from the start-up environment (the bench runs itself
/// again with `CANDLE_NUM_THREADS=1` unless it is set), then the benchmarks.
fn main() {
    match secateur_kernels::runtime::rerun_with_start_env(false) {
        Ok(None) => {}
        Ok(Some(code)) => std::process::exit(code),
        Err(e) => {
            eprintln!("train_step: cannot start again with its environment: {e}");
            std::process::exit(1);
        }
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
