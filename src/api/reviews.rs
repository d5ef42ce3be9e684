//! Human review of held answers (queue and verdicts) and feedback on answers; both are ledger entries.

use actix_web::{HttpResponse, get, post, web};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::{AppState, parse_json_body};
use crate::{
    access::Caller,
    canonical::sha256_hex,
    error::{ApiError, ErrorBody},
    ledger::EntryDraft,
    store::{ReviewRow, Store},
};

#[derive(Debug, Serialize, ToSchema)]
pub struct Review {
    /// The held request's ledger entry.
    pub ledger_index: i64,
    pub request_id: String,
    pub system: String,
    pub created_at: String,
    /// The prompt messages.
    #[schema(value_type = Vec<Object>)]
    pub messages: Value,
    /// The answer that was held.
    pub answer: String,
    /// `pending`, `approved`, `corrected` or `rejected`.
    pub status: String,
    pub verdict_by: Option<String>,
    pub verdict_at: Option<String>,
    pub correction: Option<String>,
    pub comment: Option<String>,
    /// The verdict's ledger entry.
    pub verdict_index: Option<i64>,
}

impl From<ReviewRow> for Review {
    fn from(row: ReviewRow) -> Self {
        Review {
            ledger_index: row.ledger_index,
            request_id: row.request_id,
            system: row.system_id,
            created_at: row.created_at,
            messages: serde_json::from_str(&row.messages).unwrap_or(Value::Null),
            answer: row.answer,
            status: row.status,
            verdict_by: row.verdict_by,
            verdict_at: row.verdict_at,
            correction: row.correction,
            comment: row.comment,
            verdict_index: row.verdict_index,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReviewQuery {
    /// `pending` (default), `approved`, `corrected`, `rejected` or `all`.
    pub status: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReviewList {
    pub items: Vec<Review>,
}

/// The review queue: answers held for human review, oldest first.
#[utoipa::path(
    tag = "reviews", security(("api_key" = ["reviewer", "auditor"])),
    params(ReviewQuery),
    responses((status = 200, body = ReviewList), (status = 422, body = ErrorBody))
)]
#[get("/v1/reviews")]
pub async fn list_reviews(state: web::Data<AppState>, query: web::Query<ReviewQuery>) -> Result<HttpResponse, ApiError> {
    let status = query.status.as_deref().unwrap_or("pending");
    if !["pending", "approved", "corrected", "rejected", "all"].contains(&status) {
        return Err(ApiError::InvalidRequest(format!("status: {status:?} is not pending, approved, corrected, rejected or all")));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::InvalidRequest(format!("limit: {limit} is outside 1..=1000")));
    }
    let rows = state.store.reviews((status != "all").then_some(status), limit).await?;
    Ok(HttpResponse::Ok().json(ReviewList { items: rows.into_iter().map(Review::from).collect() }))
}

/// One held answer with its prompt, and its verdict once given.
#[utoipa::path(
    tag = "reviews", security(("api_key" = ["reviewer", "auditor"])),
    params(("ledger_index" = i64, Path, description = "The held request's ledger entry")),
    responses((status = 200, body = Review), (status = 404, body = ErrorBody))
)]
#[get("/v1/reviews/{ledger_index}")]
pub async fn get_review(state: web::Data<AppState>, index: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let index = index.into_inner();
    let row = state.store.review(index).await?.ok_or_else(|| ApiError::NotFound(format!("no held answer at ledger index {index}")))?;
    Ok(HttpResponse::Ok().json(Review::from(row)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The held answer is right as it is.
    Approve,
    /// The held answer is wrong; `correction` replaces it.
    Correct,
    /// The held answer is wrong and must not be used.
    Reject,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerdictRequest {
    pub verdict: Verdict,
    /// The replacement answer (required with `correct`).
    pub correction: Option<String>,
    pub comment: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Recorded {
    /// The ledger entry that records it.
    pub ledger_index: u64,
}

/// Record a reviewer's verdict on a held answer. The verdict is a ledger entry (type
/// `review`, citing the held request's entry; a correction is recorded by its sha256) and
/// counts as feedback: approve = correct, correct or reject = incorrect.
#[utoipa::path(
    tag = "reviews", security(("api_key" = ["reviewer"])),
    params(("ledger_index" = i64, Path, description = "The held request's ledger entry")),
    request_body = VerdictRequest,
    responses((status = 200, body = Recorded), (status = 404, body = ErrorBody), (status = 409, description = "Already decided", body = ErrorBody), (status = 422, body = ErrorBody))
)]
#[post("/v1/reviews/{ledger_index}/verdict")]
pub async fn record_verdict(state: web::Data<AppState>, caller: Caller, index: web::Path<i64>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let request: VerdictRequest = parse_json_body(&body)?;
    let ledger_index = decide(&state, &caller, index.into_inner(), &request).await?;
    Ok(HttpResponse::Ok().json(Recorded { ledger_index }))
}

/// Records a verdict on the held answer at ledger `index` and returns the verdict's ledger
/// index (the API and the console's review queue).
pub async fn decide(state: &AppState, caller: &Caller, index: i64, request: &VerdictRequest) -> Result<u64, ApiError> {
    let correction = request.correction.as_deref().map(str::trim).filter(|c| !c.is_empty());
    match (request.verdict, correction) {
        (Verdict::Correct, None) => return Err(ApiError::InvalidRequest("correction: required with the verdict \"correct\"".into())),
        (Verdict::Approve | Verdict::Reject, Some(_)) => {
            return Err(ApiError::InvalidRequest("correction: only with the verdict \"correct\"".into()));
        }
        _ => {}
    }
    let held = state.store.review(index).await?.ok_or_else(|| ApiError::NotFound(format!("no held answer at ledger index {index}")))?;
    let (status, correct) = match request.verdict {
        Verdict::Approve => ("approved", true),
        Verdict::Correct => ("corrected", false),
        Verdict::Reject => ("rejected", false),
    };
    // Read before anything is written: a failure here must not follow a recorded verdict.
    let answered = state.router.ledger().entry(index as u64).await?.unwrap_or(Value::Null);
    let now = super::now();
    let mut tx = state.router.ledger().begin().await?;
    let verdict_index = tx.next_index().await?;
    if !Store::decide_review(tx.conn(), index, status, &caller.subject, &now, correction, request.comment.as_deref(), verdict_index as i64).await? {
        return Err(ApiError::Conflict(format!("the held answer at ledger index {index} already has a verdict: {}", held.status)));
    }
    let entry = EntryDraft {
        entry_type: "review",
        request_id: held.request_id.clone(),
        system_id: Some(held.system_id.clone()),
        outcome: status.to_owned(),
        body: json!({
            "subject": {"ledger_index": index, "request_id": held.request_id},
            "verdict": status,
            "correct": correct,
            "answer_sha256": sha256_hex(held.answer.as_bytes()),
            "correction_sha256": correction.map(|c| sha256_hex(c.as_bytes())),
            "comment": request.comment,
            "reviewer": {"id": caller.subject, "key_id": caller.key_id, "role": "reviewer"},
        }),
    };
    let appended = tx.commit(entry).await?;
    count_feedback(state, &held.system_id, &answered, correct);
    Ok(appended.index)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// The answer's ledger entry (`tiergate.ledger_index`); or give `request_id`.
    pub ledger_index: Option<u64>,
    /// The answer's request id (`tiergate.request_id`).
    pub request_id: Option<String>,
    /// Was the answer correct?
    pub correct: bool,
    /// 1 (poor) to 5 (excellent).
    pub rating: Option<u8>,
    pub comment: Option<String>,
}

/// Feedback on an answer: appended to the ledger (type `feedback`, citing the answer's entry),
/// and counted per system and tier served, so small-tier answers can be compared with
/// escalated ones.
#[utoipa::path(
    tag = "reviews", security(("api_key" = ["app", "reviewer"])),
    request_body = FeedbackRequest,
    responses((status = 200, body = Recorded), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody))
)]
#[post("/v1/feedback")]
pub async fn record_feedback(state: web::Data<AppState>, caller: Caller, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let request: FeedbackRequest = parse_json_body(&body)?;
    if request.rating.is_some_and(|r| !(1..=5).contains(&r)) {
        return Err(ApiError::InvalidRequest(format!("rating: {} is outside 1..=5", request.rating.unwrap_or_default())));
    }
    let ledger = state.router.ledger();
    let (index, entry) = match (request.ledger_index, &request.request_id) {
        (Some(index), None) => (index, ledger.entry(index).await?),
        (None, Some(request_id)) => {
            let filter = crate::store::LedgerFilter {
                entry_type: Some("inference".into()),
                request_id: Some(request_id.clone()),
                limit: 1,
                ..Default::default()
            };
            let found = ledger.query(&filter).await?.into_iter().next();
            match found {
                Some(record) => (record.index, Some(record.entry)),
                None => return Err(ApiError::NotFound(format!("request_id: no answer with request id {request_id:?}"))),
            }
        }
        _ => return Err(ApiError::InvalidRequest("ledger_index or request_id: give exactly one".into())),
    };
    let entry = entry.ok_or_else(|| ApiError::NotFound(format!("ledger_index: the ledger has no entry {index}")))?;
    if entry.get("type").and_then(Value::as_str) != Some("inference") {
        return Err(ApiError::InvalidRequest(format!("ledger_index: entry {index} is not an answer (inference entry)")));
    }
    if caller.has_any(&[crate::access::Role::App]) && !caller.has_any(&[crate::access::Role::Reviewer]) {
        let system = entry.pointer("/system/id").and_then(Value::as_str).unwrap_or_default();
        if !caller.may_call(system) {
            return Err(ApiError::Forbidden(format!("API key {} may not give feedback on system {system:?}", caller.key_id)));
        }
    }
    let system = entry.pointer("/system/id").and_then(Value::as_str).unwrap_or_default().to_owned();
    let draft = EntryDraft {
        entry_type: "feedback",
        request_id: entry.get("request_id").and_then(Value::as_str).unwrap_or_default().to_owned(),
        system_id: Some(system.clone()),
        outcome: if request.correct { "correct" } else { "incorrect" }.to_owned(),
        body: json!({
            "subject": {"ledger_index": index, "request_id": entry.get("request_id")},
            "correct": request.correct,
            "rating": request.rating,
            "comment": request.comment,
            "served_tier": entry.get("served_tier"),
            "escalated": entry.get("escalated"),
            "from": {"id": caller.subject, "key_id": caller.key_id},
        }),
    };
    let appended = ledger.append(draft).await.map_err(|e| ApiError::Unavailable(format!("the ledger cannot record feedback right now: {e:#}")))?;
    count_feedback(&state, &system, &entry, request.correct);
    Ok(HttpResponse::Ok().json(Recorded { ledger_index: appended.index }))
}

/// `tiergate_feedback_total{system, tier_served, escalated, correct}`: accuracy of answers
/// served by the small tier against escalated ones.
fn count_feedback(state: &AppState, system: &str, entry: &Value, correct: bool) {
    state.router.observe_label(entry, correct);
    let tier = entry.get("served_tier").and_then(Value::as_u64).map_or_else(|| "none".to_owned(), |t| t.to_string());
    let escalated = entry.get("escalated").and_then(Value::as_bool).unwrap_or(false);
    state
        .router
        .metrics()
        .feedback
        .with_label_values(&[system, &tier, if escalated { "true" } else { "false" }, if correct { "true" } else { "false" }])
        .inc();
}
