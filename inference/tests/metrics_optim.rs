//! Metrics, optimisers and learning-rate schedules against values computed independently:
//! by hand (in the comments) or by scalar `f64` recurrences written out in this file.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use secateur_inference::metrics::{classification_metrics, reliability_bins, CALIBRATION_BINS};
use secateur_inference::optim::{AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig};
use secateur_inference::schedule::Schedule;
use serde::de::value::{Error as DeError, MapDeserializer, SeqDeserializer};
use serde::de::{IntoDeserializer, Visitor};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

/// Tolerance for quantities computed in `f64` along different operation orders.
const TOL_F64: f64 = 1e-12;

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

fn assert_err<T: std::fmt::Debug>(r: Result<T>, needle: &str) {
    match r {
        Ok(v) => panic!("expected an error mentioning {needle:?}, got Ok({v:?})"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(needle), "error {msg:?} does not mention {needle:?}");
        }
    }
}

// ---------------------------------------------------------------- metrics

#[test]
fn metrics_by_hand_on_four_examples() -> Result<()> {
    // All probabilities are dyadic, so exact in f32.
    // ex0 (0.5, 0.25, 0.25)  y=0: pred 0 right, conf 0.5
    // ex1 (0.125, 0.75, 0.125) y=2: pred 1 wrong, conf 0.75
    // ex2 (0.25, 0.25, 0.5)  y=2: pred 2 right, conf 0.5
    // ex3 (0.5, 0.5, 0)      y=1: tie -> pred 0 (lowest index) wrong, conf 0.5
    let probs = [0.5, 0.25, 0.25, 0.125, 0.75, 0.125, 0.25, 0.25, 0.5, 0.5, 0.5, 0.0];
    let labels = [0, 2, 2, 1];
    let m = classification_metrics(&probs, &labels, 3)?;
    // accuracy = 2/4
    assert_eq!(m.accuracy, 0.5);
    // NLL = −(ln ½ + ln ⅛ + ln ½ + ln ½)/4 = (1 + 3 + 1 + 1) ln 2 / 4 = 1.5 ln 2
    assert!(close(m.nll, 1.5 * std::f64::consts::LN_2, TOL_F64));
    // Brier: ex0 .25+.0625+.0625 = .375; ex1 .015625+.5625+.765625 = 1.34375;
    //        ex2 .0625+.0625+.25 = .375; ex3 .25+.25+0 = .5; sum 2.59375, mean 0.6484375
    assert_eq!(m.brier, 0.6484375);
    // 15 bins: conf 0.5 -> (7/15, 8/15] (bin 7, n=3, acc 2/3, conf 0.5, gap 1/6);
    //          conf 0.75 -> (11/15, 12/15] (bin 11, n=1, acc 0, conf 0.75, gap 0.75).
    // ECE = 3/4 · 1/6 + 1/4 · 0.75 = 0.125 + 0.1875 = 0.3125; MCE = 0.75
    assert!(close(m.ece, 0.3125, TOL_F64));
    assert_eq!(m.mce, 0.75);
    let bins = reliability_bins(&probs, &labels, 3, CALIBRATION_BINS)?;
    assert_eq!(bins.len(), 15);
    let counts: Vec<usize> = bins.iter().map(|b| b.count).collect();
    let mut expected = vec![0; 15];
    expected[7] = 3;
    expected[11] = 1;
    assert_eq!(counts, expected);
    assert!(close(bins[7].accuracy, 2.0 / 3.0, TOL_F64));
    assert_eq!(bins[7].mean_confidence, 0.5);
    assert_eq!((bins[11].accuracy, bins[11].mean_confidence), (0.0, 0.75));
    assert_eq!((bins[0].accuracy, bins[0].mean_confidence), (0.0, 0.0));
    assert!(close(bins[7].lower, 7.0 / 15.0, TOL_F64) && close(bins[7].upper, 8.0 / 15.0, TOL_F64));
    Ok(())
}

