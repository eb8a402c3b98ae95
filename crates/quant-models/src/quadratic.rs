//! `f(w) = ½ wᵀ A w − bᵀ w`, whose Hessian is `A` everywhere.

use ndarray::{Array1, Array2, ArrayBase, ArrayView1, ArrayViewMut1, Axis, Data, Ix1, Ix2};

use quant_hessian::{HessianError, Result};

use crate::common::{check_finite, check_len};
use quant_hessian::Real;
use quant_hessian::{Batch, Block, Differentiable, Model};

/// The quadratic `f(w) = ½ wᵀ A w − bᵀ w` with symmetric `A`: gradient `A w − b`, Hessian
/// `A`. It has no data; it reports one sample, and every batch gives the same loss.
#[derive(Debug, Clone)]
pub struct Quadratic<F> {
    a: Array2<F>,
    b: Array1<F>,
    blocks: Vec<Block>,
}

impl<F: Real<Base = F>> Quadratic<F> {
    /// The quadratic with matrix `a` and linear term `b`, as one block named `"w"`.
    ///
    /// # Errors
    /// [`HessianError::ShapeMismatch`] unless `a` is `n × n` and `b` has length `n ≥ 1`
    /// ([`HessianError::Empty`] for `n = 0`), [`HessianError::NotSymmetric`],
    /// [`HessianError::NonFinite`].
    pub fn new(a: &ArrayBase<impl Data<Elem = F>, Ix2>, b: &ArrayBase<impl Data<Elem = F>, Ix1>) -> Result<Self> {
        let n = b.len();
        if a.shape() != [n, n] {
            return Err(HessianError::ShapeMismatch { expected: vec![n, n], got: a.shape().to_vec() });
        }
        if n == 0 {
            return Err(HessianError::Empty);
        }
        check_finite(a.iter())?;
        check_finite(b.iter())?;
        for i in 0..n {
            for j in 0..i {
                if a[[i, j]] != a[[j, i]] {
                    return Err(HessianError::NotSymmetric { row: i, col: j });
                }
            }
        }
        Ok(Self { a: a.to_owned(), b: b.to_owned(), blocks: vec![Block::new("w", 0, n)] })
    }

    /// The same quadratic with the parameters split into consecutive named blocks.
    ///
    /// # Errors
    /// [`HessianError::BlockOutOfRange`] unless the lengths are positive and sum to `n`.
    pub fn with_blocks(mut self, blocks: &[(&str, usize)]) -> Result<Self> {
        let n = self.b.len();
        let mut start = 0;
        let mut out = Vec::with_capacity(blocks.len());
        for (index, &(name, len)) in blocks.iter().enumerate() {
            if len == 0 || start + len > n {
                return Err(HessianError::BlockOutOfRange { index, start, end: start + len, dim: n });
            }
            out.push(Block::new(name, start, len));
            start += len;
        }
        if start != n {
            return Err(HessianError::BlockOutOfRange { index: blocks.len(), start, end: n, dim: n });
        }
        self.blocks = out;
        Ok(self)
    }

    /// The Hessian `A`.
    pub fn hessian(&self) -> &Array2<F> {
        &self.a
    }
}

impl<F> Model for Quadratic<F> {
    fn dim(&self) -> usize {
        self.b.len()
    }
    fn blocks(&self) -> &[Block] {
        &self.blocks
    }
    fn samples(&self) -> usize {
        1
    }
}

impl<F: Real<Base = F>> Differentiable<F> for Quadratic<F> {
    fn loss_grad<T: Real<Base = F>>(&self, w: ArrayView1<'_, T>, batch: Batch<'_>, mut grad: ArrayViewMut1<'_, T>) -> Result<T> {
        let n = self.b.len();
        check_len(n, w.len())?;
        check_len(n, grad.len())?;
        batch.check(1)?;
        let aw = T::matmul_base(self.a.view(), w.insert_axis(Axis(1))).remove_axis(Axis(1));
        let half = T::cast(0.5);
        let mut loss = T::zero();
        for ((g, &awi), (&wi, &bi)) in grad.iter_mut().zip(&aw).zip(w.iter().zip(&self.b)) {
            let bi = T::from_base(bi);
            *g = awi - bi;
            loss += half * wi * awi - bi * wi;
        }
        Ok(loss)
    }
}
