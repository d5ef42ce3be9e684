//! The append-only decision ledger: canonical entries, RFC 6962 leaf and stored hashes, tree head.

mod bundle;
mod checkpoint;
mod cosignature;
mod export;
mod hashes;
mod integrity;
pub mod rollup;
mod tiles;
mod witnessing;

pub use bundle::{BUNDLE_FORMAT, BundleError, verify_bundle};
pub use checkpoint::{CheckpointSigner, verify_checkpoint};
pub use cosignature::{CosigningKey, WitnessKey, cosignature_lines, verified_cosignatures};
pub use export::{EXPORT_FORMAT, ExportError, VerifiedExport, export_checkpoint, export_entries, verify_export};
pub use integrity::{ANCHOR_FILE, Anchor, AnchorFile, Contradiction, ContradictionKind};
pub use tiles::{TILE_HEIGHT, TilePath};
pub use witnessing::{RemoteWitnessHealth, WitnessHealth, Witnessing};

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use anyhow::Context;
use futures::{Stream, StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use tlog_tiles::{Hash, prove_record, prove_tree, record_hash, stored_hash_index, stored_hashes, tree_hash};

use crate::{
    canonical::to_canonical_bytes,
    metrics::Metrics,
    store::{LedgerFilter, LedgerRow, Store},
};
use hashes::PrefetchedHashes;

/// An entry as the domain describes it; the ledger adds `index`, `time` and `type`.
#[derive(Debug, Clone)]
pub struct EntryDraft {
    pub entry_type: &'static str,
    pub request_id: String,
    pub system_id: Option<String>,
    pub outcome: String,
    pub body: Value,
}

/// A committed entry.
#[derive(Debug, Clone)]
pub struct Appended {
    pub index: u64,
    pub leaf_hash: String,
}

/// The ledger. Appends are serialised within a process (one writer assigns indexes and writes
/// the stored hashes of the Merkle tree in the same transaction); readers never wait.
#[derive(Debug)]
pub struct Ledger {
    store: Store,
    /// Held by the task committing a batch; index assignment happens only under it (and, on
    /// SQLite, under the database write lock as well).
    append_lock: Arc<tokio::sync::Mutex<()>>,
    /// Entries waiting for the next group commit.
    queue: Mutex<Vec<Pending>>,
    signer: CheckpointSigner,
    metrics: Option<Arc<Metrics>>,
    /// This process's name among the replicas sharing the database: it signs the checkpoints
    /// it publishes under it and holds the checkpoint lease by it.
    replica: String,
    /// The newest signed note, kept outside the database (see `integrity`).
    anchor_file: Option<AnchorFile>,
    /// What every signature must extend; held while a signature is checked and made.
    signing: tokio::sync::Mutex<SigningState>,
    /// Set when the stored tree contradicts a signed checkpoint: nothing is signed or appended.
    halted: std::sync::RwLock<Option<Contradiction>>,
    /// The witnesses published checkpoints are sent to, if any.
    witnessing: Option<Arc<Witnessing>>,
}

#[derive(Debug, Default)]
struct SigningState {
    /// The newest tree head signed or anchored; every later signature must extend it.
    newest: Option<Anchor>,
    /// Entries below this index were checked against their stored leaves.
    leaves_checked_to: u64,
}

/// The stored ledger contradicts a checkpoint it signed: it signs and appends nothing until an
/// operator runs `tiergate ledger recover`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the ledger contradicts a checkpoint it signed, so it signs and records nothing: {0}; an operator must run `tiergate ledger recover`")]
pub struct LedgerHalted(pub Contradiction);

/// What `GET /v1/ledger/verify` reports.
#[derive(Debug)]
pub struct Verification {
    /// Every stored entry against the stored tree (and against the auditor's checkpoint, if given).
    pub entries: Result<VerifiedExport, ExportError>,
    /// The stored tree against what this ledger signed before; `None` when it extends it.
    pub contradiction: Option<Contradiction>,
}

#[derive(Debug)]
struct Pending {
    draft: EntryDraft,
    reply: tokio::sync::oneshot::Sender<Result<Appended, String>>,
}

/// An entry with its RFC 6962 inclusion proof against a signed checkpoint (also the API body).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProvenEntry {
    pub index: u64,
    /// The entry, exactly as hashed (its canonical JSON bytes are the leaf data).
    #[schema(value_type = Object)]
    pub entry: Value,
    /// sha256(0x00 ‖ canonical entry bytes), hex.
    pub leaf_hash: String,
    pub tree_size: u64,
    /// Root hash of the tree of `tree_size` entries, hex.
    pub root_hash: String,
    /// The audit path, leaf to root, hex.
    pub proof: Vec<String>,
    /// The signed checkpoint (C2SP signed note) for `tree_size` and `root_hash`.
    pub checkpoint: String,
}

/// A proof that the current tree extends the tree of an earlier size (RFC 6962 §2.1.2; also
/// the API body).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConsistencyProof {
    pub from_size: u64,
    /// Root of the first `from_size` entries, hex: compare with the checkpoint you kept.
    pub from_root: String,
    pub tree_size: u64,
    pub root_hash: String,
    /// RFC 6962 consistency proof from `from_size` to `tree_size`, hex.
    pub proof: Vec<String>,
    /// Signed checkpoint for `tree_size` and `root_hash`.
    pub checkpoint: String,
}

