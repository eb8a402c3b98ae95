//! Work splitting that gives the same results with and without the `rayon` feature.
//!
//! Work is always cut into the same items regardless of thread count; only whether the items
//! run concurrently depends on the feature.

/// Elements per work item: a multiple of 8, so every item starts on a byte boundary of the
/// packed codes for every width.
pub(crate) const BATCH: usize = 1 << 15;

/// Maps `f` over `items`, in parallel with `rayon`, keeping the order.
pub(crate) fn map<I: Send, O: Send>(items: Vec<I>, f: impl Fn(I) -> O + Sync + Send) -> Vec<O> {
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        items.into_par_iter().map(f).collect()
    }
    #[cfg(not(feature = "rayon"))]
    {
        items.into_iter().map(f).collect()
    }
}

/// Splits `buf` into consecutive pieces of the given lengths (which must sum to at most its
/// length).
pub(crate) fn split_lengths<T>(mut buf: &mut [T], lengths: impl IntoIterator<Item = usize>) -> Vec<&mut [T]> {
    let mut out = Vec::new();
    for n in lengths {
        let (head, tail) = core::mem::take(&mut buf).split_at_mut(n);
        out.push(head);
        buf = tail;
    }
    out
}
