//! Registry endpoints: submit, list, get and diff card versions; approve, activate, retire, roll
//! back; CycloneDX and Markdown exports of model cards.

use actix_web::{HttpResponse, delete, get, http::header, post, put, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{AppState, parse_json_body};
use crate::{
    error::{ApiError, ErrorBody},
    policy::{Gate, GateDecision, ReplayReport, TestReport, TierPrices, replay, shadow_report},
    registry::{
        Actor, ArtifactKind, ArtifactRef, CardKind, Change, GovernanceRecord, LifecycleError, ModelCard, SystemCard, cyclonedx, diff, markdown,
    },
    store::{AliasHistoryRow, LedgerFilter, StoredArtifactVersion},
};

/// The collections of the registry, as they appear in paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CardCollection {
    ModelCards,
    SystemCards,
    Policies,
    /// Stored by `tiergate calibrate`; read and approved here, never submitted or activated.
    CalibrationReports,
    /// A tier's signals → P(correct): fitted by `tiergate calibrate --fit-confidence` (stored
    /// as a draft) or submitted here; cited by version from system cards once approved.
    ConfidenceModels,
    /// Live A/B tests and canaries: submitted and approved here, started and ended through
    /// `/v1/experiments`.
    Experiments,
}

impl CardCollection {
    fn kind(self) -> ArtifactKind {
        match self {
            CardCollection::ModelCards => ArtifactKind::ModelCard,
            CardCollection::SystemCards => ArtifactKind::SystemCard,
            CardCollection::Policies => ArtifactKind::PolicyBundle,
            CardCollection::CalibrationReports => ArtifactKind::CalibrationReport,
            CardCollection::ConfidenceModels => ArtifactKind::ConfidenceModel,
            CardCollection::Experiments => ArtifactKind::Experiment,
        }
    }

    fn path(self) -> &'static str {
        match self {
            CardCollection::ModelCards => "model-cards",
            CardCollection::SystemCards => "system-cards",
            CardCollection::Policies => "policies",
            CardCollection::CalibrationReports => "calibration-reports",
            CardCollection::ConfidenceModels => "confidence-models",
            CardCollection::Experiments => "experiments",
        }
    }
}

/// One version as listed: everything but the document itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionSummary {
    pub kind: String,
    pub id: String,
    pub version: i64,
    /// `sha256:<hex>` of the canonical JSON form; what the ledger records.
    pub digest: String,
    /// `draft`, `approved`, `active` or `retired`.
    pub status: String,
    pub author: String,
    pub created_at: String,
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
}

/// One version in full: the document as submitted, its canonical JSON form and the parsed document.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionDetail {
    #[serde(flatten)]
    pub summary: VersionSummary,
    /// The document exactly as submitted (YAML or JSON text).
    pub original: String,
    /// The canonical JSON bytes the digest is computed over.
    pub canonical: String,
    #[schema(value_type = Object)]
    pub document: Value,
}

impl From<StoredArtifactVersion> for VersionSummary {
    fn from(v: StoredArtifactVersion) -> Self {
        VersionSummary {
            kind: v.kind,
            id: v.id,
            version: v.version,
            digest: v.digest,
            status: v.status,
            author: v.author,
            created_at: v.created_at,
            approved_by: v.approved_by,
            approved_at: v.approved_at,
        }
    }
}

