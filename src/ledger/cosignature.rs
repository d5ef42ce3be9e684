//! C2SP tlog-cosignature (https://c2sp.org/tlog-cosignature), Ed25519 flavour: what a witness
//! adds to a checkpoint it has checked, and how a verifier counts them. No crate implements it
//! (`signed_note` 0.2 signs and verifies plain Ed25519 note signatures only); the witness that
//! uses it is `crate::witness`.
//!
//! A cosignature is a note signature line `— <name> <base64(key id ‖ timestamp ‖ signature)>`:
//! the key id is the first 4 bytes of SHA-256(name ‖ "\n" ‖ 0x04 ‖ public key), the timestamp the
//! 8-byte big-endian Unix time of cosigning, and the signature an Ed25519 signature over
//! `cosignature/v1\ntime <timestamp>\n` followed by the checkpoint text.

use anyhow::Context;
use base64::{Engine as _, prelude::BASE64_STANDARD};
use ed25519_dalek::{Signer, Verifier};
use sha2::{Digest, Sha256};

/// The algorithm byte of a timestamped Ed25519 cosignature key.
const ALG_COSIGNATURE_V1: u8 = 0x04;

/// A witness's cosigning key and its name.
pub struct CosigningKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl CosigningKey {
    pub fn from_seed(name: &str, seed: [u8; 32]) -> anyhow::Result<CosigningKey> {
        anyhow::ensure!(valid_name(name), "witness name {name:?} must be non-empty, without spaces, '+' or newlines");
        Ok(CosigningKey { name: name.to_owned(), key: ed25519_dalek::SigningKey::from_bytes(&seed) })
    }

    /// Loads the key from `path`, or creates one named `name` there (owner-only permissions).
    /// The file holds `PRIVATE+KEY+<name>+<key id>+<base64(0x04 ‖ seed)>`, the note private-key
    /// form with the cosignature algorithm byte. A stored key keeps its name: asking for another
    /// one is an error rather than a silently different identity.
    pub fn load_or_create(path: &std::path::Path, name: &str) -> anyhow::Result<CosigningKey> {
        if !path.is_file() {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness for the witness key: {e}"))?;
            let key = CosigningKey::from_seed(name, seed)?;
            let public = key.key.verifying_key().to_bytes();
            let encoded =
                format!("PRIVATE+KEY+{name}+{:08x}+{}\n", key_id(name, &public), BASE64_STANDARD.encode([&[ALG_COSIGNATURE_V1][..], &seed].concat()));
            super::checkpoint::write_private(path, &encoded)?;
            return Ok(key);
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("reading the witness key {}", path.display()))?;
        let parts: Vec<&str> = text.trim().splitn(5, '+').collect();
        let [_, _, stored_name, _, encoded] = parts[..] else { anyhow::bail!("{} is not a witness private key", path.display()) };
        anyhow::ensure!(
            stored_name == name,
            "{} holds the key of witness {stored_name:?}, not {name:?}: a witness keeps its name for as long as its key",
            path.display()
        );
        let bytes = BASE64_STANDARD.decode(encoded).with_context(|| format!("{}: the key is not base64", path.display()))?;
        let seed: [u8; 32] = match bytes.split_first() {
            Some((&ALG_COSIGNATURE_V1, seed)) => seed.try_into().ok(),
            _ => None,
        }
        .with_context(|| format!("{} is not an Ed25519 cosignature key", path.display()))?;
        CosigningKey::from_seed(name, seed)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key in note form: `<name>+<key id, hex>+<base64(0x04 ‖ public key)>`.
    pub fn verifier_key(&self) -> String {
        let public = self.key.verifying_key().to_bytes();
        format!("{}+{:08x}+{}", self.name, key_id(&self.name, &public), BASE64_STANDARD.encode([&[ALG_COSIGNATURE_V1][..], &public].concat()))
    }

    /// The signature line cosigning `checkpoint` (the note's text, newline-terminated) at
    /// Unix time `time`.
    pub fn cosign(&self, checkpoint: &str, time: u64) -> String {
        let public = self.key.verifying_key().to_bytes();
        let signature = self.key.sign(&signed_message(checkpoint, time));
        let blob = [&key_id(&self.name, &public).to_be_bytes()[..], &time.to_be_bytes(), &signature.to_bytes()].concat();
        format!("\u{2014} {} {}\n", self.name, BASE64_STANDARD.encode(blob))
    }
}

/// A witness verifier key parsed from its note form.
#[derive(Debug, Clone)]
pub struct WitnessKey {
    pub name: String,
    id: u32,
    key: ed25519_dalek::VerifyingKey,
}

impl WitnessKey {
    pub fn parse(vkey: &str) -> anyhow::Result<WitnessKey> {
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(encoded)) = (parts.next(), parts.next(), parts.next()) else {
            anyhow::bail!("witness key {vkey:?} is not <name>+<id>+<base64 key>");
        };
        let id = u32::from_str_radix(id, 16).with_context(|| format!("witness key {vkey:?}: the key id is not 8 hex digits"))?;
        let bytes = BASE64_STANDARD.decode(encoded).with_context(|| format!("witness key {vkey:?}: the key is not base64"))?;
        let (alg, public) = bytes.split_first().with_context(|| format!("witness key {vkey:?} is empty"))?;
        anyhow::ensure!(*alg == ALG_COSIGNATURE_V1, "witness key {vkey:?} is not a cosignature/v1 key (algorithm {alg:#04x}, expected 0x04)");
        let public: [u8; 32] = public.try_into().ok().with_context(|| format!("witness key {vkey:?}: an Ed25519 key is 32 bytes"))?;
        anyhow::ensure!(key_id(name, &public) == id, "witness key {vkey:?}: the key id does not match the name and key");
        let key = ed25519_dalek::VerifyingKey::from_bytes(&public).with_context(|| format!("witness key {vkey:?} is not an Ed25519 key"))?;
        Ok(WitnessKey { name: name.to_owned(), id, key })
    }
}

