//! A policy bundle as authored: Rego modules by file name plus one JSON data document.

use std::{collections::BTreeMap, path::Path};

use anyhow::Context;
use serde_json::{Value, json};

use crate::registry::validate_slug;

#[derive(Debug, Clone, PartialEq)]
pub struct BundleSource {
    pub id: String,
    /// File name → Rego source. `*_test.rego` modules hold the bundle's tests.
    pub modules: BTreeMap<String, String>,
    /// The data document (thresholds, lists); visible to the policy as `data`.
    pub data: Value,
}

impl BundleSource {
    /// Reads `dir/*.rego` and `dir/data.json`; the bundle id is the directory's name.
    pub fn from_dir(dir: &Path) -> anyhow::Result<BundleSource> {
        let id = dir
            .file_name()
            .and_then(|name| name.to_str())
            .with_context(|| format!("bundle directory {} has no usable name", dir.display()))?
            .to_owned();
        validate_slug(&id).map_err(anyhow::Error::msg)?;
        let mut modules = BTreeMap::new();
        let mut data = json!({});
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if name.ends_with(".rego") {
                let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                modules.insert(name, text);
            } else if name == "data.json" {
                let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                data = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            }
        }
        anyhow::ensure!(!modules.is_empty(), "bundle {} has no .rego modules", dir.display());
        Ok(BundleSource { id, modules, data })
    }

    /// The document stored in the registry (its canonical bytes give the bundle's digest).
    pub fn to_document(&self) -> Value {
        json!({"kind": "policy-bundle", "id": self.id, "modules": self.modules, "data": self.data})
    }

    /// Reads a submitted bundle document, naming the first thing wrong by its JSON path:
    /// `{"kind"?: "policy-bundle", "id": slug, "modules": {"<name>.rego": text, …}, "data"?: {…}}`.
    pub fn from_submission(document: &Value) -> Result<BundleSource, String> {
        let Some(object) = document.as_object() else {
            return Err("/: a policy bundle is a JSON object with id, modules and data".into());
        };
        if let Some(unknown) = object.keys().find(|k| !["kind", "id", "modules", "data"].contains(&k.as_str())) {
            return Err(format!("/{unknown}: unknown member (a bundle has kind, id, modules and data)"));
        }
        match object.get("kind") {
            None => {}
            Some(Value::String(kind)) if kind == "policy-bundle" => {}
            Some(other) => return Err(format!("/kind: {other} is not \"policy-bundle\"")),
        }
        let id = object.get("id").and_then(Value::as_str).ok_or("/id: missing (a slug such as \"my-policy\")")?;
        validate_slug(id).map_err(|e| format!("/id: {e}"))?;
        let Some(Value::Object(members)) = object.get("modules") else {
            return Err("/modules: missing; an object mapping file names (*.rego) to Rego text".into());
        };
        if members.is_empty() {
            return Err("/modules: no modules".into());
        }
        let mut modules = BTreeMap::new();
        for (name, text) in members {
            let valid_name = name.ends_with(".rego") && name.len() > 5 && !name.contains(['/', '\\']);
            if !valid_name {
                return Err(format!("/modules/{name}: module names are file names ending in .rego"));
            }
            let Some(text) = text.as_str() else {
                return Err(format!("/modules/{name}: must be Rego source text"));
            };
            modules.insert(name.clone(), text.to_owned());
        }
        let data = match object.get("data") {
            None => json!({}),
            Some(data @ Value::Object(_)) => data.clone(),
            Some(_) => return Err("/data: must be a JSON object".into()),
        };
        Ok(BundleSource { id: id.to_owned(), modules, data })
    }

    pub fn from_document(document: &Value) -> anyhow::Result<BundleSource> {
        let id = document.get("id").and_then(Value::as_str).context("bundle document has no id")?;
        let modules: BTreeMap<String, String> = serde_json::from_value(document.get("modules").cloned().context("bundle document has no modules")?)
            .context("bundle modules must map file names to Rego text")?;
        let data = document.get("data").cloned().unwrap_or_else(|| json!({}));
        Ok(BundleSource { id: id.to_owned(), modules, data })
    }
}
