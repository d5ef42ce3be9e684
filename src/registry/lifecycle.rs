//! The lifecycle of a version (submit → approve → activate → retire, and rollback), each step
//! recorded in the ledger as a governance event in the same transaction as the change.

use std::time::Duration;

use anyhow::Context;

use serde::Serialize;
use serde_json::{Value, json};

use super::{ArtifactKind, ArtifactRef, CardError, CardKind, Registry, Stored, parse_card};
use crate::{
    ledger::{EntryDraft, Ledger},
    policy::{BundleSource, CompileError, CompiledBundle, TestReport},
    store::{AliasMove, NewArtifactVersion, ShadowRow, Store, StoredArtifactVersion},
};

/// Lifecycle states. A version's content never changes; only its status does.
pub const DRAFT: &str = "draft";
pub const APPROVED: &str = "approved";
pub const ACTIVE: &str = "active";
pub const RETIRED: &str = "retired";

/// Who performs a governance action (the subject of the API key used), and the request that
/// carried it.
#[derive(Debug, Clone)]
pub struct Actor {
    pub id: String,
    pub key_id: String,
    pub roles: Vec<String>,
    pub request_id: String,
}

/// Why a lifecycle step was refused. Every message names the version and the reason.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("{0}")]
    NotFound(String),
    /// The four-eyes rule: nobody approves or activates their own version.
    #[error("{0}")]
    FourEyes(String),
    /// The step does not fit the version's current status.
    #[error("{0}")]
    Conflict(String),
    /// The document is well-formed but refers to something that does not exist, or is of the
    /// wrong kind for where it was sent.
    #[error("{0}")]
    Unprocessable(String),
    #[error(transparent)]
    Card(#[from] CardError),
    #[error("policy bundle does not compile: {0}")]
    PolicyCompile(#[from] CompileError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The outcome of a lifecycle step, with the ledger entry that records it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GovernanceRecord {
    /// `submitted`, `approved`, `activated`, `rolled_back` or `retired`.
    pub event: String,
    pub kind: String,
    pub id: String,
    pub version: i64,
    pub digest: String,
    pub status: String,
    /// For activation and rollback: the version that was active before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_active: Option<i64>,
    pub ledger_index: u64,
}

/// The result of a submission: the version (new, or the existing one with identical content).
#[derive(Debug, Clone)]
pub struct Submission {
    pub stored: Stored,
    /// The governance entry of a new version; `None` when an identical version existed.
    pub ledger_index: Option<u64>,
}

impl Registry {
    /// Validates a card and stores it as a new draft version, recording the submission.
    /// A card identical to an existing version (same digest) returns that version and writes
    /// nothing. A system card may only pin model card and policy versions that exist.
    pub async fn submit_card(&self, ledger: &Ledger, expected: CardKind, text: &str, actor: &Actor, now: &str) -> Result<Submission, LifecycleError> {
        let card = parse_card(text)?;
        if card.kind != expected {
            let wanted = match expected {
                CardKind::Model => "model cards",
                CardKind::System => "system cards",
                CardKind::ConfidenceModel => "confidence models",
                CardKind::Experiment => "experiments",
            };
            return Err(LifecycleError::Unprocessable(format!("/kind: {:?} sent where {wanted} are submitted", card.kind.as_str())));
        }
        let kind = match card.kind {
            CardKind::Model => ArtifactKind::ModelCard,
            CardKind::ConfidenceModel => {
                let missing = self.missing_references_of(confidence_model_references(&card.document)).await?;
                if !missing.is_empty() {
                    return Err(LifecycleError::Unprocessable(missing.join("; ")));
                }
                ArtifactKind::ConfidenceModel
            }
            CardKind::Experiment => {
                self.experiment_problems(&card.document).await?;
                ArtifactKind::Experiment
            }
            CardKind::System => {
                let mut problems = self.missing_references(&card.document).await?;
                if problems.is_empty() {
                    problems = self.confidence_model_mismatches(&card.document).await?;
                }
                if !problems.is_empty() {
                    return Err(LifecycleError::Unprocessable(problems.join("; ")));
                }
                ArtifactKind::SystemCard
            }
        };
        Ok(self.store_new_version(ledger, kind, &card.id, text, &card.document, actor, now).await?)
    }

    /// Compiles a policy bundle document (`{"id", "modules": {"<name>.rego": text}, "data"}`)
    /// and runs its tests, then stores it as a new draft version. A bundle that does not
    /// compile is refused with the module, line and column; one whose tests fail is stored
    /// (as a draft, which cannot be approved) and its report says why.
    pub async fn submit_bundle(
        &self,
        ledger: &Ledger,
        original: &str,
        document: &Value,
        actor: &Actor,
        now: &str,
    ) -> Result<(Submission, TestReport), LifecycleError> {
        let source = BundleSource::from_submission(document).map_err(LifecycleError::Unprocessable)?;
        let reference = ArtifactRef { id: source.id.clone(), version: 0 };
        let compiled = CompiledBundle::compile_checked(&source, reference, String::new(), TEST_EVAL_TIMEOUT)?;
        let report = compiled.test_report(&source);
        let submission = self.store_new_version(ledger, ArtifactKind::PolicyBundle, &source.id, original, &source.to_document(), actor, now).await?;
        Ok((submission, report))
    }

    /// Stores `document` as the next draft version of `id`, with its governance entry, unless
    /// a version with the same digest exists (then that one is returned and nothing written).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn store_new_version(
        &self,
        ledger: &Ledger,
        kind: ArtifactKind,
        id: &str,
        original: &str,
        document: &Value,
        actor: &Actor,
        now: &str,
    ) -> anyhow::Result<Submission> {
        let (canonical, digest, identical) = self.identical_version(kind, id, document).await?;
        if let Some(reference) = identical {
            return Ok(Submission { stored: Stored { reference, digest, created: false }, ledger_index: None });
        }
        let mut tx = ledger.begin().await?;
        let new = NewArtifactVersion {
            kind: kind.as_str().to_owned(),
            id: id.to_owned(),
            original: original.to_owned(),
            canonical: String::from_utf8(canonical)?,
            digest: digest.clone(),
            author: actor.id.clone(),
            created_at: now.to_owned(),
            status: DRAFT.to_owned(),
            approved_by: None,
            approved_at: None,
        };
        let version = Store::insert_artifact_version_with(tx.conn(), &new).await?;
        let reference = ArtifactRef { id: id.to_owned(), version };
        let appended = tx.commit(governance_entry("submitted", kind, &reference, &digest, actor, json!({"to": DRAFT}), None)).await?;
        Ok(Submission { stored: Stored { reference, digest, created: true }, ledger_index: Some(appended.index) })
    }

    /// The test report of a stored policy bundle version (compiled afresh).
    pub async fn bundle_test_report(&self, reference: &ArtifactRef) -> Result<TestReport, LifecycleError> {
        let version = self
            .get(ArtifactKind::PolicyBundle, reference)
            .await?
            .ok_or_else(|| LifecycleError::NotFound(format!("policy_bundle {reference} does not exist")))?;
        bundle_tests(&version.document, reference)
    }

    /// Every pinned reference of a system card that does not exist, described.
    pub(super) async fn missing_references(&self, document: &Value) -> anyhow::Result<Vec<String>> {
        self.missing_references_of(system_references(document)).await
    }

    /// Each tier's confidence model must have been fitted on the tier's model and use only
    /// signals the system produces; every tier that breaks this, described.
    pub async fn confidence_model_mismatches(&self, document: &Value) -> anyhow::Result<Vec<String>> {
        let self_check = document.pointer("/escalation/self_check").and_then(Value::as_bool).unwrap_or(false);
        let mut problems = Vec::new();
        for (index, tier) in document.get("tiers").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let Some(text) = tier.get("confidence_model").and_then(Value::as_str) else { continue };
            let (Ok(reference), Ok(tier_model)) =
                (ArtifactRef::parse(text), ArtifactRef::parse(tier.get("model").and_then(Value::as_str).unwrap_or_default()))
            else {
                continue;
            };
            let Some(version) = self.get(ArtifactKind::ConfidenceModel, &reference).await? else { continue };
            let model: crate::confidence::ConfidenceModelDocument =
                serde_json::from_value(version.document).with_context(|| format!("stored confidence model {reference}"))?;
            if let Some(problem) = crate::confidence::tier_mismatch(&format!("/tiers/{index}/confidence_model"), &model, &tier_model, self_check) {
                problems.push(problem);
            }
        }
        Ok(problems)
    }

    pub(super) async fn missing_references_of(&self, references: Vec<(String, ArtifactKind, String)>) -> anyhow::Result<Vec<String>> {
        let mut missing = Vec::new();
        for (pointer, kind, text) in references {
            match ArtifactRef::parse(&text) {
                Err(message) => missing.push(format!("{pointer}: {message}")),
                Ok(reference) => {
                    if self.get(kind, &reference).await?.is_none() {
                        missing.push(format!("{pointer}: {} {reference} does not exist in the registry", kind.as_str()));
                    }
                }
            }
        }
        Ok(missing)
    }

    /// draft → approved, by someone other than the author.
    pub async fn approve(
        &self,
        ledger: &Ledger,
        kind: ArtifactKind,
        reference: &ArtifactRef,
        actor: &Actor,
        now: &str,
    ) -> Result<GovernanceRecord, LifecycleError> {
        let mut tx = ledger.begin().await?;
        let version = load(tx.conn(), kind, reference).await?;
        if version.status != DRAFT {
            return Err(LifecycleError::Conflict(format!("{} {reference} is {}; only a draft can be approved", kind.as_str(), version.status)));
        }
        four_eyes("approve", kind, reference, &version, actor)?;
        if kind == ArtifactKind::PolicyBundle {
            let document: Value = serde_json::from_str(&version.canonical).map_err(anyhow::Error::from)?;
            let report = bundle_tests(&document, reference)?;
            if !report.all_passed() {
                let failures = report.failures();
                let why = if failures.is_empty() { "it has no tests".to_owned() } else { format!("failing tests: {}", failures.join("; ")) };
                return Err(LifecycleError::Conflict(format!("policy_bundle {reference} cannot be approved: {why}")));
            }
        }
        Store::set_artifact_status(tx.conn(), kind.as_str(), &reference.id, reference.version, APPROVED, Some((&actor.id, now))).await?;
        let status = json!({"from": DRAFT, "to": APPROVED});
        let appended = tx.commit(governance_entry("approved", kind, reference, &version.digest, actor, status, None)).await?;
        Ok(record("approved", kind, reference, &version.digest, APPROVED, None, appended.index))
    }

    /// Refuses activation (or rollback to) `reference` with the reason, if it cannot be made
    /// active now. Checked before a system is loaded for serving, and again inside the
    /// transaction that activates it.
    pub async fn check_activation(&self, kind: ArtifactKind, reference: &ArtifactRef, actor: &Actor) -> Result<(), LifecycleError> {
        let mut conn = self.store.pool().acquire().await.map_err(anyhow::Error::from)?;
        activation_problem(&mut conn, kind, reference, actor).await
    }

    /// approved → active: the `active` alias moves here, the previously active version goes
    /// back to approved. For a system card, every pinned model card and policy version must be
    /// approved. Also how a rollback is done (`event` = `rolled_back`).
    pub async fn activate(
        &self,
        ledger: &Ledger,
        kind: ArtifactKind,
        reference: &ArtifactRef,
        actor: &Actor,
        now: &str,
    ) -> Result<GovernanceRecord, LifecycleError> {
        self.move_active(ledger, kind, reference, actor, now, "activated", None).await
    }

    /// Points `active` back at an earlier approved version: `to`, or by default the version
    /// that was active before the current one. History is never rewritten: the rollback is a
    /// new alias move and a new ledger entry.
    pub async fn rollback(
        &self,
        ledger: &Ledger,
        kind: ArtifactKind,
        reference: &ArtifactRef,
        actor: &Actor,
        now: &str,
    ) -> Result<GovernanceRecord, LifecycleError> {
        self.move_active(ledger, kind, reference, actor, now, "rolled_back", None).await
    }

    /// The version a rollback of `id` goes to: `to` if given (it must be older than the active
    /// version), else the version active before the current one.
    pub async fn rollback_target(&self, kind: ArtifactKind, id: &str, to: Option<i64>) -> Result<ArtifactRef, LifecycleError> {
        let Some(current) = self.active_version(kind, id).await? else {
            return Err(LifecycleError::Conflict(format!("{} {id} has no active version to roll back from", kind.as_str())));
        };
        let target = match to {
            Some(to) if to >= current => {
                return Err(LifecycleError::Conflict(format!(
                    "rollback goes to an earlier version: {} {id}@{current} is active and {to} is not older",
                    kind.as_str()
                )));
            }
            Some(to) => to,
            None => {
                let history = self.store.artifact_alias_history(kind.as_str(), id, "active").await?;
                history
                    .iter()
                    .rev()
                    .find(|row| row.version == current)
                    .and_then(|row| row.previous)
                    .filter(|previous| *previous < current)
                    .ok_or_else(|| {
                        LifecycleError::Conflict(format!("{} {id}@{current} has no earlier active version; name one with to_version", kind.as_str()))
                    })?
            }
        };
        Ok(ArtifactRef { id: id.to_owned(), version: target })
    }

    /// Moves `active` to `reference`. `promotion`, when given, is the experiment whose
    /// treatment this is: it ends in the same transaction, and the entry cites it as evidence.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn move_active(
        &self,
        ledger: &Ledger,
        kind: ArtifactKind,
        reference: &ArtifactRef,
        actor: &Actor,
        now: &str,
        event: &str,
        promotion: Option<super::experiments::Promotion<'_>>,
    ) -> Result<GovernanceRecord, LifecycleError> {
        let mut tx = ledger.begin().await?;
        activation_problem(tx.conn(), kind, reference, actor).await?;
        let evidence = match &promotion {
            Some(promotion) => Some(promotion.end_run(tx.conn(), now).await?),
            None => None,
        };
        let version = load(tx.conn(), kind, reference).await?;
        let previous = Store::artifact_alias_with(&mut *tx.conn(), kind.as_str(), &reference.id, "active").await?;
        if let Some(previous) = previous {
            Store::set_artifact_status(tx.conn(), kind.as_str(), &reference.id, previous, APPROVED, None).await?;
        }
        Store::set_artifact_status(tx.conn(), kind.as_str(), &reference.id, reference.version, ACTIVE, None).await?;
        let action = if event == "rolled_back" { "rollback" } else { "activate" };
        Store::move_artifact_alias(
            tx.conn(),
            &AliasMove {
                kind: kind.as_str(),
                id: &reference.id,
                alias: "active",
                version: reference.version,
                previous,
                action,
                actor: &actor.id,
                now,
            },
        )
        .await?;
        let status = json!({"from": version.status, "to": ACTIVE});
        let active = json!({"from": previous, "to": reference.version});
        let mut entry = governance_entry(event, kind, reference, &version.digest, actor, status, Some(active));
        if let Some(evidence) = evidence {
            entry.body["evidence"] = evidence;
        }
        let appended = tx.commit(entry).await?;
        Ok(record(event, kind, reference, &version.digest, ACTIVE, previous, appended.index))
    }

    /// draft or approved → retired. The active version cannot be retired: activate or roll
    /// back to another one first, so that a system is never left without a version.
    pub async fn retire(
        &self,
        ledger: &Ledger,
        kind: ArtifactKind,
        reference: &ArtifactRef,
        actor: &Actor,
    ) -> Result<GovernanceRecord, LifecycleError> {
        let mut tx = ledger.begin().await?;
        let version = load(tx.conn(), kind, reference).await?;
        match version.status.as_str() {
            ACTIVE => {
                return Err(LifecycleError::Conflict(format!(
                    "{} {reference} is active; activate or roll back to another version before retiring it",
                    kind.as_str()
                )));
            }
            RETIRED => {
                return Err(LifecycleError::Conflict(format!("{} {reference} is already retired", kind.as_str())));
            }
            _ => {}
        }
        Store::set_artifact_status(tx.conn(), kind.as_str(), &reference.id, reference.version, RETIRED, None).await?;
        let status = json!({"from": version.status, "to": RETIRED});
        let appended = tx.commit(governance_entry("retired", kind, reference, &version.digest, actor, status, None)).await?;
        Ok(record("retired", kind, reference, &version.digest, RETIRED, None, appended.index))
    }
}

