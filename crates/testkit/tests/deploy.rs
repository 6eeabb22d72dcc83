//! What `deploy/` promises operators, checked where `kubectl`,
//! `kubernetes-validate` and `promtool` cannot: every alert carries a
//! summary, a description and a runbook entry that exists, and has a
//! promtool unit test that fires and one that stays quiet; the
//! PrometheusRule holds exactly the plain rules; every metric the rules and
//! dashboard name is owned by a binary and documented; only the binaries
//! that call the API server get a Role or a token; and every pod runs
//! restricted, probed as the seed asks, with a grace period longer than
//! its binary's drain.
#![cfg(feature = "kube")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml::Value;
use testkit::metrics_contract::{owners, repo_file, shipped_references};

/// The binaries deployed, and whether each calls the Kubernetes API.
const BINARIES: [(&str, bool); 5] = [
    ("sensor", true),
    ("controller", true),
    ("agent-runner", false),
    ("inference-worker", false),
    ("gateway", true),
];

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn documents(path: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(&read(path))
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

/// Every alerting rule of the plain rules file, by name.
fn alerts() -> BTreeMap<String, Value> {
    let rules: Value = serde_yaml::from_str(&read("deploy/monitoring/rules.yaml")).unwrap();
    let mut out = BTreeMap::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            if let Some(name) = rule["alert"].as_str() {
                assert!(
                    out.insert(name.to_owned(), rule.clone()).is_none(),
                    "{name} twice"
                );
            }
        }
    }
    assert!(out.len() >= 20, "{} alerts", out.len());
    out
}

#[test]
fn every_alert_has_a_summary_a_description_and_a_runbook_entry_that_exists() {
    let runbook = read("docs/runbook.md");
    let headings: BTreeSet<&str> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .collect();
    for (name, rule) in alerts() {
        let annotations = &rule["annotations"];
        for key in ["summary", "description"] {
            let text = annotations[key].as_str().unwrap_or_default();
            assert!(text.len() >= 20, "{name}: {key} {text:?}");
        }
        let url = annotations["runbook_url"].as_str().unwrap_or_default();
        let anchor = format!("docs/runbook.md#{}", name.to_lowercase());
        assert!(url.ends_with(&anchor), "{name}: runbook_url {url:?}");
        assert!(
            headings.contains(name.as_str()),
            "docs/runbook.md has no `## {name}` section"
        );
        assert!(
            ["warning", "critical"].contains(&rule["labels"]["severity"].as_str().unwrap()),
            "{name}: severity"
        );
    }
}

#[test]
fn every_alert_has_a_promtool_test_that_fires_and_one_that_stays_quiet() {
    let dir = repo_file("deploy/monitoring/tests");
    let mut fired = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let file: Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(file["rule_files"][0].as_str(), Some("../rules.yaml"));
        for test in file["tests"].as_sequence().unwrap() {
            for check in test["alert_rule_test"].as_sequence().unwrap() {
                let name = check["alertname"].as_str().unwrap().to_owned();
                let expected = check["exp_alerts"].as_sequence().unwrap();
                if expected.is_empty() {
                    quiet.insert(name);
                } else {
                    fired.insert(name);
                }
            }
        }
    }
    for name in alerts().keys() {
        assert!(fired.contains(name), "no promtool test makes {name} fire");
        assert!(quiet.contains(name), "no promtool test keeps {name} quiet");
    }
}

#[test]
fn the_prometheus_rule_holds_exactly_the_plain_rules() {
    let plain: Value = serde_yaml::from_str(&read("deploy/monitoring/rules.yaml")).unwrap();
    let operator: Value =
        serde_yaml::from_str(&read("deploy/monitoring/prometheusrule.yaml")).unwrap();
    assert_eq!(operator["kind"].as_str(), Some("PrometheusRule"));
    assert_eq!(operator["spec"]["groups"], plain["groups"]);
}

#[test]
fn every_metric_the_rules_and_dashboard_name_is_exported_by_a_binary_and_documented() {
    let docs = read("docs/metrics.md");
    let binaries: BTreeSet<&str> = BINARIES.iter().map(|(b, _)| *b).collect();
    let references = shipped_references().unwrap();
    assert!(references.len() >= 50, "{} references", references.len());
    for reference in references {
        let owned_by = owners(&reference.metric);
        assert!(
            !owned_by.is_empty(),
            "{} ({}: {}) is exported by no binary",
            reference.metric,
            reference.file,
            reference.context
        );
        assert!(owned_by.iter().all(|b| binaries.contains(b)));
        let family = ["_bucket", "_total", "_sum", "_count"]
            .iter()
            .find_map(|s| reference.metric.strip_suffix(s))
            .unwrap_or(&reference.metric);
        assert!(
            docs.contains(family),
            "docs/metrics.md does not document {family}"
        );
    }
}