/// A checkpoint the gateway published (also the API body).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PublishedCheckpoint {
    pub tree_size: u64,
    pub time: String,
    /// The C2SP signed note.
    pub checkpoint: String,
    /// The replica that signed it (absent for checkpoints from before this was recorded).
    pub published_by: Option<String>,
    /// Witnesses' cosignatures of it (c2sp.org/tlog-cosignature), oldest witness name first.
    pub cosignatures: Vec<CheckpointCosignature>,
}

impl PublishedCheckpoint {
    /// The signed note with every cosignature added: what a verifier demanding witnesses reads.
    pub fn cosigned_note(&self) -> String {
        let mut note = self.checkpoint.clone();
        for cosignature in &self.cosignatures {
            note.push_str(&cosignature.signature);
            note.push('\n');
        }
        note
    }
}

/// One witness's cosignature of a published checkpoint (also the API body).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CheckpointCosignature {
    pub witness: String,
    /// When the witness cosigned it (its own clock), RFC 3339.
    pub time: String,
    /// The note signature line (`— <witness> <base64>`), to append to the checkpoint.
    pub signature: String,
}

/// One entry as listed to an auditor (also the API body).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LedgerRecord {
    pub index: u64,
    pub time: String,
    pub request_id: String,
    /// `inference` or `governance`.
    #[serde(rename = "type")]
    pub entry_type: String,
    pub system: Option<String>,
    /// Policy bundle `id@version` that decided.
    pub policy: Option<String>,
    pub outcome: String,
    pub served_tier: Option<u64>,
    /// sha256(0x00 ‖ entry bytes), hex: the Merkle leaf.
    pub leaf_hash: String,
    #[schema(value_type = Object)]
    pub entry: Value,
}

