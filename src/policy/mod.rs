//! Rego policy bundles (regorus): load, compile once per version, evaluate the gates failing closed, run tests.

mod bundle;
mod engine;
mod replay;
mod testing;

pub use bundle::BundleSource;
pub use engine::{CompileError, CompiledBundle, Gate, GateDecision};
pub use replay::{DecisionPath, ReplayReport, RequestDifference, Step, TierPrices, Totals, replay, shadow_report};
pub use testing::{ModuleCoverage, TestOutcome, TestReport, TestResult};
