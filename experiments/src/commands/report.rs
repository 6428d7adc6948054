//! What a run reports: `report.md`, `predictions.safetensors` (the test set's averaged
//! probabilities and labels), and the terminal tables of one run and of runs side by side.

use crate::atomic;
use crate::config::StudyConfig;
use crate::error::Result;
use crate::store::RunDir;
use candle_core::{Device, Tensor};
use secateur_inference::predict::Predictions;
use serde_json::{Map, Value};

/// A layer kind's report value as JSON: counts stay integers.
pub(crate) fn report_value(v: secateur_models::ReportValue) -> Value {
    match v {
        secateur_models::ReportValue::Count(n) => n.into(),
        secateur_models::ReportValue::Real(x) => x.into(),
    }
}

pub(super) fn write_predictions(run: &RunDir, p: &Predictions) -> Result<()> {
    let n = p.labels.len();
    let probs = Tensor::from_vec(p.probs.clone(), (n, p.classes), &Device::Cpu)?;
    let labels = Tensor::from_vec(p.labels.clone(), n, &Device::Cpu)?;
    let (kp, kl) = ("probs".to_string(), "labels".to_string());
    atomic::write_safetensors(&run.file("predictions.safetensors"), [(&kp, &probs), (&kl, &labels)])
}

pub(super) fn report(
    cfg: &StudyConfig,
    m: &Map<String, Value>,
    history: &[secateur_inference::train::EpochRecord],
) -> String {
    let f = |k: &str| m.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let mut s = format!(
        "# {}\n\n{} ({} layers) on {}, seed {}, {} epochs.\n\n",
        cfg.name, cfg.model.arch, cfg.model.layers, cfg.data.name, cfg.seed, cfg.train.epochs
    );
    s.push_str("| metric | value |\n|---|---|\n");
    for k in [
        "test_accuracy",
        "test_nll",
        "test_brier",
        "test_ece",
        "test_mce",
        "test_mutual_information",
        "test_accuracy_posterior_mean",
        "sparsity_log_alpha",
        "nodes_removed",
        "nodes_total",
        "units_removed",
        "inputs_removed",
        "params_total",
        "params_nonzero",
        "wall_seconds",
    ] {
        if m.contains_key(k) {
            s.push_str(&format!("| {k} | {:.4} |\n", f(k)));
        }
    }
    let widths: Vec<&String> = m.keys().filter(|k| k.starts_with("accuracy_width_")).collect();
    if !widths.is_empty() {
        s.push_str("\n## Accuracy at reduced widths\n\n| width | test accuracy |\n|---|---|\n");
        for k in widths {
            s.push_str(&format!("| {} | {:.4} |\n", &k["accuracy_width_".len()..], f(k)));
        }
    }
    let gated: Vec<&str> = m.keys().filter_map(|k| k.strip_prefix("units_total.")).collect();
    if !gated.is_empty() {
        s.push_str(
            "\n## Gates removed at test time\n\n| layer (gates on its inputs) | removed | total |\n|---|---|---|\n",
        );
        for layer in gated {
            let r = f(&format!("units_removed.{layer}"));
            let t = f(&format!("units_total.{layer}"));
            s.push_str(&format!("| {layer} | {r} | {t} |\n"));
        }
    }
    // which predictive the per-epoch columns are: the final metrics above are the Monte Carlo
    // average of a Bayesian run, the history the posterior mean unless asked otherwise
    let mc_history = history.iter().any(|r| r.eval.is_none() && r.eval_mc.is_some());
    let predictive = if !cfg.is_bayesian() {
        "the network"
    } else if mc_history {
        "the Monte Carlo average (as the final metrics)"
    } else {
        "the posterior-mean network (one pass; `bayes.eval_every_epoch = \"mc\"` for the Monte Carlo average)"
    };
    if cfg.is_bayesian() {
        s.push_str(&format!(
            "\nFinal test metrics: the Monte Carlo predictive, {} samples averaged.\n",
            cfg.bayes.eval_samples
        ));
    }
    s.push_str(&format!(
        "\n## History\n\nTest columns: {predictive}.\n\n| epoch | lr | train loss | train acc | test acc | test NLL | test ECE |\n|---|---|---|---|---|---|---|\n"
    ));
    for r in history {
        let (a, n, e) = r
            .eval
            .as_ref()
            .or(r.eval_mc.as_ref())
            .map(|x| (x.accuracy, x.nll, x.ece))
            .unwrap_or((f64::NAN, f64::NAN, f64::NAN));
        s.push_str(&format!(
            "| {} | {:.4} | {:.4} | {:.4} | {a:.4} | {n:.4} | {e:.4} |\n",
            r.epoch, r.lr, r.train_loss, r.train_accuracy
        ));
    }
    s
}

/// Runs side by side as a terminal table: accuracy, NLL, ECE, the fraction of weights with
/// `log α ≥ threshold` and the test-time non-zero parameters, one column per run.
pub fn comparison_table(runs: &[(&str, &Map<String, Value>)]) -> String {
    let mut s = format!("  {:<28}", "");
    for (name, _) in runs {
        s.push_str(&format!("{name:>16}"));
    }
    s.push('\n');
    for (k, label) in [
        ("test_accuracy", "test accuracy"),
        ("test_nll", "test NLL"),
        ("test_ece", "test ECE"),
        ("sparsity_log_alpha", "weights with log α ≥ 3"),
        ("units_removed", "hidden units removed"),
        ("params_nonzero", "non-zero parameters"),
        ("wall_seconds", "seconds"),
    ] {
        s.push_str(&format!("  {label:<28}"));
        for (_, m) in runs {
            let shown = match m.get(k) {
                Some(Value::Number(n)) if n.is_f64() => format!("{:.4}", n.as_f64().unwrap_or(f64::NAN)),
                Some(v) => v.to_string(),
                None => "—".into(),
            };
            s.push_str(&format!("{shown:>16}"));
        }
        s.push('\n');
    }
    s
}

