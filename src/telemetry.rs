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

/// The OTLP trace pipeline, when one is configured; flushed by [`shutdown`].
static TRACER_PROVIDER: std::sync::OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> = std::sync::OnceLock::new();

/// Installs the global subscriber: human-readable lines, level from `RUST_LOG` (default `info`).
/// Safe to call more than once (later calls are ignored), which tests rely on.
///
/// Spans are also exported over OTLP (HTTP/protobuf) when the standard variable
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; otherwise
/// nothing is exported. The other `OTEL_*` variables (service name, batch delay, headers) apply.
pub fn init() {
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,mistralrs_core=warn,sqlx=warn"));
    // Logs go to stderr: stdout carries only what scripts read (the bound address).
    let logs = fmt::layer().with_target(false).with_writer(std::io::stderr);
    let otlp = match otlp_tracer() {
        Ok(tracer) => tracer.map(|tracer| tracing_opentelemetry::layer().with_tracer(tracer)),
        Err(error) => {
            eprintln!("OTLP trace export is configured but cannot start: {error:#}");
            None
        }
    };
    let _ = tracing_subscriber::registry().with(filter).with(logs).with(otlp).try_init();
}

fn otlp_tracer() -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracer>> {
    use opentelemetry::trace::TracerProvider;
    let configured = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
    if !configured {
        return Ok(None);
    }
    // The builder reads the endpoint and the other OTEL_* settings from the environment.
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("tiergate").build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let tracer = provider.tracer("tiergate");
    let _ = TRACER_PROVIDER.set(provider);
    Ok(Some(tracer))
}

/// Sends the spans still waiting in the OTLP batch; call before the process exits.
pub fn shutdown() {
    if let Some(provider) = TRACER_PROVIDER.get() {
        let _ = provider.shutdown();
    }
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
pub async fn request_id_middleware(req: ServiceRequest, next: Next<impl MessageBody>) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let request_id = choose_request_id(req.headers().get(REQUEST_ID_HEADER));
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %req.method(),
        path = %req.path(),
    );
    let started = std::time::Instant::now();
    let id_for_scope = request_id.clone();
    let mut response = REQUEST_ID.scope(id_for_scope, next.call(req).instrument(span.clone())).await?;
    span.in_scope(|| tracing::info!(status = response.status().as_u16(), elapsed_ms = started.elapsed().as_secs_f64() * 1000.0, "request finished"));
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