pub(crate) fn detail(version: StoredArtifactVersion) -> Result<VersionDetail, ApiError> {
    let document: Value = serde_json::from_str(&version.canonical).map_err(|e| {
        ApiError::Internal(anyhow::anyhow!("stored canonical form of {} {}@{} is not JSON: {e}", version.kind, version.id, version.version))
    })?;
    let original = version.original.clone();
    let canonical = version.canonical.clone();
    Ok(VersionDetail { summary: version.into(), original, canonical, document })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubmissionBody {
    /// False when a version with identical content already existed: that version is returned
    /// and nothing was written.
    pub created: bool,
    /// The ledger entry recording the submission (new versions only).
    pub ledger_index: Option<u64>,
    pub version: VersionDetail,
    /// Policy bundles: the test run and line coverage (a bundle with failing tests is stored
    /// as a draft but cannot be approved).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestReport>,
}

/// Submit a new draft version. Model and system cards: the card in YAML or JSON (JSON is YAML),
/// its `id` naming the card; every schema violation is reported at once (422, with JSON paths
/// and schema rules); text that does not parse is 400 with line and column; a system card
/// pinning a version that does not exist is 422 naming it. Policies: a JSON bundle
/// `{"id", "modules": {"<name>.rego": "<Rego v1>", …}, "data": {…}}`, compiled (422 with module,
/// line and column when it does not compile) and tested (`test_*` rules of `*_test.rego`
/// modules). Identical content returns the existing version (200) and creates nothing.
#[utoipa::path(
    tag = "registry", security(("api_key" = ["author"])),
    params(
        ("collection" = CardCollection, Path, description = "model-cards, system-cards, policies, calibration-reports, confidence-models or experiments"),
    ),
    request_body(content = String, content_type = "application/yaml", description = "A card (YAML or JSON) or a policy bundle (JSON)"),
    responses(
        (status = 201, description = "New draft version", body = SubmissionBody),
        (status = 200, description = "Identical content: the existing version", body = SubmissionBody),
        (status = 400, description = "Not YAML/JSON: line and column", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 422, description = "Schema violations (all of them), a missing reference, or Rego that does not compile", body = ErrorBody),
    )
)]
#[post("/v1/registry/{collection}")]
pub async fn submit_card(
    state: web::Data<AppState>,
    collection: web::Path<CardCollection>,
    actor: Actor,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let collection = collection.into_inner();
    let text = std::str::from_utf8(&body).map_err(|e| ApiError::MalformedJson(format!("request body is not UTF-8: {e}")))?;
    if text.trim().is_empty() {
        return Err(ApiError::MalformedJson("request body is empty; expected a card (YAML or JSON) or a policy bundle (JSON)".into()));
    }
    let ledger = state.router.ledger();
    let (submission, tests) = match collection {
        CardCollection::ModelCards | CardCollection::SystemCards | CardCollection::ConfidenceModels | CardCollection::Experiments => {
            let kind = match collection {
                CardCollection::ModelCards => CardKind::Model,
                CardCollection::SystemCards => CardKind::System,
                CardCollection::Experiments => CardKind::Experiment,
                _ => CardKind::ConfidenceModel,
            };
            (state.registry.submit_card(ledger, kind, text, &actor, &super::now()).await?, None)
        }
        CardCollection::Policies => {
            let document: Value = parse_json_body(&body)?;
            let (submission, report) = state.registry.submit_bundle(ledger, text, &document, &actor, &super::now()).await?;
            (submission, Some(report))
        }
        CardCollection::CalibrationReports => {
            return Err(ApiError::InvalidRequest("calibration reports are measured, not written: `tiergate calibrate` stores them".into()));
        }
    };
    let reference = &submission.stored.reference;
    let version = state
        .store
        .artifact_version(collection.kind().as_str(), &reference.id, reference.version)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("version {reference} vanished after submission")))?;
    let body = SubmissionBody { created: submission.stored.created, ledger_index: submission.ledger_index, version: detail(version)?, tests };
    let location = format!("/v1/registry/{}/{}/versions/{}", collection.path(), reference.id, reference.version);
    let mut response = if body.created { HttpResponse::Created() } else { HttpResponse::Ok() };
    Ok(response.insert_header((header::LOCATION, location)).json(body))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactSummary {
    pub id: String,
    pub latest_version: i64,
    /// The version the `active` alias points at, if any.
    pub active_version: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactList {
    pub items: Vec<ArtifactSummary>,
}

/// List the cards of a collection with their latest and active versions.
#[utoipa::path(
    tag = "registry", security(("api_key" = ["auditor", "author", "approver"])),
    params(("collection" = CardCollection, Path, description = "model-cards, system-cards, policies, calibration-reports, confidence-models or experiments")),
    responses((status = 200, body = ArtifactList))
)]
#[get("/v1/registry/{collection}")]
pub async fn list_cards(state: web::Data<AppState>, collection: web::Path<CardCollection>) -> Result<HttpResponse, ApiError> {
    let items = state
        .store
        .artifact_summaries(collection.kind().as_str())
        .await?
        .into_iter()
        .map(|(id, latest_version, active_version)| ArtifactSummary { id, latest_version, active_version })
        .collect();
    Ok(HttpResponse::Ok().json(ArtifactList { items }))
}

