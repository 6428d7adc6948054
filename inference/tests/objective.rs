//! The training objective as a value: `elbo_loss` against an independent closed form, the
//! trainer's loss against `elbo_loss` on the same draws, and custom objectives and evaluations
//! plugged into the trainer.

use candle_core::{DType, Device, Result, Tensor};
use secateur_bayes::layers::{BayesLinear, BayesLinearConfig};
use secateur_bayes::{Ctx, Module, ParamBuilder, ParamStore, Prior, Sampling, SeededRng};
use secateur_inference::batches::{Batches, TensorBatches};
use secateur_inference::elbo::{elbo_loss, ElboConfig, Objective};
use secateur_inference::evaluate::{EvalMetrics, Evaluation};
use secateur_inference::likelihood::Likelihood;
use secateur_inference::metrics::ClassificationMetrics;
use secateur_inference::objective::{BatchLoss, ObjectiveContext, OnePassNll, TrainingObjective};
use secateur_inference::optim::{Sgd, SgdConfig};
use secateur_inference::train::{Checkpoint, EpochRecord, Observer, StepInfo, TrainSettings, Trainer};
use std::cell::Cell;

const PRIOR_MEAN: f64 = 0.1;
const PRIOR_STD: f64 = 0.5;

/// A mean-field layer 3 → 2 with bias under the prior `N(0.1, 0.5²)`, posterior σ ≈ 0.3.
fn layer(dtype: DType, seed: u64) -> Result<(ParamStore, BayesLinear)> {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(store.clone(), SeededRng::new(seed), dtype, Device::Cpu);
    let cfg = BayesLinearConfig::new(3, 2)
        .with_prior(Prior::Gaussian {
            mean: PRIOR_MEAN,
            std: PRIOR_STD,
        })
        .with_init_std(0.3);
    let fc = BayesLinear::new(&pb.pp("fc"), cfg)?;
    Ok((store, fc))
}

fn values(store: &ParamStore, name: &str) -> Result<Vec<f64>> {
    let v = store
        .get(name)
        .ok_or_else(|| candle_core::Error::Msg(format!("no parameter `{name}`")))?;
    v.as_tensor().flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()
}

/// `Σ KL(N(μ, σ²) ‖ N(m, s²)) = Σ [log(s/σ) + (σ² + (μ − m)²) / (2s²) − ½]`, σ = softplus(ρ),
/// written out in f64 from the stored μ and ρ.
fn closed_form_kl(store: &ParamStore) -> Result<f64> {
    let mut kl = 0.0;
    for part in ["weight", "bias"] {
        let mu = values(store, &format!("fc.{part}_mu"))?;
        let rho = values(store, &format!("fc.{part}_rho"))?;
        for (m, r) in mu.iter().zip(&rho) {
            let sigma = r.max(0.0) + (-r.abs()).exp().ln_1p();
            kl += (PRIOR_STD / sigma).ln() + (sigma * sigma + (m - PRIOR_MEAN).powi(2)) / (2.0 * PRIOR_STD * PRIOR_STD)
                - 0.5;
        }
    }
    Ok(kl)
}

#[test]
fn elbo_loss_is_the_nll_plus_beta_t_kl_over_n() -> Result<()> {
    let (store, _fc) = layer(DType::F64, 1)?;
    let kl = closed_form_kl(&store)?;
    assert!(kl > 0.1, "the KL should be far from 0 here, got {kl}");
    let nll = Tensor::new(0.8f64, &Device::Cpu)?;
    for (n, beta, t) in [(10usize, 1.0, 1.0), (200, 0.5, 2.0), (7, 0.0, 0.1), (1, 3.0, 0.25)] {
        let got = elbo_loss(&nll, &store, n, beta, t)?.to_scalar::<f64>()?;
        let want = 0.8 + beta * t * kl / n as f64;
        assert!(
            (got - want).abs() < 1e-12 * (1.0 + want.abs()),
            "N={n}, β={beta}, T={t}: {got} vs {want}"
        );
    }
    // gradients flow to the posterior parameters through the KL
    let mu = store.get("fc.weight_mu").expect("weight_mu exists");
    let g = elbo_loss(&nll, &store, 10, 1.0, 1.0)?.backward()?;
    assert!(g.get(mu.as_tensor()).is_some());
    // without probabilistic layers the loss is the NLL
    let empty = ParamStore::new();
    assert_eq!(elbo_loss(&nll, &empty, 10, 1.0, 1.0)?.to_scalar::<f64>()?, 0.8);
    Ok(())
}

