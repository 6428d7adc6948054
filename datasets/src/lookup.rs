//! Named data sets: where their files are looked for, loading them, and describing them.
//!
//! Lookup order for a name (the first place holding every needed file wins):
//! 1. the explicit `data_dir`, either holding the files itself or as `data_dir/<name>`;
//! 2. the `SECATEUR_DATA` environment variable, in the same two forms;
//! 3. the system location `/usr/share/datasets/<name>` (Debian's `dataset-fashion-mnist`
//!    installs `/usr/share/datasets/fashion-mnist`);
//! 4. the user cache `$XDG_CACHE_HOME/secateur/<name>`, or `~/.cache/secateur/<name>`;
//! 5. for the sets shipped with secateur only: the repository's `data/<name>` (next to this
//!    crate) and `./data/<name>`.
//!
//! CIFAR directories are also tried with the archive's own folder appended
//! (`cifar-10-batches-bin/`, `cifar-100-binary/`). Every file may be gzip-compressed, with or
//! without a `.gz` suffix.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::cifar::{read_cifar_files, CifarKind};
use super::csv::read_csv_table;
use super::digits::read_uci_digits;
use super::idx::read_idx_pair;
use super::{DataError, ImageSet, TableSet};

/// The names of the image data sets [`load_images`] knows.
pub const IMAGE_DATASETS: [&str; 6] = [
    "fashion-mnist",
    "mnist",
    "cifar10",
    "cifar100",
    "fashion-mnist-mini",
    "uci-digits",
];

/// The names of the regression tables [`load_table`] knows.
pub const TABLE_DATASETS: [&str; 2] = ["diabetes", "wine-quality-red"];

/// The names of the data sets shipped in the repository's `data/` folder.
pub const SHIPPED_DATASETS: [&str; 4] = ["fashion-mnist-mini", "uci-digits", "diabetes", "wine-quality-red"];

/// The environment variable naming a data directory.
pub const DATA_ENV: &str = "SECATEUR_DATA";

/// An image data set's train and test splits, and the directory they were read from.
#[derive(Debug, Clone)]
pub struct LoadedImages {
    /// The training split.
    pub train: ImageSet,
    /// The test split.
    pub test: ImageSet,
    /// The directory the files were found in.
    pub source: PathBuf,
}

/// A regression table and the file it was read from.
#[derive(Debug, Clone)]
pub struct LoadedTable {
    /// The table.
    pub set: TableSet,
    /// The file it was read from.
    pub source: PathBuf,
}

#[derive(Debug, Clone, Copy)]
enum Format {
    Idx,
    Cifar(CifarKind),
    UciDigits,
    Csv { file: &'static str, target: &'static str },
}

fn format_of(name: &str) -> Result<Format, DataError> {
    Ok(match name {
        "fashion-mnist" | "mnist" | "fashion-mnist-mini" => Format::Idx,
        "cifar10" => Format::Cifar(CifarKind::Cifar10),
        "cifar100" => Format::Cifar(CifarKind::Cifar100),
        "uci-digits" => Format::UciDigits,
        "diabetes" => Format::Csv {
            file: "diabetes.csv",
            target: "target",
        },
        "wine-quality-red" => Format::Csv {
            file: "winequality-red.csv",
            target: "quality",
        },
        _ => {
            return Err(DataError::UnknownName {
                name: name.to_string(),
                images: IMAGE_DATASETS.join(", "),
                tables: TABLE_DATASETS.join(", "),
            })
        }
    })
}

/// The directories searched for `name`, in order (see the module documentation), without
/// checking whether they exist. CIFAR's archive sub-folders are not listed here.
pub fn search_dirs(name: &str, data_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = data_dir {
        dirs.push(d.to_path_buf());
        dirs.push(d.join(name));
    }
    if let Some(e) = std::env::var_os(DATA_ENV).filter(|e| !e.is_empty()) {
        let e = PathBuf::from(e);
        dirs.push(e.clone());
        dirs.push(e.join(name));
    }
    dirs.push(Path::new("/usr/share/datasets").join(name));
    match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(c) => dirs.push(PathBuf::from(c).join("secateur").join(name)),
        None => {
            if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
                dirs.push(PathBuf::from(h).join(".cache").join("secateur").join(name));
            }
        }
    }
    if SHIPPED_DATASETS.contains(&name) {
        dirs.push(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../data")).join(name));
        dirs.push(Path::new("data").join(name));
    }
    dirs
}

