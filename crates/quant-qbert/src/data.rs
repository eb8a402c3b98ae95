//! Embedded real data: the UCI optical digits set.

use ndarray::Array2;

/// The gzip-compressed CSV, embedded at compile time (57 KiB).
#[cfg(feature = "digits")]
const DIGITS_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

/// Errors while decoding embedded or caller-supplied data sets.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The gzip stream is corrupt.
    #[error("the compressed data is corrupt")]
    Decompress,
    /// A line has the wrong number of fields.
    #[error("line {line}: expected {expected} fields, found {found}")]
    FieldCount {
        /// 1-based line number.
        line: usize,
        /// Fields required.
        expected: usize,
        /// Fields present.
        found: usize,
    },
    /// A test fraction outside `(0, 1)`: one of the two sets would be empty.
    #[error("the test fraction must lie strictly between 0 and 1, got {fraction}")]
    InvalidFraction {
        /// The fraction given.
        fraction: f64,
    },
    /// A field is not a number in range.
    #[error("line {line}, field {field}: not a valid value")]
    BadValue {
        /// 1-based line number.
        line: usize,
        /// 1-based field number.
        field: usize,
    },
}

/// The UCI optical digits: 1797 images of 8x8 pixels with values 0..16, and their labels.
///
/// Creators E. Alpaydin and C. Kaynak (1998), UCI Machine Learning Repository, CC BY 4.0,
/// as shipped by scikit-learn.
#[derive(Debug, Clone, PartialEq)]
pub struct Digits {
    /// One row per image, 64 pixel intensities `0.0..=16.0` in row-major order.
    pub images: Array2<f32>,
    /// The digit shown by each image, `0..=9`.
    pub labels: Vec<u8>,
}

/// Loads the embedded digits data.
///
/// ```
/// let d = quant_qbert::data::digits()?;
/// assert_eq!(d.images.dim(), (1797, 64));
/// # Ok::<(), quant_qbert::data::DataError>(())
/// ```
///
/// # Errors
/// Only if the embedded file were corrupt ([`DataError`]); the tests check it is not.
#[cfg(feature = "digits")]
pub fn digits() -> Result<Digits, DataError> {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS_GZ).read_to_string(&mut text).map_err(|_| DataError::Decompress)?;
    parse_digits_csv(&text)
}

/// Parses digits CSV text: 64 pixel fields (0..=16) and a label (0..=9) per line.
///
/// # Errors
/// [`DataError::FieldCount`] or [`DataError::BadValue`] with the line and field.
pub fn parse_digits_csv(text: &str) -> Result<Digits, DataError> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 65 {
            return Err(DataError::FieldCount { line: i + 1, expected: 65, found: fields.len() });
        }
        for (j, f) in fields.iter().enumerate() {
            let v: u8 = f.trim().parse().map_err(|_| DataError::BadValue { line: i + 1, field: j + 1 })?;
            let max = if j == 64 { 9 } else { 16 };
            if v > max {
                return Err(DataError::BadValue { line: i + 1, field: j + 1 });
            }
            if j == 64 { labels.push(v) } else { pixels.push(f32::from(v)) }
        }
    }
    let n = labels.len();
    // 64 pixels were pushed for every label.
    let images = Array2::from_shape_vec((n, 64), pixels).map_err(|_| DataError::FieldCount { line: n, expected: 65, found: 0 })?;
    Ok(Digits { images, labels })
}

/// A seeded split of `0..n` into training and test indices, `test_fraction` of them (rounded)
/// for testing; both lists sorted.
///
/// # Errors
/// [`DataError::InvalidFraction`] unless `0 < test_fraction < 1`.
pub fn split(n: usize, test_fraction: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>), DataError> {
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(DataError::InvalidFraction { fraction: test_fraction });
    }
    let mut order: Vec<usize> = (0..n).collect();
    crate::train::shuffle(&mut order, seed);
    let test_len = ((n as f64 * test_fraction).round() as usize).min(n);
    let (mut test, mut train) = (order[..test_len].to_vec(), order[test_len..].to_vec());
    test.sort_unstable();
    train.sort_unstable();
    Ok((train, test))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_digits_decode() {
        let d = digits().unwrap();
        assert_eq!(d.images.dim(), (1797, 64));
        assert_eq!(d.labels.len(), 1797);
        // First image of scikit-learn's set is a zero; its first row is 0,0,5,13,9,1,0,0.
        assert_eq!(d.labels[0], 0);
        assert_eq!(d.images.row(0).iter().take(8).copied().collect::<Vec<_>>(), [0.0, 0.0, 5.0, 13.0, 9.0, 1.0, 0.0, 0.0]);
        let mut counts = [0usize; 10];
        d.labels.iter().for_each(|&l| counts[usize::from(l)] += 1);
        assert!(counts.iter().all(|&c| (170..=190).contains(&c)), "{counts:?}");
        assert!(d.images.iter().all(|&v| (0.0..=16.0).contains(&v)));
    }

    #[test]
    fn malformed_csv_is_an_error() {
        assert_eq!(parse_digits_csv("1,2,3"), Err(DataError::FieldCount { line: 1, expected: 65, found: 3 }));
        let mut row = vec!["0"; 64];
        row.push("10");
        assert_eq!(parse_digits_csv(&row.join(",")), Err(DataError::BadValue { line: 1, field: 65 }));
        row[64] = "3";
        row[5] = "x";
        assert_eq!(parse_digits_csv(&row.join(",")), Err(DataError::BadValue { line: 1, field: 6 }));
    }
}