#[test]
fn ece_of_a_calibrated_construction_is_zero() -> Result<()> {
    // Four examples at confidence 0.75 of which three are right, and two at 0.5 (a tie, so the
    // prediction is class 0) of which one is right: acc_b = conf_b in both bins.
    let probs = [0.75, 0.25, 0.75, 0.25, 0.75, 0.25, 0.75, 0.25, 0.5, 0.5, 0.5, 0.5];
    let labels = [0, 0, 0, 1, 0, 1];
    let m = classification_metrics(&probs, &labels, 2)?;
    assert_eq!(m.ece, 0.0);
    assert_eq!(m.mce, 0.0);
    assert!(close(m.accuracy, 4.0 / 6.0, TOL_F64));
    Ok(())
}

#[test]
fn ece_and_mce_when_one_bin_dominates() -> Result<()> {
    // 99 confident right answers (1, 0) with y=0: bin 14, gap 0.
    // One wrong answer (0.875, 0.125) with y=1: 0.875·15 = 13.125 -> bin 13, gap 0.875.
    // ECE = 1/100 · 0.875 = 0.00875 (the dominant bin hides the error); MCE = 0.875.
    let mut probs: Vec<f32> = [1.0, 0.0].repeat(99);
    let mut labels = vec![0; 99];
    probs.extend([0.875f32, 0.125]);
    labels.push(1);
    let m = classification_metrics(&probs, &labels, 2)?;
    assert!(close(m.ece, 0.00875, TOL_F64));
    assert_eq!(m.mce, 0.875);
    assert_eq!(m.accuracy, 0.99);
    Ok(())
}

#[test]
fn brier_extremes() -> Result<()> {
    // One-hot on the right class: every term is 0.
    let m = classification_metrics(&[0.0, 1.0, 0.0, 1.0, 0.0, 0.0], &[1, 0], 3)?;
    assert_eq!(m.brier, 0.0);
    assert_eq!(m.nll, 0.0);
    assert_eq!(m.accuracy, 1.0);
    // Uniform over K = 4: (1 − 1/K)² + (K−1)/K² = (K−1)/K = 0.75.
    let m = classification_metrics(&[0.25; 8], &[3, 0], 4)?;
    assert_eq!(m.brier, 0.75);
    assert!(close(m.nll, 4f64.ln(), TOL_F64));
    // Ties broken by the lowest index: label 3 is wrong, label 0 right.
    assert_eq!(m.accuracy, 0.5);
    Ok(())
}

#[test]
fn nll_of_a_zero_probability_is_clamped() -> Result<()> {
    // p_y = 0 is clamped at f32::MIN_POSITIVE = 2^−126: NLL = 126 ln 2 ≈ 87.34.
    let m = classification_metrics(&[1.0, 0.0], &[1], 2)?;
    assert!(close(m.nll, 126.0 * std::f64::consts::LN_2, TOL_F64));
    Ok(())
}

#[test]
fn bin_edges_are_open_below_and_closed_above() -> Result<()> {
    // Two bins (0, 0.5], (0.5, 1]: a confidence of exactly 0.5 belongs to the first.
    let bins = reliability_bins(&[0.5, 0.5], &[0], 2, 2)?;
    assert_eq!((bins[0].count, bins[1].count), (1, 0));
    // Four bins: 0.75 -> (0.5, 0.75] (bin 2); 1.0 -> (0.75, 1] (bin 3); 0.5 -> (0.25, 0.5] (bin 1).
    let bins = reliability_bins(&[0.75, 0.25, 1.0, 0.0, 0.5, 0.5], &[0, 0, 1], 2, 4)?;
    let counts: Vec<usize> = bins.iter().map(|b| b.count).collect();
    assert_eq!(counts, [0, 1, 1, 1]);
    Ok(())
}

#[test]
fn metrics_refuse_bad_input() {
    assert_err(
        classification_metrics(&[0.5, 0.5, 0.5], &[0, 1], 2),
        "probs has 3 values",
    );
    assert_err(classification_metrics(&[0.5, 0.5], &[2], 2), "label 2");
    assert_err(classification_metrics(&[], &[], 2), "no examples");
    assert_err(classification_metrics(&[], &[], 0), "classes");
    assert_err(classification_metrics(&[f32::NAN, 0.5], &[0], 2), "not a finite");
    assert_err(classification_metrics(&[0.5, f32::INFINITY], &[0], 2), "not a finite");
    assert_err(classification_metrics(&[1.5, -0.5], &[0], 2), "not a finite");
    assert_err(reliability_bins(&[0.5, 0.5], &[0], 2, 0), "bins");
    assert_err(reliability_bins(&[0.5, 0.5], &[5], 2, 10), "label 5");
}

