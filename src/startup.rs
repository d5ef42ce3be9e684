//! Builds the application: database, migrations, shipped artifacts, models, policies, HTTP server.

use std::{
    net::{SocketAddr, TcpListener},
    sync::Arc,
    time::Duration,
};

use actix_web::{App, HttpServer, dev::Server, middleware::from_fn, web};
use anyhow::Context;
use utoipa::OpenApi;
use utoipa_actix_web::AppExt;
use utoipa_swagger_ui::SwaggerUi;

use crate::{
    access::{Access, NewKey, Role},
    api::{self, ApiDoc, AppState, access::Requirements},
    config::Settings,
    ledger::{ANCHOR_FILE, Appended, CheckpointSigner, Contradiction, Ledger, Witnessing},
    metrics::Metrics,
    registry::{ArtifactKind, ArtifactRef, Registry, seed_shipped},
    routing::{DriftSettings, GuardLimits, LoaderSettings, Router, SystemLoader},
    store::Store,
    telemetry::request_id_middleware,
};

/// The ledger's private signing key, inside the data directory (owner-only permissions).
pub const LEDGER_KEY_FILE: &str = "ledger-signing.key";

pub struct Application {
    server: Server,
    address: SocketAddr,
    bootstrap_key: Option<String>,
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
                guard: GuardLimits {
                    concurrency: settings.tier_concurrency,
                    queue_depth: settings.tier_queue_depth,
                    breaker_failures: settings.breaker_failures,
                    breaker_open: Duration::from_secs(settings.breaker_open_s),
                },
                remote_timeout: Duration::from_millis(settings.remote_timeout_ms),
            },
        ));
        let (systems, refused) = loader.load_active().await?;
        let signer = CheckpointSigner::load_or_create(&settings.data_dir.join(LEDGER_KEY_FILE), &settings.ledger_origin)?;
        tracing::info!(public_key = %signer.verifier_key, "ledger checkpoints are signed with this key");
        let metrics = Arc::new(Metrics::new()?);
        let mut ledger = Ledger::new(store.clone(), signer).with_metrics(metrics.clone()).with_anchor_file(settings.data_dir.join(ANCHOR_FILE));
        if let Some(replica) = &settings.replica_id {
            ledger = ledger.with_replica(replica.clone());
        }
        tracing::info!(replica = %ledger.replica(), "replica name in the database");
        let witnessing = if settings.witnesses.is_empty() {
            None
        } else {
            let witnessing = Witnessing::new(
                &settings.witnesses,
                settings.witness_quorum,
                Duration::from_millis(settings.witness_timeout_ms),
                Duration::from_secs(settings.witness_retry_s.max(1)),
                Duration::from_secs(settings.max_uncosigned_s),
            )
            .context("settings: witnesses")?;
            let witnessing = Arc::new(witnessing.with_metrics(metrics.clone()));
            tracing::info!(witnesses = ?witnessing.names(), quorum = witnessing.quorum(), "published checkpoints are sent to witnesses");
            ledger = ledger.with_witnessing(witnessing.clone());
            Some(witnessing)
        };
        // A ledger that contradicts what it signed halts (and logs why): it serves its read-only
        // endpoints to auditors and nothing else (readyz says why) until an operator runs
        // `tiergate ledger recover`.
        ledger.check_integrity().await?;
        let ledger = Arc::new(ledger);
        // A ledger written before the overview's rollups existed is added up in the background
        // (about 50 µs an entry); the console's overview finishes it first if it comes sooner.
        let rollups = ledger.clone();
        tokio::spawn(async move {
            if let Err(error) = rollups.catch_up_rollups().await {
                tracing::warn!(error = format!("{error:#}"), "adding the ledger up for the console's overview failed; the overview retries");
            }
        });
        if let Some(witnessing) = witnessing {
            tokio::spawn(witnessing.run(Arc::downgrade(&ledger)));
        }
        if settings.checkpoint_interval_s > 0 {
            tokio::spawn(publish_checkpoints(ledger.clone(), Duration::from_secs(settings.checkpoint_interval_s)));
        }
        let drift = DriftSettings { window: settings.drift_window, psi_threshold: settings.drift_psi_threshold };
        let calibration = crate::confidence::monitor::CalibrationSettings {
            window: settings.calibration_window,
            min_labelled: settings.calibration_min_labelled,
            ece_threshold: settings.calibration_ece_threshold,
        };
        let router = Arc::new(Router::new(systems, ledger, settings.ledger_store_text, metrics, drift).with_calibration(calibration));
        for (version, reason) in refused {
            router.refuse(version, reason);
        }
        for shadow in store.system_shadows().await? {
            let policy = ArtifactRef { id: shadow.policy_id, version: shadow.policy_version };
            let compiled = loader.policy(&policy).await.with_context(|| format!("shadow policy {policy} of {}", shadow.system_id))?;
            router.set_shadow(&shadow.system_id, Some(compiled));
        }
        // A restarted replica resumes running experiments with their stored keys and shares.
        sync_experiments(&router, &store, &loader).await?;
        if settings.registry_sync_interval_ms > 0 {
            let every = Duration::from_millis(settings.registry_sync_interval_ms);
            tokio::spawn(sync_with_registry(Arc::downgrade(&router), registry.clone(), store.clone(), loader.clone(), every));
        }
        if settings.experiment_guardrail_interval_ms > 0 {
            let every = Duration::from_millis(settings.experiment_guardrail_interval_ms);
            tokio::spawn(crate::experiment::guard::watch(Arc::downgrade(&router), registry.clone(), store.clone(), every));
        }
        let access = Arc::new(Access::new(store.clone(), settings.rate_limit_per_minute));
        let bootstrap_key = bootstrap_admin(&access, settings.bootstrap_admin_key.as_deref()).await?;
        let document = api::openapi_document();
        let requirements = Arc::new(Requirements::from_openapi(&document)?);
        let console = crate::console::ConsoleConfig {
            session_idle: Duration::from_secs(settings.console_session_idle_s),
            session_max: Duration::from_secs(settings.console_session_max_s),
        };
        let state = web::Data::new(AppState { router, store, registry, loader, access, requirements, console });

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
                // The completed document (api::openapi_document), not the bare generated one.
                .openapi_service(|_generated| SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", document.clone()))
                .into_app()
                // Not in the OpenAPI document: HTML pages, with the API's role rules.
                .configure(crate::console::routes)
                .default_service(web::to(api::not_found))
                // Outermost last: the request id exists before authorization logs or refuses.
                .wrap(from_fn(api::access::authorize))
                .wrap(from_fn(api::metrics::count_errors))
                .wrap(from_fn(request_id_middleware))
        })
        .listen(listener)
        .context("starting the HTTP server")?
        .run();
        Ok(Application { server, address, bootstrap_key })
    }

    /// The admin key created on this start because none existed; to be shown once.
    pub fn bootstrap_key(&self) -> Option<&str> {
        self.bootstrap_key.as_deref()
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// Makes sure an admin can get in: installs the supplied bootstrap key, or, when the database
/// has no key at all, creates one and returns it (to be printed once, never logged).
pub async fn bootstrap_admin(access: &Access, supplied: Option<&str>) -> anyhow::Result<Option<String>> {
    let admin = NewKey {
        subject: "admin".into(),
        roles: vec![Role::Admin],
        scopes: None,
        expires_at: None,
        rate_limit_per_minute: None,
        daily_token_budget: None,
    };
    if let Some(token) = supplied {
        let key = access.adopt(token, &admin, "bootstrap", &api::now()).await?;
        tracing::info!(key_id = %key.key_id, "bootstrap admin key installed");
        return Ok(None);
    }
    if access.has_keys().await? {
        return Ok(None);
    }
    let (key, token) = access.issue(&admin, "bootstrap", &api::now()).await?;
    tracing::info!(key_id = %key.key_id, "no API key existed: created the first admin key");
    Ok(Some(token))
}

/// Keeps this replica serving what the registry says is active: an activation, rollback or
/// shadow change made through another replica (or this one) is picked up within one interval.
/// Runs until the router is gone.
async fn sync_with_registry(router: std::sync::Weak<Router>, registry: Registry, store: Store, loader: Arc<SystemLoader>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(router) = router.upgrade() else { return };
        if let Err(error) = sync_once(&router, &registry, &store, &loader).await {
            tracing::warn!(error = ?error, "syncing with the registry failed; retrying at the next tick");
        }
    }
}

