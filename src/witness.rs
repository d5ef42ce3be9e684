//! `tiergate witness serve`: a small stateful witness speaking C2SP tlog-witness
//! (https://c2sp.org/tlog-witness). It trusts a configured set of log keys, remembers the newest
//! checkpoint it cosigned for each log, and cosigns (c2sp.org/tlog-cosignature) a new checkpoint
//! only when a consistency proof shows that it extends that one. A log that shows two histories
//! can therefore get at most one of them cosigned by an honest witness.
//!
//! No crate on crates.io implements the witness side (checked 2026-12-02: `signed_note` and
//! `tlog_tiles` give the note and Merkle pieces, used here; the witness logic is ours).

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use actix_web::{HttpResponse, web};
use anyhow::Context;
use base64::{Engine as _, prelude::BASE64_STANDARD};
use sha2::{Digest, Sha256};
use signed_note::{Note, NoteError, StandardVerifier, VerifierList};
use tlog_tiles::{Checkpoint, Hash, check_tree};

use crate::ledger::CosigningKey;

/// The witness's private key, inside its state directory.
pub const WITNESS_KEY_FILE: &str = "witness.key";

/// The spec's limit on consistency proof lines.
const MAX_PROOF_LINES: usize = 63;

/// A witness: its key, the logs it trusts, and its durable per-log state.
pub struct Witness {
    key: CosigningKey,
    /// Trusted log verifier keys by origin (a tiergate ledger's key is named by its origin).
    logs: HashMap<String, Vec<String>>,
    state_dir: PathBuf,
    /// Checking a request against the stored checkpoint and storing the new one happen under
    /// it, so that two requests cannot both pass against the same old size (the spec's race).
    update: Mutex<()>,
}

/// Why a checkpoint was not cosigned, with the status the protocol gives it.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
    /// For a 409 on the old size: the size of the newest checkpoint cosigned for the log.
    pub latest_size: Option<u64>,
}

fn refuse(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal { status, reason: reason.into(), latest_size: None }
}

impl Witness {
    /// Opens (creating on first use) the witness in `state_dir`: its key `witness.key`, named
    /// `name`, and its per-log state under `logs/`. `log_keys` are the note verifier keys of
    /// the logs it witnesses; each log's origin is its key's name.
    pub fn open(state_dir: &Path, name: &str, log_keys: &[String]) -> anyhow::Result<Witness> {
        anyhow::ensure!(!log_keys.is_empty(), "a witness needs the key of at least one log to witness (--log-key)");
        let mut logs: HashMap<String, Vec<String>> = HashMap::new();
        for key in log_keys {
            let verifier = StandardVerifier::new(key.trim()).map_err(|e| anyhow::anyhow!("log key {key:?} is not a note verifier key: {e}"))?;
            logs.entry(signed_note::Verifier::name(&verifier).to_owned()).or_default().push(key.trim().to_owned());
        }
        std::fs::create_dir_all(state_dir.join("logs")).with_context(|| format!("creating {}", state_dir.display()))?;
        let key = CosigningKey::load_or_create(&state_dir.join(WITNESS_KEY_FILE), name)?;
        Ok(Witness { key, logs, state_dir: state_dir.to_owned(), update: Mutex::new(()) })
    }

    /// The verifier key logs and auditors check this witness's cosignatures with.
    pub fn verifier_key(&self) -> String {
        self.key.verifier_key()
    }

    /// The origins this witness cosigns for.
    pub fn origins(&self) -> Vec<&str> {
        let mut origins: Vec<&str> = self.logs.keys().map(String::as_str).collect();
        origins.sort_unstable();
        origins
    }

