//! Architectures: parameter counts, output shapes, seeding, names and refusals.

use candle_core::{DType, Device, Result, Tensor};
use secateur_bayes::{Ctx, Module, ParamBuilder, ParamStore, Sampling, SeededRng};
use secateur_models::arch::{ViTConfig, VisionTransformer};
use secateur_models::{build, Deterministic, ModelSpec, Network, ARCHITECTURES};

fn build_net(arch: &str, input: [usize; 3], classes: usize, seed: u64) -> Result<(ParamStore, Network)> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(seed), DType::F32, Device::Cpu);
    let net = build(&ModelSpec::new(arch, input, classes), &Deterministic, &pb)?;
    Ok((store, net))
}

fn count(arch: &str, input: [usize; 3], classes: usize) -> Result<usize> {
    Ok(build_net(arch, input, classes, 0)?.0.num_params())
}

#[test]
fn parameter_counts_match_published_figures() -> Result<()> {
    // LeNet-300-100 on MNIST: 784·300+300 + 300·100+100 + 100·10+10 = 266,610
    // (the figure of Han et al. 2015, Table 1 "267K", and Molchanov et al. 2017).
    assert_eq!(count("mlp", [1, 28, 28], 10)?, 266_610);
    // LeNet-5 on 28×28 (padding 2), 10 classes: conv1 1·6·25+6 = 156, conv2 6·16·25+16 = 2,416,
    // fc1 400·120+120 = 48,120, fc2 120·84+84 = 10,164, fc3 84·10+10 = 850 → 61,706, the classic
    // "about 60K" of LeCun et al. 1998 and the count PyTorch reports for the same layer list.
    assert_eq!(count("lenet5", [1, 28, 28], 10)?, 61_706);
    // CIFAR ResNets (He et al. 2016, Table 6: 0.27M / 0.46M / 0.85M); the exact counts are those
    // of akamaster/pytorch_resnet_cifar10's README (option A, trainable parameters only).
    assert_eq!(count("resnet20", [3, 32, 32], 10)?, 269_722);
    assert_eq!(count("resnet32", [3, 32, 32], 10)?, 464_154);
    assert_eq!(count("resnet56", [3, 32, 32], 10)?, 853_018);
    // ResNet-18, CIFAR-10 (kuangliu/pytorch-cifar): 11,173,962, as `sum(p.numel())` reports.
    assert_eq!(count("resnet18", [3, 32, 32], 10)?, 11_173_962);
    // VGG-16-bn with a single Linear(512, 10) classifier (kuangliu/pytorch-cifar): 14,728,266.
    assert_eq!(count("vgg16", [3, 32, 32], 10)?, 14_728_266);
    // VGG-11-bn, same style, computed by hand. Convolutions (3×3, with bias):
    //   3→64: 1,792; 64→128: 73,856; 128→256: 295,168; 256→256: 590,080;
    //   256→512: 1,180,160; 3 × (512→512): 3 × 2,359,808 = 7,079,424   → 9,220,480
    // batch norms (γ, β): 2 · (64 + 128 + 256 + 256 + 4 · 512) = 5,504
    // classifier 512·10 + 10 = 5,130                                    → 9,231,114
    assert_eq!(count("vgg11", [3, 32, 32], 10)?, 9_231_114);
    // VGG pools that would go below 1×1 are skipped: the count does not depend on the input size.
    assert_eq!(count("vgg11", [3, 28, 28], 10)?, 9_231_114);
    Ok(())
}

#[test]
fn vit_parameter_counts() -> Result<()> {
    // ViT with width E, depth L, MLP M, patch p, C channels, T = (H/p)(W/p) tokens, K classes:
    //   patch_embed C·p²·E + E;  cls_token E;  pos_embed (T + 1)·E;
    //   per block: 2 layer norms 4E, qkv 3E² + 3E, proj E² + E, fc1 E·M + M, fc2 M·E + E
    //     (E = 192, M = 768: 444,864);  final norm 2E;  head E·K + K.
    // DeiT-Tiny, 224×224, patch 16, 1000 classes: 147,648 + 192 + 197·192 + 12·444,864 + 384
    //   + 193,000 = 5,717,416 (timm's `deit_tiny_patch16_224`, "5.7M" in Touvron et al. 2021).
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
    VisionTransformer::new(&ViTConfig::deit_tiny(), [3, 224, 224], 1000, &Deterministic, &pb)?;
    assert_eq!(store.num_params(), 5_717_416);
    // vit-tiny, patch 4, on 3×32×32 with 10 classes: 3·16·192 + 192 = 9,408; 192; 65·192 = 12,480;
    //   12·444,864 = 5,338,368; 384; 192·10 + 10 = 1,930 → 5,362,762.
    assert_eq!(count("vit-tiny", [3, 32, 32], 10)?, 5_362_762);
    Ok(())
}

