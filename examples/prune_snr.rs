//! Pruning a trained Bayesian network by its posterior: a mean-field LeNet-300-100 is trained on
//! the negative ELBO on the shipped Fashion-MNIST subset, its weights are ranked by the
//! signal-to-noise ratio `|μ| / σ` (Blundell et al. 2015, §5.2), the lowest are removed, and the
//! posterior-mean network is evaluated before and after.
//!
//!     cargo run --release --no-default-features --example prune_snr -- [epochs] [sparsity]
use candle_core::{DType, Device, Result};
use secateur::datasets::{load_images, ImageBatches, Normalizer};
use secateur::models::MeanField;
use secateur::prelude::*;

fn arg<T: std::str::FromStr>(i: usize, default: T) -> Result<T> {
    match std::env::args().nth(i) {
        None => Ok(default),
        Some(a) => a
            .parse()
            .map_err(|_| candle_core::Error::Msg(format!("argument {i}: cannot read `{a}`"))),
    }
}

fn main() -> Result<()> {
    let (epochs, sparsity) = (arg(1, 5usize)?, arg(2, 0.9f64)?);
    let data = load_images("fashion-mnist-mini", None).map_err(candle_core::Error::wrap)?;
    let (dev, norm) = (Device::Cpu, Normalizer::from_set(&data.train));
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::substream(0, 1), DType::F32, dev.clone());
    let net = build(&ModelSpec::new("mlp", [1, 28, 28], 10), &MeanField::default(), &pb)?;
    let settings = TrainSettings::new(epochs, 1e-3).with_objective(Objective::Elbo(ElboConfig::new(data.train.len())));
    let optimizer = Box::new(AdamW::new(AdamWConfig::default())?);
    let mut trainer = Trainer::new(&net, store.clone(), optimizer, settings, SeededRng::substream(0, 2))?;
    let mut train = ImageBatches::new(&data.train, norm.clone(), 128, true, None, dev.clone());
    trainer.fit(&mut train, None, &mut [])?;

    let accuracy = |net: &Network| -> Result<f64> {
        let mut test = ImageBatches::new(&data.test, norm.clone(), 500, false, None, dev.clone());
        let p = predict(net, &mut test, Sampling::Mean, &mut SeededRng::substream(0, 3))?;
        Ok(classification_metrics(&p.probs, &p.labels, p.classes)?.accuracy)
    };
    let dense = accuracy(&net)?;
    // SNR reads only the learned posterior: no data, no gradients
    let mut rng = SeededRng::substream(0, 4);
    let scores = criterion::by_name("snr")?.score(&mut ScoringContext::new(&net, &store, None, &mut rng))?;
    let masks = Allocation::global(sparsity).masks(&scores)?;
    masks.apply(&store)?;
    println!("{}", masks.layer_table(&store, None)?);
    let pruned = accuracy(&net)?;
    println!(
        "posterior-mean test accuracy: dense {dense:.4}, {:.0}% of weights removed by SNR {pruned:.4}",
        100.0 * masks.sparsity()?
    );
    Ok(())
}
