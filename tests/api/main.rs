//! Black-box tests: the real app (real mistral.rs on the packaged model, real regorus, a real
//! SQLite file) started on port 0 and called over HTTP. One test binary for all API tests.

/// The backend this binary runs the suite on; `tests/postgres/main.rs` runs it on PostgreSQL.
pub const BACKEND: helpers::Backend = helpers::Backend::Sqlite;

mod access;
mod chat;
mod clients;
mod confidence;
mod console;
mod evidence;
mod experiments;
mod gemma;
mod helpers;
mod inference;
mod ledger;
mod observability;
mod operations;
mod policies;
mod registry;
mod startup;
mod witness;