#[test]
fn output_shapes_for_every_architecture() -> Result<()> {
    for &arch in ARCHITECTURES {
        for (input, classes) in [([1, 28, 28], 10), ([3, 32, 32], 7)] {
            let (_, net) = build_net(arch, input, classes, 1)?;
            let x = SeededRng::new(2).randn(&[2, input[0], input[1], input[2]], DType::F32, &Device::Cpu)?;
            let mut rng = SeededRng::new(3);
            let y = net.forward(&x, &mut Ctx::train(&mut rng, Sampling::Mean))?;
            assert_eq!(y.dims(), &[2, classes], "{arch} on {input:?}");
            let finite = y.flatten_all()?.to_vec1::<f32>()?.iter().all(|v| v.is_finite());
            assert!(finite, "{arch} on {input:?} gave non-finite logits");
        }
    }
    Ok(())
}

#[test]
fn same_seed_same_weights_different_seed_different() -> Result<()> {
    for (arch, first) in [
        ("lenet5", "conv1.weight"),
        ("resnet20", "conv1.weight"),
        ("vit-tiny", "patch_embed.proj.weight"),
    ] {
        let a = build_net(arch, [3, 32, 32], 10, 5)?.0.tensors();
        let b = build_net(arch, [3, 32, 32], 10, 5)?.0.tensors();
        let c = build_net(arch, [3, 32, 32], 10, 6)?.0.tensors();
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        let mut any_diff = false;
        for (name, t) in &a {
            let diff_b = (t - &b[name])?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert_eq!(diff_b, 0.0, "{arch}: `{name}` differs under the same seed");
            let diff_c = (t - &c[name])?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            any_diff |= diff_c > 0.0;
        }
        assert!(any_diff, "{arch}: a different seed gave identical weights");
        // The first layer's weights differ, not only some late tensor.
        assert!((&a[first] - &c[first])?.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
    }
    Ok(())
}

#[test]
fn parameters_have_pytorch_names() -> Result<()> {
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("mlp", &["fc1.weight", "fc1.bias", "fc3.weight"], &[]),
        (
            "lenet5",
            &["conv1.weight", "conv2.bias", "fc1.weight", "fc2.weight", "fc3.bias"],
            &[],
        ),
        (
            "vgg16",
            &[
                "features.0.weight",
                "features.1.weight",
                "features.3.weight",
                "features.41.weight",
                "classifier.weight",
            ],
            &["features.1.running_mean"],
        ),
        (
            "vgg11",
            &[
                "features.0.weight",
                "features.4.weight",
                "features.25.weight",
                "classifier.bias",
            ],
            &["features.26.running_var"],
        ),
        (
            "resnet20",
            &[
                "conv1.weight",
                "bn1.weight",
                "layer1.0.conv1.weight",
                "layer2.0.bn2.bias",
                "layer3.2.conv2.weight",
                "linear.weight",
                "linear.bias",
            ],
            &["bn1.running_mean", "layer3.2.bn2.running_var"],
        ),
        (
            "resnet18",
            &[
                "layer2.0.shortcut.0.weight",
                "layer2.0.shortcut.1.weight",
                "layer4.1.conv2.weight",
                "linear.weight",
            ],
            &["layer4.0.shortcut.1.running_mean"],
        ),
        (
            "vit-tiny",
            &[
                "patch_embed.proj.weight",
                "patch_embed.proj.bias",
                "cls_token",
                "pos_embed",
                "blocks.0.norm1.weight",
                "blocks.0.attn.qkv.weight",
                "blocks.0.attn.proj.bias",
                "blocks.11.norm2.bias",
                "blocks.0.mlp.fc1.weight",
                "blocks.11.mlp.fc2.weight",
                "norm.weight",
                "head.weight",
                "head.bias",
            ],
            &[],
        ),
    ];
    for &(arch, params, buffers) in cases {
        let (store, _) = build_net(arch, [3, 32, 32], 10, 0)?;
        let p = store.params();
        let b = store.buffers();
        for name in params {
            assert!(p.contains_key(*name), "{arch}: missing parameter `{name}`");
        }
        for name in buffers {
            assert!(b.contains_key(*name), "{arch}: missing buffer `{name}`");
            assert!(!p.contains_key(*name), "{arch}: buffer `{name}` is trainable");
        }
    }
    // Option-A shortcuts have no parameters; convolutions in ResNets have no bias.
    let (store, _) = build_net("resnet20", [3, 32, 32], 10, 0)?;
    for k in store.params().keys() {
        assert!(
            !k.contains("shortcut"),
            "option A has no shortcut parameters, found `{k}`"
        );
        assert!(
            !(k.contains("conv") && k.ends_with("bias")),
            "ResNet convolutions have no bias, found `{k}`"
        );
    }
    // VGG-16 torchvision indices: 13 convolutions at these positions.
    let convs: Vec<String> = build_net("vgg16", [1, 28, 28], 10, 0)?
        .0
        .params()
        .into_keys()
        .filter(|k| k.ends_with(".weight") && k.starts_with("features"))
        .collect();
    let expect = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40];
    for i in expect {
        assert!(convs.contains(&format!("features.{i}.weight")));
        assert!(convs.contains(&format!("features.{}.weight", i + 1)));
    }
    assert_eq!(convs.len(), 26);
    // Shapes as PyTorch lays them out.
    let (store, _) = build_net("vit-tiny", [3, 32, 32], 10, 0)?;
    assert_eq!(
        store.get("pos_embed").map(|v| v.dims().to_vec()),
        Some(vec![1, 65, 192])
    );
    assert_eq!(
        store.get("blocks.3.attn.qkv.weight").map(|v| v.dims().to_vec()),
        Some(vec![576, 192])
    );
    Ok(())
}

