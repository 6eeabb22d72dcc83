//! deploy/gateway/rbac.yaml grants exactly what the gateway calls: its
//! flows (creates, duplicates, contention between two replicas, count
//! conflicts) run against FakeKube, and every (group, resource, verb) in
//! the request log must be granted by the Role, and every grant used —
//! except `list` on Leases, which a Lease watch needs only when its
//! resourceVersion expired (a 410) and it must relist.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::{fake_kube, http, kube_replicas, post, signal};
use testkit::faults::Match;
use testkit::kube::rbac::{Permission, RbacDiff, role_permissions, used_permissions};
use testkit::metrics_contract::repo_file;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_role_grants_exactly_the_calls_the_gateway_makes() {
    let kube = fake_kube().await;
    kube.faults()
        .latency(Match::any(), Duration::from_millis(2), Duration::ZERO);
    // A slow create keeps the other replica waiting on the creation lock
    // (its watch), and a slow count write lets the other replica read the
    // request before the count lands, so that its own count conflicts and
    // re-reads: every call of the contended path, whatever the timing.
    kube.faults().latency(
        Match::any().verb("create").resource("remediationrequests"),
        Duration::from_millis(100),
        Duration::ZERO,
    );
    kube.faults().latency(
        Match::any()
            .verb("patch")
            .resource("remediationrequests/status"),
        Duration::from_millis(50),
        Duration::ZERO,
    );
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
    for replica in &replicas {
        replica.gateway.settled().await;
    }
    let log = kube.requests().entries();
    let used = used_permissions(&log);
    let manifest = std::fs::read_to_string(repo_file("deploy/gateway/rbac.yaml")).unwrap();
    let granted = role_permissions(&manifest, "gateway").unwrap();
    let mut diff = RbacDiff::between(&granted, &used);
    // Granted for the relist after a 410 (see the module docs), which these
    // flows do not provoke.
    assert!(
        diff.unused
            .remove(&Permission::new("coordination.k8s.io", "leases", "list")),
        "the Role no longer grants the relist's list on leases"
    );
    assert!(
        diff.is_exact(),
        "deploy/gateway/rbac.yaml is not what the gateway calls:\n{diff}"
    );
}
