//! The compression study end to end through the `secateur` binary at smoke size
//! (`experiments/configs/compression-smoke.toml`: a deterministic and a mean-field MLP, 2 seeds,
//! 2 sparsities, a one-epoch fine-tune): every row is there and sensible, a study killed
//! (SIGKILL) mid-way and continued with `--resume` (in two shards, then the rest) gives the same
//! rows, a study directory is not overwritten without `--force`, a criterion that does not apply
//! to its model is refused before anything is written, and the figure is a PNG.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SMOKE: &str = "experiments/configs/compression-smoke.toml";
const BIN: &str = env!("CARGO_BIN_EXE_secateur");

/// 2 models × 2 seeds × (dense + 2 criteria × 2 sparsities) × (without, with the fine-tune).
const ROWS: usize = 2 * 2 * (1 + 2 * 2) * 2;

fn smoke() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(SMOKE)
}

fn study(config: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .args(["study", "compression", "--config", config.to_str().unwrap(), "--quiet"])
        .args(extra)
        .output()
        .unwrap()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn data_lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("results.csv"))
        .map(|t| t.lines().skip(1).map(str::to_string).collect())
        .unwrap_or_default()
}

/// The rows without their wall time (the `seconds` column, the 11th).
fn rows_but_seconds(dir: &Path) -> Vec<String> {
    data_lines(dir)
        .iter()
        .map(|l| {
            let mut f: Vec<&str> = l.splitn(12, ',').collect();
            f.remove(10);
            f.join(",")
        })
        .collect()
}

fn field(line: &str, k: usize) -> &str {
    line.splitn(12, ',').nth(k).unwrap()
}

fn num(line: &str, k: usize) -> f64 {
    field(line, k).parse().unwrap()
}

#[test]
fn the_smoke_study_writes_its_rows_resumes_to_the_same_rows_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = tmp.path().join("straight");
    ok(&study(&smoke(), &["--out", straight.to_str().unwrap()]));

    // every row, in grid order, none failed, each sensible
    let lines = data_lines(&straight);
    assert_eq!(lines.len(), ROWS, "{lines:#?}");
    assert!(
        lines[0].starts_with("deterministic,0,dense,0,0.000000,false,"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("deterministic,0,dense,0,0.000000,true,"),
        "{}",
        lines[1]
    );
    for l in &lines {
        assert_eq!(field(l, 11), "\"\"", "a failed row: {l}");
        let (target, reached) = (num(l, 3), num(l, 4));
        assert!(
            (reached - target).abs() < 0.01,
            "reached {reached} for target {target}: {l}"
        );
        let (acc, nll, ece, auroc) = (num(l, 6), num(l, 7), num(l, 8), num(l, 9));
        assert!(acc > 0.1 && acc <= 1.0, "{l}");
        assert!(nll > 0.0 && nll.is_finite(), "{l}");
        assert!((0.0..=1.0).contains(&ece), "{l}");
        assert!((0.0..=1.0).contains(&auroc), "{l}");
    }
    // the two rows of a cell share their masks, and the fine-tune changed the network
    let cell: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("mean-field,1,snr,0.9,"))
        .collect();
    assert_eq!(cell.len(), 2);
    assert_eq!(field(cell[0], 4), field(cell[1], 4));
    assert_ne!(field(cell[0], 7), field(cell[1], 7));
    // before the fine-tune, magnitude pruning to 90% costs more accuracy than to 50%
    let acc = |prefix: &str| num(lines.iter().find(|l| l.starts_with(prefix)).unwrap(), 6);
    assert!(
        acc("deterministic,0,magnitude,0.5,") > acc("deterministic,0,magnitude,0.9,"),
        "{lines:#?}"
    );
    // the table and the figure
    let md = std::fs::read_to_string(straight.join("compression.md")).unwrap();
    assert!(md.contains("| mean-field | snr | yes |"), "{md}");
    let png = std::fs::read(straight.join("compression.png")).unwrap();
    assert!(png.len() > 1000 && png.starts_with(b"\x89PNG\r\n\x1a\n"));

    // a second study into the same directory is refused, and nothing changes
    let before = std::fs::read(straight.join("results.csv")).unwrap();
    let o = study(&smoke(), &["--out", straight.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("already holds a compression study"), "{err}");
    assert_eq!(before, std::fs::read(straight.join("results.csv")).unwrap());

    // the same study killed (SIGKILL) once it has written some rows of its second network
    let killed = tmp.path().join("killed");
    let mut child = Command::new(BIN)
        .args(["study", "compression", "--config", smoke().to_str().unwrap(), "--quiet"])
        .args(["--out", killed.to_str().unwrap()])
        .spawn()
        .unwrap();
    loop {
        if data_lines(&killed).len() >= 12 {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the study ended ({status}) before it could be killed");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = data_lines(&killed).len();
    assert!(partial < ROWS, "the study finished before the kill");
    let first_run = killed.join("runs").join("deterministic-s0").join("metrics.json");
    let trained = std::fs::read(&first_run).unwrap();
    // continued in two shards of (model, seed) units, then to the end
    let k = killed.to_str().unwrap();
    ok(&study(&smoke(), &["--resume", k, "--shard", "1/2"]));
    ok(&study(&smoke(), &["--resume", k]));
    assert_eq!(rows_but_seconds(&killed), rows_but_seconds(&straight));
    assert_eq!(
        trained,
        std::fs::read(&first_run).unwrap(),
        "a finished run was trained again"
    );
    // continuing a finished study runs nothing and keeps its rows
    let before = std::fs::read(killed.join("results.csv")).unwrap();
    ok(&study(&smoke(), &["--resume", k]));
    assert_eq!(before, std::fs::read(killed.join("results.csv")).unwrap());
}

#[test]
fn a_criterion_that_does_not_apply_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/configs");
    let base = configs.join("quickstart-smoke.toml");
    let cases = [
        // refused when the file is read: a posterior criterion on deterministic layers
        (
            "set = [\"train.epochs=1\"]\ncriteria = [\"magnitude\", \"snr\"]",
            "criterion `snr` reads a posterior",
        ),
        // refused on the built model: mean-field layers have no gate inclusion probability
        (
            "set = ['model.layers=\"mean-field\"']\ncriteria = [\"snr\", \"inclusion\"]",
            "model `m`: criterion `inclusion` does not apply",
        ),
    ];
    for (i, (model, want)) in cases.iter().enumerate() {
        let file = tmp.path().join(format!("study-{i}.toml"));
        std::fs::write(
            &file,
            format!(
                "[compression]\nname = \"bad\"\nseeds = [0]\nsparsities = [0.5]\n\n[[compression.models]]\nname = \"m\"\nconfig = {:?}\n{model}\n",
                base.to_str().unwrap()
            ),
        )
        .unwrap();
        let out = tmp.path().join(format!("out-{i}"));
        let o = study(&file, &["--out", out.to_str().unwrap()]);
        assert!(!o.status.success(), "case {i} ran");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "case {i}: expected `{want}` in {err}");
        assert!(!out.exists(), "case {i}: {} was created", out.display());
    }
}

