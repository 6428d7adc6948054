//! A study on many machines without a cluster: `study svgd --slurm` writes the job-array and
//! join scripts, which run here with `bash` as Slurm would run them (task I with
//! `SLURM_ARRAY_TASK_ID=I`), and `study join` merges the shards into the rows of a sequential
//! run. The join's refusals: a missing shard (cells listed by name, no table), a shard of
//! another study config, a cell recorded twice with different values, an output directory
//! holding another study. (`.ci/slurm-test` runs the PaI smoke study through a real Slurm.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SMOKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/configs/svgd-smoke.toml");

fn secateur(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_secateur"))
        .args(args)
        .output()
        .expect("run secateur")
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn stderr_of_failure(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "should fail: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The rows of `results.csv` without the wall-time column (the last).
fn rows(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("results.csv"))
        .expect("results.csv")
        .lines()
        .map(|l| l.rsplit_once(',').map_or(l, |(head, _)| head).to_string())
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs a generated sbatch script with bash, as task `task` of its array.
fn run_script(script: &Path, task: Option<usize>) -> Output {
    let mut c = Command::new("bash");
    c.arg(script);
    if let Some(t) = task {
        c.env("SLURM_ARRAY_TASK_ID", t.to_string());
    }
    c.output().expect("bash")
}

#[test]
fn slurm_scripts_run_the_shards_and_the_join_gives_the_sequential_rows() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let seq = tmp.path().join("sequential");
    ok(&secateur(&["study", "svgd", "--config", SMOKE, "--out", s(&seq)]));
    let want = rows(&seq);
    assert_eq!(want.len(), 1 + 4, "{want:?}");

    let dir = tmp.path().join("cluster");
    let o = secateur(&[
        "study",
        "svgd",
        "--config",
        SMOKE,
        "--slurm",
        "--array-size",
        "3",
        "--out",
        s(&dir),
    ]);
    ok(&o);
    let array = std::fs::read_to_string(dir.join("array.sbatch")).expect("array.sbatch");
    assert!(array.contains("#SBATCH --array=0-2"), "{array}");
    assert!(std::fs::read_to_string(dir.join("resolved.toml"))
        .expect("resolved")
        .contains("svgd-smoke"));
    // the scripts are not replaced without --force
    let err = stderr_of_failure(&secateur(&[
        "study",
        "svgd",
        "--config",
        SMOKE,
        "--slurm",
        "--out",
        s(&dir),
    ]));
    assert!(err.contains("--force"), "{err}");

    // Tasks 0 and 2 run; the join lists the cells of shard 1 and writes no table.
    for t in [0, 2] {
        ok(&run_script(&dir.join("array.sbatch"), Some(t)));
    }
    let err = stderr_of_failure(&run_script(&dir.join("join.sbatch"), None));
    assert!(err.contains("missing") && err.contains("shard 1/3"), "{err}");
    let study = dir.join("study");
    assert!(std::fs::read_to_string(study.join("missing.md"))
        .expect("missing.md")
        .contains("split=0"));
    assert!(!study.join("table.md").exists(), "a partial table was written");

    // Task 1 runs (as a resubmission would), the join completes: the sequential rows, once each.
    ok(&run_script(&dir.join("array.sbatch"), Some(1)));
    ok(&run_script(&dir.join("join.sbatch"), None));
    assert_eq!(rows(&study), want);
    assert!(study.join("table.md").is_file());
    assert!(!study.join("missing.md").exists());
    // a task run again resumes its shard and adds nothing
    ok(&run_script(&dir.join("array.sbatch"), Some(1)));
    // the same shard directory given twice: no row is duplicated
    let shard = |i: usize| dir.join("shards").join(i.to_string());
    let again = tmp.path().join("again");
    ok(&secateur(&[
        "study",
        "join",
        s(&shard(0)),
        s(&shard(1)),
        s(&shard(1)),
        s(&shard(2)),
        "--out",
        s(&again),
    ]));
    assert_eq!(rows(&again), want);
    // joining into a directory that holds another study is refused without --force
    let err = stderr_of_failure(&secateur(&[
        "study",
        "join",
        s(&shard(0)),
        s(&shard(1)),
        s(&shard(2)),
        "--out",
        s(&seq),
    ]));
    assert!(err.contains("--force"), "{err}");
}

#[test]
fn the_join_refuses_another_config_and_conflicting_rows() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shard = |cfg: &str, i: usize, name: &str| -> PathBuf {
        let d = tmp.path().join(name);
        let spec = format!("{i}/2");
        ok(&secateur(&[
            "study",
            "svgd",
            "--config",
            cfg,
            "--shard",
            &spec,
            "--out",
            s(&d),
        ]));
        d
    };
    let (a, b) = (shard(SMOKE, 0, "a"), shard(SMOKE, 1, "b"));
    // the same study with another seed: another config hash
    let other = tmp.path().join("other.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(SMOKE).unwrap().replace("seed = 0", "seed = 1"),
    )
    .unwrap();
    let c = shard(s(&other), 1, "c");
    let err = stderr_of_failure(&secateur(&[
        "study",
        "join",
        s(&a),
        s(&c),
        "--out",
        s(&tmp.path().join("j1")),
    ]));
    assert!(err.contains("another study"), "{err}");

    // a copy of shard b with one value changed records a cell differently
    let d = tmp.path().join("d");
    std::fs::create_dir_all(&d).unwrap();
    for f in std::fs::read_dir(&b).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, d.join(f.file_name().unwrap())).unwrap();
        }
    }
    let csv = std::fs::read_to_string(d.join("results.csv")).unwrap();
    let mut lines: Vec<String> = csv.lines().map(String::from).collect();
    let mut f: Vec<String> = lines[1].split(',').map(String::from).collect();
    f[2] = format!("{}1", f[2]); // rmse
    lines[1] = f.join(",");
    std::fs::write(d.join("results.csv"), lines.join("\n") + "\n").unwrap();
    let err = stderr_of_failure(&secateur(&[
        "study",
        "join",
        s(&a),
        s(&b),
        s(&d),
        "--out",
        s(&tmp.path().join("j2")),
    ]));
    assert!(err.contains("differently"), "{err}");

    // no manifest at all
    let err = stderr_of_failure(&secateur(&[
        "study",
        "join",
        s(&tmp.path().join("nothing")),
        "--out",
        s(&tmp.path().join("j3")),
    ]));
    assert!(err.contains("no shard has started"), "{err}");
    // a study command given directories, join given a config
    let err = stderr_of_failure(&secateur(&["study", "svgd", s(&a), "--config", SMOKE]));
    assert!(err.contains("study join"), "{err}");
    let err = stderr_of_failure(&secateur(&[
        "study",
        "join",
        s(&a),
        "--config",
        SMOKE,
        "--out",
        s(&tmp.path().join("j4")),
    ]));
    assert!(err.contains("shard directories"), "{err}");

    // the output is a shard directory, lies in one or holds one: refused, even with --force
    for out in [a.clone(), a.join("joined"), tmp.path().to_path_buf()] {
        let err = stderr_of_failure(&secateur(&["study", "join", s(&a), s(&b), "--out", s(&out), "--force"]));
        assert!(err.contains("shard directory"), "{}: {err}", out.display());
    }
    // a non-empty directory that holds no join of these shards (here: a file of the user's)
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let err = stderr_of_failure(&secateur(&["study", "join", s(&a), s(&b), "--out", s(&foreign)]));
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(foreign.join("notes.txt")).unwrap(), "mine");
    // a join again with a shard left out says what is missing (the shards still hold every row,
    // so the complete join comes back when all are given); two spellings of one directory are
    // one shard directory
    let j5 = tmp.path().join("j5");
    ok(&secateur(&["study", "join", s(&a), s(&b), "--out", s(&j5)]));
    let full = rows(&j5);
    stderr_of_failure(&secateur(&["study", "join", s(&a), "--out", s(&j5)]));
    assert!(j5.join("missing.md").is_file() && !j5.join("table.md").exists());
    // a Slurm directory whose path sbatch's #SBATCH lines cannot carry
    let spaced = tmp.path().join("with space");
    let err = stderr_of_failure(&secateur(&[
        "study",
        "svgd",
        "--config",
        SMOKE,
        "--slurm",
        "--out",
        s(&spaced),
    ]));
    assert!(err.contains("space"), "{err}");
    let b2 = tmp.path().join(".").join("b");
    ok(&secateur(&["study", "join", s(&a), s(&b), s(&b2), "--out", s(&j5)]));
    assert_eq!(rows(&j5), full);
}
