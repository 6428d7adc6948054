//! `secateur study join SHARD_DIR... --out DIR`: merges the shards of one study into one study
//! directory, then writes its table, report and figures as the study itself does on
//! `--resume --report-only`.
//!
//! The join refuses shards of another study (their manifests' config hashes differ), rows
//! outside the study's grid, and a cell recorded twice with different values; a cell recorded
//! twice with the same line is kept once, so that no row is lost or duplicated. Cells that no
//! shard has recorded are listed by name with the shard that owes them, in `missing.md`, and
//! the join fails without writing a table; failed cells (rows with an error, e.g. a diverging
//! run) are listed in `join.md` and by the table as the study marks them.

use super::manifest::{ShardManifest, StudyKind};
use crate::atomic;
use crate::error::{ExpError, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Options of [`join`].
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    /// The joined study directory.
    pub out: PathBuf,
    /// Replace a study in `out` that is not an earlier join of the same study.
    pub force: bool,
    /// Data directory searched first (the table of some studies reloads the data).
    pub data_dir: Option<PathBuf>,
}

/// What a join found (also written as `join.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinOutcome {
    /// The kind of study.
    pub study: StudyKind,
    /// The study's config hash.
    pub config_hash: String,
    /// The shard directories read.
    pub shard_dirs: Vec<PathBuf>,
    /// The number of shards of the study.
    pub shards: usize,
    /// Rows in the joined `results.csv`.
    pub rows: usize,
    /// Cells with a row whose `error` is not empty, by name.
    pub failed: Vec<String>,
    /// Cells without a row, by name, with the shard that owes them.
    pub missing: Vec<String>,
    /// Shard indices of which no directory had a manifest.
    pub absent_shards: Vec<usize>,
}

