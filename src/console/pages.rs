//! The console's pages and forms. Each calls the same domain function as its API operation and
//! follows that operation's role rule.

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use askama::Template;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::{
    AUDIT_BUNDLE, Chrome, ConsoleError, EXPERIMENT_REPORT, EXPORT_LEDGER, GET_ENTRY, GET_VERSION, ISSUE_KEY, LIST_CHECKPOINTS, LIST_EXPERIMENTS,
    LIST_KEYS, LIST_LEDGER, LIST_REVIEWS, METRICS, RECORD_VERDICT, REVOKE_KEY, VERIFY_LEDGER, check_form, html,
    overview::{self, Figures, GovernanceEvent},
    parse_query, see_other,
    session::{SignInFirst, require},
};
use crate::{
    access::{KeyInfo, NewKey, Role},
    api::{
        AppState,
        ledger::{LedgerQuery, export_body},
        registry::{CardCollection, VersionDetail, detail, find},
        reviews::{Verdict, VerdictRequest, decide},
    },
    ledger::{LedgerRecord, PublishedCheckpoint, rollup},
    store::ReviewRow,
};

type Page = Result<HttpResponse, SignInFirst>;

const STYLE_SHEET: &str = include_str!("assets/console.css");
const PROOF_SCRIPT: &str = include_str!("assets/proof.js");

pub async fn style_sheet() -> HttpResponse {
    HttpResponse::Ok().content_type("text/css; charset=utf-8").body(STYLE_SHEET)
}

pub async fn proof_script() -> HttpResponse {
    HttpResponse::Ok().content_type("text/javascript; charset=utf-8").body(PROOF_SCRIPT)
}

pub async fn home(state: web::Data<AppState>, req: HttpRequest) -> Page {
    let signed_in = require(&state, &req).await?;
    // The first page this key's roles may see.
    let first = [("/console/overview", METRICS), ("/console/ledger", LIST_LEDGER), ("/console/reviews", LIST_REVIEWS), ("/console/keys", LIST_KEYS)]
        .into_iter()
        .find(|(_, operation)| operation.allows(&state, &signed_in.caller))
        .map_or("/console/overview", |(href, _)| href);
    Ok(see_other(first))
}

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ConsoleError> {
    Err(ConsoleError::new(StatusCode::NOT_FOUND, "No such page", format!("The console has no page {} {}.", req.method(), req.path())))
}

// ---------------------------------------------------------------- overview

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverviewQuery {
    window: Option<String>,
}

struct TierView {
    index: usize,
    name: String,
    model: String,
    weights: String,
    circuit: String,
    queued: usize,
}

struct SystemView {
    id: String,
    version: i64,
    digest: String,
    policy: String,
    policy_version: i64,
    policy_id: String,
    tiers: Vec<TierView>,
    figures: Figures,
    timeline: String,
    truncated: bool,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    chrome: Chrome,
    windows: Vec<(&'static str, &'static str, bool)>,
    since: String,
    until: String,
    systems: Vec<SystemView>,
}

/// The windows the overview offers: name, label, hours, and the rollup buckets it reads
/// (minutes for the last hour, hours for longer: at most 61 and 169 rows per system).
const WINDOWS: [(&str, &str, i64, i64); 3] =
    [("1h", "last hour", 1, rollup::MINUTE), ("24h", "last day", 24, rollup::HOUR), ("7d", "last 7 days", 24 * 7, rollup::HOUR)];
/// Governance events listed per system and window at most; beyond it the page says so.
const OVERVIEW_EVENT_LIMIT: usize = 500;

