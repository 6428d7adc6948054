//! Checkpoint round trip through safetensors.

use candle_core::{DType, Device, Result, Tensor};
use secateur_bayes::{Ctx, Module, ParamBuilder, ParamStore, Sampling, SeededRng};
use secateur_models::{build, Deterministic, ModelSpec, Network};
use std::collections::HashMap;

fn build_net(arch: &str, seed: u64) -> Result<(ParamStore, Network)> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(seed), DType::F32, Device::Cpu);
    let net = build(&ModelSpec::new(arch, [3, 32, 32], 10), &Deterministic, &pb)?;
    Ok((store, net))
}

#[test]
fn save_and_load_reproduce_outputs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for arch in ["lenet5", "resnet20", "vgg11"] {
        let (store, net) = build_net(arch, 0)?;
        let x = SeededRng::new(1).randn(&[2, 3, 32, 32], DType::F32, &Device::Cpu)?;
        let mut rng = SeededRng::new(2);
        // one training pass so that batch-norm running statistics are not at their initial values
        net.forward(&x, &mut Ctx::train(&mut rng, Sampling::Mean))?;
        let before = net.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;

        let path = dir.path().join(format!("{arch}.safetensors"));
        let tensors: HashMap<String, Tensor> = store.tensors().into_iter().collect();
        candle_core::safetensors::save(&tensors, &path)?;
        let loaded = candle_core::safetensors::load(&path, &Device::Cpu)?;
        assert_eq!(loaded.len(), store.params().len() + store.buffers().len());

        let (store2, net2) = build_net(arch, 99)?;
        let fresh = net2.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
        assert!(
            (&before - &fresh)?.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0,
            "{arch}: different seeds gave the same outputs"
        );
        store2.load(&loaded)?;
        let after = net2.forward(&x, &mut Ctx::eval(&mut rng, Sampling::Mean))?;
        let diff = (&before - &after)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "{arch}: outputs differ after loading the checkpoint");
    }
    Ok(())
}
