//! The in-process mistral.rs runtime for GGUF models; one loaded model may serve several tiers.

use std::{path::Path, sync::Arc};

use anyhow::Context;
use mistralrs::{Model, RequestBuilder, TextMessageRole};

use super::{DecodingProfile, Generation, LoadedPromptFormat, PromptTooLong, Role, Turn};

/// How mistral.rs words its refusal of a prompt longer than the context (engine/add_request.rs).
const PROMPT_TOO_LONG: &str = "Prompt sequence length is greater than ";

/// The limit named in mistral.rs's refusal of a prompt longer than the context.
fn prompt_too_long(message: &str) -> PromptTooLong {
    let limit_tokens = message[PROMPT_TOO_LONG.len().min(message.len())..].split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok());
    PromptTooLong { limit_tokens }
}

/// A chat or completion answer with its tokens' texts and logprobs.
fn generation(text: String, finish_reason: String, logprobs: Option<mistralrs_core::Logprobs>, usage: &mistralrs_core::Usage) -> Generation {
    let tokens = logprobs.and_then(|l| l.content).unwrap_or_default();
    let token_alternatives = if tokens.iter().any(|t| !t.top_logprobs.is_empty()) {
        tokens.iter().map(|t| t.top_logprobs.iter().map(|alt| (alt.bytes.clone().unwrap_or_default(), alt.logprob)).collect()).collect()
    } else {
        Vec::new()
    };
    let (token_texts, token_logprobs) = tokens.into_iter().map(|t| (t.token, t.logprob)).unzip();
    Generation {
        text,
        finish_reason,
        token_logprobs,
        token_texts,
        token_alternatives,
        prompt_tokens: usage.prompt_tokens as u64,
        completion_tokens: usage.completion_tokens as u64,
        self_check_yes: None,
    }
}

