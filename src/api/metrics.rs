//! The Prometheus endpoint, and the middleware that counts error responses by code.

use actix_web::{
    Error, HttpResponse,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    get,
    middleware::Next,
    web,
};

use super::AppState;
use crate::{
    confidence::monitor::CalibrationState,
    error::{ApiError, ErrorCode},
    routing::{CircuitState, drift::SignalDrift},
};

/// Metrics in the Prometheus text format (requests, escalation and containment, latencies,
/// gateway overhead, tokens and cost per tier, policy time, ledger commits, queues, errors).
#[utoipa::path(
    tag = "operations", security(("api_key" = ["auditor", "admin"])),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String))
)]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let metrics = state.router.metrics();
    for (tier, (circuit, queued)) in state.router.tier_health() {
        let (system, index) = tier.rsplit_once('/').unwrap_or((tier.as_str(), ""));
        metrics.queued.with_label_values(&[system, index]).set(queued as i64);
        metrics.circuit_open.with_label_values(&[system, index]).set(i64::from(circuit == CircuitState::Open));
    }
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(metrics.render()?))
}

/// Drift of each system's traffic on this replica: the first tier's confidence and the prompt
/// length, latest window against the baseline window, as a population stability index. A
/// signal whose PSI crosses `drift_psi_threshold` is `alerting`, and each crossing is a governance
/// entry in the ledger.
#[utoipa::path(
    tag = "operations", security(("api_key" = ["auditor", "admin"])),
    responses((status = 200, description = "By system, then signal (`confidence`, `prompt_length`)", body = std::collections::BTreeMap<String, std::collections::BTreeMap<String, SignalDrift>>))
)]
#[get("/v1/drift")]
pub async fn drift(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.router.drift_report())
}

/// Calibration of each tier's P(correct) on this replica: the latest answers people labelled
/// (feedback, review verdicts) of every tier whose system card cites a confidence model, with
/// their expected calibration error and, per tenth of predicted P, the count, mean prediction
/// and observed accuracy. An ECE crossing `calibration_ece_threshold` is `alerting`, and each
/// crossing is a governance entry in the ledger naming the confidence model version.
#[utoipa::path(
    tag = "operations", security(("api_key" = ["auditor", "admin"])),
    responses((status = 200, description = "By `system/tier`", body = std::collections::BTreeMap<String, CalibrationState>))
)]
#[get("/v1/calibration")]
pub async fn calibration(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.router.calibration_report())
}

/// Counts every error response by its code (`tiergate_errors_total{code}`).
pub async fn count_errors(req: ServiceRequest, next: Next<impl MessageBody>) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let response = next.call(req).await?;
    if let (Some(state), Some(code)) = (state, response.response().extensions().get::<ErrorCode>().copied()) {
        state.router.metrics().errors.with_label_values(&[code.0]).inc();
    }
    Ok(response)
}
