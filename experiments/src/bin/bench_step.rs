//! `bench_step`: times full training steps of one model, for the side-by-side comparison with
//! PyTorch in `bench/compare.sh` (issue 3, "Benchmarks").
//!
//! ```text
//! cargo run --release -p secateur-experiments --bin bench_step -- \
//!     --model lenet5 --batch 128 --steps 50 --warmup 5 [--json] [--hvp]
//! ```
//!
//! A step is what the training loop does: forward in train mode (`Sampling::Mean`), softmax
//! cross-entropy, `backward`, and SGD with momentum 0.9. Input and labels are fixed draws of the
//! seeded generator. The report gives the median and mean milliseconds per step and the peak
//! resident memory of the process (`VmHWM`). Threads: set `RAYON_NUM_THREADS` (candle's CPU
//! backend and gemm use rayon).
//!
//! `--hvp` instead times one Hessian-vector product by double backpropagation (`g = ∇L`,
//! `Hv = ∇(g·v)`) against one gradient computation (forward + backward), and one Hutchinson probe
//! (the second backward pass alone, from a `g` kept with its graph), and checks `Hv` against a
//! central finite difference of gradients. candle keeps the graph of gradients only in a process
//! started with `CANDLE_GRAD_DO_NOT_DETACH=1` (`secateur_kernels::double_backprop`): `--hvp`
//! and `--hvp-ops` run themselves again with it, and `--hvp` times the plain gradient in a child process
//! of itself started without it (`--grad-only`), so that gradient is candle's first-order one.
//!
//! `--mc S` times the Monte Carlo work of a Bayesian row with `S` samples both ways: `S`
//! one-sample passes one after the other, against one pass of `S` samples
//! ([`Ctx::with_samples`]), for prediction (evaluation-mode forward passes, `--sampling`) and for a
//! training step (forward, `(1/S) Σₛ CE_s + KL / N`, backward, SGD), next to one one-sample pass.
//!
//! `bayes-mlp` and `bayes-lenet5` use the mean-field Gaussian layers of `secateur-bayes` with local
//! reparameterisation (`Sampling::Local`), `softplus(ρ) = softplus(-5)` initially, and the loss
//! `CE + KL / 60000` with the analytic KL to `N(0, 1)`, as `bench/pytorch_step.py` does.
//! Exit status 2 with `"supported": false` in the JSON line means an unknown model.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use clap::Parser;
use secateur_bayes::nn::cross_entropy;
use secateur_bayes::prior::Prior;
use secateur_bayes::Divergence;
use secateur_bayes::{Ctx, Module, ParamBuilder, ParamStore, Sampling, SeededRng};
use secateur_inference::optim::{Optimizer, Sgd, SgdConfig};
use secateur_models::{build, Deterministic, FactoryOptions, LayerFactory, MeanField, ModelSpec, Network};
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Parser, Debug, Clone)]
#[command(about = "Time secateur training steps (forward + cross-entropy + backward + SGD momentum)")]
struct Args {
    /// Model: mlp, lenet5, resnet20, vgg11 (1×28×28), bayes-mlp, bayes-lenet5 (mean-field Gaussian, local
    /// reparameterisation, loss + KL / 60000).
    #[arg(long, default_value = "lenet5")]
    model: String,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Learning rate of the SGD step.
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// Print one JSON line only.
    #[arg(long)]
    json: bool,
    /// Time a Hessian-vector product by double backprop instead of training steps.
    #[arg(long)]
    hvp: bool,
    /// Check double-backprop HVPs of single ops (conv2d, max pool, ...) against finite differences.
    #[arg(long)]
    hvp_ops: bool,
    /// (Used by `--hvp`.) Time plain gradients only and print their milliseconds as JSON.
    #[arg(long, hide = true)]
    grad_only: bool,
    /// Time `S` Monte Carlo samples as `S` one-sample passes and as one pass of `S` samples
    /// (Bayesian rows only).
    #[arg(long)]
    mc: Option<usize>,
    /// Estimator of the `--mc` timings and of `--layers`: local, weight or flipout.
    #[arg(long, default_value = "local")]
    sampling: String,
    /// Train `--model mlp|lenet5|resnet20` with the layers of this kind (`model.layers` of a
    /// config: mean-field, sparse-vd, variational-dropout, mc-dropout, gsm-gates, …, with their
    /// default options) instead of the deterministic or `bayes-*` ones: loss + the kind's
    /// divergence / 60000, sampled as `--sampling` where the kind lets the config choose, with
    /// fresh masks for the dropout kinds (as `secateur train` does).
    #[arg(long)]
    layers: Option<String>,
    /// `cpu` or `cuda` (needs `--features cuda`); on CUDA each timed step ends with a device
    /// synchronisation, and the models use candle's own CUDA ops.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Let the pool's other workers sleep between kernels (`runtime::warm` off), as before it
    /// existed: for A/B measurements
    #[arg(long)]
    cold: bool,
}

