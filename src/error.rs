//! The one API error type: every failure at the HTTP edge maps to a status, a stable code and a message.

use actix_web::{HttpResponse, ResponseError, http::StatusCode};
use serde::Serialize;
use utoipa::ToSchema;

use crate::telemetry::current_request_id;

/// An error returned to an API caller. The `code` strings are part of the API contract: clients
/// match on them, so never rename one.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    MalformedJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    UnknownSystem(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    PolicyDenied { message: String, ledger_index: Option<u64> },
    #[error("{0}")]
    Unavailable(String),
    /// The cause is logged, never shown: 5xx bodies stay opaque.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::UnknownSystem(_) => "unknown_system",
            ApiError::NotFound(_) => "not_found",
            ApiError::PolicyDenied { .. } => "policy_denied",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        ApiError::Internal(error)
    }
}

/// The error body of every 4xx and 5xx response.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "invalid_request", "message": "messages: must contain at least one message", "request_id": "0193b2c4-3f1e-7c2a-9d41-5f0e8a7b6c5d"}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `malformed_json`, `invalid_request`, `unknown_system`,
    /// `policy_denied`, `unavailable`, `internal`.
    pub code: String,
    /// What was wrong and where.
    pub message: String,
    pub request_id: String,
    /// For `policy_denied`: the ledger entry that records the refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger_index: Option<u64>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidRequest(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UnknownSystem(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::PolicyDenied { .. } => StatusCode::FORBIDDEN,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(cause) = self {
            tracing::error!(error = ?cause, "request failed");
        } else if let ApiError::Unavailable(_) = self {
            tracing::warn!(error = %self, "request refused: unavailable");
        }
        let ledger_index = match self {
            ApiError::PolicyDenied { ledger_index, .. } => *ledger_index,
            _ => None,
        };
        HttpResponse::build(self.status_code()).json(ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                request_id: current_request_id().unwrap_or_default(),
                ledger_index,
            },
        })
    }
}
