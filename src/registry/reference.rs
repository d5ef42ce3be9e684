//! `ArtifactKind` and `ArtifactRef` (`id@version`), the names by which cards point at each other.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArtifactKind {
    ModelCard,
    SystemCard,
    PolicyBundle,
    /// Evidence, not configuration: `tiergate calibrate` results, cited by policy data.
    CalibrationReport,
    /// A tier's signals → P(correct); cited by version from system cards.
    ConfidenceModel,
    /// A live A/B test or canary between two versions of one system.
    Experiment,
}

impl ArtifactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::ModelCard => "model_card",
            ArtifactKind::SystemCard => "system_card",
            ArtifactKind::PolicyBundle => "policy_bundle",
            ArtifactKind::CalibrationReport => "calibration_report",
            ArtifactKind::ConfidenceModel => "confidence_model",
            ArtifactKind::Experiment => "experiment",
        }
    }
}

/// A pinned reference such as `smollm2-135m-instruct@1`. Existing values are always valid:
/// construct them with [`ArtifactRef::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ArtifactRef {
    pub id: String,
    pub version: i64,
}

impl ArtifactRef {
    pub fn parse(text: &str) -> Result<ArtifactRef, String> {
        let (id, version) = text.split_once('@').ok_or_else(|| format!("{text:?} is not of the form <id>@<version>"))?;
        validate_slug(id)?;
        let version: i64 = version.parse().ok().filter(|v| *v >= 1).ok_or_else(|| format!("{text:?}: version must be a whole number from 1"))?;
        Ok(ArtifactRef { id: id.to_owned(), version })
    }
}

/// Slugs: lowercase ASCII letters, digits and `-`, starting with a letter, at most 64 characters.
pub fn validate_slug(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok { Ok(()) } else { Err(format!("{id:?} is not a valid id (lowercase letters, digits and '-', starting with a letter)")) }
}

impl fmt::Display for ArtifactRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.version)
    }
}

impl Serialize for ArtifactRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ArtifactRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ArtifactRef::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_reference_parses_and_prints_back() {
        let parsed = ArtifactRef::parse("smollm2-135m-instruct@3").unwrap();

        assert_eq!(parsed.id, "smollm2-135m-instruct");
        assert_eq!(parsed.version, 3);
        assert_eq!(parsed.to_string(), "smollm2-135m-instruct@3");
    }

    #[test]
    fn references_without_a_valid_version_or_slug_are_rejected() {
        assert!(ArtifactRef::parse("model").is_err());
        assert!(ArtifactRef::parse("model@0").is_err());
        assert!(ArtifactRef::parse("model@x").is_err());
        assert!(ArtifactRef::parse("Model@1").is_err());
    }
}
