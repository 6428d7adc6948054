//! The run directory under `train`, `train --resume` and `eval` (issue 14, found by fault
//! injection): what a run records, what a resume re-applies, and what `eval` and `--resume`
//! refuse. Small LeNet-5 runs on the shipped Fashion-MNIST subset, most of it held out as a
//! validation set so that an epoch is short.

use candle_core::{DType, Device, Tensor};
use secateur_experiments::commands::{self, TrainOptions};
use secateur_experiments::config::StudyConfig;
use secateur_pruning::MaskSet;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// LeNet-5 on 2,000 of the 10,000 training images (the rest is the validation set).
const LENET5: &str = r#"
name = "run-store-test"
seed = 3
[data]
name = "fashion-mnist-mini"
batch_size = 100
eval_batch_size = 1000
val_fraction = 0.8
[model]
arch = "lenet5"
[optim]
kind = "sgd"
lr = 0.05
momentum = 0.9
[train]
epochs = 1
"#;

fn config(set: &[&str]) -> StudyConfig {
    let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    StudyConfig::from_toml(LENET5, "run-store-test", &set).expect("config")
}

fn options(out: &Path, masks: Option<PathBuf>) -> TrainOptions {
    TrainOptions {
        out: Some(out.to_path_buf()),
        quiet: true,
        masks,
        ..Default::default()
    }
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The bits of every entry of a tensor, whatever its float type.
fn bits(t: &Tensor) -> Vec<u64> {
    let flat = t.flatten_all().expect("flatten");
    match t.dtype() {
        DType::F64 => flat
            .to_vec1::<f64>()
            .expect("f64")
            .iter()
            .map(|v| v.to_bits())
            .collect(),
        _ => flat
            .to_dtype(DType::F32)
            .expect("f32")
            .to_vec1::<f32>()
            .expect("f32")
            .iter()
            .map(|v| u64::from(v.to_bits()))
            .collect(),
    }
}

/// Asserts that two safetensors files hold the same names and bit-identical tensors.
fn assert_same_tensors(a: &Path, b: &Path) {
    let (ta, tb) = (load(a), load(b));
    let mut names: Vec<&String> = ta.keys().collect();
    names.sort();
    let mut names_b: Vec<&String> = tb.keys().collect();
    names_b.sort();
    assert_eq!(
        names,
        names_b,
        "{} and {} hold different tensors",
        a.display(),
        b.display()
    );
    for n in names {
        assert_eq!(ta[n].dims(), tb[n].dims(), "{n}");
        assert!(
            bits(&ta[n]) == bits(&tb[n]),
            "{n} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// Masks keeping about one weight in five of every weight tensor of the config's LeNet-5
/// (a fixed pattern of the position, not a criterion), saved to `path`.
fn write_masks(cfg: &StudyConfig, path: &Path) -> MaskSet {
    let (_, store) = commands::build_model(cfg, [1, 28, 28], 10, &Device::Cpu).expect("model");
    let mut masks = MaskSet::new();
    for (name, var) in store.params() {
        if !name.ends_with(".weight") {
            continue;
        }
        let n = var.as_tensor().elem_count();
        let keep: Vec<f32> = (0..n).map(|i| f32::from(u8::from((i * 7919 + 13) % 5 == 0))).collect();
        let m = Tensor::from_vec(keep, var.as_tensor().dims(), &Device::Cpu).expect("mask");
        masks.insert(name, m).expect("insert");
    }
    assert!(masks.len() >= 5, "LeNet-5 has five weight layers");
    masks.save(path).expect("save masks");
    masks
}

/// Defect 1: a masked run resumed without `--masks` kept training densely. The run records its
/// masks (`masks.safetensors`), a resume re-applies them, and a masked run of two epochs is
/// bit-identical to one of one epoch resumed to two.
#[test]
fn a_resumed_masked_run_keeps_its_masks_and_equals_the_straight_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mask_file = tmp.path().join("masks.safetensors");
    let masks = write_masks(&config(&[]), &mask_file);

    let straight = tmp.path().join("straight");
    commands::train(
        &config(&["train.epochs=2"]),
        &options(&straight, Some(mask_file.clone())),
        None,
    )
    .expect("two epochs");
    let resumed = tmp.path().join("resumed");
    commands::train(&config(&[]), &options(&resumed, Some(mask_file.clone())), None).expect("one epoch");
    std::fs::remove_file(&mask_file).expect("remove the original mask file");
    let s = commands::train(&config(&["train.epochs=2"]), &options(&resumed, None), Some(&resumed))
        .expect("resume to two epochs");
    assert_eq!(s.metrics["epochs"].as_u64(), Some(2));

    let w = load(&resumed.join("weights.safetensors"));
    for (name, m) in masks.masks() {
        let pruned: Vec<f32> = m.flatten_all().unwrap().to_vec1().unwrap();
        let v: Vec<f32> = w[name]
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let nonzero = pruned.iter().zip(&v).filter(|(m, w)| **m == 0.0 && **w != 0.0).count();
        assert_eq!(
            nonzero, 0,
            "{name}: {nonzero} pruned weights are non-zero after the resume"
        );
    }
    assert_same_tensors(
        &straight.join("weights.safetensors"),
        &resumed.join("weights.safetensors"),
    );
    assert!(resumed.join("masks.safetensors").is_file(), "the run records its masks");
}

/// Replaces the first entry of tensor `name` in the safetensors file `path` by `value`.
fn poison(path: &Path, name: &str, value: f32) {
    let mut t = load(path);
    let old = &t[name];
    let mut v: Vec<f32> = old
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    v[0] = value;
    let new = Tensor::from_vec(v, old.dims(), &Device::Cpu)
        .unwrap()
        .to_dtype(old.dtype())
        .unwrap();
    t.insert(name.to_string(), new);
    candle_core::safetensors::save(&t, path).expect("save");
}

/// Defect 2: `eval` of NaN or infinite weights printed plausible metrics. Non-finite weights are
/// refused by `eval` and by `--resume` (a checkpoint's weights), naming the tensor.
#[test]
fn eval_and_resume_refuse_non_finite_weights_by_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    commands::train(&config(&[]), &options(&run, None), None).expect("one epoch");
    commands::eval(&run, None, "cpu").expect("eval of good weights");

    let weights = run.join("weights.safetensors");
    poison(&weights, "fc1.weight", f32::NAN);
    let e = commands::eval(&run, None, "cpu")
        .expect_err("NaN weights are refused")
        .to_string();
    assert!(e.contains("fc1.weight") && e.contains("1 NaN"), "{e}");
    poison(&weights, "fc1.weight", 0.5);
    poison(&weights, "conv2.bias", f32::INFINITY);
    let e = commands::eval(&run, None, "cpu")
        .expect_err("infinite weights are refused")
        .to_string();
    assert!(e.contains("conv2.bias") && e.contains("1 infinite"), "{e}");

    let ckpt = run.join("checkpoints/epoch-0001/weights.safetensors");
    poison(&ckpt, "conv1.weight", f32::NEG_INFINITY);
    let e = commands::train(&config(&["train.epochs=2"]), &options(&run, None), Some(&run))
        .expect_err("a checkpoint with infinite weights is not resumed")
        .to_string();
    assert!(e.contains("conv1.weight") && e.contains("epoch-0001"), "{e}");
}

/// Defect 3: `eval` of a run whose `weights.safetensors` was deleted silently evaluated its last
/// checkpoint. It refuses, naming the missing file and the checkpoint to resume from.
#[test]
fn eval_refuses_a_run_without_its_final_weights() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    commands::train(&config(&[]), &options(&run, None), None).expect("one epoch");
    std::fs::remove_file(run.join("weights.safetensors")).expect("remove weights");
    let e = commands::eval(&run, None, "cpu")
        .expect_err("a run without final weights is refused")
        .to_string();
    assert!(
        e.contains("weights.safetensors is missing") && e.contains("epoch-0001"),
        "{e}"
    );
}

/// Defect 6: a failure after the run directory was created left `config.toml` and an empty
/// `checkpoints/` that `--out` refused and `--resume` could not resume. Bad masks are refused
/// before the directory exists; a run that diverged in its first epoch is refused by `--out` with
/// a message saying it has no checkpoint, and `--resume` trains it from the start with its
/// recorded config (here with a sane learning rate), bit-identically to a fresh run.
#[test]
fn a_run_without_checkpoint_is_refused_by_out_and_resumed_from_the_start() {
    let tmp = tempfile::tempdir().expect("tempdir");

    // masks of another model: refused, and no directory is left behind
    let bad_masks = tmp.path().join("bad-masks.safetensors");
    let mut m = MaskSet::new();
    m.insert("fc1.weight", Tensor::ones((3, 3), DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    m.save(&bad_masks).unwrap();
    let never = tmp.path().join("never");
    let e = commands::train(&config(&[]), &options(&never, Some(bad_masks)), None)
        .expect_err("masks of another shape are refused")
        .to_string();
    assert!(e.contains("--masks") && e.contains("fc1.weight"), "{e}");
    assert!(!never.exists(), "bad masks left a run directory behind");

    // a run that diverges in its first epoch stops before its first checkpoint
    let run = tmp.path().join("diverged");
    let e = commands::train(&config(&["optim.lr=1e10"]), &options(&run, None), None)
        .expect_err("lr 1e10 diverges")
        .to_string();
    assert!(e.contains("diverged"), "{e}");
    assert!(run.join("config.toml").is_file());
    let e = commands::train(&config(&[]), &options(&run, None), None)
        .expect_err("--out refuses a run directory")
        .to_string();
    assert!(
        e.contains("stopped before its first checkpoint") && e.contains("--resume"),
        "{e}"
    );

    let fixed = config(&["optim.lr=0.05"]);
    assert_eq!(fixed.seed, 3);
    let s = commands::train(&fixed, &options(&run, None), Some(&run)).expect("resume from the start");
    assert_eq!(s.metrics["epochs"].as_u64(), Some(1));
    let fresh = tmp.path().join("fresh");
    commands::train(&fixed, &options(&fresh, None), None).expect("fresh run");
    assert_same_tensors(&fresh.join("weights.safetensors"), &run.join("weights.safetensors"));
    let recorded = std::fs::read_to_string(run.join("config.toml")).expect("config.toml");
    assert!(
        !recorded.contains("1e10") && !recorded.contains("10000000000"),
        "{recorded}"
    );
}

/// Defect 7: two `train --resume` of one run both wrote into its directory. The process writing
/// a run holds an exclusive lock on its `lock` file; a second writer is refused, naming the
/// directory, and succeeds once the lock is released. (The lock is taken here through the file
/// itself, as another process would: file locks of two opens conflict within one process too.)
#[test]
fn a_second_writer_of_a_run_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    commands::train(&config(&[]), &options(&run, None), None).expect("one epoch");
    let lock_path = run.join("lock");
    let holder = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .expect("open lock");
    holder.try_lock().expect("the finished run's lock is free");

    let e = commands::train(&config(&["train.epochs=2"]), &options(&run, None), Some(&run))
        .expect_err("a run locked by another writer is not resumed")
        .to_string();
    assert!(
        e.contains("in use by another process") && e.contains(&run.display().to_string()),
        "{e}"
    );
    let metrics = std::fs::read_to_string(run.join("metrics.json")).expect("metrics.json");
    assert!(
        metrics.contains("\"epochs\": 1"),
        "the refused resume changed the run: {metrics}"
    );

    drop(holder);
    let s = commands::train(&config(&["train.epochs=2"]), &options(&run, None), Some(&run)).expect("resume");
    assert_eq!(s.metrics["epochs"].as_u64(), Some(2));
}

/// Defect 8: a resume that failed while it recorded an epoch left `history.csv` with a row for an
/// epoch whose checkpoint (and metrics, weights) did not exist. Here the checkpoint of epoch 2
/// cannot be written (a file stands where its directory goes): the resume fails and the run's
/// files are as they were.
#[test]
fn a_failed_resume_leaves_the_run_as_it_was() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    commands::train(&config(&[]), &options(&run, None), None).expect("one epoch");
    let files = [
        "history.csv",
        "metrics.json",
        "config.toml",
        "weights.safetensors",
        "checkpoints/latest",
    ];
    let read = |f: &str| std::fs::read(run.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    let before: Vec<Vec<u8>> = files.iter().map(|f| read(f)).collect();
    std::fs::write(run.join("checkpoints/epoch-0002"), b"in the way").expect("block the checkpoint");

    commands::train(&config(&["train.epochs=2"]), &options(&run, None), Some(&run))
        .expect_err("the checkpoint of epoch 2 cannot be written");
    for (f, old) in files.iter().zip(&before) {
        assert!(read(f) == *old, "the failed resume changed {f}");
    }
}

/// Defect 9: `--resume --seed 5` silently rewrote the seed a run was trained with. A resume with
/// another seed is refused, naming the field and both seeds, and the run is unchanged.
#[test]
fn a_resume_cannot_change_the_seed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    commands::train(&config(&[]), &options(&run, None), None).expect("one epoch");
    let before = std::fs::read_to_string(run.join("config.toml")).expect("config.toml");
    let e = commands::train(&config(&["train.epochs=2", "seed=5"]), &options(&run, None), Some(&run))
        .expect_err("a resume with another seed is refused")
        .to_string();
    assert!(e.contains("seed 3") && e.contains("to 5"), "{e}");
    let after = std::fs::read_to_string(run.join("config.toml")).expect("config.toml");
    assert_eq!(before, after);
    assert!(!run.join("checkpoints/epoch-0002").exists());
}

/// Defect 10, at its root: a checkpoint's trainer state read floats back from JSON text up to
/// 1 ulp off. Floats drawn over many magnitudes (a fixed generator) come back bit for bit.
#[test]
fn checkpoint_state_reads_back_bit_for_bit() {
    use secateur_bayes::SeededRng;
    use secateur_experiments::store::RunDir;
    use secateur_inference::metrics::ClassificationMetrics;
    use secateur_inference::train::{Checkpoint, EpochRecord, TrainState};
    use std::collections::BTreeMap;

    let tmp = tempfile::tempdir().expect("tempdir");
    let run = RunDir::create("t", Some(&tmp.path().join("run"))).expect("run dir");
    // a 64-bit linear congruential generator (Knuth's MMIX constants); 53 bits per float
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut draw = || {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
        unit * 10f64.powi((x % 13) as i32 - 6)
    };
    let history: Vec<EpochRecord> = (1..=100)
        .map(|epoch| EpochRecord {
            epoch,
            lr: draw(),
            train_loss: draw(),
            train_nll: draw(),
            train_divergence: draw(),
            beta: draw(),
            train_accuracy: draw(),
            train_rmse: None,
            eval: Some(ClassificationMetrics {
                accuracy: draw(),
                nll: draw(),
                brier: draw(),
                ece: draw(),
                mce: draw(),
            }),
            // the Monte Carlo columns on every other epoch (`bayes.eval_every_epoch`)
            eval_mc: (epoch % 2 == 0).then(|| ClassificationMetrics {
                accuracy: draw(),
                nll: draw(),
                brier: draw(),
                ece: draw(),
                mce: draw(),
            }),
            eval_regression: None,
            seconds: draw(),
            eval_seconds: draw(),
            units: Vec::new(),
        })
        .collect();
    let state = TrainState {
        epochs_done: 100,
        rng: SeededRng::new(7).state(),
        history,
    };
    let w = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    let ckpt = Checkpoint {
        weights: BTreeMap::from([("w".to_string(), w.clone())]),
        optimizer: BTreeMap::from([("m".to_string(), w)]),
        state: state.clone(),
    };
    run.write_checkpoint(&ckpt).expect("write");
    let back = run.read_checkpoint().expect("read").state;
    let mut wrong = 0;
    for (a, b) in state.history.iter().zip(&back.history) {
        if a != b {
            wrong += 1;
        }
    }
    assert_eq!(wrong, 0, "{wrong} of 100 history records changed through state.json");
    assert_eq!(state, back);
}

/// Defect 10: a resumed run rewrote the history rows of the epochs before its checkpoint with
/// floats read back from text. One epoch resumed to two writes the same files as two straight
/// epochs, bit for bit, but for wall times (`seconds` and `eval_seconds` in history.csv and state.json,
/// `wall_seconds` in metrics.json and report.md).
#[test]
fn a_resumed_run_writes_the_same_files_as_a_straight_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let straight = tmp.path().join("straight");
    commands::train(&config(&["train.epochs=2"]), &options(&straight, None), None).expect("two epochs");
    let resumed = tmp.path().join("resumed");
    commands::train(&config(&[]), &options(&resumed, None), None).expect("one epoch");
    commands::train(&config(&["train.epochs=2"]), &options(&resumed, None), Some(&resumed)).expect("resume");

    let text = |dir: &Path, f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    // history.csv: the last two columns are the epoch's wall times (training, evaluation)
    let history = |dir: &Path| -> Vec<String> {
        text(dir, "history.csv")
            .lines()
            .map(|l| {
                let head = l.rsplit_once(',').map_or(l, |(head, _)| head);
                head.rsplit_once(',').map_or(head, |(head, _)| head).to_string()
            })
            .collect()
    };
    assert_eq!(history(&straight), history(&resumed));
    let without_wall = |dir: &Path, f: &str| -> Vec<String> {
        text(dir, f)
            .lines()
            .filter(|l| !l.contains("wall_seconds"))
            .map(String::from)
            .collect()
    };
    for f in ["metrics.json", "report.md", "config.toml"] {
        assert_eq!(without_wall(&straight, f), without_wall(&resumed, f), "{f}");
    }
    let state = |dir: &Path| -> serde_json::Value {
        let mut v: serde_json::Value =
            serde_json::from_str(&text(dir, "checkpoints/epoch-0002/state.json")).expect("state.json");
        let m = v.as_object_mut().expect("object");
        m.remove("exact_floats");
        for r in m["history"].as_array_mut().expect("history") {
            let r = r.as_object_mut().expect("record");
            r.remove("seconds");
            r.remove("eval_seconds");
        }
        v
    };
    assert_eq!(state(&straight), state(&resumed));
    for f in [
        "weights.safetensors",
        "predictions.safetensors",
        "curves.png",
        "reliability.png",
        "checkpoints/latest",
        "checkpoints/epoch-0002/weights.safetensors",
        "checkpoints/epoch-0002/optimizer.safetensors",
    ] {
        let (a, b) = (std::fs::read(straight.join(f)), std::fs::read(resumed.join(f)));
        assert!(a.expect(f) == b.expect(f), "{f} differs");
    }
}

