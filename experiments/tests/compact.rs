//! `prune --method structured`, the fine-tune with its masks, and `compact`, through the library
//! command functions on the shipped Fashion-MNIST subset.

use candle_core::Device;
use secateur_experiments::commands::{self, CompactOptions, TrainOptions};
use secateur_experiments::config::StudyConfig;
use secateur_experiments::structured::{self, StructuredPruneOptions};
use secateur_pruning::structured::{Cost, FilterCriterion};
use secateur_pruning::{MaskSet, Scope};
use std::path::{Path, PathBuf};

const LENET: &str = r#"
name = "compact-test"
seed = 5
[data]
name = "fashion-mnist-mini"
batch_size = 200
[model]
arch = "lenet5"
[train]
epochs = 1
"#;

fn train(cfg: &StudyConfig, out: &Path, masks: Option<PathBuf>) -> serde_json::Map<String, serde_json::Value> {
    let opts = TrainOptions {
        out: Some(out.to_path_buf()),
        quiet: true,
        masks,
        ..TrainOptions::default()
    };
    commands::train(cfg, &opts, None).expect("train").metrics
}

fn prune_opts(run: &Path, out: &Path, criterion: FilterCriterion) -> StructuredPruneOptions {
    StructuredPruneOptions {
        criterion,
        fraction: 0.5,
        cost: Cost::Flops,
        scope: Scope::PerLayer,
        run: run.to_path_buf(),
        overrides: vec![],
        out: out.to_path_buf(),
        data_dir: None,
        force: false,
    }
}

/// The whole path: a trained LeNet-5, half its FLOPs removed by ℓ1 filter norms, fine-tuned from
/// the run's weights with the masks held, compacted; the compacted run has the kept widths,
/// computes what the masked network computes (over the whole test set), and `eval` and `train`
/// load it.
#[test]
fn structured_prune_finetune_compact_eval() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = StudyConfig::from_toml(LENET, "lenet", &[]).unwrap();
    let run = tmp.path().join("run");
    train(&cfg, &run, None);
    let p = tmp.path().join("l1");
    let m = structured::prune(&prune_opts(&run, &p, FilterCriterion::L1)).expect("structured prune");
    let f = |k: &str| m[k].as_f64().unwrap();
    assert!(f("flops_kept") <= 0.5 * f("flops"), "{m:?}");
    assert!(f("reached_fraction") >= 0.5 && f("reached_fraction") < 0.6, "{m:?}");
    // the masks hold the coupled vectors too
    let masks = MaskSet::load(p.join("masks.safetensors"), &Device::Cpu).unwrap();
    assert!(masks.get("conv1.bias").is_some() && masks.get("fc2.bias").is_some());
    assert!(
        masks.get("fc3.bias").is_none(),
        "the classifier's outputs are never pruned"
    );

    // fine-tune from the run's weights with the masks held
    let mut ft_cfg = cfg.clone();
    ft_cfg.bayes.init_from = Some(run.clone());
    ft_cfg.optim.lr = 0.005;
    let ft = tmp.path().join("ft");
    train(&ft_cfg, &ft, Some(p.join("masks.safetensors")));

    let small = tmp.path().join("small");
    let s = commands::compact(&CompactOptions::untimed(&ft, &small)).expect("compact");
    let widths: Vec<usize> = s.widths.iter().map(|w| w.2).collect();
    assert!(widths[0] < 6 && widths[1] < 16 && widths[4] == 10, "{widths:?}");
    assert!(s.max_logit_diff <= 1e-5 * s.max_logit.max(1.0), "{s:?}");
    assert_eq!(s.masked.test_accuracy, s.compacted.test_accuracy);
    assert_eq!(s.compacted.flops, m["flops_kept"].as_u64().unwrap());
    assert!(s.compacted.params < s.masked.params / 2, "{s:?}");
    let written = StudyConfig::from_file(&small.join("config.toml"), &[]).unwrap();
    assert_eq!(written.model.widths.as_deref(), Some(widths.as_slice()));
    for f in ["weights.safetensors", "metrics.json", "compact.md", "compact.json"] {
        assert!(small.join(f).is_file(), "{f}");
    }
    // eval loads it like any run, with the accuracy compact measured
    let loaded = commands::LoadedRun::open(&small, None, "cpu").expect("eval opens the compacted run");
    let acc = loaded.predict(&loaded.data.test).unwrap().predictions;
    let k = acc.classes;
    let hits = acc
        .labels
        .iter()
        .enumerate()
        .filter(|&(n, &y)| {
            let row = &acc.probs[n * k..(n + 1) * k];
            let best = (0..k).fold(0, |b, c| if row[c] > row[b] { c } else { b });
            best == y as usize
        })
        .count();
    let correct = hits as f64 / acc.labels.len() as f64;
    assert!(
        (correct - s.compacted.test_accuracy).abs() < 1e-12,
        "{correct} vs {s:?}"
    );
    // and trains on from it
    let mut again = written.clone();
    again.bayes.init_from = Some(small.clone());
    train(&again, &tmp.path().join("again"), None);

    // the prune directory itself compacts too (masks on the unfine-tuned run)
    let direct = tmp.path().join("direct");
    let d = commands::compact(&CompactOptions::untimed(&p, &direct)).expect("compact a prune directory");
    assert_eq!(d.widths, s.widths);

    // no overwrite without --force; --force replaces only a compaction
    let e = commands::compact(&CompactOptions::untimed(&ft, &small))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--force"), "{e}");
    let mut forced = CompactOptions::untimed(&ft, &small);
    forced.force = true;
    commands::compact(&forced).expect("--force replaces a compaction");
    // --force keeps anything a compaction did not write
    std::fs::write(small.join("notes.txt"), "mine").unwrap();
    let e = commands::compact(&forced).unwrap_err().to_string();
    assert!(e.contains("notes.txt"), "{e}");
    assert!(small.join("notes.txt").is_file() && small.join("compact.json").is_file());
    // an output that is, or holds, the source is refused even with --force
    forced.out = ft.clone();
    let e = commands::compact(&forced).unwrap_err().to_string();
    assert!(e.contains("an input of this compaction"), "{e}");
    forced.out = tmp.path().to_path_buf();
    let e = commands::compact(&forced).unwrap_err().to_string();
    assert!(e.contains("an input of this compaction"), "{e}");
    assert!(ft.join("weights.safetensors").is_file());
    // a directory that is not a compaction's is refused with --force
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("x"), "x").unwrap();
    forced.out = other;
    let e = commands::compact(&forced).unwrap_err().to_string();
    assert!(e.contains("not an earlier compaction"), "{e}");
}

