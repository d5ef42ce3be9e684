//! Tracing subscriber set-up and per-request ids (echoed in `X-Request-Id`, carried by every log line).

use actix_web::{
    Error,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::header::{HeaderName, HeaderValue},
    middleware::Next,
};
use tracing::Instrument;
use tracing_subscriber::{EnvFilter, fmt};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Installs the global subscriber: human-readable lines, level from `RUST_LOG` (default `info`).
/// Safe to call more than once (later calls are ignored), which tests rely on.
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,mistralrs_core=warn,sqlx=warn"));
    // Logs go to stderr: stdout carries only what scripts read (the bound address).
    let _ = fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr).try_init();
}

/// The id of the request being handled on this task, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(|id| id.clone()).ok()
}

/// A well-formed id supplied by the caller is kept (so a trace can span services); anything
/// else is replaced by a fresh UUIDv7, which sorts by time.
fn choose_request_id(supplied: Option<&HeaderValue>) -> String {
    supplied
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128)
        .filter(|id| id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// Middleware: assigns the request id, opens the request span, logs the outcome and echoes the id.
pub async fn request_id_middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let request_id = choose_request_id(req.headers().get(REQUEST_ID_HEADER));
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %req.method(),
        path = %req.path(),
    );
    let started = std::time::Instant::now();
    let id_for_scope = request_id.clone();
    let mut response = REQUEST_ID
        .scope(id_for_scope, next.call(req).instrument(span.clone()))
        .await?;
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request finished"
        )
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_supplied_id_is_kept_and_a_bad_one_replaced() {
        let good = HeaderValue::from_static("abc-123");
        let bad = HeaderValue::from_static("has spaces");

        assert_eq!(choose_request_id(Some(&good)), "abc-123");
        assert_ne!(choose_request_id(Some(&bad)), "has spaces");
        assert_eq!(choose_request_id(None).len(), 36);
    }
}
