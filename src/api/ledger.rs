//! Ledger endpoints for auditors: signed checkpoint, public key, entries with inclusion proofs, export.

use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::error::{ApiError, ErrorBody};

/// The latest signed checkpoint: a C2SP signed note whose text is a C2SP checkpoint (origin,
/// tree size, base64 root hash), signed with the ledger's ed25519 key.
#[utoipa::path(tag = "ledger", responses((status = 200, description = "Signed note", content_type = "text/plain", body = String)))]
#[get("/v1/ledger/checkpoint")]
pub async fn get_checkpoint(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (_, note) = state.router.ledger().checkpoint().await?;
    Ok(HttpResponse::Ok().content_type("text/plain; charset=utf-8").body(note))
}

/// The note verifier key (`<name>+<key id>+<base64 ed25519 public key>`) that verifies
/// every checkpoint; all an auditor needs to verify an export offline.
#[utoipa::path(tag = "ledger", responses((status = 200, description = "Verifier key", content_type = "text/plain", body = String)))]
#[get("/v1/ledger/public-key")]
pub async fn get_public_key(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(format!("{}\n", state.router.ledger().verifier_key()))
}

/// One entry with its RFC 6962 inclusion proof.
#[derive(Serialize, ToSchema)]
pub struct ProvenEntryBody {
    pub index: u64,
    /// The entry, exactly as hashed (its canonical JSON bytes are the leaf data).
    #[schema(value_type = Object)]
    pub entry: serde_json::Value,
    /// sha256(0x00 ‖ entry bytes), hex.
    pub leaf_hash: String,
    pub tree_size: u64,
    /// Root of the tree of `tree_size` entries, hex.
    pub root_hash: String,
    /// Audit path from the leaf to the root, hex.
    pub proof: Vec<String>,
    /// Signed checkpoint for `tree_size` and `root_hash`.
    pub checkpoint: String,
}

/// Get one ledger entry with its inclusion proof against a freshly signed checkpoint.
#[utoipa::path(
    tag = "ledger",
    params(("index" = u64, Path, description = "Entry index, from 0")),
    responses((status = 200, body = ProvenEntryBody), (status = 404, body = ErrorBody))
)]
#[get("/v1/ledger/entries/{index}")]
pub async fn get_entry(state: web::Data<AppState>, index: web::Path<u64>) -> Result<HttpResponse, ApiError> {
    let index = index.into_inner();
    let proven = state
        .router
        .ledger()
        .prove(index)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("index: the ledger has no entry {index}")))?;
    Ok(HttpResponse::Ok().json(ProvenEntryBody {
        index: proven.index,
        entry: proven.entry,
        leaf_hash: proven.leaf_hash,
        tree_size: proven.tree_size,
        root_hash: proven.root_hash,
        proof: proven.proof,
        checkpoint: proven.checkpoint,
    }))
}

/// Export the whole ledger as JSON Lines: a header with the signed checkpoint, then every
/// entry's canonical bytes. Verify it offline with `tiergate ledger verify <file> --key <key>`.
#[utoipa::path(tag = "ledger", responses((status = 200, description = "JSON Lines", content_type = "application/x-ndjson", body = String)))]
#[get("/v1/ledger/export")]
pub async fn export(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let body = state.router.ledger().export().await?;
    Ok(HttpResponse::Ok().content_type("application/x-ndjson").body(body))
}
