//! No command replaces an existing result unless told `--force`, no temporary file is left behind
//! by a failed write, the files secateur writes get the process umask's mode, and a diverged run
//! says truthfully whether it has a checkpoint (issue 14, defects 4, 5, 14 and 16). Small LeNet-5
//! models on the shipped Fashion-MNIST subset.

use candle_core::{DType, Device, Tensor};
use secateur_experiments::commands::{self, TrainOptions};
use secateur_experiments::config::StudyConfig;
use secateur_experiments::prune::{self, PruneOptions, PruneSpec, ScoresOptions};
use secateur_pruning::{MaskSet, Scope, Scores};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// LeNet-5 on 2,000 of the 10,000 training images (the rest is the validation set).
const LENET5: &str = r#"
name = "overwrite-test"
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

fn write_config(dir: &Path) -> PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(&p, LENET5).expect("write config");
    p
}

fn config(set: &[&str]) -> StudyConfig {
    let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    StudyConfig::from_toml(LENET5, "overwrite-test", &set).expect("config")
}

fn train_options(out: &Path) -> TrainOptions {
    TrainOptions {
        out: Some(out.to_path_buf()),
        quiet: true,
        ..Default::default()
    }
}

fn prune_options(config: PathBuf, out: PathBuf, force: bool) -> PruneOptions {
    PruneOptions {
        spec: PruneSpec {
            criterion: "magnitude".into(),
            sparsity: 0.5,
            scope: Scope::Global,
            bn_warmup_batches: 0,
            rounds: 1,
            samples_per_class: 2,
            keep_first: false,
            keep_last: false,
            keep_conv: false,
            options: Default::default(),
        },
        run: None,
        config: Some(config),
        overrides: vec![],
        out,
        data_dir: None,
        force,
    }
}

fn scores_options(config: PathBuf, out: PathBuf, force: bool) -> ScoresOptions {
    ScoresOptions {
        criterion: "magnitude".into(),
        weights: None,
        config,
        overrides: vec![],
        out,
        samples_per_class: 2,
        options: Default::default(),
        data_dir: None,
        diagnose: false,
        force,
    }
}

/// The names in `dir` that look like a temporary file of an atomic write.
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') || n.contains(".tmp"))
        .collect()
}

/// The permission bits of a file created by `std::fs::File::create` in `dir`: the mode every file
/// of a run should have (0644 under umask 022).
fn umask_mode(dir: &Path) -> u32 {
    let probe = dir.join("probe");
    let f = std::fs::File::create(&probe).expect("probe");
    let mode = f.metadata().expect("probe metadata").permissions().mode() & 0o777;
    drop(f);
    std::fs::remove_file(&probe).expect("remove probe");
    mode
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn small_scores() -> Scores {
    let mut s = Scores::new();
    s.insert(
        "fc1.weight".into(),
        Tensor::ones((3, 3), DType::F32, &Device::Cpu).expect("tensor"),
    );
    s
}

/// Defect 4: `scores --out FILE` replaced any existing file, a run's weights included.
#[test]
fn scores_refuses_an_existing_out_unless_forced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = write_config(tmp.path());
    let out = tmp.path().join("weights.safetensors");
    std::fs::write(&out, b"a run's weights").expect("write");

    let e = prune::scores(&scores_options(config.clone(), out.clone(), false))
        .expect_err("an existing --out is refused")
        .to_string();
    assert!(e.contains(&out.display().to_string()) && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read(&out).expect("read"), b"a run's weights");

    let s = prune::scores(&scores_options(config, out.clone(), true)).expect("--force replaces it");
    assert_eq!(s.tensors, 5);
    assert!(candle_core::safetensors::load(&out, &Device::Cpu).is_ok());
    assert!(temporaries(tmp.path()).is_empty(), "{:?}", temporaries(tmp.path()));
}

/// Defect 4: a failed save of scores (or masks) left its `.NAME.tmp` file behind.
#[test]
fn a_failed_save_of_scores_or_masks_leaves_no_temporary_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // a directory where the file should go: the final rename fails
    let out = tmp.path().join("scores.safetensors");
    std::fs::create_dir(&out).expect("mkdir");
    std::fs::write(out.join("keep"), b"x").expect("write");
    assert!(secateur_pruning::mask::save_scores(&small_scores(), &out).is_err());
    assert!(temporaries(tmp.path()).is_empty(), "{:?}", temporaries(tmp.path()));

    let out = tmp.path().join("masks.safetensors");
    std::fs::create_dir(&out).expect("mkdir");
    std::fs::write(out.join("keep"), b"x").expect("write");
    let mut m = MaskSet::new();
    m.insert(
        "fc1.weight",
        Tensor::ones((3, 3), DType::F32, &Device::Cpu).expect("tensor"),
    )
    .expect("insert");
    assert!(m.save(&out).is_err());
    assert!(temporaries(tmp.path()).is_empty(), "{:?}", temporaries(tmp.path()));
}

