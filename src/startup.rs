//! Builds the application: database, migrations, shipped artifacts, models, policies, HTTP server.

use std::{net::{SocketAddr, TcpListener}, sync::Arc, time::Duration};

use actix_web::{App, HttpServer, dev::Server, middleware::from_fn, web};
use anyhow::Context;
use utoipa::OpenApi;
use utoipa_actix_web::AppExt;
use utoipa_swagger_ui::SwaggerUi;

use crate::{
    api::{self, ApiDoc, AppState},
    config::Settings,
    ledger::{CheckpointSigner, Ledger},
    registry::{ArtifactRef, Registry, seed_shipped},
    routing::{LoaderSettings, Router, SystemLoader},
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
        let report = seed_shipped(&registry, &settings.cards_dirs, &settings.policies_dir, &api::now()).await?;
        tracing::info!(created = ?report.created, unchanged = report.unchanged.len(), "shipped artifacts loaded");

        let loader = Arc::new(SystemLoader::new(
            registry.clone(),
            LoaderSettings {
                model_cache_dir: settings.model_cache_dir.clone(),
                python: settings.python.clone(),
                policy_eval_timeout: Duration::from_millis(settings.policy_eval_timeout_ms),
            },
        ));
        let systems = loader.load_active().await?;
        let signer = CheckpointSigner::load_or_create(&settings.data_dir.join(LEDGER_KEY_FILE), &settings.ledger_origin)?;
        tracing::info!(public_key = %signer.verifier_key, "ledger checkpoints are signed with this key");
        let ledger = Arc::new(Ledger::new(store.clone(), signer));
        if settings.checkpoint_interval_s > 0 {
            tokio::spawn(publish_checkpoints(ledger.clone(), Duration::from_secs(settings.checkpoint_interval_s)));
        }
        let router = Arc::new(Router::new(systems, ledger, settings.ledger_store_text));
        for shadow in store.system_shadows().await? {
            let policy = ArtifactRef { id: shadow.policy_id, version: shadow.policy_version };
            let compiled = loader.policy(&policy).await.with_context(|| format!("shadow policy {policy} of {}", shadow.system_id))?;
            router.set_shadow(&shadow.system_id, Some(compiled));
        }
        let state = web::Data::new(AppState { router, store, registry, loader });

        let listener = TcpListener::bind(&settings.bind).with_context(|| format!("binding {}", settings.bind))?;
        let address = listener.local_addr().context("reading the bound address")?;
        let server = HttpServer::new(move || {
            App::new()
                .into_utoipa_app()
                .openapi(ApiDoc::openapi())
                .app_data(state.clone())
                .app_data(api::query_config())
                .app_data(api::path_config())
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