#[test]
fn initialisation_follows_the_reference_code() -> Result<()> {
    fn std_of(t: &Tensor) -> Result<f64> {
        let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
        let n = v.len() as f64;
        let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        Ok((v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n).sqrt())
    }
    // akamaster: kaiming_normal_ (fan_in, gain √2): layer3 conv2 [64, 64, 3, 3] → std √(2/576).
    let (store, _) = build_net("resnet56", [3, 32, 32], 10, 0)?;
    let s = std_of(
        store
            .get("layer3.8.conv2.weight")
            .map(|v| v.as_tensor().clone())
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("missing".into()))?,
    )?;
    assert!((s - (2.0f64 / 576.0).sqrt()).abs() < 0.003, "std {s}");
    // timm: trunc-normal(0.02) linear weights (truncation at ±2σ shrinks the std to ≈ 0.0176), zero biases.
    let (store, _) = build_net("vit-tiny", [3, 32, 32], 10, 0)?;
    let qkv = store
        .get("blocks.0.attn.qkv.weight")
        .map(|v| v.as_tensor().clone())
        .ok_or_else(|| candle_core::Error::Msg("missing".into()))?;
    let s = std_of(&qkv)?;
    assert!((s - 0.0176).abs() < 0.0005, "std {s}");
    let bias = store
        .get("blocks.0.mlp.fc1.bias")
        .map(|v| v.as_tensor().clone())
        .ok_or_else(|| candle_core::Error::Msg("missing".into()))?;
    assert_eq!(bias.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
    Ok(())
}

#[test]
fn bad_names_and_shapes_are_refused_clearly() -> Result<()> {
    let err = build_net("alexnet", [3, 32, 32], 10, 0)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("unknown architecture `alexnet`") && err.contains("resnet20") && err.contains("vit-tiny"),
        "{err}"
    );
    // patch 4 does not divide 30
    let err = build_net("vit-tiny", [3, 30, 30], 10, 0)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("patch"), "{err}");
    // too small for LeNet-5's two convolutions and pools
    let err = build_net("lenet5", [1, 12, 12], 10, 0)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("too small"), "{err}");
    assert!(build_net("mlp", [1, 28, 28], 0, 0).is_err());
    assert!(build_net("mlp", [0, 28, 28], 10, 0).is_err());
    // a built network refuses an input of the wrong shape
    let (_, net) = build_net("resnet20", [3, 32, 32], 10, 0)?;
    let x = Tensor::zeros((1, 1, 28, 28), DType::F32, &Device::Cpu)?;
    let mut rng = SeededRng::new(0);
    let err = net
        .forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("expected input [B, 3, 32, 32]"), "{err}");
    Ok(())
}

/// `Module::features` and `Module::head` (last-layer Laplace reads them): for every architecture
/// the logits equal `features(x) · Wᵀ + b` with the head's own weight and bias, computed here.
#[test]
fn features_and_head_reproduce_the_logits() -> Result<()> {
    for arch in ARCHITECTURES {
        let input = [3, 32, 32];
        let (store, net) = build_net(arch, input, 7, 1)?;
        let x = SeededRng::new(2).randn(&[2, 3, 32, 32], DType::F32, &Device::Cpu)?;
        let mut rng = SeededRng::new(0);
        let y = net.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
        let phi = net.features(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
        let head = net.head().expect("every architecture names its head");
        let w = store
            .get(&format!("{head}.weight"))
            .expect("head weight")
            .as_tensor()
            .clone();
        let b = store
            .get(&format!("{head}.bias"))
            .expect("head bias")
            .as_tensor()
            .clone();
        let want = phi.matmul(&w.t()?)?.broadcast_add(&b)?;
        let err = (y - want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(err < 1e-5, "{arch}: max |logits − (φWᵀ + b)| = {err}");
    }
    Ok(())
}
