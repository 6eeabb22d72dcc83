//! The metric contract for the controller, a stand-in until the controller
//! binary lands: a registry composed of what the controller composes — the
//! reconciler's metrics, the saga's and coordinator's with the `kubernetes`
//! and `github` circuit breakers, the lease lock's and the state store's —
//! with one cancellation run through it (so that the families that only
//! have series once something happened have them) must export every metric
//! the shipped alert rules and dashboard expect from the controller (see `testkit::metrics_contract`). Once
//! `bins/controller/tests/metric_contract.rs` scrapes `controller --dev`,
//! this file goes. The breakers are the design's (circuit breakers around
//! Kubernetes and GitHub in the coordinator): a controller whose saga is
//! built without `.breakers(…)` exports no `cancel_coordinator_circuit_breaker_*`
//! and fails its own contract test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use cancel_coordinator::{CancellationRequest, MemoryWorkloads, StateAwareCancellation};
use jiff::Timestamp;
use label_cas::{MemoryPullRequests, PrRef};
use lease_lock::{LeaseLock, LockConfig, MemoryLeases};
use prometheus_client::registry::Registry;
use resilience::BreakerPolicy;
use state_store::{MemoryBackend, StateStore};
use testkit::metrics_contract::check_exported;

#[tokio::test]
async fn every_metric_the_rules_and_dashboard_expect_from_the_controller_is_in_what_it_composes() {
    let lock = LeaseLock::new(
        MemoryLeases::new(),
        LockConfig {
            prefix: "cancel".to_owned(),
            ..LockConfig::new("controller-0", "default")
        },
    )
    .unwrap();
    let store = StateStore::new(MemoryBackend::new());
    let github = Arc::new(MemoryPullRequests::new());
    let mut registry = Registry::default();
    lock.metrics().register(&mut registry);
    store.register(&mut registry);
    recovery::Metrics::default().register(&mut registry);
    let saga = StateAwareCancellation::builder(
        lock,
        store,
        Arc::new(MemoryWorkloads::new()),
        github.clone(),
        github.labels().clone(),
    )
    .breakers(BreakerPolicy::default())
    .build()
    .unwrap();
    saga.register(&mut registry);
    let pr = PrRef::new("acme", "widgets", 7).unwrap();
    let head = "2222222222222222222222222222222222222222";
    // Whatever its outcome (no pull request is known), it takes the lock
    // and reads the state.
    let _outcome = saga
        .run(&CancellationRequest::push(
            "task-1",
            pr,
            head,
            Timestamp::now(),
        ))
        .await;
    let mut exposition = String::new();
    prometheus_client::encoding::text::encode(&mut exposition, &registry).unwrap();

    assert!(
        exposition.contains("lease_lock_acquisitions_total 1"),
        "{exposition}"
    );
    if let Err(broken) = check_exported("controller", &exposition, 20) {
        panic!("{broken}");
    }
}