// ---------------------------------------------------------------- optimisers

/// The test problem: loss = Σ_p Σ_i (½ c_pi θ_pi² + d_pi θ_pi), gradient c θ + d, for a
/// one-element parameter `a` and a three-element parameter `b`; `frozen` never gets a gradient.
struct Problem {
    c: BTreeMap<&'static str, Vec<f64>>,
    d: BTreeMap<&'static str, Vec<f64>>,
    theta0: BTreeMap<&'static str, Vec<f64>>,
}

impl Problem {
    fn new() -> Self {
        Self {
            c: BTreeMap::from([("a", vec![2.0]), ("b", vec![1.0, 3.0, 0.5])]),
            d: BTreeMap::from([("a", vec![-1.0]), ("b", vec![0.5, -2.0, 1.0])]),
            theta0: BTreeMap::from([("a", vec![0.7]), ("b", vec![-0.3, 1.2, 2.0])]),
        }
    }

    fn params(&self, dtype: DType) -> Result<BTreeMap<String, Var>> {
        let mut p = BTreeMap::new();
        for (name, v) in &self.theta0 {
            let t = Tensor::new(v.as_slice(), &Device::Cpu)?.to_dtype(dtype)?;
            p.insert(name.to_string(), Var::from_tensor(&t)?);
        }
        let frozen = Tensor::new(&[5.0f64, 6.0], &Device::Cpu)?.to_dtype(dtype)?;
        p.insert("frozen".to_string(), Var::from_tensor(&frozen)?);
        Ok(p)
    }

    fn grads(&self, params: &BTreeMap<String, Var>) -> Result<GradStore> {
        let mut loss: Option<Tensor> = None;
        for (name, c) in &self.c {
            let theta = params[*name].as_tensor();
            let dt = theta.dtype();
            let c = Tensor::new(c.as_slice(), &Device::Cpu)?.to_dtype(dt)?;
            let d = Tensor::new(self.d[name].as_slice(), &Device::Cpu)?.to_dtype(dt)?;
            let term = ((theta.sqr()? * c)?.affine(0.5, 0.0)? + (theta * d)?)?.sum_all()?;
            loss = Some(match loss {
                None => term,
                Some(l) => (l + term)?,
            });
        }
        loss.expect("the problem has parameters").backward()
    }

    fn values(params: &BTreeMap<String, Var>) -> Result<BTreeMap<String, Vec<f64>>> {
        params
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_dtype(DType::F64)?.to_vec1::<f64>()?)))
            .collect()
    }

    /// Runs `opt` for the learning rates `lrs`.
    fn run(&self, opt: &mut dyn Optimizer, params: &BTreeMap<String, Var>, lrs: &[f64]) -> Result<()> {
        for &lr in lrs {
            let g = self.grads(params)?;
            opt.step(params, &g, lr)?;
        }
        Ok(())
    }
}

/// PyTorch's SGD recurrence on one scalar coordinate, written out in f64.
fn sgd_reference(theta0: f64, c: f64, d: f64, cfg: SgdConfig, lrs: &[f64]) -> f64 {
    let (mut theta, mut buf) = (theta0, None::<f64>);
    for &lr in lrs {
        let mut g = c * theta + d;
        g += cfg.weight_decay * theta;
        if cfg.momentum != 0.0 {
            let b = match buf {
                None => g,
                Some(b) => cfg.momentum * b + (1.0 - cfg.dampening) * g,
            };
            buf = Some(b);
            g = if cfg.nesterov { g + cfg.momentum * b } else { b };
        }
        theta -= lr * g;
    }
    theta
}

/// PyTorch's AdamW recurrence on one scalar coordinate, written out in f64.
fn adamw_reference(theta0: f64, c: f64, d: f64, cfg: AdamWConfig, lrs: &[f64]) -> f64 {
    let (mut theta, mut m, mut v) = (theta0, 0.0, 0.0);
    for (i, &lr) in lrs.iter().enumerate() {
        let t = (i + 1) as i32;
        let g = c * theta + d;
        theta *= 1.0 - lr * cfg.weight_decay;
        m = cfg.beta1 * m + (1.0 - cfg.beta1) * g;
        v = cfg.beta2 * v + (1.0 - cfg.beta2) * g * g;
        let m_hat = m / (1.0 - cfg.beta1.powi(t));
        let v_hat = v / (1.0 - cfg.beta2.powi(t));
        theta -= lr * m_hat / (v_hat.sqrt() + cfg.eps);
    }
    theta
}

