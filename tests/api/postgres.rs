//! The whole path on PostgreSQL (127.0.0.1:5432, started by .ci/run): each test gets its own
//! database, dropped afterwards.

use serde_json::{Value, json};
use tiergate::{ledger::verify_export, store::Store};

use crate::helpers::{spawn_app_with, test_settings, user_message};

const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// A fresh database on the local server, dropped (with its connections) when this goes away.
struct PgDatabase {
    name: String,
}

impl PgDatabase {
    async fn create() -> PgDatabase {
        let name = format!("tiergate_test_{}", uuid::Uuid::new_v4().simple());
        let admin = Store::connect(&format!("{SERVER}/test")).await.expect("PostgreSQL runs on 127.0.0.1:5432 (see .ci/run)");
        // The name is generated above from a UUID: nothing from outside reaches this statement.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(admin.pool()).await.unwrap();
        PgDatabase { name }
    }

    fn url(&self) -> String {
        format!("{SERVER}/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async move {
                let admin = Store::connect(&format!("{SERVER}/test")).await?;
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

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_serves_governs_and_keeps_a_verifiable_ledger_on_postgresql() {
    let database = PgDatabase::create().await;
    let mut settings = test_settings();
    settings.database_url = Some(database.url());
    let app = spawn_app_with(settings).await;

    let small: Value = app.chat(user_message("always-small", "Name a colour.")).await.json().await.unwrap();
    let escalated: Value = app.chat(user_message("escalate-once", "Name a colour.")).await.json().await.unwrap();
    let card = include_str!("../../model-cards/smollm2-135m-instruct.yaml").replace("id: smollm2-135m-instruct", "id: on-postgres");
    let submitted = app.submit("alice", "model-cards", &card).await;
    let approved = app.lifecycle("bob", "model-cards", "on-postgres", 1, "approve").await;
    let (export, key) = (
        app.get("/v1/ledger/export").await.text().await.unwrap(),
        app.get("/v1/ledger/public-key").await.text().await.unwrap(),
    );
    let verified: Value = app.get("/v1/ledger/verify").await.json().await.unwrap();
    let store = app.store().await;
    let update = sqlx::query("UPDATE ledger_entries SET outcome = 'denied' WHERE idx = 0").execute(store.pool()).await;

    assert_eq!((small["tiergate"]["tier_served"].as_u64(), small["tiergate"]["ledger_index"].as_u64()), (Some(0), Some(0)));
    assert_eq!(escalated["tiergate"]["tier_served"], 1);
    assert_eq!(submitted.status(), 201);
    assert_eq!(approved.status(), 200);
    assert_eq!(verify_export(&export, &key, None).map(|v| v.tree_size), Ok(4), "2 answers + 2 governance events");
    assert_eq!(verified["verified"], json!(true), "{verified}");
    assert!(update.unwrap_err().to_string().contains("append-only"), "the triggers guard PostgreSQL too");
    let versions: Value = app.get("/v1/registry/model-cards/on-postgres/versions").await.json().await.unwrap();
    assert_eq!(versions["versions"][0]["status"], "approved");
}
