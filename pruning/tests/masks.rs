//! Mask sets against a parameter store: checks, application (deterministic and Bayesian),
//! gradient masking, the training hook through SGD with momentum and weight decay, the
//! per-layer table with FLOPs from the recorded geometry, and safetensors round trips.

mod common;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor};
use common::*;
use secateur_bayes::divergence::{kl_sparse_vd_elementwise, kl_vd_kingma_elementwise};
use secateur_bayes::layers::sparse_vd::{LOG_ALPHA_CLIP, PRUNED_LOG_SIGMA2, THETA_SQ_EPS};
use secateur_bayes::layers::variational_dropout::VD_LOG_ALPHA_MAX;
use secateur_bayes::layers::{BayesLinear, BayesLinearConfig, SvdLinear, SvdLinearConfig, VdLinear, VdLinearConfig};
use secateur_bayes::math::softplus;
use secateur_bayes::variational::Variational;
use secateur_bayes::Divergence;
use secateur_bayes::{Ctx, Module, ParamBuilder, ParamStore, Sampling, SeededRng};
use secateur_inference::hooks::StepHook;
use secateur_inference::optim::{Optimizer, Sgd, SgdConfig};
use secateur_models::{build, Deterministic, ModelSpec};
use secateur_pruning::mask::{load_scores, save_scores, PRUNED_STD};
use secateur_pruning::{geometry, MaskSet};
use std::collections::BTreeMap;

fn t2(v: &[[f32; 2]; 2]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap()
}

#[test]
fn check_refuses_unknown_names_and_wrong_shapes_naming_the_tensor() -> Result<()> {
    let (_, store) = two_layer(2, 2, 2, 0, false)?;
    let mut m = MaskSet::new();
    m.insert("fc1.weight", t2(&[[1., 0.], [1., 1.]]))?;
    m.check(&store)?;
    m.insert("fc9.weight", t2(&[[1., 0.], [1., 1.]]))?;
    let e = m.check(&store).unwrap_err().to_string();
    assert!(e.contains("fc9.weight"), "{e}");
    let mut m = MaskSet::new();
    m.insert("fc2.weight", Tensor::ones((3, 2), DType::F32, &Device::Cpu)?)?;
    let e = m.apply(&store).unwrap_err().to_string();
    assert!(e.contains("fc2.weight") && e.contains("[3, 2]"), "{e}");
    Ok(())
}

#[test]
fn apply_and_mask_grads_zero_exactly_the_masked_entries() -> Result<()> {
    let (net, store) = two_layer(2, 2, 2, 1, false)?;
    let w = mat(&net.fc1.weight);
    let mut m = MaskSet::new();
    m.insert("fc1.weight", t2(&[[1., 0.], [0., 1.]]))?;
    m.apply(&store)?;
    assert_eq!(mat(&net.fc1.weight), vec![vec![w[0][0], 0.0], vec![0.0, w[1][1]]]);
    let mut grads = GradStore::default();
    let g = Tensor::new(&[[1.5f64, 2.5], [3.5, 4.5]], &Device::Cpu)?;
    grads.insert(&net.fc1.weight, g);
    m.mask_grads(&store, &mut grads)?;
    assert_eq!(
        mat(grads.get(&net.fc1.weight).unwrap()),
        vec![vec![1.5, 0.0], vec![0.0, 4.5]]
    );
    // intersection: kept only where both keep; a name in one set keeps its mask
    let mut other = MaskSet::new();
    other.insert("fc1.weight", t2(&[[0., 1.], [1., 1.]]))?;
    other.insert("fc2.weight", t2(&[[1., 1.], [0., 1.]]))?;
    let both = m.intersect(&other)?;
    assert_eq!(
        mat(both.get("fc1.weight").unwrap()),
        vec![vec![0.0, 0.0], vec![0.0, 1.0]]
    );
    assert_eq!(both.kept()?, 1 + 3);
    Ok(())
}

