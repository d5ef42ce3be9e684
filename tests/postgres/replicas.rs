//! Several replicas on one PostgreSQL database: one ordered, verifiable ledger, and changes
//! made through one replica taking effect on the others.

use serde_json::Value;
use tiergate::ledger::verify_export;

use crate::helpers::{ServeProcess, issue_key_at, serve_binary, spawn_app, spawn_app_with, user_message};

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

#[tokio::test(flavor = "multi_thread")]
async fn experiment_assignments_agree_across_replicas_and_survive_a_restart() {
    use crate::experiments::{ask, experiment, ok, submit_and_approve_system, system_version};

    let first = spawn_app().await;
    let second = spawn_app_with(first.settings.clone()).await;
    submit_and_approve_system(&first, &system_version("split-sys", -1000.0), 1, "split-sys").await;
    assert_eq!(first.lifecycle("bob", "system-cards", "split-sys", 1, "activate").await.status(), 200);
    submit_and_approve_system(&first, &system_version("split-sys", 1.0), 2, "split-sys").await;
    let text = experiment("split", "split-sys", "split-sys@2", 50.0, "user", serde_json::json!({"min_samples": 50}));
    assert_eq!(first.submit("alice", "experiments", &text).await.status(), 201);
    assert_eq!(first.lifecycle("bob", "experiments", "split", 1, "approve").await.status(), 200);
    ok(first.post_as("bob", "/v1/experiments/split/versions/1/start", "application/json", String::new()).await).await;

    let mut arms = Vec::new();
    for user in 0..24 {
        arms.push(ask(&first, "split-sys", &format!("user-{user}"), "normal").await.0);
    }
    assert!(arms.iter().any(|a| a == "split-sys@1") && arms.iter().any(|a| a == "split-sys@2"), "{arms:?}");
    // The second replica picks the experiment up at its registry sync, then agrees on every user.
    let treated = arms.iter().position(|a| a == "split-sys@2").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while ask(&second, "split-sys", &format!("user-{treated}"), "normal").await.0 != "split-sys@2" {
        assert!(std::time::Instant::now() < deadline, "the second replica never served the experiment");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    for (user, arm) in arms.iter().enumerate() {
        assert_eq!(&ask(&second, "split-sys", &format!("user-{user}"), "normal").await.0, arm, "user-{user} on the second replica");
    }
    // A replica started afresh on the same database resumes the run with the same assignments
    // from its first request (no sync interval needed).
    let restarted = spawn_app_with(first.settings.clone()).await;
    for (user, arm) in arms.iter().enumerate() {
        assert_eq!(&ask(&restarted, "split-sys", &format!("user-{user}"), "normal").await.0, arm, "user-{user} after a restart");
    }
}

/// Starts the binary as replica `name` on `database_url`, sharing `data_dir` (and so the ledger
/// signing key) with the other replicas, and waits until it listens.
fn start_replica(name: &str, database_url: &str, data_dir: &std::path::Path, admin_key: &str) -> (String, ServeProcess) {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = data_dir.join(format!("{name}.yaml"));
    let settings = serde_json::json!({
        "bind": "127.0.0.1:0",
        "data_dir": data_dir,
        "database_url": database_url,
        "cards_dirs": [repo.join("model-cards"), repo.join("tests/fixtures/cards")],
        "policies_dir": repo.join("policies"),
        "checkpoint_interval_s": 1,
        "registry_sync_interval_ms": 500,
        "replica_id": name,
    });
    // JSON is YAML.
    std::fs::write(&config, settings.to_string()).unwrap();
    let log = data_dir.join(format!("{name}.log"));
    let server = serve_binary(
        &["--config".as_ref(), config.as_os_str()],
        &[("TIERGATE_BOOTSTRAP_ADMIN_KEY", admin_key.as_ref())],
        std::process::Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    assert!(!server.address.is_empty(), "replica {name} did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
    (name.to_owned(), server)
}

/// What one client request came to: the ledger index it was acknowledged with, or nothing.
struct Outcome {
    request_id: String,
    replica: String,
    acknowledged: Option<u64>,
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_killed_mid_load_lose_no_acknowledged_entry_and_the_log_still_verifies() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    let database = crate::helpers::PgDatabase::create().await;
    let data_dir = std::env::temp_dir().join(format!("tiergate-replicas-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&data_dir).unwrap();
    let admin_key = tiergate::access::new_token().unwrap();
    // One after the other: the first creates the schema and the shared signing key.
    let mut replicas: Vec<(String, ServeProcess)> =
        ["replica-a", "replica-b", "replica-c"].iter().map(|name| start_replica(name, &database.url(), &data_dir, &admin_key)).collect();
    let store = tiergate::store::Store::connect(&database.url()).await.unwrap();
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build().unwrap();
    let token = issue_key_at(&client, &replicas[1].1.address, &admin_key, serde_json::json!({"subject": "load", "roles": ["app", "auditor"]})).await;

    // Kill the replica that signs checkpoints, so that the kill also tests the hand-over.
    let store = &store;
    let leader = wait_for(move || async move { store.checkpoint_leader().await.unwrap() }).await.expect("a replica leads within 10 s");
    let victim = replicas.iter().position(|(name, _)| *name == leader).expect("the leader is one of the replicas");
    let addresses: Vec<(String, String)> = replicas.iter().map(|(name, server)| (name.clone(), server.address.clone())).collect();

    let acknowledged = Arc::new(AtomicUsize::new(0));
    let clients = (0..6).map(|client_number| {
        let (client, token, addresses, acknowledged) = (client.clone(), token.clone(), addresses.clone(), acknowledged.clone());
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for round in 0..6 {
                let (replica, address) = &addresses[(client_number + round) % addresses.len()];
                let request_id = format!("load-{client_number}-{round}");
                let response = client
                    .post(format!("{address}/v1/chat/completions"))
                    .bearer_auth(&token)
                    .header("x-request-id", &request_id)
                    .json(&user_message("always-small", &format!("Count to {round}.")))
                    .send()
                    .await;
                let index = match response {
                    Ok(response) if response.status() == 200 => {
                        let body: Value = response.json().await.unwrap_or_default();
                        body["tiergate"]["ledger_index"].as_u64()
                    }
                    _ => None,
                };
                if index.is_some() {
                    acknowledged.fetch_add(1, Ordering::SeqCst);
                }
                outcomes.push(Outcome { request_id, replica: replica.clone(), acknowledged: index });
            }
            outcomes
        })
    });
    let clients: Vec<_> = clients.collect();
    while acknowledged.load(Ordering::SeqCst) < 8 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    replicas[victim].1.child.kill().unwrap();
    replicas[victim].1.child.wait().unwrap();
    let outcomes: Vec<Outcome> = futures::future::join_all(clients).await.into_iter().flat_map(Result::unwrap).collect();

    let survivor = &replicas[(victim + 1) % replicas.len()].1;
    let export = client.get(format!("{}/v1/ledger/export", survivor.address)).bearer_auth(&token).send().await.unwrap().text().await.unwrap();
    let key = client.get(format!("{}/v1/ledger/public-key", survivor.address)).bearer_auth(&token).send().await.unwrap().text().await.unwrap();
    let verified = verify_export(&export, &key, None);
    let written: std::collections::HashMap<String, u64> = tiergate::ledger::export_entries(&export)
        .map(|entry| (entry["request_id"].as_str().unwrap().to_owned(), entry["index"].as_u64().unwrap()))
        .collect();
    // A new leader signs once the dead one's lease (three intervals) has run out.
    let dead = leader.as_str();
    let taken_over = wait_for(move || async move {
        let checkpoints = store.ledger_checkpoints(100).await.unwrap();
        checkpoints.into_iter().find(|c| c.published_by.as_deref().is_some_and(|by| by != dead && by.starts_with("replica-")))
    })
    .await;

    eprintln!(
        "killed {leader}; {} requests acknowledged ({} by it), {} lost, new signer {:?}",
        outcomes.iter().filter(|o| o.acknowledged.is_some()).count(),
        outcomes.iter().filter(|o| o.acknowledged.is_some() && o.replica == leader).count(),
        outcomes.iter().filter(|o| o.acknowledged.is_none()).count(),
        taken_over.as_ref().and_then(|c| c.published_by.clone()),
    );
    let verified = verified.expect("the log written by all replicas, one killed, verifies");
    let acked: Vec<&Outcome> = outcomes.iter().filter(|o| o.acknowledged.is_some()).collect();
    let mut indexes: Vec<u64> = acked.iter().filter_map(|o| o.acknowledged).collect();
    indexes.sort();
    indexes.dedup();
    assert_eq!(indexes.len(), acked.len(), "no index acknowledged twice");
    for outcome in &acked {
        assert_eq!(
            written.get(&outcome.request_id),
            outcome.acknowledged.as_ref(),
            "{} acknowledged by {} is in the ledger at its index",
            outcome.request_id,
            outcome.replica
        );
    }
    assert!(acked.iter().any(|o| o.replica == leader), "the killed replica acknowledged requests before it died");
    let lost: Vec<&Outcome> = outcomes.iter().filter(|o| o.acknowledged.is_none()).collect();
    assert!(!lost.is_empty() && lost.iter().all(|o| o.replica == leader), "only requests to the killed replica failed");
    // Entries beyond the acknowledged ones can only be requests the killed replica committed
    // but could not answer.
    for request_id in written.keys() {
        assert!(outcomes.iter().any(|o| &o.request_id == request_id), "unexpected entry {request_id}");
    }
    let unanswered = written.keys().filter(|id| lost.iter().any(|o| &o.request_id == *id)).count();
    assert_eq!(verified.tree_size as usize, acked.len() + unanswered, "entries = acknowledged requests + committed-but-unanswered ones");
    assert!(taken_over.is_some(), "another replica signs checkpoints after the leader died");
}

/// Polls `probe` every 100 ms for up to 10 s until it returns something.
async fn wait_for<T, F, Fut>(probe: F) -> Option<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Some(found) = probe().await {
            return Some(found);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    None
}
