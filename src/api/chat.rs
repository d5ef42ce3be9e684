//! `POST /v1/chat/completions`: the OpenAI-compatible endpoint; `model` names a system card.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, http::StatusCode, post, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{AppState, parse_json_body};
use crate::{
    access::Caller,
    error::{ApiError, ErrorBody},
    inference::{Role, Signals, Turn, chat_messages},
    routing::{AttemptSummary, ChatRequest, Outcome, RequestFacts, Routed, RoutingError, ServedAnswer},
    store::ReviewRow,
    telemetry::current_request_id,
};

/// An OpenAI chat-completions request. OpenAI parameters that tiergate does not implement
/// (`tools`, `tool_choice`, `functions`, `response_format` other than text, `logit_bias`,
/// `top_p`, penalties, `stop`, `seed`, `n` > 1, audio, …) are refused with 400
/// `unsupported_parameter` naming the parameter whenever their value would change the answer;
/// bookkeeping fields (`store`, `service_tier`, `parallel_tool_calls`) are accepted and have no
/// effect.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({
    "model": "support-triage",
    "messages": [{"role": "user", "content": "How do I reset my password?"}],
    "max_tokens": 48,
    "metadata": {"use_case": "account-help", "stakes": "normal"}
}))]
pub struct ChatCompletionRequest {
    /// The id of an active system card, e.g. `support-triage`.
    pub model: String,
    /// The conversation, oldest first; at least one message.
    pub messages: Vec<ChatMessage>,
    /// Upper bound on generated tokens (each tier's own limit still applies).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Newer OpenAI name for `max_tokens`; the smaller of the two wins.
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature (0 = greedy); default: the tier's decoding profile.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Server-sent events in the OpenAI chunk format. The whole pipeline (every gate) runs
    /// first, so nothing unaccepted is ever released; the accepted answer is then streamed,
    /// after its ledger entry is committed. An answer held for review is the 202 JSON body.
    #[serde(default)]
    pub stream: Option<bool>,
    /// With `stream`: `include_usage` adds a last chunk with the token usage.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Return the served answer's token log-probabilities (`choices[0].logprobs.content`).
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// With `logprobs`: how many of the most likely tokens to report at each position
    /// (`top_logprobs` of each token), 0 to 20.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 20)]
    pub top_logprobs: Option<u8>,
    /// Number of choices; only 1 is supported.
    #[serde(default)]
    pub n: Option<u32>,
    /// End-user id, recorded in the ledger.
    #[serde(default)]
    pub user: Option<String>,
    /// Request facts for the policy: `use_case`, `stakes` (`normal`, `high`, `critical`),
    /// `data_class`; other keys are passed to the policy as `input.request.metadata`.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatMessage {
    pub role: MessageRole,
    /// Text, or an array of content parts of which only `text` parts are supported.
    pub content: MessageContent,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MessageRole {
    System,
    Developer,
    User,
    Assistant,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// An OpenAI chat completion, plus tiergate's routing metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionResponse {
    pub id: String,
    /// Always `chat.completion`.
    pub object: String,
    pub created: i64,
    /// The system card that handled the request, as requested.
    pub model: String,
    /// One choice: the served answer, or (HTTP 202, `tiergate.review_required`) the answer held
    /// for human review.
    pub choices: Vec<Choice>,
    pub usage: Usage,
    pub tiergate: RoutingMetadata,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Choice {
    pub index: u32,
    pub message: AssistantMessage,
    /// `stop` or `length`.
    pub finish_reason: String,
    /// With `"logprobs": true`: each generated token and its log-probability.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<ChoiceLogprobs>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChoiceLogprobs {
    pub content: Vec<TokenLogprob>,
}

#[derive(Debug, PartialEq, Serialize, ToSchema)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    /// The most likely tokens at this position, best first: as many as the request's
    /// `top_logprobs` asked for (empty when it did not).
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, PartialEq, Serialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AssistantMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    /// Summed over every attempt, escalations included.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// How the request was routed, and where it is recorded.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "request_id": "0193b2c4-3f1e-7c2a-9d41-5f0e8a7b6c5d",
    "outcome": "served", "system": "support-triage@1", "policy": "tiergate-default@1",
    "tier_served": 0, "tier_name": "small", "escalated": false,
    "reasons": ["mean token logprob -0.41 is at or above the threshold -1"],
    "ledger_index": 17, "attempts": []
}))]
pub struct RoutingMetadata {
    pub request_id: String,
    /// `served` or `held_for_review`.
    pub outcome: String,
    /// The system card version that handled the request (`id@version`).
    pub system: String,
    /// The policy bundle version that decided (`id@version`).
    pub policy: String,
    pub tier_served: Option<usize>,
    pub tier_name: Option<String>,
    /// True when more than one tier was tried.
    pub escalated: bool,
    /// The deciding gate's reasons.
    pub reasons: Vec<String>,
    /// Index of this request's entry in the ledger.
    pub ledger_index: u64,
    /// The policy held this answer for human review: it is returned (HTTP 202) flagged, and
    /// waits in the review queue (`/v1/reviews/{ledger_index}`) for a reviewer's verdict.
    pub review_required: bool,
    /// Time spent in the tiers' models, summed over attempts.
    pub model_ms: f64,
    /// The gateway's own time: end to end minus model time (parsing, policy, ledger commit).
    pub overhead_ms: f64,
    /// Cost of every attempt from the model cards' prices and the real token counts.
    pub cost: f64,
    pub attempts: Vec<AttemptView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    pub tier: usize,
    pub tier_name: String,
    /// Model card version (`id@version`).
    pub model: String,
    pub mean_logprob: Option<f64>,
    pub min_logprob: Option<f64>,
    pub completion_tokens: Option<u64>,
    pub finish_reason: Option<String>,
    /// The estimated probability that this attempt's answer is correct, from the tier's
    /// confidence model (only for a tier whose system card cites one).
    pub p_correct: Option<f64>,
    /// Every signal of the attempt (what the accept gate saw), absent when the tier failed.
    pub signals: Option<Signals>,
    pub error: Option<String>,
    /// The accept gate's decision: `accept`, `escalate`, `review` or `deny`.
    pub decision: String,
    pub reasons: Vec<String>,
    pub latency_ms: f64,
    /// From the model card's prices and the real token counts.
    pub cost: Option<f64>,
}

