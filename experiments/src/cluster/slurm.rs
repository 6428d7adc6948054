//! `secateur study KIND --config FILE --slurm --out DIR`: a study as a Slurm job array.
//!
//! Writes into DIR:
//! - `resolved.toml`: the resolved study config ([`super::manifest::resolved`]) and
//!   `slurm.json` (the study, its config hash, the binary and the array size);
//! - `array.sbatch`: task `I` of the array runs shard `I/N` of the study into `DIR/shards/I`
//!   (resuming it when the task runs again: after a failure, a pre-emption or a resubmission of
//!   that task alone with `sbatch --array=I DIR/array.sbatch`), with `RAYON_NUM_THREADS` set to
//!   the task's CPUs, its log in `DIR/logs/shard-I.log`, and the binary that wrote the script,
//!   by absolute path;
//! - `join.sbatch`: `secateur study join DIR/shards/0 … DIR/shards/N-1 --out DIR/study`, which
//!   writes the study's `results.csv`, table, report and figures, or lists the missing cells
//!   and fails.
//!
//! With `--submit` the array is submitted with `sbatch --parsable` and the join with
//! `--dependency=afterany:ARRAY` (it runs whatever the tasks' outcome, and says what is
//! missing); their job ids are printed and kept in `DIR/jobs.txt`.

use super::manifest::{fnv1a64, resolved, StudyKind};
use crate::atomic;
use crate::error::{ExpError, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The job array's resources and submission (the `--slurm` options of `secateur study`).
#[derive(Debug, Clone, PartialEq)]
pub struct SlurmOptions {
    /// The number of array tasks (shards).
    pub array_size: usize,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--time` (`MM`, `HH:MM:SS`, `D-HH:MM:SS`, …) of each task and of the join.
    pub time: Option<String>,
    /// `--cpus-per-task`, also the tasks' `RAYON_NUM_THREADS`.
    pub cpus_per_task: usize,
    /// `--mem` of each task (e.g. `8G`).
    pub mem: Option<String>,
    /// `--gres` of each array task (e.g. `gpu:1`; not of the join).
    pub gres: Option<String>,
    /// Further `#SBATCH` lines for both scripts (e.g. `--account=proj`).
    pub sbatch_args: Vec<String>,
    /// `--requeue`: Slurm may requeue a pre-empted or failed-node task (it resumes its shard).
    pub requeue: bool,
    /// Submit the two scripts with `sbatch`.
    pub submit: bool,
    /// Replace the scripts (and the shards and joined study) in DIR.
    pub force: bool,
    /// `--data-dir` passed to every task.
    pub data_dir: Option<PathBuf>,
}

impl Default for SlurmOptions {
    fn default() -> Self {
        Self {
            array_size: 8,
            partition: None,
            time: None,
            cpus_per_task: 1,
            mem: None,
            gres: None,
            sbatch_args: Vec::new(),
            requeue: false,
            submit: false,
            force: false,
            data_dir: None,
        }
    }
}

/// What `slurm.json` records.
#[derive(Debug, Serialize)]
struct Record<'a> {
    study: &'a str,
    config: &'a Path,
    config_hash: &'a str,
    binary: &'a Path,
    array_size: usize,
    cpus_per_task: usize,
}

/// The scripts written (and the job ids when submitted).
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// `DIR/array.sbatch`.
    pub array_script: PathBuf,
    /// `DIR/join.sbatch`.
    pub join_script: PathBuf,
    /// The joined study directory (`DIR/study`).
    pub study_dir: PathBuf,
    /// `(array job id, join job id)` when submitted.
    pub jobs: Option<(String, String)>,
}

