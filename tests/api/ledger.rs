//! The ledger entry of a request: exact versions and digests, both gates, tamper resistance.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tiergate::{
    canonical::to_canonical_bytes,
    ledger::{BundleError, CheckpointSigner, ExportError, Ledger, export_entries, verify_bundle, verify_checkpoint, verify_export},
};

use crate::helpers::{Backend, drop_ledger_guard, spawn_app, user_message};

/// The packaged Q4_1 file, which is also what runs.
const PACKAGED_WEIGHTS_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

#[tokio::test(flavor = "multi_thread")]
async fn a_served_request_is_recorded_with_every_version_digest_and_decision() {
    let app = spawn_app().await;
    let request = user_message("escalate-once", "Name a primary colour.");

    let response: Value = app.chat(request.clone()).await.json().await.unwrap();
    let entry = app.ledger_entry(response["tiergate"]["ledger_index"].as_u64().unwrap()).await;

    let store = app.store().await;
    let system = store.artifact_version("system_card", "escalate-once", 1).await.unwrap().unwrap();
    let policy = store.artifact_version("policy_bundle", "tiergate-default", 1).await.unwrap().unwrap();
    let model = store.artifact_version("model_card", "smollm2-135m-instruct", 1).await.unwrap().unwrap();
    assert_eq!(entry["type"], "inference");
    assert_eq!(entry["request_id"], response["tiergate"]["request_id"]);
    assert_eq!(entry["system"], json!({"id": "escalate-once", "version": 1, "digest": system.digest}));
    assert_eq!(entry["policy"], json!({"id": "tiergate-default", "version": 1, "digest": policy.digest}));
    assert_eq!(entry["route"]["decision"]["action"], "serve");
    assert_eq!(entry["route"]["input"]["request"]["stakes"], "normal");
    let attempts = entry["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    for (tier, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt["tier"], tier);
        assert_eq!(attempt["model"]["digest"], model.digest.as_str());
        assert_eq!(attempt["model"]["weights_sha256"], PACKAGED_WEIGHTS_SHA256);
        assert_eq!(attempt["model"]["loaded_weights_sha256"], PACKAGED_WEIGHTS_SHA256);
        assert!(attempt["tokens"]["completion"].as_u64().unwrap() > 0);
        assert!(attempt["latency_ms"].as_f64().unwrap() > 0.0);
        // The accept gate's full input is kept, so the decision can be replayed later.
        assert_eq!(attempt["accept"]["input"]["attempt"]["tier"], tier);
        assert_eq!(attempt["accept"]["input"]["attempt"]["signals"]["mean_logprob"], attempt["signals"]["mean_logprob"]);
    }
    assert_eq!(attempts[0]["accept"]["decision"]["action"], "escalate");
    assert_eq!(attempts[1]["accept"]["decision"]["action"], "accept");
    assert_eq!(entry["outcome"], "served");
    assert_eq!(entry["served_tier"], 1);
    let messages = &request["messages"];
    assert_eq!(entry["request"]["prompt_sha256"], hex::encode(Sha256::digest(to_canonical_bytes(messages))));
    let answer = response["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(entry["answer_sha256"], hex::encode(Sha256::digest(answer.as_bytes())));
    assert!(entry.get("answer").is_none(), "answer text is not stored unless configured");
    assert!(entry["request"].get("messages").is_none(), "prompt text is not stored unless configured");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_database_refuses_to_change_or_delete_ledger_rows() {
    let app = spawn_app().await;
    app.chat(user_message("always-small", "Hi")).await;
    let store = app.store().await;

    let update = sqlx::query("UPDATE ledger_entries SET outcome = 'denied'").execute(store.pool()).await;
    let delete = sqlx::query("DELETE FROM ledger_entries").execute(store.pool()).await;
    let delete_hashes = sqlx::query("DELETE FROM ledger_hashes").execute(store.pool()).await;

    assert!(update.unwrap_err().to_string().contains("append-only"));
    assert!(delete.unwrap_err().to_string().contains("append-only"));
    assert!(delete_hashes.unwrap_err().to_string().contains("append-only"));
    assert_eq!(app.ledger_count().await, 1);
}

/// RFC 6962 §2.1 Merkle tree hash, written out independently of the ledger's library.
fn merkle_tree_hash(leaves: &[Vec<u8>]) -> [u8; 32] {
    match leaves.len() {
        0 => Sha256::digest(b"").into(),
        1 => Sha256::new().chain_update([0u8]).chain_update(&leaves[0]).finalize().into(),
        n => {
            let split = n.next_power_of_two() / 2;
            let split = if split == n { n / 2 } else { split };
            let left = merkle_tree_hash(&leaves[..split]);
            let right = merkle_tree_hash(&leaves[split..]);
            Sha256::new().chain_update([1u8]).chain_update(left).chain_update(right).finalize().into()
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ledger_root_is_the_rfc_6962_hash_of_the_stored_entries() {
    let app = spawn_app().await;
    for question in ["One?", "Two?", "Three?"] {
        assert_eq!(app.chat(user_message("always-small", question)).await.status(), 200);
    }
    let mut denied = user_message("support-triage", "x");
    denied["metadata"] = json!({"use_case": "weapons"});
    assert_eq!(app.chat(denied).await.status(), 403);
    let store = app.store().await;

    let rows = store.ledger_entries(0, 100).await.unwrap();
    let key = app.settings.data_dir.join("ledger-signing.key");
    let signer = CheckpointSigner::load_or_create(&key, "unused").unwrap();
    let (size, root) = Ledger::new(store, signer).tree_head().await.unwrap();

    assert_eq!(size, 4);
    assert_eq!(rows.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    let leaves: Vec<Vec<u8>> = rows.into_iter().map(|(_, entry)| entry.into_bytes()).collect();
    assert_eq!(root, hex::encode(merkle_tree_hash(&leaves)));
}

async fn export_and_key(app: &crate::helpers::TestApp) -> (String, String) {
    let export = app.get("/v1/ledger/export").await.text().await.unwrap();
    let key = app.get("/v1/ledger/public-key").await.text().await.unwrap();
    (export, key)
}

fn run_verify(export: &str, key: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("tiergate-export-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ledger.jsonl");
    std::fs::write(&file, export).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tiergate"))
        .args(["ledger", "verify"])
        .arg(&file)
        .args(["--key", key.trim()])
        .output()
        .unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exported_ledger_verifies_offline_with_the_public_key_alone() {
    let app = spawn_app().await;
    for question in ["Hello?", "Goodbye?"] {
        assert_eq!(app.chat(user_message("always-small", question)).await.status(), 200);
    }
    let (export, key) = export_and_key(&app).await;

    let (verified, output) = run_verify(&export, &key);

    assert!(verified, "{output}");
    assert!(output.contains("verified: 2 entries"), "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_tampering_with_an_export_is_detected() {
    let app = spawn_app().await;
    for question in ["One?", "Two?", "Three?"] {
        assert_eq!(app.chat(user_message("always-small", question)).await.status(), 200);
    }
    let (export, key) = export_and_key(&app).await;
    let lines: Vec<&str> = export.lines().collect();
    let with_lines = |body: Vec<&str>| format!("{}\n{}\n", lines[0], body.join("\n"));

    let edited = with_lines(vec![lines[1], &lines[2].replace("\"served\"", "\"denied\""), lines[3]]);
    let deleted = with_lines(vec![lines[1], lines[3]]);
    let reordered = with_lines(vec![lines[2], lines[1], lines[3]]);
    let other_key =
        CheckpointSigner::load_or_create(&std::env::temp_dir().join(format!("k-{}", uuid::Uuid::new_v4())), "tiergate.local/ledger").unwrap();

    assert_eq!(verify_export(&edited, &key, None), Err(ExportError::Altered { index: 1 }));
    assert!(matches!(verify_export(&deleted, &key, None), Err(ExportError::Index { expected: 1, .. })));
    assert!(matches!(verify_export(&reordered, &key, None), Err(ExportError::Index { expected: 0, .. })));
    assert!(matches!(verify_export(&export, &other_key.verifier_key, None), Err(ExportError::Checkpoint(_))));
    let (verified, output) = run_verify(&edited, &key);
    assert!(!verified && output.contains("entry 1 was altered"), "{output}");

    // Recorded leaves are only trusted when they hash to the signed root: an edit that also
    // rewrites its leaf is still caught, but no longer attributed to one entry.
    let forged_leaf = tlog_tiles::record_hash(&to_canonical_bytes(&export_entries(&edited).nth(1).unwrap()));
    let edited_line: Value = serde_json::from_str(lines[2]).unwrap();
    let edited_with_leaf = with_lines(vec![
        lines[1],
        &lines[2].replace("\"served\"", "\"denied\"").replace(edited_line["leaf_hash"].as_str().unwrap(), &hex::encode(forged_leaf.0)),
        lines[3],
    ]);
    assert!(matches!(verify_export(&edited_with_leaf, &key, None), Err(ExportError::Root { .. })));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_edited_directly_in_the_database_file_fails_verification_and_nothing_more_is_signed() {
    let app = spawn_app().await;
    for question in ["One?", "Two?"] {
        assert_eq!(app.chat(user_message("always-small", question)).await.status(), 200);
    }
    let store = app.store().await;
    // An attacker with file access can drop the guard triggers; the Merkle tree still catches it.
    drop_ledger_guard(&store, "update").await;
    sqlx::query("UPDATE ledger_entries SET entry = replace(entry, '\"served\"', '\"denied\"') WHERE idx = 0").execute(store.pool()).await.unwrap();

    let served: Value = app.get("/v1/ledger/verify").await.json().await.unwrap();
    let export = app.get("/v1/ledger/export").await;

    assert_eq!(served["verified"], false);
    assert!(served["problem"].as_str().unwrap().contains("entry 0 was altered"), "{served}");
    assert_eq!(served["contradiction"]["kind"], "damaged", "{served}");
    assert_eq!(served["contradiction"]["first_bad_index"], 0, "{served}");
    // No checkpoint is signed over the altered entry: not in an export, not anywhere.
    assert_eq!(export.status(), 503);
    let body: Value = export.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("entry 0 does not hash to its stored leaf"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_verification_endpoint_passes_on_an_untouched_ledger() {
    let app = spawn_app().await;
    assert_eq!(app.chat(user_message("always-small", "Hi")).await.status(), 200);

    let served: Value = app.get("/v1/ledger/verify").await.json().await.unwrap();

    assert_eq!(served["verified"], true, "{served}");
    assert_eq!(served["tree_size"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_entry_comes_with_an_inclusion_proof_against_a_signed_checkpoint() {
    let app = spawn_app().await;
    for question in ["A?", "B?", "C?", "D?", "E?"] {
        assert_eq!(app.chat(user_message("always-small", question)).await.status(), 200);
    }
    let key = app.get("/v1/ledger/public-key").await.text().await.unwrap();

    let body: Value = app.get("/v1/ledger/entries/3").await.json().await.unwrap();

    let (size, root) = verify_checkpoint(body["checkpoint"].as_str().unwrap(), &key).unwrap();
    assert_eq!(size, 5);
    assert_eq!(hex::encode(root.0), body["root_hash"].as_str().unwrap());
    let leaf = tlog_tiles::record_hash(&to_canonical_bytes(&body["entry"]));
    assert_eq!(hex::encode(leaf.0), body["leaf_hash"].as_str().unwrap());
    let proof = hashes_from_hex(&body["proof"]);
    assert!(tlog_tiles::check_record(&proof, size, root, 3, leaf).is_ok());
    assert!(tlog_tiles::check_record(&proof, size, root, 2, leaf).is_err(), "the proof is for entry 3 only");
    assert_eq!(app.get("/v1/ledger/entries/5").await.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rewritten_history_fails_against_an_earlier_checkpoint_even_when_re_signed() {
    let app = spawn_app().await;
    for question in ["One?", "Two?"] {
        assert_eq!(app.chat(user_message("always-small", question)).await.status(), 200);
    }
    let earlier = app.get("/v1/ledger/checkpoint").await.text().await.unwrap();
    assert_eq!(app.chat(user_message("always-small", "Three?")).await.status(), 200);
    let (export, key) = export_and_key(&app).await;
    let proof: Value = app.get("/v1/ledger/consistency/2").await.json().await.unwrap();

    // The honest log extends the earlier checkpoint, by export and by proof.
    assert!(verify_export(&export, &key, Some(&earlier)).is_ok());
    let (_, earlier_root) = verify_checkpoint(&earlier, &key).unwrap();
    let (size, root) = verify_checkpoint(proof["checkpoint"].as_str().unwrap(), &key).unwrap();
    let hashes = hashes_from_hex(&proof["proof"]);
    assert!(tlog_tiles::check_tree(&hashes, size, root, 2, earlier_root).is_ok());
    let between: Value = app.get("/v1/ledger/consistency/1?to=2").await.json().await.unwrap();
    let (to_size, to_root) = verify_checkpoint(between["checkpoint"].as_str().unwrap(), &key).unwrap();
    assert_eq!((to_size, to_root), (2, earlier_root), "the tree of 2 is the one the earlier checkpoint signed");
    assert!(
        tlog_tiles::check_tree(
            &hashes_from_hex(&between["proof"]),
            2,
            to_root,
            1,
            tlog_tiles::record_hash(&to_canonical_bytes(&export_entries(&export).next().unwrap()))
        )
        .is_ok()
    );
    assert_eq!(app.get("/v1/ledger/consistency/2?to=9").await.status(), 404);

    // An operator with the signing key rewrites entry 0 and re-signs a self-consistent log.
    let lines: Vec<String> = export_entries(&export).map(|entry| String::from_utf8(to_canonical_bytes(&entry)).unwrap()).collect();
    let rewritten: Vec<String> =
        std::iter::once(lines[0].replace("\"always-small\"", "\"support-triage\"")).chain(lines[1..].iter().cloned()).collect();
    let mut hashes = Vec::<tlog_tiles::Hash>::new();
    struct Mem<'a>(&'a [tlog_tiles::Hash]);
    impl tlog_tiles::HashReader for Mem<'_> {
        fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog_tiles::Hash>, tlog_tiles::Error> {
            Ok(indexes.iter().map(|i| self.0[*i as usize]).collect())
        }
    }
    for (n, line) in rewritten.iter().enumerate() {
        let new = tlog_tiles::stored_hashes(n as u64, line.as_bytes(), &Mem(&hashes)).unwrap();
        hashes.extend(new);
    }
    let forged_root = tlog_tiles::tree_hash(3, &Mem(&hashes)).unwrap();
    let signer = CheckpointSigner::load_or_create(&app.settings.data_dir.join("ledger-signing.key"), "unused").unwrap();
    let forged = format!(
        "{}\n{}\n",
        serde_json::json!({"format": "tiergate-ledger-export/1", "tree_size": 3, "checkpoint": signer.sign(3, forged_root).unwrap()}),
        rewritten.join("\n")
    );

    assert!(verify_export(&forged, &key, None).is_ok(), "the forgery is internally consistent");
    let result = verify_export(&forged, &key, Some(&earlier));
    assert!(matches!(result, Err(ExportError::Inconsistent { size: 2, .. })), "{result:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_ledger_cannot_write_nothing_is_served() {
    if crate::BACKEND == Backend::Postgres {
        // The lock used below is SQLite's; PostgreSQL would wait without a lock timeout.
        return;
    }
    let app = spawn_app().await;
    let store = app.store().await;
    // Another process holds the database's write lock past the busy timeout: appends fail.
    let mut blocker = store.pool().acquire().await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut *blocker).await.unwrap();

    let refused = app.chat(user_message("always-small", "Hello?")).await;

    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(body["error"]["message"].as_str().unwrap().contains("nothing was served"), "{body}");
    sqlx::query("ROLLBACK").execute(&mut *blocker).await.unwrap();
    drop(blocker);
    let served = app.chat(user_message("always-small", "Hello again?")).await;
    assert_eq!(served.status(), 200);
    assert_eq!(app.ledger_count().await, 1, "only the served request is recorded");
}

fn hashes_from_hex(list: &Value) -> Vec<tlog_tiles::Hash> {
    list.as_array().unwrap().iter().map(|h| tlog_tiles::Hash(hex::decode(h.as_str().unwrap()).unwrap().try_into().unwrap())).collect()
}

/// A small entry as a served request would leave it, numbered `n`.
fn served_draft(request_id: &str, n: u64) -> tiergate::ledger::EntryDraft {
    tiergate::ledger::EntryDraft {
        entry_type: "inference",
        request_id: request_id.to_owned(),
        system_id: None,
        outcome: "served".into(),
        body: json!({"n": n}),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_appends_share_commits_and_form_one_gap_free_verifiable_log() {
    let dir = std::env::temp_dir().join(format!("tiergate-group-{}", uuid::Uuid::new_v4()));
    let store = tiergate::store::Store::connect(&format!("sqlite://{}/ledger.db?mode=rwc", dir.display())).await.unwrap();
    store.migrate().await.unwrap();
    let signer = CheckpointSigner::load_or_create(&dir.join("key"), "test/ledger").unwrap();
    let ledger = std::sync::Arc::new(Ledger::new(store, signer));

    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let ledger = ledger.clone();
            tokio::spawn(async move { (i, ledger.append(served_draft(&format!("r{i}"), i)).await.unwrap().index) })
        })
        .collect();
    let mut indexes = Vec::new();
    for task in tasks {
        let (i, index) = task.await.unwrap();
        let entry = ledger.entry(index).await.unwrap().unwrap();
        assert_eq!(entry["n"], i, "each caller is told the index of its own entry");
        indexes.push(index);
    }

    indexes.sort();
    assert_eq!(indexes, (0..200).collect::<Vec<u64>>());
    let verification = ledger.verify(None).await.unwrap();
    assert_eq!(verification.contradiction, None);
    assert_eq!(verification.entries.unwrap().tree_size, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn auditors_can_list_and_filter_entries_as_json_and_csv() {
    let app = spawn_app().await;
    assert_eq!(app.chat(user_message("always-small", "One?")).await.status(), 200);
    assert_eq!(app.chat(user_message("escalate-once", "Two?")).await.status(), 200);
    let mut denied = user_message("support-triage", "x");
    denied["metadata"] = json!({"use_case": "weapons"});
    assert_eq!(app.chat(denied).await.status(), 403);
    assert_eq!(app.chat(user_message("always-small", "Three?")).await.status(), 200);
    let list = |query: &'static str| {
        let app = &app;
        async move { app.get(&format!("/v1/ledger/entries?{query}")).await.json::<Value>().await.unwrap() }
    };
    let indexes = |page: &Value| page["entries"].as_array().unwrap().iter().map(|e| e["index"].as_u64().unwrap()).collect::<Vec<_>>();

    assert_eq!(indexes(&list("system=always-small").await), vec![0, 3]);
    assert_eq!(indexes(&list("outcome=denied").await), vec![2]);
    assert_eq!(indexes(&list("tier=1").await), vec![1]);
    assert_eq!(indexes(&list("policy=tiergate-default@1&from_index=1&to_index=3").await), vec![1, 2]);
    let page = list("limit=2").await;
    assert_eq!(indexes(&page), vec![0, 1]);
    assert_eq!(page["next_from_index"], 2);
    assert_eq!(page["entries"][0]["entry"]["system"]["id"], "always-small");
    assert_eq!(indexes(&list("since=2999-01-01T00:00:00Z").await), Vec::<u64>::new());
    assert_eq!(indexes(&list("until=2999-01-01T00:00:00Z").await).len(), 4);

    let bad_time = app.get("/v1/ledger/entries?since=yesterday").await;
    assert_eq!(bad_time.status(), 422);
    assert!(bad_time.text().await.unwrap().contains("since"));
    let bad_limit = app.get("/v1/ledger/entries?limit=many").await;
    assert_eq!(bad_limit.status(), 422);
    let body: Value = bad_limit.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");

    let csv = app.get("/v1/ledger/entries.csv?system=always-small").await.text().await.unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "index,time,request_id,type,system,policy,outcome,served_tier,leaf_hash");
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(rows[1].starts_with("0,") && rows[1].contains(",always-small,tiergate-default@1,served,0,"), "{csv}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_bundle_carries_every_cited_card_and_policy_and_verifies_offline() {
    let app = spawn_app().await;
    assert_eq!(app.chat(user_message("escalate-once", "Hi?")).await.status(), 200);
    let key = app.get("/v1/ledger/public-key").await.text().await.unwrap();

    let bundle: Value = app.get("/v1/ledger/bundle").await.json().await.unwrap();

    let kinds: Vec<&str> = bundle["artifacts"].as_array().unwrap().iter().map(|a| a["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["model_card", "policy_bundle", "system_card"]);
    assert!(verify_bundle(&bundle, &key, None).is_ok());
    let earlier = app.get("/v1/ledger/checkpoint").await.text().await.unwrap();
    assert!(verify_bundle(&bundle, &key, Some(&earlier)).is_ok());
    let stranger = CheckpointSigner::load_or_create(&std::env::temp_dir().join(format!("k-{}", uuid::Uuid::new_v4())), "x/ledger").unwrap();
    let foreign = stranger.sign(1, tlog_tiles::Hash([0u8; 32])).unwrap();
    assert!(
        matches!(verify_bundle(&bundle, &key, Some(&foreign)), Err(BundleError::Export(ExportError::EarlierCheckpoint(_)))),
        "an earlier checkpoint given with a bundle is checked, not ignored"
    );
    let (verified, output) = run_verify(&bundle.to_string(), &key);
    assert!(verified && output.contains("verified bundle: 1 entries"), "{output}");

    let mut altered = bundle.clone();
    let canonical = altered["artifacts"][1]["canonical"].as_str().unwrap().replace("-1.22", "-9");
    let canonical = canonical.replace("\"min_mean_logprob\":-1", "\"min_mean_logprob\":-9");
    altered["artifacts"][1]["canonical"] = json!(canonical);
    assert!(matches!(verify_bundle(&altered, &key, None), Err(BundleError::ArtifactDigest { .. })), "policy data edited");
    let mut incomplete = bundle.clone();
    incomplete["artifacts"].as_array_mut().unwrap().remove(0);
    assert!(matches!(verify_bundle(&incomplete, &key, None), Err(BundleError::MissingArtifact { index: 0, .. })));
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_are_published_on_a_schedule_and_on_demand_and_kept() {
    let mut settings = crate::helpers::test_settings();
    settings.checkpoint_interval_s = 1;
    let app = crate::helpers::spawn_app_with(settings).await;
    let key = app.get("/v1/ledger/public-key").await.text().await.unwrap();
    assert_eq!(app.chat(user_message("always-small", "One?")).await.status(), 200);

    // The schedule publishes the one-entry tree without anyone asking.
    let mut scheduled = Vec::new();
    for _ in 0..50 {
        scheduled = app.get("/v1/ledger/checkpoints").await.json::<Vec<Value>>().await.unwrap();
        if !scheduled.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(scheduled.len(), 1, "{scheduled:?}");
    assert_eq!(scheduled[0]["tree_size"], 1);
    assert!(scheduled[0]["published_by"].as_str().is_some_and(|by| !by.is_empty()), "the signing replica is named: {scheduled:?}");
    assert_eq!(app.chat(user_message("always-small", "Two?")).await.status(), 200);
    let on_demand = app.get("/v1/ledger/checkpoint").await.text().await.unwrap();

    let history: Vec<Value> = app.get("/v1/ledger/checkpoints").await.json().await.unwrap();

    assert_eq!(history[0]["tree_size"], 2, "newest first: {history:?}");
    assert_eq!(history[0]["checkpoint"], on_demand.as_str());
    for published in &history {
        let (size, _) = verify_checkpoint(published["checkpoint"].as_str().unwrap(), &key).unwrap();
        assert_eq!(size, published["tree_size"].as_u64().unwrap());
    }
    let (export, _) = export_and_key(&app).await;
    let oldest = history.last().unwrap()["checkpoint"].as_str().unwrap();
    assert!(verify_export(&export, &key, Some(oldest)).is_ok(), "the log extends every published checkpoint");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_replica_at_a_time_holds_the_checkpoint_lease_until_it_runs_out() {
    let mut settings = crate::helpers::test_settings();
    settings.checkpoint_interval_s = 0; // no scheduler of its own competing for the lease
    let app = crate::helpers::spawn_app_with(settings).await;
    let store = app.store().await;
    let lease_ms = 1500;

    let first = store.claim_checkpoint_lease("replica-x", lease_ms).await.unwrap();
    let second_while_held = store.claim_checkpoint_lease("replica-y", lease_ms).await.unwrap();
    let first_renews = store.claim_checkpoint_lease("replica-x", lease_ms).await.unwrap();
    let leader_before = store.checkpoint_leader().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(lease_ms as u64 + 200)).await;
    let second_after_expiry = store.claim_checkpoint_lease("replica-y", lease_ms).await.unwrap();
    let first_after_losing = store.claim_checkpoint_lease("replica-x", lease_ms).await.unwrap();

    assert!(first, "an unheld lease is taken");
    assert!(!second_while_held, "a held lease is not taken by another replica");
    assert!(first_renews, "the holder renews its lease");
    assert_eq!(leader_before.as_deref(), Some("replica-x"));
    assert!(second_after_expiry, "an expired lease is taken over");
    assert!(!first_after_losing, "the old holder does not get it back while the new one holds it");
    assert_eq!(store.checkpoint_leader().await.unwrap().as_deref(), Some("replica-y"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_deleted_or_reordered_in_the_database_file_fail_verification() {
    let deleted = spawn_app().await;
    let reordered = spawn_app().await;
    for app in [&deleted, &reordered] {
        for question in ["One?", "Two?", "Three?"] {
            assert_eq!(app.chat(user_message("always-small", question)).await.status(), 200);
        }
    }
    let store = deleted.store().await;
    drop_ledger_guard(&store, "delete").await;
    sqlx::query("DELETE FROM ledger_entries WHERE idx = 1").execute(store.pool()).await.unwrap();
    let store = reordered.store().await;
    drop_ledger_guard(&store, "update").await;
    // Swap the bodies of entries 0 and 1 (each keeps its row index).
    sqlx::query(
        "UPDATE ledger_entries SET entry = CASE idx \
           WHEN 0 THEN (SELECT entry FROM ledger_entries WHERE idx = 1) \
           ELSE (SELECT entry FROM ledger_entries WHERE idx = 0) END WHERE idx IN (0, 1)",
    )
    .execute(store.pool())
    .await
    .unwrap();

    for (app, expected) in [(&deleted, "index"), (&reordered, "index")] {
        let served: Value = app.get("/v1/ledger/verify").await.json().await.unwrap();
        assert_eq!(served["verified"], false, "{served}");
        assert!(served["problem"].as_str().unwrap().contains(expected), "{served}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_key_rotation_checkpoints_signed_with_the_old_key_still_verify() {
    let settings = crate::helpers::test_settings();
    let before = crate::helpers::spawn_app_with(settings.clone()).await;
    assert_eq!(before.chat(user_message("always-small", "One?")).await.status(), 200);
    let old_checkpoint = before.get("/v1/ledger/checkpoint").await.text().await.unwrap();
    let old_key = before.get("/v1/ledger/public-key").await.text().await.unwrap();

    let rotated = std::process::Command::new(env!("CARGO_BIN_EXE_tiergate"))
        .args(["ledger", "rotate-key", "--data-dir"])
        .arg(&settings.data_dir)
        .output()
        .unwrap();
    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    // The same data directory and database (on PostgreSQL, the one the first start created).
    let after = crate::helpers::spawn_app_with(before.settings.clone()).await;
    assert_eq!(after.chat(user_message("always-small", "Two?")).await.status(), 200);
    let (export, keys) = export_and_key(&after).await;

    assert_eq!(keys.lines().count(), 2, "current and retired: {keys}");
    assert_eq!(keys.lines().nth(1).unwrap(), old_key.trim());
    assert!(verify_export(&export, &keys, Some(&old_checkpoint)).is_ok());
    assert!(verify_export(&export, &old_key, None).is_err(), "new checkpoints are not signed with the retired key");
}

/// Readiness and a chat request on a gateway whose ledger should have halted: both refused,
/// naming `expected`; the read-only ledger endpoints still answer auditors.
async fn assert_halted(app: &crate::helpers::TestApp, expected: &str) {
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert!(ready["checks"]["ledger_integrity"].as_str().unwrap().contains(expected), "{ready}");
    let entries_before = app.ledger_count().await;
    let refused = app.chat(user_message("always-small", "Still there?")).await;
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains(expected), "{body}");
    assert_eq!(app.get("/v1/ledger/checkpoint").await.status(), 503, "nothing is signed");
    assert_eq!(app.get("/v1/ledger/entries").await.status(), 200, "auditors can still look");
    assert_eq!(app.ledger_count().await, entries_before, "nothing is recorded");
}

/// `tiergate ledger recover` on the app's data directory and database.
fn recover(app: &crate::helpers::TestApp) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tiergate"));
    command.args(["ledger", "recover", "--actor", "alice", "--reason", "entry lost in a disk repair; accepted after review", "--data-dir"]);
    command.arg(&app.settings.data_dir);
    if let Some(url) = &app.settings.database_url {
        command.args(["--database-url", url]);
    }
    command.output().unwrap()
}

async fn served_and_signed(app: &crate::helpers::TestApp, questions: &[&str]) {
    for question in questions {
        assert_eq!(app.chat(user_message("always-small", question)).await.status(), 200);
    }
    // An auditor fetches a checkpoint: the ledger has now signed this tree.
    assert_eq!(app.get("/v1/ledger/checkpoint").await.status(), 200);
}

/// The case an auditor found: the newest entry (and its hashes) deleted from a stopped
/// gateway's database. The ledger must not sign the shorter tree, at run time or at the next
/// start; an operator's `recover` records the incident and lets it go on.
#[tokio::test(flavor = "multi_thread")]
async fn a_ledger_missing_its_newest_entry_signs_and_serves_nothing_until_an_operator_recovers_it() {
    let app = spawn_app().await;
    served_and_signed(&app, &["One?", "Two?", "Three?"]).await;
    let store = app.store().await;
    drop_ledger_guard(&store, "delete").await;
    crate::helpers::drop_append_only_guard(&store, "ledger_hashes", "delete").await;
    sqlx::query("DELETE FROM ledger_entries WHERE idx = 2").execute(store.pool()).await.unwrap();
    sqlx::query("DELETE FROM ledger_hashes WHERE hash_index >= $1")
        .bind(tlog_tiles::stored_hash_index(0, 2) as i64)
        .execute(store.pool())
        .await
        .unwrap();

    // The running gateway refuses to sign the shorter tree.
    let refused = app.get("/v1/ledger/checkpoint").await;
    assert_eq!(refused.status(), 503);
    assert!(refused.text().await.unwrap().contains("holds 2 entries, but a checkpoint of 3 entries was signed"));
    // And a fresh start on the same data directory and database does not either.
    let restarted = crate::helpers::spawn_app_with(app.settings.clone()).await;
    assert_halted(&restarted, "holds 2 entries, but a checkpoint of 3 entries was signed").await;
    let verified: Value = restarted.get("/v1/ledger/verify").await.json().await.unwrap();
    assert_eq!(verified["verified"], false, "{verified}");
    assert_eq!(verified["contradiction"]["kind"], "shorter");
    assert_eq!(verified["contradiction"]["first_bad_index"], 2);

    let recovered = recover(&app);
    assert!(recovered.status.success(), "{}", String::from_utf8_lossy(&recovered.stderr));
    let after = crate::helpers::spawn_app_with(app.settings.clone()).await;
    assert_eq!(after.get("/readyz").await.status(), 200);
    let incident = after.ledger_entry(2).await;
    assert_eq!(incident["event"], "ledger_incident", "{incident}");
    assert_eq!(incident["actor"]["id"], "alice");
    assert_eq!(incident["contradiction"]["kind"], "shorter");
    assert_eq!(incident["contradicted_checkpoints"][0]["tree_size"], 3, "{incident}");
    assert_eq!(after.chat(user_message("always-small", "Back?")).await.status(), 200);
    let verified: Value = after.get("/v1/ledger/verify").await.json().await.unwrap();
    assert_eq!((verified["verified"].as_bool(), verified["tree_size"].as_u64()), (Some(true), Some(4)), "{verified}");
    let again = recover(&app);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("nothing to recover"), "{again:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_entry_edited_in_place_halts_the_next_start_and_recover_will_not_paper_over_it() {
    let app = spawn_app().await;
    served_and_signed(&app, &["One?", "Two?"]).await;
    let store = app.store().await;
    drop_ledger_guard(&store, "update").await;
    sqlx::query("UPDATE ledger_entries SET entry = replace(entry, '\"served\"', '\"denied\"') WHERE idx = 1").execute(store.pool()).await.unwrap();

    let restarted = crate::helpers::spawn_app_with(app.settings.clone()).await;

    assert_halted(&restarted, "entry 1 does not hash to its stored leaf").await;
    let refused = recover(&app);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("restore the damaged entries from a backup"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_entry_added_outside_the_ledger_halts_the_next_start() {
    let app = spawn_app().await;
    served_and_signed(&app, &["One?", "Two?"]).await;
    let store = app.store().await;
    // A row written straight into the table, as a database user could: no stored hashes.
    sqlx::query(
        "INSERT INTO ledger_entries (idx, created_at, request_id, entry_type, system_id, outcome, entry, policy, served_tier)
         SELECT 2, created_at, 'forged', entry_type, system_id, outcome, replace(entry, '\"index\":1', '\"index\":2'), policy, served_tier
         FROM ledger_entries WHERE idx = 1",
    )
    .execute(store.pool())
    .await
    .unwrap();

    let restarted = crate::helpers::spawn_app_with(app.settings.clone()).await;

    assert_halted(&restarted, "entry 2 has no stored leaf hash").await;
}

/// The database restored from a backup older than the newest checkpoint: its own checkpoint
/// table is as old as its entries, so only the anchor kept outside it (beside the signing key)
/// can tell. SQLite only: the backup is the database file as `VACUUM INTO` copies it.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_restored_from_an_older_backup_halts_the_next_start() {
    if crate::BACKEND == Backend::Postgres {
        return;
    }
    let app = spawn_app().await;
    served_and_signed(&app, &["One?"]).await;
    let backup = app.settings.data_dir.join("backup.db");
    sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM INTO '{}'", backup.display()))).execute(app.store().await.pool()).await.unwrap();
    served_and_signed(&app, &["Two?", "Three?"]).await;

    let mut restored = app.settings.clone();
    restored.database_url = Some(format!("sqlite://{}", backup.display()));
    let restarted = crate::helpers::spawn_app_with(restored).await;

    assert_halted(&restarted, "holds 1 entries, but a checkpoint of 3 entries was signed").await;
}

/// An auditor's own checkpoint, from before a rewrite, is checked by the verification endpoint.
#[tokio::test(flavor = "multi_thread")]
async fn the_verification_endpoint_checks_the_stored_tree_against_an_auditors_checkpoint() {
    let app = spawn_app().await;
    served_and_signed(&app, &["One?", "Two?"]).await;
    let kept = app.get("/v1/ledger/checkpoint").await.text().await.unwrap();
    assert_eq!(app.chat(user_message("always-small", "Three?")).await.status(), 200);
    let forged =
        CheckpointSigner::load_or_create(&app.settings.data_dir.join("other.key"), "elsewhere").unwrap().sign(2, tlog_tiles::Hash([9; 32])).unwrap();

    // Signed with the ledger's own key (an operator who holds it) over another history.
    let contradicting = CheckpointSigner::load_or_create(&app.settings.data_dir.join("ledger-signing.key"), "unused")
        .unwrap()
        .sign(2, tlog_tiles::Hash([9; 32]))
        .unwrap();

    let query = |note: &str| format!("/v1/ledger/verify?checkpoint={}", urlencoding(note));
    let extends: Value = app.get(&query(&kept)).await.json().await.unwrap();
    let contradicted: Value = app.get(&query(&contradicting)).await.json().await.unwrap();
    let foreign = app.get(&query(&forged)).await;

    assert_eq!((extends["verified"].as_bool(), extends["tree_size"].as_u64()), (Some(true), Some(3)), "{extends}");
    assert_eq!(contradicted["verified"], false, "{contradicted}");
    assert!(contradicted["problem"].as_str().unwrap().contains("history was rewritten: the first 2 entries"), "{contradicted}");
    assert_eq!(foreign.status(), 422);
    assert!(foreign.text().await.unwrap().contains("checkpoint: not a checkpoint signed by this ledger"));
}

fn urlencoding(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The log as C2SP tlog-tiles: the tiles the gateway serves rebuild the root of its signed
/// checkpoint, checked twice: by the `tlog_tiles` crate's authenticating tile reader, and by a
/// standard-library-only Python mirror (`tests/clients/tlog_tiles_check.py`) that recomputes
/// RFC 6962 from the entry bundles alone.
#[tokio::test(flavor = "multi_thread")]
async fn the_tiles_the_gateway_serves_rebuild_the_root_of_its_signed_checkpoint() {
    let app = spawn_app().await;
    assert_eq!(app.chat(user_message("always-small", "One?")).await.status(), 200);
    // 300 more entries through the real append path of a second ledger on the same database
    // (as a second replica would write them): a full tile, a partial one and a level-1 tile.
    let signer = CheckpointSigner::load_or_create(&app.settings.data_dir.join("ledger-signing.key"), "unused").unwrap();
    let writer = Ledger::new(app.store().await, signer);
    for i in 0..300 {
        writer.append(served_draft(&format!("bulk-{i}"), i)).await.unwrap();
    }
    let note = app.get("/v1/ledger/tlog/checkpoint").await.text().await.unwrap();
    let key = app.get("/v1/ledger/public-key").await.text().await.unwrap();
    let (size, root) = verify_checkpoint(&note, &key).unwrap();
    assert_eq!(size, 301);

    let mut tiles = std::collections::HashMap::new();
    for path in ["0/000", "0/001.p/45", "1/000.p/1"] {
        let response = app.get(&format!("/v1/ledger/tlog/tile/{path}")).await;
        assert_eq!(response.status(), 200, "{path}");
        let tile = tiergate::ledger::TilePath::parse(path).unwrap().tile;
        tiles.insert(tile, response.bytes().await.unwrap().to_vec());
    }
    struct Served(std::collections::HashMap<tlog_tiles::Tile, Vec<u8>>);
    impl tlog_tiles::TileReader for Served {
        fn height(&self) -> u8 {
            8
        }
        fn read_tiles(&self, tiles: &[tlog_tiles::Tile]) -> Result<Vec<Vec<u8>>, tlog_tiles::Error> {
            tiles.iter().map(|t| self.0.get(t).cloned().ok_or(tlog_tiles::Error::InvalidTile)).collect()
        }
        fn save_tiles(&self, _: &[tlog_tiles::Tile], _: &[Vec<u8>]) {}
    }
    let served = Served(tiles);
    let reader = tlog_tiles::TileHashReader::new(size, root, &served);
    // The reader authenticates every tile against the signed root before using it.
    let proof = tlog_tiles::prove_record(size, 260, &reader).unwrap();
    let entry_bundle = app.get("/v1/ledger/tlog/tile/entries/001.p/45").await.bytes().await.unwrap();
    let length = u16::from_be_bytes([entry_bundle[0], entry_bundle[1]]) as usize;
    let entry_256 = &entry_bundle[2..2 + length];
    let second_length = u16::from_be_bytes([entry_bundle[2 + length], entry_bundle[3 + length]]) as usize;
    let entry_257 = &entry_bundle[4 + length..4 + length + second_length];
    assert!(tlog_tiles::check_record(&proof, size, root, 260, tlog_tiles::record_hash(entry_257)).is_err(), "the proof is for entry 260");
    assert_eq!(serde_json::from_slice::<Value>(entry_256).unwrap()["index"], 256);
    let proof_256 = tlog_tiles::prove_record(size, 256, &reader).unwrap();
    assert!(tlog_tiles::check_record(&proof_256, size, root, 256, tlog_tiles::record_hash(entry_256)).is_ok());

    let tools_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/tlog_tiles_check.py");
    let (base, auditor) = (format!("{}/v1/ledger/tlog", app.address), app.auditor_token.clone());
    let output = tokio::task::spawn_blocking(move || std::process::Command::new("python3").arg(tools_dir).args([&base, &auditor]).output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mirrored: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(mirrored["entries"].as_u64(), Some(mirrored["size"].as_u64().unwrap()), "{mirrored}");
    assert_eq!(mirrored["computed_root"], mirrored["checkpoint_root"], "{mirrored}");
    assert_eq!(mirrored["level0_tiles_match_entries"], true);
    assert_eq!(mirrored["first_entry_index"], 0);
    assert_eq!(mirrored["tile_beyond_the_tree"], 404);

    for (path, status) in [("0/001", 404), ("0/000.p/0", 404), ("nonsense", 404), ("entries/x001/000", 404)] {
        assert_eq!(app.get(&format!("/v1/ledger/tlog/tile/{path}")).await.status(), status, "{path}");
    }
    let anonymous = app.client.get(format!("{}/v1/ledger/tlog/tile/0/000", app.address)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "tiles are for auditors, like every ledger read");
}

/// A bare store on the suite's backend (a temporary SQLite file, or a fresh PostgreSQL
/// database kept alive by the returned guard), migrated.
async fn bare_store() -> (tiergate::store::Store, Option<crate::helpers::PgDatabase>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("tiergate-bare-{}", uuid::Uuid::new_v4()));
    let (url, database) = match crate::BACKEND {
        Backend::Sqlite => (format!("sqlite://{}/ledger.db?mode=rwc", dir.display()), None),
        Backend::Postgres => {
            let database = crate::helpers::PgDatabase::create().await;
            (database.url(), Some(database))
        }
    };
    let store = tiergate::store::Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    (store, database, dir)
}

/// An entry of `system` like the gateway writes: `i` picks the outcome, escalation and kind.
fn rollup_draft(system: &str, i: u64) -> tiergate::ledger::EntryDraft {
    let escalated = i.is_multiple_of(3);
    let attempt = |tier: u64, action: &str| json!({"tier": tier, "tier_name": format!("t{tier}"), "latency_ms": 5.0 + (i * (tier + 1)) as f64, "tokens": {"prompt": 7, "completion": i % 5}, "cost": 0.25, "accept": {"decision": {"action": action}}});
    let (entry_type, body) = match i % 10 {
        7 => ("feedback", json!({"correct": i.is_multiple_of(4), "escalated": escalated})),
        8 => ("review", json!({"correct": true})),
        9 => ("governance", json!({"event": "activated"})),
        _ => {
            let attempts = if escalated { vec![attempt(0, "escalate"), attempt(1, "accept")] } else { vec![attempt(0, "accept")] };
            let outcome = if i % 10 == 5 { "held_for_review" } else { "served" };
            ("inference", json!({"attempts": attempts, "outcome": outcome, "escalated": escalated, "served_tier": u64::from(escalated)}))
        }
    };
    let outcome = body.get("outcome").and_then(Value::as_str).unwrap_or("recorded").to_owned();
    tiergate::ledger::EntryDraft { entry_type, request_id: format!("{system}-{i}"), system_id: Some(system.into()), outcome, body }
}

/// Every bucket of `system`'s rollups merged, and the same figures added up from its entries.
async fn rollups_and_entries(ledger: &Ledger, system: &str, span_s: i64) -> (tiergate::ledger::rollup::Rollup, tiergate::ledger::rollup::Rollup) {
    use tiergate::ledger::rollup::Rollup;
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let mut merged = Rollup::default();
    for (_, bucket) in ledger.rollups(system, span_s, since).await.unwrap() {
        merged.merge(&bucket);
    }
    let filter = tiergate::store::LedgerFilter { system_id: Some(system.into()), limit: 10_000, ..Default::default() };
    let mut direct = Rollup::default();
    ledger.query(&filter).await.unwrap().iter().for_each(|record| direct.add(&record.entry));
    (merged, direct)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_overview_rollups_count_every_committed_entry_including_a_ledger_older_than_them() {
    use tiergate::ledger::rollup::{HOUR, MINUTE};
    let (store, _database, dir) = bare_store().await;
    let signer = CheckpointSigner::load_or_create(&dir.join("key"), "test/ledger").unwrap();
    let ledger = std::sync::Arc::new(Ledger::new(store.clone(), signer));
    // Concurrent appends: group commit puts several entries, of both systems, in one batch.
    let tasks: Vec<_> = (0..60u64)
        .map(|i| {
            let ledger = ledger.clone();
            tokio::spawn(async move { ledger.append(rollup_draft(if i.is_multiple_of(4) { "other" } else { "triage" }, i)).await.unwrap() })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    for span in [MINUTE, HOUR] {
        let (merged, direct) = rollups_and_entries(&ledger, "triage", span).await;
        assert_eq!(merged, direct, "span {span}");
        assert!(direct.requests > 20 && direct.escalated > 5 && direct.held > 0 && direct.reviews.judged > 0, "{direct:?}");
        assert_eq!(direct.tiers[&0].latency_ms.count(), direct.tiers[&0].attempts);
    }

    // A ledger written before the rollups existed: no rollups, their position at 0. Entries
    // appended meanwhile are not added out of order; reading adds everything up first.
    sqlx::query("DELETE FROM ledger_rollups").execute(store.pool()).await.unwrap();
    sqlx::query("UPDATE ledger_rollup_state SET next_index = 0").execute(store.pool()).await.unwrap();
    for i in 60..70 {
        ledger.append(rollup_draft("triage", i)).await.unwrap();
    }
    let stored: i64 = sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM ledger_rollups").fetch_one(store.pool()).await.unwrap();
    assert_eq!(stored, 0, "appends behind the rollups' position leave them to the catch-up");
    let (merged, direct) = rollups_and_entries(&ledger, "triage", HOUR).await;
    assert_eq!(merged, direct);
    let inference = |i: &u64| i % 10 < 7;
    assert_eq!(
        direct.requests,
        ((0..60).filter(|i: &u64| !i.is_multiple_of(4)).filter(inference).count() + (60..70).filter(inference).count()) as u64
    );
    let (merged, direct) = rollups_and_entries(&ledger, "other", MINUTE).await;
    assert_eq!(merged, direct);
    assert!(direct.requests > 0);
    // Once caught up, appends add to the rollups in their own transaction again.
    ledger.append(rollup_draft("triage", 70)).await.unwrap();
    let next: i64 = sqlx::query_scalar("SELECT next_index FROM ledger_rollup_state").fetch_one(store.pool()).await.unwrap();
    assert_eq!(next, 71);
}