/// Defect 5: `prune --out DIR` replaced an earlier prune's files and wrote into run directories.
#[test]
fn prune_refuses_an_earlier_prune_or_a_run_directory_unless_forced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = write_config(tmp.path());

    for f in [
        "masks.safetensors",
        "scores.safetensors",
        "layers.md",
        "prune.json",
        "config.toml",
    ] {
        let out = tmp.path().join(format!("holds-{f}"));
        std::fs::create_dir(&out).expect("mkdir");
        std::fs::write(out.join(f), b"earlier").expect("write");
        let e = prune::prune(&prune_options(config.clone(), out.clone(), false))
            .expect_err("an earlier result is refused")
            .to_string();
        assert!(
            e.contains(&out.display().to_string()) && e.contains(f) && e.contains("--force"),
            "{f}: {e}"
        );
        assert_eq!(std::fs::read(out.join(f)).expect("read"), b"earlier", "{f}");
        let n = std::fs::read_dir(&out).expect("read_dir").count();
        assert_eq!(n, 1, "{f}: a refused prune wrote into {}", out.display());
    }

    // a new directory, an existing empty one, then --force over an earlier prune
    let out = tmp.path().join("pruned");
    prune::prune(&prune_options(config.clone(), out.clone(), false)).expect("new directory");
    let e = prune::prune(&prune_options(config.clone(), out.clone(), false))
        .expect_err("a second prune is refused")
        .to_string();
    assert!(e.contains("masks.safetensors") && e.contains("--force"), "{e}");
    prune::prune(&prune_options(config.clone(), out.clone(), true)).expect("--force replaces it");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    prune::prune(&prune_options(config, empty, false)).expect("an empty directory is fine");
}

/// Defect 14: weights, predictions, masks and scores were written with mode 0600 (the
/// temporary files of the safetensors writer), every other file with the umask's mode.
#[test]
fn files_written_get_the_umask_mode() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let want = umask_mode(tmp.path());

    let scores = tmp.path().join("scores.safetensors");
    secateur_pruning::mask::save_scores(&small_scores(), &scores).expect("save scores");
    assert_eq!(mode(&scores), want, "scores");

    let masks = tmp.path().join("masks.safetensors");
    let mut m = MaskSet::new();
    m.insert(
        "fc1.weight",
        Tensor::ones((3, 3), DType::F32, &Device::Cpu).expect("tensor"),
    )
    .expect("insert");
    m.save(&masks).expect("save masks");
    assert_eq!(mode(&masks), want, "masks");

    let weights = tmp.path().join("weights.safetensors");
    let (k, t) = (
        "w".to_string(),
        Tensor::zeros(4, DType::F32, &Device::Cpu).expect("tensor"),
    );
    secateur_experiments::atomic::write_safetensors(&weights, [(&k, &t)]).expect("save weights");
    assert_eq!(mode(&weights), want, "weights");

    let text = tmp.path().join("a.json");
    secateur_experiments::atomic::write_string(&text, "{}").expect("write string");
    assert_eq!(mode(&text), want, "a.json");
    assert!(temporaries(tmp.path()).is_empty(), "{:?}", temporaries(tmp.path()));
}

/// Defect 14, end to end: every file of a trained run (weights, predictions, checkpoints,
/// metrics, plots) has the umask's mode.
#[test]
fn every_file_of_a_run_gets_the_umask_mode() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let want = umask_mode(tmp.path());
    let run = tmp.path().join("run");
    commands::train(&config(&[]), &train_options(&run), None).expect("train");
    let mut stack = vec![run];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files += 1;
                assert_eq!(mode(&p), want, "{}", p.display());
            }
        }
    }
    assert!(files >= 5, "{files} files");
}

/// Defect 16: a run that diverged in its first epoch said "the last good checkpoint is kept",
/// though it had none; a run that diverges after a checkpoint names the one that is kept.
#[test]
fn a_diverged_run_says_whether_it_has_a_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("diverged");
    let e = commands::train(&config(&["optim.lr=1e30"]), &train_options(&run), None)
        .expect_err("lr 1e30 diverges")
        .to_string();
    assert!(e.contains("diverged"), "{e}");
    assert!(!e.contains("checkpoint is kept"), "{e}");
    assert!(e.contains("no checkpoint"), "{e}");

    let run = tmp.path().join("later");
    commands::train(&config(&[]), &train_options(&run), None).expect("one good epoch");
    let e = commands::train(
        &config(&["optim.lr=1e30", "train.epochs=2"]),
        &train_options(&run),
        Some(&run),
    )
    .expect_err("lr 1e30 diverges in the second epoch")
    .to_string();
    assert!(e.contains("diverged"), "{e}");
    assert!(e.contains("epoch-0001") && e.contains("is kept"), "{e}");
}