const LRS: [f64; 3] = [0.1, 0.05, 0.02];

fn check_against_reference(
    opt: &mut dyn Optimizer,
    reference: impl Fn(f64, f64, f64, &[f64]) -> f64,
    what: &str,
) -> Result<()> {
    let pb = Problem::new();
    let params = pb.params(DType::F64)?;
    pb.run(opt, &params, &LRS)?;
    let got = Problem::values(&params)?;
    for (name, theta0) in &pb.theta0 {
        for (i, &t0) in theta0.iter().enumerate() {
            let want = reference(t0, pb.c[name][i], pb.d[name][i], &LRS);
            let have = got[*name][i];
            assert!(
                close(have, want, TOL_F64),
                "{what}: {name}[{i}] = {have}, reference {want}"
            );
        }
    }
    // No gradient: untouched, and no state.
    assert_eq!(got["frozen"], [5.0, 6.0]);
    assert!(
        opt.state()?.keys().all(|k| !k.starts_with("frozen")),
        "{what}: state for frozen"
    );
    Ok(())
}

fn sgd_configs() -> Vec<SgdConfig> {
    vec![
        SgdConfig {
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        },
        SgdConfig {
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.1,
        },
        SgdConfig::default(),
        SgdConfig {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: true,
            weight_decay: 0.01,
        },
        SgdConfig {
            momentum: 0.8,
            dampening: 0.3,
            nesterov: false,
            weight_decay: 0.05,
        },
    ]
}

fn adamw_configs() -> Vec<AdamWConfig> {
    vec![
        AdamWConfig::default(),
        AdamWConfig {
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-6,
            weight_decay: 0.1,
        },
        AdamWConfig {
            beta1: 0.0,
            beta2: 0.5,
            eps: 1e-3,
            weight_decay: 0.0,
        },
    ]
}

#[test]
fn sgd_three_steps_match_the_recurrence() -> Result<()> {
    for cfg in sgd_configs() {
        let mut opt = Sgd::new(cfg)?;
        check_against_reference(
            &mut opt,
            |t, c, d, lrs| sgd_reference(t, c, d, cfg, lrs),
            &format!("{cfg:?}"),
        )?;
    }
    Ok(())
}

#[test]
fn adamw_three_steps_match_the_recurrence() -> Result<()> {
    for cfg in adamw_configs() {
        let mut opt = AdamW::new(cfg)?;
        check_against_reference(
            &mut opt,
            |t, c, d, lrs| adamw_reference(t, c, d, cfg, lrs),
            &format!("{cfg:?}"),
        )?;
    }
    Ok(())
}

#[test]
fn first_sgd_step_by_hand() -> Result<()> {
    // θ = 0.7, g = 2·0.7 − 1 = 0.4, wd 0.01: g = 0.407; b = g; nesterov: g = 0.407 + 0.9·0.407
    // = 0.7733; θ = 0.7 − 0.1·0.7733 = 0.62267.
    let pb = Problem::new();
    let params = pb.params(DType::F64)?;
    let mut opt = Sgd::new(SgdConfig {
        momentum: 0.9,
        dampening: 0.0,
        nesterov: true,
        weight_decay: 0.01,
    })?;
    pb.run(&mut opt, &params, &[0.1])?;
    assert!(close(Problem::values(&params)?["a"][0], 0.62267, TOL_F64));
    let state = opt.state()?;
    let keys: Vec<&str> = state.keys().map(String::as_str).collect();
    assert_eq!(keys, ["a.momentum_buffer", "b.momentum_buffer"]);
    assert!(close(state["a.momentum_buffer"].to_vec1::<f64>()?[0], 0.407, TOL_F64));
    Ok(())
}

