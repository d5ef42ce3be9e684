//! Labelled workloads: JSON Lines, one request per line.
//!
//! `{"id": "...", "prompt": "..."}` or `{"id": "...", "messages": [<chat messages>]}`, plus at
//! most one expectation: `"expected": "<label>"` (the answer must contain the label as a word)
//! or `"expected_any": ["...", ...]` (the answer must contain one of them). Matching ignores case.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadItem {
    pub id: String,
    /// A free-form grouping (for example `intent` or `fact`); reported, not interpreted.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<Value>>,
    #[serde(default)]
    pub expected: Option<String>,
    #[serde(default)]
    pub expected_any: Option<Vec<String>>,
}

impl WorkloadItem {
    pub fn messages(&self) -> Value {
        match (&self.messages, &self.prompt) {
            (Some(messages), _) => json!(messages),
            (None, Some(prompt)) => json!([{"role": "user", "content": prompt}]),
            (None, None) => json!([]),
        }
    }

    pub fn is_labelled(&self) -> bool {
        self.expected.is_some() || self.expected_any.is_some()
    }

    /// Whether `answer` meets the expectation; `None` for an unlabelled item.
    pub fn is_correct(&self, answer: &str) -> Option<bool> {
        let answer = answer.to_lowercase();
        if let Some(label) = &self.expected {
            let label = label.to_lowercase();
            let words = answer.split(|c: char| !c.is_alphanumeric() && c != '-' && c != '_');
            return Some(words.into_iter().any(|word| word == label));
        }
        self.expected_any.as_ref().map(|options| options.iter().any(|option| answer.contains(&option.to_lowercase())))
    }
}

/// Reads a workload; a bad line is an error naming its line number.
pub fn load_workload(path: &Path) -> anyhow::Result<Vec<WorkloadItem>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading workload {}", path.display()))?;
    let mut items = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: WorkloadItem =
            serde_json::from_str(line).with_context(|| format!("{} line {}: not a workload item", path.display(), number + 1))?;
        if item.prompt.is_none() && item.messages.is_none() {
            anyhow::bail!("{} line {}: item {:?} has neither prompt nor messages", path.display(), number + 1, item.id);
        }
        if item.expected.is_some() && item.expected_any.is_some() {
            anyhow::bail!("{} line {}: item {:?} has both expected and expected_any", path.display(), number + 1, item.id);
        }
        items.push(item);
    }
    anyhow::ensure!(!items.is_empty(), "workload {} holds no items", path.display());
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(expected: Option<&str>, expected_any: Option<&[&str]>) -> WorkloadItem {
        WorkloadItem {
            id: "x".into(),
            kind: None,
            prompt: Some("p".into()),
            messages: None,
            expected: expected.map(str::to_owned),
            expected_any: expected_any.map(|o| o.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn a_label_must_appear_as_a_whole_word() {
        let billing = item(Some("billing"), None);
        assert_eq!(billing.is_correct("Billing."), Some(true));
        assert_eq!(billing.is_correct("The category is billing"), Some(true));
        assert_eq!(billing.is_correct("rebilling"), Some(false));
        assert_eq!(billing.is_correct("shipping"), Some(false));
    }

    #[test]
    fn any_of_several_answers_counts_and_unlabelled_items_are_not_scored() {
        let seven = item(None, Some(&["7", "seven"]));
        assert_eq!(seven.is_correct("There are Seven days."), Some(true));
        assert_eq!(seven.is_correct("six"), Some(false));
        assert_eq!(item(None, None).is_correct("anything"), None);
    }

    #[test]
    fn the_shipped_workload_loads_and_every_item_is_labelled() {
        let items = load_workload(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/support-and-facts.jsonl")).unwrap();
        assert!(items.len() >= 200, "{}", items.len());
        assert!(items.iter().all(WorkloadItem::is_labelled));
        let mut ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), items.len(), "ids are unique");
    }

    #[test]
    fn the_arithmetic_workload_is_labelled_with_the_answer_of_each_problem() {
        let items = load_workload(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/arithmetic-word-problems.jsonl")).unwrap();
        assert_eq!(items.len(), 160);
        // Each label is the arithmetic of its problem: recompute the one-step ones.
        for item in items.iter().filter(|i| i.kind.as_deref() == Some("add")) {
            let numbers: Vec<i64> = item.prompt.as_deref().unwrap().split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
            assert_eq!(item.expected.as_deref(), Some((numbers[0] + numbers[1]).to_string().as_str()), "{}", item.id);
            assert_eq!(item.is_correct(&format!("The answer is {}.", numbers[0] + numbers[1])), Some(true));
        }
    }
}