/// Defect 6, bad data: a data set that does not load (files with a wrong magic number) is
/// refused before the run directory is created.
#[test]
fn bad_data_leaves_no_run_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    for f in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        std::fs::write(data.join(f), b"not an IDX file").expect("write");
    }
    let run = tmp.path().join("run");
    let opts = TrainOptions {
        data_dir: Some(data),
        ..options(&run, None)
    };
    commands::train(&config(&[]), &opts, None).expect_err("bad data is refused");
    assert!(!run.exists(), "bad data left a run directory behind");
}

/// Defect 1, the other way round: a resume given masks other than those the run was trained
/// with is refused, naming `--masks` and the run's recorded file; the same masks are accepted.
#[test]
fn a_resume_cannot_change_the_masks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mask_file = tmp.path().join("masks.safetensors");
    let masks = write_masks(&config(&[]), &mask_file);
    let run = tmp.path().join("run");
    commands::train(&config(&[]), &options(&run, Some(mask_file.clone())), None).expect("one epoch");

    let other_file = tmp.path().join("other.safetensors");
    let mut other = masks.clone();
    let conv1 = masks.get("conv1.weight").expect("conv1 mask");
    other.insert("conv1.weight", conv1.ones_like().unwrap()).unwrap();
    other.save(&other_file).expect("save");
    let e = commands::train(
        &config(&["train.epochs=2"]),
        &options(&run, Some(other_file)),
        Some(&run),
    )
    .expect_err("other masks are refused")
    .to_string();
    assert!(
        e.contains("--masks") && e.contains("differs from the masks the run was trained with"),
        "{e}"
    );
    assert!(!run.join("checkpoints/epoch-0002").exists());
    commands::train(
        &config(&["train.epochs=2"]),
        &options(&run, Some(mask_file)),
        Some(&run),
    )
    .expect("the same masks are accepted");
}
