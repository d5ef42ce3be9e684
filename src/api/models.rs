//! `GET /v1/models`: the systems a key may call, in the OpenAI models format (what clients and
//! chat UIs ask first); tiergate's own facts sit beside the standard fields.

use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::{access::Caller, error::ApiError, routing::SystemRoute};

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<Model>,
}

/// One system card, as OpenAI describes a model: `id` is what `model` names in a chat request.
#[derive(Debug, Serialize, ToSchema)]
pub struct Model {
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// When the version served now was submitted (Unix seconds).
    pub created: i64,
    /// Always `tiergate`.
    pub owned_by: &'static str,
    pub tiergate: ModelFacts,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelFacts {
    /// The system card version served now, e.g. `support-triage@3`.
    pub system: String,
    /// `sha256:<hex>` of that version, as the ledger records it.
    pub digest: String,
    /// The policy bundle version that decides routing.
    pub policy: String,
    /// The tiers, smallest first.
    pub tiers: Vec<TierFacts>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TierFacts {
    pub name: String,
    /// The model card version, e.g. `smollm2-135m-instruct@1`.
    pub model: String,
    /// sha256 of the weights file that runs.
    pub weights_sha256: String,
}

async fn describe(state: &AppState, system: &SystemRoute) -> Result<Model, ApiError> {
    let stored = state.store.artifact_version("system_card", &system.reference.id, system.reference.version).await?;
    let created = stored.and_then(|v| chrono::DateTime::parse_from_rfc3339(&v.created_at).ok()).map_or(0, |t| t.timestamp());
    Ok(Model {
        id: system.reference.id.clone(),
        object: "model",
        created,
        owned_by: "tiergate",
        tiergate: ModelFacts {
            system: system.reference.to_string(),
            digest: system.digest.clone(),
            policy: system.policy.reference.to_string(),
            tiers: system
                .tiers
                .iter()
                .map(|t| TierFacts { name: t.name.clone(), model: t.model.to_string(), weights_sha256: t.loaded_weights_sha256.clone() })
                .collect(),
        },
    })
}

/// The systems this key may call.
#[utoipa::path(tag = "inference", security(("api_key" = ["app"])), responses((status = 200, description = "The systems this key may call", body = ModelList)))]
#[get("/v1/models")]
pub async fn list_models(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let mut data = Vec::new();
    for system in state.router.systems().iter().filter(|s| caller.may_call(&s.reference.id)) {
        data.push(describe(&state, system).await?);
    }
    Ok(HttpResponse::Ok().json(ModelList { object: "list", data }))
}

/// One system this key may call.
#[utoipa::path(
    tag = "inference", security(("api_key" = ["app"])),
    params(("model" = String, Path, description = "A system card id, as `model` in a chat request")),
    responses(
        (status = 200, description = "The system", body = Model),
        (status = 404, description = "No system with this id is served to this key", body = crate::error::ErrorBody),
    )
)]
#[get("/v1/models/{model}")]
pub async fn get_model(state: web::Data<AppState>, caller: Caller, model: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let system = state
        .router
        .systems()
        .into_iter()
        .find(|s| s.reference.id == *model && caller.may_call(&s.reference.id))
        .ok_or_else(|| ApiError::UnknownSystem(format!("model: no system {:?} is served to this key", model.as_str())))?;
    Ok(HttpResponse::Ok().json(describe(&state, &system).await?))
}
