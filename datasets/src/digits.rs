//! The UCI optical recognition of hand-written digits (the 1,797-image set scikit-learn ships as
//! `digits.csv.gz`: 64 cells with values 0..=16, then the digit), brought to MNIST's framing so
//! it can be fed to models trained on 28×28 MNIST-like images as an out-of-distribution set.
//!
//! Conversion of each 8×8 image: values are rescaled from 0..=16 to 0..=255 (`v · 255 / 16`),
//! the 8×8 plane is resized to 20×20 by bilinear interpolation with half-pixel centres (see
//! [`resize_bilinear`]), rounded to bytes, and centred in a 28×28 zero image with a 4-pixel
//! border on every side — the way MNIST digits sit in a 20×20 box inside 28×28.

use std::path::Path;

use super::idx::check_labels;
use super::image_set::resize_bilinear;
use super::read::read_maybe_gz;
use super::{DataError, ImageSet};

/// Side of the output images.
pub const DIGITS_SIDE: usize = 28;
/// Side of the box the 8×8 digit is resized to.
pub const DIGITS_BOX: usize = 20;

/// Converts one 8×8 digit (values 0..=16) to a 28×28 byte image, as described in the module
/// documentation.
pub fn digit_to_28(cells: &[f32; 64]) -> Vec<u8> {
    let scaled: Vec<f32> = cells.iter().map(|v| v * 255.0 / 16.0).collect();
    let boxed = resize_bilinear(&scaled, 8, 8, DIGITS_BOX, DIGITS_BOX);
    let border = (DIGITS_SIDE - DIGITS_BOX) / 2;
    let mut out = vec![0u8; DIGITS_SIDE * DIGITS_SIDE];
    for y in 0..DIGITS_BOX {
        for x in 0..DIGITS_BOX {
            let v = boxed[y * DIGITS_BOX + x].round().clamp(0.0, 255.0) as u8;
            out[(y + border) * DIGITS_SIDE + x + border] = v;
        }
    }
    out
}

/// Reads `digits.csv.gz` (or the raw CSV): rows of 65 comma-separated numbers, no header.
/// Checks cell values (0..=16), labels (0..=9) and that there is at least one row, and returns a
/// 1×28×28, 10-class [`ImageSet`].
pub fn read_uci_digits(path: &Path, name: &str) -> Result<ImageSet, DataError> {
    let bytes = read_maybe_gz(path)?;
    let text = String::from_utf8(bytes).map_err(|e| DataError::BadCsv {
        path: path.to_path_buf(),
        line: 0,
        detail: format!("not UTF-8 text: {e}"),
    })?;
    let mut pixels = Vec::new();
    let mut raw_labels = Vec::new();
    for (i, row) in text.lines().enumerate() {
        let line = i + 1;
        if row.trim().is_empty() {
            continue;
        }
        let cells: Vec<&str> = row.split(',').collect();
        if cells.len() != 65 {
            return Err(DataError::BadCsv {
                path: path.to_path_buf(),
                line,
                detail: format!("{} cells, expected 65 (64 pixels and the digit)", cells.len()),
            });
        }
        let mut img = [0f32; 64];
        let mut label = 0u32;
        for (j, cell) in cells.iter().enumerate() {
            let t = cell.trim();
            let bad = || DataError::BadCell {
                path: path.to_path_buf(),
                line,
                column: j + 1,
                name: if j < 64 { format!("pixel{j}") } else { "digit".into() },
                cell: t.to_string(),
            };
            let v: f32 = t.parse().map_err(|_| bad())?;
            if !(0.0..=16.0).contains(&v) || (j == 64 && v.fract() != 0.0) {
                return Err(bad());
            }
            if j < 64 {
                img[j] = v;
            } else {
                label = v as u32;
            }
        }
        pixels.extend(digit_to_28(&img));
        raw_labels.push(label);
    }
    if raw_labels.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    let labels = check_labels(path, raw_labels.into_iter(), 10)?;
    Ok(ImageSet {
        name: name.to_string(),
        channels: 1,
        height: DIGITS_SIDE,
        width: DIGITS_SIDE,
        n_classes: 10,
        pixels,
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_digit_fills_the_box_only() {
        let out = digit_to_28(&[16.0; 64]);
        assert_eq!(out.iter().filter(|&&v| v == 255).count(), 400);
        assert_eq!(out[0], 0);
        assert_eq!(out[4 * 28 + 4], 255);
        assert_eq!(out[3 * 28 + 4], 0);
        assert_eq!(out[23 * 28 + 23], 255);
        assert_eq!(out[24 * 28 + 23], 0);
    }
}