#[test]
fn elbo_loss_refuses_bad_arguments_by_name() -> Result<()> {
    let (store, _fc) = layer(DType::F32, 1)?;
    let nll = Tensor::new(0.8f32, &Device::Cpu)?;
    let err = |n, b, t| elbo_loss(&nll, &store, n, b, t).unwrap_err().to_string();
    assert!(err(0, 1.0, 1.0).contains("`n_train`"));
    assert!(err(10, -1.0, 1.0).contains("`beta`"));
    assert!(err(10, f64::NAN, 1.0).contains("`beta`"));
    assert!(err(10, 1.0, 0.0).contains("`temperature`"));
    assert!(err(10, 1.0, f64::INFINITY).contains("`temperature`"));
    Ok(())
}

/// Records every step's loss.
#[derive(Default)]
struct Losses(Vec<f64>);

impl Observer for Losses {
    fn on_step(&mut self, info: &StepInfo) -> Result<()> {
        self.0.push(info.loss);
        Ok(())
    }
    fn on_epoch(&mut self, _record: &EpochRecord, _ckpt: &Checkpoint) -> Result<()> {
        Ok(())
    }
}

/// 12 examples of 3 features with labels in {0, 1}, in batches of 5 (the last has 2).
fn data(shuffle: bool) -> Result<TensorBatches> {
    let mut rng = SeededRng::new(11);
    let x = rng.randn(&[12, 3], DType::F32, &Device::Cpu)?;
    let y = Tensor::new(&[0u32, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0], &Device::Cpu)?;
    let b = TensorBatches::new(x, y, 5)?;
    Ok(if shuffle { b.shuffled() } else { b })
}

#[test]
fn the_trainers_first_loss_is_elbo_loss_on_the_same_draws() -> Result<()> {
    const SEED: u64 = 7;
    for shuffle in [false, true] {
        let (store, fc) = layer(DType::F32, 3)?;
        // independently: replay the trainer's draws (the epoch's shuffle, then one training pass)
        // with a generator of the same seed, and form the loss with `elbo_loss`
        let mut rng = SeededRng::new(SEED);
        let mut replay = data(shuffle)?;
        replay.start_epoch(0, &mut rng);
        let (x, y) = replay.batch(0, &mut rng)?;
        let out = fc.forward(&x, &mut Ctx::train(&mut rng, Sampling::Local))?;
        let nll = Likelihood::Categorical.nll(&out, &y)?;
        let want = elbo_loss(&nll, &store, 12, 1.0, 1.0)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        // the trainer: β = T = 1, S = 1, analytic KL, N = 12
        let settings = TrainSettings::new(1, 0.1).with_objective(Objective::Elbo(ElboConfig::new(12)));
        let opt = Sgd::new(SgdConfig::default())?;
        let mut trainer = Trainer::new(&fc, store.clone(), Box::new(opt), settings, SeededRng::new(SEED))?;
        let mut losses = Losses::default();
        let state = trainer.fit(&mut data(shuffle)?, None, &mut [&mut losses])?;
        assert_eq!(losses.0.len(), 3);
        assert_eq!(
            losses.0[0].to_bits(),
            want.to_bits(),
            "shuffle {shuffle}: {} vs {want}",
            losses.0[0]
        );
        // the record splits the loss into its parts: loss = NLL + D / N at every step
        let r = &state.history[0];
        assert!(r.train_divergence > 0.0 && r.beta == 1.0);
        assert!((r.train_loss - (r.train_nll + r.train_divergence / 12.0)).abs() < 1e-5 * r.train_loss.abs());
    }
    Ok(())
}

/// Delegates to the one-pass NLL and counts its calls.
struct Counting<'c>(&'c Cell<usize>);

impl TrainingObjective for Counting<'_> {
    fn batch_loss(&self, cx: &ObjectiveContext, x: &Tensor, y: &Tensor, rng: &mut SeededRng) -> Result<BatchLoss> {
        self.0.set(self.0.get() + 1);
        OnePassNll.batch_loss(cx, x, y, rng)
    }
}

/// Returns fixed metrics and counts its calls.
struct Fixed<'c>(&'c Cell<usize>);

impl Evaluation for Fixed<'_> {
    fn evaluate(&mut self, _model: &dyn Module, data: &mut dyn Batches, _rng: &mut SeededRng) -> Result<EvalMetrics> {
        self.0.set(self.0.get() + 1);
        Ok(EvalMetrics {
            classification: Some(ClassificationMetrics {
                accuracy: data.num_examples() as f64,
                nll: 0.0,
                brier: 0.0,
                ece: 0.0,
                mce: 0.0,
            }),
            classification_mc: None,
            regression: None,
        })
    }
}

