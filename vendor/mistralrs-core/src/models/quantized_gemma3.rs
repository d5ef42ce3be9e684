//! tiergate patch: Gemma 3 (text) from a GGUF file, as llama.cpp runs it (see TIERGATE.md).
//!
//! Per layer: RMS norm → attention (q/k RMS norms, NeoX rope) → RMS norm → residual, then
//! RMS norm → GeGLU (gelu-tanh) → RMS norm → residual. Five sliding-window layers (window from
//! the file, rope base 10,000) precede each global layer (rope base from the file). Embeddings
//! are scaled by sqrt(hidden size); the output projection is the embedding matrix (tied). The
//! norm weights in a llama.cpp GGUF already hold Gemma's `1 + weight`.

#![allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::{QStorage, QTensor};
use candle_core::{DType, Device, Result, Tensor};
use mistralrs_quant::{GgufMatMul, QuantMethod, QuantMethodConfig};

use crate::attention::SdpaParams;
use crate::device_map::{DeviceMappedMask, DeviceMapper};
use crate::gguf::Content;
use crate::layers::{Activation, CausalMasker, MatMul, QRmsNorm, RotaryEmbedding, Sdpa};
use crate::layers_masker::PastKvLenCache;
use crate::paged_attention::AttentionImplementation;
use crate::pipeline::text_models_inputs_processor::PagedAttentionInputMetadata;
use crate::pipeline::{extract_logits, EitherCache, KvCache, NormalCache};
use crate::utils::gguf_metadata::ContentMetadata;
use crate::utils::model_config as ModelConfig;
use crate::utils::progress::{new_multi_progress, NiceProgressBar};

/// The dtype of the attention inputs and of the KV cache. llama.cpp keeps keys and values in
/// f16; rounding queries, keys, values and attention weights (and the GeGLU) as llama.cpp does
/// did not bring the two closer (2026-12-02, TIERGATE.md), so attention stays f32.
const ATTENTION_DTYPE: DType = DType::F32;
/// Every sixth layer attends globally; the others within the sliding window.
const SLIDING_WINDOW_PATTERN: usize = 6;
/// The rope base of the sliding-window layers: fixed by the architecture, not in the file
/// (llama.cpp hard-codes it too).
const LOCAL_ROPE_BASE: f32 = 10_000.0;

fn quantized(weight: QTensor) -> Result<Arc<dyn QuantMethod>> {
    Ok(Arc::new(GgufMatMul::new(QuantMethodConfig::Gguf {
        q_weight: Arc::new(weight),
        b: None,
    })?))
}

/// Embedding rows looked up in the quantized matrix the output projection also uses, instead
/// of a dequantized copy (262,144 x 640 f32 would be 671 MB beside the 178 MB Q8_0 matrix).
struct QuantizedEmbedding {
    weight: Arc<QTensor>,
    hidden_size: usize,
    row_bytes: usize,
    scale: f64,
}

impl QuantizedEmbedding {
    fn new(weight: Arc<QTensor>, scale: f64) -> Result<Self> {
        let (vocab, hidden_size) = weight.shape().dims2()?;
        let dtype = weight.dtype();
        if hidden_size % dtype.block_size() != 0 {
            candle_core::bail!("token_embd rows of {hidden_size} are not whole {dtype:?} blocks");
        }
        let row_bytes = hidden_size / dtype.block_size() * dtype.type_size();
        if weight.storage_size_in_bytes() != vocab * row_bytes {
            candle_core::bail!("token_embd holds an unexpected number of bytes");
        }
        Ok(Self {
            weight,
            hidden_size,
            row_bytes,
            scale,
        })
    }

    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b_sz, seq_len) = ids.dims2()?;
        let ids = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        let data = self.weight.data()?;
        let mut rows = Vec::with_capacity(ids.len() * self.row_bytes);
        for id in &ids {
            let start = *id as usize * self.row_bytes;
            let Some(row) = data.get(start..start + self.row_bytes) else {
                candle_core::bail!("token id {id} is outside the embedding matrix");
            };
            rows.extend_from_slice(row);
        }
        let device = self.weight.device();
        // Borrowed, not owned: candle's `as_t_slice` returns a slice into the `Cow` it is given
        // by value, so an owned buffer would be freed before `from_data` copies it (garbage
        // embeddings whenever another thread reused that memory first).
        let storage = QStorage::from_data(Cow::Borrowed(&rows), &device, self.weight.dtype())?;
        let rows = QTensor::new(storage, (ids.len(), self.hidden_size))?;
        (rows.dequantize(&device)? * self.scale)?.reshape((b_sz, seq_len, self.hidden_size))
    }
}

