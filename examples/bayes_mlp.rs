//! A Bayesian MLP (mean-field Gaussian weights, Blundell et al. 2015) trained on the negative ELBO
//! on the shipped Fashion-MNIST subset, then evaluated by Monte Carlo prediction.
//!
//!     cargo run --release --no-default-features --example bayes_mlp -- [epochs] [mc samples]
use candle_core::{DType, Device, Result};
use secateur::datasets::{load_images, ImageBatches, Normalizer};
use secateur::prelude::*;

fn arg(i: usize, default: usize) -> Result<usize> {
    std::env::args().nth(i).map_or(Ok(default), |a| {
        a.parse()
            .map_err(|_| candle_core::Error::Msg(format!("argument {i}: `{a}` is not a count")))
    })
}

fn main() -> Result<()> {
    let (epochs, samples) = (arg(1, 5)?, arg(2, 20)?);
    let data = load_images("fashion-mnist-mini", None).map_err(candle_core::Error::wrap)?;
    let (dev, norm) = (Device::Cpu, Normalizer::from_set(&data.train));
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::substream(0, 1), DType::F32, dev.clone());
    let net = seq()
        .add(Flatten)
        .add(BayesLinear::new(&pb.pp("fc1"), BayesLinearConfig::new(784, 256))?)
        .add(Relu)
        .add(BayesLinear::new(&pb.pp("fc2"), BayesLinearConfig::new(256, 10))?);
    // the negative ELBO per example: NLL + KL / N (β = 1, T = 1, one sample per step)
    let elbo = Objective::Elbo(ElboConfig::new(data.train.len()));
    let settings = TrainSettings::new(epochs, 1e-3).with_objective(elbo);
    let optimizer = Box::new(AdamW::new(AdamWConfig::default())?);
    let mut trainer = Trainer::new(&net, store, optimizer, settings, SeededRng::substream(0, 2))?;
    let mut train = ImageBatches::new(&data.train, norm.clone(), 128, true, None, dev.clone());
    let state = trainer.fit(&mut train, None, &mut [])?;
    if let Some(r) = state.history.last() {
        let kl = r.train_divergence / data.train.len() as f64;
        println!("epoch {}: NLL {:.4}, KL/N {kl:.4}", r.epoch, r.train_nll);
    }
    // S forward passes per test batch, each with fresh pre-activation noise
    let mut test = ImageBatches::new(&data.test, norm, 500, false, None, dev);
    let mc = predict_mc(
        &net,
        &mut test,
        Sampling::Local,
        samples,
        &mut SeededRng::substream(0, 3),
    )?;
    let p = &mc.predictions;
    let m = classification_metrics(&p.probs, &p.labels, p.classes)?;
    println!(
        "test ({samples} samples): accuracy {:.4}, NLL {:.4}, ECE {:.4}",
        m.accuracy, m.nll, m.ece
    );
    println!("mean mutual information {:.4} nats", mc.mean_mutual_information());
    Ok(())
}
