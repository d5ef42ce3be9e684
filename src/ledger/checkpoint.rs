//! Signed checkpoints: the tree head in the C2SP checkpoint format, signed as a C2SP note (ed25519).

use std::{io::Write, path::Path};

use anyhow::Context;
use base64::{Engine as _, prelude::BASE64_STANDARD};
use signed_note::{Note, StandardSigner, StandardVerifier, VerifierList, key_id};
use tlog_tiles::{Checkpoint, Hash};

/// Algorithm byte of ed25519 keys in the signed-note key encoding.
const ALG_ED25519: u8 = 0x01;

/// The ledger's signing key and the note verifier key auditors use (`<name>+<id>+<base64>`).
pub struct CheckpointSigner {
    signer: StandardSigner,
    pub origin: String,
    pub verifier_key: String,
    /// Public keys of earlier (rotated-out) signing keys, so old checkpoints stay verifiable.
    pub retired_keys: Vec<String>,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner").field("verifier_key", &self.verifier_key).finish()
    }
}

impl CheckpointSigner {
    /// Loads the key from `key_file`, or creates it (owner-only permissions) on first start.
    /// `origin` names the log in every checkpoint and the key.
    pub fn load_or_create(key_file: &Path, origin: &str) -> anyhow::Result<CheckpointSigner> {
        let skey = if key_file.is_file() {
            std::fs::read_to_string(key_file).with_context(|| format!("reading ledger signing key {}", key_file.display()))?.trim().to_owned()
        } else {
            let skey = new_private_key(origin)?;
            write_private(key_file, &skey)?;
            tracing::info!(path = %key_file.display(), "created the ledger signing key");
            skey
        };
        let signer = StandardSigner::new(&skey).map_err(|e| anyhow::anyhow!("ledger signing key is malformed: {e}"))?;
        let verifier_key = verifier_key_of(&skey)?;
        let name = skey.split('+').nth(2).unwrap_or_default().to_owned();
        let retired_keys = match std::fs::read_to_string(retired_file(key_file)) {
            Ok(text) => text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect(),
            Err(_) => Vec::new(),
        };
        Ok(CheckpointSigner { signer, origin: name, verifier_key, retired_keys })
    }

    /// Every key a checkpoint of this ledger may be signed with: current first, then retired,
    /// one per line (the form `verify_checkpoint` and `tiergate ledger verify --key` accept).
    pub fn verifier_keys(&self) -> String {
        std::iter::once(self.verifier_key.as_str()).chain(self.retired_keys.iter().map(String::as_str)).collect::<Vec<_>>().join("\n")
    }

    /// Replaces the signing key: the old public key is kept in `<key file>.retired` (so its
    /// checkpoints still verify), the old private key is deleted, a new one is created.
    /// Run it while the gateway is stopped; it signs with the key it loaded at start-up.
    pub fn rotate(key_file: &Path, origin: &str) -> anyhow::Result<CheckpointSigner> {
        let old = CheckpointSigner::load_or_create(key_file, origin)?;
        let mut retired =
            std::fs::OpenOptions::new().create(true).append(true).open(retired_file(key_file)).context("opening the retired-keys file")?;
        writeln!(retired, "{}", old.verifier_key).context("recording the retired public key")?;
        retired.sync_all().context("syncing the retired-keys file")?;
        std::fs::remove_file(key_file).context("removing the old private key")?;
        CheckpointSigner::load_or_create(key_file, &old.origin)
    }

    /// A signed note whose text is the C2SP checkpoint of a tree of `size` with root `root`.
    pub fn sign(&self, size: u64, root: Hash) -> anyhow::Result<String> {
        let checkpoint =
            Checkpoint::new(&self.origin, size, root, "").map_err(|_| anyhow::anyhow!("checkpoint for origin {:?} is malformed", self.origin))?;
        let mut note = Note::new(&checkpoint.to_bytes(), &[]).map_err(|e| anyhow::anyhow!("building note: {e}"))?;
        note.add_sigs(&[&self.signer]).map_err(|e| anyhow::anyhow!("signing checkpoint: {e}"))?;
        String::from_utf8(note.to_bytes()).context("signed note is not UTF-8")
    }
}

/// Verifies a signed checkpoint against `verifier_keys` (one key per line: the current key
/// and any retired ones) and returns its size and root hash.
pub fn verify_checkpoint(signed: &str, verifier_keys: &str) -> anyhow::Result<(u64, Hash)> {
    let mut verifiers: Vec<Box<dyn signed_note::Verifier>> = Vec::new();
    for key in verifier_keys.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let verifier = StandardVerifier::new(key).map_err(|e| anyhow::anyhow!("public key {key:?} is malformed: {e}"))?;
        verifiers.push(Box::new(verifier));
    }
    anyhow::ensure!(!verifiers.is_empty(), "no public key given");
    let note = Note::from_bytes(signed.as_bytes()).map_err(|e| anyhow::anyhow!("checkpoint is not a signed note: {e}"))?;
    note.verify(&VerifierList::new(verifiers)).map_err(|e| anyhow::anyhow!("checkpoint signature does not verify with this key: {e}"))?;
    let checkpoint = Checkpoint::from_bytes(note.text()).map_err(|_| anyhow::anyhow!("note text is not a C2SP checkpoint"))?;
    Ok((checkpoint.size(), *checkpoint.hash()))
}

