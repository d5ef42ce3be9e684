//! Ledger endpoints for auditors: signed checkpoint, public key, entries with inclusion proofs, export.

use actix_web::{HttpResponse, get, web};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use crate::{
    error::{ApiError, ErrorBody},
    ledger::{ConsistencyProof, LedgerRecord, ProvenEntry, PublishedCheckpoint},
    store::LedgerFilter,
};

/// A freshly signed (and published) checkpoint: a C2SP signed note whose text is a C2SP checkpoint (origin,
/// tree size, base64 root hash), signed with the ledger's ed25519 key.
#[utoipa::path(tag = "ledger", security(("api_key" = ["auditor"])), responses((status = 200, description = "Signed note", content_type = "text/plain", body = String)))]
#[get("/v1/ledger/checkpoint")]
pub async fn get_checkpoint(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    get_checkpoint_note(&state).await
}

/// The log's checkpoint as C2SP tlog-tiles serves it (`<prefix>/checkpoint`, prefix
/// `/v1/ledger/tlog`). With witnesses configured: the newest checkpoint the witness quorum
/// cosigned, with their cosignatures (so monitors see what the witnesses saw); until one is
/// witnessed, and without witnesses, the same freshly signed and published note as
/// `GET /v1/ledger/checkpoint`.
#[utoipa::path(tag = "ledger", security(("api_key" = ["auditor"])), responses((status = 200, description = "Signed note", content_type = "text/plain", body = String)))]
#[get("/v1/ledger/tlog/checkpoint")]
pub async fn get_tlog_checkpoint(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if let Some(witnessed) = state.router.ledger().witnessed_checkpoint().await? {
        return Ok(HttpResponse::Ok().content_type("text/plain; charset=utf-8").body(witnessed.cosigned_note()));
    }
    get_checkpoint_note(&state).await
}

/// The newest published checkpoint cosigned by the witness quorum (`witness_quorum` of the
/// `witnesses` in the settings): the signed note followed by every witness's cosignature line
/// (c2sp.org/tlog-cosignature). Check it with `tiergate ledger verify <file> --key <ledger key>
/// --witness-key <key> … --min-witnesses N`.
#[utoipa::path(
    tag = "ledger", security(("api_key" = ["auditor"])),
    responses(
        (status = 200, description = "Cosigned note", content_type = "text/plain", body = String),
        (status = 404, description = "No witnesses are configured, or none has cosigned a checkpoint yet", body = ErrorBody),
    )
)]
#[get("/v1/ledger/witnessed-checkpoint")]
pub async fn get_witnessed_checkpoint(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ledger = state.router.ledger();
    let Some(witnessing) = ledger.witnessing() else {
        return Err(ApiError::NotFound("witnessed-checkpoint: this gateway has no witnesses configured (settings: witnesses)".into()));
    };
    let witnessed = ledger.witnessed_checkpoint().await?.ok_or_else(|| {
        ApiError::NotFound(format!("witnessed-checkpoint: no checkpoint has {} cosignatures yet (see /readyz)", witnessing.quorum()))
    })?;
    Ok(HttpResponse::Ok().content_type("text/plain; charset=utf-8").body(witnessed.cosigned_note()))
}

async fn get_checkpoint_note(state: &AppState) -> Result<HttpResponse, ApiError> {
    let ledger = state.router.ledger();
    let note = match ledger.publish_checkpoint().await? {
        Some((_, note)) => note,
        None => ledger.checkpoint().await?.1,
    };
    Ok(HttpResponse::Ok().content_type("text/plain; charset=utf-8").body(note))
}

/// A C2SP tlog-tiles tile (https://c2sp.org/tlog-tiles, height 8): `tile/<L>/<N>[.p/<W>]` is the
/// hashes at level L, `tile/entries/<N>[.p/<W>]` the entries (each its canonical JSON bytes, the
/// Merkle leaf data, prefixed by its length as a big-endian 16-bit number). Tiles are immutable
/// once the tree covers them (cached for a year); 404 for a tile the tree does not hold yet.
#[utoipa::path(
    tag = "ledger", security(("api_key" = ["auditor"])),
    params(("tile" = String, Path, description = "What follows `tile/`: `<L>/<N>[.p/<W>]` or `entries/<N>[.p/<W>]`, N in the spec's `x001/234` form")),
    responses(
        (status = 200, description = "Tile data", content_type = "application/octet-stream", body = String),
        (status = 404, description = "A malformed tile path, or a tile the tree does not hold yet", body = ErrorBody),
    )
)]
#[get("/v1/ledger/tlog/tile/{tile:.*}")]
pub async fn get_tile(state: web::Data<AppState>, tile: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let path = crate::ledger::TilePath::parse(&tile).map_err(ApiError::NotFound)?;
    let data =
        state.router.ledger().tile(path).await?.ok_or_else(|| ApiError::NotFound(format!("tile: the ledger holds no {} yet", path.to_path())))?;
    Ok(HttpResponse::Ok().content_type("application/octet-stream").insert_header(("Cache-Control", "public, max-age=31536000, immutable")).body(data))
}

