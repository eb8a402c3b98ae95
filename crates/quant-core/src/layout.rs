//! How a granularity maps the row-major elements of a tensor to parameter slices.

use core::ops::Range;

use crate::error::{QuantError, Result};
use crate::spec::Granularity;

/// A tensor of `shape` seen as `[outer, n, inner]` around the granularity's axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    outer: usize,
    n: usize,
    inner: usize,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tensor,
    Channel,
    Group { size: usize, groups: usize },
}

impl Layout {
    /// Checks the axis against the shape and builds the layout.
    pub(crate) fn new(shape: &[usize], granularity: Granularity) -> Result<Self> {
        let len: usize = shape.iter().product();
        let split = |axis: usize| -> Result<(usize, usize, usize)> {
            if axis >= shape.len() {
                return Err(QuantError::InvalidAxis { axis, ndim: shape.len() });
            }
            let outer = shape[..axis].iter().product();
            let inner = shape[axis + 1..].iter().product();
            Ok((outer, shape[axis], inner))
        };
        Ok(match granularity {
            Granularity::PerTensor => Layout { outer: 1, n: len, inner: 1, kind: Kind::Tensor },
            Granularity::PerChannel { axis } => {
                let (outer, n, inner) = split(axis)?;
                Layout { outer, n, inner, kind: Kind::Channel }
            }
            Granularity::PerGroup { axis, size } => {
                if size == 0 {
                    return Err(QuantError::InvalidGroupSize { size });
                }
                let (outer, n, inner) = split(axis)?;
                Layout { outer, n, inner, kind: Kind::Group { size, groups: n.div_ceil(size) } }
            }
        })
    }

    /// Number of elements.
    pub(crate) fn len(&self) -> usize {
        self.outer * self.n * self.inner
    }

    /// Number of parameter slices.
    pub(crate) fn num_params(&self) -> usize {
        match self.kind {
            Kind::Tensor => 1,
            Kind::Channel => self.n,
            Kind::Group { groups, .. } => self.outer * groups * self.inner,
        }
    }

    /// When every slice's elements form one contiguous row-major run, the number of runs
    /// (equal to the number of slices, in slice order).
    pub(crate) fn contiguous_runs(&self) -> Option<usize> {
        match self.kind {
            Kind::Tensor => Some(1),
            Kind::Channel if self.outer == 1 => Some(self.n),
            Kind::Group { groups, .. } if self.inner == 1 => Some(self.outer * groups),
            _ => None,
        }
    }

    /// The element range of run `k` (only meaningful when [`Self::contiguous_runs`] is `Some`).
    pub(crate) fn run(&self, k: usize) -> Range<usize> {
        match self.kind {
            Kind::Tensor => 0..self.len(),
            Kind::Channel => k * self.inner..(k + 1) * self.inner,
            Kind::Group { size, groups } => {
                let (o, g) = (k / groups, k % groups);
                let start = o * self.n + g * size;
                start..o * self.n + ((g + 1) * size).min(self.n)
            }
        }
    }

    /// When every slice is one contiguous run and all runs have the same length, that
    /// length: run `k` is then `k·len..(k + 1)·len`.
    pub(crate) fn equal_runs(&self) -> Option<usize> {
        match self.kind {
            Kind::Tensor => Some(self.len()),
            Kind::Channel if self.outer == 1 => Some(self.inner),
            Kind::Group { size, .. } if self.inner == 1 && self.n.is_multiple_of(size) => Some(size),
            _ => None,
        }
    }

    /// The element ranges of runs `k, k + 1, …` (only meaningful when
    /// [`Self::contiguous_runs`] is `Some`): [`Self::run`] for each, stepped without a
    /// division per run.
    pub(crate) fn runs_from(&self, k: usize) -> impl Iterator<Item = Range<usize>> + '_ {
        let total = self.contiguous_runs().unwrap_or(0);
        let groups = match self.kind {
            Kind::Group { groups, .. } => groups,
            _ => 1,
        };
        let (mut o, mut g) = (k / groups, k % groups);
        (k..total).map(move |_| {
            let r = match self.kind {
                Kind::Tensor => 0..self.len(),
                Kind::Channel => o * self.inner..(o + 1) * self.inner,
                Kind::Group { size, .. } => o * self.n + g * size..o * self.n + ((g + 1) * size).min(self.n),
            };
            g += 1;
            if g == groups {
                (o, g) = (o + 1, 0);
            }
            r
        })
    }

    /// The slice that row-major element `flat` belongs to, and where the run of elements
    /// sharing that slice (starting at `flat`) ends, capped at `end`.
    pub(crate) fn segment(&self, flat: usize, end: usize) -> (usize, usize) {
        match self.kind {
            Kind::Tensor => (0, end),
            Kind::Channel => {
                let i = (flat / self.inner) % self.n;
                (i, end.min((flat / self.inner + 1) * self.inner))
            }
            Kind::Group { size, groups } => {
                let r = flat % self.inner;
                let i = (flat / self.inner) % self.n;
                let o = flat / (self.inner * self.n);
                let g = i / size;
                let param = (o * groups + g) * self.inner + r;
                if self.inner == 1 { (param, end.min(o * self.n + ((g + 1) * size).min(self.n))) } else { (param, flat + 1) }
            }
        }
    }

    /// Calls `f(slice, range)` for each maximal run of elements in `range` sharing a slice.
    pub(crate) fn for_each_segment(&self, range: Range<usize>, mut f: impl FnMut(usize, Range<usize>)) {
        let mut flat = range.start;
        while flat < range.end {
            let (param, stop) = self.segment(flat, range.end);
            f(param, flat..stop);
            flat = stop;
        }
    }
}