/// `PRIVATE+KEY+<name>+<id>+<base64(alg ‖ seed)>`, the signed-note private key encoding.
fn new_private_key(name: &str) -> anyhow::Result<String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness for the signing key: {e}"))?;
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    let public_encoded = [&[ALG_ED25519][..], &public[..]].concat();
    let private_encoded = [&[ALG_ED25519][..], &seed[..]].concat();
    Ok(format!("PRIVATE+KEY+{name}+{:08x}+{}", key_id(name, &public_encoded), BASE64_STANDARD.encode(private_encoded)))
}

fn verifier_key_of(skey: &str) -> anyhow::Result<String> {
    // The base64 part may itself contain '+'.
    let parts: Vec<&str> = skey.splitn(5, '+').collect();
    anyhow::ensure!(parts.len() == 5, "ledger signing key is malformed");
    let private = BASE64_STANDARD.decode(parts[4]).context("ledger signing key is not base64")?;
    let seed: [u8; 32] = private.get(1..).and_then(|s| s.try_into().ok()).context("ledger signing key has the wrong length")?;
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    let public_encoded = [&[ALG_ED25519][..], &public[..]].concat();
    Ok(format!("{}+{}+{}", parts[2], parts[3], BASE64_STANDARD.encode(public_encoded)))
}

fn retired_file(key_file: &Path) -> std::path::PathBuf {
    let mut name = key_file.as_os_str().to_owned();
    name.push(".retired");
    std::path::PathBuf::from(name)
}

pub(super) fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes()).context("writing the signing key")?;
    file.sync_all().context("syncing the signing key")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> CheckpointSigner {
        let dir = std::env::temp_dir().join(format!("tiergate-key-{}", uuid::Uuid::new_v4()));
        CheckpointSigner::load_or_create(&dir.join("ledger.key"), "tiergate.example/ledger").unwrap()
    }

    #[test]
    fn a_signed_checkpoint_verifies_with_the_public_key_only() {
        let signer = signer();
        let root = Hash([7u8; 32]);

        let note = signer.sign(42, root).unwrap();

        assert!(note.starts_with("tiergate.example/ledger\n42\n"), "{note}");
        assert_eq!(verify_checkpoint(&note, &signer.verifier_key).unwrap(), (42, root));
    }

    #[test]
    fn a_checkpoint_does_not_verify_with_another_key_or_after_editing() {
        let signer = signer();
        let other = self::signer();
        let note = signer.sign(42, Hash([7u8; 32])).unwrap();

        assert!(verify_checkpoint(&note, &other.verifier_key).is_err());
        assert!(verify_checkpoint(&note.replacen("\n42\n", "\n43\n", 1), &signer.verifier_key).is_err());
    }

    #[test]
    fn after_rotation_old_and_new_checkpoints_verify_and_the_old_private_key_is_gone() {
        let dir = std::env::temp_dir().join(format!("tiergate-key-{}", uuid::Uuid::new_v4()));
        let path = dir.join("ledger.key");
        let old = CheckpointSigner::load_or_create(&path, "tiergate/ledger").unwrap();
        let old_note = old.sign(1, Hash([1u8; 32])).unwrap();

        let new = CheckpointSigner::rotate(&path, "tiergate/ledger").unwrap();
        let new_note = new.sign(2, Hash([2u8; 32])).unwrap();

        assert_ne!(new.verifier_key, old.verifier_key);
        assert_eq!(new.retired_keys, vec![old.verifier_key.clone()]);
        assert_eq!(verify_checkpoint(&old_note, &new.verifier_keys()).unwrap().0, 1);
        assert_eq!(verify_checkpoint(&new_note, &new.verifier_keys()).unwrap().0, 2);
        assert!(verify_checkpoint(&new_note, &old.verifier_key).is_err());
        let reloaded = CheckpointSigner::load_or_create(&path, "tiergate/ledger").unwrap();
        assert_eq!(reloaded.verifier_key, new.verifier_key, "the old private key is not used again");
    }

    #[test]
    fn the_key_survives_a_restart_and_is_private_to_its_owner() {
        let dir = std::env::temp_dir().join(format!("tiergate-key-{}", uuid::Uuid::new_v4()));
        let path = dir.join("ledger.key");
        let first = CheckpointSigner::load_or_create(&path, "tiergate/ledger").unwrap();

        let second = CheckpointSigner::load_or_create(&path, "tiergate/ledger").unwrap();

        assert_eq!(first.verifier_key, second.verifier_key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
