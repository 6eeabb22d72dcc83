#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! FakeKube's fault injection and call counters, as the real `kube::Client`
//! sees them.

#![cfg(feature = "kube")]

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Error;
use kube::api::{Api, PostParams};
use support::{client_without_retry, config_map};
use testkit::calls::Outcome;
use testkit::faults::{InjectedError, Match};
use testkit::kube::FakeKube;

/// Guard against hanging forever; never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(10);

fn lease(name: &str) -> Lease {
    let mut l = Lease::default();
    l.metadata.name = Some(name.to_owned());
    l
}

fn api_status(err: Error) -> (u16, String) {
    match err {
        Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn injected_500_and_503_reach_the_client_as_api_errors() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client_without_retry(&kube), "ns");
    cms.create(&PostParams::default(), &config_map("c1"))
        .await
        .unwrap();

    let rule = kube.faults().error_rate(
        Match::any().verb("get").resource("configmaps"),
        1.0,
        InjectedError::Status(503),
    );
    assert_eq!(
        api_status(cms.get("c1").await.unwrap_err()),
        (503, "ServiceUnavailable".to_owned())
    );
    // Other verbs are untouched.
    assert_eq!(cms.list(&Default::default()).await.unwrap().items.len(), 1);
    kube.faults().remove(rule);

    kube.faults()
        .error_rate(Match::any().verb("get"), 1.0, InjectedError::Status(500));
    assert_eq!(
        api_status(cms.get("c1").await.unwrap_err()),
        (500, "InternalError".to_owned())
    );
    kube.faults().clear();
    assert!(cms.get("c1").await.is_ok());

    assert_eq!(
        kube.calls()
            .count_outcome(Some("get"), Some("configmaps"), &Outcome::Injected(503)),
        1
    );
    assert_eq!(
        kube.calls()
            .count_outcome(Some("get"), Some("configmaps"), &Outcome::Injected(500)),
        1
    );
}

#[tokio::test]
async fn injected_429_carries_retry_after() {
    let kube = FakeKube::start().await.unwrap();
    kube.faults().fail_next(
        Match::any(),
        1,
        InjectedError::TooManyRequests {
            retry_after: Duration::from_secs(7),
        },
    );
    let request = http::Request::get("/api/v1/namespaces/ns/configmaps")
        .body(Vec::new())
        .unwrap();
    let response = client_without_retry(&kube)
        .send(request.map(Into::into))
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");

    let cms: Api<ConfigMap> = Api::namespaced(client_without_retry(&kube), "ns");
    kube.faults().fail_next(
        Match::any(),
        1,
        InjectedError::TooManyRequests {
            retry_after: Duration::from_secs(1),
        },
    );
    assert_eq!(
        api_status(cms.list(&Default::default()).await.unwrap_err()),
        (429, "TooManyRequests".to_owned())
    );
}

#[tokio::test]
async fn kube_default_retry_honours_retry_after_from_the_fake() {
    let kube = FakeKube::start().await.unwrap();
    kube.faults().fail_next(
        Match::any().verb("list"),
        2,
        InjectedError::TooManyRequests {
            retry_after: Duration::from_secs(1),
        },
    );
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    let started = Instant::now();
    cms.list(&Default::default()).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(kube.calls().count(Some("list"), Some("configmaps")), 3);
    assert_eq!(
        kube.calls()
            .count_outcome(Some("list"), None, &Outcome::Injected(429)),
        2
    );
}

