//! The registry of model cards, system cards and policy bundles: immutable versions, digests, aliases.

mod cards;
mod diff;
mod experiments;
mod export;
mod lifecycle;
mod reference;
mod seed;

pub use cards::{
    CardError, CardKind, Cost, Decoding, DerivedWeights, ModelCard, PypiFile, Runtime, SchemaViolation, SystemCard, TierSpec, ValidatedCard, Weights,
    WeightsSource, parse_card,
};
pub use diff::{Change, diff};
pub use experiments::StartedExperiment;
pub use export::{CYCLONEDX_SPEC_VERSION, cyclonedx, markdown};
pub use lifecycle::{ACTIVE, APPROVED, Actor, DRAFT, GovernanceRecord, LifecycleError, RETIRED, Submission};
pub use reference::{ArtifactKind, ArtifactRef, validate_slug};
pub use seed::{SHIPPED_AUTHOR, SeedReport, read_cards, seed_shipped};

use anyhow::Context;
use serde_json::Value;

use crate::{
    canonical::{sha256_digest, to_canonical_bytes},
    store::{AliasMove, NewArtifactVersion, Store},
};

/// One stored version, decoded.
#[derive(Debug, Clone)]
pub struct ArtifactVersion {
    pub kind: ArtifactKind,
    pub reference: ArtifactRef,
    pub digest: String,
    pub document: Value,
    pub author: String,
    pub status: String,
}

/// The result of storing a document: its version, and whether it was new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub reference: ArtifactRef,
    pub digest: String,
    pub created: bool,
}

#[derive(Debug, Clone)]
pub struct Registry {
    store: Store,
}

impl Registry {
    pub fn new(store: Store) -> Registry {
        Registry { store }
    }

    /// Stores `document` as the next version of `id`, unless a version with identical content
    /// (same digest) exists: then that version is returned and nothing is written.
    #[expect(clippy::too_many_arguments, reason = "the columns of one artifact version, each named at the call")]
    pub async fn store_document(
        &self,
        kind: ArtifactKind,
        id: &str,
        original: &str,
        document: &Value,
        author: &str,
        status: &str,
        now: &str,
    ) -> anyhow::Result<Stored> {
        let (canonical, digest, identical) = self.identical_version(kind, id, document).await?;
        if let Some(reference) = identical {
            return Ok(Stored { reference, digest, created: false });
        }
        let approved = status == "approved" || status == "active";
        let version = self
            .store
            .insert_artifact_version(&NewArtifactVersion {
                kind: kind.as_str().to_owned(),
                id: id.to_owned(),
                original: original.to_owned(),
                // Canonical bytes are JSON text, hence valid UTF-8.
                canonical: String::from_utf8_lossy(&canonical).into_owned(),
                digest: digest.clone(),
                author: author.to_owned(),
                created_at: now.to_owned(),
                status: status.to_owned(),
                approved_by: approved.then(|| author.to_owned()),
                approved_at: approved.then(|| now.to_owned()),
            })
            .await?;
        Ok(Stored { reference: ArtifactRef { id: id.to_owned(), version }, digest, created: true })
    }

    /// `document`'s canonical bytes and digest, and the version of `id` that already has that
    /// digest, if any: storing the same content twice returns the first version.
    pub(crate) async fn identical_version(
        &self,
        kind: ArtifactKind,
        id: &str,
        document: &Value,
    ) -> anyhow::Result<(Vec<u8>, String, Option<ArtifactRef>)> {
        let canonical = to_canonical_bytes(document);
        let digest = sha256_digest(&canonical);
        let existing = self.store.artifact_version_by_digest(kind.as_str(), id, &digest).await?;
        let reference = existing.map(|row| ArtifactRef { id: id.to_owned(), version: row.version });
        Ok((canonical, digest, reference))
    }

    pub async fn get(&self, kind: ArtifactKind, reference: &ArtifactRef) -> anyhow::Result<Option<ArtifactVersion>> {
        let Some(row) = self.store.artifact_version(kind.as_str(), &reference.id, reference.version).await? else {
            return Ok(None);
        };
        let document: Value = serde_json::from_str(&row.canonical).with_context(|| format!("decoding stored {} {reference}", kind.as_str()))?;
        Ok(Some(ArtifactVersion { kind, reference: reference.clone(), digest: row.digest, document, author: row.author, status: row.status }))
    }

    /// Like [`Registry::get`], but a missing version is an error naming it.
    pub async fn require(&self, kind: ArtifactKind, reference: &ArtifactRef) -> anyhow::Result<ArtifactVersion> {
        self.get(kind, reference).await?.with_context(|| format!("{} {reference} does not exist in the registry", kind.as_str()))
    }

    pub async fn active_version(&self, kind: ArtifactKind, id: &str) -> anyhow::Result<Option<i64>> {
        self.store.artifact_alias(kind.as_str(), id, "active").await
    }

    /// Makes a shipped version active at start-up (the files were reviewed where the
    /// repository is reviewed). The move is kept in the alias history, so a later rollback
    /// can return to it.
    pub async fn activate_shipped(&self, kind: ArtifactKind, reference: &ArtifactRef, now: &str) -> anyhow::Result<()> {
        let mut tx = self.store.begin_write().await?;
        let previous = Store::artifact_alias_with(&mut *tx, kind.as_str(), &reference.id, "active").await?;
        if let Some(previous) = previous {
            Store::set_artifact_status(&mut tx, kind.as_str(), &reference.id, previous, APPROVED, None).await?;
        }
        Store::set_artifact_status(&mut tx, kind.as_str(), &reference.id, reference.version, ACTIVE, None).await?;
        Store::move_artifact_alias(
            &mut tx,
            &AliasMove {
                kind: kind.as_str(),
                id: &reference.id,
                alias: "active",
                version: reference.version,
                previous,
                action: "seed",
                actor: SHIPPED_AUTHOR,
                now,
            },
        )
        .await?;
        tx.commit().await.context("committing activation")?;
        Ok(())
    }

    /// Every active version of `kind`, decoded.
    pub async fn active(&self, kind: ArtifactKind) -> anyhow::Result<Vec<ArtifactVersion>> {
        let mut versions = Vec::new();
        for (id, version) in self.store.artifact_aliases(kind.as_str(), "active").await? {
            versions.push(self.require(kind, &ArtifactRef { id, version }).await?);
        }
        Ok(versions)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}