/// `dir/file`, or `dir/file.gz`, whichever exists first.
fn find_file(dir: &Path, file: &str) -> Option<PathBuf> {
    let plain = dir.join(file);
    if plain.is_file() {
        return Some(plain);
    }
    let gz = dir.join(format!("{file}.gz"));
    gz.is_file().then_some(gz)
}

fn find_all(dir: &Path, files: &[&str]) -> Option<Vec<PathBuf>> {
    files.iter().map(|f| find_file(dir, f)).collect()
}

/// Where a data set's files were found.
struct Found {
    dir: PathBuf,
    files: Vec<PathBuf>,
}

const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// The first problem of a directory that holds some of `files` (as a file or a `.gz`, or any
/// entry of that name) but not all of them as files; `None` if it holds all or none.
fn partly(dir: &Path, files: &[&str]) -> Option<String> {
    let present = |f: &str| dir.join(f).exists() || dir.join(format!("{f}.gz")).exists();
    if !files.iter().any(|f| present(f)) {
        return None;
    }
    files.iter().find_map(|f| {
        if find_file(dir, f).is_some() {
            None
        } else if present(f) {
            Some(format!("`{f}` is not a file"))
        } else {
            Some(format!("`{f}` (or `{f}.gz`) is missing"))
        }
    })
}

fn locate(name: &str, format: Format, data_dir: Option<&Path>) -> Result<Found, DataError> {
    let mut searched = Vec::new();
    // The first two places are the explicit `data_dir` and `data_dir/<name>`.
    // If neither holds the whole set but one holds part of it, that is an error (rather than a
    // silent fall-back to another copy).
    let explicit = if data_dir.is_some() { 2 } else { 0 };
    let mut partial: Option<DataError> = None;
    for (k, dir) in search_dirs(name, data_dir).into_iter().enumerate() {
        if k == explicit {
            if let Some(e) = partial.take() {
                return Err(e);
            }
        }
        let tries: Vec<(PathBuf, Vec<&str>)> = match format {
            Format::Idx => vec![(dir, IDX_FILES.to_vec())],
            Format::Cifar(kind) => {
                let mut files = kind.train_files();
                files.push(kind.test_file());
                vec![(dir.join(kind.folder()), files.clone()), (dir, files)]
            }
            Format::UciDigits => vec![(dir, vec!["digits.csv"])],
            Format::Csv { file, .. } => vec![(dir, vec![file])],
        };
        for (d, files) in tries {
            if let Some(found) = find_all(&d, &files) {
                return Ok(Found { dir: d, files: found });
            }
            if k < explicit && partial.is_none() {
                if let Some(problem) = partly(&d, &files) {
                    partial = Some(DataError::Incomplete {
                        dir: d.clone(),
                        name: name.to_string(),
                        problem,
                    });
                }
            }
            searched.push(d);
        }
    }
    if let Some(e) = partial {
        return Err(e);
    }
    Err(DataError::NotFound {
        name: name.to_string(),
        searched,
    })
}