struct LayerWeights {
    attention_wq: Arc<dyn QuantMethod>,
    attention_wk: Arc<dyn QuantMethod>,
    attention_wv: Arc<dyn QuantMethod>,
    attention_wo: Arc<dyn QuantMethod>,
    attention_norm: QRmsNorm,
    post_attention_norm: QRmsNorm,
    q_norm: QRmsNorm,
    k_norm: QRmsNorm,
    ffn_gate: Arc<dyn QuantMethod>,
    ffn_up: Arc<dyn QuantMethod>,
    ffn_down: Arc<dyn QuantMethod>,
    ffn_norm: QRmsNorm,
    post_ffn_norm: QRmsNorm,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    sliding_window: Option<usize>,
    rotary: Arc<RotaryEmbedding>,
    sdpa_params: SdpaParams,
}

impl LayerWeights {
    fn forward_attn(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        start_offsets: &[usize],
        kv_cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (b_sz, seq_len, _) = x.dims3()?;

        let q = MatMul.qmethod_matmul(x, &*self.attention_wq)?;
        let k = MatMul.qmethod_matmul(x, &*self.attention_wk)?;
        let v = MatMul.qmethod_matmul(x, &*self.attention_wv)?;

        let (q, k, v) = if seq_len != 1 {
            let q = q
                .reshape((b_sz, seq_len, self.n_head, self.head_dim))?
                .transpose(1, 2)?;
            let k = k
                .reshape((b_sz, seq_len, self.n_kv_head, self.head_dim))?
                .transpose(1, 2)?;
            let v = v
                .reshape((b_sz, seq_len, self.n_kv_head, self.head_dim))?
                .transpose(1, 2)?;
            (q, k, v)
        } else {
            let q = q.reshape((b_sz, self.n_head, seq_len, self.head_dim))?;
            let k = k.reshape((b_sz, self.n_kv_head, seq_len, self.head_dim))?;
            let v = v.reshape((b_sz, self.n_kv_head, seq_len, self.head_dim))?;
            (q, k, v)
        };

        let q = self
            .q_norm
            .forward(&q.flatten(0, 2)?)?
            .reshape((b_sz, self.n_head, seq_len, self.head_dim))?;
        let k = self
            .k_norm
            .forward(&k.flatten(0, 2)?)?
            .reshape((b_sz, self.n_kv_head, seq_len, self.head_dim))?;

        let (q, k) = self.rotary.forward(&q, &k, start_offsets)?;

        let (q, k, v) = (
            q.to_dtype(ATTENTION_DTYPE)?,
            k.to_dtype(ATTENTION_DTYPE)?,
            v.to_dtype(ATTENTION_DTYPE)?,
        );

        let (k, v) = kv_cache.append(&k, &v)?;
        // A prompt's sliding-window layers are limited by their mask; one decoded token has no
        // mask (the CPU attention ignores `sliding_window`), so it sees only the last `window`
        // keys, itself included, as llama.cpp's and Hugging Face's Gemma 3 do.
        let (k, v) = match self.sliding_window {
            Some(window) if seq_len == 1 && k.dim(2)? > window => {
                let start = k.dim(2)? - window;
                (k.narrow(2, start, window)?, v.narrow(2, start, window)?)
            }
            _ => (k, v),
        };
        let y = Sdpa.run_attention(&q, &k, &v, mask, None, &self.sdpa_params)?;

        let y = if mask.is_some() {
            y.transpose(1, 2)?.reshape((b_sz, seq_len, ()))?
        } else {
            y.reshape((b_sz, seq_len, ()))?
        };

        MatMul.qmethod_matmul(&y.to_dtype(x.dtype())?, &*self.attention_wo)
    }

    fn forward_mlp(&self, x: &Tensor) -> Result<Tensor> {
        let gate = MatMul.qmethod_matmul(x, &*self.ffn_gate)?;
        let up = MatMul.qmethod_matmul(x, &*self.ffn_up)?;
        let y = crate::ops::mul_and_act(&gate, &up, Activation::GeluPytorchTanh)?;
        MatMul.qmethod_matmul(&y, &*self.ffn_down)
    }
}

pub struct ModelWeights {
    tok_embeddings: QuantizedEmbedding,
    layers: Vec<LayerWeights>,
    norm: QRmsNorm,
    output: Arc<dyn QuantMethod>,
    pub device: Device,
    pub cache: EitherCache,
    pub max_seq_len: usize,
    sliding_window: usize,
    mapper: Option<Box<dyn DeviceMapper + Send + Sync>>,
}

struct PropsGGUF {
    head_count: usize,
    head_count_kv: usize,
    block_count: usize,
    embedding_length: usize,
    rms_norm_eps: f32,
    max_seq_len: usize,
    rope_freq_base: f32,
    key_length: usize,
    value_length: usize,
    sliding_window: usize,
}

