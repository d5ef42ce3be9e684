//! The export format and its offline verification: signed checkpoint + canonical entries.
//!
//! Line 1: `{"format": "tiergate-ledger-export/2", "tree_size": N, "checkpoint": "<signed note>"}`.
//! Lines 2…N+1, one per entry 0…N-1: `{"entry":<canonical entry>,"leaf_hash":"<hex>"}`, itself
//! canonical JSON. `entry` is exactly the bytes hashed into the tree; `leaf_hash` is the leaf the
//! ledger recorded when the entry was written. The verifier never trusts `leaf_hash` on its own:
//! only when the recorded leaves hash to the signed root does it use them, to name the entry
//! that no longer matches its leaf. Format 1 (bare entry lines) is still read.

use serde_json::{Value, json};
use tlog_tiles::{Error as TlogError, Hash, HashReader, record_hash, stored_hashes, stored_hashes_for_record_hash, tree_hash};

use super::checkpoint::verify_checkpoint;
use crate::canonical::to_canonical_bytes;

pub const EXPORT_FORMAT: &str = "tiergate-ledger-export/2";
/// Bare canonical entry lines, without recorded leaves: read, no longer written.
pub const EXPORT_FORMAT_V1: &str = "tiergate-ledger-export/1";

const ENTRY_PREFIX: &str = "{\"entry\":";
const LEAF_KEY: &str = ",\"leaf_hash\":\"";

pub(super) fn header_line(tree_size: u64, checkpoint: &str) -> anyhow::Result<String> {
    let header = json!({"format": EXPORT_FORMAT, "tree_size": tree_size, "checkpoint": checkpoint});
    Ok(format!("{}\n", serde_json::to_string(&header)?))
}

/// One entry line: the stored canonical entry text and its recorded leaf hash. Built by
/// concatenation so that the entry's bytes are carried through untouched.
pub(super) fn entry_line(entry: &str, recorded_leaf: &[u8]) -> String {
    format!("{ENTRY_PREFIX}{entry}{LEAF_KEY}{}\"}}\n", hex::encode(recorded_leaf))
}

/// The entries of an export (either format), in order, as JSON; lines that are not JSON are
/// skipped (verification reports them).
/// The signed checkpoint in an export's header (with any cosignatures it carries).
pub fn export_checkpoint(export: &str) -> Option<String> {
    let header: Value = serde_json::from_str(export.lines().next()?).ok()?;
    header.get("checkpoint")?.as_str().map(str::to_owned)
}

pub fn export_entries(export: &str) -> impl Iterator<Item = Value> + '_ {
    let wrapped = !export.lines().next().is_some_and(|header| header.contains(EXPORT_FORMAT_V1));
    export.lines().skip(1).filter_map(move |line| {
        let value: Value = serde_json::from_str(line).ok()?;
        if wrapped { value.get("entry").cloned() } else { Some(value) }
    })
}

/// Splits a format-2 line into the entry's exact bytes and the recorded leaf, by its fixed
/// shape: `{"entry":` ‖ entry ‖ `,"leaf_hash":"` ‖ 64 lower-case hex ‖ `"}`. Only string
/// operations: whether the entry is JSON is [`checked_entry`]'s question.
fn split_entry_line(line: &str, index: u64) -> Result<(&str, Hash), ExportError> {
    let malformed =
        || ExportError::NotJson { line: index + 2, message: "expected {\"entry\":<canonical entry>,\"leaf_hash\":\"<64 lower-case hex>\"}".into() };
    let rest = line.strip_prefix(ENTRY_PREFIX).ok_or_else(malformed)?;
    // The last occurrence is the member: the hex value after it cannot contain the key.
    let (entry, leaf) = rest.rsplit_once(LEAF_KEY).ok_or_else(malformed)?;
    let leaf = leaf.strip_suffix("\"}").ok_or_else(malformed)?;
    let is_lower_hex = leaf.len() == 64 && leaf.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let recorded =
        hex::decode(leaf).ok().filter(|_| is_lower_hex).and_then(|bytes| <[u8; 32]>::try_from(bytes).ok()).map(Hash).ok_or_else(malformed)?;
    Ok((entry, recorded))
}

