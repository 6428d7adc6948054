//! Criterion benchmarks of inference latency of dense against compacted networks: LeNet-5,
//! VGG-11 and ResNet-20 (1×28×28 inputs, as the study's Fashion-MNIST subset) with 0, 25, 50
//! and 75% of their FLOPs removed by ℓ1 filter pruning (per layer, `Cost::Flops`) and
//! compacted, one forward pass in evaluation mode at batch 1 and 128, f32, CPU:
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo bench --bench compact              # all
//! RAYON_NUM_THREADS=2 cargo bench --bench compact -- resnet20  # one architecture
//! ```
//!
//! The widths come from the allocation on a seeded initialisation (what a trained network's
//! scores would give differs in which filters go, not in how many per layer, and latency depends
//! on the widths only).
//!
//! The `quantised-matmul` group times candle's quantised CPU matrix product (`QMatMul` with
//! `GgmlDType::Q8_0` weights: int8 in blocks of 32 with an f16 scale, activations quantised to
//! Q8_0 on the fly) against the f32 product for the fully connected layers of LeNet-300-100
//! (`[B, 784] · [300, 784]ᵀ`, `[B, 300] · [100, 300]ᵀ`), at batch 1 and 128, to decide whether it
//! serves `secateur quantise`. Q8_0 needs the inner dimension to be a multiple of 32, so both
//! sides run on the inputs zero-padded to 800 and 320.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo bench --bench compact -- quantised
//! ``` Each network's FLOPs (multiply–accumulates per example) and their
//! fraction of the dense network's are printed before its timings, so that wall time can be set
//! against FLOPs (the aim: within 1.3× of proportional down to a quarter of the FLOPs).

use candle_core::{DType, Device};
use criterion::{criterion_group, BenchmarkId, Criterion, SamplingMode};
use secateur_bayes::{Ctx, Module, ParamBuilder, ParamStore, Sampling, SeededRng};
use secateur_models::{build, build_with_widths, Deterministic, ModelSpec, Network};
use secateur_pruning::structured::{allocate::cost, groups, Cost, FilterCriterion, StructuredAllocation};
use secateur_pruning::Scope;
use std::time::Duration;

const INPUT: [usize; 3] = [1, 28, 28];

/// The compacted widths of `arch` with `fraction` of its FLOPs removed, and `(kept, total)` FLOPs.
fn widths(arch: &str, fraction: f64) -> (Vec<usize>, u64, u64) {
    let spec = ModelSpec::new(arch, INPUT, 10);
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
    build(&spec, &Deterministic, &pb).expect("build");
    let c = groups::record(&spec).expect("coupling");
    let scores = FilterCriterion::L1.score(&store, &c).expect("scores");
    let plan = StructuredAllocation::new(Cost::Flops, fraction, Scope::PerLayer)
        .allocate(&c, &scores)
        .expect("allocate");
    let (total, kept) = cost(&c, &plan.mask, Cost::Flops).expect("cost");
    let w = c
        .geometry
        .layers
        .iter()
        .map(|l| {
            plan.mask
                .kept(&l.name)
                .map_or(l.weight_shape[0], |k| k.iter().filter(|&&b| b).count())
        })
        .collect();
    (w, kept, total)
}

fn network(arch: &str, widths: &[usize]) -> Network {
    let pb = ParamBuilder::new(ParamStore::new(), SeededRng::new(0), DType::F32, Device::Cpu);
    build_with_widths(&ModelSpec::new(arch, INPUT, 10), widths, &Deterministic, &pb).expect("build narrowed")
}

fn bench_arch(c: &mut Criterion, arch: &str) {
    let mut g = c.benchmark_group(format!("compact/{arch}"));
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for fraction in [0.0, 0.25, 0.5, 0.75] {
        let (w, kept, total) = widths(arch, fraction);
        eprintln!(
            "{arch} at {:.0}% FLOPs removed: FLOPs {kept} of {total} ({:.3}), widths {w:?}",
            100.0 * fraction,
            kept as f64 / total as f64
        );
        let net = network(arch, &w);
        for batch in [1, 128] {
            let mut rng = SeededRng::new(1);
            let [ch, h, wd] = INPUT;
            let x = rng.randn(&[batch, ch, h, wd], DType::F32, &Device::Cpu).expect("input");
            let id = BenchmarkId::new(format!("flops-{:.2}", kept as f64 / total as f64), format!("b{batch}"));
            g.bench_with_input(id, &x, |b, x| {
                b.iter(|| {
                    net.forward(x, &mut Ctx::eval(&mut rng, Sampling::Mean))
                        .expect("forward")
                })
            });
        }
    }
    g.finish();
}

fn quantised_matmul(c: &mut Criterion) {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::Module as _;
    let mut g = c.benchmark_group("quantised-matmul");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let mut rng = SeededRng::new(2);
    for (n, k) in [(300, 800), (100, 320)] {
        let w = rng.randn(&[n, k], DType::F32, &Device::Cpu).expect("weights");
        let q = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0).expect("quantize")).expect("qmatmul");
        let wt = w.t().expect("transpose").contiguous().expect("contiguous");
        for batch in [1, 128] {
            let x = rng.randn(&[batch, k], DType::F32, &Device::Cpu).expect("input");
            g.bench_with_input(
                BenchmarkId::new(format!("f32/{n}x{k}"), format!("b{batch}")),
                &x,
                |b, x| b.iter(|| x.matmul(&wt).expect("matmul")),
            );
            g.bench_with_input(
                BenchmarkId::new(format!("q8_0/{n}x{k}"), format!("b{batch}")),
                &x,
                |b, x| b.iter(|| q.forward(x).expect("qmatmul")),
            );
        }
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    for arch in ["lenet5", "vgg11", "resnet20"] {
        bench_arch(c, arch);
    }
    quantised_matmul(c);
}

criterion_group!(compact, benches);

/// As the CLI: freed tensor memory stays in the process (see `alloc_cache`).
#[global_allocator]
static ALLOC: secateur_kernels::alloc_cache::CachingAllocator = secateur_kernels::alloc_cache::CachingAllocator::new();

fn main() {
    ALLOC.set_limit(secateur_kernels::alloc_cache::default_limit());
    secateur_kernels::runtime::tune_allocator();
    compact();
    Criterion::default().configure_from_args().final_summary();
}
