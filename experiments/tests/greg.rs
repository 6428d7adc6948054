//! `secateur train` with `[greg]` (growing regularisation, Wang et al. 2021) on the shipped
//! Fashion-MNIST subset, with a schedule short enough for a test.

use candle_core::{DType, Device, Tensor};
use secateur_experiments::commands::{self, TrainOptions};
use secateur_experiments::config::StudyConfig;

const GREG: &str = r#"
name = "greg-test"
seed = 1
[data]
name = "fashion-mnist-mini"
batch_size = 200
[model]
arch = "lenet5"
[train]
epochs = 1
[greg]
method = "greg1"
granularity = "filter"
sparsity = 0.5
lambda_step = 0.5
interval = 1
lambda_ceiling = 1.0
stabilise_iters = 0
"#;

fn config(text: &str, set: &[&str]) -> Result<StudyConfig, String> {
    let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    StudyConfig::from_toml(text, "greg-test", &set).map_err(|e| e.to_string())
}

fn options(out: std::path::PathBuf) -> TrainOptions {
    TrainOptions {
        out: Some(out),
        quiet: true,
        ..Default::default()
    }
}

#[test]
fn greg1_prunes_half_the_filters_of_each_layer_and_trains_them_at_zero() {
    let cfg = config(GREG, &[]).expect("config");
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = commands::train(&cfg, &options(tmp.path().join("run")), None).expect("train");
    let m = &run.metrics;
    // λ: 0.5, 1.0, 1.5 (> 1 after 3 iterations), then one iteration to end the (empty) hold
    assert_eq!(m["greg_schedule_iterations"].as_u64(), Some(4));
    assert_eq!(m["greg_epochs"].as_u64(), Some(1));
    // half the filters / rows of conv1, conv2, fc1, fc2 (the classifier's outputs are kept)
    // with everything they own: kept rows × kept input channels of each weight, and the kept
    // bias entries: conv1 3·1·25 = 75, conv2 8·3·25 = 600, fc1 60·(8·25) = 12,000, fc2 42·60
    // = 2,520, fc3 10·42 = 420, biases 3 + 8 + 60 + 42 = 113, of 61,696 masked entries
    assert_eq!(m["mask_kept"].as_u64(), Some(75 + 600 + 12_000 + 2_520 + 420 + 113));
    let w = candle_core::safetensors::load(run.dir.join("weights.safetensors"), &Device::Cpu).expect("weights");
    for (name, filters) in [
        ("conv1.weight", 6),
        ("conv2.weight", 16),
        ("fc1.weight", 120),
        ("fc2.weight", 84),
    ] {
        let t: Tensor = w[name].to_dtype(DType::F64).unwrap();
        let norms: Vec<f64> = t
            .abs()
            .unwrap()
            .flatten_from(1)
            .unwrap()
            .sum(1)
            .unwrap()
            .to_vec1()
            .unwrap();
        let zero = norms.iter().filter(|&&n| n == 0.0).count();
        assert_eq!(zero, filters / 2, "{name}: {zero} of {filters} filters are zero");
    }
    let fc3: Vec<f64> = w["fc3.weight"]
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    // the classifier keeps its rows; its columns of the pruned fc2 units are zero
    let zero_cols = (0..84).filter(|&j| (0..10).all(|o| fc3[o * 84 + j] == 0.0)).count();
    assert_eq!(zero_cols, 42);
    assert_eq!(fc3.iter().filter(|v| **v == 0.0).count(), 420);
    let b: Vec<f32> = w["fc1.bias"].to_vec1().unwrap();
    assert_eq!(
        b.iter().filter(|v| **v == 0.0).count(),
        60,
        "pruned units' biases are zero"
    );
    assert!(run.dir.join("masks.safetensors").is_file());
    // and the run compacts into the network of half the filters
    let small = commands::compact(&commands::CompactOptions::untimed(&run.dir, &tmp.path().join("small")))
        .expect("compact the GReg run");
    let widths: Vec<usize> = small.widths.iter().map(|w| w.2).collect();
    assert_eq!(widths, [3, 8, 60, 42, 10]);
    assert_eq!(small.masked.test_accuracy, small.compacted.test_accuracy);
    let acc = m["test_accuracy"].as_f64().unwrap();
    // 10 balanced classes: chance is 0.1, and a network left dead by the cut stays there (as
    // random pruning at 0.9 does in the study); 0.3 is three times chance
    assert!(acc > 0.3, "the pruned, fine-tuned LeNet-5 learns something: {acc}");
}

#[test]
fn bad_greg_settings_are_refused_by_name() {
    let e = config(GREG, &["greg.method=greg3"]).unwrap_err();
    assert!(e.contains("greg.method"), "{e}");
    let e = config(GREG, &["greg.sparsity=1.0"]).unwrap_err();
    assert!(e.contains("greg.sparsity"), "{e}");
    let e = config(GREG, &["greg.interval=0"]).unwrap_err();
    assert!(e.contains("interval"), "{e}");
    let e = config(GREG, &["model.layers=\"mean-field\""]).unwrap_err();
    assert!(e.contains("greg needs"), "{e}");
    let e = config(GREG, &["greg.unknown=1"]).unwrap_err();
    assert!(e.contains("unknown"), "{e}");
}
