//! The ledger never signs a tree that contradicts one it signed before.
//!
//! Every signature extends an *anchor*: the newest tree head this ledger is known to have
//! signed. Two anchors are kept, so that one cannot be rolled back with the other: a signed note
//! in a file beside the signing key (outside the database, so a database restored from an older
//! backup, or rows deleted from it, cannot take it back), and the newest checkpoint published in
//! the database since the last recorded incident (shared by every replica). Before any signature
//! and at start-up, the stored tree must extend both: at least as many entries, the stored
//! hashes giving the anchor's root at its size, and each entry not yet checked hashing to its
//! stored leaf. When it does not, the ledger halts: it signs nothing and appends nothing (so no
//! request is served) until an operator runs `tiergate ledger recover`, which records an
//! incident entry and anchors the tree as it now is.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use tlog_tiles::{Hash, record_hash, tree_hash};

use super::{checkpoint::verify_checkpoint, entries_with_leaves, with_stored_hashes};
use crate::store::Store;

/// The anchor file's name, beside the ledger's signing key in the data directory.
pub const ANCHOR_FILE: &str = "ledger-anchor.note";

/// At start-up, at least this many of the newest entries are checked against their stored
/// leaves (besides every entry the anchors do not cover yet): about 5 ms per 1,000.
const NEWEST_ENTRIES_CHECKED: u64 = 1000;

/// Why the stored ledger contradicts what it signed before (also the API body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Contradiction {
    /// What is wrong, in words.
    pub problem: String,
    /// The first entry index known to be wrong or missing, when it can be named.
    pub first_bad_index: Option<u64>,
    /// `shorter` (entries missing that a signed checkpoint covered), `diverged` (the stored tree
    /// no longer hashes to a signed root) or `damaged` (an entry does not match its stored leaf,
    /// or rows or hashes are missing).
    pub kind: ContradictionKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContradictionKind {
    Shorter,
    Diverged,
    Damaged,
}

impl std::fmt::Display for Contradiction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.problem)?;
        if let Some(index) = self.first_bad_index {
            write!(f, " (first bad index {index})")?;
        }
        Ok(())
    }
}

/// A signed tree head the stored tree must extend, and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Anchor {
    pub size: u64,
    pub root: Hash,
    /// The signed note.
    pub note: String,
    /// `anchor file <path>` or `checkpoint published <time>`.
    pub source: String,
}

/// The anchor file: the newest signed note this ledger handed out.
#[derive(Debug, Clone)]
pub struct AnchorFile {
    path: PathBuf,
}

impl AnchorFile {
    pub fn new(path: PathBuf) -> AnchorFile {
        AnchorFile { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The anchor in the file, if there is one; a file that is unreadable or not signed by
    /// one of `verifier_keys` is a contradiction in itself (someone replaced it).
    pub fn read(&self, verifier_keys: &str) -> Result<Option<Anchor>, Contradiction> {
        let note = match std::fs::read_to_string(&self.path) {
            Ok(note) => note,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(damaged(format!("the ledger anchor file {} cannot be read: {error}", self.path.display()), None)),
        };
        let (size, root) = verify_checkpoint(&note, verifier_keys).map_err(|error| {
            damaged(format!("the ledger anchor file {} is not a checkpoint signed by this ledger: {error:#}", self.path.display()), None)
        })?;
        Ok(Some(Anchor { size, root, note, source: format!("anchor file {}", self.path.display()) }))
    }

    /// Replaces the anchor durably: written beside it, synced, renamed over it, directory synced.
    pub fn write(&self, note: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let staging = self.path.with_extension(format!("staging-{}", uuid::Uuid::new_v4().simple()));
        let mut file = std::fs::File::create(&staging).with_context(|| format!("creating {}", staging.display()))?;
        file.write_all(note.as_bytes()).and_then(|()| file.sync_all()).with_context(|| format!("writing {}", staging.display()))?;
        std::fs::rename(&staging, &self.path).with_context(|| format!("replacing {}", self.path.display()))?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))?;
        }
        Ok(())
    }
}

pub(crate) fn damaged(problem: String, first_bad_index: Option<u64>) -> Contradiction {
    Contradiction { problem, first_bad_index, kind: ContradictionKind::Damaged }
}