async fn sync_once(router: &Router, registry: &Registry, store: &Store, loader: &SystemLoader) -> anyhow::Result<()> {
    for version in registry.active(ArtifactKind::SystemCard).await? {
        if router.serving(&version.reference.id).as_ref() != Some(&version.reference) && !router.is_refused(&version.reference) {
            match loader.load(&version).await {
                Ok(route) => router.install(route),
                Err(error) => {
                    tracing::warn!(system = %version.reference, "active system cannot be loaded; keeping the one serving, if any");
                    router.refuse(version.reference.clone(), format!("{error:#}"));
                }
            }
        }
    }
    let shadows = store.system_shadows().await?;
    for system in router.system_ids() {
        let wanted = shadows.iter().find(|s| s.system_id == system).map(|s| ArtifactRef { id: s.policy_id.clone(), version: s.policy_version });
        let current = router.shadow(&system).map(|bundle| bundle.reference.clone());
        if wanted != current {
            let bundle = match &wanted {
                Some(policy) => Some(loader.policy(policy).await?),
                None => None,
            };
            router.set_shadow(&system, bundle);
        }
    }
    sync_experiments(router, store, loader).await
}

/// Serves exactly the experiments the database says are running, at their current shares.
async fn sync_experiments(router: &Router, store: &Store, loader: &SystemLoader) -> anyhow::Result<()> {
    let running: Vec<_> = store.experiment_runs().await?.into_iter().filter(|run| run.state == crate::store::EXPERIMENT_RUNNING).collect();
    for (system, current) in router.experiments() {
        let still = running
            .iter()
            .any(|run| run.system_id == system && run.experiment_id == current.reference.id && run.experiment_version == current.reference.version);
        if !still {
            tracing::info!(system, experiment = %current.reference, "experiment ended: all traffic to the active version");
            router.set_experiment(&system, None);
        }
    }
    for run in running {
        let current = router.experiment(&run.system_id);
        let same = current.is_some_and(|c| {
            c.reference.id == run.experiment_id && c.reference.version == run.experiment_version && i64::from(c.treatment_ppm) == run.treatment_ppm
        });
        if !same {
            match loader.load_experiment(&run).await {
                Ok(experiment) => router.set_experiment(&run.system_id, Some(Arc::new(experiment))),
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), experiment = %run.experiment_id, "a running experiment cannot be served; its system serves control")
                }
            }
        }
    }
    Ok(())
}

