//! Checks of tiergate's patch to mistral.rs's CPU decode attention (vendor/mistralrs-core,
//! TIERGATE.md there): with several sequences decoded as one batch, each sequence must get the
//! attention of its own keys and values, exactly as when it is decoded alone.

use candle_core::{Device, Tensor};
use mistralrs_core::layers::{Sdpa, SdpaParams};

use super::candle_patch_tests::values;

/// The packaged model's attention shape: 9 query heads over 3 key/value heads of 64.
const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;

fn params() -> SdpaParams {
    SdpaParams {
        n_kv_groups: HEADS / KV_HEADS,
        softcap: None,
        softmax_scale: 1.0 / (HEAD_DIM as f32).sqrt(),
        sliding_window: None,
        sinks: None,
    }
}

/// softmax(q·kᵀ·scale)·v for one sequence, one query token, written out plainly.
fn reference_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Vec<f32> {
    let q = q.to_vec3::<f32>().unwrap(); // (heads, 1, d) after squeezing the batch
    let k = k.to_vec3::<f32>().unwrap(); // (kv heads, kv len, d)
    let v = v.to_vec3::<f32>().unwrap();
    let mut out = Vec::with_capacity(HEADS * HEAD_DIM);
    for head in 0..HEADS {
        let kv_head = head / (HEADS / KV_HEADS);
        let scores: Vec<f32> = k[kv_head]
            .iter()
            .map(|key| key.iter().zip(&q[head][0]).map(|(a, b)| a * b).sum::<f32>() * scale)
            .collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f32 = weights.iter().sum();
        for dim in 0..HEAD_DIM {
            out.push(weights.iter().zip(&v[kv_head]).map(|(w, row)| w * row[dim]).sum::<f32>() / total);
        }
    }
    out
}

#[test]
fn a_batched_decode_step_gives_each_sequence_its_own_attention() {
    // 37 cached positions: two full 16-position tiles and a partial one, so the reduction over
    // tiles runs. Keys and values are views into a larger cache, as mistral.rs's KV cache hands
    // them out (capacity 64, 37 filled).
    let (batch, kv_len, capacity) = (3, 37, 64);
    let device = Device::Cpu;
    let q = Tensor::from_vec(values(batch * HEADS * HEAD_DIM, 1), (batch, HEADS, 1, HEAD_DIM), &device).unwrap();
    let cache_shape = (batch, KV_HEADS, capacity, HEAD_DIM);
    let k_cache = Tensor::from_vec(values(batch * KV_HEADS * capacity * HEAD_DIM, 2), cache_shape, &device).unwrap();
    let v_cache = Tensor::from_vec(values(batch * KV_HEADS * capacity * HEAD_DIM, 3), cache_shape, &device).unwrap();
    let k = k_cache.narrow(2, 0, kv_len).unwrap();
    let v = v_cache.narrow(2, 0, kv_len).unwrap();
    let params = params();

    let batched = Sdpa.run_attention(&q, &k, &v, None, None, &params).unwrap();
    assert_eq!(batched.dims(), &[batch, HEADS, 1, HEAD_DIM]);
    for sequence in 0..batch {
        let alone = |t: &Tensor| t.narrow(0, sequence, 1).unwrap();
        let single = Sdpa.run_attention(&alone(&q), &alone(&k), &alone(&v), None, None, &params).unwrap();
        let from_batch = alone(&batched).flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let single = single.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(from_batch, single, "sequence {sequence}: batched attention differs from the sequence alone");

        let squeeze = |t: &Tensor| alone(t).squeeze(0).unwrap().contiguous().unwrap();
        let expected = reference_attention(&squeeze(&q), &squeeze(&k), &squeeze(&v), params.softmax_scale);
        for (index, (got, want)) in single.iter().zip(&expected).enumerate() {
            assert!((got - want).abs() < 1e-5, "sequence {sequence}, element {index}: {got} vs reference {want}");
        }
    }
}