/// `s` quoted for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-=:+,@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn check(opts: &SlurmOptions) -> Result<()> {
    let bad = |flag: &str, m: String| Err(ExpError::config(flag, m));
    if opts.array_size == 0 {
        return bad("--array-size", "must be at least 1".into());
    }
    if opts.cpus_per_task == 0 {
        return bad("--cpus-per-task", "must be at least 1".into());
    }
    if let Some(t) = &opts.time {
        let (days, rest) = t.split_once('-').unwrap_or(("0", t));
        let parts: Vec<&str> = rest.split(':').collect();
        let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
        if !digits(days) || parts.len() > 3 || !parts.iter().all(|p| digits(p)) {
            return bad(
                "--time",
                format!("`{t}` is not a Slurm time (MM, HH:MM:SS or D-HH:MM:SS)"),
            );
        }
    }
    if let Some(m) = &opts.mem {
        let num = m.trim_end_matches(['K', 'M', 'G', 'T']);
        if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit()) || m.len() - num.len() > 1 {
            return bad("--mem", format!("`{m}` is not a Slurm memory size (e.g. 4000, 8G)"));
        }
    }
    for (flag, v) in [("--partition", &opts.partition), ("--gres", &opts.gres)] {
        if let Some(v) = v {
            if v.is_empty() || v.chars().any(|c| c.is_whitespace()) {
                return bad(flag, format!("`{v}` is empty or holds white space"));
            }
        }
    }
    for a in &opts.sbatch_args {
        if !a.starts_with('-') || a.contains(['\n', '\r']) {
            return bad(
                "--sbatch-arg",
                format!("`{a}` is not one sbatch option (e.g. --account=proj)"),
            );
        }
    }
    Ok(())
}

/// The `#SBATCH` lines both scripts share.
fn common_lines(opts: &SlurmOptions) -> String {
    let mut s = format!("#SBATCH --cpus-per-task={}\n", opts.cpus_per_task);
    if let Some(p) = &opts.partition {
        s += &format!("#SBATCH --partition={p}\n");
    }
    if let Some(t) = &opts.time {
        s += &format!("#SBATCH --time={t}\n");
    }
    if let Some(m) = &opts.mem {
        s += &format!("#SBATCH --mem={m}\n");
    }
    for a in &opts.sbatch_args {
        s += &format!("#SBATCH {a}\n");
    }
    s
}

/// The job-array script.
pub fn array_script(
    kind: StudyKind,
    name: &str,
    config: &Path,
    binary: &Path,
    dir: &Path,
    opts: &SlurmOptions,
) -> String {
    let n = opts.array_size;
    let q = |p: &Path| sh_quote(&p.display().to_string());
    let data = opts
        .data_dir
        .as_ref()
        .map(|d| format!(" --data-dir {}", q(d)))
        .unwrap_or_default();
    let mut s = format!(
        "#!/bin/bash\n\
         # Study `{name}` ({kind}) as a Slurm job array: task I runs shard I/{n} into {shards}/I.\n\
         # Written by `secateur study {kind} --slurm`. Submit: sbatch {array}\n\
         # Run one task again (it resumes its shard): sbatch --array=I {array}\n\
         #SBATCH --job-name=secateur-{name}\n\
         #SBATCH --array=0-{last}\n\
         #SBATCH --output={logs}/shard-%a.log\n",
        kind = kind.name(),
        shards = dir.join("shards").display(),
        array = q(&dir.join("array.sbatch")),
        last = n - 1,
        logs = dir.join("logs").display(),
    );
    s += &common_lines(opts);
    if let Some(g) = &opts.gres {
        s += &format!("#SBATCH --gres={g}\n");
    }
    s += if opts.requeue {
        "#SBATCH --requeue\n"
    } else {
        "#SBATCH --no-requeue\n"
    };
    s += &format!(
        "set -euo pipefail\n\
         i=${{SLURM_ARRAY_TASK_ID:?run this script with sbatch, as a job array}}\n\
         export RAYON_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{cpus}}}\n\
         shard={shards}/$i\n\
         if [ -f \"$shard/{file}\" ]; then\n\
         \x20 exec {bin} study {kind} --config {cfg} --resume \"$shard\" --shard \"$i/{n}\" --quiet{data}\n\
         else\n\
         \x20 rm -rf \"$shard\"\n\
         \x20 exec {bin} study {kind} --config {cfg} --out \"$shard\" --shard \"$i/{n}\" --quiet{data}\n\
         fi\n",
        cpus = opts.cpus_per_task,
        shards = q(&dir.join("shards")),
        file = kind.study_file(),
        bin = q(binary),
        kind = kind.name(),
        cfg = q(config),
    );
    s
}

