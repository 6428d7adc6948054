//! The `SECATEUR_DATA` variable in the lookup order. The variable is never set in this process:
//! the test runs its body again in a child process of this test binary started with the variable
//! (environment changes at run time race with other threads).

use std::path::Path;

use secateur_experiments::data::{load_table, search_dirs, DATA_ENV};

type R = Result<(), Box<dyn std::error::Error>>;

/// Without the variable, the shipped copy is found; then the body runs in a child process
/// whose environment has `SECATEUR_DATA` pointing at a fresh directory.
#[test]
fn env_var_in_both_forms_and_after_explicit_dir() -> R {
    let Some(env_dir) = std::env::var_os(DATA_ENV) else {
        assert_eq!(load_table("diabetes", None)?.set.len(), 442);
        let env_dir = tempfile::tempdir()?;
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(["env_var_in_both_forms_and_after_explicit_dir", "--exact", "--nocapture"])
            .env(DATA_ENV, env_dir.path())
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed;"),
            "child run failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return Ok(());
    };
    let env_dir = std::path::PathBuf::from(env_dir);
    let explicit = tempfile::tempdir()?;

    let dirs = search_dirs("diabetes", Some(explicit.path()));
    assert_eq!(dirs[0], explicit.path());
    assert_eq!(dirs[1], explicit.path().join("diabetes"));
    assert_eq!(dirs[2], env_dir.as_path());
    assert_eq!(dirs[3], env_dir.as_path().join("diabetes"));
    assert_eq!(dirs[4], Path::new("/usr/share/datasets/diabetes"));
    // Shipped sets end with the repository's data folder and ./data.
    assert!(dirs.last().is_some_and(|d| d == Path::new("data/diabetes")));

    // `$SECATEUR_DATA/<name>/file` is found before the shipped copy.
    let sub = env_dir.as_path().join("diabetes");
    std::fs::create_dir(&sub)?;
    std::fs::write(sub.join("diabetes.csv"), "a,target\n1,2\n3,4\n")?;
    let t = load_table("diabetes", None)?;
    assert_eq!(t.source, sub.join("diabetes.csv"));
    assert_eq!(t.set.len(), 2);

    // `$SECATEUR_DATA/file` wins over `$SECATEUR_DATA/<name>/file`.
    std::fs::write(env_dir.as_path().join("diabetes.csv"), "a,target\n1,2\n")?;
    assert_eq!(load_table("diabetes", None)?.set.len(), 1);

    // An explicit directory comes first.
    std::fs::write(
        explicit.path().join("diabetes.csv"),
        "a,b,target\n1,2,3\n5,6,7\n9,9,9\n",
    )?;
    let t = load_table("diabetes", Some(explicit.path()))?;
    assert_eq!((t.set.len(), t.set.n_features), (3, 2));
    Ok(())
}