/// The entry bytes of one line, in either format.
fn entry_bytes(line: &str, index: u64, wrapped: bool) -> Result<(&str, Option<Hash>), ExportError> {
    if wrapped { split_entry_line(line, index).map(|(entry, recorded)| (entry, Some(recorded))) } else { Ok((line, None)) }
}

/// The per-entry checks that name what is wrong with one entry: it is JSON, in canonical form
/// (so it was not edited by hand) and claims its own position (so none was removed, added or
/// moved before it).
fn checked_entry(bytes: &str, index: u64) -> Result<(), ExportError> {
    let line = index + 2;
    let entry: Value = serde_json::from_str(bytes).map_err(|e| ExportError::NotJson { line, message: e.to_string() })?;
    match entry.get("index").and_then(Value::as_u64) {
        Some(claimed) if claimed == index => {}
        other => {
            return Err(ExportError::Index { line, claimed: other.map_or_else(|| "none".into(), |c| c.to_string()), expected: index });
        }
    }
    if to_canonical_bytes(&entry) != bytes.as_bytes() {
        return Err(ExportError::NotCanonical { index });
    }
    Ok(())
}

/// Why an export failed verification; the first problem found, as precisely as it can be named.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ExportError {
    #[error("the export has no valid header line: {0}")]
    Header(String),
    #[error("the checkpoint does not verify: {0}")]
    Checkpoint(String),
    #[error("the checkpoint covers {expected} entries but the export holds {actual}")]
    Count { expected: u64, actual: u64 },
    #[error("entry at line {line} is not JSON: {message}")]
    NotJson { line: u64, message: String },
    #[error("entry at line {line} claims index {claimed}, expected {expected} (entries removed, added or reordered)")]
    Index { line: u64, claimed: String, expected: u64 },
    #[error("entry {index} is not in canonical form (it was edited after it was written)")]
    NotCanonical { index: u64 },
    #[error("the entries do not hash to the signed root: computed {computed}, checkpoint says {signed} (an entry was altered)")]
    Root { computed: String, signed: String },
    #[error("entry {index} was altered: it no longer hashes to the leaf recorded when it was written")]
    Altered { index: u64 },
    #[error("the earlier checkpoint does not verify: {0}")]
    EarlierCheckpoint(String),
    #[error("history was rewritten: the first {size} entries hash to {computed}, but the earlier checkpoint signed {signed}")]
    Inconsistent { size: u64, computed: String, signed: String },
}

/// What a successful verification establishes.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedExport {
    pub tree_size: u64,
    pub root_hash: String,
}

/// Verifies an export with the ledger's public (note verifier) key alone: the checkpoint's
/// signature, every entry's position and canonical form, and the RFC 6962 root over all leaves.
/// With an `earlier` checkpoint (one the auditor kept from before), it also checks that the
/// exported log extends it: the first entries must hash to the root that was signed then.
pub fn verify_export(export: &str, verifier_key: &str, earlier: Option<&str>) -> Result<VerifiedExport, ExportError> {
    let mut lines = export.lines();
    let header: Value = lines
        .next()
        .ok_or_else(|| ExportError::Header("the export is empty".into()))
        .and_then(|line| serde_json::from_str(line).map_err(|e| ExportError::Header(e.to_string())))?;
    let wrapped = match header.get("format").and_then(Value::as_str) {
        Some(EXPORT_FORMAT) => true,
        Some(EXPORT_FORMAT_V1) => false,
        _ => return Err(ExportError::Header(format!("format is not {EXPORT_FORMAT:?}"))),
    };
    let note = header.get("checkpoint").and_then(Value::as_str).ok_or_else(|| ExportError::Header("no checkpoint".into()))?;
    let (size, signed_root) = verify_checkpoint(note, verifier_key).map_err(|e| ExportError::Checkpoint(format!("{e:#}")))?;

    // Hash first: entries whose leaves hash to the signed root are exactly the entries that
    // were signed, so the per-entry checks, which only serve to name what went wrong, run when
    // the root does not match. This keeps verification at hashing speed.
    let mut hashes = MemoryHashes::default();
    let mut count = 0u64;
    for (position, line) in lines.enumerate() {
        let index = position as u64;
        let Ok((bytes, _)) = entry_bytes(line, index, wrapped) else {
            return Err(diagnose(export, wrapped, size, signed_root, None));
        };
        let new = stored_hashes(index, bytes.as_bytes(), &hashes).map_err(|e| ExportError::Header(e.to_string()))?;
        hashes.0.extend(new);
        count += 1;
    }
    let computed = if count == size { Some(tree_hash(size, &hashes).map_err(|e| ExportError::Header(e.to_string()))?) } else { None };
    let computed = match computed {
        Some(computed) if computed == signed_root => computed,
        computed => return Err(diagnose(export, wrapped, size, signed_root, computed)),
    };
    if let Some(earlier) = earlier {
        let (earlier_size, earlier_root) = verify_checkpoint(earlier, verifier_key).map_err(|e| ExportError::EarlierCheckpoint(format!("{e:#}")))?;
        if earlier_size > size {
            return Err(ExportError::EarlierCheckpoint(format!(
                "it covers {earlier_size} entries, more than this export's {size}: entries were removed"
            )));
        }
        let then = tree_hash(earlier_size, &hashes).map_err(|e| ExportError::Header(e.to_string()))?;
        if then != earlier_root {
            return Err(ExportError::Inconsistent { size: earlier_size, computed: hex::encode(then.0), signed: hex::encode(earlier_root.0) });
        }
    }
    Ok(VerifiedExport { tree_size: size, root_hash: hex::encode(computed.0) })
}

