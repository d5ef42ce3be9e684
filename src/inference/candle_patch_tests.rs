//! Checks of tiergate's patch to candle-core's CPU quantized matmul (vendor/candle-core,
//! TIERGATE.md there): the prompt path (several input rows, four weight rows at a time, on the
//! spin pool) must give exactly what one-row products give, and the AVX2 Q4_1 kernel must agree
//! with candle's scalar reference.

use candle_core::quantized::k_quants::{BlockQ4_1, BlockQ8_0, GgmlType, matmul};

/// Deterministic values in [-1, 1) without a random-number dependency (also used by
/// `mistralrs_patch_tests`).
pub(super) fn values(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..count)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn quantize<T: GgmlType>(weights: &[f32], k: usize) -> Vec<T> {
    let mut blocks = vec![T::zeros(); weights.len() / T::BLCK_SIZE];
    for (row, out) in weights.chunks(k).zip(blocks.chunks_mut(k / T::BLCK_SIZE)) {
        T::from_float(row, out);
    }
    blocks
}

/// Batched result against the same matmul run one input row at a time (the generation path).
fn assert_batched_equals_row_by_row<T: GgmlType>() {
    // n = 203 is not a multiple of the 4-row kernel or of the 16-row task, so every remainder
    // path runs; k = 576 is the packaged model's hidden size.
    let (m, k, n) = (7, 576, 203);
    let weights = quantize::<T>(&values(n * k, 1), k);
    let lhs = values(m * k, 2);
    let mut batched = vec![f32::NAN; m * n];
    matmul((m, k, n), &lhs, &weights, &mut batched).unwrap();
    for row in 0..m {
        let mut single = vec![f32::NAN; n];
        matmul((1, k, n), &lhs[row * k..(row + 1) * k], &weights, &mut single).unwrap();
        assert_eq!(&batched[row * n..(row + 1) * n], &single[..], "{:?} row {row}", T::DTYPE);
    }
}

#[test]
fn q8_0_prompt_rows_equal_one_row_products() {
    assert_batched_equals_row_by_row::<BlockQ8_0>();
}

#[test]
fn q4_1_prompt_rows_equal_one_row_products() {
    assert_batched_equals_row_by_row::<BlockQ4_1>();
}

#[test]
fn q4_1_simd_dot_matches_scalar_reference() {
    type Activations = <BlockQ4_1 as GgmlType>::VecDotType;
    let k = 1536;
    for seed in 0..8 {
        let weights = quantize::<BlockQ4_1>(&values(k, 10 + seed), k);
        let activations = quantize::<Activations>(&values(k, 20 + seed), k);
        let simd = BlockQ4_1::vec_dot(k, &weights, &activations);
        let scalar = BlockQ4_1::vec_dot_unopt(k, &weights, &activations);
        // Only the summation order differs.
        assert!((simd - scalar).abs() <= 1e-4 * scalar.abs().max(1.0), "seed {seed}: {simd} vs {scalar}");
    }
}
