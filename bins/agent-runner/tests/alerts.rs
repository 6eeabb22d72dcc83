//! The alert rules shipped in `deploy/agent-runner/alerts.yaml`: accepted by
//! `promtool check rules`, and identical to the block in
//! `docs/agent-runner.md`, so the two cannot drift.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::{families, is_sample_of};
use testkit::metrics_contract::{assert_promtool_accepts, repo_file};

#[test]
fn promtool_accepts_the_alert_rules() {
    assert_promtool_accepts("deploy/agent-runner/alerts.yaml");
}

#[test]
fn the_docs_show_exactly_the_shipped_alert_rules() {
    let rules = std::fs::read_to_string(repo_file("deploy/agent-runner/alerts.yaml")).unwrap();
    let docs = std::fs::read_to_string(repo_file("docs/agent-runner.md")).unwrap();
    let section = docs
        .split("### Alert rules")
        .nth(1)
        .expect("docs/agent-runner.md has an alert rules section");
    let block = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section has a yaml block");
    assert_eq!(block, rules, "docs/agent-runner.md and alerts.yaml differ");
}

#[test]
fn the_rules_and_the_docs_only_use_metrics_that_exist() {
    let rules = std::fs::read_to_string(repo_file("deploy/agent-runner/alerts.yaml")).unwrap();
    let docs = std::fs::read_to_string(repo_file("docs/agent-runner.md")).unwrap();
    for text in [&rules, &docs] {
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !word.starts_with("agent_runner_") {
                continue;
            }
            let known = families().iter().any(|family| is_sample_of(word, family));
            assert!(known, "{word} is not a metric the runner exposes");
        }
    }
    for family in families() {
        assert!(docs.contains(family), "{family} is not documented");
    }
}
