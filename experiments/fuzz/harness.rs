//! Fuzz harnesses for the input readers of secateur, on stable Rust and without new
//! dependencies: a seeded, hand-written mutation engine over valid seed inputs, and one harness
//! per reader that checks three things about every input:
//!
//! 1. the reader does not panic (caught with [`std::panic::catch_unwind`]; the input is saved
//!    under the findings directory and reported),
//! 2. a malformed input comes back as an `Err` value,
//! 3. an input the reader accepts gives a consistent result (IDX: `pixels.len() = n·rows·cols`;
//!    CIFAR: `pixels.len() = 3072·labels`, labels in range; CSV: `x.len() = rows·features`, all
//!    finite; masks: every entry 0 or 1; weights: every float finite; config: it validates,
//!    `to_toml` → `from_toml` → `to_toml` gives the same text, and no number is NaN or infinite).
//!
//! Included with `#[path]` by both `experiments/examples/fuzz_readers.rs` (the long runs, a
//! million inputs per target) and `experiments/tests/fuzz_smoke.rs` (a short seeded smoke in
//! `cargo test`). Input `i` of a run is drawn from a generator seeded by `(seed, target, i)`
//! alone, so any input can be regenerated from its iteration number (see [`Fuzzer::input`]).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use secateur_experiments::config::StudyConfig;
use secateur_experiments::data::cifar::{encode_cifar_batch, CifarKind, CIFAR_PIXELS};
use secateur_experiments::data::idx::{encode_idx_images, encode_idx_labels};
use secateur_experiments::data::{read_cifar_batch, read_csv_table, read_idx_images, read_idx_labels};
use secateur_pruning::MaskSet;

/// Largest input the mutation engine produces (1 MiB), so that a million runs fit in minutes.
pub const MAX_INPUT: usize = 1 << 20;

/// The shipped quickstart config, a seed of the config harness.
const QUICKSTART: &str = include_str!("../configs/quickstart.toml");
/// Further shipped configs, more seeds of the config harness (other sections and keys).
const MORE_CONFIGS: [&str; 3] = [
    include_str!("../configs/quickstart-sparse-vd.toml"),
    include_str!("../configs/regression-wine-smoke.toml"),
    include_str!("../configs/pai-smoke.toml"),
];

/// Values written over header fields and numbers: the edges of `u32`, `i32` and small sizes.
const INTERESTING_U32: [u32; 12] = [
    0,
    1,
    2,
    3,
    0x7f,
    0xff,
    0x100,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    u32::MAX,
];

/// Text put in place of a number (or a value) in CSV cells, TOML values and `--set` overrides.
const INTERESTING_TEXT: [&str; 28] = [
    "0",
    "-0",
    "1",
    "-1",
    "1e308",
    "-1e308",
    "1e39",
    "1e-45",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "9223372036854775807",
    "-9223372036854775808",
    "0x10",
    "1_000",
    "\"\"",
    "\"../escape\"",
    "\"a/b\"",
    "[]",
    "[0]",
    "[100000000]",
    "[4294967295, 4294967295]",
    "{ a = 1 }",
    "true",
];

/// Which reader a harness drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// `read_idx_images` and `read_idx_labels` (raw and gzip IDX files).
    Idx,
    /// `read_cifar_batch`, CIFAR-10 and CIFAR-100 layouts.
    Cifar,
    /// `read_csv_table`.
    Csv,
    /// The weights loader `store::read_finite_safetensors` (which calls `atomic::read_safetensors`).
    Safetensors,
    /// `MaskSet::load`.
    Masks,
    /// `StudyConfig::from_toml` with `--set` overrides.
    Config,
}

impl Target {
    /// Every target, in the order `--target all` runs them.
    pub const ALL: [Target; 6] = [
        Target::Idx,
        Target::Cifar,
        Target::Csv,
        Target::Safetensors,
        Target::Masks,
        Target::Config,
    ];

