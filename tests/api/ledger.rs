//! The ledger entry of a request: exact versions and digests, both gates, tamper resistance.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tiergate::{canonical::to_canonical_bytes, ledger::Ledger};

use crate::helpers::{spawn_app, user_message};

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
        assert!(attempt["tokens"]["completion"].as_u64().unwrap() > 0);
        assert!(attempt["latency_ms"].as_f64().unwrap() > 0.0);
        // The accept gate's full input is kept, so the decision can be replayed later.
        assert_eq!(attempt["accept"]["input"]["attempt"]["tier"], tier);
        assert_eq!(
            attempt["accept"]["input"]["attempt"]["signals"]["mean_logprob"],
            attempt["signals"]["mean_logprob"]
        );
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
    let (size, root) = Ledger::new(store).tree_head().await.unwrap();

    assert_eq!(size, 4);
    assert_eq!(rows.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    let leaves: Vec<Vec<u8>> = rows.into_iter().map(|(_, entry)| entry.into_bytes()).collect();
    assert_eq!(root, hex::encode(merkle_tree_hash(&leaves)));
}