#[tokio::test]
async fn a_dropped_connection_is_a_transport_error_not_an_api_error() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client_without_retry(&kube), "ns");
    kube.faults().drop_rate(Match::any().verb("create"), 1.0);
    let err = cms
        .create(&PostParams::default(), &config_map("c1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::HyperError(_) | Error::Service(_)),
        "expected a connection error, got {err:?}"
    );
    assert_eq!(
        kube.calls()
            .count_outcome(Some("create"), Some("configmaps"), &Outcome::Dropped),
        1
    );
    // The server keeps serving other connections.
    kube.faults().clear();
    cms.create(&PostParams::default(), &config_map("c1"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_partition_holds_requests_until_healed() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    kube.faults().partition();
    let held = tokio::spawn({
        let cms = cms.clone();
        async move { cms.create(&PostParams::default(), &config_map("c1")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "a partitioned request must hang");
    assert_eq!(kube.calls().total(), 0, "not answered, so not counted yet");

    kube.faults().heal();
    tokio::time::timeout(PATIENCE, held)
        .await
        .expect("healed requests complete")
        .unwrap()
        .unwrap();
    assert!(cms.get("c1").await.is_ok());
}

#[tokio::test]
async fn a_request_abandoned_during_a_partition_counts_as_dropped() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    kube.faults().partition();
    let gave_up = tokio::time::timeout(Duration::from_millis(200), cms.get_opt("c1")).await;
    assert!(gave_up.is_err(), "the request hangs");
    let deadline = Instant::now() + PATIENCE;
    while kube
        .calls()
        .count_outcome(Some("get"), Some("configmaps"), &Outcome::Dropped)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the abandoned call was never counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kube.faults().heal();
}

#[tokio::test]
async fn injected_latency_delays_matching_requests() {
    let kube = FakeKube::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(kube.client(), "ns");
    kube.faults().latency(
        Match::any().resource("leases"),
        Duration::from_millis(300),
        Duration::from_millis(100),
    );
    let started = Instant::now();
    leases
        .create(&PostParams::default(), &lease("l1"))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn fail_next_fails_exactly_n_matching_calls() {
    let kube = FakeKube::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client_without_retry(&kube), "ns");
    kube.faults().fail_next(
        Match::any().verb("create").resource("leases"),
        2,
        InjectedError::Status(500),
    );
    for _ in 0..2 {
        let (code, _) = api_status(
            leases
                .create(&PostParams::default(), &lease("l1"))
                .await
                .unwrap_err(),
        );
        assert_eq!(code, 500);
    }
    leases
        .create(&PostParams::default(), &lease("l1"))
        .await
        .unwrap();
    let calls = kube.calls();
    assert_eq!(
        calls.count_outcome(Some("create"), Some("leases"), &Outcome::Injected(500)),
        2
    );
    assert_eq!(
        calls.count_outcome(Some("create"), Some("leases"), &Outcome::Ok),
        1
    );
}

#[tokio::test]
async fn calls_are_counted_per_verb_resource_and_outcome() {
    let kube = FakeKube::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(kube.client(), "ns");
    let created = leases
        .create(&PostParams::default(), &lease("l1"))
        .await
        .unwrap();
    leases
        .create(&PostParams::default(), &lease("l1"))
        .await
        .unwrap_err();
    let mut changed = created.clone();
    changed.metadata.labels = Some([("holder".to_owned(), "a".to_owned())].into());
    leases
        .replace("l1", &PostParams::default(), &changed)
        .await
        .unwrap();
    // Still carrying the first resourceVersion: a conflict.
    leases
        .replace("l1", &PostParams::default(), &changed)
        .await
        .unwrap_err();
    leases.get_opt("absent").await.unwrap();

    let calls = kube.calls();
    let snapshot: Vec<String> = calls
        .snapshot()
        .into_iter()
        .map(|(k, n)| format!("{k} x{n}"))
        .collect();
    assert_eq!(
        snapshot,
        [
            "create leases ok x1",
            "create leases error 409 x1",
            "get leases error 404 x1",
            "update leases ok x1",
            "update leases error 409 x1",
        ]
    );
    assert_eq!(calls.total(), 5);
    calls.reset();
    assert_eq!(calls.total(), 0);
}

#[tokio::test]
async fn the_same_seed_gives_the_same_faults_over_http() {
    async fn outcomes(seed: u64) -> Vec<bool> {
        let kube = FakeKube::builder().seed(seed).start().await.unwrap();
        let cms: Api<ConfigMap> = Api::namespaced(client_without_retry(&kube), "ns");
        kube.faults()
            .error_rate(Match::any(), 0.5, InjectedError::Status(503));
        let mut out = Vec::new();
        for _ in 0..40 {
            out.push(cms.list(&Default::default()).await.is_ok());
        }
        out
    }
    let a = outcomes(11).await;
    assert_eq!(a, outcomes(11).await);
    assert_ne!(a, outcomes(12).await);
    assert!(a.iter().any(|ok| *ok) && a.iter().any(|ok| !*ok));
}

#[tokio::test]
async fn faults_and_counters_can_be_shared_between_servers() {
    let faults = testkit::faults::Faults::new(1);
    let calls = testkit::calls::Calls::new();
    let a = FakeKube::builder()
        .faults(faults.clone())
        .calls(calls.clone())
        .start()
        .await
        .unwrap();
    let b = FakeKube::builder()
        .faults(faults.clone())
        .calls(calls.clone())
        .start()
        .await
        .unwrap();
    faults.fail_next(Match::any(), 2, InjectedError::Status(500));
    for kube in [&a, &b] {
        let cms: Api<ConfigMap> = Api::namespaced(client_without_retry(kube), "ns");
        assert!(cms.get_opt("x").await.is_err());
    }
    assert_eq!(
        calls.count_outcome(Some("get"), None, &Outcome::Injected(500)),
        2
    );
}

#[tokio::test]
async fn a_partition_stalls_open_watches_until_healed() {
    use futures::TryStreamExt;
    use kube::api::{WatchEvent, WatchParams};
    let kube = FakeKube::builder()
        .bookmark_interval(Duration::from_millis(20))
        .start()
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), "ns");
    let mut events = Box::pin(cms.watch(&WatchParams::default(), "0").await.unwrap());
    let first = tokio::time::timeout(PATIENCE, events.try_next()).await;
    assert!(
        matches!(first, Ok(Ok(Some(WatchEvent::Bookmark(_))))),
        "bookmarks flow before the partition"
    );

    kube.faults().partition();
    // Let a frame already being written drain, then expect silence.
    let _ = tokio::time::timeout(Duration::from_millis(100), events.try_next()).await;
    let silent = tokio::time::timeout(Duration::from_millis(300), events.try_next()).await;
    assert!(
        silent.is_err(),
        "nothing flows during a partition: {silent:?}"
    );

    kube.faults().heal();
    let after = tokio::time::timeout(PATIENCE, events.try_next()).await;
    assert!(
        matches!(after, Ok(Ok(Some(WatchEvent::Bookmark(_))))),
        "the watch resumes after healing"
    );
}