impl Ledger {
    pub fn new(store: Store, signer: CheckpointSigner) -> Ledger {
        Ledger {
            store,
            append_lock: Arc::new(tokio::sync::Mutex::new(())),
            queue: Mutex::new(Vec::new()),
            signer,
            metrics: None,
            replica: format!("{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]),
            anchor_file: None,
            signing: tokio::sync::Mutex::new(SigningState::default()),
            halted: std::sync::RwLock::new(None),
            witnessing: None,
        }
    }

    /// Sends every published checkpoint to these witnesses (`Witnessing::run` does the sending).
    pub fn with_witnessing(mut self, witnessing: Arc<Witnessing>) -> Ledger {
        self.witnessing = Some(witnessing);
        self
    }

    pub fn witnessing(&self) -> Option<&Arc<Witnessing>> {
        self.witnessing.as_ref()
    }

    /// Keeps the newest signed note in `path` too (outside the database), so that a database
    /// rolled back behind the gateway's back is caught. `serve` always sets it.
    pub fn with_anchor_file(mut self, path: std::path::PathBuf) -> Ledger {
        self.anchor_file = Some(AnchorFile::new(path));
        self
    }

    /// Why the ledger has halted, if it has.
    pub fn contradiction(&self) -> Option<Contradiction> {
        self.halted.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn halt(&self, contradiction: &Contradiction) {
        tracing::error!(problem = %contradiction, "the ledger contradicts a checkpoint it signed: halting (no signatures, no appends)");
        *self.halted.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(contradiction.clone());
    }

    fn refuse_if_halted(&self) -> anyhow::Result<()> {
        match self.contradiction() {
            Some(contradiction) => Err(LedgerHalted(contradiction).into()),
            None => Ok(()),
        }
    }

    /// The signed tree heads the stored tree must extend: the anchor file's, and the newest
    /// checkpoint published in the database since the last recorded incident.
    async fn anchors(&self) -> anyhow::Result<Result<Vec<Anchor>, Contradiction>> {
        let keys = self.signer.verifier_keys();
        let mut anchors = Vec::new();
        if let Some(file) = &self.anchor_file {
            match file.read(&keys) {
                Ok(anchor) => anchors.extend(anchor),
                Err(contradiction) => return Ok(Err(contradiction)),
            }
        }
        let since = self.store.ledger_last_incident_time().await?;
        if let Some(stored) = self.store.ledger_newest_checkpoint_since(since.as_deref()).await? {
            match verify_checkpoint(&stored.note, &keys) {
                Ok((size, root)) => {
                    anchors.push(Anchor { size, root, note: stored.note, source: format!("checkpoint published {}", stored.created_at) })
                }
                Err(error) => {
                    return Ok(Err(integrity::damaged(
                        format!(
                            "the checkpoint of {} entries published {} is not signed by this ledger: {error:#}",
                            stored.tree_size, stored.created_at
                        ),
                        None,
                    )));
                }
            }
        }
        Ok(Ok(anchors))
    }

    /// The whole start-up check: every row and hash present, the stored tree extending every
    /// anchor, and the newest entries (and all the anchors do not cover) hashing to their
    /// stored leaves. On success the newest anchor is what later signatures must extend.
    async fn full_check(&self, state: &mut SigningState) -> anyhow::Result<Option<Contradiction>> {
        let size = self.store.ledger_count().await? as u64;
        let rows = self.store.ledger_row_count().await? as u64;
        if rows != size {
            let missing = self.store.ledger_first_missing_index().await?.map(|i| i as u64);
            return Ok(Some(integrity::damaged(
                format!("the ledger has {rows} rows for indexes 0 to {}: entries are missing", size.saturating_sub(1)),
                missing,
            )));
        }
        let mut anchors = match self.anchors().await? {
            Ok(anchors) => anchors,
            Err(contradiction) => return Ok(Some(contradiction)),
        };
        // What this process signed counts too (a ledger without an anchor file has only that).
        anchors.extend(state.newest.clone());
        for anchor in &anchors {
            if let Some(contradiction) = integrity::check_extends(&self.store, size, anchor).await? {
                return Ok(Some(contradiction));
            }
        }
        if let Some(contradiction) = integrity::check_leaves(&self.store, integrity::first_leaf_to_check(size, &anchors), size).await? {
            return Ok(Some(contradiction));
        }
        state.newest = anchors.into_iter().max_by_key(|a| a.size);
        state.leaves_checked_to = size;
        Ok(None)
    }

    /// Checks that the stored ledger extends everything it signed before (run at start-up);
    /// when it does not, the ledger halts and the contradiction is returned.
    pub async fn check_integrity(&self) -> anyhow::Result<Option<Contradiction>> {
        let mut state = self.signing.lock().await;
        let found = self.full_check(&mut state).await?;
        if let Some(contradiction) = &found {
            self.halt(contradiction);
        }
        Ok(found)
    }

    /// Signs the tree of `size` entries with root `root` (read from the stored hashes) if the
    /// stored tree still extends the newest head signed before, and every entry appended since
    /// the last signature hashes to its stored leaf; otherwise halts. The newest signed head is
    /// written to the anchor file before its note is handed out.
    async fn sign_extending(&self, size: u64, root: Hash) -> anyhow::Result<String> {
        self.refuse_if_halted()?;
        let mut state = self.signing.lock().await;
        let mut found = match &state.newest {
            // The same tree again (every proof until the next append): the root says it all.
            Some(newest) if size == newest.size => integrity::diverged(newest, root),
            Some(newest) if size > newest.size => integrity::check_extends(&self.store, size, newest).await?,
            // An older prefix (a consistency proof's `to`): the stored tree must still extend
            // the newest head.
            Some(newest) => integrity::check_extends(&self.store, self.store.ledger_count().await? as u64, newest).await?,
            None => None,
        };
        if found.is_none() && size > state.leaves_checked_to {
            found = integrity::check_leaves(&self.store, state.leaves_checked_to, size).await?;
        }
        if let Some(contradiction) = found {
            self.halt(&contradiction);
            return Err(LedgerHalted(contradiction).into());
        }
        state.leaves_checked_to = state.leaves_checked_to.max(size);
        let note = self.signer.sign(size, root)?;
        if state.newest.as_ref().is_none_or(|newest| size > newest.size) {
            if let Some(file) = self.anchor_file.clone() {
                let written = note.clone();
                tokio::task::spawn_blocking(move || file.write(&written)).await.context("writing the ledger anchor")??;
            }
            state.newest = Some(Anchor { size, root, note: note.clone(), source: "a checkpoint this process signed".into() });
        }
        Ok(note)
    }

    /// Re-anchors a halted ledger on the tree as it is now, for an operator who has looked at
    /// the contradiction (`tiergate ledger recover`): appends a governance entry recording the
    /// incident (what was contradicted, by whom and why it is accepted), then signs and
    /// publishes a checkpoint of the tree that includes it. Refused when the ledger is
    /// consistent, or when entries are damaged (altered, or rows or hashes missing): those must
    /// be restored from a backup or an export first, since the tree cannot be re-anchored on
    /// entries that do not match their own leaves.
    pub async fn recover(&self, actor: &str, reason: &str) -> anyhow::Result<Result<(Appended, Contradiction), String>> {
        let mut state = self.signing.lock().await;
        let Some(contradiction) = self.full_check(&mut state).await? else {
            return Ok(Err("the ledger extends every checkpoint it signed: there is nothing to recover".into()));
        };
        if contradiction.kind == ContradictionKind::Damaged {
            return Ok(Err(format!(
                "{contradiction}: restore the damaged entries from a backup or an export first; `recover` only re-anchors a ledger whose entries are whole"
            )));
        }
        let size = self.store.ledger_count().await? as u64;
        if let Some(damage) = integrity::check_leaves(&self.store, 0, size).await? {
            return Ok(Err(format!("{damage}: restore the damaged entries from a backup or an export first")));
        }
        let contradicted: Vec<Value> = match self.anchors().await? {
            Ok(anchors) => anchors
                .iter()
                .map(|a| json!({"tree_size": a.size, "root_hash": hex::encode(a.root.0), "source": a.source, "checkpoint": a.note}))
                .collect(),
            Err(_) => Vec::new(),
        };
        let (_, root_before) = self.tree_head().await?;
        let draft = EntryDraft {
            entry_type: "governance",
            request_id: uuid::Uuid::now_v7().to_string(),
            system_id: None,
            outcome: INCIDENT_OUTCOME.into(),
            body: json!({
                "event": INCIDENT_OUTCOME,
                "actor": {"id": actor},
                "reason": reason,
                "contradiction": contradiction,
                "contradicted_checkpoints": contradicted,
                "accepted_tree": {"tree_size": size, "root_hash": root_before},
            }),
        };
        let appended = write_batch(&self.store, vec![draft]).await?.remove(0);
        *self.halted.write().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        *state = SigningState { newest: None, leaves_checked_to: appended.index + 1 };
        drop(state);
        self.publish_checkpoint().await?;
        tracing::warn!(actor, reason, problem = %contradiction, incident_index = appended.index, "ledger re-anchored after an incident");
        Ok(Ok((appended, contradiction)))
    }

    /// Names this replica (default: process id and a random suffix, unique per start).
    pub fn with_replica(mut self, replica: String) -> Ledger {
        self.replica = replica;
        self
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Publishes a checkpoint if this replica holds (or can take) the checkpoint lease, so
    /// that one replica at a time signs on the schedule. Returns whether it is the leader.
    pub async fn publish_checkpoint_if_leader(&self, lease: std::time::Duration) -> anyhow::Result<bool> {
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        if !self.store.claim_checkpoint_lease(&self.replica, lease_ms).await? {
            return Ok(false);
        }
        self.publish_checkpoint().await?;
        Ok(true)
    }

    /// Records commit times and batch sizes in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Ledger {
        self.metrics = Some(metrics);
        self
    }

    /// The note verifier keys auditors check checkpoints with: the current one first, then
    /// any retired by rotation, one per line.
    pub fn verifier_key(&self) -> String {
        self.signer.verifier_keys()
    }

    /// A freshly signed checkpoint of the current tree: (size, signed note).
    pub async fn checkpoint(&self) -> anyhow::Result<(u64, String)> {
        self.refuse_if_halted()?;
        let (size, root) = self.tree_head_hash().await?;
        Ok((size, self.sign_extending(size, root).await?))
    }

    /// Signs the current tree head and keeps it in the published history (on demand and on
    /// the start-up schedule). An empty ledger publishes nothing.
    pub async fn publish_checkpoint(&self) -> anyhow::Result<Option<(u64, String)>> {
        let (size, note) = self.checkpoint().await?;
        if size == 0 {
            return Ok(None);
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        self.store.ledger_insert_checkpoint(size as i64, &now, &note, &self.replica).await?;
        if let Some(witnessing) = &self.witnessing {
            witnessing.wake();
        }
        Ok(Some((size, note)))
    }

    /// Published checkpoints, newest first, each with its cosignatures.
    pub async fn published_checkpoints(&self, limit: i64) -> anyhow::Result<Vec<PublishedCheckpoint>> {
        self.with_cosignatures(self.store.ledger_checkpoints(limit).await?).await
    }

    /// The newest published checkpoint cosigned by the witness quorum (none without witnesses).
    pub async fn witnessed_checkpoint(&self) -> anyhow::Result<Option<PublishedCheckpoint>> {
        let Some(witnessing) = &self.witnessing else { return Ok(None) };
        let Some(stored) = self.store.ledger_newest_witnessed(&witnessing.names(), witnessing.quorum()).await? else { return Ok(None) };
        Ok(self.with_cosignatures(vec![stored]).await?.pop())
    }

    async fn with_cosignatures(&self, stored: Vec<crate::store::StoredCheckpoint>) -> anyhow::Result<Vec<PublishedCheckpoint>> {
        let (Some(min), Some(max)) = (stored.iter().map(|c| c.tree_size).min(), stored.iter().map(|c| c.tree_size).max()) else {
            return Ok(Vec::new());
        };
        let mut cosignatures: HashMap<i64, Vec<CheckpointCosignature>> = HashMap::new();
        for cosignature in self.store.ledger_cosignatures_between(min, max).await? {
            let time = chrono::DateTime::from_timestamp(cosignature.cosigned_at, 0)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default();
            cosignatures.entry(cosignature.tree_size).or_default().push(CheckpointCosignature {
                witness: cosignature.witness,
                time,
                signature: cosignature.signature,
            });
        }
        Ok(stored
            .into_iter()
            .map(|stored| PublishedCheckpoint {
                tree_size: stored.tree_size as u64,
                time: stored.created_at,
                cosignatures: cosignatures.remove(&stored.tree_size).unwrap_or_default(),
                checkpoint: stored.note,
                published_by: stored.published_by,
            })
            .collect())
    }

    /// Entry `index` with its inclusion proof against a checkpoint of the current tree.
    pub async fn prove(&self, index: u64) -> anyhow::Result<Option<ProvenEntry>> {
        Ok(self.prove_with_text(index).await?.map(|(proven, _)| proven))
    }

    /// [`Ledger::prove`], with the entry's stored text (the leaf's data) beside it, for a
    /// verifier that hashes the leaf itself.
    pub async fn prove_with_text(&self, index: u64) -> anyhow::Result<Option<(ProvenEntry, String)>> {
        self.refuse_if_halted()?;
        let mut tx = self.store.begin().await?;
        let size = Store::ledger_size(&mut tx).await? as u64;
        if index >= size {
            return Ok(None);
        }
        let root = with_stored_hashes(&mut tx, |reader| tree_hash(size, reader)).await?;
        let proof = with_stored_hashes(&mut tx, |reader| prove_record(size, index, reader)).await?;
        tx.rollback().await.context("ending read transaction")?;
        let Some(text) = self.store.ledger_entry(index as i64).await? else {
            return Ok(None);
        };
        let proven = ProvenEntry {
            index,
            entry: serde_json::from_str(&text).context("decoding ledger entry")?,
            leaf_hash: leaf_hash_hex(text.as_bytes()),
            tree_size: size,
            root_hash: hex::encode(root.0),
            proof: proof.iter().map(|h| hex::encode(h.0)).collect(),
            checkpoint: self.sign_extending(size, root).await?,
        };
        Ok(Some((proven, text)))
    }

    /// Proof that the tree of `to_size` entries (default: the current tree) extends the tree
    /// of `from_size` entries.
    pub async fn prove_consistency(&self, from_size: u64, to_size: Option<u64>) -> anyhow::Result<Option<ConsistencyProof>> {
        self.refuse_if_halted()?;
        let mut tx = self.store.begin().await?;
        let current = Store::ledger_size(&mut tx).await? as u64;
        let size = to_size.unwrap_or(current);
        if from_size == 0 || from_size > size || size > current {
            return Ok(None);
        }
        let root = with_stored_hashes(&mut tx, |reader| tree_hash(size, reader)).await?;
        let from_root = with_stored_hashes(&mut tx, |reader| tree_hash(from_size, reader)).await?;
        let proof = with_stored_hashes(&mut tx, |reader| prove_tree(size, from_size, reader)).await?;
        tx.rollback().await.context("ending read transaction")?;
        Ok(Some(ConsistencyProof {
            from_size,
            from_root: hex::encode(from_root.0),
            tree_size: size,
            root_hash: hex::encode(root.0),
            proof: proof.iter().map(|h| hex::encode(h.0)).collect(),
            checkpoint: self.sign_extending(size, root).await?,
        }))
    }

    /// Entries matching `filter`, in index order.
    pub async fn query(&self, filter: &LedgerFilter) -> anyhow::Result<Vec<LedgerRecord>> {
        self.store
            .ledger_query(filter)
            .await?
            .into_iter()
            .map(|row| {
                Ok(LedgerRecord {
                    index: row.index as u64,
                    time: row.created_at,
                    request_id: row.request_id,
                    entry_type: row.entry_type,
                    system: row.system_id,
                    policy: row.policy,
                    outcome: row.outcome,
                    served_tier: row.served_tier.map(|t| t as u64),
                    leaf_hash: leaf_hash_hex(row.entry.as_bytes()),
                    entry: serde_json::from_str(&row.entry).context("decoding ledger entry")?,
                })
            })
            .collect()
    }

    /// The auditor bundle: the export, the public key, and every card and policy version the
    /// entries cite (original text, canonical form, digest), so an auditor holds everything.
    pub async fn audit_bundle(&self) -> anyhow::Result<Value> {
        let export = self.export().await?;
        let mut digests = std::collections::BTreeSet::new();
        for entry in export::export_entries(&export) {
            digests.extend(bundle::cited_digests(&entry));
        }
        let digests: Vec<String> = digests.into_iter().collect();
        let artifacts = self
            .store
            .artifact_versions_by_digests(&digests)
            .await?
            .into_iter()
            .map(|a| {
                json!({"kind": a.kind, "id": a.id, "version": a.version, "digest": a.digest,
                       "canonical": a.canonical, "original": a.original, "status": a.status})
            })
            .collect();
        Ok(bundle::bundle_document(export, &self.signer.verifier_keys(), artifacts))
    }

    /// Recomputes every leaf from the stored entries and checks them against the stored tree:
    /// detects rows edited, removed or reordered in the database behind the triggers' back, and
    /// names an edited entry by its recorded leaf; with `earlier` (a checkpoint an auditor
    /// kept), also that the stored tree extends it. And checks the stored tree against what
    /// this ledger signed before, halting it on a contradiction. Works on a halted ledger: the
    /// checkpoint it verifies against is signed only for this check and never handed out.
    pub async fn verify(&self, earlier: Option<&str>) -> anyhow::Result<Verification> {
        let contradiction = match self.contradiction() {
            Some(contradiction) => Some(contradiction),
            None => self.check_integrity().await?,
        };
        let (size, root) = self.tree_head_hash().await?;
        let chunks: Vec<String> = self.export_stream_at(size, self.signer.sign(size, root)?)?.try_collect().await?;
        let entries = verify_export(&chunks.concat(), &self.signer.verifier_keys(), earlier);
        Ok(Verification { entries, contradiction })
    }

    /// The whole ledger as an export: a header line with the signed checkpoint, then every
    /// entry's canonical bytes with its recorded leaf, one per line (JSON Lines). See
    /// [`verify_export`].
    pub async fn export(&self) -> anyhow::Result<String> {
        let chunks: Vec<String> = self.export_stream().await?.try_collect().await?;
        Ok(chunks.concat())
    }

    /// The export as a stream of chunks (a page of entries each), so that a large ledger is
    /// never held in memory whole. The checkpoint is taken first; entries appended while the
    /// export runs are not included.
    pub async fn export_stream(&self) -> anyhow::Result<impl Stream<Item = anyhow::Result<String>> + Send + 'static> {
        let (size, note) = self.checkpoint().await?;
        self.export_stream_at(size, note)
    }

    /// The export of the entries a published checkpoint covers, under its note with every
    /// cosignature it has (the stored tree must still have that checkpoint's root).
    pub async fn export_stream_of(
        &self,
        published: &PublishedCheckpoint,
    ) -> anyhow::Result<impl Stream<Item = anyhow::Result<String>> + Send + 'static> {
        let (size, signed_root) = verify_checkpoint(&published.checkpoint, &self.signer.verifier_keys())?;
        let mut conn = self.store.pool().acquire().await.context("acquiring connection")?;
        let root = with_stored_hashes(&mut conn, |reader| tree_hash(size, reader)).await?;
        anyhow::ensure!(root == signed_root, "the stored tree of {size} entries no longer has the root of its published checkpoint");
        self.export_stream_at(size, published.cosigned_note())
    }

    /// The export of the first `size` entries under the signed `note` of that tree.
    fn export_stream_at(&self, size: u64, note: String) -> anyhow::Result<impl Stream<Item = anyhow::Result<String>> + Send + 'static> {
        let header = export::header_line(size, &note)?;
        let store = self.store.clone();
        let pages = futures::stream::try_unfold(0i64, move |next| {
            let store = store.clone();
            async move {
                if next as u64 >= size {
                    return Ok(None);
                }
                let mut chunk = String::new();
                let mut after = next;
                for (index, entry, leaf) in entries_with_leaves(&store, next as u64, size).await? {
                    let leaf = leaf.with_context(|| format!("no stored leaf for entry {index}"))?;
                    chunk.push_str(&export::entry_line(&entry, &leaf));
                    after = index as i64 + 1;
                }
                Ok((after > next).then_some((chunk, after)))
            }
        });
        Ok(futures::stream::once(async move { Ok(header) }).chain(pages))
    }

