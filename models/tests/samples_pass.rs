//! Passes of S samples ([`Ctx::with_samples`]) through whole networks.
//!
//! - Without noise (posterior means, evaluation and training mode), every block of an S-sample
//!   pass equals the one-sample output (to f32 rounding: some kernels sum in an order that depends
//!   on the number of rows), for an architecture of each kind of join and every layer kind: the
//!   tiling survives residual additions, attention, flattening and batch norm.
//! - With noise, the S blocks are distributed as S independent passes: the mean and variance of
//!   the outputs of one S-sample pass against those of S one-sample passes (a two-sample
//!   comparison at five standard errors), for every estimator of the mean-field layers and the
//!   other noisy kinds.

use candle_core::{DType, Device, Result};
use secateur_bayes::ctx::tile;
use secateur_bayes::{Ctx, Module, ParamBuilder, ParamStore, Sampling, SeededRng};
use secateur_models::{build, factory, FactoryOptions, ModelSpec, Network, ARCHITECTURES, LAYER_KINDS};

fn mk(rng: &mut SeededRng, sampling: Sampling, train: bool) -> Ctx<'_> {
    if train {
        Ctx::train(rng, sampling)
    } else {
        Ctx::eval(rng, sampling)
    }
}

fn net(arch: &str, kind: &str, input: [usize; 3]) -> Result<Network> {
    let f = factory(kind, &FactoryOptions::default())?;
    let pb = ParamBuilder::new(ParamStore::new(), SeededRng::new(0), DType::F32, Device::Cpu);
    build(&ModelSpec::new(arch, input, 10), f.as_ref(), &pb)
}

#[test]
fn noiseless_passes_of_s_samples_tile_the_one_sample_output() -> Result<()> {
    let x = SeededRng::new(1).randn(&[2, 1, 28, 28], DType::F32, &Device::Cpu)?;
    let s = 3;
    // one of each family of joins: plain stacks, convolution + flatten, residual additions with
    // batch norm (projection shortcuts in resnet18), attention with layer norm
    for arch in ["mlp", "lenet5", "resnet20", "resnet18", "vit-tiny"] {
        assert!(ARCHITECTURES.contains(&arch));
        for kind in LAYER_KINDS {
            // batch-norm networks in training mode twice: the running statistics move between passes
            let (a, b) = (net(arch, kind.name, [1, 28, 28])?, net(arch, kind.name, [1, 28, 28])?);
            let mut rng = SeededRng::new(2);
            for train in [false, true] {
                if train && kind.name == "gsm-gates" {
                    continue; // its gates are drawn in training mode whatever the estimator
                }
                let one = a.forward(&x, &mut mk(&mut rng, Sampling::Mean, train))?;
                let mut c = mk(&mut rng, Sampling::Mean, train).with_samples(s);
                let many = b.forward(&tile(&x, s)?, &mut c)?;
                // equal up to the rounding of kernels whose summation order depends on the row count
                let diff = (&many - tile(&one, s)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
                let scale = one.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
                assert!(diff <= 1e-5 * scale, "{arch}/{} train={train}: {diff}", kind.name);
            }
        }
    }
    Ok(())
}

/// Mean and variance of each output of `n` draws `[n, k]`.
fn moments(draws: &[Vec<f32>]) -> (Vec<f64>, Vec<f64>) {
    let n = draws.len() as f64;
    let k = draws[0].len();
    let m: Vec<f64> = (0..k)
        .map(|j| draws.iter().map(|d| d[j] as f64).sum::<f64>() / n)
        .collect();
    let v = (0..k)
        .map(|j| draws.iter().map(|d| (d[j] as f64 - m[j]).powi(2)).sum::<f64>() / (n - 1.0))
        .collect();
    (m, v)
}

/// One pass of `n` samples against `n` one-sample passes of the same network on one example:
/// output means within five standard errors of their difference, and the log of the variance
/// ratio within five of its standard errors, `√(2/n)` for each sample variance of a Gaussian-like
/// output, `√(4/n)` for the difference of the two logs.
fn compare(arch: &str, kind: &str, input: [usize; 3], sampling: Sampling, train: bool, n: usize) -> Result<()> {
    let model = net(arch, kind, input)?;
    let x = SeededRng::new(5).randn(&[1, input[0], input[1], input[2]], DType::F32, &Device::Cpu)?;
    let mut rng = SeededRng::new(6);
    let mut looped = Vec::with_capacity(n);
    for _ in 0..n {
        looped.push(
            model
                .forward(&x, &mut mk(&mut rng, sampling, train))?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
    }
    let mut rng = SeededRng::new(7);
    let mut c = mk(&mut rng, sampling, train).with_samples(n);
    let y = model.forward(&tile(&x, n)?, &mut c)?.to_vec2::<f32>()?;
    let (ml, vl) = moments(&looped);
    let (mb, vb) = moments(&y);
    let mut differs = false;
    for j in 0..ml.len() {
        let se = ((vl[j] + vb[j]) / n as f64).sqrt();
        assert!(
            (ml[j] - mb[j]).abs() <= 5.0 * se + 1e-6,
            "{arch}/{kind} {sampling:?} output {j}: mean {} vs {}",
            ml[j],
            mb[j]
        );
        let r = vb[j] / vl[j];
        assert!(
            (r.ln()).abs() <= 5.0 * (4.0 / n as f64).sqrt(),
            "{arch}/{kind} {sampling:?} output {j}: variance ratio {r}"
        );
        differs |= vb[j] > 0.0;
    }
    assert!(differs, "{arch}/{kind} {sampling:?}: the samples do not differ");
    Ok(())
}

#[test]
fn noisy_blocks_are_distributed_as_independent_passes() -> Result<()> {
    let small = [1, 8, 8];
    for sampling in [Sampling::Weight, Sampling::Local, Sampling::Flipout] {
        compare("mlp", "mean-field", small, sampling, false, 400)?;
    }
    compare("lenet5", "mean-field", [1, 28, 28], Sampling::Weight, false, 200)?;
    compare("mlp", "mc-dropout", small, Sampling::Weight, false, 400)?;
    compare("mlp", "spike-slab", small, Sampling::Local, true, 400)?;
    compare("mlp", "gsm-gates", small, Sampling::Weight, true, 400)?;
    Ok(())
}
