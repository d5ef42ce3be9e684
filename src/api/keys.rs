//! API key management (admin) and a key's view of itself: roles, scopes, limits, usage.

use actix_web::{HttpResponse, delete, get, post, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::{AppState, parse_json_body};
use crate::{
    access::{Caller, KeyInfo, NewKey},
    error::{ApiError, ErrorBody},
};

#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedKey {
    pub key: KeyInfo,
    /// The key itself, `tg_<key id>.<secret>`. Shown this once: only its hash is stored.
    pub token: String,
}

/// Issue an API key. The token in the answer is the only copy of its secret.
#[utoipa::path(
    tag = "keys", security(("api_key" = ["admin"])),
    request_body = NewKey,
    responses((status = 201, body = IssuedKey), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody))
)]
#[post("/v1/keys")]
pub async fn create_key(state: web::Data<AppState>, caller: Caller, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let new: NewKey = parse_json_body(&body)?;
    Ok(HttpResponse::Created().json(issue(&state, &caller, &new).await?))
}

/// Checks a key request and issues it (the API and the console's Keys page).
pub async fn issue(state: &AppState, caller: &Caller, new: &NewKey) -> Result<IssuedKey, ApiError> {
    let subject = new.subject.trim();
    if subject.is_empty() || subject.len() > 200 {
        return Err(ApiError::InvalidRequest("subject: must be 1 to 200 characters".into()));
    }
    if new.roles.is_empty() {
        return Err(ApiError::InvalidRequest("roles: a key needs at least one role".into()));
    }
    if let Some(scope) = new.scopes.iter().flatten().find(|s| s.is_empty()) {
        return Err(ApiError::InvalidRequest(format!("scopes: {scope:?} is not a system id or \"*\"")));
    }
    if new.expires_at.is_some_and(|t| t <= chrono::Utc::now()) {
        return Err(ApiError::InvalidRequest("expires_at: must be in the future".into()));
    }
    let (key, token) = state.access.issue(new, &caller.subject, &super::now()).await?;
    tracing::info!(key_id = %key.key_id, subject = %key.subject, roles = ?key.roles, by = %caller.key_id, "API key issued");
    Ok(IssuedKey { key, token })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub items: Vec<KeyInfo>,
}

/// List every API key (never their secrets).
#[utoipa::path(
    tag = "keys", security(("api_key" = ["admin"])),
    responses((status = 200, body = KeyList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
#[get("/v1/keys")]
pub async fn list_keys(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(KeyList { items: state.access.list().await? }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyStatus {
    #[serde(flatten)]
    pub key: KeyInfo,
    /// Prompt + completion tokens used today (UTC), all tiers.
    pub tokens_used_today: u64,
    /// Tokens left today under the key's budget; absent when it has none.
    pub tokens_left_today: Option<u64>,
}

async fn status_of(state: &AppState, key_id: &str) -> Result<KeyStatus, ApiError> {
    let key = state.access.get(key_id).await?.ok_or_else(|| ApiError::NotFound(format!("key {key_id} does not exist")))?;
    let tokens_used_today = state.access.usage_today(key_id, chrono::Utc::now()).await?;
    let tokens_left_today = key.daily_token_budget.map(|budget| budget.saturating_sub(tokens_used_today));
    Ok(KeyStatus { key, tokens_used_today, tokens_left_today })
}

/// The calling key: its roles, scopes, limits and today's token usage.
#[utoipa::path(
    tag = "keys", security(("api_key" = ["admin", "author", "approver", "app", "reviewer", "auditor"])),
    responses((status = 200, body = KeyStatus), (status = 401, body = ErrorBody))
)]
#[get("/v1/keys/me")]
pub async fn my_key(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(status_of(&state, &caller.key_id).await?))
}

/// One key with today's token usage.
#[utoipa::path(
    tag = "keys", security(("api_key" = ["admin"])),
    params(("key_id" = String, Path, description = "Key id (the public part of the token)")),
    responses((status = 200, body = KeyStatus), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody))
)]
#[get("/v1/keys/{key_id}")]
pub async fn get_key(state: web::Data<AppState>, key_id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(status_of(&state, &key_id).await?))
}

/// Revoke a key; it is refused from the next request on.
#[utoipa::path(
    tag = "keys", security(("api_key" = ["admin"])),
    params(("key_id" = String, Path, description = "Key id")),
    responses((status = 200, body = KeyInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
#[delete("/v1/keys/{key_id}")]
pub async fn revoke_key(state: web::Data<AppState>, caller: Caller, key_id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(revoke(&state, &caller, &key_id).await?))
}

/// Revokes a key (the API and the console's Keys page).
pub async fn revoke(state: &AppState, caller: &Caller, key_id: &str) -> Result<KeyInfo, ApiError> {
    let Some(existing) = state.access.get(key_id).await? else {
        return Err(ApiError::NotFound(format!("key {key_id} does not exist")));
    };
    if !state.access.revoke(key_id, &super::now()).await? {
        return Err(ApiError::Conflict(format!("key {key_id} was already revoked at {}", existing.revoked_at.unwrap_or_default())));
    }
    tracing::info!(key_id = %key_id, by = %caller.key_id, "API key revoked");
    state.access.get(key_id).await?.ok_or_else(|| ApiError::NotFound(format!("key {key_id} does not exist")))
}
