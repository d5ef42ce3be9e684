//! tiergate: a governance gateway and registry for tiered (small-model-first) LLM inference.

pub mod access;
pub mod api;
pub mod canonical;
pub mod confidence;
pub mod config;
pub mod console;
pub mod error;
pub mod evidence;
pub mod experiment;
pub mod inference;
pub mod ledger;
pub mod metrics;
pub mod policy;
pub mod registry;
pub mod routing;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod witness;