/// Tests get a generous time limit of their own: a test is not a live request.
const TEST_EVAL_TIMEOUT: Duration = Duration::from_secs(2);

fn bundle_tests(document: &Value, reference: &ArtifactRef) -> Result<TestReport, LifecycleError> {
    let source = BundleSource::from_document(document)?;
    let compiled = CompiledBundle::compile_checked(&source, reference.clone(), String::new(), TEST_EVAL_TIMEOUT)?;
    Ok(compiled.test_report(&source))
}

impl Registry {
    /// Attaches `policy` as the shadow of active system `system_id` (replacing any other): its
    /// decisions are recorded beside the active policy's on every request, never acted on.
    /// A candidate need not be approved (nothing it decides takes effect).
    pub async fn attach_shadow(
        &self,
        ledger: &Ledger,
        system_id: &str,
        policy: &ArtifactRef,
        actor: &Actor,
        now: &str,
    ) -> Result<GovernanceRecord, LifecycleError> {
        let mut tx = ledger.begin().await?;
        let bundle = load(tx.conn(), ArtifactKind::PolicyBundle, policy).await?;
        let system = self.active_system(tx.conn(), system_id).await?;
        let row = ShadowRow {
            system_id: system_id.to_owned(),
            policy_id: policy.id.clone(),
            policy_version: policy.version,
            attached_by: actor.id.clone(),
            attached_at: now.to_owned(),
        };
        Store::set_system_shadow(tx.conn(), system_id, Some(&row)).await?;
        let mut entry = governance_entry("shadow_attached", ArtifactKind::PolicyBundle, policy, &bundle.digest, actor, json!(bundle.status), None);
        entry.body["system"] = json!({"id": system.id, "version": system.version, "digest": system.digest});
        entry.system_id = Some(system_id.to_owned());
        let appended = tx.commit(entry).await?;
        Ok(record("shadow_attached", ArtifactKind::PolicyBundle, policy, &bundle.digest, &bundle.status, None, appended.index))
    }

