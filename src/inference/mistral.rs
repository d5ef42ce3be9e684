//! The in-process mistral.rs runtime for GGUF models; one loaded model may serve several tiers.

use std::{path::Path, sync::Arc};

use anyhow::Context;
use mistralrs::{Model, RequestBuilder, TextMessageRole};

use super::{DecodingProfile, Generation, PromptTooLong, Role, Turn};

/// How mistral.rs words its refusal of a prompt longer than the context (engine/add_request.rs).
const PROMPT_TOO_LONG: &str = "Prompt sequence length is greater than ";

/// Sequences mistral.rs runs at once on one loaded model: one. Batched decoding gave wrong
/// answers. One cause is found and fixed (mistral.rs 0.8.1's CPU decode attention shared its
/// scratch across the batch: vendor/mistralrs-core/TIERGATE.md); with that fix, batches are
/// right with the prefix cache off but still wrong with it on (system-prompt text appears in
/// answers). Batching is also much slower here, measured with right answers (prefix cache off:
/// 14-29 tok/s against 55 one at a time; BENCHMARKS.md, session 7). Requests beyond it wait in
/// mistral.rs's queue; tiergate's per-tier queue bounds how many reach it.
const MAX_RUNNING_SEQUENCES: std::num::NonZeroUsize = std::num::NonZeroUsize::new(1).unwrap();

/// Finished sequences whose KV caches the prefix cache keeps (the oldest is dropped first). Each
/// entry holds its prompt and answer: ~46 KB per token for the packaged model, so ~5 MB for a
/// typical 100-token exchange and at most 8 x the context length in all.
const PREFIX_CACHE_SEQUENCES: usize = 8;

/// The dtype of the activations (hidden states, KV cache) between the quantized matmuls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationDtype {
    F32,
    /// What `mistralrs::GgufModelBuilder` picks on a CPU.
    Bf16,
}

/// A loaded model. `send_chat_request` takes `&self`, so one instance is shared by every tier
/// and request that uses it (mistral.rs schedules the sequences itself).
#[derive(Clone)]
pub struct MistralRuntime {
    model: Arc<Model>,
}

impl std::fmt::Debug for MistralRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MistralRuntime")
    }
}

impl MistralRuntime {
    /// Loads a local GGUF file; tokenizer and chat template come from the file itself, so no
    /// hub access is needed.
    ///
    /// This is `mistralrs::GgufModelBuilder::build` with one change: the activation dtype.
    /// The builder always passes `ModelDType::Auto`, which on a CPU picks BF16 (the first dtype a
    /// test matmul accepts). candle has no SIMD path for BF16 element-wise ops, and every
    /// quantized matmul then converts its input to F32 and its output back; F32 activations
    /// skip all of that: 1.11-1.14x tokens/s (BENCHMARKS.md, "Session 4"). The weights stay
    /// quantized either way.
    pub async fn load(weights: &Path) -> anyhow::Result<MistralRuntime> {
        MistralRuntime::load_with_activations(weights, ActivationDtype::F32).await
    }

    /// `load` with another activation dtype: for the benchmark that justifies the choice.
    pub async fn load_with_activations(weights: &Path, activations: ActivationDtype) -> anyhow::Result<MistralRuntime> {
        use mistralrs_core::{
            AutoDeviceMapParams, DefaultSchedulerMethod, DeviceMapSetting, GGUFLoaderBuilder, GGUFSpecificConfig,
            MistralRsBuilder, ModelDType, SchedulerConfig, TokenSource,
        };

        let dir = weights.parent().context("weights path has no directory")?;
        let file = weights
            .file_name()
            .and_then(|f| f.to_str())
            .context("weights file name is not UTF-8")?;
        let loader = GGUFLoaderBuilder::new(
            None,
            None,
            dir.to_string_lossy().into_owned(),
            vec![file.to_owned()],
            GGUFSpecificConfig { topology: None },
            false,
            None,
        )
        .build();
        let device = mistralrs::best_device(true)?;
        let pipeline = loader
            .load_model_from_hf(
                None,
                TokenSource::None,
                &match activations {
                    ActivationDtype::F32 => ModelDType::F32,
                    ActivationDtype::Bf16 => ModelDType::BF16,
                },
                &device,
                true,
                DeviceMapSetting::Auto(AutoDeviceMapParams::default_text()),
                None,
                None,
            )
            .with_context(|| format!("loading GGUF model {}", weights.display()))?;
        let scheduler = SchedulerConfig::DefaultScheduler { method: DefaultSchedulerMethod::Fixed(MAX_RUNNING_SEQUENCES) };
        let runner = MistralRsBuilder::new(pipeline, scheduler, false, None)
            .with_no_kv_cache(false)
            // A request whose prompt starts like a recent one (the system card's prompt, earlier
            // turns) reuses their keys and values instead of running those tokens again. Upstream
            // never evicted on a CPU; the vendored mistralrs-core bounds it and keeps compact
            // copies (vendor/mistralrs-core/TIERGATE.md).
            .with_no_prefix_cache(false)
            .with_prefix_cache_n(PREFIX_CACHE_SEQUENCES)
            .build()
            .await;
        Ok(MistralRuntime { model: Arc::new(Model::new(runner)) })
    }