/// The device of `--device`.
fn make_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0),
        other => Err(candle_core::Error::Msg(format!(
            "--device `{other}` is unknown; use cpu or cuda"
        ))),
    }
}

/// Input shape `[C, H, W]` of a model name.
fn input_shape(model: &str) -> Option<[usize; 3]> {
    match model {
        "mlp" | "lenet5" | "bayes-mlp" | "bayes-lenet5" => Some([1, 28, 28]),
        "resnet20" => Some([3, 32, 32]),
        // the shipped VGG-11 configs' inputs (Fashion-MNIST), where its last planes are 3×3 and 1×1
        "vgg11" => Some([1, 28, 28]),
        _ => None,
    }
}

/// Initial posterior standard deviation of the Bayesian rows: `softplus(-5)`, the `ρ = -5`
/// initialisation of bayesian-torch-style layers (and of `bench/pytorch_step.py`).
const BAYES_INIT_STD: f64 = 0.006_715_348_489_117_967;

/// Training-set size `N` of the `KL / N` term (MNIST), as in `bench/pytorch_step.py`.
const TRAIN_SIZE: f64 = 60_000.0;

/// A field of `/proc/self/status` in MiB (`VmHWM`, `VmRSS`), or NaN where unavailable.
fn proc_status_mib(field: &str) -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return f64::NAN;
    };
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// The `q`-quantile of `v` (nearest rank: the smallest value with at least `q·n` values at or
/// below it); `p90 / median` is the variance measure of issue 24.
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The model, its parameters and a fixed batch.
struct Setup {
    net: Network,
    store: ParamStore,
    x: Tensor,
    y: Tensor,
    /// Bayesian rows: `+ KL / N` in the loss.
    bayes: bool,
    /// How the layers sample in a training step (local reparameterisation for the `bayes-*`
    /// rows, the posterior mean for the deterministic ones).
    sampling: Sampling,
}

fn setup(model: &str, input: [usize; 3], batch: usize, dev: &Device) -> Result<Setup> {
    setup_dtype(model, input, batch, DType::F32, dev)
}

fn setup_dtype(model: &str, input: [usize; 3], batch: usize, dtype: DType, dev: &Device) -> Result<Setup> {
    setup_kind(model, None, input, batch, dtype, dev)
}

/// The network of `model`, with the layers of the kind `layers` (and its estimator) when given.
fn setup_kind(
    model: &str,
    layers: Option<(&str, &str)>,
    input: [usize; 3],
    batch: usize,
    dtype: DType,
    dev: &Device,
) -> Result<Setup> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), dtype, dev.clone());
    let (arch, bayes) = match model.strip_prefix("bayes-") {
        Some(arch) => (arch, true),
        None => (model, false),
    };
    // The `bayes-*` rows: mean-field Gaussian layers, prior N(0, 1), σ initialised as
    // bayesian-torch's ρ = −5 gives (and as `bench/pytorch_step.py` does).
    let mean_field = MeanField::new(Prior::default(), BAYES_INIT_STD)?;
    let (factory, sampling): (Box<dyn LayerFactory>, Sampling) = match layers {
        Some((_, _)) if bayes => {
            return Err(candle_core::Error::Msg(format!(
                "--layers replaces the layers of a plain model; `{model}` already has mean-field ones"
            )))
        }
        Some((name, estimator)) => {
            let kind = secateur_models::kind(name)?;
            let sampling = kind.sampling.resolve(|| parse_sampling(estimator))?;
            ((kind.factory)(&FactoryOptions::default())?, sampling)
        }
        None if bayes => (Box::new(mean_field), Sampling::Local),
        None => (Box::new(Deterministic), Sampling::Mean),
    };
    let net = build(&ModelSpec::new(arch, input, 10), factory.as_ref(), &pb)?;
    let bayes = bayes || !store.variational_layers().is_empty();
    let mut data_rng = SeededRng::new(1);
    let [c, h, w] = input;
    let x = data_rng.randn(&[batch, c, h, w], dtype, dev)?;
    let labels: Vec<u32> = (0..batch)
        .map(|_| rand::RngCore::next_u32(&mut data_rng) % 10)
        .collect();
    let y = Tensor::from_vec(labels, batch, dev)?;
    Ok(Setup {
        net,
        store,
        x,
        y,
        bayes,
        sampling,
    })
}