    /// Detaches the shadow of `system_id`, recording which bundle it was.
    pub async fn detach_shadow(&self, ledger: &Ledger, system_id: &str, actor: &Actor) -> Result<GovernanceRecord, LifecycleError> {
        let Some(current) = self.store.system_shadows().await?.into_iter().find(|s| s.system_id == system_id) else {
            return Err(LifecycleError::NotFound(format!("system {system_id:?} has no shadow policy")));
        };
        let policy = ArtifactRef { id: current.policy_id, version: current.policy_version };
        let mut tx = ledger.begin().await?;
        let bundle = load(tx.conn(), ArtifactKind::PolicyBundle, &policy).await?;
        Store::set_system_shadow(tx.conn(), system_id, None).await?;
        let mut entry = governance_entry("shadow_detached", ArtifactKind::PolicyBundle, &policy, &bundle.digest, actor, json!(bundle.status), None);
        entry.body["system"] = json!({"id": system_id});
        entry.system_id = Some(system_id.to_owned());
        let appended = tx.commit(entry).await?;
        Ok(record("shadow_detached", ArtifactKind::PolicyBundle, &policy, &bundle.digest, &bundle.status, None, appended.index))
    }

    async fn active_system(&self, conn: &mut sqlx::AnyConnection, system_id: &str) -> Result<StoredArtifactVersion, LifecycleError> {
        let version = Store::artifact_alias_with(&mut *conn, ArtifactKind::SystemCard.as_str(), system_id, "active")
            .await?
            .ok_or_else(|| LifecycleError::NotFound(format!("system {system_id:?} has no active version")))?;
        load(conn, ArtifactKind::SystemCard, &ArtifactRef { id: system_id.to_owned(), version }).await
    }
}

