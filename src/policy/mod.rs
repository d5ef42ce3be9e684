//! Rego policy bundles (regorus): load, compile once per version, evaluate the gates failing closed, run tests.

mod bundle;
mod engine;
mod testing;

pub use bundle::BundleSource;
pub use engine::{CompiledBundle, Gate, GateDecision};
pub use testing::{TestOutcome, TestResult};