    /// Handles an add-checkpoint request body at Unix time `now`: on success, the cosignature
    /// line(s) to return, after the checkpoint has been stored as the log's newest.
    pub fn add_checkpoint(&self, body: &[u8], now: u64) -> Result<String, Refusal> {
        let request = parse_request(body)?;
        let note = Note::from_bytes(request.note.as_bytes()).map_err(|e| refuse(400, format!("the checkpoint is not a signed note: {e}")))?;
        let checkpoint = Checkpoint::from_bytes(note.text()).map_err(|_| refuse(400, "the note's text is not a C2SP checkpoint"))?;
        let origin = checkpoint.origin().to_owned();
        let Some(keys) = self.logs.get(&origin) else {
            return Err(refuse(404, format!("this witness does not witness the log {origin:?}")));
        };
        verify_log_signature(&note, keys).map_err(|e| refuse(403, format!("no signature of log {origin:?} verifies: {e}")))?;
        let (size, root) = (checkpoint.size(), *checkpoint.hash());
        if request.old_size > size {
            return Err(refuse(400, format!("old size {} is larger than the checkpoint's size {size}", request.old_size)));
        }

        let _update = self.update.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (latest_size, latest_root) = self.latest(&origin).map_err(|e| refuse(500, format!("{e:#}")))?.unwrap_or((0, Hash([0; 32])));
        if request.old_size != latest_size {
            return Err(Refusal {
                status: 409,
                reason: format!("old size {} is not the size of the newest checkpoint cosigned for this log", request.old_size),
                latest_size: Some(latest_size),
            });
        }
        if request.old_size == 0 && !request.proof.is_empty() {
            return Err(refuse(422, "a consistency proof from size 0 must be empty"));
        }
        if request.old_size == size && size > 0 {
            if root != latest_root {
                tracing::warn!(origin, size, note = request.note, "refused a checkpoint of the cosigned size with another root: the log forked");
                return Err(refuse(409, format!("a checkpoint of size {size} with another root was cosigned: the log forked")));
            }
        } else if request.old_size > 0
            && let Err(error) = check_tree(&request.proof, size, root, request.old_size, latest_root)
        {
            tracing::warn!(origin, old_size = request.old_size, size, note = request.note, %error, "refused a checkpoint that does not extend the cosigned one");
            return Err(refuse(422, format!("the consistency proof from size {} to {size} does not verify", request.old_size)));
        }
        self.store(&origin, &request.note).map_err(|e| refuse(500, format!("{e:#}")))?;
        tracing::info!(origin, size, "cosigned");
        Ok(self.key.cosign(&String::from_utf8_lossy(note.text()), now))
    }

    fn state_file(&self, origin: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("{}.checkpoint", hex::encode(Sha256::digest(origin.as_bytes()))))
    }

    /// Size and root of the newest checkpoint cosigned for `origin`.
    fn latest(&self, origin: &str) -> anyhow::Result<Option<(u64, Hash)>> {
        let path = self.state_file(origin);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
        };
        let note = Note::from_bytes(&text).map_err(|e| anyhow::anyhow!("{} is not a signed note: {e}", path.display()))?;
        let checkpoint = Checkpoint::from_bytes(note.text()).map_err(|_| anyhow::anyhow!("{} does not hold a checkpoint", path.display()))?;
        Ok(Some((checkpoint.size(), *checkpoint.hash())))
    }

    /// Replaces the log's newest checkpoint durably (write aside, sync, rename, sync the folder):
    /// a crash leaves the old checkpoint or the new one, never a torn file.
    fn store(&self, origin: &str, note: &str) -> anyhow::Result<()> {
        let path = self.state_file(origin);
        let aside = path.with_extension("checkpoint.new");
        let mut file = std::fs::File::create(&aside).with_context(|| format!("creating {}", aside.display()))?;
        file.write_all(note.as_bytes()).context("writing the cosigned checkpoint")?;
        file.sync_all().context("syncing the cosigned checkpoint")?;
        std::fs::rename(&aside, &path).with_context(|| format!("replacing {}", path.display()))?;
        std::fs::File::open(path.parent().expect("a state file has a folder")).and_then(|dir| dir.sync_all()).context("syncing the state folder")?;
        Ok(())
    }
}

struct Request {
    old_size: u64,
    proof: Vec<Hash>,
    note: String,
}

/// `old <N>\n`, up to 63 base64 hash lines, an empty line, the signed checkpoint.
fn parse_request(body: &[u8]) -> Result<Request, Refusal> {
    let text = std::str::from_utf8(body).map_err(|_| refuse(400, "the body is not UTF-8"))?;
    let (head, note) = text.split_once("\n\n").ok_or_else(|| refuse(400, "the body has no empty line before the checkpoint"))?;
    let mut lines = head.split('\n');
    let old = lines.next().and_then(|l| l.strip_prefix("old ")).ok_or_else(|| refuse(400, "the body does not start with an `old <size>` line"))?;
    let canonical = old == "0" || (!old.starts_with('0') && old.bytes().all(|b| b.is_ascii_digit()));
    let old_size = old
        .parse::<u64>()
        .ok()
        .filter(|_| canonical)
        .ok_or_else(|| refuse(400, format!("old size {old:?} is not a decimal without leading zeroes")))?;
    let mut proof = Vec::new();
    for (number, line) in lines.enumerate() {
        if number == MAX_PROOF_LINES {
            return Err(refuse(400, format!("more than {MAX_PROOF_LINES} consistency proof lines")));
        }
        let hash: [u8; 32] = BASE64_STANDARD
            .decode(line)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| refuse(400, format!("consistency proof line {} is not a base64 SHA-256 hash", number + 1)))?;
        proof.push(Hash(hash));
    }
    Ok(Request { old_size, proof, note: note.to_owned() })
}