pub(super) async fn load(
    conn: &mut sqlx::AnyConnection,
    kind: ArtifactKind,
    reference: &ArtifactRef,
) -> Result<StoredArtifactVersion, LifecycleError> {
    Store::artifact_version_with(conn, kind.as_str(), &reference.id, reference.version)
        .await?
        .ok_or_else(|| LifecycleError::NotFound(format!("{} {reference} does not exist", kind.as_str())))
}

pub(super) fn four_eyes(
    step: &str,
    kind: ArtifactKind,
    reference: &ArtifactRef,
    version: &StoredArtifactVersion,
    actor: &Actor,
) -> Result<(), LifecycleError> {
    if version.author == actor.id {
        return Err(LifecycleError::FourEyes(format!(
            "{} {reference} was submitted by {:?}, who cannot {step} it: a second person must",
            kind.as_str(),
            actor.id
        )));
    }
    Ok(())
}

pub(super) async fn activation_problem(
    conn: &mut sqlx::AnyConnection,
    kind: ArtifactKind,
    reference: &ArtifactRef,
    actor: &Actor,
) -> Result<(), LifecycleError> {
    let version = load(conn, kind, reference).await?;
    match version.status.as_str() {
        APPROVED => {}
        ACTIVE => return Err(LifecycleError::Conflict(format!("{} {reference} is already active", kind.as_str()))),
        status => {
            return Err(LifecycleError::Conflict(format!("{} {reference} is {status}; only an approved version can be made active", kind.as_str())));
        }
    }
    four_eyes("activate", kind, reference, &version, actor)?;
    if kind == ArtifactKind::SystemCard {
        let document: Value = serde_json::from_str(&version.canonical).map_err(anyhow::Error::from)?;
        let mut unapproved = Vec::new();
        for (pointer, kind, text) in system_references(&document) {
            let reference = ArtifactRef::parse(&text).map_err(LifecycleError::Unprocessable)?;
            match Store::artifact_version_with(&mut *conn, kind.as_str(), &reference.id, reference.version).await? {
                None => unapproved.push(format!("{pointer}: {} {reference} does not exist", kind.as_str())),
                Some(pinned) if pinned.status == APPROVED || pinned.status == ACTIVE => {}
                Some(pinned) => unapproved.push(format!("{pointer}: {} {reference} is {}", kind.as_str(), pinned.status)),
            }
        }
        if !unapproved.is_empty() {
            return Err(LifecycleError::Conflict(format!("system card {reference} pins versions that are not approved: {}", unapproved.join("; "))));
        }
    }
    Ok(())
}