#[test]
fn bayesian_masks_zero_the_mean_and_collapse_the_scale() -> Result<()> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(3), DType::F32, Device::Cpu);
    let fc1 = BayesLinear::new(&pb.pp("fc1"), BayesLinearConfig::new(2, 2).with_init_std(0.1))?;
    let _fc2 = SvdLinear::new(&pb.pp("fc2"), SvdLinearConfig::new(2, 2).with_init_log_sigma2(-2.0))?;
    let mut m = MaskSet::new();
    m.insert("fc1.weight", t2(&[[1., 0.], [1., 1.]]))?;
    m.insert("fc2.weight", t2(&[[0., 1.], [1., 1.]]))?;
    m.apply(&store)?;
    let p = store.params();
    let mu = mat(p["fc1.weight_mu"].as_tensor());
    let sigma = mat(&softplus(p["fc1.weight_rho"].as_tensor())?);
    assert_eq!(mu[0][1], 0.0);
    assert!(
        (sigma[0][1] / PRUNED_STD - 1.0).abs() < 1e-3,
        "pruned σ {}",
        sigma[0][1]
    );
    assert!((sigma[0][0] - 0.1).abs() < 1e-6, "kept σ unchanged");
    let ls2 = mat(p["fc2.weight_log_sigma2"].as_tensor());
    assert!((ls2[0][0] - PRUNED_LOG_SIGMA2).abs() < 1e-4 && (ls2[1][1] + 2.0).abs() < 1e-6);
    // sampled forward passes see the pruned weight as 0: input e_2 reaches output 1 only through
    // W[0][1] (pruned), so output 0 equals the mean bias to within 1e-10·ε
    let x = Tensor::new(&[[0f32, 1.]], &Device::Cpu)?;
    let mut rng = SeededRng::new(0);
    let y0 = mat(&fc1.forward(&x, &mut Ctx::train(&mut rng, Sampling::Mean))?)[0][0];
    for _ in 0..5 {
        let y = mat(&fc1.forward(&x, &mut Ctx::train(&mut rng, Sampling::Weight))?)[0][0];
        let b_noise = 0.1 * 6.0; // the bias is still sampled with σ = 0.1
        assert!((y - y0).abs() < b_noise);
    }
    // gradients of μ and of the scale parameters are masked
    let mut grads = GradStore::default();
    for k in ["fc1.weight_mu", "fc1.weight_rho"] {
        grads.insert(p[k].as_tensor(), Tensor::ones((2, 2), DType::F32, &Device::Cpu)?);
    }
    m.mask_grads(&store, &mut grads)?;
    for k in ["fc1.weight_mu", "fc1.weight_rho"] {
        assert_eq!(
            mat(grads.get(p[k].as_tensor()).unwrap()),
            vec![vec![1.0, 0.0], vec![1.0, 1.0]],
            "{k}"
        );
    }
    Ok(())
}

/// One SGD step (momentum 0.9, weight decay 5e-4) on the cross-entropy of the two-layer net.
fn sgd_step(
    net: &TwoLayer,
    store: &ParamStore,
    sgd: &mut Sgd,
    hook: Option<(&mut MaskSet, usize)>,
    mask_grads_only: bool,
) -> Result<()> {
    let (x, y) = data(4, 3, 2, 8)?;
    let mut rng = SeededRng::new(0);
    let logits = net.forward(&x, &mut Ctx::train(&mut rng, Sampling::Mean))?;
    let mut grads = secateur_bayes::nn::cross_entropy(&logits, &y)?.backward()?;
    match hook {
        Some((h, step)) => {
            h.before_step(store, &mut grads, step)?;
            sgd.step(&store.params(), &grads, 0.1)?;
            if !mask_grads_only {
                h.after_step(store, step)?;
            }
        }
        None => sgd.step(&store.params(), &grads, 0.1)?,
    }
    Ok(())
}

#[test]
fn mask_hook_keeps_pruned_weights_at_zero_through_momentum_and_weight_decay() -> Result<()> {
    let cfg = SgdConfig {
        momentum: 0.9,
        weight_decay: 5e-4,
        ..Default::default()
    };
    let mask = Tensor::new(&[[1f64, 0., 1.], [0., 1., 0.]], &Device::Cpu)?;
    for grads_only in [false, true] {
        let (net, store) = two_layer(3, 2, 2, 7, false)?;
        let mut sgd = Sgd::new(cfg)?;
        // two dense steps fill the momentum buffers, then prune
        sgd_step(&net, &store, &mut sgd, None, false)?;
        sgd_step(&net, &store, &mut sgd, None, false)?;
        let mut m = MaskSet::new();
        m.insert("fc1.weight", mask.clone())?;
        m.apply(&store)?;
        for step in 0..5 {
            sgd_step(&net, &store, &mut sgd, Some((&mut m, step)), grads_only)?;
        }
        let w = mat(&net.fc1.weight);
        let pruned = [w[0][1], w[1][0], w[1][2]];
        if grads_only {
            // control: masking gradients alone is not enough, momentum revives the weights
            assert!(pruned.iter().all(|v| *v != 0.0), "{pruned:?}");
        } else {
            assert_eq!(pruned, [0.0; 3]);
            assert!([w[0][0], w[0][2], w[1][1]].iter().all(|v| *v != 0.0));
        }
    }
    Ok(())
}

