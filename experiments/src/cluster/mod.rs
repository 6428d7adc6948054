//! Studies on many machines: every study (`pai`, `posteriors`, `compression`, `svgd`) splits
//! into shards (`--shard I/N`), each shard records what it owes in a manifest
//! ([`manifest::ShardManifest`]: the study, the hash of its resolved config, the whole grid and
//! the shard's own cells), [`join()`] merges shard directories into one study directory and
//! writes its table, and [`mod@slurm`] writes (and submits) the Slurm job array that runs the
//! shards and the join job that depends on it.
//!
//! The split is Slurm's own: a job array, one task per shard, with `--dependency=afterany` for
//! the join, so that a cluster's scheduler, accounting and requeue do the work rather than a
//! scheduler of ours.

pub mod join;
pub mod manifest;
pub mod slurm;

pub use join::{join, JoinOptions, JoinOutcome};
pub use manifest::{ShardManifest, StudyKind};