pub async fn overview(state: web::Data<AppState>, req: HttpRequest) -> Page {
    let signed_in = require(&state, &req).await?;
    METRICS.require(&state, &signed_in.caller)?;
    let query: OverviewQuery = parse_query(&req)?;
    let window = query.window.unwrap_or_else(|| "24h".into());
    let Some(&(_, _, hours, span_s)) = WINDOWS.iter().find(|(name, ..)| *name == window) else {
        return Err(ConsoleError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "That window is not valid",
            format!("window: {window:?} is not 1h, 24h or 7d"),
        )
        .into());
    };
    let until = Utc::now();
    // Whole buckets: the window starts at the start of the bucket that holds `until - hours`.
    let since = rollup::bucket_start(until - chrono::Duration::hours(hours), span_s);
    let health = state.router.tier_health();
    let mut systems = Vec::new();
    for system in state.router.systems() {
        let id = &system.reference.id;
        let buckets = state.router.ledger().rollups(id, span_s, since).await?;
        let (events, truncated) = governance_events(&state, id, since).await?;
        let tiers = system
            .tiers
            .iter()
            .map(|tier| {
                let (circuit, queued) = health
                    .get(&format!("{}/{}", system.reference.id, tier.index))
                    .map(|(circuit, queued)| (serde_json::to_value(circuit).ok().and_then(|v| v.as_str().map(str::to_owned)), *queued))
                    .unwrap_or((None, 0));
                TierView {
                    index: tier.index,
                    name: tier.name.clone(),
                    model: format!("{}@{}", tier.model.id, tier.model.version),
                    weights: tier.loaded_weights_sha256.chars().take(16).collect(),
                    circuit: circuit.unwrap_or_else(|| "unknown".into()),
                    queued,
                }
            })
            .collect();
        systems.push(SystemView {
            id: id.clone(),
            version: system.reference.version,
            digest: system.digest.clone(),
            policy: format!("{}@{}", system.policy.reference.id, system.policy.reference.version),
            policy_id: system.policy.reference.id.clone(),
            policy_version: system.policy.reference.version,
            tiers,
            timeline: overview::timeline(&buckets, &events, since, until, span_s),
            figures: Figures::of(&buckets, events),
            truncated,
        });
    }
    let chrome = Chrome::new(&state, &signed_in, "/console/overview");
    let windows = WINDOWS.iter().map(|(name, label, ..)| (*name, *label, *name == window)).collect();
    Ok(html(&OverviewPage { chrome, windows, since: stamp(since), until: stamp(until), systems })?)
}

