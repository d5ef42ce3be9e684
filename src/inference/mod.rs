//! Tier runtimes: in-process mistral.rs on verified GGUF weights, or a remote OpenAI-compatible
//! endpoint; generation with logprob confidence signals.

#[cfg(test)]
mod candle_patch_tests;
mod mistral;
#[cfg(test)]
mod mistralrs_patch_tests;
mod prompt;
mod remote;
mod weights;

pub use mistral::{ActivationDtype, MistralRuntime};
pub use prompt::{LoadedPromptFormat, PromptFormat};
pub use remote::RemoteRuntime;
pub use weights::{WeightsError, ensure_derived, ensure_python_tools, ensure_runnable_weights, ensure_weights, sha256_file};

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

impl Role {
    /// The role's name in the OpenAI chat format.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// Turns as OpenAI chat messages (`{"role", "content"}`): what the review queue stores, what
/// the ledger hashes, what a remote tier is sent.
pub fn chat_messages(turns: &[Turn]) -> Vec<serde_json::Value> {
    turns.iter().map(|t| serde_json::json!({"role": t.role.as_str(), "content": t.content})).collect()
}

/// How a tier decodes (from the system card, narrowed by the request).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecodingProfile {
    pub max_tokens: u32,
    pub temperature: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// A completion prompt for a model without a chat template; serialised (into the ledger)
    /// as its sha256.
    #[serde(rename = "prompt_format_sha256", skip_serializing_if = "Option::is_none")]
    pub prompt_format: Option<std::sync::Arc<LoadedPromptFormat>>,
    /// How many of the most likely alternatives to report for each generated token (OpenAI's
    /// `top_logprobs`, 0-20). Reporting them does not change which token is chosen.
    #[serde(skip_serializing_if = "is_zero")]
    pub top_logprobs: u8,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
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

    /// Asks the tier's model whether `answer` answers `turns` correctly; P("yes"). A tier with
    /// a completion prompt format is asked through it.
    pub async fn self_check(&self, turns: &[Turn], answer: &str, decoding: &DecodingProfile) -> anyhow::Result<f64> {
        let turns = self_check_turns(turns, answer);
        let probability = match self {
            TierRuntime::Local(runtime) => runtime.yes_probability(&turns, decoding.prompt_format.as_deref()).await?,
            TierRuntime::Remote(runtime) => runtime.yes_probability(&turns).await?,
        };
        probability.ok_or_else(|| anyhow::anyhow!("the self-check reply began with neither yes nor no"))
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
    /// The most likely tokens at each step with their log-probabilities, best first, parallel
    /// to `token_logprobs` when `DecodingProfile::top_logprobs` asked for them (else empty).
    pub token_alternatives: Vec<Vec<(String, f32)>>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The same model's probability that this answer is correct, when the system asks it
    /// (`escalation.self_check`).
    pub self_check_yes: Option<f64>,
}

/// The question a tier is asked about its own answer; the probability of "yes" as the first
/// token of the reply is the self-check signal.
pub(crate) fn self_check_turns(turns: &[Turn], answer: &str) -> Vec<Turn> {
    let question = turns.iter().rev().find(|t| t.role == Role::User).map_or("", |t| t.content.as_str());
    vec![Turn {
        role: Role::User,
        content: format!("Question:\n{question}\n\nProposed answer:\n{answer}\n\nIs the proposed answer correct? Reply with yes or no."),
    }]
}

/// P("yes") from the reply's first token: over its alternatives when the runtime gives them
/// (normalised over the yes and no forms), else from the chosen token alone.
pub(crate) fn yes_probability(chosen: Option<(&str, f64)>, alternatives: &[(String, f64)]) -> Option<f64> {
    let is = |token: &str, word: &str| token.trim().trim_end_matches(['.', ',', '!']).eq_ignore_ascii_case(word);
    let mass = |word: &str| alternatives.iter().filter(|(t, _)| is(t, word)).map(|(_, lp)| lp.exp()).sum::<f64>();
    let (yes, no) = (mass("yes"), mass("no"));
    if yes + no > 0.0 {
        return Some(yes / (yes + no));
    }
    let (token, logprob) = chosen?;
    if is(token, "yes") {
        Some(logprob.exp())
    } else if is(token, "no") {
        Some(1.0 - logprob.exp())
    } else {
        None
    }
}

/// Confidence signals derived from the generated tokens' own log-probabilities.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Signals {
    /// Mean log-probability of the chosen tokens (0 = certain; more negative = less sure).
    pub mean_logprob: f64,
    pub min_logprob: f64,
    /// Share of tokens chosen with probability below 10%.
    pub low_prob_share: f64,
    pub completion_tokens: u64,
    pub finish_reason: String,
    /// The model's own probability that its answer is correct (only with `self_check`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_check_yes: Option<f64>,
    /// Mean over tokens of the chosen token's log-probability minus the best other
    /// alternative's (0 = a coin toss between two tokens; larger = clearer choices). Needs the
    /// tokens' alternatives, which the gateway always asks for ([`SIGNAL_ALTERNATIVES`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_margin: Option<f64>,
    /// The smallest such margin: the answer's least clear choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_margin: Option<f64>,
    /// Mean over tokens of the entropy (nats) of the reported alternatives, the probability
    /// mass outside them counted as one more outcome (a lower bound of the full entropy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_entropy: Option<f64>,
    /// The estimated probability that this answer is correct, from the tier's confidence
    /// model (`crate::confidence`); only when the system card cites one for the tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_correct: Option<f64>,
}