/// Splits one line of a `results.csv` (fields separated by commas; a field in double quotes may
/// hold commas).
pub fn split_csv_line(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// `column=value …` of a cell.
fn cell_name(columns: &[String], values: &[String]) -> String {
    columns
        .iter()
        .zip(values)
        .map(|(c, v)| format!("{c}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One shard's rows: its header and `(key, line)` pairs.
struct ShardRows {
    header: String,
    rows: Vec<(Vec<String>, String)>,
}

fn read_rows(dir: &Path, key_columns: &[String]) -> Result<Option<ShardRows>> {
    let path = dir.join("results.csv");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ExpError::io(&path, e)),
    };
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default().to_string();
    let cols: Vec<&str> = header.split(',').collect();
    let idx: Vec<usize> = key_columns
        .iter()
        .map(|k| {
            cols.iter().position(|c| c == k).ok_or_else(|| ExpError::Run {
                path: path.clone(),
                message: format!("has no column `{k}` (header `{header}`)"),
            })
        })
        .collect::<Result<_>>()?;
    let mut rows = Vec::new();
    for (n, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f = split_csv_line(line);
        if f.len() != cols.len() {
            return Err(ExpError::Run {
                path: path.clone(),
                message: format!("line {}: {} fields, the header has {}", n + 2, f.len(), cols.len()),
            });
        }
        rows.push((idx.iter().map(|&i| f[i].clone()).collect(), line.to_string()));
    }
    Ok(Some(ShardRows { header, rows }))
}

/// The value of the `error` column of `line` under `header` (empty when there is none).
fn error_of(header: &str, line: &str) -> String {
    let Some(i) = header.split(',').position(|c| c == "error") else {
        return String::new();
    };
    split_csv_line(line)
        .get(i)
        .map(|s| s.trim_matches('"').trim().to_string())
        .unwrap_or_default()
}

/// Copies `src` into `dst` (a tree), hard-linking files where the file system allows; files
/// already in `dst` are left as they are.
fn link_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(|e| ExpError::io(dst, e))?;
    for entry in std::fs::read_dir(src).map_err(|e| ExpError::io(src, e))? {
        let entry = entry.map_err(|e| ExpError::io(src, e))?;
        let (s, d) = (entry.path(), dst.join(entry.file_name()));
        let ty = entry.file_type().map_err(|e| ExpError::io(&s, e))?;
        if ty.is_dir() {
            link_tree(&s, &d)?;
        } else if ty.is_file() {
            // a file already there came from an earlier shard (the same run in two shard
            // directories): the first is kept, and nothing is ever written onto an existing path,
            // which may be a hard link to a shard's own file
            if d.symlink_metadata().is_ok() {
                continue;
            }
            if std::fs::hard_link(&s, &d).is_err() {
                std::fs::copy(&s, &d).map_err(|e| ExpError::io(&s, e))?;
            }
        }
    }
    Ok(())
}

/// Merges the shard directories `dirs` into `opts.out` and writes the study's table; see the
/// module doc. Returns the outcome, also when cells are missing (then nothing but
/// `results.csv`, `missing.md`, `join.md` and `join.json` is written; the caller fails).
pub fn join(dirs: &[PathBuf], opts: &JoinOptions) -> Result<JoinOutcome> {
    if dirs.is_empty() {
        return Err(ExpError::config("study join", "name at least one shard directory"));
    }
    // One spelling per directory (`a`, `./a` and `/abs/a` are one shard directory), and an output
    // that is neither a shard directory nor inside or around one.
    let canonical = |p: &Path| {
        p.canonicalize()
            .unwrap_or_else(|_| std::path::absolute(p).unwrap_or(p.to_path_buf()))
    };
    let dirs: Vec<PathBuf> = dirs.iter().map(|d| canonical(d)).collect();
    let out_abs = match (opts.out.parent(), opts.out.file_name()) {
        (Some(parent), Some(name)) if !opts.out.exists() => canonical(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        })
        .join(name),
        _ => canonical(&opts.out),
    };
    if let Some(d) = dirs
        .iter()
        .find(|d| out_abs == **d || out_abs.starts_with(d) || d.starts_with(&out_abs))
    {
        return Err(ExpError::config(
            "--out",
            format!(
                "{} is, holds or lies in the shard directory {}; join into a directory of its own",
                opts.out.display(),
                d.display()
            ),
        ));
    }
    let dirs = &dirs[..];
    // The manifests, and the directories that have none (a task that never started).
    let mut manifests: Vec<(PathBuf, PathBuf, ShardManifest)> = Vec::new();
    let mut empty: Vec<PathBuf> = Vec::new();
    for d in dirs {
        let found = ShardManifest::read_all(d)?;
        if found.is_empty() {
            empty.push(d.clone());
        }
        manifests.extend(found.into_iter().map(|(p, m)| (d.clone(), p, m)));
    }
    let Some((_, first_path, first)) = manifests.first().cloned() else {
        return Err(ExpError::Run {
            path: dirs[0].clone(),
            message: format!(
                "no shard manifest (shard-I-of-N.json) in any of the {} directories given: no shard has started",
                dirs.len()
            ),
        });
    };
    for (_, p, m) in &manifests {
        if m.study != first.study || m.config_hash != first.config_hash {
            return Err(ExpError::Run {
                path: p.clone(),
                message: format!(
                    "belongs to another study ({} {}, config {}) than {} ({} {}, config {}); shards of different study configs are not joined",
                    m.study.name(),
                    m.name,
                    m.config_hash,
                    first_path.display(),
                    first.study.name(),
                    first.name,
                    first.config_hash
                ),
            });
        }
        if m.shards != first.shards
            || m.key_columns != first.key_columns
            || m.grid != first.grid
            || m.owner != first.owner
        {
            return Err(ExpError::Run {
                path: p.clone(),
                message: format!(
                    "splits the study into {} shards, {} into {}; a study is joined from shards of one split",
                    m.shards,
                    first_path.display(),
                    first.shards
                ),
            });
        }
    }
    let kind = first.study;
    let n = first.shards;
    let present: BTreeSet<usize> = manifests.iter().map(|(_, _, m)| m.shard).collect();
    let absent_shards: Vec<usize> = (0..n).filter(|i| !present.contains(i)).collect();
    let position: BTreeMap<&Vec<String>, usize> = first.grid.iter().enumerate().map(|(i, k)| (k, i)).collect();

    // Rows of every directory (a directory shared by several shards is read once).
    let mut seen_dirs = BTreeSet::new();
    let mut header: Option<(String, PathBuf)> = None;
    let mut merged: BTreeMap<usize, (String, PathBuf)> = BTreeMap::new();
    let mut shard_dirs = Vec::new();
    for (d, _, _) in &manifests {
        if !seen_dirs.insert(d.clone()) {
            continue;
        }
        shard_dirs.push(d.clone());
        let Some(rows) = read_rows(d, &first.key_columns)? else {
            continue;
        };
        match &header {
            Some((h, from)) if *h != rows.header => {
                return Err(ExpError::Run {
                    path: d.join("results.csv"),
                    message: format!("has the header `{}`, {} has `{h}`", rows.header, from.display()),
                })
            }
            Some(_) => {}
            None => header = Some((rows.header.clone(), d.join("results.csv"))),
        }
        for (key, line) in rows.rows {
            let Some(&pos) = position.get(&key) else {
                return Err(ExpError::Run {
                    path: d.join("results.csv"),
                    message: format!(
                        "has a row outside the study's grid ({})",
                        cell_name(&first.key_columns, &key)
                    ),
                });
            };
            match merged.get(&pos) {
                Some((old, from)) if *old != line => {
                    return Err(ExpError::Run {
                        path: d.join("results.csv"),
                        message: format!(
                            "records {} differently from {}:\n  {line}\n  {old}\nremove the wrong shard's row (or directory) and join again",
                            cell_name(&first.key_columns, &key),
                            from.display()
                        ),
                    })
                }
                Some(_) => {}
                None => {
                    merged.insert(pos, (line, d.clone()));
                }
            }
        }
    }
    let header = header.map(|h| h.0).unwrap_or_default();
    let missing: Vec<String> = (0..first.grid.len())
        .filter(|i| !merged.contains_key(i))
        .map(|i| {
            format!(
                "{} (shard {}/{n})",
                cell_name(&first.key_columns, &first.grid[i]),
                first.owner[i]
            )
        })
        .collect();
    let failed: Vec<String> = merged
        .iter()
        .filter_map(|(&i, (line, _))| {
            let e = error_of(&header, line);
            (!e.is_empty()).then(|| format!("{}: {e}", cell_name(&first.key_columns, &first.grid[i])))
        })
        .collect();

    // The joined directory: new, an earlier join of this study, or replaced with --force.
    let out = &opts.out;
    let study_file = out.join(kind.study_file());
    let occupied = std::fs::read_dir(out).is_ok_and(|mut e| e.next().is_some());
    if occupied {
        let earlier = std::fs::read_to_string(out.join("join.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<JoinOutcome>(&t).ok());
        let same = earlier
            .as_ref()
            .is_some_and(|j| j.study == kind && j.config_hash == first.config_hash);
        if !same && !opts.force {
            return Err(ExpError::Run {
                path: out.clone(),
                message:
                    "is not empty and holds no join of these shards; choose another --out, or replace it with --force"
                        .into(),
            });
        }
        for f in ["results.csv", "table.md", "report.md", "missing.md", "join.md"] {
            let p = out.join(f);
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| ExpError::io(&p, e))?;
            }
        }
        if kind == StudyKind::Posteriors && out.join("runs").exists() {
            std::fs::remove_dir_all(out.join("runs")).map_err(|e| ExpError::io(out.join("runs"), e))?;
        }
    }
    std::fs::create_dir_all(out).map_err(|e| ExpError::io(out, e))?;
    // The study file the shards recorded (identical in all: same config hash).
    let recorded = shard_dirs[0].join(kind.study_file());
    std::fs::copy(&recorded, &study_file).map_err(|e| ExpError::io(&recorded, e))?;
    if kind == StudyKind::Posteriors {
        // its table is written from the trained runs: bring every shard's runs
        for d in &shard_dirs {
            let runs = d.join("runs");
            if runs.is_dir() {
                link_tree(&runs, &out.join("runs"))?;
            }
        }
    }
    let mut csv = format!("{header}\n");
    for (line, _) in merged.values() {
        csv.push_str(line);
        csv.push('\n');
    }
    atomic::write_string(&out.join("results.csv"), &csv)?;
    let outcome = JoinOutcome {
        study: kind,
        config_hash: first.config_hash.clone(),
        shard_dirs: shard_dirs.clone(),
        shards: n,
        rows: merged.len(),
        failed,
        missing,
        absent_shards,
    };
    let json = serde_json::to_string_pretty(&outcome).map_err(|e| ExpError::io(out, std::io::Error::other(e)))?;
    atomic::write_string(&out.join("join.json"), &json)?;
    atomic::write_string(&out.join("join.md"), &join_md(&outcome, &empty))?;
    if !outcome.missing.is_empty() {
        atomic::write_string(&out.join("missing.md"), &missing_md(&outcome))?;
        return Ok(outcome);
    }
    // Complete: the study writes its table, report and figures from the joined rows.
    let config = &first.config;
    let now = super::manifest::fnv1a64(super::manifest::resolved(kind, config)?.as_bytes());
    if now != first.config_hash {
        return Err(ExpError::Run {
            path: config.clone(),
            message: format!(
                "changed since the shards ran (config {now}, the shards {}); the join writes the table from the study file as it was",
                first.config_hash
            ),
        });
    }
    report(kind, config, out, opts)?;
    Ok(outcome)
}

