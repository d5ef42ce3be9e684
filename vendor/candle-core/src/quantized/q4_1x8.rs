//! tiergate patch: Q4_1 weights held eight rows at a time, for the CPU matmul.
//!
//! Generating a token reads every weight once, so the matmul is as fast as the bytes it reads
//! and the work per byte. The one-row Q4_1 dot product (`avx::vec_dot_q4_1_q8_1`, as ggml's)
//! reads 20 bytes per block but spends as long on a block as the Q8_0 one spends on 34: it
//! expands the nibbles, converts two scales, runs a dependent FMA chain and ends with a
//! horizontal sum, per row. Here the blocks of eight rows are interleaved so that one pass of
//! the same instructions yields the eight rows' dot products in the eight lanes of one
//! register: each 4-byte lane holds four weights of one row, the matching four activations are
//! broadcast, and `maddubs` + `madd` sum them per lane; the eight scales and minimums convert
//! with one `vcvtph2ps` each. No horizontal sums, and an eighth of the scale work per row.
//!
//! The repack is lossless: the same nibbles and f16 scales in the same number of bytes.
//! `dequantize` and `data_bytes` give back the original Q4_1 blocks, so everything outside the
//! matmul (serialization, dequantizing) sees plain Q4_1. Results differ from the one-row
//! kernel only in float summation order (each block's integer dot product is exact here).

use super::k_quants::{BlockQ4_1, BlockQ8_1, GgmlType, QK4_1};
use super::{GgmlDType, QuantizedType};
use crate::{CpuStorage, Result};
use half::f16;
use rayon::prelude::*;
use std::borrow::Cow;

/// Weight rows interleaved in one block.
pub const ROWS: usize = 8;

/// Block `b` (32 weights) of eight consecutive weight rows. Weight `e` of row `r` is in byte
/// `32 * (e / 8) + 4 * r + e % 4` of `qs`, in its low nibble when `e % 8 < 4`, else its high
/// nibble: so the low nibbles of each 32-byte quarter are four weights of every row, lane by
/// lane, and the high nibbles the next four.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ4_1x8 {
    d: [f16; ROWS],
    m: [f16; ROWS],
    qs: [u8; QK4_1 * ROWS / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1x8>() == ROWS * std::mem::size_of::<BlockQ4_1>());

fn q4_1_weight(block: &BlockQ4_1, e: usize) -> u8 {
    if e < QK4_1 / 2 {
        block.qs[e] & 0x0F
    } else {
        block.qs[e - QK4_1 / 2] >> 4
    }
}

fn x8_position(row: usize, e: usize) -> (usize, u32) {
    (32 * (e / 8) + 4 * row + e % 4, if e % 8 < 4 { 0 } else { 4 })
}

/// A Q4_1 weight matrix of `rows` x `k_blocks * 32`, `rows` a multiple of [`ROWS`].
pub struct Q4_1x8Matrix {
    blocks: Vec<BlockQ4_1x8>,
    rows: usize,
    k_blocks: usize,
}

impl Q4_1x8Matrix {
    /// Whether a tensor of these dims (candle order: rows, then columns) can be held this way.
    pub fn fits(dims: &[usize]) -> bool {
        matches!(dims, [rows, cols] if rows % ROWS == 0 && cols % QK4_1 == 0 && *rows > 0)
    }

    /// `row_blocks` holds `rows` rows of `k_blocks` Q4_1 blocks each, row after row.
    pub fn from_rows(row_blocks: &[BlockQ4_1], rows: usize, k_blocks: usize) -> Self {
        assert!(rows % ROWS == 0 && row_blocks.len() == rows * k_blocks, "Q4_1x8: bad shape");
        let mut blocks = Vec::with_capacity(rows / ROWS * k_blocks);
        for group in 0..rows / ROWS {
            for b in 0..k_blocks {
                let mut packed = BlockQ4_1x8 { d: [f16::ZERO; ROWS], m: [f16::ZERO; ROWS], qs: [0; QK4_1 * ROWS / 2] };
                for r in 0..ROWS {
                    let block = &row_blocks[(group * ROWS + r) * k_blocks + b];
                    packed.d[r] = block.d;
                    packed.m[r] = block.m;
                    for e in 0..QK4_1 {
                        let (byte, shift) = x8_position(r, e);
                        packed.qs[byte] |= q4_1_weight(block, e) << shift;
                    }
                }
                blocks.push(packed);
            }
        }
        Self { blocks, rows, k_blocks }
    }

