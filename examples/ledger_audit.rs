//! Auditor-side speed: inclusion proofs on a large ledger and offline export verification.
//!
//! cargo run --example ledger_audit [-- --entries 1000000 --proofs 2000]
//!
//! Builds a durable SQLite ledger of `--entries` small entries (through the real append path,
//! 256 concurrent writers), times the integrity checks (the first signature, which checks every
//! entry against its leaf; the start-up check; a checkpoint after 1,000 more entries), a
//! witness's cosignature of that checkpoint (a `tiergate witness` on loopback: consistency
//! proof from the stored hashes, the HTTP exchange, the witness's checks and fsync), then
//! times `Ledger::prove` (read the tree size, root and audit path
//! from the stored hashes, read the entry, sign a checkpoint) for random indexes, and
//! `verify_export` (recompute every leaf and the root, check the signature) on the full export.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::json;
use tiergate::{
    config::WitnessSetting,
    ledger::{ANCHOR_FILE, CheckpointSigner, EntryDraft, Ledger, Witnessing, verify_export},
    store::Store,
    witness::Witness,
};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let entries = arg("--entries", 1_000_000);
    let proofs = arg("--proofs", 2000);
    let writers = 256u64;
    let dir = std::env::temp_dir().join(format!("tiergate-audit-{}", uuid::Uuid::new_v4()));
    let store = Store::connect(&format!("sqlite://{}/ledger.db?mode=rwc", dir.display())).await?;
    store.migrate().await?;
    let signer = CheckpointSigner::load_or_create(&dir.join("key"), "bench/ledger")?;
    let witness = Arc::new(Witness::open(&dir.join("witness"), "bench/witness", std::slice::from_ref(&signer.verifier_key))?);
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let witness_setting = WitnessSetting { url: format!("http://{}", listener.local_addr()?), key: witness.verifier_key() };
    tokio::spawn(tiergate::witness::server(witness, listener)?);
    let witnessing =
        Arc::new(Witnessing::new(&[witness_setting], None, Duration::from_secs(5), Duration::from_secs(3600), Duration::from_secs(600))?);
    let ledger = Arc::new(Ledger::new(store, signer).with_anchor_file(dir.join(ANCHOR_FILE)).with_witnessing(witnessing.clone()));

    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                for i in (w..entries).step_by(writers as usize) {
                    let body = json!({"outcome": "served", "system": {"id": "support-triage", "version": 1}, "n": i});
                    ledger
                        .append(EntryDraft { entry_type: "inference", request_id: format!("r{i}"), system_id: None, outcome: "served".into(), body })
                        .await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let build_s = started.elapsed().as_secs_f64();

    // The integrity checks: a process's first signature checks every entry against its leaf
    // (a gateway does that at start-up instead); the start-up check against the anchor; a
    // checkpoint after 1,000 more entries (consistency with the last one, and their leaves).
    let t = Instant::now();
    ledger.publish_checkpoint().await?;
    let first_signature_s = t.elapsed().as_secs_f64();
    witnessing.cosign_newest(&ledger).await?;
    let t = Instant::now();
    anyhow::ensure!(ledger.check_integrity().await?.is_none(), "an honest ledger contradicts itself");
    let startup_check_ms = t.elapsed().as_secs_f64() * 1000.0;
    let extra = 1000u64;
    for i in entries..entries + extra {
        let body = json!({"outcome": "served", "system": {"id": "support-triage", "version": 1}, "n": i});
        ledger.append(EntryDraft { entry_type: "inference", request_id: format!("r{i}"), system_id: None, outcome: "served".into(), body }).await?;
    }
    let t = Instant::now();
    ledger.publish_checkpoint().await?;
    let checkpoint_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    witnessing.cosign_newest(&ledger).await?;
    let cosign_ms = t.elapsed().as_secs_f64() * 1000.0;
    let health = witnessing.health(&ledger).await?;
    anyhow::ensure!(health.witnessed_tree_size == Some(entries + extra), "the witness did not cosign: {health:?}");
    let entries = entries + extra;

    // Deterministic spread of indexes over the whole log (no RNG dependency needed).
    let mut total = 0f64;
    let mut worst = 0f64;
    for k in 0..proofs {
        let index = (k * 2_654_435_761) % entries;
        let t = Instant::now();
        let proven = ledger.prove(index).await?.ok_or_else(|| anyhow::anyhow!("no entry {index}"))?;
        let elapsed = t.elapsed().as_secs_f64() * 1000.0;
        anyhow::ensure!(proven.tree_size == entries);
        total += elapsed;
        worst = worst.max(elapsed);
    }

    let export = ledger.export().await?;
    let t = Instant::now();
    let verified = verify_export(&export, &ledger.verifier_key(), None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let verify_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(verified.tree_size == entries);
    println!(
        "{{\"entries\": {entries}, \"build_s\": {build_s:.1}, \"first_signature_s\": {first_signature_s:.2}, \"startup_check_ms\": {startup_check_ms:.1}, \"checkpoint_after_1000_ms\": {checkpoint_ms:.1}, \"witness_cosign_after_1000_ms\": {cosign_ms:.1}, \"proof_mean_ms\": {:.3}, \"proof_max_ms\": {worst:.3}, \"verify_entries_per_s\": {:.0}, \"export_mb\": {:.1}}}",
        total / proofs as f64,
        entries as f64 / verify_s,
        export.len() as f64 / 1e6
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