fn verify_log_signature(note: &Note, keys: &[String]) -> Result<(), NoteError> {
    let verifiers: Vec<Box<dyn signed_note::Verifier>> =
        keys.iter().filter_map(|key| StandardVerifier::new(key).ok()).map(|v| Box::new(v) as Box<dyn signed_note::Verifier>).collect();
    note.verify(&VerifierList::new(verifiers)).map(|_| ())
}

async fn add_checkpoint(witness: web::Data<Arc<Witness>>, body: web::Bytes) -> HttpResponse {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let witness = witness.get_ref().clone();
    let answer = match tokio::task::spawn_blocking(move || witness.add_checkpoint(&body, now)).await {
        Ok(answer) => answer,
        Err(error) => Err(refuse(500, format!("the witness failed: {error}"))),
    };
    match answer {
        Ok(cosignature) => HttpResponse::Ok().content_type("text/plain; charset=utf-8").body(cosignature),
        Err(Refusal { status: 409, latest_size: Some(size), reason }) => {
            tracing::info!(reason, latest_size = size, "add-checkpoint: old size conflict");
            HttpResponse::Conflict().content_type("text/x.tlog.size").body(format!("{size}\n"))
        }
        Err(refusal) => {
            tracing::warn!(status = refusal.status, reason = refusal.reason, "add-checkpoint refused");
            let status = actix_web::http::StatusCode::from_u16(refusal.status).unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
            HttpResponse::build(status).content_type("text/plain; charset=utf-8").body(format!("{}\n", refusal.reason))
        }
    }
}