    /// The name used on the command line and in file names.
    pub fn name(self) -> &'static str {
        match self {
            Target::Idx => "idx",
            Target::Cifar => "cifar",
            Target::Csv => "csv",
            Target::Safetensors => "safetensors",
            Target::Masks => "masks",
            Target::Config => "config",
        }
    }

    /// The target of a command-line name.
    pub fn parse(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    fn salt(self) -> u64 {
        (self as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// How one input ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The reader accepted the input and the result was consistent.
    Ok,
    /// The reader refused the input with this message.
    Err(String),
    /// The reader accepted the input but the result broke an invariant (a defect).
    Inconsistent(String),
    /// The reader panicked with this message (a defect).
    Panic(String),
}

/// A defect found: the input is saved at `saved`.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The target.
    pub target: Target,
    /// The iteration that produced the input (regenerate it with [`Fuzzer::input`]).
    pub iteration: u64,
    /// `panic: …`, `inconsistent: …` or `slow: …`.
    pub what: String,
    /// Where the input was saved (`None` if saving failed).
    pub saved: Option<PathBuf>,
}

/// Counts of one run of a harness.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Inputs run.
    pub executions: u64,
    /// Inputs accepted (with a consistent result).
    pub ok: u64,
    /// Inputs refused with an `Err`.
    pub err: u64,
    /// Distinct error kinds (messages with paths and numbers normalised), in order first seen,
    /// with their counts; at most [`MAX_KINDS`] kept.
    pub error_kinds: Vec<(String, u64)>,
    /// Panics, inconsistent results and inputs slower than [`SLOW`].
    pub findings: Vec<Finding>,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// The slowest input and its time.
    pub slowest: (u64, Duration),
    /// Largest input generated, in bytes.
    pub max_len: usize,
}

/// Distinct error kinds kept per report.
pub const MAX_KINDS: usize = 200;
/// An input taking longer than this is reported as a finding (a possible hang).
pub const SLOW: Duration = Duration::from_secs(2);

/// The message and location of the last panic, recorded by [`install_quiet_panic_hook`].
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Replaces the panic hook by one that prints nothing and records the message and location of
/// the panic for the report. For the fuzzing binary only (a test keeps the default hook).
pub fn install_quiet_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let loc = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        if let Ok(mut g) = LAST_PANIC.lock() {
            *g = Some(format!("{}{loc}", payload_text(info.payload())));
        }
    }));
}

fn payload_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string())
}

/// Gzip-compresses `bytes` (fast level).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

/// Where a reader expects a header field: byte offset and whether it is big-endian.
#[derive(Debug, Clone, Copy)]
struct Field {
    at: usize,
    big_endian: bool,
    width: usize,
}

/// One target's seed inputs and header fields, and its working file.
pub struct Fuzzer {
    target: Target,
    seed: u64,
    seeds: Vec<Vec<u8>>,
    fields: Vec<Field>,
    /// Dotted keys of the seed configs (for `--set` overrides).
    keys: Vec<String>,
    input_path: PathBuf,
    findings_dir: PathBuf,
}

/// Dotted key paths of a TOML table.
fn toml_keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if let toml::Value::Table(t) = v {
            toml_keys(t, &key, out);
        }
        out.push(key);
    }
}

/// A fresh temporary directory for the input files, in `/dev/shm` (memory) where there is one:
/// the readers take paths, and writing each input to a disk file is 20–40 times slower.
pub fn work_tempdir() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(t) = tempfile::Builder::new().prefix("fuzz-readers-").tempdir_in(shm) {
            return Ok(t);
        }
    }
    tempfile::Builder::new().prefix("fuzz-readers-").tempdir()
}

/// Serialises tensors as a safetensors file through candle, returning its bytes.
fn safetensors_bytes(dir: &Path, tensors: &[(&str, Tensor)]) -> Result<Vec<u8>, String> {
    let map: std::collections::HashMap<String, Tensor> =
        tensors.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let p = dir.join("seed.safetensors");
    candle_core::safetensors::save(&map, &p).map_err(|e| e.to_string())?;
    std::fs::read(&p).map_err(|e| e.to_string())
}