/// Finds and loads the image data set `name` (one of [`IMAGE_DATASETS`]), checking every file.
///
/// `uci-digits` has no split of its own: both `train` and `test` hold all 1,797 images
/// (converted to 1×28×28 as described in [`super::digits`]); use it as an out-of-distribution
/// test set.
pub fn load_images(name: &str, data_dir: Option<&Path>) -> Result<LoadedImages, DataError> {
    let format = format_of(name)?;
    if matches!(format, Format::Csv { .. }) {
        return Err(DataError::InvalidArgument {
            what: "name",
            detail: format!("{name:?} is a table, not an image data set; use load_table"),
        });
    }
    let found = locate(name, format, data_dir)?;
    let train_name = format!("{name}/train");
    let test_name = format!("{name}/test");
    let (train, test) = match format {
        Format::Idx => (
            read_idx_pair(&train_name, &found.files[0], &found.files[1], 10, Some((28, 28)))?,
            read_idx_pair(&test_name, &found.files[2], &found.files[3], 10, Some((28, 28)))?,
        ),
        Format::Cifar(kind) => {
            let (test_file, train_files) = found.files.split_last().ok_or_else(|| DataError::NotFound {
                name: name.to_string(),
                searched: vec![found.dir.clone()],
            })?;
            (
                read_cifar_files(&train_name, train_files, kind)?,
                read_cifar_files(&test_name, std::slice::from_ref(test_file), kind)?,
            )
        }
        Format::UciDigits => {
            let test = read_uci_digits(&found.files[0], &test_name)?;
            let mut train = test.clone();
            train.name = train_name;
            (train, test)
        }
        Format::Csv { .. } => unreachable!("tables were turned away above"),
    };
    Ok(LoadedImages {
        train,
        test,
        source: found.dir,
    })
}

/// Finds and loads the regression table `name` (one of [`TABLE_DATASETS`]).
pub fn load_table(name: &str, data_dir: Option<&Path>) -> Result<LoadedTable, DataError> {
    let format = format_of(name)?;
    let Format::Csv { target, .. } = format else {
        return Err(DataError::InvalidArgument {
            what: "name",
            detail: format!("{name:?} is an image data set, not a table; use load_images"),
        });
    };
    let found = locate(name, format, data_dir)?;
    let source = found.files[0].clone();
    let set = read_csv_table(&source, name, target)?;
    Ok(LoadedTable { set, source })
}

fn describe_images(out: &mut String, split: &str, set: &ImageSet) {
    let stats = set.pixel_stats();
    let _ = writeln!(out, "  {split}: {} images", set.len());
    let _ = writeln!(out, "    class counts: {:?}", set.class_counts());
    let fmt = |v: &[f32]| v.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(", ");
    let _ = writeln!(out, "    pixel mean per channel: [{}]", fmt(&stats.mean));
    let _ = writeln!(out, "    pixel std per channel:  [{}]", fmt(&stats.std));
}

/// A human-readable description of the data set `name` (for `secateur data info NAME`): where
/// it was found, split sizes, image shape, class counts and per-channel pixel mean/std of each
/// split — or, for a table, rows, columns and the target's mean/std.
pub fn describe(name: &str, data_dir: Option<&Path>) -> Result<String, DataError> {
    let mut out = String::new();
    if matches!(format_of(name)?, Format::Csv { .. }) {
        let t = load_table(name, data_dir)?;
        let (m, s) = t.set.target_stats();
        let _ = writeln!(out, "{name}: regression table");
        let _ = writeln!(out, "  found at: {}", t.source.display());
        let _ = writeln!(out, "  rows: {}", t.set.len());
        let _ = writeln!(out, "  features ({}): {}", t.set.n_features, t.set.columns.join(", "));
        let _ = writeln!(out, "  target: {} (mean {m:.4}, std {s:.4})", t.set.target);
    } else {
        let l = load_images(name, data_dir)?;
        let _ = writeln!(out, "{name}: image classification");
        let _ = writeln!(out, "  found at: {}", l.source.display());
        let _ = writeln!(
            out,
            "  image shape: {}×{}×{} (C×H×W), {} classes",
            l.train.channels, l.train.height, l.train.width, l.train.n_classes
        );
        if name == "uci-digits" {
            let _ = writeln!(
                out,
                "  note: train and test are the same 1,797 images (an OOD test set)"
            );
        }
        describe_images(&mut out, "train", &l.train);
        describe_images(&mut out, "test", &l.test);
    }
    Ok(out)
}
