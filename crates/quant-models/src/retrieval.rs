//! How close two sets of embeddings are, and how well queries find their documents: the
//! measures `quant eval` reports for a quantized model against its f32 original.
//!
//! Everything is computed in `f64` from `f32` embeddings and is finite for any finite input
//! (a zero row has cosine 0 with everything, and 1 with another zero row).

use ndarray::{ArrayView1, ArrayView2};

/// The cosine of the angle between `a` and `b` (in `f64`); 0 when exactly one of them is
/// zero, 1 when both are. `a` and `b` have the same length.
pub fn cosine(a: ArrayView1<'_, f32>, b: ArrayView1<'_, f32>) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(&b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    match (aa > 0.0, bb > 0.0) {
        // Sums of squares of f32 values: their product cannot overflow f64.
        (true, true) => (ab / (aa * bb).sqrt()).clamp(-1.0, 1.0),
        (false, false) => 1.0,
        _ => 0.0,
    }
}

/// The cosine of each row of `a` with the same row of `b`.
///
/// # Errors
/// [`RetrievalError::Shape`] when the shapes differ.
pub fn row_cosines(a: ArrayView2<'_, f32>, b: ArrayView2<'_, f32>) -> Result<Vec<f64>, RetrievalError> {
    if a.dim() != b.dim() {
        return Err(RetrievalError::Shape { left: a.dim(), right: b.dim() });
    }
    Ok(a.outer_iter().zip(b.outer_iter()).map(|(x, y)| cosine(x, y)).collect())
}

/// Mean, 5th percentile and minimum of a set of cosines.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CosineSummary {
    /// How many values.
    pub count: usize,
    /// Their mean.
    pub mean: f64,
    /// The 5th percentile, interpolated linearly between order statistics (NumPy's default:
    /// position `0.05 (n − 1)` in the sorted values).
    pub p5: f64,
    /// The smallest.
    pub min: f64,
}

impl CosineSummary {
    /// The summary of `values`.
    ///
    /// # Errors
    /// [`RetrievalError::Empty`] for no values, [`RetrievalError::NonFinite`] for a NaN or
    /// infinite one.
    pub fn of(values: &[f64]) -> Result<Self, RetrievalError> {
        if values.is_empty() {
            return Err(RetrievalError::Empty);
        }
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(RetrievalError::NonFinite { index });
        }
        let p5 = quant_core::percentile(&mut values.to_vec(), 5.0).ok_or(RetrievalError::Empty)?;
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        Ok(Self { count: values.len(), mean, p5, min })
    }
}

/// How well each query finds its own document (query `i`'s is document `i`) among all the
/// documents, ranked by cosine similarity.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Retrieval {
    /// Query / document pairs.
    pub pairs: usize,
    /// The fraction of queries whose own document ranks first.
    pub recall_at_1: f64,
    /// The mean over queries of `1 / rank` of the own document.
    pub mrr: f64,
}

/// Recall@1 and mean reciprocal rank of `queries` against `documents` (row `i` of each is a
/// pair). A document's rank is one plus the number of documents strictly more similar to the
/// query, so ties are resolved in the own document's favour.
///
/// # Errors
/// [`RetrievalError::Empty`] for no pairs, [`RetrievalError::Shape`] when the two differ in
/// shape.
pub fn retrieval(queries: ArrayView2<'_, f32>, documents: ArrayView2<'_, f32>) -> Result<Retrieval, RetrievalError> {
    if queries.dim() != documents.dim() {
        return Err(RetrievalError::Shape { left: queries.dim(), right: documents.dim() });
    }
    let n = queries.nrows();
    if n == 0 {
        return Err(RetrievalError::Empty);
    }
    let (mut hits, mut rr) = (0usize, 0.0f64);
    let docs: Vec<ArrayView1<'_, f32>> = documents.outer_iter().collect();
    for (i, q) in queries.outer_iter().enumerate() {
        let scores: Vec<f64> = docs.iter().map(|d| cosine(q, *d)).collect();
        let own = scores[i];
        let rank = 1 + scores.iter().filter(|&&s| s > own).count();
        hits += usize::from(rank == 1);
        rr += 1.0 / rank as f64;
    }
    Ok(Retrieval { pairs: n, recall_at_1: hits as f64 / n as f64, mrr: rr / n as f64 })
}

/// What the measures refuse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RetrievalError {
    /// Nothing to measure.
    #[error("no embeddings to compare")]
    Empty,
    /// Two sets of embeddings of different shapes.
    #[error("embeddings of shape {left:?} and {right:?} cannot be compared row by row")]
    Shape {
        /// The first set's shape.
        left: (usize, usize),
        /// The second set's shape.
        right: (usize, usize),
    },
    /// A NaN or infinite value.
    #[error("non-finite value at index {index}")]
    NonFinite {
        /// Where.
        index: usize,
    },
    /// A line of a pairs file that is not a query, one tab and a document.
    #[error("line {line}: expected a query and a document separated by one tab, found {fields} field(s)")]
    Malformed {
        /// The 1-based line.
        line: usize,
        /// Its non-empty tab-separated fields.
        fields: usize,
    },
}

