//! Black-box tests: the real app (real mistral.rs on the packaged model, real regorus, a real
//! SQLite file) started on port 0 and called over HTTP. One test binary for all API tests.

mod access;
mod chat;
mod helpers;
mod inference;
mod ledger;
mod observability;
mod operations;
mod policies;
mod postgres;
mod registry;
mod startup;
