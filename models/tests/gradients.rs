//! Training behaviour: batch-norm modes, finite-difference gradients, gradient reach.

use candle_core::{DType, Device, Result, Tensor};
use secateur_bayes::{Ctx, Module, ParamBuilder, ParamStore, Sampling, SeededRng};
use secateur_models::arch::{ViTConfig, VisionTransformer};
use secateur_models::{build, Deterministic, ModelSpec, Network};

fn build_net(arch: &str, input: [usize; 3], seed: u64, dtype: DType) -> Result<(ParamStore, Network)> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(seed), dtype, Device::Cpu);
    let net = build(&ModelSpec::new(arch, input, 10), &Deterministic, &pb)?;
    Ok((store, net))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    (a - b)?
        .abs()?
        .flatten_all()?
        .to_dtype(DType::F64)?
        .max(0)?
        .to_scalar::<f64>()
}

#[test]
fn batch_norm_train_and_eval_differ() -> Result<()> {
    let (store, net) = build_net("resnet20", [3, 32, 32], 0, DType::F32)?;
    let x = SeededRng::new(1).randn(&[4, 3, 32, 32], DType::F32, &Device::Cpu)?;
    let mut rng = SeededRng::new(2);
    let eval0 = net.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
    let eval0b = net.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
    assert_eq!(
        max_abs_diff(&eval0, &eval0b)?,
        0.0,
        "eval mode must be deterministic and stateless"
    );
    let rm0 = store
        .get("bn1.running_mean")
        .map(|v| v.as_tensor().copy())
        .transpose()?;
    let train = net.forward(&x, &mut Ctx::train(&mut rng, Sampling::Mean))?;
    assert!(
        max_abs_diff(&eval0, &train)? > 1e-3,
        "train (batch statistics) and eval (running statistics) agree"
    );
    // the training pass moved the running statistics, so eval output changes too
    let rm1 = store
        .get("bn1.running_mean")
        .map(|v| v.as_tensor().copy())
        .transpose()?;
    match (rm0, rm1) {
        (Some(a), Some(b)) => assert!(max_abs_diff(&a, &b)? > 0.0),
        _ => panic!("bn1.running_mean missing"),
    }
    let eval1 = net.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
    assert!(max_abs_diff(&eval0, &eval1)? > 0.0);
    Ok(())
}

/// Compares autograd's derivative of `Σ net(x)` (eval mode, F64) with respect to single entries
/// of the named tensors against the central difference `(f(w + h) − f(w − h)) / 2h`, `h = 1e-6`.
/// Two entries per tensor: the one with the largest gradient (so the check is not vacuous on a
/// dead ReLU) and a fixed one a third of the way in.
fn check_against_finite_differences(store: &ParamStore, net: &dyn Module, x: &Tensor, names: &[&str]) -> Result<()> {
    let mut rng = SeededRng::new(5);
    let mut f = || -> Result<f64> {
        net.forward(x, &mut Ctx::eval(&mut rng, Sampling::Mean))?
            .sum_all()?
            .to_scalar::<f64>()
    };
    let grads = net
        .forward(x, &mut Ctx::eval(&mut SeededRng::new(5), Sampling::Mean))?
        .sum_all()?
        .backward()?;
    for &name in names {
        let var = store
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("missing {name}")))?;
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg(format!("no gradient for {name}")))?;
        let gv = g.flatten_all()?.to_vec1::<f64>()?;
        let argmax = (0..gv.len()).fold(0, |best, i| if gv[i].abs() > gv[best].abs() { i } else { best });
        for (flat, must_be_nonzero) in [(argmax, true), (gv.len() / 3, false)] {
            let dims = var.dims().to_vec();
            let analytic = gv[flat];
            let w0 = var.as_tensor().copy()?;
            let h = 1e-6;
            let bump = |delta: f64| -> Result<Tensor> {
                let mut v = w0.flatten_all()?.to_vec1::<f64>()?;
                v[flat] += delta;
                Tensor::from_vec(v, dims.as_slice(), &Device::Cpu)
            };
            var.set(&bump(h)?)?;
            let fp = f()?;
            var.set(&bump(-h)?)?;
            let fm = f()?;
            var.set(&w0)?;
            let numeric = (fp - fm) / (2.0 * h);
            let tol = 1e-6 * (1.0 + analytic.abs());
            assert!(
                (analytic - numeric).abs() < tol,
                "{name}[{flat}]: autograd {analytic}, finite difference {numeric}"
            );
            assert!(
                !must_be_nonzero || analytic.abs() > 1e-6,
                "{name}: gradient is zero, the check is vacuous"
            );
        }
    }
    Ok(())
}

#[test]
fn lenet5_gradient_matches_central_difference() -> Result<()> {
    // Independent check of autograd through conv (padding 2), ReLU, max pool and linear layers.
    let (store, net) = build_net("lenet5", [1, 28, 28], 3, DType::F64)?;
    let x = SeededRng::new(4).randn(&[2, 1, 28, 28], DType::F64, &Device::Cpu)?;
    let names = ["conv1.weight", "conv2.weight", "fc1.weight", "fc3.weight"];
    check_against_finite_differences(&store, &net, &x, &names)
}

