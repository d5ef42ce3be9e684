//! Ledger appends/s on a durable SQLite file (WAL, synchronous=FULL), one writer vs many
//! concurrent writers sharing group commits. Entry bodies are the size of a real two-attempt
//! inference entry (~3 KB of canonical JSON).
//!
//! cargo run --example ledger_append [-- --entries 4000 --writers 64]
//!
//! With `--postgres <url of an existing database>`, also on PostgreSQL (a fresh database per
//! run, dropped afterwards), with one replica and with two: each replica is its own
//! connection pool and `Ledger` (own group commit), as two `tiergate serve` processes would
//! be, sharing the writers between them. The SQLite figure of the same run is the baseline.

use std::{sync::Arc, time::Instant};

use serde_json::json;
use tiergate::{
    ledger::{CheckpointSigner, EntryDraft, Ledger},
    store::Store,
};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn draft(i: usize) -> EntryDraft {
    let attempt = json!({
        "tier": 0, "tier_name": "small",
        "model": {"id": "smollm2-135m-instruct", "version": 1, "digest": format!("sha256:{:064x}", i), "weights_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},
        "signals": {"mean_logprob": -0.31, "min_logprob": -0.9, "low_prob_share": 0.0, "completion_tokens": 48, "finish_reason": "length"},
        "tokens": {"prompt": 37, "completion": 48}, "latency_ms": 2333.1, "cost": 0.0, "error": null,
        "accept": {"input": {"request": {"caller": "anonymous", "stakes": "normal", "use_case": "general", "prompt_chars": 27},
                             "thresholds": {"min_mean_logprob": -0.35}, "attempt": {"tier": 0, "tiers_left": 1}},
                   "decision": {"action": "accept", "reasons": ["mean token logprob -0.31 is at or above the threshold -0.35"], "eval_us": 21}}
    });
    EntryDraft {
        entry_type: "inference",
        request_id: format!("bench-{i}"),
        system_id: Some("support-triage".into()),
        outcome: "served".into(),
        body: json!({"system": {"id": "support-triage", "version": 1, "digest": "sha256:00"}, "attempts": [attempt.clone(), attempt], "outcome": "served"}),
    }
}

fn arg_text(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// A fresh PostgreSQL database next to `admin_url`'s, dropped by `drop_database`.
async fn create_database(admin_url: &str) -> anyhow::Result<(String, String)> {
    let name = format!("tiergate_bench_{}", uuid::Uuid::new_v4().simple());
    let admin = Store::connect(admin_url).await?;
    // The name is generated here from a UUID.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(admin.pool()).await?;
    let (server, _) = admin_url.rsplit_once('/').ok_or_else(|| anyhow::anyhow!("--postgres needs a URL ending in /<database>"))?;
    Ok((name.clone(), format!("{server}/{name}")))
}

async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let admin = Store::connect(admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(admin.pool()).await?;
    Ok(())
}

/// Appends `entries` from `writers` concurrent tasks spread over `replicas` ledgers on the
/// database at `url` (a temporary SQLite file when `None`); entries per second.
async fn run(url: Option<&str>, entries: usize, writers: usize, replicas: usize) -> anyhow::Result<f64> {
    let dir = std::env::temp_dir().join(format!("tiergate-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let url = url.map_or_else(|| format!("sqlite://{}/ledger.db?mode=rwc", dir.display()), str::to_owned);
    Store::connect(&url).await?.migrate().await?;
    let signer_file = dir.join("key");
    let mut ledgers = Vec::new();
    for _ in 0..replicas {
        let signer = CheckpointSigner::load_or_create(&signer_file, "bench/ledger")?;
        ledgers.push(Arc::new(Ledger::new(Store::connect(&url).await?, signer)));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let ledger = ledgers[w % replicas].clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..entries).step_by(writers) {
                ledger.append(draft(i)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let rate = entries as f64 / started.elapsed().as_secs_f64();
    let (size, _) = ledgers[0].tree_head().await?;
    anyhow::ensure!(size as usize == entries, "ledger holds {size} entries, expected {entries}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rate)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let entries = arg("--entries", 4000);
    let writers = arg("--writers", 64);
    let single = run(None, entries / 8, 1, 1).await?;
    let concurrent = run(None, entries, writers, 1).await?;
    println!(
        "{{\"entries\": {entries}, \"writers\": {writers}, \"single_writer_per_s\": {single:.0}, \"concurrent_per_s\": {concurrent:.0}, \"ratio\": {:.1}}}",
        concurrent / single
    );
    if let Some(admin_url) = arg_text("--postgres") {
        for replicas in [1, 2] {
            let (name, url) = create_database(&admin_url).await?;
            let rate = run(Some(&url), entries, writers, replicas).await;
            drop_database(&admin_url, &name).await?;
            let rate = rate?;
            println!(
                "{{\"backend\": \"postgres\", \"replicas\": {replicas}, \"entries\": {entries}, \"writers\": {writers}, \"concurrent_per_s\": {rate:.0}, \"vs_sqlite\": {:.2}}}",
                rate / concurrent
            );
        }
    }
    Ok(())
}
