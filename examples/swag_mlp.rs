//! SWAG (Maddox et al. 2019) on a small MLP and the shipped Fashion-MNIST subset: SGD with a
//! SWAG collector observing training, then the Bayesian model average of S SWAG samples,
//! compared with the last SGD iterate.
//!
//!     cargo run --release --no-default-features --example swag_mlp -- [epochs] [samples]
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
    let (epochs, samples) = (arg(1, 6)?, arg(2, 20)?);
    let data = load_images("fashion-mnist-mini", None).map_err(candle_core::Error::wrap)?;
    let (dev, norm) = (Device::Cpu, Normalizer::from_set(&data.train));
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::substream(0, 1), DType::F32, dev.clone());
    let net = seq()
        .add(Flatten)
        .add(Linear::new(&pb.pp("fc1"), LinearCfg::new(784, 256))?)
        .add(Relu)
        .add(Linear::new(&pb.pp("fc2"), LinearCfg::new(256, 10))?);
    // collect a snapshot every 20 steps of the second half of training
    let swag = SwagConfig {
        start_epoch: epochs / 2,
        collect_every: 20,
        every: secateur::inference::swag::CollectEvery::Steps,
        ..Default::default()
    };
    let mut collector = SwagCollector::new(&store, swag)?;
    let optimizer = Box::new(Sgd::new(SgdConfig {
        momentum: 0.9,
        ..Default::default()
    })?);
    let settings = TrainSettings::new(epochs, 0.05);
    let mut trainer = Trainer::new(&net, store.clone(), optimizer, settings, SeededRng::substream(0, 2))?;
    let mut train = ImageBatches::new(&data.train, norm.clone(), 64, true, None, dev.clone());
    trainer.fit(&mut train, None, &mut [&mut collector])?;
    let mut test = ImageBatches::new(&data.test, norm, 500, false, None, dev);
    let mut rng = SeededRng::substream(0, 3);
    let sgd = predict(&net, &mut test, Sampling::Mean, &mut rng)?;
    let m = classification_metrics(&sgd.probs, &sgd.labels, sgd.classes)?;
    println!(
        "last SGD iterate: accuracy {:.4}, NLL {:.4}, ECE {:.4}",
        m.accuracy, m.nll, m.ece
    );
    let posterior = collector.posterior(SwagKind::Full)?;
    println!(
        "SWAG: {} snapshots, {} deviation columns",
        collector.collected(),
        posterior.columns()
    );
    let settings = BmaSettings {
        samples,
        ..Default::default()
    };
    let bma = predict_bma(&net, &store, &posterior, &mut test, None, settings, &mut rng)?;
    let p = &bma.predictions;
    let m = classification_metrics(&p.probs, &p.labels, p.classes)?;
    println!(
        "SWAG ({samples} samples): accuracy {:.4}, NLL {:.4}, ECE {:.4}, mutual information {:.4} nats",
        m.accuracy,
        m.nll,
        m.ece,
        bma.mean_mutual_information()
    );
    Ok(())
}
