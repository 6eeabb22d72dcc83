//! The alert rules shipped in `deploy/recovery/alerts.yaml`: accepted by
//! `promtool check rules`, identical to the block in `docs/recovery.md`,
//! and naming only metrics the reconciler exposes — so the three cannot
//! drift apart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use prometheus_client::registry::Registry;
use recovery::Metrics;
use testkit::metrics_contract::{assert_promtool_accepts, repo_file};

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap()
}

/// The sample names the reconciler's metrics expose.
fn exposed() -> Vec<String> {
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("# TYPE ")
                .and_then(|rest| rest.split(' ').next())
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

#[test]
fn promtool_accepts_the_alert_rules() {
    assert_promtool_accepts("deploy/recovery/alerts.yaml");
}

#[test]
fn the_docs_show_exactly_the_shipped_alert_rules() {
    let rules = read("deploy/recovery/alerts.yaml");
    let docs = read("docs/recovery.md");
    let block = docs
        .split("### Alert rules")
        .nth(1)
        .and_then(|section| section.split("```yaml\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("docs/recovery.md has an alert rules section with a yaml block");
    assert_eq!(block, rules, "docs/recovery.md and alerts.yaml differ");
}

#[test]
fn the_rules_and_the_docs_name_only_metrics_that_exist_and_the_docs_name_them_all() {
    let families = exposed();
    assert!(families.len() >= 8, "{families:?}");
    let known = |word: &str| {
        families.iter().any(|family| {
            word == family
                || ["_total", "_bucket", "_sum", "_count", "_created"]
                    .iter()
                    .any(|suffix| word.strip_suffix(suffix) == Some(family.as_str()))
        })
    };
    for path in ["deploy/recovery/alerts.yaml", "docs/recovery.md"] {
        let text = read(path);
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("recovery_") {
                assert!(
                    known(word),
                    "{path}: {word} is not a metric recovery exposes"
                );
            }
        }
    }
    let docs = read("docs/recovery.md");
    for family in &families {
        assert!(docs.contains(family.as_str()), "{family} is not documented");
    }
}