/// The note verifier keys (`<name>+<key id>+<base64 ed25519 public key>`), one per line: the
/// current signing key first, then keys retired by rotation (their checkpoints stay
/// verifiable). All an auditor needs to verify an export offline.
#[utoipa::path(tag = "ledger", security(("api_key" = ["auditor"])), responses((status = 200, description = "Verifier key", content_type = "text/plain", body = String)))]
#[get("/v1/ledger/public-key")]
pub async fn get_public_key(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; charset=utf-8").body(format!("{}\n", state.router.ledger().verifier_key()))
}

/// Get one ledger entry with its inclusion proof against a freshly signed checkpoint.
#[utoipa::path(
    tag = "ledger", security(("api_key" = ["auditor"])),
    params(("index" = u64, Path, description = "Entry index, from 0")),
    responses((status = 200, body = ProvenEntry), (status = 404, body = ErrorBody))
)]
#[get("/v1/ledger/entries/{index}")]
pub async fn get_entry(state: web::Data<AppState>, index: web::Path<u64>) -> Result<HttpResponse, ApiError> {
    let index = index.into_inner();
    let proven = state.router.ledger().prove(index).await?.ok_or_else(|| ApiError::NotFound(format!("index: the ledger has no entry {index}")))?;
    Ok(HttpResponse::Ok().json(proven))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `current` (default): every entry, under a freshly signed checkpoint. `witnessed`: the
    /// entries of the newest checkpoint the witness quorum cosigned, under that checkpoint with
    /// its cosignatures (for `tiergate ledger verify --witness-key … --min-witnesses N`).
    pub checkpoint: Option<String>,
}

/// Export the whole ledger as JSON Lines: a header with the signed checkpoint, then one line per
/// entry, `{"entry": <canonical entry>, "leaf_hash": "<leaf recorded when it was written>"}`.
/// Verify it offline with `tiergate ledger verify <file> --key <key>`.
#[utoipa::path(
    tag = "ledger", security(("api_key" = ["auditor"])), params(ExportQuery),
    responses(
        (status = 200, description = "JSON Lines", content_type = "application/x-ndjson", body = String),
        (status = 404, description = "`checkpoint=witnessed` and no checkpoint is witnessed yet", body = ErrorBody),
        (status = 422, description = "`checkpoint` is neither `current` nor `witnessed`", body = ErrorBody),
    )
)]
#[get("/v1/ledger/export")]
pub async fn export(state: web::Data<AppState>, query: web::Query<ExportQuery>) -> Result<HttpResponse, ApiError> {
    let ledger = state.router.ledger();
    let chunks = match query.checkpoint.as_deref() {
        None | Some("current") => ledger.export_stream().await?.boxed(),
        Some("witnessed") => {
            let witnessed = ledger
                .witnessed_checkpoint()
                .await?
                .ok_or_else(|| ApiError::NotFound("checkpoint: no checkpoint is cosigned by the witness quorum yet (see /readyz)".into()))?;
            ledger.export_stream_of(&witnessed).await?.boxed()
        }
        Some(other) => return Err(ApiError::InvalidRequest(format!("checkpoint: {other:?} is neither `current` nor `witnessed`"))),
    };
    Ok(HttpResponse::Ok().content_type("application/x-ndjson").streaming(export_body(chunks)))
}

/// An export's chunks as a response body (the API's export and the console's download).
pub(crate) fn export_body(
    chunks: impl futures::Stream<Item = anyhow::Result<String>>,
) -> impl futures::Stream<Item = Result<web::Bytes, actix_web::Error>> {
    chunks.map(|chunk| {
        chunk.map(web::Bytes::from).map_err(|error| {
            // Headers are gone by now: log the cause and cut the stream, so the export fails
            // verification rather than looking complete.
            tracing::error!(error = ?error, "ledger export failed mid-stream");
            actix_web::error::ErrorInternalServerError("ledger export failed")
        })
    })
}

