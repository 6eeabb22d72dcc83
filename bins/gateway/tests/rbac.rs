//! deploy/gateway/rbac.yaml grants exactly what the gateway calls: its
//! flows (creates, duplicates, contention between two replicas, count
//! conflicts) run against FakeKube, and every (group, resource, verb) in
//! the request log must be granted by the Role, and every grant used —
//! except `list` on Leases, which a Lease watch needs only when its
//! resourceVersion expired (a 410) and it must relist.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use support::{fake_kube, http, kube_replicas, post, signal};
use testkit::faults::Match;

type Grant = (String, String, String);

fn granted() -> BTreeSet<Grant> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/gateway/rbac.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut grants = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc).unwrap();
        if value["kind"] != "Role" {
            continue;
        }
        for rule in value["rules"].as_sequence().unwrap() {
            for group in rule["apiGroups"].as_sequence().unwrap() {
                for resource in rule["resources"].as_sequence().unwrap() {
                    for verb in rule["verbs"].as_sequence().unwrap() {
                        grants.insert((
                            group.as_str().unwrap().to_owned(),
                            resource.as_str().unwrap().to_owned(),
                            verb.as_str().unwrap().to_owned(),
                        ));
                    }
                }
            }
        }
    }
    grants
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_role_grants_exactly_the_calls_the_gateway_makes() {
    let kube = fake_kube().await;
    kube.faults()
        .latency(Match::any(), Duration::from_millis(2), Duration::ZERO);
    let replicas = kube_replicas(&kube, 2).await;
    let client = http();
    let mut deliveries = Vec::new();
    for d in 0..20 {
        let (client, url) = (client.clone(), replicas[d % 2].url("/api/v1/signals"));
        deliveries.push(tokio::spawn(async move {
            post(&client, &url, signal("fp-rbac")).await.0
        }));
    }
    for delivery in deliveries {
        assert!(matches!(delivery.await.unwrap(), 201 | 202));
    }
    let used: BTreeSet<Grant> = kube
        .requests()
        .entries()
        .into_iter()
        .filter(|r| !r.group.is_empty() || r.resource != "discovery")
        .map(|r| (r.group, r.resource, r.verb))
        .collect();
    let granted = granted();
    let missing: Vec<_> = used.difference(&granted).collect();
    assert!(missing.is_empty(), "called but not granted: {missing:?}");
    let unused: Vec<_> = granted
        .difference(&used)
        .filter(|(g, r, v)| {
            (g.as_str(), r.as_str(), v.as_str()) != ("coordination.k8s.io", "leases", "list")
        })
        .collect();
    assert!(unused.is_empty(), "granted but never called: {unused:?}");
}
