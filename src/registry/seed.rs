//! Loads the shipped cards and policy bundles into the registry on start-up, idempotently.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use serde_json::Value;

use super::{ArtifactKind, ArtifactRef, CardKind, Registry, ValidatedCard, parse_card};
use crate::policy::{BundleSource, CompiledBundle, TestOutcome};

/// Author recorded for versions that come from the repository's shipped files. They were
/// reviewed where the repository is reviewed, so they are stored already approved.
pub const SHIPPED_AUTHOR: &str = "tiergate-shipped";

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeedReport {
    pub created: Vec<String>,
    pub unchanged: Vec<String>,
}

/// Stores every shipped bundle, model card and system card (in that order, so references
/// resolve). Content already stored (same digest) creates nothing; a changed file becomes a new
/// version, and becomes active unless someone activated a non-shipped version meanwhile.
pub async fn seed_shipped(registry: &Registry, cards_dirs: &[PathBuf], policies_dir: &Path, now: &str) -> anyhow::Result<SeedReport> {
    let mut report = SeedReport::default();
    for dir in sorted_entries(policies_dir)?.into_iter().filter(|p| p.is_dir()) {
        let source = BundleSource::from_dir(&dir)?;
        check_bundle_tests(&source)?;
        let document = source.to_document();
        let original = serde_json::to_string_pretty(&document).context("encoding bundle")?;
        seed_one(registry, ArtifactKind::PolicyBundle, &source.id, &original, &document, now, &mut report).await?;
    }
    let mut cards = read_cards(cards_dirs)?;
    // Model cards, then confidence models, then system cards: references must already exist.
    cards.sort_by_key(|(_, _, card)| match card.kind {
        CardKind::Model => 0,
        CardKind::ConfidenceModel => 1,
        CardKind::System => 2,
        CardKind::Experiment => 3,
    });
    for (path, text, card) in cards {
        let kind = match card.kind {
            CardKind::Model => ArtifactKind::ModelCard,
            CardKind::ConfidenceModel => ArtifactKind::ConfidenceModel,
            CardKind::System => {
                let missing = registry.missing_references(&card.document).await?;
                anyhow::ensure!(missing.is_empty(), "shipped card {}: {}", path.display(), missing.join("; "));
                let mismatches = registry.confidence_model_mismatches(&card.document).await?;
                anyhow::ensure!(mismatches.is_empty(), "shipped card {}: {}", path.display(), mismatches.join("; "));
                ArtifactKind::SystemCard
            }
            // An experiment touches live traffic: started by a person through the API, never
            // by a file found at start-up.
            CardKind::Experiment => anyhow::bail!("{}: experiments are not seeded; submit them to /v1/registry/experiments", path.display()),
        };
        seed_one(registry, kind, &card.id, &text, &card.document, now, &mut report).await?;
    }
    Ok(report)
}

/// Every card file (`.yaml`, `.yml`, `.json`) in `cards_dirs`, in order, parsed and checked
/// against its schema: (path, text, card). A card that does not validate is an error naming it.
pub fn read_cards(cards_dirs: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, String, ValidatedCard)>> {
    let mut cards = Vec::new();
    for dir in cards_dirs {
        for path in sorted_entries(dir)? {
            let is_card = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"));
            if !is_card || !path.is_file() {
                continue;
            }
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let card = parse_card(&text).with_context(|| format!("shipped card {}", path.display()))?;
            cards.push((path, text, card));
        }
    }
    Ok(cards)
}

async fn seed_one(
    registry: &Registry,
    kind: ArtifactKind,
    id: &str,
    original: &str,
    document: &Value,
    now: &str,
    report: &mut SeedReport,
) -> anyhow::Result<()> {
    let stored = registry.store_document(kind, id, original, document, SHIPPED_AUTHOR, super::APPROVED, now).await?;
    let label = format!("{} {}", kind.as_str(), stored.reference);
    if !stored.created {
        report.unchanged.push(label);
        return Ok(());
    }
    // Confidence models are cited by version, never active: approved is their serving state.
    let activate = kind != ArtifactKind::ConfidenceModel
        && match registry.active_version(kind, id).await? {
            None => true,
            Some(version) => {
                let current = registry.require(kind, &ArtifactRef { id: id.to_owned(), version }).await?;
                current.author == SHIPPED_AUTHOR
            }
        };
    if activate {
        registry.activate_shipped(kind, &stored.reference, now).await?;
    } else {
        tracing::warn!(artifact = %label, "shipped file changed, but a non-shipped version is active: not activating");
    }
    report.created.push(label);
    Ok(())
}

fn check_bundle_tests(source: &BundleSource) -> anyhow::Result<()> {
    let reference = ArtifactRef { id: source.id.clone(), version: 1 };
    let bundle = CompiledBundle::compile(source, reference, String::new(), Duration::from_secs(1))?;
    let failing: Vec<String> = bundle
        .run_tests(source)
        .into_iter()
        .filter(|t| t.outcome != TestOutcome::Pass)
        .map(|t| format!("{}: {} ({:?}{})", t.module, t.name, t.outcome, t.error.map(|e| format!(": {e}")).unwrap_or_default()))
        .collect();
    anyhow::ensure!(failing.is_empty(), "shipped policy bundle {} has failing tests: {}", source.id, failing.join(", "));
    Ok(())
}

fn sorted_entries(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading directory {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    paths.sort();
    Ok(paths)
}