/// Alternatives asked for each generated token whatever the caller asked: the margin and
/// entropy signals need them. Asking does not change which token is chosen.
pub const SIGNAL_ALTERNATIVES: u8 = 5;

/// Tokens below this log-probability (ln 0.1) count as low-probability choices.
const LOW_PROB_LOGPROB: f64 = -std::f64::consts::LN_10;

impl Signals {
    pub fn from_generation(generation: &Generation) -> Signals {
        let logprobs: Vec<f64> = generation.token_logprobs.iter().map(|l| f64::from(*l)).filter(|l| l.is_finite()).collect();
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
        let (mean_margin, min_margin, mean_entropy) = alternative_signals(&generation.token_logprobs, &generation.token_alternatives);
        Signals {
            mean_logprob: finite_or(mean, -1.0e9),
            min_logprob: finite_or(min, -1.0e9),
            low_prob_share: low,
            completion_tokens: generation.completion_tokens,
            finish_reason: generation.finish_reason.clone(),
            self_check_yes: generation.self_check_yes,
            mean_margin,
            min_margin,
            mean_entropy,
            p_correct: None,
        }
    }
}

/// (mean margin, min margin, mean entropy) over the tokens that have at least two reported
/// alternatives; all `None` when no token has.
fn alternative_signals(chosen: &[f32], alternatives: &[Vec<(String, f32)>]) -> (Option<f64>, Option<f64>, Option<f64>) {
    let (mut margins, mut entropies) = (Vec::new(), Vec::new());
    for (chosen, alternatives) in chosen.iter().zip(alternatives) {
        let chosen = f64::from(*chosen);
        let mut logprobs: Vec<f64> = alternatives.iter().map(|(_, l)| f64::from(*l)).filter(|l| l.is_finite()).collect();
        if logprobs.len() < 2 || !chosen.is_finite() {
            continue;
        }
        logprobs.sort_by(|a, b| b.total_cmp(a));
        // The chosen token is among the alternatives (first, when decoding is greedy); the best
        // other one is the next. A sampled token below the best gives a negative margin.
        let chosen_is_best = (logprobs[0] - chosen).abs() < 1e-5;
        margins.push(if chosen_is_best { chosen - logprobs[1] } else { chosen - logprobs[0] });
        let mass: f64 = logprobs.iter().map(|l| l.exp()).sum();
        let rest = (1.0 - mass).max(0.0);
        let rest_term = if rest > 0.0 { -rest * rest.ln() } else { 0.0 };
        entropies.push(logprobs.iter().map(|l| -l.exp() * l).sum::<f64>() + rest_term);
    }
    if margins.is_empty() {
        return (None, None, None);
    }
    let n = margins.len() as f64;
    (Some(margins.iter().sum::<f64>() / n), margins.iter().copied().reduce(f64::min), Some(entropies.iter().sum::<f64>() / n))
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
            token_alternatives: Vec::new(),
            prompt_tokens: 3,
            self_check_yes: None,
        }
    }

    #[test]
    fn the_yes_probability_comes_from_the_alternatives_or_else_the_chosen_token() {
        let alternatives = vec![("Yes".to_owned(), 0.5f64.ln()), (" no".to_owned(), 0.25f64.ln()), ("maybe".to_owned(), 0.25f64.ln())];
        let p = yes_probability(Some(("Yes", 0.5f64.ln())), &alternatives).unwrap();
        assert!((p - 2.0 / 3.0).abs() < 1e-9, "{p}");
        assert!((yes_probability(Some(("No.", 0.8f64.ln())), &[]).unwrap() - 0.2).abs() < 1e-9);
        assert_eq!(yes_probability(Some(("Perhaps", -0.1)), &[]), None);
    }

    #[test]
    fn signals_summarise_the_token_logprobs() {
        let signals = Signals::from_generation(&generation(vec![-0.1, -0.5, -3.0, -0.4]));

        assert!((signals.mean_logprob - (-1.0)).abs() < 1e-6);
        assert!((signals.min_logprob - (-3.0)).abs() < 1e-6);
        assert!((signals.low_prob_share - 0.25).abs() < 1e-9);
    }

    #[test]
    fn margins_and_entropy_come_from_the_alternatives_of_each_token() {
        let mut g = generation(vec![0.5f32.ln(), 0.9f32.ln()]);
        g.token_alternatives = vec![
            vec![("a".into(), 0.5f32.ln()), ("b".into(), 0.25f32.ln()), ("c".into(), 0.25f32.ln())],
            vec![("x".into(), 0.9f32.ln()), ("y".into(), 0.1f32.ln())],
        ];
        let signals = Signals::from_generation(&g);

        let margins = [2.0f64.ln(), 9.0f64.ln()];
        assert!((signals.mean_margin.unwrap() - (margins[0] + margins[1]) / 2.0).abs() < 1e-5);
        assert!((signals.min_margin.unwrap() - margins[0]).abs() < 1e-5);
        let entropy = |ps: &[f64]| ps.iter().map(|p| -p * p.ln()).sum::<f64>();
        let expected = (entropy(&[0.5, 0.25, 0.25]) + entropy(&[0.9, 0.1])) / 2.0;
        assert!((signals.mean_entropy.unwrap() - expected).abs() < 1e-5, "{:?}", signals.mean_entropy);
        assert_eq!(Signals::from_generation(&generation(vec![-0.1])).mean_margin, None, "no alternatives, no margin");
    }

    #[test]
    fn an_empty_answer_signals_no_confidence() {
        let signals = Signals::from_generation(&generation(vec![]));

        assert!(signals.mean_logprob < -1.0e6);
        assert_eq!(signals.low_prob_share, 1.0);
    }
}
