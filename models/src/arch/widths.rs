//! Architectures rebuilt with other layer widths: the narrower networks that structured pruning
//! and compaction produce (`secateur_pruning::structured::compact`).

use super::{
    build, LeNet5, LeNet5Config, Mlp, MlpConfig, ModelSpec, Network, ResNet, ResNetConfig, ShortcutKind, Vgg,
    VggConfig, VggItem,
};
use crate::factory::LayerFactory;
use candle_core::Result;
use secateur_bayes::{Module, ParamBuilder};

/// The VGG configuration of a registry name (`vgg11`, `vgg13`, `vgg16`, `vgg19`).
fn vgg_config(arch: &str) -> Option<VggConfig> {
    match arch {
        "vgg11" => Some(VggConfig::vgg11()),
        "vgg13" => Some(VggConfig::vgg13()),
        "vgg16" => Some(VggConfig::vgg16()),
        "vgg19" => Some(VggConfig::vgg19()),
        _ => None,
    }
}

/// The ResNet configuration of a registry name (`resnet20`, `resnet32`, `resnet56`, `resnet18`).
fn resnet_config(arch: &str) -> Result<Option<ResNetConfig>> {
    Ok(match arch {
        "resnet20" => Some(ResNetConfig::cifar(20)?),
        "resnet32" => Some(ResNetConfig::cifar(32)?),
        "resnet56" => Some(ResNetConfig::cifar(56)?),
        "resnet18" => Some(ResNetConfig::resnet18()),
        _ => None,
    })
}

/// The ResNet of `cfg` with the widths of its weight layers in forward order: per block
/// `conv1` (free: the block's inner width), `conv2` and, with a projection shortcut,
/// `shortcut.0` (both fixed: they join the residual sum), after the stem `conv1` (fixed) and
/// before the classifier. A fixed width other than the network's is refused, naming the layer.
fn resnet_inner(cfg: &ResNetConfig, widths: &[usize]) -> Result<Vec<usize>> {
    let mut fixed = vec![("conv1".to_string(), cfg.stem)];
    let mut free = Vec::new();
    let mut ch = cfg.stem;
    for (k, (&width, &n)) in cfg.widths.iter().zip(&cfg.blocks).enumerate() {
        for j in 0..n {
            let stride = if k > 0 && j == 0 { 2 } else { 1 };
            free.push(fixed.len());
            fixed.push((format!("layer{}.{j}.conv1", k + 1), 0));
            fixed.push((format!("layer{}.{j}.conv2", k + 1), width));
            if (stride != 1 || ch != width) && cfg.shortcut == ShortcutKind::Projection {
                fixed.push((format!("layer{}.{j}.shortcut.0", k + 1), width));
            }
            ch = width;
        }
    }
    if widths.len() != fixed.len() + 1 {
        candle_core::bail!(
            "build_with_widths: this ResNet has {} weight layers, got {} widths",
            fixed.len() + 1,
            widths.len()
        );
    }
    for (i, ((name, w), &got)) in fixed.iter().zip(widths).enumerate() {
        if !free.contains(&i) && *w != got {
            candle_core::bail!(
                "build_with_widths: `{name}` feeds a residual sum and keeps its {w} channels, got {got}"
            );
        }
    }
    Ok(free.iter().map(|&i| widths[i]).collect())
}

