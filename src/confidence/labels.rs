//! Labelled answers from the ledger: every answer people judged (feedback, review verdicts),
//! with the signals its tier recorded, to refit a tier's confidence model on real traffic.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::fit::Sample;
use crate::{
    canonical::{sha256_digest, to_canonical_bytes},
    inference::Signals,
    ledger::Ledger,
    registry::ArtifactRef,
    store::LedgerFilter,
};

/// Entries read per query while paging through the ledger.
const PAGE: i64 = 1000;

/// The labelled answers of one tier, and where they came from.
#[derive(Debug, Clone)]
pub struct LedgerLabels {
    pub samples: Vec<Sample>,
    /// `(answer's ledger index, correct)` per sample, in index order: what the training data
    /// digest is computed over, so an auditor can recompute it from the ledger.
    pub labels: Vec<(u64, bool)>,
    /// `sha256:` of the canonical JSON of `labels`.
    pub digest: String,
    /// Index range of the labelling entries read.
    pub first_label_index: Option<u64>,
    pub last_label_index: Option<u64>,
}

/// The latest label of every judged answer of `system`: answer's ledger index → (index of the
/// label, correct), from feedback entries and review verdicts (at or after `since`, RFC 3339,
/// when given), with the index range of the labels read.
pub struct LatestLabels {
    pub by_answer: BTreeMap<u64, (u64, bool)>,
    pub first_label_index: Option<u64>,
    pub last_label_index: Option<u64>,
}

pub async fn latest_labels(ledger: &Ledger, system: &str, since: Option<&str>) -> anyhow::Result<LatestLabels> {
    let mut latest: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
    let (mut first_label_index, mut last_label_index) = (None, None);
    for entry_type in ["feedback", "review"] {
        let mut from_index = None;
        loop {
            let filter = LedgerFilter {
                entry_type: Some(entry_type.into()),
                system_id: Some(system.into()),
                since: since.map(str::to_owned),
                from_index,
                limit: PAGE,
                ..Default::default()
            };
            let page = ledger.query(&filter).await?;
            for record in &page {
                let (Some(subject), Some(correct)) =
                    (record.entry.pointer("/subject/ledger_index").and_then(Value::as_u64), record.entry.get("correct").and_then(Value::as_bool))
                else {
                    continue;
                };
                first_label_index = Some(first_label_index.map_or(record.index, |f: u64| f.min(record.index)));
                last_label_index = Some(last_label_index.map_or(record.index, |l: u64| l.max(record.index)));
                // Feedback and verdicts are read type by type: keep the later label by index.
                latest
                    .entry(subject)
                    .and_modify(|(at, label)| {
                        if record.index > *at {
                            *at = record.index;
                            *label = correct;
                        }
                    })
                    .or_insert((record.index, correct));
            }
            match page.last() {
                Some(last) if page.len() as i64 == PAGE => from_index = Some(last.index as i64 + 1),
                _ => break,
            }
        }
    }
    Ok(LatestLabels { by_answer: latest, first_label_index, last_label_index })
}

/// Every answer of `system`'s tier `tier`, run by `model`, that has a feedback entry or a
/// review verdict (at or after `since`, RFC 3339, when given). The latest label of an answer
/// wins. Answers whose attempt recorded no signals are skipped.
pub async fn labelled_answers(ledger: &Ledger, system: &str, tier: usize, model: &ArtifactRef, since: Option<&str>) -> anyhow::Result<LedgerLabels> {
    let LatestLabels { by_answer: latest, first_label_index, last_label_index } = latest_labels(ledger, system, since).await?;
    let mut samples = Vec::new();
    let mut labels = Vec::new();
    for (index, (_, correct)) in latest {
        let Some(answer) = ledger.entry(index).await? else { continue };
        let Some(attempt) = judged_attempt(&answer) else { continue };
        let runs_model = attempt.pointer("/model/id").and_then(Value::as_str) == Some(model.id.as_str())
            && attempt.pointer("/model/version").and_then(Value::as_i64) == Some(model.version);
        if attempt.get("tier").and_then(Value::as_u64) != Some(tier as u64) || !runs_model {
            continue;
        }
        let Some(signals) = attempt.get("signals").and_then(|s| serde_json::from_value::<Signals>(s.clone()).ok()) else { continue };
        samples.push(Sample { signals, correct });
        labels.push((index, correct));
    }
    let digest = sha256_digest(&to_canonical_bytes(&json!(labels)));
    Ok(LedgerLabels { samples, labels, digest, first_label_index, last_label_index })
}

/// The attempt people judged: the served one, else (a held answer) the last.
pub fn judged_attempt(entry: &Value) -> Option<&Value> {
    let attempts = entry.get("attempts").and_then(Value::as_array)?;
    match entry.get("served_tier").and_then(Value::as_u64) {
        Some(tier) => attempts.iter().rev().find(|a| a.get("tier").and_then(Value::as_u64) == Some(tier)),
        None => attempts.last(),
    }
}