    /// Appends one entry durably: when this returns, the entry and its hashes are committed.
    ///
    /// Group commit: concurrent appends queue up; whoever holds the writer lock commits every
    /// queued entry in one transaction (one fsync), then each caller gets its own index. The
    /// batch runs on its own task, so a caller that goes away (client disconnect) cannot leave
    /// a batch half-done, and nobody is told "committed" before the commit returns.
    #[tracing::instrument(skip_all, fields(request_id = %draft.request_id, outcome = %draft.outcome))]
    pub async fn append(&self, draft: EntryDraft) -> anyhow::Result<Appended> {
        self.refuse_if_halted()?;
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        self.queue.lock().map_err(|_| anyhow::anyhow!("ledger queue poisoned"))?.push(Pending { draft, reply });
        let writer = self.append_lock.clone().lock_owned().await;
        // A batch led by another caller may already have committed (or failed) this entry.
        if let Ok(result) = answer.try_recv() {
            return result.map_err(anyhow::Error::msg);
        }
        let batch = std::mem::take(&mut *self.queue.lock().map_err(|_| anyhow::anyhow!("ledger queue poisoned"))?);
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let _writer = writer;
            let (started, entries) = (std::time::Instant::now(), batch.len());
            let committed = commit_batch(&store, batch).await;
            if let Some(metrics) = metrics {
                if !committed {
                    metrics.ledger_commit_failures.inc();
                }
                metrics.ledger_commit_seconds.with_label_values::<&str>(&[]).observe(started.elapsed().as_secs_f64());
                metrics.ledger_batch_entries.with_label_values::<&str>(&[]).observe(entries as f64);
            }
        });
        answer.await.map_err(|_| anyhow::anyhow!("ledger batch ended without an answer"))?.map_err(anyhow::Error::msg)
    }

    /// Opens a write transaction that will end with one ledger entry, for a change that must
    /// be recorded atomically with its entry (a governance event: approval, activation, …).
    /// The caller makes its change on [`LedgerTransaction::conn`], then
    /// [`LedgerTransaction::commit`]s it with the entry: both land, or neither. Appends from
    /// other callers wait meanwhile (they take the same writer lock), so keep it short.
    pub async fn begin(&self) -> anyhow::Result<LedgerTransaction> {
        self.refuse_if_halted()?;
        let writer = self.append_lock.clone().lock_owned().await;
        let tx = self.store.begin_write().await?;
        Ok(LedgerTransaction { _writer: writer, tx })
    }

    /// Size and root hash (hex) of the tree over every committed entry.
    pub async fn tree_head(&self) -> anyhow::Result<(u64, String)> {
        let (size, root) = self.tree_head_hash().await?;
        Ok((size, hex::encode(root.0)))
    }

    async fn tree_head_hash(&self) -> anyhow::Result<(u64, Hash)> {
        let mut tx = self.store.begin().await?;
        let size = Store::ledger_size(&mut tx).await? as u64;
        let root = with_stored_hashes(&mut tx, |reader| tree_hash(size, reader)).await?;
        tx.rollback().await.context("ending read transaction")?;
        Ok((size, root))
    }

    /// A C2SP tlog-tiles tile of the current tree (hashes or an entry bundle), or `None` when
    /// the tree does not hold it yet. Unsigned data: served even by a halted ledger, so that
    /// auditors can look.
    pub async fn tile(&self, path: TilePath) -> anyhow::Result<Option<Vec<u8>>> {
        let size = self.store.ledger_count().await? as u64;
        tiles::read_tile(&self.store, size, path).await
    }

    /// A system's figures per `span_s`-second bucket ([`rollup::MINUTE`] or [`rollup::HOUR`])
    /// from the bucket holding `since` on, oldest first, counting every committed entry.
    pub async fn rollups(
        &self,
        system_id: &str,
        span_s: i64,
        since: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<Vec<(chrono::DateTime<chrono::Utc>, rollup::Rollup)>> {
        rollup::read(&self.store, system_id, span_s, since).await
    }

    /// Adds every entry the rollups have not counted yet (a ledger older than them).
    pub async fn catch_up_rollups(&self) -> anyhow::Result<()> {
        rollup::catch_up(&self.store).await
    }

    /// The entry at `index` as stored (canonical JSON), if any.
    pub async fn entry(&self, index: u64) -> anyhow::Result<Option<Value>> {
        match self.store.ledger_entry(index as i64).await? {
            Some(text) => Ok(Some(serde_json::from_str(&text).context("decoding ledger entry")?)),
            None => Ok(None),
        }
    }
}