/// Names the first problem of an export whose entries do not hash to the signed root: a
/// malformed, moved or hand-edited entry, a wrong count, then (format 2) the entry that no
/// longer matches its recorded leaf, and failing all else the root mismatch itself.
fn diagnose(export: &str, wrapped: bool, size: u64, signed_root: Hash, computed: Option<Hash>) -> ExportError {
    let mut recorded = Vec::new();
    let mut count = 0u64;
    for (position, line) in export.lines().skip(1).enumerate() {
        let index = position as u64;
        let checked = entry_bytes(line, index, wrapped).and_then(|(bytes, leaf)| {
            checked_entry(bytes, index)?;
            Ok(leaf)
        });
        match checked {
            Ok(leaf) => recorded.extend(leaf),
            Err(error) => return error,
        }
        count += 1;
    }
    if count != size {
        return ExportError::Count { expected: size, actual: count };
    }
    match first_altered(export, &recorded, size, signed_root) {
        Ok(Some(index)) => ExportError::Altered { index },
        Err(error) => error,
        Ok(None) => ExportError::Root { computed: computed.map_or_else(String::new, |c| hex::encode(c.0)), signed: hex::encode(signed_root.0) },
    }
}

/// When the recorded leaves hash to the signed root, they are the leaves as written, so the
/// first entry whose recomputed leaf differs is the altered one. Otherwise nothing is named.
fn first_altered(export: &str, recorded: &[Hash], size: u64, signed_root: Hash) -> Result<Option<u64>, ExportError> {
    if recorded.len() as u64 != size {
        return Ok(None);
    }
    let mut hashes = MemoryHashes::default();
    for (n, leaf) in recorded.iter().enumerate() {
        let new = stored_hashes_for_record_hash(n as u64, *leaf, &hashes).map_err(|e| ExportError::Header(e.to_string()))?;
        hashes.0.extend(new);
    }
    if tree_hash(size, &hashes).map_err(|e| ExportError::Header(e.to_string()))? != signed_root {
        return Ok(None);
    }
    for (index, (line, leaf)) in export.lines().skip(1).zip(recorded).enumerate() {
        let (entry, _) = split_entry_line(line, index as u64)?;
        if record_hash(entry.as_bytes()) != *leaf {
            return Ok(Some(index as u64));
        }
    }
    Ok(None)
}

/// Stored hashes in memory: they are appended in stored-hash-index order, so the index is
/// the position.
#[derive(Default)]
struct MemoryHashes(Vec<Hash>);

impl HashReader for MemoryHashes {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, TlogError> {
        indexes.iter().map(|i| self.0.get(*i as usize).copied().ok_or(TlogError::IndexesNotInTree)).collect()
    }
}