/// Sequences mistral.rs runs at once on one loaded model: one. Batched decoding gave wrong
/// answers. One cause is found and fixed (mistral.rs 0.8.1's CPU decode attention shared its
/// scratch across the batch: vendor/mistralrs-core/TIERGATE.md); with that fix, batches are
/// right with the prefix cache off but still wrong with it on (system-prompt text appears in
/// answers). Batching is also much slower here, measured with right answers (prefix cache off:
/// 14-29 tok/s against 55 one at a time; BENCHMARKS.md, "Generation is memory-bound…"). Requests beyond it wait in
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
    /// skip all of that: 1.11-1.14x tokens/s (BENCHMARKS.md, "Activation dtype, prefix cache…"). The weights stay
    /// quantized either way.
    pub async fn load(weights: &Path) -> anyhow::Result<MistralRuntime> {
        MistralRuntime::load_with_activations(weights, ActivationDtype::F32).await
    }

    /// `load` with another activation dtype: for the benchmark that justifies the choice.
    pub async fn load_with_activations(weights: &Path, activations: ActivationDtype) -> anyhow::Result<MistralRuntime> {
        use mistralrs_core::{
            AutoDeviceMapParams, DefaultSchedulerMethod, DeviceMapSetting, GGUFLoaderBuilder, GGUFSpecificConfig, MistralRsBuilder, ModelDType,
            SchedulerConfig, TokenSource,
        };

        let dir = weights.parent().context("weights path has no directory")?;
        let file = weights.file_name().and_then(|f| f.to_str()).context("weights file name is not UTF-8")?;
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
        // Chat templates accept one leading system message: the card's prompt comes first and
        // the caller's own system messages are appended to it.
        let mut system: Vec<&str> = decoding.system_prompt.as_deref().into_iter().collect();
        system.extend(turns.iter().filter(|t| t.role == Role::System).map(|t| t.content.as_str()));
        let system = (!system.is_empty()).then(|| system.join("\n\n"));
        if let Some(format) = &decoding.prompt_format {
            let prompt = format.format.render(system.as_deref(), turns);
            return self.complete(prompt, &format.format.stop, decoding).await;
        }
        let mut request = RequestBuilder::new();
        if let Some(system) = system {
            request = request.add_message(TextMessageRole::System, system);
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
        request =
            if decoding.temperature <= 0.0 { request.set_deterministic_sampler() } else { request.set_sampler_temperature(decoding.temperature) };
        request = request
            .return_logprobs(true)
            .set_sampler_topn_logprobs(usize::from(decoding.top_logprobs))
            .set_sampler_max_len(decoding.max_tokens as usize);
        let response = self.model.send_chat_request(request).await.map_err(|error| match &error {
            mistralrs::error::Error::RequestValidation(message) if message.starts_with(PROMPT_TOO_LONG) => {
                anyhow::Error::new(prompt_too_long(message))
            }
            _ => anyhow::anyhow!("mistral.rs generation failed: {error}"),
        })?;
        let choice = response.choices.into_iter().next().context("mistral.rs returned no choice")?;
        Ok(generation(choice.message.content.unwrap_or_default(), choice.finish_reason, choice.logprobs, &response.usage))
    }

    /// A completion of `prompt` (a model without a chat template), ending at the first of
    /// `stop`; the answer is the text before it, trimmed.
    async fn complete(&self, prompt: String, stop: &[String], decoding: &DecodingProfile) -> anyhow::Result<Generation> {
        use mistralrs_core::{SamplingParams, StopTokens};

        let mut sampling = if decoding.temperature <= 0.0 {
            SamplingParams::deterministic()
        } else {
            SamplingParams { temperature: Some(decoding.temperature), ..SamplingParams::neutral() }
        };
        sampling.max_len = Some(decoding.max_tokens as usize);
        sampling.top_n_logprobs = usize::from(decoding.top_logprobs);
        sampling.stop_toks = (!stop.is_empty()).then(|| StopTokens::Seqs(stop.to_vec()));
        let response = self.send_completion(prompt, sampling).await?;
        let choice = response.choices.into_iter().next().context("mistral.rs returned no choice")?;
        Ok(generation(choice.text.trim().to_owned(), choice.finish_reason, choice.logprobs, &response.usage))
    }

    /// The prompt's token ids (BOS added as the model asks) and up to `max_tokens` greedy tokens
    /// with their ids and log-probabilities, with no stop sequence: to check this runtime against
    /// a reference implementation on the same file.
    pub async fn greedy_token_ids(&self, prompt: &str, max_tokens: usize) -> anyhow::Result<(Vec<u32>, Vec<(u32, f32)>)> {
        use mistralrs_core::SamplingParams;

        let prompt_ids = self
            .model
            .tokenize(either::Either::Right(prompt.to_owned()), None, true, false, None)
            .await
            .map_err(|e| anyhow::anyhow!("mistral.rs tokenization failed: {e}"))?;
        let sampling = SamplingParams { max_len: Some(max_tokens), top_n_logprobs: 1, ..SamplingParams::deterministic() };
        let response = self.send_completion(prompt.to_owned(), sampling).await?;
        let choice = response.choices.into_iter().next().context("mistral.rs returned no choice")?;
        let tokens = choice.logprobs.and_then(|l| l.content).unwrap_or_default();
        // Greedy: the best alternative is the chosen token, and it carries the id.
        let ids = tokens
            .iter()
            .map(|t| t.top_logprobs.first().map(|best| (best.token, t.logprob)).context("a token without its alternatives"))
            .collect::<anyhow::Result<_>>()?;
        Ok((prompt_ids, ids))
    }

    /// mistral.rs's `Model` sends only chat requests; this sends the engine's completion request.
    async fn send_completion(&self, prompt: String, sampling: mistralrs_core::SamplingParams) -> anyhow::Result<mistralrs_core::CompletionResponse> {
        use mistralrs_core::{Constraint, NormalRequest, Request, RequestMessage, Response};

        let (sender, mut receiver) = tokio::sync::mpsc::channel(1);
        let request = Request::Normal(Box::new(NormalRequest {
            messages: RequestMessage::Completion { text: prompt, echo_prompt: false, best_of: None },
            sampling_params: sampling,
            response: sender,
            return_logprobs: true,
            is_streaming: false,
            id: 0,
            constraint: Constraint::None,
            suffix: None,
            tools: None,
            tool_choice: None,
            logits_processors: None,
            return_raw_logits: false,
            web_search_options: None,
            model_id: None,
            truncate_sequence: false,
        }));
        self.model
            .inner()
            .get_sender(None)
            .map_err(|e| anyhow::anyhow!("mistral.rs has no engine: {e}"))?
            .send(request)
            .await
            .map_err(|_| anyhow::anyhow!("the mistral.rs engine has stopped"))?;
        match receiver.recv().await.context("the mistral.rs engine dropped the request")? {
            Response::CompletionDone(response) => Ok(response),
            Response::ValidationError(error) if error.to_string().starts_with(PROMPT_TOO_LONG) => {
                Err(anyhow::Error::new(prompt_too_long(&error.to_string())))
            }
            Response::ValidationError(error) | Response::InternalError(error) => anyhow::bail!("mistral.rs generation failed: {error}"),
            Response::CompletionModelError(error, _) => anyhow::bail!("mistral.rs generation failed: {error}"),
            _ => anyhow::bail!("mistral.rs answered a completion request with another kind of response"),
        }
    }

    /// One greedy token for `turns`, with its top alternatives: P("yes") among them.
    /// A tier with a completion prompt format is asked through it.
    pub async fn yes_probability(&self, turns: &[Turn], format: Option<&LoadedPromptFormat>) -> anyhow::Result<Option<f64>> {
        let first = if let Some(format) = format {
            let sampling = mistralrs_core::SamplingParams { max_len: Some(1), top_n_logprobs: 10, ..mistralrs_core::SamplingParams::deterministic() };
            let response = self.send_completion(format.format.render(None, turns), sampling).await.context("mistral.rs self-check failed")?;
            response.choices.into_iter().next().and_then(|c| c.logprobs).and_then(|l| l.content).and_then(|tokens| tokens.into_iter().next())
        } else {
            let mut request = RequestBuilder::new();
            for turn in turns {
                request = request.add_message(TextMessageRole::User, &turn.content);
            }
            let request = request.set_deterministic_sampler().return_logprobs(true).set_sampler_topn_logprobs(10).set_sampler_max_len(1);
            let response = self.model.send_chat_request(request).await.map_err(|e| anyhow::anyhow!("mistral.rs self-check failed: {e}"))?;
            response.choices.into_iter().next().and_then(|c| c.logprobs).and_then(|l| l.content).and_then(|tokens| tokens.into_iter().next())
        };
        Ok(first.and_then(|token| {
            let alternatives: Vec<(String, f64)> = token.top_logprobs.iter().filter_map(|t| Some((t.bytes.clone()?, f64::from(t.logprob)))).collect();
            super::yes_probability(Some((&token.token, f64::from(token.logprob))), &alternatives)
        }))
    }
}