/// A move of the `active` alias.
#[derive(Debug, Serialize, ToSchema)]
pub struct AliasMoveBody {
    pub version: i64,
    pub previous: Option<i64>,
    /// `seed` (shipped file at start-up), `activate` or `rollback`.
    pub action: String,
    pub actor: String,
    pub changed_at: String,
}

impl From<AliasHistoryRow> for AliasMoveBody {
    fn from(row: AliasHistoryRow) -> Self {
        AliasMoveBody { version: row.version, previous: row.previous, action: row.action, actor: row.actor, changed_at: row.changed_at }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionList {
    pub id: String,
    pub active_version: Option<i64>,
    /// Oldest first. Versions are never edited or deleted.
    pub versions: Vec<VersionSummary>,
    /// Every activation and rollback, oldest first.
    pub activations: Vec<AliasMoveBody>,
}

/// List every version of one card, and the history of its activations.
#[utoipa::path(
    tag = "registry", security(("api_key" = ["auditor", "author", "approver"])),
    params(
        ("collection" = CardCollection, Path, description = "model-cards, system-cards, policies, calibration-reports, confidence-models or experiments"),
        ("id" = String, Path, description = "Card id"),
    ),
    responses((status = 200, body = VersionList), (status = 404, body = ErrorBody))
)]
#[get("/v1/registry/{collection}/{id}/versions")]
pub async fn list_versions(state: web::Data<AppState>, path: web::Path<(CardCollection, String)>) -> Result<HttpResponse, ApiError> {
    let (collection, id) = path.into_inner();
    let kind = collection.kind().as_str();
    let versions = state.store.artifact_versions(kind, &id).await?;
    if versions.is_empty() {
        return Err(ApiError::NotFound(format!("{kind} {id:?} does not exist")));
    }
    let active_version = state.store.artifact_alias(kind, &id, "active").await?;
    let activations = state.store.artifact_alias_history(kind, &id, "active").await?.into_iter().map(Into::into).collect();
    let versions = versions.into_iter().map(Into::into).collect();
    Ok(HttpResponse::Ok().json(VersionList { id, active_version, versions, activations }))
}

pub(crate) async fn find(state: &AppState, collection: CardCollection, id: &str, version: i64) -> Result<StoredArtifactVersion, ApiError> {
    let kind = collection.kind().as_str();
    state.store.artifact_version(kind, id, version).await?.ok_or_else(|| ApiError::NotFound(format!("{kind} {id}@{version} does not exist")))
}

