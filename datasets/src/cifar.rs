//! CIFAR-10 and CIFAR-100 binary batches.
//!
//! CIFAR-10 record: 1 label byte, then 3072 pixel bytes (1024 red, 1024 green, 1024 blue, each
//! 32×32 row-major — already CHW order). Files `data_batch_1.bin` … `data_batch_5.bin` and
//! `test_batch.bin` in `cifar-10-batches-bin/`.
//!
//! CIFAR-100 record: 2 label bytes (coarse, fine), then 3072 pixel bytes; files `train.bin` and
//! `test.bin` in `cifar-100-binary/`. The fine labels (100 classes) are used.

use std::path::{Path, PathBuf};

use super::idx::check_labels;
use super::read::read_maybe_gz;
use super::{DataError, ImageSet};

/// Bytes of pixels in one CIFAR image (3 × 32 × 32).
pub const CIFAR_PIXELS: usize = 3 * 32 * 32;

/// Which CIFAR variant a batch file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarKind {
    /// CIFAR-10: one label byte per record, 10 classes.
    Cifar10,
    /// CIFAR-100: coarse and fine label bytes per record; the 100 fine classes are kept.
    Cifar100,
}

impl CifarKind {
    /// Label bytes before the pixels of each record.
    pub fn label_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1,
            CifarKind::Cifar100 => 2,
        }
    }

    /// Bytes per record.
    pub fn record_size(self) -> usize {
        self.label_bytes() + CIFAR_PIXELS
    }

    /// Number of classes of the labels kept.
    pub fn n_classes(self) -> u32 {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100 => 100,
        }
    }

    /// The sub-directory the official archive unpacks to.
    pub fn folder(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "cifar-10-batches-bin",
            CifarKind::Cifar100 => "cifar-100-binary",
        }
    }

    /// The training batch files, in order.
    pub fn train_files(self) -> Vec<&'static str> {
        match self {
            CifarKind::Cifar10 => vec![
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            CifarKind::Cifar100 => vec!["train.bin"],
        }
    }

    /// The test batch file.
    pub fn test_file(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "test_batch.bin",
            CifarKind::Cifar100 => "test.bin",
        }
    }
}

/// Reads one CIFAR batch file (gzip or raw), checking that its length is a non-zero multiple of
/// the record size and that every label is in range. Returns `(pixels, labels)`; pixels are
/// `N × 3 × 32 × 32` in CHW order.
pub fn read_cifar_batch(path: &Path, kind: CifarKind) -> Result<(Vec<u8>, Vec<u32>), DataError> {
    let bytes = read_maybe_gz(path)?;
    let record = kind.record_size();
    if bytes.is_empty() || bytes.len() % record != 0 {
        return Err(DataError::BadRecordLength {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
            record: record as u64,
        });
    }
    let n = bytes.len() / record;
    let lb = kind.label_bytes();
    let mut pixels = Vec::with_capacity(n * CIFAR_PIXELS);
    for rec in bytes.chunks_exact(record) {
        pixels.extend_from_slice(&rec[lb..]);
    }
    // The fine label is the last label byte in both layouts.
    let raw_labels = bytes.chunks_exact(record).map(|rec| u32::from(rec[lb - 1]));
    let labels = check_labels(path, raw_labels, kind.n_classes())?;
    Ok((pixels, labels))
}

/// Reads several batch files into one [`ImageSet`], in the order given.
pub fn read_cifar_files(name: &str, files: &[PathBuf], kind: CifarKind) -> Result<ImageSet, DataError> {
    let mut set = ImageSet {
        name: name.to_string(),
        channels: 3,
        height: 32,
        width: 32,
        n_classes: kind.n_classes(),
        pixels: Vec::new(),
        labels: Vec::new(),
    };
    for f in files {
        let (p, l) = read_cifar_batch(f, kind)?;
        set.pixels.extend_from_slice(&p);
        set.labels.extend_from_slice(&l);
    }
    Ok(set)
}

/// Encodes images and labels as a CIFAR batch (uncompressed). For CIFAR-100 the coarse label
/// byte is written as 0. Used by tests to craft files.
pub fn encode_cifar_batch(kind: CifarKind, pixels: &[u8], labels: &[u8]) -> Result<Vec<u8>, DataError> {
    if pixels.len() != labels.len() * CIFAR_PIXELS {
        return Err(DataError::InvalidArgument {
            what: "pixels",
            detail: format!("{} bytes for {} CIFAR images", pixels.len(), labels.len()),
        });
    }
    let mut out = Vec::with_capacity(labels.len() * kind.record_size());
    for (img, &l) in pixels.chunks_exact(CIFAR_PIXELS).zip(labels) {
        if kind == CifarKind::Cifar100 {
            out.push(0);
        }
        out.push(l);
        out.extend_from_slice(img);
    }
    Ok(out)
}
