//! Structural difference between two versions' documents, as JSON Pointer paths.

use serde::Serialize;
use serde_json::Value;

/// One difference. `from` is absent for `added`, `to` for `removed`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Change {
    /// `added`, `removed` or `changed`.
    pub op: &'static str,
    /// JSON Pointer (RFC 6901) into the documents.
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub from: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub to: Option<Value>,
}

/// Every difference from `old` to `new`, in document order (object keys sorted). Objects are
/// compared key by key and arrays index by index; anything else that differs is `changed`.
pub fn diff(old: &Value, new: &Value) -> Vec<Change> {
    let mut changes = Vec::new();
    walk(old, new, &mut String::new(), &mut changes);
    changes
}

fn walk(old: &Value, new: &Value, path: &mut String, changes: &mut Vec<Change>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let len = path.len();
                path.push('/');
                path.push_str(&key.replace('~', "~0").replace('/', "~1"));
                step(a.get(key), b.get(key), path, changes);
                path.truncate(len);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for index in 0..a.len().max(b.len()) {
                let len = path.len();
                path.push_str(&format!("/{index}"));
                step(a.get(index), b.get(index), path, changes);
                path.truncate(len);
            }
        }
        _ if old != new => changes.push(Change { op: "changed", path: path.clone(), from: Some(old.clone()), to: Some(new.clone()) }),
        _ => {}
    }
}

fn step(old: Option<&Value>, new: Option<&Value>, path: &mut String, changes: &mut Vec<Change>) {
    match (old, new) {
        (Some(a), Some(b)) => walk(a, b, path, changes),
        (None, Some(b)) => changes.push(Change { op: "added", path: path.clone(), from: None, to: Some(b.clone()) }),
        (Some(a), None) => changes.push(Change { op: "removed", path: path.clone(), from: Some(a.clone()), to: None }),
        (None, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_every_added_removed_and_changed_path() {
        let old = json!({"a": 1, "b": {"c": [1, 2, 3]}, "gone": true, "x/y": "s"});
        let new = json!({"a": 2, "b": {"c": [1, 5]}, "new": null, "x/y": "s"});

        let changes = diff(&old, &new);

        let summary: Vec<(&str, &str)> = changes.iter().map(|c| (c.op, c.path.as_str())).collect();
        assert_eq!(summary, vec![("changed", "/a"), ("changed", "/b/c/1"), ("removed", "/b/c/2"), ("removed", "/gone"), ("added", "/new")]);
        assert_eq!(changes[0].from, Some(json!(1)));
        assert_eq!(changes[0].to, Some(json!(2)));
        assert!(diff(&old, &old).is_empty());
    }

    #[test]
    fn escapes_pointer_tokens() {
        let changes = diff(&json!({"a/b": 1, "m~n": 1}), &json!({"a/b": 2, "m~n": 2}));
        let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, vec!["/a~1b", "/m~0n"]);
    }
}