/// Formats a metrics map as a short table for the terminal.
pub fn metrics_table(m: &Map<String, Value>) -> String {
    let mut s = String::new();
    for k in [
        "arch",
        "layers",
        "dataset",
        "epochs",
        "seed",
        "test_accuracy",
        "test_rmse",
        "test_nll",
        "test_mixture_nll",
        "test_coverage_95",
        "test_mean_predictive_std",
        "test_mean_aleatoric_var",
        "test_mean_epistemic_var",
        "test_brier",
        "test_ece",
        "test_mce",
        "test_mutual_information",
        "sparsity_log_alpha",
        "nodes_removed",
        "units_removed",
        "params_total",
        "params_nonzero",
        "wall_seconds",
    ] {
        if let Some(v) = m.get(k) {
            let shown = match v {
                Value::Number(n) if n.is_f64() => format!("{:.4}", n.as_f64().unwrap_or(f64::NAN)),
                Value::String(t) => t.clone(),
                other => other.to_string(),
            };
            s.push_str(&format!("  {k:<24} {shown}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::build_model;
    use crate::error::ExpError;
    use secateur_bayes::ParamStore;
    use std::collections::BTreeMap;

    fn report(store: &ParamStore, cfg: &StudyConfig) -> Result<BTreeMap<String, Value>> {
        let kind = cfg.layer_kind().map_err(|e| ExpError::config("model.layers", e))?;
        let r = (kind.report)(store, &secateur_models::ReportInput { input: [1, 28, 28] })?;
        Ok(r.into_iter().map(|(k, v)| (k, report_value(v))).collect())
    }

    /// LeNet-300-100 with spike-and-slab layers: setting the inclusion logits of some nodes
    /// below 0 (γ < ½) removes exactly those nodes, and the test-time weight count drops by their
    /// incoming weights and biases; the logits are not counted as weights.
    #[test]
    fn spike_slab_nodes_removed_and_test_time_params() -> Result<()> {
        let cfg = StudyConfig::from_toml("", "t", &["model.arch=mlp".into(), "model.layers=spike-slab".into()])?;
        let (_, store) = build_model(&cfg, [1, 28, 28], 10, &Device::Cpu)?;
        let r = report(&store, &cfg)?;
        // the classifier selects no nodes
        assert_eq!(
            (r["nodes_removed"].as_u64(), r["nodes_total"].as_u64()),
            (Some(0), Some(400))
        );
        let (nz0, total) = store.test_time_params()?;
        assert_eq!(total, 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10);
        assert_eq!(nz0, total);
        // remove nodes 0..5 of fc2 (100 → 95 nodes, each with 300 weights and a bias)
        let logit = store.get("fc2.inclusion_logit").unwrap();
        let mut v: Vec<f32> = logit.as_tensor().to_vec1()?;
        v[..5].iter_mut().for_each(|x| *x = -1.0);
        logit.set(&Tensor::new(v, &Device::Cpu)?)?;
        let r = report(&store, &cfg)?;
        assert_eq!(
            (r["nodes_removed"].as_u64(), r["nodes_total"].as_u64()),
            (Some(5), Some(400))
        );
        assert_eq!(store.test_time_params()?.0, total - 5 * (300 + 1));
        Ok(())
    }

    /// GSM gates: the test-time weight count and the gate report use the same threshold
    /// (`bayes.gate_threshold`), so closing a gate of fc2 removes its 100 outgoing weights from
    /// the count exactly when the report counts it removed — also at a threshold other than ½.
    #[test]
    fn gate_threshold_rules_both_the_count_and_the_report() -> Result<()> {
        let cfg = StudyConfig::from_toml(
            "",
            "t",
            &[
                "model.arch=mlp".into(),
                "model.layers=gsm-gates".into(),
                "bayes.gate_threshold=0.7".into(),
            ],
        )?;
        let (_, store) = build_model(&cfg, [1, 28, 28], 10, &Device::Cpu)?;
        let (nz0, total) = store.test_time_params()?;
        assert_eq!(report(&store, &cfg)?["units_removed.fc2"].as_u64(), Some(0));
        // θ of fc2's gates (its 300 inputs): gate 0 at 0.6 (below 0.7: removed), gate 1 at 0.8
        let theta = store.get("fc2.gate_theta").unwrap();
        let mut v: Vec<f32> = theta.as_tensor().to_vec1()?;
        (v[0], v[1]) = (0.6, 0.8);
        theta.set(&Tensor::new(v, &Device::Cpu)?)?;
        let r = report(&store, &cfg)?;
        assert_eq!(r["units_removed.fc2"].as_u64(), Some(1));
        assert_eq!(r["units_total.fc2"].as_u64(), Some(300));
        assert_eq!(store.test_time_params()?, (nz0 - 100, total));
        Ok(())
    }
}
