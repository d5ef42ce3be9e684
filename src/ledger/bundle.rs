//! The auditor bundle: an export plus every card and policy version its entries cite, by digest.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::export::{ExportError, VerifiedExport, export_entries, verify_export};
use crate::canonical::{sha256_digest, to_canonical_bytes};

pub const BUNDLE_FORMAT: &str = "tiergate-audit-bundle/1";

/// Every artifact digest an entry cites: its system card, its policy bundle, each attempt's
/// model card, and the artifact a governance event is about.
pub fn cited_digests(entry: &Value) -> BTreeSet<String> {
    let mut digests = BTreeSet::new();
    for pointer in ["/system/digest", "/policy/digest", "/artifact/digest"] {
        if let Some(d) = entry.pointer(pointer).and_then(Value::as_str) {
            digests.insert(d.to_owned());
        }
    }
    if let Some(attempts) = entry.get("attempts").and_then(Value::as_array) {
        for attempt in attempts {
            // The model card, and the confidence model whose P(correct) the policy decided on.
            for pointer in ["/model/digest", "/confidence_model/digest"] {
                if let Some(d) = attempt.pointer(pointer).and_then(Value::as_str) {
                    digests.insert(d.to_owned());
                }
            }
        }
    }
    digests
}

pub(super) fn bundle_document(export: String, verifier_key: &str, artifacts: Vec<Value>) -> Value {
    json!({"format": BUNDLE_FORMAT, "public_key": verifier_key, "export": export, "artifacts": artifacts})
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BundleError {
    #[error("not an audit bundle: {0}")]
    Format(String),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("artifact {artifact} does not hash to its digest {digest} (it was altered)")]
    ArtifactDigest { artifact: String, digest: String },
    #[error("entry {index} cites {digest}, which the bundle does not contain")]
    MissingArtifact { index: u64, digest: String },
}

/// Verifies a bundle: the export (see [`verify_export`], including consistency with an
/// `earlier` checkpoint when given), that every artifact's canonical form hashes to its
/// digest, and that every digest an entry cites is present.
pub fn verify_bundle(bundle: &Value, verifier_key: &str, earlier: Option<&str>) -> Result<VerifiedExport, BundleError> {
    if bundle.get("format").and_then(Value::as_str) != Some(BUNDLE_FORMAT) {
        return Err(BundleError::Format(format!("format is not {BUNDLE_FORMAT:?}")));
    }
    let export = bundle.get("export").and_then(Value::as_str).ok_or_else(|| BundleError::Format("no export".into()))?;
    let verified = verify_export(export, verifier_key, earlier)?;
    let mut present = BTreeSet::new();
    for artifact in bundle.get("artifacts").and_then(Value::as_array).into_iter().flatten() {
        let label = format!(
            "{} {}@{}",
            artifact.get("kind").and_then(Value::as_str).unwrap_or("?"),
            artifact.get("id").and_then(Value::as_str).unwrap_or("?"),
            artifact.get("version").map(Value::to_string).unwrap_or_default()
        );
        let digest = artifact.get("digest").and_then(Value::as_str).unwrap_or_default().to_owned();
        let canonical = artifact.get("canonical").and_then(Value::as_str).unwrap_or_default();
        let parsed: Value =
            serde_json::from_str(canonical).map_err(|_| BundleError::ArtifactDigest { artifact: label.clone(), digest: digest.clone() })?;
        let bytes = to_canonical_bytes(&parsed);
        if bytes != canonical.as_bytes() || sha256_digest(&bytes) != digest {
            return Err(BundleError::ArtifactDigest { artifact: label, digest });
        }
        present.insert(digest);
    }
    // verify_export has already checked every line, so every entry is here.
    for (index, entry) in export_entries(export).enumerate() {
        if let Some(missing) = cited_digests(&entry).into_iter().find(|d| !present.contains(d)) {
            return Err(BundleError::MissingArtifact { index: index as u64, digest: missing });
        }
    }
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inference_entry_cites_its_system_policy_models_and_confidence_models() {
        let entry = json!({
            "system": {"digest": "sha256:s"},
            "policy": {"digest": "sha256:p"},
            "attempts": [
                {"model": {"digest": "sha256:m0"}, "confidence_model": {"digest": "sha256:c0"}},
                {"model": {"digest": "sha256:m1"}, "confidence_model": null},
            ],
        });
        let cited: Vec<String> = cited_digests(&entry).into_iter().collect();
        assert_eq!(cited, ["sha256:c0", "sha256:m0", "sha256:m1", "sha256:p", "sha256:s"]);
    }
}
