//! Refitting a tier's confidence model on the answers people judged, as the ledger records them.

use actix_web::{HttpResponse, http::header, post, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{AppState, parse_json_body, registry::VersionDetail};
use crate::{
    confidence::{
        Feature, default_id,
        fit::{self, DEFAULT_FEATURES},
        labels::labelled_answers,
    },
    error::{ApiError, ErrorBody},
    registry::{Actor, CardKind},
};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FitRequest {
    /// The system whose served version's tier is refitted.
    pub system: String,
    /// The tier, by index (0 = the first).
    pub tier: usize,
    /// The confidence model to store a new version of (default `<system>-<tier name>`).
    pub id: Option<String>,
    /// Only labels recorded at or after this time (RFC 3339).
    pub since: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FitResponse {
    /// False when an identical version already existed (nothing written).
    pub created: bool,
    /// The governance entry recording the submission.
    pub ledger_index: Option<u64>,
    pub version: VersionDetail,
    /// Labelled answers the model was fitted on.
    pub labelled: usize,
    /// AUROC, ECE, Brier, log loss and reliability on held-out folds.
    #[schema(value_type = Object)]
    pub held_out: Value,
}

/// Fit a tier's confidence model on the ledger: every answer of that tier (the model it runs
/// now) that has feedback or a review verdict, with the signals its attempt recorded; five-fold
/// held-out figures as `tiergate calibrate --fit-confidence` reports them; stored as a new draft
/// version for a second person to approve. Too few labelled answers (fewer than 50, or fewer
/// than 10 right or 10 wrong), a missing signal, or a held-out AUROC below 0.6 is 422, and
/// nothing is stored.
#[utoipa::path(
    tag = "registry", security(("api_key" = ["author"])),
    request_body = FitRequest,
    responses(
        (status = 201, description = "New draft confidence model version", body = FitResponse),
        (status = 200, description = "Identical to an existing version", body = FitResponse),
        (status = 404, description = "No such system is served", body = ErrorBody),
        (status = 422, description = "No such tier, a bad time, too few labelled answers, or a weak signal", body = ErrorBody),
    )
)]
#[post("/v1/confidence-models/fit")]
pub async fn fit_from_ledger(state: web::Data<AppState>, actor: Actor, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let request: FitRequest = parse_json_body(&body)?;
    let system = state
        .router
        .systems()
        .into_iter()
        .find(|s| s.reference.id == request.system)
        .ok_or_else(|| ApiError::NotFound(format!("system: no system {:?} is served", request.system)))?;
    let tier = system.tiers.get(request.tier).ok_or_else(|| {
        ApiError::InvalidRequest(format!("tier: {} is not a tier of {} (it has {})", request.tier, system.reference, system.tiers.len()))
    })?;
    let since = super::ledger::rfc3339_param("since", &request.since)?;
    let ledger = state.router.ledger();
    let labels = labelled_answers(ledger, &system.reference.id, tier.index, &tier.model, since.as_deref()).await?;
    let mut features = DEFAULT_FEATURES.to_vec();
    if system.self_check {
        features.push(Feature::SelfCheckYes);
    }
    let fitted = fit::fit(&labels.samples, &features).map_err(|error| {
        ApiError::InvalidRequest(format!("tier {} of {} ({}): no confidence model: {error}", tier.index, system.reference, tier.model))
    })?;
    let id = request.id.clone().unwrap_or_else(|| default_id(&system.reference.id, &tier.name));
    let range = match (labels.first_label_index, labels.last_label_index) {
        (Some(first), Some(last)) => format!("ledger entries {first}..={last}"),
        _ => "the ledger".to_owned(),
    };
    let report = fit::fit_report(&fitted, &format!("feedback and review verdicts in {range}"), &labels.digest, "POST /v1/confidence-models/fit");
    let document = fit::document(
        &id,
        &format!("P(correct) of the {:?} tier's answers ({}) in system {}, refitted on people's labels", tier.name, tier.model, system.reference.id),
        &tier.model.to_string(),
        &fitted,
        report,
    );
    let text = serde_json::to_string_pretty(&document).map_err(anyhow::Error::from)?;
    let submission = state.registry.submit_card(ledger, CardKind::ConfidenceModel, &text, &actor, &super::now()).await?;
    let reference = &submission.stored.reference;
    let version = super::registry::find(&state, super::registry::CardCollection::ConfidenceModels, &reference.id, reference.version).await?;
    let body = FitResponse {
        created: submission.stored.created,
        ledger_index: submission.ledger_index,
        version: super::registry::detail(version)?,
        labelled: labels.samples.len(),
        held_out: serde_json::to_value(fitted.held_out()).map_err(anyhow::Error::from)?,
    };
    let location = format!("/v1/registry/confidence-models/{}/versions/{}", reference.id, reference.version);
    let mut response = if body.created { HttpResponse::Created() } else { HttpResponse::Ok() };
    Ok(response.insert_header((header::LOCATION, location)).json(body))
}
