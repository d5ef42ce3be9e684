//! The one API error type: every failure at the HTTP edge maps to a status, a stable code and a message.

use actix_web::{HttpResponse, ResponseError, http::StatusCode};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    registry::{CardError, LifecycleError, SchemaViolation},
    telemetry::current_request_id,
};

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
    /// The prompt is longer than the context of every model that tried it: 400.
    #[error("{message}")]
    ContextLengthExceeded { message: String, ledger_index: u64 },
    /// A document that does not parse: 400 with where.
    #[error("{message}")]
    Syntax { message: String, line: usize, column: usize },
    /// A document that breaks its schema: 422 with every violation.
    #[error("{message}")]
    SchemaViolations { message: String, violations: Vec<SchemaViolation> },
    /// A policy bundle that does not compile: 422 with module, line and column.
    #[error("policy bundle does not compile: {0}")]
    PolicyCompile(crate::policy::CompileError),
    /// An OpenAI request parameter tiergate does not implement, given a value that would
    /// change the answer: 400, naming the parameter (`param`), never silently ignored.
    #[error("{message}")]
    UnsupportedParameter { param: String, message: String },
    /// No valid API key on a request that needs one.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid key without the role or scope the request needs.
    #[error("{0}")]
    Forbidden(String),
    /// Rate limit or token budget reached: 429 with `Retry-After`.
    #[error("{message}")]
    TooManyRequests { code: &'static str, message: String, retry_after_s: u64 },
    /// The four-eyes rule: the author of a version may not approve or activate it.
    #[error("{0}")]
    FourEyes(String),
    /// The request does not fit the current state (e.g. activating a draft).
    #[error("{0}")]
    Conflict(String),
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
            ApiError::ContextLengthExceeded { .. } => "context_length_exceeded",
            ApiError::Syntax { .. } => "syntax_error",
            ApiError::PolicyCompile(_) => "policy_compile_error",
            ApiError::SchemaViolations { .. } => "schema_violation",
            ApiError::UnsupportedParameter { .. } => "unsupported_parameter",
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::TooManyRequests { code, .. } => code,
            ApiError::FourEyes(_) => "four_eyes_required",
            ApiError::Conflict(_) => "conflict",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<CardError> for ApiError {
    fn from(error: CardError) -> Self {
        match error {
            CardError::Syntax { line, column, .. } => ApiError::Syntax { message: error.to_string(), line, column },
            CardError::Schema(ref violations) => {
                let violations = violations.clone();
                ApiError::SchemaViolations { message: error.to_string(), violations }
            }
            CardError::Invalid(message) => ApiError::InvalidRequest(message),
        }
    }
}

impl From<LifecycleError> for ApiError {
    fn from(error: LifecycleError) -> Self {
        match error {
            LifecycleError::NotFound(message) => ApiError::NotFound(message),
            LifecycleError::FourEyes(message) => ApiError::FourEyes(message),
            LifecycleError::Conflict(message) => ApiError::Conflict(message),
            LifecycleError::Unprocessable(message) => ApiError::InvalidRequest(message),
            LifecycleError::Card(card) => card.into(),
            LifecycleError::PolicyCompile(error) => ApiError::PolicyCompile(error),
            LifecycleError::Internal(error) => ApiError::from(error),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        // A halted ledger is not a fault of this request or a bug: it is the ledger refusing,
        // by design, to sign or record anything until an operator has looked.
        match error.chain().find_map(|cause| cause.downcast_ref::<crate::ledger::LedgerHalted>()) {
            Some(halted) => ApiError::Unavailable(halted.to_string()),
            None => ApiError::Internal(error),
        }
    }
}

/// The code of an error response, attached to it for metrics.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

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
    /// For `unsupported_parameter`: the request parameter at fault (as OpenAI's `param`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// For `policy_denied`: the ledger entry that records the refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger_index: Option<u64>,
    /// For `policy_compile_error`: the Rego module at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// For `syntax_error` and `policy_compile_error`: where (1-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<TextLocation>,
    /// For `schema_violation`: every violation, each with its JSON path and schema rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub violations: Option<Vec<SchemaViolation>>,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct TextLocation {
    pub line: usize,
    pub column: usize,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::Syntax { .. } | ApiError::ContextLengthExceeded { .. } | ApiError::UnsupportedParameter { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::InvalidRequest(_) | ApiError::SchemaViolations { .. } | ApiError::PolicyCompile(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::FourEyes(_) | ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
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
            ApiError::ContextLengthExceeded { ledger_index, .. } => Some(*ledger_index),
            _ => None,
        };
        let location = match self {
            ApiError::Syntax { line, column, .. } => Some(TextLocation { line: *line, column: *column }),
            ApiError::PolicyCompile(e) => Some(TextLocation { line: e.line as usize, column: e.column as usize }),
            _ => None,
        };
        let module = match self {
            ApiError::PolicyCompile(e) => Some(e.module.clone()),
            _ => None,
        };
        let violations = match self {
            ApiError::SchemaViolations { violations, .. } => Some(violations.clone()),
            _ => None,
        };
        let param = match self {
            ApiError::UnsupportedParameter { param, .. } => Some(param.clone()),
            _ => None,
        };
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::TooManyRequests { retry_after_s, .. } = self {
            response.insert_header((actix_web::http::header::RETRY_AFTER, retry_after_s.to_string()));
        }
        // Read by the error-counting middleware (errors_total{code}).
        response.extensions_mut().insert(ErrorCode(self.code()));
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                request_id: current_request_id().unwrap_or_default(),
                param,
                ledger_index,
                location,
                module,
                violations,
            },
        })
    }
}