/// The witnesses among `keys` with a valid cosignature on `note` (a signed note: the checkpoint
/// text, a blank line, signature lines), each with the time it cosigned. Lines from other keys
/// (the log's own signature, unknown witnesses) are skipped; a line that claims a known key but
/// does not verify is an error, so that a forged cosignature is never silently uncounted.
pub fn verified_cosignatures(note: &str, keys: &[WitnessKey]) -> anyhow::Result<Vec<(String, u64)>> {
    let mut verified: Vec<(String, u64)> = Vec::new();
    for (name, time, _) in cosignature_lines(note, keys)? {
        if !verified.iter().any(|(seen, _)| *seen == name) {
            verified.push((name, time));
        }
    }
    Ok(verified)
}

/// Every signature line of `note` that is a valid cosignature by one of `keys`: (witness name,
/// time, the line without its newline). Errors as [`verified_cosignatures`] does.
pub fn cosignature_lines(note: &str, keys: &[WitnessKey]) -> anyhow::Result<Vec<(String, u64, String)>> {
    let (text, signatures) = note.split_once("\n\n").context("the note has no signature lines")?;
    let text = format!("{text}\n");
    let mut verified = Vec::new();
    for line in signatures.lines().filter(|l| !l.is_empty()) {
        let Some(rest) = line.strip_prefix("\u{2014} ") else { anyhow::bail!("note signature line {line:?} does not start with an em dash") };
        let Some((name, encoded)) = rest.split_once(' ') else { anyhow::bail!("note signature line {line:?} has no signature") };
        let Ok(blob) = BASE64_STANDARD.decode(encoded) else { continue };
        let Some(key) = keys.iter().find(|k| k.name == name && blob.len() >= 4 && blob[..4] == k.id.to_be_bytes()) else { continue };
        anyhow::ensure!(blob.len() == 4 + 8 + 64, "the cosignature of witness {name} is {} bytes, not 76", blob.len());
        let time = u64::from_be_bytes(blob[4..12].try_into().expect("8 bytes"));
        let signature = ed25519_dalek::Signature::from_bytes(blob[12..].try_into().expect("64 bytes"));
        key.key.verify(&signed_message(&text, time), &signature).map_err(|_| anyhow::anyhow!("the cosignature of witness {name} does not verify"))?;
        verified.push((name.to_owned(), time, line.to_owned()));
    }
    Ok(verified)
}

fn signed_message(checkpoint: &str, time: u64) -> Vec<u8> {
    format!("cosignature/v1\ntime {time}\n{checkpoint}").into_bytes()
}