/// The governance entries of `system` written since `since` (the first
/// [`OVERVIEW_EVENT_LIMIT`] of them), oldest first, and whether there were more.
async fn governance_events(state: &AppState, system: &str, since: DateTime<Utc>) -> Result<(Vec<GovernanceEvent>, bool), ConsoleError> {
    let filter = crate::store::LedgerFilter {
        since: Some(since.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        system_id: Some(system.to_owned()),
        entry_type: Some("governance".into()),
        limit: OVERVIEW_EVENT_LIMIT as i64 + 1,
        ..Default::default()
    };
    let records = state.router.ledger().query(&filter).await?;
    let truncated = records.len() > OVERVIEW_EVENT_LIMIT;
    let events = records.iter().take(OVERVIEW_EVENT_LIMIT).filter_map(|r| GovernanceEvent::of(r.index, &r.entry)).collect();
    Ok((events, truncated))
}

fn stamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

// ---------------------------------------------------------------- ledger explorer

#[derive(Template)]
#[template(path = "ledger.html")]
struct LedgerPage {
    chrome: Chrome,
    filters: LedgerFilters,
    entries: Vec<LedgerRecord>,
    next_page: Option<String>,
    may_export: bool,
}

/// The filter form's values, as given (empty when not).
#[derive(Debug, Default, Deserialize)]
struct LedgerFilters {
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    system: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    tier: String,
    #[serde(default)]
    policy: String,
    #[serde(default, rename = "type")]
    entry_type: String,
    #[serde(default)]
    request_id: String,
}

pub async fn ledger(state: web::Data<AppState>, req: HttpRequest) -> Page {
    let signed_in = require(&state, &req).await?;
    LIST_LEDGER.require(&state, &signed_in.caller)?;
    let mut query: LedgerQuery = parse_query(&req)?;
    let filters: LedgerFilters = parse_query(&req)?;
    if query.limit.is_none() {
        query.limit = Some(50);
    }
    let filter = query.into_filter().map_err(ConsoleError::from)?;
    let entries = state.router.ledger().query(&filter).await?;
    let next_page = (entries.len() as i64 == filter.limit).then(|| entries.last().map(|e| e.index + 1)).flatten().map(|next| {
        let kept: Vec<&str> = req.query_string().split('&').filter(|p| !p.is_empty() && !p.starts_with("from_index=")).collect();
        format!("/console/ledger?{}from_index={next}", kept.iter().map(|p| format!("{p}&")).collect::<String>())
    });
    let chrome = Chrome::new(&state, &signed_in, "/console/ledger");
    let may_export = EXPORT_LEDGER.allows(&state, &signed_in.caller);
    Ok(html(&LedgerPage { chrome, filters, entries, next_page, may_export })?)
}

struct AttemptView {
    tier: u64,
    tier_name: String,
    model_id: String,
    model_version: String,
    weights: String,
    decision: String,
    reasons: Vec<String>,
    latency_ms: String,
    tokens: String,
    cost: String,
    error: Option<String>,
    signals: String,
    accept_input: String,
}

#[derive(Template)]
#[template(path = "entry.html")]
struct EntryPage {
    chrome: Chrome,
    index: u64,
    entry_type: String,
    time: String,
    request_id: String,
    outcome: String,
    served_tier: String,
    escalated: bool,
    system: Option<(String, String, String)>,
    policy: Option<(String, String, String)>,
    route_decision: String,
    route_reasons: Vec<String>,
    route_input: String,
    attempts: Vec<AttemptView>,
    entry_json: String,
    leaf_hash: String,
    tree_size: u64,
    proof_data: String,
    verifier_key: String,
    may_see_versions: bool,
}

fn pretty(value: Option<&Value>) -> String {
    value.map(|v| serde_json::to_string_pretty(v).unwrap_or_default()).unwrap_or_default()
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn reasons(decision: Option<&Value>) -> Vec<String> {
    decision.and_then(|d| d.get("reasons")).and_then(Value::as_array).map(|r| r.iter().map(|r| text(Some(r))).collect()).unwrap_or_default()
}

/// `(id, version, digest)` of a cited artifact.
fn cited(value: Option<&Value>) -> Option<(String, String, String)> {
    let value = value?;
    Some((text(value.get("id")), text(value.get("version")), text(value.get("digest"))))
}

pub async fn entry(state: web::Data<AppState>, req: HttpRequest, index: web::Path<String>) -> Page {
    let signed_in = require(&state, &req).await?;
    GET_ENTRY.require(&state, &signed_in.caller)?;
    let index: u64 = index.parse().map_err(|_| {
        ConsoleError::new(StatusCode::NOT_FOUND, "No such entry", format!("{:?} is not an entry index (a number from 0)", index.as_str()))
    })?;
    let ledger = state.router.ledger();
    // With the exact stored bytes: what the browser hashes into the leaf.
    let (proven, entry_text) = ledger
        .prove_with_text(index)
        .await?
        .ok_or_else(|| ConsoleError::new(StatusCode::NOT_FOUND, "No such entry", format!("The ledger has no entry {index}.")))?;
    let entry = &proven.entry;
    let attempts = entry
        .get("attempts")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|attempt| AttemptView {
            tier: attempt.get("tier").and_then(Value::as_u64).unwrap_or_default(),
            tier_name: text(attempt.get("tier_name")),
            model_id: text(attempt.pointer("/model/id")),
            model_version: text(attempt.pointer("/model/version")),
            weights: text(attempt.pointer("/model/loaded_weights_sha256")),
            decision: text(attempt.pointer("/accept/decision/action")),
            reasons: reasons(attempt.pointer("/accept/decision")),
            latency_ms: text(attempt.get("latency_ms")),
            tokens: format!("{} prompt + {} completion", text(attempt.pointer("/tokens/prompt")), text(attempt.pointer("/tokens/completion"))),
            cost: text(attempt.get("cost")),
            error: attempt.get("error").filter(|e| !e.is_null()).map(|e| text(Some(e))),
            signals: pretty(attempt.get("signals")),
            accept_input: pretty(attempt.pointer("/accept/input")),
        })
        .collect();
    let proof_data = serde_json::json!({
        "index": index,
        "entry": entry_text,
        "tree_size": proven.tree_size,
        "proof": proven.proof,
        "checkpoint": proven.checkpoint,
    });
    let page = EntryPage {
        chrome: Chrome::new(&state, &signed_in, "/console/ledger"),
        index,
        entry_type: text(entry.get("type")),
        time: text(entry.get("time")),
        request_id: text(entry.get("request_id")),
        outcome: text(entry.get("outcome")),
        served_tier: text(entry.get("served_tier")),
        escalated: entry.get("escalated").and_then(Value::as_bool).unwrap_or(false),
        system: cited(entry.get("system")),
        policy: cited(entry.get("policy")),
        route_decision: text(entry.pointer("/route/decision/action")),
        route_reasons: reasons(entry.pointer("/route/decision")),
        route_input: pretty(entry.pointer("/route/input")),
        attempts,
        entry_json: serde_json::to_string_pretty(entry).unwrap_or_default(),
        leaf_hash: proven.leaf_hash.clone(),
        tree_size: proven.tree_size,
        // Inside <script type="application/json">: `<` escaped so no text can close the element.
        proof_data: proof_data.to_string().replace('<', "\\u003c"),
        // The current key: the one the fresh checkpoint above is signed with.
        verifier_key: ledger.verifier_key().lines().next().unwrap_or_default().to_owned(),
        may_see_versions: GET_VERSION.allows(&state, &signed_in.caller),
    };
    Ok(html(&page)?)
}

#[derive(Template)]
#[template(path = "checkpoints.html")]
struct CheckpointsPage {
    chrome: Chrome,
    checkpoints: Vec<PublishedCheckpoint>,
    verifier_key: String,
    may_verify: bool,
    may_export: bool,
    may_bundle: bool,
}

pub async fn checkpoints(state: web::Data<AppState>, req: HttpRequest) -> Page {
    let signed_in = require(&state, &req).await?;
    LIST_CHECKPOINTS.require(&state, &signed_in.caller)?;
    let ledger = state.router.ledger();
    let page = CheckpointsPage {
        checkpoints: ledger.published_checkpoints(100).await?,
        verifier_key: ledger.verifier_key(),
        may_verify: VERIFY_LEDGER.allows(&state, &signed_in.caller),
        may_export: EXPORT_LEDGER.allows(&state, &signed_in.caller),
        may_bundle: AUDIT_BUNDLE.allows(&state, &signed_in.caller),
        chrome: Chrome::new(&state, &signed_in, "/console/ledger/checkpoints"),
    };
    Ok(html(&page)?)
}

#[derive(Template)]
#[template(path = "verify.html")]
struct VerifyPage {
    chrome: Chrome,
    verified: bool,
    tree_size: Option<u64>,
    root_hash: Option<String>,
    problem: Option<String>,
}

pub async fn verify_log(state: web::Data<AppState>, req: HttpRequest) -> Page {
    let signed_in = require(&state, &req).await?;
    VERIFY_LEDGER.require(&state, &signed_in.caller)?;
    let verification = state.router.ledger().verify(None).await?;
    let contradiction = verification.contradiction.map(|c| c.to_string());
    let (tree_size, root_hash, problem) = match verification.entries {
        Ok(verified) => (Some(verified.tree_size), Some(verified.root_hash), contradiction),
        Err(problem) => (None, None, Some(problem.to_string())),
    };
    let page = VerifyPage {
        chrome: Chrome::new(&state, &signed_in, "/console/ledger/checkpoints"),
        verified: problem.is_none(),
        tree_size,
        root_hash,
        problem,
    };
    Ok(html(&page)?)
}

pub async fn export(state: web::Data<AppState>, req: HttpRequest) -> Page {
    let signed_in = require(&state, &req).await?;
    EXPORT_LEDGER.require(&state, &signed_in.caller)?;
    let body = export_body(state.router.ledger().export_stream().await?);
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header(("Content-Disposition", "attachment; filename=\"tiergate-ledger.jsonl\""))
        .streaming(body))
}