/// Whether the stored tree (of `size` entries) extends `anchor`.
pub(crate) async fn check_extends(store: &Store, size: u64, anchor: &Anchor) -> anyhow::Result<Option<Contradiction>> {
    if size < anchor.size {
        return Ok(Some(Contradiction {
            problem: format!(
                "the ledger holds {size} entries, but a checkpoint of {} entries was signed ({}): entries were removed or the database was restored from an older backup",
                anchor.size, anchor.source
            ),
            first_bad_index: Some(size),
            kind: ContradictionKind::Shorter,
        }));
    }
    let mut conn = store.pool().acquire().await.context("acquiring connection")?;
    let root = match with_stored_hashes(&mut conn, |reader| tree_hash(anchor.size, reader)).await {
        Ok(root) => root,
        Err(error) => return Ok(Some(damaged(format!("the stored tree of {} entries cannot be read: {error:#}", anchor.size), None))),
    };
    Ok(diverged(anchor, root))
}

/// A contradiction when the stored tree of `anchor.size` entries has `root` rather than the
/// anchor's root.
pub(crate) fn diverged(anchor: &Anchor, root: Hash) -> Option<Contradiction> {
    (root != anchor.root).then(|| Contradiction {
        problem: format!(
            "the stored tree of {} entries has root {}, but the signed checkpoint ({}) has root {}: the history was rewritten",
            anchor.size,
            hex::encode(root.0),
            anchor.source,
            hex::encode(anchor.root.0)
        ),
        first_bad_index: None,
        kind: ContradictionKind::Diverged,
    })
}

/// Whether the entries `from..to` are all there, in order, each hashing to its stored leaf.
pub(crate) async fn check_leaves(store: &Store, from: u64, to: u64) -> anyhow::Result<Option<Contradiction>> {
    let mut next = from;
    while next < to {
        let page = entries_with_leaves(store, next, to).await?;
        if page.is_empty() {
            return Ok(Some(damaged(format!("entries {next} to {} are missing from the ledger", to - 1), Some(next))));
        }
        for (index, entry, leaf) in page {
            if index != next {
                return Ok(Some(damaged(format!("entry {next} is missing from the ledger (the next stored entry is {index})"), Some(next))));
            }
            let Some(stored) = leaf else {
                return Ok(Some(damaged(format!("entry {index} has no stored leaf hash: it was added outside the ledger"), Some(index))));
            };
            if stored.as_slice() != record_hash(entry.as_bytes()).0 {
                return Ok(Some(damaged(format!("entry {index} does not hash to its stored leaf: it was altered in the database"), Some(index))));
            }
            next += 1;
        }
    }
    Ok(None)
}

/// Where the start-up check begins checking leaves: the newest entries, and every entry after
/// the smallest anchor.
pub(crate) fn first_leaf_to_check(size: u64, anchors: &[Anchor]) -> u64 {
    let newest = size.saturating_sub(NEWEST_ENTRIES_CHECKED);
    anchors.iter().map(|a| a.size).min().map_or(newest, |smallest| smallest.min(newest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor(size: u64) -> Anchor {
        Anchor { size, root: Hash([0; 32]), note: String::new(), source: "test".into() }
    }

    #[test]
    fn start_up_checks_the_newest_entries_and_all_the_anchors_do_not_cover() {
        assert_eq!(first_leaf_to_check(5000, &[]), 4000);
        assert_eq!(first_leaf_to_check(5000, &[anchor(4990), anchor(3000)]), 3000);
        assert_eq!(first_leaf_to_check(20, &[anchor(10)]), 0);
    }

    #[test]
    fn a_contradiction_names_its_first_bad_index() {
        let c = damaged("entry 4 does not hash to its stored leaf".into(), Some(4));
        assert_eq!(c.to_string(), "entry 4 does not hash to its stored leaf (first bad index 4)");
    }

    #[test]
    fn a_missing_anchor_file_is_no_anchor_and_a_foreign_one_is_a_contradiction() {
        let dir = std::env::temp_dir().join(format!("tiergate-anchor-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let signer = super::super::CheckpointSigner::load_or_create(&dir.join("key"), "test.example/log").unwrap();
        let file = AnchorFile::new(dir.join(ANCHOR_FILE));
        assert_eq!(file.read(&signer.verifier_keys()), Ok(None));

        let note = signer.sign(3, Hash([7; 32])).unwrap();
        file.write(&note).unwrap();
        assert_eq!(file.read(&signer.verifier_keys()).unwrap().map(|a| (a.size, a.root)), Some((3, Hash([7; 32]))));

        let other = super::super::CheckpointSigner::load_or_create(&dir.join("other-key"), "test.example/log").unwrap();
        file.write(&other.sign(9, Hash([1; 32])).unwrap()).unwrap();
        assert_eq!(file.read(&signer.verifier_keys()).unwrap_err().kind, ContradictionKind::Damaged);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