/// The join script (run after the array, whatever its tasks' outcome).
pub fn join_script(name: &str, binary: &Path, dir: &Path, opts: &SlurmOptions) -> String {
    let q = |p: &Path| sh_quote(&p.display().to_string());
    let data = opts
        .data_dir
        .as_ref()
        .map(|d| format!(" --data-dir {}", q(d)))
        .unwrap_or_default();
    let mut s = format!(
        "#!/bin/bash\n\
         # Join of the shards of study `{name}` into {study}: its results.csv, table, report and figures, or the\n\
         # list of missing cells (missing.md) and a failed job. Written by `secateur study --slurm`.\n\
         # Submit after the array: sbatch --dependency=afterany:ARRAY_JOB_ID {join}\n\
         #SBATCH --job-name=secateur-{name}-join\n\
         #SBATCH --output={logs}/join.log\n",
        study = dir.join("study").display(),
        join = q(&dir.join("join.sbatch")),
        logs = dir.join("logs").display(),
    );
    s += &common_lines(opts);
    s += &format!(
        "set -euo pipefail\n\
         export RAYON_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{cpus}}}\n\
         shards=()\n\
         for i in $(seq 0 {last}); do shards+=({dir}/shards/\"$i\"); done\n\
         exec {bin} study join \"${{shards[@]}}\" --out {out}{data}\n",
        cpus = opts.cpus_per_task,
        last = opts.array_size - 1,
        dir = q(dir),
        bin = q(binary),
        out = q(&dir.join("study")),
    );
    s
}

/// Writes the scripts of the study `kind` in `config` into `dir` (and submits them); see the
/// module doc.
pub fn prepare(kind: StudyKind, config: &Path, dir: &Path, opts: &SlurmOptions) -> Result<Prepared> {
    check(opts)?;
    let text = resolved(kind, config)?;
    let hash = fnv1a64(text.as_bytes());
    let name = study_name(kind, config)?;
    let config = std::path::absolute(config).map_err(|e| ExpError::io(config, e))?;
    let dir = std::path::absolute(dir).map_err(|e| ExpError::io(dir, e))?;
    // `#SBATCH --output=PATH` lines are split at white space and read `%` as a pattern
    if dir.to_string_lossy().chars().any(|c| c.is_whitespace() || c == '%') {
        return Err(ExpError::config(
            "--out",
            format!(
                "{} has a space or a `%`, which sbatch's #SBATCH lines cannot carry; choose a directory without them",
                dir.display()
            ),
        ));
    }
    let binary = std::env::current_exe().map_err(|e| ExpError::io("the secateur binary", e))?;
    let (array, join) = (dir.join("array.sbatch"), dir.join("join.sbatch"));
    if array.exists() || dir.join("shards").exists() || dir.join("study").exists() {
        if !opts.force {
            return Err(ExpError::Run {
                path: dir,
                message:
                    "already holds a Slurm study (array.sbatch, shards/ or study/); submit its scripts, or replace \
                          them and the results with --force"
                        .into(),
            });
        }
        for sub in ["shards", "study", "logs"] {
            let p = dir.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(|e| ExpError::io(&p, e))?;
            }
        }
    }
    for sub in ["shards", "logs"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| ExpError::io(dir.join(sub), e))?;
    }
    atomic::write_string(&dir.join("resolved.toml"), &text)?;
    let record = Record {
        study: kind.name(),
        config: &config,
        config_hash: &hash,
        binary: &binary,
        array_size: opts.array_size,
        cpus_per_task: opts.cpus_per_task,
    };
    let json = serde_json::to_string_pretty(&record).map_err(|e| ExpError::io(&dir, std::io::Error::other(e)))?;
    atomic::write_string(&dir.join("slurm.json"), &json)?;
    atomic::write_string(&array, &array_script(kind, &name, &config, &binary, &dir, opts))?;
    atomic::write_string(&join, &join_script(&name, &binary, &dir, opts))?;
    let jobs = if opts.submit {
        let a = sbatch(&[array.as_os_str()])?;
        let dep = format!("--dependency=afterany:{a}");
        let j = sbatch(&[std::ffi::OsStr::new(&dep), join.as_os_str()])?;
        atomic::write_string(&dir.join("jobs.txt"), &format!("array {a}\njoin {j}\n"))?;
        Some((a, j))
    } else {
        None
    };
    Ok(Prepared {
        array_script: array,
        join_script: join,
        study_dir: dir.join("study"),
        jobs,
    })
}

