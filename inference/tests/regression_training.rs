//! End-to-end regression training: a small mean-field MLP under each Gaussian noise kind must
//! learn a noisy 1-D function well enough to beat the best constant predictor's NLL.

use candle_core::{DType, Device, Result, Tensor};
use secateur_bayes::{ParamBuilder, ParamStore, Prior, Sampling, SeededRng};
use secateur_inference::batches::Batches;
use secateur_inference::elbo::{ElboConfig, Objective};
use secateur_inference::likelihood::{Gaussian, Likelihood, Noise, LOG_STD_NAME};
use secateur_inference::metrics::regression_metrics;
use secateur_inference::optim::{AdamW, AdamWConfig};
use secateur_inference::predict::predict_regression;
use secateur_inference::schedule::Schedule;
use secateur_inference::train::{TrainSettings, Trainer};
use secateur_models::arch::{Mlp, MlpConfig};
use secateur_models::MeanField;

/// `y = sin(3x) + ε`, `ε ~ N(0, (0.1 + 0.2|x|)²)`, `x ~ U(−1, 1)`: inputs `[N, 1, 1, 1]`.
struct Toy {
    x: Vec<f32>,
    y: Vec<f32>,
    batch: usize,
    order: Vec<usize>,
    shuffle: bool,
}

impl Toy {
    fn new(n: usize, seed: u64, shuffle: bool) -> Self {
        let mut rng = SeededRng::new(seed);
        let x = rng.uniform_vec(n, -1.0, 1.0);
        let e = rng.normal_vec(n);
        let y = x
            .iter()
            .zip(&e)
            .map(|(&x, &e)| (3.0 * x).sin() + (0.1 + 0.2 * x.abs()) * e)
            .collect();
        Self {
            x,
            y,
            batch: 32,
            order: (0..n).collect(),
            shuffle,
        }
    }
}

impl Batches for Toy {
    fn num_batches(&self) -> usize {
        self.x.len().div_ceil(self.batch)
    }
    fn num_examples(&self) -> usize {
        self.x.len()
    }
    fn start_epoch(&mut self, _epoch: usize, rng: &mut SeededRng) {
        if self.shuffle {
            use rand::seq::SliceRandom;
            self.order.shuffle(rng);
        }
    }
    fn batch(&mut self, i: usize, _rng: &mut SeededRng) -> Result<(Tensor, Tensor)> {
        let idx = &self.order[i * self.batch..((i + 1) * self.batch).min(self.x.len())];
        let x: Vec<f32> = idx.iter().map(|&j| self.x[j]).collect();
        let y: Vec<f32> = idx.iter().map(|&j| self.y[j]).collect();
        let b = idx.len();
        Ok((
            Tensor::from_vec(x, (b, 1, 1, 1), &Device::Cpu)?,
            Tensor::from_vec(y, (b, 1), &Device::Cpu)?,
        ))
    }
}

#[test]
fn training_beats_the_best_constant_predictor_for_each_noise_kind() -> Result<()> {
    let mut test = Toy::new(400, 2, false);
    // The best constant Gaussian N(ȳ, s²) (fitted on the test set itself) has NLL
    // ½ log(2π s²) + ½; a model that has learned sin(3x) must do clearly better.
    let n = test.y.len() as f64;
    let mean = test.y.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = test.y.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let constant_nll = 0.5 * (2.0 * std::f64::consts::PI * var).ln() + 0.5;
    for noise in [
        Noise::Fixed { std: 0.3 },
        Noise::Homoscedastic { init_std: 1.0 },
        Noise::Heteroscedastic { min_std: 1e-3 },
    ] {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(1), DType::F32, Device::Cpu);
        let factory = MeanField::new(Prior::Gaussian { mean: 0.0, std: 1.0 }, 1e-3)?;
        let g = Gaussian::new(noise, 1, &pb)?;
        let net = Mlp::new(
            &MlpConfig { hidden: vec![32] },
            [1, 1, 1],
            g.output_dim(),
            &factory,
            &pb,
        )?;
        let mut train = Toy::new(512, 1, true);
        let mut elbo = ElboConfig::new(512);
        elbo.mc_samples = 1;
        let settings = TrainSettings {
            epochs: 40,
            lr: 1e-2,
            schedule: Schedule::default(),
            sampling: Sampling::Local,
            objective: Objective::Elbo(elbo),
        };
        let opt = AdamW::new(AdamWConfig {
            weight_decay: 0.0,
            ..AdamWConfig::default()
        })?;
        let mut trainer = Trainer::new(&net, store.clone(), Box::new(opt), settings, SeededRng::new(3))?
            .with_likelihood(Likelihood::Gaussian(g.clone()));
        let state = trainer.fit(&mut train, Some(&mut test), &mut [])?;
        let first = &state.history[0];
        let last = state.history.last().unwrap();
        assert!(first.train_accuracy.is_nan() && last.train_rmse.is_some() && last.eval.is_none());
        assert!(
            last.train_nll < first.train_nll - 0.3,
            "{noise:?}: {} → {}",
            first.train_nll,
            last.train_nll
        );
        let p = predict_regression(&net, &g, &mut test, Sampling::Local, 8, &mut SeededRng::new(4))?;
        let m = regression_metrics(&p)?;
        assert!(
            m.nll < constant_nll - 0.5,
            "{noise:?}: NLL {} vs constant {constant_nll}",
            m.nll
        );
        assert!(
            m.rmse < 0.6 * var.sqrt(),
            "{noise:?}: RMSE {} vs std {}",
            m.rmse,
            var.sqrt()
        );
        assert!(m.mean_epistemic_var > 0.0);
        let eval = last.eval_regression.unwrap();
        assert!(eval.rmse < 0.6 * var.sqrt() && eval.mean_epistemic_var == 0.0);
        if let Noise::Homoscedastic { .. } = noise {
            // the learned σ moved from 1 towards the noise level (≈ 0.1–0.3)
            let s = store.get(LOG_STD_NAME).unwrap().to_vec1::<f32>()?[0].exp();
            assert!(s < 0.5, "learned σ {s}");
        }
    }
    Ok(())
}
