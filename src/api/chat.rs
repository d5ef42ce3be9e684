//! `POST /v1/chat/completions`: the OpenAI-compatible endpoint; `model` names a system card.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, http::StatusCode, post, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{AppState, parse_json_body};
use crate::{
    access::Caller,
    error::{ApiError, ErrorBody},
    inference::{Role, Turn},
    routing::{AttemptSummary, ChatRequest, Outcome, RequestFacts, Routed, RoutingError},
    telemetry::current_request_id,
};

/// An OpenAI chat-completions request. Fields tiergate does not use (top_p, seed, …) are
/// accepted and ignored so that existing clients work unchanged.
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
    /// Streaming is not supported yet; `true` is refused with 422.
    #[serde(default)]
    pub stream: Option<bool>,
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
    /// One choice when served; empty when the answer is held for human review.
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
    pub error: Option<String>,
    /// The accept gate's decision: `accept`, `escalate`, `review` or `deny`.
    pub decision: String,
    pub reasons: Vec<String>,
    pub latency_ms: f64,
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
            error: a.error,
            decision: a.decision,
            reasons: a.reasons,
            latency_ms: (a.latency_ms * 1000.0).round() / 1000.0,
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
        (status = 202, description = "Answer held for human review (no choice is returned)", body = ChatCompletionResponse),
        (status = 400, description = "Body is not valid JSON", body = ErrorBody),
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
    let request: ChatCompletionRequest = parse_json_body(&body)?;
    let model = request.model.clone();
    let chat = into_domain(request, &caller)?;
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
        RoutingError::InvalidRequest(message) => ApiError::InvalidRequest(message),
        RoutingError::LedgerUnavailable(cause) => {
            tracing::error!(error = ?cause, "ledger append failed: refusing to serve");
            ApiError::Unavailable("the ledger cannot record requests right now; nothing was served".into())
        }
    })?;
    let tokens: u64 = routed.attempts.iter().map(|a| a.prompt_tokens + a.completion_tokens).sum();
    state.access.record_usage(&caller, tokens, chrono::Utc::now()).await?;
    respond(request_id, model, routed)
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
    if request.stream == Some(true) {
        return Err(ApiError::InvalidRequest("stream: streaming is not supported yet; send \"stream\": false".into()));
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::InvalidRequest("n: only one choice (n = 1) is supported".into()));
    }
    if let Some(t) = request.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::InvalidRequest(format!("temperature: {t} is outside 0..=2")));
        }
    }
    let max_tokens = match (request.max_tokens, request.max_completion_tokens) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if max_tokens == Some(0) {
        return Err(ApiError::InvalidRequest("max_tokens: must be at least 1".into()));
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
                            return Err(ApiError::InvalidRequest(format!(
                                "messages[{i}].content[{j}]: only text parts are supported, got {kind:?}"
                            )));
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
    Ok(ChatRequest { system_id: request.model, turns, max_tokens, temperature: request.temperature, facts })
}

fn respond(request_id: String, model: String, routed: Routed) -> Result<HttpResponse, ApiError> {
    if routed.outcome == Outcome::Denied {
        return Err(ApiError::PolicyDenied {
            message: format!("refused by policy {}: {}", routed.policy, routed.reasons.join("; ")),
            ledger_index: Some(routed.ledger_index),
        });
    }
    let prompt_tokens: u64 = routed.attempts.iter().map(|a| a.prompt_tokens).sum();
    let completion_tokens: u64 = routed.attempts.iter().map(|a| a.completion_tokens).sum();
    let choices = routed
        .answer
        .as_ref()
        .map(|answer| Choice {
            index: 0,
            message: AssistantMessage { role: "assistant".into(), content: answer.text.clone() },
            finish_reason: answer.finish_reason.clone(),
        })
        .into_iter()
        .collect();
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
            attempts: routed.attempts.into_iter().map(AttemptView::from).collect(),
        },
    };
    let mut response = HttpResponse::build(status);
    response
        .insert_header(("X-Tiergate-Outcome", body.tiergate.outcome.clone()))
        .insert_header(("X-Tiergate-Escalated", body.tiergate.escalated.to_string()))
        .insert_header(("X-Tiergate-Ledger-Index", body.tiergate.ledger_index.to_string()));
    if let Some(tier) = body.tiergate.tier_served {
        response.insert_header(("X-Tiergate-Tier", tier.to_string()));
    }
    Ok(response.json(body))
}