impl From<AttemptSummary> for AttemptView {
    fn from(a: AttemptSummary) -> Self {
        AttemptView {
            tier: a.tier,
            tier_name: a.tier_name,
            model: a.model,
            mean_logprob: a.signals.as_ref().map(|s| s.mean_logprob),
            min_logprob: a.signals.as_ref().map(|s| s.min_logprob),
            completion_tokens: a.signals.as_ref().map(|s| s.completion_tokens),
            finish_reason: a.signals.as_ref().map(|s| s.finish_reason.clone()),
            p_correct: a.signals.as_ref().and_then(|s| s.p_correct),
            signals: a.signals,
            error: a.error,
            decision: a.decision,
            reasons: a.reasons,
            latency_ms: (a.latency_ms * 1000.0).round() / 1000.0,
            cost: a.cost,
        }
    }
}

/// Create a chat completion through the tiers of a system.
///
/// The route gate decides whether and where to start; each tier's answer goes through the
/// accept gate, which may escalate to the next tier. The request is recorded in the ledger
/// before the response is sent. Routing metadata is in the `tiergate` object and in the
/// `X-Tiergate-*` headers.
#[utoipa::path(
    tag = "inference", security(("api_key" = ["app"])),
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "Answer served", body = ChatCompletionResponse,
            headers(
                ("X-Tiergate-Tier" = String, description = "Index of the tier that answered"),
                ("X-Tiergate-Escalated" = bool, description = "Whether more than one tier was tried"),
                ("X-Tiergate-Ledger-Index" = u64, description = "Ledger entry of this request"),
                ("X-Request-Id" = String, description = "Request id (also in every log line)"),
            )),
        (status = 202, description = "Answer held for human review: returned flagged (`tiergate.review_required`) and queued for a reviewer", body = ChatCompletionResponse),
        (status = 400, description = "Body is not valid JSON; a parameter tiergate does not implement (`unsupported_parameter`, named in `error.param`); or (`context_length_exceeded`, recorded in the ledger) the prompt is longer than the context of every tier that tried it", body = ErrorBody),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 403, description = "Refused by policy (recorded in the ledger), or the key lacks the role or the system in its scopes", body = ErrorBody),
        (status = 404, description = "No active system card with this id", body = ErrorBody),
        (status = 422, description = "A field is missing, of the wrong type or out of range", body = ErrorBody),
        (status = 429, description = "The key's rate limit or daily token budget is reached (see Retry-After)", body = ErrorBody),
        (status = 503, description = "The ledger cannot record requests: nothing is served", body = ErrorBody),
    )
)]
#[post("/v1/chat/completions")]
pub async fn create_chat_completion(state: web::Data<AppState>, caller: Caller, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let started = std::time::Instant::now();
    let request: ChatCompletionRequest = parse_json_body(&body)?;
    if let Some(refusal) = serde_json::from_slice::<serde_json::Map<String, Value>>(&body).ok().and_then(|raw| unsupported_parameter(&raw)) {
        return Err(refusal);
    }
    let model = request.model.clone();
    let options = ResponseOptions {
        stream: request.stream == Some(true),
        include_usage: request.stream_options.as_ref().and_then(|o| o.include_usage) == Some(true),
        logprobs: request.logprobs == Some(true),
    };
    let chat = into_domain(request, &caller)?;
    let messages = serde_json::to_string(&chat_messages(&chat.turns)).map_err(anyhow::Error::from)?;
    if !caller.may_call(&chat.system_id) {
        tracing::warn!(key_id = %caller.key_id, system = %chat.system_id, "request refused: scope");
        return Err(ApiError::Forbidden(format!(
            "model: API key {} may not call system {:?} (its scopes: {})",
            caller.key_id,
            chat.system_id,
            caller.scopes.join(", ")
        )));
    }
    admit(&state, &caller).await?;
    let request_id = current_request_id().unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let routed = state.router.handle(&request_id, chat).await.map_err(|error| match error {
        RoutingError::UnknownSystem(id) => ApiError::UnknownSystem(format!("model: no active system card {id:?}")),
        RoutingError::SystemUnavailable { system, reason } => ApiError::Unavailable(format!("model: system {system} cannot be served: {reason}")),
        RoutingError::InvalidRequest(message) => ApiError::InvalidRequest(message),
        RoutingError::LedgerUnavailable(cause) => match cause.downcast_ref::<crate::ledger::LedgerHalted>() {
            Some(halted) => ApiError::Unavailable(format!("{halted}; nothing was served")),
            None => {
                tracing::error!(error = ?cause, "ledger append failed: refusing to serve");
                ApiError::Unavailable("the ledger cannot record requests right now; nothing was served".into())
            }
        },
        overloaded @ RoutingError::Overloaded { .. } => {
            tracing::warn!(error = %overloaded, "request refused: tier at capacity");
            ApiError::TooManyRequests { code: "overloaded", message: format!("{overloaded}; retry shortly"), retry_after_s: 1 }
        }
    })?;
    let tokens: u64 = routed.attempts.iter().map(|a| a.prompt_tokens + a.completion_tokens).sum();
    state.access.record_usage(&caller, tokens, chrono::Utc::now()).await?;
    if let Some(held) = &routed.held_answer {
        // The reviewer needs the text; the ledger entry already records the hold.
        state
            .store
            .insert_review(&ReviewRow {
                ledger_index: routed.ledger_index as i64,
                request_id: request_id.clone(),
                system_id: routed.system.split('@').next().unwrap_or_default().to_owned(),
                created_at: super::now(),
                messages,
                answer: held.text.clone(),
                status: "pending".into(),
                verdict_by: None,
                verdict_at: None,
                correction: None,
                comment: None,
                verdict_index: None,
            })
            .await?;
    }
    respond(request_id, model, routed, options, started, state.router.metrics())
}