impl TryFrom<ContentMetadata<'_>> for PropsGGUF {
    type Error = anyhow::Error;

    fn try_from(c: ContentMetadata) -> std::result::Result<Self, Self::Error> {
        c.verify_arch("gemma3")?;
        let required = [
            "attention.head_count",
            "attention.head_count_kv",
            "block_count",
            "embedding_length",
            "attention.layer_norm_rms_epsilon",
            "attention.key_length",
            "attention.value_length",
            "attention.sliding_window",
            "context_length",
        ];
        c.has_required_keys(&required)?;
        Ok(Self {
            head_count: c.get_value::<u32>("attention.head_count")? as usize,
            head_count_kv: c.get_value::<u32>("attention.head_count_kv")? as usize,
            block_count: c.get_value::<u32>("block_count")? as usize,
            embedding_length: c.get_value::<u32>("embedding_length")? as usize,
            rms_norm_eps: c.get_value("attention.layer_norm_rms_epsilon")?,
            max_seq_len: c.get_value::<u32>("context_length")? as usize,
            rope_freq_base: c.get_value("rope.freq_base").ok().unwrap_or(1_000_000_f32),
            key_length: c.get_value::<u32>("attention.key_length")? as usize,
            value_length: c.get_value::<u32>("attention.value_length")? as usize,
            sliding_window: c.get_value::<u32>("attention.sliding_window")? as usize,
        })
    }
}

impl ModelConfig::FromGGUF for ModelWeights {
    fn from_gguf<R: std::io::Seek + std::io::Read>(
        mut ct: Content<'_, R>,
        device: &Device,
        mapper: Box<dyn DeviceMapper + Send + Sync>,
        attention_mechanism: AttentionImplementation,
        // The activations are f32 (the embedding lookup's dtype); attention runs in f16.
        _dtype: DType,
    ) -> Result<Self> {
        if matches!(attention_mechanism, AttentionImplementation::PagedAttention) {
            candle_core::bail!("gemma3 GGUF models run without PagedAttention");
        }
        let metadata = ContentMetadata {
            path_prefix: "gemma3",
            metadata: ct.get_metadata(),
        };
        let PropsGGUF {
            head_count,
            head_count_kv,
            block_count,
            embedding_length,
            rms_norm_eps,
            max_seq_len,
            rope_freq_base,
            key_length,
            value_length,
            sliding_window,
        } = PropsGGUF::try_from(metadata).or_else(|err| candle_core::bail!("{err}"))?;
        if key_length != value_length {
            candle_core::bail!(
                "Expected key_length == value_length, got {key_length} != {value_length}"
            );
        }
        let head_dim = key_length;

        // Tied output: one quantized matrix serves the lookup and the projection.
        let embedding = Arc::new(ct.tensor("token_embd.weight", device)?);
        let output = if ct.has_tensor("output.weight") {
            quantized(ct.tensor("output.weight", device)?)?
        } else {
            Arc::new(GgufMatMul::new(QuantMethodConfig::Gguf {
                q_weight: embedding.clone(),
                b: None,
            })?) as Arc<dyn QuantMethod>
        };
        let tok_embeddings =
            QuantizedEmbedding::new(embedding, (embedding_length as f64).sqrt())?;
        let norm = QRmsNorm::new(ct.tensor("output_norm.weight", device)?, rms_norm_eps)?;

        let mut ropes = HashMap::new();
        for layer_idx in 0..block_count {
            let device = mapper.device_for(layer_idx, false).unwrap_or(device);
            if ropes.contains_key(&device.location()) {
                continue;
            }
            let rope = |base| {
                RotaryEmbedding::new(base, head_dim, max_seq_len, device, true, DType::F32)
                    .map(Arc::new)
            };
            ropes.insert(
                device.location(),
                (rope(LOCAL_ROPE_BASE)?, rope(rope_freq_base)?),
            );
        }

        let mut layers = Vec::with_capacity(block_count);
        for layer_idx in NiceProgressBar::<_, 'b'>(
            0..block_count,
            "Loading repeating layers",
            &new_multi_progress(),
        ) {
            let prefix = format!("blk.{layer_idx}");
            let device = mapper.device_for(layer_idx, false).unwrap_or(device);
            let (local_rope, global_rope) = ropes
                .get(&device.location())
                .expect("a rope was made for every layer's device above");
            let is_sliding = (layer_idx + 1) % SLIDING_WINDOW_PATTERN != 0;
            let mut tensor = |name: &str| ct.tensor(&format!("{prefix}.{name}.weight"), device);
            let mut norm = |name: &str| QRmsNorm::new(tensor(name)?, rms_norm_eps);
            let attention_norm = norm("attn_norm")?;
            let post_attention_norm = norm("post_attention_norm")?;
            let q_norm = norm("attn_q_norm")?;
            let k_norm = norm("attn_k_norm")?;
            let ffn_norm = norm("ffn_norm")?;
            let post_ffn_norm = norm("post_ffw_norm")?;
            let mut tensor = |name: &str| ct.tensor(&format!("{prefix}.{name}.weight"), device);
            layers.push(LayerWeights {
                attention_wq: quantized(tensor("attn_q")?)?,
                attention_wk: quantized(tensor("attn_k")?)?,
                attention_wv: quantized(tensor("attn_v")?)?,
                attention_wo: quantized(tensor("attn_output")?)?,
                attention_norm,
                post_attention_norm,
                q_norm,
                k_norm,
                ffn_gate: quantized(tensor("ffn_gate")?)?,
                ffn_up: quantized(tensor("ffn_up")?)?,
                ffn_down: quantized(tensor("ffn_down")?)?,
                ffn_norm,
                post_ffn_norm,
                n_head: head_count,
                n_kv_head: head_count_kv,
                head_dim,
                sliding_window: is_sliding.then_some(sliding_window),
                rotary: if is_sliding { local_rope } else { global_rope }.clone(),
                sdpa_params: SdpaParams {
                    n_kv_groups: head_count / head_count_kv,
                    softcap: None,
                    // query_pre_attn_scalar = head_dim for the 270M to 12B models.
                    softmax_scale: 1.0 / (head_dim as f32).sqrt(),
                    sliding_window: is_sliding.then_some(sliding_window),
                    sinks: None,
                },
            })
        }
        Ok(Self {
            tok_embeddings,
            layers,
            norm,
            output,
            device: device.clone(),
            cache: EitherCache::Normal(NormalCache::new(block_count, max_seq_len)),
            max_seq_len,
            sliding_window,
            mapper: Some(mapper),
        })
    }
}