/// Writes the table, report and figures of the complete study in `out`.
fn report(kind: StudyKind, config: &Path, out: &Path, opts: &JoinOptions) -> Result<()> {
    match kind {
        StudyKind::Pai => {
            let pai = crate::pai::PaiConfig::from_file(config)?;
            crate::pai::run(
                &pai,
                config,
                &crate::pai::RunOptions {
                    resume: Some(out.to_path_buf()),
                    report_only: true,
                    data_dir: opts.data_dir.clone(),
                    jobs: 1,
                    quiet: true,
                    ..Default::default()
                },
            )?;
        }
        StudyKind::Posteriors => {
            let s = crate::posterior_study::PosteriorStudy::from_file(config)?;
            crate::posterior_study::run(
                &s,
                config,
                &crate::posterior_study::RunOptions {
                    resume: Some(out.to_path_buf()),
                    report_only: true,
                    data_dir: opts.data_dir.clone(),
                    quiet: true,
                    ..Default::default()
                },
            )?;
        }
        StudyKind::Compression => {
            let f = crate::compression_study::CompressionFile::from_file(config)?;
            crate::compression_study::run(
                &f,
                config,
                &crate::compression_study::RunOptions {
                    resume: Some(out.to_path_buf()),
                    report_only: true,
                    data_dir: opts.data_dir.clone(),
                    quiet: true,
                    ..Default::default()
                },
            )?;
        }
        StudyKind::Svgd => {
            let f = crate::svgd_study::SvgdFile::from_file(config)?;
            crate::svgd_study::run(
                &f,
                config,
                &crate::svgd_study::RunOptions {
                    resume: Some(out.to_path_buf()),
                    data_dir: opts.data_dir.clone(),
                    report_only: true,
                    ..Default::default()
                },
            )?;
        }
    }
    Ok(())
}

