//! Checks of tiergate's patch to candle-core's CPU quantized matmul (vendor/candle-core,
//! TIERGATE.md there): the prompt path (several input rows, four weight rows at a time, on the
//! spin pool) must give exactly what one-row products give, and the AVX2 Q4_1 and Q5_0 kernels
//! must agree with candle's scalar reference; Q4_1 weights held eight rows interleaved must give back the
//! file's bytes and values and multiply like the one-row kernel.

use candle_core::Device;
use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::k_quants::{BlockQ4_1, BlockQ5_0, BlockQ8_0, GgmlType, matmul};
use candle_core::quantized::q4_1x8::Q4_1x8Matrix;
use candle_core::quantized::{GgmlDType, QuantizedType};

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

/// A kernel (AVX2 in this build) against candle's scalar reference on the same blocks.
fn assert_simd_dot_matches_scalar_reference<T: GgmlType>(k: usize) {
    for seed in 0..8 {
        let weights = quantize::<T>(&values(k, 10 + seed), k);
        let activations = quantize::<T::VecDotType>(&values(k, 20 + seed), k);
        let simd = T::vec_dot(k, &weights, &activations);
        let scalar = T::vec_dot_unopt(k, &weights, &activations);
        // Only the summation order differs.
        assert!((simd - scalar).abs() <= 1e-4 * scalar.abs().max(1.0), "{:?} seed {seed}: {simd} vs {scalar}", T::DTYPE);
    }
}

#[test]
fn q4_1_simd_dot_matches_scalar_reference() {
    assert_simd_dot_matches_scalar_reference::<BlockQ4_1>(1536);
}

#[test]
fn q5_0_simd_dot_matches_scalar_reference() {
    // 640: Gemma 3 270M's hidden size, which is why its GGUF holds Q5_0 where K-quants don't fit.
    assert_simd_dot_matches_scalar_reference::<BlockQ5_0>(640);
}

#[test]
fn q5_0_prompt_rows_equal_one_row_products() {
    assert_batched_equals_row_by_row::<BlockQ5_0>();
}

/// The raw bytes of Q4_1 blocks, as a GGUF file holds them.
fn file_bytes(blocks: &[BlockQ4_1]) -> Vec<u8> {
    // SAFETY: BlockQ4_1 is repr(C) plain data (two f16 and 16 bytes).
    unsafe { std::slice::from_raw_parts(blocks.as_ptr() as *const u8, std::mem::size_of_val(blocks)) }.to_vec()
}

#[test]
fn interleaved_q4_1_gives_back_the_file_bytes_and_values() {
    let (k, n) = (576, 48);
    let blocks = quantize::<BlockQ4_1>(&values(n * k, 3), k);
    let bytes = file_bytes(&blocks);
    let tensor = qtensor_from_ggml(GgmlDType::Q4_1, &bytes, vec![n, k], &Device::Cpu).unwrap();
    assert_eq!(tensor.dtype(), GgmlDType::Q4_1);
    assert_eq!(tensor.data().unwrap().as_ref(), &bytes[..], "data() must be the file layout");
    let mut expected = vec![0f32; n * k];
    BlockQ4_1::to_float(&blocks, &mut expected);
    let dequantized = tensor.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(dequantized, expected);
}

/// The interleaved matmul against the one-row Q4_1 kernel on the same blocks, for generation
/// (one input row) and a prompt (several); n = 200 leaves a short last task.
#[test]
fn interleaved_q4_1_matmul_matches_the_one_row_kernel() {
    let (k, n) = (576, 200);
    let blocks = quantize::<BlockQ4_1>(&values(n * k, 4), k);
    let interleaved = Q4_1x8Matrix::from_rows(&blocks, n, k / 32);
    for m in [1, 5] {
        let lhs = values(m * k, 5 + m as u64);
        let mut expected = vec![f32::NAN; m * n];
        matmul((m, k, n), &lhs, &blocks, &mut expected).unwrap();
        let mut actual = vec![f32::NAN; m * n];
        interleaved.matmul_t((m, k, n), &lhs, &mut actual).unwrap();
        for (idx, (a, e)) in actual.iter().zip(&expected).enumerate() {
            // Only the float summation order differs.
            assert!((a - e).abs() <= 1e-4 * e.abs().max(1.0), "m {m}, output {idx}: {a} vs {e}");
        }
    }
}

/// The portable kernel (non-AVX2 builds) against the one-row kernel.
#[test]
fn interleaved_q4_1_portable_kernel_matches_the_one_row_kernel() {
    type Activations = <BlockQ4_1 as GgmlType>::VecDotType;
    let (k, n) = (1536, 8);
    let blocks = quantize::<BlockQ4_1>(&values(n * k, 6), k);
    let interleaved = Q4_1x8Matrix::from_rows(&blocks, n, k / 32);
    let activations = quantize::<Activations>(&values(k, 7), k);
    let portable = interleaved.dot_group_portable(0, &activations);
    for (row, value) in portable.iter().enumerate() {
        let expected = BlockQ4_1::vec_dot(k, &blocks[row * k / 32..(row + 1) * k / 32], &activations);
        assert!((value - expected).abs() <= 1e-4 * expected.abs().max(1.0), "row {row}: {value} vs {expected}");
    }
}

/// Matrices whose rows do not come in eights stay in the file layout and still multiply.
#[test]
fn q4_1_with_rows_not_in_eights_loads_in_the_file_layout() {
    let (k, n) = (64, 203);
    let blocks = quantize::<BlockQ4_1>(&values(n * k, 8), k);
    let tensor = qtensor_from_ggml(GgmlDType::Q4_1, &file_bytes(&blocks), vec![n, k], &Device::Cpu).unwrap();
    assert_eq!(tensor.data().unwrap().as_ref(), &file_bytes(&blocks)[..]);
    assert!(!Q4_1x8Matrix::fits(&[n, k]));
    assert!(Q4_1x8Matrix::fits(&[200, k]));
}
