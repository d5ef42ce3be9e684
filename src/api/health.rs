//! Liveness and readiness probes.

use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `ready` or `not_ready`.
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    checks: Option<Checks>,
}

#[derive(Serialize, ToSchema)]
pub struct Checks {
    database: String,
    /// Active systems with loaded models and compiled policies.
    systems: Vec<String>,
    ledger_entries: Option<i64>,
    /// `ok`, or why the ledger halted: the stored tree contradicts a checkpoint it signed, so
    /// nothing is signed or served until an operator runs `tiergate ledger recover`.
    ledger_integrity: String,
    /// Witnessing of the ledger's checkpoints, when witnesses are configured. Informational:
    /// a witness that is down delays cosignatures but never makes the gateway unready.
    #[serde(skip_serializing_if = "Option::is_none")]
    ledger_witnesses: Option<crate::ledger::WitnessHealth>,
    /// Every tier (`system/tier`): its circuit breaker and queue. An open circuit means the
    /// tier failed repeatedly and is skipped (the policy decides what happens instead).
    tiers: std::collections::BTreeMap<String, TierHealth>,
}

#[derive(Serialize, ToSchema)]
pub struct TierHealth {
    /// `closed`, `open` or `half_open`.
    circuit: String,
    /// Requests waiting for the tier.
    queued: usize,
}

/// Liveness: the process is up and answering.
#[utoipa::path(tag = "operations", responses((status = 200, body = Health)))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok".into(), checks: None })
}

/// Readiness: the database answers, the ledger extends every checkpoint it signed, and at
/// least one system is loaded (its models and policy were loaded and compiled at start-up).
#[utoipa::path(tag = "operations", responses((status = 200, body = Health), (status = 503, body = Health)))]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let database = match state.store.ping().await {
        Ok(()) => "ok".to_owned(),
        Err(error) => format!("error: {error:#}"),
    };
    let ledger_entries = state.store.ledger_count().await.ok();
    let systems = state.router.system_ids();
    let tiers = state
        .router
        .tier_health()
        .into_iter()
        .map(|(tier, (circuit, queued))| {
            let circuit = serde_json::to_value(circuit).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            (tier, TierHealth { circuit, queued })
        })
        .collect();
    let ledger_integrity = state.router.ledger().contradiction().map_or_else(|| "ok".to_owned(), |c| format!("halted: {c}"));
    let ledger = state.router.ledger();
    let ledger_witnesses = match ledger.witnessing() {
        Some(witnessing) => match witnessing.health(ledger).await {
            Ok(health) => Some(health),
            Err(error) => {
                tracing::warn!(error = ?error, "reading the witnessed state of the ledger failed");
                None
            }
        },
        None => None,
    };
    let ready = database == "ok" && ledger_integrity == "ok" && !systems.is_empty();
    let body = Health {
        status: if ready { "ready" } else { "not_ready" }.into(),
        checks: Some(Checks { database, systems, ledger_entries, ledger_integrity, ledger_witnesses, tiers }),
    };
    if ready { HttpResponse::Ok().json(body) } else { HttpResponse::ServiceUnavailable().json(body) }
}
