//! [`TableSet`]: a numeric regression table in memory, with standardisation statistics.

use rand::Rng;

use super::image_set::split_indices;
use super::DataError;

/// A regression table: `x` is `len × n_features` row-major, `y` one target per row.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSet {
    /// Name of the data set, for messages.
    pub name: String,
    /// Names of the feature columns, in order (the target excluded).
    pub columns: Vec<String>,
    /// Name of the target column.
    pub target: String,
    /// Features, row-major.
    pub x: Vec<f32>,
    /// Targets.
    pub y: Vec<f32>,
    /// Number of feature columns.
    pub n_features: usize,
}

/// Mean and (population) standard deviation of each feature and of the target, used to
/// standardise a table (`(v − mean) / std`). Compute it on the training rows only.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    /// Mean of each feature.
    pub x_mean: Vec<f32>,
    /// Standard deviation of each feature (a constant column gets 1).
    pub x_std: Vec<f32>,
    /// Mean of the target.
    pub y_mean: f32,
    /// Standard deviation of the target (a constant target gets 1).
    pub y_std: f32,
}

fn mean_std(values: impl Iterator<Item = f32>) -> (f32, f32) {
    let (mut n, mut s, mut ss) = (0usize, 0f64, 0f64);
    for v in values {
        n += 1;
        s += f64::from(v);
        ss += f64::from(v) * f64::from(v);
    }
    if n == 0 {
        return (0.0, 0.0);
    }
    let m = s / n as f64;
    let var = (ss / n as f64 - m * m).max(0.0);
    (m as f32, var.sqrt() as f32)
}

impl TableSet {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether the table has no row.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Mean and population standard deviation of feature `j`.
    pub fn feature_stats(&self, j: usize) -> (f32, f32) {
        let nf = self.n_features.max(1);
        mean_std(self.x.iter().skip(j).step_by(nf).copied())
    }

    /// Mean and population standard deviation of the target.
    pub fn target_stats(&self) -> (f32, f32) {
        mean_std(self.y.iter().copied())
    }

    /// The standardisation statistics of this table (zero standard deviations replaced by 1).
    pub fn standardizer(&self) -> Standardizer {
        let fix = |s: f32| if s > 0.0 { s } else { 1.0 };
        let (x_mean, x_std) = (0..self.n_features)
            .map(|j| {
                let (m, s) = self.feature_stats(j);
                (m, fix(s))
            })
            .unzip();
        let (y_mean, y_std) = self.target_stats();
        Standardizer {
            x_mean,
            x_std,
            y_mean,
            y_std: fix(y_std),
        }
    }

    /// The rows at `indices`, in that order. Fails on an index past the end.
    pub fn subset(&self, indices: &[usize]) -> Result<TableSet, DataError> {
        let nf = self.n_features;
        let mut x = Vec::with_capacity(indices.len() * nf);
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            let (Some(row), Some(&t)) = (self.x.get(i * nf..(i + 1) * nf), self.y.get(i)) else {
                return Err(DataError::InvalidArgument {
                    what: "indices",
                    detail: format!("row {i} past the end of {} ({} rows)", self.name, self.len()),
                });
            };
            x.extend_from_slice(row);
            y.push(t);
        }
        Ok(TableSet {
            name: self.name.clone(),
            columns: self.columns.clone(),
            target: self.target.clone(),
            x,
            y,
            n_features: nf,
        })
    }

    /// Seeded split into `(train, val)`, like [`super::ImageSet::split`].
    pub fn split(&self, val_fraction: f64, rng: &mut impl Rng) -> Result<(TableSet, TableSet), DataError> {
        let (train, val) = split_indices(self.len(), val_fraction, rng)?;
        Ok((self.subset(&train)?, self.subset(&val)?))
    }
}

impl Standardizer {
    /// Standardises one feature value of column `j`.
    pub fn x(&self, j: usize, v: f32) -> f32 {
        (v - self.x_mean[j]) / self.x_std[j]
    }

    /// Standardises a target value.
    pub fn y(&self, v: f32) -> f32 {
        (v - self.y_mean) / self.y_std
    }

    /// Maps a standardised target back to the original units.
    pub fn unstandardize_y(&self, z: f32) -> f32 {
        z * self.y_std + self.y_mean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardizer_by_hand() {
        let t = TableSet {
            name: "t".into(),
            columns: vec!["a".into(), "b".into()],
            target: "y".into(),
            x: vec![1.0, 5.0, 3.0, 5.0],
            y: vec![0.0, 4.0],
            n_features: 2,
        };
        let s = t.standardizer();
        // column a: 1, 3 → mean 2, std 1; column b constant → std replaced by 1
        assert_eq!(s.x_mean, vec![2.0, 5.0]);
        assert_eq!(s.x_std, vec![1.0, 1.0]);
        assert_eq!((s.y_mean, s.y_std), (2.0, 2.0));
        assert_eq!(s.unstandardize_y(s.y(3.0)), 3.0);
    }
}