/// The witness's HTTP server for its submission prefix (`POST /add-checkpoint`) on `listener`;
/// it runs when awaited (or spawned: the server is `Send`).
pub fn server(witness: Arc<Witness>, listener: std::net::TcpListener) -> anyhow::Result<actix_web::dev::Server> {
    let witness = web::Data::new(witness);
    Ok(actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(witness.clone())
            .app_data(web::PayloadConfig::new(64 * 1024))
            .route("/add-checkpoint", web::post().to(add_checkpoint))
    })
    .workers(2)
    .listen(listener)
    .context("listening")?
    .run())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tlog_tiles::{prove_tree, stored_hash_index, stored_hashes, tree_hash};

    use super::*;
    use crate::ledger::{CheckpointSigner, WitnessKey, verified_cosignatures};

    /// An in-memory tree of `leaves` (a test's log).
    struct Tree(HashMap<u64, Hash>, u64);

    impl tlog_tiles::HashReader for Tree {
        fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
            indexes.iter().map(|i| self.0.get(i).copied().ok_or(tlog_tiles::Error::IndexesNotInTree)).collect()
        }
    }

    impl Tree {
        fn of(leaves: &[&str]) -> Tree {
            let mut tree = Tree(HashMap::new(), 0);
            for leaf in leaves {
                let new = stored_hashes(tree.1, leaf.as_bytes(), &tree).unwrap();
                for (offset, hash) in new.into_iter().enumerate() {
                    tree.0.insert(stored_hash_index(0, tree.1) + offset as u64, hash);
                }
                tree.1 += 1;
            }
            tree
        }
        fn root(&self) -> Hash {
            tree_hash(self.1, self).unwrap()
        }
        fn proof_from(&self, old: u64) -> Vec<Hash> {
            prove_tree(self.1, old, self).unwrap()
        }
    }

    struct Setup {
        dir: PathBuf,
        log: CheckpointSigner,
        witness: Witness,
    }

    fn setup() -> Setup {
        let dir = std::env::temp_dir().join(format!("tiergate-witness-{}", uuid::Uuid::new_v4()));
        let log = CheckpointSigner::load_or_create(&dir.join("log.key"), "example.com/log").unwrap();
        let witness = Witness::open(&dir.join("witness"), "witness.example/w1", std::slice::from_ref(&log.verifier_key)).unwrap();
        Setup { dir, log, witness }
    }

    fn body(old: u64, proof: &[Hash], note: &str) -> Vec<u8> {
        let lines: String = proof.iter().map(|h| format!("{}\n", BASE64_STANDARD.encode(h.0))).collect();
        format!("old {old}\n{lines}\n{note}").into_bytes()
    }

    #[test]
    fn a_growing_log_is_cosigned_step_by_step_and_the_cosignature_verifies() {
        let Setup { dir, log, witness } = setup();
        let small = Tree::of(&["a", "b", "c"]);
        let large = Tree::of(&["a", "b", "c", "d", "e"]);
        let key = WitnessKey::parse(&witness.verifier_key()).unwrap();

        let first_note = log.sign(3, small.root()).unwrap();
        let first = witness.add_checkpoint(&body(0, &[], &first_note), 100).unwrap();
        let second_note = log.sign(5, large.root()).unwrap();
        let second = witness.add_checkpoint(&body(3, &large.proof_from(3), &second_note), 200).unwrap();

        assert_eq!(
            verified_cosignatures(&format!("{first_note}{first}"), std::slice::from_ref(&key)).unwrap(),
            vec![("witness.example/w1".into(), 100)]
        );
        assert_eq!(
            verified_cosignatures(&format!("{second_note}{second}"), std::slice::from_ref(&key)).unwrap(),
            vec![("witness.example/w1".into(), 200)]
        );
        assert!(verified_cosignatures(&format!("{first_note}{second}"), &[key]).is_err(), "a cosignature names one checkpoint");
        let again = witness.add_checkpoint(&body(5, &[], &second_note), 300);
        assert!(again.is_ok(), "the same checkpoint may be cosigned again: {again:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_fork_is_refused_whether_larger_or_of_the_same_size() {
        let Setup { dir, log, witness } = setup();
        let honest = Tree::of(&["a", "b", "c"]);
        witness.add_checkpoint(&body(0, &[], &log.sign(3, honest.root()).unwrap()), 1).unwrap();
        let forked = Tree::of(&["a", "B", "c", "d"]);

        let larger = witness.add_checkpoint(&body(3, &forked.proof_from(3), &log.sign(4, forked.root()).unwrap()), 2).unwrap_err();
        let same_size = witness.add_checkpoint(&body(3, &[], &log.sign(3, Tree::of(&["a", "B", "c"]).root()).unwrap()), 2).unwrap_err();

        assert_eq!(larger.status, 422, "{larger:?}");
        assert_eq!(same_size.status, 409, "{same_size:?}");
        assert_eq!(same_size.latest_size, None, "a fork is not an old-size conflict");
        let honest_next = Tree::of(&["a", "b", "c", "d"]);
        assert!(witness.add_checkpoint(&body(3, &honest_next.proof_from(3), &log.sign(4, honest_next.root()).unwrap()), 3).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_stale_old_size_gets_409_with_the_latest_size_and_the_state_survives_a_restart() {
        let Setup { dir, log, witness } = setup();
        let tree = Tree::of(&["a", "b"]);
        witness.add_checkpoint(&body(0, &[], &log.sign(2, tree.root()).unwrap()), 1).unwrap();
        drop(witness);
        let reopened = Witness::open(&dir.join("witness"), "witness.example/w1", std::slice::from_ref(&log.verifier_key)).unwrap();
        let grown = Tree::of(&["a", "b", "c"]);

        let stale = reopened.add_checkpoint(&body(0, &[], &log.sign(3, grown.root()).unwrap()), 2).unwrap_err();

        assert_eq!((stale.status, stale.latest_size), (409, Some(2)));
        assert!(reopened.add_checkpoint(&body(2, &grown.proof_from(2), &log.sign(3, grown.root()).unwrap()), 2).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_logs_bad_signatures_and_malformed_bodies_get_the_protocols_statuses() {
        let Setup { dir, log, witness } = setup();
        let tree = Tree::of(&["a"]);
        let note = log.sign(1, tree.root()).unwrap();
        let stranger = CheckpointSigner::load_or_create(&dir.join("other.key"), "example.com/other").unwrap();
        let impostor = CheckpointSigner::load_or_create(&dir.join("impostor.key"), "example.com/log").unwrap();
        let status = |body: Vec<u8>| witness.add_checkpoint(&body, 1).unwrap_err().status;

        assert_eq!(status(body(0, &[], &stranger.sign(1, tree.root()).unwrap())), 404);
        assert_eq!(status(body(0, &[], &impostor.sign(1, tree.root()).unwrap())), 403, "same origin, another key");
        assert_eq!(status(body(2, &[], &note)), 400, "old size above the checkpoint's");
        assert_eq!(status(body(0, &[tree.root()], &note)), 422, "a proof from size 0");
        assert_eq!(status(format!("old 01\n\n{note}").into_bytes()), 400);
        assert_eq!(status(format!("new 0\n\n{note}").into_bytes()), 400);
        assert_eq!(status(format!("old 0\nnot-base64\n\n{note}").into_bytes()), 400);
        assert_eq!(status(body(0, &vec![tree.root(); 64], &note)), 400, "more than 63 proof lines");
        assert_eq!(status(b"old 0\n\nnot a note".to_vec()), 400);
        assert_eq!(status(format!("old 0\n{note}").into_bytes()), 400, "no empty line");
        assert_eq!(witness.latest("example.com/log").unwrap(), None, "nothing refused was stored");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
