//! The `SECATEUR_DATA` variable in the lookup order. Its own test binary (own process), so that
//! setting the variable cannot disturb the other data tests.

use std::path::Path;

use secateur_experiments::data::{load_table, search_dirs, DATA_ENV};

type R = Result<(), Box<dyn std::error::Error>>;

#[test]
fn env_var_in_both_forms_and_after_explicit_dir() -> R {
    let env_dir = tempfile::tempdir()?;
    let explicit = tempfile::tempdir()?;
    std::env::set_var(DATA_ENV, env_dir.path());

    let dirs = search_dirs("diabetes", Some(explicit.path()));
    assert_eq!(dirs[0], explicit.path());
    assert_eq!(dirs[1], explicit.path().join("diabetes"));
    assert_eq!(dirs[2], env_dir.path());
    assert_eq!(dirs[3], env_dir.path().join("diabetes"));
    assert_eq!(dirs[4], Path::new("/usr/share/datasets/diabetes"));
    // Shipped sets end with the repository's data folder and ./data.
    assert!(dirs.last().is_some_and(|d| d == Path::new("data/diabetes")));

    // `$SECATEUR_DATA/<name>/file` is found before the shipped copy.
    let sub = env_dir.path().join("diabetes");
    std::fs::create_dir(&sub)?;
    std::fs::write(sub.join("diabetes.csv"), "a,target\n1,2\n3,4\n")?;
    let t = load_table("diabetes", None)?;
    assert_eq!(t.source, sub.join("diabetes.csv"));
    assert_eq!(t.set.len(), 2);

    // `$SECATEUR_DATA/file` wins over `$SECATEUR_DATA/<name>/file`.
    std::fs::write(env_dir.path().join("diabetes.csv"), "a,target\n1,2\n")?;
    assert_eq!(load_table("diabetes", None)?.set.len(), 1);

    // An explicit directory comes first.
    std::fs::write(
        explicit.path().join("diabetes.csv"),
        "a,b,target\n1,2,3\n5,6,7\n9,9,9\n",
    )?;
    let t = load_table("diabetes", Some(explicit.path()))?;
    assert_eq!((t.set.len(), t.set.n_features), (3, 2));

    std::env::remove_var(DATA_ENV);
    assert_eq!(load_table("diabetes", None)?.set.len(), 442);
    Ok(())
}