fn loss(s: &Setup, rng: &mut SeededRng) -> Result<Tensor> {
    let mut ctx = Ctx::train(rng, s.sampling);
    let logits = s.net.forward(&s.x, &mut ctx)?;
    let ce = cross_entropy(&logits, &s.y)?;
    if !s.bayes {
        return Ok(ce);
    }
    let (kl, _) = s.store.divergence(&Divergence::Kl, rng)?;
    ce + (kl / TRAIN_SIZE)?
}

/// Whether `--cold` was given (set once in `main`, before any timing).
static COLD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Times `warmup + steps` calls of `f`, returning the timed durations in ms; each call ends with
/// a synchronisation of `dev` (a no-op on the CPU), so that queued device work is counted. The
/// calls run as `secateur train` runs its steps, with the pool's other workers polling for work
/// ([`secateur_kernels::runtime::warm`]), unless `--cold`.
fn time_steps(dev: &Device, warmup: usize, steps: usize, f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    if COLD.get().copied().unwrap_or(false) {
        time_calls(dev, warmup, steps, f)
    } else {
        secateur_kernels::runtime::warm(|| time_calls(dev, warmup, steps, f))
    }
}

fn time_calls(dev: &Device, warmup: usize, steps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    dev.synchronize()?;
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t0 = Instant::now();
        f()?;
        dev.synchronize()?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(times)
}

fn threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into())
}

fn train_bench(args: &Args, input: [usize; 3]) -> Result<serde_json::Value> {
    let rss_base = proc_status_mib("VmRSS");
    let dev = make_device(&args.device)?;
    let layers = args.layers.as_deref().map(|k| (k, args.sampling.as_str()));
    let s = setup_kind(&args.model, layers, input, args.batch, DType::F32, &dev)?;
    let params: BTreeMap<String, Var> = s.store.params();
    let mut opt = Sgd::new(SgdConfig::default())?;
    let mut rng = SeededRng::new(2);
    let mut last_loss = f32::NAN;
    let times = time_steps(&dev, args.warmup, args.steps, || {
        let l = loss(&s, &mut rng)?;
        let grads = l.backward()?;
        opt.step(&params, &grads, args.lr)?;
        last_loss = l.to_scalar::<f32>()?;
        Ok(())
    })?;
    Ok(serde_json::json!({
        "impl": "secateur",
        "mode": "train_step",
        "model": args.model,
        "layers": args.layers,
        "sampling": format!("{:?}", s.sampling).to_lowercase(),
        "supported": true,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": threads(),
        "workers": if COLD.get().copied().unwrap_or(false) { "sleeping" } else { "warm" },
        "device": args.device,
        "params": s.store.num_params(),
        "median_ms": median(&times),
        "p90_ms": quantile(&times, 0.9),
        "mean_ms": mean(&times),
        "min_ms": times.iter().cloned().fold(f64::INFINITY, f64::min),
        "peak_rss_mib": proc_status_mib("VmHWM"),
        "base_rss_mib": rss_base,
        "final_loss": last_loss,
    }))
}

/// The estimator of `--sampling` (the names of `bayes.sampling`).
fn parse_sampling(name: &str) -> Result<Sampling> {
    secateur_experiments::config::parse_sampling(name).map_err(|e| candle_core::Error::Msg(format!("--sampling {e}")))
}

