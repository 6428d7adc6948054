//! Scoring a network with a second-order criterion: the exact Gauss–Newton diagonal of a
//! LeNet-5 at initialisation on ten examples per class of the shipped Fashion-MNIST subset,
//! `hts-ggn` (`θ² · diag(G) / 2`, Hassibi & Stork's saliency with the Gauss–Newton matrix, exact
//! for networks of ReLU, max-pool, convolution and linear layers), against first-order SNIP
//! (`|θ · g|`, Lee et al. 2019), and the layers each keeps at 90% sparsity.
//!
//!     cargo run --release --no-default-features --example score_second_order -- [per class]
use candle_core::{DType, Device, Result};
use secateur::datasets::{load_images, ImageBatches, Normalizer};
use secateur::models::Deterministic;
use secateur::prelude::*;
use secateur::pruning::{geometry, Exclusions};

fn main() -> Result<()> {
    let per_class = match std::env::args().nth(1) {
        None => 10,
        Some(a) => a
            .parse()
            .map_err(|_| candle_core::Error::Msg(format!("per class: `{a}` is not a count")))?,
    };
    let images = load_images("fashion-mnist-mini", None).map_err(candle_core::Error::wrap)?;
    let (dev, norm) = (Device::Cpu, Normalizer::from_set(&images.train));
    let spec = ModelSpec::new("lenet5", [1, 28, 28], 10);
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::substream(0, 1), DType::F32, dev.clone());
    let net = build(&spec, &Deterministic, &pb)?;
    // every training image as one batch, then `per_class` of each class drawn from it
    let mut rng = SeededRng::substream(0, 6);
    let mut all = ImageBatches::new(&images.train, norm, images.train.len(), false, None, dev);
    let (x, y) = all.batch(0, &mut rng)?;
    let data = ScoringData::per_class(&x, &y, per_class, 10, 1, &mut rng)?;
    let keep_last = Exclusions {
        last_layer: true,
        ..Default::default()
    }
    .resolve(Some(&geometry::record(&spec)?))?;
    for name in ["hts-ggn", "snip"] {
        let scores = criterion::by_name(name)?.score(&mut ScoringContext::new(&net, &store, Some(&data), &mut rng))?;
        let masks = Allocation::global(0.9).with_exclude(keep_last.clone()).masks(&scores)?;
        println!(
            "{name}: kept per layer at 90% sparsity\n{}",
            masks.layer_table(&store, None)?
        );
    }
    Ok(())
}