    pub async fn generate(&self, turns: &[Turn], decoding: &DecodingProfile) -> anyhow::Result<Generation> {
        let mut request = RequestBuilder::new();
        // Chat templates accept one leading system message: the card's prompt comes first and
        // the caller's own system messages are appended to it.
        let mut system: Vec<&str> = decoding.system_prompt.as_deref().into_iter().collect();
        system.extend(turns.iter().filter(|t| t.role == Role::System).map(|t| t.content.as_str()));
        if !system.is_empty() {
            request = request.add_message(TextMessageRole::System, system.join("\n\n"));
        }
        for turn in turns.iter().filter(|t| t.role != Role::System) {
            let role = match turn.role {
                Role::Assistant => TextMessageRole::Assistant,
                _ => TextMessageRole::User,
            };
            request = request.add_message(role, &turn.content);
        }
        // `set_deterministic_sampler` replaces every sampling parameter (max_len included), so it
        // must come before the token limit, or generation runs to the end of the context.
        request = if decoding.temperature <= 0.0 {
            request.set_deterministic_sampler()
        } else {
            request.set_sampler_temperature(decoding.temperature)
        };
        request = request.return_logprobs(true).set_sampler_max_len(decoding.max_tokens as usize);
        let response = self
            .model
            .send_chat_request(request)
            .await
            .map_err(|error| match &error {
                mistralrs::error::Error::RequestValidation(message) if message.starts_with(PROMPT_TOO_LONG) => {
                    let limit_tokens = message[PROMPT_TOO_LONG.len()..].split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok());
                    anyhow::Error::new(PromptTooLong { limit_tokens })
                }
                _ => anyhow::anyhow!("mistral.rs generation failed: {error}"),
            })?;
        let choice = response.choices.into_iter().next().context("mistral.rs returned no choice")?;
        let (token_texts, token_logprobs) = choice
            .logprobs
            .and_then(|l| l.content)
            .map(|tokens| tokens.into_iter().map(|t| (t.token, t.logprob)).unzip())
            .unwrap_or_default();
        Ok(Generation {
            text: choice.message.content.unwrap_or_default(),
            finish_reason: choice.finish_reason,
            token_logprobs,
            token_texts,
            prompt_tokens: response.usage.prompt_tokens as u64,
            completion_tokens: response.usage.completion_tokens as u64,
            self_check_yes: None,
        })
    }

    /// One greedy token for `turns`, with its top alternatives: P("yes") among them.
    pub async fn yes_probability(&self, turns: &[Turn]) -> anyhow::Result<Option<f64>> {
        let mut request = RequestBuilder::new();
        for turn in turns {
            request = request.add_message(TextMessageRole::User, &turn.content);
        }
        let request = request.set_deterministic_sampler().return_logprobs(true).set_sampler_topn_logprobs(10).set_sampler_max_len(1);
        let response = self
            .model
            .send_chat_request(request)
            .await
            .map_err(|e| anyhow::anyhow!("mistral.rs self-check failed: {e}"))?;
        let first = response
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.logprobs)
            .and_then(|l| l.content)
            .and_then(|tokens| tokens.into_iter().next());
        Ok(first.and_then(|token| {
            let alternatives: Vec<(String, f64)> =
                token.top_logprobs.iter().filter_map(|t| Some((t.bytes.clone()?, f64::from(t.logprob)))).collect();
            super::yes_probability(Some((&token.token, f64::from(token.logprob))), &alternatives)
        }))
    }
}