    /// The original Q4_1 blocks, row after row.
    pub fn to_rows(&self) -> Vec<BlockQ4_1> {
        let mut rows = vec![BlockQ4_1::zeros(); self.rows * self.k_blocks];
        for (idx, packed) in self.blocks.iter().enumerate() {
            let (group, b) = (idx / self.k_blocks, idx % self.k_blocks);
            for r in 0..ROWS {
                let block = &mut rows[(group * ROWS + r) * self.k_blocks + b];
                block.d = packed.d[r];
                block.m = packed.m[r];
                for e in 0..QK4_1 {
                    let (byte, shift) = x8_position(r, e);
                    let weight = (packed.qs[byte] >> shift) & 0x0F;
                    if e < QK4_1 / 2 {
                        block.qs[e] |= weight;
                    } else {
                        block.qs[e - QK4_1 / 2] |= weight << 4;
                    }
                }
            }
        }
        rows
    }

    /// The portable kernel (what builds without AVX2 run) on one group of eight rows, for tests.
    pub fn dot_group_portable(&self, group: usize, activations: &[BlockQ8_1]) -> [f32; ROWS] {
        dot_x8_portable(self.group(group), activations)
    }

    fn group(&self, group: usize) -> &[BlockQ4_1x8] {
        &self.blocks[group * self.k_blocks..(group + 1) * self.k_blocks]
    }
}

/// The dot products of eight weight rows with one activation row.
#[inline(always)]
#[allow(unreachable_code)]
fn dot_x8(xs: &[BlockQ4_1x8], ys: &[BlockQ8_1]) -> [f32; ROWS] {
    #[cfg(target_feature = "avx2")]
    return unsafe { dot_x8_avx2(xs, ys) };
    dot_x8_portable(xs, ys)
}

#[cfg(target_feature = "avx2")]
#[inline(always)]
unsafe fn dot_x8_avx2(xs: &[BlockQ4_1x8], ys: &[BlockQ8_1]) -> [f32; ROWS] {
    #[cfg(target_arch = "x86")]
    use core::arch::x86::*;
    #[cfg(target_arch = "x86_64")]
    use core::arch::x86_64::*;

    let low_nibbles = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut acc_min = _mm256_setzero_ps();
    for (x, y) in xs.iter().zip(ys.iter()) {
        let activations = y.qs.as_ptr() as *const i32;
        // Per 16-bit lane: two products of a nibble (<= 15) and an activation (|y| <= 127),
        // eight such sums added: |sum| <= 8 * 2 * 15 * 127 = 30480, no i16 overflow.
        let mut sums = _mm256_setzero_si256();
        for quarter in 0..4 {
            let packed = _mm256_loadu_si256(x.qs.as_ptr().add(32 * quarter) as *const __m256i);
            let first = _mm256_and_si256(packed, low_nibbles);
            let second = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_nibbles);
            let y_first = _mm256_set1_epi32(activations.add(2 * quarter).read_unaligned());
            let y_second = _mm256_set1_epi32(activations.add(2 * quarter + 1).read_unaligned());
            sums = _mm256_add_epi16(sums, _mm256_maddubs_epi16(first, y_first));
            sums = _mm256_add_epi16(sums, _mm256_maddubs_epi16(second, y_second));
        }
        let dots = _mm256_cvtepi32_ps(_mm256_madd_epi16(sums, ones));
        let scales = _mm256_cvtph_ps(_mm_loadu_si128(x.d.as_ptr() as *const __m128i));
        let mins = _mm256_cvtph_ps(_mm_loadu_si128(x.m.as_ptr() as *const __m128i));
        let y_scale = _mm256_set1_ps(y.d.to_f32());
        acc = _mm256_fmadd_ps(_mm256_mul_ps(scales, y_scale), dots, acc);
        acc_min = _mm256_fmadd_ps(mins, _mm256_set1_ps(y.s.to_f32()), acc_min);
    }
    let mut out = [0f32; ROWS];
    _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(acc, acc_min));
    out
}

fn dot_x8_portable(xs: &[BlockQ4_1x8], ys: &[BlockQ8_1]) -> [f32; ROWS] {
    let mut out = [0f32; ROWS];
    for (x, y) in xs.iter().zip(ys.iter()) {
        for (r, out) in out.iter_mut().enumerate() {
            let mut dot = 0i32;
            for e in 0..QK4_1 {
                let (byte, shift) = x8_position(r, e);
                dot += ((x.qs[byte] >> shift) & 0x0F) as i32 * y.qs[e] as i32;
            }
            *out += x.d[r].to_f32() * y.d.to_f32() * dot as f32 + x.m[r].to_f32() * y.s.to_f32();
        }
    }
    out
}

/// `CANDLE_Q4_1_REPACK=0` keeps Q4_1 weights in their file layout (one-row kernel), so that a
/// benchmark can compare both in one binary.
pub static REPACK_Q4_1: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var("CANDLE_Q4_1_REPACK").map_or(true, |v| v != "0"));