/// (JSON pointer, kind, "id@version") of every version a system card pins.
fn system_references(document: &Value) -> Vec<(String, ArtifactKind, String)> {
    let text = |value: Option<&Value>| value.and_then(Value::as_str).unwrap_or_default().to_owned();
    let mut references = vec![("/policy".to_owned(), ArtifactKind::PolicyBundle, text(document.get("policy")))];
    for (index, tier) in document.get("tiers").and_then(Value::as_array).into_iter().flatten().enumerate() {
        references.push((format!("/tiers/{index}/model"), ArtifactKind::ModelCard, text(tier.get("model"))));
        if let Some(confidence) = tier.get("confidence_model") {
            references.push((format!("/tiers/{index}/confidence_model"), ArtifactKind::ConfidenceModel, text(Some(confidence))));
        }
    }
    references
}

/// The model card version a confidence model was fitted on.
fn confidence_model_references(document: &Value) -> Vec<(String, ArtifactKind, String)> {
    let model = document.get("tier_model").and_then(Value::as_str).unwrap_or_default().to_owned();
    vec![("/tier_model".to_owned(), ArtifactKind::ModelCard, model)]
}

pub(super) fn governance_entry(
    event: &str,
    kind: ArtifactKind,
    reference: &ArtifactRef,
    digest: &str,
    actor: &Actor,
    status: Value,
    active: Option<Value>,
) -> EntryDraft {
    let mut body = json!({
        "event": event,
        "artifact": {"kind": kind.as_str(), "id": reference.id, "version": reference.version, "digest": digest},
        "actor": {"id": actor.id, "key_id": actor.key_id, "roles": actor.roles},
        "status": status,
    });
    if let Some(active) = active {
        body["active"] = active;
    }
    EntryDraft {
        entry_type: "governance",
        request_id: actor.request_id.clone(),
        system_id: (kind == ArtifactKind::SystemCard).then(|| reference.id.clone()),
        outcome: event.to_owned(),
        body,
    }
}

pub(super) fn record(
    event: &str,
    kind: ArtifactKind,
    reference: &ArtifactRef,
    digest: &str,
    status: &str,
    previous_active: Option<i64>,
    ledger_index: u64,
) -> GovernanceRecord {
    GovernanceRecord {
        event: event.to_owned(),
        kind: kind.as_str().to_owned(),
        id: reference.id.clone(),
        version: reference.version,
        digest: digest.to_owned(),
        status: status.to_owned(),
        previous_active,
        ledger_index,
    }
}
