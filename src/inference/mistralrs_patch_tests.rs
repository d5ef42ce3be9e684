//! Checks of tiergate's patches to mistral.rs (vendor/mistralrs-core, TIERGATE.md there):
//! - CPU decode attention: with several sequences decoded as one batch, each sequence must get
//!   the attention of its own keys and values, exactly as when it is decoded alone;
//! - the sampler: the logprobs it reports are natural-log probabilities under the model,
//!   ln softmax(logits), greedy or sampled (upstream gave log10 of the raw logit when greedy),
//!   and the alternatives are the model's, not what top-k left of them (upstream: ln 0).

use candle_core::{Device, Tensor};
use mistralrs_core::layers::{Sdpa, SdpaParams};

use super::candle_patch_tests::values;

/// The packaged model's attention shape: 9 query heads over 3 key/value heads of 64.
const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;

fn params() -> SdpaParams {
    SdpaParams { n_kv_groups: HEADS / KV_HEADS, softcap: None, softmax_scale: 1.0 / (HEAD_DIM as f32).sqrt(), sliding_window: None, sinks: None }
}

/// softmax(q·kᵀ·scale)·v for one sequence, one query token, written out plainly.
fn reference_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Vec<f32> {
    let q = q.to_vec3::<f32>().unwrap(); // (heads, 1, d) after squeezing the batch
    let k = k.to_vec3::<f32>().unwrap(); // (kv heads, kv len, d)
    let v = v.to_vec3::<f32>().unwrap();
    let mut out = Vec::with_capacity(HEADS * HEAD_DIM);
    for (head, q_head) in q.iter().enumerate() {
        let kv_head = head / (HEADS / KV_HEADS);
        let scores: Vec<f32> = k[kv_head].iter().map(|key| key.iter().zip(&q_head[0]).map(|(a, b)| a * b).sum::<f32>() * scale).collect();
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

/// ln softmax(logits), computed plainly in f64.
fn reference_log_softmax(logits: &[f32]) -> Vec<f64> {
    let log_sum = logits.iter().map(|l| f64::from(*l).exp()).sum::<f64>().ln();
    logits.iter().map(|l| f64::from(*l) - log_sum).collect()
}

fn sampler(temperature: Option<f64>, top_n_logprobs: usize) -> mistralrs_core::Sampler {
    sampler_with_top_k(temperature, top_n_logprobs, -1)
}

fn sampler_with_top_k(temperature: Option<f64>, top_n_logprobs: usize, top_k: i64) -> mistralrs_core::Sampler {
    mistralrs_core::Sampler::new(temperature, top_n_logprobs, None, None, None, None, None, top_k, 1.0, 0.0, Vec::new()).unwrap()
}

fn rng() -> std::sync::Arc<std::sync::Mutex<rand_isaac::Isaac64Rng>> {
    use rand_core::SeedableRng;
    std::sync::Arc::new(std::sync::Mutex::new(rand_isaac::Isaac64Rng::seed_from_u64(7)))
}

/// Logits whose softmax is far from uniform and whose largest logit is well above 1, where the
/// log of the raw logit (upstream's greedy report) is positive and cannot pass for a logprob.
const LOGITS: [f32; 5] = [1.5, 9.25, 7.0, -3.0, 0.0];

#[test]
fn a_greedy_token_reports_its_natural_log_probability_and_its_alternatives_theirs() {
    let expected = reference_log_softmax(&LOGITS);
    let logits = Tensor::new(&LOGITS, &Device::Cpu).unwrap();

    let chosen = sampler(None, 3).sample(logits, &[0], true, rng(), false, false).unwrap();

    assert_eq!(chosen.token, 1);
    assert!((f64::from(chosen.logprob) - expected[1]).abs() < 1e-6, "{} vs {}", chosen.logprob, expected[1]);
    let top: Vec<(u32, f32)> = chosen.top_logprobs.unwrap().iter().map(|t| (t.token, t.logprob)).collect();
    assert_eq!(top.iter().map(|(token, _)| *token).collect::<Vec<_>>(), vec![1, 2, 0]);
    for (token, logprob) in top {
        assert!((f64::from(logprob) - expected[token as usize]).abs() < 1e-6, "token {token}: {logprob}");
    }
}

#[test]
fn a_sampled_token_reports_the_natural_log_of_its_probability_at_that_temperature() {
    let temperature = 2.0f32;
    let expected = reference_log_softmax(&LOGITS.map(|l| l / temperature));
    for round in 0..8 {
        let logits = Tensor::new(&LOGITS, &Device::Cpu).unwrap();
        let random = rng();
        for _ in 0..round {
            use rand_core::RngCore;
            random.lock().unwrap().next_u64();
        }

        let chosen = sampler(Some(f64::from(temperature)), 0).sample(logits, &[0], true, random, false, false).unwrap();

        let expected = expected[chosen.token as usize];
        assert!((f64::from(chosen.logprob) - expected).abs() < 1e-5, "token {}: {} vs {expected}", chosen.token, chosen.logprob);
    }
}

/// What every greedy request becomes in the engine (`SamplingParams::deterministic`, which the
/// engine samples at temperature 1 with `top_k` 1): the chosen token is the most likely, and
/// its alternatives are the model's next most likely tokens with their own probabilities.
#[test]
fn a_greedy_request_reports_the_models_alternatives_not_what_top_k_left() {
    let expected = reference_log_softmax(&LOGITS);

    let chosen = sampler_with_top_k(Some(1.0), 3, 1).sample(Tensor::new(&LOGITS, &Device::Cpu).unwrap(), &[0], true, rng(), false, false).unwrap();

    assert_eq!(chosen.token, 1);
    assert!((f64::from(chosen.logprob) - expected[1]).abs() < 1e-6, "{} vs {}", chosen.logprob, expected[1]);
    let top: Vec<(u32, f32)> = chosen.top_logprobs.unwrap().iter().map(|t| (t.token, t.logprob)).collect();
    assert_eq!(top.iter().map(|(token, _)| *token).collect::<Vec<_>>(), vec![1, 2, 0]);
    for (token, logprob) in top {
        assert!((f64::from(logprob) - expected[token as usize]).abs() < 1e-5, "token {token}: {logprob} vs {}", expected[token as usize]);
    }
}
