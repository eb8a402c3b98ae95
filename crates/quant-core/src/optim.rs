//! The one optimiser the family's training loops share (quantization-aware training, codebook
//! fine-tuning, AdaRound).

/// Adam (Kingma and Ba) with their defaults `β₁ = 0.9`, `β₂ = 0.999`, `ε = 1e-8`, moments
/// kept in f64 whatever the parameters' type.
///
/// ```
/// use quant_core::optim::Adam;
/// let mut w = [1.0f64, -2.0];
/// let mut adam = Adam::new(w.len());
/// for _ in 0..200 {
///     let grad = w.map(|x| 2.0 * x); // d/dw of |w|²
///     adam.step(grad, 0.05, |i, d| w[i] -= d);
/// }
/// assert!(w.iter().all(|x| x.abs() < 0.05));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Adam {
    /// First and second moments of `n` parameters, zero; no step taken.
    pub fn new(n: usize) -> Self {
        Self { m: vec![0.0; n], v: vec![0.0; n], t: 0 }
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.m.len()
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.m.is_empty()
    }

    /// Steps taken.
    pub fn steps(&self) -> i32 {
        self.t
    }

    /// One step on gradient `grad` (one value per parameter, in order; extra values are
    /// ignored, missing ones leave their parameters' moments alone): calls `apply(i, d)` with
    /// the update `d = lr · m̂ / (√v̂ + ε)` that parameter `i` should have subtracted.
    pub fn step(&mut self, grad: impl IntoIterator<Item = f64>, lr: f64, mut apply: impl FnMut(usize, f64)) {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        self.t = self.t.saturating_add(1);
        let (c1, c2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
        for (i, ((m, v), g)) in self.m.iter_mut().zip(self.v.iter_mut()).zip(grad).enumerate() {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            apply(i, lr * (*m / c1) / ((*v / c2).sqrt() + eps));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first step of Adam moves every parameter by `lr · sign(g)` (up to ε), whatever the
    /// gradient's size: m̂ = g and v̂ = g².
    #[test]
    fn the_first_step_is_lr_times_the_sign() {
        let mut adam = Adam::new(3);
        let mut d = [0.0; 3];
        adam.step([4.0, -0.001, 0.0], 0.1, |i, x| d[i] = x);
        assert!((d[0] - 0.1).abs() < 1e-9 && (d[1] + 0.1).abs() < 1e-5 && d[2] == 0.0, "{d:?}");
        assert_eq!(adam.steps(), 1);
    }
}