impl Layout {
    /// Each slice's elements, in row-major order within the slice.
    pub(crate) fn gather<T: Copy>(&self, data: &[T]) -> Vec<Vec<T>> {
        let mut out: Vec<Vec<T>> = vec![Vec::new(); self.num_params()];
        self.for_each_segment(0..data.len(), |p, r| out[p].extend_from_slice(&data[r]));
        out
    }

    /// The inverse of [`Self::gather`]: per-slice values back into row-major order.
    pub(crate) fn scatter<T: Copy + Default>(&self, per_slice: &[Vec<T>]) -> Vec<T> {
        let mut out = vec![T::default(); self.len()];
        let mut cursor = vec![0usize; per_slice.len()];
        self.for_each_segment(0..self.len(), |p, r| {
            let n = r.len();
            out[r].copy_from_slice(&per_slice[p][cursor[p]..cursor[p] + n]);
            cursor[p] += n;
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain definition: slice index from the multi-index.
    fn reference_param(shape: &[usize], g: Granularity, flat: usize) -> usize {
        let mut idx = vec![0; shape.len()];
        let mut rem = flat;
        for d in (0..shape.len()).rev() {
            idx[d] = rem % shape[d];
            rem /= shape[d];
        }
        match g {
            Granularity::PerTensor => 0,
            Granularity::PerChannel { axis } => idx[axis],
            Granularity::PerGroup { axis, size } => {
                // Row-major index over the shape with `axis` replaced by the group count.
                let mut p = 0;
                for d in 0..shape.len() {
                    let (i, n) = if d == axis { (idx[d] / size, shape[d].div_ceil(size)) } else { (idx[d], shape[d]) };
                    p = p * n + i;
                }
                p
            }
        }
    }

    #[test]
    fn segments_match_the_definition() {
        let shapes: [&[usize]; 5] = [&[7], &[3, 5], &[2, 3, 4], &[4, 1, 6], &[1, 9]];
        for shape in shapes {
            let mut grans = vec![Granularity::PerTensor];
            for axis in 0..shape.len() {
                grans.push(Granularity::PerChannel { axis });
                for size in 1..=5 {
                    grans.push(Granularity::PerGroup { axis, size });
                }
            }
            for g in grans {
                let l = Layout::new(shape, g).unwrap();
                let mut seen = vec![usize::MAX; l.len()];
                l.for_each_segment(0..l.len(), |p, r| {
                    for f in r {
                        seen[f] = p;
                    }
                });
                for (f, &p) in seen.iter().enumerate() {
                    assert_eq!(p, reference_param(shape, g, f), "{shape:?} {g:?} {f}");
                    assert!(p < l.num_params());
                }
                if let Some(runs) = l.contiguous_runs() {
                    assert_eq!(runs, l.num_params());
                    for k in 0..runs {
                        for f in l.run(k) {
                            assert_eq!(seen[f], k);
                        }
                        if let Some(len) = l.equal_runs() {
                            assert_eq!(l.run(k), k * len..(k + 1) * len, "{shape:?} {g:?} run {k}");
                        }
                        let stepped: Vec<_> = l.runs_from(k).collect();
                        let direct: Vec<_> = (k..runs).map(|j| l.run(j)).collect();
                        assert_eq!(stepped, direct, "{shape:?} {g:?} from {k}");
                    }
                }
            }
        }
    }

    #[test]
    fn scatter_inverts_gather() {
        let data: Vec<u32> = (0..60).collect();
        for g in [Granularity::PerTensor, Granularity::PerChannel { axis: 1 }, Granularity::PerGroup { axis: 0, size: 2 }] {
            let l = Layout::new(&[3, 4, 5], g).unwrap();
            assert_eq!(l.scatter(&l.gather(&data)), data, "{g:?}");
        }
    }

    #[test]
    fn bad_axis_and_group_size_are_errors() {
        assert_eq!(Layout::new(&[2, 3], Granularity::PerChannel { axis: 2 }), Err(QuantError::InvalidAxis { axis: 2, ndim: 2 }));
        assert_eq!(Layout::new(&[2, 3], Granularity::PerGroup { axis: 0, size: 0 }), Err(QuantError::InvalidGroupSize { size: 0 }));
    }
}