/// `tiergate ledger recover`: re-anchors a halted ledger on the tree as it is now, recording
/// the incident in it (see `Ledger::recover`). Run it with the gateway stopped, after looking
/// at what `/readyz` or `GET /v1/ledger/verify` named; `Err` says why nothing was done.
pub async fn recover_ledger(settings: &Settings, actor: &str, reason: &str) -> anyhow::Result<Result<(Appended, Contradiction), String>> {
    let key_file = settings.data_dir.join(LEDGER_KEY_FILE);
    anyhow::ensure!(key_file.is_file(), "no ledger signing key at {}: is this the gateway's data directory?", key_file.display());
    let store = Store::connect(&settings.effective_database_url()).await?;
    store.migrate().await?;
    let signer = CheckpointSigner::load_or_create(&key_file, &settings.ledger_origin)?;
    let ledger = Ledger::new(store, signer).with_anchor_file(settings.data_dir.join(ANCHOR_FILE));
    ledger.recover(actor, reason).await
}

/// `tiergate experiments report`: an experiment's latest run's report, computed from the
/// deployment's ledger exactly as `GET /v1/experiments/{id}/report` computes it.
pub async fn experiment_report(settings: &Settings, id: &str) -> anyhow::Result<crate::experiment::report::ExperimentReport> {
    let key_file = settings.data_dir.join(LEDGER_KEY_FILE);
    anyhow::ensure!(key_file.is_file(), "no ledger signing key at {}: is this the gateway's data directory?", key_file.display());
    let store = Store::connect(&settings.effective_database_url()).await?;
    store.migrate().await?;
    let run = store.latest_experiment_run(id).await?.with_context(|| format!("experiment {id:?} has never been started"))?;
    let registry = Registry::new(store.clone());
    let ledger = Ledger::new(store, CheckpointSigner::load_or_create(&key_file, &settings.ledger_origin)?);
    Ok(crate::experiment::report::of_run(&registry, &ledger, &run).await?.1)
}

/// Signs and publishes a checkpoint on a schedule (the first at start-up), for as long as the
/// ledger is in use, while this replica holds the checkpoint lease. The lease lasts three
/// intervals, so if the leader dies another replica signs within about three intervals. A
/// failure is logged and retried at the next tick.
async fn publish_checkpoints(ledger: Arc<Ledger>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    let mut leading = false;
    loop {
        ticks.tick().await;
        if Arc::strong_count(&ledger) == 1 {
            return; // the application is gone
        }
        match ledger.publish_checkpoint_if_leader(every * 3).await {
            Ok(now_leading) if now_leading != leading => {
                leading = now_leading;
                tracing::info!(replica = %ledger.replica(), leading, "checkpoint signing leadership changed");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(error = ?error, "publishing a ledger checkpoint failed"),
        }
    }
}