/// The `dllp` criterion in a study: a deterministic smoke MLP, one seed, DLLP with 2 particles
/// and one epoch beside magnitude; its rows reach the target sparsity, carry no error, and a
/// second study gives the same rows (seeded); a `[compression.dllp]` key it does not know is
/// refused before anything runs.
#[test]
fn dllp_cells_run_reproducibly_in_a_study() {
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/configs/quickstart-smoke.toml"),
    )
    .unwrap();
    std::fs::write(tmp.path().join("base.toml"), base).unwrap();
    let text = |extra: &str| {
        format!(
            "[compression]\nname = \"d\"\nseeds = [0]\nsparsities = [0.9]\nood = \"uci-digits\"\nsamples_per_class = 2\n\n\
             [compression.dllp]\nparticles = 2\nepochs = 1\n{extra}\n\n\
             [[compression.models]]\nname = \"det\"\nconfig = \"base.toml\"\nset = [\"train.epochs=1\", \"model.hidden=[32]\"]\n\
             criteria = [\"magnitude\", \"dllp\"]\n"
        )
    };
    let cfg = tmp.path().join("study.toml");
    std::fs::write(&cfg, text("")).unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    ok(&study(&cfg, &["--out", a.to_str().unwrap()]));
    ok(&study(&cfg, &["--out", b.to_str().unwrap()]));
    let rows = data_lines(&a);
    // dense, magnitude and dllp, each without and with the fine-tune
    assert_eq!(rows.len(), 6, "{rows:?}");
    let dllp: Vec<&String> = rows.iter().filter(|r| r.contains(",dllp,")).collect();
    assert_eq!(dllp.len(), 2);
    for r in &dllp {
        let f: Vec<&str> = r.split(',').collect();
        let (sparsity, acc): (f64, f64) = (f[4].parse().unwrap(), f[6].parse().unwrap());
        assert!((sparsity - 0.9).abs() < 1e-3 && acc > 0.5 && f[11] == "\"\"", "{r}");
    }
    let strip = |rows: Vec<String>| -> Vec<String> {
        rows.into_iter()
            .map(|r| {
                let f: Vec<&str> = r.split(',').collect();
                // all but the wall time
                [&f[..10], &f[11..]].concat().join(",")
            })
            .collect()
    };
    assert_eq!(strip(rows), strip(data_lines(&b)));

    std::fs::write(&cfg, text("particle = 3")).unwrap();
    let o = study(&cfg, &["--out", tmp.path().join("c").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("particle"));
    assert!(!tmp.path().join("c").exists());
}