/// `sbatch --parsable ARGS`; returns the job id.
fn sbatch(args: &[&std::ffi::OsStr]) -> Result<String> {
    let out = std::process::Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .output()
        .map_err(|e| ExpError::io("sbatch (is this a Slurm login node, with sbatch on PATH?)", e))?;
    if !out.status.success() {
        return Err(ExpError::config(
            "sbatch",
            format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // `--parsable` prints `JOBID` or `JOBID;CLUSTER`
    let id = text.trim().split(';').next().unwrap_or_default().to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(ExpError::config(
            "sbatch",
            format!("did not print a job id: `{}`", text.trim()),
        ));
    }
    Ok(id)
}

/// The `name` of the study file.
fn study_name(kind: StudyKind, config: &Path) -> Result<String> {
    Ok(match kind {
        StudyKind::Pai => crate::pai::PaiConfig::from_file(config)?.name,
        StudyKind::Posteriors => crate::posterior_study::PosteriorStudy::from_file(config)?.name,
        StudyKind::Compression => {
            crate::compression_study::CompressionFile::from_file(config)?
                .compression
                .name
        }
        StudyKind::Svgd => crate::svgd_study::SvgdFile::from_file(config)?.svgd.name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_a_shell() {
        assert_eq!(sh_quote("/a/b-c.toml"), "/a/b-c.toml");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn impossible_resources_are_refused() {
        let ok = SlurmOptions {
            time: Some("1-02:00:00".into()),
            mem: Some("8G".into()),
            ..Default::default()
        };
        assert!(check(&ok).is_ok());
        for bad in [
            SlurmOptions {
                array_size: 0,
                ..ok.clone()
            },
            SlurmOptions {
                cpus_per_task: 0,
                ..ok.clone()
            },
            SlurmOptions {
                time: Some("2h".into()),
                ..ok.clone()
            },
            SlurmOptions {
                mem: Some("8GB".into()),
                ..ok.clone()
            },
            SlurmOptions {
                partition: Some("a b".into()),
                ..ok.clone()
            },
            SlurmOptions {
                sbatch_args: vec!["account=x".into()],
                ..ok.clone()
            },
        ] {
            assert!(check(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_array_script_runs_shard_i_of_n_and_resumes_it() {
        let opts = SlurmOptions {
            array_size: 4,
            cpus_per_task: 2,
            gres: Some("gpu:1".into()),
            sbatch_args: vec!["--account=proj".into()],
            ..Default::default()
        };
        let s = array_script(
            StudyKind::Pai,
            "pai-smoke",
            Path::new("/c/pai smoke.toml"),
            Path::new("/bin/secateur"),
            Path::new("/d"),
            &opts,
        );
        for line in [
            "#SBATCH --array=0-3",
            "#SBATCH --cpus-per-task=2",
            "#SBATCH --gres=gpu:1",
            "#SBATCH --account=proj",
            "#SBATCH --output=/d/logs/shard-%a.log",
            "export RAYON_NUM_THREADS=${SLURM_CPUS_PER_TASK:-2}",
            "if [ -f \"$shard/pai.toml\" ]; then",
            "  exec /bin/secateur study pai --config '/c/pai smoke.toml' --resume \"$shard\" --shard \"$i/4\" --quiet",
        ] {
            assert!(s.lines().any(|l| l == line), "missing `{line}` in\n{s}");
        }
        let j = join_script("pai-smoke", Path::new("/bin/secateur"), Path::new("/d"), &opts);
        assert!(j.contains("for i in $(seq 0 3)"), "{j}");
        assert!(
            j.contains("exec /bin/secateur study join \"${shards[@]}\" --out /d/study"),
            "{j}"
        );
        assert!(!j.contains("--gres"), "the join needs no GPU:\n{j}");
    }
}