#[test]
fn first_adamw_step_by_hand() -> Result<()> {
    // On the first step m̂ = g and v̂ = g², so θ ← θ(1 − lr·wd) − lr·g/(|g| + ε):
    // a: θ = 0.7, g = 0.4: 0.7·(1 − 0.1·0.01) − 0.1·0.4/(0.4 + 1e-8) = 0.6993 − 0.1/(1 + 2.5e-8).
    let pb = Problem::new();
    let params = pb.params(DType::F64)?;
    let mut opt = AdamW::new(AdamWConfig::default())?;
    pb.run(&mut opt, &params, &[0.1])?;
    assert!(close(
        Problem::values(&params)?["a"][0],
        0.6993 - 0.1 / (1.0 + 2.5e-8),
        TOL_F64
    ));
    let state = opt.state()?;
    let keys: Vec<&str> = state.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "a.exp_avg",
            "a.exp_avg_sq",
            "a.step",
            "b.exp_avg",
            "b.exp_avg_sq",
            "b.step"
        ]
    );
    assert_eq!(state["a.step"].to_scalar::<i64>()?, 1);
    Ok(())
}

/// Runs one step, saves the state, runs two more; a fresh optimiser loaded from the saved state
/// and started from the saved weights must then produce bit-identical weights.
fn resume_is_identical(mut make: impl FnMut() -> Result<Box<dyn Optimizer>>) -> Result<()> {
    let pb = Problem::new();
    let params = pb.params(DType::F32)?;
    let mut first = make()?;
    pb.run(first.as_mut(), &params, &LRS[..1])?;
    let saved: HashMap<String, Tensor> = first.state()?.into_iter().collect();
    let saved_weights = Problem::values(&params)?;
    pb.run(first.as_mut(), &params, &LRS[1..])?;

    let resumed = BTreeMap::from_iter(
        saved_weights
            .iter()
            .map(|(n, v)| {
                Ok((
                    n.clone(),
                    Var::from_tensor(&Tensor::new(v.as_slice(), &Device::Cpu)?.to_dtype(DType::F32)?)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?,
    );
    let mut second = make()?;
    second.load_state(&saved)?;
    pb.run(second.as_mut(), &resumed, &LRS[1..])?;
    for (name, var) in &params {
        let a = var.as_tensor().to_vec1::<f32>()?;
        let b = resumed[name].as_tensor().to_vec1::<f32>()?;
        assert_eq!(a, b, "{name} differs after resuming");
        assert_eq!(var.dtype(), DType::F32);
    }
    let (s1, s2) = (first.state()?, second.state()?);
    assert_eq!(s1.keys().collect::<Vec<_>>(), s2.keys().collect::<Vec<_>>());
    for (k, t) in &s1 {
        let a = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let b = s2[k].to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        assert_eq!(a, b, "state {k} differs after resuming");
    }
    Ok(())
}

#[test]
fn state_round_trip_continues_identically() -> Result<()> {
    for cfg in sgd_configs() {
        resume_is_identical(|| Ok(Box::new(Sgd::new(cfg)?)))?;
    }
    for cfg in adamw_configs() {
        resume_is_identical(|| Ok(Box::new(AdamW::new(cfg)?)))?;
    }
    Ok(())
}

#[test]
fn bad_configs_are_refused() {
    let sgd = SgdConfig::default;
    assert_err(Sgd::new(SgdConfig { momentum: 1.0, ..sgd() }), "momentum");
    assert_err(
        Sgd::new(SgdConfig {
            momentum: -0.1,
            ..sgd()
        }),
        "momentum",
    );
    assert_err(
        Sgd::new(SgdConfig {
            momentum: f64::NAN,
            ..sgd()
        }),
        "momentum",
    );
    assert_err(
        Sgd::new(SgdConfig {
            dampening: 1.5,
            ..sgd()
        }),
        "dampening",
    );
    assert_err(
        Sgd::new(SgdConfig {
            weight_decay: -1e-4,
            ..sgd()
        }),
        "weight_decay",
    );
    assert_err(
        Sgd::new(SgdConfig {
            nesterov: true,
            momentum: 0.0,
            ..sgd()
        }),
        "nesterov",
    );
    assert_err(
        Sgd::new(SgdConfig {
            nesterov: true,
            dampening: 0.5,
            ..sgd()
        }),
        "nesterov",
    );
    let adam = AdamWConfig::default;
    assert_err(AdamW::new(AdamWConfig { beta1: 1.0, ..adam() }), "beta1");
    assert_err(AdamW::new(AdamWConfig { beta2: -0.1, ..adam() }), "beta2");
    assert_err(AdamW::new(AdamWConfig { eps: 0.0, ..adam() }), "eps");
    assert_err(
        AdamW::new(AdamWConfig {
            weight_decay: f64::INFINITY,
            ..adam()
        }),
        "weight_decay",
    );
}

#[test]
fn bad_state_is_refused() -> Result<()> {
    let pb = Problem::new();
    let params = pb.params(DType::F64)?;
    let v3 = Tensor::zeros(3, DType::F64, &Device::Cpu)?;
    let v2 = Tensor::zeros(2, DType::F64, &Device::Cpu)?;
    let one = Tensor::new(1i64, &Device::Cpu)?;

    // Unknown suffix: refused on load, naming the tensor.
    let mut sgd = Sgd::new(SgdConfig::default())?;
    assert_err(
        sgd.load_state(&HashMap::from([("b.exp_avg".to_string(), v3.clone())])),
        "b.exp_avg",
    );
    // Wrong shape: refused at the next step, naming the tensor; no weight is changed.
    sgd.load_state(&HashMap::from([("b.momentum_buffer".to_string(), v2.clone())]))?;
    assert_err(sgd.step(&params, &pb.grads(&params)?, 0.1), "b.momentum_buffer");
    for (name, theta0) in &pb.theta0 {
        assert_eq!(&Problem::values(&params)?[*name], theta0);
    }
    // Wrong dtype.
    sgd.load_state(&HashMap::from([(
        "b.momentum_buffer".to_string(),
        v3.to_dtype(DType::F32)?,
    )]))?;
    assert_err(sgd.step(&params, &pb.grads(&params)?, 0.1), "b.momentum_buffer");
    // A parameter that does not exist.
    sgd.load_state(&HashMap::from([("c.momentum_buffer".to_string(), v3.clone())]))?;
    assert_err(sgd.step(&params, &pb.grads(&params)?, 0.1), "c.momentum_buffer");
    // SGD without momentum keeps no state.
    let mut plain = Sgd::new(SgdConfig {
        momentum: 0.0,
        ..SgdConfig::default()
    })?;
    assert_err(
        plain.load_state(&HashMap::from([("b.momentum_buffer".to_string(), v3.clone())])),
        "b.momentum_buffer",
    );

    let mut adam = AdamW::new(AdamWConfig::default())?;
    // Incomplete set.
    let partial = HashMap::from([
        ("b.exp_avg".to_string(), v3.clone()),
        ("b.step".to_string(), one.clone()),
    ]);
    assert_err(adam.load_state(&partial), "b.exp_avg_sq");
    // Moments of different shapes.
    let mismatched = HashMap::from([
        ("b.exp_avg".to_string(), v3.clone()),
        ("b.exp_avg_sq".to_string(), v2.clone()),
        ("b.step".to_string(), one.clone()),
    ]);
    assert_err(adam.load_state(&mismatched), "b.exp_avg_sq");
    // A step that is not a positive integer.
    let bad_step = HashMap::from([
        ("b.exp_avg".to_string(), v3.clone()),
        ("b.exp_avg_sq".to_string(), v3.clone()),
        ("b.step".to_string(), Tensor::new(0i64, &Device::Cpu)?),
    ]);
    assert_err(adam.load_state(&bad_step), "b.step");
    // Shape against the parameter: at the next step.
    let wrong_shape = HashMap::from([
        ("b.exp_avg".to_string(), v2.clone()),
        ("b.exp_avg_sq".to_string(), v2.clone()),
        ("b.step".to_string(), one.clone()),
    ]);
    adam.load_state(&wrong_shape)?;
    assert_err(adam.step(&params, &pb.grads(&params)?, 0.1), "b.exp_avg");
    assert_err(adam.load_state(&HashMap::from([("step".to_string(), one)])), "step");
    Ok(())
}

#[test]
fn sgd_converges_on_a_convex_quadratic() -> Result<()> {
    // Minimum of Σ ½ c θ² + d θ at θ* = −d/c.
    let pb = Problem::new();
    let params = pb.params(DType::F64)?;
    let mut opt = Sgd::new(SgdConfig::default())?;
    pb.run(&mut opt, &params, &[0.1; 500])?;
    let got = Problem::values(&params)?;
    for (name, c) in &pb.c {
        for (i, c) in c.iter().enumerate() {
            let star = -pb.d[name][i] / c;
            assert!(
                (got[*name][i] - star).abs() < 1e-8,
                "{name}[{i}] = {} not near {star}",
                got[*name][i]
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- schedules

#[test]
fn cosine_closed_form() {
    let s = Schedule::Cosine {
        total: 10,
        min_lr: 0.1,
        warmup: 0,
    };
    assert_eq!(s.lr_at(1.0, 0, 0, 7), 1.0); // cos 0 = 1
    assert!(close(s.lr_at(1.0, 5, 3, 7), 0.55, TOL_F64)); // 0.1 + 0.9·(1 + cos π/2)/2
    assert!(close(s.lr_at(1.0, 10, 0, 7), 0.1, TOL_F64)); // cos π = −1
    assert_eq!(s.lr_at(1.0, 25, 0, 7), 0.1); // stays at min_lr
    let e2 = 0.1 + 0.9 * (1.0 + (std::f64::consts::PI / 5.0).cos()) / 2.0;
    assert!(close(s.lr_at(1.0, 2, 6, 7), e2, TOL_F64));
    // Decreasing over the run.
    let lrs: Vec<f64> = (0..=10).map(|e| s.lr_at(1.0, e, 0, 7)).collect();
    assert!(lrs.windows(2).all(|w| w[1] < w[0]));
}

#[test]
fn multistep_across_milestones() {
    let s = Schedule::MultiStep {
        milestones: vec![3, 6],
        gamma: 0.1,
        warmup: 0,
    };
    let lrs: Vec<f64> = (0..8).map(|e| s.lr_at(2.0, e, 1, 4)).collect();
    let want = [2.0, 2.0, 2.0, 0.2, 0.2, 0.2, 0.02, 0.02];
    for (e, (a, b)) in lrs.iter().zip(want).enumerate() {
        assert!(close(*a, b, TOL_F64), "epoch {e}: {a} vs {b}");
    }
    // Constant within an epoch.
    assert_eq!(s.lr_at(2.0, 3, 0, 4), s.lr_at(2.0, 3, 3, 4));
    assert_eq!(Schedule::default().lr_at(0.3, 99, 5, 10), 0.3);
}

#[test]
fn warmup_ramps_linearly_per_step() {
    // warmup 5, 2 steps per epoch: global steps 0..4 use 1/5..5/5 of the rate.
    let s = Schedule::Constant { warmup: 5 };
    let lrs: Vec<f64> = (0..4)
        .flat_map(|e| (0..2).map(move |k| (e, k)))
        .map(|(e, k)| s.lr_at(1.0, e, k, 2))
        .collect();
    let want = [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0];
    for (a, b) in lrs.iter().zip(want) {
        assert!(close(*a, b, TOL_F64), "{lrs:?}");
    }
    // Composed with the epoch's value: cosine epoch 1 at global step 3 of warm-up 10.
    let c = Schedule::Cosine {
        total: 4,
        min_lr: 0.0,
        warmup: 10,
    };
    let main = (1.0 + (std::f64::consts::PI / 4.0).cos()) / 2.0;
    assert!(close(c.lr_at(1.0, 1, 0, 3), main * 4.0 / 10.0, TOL_F64));
    assert_eq!(c.warmup(), 10);
}

#[test]
fn bad_schedules_are_refused() {
    let ms = |milestones: Vec<usize>, gamma: f64| Schedule::MultiStep {
        milestones,
        gamma,
        warmup: 0,
    };
    assert!(ms(vec![2, 5], 0.1).validate().is_ok());
    assert!(ms(vec![], 0.1).validate().is_ok());
    assert_err(ms(vec![2], 0.0).validate(), "gamma");
    assert_err(ms(vec![2], f64::NAN).validate(), "gamma");
    assert_err(ms(vec![5, 2], 0.1).validate(), "milestones");
    assert_err(ms(vec![2, 2], 0.1).validate(), "milestones");
    assert_err(ms(vec![0, 2], 0.1).validate(), "milestones");
    assert_err(
        Schedule::Cosine {
            total: 0,
            min_lr: 0.0,
            warmup: 0,
        }
        .validate(),
        "total",
    );
    assert_err(
        Schedule::Cosine {
            total: 3,
            min_lr: -1.0,
            warmup: 0,
        }
        .validate(),
        "min_lr",
    );
    assert!(Schedule::Constant { warmup: 100 }.validate().is_ok());
}

// ---------------------------------------------------------------- serde (config files)

/// A minimal self-describing value, so configs can be deserialised without a format crate.
#[derive(Clone)]
enum V {
    S(&'static str),
    U(u64),
    F(f64),
    B(bool),
    Seq(Vec<u64>),
}

impl<'de> serde::Deserializer<'de> for V {
    type Error = DeError;
    fn deserialize_any<W: Visitor<'de>>(self, visitor: W) -> std::result::Result<W::Value, DeError> {
        match self {
            V::S(s) => visitor.visit_str(s),
            V::U(u) => visitor.visit_u64(u),
            V::F(f) => visitor.visit_f64(f),
            V::B(b) => visitor.visit_bool(b),
            V::Seq(s) => visitor.visit_seq(SeqDeserializer::new(s.into_iter())),
        }
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

impl IntoDeserializer<'_, DeError> for V {
    type Deserializer = V;
    fn into_deserializer(self) -> V {
        self
    }
}

fn from_map<T: for<'de> Deserialize<'de>>(fields: Vec<(&'static str, V)>) -> std::result::Result<T, DeError> {
    T::deserialize(MapDeserializer::new(fields.into_iter()))
}

#[test]
fn configs_deserialise_strictly() {
    let s: Schedule = from_map(vec![
        ("kind", V::S("cosine")),
        ("total", V::U(200)),
        ("min_lr", V::F(0.0)),
    ])
    .unwrap();
    assert_eq!(
        s,
        Schedule::Cosine {
            total: 200,
            min_lr: 0.0,
            warmup: 0
        }
    );
    let s: Schedule = from_map(vec![
        ("kind", V::S("multi_step")),
        ("milestones", V::Seq(vec![100, 150])),
        ("gamma", V::F(0.1)),
        ("warmup", V::U(500)),
    ])
    .unwrap();
    assert_eq!(
        s,
        Schedule::MultiStep {
            milestones: vec![100, 150],
            gamma: 0.1,
            warmup: 500
        }
    );
    let s: Schedule = from_map(vec![("kind", V::S("constant"))]).unwrap();
    assert_eq!(s, Schedule::default());
    let bad = from_map::<Schedule>(vec![
        ("kind", V::S("cosine")),
        ("total", V::U(2)),
        ("min_lr", V::F(0.0)),
        ("gama", V::F(0.1)),
    ]);
    assert!(bad.is_err_and(|e| e.to_string().contains("gama")));
    let bad = from_map::<Schedule>(vec![("kind", V::S("constant")), ("total", V::U(2))]);
    assert!(bad.is_err_and(|e| e.to_string().contains("total")));
    assert!(from_map::<Schedule>(vec![("kind", V::S("linear"))]).is_err());

    let c: SgdConfig = from_map(vec![("nesterov", V::B(true))]).unwrap();
    assert_eq!(
        c,
        SgdConfig {
            nesterov: true,
            ..SgdConfig::default()
        }
    );
    assert!(from_map::<SgdConfig>(vec![("momentun", V::F(0.5))]).is_err_and(|e| e.to_string().contains("momentun")));
    let a: AdamWConfig = from_map(vec![("weight_decay", V::F(0.05))]).unwrap();
    assert_eq!(
        a,
        AdamWConfig {
            weight_decay: 0.05,
            ..AdamWConfig::default()
        }
    );
    assert!(from_map::<AdamWConfig>(vec![("beta3", V::F(0.5))]).is_err());
}

#[test]
fn auroc_equals_the_pairwise_count() {
    use secateur_inference::metrics::auroc;
    // independent computation: count every (positive, negative) pair
    let pos = [0.3f32, 0.7, 0.7, 0.1, 0.9, 0.5];
    let neg = [0.2f32, 0.7, 0.4, 0.05, 0.5];
    let mut u = 0.0;
    for p in pos {
        for n in neg {
            u += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    let want = u / 30.0;
    assert!((auroc(&pos, &neg).unwrap() - want).abs() < 1e-12);
    assert!((auroc(&neg, &pos).unwrap() - (1.0 - want)).abs() < 1e-12);
    assert!(auroc(&[], &neg).is_err());
    assert!(auroc(&[f32::NAN], &neg).is_err());
}