impl Fuzzer {
    /// A harness for `target` seeded by `seed`, writing each input to a file in `work_dir` and
    /// saving defective inputs under `findings_dir`.
    pub fn new(target: Target, seed: u64, work_dir: &Path, findings_dir: &Path) -> Result<Fuzzer, String> {
        let mut seeds = Vec::new();
        let mut fields = Vec::new();
        let mut keys = Vec::new();
        let be = |at| Field {
            at,
            big_endian: true,
            width: 4,
        };
        let e = |e: &dyn std::fmt::Display| e.to_string();
        match target {
            Target::Idx => {
                let pixels: Vec<u8> = (0..3 * 4 * 5).map(|i| (i * 7) as u8).collect();
                seeds.push(encode_idx_images(3, 4, 5, &pixels).map_err(|x| e(&x))?);
                seeds.push(encode_idx_images(1, 1, 1, &[9]).map_err(|x| e(&x))?);
                seeds.push(encode_idx_labels(&[0, 1, 2, 9, 3]).map_err(|x| e(&x))?);
                seeds.push(encode_idx_labels(&[7]).map_err(|x| e(&x))?);
                fields.extend([be(0), be(4), be(8), be(12)]);
            }
            Target::Cifar => {
                let pixels: Vec<u8> = (0..2 * CIFAR_PIXELS).map(|i| (i % 251) as u8).collect();
                seeds.push(encode_cifar_batch(CifarKind::Cifar10, &pixels, &[3, 9]).map_err(|x| e(&x))?);
                seeds.push(encode_cifar_batch(CifarKind::Cifar100, &pixels[..CIFAR_PIXELS], &[99]).map_err(|x| e(&x))?);
                fields.extend([
                    Field {
                        at: 0,
                        big_endian: true,
                        width: 1,
                    },
                    Field {
                        at: 1,
                        big_endian: true,
                        width: 1,
                    },
                    Field {
                        at: CifarKind::Cifar10.record_size(),
                        big_endian: true,
                        width: 1,
                    },
                ]);
            }
            Target::Csv => {
                seeds.push(b"a,b,quality\n1,2.5,3\n-4,5e-3,6\n\n7,\"8\", 9 \n".to_vec());
                seeds.push(b"\"fixed acidity\";\"pH\";\"quality\"\n7.4;3.51;5\n7.8;3.2;5\n".to_vec());
                seeds.push(b"quality\n1\n".to_vec());
            }
            Target::Safetensors | Target::Masks => {
                let cpu = Device::Cpu;
                let t = |r: candle_core::Result<Tensor>| r.map_err(|x| e(&x));
                let mask = t(Tensor::new(&[[1u8, 0, 1], [0, 0, 1]], &cpu))?;
                let mask_f = t(Tensor::new(&[1f32, 0., 0., 1.], &cpu))?;
                if target == Target::Masks {
                    seeds.push(safetensors_bytes(work_dir, &[("fc1.weight", mask.clone())])?);
                    seeds.push(safetensors_bytes(
                        work_dir,
                        &[
                            ("features.0.weight", mask_f),
                            ("fc2.weight", t(mask.to_dtype(DType::F64))?),
                        ],
                    )?);
                } else {
                    let w = t(Tensor::new(&[[0.5f32, -1.25], [3.0, 1e-3]], &cpu))?;
                    seeds.push(safetensors_bytes(
                        work_dir,
                        &[
                            ("fc1.weight", w.clone()),
                            ("fc1.bias", t(Tensor::new(&[0.1f64, 0.2], &cpu))?),
                            ("fc2.weight", t(w.to_dtype(DType::F16))?),
                            ("fc3.weight", t(w.to_dtype(DType::BF16))?),
                        ],
                    )?);
                    seeds.push(safetensors_bytes(
                        work_dir,
                        &[
                            ("step", t(Tensor::new(&[7i64], &cpu))?),
                            ("count", t(Tensor::new(&[3u32, 4], &cpu))?),
                            ("mask", mask),
                        ],
                    )?);
                }
                // The header length (u64, little-endian) and its high half.
                fields.extend([
                    Field {
                        at: 0,
                        big_endian: false,
                        width: 4,
                    },
                    Field {
                        at: 4,
                        big_endian: false,
                        width: 4,
                    },
                ]);
            }
            Target::Config => {
                for text in std::iter::once(QUICKSTART).chain(MORE_CONFIGS) {
                    seeds.push(text.as_bytes().to_vec());
                    if let Ok(table) = toml::from_str::<toml::Table>(text) {
                        toml_keys(&table, "", &mut keys);
                    }
                }
                keys.sort();
                keys.dedup();
            }
        }
        std::fs::create_dir_all(work_dir).map_err(|x| e(&x))?;
        Ok(Fuzzer {
            target,
            seed,
            seeds,
            fields,
            keys,
            input_path: work_dir.join(format!("input-{}", target.name())),
            findings_dir: findings_dir.to_path_buf(),
        })
    }