/// `--mc S`: the Monte Carlo work of `S` samples as `S` one-sample passes and as one `S`-sample
/// pass, for prediction and for a training step, next to one one-sample pass of each.
fn mc_bench(args: &Args, input: [usize; 3], samples: usize) -> Result<serde_json::Value> {
    let dev = make_device(&args.device)?;
    let s = setup(&args.model, input, args.batch, &dev)?;
    if !s.bayes || samples == 0 {
        candle_core::bail!("--mc needs a Bayesian model (bayes-mlp, bayes-lenet5) and S ≥ 1");
    }
    let sampling = parse_sampling(&args.sampling)?;
    let params: BTreeMap<String, Var> = s.store.params();
    let mut opt = Sgd::new(SgdConfig::default())?;
    let mut rng = SeededRng::new(2);
    let xt = secateur_bayes::ctx::tile(&s.x, samples)?;
    let yt = secateur_bayes::ctx::tile(&s.y, samples)?;
    let med = |t: Vec<f64>| median(&t);
    let (w, n) = (args.warmup, args.steps);
    let predict_one = med(time_steps(&dev, w, n, || {
        drop(s.net.forward(&s.x, &mut Ctx::eval(&mut rng, sampling))?);
        Ok(())
    })?);
    let predict_loop = med(time_steps(&dev, w, n, || {
        for _ in 0..samples {
            drop(s.net.forward(&s.x, &mut Ctx::eval(&mut rng, sampling))?);
        }
        Ok(())
    })?);
    let predict_pass = med(time_steps(&dev, w, n, || {
        drop(
            s.net
                .forward(&xt, &mut Ctx::eval(&mut rng, sampling).with_samples(samples))?,
        );
        Ok(())
    })?);
    let mut step = |batched: bool, count: usize, rng: &mut SeededRng| -> Result<()> {
        let ce = if batched {
            let logits = s.net.forward(&xt, &mut Ctx::train(rng, sampling).with_samples(count))?;
            cross_entropy(&logits, &yt)?
        } else {
            let mut acc: Option<Tensor> = None;
            for _ in 0..count {
                let logits = s.net.forward(&s.x, &mut Ctx::train(rng, sampling))?;
                let ce = cross_entropy(&logits, &s.y)?;
                acc = Some(match acc {
                    None => ce,
                    Some(a) => (a + ce)?,
                });
            }
            (acc.ok_or_else(|| candle_core::Error::Msg("no pass".into()))? / count as f64)?
        };
        let (kl, _) = s.store.divergence(&Divergence::Kl, rng)?;
        let l = (ce + (kl / TRAIN_SIZE)?)?;
        let grads = l.backward()?;
        opt.step(&params, &grads, args.lr)
    };
    let train_one = med(time_steps(&dev, w, n, || step(false, 1, &mut rng))?);
    let train_loop = med(time_steps(&dev, w, n, || step(false, samples, &mut rng))?);
    let train_pass = med(time_steps(&dev, w, n, || step(true, samples, &mut rng))?);
    Ok(serde_json::json!({
        "impl": "secateur",
        "mode": "mc_samples",
        "model": args.model,
        "sampling": args.sampling,
        "samples": samples,
        "batch": args.batch,
        "steps": n,
        "threads": threads(),
        "workers": if COLD.get().copied().unwrap_or(false) { "sleeping" } else { "warm" },
        "device": args.device,
        "predict_one_ms": predict_one,
        "predict_loop_ms": predict_loop,
        "predict_pass_ms": predict_pass,
        "predict_pass_over_loop": predict_pass / predict_loop,
        "predict_pass_over_one": predict_pass / predict_one,
        "train_one_ms": train_one,
        "train_loop_ms": train_loop,
        "train_pass_ms": train_pass,
        "train_pass_over_loop": train_pass / train_loop,
        "train_pass_over_one": train_pass / train_one,
    }))
}

/// `Σ_i (a_i · b_i).sum()` over the parameters present in both.
fn dot(params: &BTreeMap<String, Var>, a: &GradStore, v: &BTreeMap<String, Tensor>) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for (name, var) in params {
        let Some(g) = a.get(var.as_tensor()) else { continue };
        let term = secateur_kernels::inner::inner(g, &v[name])?;
        acc = Some(match acc {
            None => term,
            Some(t) => (t + term)?,
        });
    }
    acc.ok_or_else(|| candle_core::Error::Msg("no parameter has a gradient".into()))
}

/// Gradients of all parameters, detached, by name.
fn grad_map(params: &BTreeMap<String, Var>, g: &GradStore) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (name, var) in params {
        if let Some(t) = g.get(var.as_tensor()) {
            out.insert(name.clone(), t.detach());
        }
    }
    Ok(out)
}

