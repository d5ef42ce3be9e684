//! The bundle test runner: evaluates every `test_*` rule of the `*_test.rego` modules.

use serde::Serialize;

use super::{bundle::BundleSource, engine::CompiledBundle};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TestOutcome {
    Pass,
    Fail,
    Error,
}

#[derive(Debug, Clone, Serialize)]
pub struct TestResult {
    pub module: String,
    pub name: String,
    pub outcome: TestOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CompiledBundle {
    /// Runs every test rule of `source` (which must be the source this bundle was compiled from).
    /// regorus has no test runner, so test rules are found in the module text: a line that
    /// starts with `test_<name>` declares one (the convention `opa test` uses too).
    pub fn run_tests(&self, source: &BundleSource) -> Vec<TestResult> {
        let mut results = Vec::new();
        for (module, text) in source.modules.iter().filter(|(name, _)| name.ends_with("_test.rego")) {
            let Some(package) = text
                .lines()
                .find_map(|line| line.trim().strip_prefix("package "))
                .map(|p| p.trim().to_owned())
            else {
                continue;
            };
            let mut names: Vec<String> = text
                .lines()
                .filter_map(|line| {
                    let name: String = line
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    name.starts_with("test_").then_some(name)
                })
                .collect();
            names.dedup();
            for name in names {
                let (outcome, error) = match self.eval_rule(&format!("data.{package}.{name}")) {
                    Ok(regorus::Value::Bool(true)) => (TestOutcome::Pass, None),
                    Ok(_) => (TestOutcome::Fail, None),
                    Err(error) => (TestOutcome::Error, Some(error)),
                };
                results.push(TestResult { module: module.clone(), name, outcome, error });
            }
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use super::*;
    use crate::registry::ArtifactRef;

    #[test]
    fn the_shipped_bundle_passes_its_own_tests() {
        let source = BundleSource::from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/tiergate-default")).unwrap();
        let bundle = CompiledBundle::compile(&source, ArtifactRef::parse("tiergate-default@1").unwrap(), "d".into(), Duration::from_millis(200)).unwrap();

        let results = bundle.run_tests(&source);

        assert!(results.len() >= 5, "{results:?}");
        let failures: Vec<_> = results.iter().filter(|r| r.outcome != TestOutcome::Pass).collect();
        assert!(failures.is_empty(), "{failures:?}");
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
