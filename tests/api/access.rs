//! Access control: keys, roles per endpoint group, scopes, four-eyes by identity, limits, secrecy.

use std::process::Stdio;

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, user_message};

const SHIPPED_MODEL_CARD: &str = include_str!("../../model-cards/smollm2-135m-instruct.yaml");

async fn call(app: &TestApp, token: Option<&str>, method: &str, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut request = app.client.request(method.parse().unwrap(), format!("{}{path}", app.address));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON body")
}

#[tokio::test(flavor = "multi_thread")]
async fn each_role_reaches_its_endpoint_groups_and_no_others() {
    let app = spawn_app().await;
    let roles = ["admin", "author", "approver", "app", "reviewer", "auditor"];
    let mut tokens = Vec::new();
    for role in roles {
        tokens.push(app.issue_key(json!({"subject": format!("{role}-person"), "roles": [role]})).await);
    }
    let shipped_as_json: Value = yaml_serde::from_str(SHIPPED_MODEL_CARD).unwrap();
    /// (group, method, path, body, the roles allowed)
    type Case<'a> = (&'a str, &'a str, &'a str, Option<Value>, &'a [&'a str]);
    let groups: Vec<Case> = vec![
        ("inference", "POST", "/v1/chat/completions", Some(user_message("always-small", "Hi")), &["app"]),
        ("ledger", "GET", "/v1/ledger/checkpoint", None, &["auditor"]),
        ("ledger export", "GET", "/v1/ledger/export", None, &["auditor"]),
        // A route whose last segment is a pattern of its own (`{tile:.*}`).
        ("ledger tiles", "GET", "/v1/ledger/tlog/tile/entries/000.p/1", None, &["auditor"]),
        ("registry read", "GET", "/v1/registry/model-cards", None, &["author", "approver", "auditor"]),
        ("registry submit", "POST", "/v1/registry/model-cards", Some(shipped_as_json), &["author"]),
        ("registry approve", "POST", "/v1/registry/model-cards/smollm2-135m-instruct/versions/1/approve", None, &["approver"]),
        (
            "policy dry-run",
            "POST",
            "/v1/registry/policies/tiergate-default/versions/1/evaluate",
            Some(json!({"gate": "route", "input": {}})),
            &["author", "approver", "auditor"],
        ),
        ("experiments read", "GET", "/v1/experiments", None, &["author", "approver", "auditor"]),
        ("experiment start", "POST", "/v1/experiments/none/versions/1/start", None, &["approver"]),
        ("key management", "GET", "/v1/keys", None, &["admin"]),
        ("review queue", "GET", "/v1/reviews", None, &["reviewer", "auditor"]),
        ("review verdict", "POST", "/v1/reviews/999999/verdict", Some(json!({"verdict": "approve"})), &["reviewer"]),
        ("feedback", "POST", "/v1/feedback", Some(json!({"ledger_index": 999999, "correct": true})), &["app", "reviewer"]),
        ("metrics", "GET", "/metrics", None, &["auditor", "admin"]),
        ("calibration", "GET", "/v1/calibration", None, &["auditor", "admin"]),
        ("own key", "GET", "/v1/keys/me", None, &["admin", "author", "approver", "app", "reviewer", "auditor"]),
    ];

    let mut wrong = Vec::new();
    for (group, method, path, body, allowed) in &groups {
        for (role, token) in roles.iter().zip(&tokens) {
            let status = call(&app, Some(token), method, path, body.clone()).await.status().as_u16();
            let expected_allowed = allowed.contains(role);
            // Allowed means "past access control": the operation itself may still answer 409.
            if expected_allowed == (status == 403 || status == 401) {
                wrong.push(format!("{role} on {group} ({method} {path}): {status}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    for open in ["/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(call(&app, None, "GET", open, None).await.status(), 200, "{open} stays open");
    }
    let refused = json_of(call(&app, Some(&tokens[3]), "GET", "/v1/keys", None).await).await;
    assert_eq!(refused["error"]["code"], "forbidden");
    assert!(refused["error"]["message"].as_str().unwrap().contains("admin"), "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_declares_the_role_of_every_operation() {
    let app = spawn_app().await;
    let document = json_of(call(&app, None, "GET", "/openapi.json", None).await).await;

    assert_eq!(document["components"]["securitySchemes"]["api_key"]["scheme"], "bearer");
    let mut undeclared = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let open = path == "/healthz" || path == "/readyz";
            let declared = operation["security"][0]["api_key"].as_array().is_some_and(|roles| !roles.is_empty());
            if declared == open {
                undeclared.push(format!("{method} {path}"));
            }
        }
    }
    assert!(undeclared.is_empty(), "every operation but health and readiness names its roles: {undeclared:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_malformed_unknown_expired_and_revoked_keys_are_401() {
    let app = spawn_app().await;
    let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339();
    let expiring = app.issue_key(json!({"subject": "temp", "roles": ["auditor"], "expires_at": soon})).await;
    let revocable = app.issue_key(json!({"subject": "leaver", "roles": ["auditor"]})).await;
    let (known_id, _) = revocable.trim_start_matches("tg_").split_once('.').unwrap();
    assert_eq!(call(&app, Some(&revocable), "GET", "/v1/ledger/checkpoint", None).await.status(), 200);
    assert_eq!(call(&app, Some(&expiring), "GET", "/v1/ledger/checkpoint", None).await.status(), 200);

    let revoked = call(&app, Some(&app.admin_token), "DELETE", &format!("/v1/keys/{known_id}"), None).await;
    assert_eq!(revoked.status(), 200);
    assert!(json_of(revoked).await["revoked_at"].is_string());
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;

    let cases = [
        ("missing", None),
        ("malformed", Some("not-a-key".to_owned())),
        ("unknown", Some("tg_0123456789abcdef.nope".to_owned())),
        ("wrong secret", Some(format!("tg_{known_id}.wrong"))),
        ("expired", Some(expiring.clone())),
        ("revoked", Some(revocable.clone())),
    ];
    for (case, token) in cases {
        let response = call(&app, token.as_deref(), "GET", "/v1/ledger/checkpoint", None).await;
        assert_eq!(response.status(), 401, "{case}");
        let body = json_of(response).await;
        assert_eq!(body["error"]["code"], "unauthenticated", "{case}");
        assert!(!body["error"]["request_id"].as_str().unwrap().is_empty(), "{case}");
    }
    let expired = json_of(call(&app, Some(&expiring), "GET", "/v1/ledger/checkpoint", None).await).await;
    assert!(expired["error"]["message"].as_str().unwrap().contains("expired"), "{expired}");
    let again = call(&app, Some(&app.admin_token), "DELETE", &format!("/v1/keys/{known_id}"), None).await;
    assert_eq!(again.status(), 409);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_key_calls_only_the_systems_in_its_scopes() {
    let app = spawn_app().await;
    let scoped = app.issue_key(json!({"subject": "small-only", "roles": ["app"], "scopes": ["always-small"]})).await;
    let entries = app.ledger_count().await;

    let outside = call(&app, Some(&scoped), "POST", "/v1/chat/completions", Some(user_message("support-triage", "Hi"))).await;
    let inside = call(&app, Some(&scoped), "POST", "/v1/chat/completions", Some(user_message("always-small", "Hi"))).await;

    assert_eq!(outside.status(), 403);
    assert!(json_of(outside).await["error"]["message"].as_str().unwrap().contains("support-triage"));
    assert_eq!(inside.status(), 200);
    assert_eq!(app.ledger_count().await, entries + 1, "the refused request reached no tier");
}

#[tokio::test(flavor = "multi_thread")]
async fn four_eyes_follows_the_identity_behind_the_keys() {
    let app = spawn_app().await;
    let alice_writes = app.issue_key(json!({"subject": "alice", "roles": ["author"]})).await;
    let alice_approves = app.issue_key(json!({"subject": "alice", "roles": ["approver"]})).await;
    let bob_approves = app.issue_key(json!({"subject": "bob", "roles": ["approver"]})).await;
    let card: Value = yaml_serde::from_str(&SHIPPED_MODEL_CARD.replace("id: smollm2-135m-instruct", "id: four-eyes")).unwrap();
    assert_eq!(call(&app, Some(&alice_writes), "POST", "/v1/registry/model-cards", Some(card)).await.status(), 201);
    let approve = "/v1/registry/model-cards/four-eyes/versions/1/approve";

    let own = call(&app, Some(&alice_approves), "POST", approve, None).await;
    let other = call(&app, Some(&bob_approves), "POST", approve, None).await;

    assert_eq!(own.status(), 403, "another key of the same person is still the author");
    assert_eq!(json_of(own).await["error"]["code"], "four_eyes_required");
    assert_eq!(other.status(), 200);
    let events = json_of(app.get("/v1/ledger/entries?type=governance").await).await;
    let actors: Vec<&Value> = events["entries"].as_array().unwrap().iter().map(|e| &e["entry"]["actor"]).collect();
    assert_eq!(actors[0]["id"], "alice");
    assert_eq!(actors[1]["id"], "bob");
    let (bob_key_id, _) = bob_approves.trim_start_matches("tg_").split_once('.').unwrap();
    assert_eq!(actors[1]["key_id"], bob_key_id);
    assert_eq!(actors[1]["roles"], json!(["approver"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_caller_is_recorded_in_the_entry_and_handed_to_the_policy() {
    let app = spawn_app().await;
    let key = app.issue_key(json!({"subject": "billing-service", "roles": ["app"], "scopes": ["always-small", "support-triage"]})).await;
    let (key_id, _) = key.trim_start_matches("tg_").split_once('.').unwrap();

    let response = json_of(call(&app, Some(&key), "POST", "/v1/chat/completions", Some(user_message("always-small", "Hi"))).await).await;

    let entry = app.ledger_entry(response["tiergate"]["ledger_index"].as_u64().unwrap()).await;
    assert_eq!(entry["caller"], json!({"id": "billing-service", "key_id": key_id, "role": "app"}));
    let facts = &entry["route"]["input"]["request"];
    assert_eq!((facts["caller"].as_str(), facts["key_id"].as_str()), (Some("billing-service"), Some(key_id)));
    assert_eq!(facts["scopes"], json!(["always-small", "support-triage"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_over_its_rate_limit_gets_429_with_retry_after() {
    let app = spawn_app().await;
    let key = app.issue_key(json!({"subject": "bursty", "roles": ["app"], "rate_limit_per_minute": 1})).await;
    let ask = || call(&app, Some(&key), "POST", "/v1/chat/completions", Some(user_message("always-small", "Hi")));

    let first = ask().await;
    let second = ask().await;

    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 429);
    let retry_after: u64 = second.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(json_of(second).await["error"]["code"], "rate_limited");
    assert_eq!(app.chat(user_message("always-small", "Hi")).await.status(), 200, "limits are per key");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daily_token_budget_stops_inference_and_shows_in_the_api() {
    let app = spawn_app().await;
    let key = app.issue_key(json!({"subject": "frugal", "roles": ["app"], "daily_token_budget": 10})).await;
    let ask = || call(&app, Some(&key), "POST", "/v1/chat/completions", Some(user_message("always-small", "Name a colour.")));

    let first = json_of(ask().await).await;
    let me = json_of(call(&app, Some(&key), "GET", "/v1/keys/me", None).await).await;
    let refused = ask().await;

    let used = first["usage"]["total_tokens"].as_u64().unwrap();
    assert!(used > 10, "one request spends the whole budget ({used} tokens)");
    assert_eq!(me["tokens_used_today"], used);
    assert_eq!(me["tokens_left_today"], 0);
    assert_eq!(me["daily_token_budget"], 10);
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(json_of(refused).await["error"]["code"], "token_budget_exhausted");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_appears_in_logs_the_ledger_or_responses_after_creation() {
    if crate::BACKEND == crate::helpers::Backend::Postgres {
        return; // runs the binary on its default SQLite file: once is enough
    }
    let data_dir = std::env::temp_dir().join(format!("tiergate-secrets-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&data_dir).unwrap();
    let log = data_dir.join("stderr.log");
    let admin = "tg_00112233445566aa.bootstrap-secret-do-not-print";
    let server = crate::helpers::serve_binary(
        &[],
        &[("TIERGATE_DATA_DIR", data_dir.as_os_str()), ("TIERGATE_BOOTSTRAP_ADMIN_KEY", admin.as_ref()), ("RUST_LOG", "debug".as_ref())],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    let (address, printed) = (server.address.clone(), server.printed.clone());
    let client = reqwest::Client::new();

    let token = crate::helpers::issue_key_at(&client, &address, admin, json!({"subject": "svc", "roles": ["app"]})).await;
    let (key_id, secret) = token.trim_start_matches("tg_").split_once('.').unwrap();
    let served =
        client.post(format!("{address}/v1/chat/completions")).bearer_auth(&token).json(&user_message("support-triage", "Hi")).send().await.unwrap();
    let forbidden = client.get(format!("{address}/v1/keys")).bearer_auth(&token).send().await.unwrap();
    let auditor = crate::helpers::issue_key_at(&client, &address, admin, json!({"subject": "audit", "roles": ["auditor"]})).await;
    let mut seen = String::new();
    for (path, key) in [("/v1/keys", admin), ("/v1/keys/me", admin), (&format!("/v1/keys/{key_id}") as &str, admin), ("/v1/ledger/export", &auditor)]
    {
        let response = client.get(format!("{address}{path}")).bearer_auth(key).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        seen.push_str(&response.text().await.unwrap());
    }
    assert!(seen.contains(key_id), "the key is listed, by id");
    drop(server); // killed: the logs and the database are complete
    let logs = std::fs::read_to_string(&log).unwrap();
    let mut database = std::fs::read(data_dir.join("tiergate.db")).unwrap();
    database.extend(std::fs::read(data_dir.join("tiergate.db-wal")).unwrap_or_default());

    assert!(served.status().is_success(), "{}", served.status());
    assert_eq!(forbidden.status(), 403);
    assert!(!printed.contains("tg_"), "a supplied bootstrap key is not printed: {printed}");
    assert!(logs.contains(key_id), "refusals are logged with the key id");
    for (name, text) in [("logs", logs.as_str()), ("responses", seen.as_str()), ("stdout", printed.as_str())] {
        assert!(!text.contains(secret), "the new key's secret leaked into {name}");
        assert!(!text.contains("bootstrap-secret-do-not-print"), "the admin secret leaked into {name}");
    }
    let database = String::from_utf8_lossy(&database);
    assert!(!database.contains(secret), "only the hash of a secret is stored");
}
