//! The bundle test runner: evaluates every `test_*` rule of the `*_test.rego` modules.

use serde::Serialize;

use super::{bundle::BundleSource, engine::CompiledBundle};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TestOutcome {
    Pass,
    Fail,
    Error,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TestResult {
    pub module: String,
    pub name: String,
    pub outcome: TestOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Line coverage of one policy module by the bundle's tests.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModuleCoverage {
    pub module: String,
    /// Lines with evaluable code that some test evaluated (1-based).
    pub covered_lines: Vec<u32>,
    /// Lines with evaluable code that no test evaluated.
    pub not_covered_lines: Vec<u32>,
    /// covered / (covered + not covered), in percent; 100 for a module with nothing to evaluate.
    pub percent: f64,
}

/// Every test's outcome plus line coverage of the non-test modules.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TestReport {
    pub passed: usize,
    pub failed: usize,
    pub errors: usize,
    pub results: Vec<TestResult>,
    pub coverage: Vec<ModuleCoverage>,
}

impl TestReport {
    pub fn all_passed(&self) -> bool {
        self.failed == 0 && self.errors == 0 && self.passed > 0
    }

    /// The tests that did not pass, one phrase each.
    pub fn failures(&self) -> Vec<String> {
        self.results
            .iter()
            .filter(|t| t.outcome != TestOutcome::Pass)
            .map(|t| {
                let error = t.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default();
                format!("{}: {} ({:?}{error})", t.module, t.name, t.outcome)
            })
            .collect()
    }
}

impl CompiledBundle {
    /// Runs every test rule of `source` (which must be the source this bundle was compiled from).
    pub fn run_tests(&self, source: &BundleSource) -> Vec<TestResult> {
        self.test_report(source).results
    }

    /// Runs every test rule and measures line coverage. regorus has no test runner, so test
    /// rules are found in the module text: a line that starts with `test_<name>` declares one
    /// (the convention `opa test` uses too). All tests run on one engine with coverage on, so
    /// the report is the union of what they evaluated.
    pub fn test_report(&self, source: &BundleSource) -> TestReport {
        let mut engine = self.engine_for_tests();
        let mut results = Vec::new();
        for (module, text) in source.modules.iter().filter(|(name, _)| is_test_module(name)) {
            let Some(package) = text.lines().find_map(|line| line.trim().strip_prefix("package ")).map(|p| p.trim().to_owned()) else {
                continue;
            };
            let mut names: Vec<String> = text
                .lines()
                .filter_map(|line| {
                    let name: String = line.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    name.starts_with("test_").then_some(name)
                })
                .collect();
            names.dedup();
            for name in names {
                let (outcome, error) = match engine.eval_rule(format!("data.{package}.{name}")) {
                    Ok(regorus::Value::Bool(true)) => (TestOutcome::Pass, None),
                    Ok(_) => (TestOutcome::Fail, None),
                    Err(error) => (TestOutcome::Error, Some(error.to_string())),
                };
                results.push(TestResult { module: module.clone(), name, outcome, error });
            }
        }
        let coverage = coverage(&engine, source);
        let count = |outcome| results.iter().filter(|r| r.outcome == outcome).count();
        TestReport { passed: count(TestOutcome::Pass), failed: count(TestOutcome::Fail), errors: count(TestOutcome::Error), results, coverage }
    }
}

fn is_test_module(name: &str) -> bool {
    name.ends_with("_test.rego")
}

fn coverage(engine: &regorus::Engine, source: &BundleSource) -> Vec<ModuleCoverage> {
    let report = engine.get_coverage_report().map(|r| r.files).unwrap_or_default();
    source
        .modules
        .keys()
        .filter(|name| !is_test_module(name))
        .map(|module| {
            // regorus leaves out modules no evaluation touched: those are entirely uncovered,
            // which an empty report cannot show line by line, so they count as 0%.
            match report.iter().find(|file| &file.path == module) {
                Some(file) => {
                    let covered: Vec<u32> = file.covered.iter().copied().collect();
                    let not_covered: Vec<u32> = file.not_covered.iter().copied().collect();
                    let total = covered.len() + not_covered.len();
                    let percent = if total == 0 { 100.0 } else { (covered.len() as f64 * 1000.0 / total as f64).round() / 10.0 };
                    ModuleCoverage { module: module.clone(), covered_lines: covered, not_covered_lines: not_covered, percent }
                }
                None => ModuleCoverage { module: module.clone(), covered_lines: Vec::new(), not_covered_lines: Vec::new(), percent: 0.0 },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use super::*;
    use crate::registry::ArtifactRef;

    #[test]
    fn the_shipped_bundle_passes_its_own_tests() {
        let source = BundleSource::from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/tiergate-default")).unwrap();
        let bundle =
            CompiledBundle::compile(&source, ArtifactRef::parse("tiergate-default@1").unwrap(), "d".into(), Duration::from_millis(200)).unwrap();

        let report = bundle.test_report(&source);

        assert!(report.results.len() >= 5, "{report:?}");
        assert!(report.all_passed(), "{:?}", report.failures());
        let routing = report.coverage.iter().find(|c| c.module == "routing.rego").expect("routing.rego is covered");
        assert!(routing.percent > 80.0, "{routing:?}");
        assert!(report.coverage.iter().all(|c| !c.module.ends_with("_test.rego")));
    }

    #[test]
    fn coverage_shows_lines_no_test_reaches() {
        let source = BundleSource {
            id: "t".into(),
            modules: [
                ("p.rego".to_owned(), "package tiergate\n\nimport rego.v1\n\nx := 1\n\ny := 2 if {\n\tinput.never\n}\n".to_owned()),
                ("p_test.rego".to_owned(), "package tiergate_test\n\nimport rego.v1\n\ntest_x if data.tiergate.x == 1\n".to_owned()),
            ]
            .into(),
            data: serde_json::json!({}),
        };
        let bundle = CompiledBundle::compile(&source, ArtifactRef::parse("t@1").unwrap(), "d".into(), Duration::from_millis(200)).unwrap();

        let report = bundle.test_report(&source);

        assert!(report.all_passed());
        let module = &report.coverage[0];
        assert_eq!(module.module, "p.rego");
        assert!(module.covered_lines.contains(&5), "{module:?}");
        assert!(module.not_covered_lines.contains(&8), "{module:?}");
        assert!(module.percent < 100.0);
    }

    #[test]
    fn a_failing_test_is_reported_as_failing() {
        let source = BundleSource {
            id: "t".into(),
            modules: [
                ("p.rego".to_owned(), "package tiergate\nx := 1\n".to_owned()),
                ("p_test.rego".to_owned(), "package tiergate_test\ntest_one if data.tiergate.x == 1\ntest_two if data.tiergate.x == 2\n".to_owned()),
            ]
            .into(),
            data: serde_json::json!({}),
        };
        let bundle = CompiledBundle::compile(&source, ArtifactRef::parse("t@1").unwrap(), "d".into(), Duration::from_millis(200)).unwrap();

        let results = bundle.run_tests(&source);

        let outcomes: Vec<(&str, TestOutcome)> = results.iter().map(|r| (r.name.as_str(), r.outcome)).collect();
        assert_eq!(outcomes, vec![("test_one", TestOutcome::Pass), ("test_two", TestOutcome::Fail)]);
    }
}
