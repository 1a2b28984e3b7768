//! The alert rules (charts/logroute/files/alerts.yaml, which the chart's PrometheusRule
//! embeds unchanged) pass `promtool check rules`, and `promtool test rules` runs
//! tests/alerts/alerts_test.yaml: for every alert, series that fire it and series that
//! must not. Every alert has a runbook section in docs/alerts.md.

mod support;

use std::path::Path;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

const RULES: &str = "charts/logroute/files/alerts.yaml";

fn alert_names() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join(RULES)).expect("read the rules file");
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).expect("rules file is YAML");
    rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|r| r["alert"].as_str().map(String::from))
        .collect()
}

#[test]
fn rules_pass_promtool_check_and_unit_tests() {
    let rules = repo().join(RULES);
    if !support::promtool::run(&["check", "rules", rules.to_str().expect("UTF-8 path")]) {
        return;
    }
    let cases = repo().join("tests/alerts/alerts_test.yaml");
    support::promtool::run(&["test", "rules", cases.to_str().expect("UTF-8 path")]);
}

#[test]
fn every_alert_is_unit_tested_and_has_a_runbook() {
    let names = alert_names();
    assert!(names.len() >= 6, "{names:?}");
    let cases = std::fs::read_to_string(repo().join("tests/alerts/alerts_test.yaml"))
        .expect("read the rule tests");
    let runbooks = std::fs::read_to_string(repo().join("docs/alerts.md")).expect("docs/alerts.md");
    for name in &names {
        assert!(
            cases.contains(&format!("alertname: {name}")),
            "{name} has no promtool test case"
        );
        assert!(
            runbooks.contains(&format!("## {name}")),
            "docs/alerts.md has no `## {name}` runbook section"
        );
        let anchor = format!("docs/alerts.md#{}", name.to_lowercase());
        let text = std::fs::read_to_string(repo().join(RULES)).expect("rules");
        assert!(
            text.contains(&anchor),
            "{name}'s runbook annotation does not point at {anchor}"
        );
    }
}
