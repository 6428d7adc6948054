//! Fuzzes the input readers of secateur (IDX, CIFAR, CSV, safetensors weights, masks, TOML
//! configs with `--set` overrides) with seeded mutations of valid inputs; see
//! `experiments/fuzz/README.md` for the commands and the results of the long runs.
//!
//! ```text
//! nice cargo run --release -p secateur-experiments --example fuzz_readers -- \
//!     --target all --iterations 1000000 --seed 0
//! ```
//!
//! Options: `--target idx|cifar|csv|safetensors|masks|config|all` (default `all`; several
//! separated by commas), `--iterations N` (per target, default 1,000,000), `--seed S` (default
//! 0), `--start I` (first iteration, to replay a range), `--findings DIR` (default
//! `target/fuzz-findings`), `--work-dir DIR` (where each input is written for the reader;
//! default a fresh temporary directory, in `/dev/shm` where there is one), `--replay FILE` (run
//! the reader of the one `--target` on the bytes of `FILE` and print the outcome, e.g. a saved
//! finding; `--set KEY=VALUE`, repeated, gives a config's overrides, listed in the finding's
//! `.txt` file), `--kinds K` (error kinds printed per target, default 10).
//!
//! Prints executions, Ok/Err counts, the first 10 error kinds, seconds and findings per target;
//! exits with status 1 if any input panicked or gave an inconsistent result (each such input is
//! saved under the findings directory), 2 on a usage error.

#[path = "../fuzz/harness.rs"]
mod harness;

use harness::{Fuzzer, Outcome, Report, Target};
use std::path::PathBuf;
use std::process::ExitCode;

/// Parsed command line.
struct Args {
    targets: Vec<Target>,
    iterations: u64,
    seed: u64,
    start: u64,
    findings: PathBuf,
    work_dir: Option<PathBuf>,
    replay: Option<PathBuf>,
    overrides: Vec<String>,
    kinds: usize,
}

fn usage(msg: &str) -> ExitCode {
    eprintln!(
        "fuzz_readers: {msg}\nusage: fuzz_readers [--target idx|cifar|csv|safetensors|masks|config|all] \
         [--iterations N] [--seed S] [--start I] [--findings DIR] [--work-dir DIR] [--kinds K] [--replay FILE [--set KEY=VALUE]...]"
    );
    ExitCode::from(2)
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        targets: Target::ALL.to_vec(),
        iterations: 1_000_000,
        seed: 0,
        start: 0,
        findings: PathBuf::from("target/fuzz-findings"),
        work_dir: None,
        replay: None,
        overrides: Vec::new(),
        kinds: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| {
            v.replace('_', "")
                .parse::<u64>()
                .map_err(|e| format!("{flag} {v}: {e}"))
        };
        match flag.as_str() {
            "--target" => {
                let v = value()?;
                args.targets = if v == "all" {
                    Target::ALL.to_vec()
                } else {
                    v.split(',')
                        .map(|t| Target::parse(t).ok_or_else(|| format!("unknown target `{t}`")))
                        .collect::<Result<_, _>>()?
                };
            }
            "--iterations" => args.iterations = number(value()?)?,
            "--seed" => args.seed = number(value()?)?,
            "--start" => args.start = number(value()?)?,
            "--findings" => args.findings = PathBuf::from(value()?),
            "--work-dir" => args.work_dir = Some(PathBuf::from(value()?)),
            "--replay" => args.replay = Some(PathBuf::from(value()?)),
            "--set" => args.overrides.push(value()?),
            "--kinds" => args.kinds = number(value()?)? as usize,
            "-h" | "--help" => return Err("help".into()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(args)
}

fn print_report(target: Target, r: &Report, kinds: usize) {
    let secs = r.elapsed.as_secs_f64();
    println!(
        "== {}: {} executions in {:.1} s ({:.0}/s): {} Ok, {} Err, {} findings; largest input {} bytes; slowest \
         input #{} took {:.1} ms",
        target.name(),
        r.executions,
        secs,
        r.executions as f64 / secs.max(1e-9),
        r.ok,
        r.err,
        r.findings.len(),
        r.max_len,
        r.slowest.0,
        r.slowest.1.as_secs_f64() * 1e3,
    );
    println!(
        "   {} distinct error kinds{}; the first {kinds}:",
        r.error_kinds.len(),
        if r.error_kinds.len() >= harness::MAX_KINDS {
            " (or more)"
        } else {
            ""
        }
    );
    for (kind, n) in r.error_kinds.iter().take(kinds) {
        println!("   {n:>9} × {kind}");
    }
    for f in &r.findings {
        let saved = f
            .saved
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(not saved)".into());
        println!("   FINDING iteration {}: {} -> {saved}", f.iteration, f.what);
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => return usage(&msg),
    };
    // Panics are caught and reported per input; the default hook would print each (and candle
    // may add a backtrace), so this binary silences it and records message and location.
    harness::install_quiet_panic_hook();
    let tmp = match &args.work_dir {
        Some(_) => None,
        None => match harness::work_tempdir() {
            Ok(t) => Some(t),
            Err(e) => return usage(&format!("cannot create a temporary directory: {e}")),
        },
    };
    let work = args
        .work_dir
        .clone()
        .or_else(|| tmp.as_ref().map(|t| t.path().to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("."));
    println!(
        "fuzz_readers: seed {}, iterations {}..{} per target, inputs written in {}, findings in {}",
        args.seed,
        args.start,
        args.start + args.iterations,
        work.display(),
        args.findings.display()
    );
    if let Some(file) = &args.replay {
        let [target] = args.targets[..] else {
            return usage("--replay needs exactly one --target");
        };
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => return usage(&format!("cannot read {}: {e}", file.display())),
        };
        let fuzzer = match Fuzzer::new(target, args.seed, &work, &args.findings) {
            Ok(f) => f,
            Err(e) => return usage(&format!("cannot build the seeds of {}: {e}", target.name())),
        };
        let t = std::time::Instant::now();
        let outcome = fuzzer.execute(&bytes, &args.overrides);
        println!(
            "{} on {} ({} bytes): {outcome:?} in {:.3} s",
            target.name(),
            file.display(),
            bytes.len(),
            t.elapsed().as_secs_f64()
        );
        return match outcome {
            Outcome::Ok | Outcome::Err(_) => ExitCode::SUCCESS,
            _ => ExitCode::FAILURE,
        };
    }
    let mut findings = 0;
    for target in &args.targets {
        let fuzzer = match Fuzzer::new(*target, args.seed, &work, &args.findings) {
            Ok(f) => f,
            Err(e) => return usage(&format!("cannot build the seeds of {}: {e}", target.name())),
        };
        let every = (args.iterations / 10).clamp(1, 100_000);
        let report = fuzzer.run(args.start, args.iterations, every, |r| {
            println!(
                "   {}: {} executions, {:.0} s, {} Ok, {} Err, {} findings",
                target.name(),
                r.executions,
                r.elapsed.as_secs_f64(),
                r.ok,
                r.err,
                r.findings.len()
            );
        });
        print_report(*target, &report, args.kinds);
        findings += report.findings.len();
    }
    if findings > 0 {
        println!(
            "fuzz_readers: {findings} findings (inputs saved in {})",
            args.findings.display()
        );
        ExitCode::FAILURE
    } else {
        println!("fuzz_readers: no panics, no inconsistent results");
        ExitCode::SUCCESS
    }
}
