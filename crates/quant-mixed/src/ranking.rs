//! Q-BERT's ranking: more bits to the layers of larger Ω.

use crate::error::{MixedError, Result};

/// Layer indices by descending sensitivity (ties keep the earlier layer first).
///
/// # Errors
/// [`MixedError::Empty`], [`MixedError::NonFinite`].
pub fn qbert_order(omegas: &[f64]) -> Result<Vec<usize>> {
    if omegas.is_empty() {
        return Err(MixedError::Empty { what: "layers" });
    }
    if let Some(index) = omegas.iter().position(|v| !v.is_finite()) {
        return Err(MixedError::NonFinite { what: "omega", index });
    }
    let mut order: Vec<usize> = (0..omegas.len()).collect();
    order.sort_by(|&a, &b| omegas[b].total_cmp(&omegas[a]).then(a.cmp(&b)));
    Ok(order)
}

/// Q-BERT's mixed precision: the `round(share · layers)` layers of largest Ω get
/// `high_bits`, the rest `low_bits` (the paper's 2/3-bit and 2/4-bit settings are
/// `(2, 3)` and `(2, 4)`). Returns a width per layer, in layer order.
///
/// # Errors
/// As [`qbert_order`], plus [`MixedError::InvalidValue`] for a share outside `[0, 1]`.
pub fn qbert_ranking(omegas: &[f64], share: f64, low_bits: u8, high_bits: u8) -> Result<Vec<u8>> {
    if !(0.0..=1.0).contains(&share) {
        return Err(MixedError::InvalidValue { what: "share", value: share });
    }
    let order = qbert_order(omegas)?;
    let high = (share * omegas.len() as f64).round() as usize;
    let mut bits = vec![low_bits; omegas.len()];
    for &i in &order[..high] {
        bits[i] = high_bits;
    }
    Ok(bits)
}
