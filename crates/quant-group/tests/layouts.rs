//! Group layouts: hand-written group maps, equivalences with the per-tensor, per-channel and
//! per-block quantizers, the per-group error bound and exact storage.

use ndarray::{Array2, Axis};
use proptest::prelude::*;
use quant_core::{Granularity, Scheme, UniformSpec, quantize};
use quant_group::{GroupError, GroupLayout, Method, QkvOrder, quantize_groups, quantize_output_groups};

fn uniform(bits: u8) -> Method {
    Method::Uniform(UniformSpec::builder().bits(bits).scheme(Scheme::AsymmetricGrid).check().expect("valid"))
}

#[test]
fn fused_qkv_and_tile_maps_by_hand() -> Result<(), GroupError> {
    // 2 heads of 2 rows: 12 rows. Groups are numbered (projection, head).
    let blocked = GroupLayout::FusedQkv { heads: 2, head_dim: 2, order: QkvOrder::Blocked, splits: 1 };
    let (ids, n) = blocked.group_ids(12, 1)?;
    assert_eq!((ids, n), (vec![0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5], 6));
    // Interleaved rows: h0 Q, h0 K, h0 V, h1 Q, h1 K, h1 V.
    let inter = GroupLayout::FusedQkv { heads: 2, head_dim: 2, order: QkvOrder::Interleaved, splits: 1 };
    assert_eq!(inter.group_ids(12, 1)?.0, vec![0, 0, 2, 2, 4, 4, 1, 1, 3, 3, 5, 5]);
    // Splitting each head in two: one group per row here.
    let split = GroupLayout::FusedQkv { heads: 2, head_dim: 2, order: QkvOrder::Blocked, splits: 2 };
    assert_eq!(split.group_ids(12, 1)?, ((0..12).collect(), 12));
    // 5 × 7 in 2 × 3 tiles: 3 × 3 tiles, ragged at the bottom and right edges.
    let (ids, n) = GroupLayout::Tiles { rows: 2, cols: 3 }.group_ids(5, 7)?;
    assert_eq!(n, 9);
    assert_eq!(&ids[..7], &[0, 0, 0, 1, 1, 1, 2]);
    assert_eq!(ids[4 * 7 + 6], 8);
    assert_eq!(ids[2 * 7], 3);
    // Input blocks of 3 over rows of 7: 3 blocks per row, the last of 1 element.
    let (ids, n) = GroupLayout::InputBlocks { size: 3 }.group_ids(2, 7)?;
    assert_eq!((ids, n), (vec![0, 0, 0, 1, 1, 1, 2, 3, 3, 3, 4, 4, 4, 5], 6));
    Ok(())
}

#[test]
fn layouts_that_do_not_fit_are_refused() {
    let bad = [
        (GroupLayout::OutputRows { groups: 3 }, (8, 4)),
        (GroupLayout::OutputRows { groups: 0 }, (8, 4)),
        (GroupLayout::InputBlocks { size: 0 }, (8, 4)),
        (GroupLayout::Tiles { rows: 0, cols: 2 }, (8, 4)),
        (GroupLayout::FusedQkv { heads: 2, head_dim: 4, order: QkvOrder::Blocked, splits: 1 }, (12, 4)),
        (GroupLayout::FusedQkv { heads: 2, head_dim: 4, order: QkvOrder::Blocked, splits: 3 }, (24, 4)),
        (GroupLayout::Tiles { rows: 2, cols: 2 }, (0, 4)),
    ];
    for (layout, (o, i)) in bad {
        let w = Array2::<f32>::zeros((o, i));
        assert!(matches!(quantize_groups(w.view(), &layout, &uniform(4)), Err(GroupError::InvalidLayout { .. })), "{layout:?}");
    }
}

fn matrix() -> impl Strategy<Value = Array2<f64>> {
    (1usize..10, 1usize..12).prop_flat_map(|(r, c)| {
        prop::collection::vec(-2.0f64..2.0, r * c).prop_map(move |v| Array2::from_shape_vec((r, c), v).expect("shape"))
    })
}