/// Builds the architecture `spec.arch` with the output width of every weight layer in forward
/// order given by `widths` (the last being `spec.classes`), as compaction leaves it. Names and
/// initialisation order are those of the full network ([`build`]), so the tensors of a compacted
/// network load strictly. Supports `mlp` (any number of hidden layers: the widths give them),
/// `lenet5`, the VGG family (`vgg11`, `vgg13`, `vgg16`, `vgg19`) and the ResNets (`resnet20`,
/// `resnet32`, `resnet56`, `resnet18`), whose free widths are the blocks' inner ones
/// ([`ResNetConfig::inner`]: the other layers feed residual sums and keep theirs). Other
/// architectures are refused.
///
/// ```
/// use candle_core::{DType, Device};
/// use secateur_bayes::{ParamBuilder, ParamStore, SeededRng};
/// use secateur_models::{build_with_widths, Deterministic, ModelSpec};
/// let store = ParamStore::new();
/// let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
/// let spec = ModelSpec::new("mlp", [1, 28, 28], 10);
/// build_with_widths(&spec, &[200, 50, 10], &Deterministic, &pb).unwrap();
/// assert_eq!(store.num_params(), 784 * 200 + 200 + 200 * 50 + 50 + 50 * 10 + 10);
/// ```
pub fn build_with_widths(
    spec: &ModelSpec,
    widths: &[usize],
    factory: &dyn LayerFactory,
    pb: &ParamBuilder,
) -> Result<Network> {
    spec.validate()?;
    let (input, classes) = (spec.input, spec.classes);
    let Some((&last, hidden)) = widths.split_last() else {
        candle_core::bail!("build_with_widths: no widths given for `{}`", spec.arch);
    };
    if last != classes {
        candle_core::bail!(
            "build_with_widths: the last width (the classifier) is {last}, the spec has {classes} classes"
        );
    }
    if widths.contains(&0) {
        candle_core::bail!("build_with_widths: every width must be positive, got {widths:?}");
    }
    let arity = |n: usize| -> Result<()> {
        if widths.len() != n {
            candle_core::bail!(
                "build_with_widths: `{}` has {n} weight layers, got {} widths",
                spec.arch,
                widths.len()
            );
        }
        Ok(())
    };
    let root: Box<dyn Module> = match spec.arch.as_str() {
        "mlp" => Box::new(Mlp::new(
            &MlpConfig {
                hidden: hidden.to_vec(),
            },
            input,
            classes,
            factory,
            pb,
        )?),
        "lenet5" => {
            arity(5)?;
            let cfg = LeNet5Config {
                conv1: widths[0],
                conv2: widths[1],
                fc1: widths[2],
                fc2: widths[3],
            };
            Box::new(LeNet5::with_config(&cfg, input, classes, factory, pb)?)
        }
        arch => {
            if let Some(mut cfg) = resnet_config(arch)? {
                cfg.inner = resnet_inner(&cfg, widths)?;
                Box::new(ResNet::new(&cfg, input, classes, factory, pb)?)
            } else if let Some(mut cfg) = vgg_config(arch) {
                let convs = cfg.features.iter().filter(|i| matches!(i, VggItem::Conv(_))).count();
                arity(convs + 1)?;
                let mut w = hidden.iter();
                for item in &mut cfg.features {
                    if let VggItem::Conv(c) = item {
                        if let Some(&n) = w.next() {
                            *c = n;
                        }
                    }
                }
                Box::new(Vgg::new(&cfg, input, classes, factory, pb)?)
            } else {
                // an unknown name gets the registry's error and list
                build(spec, factory, pb)?;
                candle_core::bail!(
                    "build_with_widths: architecture `{arch}` is not supported (mlp, lenet5, vgg11, vgg13, vgg16, \
                     vgg19, resnet20, resnet32, resnet56, resnet18)"
                );
            }
        }
    };
    Ok(Network::new(spec.arch.clone(), root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Deterministic;
    use candle_core::{DType, Device};
    use secateur_bayes::{ParamStore, SeededRng};

    fn params(spec: &ModelSpec, widths: Option<&[usize]>) -> Result<usize> {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
        match widths {
            Some(w) => build_with_widths(spec, w, &Deterministic, &pb)?,
            None => build(spec, &Deterministic, &pb)?,
        };
        Ok(store.num_params())
    }

    /// The full widths rebuild the registry's network; a narrower inner width of a ResNet block
    /// removes exactly `c_in·9 + 2 + 9·c_out` parameters per channel (a conv1 filter, its γ and
    /// β, a conv2 input channel); fixed widths and wrong counts are refused.
    #[test]
    fn resnet_inner_widths() -> Result<()> {
        let spec = ModelSpec::new("resnet20", [3, 8, 8], 10);
        let mut w = vec![16];
        for s in [16, 32, 64] {
            for _ in 0..3 {
                w.extend([s, s]);
            }
        }
        w.push(10);
        assert_eq!(params(&spec, Some(&w))?, params(&spec, None)?);
        let full = params(&spec, None)?;
        let mut narrow = w.clone();
        narrow[1] = 10; // layer1.0.conv1: 16 → 10
        narrow[9] = 30; // layer2.1.conv1: 32 → 30
        assert_eq!(
            params(&spec, Some(&narrow))?,
            full - 6 * (16 * 9 + 2 + 9 * 16) - 2 * (32 * 9 + 2 + 9 * 32)
        );
        let mut bad = w.clone();
        bad[2] = 12; // layer1.0.conv2 joins the sum
        let e = params(&spec, Some(&bad)).unwrap_err().to_string();
        assert!(e.contains("layer1.0.conv2") && e.contains("residual"), "{e}");
        let e = params(&spec, Some(&w[1..])).unwrap_err().to_string();
        assert!(e.contains("weight layers"), "{e}");
        // ResNet-18: projection shortcuts are weight layers of their own
        let r18 = ModelSpec::new("resnet18", [3, 8, 8], 10);
        let mut w18 = vec![64];
        let mut ch = 64;
        for s in [64, 128, 256, 512] {
            for j in 0..2 {
                w18.extend([s, s]);
                if j == 0 && ch != s {
                    w18.push(s);
                }
                ch = s;
            }
        }
        w18.push(10);
        assert_eq!(params(&r18, Some(&w18))?, params(&r18, None)?);
        Ok(())
    }
}