pub async fn bundle(state: web::Data<AppState>, req: HttpRequest) -> Page {
    let signed_in = require(&state, &req).await?;
    AUDIT_BUNDLE.require(&state, &signed_in.caller)?;
    let bundle = state.router.ledger().audit_bundle().await?;
    Ok(HttpResponse::Ok().insert_header(("Content-Disposition", "attachment; filename=\"tiergate-audit-bundle.json\"")).json(bundle))
}

#[derive(Template)]
#[template(path = "version.html")]
struct VersionPage {
    chrome: Chrome,
    version: VersionDetail,
}

pub async fn artifact_version(state: web::Data<AppState>, req: HttpRequest, path: web::Path<(String, String, String)>) -> Page {
    let signed_in = require(&state, &req).await?;
    GET_VERSION.require(&state, &signed_in.caller)?;
    let (collection_name, id, version) = path.into_inner();
    let collection: CardCollection = serde_json::from_value(Value::String(collection_name.clone())).map_err(|_| {
        ConsoleError::new(
            StatusCode::NOT_FOUND,
            "No such collection",
            format!("{collection_name:?} is not model-cards, system-cards, policies or calibration-reports"),
        )
    })?;
    let version: i64 =
        version.parse().map_err(|_| ConsoleError::new(StatusCode::NOT_FOUND, "No such version", format!("{version:?} is not a version number")))?;
    let detail = detail(find(&state, collection, &id, version).await?)?;
    Ok(html(&VersionPage { chrome: Chrome::new(&state, &signed_in, ""), version: detail })?)
}

