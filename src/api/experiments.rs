//! Experiment endpoints: start an approved experiment, widen it, stop it, promote its
//! treatment, and read its report (computed from the ledger). Submission and approval go
//! through the registry (`/v1/registry/experiments`) like every artifact.

use std::sync::Arc;

use actix_web::{HttpResponse, get, post, web};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::{AppState, parse_json_body};
use crate::{
    error::{ApiError, ErrorBody},
    experiment::{check_document, ppm_to_percent, report},
    registry::{Actor, ArtifactKind, ArtifactRef, GovernanceRecord, LifecycleError},
    store::ExperimentRunRow,
};

/// A run as listed: its experiment, system, state and share.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExperimentRun {
    pub experiment: String,
    pub system: String,
    /// `running`, `stopped` or `promoted`.
    pub state: String,
    pub treatment_percent: f64,
    /// The ledger index of the `experiment_started` entry.
    pub start_index: i64,
    pub started_by: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub end_reason: Option<String>,
}

impl From<ExperimentRunRow> for ExperimentRun {
    fn from(run: ExperimentRunRow) -> Self {
        ExperimentRun {
            experiment: format!("{}@{}", run.experiment_id, run.experiment_version),
            system: run.system_id,
            state: run.state,
            treatment_percent: ppm_to_percent(run.treatment_ppm as u32),
            start_index: run.start_index,
            started_by: run.started_by,
            started_at: run.started_at,
            ended_at: run.ended_at,
            end_reason: run.end_reason,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExperimentRuns {
    pub items: Vec<ExperimentRun>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExperimentStep {
    pub record: GovernanceRecord,
    pub run: ExperimentRun,
}

/// Every experiment run, newest first.
#[utoipa::path(
    tag = "experiments", security(("api_key" = ["auditor", "author", "approver"])),
    responses((status = 200, body = ExperimentRuns), (status = 401, body = ErrorBody))
)]
#[get("/v1/experiments")]
pub async fn list_experiments(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let items = state.store.experiment_runs().await?.into_iter().map(ExperimentRun::from).collect();
    Ok(HttpResponse::Ok().json(ExperimentRuns { items }))
}

/// Start an approved experiment: from the next request on, the configured share of its units
/// is served by the treatment. The control must be the system's active version, the treatment
/// an approved version that loads, and no other experiment may run on the system (422 naming
/// `/system`). Someone other than the experiment's author starts it (four eyes).
#[utoipa::path(
    tag = "experiments", security(("api_key" = ["approver"])),
    params(("id" = String, Path, description = "Experiment id"), ("version" = i64, Path, description = "Approved version")),
    responses(
        (status = 200, description = "Running; recorded in the ledger", body = ExperimentStep),
        (status = 403, description = "The author cannot start their own experiment", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not approved, already running, or its control is no longer active", body = ErrorBody),
        (status = 422, description = "Another experiment runs on the system, or an arm is not approved or does not load", body = ErrorBody),
    )
)]
#[post("/v1/experiments/{id}/versions/{version}/start")]
pub async fn start_experiment(state: web::Data<AppState>, path: web::Path<(String, i64)>, actor: Actor) -> Result<HttpResponse, ApiError> {
    let (id, version) = path.into_inner();
    let reference = ArtifactRef { id, version };
    let stored = state
        .registry
        .get(ArtifactKind::Experiment, &reference)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("experiment {reference} does not exist")))?;
    let document = check_document(&stored.document).map_err(ApiError::InvalidRequest)?;
    // Loaded before anything is recorded: a treatment that cannot serve is refused here.
    let treatment = state.registry.require(ArtifactKind::SystemCard, &document.treatment).await?;
    state
        .loader
        .load(&treatment)
        .await
        .map_err(|error| ApiError::from(LifecycleError::Unprocessable(format!("/treatment: {} cannot be served: {error:#}", document.treatment))))?;
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no randomness for the assignment key: {e}"))?;
    let started = state.registry.start_experiment(state.router.ledger(), &reference, &actor, &super::now(), &key).await?;
    serve(&state, &started.run).await?;
    Ok(HttpResponse::Ok().json(ExperimentStep { record: started.record, run: started.run.into() }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShareRequest {
    /// The new treatment share in percent: above the current one, below 100.
    pub treatment_percent: f64,
}

/// Raise a running experiment's treatment share (a canary widening). Units already in the
/// treatment stay there; a share is never lowered (stop the experiment instead).
#[utoipa::path(
    tag = "experiments", security(("api_key" = ["approver"])),
    params(("id" = String, Path, description = "Experiment id")),
    request_body = ShareRequest,
    responses(
        (status = 200, description = "Widened; recorded in the ledger", body = ExperimentStep),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not running", body = ErrorBody),
        (status = 422, description = "The share does not rise, or is not below 100", body = ErrorBody),
    )
)]
#[post("/v1/experiments/{id}/share")]
pub async fn widen_experiment(state: web::Data<AppState>, id: web::Path<String>, actor: Actor, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let request: ShareRequest = parse_json_body(&body)?;
    let (record, run) = state.registry.widen_experiment(state.router.ledger(), &id, request.treatment_percent, &actor).await?;
    serve(&state, &run).await?;
    Ok(HttpResponse::Ok().json(ExperimentStep { record, run: run.into() }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Why it is stopped, recorded in the ledger.
    pub reason: String,
}

/// Stop a running experiment: every request goes to the control (the active version) again.
#[utoipa::path(
    tag = "experiments", security(("api_key" = ["approver"])),
    params(("id" = String, Path, description = "Experiment id")),
    request_body = StopRequest,
    responses(
        (status = 200, description = "Stopped; recorded in the ledger with the report's digest", body = GovernanceRecord),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not running", body = ErrorBody),
        (status = 422, description = "No reason given", body = ErrorBody),
    )
)]
#[post("/v1/experiments/{id}/stop")]
pub async fn stop_experiment(state: web::Data<AppState>, id: web::Path<String>, actor: Actor, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let request: StopRequest = parse_json_body(&body)?;
    if request.reason.trim().is_empty() {
        return Err(ApiError::InvalidRequest("reason: say why the experiment is stopped".into()));
    }
    let run = state.registry.running_experiment(&id).await?;
    let (_, report) = report::of_run(&state.registry, state.router.ledger(), &run).await?;
    let why = json!({"by": "person", "reason": request.reason, "report_digest": report.digest()});
    let record = state
        .registry
        .stop_experiment(state.router.ledger(), &run, &actor, &super::now(), &request.reason, why)
        .await?
        .ok_or_else(|| ApiError::Conflict(format!("experiment {id} was stopped meanwhile")))?;
    state.router.set_experiment(&run.system_id, None);
    Ok(HttpResponse::Ok().json(record))
}

