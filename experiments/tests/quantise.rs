//! `secateur quantise` through the library command function, on the shipped Fashion-MNIST subset.

use candle_core::Device;
use secateur_experiments::commands::{self, QuantiseOptions, TrainOptions, INT8_WEIGHTS};
use secateur_experiments::config::StudyConfig;
use std::path::Path;

const LENET: &str = r#"
name = "quantise-test"
seed = 2
[data]
name = "fashion-mnist-mini"
batch_size = 200
[model]
arch = "lenet5"
[train]
epochs = 1
"#;

fn train(cfg: &StudyConfig, out: &Path) {
    let opts = TrainOptions {
        out: Some(out.to_path_buf()),
        quiet: true,
        ..TrainOptions::default()
    };
    commands::train(cfg, &opts, None).expect("train");
}

/// The int8 file read back independently (the `safetensors` crate, codes × scales by hand)
/// equals the dequantised weights the quantised run evaluates with; every code is within
/// ±127, every weight within half a step of the run's, the file is about a quarter of the f32
/// one, accuracy moves by less than one percentage point, and `eval` loads the run.
#[test]
fn int8_weights_match_their_file_and_the_f32_network() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = StudyConfig::from_toml(LENET, "lenet", &[]).unwrap();
    let run = tmp.path().join("run");
    train(&cfg, &run);
    let out = tmp.path().join("int8");
    let opts = QuantiseOptions {
        run: run.clone(),
        out: out.clone(),
        data_dir: None,
        latency_reps: 0,
    };
    let s = commands::quantise(&opts).expect("quantise");
    assert_eq!(s.layers, 5);
    assert!(s.max_error_steps <= 0.5 + 1e-5 && s.max_error_steps > 0.4, "{s:?}");
    assert!((s.int8.file_bytes as f64) < 0.3 * s.f32.file_bytes as f64, "{s:?}");
    assert!((s.int8.test_accuracy - s.f32.test_accuracy).abs() < 0.01, "{s:?}");
    assert!(s.int8.test_nll.is_finite());

    let bytes = std::fs::read(out.join(INT8_WEIGHTS)).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let deq = candle_core::safetensors::load(out.join("weights.safetensors"), &Device::Cpu).unwrap();
    let orig = candle_core::safetensors::load(run.join("weights.safetensors"), &Device::Cpu).unwrap();
    for name in ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc3.weight"] {
        let v = file.tensor(name).unwrap();
        assert_eq!(v.dtype(), safetensors::Dtype::I8, "{name}");
        let codes: Vec<i8> = v.data().iter().map(|&b| b as i8).collect();
        assert!(codes.iter().all(|&c| c != i8::MIN), "{name}: −128 is unused");
        let sv = file.tensor(&format!("{name}.scale")).unwrap();
        let scales: Vec<f32> = sv
            .data()
            .chunks(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let o = v.shape()[0];
        assert_eq!(scales.len(), o);
        let per = codes.len() / o;
        let by_hand: Vec<f32> = codes
            .iter()
            .enumerate()
            .map(|(i, &c)| scales[i / per] * f32::from(c))
            .collect();
        let ours = deq[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(by_hand, ours, "{name}");
        let w = orig[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, (a, b)) in w.iter().zip(&ours).enumerate() {
            assert!((a - b).abs() <= scales[i / per] * 0.5 * (1.0 + 1e-5), "{name}[{i}]");
        }
    }
    // biases stay f32 and unchanged
    let b = file.tensor("fc1.bias").unwrap();
    assert_eq!(b.dtype(), safetensors::Dtype::F32);
    let b0: Vec<f32> = orig["fc1.bias"].to_vec1().unwrap();
    let b1: Vec<f32> = deq["fc1.bias"].to_vec1().unwrap();
    assert_eq!(b0, b1);

    let loaded = commands::LoadedRun::open(&out, None, "cpu").expect("eval opens the quantised run");
    let p = loaded.predict(&loaded.data.test).unwrap().predictions;
    assert_eq!(p.labels.len(), loaded.data.test.len());

    // no overwrite; a Bayesian run is refused
    let e = commands::quantise(&opts).unwrap_err().to_string();
    assert!(e.contains("not empty"), "{e}");
    let bayes = StudyConfig::from_toml(
        &LENET.replace("arch = \"lenet5\"", "arch = \"lenet5\"\nlayers = \"mean-field\""),
        "mf",
        &[],
    )
    .unwrap();
    let mf = tmp.path().join("mf");
    train(&bayes, &mf);
    let e = commands::quantise(&QuantiseOptions {
        run: mf,
        out: tmp.path().join("mf-int8"),
        data_dir: None,
        latency_reps: 0,
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("deterministic"), "{e}");
}