/// The `outcome` of the governance entry that records a recovered incident.
pub const INCIDENT_OUTCOME: &str = "ledger_incident";

/// Commits `batch` in one transaction and answers every caller; on failure nobody's entry
/// is committed and every caller gets the error.
/// Commits the batch and answers each caller; false when nothing could be committed.
async fn commit_batch(store: &Store, batch: Vec<Pending>) -> bool {
    let (drafts, replies): (Vec<EntryDraft>, Vec<_>) = batch.into_iter().map(|p| (p.draft, p.reply)).unzip();
    match write_batch(store, drafts).await {
        Ok(appended) => {
            for (reply, appended) in replies.into_iter().zip(appended) {
                let _ = reply.send(Ok(appended));
            }
            true
        }
        Err(error) => {
            tracing::error!(error = ?error, entries = replies.len(), "ledger batch failed; nothing in it was committed");
            let message = format!("{error:#}");
            for reply in replies {
                let _ = reply.send(Err(message.clone()));
            }
            false
        }
    }
}

/// A write transaction that holds the ledger's writer lock; see [`Ledger::begin`].
pub struct LedgerTransaction {
    _writer: tokio::sync::OwnedMutexGuard<()>,
    tx: sqlx::Transaction<'static, sqlx::Any>,
}

impl LedgerTransaction {
    pub fn conn(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }

