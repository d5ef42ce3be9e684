//! The export format and its offline verification: signed checkpoint + canonical entries.
//!
//! Line 1: `{"format": "tiergate-ledger-export/1", "tree_size": N, "checkpoint": "<signed note>"}`.
//! Lines 2…N+1: the canonical JSON bytes of entries 0…N-1, exactly as hashed into the tree.

use serde_json::{Value, json};
use tlog_tiles::{Error as TlogError, Hash, HashReader, stored_hashes, tree_hash};

use super::checkpoint::verify_checkpoint;
use crate::canonical::to_canonical_bytes;

pub const EXPORT_FORMAT: &str = "tiergate-ledger-export/1";

pub(super) fn header_line(tree_size: u64, checkpoint: &str) -> anyhow::Result<String> {
    let header = json!({"format": EXPORT_FORMAT, "tree_size": tree_size, "checkpoint": checkpoint});
    Ok(format!("{}\n", serde_json::to_string(&header)?))
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
    if header.get("format").and_then(Value::as_str) != Some(EXPORT_FORMAT) {
        return Err(ExportError::Header(format!("format is not {EXPORT_FORMAT:?}")));
    }
    let note = header
        .get("checkpoint")
        .and_then(Value::as_str)
        .ok_or_else(|| ExportError::Header("no checkpoint".into()))?;
    let (size, signed_root) =
        verify_checkpoint(note, verifier_key).map_err(|e| ExportError::Checkpoint(format!("{e:#}")))?;

    let mut hashes = MemoryHashes::default();
    let mut count = 0u64;
    for (position, line) in lines.enumerate() {
        let index = position as u64;
        let line_number = index + 2;
        let entry: Value = serde_json::from_str(line)
            .map_err(|e| ExportError::NotJson { line: line_number, message: e.to_string() })?;
        match entry.get("index").and_then(Value::as_u64) {
            Some(claimed) if claimed == index => {}
            other => {
                return Err(ExportError::Index {
                    line: line_number,
                    claimed: other.map_or_else(|| "none".into(), |c| c.to_string()),
                    expected: index,
                });
            }
        }
        if to_canonical_bytes(&entry) != line.as_bytes() {
            return Err(ExportError::NotCanonical { index });
        }
        let new = stored_hashes(index, line.as_bytes(), &hashes).map_err(|e| ExportError::Header(e.to_string()))?;
        hashes.0.extend(new);
        count += 1;
    }
    if count != size {
        return Err(ExportError::Count { expected: size, actual: count });
    }
    let computed = tree_hash(size, &hashes).map_err(|e| ExportError::Header(e.to_string()))?;
    if computed != signed_root {
        return Err(ExportError::Root { computed: hex::encode(computed.0), signed: hex::encode(signed_root.0) });
    }
    if let Some(earlier) = earlier {
        let (earlier_size, earlier_root) =
            verify_checkpoint(earlier, verifier_key).map_err(|e| ExportError::EarlierCheckpoint(format!("{e:#}")))?;
        if earlier_size > size {
            return Err(ExportError::EarlierCheckpoint(format!(
                "it covers {earlier_size} entries, more than this export's {size}: entries were removed"
            )));
        }
        let then = tree_hash(earlier_size, &hashes).map_err(|e| ExportError::Header(e.to_string()))?;
        if then != earlier_root {
            return Err(ExportError::Inconsistent {
                size: earlier_size,
                computed: hex::encode(then.0),
                signed: hex::encode(earlier_root.0),
            });
        }
    }
    Ok(VerifiedExport { tree_size: size, root_hash: hex::encode(computed.0) })
}

/// Stored hashes in memory: they are appended in stored-hash-index order, so the index is
/// the position.
#[derive(Default)]
struct MemoryHashes(Vec<Hash>);

impl HashReader for MemoryHashes {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, TlogError> {
        indexes
            .iter()
            .map(|i| self.0.get(*i as usize).copied().ok_or(TlogError::IndexesNotInTree))
            .collect()
    }
}
