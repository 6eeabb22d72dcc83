//! The alert rules shipped in `deploy/agent-runner/alerts.yaml`: accepted by
//! `promtool check rules`, and identical to the block in
//! `docs/agent-runner.md`, so the two cannot drift.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{families, is_sample_of};

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let rules = repo_file("deploy/agent-runner/alerts.yaml");
    let output = match Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
    {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "promtool is not on PATH: skipping `promtool check rules` (CI installs Debian's prometheus package)"
            );
            return;
        }
        Err(error) => panic!("cannot run promtool: {error}"),
    };
    assert!(
        output.status.success(),
        "promtool rejected {}:\n{}{}",
        rules.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
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
