//! The typed error of the data module: every variant names the file (or, for a failed lookup,
//! every place searched) and says what was wrong.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Everything that can go wrong while finding, reading or checking a data set.
#[derive(Debug, Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file could not be written.
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file starts with the gzip magic but does not decompress (often: truncated).
    #[error("{}: corrupt or truncated gzip stream: {source}", path.display())]
    Gzip {
        /// The file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: std::io::Error,
    },
    /// The magic number at the start of the file is not the expected one.
    #[error("{}: bad magic number {found:#010x}, expected {expected:#010x} ({what})", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The magic number found.
        found: u32,
        /// The magic number expected.
        expected: u32,
        /// What kind of file was expected.
        what: &'static str,
    },
    /// The dimensions in the header are not acceptable.
    #[error("{}: wrong dimensions: {detail}", path.display())]
    BadDims {
        /// The file.
        path: PathBuf,
        /// What was found and what was expected.
        detail: String,
    },
    /// The (decompressed) length differs from the one the header implies: truncated or padded.
    #[error(
        "{}: length is {actual} bytes but {expected} were expected ({detail}){}",
        path.display(),
        if actual < expected { ": truncated file" } else { ": trailing bytes" }
    )]
    LengthMismatch {
        /// The file.
        path: PathBuf,
        /// The length found (after decompression).
        actual: u64,
        /// The length the header implies.
        expected: u64,
        /// How the expected length was computed.
        detail: String,
    },
    /// A file of fixed-size records whose length is zero or not a multiple of the record size.
    #[error(
        "{}: length {len} bytes is not a non-zero multiple of the record size {record} bytes",
        path.display()
    )]
    BadRecordLength {
        /// The file.
        path: PathBuf,
        /// The file's length.
        len: u64,
        /// The size of one record.
        record: u64,
    },
    /// The images file and the labels file hold different numbers of items.
    #[error(
        "{} holds {n_images} images but {} holds {n_labels} labels",
        images.display(),
        labels.display()
    )]
    CountMismatch {
        /// The images file.
        images: PathBuf,
        /// Number of images in it.
        n_images: usize,
        /// The labels file.
        labels: PathBuf,
        /// Number of labels in it.
        n_labels: usize,
    },
    /// A label is not below the number of classes.
    #[error(
        "{}: label {label} of item {index} is out of range (the data set has {n_classes} classes)",
        path.display()
    )]
    LabelOutOfRange {
        /// The file holding the label.
        path: PathBuf,
        /// Index of the item (0-based, in file order).
        index: usize,
        /// The label found.
        label: u32,
        /// The number of classes.
        n_classes: u32,
    },
    /// The file holds no items.
    #[error("{}: empty data set (0 items)", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A CSV cell that is not a finite number.
    #[error(
        "{}: line {line}, column {column} ({name:?}): cannot parse {cell:?} as a finite number",
        path.display()
    )]
    BadCell {
        /// The file.
        path: PathBuf,
        /// 1-based line number in the file (the header is line 1).
        line: usize,
        /// 1-based column number.
        column: usize,
        /// The column's header name.
        name: String,
        /// The offending text.
        cell: String,
    },
    /// A CSV row with the wrong number of cells, or a missing header.
    #[error("{}: line {line}: {detail}", path.display())]
    BadCsv {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        detail: String,
    },
    /// The CSV header has no column of the requested name.
    #[error("{}: no target column {target:?}; the columns are {columns:?}", path.display())]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The requested column.
        target: String,
        /// The columns the header has.
        columns: Vec<String>,
    },
    /// No place holds the data set's files.
    #[error("data set {name:?} not found; searched:{}", list_paths(searched))]
    NotFound {
        /// The data set's name.
        name: String,
        /// Every place tried, in order.
        searched: Vec<PathBuf>,
    },
    /// A directory given explicitly holds some of a data set's files but not all (or a
    /// directory where a file should be): an error rather than a silent fall-back to another
    /// copy of the set.
    #[error("{}: holds the data set {name:?} only in part: {problem}", dir.display())]
    Incomplete {
        /// The directory.
        dir: PathBuf,
        /// The data set's name.
        name: String,
        /// Which file is missing or not a file.
        problem: String,
    },
    /// A gzip file that expands past the limit of [`super::read::MAX_DECOMPRESSED`] bytes.
    #[error("{}: decompresses to more than {limit} bytes (a gzip bomb, or not a data file)", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// The name is not one of the known data sets.
    #[error("unknown data set {name:?}; known image sets: {images}; known tables: {tables}")]
    UnknownName {
        /// The name asked for.
        name: String,
        /// Known image data sets, comma-separated.
        images: String,
        /// Known tables, comma-separated.
        tables: String,
    },
    /// An argument outside its allowed range (no file involved).
    #[error("invalid argument {what}: {detail}")]
    InvalidArgument {
        /// The argument's name.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}

fn list_paths(paths: &[PathBuf]) -> String {
    let mut s = String::new();
    for p in paths {
        let _ = write!(s, "\n  {}", p.display());
    }
    s
}

impl DataError {
    /// The file the error is about, where there is one (for [`DataError::CountMismatch`]: the
    /// images file).
    pub fn path(&self) -> Option<&Path> {
        match self {
            DataError::Io { path, .. }
            | DataError::Write { path, .. }
            | DataError::Gzip { path, .. }
            | DataError::BadMagic { path, .. }
            | DataError::BadDims { path, .. }
            | DataError::LengthMismatch { path, .. }
            | DataError::BadRecordLength { path, .. }
            | DataError::LabelOutOfRange { path, .. }
            | DataError::Empty { path }
            | DataError::BadCell { path, .. }
            | DataError::BadCsv { path, .. }
            | DataError::MissingColumn { path, .. } => Some(path),
            DataError::CountMismatch { images, .. } => Some(images),
            DataError::Incomplete { dir, .. } => Some(dir),
            DataError::TooLarge { path, .. } => Some(path),
            DataError::NotFound { .. } | DataError::UnknownName { .. } | DataError::InvalidArgument { .. } => None,
        }
    }
}