/// The promotion: the treatment's activation and the report it cites.
#[derive(Debug, Serialize, ToSchema)]
pub struct Promoted {
    pub activation: GovernanceRecord,
    pub report_digest: String,
    pub report: report::ExperimentReport,
}

/// Promote a running experiment: activate its treatment (the usual activation: an approved
/// version, by someone other than its author), citing the digest of the report as computed
/// now; the experiment ends with it.
#[utoipa::path(
    tag = "experiments", security(("api_key" = ["approver"])),
    params(("id" = String, Path, description = "Experiment id")),
    responses(
        (status = 200, description = "The treatment is active; the activation entry cites the report", body = Promoted),
        (status = 403, description = "The treatment's author cannot activate it", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not running, or the treatment cannot be activated", body = ErrorBody),
    )
)]
#[post("/v1/experiments/{id}/promote")]
pub async fn promote_experiment(state: web::Data<AppState>, id: web::Path<String>, actor: Actor) -> Result<HttpResponse, ApiError> {
    let run = state.registry.running_experiment(&id).await?;
    let (document, report) = report::of_run(&state.registry, state.router.ledger(), &run).await?;
    let report_digest = report.digest();
    let treatment = &document.treatment;
    state.registry.check_activation(ArtifactKind::SystemCard, treatment, &actor).await?;
    let version = state.registry.require(ArtifactKind::SystemCard, treatment).await?;
    let route = state
        .loader
        .load(&version)
        .await
        .map_err(|error| ApiError::from(LifecycleError::Unprocessable(format!("system card {treatment} cannot be served: {error:#}"))))?;
    let activation = state.registry.promote_experiment(state.router.ledger(), &run, treatment, &report_digest, &actor, &super::now()).await?;
    state.router.install(route);
    state.router.set_experiment(&run.system_id, None);
    Ok(HttpResponse::Ok().json(Promoted { activation, report_digest, report }))
}

/// The report of an experiment's latest run, computed from the ledger now: per arm requests,
/// outcomes, containment, escalation, denial and error rates, latency p50/p95, cost per request
/// and feedback accuracy with 95% intervals; the mSPRT verdict on the primary metric; the
/// guardrails. Every replica computes the same numbers for the same ledger size.
#[utoipa::path(
    tag = "experiments", security(("api_key" = ["auditor", "author", "approver"])),
    params(("id" = String, Path, description = "Experiment id")),
    responses(
        (status = 200, body = report::ExperimentReport),
        (status = 404, description = "Never started", body = ErrorBody),
    )
)]
#[get("/v1/experiments/{id}/report")]
pub async fn experiment_report(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(report_of(&state, &id).await?))
}

/// The report of experiment `id`'s latest run, as computed now (the API's and the console's).
pub(crate) async fn report_of(state: &AppState, id: &str) -> Result<report::ExperimentReport, ApiError> {
    let run = state.store.latest_experiment_run(id).await?.ok_or_else(|| ApiError::NotFound(format!("experiment {id:?} has never been started")))?;
    Ok(report::of_run(&state.registry, state.router.ledger(), &run).await?.1)
}

/// Serves `run` on this replica now (the others pick it up at their next registry sync).
async fn serve(state: &AppState, run: &ExperimentRunRow) -> Result<(), ApiError> {
    let experiment = state.loader.load_experiment(run).await?;
    state.router.set_experiment(&run.system_id, Some(Arc::new(experiment)));
    Ok(())
}