/// Query / document pairs, as a TSV file holds them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pairs {
    /// The queries.
    pub queries: Vec<String>,
    /// Each query's own document, in the same order.
    pub documents: Vec<String>,
}

impl Pairs {
    /// One pair per non-empty line: a query, exactly one tab, its document (both trimmed;
    /// a trailing `\r` is dropped).
    ///
    /// # Errors
    /// [`RetrievalError::Malformed`] naming the line; [`RetrievalError::Empty`] for no pairs.
    pub fn parse(text: &str) -> Result<Self, RetrievalError> {
        let mut pairs = Pairs::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            match fields.as_slice() {
                [q, d] if !q.trim().is_empty() && !d.trim().is_empty() => {
                    pairs.queries.push(q.trim().to_string());
                    pairs.documents.push(d.trim().to_string());
                }
                _ => return Err(RetrievalError::Malformed { line: i + 1, fields: fields.iter().filter(|f| !f.trim().is_empty()).count() }),
            }
        }
        if pairs.queries.is_empty() {
            return Err(RetrievalError::Empty);
        }
        Ok(pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn pairs_parse_and_refuse_malformed_lines() {
        let p = Pairs::parse("a query\tits doc\r\n\n  q2 \t d2\n").expect("two pairs");
        assert_eq!(p.queries, ["a query", "q2"]);
        assert_eq!(p.documents, ["its doc", "d2"]);
        assert_eq!(Pairs::parse("q\td\nno tab\n"), Err(RetrievalError::Malformed { line: 2, fields: 1 }));
        assert_eq!(Pairs::parse("q\td\tx\n"), Err(RetrievalError::Malformed { line: 1, fields: 3 }));
        assert_eq!(Pairs::parse("q\t \n"), Err(RetrievalError::Malformed { line: 1, fields: 1 }));
        assert_eq!(Pairs::parse("\n\n"), Err(RetrievalError::Empty));
    }

    #[test]
    fn cosines_of_known_vectors() {
        let a = array![[1.0f32, 0.0], [1.0, 1.0], [0.0, 0.0], [3.0, 4.0]];
        let b = array![[0.0f32, 2.0], [-2.0, -2.0], [0.0, 0.0], [0.0, 0.0]];
        assert_eq!(row_cosines(a.view(), b.view()).expect("same shape"), vec![0.0, -1.0, 1.0, 0.0]);
        assert!((cosine(array![3.0f32, 4.0].view(), array![4.0f32, 3.0].view()) - 24.0 / 25.0).abs() < 1e-15);
        assert!(matches!(row_cosines(a.view(), b.t()), Err(RetrievalError::Shape { .. })));
    }

    #[test]
    fn the_fifth_percentile_interpolates_as_numpy_does() {
        // numpy.percentile(range(1, 22), 5) = 2.0; numpy.percentile([0, 10], 5) = 0.5.
        let one_to_21: Vec<f64> = (1..=21).map(f64::from).collect();
        let s = CosineSummary::of(&one_to_21).expect("values");
        assert_eq!((s.count, s.p5, s.min, s.mean), (21, 2.0, 1.0, 11.0));
        assert_eq!(CosineSummary::of(&[10.0, 0.0]).expect("values").p5, 0.5);
        assert_eq!(CosineSummary::of(&[0.25]).expect("values").p5, 0.25);
        assert_eq!(CosineSummary::of(&[]), Err(RetrievalError::Empty));
        assert_eq!(CosineSummary::of(&[1.0, f64::NAN]), Err(RetrievalError::NonFinite { index: 1 }));
    }

    #[test]
    fn recall_and_mrr_by_hand() {
        // Query 0 finds its document first; query 1's own document ranks second (document 0
        // is closer); query 2 ties with document 1 and counts as first.
        let q = array![[1.0f32, 0.0], [1.0, 0.1], [0.0, 1.0]];
        let d = array![[1.0f32, 0.0], [0.0, 1.0], [0.0, 1.0]];
        let r = retrieval(q.view(), d.view()).expect("pairs");
        assert_eq!(r.pairs, 3);
        assert!((r.recall_at_1 - 2.0 / 3.0).abs() < 1e-15);
        assert!((r.mrr - (1.0 + 0.5 + 1.0) / 3.0).abs() < 1e-15);
        assert_eq!(retrieval(q.slice(ndarray::s![..0, ..]), d.slice(ndarray::s![..0, ..])), Err(RetrievalError::Empty));
        assert!(matches!(retrieval(q.view(), d.slice(ndarray::s![..2, ..])), Err(RetrievalError::Shape { .. })));
    }
}
