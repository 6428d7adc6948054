//! `[bayes.layer_priors]`: per-layer priors of mean-field models, checked when the model is built.

use candle_core::Device;
use secateur_experiments::commands::build_model;
use secateur_experiments::config::StudyConfig;

const BASE: &str = r#"
[model]
arch = "mlp"
layers = "mean-field"
[bayes.layer_priors]
fc3 = { kind = "gaussian", mean = 0.0, std = 0.1 }
"#;

#[test]
fn layer_priors_reach_their_layer_and_bad_ones_are_refused_by_name() {
    let cfg = StudyConfig::from_toml(BASE, "c.toml", &[]).expect("config");
    let (_, store) = build_model(&cfg, [1, 28, 28], 10, &Device::Cpu).expect("model");
    let (_, per_layer) = store
        .divergence(&secateur_bayes::Divergence::Kl, &mut secateur_bayes::SeededRng::new(0))
        .unwrap();
    // closed-form Gaussian KL of fc3 to N(0, 0.1²) from the stored μ and ρ (σ = softplus(ρ))
    let mut want = 0.0;
    for part in ["weight", "bias"] {
        let mu: Vec<f32> = store
            .get(&format!("fc3.{part}_mu"))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let rho: Vec<f32> = store
            .get(&format!("fc3.{part}_rho"))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (m, r) in mu.iter().zip(&rho) {
            let (m, sigma) = (*m as f64, (1.0 + (*r as f64).exp()).ln());
            want += (0.1 / sigma).ln() + (sigma * sigma + m * m) / (2.0 * 0.01) - 0.5;
        }
    }
    let got = per_layer["fc3"];
    assert!((got - want).abs() < 1e-3 * want, "fc3: {got} vs {want}");
    let e = StudyConfig::from_toml(&BASE.replace("fc3 =", "fc9 ="), "c.toml", &[])
        .and_then(|c| build_model(&c, [1, 28, 28], 10, &Device::Cpu).map(|_| ()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bayes.layer_priors") && e.contains("fc9") && e.contains("fc1"),
        "{e}"
    );
    let e = StudyConfig::from_toml(&BASE.replace("std = 0.1", "std = 0.0"), "c.toml", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer_priors") && e.contains("fc3"), "{e}");
    let e = StudyConfig::from_toml(&BASE.replace("\"mean-field\"", "\"sparse-vd\""), "c.toml", &[])
        .and_then(|c| build_model(&c, [1, 28, 28], 10, &Device::Cpu).map(|_| ()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bayes.layer_priors") && e.contains("sparse-vd"), "{e}");
}