/// Get one version: original text, canonical JSON, digest, status, author and timestamps.
#[utoipa::path(
    tag = "registry", security(("api_key" = ["auditor", "author", "approver"])),
    params(
        ("collection" = CardCollection, Path, description = "model-cards, system-cards, policies, calibration-reports, confidence-models or experiments"),
        ("id" = String, Path, description = "Card id"),
        ("version" = i64, Path, description = "Version number, from 1"),
    ),
    responses((status = 200, body = VersionDetail), (status = 404, body = ErrorBody))
)]
#[get("/v1/registry/{collection}/{id}/versions/{version}")]
pub async fn get_version(state: web::Data<AppState>, path: web::Path<(CardCollection, String, i64)>) -> Result<HttpResponse, ApiError> {
    let (collection, id, version) = path.into_inner();
    Ok(HttpResponse::Ok().json(detail(find(&state, collection, &id, version).await?)?))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct DiffQuery {
    /// The older version.
    pub from: i64,
    /// The newer version.
    pub to: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionRef {
    pub version: i64,
    pub digest: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DiffBody {
    pub id: String,
    pub from: VersionRef,
    pub to: VersionRef,
    /// Every difference between the two documents (canonical forms), by JSON Pointer.
    pub changes: Vec<Change>,
}

/// The differences between two versions of a card.
#[utoipa::path(
    tag = "registry", security(("api_key" = ["auditor", "author", "approver"])),
    params(
        ("collection" = CardCollection, Path, description = "model-cards, system-cards, policies, calibration-reports, confidence-models or experiments"),
        ("id" = String, Path, description = "Card id"),
        DiffQuery,
    ),
    responses((status = 200, body = DiffBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody))
)]
#[get("/v1/registry/{collection}/{id}/diff")]
pub async fn diff_versions(
    state: web::Data<AppState>,
    path: web::Path<(CardCollection, String)>,
    query: web::Query<DiffQuery>,
) -> Result<HttpResponse, ApiError> {
    let (collection, id) = path.into_inner();
    let old = detail(find(&state, collection, &id, query.from).await?)?;
    let new = detail(find(&state, collection, &id, query.to).await?)?;
    let changes = diff(&old.document, &new.document);
    Ok(HttpResponse::Ok().json(DiffBody {
        id,
        from: VersionRef { version: old.summary.version, digest: old.summary.digest },
        to: VersionRef { version: new.summary.version, digest: new.summary.digest },
        changes,
    }))
}

/// Approve a draft version. The approver must not be its author (four-eyes).
#[utoipa::path(
    tag = "registry", security(("api_key" = ["approver"])),
    params(
        ("collection" = CardCollection, Path, description = "model-cards, system-cards, policies, calibration-reports, confidence-models or experiments"),
        ("id" = String, Path, description = "Card id"),
        ("version" = i64, Path, description = "Version number"),
    ),
    responses(
        (status = 200, description = "Approved; recorded in the ledger", body = GovernanceRecord),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The author cannot approve their own version", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not a draft", body = ErrorBody),
    )
)]
#[post("/v1/registry/{collection}/{id}/versions/{version}/approve")]
pub async fn approve_version(
    state: web::Data<AppState>,
    path: web::Path<(CardCollection, String, i64)>,
    actor: Actor,
) -> Result<HttpResponse, ApiError> {
    let (collection, id, version) = path.into_inner();
    let reference = ArtifactRef { id, version };
    let record = state.registry.approve(state.router.ledger(), collection.kind(), &reference, &actor, &super::now()).await?;
    Ok(HttpResponse::Ok().json(record))
}

/// Make an approved version active. For a system card, every model card and policy version it
/// pins must be approved, and the new version is loaded before it replaces the one serving, so
/// a version that cannot be served is refused and the old one keeps serving.
#[utoipa::path(
    tag = "registry", security(("api_key" = ["approver"])),
    params(
        ("collection" = CardCollection, Path, description = "model-cards, system-cards, policies, calibration-reports, confidence-models or experiments"),
        ("id" = String, Path, description = "Card id"),
        ("version" = i64, Path, description = "Version number"),
    ),
    responses(
        (status = 200, description = "Active; recorded in the ledger", body = GovernanceRecord),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The author cannot activate their own version", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not approved, already active, or pins unapproved versions", body = ErrorBody),
        (status = 422, description = "The system cannot be served (a model or policy does not load)", body = ErrorBody),
    )
)]
#[post("/v1/registry/{collection}/{id}/versions/{version}/activate")]
pub async fn activate_version(
    state: web::Data<AppState>,
    path: web::Path<(CardCollection, String, i64)>,
    actor: Actor,
) -> Result<HttpResponse, ApiError> {
    let (collection, id, version) = path.into_inner();
    let reference = ArtifactRef { id, version };
    let record = make_active(&state, collection.kind(), &reference, &actor, false).await?;
    Ok(HttpResponse::Ok().json(record))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The earlier approved version to return to; by default the version active before the
    /// current one.
    pub to_version: Option<i64>,
}