// ---------------------------------------------------------------- review queue

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewsQuery {
    status: Option<String>,
}

#[derive(Template)]
#[template(path = "reviews.html")]
struct ReviewsPage {
    chrome: Chrome,
    status: String,
    statuses: Vec<(&'static str, bool)>,
    items: Vec<ReviewRow>,
}

const REVIEW_STATUSES: [&str; 5] = ["pending", "approved", "corrected", "rejected", "all"];

pub async fn reviews(state: web::Data<AppState>, req: HttpRequest) -> Page {
    let signed_in = require(&state, &req).await?;
    LIST_REVIEWS.require(&state, &signed_in.caller)?;
    let query: ReviewsQuery = parse_query(&req)?;
    let status = query.status.unwrap_or_else(|| "pending".into());
    if !REVIEW_STATUSES.contains(&status.as_str()) {
        return Err(ConsoleError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "That filter is not valid",
            format!("status: {status:?} is not one of {}", REVIEW_STATUSES.join(", ")),
        )
        .into());
    }
    let items = state.store.reviews((status != "all").then_some(status.as_str()), 500).await?;
    let statuses = REVIEW_STATUSES.iter().map(|s| (*s, *s == status)).collect();
    Ok(html(&ReviewsPage { chrome: Chrome::new(&state, &signed_in, "/console/reviews"), status, statuses, items })?)
}

#[derive(Template)]
#[template(path = "review.html")]
struct ReviewPage {
    chrome: Chrome,
    review: ReviewRow,
    messages: Vec<(String, String)>,
    attempts: Vec<(u64, String, String, Vec<String>)>,
    may_decide: bool,
    may_see_entries: bool,
}

pub async fn review(state: web::Data<AppState>, req: HttpRequest, index: web::Path<String>) -> Page {
    let signed_in = require(&state, &req).await?;
    LIST_REVIEWS.require(&state, &signed_in.caller)?;
    let index = review_index(&index)?;
    let review = state.store.review(index).await?.ok_or_else(|| {
        ConsoleError::new(StatusCode::NOT_FOUND, "No such held answer", format!("No answer is held for review at ledger index {index}."))
    })?;
    let messages = serde_json::from_str::<Value>(&review.messages)
        .ok()
        .and_then(|m| m.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|m| (text(m.get("role")), text(m.get("content"))))
        .collect();
    let held = state.router.ledger().entry(index as u64).await?.unwrap_or(Value::Null);
    let attempts = held
        .get("attempts")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|a| {
            let decision = a.pointer("/accept/decision");
            (
                a.get("tier").and_then(Value::as_u64).unwrap_or_default(),
                text(decision.and_then(|d| d.get("action"))),
                pretty(a.get("signals")),
                reasons(decision),
            )
        })
        .collect();
    let page = ReviewPage {
        may_decide: review.status == "pending" && RECORD_VERDICT.allows(&state, &signed_in.caller),
        may_see_entries: GET_ENTRY.allows(&state, &signed_in.caller),
        chrome: Chrome::new(&state, &signed_in, "/console/reviews"),
        review,
        messages,
        attempts,
    };
    Ok(html(&page)?)
}