/// A Rademacher (±1) probe vector per parameter, as in Hutchinson's estimator.
fn rademacher(params: &BTreeMap<String, Var>, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    let mut vrng = SeededRng::new(seed);
    let mut v = BTreeMap::new();
    for (name, var) in params {
        let u = vrng.rand_uniform(var.dims(), 0.0, 1.0, var.dtype(), var.device())?;
        v.insert(name.clone(), ((u.ge(0.5)?.to_dtype(var.dtype())? * 2.0)? - 1.0)?);
    }
    Ok(v)
}

/// Relative error `‖Hv − FD‖ / ‖FD‖` of the double-backprop HVP against the central difference
/// `(g(θ + εv) − g(θ − εv)) / 2ε`, in f64 so that a small ε is meaningful (smallest over
/// ε ∈ {1e-6, 1e-8, 1e-10}; batch of at most 8). Batch norm uses batch
/// statistics in train mode, so the loss is a deterministic function of θ for the fixed batch.
fn hvp_fd_check(model: &str, input: [usize; 3], batch: usize, dev: &Device) -> Result<f64> {
    let s = setup_dtype(model, input, batch, DType::F64, dev)?;
    let params = s.store.params();
    let v = rademacher(&params, 3)?;
    // The same noise (local reparameterisation) at every evaluation: a fresh generator each time.
    let hv = hvp_once(&s, &params, &v, &mut SeededRng::new(2))?;
    let mut theta = BTreeMap::new();
    for (n, p) in &params {
        theta.insert(n.clone(), p.as_tensor().copy()?);
    }
    // The networks are piecewise smooth (ReLU, max pool): a difference whose step crosses a kink
    // is meaningless, and the chance of crossing one grows with the step and with the number of
    // units. The smallest error over a few steps is reported.
    let mut best = f64::INFINITY;
    for eps in [1e-6f64, 1e-8, 1e-10] {
        let grad_at = |sign: f64| -> Result<BTreeMap<String, Tensor>> {
            for (n, p) in &params {
                p.set(&(&theta[n] + (&v[n] * (sign * eps))?)?)?;
            }
            let l = loss(&s, &mut SeededRng::new(2))?;
            grad_map(&params, &l.backward()?)
        };
        let gp = grad_at(1.0)?;
        let gm = grad_at(-1.0)?;
        let (mut num, mut den) = (0f64, 0f64);
        for (n, h) in &hv {
            let fd = ((&gp[n] - &gm[n])? / (2.0 * eps))?;
            let e2 = (h - &fd)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
            let f2 = fd.sqr()?.sum_all()?.to_scalar::<f64>()?;
            if std::env::var_os("BENCH_STEP_DEBUG").is_some() {
                let h2 = h.sqr()?.sum_all()?.to_scalar::<f64>()?;
                eprintln!(
                    "eps {eps:e} {n}: |Hv| {:.4e} |FD| {:.4e} rel {:.3e}",
                    h2.sqrt(),
                    f2.sqrt(),
                    (e2 / f2.max(1e-300)).sqrt()
                );
            }
            num += e2;
            den += f2;
        }
        best = best.min((num / den.max(1e-300)).sqrt());
    }
    for (n, p) in &params {
        p.set(&theta[n])?;
    }
    Ok(best)
}

/// The `Hv` of one parameter set by double backprop.
fn hvp_once(
    s: &Setup,
    params: &BTreeMap<String, Var>,
    v: &BTreeMap<String, Tensor>,
    rng: &mut SeededRng,
) -> Result<BTreeMap<String, Tensor>> {
    let l = loss(s, rng)?;
    let g = l.backward()?;
    let gv = dot(params, &g, v)?;
    let hv = gv.backward()?;
    grad_map(params, &hv)
}