    /// The index the entry committed by this transaction will get.
    pub async fn next_index(&mut self) -> anyhow::Result<u64> {
        Ok(Store::ledger_size(&mut self.tx).await? as u64)
    }

    /// Appends `draft` and commits it together with everything done on [`Self::conn`].
    pub async fn commit(mut self, draft: EntryDraft) -> anyhow::Result<Appended> {
        let appended = write_entries(&mut self.tx, vec![draft]).await?.remove(0);
        self.tx.commit().await.context("committing ledger transaction")?;
        Ok(appended)
    }
}

async fn write_batch(store: &Store, drafts: Vec<EntryDraft>) -> anyhow::Result<Vec<Appended>> {
    let mut tx = store.begin_write().await?;
    let appended = write_entries(&mut tx, drafts).await?;
    tx.commit().await.context("committing ledger batch")?;
    Ok(appended)
}

async fn write_entries(tx: &mut sqlx::AnyConnection, drafts: Vec<EntryDraft>) -> anyhow::Result<Vec<Appended>> {
    let first = Store::ledger_size(&mut *tx).await?;
    let now = chrono::Utc::now();
    let created_at = now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let count = drafts.len() as i64;
    let mut appended = Vec::with_capacity(drafts.len());
    let mut rollups = rollup::Pending::default();
    for (offset, draft) in drafts.into_iter().enumerate() {
        let index = first + offset as i64;
        let mut entry = draft.body;
        let Value::Object(map) = &mut entry else {
            anyhow::bail!("ledger entry body must be a JSON object");
        };
        map.insert("index".into(), json!(index));
        map.insert("time".into(), json!(created_at));
        map.insert("type".into(), json!(draft.entry_type));
        map.insert("request_id".into(), json!(draft.request_id));
        let policy = map.get("policy").and_then(|p| Some(format!("{}@{}", p.get("id")?.as_str()?, p.get("version")?)));
        let served_tier = map.get("served_tier").and_then(Value::as_i64);
        if let Some(system) = &draft.system_id {
            rollups.add(system, now, &entry);
        }
        let bytes = to_canonical_bytes(&entry);
        let n = index as u64;
        // Reads see the hashes this transaction has written for earlier entries of the batch.
        let new_hashes = with_stored_hashes(&mut *tx, |reader| stored_hashes(n, &bytes, reader)).await?;
        let row = LedgerRow {
            index,
            created_at: created_at.clone(),
            request_id: draft.request_id,
            entry_type: draft.entry_type.to_owned(),
            system_id: draft.system_id,
            policy,
            outcome: draft.outcome,
            served_tier,
            entry: String::from_utf8(bytes).context("canonical entry is not UTF-8")?,
        };
        let hash_bytes: Vec<Vec<u8>> = new_hashes.iter().map(|h| h.0.to_vec()).collect();
        Store::ledger_insert(&mut *tx, &row, stored_hash_index(0, n) as i64, &hash_bytes).await?;
        appended.push(Appended { index: n, leaf_hash: hex::encode(new_hashes[0].0) });
    }
    rollup::add_batch(&mut *tx, first, count, rollups).await?;
    Ok(appended)
}

