//! Node recovery with spike-and-slab node selection (Jantre, Bhattacharya & Maiti 2021, whose
//! simulations claim that the layer keeps the nodes the data need and removes the others).
//!
//! The data come from a teacher with two hidden ReLU nodes, `y = relu(a·x) − relu(b·x) + ε`,
//! `x ~ N(0, I₆)`, `ε ~ N(0, 0.3²)`, where `a` reads only inputs 1–2 and `b` only inputs 3–4 (inputs
//! 5–6 are irrelevant). A student MLP `6 → 8 → 1` whose eight hidden nodes are spike-and-slab
//! (layer-wise λ of the reference code) must keep exactly two nodes, point them along `a` and `b`,
//! and fit the function: fewer than two nodes cannot represent it, more cost prior mass for
//! nothing. The nodes leave slowly (Adam moves an inclusion logit by about its step size per step
//! only when the gradient's sign is steady, and the straight-through gradient is noisy): two seeds
//! reached two nodes after about 450 and 750 of the 1,500 epochs (20 steps each, lr 1e-2); at
//! 150 epochs all eight were still in.

use candle_core::{DType, Device, Result, Tensor};
use secateur_bayes::layers::spike_slab::layerwise_inclusion;
use secateur_bayes::{ParamBuilder, ParamStore, Prior, Sampling, SeededRng};
use secateur_inference::batches::Batches;
use secateur_inference::elbo::{ElboConfig, Objective};
use secateur_inference::likelihood::{Gaussian, Likelihood, Noise};
use secateur_inference::optim::{AdamW, AdamWConfig};
use secateur_inference::schedule::Schedule;
use secateur_inference::train::{TrainSettings, Trainer};
use secateur_models::arch::{Mlp, MlpConfig};
use secateur_models::bayes_factory::SpikeSlab;

const DIM: usize = 6;
const A: [f32; DIM] = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
const B: [f32; DIM] = [0.0, 0.0, 1.0, -1.0, 0.0, 0.0];

struct Teacher {
    x: Vec<f32>,
    y: Vec<f32>,
    order: Vec<usize>,
}

fn dot(w: &[f32], x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(a, b)| a * b).sum()
}

impl Teacher {
    fn new(n: usize, seed: u64, noise: f32) -> Self {
        let mut rng = SeededRng::new(seed);
        let x = rng.normal_vec(n * DIM);
        let e = rng.normal_vec(n);
        let y = (0..n)
            .map(|i| {
                let xi = &x[i * DIM..(i + 1) * DIM];
                dot(&A, xi).max(0.0) - dot(&B, xi).max(0.0) + noise * e[i]
            })
            .collect();
        Self {
            x,
            y,
            order: (0..n).collect(),
        }
    }
}

impl Batches for Teacher {
    fn num_batches(&self) -> usize {
        self.y.len().div_ceil(50)
    }
    fn num_examples(&self) -> usize {
        self.y.len()
    }
    fn start_epoch(&mut self, _epoch: usize, rng: &mut SeededRng) {
        use rand::seq::SliceRandom;
        self.order.shuffle(rng);
    }
    fn batch(&mut self, i: usize, _rng: &mut SeededRng) -> Result<(Tensor, Tensor)> {
        let idx = &self.order[i * 50..((i + 1) * 50).min(self.y.len())];
        let x: Vec<f32> = idx
            .iter()
            .flat_map(|&j| self.x[j * DIM..(j + 1) * DIM].to_vec())
            .collect();
        let y: Vec<f32> = idx.iter().map(|&j| self.y[j]).collect();
        let b = idx.len();
        Ok((
            Tensor::from_vec(x, (b, DIM, 1, 1), &Device::Cpu)?,
            Tensor::from_vec(y, (b, 1), &Device::Cpu)?,
        ))
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
}

#[test]
fn spike_and_slab_keeps_the_teachers_two_nodes() -> Result<()> {
    let n = 1000;
    for (seed, noise) in [(0u64, 0.3f64), (1, 0.3)] {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(10 + seed), DType::F32, Device::Cpu);
        let lambda = layerwise_inclusion(&[DIM, 8, 1], n).map_err(candle_core::Error::wrap)?;
        let factory = SpikeSlab::new(
            Prior::SpikeAndSlab {
                pi: lambda[0],
                slab_std: 1.0,
            },
            1e-3,
            0.99,
            0.5,
        )?
        .with_layer_inclusion(lambda)?;
        let g = Gaussian::new(Noise::Fixed { std: noise }, 1, &pb)?;
        let net = Mlp::new(&MlpConfig { hidden: vec![8] }, [DIM, 1, 1], 1, &factory, &pb)?;
        let mut train = Teacher::new(n, 100 + seed, noise as f32);
        let settings = TrainSettings {
            epochs: 1500,
            lr: 1e-2,
            schedule: Schedule::default(),
            sampling: Sampling::Local,
            objective: Objective::Elbo(ElboConfig::new(n)),
        };
        let opt = AdamW::new(AdamWConfig {
            weight_decay: 0.0,
            ..AdamWConfig::default()
        })?;
        let mut trainer = Trainer::new(&net, store.clone(), Box::new(opt), settings, SeededRng::new(20 + seed))?
            .with_likelihood(Likelihood::Gaussian(g));
        let state = trainer.fit(&mut train, None, &mut [])?;
        let units = &state.history.last().expect("epochs").units;
        assert_eq!(units.len(), 1, "{units:?}");
        assert_eq!((units[0].layer.as_str(), units[0].total), ("fc1", 8));
        assert_eq!(units[0].kept, 2, "seed {seed}: {units:?}");
        // the kept nodes point along a and b (up to sign, which the output weight carries)
        let logit = store.get("fc1.inclusion_logit").expect("logits").to_vec1::<f32>()?;
        let w = store.get("fc1.weight_mu").expect("weights").to_vec2::<f32>()?;
        let kept: Vec<&Vec<f32>> = (0..8).filter(|&j| logit[j] >= 0.0).map(|j| &w[j]).collect();
        let best = |t: &[f32]| kept.iter().map(|k| cosine(k, t).abs()).fold(0.0f32, f32::max);
        assert!(best(&A) > 0.95 && best(&B) > 0.95, "seed {seed}: {kept:?}");
        // the removed nodes are sure to be out, the kept ones sure to be in
        let gamma: Vec<f32> = logit.iter().map(|&t| 1.0 / (1.0 + (-t).exp())).collect();
        assert!(
            gamma.iter().all(|&g| !(0.05..=0.95).contains(&g)),
            "seed {seed}: γ {gamma:?}"
        );
        // and the fit is good: the training NLL per example is near that of the noise alone,
        // ½ log(2π·0.3²) + ½ ≈ 0.21 (a network without one of the two nodes is far off)
        let nll = state.history.last().expect("epochs").train_nll;
        assert!(nll < 0.35, "seed {seed}: train NLL {nll}");
    }
    Ok(())
}
