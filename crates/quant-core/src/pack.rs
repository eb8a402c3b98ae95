//! Dense bit-packing of codes of any width from 1 to 8 bits.
//!
//! Code `i` occupies bits `i·b .. (i+1)·b` of a little-endian bit stream: bit `j` of the stream
//! is bit `j mod 8` of byte `j / 8`. A 3-bit code takes 3 bits; `n` codes take `⌈n·b/8⌉` bytes.

use crate::error::{QuantError, Result};

/// Codes of one width, densely bit-packed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PackedCodes {
    bits: u8,
    len: usize,
    bytes: Vec<u8>,
}

/// Bytes needed for `len` codes of `bits` bits: `⌈len·bits/8⌉`.
///
/// Saturates at `usize::MAX` instead of overflowing (no allocation of that size can succeed).
pub fn packed_len(len: usize, bits: u8) -> usize {
    // len·bits/8 without overflowing: whole bytes from 8-code blocks plus the tail.
    (len / 8).saturating_mul(usize::from(bits)).saturating_add((len % 8 * usize::from(bits)).div_ceil(8))
}

fn check_bits(bits: u8) -> Result<()> {
    if (1..=8).contains(&bits) { Ok(()) } else { Err(QuantError::InvalidBits { bits, min: 1, max: 8 }) }
}

impl PackedCodes {
    /// Packs `codes`, each of which must fit in `bits` bits.
    ///
    /// # Errors
    /// [`QuantError::InvalidBits`] for widths outside `1..=8`;
    /// [`QuantError::CodeOutOfRange`] for a code `>= 2^bits`.
    pub fn pack(codes: &[u8], bits: u8) -> Result<Self> {
        check_bits(bits)?;
        if bits < 8
            && let Some(index) = codes.iter().position(|&c| c >> bits != 0)
        {
            return Err(QuantError::CodeOutOfRange { index, code: codes[index], bits });
        }
        let mut bytes = vec![0; packed_len(codes.len(), bits)];
        pack_into(codes, bits, &mut bytes);
        Ok(Self { bits, len: codes.len(), bytes })
    }

    /// Wraps already-packed bytes (for example read from a file).
    ///
    /// # Errors
    /// [`QuantError::InvalidBits`] for widths outside `1..=8`;
    /// [`QuantError::PackedLength`] when `bytes` is not exactly [`packed_len`]`(len, bits)` long.
    pub fn from_bytes(bytes: Vec<u8>, len: usize, bits: u8) -> Result<Self> {
        check_bits(bits)?;
        let expected = packed_len(len, bits);
        if bytes.len() != expected {
            return Err(QuantError::PackedLength { len, bits, expected, got: bytes.len() });
        }
        Ok(Self { bits, len, bytes })
    }

    pub(crate) fn from_parts_unchecked(bytes: Vec<u8>, len: usize, bits: u8) -> Self {
        debug_assert_eq!(bytes.len(), packed_len(len, bits));
        Self { bits, len, bytes }
    }

    /// The code width.
    pub fn bits(&self) -> u8 {
        self.bits
    }
    /// The number of codes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether there are no codes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The packed bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// The packed bytes, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
    /// Code `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<u8> {
        if i >= self.len {
            return None;
        }
        let b = usize::from(self.bits);
        let bit = i * b;
        let (byte, shift) = (bit / 8, bit % 8);
        let lo = u16::from(self.bytes[byte]);
        let hi = self.bytes.get(byte + 1).map_or(0, |&h| u16::from(h));
        Some((((hi << 8 | lo) >> shift) & ((1u16 << b) - 1)) as u8)
    }
    /// All codes, one per byte.
    pub fn unpack(&self) -> Vec<u8> {
        let mut out = vec![0; self.len];
        unpack_from(&self.bytes, self.bits, &mut out);
        out
    }
}

/// Packs `codes` into `out` (exactly `packed_len(codes.len(), bits)` bytes). Codes must fit.
pub(crate) fn pack_into(codes: &[u8], bits: u8, out: &mut [u8]) {
    match bits {
        1 => pack_width::<1>(codes, out),
        2 => pack_width::<2>(codes, out),
        3 => pack_width::<3>(codes, out),
        4 => pack_width::<4>(codes, out),
        5 => pack_width::<5>(codes, out),
        6 => pack_width::<6>(codes, out),
        7 => pack_width::<7>(codes, out),
        _ => out.copy_from_slice(codes),
    }
}

/// Eight codes of `B` bits as one little-endian `u64` (the low `8·B` bits are used).
#[inline(always)]
fn block<const B: usize>(c: &[u8]) -> u64 {
    c.iter().enumerate().fold(0u64, |acc, (j, &v)| acc | u64::from(v) << (j * B))
}

