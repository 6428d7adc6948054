//! What a shard of a study owes and which study it belongs to: `shard-I-of-N.json` in the
//! shard's directory, written by the study when it starts.
//!
//! The study's identity is the hash of its *resolved* config ([`resolved`]): the study file as
//! the study reads it, followed by every training config it names after its overrides (so that
//! an edit of `pai-lenet5.toml` between two shards is caught, not only an edit of the study
//! file). The hash is FNV-1a (64 bits) of that text: not a cryptographic hash, only a check
//! that the shards ran the same study.

use crate::atomic;
use crate::config::StudyConfig;
use crate::error::{ExpError, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The kinds of study (`secateur study KIND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StudyKind {
    /// Pruning at initialisation ([`crate::pai`]).
    Pai,
    /// Posterior families × seeds ([`crate::posterior_study`]).
    Posteriors,
    /// Trained networks pruned by many criteria ([`crate::compression_study`]).
    Compression,
    /// SVGD regression on random splits ([`crate::svgd_study`]).
    Svgd,
}

impl StudyKind {
    /// Every kind with its command-line name.
    pub const ALL: [(&'static str, StudyKind); 4] = [
        ("pai", StudyKind::Pai),
        ("posteriors", StudyKind::Posteriors),
        ("compression", StudyKind::Compression),
        ("svgd", StudyKind::Svgd),
    ];

    /// The kind named `name` on the command line.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, k)| *k)
            .ok_or_else(|| {
                ExpError::config(
                    "study",
                    format!("`{name}` is not a study (pai, posteriors, compression, svgd)"),
                )
            })
    }

    /// The command-line name.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, k)| *k == self).map_or("?", |(n, _)| n)
    }

    /// The copy of the study file inside a study directory (its presence marks a started study).
    pub fn study_file(self) -> &'static str {
        match self {
            StudyKind::Pai => "pai.toml",
            StudyKind::Posteriors => crate::posterior_study::STUDY_FILE,
            StudyKind::Compression => crate::compression_study::run::STUDY_FILE,
            StudyKind::Svgd => crate::svgd_study::STUDY_FILE,
        }
    }
}

/// FNV-1a, 64 bits, of `bytes`, as `fnv1a64:` and 16 hexadecimal digits.
pub fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("fnv1a64:{h:016x}")
}

fn config_section(out: &mut String, what: &str, cfg: &StudyConfig) -> Result<()> {
    let text = toml::to_string(cfg).map_err(|e| ExpError::config(what, e.to_string()))?;
    out.push_str(&format!("\n# ---- {what} (resolved) ----\n{text}"));
    Ok(())
}

/// The resolved config of the study in `path`: the study file as the study reads it, then each
/// training config it names, read with its overrides (the first seed's, for studies that set
/// the seed per run).
pub fn resolved(kind: StudyKind, path: &Path) -> Result<String> {
    let mut out = String::new();
    match kind {
        StudyKind::Pai => {
            let pai = crate::pai::PaiConfig::from_file(path)?;
            out = toml::to_string(&pai).map_err(|e| ExpError::config("pai", e.to_string()))?;
            let base = path.parent().unwrap_or(Path::new("."));
            for (i, m) in pai.models.iter().enumerate() {
                let p = if m.config.is_absolute() {
                    m.config.clone()
                } else {
                    base.join(&m.config)
                };
                config_section(
                    &mut out,
                    &format!("model {i}: {}", m.config.display()),
                    &StudyConfig::from_file(&p, &m.set)?,
                )?;
            }
        }
        StudyKind::Posteriors => {
            let s = crate::posterior_study::PosteriorStudy::from_file(path)?;
            out.push_str(&std::fs::read_to_string(path).map_err(|e| ExpError::io(path, e))?);
            for m in &s.methods {
                config_section(&mut out, &format!("method {}", m.name), &s.config(path, m, s.seeds[0])?)?;
            }
        }
        StudyKind::Compression => {
            let f = crate::compression_study::CompressionFile::from_file(path)?;
            let c = &f.compression;
            out.push_str(&std::fs::read_to_string(path).map_err(|e| ExpError::io(path, e))?);
            for m in &c.models {
                config_section(
                    &mut out,
                    &format!("model {}", m.name),
                    &c.model_config(path, m, c.seeds[0])?,
                )?;
            }
        }
        StudyKind::Svgd => {
            crate::svgd_study::SvgdFile::from_file(path)?;
            out.push_str(&std::fs::read_to_string(path).map_err(|e| ExpError::io(path, e))?);
        }
    }
    Ok(out)
}

/// What one shard of a study owes: written as `shard-I-of-N.json` in the directory the shard
/// writes its rows to (several shards may share one directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardManifest {
    /// The kind of study.
    pub study: StudyKind,
    /// The study's name (its file's `name`).
    pub name: String,
    /// The study file, absolute (the join reads it again to write the table).
    pub config: PathBuf,
    /// [`fnv1a64`] of [`resolved`]: equal in every shard of one study.
    pub config_hash: String,
    /// This shard's index `I` (0-based).
    pub shard: usize,
    /// The number of shards `N`.
    pub shards: usize,
    /// The columns of `results.csv` that name a cell.
    pub key_columns: Vec<String>,
    /// Every cell of the study, in its canonical order, as the values of `key_columns` exactly
    /// as `results.csv` writes them.
    pub grid: Vec<Vec<String>>,
    /// The shard that owes each cell of `grid` (this shard's cells are those equal to `shard`).
    pub owner: Vec<usize>,
}

impl ShardManifest {
    /// The manifest's file name for shard `shard` of `shards`.
    pub fn file_name(shard: usize, shards: usize) -> String {
        format!("shard-{shard}-of-{shards}.json")
    }

    /// A manifest of shard `shard` of `shards` of the study in `path` (hashing its resolved
    /// config); cell `grid[k]` is owed by shard `owner[k]`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        study: StudyKind,
        name: &str,
        path: &Path,
        (shard, shards): (usize, usize),
        key_columns: &[&str],
        grid: Vec<Vec<String>>,
        owner: Vec<usize>,
    ) -> Result<Self> {
        if owner.len() != grid.len() || owner.iter().any(|&o| o >= shards) {
            return Err(ExpError::config("--shard", "every cell needs one owning shard below N"));
        }
        let mut keys = std::collections::BTreeSet::new();
        if let Some(k) = grid.iter().find(|k| !keys.insert(*k)) {
            return Err(ExpError::config(
                path.display().to_string(),
                format!(
                    "names the cell ({}) twice (a repeated seed, sparsity, criterion or model?); every cell of a study must be distinct",
                    key_columns
                        .iter()
                        .zip(k)
                        .map(|(c, v)| format!("{c} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let config = std::path::absolute(path).map_err(|e| ExpError::io(path, e))?;
        Ok(Self {
            study,
            name: name.into(),
            config_hash: fnv1a64(resolved(study, path)?.as_bytes()),
            config,
            shard,
            shards,
            key_columns: key_columns.iter().map(|s| s.to_string()).collect(),
            grid,
            owner,
        })
    }

    /// Writes the manifest into `dir` (atomically).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| ExpError::io(dir, std::io::Error::other(e)))?;
        atomic::write_string(&dir.join(Self::file_name(self.shard, self.shards)), &text)
    }

    /// Every manifest in `dir`, by shard index (none: an empty list).
    pub fn read_all(dir: &Path) -> Result<Vec<(PathBuf, Self)>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(ExpError::io(dir, e)),
        };
        for entry in entries {
            let p = entry.map_err(|e| ExpError::io(dir, e))?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if !(name.starts_with("shard-") && name.ends_with(".json") && name.contains("-of-")) {
                continue;
            }
            let text = std::fs::read_to_string(&p).map_err(|e| ExpError::io(&p, e))?;
            let m: Self = serde_json::from_str(&text).map_err(|e| ExpError::Run {
                path: p.clone(),
                message: format!("is not a shard manifest: {e}"),
            })?;
            if m.shards == 0
                || m.shard >= m.shards
                || m.owner.len() != m.grid.len()
                || m.owner.iter().any(|&o| o >= m.shards)
            {
                return Err(ExpError::Run {
                    path: p,
                    message: "is not a consistent shard manifest (shard index or cells out of range)".into(),
                });
            }
            out.push((p, m));
        }
        out.sort_by_key(|(_, m)| m.shard);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_published_test_vectors() {
        // FNV-1a 64 of "" is the offset basis; of "a" and "foobar" from Fowler–Noll–Vo's tables.
        assert_eq!(fnv1a64(b""), "fnv1a64:cbf29ce484222325");
        assert_eq!(fnv1a64(b"a"), "fnv1a64:af63dc4c8601ec8c");
        assert_eq!(fnv1a64(b"foobar"), "fnv1a64:85944171f73967e8");
    }

    #[test]
    fn kinds_round_trip_by_name() -> Result<()> {
        for (n, k) in StudyKind::ALL {
            assert_eq!(StudyKind::from_name(n)?, k);
            assert_eq!(k.name(), n);
        }
        assert!(StudyKind::from_name("join").is_err());
        Ok(())
    }

    /// A grid that names one cell twice could never be joined (one of the two positions would
    /// stay missing): the manifest refuses it, naming the cell.
    #[test]
    fn a_grid_with_a_repeated_cell_is_refused() -> Result<()> {
        let cfg = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/pai-smoke.toml"));
        let cell = |s: &str| vec!["lenet5".to_string(), s.to_string()];
        let ok = ShardManifest::new(
            StudyKind::Pai,
            "p",
            cfg,
            (0, 2),
            &["arch", "seed"],
            vec![cell("0"), cell("1")],
            vec![0, 1],
        )?;
        assert_eq!(ok.grid.len(), 2);
        let e = ShardManifest::new(
            StudyKind::Pai,
            "p",
            cfg,
            (0, 2),
            &["arch", "seed"],
            vec![cell("0"), cell("0")],
            vec![0, 1],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("twice") && e.contains("seed 0"), "{e}");
        Ok(())
    }
}