#[test]
fn only_the_binaries_that_call_the_api_server_get_a_role_or_a_token() {
    for (binary, calls_kubernetes) in BINARIES {
        // The controller's crate may not be on this branch yet; its
        // manifest is checked once it is.
        let cargo = format!("bins/{binary}/Cargo.toml");
        if repo_file(&cargo).exists() {
            let depends_on_kube = read(&cargo)
                .lines()
                .take_while(|l| !l.starts_with("[dev-dependencies]"))
                .any(|l| l.starts_with("kube ") || l.starts_with("kube="));
            assert_eq!(
                depends_on_kube, calls_kubernetes,
                "{binary}'s kube dependency"
            );
        }
        let dir = repo_file(&format!("deploy/{binary}"));
        let mut kinds = BTreeSet::new();
        let mut service_account = None;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap() == "alerts.yaml"
                || path.file_name().unwrap() == "kustomization.yaml"
            {
                continue;
            }
            let relative = format!(
                "deploy/{binary}/{}",
                path.file_name().unwrap().to_string_lossy()
            );
            for doc in documents(&relative) {
                let kind = doc["kind"].as_str().unwrap().to_owned();
                if kind == "ServiceAccount" {
                    service_account = Some(doc.clone());
                }
                kinds.insert(kind);
            }
        }
        assert_eq!(
            kinds.contains("Role"),
            calls_kubernetes,
            "{binary}: a Role exactly when it calls the API server"
        );
        let account = service_account.unwrap_or_else(|| panic!("{binary} has a ServiceAccount"));
        assert_eq!(
            account["automountServiceAccountToken"]
                .as_bool()
                .unwrap_or(true),
            calls_kubernetes,
            "{binary}: a token mounted exactly when it calls the API server"
        );
    }
}

#[test]
fn every_pod_runs_restricted_probed_as_seeded_with_a_grace_period_past_its_drain() {
    for (binary, _) in BINARIES {
        let deployment = documents(&format!("deploy/{binary}/deployment.yaml"))
            .into_iter()
            .find(|d| d["kind"].as_str() == Some("Deployment"))
            .unwrap();
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault")
        );
        let container = &pod["containers"][0];
        let security = &container["securityContext"];
        assert_eq!(
            security["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{binary}"
        );
        assert_eq!(
            security["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{binary}"
        );
        assert_eq!(
            security["capabilities"]["drop"][0].as_str(),
            Some("ALL"),
            "{binary}"
        );
        for (probe, path, timing) in [
            ("livenessProbe", "/healthz", [10, 10, 3]),
            ("readinessProbe", "/readyz", [5, 5, 2]),
        ] {
            let p = &container[probe];
            assert_eq!(
                p["httpGet"]["path"].as_str(),
                Some(path),
                "{binary} {probe}"
            );
            let got = ["initialDelaySeconds", "periodSeconds", "failureThreshold"]
                .map(|k| p[k].as_u64().unwrap());
            assert_eq!(got, timing, "{binary} {probe}");
        }
        let requests = &container["resources"]["requests"];
        assert!(
            requests["memory"].is_string() && requests["cpu"].is_string(),
            "{binary}"
        );
        if binary == "sensor" {
            assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(2));
            for bound in ["requests", "limits"] {
                let r = &container["resources"][bound];
                assert_eq!(r["memory"].as_str(), Some("256Mi"), "sensor {bound}");
                assert_eq!(r["cpu"].as_str(), Some("300m"), "sensor {bound}");
            }
        }
        if binary == "controller" {
            assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(2));
        }
        // The drain the binary is told to take, plus the preStop pause.
        let drain: u64 = container["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter(|e| {
                e["name"].as_str().is_some_and(|n| {
                    n.ends_with("DRAIN_TIMEOUT_SECONDS") || n.ends_with("SHUTDOWN_TIMEOUT_SECONDS")
                })
            })
            .map(|e| e["value"].as_str().unwrap().parse::<u64>().unwrap())
            .sum();
        assert!(drain > 0, "{binary} is told its drain timeout");
        let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap_or(0);
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            grace > drain + pause,
            "{binary}: grace {grace} s is not past its drain {drain} s + preStop {pause} s"
        );
    }
}