fn hvp_bench(args: &Args, input: [usize; 3]) -> Result<serde_json::Value> {
    let (model, batch, warmup, steps) = (args.model.clone(), args.batch, args.warmup, args.steps);
    let dev = make_device(&args.device)?;
    let pool = rayon::current_num_threads();
    // 1. Plain gradient (forward + backward) in a child process started without
    //    CANDLE_GRAD_DO_NOT_DETACH: candle's first-order backward.
    let exe = std::env::current_exe().map_err(|e| candle_core::Error::Msg(format!("bench_step's path: {e}")))?;
    let child = std::process::Command::new(exe)
        .args(["--model", &model, "--grad-only", "--device", &args.device])
        .args([
            "--batch",
            &batch.to_string(),
            "--steps",
            &steps.to_string(),
            "--warmup",
            &warmup.to_string(),
        ])
        .args(args.cold.then_some("--cold"))
        .env_remove(secateur_kernels::double_backprop::ENV_VAR)
        .output()
        .map_err(|e| candle_core::Error::Msg(format!("starting the gradient timing: {e}")))?;
    if !child.status.success() {
        candle_core::bail!("the gradient timing failed: {}", String::from_utf8_lossy(&child.stderr));
    }
    let grad_times: Vec<f64> = serde_json::from_slice::<serde_json::Value>(&child.stdout)
        .ok()
        .and_then(|j| serde_json::from_value(j["grad_ms"].clone()).ok())
        .ok_or_else(|| candle_core::Error::Msg("the gradient timing printed no `grad_ms`".into()))?;

    // 2. HVP in this process, started with the variable set.
    let m = model.clone();
    let device_name = args.device.clone();
    let out = std::thread::spawn(move || {
        secateur_kernels::runtime::in_pool_of(pool, move || -> Result<serde_json::Value> {
            let s = setup(&m, input, batch, &dev)?;
            let params = s.store.params();
            let v = rademacher(&params, 3)?;
            let mut rng = SeededRng::new(2);
            // Gradient with the graph kept (what the first half of an HVP costs).
            let grad_keep = time_steps(&dev, warmup, steps, || {
                drop(loss(&s, &mut rng)?.backward()?);
                Ok(())
            })?;
            let mut failure: Option<String> = None;
            let mut hvp_times = Vec::new();
            match time_steps(&dev, warmup, steps, || hvp_once(&s, &params, &v, &mut rng).map(drop)) {
                Ok(t) => hvp_times = t,
                Err(e) => failure = Some(e.to_string()),
            }
            // One Hutchinson probe: the second backward pass alone, `∇(g·v)` from a gradient `g`
            // computed once with its graph (hutchinson_diagonal pays the first pass once per batch
            // and this once per probe). candle's backward does not consume the graph, so the same
            // `g` serves every repetition.
            let mut probe_times = Vec::new();
            if failure.is_none() {
                let g = loss(&s, &mut rng)?.backward()?;
                let gv = dot(&params, &g, &v)?;
                probe_times = time_steps(&dev, warmup, steps, || {
                    drop(gv.backward()?);
                    Ok(())
                })?;
            }
            let fd_rel_err = if failure.is_none() {
                hvp_fd_check(&m, input, batch.min(8), &dev)?
            } else {
                f64::NAN
            };
            let (g, h) = (median(&grad_times), median(&hvp_times));
            Ok(serde_json::json!({
                "impl": "secateur",
                "mode": "hvp",
                "model": m,
                "supported": true,
                "batch": batch,
                "steps": steps,
                "warmup": warmup,
                "threads": threads(),
                "workers": if COLD.get().copied().unwrap_or(false) { "sleeping" } else { "warm" },
                "device": device_name,
                "params": s.store.num_params(),
                "grad_median_ms": g,
                "grad_keep_graph_median_ms": median(&grad_keep),
                "hvp_median_ms": h,
                "hvp_mean_ms": mean(&hvp_times),
                "hvp_over_grad": h / g,
                "probe_median_ms": median(&probe_times),
                "probe_over_grad": median(&probe_times) / g,
                "hvp_fd_rel_err": fd_rel_err,
                "hvp_error": failure,
                "peak_rss_mib": proc_status_mib("VmHWM"),
            }))
        })
    })
    .join()
    .map_err(|_| candle_core::Error::Msg("HVP thread panicked".into()))??;
    Ok(out)
}

/// `--grad-only`: plain gradient times (forward + backward), in milliseconds.
fn grad_only(args: &Args) -> Result<serde_json::Value> {
    let input = input_shape(&args.model)
        .ok_or_else(|| candle_core::Error::Msg(format!("model `{}` is not supported", args.model)))?;
    let dev = make_device(&args.device)?;
    let s = setup(&args.model, input, args.batch, &dev)?;
    let mut rng = SeededRng::new(2);
    let t = time_steps(&dev, args.warmup, args.steps, || {
        drop(loss(&s, &mut rng)?.backward()?);
        Ok(())
    })?;
    Ok(serde_json::json!({ "grad_ms": t }))
}