#[derive(Serialize, ToSchema)]
pub struct VerificationBody {
    /// True when every stored entry hashes to the stored tree, the stored tree extends every
    /// checkpoint this ledger signed (and the one given as `checkpoint`, if any).
    pub verified: bool,
    pub tree_size: Option<u64>,
    pub root_hash: Option<String>,
    /// The first problem found, when not verified.
    pub problem: Option<String>,
    /// Set when the stored tree contradicts a checkpoint the ledger signed: the ledger has
    /// halted (no signatures, no requests served) until an operator runs `tiergate ledger recover`.
    pub contradiction: Option<crate::ledger::Contradiction>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VerifyQuery {
    /// A signed checkpoint you kept (the C2SP note, as `GET /v1/ledger/checkpoint` returned
    /// it): the stored tree must extend it.
    pub checkpoint: Option<String>,
}

/// Verify the stored ledger: recompute every leaf from the stored entries and compare with
/// the stored Merkle tree, and check that the stored tree extends every checkpoint the ledger
/// signed before (and the auditor's own, if given). Tampering done directly in the database
/// shows up here.
#[utoipa::path(
    tag = "ledger", security(("api_key" = ["auditor"])), params(VerifyQuery),
    responses((status = 200, body = VerificationBody), (status = 422, description = "`checkpoint` is not a checkpoint signed by this ledger, or a parameter is malformed", body = ErrorBody))
)]
#[get("/v1/ledger/verify")]
pub async fn verify(state: web::Data<AppState>, query: web::Query<VerifyQuery>) -> Result<HttpResponse, ApiError> {
    let ledger = state.router.ledger();
    if let Some(note) = &query.checkpoint {
        crate::ledger::verify_checkpoint(note, &ledger.verifier_key())
            .map_err(|error| ApiError::InvalidRequest(format!("checkpoint: not a checkpoint signed by this ledger: {error:#}")))?;
    }
    let verification = ledger.verify(query.checkpoint.as_deref()).await?;
    let contradiction = verification.contradiction;
    // A contradiction is the problem even when every entry matches its leaf.
    let (tree_size, root_hash, problem) = match verification.entries {
        Ok(verified) => (Some(verified.tree_size), Some(verified.root_hash), contradiction.as_ref().map(ToString::to_string)),
        Err(problem) => (None, None, Some(problem.to_string())),
    };
    let body = VerificationBody { verified: problem.is_none(), tree_size, root_hash, problem, contradiction };
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyQuery {
    /// Size of the later tree (default: the current tree).
    pub to: Option<u64>,
}

/// Prove that the log of `to` entries (default: the current log) extends the log of
/// `from_size` entries: nothing was rewritten in between.
#[utoipa::path(
    tag = "ledger", security(("api_key" = ["auditor"])),
    params(("from_size" = u64, Path, description = "Size of the earlier tree (from an earlier checkpoint)"), ConsistencyQuery),
    responses((status = 200, body = ConsistencyProof), (status = 404, body = ErrorBody))
)]
#[get("/v1/ledger/consistency/{from_size}")]
pub async fn get_consistency(
    state: web::Data<AppState>,
    from_size: web::Path<u64>,
    query: web::Query<ConsistencyQuery>,
) -> Result<HttpResponse, ApiError> {
    let from_size = from_size.into_inner();
    let proof = state.router.ledger().prove_consistency(from_size, query.to).await?.ok_or_else(|| {
        ApiError::NotFound(format!("from_size: {from_size} (to {:?}) is not a pair of sizes 1 <= from <= to <= the current tree size", query.to))
    })?;
    Ok(HttpResponse::Ok().json(proof))
}

/// Filters for listing ledger entries; all are optional and narrow the result.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LedgerQuery {
    /// First index (inclusive).
    pub from_index: Option<u64>,
    /// Last index (exclusive).
    pub to_index: Option<u64>,
    /// Entries written at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Entries written before this RFC 3339 time.
    pub until: Option<String>,
    /// System card id.
    pub system: Option<String>,
    /// Policy bundle `id@version`.
    pub policy: Option<String>,
    /// `served`, `denied` or `held_for_review`.
    pub outcome: Option<String>,
    /// Index of the tier that served the answer.
    pub tier: Option<u64>,
    /// `inference` or `governance`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub entry_type: Option<String>,
    /// The entries of one request (its `X-Request-Id`).
    pub request_id: Option<String>,
    /// At most this many entries (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// A time parameter in RFC 3339, normalised to the stored form (UTC, microseconds); a 422
