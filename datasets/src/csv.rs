//! Numeric CSV tables for regression: a header row, then numeric cells; the target column is
//! chosen by name. Comma-separated, or semicolon-separated when the header has semicolons and no
//! commas (the layout of the original UCI wine-quality files). Gzip is detected by its magic.
//! Blank lines are skipped; surrounding double quotes and spaces are stripped from cells.

use std::path::Path;

use super::read::read_maybe_gz;
use super::{DataError, TableSet};

fn clean(cell: &str) -> &str {
    let t = cell.trim();
    t.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(t)
}

/// Reads a CSV table, with `target` as the target column and every other column a feature.
/// Fails with [`DataError::MissingColumn`] if there is no such column, [`DataError::BadCell`]
/// (naming line and column) for a cell that is not a finite number, [`DataError::BadCsv`] for a
/// row with the wrong number of cells, and [`DataError::Empty`] when there is no data row.
pub fn read_csv_table(path: &Path, name: &str, target: &str) -> Result<TableSet, DataError> {
    let bytes = read_maybe_gz(path)?;
    let text = String::from_utf8(bytes).map_err(|e| DataError::BadCsv {
        path: path.to_path_buf(),
        line: 0,
        detail: format!("not UTF-8 text: {e}"),
    })?;
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((header_line, header)) = lines.next() else {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    };
    let sep = if header.contains(';') && !header.contains(',') {
        ';'
    } else {
        ','
    };
    let names: Vec<String> = header.split(sep).map(|c| clean(c).to_string()).collect();
    if names.iter().any(|n| n.is_empty()) {
        return Err(DataError::BadCsv {
            path: path.to_path_buf(),
            line: header_line,
            detail: format!("header has an empty column name: {names:?}"),
        });
    }
    let Some(t_idx) = names.iter().position(|n| n == target) else {
        return Err(DataError::MissingColumn {
            path: path.to_path_buf(),
            target: target.to_string(),
            columns: names,
        });
    };
    let n_features = names.len() - 1;
    let mut x = Vec::new();
    let mut y = Vec::new();
    for (line, row) in lines {
        let cells: Vec<&str> = row.split(sep).collect();
        if cells.len() != names.len() {
            return Err(DataError::BadCsv {
                path: path.to_path_buf(),
                line,
                detail: format!("{} cells, the header has {}", cells.len(), names.len()),
            });
        }
        for (j, cell) in cells.iter().enumerate() {
            let text = clean(cell);
            let v = text
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| DataError::BadCell {
                    path: path.to_path_buf(),
                    line,
                    column: j + 1,
                    name: names[j].clone(),
                    cell: text.to_string(),
                })?;
            if j == t_idx {
                y.push(v);
            } else {
                x.push(v);
            }
        }
    }
    if y.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut columns = names;
    let target = columns.remove(t_idx);
    Ok(TableSet {
        name: name.to_string(),
        columns,
        target,
        x,
        y,
        n_features,
    })
}

/// Writes a table as CSV (features then the target as the last column), for tests and export.
pub fn write_csv_table(path: &Path, set: &TableSet) -> Result<(), DataError> {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "{},{}", set.columns.join(","), set.target);
    for (i, t) in set.y.iter().enumerate() {
        let nf = set.n_features;
        for v in set.x.get(i * nf..(i + 1) * nf).unwrap_or(&[]) {
            let _ = write!(s, "{v},");
        }
        let _ = writeln!(s, "{t}");
    }
    std::fs::write(path, s).map_err(|source| DataError::Write {
        path: path.to_path_buf(),
        source,
    })
}