/// The prompt's mask for the sliding-window layers: query position p sees keys p - window + 1
/// ..= p (mistral.rs's `make_swa_mask` lets one key more through than llama.cpp and Hugging
/// Face do).
fn sliding_window_mask(
    tgt_len: usize,
    past_kv_len: usize,
    window: usize,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let total = past_kv_len + tgt_len;
    let mask: Vec<f32> = (0..tgt_len)
        .flat_map(|i| {
            let q_pos = past_kv_len + i;
            (0..total).map(move |k_pos| {
                if k_pos > q_pos || q_pos - k_pos >= window {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_slice(&mask, (tgt_len, total), device)?.to_dtype(dtype)
}

impl ModelWeights {
    pub fn forward(
        &self,
        x: &Tensor,
        start_offsets: &[usize],
        context_lens: Vec<(usize, usize)>,
        _metadata: Option<(Vec<(Tensor, Tensor)>, &PagedAttentionInputMetadata)>,
    ) -> Result<Tensor> {
        let mut layer_in = self.tok_embeddings.forward(x)?;
        let cache = &mut self.cache.normal().0;
        let past_kv_len = (cache as &dyn PastKvLenCache).get_past_kv_len()?;
        let global_mask = CausalMasker.make_causal_mask_matrix(
            x,
            cache as &dyn PastKvLenCache,
            ATTENTION_DTYPE,
            self.layers[0].n_head,
        )?;
        let tgt_len = x.dim(1)?;
        let sliding_mask = if tgt_len > 1 {
            Some(sliding_window_mask(
                tgt_len,
                past_kv_len,
                self.sliding_window,
                x.device(),
                ATTENTION_DTYPE,
            )?)
        } else {
            None
        };
        let (global_mask, sliding_mask) = if let Some(ref mapper) = self.mapper {
            (
                DeviceMappedMask::new(global_mask, &**mapper)?,
                DeviceMappedMask::new(sliding_mask, &**mapper)?,
            )
        } else {
            (
                DeviceMappedMask::from_single(global_mask),
                DeviceMappedMask::from_single(sliding_mask),
            )
        };
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(ref mapper) = self.mapper {
                layer_in = mapper.map(layer_in, i)?;
            }
            let x = layer_in;
            let mask = if layer.sliding_window.is_some() {
                &sliding_mask
            } else {
                &global_mask
            };
            let attn = layer.forward_attn(
                &layer.attention_norm.forward(&x)?,
                mask.as_ref().map(|m| m.get(x.device())),
                start_offsets,
                &mut cache[i],
            )?;
            let x = (layer.post_attention_norm.forward(&attn)? + &x)?;
            let mlp = layer.forward_mlp(&layer.ffn_norm.forward(&x)?)?;
            layer_in = (layer.post_ffn_norm.forward(&mlp)? + &x)?;
        }
        let x = self.norm.forward(&layer_in)?;
        let x = extract_logits(&x, context_lens)?;
        MatMul.qmethod_matmul(&x.contiguous()?, &*self.output)
    }
}
