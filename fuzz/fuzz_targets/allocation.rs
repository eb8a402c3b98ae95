//! Arbitrary bytes -> layers with options (any widths, sizes up to u64::MAX, sensitivities
//! from raw f64 bit patterns), width constraints, ties and budgets; `Problem::new`, `tie`,
//! `solve`, `frontier` and `Frontier::allocation` must never panic, and every allocation
//! they return must respect its budget and its constraints.
//!
//! `cargo fuzz run allocation` (see docs/fuzzing.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quant_mixed::{Budget, LayerOption, LayerSpec, Problem, Resource};

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0u64, |a, _| (a << 8) | u64::from(self.u8()))
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() > 2048 {
        return;
    }
    let mut b = Bytes(data);
    let n = usize::from(b.u8() % 9);
    let mut layers = Vec::new();
    for i in 0..n {
        let m = usize::from(b.u8() % 5);
        let wide = b.u8() % 4 == 0;
        let options: Vec<LayerOption> = (0..m)
            .map(|_| {
                let bits = b.u8() % 10;
                let bytes = if wide { b.u64() } else { u64::from(b.u8()) };
                let bops = u64::from(b.u8()) * 3;
                let sensitivity = if b.u8() % 8 == 0 { f64::from_bits(b.u64()) } else { f64::from(b.u8()) / 7.0 };
                LayerOption { bits, group_size: None, bytes, bops, sensitivity }
            })
            .collect();
        let mut spec = LayerSpec::new(format!("l{i}"), u64::from(b.u8()), options);
        match b.u8() % 4 {
            0 => spec = spec.fixed(b.u8() % 10),
            1 => spec = spec.min(b.u8() % 10),
            2 => spec = spec.max(b.u8() % 10),
            _ => {}
        }
        layers.push(spec);
    }
    let Ok(mut p) = Problem::new(layers.clone()) else { return };
    if b.u8() % 2 == 0 && n >= 2 {
        let tie = [usize::from(b.u8()) % (n + 1), usize::from(b.u8()) % (n + 1)];
        if let Ok(t) = p.clone().tie(&tie) {
            p = t;
        }
    }
    let budget = match b.u8() % 3 {
        0 => Budget::Bytes(if b.u8() % 2 == 0 { b.u64() } else { u64::from(b.u8()) * 4 }),
        1 => Budget::Bops(u64::from(b.u8()) * 10),
        _ => Budget::CompressionRatio(f64::from_bits(b.u64())),
    };
    if let Ok(a) = p.solve(budget) {
        match budget {
            Budget::Bytes(cap) => assert!(a.bytes <= cap, "{} > {cap}", a.bytes),
            Budget::Bops(cap) => assert!(a.bops <= cap, "{} > {cap}", a.bops),
            Budget::CompressionRatio(_) => {}
        }
        for (l, spec) in a.layers.iter().zip(&layers) {
            assert!(spec.fixed_bits.is_none_or(|f| f == l.bits) && spec.min_bits.is_none_or(|m| l.bits >= m) && spec.max_bits.is_none_or(|m| l.bits <= m));
        }
    }
    if let Ok(f) = p.frontier(Resource::Bytes) {
        let pts = f.points();
        for w in pts.windows(2) {
            assert!(w[0].0 < w[1].0 && w[0].1 > w[1].1);
        }
        if !f.is_empty() {
            let i = usize::from(b.u8()) % f.len();
            if let Ok(a) = f.allocation(i) {
                // Sums associate differently in the frontier pass and the reconstruction; with
                // sensitivities that absorb one another in rounding, an equally good cheaper
                // assignment may come back.
                assert!(a.bytes <= pts[i].0, "{} > {}", a.bytes, pts[i].0);
                assert!(a.sensitivity <= pts[i].1 * (1.0 + 1e-9) || !pts[i].1.is_finite(), "{} > {}", a.sensitivity, pts[i].1);
            }
        }
    }
});