fn review_index(text: &str) -> Result<i64, ConsoleError> {
    text.parse::<i64>()
        .ok()
        .filter(|i| *i >= 0)
        .ok_or_else(|| ConsoleError::new(StatusCode::NOT_FOUND, "No such held answer", format!("{text:?} is not a ledger index")))
}

#[derive(Debug, Deserialize)]
pub struct VerdictForm {
    csrf: String,
    verdict: String,
    #[serde(default)]
    correction: String,
    #[serde(default)]
    comment: String,
}

pub async fn record_verdict(state: web::Data<AppState>, req: HttpRequest, index: web::Path<String>, form: web::Form<VerdictForm>) -> Page {
    let signed_in = require(&state, &req).await?;
    check_form(&req, &signed_in, &form.csrf)?;
    RECORD_VERDICT.require(&state, &signed_in.caller)?;
    let index = review_index(&index)?;
    let verdict = match form.verdict.as_str() {
        "approve" => Verdict::Approve,
        "correct" => Verdict::Correct,
        "reject" => Verdict::Reject,
        other => {
            return Err(ConsoleError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "That verdict is not valid",
                format!("verdict: {other:?} is not approve, correct or reject"),
            )
            .into());
        }
    };
    let non_empty = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let request = VerdictRequest { verdict, correction: non_empty(&form.correction), comment: non_empty(&form.comment) };
    decide(&state, &signed_in.caller, index, &request).await?;
    Ok(see_other(&format!("/console/reviews/{index}")))
}

// ---------------------------------------------------------------- keys

#[derive(Template)]
#[template(path = "keys.html")]
struct KeysPage {
    chrome: Chrome,
    keys: Vec<KeyInfo>,
    roles: Vec<&'static str>,
    may_issue: bool,
    may_revoke: bool,
    issued: Option<(KeyInfo, String)>,
}

async fn keys_page(state: &AppState, signed_in: &super::SignedIn, issued: Option<(KeyInfo, String)>) -> Result<HttpResponse, SignInFirst> {
    let page = KeysPage {
        chrome: Chrome::new(state, signed_in, "/console/keys"),
        keys: state.access.list().await?,
        roles: Role::ALL.iter().map(|r| r.as_str()).collect(),
        may_issue: ISSUE_KEY.allows(state, &signed_in.caller),
        may_revoke: REVOKE_KEY.allows(state, &signed_in.caller),
        issued,
    };
    Ok(html(&page)?)
}

pub async fn keys(state: web::Data<AppState>, req: HttpRequest) -> Page {
    let signed_in = require(&state, &req).await?;
    LIST_KEYS.require(&state, &signed_in.caller)?;
    keys_page(&state, &signed_in, None).await
}

/// The form's fields as pairs: `role` repeats, one per ticked box.
pub async fn issue_key(state: web::Data<AppState>, req: HttpRequest, form: web::Form<Vec<(String, String)>>) -> Page {
    let signed_in = require(&state, &req).await?;
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim().to_owned()).unwrap_or_default();
    check_form(&req, &signed_in, &field("csrf"))?;
    ISSUE_KEY.require(&state, &signed_in.caller)?;
    let mut roles = Vec::new();
    for (_, value) in form.iter().filter(|(k, _)| k == "role") {
        roles.push(
            Role::parse(value).ok_or_else(|| {
                ConsoleError::new(StatusCode::UNPROCESSABLE_ENTITY, "That key is not valid", format!("role: {value:?} is not a role"))
            })?,
        );
    }
    let scopes = Some(field("scopes")).filter(|s| !s.is_empty()).map(|s| s.split(',').map(|s| s.trim().to_owned()).collect());
    let expires_at = match field("expires_at") {
        text if text.is_empty() => None,
        text => Some(
            DateTime::parse_from_rfc3339(&text)
                .map_err(|e| {
                    ConsoleError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "That key is not valid",
                        format!("expires_at: {text:?} is not an RFC 3339 time ({e})"),
                    )
                })?
                .with_timezone(&Utc),
        ),
    };
    let new = NewKey { subject: field("subject"), roles, scopes, expires_at, rate_limit_per_minute: None, daily_token_budget: None };
    let issued = crate::api::keys::issue(&state, &signed_in.caller, &new).await?;
    // Shown on this response only; the page is `no-store`, and only the hash is kept.
    keys_page(&state, &signed_in, Some((issued.key, issued.token))).await
}

