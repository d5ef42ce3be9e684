//! The black-box suite again, on PostgreSQL (127.0.0.1:5432, made sure of by .ci/run): the same
//! test modules as tests/api, compiled with `BACKEND = Postgres`, so each test runs on its own
//! freshly created database, dropped afterwards. Modules that do not touch the database
//! backend (operations, start-up) run once, in tests/api.

pub const BACKEND: helpers::Backend = helpers::Backend::Postgres;

#[path = "../api/access.rs"]
mod access;
#[path = "../api/chat.rs"]
mod chat;
#[path = "../api/confidence.rs"]
mod confidence;
#[path = "../api/experiments.rs"]
mod experiments;
#[path = "../api/helpers.rs"]
mod helpers;
#[path = "../api/inference.rs"]
mod inference;
#[path = "../api/ledger.rs"]
mod ledger;
#[path = "../api/observability.rs"]
mod observability;
#[path = "../api/policies.rs"]
mod policies;
#[path = "../api/registry.rs"]
mod registry;
mod replicas;
#[path = "../api/witness.rs"]
mod witness;
