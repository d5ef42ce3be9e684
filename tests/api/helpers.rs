//! Starting a test app on its own data directory, and reading what it wrote.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};
use tiergate::{config::Settings, startup::Application, store::Store, telemetry};
use tokio::sync::Mutex;

/// The database backend a test binary runs the suite on (`crate::BACKEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

const POSTGRES_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// A fresh PostgreSQL database on the local server, dropped (with its connections) when this
/// goes away, so every test has its own and leaves nothing behind.
pub struct PgDatabase {
    name: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        let name = format!("tiergate_test_{}", uuid::Uuid::new_v4().simple());
        let admin = Store::connect(&format!("{POSTGRES_SERVER}/test")).await.expect("PostgreSQL runs on 127.0.0.1:5432 (see .ci/run)");
        // The name is generated above from a UUID: nothing from outside reaches this statement.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(admin.pool()).await.unwrap();
        PgDatabase { name }
    }

    pub fn url(&self) -> String {
        format!("{POSTGRES_SERVER}/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async move {
                let admin = Store::connect(&format!("{POSTGRES_SERVER}/test")).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(admin.pool()).await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

/// Removes the trigger that refuses `UPDATE` (or `DELETE`) on ledger rows, as an attacker with
/// database access could; the trigger layout differs per backend.
pub async fn drop_ledger_guard(store: &Store, operation: &str) {
    drop_append_only_guard(store, "ledger_entries", operation).await;
}

/// `drop_ledger_guard` for any append-only table (`ledger_entries`, `ledger_hashes`, `ledger_checkpoints`).
pub async fn drop_append_only_guard(store: &Store, table: &str, operation: &str) {
    let statement = match crate::BACKEND {
        Backend::Sqlite => format!("DROP TRIGGER IF EXISTS {table}_are_append_only_{operation}"),
        Backend::Postgres => format!("DROP TRIGGER IF EXISTS {table}_are_append_only ON {table}"),
    };
    sqlx::query(sqlx::AssertSqlSafe(statement)).execute(store.pool()).await.unwrap();
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub settings: Settings,
    /// The bootstrap admin key (installed from the settings, as an automated deployment would).
    pub admin_token: String,
    /// An `app` key for every system: what `chat` and `post_raw` send.
    pub app_token: String,
    /// An `auditor` key: what `get` sends.
    pub auditor_token: String,
    /// Keys of people by subject (author + approver + auditor), issued on first use.
    people: Mutex<HashMap<String, String>>,
    /// The test's own PostgreSQL database, when the suite runs on PostgreSQL.
    _database: Option<PgDatabase>,
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
        bootstrap_admin_key: Some(tiergate::access::new_token().unwrap()),
        ..Settings::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(test_settings()).await
}

pub async fn spawn_app_with(mut settings: Settings) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        telemetry::init();
    }
    let database = match (crate::BACKEND, &settings.database_url) {
        (Backend::Postgres, None) => {
            let database = PgDatabase::create().await;
            settings.database_url = Some(database.url());
            Some(database)
        }
        _ => None,
    };
    let app = Application::build(settings.clone()).await.expect("the application builds");
    let address = format!("http://{}", app.address());
    tokio::spawn(app.run_until_stopped());
    let admin_token = settings.bootstrap_admin_key.clone().expect("test settings carry an admin key");
    let mut app = TestApp {
        address,
        client: reqwest::Client::new(),
        settings,
        admin_token,
        app_token: String::new(),
        auditor_token: String::new(),
        people: Mutex::new(HashMap::new()),
        _database: database,
    };
    app.app_token = app.issue_key(json!({"subject": "test-app", "roles": ["app"]})).await;
    app.auditor_token = app.issue_key(json!({"subject": "test-auditor", "roles": ["auditor"]})).await;
    app
}

/// Issues a key at the gateway at `address` with an admin key; returns its token.
pub async fn issue_key_at(client: &reqwest::Client, address: &str, admin_token: &str, request: Value) -> String {
    let response = client.post(format!("{address}/v1/keys")).bearer_auth(admin_token).json(&request).send().await.expect("request is sent");
    assert_eq!(response.status(), 201, "issuing {request}");
    let body: Value = response.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

/// `tiergate serve` as a process: killed (SIGKILL) when dropped, so a failing test leaves none.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub address: String,
    /// What it printed on stdout before it listened (the first admin key, on a first start).
    pub printed: String,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary with `args` and `envs` (from the repository, port 0 unless `args` say
/// otherwise) and waits until it prints the address it listens on.
pub fn serve_binary(args: &[&std::ffi::OsStr], envs: &[(&str, &std::ffi::OsStr)], stderr: std::process::Stdio) -> ServeProcess {
    use std::io::BufRead;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tiergate"));
    command.arg("serve").args(args).env("TIERGATE_BIND", "127.0.0.1:0").current_dir(env!("CARGO_MANIFEST_DIR"));
    for (name, value) in envs {
        command.env(name, value);
    }
    let mut child = command.stdout(std::process::Stdio::piped()).stderr(stderr).spawn().expect("the binary starts");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (mut printed, mut line) = (String::new(), String::new());
    while stdout.read_line(&mut line).unwrap() > 0 && !line.starts_with("tiergate listening on ") {
        printed.push_str(&line);
        line.clear();
    }
    let address = line.trim().strip_prefix("tiergate listening on ").unwrap_or_default().to_owned();
    ServeProcess { child, address, printed }
}

impl TestApp {
    /// Issues a key with the admin key and returns its token.
    pub async fn issue_key(&self, request: Value) -> String {
        issue_key_at(&self.client, &self.address, &self.admin_token, request).await
    }

    /// The key of a person (author, approver and auditor), issued on first use.
    pub async fn token(&self, subject: &str) -> String {
        if let Some(token) = self.people.lock().await.get(subject) {
            return token.clone();
        }
        let token = self.issue_key(json!({"subject": subject, "roles": ["author", "approver", "auditor"]})).await;
        self.people.lock().await.insert(subject.to_owned(), token.clone());
        token
    }

    pub async fn chat(&self, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/chat/completions", self.address))
            .bearer_auth(&self.app_token)
            .json(&body)
            .send()
            .await
            .expect("request is sent")
    }

    pub async fn post_raw(&self, path: &str, body: &'static str) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .bearer_auth(&self.app_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request is sent")
    }

    /// A POST made by the person `actor` (with their key), with a text body.
    pub async fn post_as(&self, actor: &str, path: &str, content_type: &str, body: String) -> reqwest::Response {
        let token = self.token(actor).await;
        self.client
            .post(format!("{}{path}", self.address))
            .bearer_auth(token)
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
        self.post_as(actor, &format!("/v1/registry/{collection}/{id}/versions/{version}/{step}"), "application/json", String::new()).await
    }

    /// A GET with the auditor key.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.get_with(&self.auditor_token, path).await
    }

    pub async fn get_with(&self, token: &str, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.address)).bearer_auth(token).send().await.expect("request is sent")
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
