//! The IDX format of MNIST and Fashion-MNIST (big-endian header, then unsigned bytes), gzip
//! compressed or raw: a checked reader and a gzip writer.
//!
//! Images: magic `0x00000803`, then `n`, `rows`, `cols` as big-endian `u32`, then `n·rows·cols`
//! bytes. Labels: magic `0x00000801`, then `n`, then `n` bytes.

use std::path::Path;

use super::read::{read_maybe_gz_sized, write_gz};
use super::{DataError, ImageSet};

/// Magic number of an IDX file of unsigned-byte images (3 dimensions).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned-byte labels (1 dimension).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// The images of one IDX file: `n` images of `rows × cols` bytes, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub n: usize,
    /// Height of each image.
    pub rows: usize,
    /// Width of each image.
    pub cols: usize,
    /// `n · rows · cols` bytes.
    pub pixels: Vec<u8>,
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn check_header(path: &Path, bytes: &[u8], header: usize, magic: u32, what: &'static str) -> Result<(), DataError> {
    if bytes.len() < 4 {
        return Err(DataError::LengthMismatch {
            path: path.to_path_buf(),
            actual: bytes.len() as u64,
            expected: header as u64,
            detail: format!("an {what} header is {header} bytes"),
        });
    }
    let found = be_u32(bytes, 0);
    if found != magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found,
            expected: magic,
            what,
        });
    }
    if bytes.len() < header {
        return Err(DataError::LengthMismatch {
            path: path.to_path_buf(),
            actual: bytes.len() as u64,
            expected: header as u64,
            detail: format!("an {what} header is {header} bytes"),
        });
    }
    Ok(())
}

/// Reads and checks an IDX images file (magic, non-zero dimensions, exact length, at least one
/// image).
pub fn read_idx_images(path: &Path) -> Result<IdxImages, DataError> {
    // Decompress no further than the header's size (n · rows · cols + 16) and one byte.
    let bytes = read_maybe_gz_sized(path, 16, |h| {
        (be_u32(h, 0) == IDX_IMAGES_MAGIC).then_some(())?;
        let dims = [4, 8, 12].map(|at| be_u32(h, at) as usize);
        dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?.checked_add(16)
    })?;
    check_header(path, &bytes, 16, IDX_IMAGES_MAGIC, "IDX images file")?;
    let n = be_u32(&bytes, 4) as usize;
    let rows = be_u32(&bytes, 8) as usize;
    let cols = be_u32(&bytes, 12) as usize;
    if rows == 0 || cols == 0 {
        return Err(DataError::BadDims {
            path: path.to_path_buf(),
            detail: format!("images of {rows}×{cols} pixels"),
        });
    }
    let expected = n
        .checked_mul(rows)
        .and_then(|v| v.checked_mul(cols))
        .and_then(|v| v.checked_add(16))
        .ok_or_else(|| DataError::BadDims {
            path: path.to_path_buf(),
            detail: format!("{n} images of {rows}×{cols} pixels overflow"),
        })?;
    if bytes.len() != expected {
        return Err(DataError::LengthMismatch {
            path: path.to_path_buf(),
            actual: bytes.len() as u64,
            expected: expected as u64,
            detail: format!("16-byte header + {n} images × {rows}×{cols}"),
        });
    }
    if n == 0 {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut pixels = bytes;
    pixels.drain(..16);
    Ok(IdxImages { n, rows, cols, pixels })
}

/// Reads and checks an IDX labels file (magic, exact length, at least one label). Label range
/// is checked by [`read_idx_pair`], which knows the number of classes.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = read_maybe_gz_sized(path, 8, |h| {
        (be_u32(h, 0) == IDX_LABELS_MAGIC).then_some(())?;
        (be_u32(h, 4) as usize).checked_add(8)
    })?;
    check_header(path, &bytes, 8, IDX_LABELS_MAGIC, "IDX labels file")?;
    let n = be_u32(&bytes, 4) as usize;
    let expected = n.checked_add(8).ok_or_else(|| DataError::BadDims {
        path: path.to_path_buf(),
        detail: format!("{n} labels overflow"),
    })?;
    if bytes.len() != expected {
        return Err(DataError::LengthMismatch {
            path: path.to_path_buf(),
            actual: bytes.len() as u64,
            expected: expected as u64,
            detail: format!("8-byte header + {n} labels"),
        });
    }
    if n == 0 {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut labels = bytes;
    labels.drain(..8);
    Ok(labels)
}