#[test]
fn custom_objectives_and_evaluations_plug_into_the_trainer() -> Result<()> {
    let run = |custom: bool| -> Result<(Vec<EpochRecord>, usize, usize)> {
        let (calls, evals) = (Cell::new(0), Cell::new(0));
        let (store, fc) = layer(DType::F32, 3)?;
        let opt = Sgd::new(SgdConfig::default())?;
        let mut trainer = Trainer::new(&fc, store, Box::new(opt), TrainSettings::new(2, 0.1), SeededRng::new(5))?;
        if custom {
            trainer = trainer
                .with_objective(Box::new(Counting(&calls)))
                .with_evaluation(Box::new(Fixed(&evals)));
        }
        let mut eval = data(false)?;
        let state = trainer.fit(&mut data(true)?, Some(&mut eval), &mut [])?;
        Ok((state.history, calls.get(), evals.get()))
    };
    let (plain, _, _) = run(false)?;
    let (custom, calls, evals) = run(true)?;
    assert_eq!((calls, evals), (6, 2));
    for (a, b) in plain.iter().zip(&custom) {
        // the same objective through the trait object: the same training, bit for bit
        assert_eq!(a.train_loss.to_bits(), b.train_loss.to_bits());
        assert_eq!(a.train_accuracy.to_bits(), b.train_accuracy.to_bits());
        // the default evaluation measured the real accuracy; the custom one reported its own
        let acc = a.eval.as_ref().map(|m| m.accuracy).unwrap_or(f64::NAN);
        assert!((0.0..=1.0).contains(&acc));
        assert_eq!(b.eval.as_ref().map(|m| m.accuracy), Some(12.0));
    }
    Ok(())
}

/// `expected_nll_one_pass` with `S` samples is one pass over the batch tiled `S` times: with the
/// weight sampled once per sample block, its NLL is the mean of the `S` per-block cross-entropies
/// computed here from the block outputs of the same draws, and its summed outputs are the sum of
/// the blocks. `expected_nll` with weight sampling on the CPU is `S` consecutive passes (checked
/// against them on the same draws), and with `S = 1` it is `OnePassNll` on the same draws.
#[test]
fn expected_nll_of_s_samples_is_the_mean_of_per_sample_nlls() -> Result<()> {
    use secateur_inference::objective::{expected_nll, expected_nll_one_pass, samples_in_one_pass, StepPosition};
    let (store, fc) = layer(DType::F64, 4)?;
    let x = Tensor::new(&[[1.0f64, -0.5, 2.0], [0.3, 0.8, -1.2], [-0.7, 0.1, 0.4]], &Device::Cpu)?;
    let y = Tensor::new(&[0u32, 1, 1], &Device::Cpu)?;
    let cx = ObjectiveContext {
        model: &fc,
        store: &store,
        likelihood: &Likelihood::Categorical,
        sampling: Sampling::Weight,
        at: StepPosition {
            epoch: 0,
            step: 0,
            steps: 1,
        },
    };
    let s = 5;
    let (nll, sum) = expected_nll_one_pass(&cx, &x, &y, s, &mut SeededRng::new(9))?;
    // the same draws, block by block
    let xt = secateur_bayes::ctx::tile(&x, s)?;
    let out = fc.forward(
        &xt,
        &mut Ctx::train(&mut SeededRng::new(9), Sampling::Weight).with_samples(s),
    )?;
    let mut by_hand = 0.0;
    let mut blocks = Vec::new();
    for k in 0..s {
        let o = out.narrow(0, 3 * k, 3)?;
        by_hand += secateur_bayes::nn::cross_entropy(&o, &y)?.to_scalar::<f64>()? / s as f64;
        blocks.push(o);
    }
    assert!((nll.to_scalar::<f64>()? - by_hand).abs() < 1e-12);
    let want = blocks.iter().skip(1).try_fold(blocks[0].clone(), |a, b| a + b)?;
    assert!((sum - want)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
    // the blocks are different weight samples
    assert!((&blocks[0] - &blocks[1])?.abs()?.max_all()?.to_scalar::<f64>()? > 1e-3);
    // weight sampling on the CPU: S consecutive passes
    assert!(!samples_in_one_pass(Sampling::Weight, &Device::Cpu));
    let (nll, _) = expected_nll(&cx, &x, &y, s, &mut SeededRng::new(9))?;
    let mut rng = SeededRng::new(9);
    let mut by_hand = 0.0;
    for _ in 0..s {
        let o = fc.forward(&x, &mut Ctx::train(&mut rng, Sampling::Weight))?;
        by_hand += secateur_bayes::nn::cross_entropy(&o, &y)?.to_scalar::<f64>()? / s as f64;
    }
    assert!((nll.to_scalar::<f64>()? - by_hand).abs() < 1e-12);
    let (one, _) = expected_nll(&cx, &x, &y, 1, &mut SeededRng::new(3))?;
    let reference = OnePassNll.batch_loss(&cx, &x, &y, &mut SeededRng::new(3))?;
    assert_eq!(one.to_scalar::<f64>()?, reference.loss.to_scalar::<f64>()?);
    Ok(())
}