proptest! {
    #[test]
    fn one_tile_is_per_tensor_and_row_tiles_are_per_channel(w in matrix(), bits in 2u8..=8) {
        let (o, i) = w.dim();
        let spec = UniformSpec::builder().bits(bits).scheme(Scheme::AsymmetricGrid).check().expect("valid");
        let whole = quantize_groups(w.view(), &GroupLayout::Tiles { rows: o, cols: i }, &uniform(bits)).expect("fits");
        let q = quantize(&w, &spec).expect("finite");
        prop_assert_eq!(whole.weights.into_dyn(), q.dequantize());
        prop_assert_eq!(whole.bytes, q.storage_bytes());
        let rows = quantize_groups(w.view(), &GroupLayout::Tiles { rows: 1, cols: i }, &uniform(bits)).expect("fits");
        let per_channel = quantize(&w, &spec.with_granularity(Granularity::PerChannel { axis: 0 }).expect("valid")).expect("finite");
        prop_assert_eq!(rows.weights.into_dyn(), per_channel.dequantize());
    }

    #[test]
    fn input_blocks_equal_core_groups_and_output_rows_equal_q_bert_groups(w in matrix(), bits in 2u8..=8, size in 1usize..6) {
        let (o, _) = w.dim();
        let spec = UniformSpec::builder().bits(bits).scheme(Scheme::AsymmetricGrid).per_group(1, size).check().expect("valid");
        let blocks = quantize_groups(w.view(), &GroupLayout::InputBlocks { size }, &uniform(bits)).expect("fits");
        prop_assert_eq!(blocks.weights.into_dyn(), quantize(&w, &spec).expect("finite").dequantize());
        for groups in (1..=o).filter(|g| o % g == 0) {
            let ours = quantize_groups(w.view(), &GroupLayout::OutputRows { groups }, &uniform(bits)).expect("fits");
            let theirs = quantize_output_groups(w.view(), groups, &uniform(bits)).expect("fits");
            prop_assert_eq!(ours.weights, theirs.weights);
        }
    }

    #[test]
    fn fused_qkv_is_output_rows_in_its_own_row_order(
        heads in 1usize..4, head_dim in 1usize..4, cols in 1usize..6, splits_pick in 0usize..4, seed in 0u64..1000,
    ) {
        let splits = (1..=head_dim).filter(|s| head_dim % s == 0).nth(splits_pick % head_dim).unwrap_or(1);
        let rows = 3 * heads * head_dim;
        let w = Array2::from_shape_fn((rows, cols), |(r, c)| (((r * 31 + c * 17) as u64 * 2654435761 + seed) % 1000) as f64 / 250.0 - 2.0);
        let blocked = GroupLayout::FusedQkv { heads, head_dim, order: QkvOrder::Blocked, splits };
        let a = quantize_groups(w.view(), &blocked, &uniform(3)).expect("fits");
        let b = quantize_groups(w.view(), &GroupLayout::OutputRows { groups: 3 * heads * splits }, &uniform(3)).expect("fits");
        prop_assert_eq!(&a.weights, &b.weights);
        prop_assert_eq!(a.bytes, b.bytes);
        // Interleaved: the same groups once the rows are put in blocked order.
        let to_blocked: Vec<usize> = (0..rows)
            .map(|r| {
                let (proj, head, within) = (r / (heads * head_dim), (r / head_dim) % heads, r % head_dim);
                (head * 3 + proj) * head_dim + within
            })
            .collect();
        let inter_w = Array2::from_shape_fn((rows, cols), |(r, c)| w[[to_blocked.iter().position(|&x| x == r).expect("perm"), c]]);
        let inter = GroupLayout::FusedQkv { heads, head_dim, order: QkvOrder::Interleaved, splits };
        let c = quantize_groups(inter_w.view(), &inter, &uniform(3)).expect("fits");
        let back = c.weights.select(Axis(0), &to_blocked);
        prop_assert_eq!(back, a.weights);
    }

    #[test]
    fn each_group_is_within_half_its_own_step_and_storage_is_exact(w in matrix(), bits in 2u8..=8, tr in 1usize..4, tc in 1usize..5) {
        let (o, i) = w.dim();
        let layout = GroupLayout::Tiles { rows: tr, cols: tc };
        let q = quantize_groups(w.view(), &layout, &uniform(bits)).expect("fits");
        let (ids, n) = layout.group_ids(o, i).expect("fits");
        let levels = f64::from((1u32 << bits) - 1);
        let flat: Vec<f64> = w.iter().copied().collect();
        let back: Vec<f64> = q.weights.iter().copied().collect();
        let mut expect_bytes = 0;
        for g in 0..n {
            let m: Vec<usize> = (0..ids.len()).filter(|&e| ids[e] == g).collect();
            let (lo, hi) = m.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &e| (a.min(flat[e]), b.max(flat[e])));
            let step = ((hi - lo) / levels).max(f64::MIN_POSITIVE);
            for &e in &m {
                prop_assert!((flat[e] - back[e]).abs() <= step / 2.0 * (1.0 + 1e-9) + 1e-12, "group {g}");
            }
            // Codes packed per group, plus an f64 step and offset.
            expect_bytes += (m.len() * usize::from(bits)).div_ceil(8) + 16;
        }
        prop_assert_eq!(q.bytes, expect_bytes);
    }
}