    /// The generator of input `iteration`: a function of the seed, the target and the
    /// iteration alone.
    fn rng(&self, iteration: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ self.target.salt());
        rng.set_stream(iteration);
        rng
    }

    /// Input `iteration` (and, for the config target, its `--set` overrides).
    pub fn input(&self, iteration: u64) -> (Vec<u8>, Vec<String>) {
        let mut rng = self.rng(iteration);
        let base = &self.seeds[rng.random_range(0..self.seeds.len())];
        let mut data = base.clone();
        let text = matches!(self.target, Target::Csv | Target::Config);
        // Most inputs: 1–4 stacked mutations; a few stay valid seeds (the Ok path).
        let rounds = if rng.random_bool(0.03) {
            0
        } else {
            rng.random_range(1..=4)
        };
        for _ in 0..rounds {
            if text && rng.random_bool(0.5) {
                self.mutate_text(&mut data, &mut rng);
            } else {
                self.mutate_bytes(&mut data, &mut rng);
            }
            data.truncate(MAX_INPUT);
        }
        let gz_target = matches!(self.target, Target::Idx | Target::Cifar | Target::Csv);
        if gz_target && rng.random_bool(0.15) {
            data = gzip(&data);
            // Sometimes corrupt the gzip stream itself (header, deflate data or trailer).
            if rng.random_bool(0.3) {
                self.mutate_bytes(&mut data, &mut rng);
            }
        }
        data.truncate(MAX_INPUT);
        let overrides = if self.target == Target::Config {
            self.overrides(&mut rng)
        } else {
            Vec::new()
        };
        (data, overrides)
    }

    /// Byte-level mutations: bit flips, byte sets, insertions, deletions, truncation, header
    /// fields overwritten with extreme values, splices with other seeds, duplicated chunks.
    fn mutate_bytes(&self, data: &mut Vec<u8>, rng: &mut ChaCha8Rng) {
        let len = data.len();
        match rng.random_range(0..10) {
            0 if len > 0 => {
                for _ in 0..rng.random_range(1..=8) {
                    let i = rng.random_range(0..len);
                    data[i] ^= 1 << rng.random_range(0..8);
                }
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] = match rng.random_range(0..3) {
                    0 => rng.random(),
                    1 => INTERESTING_U32[rng.random_range(0..INTERESTING_U32.len())] as u8,
                    _ => *b"\0\xff\x7f\x80,;\"\n[]{}=.\\"
                        .get(rng.random_range(0..16))
                        .unwrap_or(&0),
                };
            }
            2 => {
                let at = rng.random_range(0..=len);
                let n = if rng.random_bool(0.9) {
                    rng.random_range(1..=16)
                } else {
                    rng.random_range(1..=4096)
                };
                let mut extra = vec![0u8; n];
                if rng.random_bool(0.7) {
                    rng.fill_bytes(&mut extra);
                }
                data.splice(at..at, extra);
            }
            3 if len > 0 => {
                let at = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - at).min(64));
                data.drain(at..at + n);
            }
            4 => {
                data.truncate(rng.random_range(0..=len));
            }
            5 | 6 => {
                // A header field (or, less often, any 4 bytes) overwritten with an edge value.
                let v = if rng.random_bool(0.8) {
                    INTERESTING_U32[rng.random_range(0..INTERESTING_U32.len())]
                } else {
                    rng.random::<u32>()
                };
                let f = if !self.fields.is_empty() && rng.random_bool(0.8) {
                    self.fields[rng.random_range(0..self.fields.len())]
                } else {
                    Field {
                        at: rng.random_range(0..len.max(1)),
                        big_endian: rng.random(),
                        width: 4,
                    }
                };
                let bytes = if f.big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
                let src = if f.big_endian {
                    &bytes[4 - f.width..]
                } else {
                    &bytes[..f.width]
                };
                for (k, &b) in src.iter().enumerate() {
                    if let Some(slot) = data.get_mut(f.at + k) {
                        *slot = b;
                    }
                }
            }
            7 => {
                // Splice: our head, another seed's tail.
                let other = &self.seeds[rng.random_range(0..self.seeds.len())];
                let cut = rng.random_range(0..=len);
                let from = rng.random_range(0..=other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            8 if len > 0 => {
                // Duplicate a chunk (sometimes many times: longer files than the header says).
                let at = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - at).min(4096));
                let chunk = data[at..at + n].to_vec();
                let times = if rng.random_bool(0.9) {
                    1
                } else {
                    rng.random_range(2..=64)
                };
                for _ in 0..times {
                    if data.len() + n > MAX_INPUT {
                        break;
                    }
                    data.splice(at..at, chunk.iter().copied());
                }
            }
            _ => {
                // Append a whole seed (two files in one).
                let other = &self.seeds[rng.random_range(0..self.seeds.len())];
                data.extend_from_slice(other);
            }
        }
    }

    /// Text mutations for CSV and TOML: numbers replaced by edge values, lines deleted,
    /// duplicated or swapped, separators and quotes inserted.
    fn mutate_text(&self, data: &mut Vec<u8>, rng: &mut ChaCha8Rng) {
        let text = String::from_utf8_lossy(data).into_owned();
        let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
        if lines.is_empty() {
            lines.push(String::new());
        }
        let li = rng.random_range(0..lines.len());
        match rng.random_range(0..6) {
            0 => {
                // Replace a number (or the value after `=`, or a cell) by an edge value.
                let line = &lines[li];
                let value = INTERESTING_TEXT[rng.random_range(0..INTERESTING_TEXT.len())];
                let new = if let Some((k, _)) = line.split_once('=') {
                    format!("{k}= {value}")
                } else {
                    let sep = if line.contains(';') && !line.contains(',') {
                        ';'
                    } else {
                        ','
                    };
                    let mut cells: Vec<String> = line.split(sep).map(str::to_string).collect();
                    let c = rng.random_range(0..cells.len());
                    cells[c] = value.trim_matches('"').to_string();
                    cells.join(&sep.to_string())
                };
                lines[li] = new;
            }
            1 => {
                lines.remove(li);
            }
            2 => {
                let l = lines[li].clone();
                lines.insert(li, l);
            }
            3 => {
                let lj = rng.random_range(0..lines.len());
                lines.swap(li, lj);
            }
            4 => {
                let snippets = [
                    ",",
                    ";",
                    "\"",
                    "'",
                    "[",
                    "]",
                    "[[x]]",
                    "[data]",
                    "=",
                    "\\",
                    "\r",
                    "\t",
                    "\u{feff}",
                    "é",
                    "#",
                    "\"\"\"",
                    "a.b.c = 1",
                    "[model]",
                    "x = ",
                    "0",
                ];
                let s = snippets[rng.random_range(0..snippets.len())];
                let line = &mut lines[li];
                let mut at = rng.random_range(0..=line.len());
                while !line.is_char_boundary(at) {
                    at -= 1;
                }
                line.insert_str(at, s);
            }
            _ => {
                // A key with an edge value appended (config) or a row of edge cells (CSV).
                if self.target == Target::Config && !self.keys.is_empty() {
                    let k = &self.keys[rng.random_range(0..self.keys.len())];
                    let v = INTERESTING_TEXT[rng.random_range(0..INTERESTING_TEXT.len())];
                    lines.insert(0, format!("{k} = {v}"));
                } else {
                    let n = lines[0].split(',').count().max(1);
                    let row: Vec<&str> = (0..n)
                        .map(|_| INTERESTING_TEXT[rng.random_range(0..INTERESTING_TEXT.len())].trim_matches('"'))
                        .collect();
                    lines.push(row.join(","));
                }
            }
        }
        *data = lines.join("\n").into_bytes();
    }

    /// 0–3 `--set` overrides: seed keys (or malformed keys) with edge values (or random text).
    fn overrides(&self, rng: &mut ChaCha8Rng) -> Vec<String> {
        let n = rng.random_range(0..=3);
        (0..n)
            .map(|_| {
                let key = match rng.random_range(0..10) {
                    0 => [
                        "",
                        ".",
                        "a..b",
                        "data.",
                        ".data",
                        "name.x",
                        "model.arch.x",
                        "x = y",
                        "a=b=c",
                    ][rng.random_range(0..9)]
                    .to_string(),
                    _ if !self.keys.is_empty() => self.keys[rng.random_range(0..self.keys.len())].clone(),
                    _ => "name".to_string(),
                };
                let value = match rng.random_range(0..5) {
                    0 => {
                        let mut b = vec![0u8; rng.random_range(0..12)];
                        rng.fill_bytes(&mut b);
                        String::from_utf8_lossy(&b).into_owned()
                    }
                    _ => INTERESTING_TEXT[rng.random_range(0..INTERESTING_TEXT.len())].to_string(),
                };
                if rng.random_bool(0.05) {
                    key
                } else {
                    format!("{key}={value}")
                }
            })
            .collect()
    }

    /// Runs the reader on one input, catching a panic.
    pub fn execute(&self, data: &[u8], overrides: &[String]) -> Outcome {
        if let Ok(mut g) = LAST_PANIC.lock() {
            *g = None;
        }
        let run = std::panic::AssertUnwindSafe(|| self.check(data, overrides));
        match std::panic::catch_unwind(run) {
            Ok(Ok(Ok(()))) => Outcome::Ok,
            Ok(Ok(Err(msg))) => Outcome::Err(msg),
            Ok(Err(bad)) => Outcome::Inconsistent(bad),
            Err(payload) => {
                let recorded = LAST_PANIC.lock().ok().and_then(|mut g| g.take());
                Outcome::Panic(recorded.unwrap_or_else(|| payload_text(payload.as_ref())))
            }
        }
    }

    /// The reader on one input: `Ok(Ok(()))` accepted and consistent, `Ok(Err(msg))` refused,
    /// `Err(why)` accepted with an inconsistent result.
    fn check(&self, data: &[u8], overrides: &[String]) -> Result<Result<(), String>, String> {
        let path = &self.input_path;
        if self.target != Target::Config {
            std::fs::write(path, data).map_err(|e| format!("cannot write the input file: {e}"))?;
        }
        let raw = !data.starts_with(&[0x1f, 0x8b]);
        let mut accepted = 0;
        let mut errors = Vec::new();
        match self.target {
            Target::Idx => {
                match read_idx_images(path) {
                    Ok(img) => {
                        accepted += 1;
                        let want = img.n.checked_mul(img.rows).and_then(|v| v.checked_mul(img.cols));
                        if img.n == 0 || img.rows == 0 || img.cols == 0 || want != Some(img.pixels.len()) {
                            return Err(format!(
                                "IDX images {}×{}×{} with {} pixel bytes",
                                img.n,
                                img.rows,
                                img.cols,
                                img.pixels.len()
                            ));
                        }
                        if raw && data.get(16..) != Some(&img.pixels[..]) {
                            return Err("IDX pixels differ from the file's bytes after the header".into());
                        }
                    }
                    Err(e) => errors.push(e.to_string()),
                }
                match read_idx_labels(path) {
                    Ok(labels) => {
                        accepted += 1;
                        if labels.is_empty() || (raw && data.get(8..) != Some(&labels[..])) {
                            return Err(format!("IDX labels ({}) differ from the file's bytes", labels.len()));
                        }
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            Target::Cifar => {
                for kind in [CifarKind::Cifar10, CifarKind::Cifar100] {
                    match read_cifar_batch(path, kind) {
                        Ok((pixels, labels)) => {
                            accepted += 1;
                            let n = labels.len();
                            if n == 0
                                || pixels.len() != n * CIFAR_PIXELS
                                || labels.iter().any(|&l| l >= kind.n_classes())
                                || (raw && data.len() != n * kind.record_size())
                            {
                                return Err(format!(
                                    "{kind:?}: {n} labels, {} pixel bytes from {} bytes",
                                    pixels.len(),
                                    data.len()
                                ));
                            }
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                }
            }
            Target::Csv => match read_csv_table(path, "fuzz", "quality") {
                Ok(t) => {
                    accepted += 1;
                    if t.y.is_empty()
                        || t.columns.len() != t.n_features
                        || t.x.len() != t.y.len() * t.n_features
                        || t.target != "quality"
                        || !t.x.iter().chain(&t.y).all(|v| v.is_finite())
                    {
                        return Err(format!(
                            "CSV table: {} rows, {} features, {} columns, {} x values",
                            t.y.len(),
                            t.n_features,
                            t.columns.len(),
                            t.x.len()
                        ));
                    }
                }
                Err(e) => errors.push(e.to_string()),
            },
            Target::Safetensors => match secateur_experiments::store::read_finite_safetensors(path) {
                Ok(tensors) => {
                    accepted += 1;
                    for (name, t) in &tensors {
                        let finite = match t.dtype() {
                            DType::F16 | DType::BF16 | DType::F32 | DType::F64 => t
                                .flatten_all()
                                .and_then(|f| f.to_dtype(DType::F64))
                                .and_then(|f| f.to_vec1::<f64>())
                                .map_err(|e| format!("tensor `{name}` accepted but unreadable: {e}"))?
                                .iter()
                                .all(|v| v.is_finite()),
                            _ => true,
                        };
                        if !finite {
                            return Err(format!("tensor `{name}` accepted with a non-finite entry"));
                        }
                    }
                }
                Err(e) => errors.push(e.to_string()),
            },
            Target::Masks => match MaskSet::load(path, &Device::Cpu) {
                Ok(masks) => {
                    accepted += 1;
                    for (name, m) in masks.masks() {
                        let v = m
                            .flatten_all()
                            .and_then(|f| f.to_dtype(DType::F64))
                            .and_then(|f| f.to_vec1::<f64>())
                            .map_err(|e| format!("mask `{name}` accepted but unreadable: {e}"))?;
                        if v.iter().any(|&x| x != 0.0 && x != 1.0) {
                            return Err(format!("mask `{name}` accepted with an entry other than 0 and 1"));
                        }
                    }
                }
                Err(e) => errors.push(e.to_string()),
            },
            Target::Config => {
                let text = String::from_utf8_lossy(data);
                match StudyConfig::from_toml(&text, "fuzz.toml", overrides) {
                    Ok(cfg) => {
                        accepted += 1;
                        cfg.validate()
                            .map_err(|m| format!("accepted config does not validate: {m}"))?;
                        let text = cfg
                            .to_toml()
                            .map_err(|e| format!("accepted config cannot be written: {e}"))?;
                        let again = StudyConfig::from_toml(&text, "round trip", &[])
                            .and_then(|c| c.to_toml())
                            .map_err(|e| format!("accepted config does not round-trip: {e}"))?;
                        if again != text {
                            return Err("accepted config changes in a round trip through to_toml".into());
                        }
                        let table: toml::Table =
                            toml::from_str(&text).map_err(|e| format!("written config is not TOML: {e}"))?;
                        if let Some(bad) = non_finite(&table, "") {
                            return Err(format!("accepted config has a non-finite number: {bad}"));
                        }
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
        if accepted > 0 {
            Ok(Ok(()))
        } else {
            Ok(Err(errors.join(" | ")))
        }
    }

    /// Saves a defective input (and its overrides) under the findings directory.
    fn save(&self, iteration: u64, data: &[u8], overrides: &[String], what: &str) -> Option<PathBuf> {
        std::fs::create_dir_all(&self.findings_dir).ok()?;
        let stem = format!("{}-seed{}-iter{}", self.target.name(), self.seed, iteration);
        let p = self.findings_dir.join(format!("{stem}.bin"));
        std::fs::write(&p, data).ok()?;
        let note = format!("{what}\noverrides: {overrides:?}\n");
        std::fs::write(self.findings_dir.join(format!("{stem}.txt")), note).ok()?;
        Some(p)
    }

    /// Runs inputs `start..start + iterations`, calling `progress` every `every` inputs.
    pub fn run(&self, start: u64, iterations: u64, every: u64, mut progress: impl FnMut(&Report)) -> Report {
        let mut report = Report::default();
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        let t0 = Instant::now();
        let path_text = self.input_path.display().to_string();
        for i in start..start + iterations {
            let (data, overrides) = self.input(i);
            report.max_len = report.max_len.max(data.len());
            let t = Instant::now();
            let outcome = self.execute(&data, &overrides);
            let dt = t.elapsed();
            report.executions += 1;
            if dt > report.slowest.1 {
                report.slowest = (i, dt);
            }
            if dt > SLOW {
                let what = format!("slow: {:.1} s", dt.as_secs_f64());
                let saved = self.save(i, &data, &overrides, &what);
                report.findings.push(Finding {
                    target: self.target,
                    iteration: i,
                    what,
                    saved,
                });
            }
            match outcome {
                Outcome::Ok => report.ok += 1,
                Outcome::Err(msg) => {
                    report.err += 1;
                    let kind = normalise(&msg, &path_text);
                    if let Some(&k) = kinds.get(&kind) {
                        report.error_kinds[k].1 += 1;
                    } else if report.error_kinds.len() < MAX_KINDS {
                        kinds.insert(kind.clone(), report.error_kinds.len());
                        report.error_kinds.push((kind, 1));
                    }
                }
                Outcome::Inconsistent(why) => {
                    let what = format!("inconsistent: {why}");
                    let saved = self.save(i, &data, &overrides, &what);
                    report.findings.push(Finding {
                        target: self.target,
                        iteration: i,
                        what,
                        saved,
                    });
                }
                Outcome::Panic(why) => {
                    let what = format!("panic: {why}");
                    let saved = self.save(i, &data, &overrides, &what);
                    report.findings.push(Finding {
                        target: self.target,
                        iteration: i,
                        what,
                        saved,
                    });
                }
            }
            if every > 0 && report.executions % every == 0 {
                report.elapsed = t0.elapsed();
                progress(&report);
            }
        }
        report.elapsed = t0.elapsed();
        report
    }
}

/// The first float of a TOML table that is NaN or infinite, as `key = value`.
fn non_finite(table: &toml::Table, prefix: &str) -> Option<String> {
    fn walk(v: &toml::Value, key: &str) -> Option<String> {
        match v {
            toml::Value::Float(f) if !f.is_finite() => Some(format!("{key} = {f}")),
            toml::Value::Table(t) => non_finite(t, key),
            toml::Value::Array(a) => a.iter().enumerate().find_map(|(i, x)| walk(x, &format!("{key}[{i}]"))),
            _ => None,
        }
    }
    table.iter().find_map(|(k, v)| {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        walk(v, &key)
    })
}

/// An error message with the input's path, every number and line breaks replaced, cut to 140
/// characters: the "kind" of the error.
pub fn normalise(msg: &str, path: &str) -> String {
    let msg = msg.replace(path, "<input>").replace('\n', " ⏎ ");
    let mut out = String::with_capacity(msg.len());
    let mut in_num = false;
    for c in msg.chars() {
        if c.is_ascii_digit() {
            if !in_num {
                out.push('N');
            }
            in_num = true;
        } else {
            in_num = false;
            out.push(c);
        }
        if out.len() >= 140 {
            out.push('…');
            break;
        }
    }
    out
}