/// naming the parameter otherwise. Shared by the ledger queries and policy replay.
pub(super) fn rfc3339_param(name: &str, value: &Option<String>) -> Result<Option<String>, ApiError> {
    value
        .as_deref()
        .map(|text| {
            chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&chrono::Utc).to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
                .map_err(|e| ApiError::InvalidRequest(format!("{name}: {text:?} is not an RFC 3339 time ({e})")))
        })
        .transpose()
}

impl LedgerQuery {
    pub(crate) fn into_filter(self) -> Result<LedgerFilter, ApiError> {
        let limit = self.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::InvalidRequest(format!("limit: {limit} is outside 1..=1000")));
        }
        Ok(LedgerFilter {
            from_index: self.from_index.map(|i| i as i64),
            to_index: self.to_index.map(|i| i as i64),
            since: rfc3339_param("since", &self.since)?,
            until: rfc3339_param("until", &self.until)?,
            system_id: self.system,
            policy: self.policy,
            outcome: self.outcome,
            served_tier: self.tier.map(|t| t as i64),
            entry_type: self.entry_type,
            request_id: self.request_id,
            limit: i64::from(limit),
        })
    }
}

#[derive(Serialize, ToSchema)]
pub struct LedgerPage {
    pub entries: Vec<LedgerRecord>,
    /// Pass as `from_index` to get the next page; absent on the last page.
    pub next_from_index: Option<u64>,
}

/// List ledger entries by index range, time range, system, policy version, tier served,
/// outcome or type.
#[utoipa::path(tag = "ledger", security(("api_key" = ["auditor"])), params(LedgerQuery), responses((status = 200, body = LedgerPage), (status = 422, body = ErrorBody)))]
#[get("/v1/ledger/entries")]
pub async fn list_entries(state: web::Data<AppState>, query: web::Query<LedgerQuery>) -> Result<HttpResponse, ApiError> {
    let filter = query.into_inner().into_filter()?;
    let entries = state.router.ledger().query(&filter).await?;
    let next_from_index = (entries.len() as i64 == filter.limit).then(|| entries.last().map(|e| e.index + 1)).flatten();
    Ok(HttpResponse::Ok().json(LedgerPage { entries, next_from_index }))
}

/// The same listing as CSV for spreadsheets (one row per entry, without the entry body; the
/// leaf hash ties each row to the verifiable log).
#[utoipa::path(tag = "ledger", security(("api_key" = ["auditor"])), params(LedgerQuery), responses((status = 200, description = "CSV", content_type = "text/csv", body = String), (status = 422, body = ErrorBody)))]
#[get("/v1/ledger/entries.csv")]
pub async fn list_entries_csv(state: web::Data<AppState>, query: web::Query<LedgerQuery>) -> Result<HttpResponse, ApiError> {
    let filter = query.into_inner().into_filter()?;
    let entries = state.router.ledger().query(&filter).await?;
    let mut csv = String::from("index,time,request_id,type,system,policy,outcome,served_tier,leaf_hash\r\n");
    for e in entries {
        let fields = [
            e.index.to_string(),
            e.time,
            e.request_id,
            e.entry_type,
            e.system.unwrap_or_default(),
            e.policy.unwrap_or_default(),
            e.outcome,
            e.served_tier.map(|t| t.to_string()).unwrap_or_default(),
            e.leaf_hash,
        ];
        let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        csv.push_str(&row.join(","));
        csv.push_str("\r\n");
    }
    Ok(HttpResponse::Ok().content_type("text/csv; charset=utf-8").body(csv))
}

/// RFC 4180 quoting; a leading formula character is neutralised so a spreadsheet never runs
/// a value from the ledger as a formula.
fn csv_field(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@']) { format!("'{value}") } else { value.to_owned() };
    if value.contains([',', '"', '\r', '\n']) { format!("\"{}\"", value.replace('"', "\"\"")) } else { value }
}

/// The auditor bundle: the export, the public key, and every card and policy version the
/// entries cite, by digest. Verify with `tiergate ledger verify <bundle> --key <key>`.
#[utoipa::path(tag = "ledger", security(("api_key" = ["auditor"])), responses((status = 200, description = "Audit bundle (JSON)", body = Object)))]
#[get("/v1/ledger/bundle")]
pub async fn audit_bundle(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.router.ledger().audit_bundle().await?))
}

/// Checkpoints published so far (on demand and every `checkpoint_interval_s`), newest first:
/// keep any of them to check later that the log was only appended to.
#[utoipa::path(tag = "ledger", security(("api_key" = ["auditor"])), responses((status = 200, body = Vec<PublishedCheckpoint>)))]
#[get("/v1/ledger/checkpoints")]
pub async fn list_checkpoints(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.router.ledger().published_checkpoints(100).await?))
}