/// Roll back: point `active` at an earlier approved version. Nothing is rewritten; the
/// rollback is a new alias move and a new ledger entry, and every version stays retrievable.
#[utoipa::path(
    tag = "registry", security(("api_key" = ["approver"])),
    params(
        ("collection" = CardCollection, Path, description = "model-cards, system-cards, policies, calibration-reports, confidence-models or experiments"),
        ("id" = String, Path, description = "Card id"),
    ),
    request_body(content = Option<RollbackRequest>, description = "Optional; empty body = previous active version"),
    responses(
        (status = 200, description = "Rolled back; recorded in the ledger", body = GovernanceRecord),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "No earlier version, or it is not approved", body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
#[post("/v1/registry/{collection}/{id}/rollback")]
pub async fn rollback_version(
    state: web::Data<AppState>,
    path: web::Path<(CardCollection, String)>,
    actor: Actor,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (collection, id) = path.into_inner();
    let request: RollbackRequest = if body.iter().all(u8::is_ascii_whitespace) { RollbackRequest::default() } else { parse_json_body(&body)? };
    let target = state.registry.rollback_target(collection.kind(), &id, request.to_version).await?;
    let record = make_active(&state, collection.kind(), &target, &actor, true).await?;
    Ok(HttpResponse::Ok().json(record))
}

/// Activation and rollback: check, load a system for serving, move the alias (with its ledger
/// entry), then serve the new version.
async fn make_active(
    state: &AppState,
    kind: ArtifactKind,
    reference: &ArtifactRef,
    actor: &Actor,
    rollback: bool,
) -> Result<GovernanceRecord, ApiError> {
    if kind == ArtifactKind::CalibrationReport {
        return Err(ApiError::Conflict("calibration reports are evidence: they are approved and cited, never active".into()));
    }
    if kind == ArtifactKind::ConfidenceModel {
        return Err(ApiError::Conflict(
            "confidence models are cited by version from a system card (tiers[i].confidence_model) once approved; they are never active themselves"
                .into(),
        ));
    }
    if kind == ArtifactKind::Experiment {
        return Err(ApiError::Conflict(format!(
            "experiments are started, not activated: POST /v1/experiments/{}/versions/{}/start",
            reference.id, reference.version
        )));
    }
    state.registry.check_activation(kind, reference, actor).await?;
    let route = match kind {
        ArtifactKind::SystemCard => {
            let version = state.registry.require(kind, reference).await?;
            let route = state
                .loader
                .load(&version)
                .await
                .map_err(|error| ApiError::from(LifecycleError::Unprocessable(format!("system card {reference} cannot be served: {error:#}"))))?;
            Some(route)
        }
        _ => None,
    };
    let ledger = state.router.ledger();
    let now = super::now();
    let record = if rollback {
        state.registry.rollback(ledger, kind, reference, actor, &now).await?
    } else {
        state.registry.activate(ledger, kind, reference, actor, &now).await?
    };
    if let Some(route) = route {
        state.router.install(route);
    }
    Ok(record)
}

/// Retire a version that is not active. It stays retrievable; it can no longer be activated.
#[utoipa::path(
    tag = "registry", security(("api_key" = ["approver"])),
    params(
        ("collection" = CardCollection, Path, description = "model-cards, system-cards, policies, calibration-reports, confidence-models or experiments"),
        ("id" = String, Path, description = "Card id"),
        ("version" = i64, Path, description = "Version number"),
    ),
    responses(
        (status = 200, description = "Retired; recorded in the ledger", body = GovernanceRecord),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Active, or already retired", body = ErrorBody),
    )
)]
#[post("/v1/registry/{collection}/{id}/versions/{version}/retire")]
pub async fn retire_version(
    state: web::Data<AppState>,
    path: web::Path<(CardCollection, String, i64)>,
    actor: Actor,
) -> Result<HttpResponse, ApiError> {
    let (collection, id, version) = path.into_inner();
    let reference = ArtifactRef { id, version };
    let record = state.registry.retire(state.router.ledger(), collection.kind(), &reference, &actor).await?;
    Ok(HttpResponse::Ok().json(record))
}