/// A page (at most 1,000) of the stored entries from index `from` up to `to` (exclusive), each
/// with its stored leaf hash when there is one; rows missing from the table are skipped, so
/// callers see the indexes actually stored.
pub(crate) async fn entries_with_leaves(store: &Store, from: u64, to: u64) -> anyhow::Result<Vec<(u64, String, Option<Vec<u8>>)>> {
    let page = store.ledger_entries(from as i64, to.saturating_sub(from).min(1000) as i64).await?;
    let leaf_indexes: Vec<i64> = page.iter().map(|(index, _)| stored_hash_index(0, *index as u64) as i64).collect();
    let mut conn = store.pool().acquire().await.context("acquiring connection")?;
    let mut leaves = Store::ledger_read_hashes(&mut conn, &leaf_indexes).await?;
    Ok(page
        .into_iter()
        .zip(leaf_indexes)
        .filter(|((index, _), _)| (*index as u64) < to)
        .map(|((index, entry), leaf_index)| (index as u64, entry, leaves.remove(&leaf_index)))
        .collect())
}

/// Runs a tlog computation that reads stored hashes: tlog's reader is synchronous, so the
/// hashes it asks for are fetched from the database and the computation is run again.
/// Each round fetches everything the last one asked for; two rounds suffice for any tree.
async fn with_stored_hashes<T>(
    conn: &mut sqlx::AnyConnection,
    compute: impl Fn(&PrefetchedHashes) -> Result<T, tlog_tiles::Error>,
) -> anyhow::Result<T> {
    let mut known: HashMap<u64, Hash> = HashMap::new();
    for _round in 0..4 {
        let (result, missing) = {
            let reader = PrefetchedHashes::new(&known);
            let result = compute(&reader);
            (result, reader.take_missing())
        };
        let error = match result {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        anyhow::ensure!(!missing.is_empty(), "computing ledger hashes: {error}");
        let wanted: Vec<i64> = missing.iter().map(|i| *i as i64).collect();
        for (index, bytes) in Store::ledger_read_hashes(conn, &wanted).await? {
            let array: [u8; 32] = bytes.as_slice().try_into().with_context(|| format!("stored hash {index} is not 32 bytes"))?;
            known.insert(index as u64, Hash(array));
        }
        for index in missing {
            anyhow::ensure!(known.contains_key(&index), "stored hash {index} is missing from the ledger");
        }
    }
    anyhow::bail!("computing ledger hashes did not converge")
}

/// RFC 6962 leaf hash (sha256(0x00 ‖ bytes)) as hex.
pub fn leaf_hash_hex(bytes: &[u8]) -> String {
    hex::encode(record_hash(bytes).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RFC 6962 reference vectors (certificate-transparency's merkle_tree_test): eight
    /// leaves and the root of every prefix of them.
    #[test]
    fn tree_heads_match_the_rfc_6962_reference_vectors() {
        let leaves: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let mut known: HashMap<u64, Hash> = HashMap::new();
        for (n, leaf) in leaves.iter().enumerate() {
            let n = n as u64;
            let new = stored_hashes(n, leaf, &PrefetchedHashes::new(&known)).unwrap();
            for (offset, hash) in new.into_iter().enumerate() {
                known.insert(stored_hash_index(0, n) + offset as u64, hash);
            }
            let root = tree_hash(n + 1, &PrefetchedHashes::new(&known)).unwrap();
            assert_eq!(hex::encode(root.0), roots[n as usize], "tree of {} leaves", n + 1);
        }
    }

    #[test]
    fn leaf_hashes_follow_rfc_6962() {
        // RFC 6962 §2.1: MTH({d(0)}) = SHA-256(0x00 || d(0)); the empty leaf's hash is a
        // published constant (certificate-transparency test vectors).
        assert_eq!(leaf_hash_hex(b""), "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d");
    }
}
