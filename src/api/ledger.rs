//! Ledger endpoints for auditors: signed checkpoint, public key, entries with inclusion proofs, export.

use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::{
    error::{ApiError, ErrorBody},
    ledger::{ConsistencyProof, ProvenEntry},
};

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

/// Get one ledger entry with its inclusion proof against a freshly signed checkpoint.
#[utoipa::path(
    tag = "ledger",
    params(("index" = u64, Path, description = "Entry index, from 0")),
    responses((status = 200, body = ProvenEntry), (status = 404, body = ErrorBody))
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
    Ok(HttpResponse::Ok().json(proven))
}

/// Export the whole ledger as JSON Lines: a header with the signed checkpoint, then every
/// entry's canonical bytes. Verify it offline with `tiergate ledger verify <file> --key <key>`.
#[utoipa::path(tag = "ledger", responses((status = 200, description = "JSON Lines", content_type = "application/x-ndjson", body = String)))]
#[get("/v1/ledger/export")]
pub async fn export(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let body = state.router.ledger().export().await?;
    Ok(HttpResponse::Ok().content_type("application/x-ndjson").body(body))
}

#[derive(Serialize, ToSchema)]
pub struct VerificationBody {
    /// True when every stored entry hashes to the stored tree.
    pub verified: bool,
    pub tree_size: Option<u64>,
    pub root_hash: Option<String>,
    /// The first problem found, when not verified.
    pub problem: Option<String>,
}

/// Verify the stored ledger: recompute every leaf from the stored entries and compare with
/// the stored Merkle tree. Tampering done directly in the database shows up here.
#[utoipa::path(tag = "ledger", responses((status = 200, body = VerificationBody)))]
#[get("/v1/ledger/verify")]
pub async fn verify(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let body = match state.router.ledger().verify().await? {
        Ok(verified) => VerificationBody {
            verified: true,
            tree_size: Some(verified.tree_size),
            root_hash: Some(verified.root_hash),
            problem: None,
        },
        Err(problem) => VerificationBody { verified: false, tree_size: None, root_hash: None, problem: Some(problem.to_string()) },
    };
    Ok(HttpResponse::Ok().json(body))
}

/// Prove that the current log extends the log of `from_size` entries (nothing rewritten).
#[utoipa::path(
    tag = "ledger",
    params(("from_size" = u64, Path, description = "Size of the earlier tree (from an earlier checkpoint)")),
    responses((status = 200, body = ConsistencyProof), (status = 404, body = ErrorBody))
)]
#[get("/v1/ledger/consistency/{from_size}")]
pub async fn get_consistency(state: web::Data<AppState>, from_size: web::Path<u64>) -> Result<HttpResponse, ApiError> {
    let from_size = from_size.into_inner();
    let proof = state.router.ledger().prove_consistency(from_size).await?.ok_or_else(|| {
        ApiError::NotFound(format!("from_size: {from_size} is not between 1 and the current tree size"))
    })?;
    Ok(HttpResponse::Ok().json(proof))
}