/// OpenAI request parameters tiergate does not implement, each with the values (besides null)
/// that mean "not used". Any other value is refused: an application that asks for a tool call
/// or for JSON must not get free text as if it had not asked.
const UNSUPPORTED_PARAMETERS: &[(&str, &[&str])] = &[
    ("tools", &["[]"]),
    ("tool_choice", &["\"none\""]),
    ("functions", &["[]"]),
    ("function_call", &["\"none\""]),
    ("response_format", &[r#"{"type": "text"}"#]),
    ("logit_bias", &["{}"]),
    ("top_p", &["1"]),
    ("presence_penalty", &["0"]),
    ("frequency_penalty", &["0"]),
    ("stop", &["[]"]),
    ("seed", &[]),
    ("n", &["1"]),
    ("audio", &[]),
    ("modalities", &[r#"["text"]"#]),
    ("prediction", &[]),
    ("web_search_options", &[]),
    ("reasoning_effort", &[]),
];

fn unsupported_parameter(body: &serde_json::Map<String, Value>) -> Option<ApiError> {
    let same = |given: &Value, neutral: &Value| match (given.as_f64(), neutral.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => given == neutral,
    };
    UNSUPPORTED_PARAMETERS.iter().find_map(|(param, neutral)| {
        let given = body.get(*param).filter(|v| !v.is_null())?;
        let neutral: Vec<Value> = neutral.iter().map(|n| serde_json::from_str(n).expect("a neutral value is JSON")).collect();
        if neutral.iter().any(|n| same(given, n)) {
            return None;
        }
        let allowed = if neutral.is_empty() {
            String::new()
        } else {
            format!(" (accepted only as {})", neutral.iter().map(Value::to_string).collect::<Vec<_>>().join(" or "))
        };
        Some(ApiError::UnsupportedParameter {
            param: (*param).to_owned(),
            message: format!("{param}: tiergate does not support this parameter{allowed}; got {given}"),
        })
    })
}

/// The logprobs of the answer's own tokens: as OpenAI and llama.cpp report them, without the
/// token that ended it (an end-of-turn token, or a stop sequence the answer is cut at), which is
/// not part of the text. The confidence signal (`mean_logprob`) keeps that token, as the
/// calibration measured it: how sure the model was that the answer was complete belongs there.
fn answer_logprobs(answer: &ServedAnswer) -> Vec<TokenLogprob> {
    let tokens = answer.tokens.as_slice();
    let tokens = match tokens.split_last() {
        Some((last, rest)) if answer.finish_reason == "stop" && !last.token.is_empty() && !answer.text.ends_with(last.token.as_str()) => rest,
        _ => tokens,
    };
    tokens
        .iter()
        .map(|t| TokenLogprob {
            token: t.token.clone(),
            logprob: t.logprob,
            top_logprobs: t.alternatives.iter().map(|(token, logprob)| TopLogprob { token: token.clone(), logprob: *logprob }).collect(),
        })
        .collect()
}

/// How the caller wants the answer delivered.
#[derive(Debug, Clone, Copy)]
struct ResponseOptions {
    stream: bool,
    include_usage: bool,
    logprobs: bool,
}

/// The key's rate limit and daily token budget, checked before any model runs.
async fn admit(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    if let Err(retry_after_s) = state.access.take_rate(caller) {
        tracing::warn!(key_id = %caller.key_id, "request refused: rate limit");
        return Err(ApiError::TooManyRequests {
            code: "rate_limited",
            message: format!(
                "API key {} is over its rate limit of {} requests per minute; retry in {retry_after_s} s",
                caller.key_id,
                caller.rate_limit_per_minute.unwrap_or_default()
            ),
            retry_after_s,
        });
    }
    if let Err((retry_after_s, used)) = state.access.check_budget(caller, chrono::Utc::now()).await? {
        tracing::warn!(key_id = %caller.key_id, used, "request refused: token budget");
        return Err(ApiError::TooManyRequests {
            code: "token_budget_exhausted",
            message: format!(
                "API key {} has used {used} of its {} tokens for today (UTC); the budget renews in {retry_after_s} s",
                caller.key_id,
                caller.daily_token_budget.unwrap_or_default()
            ),
            retry_after_s,
        });
    }
    Ok(())
}

fn into_domain(request: ChatCompletionRequest, caller: &Caller) -> Result<ChatRequest, ApiError> {
    if request.model.trim().is_empty() {
        return Err(ApiError::InvalidRequest("model: must name a system card".into()));
    }
    if request.messages.is_empty() {
        return Err(ApiError::InvalidRequest("messages: must contain at least one message".into()));
    }
    if let Some(t) = request.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(ApiError::InvalidRequest(format!("temperature: {t} is outside 0..=2")));
    }
    let max_tokens = match (request.max_tokens, request.max_completion_tokens) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if max_tokens == Some(0) {
        return Err(ApiError::InvalidRequest("max_tokens: must be at least 1".into()));
    }
    let top_logprobs = request.top_logprobs.unwrap_or(0);
    if top_logprobs > 20 {
        return Err(ApiError::InvalidRequest(format!("top_logprobs: {top_logprobs} is outside 0..=20")));
    }
    if top_logprobs > 0 && request.logprobs != Some(true) {
        return Err(ApiError::InvalidRequest("top_logprobs: needs \"logprobs\": true".into()));
    }
    let mut turns = Vec::with_capacity(request.messages.len());
    for (i, message) in request.messages.into_iter().enumerate() {
        let content = match message.content {
            MessageContent::Text(text) => text,
            MessageContent::Parts(parts) => {
                let mut text = String::new();
                for (j, part) in parts.into_iter().enumerate() {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(ApiError::InvalidRequest(format!("messages[{i}].content[{j}]: only text parts are supported, got {kind:?}")));
                        }
                    }
                }
                text
            }
        };
        let role = match message.role {
            MessageRole::System | MessageRole::Developer => Role::System,
            MessageRole::User => Role::User,
            MessageRole::Assistant => Role::Assistant,
        };
        turns.push(Turn { role, content });
    }
    if !turns.iter().any(|t| t.role == Role::User) {
        return Err(ApiError::InvalidRequest("messages: at least one message must have role \"user\"".into()));
    }
    let mut metadata = request.metadata.unwrap_or_default();
    let facts = RequestFacts {
        caller: caller.subject.clone(),
        key_id: caller.key_id.clone(),
        role: "app".into(),
        scopes: caller.scopes.clone(),
        use_case: metadata.remove("use_case"),
        stakes: metadata.remove("stakes"),
        data_class: metadata.remove("data_class"),
        metadata: {
            if let Some(user) = request.user {
                metadata.insert("user".into(), user);
            }
            metadata
        },
    };
    Ok(ChatRequest { system_id: request.model, turns, max_tokens, temperature: request.temperature, top_logprobs, facts })
}

fn respond(
    request_id: String,
    model: String,
    routed: Routed,
    options: ResponseOptions,
    started: std::time::Instant,
    metrics: &crate::metrics::Metrics,
) -> Result<HttpResponse, ApiError> {
    if routed.outcome == Outcome::Denied {
        // Every tier that ran refused the prompt as too long: the request is at fault, and
        // says so in OpenAI's terms. (Recorded in the ledger like any request that reached a tier.)
        let too_long = routed.attempts.last().filter(|a| a.error_code == Some("context_length_exceeded"));
        if let Some(attempt) = too_long {
            return Err(ApiError::ContextLengthExceeded {
                message: format!(
                    "the prompt does not fit the context of {} (tier {} {:?}): {}",
                    attempt.model,
                    attempt.tier,
                    attempt.tier_name,
                    attempt.error.as_deref().unwrap_or_default()
                ),
                ledger_index: routed.ledger_index,
            });
        }
        return Err(ApiError::PolicyDenied {
            message: format!("refused by policy {}: {}", routed.policy, routed.reasons.join("; ")),
            ledger_index: Some(routed.ledger_index),
        });
    }
    let prompt_tokens: u64 = routed.attempts.iter().map(|a| a.prompt_tokens).sum();
    let completion_tokens: u64 = routed.attempts.iter().map(|a| a.completion_tokens).sum();
    let review_required = routed.outcome == Outcome::HeldForReview;
    let choices = routed
        .answer
        .as_ref()
        .or(routed.held_answer.as_ref())
        .map(|answer| Choice {
            index: 0,
            message: AssistantMessage { role: "assistant".into(), content: answer.text.clone() },
            finish_reason: answer.finish_reason.clone(),
            logprobs: options.logprobs.then(|| ChoiceLogprobs { content: answer_logprobs(answer) }),
        })
        .into_iter()
        .collect();
    let model_ms: f64 = routed.attempts.iter().map(|a| a.latency_ms).sum();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let overhead_ms = ((elapsed_ms - model_ms).max(0.0) * 1000.0).round() / 1000.0;
    let system_id = routed.system.split('@').next().unwrap_or_default();
    metrics.overhead_seconds.with_label_values(&[system_id]).observe(overhead_ms / 1000.0);
    let cost = routed.attempts.iter().filter_map(|a| a.cost).sum();
    let status = match routed.outcome {
        Outcome::Served => StatusCode::OK,
        _ => StatusCode::ACCEPTED,
    };
    let body = ChatCompletionResponse {
        id: format!("chatcmpl-{request_id}"),
        object: "chat.completion".into(),
        created: chrono::Utc::now().timestamp(),
        model,
        choices,
        usage: Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens },
        tiergate: RoutingMetadata {
            request_id,
            outcome: routed.outcome.as_str().into(),
            system: routed.system,
            policy: routed.policy,
            tier_served: routed.answer.as_ref().map(|a| a.tier),
            tier_name: routed.answer.as_ref().map(|a| a.tier_name.clone()),
            escalated: routed.escalated,
            reasons: routed.reasons,
            ledger_index: routed.ledger_index,
            review_required,
            model_ms: (model_ms * 1000.0).round() / 1000.0,
            overhead_ms,
            cost,
            attempts: routed.attempts.into_iter().map(AttemptView::from).collect(),
        },
    };
    let mut response = HttpResponse::build(status);
    response
        .insert_header(("X-Tiergate-Outcome", body.tiergate.outcome.clone()))
        .insert_header(("X-Tiergate-Escalated", body.tiergate.escalated.to_string()))
        .insert_header(("X-Tiergate-Ledger-Index", body.tiergate.ledger_index.to_string()))
        .insert_header(("X-Tiergate-Overhead-Ms", format!("{:.3}", body.tiergate.overhead_ms)))
        .insert_header(("X-Tiergate-Cost", format!("{}", body.tiergate.cost)));
    if let Some(tier) = body.tiergate.tier_served {
        response.insert_header(("X-Tiergate-Tier", tier.to_string()));
    }
    if options.stream && status == StatusCode::OK {
        let events = stream_events(&body, options.include_usage).map_err(anyhow::Error::from)?;
        let chunks = futures::stream::iter(events.into_iter().map(|event| Ok::<_, actix_web::Error>(web::Bytes::from(event))));
        return Ok(response.content_type("text/event-stream").insert_header(("Cache-Control", "no-cache")).streaming(chunks));
    }
    Ok(response.json(body))
}

