//! Tier runtimes: in-process mistral.rs on verified GGUF weights, or a remote OpenAI-compatible
//! endpoint; generation with logprob confidence signals.

mod mistral;
mod remote;
mod weights;

pub use mistral::MistralRuntime;
pub use remote::RemoteRuntime;
pub use weights::{WeightsError, ensure_derived, ensure_runnable_weights, ensure_weights, sha256_file};

use serde::Serialize;

/// One chat message as the runtime sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub role: Role,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

/// How a tier decodes (from the system card, narrowed by the request).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecodingProfile {
    pub max_tokens: u32,
    pub temperature: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
}

/// The prompt does not fit the model's context window. A fault of the request, not of the
/// tier: it does not count towards the tier's circuit breaker, and when no tier could take the
/// prompt the caller gets 400 `context_length_exceeded` (the OpenAI code for it).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the prompt is longer than the model's context{}", .limit_tokens.map(|n| format!(" of {n} tokens")).unwrap_or_default())]
pub struct PromptTooLong {
    pub limit_tokens: Option<u64>,
}

impl PromptTooLong {
    /// Whether a runtime error (anywhere in its chain) is this one.
    pub fn in_error(error: &anyhow::Error) -> Option<&PromptTooLong> {
        error.chain().find_map(|cause| cause.downcast_ref::<PromptTooLong>())
    }
}

/// A tier's runtime: every tier is one of these, behind one `generate`.
#[derive(Debug, Clone)]
pub enum TierRuntime {
    Local(MistralRuntime),
    Remote(RemoteRuntime),
}

impl TierRuntime {
    pub async fn generate(&self, turns: &[Turn], decoding: &DecodingProfile) -> anyhow::Result<Generation> {
        match self {
            TierRuntime::Local(runtime) => runtime.generate(turns, decoding).await,
            TierRuntime::Remote(runtime) => runtime.generate(turns, decoding).await,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            TierRuntime::Local(_) => "mistralrs-gguf",
            TierRuntime::Remote(_) => "openai-compatible",
        }
    }
}

/// What a tier produced.
#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub finish_reason: String,
    pub token_logprobs: Vec<f32>,
    /// The chosen tokens' text, parallel to `token_logprobs` (empty when unknown).
    pub token_texts: Vec<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Confidence signals derived from the generated tokens' own log-probabilities.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signals {
    /// Mean log-probability of the chosen tokens (0 = certain; more negative = less sure).
    pub mean_logprob: f64,
    pub min_logprob: f64,
    /// Share of tokens chosen with probability below 10%.
    pub low_prob_share: f64,
    pub completion_tokens: u64,
    pub finish_reason: String,
}

/// Tokens below this log-probability (ln 0.1) count as low-probability choices.
const LOW_PROB_LOGPROB: f64 = -2.302_585_092_994_046;

impl Signals {
    pub fn from_generation(generation: &Generation) -> Signals {
        let logprobs: Vec<f64> = generation
            .token_logprobs
            .iter()
            .map(|l| f64::from(*l))
            .filter(|l| l.is_finite())
            .collect();
        let count = logprobs.len();
        // No tokens means no evidence of confidence: report the worst value, not a neutral one.
        let (mean, min, low) = if count == 0 {
            (f64::NEG_INFINITY, f64::NEG_INFINITY, 1.0)
        } else {
            let sum: f64 = logprobs.iter().sum();
            let min = logprobs.iter().copied().fold(f64::INFINITY, f64::min);
            let low = logprobs.iter().filter(|l| **l < LOW_PROB_LOGPROB).count();
            (sum / count as f64, min, low as f64 / count as f64)
        };
        Signals {
            mean_logprob: finite_or(mean, -1.0e9),
            min_logprob: finite_or(min, -1.0e9),
            low_prob_share: low,
            completion_tokens: generation.completion_tokens,
            finish_reason: generation.finish_reason.clone(),
        }
    }
}

/// JSON has no infinities; a very negative number keeps comparisons in Rego meaningful.
fn finite_or(value: f64, fallback: f64) -> f64 {
    if value.is_finite() { value } else { fallback }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(logprobs: Vec<f32>) -> Generation {
        Generation {
            text: "x".into(),
            finish_reason: "stop".into(),
            completion_tokens: logprobs.len() as u64,
            token_logprobs: logprobs,
            token_texts: Vec::new(),
            prompt_tokens: 3,
        }
    }

    #[test]
    fn signals_summarise_the_token_logprobs() {
        let signals = Signals::from_generation(&generation(vec![-0.1, -0.5, -3.0, -0.4]));

        assert!((signals.mean_logprob - (-1.0)).abs() < 1e-6);
        assert!((signals.min_logprob - (-3.0)).abs() < 1e-6);
        assert!((signals.low_prob_share - 0.25).abs() < 1e-9);
    }

    #[test]
    fn an_empty_answer_signals_no_confidence() {
        let signals = Signals::from_generation(&generation(vec![]));

        assert!(signals.mean_logprob < -1.0e6);
        assert_eq!(signals.low_prob_share, 1.0);
    }
}
