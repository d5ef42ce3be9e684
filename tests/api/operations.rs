//! Health, readiness, the OpenAPI document and the docs page.

use serde_json::Value;

use crate::helpers::spawn_app;

fn committed_openapi() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let generated = serde_json::to_value(tiergate::api::openapi_document()).unwrap();

    assert!(
        generated == committed_openapi(),
        "openapi/openapi.json is stale: run `cargo run -- openapi > openapi/openapi.json`"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_served_openapi_document_is_3_1_and_documents_the_chat_endpoint() {
    let app = spawn_app().await;

    let served: Value = app.get("/openapi.json").await.json().await.unwrap();

    assert!(served["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(served["paths"]["/v1/chat/completions"]["post"].is_object());
    assert_eq!(served, committed_openapi());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_docs_page_is_served_without_internet() {
    let app = spawn_app().await;

    let response = app.get("/docs/").await;

    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    // Vendored: the page loads its scripts from this server, not from a CDN.
    assert!(!html.contains("https://"), "{html}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness_report_the_loaded_systems() {
    let app = spawn_app().await;

    let health = app.get("/healthz").await;
    let ready = app.get("/readyz").await;

    assert_eq!(health.status(), 200);
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["database"], "ok");
    let systems: Vec<&str> = body["checks"]["systems"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert!(systems.contains(&"support-triage"), "{systems:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_paths_get_the_json_error_body_and_a_supplied_request_id_is_echoed() {
    let app = spawn_app().await;

    let response = app.client.get(format!("{}/v2/nothing", app.address)).header("x-request-id", "trace-42").send().await.unwrap();

    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["x-request-id"], "trace-42");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(body["error"]["request_id"], "trace-42");
}