/// The served answer as server-sent events in the OpenAI `chat.completion.chunk` format: the
/// role, the text in pieces whose concatenation is exactly the answer, a final chunk with the
/// finish reason and tiergate's routing metadata, usage if asked, `[DONE]`. The ledger entry is
/// committed before the first event is produced.
///
/// The pieces are the answer's tokens, each with its logprobs, when logprobs were asked for and
/// the tokens spell the answer; otherwise words, and any logprobs ride on the first piece (the
/// OpenAI SDK concatenates the chunks' `logprobs.content`, so the caller gets the same list).
fn stream_events(body: &ChatCompletionResponse, include_usage: bool) -> serde_json::Result<Vec<String>> {
    let Some(choice) = body.choices.first() else { return Ok(vec!["data: [DONE]\n\n".into()]) };
    let chunk = |delta: Value, logprobs: Option<&[TokenLogprob]>, finish_reason: Option<&str>| -> serde_json::Result<Value> {
        let logprobs = logprobs.map(|content| serde_json::to_value(content).map(|content| serde_json::json!({"content": content}))).transpose()?;
        Ok(serde_json::json!({
            "id": body.id, "object": "chat.completion.chunk", "created": body.created, "model": body.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
        }))
    };
    let mut events = vec![chunk(serde_json::json!({"role": "assistant", "content": ""}), None, None)?];
    for (piece, logprobs) in stream_pieces(&choice.message.content, choice.logprobs.as_ref().map(|l| l.content.as_slice())) {
        events.push(chunk(serde_json::json!({"content": piece}), logprobs, None)?);
    }
    let mut last = chunk(serde_json::json!({}), None, Some(&choice.finish_reason))?;
    last["tiergate"] = serde_json::to_value(&body.tiergate)?;
    events.push(last);
    if include_usage {
        events.push(serde_json::json!({
            "id": body.id, "object": "chat.completion.chunk", "created": body.created, "model": body.model,
            "choices": [], "usage": body.usage,
        }));
    }
    let mut lines: Vec<String> = events.iter().map(|e| Ok(format!("data: {}\n\n", serde_json::to_string(e)?))).collect::<serde_json::Result<_>>()?;
    lines.push("data: [DONE]\n\n".into());
    Ok(lines)
}