/// One op under test: `f(θ, x)` with parameter `θ` and fixed input `x`.
type OpFn = fn(&Tensor, &Tensor) -> Result<Tensor>;

/// Double-backprop HVP of `L(θ) = Σ c ⊙ f(θ)²` (f64) against central differences, per op.
fn hvp_ops() -> Result<serde_json::Value> {
    std::thread::spawn(|| -> Result<serde_json::Value> {
        let dev = Device::Cpu;
        let mut r = SeededRng::new(5);
        let cases: Vec<(&str, Vec<usize>, Vec<usize>, OpFn)> = vec![
            ("matmul (weight)", vec![5, 7], vec![4, 7], |w, x| x.matmul(&w.t()?)),
            ("conv2d (weight) k3 p0", vec![4, 3, 3, 3], vec![2, 3, 8, 8], |w, x| {
                x.conv2d(w, 0, 1, 1, 1)
            }),
            ("conv2d (weight) k5 p2", vec![4, 3, 5, 5], vec![2, 3, 8, 8], |w, x| {
                x.conv2d(w, 2, 1, 1, 1)
            }),
            (
                "conv2d (weight) k3 p1 s2",
                vec![4, 3, 3, 3],
                vec![2, 3, 8, 8],
                |w, x| x.conv2d(w, 1, 2, 1, 1),
            ),
            ("conv2d (input) k3 p1", vec![2, 3, 8, 8], vec![4, 3, 3, 3], |x, w| {
                x.conv2d(w, 1, 1, 1, 1)
            }),
            (
                "conv_transpose2d (input) k3 p1",
                vec![2, 4, 8, 8],
                vec![4, 3, 3, 3],
                |x, w| x.conv_transpose2d(w, 1, 0, 1, 1),
            ),
            (
                "conv_transpose2d (weight) k3 p1",
                vec![4, 3, 3, 3],
                vec![2, 4, 8, 8],
                |w, x| x.conv_transpose2d(w, 1, 0, 1, 1),
            ),
            ("max pool 2 (reshape + max)", vec![2, 3, 8, 8], vec![1], |t, _| {
                let t = (t * t)?;
                t.reshape((2, 3, 4, 2, 4, 2))?.max(5)?.max(3)
            }),
            (
                "conv(relu(conv(x, θ)), θ)",
                vec![3, 3, 3, 3],
                vec![2, 3, 8, 8],
                |w, x| x.conv2d(w, 1, 1, 1, 1)?.relu()?.conv2d(w, 1, 1, 1, 1),
            ),
            (
                "conv(pool(conv(x, θ)), θ)",
                vec![3, 3, 3, 3],
                vec![2, 3, 8, 8],
                |w, x| {
                    let y = x.conv2d(w, 1, 1, 1, 1)?;
                    let y = y.reshape((2, 3, 4, 2, 4, 2))?.max(5)?.max(3)?;
                    y.conv2d(w, 1, 1, 1, 1)
                },
            ),
            (
                "conv(conv(x, θ), θ) p0",
                vec![3, 3, 3, 3],
                vec![2, 3, 8, 8],
                |w, x| x.conv2d(w, 0, 1, 1, 1)?.conv2d(w, 0, 1, 1, 1),
            ),
            (
                "conv(x, θ) → linear(θ)",
                vec![3, 3, 3, 3],
                vec![2, 3, 5, 5],
                |w, x| {
                    let y = x.conv2d(w, 0, 1, 1, 1)?.flatten_from(1)?; // [2, 27]
                    y.matmul(&w.flatten_all()?.narrow(0, 0, 27)?.unsqueeze(1)?)
                },
            ),
            ("candle max_pool2d 2", vec![2, 3, 8, 8], vec![1], |t, _| {
                (t * t)?.max_pool2d(2)
            }),
            ("relu(x·θ)", vec![2, 3, 8, 8], vec![2, 3, 8, 8], |t, x| {
                ((t * x)? + t.sqr()?)?.relu()
            }),
            ("log_softmax + gather", vec![4, 10], vec![1], |t, _| {
                let lp = candle_nn_free_log_softmax(&t.sqr()?)?;
                let idx = Tensor::new(&[[1u32], [3], [0], [9]], t.device())?;
                lp.gather(&idx, 1)
            }),
        ];
        let mut out = serde_json::Map::new();
        for (name, tshape, xshape, f) in cases {
            let theta0 = r.randn(&tshape, DType::F64, &dev)?;
            let x = r.randn(&xshape, DType::F64, &dev)?;
            let probe = f(&theta0, &x)?;
            let c = r.randn(probe.dims(), DType::F64, &dev)?;
            let v = r.randn(&tshape, DType::F64, &dev)?;
            let theta = Var::from_tensor(&theta0)?;
            let lossf = |t: &Tensor| -> Result<Tensor> { (f(t, &x)?.sqr()? * &c)?.sum_all() };
            let res = (|| -> Result<f64> {
                let g = lossf(theta.as_tensor())?.backward()?;
                let gt = g
                    .get(theta.as_tensor())
                    .ok_or_else(|| candle_core::Error::Msg("no grad".into()))?;
                let hv_store = (gt * &v)?.sum_all()?.backward()?;
                let hv = hv_store
                    .get(theta.as_tensor())
                    .cloned()
                    .unwrap_or(theta.as_tensor().zeros_like()?);
                let eps = 1e-6;
                let grad_at = |sgn: f64| -> Result<Tensor> {
                    let t = Var::from_tensor(&(&theta0 + (&v * (sgn * eps))?)?)?;
                    let g = lossf(t.as_tensor())?.backward()?;
                    Ok(g.get(t.as_tensor()).unwrap().detach())
                };
                let fd = ((grad_at(1.0)? - grad_at(-1.0)?)? / (2.0 * eps))?;
                let num = (hv - &fd)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
                let den = fd.sqr()?.sum_all()?.to_scalar::<f64>()?;
                Ok((num / den.max(1e-300)).sqrt())
            })();
            out.insert(
                name.to_string(),
                match res {
                    Ok(e) => serde_json::json!(e),
                    Err(e) => serde_json::json!(format!("error: {e}")),
                },
            );
        }
        Ok(serde_json::json!({"impl": "secateur", "mode": "hvp_ops", "rel_err": out}))
    })
    .join()
    .map_err(|_| candle_core::Error::Msg("HVP thread panicked".into()))?
}