/// A model card version as a CycloneDX 1.6 ML-BOM (one `machine-learning-model` component
/// with its `modelCard`, weights hash, licence and provenance).
#[utoipa::path(
    tag = "registry", security(("api_key" = ["auditor", "author", "approver"])),
    params(("id" = String, Path, description = "Model card id"), ("version" = i64, Path, description = "Version number")),
    responses(
        (status = 200, description = "CycloneDX JSON", content_type = "application/vnd.cyclonedx+json", body = Object),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/v1/registry/model-cards/{id}/versions/{version}/cyclonedx")]
pub async fn model_card_cyclonedx(state: web::Data<AppState>, path: web::Path<(String, i64)>) -> Result<HttpResponse, ApiError> {
    let (id, version) = path.into_inner();
    let stored = find(&state, CardCollection::ModelCards, &id, version).await?;
    let card = detail(stored.clone())?.document;
    let bom = cyclonedx(&stored, &card);
    Ok(HttpResponse::Ok()
        .content_type(format!("application/vnd.cyclonedx+json; version={}", crate::registry::CYCLONEDX_SPEC_VERSION))
        .body(serde_json::to_string_pretty(&bom).map_err(anyhow::Error::from)?))
}

/// A model card version as a readable Markdown model card.
#[utoipa::path(
    tag = "registry", security(("api_key" = ["auditor", "author", "approver"])),
    params(("id" = String, Path, description = "Model card id"), ("version" = i64, Path, description = "Version number")),
    responses(
        (status = 200, description = "Markdown", content_type = "text/markdown", body = String),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/v1/registry/model-cards/{id}/versions/{version}/markdown")]
pub async fn model_card_markdown(state: web::Data<AppState>, path: web::Path<(String, i64)>) -> Result<HttpResponse, ApiError> {
    let (id, version) = path.into_inner();
    let stored = find(&state, CardCollection::ModelCards, &id, version).await?;
    let card = detail(stored.clone())?.document;
    Ok(HttpResponse::Ok().content_type("text/markdown; charset=utf-8").body(markdown(&stored, &card)))
}

/// Run a policy bundle version's tests: each `test_*` rule's outcome and line coverage per module.
#[utoipa::path(
    tag = "policies", security(("api_key" = ["auditor", "author", "approver"])),
    params(("id" = String, Path, description = "Policy bundle id"), ("version" = i64, Path, description = "Version number")),
    responses((status = 200, body = TestReport), (status = 404, body = ErrorBody))
)]
#[get("/v1/registry/policies/{id}/versions/{version}/tests")]
pub async fn policy_tests(state: web::Data<AppState>, path: web::Path<(String, i64)>) -> Result<HttpResponse, ApiError> {
    let (id, version) = path.into_inner();
    let report = state.registry.bundle_test_report(&ArtifactRef { id, version }).await?;
    Ok(HttpResponse::Ok().json(report))
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GateName {
    Route,
    Accept,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRunRequest {
    /// Which rule to evaluate: `data.tiergate.route` or `data.tiergate.accept`.
    pub gate: GateName,
    /// The policy `input`, shaped as the gateway builds it (see a ledger entry's
    /// `route.input` or `attempts[].accept.input`).
    #[schema(value_type = Object)]
    pub input: Value,
    /// Number of tiers the route gate may choose from (default: `input.system.tier_count`, else 2).
    pub tier_count: Option<usize>,
}

/// Dry-run: evaluate one gate of any bundle version for a given input. Returns the decision
/// exactly as the gateway would act on it (a failing policy's fail-closed deny included),
/// its reasons and the evaluation time. Nothing is recorded.
#[utoipa::path(
    tag = "policies", security(("api_key" = ["author", "approver", "auditor"])),
    params(("id" = String, Path, description = "Policy bundle id"), ("version" = i64, Path, description = "Version number")),
    request_body = DryRunRequest,
    responses((status = 200, body = GateDecision), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody))
)]
#[post("/v1/registry/policies/{id}/versions/{version}/evaluate")]
pub async fn dry_run(state: web::Data<AppState>, path: web::Path<(String, i64)>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let (id, version) = path.into_inner();
    let request: DryRunRequest = parse_json_body(&body)?;
    let reference = ArtifactRef { id, version };
    find(&state, CardCollection::Policies, &reference.id, reference.version).await?;
    let policy = state.loader.policy(&reference).await?;
    let gate = match request.gate {
        GateName::Route => Gate::Route,
        GateName::Accept => Gate::Accept,
    };
    let tier_count =
        request.tier_count.or_else(|| request.input.pointer("/system/tier_count").and_then(Value::as_u64).map(|n| n as usize)).unwrap_or(2);
    Ok(HttpResponse::Ok().json(policy.evaluate(gate, &request.input, tier_count)))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// First ledger index (inclusive).
    pub from_index: Option<u64>,
    /// Last ledger index (exclusive).
    pub to_index: Option<u64>,
    /// Entries written at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Entries written before this RFC 3339 time.
    pub until: Option<String>,
    /// Only requests to this system.
    pub system: Option<String>,
    /// At most this many requests, oldest first (default 10000, at most 100000).
    pub max_requests: Option<usize>,
}

