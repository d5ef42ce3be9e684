//! Starting a test app on its own data directory, and reading what it wrote.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tiergate::{config::Settings, startup::Application, store::Store, telemetry};

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub settings: Settings,
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Settings for a fresh app: its own data directory (hence its own SQLite file), the shipped
/// cards plus the test fixtures, and the shared model cache (the first run fetches the model).
pub fn test_settings() -> Settings {
    let data_dir = std::env::temp_dir().join(format!("tiergate-test-{}", uuid::Uuid::new_v4()));
    Settings {
        bind: "127.0.0.1:0".into(),
        data_dir,
        cards_dirs: vec![repo("model-cards"), repo("tests/fixtures/cards")],
        policies_dir: repo("policies"),
        ..Settings::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(test_settings()).await
}

pub async fn spawn_app_with(settings: Settings) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        telemetry::init();
    }
    let app = Application::build(settings.clone()).await.expect("the application builds");
    let address = format!("http://{}", app.address());
    tokio::spawn(app.run_until_stopped());
    TestApp { address, client: reqwest::Client::new(), settings }
}

impl TestApp {
    pub async fn chat(&self, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/chat/completions", self.address))
            .json(&body)
            .send()
            .await
            .expect("request is sent")
    }

    pub async fn post_raw(&self, path: &str, body: &'static str) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request is sent")
    }

    /// A POST made by `actor` (the `X-Tiergate-Actor` header), with a text body.
    pub async fn post_as(&self, actor: &str, path: &str, content_type: &str, body: String) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .header("x-tiergate-actor", actor)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request is sent")
    }

    /// Submits a YAML card as `actor` to `collection` (`model-cards` or `system-cards`).
    pub async fn submit(&self, actor: &str, collection: &str, yaml: &str) -> reqwest::Response {
        self.post_as(actor, &format!("/v1/registry/{collection}"), "application/yaml", yaml.to_owned()).await
    }

    /// A lifecycle step (`approve`, `activate`, `retire`) on a version, as `actor`.
    pub async fn lifecycle(&self, actor: &str, collection: &str, id: &str, version: i64, step: &str) -> reqwest::Response {
        self.post_as(actor, &format!("/v1/registry/{collection}/{id}/versions/{version}/{step}"), "application/json", String::new())
            .await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.address)).send().await.expect("request is sent")
    }

    /// A separate connection to the app's database, as an auditor or operator would open it.
    pub async fn store(&self) -> Store {
        Store::connect(&self.settings.effective_database_url()).await.expect("database opens")
    }

    pub async fn ledger_entry(&self, index: u64) -> Value {
        let text = self.store().await.ledger_entry(index as i64).await.unwrap().expect("entry exists");
        serde_json::from_str(&text).unwrap()
    }

    pub async fn ledger_count(&self) -> i64 {
        self.store().await.ledger_count().await.unwrap()
    }
}

pub fn user_message(system: &str, text: &str) -> Value {
    serde_json::json!({"model": system, "messages": [{"role": "user", "content": text}]})
}