impl QuantizedType for Q4_1x8Matrix {
    fn dtype(&self) -> GgmlDType {
        GgmlDType::Q4_1
    }

    fn matmul_t(&self, (m, k, n): (usize, usize, usize), lhs: &[f32], dst: &mut [f32]) -> Result<()> {
        if n != self.rows || k != self.k_blocks * QK4_1 || lhs.len() != m * k || dst.len() != m * n {
            crate::bail!("Q4_1x8 matmul: ({m}, {k}, {n}) does not fit weights {}x{}", self.rows, self.k_blocks * QK4_1)
        }
        let k_blocks = self.k_blocks;
        let mut lhs_q = vec![BlockQ8_1::zeros(); m * k_blocks];
        for (row, blocks) in lhs.chunks_exact(k).zip(lhs_q.chunks_exact_mut(k_blocks)) {
            BlockQ8_1::from_float(row, blocks);
        }
        // As `k_quants::matmul`: 32 weight rows per task for one input row, 16 for several,
        // each chunk dotted with every input row while it is in L1; the next group of rows is
        // prefetched during generation, which reads each weight straight from memory.
        let groups_per_task = if m == 1 { 4 } else { 2 };
        let n_groups = n / ROWS;
        let prefetch_next = m == 1 && *super::k_quants::PREFETCH_ROWS > 0;
        let dst_base = super::k_quants::SharedDst(dst.as_mut_ptr());
        let run_task = |task_idx: usize| {
            let first_group = task_idx * groups_per_task;
            let end_group = (first_group + groups_per_task).min(n_groups);
            for (row, lhs_row) in lhs_q.chunks_exact(k_blocks).enumerate() {
                for group in first_group..end_group {
                    if prefetch_next && group + 1 < n_groups {
                        super::k_quants::prefetch(self.group(group + 1));
                    }
                    for (offset, value) in dot_x8(self.group(group), lhs_row).into_iter().enumerate() {
                        // SAFETY: tasks own disjoint row ranges and `dst` holds m * n values.
                        unsafe { dst_base.write(row * n + group * ROWS + offset, value) };
                    }
                }
            }
        };
        let n_tasks = n_groups.div_ceil(groups_per_task);
        if !super::spin_pool::POOL.try_run(n_tasks, &run_task) {
            (0..n_tasks).into_par_iter().for_each(run_task);
        }
        Ok(())
    }

    fn matmul_t_f16(&self, mkn: (usize, usize, usize), lhs: &[f16], dst: &mut [f16]) -> Result<()> {
        let lhs: Vec<f32> = lhs.iter().map(|x| x.to_f32()).collect();
        let mut dst_f32 = vec![0f32; dst.len()];
        self.matmul_t(mkn, &lhs, &mut dst_f32)?;
        for (d, v) in dst.iter_mut().zip(dst_f32) {
            *d = f16::from_f32(v);
        }
        Ok(())
    }

    fn dequantize(&self, elem_count: usize) -> Result<CpuStorage> {
        let mut ys = vec![0f32; elem_count];
        BlockQ4_1::to_float(&self.to_rows(), &mut ys);
        Ok(CpuStorage::F32(ys))
    }

    fn storage_size_in_bytes(&self) -> usize {
        std::mem::size_of_val(self.blocks.as_slice())
    }

    fn as_ptr(&self) -> *const u8 {
        self.blocks.as_ptr() as *const u8
    }

    fn data_bytes(&self) -> Cow<'_, [u8]> {
        let rows = self.to_rows();
        let bytes = unsafe { std::slice::from_raw_parts(rows.as_ptr() as *const u8, std::mem::size_of_val(rows.as_slice())) };
        Cow::Owned(bytes.to_vec())
    }

    fn block_size(&self) -> usize {
        QK4_1
    }

    fn from_float(&mut self, xs: &[f32]) {
        let mut rows = vec![BlockQ4_1::zeros(); self.rows * self.k_blocks];
        BlockQ4_1::from_float(xs, &mut rows);
        *self = Self::from_rows(&rows, self.rows, self.k_blocks);
    }

    fn from_float_imatrix(&mut self, xs: &[f32], imatrix_weights: &[f32], n_per_row: usize) {
        let mut rows = vec![BlockQ4_1::zeros(); self.rows * self.k_blocks];
        BlockQ4_1::from_float_imatrix(xs, &mut rows, imatrix_weights, n_per_row);
        *self = Self::from_rows(&rows, self.rows, self.k_blocks);
    }

    fn size(&self) -> usize {
        self.storage_size_in_bytes()
    }
}