const REPLAY_DEFAULT_MAX: usize = 10_000;
const REPLAY_LIMIT: usize = 100_000;

/// Inference entries matching `filter`, oldest first, page by page, at most `max`.
async fn inference_entries(state: &AppState, mut filter: LedgerFilter, max: usize) -> Result<Vec<Value>, ApiError> {
    filter.entry_type = Some("inference".into());
    let mut entries = Vec::new();
    while entries.len() < max {
        filter.limit = (max - entries.len()).min(1000) as i64;
        let page = state.router.ledger().query(&filter).await?;
        let Some(last) = page.last() else { break };
        filter.from_index = Some(last.index as i64 + 1);
        let full = page.len() as i64 == filter.limit;
        entries.extend(page.into_iter().map(|record| record.entry));
        if !full {
            break;
        }
    }
    Ok(entries)
}

/// Per-tier prices of every system card version the entries cite.
async fn tier_prices(state: &AppState, entries: &[Value]) -> Result<TierPrices, ApiError> {
    let mut prices = TierPrices::new();
    for entry in entries {
        let Some(reference) =
            entry.get("system").and_then(|s| Some(ArtifactRef { id: s.get("id")?.as_str()?.to_owned(), version: s.get("version")?.as_i64()? }))
        else {
            continue;
        };
        let key = reference.to_string();
        if prices.contains_key(&key) {
            continue;
        }
        let mut tiers = Vec::new();
        if let Some(system) = state.registry.get(ArtifactKind::SystemCard, &reference).await? {
            let card: SystemCard = serde_json::from_value(system.document).map_err(anyhow::Error::from)?;
            for tier in card.tiers {
                let model = state.registry.get(ArtifactKind::ModelCard, &tier.model).await?;
                let cost = model
                    .and_then(|m| serde_json::from_value::<ModelCard>(m.document).ok())
                    .and_then(|m| m.cost)
                    .map(|c| (c.per_1k_input_tokens, c.per_1k_output_tokens));
                tiers.push(cost);
            }
        }
        prices.insert(key, tiers);
    }
    Ok(prices)
}

/// Replay a candidate bundle version against recorded traffic: its gates are evaluated on the
/// inputs the ledger kept for each request in the range, and compared with what was decided.
/// Reports every request where it differs, and totals before/after: escalation and
/// containment rates, estimated cost (model card prices × recorded tokens; a tier the request
/// never reached is estimated from its recorded tokens) and counts by outcome and reason.
#[utoipa::path(
    tag = "policies", security(("api_key" = ["author", "approver", "auditor"])),
    params(("id" = String, Path, description = "Policy bundle id"), ("version" = i64, Path, description = "Version number")),
    request_body(content = Option<ReplayRequest>, description = "The range; empty = the whole ledger (up to max_requests)"),
    responses((status = 200, body = ReplayReport), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody))
)]
#[post("/v1/registry/policies/{id}/versions/{version}/replay")]
pub async fn replay_policy(state: web::Data<AppState>, path: web::Path<(String, i64)>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let (id, version) = path.into_inner();
    let request: ReplayRequest = if body.iter().all(u8::is_ascii_whitespace) { ReplayRequest::default() } else { parse_json_body(&body)? };
    let max = request.max_requests.unwrap_or(REPLAY_DEFAULT_MAX);
    if !(1..=REPLAY_LIMIT).contains(&max) {
        return Err(ApiError::InvalidRequest(format!("max_requests: {max} is outside 1..={REPLAY_LIMIT}")));
    }
    let reference = ArtifactRef { id, version };
    find(&state, CardCollection::Policies, &reference.id, reference.version).await?;
    let candidate = state.loader.policy(&reference).await?;
    let filter = LedgerFilter {
        from_index: request.from_index.map(|i| i as i64),
        to_index: request.to_index.map(|i| i as i64),
        since: super::ledger::rfc3339_param("since", &request.since)?,
        until: super::ledger::rfc3339_param("until", &request.until)?,
        system_id: request.system,
        ..LedgerFilter::default()
    };
    let entries = inference_entries(&state, filter, max).await?;
    let prices = tier_prices(&state, &entries).await?;
    // Thousands of evaluations: off the async workers.
    let report = tokio::task::spawn_blocking(move || replay(&entries, &candidate, &prices)).await.map_err(anyhow::Error::from)?;
    Ok(HttpResponse::Ok().json(report))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowRequest {
    /// The candidate policy bundle, `id@version`.
    pub policy: String,
}

/// Attach a candidate policy bundle version as the shadow of an active system: on every live
/// request it is evaluated beside the system's own policy and its decisions are recorded in
/// the ledger entry (`shadow`), never acted on. Replaces any earlier shadow.
#[utoipa::path(
    tag = "policies", security(("api_key" = ["approver"])),
    params(("id" = String, Path, description = "System card id")),
    request_body = ShadowRequest,
    responses((status = 200, body = GovernanceRecord), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody))
)]
#[put("/v1/registry/system-cards/{id}/shadow")]
pub async fn attach_shadow(state: web::Data<AppState>, id: web::Path<String>, actor: Actor, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let system_id = id.into_inner();
    let request: ShadowRequest = parse_json_body(&body)?;
    let policy = ArtifactRef::parse(&request.policy).map_err(|e| ApiError::InvalidRequest(format!("policy: {e}")))?;
    find(&state, CardCollection::Policies, &policy.id, policy.version).await?;
    let compiled =
        state.loader.policy(&policy).await.map_err(|e| ApiError::InvalidRequest(format!("policy: {policy} cannot be evaluated: {e:#}")))?;
    let record = state.registry.attach_shadow(state.router.ledger(), &system_id, &policy, &actor, &super::now()).await?;
    state.router.set_shadow(&system_id, Some(compiled));
    Ok(HttpResponse::Ok().json(record))
}