fn key_id(name: &str, public: &[u8; 32]) -> u32 {
    let digest = Sha256::digest([name.as_bytes(), b"\n", &[ALG_COSIGNATURE_V1], public].concat());
    u32::from_be_bytes(digest[..4].try_into().expect("a SHA-256 digest has 4 bytes"))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || c == '+')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::CheckpointSigner;

    fn signed_checkpoint() -> String {
        let dir = std::env::temp_dir().join(format!("tiergate-cosign-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let note = CheckpointSigner::load_or_create(&dir.join("key"), "example.com/ledger").unwrap().sign(7, tlog_tiles::Hash([3; 32])).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        note
    }

    fn add(note: &str, line: &str) -> String {
        format!("{note}{line}")
    }

    #[test]
    fn a_cosignature_verifies_with_the_witness_key_and_carries_its_time() {
        let note = signed_checkpoint();
        let text = format!("{}\n", note.split_once("\n\n").unwrap().0);
        let witness = CosigningKey::from_seed("witness.example", [1; 32]).unwrap();
        let key = WitnessKey::parse(&witness.verifier_key()).unwrap();

        let cosigned = add(&note, &witness.cosign(&text, 1_764_633_600));

        assert_eq!(verified_cosignatures(&cosigned, std::slice::from_ref(&key)).unwrap(), vec![("witness.example".to_owned(), 1_764_633_600)]);
        assert_eq!(verified_cosignatures(&note, &[key]).unwrap(), vec![], "the log's own signature is not a cosignature");
    }

    #[test]
    fn the_signed_message_and_key_id_are_laid_out_as_the_spec_says() {
        let witness = CosigningKey::from_seed("w", [2; 32]).unwrap();
        let public = witness.key.verifying_key().to_bytes();
        let line = witness.cosign("o\n7\nAw==\n", 42);

        let blob = BASE64_STANDARD.decode(line.trim_end().rsplit_once(' ').unwrap().1).unwrap();
        let id = Sha256::digest([b"w\n".as_slice(), &[0x04], &public].concat());
        assert_eq!(&blob[..4], &id[..4]);
        assert_eq!(&blob[4..12], &42u64.to_be_bytes());
        let signature = ed25519_dalek::Signature::from_bytes(blob[12..].try_into().unwrap());
        assert!(witness.key.verifying_key().verify(b"cosignature/v1\ntime 42\no\n7\nAw==\n", &signature).is_ok());
        assert!(witness.verifier_key().starts_with(&format!("w+{}+", hex::encode(&id[..4]))));
    }

    #[test]
    fn a_cosignature_over_another_checkpoint_or_time_is_refused_and_unknown_witnesses_are_skipped() {
        let note = signed_checkpoint();
        let witness = CosigningKey::from_seed("witness.example", [1; 32]).unwrap();
        let stranger = CosigningKey::from_seed("stranger.example", [9; 32]).unwrap();
        let key = WitnessKey::parse(&witness.verifier_key()).unwrap();
        let other_tree = witness.cosign("example.com/ledger\n8\nAwMD\n", 5);

        assert!(verified_cosignatures(&add(&note, &other_tree), std::slice::from_ref(&key)).is_err());
        let text = format!("{}\n", note.split_once("\n\n").unwrap().0);
        assert_eq!(verified_cosignatures(&add(&note, &stranger.cosign(&text, 5)), &[key]).unwrap(), vec![]);
        assert!(WitnessKey::parse(&witness.verifier_key().replace("witness.example", "other.example")).is_err(), "the key id binds the name");
        assert!(CosigningKey::from_seed("two words", [1; 32]).is_err());
    }

    #[test]
    fn a_stored_key_survives_a_restart_keeps_its_name_and_is_private() {
        let dir = std::env::temp_dir().join(format!("tiergate-witness-key-{}", uuid::Uuid::new_v4()));
        let path = dir.join("witness.key");

        let first = CosigningKey::load_or_create(&path, "witness.example/w1").unwrap();
        let again = CosigningKey::load_or_create(&path, "witness.example/w1").unwrap();

        assert_eq!(first.verifier_key(), again.verifier_key());
        assert!(CosigningKey::load_or_create(&path, "witness.example/w2").is_err(), "a key keeps its name");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