/// An unstructured mask (magnitude pruning) removes no whole filter: nothing to compact; a mask
/// that zeroes a filter's weights but leaves its bias live is refused, naming the bias.
#[test]
fn masks_that_are_not_structured_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = StudyConfig::from_toml(LENET, "lenet", &[]).unwrap();
    let run = tmp.path().join("run");
    train(&cfg, &run, None);
    let mk = |name: &str, rows: &[usize]| -> PathBuf {
        let mut set = MaskSet::new();
        let mut m = vec![1f32; 6 * 25];
        for &r in rows {
            m[r * 25..(r + 1) * 25].iter_mut().for_each(|v| *v = 0.0);
        }
        m[3] = 0.0;
        set.insert(
            "conv1.weight",
            candle_core::Tensor::from_vec(m, (6, 1, 5, 5), &Device::Cpu).unwrap(),
        )
        .unwrap();
        let f = tmp.path().join(name);
        set.save(&f).unwrap();
        f
    };
    let mut o = CompactOptions::untimed(&run, &tmp.path().join("a"));
    o.masks = Some(mk("none.safetensors", &[]));
    let e = commands::compact(&o).unwrap_err().to_string();
    assert!(e.contains("no whole filter"), "{e}");
    o.masks = Some(mk("rows.safetensors", &[1, 4]));
    let e = commands::compact(&o).unwrap_err().to_string();
    assert!(e.contains("conv1.bias") && e.contains("group 1"), "{e}");
    assert!(!tmp.path().join("a").exists(), "a refused compaction wrote its output");
    // a run without masks, and no --masks
    let e = commands::compact(&CompactOptions::untimed(&run, &tmp.path().join("b")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("masks.safetensors") && e.contains("--masks"), "{e}");
}

/// The filter criteria prune the same trained run to the same FLOP budget with different
/// filters (FPGM is not the ℓ1 ranking under another name); `bn-relu` and `fsm` on a network
/// without batch norm, a fraction outside [0, 1) and an existing output are refused.
#[test]
fn filter_criteria_choose_differently_and_bad_requests_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = StudyConfig::from_toml(LENET, "lenet", &[]).unwrap();
    let run = tmp.path().join("run");
    train(&cfg, &run, None);
    let mut kept = Vec::new();
    for c in [FilterCriterion::L1, FilterCriterion::L2, FilterCriterion::Fpgm] {
        let out = tmp.path().join(c.name());
        let m = structured::prune(&prune_opts(&run, &out, c)).expect("prune");
        assert!(m["flops_kept"].as_f64().unwrap() <= 0.5 * m["flops"].as_f64().unwrap());
        kept.push(std::fs::read(out.join("masks.safetensors")).unwrap());
    }
    assert!(kept[0] != kept[2], "FPGM chose the filters of the l1 norm");
    let e = structured::prune(&prune_opts(&run, &tmp.path().join("bn"), FilterCriterion::BnRelu))
        .unwrap_err()
        .to_string();
    println!("bn-relu on LeNet-5: {e}");
    assert!(e.contains("batch norm") || e.contains("no score"), "{e}");
    let e = structured::prune(&prune_opts(
        &run,
        &tmp.path().join("fsm"),
        FilterCriterion::FeatureShift,
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("batch norm") || e.contains("no score"), "{e}");
    let mut o = prune_opts(&run, &tmp.path().join("bad"), FilterCriterion::L1);
    o.fraction = 1.0;
    let e = structured::prune(&o).unwrap_err().to_string();
    assert!(e.contains("[0, 1)"), "{e}");
    let e = structured::prune(&prune_opts(&run, &tmp.path().join("l1"), FilterCriterion::L1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--force"), "{e}");
}