/// Detach the shadow policy of a system.
#[utoipa::path(
    tag = "policies", security(("api_key" = ["approver"])),
    params(("id" = String, Path, description = "System card id")),
    responses((status = 200, body = GovernanceRecord), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody))
)]
#[delete("/v1/registry/system-cards/{id}/shadow")]
pub async fn detach_shadow(state: web::Data<AppState>, id: web::Path<String>, actor: Actor) -> Result<HttpResponse, ApiError> {
    let system_id = id.into_inner();
    let record = state.registry.detach_shadow(state.router.ledger(), &system_id, &actor).await?;
    state.router.set_shadow(&system_id, None);
    Ok(HttpResponse::Ok().json(record))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ShadowBody {
    /// The shadow bundle `id@version`.
    pub policy: String,
    pub attached_by: String,
    pub attached_at: String,
    /// Requests since it was attached: agreement with the active policy (`differing`), and
    /// the would-be escalation rate (`after`) against the real one (`before`).
    pub report: ReplayReport,
}

/// The shadow report of a system: how the shadow's recorded decisions compare with the active
/// policy's on live traffic since it was attached.
#[utoipa::path(
    tag = "policies", security(("api_key" = ["auditor", "author", "approver"])),
    params(("id" = String, Path, description = "System card id")),
    responses((status = 200, body = ShadowBody), (status = 404, body = ErrorBody))
)]
#[get("/v1/registry/system-cards/{id}/shadow")]
pub async fn shadow_report_of(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let system_id = id.into_inner();
    let shadow = state
        .store
        .system_shadows()
        .await?
        .into_iter()
        .find(|s| s.system_id == system_id)
        .ok_or_else(|| ApiError::NotFound(format!("system {system_id:?} has no shadow policy")))?;
    let policy = format!("{}@{}", shadow.policy_id, shadow.policy_version);
    let filter = LedgerFilter { since: Some(shadow.attached_at.clone()), system_id: Some(system_id), ..LedgerFilter::default() };
    let entries = inference_entries(&state, filter, REPLAY_LIMIT).await?;
    let prices = tier_prices(&state, &entries).await?;
    let report = shadow_report(&entries, &policy, &prices);
    Ok(HttpResponse::Ok().json(ShadowBody { policy, attached_by: shadow.attached_by, attached_at: shadow.attached_at, report }))
}