/// Packing with the width known at compile time: every 8 codes become `B` bytes.
fn pack_width<const B: usize>(codes: &[u8], out: &mut [u8]) {
    let mut blocks = codes.chunks_exact(8);
    for (c, o) in (&mut blocks).zip(out.chunks_exact_mut(B)) {
        o.copy_from_slice(&block::<B>(c).to_le_bytes()[..B]);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        // The tail's bytes follow the full blocks.
        let rest = &mut out[codes.len() / 8 * B..];
        let n = rest.len();
        rest.copy_from_slice(&block::<B>(tail).to_le_bytes()[..n]);
    }
}

/// Unpacks `out.len()` codes from the start of `bytes`.
pub(crate) fn unpack_from(bytes: &[u8], bits: u8, out: &mut [u8]) {
    match bits {
        1 => unpack_sub_byte::<1>(bytes, out),
        2 => unpack_sub_byte::<2>(bytes, out),
        3 => unpack_width::<3>(bytes, out),
        4 => unpack_sub_byte::<4>(bytes, out),
        5 => unpack_width::<5>(bytes, out),
        6 => unpack_width::<6>(bytes, out),
        7 => unpack_width::<7>(bytes, out),
        _ => {
            let n = out.len();
            out.copy_from_slice(&bytes[..n]);
        }
    }
}

/// Widths that divide 8 (1, 2, 4): each byte holds `8/B` whole codes (a loop that vectorises).
fn unpack_sub_byte<const B: usize>(bytes: &[u8], out: &mut [u8]) {
    let per = 8 / B;
    let mask = ((1u16 << B) - 1) as u8;
    let full = out.len() / per;
    let mut outs = out.chunks_exact_mut(per);
    for (o, &byte) in (&mut outs).zip(bytes) {
        for (j, v) in o.iter_mut().enumerate() {
            *v = (byte >> (j * B)) & mask;
        }
    }
    let tail = outs.into_remainder();
    if let (false, Some(&byte)) = (tail.is_empty(), bytes.get(full)) {
        for (j, v) in tail.iter_mut().enumerate() {
            *v = (byte >> (j * B)) & mask;
        }
    }
}

fn unpack_width<const B: usize>(bytes: &[u8], out: &mut [u8]) {
    let mask = (1u64 << B) - 1;
    let total = out.len();
    let mut outs = out.chunks_exact_mut(8);
    for (o, i) in (&mut outs).zip(bytes.chunks_exact(B)) {
        let mut word = [0u8; 8];
        word[..B].copy_from_slice(i);
        let acc = u64::from_le_bytes(word);
        for (j, v) in o.iter_mut().enumerate() {
            *v = ((acc >> (j * B)) & mask) as u8;
        }
    }
    let tail = outs.into_remainder();
    if !tail.is_empty() {
        let start = (total / 8) * B;
        let mut word = [0u8; 8];
        let avail = &bytes[start..packed_len(total, B as u8).min(bytes.len())];
        word[..avail.len()].copy_from_slice(avail);
        let acc = u64::from_le_bytes(word);
        for (j, v) in tail.iter_mut().enumerate() {
            *v = ((acc >> (j * B)) & mask) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_bit_codes_take_three_bits() {
        let codes = [1u8, 2, 3, 4, 5, 6, 7, 0, 5];
        let p = PackedCodes::pack(&codes, 3).unwrap();
        assert_eq!(p.as_bytes().len(), 4); // 27 bits
        // Hand-packed little-endian stream: 001 010 011 100 101 110 111 000 | 101.
        let mut acc = 0u64;
        for (j, &c) in codes.iter().enumerate() {
            acc |= u64::from(c) << (3 * j);
        }
        assert_eq!(p.as_bytes(), &acc.to_le_bytes()[..4]);
        assert_eq!(p.unpack(), codes);
        for (i, &c) in codes.iter().enumerate() {
            assert_eq!(p.get(i), Some(c));
        }
        assert_eq!(p.get(codes.len()), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(packed_len(0, 3), 0);
        assert_eq!(packed_len(1, 1), 1);
        assert_eq!(packed_len(9, 1), 2);
        assert_eq!(packed_len(16, 4), 8);
        assert_eq!(packed_len(usize::MAX, 8), usize::MAX);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert_eq!(PackedCodes::pack(&[0, 4], 2), Err(QuantError::CodeOutOfRange { index: 1, code: 4, bits: 2 }));
        assert!(matches!(PackedCodes::pack(&[0], 9), Err(QuantError::InvalidBits { .. })));
        assert!(matches!(PackedCodes::pack(&[0], 0), Err(QuantError::InvalidBits { .. })));
        assert!(matches!(PackedCodes::from_bytes(vec![0; 3], 9, 3), Err(QuantError::PackedLength { expected: 4, got: 3, .. })));
    }
}