#[test]
fn resnet_and_vit_gradients_match_central_differences() -> Result<()> {
    // ResNet-20 in eval mode (batch norm is then affine) on 3×8×8: strided convolutions and
    // option-A shortcuts (subsampling and channel padding) on the gradient path.
    let (store, net) = build_net("resnet20", [3, 8, 8], 3, DType::F64)?;
    let x = SeededRng::new(4).randn(&[2, 3, 8, 8], DType::F64, &Device::Cpu)?;
    let names = [
        "conv1.weight",
        "layer2.0.conv1.weight",
        "layer3.2.conv2.weight",
        "layer3.2.bn2.weight",
        "linear.weight",
    ];
    check_against_finite_differences(&store, &net, &x, &names)?;
    // A small ViT: patch embedding, attention (softmax) and the GELU MLP.
    let cfg = ViTConfig {
        patch: 4,
        embed_dim: 12,
        depth: 2,
        heads: 3,
        mlp_dim: 16,
        norm_eps: 1e-6,
    };
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F64, Device::Cpu);
    let vit = VisionTransformer::new(&cfg, [1, 8, 8], 5, &Deterministic, &pb)?;
    let x = SeededRng::new(1).randn(&[2, 1, 8, 8], DType::F64, &Device::Cpu)?;
    let names = [
        "patch_embed.proj.weight",
        "cls_token",
        "pos_embed",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.proj.weight",
        "blocks.1.mlp.fc1.weight",
        "blocks.1.norm2.weight",
        "head.weight",
    ];
    check_against_finite_differences(&store, &vit, &x, &names)
}

/// Whether `name` is the bias of layer `features.k` and `features.{k+1}` is a batch norm (VGG).
fn feeds_batch_norm(store: &ParamStore, name: &str) -> bool {
    let Some(layer) = name.strip_suffix(".bias") else {
        return false;
    };
    let Some((head, k)) = layer.rsplit_once('.') else {
        return false;
    };
    match k.parse::<usize>() {
        Ok(k) => store.buffers().contains_key(&format!("{head}.{}.running_mean", k + 1)),
        Err(_) => false,
    }
}

fn every_parameter_gets_a_gradient(store: &ParamStore, net: &dyn Module, input: [usize; 3], what: &str) -> Result<()> {
    let x = SeededRng::new(7).randn(&[2, input[0], input[1], input[2]], DType::F32, &Device::Cpu)?;
    let labels = Tensor::new(&[1u32, 3], &Device::Cpu)?;
    let mut rng = SeededRng::new(8);
    let logits = net.forward(&x, &mut Ctx::train(&mut rng, Sampling::Mean))?;
    let loss = secateur_bayes::nn::cross_entropy(&logits, &labels)?;
    let grads = loss.backward()?;
    for (name, var) in store.params() {
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg(format!("{what}: no gradient for `{name}`")))?;
        assert_eq!(g.dims(), var.dims(), "{what}: `{name}`");
        let v = g.flatten_all()?.to_vec1::<f32>()?;
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{what}: non-finite gradient for `{name}`"
        );
        if feeds_batch_norm(store, &name) {
            // A per-channel shift right before a training-mode batch norm is removed by the
            // normalisation: its gradient is zero in exact arithmetic, rounding error in f32
            // (a sum of cancelling terms), far below the layer's weight gradient.
            let wname = format!("{}.weight", name.trim_end_matches(".bias"));
            let w = grads.get(store.params()[&wname].as_tensor()).expect("weight gradient");
            let wmax = w.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            let bmax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(
                wmax > 0.0 && bmax < 1e-3 * wmax,
                "{what}: `{name}` feeds a batch norm: {bmax} vs {wmax}"
            );
        } else {
            assert!(v.iter().any(|&x| x != 0.0), "{what}: zero gradient for `{name}`");
        }
    }
    Ok(())
}

#[test]
fn gradients_reach_every_parameter() -> Result<()> {
    // 28×28 exercises odd-sized pools (VGG: 7 → 3) and odd-sized strided shortcuts (ResNet: 7 → 4).
    for arch in ["mlp", "lenet5", "vgg11", "resnet20", "resnet18"] {
        let (store, net) = build_net(arch, [1, 28, 28], 0, DType::F32)?;
        every_parameter_gets_a_gradient(&store, &net, [1, 28, 28], arch)?;
    }
    // A small ViT (same code path as vit-tiny) on 3×16×16 with patch 4.
    let cfg = ViTConfig {
        patch: 4,
        embed_dim: 24,
        depth: 2,
        heads: 3,
        mlp_dim: 48,
        norm_eps: 1e-6,
    };
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
    let vit = VisionTransformer::new(&cfg, [3, 16, 16], 10, &Deterministic, &pb)?;
    every_parameter_gets_a_gradient(&store, &vit, [3, 16, 16], "small vit")
}

#[test]
fn vit_examples_do_not_interact() -> Result<()> {
    // Attention mixes tokens within an example, never across the batch: permuting the batch
    // permutes the logits, and an example alone gives the logits it gets within a batch.
    let cfg = ViTConfig {
        patch: 4,
        embed_dim: 12,
        depth: 1,
        heads: 2,
        mlp_dim: 16,
        norm_eps: 1e-6,
    };
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store, SeededRng::new(0), DType::F64, Device::Cpu);
    let vit = VisionTransformer::new(&cfg, [1, 8, 8], 5, &Deterministic, &pb)?;
    let x = SeededRng::new(1).randn(&[3, 1, 8, 8], DType::F64, &Device::Cpu)?;
    let mut rng = SeededRng::new(2);
    let y = vit.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
    let perm = Tensor::new(&[2u32, 0, 1], &Device::Cpu)?;
    let yp = vit.forward(&x.index_select(&perm, 0)?, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
    assert!(max_abs_diff(&y.index_select(&perm, 0)?, &yp)? < 1e-12);
    // and a single example alone gives the same logits as within the batch
    let y1 = vit.forward(&x.narrow(0, 1, 1)?, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
    assert!(max_abs_diff(&y.narrow(0, 1, 1)?, &y1)? < 1e-12);
    Ok(())
}