/// The streamed pieces of `text`, each with the logprobs it carries (see `stream_events`).
fn stream_pieces<'a>(text: &'a str, logprobs: Option<&'a [TokenLogprob]>) -> Vec<(&'a str, Option<&'a [TokenLogprob]>)> {
    match logprobs {
        Some(tokens) if !tokens.is_empty() && tokens.iter().map(|t| t.token.as_str()).collect::<String>() == text => {
            tokens.iter().map(|token| (token.token.as_str(), Some(std::slice::from_ref(token)))).collect()
        }
        mut pending => {
            let mut pieces: Vec<_> = word_pieces(text).into_iter().map(|piece| (piece, pending.take())).collect();
            if let Some(tokens) = pending {
                pieces.push(("", Some(tokens)));
            }
            pieces
        }
    }
}

/// Splits text after each run of whitespace, so that the pieces concatenate to the text.
fn word_pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut previous_was_space = false;
    for (i, c) in text.char_indices() {
        if previous_was_space && !c.is_whitespace() {
            pieces.push(&text[start..i]);
            start = i;
        }
        previous_was_space = c.is_whitespace();
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::{TokenLogprob, stream_pieces, word_pieces};

    fn tokens(texts: &[&str]) -> Vec<TokenLogprob> {
        texts.iter().map(|t| TokenLogprob { token: (*t).into(), logprob: -0.5, top_logprobs: Vec::new() }).collect()
    }

    #[test]
    fn streamed_pieces_are_the_tokens_when_they_spell_the_answer_else_words_with_the_logprobs_first() {
        let spelled = tokens(&["Par", "is", "."]);
        let pieces = stream_pieces("Paris.", Some(&spelled));
        assert_eq!(pieces.iter().map(|(p, _)| *p).collect::<Vec<_>>(), ["Par", "is", "."]);
        assert!(pieces.iter().zip(&spelled).all(|((_, l), t)| l.unwrap()[0].token == t.token && l.unwrap().len() == 1));

        // A completion cut at its stop sequence and trimmed: the tokens do not spell the text.
        let trimmed = tokens(&[" Paris", " is", "\n"]);
        let pieces = stream_pieces("Paris is", Some(&trimmed));
        assert_eq!(pieces.iter().map(|(p, _)| *p).collect::<String>(), "Paris is");
        assert_eq!(pieces[0].1.map(<[_]>::len), Some(3), "every logprob, once, on the first piece");
        assert!(pieces[1..].iter().all(|(_, l)| l.is_none()));

        assert_eq!(stream_pieces("", Some(&trimmed)), vec![("", Some(trimmed.as_slice()))], "no text: the logprobs still arrive");
        assert!(stream_pieces("a b", None).iter().all(|(_, l)| l.is_none()));
    }

    #[test]
    fn word_pieces_concatenate_to_the_text() {
        for text in ["", "one", "Hello, world!  How are\nyou? ", " leading"] {
            assert_eq!(word_pieces(text).concat(), text);
        }
        assert_eq!(word_pieces("a b  c"), vec!["a ", "b  ", "c"]);
    }
}