#[derive(Debug, Deserialize)]
pub struct RevokeForm {
    csrf: String,
}

pub async fn revoke_key(state: web::Data<AppState>, req: HttpRequest, key_id: web::Path<String>, form: web::Form<RevokeForm>) -> Page {
    let signed_in = require(&state, &req).await?;
    check_form(&req, &signed_in, &form.csrf)?;
    REVOKE_KEY.require(&state, &signed_in.caller)?;
    crate::api::keys::revoke(&state, &signed_in.caller, &key_id).await?;
    Ok(see_other("/console/keys"))
}

// ---------------------------------------------------------------- experiments

#[derive(Template)]
#[template(path = "experiments.html")]
struct ExperimentsPage {
    chrome: Chrome,
    runs: Vec<crate::api::experiments::ExperimentRun>,
}

pub async fn experiments(state: web::Data<AppState>, req: HttpRequest) -> Page {
    let signed_in = require(&state, &req).await?;
    LIST_EXPERIMENTS.require(&state, &signed_in.caller)?;
    let runs = state.store.experiment_runs().await?.into_iter().map(Into::into).collect();
    Ok(html(&ExperimentsPage { chrome: Chrome::new(&state, &signed_in, "/console/experiments"), runs })?)
}

#[derive(Template)]
#[template(path = "experiment.html")]
struct ExperimentPage {
    chrome: Chrome,
    report: crate::experiment::report::ExperimentReport,
    metric: &'static str,
    digest: String,
    /// (quantity, control, treatment), formatted.
    rows: Vec<(&'static str, String, String)>,
}

/// `value [low, high]`, or a dash when there is no data.
fn estimate(estimate: Option<crate::experiment::stats::Estimate>) -> String {
    estimate.map_or_else(|| "–".to_owned(), |e| format!("{} [{}, {}]", e.value, e.low, e.high))
}

pub async fn experiment(state: web::Data<AppState>, req: HttpRequest, path: web::Path<String>) -> Page {
    let signed_in = require(&state, &req).await?;
    EXPERIMENT_REPORT.require(&state, &signed_in.caller)?;
    let name = path.into_inner();
    // Listed as id@version; the report is of the id's latest run.
    let id = name.split('@').next().unwrap_or_default();
    let report = crate::api::experiments::report_of(&state, id).await?;
    let (control, treatment) = (&report.control_arm, &report.treatment_arm);
    let rows = vec![
        ("Requests", control.requests.to_string(), treatment.requests.to_string()),
        ("Containment", estimate(control.containment), estimate(treatment.containment)),
        ("Escalation rate", estimate(control.escalation_rate), estimate(treatment.escalation_rate)),
        ("Denial rate", estimate(control.denial_rate), estimate(treatment.denial_rate)),
        ("Error rate", estimate(control.error_rate), estimate(treatment.error_rate)),
        ("Latency p50 (ms)", estimate(control.latency_ms_p50), estimate(treatment.latency_ms_p50)),
        ("Latency p95 (ms)", estimate(control.latency_ms_p95), estimate(treatment.latency_ms_p95)),
        ("Cost per request", estimate(control.cost_per_request), estimate(treatment.cost_per_request)),
        ("Labelled answers", control.labelled.to_string(), treatment.labelled.to_string()),
        ("Feedback accuracy", estimate(control.feedback_accuracy), estimate(treatment.feedback_accuracy)),
    ];
    let digest = report.digest();
    Ok(html(&ExperimentPage {
        chrome: Chrome::new(&state, &signed_in, "/console/experiments"),
        metric: report.verdict.metric.as_str(),
        report,
        digest,
        rows,
    })?)
}