fn join_md(o: &JoinOutcome, empty: &[PathBuf]) -> String {
    let mut s = format!(
        "# Join of a `{}` study\n\nConfig {}; {} shard(s) of {}; {} row(s).\n\nShard directories:\n",
        o.study.name(),
        o.config_hash,
        o.shards - o.absent_shards.len(),
        o.shards,
        o.rows
    );
    for d in &o.shard_dirs {
        s += &format!("- {}\n", d.display());
    }
    for d in empty {
        s += &format!("- {} (no manifest: the shard never started)\n", d.display());
    }
    if !o.absent_shards.is_empty() {
        s += &format!("\nShards without a directory: {:?}\n", o.absent_shards);
    }
    s += &format!("\n## Failed cells ({})\n\n", o.failed.len());
    for f in &o.failed {
        s += &format!("- {f}\n");
    }
    s += &format!("\n## Missing cells ({})\n\n", o.missing.len());
    for m in &o.missing {
        s += &format!("- {m}\n");
    }
    s
}

fn missing_md(o: &JoinOutcome) -> String {
    format!(
        "# Missing cells: no table written\n\n{} cell(s) of the study have no row in any shard given. Run the \
         shards that owe them again (each resumes: `secateur study {} --config FILE --resume SHARD_DIR --shard I/N`, \
         or under Slurm `sbatch --array=I DIR/array.sbatch`), then join again.\n\n{}\n",
        o.missing.len(),
        o.study.name(),
        o.missing.iter().map(|m| format!("- {m}\n")).collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_in_quotes_keep_their_commas() {
        let f = split_csv_line("lenet5,snip,false,0.9,0,0.1,0.5,,\"a, b\"");
        assert_eq!(f.len(), 9);
        assert_eq!(f[8], "\"a, b\"");
        assert_eq!(error_of("a,b,error", "1,2,\"x, y\""), "x, y");
        assert_eq!(error_of("a,b,error", "1,2,\"\""), "");
    }
}