#[test]
fn layer_table_counts_parameters_and_flops_from_the_geometry() -> Result<()> {
    let spec = ModelSpec::new("lenet5", [1, 28, 28], 10);
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
    build(&spec, &Deterministic, &pb)?;
    let g = geometry::record(&spec)?;
    let order: Vec<&str> = g.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        order,
        ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc3.weight"]
    );
    let mut m = MaskSet::new();
    // conv1 keeps 1 filter of 6 (25 weights); fc3 loses everything
    let mut c1 = vec![0f32; 150];
    c1[..25].iter_mut().for_each(|v| *v = 1.0);
    m.insert("conv1.weight", Tensor::from_vec(c1, (6, 1, 5, 5), &Device::Cpu)?)?;
    m.insert("fc3.weight", Tensor::zeros((10, 84), DType::F32, &Device::Cpu)?)?;
    let t = m.layer_table(&store, Some(&g))?;
    let row = |n: &str| t.rows.iter().find(|r| r.name == n).unwrap().clone();
    // conv: k²·C_in·C_out·H_out·W_out = 25·1·6·28·28 (padding 2 keeps 28×28); conv2 25·6·16·10·10
    assert_eq!(row("conv1.weight").flops, Some(25 * 6 * 28 * 28));
    assert_eq!(row("conv1.weight").flops_kept, Some(25 * 28 * 28));
    assert_eq!(row("conv2.weight").flops, Some(25 * 6 * 16 * 100));
    assert_eq!(row("fc1.weight").flops, Some(400 * 120));
    assert_eq!(row("fc3.weight").kept, 0);
    assert_eq!(t.collapsed(), ["fc3.weight"]);
    assert_eq!(m.collapsed()?, ["fc3.weight"]);
    assert_eq!(t.params(), 150 + 2400 + 48000 + 10080 + 840);
    assert_eq!(t.kept(), t.params() - 125 - 840);
    assert!(t.to_string().contains("fc3.weight (collapsed)"));
    // conv1 keeps 25 weights for 6 filters: 5 filters have no input, but 25 ≥ 6 weights
    assert_eq!((row("conv1.weight").units, row("conv1.weight").dead_units), (6, 5));
    assert!(!row("conv1.weight").near_collapse && !row("fc3.weight").near_collapse);
    // near collapse: fc1 keeps 14 of 48,000 weights for 120 units (what HP at 99% left);
    // fc3, the output layer, keeps weights but leaves class 7 without input
    let mut m = MaskSet::new();
    let mut f1 = vec![0f32; 48000];
    f1[..14].iter_mut().for_each(|v| *v = 1.0);
    m.insert("fc1.weight", Tensor::from_vec(f1, (120, 400), &Device::Cpu)?)?;
    let mut f3 = vec![1f32; 840];
    f3[7 * 84..8 * 84].iter_mut().for_each(|v| *v = 0.0);
    m.insert("fc3.weight", Tensor::from_vec(f3, (10, 84), &Device::Cpu)?)?;
    // fc2: 200 weights for 84 units, each unit keeps some: healthy
    let mut f2 = vec![0f32; 10080];
    for u in 0..84 {
        f2[u * 120] = 1.0;
        f2[u * 120 + 1] = 1.0;
    }
    m.insert("fc2.weight", Tensor::from_vec(f2, (84, 120), &Device::Cpu)?)?;
    let t = m.layer_table(&store, Some(&g))?;
    assert_eq!(t.near_collapse(), ["fc1.weight", "fc3.weight"]);
    assert!(t.collapsed().is_empty());
    let text = t.to_string();
    assert!(
        text.contains("fc1.weight (near collapse)") && text.contains("| 1 of 10 |"),
        "{text}"
    );
    // ViT linear layers run once per token: positions = 64 patches + the class token
    let vit = geometry::record(&ModelSpec::new("vit-tiny", [3, 32, 32], 10))?;
    assert_eq!(vit.get("blocks.0.attn.qkv.weight").unwrap().positions, 65);
    assert_eq!(vit.first().unwrap().name, "patch_embed.proj.weight");
    assert_eq!(vit.first().unwrap().positions, 64);
    assert_eq!(vit.last().unwrap().name, "head.weight");
    Ok(())
}

