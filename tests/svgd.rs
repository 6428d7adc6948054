//! `secateur study svgd` end to end on the smoke study file: rows for every split and
//! interaction, the same rows from a second fresh run (seeded), `--resume` adds nothing to a
//! finished study, an existing study is refused without `--force`, an unknown key is refused.

use std::path::Path;
use std::process::{Command, Output};

const SMOKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/configs/svgd-smoke.toml");

fn study(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_secateur"))
        .args(["study", "svgd", "--config"])
        .args(args)
        .output()
        .expect("run secateur")
}

/// The rows of `results.csv` without the wall-time column.
fn rows(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("results.csv"))
        .expect("results.csv")
        .lines()
        .map(|l| l.rsplit_once(',').map_or(l, |(head, _)| head).to_string())
        .collect()
}

#[test]
fn the_svgd_study_writes_reproducible_rows_and_refuses_overwrites() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for d in [&a, &b] {
        let o = study(&[SMOKE, "--out", d.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let ra = rows(&a);
    assert_eq!(ra.len(), 1 + 2 * 2, "{ra:?}");
    for r in &ra[1..] {
        let f: Vec<&str> = r.split(',').collect();
        let (rmse, ll): (f64, f64) = (f[2].parse().unwrap(), f[3].parse().unwrap());
        assert!(rmse > 0.3 && rmse < 1.5 && ll.is_finite(), "{r}");
    }
    assert_eq!(ra, rows(&b), "two fresh runs differ");
    assert!(a.join("table.md").is_file());

    let o = study(&[SMOKE, "--resume", a.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows(&a), ra);

    let o = study(&[SMOKE, "--out", a.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));

    let bad = tmp.path().join("bad.toml");
    let text = std::fs::read_to_string(SMOKE)
        .unwrap()
        .replace("seed = 0", "seed = 0\nsteps = 3");
    std::fs::write(&bad, text).unwrap();
    let o = study(&[bad.to_str().unwrap(), "--out", tmp.path().join("c").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("steps"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