/// `log_softmax` from differentiable ops (as candle-nn's).
fn candle_nn_free_log_softmax(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(1)?.detach();
    let d = x.broadcast_sub(&m)?;
    d.broadcast_sub(&d.exp()?.sum_keepdim(1)?.log()?)
}

#[global_allocator]
static ALLOC: secateur_kernels::alloc_cache::CachingAllocator = secateur_kernels::alloc_cache::CachingAllocator::new();

fn main() {
    ALLOC.set_limit(secateur_kernels::alloc_cache::default_limit());
    secateur_kernels::runtime::tune_allocator();
    let args = Args::parse();
    // candle's thread count and double backpropagation come from the start-up environment.
    match secateur_kernels::runtime::rerun_with_start_env((args.hvp || args.hvp_ops) && !args.grad_only) {
        Ok(None) => {}
        Ok(Some(code)) => std::process::exit(code),
        Err(e) => {
            eprintln!("bench_step: cannot start again with its environment: {e}");
            std::process::exit(1);
        }
    }
    COLD.get_or_init(|| args.cold);
    secateur_kernels::runtime::in_pool(|| run(args));
}

fn run(args: Args) {
    if args.grad_only {
        match grad_only(&args) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("bench_step: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    if args.hvp_ops {
        match hvp_ops() {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("bench_step: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let Some(input) = input_shape(&args.model) else {
        let j = serde_json::json!({
            "impl": "secateur",
            "model": args.model,
            "supported": false,
            "error": format!(
                "model `{}` is not supported by bench_step (supported: mlp, lenet5, resnet20, bayes-mlp, bayes-lenet5)",
                args.model
            ),
        });
        println!("{j}");
        std::process::exit(2);
    };
    let result = if let Some(samples) = args.mc {
        mc_bench(&args, input, samples)
    } else if args.hvp {
        hvp_bench(&args, input)
    } else {
        train_bench(&args, input)
    };
    match result {
        Ok(j) => {
            if !args.json {
                eprintln!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
            }
            println!("{j}");
        }
        Err(e) => {
            let j =
                serde_json::json!({"impl": "secateur", "model": args.model, "supported": true, "error": e.to_string()});
            println!("{j}");
            eprintln!("bench_step: {e}");
            std::process::exit(1);
        }
    }
}