#[test]
fn masks_and_scores_round_trip_through_safetensors() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let mut m = MaskSet::new();
    m.insert("features.0.weight", t2(&[[1., 0.], [0., 1.]]))?;
    m.insert("classifier.weight", t2(&[[0., 0.], [1., 1.]]))?;
    let p = dir.path().join("masks.safetensors");
    m.save(&p)?;
    let raw = candle_core::safetensors::load(&p, &Device::Cpu)?;
    assert_eq!(
        raw["features.0.weight"].dtype(),
        DType::U8,
        "PyTorch-style names, u8 0/1"
    );
    let back = MaskSet::load(&p, &Device::Cpu)?;
    assert_eq!(
        back.masks().keys().collect::<Vec<_>>(),
        m.masks().keys().collect::<Vec<_>>()
    );
    for (k, v) in m.masks() {
        assert_eq!(mat(back.get(k).unwrap()), mat(v));
    }
    let scores = BTreeMap::from([("fc1.weight".to_string(), t2(&[[0.5, -1.], [2., 3.]]))]);
    let sp = dir.path().join("scores.safetensors");
    save_scores(&scores, &sp)?;
    assert_eq!(
        mat(&load_scores(&sp, &Device::Cpu)?["fc1.weight"]),
        mat(&scores["fc1.weight"])
    );
    // a non-binary tensor is refused on load, naming the file
    candle_core::safetensors::save(
        &BTreeMap::from([("x".to_string(), t2(&[[0.5, 1.], [1., 1.]]))])
            .into_iter()
            .collect(),
        &sp,
    )?;
    let e = MaskSet::load(&sp, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("scores.safetensors") && e.contains("`x`"), "{e}");
    Ok(())
}

/// Pruned sparse-VD and per-weight VD weights sit at the **pruned** end of `log α` (Molchanov et
/// al. 2017: `+8`; Kingma et al. 2015's clipped range: `0`), checked through the KL the layer
/// reports: it equals the kept weights' terms plus the closed-form value at the pruned end for
/// each pruned weight (≈ 0 for sparse VD; at `log α = −8` it would be about 4.6 nats each).
#[test]
fn pruned_variational_dropout_weights_sit_at_the_pruned_end_of_log_alpha() -> Result<()> {
    assert!((PRUNED_LOG_SIGMA2 - (THETA_SQ_EPS.ln() + LOG_ALPHA_CLIP + 1.0)).abs() < 1e-12);
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(4), DType::F64, Device::Cpu);
    let svd = SvdLinear::new(&pb.pp("a"), SvdLinearConfig::new(2, 2).with_init_log_sigma2(-6.0))?;
    let vd = VdLinear::new(&pb.pp("b"), VdLinearConfig::new(2, 2))?;
    let mut rng = SeededRng::new(0);
    let kl = |l: &dyn Variational, rng: &mut SeededRng| -> Result<f64> {
        l.divergence(&Divergence::Kl, rng)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()
    };
    // the kept weights' terms, from the log α each layer reports before pruning
    let la_svd = svd.posterior_stats()?[0].log_alpha.clone().unwrap();
    let la_vd = vd.posterior_stats()?[0].log_alpha.clone().unwrap();
    let keep = t2(&[[1., 0.], [0., 1.]]);
    let kept_kl = |la: &Tensor, f: fn(&Tensor) -> Result<Tensor>| -> Result<f64> {
        f(la)?.mul(&keep.to_dtype(DType::F64)?)?.sum_all()?.to_scalar::<f64>()
    };
    let end = |v: f64, f: fn(&Tensor) -> Result<Tensor>| -> Result<f64> {
        f(&Tensor::new(&[v], &Device::Cpu)?)?.sum_all()?.to_scalar::<f64>()
    };
    let want_svd = kept_kl(&la_svd, kl_sparse_vd_elementwise)? + 2.0 * end(LOG_ALPHA_CLIP, kl_sparse_vd_elementwise)?;
    let want_vd = kept_kl(&la_vd, kl_vd_kingma_elementwise)? + 2.0 * end(VD_LOG_ALPHA_MAX, kl_vd_kingma_elementwise)?;
    let mut m = MaskSet::new();
    m.insert("a.weight", keep.clone())?;
    m.insert("b.weight", keep.clone())?;
    m.apply(&store)?;
    let la = mat(&svd.posterior_stats()?[0].log_alpha.clone().unwrap());
    assert_eq!((la[0][1], la[1][0]), (LOG_ALPHA_CLIP, LOG_ALPHA_CLIP), "{la:?}");
    let (got_svd, got_vd) = (kl(&svd, &mut rng)?, kl(&vd, &mut rng)?);
    assert!(
        (got_svd - want_svd).abs() < 1e-9,
        "sparse VD KL {got_svd} vs {want_svd}"
    );
    assert!((got_vd - want_vd).abs() < 1e-9, "VD KL {got_vd} vs {want_vd}");
    // the pruned end costs almost nothing; the other end would cost 4.6 nats per weight
    assert!(end(LOG_ALPHA_CLIP, kl_sparse_vd_elementwise)? < 1e-3);
    assert!(end(-LOG_ALPHA_CLIP, kl_sparse_vd_elementwise)? > 4.0);
    Ok(())
}