/// Reads an images file and its labels file into one [`ImageSet`] (1 channel), checking both
/// files, that they hold as many items, that every label is below `n_classes`, and, when
/// `expect_hw` is given, that the images are `(height, width)`.
pub fn read_idx_pair(
    name: &str,
    images: &Path,
    labels: &Path,
    n_classes: u32,
    expect_hw: Option<(usize, usize)>,
) -> Result<ImageSet, DataError> {
    let imgs = read_idx_images(images)?;
    if let Some((h, w)) = expect_hw {
        if (imgs.rows, imgs.cols) != (h, w) {
            return Err(DataError::BadDims {
                path: images.to_path_buf(),
                detail: format!("images are {}×{}, expected {h}×{w}", imgs.rows, imgs.cols),
            });
        }
    }
    let labs = read_idx_labels(labels)?;
    if labs.len() != imgs.n {
        return Err(DataError::CountMismatch {
            images: images.to_path_buf(),
            n_images: imgs.n,
            labels: labels.to_path_buf(),
            n_labels: labs.len(),
        });
    }
    let labels_u32 = check_labels(labels, labs.iter().map(|&l| u32::from(l)), n_classes)?;
    Ok(ImageSet {
        name: name.to_string(),
        channels: 1,
        height: imgs.rows,
        width: imgs.cols,
        n_classes,
        pixels: imgs.pixels,
        labels: labels_u32,
    })
}

/// Collects labels, failing on the first one that is not below `n_classes`.
pub(crate) fn check_labels(
    path: &Path,
    labels: impl Iterator<Item = u32>,
    n_classes: u32,
) -> Result<Vec<u32>, DataError> {
    labels
        .enumerate()
        .map(|(index, label)| {
            if label < n_classes {
                Ok(label)
            } else {
                Err(DataError::LabelOutOfRange {
                    path: path.to_path_buf(),
                    index,
                    label,
                    n_classes,
                })
            }
        })
        .collect()
}

/// Encodes images as an IDX images file (uncompressed bytes). `pixels` must hold
/// `n · rows · cols` bytes.
pub fn encode_idx_images(n: usize, rows: usize, cols: usize, pixels: &[u8]) -> Result<Vec<u8>, DataError> {
    let to_u32 = |v: usize, what: &'static str| {
        u32::try_from(v).map_err(|_| DataError::InvalidArgument {
            what,
            detail: format!("{v} does not fit an IDX header"),
        })
    };
    if n.checked_mul(rows).and_then(|v| v.checked_mul(cols)) != Some(pixels.len()) {
        return Err(DataError::InvalidArgument {
            what: "pixels",
            detail: format!("{} bytes for {n} images of {rows}×{cols}", pixels.len()),
        });
    }
    let mut out = Vec::with_capacity(16 + pixels.len());
    out.extend_from_slice(&IDX_IMAGES_MAGIC.to_be_bytes());
    out.extend_from_slice(&to_u32(n, "n")?.to_be_bytes());
    out.extend_from_slice(&to_u32(rows, "rows")?.to_be_bytes());
    out.extend_from_slice(&to_u32(cols, "cols")?.to_be_bytes());
    out.extend_from_slice(pixels);
    Ok(out)
}

/// Encodes labels as an IDX labels file (uncompressed bytes).
pub fn encode_idx_labels(labels: &[u8]) -> Result<Vec<u8>, DataError> {
    let n = u32::try_from(labels.len()).map_err(|_| DataError::InvalidArgument {
        what: "labels",
        detail: format!("{} labels do not fit an IDX header", labels.len()),
    })?;
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&IDX_LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(labels);
    Ok(out)
}

/// Writes images as a gzip-compressed IDX images file.
pub fn write_idx_images_gz(path: &Path, n: usize, rows: usize, cols: usize, pixels: &[u8]) -> Result<(), DataError> {
    write_gz(path, &encode_idx_images(n, rows, cols, pixels)?)
}

/// Writes labels as a gzip-compressed IDX labels file.
pub fn write_idx_labels_gz(path: &Path, labels: &[u8]) -> Result<(), DataError> {
    write_gz(path, &encode_idx_labels(labels)?)
}

/// Writes a 1-channel [`ImageSet`] as a pair of gzip IDX files. Fails if the set has more than
/// one channel or a label above 255.
pub fn write_idx_pair_gz(set: &ImageSet, images: &Path, labels: &Path) -> Result<(), DataError> {
    if set.channels != 1 {
        return Err(DataError::InvalidArgument {
            what: "set",
            detail: format!("IDX holds 1-channel images, the set has {}", set.channels),
        });
    }
    let labs = set
        .labels
        .iter()
        .map(|&l| {
            u8::try_from(l).map_err(|_| DataError::InvalidArgument {
                what: "labels",
                detail: format!("label {l} does not fit a byte"),
            })
        })
        .collect::<Result<Vec<u8>, _>>()?;
    write_idx_images_gz(images, set.len(), set.height, set.width, &set.pixels)?;
    write_idx_labels_gz(labels, &labs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_header_is_big_endian() {
        let bytes = encode_idx_images(1, 2, 3, &[1, 2, 3, 4, 5, 6]).expect("encode");
        assert_eq!(&bytes[..16], &[0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]);
        let labels = encode_idx_labels(&[7, 9]).expect("encode");
        assert_eq!(labels, vec![0, 0, 8, 1, 0, 0, 0, 2, 7, 9]);
    }

    #[test]
    fn encode_rejects_wrong_pixel_count() {
        assert!(matches!(
            encode_idx_images(2, 2, 2, &[0; 7]),
            Err(DataError::InvalidArgument { .. })
        ));
    }
}
