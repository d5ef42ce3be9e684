//! Several replicas on one PostgreSQL database: one ordered, verifiable ledger, and changes
//! made through one replica taking effect on the others.

use serde_json::Value;
use tiergate::ledger::verify_export;

use crate::helpers::{spawn_app, spawn_app_with, user_message};

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_one_gap_free_ledger_and_see_each_others_activations() {
    let first = spawn_app().await;
    // Same database and data directory (hence the same ledger signing key).
    let second = spawn_app_with(first.settings.clone()).await;

    let requests = (0..6).map(|i| {
        let app = if i % 2 == 0 { &first } else { &second };
        app.chat(user_message("always-small", "Name a colour."))
    });
    let responses = futures::future::join_all(requests).await;
    let mut acknowledged = Vec::new();
    for response in responses {
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        acknowledged.push(body["tiergate"]["ledger_index"].as_u64().unwrap());
    }
    acknowledged.sort();
    let export = first.get("/v1/ledger/export").await.text().await.unwrap();
    let key = second.get("/v1/ledger/public-key").await.text().await.unwrap();
    let verified = verify_export(&export, &key, None).expect("the shared log verifies");
    assert_eq!(verified.tree_size, 6, "one entry per acknowledged request");
    assert_eq!(acknowledged, (0..6).collect::<Vec<u64>>(), "no index missing or repeated");

    // Activated through the first replica, served by the second within the sync interval.
    let escalating = include_str!("../fixtures/cards/always-small.yaml")
        .replace("min_mean_logprob_by_tier: [-1000.0, -1000.0]", "min_mean_logprob_by_tier: [1.0, -1000.0]");
    assert_eq!(first.submit("alice", "system-cards", &escalating).await.status(), 201);
    assert_eq!(first.lifecycle("bob", "system-cards", "always-small", 2, "approve").await.status(), 200);
    assert_eq!(first.lifecycle("bob", "system-cards", "always-small", 2, "activate").await.status(), 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut served_by_second = String::new();
    while std::time::Instant::now() < deadline {
        let body: Value = second.chat(user_message("always-small", "Hi")).await.json().await.unwrap();
        served_by_second = body["tiergate"]["system"].as_str().unwrap_or_default().to_owned();
        if served_by_second == "always-small@2" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(served_by_second, "always-small@2", "the second replica picked up the activation");
}
