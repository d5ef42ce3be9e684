//! HTTP only: routes, request/response types, the OpenAPI document; each handler calls one domain function.

pub mod access;
pub mod chat;
pub mod confidence;
pub mod document;
pub mod experiments;
pub mod health;
pub mod keys;
pub mod ledger;
pub mod metrics;
pub mod models;
pub mod registry;
pub mod reviews;

use std::sync::Arc;

use access::SecurityAddon;
use actix_web::{HttpRequest, HttpResponse, web};
use utoipa::OpenApi;
use utoipa_actix_web::{AppExt, service_config::ServiceConfig};

use crate::{
    access::Access,
    error::ApiError,
    registry::Registry,
    routing::{Router, SystemLoader},
    store::Store,
};

/// Shared state of every worker.
#[derive(Debug, Clone)]
pub struct AppState {
    pub router: Arc<Router>,
    pub store: Store,
    pub registry: Registry,
    pub loader: Arc<SystemLoader>,
    pub access: Arc<Access>,
    /// The roles each operation needs, read from this API's OpenAPI document.
    pub requirements: Arc<access::Requirements>,
    /// The web console's session limits.
    pub console: crate::console::ConsoleConfig,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tiergate",
        description = "Governance gateway and registry for tiered (small-model-first) LLM inference. \
            Requests are answered by the smallest tier the active Rego policy allows, escalated when \
            the policy says so, and every request is recorded in a tamper-evident ledger.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "inference", description = "OpenAI-compatible chat completions routed through the tiers"),
        (name = "ledger", description = "The tamper-evident decision ledger: checkpoints, proofs, export"),
        (name = "registry", description = "Versioned model cards, system cards, policy bundles and confidence models: submit, approve (four-eyes), activate, retire, roll back, export"),
        (name = "reviews", description = "Human review of held answers, and feedback on answers"),
        (name = "keys", description = "API keys: issue, list, revoke; a key's own roles, limits and usage"),
        (name = "experiments", description = "Live A/B experiments and canaries of system versions: start, widen, stop, promote, and the report computed from the ledger"),
        (name = "policies", description = "Policy bundles: tests with coverage, dry-run, replay against the ledger, shadow mode"),
        (name = "operations", description = "Health, readiness and the API description"),
    ),
    // Named by path parameters, which utoipa does not collect on its own.
    components(schemas(registry::CardCollection)),
    modifiers(&SecurityAddon)
)]
pub struct ApiDoc;

/// Registers every documented route. Used by the server and by [`openapi_document`], so the
/// served routes and the published document cannot drift apart.
pub fn routes(config: &mut ServiceConfig) {
    config
        .service(chat::create_chat_completion)
        .service(models::list_models)
        .service(models::get_model)
        .service(health::healthz)
        .service(health::readyz)
        .service(ledger::get_checkpoint)
        .service(ledger::list_checkpoints)
        .service(ledger::get_public_key)
        .service(ledger::list_entries)
        .service(ledger::list_entries_csv)
        .service(ledger::get_entry)
        .service(ledger::export)
        .service(ledger::audit_bundle)
        .service(ledger::verify)
        .service(ledger::get_consistency)
        .service(ledger::get_tlog_checkpoint)
        .service(ledger::get_witnessed_checkpoint)
        .service(ledger::get_tile)
        .service(registry::submit_card)
        .service(registry::list_cards)
        .service(registry::list_versions)
        .service(registry::get_version)
        .service(registry::diff_versions)
        .service(registry::approve_version)
        .service(registry::activate_version)
        .service(registry::retire_version)
        .service(registry::rollback_version)
        .service(registry::model_card_cyclonedx)
        .service(registry::model_card_markdown)
        .service(registry::policy_tests)
        .service(registry::dry_run)
        .service(registry::replay_policy)
        .service(registry::attach_shadow)
        .service(registry::detach_shadow)
        .service(registry::shadow_report_of)
        .service(confidence::fit_from_ledger)
        .service(experiments::list_experiments)
        .service(experiments::start_experiment)
        .service(experiments::widen_experiment)
        .service(experiments::stop_experiment)
        .service(experiments::promote_experiment)
        .service(experiments::experiment_report)
        .service(keys::create_key)
        .service(keys::list_keys)
        // Before /v1/keys/{key_id}, which would otherwise match "me".
        .service(keys::my_key)
        .service(keys::get_key)
        .service(keys::revoke_key)
        .service(metrics::metrics)
        .service(metrics::drift)
        .service(metrics::calibration)
        .service(reviews::list_reviews)
        .service(reviews::get_review)
        .service(reviews::record_verdict)
        .service(reviews::record_feedback);
}

/// The OpenAPI 3.1 document, generated from the code (also served at `/openapi.json`).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let (_, document) = actix_web::App::new().into_utoipa_app().openapi(ApiDoc::openapi()).configure(routes).split_for_parts();
    document::complete(document)
}

/// Query-string errors get the documented JSON error body too, naming the parameter.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|error, _req| ApiError::InvalidRequest(format!("query: {error}")).into())
}

/// Path-segment errors (an unknown collection, a version that is not a number) get the
/// documented JSON error body, naming the segment.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|error, req| ApiError::NotFound(format!("{}: {error}", req.path())).into())
}

/// The time of a change, as recorded (RFC 3339, UTC, microseconds).
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// JSON for unknown paths, so that clients always get the documented error body.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!("no route for {} {}", req.method(), req.path())))
}

/// Parses a JSON body, naming the field at fault: syntax errors are 400, wrong shapes 422.
pub fn parse_json_body<T: serde::de::DeserializeOwned>(body: &web::Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::MalformedJson("request body is empty; expected a JSON object".into()));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let at = if path == "." { String::new() } else { format!("{path}: ") };
                ApiError::InvalidRequest(format!("{at}{inner}"))
            }
            _ => ApiError::MalformedJson(format!("request body is not valid JSON: {inner}")),
        }
    })
}
